//! The CLI as users run it: `creds` feeding the real AWS CLI through
//! `credential_process`, error output, `config check`, `keys generate`, `dev token`.

use std::path::Path;

use crate::support::*;

// Blocking child processes below must not starve the doubles served on this runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aws_cli_uses_stackpass_as_its_credential_process() {
    let backstage = BackstageDouble::start().await;
    let moto = Moto::start().await;
    let broker = Broker::start(BrokerOptions::new(&backstage, &moto.url)).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, backstage.user_token("user:default/jane")).unwrap();
    let output = aws_cli_through_creds(dir.path(), &broker.url, &moto.url, &token_file, "")
        .output()
        .unwrap();
    assert!(output.status.success(), "aws failed: {}", stderr(&output));
    let identity: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(identity["Account"], "111111111111");
    assert_eq!(
        identity["Arn"],
        "arn:aws:sts::111111111111:assumed-role/payments-deployer/user.default.jane"
    );
    let rows = broker.audit_rows().await;
    assert_eq!(rows.last().unwrap()["outcome"], "issued");
}

// Blocking child processes below must not starve the doubles served on this runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creds_prints_exact_credential_process_and_env_formats() {
    let backstage = BackstageDouble::start().await;
    let moto = Moto::start().await;
    let broker = Broker::start(BrokerOptions::new(&backstage, &moto.url)).await;
    let token = backstage.user_token("user:default/jane");
    let run = |format: &str| {
        stackpass(&[
            "creds",
            "--stack",
            "pulumi:acme/payments/dev",
            "--format",
            format,
            "--server",
            &broker.url,
        ])
        .env("STACKPASS_TOKEN", &token)
        .output()
        .unwrap()
    };

    let output = run("credential-process");
    assert!(output.status.success(), "{}", stderr(&output));
    let process: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let keys: Vec<&str> = process
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys.len(), 5, "{process}");
    for key in [
        "Version",
        "AccessKeyId",
        "SecretAccessKey",
        "SessionToken",
        "Expiration",
    ] {
        assert!(process.get(key).is_some(), "missing {key}");
    }
    assert_eq!(process["Version"], 1);
    let expiration = process["Expiration"].as_str().unwrap();
    assert!(
        time::OffsetDateTime::parse(expiration, &time::format_description::well_known::Rfc3339)
            .is_ok(),
        "{expiration}"
    );

    let output = run("env");
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    for variable in [
        "AWS_ACCESS_KEY_ID=ASIA",
        "AWS_SECRET_ACCESS_KEY=",
        "AWS_SESSION_TOKEN=",
        "AWS_CREDENTIAL_EXPIRATION=",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("export {variable}"))),
            "{variable} missing:\n{text}"
        );
    }
}

// Blocking child processes below must not starve the doubles served on this runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creds_errors_are_one_line_with_a_hint() {
    let backstage = BackstageDouble::start().await;
    let sts = StsRecorder::start(StsBehaviour::Outage).await;
    let broker = Broker::start(BrokerOptions::new(&backstage, &sts.url)).await;

    let denied = stackpass(&[
        "creds",
        "--stack",
        "pulumi:acme/payments/dev",
        "--server",
        &broker.url,
    ])
    .env("STACKPASS_TOKEN", backstage.user_token("user:default/bob"))
    .output()
    .unwrap();
    assert_eq!(denied.status.code(), Some(1));
    let text = stderr(&denied);
    assert!(
        text.starts_with("error: Denied by policy (HTTP 403)"),
        "{text}"
    );
    assert!(
        text.contains(
            "no rule grants aws credentials for pulumi:acme/payments/dev to user:default/bob"
        ),
        "{text}"
    );
    assert!(text.contains("\nhint: "), "{text}");
    assert!(denied.stdout.is_empty());

    let no_token = stackpass(&[
        "creds",
        "--stack",
        "pulumi:acme/payments/dev",
        "--server",
        &broker.url,
    ])
    .output()
    .unwrap();
    assert_eq!(no_token.status.code(), Some(1));
    assert_eq!(
        stderr(&no_token).trim(),
        "error: no identity token\nhint: pass --token-file FILE or set STACKPASS_TOKEN to your Backstage identity token"
    );

    let unreachable = stackpass(&[
        "creds",
        "--stack",
        "pulumi:acme/payments/dev",
        "--server",
        &format!("http://127.0.0.1:{}", free_port()),
    ])
    .env("STACKPASS_TOKEN", "x")
    .output()
    .unwrap();
    assert!(
        stderr(&unreachable).contains("could not reach the broker"),
        "{}",
        stderr(&unreachable)
    );

    let bad_duration = stackpass(&[
        "creds",
        "--stack",
        "pulumi:acme/payments/dev",
        "--duration",
        "soon",
    ])
    .output()
    .unwrap();
    assert_eq!(
        bad_duration.status.code(),
        Some(2),
        "clap rejects it as usage: {}",
        stderr(&bad_duration)
    );
}

fn copy_quickstart(to: &Path) {
    let from = workspace_root().join("examples/quickstart");
    for file in ["stackpass.toml", "catalog.toml", "stacks.toml"] {
        std::fs::copy(from.join(file), to.join(file)).unwrap();
    }
    std::fs::create_dir(to.join("state")).unwrap();
}

#[test]
fn config_check_accepts_the_quickstart_and_names_broken_keys() {
    let dir = tempfile::tempdir().unwrap();
    copy_quickstart(dir.path());
    let config = dir.path().join("stackpass.toml");
    let config = config.to_str().unwrap();

    let ok = stackpass(&["config", "check", "--config", config])
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert!(
        stdout(&ok).contains("ok (1 trusted issuer(s), 1 rule(s), providers: aws)"),
        "{}",
        stdout(&ok)
    );

    // Environment variables override the file, and are validated the same way.
    let overridden = stackpass(&["config", "check", "--config", config])
        .env("STACKPASS_AUDIT__URL", "mysql://audit")
        .env("STACKPASS_SERVER__MAX_BODY_BYTES", "not-a-number")
        .output()
        .unwrap();
    assert_eq!(overridden.status.code(), Some(1));
    assert!(
        stderr(&overridden).contains("server.max_body_bytes"),
        "{}",
        stderr(&overridden)
    );

    let overridden = stackpass(&["config", "check", "--config", config])
        .env("STACKPASS_AUDIT__URL", "mysql://audit")
        .output()
        .unwrap();
    assert!(
        stderr(&overridden).contains("audit.url: \"mysql://audit\" is not supported"),
        "{}",
        stderr(&overridden)
    );

    let text = std::fs::read_to_string(dir.path().join("stackpass.toml")).unwrap();
    std::fs::write(
        dir.path().join("stackpass.toml"),
        text.replace("{component}-deployer", "{team}-deployer")
            .replace(
                "max_duration = \"1h\"",
                "max_duration = \"1h\"\nbogus = true",
            ),
    )
    .unwrap();
    let broken = stackpass(&["config", "check", "--config", config])
        .output()
        .unwrap();
    assert_eq!(broken.status.code(), Some(1));
    let text = stderr(&broken);
    assert!(text.starts_with("error: "), "{text}");
    assert!(
        text.contains("policy.rules") && text.contains("bogus"),
        "{text}"
    );
    assert!(text.contains("\nhint: "), "{text}");

    std::fs::write(
        dir.path().join("stackpass.toml"),
        text.replace("bogus = true", ""),
    )
    .unwrap();
    let missing = stackpass(&["config", "check", "--config", "/nonexistent/stackpass.toml"])
        .output()
        .unwrap();
    assert!(
        stderr(&missing).contains("does not exist"),
        "{}",
        stderr(&missing)
    );
}

#[test]
fn config_check_reports_unknown_role_template_variables() {
    let dir = tempfile::tempdir().unwrap();
    copy_quickstart(dir.path());
    let path = dir.path().join("stackpass.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("{component}-deployer", "{team}-deployer"),
    )
    .unwrap();
    let output = stackpass(&["config", "check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("policy.rules[0]: rule \"owners-deploy-nonprod\": role: template")
            && stderr(&output).contains("{team}"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn keys_generate_writes_a_private_key_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key.pem");
    let first = stackpass(&["keys", "generate", "--out", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(stdout(&first).contains("kid "));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let before = std::fs::read(&path).unwrap();
    let second = stackpass(&["keys", "generate", "--out", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1));
    assert!(
        stderr(&second).contains("refusing to overwrite"),
        "{}",
        stderr(&second)
    );
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

// Blocking child processes below must not starve the doubles served on this runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_token_only_works_with_a_development_issuer() {
    let backstage = BackstageDouble::start().await;
    let sts = StsRecorder::start(StsBehaviour::Outage).await;
    let broker = Broker::start(BrokerOptions::new(&backstage, &sts.url)).await;
    let output = stackpass(&[
        "dev",
        "token",
        "--user",
        "user:default/jane",
        "--config",
        broker.config_path().to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("trusts no development issuer"),
        "{}",
        stderr(&output)
    );
    assert!(output.stdout.is_empty());
}

#[test]
fn serve_refuses_a_development_issuer_on_a_public_address() {
    let dir = tempfile::tempdir().unwrap();
    copy_quickstart(dir.path());
    let output = stackpass(&[
        "serve",
        "--config",
        dir.path().join("stackpass.toml").to_str().unwrap(),
        "--listen",
        "0.0.0.0:0",
    ])
    .output()
    .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("only listens on loopback"),
        "{}",
        stderr(&output)
    );
}
