//! stackpass as an OIDC issuer: its signing key, the discovery document and JWKS
//! that clouds fetch to trust it, and the subject tokens it mints for one exchange.
//!
//! Claim names are part of every cloud-side trust policy, so they are documented in
//! ARCHITECTURE.md and must not change casually. `sub` is `stack:{stack ref}`; the
//! requester and its context live under one namespaced `stackpass` claim.

mod signing_key;

use std::time::Duration;

use secrecy::SecretString;
use serde::Serialize;
use stackpass_provider::{IssuanceFacts, SigningAlgorithm, SubjectClaims};
use time::OffsetDateTime;
use uuid::Uuid;

pub use signing_key::{SigningKey, SigningKeyError};

/// Claims the broker sets itself; a provider may not set them.
const RESERVED_CLAIMS: [&str; 8] = ["iss", "sub", "aud", "iat", "nbf", "exp", "jti", "stackpass"];

#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    #[error("could not sign the subject token: {0}")]
    Signing(String),
    #[error("no {0} signing key is loaded; create one with `stackpass keys generate`")]
    NoKey(SigningAlgorithm),
    #[error("the provider asked for claim {0:?}, which the broker sets itself")]
    ReservedClaim(String),
}

pub struct Issuer {
    key: SigningKey,
    issuer_url: String,
    token_lifetime: Duration,
    /// Claim names the configured providers add, for the discovery document.
    provider_claims: Vec<&'static str>,
}

/// What the subject token says about one issuance: the broker's facts and the
/// provider's audience and claims.
pub struct SubjectTokenRequest<'a> {
    pub facts: &'a IssuanceFacts,
    pub provider: SubjectClaims,
    pub algorithm: SigningAlgorithm,
    /// `None`: the issuer's exchange lifetime (`issuer.token_lifetime`), for a
    /// token the broker exchanges at once. Federation mode hands the token out,
    /// so it lives as long as the grant.
    pub lifetime: Option<Duration>,
}

pub struct SubjectToken {
    pub token: SecretString,
    pub jti: Uuid,
    pub expires_at: OffsetDateTime,
}

#[derive(Serialize)]
struct SubjectClaimsOut<'a> {
    iss: &'a str,
    sub: String,
    aud: &'a str,
    iat: i64,
    nbf: i64,
    exp: i64,
    jti: String,
    stackpass: StackpassClaims<'a>,
    #[serde(flatten)]
    provider: &'a serde_json::Map<String, serde_json::Value>,
}

/// The broker's own claims, under one namespaced `stackpass` claim.
#[derive(Serialize)]
struct StackpassClaims<'a> {
    requester: &'a str,
    requester_kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    actor: Option<&'a str>,
    stack: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    component: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    owner: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    environment: Option<&'a str>,
    rule: &'a str,
    issuance_id: &'a str,
}

impl Issuer {
    pub fn new(
        key: SigningKey,
        issuer_url: String,
        token_lifetime: Duration,
        provider_claims: Vec<&'static str>,
    ) -> Self {
        Issuer {
            key,
            issuer_url,
            token_lifetime,
            provider_claims,
        }
    }

    pub fn issuer_url(&self) -> &str {
        &self.issuer_url
    }

    /// OpenID Connect Discovery 1.0 metadata: what AWS/GCP/Azure read to trust us.
    pub fn discovery_document(&self) -> serde_json::Value {
        let mut claims_supported =
            vec!["iss", "sub", "aud", "iat", "nbf", "exp", "jti", "stackpass"];
        claims_supported.extend(&self.provider_claims);
        serde_json::json!({
            "issuer": self.issuer_url,
            "jwks_uri": format!("{}/.well-known/jwks.json", self.issuer_url),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
            "claims_supported": claims_supported,
        })
    }

    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({ "keys": [self.key.public_jwk()] })
    }

    pub fn mint(&self, request: &SubjectTokenRequest<'_>) -> Result<SubjectToken, IssuerError> {
        if let Some(reserved) = request
            .provider
            .claims
            .keys()
            .find(|k| RESERVED_CLAIMS.contains(&k.as_str()))
        {
            return Err(IssuerError::ReservedClaim(reserved.clone()));
        }
        if request.algorithm != SigningAlgorithm::Es256 {
            return Err(IssuerError::NoKey(request.algorithm));
        }
        let now = OffsetDateTime::now_utc();
        let expires_at = now + request.lifetime.unwrap_or(self.token_lifetime);
        let jti = Uuid::new_v4();
        let facts = request.facts;
        let claims = SubjectClaimsOut {
            iss: &self.issuer_url,
            sub: request
                .provider
                .subject
                .clone()
                .unwrap_or_else(|| format!("stack:{}", facts.stack)),
            aud: &request.provider.audience,
            iat: now.unix_timestamp(),
            nbf: now.unix_timestamp(),
            exp: expires_at.unix_timestamp(),
            jti: jti.to_string(),
            stackpass: StackpassClaims {
                requester: &facts.requester,
                requester_kind: &facts.requester_kind,
                actor: facts.actor.as_deref(),
                stack: &facts.stack,
                component: facts.component.as_deref(),
                owner: facts.owner.as_deref(),
                environment: facts.environment.as_deref(),
                rule: &facts.rule,
                issuance_id: &facts.issuance_id,
            },
            provider: &request.provider.claims,
        };
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.key.kid().to_owned());
        let token = jsonwebtoken::encode(&header, &claims, self.key.encoding_key())
            .map_err(|e| IssuerError::Signing(e.to_string()))?;
        Ok(SubjectToken {
            token: SecretString::from(token),
            jti,
            expires_at,
        })
    }

    /// Signs a throwaway token to prove the key is usable (readiness checks).
    pub fn self_test(&self) -> Result<(), IssuerError> {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.key.kid().to_owned());
        jsonwebtoken::encode(
            &header,
            &serde_json::json!({ "iss": self.issuer_url }),
            self.key.encoding_key(),
        )
        .map(|_| ())
        .map_err(|e| IssuerError::Signing(e.to_string()))
    }
}
