//! Revocation in the pipeline: a person revokes (or restores) their
//! delegation to an agent, an agent admin revokes (or restores) an agent for
//! every person, and every request of a principal with an actor is checked
//! against the active revocations before anything is resolved or decided.
//!
//! Each change is committed with its audit record in one transaction
//! (`Recorder::record_guarded`); every refused attempt is audited as
//! `revocation`/`refused`. The check is one indexed SELECT on the shared
//! database per agent request, with no cache, so a revocation made on one
//! broker refuses the agent's next request on every broker.

use std::sync::Arc;

use time::OffsetDateTime;

use super::events::{Event, Recorder, RevocationStep};
use super::{BrokerError, CredentialRequest, RequestContext, RevokedDelegation};
use crate::catalog::{Catalog, EntityRef};
use crate::identity::Principal;
use crate::registry::Providers;
use crate::revocations::{
    check_agent, check_revoker, insert, restore, Outstanding, Revocation, RevocationError,
    RevocationStore, Scope,
};

/// What revoking (or restoring) answers: the revocation, whether it was
/// already in that state, and the credentials already issued under it.
#[derive(Debug)]
pub struct RevocationAnswer {
    pub revocation: Revocation,
    /// The same scope and agent were revoked already (or nothing changed).
    pub unchanged: bool,
    pub outstanding: Vec<Outstanding>,
    /// For each provider among `outstanding`: how to cut its credentials short.
    pub recall_hints: Vec<(String, &'static str)>,
}

pub(super) struct Revocations {
    pub store: Arc<dyn RevocationStore>,
    pub catalog: Arc<dyn Catalog>,
    pub recorder: Recorder,
    pub admin_groups: Vec<EntityRef>,
}

impl Revocations {
    /// Refuses (and audits, as a denial or for a dry run a `would_deny`) a
    /// request whose actor may no longer act for its subject. Principals
    /// without an actor pass untouched.
    pub async fn check(
        &self,
        context: &RequestContext,
        principal: &Principal,
        request: Option<&CredentialRequest>,
        dry_run: bool,
    ) -> Result<(), BrokerError> {
        // Every agent in a chain acts for the person: revoking any of them
        // stops the chain, not only the outermost.
        let mut found = None;
        for actor in principal.actors() {
            if let Some(revocation) = self.store.active_for(&principal.subject, actor).await? {
                found = Some((actor, revocation));
                break;
            }
        }
        let Some((actor, revocation)) = found else {
            return Ok(());
        };
        self.recorder
            .record(&[Event::DelegationRevoked {
                context,
                principal,
                request,
                revocation: &revocation,
                dry_run,
            }])
            .await?;
        Err(BrokerError::DelegationRevoked {
            revoked: Box::new(RevokedDelegation {
                revocation: revocation.id,
                agent: actor.to_owned(),
                person: principal.subject.clone(),
                scope: revocation.scope.as_str(),
            }),
        })
    }

    fn scope(principal: &Principal, agent_wide: bool) -> Scope {
        if agent_wide {
            Scope::Agent
        } else {
            Scope::Delegation(principal.subject.clone())
        }
    }

    /// Audits a refused attempt and returns its error.
    async fn refuse(
        &self,
        context: &RequestContext,
        principal: &Principal,
        action: &'static str,
        agent_wide: bool,
        agent: &str,
        error: RevocationError,
    ) -> BrokerError {
        let scope = if agent_wide { "agent" } else { "delegation" };
        let event = Event::RevocationRefused {
            context,
            principal,
            action,
            scope,
            agent,
            error: &error.to_string(),
        };
        match self.recorder.record(&[event]).await {
            Ok(()) => BrokerError::Revocation(error),
            Err(e) => e.into(),
        }
    }

    async fn allowed(
        &self,
        context: &RequestContext,
        principal: &Principal,
        action: &'static str,
        agent_wide: bool,
        agent: &str,
    ) -> Result<(), BrokerError> {
        // Admin groups as the catalog has them now, like auditors and approvers.
        let groups = if agent_wide && crate::approvals::is_a_person(principal) {
            self.catalog.groups_of(&principal.subject).await?
        } else {
            Vec::new()
        };
        let checked = check_revoker(principal, agent_wide, &groups, &self.admin_groups)
            .and_then(|()| check_agent(agent));
        match checked {
            Ok(()) => Ok(()),
            Err(error) => Err(self
                .refuse(context, principal, action, agent_wide, agent, error)
                .await),
        }
    }

    pub async fn revoke(
        &self,
        context: &RequestContext,
        principal: &Principal,
        agent: &str,
        agent_wide: bool,
        reason: Option<String>,
        providers: &Providers,
    ) -> Result<RevocationAnswer, BrokerError> {
        self.allowed(context, principal, "revoke", agent_wide, agent)
            .await?;
        let scope = Self::scope(principal, agent_wide);
        let now = OffsetDateTime::now_utc();
        let outstanding = self.store.outstanding(scope.person(), agent, now).await?;
        // Revoked already: the existing revocation stands, nothing is
        // recorded twice. Otherwise insert; losing the insert to a concurrent
        // revocation of the same agent ends the same way.
        for _ in 0..2 {
            if let Some(existing) = self.store.active(&scope, agent).await? {
                return Ok(answer(existing, true, outstanding, providers));
            }
            let revocation = Revocation::new(
                scope.clone(),
                agent,
                reason.clone(),
                &principal.subject,
                now,
            );
            let event = Event::Revocation {
                context,
                principal,
                revocation: &revocation,
                step: RevocationStep::Revoked,
                outstanding: outstanding.len(),
            };
            if self
                .recorder
                .record_guarded(insert(&revocation), &[event])
                .await?
            {
                return Ok(answer(revocation, false, outstanding, providers));
            }
        }
        Err(BrokerError::Revocation(RevocationError::Contended(
            agent.to_owned(),
        )))
    }

    /// Lifts the active revocation of exactly this scope and agent.
    pub async fn restore(
        &self,
        context: &RequestContext,
        principal: &Principal,
        agent: &str,
        agent_wide: bool,
        providers: &Providers,
    ) -> Result<RevocationAnswer, BrokerError> {
        self.allowed(context, principal, "restore", agent_wide, agent)
            .await?;
        let scope = Self::scope(principal, agent_wide);
        let Some(active) = self.store.active(&scope, agent).await? else {
            let error = RevocationError::NothingToRestore {
                scope: scope.as_str(),
                agent: agent.to_owned(),
            };
            return Err(self
                .refuse(context, principal, "restore", agent_wide, agent, error)
                .await);
        };
        let now = OffsetDateTime::now_utc();
        let mut restored = active.clone();
        restored.restored_at = Some(now);
        restored.restored_by = Some(principal.subject.clone());
        let event = Event::Revocation {
            context,
            principal,
            revocation: &restored,
            step: RevocationStep::Restored,
            outstanding: 0,
        };
        let changed = self
            .recorder
            .record_guarded(restore(&active, &principal.subject, now), &[event])
            .await?;
        Ok(answer(restored, !changed, Vec::new(), providers))
    }

    /// The caller's own revocations and every agent-wide one.
    pub async fn list(&self, principal: &Principal) -> Result<Vec<Revocation>, BrokerError> {
        Ok(self.store.list_for(&principal.subject).await?)
    }
}

fn answer(
    revocation: Revocation,
    unchanged: bool,
    outstanding: Vec<Outstanding>,
    providers: &Providers,
) -> RevocationAnswer {
    let mut recall_hints: Vec<(String, &'static str)> = Vec::new();
    for provider in outstanding.iter().filter_map(|o| o.provider.as_deref()) {
        if recall_hints.iter().any(|(p, _)| p == provider) {
            continue;
        }
        let hint = stackpass_provider::ProviderKind::parse(provider)
            .ok()
            .and_then(|kind| providers.lookup(&kind).ok())
            .map(|p| p.recall_hint())
            .unwrap_or(
                "the broker cannot recall issued credentials; they stay valid until they expire",
            );
        recall_hints.push((provider.to_owned(), hint));
    }
    RevocationAnswer {
        revocation,
        unchanged,
        outstanding,
        recall_hints,
    }
}
