//! The Azure provider: Entra workload identity federation. stackpass's
//! RS256 subject token is the `client_assertion` of an app registration's
//! client-credentials request; Entra trusts it through a federated identity
//! credential that names this broker's issuer, a subject and the audience.
//!
//! Everything Azure-specific lives in this crate: the `[providers.azure]`
//! table (`settings`), app registrations and subjects as targets (`target`),
//! the Entra call (`exchange`) and the `env` / `azure-oidc` output formats
//! (`formats`).

mod child;
mod exchange;
mod formats;
mod settings;
mod target;
mod trust;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use stackpass_provider::{
    CloudProvider, Credential, ExchangeRequest, ExchangedToken, IssuanceFacts, Limits, Mode,
    OutputFormat, ProviderError, ProviderFactory, ProviderKind, ReceivedCredential, SettingProblem,
    SettingsContext, SigningAlgorithm, SubjectClaims, Target, TrustContext,
};

pub use settings::AzureSettings;
pub use target::AzureTarget;

pub const KIND: ProviderKind = ProviderKind::from_static("azure");

/// Entra gives access tokens a lifetime of its own choosing: 60 to 90
/// minutes unless a token lifetime policy says otherwise.
const ENTRA_TOKEN_LIFETIME: Duration = Duration::from_secs(90 * 60);

/// The registry's entry for Azure.
pub struct Azure;

impl ProviderFactory for Azure {
    fn kind(&self) -> ProviderKind {
        KIND
    }

    fn configure(
        &self,
        table: serde_json::Value,
        context: &SettingsContext,
    ) -> Result<Arc<dyn CloudProvider>, Vec<SettingProblem>> {
        let settings = AzureSettings::parse(table, context)?;
        Ok(Arc::new(AzureProvider {
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
        Some(&child::OidcRequestUrl)
    }
}

pub struct AzureProvider {
    exchanger: exchange::Exchanger,
}

#[async_trait]
impl CloudProvider for AzureProvider {
    fn kind(&self) -> ProviderKind {
        KIND
    }

    fn recall_hint(&self) -> &'static str {
        "Entra access tokens cannot be revoked one by one; removing the application's role assignments stops what they can do (Azure applies such changes within minutes), and removing its federated credential stops further exchanges of issued subject tokens"
    }

    /// Assertions from 5 minutes (federation mode) to 12 hours; credentials
    /// mode needs at least Entra's own token lifetime (see `check_delivery`).
    fn limits(&self) -> Limits {
        Limits {
            min_duration: Duration::from_secs(300),
            max_duration: Duration::from_secs(12 * 3600),
            default_duration: ENTRA_TOKEN_LIFETIME,
        }
    }

    fn target_syntax(&self) -> &'static str {
        target::SYNTAX
    }

    fn check_target_pattern(&self, pattern: &str) -> Result<(), String> {
        target::check_pattern(pattern)
    }

    fn parse_target(&self, text: &str) -> Result<Target, String> {
        Ok(Target::new(text, AzureTarget::parse(text)?))
    }

    /// Entra documents RS256 only for federated issuers.
    fn signing_algorithm(&self) -> SigningAlgorithm {
        SigningAlgorithm::Rs256
    }

    fn trust_setup(&self, context: &TrustContext<'_>) -> String {
        trust::setup(context, &self.exchanger.settings().audience)
    }

    fn subject_claims(&self, target: &Target, _facts: &IssuanceFacts) -> SubjectClaims {
        SubjectClaims {
            audience: self.exchanger.settings().audience.clone(),
            subject: target.parsed::<AzureTarget>().map(|t| t.subject.clone()),
            claims: serde_json::Map::new(),
        }
    }

    fn check_delivery(
        &self,
        _target: &Target,
        mode: Mode,
        duration: Duration,
    ) -> Result<(), String> {
        if mode == Mode::Credentials && duration < ENTRA_TOKEN_LIFETIME {
            return Err(format!(
                "Entra decides access-token lifetimes itself (60 to 90 minutes), so a grant of {}s cannot be honoured in credentials mode; ask for --duration 90m under a rule whose max_duration allows it, or use mode federation",
                duration.as_secs()
            ));
        }
        Ok(())
    }

    fn credential_token_type(&self) -> Option<&'static str> {
        Some("urn:stackpass:params:oauth:token-type:azure-access-token")
    }

    /// The Entra access token itself (a bearer token for the configured scope).
    fn exchanged_token(&self, credential: &Credential) -> Option<ExchangedToken> {
        ExchangedToken::bearer_field(credential, "access_token")
    }

    fn federation_fields(&self, target: &Target) -> Vec<(&'static str, Option<String>)> {
        let Some(target) = target.parsed::<AzureTarget>() else {
            return Vec::new();
        };
        vec![
            ("tenant_id", Some(target.tenant.clone())),
            ("client_id", Some(target.client_id.clone())),
            ("subscription_id", target.subscription.clone()),
        ]
    }

    /// Client-credentials tokens take exactly one resource's `.default`
    /// scope, so there is nothing narrower to ask for: an agent entry can pin
    /// the configured resource, never move the token to another.
    fn check_scopes(&self, scopes: &[String]) -> Result<(), String> {
        let configured = &self.exchanger.settings().scope;
        match scopes {
            [one] if one == configured => Ok(()),
            _ => Err(format!(
                "Entra client-credentials tokens take one resource's .default scope; only the configured {configured:?} can be named (another resource would widen, not narrow)"
            )),
        }
    }

    async fn exchange(&self, request: ExchangeRequest) -> Result<Credential, ProviderError> {
        let target = request.target.parsed::<AzureTarget>().ok_or_else(|| {
            ProviderError::InvalidResponse {
                provider: KIND,
                message: format!("{} was not parsed as an Azure target", request.target),
            }
        })?;
        let token = self
            .exchanger
            .access_token(target, &request.subject_token)
            .await?;
        Ok(Credential::new(target.client_id.clone(), token.expires_at)
            .secret("access_token", token.access_token)
            .public("token_type", Some("Bearer".into()))
            .public("tenant_id", Some(target.tenant.clone()))
            .public("client_id", Some(target.client_id.clone()))
            .public("subscription_id", target.subscription.clone())
            .public("scope", Some(self.exchanger.settings().scope.clone())))
    }
}
