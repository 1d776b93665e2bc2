//! The one typed configuration: a TOML file (default `stackpass.toml`) with every
//! value overridable by `STACKPASS_*` environment variables (`__` separates
//! levels: `STACKPASS_AUDIT__URL`, `STACKPASS_SERVER__LISTEN`).
//!
//! Loading parses and validates everything up front and reports every problem at
//! once, each naming the key, so `stackpass config check` and `stackpass serve`
//! fail before the broker takes a single request. Relative paths in the file are
//! resolved against the file's own directory, so a config works from any cwd.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use secrecy::SecretString;
use serde::Deserialize;
use stackpass_provider::SettingsContext;
use url::Url;

use crate::catalog::EntityRef;
use crate::database::{is_postgres_url, redact, sqlite_path};
use crate::policy::RuleConfig;
use crate::registry::Providers;

pub const DEFAULT_CONFIG_FILE: &str = "stackpass.toml";

/// Environment variables with the `STACKPASS_` prefix that belong to the CLI, not
/// to the server configuration.
const CLI_ONLY_VARIABLES: &[&str] = &["URL", "TOKEN", "CONFIG", "LOG"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub issuer: IssuerConfig,
    #[serde(default)]
    pub identity: IdentityConfig,
    pub catalog: CatalogConfig,
    pub stacks: StacksConfig,
    /// `[providers.<kind>]`: each table belongs to its provider crate, which
    /// parses and validates it (see `registry`).
    #[serde(default)]
    pub providers: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub policy: PolicyConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default)]
    pub notifications: NotificationsConfig,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationsConfig {
    /// A webhook that takes Slack-compatible JSON (`{"text": …}`). Slack webhook
    /// URLs are secrets: prefer `STACKPASS_NOTIFICATIONS__WEBHOOK_URL`.
    #[serde(default, deserialize_with = "optional_secret")]
    pub webhook_url: Option<SecretString>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// The broker's public URL: the `iss` of every subject token, so clouds must be
    /// able to fetch `{public_url}/.well-known/openid-configuration`.
    pub public_url: Option<Url>,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    pub max_body_bytes: usize,
    pub max_concurrent_requests: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_url: None,
            request_timeout: Duration::from_secs(30),
            max_body_bytes: 16 * 1024,
            max_concurrent_requests: 512,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IssuerConfig {
    /// PKCS#8 PEM file with stackpass's ES256 signing key.
    pub signing_key: PathBuf,
    /// Lifetime of the subject tokens stackpass mints; they are exchanged at once.
    #[serde(with = "humantime_serde")]
    pub token_lifetime: Duration,
    /// Development only: create the signing key on first start.
    pub create_key_if_missing: bool,
}

impl Default for IssuerConfig {
    fn default() -> Self {
        IssuerConfig {
            signing_key: PathBuf::from("stackpass-signing-key.pem"),
            token_lifetime: Duration::from_secs(300),
            create_key_if_missing: false,
        }
    }
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CatalogKind {
    Backstage,
    Static,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogConfig {
    pub kind: CatalogKind,
    /// Backstage base URL.
    pub url: Option<Url>,
    /// Static external-access token for the catalog API. Prefer `token_file` or the
    /// `STACKPASS_CATALOG__TOKEN` variable to writing it into the file.
    #[serde(default, deserialize_with = "optional_secret")]
    pub token: Option<SecretString>,
    pub token_file: Option<PathBuf>,
    /// Static catalog file.
    pub file: Option<PathBuf>,
    #[serde(default = "default_cache_ttl", with = "humantime_serde")]
    pub cache_ttl: Duration,
    #[serde(default = "default_cache_capacity")]
    pub cache_capacity: u64,
    #[serde(default = "default_fetch_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn optional_secret<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<SecretString>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.map(SecretString::from))
}

fn default_cache_ttl() -> Duration {
    Duration::from_secs(60)
}

fn default_cache_capacity() -> u64 {
    10_000
}

fn default_fetch_timeout() -> Duration {
    Duration::from_secs(5)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StacksKind {
    Static,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StacksConfig {
    pub kind: StacksKind,
    pub file: Option<PathBuf>,
    /// The stack tag whose value names the catalog component.
    #[serde(default = "default_component_tag")]
    pub component_tag: String,
    /// The stack tag whose value names the environment.
    #[serde(default = "default_environment_tag")]
    pub environment_tag: String,
}

fn default_component_tag() -> String {
    "backstage.io/component".into()
}

fn default_environment_tag() -> String {
    "environment".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Rules written in the server config; tried before the files' rules.
    pub rules: Vec<RuleConfig>,
    /// Policy files, or directories of `*.toml` policy files, in order.
    pub files: Vec<PathBuf>,
    /// How often policy files are checked for changes (they also reload on SIGHUP).
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            rules: Vec::new(),
            files: Vec::new(),
            reload_interval: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// `sqlite://PATH` (relative paths are relative to the config file) or
    /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE`. Prefer the
    /// `STACKPASS_AUDIT__URL` variable for URLs that carry a password.
    pub url: String,
    /// How long a write waits for a lock or a connection before the request fails closed.
    #[serde(with = "humantime_serde")]
    pub busy_timeout: Duration,
    /// Members of these catalog groups may read the whole audit log; everyone
    /// else may read only their own records.
    pub auditor_groups: Vec<EntityRef>,
    /// How long records are kept; `stackpass audit prune` removes older ones.
    #[serde(with = "humantime_serde")]
    pub retention: Option<Duration>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            url: "sqlite://stackpass.db".into(),
            busy_timeout: Duration::from_secs(5),
            auditor_groups: Vec::new(),
            retention: None,
        }
    }
}

impl AuditConfig {
    /// The SQLite file path, if the URL names one.
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        sqlite_path(&self.url)
    }
}

/// Every problem found in a configuration, each naming its key.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub source_name: String,
    pub problems: Vec<ConfigProblem>,
}

#[derive(Debug)]
pub struct ConfigProblem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} has {} problem(s):",
            self.source_name,
            self.problems.len()
        )?;
        for problem in &self.problems {
            write!(f, "\n  - {}: {}", problem.key, problem.message)?;
        }
        Ok(())
    }
}

impl Config {
    /// Loads `path` plus `STACKPASS_*` overrides and validates the result. A missing
    /// file is an error: silently running on defaults would hide a typo'd path.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let source_name = path.display().to_string();
        let single = |key: &str, message: String| ConfigError {
            source_name: source_name.clone(),
            problems: vec![ConfigProblem {
                key: key.into(),
                message,
            }],
        };
        if !path.is_file() {
            return Err(single(
                "--config",
                format!("{source_name} does not exist; pass --config FILE or create {DEFAULT_CONFIG_FILE} (see examples/quickstart/stackpass.toml)"),
            ));
        }
        let mut config: Config = Figment::new()
            .merge(Toml::file_exact(path))
            .merge(
                Env::prefixed("STACKPASS_")
                    .split("__")
                    .ignore(CLI_ONLY_VARIABLES),
            )
            .extract()
            .map_err(|e| ConfigError {
                source_name: source_name.clone(),
                problems: e
                    .into_iter()
                    .map(|e| ConfigProblem {
                        key: if e.path.is_empty() {
                            "(file)".into()
                        } else {
                            e.path.join(".")
                        },
                        message: e.kind.to_string(),
                    })
                    .collect(),
            })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        config.resolve_paths(&base);
        let problems = config.validate();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError {
                source_name,
                problems,
            })
        }
    }

    pub fn public_url(&self) -> Url {
        self.server.public_url.clone().unwrap_or_else(|| {
            Url::parse(&format!("http://{}", self.server.listen))
                .expect("a socket address is a valid host")
        })
    }

    /// The `iss` of the subject tokens stackpass mints: the public URL without a
    /// trailing slash, as clouds compare it byte for byte.
    pub fn issuer_url(&self) -> String {
        self.public_url().as_str().trim_end_matches('/').to_owned()
    }

    /// What provider settings are checked against.
    pub fn settings_context(&self) -> SettingsContext {
        SettingsContext {
            request_timeout: self.server.request_timeout,
        }
    }

    /// Builds the configured providers (validated at load, so this only fails
    /// for a config that was changed after loading).
    pub fn providers(&self) -> Result<Providers, ConfigError> {
        Providers::configure(&self.providers, &self.settings_context()).map_err(|found| {
            ConfigError {
                source_name: "configuration".into(),
                problems: found
                    .into_iter()
                    .map(|p| ConfigProblem {
                        key: p.key,
                        message: p.message,
                    })
                    .collect(),
            }
        })
    }

    pub fn development_issuer(&self) -> Option<&TrustedIssuerConfig> {
        self.identity
            .issuers
            .iter()
            .find(|i| i.kind == IssuerKind::Development)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut self.issuer.signing_key);
        for issuer in &mut self.identity.issuers {
            if let Some(p) = issuer.key_file.as_mut() {
                resolve(p)
            }
        }
        for p in &mut self.policy.files {
            resolve(p);
        }
        for p in [
            &mut self.catalog.file,
            &mut self.catalog.token_file,
            &mut self.stacks.file,
        ]
        .into_iter()
        .flatten()
        {
            resolve(p);
        }
        if let Some(path) = self.audit.sqlite_path() {
            if path.is_relative() {
                self.audit.url = format!("sqlite://{}", base.join(path).display());
            }
        }
    }

    fn validate(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        let mut problem =
            |key: String, message: String| problems.push(ConfigProblem { key, message });

        let public_url = self.public_url();
        if !matches!(public_url.scheme(), "http" | "https")
            || public_url.query().is_some()
            || public_url.fragment().is_some()
        {
            problem(
                "server.public_url".into(),
                "must be an http(s) URL without query or fragment".into(),
            );
        }
        if self.server.max_body_bytes == 0 || self.server.max_concurrent_requests == 0 {
            problem(
                "server".into(),
                "max_body_bytes and max_concurrent_requests must be positive".into(),
            );
        }
        let lifetime = self.issuer.token_lifetime;
        if lifetime < Duration::from_secs(60) || lifetime > Duration::from_secs(3600) {
            problem(
                "issuer.token_lifetime".into(),
                "must be between 1m and 1h; subject tokens are exchanged at once".into(),
            );
        }

        if self.identity.issuers.is_empty() {
            problem(
                "identity.issuers".into(),
                "no trusted issuer configured; add an [[identity.issuers]] table".into(),
            );
        }
        if !(512..=64 * 1024).contains(&self.identity.max_token_bytes) {
            problem(
                "identity.max_token_bytes".into(),
                "must be between 512 and 65536".into(),
            );
        }
        let mut names = HashSet::new();
        let mut issuer_ids = HashSet::new();
        for (i, issuer) in self.identity.issuers.iter().enumerate() {
            let key = |field: &str| format!("identity.issuers[{i}].{field}");
            if !names.insert(issuer.name.as_str()) {
                problem(
                    key("name"),
                    format!("{:?} is used by two issuers", issuer.name),
                );
            }
            match issuer.issuer_id() {
                Some(id) if !issuer_ids.insert(id.clone()) => {
                    problem(key("issuer"), format!("{id:?} is configured twice"));
                }
                Some(_) => {}
                None => problem(
                    key("issuer"),
                    match issuer.kind {
                        IssuerKind::Backstage => {
                            "set url (the Backstage base URL) or issuer".into()
                        }
                        _ => "set issuer to the exact iss value its tokens carry".into(),
                    },
                ),
            }
            if issuer.kind != IssuerKind::Development && issuer.discovery().is_none() {
                problem(
                    key("discovery_url"),
                    "cannot derive the OIDC discovery URL; set discovery_url".into(),
                );
            }
            if issuer.kind == IssuerKind::Development && issuer.key_file.is_none() {
                problem(
                    key("key_file"),
                    "development issuers need key_file (a PEM key pair)".into(),
                );
            }
            if issuer.accepted_audiences().is_empty() {
                problem(
                    key("audiences"),
                    "list the audiences this issuer's tokens are meant for".into(),
                );
            }
            if issuer.algorithms.is_empty() {
                problem(
                    key("algorithms"),
                    "list at least one algorithm, e.g. [\"ES256\"]".into(),
                );
            }
            if let Err(e) = issuer.parsed_algorithms() {
                problem(key("algorithms"), e);
            }
            if issuer.leeway > Duration::from_secs(300) {
                problem(key("leeway"), "must be at most 5m".into());
            }
        }

        match self.catalog.kind {
            CatalogKind::Backstage if self.catalog.url.is_none() => {
                problem(
                    "catalog.url".into(),
                    "the Backstage catalog needs its base URL".into(),
                );
            }
            CatalogKind::Static if self.catalog.file.is_none() => {
                problem(
                    "catalog.file".into(),
                    "the static catalog needs a file".into(),
                );
            }
            _ => {}
        }
        if self.catalog.token.is_some() && self.catalog.token_file.is_some() {
            problem(
                "catalog.token".into(),
                "set token or token_file, not both".into(),
            );
        }
        if self.stacks.file.is_none() {
            problem(
                "stacks.file".into(),
                "the static stack registry needs a file".into(),
            );
        }

        if let Err(found) = Providers::configure(&self.providers, &self.settings_context()) {
            for p in found {
                problem(p.key, p.message);
            }
        }

        if self.audit.sqlite_path().is_none() && !is_postgres_url(&self.audit.url) {
            problem(
                "audit.url".into(),
                format!(
                    "{:?} is not supported; use sqlite://PATH or postgres://USER@HOST/DATABASE",
                    redact(&self.audit.url)
                ),
            );
        }
        if self
            .audit
            .retention
            .is_some_and(|r| r < Duration::from_secs(24 * 3600))
        {
            problem(
                "audit.retention".into(),
                "must be at least 1d; audit logs are evidence".into(),
            );
        }

        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("stackpass.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    const MINIMAL: &str = r#"
        [[identity.issuers]]
        name = "backstage"
        kind = "backstage"
        url = "http://localhost:7007"
        [catalog]
        kind = "static"
        file = "catalog.toml"
        [stacks]
        kind = "static"
        file = "stacks.toml"
    "#;

    #[test]
    fn minimal_config_loads_with_defaults_and_resolves_paths() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::load(&write(dir.path(), MINIMAL)).unwrap();
        assert_eq!(
            config.identity.issuers[0].issuer_id().unwrap(),
            "http://localhost:7007/api/auth"
        );
        assert_eq!(
            config.identity.issuers[0].discovery().unwrap().as_str(),
            "http://localhost:7007/api/auth/.well-known/openid-configuration"
        );
        assert_eq!(
            config.identity.issuers[0].accepted_audiences(),
            vec!["backstage"]
        );
        assert_eq!(
            config.catalog.file.as_deref(),
            Some(dir.path().join("catalog.toml").as_path())
        );
        assert_eq!(
            config.audit.url,
            format!("sqlite://{}", dir.path().join("stackpass.db").display())
        );
    }

    #[test]
    fn problems_name_their_keys() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "{MINIMAL}\n[providers.aws]\nmax_attempts = 0\ntimeout = \"1m\"\n[audit]\nretention = \"1h\"\n"
        );
        let err = Config::load(&write(dir.path(), &text))
            .unwrap_err()
            .to_string();
        assert!(err.contains("providers.aws.max_attempts"), "{err}");
        assert!(err.contains("providers.aws.timeout"), "{err}");
        assert!(err.contains("audit.retention"), "{err}");
    }

    #[test]
    fn shared_secret_algorithms_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let text = MINIMAL.replace(
            "kind = \"backstage\"",
            "kind = \"backstage\"\nalgorithms = [\"HS256\"]",
        );
        let err = Config::load(&write(dir.path(), &text))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("identity.issuers[0].algorithms") && err.contains("shared-secret"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_and_bad_types_are_reported_with_their_path() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!("{MINIMAL}\n[server]\nlisten = \"not an address\"\nbogus = 1\n");
        let err = Config::load(&write(dir.path(), &text))
            .unwrap_err()
            .to_string();
        assert!(err.contains("server"), "{err}");
    }

    #[test]
    fn missing_file_is_an_error_with_a_hint() {
        let err = Config::load(Path::new("/nonexistent/stackpass.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("does not exist") && err.contains("--config"),
            "{err}"
        );
    }
}
