//! Every audit record the broker writes is built here, from its event: one
//! place that says which columns and which detail each step records.

use serde_json::json;
use uuid::Uuid;

use super::{Allowance, AllowedIssuance, ApprovalStep, Asked, Event, RevocationStep};
use crate::audit::{AuditEvent, AuditQuery, AuditRecord, Outcome};
use crate::broker::resolve::Resolved;
use crate::database::format_timestamp;
use crate::identity::PipelineRun;
use crate::issuer::KeyRing;
use crate::policy::{ApprovalRequirement, Denial};

impl Asked<'_> {
    fn record(&self, event: AuditEvent, outcome: Outcome) -> AuditRecord {
        let mut record = AuditRecord::new(event, outcome, &self.context.request_id);
        record.requester = Some(self.principal.subject.to_string());
        record.requester_kind = Some(self.principal.kind.as_str().to_owned());
        record.actor = self.principal.actor.clone();
        record.issuer = Some(self.principal.issuer.clone());
        record.stack = Some(self.request.stack.to_string());
        record.provider = Some(self.request.provider.to_string());
        record.client_addr = self.context.client_addr.clone();
        record
    }

    /// With the facts the trusted sources gave: the tag snapshot and ownership.
    fn resolved_record(
        &self,
        resolved: &Resolved,
        event: AuditEvent,
        outcome: Outcome,
    ) -> AuditRecord {
        let mut record = self.record(event, outcome);
        record.tags = Some(resolved.stack.tags.clone());
        record.component = resolved.component.as_ref().map(ToString::to_string);
        record.owner = resolved.owner.as_ref().map(ToString::to_string);
        record
    }
}

impl AllowedIssuance<'_> {
    fn decision_outcome(&self) -> Outcome {
        match self.allowance {
            Allowance::BreakGlass { .. } => Outcome::BreakGlass,
            _ => Outcome::Allowed,
        }
    }

    /// The decision, intent and outcome records share every column but the
    /// event, outcome and detail.
    fn record(&self, event: AuditEvent, outcome: Outcome) -> AuditRecord {
        let mut record = self.asked.resolved_record(self.resolved, event, outcome);
        record.rule = Some(self.grant.rule.clone());
        record.role = Some(self.grant.target.to_string());
        record.duration_seconds = Some(self.grant.duration.as_secs() as i64);
        record.issuance_id = Some(self.issuance_id);
        record
    }
}

// The audit detail has its own encoding, written out here rather than borrowed
// from the HTTP bodies: it is hashed into the chain, so it must not change when
// the API does.

fn approval_json(approval: &ApprovalRequirement) -> serde_json::Value {
    let duration = |d: std::time::Duration| humantime::format_duration(d).to_string();
    json!({
        "count": approval.count,
        "approvers": approval.approvers.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "window": duration(approval.window),
        "request_ttl": duration(approval.request_ttl),
        "break_glass_max_duration": approval.break_glass_max_duration.map(duration),
    })
}

/// Public facts only: which key signs, which is next, which is retiring.
fn keys_json(keys: &KeyRing) -> serde_json::Value {
    keys.entries()
        .map(|entry| {
            json!({
                "kid": entry.key.kid(),
                "algorithm": entry.key.algorithm().as_str(),
                "state": entry.state.name(),
                "retire_after": entry.state.retire_after().map(format_timestamp),
            })
        })
        .collect()
}

fn pipeline_json(run: &PipelineRun) -> serde_json::Value {
    let mut fields = serde_json::Map::new();
    fields.insert("system".into(), run.system.as_str().into());
    let optional = [
        ("run_id", run.run_id.clone()),
        ("run_url", run.run_url.clone()),
        ("repository", run.repository.clone()),
        ("ref", run.git_ref.clone()),
        ("workflow", run.workflow.clone()),
        ("phase", run.phase.map(|p| p.as_str().to_owned())),
        ("stack", run.bound_stack.as_ref().map(ToString::to_string)),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            fields.insert(name.into(), value.into());
        }
    }
    serde_json::Value::Object(fields)
}

fn denial_json(denial: &Denial) -> serde_json::Value {
    json!({
        "summary": denial.summary,
        "denied_by": denial.denied_by,
        "rules": denial
            .rules
            .iter()
            .map(|miss| json!({ "rule": miss.rule, "reasons": miss.reasons }))
            .collect::<Vec<_>>(),
    })
}

impl Event<'_> {
    /// The event's audit record: the one place records are built. A client's
    /// own request id goes into the detail, beside the broker's in `request_id`.
    pub fn record(&self) -> AuditRecord {
        let mut record = self.build_record();
        let mut add = |name: &str, value: serde_json::Value| {
            let mut detail = record.detail.take().unwrap_or_else(|| json!({}));
            if let Some(fields) = detail.as_object_mut() {
                fields.insert(name.into(), value);
            }
            record.detail = Some(detail);
        };
        if let Some(client_id) = self.context().and_then(|c| c.client_request_id.as_deref()) {
            add("client_request_id", client_id.into());
        }
        // A machine caller's record names the run that asked, beside the
        // component it acts as (the requester).
        if let Some(run) = self.principal().and_then(|p| p.pipeline.as_ref()) {
            add("pipeline", pipeline_json(run));
        }
        // An agent's grant names the bounds entry that narrowed it (a denial
        // by bounds names it in denied_by).
        if let Some(bounds) = self.grant().and_then(|g| g.agent_bounds.as_ref()) {
            add(
                "agent_bounds",
                json!({ "entry": bounds.entry, "beyond": bounds.beyond }),
            );
        }
        if let Some(scopes) = self.grant().and_then(|g| g.scopes.as_ref()) {
            add("scopes", json!(scopes));
        }
        // The `actor` column names the current actor; agents acting for
        // agents are all named here, outermost first.
        if let Some(actors) = self.principal().map(|p| p.actors()) {
            if actors.len() > 1 {
                add("actor_chain", json!(actors));
            }
        }
        record
    }

    fn build_record(&self) -> AuditRecord {
        let dry_or = |dry_run: bool| {
            if dry_run {
                AuditEvent::DryRun
            } else {
                AuditEvent::Decision
            }
        };
        match self {
            Event::UnknownStack { asked, dry_run } => {
                let mut record = asked.record(dry_or(*dry_run), Outcome::UnknownStack);
                record.detail =
                    Some(json!({ "reason": "the stack source does not know this stack" }));
                record
            }
            Event::DelegationRevoked {
                context,
                principal,
                request,
                revocation,
                dry_run,
            } => {
                let outcome = if *dry_run {
                    Outcome::WouldDeny
                } else {
                    Outcome::Denied
                };
                let mut record = match request {
                    Some(request) => Asked {
                        context,
                        principal,
                        request,
                    }
                    .record(dry_or(*dry_run), outcome),
                    None => {
                        let mut record =
                            AuditRecord::new(AuditEvent::Decision, outcome, &context.request_id);
                        record.requester = Some(principal.subject.to_string());
                        record.requester_kind = Some(principal.kind.as_str().to_owned());
                        record.actor = principal.actor.clone();
                        record.issuer = Some(principal.issuer.clone());
                        record.client_addr = context.client_addr.clone();
                        record
                    }
                };
                record.detail = Some(json!({
                    "summary": "the delegation to this agent is revoked",
                    "revocation": revocation.id.to_string(),
                    "scope": revocation.scope.as_str(),
                    "revoked_agent": revocation.agent,
                    "revoked_by": revocation.revoked_by.to_string(),
                    "revoked_at": format_timestamp(revocation.revoked_at),
                }));
                record
            }
            Event::Revocation {
                context,
                principal,
                revocation,
                step,
                outstanding,
            } => {
                let outcome = match step {
                    RevocationStep::Revoked => Outcome::Revoked,
                    RevocationStep::Restored => Outcome::Restored,
                };
                let mut record =
                    AuditRecord::new(AuditEvent::Revocation, outcome, &context.request_id);
                record.requester = Some(principal.subject.to_string());
                record.requester_kind = Some(principal.kind.as_str().to_owned());
                record.issuer = Some(principal.issuer.clone());
                record.client_addr = context.client_addr.clone();
                record.detail = Some(json!({
                    "revocation": revocation.id.to_string(),
                    "scope": revocation.scope.as_str(),
                    "person": revocation.scope.person().map(ToString::to_string),
                    "agent": revocation.agent,
                    "reason": revocation.reason,
                    "outstanding_credentials": outstanding,
                }));
                record
            }
            Event::RevocationRefused {
                context,
                principal,
                action,
                scope,
                agent,
                error,
            } => {
                let mut record = AuditRecord::new(
                    AuditEvent::Revocation,
                    Outcome::Refused,
                    &context.request_id,
                );
                record.requester = Some(principal.subject.to_string());
                record.requester_kind = Some(principal.kind.as_str().to_owned());
                record.actor = principal.actor.clone();
                record.issuer = Some(principal.issuer.clone());
                record.client_addr = context.client_addr.clone();
                record.detail = Some(json!({
                    "action": action,
                    "scope": scope,
                    "agent": agent,
                    "error": error,
                }));
                record
            }
            Event::Denied {
                asked,
                resolved,
                denial,
                dry_run,
            } => {
                let outcome = if *dry_run {
                    Outcome::WouldDeny
                } else {
                    Outcome::Denied
                };
                let mut record = asked.resolved_record(resolved, dry_or(*dry_run), outcome);
                record.detail = Some(denial_json(denial));
                record
            }
            Event::BreakGlassRefused {
                asked,
                resolved,
                reason,
                error,
            } => {
                let mut record =
                    asked.resolved_record(resolved, AuditEvent::Decision, Outcome::Denied);
                record.detail =
                    Some(json!({ "break_glass": true, "reason": reason, "error": error }));
                record
            }
            Event::ApprovalRequired {
                asked,
                resolved,
                grant,
                approval,
                pending,
            } => {
                let mut record = asked.resolved_record(
                    resolved,
                    AuditEvent::Decision,
                    Outcome::ApprovalRequired,
                );
                record.rule = Some(grant.rule.clone());
                record.role = Some(grant.target.to_string());
                record.detail = Some(json!({
                    "access_request": pending.map(|id| id.to_string()),
                    "approval": approval_json(approval),
                }));
                record
            }
            Event::WouldAllow {
                asked,
                resolved,
                grant,
            } => {
                let mut record =
                    asked.resolved_record(resolved, AuditEvent::DryRun, Outcome::WouldAllow);
                record.rule = Some(grant.rule.clone());
                record.role = Some(grant.target.to_string());
                record.duration_seconds = Some(grant.duration.as_secs() as i64);
                record
            }
            Event::WouldNeedApproval {
                asked,
                resolved,
                grant,
                approval,
            } => {
                let mut record =
                    asked.resolved_record(resolved, AuditEvent::DryRun, Outcome::WouldNeedApproval);
                record.rule = Some(grant.rule.clone());
                record.role = Some(grant.target.to_string());
                record.detail = Some(json!({ "approval": approval_json(approval) }));
                record
            }
            Event::Allowed(issuance) => {
                let mut record = issuance.record(AuditEvent::Decision, issuance.decision_outcome());
                record.detail = match issuance.allowance {
                    Allowance::Policy => None,
                    Allowance::Approved { request, approvers } => Some(json!({
                        "access_request": request.to_string(),
                        "approvers": approvers.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    })),
                    Allowance::BreakGlass { reason } => {
                        Some(json!({ "break_glass": true, "reason": reason }))
                    }
                };
                record
            }
            Event::IssuanceIntent {
                issuance,
                subject_token_id,
            } => {
                let mut record = issuance.record(AuditEvent::IssuanceIntent, Outcome::Pending);
                record.detail = Some(json!({
                    "subject_token_id": subject_token_id,
                    "session_policy": issuance.grant.session_policy.is_some(),
                    "decision": issuance.decision_outcome().as_str(),
                }));
                record
            }
            Event::Issued {
                issuance,
                credential_id,
                expires_at,
            } => {
                let mut record = issuance.record(AuditEvent::IssuanceOutcome, Outcome::Issued);
                record.credential_id = Some((*credential_id).to_owned());
                record.expires_at = Some(*expires_at);
                record
            }
            Event::Federated {
                issuance,
                subject_token_id,
                audience,
                expires_at,
            } => {
                let mut record = issuance.record(AuditEvent::IssuanceOutcome, Outcome::Issued);
                record.credential_id = Some(subject_token_id.to_string());
                record.expires_at = Some(*expires_at);
                record.detail = Some(json!({
                    "mode": "federation",
                    "subject_token_id": subject_token_id,
                    "audience": audience,
                    "decision": issuance.decision_outcome().as_str(),
                }));
                record
            }
            Event::IssuanceFailed { issuance, error } => {
                let mut record = issuance.record(AuditEvent::IssuanceOutcome, Outcome::Failed);
                record.detail = Some(json!({ "error": error.to_string() }));
                record
            }
            Event::IssuanceAbandoned { issuance } => {
                let mut record = issuance.record(AuditEvent::IssuanceOutcome, Outcome::Abandoned);
                record.detail = Some(json!({
                    "reason": "the caller went away before the cloud was called; nothing was minted"
                }));
                record
            }
            Event::IssuanceWithheld {
                issuance,
                credential_id,
            } => {
                let mut record = issuance.record(AuditEvent::IssuanceWithheld, Outcome::Withheld);
                record.credential_id = Some((*credential_id).to_owned());
                record.detail = Some(json!({
                    "reason": "the caller went away (hung up or timed out) before the credential was handed over; it was dropped unseen"
                }));
                record
            }
            Event::AccessRequested {
                context,
                request,
                approval,
            } => {
                let mut record = AuditRecord::new(
                    AuditEvent::AccessRequested,
                    Outcome::Pending,
                    &context.request_id,
                );
                record.requester = Some(request.requester.to_string());
                record.stack = Some(request.stack.to_string());
                record.provider = Some(request.provider.to_string());
                record.rule = Some(request.rule.clone());
                record.role = Some(request.role.clone());
                record.duration_seconds = Some(request.duration.as_secs() as i64);
                record.client_addr = context.client_addr.clone();
                record.detail = Some(json!({
                    "access_request": request.id.to_string(),
                    "reason": request.reason,
                    "approvers": approval.approvers.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "required_approvals": approval.count,
                    "mode": request.binding.as_ref().map(|b| b.mode.as_str()),
                    "grant": request.binding.as_ref().map(|b| &b.facts),
                    "grant_digest": request.binding.as_ref().map(|b| &b.digest),
                }));
                record
            }
            Event::ApprovalStep {
                context,
                request,
                by,
                step,
                note,
            } => {
                let outcome = match step {
                    ApprovalStep::Recorded => Outcome::ApprovalRecorded,
                    ApprovalStep::Approved => Outcome::Approved,
                    ApprovalStep::Denied => Outcome::Denied,
                    ApprovalStep::Expired => Outcome::Expired,
                    ApprovalStep::Invalidated => Outcome::Invalidated,
                    ApprovalStep::Used => Outcome::Used,
                };
                let mut record =
                    AuditRecord::new(AuditEvent::Approval, outcome, &context.request_id);
                record.requester = Some(by.to_string());
                record.stack = Some(request.stack.to_string());
                record.provider = Some(request.provider.to_string());
                record.rule = Some(request.rule.clone());
                record.role = Some(request.role.clone());
                record.duration_seconds = Some(request.duration.as_secs() as i64);
                record.client_addr = context.client_addr.clone();
                record.detail = Some(json!({
                    "access_request": request.id.to_string(),
                    "requested_by": request.requester.to_string(),
                    "note": note,
                    "mode": request.binding.as_ref().map(|b| b.mode.as_str()),
                    "grant_digest": request.binding.as_ref().map(|b| &b.digest),
                    "window_ends_at": request.window_ends_at.map(format_timestamp),
                }));
                record
            }
            Event::ApprovalRefused {
                context,
                principal,
                action,
                request,
                error,
            } => {
                let mut record =
                    AuditRecord::new(AuditEvent::Approval, Outcome::Refused, &context.request_id);
                record.requester = Some(principal.subject.to_string());
                record.requester_kind = Some(principal.kind.as_str().to_owned());
                record.actor = principal.actor.clone();
                record.issuer = Some(principal.issuer.clone());
                record.client_addr = context.client_addr.clone();
                if let Some(request) = request {
                    record.stack = Some(request.stack.to_string());
                    record.provider = Some(request.provider.to_string());
                    record.rule = Some(request.rule.clone());
                    record.role = Some(request.role.clone());
                }
                record.detail = Some(json!({
                    "action": action,
                    "access_request": request.map(|r| r.id.to_string()),
                    "state": request.map(|r| r.state.as_str()),
                    "error": error.to_string(),
                }));
                record
            }
            Event::PolicyReloaded { reason, result } => {
                let (outcome, detail) = match result {
                    Ok((rules, digest)) => (
                        Outcome::Applied,
                        json!({ "reason": reason, "rules": rules, "policy_sha256": digest }),
                    ),
                    Err(problems) => (
                        Outcome::Rejected,
                        json!({ "reason": reason, "problems": problems }),
                    ),
                };
                let mut record = AuditRecord::new(
                    AuditEvent::PolicyReloaded,
                    outcome,
                    &format!("policy-reload-{}", Uuid::new_v4()),
                );
                record.detail = Some(detail);
                record
            }
            Event::KeysReloaded { reason, result } => {
                let (outcome, detail) = match result {
                    Ok(keys) => (
                        Outcome::Applied,
                        json!({ "reason": reason, "keys": keys_json(keys) }),
                    ),
                    Err(error) => (
                        Outcome::Rejected,
                        json!({ "reason": reason, "error": error }),
                    ),
                };
                let mut record = AuditRecord::new(
                    AuditEvent::KeysReloaded,
                    outcome,
                    &format!("keys-reload-{}", Uuid::new_v4()),
                );
                record.detail = Some(detail);
                record
            }
            Event::AuditRead {
                context,
                principal,
                query,
                result,
            } => {
                let (outcome, got) = match result {
                    Ok(page) => (
                        Outcome::Returned,
                        json!({
                            "records_returned": page.records.len(),
                            "first_seq": page.records.first().map(|r| r.seq),
                            "last_seq": page.records.last().map(|r| r.seq),
                        }),
                    ),
                    Err(why) => (Outcome::Denied, json!({ "reason": why })),
                };
                let mut record =
                    AuditRecord::new(AuditEvent::AuditRead, outcome, &context.request_id);
                record.requester = Some(principal.subject.to_string());
                record.requester_kind = Some(principal.kind.as_str().to_owned());
                record.actor = principal.actor.clone();
                record.issuer = Some(principal.issuer.clone());
                record.client_addr = context.client_addr.clone();
                record.detail = Some(json!({ "query": audit_query_json(query), "result": got }));
                record
            }
        }
    }
}

fn audit_query_json(query: &AuditQuery) -> serde_json::Value {
    json!({
        "requester": query.requester,
        "stack": query.stack,
        "provider": query.provider,
        "outcome": query.outcome,
        "since": query.since.map(format_timestamp),
        "until": query.until.map(format_timestamp),
        "after_seq": query.after_seq,
        "limit": query.limit,
    })
}
