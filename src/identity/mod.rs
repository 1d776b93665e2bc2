//! Who is asking: verification of identity tokens from the trusted issuers
//! (Backstage auth backends, other OIDC providers, a local development issuer),
//! and each issuer's mapping from its claims to a [`Principal`].
//!
//! The order of checks matters and is kept here in one place: size limit, then
//! shape and header (`crit` extensions refused, the issuer's token type
//! required), then the issuer (an unknown issuer is refused before any network
//! call), then the algorithm allow-list, then the key (fetched, cached, refetched
//! on an unknown `kid` at a bounded rate), then signature and claims, then the
//! issuer's claim mapping, then whether the issuer may vouch for that subject.
//! A token that passed all of it is remembered (`verified.rs`): presented
//! again, unexpired and with its key still published, it skips only the steps
//! up to the signature; the mapping and subject checks run every time.
//! This module reads no configuration: startup builds each [`TrustedIssuer`]
//! from it. Machine issuers (CI systems, deployment services, clusters) map
//! their claims to a catalog component through `machines/`, which may ask
//! the catalog or the stack source, and describe the run in [`PipelineRun`].

mod delegation;
mod keys;
pub mod machines;
mod mapping;
mod pipeline;
mod subjects;
mod verified;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use jsonwebtoken::{Algorithm, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

pub use delegation::{delegate, DelegationError};
pub use keys::{FetchSettings, KeySource, KeySourceError, RemoteJwks, StaticKeys};
pub use mapping::{
    CatalogEntityMapping, ClaimMapping, MappedPrincipal, VerifiedClaims, MAX_ACTOR_CHAIN,
};
pub use pipeline::{PipelineRun, PipelineSystem, RunPhase};
pub use subjects::{SubjectPattern, SubjectPatternError};
use verified::{VerifiedToken, VerifiedTokens};

/// The `typ` header of a Backstage user identity token (Backstage's
/// `tokenTypes.user.typParam`); limited-user and plugin tokens carry others.
pub const BACKSTAGE_USER_TOKEN_TYPE: &str = "vnd.backstage.user";

use crate::catalog::EntityRef;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrincipalKind {
    Human,
    Service,
    Agent,
}

impl PrincipalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::Human => "human",
            PrincipalKind::Service => "service",
            PrincipalKind::Agent => "agent",
        }
    }
}

/// A verified caller. `groups` is empty until the broker asks the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The `iss` of the token that vouched for this caller.
    pub issuer: String,
    /// The configured name of that issuer.
    pub issuer_name: String,
    pub subject: EntityRef,
    pub kind: PrincipalKind,
    /// An agent acting for `subject` (the token's RFC 8693 `act.sub`): the
    /// current, outermost actor.
    pub actor: Option<String>,
    /// Every actor of a nested `act`, outermost (= `actor`) first; empty or
    /// just `actor` when nobody else is in the chain. See
    /// [`Principal::actors`].
    pub actor_chain: Vec<String>,
    pub groups: Vec<EntityRef>,
    /// The token was minted for this broker alone: its every audience is the
    /// issuer's `dedicated_audience`, so no other service could have been sent
    /// it (unlike a Backstage token, which every backend plugin receives).
    pub dedicated_audience: bool,
    /// A machine caller's pipeline run (CI job, deployment, workload); `None`
    /// for people, agents and Backstage-style service tokens.
    pub pipeline: Option<PipelineRun>,
}

impl Principal {
    /// The actors, outermost first: `actor_chain`, or `actor` alone where
    /// whoever built the principal set only that.
    pub fn actors(&self) -> Vec<&str> {
        match (&self.actor, self.actor_chain.is_empty()) {
            (Some(actor), true) => vec![actor.as_str()],
            _ => self.actor_chain.iter().map(String::as_str).collect(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("no bearer token was sent; send Authorization: Bearer <token>")]
    Missing,
    #[error("the token is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token's header marks extensions {0} as critical, which this broker does not implement (RFC 7515 section 4.1.11)")]
    CriticalExtension(String),
    #[error("the token's type (typ header) is {found}, but this issuer's tokens must be {expected:?}; send a Backstage user identity token")]
    WrongTokenType { found: String, expected: String },
    #[error("the token's issuer is not trusted by this broker")]
    UntrustedIssuer,
    #[error("the token is signed with {0:?}, which this issuer is not allowed to use")]
    AlgorithmNotAllowed(Algorithm),
    #[error("the token names no signing key (kid)")]
    MissingKeyId,
    #[error("the token is signed with a key the issuer does not publish")]
    UnknownKey,
    #[error("the issuer publishes more than one key under the token's kid, so none of them is trusted; the issuer's operator must give each key its own kid")]
    AmbiguousKey,
    #[error("the token's signature is invalid")]
    BadSignature,
    #[error("the token has expired; get a fresh one from Backstage")]
    Expired,
    #[error("the token is not valid yet (nbf or iat in the future); check the clocks")]
    NotYetValid,
    #[error("the token is meant for another audience")]
    WrongAudience,
    #[error("the token lives longer than this issuer allows")]
    LifetimeTooLong,
    #[error("the token's claims are invalid: {0}")]
    InvalidClaims(String),
    #[error("issuer {issuer} may not vouch for {subject}; each subject is only trusted from the issuer configured for it (identity.issuers[].subjects)")]
    SubjectNotVouched { issuer: String, subject: String },
    #[error(
        "{subject} is a group, and a group is never a caller; tokens must name a user or a service"
    )]
    GroupSubject { subject: String },
    #[error(
        "issuer {issuer} issues user tokens, but this token names {subject}, which is not a user"
    )]
    NotAUser { issuer: String, subject: String },
    #[error("the issuer's signing keys could not be fetched: {0}")]
    KeysUnavailable(String),
    #[error("this pipeline is not trusted: {0}")]
    PipelineRefused(String),
    #[error("the token maps to no catalog entity: {0}")]
    NoCatalogEntity(String),
    #[error("the caller could not be looked up: {0}")]
    LookupUnavailable(String),
    #[error("issuer {issuer} vouches for agents, but this token names {subject}, a person; an agent's token must name the agent")]
    AgentIsAPerson { issuer: String, subject: String },
    #[error("issuer {issuer} does not vouch for agents; an actor_token must come from an issuer configured with agents = true")]
    NotAnAgentIssuer { issuer: String },
}

impl IdentityError {
    /// A short fixed name for what was wrong, for metrics labels (never the
    /// details, which can carry subjects).
    pub fn reason(&self) -> &'static str {
        match self {
            IdentityError::Missing => "missing",
            IdentityError::TooLarge { .. } => "too_large",
            IdentityError::Malformed => "malformed",
            IdentityError::CriticalExtension(_) => "critical_extension",
            IdentityError::WrongTokenType { .. } => "wrong_token_type",
            IdentityError::UntrustedIssuer => "untrusted_issuer",
            IdentityError::AlgorithmNotAllowed(_) => "algorithm_not_allowed",
            IdentityError::MissingKeyId => "missing_key_id",
            IdentityError::UnknownKey => "unknown_key",
            IdentityError::AmbiguousKey => "ambiguous_key",
            IdentityError::BadSignature => "bad_signature",
            IdentityError::Expired => "expired",
            IdentityError::NotYetValid => "not_yet_valid",
            IdentityError::WrongAudience => "wrong_audience",
            IdentityError::LifetimeTooLong => "lifetime_too_long",
            IdentityError::InvalidClaims(_) => "invalid_claims",
            IdentityError::SubjectNotVouched { .. } => "subject_not_vouched",
            IdentityError::GroupSubject { .. } => "group_subject",
            IdentityError::NotAUser { .. } => "not_a_user",
            IdentityError::KeysUnavailable(_) => "keys_unavailable",
            IdentityError::PipelineRefused(_) => "pipeline_refused",
            IdentityError::NoCatalogEntity(_) => "no_catalog_entity",
            IdentityError::LookupUnavailable(_) => "lookup_unavailable",
            IdentityError::AgentIsAPerson { .. } => "agent_is_a_person",
            IdentityError::NotAnAgentIssuer { .. } => "not_an_agent_issuer",
        }
    }

    /// Failures that are the broker's or issuer's fault rather than the token's.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            IdentityError::KeysUnavailable(_) | IdentityError::LookupUnavailable(_)
        )
    }
}

/// One trusted issuer: how its tokens are verified and how its claims map to a
/// principal.
pub struct TrustedIssuer {
    pub name: String,
    /// The exact `iss` its tokens carry.
    pub issuer: String,
    pub audiences: Vec<String>,
    /// Asymmetric algorithms only; HMAC is refused when configuration loads.
    pub algorithms: Vec<Algorithm>,
    pub leeway: Duration,
    pub max_token_lifetime: Duration,
    pub keys: Arc<dyn KeySource>,
    pub mapping: Arc<dyn ClaimMapping>,
    /// The `typ` header every token must carry (compared as RFC 7515 says:
    /// case-insensitively, `application/` optional); `None`: any or none.
    pub token_type: Option<String>,
    /// The subjects this issuer may vouch for; empty vouches for nobody.
    pub subjects: Vec<SubjectPattern>,
    /// Its tokens name people only (Backstage user tokens): any other subject
    /// is refused rather than treated as a service.
    pub users_only: bool,
    /// An audience of this broker's own; it is also in `audiences`.
    pub dedicated_audience: Option<String>,
    /// Its subjects are AI agents (`agents = true`): each token is the agent
    /// acting for itself, a principal of kind agent whose actor is its
    /// subject, so the agent bounds apply wherever it is presented; and it
    /// is the only kind of issuer whose tokens are accepted as a token
    /// exchange's `actor_token`.
    pub agents: bool,
}

pub struct Verifier {
    issuers: Vec<TrustedIssuer>,
    max_token_bytes: usize,
    verified: VerifiedTokens,
}

impl Verifier {
    pub fn new(issuers: Vec<TrustedIssuer>, max_token_bytes: usize) -> Self {
        Verifier {
            issuers,
            max_token_bytes,
            verified: VerifiedTokens::new(),
        }
    }

    /// Whether the issuer with this exact `iss` vouches for agents.
    pub fn vouches_for_agents(&self, iss: &str) -> bool {
        self.issuers.iter().any(|i| i.issuer == iss && i.agents)
    }

    pub async fn verify(&self, token: &SecretString) -> Result<Principal, IdentityError> {
        let token = token.expose_secret();
        if token.len() > self.max_token_bytes {
            return Err(IdentityError::TooLarge {
                limit: self.max_token_bytes,
            });
        }
        let fingerprint = verified::fingerprint(token);
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let (verified, remembered) = match self.verified.get(&fingerprint, &self.issuers, now).await
        {
            Some(verified) => (verified, true),
            None => (self.check_signature(token, now).await?, false),
        };
        let issuer = &self.issuers[verified.issuer];
        let principal = principal(issuer, &verified.claims).await?;
        // Only a fresh verification is remembered: inserting again on every
        // hit would also restart its time to live, past REMEMBERED_FOR.
        if !remembered {
            self.verified.remember(fingerprint, verified);
        }
        Ok(principal)
    }

    /// Everything about the token itself: its shape and header, its issuer,
    /// algorithm and key, its signature and its time claims.
    async fn check_signature(&self, token: &str, now: i64) -> Result<VerifiedToken, IdentityError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| IdentityError::Malformed)?;
        refuse_critical_extensions(token)?;
        let unverified_issuer = peek_issuer(token)?;
        let (index, issuer) = self
            .issuers
            .iter()
            .enumerate()
            .find(|(_, i)| i.issuer == unverified_issuer)
            .ok_or(IdentityError::UntrustedIssuer)?;
        if let Some(expected) = &issuer.token_type {
            let found = header.typ.as_deref().unwrap_or_default();
            if !same_media_type(found, expected) {
                return Err(IdentityError::WrongTokenType {
                    found: if found.is_empty() {
                        "missing".into()
                    } else {
                        echoed(&format!("{found:?}"))
                    },
                    expected: expected.clone(),
                });
            }
        }
        if !issuer.algorithms.contains(&header.alg) {
            return Err(IdentityError::AlgorithmNotAllowed(header.alg));
        }
        let kid = header.kid.ok_or(IdentityError::MissingKeyId)?;
        let key = issuer
            .keys
            .key(&kid, header.alg)
            .await
            .map_err(|e| match e {
                KeySourceError::UnknownKey => IdentityError::UnknownKey,
                KeySourceError::AmbiguousKey => IdentityError::AmbiguousKey,
                other => IdentityError::KeysUnavailable(other.to_string()),
            })?;

        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.leeway = issuer.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_issuer(&[&issuer.issuer]);
        validation.set_audience(&issuer.audiences);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        let claims = jsonwebtoken::decode::<VerifiedClaims>(token, &key, &validation)
            .map_err(|e| map_jwt_error(e.kind()))?
            .claims;
        let (iat, exp) = (claims.integer("iat")?, claims.integer("exp")?);

        let leeway = issuer.leeway.as_secs() as i64;
        if iat > now + leeway {
            return Err(IdentityError::NotYetValid);
        }
        if exp.saturating_sub(iat) > issuer.max_token_lifetime.as_secs() as i64 {
            return Err(IdentityError::LifetimeTooLong);
        }
        Ok(VerifiedToken {
            issuer: index,
            kid,
            alg: header.alg,
            key,
            claims: Arc::new(claims),
            exp,
        })
    }
}

/// The principal a verified token stands for, by its issuer's claim mapping
/// and rules on subjects. Runs for every request, remembered token or not:
/// the mapping may read the catalog, whose answers change.
async fn principal(
    issuer: &TrustedIssuer,
    claims: &VerifiedClaims,
) -> Result<Principal, IdentityError> {
    let mapped = issuer.mapping.principal(claims).await?;
    let subject = &mapped.subject;
    if subject.kind() == "group" {
        return Err(IdentityError::GroupSubject {
            subject: subject.to_string(),
        });
    }
    if issuer.users_only && subject.kind() != "user" {
        return Err(IdentityError::NotAUser {
            issuer: issuer.name.clone(),
            subject: subject.to_string(),
        });
    }
    if !issuer.subjects.iter().any(|p| p.matches(subject)) {
        return Err(IdentityError::SubjectNotVouched {
            issuer: issuer.name.clone(),
            subject: subject.to_string(),
        });
    }
    let dedicated_audience = issuer
        .dedicated_audience
        .as_deref()
        .is_some_and(|own| only_audience_is(claims, own));
    let (kind, actors) = if issuer.agents {
        // An agent never stands for a person: it is the agent acting for
        // itself, and an `act` it carries nests below it.
        if subject.kind() == "user" {
            return Err(IdentityError::AgentIsAPerson {
                issuer: issuer.name.clone(),
                subject: subject.to_string(),
            });
        }
        let mut actors = vec![subject.to_string()];
        actors.extend(mapped.actors);
        if actors.len() > MAX_ACTOR_CHAIN {
            return Err(IdentityError::InvalidClaims(format!(
                "act nests more than {MAX_ACTOR_CHAIN} actors"
            )));
        }
        (PrincipalKind::Agent, actors)
    } else {
        (mapped.kind, mapped.actors)
    };
    Ok(Principal {
        issuer: issuer.issuer.clone(),
        issuer_name: issuer.name.clone(),
        subject: mapped.subject,
        kind,
        actor: actors.first().cloned(),
        actor_chain: actors,
        groups: Vec::new(),
        dedicated_audience,
        pipeline: mapped.pipeline,
    })
}

/// RFC 7515 section 4.1.11: a recipient must refuse a token whose `crit`
/// header names an extension it does not understand, and this broker
/// understands none. jsonwebtoken does not read `crit`, so the header's JSON is
/// read here.
fn refuse_critical_extensions(token: &str) -> Result<(), IdentityError> {
    let header = token.split('.').next().ok_or(IdentityError::Malformed)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| IdentityError::Malformed)?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes).map_err(|_| IdentityError::Malformed)?;
    match header.get("crit") {
        None => Ok(()),
        Some(serde_json::Value::Array(names)) if !names.is_empty() => {
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            Err(IdentityError::CriticalExtension(echoed(&names.join(", "))))
        }
        Some(other) => Err(IdentityError::CriticalExtension(echoed(&other.to_string()))),
    }
}

/// Header values echoed into an error (and so a log line and a 401): already
/// JSON- or Debug-escaped by the caller, and cut short so a token cannot fill
/// the log.
fn echoed(text: &str) -> String {
    const LIMIT: usize = 80;
    match text.char_indices().nth(LIMIT) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// RFC 7515 section 4.1.9: `typ` is a media type, compared case-insensitively,
/// with `application/` optional.
fn same_media_type(found: &str, expected: &str) -> bool {
    let bare = |t: &str| {
        let t = t.trim();
        match t.get(..12) {
            Some(prefix) if prefix.eq_ignore_ascii_case("application/") => t[12..].to_owned(),
            _ => t.to_owned(),
        }
    };
    bare(found).eq_ignore_ascii_case(&bare(expected))
}

/// The token's `aud` (a string or an array) names `own` and nothing else.
fn only_audience_is(claims: &VerifiedClaims, own: &str) -> bool {
    match claims.0.get("aud") {
        Some(serde_json::Value::String(aud)) => aud == own,
        Some(serde_json::Value::Array(auds)) => {
            !auds.is_empty() && auds.iter().all(|a| a.as_str() == Some(own))
        }
        _ => false,
    }
}

/// Reads `iss` without trusting anything else in the token. Only used to pick the
/// issuer whose keys and rules will then verify the whole token.
fn peek_issuer(token: &str) -> Result<String, IdentityError> {
    #[derive(Deserialize)]
    struct Unverified {
        iss: String,
    }
    let payload = token.split('.').nth(1).ok_or(IdentityError::Malformed)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| IdentityError::Malformed)?;
    serde_json::from_slice::<Unverified>(&bytes)
        .map(|c| c.iss)
        .map_err(|_| IdentityError::Malformed)
}

fn map_jwt_error(kind: &jsonwebtoken::errors::ErrorKind) -> IdentityError {
    use jsonwebtoken::errors::ErrorKind::*;
    match kind {
        ExpiredSignature => IdentityError::Expired,
        ImmatureSignature => IdentityError::NotYetValid,
        InvalidAudience => IdentityError::WrongAudience,
        InvalidIssuer => IdentityError::UntrustedIssuer,
        InvalidSignature | InvalidAlgorithm | InvalidEcdsaKey | InvalidRsaKey(_)
        | InvalidKeyFormat => IdentityError::BadSignature,
        MissingRequiredClaim(claim) => {
            IdentityError::InvalidClaims(format!("the {claim} claim is missing"))
        }
        Json(_) => IdentityError::InvalidClaims("a claim has the wrong type".into()),
        _ => IdentityError::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn token_with_header(header: serde_json::Value) -> String {
        let encode = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        format!("{}.{}.sig", encode(header), encode(json!({})))
    }

    #[test]
    fn any_crit_header_is_refused() {
        assert!(refuse_critical_extensions(&token_with_header(json!({ "alg": "ES256" }))).is_ok());
        for crit in [json!(["b64"]), json!([]), json!("b64"), json!(null)] {
            let token = token_with_header(json!({ "alg": "ES256", "crit": crit }));
            assert!(
                matches!(
                    refuse_critical_extensions(&token),
                    Err(IdentityError::CriticalExtension(_))
                ),
                "{crit}"
            );
        }
    }

    #[test]
    fn echoed_header_values_are_cut_short() {
        let token = token_with_header(json!({ "alg": "ES256", "crit": ["x".repeat(5000)] }));
        let Err(IdentityError::CriticalExtension(names)) = refuse_critical_extensions(&token)
        else {
            panic!("refused")
        };
        assert_eq!(names.chars().count(), 81);
    }

    #[test]
    fn typ_compares_as_a_media_type() {
        let expected = BACKSTAGE_USER_TOKEN_TYPE;
        assert!(same_media_type("vnd.backstage.user", expected));
        assert!(same_media_type("application/vnd.backstage.user", expected));
        assert!(same_media_type("VND.Backstage.User", expected));
        assert!(!same_media_type("vnd.backstage.limited-user", expected));
        assert!(!same_media_type("JWT", expected));
        assert!(!same_media_type("", expected));
    }

    #[test]
    fn a_dedicated_audience_must_be_the_only_one() {
        let claims = |aud: serde_json::Value| {
            VerifiedClaims(json!({ "aud": aud }).as_object().unwrap().clone())
        };
        assert!(only_audience_is(&claims(json!("stackpass")), "stackpass"));
        assert!(only_audience_is(&claims(json!(["stackpass"])), "stackpass"));
        assert!(!only_audience_is(
            &claims(json!(["backstage", "stackpass"])),
            "stackpass"
        ));
        assert!(!only_audience_is(&claims(json!("backstage")), "stackpass"));
        assert!(!only_audience_is(&claims(json!([])), "stackpass"));
    }
}
