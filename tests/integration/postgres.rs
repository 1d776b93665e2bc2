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

async fn issued_credential_ids(db: &PgDatabase) -> HashSet<String> {
    let mut conn =
        sqlx::ConnectOptions::connect(&db.url.parse::<sqlx::postgres::PgConnectOptions>().unwrap())
            .await
            .unwrap();
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT credential_id FROM audit_records WHERE event = 'issuance_outcome' AND outcome = 'issued'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    ids.into_iter().collect()
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
        issued_credential_ids(&db).await,
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
    let sts = StsRecorder::start(StsBehaviour::Succeed).await;
    let broker = pg_broker(&backstage, &sts, &db).await;
    let received = burst_then_kill(&backstage, &broker, 120, 40).await;
    assert!(
        received.len() >= 20 && received.len() < 120,
        "killed mid-burst after {} issuances",
        received.len()
    );
    let recorded = issued_credential_ids(&db).await;
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
