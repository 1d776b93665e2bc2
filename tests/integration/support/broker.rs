//! [`Broker`]: the real `stackpass serve` on a random port with a config written
//! to a temp dir ([`BrokerOptions`], [`STACKS_TOML`]), its stderr captured for log
//! assertions; [`TestResponse`] for what it answers; and [`World`], the usual
//! setup of a Backstage double, STS behind a recorder and the broker between them.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use super::audit::audit_rows;
use super::backstage::{BackstageDouble, STATIC_CATALOG_TOKEN};
use super::process::{free_port, stackpass_binary, TEST_POSTGRES_URL};
use super::sts::{Moto, StsBehaviour, StsRecorder};

pub const STACKS_TOML: &str = r#"
[[stacks]]
ref = "pulumi:acme/payments/dev"
tags = { "backstage.io/component" = "payments", environment = "dev", aws-account = "111111111111" }

[[stacks]]
ref = "pulumi:acme/payments/prod"
tags = { "backstage.io/component" = "payments", environment = "prod", aws-account = "999999999999" }

[[stacks]]
ref = "terraform:acme/payments-prod"
tags = { "backstage.io/component" = "payments", environment = "prod", aws-account = "999999999999" }

[[stacks]]
ref = "terraform:acme/search-dev"
tags = { "backstage.io/component" = "search", environment = "dev", aws-account = "222222222222" }

[[stacks]]
ref = "pulumi:acme/payments-platform-infrastructure-and-networking/development-environment-for-the-payments-team-in-europe-west"
tags = { "backstage.io/component" = "payments", environment = "dev", aws-account = "111111111111" }

[[stacks]]
ref = "pulumi:acme/ghost/dev"
tags = { "backstage.io/component" = "ghost", environment = "dev", aws-account = "333333333333" }
"#;

/// A stack in [`STACKS_TOML`] whose reference is longer than Google's
/// 127-byte subject limit.
pub const LONG_STACK: &str = "pulumi:acme/payments-platform-infrastructure-and-networking/development-environment-for-the-payments-team-in-europe-west";

/// A prod rule that needs one approval from team-payments (access requests
/// are made and decided rather than only refused). A test may append keys to
/// its table (it ends the text).
pub const PROD_APPROVAL_RULE: &str = r#"
[[policy.rules]]
name = "owners-deploy-prod"
provider = "aws"
tags = { environment = ["prod"], aws-account = ["*"] }
role = "arn:aws:iam::{tags.aws-account}:role/{component}-prod-deployer"
max_duration = "1h"
approval = { count = 1, approvers = ["group:default/team-payments"], window = "1h", request_ttl = "1h" }
"#;

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

    /// Fixes the broker's address before it starts (a free port, as its
    /// listen address and public URL) and returns the public URL, for
    /// settings that must name it up front (the MCP resource an identity
    /// provider mints tokens for).
    pub fn at_fixed_address(&mut self) -> String {
        let port = free_port();
        let public_url = format!("http://127.0.0.1:{port}");
        self.env.push((
            "STACKPASS_SERVER__LISTEN".into(),
            format!("127.0.0.1:{port}"),
        ));
        self.env
            .push(("STACKPASS_SERVER__PUBLIC_URL".into(), public_url.clone()));
        public_url
    }

    pub fn config(&self) -> String {
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
request_timeout = "30s"

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

# The suite sends bursts and bad tokens from one address and one principal;
# the tests of the limits set them (STACKPASS_LIMITS__*).
[limits]
issuance_per_principal_per_minute = 0
issuance_per_address_per_minute = 0
auth_failures_per_address_per_minute = 0
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
    config: PathBuf,
    child: Child,
    logs: Arc<Mutex<String>>,
}

impl Broker {
    pub async fn start(options: BrokerOptions) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("stackpass.toml"), options.config()).unwrap();
        std::fs::write(dir.path().join("stacks.toml"), STACKS_TOML).unwrap();
        std::fs::write(dir.path().join("catalog-token"), &options.catalog_token).unwrap();
        // The test's own env comes last, so it may override the audit URL.
        let mut env: Vec<(String, String)> = options
            .audit_url
            .iter()
            .map(|url| ("STACKPASS_AUDIT__URL".to_owned(), url.clone()))
            .collect();
        env.extend(options.env.iter().cloned());
        let config = dir.path().join("stackpass.toml");
        Broker::spawn(dir, config, &env).await
    }

    /// Another replica from an existing config file (and the key files,
    /// tokens and stacks beside it), as a deployment's pods share one
    /// ConfigMap and one set of Secrets; it listens on its own random port.
    /// Its `dir` is its own empty temp dir.
    pub async fn start_replica(config: &std::path::Path, env: &[(String, String)]) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let mut env = env.to_vec();
        env.push(("STACKPASS_SERVER__LISTEN".into(), "127.0.0.1:0".into()));
        Broker::spawn(dir, config.to_owned(), &env).await
    }

    async fn spawn(dir: tempfile::TempDir, config: PathBuf, env: &[(String, String)]) -> Broker {
        let mut command = Command::new(stackpass_binary());
        command
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env("STACKPASS_LOG", "debug")
            .env_remove("STACKPASS_TOKEN")
            .env_remove("STACKPASS_URL")
            .env_remove(TEST_POSTGRES_URL)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("start stackpass serve");
        let logs = Arc::new(Mutex::new(String::new()));
        let (address_tx, address_rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                for scheme in ["http", "https"] {
                    if let Some(rest) = line.split(&format!("listening on {scheme}://")).nth(1) {
                        // Text or JSON lines: the address ends at the first
                        // character no address has.
                        let addr = rest
                            .split(|c: char| !(c.is_ascii_alphanumeric() || ".:[]".contains(c)))
                            .next()
                            .unwrap_or_default()
                            .to_owned();
                        let _ = address_tx.send((scheme, addr));
                    }
                }
                let mut logs = sink.lock().unwrap();
                logs.push_str(&line);
                logs.push('\n');
            }
        });
        let (scheme, address) = match address_rx.recv_timeout(Duration::from_secs(30)) {
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
        // Test certificates are for `localhost`.
        let url = match scheme {
            "https" => format!("https://localhost:{}", addr.port()),
            _ => format!("http://{addr}"),
        };
        Broker {
            url,
            dir,
            config,
            child,
            logs,
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.config.clone()
    }

    pub fn audit_path(&self) -> PathBuf {
        self.dir.path().join("audit.db")
    }

    /// SIGKILL: no shutdown, no flushing, as in a crash.
    // No test calls it today (`burst_then_kill` kills by pid from another task,
    // since it only borrows the broker); kept as the fixture's own crash switch.
    #[allow(dead_code)]
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, as Kubernetes stops a pod.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM {}", self.pid());
    }

    /// The exit status, once the broker has exited (None if it still runs
    /// after `timeout`).
    pub async fn exited(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn audit_url(&self) -> String {
        format!("sqlite://{}", self.audit_path().display())
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Whether `needle` shows up in the log within ten seconds. A line the
    /// broker writes after the effect a test observed (a delivered webhook, a
    /// committed row) reaches the captured log a moment later, and later still
    /// on a loaded machine.
    pub async fn logged(&self, needle: &str) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !self.logs().contains(needle) {
            if std::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
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
        World::from_parts(backstage, sts, broker)
    }

    /// A world whose broker the test started with its own options.
    pub fn from_parts(backstage: BackstageDouble, sts: StsRecorder, broker: Broker) -> World {
        World {
            backstage,
            sts,
            broker,
            _moto: None,
        }
    }
}
