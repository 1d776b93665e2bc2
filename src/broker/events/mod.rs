//! One typed event per step of the broker's work. Each event is turned into its
//! audit record in `record` and nowhere else, and the same event drives the log
//! line. Notifications are made from the committed audit record itself
//! (`crate::notify`), so a notification and its record can never disagree and
//! a crash after the commit cannot lose one. The same committed events feed
//! the Prometheus counters (`metrics`).
//!
//! [`Recorder::record`] commits the records of a step (in order, in one
//! append) before anything is announced: a notification or an "issued" log
//! line always describes something the audit log already holds.
//! [`Recorder::record_guarded`] commits them in one transaction with the
//! state change they describe (access requests), or neither.

mod metrics;
mod record;

use std::sync::Arc;

use stackpass_provider::ProviderError;
use time::OffsetDateTime;
use uuid::Uuid;

use super::resolve::Resolved;
use super::{CredentialRequest, RequestContext};
use crate::approvals::{AccessRequest, AccessRequestId, ApprovalError};
use crate::audit::{AuditError, AuditPage, AuditQuery, AuditStore, Guarded};
use crate::catalog::EntityRef;
use crate::identity::Principal;
use crate::issuer::KeyRing;
use crate::notify::Notifier;
use crate::policy::{ApprovalRequirement, Denial, Grant};
use crate::revocations::Revocation;

/// Who asked for what, from where: what every record about one credential
/// request says.
pub(super) struct Asked<'a> {
    pub context: &'a RequestContext,
    pub principal: &'a Principal,
    pub request: &'a CredentialRequest,
}

/// Why an issuance may go ahead.
#[derive(Clone)]
pub(super) enum Allowance {
    /// A rule allows it outright.
    Policy,
    /// An approved access request whose approvals still hold.
    Approved {
        request: AccessRequestId,
        approvers: Vec<EntityRef>,
    },
    /// Break-glass under a rule that allows it, with the requester's reason.
    BreakGlass { reason: String },
}

/// An allowed issuance: the facts the decision, intent and outcome records share.
pub(super) struct AllowedIssuance<'a> {
    pub asked: &'a Asked<'a>,
    pub resolved: &'a Resolved,
    pub grant: &'a Grant,
    pub allowance: &'a Allowance,
    pub issuance_id: Uuid,
}

/// A step on an access request, recorded with who took it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ApprovalStep {
    /// One approval counted, more are needed.
    Recorded,
    Approved,
    Denied,
    Expired,
    /// Approved once, but the approvals no longer hold under the current
    /// policy, or the grant changed since.
    Invalidated,
    /// Taken by the one issuance it covers.
    Used,
}

/// A change to a revocation, recorded with who made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RevocationStep {
    Revoked,
    Restored,
}

pub(super) enum Event<'a> {
    /// The stack source does not know the stack (`dry_run` for explanations).
    UnknownStack { asked: &'a Asked<'a>, dry_run: bool },
    /// An agent's request refused because its delegation (or the agent) is
    /// revoked; nothing was resolved or decided.
    DelegationRevoked {
        context: &'a RequestContext,
        principal: &'a Principal,
        /// The credential request refused, if it was one (not, e.g., an
        /// audit read).
        request: Option<&'a CredentialRequest>,
        revocation: &'a Revocation,
        dry_run: bool,
    },
    /// A revocation made or lifted; `outstanding`: how many credentials
    /// already issued under it have not expired.
    Revocation {
        context: &'a RequestContext,
        principal: &'a Principal,
        revocation: &'a Revocation,
        step: RevocationStep,
        outstanding: usize,
    },
    /// An attempt to revoke or restore that changed nothing, and why.
    RevocationRefused {
        context: &'a RequestContext,
        principal: &'a Principal,
        /// `revoke` or `restore`.
        action: &'static str,
        /// `delegation` or `agent`.
        scope: &'static str,
        agent: &'a str,
        error: &'a str,
    },
    Denied {
        asked: &'a Asked<'a>,
        resolved: &'a Resolved,
        denial: &'a Denial,
        dry_run: bool,
    },
    BreakGlassRefused {
        asked: &'a Asked<'a>,
        resolved: &'a Resolved,
        reason: &'a str,
        /// Why it was refused.
        error: &'a str,
    },
    ApprovalRequired {
        asked: &'a Asked<'a>,
        resolved: &'a Resolved,
        grant: &'a Grant,
        approval: &'a ApprovalRequirement,
        pending: Option<AccessRequestId>,
    },
    WouldAllow {
        asked: &'a Asked<'a>,
        resolved: &'a Resolved,
        grant: &'a Grant,
    },
    WouldNeedApproval {
        asked: &'a Asked<'a>,
        resolved: &'a Resolved,
        grant: &'a Grant,
        approval: &'a ApprovalRequirement,
    },
    /// The decision of an issuance that goes ahead.
    Allowed(&'a AllowedIssuance<'a>),
    /// Committed before the cloud is called.
    IssuanceIntent {
        issuance: &'a AllowedIssuance<'a>,
        subject_token_id: Uuid,
    },
    Issued {
        issuance: &'a AllowedIssuance<'a>,
        credential_id: &'a str,
        expires_at: OffsetDateTime,
    },
    /// Federation mode: the broker's own subject token was handed out (no
    /// cloud call); committed with the decision.
    Federated {
        issuance: &'a AllowedIssuance<'a>,
        subject_token_id: Uuid,
        audience: &'a str,
        expires_at: OffsetDateTime,
    },
    IssuanceFailed {
        issuance: &'a AllowedIssuance<'a>,
        error: &'a ProviderError,
    },
    /// The caller went away after the intent was committed and before the
    /// cloud was called: nothing was minted.
    IssuanceAbandoned { issuance: &'a AllowedIssuance<'a> },
    /// A credential that was minted and recorded never reached the caller
    /// (it hung up, or its request timed out); it was dropped unseen.
    IssuanceWithheld {
        issuance: &'a AllowedIssuance<'a>,
        credential_id: &'a str,
    },
    AccessRequested {
        context: &'a RequestContext,
        request: &'a AccessRequest,
        approval: &'a ApprovalRequirement,
    },
    ApprovalStep {
        context: &'a RequestContext,
        request: &'a AccessRequest,
        by: &'a EntityRef,
        step: ApprovalStep,
        note: Option<&'a str>,
    },
    /// An attempt to approve or deny that changed nothing.
    ApprovalRefused {
        context: &'a RequestContext,
        principal: &'a Principal,
        /// `approve` or `deny`.
        action: &'static str,
        /// The request, if the id named one.
        request: Option<&'a AccessRequest>,
        error: &'a ApprovalError,
    },
    PolicyReloaded {
        reason: &'a str,
        /// The rule names that apply once this is recorded, with the digest
        /// of the policy text, or the problems that kept them out.
        result: Result<(Vec<String>, String), Vec<String>>,
    },
    KeysReloaded {
        reason: &'a str,
        /// The keys now in force, or why the new key set was refused.
        result: Result<&'a KeyRing, String>,
    },
    /// A read of the audit log: who asked for what, and how many records they
    /// got (`Err`: why the read was refused). Committed before the page is sent.
    AuditRead {
        context: &'a RequestContext,
        principal: &'a Principal,
        query: &'a AuditQuery,
        result: Result<&'a AuditPage, &'a str>,
    },
}

impl Event<'_> {
    /// The HTTP request this step belongs to, if any.
    fn context(&self) -> Option<&RequestContext> {
        match self {
            Event::UnknownStack { asked, .. }
            | Event::Denied { asked, .. }
            | Event::BreakGlassRefused { asked, .. }
            | Event::ApprovalRequired { asked, .. }
            | Event::WouldAllow { asked, .. }
            | Event::WouldNeedApproval { asked, .. } => Some(asked.context),
            Event::Revocation { context, .. }
            | Event::RevocationRefused { context, .. }
            | Event::DelegationRevoked { context, .. } => Some(context),
            Event::Allowed(issuance)
            | Event::IssuanceIntent { issuance, .. }
            | Event::Issued { issuance, .. }
            | Event::Federated { issuance, .. }
            | Event::IssuanceFailed { issuance, .. }
            | Event::IssuanceAbandoned { issuance }
            | Event::IssuanceWithheld { issuance, .. } => Some(issuance.asked.context),
            Event::AccessRequested { context, .. }
            | Event::ApprovalStep { context, .. }
            | Event::ApprovalRefused { context, .. }
            | Event::AuditRead { context, .. } => Some(context),
            Event::PolicyReloaded { .. } | Event::KeysReloaded { .. } => None,
        }
    }

    /// The authenticated caller the step is about, when it is one request's.
    fn principal(&self) -> Option<&Principal> {
        match self {
            Event::UnknownStack { asked, .. }
            | Event::Denied { asked, .. }
            | Event::BreakGlassRefused { asked, .. }
            | Event::ApprovalRequired { asked, .. }
            | Event::WouldAllow { asked, .. }
            | Event::WouldNeedApproval { asked, .. } => Some(asked.principal),
            Event::DelegationRevoked { principal, .. } => Some(principal),
            Event::Allowed(issuance)
            | Event::IssuanceIntent { issuance, .. }
            | Event::Issued { issuance, .. }
            | Event::Federated { issuance, .. }
            | Event::IssuanceFailed { issuance, .. }
            | Event::IssuanceAbandoned { issuance }
            | Event::IssuanceWithheld { issuance, .. } => Some(issuance.asked.principal),
            _ => None,
        }
    }

    /// The grant this step is about, if any.
    fn grant(&self) -> Option<&crate::policy::Grant> {
        match self {
            Event::ApprovalRequired { grant, .. }
            | Event::WouldAllow { grant, .. }
            | Event::WouldNeedApproval { grant, .. } => Some(grant),
            Event::Allowed(issuance)
            | Event::IssuanceIntent { issuance, .. }
            | Event::Issued { issuance, .. }
            | Event::Federated { issuance, .. }
            | Event::IssuanceFailed { issuance, .. }
            | Event::IssuanceAbandoned { issuance }
            | Event::IssuanceWithheld { issuance, .. } => Some(issuance.grant),
            _ => None,
        }
    }

    /// The log line for this step, once it is recorded.
    fn log(&self) {
        let asked = |a: &Asked<'_>| (a.context.request_id.clone(), a.principal.subject.clone());
        match self {
            Event::Denied {
                asked: a,
                resolved,
                dry_run: false,
                ..
            } => {
                let (request_id, requester) = asked(a);
                tracing::info!(%request_id, %requester, stack = %resolved.stack.reference, "denied");
            }
            Event::Allowed(issuance) => {
                if let Allowance::BreakGlass { .. } = issuance.allowance {
                    let (request_id, requester) = asked(issuance.asked);
                    tracing::warn!(%request_id, %requester, stack = %issuance.resolved.stack.reference, "break-glass issuance");
                }
            }
            Event::Issued {
                issuance,
                credential_id,
                ..
            } => {
                let (request_id, requester) = asked(issuance.asked);
                tracing::info!(%request_id, issuance_id = %issuance.issuance_id, %requester,
                    stack = %issuance.resolved.stack.reference, rule = %issuance.grant.rule, %credential_id, "issued");
            }
            Event::IssuanceFailed { issuance, error } => {
                tracing::warn!(request_id = %issuance.asked.context.request_id, issuance_id = %issuance.issuance_id,
                    %error, "the cloud refused the exchange");
            }
            Event::IssuanceAbandoned { issuance } => {
                tracing::info!(request_id = %issuance.asked.context.request_id, issuance_id = %issuance.issuance_id,
                    "the caller went away before the cloud was called; nothing was minted");
            }
            Event::IssuanceWithheld {
                issuance,
                credential_id,
            } => {
                tracing::warn!(request_id = %issuance.asked.context.request_id, issuance_id = %issuance.issuance_id,
                    %credential_id, "the caller went away; the issued credential was withheld");
            }
            Event::DelegationRevoked {
                context,
                principal,
                revocation,
                ..
            } => {
                tracing::info!(request_id = %context.request_id, requester = %principal.subject,
                    actor = ?principal.actor, revocation = %revocation.id, "refused: delegation revoked");
            }
            Event::Revocation {
                context,
                principal,
                revocation,
                step,
                ..
            } => {
                tracing::warn!(request_id = %context.request_id, by = %principal.subject,
                    revocation = %revocation.id, scope = revocation.scope.as_str(),
                    agent = %revocation.agent, ?step, "revocation changed");
            }
            Event::PolicyReloaded {
                reason,
                result: Ok((rules, digest)),
            } => {
                tracing::info!(reason, rules = rules.len(), policy_sha256 = %digest, "policy reloaded")
            }
            Event::KeysReloaded {
                reason,
                result: Ok(keys),
            } => tracing::info!(reason, %keys, "signing keys reloaded"),
            Event::KeysReloaded {
                reason,
                result: Err(error),
            } => tracing::error!(reason, %error,
                "signing keys not reloaded; the loaded keys stay in force"),
            Event::PolicyReloaded {
                reason,
                result: Err(problems),
            } => tracing::error!(reason, problems = %problems.join("; "),
                "policy reload rejected; the previous policy stays in force"),
            _ => {}
        }
    }
}

/// Feeds events to the audit log, then wakes the notification dispatcher and
/// writes the log lines.
#[derive(Clone)]
pub(super) struct Recorder {
    audit: Arc<dyn AuditStore>,
    notifier: Notifier,
}

impl Recorder {
    pub fn new(audit: Arc<dyn AuditStore>, notifier: Notifier) -> Self {
        Recorder { audit, notifier }
    }

    /// Commits the events' records, in order, in one append; only then are
    /// they logged and the notification dispatcher woken (it reads what to
    /// announce from the committed records).
    #[tracing::instrument(name = "audit_commit", skip_all, fields(records = events.len()))]
    pub async fn record(&self, events: &[Event<'_>]) -> Result<(), AuditError> {
        let records: Vec<_> = events.iter().map(Event::record).collect();
        let announced = self.notifier.announces_any(&records);
        self.audit.append(records).await?;
        self.committed(events, announced);
        Ok(())
    }

    /// Commits `change` and the events' records in one transaction; `false`
    /// (nothing written, nothing announced) if the change's compare-and-set
    /// found the state changed by someone else.
    #[tracing::instrument(name = "audit_commit", skip_all, fields(records = events.len()))]
    pub async fn record_guarded(
        &self,
        change: Guarded,
        events: &[Event<'_>],
    ) -> Result<bool, AuditError> {
        let records: Vec<_> = events.iter().map(Event::record).collect();
        let announced = self.notifier.announces_any(&records);
        let committed = self.audit.append_guarded(change, records).await?;
        if committed {
            self.committed(events, announced);
        }
        Ok(committed)
    }

    fn committed(&self, events: &[Event<'_>], announced: bool) {
        if announced {
            self.notifier.wake();
        }
        for event in events {
            event.log();
            event.count();
        }
    }

    pub fn audit(&self) -> &Arc<dyn AuditStore> {
        &self.audit
    }
}
