//! STS: [`Moto`], moto's real STS emulator from the project's `.venv`, one per
//! test binary, and [`StsRecorder`], a pass-through in front of STS that records
//! what the broker sent (the subject token) and forwards it to moto, or answers by
//! itself in STS's documented XML shapes (success, rejected token, outage).

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;

use super::process::{free_port, spawn_router, venv_binary, wait_for_http};

/// moto's STS emulator: one per test binary, started by the first test that asks
/// for it and shared by all. Starting moto costs about 1.5 s of CPU, and sharing
/// it is safe: each test's `AssumeRoleWithWebIdentity` calls get fresh keys, and
/// no test depends on what others asked for (what a test sent is recorded by its
/// own [`StsRecorder`], not read from moto).
pub struct Moto {
    pub url: String,
}

impl Moto {
    pub async fn start() -> Moto {
        static SHARED: tokio::sync::OnceCell<MotoProcess> = tokio::sync::OnceCell::const_new();
        let moto = SHARED.get_or_init(MotoProcess::start).await;
        Moto {
            url: moto.url.clone(),
        }
    }
}

/// The shared moto_server. It outlives every test, and statics are never
/// dropped, so it runs under a shell that kills it when its stdin, a pipe only
/// this process holds, closes: when the test binary exits, however it exits.
struct MotoProcess {
    url: String,
    _shell: Child,
}

impl MotoProcess {
    async fn start() -> MotoProcess {
        let port = free_port();
        let shell = Command::new("sh")
            .args([
                "-c",
                r#""$1" -H 127.0.0.1 -p "$2" </dev/null & moto=$!; cat >/dev/null; kill "$moto""#,
                "moto",
            ])
            .arg(venv_binary("moto_server"))
            .arg(port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let url = format!("http://127.0.0.1:{port}");
        wait_for_http(&format!("{url}/moto-api/"), Duration::from_secs(30)).await;
        MotoProcess { url, _shell: shell }
    }
}

/// What the broker sent to STS.
#[derive(Debug, Clone)]
pub struct StsCall {
    pub form: HashMap<String, String>,
}

/// What the recorder does with a call after recording it.
#[derive(Clone)]
pub enum StsBehaviour {
    /// Forward to a real STS (moto) and relay its answer.
    Forward(String),
    /// Answer as STS does when the trust policy rejects the token (HTTP 400,
    /// `InvalidIdentityToken`, STS's documented XML error shape).
    RejectToken,
    /// Answer as an STS outage does (HTTP 503, `ServiceUnavailable`).
    Outage,
    /// Answer at once with a successful `AssumeRoleWithWebIdentity` response in
    /// STS's documented XML shape and fresh credentials: a fast STS for load.
    Succeed,
    /// Like `Succeed`, but the answer takes this long. As at a real STS, the
    /// credentials exist from the moment the call arrives (see
    /// [`StsRecorder::minted`]), whether or not the caller waits for them.
    Slow(Duration),
    /// `Succeed` for the first `fast` calls, then `Slow(delay)`: a burst whose
    /// later requests are surely still in flight when a test kills the broker.
    SlowAfter { fast: usize, delay: Duration },
    /// Forward to moto, but make the credentials expire after `life` instead
    /// of the 15 minutes STS never goes below: a run that outlives its
    /// credentials, in seconds.
    ForwardShortLived { upstream: String, life: Duration },
    /// Forward to moto after waiting this long: issuances that are surely
    /// still in flight when a broker stops accepting.
    ForwardSlow { upstream: String, delay: Duration },
}

struct RecorderState {
    behaviour: StsBehaviour,
    calls: Mutex<Vec<StsCall>>,
    /// Access key ids of the credentials this double minted.
    minted: Mutex<Vec<String>>,
    client: reqwest::Client,
}

/// Sits between the broker and STS: records each AssumeRoleWithWebIdentity call,
/// then forwards it to moto unchanged (or, with no upstream, fails it).
pub struct StsRecorder {
    pub url: String,
    state: Arc<RecorderState>,
}

impl StsRecorder {
    pub async fn start(behaviour: StsBehaviour) -> StsRecorder {
        let state = Arc::new(RecorderState {
            behaviour,
            calls: Mutex::new(Vec::new()),
            minted: Mutex::new(Vec::new()),
            client: reqwest::Client::new(),
        });
        let router = Router::new()
            .route("/", post(record_sts))
            .with_state(state.clone());
        StsRecorder {
            url: spawn_router(router).await,
            state,
        }
    }

    pub fn calls(&self) -> Vec<StsCall> {
        self.state.calls.lock().unwrap().clone()
    }

    /// The access key ids of every credential this double minted (`Succeed`
    /// and `Slow`), answered or not.
    pub fn minted(&self) -> Vec<String> {
        self.state.minted.lock().unwrap().clone()
    }
}

async fn record_sts(
    State(state): State<Arc<RecorderState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let call_number = {
        let mut calls = state.calls.lock().unwrap();
        calls.push(StsCall { form: form.clone() });
        calls.len()
    };
    let (upstream, life) = match &state.behaviour {
        StsBehaviour::Forward(upstream) => (upstream, None),
        StsBehaviour::ForwardShortLived { upstream, life } => (upstream, Some(*life)),
        StsBehaviour::ForwardSlow { upstream, delay } => {
            tokio::time::sleep(*delay).await;
            (upstream, None)
        }
        StsBehaviour::RejectToken => {
            return sts_error(
                StatusCode::BAD_REQUEST,
                "Sender",
                "InvalidIdentityToken",
                "No OpenIDConnect provider found in your account for the issuer",
            );
        }
        StsBehaviour::Outage => {
            return sts_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Receiver",
                "ServiceUnavailable",
                "Service is unavailable",
            );
        }
        StsBehaviour::Succeed => return sts_success(&state, &form),
        StsBehaviour::Slow(delay) => {
            let answer = sts_success(&state, &form);
            tokio::time::sleep(*delay).await;
            return answer;
        }
        StsBehaviour::SlowAfter { fast, delay } => {
            let answer = sts_success(&state, &form);
            if call_number > *fast {
                tokio::time::sleep(*delay).await;
            }
            return answer;
        }
    };
    let mut request = state
        .client
        .post(format!("{upstream}/"))
        .body(body.to_vec());
    for (name, value) in headers.iter() {
        if name != "host" && name != "content-length" {
            request = request.header(name, value);
        }
    }
    let response = request.send().await.unwrap();
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
    let content_type = response.headers().get("content-type").cloned();
    let mut bytes = response.bytes().await.unwrap().to_vec();
    if let Some(life) = life {
        bytes = with_expiration(&bytes, life).into_bytes();
    }
    let mut out = (status, bytes).into_response();
    if let Some(ct) = content_type {
        out.headers_mut().insert("content-type", ct);
    }
    out
}

/// The STS answer with `<Expiration>` moved to `life` from now.
fn with_expiration(xml: &[u8], life: Duration) -> String {
    let xml = String::from_utf8_lossy(xml);
    let (Some(start), Some(end)) = (xml.find("<Expiration>"), xml.find("</Expiration>")) else {
        return xml.into_owned();
    };
    let expiration = (time::OffsetDateTime::now_utc() + life)
        .replace_nanosecond(0)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    format!("{}<Expiration>{expiration}{}", &xml[..start], &xml[end..])
}

fn sts_success(state: &RecorderState, form: &HashMap<String, String>) -> Response {
    use rand_core::RngCore;
    let random = |len: usize, alphabet: &[u8]| -> String {
        (0..len)
            .map(|_| alphabet[(rand_core::OsRng.next_u32() as usize) % alphabet.len()] as char)
            .collect()
    };
    let upper = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let secret = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let role = form.get("RoleArn").cloned().unwrap_or_default();
    let session = form.get("RoleSessionName").cloned().unwrap_or_default();
    let (account, role_name) = role
        .strip_prefix("arn:aws:iam::")
        .and_then(|rest| rest.split_once(":role/"))
        .map(|(a, r)| (a.to_owned(), r.to_owned()))
        .unwrap_or_default();
    let duration: i64 = form
        .get("DurationSeconds")
        .and_then(|d| d.parse().ok())
        .unwrap_or(3600);
    let expiration = (time::OffsetDateTime::now_utc() + time::Duration::seconds(duration))
        .replace_nanosecond(0)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let access_key_id = format!("ASIA{}", random(16, upper));
    state.minted.lock().unwrap().push(access_key_id.clone());
    let body = format!(
        r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>stack</SubjectFromWebIdentityToken>
    <Audience>sts.amazonaws.com</Audience>
    <AssumedRoleUser>
      <Arn>arn:aws:sts::{account}:assumed-role/{role_name}/{session}</Arn>
      <AssumedRoleId>AROA{role_id}:{session}</AssumedRoleId>
    </AssumedRoleUser>
    <Credentials>
      <SessionToken>{token}</SessionToken>
      <SecretAccessKey>{secret}</SecretAccessKey>
      <Expiration>{expiration}</Expiration>
      <AccessKeyId>{access_key_id}</AccessKeyId>
    </Credentials>
    <Provider>stackpass</Provider>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata>
    <RequestId>{request_id}</RequestId>
  </ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>"#,
        role_id = random(16, upper),
        token = random(356, secret),
        secret = random(40, secret),
        request_id = uuid::Uuid::new_v4(),
    );
    (StatusCode::OK, [("content-type", "text/xml")], body).into_response()
}

fn sts_error(status: StatusCode, kind: &str, code: &str, message: &str) -> Response {
    let body = format!(
        r#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>{kind}</Type><Code>{code}</Code><Message>{message}</Message></Error><RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c7</RequestId></ErrorResponse>"#
    );
    (status, [("content-type", "text/xml")], body).into_response()
}
