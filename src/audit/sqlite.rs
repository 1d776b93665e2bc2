//! The SQLite audit store: the embedded default. WAL journal with
//! `synchronous=FULL`, so a record is on disk (fsynced) when `append` returns.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{AuditError, AuditEvent, AuditRecord, AuditStore};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

pub struct SqliteAuditStore {
    pool: SqlitePool,
}

impl SqliteAuditStore {
    /// Opens (creating if needed) the database file and applies migrations.
    pub async fn open(path: &Path, busy_timeout: Duration) -> Result<Self, AuditError> {
        let open_error = |message: String| AuditError::Open {
            url: format!("sqlite://{}", path.display()),
            message,
        };
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(busy_timeout)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(busy_timeout)
            .connect_with(options)
            .await
            .map_err(|e| open_error(e.to_string()))?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| open_error(format!("migrations failed: {e}")))?;
        Ok(SqliteAuditStore { pool })
    }
}

fn format_time(t: OffsetDateTime) -> String {
    t.format(&Rfc3339)
        .expect("UTC timestamps always format as RFC 3339")
}

fn parse_time(s: &str) -> Result<OffsetDateTime, AuditError> {
    OffsetDateTime::parse(s, &Rfc3339)
        .map_err(|e| AuditError::Read(format!("bad timestamp {s:?}: {e}")))
}

#[async_trait::async_trait]
impl AuditStore for SqliteAuditStore {
    async fn append(&self, records: &[AuditRecord]) -> Result<(), AuditError> {
        let write = |e: sqlx::Error| AuditError::Write(e.to_string());
        let mut tx = self.pool.begin().await.map_err(write)?;
        for r in records {
            let tags = r
                .tags
                .as_ref()
                .map(|t| serde_json::to_string(t).expect("string maps serialize"));
            let detail = r.detail.as_ref().map(|d| d.to_string());
            sqlx::query(
                "INSERT INTO audit_records (record_id, recorded_at, event, outcome, request_id, issuance_id, \
                 requester, requester_kind, actor, issuer, stack, tags, component, owner, rule, provider, role, \
                 duration_seconds, expires_at, credential_id, client_addr, detail) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(r.record_id.to_string())
            .bind(format_time(r.recorded_at))
            .bind(r.event.as_str())
            .bind(&r.outcome)
            .bind(&r.request_id)
            .bind(r.issuance_id.map(|id| id.to_string()))
            .bind(&r.requester)
            .bind(&r.requester_kind)
            .bind(&r.actor)
            .bind(&r.issuer)
            .bind(&r.stack)
            .bind(tags)
            .bind(&r.component)
            .bind(&r.owner)
            .bind(&r.rule)
            .bind(&r.provider)
            .bind(&r.role)
            .bind(r.duration_seconds)
            .bind(r.expires_at.map(format_time))
            .bind(&r.credential_id)
            .bind(&r.client_addr)
            .bind(detail)
            .execute(&mut *tx)
            .await
            .map_err(write)?;
        }
        tx.commit().await.map_err(write)
    }

    async fn ping(&self) -> Result<(), AuditError> {
        // Taking the write lock (and releasing it) proves writes would succeed now,
        // which a plain SELECT would not.
        let write = |e: sqlx::Error| AuditError::Write(e.to_string());
        let mut conn = self.pool.acquire().await.map_err(write)?;
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut *conn)
            .await
            .map_err(write)?;
        sqlx::query("ROLLBACK")
            .execute(&mut *conn)
            .await
            .map_err(write)?;
        Ok(())
    }

    async fn recent(&self, limit: u32) -> Result<Vec<AuditRecord>, AuditError> {
        let read = |e: sqlx::Error| AuditError::Read(e.to_string());
        let rows = sqlx::query(
            "SELECT * FROM (SELECT * FROM audit_records ORDER BY seq DESC LIMIT ?) ORDER BY seq ASC",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(read)?;
        rows.iter().map(record_from_row).collect()
    }
}

fn record_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<AuditRecord, AuditError> {
    let read = |e: sqlx::Error| AuditError::Read(e.to_string());
    let get =
        |name: &str| -> Result<Option<String>, AuditError> { row.try_get(name).map_err(read) };
    let uuid = |s: String| Uuid::from_str(&s).map_err(|e| AuditError::Read(e.to_string()));
    let event: String = row.try_get("event").map_err(read)?;
    Ok(AuditRecord {
        record_id: uuid(row.try_get("record_id").map_err(read)?)?,
        recorded_at: parse_time(&row.try_get::<String, _>("recorded_at").map_err(read)?)?,
        event: AuditEvent::parse(&event)
            .ok_or_else(|| AuditError::Read(format!("unknown event {event:?}")))?,
        outcome: row.try_get("outcome").map_err(read)?,
        request_id: row.try_get("request_id").map_err(read)?,
        issuance_id: get("issuance_id")?.map(uuid).transpose()?,
        requester: get("requester")?,
        requester_kind: get("requester_kind")?,
        actor: get("actor")?,
        issuer: get("issuer")?,
        stack: get("stack")?,
        tags: get("tags")?
            .map(|t| serde_json::from_str(&t).map_err(|e| AuditError::Read(e.to_string())))
            .transpose()?,
        component: get("component")?,
        owner: get("owner")?,
        rule: get("rule")?,
        provider: get("provider")?,
        role: get("role")?,
        duration_seconds: row.try_get("duration_seconds").map_err(read)?,
        expires_at: get("expires_at")?.map(|t| parse_time(&t)).transpose()?,
        credential_id: get("credential_id")?,
        client_addr: get("client_addr")?,
        detail: get("detail")?
            .map(|d| serde_json::from_str(&d).map_err(|e| AuditError::Read(e.to_string())))
            .transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn appends_are_durable_and_rows_cannot_be_edited() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.db");
        let store = SqliteAuditStore::open(&path, Duration::from_secs(1))
            .await
            .unwrap();
        let mut record = AuditRecord::new(AuditEvent::Decision, "denied", "req-1");
        record.requester = Some("user:default/bob".into());
        record.tags = Some([("environment".to_string(), "dev".to_string())].into());
        record.detail = Some(serde_json::json!({"reasons": ["x"]}));
        store.append(std::slice::from_ref(&record)).await.unwrap();
        store.ping().await.unwrap();
        drop(store);

        let reopened = SqliteAuditStore::open(&path, Duration::from_secs(1))
            .await
            .unwrap();
        let rows = reopened.recent(10).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].record_id, record.record_id);
        assert_eq!(rows[0].tags, record.tags);
        assert_eq!(rows[0].detail, record.detail);

        let update = sqlx::query("UPDATE audit_records SET outcome = 'allowed'")
            .execute(&reopened.pool)
            .await;
        assert!(update.unwrap_err().to_string().contains("append-only"));
        let delete = sqlx::query("DELETE FROM audit_records")
            .execute(&reopened.pool)
            .await;
        assert!(delete.unwrap_err().to_string().contains("append-only"));
    }
}
