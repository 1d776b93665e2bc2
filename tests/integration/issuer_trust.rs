//! Where identity and ownership may come from: https to a private CA (trusted
//! with its bundle, refused without it), no plain-http `jwks_uri` behind https
//! discovery, plain http off loopback refused by `config check`; each issuer
//! vouches only for its own subjects; rules that demand tokens minted for the
//! broker alone.

use std::path::Path;

use serde_json::{json, Value};

use crate::support::*;

fn issuers(tables: &[String]) -> (String, String) {
    (
        "STACKPASS_IDENTITY__ISSUERS".into(),
        format!("[{}]", tables.join(",")),
    )
}

async fn call(
    broker: &Broker,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> TestResponse {
    let client = reqwest::Client::new();
    let url = format!("{}{path}", broker.url);
    let mut request = match method {
        "GET" => client.get(url),
        _ => client.post(url),
    };
    if let Some(body) = body {
        request = request.json(&body);
    }
    TestResponse::from_response(request.bearer_auth(token).send().await.unwrap()).await
}

/// The broker's stderr is read on another thread; give a line time to arrive.
async fn wait_for_log(broker: &Broker, line: &str) {
    for _ in 0..50 {
        if broker.logs().contains(line) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{line:?} never appeared in the log:\n{}", broker.logs());
}

#[tokio::test]
async fn a_private_ca_is_trusted_with_its_bundle_and_refused_without_it() {
    let ca = TestCa::generate();
    let backstage = BackstageDouble::start_tls(&ca).await;
    assert!(backstage.url.starts_with("https://localhost:"));
    let sts = StsRecorder::start(StsBehaviour::Outage).await;
    let dir = tempfile::tempdir().unwrap();
    let bundle = ca.write_bundle(dir.path()).display().to_string();
    let token = backstage.user_token("user:default/jane");
    let issuer_with_bundle = format!(
        "{{name=\"backstage\",kind=\"backstage\",url=\"{}\",ca_file=\"{bundle}\",trust_public_roots=false}}",
        backstage.url
    );

    // The bundle alone (no public roots) for both the issuer and the catalog.
    let mut options = BrokerOptions::new(&backstage, &sts.url);
    options
        .env
        .push(issuers(std::slice::from_ref(&issuer_with_bundle)));
    options
        .env
        .push(("STACKPASS_CATALOG__CA_FILE".into(), bundle.clone()));
    options.env.push((
        "STACKPASS_CATALOG__TRUST_PUBLIC_ROOTS".into(),
        "false".into(),
    ));
    let trusting = Broker::start(options).await;
    let response = trusting
        .request_credentials(Some(&token), credential_request("pulumi:acme/payments/dev"))
        .await;
    // STS is down in this world: getting that far means the token verified
    // over https and the catalog answered over https.
    response.assert_problem(503, "cloud-unavailable");
    assert!(backstage.catalog_hits() > 0);

    // Without the bundle, the same server is a stranger.
    let untrusting = Broker::start(BrokerOptions::new(&backstage, &sts.url)).await;
    let response = untrusting
        .request_credentials(Some(&token), credential_request("pulumi:acme/payments/dev"))
        .await;
    response.assert_problem(503, "identity-unavailable");
    wait_for_log(&untrusting, "authentication failed").await;
    assert!(
        untrusting.logs().contains("certificate") && untrusting.logs().contains("ca_file"),
        "the log says the certificate was not trusted:\n{}",
        untrusting.logs()
    );

    // The issuer trusted, the catalog not: ownership cannot be read.
    let hits = backstage.catalog_hits();
    let mut options = BrokerOptions::new(&backstage, &sts.url);
    options.env.push(issuers(&[issuer_with_bundle]));
    let catalog_untrusted = Broker::start(options).await;
    let response = catalog_untrusted
        .request_credentials(Some(&token), credential_request("pulumi:acme/payments/dev"))
        .await;
    response.assert_problem(503, "catalog-unavailable");
    assert_eq!(backstage.catalog_hits(), hits, "no TLS session, no request");
}

#[tokio::test]
async fn a_plain_http_jwks_uri_behind_https_discovery_is_refused() {
    let ca = TestCa::generate();
    let backstage = BackstageDouble::start_tls(&ca).await;
    // The same keys, served over plain http on loopback.
    backstage.set_jwks_uri(&format!(
        "{}/api/auth/.well-known/jwks.json",
        backstage.plain_url
    ));
    let sts = StsRecorder::start(StsBehaviour::Outage).await;
    let dir = tempfile::tempdir().unwrap();
    let bundle = ca.write_bundle(dir.path()).display().to_string();
    let token = backstage.user_token("user:default/jane");
    let start = |allow_http: bool| {
        let mut options = BrokerOptions::new(&backstage, &sts.url);
        options.env.push(issuers(&[format!(
            "{{name=\"backstage\",kind=\"backstage\",url=\"{}\",ca_file=\"{bundle}\",insecure_allow_http={allow_http}}}",
            backstage.url
        )]));
        options
            .env
            .push(("STACKPASS_CATALOG__CA_FILE".into(), bundle.clone()));
        Broker::start(options)
    };

    let broker = start(false).await;
    let response = broker
        .request_credentials(Some(&token), credential_request("pulumi:acme/payments/dev"))
        .await;
    response.assert_problem(503, "identity-unavailable");
    assert!(
        backstage
            .counters()
            .discovery
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 1
    );
    assert_eq!(
        backstage
            .counters()
            .jwks
            .load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the plain-http JWKS is never fetched"
    );
    wait_for_log(&broker, "authentication failed").await;
    assert!(
        broker.logs().contains("jwks_uri refused"),
        "{}",
        broker.logs()
    );

    // Only the scheme was in the way: the explicit opt-in accepts it.
    let allowing = start(true).await;
    allowing
        .request_credentials(Some(&token), credential_request("pulumi:acme/payments/dev"))
        .await
        .assert_problem(503, "cloud-unavailable");
}

fn copy_quickstart(to: &Path) {
    let from = workspace_root().join("examples/quickstart");
    for file in ["stackpass.toml", "catalog.toml", "stacks.toml"] {
        std::fs::copy(from.join(file), to.join(file)).unwrap();
    }
    std::fs::create_dir(to.join("state")).unwrap();
}

#[test]
fn config_check_refuses_plain_http_off_loopback_and_issuers_that_share_subjects() {
    let dir = tempfile::tempdir().unwrap();
    copy_quickstart(dir.path());
    let config = dir.path().join("stackpass.toml");
    let check = |env: &[(&str, &str)]| {
        let mut command = stackpass(&["config", "check", "--config", config.to_str().unwrap()]);
        for (key, value) in env {
            command.env(key, value);
        }
        command.output().unwrap()
    };
    let dev = r#"{name="dev",kind="development",issuer="stackpass-quickstart-dev",audiences=["stackpass"],key_file="state/dev-issuer-key.pem"}"#;

    let remote_http = check(&[
        ("STACKPASS_CATALOG__KIND", "backstage"),
        (
            "STACKPASS_CATALOG__URL",
            "http://backstage.internal.example",
        ),
        (
            "STACKPASS_IDENTITY__ISSUERS",
            r#"[{name="backstage",kind="backstage",url="http://backstage.internal.example"}]"#,
        ),
    ]);
    assert!(!remote_http.status.success());
    let text = stderr(&remote_http);
    for expected in [
        "catalog.url: http://backstage.internal.example/ is plain http",
        "catalog.insecure_allow_http = true",
        "identity.issuers[0].url: http://backstage.internal.example/api/auth/.well-known/openid-configuration is plain http",
        "use https (with ca_file for a private CA)",
    ] {
        assert!(text.contains(expected), "{expected:?} in:\n{text}");
    }

    let accepted_risk = check(&[
        ("STACKPASS_CATALOG__KIND", "backstage"),
        (
            "STACKPASS_CATALOG__URL",
            "http://backstage.internal.example",
        ),
        ("STACKPASS_CATALOG__INSECURE_ALLOW_HTTP", "true"),
        (
            "STACKPASS_IDENTITY__ISSUERS",
            r#"[{name="backstage",kind="backstage",url="http://backstage.internal.example",insecure_allow_http=true}]"#,
        ),
    ]);
    assert!(accepted_risk.status.success(), "{}", stderr(&accepted_risk));

    let missing_bundle = check(&[(
        "STACKPASS_IDENTITY__ISSUERS",
        r#"[{name="backstage",kind="backstage",url="https://backstage.example.com",ca_file="no-such-ca.pem"}]"#,
    )]);
    assert!(!missing_bundle.status.success());
    assert!(
        stderr(&missing_bundle)
            .contains("identity.issuers[0].ca_file: could not read the CA bundle"),
        "{}",
        stderr(&missing_bundle)
    );

    let shared = check(&[(
        "STACKPASS_IDENTITY__ISSUERS",
        &format!(
            r#"[{dev},{{name="backstage",kind="backstage",url="https://backstage.example.com"}},{{name="ci",kind="oidc",issuer="https://ci.example.com",audiences=["stackpass"]}}]"#
        ),
    )]);
    assert!(!shared.status.success());
    let text = stderr(&shared);
    for expected in [
        "identity.issuers[1].subjects: user:*/* overlaps user:*/* of identity.issuers[0] (dev)",
        "identity.issuers[2].subjects: this issuer may vouch for nobody",
    ] {
        assert!(text.contains(expected), "{expected:?} in:\n{text}");
    }

    let apart = check(&[(
        "STACKPASS_IDENTITY__ISSUERS",
        &format!(
            r#"[{dev},{{name="ci",kind="oidc",issuer="https://ci.example.com",audiences=["stackpass"],subjects=["service:ci/*","service:ci/deployer"]}}]"#
        ),
    )]);
    assert!(apart.status.success(), "{}", stderr(&apart));

    let backstage_components = check(&[(
        "STACKPASS_IDENTITY__ISSUERS",
        r#"[{name="backstage",kind="backstage",url="https://backstage.example.com",subjects=["component:ci/*"]}]"#,
    )]);
    assert!(!backstage_components.status.success());
    assert!(
        stderr(&backstage_components).contains(
            "identity.issuers[0].subjects: component:ci/* names no user, but a backstage issuer's tokens are user tokens"
        ),
        "{}",
        stderr(&backstage_components)
    );

    let group = check(&[(
        "STACKPASS_IDENTITY__ISSUERS",
        r#"[{name="ci",kind="oidc",issuer="https://ci.example.com",audiences=["stackpass"],subjects=["group:ci/*"]}]"#,
    )]);
    assert!(!group.status.success());
    assert!(
        stderr(&group).contains("a group is a set of people, never a caller"),
        "{}",
        stderr(&group)
    );
}

#[tokio::test]
async fn an_issuer_vouches_only_for_its_own_subjects() {
    let backstage = BackstageDouble::start().await;
    let ci = BackstageDouble::start().await;
    let sts = StsRecorder::start(StsBehaviour::Outage).await;
    let mut options = BrokerOptions::new(&backstage, &sts.url);
    options.env.push(issuers(&[
        format!(
            "{{name=\"backstage\",kind=\"backstage\",url=\"{}\"}}",
            backstage.url
        ),
        format!(
            "{{name=\"ci\",kind=\"oidc\",issuer=\"{}\",audiences=[\"backstage\"],subjects=[\"component:ci/*\"]}}",
            ci.issuer()
        ),
    ]));
    options.extra_config = r#"
[[policy.rules]]
name = "owners-deploy-prod"
provider = "aws"
tags = { environment = ["prod"], aws-account = ["*"] }
role = "arn:aws:iam::{tags.aws-account}:role/{component}-prod-deployer"
approval = { count = 1, approvers = ["group:default/team-payments"] }
"#
    .into();
    let broker = Broker::start(options).await;
    let asked = call(
        &broker,
        &backstage.user_token("user:default/jane"),
        "POST",
        "/v1/access-requests",
        Some(credential_request("pulumi:acme/payments/prod")),
    )
    .await;
    assert_eq!(asked.status, 201, "{}", asked.text);
    let approve_path = format!(
        "/v1/access-requests/{}/approve",
        asked.body["access_request"]["id"].as_str().unwrap()
    );

    // ci's tokens for people, the auditor and an approver included, are refused.
    let refused = broker
        .request_credentials(
            Some(&ci.user_token("user:default/jane")),
            credential_request("pulumi:acme/payments/dev"),
        )
        .await;
    refused.assert_problem(401, "unauthenticated");
    assert!(
        refused.body["detail"]
            .as_str()
            .unwrap()
            .contains("issuer ci may not vouch for user:default/jane"),
        "{}",
        refused.text
    );
    call(
        &broker,
        &ci.user_token("user:default/sam"),
        "GET",
        "/v1/audit",
        None,
    )
    .await
    .assert_problem(401, "unauthenticated");
    call(
        &broker,
        &ci.user_token("user:default/alex"),
        "POST",
        &approve_path,
        None,
    )
    .await
    .assert_problem(401, "unauthenticated");
    call(
        &broker,
        &ci.user_token("user:default/alex"),
        "GET",
        "/v1/access-requests",
        None,
    )
    .await
    .assert_problem(401, "unauthenticated");

    // The same people through their own issuer, and ci for its own subjects.
    let approve = call(
        &broker,
        &backstage.user_token("user:default/alex"),
        "POST",
        &approve_path,
        None,
    )
    .await;
    assert_eq!(approve.status, 200, "{}", approve.text);
    assert_eq!(
        approve.body["access_request"]["approvers"],
        json!(["user:default/alex"]),
        "only the approval through alex's own issuer counted"
    );
    let deployer = broker
        .request_credentials(
            Some(&ci.user_token("component:ci/deployer")),
            credential_request("pulumi:acme/payments/dev"),
        )
        .await;
    deployer.assert_problem(403, "denied");
    let audit = call(
        &broker,
        &backstage.user_token("user:default/sam"),
        "GET",
        "/v1/audit",
        None,
    )
    .await;
    assert_eq!(audit.status, 200, "{}", audit.text);
    let rows = broker.audit_rows().await;
    assert!(
        rows.iter()
            .any(|r| r["issuer"] == ci.issuer() && r["requester"] == "component:ci/deployer"),
        "{rows:?}"
    );
    assert!(
        rows.iter()
            .all(|r| r["issuer"] != ci.issuer() || r["requester"] == "component:ci/deployer"),
        "nothing ci vouched for a person reached the audit log: {rows:?}"
    );
}

#[tokio::test]
async fn a_rule_can_require_tokens_minted_for_the_broker_alone() {
    let backstage = BackstageDouble::start().await;
    let sts = StsRecorder::start(StsBehaviour::Outage).await;
    let mut options = BrokerOptions::new(&backstage, &sts.url);
    options.env.push(issuers(&[format!(
        "{{name=\"backstage\",kind=\"backstage\",url=\"{}\",dedicated_audience=\"stackpass\"}}",
        backstage.url
    )]));
    options.extra_config = r#"
[[policy.rules]]
name = "owners-deploy-prod-with-stackpass-tokens"
provider = "aws"
tags = { environment = ["prod"], aws-account = ["*"] }
role = "arn:aws:iam::{tags.aws-account}:role/{component}-deployer"
require_dedicated_audience = true
"#
    .into();
    let broker = Broker::start(options).await;
    let token = |aud: Value| {
        let mut claims = backstage.user_claims("user:default/jane");
        claims["aud"] = aud;
        sign_jwt(
            &backstage.user_header(),
            &claims,
            Signer::Es256(&backstage.key),
        )
    };
    let prod = credential_request("pulumi:acme/payments/prod");

    // A Backstage token, as every plugin it calls receives it.
    let shared = broker
        .request_credentials(
            Some(&backstage.user_token("user:default/jane")),
            prod.clone(),
        )
        .await;
    shared.assert_problem(403, "denied");
    assert!(
        shared
            .text
            .contains("needs a token minted for this broker alone"),
        "{}",
        shared.text
    );
    // Naming the broker among others is still shared.
    broker
        .request_credentials(
            Some(&token(json!(["backstage", "stackpass"]))),
            prod.clone(),
        )
        .await
        .assert_problem(403, "denied");
    // Minted for stackpass alone: allowed (and STS is down in this world).
    broker
        .request_credentials(Some(&token(json!("stackpass"))), prod)
        .await
        .assert_problem(503, "cloud-unavailable");
    // Rules without the option take the shared token as before.
    broker
        .request_credentials(
            Some(&backstage.user_token("user:default/jane")),
            credential_request("pulumi:acme/payments/dev"),
        )
        .await
        .assert_problem(503, "cloud-unavailable");
}
