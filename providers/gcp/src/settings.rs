//! `[providers.gcp]`: Google's endpoints, the OAuth scopes tokens carry, the
//! longest access token the organisation allows, and the call timeout.

use std::time::Duration;

use serde::Deserialize;
use stackpass_provider::{check_endpoint, parse_settings, SettingProblem, SettingsContext};

pub const DEFAULT_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// `generateAccessToken` refuses more than 1 hour unless the organisation
/// policy `iam.allowServiceAccountCredentialLifetimeExtension` allows 12.
const EXTENDED_LIFETIME: Duration = Duration::from_secs(12 * 3600);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcpSettings {
    /// Google's Security Token Service (private or restricted endpoints, or a double).
    #[serde(default = "default_sts")]
    pub sts_endpoint: String,
    /// The IAM Service Account Credentials API.
    #[serde(default = "default_iam_credentials")]
    pub iam_credentials_endpoint: String,
    /// OAuth scopes of the tokens stackpass gets.
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// The longest impersonated token: 1h, or up to 12h where the organisation
    /// policy extends it. Rules asking for longer are refused when policy loads.
    #[serde(default = "default_max_lifetime", with = "humantime_serde")]
    pub max_lifetime: Duration,
    /// Upper bound for each call to Google.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_sts() -> String {
    "https://sts.googleapis.com".into()
}

fn default_iam_credentials() -> String {
    "https://iamcredentials.googleapis.com".into()
}

fn default_scopes() -> Vec<String> {
    vec![DEFAULT_SCOPE.into()]
}

fn default_max_lifetime() -> Duration {
    Duration::from_secs(3600)
}

fn default_timeout() -> Duration {
    Duration::from_secs(15)
}

impl GcpSettings {
    /// Parses and checks the table; every problem at once.
    pub fn parse(
        table: serde_json::Value,
        context: &SettingsContext,
    ) -> Result<Self, Vec<SettingProblem>> {
        let mut settings: GcpSettings = parse_settings(table)?;
        let mut problems = Vec::new();
        for (key, endpoint) in [
            ("sts_endpoint", &mut settings.sts_endpoint),
            (
                "iam_credentials_endpoint",
                &mut settings.iam_credentials_endpoint,
            ),
        ] {
            check_endpoint(key, endpoint, &mut problems);
        }
        if settings.scopes.is_empty() {
            problems.push(SettingProblem::new(
                "scopes",
                format!("name at least one OAuth scope, e.g. {DEFAULT_SCOPE}"),
            ));
        }
        if let Some(bad) = settings.scopes.iter().find(|s| !s.starts_with("https://")) {
            problems.push(SettingProblem::new(
                "scopes",
                format!("{bad:?} is not an OAuth scope URL (https://www.googleapis.com/auth/…)"),
            ));
        }
        if settings.max_lifetime > EXTENDED_LIFETIME
            || settings.max_lifetime < Duration::from_secs(600)
        {
            problems.push(SettingProblem::new(
                "max_lifetime",
                "must be between 10m and 12h (above 1h only where the organisation policy iam.allowServiceAccountCredentialLifetimeExtension allows it)",
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
    fn an_empty_table_takes_googles_endpoints() {
        let settings = GcpSettings::parse(serde_json::json!({}), &context()).unwrap();
        assert_eq!(settings.sts_endpoint, "https://sts.googleapis.com");
        assert_eq!(settings.scopes, [DEFAULT_SCOPE]);
        assert_eq!(settings.max_lifetime, Duration::from_secs(3600));
    }

    #[test]
    fn problems_name_their_keys() {
        let problems = GcpSettings::parse(
            serde_json::json!({ "sts_endpoint": "ftp://x", "scopes": [], "max_lifetime": "13h", "timeout": "1m" }),
            &context(),
        )
        .unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["sts_endpoint", "scopes", "max_lifetime", "timeout"]);
    }
}
