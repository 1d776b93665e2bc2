//! Issuances per second and latency percentiles through the real broker (release
//! build) with each audit store, against a fast local STS double, so that what the
//! audit log costs is visible:
//!
//!     cargo bench --bench issuance
//!
//! Knobs: BENCH_REQUESTS (default 2000 per run), BENCH_CONCURRENCY (default
//! "1,32"), STACKPASS_TEST_POSTGRES_URL (PostgreSQL server for the second store).
//! Each run starts a fresh broker with a fresh audit store, warms it up, then
//! fires the requests from one client at the given concurrency. The issuance
//! rate limits are off: one principal asks thousands of times a second.
//!
//! Beside the rates it reports the broker's CPU time per issuance and how much
//! of the machine this process (the client and the Backstage and STS doubles)
//! took, so a figure can be told apart from a starved broker; PostgreSQL's own
//! CPU is in neither.

// The integration tests' support; the benchmark uses only part of it.
#[allow(dead_code, unused_imports)]
#[path = "../tests/integration/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::*;

struct Run {
    store: &'static str,
    concurrency: usize,
    requests: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    /// CPU time the broker process used during the run.
    broker_cpu: Duration,
    /// CPU time this process (client and doubles) used during the run.
    bench_cpu: Duration,
}

/// A process's user + system CPU time so far, from `/proc/PID/stat`
/// (fields 14 and 15, in USER_HZ ticks, which Linux fixes at 100 a second).
fn cpu_time(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may hold spaces; the fields after it don't.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 = after_name
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|field| field.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10)
}

impl Run {
    fn percentile(&self, p: f64) -> Duration {
        let index = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[index]
    }

    fn print(&self) {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        println!(
            "{:<10} {:>11} {:>9} {:>12.0} {:>10.2} {:>10.2} {:>10.2} {:>14.0} {:>11.0}",
            self.store,
            self.concurrency,
            self.requests,
            self.requests as f64 / self.elapsed.as_secs_f64(),
            self.percentile(0.50).as_secs_f64() * 1000.0,
            self.percentile(0.99).as_secs_f64() * 1000.0,
            self.latencies.last().unwrap().as_secs_f64() * 1000.0,
            self.broker_cpu.as_secs_f64() * 1e6 / self.requests as f64,
            self.bench_cpu.as_secs_f64() * 100.0 / (self.elapsed.as_secs_f64() * cores),
        );
    }
}

async fn run(
    store: &'static str,
    audit_url: Option<String>,
    concurrency: usize,
    requests: usize,
) -> Run {
    let backstage = BackstageDouble::start().await;
    let sts = StsRecorder::start(StsBehaviour::Succeed).await;
    let mut options = BrokerOptions::new(&backstage, &sts.url);
    options.audit_url = audit_url.clone();
    // Keep the start-up line the harness waits for; drop per-request logging.
    options.env.push((
        "STACKPASS_LOG".into(),
        "warn,stackpass=info,stackpass::api=warn,stackpass::broker=warn".into(),
    ));
    options
        .env
        .push(("STACKPASS_CATALOG__CACHE_TTL".into(), "10m".into()));
    // Thousands of issuances a second by one principal from one address:
    // the [limits] defaults (120 a minute per principal) would answer 429
    // to nearly all of them, so they are off here (as in the test config).
    for limit in ["ISSUANCE_PER_PRINCIPAL", "ISSUANCE_PER_ADDRESS"] {
        options
            .env
            .push((format!("STACKPASS_LIMITS__{limit}_PER_MINUTE"), "0".into()));
    }
    let broker = Broker::start(options).await;
    let token = backstage.user_token("user:default/jane");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    let url = format!("{}/v1/credentials", broker.url);
    let body = credential_request("pulumi:acme/payments/dev");

    let send = |client: reqwest::Client, url: String, token: String, body: serde_json::Value| async move {
        let started = Instant::now();
        let response = client
            .post(url)
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            200,
            "{}",
            response.text().await.unwrap_or_default()
        );
        response.bytes().await.unwrap();
        started.elapsed()
    };
    for _ in 0..50 {
        send(client.clone(), url.clone(), token.clone(), body.clone()).await;
    }

    let per_worker = requests / concurrency;
    let broker_pid = broker.pid().to_string();
    let (broker_cpu, bench_cpu) = (cpu_time(&broker_pid), cpu_time("self"));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, url, token, body) = (client.clone(), url.clone(), token.clone(), body.clone());
        workers.spawn(async move {
            let mut latencies = Vec::with_capacity(per_worker);
            for _ in 0..per_worker {
                latencies
                    .push(send(client.clone(), url.clone(), token.clone(), body.clone()).await);
            }
            latencies
        });
    }
    let mut latencies = Vec::with_capacity(requests);
    while let Some(result) = workers.join_next().await {
        latencies.extend(result.unwrap());
    }
    let elapsed = started.elapsed();
    let broker_cpu = cpu_time(&broker_pid).saturating_sub(broker_cpu);
    let bench_cpu = cpu_time("self").saturating_sub(bench_cpu);
    latencies.sort();

    // Every issuance must be on the chain, or the numbers are meaningless.
    let database = audit_url.unwrap_or_else(|| broker.audit_url());
    let output = verify_database(&database, None);
    assert!(
        output.status.success(),
        "chain broken after the run: {}",
        stderr(&output)
    );

    Run {
        store,
        concurrency,
        requests: latencies.len(),
        elapsed,
        latencies,
        broker_cpu,
        bench_cpu,
    }
}

#[tokio::main]
async fn main() {
    // `cargo test` runs bench targets too; only `cargo bench` (which passes
    // --bench) does the measuring.
    if !std::env::args().any(|a| a == "--bench") {
        println!("issuance benchmark: run it with `cargo bench --bench issuance`");
        return;
    }
    let requests: usize = std::env::var("BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let levels: Vec<usize> = std::env::var("BENCH_CONCURRENCY")
        .unwrap_or_else(|_| "1,32".into())
        .split(',')
        .map(|c| {
            c.trim()
                .parse()
                .expect("BENCH_CONCURRENCY is a comma-separated list of numbers")
        })
        .collect();

    println!(
        "{:<10} {:>11} {:>9} {:>12} {:>10} {:>10} {:>10} {:>14} {:>11}",
        "store",
        "concurrency",
        "requests",
        "issuances/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "broker µs/iss",
        "bench cpu %"
    );
    for &concurrency in &levels {
        run("sqlite", None, concurrency, requests).await.print();
        let db = PgDatabase::create().await;
        run("postgres", Some(db.url.clone()), concurrency, requests)
            .await
            .print();
    }
}
