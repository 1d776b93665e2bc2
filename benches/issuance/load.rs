//! The load generators and what they report. wrk keeps a fixed number of
//! connections busy (a closed loop, as OpenBao's reference script runs it);
//! oha sends at a fixed rate whatever the answers take (an open loop), with
//! latency correction: a request's latency counts from when it was due, not
//! from when a free connection sent it, so queueing is not hidden.

use std::path::Path;
use std::time::Duration;

/// One issuance request, as both generators send it.
pub struct Request {
    pub url: String,
    pub token: String,
    pub body: String,
}

/// What a load generator reported for one run.
pub struct Report {
    /// Requests answered (wrk: any status; oha: 200).
    pub completed: u64,
    pub rate: f64,
    pub p50: Duration,
    pub p99: Duration,
    /// oha only (wrk prints no 99.9th percentile).
    pub p999: Option<Duration>,
    pub max: Duration,
    /// Error answers, socket errors and timeouts, as the generator named them.
    pub failures: Vec<String>,
}

impl Report {
    /// Panics unless every request got a successful answer.
    #[track_caller]
    pub fn assert_clean(&self, who: &str, output: &str) {
        assert!(
            self.failures.is_empty(),
            "{who}: {}\n{output}",
            self.failures.join("; ")
        );
    }
}

/// The wrk command `openbao.sh` runs, with a Lua script that POSTs `request`.
pub async fn wrk(request: &Request, connections: usize, seconds: u64) -> Report {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("issue.lua");
    std::fs::write(&script, wrk_script(request)).unwrap();
    let output = tokio::process::Command::new("wrk")
        .args(["-t2", &format!("-c{connections}"), &format!("-d{seconds}s")])
        .arg("--latency")
        .arg("-s")
        .arg(&script)
        .arg(&request.url)
        .output()
        .await
        .unwrap_or_else(|e| panic!("wrk: {e}; apt-get install wrk"));
    clean_report("wrk", &output, parse_wrk)
}

/// A load generator's report: it must have exited 0, and every request it
/// sent must have succeeded.
fn clean_report(
    generator: &str,
    output: &std::process::Output,
    parse: fn(&str) -> Report,
) -> Report {
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{generator} failed: {}{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = parse(&text);
    report.assert_clean(generator, &text);
    report
}

/// Fails at once, before any broker starts, if wrk is not installed.
pub fn require_wrk() {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("wrk").is_file()));
    assert!(found, "wrk is not installed: apt-get install wrk");
}

/// Lua long strings (`[==[...]==]`) hold the JSON body and the token as they are.
fn wrk_script(request: &Request) -> String {
    format!(
        "wrk.method = \"POST\"\n\
         wrk.body = [==[{}]==]\n\
         wrk.headers[\"Content-Type\"] = \"application/json\"\n\
         wrk.headers[\"Authorization\"] = [==[Bearer {}]==]\n",
        request.body, request.token
    )
}

/// wrk's text report (`--latency`): the rate, the 50th and 99th percentiles,
/// the maximum, and its lines about errors.
///
/// ```text
///   Thread Stats   Avg      Stdev     Max   +/- Stdev
///     Latency    31.23ms   10.11ms 150.00ms   80.00%
///   Latency Distribution
///      50%   30.00ms
///      99%   60.00ms
///   40000 requests in 20.00s, 50.00MB read
///   Socket errors: connect 0, read 0, write 0, timeout 12
///   Non-2xx or 3xx responses: 5
/// Requests/sec:   2000.00
/// ```
pub fn parse_wrk(text: &str) -> Report {
    let mut report = Report {
        completed: 0,
        rate: 0.0,
        p50: Duration::ZERO,
        p99: Duration::ZERO,
        p999: None,
        max: Duration::ZERO,
        failures: Vec::new(),
    };
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Latency", _avg, _stdev, max, ..] => report.max = wrk_duration(max),
            ["50%", value] => report.p50 = wrk_duration(value),
            ["99%", value] => report.p99 = wrk_duration(value),
            [count, "requests", "in", ..] => report.completed = count.parse().unwrap(),
            ["Requests/sec:", rate] => report.rate = rate.parse().unwrap(),
            ["Socket", "errors:", ..] | ["Non-2xx", ..] => report.failures.push(line.to_owned()),
            _ => {}
        }
    }
    assert!(
        report.completed > 0 && report.rate > 0.0,
        "not a wrk report:\n{text}"
    );
    report
}

/// wrk's durations: `812.00us`, `31.23ms`, `1.20s`, `2.00m`.
fn wrk_duration(text: &str) -> Duration {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .unwrap_or_else(|_| panic!("wrk duration {text}"));
    let seconds = match unit {
        "us" => number / 1e6,
        "ms" => number / 1e3,
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => panic!("wrk duration {text}"),
    };
    Duration::from_secs_f64(seconds)
}

/// oha at `rate` requests a second for `seconds`, on up to `connections`
/// connections, latency-corrected, waiting for the requests still in flight
/// at the end rather than dropping them.
pub async fn oha(
    oha: &Path,
    request: &Request,
    rate: u64,
    connections: usize,
    seconds: u64,
) -> Report {
    let output = tokio::process::Command::new(oha)
        .args([
            "--no-tui",
            "--output-format",
            "json",
            "--latency-correction",
        ])
        .args(["--wait-ongoing-requests-after-deadline"])
        .args(["-q", &rate.to_string(), "-c", &connections.to_string()])
        .args(["-z", &format!("{seconds}s"), "-m", "POST"])
        .args(["-T", "application/json", "-d", &request.body])
        .args(["-H", &format!("Authorization: Bearer {}", request.token)])
        .arg(&request.url)
        .output()
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", oha.display()));
    clean_report("oha", &output, parse_oha)
}

/// oha's JSON report: latencies in seconds, answers by status code, errors
/// by message.
fn parse_oha(text: &str) -> Report {
    let json: serde_json::Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("oha's JSON ({e}):\n{text}"));
    let seconds = |value: &serde_json::Value| {
        Duration::from_secs_f64(
            value
                .as_f64()
                .unwrap_or_else(|| panic!("oha's JSON has no number where expected:\n{text}")),
        )
    };
    let percentiles = &json["latencyPercentiles"];
    let statuses = json["statusCodeDistribution"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let errors = json["errorDistribution"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let failures = statuses
        .iter()
        .filter(|(status, _)| *status != "200")
        .chain(errors.iter())
        .map(|(what, count)| format!("{count} × {what}"))
        .collect();
    Report {
        completed: statuses
            .get("200")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0),
        rate: json["summary"]["requestsPerSec"].as_f64().unwrap_or(0.0),
        p50: seconds(&percentiles["p50"]),
        p99: seconds(&percentiles["p99"]),
        p999: Some(seconds(&percentiles["p99.9"])),
        max: seconds(&json["summary"]["slowest"]),
        failures,
    }
}

/// oha's binary, installed by `scripts/bench-tools` on first use.
pub fn oha_binary() -> std::path::PathBuf {
    let script = super::support::workspace_root().join("scripts/bench-tools");
    let output = std::process::Command::new(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    assert!(
        output.status.success(),
        "scripts/bench-tools failed to install oha"
    );
    String::from_utf8_lossy(&output.stdout).trim().into()
}
