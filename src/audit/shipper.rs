//! Ships signed checkpoints out of the database on a schedule: every
//! `audit.checkpoint_interval` the server signs the chain's head with its
//! issuer key and writes it to `audit.checkpoint_dir` as
//! `checkpoint-<seq>.jws` (and `latest.jws`), each written whole (temporary
//! file, then rename). Point the directory at storage the database's
//! administrators cannot rewrite (another host's mount, a bucket synced with
//! object lock); `stackpass audit verify --from-checkpoint FILE --jwks …`
//! checks the chain against any of them.
//!
//! A head that has not moved since the last checkpoint is not written again.
//! Failures are logged and retried at the next tick; they never affect
//! issuance.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;

use super::{sign_checkpoint, AuditStore};
use crate::issuer::KeyRing;

/// The keys in force at the moment of signing (they may be reloaded).
pub type CurrentKeys = Box<dyn Fn() -> Arc<KeyRing> + Send + Sync>;

pub fn spawn_checkpoint_shipper(
    audit: Arc<dyn AuditStore>,
    keys: CurrentKeys,
    issuer_url: String,
    dir: PathBuf,
    interval: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_seq = None;
        loop {
            ticks.tick().await;
            match ship_once(&*audit, &keys(), &issuer_url, &dir, last_seq).await {
                Ok(Some((seq, path))) => {
                    last_seq = Some(seq);
                    tracing::info!(seq, path = %path.display(), "signed audit checkpoint written");
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::error!(%error, dir = %dir.display(), "could not write a signed audit checkpoint; retrying at the next interval")
                }
            }
        }
    })
}

/// Signs and writes the head unless it is still `last_seq`.
async fn ship_once(
    audit: &dyn AuditStore,
    keys: &KeyRing,
    issuer_url: &str,
    dir: &Path,
    last_seq: Option<i64>,
) -> Result<Option<(i64, PathBuf)>, String> {
    let head = audit.head().await.map_err(|e| e.to_string())?;
    if last_seq == Some(head.seq) {
        return Ok(None);
    }
    let jws = sign_checkpoint(&head, keys, issuer_url, OffsetDateTime::now_utc())
        .map_err(|e| e.to_string())?;
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let path = dir.join(format!("checkpoint-{:020}.jws", head.seq));
    for target in [&path, &dir.join("latest.jws")] {
        let temporary = target.with_extension("jws.tmp");
        std::fs::write(&temporary, format!("{jws}\n"))
            .and_then(|()| std::fs::rename(&temporary, target))
            .map_err(|e| format!("writing {}: {e}", target.display()))?;
    }
    Ok(Some((head.seq, path)))
}
