//! Callers who go away mid-issuance: every credential a cloud minted has an
//! outcome record that says what the caller got, and no intent stays pending.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

/// Fires `n` credential requests that each give up after `patience`.
async fn impatient_callers(broker: &Broker, token: &str, n: usize, patience: Duration) {
    let client = reqwest::Client::builder()
        .timeout(patience)
        .build()
        .unwrap();
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..n {
        let request = client
            .post(format!("{}/v1/credentials", broker.url))
            .bearer_auth(token)
            .json(&credential_request("pulumi:acme/payments/dev"));
        callers.spawn(async move { request.send().await });
    }
    while let Some(sent) = callers.join_next().await {
        let error = sent
            .unwrap()
            .expect_err("the caller hangs up before the answer");
        assert!(error.is_timeout(), "{error}");
    }
}

/// Waits until every intent in the audit log has its outcome, and returns the rows.
async fn settled_audit(broker: &Broker, intents: usize) -> Vec<Value> {
    for _ in 0..100 {
        let rows = broker.audit_rows().await;
        let count = |event: &str| rows.iter().filter(|r| r["event"] == event).count();
        if count("issuance_intent") == intents && count("issuance_outcome") == intents {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("intents without outcomes: {:#?}", broker.audit_rows().await);
}

fn rows_for<'a>(rows: &'a [Value], event: &str) -> Vec<&'a Value> {
    rows.iter().filter(|r| r["event"] == event).collect()
}

#[tokio::test]
async fn credentials_minted_for_callers_who_hung_up_are_recorded_and_withheld() {
    let w = World::with_sts(StsBehaviour::Slow(Duration::from_secs(2))).await;
    let token = w.backstage.user_token("user:default/jane");
    impatient_callers(&w.broker, &token, 20, Duration::from_millis(500)).await;

    let rows = settled_audit(&w.broker, 20).await;
    let minted: HashSet<String> = w.sts.minted().into_iter().collect();
    assert_eq!(minted.len(), 20, "STS was called once per caller");
    let issued: HashMap<&str, &Value> = rows_for(&rows, "issuance_outcome")
        .into_iter()
        .map(|r| (r["credential_id"].as_str().unwrap_or_default(), r))
        .collect();
    let withheld: HashSet<&str> = rows_for(&rows, "issuance_withheld")
        .iter()
        .map(|r| r["credential_id"].as_str().unwrap())
        .collect();
    for key in &minted {
        let outcome = issued
            .get(key.as_str())
            .unwrap_or_else(|| panic!("{key} was minted but has no outcome record"));
        assert_eq!(outcome["outcome"], "issued");
        assert!(
            withheld.contains(key.as_str()),
            "{key} never reached its caller, and the log must say so"
        );
    }
    for row in rows_for(&rows, "issuance_withheld") {
        assert_eq!(row["outcome"], "withheld");
        assert_eq!(row["requester"], "user:default/jane");
    }
}

#[tokio::test]
async fn callers_who_hang_up_while_the_audit_log_is_slow_get_nothing_minted() {
    let w = World::with_sts(StsBehaviour::Succeed).await;
    let token = w.backstage.user_token("user:default/jane");
    // Another writer holds the audit database's write lock for 2 s: the intents
    // wait behind it while their callers give up after 0.5 s.
    let lock = sqlx::sqlite::SqliteConnectOptions::new().filename(w.broker.audit_path());
    let mut holder = sqlx::ConnectOptions::connect(&lock).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut holder)
        .await
        .unwrap();
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        sqlx::query("COMMIT").execute(&mut holder).await.unwrap();
    });
    impatient_callers(&w.broker, &token, 5, Duration::from_millis(500)).await;
    release.await.unwrap();

    let rows = settled_audit(&w.broker, 5).await;
    assert!(
        w.sts.calls().is_empty(),
        "nothing is minted for a caller who left"
    );
    for outcome in rows_for(&rows, "issuance_outcome") {
        assert_eq!(outcome["outcome"], "abandoned", "{outcome}");
        assert!(outcome["credential_id"].is_null());
    }
}

#[tokio::test]
async fn a_lost_sts_answer_is_not_retried_into_a_second_credential() {
    let backstage = BackstageDouble::start().await;
    let sts = StsRecorder::start(StsBehaviour::Slow(Duration::from_secs(3))).await;
    let mut options = BrokerOptions::new(&backstage, &sts.url);
    // Three attempts allowed, and a call that outlasts its timeout: the
    // answer is lost, and STS may have minted.
    options.env = vec![
        ("STACKPASS_PROVIDERS__AWS__MAX_ATTEMPTS".into(), "3".into()),
        ("STACKPASS_PROVIDERS__AWS__TIMEOUT".into(), "2s".into()),
    ];
    let broker = Broker::start(options).await;
    let token = backstage.user_token("user:default/jane");
    let response = broker
        .request_credentials(Some(&token), credential_request("pulumi:acme/payments/dev"))
        .await;
    response.assert_problem(503, "cloud-unavailable");
    assert_eq!(sts.calls().len(), 1, "one intent, one call to STS");
    let rows = broker.audit_rows().await;
    let outcome = rows_for(&rows, "issuance_outcome")[0];
    assert_eq!(outcome["outcome"], "failed");
}
