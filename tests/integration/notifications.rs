//! Notifications delivered from the audit log: a break-glass announcement
//! survives a SIGKILL between its commit and its delivery (a restarted broker,
//! or a live replica on PostgreSQL, delivers it once the dead one's claim
//! lapses), two brokers on one PostgreSQL deliver each message once, a receiver that was down gets its
//! messages when it is back, a message that cannot be delivered is given up
//! visibly (audited), and what people typed reaches Slack inert.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::*;

/// A broker with the prod rule, announcing to `webhook` with short timings.
fn options(
    backstage: &BackstageDouble,
    sts: &StsRecorder,
    webhook: &WebhookListener,
    audit_url: Option<String>,
) -> BrokerOptions {
    let mut options = BrokerOptions::new(backstage, &sts.url);
    // The prod rule, allowing break-glass too.
    options.extra_config =
        format!("{PROD_APPROVAL_RULE}break_glass = {{ max_duration = \"15m\" }}\n");
    options.audit_url = audit_url;
    for (key, value) in [
        ("STACKPASS_NOTIFICATIONS__WEBHOOK_URL", webhook.url.as_str()),
        ("STACKPASS_NOTIFICATIONS__TIMEOUT", "1s"),
        ("STACKPASS_NOTIFICATIONS__LEASE", "2s"),
        ("STACKPASS_NOTIFICATIONS__POLL_INTERVAL", "200ms"),
        ("STACKPASS_NOTIFICATIONS__MAX_RETRY_INTERVAL", "1s"),
    ] {
        options.env.push((key.into(), value.into()));
    }
    options
}

async fn break_glass(broker: &Broker, backstage: &BackstageDouble, reason: &str) -> TestResponse {
    let response = broker
        .request_credentials(
            Some(&backstage.user_token("user:default/jane")),
            json!({ "stack": "pulumi:acme/payments/prod", "provider": "aws", "break_glass": { "reason": reason } }),
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text);
    response
}

/// The audit record of the break-glass decision with this reason.
fn break_glass_record<'a>(rows: &'a [Value], reason: &str) -> &'a Value {
    rows.iter()
        .find(|r| {
            r["event"] == "decision"
                && r["outcome"] == "break_glass"
                && r["detail"].as_str().is_some_and(|d| d.contains(reason))
        })
        .expect("the break-glass decision is audited")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_break_glass_announcement_survives_a_crash_before_delivery() {
    let backstage = BackstageDouble::start().await;
    let sts = StsRecorder::start(StsBehaviour::Succeed).await;
    let webhook = WebhookListener::start().await;
    webhook.set(Receiver::Hang);
    let mut first = Broker::start(options(&backstage, &sts, &webhook, None)).await;

    break_glass(&first, &backstage, "prod is down, INC-9").await;
    // The broker has committed the issuance and is posting the announcement;
    // the receiver holds the post. Crash now.
    webhook.wait_for_attempts(1, Duration::from_secs(10)).await;
    first.kill();
    assert!(webhook.messages().is_empty());
    let rows = first.audit_rows().await;
    let record = break_glass_record(&rows, "prod is down, INC-9");

    // The receiver is fine again; a new broker on the same audit database
    // delivers the message once the dead broker's claim has lapsed.
    webhook.set(Receiver::Accept);
    let second = Broker::start(options(&backstage, &sts, &webhook, Some(first.audit_url()))).await;
    let message = webhook
        .wait_for_within("BREAK-GLASS", Duration::from_secs(15))
        .await;
    assert!(message["text"]
        .as_str()
        .unwrap()
        .contains("prod is down, INC-9"));
    assert_eq!(message["stackpass"]["event"], "break_glass");
    assert_eq!(message["stackpass"]["id"], record["record_id"]);
    assert_eq!(message["idempotency_key_header"], record["record_id"]);
    assert_eq!(message["stackpass"]["audit_seq"], record["seq"]);
    assert!(second.logged("notification delivered").await);
    assert!(!second.logs().contains(&webhook.url) && !first.logs().contains(&webhook.url));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_replica_takes_over_the_claim_of_one_that_died_on_postgres() {
    let db = PgDatabase::create().await;
    let backstage = BackstageDouble::start().await;
    let sts = StsRecorder::start(StsBehaviour::Succeed).await;
    // The replica that dies posts to a receiver that holds every post; the
    // one that lives to a working one, so who delivered is plain.
    let stuck = WebhookListener::start().await;
    stuck.set(Receiver::Hang);
    let working = WebhookListener::start().await;
    let mut dying = Broker::start(options(&backstage, &sts, &stuck, Some(db.url.clone()))).await;
    let mut survivor_options = options(&backstage, &sts, &working, Some(db.url.clone()));
    // It polls slowly, so the dying replica (woken by its own commit) claims
    // the message first.
    survivor_options
        .env
        .push(("STACKPASS_NOTIFICATIONS__POLL_INTERVAL".into(), "3s".into()));
    let survivor = Broker::start(survivor_options).await;

    break_glass(&dying, &backstage, "replica died, INC-11").await;
    stuck.wait_for_attempts(1, Duration::from_secs(10)).await;
    dying.kill();

    let message = working
        .wait_for_within("replica died, INC-11", Duration::from_secs(15))
        .await;
    let mut conn =
        sqlx::ConnectOptions::connect(&db.url.parse::<sqlx::postgres::PgConnectOptions>().unwrap())
            .await
            .unwrap();
    let (record_id, attempts, state): (String, i64, String) =
        sqlx::query_as("SELECT record_id, attempts, state FROM notification_deliveries")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(message["stackpass"]["id"], record_id.as_str());
    assert_eq!((attempts, state.as_str()), (2, "delivered"));
    assert_eq!(stuck.attempts(), 1);
    assert!(survivor.logged("notification delivered").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_was_down_gets_every_message_when_it_is_back() {
    let backstage = BackstageDouble::start().await;
    let sts = StsRecorder::start(StsBehaviour::Succeed).await;
    let webhook = WebhookListener::start().await;
    webhook.set(Receiver::Fail(503));
    let broker = Broker::start(options(&backstage, &sts, &webhook, None)).await;

    for n in 0..3 {
        break_glass(&broker, &backstage, &format!("outage {n}")).await;
    }
    // Down for a while: several attempts fail, none is recorded.
    webhook.wait_for_attempts(4, Duration::from_secs(15)).await;
    assert!(webhook.messages().is_empty());
    assert!(broker
        .logs()
        .contains("notification not delivered; will retry"));

    webhook.set(Receiver::Accept);
    for n in 0..3 {
        webhook
            .wait_for_within(&format!("outage {n}"), Duration::from_secs(15))
            .await;
    }
    let rows = broker.audit_rows().await;
    let ids: Vec<Value> = webhook
        .messages()
        .iter()
        .map(|m| m["stackpass"]["id"].clone())
        .collect();
    for n in 0..3 {
        let record = break_glass_record(&rows, &format!("outage {n}"));
        assert!(ids.contains(&record["record_id"]));
    }
    assert!(!broker.logs().contains(&webhook.url));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undeliverable_message_is_given_up_and_audited() {
    let backstage = BackstageDouble::start().await;
    let sts = StsRecorder::start(StsBehaviour::Succeed).await;
    let webhook = WebhookListener::start().await;
    webhook.set(Receiver::Fail(500));
    let mut options = options(&backstage, &sts, &webhook, None);
    options
        .env
        .push(("STACKPASS_NOTIFICATIONS__GIVE_UP_AFTER".into(), "3s".into()));
    let broker = Broker::start(options).await;
    break_glass(&broker, &backstage, "nobody listens").await;

    let deadline = Instant::now() + Duration::from_secs(20);
    let given_up = loop {
        let rows = broker.audit_rows().await;
        if let Some(row) = rows
            .iter()
            .find(|r| r["event"] == "notification" && r["outcome"] == "given_up")
        {
            break (row.clone(), rows);
        }
        assert!(Instant::now() < deadline, "no notification/given_up record");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (row, rows) = given_up;
    let record = break_glass_record(&rows, "nobody listens");
    let detail: Value = serde_json::from_str(row["detail"].as_str().unwrap()).unwrap();
    assert_eq!(detail["record_id"], record["record_id"]);
    assert_eq!(detail["event"], "decision");
    assert!(detail["error"].as_str().unwrap().contains("HTTP 500"));
    assert!(webhook.attempts() >= 2, "it was retried before giving up");
    assert!(broker.logged("notification given up").await);
    assert!(!broker.logs().contains(&webhook.url));
    // Given up once, and then left alone.
    let attempts = webhook.attempts();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(webhook.attempts(), attempts);
    let given_up_records = broker
        .audit_rows()
        .await
        .iter()
        .filter(|r| r["event"] == "notification")
        .count();
    assert_eq!(given_up_records, 1);
    // The chain still verifies with the new record in it.
    let verified = verify_database(&broker.audit_url(), None);
    assert!(verified.status.success(), "{}", stderr(&verified));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_brokers_on_one_postgres_deliver_each_message_once() {
    let db = PgDatabase::create().await;
    let backstage = BackstageDouble::start().await;
    let sts = StsRecorder::start(StsBehaviour::Succeed).await;
    let webhook = WebhookListener::start().await;
    let first = Broker::start(options(&backstage, &sts, &webhook, Some(db.url.clone()))).await;
    let second = Broker::start(options(&backstage, &sts, &webhook, Some(db.url.clone()))).await;

    let mut reasons = Vec::new();
    for n in 0..6 {
        let broker = if n % 2 == 0 { &first } else { &second };
        let reason = format!("replica test {n}");
        break_glass(broker, &backstage, &reason).await;
        reasons.push(reason);
    }
    for reason in &reasons {
        webhook.wait_for(reason).await;
    }
    // Past several polls and a lease: nothing arrives twice.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for message in webhook.messages() {
        *seen
            .entry(message["stackpass"]["id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(seen.len(), 6, "{seen:?}");
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");

    let mut conn =
        sqlx::ConnectOptions::connect(&db.url.parse::<sqlx::postgres::PgConnectOptions>().unwrap())
            .await
            .unwrap();
    let states: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, attempts FROM notification_deliveries ORDER BY seq")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(states.len(), 6);
    assert!(
        states.iter().all(|(s, a)| s == "delivered" && *a == 1),
        "{states:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_people_type_reaches_slack_inert() {
    let backstage = BackstageDouble::start().await;
    let sts = StsRecorder::start(StsBehaviour::Succeed).await;
    let webhook = WebhookListener::start().await;
    let broker = Broker::start(options(&backstage, &sts, &webhook, None)).await;

    let reason = "INC-7 <!channel> <@U024BE7LH> see <https://evil.example|runbook> \u{202E}gpj.exe\u{202C} @here";
    break_glass(&broker, &backstage, reason).await;
    let message = webhook.wait_for("BREAK-GLASS").await;
    let text = message["text"].as_str().unwrap();
    assert!(
        text.ends_with("Reason: INC-7 &lt;!channel&gt; &lt;@U024BE7LH&gt; see &lt;https://evil.example|runbook&gt; gpj.exe @\u{2060}here"),
        "{text}"
    );
    assert!(!text.contains("<!channel>") && !text.contains('\u{202E}'));
    assert_eq!(
        message["stackpass"]["reason"],
        "INC-7 <!channel> <@U024BE7LH> see <https://evil.example|runbook> gpj.exe @here"
    );
}
