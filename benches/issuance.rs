//! Issuances through the real broker (release build), with each durable audit
//! store, beside OpenBao's JWT login measured in the same run:
//!
//!     cargo bench --bench issuance                  # the default scenarios
//!     cargo bench --bench issuance -- soak          # only the ones named
//!     cargo bench --bench issuance -- throughput fixed-rate
//!
//! Scenarios (the default set is all but `soak`):
//! - `throughput`: per store, a fresh broker and audit store, warmed up, then
//!   wrk with the flags OpenBao's reference script uses (`-t2 -cC -dSs
//!   --latency`, a closed loop on C connections).
//! - `openbao`: `bash ../shared/bench/openbao.sh S C` (OpenBao's JWT login
//!   under the same wrk; installs OpenBao into ~/.cache once), and the ratio
//!   of stackpass on SQLite to it when `throughput` ran too.
//! - `fixed-rate`: oha at BENCH_RATE requests a second for S seconds on up to
//!   C connections, latency-corrected (latency counts from when a request was
//!   due, so queueing is not hidden), requests in flight at the end awaited.
//!   oha comes from `scripts/bench-tools` (crates.io, into target/, once).
//!   First it measures the disk's fdatasync (`disk.rs`): every commit waits
//!   for one and an issuance commits twice, so that is the latency floor.
//! - `soak`: BENCH_SOAK_MINUTES of wrk at C connections in back-to-back 30 s
//!   windows, each with its rate, latency and the broker's resident memory;
//!   then the first window beside the last.
//! - `startup`: spawn of the release binary to the first 200 from `/readyz`,
//!   once creating the key set and the SQLite audit file, then 20 times with a
//!   fresh audit file and 20 with the existing one.
//! - `memory`: the broker's resident memory (VmRSS) at rest after start, its
//!   peak (VmHWM), and at rest again 5 s after 10 s of wrk.
//!
//! Knobs: BENCH_SECONDS (S, default 20), BENCH_CONNECTIONS (C, default 64),
//! BENCH_RATE (default 1000), BENCH_SOAK_MINUTES (default 10), BENCH_STORES
//! (default "sqlite,postgres"), BENCH_OPENBAO_SCRIPT (default
//! ../shared/bench/openbao.sh beside the workspace), STACKPASS_TEST_POSTGRES_URL
//! (the PostgreSQL server; each run gets a new database on it).
//!
//! Needs wrk (apt-get install wrk) and a PostgreSQL server; oha installs
//! itself on first use of `fixed-rate`.
//!
//! The doubles, both in this process: Backstage (keys and catalog, which the
//! broker caches: the `backstage` column counts its requests during a run, 0
//! but for a catalog refresh every 10 minutes) and STS answering at once with
//! fresh credentials (`StsBehaviour::Load`). The issuance rate limits are
//! off: one principal asks thousands of times a second.
//!
//! Columns: `issuances/s` the generator's rate of completed requests; `p50`,
//! `p99`, `p99.9`, `max` their latencies in ms; `broker µs/iss` and `pg
//! µs/iss` CPU time per issuance of the broker and of all PostgreSQL server
//! processes; then shares of all the cores over the run: `broker %`, `wrk %`
//! or `oha %` (the load generator), `doubles %` (this process: the doubles),
//! `others %` (the rest of the machine's busy time: other work on it, and
//! interrupt time no process is charged for). Every run must get only
//! successful answers (wrk: no non-2xx/3xx and no socket errors; oha: all
//! 200, no errors), and after it the audit chain must verify and hold at
//! least as many issued records as the generator completed.

// The integration tests' support; the benchmark uses only part of it.
#[allow(dead_code, unused_imports)]
#[path = "../tests/integration/support/mod.rs"]
mod support;

#[path = "issuance/disk.rs"]
mod disk;
#[path = "issuance/load.rs"]
mod load;
#[path = "issuance/procfs.rs"]
mod procfs;
#[path = "issuance/startup.rs"]
mod startup;
#[path = "issuance/target.rs"]
mod target;

use std::path::PathBuf;
use std::time::Duration;

use load::Report;
use procfs::{per_issuance_us, CpuSnapshot, CpuUse};
use target::{Store, Target};

const SCENARIOS: [&str; 6] = [
    "throughput",
    "openbao",
    "fixed-rate",
    "soak",
    "startup",
    "memory",
];
const SOAK_WINDOW_SECONDS: u64 = 30;
const STARTUP_RUNS: usize = 20;

struct Knobs {
    seconds: u64,
    connections: usize,
    rate: u64,
    soak_minutes: u64,
    stores: Vec<Store>,
    openbao_script: PathBuf,
}

fn knob<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a number")),
        Err(_) => default,
    }
}

impl Knobs {
    fn from_env() -> Knobs {
        Knobs {
            seconds: knob("BENCH_SECONDS", 20),
            connections: knob("BENCH_CONNECTIONS", 64),
            rate: knob("BENCH_RATE", 1000),
            soak_minutes: knob("BENCH_SOAK_MINUTES", 10),
            stores: std::env::var("BENCH_STORES")
                .unwrap_or_else(|_| "sqlite,postgres".into())
                .split(',')
                .map(Store::parse)
                .collect(),
            openbao_script: std::env::var_os("BENCH_OPENBAO_SCRIPT")
                .map(PathBuf::from)
                .unwrap_or_else(|| support::workspace_root().join("../shared/bench/openbao.sh")),
        }
    }
}

/// One load run against a target, with who used the CPU meanwhile.
struct Run {
    report: Report,
    cpu: CpuUse,
    /// Requests the Backstage double answered during the run.
    backstage: usize,
}

impl Run {
    async fn wrk(target: &Target, connections: usize, seconds: u64) -> Run {
        let backstage = target.backstage_requests();
        let before = CpuSnapshot::now(target.broker.pid());
        let report = load::wrk(&target.request, connections, seconds).await;
        Run {
            cpu: before.until_now(),
            report,
            backstage: target.backstage_requests() - backstage,
        }
    }

    async fn oha(target: &Target, oha: &std::path::Path, knobs: &Knobs) -> Run {
        let backstage = target.backstage_requests();
        let before = CpuSnapshot::now(target.broker.pid());
        let report = load::oha(
            oha,
            &target.request,
            knobs.rate,
            knobs.connections,
            knobs.seconds,
        )
        .await;
        Run {
            cpu: before.until_now(),
            report,
            backstage: target.backstage_requests() - backstage,
        }
    }

    /// The CPU columns, the same in every table.
    fn cpu_columns(&self) -> String {
        let cpu = &self.cpu;
        let issuances = self.report.completed;
        format!(
            "{:>13.0} {:>9.0} {:>8.1} {:>6.1} {:>9.1} {:>8.1} {:>9}",
            per_issuance_us(cpu.broker, issuances),
            per_issuance_us(cpu.postgres, issuances),
            cpu.share(cpu.broker),
            cpu.share(cpu.load),
            cpu.share(cpu.bench),
            cpu.share(cpu.others()),
            self.backstage,
        )
    }
}

fn cpu_header(generator: &str) -> String {
    format!(
        "{:>13} {:>9} {:>8} {:>6} {:>9} {:>8} {:>9}",
        "broker µs/iss",
        "pg µs/iss",
        "broker %",
        format!("{generator} %"),
        "doubles %",
        "others %",
        "backstage"
    )
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

async fn throughput(knobs: &Knobs) -> Option<f64> {
    println!(
        "\n## throughput: wrk -t2 -c{} -d{}s --latency (closed loop)",
        knobs.connections, knobs.seconds
    );
    println!(
        "{:<9} {:>11} {:>7} {:>7} {:>7} {}",
        "store",
        "issuances/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        cpu_header("wrk")
    );
    let mut sqlite_rate = None;
    for &store in &knobs.stores {
        let target = Target::start(store).await;
        target.warm_up(knobs.connections).await;
        let run = Run::wrk(&target, knobs.connections, knobs.seconds).await;
        target.check(run.report.completed).await;
        let report = &run.report;
        println!(
            "{:<9} {:>11.0} {:>7.2} {:>7.2} {:>7.2} {}",
            store.name(),
            report.rate,
            ms(report.p50),
            ms(report.p99),
            ms(report.max),
            run.cpu_columns()
        );
        if store == Store::Sqlite {
            sqlite_rate = Some(report.rate);
        }
    }
    sqlite_rate
}

async fn openbao(knobs: &Knobs, sqlite_rate: Option<f64>) {
    let script = &knobs.openbao_script;
    println!(
        "\n## openbao: bash {} {} {}",
        script.display(),
        knobs.seconds,
        knobs.connections
    );
    assert!(
        script.is_file(),
        "{} is missing: set BENCH_OPENBAO_SCRIPT to OpenBao's reference script (shared/bench/openbao.sh)",
        script.display()
    );
    let output = tokio::process::Command::new("bash")
        .arg(script)
        .arg(knobs.seconds.to_string())
        .arg(knobs.connections.to_string())
        .stderr(std::process::Stdio::inherit())
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "openbao.sh failed:\n{text}");
    let report = load::parse_wrk(&text);
    report.assert_clean("openbao.sh's wrk", &text);
    // Its own checks: a login before the run, the audit records after.
    for line in text
        .lines()
        .filter(|line| line.starts_with("check:") || line.starts_with("audit records:"))
    {
        println!("{line}");
    }
    println!(
        "{:<9} {:>11} {:>7} {:>7} {:>7}",
        "", "logins/s", "p50 ms", "p99 ms", "max ms"
    );
    println!(
        "{:<9} {:>11.0} {:>7.2} {:>7.2} {:>7.2}",
        "openbao",
        report.rate,
        ms(report.p50),
        ms(report.p99),
        ms(report.max)
    );
    if let Some(sqlite) = sqlite_rate {
        println!(
            "stackpass sqlite / openbao: {:.2}x ({sqlite:.0}/s vs {:.0}/s)",
            sqlite / report.rate,
            report.rate
        );
    }
}

async fn fixed_rate(knobs: &Knobs, oha: &std::path::Path) {
    println!(
        "\n## fixed-rate: oha -q {} -c {} -z {}s --latency-correction (open loop)",
        knobs.rate, knobs.connections, knobs.seconds
    );
    let floor = tokio::task::spawn_blocking(disk::fdatasync_latency)
        .await
        .expect("the disk probe");
    println!(
        "disk: fdatasync of an 8 KB append p50 {:.2} ms, p99 {:.2} ms; an issuance waits for two",
        ms(floor.p50),
        ms(floor.p99)
    );
    println!(
        "{:<9} {:>10} {:>7} {:>7} {:>8} {:>7} {}",
        "store",
        "achieved/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        cpu_header("oha")
    );
    for &store in &knobs.stores {
        let target = Target::start(store).await;
        target.warm_up(knobs.connections).await;
        let run = Run::oha(&target, oha, knobs).await;
        target.check(run.report.completed).await;
        let report = &run.report;
        println!(
            "{:<9} {:>10.0} {:>7.2} {:>7.2} {:>8.2} {:>7.2} {}",
            store.name(),
            report.rate,
            ms(report.p50),
            ms(report.p99),
            ms(report.p999.unwrap_or_default()),
            ms(report.max),
            run.cpu_columns()
        );
    }
}

async fn soak(knobs: &Knobs) {
    let windows = (knobs.soak_minutes * 60 / SOAK_WINDOW_SECONDS).max(1);
    for &store in &knobs.stores {
        println!(
            "\n## soak, {}: {windows} windows of wrk -t2 -c{} -d{SOAK_WINDOW_SECONDS}s",
            store.name(),
            knobs.connections
        );
        println!(
            "{:>6} {:>11} {:>7} {:>7} {:>7} {:>10} {}",
            "window",
            "issuances/s",
            "p50 ms",
            "p99 ms",
            "max ms",
            "broker MiB",
            cpu_header("wrk")
        );
        let target = Target::start(store).await;
        target.warm_up(knobs.connections).await;
        let mut completed = 0;
        let mut first: Option<(f64, f64)> = None;
        let mut last = (0.0, 0.0);
        for window in 1..=windows {
            let run = Run::wrk(&target, knobs.connections, SOAK_WINDOW_SECONDS).await;
            let rss = procfs::rss_mib(target.broker.pid());
            let report = &run.report;
            println!(
                "{:>6} {:>11.0} {:>7.2} {:>7.2} {:>7.2} {:>10.1} {}",
                window,
                report.rate,
                ms(report.p50),
                ms(report.p99),
                ms(report.max),
                rss,
                run.cpu_columns()
            );
            completed += report.completed;
            first.get_or_insert((report.rate, rss));
            last = (report.rate, rss);
        }
        let (first_rate, first_rss) = first.unwrap();
        println!(
            "{}: last window {:.0}/s vs first {first_rate:.0}/s ({:+.1} %); broker memory {first_rss:.1} -> {:.1} MiB ({:+.1} MiB); {completed} issuances",
            store.name(),
            last.0,
            (last.0 / first_rate - 1.0) * 100.0,
            last.1,
            last.1 - first_rss,
        );
        target.check(completed).await;
    }
}

async fn startup_times() {
    println!("\n## startup: spawn to the first 200 from /readyz, sqlite");
    let times = startup::measure(STARTUP_RUNS).await;
    println!(
        "{:<34} {:>4} {:>9} {:>7}",
        "audit file", "runs", "median ms", "max ms"
    );
    println!(
        "{:<34} {:>4} {:>9.1} {:>7.1}",
        "none, no key set (first start)",
        1,
        ms(times.first),
        ms(times.first)
    );
    for (what, runs) in [("fresh", &times.fresh), ("existing", &times.existing)] {
        println!(
            "{:<34} {:>4} {:>9.1} {:>7.1}",
            what,
            runs.len(),
            ms(startup::median(runs)),
            ms(*runs.iter().max().unwrap())
        );
    }
}

async fn memory(knobs: &Knobs) {
    println!("\n## memory: the broker's VmRSS at rest, its peak, and at rest after 10 s of wrk");
    println!(
        "{:<9} {:>15} {:>19} {:>14}",
        "store", "at rest MiB", "after load MiB", "peak MiB"
    );
    for &store in &knobs.stores {
        let target = Target::start(store).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let pid = target.broker.pid();
        let at_rest = procfs::rss_mib(pid);
        target.warm_up(knobs.connections).await;
        let run = Run::wrk(&target, knobs.connections, 10).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let after = procfs::rss_mib(pid);
        println!(
            "{:<9} {:>15.1} {:>19.1} {:>14.1}",
            store.name(),
            at_rest,
            after,
            procfs::peak_rss_mib(pid)
        );
        target.check(run.report.completed).await;
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo test` runs bench targets too; only `cargo bench` (which passes
    // --bench) does the measuring.
    if !args.iter().any(|a| a == "--bench") {
        println!("issuance benchmark: run it with `cargo bench --bench issuance`");
        return;
    }
    let asked: Vec<&str> = args
        .iter()
        .filter(|a| !a.starts_with('-'))
        .map(String::as_str)
        .collect();
    if let Some(unknown) = asked.iter().find(|a| !SCENARIOS.contains(a)) {
        panic!("unknown scenario {unknown:?}; the scenarios: {SCENARIOS:?}");
    }
    let run = |scenario: &str| {
        if asked.is_empty() {
            scenario != "soak"
        } else {
            asked.contains(&scenario)
        }
    };
    let knobs = Knobs::from_env();
    load::require_wrk();
    let oha = run("fixed-rate").then(load::oha_binary);
    println!(
        "issuance benchmark: {} cores, load average {} (a shared machine: compare figures within one run)",
        procfs::cores(),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );

    let mut sqlite_rate = None;
    if run("throughput") {
        sqlite_rate = throughput(&knobs).await;
    }
    if run("openbao") {
        openbao(&knobs, sqlite_rate).await;
    }
    if let Some(oha) = &oha {
        fixed_rate(&knobs, oha).await;
    }
    if run("soak") {
        soak(&knobs).await;
    }
    if run("startup") {
        startup_times().await;
    }
    if run("memory") {
        memory(&knobs).await;
    }
}
