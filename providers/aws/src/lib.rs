//! The AWS provider: exchanges a stackpass subject token for temporary
//! credentials with STS `AssumeRoleWithWebIdentity`.
//!
//! Everything AWS-specific lives in this crate: the `[providers.aws]` table
//! (`settings`), role ARNs as targets (`role_arn`), the session name, source
//! identity and principal tags the subject token carries (`claims`), the STS
//! call (`sts`) and the `env` / `credential-process` output formats (`formats`).

mod child;
mod claims;
mod formats;
mod role_arn;
mod settings;
mod sts;
mod trust;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use stackpass_provider::{
    CloudProvider, Credential, ExchangeRequest, ExchangedToken, IssuanceFacts, Limits,
    OutputFormat, ProviderError, ProviderFactory, ProviderKind, ReceivedCredential, SettingProblem,
    SettingsContext, SubjectClaims, Target, TrustContext,
};

pub use role_arn::RoleArn;
pub use settings::AwsSettings;

pub const KIND: ProviderKind = ProviderKind::from_static("aws");

/// STS's own bounds for a role session; 15 minutes when none is asked for.
const LIMITS: Limits = Limits {
    min_duration: Duration::from_secs(900),
    max_duration: Duration::from_secs(43_200),
    default_duration: Duration::from_secs(900),
};

/// The registry's entry for AWS.
pub struct Aws;

impl ProviderFactory for Aws {
    fn kind(&self) -> ProviderKind {
        KIND
    }

    fn configure(
        &self,
        table: serde_json::Value,
        context: &SettingsContext,
    ) -> Result<Arc<dyn CloudProvider>, Vec<SettingProblem>> {
        let settings = AwsSettings::parse(table, context)?;
        Ok(Arc::new(AwsProvider::new(&settings)))
    }

    fn output_formats(&self) -> &'static [OutputFormat] {
        formats::FORMATS
    }

    fn render(&self, format: &str, credential: &ReceivedCredential) -> Result<String, String> {
        formats::render(format, credential)
    }

    fn child_delivery(&self) -> Option<&'static dyn stackpass_provider::ChildDelivery> {
        Some(&child::ContainerCredentials)
    }
}

pub struct AwsProvider {
    client: aws_sdk_sts::Client,
    audience: String,
}

impl AwsProvider {
    pub fn new(settings: &AwsSettings) -> Self {
        AwsProvider {
            client: sts::client(settings),
            audience: settings.audience.clone(),
        }
    }
}

#[async_trait]
impl CloudProvider for AwsProvider {
    fn kind(&self) -> ProviderKind {
        KIND
    }

    fn recall_hint(&self) -> &'static str {
        "STS sessions cannot be recalled one by one; to end them early, revoke the role's older sessions (IAM console: the role's \"Revoke active sessions\", an inline deny on aws:TokenIssueTime), which also ends everyone else's sessions on that role"
    }

    fn limits(&self) -> Limits {
        LIMITS
    }

    fn target_syntax(&self) -> &'static str {
        role_arn::SYNTAX
    }

    fn check_target_pattern(&self, pattern: &str) -> Result<(), String> {
        role_arn::check_pattern(pattern)
    }

    fn parse_target(&self, text: &str) -> Result<Target, String> {
        let arn = RoleArn::parse(text)?;
        Ok(Target::new(text, arn))
    }

    fn check_session_policy(&self, sample: &str) -> Result<(), String> {
        match serde_json::from_str::<serde_json::Value>(sample) {
            Ok(value) if value.is_object() => Ok(()),
            _ => Err("session_policy must be a JSON policy document (an object)".into()),
        }
    }

    fn check_session_tag_key(&self, key: &str) -> Result<(), String> {
        claims::check_tag_key(key)
    }

    fn credential_token_type(&self) -> Option<&'static str> {
        Some(formats::CREDENTIALS_TOKEN_TYPE)
    }

    fn exchanged_token(&self, credential: &Credential) -> Option<ExchangedToken> {
        formats::exchanged_token(credential)
    }

    /// For `AWS_ROLE_ARN` next to `AWS_WEB_IDENTITY_TOKEN_FILE`.
    fn federation_fields(&self, target: &Target) -> Vec<(&'static str, Option<String>)> {
        vec![("role_arn", Some(target.to_string()))]
    }

    fn trust_setup(&self, context: &TrustContext<'_>) -> String {
        trust::setup(context, &self.audience)
    }

    fn claims_supported(&self) -> &'static [&'static str] {
        &[claims::SOURCE_IDENTITY_CLAIM, claims::TAGS_CLAIM]
    }

    fn subject_claims(&self, _target: &Target, facts: &IssuanceFacts) -> SubjectClaims {
        SubjectClaims {
            audience: self.audience.clone(),
            claims: claims::subject_claims(facts),
            ..SubjectClaims::default()
        }
    }

    async fn exchange(&self, request: ExchangeRequest) -> Result<Credential, ProviderError> {
        sts::assume_role(&self.client, request).await
    }
}
