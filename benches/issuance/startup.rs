//! Start to ready: from spawning the release binary to the first HTTP 200
//! from `/readyz` (the audit store takes writes and the signing key signs),
//! polled with a raw TCP connect and GET every 200 µs, so the poll adds at most
//! that much and hardly any CPU.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::support::*;
use super::target::load_options;

const POLL: Duration = Duration::from_micros(200);

/// The start-to-ready times of one broker configuration started `runs` times
/// with a fresh audit file and `runs` times with the one the previous start
/// left, after a first start that also creates the key set.
pub struct Startups {
    pub first: Duration,
    pub fresh: Vec<Duration>,
    pub existing: Vec<Duration>,
}

pub async fn measure(runs: usize) -> Startups {
    let backstage = BackstageDouble::start().await;
    let sts = StsRecorder::start(StsBehaviour::Load).await;
    let options = load_options(&backstage, &sts);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("stackpass.toml"), options.config()).unwrap();
    std::fs::write(dir.path().join("stacks.toml"), STACKS_TOML).unwrap();
    std::fs::write(dir.path().join("catalog-token"), &options.catalog_token).unwrap();
    let config = dir.path().join("stackpass.toml");
    let env = options.env.clone();
    // The doubles answer on this runtime; the polling loop blocks a thread.
    tokio::task::spawn_blocking(move || {
        let first = start_to_ready(&config, &env);
        let fresh = (0..runs)
            .map(|_| {
                remove_audit_file(config.parent().unwrap());
                start_to_ready(&config, &env)
            })
            .collect();
        let existing = (0..runs).map(|_| start_to_ready(&config, &env)).collect();
        drop(dir);
        Startups {
            first,
            fresh,
            existing,
        }
    })
    .await
    .unwrap()
}

fn remove_audit_file(dir: &Path) {
    for name in ["audit.db", "audit.db-wal", "audit.db-shm"] {
        let _ = std::fs::remove_file(dir.join(name));
    }
}

/// Starts the broker on a free port, times it to its first 200 from
/// `/readyz`, then stops it with SIGTERM and waits for it to exit.
fn start_to_ready(config: &Path, env: &[(String, String)]) -> Duration {
    let port = free_port();
    let log = config.with_file_name("stderr.log");
    let started = Instant::now();
    let mut child = spawn(config, env, port, &log);
    let ready = loop {
        if readyz_ok(port) {
            break started.elapsed();
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the broker exited ({status}) before it was ready:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the broker was not ready within 30 s"
        );
        std::thread::sleep(POLL);
    };
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap();
    ready
}

/// `stackpass serve` as [`Broker::start`] runs it, listening on `port`.
fn spawn(config: &Path, env: &[(String, String)], port: u16, log: &Path) -> Child {
    let mut command = Command::new(stackpass_binary());
    command
        .arg("serve")
        .arg("--config")
        .arg(config)
        .env_remove("STACKPASS_TOKEN")
        .env_remove("STACKPASS_URL")
        .env_remove(TEST_POSTGRES_URL)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("STACKPASS_SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    command.spawn().expect("start stackpass serve")
}

/// Whether `GET /readyz` on `port` answers 200 now (a refused connection
/// fails at once).
fn readyz_ok(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    if stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut status_line = [0u8; 12];
    stream.read_exact(&mut status_line).is_ok() && &status_line == b"HTTP/1.1 200"
}

pub fn median(times: &[Duration]) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}
