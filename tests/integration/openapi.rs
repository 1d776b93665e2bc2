//! The OpenAPI document against the running broker: `GET /openapi.json`
//! serves the committed `docs/openapi.json`, and schemathesis (from PyPI, in
//! `.venv`) generates requests from it, with a genuine Backstage token and
//! without or with a broken one, and checks every answer: no 5xx, no status
//! the document does not list for that operation, the documented content
//! type, body and required headers.

use std::process::Command;
use std::time::Instant;

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

/// A fixed seed, deterministic generation and a bounded number of examples
/// per operation keep the run repeatable and short (about a minute on two
/// shared cores). What it proves is in the module doc; what it found is in
/// the tests named after each bug.
#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_every_answer_documented() {
    let world = World::with_moto().await;
    let token = world.backstage.user_token("user:default/jane");
    let report = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let output = Command::new(workspace_root().join(".venv/bin/schemathesis"))
        .arg("run")
        .arg(format!("{}/openapi.json", world.broker.url))
        .args(["--checks", CHECKS])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .arg("--generation-deterministic")
        .args(["--max-examples", "100", "--workers", "1"])
        .args(["--report", "junit", "--report-junit-path"])
        .arg(report.path().join("junit.xml"))
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--request-timeout", "30"])
        .args(["--suppress-health-check", "all", "--no-color"])
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .env("PATH", path_with_venv())
        .current_dir(report.path())
        .output()
        .expect("run schemathesis from .venv (scripts/setup-test-deps installs it)");
    let text = format!("{}\n{}", stdout(&output), stderr(&output));
    eprintln!(
        "schemathesis took {:.1}s:\n{text}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        output.status.success(),
        "schemathesis found answers the document does not describe:\n{text}\nthe broker's warnings and errors:\n{}",
        warnings(&world.broker.logs())
    );
    // It did test every operation the document names.
    let junit = std::fs::read_to_string(report.path().join("junit.xml")).unwrap();
    let document: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(workspace_root().join("docs/openapi.json")).unwrap(),
    )
    .unwrap();
    // Not the document's own path: schemathesis reads it rather than tests it
    // (the test above does).
    for (path, operations) in document["paths"].as_object().unwrap() {
        if path == "/openapi.json" {
            continue;
        }
        for method in operations.as_object().unwrap().keys() {
            let label = format!("{} {path}", method.to_uppercase());
            assert!(junit.contains(&label), "{label} was not tested:\n{junit}");
        }
    }
    let rows = world.broker.audit_rows().await;
    assert!(
        rows.iter().any(|row| row["outcome"] == "issued"),
        "the documented example should have issued a credential through moto"
    );
}

fn warnings(log: &str) -> String {
    log.lines()
        .filter(|line| {
            line.contains(" WARN ") || line.contains(" ERROR ") || line.contains("panicked")
        })
        .collect::<Vec<_>>()
        .join("\n")
}
