//! The OpenAPI document against the running broker: `GET /openapi.json`
//! serves the committed `docs/openapi.json`, and schemathesis (from PyPI, in
//! `.venv`) generates requests from it, with a genuine Backstage token and
//! without or with a broken one, and checks every answer: no 5xx, no status
//! the document does not list for that operation, the documented content
//! type, body and required headers.

use std::time::Instant;

use serde_json::json;

use crate::support::*;

const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance,ignored_auth";

#[tokio::test(flavor = "multi_thread")]
async fn the_broker_serves_the_committed_document() {
    let world = World::with_moto().await;
    let served = reqwest::get(format!("{}/openapi.json", world.broker.url))
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!(
        served.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let served = served.text().await.unwrap();
    let committed = std::fs::read_to_string(workspace_root().join("docs/openapi.json")).unwrap();
    assert!(
        served == committed,
        "GET /openapi.json differs from docs/openapi.json; regenerate with `cargo run -q -- openapi > docs/openapi.json`"
    );
    let document: serde_json::Value = serde_json::from_str(&served).unwrap();
    assert_eq!(document["openapi"], "3.1.0");
}

/// The broker with `/mcp` enabled: jane (a Backstage token) calls `/v1`, alex
/// (a token from an identity provider, minted for the MCP server) calls
/// `/mcp`; each issuer vouches for its own people.
struct OpenApiWorld {
    broker: Broker,
    backstage: BackstageDouble,
    idp: OidcIssuer,
    resource: String,
    _sts: StsRecorder,
    _moto: Moto,
}

async fn world() -> OpenApiWorld {
    let moto = Moto::start().await;
    let sts = StsRecorder::start(StsBehaviour::Forward(moto.url.clone())).await;
    let backstage = BackstageDouble::start().await;
    let idp = OidcIssuer::start("", "/jwks", "idp-key", &["sub", "aud"]).await;
    let mut options = BrokerOptions::new(&backstage, &sts.url);
    let resource = format!("{}/mcp", options.at_fixed_address());
    options.env.push((
        "STACKPASS_IDENTITY__ISSUERS".into(),
        format!(
            r#"[{{name="backstage",kind="backstage",url="{backstage}",subjects=["user:default/jane","user:default/bob","user:default/sam"]}},{{name="idp",kind="oidc",issuer="{issuer}",audiences=["{resource}"],algorithms=["RS256"],subjects=["user:default/alex"]}}]"#,
            backstage = backstage.url,
            issuer = idp.issuer,
        ),
    ));
    // A prod rule that needs approval, so access requests are created and
    // decided rather than only refused.
    options.extra_config = format!("\n[mcp]\nenabled = true\n{PROD_APPROVAL_RULE}");
    let broker = Broker::start(options).await;
    OpenApiWorld {
        broker,
        backstage,
        idp,
        resource,
        _sts: sts,
        _moto: moto,
    }
}

/// Deterministic generation and a bounded number of examples per operation
/// keep the run repeatable and short (well under two minutes on two shared
/// cores). Each security scheme gets a genuine token through schemathesis's
/// own auth configuration, so its `ignored_auth` check can also send none or
/// a broken one and expect the documented 401.
#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_every_answer_documented() {
    let w = world().await;
    let v1_token = w.backstage.user_token("user:default/jane");
    let mcp_token = w.idp.sign(
        json!({ "sub": "user:default/alex", "aud": w.resource }),
        3600,
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("schemathesis.toml");
    std::fs::write(
        &config,
        format!(
            "[auth.openapi.bearer]\nbearer = \"{v1_token}\"\n\n[auth.openapi.mcp_bearer]\nbearer = \"{mcp_token}\"\n"
        ),
    )
    .unwrap();
    let junit = dir.path().join("junit.xml");
    let started = Instant::now();
    let output = tokio::process::Command::new(workspace_root().join(".venv/bin/schemathesis"))
        .arg("--config-file")
        .arg(&config)
        .args(["--no-color", "run"])
        .arg(format!("{}/openapi.json", w.broker.url))
        .args(["--checks", CHECKS])
        .arg("--generation-deterministic")
        .args(["--max-examples", "100", "--workers", "1"])
        .args(["--phases", "examples,coverage,fuzzing,stateful"])
        .args(["--request-timeout", "30", "--suppress-health-check", "all"])
        .args(["--report", "junit", "--report-junit-path"])
        .arg(&junit)
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .current_dir(dir.path())
        .output()
        .await
        .expect("run schemathesis from .venv (scripts/setup-test-deps installs it)");
    let text = format!("{}\n{}", stdout(&output), stderr(&output));
    eprintln!(
        "schemathesis took {:.1}s:\n{text}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        output.status.success(),
        "schemathesis found answers the document does not describe:\n{text}\nthe broker's warnings and errors:\n{}",
        warnings(&w.broker.logs())
    );
    // It tested every operation the document names but its own path, which
    // schemathesis reads rather than tests (the test above fetches it).
    let junit = std::fs::read_to_string(junit).unwrap();
    let document: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(workspace_root().join("docs/openapi.json")).unwrap(),
    )
    .unwrap();
    for (path, operations) in document["paths"].as_object().unwrap() {
        if path == "/openapi.json" {
            continue;
        }
        for method in operations.as_object().unwrap().keys() {
            let label = format!("{} {path}", method.to_uppercase());
            assert!(
                junit.contains(&format!("\"{label}\"")),
                "{label} was not tested:\n{junit}"
            );
        }
    }
    // And got past authentication: the documented examples issued a
    // credential through moto and opened an access request.
    let rows = w.broker.audit_rows().await;
    for (event, outcome) in [
        ("issuance_outcome", "issued"),
        ("access_requested", "pending"),
    ] {
        assert!(
            rows.iter()
                .any(|row| row["event"] == event && row["outcome"] == outcome),
            "no {event}/{outcome} record: {rows:#?}"
        );
    }
}

/// rmcp answers its own refusals in plain text without a Content-Type; the
/// gate names it (found by schemathesis: a 415 without one).
#[tokio::test(flavor = "multi_thread")]
async fn mcp_refusals_say_they_are_text() {
    let w = world().await;
    let token = w.idp.sign(
        json!({ "sub": "user:default/alex", "aud": w.resource }),
        600,
    );
    let client = reqwest::Client::new();
    let post = |accept: &'static str, body: &'static str| {
        client
            .post(format!("{}/mcp", w.broker.url))
            .bearer_auth(&token)
            .header("accept", accept)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let both = "application/json, text/event-stream";
    let tools = r#"{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}"#;
    let null_id = r#"{"jsonrpc": "2.0", "id": null, "method": "tools/list"}"#;
    for (response, status) in [
        (post(both, null_id).await.unwrap(), 415),
        (post("application/json", tools).await.unwrap(), 406),
    ] {
        assert_eq!(response.status(), status);
        assert_eq!(
            response.headers()["content-type"],
            "text/plain; charset=utf-8"
        );
        assert!(response.headers().contains_key("x-request-id"));
    }
    // A JSON-RPC answer keeps rmcp's own type.
    let listed = post(both, tools).await.unwrap();
    assert_eq!(listed.status(), 200);
    assert_eq!(listed.headers()["content-type"], "application/json");
}

fn warnings(log: &str) -> String {
    log.lines()
        .filter(|line| {
            line.contains(" WARN ") || line.contains(" ERROR ") || line.contains("panicked")
        })
        .collect::<Vec<_>>()
        .join("\n")
}
