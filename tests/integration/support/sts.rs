//! STS: [`Moto`], moto's real STS emulator from the project's `.venv`, one per
//! test binary, and [`StsRecorder`], a pass-through in front of STS that records
//! what the broker sent (the subject token) and forwards it to moto, or answers by
//! itself in STS's documented XML shapes (success, rejected token, outage);
//! [`StsBehaviour::Load`] answers without recording, for the benchmark.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// `Succeed` for the benchmark: the same XML shape and fresh-looking,
    /// unique credentials, but nothing recorded (calls are only counted, see
    /// [`StsRecorder::load_calls`]; [`StsRecorder::calls`] and
    /// [`StsRecorder::minted`] stay empty) and randomness from a fast
    /// per-thread generator instead of a getrandom call per character, so
    /// the double is never what limits a run of millions of issuances.
    Load,
}

struct RecorderState {
    behaviour: StsBehaviour,
    calls: Mutex<Vec<StsCall>>,
    /// Access key ids of the credentials this double minted.
    minted: Mutex<Vec<String>>,
    /// Calls answered under [`StsBehaviour::Load`].
    load_calls: AtomicU64,
    /// Under [`StsBehaviour::Load`], the first characters of every access
    /// key id (random per recorder); a call counter makes the rest unique.
    load_prefix: String,
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
            load_calls: AtomicU64::new(0),
            load_prefix: FastRng::seeded().string(6, STS_KEY_ALPHABET),
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

    /// How many calls [`StsBehaviour::Load`] answered.
    pub fn load_calls(&self) -> u64 {
        self.state.load_calls.load(Ordering::Relaxed)
    }
}

async fn record_sts(
    State(state): State<Arc<RecorderState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    if let StsBehaviour::Load = state.behaviour {
        return sts_load_success(&state, &form);
    }
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
        StsBehaviour::Load => unreachable!("answered above, without recording"),
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
    let (upper, secret) = (STS_KEY_ALPHABET, STS_SECRET_ALPHABET);
    let access_key_id = format!("ASIA{}", random(16, upper));
    state.minted.lock().unwrap().push(access_key_id.clone());
    assume_role_success(
        form,
        &Minted {
            access_key_id,
            role_id: random(16, upper),
            token: random(356, secret),
            secret: random(40, secret),
            request_id: uuid::Uuid::new_v4(),
        },
    )
}

/// The characters of access key ids and role ids, and of secrets and tokens.
const STS_KEY_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const STS_SECRET_ALPHABET: &[u8] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// [`StsBehaviour::Load`]'s answer: counted, not recorded. The access key id
/// is the recorder's random prefix and the call's number (unique for the
/// recorder's life); the rest comes from this thread's [`FastRng`].
fn sts_load_success(state: &RecorderState, form: &HashMap<String, String>) -> Response {
    let call = state.load_calls.fetch_add(1, Ordering::Relaxed);
    let number: String = (0..10)
        .rev()
        .map(|digit| STS_KEY_ALPHABET[((call >> (5 * digit)) & 31) as usize] as char)
        .collect();
    let minted = FastRng::with_thread_local(|rng| Minted {
        access_key_id: format!("ASIA{}{number}", state.load_prefix),
        role_id: rng.string(16, STS_KEY_ALPHABET),
        token: rng.string(356, STS_SECRET_ALPHABET),
        secret: rng.string(40, STS_SECRET_ALPHABET),
        request_id: uuid::Builder::from_random_bytes(rng.bytes16()).into_uuid(),
    });
    assume_role_success(form, &minted)
}

/// SplitMix64: a fast, non-cryptographic generator (test credentials only),
/// seeded once from the operating system.
struct FastRng(u64);

impl FastRng {
    fn seeded() -> FastRng {
        use rand_core::RngCore;
        FastRng(rand_core::OsRng.next_u64())
    }

    /// Runs `f` with this thread's generator, seeded on the thread's first use.
    fn with_thread_local<T>(f: impl FnOnce(&mut FastRng) -> T) -> T {
        thread_local! {
            static RNG: std::cell::RefCell<FastRng> = std::cell::RefCell::new(FastRng::seeded());
        }
        RNG.with(|rng| f(&mut rng.borrow_mut()))
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn string(&mut self, len: usize, alphabet: &[u8]) -> String {
        (0..len)
            .map(|_| alphabet[(self.next_u64() % alphabet.len() as u64) as usize] as char)
            .collect()
    }

    fn bytes16(&mut self) -> [u8; 16] {
        let mut bytes = [0; 16];
        bytes[..8].copy_from_slice(&self.next_u64().to_le_bytes());
        bytes[8..].copy_from_slice(&self.next_u64().to_le_bytes());
        bytes
    }
}

/// The random parts of one successful `AssumeRoleWithWebIdentity` answer.
struct Minted {
    access_key_id: String,
    role_id: String,
    token: String,
    secret: String,
    request_id: uuid::Uuid,
}

/// STS's documented `AssumeRoleWithWebIdentity` success, for the role and
/// session the form asked for and lasting its `DurationSeconds`.
fn assume_role_success(form: &HashMap<String, String>, minted: &Minted) -> Response {
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
        access_key_id = minted.access_key_id,
        role_id = minted.role_id,
        token = minted.token,
        secret = minted.secret,
        request_id = minted.request_id,
    );
    (StatusCode::OK, [("content-type", "text/xml")], body).into_response()
}

fn sts_error(status: StatusCode, kind: &str, code: &str, message: &str) -> Response {
    let body = format!(
        r#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>{kind}</Type><Code>{code}</Code><Message>{message}</Message></Error><RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c7</RequestId></ErrorResponse>"#
    );
    (status, [("content-type", "text/xml")], body).into_response()
}

/// The benchmark measures issuances through [`StsBehaviour::Load`]: the
/// broker must take its answers as STS's, and its key ids must not repeat.
#[cfg(test)]
mod load_behaviour {
    use std::collections::HashSet;

    use crate::support::*;

    #[tokio::test]
    async fn the_broker_issues_through_the_load_double_with_unique_keys_and_nothing_recorded() {
        let world = World::with_sts(StsBehaviour::Load).await;
        let token = world.backstage.user_token("user:default/jane");
        let mut keys = HashSet::new();
        for _ in 0..3 {
            let response = world
                .broker
                .request_credentials(Some(&token), credential_request("pulumi:acme/payments/dev"))
                .await;
            assert_eq!(response.status, 200, "{}", response.text);
            let key = response.body["credentials"]["access_key_id"]
                .as_str()
                .unwrap();
            assert!(key.starts_with("ASIA") && key.len() == 20, "{key}");
            keys.insert(key.to_owned());
        }
        assert_eq!(keys.len(), 3);
        assert_eq!(world.sts.load_calls(), 3);
        assert!(world.sts.calls().is_empty());
        assert!(world.sts.minted().is_empty());
    }
}
