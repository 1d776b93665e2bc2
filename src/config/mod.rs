//! The one typed configuration: a TOML file (default `stackpass.toml`) with every
//! value overridable by `STACKPASS_*` environment variables (`__` separates
//! levels: `STACKPASS_AUDIT__URL`, `STACKPASS_SERVER__LISTEN`).
//!
//! Loading parses and validates everything up front and reports every problem at
//! once, each naming the key, so `stackpass config check` and `stackpass serve`
//! fail before the broker takes a single request. Relative paths in the file are
//! resolved against the file's own directory, so a config works from any cwd.

mod identity;
mod sections;
mod telemetry;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::Deserialize;
use stackpass_provider::SettingsContext;
use url::Url;

pub use identity::{IdentityConfig, IssuerKind, TrustedIssuerConfig};
pub use sections::{
    AgentsConfig, AuditConfig, CatalogConfig, CatalogKind, IssuerConfig, McpConfig,
    NotificationsConfig, PolicyConfig, RemoteStacksConfig, ServerConfig, StackSourceConfig,
    StacksConfig, StacksKind, StaticStacksConfig, SOURCE_COMPONENT_TAG,
};
pub use telemetry::{LogFormat, MetricsConfig, TelemetryConfig};

use crate::registry::Providers;

pub const DEFAULT_CONFIG_FILE: &str = "stackpass.toml";

/// Environment variables with the `STACKPASS_` prefix that belong to the CLI, not
/// to the server configuration.
const CLI_ONLY_VARIABLES: &[&str] = &["URL", "TOKEN", "CONFIG", "LOG", "STACK", "CACHE_DIR"];

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
    #[serde(default)]
    pub mcp: McpConfig,
    #[serde(default)]
    pub agents: AgentsConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
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

    /// The MCP server's resource identifier (RFC 9728 `resource`, RFC 8707):
    /// what tokens for `/mcp` must name as their audience.
    pub fn mcp_resource(&self) -> String {
        format!("{}/mcp", self.issuer_url())
    }

    /// Every audience that names the MCP server: its resource URL and the
    /// configured `mcp.audience`.
    pub fn mcp_audiences(&self) -> Vec<String> {
        let mut audiences = vec![self.mcp_resource()];
        audiences.extend(self.mcp.audience.iter().cloned());
        audiences
    }

    /// The issuers the MCP metadata names: those configured, or every trusted
    /// issuer that accepts an MCP audience.
    pub fn mcp_authorization_servers(&self) -> Vec<String> {
        if !self.mcp.authorization_servers.is_empty() {
            return self.mcp.authorization_servers.clone();
        }
        let audiences = self.mcp_audiences();
        self.identity
            .issuers
            .iter()
            .filter(|i| i.accepted_audiences().iter().any(|a| audiences.contains(a)))
            .filter_map(|i| i.issuer_id())
            .collect()
    }

    /// What provider settings are checked against.
    pub fn settings_context(&self) -> SettingsContext {
        SettingsContext {
            cloud_budget: self.cloud_budget(),
        }
    }

    /// The cloud call's share of the request timeout. A request waits for the
    /// issuer's keys, the stack source, the catalog, the audit log (intent and
    /// outcome share one busy timeout) and the cloud, one after the other; if their timeouts add
    /// up to more than the request timeout, a slow-but-working dependency turns
    /// every request into a timeout.
    pub fn cloud_budget(&self) -> Duration {
        self.server
            .request_timeout
            .saturating_sub(self.identity.fetch_timeout)
            .saturating_sub(self.stacks.longest_wait())
            .saturating_sub(self.catalog.timeout)
            .saturating_sub(self.audit.busy_timeout)
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
        self.issuer.resolve_paths(base);
        for issuer in &mut self.identity.issuers {
            for p in [issuer.key_file.as_mut(), issuer.ca_file.as_mut()]
                .into_iter()
                .flatten()
            {
                resolve(p)
            }
        }
        for p in &mut self.policy.files {
            resolve(p);
        }
        for source in self.stacks.tool_sources_mut() {
            match source {
                StackSourceConfig::Static(s) => resolve(&mut s.file),
                StackSourceConfig::PulumiCloud(r) | StackSourceConfig::HcpTerraform(r) => {
                    for p in [r.token_file.as_mut(), r.ca_file.as_mut()]
                        .into_iter()
                        .flatten()
                    {
                        resolve(p);
                    }
                }
            }
        }
        for p in [
            &mut self.catalog.file,
            &mut self.catalog.token_file,
            &mut self.catalog.ca_file,
            &mut self.stacks.file,
            &mut self.audit.checkpoint_dir,
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
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(in crate::config) fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("stackpass.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// The smallest configuration that loads; other config tests build on it.
    pub(in crate::config) const MINIMAL: &str = r#"
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

    #[cfg(feature = "aws")]
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
    fn the_checkpoint_schedule_is_checked_and_its_directory_is_relative_to_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "{MINIMAL}\n[audit]\ncheckpoint_dir = \"anchors\"\ncheckpoint_interval = \"0s\"\n"
        );
        let err = Config::load(&write(dir.path(), &text))
            .unwrap_err()
            .to_string();
        assert!(err.contains("audit.checkpoint_interval"), "{err}");
        let config = Config::load(&write(dir.path(), &text.replace("\"0s\"", "\"15m\""))).unwrap();
        assert_eq!(
            config.audit.checkpoint_dir,
            Some(dir.path().join("anchors"))
        );
        assert_eq!(
            Config::load(&write(dir.path(), MINIMAL))
                .unwrap()
                .audit
                .checkpoint_interval,
            std::time::Duration::from_secs(3600)
        );
    }

    #[test]
    fn agent_admin_groups_must_be_groups() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "{MINIMAL}\n[agents]\nadmin_groups = [\"group:default/security\", \"user:default/jane\"]\n"
        );
        let err = Config::load(&write(dir.path(), &text))
            .unwrap_err()
            .to_string();
        assert!(err.contains("agents.admin_groups[1]"), "{err}");
        assert!(!err.contains("agents.admin_groups[0]"), "{err}");
        let fixed = text.replace(", \"user:default/jane\"", "");
        let config = Config::load(&write(dir.path(), &fixed)).unwrap();
        assert_eq!(config.agents.admin_groups.len(), 1);
        assert!(Config::load(&write(dir.path(), MINIMAL))
            .unwrap()
            .agents
            .admin_groups
            .is_empty());
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
