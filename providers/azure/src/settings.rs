//! `[providers.azure]`: the Entra authority, the audience federated
//! credentials expect, the default scope, and the call timeout.

use std::time::Duration;

use serde::Deserialize;
use stackpass_provider::{check_endpoint, parse_settings, SettingProblem, SettingsContext};

/// What Entra federated identity credentials list as their audience.
pub const DEFAULT_AUDIENCE: &str = "api://AzureADTokenExchange";
pub const DEFAULT_SCOPE: &str = "https://management.azure.com/.default";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureSettings {
    /// The Entra authority (sovereign clouds: https://login.microsoftonline.us, …).
    #[serde(default = "default_authority")]
    pub authority_host: String,
    #[serde(default = "default_audience")]
    pub audience: String,
    /// The resource's `.default` scope tokens are asked for.
    #[serde(default = "default_scope")]
    pub scope: String,
    /// Upper bound for each call to Entra.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_authority() -> String {
    "https://login.microsoftonline.com".into()
}

fn default_audience() -> String {
    DEFAULT_AUDIENCE.into()
}

fn default_scope() -> String {
    DEFAULT_SCOPE.into()
}

fn default_timeout() -> Duration {
    Duration::from_secs(15)
}

impl AzureSettings {
    /// Parses and checks the table; every problem at once.
    pub fn parse(
        table: serde_json::Value,
        context: &SettingsContext,
    ) -> Result<Self, Vec<SettingProblem>> {
        let mut settings: AzureSettings = parse_settings(table)?;
        let mut problems = Vec::new();
        check_endpoint(
            "authority_host",
            &mut settings.authority_host,
            &mut problems,
        );
        if settings.audience.is_empty() {
            problems.push(SettingProblem::new("audience", "must not be empty"));
        }
        if !settings.scope.ends_with("/.default") {
            problems.push(SettingProblem::new(
                "scope",
                format!(
                    "{:?} must be a resource's .default scope (client credentials take no other), e.g. {DEFAULT_SCOPE}",
                    settings.scope
                ),
            ));
        }
        if settings.timeout > context.cloud_budget {
            problems.push(SettingProblem::new(
                "timeout",
                format!("must fit in the cloud call's share of server.request_timeout ({}s: request_timeout minus identity.fetch_timeout, catalog.timeout and audit.busy_timeout); lower it or raise server.request_timeout", context.cloud_budget.as_secs()),
            ));
        }
        if problems.is_empty() {
            Ok(settings)
        } else {
            Err(problems)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> SettingsContext {
        SettingsContext {
            cloud_budget: Duration::from_secs(15),
        }
    }

    #[test]
    fn an_empty_table_takes_the_public_cloud() {
        let settings = AzureSettings::parse(serde_json::json!({}), &context()).unwrap();
        assert_eq!(settings.authority_host, "https://login.microsoftonline.com");
        assert_eq!(settings.audience, DEFAULT_AUDIENCE);
        assert_eq!(settings.scope, DEFAULT_SCOPE);
    }

    #[test]
    fn problems_name_their_keys() {
        let problems = AzureSettings::parse(
            serde_json::json!({ "authority_host": "nope", "scope": "https://graph.microsoft.com/User.Read", "timeout": "1m" }),
            &context(),
        )
        .unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["authority_host", "scope", "timeout"]);
    }
}
