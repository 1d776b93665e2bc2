//! Checks a loaded configuration as a whole and reports every problem at
//! once, each naming its key; provider tables are checked by their providers.

use std::collections::HashSet;
use std::time::Duration;

use secrecy::ExposeSecret;

use super::{
    Config, ConfigProblem, IssuerKind, StackSourceConfig, StacksConfig, StacksKind,
    SOURCE_COMPONENT_TAG,
};
use crate::config::CatalogKind;
use crate::database::{is_postgres_url, redact};
use crate::registry::Providers;
use crate::stacks::{hcp_terraform, pulumi_cloud};

/// Longer would only keep a leaving replica around.
const MAX_SHUTDOWN_DELAY: Duration = Duration::from_secs(300);

impl Config {
    pub(super) fn validate(&self) -> Vec<ConfigProblem> {
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
        if self.server.max_body_bytes == 0
            || self.server.max_concurrent_requests == 0
            || self.server.max_connections == 0
        {
            problem(
                "server".into(),
                "max_body_bytes, max_concurrent_requests and max_connections must be positive"
                    .into(),
            );
        }
        for (key, timeout) in [
            ("header_read_timeout", self.server.header_read_timeout),
            ("body_read_timeout", self.server.body_read_timeout),
        ] {
            if timeout.is_zero() || timeout >= self.server.request_timeout {
                problem(
                    format!("server.{key}"),
                    "must be positive and shorter than server.request_timeout".into(),
                );
            }
        }
        if let Some(tls) = &self.server.tls {
            let reload = tls.reload_interval;
            if reload < Duration::from_secs(1) || reload > Duration::from_secs(3600) {
                problem(
                    "server.tls.reload_interval".into(),
                    "must be between 1s and 1h; a renewed certificate must be picked up well before the old one expires".into(),
                );
            }
        }
        let limits = &self.limits;
        for (name, rate, burst) in [
            (
                "issuance_per_principal",
                limits.issuance_per_principal_per_minute,
                limits.issuance_per_principal_burst,
            ),
            (
                "issuance_per_address",
                limits.issuance_per_address_per_minute,
                limits.issuance_per_address_burst,
            ),
            (
                "auth_failures_per_address",
                limits.auth_failures_per_address_per_minute,
                limits.auth_failures_per_address_burst,
            ),
        ] {
            // governor spreads a rate over nanoseconds: beyond 1e9 a minute,
            // the emission interval would round to zero.
            if rate > 1_000_000_000 {
                problem(
                    format!("limits.{name}_per_minute"),
                    "must be at most 1000000000; set 0 to turn the limit off".into(),
                );
            }
            if rate > 0 && burst == 0 {
                problem(
                    format!("limits.{name}_burst"),
                    format!("must be at least 1 while limits.{name}_per_minute is set; it is how many requests may come at once"),
                );
            }
        }
        if limits.max_tracked_keys < 100 {
            problem(
                "limits.max_tracked_keys".into(),
                "must be at least 100; past it every new principal or address shares one bucket"
                    .into(),
            );
        }
        if self.server.shutdown_delay > MAX_SHUTDOWN_DELAY {
            problem(
                "server.shutdown_delay".into(),
                "must be at most 5m; load balancers notice a failing /readyz within seconds (and a pod's terminationGracePeriodSeconds must exceed shutdown_delay + request_timeout)".into(),
            );
        }
        let lifetime = self.issuer.token_lifetime;
        if lifetime < Duration::from_secs(60) || lifetime > Duration::from_secs(3600) {
            problem(
                "issuer.token_lifetime".into(),
                "must be between 1m and 1h; subject tokens are exchanged at once".into(),
            );
        }
        let reload = self.issuer.key_reload_interval;
        if reload < Duration::from_secs(1) || reload > Duration::from_secs(3600) {
            problem(
                "issuer.key_reload_interval".into(),
                "must be between 1s and 1h; rotated keys must reach every replica well within the rotation's overlap".into(),
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
            if issuer.algorithm_names().is_empty() {
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
        for found in self.identity.trust_problems() {
            problem(found.key, found.message);
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
        if let Some(Err(e)) = self
            .catalog
            .url
            .as_ref()
            .map(|url| crate::http_client::check_scheme(url, self.catalog.insecure_allow_http))
        {
            problem(
                "catalog.url".into(),
                format!("{e}; use https (with catalog.ca_file for a private CA), or set catalog.insecure_allow_http = true if you accept that risk"),
            );
        }
        if !self.catalog.trust_public_roots && self.catalog.ca_file.is_none() {
            problem(
                "catalog.trust_public_roots".into(),
                "false needs a ca_file, or no server could be trusted".into(),
            );
        }
        if self.catalog.token.is_some() && self.catalog.token_file.is_some() {
            problem(
                "catalog.token".into(),
                "set token or token_file, not both".into(),
            );
        }
        for found in stack_problems(&self.stacks) {
            problem(found.key, found.message);
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
        if self.audit.checkpoint_interval < Duration::from_secs(1) {
            problem(
                "audit.checkpoint_interval".into(),
                "must be at least 1s".into(),
            );
        }

        for (i, group) in self.agents.admin_groups.iter().enumerate() {
            if group.kind() != "group" {
                problem(
                    format!("agents.admin_groups[{i}]"),
                    format!("{group} is not a group; name catalog groups such as group:default/security"),
                );
            }
        }

        let n = &self.notifications;
        if let Some(url) = &n.webhook_url {
            if !webhook_url_is_acceptable(url.expose_secret()) {
                problem(
                    "notifications.webhook_url".into(),
                    "must be an https URL (plain http only to a loopback address); the value is not shown, webhook URLs are secrets".into(),
                );
            }
        }
        let within = |d: Duration, min: u64, max: u64| {
            d >= Duration::from_millis(min) && d <= Duration::from_millis(max)
        };
        if !within(n.timeout, 1_000, 60_000) {
            problem(
                "notifications.timeout".into(),
                "must be between 1s and 1m".into(),
            );
        }
        if !within(n.poll_interval, 100, 300_000) {
            problem(
                "notifications.poll_interval".into(),
                "must be between 100ms and 5m".into(),
            );
        }
        if n.lease < n.timeout * 2 || n.lease > Duration::from_secs(3600) {
            problem(
                "notifications.lease".into(),
                "must be at least twice notifications.timeout (a claim must outlast a post, or two brokers send the same message) and at most 1h".into(),
            );
        }
        if !within(n.max_retry_interval, 1_000, 3_600_000) {
            problem(
                "notifications.max_retry_interval".into(),
                "must be between 1s and 1h".into(),
            );
        }
        if !within(n.give_up_after, 1_000, 30 * 24 * 3_600_000) {
            problem(
                "notifications.give_up_after".into(),
                "must be between 1s and 30d".into(),
            );
        }
        let t = &self.telemetry;
        if let Some(endpoint) = &t.otlp_endpoint {
            if !matches!(endpoint.scheme(), "http" | "https") {
                problem(
                    "telemetry.otlp_endpoint".into(),
                    "must be an http(s) URL (OTLP over HTTP, e.g. http://otel-collector:4318/v1/traces)".into(),
                );
            }
        }
        if !within(t.otlp_timeout, 100, 60_000) {
            problem(
                "telemetry.otlp_timeout".into(),
                "must be between 100ms and 1m".into(),
            );
        }
        if !(0.0..=1.0).contains(&t.trace_sample_ratio) {
            problem(
                "telemetry.trace_sample_ratio".into(),
                "must be between 0.0 and 1.0".into(),
            );
        }
        if t.service_name.trim().is_empty() {
            problem("telemetry.service_name".into(), "must not be empty".into());
        }
        if let Some(listen) = self.metrics.listen {
            if listen == self.server.listen && listen.port() != 0 {
                problem(
                    "metrics.listen".into(),
                    "is the API's own address; leave it unset to serve /metrics there, or pick another port".into(),
                );
            }
        }

        problems.extend(self.mcp_problems());

        problems
    }

    /// `[mcp]`: the metadata must name an issuer the broker trusts to mint
    /// tokens for `/mcp`, or no client could ever get one it accepts.
    fn mcp_problems(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        if !self.mcp.enabled {
            return problems;
        }
        let mut problem = |key: &str, message: String| {
            problems.push(ConfigProblem {
                key: key.into(),
                message,
            })
        };
        if self
            .mcp
            .audience
            .as_deref()
            .is_some_and(|a| a.trim().is_empty() || a != a.trim())
        {
            problem(
                "mcp.audience",
                "must be a non-empty string without surrounding spaces".into(),
            );
        }
        let audiences = self.mcp_audiences();
        let accepting: Vec<String> = self
            .identity
            .issuers
            .iter()
            .filter(|i| i.accepted_audiences().iter().any(|a| audiences.contains(a)))
            .filter_map(|i| i.issuer_id())
            .collect();
        if accepting.is_empty() {
            problem(
                "mcp.enabled",
                format!(
                    "no trusted issuer accepts an MCP audience ({}); add one to an issuer's audiences (identity.issuers[].audiences) so it can mint tokens for /mcp",
                    audiences.join(" or ")
                ),
            );
        }
        for (i, server) in self.mcp.authorization_servers.iter().enumerate() {
            if !accepting.contains(server) {
                problem(
                    &format!("mcp.authorization_servers[{i}]"),
                    format!("{server:?} is not the issuer of a trusted issuer that accepts an MCP audience ({}); name such an issuer's exact iss", audiences.join(" or ")),
                );
            }
        }
        problems
    }
}

#[cfg(test)]
mod mcp_tests {
    use crate::config::tests::{write, MINIMAL};
    use crate::config::Config;

    fn load(extra: &str) -> Result<Config, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), &format!("{MINIMAL}\n{extra}"));
        Config::load(&path).map_err(|e| e.to_string())
    }

    const AGENT_ISSUER: &str = r#"
[[identity.issuers]]
name = "idp"
kind = "oidc"
issuer = "https://idp.example.com"
audiences = ["https://stackpass.example.com/mcp"]
subjects = ["component:agents/*"]
"#;

    #[test]
    fn mcp_is_off_by_default_and_needs_an_issuer_for_its_audience() {
        let config = load("").unwrap();
        assert!(!config.mcp.enabled);
        let error = load("[mcp]\nenabled = true").unwrap_err();
        assert!(
            error.contains("mcp.enabled: no trusted issuer accepts an MCP audience"),
            "{error}"
        );
    }

    #[test]
    fn the_metadata_names_the_issuers_that_accept_the_mcp_audience() {
        let public = "[server]\npublic_url = \"https://stackpass.example.com\"";
        // The resource URL derived from server.public_url is an MCP audience.
        let config = load(&format!("{AGENT_ISSUER}\n{public}\n[mcp]\nenabled = true")).unwrap();
        assert_eq!(config.mcp_resource(), "https://stackpass.example.com/mcp");
        assert_eq!(
            config.mcp_authorization_servers(),
            ["https://idp.example.com"]
        );
        // So is mcp.audience, whatever the public URL.
        let config = load(&format!(
            "{AGENT_ISSUER}\n[mcp]\nenabled = true\naudience = \"https://stackpass.example.com/mcp\""
        ))
        .unwrap();
        assert_eq!(
            config.mcp_authorization_servers(),
            ["https://idp.example.com"]
        );
        // Backstage accepts only `backstage`: it is no MCP authorization server.
        let error = load(&format!(
            "{AGENT_ISSUER}\n{public}\n[mcp]\nenabled = true\nauthorization_servers = [\"http://localhost:7007/api/auth\"]"
        ))
        .unwrap_err();
        assert!(error.contains("mcp.authorization_servers[0]"), "{error}");
        let error = load(&format!(
            "{public}\n[mcp]\nenabled = true\naudience = \" \""
        ))
        .unwrap_err();
        assert!(error.contains("mcp.audience"), "{error}");
    }
}

/// The stack sources: a source for at least one tool, kinds in the right
/// tables, tag keys each source can hold, and the remote sources' endpoints,
/// tokens and cache timings.
fn stack_problems(stacks: &StacksConfig) -> Vec<ConfigProblem> {
    let mut problems = Vec::new();
    let mut problem = |key: String, message: String| problems.push(ConfigProblem { key, message });
    match (stacks.kind, &stacks.file) {
        (Some(StacksKind::Static), None) => problem(
            "stacks.file".into(),
            "the static stack registry needs a file".into(),
        ),
        (None, Some(_)) => problem(
            "stacks.kind".into(),
            "set kind = \"static\" to use stacks.file".into(),
        ),
        (None, None) if stacks.pulumi.is_none() && stacks.terraform.is_none() => problem(
            "stacks".into(),
            "no stack source: set kind = \"static\" and file, or add a [stacks.pulumi] or [stacks.terraform] table".into(),
        ),
        _ => {}
    }
    for (tool, source) in stacks.tool_sources() {
        let key = |field: &str| format!("stacks.{tool}.{field}");
        let (remote, accepts, service): (_, fn(&str) -> bool, _) = match source {
            StackSourceConfig::Static(_) => continue,
            StackSourceConfig::PulumiCloud(remote) => {
                if tool != "pulumi" {
                    problem(
                        key("kind"),
                        "pulumi-cloud serves pulumi: stacks; use hcp-terraform or static here"
                            .into(),
                    );
                }
                if remote.project_tags.is_some() {
                    problem(
                        key("project_tags"),
                        "only HCP Terraform workspaces inherit tags from a project".into(),
                    );
                }
                (
                    remote,
                    pulumi_cloud::valid_tag_name as fn(&str) -> bool,
                    "Pulumi Cloud",
                )
            }
            StackSourceConfig::HcpTerraform(remote) => {
                if tool != "terraform" {
                    problem(
                        key("kind"),
                        "hcp-terraform serves terraform: workspaces; use pulumi-cloud or static here".into(),
                    );
                }
                for tag in remote.project_tags.iter().flatten() {
                    if !hcp_terraform::valid_tag_key(tag) {
                        problem(
                            key("project_tags"),
                            format!("{tag:?} is not a key HCP Terraform can hold"),
                        );
                    }
                }
                (
                    remote,
                    hcp_terraform::valid_tag_key as fn(&str) -> bool,
                    "HCP Terraform",
                )
            }
        };
        if !accepts(&remote.component_tag) {
            problem(
                key("component_tag"),
                format!(
                    "{:?} is not a tag key {service} accepts (letters, digits, '-', '_', '.', ':'; no '/'), so no stack could name its component; the default is {SOURCE_COMPONENT_TAG:?}",
                    remote.component_tag
                ),
            );
        }
        if !accepts(&stacks.environment_tag) {
            problem(
                "stacks.environment_tag".into(),
                format!(
                    "{:?} is not a tag key {service} accepts, so no {tool} stack could name its environment",
                    stacks.environment_tag
                ),
            );
        }
        if let Some(url) = &remote.url {
            if url.query().is_some() || url.fragment().is_some() || url.cannot_be_a_base() {
                problem(
                    key("url"),
                    "must be a base URL without query or fragment".into(),
                );
            }
            if let Err(e) = crate::http_client::check_scheme(url, remote.insecure_allow_http) {
                problem(
                    key("url"),
                    format!("{e}; use https (with ca_file for a private CA), or set insecure_allow_http = true if you accept that risk"),
                );
            }
        }
        match (&remote.token, &remote.token_file) {
            (Some(_), Some(_)) => problem(key("token"), "set token or token_file, not both".into()),
            (None, None) => problem(
                key("token_file"),
                format!(
                    "{service} needs the broker's own access token: set token_file, or STACKPASS_STACKS__{}__TOKEN",
                    tool.to_uppercase()
                ),
            ),
            _ => {}
        }
        if !remote.trust_public_roots && remote.ca_file.is_none() {
            problem(
                key("trust_public_roots"),
                "false needs a ca_file, or no server could be trusted".into(),
            );
        }
        let within = |d: Duration, min: Duration, max: Duration| d >= min && d <= max;
        if !within(
            remote.timeout,
            Duration::from_secs(1),
            Duration::from_secs(60),
        ) {
            problem(key("timeout"), "must be between 1s and 1m".into());
        }
        if !within(
            remote.cache_ttl,
            Duration::from_secs(1),
            Duration::from_secs(3600),
        ) {
            problem(key("cache_ttl"), "must be between 1s and 1h".into());
        }
        if remote.stale_window > Duration::from_secs(24 * 3600) {
            problem(
                key("stale_window"),
                "must be at most 1d; past it, a stack's tags may have changed hands".into(),
            );
        }
        if remote
            .negative_cache_ttl
            .is_some_and(|n| n > remote.cache_ttl)
        {
            problem(
                key("negative_cache_ttl"),
                "must be at most cache_ttl".into(),
            );
        }
        if remote.cache_capacity == 0 {
            problem(key("cache_capacity"), "must be positive".into());
        }
    }
    problems
}

/// https, or http to a loopback host (a local relay, tests).
fn webhook_url_is_acceptable(text: &str) -> bool {
    let Ok(url) = url::Url::parse(text) else {
        return false;
    };
    match (url.scheme(), url.host()) {
        ("https", Some(_)) => true,
        ("http", Some(url::Host::Domain(domain))) => domain.eq_ignore_ascii_case("localhost"),
        ("http", Some(url::Host::Ipv4(ip))) => ip.is_loopback(),
        ("http", Some(url::Host::Ipv6(ip))) => ip.is_loopback(),
        _ => false,
    }
}

#[cfg(test)]
mod notification_tests {
    use super::webhook_url_is_acceptable;
    use crate::config::tests::{write, MINIMAL};
    use crate::config::Config;

    fn load(notifications: &str) -> Result<Config, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            &format!("{MINIMAL}\n[notifications]\n{notifications}"),
        );
        Config::load(&path).map_err(|e| e.to_string())
    }

    #[test]
    fn notification_timings_have_secure_defaults_and_are_checked() {
        let config = load("webhook_url = \"https://hooks.slack.com/services/T0/B0/x\"").unwrap();
        let n = &config.notifications;
        assert_eq!(n.lease, std::time::Duration::from_secs(60));
        assert_eq!(n.give_up_after, std::time::Duration::from_secs(24 * 3600));

        let err = load("timeout = \"30s\"\nlease = \"45s\"\ngive_up_after = \"60d\"").unwrap_err();
        assert!(
            err.contains("notifications.lease: must be at least twice"),
            "{err}"
        );
        assert!(err.contains("notifications.give_up_after"), "{err}");
    }

    #[test]
    fn a_plain_http_webhook_is_refused_without_printing_it() {
        let err =
            load("webhook_url = \"http://hooks.example.com/services/T0/B0/sekrit\"").unwrap_err();
        assert!(
            err.contains("notifications.webhook_url: must be an https URL"),
            "{err}"
        );
        assert!(!err.contains("sekrit"), "{err}");
    }

    #[test]
    fn webhooks_need_https_except_on_loopback() {
        assert!(webhook_url_is_acceptable(
            "https://hooks.slack.com/services/T0/B0/x"
        ));
        assert!(webhook_url_is_acceptable("http://127.0.0.1:8080/hook"));
        assert!(webhook_url_is_acceptable("http://[::1]:8080/hook"));
        assert!(webhook_url_is_acceptable("http://localhost/hook"));
        assert!(!webhook_url_is_acceptable("http://hooks.example.com/hook"));
        assert!(!webhook_url_is_acceptable("ftp://127.0.0.1/hook"));
        assert!(!webhook_url_is_acceptable("not a url"));
    }
}

#[cfg(test)]
mod stack_source_tests {
    use std::time::Duration;

    use crate::config::tests::{write, MINIMAL};
    use crate::config::{Config, StackSourceConfig};

    /// MINIMAL's catalog and issuer, with `stacks` as the stacks section.
    fn load(stacks: &str) -> Result<Config, String> {
        let dir = tempfile::tempdir().unwrap();
        let base = MINIMAL.replace(
            "[stacks]\n        kind = \"static\"\n        file = \"stacks.toml\"",
            "",
        );
        let path = write(dir.path(), &format!("{base}\n{stacks}"));
        Config::load(&path).map_err(|e| e.to_string())
    }

    #[test]
    fn the_single_static_source_still_loads_with_its_old_component_tag() {
        let config = load("[stacks]\nkind = \"static\"\nfile = \"stacks.toml\"\n").unwrap();
        assert_eq!(config.stacks.component_tag, "backstage.io/component");
        assert!(config.stacks.pulumi.is_none() && config.stacks.terraform.is_none());
    }

    #[test]
    fn per_tool_sources_load_with_defaults_that_every_source_accepts() {
        let config = load(
            r#"
            [stacks.pulumi]
            kind = "pulumi-cloud"
            token_file = "pulumi-token"
            [stacks.terraform]
            kind = "hcp-terraform"
            url = "https://tfe.example.com"
            token = "not-in-files-please"
            cache_ttl = "30s"
            stale_window = "0s"
            "#,
        )
        .unwrap();
        let Some(StackSourceConfig::PulumiCloud(pulumi)) = &config.stacks.pulumi else {
            panic!("{:?}", config.stacks.pulumi)
        };
        assert_eq!(pulumi.component_tag, "backstage-component");
        assert_eq!(pulumi.cache_ttl, Duration::from_secs(60));
        assert_eq!(pulumi.stale_window, Duration::from_secs(900));
        assert_eq!(pulumi.negative_ttl(), Duration::from_secs(10));
        assert!(pulumi.token_file.as_ref().unwrap().is_absolute());
        let Some(StackSourceConfig::HcpTerraform(terraform)) = &config.stacks.terraform else {
            panic!("{:?}", config.stacks.terraform)
        };
        assert_eq!(terraform.stale_window, Duration::ZERO);
        assert_eq!(terraform.negative_ttl(), Duration::from_secs(10));
        assert!(!format!("{terraform:?}").contains("not-in-files-please"));
        // Two requests of 5s each come out of the cloud's share.
        assert_eq!(
            config.cloud_budget(),
            Duration::from_secs(30 - 5 - 10 - 5 - 5)
        );
    }

    #[test]
    fn bad_stack_sources_name_their_keys() {
        let err = load(
            r#"
            [stacks]
            environment_tag = "backstage.io/environment"
            [stacks.pulumi]
            kind = "hcp-terraform"
            url = "http://tfe.example.com"
            component_tag = "backstage.io/component"
            [stacks.terraform]
            kind = "hcp-terraform"
            token = "a"
            token_file = "b"
            project_tags = ["team/owner"]
            cache_ttl = "0s"
            negative_cache_ttl = "1m"
            "#,
        )
        .unwrap_err();
        for key in [
            "stacks.environment_tag",
            "stacks.pulumi.kind",
            "stacks.pulumi.url: http://tfe.example.com/ is plain http",
            "stacks.pulumi.component_tag",
            "stacks.pulumi.token_file",
            "stacks.terraform.token: set token or token_file, not both",
            "stacks.terraform.project_tags",
            "stacks.terraform.cache_ttl",
            "stacks.terraform.negative_cache_ttl",
        ] {
            assert!(err.contains(key), "{key} missing from {err}");
        }
    }

    #[test]
    fn unknown_keys_and_kinds_are_refused() {
        let err = load("[stacks.pulumi]\nkind = \"pulumi-cloud\"\ntoken = \"t\"\nadress = \"x\"\n")
            .unwrap_err();
        assert!(
            err.contains("stacks.pulumi") && err.contains("adress"),
            "{err}"
        );
        let err = load("[stacks.pulumi]\nkind = \"pulumi\"\n").unwrap_err();
        assert!(err.contains("pulumi-cloud"), "{err}");
        let err =
            load("[stacks.pulumi]\nkind = \"static\"\nfile = \"s.toml\"\nproject_tags = []\n")
                .unwrap_err();
        assert!(err.contains("project_tags"), "{err}");
        let err =
            load("[stacks.pulumi]\nkind = \"pulumi-cloud\"\ntoken = \"t\"\nproject_tags = []\n")
                .unwrap_err();
        assert!(err.contains("stacks.pulumi.project_tags"), "{err}");
    }

    #[test]
    fn some_source_is_required() {
        let err = load("[stacks]\n").unwrap_err();
        assert!(err.contains("stacks: no stack source"), "{err}");
        let err = load("[stacks]\nfile = \"stacks.toml\"\n").unwrap_err();
        assert!(err.contains("stacks.kind"), "{err}");
        load("[stacks.terraform]\nkind = \"static\"\nfile = \"stacks.toml\"\n").unwrap();
    }

    #[test]
    fn plain_http_is_for_loopback_unless_allowed() {
        load("[stacks.pulumi]\nkind = \"pulumi-cloud\"\ntoken = \"t\"\nurl = \"http://127.0.0.1:9\"\n")
            .unwrap();
        load("[stacks.pulumi]\nkind = \"pulumi-cloud\"\ntoken = \"t\"\nurl = \"http://pulumi.internal\"\ninsecure_allow_http = true\n")
            .unwrap();
    }
}

#[cfg(test)]
mod limits_tests {
    use crate::config::tests::{write, MINIMAL};
    use crate::config::Config;

    fn load(extra: &str) -> Result<Config, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), &format!("{MINIMAL}\n{extra}"));
        Config::load(&path).map_err(|e| e.to_string())
    }

    #[test]
    fn limits_are_on_by_default_and_each_can_be_turned_off() {
        let limits = load("").unwrap().limits;
        assert_eq!(limits.issuance_per_principal_per_minute, 120);
        assert_eq!(limits.issuance_per_principal_burst, 60);
        assert_eq!(limits.issuance_per_address_per_minute, 600);
        assert_eq!(limits.auth_failures_per_address_per_minute, 30);
        assert_eq!(limits.auth_failures_per_address_burst, 10);
        // A rate of 0 turns one limit off; its burst is then not needed.
        let limits = load(
            "[limits]\nissuance_per_principal_per_minute = 0\nissuance_per_principal_burst = 0",
        )
        .unwrap()
        .limits;
        assert_eq!(limits.issuance_per_principal_per_minute, 0);
        assert_eq!(limits.issuance_per_address_per_minute, 600);
    }

    #[test]
    fn a_limit_without_a_burst_and_unknown_keys_are_named() {
        let error = load("[limits]\nauth_failures_per_address_burst = 0").unwrap_err();
        assert!(
            error.contains("limits.auth_failures_per_address_burst: must be at least 1"),
            "{error}"
        );
        let error = load("[limits]\nmax_tracked_keys = 5").unwrap_err();
        assert!(error.contains("limits.max_tracked_keys"), "{error}");
        let error = load("[limits]\nissuance_per_minute = 5").unwrap_err();
        assert!(error.contains("issuance_per_minute"), "{error}");
    }

    #[test]
    fn tls_needs_both_files_and_a_sane_reload_interval() {
        let config =
            load("[server.tls]\ncert_file = \"tls/cert.pem\"\nkey_file = \"tls/key.pem\"").unwrap();
        let tls = config.server.tls.unwrap();
        assert!(
            tls.cert_file.is_absolute(),
            "resolved beside the config file"
        );
        assert_eq!(tls.reload_interval, std::time::Duration::from_secs(5));
        let error = load("[server.tls]\ncert_file = \"cert.pem\"").unwrap_err();
        assert!(error.contains("key_file"), "{error}");
        let error = load(
            "[server.tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\nreload_interval = \"2h\"",
        )
        .unwrap_err();
        assert!(error.contains("server.tls.reload_interval"), "{error}");
    }
}

#[cfg(test)]
mod server_tests {
    use std::time::Duration;

    use crate::config::tests::{write, MINIMAL};
    use crate::config::Config;

    fn load(server: &str) -> Result<Config, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), &format!("[server]\n{server}\n{MINIMAL}"));
        Config::load(&path).map_err(|e| e.to_string())
    }

    #[test]
    fn the_shutdown_delay_defaults_to_none_and_is_bounded() {
        assert_eq!(load("").unwrap().server.shutdown_delay, Duration::ZERO);
        assert_eq!(
            load("shutdown_delay = \"5s\"")
                .unwrap()
                .server
                .shutdown_delay,
            Duration::from_secs(5)
        );
        let err = load("shutdown_delay = \"10m\"").unwrap_err();
        assert!(
            err.contains("server.shutdown_delay: must be at most 5m"),
            "{err}"
        );
        let err = load("shutdown_delay = \"soon\"").unwrap_err();
        assert!(err.contains("shutdown_delay"), "{err}");
    }
}
