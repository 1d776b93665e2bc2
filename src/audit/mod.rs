//! The audit log: one append-only, hash-chained record per decision and per
//! issuance step, each tied to the person who asked. The broker commits an intent
//! record before it calls a cloud and an outcome record before it returns a
//! credential; if either write fails the request fails closed.
//!
//! - `chain`: the canonical encoding, hashes and verification (pure).
//! - `store`: the SQLite and PostgreSQL store, with a group-committing writer.
//!
//! Records never hold secret material: the credential is identified by its
//! non-secret id (the AWS access key id), which CloudTrail also shows.

mod chain;
mod store;

use std::collections::BTreeMap;

use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

pub use chain::{
    ChainBreak, ChainStart, ChainSummary, ChainVerifier, Checkpoint, StoredRecord, GENESIS_HASH,
};
pub use store::{redact, PruneReport, SqlAuditStore};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditEvent {
    /// The policy's verdict on one request (allow or deny), or a refusal before it
    /// (unknown stack).
    Decision,
    /// Committed before the cloud is called: "about to issue this".
    IssuanceIntent,
    /// Committed after the cloud answered, before the credential is returned.
    IssuanceOutcome,
    /// Retention pruning removed older records and sealed the chain.
    AuditPruned,
    /// A dry-run decision (`POST /v1/decisions`): nothing was issued.
    DryRun,
    /// Policy files were reloaded (`applied`) or a broken policy was refused (`rejected`).
    PolicyReloaded,
    /// An access request was created (`pending`).
    AccessRequested,
    /// A step on an access request: `approval_recorded`, `approved`, `denied`,
    /// `expired`, `invalidated`; `requester` is who acted.
    Approval,
}

impl AuditEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditEvent::Decision => "decision",
            AuditEvent::IssuanceIntent => "issuance_intent",
            AuditEvent::IssuanceOutcome => "issuance_outcome",
            AuditEvent::AuditPruned => "audit_pruned",
            AuditEvent::DryRun => "dry_run",
            AuditEvent::PolicyReloaded => "policy_reloaded",
            AuditEvent::AccessRequested => "access_requested",
            AuditEvent::Approval => "approval",
        }
    }
}

/// One audit record before it is stored. Optional fields are absent when the
/// request never got that far.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    pub record_id: Uuid,
    pub recorded_at: OffsetDateTime,
    pub event: AuditEvent,
    /// `allowed`, `denied`, `unknown_stack`, `pending`, `issued`, `failed` or `pruned`.
    pub outcome: String,
    pub request_id: String,
    pub issuance_id: Option<Uuid>,
    pub requester: Option<String>,
    pub requester_kind: Option<String>,
    pub actor: Option<String>,
    pub issuer: Option<String>,
    pub stack: Option<String>,
    pub tags: Option<BTreeMap<String, String>>,
    pub component: Option<String>,
    pub owner: Option<String>,
    pub rule: Option<String>,
    pub provider: Option<String>,
    pub role: Option<String>,
    pub duration_seconds: Option<i64>,
    pub expires_at: Option<OffsetDateTime>,
    pub credential_id: Option<String>,
    pub client_addr: Option<String>,
    /// Reasons for a denial or failure, as JSON.
    pub detail: Option<serde_json::Value>,
}

impl AuditRecord {
    pub fn new(event: AuditEvent, outcome: &str, request_id: &str) -> Self {
        AuditRecord {
            record_id: Uuid::new_v4(),
            recorded_at: OffsetDateTime::now_utc(),
            event,
            outcome: outcome.to_owned(),
            request_id: request_id.to_owned(),
            issuance_id: None,
            requester: None,
            requester_kind: None,
            actor: None,
            issuer: None,
            stack: None,
            tags: None,
            component: None,
            owner: None,
            rule: None,
            provider: None,
            role: None,
            duration_seconds: None,
            expires_at: None,
            credential_id: None,
            client_addr: None,
            detail: None,
        }
    }

    /// A new record (fresh id and time) for the same request, carrying this one's
    /// context, so the rows of one issuance cannot disagree about who and what.
    pub fn derive(&self, event: AuditEvent, outcome: &str) -> AuditRecord {
        AuditRecord {
            record_id: Uuid::new_v4(),
            recorded_at: OffsetDateTime::now_utc(),
            event,
            outcome: outcome.to_owned(),
            detail: None,
            ..self.clone()
        }
    }

    /// The columns as they will be stored (and hashed), not yet placed in the chain.
    pub fn to_stored(&self) -> StoredRecord {
        StoredRecord {
            seq: 0,
            record_id: self.record_id.to_string(),
            recorded_at: format_timestamp(self.recorded_at),
            event: self.event.as_str().to_owned(),
            outcome: self.outcome.clone(),
            request_id: self.request_id.clone(),
            issuance_id: self.issuance_id.map(|id| id.to_string()),
            requester: self.requester.clone(),
            requester_kind: self.requester_kind.clone(),
            actor: self.actor.clone(),
            issuer: self.issuer.clone(),
            stack: self.stack.clone(),
            tags: self
                .tags
                .as_ref()
                .map(|t| serde_json::to_string(t).expect("string maps serialize")),
            component: self.component.clone(),
            owner: self.owner.clone(),
            rule: self.rule.clone(),
            provider: self.provider.clone(),
            role: self.role.clone(),
            duration_seconds: self.duration_seconds,
            expires_at: self.expires_at.map(format_timestamp),
            credential_id: self.credential_id.clone(),
            client_addr: self.client_addr.clone(),
            detail: self.detail.as_ref().map(|d| d.to_string()),
            prev_hash: String::new(),
            hash: String::new(),
        }
    }
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

/// A stored record as JSON for the API and exports: the stored columns, with
/// `tags` and `detail` as JSON values rather than text.
pub fn record_json(record: &StoredRecord) -> serde_json::Value {
    let json_text = |text: &Option<String>| {
        text.as_deref().map(|t| {
            serde_json::from_str(t).unwrap_or_else(|_| serde_json::Value::String(t.to_owned()))
        })
    };
    serde_json::json!({
        "seq": record.seq,
        "record_id": record.record_id,
        "recorded_at": record.recorded_at,
        "event": record.event,
        "outcome": record.outcome,
        "request_id": record.request_id,
        "issuance_id": record.issuance_id,
        "requester": record.requester,
        "requester_kind": record.requester_kind,
        "actor": record.actor,
        "issuer": record.issuer,
        "stack": record.stack,
        "tags": json_text(&record.tags),
        "component": record.component,
        "owner": record.owner,
        "rule": record.rule,
        "provider": record.provider,
        "role": record.role,
        "duration_seconds": record.duration_seconds,
        "expires_at": record.expires_at,
        "credential_id": record.credential_id,
        "client_addr": record.client_addr,
        "detail": json_text(&record.detail),
        "prev_hash": record.prev_hash,
        "hash": record.hash,
    })
}

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
    #[error("the audit store {url} could not be opened: {message}")]
    Open { url: String, message: String },
    #[error("the audit store is not writable: {0}")]
    Write(String),
    #[error("the audit store could not be read: {0}")]
    Read(String),
    #[error("unsupported audit URL {0:?}; use sqlite://PATH or postgres://USER@HOST/DATABASE")]
    UnsupportedUrl(String),
}

/// The audit log as the broker sees it.
#[async_trait::async_trait]
pub trait AuditStore: Send + Sync {
    /// Appends `records`, in order, to the chain; returns only once they are
    /// durably committed.
    async fn append(&self, records: Vec<AuditRecord>) -> Result<(), AuditError>;

    /// Whether the store can currently take writes.
    async fn ping(&self) -> Result<(), AuditError>;

    async fn query(&self, query: &AuditQuery) -> Result<AuditPage, AuditError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_have_a_fixed_width_so_text_order_is_time_order() {
        let a = format_timestamp(time::macros::datetime!(2026-11-23 08:00:01.2 UTC));
        let b = format_timestamp(time::macros::datetime!(2026-11-23 08:00:01.28 UTC));
        let c = format_timestamp(time::macros::datetime!(2026-11-23 10:00:01.28 +02:00));
        assert_eq!(a, "2026-11-23T08:00:01.200000Z");
        assert!(a < b);
        assert_eq!(c, "2026-11-23T08:00:01.280000Z");
    }
}
