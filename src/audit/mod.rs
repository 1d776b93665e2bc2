//! The audit log: one append-only record per decision and per issuance step, each
//! tied to the person who asked. The broker commits an intent record before it
//! calls a cloud and an outcome record before it returns a credential; if either
//! write fails the request fails closed.
//!
//! Records never hold secret material: the credential is identified by its
//! non-secret id (the AWS access key id), which CloudTrail also shows.

mod sqlite;

use std::collections::BTreeMap;

use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

pub use sqlite::SqliteAuditStore;

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
}

impl AuditEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditEvent::Decision => "decision",
            AuditEvent::IssuanceIntent => "issuance_intent",
            AuditEvent::IssuanceOutcome => "issuance_outcome",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [
            AuditEvent::Decision,
            AuditEvent::IssuanceIntent,
            AuditEvent::IssuanceOutcome,
        ]
        .into_iter()
        .find(|e| e.as_str() == s)
    }
}

/// One audit row. Optional fields are absent when the request never got that far.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    pub record_id: Uuid,
    #[serde(with = "time::serde::rfc3339")]
    pub recorded_at: OffsetDateTime,
    pub event: AuditEvent,
    /// `allowed`, `denied`, `unknown_stack`, `pending`, `issued` or `failed`.
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
    #[serde(with = "time::serde::rfc3339::option")]
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
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("the audit store {url} could not be opened: {message}")]
    Open { url: String, message: String },
    #[error("the audit store is not writable: {0}")]
    Write(String),
    #[error("the audit store could not be read: {0}")]
    Read(String),
    #[error("unsupported audit URL {0:?}; use sqlite://PATH")]
    UnsupportedUrl(String),
}

#[async_trait::async_trait]
pub trait AuditStore: Send + Sync {
    /// Appends `records` in one transaction; returns only once they are durable.
    async fn append(&self, records: &[AuditRecord]) -> Result<(), AuditError>;

    /// Whether the store can currently take writes.
    async fn ping(&self) -> Result<(), AuditError>;

    /// The most recent records, newest last.
    async fn recent(&self, limit: u32) -> Result<Vec<AuditRecord>, AuditError>;
}
