//! The audit chain store over the shared [`Database`] handle, with one behaviour
//! on SQLite and PostgreSQL:
//!
//! - Appends go through one writer per process (PostgreSQL: a task here;
//!   SQLite: a thread, `sqlite_writer.rs`) that groups every pending append
//!   into one transaction (group commit): one fsync serves many requests, and
//!   no caller is answered before its records are committed.
//! - Each transaction takes the chain lock first (SQLite: `BEGIN IMMEDIATE`;
//!   PostgreSQL: `SELECT … FOR UPDATE` on the single `audit_chain` row), reads the
//!   head, and seals each record onto it. Instances sharing a database therefore
//!   append one after another: one chain, no forks, no gaps.
//! - A batch that PostgreSQL refuses for a record's contents (a data
//!   exception) is retried one append at a time, so only the append that
//!   carried the bad record fails; every lock wait is bounded (`database.rs`).
//! - Pruning deletes a prefix, moves the chain's start and appends the
//!   `audit_pruned` record that names the new start, which `verify` requires.
//!
//! The SQL is the same text for both backends; `on_db!` and the macros below
//! expand it once per driver so there is one copy to read and keep right.

use sqlx::{QueryBuilder, Row};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use super::chain::{ChainBreak, ChainStart, ChainSummary, ChainVerifier, Checkpoint, StoredRecord};
use super::sqlite_writer;
use super::{
    AuditError, AuditEvent, AuditPage, AuditQuery, AuditRecord, AuditStore, Bind, Guarded,
    IssuanceFilter, Outcome, Statement, AGENT_ISSUANCES,
};
use crate::database::{format_timestamp, on_db, parse_timestamp, Database};
use crate::metrics as metrics_names;

/// At most this many appends share one transaction; bounded so that one batch
/// stays well inside SQLite's limit on bound parameters.
pub(super) const MAX_BATCH: usize = 128;
const PAGE: u32 = 1000;
pub(super) const COLUMNS: &str = "seq, record_id, recorded_at, event, outcome, request_id, issuance_id, requester, \
     requester_kind, actor, issuer, stack, tags, component, owner, rule, provider, role, duration_seconds, \
     expires_at, credential_id, client_addr, detail, prev_hash, hash";

/// Runs `$body` (which uses `$conn`, a connection) inside a transaction holding
/// the chain lock, committing on `Ok` and rolling back on `Err`. With
/// `then rollback`, it rolls back on `Ok` too: a dry run of an append.
macro_rules! with_chain_lock {
    ($db:expr, $conn:ident => $body:expr) => {
        with_chain_lock!($db, $conn => $body, commit = true)
    };
    ($db:expr, $conn:ident => $body:expr, then rollback) => {
        with_chain_lock!($db, $conn => $body, commit = false)
    };
    ($db:expr, $conn:ident => $body:expr, commit = $commit:expr) => {
        match $db {
            Database::Sqlite(pool) => {
                let mut guard = pool.acquire().await.map_err(write_error)?;
                sqlx::query("BEGIN IMMEDIATE")
                    .execute(&mut *guard)
                    .await
                    .map_err(write_error)?;
                let result: Result<_, AuditError> = async {
                    let $conn = &mut *guard;
                    $body
                }
                .await;
                let result = match result {
                    Ok(value) => sqlx::query(if $commit { "COMMIT" } else { "ROLLBACK" })
                        .execute(&mut *guard)
                        .await
                        .map(|_| value)
                        .map_err(write_error),
                    Err(e) => Err(e),
                };
                if result.is_err() {
                    // Never hand a connection that may still be inside a
                    // transaction back to the pool.
                    let _ = sqlx::query("ROLLBACK").execute(&mut *guard).await;
                    guard.close_on_drop();
                }
                result
            }
            Database::Postgres(pool) => {
                let mut tx = pool.begin().await.map_err(write_error)?;
                sqlx::query("SELECT 1 FROM audit_chain WHERE id = 1 FOR UPDATE")
                    .execute(&mut *tx)
                    .await
                    .map_err(write_error)?;
                let value = async {
                    let $conn = &mut *tx;
                    $body
                }
                .await?;
                if $commit {
                    tx.commit().await.map_err(write_error)?;
                } else {
                    tx.rollback().await.map_err(write_error)?;
                }
                Ok(value)
            }
        }
    };
}

/// The chain's head inside a locked transaction: the last record, or where the
/// chain starts if no record is stored yet. One statement, so one round trip
/// to PostgreSQL; SQLite's writer runs the same text.
pub(super) const CHAIN_HEAD: &str =
    "SELECT COALESCE((SELECT seq FROM audit_records ORDER BY seq DESC LIMIT 1), start_seq - 1), \
            COALESCE((SELECT hash FROM audit_records ORDER BY seq DESC LIMIT 1), start_prev_hash) \
     FROM audit_chain WHERE id = 1";

macro_rules! chain_head {
    ($conn:expr) => {{
        let head: (i64, String) = sqlx::query_as(CHAIN_HEAD)
            .fetch_one(&mut *$conn)
            .await
            .map_err(write_error)?;
        head
    }};
}

/// Seals `$records` (stored records, owned) onto the head and inserts them.
macro_rules! append_locked {
    ($conn:expr, $records:expr) => {{
        let (mut seq, mut prev_hash) = chain_head!($conn);
        let mut sealed: Vec<StoredRecord> = Vec::new();
        for mut stored in $records {
            seq += 1;
            stored.seal(seq, &prev_hash);
            prev_hash = stored.hash.clone();
            sealed.push(stored);
        }
        if !sealed.is_empty() {
            let mut insert = QueryBuilder::new(format!("INSERT INTO audit_records ({COLUMNS}) "));
            insert.push_values(&sealed, |mut row, r| {
                row.push_bind(r.seq)
                    .push_bind(&r.record_id)
                    .push_bind(&r.recorded_at)
                    .push_bind(&r.event)
                    .push_bind(&r.outcome)
                    .push_bind(&r.request_id)
                    .push_bind(&r.issuance_id)
                    .push_bind(&r.requester)
                    .push_bind(&r.requester_kind)
                    .push_bind(&r.actor)
                    .push_bind(&r.issuer)
                    .push_bind(&r.stack)
                    .push_bind(&r.tags)
                    .push_bind(&r.component)
                    .push_bind(&r.owner)
                    .push_bind(&r.rule)
                    .push_bind(&r.provider)
                    .push_bind(&r.role)
                    .push_bind(r.duration_seconds)
                    .push_bind(&r.expires_at)
                    .push_bind(&r.credential_id)
                    .push_bind(&r.client_addr)
                    .push_bind(&r.detail)
                    .push_bind(&r.prev_hash)
                    .push_bind(&r.hash);
            });
            insert
                .build()
                .execute(&mut *$conn)
                .await
                .map_err(insert_error)?;
        }
        sealed
    }};
}

/// Runs one guarded-change statement; the number of rows it changed.
macro_rules! execute_statement {
    ($conn:expr, $statement:expr) => {{
        let statement: &Statement = $statement;
        let mut query = sqlx::query(&statement.sql);
        for bind in &statement.binds {
            query = match bind {
                Bind::Text(text) => query.bind(text.clone()),
                Bind::Int(number) => query.bind(*number),
            };
        }
        query
            .execute(&mut *$conn)
            .await
            .map_err(write_error)?
            .rows_affected()
    }};
}

macro_rules! stored_from_row {
    ($row:expr) => {{
        let row = $row;
        StoredRecord {
            seq: row.try_get("seq").map_err(read_error)?,
            record_id: row.try_get("record_id").map_err(read_error)?,
            recorded_at: row.try_get("recorded_at").map_err(read_error)?,
            event: row.try_get("event").map_err(read_error)?,
            outcome: row.try_get("outcome").map_err(read_error)?,
            request_id: row.try_get("request_id").map_err(read_error)?,
            issuance_id: row.try_get("issuance_id").map_err(read_error)?,
            requester: row.try_get("requester").map_err(read_error)?,
            requester_kind: row.try_get("requester_kind").map_err(read_error)?,
            actor: row.try_get("actor").map_err(read_error)?,
            issuer: row.try_get("issuer").map_err(read_error)?,
            stack: row.try_get("stack").map_err(read_error)?,
            tags: row.try_get("tags").map_err(read_error)?,
            component: row.try_get("component").map_err(read_error)?,
            owner: row.try_get("owner").map_err(read_error)?,
            rule: row.try_get("rule").map_err(read_error)?,
            provider: row.try_get("provider").map_err(read_error)?,
            role: row.try_get("role").map_err(read_error)?,
            duration_seconds: row.try_get("duration_seconds").map_err(read_error)?,
            expires_at: row.try_get("expires_at").map_err(read_error)?,
            credential_id: row.try_get("credential_id").map_err(read_error)?,
            client_addr: row.try_get("client_addr").map_err(read_error)?,
            detail: row.try_get("detail").map_err(read_error)?,
            prev_hash: row.try_get("prev_hash").map_err(read_error)?,
            hash: row.try_get("hash").map_err(read_error)?,
        }
    }};
}

/// Lets the pruning transaction delete: SQLite drops the delete trigger (DDL is
/// transactional there, so it comes back on rollback too); PostgreSQL sets a
/// transaction-local flag its trigger honours.
macro_rules! allow_pruning {
    ($conn:expr) => {
        for statement in pruning_statements(&*$conn, true) {
            sqlx::query(statement)
                .execute(&mut *$conn)
                .await
                .map_err(write_error)?;
        }
    };
}

macro_rules! forbid_pruning {
    ($conn:expr) => {
        for statement in pruning_statements(&*$conn, false) {
            sqlx::query(statement)
                .execute(&mut *$conn)
                .await
                .map_err(write_error)?;
        }
    };
}
trait PruningDialect {
    fn statements(allow: bool) -> &'static [&'static str];
}

impl PruningDialect for sqlx::SqliteConnection {
    fn statements(allow: bool) -> &'static [&'static str] {
        if allow {
            &["DROP TRIGGER audit_records_no_delete"]
        } else {
            &[
                "CREATE TRIGGER audit_records_no_delete BEFORE DELETE ON audit_records \
               BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END",
            ]
        }
    }
}

impl PruningDialect for sqlx::PgConnection {
    fn statements(allow: bool) -> &'static [&'static str] {
        if allow {
            // A prune deletes many rows in one statement: give it longer than the
            // connection's statement_timeout (database.rs) allows an append.
            &[
                "SET LOCAL stackpass.pruning = 'on'",
                "SET LOCAL statement_timeout = '15min'",
            ]
        } else {
            &["SET LOCAL stackpass.pruning = 'off'"]
        }
    }
}

fn pruning_statements<C: PruningDialect>(_: &C, allow: bool) -> &'static [&'static str] {
    C::statements(allow)
}

fn write_error(e: sqlx::Error) -> AuditError {
    AuditError::Write(e.to_string())
}

/// A PostgreSQL data exception (SQLSTATE class 22: a character the database's
/// encoding cannot hold, say) is the records' fault, not the store's.
fn insert_error(e: sqlx::Error) -> AuditError {
    match &e {
        sqlx::Error::Database(db)
            if db
                .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .is_some_and(|pg| pg.code().starts_with("22")) =>
        {
            AuditError::Unstorable(e.to_string())
        }
        _ => write_error(e),
    }
}

fn read_error(e: sqlx::Error) -> AuditError {
    AuditError::Read(e.to_string())
}

pub(super) struct PendingAppend {
    /// Converted by the caller, so the writer (one at a time) only seals and
    /// inserts them.
    pub records: Vec<StoredRecord>,
    pub done: oneshot::Sender<Result<(), AuditError>>,
}

/// `first` and whatever else is waiting (`next`), up to `MAX_BATCH`: the
/// appends one transaction commits.
pub(super) fn collect_batch(
    first: PendingAppend,
    next: impl FnMut() -> Option<PendingAppend>,
) -> Vec<PendingAppend> {
    let mut batch = vec![first];
    fill_batch(&mut batch, next);
    batch
}

/// Adds whatever is waiting (`next`) to `batch`, up to `MAX_BATCH`.
pub(super) fn fill_batch(
    batch: &mut Vec<PendingAppend>,
    mut next: impl FnMut() -> Option<PendingAppend>,
) {
    while batch.len() < MAX_BATCH {
        match next() {
            Some(pending) => batch.push(pending),
            None => break,
        }
    }
}

/// What retention pruning did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PruneReport {
    pub records_pruned: i64,
    /// The chain now starts after this record (its seq and hash).
    pub sealed_at: Option<Checkpoint>,
}

pub struct SqlAuditStore {
    db: Database,
    writer: mpsc::Sender<PendingAppend>,
}

impl SqlAuditStore {
    /// The chain store over `db`, with its group-committing writer started:
    /// SQLite's on a thread of its own (`sqlite_writer.rs`), PostgreSQL's as
    /// a task.
    pub fn new(db: Database) -> Self {
        let writer = match &db {
            Database::Sqlite(pool) => sqlite_writer::spawn(
                pool.connect_options().get_filename().to_owned(),
                // `Database::open` sets the pool's acquire timeout and the
                // connections' busy timeout from the one `busy_timeout`.
                pool.options().get_acquire_timeout(),
                4 * MAX_BATCH,
            ),
            Database::Postgres(_) => {
                let (writer, queue) = mpsc::channel(4 * MAX_BATCH);
                tokio::spawn(write_loop(db.clone(), queue));
                writer
            }
        };
        SqlAuditStore { db, writer }
    }

    async fn append_batch(db: &Database, records: &[&StoredRecord]) -> Result<(), AuditError> {
        with_chain_lock!(db, conn => {
            append_locked!(conn, records.iter().map(|&record| record.clone()));
            Ok(())
        })
    }

    /// Where the chain starts: the genesis, or the seal of the last pruning.
    pub async fn chain_start(&self) -> Result<ChainStart, AuditError> {
        let (first_seq, prev_hash): (i64, String) = on_db!(&self.db, pool => {
            sqlx::query_as("SELECT start_seq, start_prev_hash FROM audit_chain WHERE id = 1")
                .fetch_one(pool)
                .await
                .map_err(read_error)?
        });
        Ok(ChainStart {
            first_seq,
            prev_hash,
        })
    }

    /// Calls `each` for every record matching `query`, in chain order, a page at a
    /// time, so exports and verification need constant memory.
    pub async fn for_each<E: From<AuditError>>(
        &self,
        mut query: AuditQuery,
        mut each: impl FnMut(StoredRecord) -> Result<(), E>,
    ) -> Result<(), E> {
        query.limit = PAGE;
        loop {
            let page = AuditStore::query(self, &query).await?;
            for record in page.records {
                each(record)?;
            }
            match page.next_after_seq {
                Some(after) => query.after_seq = Some(after),
                None => return Ok(()),
            }
        }
    }

    /// Walks the whole chain. The outer error is the store failing; the inner one
    /// is the chain's first broken link.
    pub async fn verify(
        &self,
        checkpoint: Option<Checkpoint>,
    ) -> Result<Result<ChainSummary, ChainBreak>, AuditError> {
        let start = self.chain_start().await?;
        let mut verifier = ChainVerifier::new(start, checkpoint);
        let mut broken = None;
        self.for_each(AuditQuery::default(), |record| -> Result<(), AuditError> {
            if broken.is_none() {
                if let Err(e) = verifier.check(&record) {
                    broken = Some(e);
                }
            }
            Ok(())
        })
        .await?;
        Ok(match broken {
            Some(e) => Err(e),
            None => verifier.finish(),
        })
    }

    /// The current head, to be kept somewhere else as an anchor.
    pub async fn checkpoint(&self) -> Result<Checkpoint, AuditError> {
        let start = self.chain_start().await?;
        let head: Option<(i64, String)> = on_db!(&self.db, pool => {
            sqlx::query_as("SELECT seq, hash FROM audit_records ORDER BY seq DESC LIMIT 1")
                .fetch_optional(pool)
                .await
                .map_err(read_error)?
        });
        let (seq, hash) = head.unwrap_or((start.first_seq - 1, start.prev_hash));
        Ok(Checkpoint { seq, hash })
    }

    /// Deletes the oldest records, all recorded before `before`, and seals the
    /// chain: the last pruned record's hash becomes the new starting point, and an
    /// `audit_pruned` record saying what was removed is appended in the same
    /// transaction. The remaining chain still verifies from its new start.
    pub async fn prune(
        &self,
        before: OffsetDateTime,
        request_id: &str,
    ) -> Result<PruneReport, AuditError> {
        let cutoff = format_timestamp(before);
        let request_id = request_id.to_owned();
        with_chain_lock!(&self.db, conn => {
            let (head_seq, _) = chain_head!(conn);
            // Only a prefix of the chain can go: stop before the first record that
            // is not older than the cutoff.
            let first_kept: Option<i64> = sqlx::query_scalar("SELECT MIN(seq) FROM audit_records WHERE recorded_at >= $1")
                .bind(&cutoff)
                .fetch_one(&mut *conn)
                .await
                .map_err(write_error)?;
            let last_pruned = first_kept.map_or(head_seq, |seq| seq - 1);
            let seal: Option<(i64, String)> = sqlx::query_as("SELECT seq, hash FROM audit_records WHERE seq = $1")
                .bind(last_pruned)
                .fetch_optional(&mut *conn)
                .await
                .map_err(write_error)?;
            let Some((sealed_seq, sealed_hash)) = seal else {
                return Ok(PruneReport { records_pruned: 0, sealed_at: None });
            };
            let (previous_start_seq, _): (i64, String) =
                sqlx::query_as("SELECT start_seq, start_prev_hash FROM audit_chain WHERE id = 1")
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(write_error)?;
            allow_pruning!(conn);
            let deleted = sqlx::query("DELETE FROM audit_records WHERE seq <= $1")
                .bind(sealed_seq)
                .execute(&mut *conn)
                .await
                .map_err(write_error)?
                .rows_affected() as i64;
            sqlx::query("UPDATE audit_chain SET start_seq = $1, start_prev_hash = $2 WHERE id = 1")
                .bind(sealed_seq + 1)
                .bind(&sealed_hash)
                .execute(&mut *conn)
                .await
                .map_err(write_error)?;
            forbid_pruning!(conn);
            // The record that proves the new start: `verify` refuses a chain whose
            // start no chained audit_pruned record names exactly.
            let mut record = AuditRecord::new(AuditEvent::AuditPruned, Outcome::Pruned, &request_id);
            record.detail = Some(serde_json::json!({
                "records_pruned": deleted,
                "previous_start_seq": previous_start_seq,
                "new_start_seq": sealed_seq + 1,
                "new_start_prev_hash": sealed_hash,
                "pruned_through_seq": sealed_seq,
                "pruned_through_hash": sealed_hash,
                "recorded_before": cutoff,
            }));
            append_locked!(conn, [record.to_stored()]);
            Ok(PruneReport {
                records_pruned: deleted,
                sealed_at: Some(Checkpoint { seq: sealed_seq, hash: sealed_hash }),
            })
        })
    }
}

/// Commit latency and group size on `/metrics`; the store label tells a
/// replica on SQLite from one on PostgreSQL.
pub(super) fn observe_commit(
    store: &'static str,
    started: std::time::Instant,
    appends: usize,
    committed: bool,
) {
    if committed {
        metrics::histogram!(metrics_names::AUDIT_COMMIT_SECONDS, "store" => store)
            .record(started.elapsed().as_secs_f64());
        metrics::histogram!(metrics_names::AUDIT_COMMIT_APPENDS, "store" => store)
            .record(appends as f64);
    } else {
        metrics::counter!(metrics_names::AUDIT_COMMIT_FAILURES, "store" => store).increment(1);
    }
}

/// PostgreSQL's group-commit writer: takes every append waiting in the queue
/// (up to `MAX_BATCH`), commits them in one transaction, then answers each
/// caller.
async fn write_loop(db: Database, mut queue: mpsc::Receiver<PendingAppend>) {
    while let Some(first) = queue.recv().await {
        let batch = collect_batch(first, || queue.try_recv().ok());
        let records: Vec<&StoredRecord> = batch.iter().flat_map(|p| p.records.iter()).collect();
        let started = std::time::Instant::now();
        let result = SqlAuditStore::append_batch(&db, &records).await;
        observe_commit("postgres", started, batch.len(), result.is_ok());
        match result {
            // One request's records the database cannot hold must not fail the
            // others': commit each append on its own, so only that one fails.
            Err(AuditError::Unstorable(_)) if batch.len() > 1 => {
                for pending in batch {
                    let records: Vec<&StoredRecord> = pending.records.iter().collect();
                    let result = SqlAuditStore::append_batch(&db, &records).await;
                    if let Err(e) = &result {
                        tracing::error!(error = %e, "audit append failed");
                    }
                    let _ = pending.done.send(result);
                }
            }
            result => {
                if let Err(e) = &result {
                    tracing::error!(error = %e, appends = batch.len(), "audit append failed");
                }
                for pending in batch {
                    let _ = pending.done.send(result.clone());
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl AuditStore for SqlAuditStore {
    async fn append(&self, records: Vec<AuditRecord>) -> Result<(), AuditError> {
        let (done, answer) = oneshot::channel();
        let gone = || AuditError::Write("the audit writer has stopped".into());
        let records = records.iter().map(AuditRecord::to_stored).collect();
        self.writer
            .send(PendingAppend { records, done })
            .await
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    async fn head(&self) -> Result<Checkpoint, AuditError> {
        self.checkpoint().await
    }

    async fn append_guarded(
        &self,
        change: Guarded,
        records: Vec<AuditRecord>,
    ) -> Result<bool, AuditError> {
        // Not through the group-commit writer: a lost compare-and-set must not
        // roll back other callers' records. The chain lock still orders it.
        with_chain_lock!(&self.db, conn => {
            if execute_statement!(conn, &change.check) != 1 {
                return Ok(false);
            }
            for statement in &change.then {
                execute_statement!(conn, statement);
            }
            append_locked!(conn, records.iter().map(AuditRecord::to_stored));
            Ok(true)
        })
    }

    async fn ping(&self) -> Result<(), AuditError> {
        let probe = AuditRecord::new(AuditEvent::Decision, Outcome::Allowed, "readiness-probe");
        with_chain_lock!(&self.db, conn => {
            append_locked!(conn, [probe.to_stored()]);
            Ok(())
        }, then rollback)?;
        let now = format_timestamp(OffsetDateTime::now_utc());
        on_db!(&self.db, pool => {
            sqlx::query("UPDATE audit_readiness SET checked_at = $1 WHERE id = 1")
                .bind(now)
                .execute(pool)
                .await
                .map_err(write_error)?;
        });
        Ok(())
    }

    async fn agent_issuances(
        &self,
        filter: &IssuanceFilter,
        since: OffsetDateTime,
    ) -> Result<Vec<OffsetDateTime>, AuditError> {
        let since = format_timestamp(since);
        let (column, value) = filter.column();
        // Timestamps are fixed-width UTC text, so text order is time order.
        let sql = format!(
            "SELECT recorded_at FROM audit_records WHERE recorded_at >= $1 AND {AGENT_ISSUANCES} \
             AND {column} = $2 ORDER BY recorded_at"
        );
        let times: Vec<String> = on_db!(&self.db, pool => {
            sqlx::query_scalar(&sql)
                .bind(&since)
                .bind(value)
                .fetch_all(pool)
                .await
                .map_err(read_error)?
        });
        times
            .iter()
            .map(|t| {
                parse_timestamp(t).ok_or_else(|| {
                    AuditError::Read(format!("a stored timestamp {t:?} does not parse"))
                })
            })
            .collect()
    }

    async fn query(&self, query: &AuditQuery) -> Result<AuditPage, AuditError> {
        let limit = query.limit.clamp(1, PAGE);
        let since = query.since.map(format_timestamp);
        let until = query.until.map(format_timestamp);
        let records = on_db!(&self.db, pool => {
            let mut sql = QueryBuilder::new(format!("SELECT {COLUMNS} FROM audit_records WHERE 1 = 1"));
            for (column, value) in [
                ("requester", &query.requester),
                ("stack", &query.stack),
                ("provider", &query.provider),
                ("outcome", &query.outcome),
            ] {
                if let Some(value) = value {
                    sql.push(format!(" AND {column} = ")).push_bind(value);
                }
            }
            if let Some(since) = &since {
                sql.push(" AND recorded_at >= ").push_bind(since);
            }
            if let Some(until) = &until {
                sql.push(" AND recorded_at < ").push_bind(until);
            }
            if let Some(after) = query.after_seq {
                sql.push(" AND seq > ").push_bind(after);
            }
            sql.push(" ORDER BY seq LIMIT ").push_bind(i64::from(limit) + 1);
            let rows = sql.build().fetch_all(pool).await.map_err(read_error)?;
            let mut records = Vec::with_capacity(rows.len());
            for row in &rows {
                records.push(stored_from_row!(row));
            }
            records
        });
        let mut records = records;
        let more = records.len() > limit as usize;
        records.truncate(limit as usize);
        Ok(AuditPage {
            next_after_seq: if more {
                records.last().map(|r| r.seq)
            } else {
                None
            },
            records,
        })
    }
}
