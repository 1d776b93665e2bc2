//! The approvals workflow: access requests for grants a rule gives only with
//! approval, their approval or denial by other people, and the check, at
//! issuance, that an approval still holds under the current policy and
//! catalog. The rules themselves are pure functions in `approvals`; every step
//! here is audited (and announced where people need to act).

use std::sync::Arc;

use time::OffsetDateTime;

use super::events::{ApprovalStep, Event, Recorder};
use super::resolve::Resolved;
use super::{BrokerError, CredentialRequest, RequestContext};
use crate::approvals::{
    check_decider, is_approved, valid_approvals, AccessRequest, AccessRequestId, AccessState,
    ApprovalError, ApprovalStore, Transition,
};
use crate::catalog::{Catalog, EntityRef};
use crate::identity::Principal;
use crate::policy::{ApprovalRequirement, Grant, LivePolicy};

pub(super) struct Approvals {
    pub store: Arc<dyn ApprovalStore>,
    pub catalog: Arc<dyn Catalog>,
    pub policy: Arc<LivePolicy>,
    pub recorder: Recorder,
}

impl Approvals {
    /// The requester's pending, unexpired request for this grant, if any.
    pub async fn open_pending(
        &self,
        resolved: &Resolved,
        request: &CredentialRequest,
        grant: &Grant,
    ) -> Result<Option<AccessRequest>, BrokerError> {
        let pending = self
            .find(resolved, request, grant, AccessState::Pending)
            .await?;
        Ok(pending.filter(|p| !p.is_expired(OffsetDateTime::now_utc())))
    }

    async fn find(
        &self,
        resolved: &Resolved,
        request: &CredentialRequest,
        grant: &Grant,
        state: AccessState,
    ) -> Result<Option<AccessRequest>, BrokerError> {
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

    /// An approved request whose window is open and whose approvals still hold
    /// under the current policy and catalog. One that no longer holds is
    /// invalidated (and audited), and the requester has to ask again.
    pub async fn approved(
        &self,
        context: &RequestContext,
        resolved: &Resolved,
        request: &CredentialRequest,
        grant: &Grant,
        approval: &ApprovalRequirement,
    ) -> Result<Option<AccessRequest>, BrokerError> {
        let Some(open) = self
            .find(resolved, request, grant, AccessState::Approved)
            .await?
        else {
            return Ok(None);
        };
        if !open.window_open(OffsetDateTime::now_utc()) {
            return Ok(None);
        }
        if is_approved(self.count_valid(&open, approval).await?, approval) {
            return Ok(Some(open));
        }
        let transition = Transition {
            note: Some("approvals no longer hold under the current policy"),
            ..Transition::default()
        };
        if self
            .store
            .transition(
                open.id,
                AccessState::Approved,
                AccessState::Invalidated,
                transition,
            )
            .await?
        {
            self.record_step(
                context,
                &open,
                &resolved.principal.subject,
                ApprovalStep::Invalidated,
                None,
            )
            .await?;
        }
        Ok(None)
    }

    /// The requester's pending request for this grant, or a new one (audited and
    /// announced). A pending request past its expiry is marked expired first.
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
        if let Some(pending) = self
            .find(resolved, request, grant, AccessState::Pending)
            .await?
        {
            if !pending.is_expired(now) {
                return Ok(pending);
            }
            self.expire(context, &pending, requester).await?;
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
        };
        self.store.create(&created).await?;
        self.recorder
            .record(&[Event::AccessRequested {
                context,
                request: &created,
                approval,
            }])
            .await?;
        Ok(created)
    }

    /// Marks a pending request expired (if nobody else did first), as `by`.
    async fn expire(
        &self,
        context: &RequestContext,
        request: &AccessRequest,
        by: &EntityRef,
    ) -> Result<(), BrokerError> {
        if self
            .store
            .transition(
                request.id,
                AccessState::Pending,
                AccessState::Expired,
                Transition::default(),
            )
            .await?
        {
            self.record_step(context, request, by, ApprovalStep::Expired, None)
                .await?;
        }
        Ok(())
    }

    pub async fn approve(
        &self,
        context: &RequestContext,
        principal: &Principal,
        id: &str,
        note: Option<&str>,
    ) -> Result<AccessRequest, BrokerError> {
        let (request, requirement) = self.decidable(context, principal, id).await?;
        let approver = &principal.subject;
        let now = OffsetDateTime::now_utc();
        if !self.store.add_approval(request.id, approver, now).await? {
            return Err(ApprovalError::AlreadyApproved(approver.clone()).into());
        }
        let updated = self.get(request.id).await?;
        if is_approved(
            self.count_valid(&updated, &requirement).await?,
            &requirement,
        ) {
            let transition = Transition {
                decided_by: Some(approver),
                window_ends_at: Some(now + requirement.window),
                note,
            };
            if self
                .store
                .transition(
                    request.id,
                    AccessState::Pending,
                    AccessState::Approved,
                    transition,
                )
                .await?
            {
                let approved = self.get(request.id).await?;
                self.record_step(context, &approved, approver, ApprovalStep::Approved, note)
                    .await?;
            }
        } else {
            self.record_step(context, &request, approver, ApprovalStep::Recorded, note)
                .await?;
        }
        self.get(request.id).await
    }

    pub async fn deny(
        &self,
        context: &RequestContext,
        principal: &Principal,
        id: &str,
        note: Option<&str>,
    ) -> Result<AccessRequest, BrokerError> {
        let (request, _) = self.decidable(context, principal, id).await?;
        let transition = Transition {
            decided_by: Some(&principal.subject),
            note,
            ..Transition::default()
        };
        if !self
            .store
            .transition(
                request.id,
                AccessState::Pending,
                AccessState::Denied,
                transition,
            )
            .await?
        {
            return Err(ApprovalError::NotPending {
                id: request.id,
                state: "decided",
            }
            .into());
        }
        self.record_step(
            context,
            &request,
            &principal.subject,
            ApprovalStep::Denied,
            note,
        )
        .await?;
        self.get(request.id).await
    }

    /// The request `id` and its rule's current requirement, if `principal` may
    /// decide it now. Fails closed on every edge: unknown, not pending,
    /// expired (which is recorded), the requester themselves, not an approver
    /// under the current policy.
    async fn decidable(
        &self,
        context: &RequestContext,
        principal: &Principal,
        id: &str,
    ) -> Result<(AccessRequest, ApprovalRequirement), BrokerError> {
        let request = match AccessRequestId::parse(id) {
            Some(parsed) => self.store.get(parsed).await?,
            None => None,
        }
        .ok_or_else(|| ApprovalError::NotFound(id.to_owned()))?;
        let now = OffsetDateTime::now_utc();
        if request.state == AccessState::Pending && request.is_expired(now) {
            self.expire(context, &request, &principal.subject).await?;
            return Err(ApprovalError::Expired(request.id).into());
        }
        let requirement = self.policy.approval_for(&request.rule);
        let groups = self.catalog.groups_of(&principal.subject).await?;
        if let Err(e) = check_decider(
            &request,
            &principal.subject,
            &groups,
            requirement.as_ref(),
            now,
        ) {
            tracing::warn!(approver = %principal.subject, access_request = %request.id, error = %e, "approval refused");
            return Err(e.into());
        }
        let requirement =
            requirement.ok_or_else(|| ApprovalError::RuleChanged(request.rule.clone()))?;
        Ok((request, requirement))
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
                        self.policy.approval_for(&r.rule).as_ref(),
                        now,
                    )
                    .is_ok()
            })
            .collect())
    }

    async fn get(&self, id: AccessRequestId) -> Result<AccessRequest, BrokerError> {
        Ok(self
            .store
            .get(id)
            .await?
            .ok_or_else(|| ApprovalError::NotFound(id.to_string()))?)
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

    async fn record_step(
        &self,
        context: &RequestContext,
        request: &AccessRequest,
        by: &EntityRef,
        step: ApprovalStep,
        note: Option<&str>,
    ) -> Result<(), BrokerError> {
        Ok(self
            .recorder
            .record(&[Event::ApprovalStep {
                context,
                request,
                by,
                step,
                note,
            }])
            .await?)
    }
}
