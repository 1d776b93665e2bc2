//! End to end over HTTP: the real broker, the Backstage double, moto's STS.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};

use crate::support::*;

#[tokio::test]
async fn owner_gets_credentials_and_the_issuance_is_audited() {
    let w = World::with_moto().await;
    let token = w.backstage.user_token("user:default/jane");
    let response = w
        .broker
        .request_credentials(Some(&token), json!({ "stack": "pulumi:acme/payments/dev", "provider": "aws", "duration_seconds": 1800 }))
        .await;
    assert_eq!(response.status, 200, "{}", response.text);
    assert_eq!(response.header("cache-control"), Some("no-store"));
    let body = &response.body;
    assert_eq!(
        body["role"],
        "arn:aws:iam::111111111111:role/payments-deployer"
    );
    assert_eq!(body["rule"], "owners-deploy-nonprod");
    assert_eq!(body["requester"], "user:default/jane");
    assert_eq!(body["duration_seconds"], 1800);
    let access_key_id = body["credentials"]["access_key_id"].as_str().unwrap();
    assert!(access_key_id.starts_with("ASIA"), "{access_key_id}");
    assert!(!body["credentials"]["secret_access_key"]
        .as_str()
        .unwrap()
        .is_empty());
    assert!(!body["credentials"]["session_token"]
        .as_str()
        .unwrap()
        .is_empty());
    assert_eq!(
        body["credentials"]["assumed_role_arn"],
        "arn:aws:sts::111111111111:assumed-role/payments-deployer/user.default.jane"
    );

    // What reached STS: the role, a session named after the person, the duration.
    let calls = w.sts.calls();
    assert_eq!(calls.len(), 1);
    let form = &calls[0].form;
    assert_eq!(form["Action"], "AssumeRoleWithWebIdentity");
    assert_eq!(
        form["RoleArn"],
        "arn:aws:iam::111111111111:role/payments-deployer"
    );
    assert_eq!(form["RoleSessionName"], "user.default.jane");
    assert_eq!(form["DurationSeconds"], "1800");

    // The subject token verifies against the broker's published JWKS and carries
    // the documented claims.
    let jwks = w.broker.get("/.well-known/jwks.json").await.body;
    let discovery = w.broker.get("/.well-known/openid-configuration").await.body;
    assert_eq!(
        discovery["jwks_uri"],
        format!("{}/.well-known/jwks.json", w.broker.url)
    );
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwks["keys"][0].clone()).unwrap();
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&["sts.amazonaws.com"]);
    validation.set_issuer(&[discovery["issuer"].as_str().unwrap()]);
    let claims: Value = jsonwebtoken::decode(
        &form["WebIdentityToken"],
        &DecodingKey::from_jwk(&jwk).unwrap(),
        &validation,
    )
    .unwrap()
    .claims;
    assert_eq!(discovery["issuer"], w.broker.url);
    assert_eq!(claims["sub"], "stack:pulumi:acme/payments/dev");
    assert_eq!(claims["stackpass"]["requester"], "user:default/jane");
    assert_eq!(claims["stackpass"]["requester_kind"], "human");
    assert_eq!(claims["stackpass"]["owner"], "group:default/team-payments");
    assert_eq!(
        claims["stackpass"]["component"],
        "component:default/payments"
    );
    assert_eq!(claims["stackpass"]["environment"], "dev");
    assert_eq!(claims["stackpass"]["issuance_id"], body["issuance_id"]);
    assert_eq!(
        claims["https://aws.amazon.com/source_identity"],
        "user.default.jane"
    );
    assert_eq!(
        claims["https://aws.amazon.com/tags"]["principal_tags"]["component"],
        json!(["payments"])
    );
    let lifetime = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    assert!(
        (60..=300).contains(&lifetime),
        "subject tokens are short-lived, got {lifetime}s"
    );
    assert!(claims["jti"].as_str().is_some_and(|j| !j.is_empty()));

    // Audit: decision, intent, outcome, all tied to jane and this request.
    let rows = w.broker.audit_rows().await;
    let events: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r["event"].as_str().unwrap(), r["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(
        events,
        vec![
            ("decision", "allowed"),
            ("issuance_intent", "pending"),
            ("issuance_outcome", "issued")
        ]
    );
    let request_id = response.header("x-request-id").unwrap();
    for row in &rows {
        assert_eq!(row["requester"], "user:default/jane");
        assert_eq!(row["request_id"], request_id);
        assert_eq!(row["stack"], "pulumi:acme/payments/dev");
        assert_eq!(row["issuance_id"], body["issuance_id"]);
        assert_eq!(row["owner"], "group:default/team-payments");
        assert_eq!(row["rule"], "owners-deploy-nonprod");
        assert_eq!(
            row["role"],
            "arn:aws:iam::111111111111:role/payments-deployer"
        );
        assert_eq!(row["duration_seconds"], 1800);
        assert_eq!(row["client_addr"], "127.0.0.1");
        assert!(row["tags"]
            .as_str()
            .unwrap()
            .contains("\"environment\":\"dev\""));
    }
    assert_eq!(rows[2]["credential_id"], access_key_id);
    assert!(rows[2]["expires_at"].as_str().is_some());
    // No secret material in the audit log.
    let dump = serde_json::to_string(&rows).unwrap();
    assert!(!dump.contains(body["credentials"]["secret_access_key"].as_str().unwrap()));
    assert!(!dump.contains(body["credentials"]["session_token"].as_str().unwrap()));
    assert!(!dump.contains(&form["WebIdentityToken"]));
}

#[tokio::test]
async fn duration_is_capped_by_the_rule_and_defaults_to_fifteen_minutes() {
    let w = World::with_moto().await;
    let token = w.backstage.user_token("user:default/jane");
    let capped = w
        .broker
        .request_credentials(Some(&token), json!({ "stack": "pulumi:acme/payments/dev", "provider": "aws", "duration_seconds": 43200 }))
        .await;
    assert_eq!(capped.status, 200, "{}", capped.text);
    assert_eq!(capped.body["duration_seconds"], 3600);
    let default = w
        .broker
        .request_credentials(
            Some(&token),
            json!({ "stack": "pulumi:acme/payments/dev", "provider": "aws" }),
        )
        .await;
    assert_eq!(default.body["duration_seconds"], 900);
    let calls = w.sts.calls();
    assert_eq!(calls[0].form["DurationSeconds"], "3600");
    assert_eq!(calls[1].form["DurationSeconds"], "900");
}

#[tokio::test]
async fn non_owner_is_denied_with_reasons_and_the_denial_is_audited() {
    let w = World::with_moto().await;
    let token = w.backstage.user_token("user:default/bob");
    let response = w
        .broker
        .request_credentials(Some(&token), credential_request("pulumi:acme/payments/dev"))
        .await;
    response.assert_problem(403, "denied");
    assert_eq!(
        response.body["detail"],
        "no rule grants aws credentials for pulumi:acme/payments/dev to user:default/bob"
    );
    // Bob has no part in this stack: the denial reveals neither the role or
    // account the owners would get, nor the stack's tags, owner or the groups
    // a rule lets in.
    for secret in [
        "111111111111",
        "deployer",
        "team-payments",
        "environment",
        "dev\"",
    ] {
        assert!(
            !response.text.contains(secret),
            "{secret}: {}",
            response.text
        );
    }
    assert!(response
        .body
        .get("rules")
        .is_none_or(|r| r.as_array().is_some_and(|r| r.is_empty())));

    // An auditor asking the same is told every reason.
    let sam = w.backstage.user_token("user:default/sam");
    let response = w
        .broker
        .request_credentials(Some(&sam), credential_request("pulumi:acme/payments/dev"))
        .await;
    response.assert_problem(403, "denied");
    assert_eq!(
        response.body["rules"][0]["reasons"][0],
        "user:default/sam is not a member of group:default/team-payments, which owns component:default/payments"
    );
    assert!(w.sts.calls().is_empty());

    let rows = w.broker.audit_rows().await;
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["event"], "decision");
    assert_eq!(rows[0]["outcome"], "denied");
    assert_eq!(rows[0]["requester"], "user:default/bob");
    assert!(rows[0]["detail"]
        .as_str()
        .unwrap()
        .contains("is not a member of"));
}

#[tokio::test]
async fn component_missing_from_the_catalog_is_denied() {
    let w = World::with_moto().await;
    let token = w.backstage.user_token("user:default/jane");
    let response = w
        .broker
        .request_credentials(Some(&token), credential_request("pulumi:acme/ghost/dev"))
        .await;
    response.assert_problem(403, "denied");
    // Nobody owns it, so only the audit log says why.
    let rows = w.broker.audit_rows().await;
    assert!(rows[0]["detail"]
        .as_str()
        .unwrap()
        .contains("no owner for component:default/ghost"));
}

#[tokio::test]
async fn unknown_stack_is_404_and_audited() {
    let w = World::with_moto().await;
    let token = w.backstage.user_token("user:default/jane");
    let response = w
        .broker
        .request_credentials(Some(&token), credential_request("pulumi:acme/nope/dev"))
        .await;
    response.assert_problem(404, "unknown-stack");
    let rows = w.broker.audit_rows().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["outcome"], "unknown_stack");
    assert_eq!(rows[0]["stack"], "pulumi:acme/nope/dev");
    assert_eq!(
        w.backstage.catalog_hits(),
        0,
        "an unknown stack needs no catalog lookup"
    );
}

#[tokio::test]
async fn malformed_requests_are_422_and_never_reach_sts() {
    let w = World::with_moto().await;
    let token = w.backstage.user_token("user:default/jane");
    let bad_bodies = [
        json!({ "stack": "acme/payments/dev", "provider": "aws" }),
        json!({ "stack": "pulumi:acme/payments", "provider": "aws" }),
        json!({ "stack": "terraform:acme/payments/dev", "provider": "aws" }),
        json!({ "stack": "pulumi:acme/../dev", "provider": "aws" }),
        json!({ "stack": "pulumi:acme/pay ments/dev", "provider": "aws" }),
        json!({ "stack": "cdk:acme/payments/dev", "provider": "aws" }),
        json!({ "stack": "pulumi:acme/payments/dev", "provider": "oracle" }),
        json!({ "stack": "pulumi:acme/payments/dev", "provider": "testcloud" }),
        json!({ "stack": "pulumi:acme/payments/dev", "provider": "AWS" }),
        json!({ "stack": "pulumi:acme/payments/dev", "provider": "aws", "duration_seconds": 60 }),
        json!({ "stack": "pulumi:acme/payments/dev", "provider": "aws", "duration_seconds": 99999999 }),
        json!({ "stack": "pulumi:acme/payments/dev", "provider": "aws", "tags": { "environment": "dev" } }),
        json!({ "provider": "aws" }),
        json!(["pulumi:acme/payments/dev"]),
    ];
    for body in bad_bodies {
        let response = w
            .broker
            .request_credentials(Some(&token), body.clone())
            .await;
        // testcloud is compiled into the test build (all features) but not
        // configured here; a build without it does not know it at all.
        let kind = if body["provider"] == "testcloud" && cfg!(feature = "testcloud") {
            "provider-not-enabled"
        } else {
            "invalid-request"
        };
        response.assert_problem(422, kind);
    }
    assert!(w.sts.calls().is_empty());
    assert!(
        w.broker.audit_rows().await.is_empty(),
        "malformed requests decide nothing"
    );
}

#[tokio::test]
async fn wrong_media_type_and_oversized_bodies_are_refused() {
    let w = World::with_moto().await;
    let token = w.backstage.user_token("user:default/jane");
    let client = reqwest::Client::new();
    let url = format!("{}/v1/credentials", w.broker.url);

    let text = client
        .post(&url)
        .bearer_auth(&token)
        .body("stack=pulumi:acme/payments/dev")
        .send()
        .await
        .unwrap();
    assert_eq!(text.status(), 415);
    assert_eq!(text.headers()["content-type"], "application/problem+json");

    let huge = json!({ "stack": "pulumi:acme/payments/dev", "provider": "aws", "padding": "x".repeat(64 * 1024) });
    let response = client
        .post(&url)
        .bearer_auth(&token)
        .json(&huge)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
}

#[tokio::test]
async fn every_response_carries_a_request_id_and_probes_answer() {
    let w = World::with_moto().await;
    let health = w.broker.get("/healthz").await;
    assert_eq!(health.status, 200);
    assert!(health.header("x-request-id").is_some());
    let ready = w.broker.get("/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.text);
    let missing = w.broker.get("/nope").await;
    missing.assert_problem(404, "not-found");

    // The broker names every request itself; a caller's plain request id is
    // recorded beside it (never instead of it: two callers could pick the
    // same one), and a hostile one is dropped.
    let client = reqwest::Client::new();
    let token = w.backstage.user_token("user:default/jane");
    let mut broker_ids = Vec::new();
    for _ in 0..2 {
        let issued = client
            .post(format!("{}/v1/credentials", w.broker.url))
            .bearer_auth(&token)
            .header("x-request-id", "abc-123")
            .json(&credential_request("pulumi:acme/payments/dev"))
            .send()
            .await
            .unwrap();
        assert_eq!(issued.status(), 200);
        let id = issued.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
        broker_ids.push(id);
    }
    assert_ne!(broker_ids[0], broker_ids[1]);
    let rows = w.broker.audit_rows().await;
    for row in &rows {
        assert!(
            broker_ids.iter().any(|id| row["request_id"] == *id),
            "{row}"
        );
        assert!(
            row["detail"]
                .as_str()
                .unwrap()
                .contains(r#""client_request_id":"abc-123""#),
            "{row}"
        );
    }
    let replaced = client
        .get(format!("{}/healthz", w.broker.url))
        .header("x-request-id", "evil\tinjected log line")
        .send()
        .await
        .unwrap();
    assert_ne!(
        replaced.headers()["x-request-id"],
        "evil\tinjected log line"
    );
}

#[tokio::test]
async fn sts_refusal_is_502_and_sts_outage_is_503_both_audited() {
    let backstage = BackstageDouble::start().await;
    let token = backstage.user_token("user:default/jane");
    for (behaviour, status, kind) in [
        (StsBehaviour::RejectToken, 502, "cloud-refused"),
        (StsBehaviour::Outage, 503, "cloud-unavailable"),
    ] {
        let sts = StsRecorder::start(behaviour).await;
        let broker = Broker::start(BrokerOptions::new(&backstage, &sts.url)).await;
        let response = broker
            .request_credentials(Some(&token), credential_request("pulumi:acme/payments/dev"))
            .await;
        response.assert_problem(status, kind);
        let rows = broker.audit_rows().await;
        let last = rows.last().unwrap();
        assert_eq!(
            (last["event"].as_str(), last["outcome"].as_str()),
            (Some("issuance_outcome"), Some("failed"))
        );
        if status == 502 {
            assert!(
                response.body["detail"]
                    .as_str()
                    .unwrap()
                    .contains("InvalidIdentityToken"),
                "{}",
                response.text
            );
            assert!(last["detail"]
                .as_str()
                .unwrap()
                .contains("InvalidIdentityToken"));
        }
    }

    // Nothing listening at all: unreachable is 503.
    let unreachable = Broker::start(BrokerOptions::new(
        &backstage,
        &format!("http://127.0.0.1:{}", free_port()),
    ))
    .await;
    let response = unreachable
        .request_credentials(Some(&token), credential_request("pulumi:acme/payments/dev"))
        .await;
    response.assert_problem(503, "cloud-unavailable");
}

#[tokio::test]
async fn catalog_outage_is_503_and_nothing_is_issued() {
    let backstage = BackstageDouble::start().await;
    let sts = StsRecorder::start(StsBehaviour::Outage).await;
    let mut options = BrokerOptions::new(&backstage, &sts.url);
    // Keys come from the double, the catalog from an address where nothing listens.
    options.env.push((
        "STACKPASS_CATALOG__URL".into(),
        format!("http://127.0.0.1:{}", free_port()),
    ));
    let broker = Broker::start(options).await;
    let token = backstage.user_token("user:default/jane");
    let response = broker
        .request_credentials(Some(&token), credential_request("pulumi:acme/payments/dev"))
        .await;
    response.assert_problem(503, "catalog-unavailable");
    assert!(sts.calls().is_empty());
}

#[tokio::test]
async fn a_catalog_token_the_catalog_refuses_fails_closed_without_leaking_it() {
    let backstage = BackstageDouble::start().await;
    let sts = StsRecorder::start(StsBehaviour::Outage).await;
    let mut options = BrokerOptions::new(&backstage, &sts.url);
    options.catalog_token = "wrong-catalog-token".into();
    let broker = Broker::start(options).await;
    let token = backstage.user_token("user:default/jane");
    let response = broker
        .request_credentials(Some(&token), credential_request("pulumi:acme/payments/dev"))
        .await;
    response.assert_problem(503, "catalog-unavailable");
    assert!(
        response.body["detail"]
            .as_str()
            .unwrap()
            .contains("refused stackpass's token"),
        "{}",
        response.text
    );
    assert!(!response.text.contains("wrong-catalog-token"));
    assert!(!broker.logs().contains("wrong-catalog-token"));
    assert!(sts.calls().is_empty());
}

#[tokio::test]
async fn a_later_rule_can_grant_with_an_inline_session_policy() {
    let backstage = BackstageDouble::start().await;
    let moto = Moto::start().await;
    let sts = StsRecorder::start(StsBehaviour::Forward(moto.url.clone())).await;
    let mut options = BrokerOptions::new(&backstage, &sts.url);
    options.extra_config = r#"
[[policy.rules]]
name = "owners-read-prod"
provider = "aws"
tags = { environment = ["prod"], aws-account = ["*"] }
role = "arn:aws:iam::{tags.aws-account}:role/{component}-readonly"
max_duration = "15m"
session_policy = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"*"}]}'
"#
    .into();
    let broker = Broker::start(options).await;
    let token = backstage.user_token("user:default/jane");
    let response = broker
        .request_credentials(
            Some(&token),
            credential_request("pulumi:acme/payments/prod"),
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text);
    assert_eq!(response.body["rule"], "owners-read-prod");
    assert_eq!(
        response.body["role"],
        "arn:aws:iam::999999999999:role/payments-readonly"
    );
    let form = &sts.calls()[0].form;
    let policy: Value = serde_json::from_str(&form["Policy"]).unwrap();
    assert_eq!(policy["Statement"][0]["Action"], "s3:GetObject");
    assert_eq!(form["DurationSeconds"], "900");

    // The dev stack still goes through the first rule, without a session policy.
    let response = broker
        .request_credentials(Some(&token), credential_request("pulumi:acme/payments/dev"))
        .await;
    assert_eq!(response.body["rule"], "owners-deploy-nonprod");
    assert!(!sts.calls()[1].form.contains_key("Policy"));
}

#[tokio::test]
async fn catalog_answers_are_cached() {
    let w = World::with_moto().await;
    let token = w.backstage.user_token("user:default/jane");
    for _ in 0..3 {
        let response = w
            .broker
            .request_credentials(Some(&token), credential_request("pulumi:acme/payments/dev"))
            .await;
        assert_eq!(response.status, 200, "{}", response.text);
    }
    assert_eq!(
        w.backstage.catalog_hits(),
        2,
        "one owner and one membership lookup, then the cache"
    );
}

#[tokio::test]
async fn several_trusted_issuers_are_accepted() {
    // Each issuer vouches for its own namespace of people (issuers may not
    // share subjects); the catalog knows both.
    let mut partner = user("jane", &["team-payments"]);
    partner["metadata"]["namespace"] = "partners".into();
    let mut entities = default_entities();
    entities.push(partner);
    let first = BackstageDouble::start_with(entities).await;
    let second = BackstageDouble::start().await;
    let moto = Moto::start().await;
    let mut options = BrokerOptions::new(&first, &moto.url);
    options.env.push((
        "STACKPASS_IDENTITY__ISSUERS".into(),
        format!(
            "[{{name=\"first\",kind=\"backstage\",url=\"{}\",subjects=[\"user:default/*\"]}},{{name=\"second\",kind=\"backstage\",url=\"{}\",subjects=[\"user:partners/*\"]}}]",
            first.url, second.url
        ),
    ));
    let broker = Broker::start(options).await;
    for (double, name, jane) in [
        (&first, "first", "user:default/jane"),
        (&second, "second", "user:partners/jane"),
    ] {
        let response = broker
            .request_credentials(
                Some(&double.user_token(jane)),
                credential_request("pulumi:acme/payments/dev"),
            )
            .await;
        assert_eq!(response.status, 200, "{name}: {}", response.text);
    }
    let rows = broker.audit_rows().await;
    assert_eq!(rows[0]["issuer"], first.issuer());
    assert_eq!(rows[3]["issuer"], second.issuer());
}

#[tokio::test]
async fn the_client_address_comes_through_trusted_proxies_only() {
    let backstage = BackstageDouble::start().await;
    let sts = StsRecorder::start(StsBehaviour::Succeed).await;
    let token = backstage.user_token("user:default/jane");
    let issue_via = |broker: &Broker| {
        let request = reqwest::Client::new()
            .post(format!("{}/v1/credentials", broker.url))
            .bearer_auth(&token)
            .header("x-forwarded-for", "6.6.6.6, 198.51.100.4")
            .json(&credential_request("pulumi:acme/payments/dev"));
        async move { assert_eq!(request.send().await.unwrap().status(), 200) }
    };
    // No trusted proxies: the header is the client's word, and ignored.
    let direct = Broker::start(BrokerOptions::new(&backstage, &sts.url)).await;
    issue_via(&direct).await;
    for row in direct.audit_rows().await {
        assert_eq!(row["client_addr"], "127.0.0.1", "{row}");
    }
    // Behind a trusted proxy (the test's loopback), the hop it saw.
    let mut options = BrokerOptions::new(&backstage, &sts.url);
    options.env = vec![(
        "STACKPASS_SERVER__TRUSTED_PROXIES".into(),
        r#"["127.0.0.0/8"]"#.into(),
    )];
    let proxied = Broker::start(options).await;
    issue_via(&proxied).await;
    for row in proxied.audit_rows().await {
        assert_eq!(row["client_addr"], "198.51.100.4", "{row}");
    }
}
