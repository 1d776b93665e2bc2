//! What the processes on the machine used, read from `/proc`: CPU time of
//! the broker, of this process (the Backstage and STS doubles), of the load
//! generator (a child this process waited for), of PostgreSQL's server
//! processes and of the whole machine; and a process's resident memory.

use std::time::{Duration, Instant};

/// `/proc`'s CPU times count USER_HZ ticks, which Linux fixes at 100 a second.
fn from_ticks(ticks: u64) -> Duration {
    Duration::from_millis(ticks * 10)
}

/// The fields of `/proc/PID/stat` after the command name (which may hold
/// spaces; the fields after it don't), so that index 0 is field 3 (`state`).
fn stat_fields(pid: &str) -> Vec<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    after_name
        .split_whitespace()
        .map(|field| field.parse().unwrap_or(0))
        .collect()
}

/// The CPU time in the `/proc/PID/stat` fields numbered `from` and `from + 1`.
fn stat_cpu(pid: &str, from: usize) -> Duration {
    let fields = stat_fields(pid);
    from_ticks(fields.iter().skip(from - 3).take(2).sum())
}

/// A process's user + system CPU time so far (fields 14 and 15).
pub fn cpu_time(pid: &str) -> Duration {
    stat_cpu(pid, 14)
}

/// CPU time of this process's children that it has waited for (fields 16
/// and 17, `cutime` and `cstime`): across a load generator's run, what the
/// generator used.
pub fn children_cpu_time() -> Duration {
    stat_cpu("self", 16)
}

/// CPU time of every process whose command name is `postgres` (the server
/// and its backends, whichever database they serve).
pub fn postgres_cpu_time() -> Duration {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Duration::ZERO;
    };
    entries
        .filter_map(Result::ok)
        .filter(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter(|entry| {
            std::fs::read_to_string(entry.path().join("comm"))
                .is_ok_and(|comm| comm.trim() == "postgres")
        })
        .map(|entry| cpu_time(&entry.file_name().to_string_lossy()))
        .sum()
}

/// CPU time the whole machine spent busy (not idle, not waiting for I/O),
/// summed over its cores, from `/proc/stat`.
fn machine_busy_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|field| field.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy: u64 = fields
        .iter()
        .enumerate()
        .filter(|(index, _)| *index != 3 && *index != 4)
        .map(|(_, ticks)| ticks)
        .sum();
    from_ticks(busy)
}

/// A process's resident memory now (`VmRSS`), in MiB.
pub fn rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmRSS:")
}

/// The most resident memory the process has had (`VmHWM`), in MiB.
pub fn peak_rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmHWM:")
}

/// A `kB` field of `/proc/PID/status`, in MiB.
fn status_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|value| {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

pub fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
}

/// The CPU counters at one moment; two of them make a [`CpuUse`].
pub struct CpuSnapshot {
    at: Instant,
    broker_pid: u32,
    broker: Duration,
    bench: Duration,
    load: Duration,
    postgres: Duration,
    machine: Duration,
}

impl CpuSnapshot {
    pub fn now(broker_pid: u32) -> CpuSnapshot {
        CpuSnapshot {
            at: Instant::now(),
            broker_pid,
            broker: cpu_time(&broker_pid.to_string()),
            bench: cpu_time("self"),
            load: children_cpu_time(),
            postgres: postgres_cpu_time(),
            machine: machine_busy_time(),
        }
    }

    /// What was used between this snapshot and now.
    pub fn until_now(&self) -> CpuUse {
        let now = CpuSnapshot::now(self.broker_pid);
        CpuUse {
            elapsed: now.at - self.at,
            broker: now.broker.saturating_sub(self.broker),
            bench: now.bench.saturating_sub(self.bench),
            load: now.load.saturating_sub(self.load),
            postgres: now.postgres.saturating_sub(self.postgres),
            machine: now.machine.saturating_sub(self.machine),
        }
    }
}

/// CPU time used during a run, by whom.
pub struct CpuUse {
    pub elapsed: Duration,
    pub broker: Duration,
    /// This process: the Backstage and STS doubles (and a little bookkeeping).
    pub bench: Duration,
    /// The load generator (wrk or oha).
    pub load: Duration,
    pub postgres: Duration,
    /// The whole machine, all of the above included.
    pub machine: Duration,
}

impl CpuUse {
    /// `cpu` as a percentage of all the cores over the run.
    pub fn share(&self, cpu: Duration) -> f64 {
        cpu.as_secs_f64() * 100.0 / (self.elapsed.as_secs_f64() * cores())
    }

    /// The machine's busy time that none of the measured processes account
    /// for: other work on the machine (a compiler), the kernel's own threads.
    pub fn others(&self) -> Duration {
        self.machine
            .saturating_sub(self.broker + self.bench + self.load + self.postgres)
    }
}

/// CPU time per issuance, in µs.
pub fn per_issuance_us(cpu: Duration, issuances: u64) -> f64 {
    cpu.as_secs_f64() * 1e6 / issuances.max(1) as f64
}
