//! stackpass as an OIDC issuer: its signing key, the discovery document and JWKS
//! that clouds fetch to trust it, and the subject tokens it mints for one exchange.
//!
//! Claim names are part of every cloud-side trust policy, so they are documented in
//! ARCHITECTURE.md and must not change casually. `sub` is `stack:{stack ref}`; the
//! requester and its context live under one namespaced `stackpass` claim.

mod signing_key;

use std::collections::BTreeMap;
use std::time::Duration;

use secrecy::SecretString;
use serde::Serialize;
use stackpass_provider::ProviderKind;
use time::OffsetDateTime;
use uuid::Uuid;

pub use signing_key::{SigningKey, SigningKeyError};

use crate::catalog::EntityRef;
use crate::identity::Principal;
use crate::stacks::StackRef;

#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    #[error("could not sign the subject token: {0}")]
    Signing(String),
}

pub struct Issuer {
    key: SigningKey,
    issuer_url: String,
    token_lifetime: Duration,
}

/// What the subject token says about one issuance.
pub struct SubjectTokenRequest<'a> {
    pub audience: &'a str,
    pub provider: ProviderKind,
    pub stack: &'a StackRef,
    pub principal: &'a Principal,
    /// Absent only for rules that explicitly widen the owner requirement.
    pub component: Option<&'a EntityRef>,
    pub owner: Option<&'a EntityRef>,
    pub environment: Option<&'a str>,
    pub rule: &'a str,
    /// The grant's session tags, added to the AWS principal tags.
    pub session_tags: &'a BTreeMap<String, String>,
    pub issuance_id: Uuid,
}

pub struct SubjectToken {
    pub token: SecretString,
    pub jti: Uuid,
    pub expires_at: OffsetDateTime,
}

#[derive(Serialize)]
struct SubjectClaims<'a> {
    iss: &'a str,
    sub: String,
    aud: &'a str,
    iat: i64,
    nbf: i64,
    exp: i64,
    jti: String,
    stackpass: StackpassClaims<'a>,
    #[serde(
        rename = "https://aws.amazon.com/source_identity",
        skip_serializing_if = "Option::is_none"
    )]
    aws_source_identity: Option<String>,
    #[serde(
        rename = "https://aws.amazon.com/tags",
        skip_serializing_if = "Option::is_none"
    )]
    aws_tags: Option<AwsTags>,
}

#[derive(Serialize)]
struct StackpassClaims<'a> {
    requester: String,
    requester_kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    actor: Option<&'a str>,
    stack: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    component: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    owner: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    environment: Option<&'a str>,
    rule: &'a str,
    issuance_id: String,
}

/// AWS principal tags carried by the token (the role's trust policy must allow
/// `sts:TagSession`). Values are catalog facts, so IAM policies can use
/// `aws:PrincipalTag/component` and CloudTrail shows who and what.
#[derive(Serialize)]
struct AwsTags {
    principal_tags: BTreeMap<String, [String; 1]>,
    transitive_tag_keys: Vec<String>,
}

impl Issuer {
    pub fn new(key: SigningKey, issuer_url: String, token_lifetime: Duration) -> Self {
        Issuer {
            key,
            issuer_url,
            token_lifetime,
        }
    }

    pub fn issuer_url(&self) -> &str {
        &self.issuer_url
    }

    /// OpenID Connect Discovery 1.0 metadata: what AWS/GCP/Azure read to trust us.
    pub fn discovery_document(&self) -> serde_json::Value {
        serde_json::json!({
            "issuer": self.issuer_url,
            "jwks_uri": format!("{}/.well-known/jwks.json", self.issuer_url),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
            "claims_supported": [
                "iss", "sub", "aud", "iat", "nbf", "exp", "jti", "stackpass",
                "https://aws.amazon.com/source_identity", "https://aws.amazon.com/tags"
            ],
        })
    }

    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({ "keys": [self.key.public_jwk()] })
    }

    pub fn mint(&self, request: &SubjectTokenRequest<'_>) -> Result<SubjectToken, IssuerError> {
        let now = OffsetDateTime::now_utc();
        let expires_at = now + self.token_lifetime;
        let jti = Uuid::new_v4();
        let requester = request.principal.subject.to_string();
        let aws = request.provider == ProviderKind::Aws;
        let claims = SubjectClaims {
            iss: &self.issuer_url,
            sub: format!("stack:{}", request.stack),
            aud: request.audience,
            iat: now.unix_timestamp(),
            nbf: now.unix_timestamp(),
            exp: expires_at.unix_timestamp(),
            jti: jti.to_string(),
            stackpass: StackpassClaims {
                requester: requester.clone(),
                requester_kind: request.principal.kind.as_str(),
                actor: request.principal.actor.as_deref(),
                stack: request.stack.to_string(),
                component: request.component.map(ToString::to_string),
                owner: request.owner.map(ToString::to_string),
                environment: request.environment,
                rule: request.rule,
                issuance_id: request.issuance_id.to_string(),
            },
            aws_source_identity: aws.then(|| aws_safe_name(&request.principal.subject)),
            aws_tags: aws.then(|| aws_tags(request, &requester)),
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

/// The principal tags: who asked and what the stack is, then the grant's own
/// session tags (which may not override the first four).
fn aws_tags(request: &SubjectTokenRequest<'_>, requester: &str) -> AwsTags {
    let mut tags: BTreeMap<String, [String; 1]> = BTreeMap::new();
    for (key, value) in request.session_tags {
        tags.insert(key.clone(), [value.clone()]);
    }
    for (key, value) in [
        ("requester", Some(requester.to_owned())),
        ("component", request.component.map(|c| c.name().to_owned())),
        ("owner", request.owner.map(ToString::to_string)),
        ("environment", request.environment.map(str::to_owned)),
    ] {
        tags.insert(key.to_owned(), [value.unwrap_or_else(|| "none".to_owned())]);
    }
    AwsTags {
        transitive_tag_keys: tags.keys().cloned().collect(),
        principal_tags: tags,
    }
}

/// A name AWS accepts as `SourceIdentity` and `RoleSessionName`: 2 to 64 of
/// `[A-Za-z0-9_+=,.@-]`. `user:default/jane` becomes `user.default.jane`; this is
/// unambiguous because kinds and namespaces cannot contain dots. Over-long names
/// keep a readable prefix and end in a hash so distinct requesters stay distinct.
pub fn aws_safe_name(entity: &EntityRef) -> String {
    use sha2::{Digest, Sha256};
    let name = format!("{}.{}.{}", entity.kind(), entity.namespace(), entity.name());
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_+=,.@-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    if name.len() <= 64 {
        return name;
    }
    let digest = Sha256::digest(name.as_bytes());
    let suffix: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("{}-{suffix}", &name[..64 - 13])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_safe_names_fit_the_aws_charset_and_length() {
        let jane = EntityRef::parse_strict("user:default/jane").unwrap();
        assert_eq!(aws_safe_name(&jane), "user.default.jane");
        let long_a = EntityRef::parse_strict(&format!("user:default/{}", "a".repeat(63))).unwrap();
        let long_b = EntityRef::parse_strict(&format!("user:default/{}b", "a".repeat(62))).unwrap();
        let (a, b) = (aws_safe_name(&long_a), aws_safe_name(&long_b));
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c)));
    }
}
