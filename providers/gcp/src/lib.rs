//! The GCP provider: workload identity federation, then (when the target names
//! one) service-account impersonation.
//!
//! Everything GCP-specific lives in this crate: the `[providers.gcp]` table
//! (`settings`), pool providers and service accounts as targets (`target`),
//! the 127-byte subject Google maps (`subject`), the STS and IAM Credentials
//! calls (`exchange`) and the `env` / `gcp-executable` output formats
//! (`formats`).

mod child;
mod exchange;
mod formats;
mod settings;
mod subject;
mod target;
mod trust;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use stackpass_provider::{
    CloudProvider, Credential, ExchangeRequest, ExchangedToken, IssuanceFacts, Limits, Mode,
    OutputFormat, ProviderError, ProviderFactory, ProviderKind, ReceivedCredential, SettingProblem,
    SettingsContext, SubjectClaims, Target, TrustContext,
};

pub use settings::GcpSettings;
pub use subject::{subject_for, MAX_SUBJECT_BYTES};
pub use target::GcpTarget;

pub const KIND: ProviderKind = ProviderKind::from_static("gcp");

/// The registry's entry for GCP.
pub struct Gcp;

impl ProviderFactory for Gcp {
    fn kind(&self) -> ProviderKind {
        KIND
    }

    fn configure(
        &self,
        table: serde_json::Value,
        context: &SettingsContext,
    ) -> Result<Arc<dyn CloudProvider>, Vec<SettingProblem>> {
        let settings = GcpSettings::parse(table, context)?;
        Ok(Arc::new(GcpProvider {
            exchanger: exchange::Exchanger::new(settings),
        }))
    }

    fn output_formats(&self) -> &'static [OutputFormat] {
        formats::FORMATS
    }

    fn render(&self, format: &str, credential: &ReceivedCredential) -> Result<String, String> {
        formats::render(format, credential)
    }

    fn child_delivery(&self) -> Option<&'static dyn stackpass_provider::ChildDelivery> {
        Some(&child::UrlSourcedAccount)
    }

    fn render_failure(&self, format: &str, message: &str) -> Option<String> {
        formats::render_failure(format, message)
    }
}

pub struct GcpProvider {
    exchanger: exchange::Exchanger,
}

impl GcpProvider {
    fn target<'a>(&self, target: &'a Target) -> Result<&'a GcpTarget, ProviderError> {
        target
            .parsed::<GcpTarget>()
            .ok_or_else(|| ProviderError::InvalidResponse {
                provider: KIND,
                message: format!("{target} was not parsed as a GCP target"),
            })
    }
}

#[async_trait]
impl CloudProvider for GcpProvider {
    fn kind(&self) -> ProviderKind {
        KIND
    }

    fn recall_hint(&self) -> &'static str {
        "Google access tokens cannot be revoked one by one; disabling the service account rejects its existing tokens at once (for every user of it) until it is enabled again"
    }

    /// Impersonated tokens last from minutes up to the organisation's cap.
    fn limits(&self) -> Limits {
        let max_duration = self.exchanger.settings().max_lifetime;
        Limits {
            min_duration: Duration::from_secs(300),
            max_duration,
            default_duration: Duration::from_secs(900).min(max_duration),
        }
    }

    fn target_syntax(&self) -> &'static str {
        target::SYNTAX
    }

    fn check_target_pattern(&self, pattern: &str) -> Result<(), String> {
        target::check_pattern(pattern)
    }

    fn parse_target(&self, text: &str) -> Result<Target, String> {
        Ok(Target::new(text, GcpTarget::parse(text)?))
    }

    /// Narrowing only: each scope is one the provider is configured with, or
    /// the read-only variant of a configured one (`cloud-platform.read-only`
    /// under `cloud-platform`).
    fn check_scopes(&self, scopes: &[String]) -> Result<(), String> {
        narrower_scopes(&self.exchanger.settings().scopes, scopes)
    }

    fn trust_setup(&self, context: &TrustContext<'_>) -> String {
        trust::setup(context, self.exchanger.settings())
    }

    fn subject_claims(&self, target: &Target, facts: &IssuanceFacts) -> SubjectClaims {
        SubjectClaims {
            audience: target
                .parsed::<GcpTarget>()
                .map(GcpTarget::token_audience)
                .unwrap_or_default(),
            subject: Some(subject_for(&facts.stack)),
            claims: serde_json::Map::new(),
        }
    }

    fn check_delivery(
        &self,
        target: &Target,
        mode: Mode,
        _duration: Duration,
    ) -> Result<(), String> {
        let names_account = target
            .parsed::<GcpTarget>()
            .is_some_and(|t| t.service_account.is_some());
        if mode == Mode::Credentials && !names_account {
            return Err(format!(
                "{target} names no service account, and Google STS alone decides a federated token's lifetime (an hour), so stackpass cannot cap it; add /serviceAccounts/EMAIL to the rule's target, or ask for mode federation"
            ));
        }
        Ok(())
    }

    fn credential_token_type(&self) -> Option<&'static str> {
        Some("urn:stackpass:params:oauth:token-type:gcp-access-token")
    }

    /// The OAuth access token itself (a bearer token for Google's APIs).
    fn exchanged_token(&self, credential: &Credential) -> Option<ExchangedToken> {
        ExchangedToken::bearer_field(credential, "access_token")
    }

    fn federation_fields(&self, target: &Target) -> Vec<(&'static str, Option<String>)> {
        let Some(target) = target.parsed::<GcpTarget>() else {
            return Vec::new();
        };
        let settings = self.exchanger.settings();
        let endpoint = &settings.iam_credentials_endpoint;
        vec![
            ("sts_audience", Some(target.sts_audience())),
            (
                "token_url",
                Some(format!("{}/v1/token", settings.sts_endpoint)),
            ),
            ("service_account", target.service_account.clone()),
            (
                "service_account_impersonation_url",
                target.service_account.as_ref().map(|account| {
                    format!(
                        "{endpoint}/v1/projects/-/serviceAccounts/{account}:generateAccessToken"
                    )
                }),
            ),
        ]
    }

    async fn exchange(&self, request: ExchangeRequest) -> Result<Credential, ProviderError> {
        let target = self.target(&request.target)?;
        let configured = &self.exchanger.settings().scopes;
        let scopes = match &request.scopes {
            // Checked when the policy loaded; checked again here, because a
            // provider never widens on a caller's word.
            Some(scopes) => {
                narrower_scopes(configured, scopes).map_err(|message| {
                    ProviderError::InvalidResponse {
                        provider: KIND,
                        message,
                    }
                })?;
                scopes.clone()
            }
            None => configured.clone(),
        };
        let federated = self
            .exchanger
            .federated_token(target, &request.subject_token, &scopes)
            .await?;
        let Some(account) = &target.service_account else {
            let principal = format!(
                "principal://iam.googleapis.com/projects/{}/locations/global/workloadIdentityPools/{}/subject/{}",
                target.project_number,
                target.pool,
                subject_for(&request.facts.stack)
            );
            return Ok(Credential::new(principal, federated.expires_at)
                .secret("access_token", federated.access_token)
                .public("token_type", Some("Bearer".into())));
        };
        let token = self
            .exchanger
            .impersonate(account, &federated.access_token, request.duration, &scopes)
            .await?;
        Ok(Credential::new(account.clone(), token.expires_at)
            .secret("access_token", token.access_token)
            .public("token_type", Some("Bearer".into()))
            .public("service_account", Some(account.clone()))
            .public("project_id", target.project_id().map(str::to_owned)))
    }
}

/// Whether `asked` narrows `configured`: every scope configured, or the
/// read-only variant of a configured one.
fn narrower_scopes(configured: &[String], asked: &[String]) -> Result<(), String> {
    for scope in asked {
        let covered = configured.iter().any(|c| {
            c == scope
                || scope
                    .strip_suffix(".read-only")
                    .is_some_and(|base| base == c)
        });
        if !covered {
            return Err(format!(
                "{scope:?} is not one of the scopes [providers.gcp] asks for ({}) nor a read-only variant of one, so it could widen the token",
                configured.join(", ")
            ));
        }
    }
    if asked.is_empty() {
        return Err("name at least one scope".into());
    }
    Ok(())
}

#[cfg(test)]
mod scope_tests {
    use super::narrower_scopes;

    #[test]
    fn scopes_only_narrow() {
        let configured = ["https://www.googleapis.com/auth/cloud-platform".to_owned()];
        let ok = |s: &str| narrower_scopes(&configured, &[s.to_owned()]);
        assert!(ok("https://www.googleapis.com/auth/cloud-platform").is_ok());
        assert!(ok("https://www.googleapis.com/auth/cloud-platform.read-only").is_ok());
        assert!(ok("https://www.googleapis.com/auth/devstorage.full_control").is_err());
        let read_only = ["https://www.googleapis.com/auth/cloud-platform.read-only".to_owned()];
        assert!(narrower_scopes(
            &read_only,
            &["https://www.googleapis.com/auth/cloud-platform".to_owned()]
        )
        .is_err());
        assert!(narrower_scopes(&configured, &[]).is_err());
    }
}
