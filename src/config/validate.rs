//! Checks a loaded configuration as a whole and reports every problem at
//! once, each naming its key; provider tables are checked by their providers.

use std::collections::HashSet;
use std::time::Duration;

use super::{Config, ConfigProblem, IssuerKind};
use crate::config::CatalogKind;
use crate::database::{is_postgres_url, redact};
use crate::registry::Providers;

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
