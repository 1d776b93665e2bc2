//! Shared test support: the one place for fixtures and doubles.
//!
//! - [`BackstageDouble`]: Backstage's auth backend (OIDC discovery, JWKS, ES256 user
//!   tokens) and catalog API (`/api/catalog/entities/by-name/...` with a static
//!   token), following Backstage's documented responses, with request counters.
//! - [`Moto`]: moto's real STS emulator, from the project's `.venv`.
//! - [`StsRecorder`]: a pass-through in front of STS that records what the broker
//!   sent (the subject token) and counts calls; with no upstream it refuses.
//! - [`Broker`]: the real `stackpass` binary serving on a random port with a
//!   config written to a temp dir, its stderr captured for log assertions.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::{EncodePrivateKey, LineEnding};
use serde_json::{json, Value};

pub const STATIC_CATALOG_TOKEN: &str = "catalog-static-token-3f9a7c1e5b";

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn stackpass_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_stackpass"))
}

fn venv_binary(name: &str) -> PathBuf {
    let path = workspace_root().join(".venv/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run scripts/setup-test-deps (or the README's test command) first",
        path.display()
    );
    path
}

pub fn aws_cli() -> PathBuf {
    venv_binary("aws")
}

/// The `stackpass` CLI, without the caller's STACKPASS_* environment.
pub fn stackpass(args: &[&str]) -> Command {
    let mut command = Command::new(stackpass_binary());
    command
        .args(args)
        .env_remove("STACKPASS_TOKEN")
        .env_remove("STACKPASS_URL")
        .env_remove("STACKPASS_CONFIG");
    command
}

pub fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_for_http(url: &str, deadline: Duration) {
    let start = Instant::now();
    let client = reqwest::Client::new();
    while start.elapsed() < deadline {
        if client
            .get(url)
            .timeout(Duration::from_secs(1))
            .send()
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{url} did not answer within {deadline:?}");
}

async fn spawn_router(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    format!("http://{addr}")
}

// ---------------------------------------------------------------------------
// Signing keys and tokens

/// An ES256 key pair as an identity provider holds it.
#[derive(Clone)]
pub struct TestKey {
    pub kid: String,
    pub pem: String,
    pub x: String,
    pub y: String,
}

impl TestKey {
    pub fn generate(kid: &str) -> TestKey {
        let secret = p256::SecretKey::random(&mut rand_core::OsRng);
        let point = secret.public_key().to_encoded_point(false);
        TestKey {
            kid: kid.to_owned(),
            pem: secret.to_pkcs8_pem(LineEnding::LF).unwrap().to_string(),
            x: URL_SAFE_NO_PAD.encode(point.x().unwrap()),
            y: URL_SAFE_NO_PAD.encode(point.y().unwrap()),
        }
    }

    /// As Backstage publishes it: no `use`, `alg` ES256.
    pub fn jwk(&self) -> Value {
        json!({ "kty": "EC", "x": self.x, "y": self.y, "crv": "P-256", "kid": self.kid, "alg": "ES256" })
    }

    pub fn public_key_pem(&self) -> String {
        use p256::pkcs8::{DecodePrivateKey, EncodePublicKey};
        let secret = p256::SecretKey::from_pkcs8_pem(&self.pem).unwrap();
        secret
            .public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap()
    }
}

/// Assembles a JWT from raw JSON so tests can build tokens no library would
/// (`alg: none`, HS256 keyed with a public key, ...).
pub fn sign_jwt(header: &Value, claims: &Value, signer: Signer<'_>) -> String {
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = match signer {
        Signer::Es256(key) => {
            let key = jsonwebtoken::EncodingKey::from_ec_pem(key.pem.as_bytes()).unwrap();
            jsonwebtoken::crypto::sign(
                signing_input.as_bytes(),
                &key,
                jsonwebtoken::Algorithm::ES256,
            )
            .unwrap()
        }
        Signer::Hs256(secret) => {
            let key = jsonwebtoken::EncodingKey::from_secret(secret);
            jsonwebtoken::crypto::sign(
                signing_input.as_bytes(),
                &key,
                jsonwebtoken::Algorithm::HS256,
            )
            .unwrap()
        }
        Signer::Unsigned => String::new(),
    };
    format!("{signing_input}.{signature}")
}

pub enum Signer<'a> {
    Es256(&'a TestKey),
    Hs256(&'a [u8]),
    Unsigned,
}

pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

// ---------------------------------------------------------------------------
// Backstage

#[derive(Default)]
pub struct Counters {
    pub discovery: AtomicUsize,
    pub jwks: AtomicUsize,
    pub catalog: AtomicUsize,
}

struct BackstageState {
    base_url: Mutex<String>,
    keys: Mutex<Vec<TestKey>>,
    entities: HashMap<(String, String, String), Value>,
    counters: Arc<Counters>,
}

/// Backstage's auth backend and catalog, as the broker sees them over HTTP.
pub struct BackstageDouble {
    pub url: String,
    pub key: TestKey,
    state: Arc<BackstageState>,
}

impl BackstageDouble {
    pub async fn start() -> BackstageDouble {
        Self::start_with(default_entities()).await
    }

    pub async fn start_with(entities: Vec<Value>) -> BackstageDouble {
        let key = TestKey::generate("53dedcff-a84a-4301-b1b5-b48fdb0acb5c");
        let state = Arc::new(BackstageState {
            base_url: Mutex::new(String::new()),
            keys: Mutex::new(vec![key.clone()]),
            entities: entities
                .into_iter()
                .map(|e| {
                    let kind = e["kind"].as_str().unwrap().to_ascii_lowercase();
                    let namespace = e["metadata"]["namespace"]
                        .as_str()
                        .unwrap_or("default")
                        .to_ascii_lowercase();
                    let name = e["metadata"]["name"].as_str().unwrap().to_ascii_lowercase();
                    ((kind, namespace, name), e)
                })
                .collect(),
            counters: Arc::new(Counters::default()),
        });
        let router = Router::new()
            .route("/api/auth/.well-known/openid-configuration", get(discovery))
            .route("/api/auth/.well-known/jwks.json", get(jwks))
            .route(
                "/api/catalog/entities/by-name/{kind}/{namespace}/{name}",
                get(entity_by_name),
            )
            .with_state(state.clone());
        let url = spawn_router(router).await;
        *state.base_url.lock().unwrap() = url.clone();
        BackstageDouble { url, key, state }
    }

    pub fn issuer(&self) -> String {
        format!("{}/api/auth", self.url)
    }

    pub fn counters(&self) -> &Counters {
        &self.state.counters
    }

    pub fn catalog_hits(&self) -> usize {
        self.counters().catalog.load(Ordering::SeqCst)
    }

    pub fn key_fetches(&self) -> usize {
        self.counters().discovery.load(Ordering::SeqCst)
            + self.counters().jwks.load(Ordering::SeqCst)
    }

    /// Publishes an additional key, as Backstage does when it rotates.
    pub fn publish_key(&self, key: TestKey) {
        self.state.keys.lock().unwrap().push(key);
    }

    /// Claims of a Backstage user identity token. Recent Backstage versions no
    /// longer include `ent`; the broker must not need it.
    pub fn user_claims(&self, subject: &str) -> Value {
        let now = now();
        json!({
            "iss": self.issuer(),
            "sub": subject,
            "aud": "backstage",
            "iat": now,
            "exp": now + 3600,
            "uip": "user-identity-proof-not-used-by-stackpass",
        })
    }

    pub fn user_header(&self) -> Value {
        json!({ "alg": "ES256", "kid": self.key.kid, "typ": "vnd.backstage.user" })
    }

    pub fn user_token(&self, subject: &str) -> String {
        sign_jwt(
            &self.user_header(),
            &self.user_claims(subject),
            Signer::Es256(&self.key),
        )
    }
}

async fn discovery(State(state): State<Arc<BackstageState>>) -> Json<Value> {
    state.counters.discovery.fetch_add(1, Ordering::SeqCst);
    let base = format!("{}/api/auth", state.base_url.lock().unwrap());
    // Field for field what a real Backstage auth backend serves (see
    // tests/backstage-real/README.md for the recording this follows).
    Json(json!({
        "issuer": base,
        "token_endpoint": format!("{base}/v1/token"),
        "userinfo_endpoint": format!("{base}/v1/userinfo"),
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "response_types_supported": ["code", "id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512", "EdDSA"],
        "scopes_supported": ["openid"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "claims_supported": ["sub", "ent"],
        "grant_types_supported": ["authorization_code"],
        "authorization_endpoint": format!("{base}/v1/authorize"),
        "code_challenge_methods_supported": ["S256", "plain"],
    }))
}

async fn jwks(State(state): State<Arc<BackstageState>>) -> Json<Value> {
    state.counters.jwks.fetch_add(1, Ordering::SeqCst);
    let keys: Vec<Value> = state
        .keys
        .lock()
        .unwrap()
        .iter()
        .map(TestKey::jwk)
        .collect();
    Json(json!({ "keys": keys }))
}

fn backstage_error(status: StatusCode, name: &str, message: &str, url: &str) -> Response {
    (
        status,
        Json(json!({
            "error": { "name": name, "message": message },
            "request": { "method": "GET", "url": url },
            "response": { "statusCode": status.as_u16() },
        })),
    )
        .into_response()
}

async fn entity_by_name(
    State(state): State<Arc<BackstageState>>,
    UrlPath((kind, namespace, name)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    state.counters.catalog.fetch_add(1, Ordering::SeqCst);
    // Backstage reports the URL relative to the catalog router.
    let url = format!("/entities/by-name/{kind}/{namespace}/{name}");
    match headers.get("authorization").and_then(|v| v.to_str().ok()) {
        None => {
            return backstage_error(
                StatusCode::UNAUTHORIZED,
                "AuthenticationError",
                "Missing credentials",
                &url,
            )
        }
        Some(value) if value != format!("Bearer {STATIC_CATALOG_TOKEN}") => {
            return backstage_error(
                StatusCode::UNAUTHORIZED,
                "AuthenticationError",
                "Illegal token",
                &url,
            )
        }
        Some(_) => {}
    }
    let key = (
        kind.to_ascii_lowercase(),
        namespace.to_ascii_lowercase(),
        name.to_ascii_lowercase(),
    );
    match state.entities.get(&key) {
        Some(entity) => Json(entity.clone()).into_response(),
        None => backstage_error(
            StatusCode::NOT_FOUND,
            "NotFoundError",
            &format!(
                "No entity named '{name}' found, with kind '{kind}' in namespace '{namespace}'"
            ),
            &url,
        ),
    }
}

/// Relations as the catalog serves them: type and a full lower-case `targetRef`.
fn relation(kind: &str, target: &str) -> Value {
    json!({ "type": kind, "targetRef": target.to_ascii_lowercase() })
}

fn metadata(name: &str) -> Value {
    json!({
        "namespace": "default",
        "name": name,
        "uid": uuid::Uuid::new_v4().to_string(),
        "etag": "f18cc47c103a8ab1210147aaf2e48eef683b7288",
        "annotations": { "backstage.io/managed-by-location": "file:/catalog/catalog-info.yaml" },
    })
}

pub fn group(name: &str, members: &[&str]) -> Value {
    json!({
        "apiVersion": "backstage.io/v1alpha1",
        "kind": "Group",
        "metadata": metadata(name),
        "spec": { "type": "team", "children": [] },
        "relations": members.iter().map(|m| relation("hasMember", &format!("user:default/{m}"))).collect::<Vec<_>>(),
    })
}

pub fn user(name: &str, groups: &[&str]) -> Value {
    json!({
        "apiVersion": "backstage.io/v1alpha1",
        "kind": "User",
        "metadata": metadata(name),
        "spec": { "profile": { "displayName": name }, "memberOf": groups },
        "relations": groups.iter().map(|g| relation("memberOf", &format!("group:default/{g}"))).collect::<Vec<_>>(),
    })
}

pub fn component(name: &str, owner: &str) -> Value {
    json!({
        "apiVersion": "backstage.io/v1alpha1",
        "kind": "Component",
        "metadata": metadata(name),
        "spec": { "type": "service", "lifecycle": "production", "owner": owner },
        "relations": [relation("ownedBy", &format!("group:default/{owner}"))],
    })
}

/// jane and alex are in team-payments (owns payments); bob is in team-search
/// (owns search); sam is in security, the auditor group.
pub fn default_entities() -> Vec<Value> {
    vec![
        group("team-payments", &["jane", "alex"]),
        group("team-search", &["bob"]),
        group("security", &["sam"]),
        user("jane", &["team-payments"]),
        user("alex", &["team-payments"]),
        user("bob", &["team-search"]),
        user("sam", &["security"]),
        component("payments", "team-payments"),
        component("search", "team-search"),
    ]
}

pub const STACKS_TOML: &str = r#"
[[stacks]]
ref = "pulumi:acme/payments/dev"
tags = { "backstage.io/component" = "payments", environment = "dev", aws-account = "111111111111" }

[[stacks]]
ref = "pulumi:acme/payments/prod"
tags = { "backstage.io/component" = "payments", environment = "prod", aws-account = "999999999999" }

[[stacks]]
ref = "terraform:acme/search-dev"
tags = { "backstage.io/component" = "search", environment = "dev", aws-account = "222222222222" }

[[stacks]]
ref = "pulumi:acme/ghost/dev"
tags = { "backstage.io/component" = "ghost", environment = "dev", aws-account = "333333333333" }
"#;

// ---------------------------------------------------------------------------
// STS

/// moto's STS emulator, killed on drop.
pub struct Moto {
    pub url: String,
    child: Child,
}

impl Moto {
    pub async fn start() -> Moto {
        let port = free_port();
        let child = Command::new(venv_binary("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let url = format!("http://127.0.0.1:{port}");
        wait_for_http(&format!("{url}/moto-api/"), Duration::from_secs(30)).await;
        Moto { url, child }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
}

struct RecorderState {
    behaviour: StsBehaviour,
    calls: Mutex<Vec<StsCall>>,
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
}

async fn record_sts(
    State(state): State<Arc<RecorderState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    state
        .calls
        .lock()
        .unwrap()
        .push(StsCall { form: form.clone() });
    let upstream = match &state.behaviour {
        StsBehaviour::Forward(upstream) => upstream,
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
        StsBehaviour::Succeed => return sts_success(&form),
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
    let bytes = response.bytes().await.unwrap();
    let mut out = (status, bytes).into_response();
    if let Some(ct) = content_type {
        out.headers_mut().insert("content-type", ct);
    }
    out
}

fn sts_success(form: &HashMap<String, String>) -> Response {
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
      <AccessKeyId>ASIA{key}</AccessKeyId>
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
        key = random(16, upper),
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

// ---------------------------------------------------------------------------
// The usual setup

/// A Backstage double, STS behind a recorder, and the broker between them.
pub struct World {
    pub backstage: BackstageDouble,
    pub sts: StsRecorder,
    pub broker: Broker,
    _moto: Option<Moto>,
}

impl World {
    /// STS is moto's emulator, reached through the recorder.
    pub async fn with_moto() -> World {
        let moto = Moto::start().await;
        let mut world = World::with_sts(StsBehaviour::Forward(moto.url.clone())).await;
        world._moto = Some(moto);
        world
    }

    /// STS is the recorder alone, answering as `behaviour` says.
    pub async fn with_sts(behaviour: StsBehaviour) -> World {
        let backstage = BackstageDouble::start().await;
        let sts = StsRecorder::start(behaviour).await;
        let broker = Broker::start(BrokerOptions::new(&backstage, &sts.url)).await;
        World {
            backstage,
            sts,
            broker,
            _moto: None,
        }
    }
}

// ---------------------------------------------------------------------------
// Notifications

/// A Slack-style incoming webhook: records every JSON message posted to it.
pub struct WebhookListener {
    pub url: String,
    messages: Arc<Mutex<Vec<Value>>>,
}

impl WebhookListener {
    pub async fn start() -> WebhookListener {
        let messages = Arc::new(Mutex::new(Vec::new()));
        let sink = messages.clone();
        let router = Router::new().route(
            "/hooks/T000/B000/XXXX",
            post(move |Json(body): Json<Value>| {
                let sink = sink.clone();
                async move {
                    sink.lock().unwrap().push(body);
                    "ok"
                }
            }),
        );
        let base = spawn_router(router).await;
        WebhookListener {
            url: format!("{base}/hooks/T000/B000/XXXX"),
            messages,
        }
    }

    /// Waits (bounded) for a message whose text contains `needle`.
    pub async fn wait_for(&self, needle: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(found) = self
                .messages
                .lock()
                .unwrap()
                .iter()
                .find(|m| m["text"].as_str().is_some_and(|t| t.contains(needle)))
            {
                return found.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no notification containing {needle:?}: {:?}",
                self.messages.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

// ---------------------------------------------------------------------------
// PostgreSQL

/// The server tests create their databases on. `.ci/run` makes sure one listens
/// at the default; point `STACKPASS_TEST_POSTGRES_URL` elsewhere to use another.
pub fn postgres_admin_url() -> String {
    std::env::var("STACKPASS_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A fresh database for one test on the real PostgreSQL server, dropped after.
pub struct PgDatabase {
    pub url: String,
    name: String,
}

impl PgDatabase {
    pub async fn create() -> PgDatabase {
        let admin = postgres_admin_url();
        let name = format!("stackpass_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::ConnectOptions::connect(&admin.parse::<sqlx::postgres::PgConnectOptions>().unwrap())
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {admin} is not reachable ({e}); run scripts/setup-postgres or set STACKPASS_TEST_POSTGRES_URL"));
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        let (base, _) = admin.rsplit_once('/').unwrap();
        PgDatabase {
            url: format!("{base}/{name}"),
            name,
        }
    }

    /// Runs SQL as the server's administrator (not through the broker).
    pub async fn admin(&self, sql: &str) {
        let mut conn = sqlx::ConnectOptions::connect(
            &postgres_admin_url()
                .parse::<sqlx::postgres::PgConnectOptions>()
                .unwrap(),
        )
        .await
        .unwrap();
        sqlx::query(sql).execute(&mut conn).await.unwrap();
    }

    /// Makes the database unreachable for the broker, as if its server stopped:
    /// refuses new connections and terminates the open ones.
    pub async fn go_down(&self) {
        self.admin(&format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS false",
            self.name
        ))
        .await;
        self.admin(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}'",
            self.name
        ))
        .await;
    }

    pub async fn come_back(&self) {
        self.admin(&format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS true",
            self.name
        ))
        .await;
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let admin = postgres_admin_url()
                    .parse::<sqlx::postgres::PgConnectOptions>()
                    .unwrap();
                if let Ok(mut conn) = sqlx::ConnectOptions::connect(&admin).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}

// ---------------------------------------------------------------------------
// The broker

pub struct BrokerOptions {
    pub backstage_url: String,
    pub sts_url: String,
    /// Appended to the generated config (more rules, overrides of whole tables).
    pub extra_config: String,
    pub env: Vec<(String, String)>,
    /// What the broker's catalog token file holds.
    pub catalog_token: String,
    /// The audit store; default a SQLite file in the broker's temp dir.
    pub audit_url: Option<String>,
}

impl BrokerOptions {
    pub fn new(backstage: &BackstageDouble, sts_url: &str) -> BrokerOptions {
        BrokerOptions {
            backstage_url: backstage.url.clone(),
            sts_url: sts_url.to_owned(),
            extra_config: String::new(),
            env: Vec::new(),
            catalog_token: STATIC_CATALOG_TOKEN.to_owned(),
            audit_url: None,
        }
    }

    pub fn config(&self) -> String {
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
request_timeout = "20s"

[issuer]
signing_key = "signing-key.pem"
create_key_if_missing = true

[identity]
jwks_min_refetch_interval = "30s"

[[identity.issuers]]
name = "backstage"
kind = "backstage"
url = "{backstage}"

[catalog]
kind = "backstage"
url = "{backstage}"
token_file = "catalog-token"
cache_ttl = "1s"

[stacks]
kind = "static"
file = "stacks.toml"

[providers.aws]
region = "us-east-1"
endpoint_url = "{sts}"
timeout = "10s"
max_attempts = 1

[[policy.rules]]
name = "owners-deploy-nonprod"
provider = "aws"
tags = {{ environment = ["dev", "staging"], aws-account = ["*"] }}
role = "arn:aws:iam::{{tags.aws-account}}:role/{{component}}-deployer"
max_duration = "1h"

[audit]
url = "sqlite://audit.db"
auditor_groups = ["group:default/security"]
{extra}
"#,
            backstage = self.backstage_url,
            sts = self.sts_url,
            extra = self.extra_config,
        )
    }
}

/// The real `stackpass serve`, on a random port, killed on drop.
pub struct Broker {
    pub url: String,
    pub dir: tempfile::TempDir,
    child: Child,
    logs: Arc<Mutex<String>>,
}

impl Broker {
    pub async fn start(options: BrokerOptions) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("stackpass.toml"), options.config()).unwrap();
        std::fs::write(dir.path().join("stacks.toml"), STACKS_TOML).unwrap();
        std::fs::write(dir.path().join("catalog-token"), &options.catalog_token).unwrap();
        let mut command = Command::new(stackpass_binary());
        command
            .arg("serve")
            .arg("--config")
            .arg(dir.path().join("stackpass.toml"))
            .env("STACKPASS_LOG", "debug")
            .env_remove("STACKPASS_TOKEN")
            .env_remove("STACKPASS_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(url) = &options.audit_url {
            command.env("STACKPASS_AUDIT__URL", url);
        }
        for (key, value) in &options.env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("start stackpass serve");
        let logs = Arc::new(Mutex::new(String::new()));
        let (address_tx, address_rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    let _ = address_tx.send(addr);
                }
                let mut logs = sink.lock().unwrap();
                logs.push_str(&line);
                logs.push('\n');
            }
        });
        let address = match address_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(address) => address,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "the broker did not start; its log:\n{}",
                    logs.lock().unwrap()
                );
            }
        };
        let addr: SocketAddr = address.parse().unwrap();
        Broker {
            url: format!("http://{addr}"),
            dir,
            child,
            logs,
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("stackpass.toml")
    }

    pub fn audit_path(&self) -> PathBuf {
        self.dir.path().join("audit.db")
    }

    /// SIGKILL: no shutdown, no flushing, as in a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn audit_url(&self) -> String {
        format!("sqlite://{}", self.audit_path().display())
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    pub async fn request_credentials(&self, token: Option<&str>, body: Value) -> TestResponse {
        let client = reqwest::Client::new();
        let mut request = client
            .post(format!("{}/v1/credentials", self.url))
            .json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        TestResponse::from_response(request.send().await.unwrap()).await
    }

    pub async fn get(&self, path: &str) -> TestResponse {
        TestResponse::from_response(reqwest::get(format!("{}{path}", self.url)).await.unwrap())
            .await
    }

    /// The audit rows, oldest first, read straight from the SQLite file.
    pub async fn audit_rows(&self) -> Vec<Value> {
        audit_rows(&self.audit_path()).await
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn audit_rows(path: &Path) -> Vec<Value> {
    use sqlx::{Column, Row};
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .read_only(true);
    let mut conn = sqlx::ConnectOptions::connect(&options).await.unwrap();
    let rows = sqlx::query("SELECT * FROM audit_records ORDER BY seq")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    rows.iter()
        .map(|row| {
            let mut object = serde_json::Map::new();
            for column in row.columns() {
                let name = column.name();
                let value = match row.try_get::<Option<i64>, _>(name) {
                    Ok(Some(n)) => json!(n),
                    _ => match row.try_get::<Option<String>, _>(name) {
                        Ok(Some(s)) => json!(s),
                        _ => Value::Null,
                    },
                };
                object.insert(name.to_owned(), value);
            }
            Value::Object(object)
        })
        .collect()
}

pub struct TestResponse {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl TestResponse {
    pub async fn from_response(response: reqwest::Response) -> TestResponse {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        TestResponse {
            status,
            headers,
            body,
            text,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts an RFC 9457 problem with this status and `type` suffix.
    #[track_caller]
    pub fn assert_problem(&self, status: u16, kind: &str) {
        assert_eq!(
            self.status, status,
            "unexpected status; body: {}",
            self.text
        );
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{}",
            self.text
        );
        assert_eq!(
            self.body["type"],
            format!("urn:stackpass:problem:{kind}"),
            "{}",
            self.text
        );
        assert_eq!(self.body["status"], status, "{}", self.text);
        assert!(
            self.body["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{}",
            self.text
        );
        assert!(
            self.body["hint"].as_str().is_some_and(|d| !d.is_empty()),
            "{}",
            self.text
        );
        let request_id = self.header("x-request-id").expect("x-request-id header");
        assert_eq!(self.body["request_id"], request_id, "{}", self.text);
        assert!(self.body.get("credentials").is_none());
    }
}

pub fn credential_request(stack: &str) -> Value {
    json!({ "stack": stack, "provider": "aws", "duration_seconds": 900 })
}

// ---------------------------------------------------------------------------
// Audit

/// Fires a burst of issuances and SIGKILLs the broker in the middle of it.
/// Returns the access key ids the client actually received.
pub async fn burst_then_kill(
    backstage: &BackstageDouble,
    broker: &Broker,
    total: usize,
    kill_after: usize,
) -> Vec<String> {
    let token = backstage.user_token("user:default/jane");
    let received = Arc::new(std::sync::Mutex::new(Vec::new()));
    let done = Arc::new(AtomicUsize::new(0));
    let client = reqwest::Client::new();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..total {
        let (received, done, client, token, url) = (
            received.clone(),
            done.clone(),
            client.clone(),
            token.clone(),
            broker.url.clone(),
        );
        tasks.spawn(async move {
            let response = client
                .post(format!("{url}/v1/credentials"))
                .bearer_auth(token)
                .json(&credential_request("pulumi:acme/payments/dev"))
                .send()
                .await;
            if let Ok(response) = response {
                if response.status() == 200 {
                    if let Ok(body) = response.json::<Value>().await {
                        let key = body["credentials"]["access_key_id"]
                            .as_str()
                            .unwrap()
                            .to_owned();
                        received.lock().unwrap().push(key);
                    }
                }
            }
            done.fetch_add(1, Ordering::SeqCst);
        });
    }
    while done.load(Ordering::SeqCst) < kill_after {
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    std::process::Command::new("kill")
        .args(["-9", &broker.pid().to_string()])
        .status()
        .unwrap();
    while tasks.join_next().await.is_some() {}
    let received = received.lock().unwrap().clone();
    received
}

/// `stackpass audit verify --database URL [--from-checkpoint C]`.
pub fn verify_database(database: &str, checkpoint: Option<&str>) -> std::process::Output {
    let mut args = vec!["audit", "verify", "--database", database];
    if let Some(checkpoint) = checkpoint {
        args.extend(["--from-checkpoint", checkpoint]);
    }
    stackpass(&args).output().unwrap()
}
