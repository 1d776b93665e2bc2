//! `[identity]` and `[[identity.issuers]]`: which token issuers the broker
//! trusts, how their tokens are checked, which subjects each may vouch for and
//! how its keys are fetched (https, CA bundle). Only asymmetric algorithms can
//! be configured.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::ConfigProblem;
use crate::http_client::{check_scheme, TlsTrust};
use crate::identity::{SubjectPattern, SubjectPatternError, BACKSTAGE_USER_TOKEN_TYPE};

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
    /// Fetched keys keep verifying while refreshes fail, but no longer than
    /// this; then the issuer is unavailable (503) instead of trusted.
    #[serde(with = "humantime_serde")]
    pub jwks_max_key_age: Duration,
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
            jwks_max_key_age: Duration::from_secs(24 * 3600),
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
    /// Entity-reference patterns (`kind:namespace/name`, parts may be `*`) of
    /// the subjects this issuer may vouch for. Default: Backstage `user:*/*`,
    /// development users and components, OIDC none (it must be listed).
    pub subjects: Option<Vec<String>>,
    /// An audience of this broker's own (e.g. `stackpass`): tokens whose only
    /// audience it is were minted for stackpass alone, which rules with
    /// `require_dedicated_audience` demand. Accepted besides `audiences`.
    pub dedicated_audience: Option<String>,
    /// Lets discovery and keys come over plain http from a host that is not
    /// loopback: anyone on that path can then forge tokens.
    #[serde(default)]
    pub insecure_allow_http: bool,
    /// A PEM bundle of CAs to trust for this issuer (a private CA).
    pub ca_file: Option<PathBuf>,
    /// `false`: trust only `ca_file`, not the public CAs.
    #[serde(default = "default_true")]
    pub trust_public_roots: bool,
}

fn default_true() -> bool {
    true
}

fn default_algorithms() -> Vec<String> {
    vec!["ES256".into()]
}

fn default_leeway() -> Duration {
    Duration::from_secs(30)
}

/// Backstage's own user tokens live 1h; a longer-lived token is a longer
/// window for a plugin that was sent it to replay it here.
fn default_max_token_lifetime() -> Duration {
    Duration::from_secs(3600)
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
        let mut audiences = match (&self.audiences, self.kind) {
            (Some(audiences), _) => audiences.clone(),
            (None, IssuerKind::Backstage) => vec!["backstage".into()],
            (None, _) => Vec::new(),
        };
        if let Some(own) = &self.dedicated_audience {
            if !audiences.contains(own) {
                audiences.push(own.clone());
            }
        }
        audiences
    }

    /// The subject patterns as written, or the kind's default.
    pub fn subject_patterns(&self) -> Vec<String> {
        match (&self.subjects, self.kind) {
            (Some(subjects), _) => subjects.clone(),
            (None, IssuerKind::Backstage) => vec!["user:*/*".into()],
            (None, IssuerKind::Development) => {
                vec!["user:*/*".into(), "component:*/*".into()]
            }
            (None, IssuerKind::Oidc) => Vec::new(),
        }
    }

    pub fn parsed_subjects(&self) -> Result<Vec<SubjectPattern>, SubjectPatternError> {
        self.subject_patterns()
            .iter()
            .map(|p| SubjectPattern::parse(p))
            .collect()
    }

    /// The `typ` header its tokens must carry: Backstage user tokens only.
    pub fn token_type(&self) -> Option<&'static str> {
        (self.kind == IssuerKind::Backstage).then_some(BACKSTAGE_USER_TOKEN_TYPE)
    }

    pub fn tls_trust(&self) -> TlsTrust {
        TlsTrust {
            ca_file: self.ca_file.clone(),
            public_roots: self.trust_public_roots,
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

impl IdentityConfig {
    /// What keeps issuers apart and their keys honest: subject patterns that
    /// parse and do not overlap between issuers, https (or loopback, or an
    /// explicit opt-in) for discovery, a CA to trust, a sane key age.
    pub(super) fn trust_problems(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        let mut problem =
            |key: String, message: String| problems.push(ConfigProblem { key, message });
        if self.jwks_max_key_age < self.jwks_refresh_interval {
            problem(
                "identity.jwks_max_key_age".into(),
                "must be at least jwks_refresh_interval, or keys would expire before they are refreshed".into(),
            );
        }
        let mut vouched: Vec<(usize, SubjectPattern)> = Vec::new();
        for (i, issuer) in self.issuers.iter().enumerate() {
            let key = |field: &str| format!("identity.issuers[{i}].{field}");
            match issuer.parsed_subjects() {
                Ok(patterns) if patterns.is_empty() => problem(
                    key("subjects"),
                    "this issuer may vouch for nobody; list the subjects its tokens may name, e.g. [\"component:ci/*\"], and keep them apart from every other issuer's".into(),
                ),
                Ok(patterns) => {
                    for pattern in patterns {
                        if issuer.kind == IssuerKind::Backstage && !pattern.admits_kind("user") {
                            problem(
                                key("subjects"),
                                format!("{pattern} names no user, but a backstage issuer's tokens are user tokens and name users only; use user:NAMESPACE/* patterns"),
                            );
                        }
                        if let Some((other, theirs)) = vouched
                            .iter()
                            .find(|(j, p)| *j != i && p.overlaps(&pattern))
                        {
                            problem(
                                key("subjects"),
                                format!("{pattern} overlaps {theirs} of identity.issuers[{other}] ({}); either issuer could then act as the same subject, so give each issuer its own kinds or namespaces", self.issuers[*other].name),
                            );
                        }
                        vouched.push((i, pattern));
                    }
                }
                Err(e) => problem(key("subjects"), e.to_string()),
            }
            if issuer
                .dedicated_audience
                .as_deref()
                .is_some_and(|a| a.trim().is_empty())
            {
                problem(key("dedicated_audience"), "must not be empty".into());
            }
            // The URL actually fetched is the discovery document; name the key
            // the operator wrote it under.
            let field = match (&issuer.discovery_url, &issuer.url) {
                (Some(_), _) => "discovery_url",
                (None, Some(_)) => "url",
                (None, None) => "issuer",
            };
            let checked = match issuer.kind {
                IssuerKind::Development => None,
                _ => issuer
                    .discovery()
                    .map(|u| check_scheme(&u, issuer.insecure_allow_http)),
            };
            if let Some(Err(e)) = checked {
                problem(
                    key(field),
                    format!("{e}; use https (with ca_file for a private CA), or set insecure_allow_http = true for this issuer if you accept that risk"),
                );
            }
            if !issuer.trust_public_roots && issuer.ca_file.is_none() {
                problem(
                    key("trust_public_roots"),
                    "false needs a ca_file, or no server could be trusted".into(),
                );
            }
        }
        problems
    }
}
