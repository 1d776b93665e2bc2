//! Revocations: a person stops an agent from acting for them (a delegation
//! revocation: this person, this agent or agent pattern), or an admin stops an
//! agent acting for anyone (an agent revocation). The typed [`Revocation`], the
//! pure rules of who may revoke and restore and what a revocation covers
//! ([`covers`], [`check_agent`]) live here; the SQL store in `store`.
//!
//! A revocation is lifted by restoring it (never deleted): by the person for
//! their own delegation, by an admin for an agent revocation. A person cannot
//! lift an admin's revocation.

mod store;

use time::OffsetDateTime;
use uuid::Uuid;

use crate::catalog::EntityRef;
use crate::identity::Principal;
use crate::policy::ValuePattern;

pub use store::{insert, restore, Outstanding, RevocationStore, SqlRevocationStore, StoreError};

/// The longest agent (or agent pattern) a revocation names.
const MAX_AGENT_LEN: usize = 300;

/// Whom a revocation stops the agent acting for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// This person's delegation only (revoked by the person).
    Delegation(EntityRef),
    /// Every person (revoked by an admin).
    Agent,
}

impl Scope {
    pub fn as_str(&self) -> &'static str {
        match self {
            Scope::Delegation(_) => "delegation",
            Scope::Agent => "agent",
        }
    }

    pub fn person(&self) -> Option<&EntityRef> {
        match self {
            Scope::Delegation(person) => Some(person),
            Scope::Agent => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub id: Uuid,
    pub scope: Scope,
    /// The actor string (`principal.actor`) or a glob on it (`*`, `?`).
    pub agent: String,
    pub reason: Option<String>,
    pub revoked_by: EntityRef,
    pub revoked_at: OffsetDateTime,
    pub restored_at: Option<OffsetDateTime>,
    pub restored_by: Option<EntityRef>,
}

impl Revocation {
    pub fn new(
        scope: Scope,
        agent: &str,
        reason: Option<String>,
        by: &EntityRef,
        at: OffsetDateTime,
    ) -> Self {
        Revocation {
            id: Uuid::new_v4(),
            scope,
            agent: agent.to_owned(),
            reason,
            revoked_by: by.clone(),
            revoked_at: at,
            restored_at: None,
            restored_by: None,
        }
    }

    pub fn is_pattern(&self) -> bool {
        ValuePattern::new(&self.agent).is_glob()
    }

    pub fn is_active(&self) -> bool {
        self.restored_at.is_none()
    }
}

/// Whether `revocation`, if still active, stops `actor` acting for `person`.
pub fn covers(revocation: &Revocation, person: &EntityRef, actor: &str) -> bool {
    revocation.is_active()
        && revocation.scope.person().is_none_or(|p| p == person)
        && ValuePattern::new(&revocation.agent).matches(actor)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevocationError {
    #[error("only people revoke or restore delegations; this token is of kind {kind}{}", .actor.as_ref().map(|a| format!(" with agent {a} acting")).unwrap_or_default())]
    NotAPerson {
        kind: &'static str,
        actor: Option<String>,
    },
    #[error("revoking or restoring an agent for every person needs membership in an agent admin group ({0})")]
    NotAnAdmin(String),
    #[error("{0}")]
    InvalidAgent(String),
    #[error("the revocation of {0} kept changing while it was made; retry")]
    Contended(String),
    #[error("no active {scope} revocation of {agent} to restore")]
    NothingToRestore { scope: &'static str, agent: String },
}

/// An agent (or agent pattern) as a revocation may name it: one short line.
pub fn check_agent(agent: &str) -> Result<(), RevocationError> {
    if agent.is_empty() {
        return Err(RevocationError::InvalidAgent(
            "agent is empty; name the agent as it acts (its act.sub), e.g. component:agents/deploy-bot, or a pattern such as component:agents/*".into(),
        ));
    }
    if agent.len() > MAX_AGENT_LEN || agent.chars().any(char::is_control) {
        return Err(RevocationError::InvalidAgent(format!(
            "agent must be one line of at most {MAX_AGENT_LEN} characters"
        )));
    }
    Ok(())
}

/// Who may revoke or restore in `scope`: a person (no actor), and for an
/// agent-wide revocation a member of an admin group (`groups`: the person's
/// groups as the catalog has them now).
pub fn check_revoker(
    principal: &Principal,
    agent_wide: bool,
    groups: &[EntityRef],
    admin_groups: &[EntityRef],
) -> Result<(), RevocationError> {
    if !crate::approvals::is_a_person(principal) {
        return Err(RevocationError::NotAPerson {
            kind: principal.kind.as_str(),
            actor: principal.actor.clone(),
        });
    }
    if agent_wide && !admin_groups.iter().any(|g| groups.contains(g)) {
        let groups = if admin_groups.is_empty() {
            "none are configured: [agents] admin_groups".to_owned()
        } else {
            admin_groups
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(RevocationError::NotAnAdmin(groups));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::PrincipalKind;

    fn entity(s: &str) -> EntityRef {
        EntityRef::parse_strict(s).unwrap()
    }

    fn revocation(scope: Scope, agent: &str) -> Revocation {
        Revocation::new(
            scope,
            agent,
            None,
            &entity("user:default/jane"),
            OffsetDateTime::now_utc(),
        )
    }

    #[test]
    fn a_delegation_revocation_covers_only_its_person_and_matching_agents() {
        let jane = entity("user:default/jane");
        let alex = entity("user:default/alex");
        let exact = revocation(Scope::Delegation(jane.clone()), "agent:deploy-bot");
        assert!(covers(&exact, &jane, "agent:deploy-bot"));
        assert!(!covers(&exact, &jane, "agent:deploy-bot-2"));
        assert!(!covers(&exact, &alex, "agent:deploy-bot"));
        let pattern = revocation(Scope::Delegation(jane.clone()), "component:agents/*");
        assert!(pattern.is_pattern() && !exact.is_pattern());
        assert!(covers(&pattern, &jane, "component:agents/deploy-bot"));
        assert!(!covers(&pattern, &jane, "agent:deploy-bot"));
    }

    #[test]
    fn an_agent_revocation_covers_every_person_until_restored() {
        let mut everyone = revocation(Scope::Agent, "agent:deploy-bot");
        assert!(covers(
            &everyone,
            &entity("user:default/jane"),
            "agent:deploy-bot"
        ));
        assert!(covers(
            &everyone,
            &entity("user:default/alex"),
            "agent:deploy-bot"
        ));
        everyone.restored_at = Some(OffsetDateTime::now_utc());
        assert!(!covers(
            &everyone,
            &entity("user:default/jane"),
            "agent:deploy-bot"
        ));
    }

    #[test]
    fn agents_must_be_one_short_line() {
        assert!(check_agent("agent:deploy-bot").is_ok());
        assert!(check_agent("").is_err());
        assert!(check_agent("agent:bot\nuser:default/jane").is_err());
        assert!(check_agent(&"a".repeat(301)).is_err());
    }

    #[test]
    fn only_people_revoke_and_only_admins_revoke_an_agent_for_everyone() {
        let admins = vec![entity("group:default/security")];
        let principal = Principal {
            issuer: "https://backstage.example".into(),
            issuer_name: "backstage".into(),
            subject: entity("user:default/jane"),
            kind: PrincipalKind::Human,
            actor: None,
            actor_chain: vec![],
            groups: vec![entity("group:default/team-payments")],
            dedicated_audience: false,
            pipeline: None,
        };
        let mut groups = principal.groups.clone();
        assert_eq!(check_revoker(&principal, false, &groups, &admins), Ok(()));
        assert!(matches!(
            check_revoker(&principal, true, &groups, &admins),
            Err(RevocationError::NotAnAdmin(_))
        ));
        assert!(matches!(
            check_revoker(&principal, true, &groups, &[]),
            Err(RevocationError::NotAnAdmin(g)) if g.contains("admin_groups")
        ));
        groups.push(entity("group:default/security"));
        assert_eq!(check_revoker(&principal, true, &groups, &admins), Ok(()));
        let mut agent = principal.clone();
        agent.actor = Some("agent:deploy-bot".into());
        agent.kind = PrincipalKind::Agent;
        assert!(matches!(
            check_revoker(&agent, false, &groups, &admins),
            Err(RevocationError::NotAPerson { .. })
        ));
        assert!(matches!(
            check_revoker(&agent, true, &groups, &admins),
            Err(RevocationError::NotAPerson { .. })
        ));
    }
}
