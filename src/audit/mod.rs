//! The audit log: one append-only, hash-chained record per decision and per
//! issuance step, each tied to the person who asked. The broker commits an intent
//! record before it calls a cloud and an outcome record before it returns a
//! credential; if either write fails the request fails closed.
//!
//! - `record`: what one record holds, the events and their outcomes.
//! - `chain`: the canonical encoding, hashes and verification (pure).
//! - `store`: the chain store over the shared database, with a group-committing
//!   writer.
//! - `signed`: checkpoints signed with the broker's issuer key (a JWS), and
//!   their verification against the published JWKS.
//! - `shipper`: writes a signed checkpoint to a directory on a schedule.
//! - `roles`: the PostgreSQL split between the schema's owner and the runtime
//!   role the broker serves as, which cannot rewrite history.
//!
//! Records never hold secret material: the credential is identified by its
//! non-secret id (the AWS access key id), which CloudTrail also shows.

mod chain;
mod guard;
mod record;
mod roles;
mod shipper;
mod signed;
mod sqlite_writer;
mod store;

use time::OffsetDateTime;

pub use chain::{
    ChainBreak, ChainStart, ChainSummary, ChainVerifier, Checkpoint, StoredRecord, GENESIS_HASH,
};
pub use guard::{Bind, Guarded, Statement};
pub use record::{record_json, AuditEvent, AuditRecord, Outcome};
pub use roles::{history_rewritable, setup_postgres, RolesError};
pub use shipper::spawn_checkpoint_shipper;
pub use signed::{
    sign_checkpoint, verify_signed_checkpoint, CheckpointSigner, CheckpointText,
    SignedCheckpointError,
};
pub use store::{PruneReport, SqlAuditStore};

/// Filters for reading the log; every field narrows the result.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub requester: Option<String>,
    pub stack: Option<String>,
    pub provider: Option<String>,
    pub outcome: Option<String>,
    pub since: Option<OffsetDateTime>,
    pub until: Option<OffsetDateTime>,
    /// Only records after this seq (the cursor).
    pub after_seq: Option<i64>,
    pub limit: u32,
}

/// One page of records in chain order, and the cursor for the next page.
#[derive(Debug, Clone)]
pub struct AuditPage {
    pub records: Vec<StoredRecord>,
    pub next_after_seq: Option<i64>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    #[error("the audit store is not writable: {0}")]
    Write(String),
    #[error("the audit store could not be read: {0}")]
    Read(String),
    /// The database refused a record's contents (not the store being down):
    /// only the append that carried it fails, not the others in its batch.
    #[error("the audit store refused a record's contents: {0}")]
    Unstorable(String),
}

/// Which agent issuances to count: by one agent (any person), or for one
/// person (any agent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IssuanceFilter {
    Actor(String),
    Requester(String),
}

/// What an agent quota counts: every issuance an agent started, in either
/// mode, is one `decision`/`allowed` record with an actor (committed with the
/// intent, or with a federation-mode outcome), whatever the cloud then said.
pub(crate) const AGENT_ISSUANCES: &str =
    "event = 'decision' AND outcome = 'allowed' AND actor IS NOT NULL";

impl IssuanceFilter {
    pub(crate) fn column(&self) -> (&'static str, &str) {
        match self {
            IssuanceFilter::Actor(actor) => ("actor", actor),
            IssuanceFilter::Requester(requester) => ("requester", requester),
        }
    }
}

/// A guard for [`AuditStore::append_guarded`] that holds only while every
/// `(filter, limit)` has fewer than `limit` agent issuances recorded at or
/// after `since` (fixed-width UTC text). Checked under the chain lock, so two
/// requests can never both take an agent's last issuance in the window, on
/// one broker or many.
pub fn quota_guard(since: &str, limits: &[(IssuanceFilter, u32)]) -> Guarded {
    // One row that exists on both backends and that the runtime role may
    // update (the readiness heartbeat): the guard "changes" it only while
    // every count is under its limit.
    let mut sql = String::from("UPDATE audit_readiness SET checked_at = checked_at WHERE id = 1");
    let mut binds = vec![Bind::Text(Some(since.to_owned()))];
    for (filter, limit) in limits {
        let (column, value) = filter.column();
        binds.push(Bind::Text(Some(value.to_owned())));
        binds.push(Bind::Int(i64::from(*limit)));
        sql.push_str(&format!(
            " AND (SELECT COUNT(*) FROM audit_records WHERE recorded_at >= $1 AND {AGENT_ISSUANCES} AND {column} = ${}) < ${}",
            binds.len() - 1,
            binds.len()
        ));
    }
    Guarded {
        check: Statement::new(sql, binds),
        then: Vec::new(),
    }
}

/// The audit log as the broker sees it.
#[async_trait::async_trait]
pub trait AuditStore: Send + Sync {
    /// Appends `records`, in order, to the chain; returns only once they are
    /// durably committed.
    async fn append(&self, records: Vec<AuditRecord>) -> Result<(), AuditError>;

    /// Applies `change` and appends `records` in one transaction under the
    /// chain lock, or neither: `Ok(false)` when `change.check` changed no row
    /// (someone else changed that state first), with nothing written.
    async fn append_guarded(
        &self,
        change: Guarded,
        records: Vec<AuditRecord>,
    ) -> Result<bool, AuditError>;

    /// Whether an append would be committed now: a probe record passes every
    /// check an append meets (chain lock, constraints, triggers) and is rolled
    /// back, and a heartbeat write is committed.
    async fn ping(&self) -> Result<(), AuditError>;

    async fn query(&self, query: &AuditQuery) -> Result<AuditPage, AuditError>;

    /// When each agent issuance (see [`quota_guard`]: an allowed decision
    /// with an actor) matching `filter` was recorded, at or after `since`,
    /// oldest first: what agent quotas count. Counting the
    /// shared log makes a quota hold across replicas.
    async fn agent_issuances(
        &self,
        _filter: &IssuanceFilter,
        _since: time::OffsetDateTime,
    ) -> Result<Vec<time::OffsetDateTime>, AuditError> {
        Err(AuditError::Read(
            "this audit store cannot count issuances".into(),
        ))
    }

    /// The chain's head now, to be signed and kept outside the database.
    async fn head(&self) -> Result<Checkpoint, AuditError> {
        Err(AuditError::Read("this audit store keeps no chain".into()))
    }
}
