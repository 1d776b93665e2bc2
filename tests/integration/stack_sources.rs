//! Stack sources over HTTP: the real broker reads `pulumi:` stacks from the
//! Pulumi Cloud double and `terraform:` workspaces from the HCP Terraform
//! double. Their tags (never the caller's) decide ownership; HCP project tags
//! count and a workspace's override of a project-only key does not; no access
//! is an unknown stack; the cache holds for its TTL, covers an outage for the
//! stale window and no longer, and recovers.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::*;

struct Sources {
    pulumi: PulumiCloudDouble,
    hcp: HcpTerraformDouble,
    backstage: BackstageDouble,
    broker: Broker,
    _sts: StsRecorder,
    _token_dir: tempfile::TempDir,
}

/// The Pulumi token comes from a file, the HCP Terraform one from the
/// environment; `cache` is added to both sources' tables.
async fn start(cache: &str, hcp_token: &str) -> Sources {
    let pulumi = PulumiCloudDouble::start().await;
    let hcp = HcpTerraformDouble::start().await;
    let backstage = BackstageDouble::start().await;
    let sts = StsRecorder::start(StsBehaviour::Succeed).await;
    let token_dir = tempfile::tempdir().unwrap();
    let token_file = token_dir.path().join("pulumi-token");
    std::fs::write(&token_file, format!("{PULUMI_TOKEN}\n")).unwrap();
    let mut options = BrokerOptions::new(&backstage, &sts.url);
    options.extra_config = format!(
        r#"
[stacks.pulumi]
kind = "pulumi-cloud"
url = "{pulumi}"
token_file = "{token_file}"
timeout = "2s"
{cache}

[stacks.terraform]
kind = "hcp-terraform"
url = "{hcp}"
timeout = "2s"
{cache}
"#,
        pulumi = pulumi.url,
        hcp = hcp.url,
        token_file = token_file.display(),
    );
    options.env.push((
        "STACKPASS_STACKS__TERRAFORM__TOKEN".into(),
        hcp_token.into(),
    ));
    let broker = Broker::start(options).await;
    Sources {
        pulumi,
        hcp,
        backstage,
        broker,
        _sts: sts,
        _token_dir: token_dir,
    }
}

const PAYMENTS_DEV: &[(&str, &str)] = &[
    ("backstage-component", "payments"),
    ("environment", "dev"),
    ("aws-account", "111111111111"),
];

impl Sources {
    async fn ask(&self, who: &str, stack: &str) -> TestResponse {
        let token = self.backstage.user_token(who);
        self.broker
            .request_credentials(Some(&token), credential_request(stack))
            .await
    }
}

#[tokio::test]
async fn pulumi_cloud_tags_decide_ownership() {
    let s = start("", HCP_TERRAFORM_TOKEN).await;
    s.pulumi.set_stack("acme/payments/dev", PAYMENTS_DEV);

    let allowed = s.ask("user:default/jane", "pulumi:acme/payments/dev").await;
    assert_eq!(allowed.status, 200, "{}", allowed.text);
    assert_eq!(
        allowed.body["role"],
        "arn:aws:iam::111111111111:role/payments-deployer"
    );
    assert_eq!(
        s.pulumi.last_accept().as_deref(),
        Some("application/vnd.pulumi+8")
    );

    s.ask("user:default/bob", "pulumi:acme/payments/dev")
        .await
        .assert_problem(403, "denied");
    // The component tag of a static file means nothing here.
    s.pulumi.set_stack(
        "acme/search/dev",
        &[
            ("backstage.io/component", "search"),
            ("environment", "dev"),
            ("aws-account", "222222222222"),
        ],
    );
    s.ask("user:default/bob", "pulumi:acme/search/dev")
        .await
        .assert_problem(403, "denied");
    assert!(!s.broker.logs().contains(PULUMI_TOKEN));
}

#[tokio::test]
async fn hcp_terraform_project_tags_decide_ownership_and_workspace_overrides_do_not() {
    let s = start("", HCP_TERRAFORM_TOKEN).await;
    s.hcp
        .set_project("prj-payments", &[("backstage-component", "payments")]);
    s.hcp.set_workspace(
        "acme/payments-dev",
        "prj-payments",
        &[("environment", "dev"), ("aws-account", "111111111111")],
        &["payments", "search"],
    );
    let allowed = s
        .ask("user:default/jane", "terraform:acme/payments-dev")
        .await;
    assert_eq!(allowed.status, 200, "{}", allowed.text);
    assert_eq!(
        allowed.body["role"],
        "arn:aws:iam::111111111111:role/payments-deployer"
    );
    s.ask("user:default/bob", "terraform:acme/payments-dev")
        .await
        .assert_problem(403, "denied");

    // A workspace admin in the payments project rebinds the component to
    // their own team's: not trusted, the workspace is unknown to the broker.
    s.hcp.set_workspace(
        "acme/payments-sandbox",
        "prj-payments",
        &[
            ("backstage-component", "search"),
            ("environment", "dev"),
            ("aws-account", "111111111111"),
        ],
        &[],
    );
    s.ask("user:default/bob", "terraform:acme/payments-sandbox")
        .await
        .assert_problem(404, "unknown-stack");
    s.ask("user:default/jane", "terraform:acme/payments-sandbox")
        .await
        .assert_problem(404, "unknown-stack");
    assert!(
        s.broker.logs().contains("project_tags"),
        "{}",
        s.broker.logs()
    );
    assert!(!s.broker.logs().contains(HCP_TERRAFORM_TOKEN));
}

#[tokio::test]
async fn a_caller_cannot_bring_its_own_tags() {
    let s = start("", HCP_TERRAFORM_TOKEN).await;
    s.pulumi.set_stack("acme/payments/dev", PAYMENTS_DEV);
    let token = s.backstage.user_token("user:default/bob");
    let client = reqwest::Client::new();

    // Tags in the body are not part of the request: refused before any lookup.
    let before = s.pulumi.requests();
    let mut body = credential_request("pulumi:acme/payments/dev");
    body["tags"] = json!({ "backstage-component": "search" });
    body["component"] = json!("component:default/search");
    let response = TestResponse::from_response(
        client
            .post(format!("{}/v1/credentials", s.broker.url))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    response.assert_problem(422, "invalid-request");
    assert_eq!(s.pulumi.requests(), before);

    // Headers and query parameters that look like tags are ignored.
    let response = TestResponse::from_response(
        client
            .post(format!(
                "{}/v1/credentials?tags.backstage-component=search&owner=group:default/team-search",
                s.broker.url
            ))
            .bearer_auth(&token)
            .header("X-Stack-Tags", "backstage-component=search")
            .header("Pulumi-Stack-Tags", "{\"backstage-component\":\"search\"}")
            .header("X-Stackpass-Owner", "group:default/team-search")
            .json(&credential_request("pulumi:acme/payments/dev"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    response.assert_problem(403, "denied");
}

#[tokio::test]
async fn no_access_is_an_unknown_stack_and_a_refused_token_is_an_outage() {
    let s = start("negative_cache_ttl = \"0s\"", HCP_TERRAFORM_TOKEN).await;
    s.pulumi.set_stack("acme/payments/dev", PAYMENTS_DEV);
    s.pulumi.hide("acme/payments/dev");
    s.hcp
        .set_project("prj-payments", &[("backstage-component", "payments")]);
    s.hcp.set_workspace(
        "acme/payments-dev",
        "prj-payments",
        &[("environment", "dev"), ("aws-account", "111111111111")],
        &[],
    );
    s.hcp.hide("acme/payments-dev");
    for stack in [
        "pulumi:acme/payments/dev",
        "pulumi:acme/payments/nope",
        "terraform:acme/payments-dev",
        "terraform:acme/nope",
    ] {
        s.ask("user:default/jane", stack)
            .await
            .assert_problem(404, "unknown-stack");
    }

    // A token the service refuses is the operator's problem: 503, not "unknown".
    let wrong = start("", "not-the-token").await;
    wrong
        .hcp
        .set_project("prj-payments", &[("backstage-component", "payments")]);
    wrong.hcp.set_workspace(
        "acme/payments-dev",
        "prj-payments",
        &[("environment", "dev"), ("aws-account", "111111111111")],
        &[],
    );
    let response = wrong
        .ask("user:default/jane", "terraform:acme/payments-dev")
        .await;
    response.assert_problem(503, "stack-source-unavailable");
    assert!(
        response.body["detail"]
            .as_str()
            .unwrap()
            .contains("stacks.terraform.token"),
        "{}",
        response.text
    );
    assert!(!response.text.contains("not-the-token"));
    assert!(!wrong.broker.logs().contains("not-the-token"));
}

#[tokio::test]
async fn the_cache_holds_for_its_ttl_and_covers_an_outage_for_the_stale_window_only() {
    let s = start(
        "cache_ttl = \"1s\"\nstale_window = \"2s\"",
        HCP_TERRAFORM_TOKEN,
    )
    .await;
    s.pulumi.set_stack("acme/payments/dev", PAYMENTS_DEV);
    s.hcp
        .set_project("prj-payments", &[("backstage-component", "payments")]);
    s.hcp.set_workspace(
        "acme/payments-dev",
        "prj-payments",
        &[("environment", "dev"), ("aws-account", "111111111111")],
        &[],
    );
    let stacks = ["pulumi:acme/payments/dev", "terraform:acme/payments-dev"];
    let fetched = Instant::now();
    for stack in stacks {
        let r = s.ask("user:default/jane", stack).await;
        assert_eq!(r.status, 200, "{stack}: {}", r.text);
    }
    assert_eq!((s.pulumi.requests(), s.hcp.requests()), (1, 2));
    // Within the TTL: no request at all.
    for stack in stacks {
        assert_eq!(s.ask("user:default/alex", stack).await.status, 200);
    }
    assert_eq!((s.pulumi.requests(), s.hcp.requests()), (1, 2));

    // Down past the TTL, within the stale window: the source is asked, the
    // last answer stands in, with a warning.
    s.pulumi.set_down(Some(503));
    s.hcp.set_down(Some(429));
    tokio::time::sleep(Duration::from_millis(1300).saturating_sub(fetched.elapsed())).await;
    for stack in stacks {
        let r = s.ask("user:default/jane", stack).await;
        assert_eq!(r.status, 200, "{stack}: {}", r.text);
    }
    assert_eq!((s.pulumi.requests(), s.hcp.requests()), (2, 3));
    assert!(s.broker.logged("serving the stack's last answer").await);

    // Past ttl + stale window: no tags, no credentials.
    tokio::time::sleep(Duration::from_millis(3300).saturating_sub(fetched.elapsed())).await;
    for stack in stacks {
        s.ask("user:default/jane", stack)
            .await
            .assert_problem(503, "stack-source-unavailable");
    }

    // Back up: answers again.
    s.pulumi.set_down(None);
    s.hcp.set_down(None);
    for stack in stacks {
        let r = s.ask("user:default/jane", stack).await;
        assert_eq!(r.status, 200, "{stack}: {}", r.text);
    }
}
