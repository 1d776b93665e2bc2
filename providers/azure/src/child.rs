//! How `stackpass run` gives a command Azure access that stays fresh, in
//! federation mode: Terraform's azurerm and Pulumi's azure providers fetch a
//! new assertion from `ARM_OIDC_REQUEST_URL` (the GitHub Actions ID-token
//! request protocol: `Authorization: Bearer ARM_OIDC_REQUEST_TOKEN`, answer
//! `{"value": JWT}`) whenever they need a token, and the Azure Identity SDKs
//! and CLI-based tools read `AZURE_FEDERATED_TOKEN_FILE`, which the CLI
//! rewrites on every refresh. Client secrets and certificates in the
//! environment are removed, so the command acts only as the stack's
//! application.

use secrecy::{ExposeSecret, SecretString};
use stackpass_provider::{
    federation, ChildDelivery, ChildEndpoint, ChildEnvironment, ChildFile, Mode, ReceivedCredential,
};

pub struct OidcRequestUrl;

const TOKEN_FILE: &str = "azure-federated-token";

const SHADOWING: &[&str] = &[
    "ARM_CLIENT_SECRET",
    "ARM_CLIENT_CERTIFICATE_PATH",
    "ARM_CLIENT_CERTIFICATE_PASSWORD",
    "ARM_OIDC_TOKEN",
    "ARM_USE_MSI",
    "ARM_USE_CLI",
    "AZURE_CLIENT_SECRET",
    "AZURE_CLIENT_CERTIFICATE_PATH",
    "AZURE_CLIENT_CERTIFICATE_PASSWORD",
    "AZURE_USERNAME",
    "AZURE_PASSWORD",
];

impl ChildDelivery for OidcRequestUrl {
    fn mode(&self) -> Mode {
        Mode::Federation
    }

    fn environment(
        &self,
        first: &ReceivedCredential,
        endpoint: &ChildEndpoint<'_>,
    ) -> Result<ChildEnvironment, String> {
        let text = |value: &str| SecretString::from(value.to_owned());
        let tenant = first.field("tenant_id")?.clone();
        let client = first.field("client_id")?.clone();
        let mut set = vec![
            ("ARM_USE_OIDC", text("true")),
            ("ARM_OIDC_REQUEST_URL", text(endpoint.url)),
            ("ARM_OIDC_REQUEST_TOKEN", endpoint.secret.clone()),
            ("ARM_TENANT_ID", tenant.clone()),
            ("ARM_CLIENT_ID", client.clone()),
            ("AZURE_TENANT_ID", tenant),
            ("AZURE_CLIENT_ID", client),
            (
                "AZURE_FEDERATED_TOKEN_FILE",
                text(&endpoint.dir.join(TOKEN_FILE).display().to_string()),
            ),
        ];
        if let Ok(subscription) = first.field("subscription_id") {
            set.push(("ARM_SUBSCRIPTION_ID", subscription.clone()));
            set.push(("AZURE_SUBSCRIPTION_ID", subscription.clone()));
        }
        Ok(ChildEnvironment {
            set,
            remove: SHADOWING,
        })
    }

    fn document(&self, credential: &ReceivedCredential) -> Result<SecretString, String> {
        Ok(SecretString::from(
            serde_json::json!({
                "value": credential.field(federation::SUBJECT_TOKEN)?.expose_secret(),
            })
            .to_string(),
        ))
    }

    fn files(
        &self,
        credential: &ReceivedCredential,
        _endpoint: &ChildEndpoint<'_>,
    ) -> Result<Vec<ChildFile>, String> {
        Ok(vec![ChildFile {
            name: TOKEN_FILE,
            contents: credential.field(federation::SUBJECT_TOKEN)?.clone(),
        }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_url_answer_and_the_token_file_carry_the_assertion() {
        let credential = ReceivedCredential {
            expires_at: "2026-11-29T12:00:00Z".into(),
            fields: [
                ("subject_token", "eyJ.assertion"),
                ("tenant_id", "t"),
                ("client_id", "c"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), SecretString::from(v.to_owned())))
            .collect(),
        };
        let secret = SecretString::from("s".to_owned());
        let endpoint = ChildEndpoint {
            url: "http://127.0.0.1:4000/azure",
            secret: &secret,
            dir: std::path::Path::new("/tmp/x"),
        };
        let env = OidcRequestUrl.environment(&credential, &endpoint).unwrap();
        let names: Vec<&str> = env.set.iter().map(|(name, _)| *name).collect();
        assert!(names.contains(&"ARM_OIDC_REQUEST_URL"));
        assert!(!names.contains(&"ARM_SUBSCRIPTION_ID"));
        let document = OidcRequestUrl.document(&credential).unwrap();
        assert_eq!(document.expose_secret(), r#"{"value":"eyJ.assertion"}"#);
        let files = OidcRequestUrl.files(&credential, &endpoint).unwrap();
        assert_eq!(files[0].contents.expose_secret(), "eyJ.assertion");
    }
}
