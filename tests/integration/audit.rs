//! Fail closed: no credential leaves the broker unless its audit record is
//! committed. And no secret ever reaches the logs.

use serde_json::Value;

use crate::support::*;

/// Makes the audit store refuse some inserts, as a full disk or a broken database
/// would, by adding a trigger from outside the broker.
async fn break_audit_store(broker: &Broker, condition: &str) {
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(broker.audit_path());
    let mut conn = sqlx::ConnectOptions::connect(&options).await.unwrap();
    sqlx::query(&format!(
        "CREATE TRIGGER refuse_writes BEFORE INSERT ON audit_records WHEN {condition} \
         BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
}

#[tokio::test]
async fn an_audit_store_that_cannot_record_the_intent_means_503_and_no_cloud_call() {
    let w = World::with_moto().await;
    break_audit_store(&w.broker, "1").await;
    let token = w.backstage.user_token("user:default/jane");
    let response = w
        .broker
        .request_credentials(Some(&token), credential_request("pulumi:acme/payments/dev"))
        .await;
    response.assert_problem(503, "audit-unavailable");
    assert!(
        w.sts.calls().is_empty(),
        "the cloud must not be called without a committed intent"
    );
    assert!(w.broker.audit_rows().await.is_empty());

    // Denials are audited too, so they fail closed the same way.
    let bob = w.backstage.user_token("user:default/bob");
    let response = w
        .broker
        .request_credentials(Some(&bob), credential_request("pulumi:acme/payments/dev"))
        .await;
    response.assert_problem(503, "audit-unavailable");
}

#[tokio::test]
async fn an_issued_credential_whose_outcome_cannot_be_recorded_is_withheld() {
    let w = World::with_moto().await;
    break_audit_store(&w.broker, "NEW.event = 'issuance_outcome'").await;
    let token = w.backstage.user_token("user:default/jane");
    let response = w
        .broker
        .request_credentials(Some(&token), credential_request("pulumi:acme/payments/dev"))
        .await;
    response.assert_problem(503, "audit-unavailable");
    assert!(
        !response.text.contains("ASIA"),
        "no credential material in the error: {}",
        response.text
    );
    assert_eq!(
        w.sts.calls().len(),
        1,
        "the cloud was called after the intent was committed"
    );

    // The intent is on record, without an outcome: an operator can see that a
    // credential was minted but never handed out.
    let rows = w.broker.audit_rows().await;
    let events: Vec<&str> = rows.iter().map(|r| r["event"].as_str().unwrap()).collect();
    assert_eq!(events, vec!["decision", "issuance_intent"]);
    assert!(w.broker.logged("issued credential withheld").await);
}

#[tokio::test]
async fn secrets_never_reach_the_logs() {
    let w = World::with_moto().await;
    let token = w.backstage.user_token("user:default/jane");
    let response = w
        .broker
        .request_credentials(Some(&token), credential_request("pulumi:acme/payments/dev"))
        .await;
    assert_eq!(response.status, 200, "{}", response.text);
    let bob = w.backstage.user_token("user:default/bob");
    w.broker
        .request_credentials(Some(&bob), credential_request("pulumi:acme/payments/dev"))
        .await;
    let garbage = format!("{token}tampered");
    w.broker
        .request_credentials(
            Some(&garbage),
            credential_request("pulumi:acme/payments/dev"),
        )
        .await;

    let subject_token = w.sts.calls()[0].form["WebIdentityToken"].clone();
    let credentials: &Value = &response.body["credentials"];
    let secrets = [
        ("identity token", token.as_str()),
        (
            "identity token signature",
            token.rsplit('.').next().unwrap(),
        ),
        ("bob's identity token", bob.as_str()),
        ("subject token", subject_token.as_str()),
        (
            "subject token signature",
            subject_token.rsplit('.').next().unwrap(),
        ),
        (
            "secret access key",
            credentials["secret_access_key"].as_str().unwrap(),
        ),
        (
            "session token",
            credentials["session_token"].as_str().unwrap(),
        ),
        ("catalog token", STATIC_CATALOG_TOKEN),
    ];
    // Let the log reader thread catch up with the last lines.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let logs = w.broker.logs();
    assert!(
        logs.contains("issued"),
        "the log was captured at debug level:\n{logs}"
    );
    assert!(
        logs.contains("DEBUG"),
        "debug logging is on, so the check covers it:\n{logs}"
    );
    for (name, secret) in secrets {
        assert!(!logs.contains(secret), "the {name} appears in the logs");
    }
    // The signing key never leaves its file either.
    let key = std::fs::read_to_string(w.broker.dir.path().join("signing-key.pem")).unwrap();
    let key_body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(!logs.contains(&key_body));
    let jwks = w.broker.get("/.well-known/jwks.json").await.text;
    assert!(
        !jwks.contains("\"d\""),
        "the JWKS publishes no private component"
    );
}

#[tokio::test]
async fn a_locked_audit_database_makes_the_broker_unready_and_fails_closed() {
    let backstage = BackstageDouble::start().await;
    let sts = StsRecorder::start(StsBehaviour::Outage).await;
    let mut options = BrokerOptions::new(&backstage, &sts.url);
    options
        .env
        .push(("STACKPASS_AUDIT__BUSY_TIMEOUT".into(), "300ms".into()));
    let broker = Broker::start(options).await;
    assert_eq!(broker.get("/readyz").await.status, 200);

    // Another process holds the write lock, as a stuck writer or a backup would.
    let db = sqlx::sqlite::SqliteConnectOptions::new().filename(broker.audit_path());
    let mut holder = sqlx::ConnectOptions::connect(&db).await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut holder)
        .await
        .unwrap();

    broker.get("/readyz").await.assert_problem(503, "not-ready");
    let token = backstage.user_token("user:default/jane");
    let response = broker
        .request_credentials(Some(&token), credential_request("pulumi:acme/payments/dev"))
        .await;
    response.assert_problem(503, "audit-unavailable");
    assert!(sts.calls().is_empty());

    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    assert_eq!(
        broker.get("/readyz").await.status,
        200,
        "ready again once the lock is released"
    );
}

#[tokio::test]
async fn a_broker_whose_audit_store_cannot_commit_is_not_ready() {
    let w = World::with_moto().await;
    assert_eq!(w.broker.get("/readyz").await.status, 200);
    break_audit_store(&w.broker, "1").await;
    let token = w.backstage.user_token("user:default/jane");
    w.broker
        .request_credentials(Some(&token), credential_request("pulumi:acme/payments/dev"))
        .await
        .assert_problem(503, "audit-unavailable");
    // The load balancer must stop sending traffic here.
    w.broker
        .get("/readyz")
        .await
        .assert_problem(503, "not-ready");
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(w.broker.audit_path());
    let mut conn = sqlx::ConnectOptions::connect(&options).await.unwrap();
    sqlx::query("DROP TRIGGER refuse_writes")
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(w.broker.get("/readyz").await.status, 200);
    assert!(
        w.broker.audit_rows().await.is_empty(),
        "readiness probes leave no records in the chain"
    );
}
