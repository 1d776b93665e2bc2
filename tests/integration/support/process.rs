//! Paths, child processes and local HTTP: where the workspace and the binaries
//! are, the `stackpass` CLI without the caller's environment, free ports, waiting
//! for a server to answer, and serving an axum router on a random port.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use axum::Router;

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn stackpass_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_stackpass"))
}

pub(super) fn venv_binary(name: &str) -> PathBuf {
    let path = workspace_root().join(".venv/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run scripts/setup-test-deps (or the README's test command) first",
        path.display()
    );
    path
}

/// The test venv's Python, with google-auth (and the other PyPI clients) installed.
pub fn venv_python() -> PathBuf {
    venv_binary("python")
}

pub fn aws_cli() -> PathBuf {
    venv_binary("aws")
}

/// The AWS CLI's `sts get-caller-identity` against `sts_url`, with a profile
/// whose `credential_process` is `stackpass creds` for the payments dev stack
/// (plus `creds_args`) and none of the caller's own AWS credentials or
/// profiles; `dir` holds its config file.
pub fn aws_cli_through_creds(
    dir: &Path,
    broker_url: &str,
    sts_url: &str,
    token_file: &Path,
    creds_args: &str,
) -> Command {
    let aws_config = dir.join("aws-config");
    std::fs::write(
        &aws_config,
        format!(
            "[profile payments-dev]\nregion = us-east-1\ncredential_process = {} creds --stack pulumi:acme/payments/dev --duration 15m --format credential-process --server {broker_url}{creds_args} --token-file {}\n",
            stackpass_binary().display(),
            token_file.display()
        ),
    )
    .unwrap();
    let mut command = Command::new(aws_cli());
    command
        .args([
            "sts",
            "get-caller-identity",
            "--profile",
            "payments-dev",
            "--endpoint-url",
            sts_url,
            "--output",
            "json",
        ])
        .env("AWS_CONFIG_FILE", &aws_config)
        .env("AWS_SHARED_CREDENTIALS_FILE", dir.join("no-credentials"))
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE");
    command
}

/// Runs `command` with `input` on its standard input, capturing its output.
pub fn output_with_stdin(mut command: Command, input: &[u8]) -> std::process::Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// `PATH` with the test venv first, so commands a test runs find `aws`.
pub fn path_with_venv() -> String {
    format!(
        "{}:{}",
        aws_cli().parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// The `stackpass` CLI, without the caller's STACKPASS_* environment.
pub fn stackpass(args: &[&str]) -> Command {
    let mut command = Command::new(stackpass_binary());
    command
        .args(args)
        .env_remove("STACKPASS_TOKEN")
        .env_remove("STACKPASS_URL")
        .env_remove("STACKPASS_CONFIG")
        .env_remove("STACKPASS_CA_FILE")
        .env_remove(TEST_POSTGRES_URL);
    command
}

/// The test suite's own knob (see `postgres`). It shares the `STACKPASS_`
/// prefix of configuration overrides, so every `stackpass` the tests start
/// must not inherit it, or its configuration gains an unknown key.
pub const TEST_POSTGRES_URL: &str = "STACKPASS_TEST_POSTGRES_URL";

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

pub(super) async fn wait_for_http(url: &str, deadline: Duration) {
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

pub(super) async fn spawn_router(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    format!("http://{addr}")
}
