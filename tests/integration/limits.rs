//! `[limits]` through the real broker: the issuance past a principal's burst
//! answered 429 with `Retry-After` and a `rate-limited` problem (and
//! `slow_down` at `/oauth2/token`), other principals and addresses
//! unaffected, the per-address issuance limit, and the lockout of an address
//! that sends bad tokens, which refuses its next requests before verifying
//! any token. Client addresses are varied with `X-Forwarded-For` from the
//! test's loopback, configured as a trusted proxy.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

const DEV: &str = "pulumi:acme/payments/dev";
const SEARCH: &str = "terraform:acme/search-dev";

/// A broker whose `[limits]` are `limits` (`STACKPASS_LIMITS__*` names and
/// values), behind the test's loopback as a trusted proxy, with `extra`
/// appended to its configuration.
async fn broker_with(
    backstage: &BackstageDouble,
    sts: &StsRecorder,
    limits: &[(&str, &str)],
    extra: String,
) -> Broker {
    let mut options = BrokerOptions::new(backstage, &sts.url);
    options.env = limits
        .iter()
        .map(|(name, value)| (format!("STACKPASS_LIMITS__{name}"), value.to_string()))
        .collect();
    options.env.push((
        "STACKPASS_SERVER__TRUSTED_PROXIES".into(),
        r#"["127.0.0.0/8"]"#.into(),
    ));
    options.extra_config = extra;
    Broker::start(options).await
}

async fn issue(broker: &Broker, token: &str, stack: &str, from: &str) -> TestResponse {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/credentials", broker.url))
        .bearer_auth(token)
        .header("x-forwarded-for", from)
        .json(&credential_request(stack))
        .send()
        .await
        .unwrap();
    TestResponse::from_response(response).await
}

/// A 429 `rate-limited` problem naming `limit`; its `Retry-After` (seconds).
#[track_caller]
fn assert_rate_limited(response: &TestResponse, limit: &str, at_most: u64) -> u64 {
    response.assert_problem(429, "rate-limited");
    let retry_after: u64 = response
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("Retry-After in whole seconds");
    assert!((1..=at_most).contains(&retry_after), "{retry_after}");
    assert_eq!(response.body["retry_after_seconds"], retry_after);
    let detail = response.body["detail"].as_str().unwrap();
    assert!(detail.contains(limit), "{detail}");
    assert!(
        response.body["hint"]
            .as_str()
            .unwrap()
            .contains("Retry-After"),
        "{}",
        response.text
    );
    retry_after
}

async fn wait(seconds: u64) {
    tokio::time::sleep(Duration::from_secs(seconds) + Duration::from_millis(200)).await;
}

#[tokio::test]
async fn the_issuance_past_a_principals_burst_is_refused_and_others_are_not() {
    let backstage = BackstageDouble::start().await;
    let sts = StsRecorder::start(StsBehaviour::Succeed).await;
    // One issuance every 10 s once a burst of 3 is spent: slow enough that
    // a loaded machine cannot refill the bucket in the middle of the test.
    let broker = broker_with(
        &backstage,
        &sts,
        &[
            ("ISSUANCE_PER_PRINCIPAL_PER_MINUTE", "6"),
            ("ISSUANCE_PER_PRINCIPAL_BURST", "3"),
        ],
        String::new(),
    )
    .await;
    let jane = backstage.user_token("user:default/jane");
    let bob = backstage.user_token("user:default/bob");
    for _ in 0..3 {
        let response = issue(&broker, &jane, DEV, "198.51.100.1").await;
        assert_eq!(response.status, 200, "{}", response.text);
    }
    let audited = broker.audit_rows().await.len();
    let calls = sts.calls().len();
    let refused = issue(&broker, &jane, DEV, "198.51.100.1").await;
    let retry_after = assert_rate_limited(&refused, "issuance_principal", 10);
    // Refused before anything: no audit record, no cloud call; logged with
    // the request id and the principal.
    assert_eq!(broker.audit_rows().await.len(), audited);
    assert_eq!(sts.calls().len(), calls);
    let request_id = refused.header("x-request-id").unwrap().to_owned();
    assert!(broker.logged("rate limited").await);
    let line = broker
        .logs()
        .lines()
        .find(|l| l.contains("rate limited") && l.contains(&request_id))
        .map(str::to_owned)
        .expect("a log line for the refusal");
    assert!(line.contains("user:default/jane"), "{line}");
    assert!(line.contains("issuance_principal"), "{line}");
    // Another principal, at the same moment and from the same address.
    let other = issue(&broker, &bob, SEARCH, "198.51.100.1").await;
    assert_eq!(other.status, 200, "{}", other.text);
    // Visible in metrics, under the limit that refused.
    let metrics = scrape(&format!("{}/metrics", broker.url)).await;
    let limited = |limit| metrics.sum("stackpass_rate_limited_total", &[("limit", limit)]);
    assert_eq!(limited("issuance_principal"), 1.0);
    assert_eq!(limited("issuance_address"), 0.0);
    // After the wait it named, jane gets one more.
    wait(retry_after).await;
    let again = issue(&broker, &jane, DEV, "198.51.100.1").await;
    assert_eq!(again.status, 200, "{}", again.text);
}

#[tokio::test]
async fn the_per_address_limit_counts_every_principal_from_one_address() {
    let backstage = BackstageDouble::start().await;
    let sts = StsRecorder::start(StsBehaviour::Succeed).await;
    let broker = broker_with(
        &backstage,
        &sts,
        &[
            ("ISSUANCE_PER_ADDRESS_PER_MINUTE", "6"),
            ("ISSUANCE_PER_ADDRESS_BURST", "2"),
        ],
        String::new(),
    )
    .await;
    let jane = backstage.user_token("user:default/jane");
    let bob = backstage.user_token("user:default/bob");
    assert_eq!(issue(&broker, &jane, DEV, "198.51.100.7").await.status, 200);
    assert_eq!(
        issue(&broker, &bob, SEARCH, "198.51.100.7").await.status,
        200
    );
    let refused = issue(&broker, &bob, SEARCH, "198.51.100.7").await;
    let retry_after = assert_rate_limited(&refused, "issuance_address", 10);
    // Another address, and IPv6 neighbours in another /64, pass; two
    // addresses in one /64 are one client.
    assert_eq!(
        issue(&broker, &bob, SEARCH, "198.51.100.8").await.status,
        200
    );
    assert_eq!(
        issue(&broker, &bob, SEARCH, "2001:db8:0:1::1").await.status,
        200
    );
    assert_eq!(
        issue(&broker, &bob, SEARCH, "2001:db8:0:1::2").await.status,
        200
    );
    let same_64 = issue(&broker, &bob, SEARCH, "2001:db8:0:1::3").await;
    assert_rate_limited(&same_64, "issuance_address", 10);
    assert_eq!(
        issue(&broker, &bob, SEARCH, "2001:db8:0:2::1").await.status,
        200
    );
    wait(retry_after).await;
    assert_eq!(issue(&broker, &jane, DEV, "198.51.100.7").await.status, 200);
}

#[tokio::test]
async fn an_address_sending_bad_tokens_is_locked_out_before_verification() {
    let backstage = BackstageDouble::start().await;
    let sts = StsRecorder::start(StsBehaviour::Succeed).await;
    // A burst of 3 failures, then one every 10 s.
    let broker = broker_with(
        &backstage,
        &sts,
        &[
            ("AUTH_FAILURES_PER_ADDRESS_PER_MINUTE", "6"),
            ("AUTH_FAILURES_PER_ADDRESS_BURST", "3"),
        ],
        String::new(),
    )
    .await;
    let jane = backstage.user_token("user:default/jane");
    // Jane's claims, signed by a key nobody published.
    let key = TestKey::generate("forged");
    let forged = sign_jwt(
        &json!({ "alg": "ES256", "kid": key.kid, "typ": "vnd.backstage.user" }),
        &backstage.user_claims("user:default/jane"),
        Signer::Es256(&key),
    );
    let attacker = "203.0.113.9";
    for _ in 0..3 {
        let response = issue(&broker, &forged, DEV, attacker).await;
        response.assert_problem(401, "unauthenticated");
    }
    // The fourth failure is over the limit.
    let over = issue(&broker, &forged, DEV, attacker).await;
    assert_rate_limited(&over, "auth_failures_address", 10);
    // Now even a valid token from that address is refused, unverified: no
    // "authentication failed" line carries its request id.
    let locked = issue(&broker, &jane, DEV, attacker).await;
    let retry_after = assert_rate_limited(&locked, "auth_failures_address", 10);
    assert!(
        locked.body["hint"]
            .as_str()
            .unwrap()
            .contains("valid token"),
        "{}",
        locked.text
    );
    let locked_id = locked.header("x-request-id").unwrap().to_owned();
    let bad_again = issue(&broker, &forged, DEV, attacker).await;
    assert_rate_limited(&bad_again, "auth_failures_address", 10);
    let bad_again_id = bad_again.header("x-request-id").unwrap().to_owned();
    assert!(broker.logged(&bad_again_id).await);
    assert!(!broker
        .logs()
        .lines()
        .any(|l| l.contains("authentication failed")
            && (l.contains(&locked_id) || l.contains(&bad_again_id))));
    // The token endpoint is behind the same lockout, in its OAuth form.
    let form = [
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        ),
        ("subject_token", jane.as_str()),
        ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
        ("resource", DEV),
        ("scope", "provider:aws"),
    ];
    let exchange = TestResponse::from_response(
        reqwest::Client::new()
            .post(format!("{}/oauth2/token", broker.url))
            .header("x-forwarded-for", attacker)
            .form(&form)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(exchange.status, 429, "{}", exchange.text);
    assert_eq!(exchange.body["error"], "slow_down", "{}", exchange.text);
    assert!(exchange.header("retry-after").is_some());
    // Another address is unaffected, bad tokens and all.
    let elsewhere = issue(&broker, &jane, DEV, "203.0.113.10").await;
    assert_eq!(elsewhere.status, 200, "{}", elsewhere.text);
    issue(&broker, &forged, DEV, "203.0.113.10")
        .await
        .assert_problem(401, "unauthenticated");
    // Four refusals by the lockout (the failure that crossed it, then three
    // requests never verified), and five tokens that failed verification
    // (four from the attacker, the forged one from elsewhere).
    let metrics = scrape(&format!("{}/metrics", broker.url)).await;
    assert_eq!(
        metrics.sum(
            "stackpass_rate_limited_total",
            &[("limit", "auth_failures_address")]
        ),
        4.0
    );
    assert_eq!(
        metrics.sum("stackpass_authentication_failures_total", &[]),
        5.0
    );
    // After the wait, the locked-out address's valid token passes.
    wait(retry_after).await;
    let after = issue(&broker, &jane, DEV, attacker).await;
    assert_eq!(after.status, 200, "{}", after.text);
}

#[tokio::test]
async fn a_token_exchange_past_the_agents_burst_gets_slow_down() {
    let moto = Moto::start().await;
    let backstage = BackstageDouble::start().await;
    let sts = StsRecorder::start(StsBehaviour::Forward(moto.url.clone())).await;
    let agents = OidcIssuer::start("", "/jwks", "agents-1", &[]).await;
    let extra = agents.agents_config();
    let broker = broker_with(
        &backstage,
        &sts,
        &[
            ("ISSUANCE_PER_PRINCIPAL_PER_MINUTE", "6"),
            ("ISSUANCE_PER_PRINCIPAL_BURST", "2"),
        ],
        extra,
    )
    .await;
    let jane = backstage.user_token("user:default/jane");
    let bot = agents.sign(
        json!({ "sub": "component:agents/deploy-bot", "aud": "stackpass" }),
        300,
    );
    let exchange = || async {
        let form = [
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("subject_token", jane.as_str()),
            ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
            ("actor_token", bot.as_str()),
            ("actor_token_type", "urn:ietf:params:oauth:token-type:jwt"),
            ("resource", DEV),
            (
                "requested_token_type",
                "urn:stackpass:params:oauth:token-type:aws-credentials",
            ),
        ];
        TestResponse::from_response(
            reqwest::Client::new()
                .post(format!("{}/oauth2/token", broker.url))
                .form(&form)
                .send()
                .await
                .unwrap(),
        )
        .await
    };
    for _ in 0..2 {
        let response = exchange().await;
        assert_eq!(response.status, 200, "{}", response.text);
    }
    let refused = exchange().await;
    assert_eq!(refused.status, 429, "{}", refused.text);
    assert_eq!(refused.body["error"], "slow_down");
    let description = refused.body["error_description"].as_str().unwrap();
    assert!(description.contains("issuance_principal"), "{description}");
    let retry_after: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=10).contains(&retry_after), "{retry_after}");
    assert_eq!(refused.header("cache-control"), Some("no-store"));
    assert!(refused.body.get("access_token").is_none());
    // The agent acting for jane is its own principal: jane herself is not
    // limited by what her agent used.
    let own = issue(&broker, &jane, DEV, "198.51.100.1").await;
    assert_eq!(own.status, 200, "{}", own.text);
    let _: Value = own.body;
}
