//! Policy as code: `policy test` on the example repository, reloading policy files
//! without a restart (file change and SIGHUP), keeping the old policy when a new
//! one is broken, and dry-run decisions over HTTP and the CLI.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

const PROD_RULE: &str = r#"
[[rules]]
name = "owners-deploy-prod"
provider = "aws"
role = "arn:aws:iam::{tags.aws-account}:role/{component}-prod-deployer"
max_duration = "15m"
[rules.tags]
environment = ["ENVIRONMENT"]
aws-account = ["*"]
"#;

fn write_policy(dir: &Path, environment: &str) {
    std::fs::write(
        dir.join("prod.toml"),
        PROD_RULE.replace("ENVIRONMENT", environment),
    )
    .unwrap();
}

async fn broker_with_policy_dir(
    backstage: &BackstageDouble,
    sts: &StsRecorder,
    dir: &Path,
    interval: &str,
) -> Broker {
    let mut options = BrokerOptions::new(backstage, &sts.url);
    options.env.push((
        "STACKPASS_POLICY__FILES".into(),
        format!("[\"{}\"]", dir.display()),
    ));
    options
        .env
        .push(("STACKPASS_POLICY__RELOAD_INTERVAL".into(), interval.into()));
    Broker::start(options).await
}

async fn wait_for_status(broker: &Broker, token: &str, stack: &str, status: u16) -> TestResponse {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let response = broker
            .request_credentials(Some(token), credential_request(stack))
            .await;
        if response.status == status || Instant::now() > deadline {
            return response;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_for_audit(broker: &Broker, event: &str, outcome: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let rows = broker.audit_rows().await;
        if let Some(row) = rows
            .iter()
            .rev()
            .find(|r| r["event"] == event && r["outcome"] == outcome)
        {
            return row.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no {event}/{outcome} record; log:\n{}",
            broker.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_policy_file_is_picked_up_and_a_broken_one_is_refused() {
    let policy = tempfile::tempdir().unwrap();
    write_policy(policy.path(), "qa");
    let backstage = BackstageDouble::start().await;
    let sts = StsRecorder::start(StsBehaviour::Succeed).await;
    let broker = broker_with_policy_dir(&backstage, &sts, policy.path(), "200ms").await;
    let jane = backstage.user_token("user:default/jane");

    let response = broker
        .request_credentials(Some(&jane), credential_request("pulumi:acme/payments/prod"))
        .await;
    response.assert_problem(403, "denied");
    let rules: Vec<&str> = response.body["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rule"].as_str().unwrap())
        .collect();
    assert_eq!(
        rules,
        vec!["owners-deploy-nonprod", "owners-deploy-prod"],
        "config rules first, then files"
    );

    write_policy(policy.path(), "prod");
    let response = wait_for_status(&broker, &jane, "pulumi:acme/payments/prod", 200).await;
    assert_eq!(
        response.status, 200,
        "the change was not picked up: {}",
        response.text
    );
    assert_eq!(response.body["rule"], "owners-deploy-prod");
    let applied = wait_for_audit(&broker, "policy_reloaded", "applied").await;
    assert!(applied["detail"]
        .as_str()
        .unwrap()
        .contains("owners-deploy-prod"));

    // A broken file is refused as a whole and the previous policy keeps serving.
    std::fs::write(
        policy.path().join("prod.toml"),
        format!(
            "{}\ncolour = \"blue\"\n",
            PROD_RULE.replace("ENVIRONMENT", "qa")
        ),
    )
    .unwrap();
    let rejected = wait_for_audit(&broker, "policy_reloaded", "rejected").await;
    let detail = rejected["detail"].as_str().unwrap();
    assert!(
        detail.contains("prod.toml") && detail.contains("colour"),
        "{detail}"
    );
    assert!(broker.logged("policy reload rejected").await);
    let still = broker
        .request_credentials(Some(&jane), credential_request("pulumi:acme/payments/prod"))
        .await;
    assert_eq!(
        still.status, 200,
        "the old policy must keep serving: {}",
        still.text
    );

    // A shadowed rule is a broken policy too.
    let shadowed = format!(
        "{}\n[[rules]]\nname = \"narrower\"\nprovider = \"aws\"\nrole = \"arn:aws:iam::111111111111:role/x\"\n[rules.tags]\nenvironment = [\"prod\"]\naws-account = [\"111111111111\"]\n",
        PROD_RULE.replace("ENVIRONMENT", "prod")
    );
    std::fs::write(policy.path().join("prod.toml"), shadowed).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !broker.logs().contains("can never match") {
        assert!(
            Instant::now() < deadline,
            "shadowing not reported:\n{}",
            broker.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_policy() {
    let policy = tempfile::tempdir().unwrap();
    write_policy(policy.path(), "qa");
    let backstage = BackstageDouble::start().await;
    let sts = StsRecorder::start(StsBehaviour::Succeed).await;
    // Polling effectively off: only the signal can trigger the reload.
    let broker = broker_with_policy_dir(&backstage, &sts, policy.path(), "1h").await;
    let jane = backstage.user_token("user:default/jane");
    assert_eq!(
        broker
            .request_credentials(Some(&jane), credential_request("pulumi:acme/payments/prod"))
            .await
            .status,
        403
    );

    write_policy(policy.path(), "prod");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        broker
            .request_credentials(Some(&jane), credential_request("pulumi:acme/payments/prod"))
            .await
            .status,
        403,
        "nothing reloads before the signal"
    );
    std::process::Command::new("kill")
        .args(["-HUP", &broker.pid().to_string()])
        .status()
        .unwrap();
    let response = wait_for_status(&broker, &jane, "pulumi:acme/payments/prod", 200).await;
    assert_eq!(response.status, 200, "{}", response.text);
    let applied = wait_for_audit(&broker, "policy_reloaded", "applied").await;
    assert!(applied["detail"].as_str().unwrap().contains("SIGHUP"));
    let metrics = scrape(&format!("{}/metrics", broker.url)).await;
    assert_eq!(
        metrics.sum("stackpass_policy_reloads_total", &[("result", "applied")]),
        1.0
    );
    assert_eq!(
        metrics.sum("stackpass_policy_reloads_total", &[("result", "rejected")]),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_are_explained_without_issuing_and_audited() {
    let backstage = BackstageDouble::start().await;
    let sts = StsRecorder::start(StsBehaviour::Succeed).await;
    let broker = Broker::start(BrokerOptions::new(&backstage, &sts.url)).await;
    let client = reqwest::Client::new();
    let decide = |who: &str, stack: &str| {
        client
            .post(format!("{}/v1/decisions", broker.url))
            .bearer_auth(backstage.user_token(who))
            .json(&credential_request(stack))
            .send()
    };

    let allow: Value = decide("user:default/jane", "pulumi:acme/payments/dev")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(allow["decision"], "allow", "{allow}");
    assert_eq!(allow["rule"], "owners-deploy-nonprod");
    assert_eq!(
        allow["role"],
        "arn:aws:iam::111111111111:role/payments-deployer"
    );
    assert_eq!(allow["duration"], "15m");

    let deny: Value = decide("user:default/bob", "pulumi:acme/payments/dev")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(deny["decision"], "deny", "{deny}");
    assert!(!deny.to_string().contains("team-payments"), "{deny}");

    let unknown = decide("user:default/jane", "pulumi:acme/nope/dev")
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    assert!(sts.calls().is_empty(), "a dry run never reaches the cloud");

    let rows = broker.audit_rows().await;
    let dry: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r["event"].as_str().unwrap(), r["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(
        dry,
        vec![
            ("dry_run", "would_allow"),
            ("dry_run", "would_deny"),
            ("dry_run", "unknown_stack")
        ]
    );

    // The CLI front end of the same endpoint.
    let output = stackpass(&[
        "policy",
        "explain",
        "--stack",
        "pulumi:acme/payments/dev",
        "--server",
        &broker.url,
    ])
    .env("STACKPASS_TOKEN", backstage.user_token("user:default/bob"))
    .output()
    .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(text.starts_with("decision: deny\n"), "{text}");
    assert!(
        text.contains(
            "no rule grants aws credentials for pulumi:acme/payments/dev to user:default/bob"
        ) && !text.contains("team-payments"),
        "{text}"
    );
}

#[test]
fn the_example_policy_repository_passes_its_own_tests() {
    let tests = workspace_root().join("examples/policy-repo/tests");
    let mut files: Vec<String> = std::fs::read_dir(&tests)
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .collect();
    files.sort();
    let mut args = vec!["policy", "test"];
    args.extend(files.iter().map(String::as_str));
    let output = stackpass(&args).output().unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        stdout(&output),
        stderr(&output)
    );
    let text = stdout(&output);
    assert!(text.trim_end().ends_with("13 passed, 0 failed"), "{text}");
    assert!(!text.contains("FAIL"), "{text}");
}

#[test]
fn a_failing_policy_test_says_what_was_expected_and_why_it_was_not() {
    let dir = tempfile::tempdir().unwrap();
    let policy = workspace_root().join("examples/policy-repo/policy");
    std::fs::write(
        dir.path().join("wrong.toml"),
        format!(
            r#"policy = ["{}"]

[[cases]]
name = "bob deploys payments (he cannot)"
principal = {{ subject = "user:default/bob", groups = ["group:default/team-search"] }}
stack = {{ ref = "pulumi:acme/payments/dev", tags = {{ "backstage.io/component" = "payments", environment = "dev", aws-account = "111111111111", cost-center = "c" }} }}
owner = "group:default/team-payments"
request = {{ provider = "aws" }}
expect = "allow"

[[cases]]
name = "jane's grant is not what this case claims"
principal = {{ subject = "user:default/jane", groups = ["group:default/team-payments"] }}
stack = {{ ref = "pulumi:acme/payments/dev", tags = {{ "backstage.io/component" = "payments", environment = "dev", aws-account = "111111111111", cost-center = "c" }} }}
owner = "group:default/team-payments"
request = {{ provider = "aws", duration = "2h" }}
expect = "allow"
grant = {{ duration = "2h" }}
"#,
            policy.display()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("broken.toml"),
        "policy = [\"missing-dir/x.toml\"]\n",
    )
    .unwrap();
    let output = stackpass(&[
        "policy",
        "test",
        dir.path().join("wrong.toml").to_str().unwrap(),
        dir.path().join("broken.toml").to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let text = stdout(&output);
    assert!(
        text.contains("FAIL") && text.contains("bob deploys payments (he cannot)"),
        "{text}"
    );
    assert!(text.contains("expected allow, got deny"), "{text}");
    assert!(
        text.contains("rule owners-deploy-nonprod: user:default/bob is not a member"),
        "{text}"
    );
    assert!(
        text.contains("duration: expected \"2h\", got \"1h\""),
        "{text}"
    );
    assert!(text.contains("missing-dir/x.toml: cannot read"), "{text}");
    assert!(text.trim_end().ends_with("0 passed, 3 failed"), "{text}");
    assert!(
        stderr(&output).starts_with("error: 3 policy test(s) failed"),
        "{}",
        stderr(&output)
    );
}
