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
//!
//! WAL checkpoints (copying committed pages from the WAL into the database
//! file, then fsyncing it) run on a second thread, `audit-checkpointer`, at
//! most every `CHECKPOINT_INTERVAL` while appends arrive. SQLite's default is
//! to checkpoint inside the commit that crosses 1,000 WAL pages, which at a
//! thousand issuances a second stalled one commit every ~60 ms for the copy
//! and an extra fsync: that was most of the fixed-rate tail. The writer keeps
//! SQLite's own checkpoint only as a backstop at `BACKSTOP_PAGES`, for when the
//! checkpointer falls behind; it is also what resets the WAL to its start, as
//! under steady load a checkpoint in another thread rarely sees the WAL still.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, TransactionBehavior};
use tokio::sync::mpsc;

use super::store::{collect_batch, observe_commit, PendingAppend, CHAIN_HEAD, COLUMNS};
use super::AuditError;

/// How long the checkpointer lets commits gather before it copies them: one
/// database fsync serves them all.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);
/// The WAL size (in pages, ~4 KiB each) at which the writer checkpoints
/// itself; SQLite's default is 1,000.
const BACKSTOP_PAGES: u32 = 10_000;

/// Starts the writer and checkpointer threads for the database file at
/// `path`; appends go to the returned queue. Connections are opened on first
/// use and again after any failure, so a file that cannot be opened fails
/// appends (and readiness) rather than the broker's start.
pub(super) fn spawn(
    path: PathBuf,
    busy_timeout: Duration,
    queue_size: usize,
) -> mpsc::Sender<PendingAppend> {
    let (sender, queue) = mpsc::channel(queue_size);
    // One pending nudge is enough: the checkpointer copies whatever the WAL
    // holds when it runs.
    let (nudge, nudges) = sync_channel(1);
    let checkpointer_path = path.clone();
    std::thread::Builder::new()
        .name("audit-checkpointer".into())
        .spawn(move || checkpoint_loop(&checkpointer_path, nudges))
        .expect("the OS refused a thread for the audit checkpointer");
    std::thread::Builder::new()
        .name("audit-writer".into())
        .spawn(move || write_loop(path, busy_timeout, queue, nudge))
        .expect("the OS refused a thread for the audit writer");
    sender
}

fn write_loop(
    path: PathBuf,
    busy_timeout: Duration,
    mut queue: mpsc::Receiver<PendingAppend>,
    nudge: SyncSender<()>,
) {
    let insert = format!(
        "INSERT INTO audit_records ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, \
         ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25)"
    );
    let mut connection: Option<Connection> = None;
    while let Some(first) = queue.blocking_recv() {
        let mut batch = collect_batch(first, || queue.try_recv().ok());
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
        if result.is_ok() {
            // Full means a checkpoint is already due.
            let _ = nudge.try_send(());
        }
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
        .execute_batch(&format!(
            "PRAGMA synchronous = FULL; PRAGMA temp_store = MEMORY; \
             PRAGMA wal_autocheckpoint = {BACKSTOP_PAGES};"
        ))
        .map_err(write_error)?;
    Ok(connection)
}

/// Waits for a nudge, lets `CHECKPOINT_INTERVAL` of commits gather, and
/// checkpoints them: PASSIVE, so it never waits for or blocks the writer or
/// readers, and copies what it can. Ends when the writer does.
fn checkpoint_loop(path: &Path, nudges: Receiver<()>) {
    let mut connection: Option<Connection> = None;
    while nudges.recv().is_ok() {
        std::thread::sleep(CHECKPOINT_INTERVAL);
        if nudges.try_recv() == Err(TryRecvError::Disconnected) {
            return;
        }
        let result = match &connection {
            Some(connection) => checkpoint(connection),
            None => Connection::open(path).and_then(|opened| {
                opened.execute_batch("PRAGMA synchronous = FULL;")?;
                checkpoint(&opened)?;
                connection = Some(opened);
                Ok(())
            }),
        };
        if let Err(e) = result {
            // The writer's backstop checkpoint still bounds the WAL.
            tracing::warn!(error = %e, "audit WAL checkpoint failed; will retry on the next commit");
            connection = None;
        }
    }
}

fn checkpoint(connection: &Connection) -> rusqlite::Result<()> {
    connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
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

#[cfg(test)]
mod tests {
    use crate::audit::{AuditEvent, AuditRecord, AuditStore, Outcome, SqlAuditStore};
    use crate::database::Database;
    use std::time::{Duration, Instant};

    /// Appends reach the database file itself shortly after they commit,
    /// through the checkpointer: the writer's own checkpoint waits for
    /// `BACKSTOP_PAGES`, far more than these records fill.
    #[tokio::test]
    async fn committed_pages_are_checkpointed_into_the_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("audit.db");
        let url = format!("sqlite://{}", file.display());
        let db = Database::open(&url, Duration::from_secs(1)).await.unwrap();
        let store = SqlAuditStore::new(db.clone());
        store
            .append(vec![AuditRecord::new(
                AuditEvent::Decision,
                Outcome::Allowed,
                "first",
            )])
            .await
            .unwrap();
        // Whatever is in the file once that first commit is checkpointed.
        tokio::time::sleep(super::CHECKPOINT_INTERVAL * 3).await;
        let before = std::fs::metadata(&file).unwrap().len();

        for append in 0..40 {
            let records = (0..10)
                .map(|i| {
                    let mut record = AuditRecord::new(
                        AuditEvent::Decision,
                        Outcome::Allowed,
                        &format!("request-{append}-{i}"),
                    );
                    record.detail = Some(serde_json::json!({ "padding": "x".repeat(500) }));
                    record
                })
                .collect();
            store.append(records).await.unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let grown = loop {
            let size = std::fs::metadata(&file).unwrap().len();
            if size >= before + 200 * 1024 || Instant::now() > deadline {
                break size;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(
            grown >= before + 200 * 1024,
            "400 records of ~1 KB should be in the database file: {before} -> {grown} bytes"
        );
        let summary = store.verify(None).await.unwrap().unwrap();
        assert_eq!(summary.records, 401);
    }
}
