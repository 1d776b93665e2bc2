//! The one database handle the stores share: SQLite (the embedded default) or
//! PostgreSQL (for several broker instances), chosen by URL, with the schema
//! migrated on open. The audit chain store (`audit::SqlAuditStore`) and the
//! approvals store (`approvals::SqlApprovalStore`) and the revocation store
//! (`revocations::SqlRevocationStore`) live in their own modules over this
//! handle, so an issuance after approval and its audit records share
//! one database and one failure domain.
//!
//! Timestamps are stored as text in one fixed-width UTC form in every table
//! ([`format_timestamp`]), so text order is time order on both backends.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};
use time::OffsetDateTime;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

#[derive(Clone)]
pub enum Database {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs the same code against whichever pool the handle has; the SQL text is
/// the same for both backends (`$1` placeholders work on both).
macro_rules! on_db {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::database::Database::Sqlite($pool) => $body,
            $crate::database::Database::Postgres($pool) => $body,
        }
    };
}
pub(crate) use on_db;

#[derive(Debug, Clone, thiserror::Error)]
pub enum DatabaseError {
    #[error("the database {url} could not be opened: {message}")]
    Open { url: String, message: String },
    #[error("unsupported database URL {0:?}; use sqlite://PATH or postgres://USER@HOST/DATABASE")]
    UnsupportedUrl(String),
}

impl Database {
    /// Opens the database named by `url` (`sqlite://PATH` or `postgres://…`)
    /// and applies the migrations. `busy_timeout` bounds waits for a lock or a
    /// connection, so a write that cannot happen fails instead of hanging: on
    /// SQLite the busy timeout; on PostgreSQL `lock_timeout`, with
    /// `statement_timeout` and `idle_in_transaction_session_timeout` (see
    /// [`statement_timeout`]) bounding a stuck statement and a stuck holder of
    /// the chain lock among the broker's own sessions.
    pub async fn open(url: &str, busy_timeout: Duration) -> Result<Self, DatabaseError> {
        let shown = redact(url);
        let open_error = |message: String| DatabaseError::Open {
            url: shown.clone(),
            message,
        };
        if let Some(path) = url.strip_prefix("sqlite://") {
            let options = SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(busy_timeout)
                .foreign_keys(true)
                // A multi-row append's statement journal stays in memory
                // rather than spilling to a temporary file (created and
                // unlinked again on every large commit).
                .pragma("temp_store", "memory");
            let pool = SqlitePoolOptions::new()
                .max_connections(4)
                .acquire_timeout(busy_timeout)
                .connect_with(options)
                .await
                .map_err(|e| open_error(e.to_string()))?;
            SQLITE_MIGRATIONS
                .run(&pool)
                .await
                .map_err(|e| open_error(format!("migrations failed: {e}")))?;
            Ok(Database::Sqlite(pool))
        } else if is_postgres_url(url) {
            let millis = |d: Duration| format!("{}ms", d.as_millis().max(1));
            let options = PgConnectOptions::from_str(url)
                .map_err(|e| open_error(redact(&e.to_string())))?
                .options([
                    ("lock_timeout", millis(busy_timeout)),
                    ("statement_timeout", millis(statement_timeout(busy_timeout))),
                    (
                        "idle_in_transaction_session_timeout",
                        millis(statement_timeout(busy_timeout)),
                    ),
                ]);
            let pool = PgPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(busy_timeout)
                .connect_with(options)
                .await
                .map_err(|e| open_error(redact(&e.to_string())))?;
            if !postgres_migrated(&pool).await {
                POSTGRES_MIGRATIONS.run(&pool).await.map_err(|e| {
                    let e = e.to_string();
                    let hint = if e.contains("permission denied") {
                        " (a runtime role cannot migrate: run `stackpass audit setup-postgres --database OWNER_URL --runtime-role ROLE` as the schema's owner first)"
                    } else {
                        ""
                    };
                    open_error(format!("migrations failed: {e}{hint}"))
                })?;
            }
            Ok(Database::Postgres(pool))
        } else {
            Err(DatabaseError::UnsupportedUrl(shown))
        }
    }
}

/// Whether every migration this build carries is applied already. The runtime
/// role may not create tables (not even sqlx's bookkeeping table with `IF NOT
/// EXISTS`), so it only reads what the owner applied; anything pending is left
/// to the migrator, which fails for it with a hint.
async fn postgres_migrated(pool: &PgPool) -> bool {
    let applied: Vec<i64> =
        match sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(pool)
            .await
        {
            Ok(applied) => applied,
            Err(_) => return false,
        };
    POSTGRES_MIGRATIONS
        .iter()
        .all(|m| applied.contains(&m.version))
}

/// How long one PostgreSQL statement (or a transaction left idle) may take:
/// well above any lock wait, so a slow statement is told apart from a lock
/// that is not coming.
pub fn statement_timeout(busy_timeout: Duration) -> Duration {
    (busy_timeout * 6).max(Duration::from_secs(30))
}

/// The file a `sqlite://PATH` URL names.
pub fn sqlite_path(url: &str) -> Option<PathBuf> {
    url.strip_prefix("sqlite://")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Timestamps are stored in one fixed-width UTC form (microseconds, `Z`), so text
/// order is time order and time-range filters work the same on every backend.
pub fn format_timestamp(t: OffsetDateTime) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    t.to_offset(time::UtcOffset::UTC)
        .format(FORMAT)
        .expect("every UTC timestamp formats")
}

/// Reads a stored timestamp back.
pub fn parse_timestamp(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()
}

/// Hides a password in a database URL (or in an error that quotes one).
pub fn redact(text: &str) -> String {
    let Some(scheme_end) = text.find("://") else {
        return text.to_owned();
    };
    let rest = &text[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', ' ']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => match rest[..at].find(':') {
            Some(colon) => format!(
                "{}{}:***{}",
                &text[..scheme_end + 3],
                &rest[..colon],
                &rest[at..]
            ),
            None => text.to_owned(),
        },
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_from_urls() {
        assert_eq!(
            redact("postgres://stackpass:s3cret@db:5432/audit"),
            "postgres://stackpass:***@db:5432/audit"
        );
        assert_eq!(
            redact("postgres://stackpass@db/audit"),
            "postgres://stackpass@db/audit"
        );
        assert_eq!(redact("sqlite://audit.db"), "sqlite://audit.db");
    }

    #[test]
    fn timestamps_have_a_fixed_width_so_text_order_is_time_order_and_read_back() {
        let a = format_timestamp(time::macros::datetime!(2026-11-23 08:00:01.2 UTC));
        let b = format_timestamp(time::macros::datetime!(2026-11-23 08:00:01.28 UTC));
        let c = format_timestamp(time::macros::datetime!(2026-11-23 10:00:01.28 +02:00));
        assert_eq!(a, "2026-11-23T08:00:01.200000Z");
        assert!(a < b);
        assert_eq!(c, "2026-11-23T08:00:01.280000Z");
        assert_eq!(
            parse_timestamp(&c),
            Some(time::macros::datetime!(2026-11-23 08:00:01.28 UTC))
        );
    }

    /// Migration 0008 rebuilds SQLite's audit table without the hash index (and
    /// 0009 makes two indexes partial): a log written before them must come
    /// through whole, still verify, still refuse edits, and take new appends
    /// on the same chain.
    #[tokio::test]
    async fn the_audit_table_rebuild_keeps_the_chain_and_its_guards() {
        use crate::audit::{AuditEvent, AuditRecord, AuditStore, Outcome, SqlAuditStore};

        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("audit.db").display());
        let before_0008 = sqlx::migrate::Migrator {
            migrations: std::borrow::Cow::Owned(
                SQLITE_MIGRATIONS
                    .migrations
                    .iter()
                    .filter(|m| m.version < 8)
                    .cloned()
                    .collect(),
            ),
            ..sqlx::migrate::Migrator::DEFAULT
        };
        let records = |n: usize| -> Vec<AuditRecord> {
            (0..n)
                .map(|i| AuditRecord::new(AuditEvent::Decision, Outcome::Allowed, &format!("r{i}")))
                .collect()
        };
        let options = SqliteConnectOptions::new()
            .filename(dir.path().join("audit.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal);
        let old = SqlitePoolOptions::new()
            .connect_with(options)
            .await
            .unwrap();
        before_0008.run(&old).await.unwrap();
        SqlAuditStore::new(Database::Sqlite(old.clone()))
            .append(records(3))
            .await
            .unwrap();
        old.close().await;

        let db = Database::open(&url, Duration::from_secs(1)).await.unwrap();
        let store = SqlAuditStore::new(db.clone());
        store.append(records(2)).await.unwrap();
        let summary = store.verify(None).await.unwrap().unwrap();
        assert_eq!((summary.records, summary.head.seq), (5, 5));

        let Database::Sqlite(pool) = &db else {
            unreachable!()
        };
        for edit in [
            "UPDATE audit_records SET outcome = 'x'",
            "DELETE FROM audit_records",
        ] {
            let refused = sqlx::query(edit).execute(pool).await.unwrap_err();
            assert!(refused.to_string().contains("append-only"), "{refused}");
        }
        let indexed: Vec<(String, bool)> = sqlx::query_as(
            "SELECT name, partial FROM pragma_index_list('audit_records') ORDER BY name",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        let indexed: Vec<(&str, bool)> = indexed.iter().map(|(n, p)| (n.as_str(), *p)).collect();
        assert_eq!(
            indexed,
            [
                // Partial since 0009: only records that name one.
                ("audit_records_actor", true),
                ("audit_records_credential", true),
                ("audit_records_recorded_at", false),
                ("audit_records_requester", false),
                ("audit_records_stack", false),
                // record_id UNIQUE; no index on hash any more.
                ("sqlite_autoindex_audit_records_1", false),
            ]
        );
    }
}
