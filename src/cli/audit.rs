//! `stackpass audit …`: verify the hash chain, print a checkpoint, export for a
//! SIEM, prune past retention, list recent records, set up PostgreSQL's role
//! split. Each works on the configured
//! store or on any store named with `--database URL`.

use std::io::Write;
use std::time::Duration;

use time::OffsetDateTime;

use super::CliError;
use crate::audit::{
    record_json, sign_checkpoint, verify_signed_checkpoint, AuditQuery, Checkpoint,
    CheckpointSigner, CheckpointText, SqlAuditStore,
};
use crate::database::{format_timestamp, sqlite_path, Database};
use crate::issuer::KeyRing;

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

/// What `verify` anchors the chain to, from its flags.
pub struct Anchor {
    /// A signed checkpoint (or, with `allow_unsigned`, a bare one), or a file
    /// holding one.
    pub checkpoint: Option<String>,
    /// A JWKS URL or file, to check the checkpoint's signature with.
    pub jwks: Option<String>,
    pub allow_unsigned: bool,
}

async fn load_jwks(source: &str) -> Result<jsonwebtoken::jwk::JwkSet, CliError> {
    let hint =
        "pass --jwks with the broker's https://HOST/.well-known/jwks.json or a saved copy of it";
    let text = if source.starts_with("https://") || source.starts_with("http://") {
        let response = reqwest::get(source)
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| CliError::new(format!("could not fetch the JWKS {source}: {e}"), hint))?;
        response
            .text()
            .await
            .map_err(|e| CliError::new(format!("could not read the JWKS {source}: {e}"), hint))?
    } else {
        std::fs::read_to_string(source)
            .map_err(|e| CliError::new(format!("could not read the JWKS {source}: {e}"), hint))?
    };
    serde_json::from_str(&text)
        .map_err(|e| CliError::new(format!("{source} is not a JWKS: {e}"), hint))
}

/// The checkpoint to anchor to and who signed it (`None`: unsigned, allowed).
async fn anchor_checkpoint(
    anchor: &Anchor,
) -> Result<Option<(Checkpoint, Option<CheckpointSigner>)>, CliError> {
    let Some(given) = &anchor.checkpoint else {
        return Ok(None);
    };
    let text = if std::path::Path::new(given).is_file() {
        std::fs::read_to_string(given).map_err(|e| {
            CliError::plain(format!("could not read the checkpoint file {given}: {e}"))
        })?
    } else {
        given.clone()
    };
    let parsed = CheckpointText::parse(&text).map_err(|e| {
        CliError::new(
            format!("{given:?}: {e}"),
            "pass what `stackpass audit checkpoint --sign` printed, or a file from audit.checkpoint_dir",
        )
    })?;
    match parsed {
        CheckpointText::Unsigned(checkpoint) if anchor.allow_unsigned => Ok(Some((checkpoint, None))),
        CheckpointText::Unsigned(_) => Err(CliError::new(
            "the checkpoint is unsigned, so anyone who can write where it was kept could have forged it",
            "use a signed checkpoint (`stackpass audit checkpoint --sign`, or audit.checkpoint_dir), or pass --allow-unsigned if you trust where this one was kept",
        )),
        CheckpointText::Signed(jws) => {
            let Some(source) = &anchor.jwks else {
                return Err(CliError::new(
                    "a signed checkpoint needs the broker's public keys to check it",
                    "pass --jwks https://HOST/.well-known/jwks.json (or a saved copy)",
                ));
            };
            let jwks = load_jwks(source).await?;
            let (checkpoint, signer) = verify_signed_checkpoint(&jws, &jwks).map_err(|e| {
                CliError::new(
                    format!("checkpoint REFUSED: {e}"),
                    "a checkpoint that does not verify proves nothing; find another copy, or the JWKS from when it was signed",
                )
            })?;
            Ok(Some((checkpoint, Some(signer))))
        }
    }
}

/// Walks the chain; a broken link is an error (exit code 1) naming the record.
pub async fn verify(store: &SqlAuditStore, anchor: Anchor) -> Result<String, CliError> {
    let anchored = anchor_checkpoint(&anchor).await?;
    let vouched = match &anchored {
        None => String::new(),
        Some((_, None)) => ", consistent with the checkpoint (unsigned)".into(),
        Some((_, Some(signer))) => format!(
            ", consistent with the checkpoint signed by key {} of {} at {}",
            signer.kid,
            signer.issuer,
            format_timestamp(signer.signed_at)
        ),
    };
    match store
        .verify(anchored.map(|(checkpoint, _)| checkpoint))
        .await
        .map_err(store_error)?
    {
        Ok(summary) => Ok(format!(
            "audit chain intact: {} record(s), seq {}..{}{vouched}\nhead: {}",
            summary.records, summary.first_seq, summary.head.seq, summary.head
        )),
        Err(broken) => Err(CliError::new(
            format!("audit chain BROKEN: {broken}"),
            "the log was modified outside stackpass; preserve the database as evidence and compare with an exported copy or checkpoint",
        )),
    }
}

/// The chain's head, signed with `signer`'s keys (for `issuer_url`) if given.
pub async fn checkpoint(
    store: &SqlAuditStore,
    signer: Option<(KeyRing, String)>,
) -> Result<String, CliError> {
    let head = store.checkpoint().await.map_err(store_error)?;
    match signer {
        None => Ok(head.to_string()),
        Some((keys, issuer_url)) => {
            sign_checkpoint(&head, &keys, &issuer_url, OffsetDateTime::now_utc())
                .map_err(|e| CliError::new(e.to_string(), "check issuer.key_dir in the config"))
        }
    }
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
