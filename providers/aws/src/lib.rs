//! The AWS provider: exchanges a stackpass subject token for temporary credentials
//! with STS `AssumeRoleWithWebIdentity`.
//!
//! That call is authenticated by the web identity token alone, so stackpass needs
//! no AWS credentials of its own; the client is built with `no_credentials()` and
//! the SDK sends the request unsigned. Retries (standard mode) and timeouts are the
//! SDK's own, configured here rather than hand-written.

use std::time::Duration;

use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_sts::config::http::HttpResponse;
use aws_sdk_sts::error::{ProvideErrorMetadata, SdkError};
use secrecy::{ExposeSecret, SecretString};
use stackpass_provider::{
    CloudProvider, Credential, CredentialSecret, ExchangeRequest, ProviderError, ProviderKind,
};
use time::OffsetDateTime;

/// The audience AWS expects in web identity tokens for an IAM OIDC provider.
pub const DEFAULT_AUDIENCE: &str = "sts.amazonaws.com";

#[derive(Debug, Clone)]
pub struct AwsSettings {
    pub region: String,
    /// Overrides the STS endpoint (VPC endpoints, FIPS endpoints, or an emulator).
    pub endpoint_url: Option<String>,
    pub audience: String,
    pub connect_timeout: Duration,
    /// Upper bound for the whole call including the SDK's retries.
    pub operation_timeout: Duration,
    pub max_attempts: u32,
}

impl Default for AwsSettings {
    fn default() -> Self {
        AwsSettings {
            region: "us-east-1".into(),
            endpoint_url: None,
            audience: DEFAULT_AUDIENCE.into(),
            connect_timeout: Duration::from_secs(3),
            operation_timeout: Duration::from_secs(15),
            max_attempts: 3,
        }
    }
}

pub struct AwsProvider {
    client: aws_sdk_sts::Client,
    audience: String,
}

impl AwsProvider {
    pub async fn new(settings: AwsSettings) -> Self {
        let sdk_config = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(settings.region.clone()))
            .no_credentials()
            .retry_config(RetryConfig::standard().with_max_attempts(settings.max_attempts))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(settings.connect_timeout)
                    .operation_attempt_timeout(
                        settings.operation_timeout / settings.max_attempts.max(1),
                    )
                    .operation_timeout(settings.operation_timeout)
                    .build(),
            )
            .load()
            .await;
        let mut builder = aws_sdk_sts::config::Builder::from(&sdk_config);
        if let Some(endpoint) = &settings.endpoint_url {
            builder = builder.endpoint_url(endpoint);
        }
        AwsProvider {
            client: aws_sdk_sts::Client::from_conf(builder.build()),
            audience: settings.audience,
        }
    }
}

#[async_trait]
impl CloudProvider for AwsProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Aws
    }

    fn audience(&self) -> &str {
        &self.audience
    }

    async fn exchange(&self, request: ExchangeRequest) -> Result<Credential, ProviderError> {
        let duration_seconds = i32::try_from(request.duration.as_secs()).unwrap_or(i32::MAX);
        let output = self
            .client
            .assume_role_with_web_identity()
            .role_arn(&request.role)
            .role_session_name(&request.session_name)
            .web_identity_token(request.subject_token.expose_secret())
            .duration_seconds(duration_seconds)
            .set_policy(request.session_policy)
            .send()
            .await
            .map_err(map_sdk_error)?;

        let credentials = output
            .credentials()
            .ok_or_else(|| invalid("no Credentials element"))?;
        let expiration = credentials.expiration();
        let expires_at = OffsetDateTime::from_unix_timestamp(expiration.secs())
            .map_err(|_| invalid("Expiration out of range"))?;
        let access_key_id = credentials.access_key_id().to_owned();
        if access_key_id.is_empty() {
            return Err(invalid("empty AccessKeyId"));
        }
        Ok(Credential {
            provider: ProviderKind::Aws,
            credential_id: access_key_id.clone(),
            expires_at,
            secret: CredentialSecret::Aws {
                access_key_id,
                secret_access_key: SecretString::from(credentials.secret_access_key().to_owned()),
                session_token: SecretString::from(credentials.session_token().to_owned()),
                assumed_role_arn: output.assumed_role_user().map(|u| u.arn().to_owned()),
            },
        })
    }
}

fn invalid(message: &str) -> ProviderError {
    ProviderError::InvalidResponse {
        provider: ProviderKind::Aws,
        message: message.to_owned(),
    }
}

/// Splits SDK failures into "AWS said no" (the trust policy or role needs fixing)
/// and "AWS could not be reached" (retry later). The token itself never appears in
/// these messages: the SDK's errors carry only AWS's code and message.
fn map_sdk_error<E>(error: SdkError<E, HttpResponse>) -> ProviderError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match &error {
        SdkError::ServiceError(service) => {
            let err = service.err();
            let code = err.code().unwrap_or("Unknown").to_owned();
            let message = err.message().unwrap_or("no message").to_owned();
            // Throttling and AWS-side faults are "try again", not "fix your role".
            if service.raw().status().is_server_error()
                || matches!(
                    code.as_str(),
                    "Throttling"
                        | "ThrottlingException"
                        | "RequestLimitExceeded"
                        | "ServiceUnavailable"
                        | "InternalFailure"
                        | "IDPCommunicationError"
                )
            {
                ProviderError::Unavailable {
                    provider: ProviderKind::Aws,
                    message: format!("{code}: {message}"),
                }
            } else {
                ProviderError::Rejected {
                    provider: ProviderKind::Aws,
                    code,
                    message,
                }
            }
        }
        SdkError::TimeoutError(_) => ProviderError::Unavailable {
            provider: ProviderKind::Aws,
            message: "STS did not answer in time".into(),
        },
        SdkError::DispatchFailure(dispatch) => ProviderError::Unavailable {
            provider: ProviderKind::Aws,
            message: if dispatch.is_io() || dispatch.is_timeout() {
                "could not connect to STS".into()
            } else {
                "could not send the request to STS".into()
            },
        },
        SdkError::ResponseError(_) => invalid("STS returned an unreadable response"),
        SdkError::ConstructionFailure(_) => invalid("could not build the STS request"),
        _ => ProviderError::Unavailable {
            provider: ProviderKind::Aws,
            message: "unexpected STS client error".into(),
        },
    }
}
