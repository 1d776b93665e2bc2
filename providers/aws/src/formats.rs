//! How the CLI prints AWS credentials besides JSON: shell `export` lines that
//! every AWS SDK and tool reads, and the exact `credential_process` document.

use secrecy::ExposeSecret;
use stackpass_provider::{OutputFormat, ReceivedCredential};

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

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

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
