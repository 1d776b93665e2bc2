//! The broker's own https (`[server.tls]`) with a private CA made in the test:
//! `stackpass creds` and the AWS CLI's `credential_process` through it, a
//! renewed certificate served without a restart (and a broken one refused),
//! a handshake that never finishes cut off at the header deadline, and
//! `config check` on the files.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use crate::support::*;

fn tls_config(cert: &Path, key: &Path, extra: &str) -> String {
    format!(
        "[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n{extra}",
        cert.display(),
        key.display()
    )
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

const ALL_VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

// Blocking child processes below must not starve the doubles served on this runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_and_the_aws_cli_get_credentials_over_https_trusting_a_private_ca() {
    let ca = TestCa::generate();
    let files = tempfile::tempdir().unwrap();
    let (cert, key) = ca.server_pair(1).write(files.path());
    let bundle = ca.write_bundle(files.path());
    let backstage = BackstageDouble::start().await;
    let moto = Moto::start().await;
    let mut options = BrokerOptions::new(&backstage, &moto.url);
    options.extra_config = tls_config(&cert, &key, "");
    let broker = Broker::start(options).await;
    assert!(
        broker.url.starts_with("https://localhost:"),
        "{}",
        broker.url
    );
    assert!(broker.logs().contains("serving: TLS certificate"));
    assert!(
        broker.logs().contains("expires=\"2031-01-01T00:00:00Z\""),
        "{}",
        broker.logs()
    );

    // TLS 1.2 and 1.3 both negotiate, and ALPN settles on http/1.1 when a
    // client offers h2 first.
    let port = port_of(&broker.url);
    for version in ALL_VERSIONS {
        let (_, alpn, negotiated) = served_certificate(port, &ca, &[*version]).await.unwrap();
        assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
        assert_eq!(negotiated, version.version);
    }

    let token = backstage.user_token("user:default/jane");
    let creds = |extra: &[&str], env: &[(&str, &str)]| {
        // No cache: every call must reach the broker over https.
        let mut args = vec![
            "creds",
            "--no-cache",
            "--stack",
            "pulumi:acme/payments/dev",
            "--server",
            &broker.url,
        ];
        args.extend_from_slice(extra);
        let mut command = stackpass(&args);
        command
            .env("STACKPASS_TOKEN", &token)
            .env_remove("SSL_CERT_FILE");
        for (name, value) in env {
            command.env(name, value);
        }
        command.output().unwrap()
    };
    // The public roots alone do not know the private CA.
    let untrusted = creds(&[], &[]);
    assert!(!untrusted.status.success());
    let text = stderr(&untrusted);
    assert!(text.contains("TLS certificate is not trusted"), "{text}");
    assert!(text.contains("--ca-file"), "{text}");
    // --ca-file, STACKPASS_CA_FILE and SSL_CERT_FILE each make it trusted.
    let issued =
        |rows: Vec<serde_json::Value>| rows.iter().filter(|r| r["outcome"] == "issued").count();
    let issued_before = issued(broker.audit_rows().await);
    let bundle = bundle.to_str().unwrap();
    for output in [
        creds(&["--ca-file", bundle], &[]),
        creds(&[], &[("STACKPASS_CA_FILE", bundle)]),
        creds(&[], &[("SSL_CERT_FILE", bundle)]),
    ] {
        assert!(output.status.success(), "{}", stderr(&output));
        let answer: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert!(
            answer["credentials"]["access_key_id"]
                .as_str()
                .is_some_and(|id| id.starts_with("ASIA")),
            "{answer}"
        );
    }
    assert_eq!(issued(broker.audit_rows().await), issued_before + 3);
    // A bundle that is not PEM is named, not ignored.
    let junk = files.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let output = creds(&["--ca-file", junk.to_str().unwrap()], &[]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("junk.pem"), "{}", stderr(&output));

    // The AWS CLI, with stackpass as its credential_process over https.
    let token_file = files.path().join("token");
    std::fs::write(&token_file, &token).unwrap();
    let output = aws_cli_through_creds(
        files.path(),
        &broker.url,
        &moto.url,
        &token_file,
        &format!(" --ca-file {bundle}"),
    )
    .env_remove("STACKPASS_CA_FILE")
    .env_remove("SSL_CERT_FILE")
    .env_remove("STACKPASS_TOKEN")
    .env("STACKPASS_CACHE_DIR", files.path().join("cache"))
    .output()
    .unwrap();
    assert!(output.status.success(), "aws failed: {}", stderr(&output));
    assert_eq!(issued(broker.audit_rows().await), issued_before + 4);
    let identity: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        identity["Arn"],
        "arn:aws:sts::111111111111:assumed-role/payments-deployer/user.default.jane"
    );
    let rows = broker.audit_rows().await;
    assert_eq!(rows.last().unwrap()["outcome"], "issued");
}

/// Polls new connections until one is served `expected` (or ten seconds pass).
async fn wait_for_certificate(port: u16, ca: &TestCa, expected: &[u8]) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok((served, _, _)) = served_certificate(port, ca, ALL_VERSIONS).await {
            if served == expected {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_restart_and_a_broken_one_is_refused() {
    let ca = TestCa::generate();
    let files = tempfile::tempdir().unwrap();
    let first = ca.server_pair(1001);
    let (cert, key) = first.write(files.path());
    let backstage = BackstageDouble::start().await;
    let sts = StsRecorder::start(StsBehaviour::Succeed).await;
    let mut options = BrokerOptions::new(&backstage, &sts.url);
    options.extra_config = tls_config(&cert, &key, "reload_interval = \"1s\"\n");
    let broker = Broker::start(options).await;
    let port = port_of(&broker.url);
    let (served, _, _) = served_certificate(port, &ca, ALL_VERSIONS).await.unwrap();
    assert_eq!(served, first.der);

    // Renewed: a new serial, a new key, the same paths.
    let second = ca.server_pair(1002);
    second.write(files.path());
    assert!(
        wait_for_certificate(port, &ca, &second.der).await,
        "the renewed certificate was not served; log:\n{}",
        broker.logs()
    );
    assert!(broker.logged("reloaded: TLS certificate").await);
    assert!(
        broker.logs().contains("serial=\"03ea\""),
        "{}",
        broker.logs()
    );

    // A broken renewal: a certificate whose key is not the one beside it,
    // then a key file that is not a key. Both refused; the second pair keeps
    // serving, and requests still succeed over it.
    let third = ca.server_pair(1003);
    std::fs::write(&cert, &third.cert_pem).unwrap();
    assert!(
        broker
            .logged("does not belong to the first certificate")
            .await
    );
    std::fs::write(&cert, &second.cert_pem).unwrap();
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    assert!(
        broker.logged("holds no usable private key").await,
        "{}",
        broker.logs()
    );
    assert!(broker
        .logs()
        .contains("the previous certificate keeps serving"));
    let (served, _, _) = served_certificate(port, &ca, ALL_VERSIONS).await.unwrap();
    assert_eq!(served, second.der);
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let response = client
        .post(format!("{}/v1/credentials", broker.url))
        .bearer_auth(backstage.user_token("user:default/jane"))
        .json(&credential_request("pulumi:acme/payments/dev"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // Repaired: the third pair, whole, is picked up.
    third.write(files.path());
    assert!(wait_for_certificate(port, &ca, &third.der).await);
}

#[tokio::test]
async fn a_client_that_never_finishes_its_handshake_loses_its_slot_at_the_header_deadline() {
    let ca = TestCa::generate();
    let files = tempfile::tempdir().unwrap();
    let pair = ca.server_pair(7);
    let (cert, key) = pair.write(files.path());
    let backstage = BackstageDouble::start().await;
    let sts = StsRecorder::start(StsBehaviour::Succeed).await;
    let mut options = BrokerOptions::new(&backstage, &sts.url);
    options.extra_config = tls_config(&cert, &key, "");
    // One connection at a time, and a one-second deadline for the handshake
    // and the headers.
    options.env = vec![
        ("STACKPASS_SERVER__MAX_CONNECTIONS".into(), "1".into()),
        ("STACKPASS_SERVER__HEADER_READ_TIMEOUT".into(), "1s".into()),
    ];
    let broker = Broker::start(options).await;
    let port = port_of(&broker.url);

    // Connects, sends nothing: the only slot is taken...
    let started = Instant::now();
    let mut stalled = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        served_certificate(port, &ca, ALL_VERSIONS).await.is_err(),
        "a second connection was served while the stalled one held the only slot"
    );
    // ...until the deadline closes it.
    let mut buffer = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), stalled.read(&mut buffer))
        .await
        .expect("the stalled handshake was not cut off");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(started.elapsed() >= Duration::from_millis(900));
    let (served, _, _) = served_certificate(port, &ca, ALL_VERSIONS).await.unwrap();
    assert_eq!(served, pair.der);
}

#[test]
fn config_check_loads_the_certificate_and_key() {
    let ca = TestCa::generate();
    let dir = tempfile::tempdir().unwrap();
    let from = workspace_root().join("examples/quickstart");
    for file in ["stackpass.toml", "catalog.toml", "stacks.toml"] {
        std::fs::copy(from.join(file), dir.path().join(file)).unwrap();
    }
    std::fs::create_dir(dir.path().join("state")).unwrap();
    let quickstart = std::fs::read_to_string(dir.path().join("stackpass.toml")).unwrap();
    let pair = ca.server_pair(9);
    let (cert, key) = pair.write(dir.path());
    let config = dir.path().join("stackpass.toml");
    let check = |tls: &str| {
        std::fs::write(&config, format!("{quickstart}\n{tls}")).unwrap();
        stackpass(&["config", "check", "--config", config.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let ok = check(&tls_config(&cert, &key, ""));
    assert!(ok.status.success(), "{}", stderr(&ok));
    // STACKPASS_CA_FILE is the CLI's, not a configuration key.
    let with_cli_variable = stackpass(&["config", "check", "--config", config.to_str().unwrap()])
        .env("STACKPASS_CA_FILE", dir.path().join("cert.pem"))
        .output()
        .unwrap();
    assert!(
        with_cli_variable.status.success(),
        "{}",
        stderr(&with_cli_variable)
    );

    let other = ca.server_pair(10);
    let other_key = dir.path().join("other-key.pem");
    std::fs::write(&other_key, &other.key_pem).unwrap();
    let mismatched = check(&tls_config(&cert, &other_key, ""));
    assert!(!mismatched.status.success());
    assert!(
        stderr(&mismatched).contains("does not belong to the first certificate"),
        "{}",
        stderr(&mismatched)
    );

    let missing = check(&tls_config(&dir.path().join("nope.pem"), &key, ""));
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("server.tls.cert_file"),
        "{}",
        stderr(&missing)
    );

    // Relative paths are the config file's neighbours; a section without
    // its certificate, or with a reload interval of zero, is named.
    let relative = check("[server.tls]\ncert_file = \"cert.pem\"\nkey_file = \"key.pem\"\n");
    assert!(relative.status.success(), "{}", stderr(&relative));
    let half = check("[server.tls]\nkey_file = \"key.pem\"\n");
    assert!(!half.status.success());
    assert!(stderr(&half).contains("cert_file"), "{}", stderr(&half));
    let zero = check(&tls_config(&cert, &key, "reload_interval = \"0s\"\n"));
    assert!(!zero.status.success());
    assert!(
        stderr(&zero).contains("server.tls.reload_interval"),
        "{}",
        stderr(&zero)
    );
}
