//! The STS call. `AssumeRoleWithWebIdentity` is authenticated by the web
//! identity token alone, so stackpass needs no AWS credentials of its own: the
//! client is built from explicit settings (no environment, no credential chain)
//! and sends the request unsigned. Retries (standard mode) and timeouts are the
//! SDK's own, configured here rather than hand-written, with one restriction:
//! a call whose answer was lost (timeout, broken connection) is never retried,
//! because STS may have minted a credential for it, and a retry would mint a
//! second one for the same audited intent. Only answers that say nothing was
//! minted (throttling, 5xx) are retried.

use aws_sdk_sts::config::http::HttpResponse;
use aws_sdk_sts::config::interceptors::InterceptorContext;
use aws_sdk_sts::config::retry::{ClassifyRetry, RetryAction, RetryConfig};
use aws_sdk_sts::config::timeout::TimeoutConfig;
use aws_sdk_sts::config::{BehaviorVersion, Region, StalledStreamProtectionConfig};
use aws_sdk_sts::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_http_client::tls;
use secrecy::{ExposeSecret, SecretString};
use stackpass_provider::{Credential, ExchangeRequest, ProviderError};
use time::OffsetDateTime;

use crate::claims::safe_name;
use crate::{AwsSettings, RoleArn, KIND};

pub fn client(settings: &AwsSettings) -> aws_sdk_sts::Client {
    let https = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let mut config = aws_sdk_sts::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .http_client(https)
        .region(Region::new(settings.region.clone()))
        .retry_config(RetryConfig::standard().with_max_attempts(settings.max_attempts))
        .retry_classifier(NoRetryAfterLostAnswer)
        // STS's request and answer are a few kilobytes: the operation
        // timeout bounds a stalled one, without a throughput monitor (and its
        // timers) on every body.
        .stalled_stream_protection(StalledStreamProtectionConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(settings.connect_timeout())
                .operation_timeout(settings.timeout)
                .build(),
        );
    if let Some(endpoint) = &settings.endpoint_url {
        config = config.endpoint_url(endpoint);
    }
    aws_sdk_sts::Client::from_conf(config.build())
}

/// Forbids a retry when STS may have processed the call but its answer never
/// arrived; see the module doc.
#[derive(Debug)]
struct NoRetryAfterLostAnswer;

impl ClassifyRetry for NoRetryAfterLostAnswer {
    fn classify_retry(&self, ctx: &InterceptorContext) -> RetryAction {
        match ctx.output_or_error() {
            Some(Err(error)) if error.is_timeout_error() || error.is_connector_error() => {
                RetryAction::RetryForbidden
            }
            _ => RetryAction::NoActionIndicated,
        }
    }

    fn name(&self) -> &'static str {
        "stackpass: no retry after a lost answer"
    }
}

pub async fn assume_role(
    client: &aws_sdk_sts::Client,
    request: ExchangeRequest,
) -> Result<Credential, ProviderError> {
    // Only this provider's parse_target makes targets of this type.
    if request.target.parsed::<RoleArn>().is_none() {
        return Err(invalid("the target is not an IAM role ARN"));
    }
    let duration_seconds = i32::try_from(request.duration.as_secs()).unwrap_or(i32::MAX);
    let output = client
        .assume_role_with_web_identity()
        .role_arn(request.target.as_str())
        .role_session_name(safe_name(&request.facts.requester))
        .web_identity_token(request.subject_token.expose_secret())
        .duration_seconds(duration_seconds)
        .set_policy(request.session_policy)
        .send()
        .await
        .map_err(map_sdk_error)?;

    let credentials = output
        .credentials()
        .ok_or_else(|| invalid("no Credentials element"))?;
    let expires_at = OffsetDateTime::from_unix_timestamp(credentials.expiration().secs())
        .map_err(|_| invalid("Expiration out of range"))?;
    let access_key_id = credentials.access_key_id().to_owned();
    if access_key_id.is_empty() {
        return Err(invalid("empty AccessKeyId"));
    }
    Ok(Credential::new(access_key_id.clone(), expires_at)
        .public("access_key_id", Some(access_key_id))
        .secret(
            "secret_access_key",
            SecretString::from(credentials.secret_access_key().to_owned()),
        )
        .secret(
            "session_token",
            SecretString::from(credentials.session_token().to_owned()),
        )
        .public(
            "assumed_role_arn",
            output.assumed_role_user().map(|u| u.arn().to_owned()),
        ))
}

fn invalid(message: &str) -> ProviderError {
    ProviderError::InvalidResponse {
        provider: KIND,
        message: message.to_owned(),
    }
}

fn unavailable(message: impl Into<String>) -> ProviderError {
    ProviderError::Unavailable {
        provider: KIND,
        message: message.into(),
    }
}

/// Which trust setting an STS refusal points at.
fn refusal_hint(code: &str) -> &'static str {
    match code {
        "InvalidIdentityToken" => "the IAM OIDC identity provider must be this broker's issuer URL with its audience (sts.amazonaws.com by default), and AWS must reach its /.well-known/jwks.json; `stackpass setup aws` prints both",
        "AccessDenied" => "the role's trust policy must allow sts:AssumeRoleWithWebIdentity for this broker's OIDC provider, audience and subject (stack:…); `stackpass setup aws` prints one",
        "ExpiredTokenException" => "the subject token expired before STS saw it; check the broker's clock and issuer.token_lifetime",
        "ValidationError" => "the role session duration is longer than the role's MaxSessionDuration; raise it on the role or lower the rule's max_duration",
        "MalformedPolicyDocument" | "PackedPolicyTooLarge" => "the rule's session policy or session tags are too large or malformed for STS",
        _ => "the role's trust policy must trust this broker's issuer, audience and subject; `stackpass setup aws` prints one",
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
                unavailable(format!("{code}: {message}"))
            } else {
                let hint = refusal_hint(&code).to_owned();
                ProviderError::Rejected {
                    provider: KIND,
                    code,
                    message,
                    hint,
                }
            }
        }
        SdkError::TimeoutError(_) => unavailable("STS did not answer in time"),
        SdkError::DispatchFailure(dispatch) => {
            unavailable(if dispatch.is_io() || dispatch.is_timeout() {
                "could not connect to STS"
            } else {
                "could not send the request to STS"
            })
        }
        SdkError::ResponseError(_) => invalid("STS returned an unreadable response"),
        SdkError::ConstructionFailure(_) => invalid("could not build the STS request"),
        _ => unavailable("unexpected STS client error"),
    }
}
