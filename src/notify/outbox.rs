//! The delivery state of notifications (tables `notification_cursor` and
//! `notification_deliveries`, migration 0005), over the shared database.
//!
//! - [`scan`] queues every announcing audit record past the cursor, then moves
//!   the cursor; queuing is idempotent (`ON CONFLICT DO NOTHING`), so replicas
//!   scanning the same range at once, or a scan cut short by a crash, queue
//!   each record once.
//! - [`claim`] takes the oldest due message for one attempt: it moves
//!   `next_attempt_at` to the end of a lease and names the claimer, in one
//!   statement (PostgreSQL: `FOR UPDATE SKIP LOCKED`, so replicas take
//!   different messages; SQLite: writes are serialized). A claimer that dies
//!   leaves a message that is due again when its lease ends.
//! - [`delivered`], [`retry_at`] and [`give_up`] finish an attempt, only if the
//!   claim is still the caller's.
//!
//! Times are stored as fixed-width UTC text, so text order is time order.

use sqlx::Row;
use time::OffsetDateTime;

use super::records::{self, ReadError};
use super::render;
use crate::database::{format_timestamp, on_db, Database};

#[derive(Debug, Clone, thiserror::Error)]
pub enum OutboxError {
    #[error("the notification outbox could not be updated: {0}")]
    Database(String),
    #[error(transparent)]
    Read(#[from] ReadError),
}

fn db_error(e: sqlx::Error) -> OutboxError {
    OutboxError::Database(e.to_string())
}

/// How many audit records one scan looks at, at most.
const SCAN_BATCH: i64 = 500;

/// Queues the announcing records committed since the last scan, at most one
/// batch; call again while the report says more remain.
pub async fn scan(db: &Database) -> Result<ScanReport, OutboxError> {
    // The head first: every record up to it is committed and visible below.
    let head = records::head(db).await?;
    let cursor = on_db!(db, pool => {
        sqlx::query("SELECT scanned_seq FROM notification_cursor WHERE id = 1")
            .fetch_one(pool)
            .await
            .map_err(db_error)?
            .try_get::<i64, _>("scanned_seq")
            .map_err(db_error)?
    });
    if cursor >= head {
        return Ok(ScanReport::default());
    }
    let due = records::candidates(db, &render::ANNOUNCED, cursor, head, SCAN_BATCH).await?;
    let more = due.len() as i64 == SCAN_BATCH;
    let scanned_to = match (more, due.last()) {
        (true, Some(last)) => last.seq,
        _ => head,
    };
    let queued = due.len();
    on_db!(db, pool => {
        let mut tx = pool.begin().await.map_err(db_error)?;
        for candidate in &due {
            sqlx::query(
                "INSERT INTO notification_deliveries \
                 (seq, record_id, recorded_at, state, attempts, next_attempt_at) \
                 VALUES ($1, $2, $3, 'pending', 0, $3) ON CONFLICT (seq) DO NOTHING",
            )
            .bind(candidate.seq)
            .bind(&candidate.record_id)
            .bind(&candidate.recorded_at)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        }
        sqlx::query(
            "UPDATE notification_cursor SET scanned_seq = $1 WHERE id = 1 AND scanned_seq < $1",
        )
        .bind(scanned_to)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
    });
    Ok(ScanReport { queued, more })
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanReport {
    pub queued: usize,
    /// The scan stopped at its batch size; records past it remain.
    pub more: bool,
}

/// One message taken for one attempt.
#[derive(Debug, Clone)]
pub struct Claim {
    pub seq: i64,
    pub record_id: String,
    pub recorded_at: String,
    /// Attempts so far, this one included.
    pub attempts: i64,
    pub last_error: Option<String>,
}

/// Takes the oldest message due at `now` for `owner` until `lease_ends`.
pub async fn claim(
    db: &Database,
    owner: &str,
    now: OffsetDateTime,
    lease_ends: OffsetDateTime,
) -> Result<Option<Claim>, OutboxError> {
    // The outer conditions repeat the inner ones: on PostgreSQL a row another
    // replica claimed between the two reads is then left alone.
    let sql = |lock: &str| {
        format!(
            "UPDATE notification_deliveries \
             SET next_attempt_at = $1, lease_owner = $2, attempts = attempts + 1 \
             WHERE seq = (SELECT seq FROM notification_deliveries \
                          WHERE state = 'pending' AND next_attempt_at <= $3 \
                          ORDER BY seq LIMIT 1 {lock}) \
               AND state = 'pending' AND next_attempt_at <= $3 \
             RETURNING seq, record_id, recorded_at, attempts, last_error"
        )
    };
    let sql = match db {
        Database::Sqlite(_) => sql(""),
        Database::Postgres(_) => sql("FOR UPDATE SKIP LOCKED"),
    };
    on_db!(db, pool => {
        let Some(row) = sqlx::query(&sql)
            .bind(format_timestamp(lease_ends))
            .bind(owner)
            .bind(format_timestamp(now))
            .fetch_optional(pool)
            .await
            .map_err(db_error)?
        else {
            return Ok(None);
        };
        Ok(Some(Claim {
            seq: row.try_get("seq").map_err(db_error)?,
            record_id: row.try_get("record_id").map_err(db_error)?,
            recorded_at: row.try_get("recorded_at").map_err(db_error)?,
            attempts: row.try_get("attempts").map_err(db_error)?,
            last_error: row.try_get("last_error").map_err(db_error)?,
        }))
    })
}

/// Ends `owner`'s claim on `seq` in `state`; false if the claim had lapsed
/// and another dispatcher holds the message now.
async fn finish(
    db: &Database,
    seq: i64,
    owner: &str,
    set: &str,
    binds: (String, Option<String>),
) -> Result<bool, OutboxError> {
    let sql = format!(
        "UPDATE notification_deliveries SET {set}, lease_owner = NULL \
         WHERE seq = $3 AND lease_owner = $4 AND state = 'pending'"
    );
    on_db!(db, pool => {
        let done = sqlx::query(&sql)
            .bind(binds.0)
            .bind(binds.1)
            .bind(seq)
            .bind(owner)
            .execute(pool)
            .await
            .map_err(db_error)?;
        Ok(done.rows_affected() == 1)
    })
}

pub async fn delivered(
    db: &Database,
    seq: i64,
    owner: &str,
    now: OffsetDateTime,
) -> Result<bool, OutboxError> {
    finish(
        db,
        seq,
        owner,
        "state = 'delivered', finished_at = $1, last_error = COALESCE($2, last_error)",
        (format_timestamp(now), None),
    )
    .await
}

pub async fn retry_at(
    db: &Database,
    seq: i64,
    owner: &str,
    next: OffsetDateTime,
    error: &str,
) -> Result<bool, OutboxError> {
    finish(
        db,
        seq,
        owner,
        "next_attempt_at = $1, last_error = $2",
        (format_timestamp(next), Some(error.to_owned())),
    )
    .await
}

pub async fn give_up(
    db: &Database,
    seq: i64,
    owner: &str,
    now: OffsetDateTime,
    error: &str,
) -> Result<bool, OutboxError> {
    finish(
        db,
        seq,
        owner,
        "state = 'given_up', finished_at = $1, last_error = $2",
        (format_timestamp(now), Some(error.to_owned())),
    )
    .await
}
