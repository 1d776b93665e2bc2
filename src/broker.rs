//! The issuance pipeline, wiring the stages together:
//! authenticate → resolve stack → resolve ownership → decide → mint subject token →
//! record intent → exchange → record outcome.
//!
//! Invariant: a credential leaves this module only after its outcome record is
//! committed. Every decision about an authenticated principal is audited, allow
//! and deny alike; a request that fails authentication is logged but not audited,
//! because it is tied to nobody and would let anyone fill the audit log.

use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use stackpass_provider::{
    CloudProvider, Credential, ExchangeRequest, IssuanceFacts, ProviderError, ProviderKind, Target,
};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::approvals::{
    check_decider, is_approved, valid_approvals, AccessRequest, AccessState, ApprovalError,
    ApprovalStore, StoreError,
};
use crate::audit::{
    format_timestamp, AuditError, AuditEvent, AuditPage, AuditQuery, AuditRecord, AuditStore,
};
use crate::catalog::{Catalog, CatalogError, EntityRef};
use crate::identity::{IdentityError, Principal, Verifier};
use crate::issuer::{Issuer, IssuerError, SubjectTokenRequest};
use crate::notify::Notifier;
use crate::policy::{self, ApprovalRequirement, Decision, Denial, Grant, PolicyInput, Rule};
use crate::registry::{LookupError, Providers};
use crate::stacks::{Stack, StackRef, StackSource, StackSourceError};

/// One request's facts, resolved from trusted sources before the policy decides.
struct Resolved {
    principal: Principal,
    stack: Stack,
    component: Option<EntityRef>,
    owner: Option<EntityRef>,
    environment: Option<String>,
}

impl Resolved {
    /// A decision record carrying the resolved facts (tag snapshot, owner).
    fn record(&self, template: &AuditRecord) -> AuditRecord {
        let mut record = template.derive(template.event, "");
        record.tags = Some(self.stack.tags.clone());
        record.component = self.component.as_ref().map(ToString::to_string);
        record.owner = self.owner.as_ref().map(ToString::to_string);
        record
    }
}

/// Facts about the HTTP request that belong in the audit log.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub request_id: String,
    pub client_addr: Option<String>,
}

#[derive(Debug, Clone)]
pub struct CredentialRequest {
    pub stack: StackRef,
    pub provider: ProviderKind,
    pub duration: Option<Duration>,
    /// Why the requester needs access (shown to approvers).
    pub reason: Option<String>,
    /// Break-glass: issue now without approval, with this mandatory reason.
    pub break_glass: Option<String>,
}

/// A credential whose issuance is committed to the audit log.
#[derive(Debug)]
pub struct Issued {
    pub issuance_id: Uuid,
    pub requester: EntityRef,
    pub stack: StackRef,
    pub rule: String,
    pub provider: ProviderKind,
    pub target: Target,
    pub duration: Duration,
    pub expires_at: OffsetDateTime,
    pub credential: Credential,
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Provider(#[from] LookupError),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("stack {0} is not known to this broker")]
    UnknownStack(StackRef),
    #[error("{}", .0.summary)]
    Denied(Denial),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    StackSource(#[from] StackSourceError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Issuer(#[from] IssuerError),
    #[error(transparent)]
    Cloud(#[from] ProviderError),
    #[error("{0}")]
    AuditForbidden(String),
    #[error("rule {rule} grants this only with approval")]
    ApprovalRequired {
        rule: String,
        approval: Box<ApprovalRequirement>,
        pending: Option<Box<AccessRequest>>,
    },
    #[error("no approval is needed for this; ask for credentials directly")]
    ApprovalNotNeeded,
    #[error(transparent)]
    Approval(#[from] ApprovalError),
    #[error(transparent)]
    ApprovalStore(#[from] StoreError),
    #[error("rule {0} does not allow break-glass; ask an approver instead")]
    BreakGlassNotAllowed(String),
    #[error("internal error: {0}")]
    Internal(String),
}

pub struct Broker {
    pub verifier: Verifier,
    pub catalog: Arc<dyn Catalog>,
    pub stacks: Arc<dyn StackSource>,
    /// The current policy; replaced as a whole when policy files reload.
    pub rules: std::sync::RwLock<Arc<Vec<Rule>>>,
    pub issuer: Issuer,
    pub providers: Providers,
    pub audit: Arc<dyn AuditStore>,
    pub approvals: Arc<dyn ApprovalStore>,
    pub notifier: Notifier,
    /// Members of these groups may read the whole audit log.
    pub auditor_groups: Vec<EntityRef>,
    pub component_tag: String,
    pub environment_tag: String,
}

impl Broker {
    /// The provider a request names, if this broker has it configured, and the
    /// requested duration checked against that provider's limits.
    fn check_request(
        &self,
        request: &CredentialRequest,
    ) -> Result<&Arc<dyn CloudProvider>, BrokerError> {
        let provider = self.providers.lookup(&request.provider)?;
        let limits = provider.limits();
        if let Some(duration) = request.duration {
            if duration < limits.min_duration || duration > limits.max_duration {
                return Err(BrokerError::InvalidRequest(format!(
                    "duration_seconds is {}; it must be between {} and {}",
                    duration.as_secs(),
                    limits.min_duration.as_secs(),
                    limits.max_duration.as_secs()
                )));
            }
        }
        Ok(provider)
    }

    pub async fn authenticate(
        &self,
        context: &RequestContext,
        token: &SecretString,
    ) -> Result<Principal, BrokerError> {
        Ok(self.verifier.verify(token).await.inspect_err(|e| {
            tracing::warn!(request_id = %context.request_id, client = ?context.client_addr, error = %e, "authentication failed");
        })?)
    }

    /// Everything the policy needs about one request, from trusted sources: the
    /// stack and its tags (stack source), its component and owner, and the
    /// requester's groups (catalog). An unknown stack is audited and refused here.
    async fn resolve(
        &self,
        principal: Principal,
        request: &CredentialRequest,
        template: &AuditRecord,
    ) -> Result<Resolved, BrokerError> {
        let Some(stack) = self.stacks.stack(&request.stack).await? else {
            let mut record = template.derive(template.event, "unknown_stack");
            record.detail =
                Some(serde_json::json!({ "reason": "the stack source does not know this stack" }));
            self.audit.append(vec![record]).await?;
            return Err(BrokerError::UnknownStack(request.stack.clone()));
        };
        let component = stack.tags.get(&self.component_tag).and_then(|value| {
            EntityRef::parse(value, Some("component"), "default")
                .inspect_err(|e| tracing::warn!(stack = %stack.reference, error = %e, "stack's component tag is not an entity reference"))
                .ok()
        });
        let (owner, groups) = tokio::join!(
            async {
                match &component {
                    Some(component) => self.catalog.owner_of(component).await,
                    None => Ok(None),
                }
            },
            self.catalog.groups_of(&principal.subject)
        );
        let environment = stack.tags.get(&self.environment_tag).cloned();
        Ok(Resolved {
            principal: Principal {
                groups: groups?,
                ..principal
            },
            stack,
            component,
            owner: owner?,
            environment,
        })
    }

    fn decide(&self, resolved: &Resolved, request: &CredentialRequest) -> Decision {
        policy::decide(
            &self.current_rules(),
            &PolicyInput {
                principal: &resolved.principal,
                stack: &resolved.stack,
                component: resolved.component.as_ref(),
                owner: resolved.owner.as_ref(),
                environment: resolved.environment.as_deref(),
                provider: &request.provider,
                requested_duration: request.duration,
            },
        )
    }

    /// A dry run: the decision and its reasons for `request`, audited as a
    /// `dry_run` record, with nothing minted or issued.
    pub async fn explain(
        &self,
        context: &RequestContext,
        principal: Principal,
        request: &CredentialRequest,
    ) -> Result<Decision, BrokerError> {
        self.check_request(request)?;
        let template = base_record(context, &principal, request).derive(AuditEvent::DryRun, "");
        let resolved = self.resolve(principal, request, &template).await?;
        let decision = self.decide(&resolved, request);
        let mut record = resolved.record(&template);
        match &decision {
            Decision::Allow(grant) => {
                record.outcome = "would_allow".into();
                record.rule = Some(grant.rule.clone());
                record.role = Some(grant.target.to_string());
                record.duration_seconds = Some(grant.duration.as_secs() as i64);
            }
            Decision::NeedsApproval { grant, approval } => {
                record.outcome = "would_need_approval".into();
                record.rule = Some(grant.rule.clone());
                record.role = Some(grant.target.to_string());
                record.detail = Some(serde_json::json!({ "approval": approval }));
            }
            Decision::Deny(denial) => {
                record.outcome = "would_deny".into();
                record.detail = Some(serde_json::to_value(denial).expect("denials serialize"));
            }
        }
        self.audit.append(vec![record]).await?;
        Ok(decision)
    }

    pub async fn issue(
        &self,
        context: &RequestContext,
        principal: Principal,
        request: &CredentialRequest,
    ) -> Result<Issued, BrokerError> {
        let provider = self.check_request(request)?;
        let template = base_record(context, &principal, request);
        let resolved = self.resolve(principal, request, &template).await?;
        let mut decision_record = resolved.record(&template);
        let grant = match self.decide(&resolved, request) {
            Decision::Deny(denial) => {
                decision_record.outcome = "denied".into();
                decision_record.detail =
                    Some(serde_json::to_value(&denial).expect("denials serialize"));
                self.audit.append(vec![decision_record]).await?;
                tracing::info!(request_id = %context.request_id, requester = %resolved.principal.subject, stack = %resolved.stack.reference, "denied");
                return Err(BrokerError::Denied(denial));
            }
            Decision::Allow(grant) => grant,
            Decision::NeedsApproval {
                mut grant,
                approval,
            } => {
                if let Some(reason) = &request.break_glass {
                    let Some(cap) = approval.break_glass_max_duration else {
                        decision_record.outcome = "denied".into();
                        decision_record.detail = Some(
                            serde_json::json!({ "break_glass": true, "reason": reason, "error": "the rule does not allow break-glass" }),
                        );
                        self.audit.append(vec![decision_record]).await?;
                        return Err(BrokerError::BreakGlassNotAllowed(grant.rule));
                    };
                    grant.duration = grant.duration.min(cap);
                    decision_record.outcome = "break_glass".into();
                    decision_record.detail =
                        Some(serde_json::json!({ "break_glass": true, "reason": reason }));
                    self.notifier.send(
                        format!(
                            ":rotating_light: BREAK-GLASS: {} took {} on {} for {} without approval. Reason: {reason}",
                            resolved.principal.subject,
                            grant.target,
                            resolved.stack.reference,
                            humantime::format_duration(grant.duration)
                        ),
                        serde_json::json!({ "event": "break_glass", "requester": resolved.principal.subject, "stack": resolved.stack.reference, "role": grant.target.as_str(), "reason": reason, "request_id": context.request_id }),
                    );
                    tracing::warn!(request_id = %context.request_id, requester = %resolved.principal.subject, stack = %resolved.stack.reference, "break-glass issuance");
                    grant
                } else {
                    match self
                        .approved_request(context, &resolved, request, &grant, &approval)
                        .await?
                    {
                        Some(approved) => {
                            decision_record.outcome = "allowed".into();
                            decision_record.detail = Some(
                                serde_json::json!({ "access_request": approved.id, "approvers": approved.approvers }),
                            );
                            grant
                        }
                        None => {
                            let pending = self
                                .open_pending_request(&resolved, request, &grant)
                                .await?;
                            decision_record.outcome = "approval_required".into();
                            decision_record.rule = Some(grant.rule.clone());
                            decision_record.role = Some(grant.target.to_string());
                            decision_record.detail = Some(serde_json::json!({
                                "access_request": pending.as_ref().map(|p| &p.id),
                                "approval": approval,
                            }));
                            self.audit.append(vec![decision_record]).await?;
                            return Err(BrokerError::ApprovalRequired {
                                rule: grant.rule,
                                approval: Box::new(approval),
                                pending: pending.map(Box::new),
                            });
                        }
                    }
                }
            }
        };
        self.exchange(context, &resolved, grant, decision_record, provider)
            .await
    }

    /// Creates an access request (or returns the requester's pending one) for a
    /// request the policy grants only with approval. Audited and announced.
    pub async fn request_access(
        &self,
        context: &RequestContext,
        principal: Principal,
        request: &CredentialRequest,
    ) -> Result<AccessRequest, BrokerError> {
        self.check_request(request)?;
        let template = base_record(context, &principal, request);
        let resolved = self.resolve(principal, request, &template).await?;
        match self.decide(&resolved, request) {
            Decision::NeedsApproval { grant, approval } => {
                self.pending_request(context, &resolved, request, &grant, &approval)
                    .await
            }
            Decision::Allow(_) => Err(BrokerError::ApprovalNotNeeded),
            Decision::Deny(denial) => {
                let mut record = resolved.record(&template);
                record.outcome = "denied".into();
                record.detail = Some(serde_json::to_value(&denial).expect("denials serialize"));
                self.audit.append(vec![record]).await?;
                Err(BrokerError::Denied(denial))
            }
        }
    }

    /// The requester's pending, unexpired request for this grant, if any.
    async fn open_pending_request(
        &self,
        resolved: &Resolved,
        request: &CredentialRequest,
        grant: &Grant,
    ) -> Result<Option<AccessRequest>, BrokerError> {
        let pending = self
            .approvals
            .find_request(
                &resolved.principal.subject.to_string(),
                &resolved.stack.reference.to_string(),
                request.provider.as_str(),
                &grant.rule,
                AccessState::Pending,
            )
            .await?;
        Ok(pending.filter(|p| !p.is_expired(OffsetDateTime::now_utc())))
    }

    /// An approved request whose window is open and whose approvals still hold
    /// under the current policy and catalog. One that no longer holds is
    /// invalidated (and audited), and the requester has to ask again.
    async fn approved_request(
        &self,
        context: &RequestContext,
        resolved: &Resolved,
        request: &CredentialRequest,
        grant: &Grant,
        approval: &ApprovalRequirement,
    ) -> Result<Option<AccessRequest>, BrokerError> {
        let requester = resolved.principal.subject.to_string();
        let stack = resolved.stack.reference.to_string();
        let Some(open) = self
            .approvals
            .find_request(
                &requester,
                &stack,
                request.provider.as_str(),
                &grant.rule,
                AccessState::Approved,
            )
            .await?
        else {
            return Ok(None);
        };
        if !open.window_open(OffsetDateTime::now_utc()) {
            return Ok(None);
        }
        if is_approved(self.count_valid_approvals(&open, approval).await?, approval) {
            return Ok(Some(open));
        }
        if self
            .approvals
            .set_state(
                &open.id,
                AccessState::Approved,
                AccessState::Invalidated,
                None,
                None,
                Some("approvals no longer hold under the current policy"),
            )
            .await?
        {
            self.audit_approval_step(
                context,
                &open,
                &resolved.principal.subject,
                "invalidated",
                None,
            )
            .await?;
        }
        Ok(None)
    }

    /// The requester's pending request for this grant, or a new one (audited and
    /// announced). A pending request past its expiry is marked expired first.
    async fn pending_request(
        &self,
        context: &RequestContext,
        resolved: &Resolved,
        request: &CredentialRequest,
        grant: &Grant,
        approval: &ApprovalRequirement,
    ) -> Result<AccessRequest, BrokerError> {
        let requester = resolved.principal.subject.to_string();
        let stack = resolved.stack.reference.to_string();
        let now = OffsetDateTime::now_utc();
        if let Some(pending) = self
            .approvals
            .find_request(
                &requester,
                &stack,
                request.provider.as_str(),
                &grant.rule,
                AccessState::Pending,
            )
            .await?
        {
            if !pending.is_expired(now) {
                return Ok(pending);
            }
            if self
                .approvals
                .set_state(
                    &pending.id,
                    AccessState::Pending,
                    AccessState::Expired,
                    None,
                    None,
                    None,
                )
                .await?
            {
                self.audit_approval_step(
                    context,
                    &pending,
                    &resolved.principal.subject,
                    "expired",
                    None,
                )
                .await?;
            }
        }
        let created = AccessRequest {
            id: Uuid::new_v4().to_string(),
            created_at: format_timestamp(now),
            expires_at: format_timestamp(now + approval.request_ttl),
            requester: requester.clone(),
            stack: stack.clone(),
            provider: request.provider.to_string(),
            rule: grant.rule.clone(),
            role: grant.target.to_string(),
            duration_seconds: grant.duration.as_secs() as i64,
            reason: request.reason.clone(),
            required_approvals: i64::from(approval.count),
            state: AccessState::Pending,
            decided_at: None,
            decided_by: None,
            window_ends_at: None,
            note: None,
            approvers: Vec::new(),
        };
        self.approvals.create_request(&created).await?;
        let mut record =
            AuditRecord::new(AuditEvent::AccessRequested, "pending", &context.request_id);
        record.requester = Some(requester.clone());
        record.stack = Some(stack.clone());
        record.provider = Some(created.provider.clone());
        record.rule = Some(created.rule.clone());
        record.role = Some(created.role.clone());
        record.duration_seconds = Some(created.duration_seconds);
        record.client_addr = context.client_addr.clone();
        record.detail = Some(serde_json::json!({
            "access_request": created.id,
            "reason": created.reason,
            "approvers": approval.approvers,
            "required_approvals": approval.count,
        }));
        self.audit.append(vec![record]).await?;
        self.notifier.send(
            format!(
                "{requester} asks for {} on {stack} ({}). {} approval(s) needed from {}. Approve with `stackpass approvals approve {}`.",
                created.role,
                created.reason.as_deref().unwrap_or("no reason given"),
                approval.count,
                approval.approvers.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
                created.id
            ),
            serde_json::json!({ "event": "access_requested", "access_request": created }),
        );
        Ok(created)
    }

    async fn count_valid_approvals(
        &self,
        request: &AccessRequest,
        approval: &ApprovalRequirement,
    ) -> Result<u32, BrokerError> {
        let mut approvers = Vec::new();
        for approver in &request.approvers {
            let Ok(approver) = EntityRef::parse_strict(approver) else {
                continue;
            };
            let groups = self.catalog.groups_of(&approver).await?;
            approvers.push((approver, groups));
        }
        Ok(valid_approvals(&request.requester, &approvers, approval))
    }

    fn current_requirement(&self, rule: &str) -> Option<ApprovalRequirement> {
        self.current_rules()
            .iter()
            .find(|r| r.name == rule)
            .and_then(|r| r.approval.clone())
    }

    async fn audit_approval_step(
        &self,
        context: &RequestContext,
        request: &AccessRequest,
        by: &EntityRef,
        outcome: &str,
        note: Option<&str>,
    ) -> Result<(), BrokerError> {
        let mut record = AuditRecord::new(AuditEvent::Approval, outcome, &context.request_id);
        record.requester = Some(by.to_string());
        record.stack = Some(request.stack.clone());
        record.provider = Some(request.provider.clone());
        record.rule = Some(request.rule.clone());
        record.role = Some(request.role.clone());
        record.client_addr = context.client_addr.clone();
        record.detail = Some(
            serde_json::json!({ "access_request": request.id, "requested_by": request.requester, "note": note }),
        );
        Ok(self.audit.append(vec![record]).await?)
    }

    /// Approves or denies an access request as `principal`. Fails closed on every
    /// edge: not pending, expired, the requester themselves, not an approver under
    /// the current policy, approving twice.
    pub async fn decide_access_request(
        &self,
        context: &RequestContext,
        principal: &Principal,
        id: &str,
        approve: bool,
        note: Option<&str>,
    ) -> Result<AccessRequest, BrokerError> {
        let not_found = || ApprovalError::NotFound(id.to_owned());
        let request = self
            .approvals
            .get_request(id)
            .await?
            .ok_or_else(not_found)?;
        let now = OffsetDateTime::now_utc();
        if request.state == AccessState::Pending && request.is_expired(now) {
            if self
                .approvals
                .set_state(
                    id,
                    AccessState::Pending,
                    AccessState::Expired,
                    None,
                    None,
                    None,
                )
                .await?
            {
                self.audit_approval_step(context, &request, &principal.subject, "expired", None)
                    .await?;
            }
            return Err(ApprovalError::Expired(id.to_owned()).into());
        }
        let requirement = self.current_requirement(&request.rule);
        let groups = self.catalog.groups_of(&principal.subject).await?;
        if let Err(e) = check_decider(
            &request,
            &principal.subject,
            &groups,
            requirement.as_ref(),
            now,
        ) {
            tracing::warn!(approver = %principal.subject, access_request = %id, error = %e, "approval refused");
            return Err(e.into());
        }
        let (Some(requirement), approver) = (requirement, principal.subject.to_string()) else {
            return Err(ApprovalError::RuleChanged(request.rule.clone()).into());
        };
        if !approve {
            if !self
                .approvals
                .set_state(
                    id,
                    AccessState::Pending,
                    AccessState::Denied,
                    Some(&approver),
                    None,
                    note,
                )
                .await?
            {
                return Err(ApprovalError::NotPending {
                    id: id.to_owned(),
                    state: "decided",
                }
                .into());
            }
            self.audit_approval_step(context, &request, &principal.subject, "denied", note)
                .await?;
            self.notifier.send(
                format!("{approver} denied {}'s request for {} on {}.", request.requester, request.role, request.stack),
                serde_json::json!({ "event": "access_denied", "access_request": id, "by": approver }),
            );
        } else {
            if !self
                .approvals
                .add_approval(id, &approver, &format_timestamp(now))
                .await?
            {
                return Err(ApprovalError::AlreadyApproved(approver).into());
            }
            let updated = self
                .approvals
                .get_request(id)
                .await?
                .ok_or_else(not_found)?;
            if is_approved(
                self.count_valid_approvals(&updated, &requirement).await?,
                &requirement,
            ) {
                let window_ends = format_timestamp(now + requirement.window);
                if self
                    .approvals
                    .set_state(
                        id,
                        AccessState::Pending,
                        AccessState::Approved,
                        Some(&approver),
                        Some(&window_ends),
                        note,
                    )
                    .await?
                {
                    self.audit_approval_step(
                        context,
                        &request,
                        &principal.subject,
                        "approved",
                        note,
                    )
                    .await?;
                    self.notifier.send(
                        format!(
                            "{approver} approved {}'s request for {} on {}; credentials may be obtained until {window_ends}.",
                            request.requester, request.role, request.stack
                        ),
                        serde_json::json!({ "event": "access_approved", "access_request": id, "by": approver }),
                    );
                }
            } else {
                self.audit_approval_step(
                    context,
                    &request,
                    &principal.subject,
                    "approval_recorded",
                    note,
                )
                .await?;
            }
        }
        Ok(self
            .approvals
            .get_request(id)
            .await?
            .ok_or_else(not_found)?)
    }

    /// Pending requests `principal` may decide, and their own requests.
    pub async fn list_access_requests(
        &self,
        principal: &Principal,
    ) -> Result<Vec<AccessRequest>, BrokerError> {
        let me = principal.subject.to_string();
        let now = OffsetDateTime::now_utc();
        let all = self
            .approvals
            .list_requests(&me, &format_timestamp(now))
            .await?;
        let groups = self.catalog.groups_of(&principal.subject).await?;
        Ok(all
            .into_iter()
            .filter(|r| {
                r.requester == me
                    || check_decider(
                        r,
                        &principal.subject,
                        &groups,
                        self.current_requirement(&r.rule).as_ref(),
                        now,
                    )
                    .is_ok()
            })
            .collect())
    }

    async fn exchange(
        &self,
        context: &RequestContext,
        resolved: &Resolved,
        grant: Grant,
        mut decision_record: AuditRecord,
        provider: &Arc<dyn CloudProvider>,
    ) -> Result<Issued, BrokerError> {
        let Resolved {
            principal,
            stack,
            component,
            owner,
            environment,
        } = resolved;
        let issuance_id = Uuid::new_v4();
        let facts = IssuanceFacts {
            issuance_id: issuance_id.to_string(),
            requester: principal.subject.to_string(),
            requester_kind: principal.kind.as_str().to_owned(),
            actor: principal.actor.clone(),
            stack: stack.reference.to_string(),
            component: component.as_ref().map(ToString::to_string),
            component_name: component.as_ref().map(|c| c.name().to_owned()),
            owner: owner.as_ref().map(ToString::to_string),
            environment: environment.clone(),
            rule: grant.rule.clone(),
            session_tags: grant.session_tags.clone(),
        };
        let subject_token = self.issuer.mint(&SubjectTokenRequest {
            facts: &facts,
            provider: provider.subject_claims(&grant.target, &facts),
        })?;

        // Break-glass keeps its flag; everything else that reaches here was allowed.
        if decision_record.outcome.is_empty() {
            decision_record.outcome = "allowed".into();
        }
        decision_record.rule = Some(grant.rule.clone());
        decision_record.role = Some(grant.target.to_string());
        decision_record.duration_seconds = Some(grant.duration.as_secs() as i64);
        decision_record.issuance_id = Some(issuance_id);
        let mut intent = decision_record.derive(AuditEvent::IssuanceIntent, "pending");
        intent.detail = Some(serde_json::json!({
            "subject_token_id": subject_token.jti,
            "session_policy": grant.session_policy.is_some(),
            "decision": decision_record.outcome,
        }));
        self.audit
            .append(vec![decision_record.clone(), intent])
            .await?;

        let result = provider
            .exchange(ExchangeRequest {
                subject_token: subject_token.token,
                target: grant.target.clone(),
                duration: grant.duration,
                session_policy: grant.session_policy.clone(),
                facts,
            })
            .await;

        let credential = match result {
            Ok(credential) => credential,
            Err(error) => {
                let mut outcome = decision_record.derive(AuditEvent::IssuanceOutcome, "failed");
                outcome.detail = Some(serde_json::json!({ "error": error.to_string() }));
                if let Err(audit_error) = self.audit.append(vec![outcome]).await {
                    tracing::error!(request_id = %context.request_id, %issuance_id, error = %audit_error, "could not record a failed issuance");
                }
                tracing::warn!(request_id = %context.request_id, %issuance_id, error = %error, "the cloud refused the exchange");
                return Err(error.into());
            }
        };

        let mut outcome = decision_record.derive(AuditEvent::IssuanceOutcome, "issued");
        outcome.credential_id = Some(credential.credential_id.clone());
        outcome.expires_at = Some(credential.expires_at);
        if let Err(error) = self.audit.append(vec![outcome]).await {
            // The credential exists at the cloud but is dropped here, unseen: without
            // a committed record it must not reach the caller.
            tracing::error!(request_id = %context.request_id, %issuance_id, credential_id = %credential.credential_id, error = %error,
                "issued credential withheld: its audit record could not be committed");
            return Err(error.into());
        }
        tracing::info!(request_id = %context.request_id, %issuance_id, requester = %principal.subject, stack = %stack.reference,
            rule = %grant.rule, credential_id = %credential.credential_id, "issued");
        Ok(Issued {
            issuance_id,
            requester: principal.subject.clone(),
            stack: stack.reference.clone(),
            rule: grant.rule,
            provider: grant.provider,
            target: grant.target,
            duration: grant.duration,
            expires_at: credential.expires_at,
            credential,
        })
    }

    /// Reads the audit log for `principal`: auditors (members of a configured
    /// auditor group, per the catalog) read everything; anyone else only their own
    /// records, and must say so by filtering on themselves.
    pub async fn read_audit(
        &self,
        principal: &Principal,
        query: &AuditQuery,
    ) -> Result<AuditPage, BrokerError> {
        let groups = self.catalog.groups_of(&principal.subject).await?;
        let auditor = self.auditor_groups.iter().any(|g| groups.contains(g));
        let own = query.requester.as_deref() == Some(principal.subject.to_string().as_str());
        if !auditor && !own {
            tracing::warn!(requester = %principal.subject, "audit log read refused");
            return Err(BrokerError::AuditForbidden(format!(
                "{} is not in an auditor group, so it may only read its own records",
                principal.subject
            )));
        }
        Ok(self.audit.query(query).await?)
    }

    pub fn current_rules(&self) -> Arc<Vec<Rule>> {
        self.rules.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Swaps in a new, already validated policy; requests in flight keep the one
    /// they started with.
    pub fn replace_rules(&self, rules: Vec<Rule>) {
        *self.rules.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(rules);
    }

    /// Ready means: the audit store takes writes and the signing key signs.
    pub async fn ready(&self) -> Result<(), String> {
        self.audit.ping().await.map_err(|e| e.to_string())?;
        self.issuer.self_test().map_err(|e| e.to_string())
    }
}

fn base_record(
    context: &RequestContext,
    principal: &Principal,
    request: &CredentialRequest,
) -> AuditRecord {
    let mut record = AuditRecord::new(AuditEvent::Decision, "", &context.request_id);
    record.requester = Some(principal.subject.to_string());
    record.requester_kind = Some(principal.kind.as_str().to_owned());
    record.actor = principal.actor.clone();
    record.issuer = Some(principal.issuer.clone());
    record.stack = Some(request.stack.to_string());
    record.provider = Some(request.provider.to_string());
    record.client_addr = context.client_addr.clone();
    record
}
