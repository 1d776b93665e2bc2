//! What the broker tells its operators: `/metrics` after a scripted mix of
//! issuances, denials and failures (read by Prometheus's own parser, counted
//! against what was sent), JSON log lines with the request's and issuance's
//! ids, and spans per stage exported over OTLP, none of them carrying a secret.

use std::time::Duration;

use serde_json::Value;

use crate::support::*;

const DEV: &str = "pulumi:acme/payments/dev";
const PROD: &str = "pulumi:acme/payments/prod";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_was_sent() {
    let w = World::with_sts(StsBehaviour::Succeed).await;
    let jane = w.backstage.user_token("user:default/jane");
    let bob = w.backstage.user_token("user:default/bob");
    for _ in 0..3 {
        let issued = w
            .broker
            .request_credentials(Some(&jane), credential_request(DEV))
            .await;
        assert_eq!(issued.status, 200, "{}", issued.text);
    }
    // No rule allows prod, and bob's team does not own payments.
    w.broker
        .request_credentials(Some(&jane), credential_request(PROD))
        .await
        .assert_problem(403, "denied");
    w.broker
        .request_credentials(Some(&bob), credential_request(DEV))
        .await
        .assert_problem(403, "denied");
    w.broker
        .request_credentials(Some(&jane), credential_request("pulumi:acme/nowhere/dev"))
        .await
        .assert_problem(404, "unknown-stack");
    w.broker
        .request_credentials(Some("not-a-jwt"), credential_request(DEV))
        .await
        .assert_problem(401, "unauthenticated");
    w.broker
        .request_credentials(None, credential_request(DEV))
        .await
        .assert_problem(401, "unauthenticated");

    let metrics = scrape(&format!("{}/metrics", w.broker.url)).await;
    let issued = [
        ("provider", "aws"),
        ("rule", "owners-deploy-nonprod"),
        ("outcome", "issued"),
    ];
    assert_eq!(metrics.sum("stackpass_issuances_total", &issued), 3.0);
    assert_eq!(metrics.sum("stackpass_issuances_total", &[]), 3.0);
    let decisions = |outcome| metrics.sum("stackpass_decisions_total", &[("outcome", outcome)]);
    assert_eq!(decisions("allowed"), 3.0);
    assert_eq!(decisions("denied"), 2.0);
    assert_eq!(decisions("unknown_stack"), 1.0);
    let denials = |reason| metrics.sum("stackpass_denials_total", &[("reason", reason)]);
    assert_eq!(denials("no_rule_matched"), 2.0);
    assert_eq!(denials("unknown_stack"), 1.0);
    assert_eq!(metrics.sum("stackpass_denials_total", &[]), 3.0);
    let refused = |reason| {
        metrics.sum(
            "stackpass_authentication_failures_total",
            &[("reason", reason)],
        )
    };
    assert_eq!(refused("malformed"), 1.0);
    assert_eq!(refused("missing"), 1.0);
    assert_eq!(
        metrics.sum("stackpass_authentication_failures_total", &[]),
        2.0
    );

    // The cloud was called three times, and answered each.
    let exchanges = [("provider", "aws"), ("result", "ok")];
    assert_eq!(
        metrics.sum(
            "stackpass_cloud_exchange_duration_seconds_count",
            &exchanges
        ),
        3.0
    );
    assert_eq!(w.sts.calls().len(), 3);
    assert_eq!(
        metrics.sum("stackpass_cloud_exchange_errors_total", &[]),
        0.0
    );

    // Every request's records were committed: two appends per issuance
    // (decision + intent, then outcome) and one per refusal, however the
    // writer grouped them.
    let store = [("store", "sqlite")];
    assert_eq!(
        metrics.sum("stackpass_audit_commit_appends_sum", &store),
        9.0
    );
    let commits = metrics.sum("stackpass_audit_commit_duration_seconds_count", &store);
    assert!((1.0..=9.0).contains(&commits), "{commits} commits");
    assert_eq!(
        metrics.sum("stackpass_audit_commit_failures_total", &[]),
        0.0
    );

    // Seven requests carried a verifiable token: the issuer's keys were
    // fetched for the first and came from the cache after.
    assert_eq!(
        metrics.sum("stackpass_jwks_fetches_total", &[("result", "ok")]),
        1.0
    );
    assert_eq!(metrics.sum("stackpass_jwks_cache_hits_total", &[]), 5.0);
    assert!(metrics.sum("stackpass_catalog_fetches_total", &[("result", "ok")]) >= 1.0);
    assert!(metrics.has("stackpass_catalog_cache_hits_total"));

    // Answers by route template and status; the scrape itself is in flight.
    let answered = |status| {
        metrics.sum(
            "stackpass_http_requests_total",
            &[("route", "/v1/credentials"), ("status", status)],
        )
    };
    assert_eq!(answered("200"), 3.0);
    assert_eq!(answered("403"), 2.0);
    assert_eq!(answered("404"), 1.0);
    assert_eq!(answered("401"), 2.0);
    assert_eq!(metrics.sum("stackpass_http_requests_in_flight", &[]), 1.0);
    assert_eq!(
        metrics.sum(
            "stackpass_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_errors_are_counted_by_the_clouds_code() {
    let w = World::with_sts(StsBehaviour::RejectToken).await;
    let jane = w.backstage.user_token("user:default/jane");
    for _ in 0..2 {
        w.broker
            .request_credentials(Some(&jane), credential_request(DEV))
            .await
            .assert_problem(502, "cloud-refused");
    }
    let metrics = scrape(&format!("{}/metrics", w.broker.url)).await;
    assert_eq!(
        metrics.sum(
            "stackpass_cloud_exchange_errors_total",
            &[("provider", "aws"), ("code", "InvalidIdentityToken")]
        ),
        2.0
    );
    assert_eq!(
        metrics.sum(
            "stackpass_issuances_total",
            &[("outcome", "failed"), ("rule", "owners-deploy-nonprod")]
        ),
        2.0
    );
    assert_eq!(
        metrics.sum(
            "stackpass_cloud_exchange_duration_seconds_count",
            &[("result", "error")]
        ),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_have_their_own_listener() {
    let backstage = BackstageDouble::start().await;
    let sts = StsRecorder::start(StsBehaviour::Succeed).await;
    let port = free_port();
    let mut options = BrokerOptions::new(&backstage, &sts.url);
    options.extra_config = format!("\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n");
    let broker = Broker::start(options).await;
    let separate = scrape(&format!("http://127.0.0.1:{port}/metrics")).await;
    assert!(separate.has("stackpass_build_info"));
    // The API listener no longer answers it.
    broker
        .get("/metrics")
        .await
        .assert_problem(404, "not-found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_request_and_issuance_ids_and_no_secret() {
    let backstage = BackstageDouble::start().await;
    let sts = StsRecorder::start(StsBehaviour::Succeed).await;
    let mut options = BrokerOptions::new(&backstage, &sts.url);
    options.extra_config = "\n[telemetry]\nlog_format = \"json\"\n".into();
    let broker = Broker::start(options).await;
    let jane = backstage.user_token("user:default/jane");
    let response = broker
        .request_credentials(Some(&jane), credential_request(DEV))
        .await;
    assert_eq!(response.status, 200, "{}", response.text);
    let request_id = response.header("x-request-id").unwrap().to_owned();
    let issuance_id = response.body["issuance_id"].as_str().unwrap().to_owned();
    assert!(broker.logged("\"issued\"").await, "{}", broker.logs());

    let lines: Vec<Value> = broker
        .logs()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let span_field = |line: &Value, span: &str, field: &str| -> Option<String> {
        line["spans"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == span)
            .and_then(|s| s[field].as_str().map(str::to_owned))
    };
    let of_request: Vec<&Value> = lines
        .iter()
        .filter(|line| span_field(line, "request", "request_id").as_deref() == Some(&request_id))
        .collect();
    assert!(!of_request.is_empty(), "{}", broker.logs());
    let issued = of_request
        .iter()
        .find(|line| line["fields"]["message"] == "issued")
        .unwrap_or_else(|| panic!("no issued line: {}", broker.logs()));
    assert_eq!(issued["level"], "INFO");
    // Every line written inside the issuance's own task names it too.
    for line in lines
        .iter()
        .filter(|line| span_field(line, "issuance", "issuance_id").is_some())
    {
        assert_eq!(
            span_field(line, "issuance", "issuance_id").as_deref(),
            Some(issuance_id.as_str())
        );
        assert_eq!(
            span_field(line, "request", "request_id").as_deref(),
            Some(request_id.as_str()),
            "{line}"
        );
    }
    assert_eq!(
        span_field(issued, "issuance", "issuance_id").as_deref(),
        Some(issuance_id.as_str())
    );

    let logs = broker.logs();
    let credentials = &response.body["credentials"];
    for secret in [
        jane.as_str(),
        credentials["secret_access_key"].as_str().unwrap(),
        credentials["session_token"].as_str().unwrap(),
    ] {
        assert!(!logs.contains(secret), "a secret reached the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_per_stage_are_exported_over_otlp_without_secrets() {
    let collector = OtlpCollector::start().await;
    let backstage = BackstageDouble::start().await;
    let sts = StsRecorder::start(StsBehaviour::Succeed).await;
    let mut options = BrokerOptions::new(&backstage, &sts.url);
    options.extra_config = format!(
        "\n[telemetry]\notlp_endpoint = \"{}\"\nservice_name = \"stackpass-test\"\n",
        collector.traces_url
    );
    // The batch processor's documented knob: export every 200 ms, not 5 s.
    options
        .env
        .push(("OTEL_BSP_SCHEDULE_DELAY".into(), "200".into()));
    let broker = Broker::start(options).await;
    let jane = backstage.user_token("user:default/jane");
    // The caller's own trace: the broker's spans join it.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = reqwest::Client::new()
        .post(format!("{}/v1/credentials", broker.url))
        .bearer_auth(&jane)
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&credential_request(DEV))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = response.json().await.unwrap();

    let stages = [
        "request",
        "authenticate",
        "resolve",
        "decide",
        "audit_commit",
        "issuance",
        "cloud_exchange",
    ];
    let spans = collector.wait_for(&stages, Duration::from_secs(20)).await;
    for stage in stages {
        let span = spans
            .iter()
            .find(|span| span.name == stage)
            .unwrap_or_else(|| panic!("no {stage} span among {spans:#?}"));
        assert_eq!(
            span.trace_id, trace_id,
            "{stage} is not in the caller's trace"
        );
        assert_eq!(span.service, "stackpass-test");
    }
    let request = spans.iter().find(|span| span.name == "request").unwrap();
    assert_eq!(request.attribute("request_id"), Some(request_id.as_str()));
    assert_eq!(request.parent_span_id, "00f067aa0ba902b7");
    // The stages hang under the request (the cloud call under the issuance).
    let parent_of = |name: &str| {
        let span = spans.iter().find(|span| span.name == name).unwrap();
        spans
            .iter()
            .find(|parent| parent.span_id == span.parent_span_id)
            .map(|parent| parent.name.clone())
    };
    assert_eq!(parent_of("authenticate").as_deref(), Some("request"));
    assert_eq!(parent_of("issuance").as_deref(), Some("request"));
    assert_eq!(parent_of("cloud_exchange").as_deref(), Some("issuance"));
    let issuance = spans.iter().find(|span| span.name == "issuance").unwrap();
    assert_eq!(
        issuance.attribute("issuance_id"),
        body["issuance_id"].as_str()
    );
    assert_eq!(issuance.attribute("provider"), Some("aws"));

    let credentials = &body["credentials"];
    for secret in [
        jane.as_str(),
        credentials["secret_access_key"].as_str().unwrap(),
        credentials["session_token"].as_str().unwrap(),
    ] {
        assert!(
            !collector.bodies_contain(secret),
            "a secret was exported in a span"
        );
    }
    // A malformed collector URL is refused before the broker starts.
    let bad = stackpass(&["config", "check", "--config"])
        .arg(broker.config_path())
        .env("STACKPASS_TELEMETRY__TRACE_SAMPLE_RATIO", "2")
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("telemetry.trace_sample_ratio"),
        "{}",
        stderr(&bad)
    );
}
