//! The two documented calls, made with the project's HTTP client: Google STS
//! token exchange (RFC 8693) and, when the target names a service account,
//! IAM Credentials `generateAccessToken`. Refusals are mapped to the trust
//! setting that has to change; nothing secret goes into an error.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use stackpass_provider::{http, ProviderError};
use time::OffsetDateTime;

use crate::settings::GcpSettings;
use crate::target::GcpTarget;
use crate::KIND;

const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
pub struct GoogleToken {
    pub access_token: SecretString,
    pub expires_at: OffsetDateTime,
}

pub struct Exchanger {
    client: reqwest::Client,
    settings: GcpSettings,
}

impl Exchanger {
    pub fn new(settings: GcpSettings) -> Self {
        let client = http::client(
            settings.timeout,
            concat!("stackpass-gcp/", env!("CARGO_PKG_VERSION")),
        );
        Exchanger { client, settings }
    }

    pub fn settings(&self) -> &GcpSettings {
        &self.settings
    }

    /// STS: the subject token for a federated access token.
    pub async fn federated_token(
        &self,
        target: &GcpTarget,
        subject_token: &SecretString,
        scopes: &[String],
    ) -> Result<GoogleToken, ProviderError> {
        #[derive(Deserialize)]
        struct Answer {
            access_token: String,
            expires_in: Option<i64>,
        }
        let scope = scopes.join(" ");
        let audience = target.sts_audience();
        let form = [
            ("grant_type", TOKEN_EXCHANGE),
            ("audience", audience.as_str()),
            ("scope", scope.as_str()),
            ("requested_token_type", ACCESS_TOKEN_TYPE),
            ("subject_token", subject_token.expose_secret()),
            ("subject_token_type", JWT_TOKEN_TYPE),
        ];
        let url = format!("{}/v1/token", self.settings.sts_endpoint);
        let started = OffsetDateTime::now_utc();
        let (status, body) =
            http::send(self.client.post(&url).form(&form), KIND, "Google STS").await?;
        if !status.is_success() {
            return Err(sts_refusal(status, &body));
        }
        let answer: Answer = parse(&body, "Google STS")?;
        // Without expires_in Google's documented default is one hour.
        let expires_in = answer.expires_in.unwrap_or(3600);
        Ok(GoogleToken {
            access_token: SecretString::from(answer.access_token),
            expires_at: started + time::Duration::seconds(expires_in),
        })
    }

    /// IAM Credentials: the federated token for the service account's token.
    pub async fn impersonate(
        &self,
        service_account: &str,
        federated: &SecretString,
        lifetime: Duration,
        scopes: &[String],
    ) -> Result<GoogleToken, ProviderError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Answer {
            access_token: String,
            expire_time: String,
        }
        let url = format!(
            "{}/v1/projects/-/serviceAccounts/{service_account}:generateAccessToken",
            self.settings.iam_credentials_endpoint
        );
        let body = serde_json::json!({
            "scope": scopes,
            "lifetime": format!("{}s", lifetime.as_secs()),
        });
        let request = self
            .client
            .post(&url)
            .bearer_auth(federated.expose_secret())
            .json(&body);
        let (status, body) = http::send(request, KIND, "IAM Credentials").await?;
        if !status.is_success() {
            return Err(iam_refusal(status, &body, service_account));
        }
        let answer: Answer = parse(&body, "IAM Credentials")?;
        let expires_at = OffsetDateTime::parse(
            &answer.expire_time,
            &time::format_description::well_known::Rfc3339,
        )
        .map_err(|_| invalid("IAM Credentials sent an expireTime that is not RFC 3339"))?;
        Ok(GoogleToken {
            access_token: SecretString::from(answer.access_token),
            expires_at,
        })
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8], service: &str) -> Result<T, ProviderError> {
    serde_json::from_slice(body).map_err(|_| {
        invalid(&format!(
            "{service} sent an answer without the documented fields"
        ))
    })
}

fn invalid(message: &str) -> ProviderError {
    ProviderError::InvalidResponse {
        provider: KIND,
        message: message.to_owned(),
    }
}

/// Google STS errors are OAuth-shaped: `error`, `error_description`.
fn sts_refusal(status: reqwest::StatusCode, body: &[u8]) -> ProviderError {
    #[derive(Deserialize)]
    struct OAuthError {
        error: String,
        #[serde(default)]
        error_description: String,
    }
    let Ok(refusal) = serde_json::from_slice::<OAuthError>(body) else {
        return invalid(&format!(
            "Google STS answered HTTP {status} without an OAuth error"
        ));
    };
    let description = refusal.error_description.to_lowercase();
    let hint = if description.contains("audience") {
        "the pool provider's allowed audiences must include the subject token's audience (leave them empty for Google's default, https://iam.googleapis.com/<pool provider>); `stackpass setup gcp` prints it"
    } else if description.contains("issuer")
        || description.contains("jwk")
        || description.contains("signature")
    {
        "the pool provider's issuer URI must be this broker's issuer URL, and Google must reach its /.well-known/jwks.json; `stackpass setup gcp` prints the settings"
    } else if description.contains("condition") || refusal.error == "unauthorized_client" {
        "the pool provider's attribute condition refused this stack; compare it with the claims `stackpass setup gcp` documents"
    } else if refusal.error == "invalid_target"
        || description.contains("not found")
        || description.contains("disabled")
    {
        "the target's project number, pool or provider does not exist or is disabled; check the rule's target"
    } else {
        "check the workload identity pool provider's trust settings; `stackpass setup gcp` prints what they must be"
    };
    ProviderError::Rejected {
        provider: KIND,
        code: refusal.error,
        message: refusal.error_description,
        hint: hint.into(),
    }
}

/// IAM errors are `google.rpc.Status`: `error.status`, `error.details[].reason`.
fn iam_refusal(status: reqwest::StatusCode, body: &[u8], service_account: &str) -> ProviderError {
    #[derive(Deserialize)]
    struct Envelope {
        error: Status,
    }
    #[derive(Deserialize)]
    struct Status {
        #[serde(default)]
        message: String,
        #[serde(default)]
        status: String,
        #[serde(default)]
        details: Vec<Detail>,
    }
    #[derive(Deserialize)]
    struct Detail {
        reason: Option<String>,
    }
    let Ok(Envelope { error }) = serde_json::from_slice::<Envelope>(body) else {
        return invalid(&format!(
            "IAM Credentials answered HTTP {status} without a google.rpc.Status"
        ));
    };
    let reason = error.details.iter().find_map(|d| d.reason.clone());
    let code = match reason {
        Some(reason) => format!("{}/{reason}", error.status),
        None => error.status.clone(),
    };
    let hint = match error.status.as_str() {
        "PERMISSION_DENIED" => format!(
            "grant roles/iam.workloadIdentityUser on {service_account} to the federated principal (principal://iam.googleapis.com/<pool>/subject/<subject>) or a principalSet of the pool; `stackpass setup gcp` prints the binding"
        ),
        "INVALID_ARGUMENT" => "the token lifetime or scopes were refused: lower [providers.gcp] max_lifetime to 1h unless the organisation policy iam.allowServiceAccountCredentialLifetimeExtension lists this service account".into(),
        "NOT_FOUND" => format!("{service_account} does not exist; check the rule's target"),
        "UNAUTHENTICATED" => "Google did not accept the federated token from STS; check the pool provider".into(),
        _ => "check the service account and its IAM bindings".into(),
    };
    ProviderError::Rejected {
        provider: KIND,
        code,
        message: error.message,
        hint,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sts_refusals_name_the_trust_setting() {
        let body = br#"{"error":"invalid_grant","error_description":"The audience in ID Token [x] does not match the expected audience."}"#;
        let ProviderError::Rejected { code, hint, .. } =
            sts_refusal(reqwest::StatusCode::BAD_REQUEST, body)
        else {
            panic!("not a refusal");
        };
        assert_eq!(code, "invalid_grant");
        assert!(hint.contains("allowed audiences"), "{hint}");
    }

    #[test]
    fn iam_refusals_carry_status_and_reason() {
        let body = br#"{"error":{"code":403,"message":"Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist).","status":"PERMISSION_DENIED","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"IAM_PERMISSION_DENIED","domain":"iam.googleapis.com"}]}}"#;
        let ProviderError::Rejected { code, hint, .. } = iam_refusal(
            reqwest::StatusCode::FORBIDDEN,
            body,
            "d@p.iam.gserviceaccount.com",
        ) else {
            panic!("not a refusal");
        };
        assert_eq!(code, "PERMISSION_DENIED/IAM_PERMISSION_DENIED");
        assert!(
            hint.contains("roles/iam.workloadIdentityUser on d@p.iam.gserviceaccount.com"),
            "{hint}"
        );
    }

    #[test]
    fn an_unexpected_body_is_an_invalid_response_not_a_refusal() {
        assert!(matches!(
            sts_refusal(reqwest::StatusCode::BAD_REQUEST, b"<html>"),
            ProviderError::InvalidResponse { .. }
        ));
    }
}
