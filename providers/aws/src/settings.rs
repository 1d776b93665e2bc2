//! `[providers.aws]`: region, STS endpoint, audience, timeout and attempts.

use std::time::Duration;

use serde::Deserialize;
use stackpass_provider::{check_endpoint, parse_settings, SettingProblem, SettingsContext};

/// The audience AWS expects in web identity tokens for an IAM OIDC provider.
pub const DEFAULT_AUDIENCE: &str = "sts.amazonaws.com";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsSettings {
    #[serde(default = "default_region")]
    pub region: String,
    /// Overrides the STS endpoint (VPC endpoints, FIPS endpoints, or an emulator).
    pub endpoint_url: Option<String>,
    #[serde(default = "default_audience")]
    pub audience: String,
    /// Upper bound for the whole STS call, the SDK's retries included.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
}

fn default_region() -> String {
    "us-east-1".into()
}

fn default_audience() -> String {
    DEFAULT_AUDIENCE.into()
}

fn default_timeout() -> Duration {
    Duration::from_secs(15)
}

fn default_max_attempts() -> u32 {
    3
}

impl AwsSettings {
    /// Parses and checks the table; every problem at once.
    pub fn parse(
        table: serde_json::Value,
        context: &SettingsContext,
    ) -> Result<Self, Vec<SettingProblem>> {
        let mut settings: AwsSettings = parse_settings(table)?;
        let mut problems = Vec::new();
        if settings.max_attempts == 0 {
            problems.push(SettingProblem::new("max_attempts", "must be at least 1"));
        }
        if settings.timeout > context.cloud_budget {
            problems.push(SettingProblem::new(
                "timeout",
                format!("must fit in the cloud call's share of server.request_timeout ({}s: request_timeout minus identity.fetch_timeout, catalog.timeout and audit.busy_timeout); lower it or raise server.request_timeout", context.cloud_budget.as_secs()),
            ));
        }
        if settings.audience.is_empty() {
            problems.push(SettingProblem::new("audience", "must not be empty"));
        }
        if settings.region.is_empty() {
            problems.push(SettingProblem::new("region", "must not be empty"));
        }
        if let Some(endpoint) = &mut settings.endpoint_url {
            check_endpoint("endpoint_url", endpoint, &mut problems);
        }
        if problems.is_empty() {
            Ok(settings)
        } else {
            Err(problems)
        }
    }

    /// How long to wait for a connection: never longer than the whole call.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(3).min(self.timeout)
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
    fn an_empty_table_takes_the_defaults() {
        let settings = AwsSettings::parse(serde_json::json!({}), &context()).unwrap();
        assert_eq!(settings.region, "us-east-1");
        assert_eq!(settings.audience, DEFAULT_AUDIENCE);
        assert_eq!(settings.max_attempts, 3);
    }

    #[test]
    fn problems_name_their_keys() {
        let problems = AwsSettings::parse(
            serde_json::json!({ "max_attempts": 0, "timeout": "1m", "endpoint_url": "ftp://x" }),
            &context(),
        )
        .unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["max_attempts", "timeout", "endpoint_url"]);
    }

    #[test]
    fn endpoints_are_https_except_to_loopback() {
        let endpoint = |url: &str| {
            AwsSettings::parse(serde_json::json!({ "endpoint_url": url }), &context())
                .map(|s| s.endpoint_url.unwrap())
        };
        assert_eq!(
            endpoint("https://sts.eu-west-1.amazonaws.com/").unwrap(),
            "https://sts.eu-west-1.amazonaws.com"
        );
        assert_eq!(
            endpoint("http://127.0.0.1:5000").unwrap(),
            "http://127.0.0.1:5000"
        );
        assert_eq!(
            endpoint("http://localhost:5000").unwrap(),
            "http://localhost:5000"
        );
        let refused = endpoint("http://sts.internal.example.com").unwrap_err();
        assert!(refused[0].message.contains("use https"), "{refused:?}");
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let problems = AwsSettings::parse(serde_json::json!({ "regoin": "eu-west-1" }), &context())
            .unwrap_err();
        assert_eq!(problems[0].key, "regoin");
        assert!(
            problems[0].message.contains("unknown field"),
            "{problems:?}"
        );
    }
}
