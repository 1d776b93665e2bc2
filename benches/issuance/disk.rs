//! The disk's durability floor: how long one `fdatasync` of a freshly
//! appended 8 KB takes on the file system the audit store writes to. Every
//! commit waits for one (SQLite's WAL and PostgreSQL's WAL both), and an
//! issuance commits twice in a row (intent before the cloud call, outcome
//! before the answer), so no store can answer an issuance faster than about
//! twice this, however little CPU it spends.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

const SAMPLES: usize = 200;
const APPEND: usize = 8 * 1024;

pub struct SyncLatency {
    pub p50: Duration,
    pub p99: Duration,
}

/// Measures `SAMPLES` append-and-fdatasync rounds in a temporary file in the
/// system's temporary directory, where the benchmark's audit stores live.
pub fn fdatasync_latency() -> SyncLatency {
    let mut file = tempfile::tempfile().expect("a temporary file for the disk probe");
    let block = vec![0x5a_u8; APPEND];
    // Allocate the first block so every round is a plain append.
    file.write_all(&block).expect("write to the disk probe");
    file.sync_all().expect("fsync the disk probe");
    let mut samples: Vec<Duration> = (1..=SAMPLES)
        .map(|round| {
            file.write_all_at(&block, (round * APPEND) as u64)
                .expect("write to the disk probe");
            let started = Instant::now();
            file.sync_data().expect("fdatasync the disk probe");
            started.elapsed()
        })
        .collect();
    samples.sort();
    SyncLatency {
        p50: samples[SAMPLES / 2],
        p99: samples[SAMPLES * 99 / 100],
    }
}
