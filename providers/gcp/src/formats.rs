//! How the CLI prints GCP access besides JSON: `env`, the variables Pulumi's
//! and Terraform's google providers and gcloud read an access token from; and
//! `gcp-executable`, the answer Google's executable-sourced credentials expect
//! from the command they run (federation mode: the client libraries exchange
//! the subject token themselves).

use secrecy::ExposeSecret;
use stackpass_provider::{federation, OutputFormat, ReceivedCredential};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

pub const FORMATS: &[OutputFormat] = &[
    OutputFormat::credentials("env"),
    OutputFormat::federation("gcp-executable"),
];

pub fn render(format: &str, credential: &ReceivedCredential) -> Result<String, String> {
    match format {
        "env" => {
            let token = credential.field("access_token")?.expose_secret();
            let mut lines = vec![
                format!("export GOOGLE_OAUTH_ACCESS_TOKEN={token}"),
                format!("export CLOUDSDK_AUTH_ACCESS_TOKEN={token}"),
            ];
            if let Ok(project) = credential.field("project_id") {
                lines.push(format!(
                    "export GOOGLE_CLOUD_PROJECT={}",
                    project.expose_secret()
                ));
            }
            Ok(lines.join("\n"))
        }
        // https://google.aip.dev/auth/4117 (executable-sourced credentials)
        "gcp-executable" => {
            let token = credential.field(federation::SUBJECT_TOKEN)?.expose_secret();
            let expires_at = OffsetDateTime::parse(&credential.expires_at, &Rfc3339)
                .map_err(|_| "the broker's expires_at is not RFC 3339".to_owned())?;
            Ok(serde_json::json!({
                "version": 1,
                "success": true,
                "token_type": federation::JWT_TOKEN_TYPE,
                "id_token": token,
                "expiration_time": expires_at.unix_timestamp(),
            })
            .to_string())
        }
        other => Err(format!(
            "gcp credentials cannot be printed as {other}; use json, env or gcp-executable"
        )),
    }
}

/// Google's client libraries read a failure from stdout too, and then show
/// `code` and `message` to the person running the tool.
pub fn render_failure(format: &str, message: &str) -> Option<String> {
    (format == "gcp-executable").then(|| {
        serde_json::json!({
            "version": 1,
            "success": false,
            "code": "stackpass_error",
            "message": message,
        })
        .to_string()
    })
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
    fn env_sets_the_token_for_terraform_pulumi_and_gcloud() {
        let text = render(
            "env",
            &received(&[("access_token", "ya29.x"), ("project_id", "acme-prod")]),
        )
        .unwrap();
        assert_eq!(
            text,
            "export GOOGLE_OAUTH_ACCESS_TOKEN=ya29.x\nexport CLOUDSDK_AUTH_ACCESS_TOKEN=ya29.x\nexport GOOGLE_CLOUD_PROJECT=acme-prod"
        );
    }

    #[test]
    fn gcp_executable_is_the_documented_success_document() {
        let text = render("gcp-executable", &received(&[("subject_token", "h.p.s")])).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"version": 1, "success": true,
                "token_type": "urn:ietf:params:oauth:token-type:jwt",
                "id_token": "h.p.s", "expiration_time": 1_795_942_800})
        );
        assert!(render("gcp-executable", &received(&[("access_token", "x")])).is_err());
    }

    #[test]
    fn failures_are_printed_only_for_the_executable_format() {
        let text = render_failure("gcp-executable", "denied").unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["success"], false);
        assert_eq!(value["message"], "denied");
        assert!(render_failure("env", "denied").is_none());
    }
}
