//! `[identity]` and `[[identity.issuers]]`: which token issuers the broker
//! trusts and how their tokens are checked. Only asymmetric algorithms can be
//! configured.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    pub issuers: Vec<TrustedIssuerConfig>,
    /// Tokens longer than this are rejected before any parsing.
    pub max_token_bytes: usize,
    /// How long fetched signing keys are trusted before they are fetched again.
    #[serde(with = "humantime_serde")]
    pub jwks_refresh_interval: Duration,
    /// An unknown `kid` triggers a refetch at most this often per issuer, so a flood
    /// of forged tokens cannot turn into a flood of requests to the issuer.
    #[serde(with = "humantime_serde")]
    pub jwks_min_refetch_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub fetch_timeout: Duration,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            issuers: Vec::new(),
            max_token_bytes: 8 * 1024,
            jwks_refresh_interval: Duration::from_secs(600),
            jwks_min_refetch_interval: Duration::from_secs(30),
            fetch_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IssuerKind {
    /// A Backstage auth backend: keys discovered under `{url}/api/auth`.
    Backstage,
    /// Any OIDC provider: keys discovered under `{issuer}/.well-known/openid-configuration`.
    Oidc,
    /// A local key pair for the quickstart and tests; `stackpass dev token` signs with it.
    Development,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedIssuerConfig {
    pub name: String,
    pub kind: IssuerKind,
    /// Backstage base URL (e.g. `https://backstage.example.com`).
    pub url: Option<Url>,
    /// The exact `iss` tokens carry. Backstage: defaults to `{url}/api/auth`.
    pub issuer: Option<String>,
    /// Where to find the OIDC discovery document, if not at the standard place.
    pub discovery_url: Option<Url>,
    /// Accepted `aud` values. Backstage user tokens carry `backstage`.
    pub audiences: Option<Vec<String>>,
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    #[serde(default = "default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
    /// Tokens whose `exp - iat` is longer than this are refused outright.
    #[serde(default = "default_max_token_lifetime", with = "humantime_serde")]
    pub max_token_lifetime: Duration,
    /// Development issuers: the private key `stackpass dev token` signs with.
    pub key_file: Option<PathBuf>,
}

fn default_algorithms() -> Vec<String> {
    vec!["ES256".into()]
}

fn default_leeway() -> Duration {
    Duration::from_secs(30)
}

fn default_max_token_lifetime() -> Duration {
    Duration::from_secs(24 * 3600)
}

impl TrustedIssuerConfig {
    /// Backstage's auth backend lives under `{url}/api/auth`; it is both the issuer
    /// and the base of the discovery document.
    fn backstage_auth_base(&self) -> Option<String> {
        match (self.kind, &self.url) {
            (IssuerKind::Backstage, Some(url)) => {
                Some(format!("{}/api/auth", url.as_str().trim_end_matches('/')))
            }
            _ => None,
        }
    }

    /// The `iss` value this issuer's tokens must carry.
    pub fn issuer_id(&self) -> Option<String> {
        self.issuer.clone().or_else(|| self.backstage_auth_base())
    }

    pub fn discovery(&self) -> Option<Url> {
        if let Some(url) = &self.discovery_url {
            return Some(url.clone());
        }
        let base = match self.kind {
            IssuerKind::Development => return None,
            IssuerKind::Backstage => self.backstage_auth_base(),
            IssuerKind::Oidc => self.issuer.clone(),
        }?;
        Url::parse(&format!(
            "{}/.well-known/openid-configuration",
            base.trim_end_matches('/')
        ))
        .ok()
    }

    pub fn accepted_audiences(&self) -> Vec<String> {
        match (&self.audiences, self.kind) {
            (Some(audiences), _) => audiences.clone(),
            (None, IssuerKind::Backstage) => vec!["backstage".into()],
            (None, _) => Vec::new(),
        }
    }

    pub fn parsed_algorithms(&self) -> Result<Vec<jsonwebtoken::Algorithm>, String> {
        self.algorithms.iter().map(|a| parse_algorithm(a)).collect()
    }
}

/// Only asymmetric algorithms: a shared secret cannot be published in a JWKS, and
/// allowing HMAC is how "HS256 signed with the public key" forgeries work.
fn parse_algorithm(name: &str) -> Result<jsonwebtoken::Algorithm, String> {
    use jsonwebtoken::Algorithm::*;
    match name {
        "ES256" => Ok(ES256),
        "ES384" => Ok(ES384),
        "RS256" => Ok(RS256),
        "RS384" => Ok(RS384),
        "RS512" => Ok(RS512),
        "PS256" => Ok(PS256),
        "PS384" => Ok(PS384),
        "PS512" => Ok(PS512),
        "EdDSA" => Ok(EdDSA),
        "HS256" | "HS384" | "HS512" => Err(format!(
            "{name} is a shared-secret algorithm and cannot be trusted for identity tokens; use ES256, RS256 or EdDSA"
        )),
        other => Err(format!(
            "unknown algorithm {other:?}; use one of ES256, ES384, RS256, RS384, RS512, PS256, PS384, PS512, EdDSA"
        )),
    }
}
