//! The approvals workflow: access requests for grants a rule gives only with
//! approval, their approval or denial by other people, and the check, at
//! issuance, that an approval still holds under the current policy and
//! catalog and covers the grant being issued. The rules themselves are pure
//! functions in `approvals`.
//!
//! Every change of an access request is a compare-and-set on its version,
//! committed in one transaction with the audit record that describes it
//! (`Recorder::record_guarded`): there is never a state the audit log does not
//! show, and of two deciders racing exactly one wins. Every attempt to decide
//! that changes nothing is audited as `refused`, with why.

use std::sync::Arc;

use time::OffsetDateTime;

use super::events::{ApprovalStep, Event, Recorder};
use super::resolve::Resolved;
use super::{BrokerError, CredentialRequest, RequestContext};
use crate::approvals::{
    change, check_decider, coverage, insert, is_a_person, is_approved, valid_approvals,
    AccessRequest, AccessRequestId, AccessState, ApprovalError, ApprovalStore, Binding, Coverage,
    Transition,
};
use crate::catalog::{Catalog, EntityRef};
use crate::identity::Principal;
use crate::policy::{ApprovalRequirement, Grant, LivePolicy};

/// How often a decision is re-read and retried after losing a
/// compare-and-set to another decision on the same request.
const ATTEMPTS: usize = 5;

pub(super) struct Approvals {
    pub store: Arc<dyn ApprovalStore>,
    pub catalog: Arc<dyn Catalog>,
    pub policy: Arc<LivePolicy>,
    pub recorder: Recorder,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Approve,
    Deny,
}

impl Verdict {
    fn action(self) -> &'static str {
        match self {
            Verdict::Approve => "approve",
            Verdict::Deny => "deny",
        }
    }
}

/// Whether a request asks for exactly this grant, in this mode, for this long.
fn asks_for(request: &AccessRequest, grant: &Grant, mode: stackpass_provider::Mode) -> bool {
    coverage(request, grant, mode) == Coverage::Covers && request.duration == grant.duration
}

impl Approvals {
    /// The requester's pending, unexpired request for this grant, if any.
    pub async fn open_pending(
        &self,
        resolved: &Resolved,
        request: &CredentialRequest,
        grant: &Grant,
    ) -> Result<Option<AccessRequest>, BrokerError> {
        let now = OffsetDateTime::now_utc();
        let pending = self
            .find(resolved, request, grant, AccessState::Pending)
            .await?;
        Ok(pending
            .into_iter()
            .find(|p| !p.is_expired(now) && coverage(p, grant, request.mode) == Coverage::Covers))
    }

    async fn find(
        &self,
        resolved: &Resolved,
        request: &CredentialRequest,
        grant: &Grant,
        state: AccessState,
    ) -> Result<Vec<AccessRequest>, BrokerError> {
        Ok(self
            .store
            .find(
                &resolved.principal.subject,
                &resolved.stack.reference,
                &request.provider,
                &grant.rule,
                state,
            )
            .await?)
    }

    /// Takes an approved request that covers this issuance: its window is open,
    /// it was approved for this grant (digest) and mode, and its approvals still
    /// hold under the current policy and catalog. Taking it is a
    /// compare-and-set (`approved` → `used`) committed with its audit record,
    /// so one approval serves exactly one issuance, across replicas too. An
    /// approval for a grant that changed, or whose approvals no longer hold,
    /// is invalidated (and audited); the requester has to ask again.
    pub async fn take(
        &self,
        context: &RequestContext,
        resolved: &Resolved,
        request: &CredentialRequest,
        grant: &Grant,
        approval: &ApprovalRequirement,
    ) -> Result<Option<AccessRequest>, BrokerError> {
        let by = &resolved.principal.subject;
        let approved = self
            .find(resolved, request, grant, AccessState::Approved)
            .await?;
        for open in approved {
            let now = OffsetDateTime::now_utc();
            if !open.window_open(now) {
                continue;
            }
            match coverage(&open, grant, request.mode) {
                Coverage::OtherMode => continue,
                Coverage::Changed(why) => {
                    self.invalidate(context, &open, by, why).await?;
                    continue;
                }
                Coverage::Covers => {}
            }
            if !is_approved(self.count_valid(&open, approval).await?, approval) {
                self.invalidate(
                    context,
                    &open,
                    by,
                    "its approvals no longer hold under the current policy",
                )
                .await?;
                continue;
            }
            let transition = Transition {
                used_at: Some(now),
                ..Transition::default()
            };
            let mut used = open.clone();
            used.state = AccessState::Used;
            used.used_at = Some(now);
            used.version += 1;
            let step = Event::ApprovalStep {
                context,
                request: &used,
                by,
                step: ApprovalStep::Used,
                note: None,
            };
            if self
                .recorder
                .record_guarded(change(&open, AccessState::Used, transition), &[step])
                .await?
            {
                return Ok(Some(used));
            }
            // Another issuance took it first.
        }
        Ok(None)
    }

    async fn invalidate(
        &self,
        context: &RequestContext,
        request: &AccessRequest,
        by: &EntityRef,
        why: &'static str,
    ) -> Result<(), BrokerError> {
        let transition = Transition {
            note: Some(why),
            ..Transition::default()
        };
        let step = Event::ApprovalStep {
            context,
            request,
            by,
            step: ApprovalStep::Invalidated,
            note: Some(why),
        };
        self.recorder
            .record_guarded(
                change(request, AccessState::Invalidated, transition),
                &[step],
            )
            .await?;
        Ok(())
    }

    /// The requester's pending request for exactly this grant, mode and
    /// duration, or a new one (audited and announced). Pending requests past
    /// their expiry are marked expired first.
    pub async fn pending_or_new(
        &self,
        context: &RequestContext,
        resolved: &Resolved,
        request: &CredentialRequest,
        grant: &Grant,
        approval: &ApprovalRequirement,
    ) -> Result<AccessRequest, BrokerError> {
        let now = OffsetDateTime::now_utc();
        let requester = &resolved.principal.subject;
        for pending in self
            .find(resolved, request, grant, AccessState::Pending)
            .await?
        {
            if pending.is_expired(now) {
                self.expire(context, &pending, requester).await?;
            } else if asks_for(&pending, grant, request.mode) {
                return Ok(pending);
            }
        }
        let created = AccessRequest {
            id: AccessRequestId::new(),
            created_at: now,
            expires_at: now + approval.request_ttl,
            requester: requester.clone(),
            stack: resolved.stack.reference.clone(),
            provider: request.provider.clone(),
            rule: grant.rule.clone(),
            role: grant.target.to_string(),
            duration: grant.duration,
            reason: request.reason.clone(),
            required_approvals: approval.count,
            state: AccessState::Pending,
            decided_at: None,
            decided_by: None,
            window_ends_at: None,
            note: None,
            approvers: Vec::new(),
            binding: Some(Binding::of(grant, request.mode)),
            version: 0,
            used_at: None,
        };
        let requested = Event::AccessRequested {
            context,
            request: &created,
            approval,
        };
        if !self
            .recorder
            .record_guarded(insert(&created), &[requested])
            .await?
        {
            return Err(ApprovalError::Contended(created.id).into());
        }
        Ok(created)
    }

    /// Marks a pending request expired (if nobody else did first), as `by`.
    async fn expire(
        &self,
        context: &RequestContext,
        request: &AccessRequest,
        by: &EntityRef,
    ) -> Result<(), BrokerError> {
        let step = Event::ApprovalStep {
            context,
            request,
            by,
            step: ApprovalStep::Expired,
            note: None,
        };
        let transition = Transition {
            decided_at: Some(OffsetDateTime::now_utc()),
            ..Transition::default()
        };
        self.recorder
            .record_guarded(change(request, AccessState::Expired, transition), &[step])
            .await?;
        Ok(())
    }

    pub async fn approve(
        &self,
        context: &RequestContext,
        principal: &Principal,
        id: &str,
        note: Option<&str>,
    ) -> Result<AccessRequest, BrokerError> {
        self.decide(context, principal, id, note, Verdict::Approve)
            .await
    }

    pub async fn deny(
        &self,
        context: &RequestContext,
        principal: &Principal,
        id: &str,
        note: Option<&str>,
    ) -> Result<AccessRequest, BrokerError> {
        self.decide(context, principal, id, note, Verdict::Deny)
            .await
    }

    /// Approves or denies `id` as `principal`. Reads the request, checks every
    /// rule, and commits the change with its record as a compare-and-set; if
    /// another decision got in between, reads again and decides on what is
    /// there now (so the loser of a race learns the request is closed). Every
    /// refusal is audited before it is answered.
    async fn decide(
        &self,
        context: &RequestContext,
        principal: &Principal,
        id: &str,
        note: Option<&str>,
        verdict: Verdict,
    ) -> Result<AccessRequest, BrokerError> {
        let mut last = None;
        for _ in 0..ATTEMPTS {
            let found = match AccessRequestId::parse(id) {
                Some(parsed) => self.store.get(parsed).await?,
                None => None,
            };
            let Some(request) = found else {
                let error = ApprovalError::NotFound(id.to_owned());
                return Err(self.refuse(context, principal, verdict, None, error).await);
            };
            let after = match self
                .next_state(context, principal, &request, verdict, note)
                .await
            {
                Ok(after) => after,
                Err(BrokerError::Approval(error)) => {
                    return Err(self
                        .refuse(context, principal, verdict, Some(&request), error)
                        .await)
                }
                Err(other) => return Err(other),
            };
            let by = &principal.subject;
            let now = after.decided_at.unwrap_or_else(OffsetDateTime::now_utc);
            let (step, transition) = match (verdict, after.state) {
                (Verdict::Deny, _) => (
                    ApprovalStep::Denied,
                    Transition {
                        decided_at: Some(now),
                        decided_by: Some(by),
                        note,
                        ..Transition::default()
                    },
                ),
                (Verdict::Approve, AccessState::Approved) => (
                    ApprovalStep::Approved,
                    Transition {
                        decided_at: Some(now),
                        decided_by: Some(by),
                        window_ends_at: after.window_ends_at,
                        note,
                        approval: Some((by, now)),
                        ..Transition::default()
                    },
                ),
                (Verdict::Approve, _) => (
                    ApprovalStep::Recorded,
                    Transition {
                        approval: Some((by, now)),
                        ..Transition::default()
                    },
                ),
            };
            let event = Event::ApprovalStep {
                context,
                request: &after,
                by,
                step,
                note,
            };
            if self
                .recorder
                .record_guarded(change(&request, after.state, transition), &[event])
                .await?
            {
                return Ok(after);
            }
            last = Some(request);
        }
        let request = last.expect("at least one attempt was made");
        let error = ApprovalError::Contended(request.id);
        Err(self
            .refuse(context, principal, verdict, Some(&request), error)
            .await)
    }

    /// The request as it is once `principal`'s verdict is applied, if they may
    /// give it now. Fails closed on every edge: not a person, not pending,
    /// expired (which is recorded), the requester themselves, not an approver
    /// under the current policy, already approved by them.
    async fn next_state(
        &self,
        context: &RequestContext,
        principal: &Principal,
        request: &AccessRequest,
        verdict: Verdict,
        note: Option<&str>,
    ) -> Result<AccessRequest, BrokerError> {
        if !is_a_person(principal) {
            return Err(ApprovalError::NotAPerson {
                kind: principal.kind.as_str(),
                actor: principal.actor.clone(),
            }
            .into());
        }
        let now = OffsetDateTime::now_utc();
        if request.state == AccessState::Pending && request.is_expired(now) {
            self.expire(context, request, &principal.subject).await?;
            return Err(ApprovalError::Expired(request.id).into());
        }
        let requirement = self.policy.approval_for_request(
            &request.rule,
            request.binding.as_ref().map(|b| b.facts.as_str()),
        );
        let groups = self.catalog.groups_of(&principal.subject).await?;
        check_decider(
            request,
            &principal.subject,
            &groups,
            requirement.as_ref(),
            now,
        )?;
        let requirement =
            requirement.ok_or_else(|| ApprovalError::RuleChanged(request.rule.clone()))?;
        let mut after = request.clone();
        after.version += 1;
        if verdict == Verdict::Deny {
            after.state = AccessState::Denied;
            after.decided_at = Some(now);
            after.decided_by = Some(principal.subject.clone());
            after.note = note.map(str::to_owned).or(after.note);
            return Ok(after);
        }
        if after.approvers.contains(&principal.subject) {
            return Err(ApprovalError::AlreadyApproved(principal.subject.clone()).into());
        }
        after.approvers.push(principal.subject.clone());
        if is_approved(self.count_valid(&after, &requirement).await?, &requirement) {
            after.state = AccessState::Approved;
            after.decided_at = Some(now);
            after.decided_by = Some(principal.subject.clone());
            after.window_ends_at = Some(now + requirement.window);
            after.note = note.map(str::to_owned).or(after.note);
        }
        Ok(after)
    }

    /// Records a refused attempt to decide; the error to answer with (the
    /// refusal, or the audit failure that kept it from being recorded).
    async fn refuse(
        &self,
        context: &RequestContext,
        principal: &Principal,
        verdict: Verdict,
        request: Option<&AccessRequest>,
        error: ApprovalError,
    ) -> BrokerError {
        tracing::warn!(approver = %principal.subject, access_request = ?request.map(|r| r.id.to_string()),
            action = verdict.action(), error = %error, "approval refused");
        let refused = Event::ApprovalRefused {
            context,
            principal,
            action: verdict.action(),
            request,
            error: &error,
        };
        match self.recorder.record(&[refused]).await {
            Ok(()) => error.into(),
            Err(audit) => audit.into(),
        }
    }

    /// Pending requests `principal` may decide, and their own requests.
    pub async fn list(&self, principal: &Principal) -> Result<Vec<AccessRequest>, BrokerError> {
        let me = &principal.subject;
        let now = OffsetDateTime::now_utc();
        let all = self.store.list_visible(me, now).await?;
        let groups = self.catalog.groups_of(me).await?;
        Ok(all
            .into_iter()
            .filter(|r| {
                r.requester == *me
                    || check_decider(
                        r,
                        me,
                        &groups,
                        self.policy
                            .approval_for_request(
                                &r.rule,
                                r.binding.as_ref().map(|b| b.facts.as_str()),
                            )
                            .as_ref(),
                        now,
                    )
                    .is_ok()
            })
            .collect())
    }

    /// How many of the request's approvals count under `approval`, with each
    /// approver's groups as the catalog has them now.
    async fn count_valid(
        &self,
        request: &AccessRequest,
        approval: &ApprovalRequirement,
    ) -> Result<u32, BrokerError> {
        let mut approvers = Vec::new();
        for approver in &request.approvers {
            let groups = self.catalog.groups_of(approver).await?;
            approvers.push((approver.clone(), groups));
        }
        Ok(valid_approvals(&request.requester, &approvers, approval))
    }
}
