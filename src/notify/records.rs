//! Reading the audit records that notifications are made from, straight from
//! `audit_records` (read only). Kept here rather than in the audit store's
//! trait: the dispatcher needs a few columns by `seq`, nothing the broker's
//! audit reads are for.

use sqlx::Row;

use crate::audit::{AuditEvent, Outcome};
use crate::database::{on_db, Database};

#[derive(Debug, Clone, thiserror::Error)]
#[error("the audit log could not be read for notifications: {0}")]
pub struct ReadError(String);

fn read_error(e: sqlx::Error) -> ReadError {
    ReadError(e.to_string())
}

/// What the scan needs of a record to queue it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub seq: i64,
    pub record_id: String,
    pub recorded_at: String,
}

/// The columns a message is rendered from, as stored.
#[derive(Debug, Clone, Default)]
pub struct SourceRecord {
    pub seq: i64,
    pub record_id: String,
    pub recorded_at: String,
    pub event: String,
    pub outcome: String,
    pub request_id: String,
    pub requester: Option<String>,
    pub actor: Option<String>,
    pub stack: Option<String>,
    pub provider: Option<String>,
    pub rule: Option<String>,
    pub role: Option<String>,
    pub duration_seconds: Option<i64>,
    /// The stored JSON detail; text that is not JSON is kept as a string.
    pub detail: Option<serde_json::Value>,
}

impl SourceRecord {
    pub fn event_is(&self, event: AuditEvent, outcome: Outcome) -> bool {
        self.event == event.as_str() && self.outcome == outcome.as_str()
    }

    /// A text field of the detail.
    pub fn detail_str(&self, key: &str) -> Option<&str> {
        self.detail.as_ref()?.get(key)?.as_str()
    }
}

/// The highest committed `seq` (0 for an empty log). Records are committed in
/// `seq` order (the chain lock is held until commit), so every record up to
/// this one is visible to any later statement.
pub async fn head(db: &Database) -> Result<i64, ReadError> {
    on_db!(db, pool => {
        let row = sqlx::query("SELECT COALESCE(MAX(seq), 0) AS head FROM audit_records")
            .fetch_one(pool)
            .await
            .map_err(read_error)?;
        row.try_get::<i64, _>("head").map_err(read_error)
    })
}

/// The records of the `announced` kinds with `after < seq <= upto`, oldest
/// first.
pub async fn candidates(
    db: &Database,
    announced: &[(AuditEvent, Outcome)],
    after: i64,
    upto: i64,
    limit: i64,
) -> Result<Vec<Candidate>, ReadError> {
    // Built from fixed names, never from input.
    let announced = announced
        .iter()
        .map(|(e, o)| format!("(event = '{}' AND outcome = '{}')", e.as_str(), o.as_str()))
        .collect::<Vec<_>>()
        .join(" OR ");
    let sql = format!(
        "SELECT seq, record_id, recorded_at FROM audit_records \
         WHERE seq > $1 AND seq <= $2 AND ({announced}) ORDER BY seq LIMIT $3"
    );
    on_db!(db, pool => {
        let rows = sqlx::query(&sql)
            .bind(after)
            .bind(upto)
            .bind(limit)
            .fetch_all(pool)
            .await
            .map_err(read_error)?;
        rows.iter()
            .map(|row| {
                Ok(Candidate {
                    seq: row.try_get("seq").map_err(read_error)?,
                    record_id: row.try_get("record_id").map_err(read_error)?,
                    recorded_at: row.try_get("recorded_at").map_err(read_error)?,
                })
            })
            .collect()
    })
}

/// The record at `seq`, if it is still there (pruning removes old ones).
pub async fn read(db: &Database, seq: i64) -> Result<Option<SourceRecord>, ReadError> {
    const SQL: &str = "SELECT seq, record_id, recorded_at, event, outcome, request_id, \
        requester, actor, stack, provider, rule, role, duration_seconds, detail \
        FROM audit_records WHERE seq = $1";
    on_db!(db, pool => {
        let Some(row) = sqlx::query(SQL)
            .bind(seq)
            .fetch_optional(pool)
            .await
            .map_err(read_error)?
        else {
            return Ok(None);
        };
        let detail: Option<String> = row.try_get("detail").map_err(read_error)?;
        Ok(Some(SourceRecord {
            seq: row.try_get("seq").map_err(read_error)?,
            record_id: row.try_get("record_id").map_err(read_error)?,
            recorded_at: row.try_get("recorded_at").map_err(read_error)?,
            event: row.try_get("event").map_err(read_error)?,
            outcome: row.try_get("outcome").map_err(read_error)?,
            request_id: row.try_get("request_id").map_err(read_error)?,
            requester: row.try_get("requester").map_err(read_error)?,
            actor: row.try_get("actor").map_err(read_error)?,
            stack: row.try_get("stack").map_err(read_error)?,
            provider: row.try_get("provider").map_err(read_error)?,
            rule: row.try_get("rule").map_err(read_error)?,
            role: row.try_get("role").map_err(read_error)?,
            duration_seconds: row.try_get("duration_seconds").map_err(read_error)?,
            detail: detail.map(|text| {
                serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
            }),
        }))
    })
}
