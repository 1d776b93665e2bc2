//! `stackpass setup <provider>`: what a cloud must be told to trust this
//! broker, filled in from the configuration (issuer URL, provider settings)
//! and from the targets its rules name. The text comes from the provider's
//! crate; this module only gathers what it needs.

use serde_json::json;
use stackpass_provider::{ProviderKind, TrustContext};

use super::CliError;
use crate::config::Config;
use crate::{registry, startup};

pub fn trust_setup(config: &Config, kind: &str) -> Result<String, CliError> {
    if config.server.public_url.is_none() {
        return Err(CliError::new(
            format!(
                "server.public_url is not set, so the issuer would be {}, which no cloud can reach",
                config.issuer_url()
            ),
            "set server.public_url (or STACKPASS_SERVER__PUBLIC_URL) to the HTTPS URL clouds fetch /.well-known/openid-configuration from",
        ));
    }
    let factory = registry::factory(kind).ok_or_else(|| {
        CliError::new(
            format!("this stackpass build has no {kind} provider"),
            format!("use one of: {}", registry::known_kinds()),
        )
    })?;
    let kind = ProviderKind::parse(kind).map_err(|e| CliError::plain(e.to_string()))?;
    let providers = config.providers().map_err(|e| {
        CliError::new(
            e.to_string(),
            "fix the configuration; `stackpass config check` shows every problem",
        )
    })?;
    let (provider, targets) = match providers.lookup(&kind) {
        Ok(provider) => {
            let rules = startup::load_policy(config, &providers).map_err(|e| {
                CliError::new(
                    e.to_string(),
                    "fix the policy; `stackpass config check` shows every problem",
                )
            })?;
            let mut targets: Vec<String> = rules
                .rules
                .iter()
                .filter(|rule| rule.provider == kind)
                .filter_map(|rule| rule.target.as_ref())
                .map(|target| target.template.source().to_owned())
                .collect();
            targets.dedup();
            (provider.clone(), targets)
        }
        // Not configured yet: the cloud's defaults, and placeholders for targets.
        Err(_) => {
            let provider = factory
                .configure(json!({}), &config.settings_context())
                .map_err(|_| CliError::plain(format!("{kind} has no usable defaults")))?;
            (provider, Vec::new())
        }
    };
    let issuer_url = config.issuer_url();
    Ok(provider.trust_setup(&TrustContext {
        issuer_url: &issuer_url,
        targets: &targets,
    }))
}
