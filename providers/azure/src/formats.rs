//! How the CLI prints Azure access besides JSON. `azure-oidc` (federation
//! mode) sets the `ARM_*` variables Terraform's azurerm and Pulumi's
//! azure-native read to exchange the assertion themselves; they cannot take a
//! pre-fetched access token. `env` (credentials mode) exports the access token
//! for scripts and REST calls, with the tenant, client and subscription.

use secrecy::ExposeSecret;
use stackpass_provider::{federation, OutputFormat, ReceivedCredential};

pub const FORMATS: &[OutputFormat] = &[
    OutputFormat::credentials("env"),
    OutputFormat::federation("azure-oidc"),
];

pub fn render(format: &str, credential: &ReceivedCredential) -> Result<String, String> {
    let tenant = credential.field("tenant_id")?.expose_secret();
    let client = credential.field("client_id")?.expose_secret();
    let subscription = credential.field("subscription_id").ok();
    let mut lines = match format {
        "azure-oidc" => vec![
            "export ARM_USE_OIDC=true".to_owned(),
            format!(
                "export ARM_OIDC_TOKEN={}",
                credential.field(federation::SUBJECT_TOKEN)?.expose_secret()
            ),
            format!("export ARM_CLIENT_ID={client}"),
            format!("export ARM_TENANT_ID={tenant}"),
        ],
        "env" => vec![
            format!(
                "export AZURE_ACCESS_TOKEN={}",
                credential.field("access_token")?.expose_secret()
            ),
            format!(
                "export AZURE_ACCESS_TOKEN_EXPIRES_ON={}",
                credential.expires_at
            ),
            format!("export AZURE_CLIENT_ID={client}"),
            format!("export AZURE_TENANT_ID={tenant}"),
        ],
        other => {
            return Err(format!(
                "azure credentials cannot be printed as {other}; use json, env or azure-oidc"
            ))
        }
    };
    if let Some(subscription) = subscription {
        let name = if format == "azure-oidc" {
            "ARM_SUBSCRIPTION_ID"
        } else {
            "AZURE_SUBSCRIPTION_ID"
        };
        lines.push(format!("export {name}={}", subscription.expose_secret()));
    }
    Ok(lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    fn received(fields: &[(&str, &str)]) -> ReceivedCredential {
        ReceivedCredential {
            expires_at: "2026-11-29T09:00:00Z".into(),
            fields: fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), SecretString::from((*v).to_owned())))
                .collect(),
        }
    }

    #[test]
    fn azure_oidc_sets_what_azurerm_and_azure_native_read() {
        let text = render(
            "azure-oidc",
            &received(&[
                ("subject_token", "h.p.s"),
                ("tenant_id", "t"),
                ("client_id", "c"),
                ("subscription_id", "s"),
            ]),
        )
        .unwrap();
        assert_eq!(
            text,
            "export ARM_USE_OIDC=true\nexport ARM_OIDC_TOKEN=h.p.s\nexport ARM_CLIENT_ID=c\nexport ARM_TENANT_ID=t\nexport ARM_SUBSCRIPTION_ID=s"
        );
    }

    #[test]
    fn env_exports_the_access_token_and_missing_fields_are_errors() {
        let text = render(
            "env",
            &received(&[
                ("access_token", "eyJ"),
                ("tenant_id", "t"),
                ("client_id", "c"),
            ]),
        )
        .unwrap();
        assert!(
            text.starts_with("export AZURE_ACCESS_TOKEN=eyJ\n"),
            "{text}"
        );
        assert!(!text.contains("SUBSCRIPTION"));
        assert!(render(
            "azure-oidc",
            &received(&[("tenant_id", "t"), ("client_id", "c")])
        )
        .unwrap_err()
        .contains("subject_token"));
    }
}
