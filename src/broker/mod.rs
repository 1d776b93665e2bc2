//! The issuance pipeline, in parts:
//!
//! ```text
//! authenticate ─► resolve + decide ─► (approvals?) ─► exchange ─► Issued
//!   identity/      resolve.rs          approvals.rs    issuance.rs
//! ```
//!
//! `resolve` reads the stack, ownership and groups from trusted sources and
//! asks the pure policy; `approvals` runs the approval workflow; `issuance`
//! mints, records and exchanges; `audit_reads` decides who may read the log.
//! Every step is one typed event (`events`), which builds its audit record and
//! feeds notifications and logs. This module wires the parts together and
//! keeps the order that makes the broker fail closed.
//!
//! Every decision about an authenticated principal is audited, allow and deny
//! alike; a request that fails authentication is logged but not audited,
//! because it is tied to nobody and would let anyone fill the audit log.

mod approvals;
mod audit_reads;
mod events;
mod issuance;
mod resolve;
mod revocations;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use stackpass_provider::{CloudProvider, Credential, Mode, ProviderError, ProviderKind, Target};
use time::OffsetDateTime;
use uuid::Uuid;

use self::approvals::Approvals;
use self::audit_reads::AuditReads;
use self::events::{Allowance, Asked, Event, Recorder};
use self::issuance::Exchange;
use self::resolve::{Resolved, Resolver};
pub use self::revocations::RevocationAnswer;
use self::revocations::Revocations;
use crate::approvals::{
    approved_duration, is_a_person, AccessRequest, AccessRequestId, ApprovalError, ApprovalStore,
    StoreError,
};
use crate::audit::{AuditError, AuditPage, AuditQuery, AuditStore, Guarded, IssuanceFilter};
use crate::catalog::{Catalog, CatalogError, EntityRef};
use crate::identity::{IdentityError, Principal, Verifier};
use crate::issuer::{Issuer, IssuerError, KeyRing};
use crate::notify::Notifier;
use crate::policy::{
    AgentBounds, ApprovalRequirement, Decision, Denial, Grant, LivePolicy, LoadedPolicy, Rule,
};
use crate::registry::{LookupError, Providers};
use crate::revocations::{Revocation, RevocationError, RevocationStore};
use crate::stacks::{ComponentTags, StackRef, StackSource, StackSourceError};

/// Facts about the HTTP request that belong in the audit log.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// The broker's own id for the request.
    pub request_id: String,
    /// The id the client sent in `x-request-id`, if it was plain enough to keep.
    pub client_request_id: Option<String>,
    pub client_addr: Option<String>,
}

#[derive(Debug, Clone)]
pub struct CredentialRequest {
    pub stack: StackRef,
    pub provider: ProviderKind,
    /// Checked against the provider's limits, capped by the rule.
    pub duration: Option<Duration>,
    /// Why the requester needs access (shown to approvers).
    pub reason: Option<String>,
    /// Break-glass: issue now without approval, with this mandatory reason.
    pub break_glass: Option<String>,
    /// A cloud credential, or the broker's subject token for the caller to
    /// exchange itself. Decided, capped and audited the same way.
    pub mode: Mode,
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
        pending: Option<AccessRequestId>,
    },
    #[error("no approval is needed for this; ask for credentials directly")]
    ApprovalNotNeeded,
    #[error(transparent)]
    Approval(#[from] ApprovalError),
    #[error(transparent)]
    ApprovalStore(#[from] StoreError),
    #[error("rule {0} does not allow break-glass; ask an approver instead")]
    BreakGlassNotAllowed(String),
    #[error("the issuance stopped before it could answer; its audit records show how far it got")]
    IssuanceInterrupted,
    #[error("only people break glass; a token with an agent acting (act) or of a service cannot")]
    BreakGlassNotAPerson,
    /// An agent's issuance quota is used up for now.
    #[error("{message}")]
    QuotaExceeded {
        /// Until the oldest counted issuance leaves the window (whole seconds,
        /// at least 1).
        retry_after: Duration,
        message: String,
    },
    #[error("{}", revoked_message(.revoked))]
    DelegationRevoked { revoked: Box<RevokedDelegation> },
    #[error(transparent)]
    Revocation(#[from] RevocationError),
    #[error(transparent)]
    RevocationStore(#[from] crate::revocations::StoreError),
}

/// Which revocation refused an agent's request.
#[derive(Debug)]
pub struct RevokedDelegation {
    pub revocation: Uuid,
    pub agent: String,
    pub person: EntityRef,
    /// `delegation` (the person revoked it) or `agent` (an admin did).
    pub scope: &'static str,
}

fn revoked_message(revoked: &RevokedDelegation) -> String {
    let RevokedDelegation {
        agent,
        person,
        scope,
        ..
    } = revoked;
    if *scope == "agent" {
        format!(
            "agent {agent} is revoked for every person by an agent admin; nothing is issued to it"
        )
    } else {
        format!("{person} revoked their delegation to agent {agent}; nothing is issued to it on their behalf")
    }
}

/// What a broker is built from: startup fills it from configuration, tests
/// from fakes.
pub struct BrokerParts {
    pub verifier: Verifier,
    pub catalog: Arc<dyn Catalog>,
    pub stacks: Arc<dyn StackSource>,
    pub rules: Vec<Rule>,
    /// `[[policy.agents]]`: what agents may get, narrowed from their person's.
    pub agents: Vec<AgentBounds>,
    pub issuer: Issuer,
    pub providers: Providers,
    pub audit: Arc<dyn AuditStore>,
    pub approvals: Arc<dyn ApprovalStore>,
    pub notifier: Notifier,
    /// Members of these groups may read the whole audit log.
    pub auditor_groups: Vec<EntityRef>,
    /// The stack tags that name the catalog component (per tool) and the
    /// environment.
    pub component_tags: ComponentTags,
    pub environment_tag: String,
    /// The longest the broker waits for a cloud (see `Config::cloud_budget`).
    pub cloud_budget: Duration,
    /// Revoked delegations and agents, read on every agent request.
    pub revocations: Arc<dyn RevocationStore>,
    /// Members of these groups may revoke an agent for every person.
    pub agent_admin_groups: Vec<EntityRef>,
}

pub struct Broker {
    verifier: Verifier,
    /// Members see every reason for a denial (see `shown`).
    auditor_groups: Vec<EntityRef>,
    providers: Providers,
    policy: Arc<LivePolicy>,
    resolver: Resolver,
    approvals: Approvals,
    exchange: Exchange,
    audit_reads: AuditReads,
    revocations: Revocations,
    recorder: Recorder,
}

impl Broker {
    pub fn new(parts: BrokerParts) -> Self {
        let policy = Arc::new(LivePolicy::new(parts.rules, parts.agents));
        let recorder = Recorder::new(parts.audit.clone(), parts.notifier);
        Broker {
            verifier: parts.verifier,
            auditor_groups: parts.auditor_groups.clone(),
            providers: parts.providers,
            resolver: Resolver {
                stacks: parts.stacks,
                catalog: parts.catalog.clone(),
                policy: policy.clone(),
                component_tags: parts.component_tags,
                environment_tag: parts.environment_tag,
            },
            approvals: Approvals {
                store: parts.approvals,
                catalog: parts.catalog.clone(),
                policy: policy.clone(),
                recorder: recorder.clone(),
            },
            exchange: Exchange {
                issuer: parts.issuer,
                recorder: recorder.clone(),
                cloud_budget: parts.cloud_budget,
            },
            audit_reads: AuditReads {
                recorder: recorder.clone(),
                catalog: parts.catalog.clone(),
                auditor_groups: parts.auditor_groups,
            },
            revocations: Revocations {
                store: parts.revocations,
                catalog: parts.catalog,
                recorder: recorder.clone(),
                admin_groups: parts.agent_admin_groups,
            },
            policy,
            recorder,
        }
    }

    #[tracing::instrument(name = "authenticate", skip_all)]
    pub async fn authenticate(
        &self,
        context: &RequestContext,
        token: &SecretString,
    ) -> Result<Principal, BrokerError> {
        Ok(self
            .verifier
            .verify(token)
            .await
            .inspect_err(|e| authentication_failed(context, e))?)
    }

    /// A token exchange's `actor_token`: verified like any token, and only
    /// from an issuer that vouches for agents (`agents = true`), so a person's
    /// or a pipeline's token can never be made into an actor.
    pub async fn authenticate_agent(
        &self,
        context: &RequestContext,
        token: &SecretString,
    ) -> Result<Principal, BrokerError> {
        let agent = self.authenticate(context, token).await?;
        if !self.verifier.vouches_for_agents(&agent.issuer) {
            let error = IdentityError::NotAnAgentIssuer {
                issuer: agent.issuer_name.clone(),
            };
            authentication_failed(context, &error);
            return Err(error.into());
        }
        Ok(agent)
    }

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

    /// Resolves the request's facts; an unknown stack is audited and refused.
    #[tracing::instrument(name = "resolve", skip_all)]
    async fn resolve(&self, asked: &Asked<'_>, dry_run: bool) -> Result<Resolved, BrokerError> {
        match self
            .resolver
            .resolve(asked.principal.clone(), &asked.request.stack)
            .await?
        {
            Some(resolved) => Ok(resolved),
            None => {
                self.recorder
                    .record(&[Event::UnknownStack { asked, dry_run }])
                    .await?;
                Err(BrokerError::UnknownStack(asked.request.stack.clone()))
            }
        }
    }

    /// Records a denial; the error to answer with (the denial as the caller
    /// may see it, or the audit failure that kept it from being recorded).
    async fn refuse(&self, asked: &Asked<'_>, resolved: &Resolved, denial: Denial) -> BrokerError {
        let denied = Event::Denied {
            asked,
            resolved,
            denial: &denial,
            dry_run: false,
        };
        match self.recorder.record(&[denied]).await {
            Ok(()) => BrokerError::Denied(self.shown(asked, resolved, denial)),
            Err(e) => e.into(),
        }
    }

    /// What a denial may tell its caller. Its reasons name the stack's tags,
    /// its owner and the groups a rule lets in; they always go to the audit
    /// log, but to the caller only if it owns the stack's component or is an
    /// auditor. Anyone else learns that it was denied, so that probing stack
    /// references reveals nothing about stacks one has no part in.
    fn shown(&self, asked: &Asked<'_>, resolved: &Resolved, denial: Denial) -> Denial {
        let principal = &resolved.principal;
        let member =
            |group: &EntityRef| principal.subject == *group || principal.groups.contains(group);
        let owner = resolved.owner.as_ref().is_some_and(member);
        let auditor = self.auditor_groups.iter().any(member);
        // A pipeline stands for its component: its own stacks' reasons are
        // its to see. A token bound to another stack is told so; the denial
        // names only that stack and the one asked for.
        let pipeline = principal.pipeline.as_ref();
        let own_component =
            pipeline.is_some() && resolved.component.as_ref() == Some(&principal.subject);
        let bound_elsewhere = pipeline
            .and_then(|run| run.bound_stack.as_ref())
            .is_some_and(|bound| *bound != asked.request.stack);
        if owner || auditor || own_component || bound_elsewhere {
            return denial;
        }
        Denial {
            summary: format!(
                "no rule grants {} credentials for {} to {}",
                asked.request.provider, asked.request.stack, principal.subject
            ),
            denied_by: None,
            rules: Vec::new(),
        }
    }

    /// Issues a credential if the policy allows it (directly, through an
    /// approval that still holds, or by break-glass), with every step audited.
    pub async fn issue(
        &self,
        context: &RequestContext,
        principal: Principal,
        request: &CredentialRequest,
    ) -> Result<Issued, BrokerError> {
        let asked = Asked {
            context,
            principal: &principal,
            request,
        };
        self.revocations
            .check(context, &principal, Some(request), false)
            .await?;
        let provider = self.check_request(request)?;
        let resolved = self.resolve(&asked, false).await?;
        let decision = self.resolver.decide(&resolved, request);
        let quota = if matches!(decision, Decision::Deny(_)) {
            None
        } else {
            // Before an approval is taken or an intent written: a refused
            // request consumes nothing.
            self.check_quota(&asked, &resolved).await?
        };
        let (grant, allowance) = match decision {
            Decision::Deny(denial) => return Err(self.refuse(&asked, &resolved, denial).await),
            Decision::Allow(grant) => (grant, Allowance::Policy),
            Decision::NeedsApproval { grant, approval } => {
                self.allowance_for(&asked, &resolved, grant, approval)
                    .await?
            }
        };
        self.exchange
            .run(&asked, &resolved, grant, allowance, quota, provider)
            .await
    }

    /// An agent's quota (its bounds entry's `quota`): the issuances committed
    /// to the audit log in the window, by this agent and for this person
    /// (by any agent). Counting the shared log holds across replicas, and the
    /// returned guard counts again under the chain lock when the issuance's
    /// first records commit, so concurrent requests (on any replica) never
    /// overshoot. A refusal here is audited as a denial
    /// naming the entry (it is tied to an authenticated agent, so it cannot
    /// be used to flood the log anonymously).
    async fn check_quota(
        &self,
        asked: &Asked<'_>,
        resolved: &Resolved,
    ) -> Result<Option<Guarded>, BrokerError> {
        let Some((agent, entry)) = self
            .resolver
            .agent_bounds(&resolved.principal, asked.request)
        else {
            return Ok(None);
        };
        let Some(quota) = entry.quota else {
            return Ok(None);
        };
        let now = OffsetDateTime::now_utc();
        let since = now - quota.window;
        let person = resolved.principal.subject.to_string();
        let counts = [
            (
                quota.per_agent,
                IssuanceFilter::Actor(agent.clone()),
                format!("agent {agent}"),
            ),
            (
                quota.per_person,
                IssuanceFilter::Requester(person.clone()),
                format!("agents acting for {person}"),
            ),
        ];
        let limits: Vec<(IssuanceFilter, u32)> = counts
            .iter()
            .filter_map(|(limit, filter, _)| limit.map(|limit| (filter.clone(), limit)))
            .collect();
        for (limit, filter, who) in counts {
            let Some(limit) = limit else { continue };
            let times = self
                .recorder
                .audit()
                .agent_issuances(&filter, since)
                .await?;
            let limit = limit as usize;
            if times.len() < limit {
                continue;
            }
            // The issuance whose leaving the window brings the count below the limit.
            let frees = times[times.len() - limit] + quota.window;
            let retry_after = Duration::from_secs((frees - now).whole_seconds().max(0) as u64 + 1);
            let reason = format!(
                "quota: {who} got {} credential(s) in the last {} (agents entry {} allows {limit}); retry in {}s",
                times.len(),
                humantime::format_duration(quota.window),
                entry.name,
                retry_after.as_secs()
            );
            let label = crate::policy::bounds_label(&entry.name);
            let denial = Denial {
                summary: reason.clone(),
                denied_by: Some(label.clone()),
                rules: vec![crate::policy::RuleMiss {
                    rule: label,
                    reasons: vec![reason.clone()],
                }],
            };
            self.recorder
                .record(&[Event::Denied {
                    asked,
                    resolved,
                    denial: &denial,
                    dry_run: false,
                }])
                .await?;
            return Err(BrokerError::QuotaExceeded {
                retry_after,
                message: reason,
            });
        }
        // Counted again under the chain lock when the issuance is recorded,
        // so concurrent requests cannot all take the last one.
        Ok(Some(crate::audit::quota_guard(
            &crate::database::format_timestamp(since),
            &limits,
        )))
    }

    /// For a grant that needs approval: break-glass (capped) if asked for,
    /// allowed and asked by a person, or an approval that still holds and
    /// covers this grant (taken: one approval, one issuance, at most its
    /// approved duration); otherwise the request is refused, naming the
    /// pending access request if there is one.
    async fn allowance_for(
        &self,
        asked: &Asked<'_>,
        resolved: &Resolved,
        mut grant: Grant,
        approval: ApprovalRequirement,
    ) -> Result<(Grant, Allowance), BrokerError> {
        if let Some(reason) = &asked.request.break_glass {
            let refusal = if !is_a_person(asked.principal) {
                Some(BrokerError::BreakGlassNotAPerson)
            } else if approval.break_glass_max_duration.is_none() {
                Some(BrokerError::BreakGlassNotAllowed(grant.rule.clone()))
            } else {
                None
            };
            if let Some(refusal) = refusal {
                self.recorder
                    .record(&[Event::BreakGlassRefused {
                        asked,
                        resolved,
                        reason,
                        error: &refusal.to_string(),
                    }])
                    .await?;
                return Err(refusal);
            }
            let cap = approval.break_glass_max_duration.unwrap_or(grant.duration);
            grant.duration = grant.duration.min(cap);
            let allowance = Allowance::BreakGlass {
                reason: reason.clone(),
            };
            return Ok((grant, allowance));
        }
        let request = asked.request;
        if let Some(approved) = self
            .approvals
            .take(asked.context, resolved, request, &grant, &approval)
            .await?
        {
            grant.duration = approved_duration(&approved, request.duration);
            let allowance = Allowance::Approved {
                request: approved.id,
                approvers: approved.approvers,
            };
            return Ok((grant, allowance));
        }
        let pending = self
            .approvals
            .open_pending(resolved, request, &grant)
            .await?
            .map(|p| p.id);
        self.recorder
            .record(&[Event::ApprovalRequired {
                asked,
                resolved,
                grant: &grant,
                approval: &approval,
                pending,
            }])
            .await?;
        Err(BrokerError::ApprovalRequired {
            rule: grant.rule,
            approval: Box::new(approval),
            pending,
        })
    }

    /// A dry run: the decision and its reasons for `request`, audited as a
    /// `dry_run` record, with nothing minted or issued.
    pub async fn explain(
        &self,
        context: &RequestContext,
        principal: Principal,
        request: &CredentialRequest,
    ) -> Result<Decision, BrokerError> {
        let asked = Asked {
            context,
            principal: &principal,
            request,
        };
        self.revocations
            .check(context, &principal, Some(request), true)
            .await?;
        self.check_request(request)?;
        let resolved = self.resolve(&asked, true).await?;
        let decision = self.resolver.decide(&resolved, request);
        let event = match &decision {
            Decision::Allow(grant) => Event::WouldAllow {
                asked: &asked,
                resolved: &resolved,
                grant,
            },
            Decision::NeedsApproval { grant, approval } => Event::WouldNeedApproval {
                asked: &asked,
                resolved: &resolved,
                grant,
                approval,
            },
            Decision::Deny(denial) => Event::Denied {
                asked: &asked,
                resolved: &resolved,
                denial,
                dry_run: true,
            },
        };
        self.recorder.record(&[event]).await?;
        Ok(match decision {
            Decision::Deny(denial) => Decision::Deny(self.shown(&asked, &resolved, denial)),
            other => other,
        })
    }

    /// Creates an access request (or returns the requester's pending one) for a
    /// request the policy grants only with approval. Audited and announced.
    pub async fn request_access(
        &self,
        context: &RequestContext,
        principal: Principal,
        request: &CredentialRequest,
    ) -> Result<AccessRequest, BrokerError> {
        let asked = Asked {
            context,
            principal: &principal,
            request,
        };
        self.revocations
            .check(context, &principal, Some(request), false)
            .await?;
        self.check_request(request)?;
        let resolved = self.resolve(&asked, false).await?;
        match self.resolver.decide(&resolved, request) {
            Decision::NeedsApproval { grant, approval } => {
                // What is approved must be deliverable as asked, or the one
                // issuance it covers would fail.
                self.providers
                    .lookup(&request.provider)?
                    .check_delivery(&grant.target, request.mode, grant.duration)
                    .map_err(BrokerError::InvalidRequest)?;
                self.approvals
                    .pending_or_new(context, &resolved, request, &grant, &approval)
                    .await
            }
            Decision::Allow(_) => Err(BrokerError::ApprovalNotNeeded),
            Decision::Deny(denial) => Err(self.refuse(&asked, &resolved, denial).await),
        }
    }

    /// Approves an access request as `principal` (never their own).
    pub async fn approve_access_request(
        &self,
        context: &RequestContext,
        principal: &Principal,
        id: &str,
        note: Option<&str>,
    ) -> Result<AccessRequest, BrokerError> {
        self.approvals.approve(context, principal, id, note).await
    }

    pub async fn deny_access_request(
        &self,
        context: &RequestContext,
        principal: &Principal,
        id: &str,
        note: Option<&str>,
    ) -> Result<AccessRequest, BrokerError> {
        self.approvals.deny(context, principal, id, note).await
    }

    /// Pending requests `principal` may decide, and their own requests.
    pub async fn list_access_requests(
        &self,
        context: &RequestContext,
        principal: &Principal,
    ) -> Result<Vec<AccessRequest>, BrokerError> {
        self.check_delegation(context, principal).await?;
        self.approvals.list(principal).await
    }

    /// Refuses (403 `delegation-revoked`, audited as a denial) a principal
    /// whose actor's delegation, or the agent itself, is revoked; a principal
    /// without an actor passes. Issuing, explaining and requesting access
    /// check it themselves; other entry points an agent reaches (audit
    /// reads, listings, the MCP tools) call this first.
    pub async fn check_delegation(
        &self,
        context: &RequestContext,
        principal: &Principal,
    ) -> Result<(), BrokerError> {
        self.revocations
            .check(context, principal, None, false)
            .await
    }

    /// Revokes `principal`'s own delegation to `agent` (a name or a glob), or
    /// with `agent_wide` the agent for every person (agent admins only).
    /// Audited; lists the credentials already issued under it.
    pub async fn revoke_agent(
        &self,
        context: &RequestContext,
        principal: &Principal,
        agent: &str,
        agent_wide: bool,
        reason: Option<String>,
    ) -> Result<RevocationAnswer, BrokerError> {
        self.revocations
            .revoke(
                context,
                principal,
                agent,
                agent_wide,
                reason,
                &self.providers,
            )
            .await
    }

    /// Lifts a revocation made by [`Broker::revoke_agent`] with the same
    /// scope and agent; a person cannot lift an admin's.
    pub async fn restore_agent(
        &self,
        context: &RequestContext,
        principal: &Principal,
        agent: &str,
        agent_wide: bool,
    ) -> Result<RevocationAnswer, BrokerError> {
        self.revocations
            .restore(context, principal, agent, agent_wide, &self.providers)
            .await
    }

    /// The caller's own revocations and every agent-wide one.
    pub async fn list_revocations(
        &self,
        principal: &Principal,
    ) -> Result<Vec<Revocation>, BrokerError> {
        self.revocations.list(principal).await
    }

    /// Reads the audit log; the read is itself audited before it returns.
    pub async fn read_audit(
        &self,
        context: &RequestContext,
        principal: &Principal,
        query: &AuditQuery,
    ) -> Result<AuditPage, BrokerError> {
        self.check_delegation(context, principal).await?;
        self.audit_reads.read(context, principal, query).await
    }

    /// The audit store, for the server's checkpoint shipper.
    pub fn audit_store(&self) -> Arc<dyn AuditStore> {
        self.recorder.audit().clone()
    }

    pub fn issuer(&self) -> &Issuer {
        &self.exchange.issuer
    }

    pub fn providers(&self) -> &Providers {
        &self.providers
    }

    /// Records a reloaded policy (with the digest of its text) or why it was
    /// refused, and applies it only once that record is committed: no rule
    /// decides anything the audit log cannot name.
    pub async fn reload_policy(
        &self,
        reason: &str,
        loaded: Result<LoadedPolicy, Vec<String>>,
    ) -> Result<(), AuditError> {
        let (rules, result) = match loaded {
            Ok(policy) => {
                let names = policy.rules.iter().map(|r| r.name.clone()).collect();
                (
                    Some((policy.rules, policy.agents)),
                    Ok((names, policy.digest)),
                )
            }
            Err(problems) => (None, Err(problems)),
        };
        self.recorder
            .record(&[Event::PolicyReloaded { reason, result }])
            .await?;
        if let Some((rules, agents)) = rules {
            self.policy.replace(rules, agents);
        }
        Ok(())
    }

    /// Records a change of signing keys that startup's key reloader loaded
    /// (`Ok`: the keys now in force) or refused (`Err`: why).
    pub async fn record_key_reload(
        &self,
        reason: &str,
        result: Result<&KeyRing, String>,
    ) -> Result<(), AuditError> {
        self.recorder
            .record(&[Event::KeysReloaded { reason, result }])
            .await
    }

    /// Ready means: the audit store takes writes and the signing key signs.
    pub async fn ready(&self) -> Result<(), String> {
        self.recorder
            .audit()
            .ping()
            .await
            .map_err(|e| e.to_string())?;
        self.exchange.issuer.self_test().map_err(|e| e.to_string())
    }
}

/// Every refused token, wherever it was presented: one log line and one count.
pub fn authentication_failed(context: &RequestContext, error: &IdentityError) {
    tracing::warn!(request_id = %context.request_id, client = ?context.client_addr, %error, "authentication failed");
    metrics::counter!(crate::metrics::AUTHENTICATION_FAILURES, "reason" => error.reason())
        .increment(1);
}
