//! A delegation: a person and the agent acting for them, made into the one
//! principal the broker decides about (RFC 8693 token exchange). Pure: both
//! tokens are verified before this is asked, and whether the agent's issuer
//! vouches for agents is checked by the caller, who knows the issuers.
//!
//! The result is the same shape an `act` claim gives: the person as subject,
//! kind agent, the agent as the current actor, and any actors the agent's
//! own token named nested below it.

use super::{Principal, PrincipalKind, MAX_ACTOR_CHAIN};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DelegationError {
    #[error("the subject_token names {0}, which is not a person; send the token of the person the agent acts for (a Backstage user token)")]
    SubjectNotAPerson(String),
    #[error("the actor_token names {0}, which is not an agent")]
    ActorNotAnAgent(String),
    #[error("the actor_token names {0}, a person; only agents act for people")]
    ActorIsAPerson(String),
    #[error("{0} cannot act for itself; send the agent's own token as subject_token alone")]
    SameSubject(String),
    #[error("the delegation chain is longer than {MAX_ACTOR_CHAIN} actors")]
    ChainTooLong,
}

/// The principal "`agent` acting for `person`".
pub fn delegate(person: Principal, agent: Principal) -> Result<Principal, DelegationError> {
    let is_person = person.kind == PrincipalKind::Human
        && person.subject.kind() == "user"
        && person.actors().is_empty()
        && person.pipeline.is_none();
    if !is_person {
        return Err(DelegationError::SubjectNotAPerson(
            person.subject.to_string(),
        ));
    }
    if agent.subject.kind() == "user" {
        return Err(DelegationError::ActorIsAPerson(agent.subject.to_string()));
    }
    let chain: Vec<String> = agent.actors().into_iter().map(str::to_owned).collect();
    if agent.kind != PrincipalKind::Agent || chain.is_empty() {
        return Err(DelegationError::ActorNotAnAgent(agent.subject.to_string()));
    }
    let person_name = person.subject.to_string();
    if chain.contains(&person_name) {
        return Err(DelegationError::SameSubject(person_name));
    }
    if chain.len() > MAX_ACTOR_CHAIN {
        return Err(DelegationError::ChainTooLong);
    }
    Ok(Principal {
        issuer: person.issuer,
        issuer_name: person.issuer_name,
        subject: person.subject,
        kind: PrincipalKind::Agent,
        actor: chain.first().cloned(),
        actor_chain: chain,
        groups: Vec::new(),
        // Only as dedicated as the less dedicated of the two tokens.
        dedicated_audience: person.dedicated_audience && agent.dedicated_audience,
        pipeline: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::EntityRef;

    fn principal(subject: &str, kind: PrincipalKind, actors: &[&str]) -> Principal {
        let actors: Vec<String> = actors.iter().map(|a| a.to_string()).collect();
        Principal {
            issuer: "https://issuer".into(),
            issuer_name: "issuer".into(),
            subject: EntityRef::parse_strict(subject).unwrap(),
            kind,
            actor: actors.first().cloned(),
            actor_chain: actors,
            groups: Vec::new(),
            dedicated_audience: true,
            pipeline: None,
        }
    }

    fn jane() -> Principal {
        principal("user:default/jane", PrincipalKind::Human, &[])
    }

    fn bot(chain: &[&str]) -> Principal {
        principal("component:agents/bot", PrincipalKind::Agent, chain)
    }

    #[test]
    fn the_person_is_the_subject_and_the_agent_the_actor() {
        let delegated = delegate(jane(), bot(&["component:agents/bot"])).unwrap();
        assert_eq!(delegated.subject.to_string(), "user:default/jane");
        assert_eq!(delegated.kind, PrincipalKind::Agent);
        assert_eq!(delegated.actor.as_deref(), Some("component:agents/bot"));
        assert_eq!(delegated.actors(), ["component:agents/bot"]);
    }

    #[test]
    fn an_agent_acting_for_another_nests_below_it() {
        let agent = bot(&["component:agents/bot", "component:agents/planner"]);
        let delegated = delegate(jane(), agent).unwrap();
        assert_eq!(delegated.actor.as_deref(), Some("component:agents/bot"));
        assert_eq!(
            delegated.actor_chain,
            ["component:agents/bot", "component:agents/planner"]
        );
    }

    #[test]
    fn only_people_delegate_and_only_agents_act() {
        let service = principal("component:default/ci", PrincipalKind::Service, &[]);
        assert!(matches!(
            delegate(service.clone(), bot(&["component:agents/bot"])),
            Err(DelegationError::SubjectNotAPerson(_))
        ));
        let already_delegated = principal("user:default/jane", PrincipalKind::Agent, &["x"]);
        assert!(matches!(
            delegate(already_delegated, bot(&["component:agents/bot"])),
            Err(DelegationError::SubjectNotAPerson(_))
        ));
        assert!(matches!(
            delegate(jane(), service),
            Err(DelegationError::ActorNotAnAgent(_))
        ));
        let bob = principal("user:default/bob", PrincipalKind::Human, &[]);
        assert!(matches!(
            delegate(jane(), bob),
            Err(DelegationError::ActorIsAPerson(_))
        ));
        assert!(matches!(
            delegate(jane(), bot(&["component:agents/bot", "user:default/jane"])),
            Err(DelegationError::SameSubject(_))
        ));
    }

    #[test]
    fn a_delegation_is_as_dedicated_as_its_weaker_token() {
        let mut agent = bot(&["component:agents/bot"]);
        agent.dedicated_audience = false;
        assert!(!delegate(jane(), agent).unwrap().dedicated_audience);
    }
}
