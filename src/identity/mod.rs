//! Who is asking: verification of identity tokens from the trusted issuers
//! (Backstage auth backends, other OIDC providers, a local development issuer).
//!
//! The order of checks matters and is kept here in one place: size limit, then
//! shape, then the issuer (an unknown issuer is refused before any network call),
//! then the algorithm allow-list, then the key (fetched, cached, refetched on an
//! unknown `kid` at a bounded rate), then signature and claims.

mod keys;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use jsonwebtoken::{Algorithm, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

pub use keys::{KeySource, KeySourceError, RemoteJwks, StaticKeys};

use crate::catalog::EntityRef;
use crate::config::{IdentityConfig, IssuerKind, TrustedIssuerConfig};

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
    /// The `iss` of the verified token.
    pub issuer: String,
    /// The configured name of that issuer.
    pub issuer_name: String,
    pub subject: EntityRef,
    pub kind: PrincipalKind,
    /// An agent acting for `subject` (the token's RFC 8693 `act.sub`).
    pub actor: Option<String>,
    pub groups: Vec<EntityRef>,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("no bearer token was sent; send Authorization: Bearer <token>")]
    Missing,
    #[error("the token is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token's issuer is not trusted by this broker")]
    UntrustedIssuer,
    #[error("the token is signed with {0:?}, which this issuer is not allowed to use")]
    AlgorithmNotAllowed(Algorithm),
    #[error("the token names no signing key (kid)")]
    MissingKeyId,
    #[error("the token is signed with a key the issuer does not publish")]
    UnknownKey,
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
    #[error("the issuer's signing keys could not be fetched: {0}")]
    KeysUnavailable(String),
}

impl IdentityError {
    /// Failures that are the broker's or issuer's fault rather than the token's.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, IdentityError::KeysUnavailable(_))
    }
}

/// One trusted issuer with its verification settings.
pub struct TrustedIssuer {
    pub name: String,
    pub issuer: String,
    pub audiences: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    pub leeway: Duration,
    pub max_token_lifetime: Duration,
    pub keys: Arc<dyn KeySource>,
}

pub struct Verifier {
    issuers: Vec<TrustedIssuer>,
    max_token_bytes: usize,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    iat: i64,
    exp: i64,
    #[serde(default)]
    act: Option<Actor>,
}

#[derive(Deserialize)]
struct Actor {
    sub: String,
}

impl Verifier {
    pub fn new(issuers: Vec<TrustedIssuer>, max_token_bytes: usize) -> Self {
        Verifier {
            issuers,
            max_token_bytes,
        }
    }

    /// Builds the verifier from configuration. Remote issuers fetch keys lazily, on
    /// the first token they see, so a Backstage outage does not stop the broker.
    pub fn from_config(config: &IdentityConfig) -> Result<Self, KeySourceError> {
        let mut issuers = Vec::new();
        for issuer in &config.issuers {
            issuers.push(trusted_issuer(issuer, config)?);
        }
        Ok(Verifier::new(issuers, config.max_token_bytes))
    }

    pub async fn verify(&self, token: &SecretString) -> Result<Principal, IdentityError> {
        let token = token.expose_secret();
        if token.len() > self.max_token_bytes {
            return Err(IdentityError::TooLarge {
                limit: self.max_token_bytes,
            });
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| IdentityError::Malformed)?;
        let unverified_issuer = peek_issuer(token)?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.issuer == unverified_issuer)
            .ok_or(IdentityError::UntrustedIssuer)?;
        if !issuer.algorithms.contains(&header.alg) {
            return Err(IdentityError::AlgorithmNotAllowed(header.alg));
        }
        let kid = header.kid.as_deref().ok_or(IdentityError::MissingKeyId)?;
        let key = issuer
            .keys
            .key(kid, header.alg)
            .await
            .map_err(|e| match e {
                KeySourceError::UnknownKey => IdentityError::UnknownKey,
                other => IdentityError::KeysUnavailable(other.to_string()),
            })?;

        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.leeway = issuer.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_issuer(&[&issuer.issuer]);
        validation.set_audience(&issuer.audiences);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        let claims = jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map_err(|e| map_jwt_error(e.kind()))?
            .claims;

        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let leeway = issuer.leeway.as_secs() as i64;
        if claims.iat > now + leeway {
            return Err(IdentityError::NotYetValid);
        }
        if claims.exp.saturating_sub(claims.iat) > issuer.max_token_lifetime.as_secs() as i64 {
            return Err(IdentityError::LifetimeTooLong);
        }
        let subject = EntityRef::parse_strict(&claims.sub).map_err(|_| {
            IdentityError::InvalidClaims("sub is not a catalog entity reference".into())
        })?;
        let actor = match claims.act {
            Some(actor) if actor.sub.is_empty() || actor.sub.len() > 256 => {
                return Err(IdentityError::InvalidClaims(
                    "act.sub must be 1 to 256 characters".into(),
                ));
            }
            Some(actor) => Some(actor.sub),
            None => None,
        };
        let kind = match (&actor, subject.kind()) {
            (Some(_), _) => PrincipalKind::Agent,
            (None, "user") => PrincipalKind::Human,
            (None, _) => PrincipalKind::Service,
        };
        Ok(Principal {
            issuer: issuer.issuer.clone(),
            issuer_name: issuer.name.clone(),
            subject,
            kind,
            actor,
            groups: Vec::new(),
        })
    }
}

fn trusted_issuer(
    issuer: &TrustedIssuerConfig,
    config: &IdentityConfig,
) -> Result<TrustedIssuer, KeySourceError> {
    let issuer_id = issuer.issuer_id().ok_or_else(|| {
        KeySourceError::Config(format!("issuer {} has no issuer id", issuer.name))
    })?;
    let algorithms = issuer.parsed_algorithms().map_err(KeySourceError::Config)?;
    let keys: Arc<dyn KeySource> = match issuer.kind {
        IssuerKind::Development => {
            let path = issuer.key_file.as_ref().ok_or_else(|| {
                KeySourceError::Config(format!("issuer {} has no key_file", issuer.name))
            })?;
            Arc::new(StaticKeys::from_private_key_file(path)?)
        }
        IssuerKind::Backstage | IssuerKind::Oidc => Arc::new(RemoteJwks::new(
            issuer.discovery().ok_or_else(|| {
                KeySourceError::Config(format!("issuer {} has no discovery URL", issuer.name))
            })?,
            issuer_id.clone(),
            config,
        )),
    };
    Ok(TrustedIssuer {
        name: issuer.name.clone(),
        issuer: issuer_id,
        audiences: issuer.accepted_audiences(),
        algorithms,
        leeway: issuer.leeway,
        max_token_lifetime: issuer.max_token_lifetime,
        keys,
    })
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
