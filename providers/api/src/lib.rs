//! The boundary between the broker and a cloud, and everything a cloud needs from
//! the core — nothing more. The core names no cloud: each provider crate brings
//!
//! - its [`ProviderKind`] (the name in config tables, rules, requests, audit);
//! - its own `[providers.<kind>]` table, parsed and validated by its
//!   [`ProviderFactory`] without any I/O;
//! - typed [`Target`]s (an AWS role ARN, later a GCP service account or an Azure
//!   application), checked when policy loads and parsed per request;
//! - its [`Limits`] and which rule features it can honour (session policy,
//!   session tags), consulted at policy load so a rule it cannot honour is refused;
//! - the claims and audience it wants in the subject token ([`SubjectClaims`]);
//! - the [`Credential`] it returns (secret fields only in `secrecy` types) and
//!   the output formats the CLI prints it in, and how `stackpass run` hands it
//!   to a command ([`ChildDelivery`]).

mod child;
mod credential;
#[cfg(feature = "http")]
pub mod http;
mod kind;
mod target;
pub mod token_exchange;

use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;

pub use child::{ChildDelivery, ChildEndpoint, ChildEnvironment, ChildFile};
pub use credential::{Credential, CredentialField, ReceivedCredential};
pub use kind::{InvalidProviderKind, ProviderKind};
pub use target::{masked_pattern, pattern_parts, PatternPart, Target, HOLE};
pub use token_exchange::ExchangedToken;

/// How a grant is handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// The broker exchanges its subject token at the cloud and returns the
    /// cloud's credential.
    #[default]
    Credentials,
    /// The broker returns only its own subject token, minted for the cloud's
    /// audience, for tools that exchange it themselves.
    Federation,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Credentials => "credentials",
            Mode::Federation => "federation",
        }
    }

    pub fn parse(text: &str) -> Option<Mode> {
        match text {
            "credentials" => Some(Mode::Credentials),
            "federation" => Some(Mode::Federation),
            _ => None,
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A way the CLI prints a provider's credentials, and the mode it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputFormat {
    pub name: &'static str,
    pub mode: Mode,
}

impl OutputFormat {
    pub const fn credentials(name: &'static str) -> Self {
        OutputFormat {
            name,
            mode: Mode::Credentials,
        }
    }

    pub const fn federation(name: &'static str) -> Self {
        OutputFormat {
            name,
            mode: Mode::Federation,
        }
    }
}

/// Field names every federation-mode credential carries, set by the broker.
pub mod federation {
    /// The subject token (secret).
    pub const SUBJECT_TOKEN: &str = "subject_token";
    /// Its `aud`.
    pub const AUDIENCE: &str = "audience";
    /// `urn:ietf:params:oauth:token-type:jwt`.
    pub const TOKEN_TYPE: &str = "token_type";
    pub const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
}

/// Durations a provider can issue. Rules are checked against them when policy
/// loads; requests when they arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub min_duration: Duration,
    pub max_duration: Duration,
    /// What a request that names no duration gets (capped by the rule).
    pub default_duration: Duration,
}

/// Facts about one issuance, resolved and decided by the broker, that a provider
/// may put into the subject token or show the cloud. Plain text: the provider
/// API knows nothing of the broker's types.
#[derive(Debug, Clone, Default)]
pub struct IssuanceFacts {
    pub issuance_id: String,
    /// The requester as the audit log names it, e.g. `user:default/jane`.
    pub requester: String,
    /// `human`, `service` or `agent`.
    pub requester_kind: String,
    /// An agent acting for the requester (the current actor).
    pub actor: Option<String>,
    /// Every actor, outermost (= `actor`) first, when agents act for agents
    /// (a nested RFC 8693 `act`); empty or `actor` alone otherwise.
    pub actor_chain: Vec<String>,
    /// The stack reference, e.g. `pulumi:acme/payments/dev`.
    pub stack: String,
    /// The catalog component's full reference and its bare name.
    pub component: Option<String>,
    pub component_name: Option<String>,
    /// The owning group's full reference.
    pub owner: Option<String>,
    pub environment: Option<String>,
    pub rule: String,
    /// The grant's session tags, rendered from the rule's templates.
    pub session_tags: std::collections::BTreeMap<String, String>,
}

/// The algorithms stackpass signs subject tokens with. Each relying party
/// verifies with the one its cloud accepts (Entra: RS256 only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub enum SigningAlgorithm {
    #[default]
    Es256,
    Rs256,
}

impl SigningAlgorithm {
    pub const ALL: [SigningAlgorithm; 2] = [SigningAlgorithm::Es256, SigningAlgorithm::Rs256];

    /// The JOSE name (`ES256`, `RS256`).
    pub fn as_str(self) -> &'static str {
        match self {
            SigningAlgorithm::Es256 => "ES256",
            SigningAlgorithm::Rs256 => "RS256",
        }
    }
}

impl std::fmt::Display for SigningAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a provider wants in the subject token stackpass mints for one exchange.
#[derive(Debug, Clone, Default)]
pub struct SubjectClaims {
    /// The `aud`: one per relying party, so a token minted for one cloud (or one
    /// workload-identity pool) is useless at another.
    pub audience: String,
    /// The `sub`, when the cloud needs one it can match (Entra matches it
    /// exactly against a federated credential; Google maps at most 127 bytes of
    /// it). `None`: the broker's own `stack:{stack ref}`.
    pub subject: Option<String>,
    /// Extra claims, named so they cannot collide with the broker's own
    /// (`iss`, `sub`, `aud`, `iat`, `nbf`, `exp`, `jti`, `stackpass`).
    pub claims: serde_json::Map<String, serde_json::Value>,
}

/// What `stackpass setup` knows about this broker when a provider prints its
/// cloud-side trust configuration.
#[derive(Debug, Clone, Copy)]
pub struct TrustContext<'a> {
    /// The broker's issuer URL (`iss`), exactly as it signs it.
    pub issuer_url: &'a str,
    /// The target templates this provider's rules name, as written.
    pub targets: &'a [String],
}

/// Everything a provider needs to turn a subject token into a cloud credential.
/// The broker has already authenticated, authorized and audited the intent.
#[derive(Debug)]
pub struct ExchangeRequest {
    /// The short-lived JWT stackpass signed with this provider's claims.
    pub subject_token: SecretString,
    pub target: Target,
    pub duration: Duration,
    /// Inline scope-down policy, if the grant has one (only for providers whose
    /// [`CloudProvider::check_session_policy`] accepts them).
    pub session_policy: Option<String>,
    /// OAuth scopes narrowing the provider's configured ones (agent bounds;
    /// only for providers whose [`CloudProvider::check_scopes`] accepted them).
    pub scopes: Option<Vec<String>>,
    pub facts: IssuanceFacts,
}

/// Why an exchange failed, split by who has to act: the cloud said no (fix the
/// trust policy or role), or the cloud could not be reached (retry later).
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("{provider} rejected the request ({code}): {message}")]
    Rejected {
        provider: ProviderKind,
        /// The cloud's own error code, e.g. `InvalidIdentityToken`.
        code: String,
        message: String,
        /// Which trust setting to fix, in the cloud's own terms.
        hint: String,
    },
    #[error("{provider} could not be reached: {message}")]
    Unavailable {
        provider: ProviderKind,
        message: String,
    },
    #[error("{provider} returned a response stackpass could not use: {message}")]
    InvalidResponse {
        provider: ProviderKind,
        message: String,
    },
}

/// One configured cloud, shared across requests. Every method but `exchange` is
/// pure: policy loading, `config check` and `policy test` call them offline.
#[async_trait::async_trait]
pub trait CloudProvider: Send + Sync {
    fn kind(&self) -> ProviderKind;

    fn limits(&self) -> Limits;

    /// How a target is written, for hints (`arn:aws:iam::ACCOUNT:role/NAME`).
    fn target_syntax(&self) -> &'static str;

    /// Checks a rule's target as written, where each `{…}` is filled in per
    /// request with a value of letters, digits and `+=,.@_-` (see
    /// [`pattern_parts`]). Catches a malformed target when policy loads.
    fn check_target_pattern(&self, pattern: &str) -> Result<(), String>;

    /// Parses a rendered target; the result is what [`ExchangeRequest::target`]
    /// carries.
    fn parse_target(&self, text: &str) -> Result<Target, String>;

    /// Checks a rule's session policy (rendered with sample values).
    fn check_session_policy(&self, _sample: &str) -> Result<(), String> {
        Err(format!("{} takes no session policy", self.kind()))
    }

    /// Checks OAuth scopes an agent's credentials are narrowed to: each must
    /// be no wider than what the provider is configured to ask for.
    fn check_scopes(&self, _scopes: &[String]) -> Result<(), String> {
        Err(format!("{} takes no OAuth scopes", self.kind()))
    }

    /// Checks the key of one of a rule's session tags.
    fn check_session_tag_key(&self, _key: &str) -> Result<(), String> {
        Err(format!("{} takes no session tags", self.kind()))
    }

    /// The algorithm this cloud verifies subject tokens with.
    fn signing_algorithm(&self) -> SigningAlgorithm {
        SigningAlgorithm::Es256
    }

    /// How an operator cuts short credentials this cloud already issued, which
    /// the broker cannot recall (shown when an agent's delegation is revoked).
    fn recall_hint(&self) -> &'static str {
        "the broker cannot recall issued credentials; they stay valid until they expire"
    }

    /// Claim names this provider adds, for the discovery document.
    fn claims_supported(&self) -> &'static [&'static str] {
        &[]
    }

    /// The audience and claims of the subject token for `target`.
    fn subject_claims(&self, target: &Target, facts: &IssuanceFacts) -> SubjectClaims;

    async fn exchange(&self, request: ExchangeRequest) -> Result<Credential, ProviderError>;

    /// What the cloud must be told to trust this broker, as commands and
    /// documents its operators paste (`stackpass setup <kind>`).
    fn trust_setup(&self, context: &TrustContext<'_>) -> String;

    /// Checks that this provider can deliver a grant the policy allowed, in the
    /// mode asked for, before anything is minted (a cloud that decides token
    /// lifetimes itself cannot honour a shorter grant in credentials mode).
    fn check_delivery(
        &self,
        _target: &Target,
        _mode: Mode,
        _duration: Duration,
    ) -> Result<(), String> {
        Ok(())
    }

    /// Federation mode: the caller gets the subject token itself and exchanges
    /// it with its own tools. These are the non-secret facts those tools need
    /// besides the token (an Azure tenant and client id, a GCP audience), as
    /// credential fields in the order the provider lists them.
    fn federation_fields(&self, _target: &Target) -> Vec<(&'static str, Option<String>)> {
        Vec::new()
    }

    /// RFC 8693 token exchange: the `requested_token_type` that names this
    /// cloud's credential (starting with [`token_exchange::TOKEN_TYPE_PREFIX`]).
    /// `None`: the token endpoint does not offer it.
    fn credential_token_type(&self) -> Option<&'static str> {
        None
    }

    /// The credential [`Self::exchange`] returned, as a token-exchange answer's
    /// `access_token`. `None` if it lacks what the format needs.
    fn exchanged_token(&self, _credential: &Credential) -> Option<ExchangedToken> {
        None
    }
}

/// A problem with one key of a provider's config table, relative to the table
/// (`max_attempts`, not `providers.aws.max_attempts`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingProblem {
    pub key: String,
    pub message: String,
}

impl SettingProblem {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        SettingProblem {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Facts about the broker a provider's settings are checked against.
#[derive(Debug, Clone, Copy)]
pub struct SettingsContext {
    /// The cloud call's share of the request timeout: what is left of
    /// `server.request_timeout` once identity, catalog and audit have theirs.
    /// A provider's own timeout must fit in it.
    pub cloud_budget: Duration,
}

/// Builds a provider from its config table, and prints its credentials in the
/// CLI. One static value per provider crate, listed in the broker's registry.
pub trait ProviderFactory: Send + Sync {
    fn kind(&self) -> ProviderKind;

    /// Parses and validates `[providers.<kind>]` (given as JSON, environment
    /// overrides applied) and builds the provider. No I/O: clients connect on
    /// first use. Reports every problem at once.
    fn configure(
        &self,
        table: serde_json::Value,
        context: &SettingsContext,
    ) -> Result<Arc<dyn CloudProvider>, Vec<SettingProblem>>;

    /// Formats besides `json` the CLI can print this provider's credentials in.
    fn output_formats(&self) -> &'static [OutputFormat];

    /// Prints a credential the broker returned in one of [`Self::output_formats`].
    fn render(&self, format: &str, credential: &ReceivedCredential) -> Result<String, String>;

    /// What to print on stdout when no credential could be had, for formats
    /// whose reader expects an answer even then (Google's executable-sourced
    /// credentials read `success: false`). `None`: print nothing.
    fn render_failure(&self, _format: &str, _message: &str) -> Option<String> {
        None
    }

    /// How `stackpass run` gives this provider's credentials to a command and
    /// keeps them fresh. `None`: `run` cannot deliver it.
    fn child_delivery(&self) -> Option<&'static dyn ChildDelivery> {
        None
    }
}

/// Checks a cloud endpoint setting and normalises it (no trailing `/`). A
/// subject token travels to it, so it must be https; plain http is accepted
/// only to a loopback host (an emulator or a local double).
pub fn check_endpoint(key: &str, endpoint: &mut String, problems: &mut Vec<SettingProblem>) {
    let loopback = |url: &url::Url| match url.host() {
        Some(url::Host::Domain(name)) => name == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match url::Url::parse(endpoint) {
        Ok(url) if url.scheme() == "https" || (url.scheme() == "http" && loopback(&url)) => {
            *endpoint = url.as_str().trim_end_matches('/').to_owned();
        }
        Ok(url) if url.scheme() == "http" => problems.push(SettingProblem::new(
            key,
            format!("{endpoint:?} is plain http to a host that is not loopback, so subject tokens would cross the network readable; use https"),
        )),
        _ => problems.push(SettingProblem::new(
            key,
            format!("{endpoint:?} is not an https URL"),
        )),
    }
}

/// Deserializes a provider's config table, turning serde's error into a problem
/// that names the key when serde says which one.
pub fn parse_settings<T: serde::de::DeserializeOwned>(
    table: serde_json::Value,
) -> Result<T, Vec<SettingProblem>> {
    serde_json::from_value(table).map_err(|e| {
        let message = e.to_string();
        let key = message
            .split('`')
            .nth(1)
            .filter(|_| {
                message.starts_with("unknown field") || message.starts_with("missing field")
            })
            .unwrap_or("")
            .to_owned();
        vec![SettingProblem { key, message }]
    })
}
