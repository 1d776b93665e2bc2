//! The PostgreSQL audit store against a real PostgreSQL server: several broker
//! instances sharing one chain, the database going away mid-run, and a crash.
//! Each test gets its own database (see `PgDatabase`).

use std::collections::HashSet;

use crate::support::*;

async fn pg_broker(backstage: &BackstageDouble, sts: &StsRecorder, db: &PgDatabase) -> Broker {
    let mut options = BrokerOptions::new(backstage, &sts.url);
    options.audit_url = Some(db.url.clone());
    options
        .env
        .push(("STACKPASS_AUDIT__BUSY_TIMEOUT".into(), "1s".into()));
    Broker::start(options).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_brokers_on_one_database_keep_one_chain() {
    let db = PgDatabase::create().await;
    let backstage = BackstageDouble::start().await;
    let sts = StsRecorder::start(StsBehaviour::Succeed).await;
    let first = pg_broker(&backstage, &sts, &db).await;
    let second = pg_broker(&backstage, &sts, &db).await;
    let token = backstage.user_token("user:default/jane");

    let client = reqwest::Client::new();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..60 {
        let url = if i % 2 == 0 {
            first.url.clone()
        } else {
            second.url.clone()
        };
        let (client, token) = (client.clone(), token.clone());
        tasks.spawn(async move {
            let response = client
                .post(format!("{url}/v1/credentials"))
                .bearer_auth(token)
                .json(&credential_request("pulumi:acme/payments/dev"))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            let body: serde_json::Value = response.json().await.unwrap();
            body["credentials"]["access_key_id"]
                .as_str()
                .unwrap()
                .to_owned()
        });
    }
    let mut received = HashSet::new();
    while let Some(key) = tasks.join_next().await {
        received.insert(key.unwrap());
    }
    assert_eq!(received.len(), 60);

    let output = verify_database(&db.url, None);
    assert!(output.status.success(), "{}", stderr(&output));
    // 60 issuances of three records each, one chain with no gaps or forks.
    assert!(
        stdout(&output).starts_with("audit chain intact: 180 record(s), seq 1..180"),
        "{}",
        stdout(&output)
    );
    assert_eq!(
        db.issued_credential_ids().await,
        received,
        "one issued record per credential handed out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_fails_closed_and_the_chain_verifies_after_it() {
    let db = PgDatabase::create().await;
    let backstage = BackstageDouble::start().await;
    let sts = StsRecorder::start(StsBehaviour::Succeed).await;
    let broker = pg_broker(&backstage, &sts, &db).await;
    let token = backstage.user_token("user:default/jane");
    let request = credential_request("pulumi:acme/payments/dev");
    assert_eq!(
        broker
            .request_credentials(Some(&token), request.clone())
            .await
            .status,
        200
    );

    db.go_down().await;
    let response = broker
        .request_credentials(Some(&token), request.clone())
        .await;
    response.assert_problem(503, "audit-unavailable");
    broker.get("/readyz").await.assert_problem(503, "not-ready");
    let calls_during_outage = sts.calls().len();
    assert_eq!(
        calls_during_outage, 1,
        "no cloud call without a committed intent"
    );

    db.come_back().await;
    let mut recovered = None;
    for _ in 0..50 {
        let response = broker
            .request_credentials(Some(&token), request.clone())
            .await;
        if response.status == 200 {
            recovered = Some(response);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        recovered.is_some(),
        "the broker recovers once the database is back"
    );
    assert_eq!(broker.get("/readyz").await.status, 200);

    let output = verify_database(&db.url, None);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).starts_with("audit chain intact: 6 record(s)"),
        "{}",
        stdout(&output)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_credential_received_before_a_crash_has_a_committed_record() {
    let db = PgDatabase::create().await;
    let backstage = BackstageDouble::start().await;
    let sts = StsRecorder::start(BURST_STS).await;
    let broker = pg_broker(&backstage, &sts, &db).await;
    let received = burst_then_kill(&backstage, &broker, 120, 40).await;
    assert!(
        received.len() >= 20 && received.len() < 120,
        "killed mid-burst after {} issuances",
        received.len()
    );
    let recorded = db.issued_credential_ids().await;
    for key in &received {
        assert!(
            recorded.contains(key),
            "credential {key} reached the client without a committed record"
        );
    }
    let output = verify_database(&db.url, None);
    assert!(output.status.success(), "{}", stderr(&output));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_and_tampering_on_postgres() {
    let db = PgDatabase::create().await;
    let backstage = BackstageDouble::start().await;
    let sts = StsRecorder::start(StsBehaviour::Succeed).await;
    let broker = pg_broker(&backstage, &sts, &db).await;
    assert!(
        broker.logs().contains("could rewrite history"),
        "a broker that owns its tables is warned: {}",
        broker.logs()
    );
    let token = backstage.user_token("user:default/jane");
    for _ in 0..3 {
        assert_eq!(
            broker
                .request_credentials(Some(&token), credential_request("pulumi:acme/payments/dev"))
                .await
                .status,
            200
        );
    }
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let output = stackpass(&["audit", "prune", "--database", &db.url, "--before", &now])
        .output()
        .unwrap();
    assert!(
        stdout(&output).starts_with("pruned 9 record(s)"),
        "{}{}",
        stdout(&output),
        stderr(&output)
    );
    assert!(verify_database(&db.url, None).status.success());
    assert_eq!(
        broker
            .request_credentials(Some(&token), credential_request("pulumi:acme/payments/dev"))
            .await
            .status,
        200
    );
    let output = verify_database(&db.url, None);
    assert!(
        stdout(&output).starts_with("audit chain intact: 4 record(s), seq 10..13"),
        "{}",
        stdout(&output)
    );

    // The append-only trigger refuses edits, even from the database owner...
    let mut conn =
        sqlx::ConnectOptions::connect(&db.url.parse::<sqlx::postgres::PgConnectOptions>().unwrap())
            .await
            .unwrap();
    let refused = sqlx::query("UPDATE audit_records SET outcome = 'denied' WHERE seq = 11")
        .execute(&mut conn)
        .await;
    assert!(refused.unwrap_err().to_string().contains("append-only"));
    // ...and an edit made around it is caught by verify.
    sqlx::query("ALTER TABLE audit_records DISABLE TRIGGER audit_records_append_only")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE audit_records SET role = 'arn:aws:iam::111111111111:role/admin' WHERE seq = 11",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let output = verify_database(&db.url, None);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("record 11 ("),
        "{}",
        stderr(&output)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_brokers_on_one_database_decide_and_use_an_approval_once() {
    let db = PgDatabase::create().await;
    let mut entities = default_entities();
    entities[0] = group("team-payments", &["jane", "alex", "kim"]);
    entities.push(user("kim", &["team-payments"]));
    let backstage = BackstageDouble::start_with(entities).await;
    let sts = StsRecorder::start(StsBehaviour::Succeed).await;
    let policy = tempfile::tempdir().unwrap();
    std::fs::write(
        policy.path().join("prod.toml"),
        r#"
[[rules]]
name = "owners-deploy-prod"
provider = "aws"
role = "arn:aws:iam::{tags.aws-account}:role/{component}-prod-deployer"
approval = { count = 1, approvers = ["group:default/team-payments"] }
[rules.tags]
environment = ["prod"]
aws-account = ["*"]
"#,
    )
    .unwrap();
    let start = || {
        let mut options = BrokerOptions::new(&backstage, &sts.url);
        options.audit_url = Some(db.url.clone());
        options.env.push((
            "STACKPASS_POLICY__FILES".into(),
            format!("[\"{}\"]", policy.path().display()),
        ));
        Broker::start(options)
    };
    let (first, second) = (start().await, start().await);
    let client = reqwest::Client::new();
    let post = |url: String, who: &str, body: Option<serde_json::Value>| {
        let mut request = client.post(url).bearer_auth(backstage.user_token(who));
        if let Some(body) = body {
            request = request.json(&body);
        }
        async move { TestResponse::from_response(request.send().await.unwrap()).await }
    };
    let prod = serde_json::json!({ "stack": "pulumi:acme/payments/prod", "provider": "aws" });

    let created = post(
        format!("{}/v1/access-requests", first.url),
        "user:default/jane",
        Some(prod.clone()),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.body["access_request"]["id"].as_str().unwrap();
    // Two approvers, one on each replica, at once: one wins.
    let (a, b) = tokio::join!(
        post(
            format!("{}/v1/access-requests/{id}/approve", first.url),
            "user:default/alex",
            None
        ),
        post(
            format!("{}/v1/access-requests/{id}/approve", second.url),
            "user:default/kim",
            None
        )
    );
    let mut statuses = [a.status, b.status];
    statuses.sort();
    assert_eq!(statuses, [200, 409], "{} / {}", a.text, b.text);

    // Ten issuances at once across both replicas: the approval serves one.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..10 {
        let url = if i % 2 == 0 { &first.url } else { &second.url };
        tasks.spawn(post(
            format!("{url}/v1/credentials"),
            "user:default/jane",
            Some(prod.clone()),
        ));
    }
    let mut statuses = Vec::new();
    while let Some(response) = tasks.join_next().await {
        statuses.push(response.unwrap().status);
    }
    statuses.sort();
    assert_eq!(statuses, [200, 403, 403, 403, 403, 403, 403, 403, 403, 403]);
    assert_eq!(sts.calls().len(), 1);
    let output = verify_database(&db.url, None);
    assert!(output.status.success(), "{}", stderr(&output));
}

async fn connect(url: &str) -> sqlx::PgConnection {
    sqlx::ConnectOptions::connect(&url.parse::<sqlx::postgres::PgConnectOptions>().unwrap())
        .await
        .unwrap()
}

async fn refused(conn: &mut sqlx::PgConnection, sql: &str) -> String {
    match sqlx::query(sql).execute(&mut *conn).await {
        Ok(done) => panic!("{sql} was allowed ({} rows)", done.rows_affected()),
        Err(e) => e.to_string(),
    }
}

async fn issue(broker: &Broker, backstage: &BackstageDouble) -> TestResponse {
    broker
        .request_credentials(
            Some(&backstage.user_token("user:default/jane")),
            credential_request("pulumi:acme/payments/dev"),
        )
        .await
}

/// Issue 13, finding 3: the broker serves as a runtime role that can append
/// and read but cannot rewrite history in any way; TRUNCATE is refused even to
/// the owner; only the owner prunes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_role_cannot_rewrite_history() {
    let db = PgDatabase::with_roles().await;
    let runtime_url = db.runtime_url.clone().unwrap();
    let backstage = BackstageDouble::start().await;
    let sts = StsRecorder::start(StsBehaviour::Succeed).await;
    let mut options = BrokerOptions::new(&backstage, &sts.url);
    options.audit_url = Some(runtime_url.clone());
    let broker = Broker::start(options).await;
    for _ in 0..2 {
        assert_eq!(issue(&broker, &backstage).await.status, 200);
    }
    assert_eq!(broker.get("/readyz").await.status, 200);
    assert!(
        !broker.logs().contains("could rewrite history"),
        "{}",
        broker.logs()
    );

    let mut runtime = connect(&runtime_url).await;
    for sql in [
        "UPDATE audit_records SET outcome = 'denied' WHERE seq = 3",
        "DELETE FROM audit_records WHERE seq = 1",
        "TRUNCATE audit_records",
        "TRUNCATE audit_chain",
        "UPDATE audit_chain SET start_seq = 4 WHERE id = 1",
        "DELETE FROM audit_chain",
        "ALTER TABLE audit_records DISABLE TRIGGER audit_records_append_only",
        "ALTER TABLE audit_records DISABLE TRIGGER ALL",
        "DROP TRIGGER audit_records_no_truncate ON audit_records",
        "CREATE TABLE audit_records_copy (seq BIGINT)",
    ] {
        let error = refused(&mut runtime, sql).await;
        assert!(
            error.contains("permission denied") || error.contains("must be owner"),
            "{sql}: {error}"
        );
    }
    // The pruning flag is a setting anyone may set; it gives the runtime role nothing.
    sqlx::query("BEGIN").execute(&mut runtime).await.unwrap();
    sqlx::query("SET LOCAL stackpass.pruning = 'on'")
        .execute(&mut runtime)
        .await
        .unwrap();
    let error = refused(&mut runtime, "DELETE FROM audit_records WHERE seq = 1").await;
    assert!(error.contains("permission denied"), "{error}");
    sqlx::query("ROLLBACK").execute(&mut runtime).await.unwrap();
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let output = stackpass(&[
        "audit",
        "prune",
        "--database",
        &runtime_url,
        "--before",
        &now,
    ])
    .output()
    .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("permission denied") && stderr(&output).contains("owner"),
        "{}",
        stderr(&output)
    );

    // The owner may not TRUNCATE or delete outside a prune either.
    let mut owner = connect(&db.url).await;
    for sql in ["TRUNCATE audit_records", "TRUNCATE audit_chain"] {
        let error = refused(&mut owner, sql).await;
        assert!(error.contains("TRUNCATE of audit_"), "{sql}: {error}");
    }
    let error = refused(&mut owner, "DELETE FROM audit_records WHERE seq = 1").await;
    assert!(error.contains("append-only"), "{error}");
    let error = refused(
        &mut owner,
        "UPDATE audit_chain SET start_seq = 4 WHERE id = 1",
    )
    .await;
    assert!(error.contains("moves only forward"), "{error}");

    // The owner prunes; the chain verifies, read through the runtime role.
    let output = stackpass(&["audit", "prune", "--database", &db.url, "--before", &now])
        .output()
        .unwrap();
    assert!(
        stdout(&output).starts_with("pruned 6 record(s)"),
        "{}{}",
        stdout(&output),
        stderr(&output)
    );
    assert_eq!(issue(&broker, &backstage).await.status, 200);
    let output = verify_database(&runtime_url, None);
    assert!(
        stdout(&output).starts_with("audit chain intact: 4 record(s), seq 7..10"),
        "{}{}",
        stdout(&output),
        stderr(&output)
    );
}

/// Issue 13, finding 3: someone who can write the database deletes records
/// past a checkpoint and moves the chain's start, as a prune would; without
/// the chained audit_pruned record a prune writes, verification fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fake_prune_is_caught_on_postgres() {
    let db = PgDatabase::with_roles().await;
    let runtime_url = db.runtime_url.clone().unwrap();
    let backstage = BackstageDouble::start().await;
    let sts = StsRecorder::start(StsBehaviour::Succeed).await;
    let mut options = BrokerOptions::new(&backstage, &sts.url);
    options.audit_url = Some(runtime_url.clone());
    let broker = Broker::start(options).await;
    assert_eq!(issue(&broker, &backstage).await.status, 200);
    let output = stackpass(&["audit", "checkpoint", "--database", &runtime_url])
        .output()
        .unwrap();
    let checkpoint = stdout(&output).trim().to_owned();
    assert!(
        checkpoint.starts_with("stackpass-checkpoint-v1:3:"),
        "{checkpoint}"
    );
    for _ in 0..2 {
        assert_eq!(issue(&broker, &backstage).await.status, 200);
    }

    let mut owner = connect(&db.url).await;
    let hash6: String = sqlx::query_scalar("SELECT hash FROM audit_records WHERE seq = 6")
        .fetch_one(&mut owner)
        .await
        .unwrap();
    for sql in [
        "ALTER TABLE audit_records DISABLE TRIGGER audit_records_append_only",
        "ALTER TABLE audit_chain DISABLE TRIGGER audit_chain_forward_only",
        "DELETE FROM audit_records WHERE seq <= 6",
        &format!("UPDATE audit_chain SET start_seq = 7, start_prev_hash = '{hash6}' WHERE id = 1"),
        "ALTER TABLE audit_records ENABLE TRIGGER audit_records_append_only",
        "ALTER TABLE audit_chain ENABLE TRIGGER audit_chain_forward_only",
    ] {
        sqlx::query(sql).execute(&mut owner).await.unwrap();
    }
    let output = verify_database(&runtime_url, Some(&checkpoint));
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
    assert!(
        stderr(&output).contains("the chain starts at record 7, but no audit_pruned record"),
        "{}",
        stderr(&output)
    );
}

/// Issue 13, finding 3: a session that holds the chain lock and never lets go
/// turns issuance into a prompt 503 audit-unavailable (lock_timeout), and the
/// broker recovers as soon as the lock is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_chain_lock_holder_fails_issuance_fast_and_then_recovers() {
    let db = PgDatabase::with_roles().await;
    let backstage = BackstageDouble::start().await;
    let sts = StsRecorder::start(StsBehaviour::Succeed).await;
    let mut options = BrokerOptions::new(&backstage, &sts.url);
    options.audit_url = db.runtime_url.clone();
    options
        .env
        .push(("STACKPASS_AUDIT__BUSY_TIMEOUT".into(), "1s".into()));
    let broker = Broker::start(options).await;
    assert_eq!(issue(&broker, &backstage).await.status, 200);

    let mut holder = connect(&db.url).await;
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query("SELECT 1 FROM audit_chain WHERE id = 1 FOR UPDATE")
        .execute(&mut holder)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let response = issue(&broker, &backstage).await;
    let waited = started.elapsed();
    response.assert_problem(503, "audit-unavailable");
    assert!(
        waited < std::time::Duration::from_secs(4),
        "failed after {waited:?}"
    );
    assert_eq!(
        sts.calls().len(),
        1,
        "no cloud call without a committed intent"
    );

    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    assert_eq!(issue(&broker, &backstage).await.status, 200);
    assert!(verify_database(&db.url, None).status.success());
}

fn append_concurrently(
    store: &std::sync::Arc<stackpass::audit::SqlAuditStore>,
    actors: Vec<String>,
) -> tokio::task::JoinSet<(String, Result<(), stackpass::audit::AuditError>)> {
    use stackpass::audit::{AuditEvent, AuditRecord, AuditStore, Outcome};
    let mut tasks = tokio::task::JoinSet::new();
    for (i, actor) in actors.into_iter().enumerate() {
        let store = store.clone();
        tasks.spawn(async move {
            let mut record =
                AuditRecord::new(AuditEvent::Decision, Outcome::Denied, &format!("q{i}"));
            record.requester = Some("user:default/jane".into());
            record.actor = Some(actor.clone());
            (actor, store.append(vec![record]).await)
        });
    }
    tasks
}

/// Issue 13, finding 10: a NUL in one request's record (PostgreSQL TEXT cannot
/// hold it) used to fail every request in its group-commit batch. It is now
/// replaced before sealing, the same on every backend, and the chain verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_in_one_record_fails_no_append_in_its_batch() {
    let db = PgDatabase::create().await;
    let store = std::sync::Arc::new(stackpass::audit::SqlAuditStore::new(
        stackpass::database::Database::open(&db.url, std::time::Duration::from_secs(5))
            .await
            .unwrap(),
    ));
    let actors: Vec<String> = (0..64)
        .map(|i| {
            if i % 8 == 3 {
                format!("agent:default/evil\0{i}")
            } else {
                format!("agent:default/a{i}")
            }
        })
        .collect();
    let mut tasks = append_concurrently(&store, actors);
    while let Some(done) = tasks.join_next().await {
        let (actor, result) = done.unwrap();
        assert!(result.is_ok(), "{actor:?}: {result:?}");
    }
    let mut conn = connect(&db.url).await;
    let replaced: Vec<String> = sqlx::query_scalar(
        "SELECT actor FROM audit_records WHERE detail LIKE '%nul_replaced_in%' ORDER BY seq",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(replaced.len(), 8);
    assert!(replaced
        .iter()
        .all(|a| a.starts_with("agent:default/evil\u{FFFD}")));
    let output = verify_database(&db.url, None);
    assert!(
        stdout(&output).starts_with("audit chain intact: 64 record(s)"),
        "{}{}",
        stdout(&output),
        stderr(&output)
    );
}

/// Issue 13, finding 10, beyond NUL: whatever else a database refuses in one
/// record (here a LATIN1 database and a Cyrillic subject) fails that append
/// alone; the others in its batch are committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_database_refuses_fails_only_its_own_append() {
    let db = PgDatabase::create_latin1().await;
    let store = std::sync::Arc::new(stackpass::audit::SqlAuditStore::new(
        stackpass::database::Database::open(&db.url, std::time::Duration::from_secs(5))
            .await
            .unwrap(),
    ));
    let actors: Vec<String> = (0..64)
        .map(|i| {
            if i % 16 == 5 {
                format!("agent:default/жук{i}")
            } else {
                format!("agent:default/a{i}")
            }
        })
        .collect();
    let mut tasks = append_concurrently(&store, actors);
    let (mut ok, mut refused) = (0, 0);
    while let Some(done) = tasks.join_next().await {
        match done.unwrap() {
            (actor, Ok(())) => {
                assert!(actor.is_ascii(), "{actor} cannot be stored in LATIN1");
                ok += 1;
            }
            (actor, Err(e)) => {
                assert!(!actor.is_ascii(), "{actor} failed: {e}");
                assert!(
                    matches!(e, stackpass::audit::AuditError::Unstorable(_)),
                    "{e:?}"
                );
                refused += 1;
            }
        }
    }
    assert_eq!((ok, refused), (60, 4));
    let output = verify_database(&db.url, None);
    assert!(
        stdout(&output).starts_with("audit chain intact: 60 record(s)"),
        "{}{}",
        stdout(&output),
        stderr(&output)
    );
}

/// An agent's quota is counted from the shared audit log, so it holds across
/// two brokers on one database: two issuances on the first, the third refused
/// on the second with 429 and Retry-After.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_quota_holds_across_two_brokers() {
    let db = PgDatabase::create().await;
    let backstage = BackstageDouble::start().await;
    let sts = StsRecorder::start(StsBehaviour::Succeed).await;
    let start = || {
        let mut options = BrokerOptions::new(&backstage, &sts.url);
        options.audit_url = Some(db.url.clone());
        options.extra_config = "[[policy.agents]]\nname = \"bots\"\nagents = [\"agent:*\"]\n\
             quota = { per_agent = 2, window = \"10m\" }\n"
            .into();
        Broker::start(options)
    };
    let (first, second) = (start().await, start().await);
    let mut claims = backstage.user_claims("user:default/jane");
    claims["act"] = serde_json::json!({ "sub": "agent:deploy-bot" });
    let token = sign_jwt(
        &backstage.user_header(),
        &claims,
        Signer::Es256(&backstage.key),
    );
    let body = credential_request("pulumi:acme/payments/dev");
    for _ in 0..2 {
        let issued = first.request_credentials(Some(&token), body.clone()).await;
        assert_eq!(issued.status, 200, "{}", issued.text);
    }
    let refused = second.request_credentials(Some(&token), body).await;
    refused.assert_problem(429, "quota-exceeded");
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((500..=601).contains(&retry), "{retry}");
}
