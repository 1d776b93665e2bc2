//! The provider boundary, proved end to end: testcloud, a fake cloud compiled
//! in only for tests (cargo feature `testcloud`), plugs in through the registry
//! alone and gets the same pipeline AWS gets: its own config table, typed
//! targets checked when policy loads, its own duration limits, its own claim in
//! the subject token, audited issuance, and its own CLI output format.

use serde_json::json;

use crate::support::*;

const TESTCLOUD: &str = r#"
[providers.testcloud]
audience = "testcloud-e2e"

[[policy.rules]]
name = "owners-use-testcloud"
provider = "testcloud"
tags = { environment = ["dev"] }
role = "project/{component}-{environment}"
max_duration = "30m"
"#;

async fn broker(backstage: &BackstageDouble, sts: &StsRecorder) -> Broker {
    let mut options = BrokerOptions::new(backstage, &sts.url);
    options.extra_config = TESTCLOUD.into();
    Broker::start(options).await
}

fn testcloud_request(duration_seconds: Option<u64>) -> serde_json::Value {
    let mut body = json!({ "stack": "pulumi:acme/payments/dev", "provider": "testcloud" });
    if let Some(seconds) = duration_seconds {
        body["duration_seconds"] = seconds.into();
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_added_through_the_registry_alone_issues_end_to_end() {
    let backstage = BackstageDouble::start().await;
    let sts = StsRecorder::start(StsBehaviour::Succeed).await;
    let broker = broker(&backstage, &sts).await;
    let jane = backstage.user_token("user:default/jane");

    let response = broker
        .request_credentials(Some(&jane), testcloud_request(None))
        .await;
    assert_eq!(response.status, 200, "{}", response.text);
    let body = &response.body;
    assert_eq!(body["provider"], "testcloud");
    assert_eq!(body["role"], "project/payments-dev");
    assert_eq!(body["duration_seconds"], 600, "testcloud's own default");
    assert_eq!(body["credentials"]["project"], "payments-dev");
    let token = body["credentials"]["token"].as_str().unwrap();
    assert!(token.starts_with("tc.payments-dev."), "{token}");
    assert!(sts.calls().is_empty(), "AWS was not involved");

    // Audited like any issuance; the credential id ties back to the intent's
    // subject token, which carried testcloud's audience and claim.
    let rows = broker.audit_rows().await;
    let events: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r["event"].as_str().unwrap(), r["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(
        events,
        [
            ("decision", "allowed"),
            ("issuance_intent", "pending"),
            ("issuance_outcome", "issued")
        ]
    );
    for row in &rows {
        assert_eq!(row["provider"], "testcloud");
        assert_eq!(row["role"], "project/payments-dev");
    }
    let intent: serde_json::Value =
        serde_json::from_str(rows[1]["detail"].as_str().unwrap()).unwrap();
    assert_eq!(rows[2]["credential_id"], intent["subject_token_id"]);
    assert!(
        !rows.iter().any(|r| r.to_string().contains(token)),
        "the secret never reaches the audit log"
    );

    // Its own limits: below AWS's minimum is fine here, the rule caps the top.
    let short = broker
        .request_credentials(Some(&jane), testcloud_request(Some(60)))
        .await;
    assert_eq!(short.body["duration_seconds"], 60, "{}", short.text);
    let long = broker
        .request_credentials(Some(&jane), testcloud_request(Some(7200)))
        .await;
    assert_eq!(long.body["duration_seconds"], 1800, "{}", long.text);
    broker
        .request_credentials(Some(&jane), testcloud_request(Some(59)))
        .await
        .assert_problem(422, "invalid-request");

    // Ownership still decides.
    let bob = backstage.user_token("user:default/bob");
    broker
        .request_credentials(Some(&bob), testcloud_request(None))
        .await
        .assert_problem(403, "denied");

    // The discovery document advertises testcloud's claim beside AWS's.
    let discovery = broker.get("/.well-known/openid-configuration").await;
    let claims = discovery.body["claims_supported"].to_string();
    assert!(
        claims.contains("https://testcloud.example/project")
            && claims.contains("https://aws.amazon.com/tags"),
        "{claims}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_prints_a_providers_own_formats_and_refuses_others() {
    let backstage = BackstageDouble::start().await;
    let sts = StsRecorder::start(StsBehaviour::Succeed).await;
    let broker = broker(&backstage, &sts).await;
    let jane = backstage.user_token("user:default/jane");
    let creds = |format: &str| {
        stackpass(&[
            "creds",
            "--stack",
            "pulumi:acme/payments/dev",
            "--provider",
            "testcloud",
            "--format",
            format,
            "--server",
            &broker.url,
        ])
        .env("STACKPASS_TOKEN", &jane)
        .output()
        .unwrap()
    };

    let env = creds("env");
    assert!(env.status.success(), "{}", stderr(&env));
    let text = stdout(&env);
    assert!(
        text.starts_with("export TESTCLOUD_TOKEN=tc.payments-dev."),
        "{text}"
    );
    assert!(
        text.contains("export TESTCLOUD_PROJECT=payments-dev"),
        "{text}"
    );

    let before = broker.audit_rows().await.len();
    let refused = creds("credential-process");
    assert_eq!(refused.status.code(), Some(1));
    assert_eq!(
        stderr(&refused).trim(),
        "error: testcloud credentials cannot be printed as credential-process\nhint: use --format json, env"
    );
    assert_eq!(
        broker.audit_rows().await.len(),
        before,
        "a format typo never costs an issuance"
    );
}

#[test]
fn config_check_reports_a_providers_own_problems_and_targets_it_cannot_parse() {
    let dir = tempfile::tempdir().unwrap();
    let quickstart = workspace_root().join("examples/quickstart");
    for file in ["catalog.toml", "stacks.toml"] {
        std::fs::copy(quickstart.join(file), dir.path().join(file)).unwrap();
    }
    let config = std::fs::read_to_string(quickstart.join("stackpass.toml"))
        .unwrap()
        .replace("state/", "")
        + "\n[providers.testcloud]\naudience = \"\"\nregion = \"eu\"\n";
    std::fs::write(dir.path().join("stackpass.toml"), &config).unwrap();
    let check = |dir: &std::path::Path| {
        stackpass(&[
            "config",
            "check",
            "--config",
            dir.join("stackpass.toml").to_str().unwrap(),
        ])
        .output()
        .unwrap()
    };
    let output = check(dir.path());
    assert_eq!(output.status.code(), Some(1));
    let text = stderr(&output);
    assert!(text.contains("providers.testcloud.region"), "{text}");

    // A target the provider cannot parse is refused when policy loads, with its
    // file and line.
    let config = config.replace("audience = \"\"\nregion = \"eu\"\n", "")
        + "[policy]\nfiles = [\"policy.toml\"]\n";
    std::fs::write(dir.path().join("stackpass.toml"), config).unwrap();
    std::fs::write(
        dir.path().join("policy.toml"),
        "[[rules]]\nname = \"typo\"\nprovider = \"testcloud\"\nrole = \"projects/{component}\"\n",
    )
    .unwrap();
    let output = check(dir.path());
    assert_eq!(output.status.code(), Some(1));
    let text = stderr(&output);
    assert!(
        text.contains("policy.toml:1") && text.contains("is not a testcloud project"),
        "{text}"
    );
}
