//! Every way a token can be bad gets a 401, and none of them reaches the catalog,
//! STS or the audit log.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};

use crate::support::*;

fn with_claims(claims: &Value, changes: Value) -> Value {
    let mut claims = claims.clone();
    for (key, value) in changes.as_object().unwrap() {
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(key);
        } else {
            claims[key] = value.clone();
        }
    }
    claims
}

#[tokio::test]
async fn bad_tokens_are_401_and_reach_neither_catalog_nor_sts_nor_audit() {
    let w = World::with_sts(StsBehaviour::Outage).await;
    let b = &w.backstage;
    let header = b.user_header();
    let claims = b.user_claims("user:default/jane");
    let sign = |claims: &Value| sign_jwt(&header, claims, Signer::Es256(&b.key));
    let now = now();
    let stranger = TestKey::generate(&b.key.kid);
    let unknown_kid = TestKey::generate("never-published");

    let cases: Vec<(&str, String)> = vec![
        (
            "expired",
            sign(&with_claims(
                &claims,
                json!({ "iat": now - 7200, "exp": now - 3600 }),
            )),
        ),
        (
            "not yet valid",
            sign(&with_claims(&claims, json!({ "nbf": now + 3600 }))),
        ),
        (
            "issued in the future",
            sign(&with_claims(
                &claims,
                json!({ "iat": now + 3600, "exp": now + 7200 }),
            )),
        ),
        (
            "wrong audience",
            sign(&with_claims(&claims, json!({ "aud": "some-other-app" }))),
        ),
        (
            "no audience",
            sign(&with_claims(&claims, json!({ "aud": null }))),
        ),
        (
            "no expiry",
            sign(&with_claims(&claims, json!({ "exp": null }))),
        ),
        (
            "lifetime too long",
            sign(&with_claims(
                &claims,
                json!({ "exp": now + 90 * 24 * 3600 }),
            )),
        ),
        (
            "subject not an entity ref",
            sign(&with_claims(&claims, json!({ "sub": "jane@example.com" }))),
        ),
        (
            "no subject",
            sign(&with_claims(&claims, json!({ "sub": null }))),
        ),
        (
            "wrong issuer",
            sign(&with_claims(
                &claims,
                json!({ "iss": "https://evil.example.com/api/auth" }),
            )),
        ),
        (
            "issuer with trailing slash",
            sign(&with_claims(
                &claims,
                json!({ "iss": format!("{}/", b.issuer()) }),
            )),
        ),
        (
            "alg none",
            sign_jwt(
                &json!({ "alg": "none", "typ": "JWT" }),
                &claims,
                Signer::Unsigned,
            ),
        ),
        (
            "alg none with kid",
            sign_jwt(
                &json!({ "alg": "none", "kid": b.key.kid }),
                &claims,
                Signer::Unsigned,
            ),
        ),
        (
            "HS256 keyed with the public key PEM",
            sign_jwt(
                &json!({ "alg": "HS256", "kid": b.key.kid }),
                &claims,
                Signer::Hs256(b.key.public_key_pem().as_bytes()),
            ),
        ),
        (
            "HS256 keyed with the JWK",
            sign_jwt(
                &json!({ "alg": "HS256", "kid": b.key.kid }),
                &claims,
                Signer::Hs256(b.key.jwk().to_string().as_bytes()),
            ),
        ),
        (
            "RS256 not allowed",
            sign_jwt(
                &json!({ "alg": "RS256", "kid": b.key.kid }),
                &claims,
                Signer::Es256(&b.key),
            ),
        ),
        (
            "signed by a stranger with a known kid",
            sign_jwt(&header, &claims, Signer::Es256(&stranger)),
        ),
        (
            "unknown kid",
            sign_jwt(
                &json!({ "alg": "ES256", "kid": unknown_kid.kid }),
                &claims,
                Signer::Es256(&unknown_kid),
            ),
        ),
        (
            "no kid",
            sign_jwt(&json!({ "alg": "ES256" }), &claims, Signer::Es256(&b.key)),
        ),
        ("tampered payload", {
            let token = sign(&claims);
            let parts: Vec<&str> = token.split('.').collect();
            let forged = URL_SAFE_NO_PAD
                .encode(with_claims(&claims, json!({ "sub": "user:default/admin" })).to_string());
            format!("{}.{}.{}", parts[0], forged, parts[2])
        }),
        ("signature stripped", {
            let token = sign(&claims);
            token.rsplit_once('.').unwrap().0.to_owned() + "."
        }),
        (
            "oversized",
            sign(&with_claims(
                &claims,
                json!({ "padding": "x".repeat(16 * 1024) }),
            )),
        ),
        ("garbage", "not-a-jwt".into()),
        ("three garbage parts", "a.b.c".into()),
        ("empty payload", "eyJhbGciOiJFUzI1NiJ9..sig".into()),
        (
            "claims not JSON",
            format!(
                "{}.{}.sig",
                URL_SAFE_NO_PAD.encode(header.to_string()),
                URL_SAFE_NO_PAD.encode("[]")
            ),
        ),
    ];

    for (name, token) in &cases {
        let response = w
            .broker
            .request_credentials(Some(token), credential_request("pulumi:acme/payments/dev"))
            .await;
        assert_eq!(response.status, 401, "{name}: {}", response.text);
        response.assert_problem(401, "unauthenticated");
        assert_eq!(
            response.header("www-authenticate"),
            Some("Bearer"),
            "{name}"
        );
    }

    for (name, header) in [
        ("no header", None),
        ("basic auth", Some("Basic amFuZTpzZWNyZXQ=")),
        ("empty bearer", Some("Bearer ")),
    ] {
        let client = reqwest::Client::new();
        let mut request = client
            .post(format!("{}/v1/credentials", w.broker.url))
            .json(&credential_request("pulumi:acme/payments/dev"));
        if let Some(header) = header {
            request = request.header("authorization", header);
        }
        let status = request.send().await.unwrap().status();
        assert_eq!(status, 401, "{name}");
    }

    assert_eq!(
        w.backstage.catalog_hits(),
        0,
        "no bad token may reach the catalog"
    );
    assert!(w.sts.calls().is_empty(), "no bad token may reach STS");
    assert!(
        w.broker.audit_rows().await.is_empty(),
        "unauthenticated requests are not audited as decisions"
    );
}

#[tokio::test]
async fn an_untrusted_issuer_is_refused_before_any_network_call() {
    let w = World::with_sts(StsBehaviour::Outage).await;
    let other = BackstageDouble::start().await;
    let response = w
        .broker
        .request_credentials(
            Some(&other.user_token("user:default/jane")),
            credential_request("pulumi:acme/payments/dev"),
        )
        .await;
    response.assert_problem(401, "unauthenticated");
    assert_eq!(w.backstage.key_fetches(), 0);
    assert_eq!(other.key_fetches(), 0);
}

#[tokio::test]
async fn unknown_kids_refetch_keys_at_a_bounded_rate() {
    let w = World::with_sts(StsBehaviour::Outage).await;
    let good = w.backstage.user_token("user:default/jane");
    assert_eq!(
        w.broker
            .request_credentials(Some(&good), credential_request("pulumi:acme/nope/dev"))
            .await
            .status,
        404
    );
    let fetches_after_first = w.backstage.key_fetches();
    assert_eq!(fetches_after_first, 2, "one discovery and one JWKS fetch");

    let claims = w.backstage.user_claims("user:default/jane");
    for i in 0..20 {
        let key = TestKey::generate(&format!("forged-{i}"));
        let forged = sign_jwt(
            &json!({ "alg": "ES256", "kid": key.kid }),
            &claims,
            Signer::Es256(&key),
        );
        let response = w
            .broker
            .request_credentials(
                Some(&forged),
                credential_request("pulumi:acme/payments/dev"),
            )
            .await;
        assert_eq!(response.status, 401);
    }
    assert_eq!(
        w.backstage.key_fetches(),
        fetches_after_first,
        "unknown kids within the minimum refetch interval must not hit the issuer"
    );
}

#[tokio::test]
async fn a_rotated_key_is_picked_up_without_restart() {
    let backstage = BackstageDouble::start().await;
    let sts = StsRecorder::start(StsBehaviour::Outage).await;
    let mut options = BrokerOptions::new(&backstage, &sts.url);
    options.env.push((
        "STACKPASS_IDENTITY__JWKS_MIN_REFETCH_INTERVAL".into(),
        "0s".into(),
    ));
    let broker = Broker::start(options).await;
    let first = backstage.user_token("user:default/jane");
    assert_eq!(
        broker
            .request_credentials(Some(&first), credential_request("pulumi:acme/nope/dev"))
            .await
            .status,
        404
    );

    let rotated = TestKey::generate("backstage-key-2");
    backstage.publish_key(rotated.clone());
    let token = sign_jwt(
        &json!({ "alg": "ES256", "kid": rotated.kid, "typ": "vnd.backstage.user" }),
        &backstage.user_claims("user:default/jane"),
        Signer::Es256(&rotated),
    );
    let response = broker
        .request_credentials(Some(&token), credential_request("pulumi:acme/nope/dev"))
        .await;
    assert_eq!(
        response.status, 404,
        "a token signed with the rotated key authenticates: {}",
        response.text
    );
}

#[tokio::test]
async fn an_issuer_outage_before_any_key_was_fetched_is_503() {
    let backstage = BackstageDouble::start().await;
    let sts = StsRecorder::start(StsBehaviour::Outage).await;
    let dead = format!("http://127.0.0.1:{}", free_port());
    let mut options = BrokerOptions::new(&backstage, &sts.url);
    // Trust the double's issuer name but fetch its keys from nowhere.
    options.env.push(("STACKPASS_IDENTITY__ISSUERS".into(), format!(
        "[{{name=\"backstage\",kind=\"backstage\",url=\"{}\",discovery_url=\"{dead}/api/auth/.well-known/openid-configuration\"}}]",
        backstage.url
    )));
    let broker = Broker::start(options).await;
    let response = broker
        .request_credentials(
            Some(&backstage.user_token("user:default/jane")),
            credential_request("pulumi:acme/payments/dev"),
        )
        .await;
    response.assert_problem(503, "identity-unavailable");
}

#[tokio::test]
async fn an_agent_token_is_recorded_with_its_actor() {
    let w = World::with_sts(StsBehaviour::Outage).await;
    let claims = with_claims(
        &w.backstage.user_claims("user:default/jane"),
        json!({ "act": { "sub": "agent:deploy-bot" } }),
    );
    let token = sign_jwt(
        &w.backstage.user_header(),
        &claims,
        Signer::Es256(&w.backstage.key),
    );
    let response = w
        .broker
        .request_credentials(Some(&token), credential_request("pulumi:acme/payments/dev"))
        .await;
    // STS is down in this world; the decision is what matters here.
    response.assert_problem(503, "cloud-unavailable");
    let rows = w.broker.audit_rows().await;
    assert_eq!(rows[0]["requester"], "user:default/jane");
    assert_eq!(rows[0]["requester_kind"], "agent");
    assert_eq!(rows[0]["actor"], "agent:deploy-bot");
}
