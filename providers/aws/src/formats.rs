//! How the CLI prints AWS credentials besides JSON: shell `export` lines that
//! every AWS SDK and tool reads, and the exact `credential_process` document.
//! The same document is the `access_token` of a token exchange.

use secrecy::{ExposeSecret, SecretString};
use stackpass_provider::token_exchange::NOT_APPLICABLE;
use stackpass_provider::{
    Credential, CredentialField, ExchangedToken, OutputFormat, ReceivedCredential,
};
use time::format_description::well_known::Rfc3339;

/// The `requested_token_type` of AWS credentials at `POST /oauth2/token`.
pub const CREDENTIALS_TOKEN_TYPE: &str = "urn:stackpass:params:oauth:token-type:aws-credentials";

pub const FORMATS: &[OutputFormat] = &[
    OutputFormat::credentials("env"),
    OutputFormat::credentials("credential-process"),
];

pub fn render(format: &str, credential: &ReceivedCredential) -> Result<String, String> {
    let access_key_id = credential.field("access_key_id")?.expose_secret();
    let secret_access_key = credential.field("secret_access_key")?.expose_secret();
    let session_token = credential.field("session_token")?.expose_secret();
    match format {
        "env" => Ok(format!(
            "export AWS_ACCESS_KEY_ID={access_key_id}\nexport AWS_SECRET_ACCESS_KEY={secret_access_key}\nexport AWS_SESSION_TOKEN={session_token}\nexport AWS_CREDENTIAL_EXPIRATION={}",
            credential.expires_at
        )),
        // https://docs.aws.amazon.com/cli/latest/userguide/cli-configure-sourcing-external.html
        "credential-process" => Ok(serde_json::json!({
            "Version": 1,
            "AccessKeyId": access_key_id,
            "SecretAccessKey": secret_access_key,
            "SessionToken": session_token,
            "Expiration": credential.expires_at,
        })
        .to_string()),
        other => Err(format!(
            "aws credentials cannot be printed as {other}; use json, env or credential-process"
        )),
    }
}

/// AWS credentials are three values, and an RFC 8693 answer has one
/// `access_token`: it is the `credential_process` document (version 1),
/// which every AWS SDK and the CLI read as is, so an agent can hand it to
/// its tools unchanged. It is no bearer token: `token_type` is `N_A`.
pub fn exchanged_token(credential: &Credential) -> Option<ExchangedToken> {
    let field = |name: &str| {
        credential
            .fields
            .iter()
            .find(|(field, _)| *field == name)
            .and_then(|(_, value)| match value {
                CredentialField::Public(value) => value.clone(),
                CredentialField::Secret(secret) => Some(secret.expose_secret().to_owned()),
            })
    };
    let document = serde_json::json!({
        "Version": 1,
        "AccessKeyId": field("access_key_id")?,
        "SecretAccessKey": field("secret_access_key")?,
        "SessionToken": field("session_token")?,
        "Expiration": credential.expires_at.format(&Rfc3339).ok()?,
    });
    Some(ExchangedToken {
        access_token: SecretString::from(document.to_string()),
        token_type: NOT_APPLICABLE,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn received() -> ReceivedCredential {
        ReceivedCredential {
            expires_at: "2026-11-23T09:00:00Z".into(),
            fields: [
                ("access_key_id", "ASIAEXAMPLE"),
                ("secret_access_key", "s3cr3t"),
                ("session_token", "t0ken"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), SecretString::from(v.to_owned())))
            .collect(),
        }
    }

    #[test]
    fn credential_process_is_exactly_what_the_aws_cli_reads() {
        let text = render("credential-process", &received()).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            value,
            serde_json::json!({ "Version": 1, "AccessKeyId": "ASIAEXAMPLE", "SecretAccessKey": "s3cr3t",
                                "SessionToken": "t0ken", "Expiration": "2026-11-23T09:00:00Z" })
        );
    }

    #[test]
    fn a_token_exchange_carries_the_credential_process_document() {
        let expires = time::OffsetDateTime::from_unix_timestamp(1_795_424_400).unwrap();
        let credential = Credential::new("ASIAEXAMPLE", expires)
            .public("access_key_id", Some("ASIAEXAMPLE".into()))
            .secret("secret_access_key", SecretString::from("s3cr3t"))
            .secret("session_token", SecretString::from("t0ken"));
        let token = exchanged_token(&credential).unwrap();
        assert_eq!(token.token_type, "N_A");
        let value: serde_json::Value =
            serde_json::from_str(token.access_token.expose_secret()).unwrap();
        assert_eq!(
            value,
            serde_json::json!({ "Version": 1, "AccessKeyId": "ASIAEXAMPLE", "SecretAccessKey": "s3cr3t",
                                "SessionToken": "t0ken", "Expiration": "2026-11-23T09:00:00Z" })
        );
        assert!(!format!("{token:?}").contains("s3cr3t"));
        let partial = Credential::new("ASIAEXAMPLE", expires)
            .public("access_key_id", Some("ASIAEXAMPLE".into()));
        assert!(exchanged_token(&partial).is_none());
    }

    #[test]
    fn env_exports_the_sdk_variables_and_missing_fields_are_errors() {
        let text = render("env", &received()).unwrap();
        assert!(
            text.starts_with("export AWS_ACCESS_KEY_ID=ASIAEXAMPLE\n"),
            "{text}"
        );
        assert!(text.ends_with("export AWS_CREDENTIAL_EXPIRATION=2026-11-23T09:00:00Z"));
        let mut partial = received();
        partial.fields.remove("session_token");
        assert!(render("env", &partial)
            .unwrap_err()
            .contains("session_token"));
        assert!(render("yaml", &received()).is_err());
    }
}
