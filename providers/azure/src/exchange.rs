//! The documented Entra call, made with the project's HTTP client: client
//! credentials with stackpass's subject token as a federated
//! `client_assertion`. Refusals are mapped by their AADSTS code to the
//! federated-credential setting that has to change.

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use stackpass_provider::{http, ProviderError};
use time::OffsetDateTime;

use crate::settings::AzureSettings;
use crate::target::AzureTarget;
use crate::KIND;

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

pub struct EntraToken {
    pub access_token: SecretString,
    pub expires_at: OffsetDateTime,
}

pub struct Exchanger {
    client: reqwest::Client,
    settings: AzureSettings,
}

impl Exchanger {
    pub fn new(settings: AzureSettings) -> Self {
        let client = http::client(
            settings.timeout,
            concat!("stackpass-azure/", env!("CARGO_PKG_VERSION")),
        );
        Exchanger { client, settings }
    }

    pub fn settings(&self) -> &AzureSettings {
        &self.settings
    }

    pub async fn access_token(
        &self,
        target: &AzureTarget,
        assertion: &SecretString,
    ) -> Result<EntraToken, ProviderError> {
        #[derive(Deserialize)]
        struct Answer {
            access_token: String,
            expires_in: i64,
        }
        let form = [
            ("client_id", target.client_id.as_str()),
            ("grant_type", "client_credentials"),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", assertion.expose_secret()),
            ("scope", self.settings.scope.as_str()),
        ];
        let url = format!(
            "{}/{}/oauth2/v2.0/token",
            self.settings.authority_host, target.tenant
        );
        let started = OffsetDateTime::now_utc();
        let (status, body) = http::send(self.client.post(&url).form(&form), KIND, "Entra").await?;
        if !status.is_success() {
            return Err(refusal(status, &body, target, &self.settings));
        }
        let answer: Answer = serde_json::from_slice(&body)
            .map_err(|_| invalid("Entra sent an answer without access_token and expires_in"))?;
        Ok(EntraToken {
            access_token: SecretString::from(answer.access_token),
            expires_at: started + time::Duration::seconds(answer.expires_in),
        })
    }
}

fn invalid(message: &str) -> ProviderError {
    ProviderError::InvalidResponse {
        provider: KIND,
        message: message.to_owned(),
    }
}

/// Entra errors carry `error`, `error_description` and `error_codes`.
fn refusal(
    status: reqwest::StatusCode,
    body: &[u8],
    target: &AzureTarget,
    settings: &AzureSettings,
) -> ProviderError {
    #[derive(Deserialize)]
    struct EntraError {
        error: String,
        #[serde(default)]
        error_description: String,
        #[serde(default)]
        error_codes: Vec<u64>,
    }
    let Ok(refusal) = serde_json::from_slice::<EntraError>(body) else {
        return invalid(&format!(
            "Entra answered HTTP {status} without an OAuth error"
        ));
    };
    let code = refusal.error_codes.first().copied();
    let app = &target.client_id;
    let hint = match code {
        Some(700211) => format!("a federated credential on app {app} must name this broker's issuer URL exactly (no trailing slash difference); `stackpass setup azure` prints it"),
        Some(700212) => format!("the federated credential on app {app} must list the audience {}", settings.audience),
        Some(700213) => format!("add a federated credential on app {app} whose subject is exactly {:?} (Entra does not match wildcards); `stackpass setup azure` prints it", target.subject),
        Some(70021) => format!("no federated credential on app {app} matches this issuer and subject; if one was just added, Entra may still be propagating it: retry in a minute"),
        Some(700024) => "the assertion was outside its validity window: check the broker's clock".into(),
        Some(700016) => format!("app {app} does not exist in tenant {}; check the rule's target", target.tenant),
        Some(90002) | Some(900023) => format!("tenant {} does not exist; check the rule's target", target.tenant),
        _ => format!("check app {app}'s federated credentials; `stackpass setup azure` prints what they must be"),
    };
    // The first line of error_description is Entra's message; the rest is trace ids.
    let message = refusal
        .error_description
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    ProviderError::Rejected {
        provider: KIND,
        code: code.map_or(refusal.error, |c| format!("AADSTS{c}")),
        message,
        hint,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> AzureTarget {
        AzureTarget {
            tenant: "72f988bf-86f1-41af-91ab-2d7cd011db47".into(),
            client_id: "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d".into(),
            subscription: None,
            subject: "team:payments:env:prod".into(),
        }
    }

    #[test]
    fn a_subject_mismatch_names_the_exact_subject_to_add() {
        let body = br#"{"error":"invalid_client","error_description":"AADSTS700213: No matching federated identity record found for presented assertion subject 'team:payments:env:prod'.\r\nTrace ID: x\r\nCorrelation ID: y","error_codes":[700213]}"#;
        let settings = AzureSettings::parse(
            serde_json::json!({}),
            &stackpass_provider::SettingsContext {
                cloud_budget: std::time::Duration::from_secs(15),
            },
        )
        .unwrap();
        let ProviderError::Rejected {
            code,
            message,
            hint,
            ..
        } = refusal(reqwest::StatusCode::BAD_REQUEST, body, &target(), &settings)
        else {
            panic!("not a refusal");
        };
        assert_eq!(code, "AADSTS700213");
        assert!(!message.contains("Trace ID"), "{message}");
        assert!(hint.contains("\"team:payments:env:prod\""), "{hint}");
    }
}
