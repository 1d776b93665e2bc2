//! `stackpass audit …`: verify the hash chain, print a checkpoint, export for a
//! SIEM, prune past retention, list recent records, set up PostgreSQL's role
//! split. Each works on the configured
//! store or on any store named with `--database URL`.

use std::io::Write;
use std::time::Duration;

use time::OffsetDateTime;

use super::CliError;
use crate::audit::{record_json, AuditQuery, Checkpoint, SqlAuditStore};
use crate::database::{format_timestamp, sqlite_path, Database};

/// Opens an existing store. A SQLite path that does not exist is an error here:
/// verifying a typo'd path must not create an empty, "intact" log.
pub async fn open_store(url: &str, busy_timeout: Duration) -> Result<SqlAuditStore, CliError> {
    if let Some(path) = sqlite_path(url) {
        if !path.exists() {
            return Err(CliError::new(
                format!("there is no audit database at {}", path.display()),
                "check --database or audit.url in the config",
            ));
        }
    }
    let db = Database::open(url, busy_timeout)
        .await
        .map_err(|e| CliError::new(e.to_string(), "check --database or audit.url in the config"))?;
    Ok(SqlAuditStore::new(db))
}

fn store_error(e: crate::audit::AuditError) -> CliError {
    CliError::new(e.to_string(), "check that the audit database is reachable")
}

/// Walks the chain; a broken link is an error (exit code 1) naming the record.
pub async fn verify(store: &SqlAuditStore, checkpoint: Option<&str>) -> Result<String, CliError> {
    let checkpoint = checkpoint
        .map(|text| {
            Checkpoint::parse(text).ok_or_else(|| {
                CliError::new(
                    format!("{text:?} is not a checkpoint"),
                    "pass the line `stackpass audit checkpoint` printed, e.g. stackpass-checkpoint-v1:42:<64 hex digits>",
                )
            })
        })
        .transpose()?;
    let anchored = checkpoint.is_some();
    match store.verify(checkpoint).await.map_err(store_error)? {
        Ok(summary) => Ok(format!(
            "audit chain intact: {} record(s), seq {}..{}{}\nhead: {}",
            summary.records,
            summary.first_seq,
            summary.head.seq,
            if anchored { ", consistent with the checkpoint" } else { "" },
            summary.head
        )),
        Err(broken) => Err(CliError::new(
            format!("audit chain BROKEN: {broken}"),
            "the log was modified outside stackpass; preserve the database as evidence and compare with an exported copy or checkpoint",
        )),
    }
}

pub async fn checkpoint(store: &SqlAuditStore) -> Result<String, CliError> {
    Ok(store.checkpoint().await.map_err(store_error)?.to_string())
}

/// Writes every matching record as one JSON object per line, in chain order.
pub async fn export(
    store: &SqlAuditStore,
    query: AuditQuery,
    out: &mut impl Write,
) -> Result<u64, CliError> {
    let mut written = 0u64;
    store
        .for_each(query, |record| -> Result<(), CliError> {
            serde_json::to_writer(&mut *out, &record_json(&record))
                .map_err(|e| CliError::plain(format!("could not write the export: {e}")))?;
            out.write_all(b"\n")
                .map_err(|e| CliError::plain(format!("could not write the export: {e}")))?;
            written += 1;
            Ok(())
        })
        .await?;
    out.flush()
        .map_err(|e| CliError::plain(format!("could not write the export: {e}")))?;
    Ok(written)
}

impl From<crate::audit::AuditError> for CliError {
    fn from(e: crate::audit::AuditError) -> Self {
        store_error(e)
    }
}

pub async fn prune(store: &SqlAuditStore, before: OffsetDateTime) -> Result<String, CliError> {
    let request_id = format!("cli-prune-{}", uuid::Uuid::new_v4());
    let report = store.prune(before, &request_id).await.map_err(|e| {
        CliError::new(
            e.to_string(),
            "on PostgreSQL only the schema's owner prunes: pass --database with the migration-owner role's URL",
        )
    })?;
    Ok(match report.sealed_at {
        Some(seal) => format!(
            "pruned {} record(s) recorded before {}; the chain now starts after {seal}",
            report.records_pruned,
            format_timestamp(before)
        ),
        None => format!(
            "nothing recorded before {} to prune",
            format_timestamp(before)
        ),
    })
}

/// `stackpass audit setup-postgres`: see [`crate::audit::setup_postgres`].
pub async fn setup_postgres(owner_url: &str, runtime_role: &str) -> Result<String, CliError> {
    crate::audit::setup_postgres(owner_url, runtime_role, Duration::from_secs(5))
        .await
        .map_err(|e| {
            CliError::new(
                e.to_string(),
                "connect as the role that owns the schema (it runs the migrations); the runtime role must already exist",
            )
        })
}

/// The most recent `limit` records, oldest first, as JSON lines.
pub async fn list(store: &SqlAuditStore, limit: u32, out: &mut impl Write) -> Result<(), CliError> {
    let head = store.checkpoint().await.map_err(store_error)?;
    let query = AuditQuery {
        after_seq: Some(head.seq.saturating_sub(i64::from(limit))),
        ..AuditQuery::default()
    };
    export(store, query, out).await.map(|_| ())
}
