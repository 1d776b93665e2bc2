//! One audit record: the event, its outcome, and the columns that say who
//! asked for what. Records are built by the broker's events (`broker::events`)
//! and by pruning; the chain seals them when they are stored.

use std::collections::BTreeMap;

use time::OffsetDateTime;
use uuid::Uuid;

use super::StoredRecord;
use crate::database::format_timestamp;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditEvent {
    /// The policy's verdict on one request (allow or deny), or a refusal before it
    /// (unknown stack).
    Decision,
    /// Committed before the cloud is called: "about to issue this".
    IssuanceIntent,
    /// Committed after the cloud answered, before the credential is returned.
    IssuanceOutcome,
    /// A recorded credential never reached its caller (`withheld`).
    IssuanceWithheld,
    /// Retention pruning removed older records and sealed the chain.
    AuditPruned,
    /// A dry-run decision (`POST /v1/decisions`): nothing was issued.
    DryRun,
    /// Policy files were reloaded (`applied`) or a broken policy was refused (`rejected`).
    PolicyReloaded,
    /// The signing key set changed on disk and was loaded (`applied`), or a
    /// key set that does not load was refused (`rejected`).
    KeysReloaded,
    /// An access request was created (`pending`).
    AccessRequested,
    /// A step on an access request: `approval_recorded`, `approved`, `denied`,
    /// `expired`, `invalidated`, `used`, or an attempt to decide that was
    /// `refused`; `requester` is who acted.
    Approval,
    /// A read of the audit log through the API (`returned`, or `denied`):
    /// `requester` is who read, `detail` the query and how many records it got.
    AuditRead,
    /// A notification the dispatcher gave up on (`given_up`); `detail` names
    /// the audit record it would have announced and the last error.
    Notification,
    /// A delegation or an agent was `revoked` or `restored`, or an attempt
    /// to do either was `refused`; `requester` is who acted, `actor` the
    /// agent named, `detail` the revocation's id and scope.
    Revocation,
}

impl AuditEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditEvent::Decision => "decision",
            AuditEvent::IssuanceIntent => "issuance_intent",
            AuditEvent::IssuanceOutcome => "issuance_outcome",
            AuditEvent::IssuanceWithheld => "issuance_withheld",
            AuditEvent::AuditPruned => "audit_pruned",
            AuditEvent::DryRun => "dry_run",
            AuditEvent::PolicyReloaded => "policy_reloaded",
            AuditEvent::KeysReloaded => "keys_reloaded",
            AuditEvent::AccessRequested => "access_requested",
            AuditEvent::Approval => "approval",
            AuditEvent::AuditRead => "audit_read",
            AuditEvent::Notification => "notification",
            AuditEvent::Revocation => "revocation",
        }
    }
}

/// What happened at one step. Each event has its own outcomes (see
/// ARCHITECTURE.md for the table); they are one type so records are built from
/// names that cannot be misspelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    // decision
    Allowed,
    Denied,
    UnknownStack,
    ApprovalRequired,
    BreakGlass,
    // issuance_intent, access_requested
    Pending,
    // issuance_outcome
    Issued,
    Failed,
    /// The caller went away before the cloud was called.
    Abandoned,
    // issuance_withheld
    Withheld,
    // dry_run
    WouldAllow,
    WouldNeedApproval,
    WouldDeny,
    // approval (and `denied`)
    ApprovalRecorded,
    Approved,
    Expired,
    Invalidated,
    /// An approved request was taken by the one issuance it covers.
    Used,
    /// An attempt to approve or deny that changed nothing, and why.
    Refused,
    // policy_reloaded, keys_reloaded
    Applied,
    Rejected,
    // audit_pruned
    Pruned,
    // audit_read (and `denied`)
    Returned,
    // notification
    GivenUp,
    // revocation (and `refused`)
    Revoked,
    Restored,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Denied => "denied",
            Outcome::UnknownStack => "unknown_stack",
            Outcome::ApprovalRequired => "approval_required",
            Outcome::BreakGlass => "break_glass",
            Outcome::Pending => "pending",
            Outcome::Issued => "issued",
            Outcome::Failed => "failed",
            Outcome::Abandoned => "abandoned",
            Outcome::Withheld => "withheld",
            Outcome::WouldAllow => "would_allow",
            Outcome::WouldNeedApproval => "would_need_approval",
            Outcome::WouldDeny => "would_deny",
            Outcome::ApprovalRecorded => "approval_recorded",
            Outcome::Approved => "approved",
            Outcome::Expired => "expired",
            Outcome::Invalidated => "invalidated",
            Outcome::Used => "used",
            Outcome::Refused => "refused",
            Outcome::Applied => "applied",
            Outcome::Rejected => "rejected",
            Outcome::Pruned => "pruned",
            Outcome::Returned => "returned",
            Outcome::GivenUp => "given_up",
            Outcome::Revoked => "revoked",
            Outcome::Restored => "restored",
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
    pub outcome: Outcome,
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

/// Time-ordered (UUIDv7), so that each new record's id lands at the end of
/// the record-id index instead of on a random page: a random id dirties one
/// more page per record in every commit, and more of them as the log grows.
fn record_id() -> Uuid {
    Uuid::now_v7()
}

impl AuditRecord {
    pub fn new(event: AuditEvent, outcome: Outcome, request_id: &str) -> Self {
        AuditRecord {
            record_id: record_id(),
            recorded_at: OffsetDateTime::now_utc(),
            event,
            outcome,
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
    pub fn derive(&self, event: AuditEvent, outcome: Outcome) -> AuditRecord {
        AuditRecord {
            record_id: record_id(),
            recorded_at: OffsetDateTime::now_utc(),
            event,
            outcome,
            detail: None,
            ..self.clone()
        }
    }

    /// The columns as they will be stored (and hashed), not yet placed in the chain.
    ///
    /// PostgreSQL's TEXT cannot hold NUL, so a NUL in any text column is
    /// replaced by U+FFFD before the record is sealed, identically for every
    /// backend (the hash covers the stored text, so it verifies on both), and
    /// the record's `detail` names the columns that were changed. JSON columns
    /// (`tags`, `detail`) need nothing: serde_json escapes NUL as `\u0000`.
    pub fn to_stored(&self) -> StoredRecord {
        let mut replaced = Vec::new();
        let mut stored = self.to_stored_as_given();
        for (column, value) in [
            ("request_id", Some(&mut stored.request_id)),
            ("requester", stored.requester.as_mut()),
            ("requester_kind", stored.requester_kind.as_mut()),
            ("actor", stored.actor.as_mut()),
            ("issuer", stored.issuer.as_mut()),
            ("stack", stored.stack.as_mut()),
            ("component", stored.component.as_mut()),
            ("owner", stored.owner.as_mut()),
            ("rule", stored.rule.as_mut()),
            ("provider", stored.provider.as_mut()),
            ("role", stored.role.as_mut()),
            ("credential_id", stored.credential_id.as_mut()),
            ("client_addr", stored.client_addr.as_mut()),
        ] {
            if let Some(value) = value {
                if value.contains('\0') {
                    *value = value.replace('\0', "\u{FFFD}");
                    replaced.push(column);
                }
            }
        }
        if !replaced.is_empty() {
            let mut detail = match &self.detail {
                Some(serde_json::Value::Object(map)) => map.clone(),
                Some(other) => serde_json::Map::from_iter([("detail".to_owned(), other.clone())]),
                None => serde_json::Map::new(),
            };
            detail.insert("nul_replaced_in".into(), replaced.into());
            stored.detail = Some(serde_json::Value::Object(detail).to_string());
        }
        stored
    }

    fn to_stored_as_given(&self) -> StoredRecord {
        StoredRecord {
            seq: 0,
            record_id: self.record_id.to_string(),
            recorded_at: format_timestamp(self.recorded_at),
            event: self.event.as_str().to_owned(),
            outcome: self.outcome.as_str().to_owned(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_is_replaced_before_sealing_and_the_change_is_recorded() {
        let mut record = AuditRecord::new(AuditEvent::Decision, Outcome::Denied, "q1");
        record.requester = Some("user:default/jane".into());
        record.actor = Some("agent:default/x\0y".into());
        record.detail = Some(serde_json::json!({ "reasons": ["a\0b"] }));
        let stored = record.to_stored();
        assert_eq!(stored.actor.as_deref(), Some("agent:default/x\u{FFFD}y"));
        assert_eq!(stored.requester.as_deref(), Some("user:default/jane"));
        let detail: serde_json::Value =
            serde_json::from_str(stored.detail.as_deref().unwrap()).unwrap();
        assert_eq!(detail["nul_replaced_in"], serde_json::json!(["actor"]));
        assert_eq!(detail["reasons"][0], "a\u{0}b");
        assert!(!stored.canonical_encoding().contains('\0'));
        assert!(!stored.detail.unwrap().contains('\0'));

        let clean = AuditRecord::new(AuditEvent::Decision, Outcome::Denied, "q2").to_stored();
        assert_eq!(
            clean.detail, None,
            "records without NUL are stored as given"
        );
    }
}
