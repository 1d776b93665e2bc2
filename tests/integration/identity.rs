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
            "lifetime longer than Backstage's own 1h (the default max_token_lifetime)",
            sign(&with_claims(&claims, json!({ "exp": now + 2 * 3600 }))),
        ),
        (
            "crit names an extension the broker does not implement",
            sign_jwt(
                &json!({ "alg": "ES256", "kid": b.key.kid, "typ": "vnd.backstage.user",
                         "crit": ["https://example.com/must-check"], "https://example.com/must-check": true }),
                &claims,
                Signer::Es256(&b.key),
            ),
        ),
        (
            "crit is empty",
            sign_jwt(
                &json!({ "alg": "ES256", "kid": b.key.kid, "typ": "vnd.backstage.user", "crit": [] }),
                &claims,
                Signer::Es256(&b.key),
            ),
        ),
        (
            "no typ (not a Backstage user token)",
            sign_jwt(
                &json!({ "alg": "ES256", "kid": b.key.kid }),
                &claims,
                Signer::Es256(&b.key),
            ),
        ),
        (
            "Backstage limited-user token",
            sign_jwt(
                &json!({ "alg": "ES256", "kid": b.key.kid, "typ": "vnd.backstage.limited-user" }),
                &claims,
                Signer::Es256(&b.key),
            ),
        ),
        (
            "Backstage plugin token",
            sign_jwt(
                &json!({ "alg": "ES256", "kid": b.key.kid, "typ": "vnd.backstage.plugin" }),
                &claims,
                Signer::Es256(&b.key),
            ),
        ),
        (
            "the owning group as subject",
            sign(&with_claims(
                &claims,
                json!({ "sub": "group:default/team-payments" }),
            )),
        ),
        (
            "a component as subject of a Backstage user token",
            sign(&with_claims(
                &claims,
                json!({ "sub": "component:default/payments" }),
            )),
        ),
        (
            "NUL in act.sub",
            sign(&with_claims(
                &claims,
                json!({ "act": { "sub": "agent:deploy-bot\u{0}" } }),
            )),
        ),
        (
            "terminal escape in act.sub",
            sign(&with_claims(
                &claims,
                json!({ "act": { "sub": "agent:\u{1b}[2Jdeploy-bot" } }),
            )),
        ),
        (
            "NUL in sub",
            sign(&with_claims(
                &claims,
                json!({ "sub": "user:default/jane\u{0}" }),
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
                &json!({ "alg": "RS256", "kid": b.key.kid, "typ": "vnd.backstage.user" }),
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
                &json!({ "alg": "ES256", "kid": unknown_kid.kid, "typ": "vnd.backstage.user" }),
                &claims,
                Signer::Es256(&unknown_kid),
            ),
        ),
        (
            "no kid",
            sign_jwt(
                &json!({ "alg": "ES256", "typ": "vnd.backstage.user" }),
                &claims,
                Signer::Es256(&b.key),
            ),
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

    // Every case is tried before failing, so one run names all that got in.
    let mut admitted = Vec::new();
    for (name, token) in &cases {
        let response = w
            .broker
            .request_credentials(Some(token), credential_request("pulumi:acme/payments/dev"))
            .await;
        if response.status != 401 {
            admitted.push(format!("{name}: {} {}", response.status, response.text));
        }
    }
    assert!(
        admitted.is_empty(),
        "not refused with 401:\n{}",
        admitted.join("\n")
    );
    for (name, token) in &cases {
        let response = w
            .broker
            .request_credentials(Some(token), credential_request("pulumi:acme/payments/dev"))
            .await;
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
            &json!({ "alg": "ES256", "kid": key.kid, "typ": "vnd.backstage.user" }),
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
    // No [[policy.agents]] entry names the agent, so it gets nothing; the
    // denial still names both the person and the agent.
    response.assert_problem(403, "denied");
    let rows = w.broker.audit_rows().await;
    assert_eq!(rows[0]["requester"], "user:default/jane");
    assert_eq!(rows[0]["requester_kind"], "agent");
    assert_eq!(rows[0]["actor"], "agent:deploy-bot");
}

/// RFC 7517: a key for another use, other operations or a non-signature
/// algorithm is not a verification key; a kid published twice names no key.
#[tokio::test]
async fn keys_that_do_not_fit_or_share_a_kid_are_not_used() {
    let w = World::with_sts(StsBehaviour::Outage).await;
    let b = &w.backstage;
    let with = |key: &TestKey, changes: Value| {
        let mut jwk = key.jwk();
        for (k, v) in changes.as_object().unwrap() {
            if v.is_null() {
                jwk.as_object_mut().unwrap().remove(k);
            } else {
                jwk[k] = v.clone();
            }
        }
        jwk
    };
    let encryption_alg = TestKey::generate("ec-key-with-an-encryption-alg");
    b.publish_raw_jwk(with(&encryption_alg, json!({ "alg": "RSA-OAEP" })));
    let encryption_use = TestKey::generate("ec-key-for-encryption");
    b.publish_raw_jwk(with(&encryption_use, json!({ "use": "enc", "alg": null })));
    let wrap_only = TestKey::generate("ec-key-for-wrapping");
    b.publish_raw_jwk(with(&wrap_only, json!({ "key_ops": ["wrapKey"] })));
    // Two keys under one kid; the signer's is published last, so a key set
    // read into a map keyed by kid would keep it and trust it.
    let decoy = TestKey::generate("shared-kid");
    let signer = TestKey::generate("shared-kid");
    b.publish_raw_jwk(decoy.jwk());
    b.publish_raw_jwk(signer.jwk());
    let fitting = TestKey::generate("ec-key-for-signing");
    b.publish_raw_jwk(with(
        &fitting,
        json!({ "use": "sig", "key_ops": ["verify"] }),
    ));

    let token = |key: &TestKey| {
        sign_jwt(
            &json!({ "alg": "ES256", "kid": key.kid, "typ": "vnd.backstage.user" }),
            &b.user_claims("user:default/jane"),
            Signer::Es256(key),
        )
    };
    let broker = &w.broker;
    let ask = |token: String| async move {
        broker
            .request_credentials(Some(&token), credential_request("pulumi:acme/nope/dev"))
            .await
    };
    let fits = ask(token(&fitting)).await;
    assert_eq!(fits.status, 404, "a fitting key verifies: {}", fits.text);
    for (name, key) in [
        ("alg RSA-OAEP", &encryption_alg),
        ("use enc", &encryption_use),
        ("key_ops wrapKey", &wrap_only),
    ] {
        let response = ask(token(key)).await;
        response.assert_problem(401, "unauthenticated");
        assert!(
            response.body["detail"]
                .as_str()
                .unwrap()
                .contains("a key the issuer does not publish"),
            "{name}: {}",
            response.text
        );
    }
    let shared = ask(token(&signer)).await;
    shared.assert_problem(401, "unauthenticated");
    assert!(
        shared.body["detail"]
            .as_str()
            .unwrap()
            .contains("more than one key under the token's kid"),
        "{}",
        shared.text
    );
}

/// Stale keys bridge a short outage of the issuer, but not forever.
#[tokio::test]
async fn keys_stop_verifying_when_refreshes_fail_past_their_maximum_age() {
    let backstage = BackstageDouble::start().await;
    let sts = StsRecorder::start(StsBehaviour::Outage).await;
    let mut options = BrokerOptions::new(&backstage, &sts.url);
    for (key, value) in [
        ("STACKPASS_IDENTITY__JWKS_REFRESH_INTERVAL", "1s"),
        ("STACKPASS_IDENTITY__JWKS_MIN_REFETCH_INTERVAL", "0s"),
        ("STACKPASS_IDENTITY__JWKS_MAX_KEY_AGE", "3s"),
    ] {
        options.env.push((key.into(), value.into()));
    }
    let broker = Broker::start(options).await;
    let token = backstage.user_token("user:default/jane");
    let ask =
        || broker.request_credentials(Some(&token), credential_request("pulumi:acme/nope/dev"));
    assert_eq!(ask().await.status, 404, "keys fetched");

    backstage.set_keys_unavailable(true);
    let fetched = std::time::Instant::now();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let fetches = backstage.key_fetches();
    let stale = ask().await;
    assert_eq!(stale.status, 404, "within the maximum age: {}", stale.text);
    assert!(backstage.key_fetches() > fetches, "a refresh was tried");

    tokio::time::sleep(std::time::Duration::from_secs(3).saturating_sub(fetched.elapsed())).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let expired = ask().await;
    expired.assert_problem(503, "identity-unavailable");

    backstage.set_keys_unavailable(false);
    assert_eq!(ask().await.status, 404, "the issuer is back");
    let said_why = async {
        while !broker.logs().contains("jwks_max_key_age") {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), said_why)
        .await
        .expect("the log says why the keys are no longer trusted");
}
