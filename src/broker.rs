//! The issuance pipeline, wiring the stages together:
//! authenticate → resolve stack → resolve ownership → decide → mint subject token →
//! record intent → exchange → record outcome.
//!
//! Invariant: a credential leaves this module only after its outcome record is
//! committed. Every decision about an authenticated principal is audited, allow
//! and deny alike; a request that fails authentication is logged but not audited,
//! because it is tied to nobody and would let anyone fill the audit log.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use stackpass_provider::{CloudProvider, Credential, ExchangeRequest, ProviderError, ProviderKind};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::audit::{AuditError, AuditEvent, AuditPage, AuditQuery, AuditRecord, AuditStore};
use crate::catalog::{Catalog, CatalogError, EntityRef};
use crate::identity::{IdentityError, Principal, Verifier};
use crate::issuer::{aws_safe_name, Issuer, IssuerError, SubjectTokenRequest};
use crate::policy::{self, Decision, Denial, Grant, PolicyInput, Rule};
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
}

/// A credential whose issuance is committed to the audit log.
#[derive(Debug)]
pub struct Issued {
    pub issuance_id: Uuid,
    pub requester: EntityRef,
    pub stack: StackRef,
    pub rule: String,
    pub role: String,
    pub duration: Duration,
    pub expires_at: OffsetDateTime,
    pub credential: Credential,
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("provider {0} is not enabled on this broker")]
    ProviderNotEnabled(ProviderKind),
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
    Provider(#[from] ProviderError),
    #[error("{0}")]
    AuditForbidden(String),
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
    pub providers: HashMap<ProviderKind, Arc<dyn CloudProvider>>,
    pub audit: Arc<dyn AuditStore>,
    /// Members of these groups may read the whole audit log.
    pub auditor_groups: Vec<EntityRef>,
    pub component_tag: String,
    pub environment_tag: String,
}

impl Broker {
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
                provider: request.provider,
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
        let template = base_record(context, &principal, request).derive(AuditEvent::DryRun, "");
        let resolved = self.resolve(principal, request, &template).await?;
        let decision = self.decide(&resolved, request);
        let mut record = resolved.record(&template);
        match &decision {
            Decision::Allow(grant) => {
                record.outcome = "would_allow".into();
                record.rule = Some(grant.rule.clone());
                record.role = Some(grant.role.clone());
                record.duration_seconds = Some(grant.duration.as_secs() as i64);
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
        let provider = self
            .providers
            .get(&request.provider)
            .ok_or(BrokerError::ProviderNotEnabled(request.provider))?;
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
        };
        self.exchange(
            context,
            &resolved,
            grant,
            decision_record,
            provider.as_ref(),
        )
        .await
    }

    async fn exchange(
        &self,
        context: &RequestContext,
        resolved: &Resolved,
        grant: Grant,
        mut decision_record: AuditRecord,
        provider: &dyn CloudProvider,
    ) -> Result<Issued, BrokerError> {
        let Resolved {
            principal,
            stack,
            component,
            owner,
            environment,
        } = resolved;
        let issuance_id = Uuid::new_v4();
        let subject_token = self.issuer.mint(&SubjectTokenRequest {
            audience: provider.audience(),
            provider: grant.provider,
            stack: &stack.reference,
            principal,
            component: component.as_ref(),
            owner: owner.as_ref(),
            environment: environment.as_deref(),
            rule: &grant.rule,
            session_tags: &grant.session_tags,
            issuance_id,
        })?;

        decision_record.outcome = "allowed".into();
        decision_record.rule = Some(grant.rule.clone());
        decision_record.role = Some(grant.role.clone());
        decision_record.duration_seconds = Some(grant.duration.as_secs() as i64);
        decision_record.issuance_id = Some(issuance_id);
        let mut intent = decision_record.derive(AuditEvent::IssuanceIntent, "pending");
        intent.detail = Some(
            serde_json::json!({ "subject_token_id": subject_token.jti, "session_policy": grant.session_policy.is_some() }),
        );
        self.audit
            .append(vec![decision_record.clone(), intent])
            .await?;

        let session_name = aws_safe_name(&principal.subject);
        let result = provider
            .exchange(ExchangeRequest {
                subject_token: subject_token.token,
                role: grant.role.clone(),
                session_name,
                duration: grant.duration,
                session_policy: grant.session_policy.clone(),
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
            role: grant.role,
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
