//! How an issuer's claims become a principal. Each trusted issuer carries its
//! own mapping, so a CI system's or a cluster's tokens (whose `sub` is not a
//! catalog entity) can be added without touching the verification steps: the
//! machine issuers' mappings live in `machines/` and may look their caller
//! up in the catalog or the stack source, hence the trait is async.

use serde::Deserialize;

use super::{IdentityError, PipelineRun, PrincipalKind};
use crate::catalog::EntityRef;

/// A token's claims after its signature, issuer, audience and times were
/// verified.
#[derive(Debug, Clone, Deserialize)]
pub struct VerifiedClaims(pub serde_json::Map<String, serde_json::Value>);

impl VerifiedClaims {
    /// A claim that must be a string when present.
    pub fn text(&self, name: &str) -> Result<Option<&str>, IdentityError> {
        match self.0.get(name) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(text)) => Ok(Some(text)),
            Some(_) => Err(wrong_type()),
        }
    }

    /// A claim that must be a string, present and not empty: `what` names
    /// it in the error.
    pub fn required_text(&self, name: &str) -> Result<&str, IdentityError> {
        match self.text(name)? {
            Some(text) if !text.is_empty() => Ok(text),
            _ => Err(IdentityError::InvalidClaims(format!(
                "the {name} claim is missing"
            ))),
        }
    }

    /// An identifier that issuers write as a string (GitHub, GitLab) or a
    /// number: its decimal text.
    pub fn id(&self, name: &str) -> Result<Option<String>, IdentityError> {
        match self.0.get(name) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(text)) if !text.is_empty() => Ok(Some(text.clone())),
            Some(serde_json::Value::Number(n)) if n.is_u64() => Ok(Some(n.to_string())),
            Some(_) => Err(wrong_type()),
        }
    }

    /// A claim that must be an integer.
    pub fn integer(&self, name: &str) -> Result<i64, IdentityError> {
        self.0
            .get(name)
            .and_then(serde_json::Value::as_i64)
            .ok_or_else(wrong_type)
    }
}

fn wrong_type() -> IdentityError {
    IdentityError::InvalidClaims("a claim has the wrong type".into())
}

/// Who the claims name, as the issuer vouches for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedPrincipal {
    pub subject: EntityRef,
    pub kind: PrincipalKind,
    /// The agents acting for `subject`, from the token's RFC 8693 `act`
    /// claim: the outermost (current) actor first, then the actors it acts
    /// for in turn (nested `act`). Empty: nobody acts for the subject.
    pub actors: Vec<String>,
    /// Machine callers: the pipeline run their token describes.
    pub pipeline: Option<PipelineRun>,
}

#[async_trait::async_trait]
pub trait ClaimMapping: Send + Sync {
    async fn principal(&self, claims: &VerifiedClaims) -> Result<MappedPrincipal, IdentityError>;
}

/// Backstage's mapping (also used for OIDC issuers and the development issuer
/// that mint Backstage-style tokens): `sub` is a catalog entity reference; a
/// `user` is a human, any other kind a service; an RFC 8693 `act` claim makes
/// the caller an agent acting for `sub`.
pub struct CatalogEntityMapping;

#[async_trait::async_trait]
impl ClaimMapping for CatalogEntityMapping {
    async fn principal(&self, claims: &VerifiedClaims) -> Result<MappedPrincipal, IdentityError> {
        CatalogEntityMapping::map(claims)
    }
}

impl CatalogEntityMapping {
    fn map(claims: &VerifiedClaims) -> Result<MappedPrincipal, IdentityError> {
        let sub = claims.text("sub")?.unwrap_or_default();
        if sub.chars().any(char::is_control) {
            return Err(IdentityError::InvalidClaims(
                "sub contains a control character".into(),
            ));
        }
        let subject = EntityRef::parse_strict(sub).map_err(|_| {
            IdentityError::InvalidClaims("sub is not a catalog entity reference".into())
        })?;
        let actors = match claims.0.get("act") {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(act) => actor_chain(act)?,
        };
        let kind = match (actors.first(), subject.kind()) {
            (Some(_), _) => PrincipalKind::Agent,
            (None, "user") => PrincipalKind::Human,
            (None, _) => PrincipalKind::Service,
        };
        Ok(MappedPrincipal {
            subject,
            kind,
            actors,
            pipeline: None,
        })
    }
}

/// The longest `act` chain accepted: deeper nesting is no delegation a person
/// could follow, and every name ends up in the audit log.
pub const MAX_ACTOR_CHAIN: usize = 8;

/// An RFC 8693 `act` claim (section 4.1) as a chain: its `sub` is the current
/// actor, a nested `act` the actor before it, and so on.
fn actor_chain(act: &serde_json::Value) -> Result<Vec<String>, IdentityError> {
    let mut chain = Vec::new();
    let mut next = Some(act);
    while let Some(act) = next {
        let serde_json::Value::Object(act) = act else {
            return Err(wrong_type());
        };
        if chain.len() == MAX_ACTOR_CHAIN {
            return Err(IdentityError::InvalidClaims(format!(
                "act nests more than {MAX_ACTOR_CHAIN} actors"
            )));
        }
        chain.push(actor_name(act.get("sub"))?);
        next = act.get("act").filter(|a| !a.is_null());
    }
    Ok(chain)
}

fn actor_name(sub: Option<&serde_json::Value>) -> Result<String, IdentityError> {
    match sub {
        // A control character (NUL above all) has no place in a name that
        // is logged, audited and shown to approvers.
        Some(serde_json::Value::String(actor)) if actor.chars().any(char::is_control) => Err(
            IdentityError::InvalidClaims("act.sub contains a control character".into()),
        ),
        Some(serde_json::Value::String(actor)) if !actor.is_empty() && actor.len() <= 256 => {
            Ok(actor.clone())
        }
        Some(serde_json::Value::String(_)) => Err(IdentityError::InvalidClaims(
            "act.sub must be 1 to 256 characters".into(),
        )),
        _ => Err(wrong_type()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(value: serde_json::Value) -> VerifiedClaims {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn catalog_entities_map_to_humans_services_and_agents() {
        let map = |value| CatalogEntityMapping::map(&claims(value));
        let jane = map(serde_json::json!({ "sub": "user:default/jane" })).unwrap();
        assert_eq!(jane.kind, PrincipalKind::Human);
        assert_eq!(jane.subject.to_string(), "user:default/jane");
        let deployer = map(serde_json::json!({ "sub": "component:default/deployer" })).unwrap();
        assert_eq!(deployer.kind, PrincipalKind::Service);
        let agent =
            map(serde_json::json!({ "sub": "user:default/jane", "act": { "sub": "agent-7" } }))
                .unwrap();
        assert_eq!(agent.kind, PrincipalKind::Agent);
        assert_eq!(agent.actors, ["agent-7"]);
    }

    #[test]
    fn nested_act_claims_are_a_chain_outermost_first() {
        let map = |value| CatalogEntityMapping::map(&claims(value));
        let agent = map(serde_json::json!({
            "sub": "user:default/jane",
            "act": { "sub": "component:agents/b", "act": { "sub": "component:agents/a" } }
        }))
        .unwrap();
        assert_eq!(agent.kind, PrincipalKind::Agent);
        assert_eq!(agent.actors, ["component:agents/b", "component:agents/a"]);
        let mut deep = serde_json::json!({ "sub": "x" });
        for _ in 0..MAX_ACTOR_CHAIN {
            deep = serde_json::json!({ "sub": "x", "act": deep });
        }
        assert!(map(serde_json::json!({ "sub": "user:default/jane", "act": deep })).is_err());
    }

    #[test]
    fn malformed_claims_are_refused() {
        let map = |value| CatalogEntityMapping::map(&claims(value));
        for bad in [
            serde_json::json!({ "sub": "jane" }),
            serde_json::json!({ "sub": 7 }),
            serde_json::json!({ "sub": "user:default/jane", "act": "agent" }),
            serde_json::json!({ "sub": "user:default/jane", "act": { "sub": "" } }),
            serde_json::json!({ "sub": "user:default/jane", "act": { "sub": 1 } }),
            serde_json::json!({ "sub": "user:default/jane", "act": { "sub": "bot\u{0}" } }),
            serde_json::json!({ "sub": "user:default/jane", "act": { "sub": "bot\u{1b}[2J" } }),
            serde_json::json!({ "sub": "user:default/jane\u{0}" }),
            serde_json::json!({ "sub": "user:default/jane", "act": { "sub": "a", "act": "b" } }),
            serde_json::json!({ "sub": "user:default/jane", "act": { "sub": "a", "act": { "sub": 2 } } }),
        ] {
            assert!(map(bad.clone()).is_err(), "{bad}");
        }
    }
}
