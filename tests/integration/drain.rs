//! Graceful drain, as Kubernetes stops a pod: two brokers on one PostgreSQL
//! database, started from one config file with one key set and one catalog
//! token (as the pods of `deploy/kubernetes` share one ConfigMap and the same
//! Secrets), behind a balancer that follows `/readyz` as a Service's
//! endpoints do. One broker gets SIGTERM under a load of issuances through
//! moto's STS: no request may fail, the broker must exit 0, and every
//! credential handed out must have its audit records.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::*;

/// `server.shutdown_delay` of both replicas.
const SHUTDOWN_DELAY: Duration = Duration::from_secs(1);
/// How often the balancer polls `/readyz`.
const POLL: Duration = Duration::from_millis(150);
/// Every STS call takes this long, longer than the delay: requests the
/// leaving broker took just before its readiness failed are still in flight
/// when it stops accepting, and must be finished, not cut.
const STS_LATENCY: Duration = Duration::from_secs(2);
const WORKERS: usize = 16;
/// Requests sent 5 ms apart as SIGTERM arrives.
const BURST: usize = 12;

struct Outcome {
    started: Instant,
    finished: Instant,
    status: u16,
    backend: Option<String>,
    body: String,
}

/// `text` with `from` replaced by `to`, which must be there.
fn replaced(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "the base config has no {from:?}");
    text.replacen(from, to, 1)
}

/// One config for every replica, in `dir` beside the shared key set, catalog
/// token and stacks file: the test fixture's usual broker config, with a key
/// set made beforehand (as `stackpass keys generate` makes the Secret's
/// content), the PostgreSQL runtime role, and the shutdown delay.
fn replica_config(
    backstage: &BackstageDouble,
    sts: &StsRecorder,
    db: &PgDatabase,
    dir: &Path,
) -> PathBuf {
    let keys = dir.join("keys");
    let output = stackpass(&["keys", "generate", "--dir", keys.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    std::fs::write(dir.join("stacks.toml"), STACKS_TOML).unwrap();
    std::fs::write(dir.join("catalog-token"), STATIC_CATALOG_TOKEN).unwrap();
    let config = BrokerOptions::new(backstage, &sts.url).config();
    let config = replaced(
        &config,
        "request_timeout = \"30s\"\n",
        &format!(
            "request_timeout = \"30s\"\nshutdown_delay = \"{}ms\"\n",
            SHUTDOWN_DELAY.as_millis()
        ),
    );
    let config = replaced(
        &config,
        "signing_key = \"signing-key.pem\"\ncreate_key_if_missing = true\n",
        "key_dir = \"keys\"\n",
    );
    let runtime_url = db.runtime_url.as_deref().expect("a runtime role");
    let config = replaced(
        &config,
        "url = \"sqlite://audit.db\"",
        &format!("url = \"{runtime_url}\""),
    );
    let path = dir.join("stackpass.toml");
    std::fs::write(&path, config).unwrap();
    path
}

/// One issuance through the balancer, whatever happens to it.
async fn issue(client: &reqwest::Client, url: &str, token: &str) -> Outcome {
    let started = Instant::now();
    let sent = client
        .post(url)
        .bearer_auth(token)
        .json(&credential_request("pulumi:acme/payments/dev"))
        .send()
        .await;
    match sent {
        Ok(response) => {
            let status = response.status().as_u16();
            let backend = response
                .headers()
                .get(BACKEND_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = response.text().await.unwrap_or_else(|e| format!("{e:?}"));
            Outcome {
                started,
                finished: Instant::now(),
                status,
                backend,
                body,
            }
        }
        Err(error) => Outcome {
            started,
            finished: Instant::now(),
            status: 0,
            backend: None,
            body: format!("client error: {error:?}"),
        },
    }
}

/// Requests every few milliseconds right after SIGTERM, before the balancer's
/// next poll can notice: without the shutdown delay, those it sends to the
/// leaving broker would find it no longer accepting.
fn burst(
    balancer: &Balancer,
    token: &str,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
) -> tokio::task::JoinSet<()> {
    let client = reqwest::Client::new();
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..BURST {
        let (client, token, url, outcomes) = (
            client.clone(),
            token.to_owned(),
            format!("{}/v1/credentials", balancer.url),
            outcomes.clone(),
        );
        requests.spawn(async move {
            tokio::time::sleep(Duration::from_millis(5) * i as u32).await;
            let outcome = issue(&client, &url, &token).await;
            outcomes.lock().unwrap().push(outcome);
        });
    }
    requests
}

/// Workers that issue through the balancer until `stop`, each one request at
/// a time, recording every outcome. Their starts are staggered over one STS
/// round trip, so that requests begin all the time rather than in waves.
fn start_load(
    balancer: &Balancer,
    token: &str,
    stop: Arc<AtomicBool>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
) -> tokio::task::JoinSet<()> {
    let client = reqwest::Client::new();
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..WORKERS {
        let stagger = STS_LATENCY * worker as u32 / WORKERS as u32;
        let (client, token, url, stop, outcomes) = (
            client.clone(),
            token.to_owned(),
            format!("{}/v1/credentials", balancer.url),
            stop.clone(),
            outcomes.clone(),
        );
        workers.spawn(async move {
            tokio::time::sleep(stagger).await;
            while !stop.load(Ordering::SeqCst) {
                let outcome = issue(&client, &url, &token).await;
                outcomes.lock().unwrap().push(outcome);
            }
        });
    }
    workers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_drains_without_a_failed_request() {
    let db = PgDatabase::with_roles().await;
    let moto = Moto::start().await;
    let backstage = BackstageDouble::start().await;
    let sts = StsRecorder::start(StsBehaviour::ForwardSlow {
        upstream: moto.url.clone(),
        delay: STS_LATENCY,
    })
    .await;
    let shared = tempfile::tempdir().unwrap();
    let config = replica_config(&backstage, &sts, &db, shared.path());
    let mut leaving = Broker::start_replica(&config, &[]).await;
    let staying = Broker::start_replica(&config, &[]).await;
    let balancer = Balancer::start(&[&leaving.url, &staying.url], POLL).await;
    balancer.wait_all_ready(Duration::from_secs(20)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let token = backstage.user_token("user:default/jane");
    let mut workers = start_load(&balancer, &token, stop.clone(), outcomes.clone());
    // Past the first round trips, so both brokers have requests in flight.
    tokio::time::sleep(STS_LATENCY + Duration::from_millis(1500)).await;

    let sigterm_at = Instant::now();
    leaving.terminate();
    let mut burst = burst(&balancer, &token, outcomes.clone());
    // Readiness fails at once, while the broker still answers.
    let readiness = loop {
        let readiness = leaving.get("/readyz").await;
        if readiness.status != 200 || sigterm_at.elapsed() > SHUTDOWN_DELAY {
            break readiness;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    readiness.assert_problem(503, "draining");
    assert!(
        sigterm_at.elapsed() < SHUTDOWN_DELAY,
        "readiness failed only after the delay"
    );
    let status = leaving
        .exited(SHUTDOWN_DELAY + STS_LATENCY + Duration::from_secs(20))
        .await
        .unwrap_or_else(|| panic!("the broker did not exit; its log:\n{}", leaving.logs()));
    let exited_at = Instant::now();
    // The load goes on against the replica that stays.
    tokio::time::sleep(STS_LATENCY + Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    while workers.join_next().await.is_some() {}
    while burst.join_next().await.is_some() {}
    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());

    let failed: Vec<String> = outcomes
        .iter()
        .filter(|o| o.status != 200)
        .map(|o| {
            format!(
                "{} after {:?} ({:?} after SIGTERM): {}",
                o.status,
                o.finished - o.started,
                o.finished.checked_duration_since(sigterm_at),
                o.body
            )
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed:\n{}\nthe leaving broker's log:\n{}",
        failed.len(),
        outcomes.len(),
        failed.join("\n"),
        leaving.logs()
    );
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        leaving.logs()
    );
    let logs = leaving.logs();
    assert!(logs.contains("drained; exiting"), "{logs}");
    assert!(!logs.contains("still in flight"), "{logs}");

    fn served_by<'a>(outcomes: &'a [Outcome], url: &'a str) -> impl Iterator<Item = &'a Outcome> {
        outcomes
            .iter()
            .filter(move |o| o.backend.as_deref() == Some(url))
    }
    // Requests the leaving broker took before the balancer saw its readiness
    // fail were still running when it stopped accepting: it finished them.
    let finished_across_the_stop = served_by(&outcomes, &leaving.url)
        .filter(|o| o.finished > sigterm_at + SHUTDOWN_DELAY)
        .count();
    assert!(
        finished_across_the_stop > 0,
        "no request was in flight on the leaving broker when it stopped accepting"
    );
    assert!(
        served_by(&outcomes, &leaving.url).all(|o| o.started < sigterm_at + SHUTDOWN_DELAY),
        "the balancer sent a request to the leaving broker after its delay"
    );
    assert!(
        served_by(&outcomes, &staying.url).any(|o| o.started > exited_at),
        "the load did not go on against the other replica"
    );

    // Every credential handed out has its committed records, in one chain.
    let received: HashSet<String> = outcomes
        .iter()
        .map(|o| {
            let body: serde_json::Value = serde_json::from_str(&o.body).unwrap();
            body["credentials"]["access_key_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(received.len(), outcomes.len());
    assert_eq!(db.issued_credential_ids().await, received);
    let output = verify_database(&db.url, None);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).starts_with(&format!(
            "audit chain intact: {} record(s)",
            3 * outcomes.len()
        )),
        "{}",
        stdout(&output)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_ends_the_shutdown_delay() {
    let backstage = BackstageDouble::start().await;
    let sts = StsRecorder::start(StsBehaviour::Succeed).await;
    let mut options = BrokerOptions::new(&backstage, &sts.url);
    options
        .env
        .push(("STACKPASS_SERVER__SHUTDOWN_DELAY".into(), "5m".into()));
    let mut broker = Broker::start(options).await;
    broker.get("/readyz").await;
    broker.terminate();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let readiness = broker.get("/readyz").await;
        if readiness.status == 503 {
            readiness.assert_problem(503, "draining");
            break;
        }
        assert!(Instant::now() < deadline, "readiness never failed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Still serving during the delay.
    let token = backstage.user_token("user:default/jane");
    let issued = broker
        .request_credentials(Some(&token), credential_request("pulumi:acme/payments/dev"))
        .await;
    assert_eq!(issued.status, 200, "{}", issued.text);
    // ... but each answer closes its connection, so a client holding a
    // keep-alive connection straight to this broker reconnects elsewhere now
    // instead of racing the idle close when the delay ends.
    assert_eq!(issued.header("connection"), Some("close"));

    let second = Instant::now();
    broker.terminate();
    let status = broker
        .exited(Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("still running after a second SIGTERM:\n{}", broker.logs()));
    assert!(status.success(), "{status:?}\n{}", broker.logs());
    assert!(second.elapsed() < Duration::from_secs(10));
    assert!(
        broker.logs().contains("ending the shutdown delay"),
        "{}",
        broker.logs()
    );
}
