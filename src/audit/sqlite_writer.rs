//! SQLite's group-commit writer: one OS thread with its own connection to the
//! audit database, which takes every append waiting in the queue, seals them
//! onto the chain's head and commits them in one transaction, then answers
//! each caller.
//!
//! Why a thread of its own rather than the sqlx pool the rest of the store
//! uses: sqlx runs each SQLite statement on the connection's worker thread and
//! hands the result back through a channel, so one commit (begin, head,
//! inserts, commit) crossed threads five times, each a wake-up and a task
//! switch, which at one request at a time cost more than the fsync. Here a
//! caller's append crosses to this thread once and its answer once.
//!
//! Same rules as the PostgreSQL writer in `store.rs`: `BEGIN IMMEDIATE` takes
//! the chain lock (other brokers on the file, guarded appends and pruning take
//! it too), the head is read under it, and no caller is answered before its
//! records are committed (WAL with `synchronous = FULL`: fsynced).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, TransactionBehavior};
use tokio::sync::mpsc;

use super::store::{
    collect_batch, fill_batch, observe_commit, PendingAppend, CHAIN_HEAD, COLUMNS, MAX_BATCH,
};
use super::AuditError;

/// When appends arrive together (more than one was already waiting), the
/// writer waits this long for more before it commits: each commit costs an
/// fsync and a WAL frame for every page it dirtied, whatever its size, and
/// under load that fixed cost was a third of the broker's CPU. An append that
/// finds the writer idle and alone is committed at once.
const GATHER: Duration = Duration::from_micros(300);

/// Starts the writer thread for the database file at `path`; appends go to
/// the returned queue. The connection is opened on the first batch and again
/// after any failure, so a file that cannot be opened fails appends (and
/// readiness) rather than the broker's start.
pub(super) fn spawn(
    path: PathBuf,
    busy_timeout: Duration,
    queue_size: usize,
) -> mpsc::Sender<PendingAppend> {
    let (sender, queue) = mpsc::channel(queue_size);
    std::thread::Builder::new()
        .name("audit-writer".into())
        .spawn(move || write_loop(path, busy_timeout, queue))
        .expect("the OS refused a thread for the audit writer");
    sender
}

fn write_loop(path: PathBuf, busy_timeout: Duration, mut queue: mpsc::Receiver<PendingAppend>) {
    let insert = format!(
        "INSERT INTO audit_records ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, \
         ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25)"
    );
    let mut connection: Option<Connection> = None;
    while let Some(first) = queue.blocking_recv() {
        let mut batch = collect_batch(first, || queue.try_recv().ok());
        if (2..MAX_BATCH).contains(&batch.len()) {
            std::thread::sleep(GATHER);
            fill_batch(&mut batch, || queue.try_recv().ok());
        }
        let started = Instant::now();
        let result = match &mut connection {
            Some(connection) => append(connection, &insert, &mut batch),
            None => open(&path, busy_timeout).and_then(|mut opened| {
                let result = append(&mut opened, &insert, &mut batch);
                connection = Some(opened);
                result
            }),
        };
        observe_commit("sqlite", started, batch.len(), result.is_ok());
        if let Err(e) = &result {
            tracing::error!(error = %e, appends = batch.len(), "audit append failed");
            // A connection that failed mid-transaction is not trusted again.
            connection = None;
        }
        for pending in batch {
            let _ = pending.done.send(result.clone());
        }
    }
}

fn write_error(e: rusqlite::Error) -> AuditError {
    AuditError::Write(e.to_string())
}

fn open(path: &Path, busy_timeout: Duration) -> Result<Connection, AuditError> {
    let connection = Connection::open(path).map_err(write_error)?;
    connection.busy_timeout(busy_timeout).map_err(write_error)?;
    // The pool that opened the database set WAL; these are per connection.
    connection
        .execute_batch("PRAGMA synchronous = FULL; PRAGMA temp_store = MEMORY;")
        .map_err(write_error)?;
    Ok(connection)
}

/// One transaction holding the chain lock: the head, every record sealed onto
/// it in order (in place: a failed batch's records are not used again), the
/// commit.
fn append(
    connection: &mut Connection,
    insert: &str,
    batch: &mut [PendingAppend],
) -> Result<(), AuditError> {
    let transaction = connection
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(write_error)?;
    let (mut seq, mut prev_hash): (i64, String) = transaction
        .prepare_cached(CHAIN_HEAD)
        .and_then(|mut head| head.query_row([], |row| Ok((row.get(0)?, row.get(1)?))))
        .map_err(write_error)?;
    {
        let mut insert = transaction.prepare_cached(insert).map_err(write_error)?;
        for r in batch.iter_mut().flat_map(|pending| &mut pending.records) {
            seq += 1;
            r.seal(seq, &prev_hash);
            insert
                .execute(params![
                    r.seq,
                    r.record_id,
                    r.recorded_at,
                    r.event,
                    r.outcome,
                    r.request_id,
                    r.issuance_id,
                    r.requester,
                    r.requester_kind,
                    r.actor,
                    r.issuer,
                    r.stack,
                    r.tags,
                    r.component,
                    r.owner,
                    r.rule,
                    r.provider,
                    r.role,
                    r.duration_seconds,
                    r.expires_at,
                    r.credential_id,
                    r.client_addr,
                    r.detail,
                    r.prev_hash,
                    r.hash,
                ])
                .map_err(write_error)?;
            prev_hash.clone_from(&r.hash);
        }
    }
    transaction.commit().map_err(write_error)
}
