//! How `stackpass run` gives a command Google Cloud access that stays fresh: a
//! URL-sourced external account credential file (AIP-4117), the form every
//! Google client library, gcloud and Terraform's and Pulumi's google providers
//! load from `GOOGLE_APPLICATION_CREDENTIALS`. Its `credential_source.url` is
//! the CLI's loopback endpoint, which serves the current subject token
//! (federation mode); the libraries exchange it at Google STS (and impersonate
//! the service account) themselves, fetching a new one whenever they refresh.

use secrecy::{ExposeSecret, SecretString};
use stackpass_provider::{
    federation, ChildDelivery, ChildEndpoint, ChildEnvironment, ChildFile, Mode, ReceivedCredential,
};

pub struct UrlSourcedAccount;

const CREDENTIAL_FILE: &str = "gcp-external-account.json";

/// Variables Google tools read credentials from before (or instead of)
/// `GOOGLE_APPLICATION_CREDENTIALS`.
const SHADOWING: &[&str] = &[
    "GOOGLE_OAUTH_ACCESS_TOKEN",
    "CLOUDSDK_AUTH_ACCESS_TOKEN",
    "CLOUDSDK_AUTH_ACCESS_TOKEN_FILE",
    "GOOGLE_CREDENTIALS",
    "GOOGLE_CLOUD_KEYFILE_JSON",
    "GCLOUD_KEYFILE_JSON",
];

impl ChildDelivery for UrlSourcedAccount {
    fn mode(&self) -> Mode {
        Mode::Federation
    }

    fn environment(
        &self,
        _first: &ReceivedCredential,
        endpoint: &ChildEndpoint<'_>,
    ) -> Result<ChildEnvironment, String> {
        let file = SecretString::from(endpoint.dir.join(CREDENTIAL_FILE).display().to_string());
        Ok(ChildEnvironment {
            set: vec![
                ("GOOGLE_APPLICATION_CREDENTIALS", file.clone()),
                ("CLOUDSDK_AUTH_CREDENTIAL_FILE_OVERRIDE", file),
            ],
            remove: SHADOWING,
        })
    }

    fn document(&self, credential: &ReceivedCredential) -> Result<SecretString, String> {
        Ok(SecretString::from(
            serde_json::json!({
                "subject_token": credential.field(federation::SUBJECT_TOKEN)?.expose_secret(),
            })
            .to_string(),
        ))
    }

    fn files(
        &self,
        credential: &ReceivedCredential,
        endpoint: &ChildEndpoint<'_>,
    ) -> Result<Vec<ChildFile>, String> {
        let field = |name| {
            credential
                .field(name)
                .map(|value| value.expose_secret().to_owned())
        };
        let mut account = serde_json::json!({
            "type": "external_account",
            "audience": field("sts_audience")?,
            "subject_token_type": federation::JWT_TOKEN_TYPE,
            "token_url": field("token_url")?,
            "credential_source": {
                "url": endpoint.url,
                "headers": { "Authorization": endpoint.secret.expose_secret() },
                "format": { "type": "json", "subject_token_field_name": "subject_token" },
            },
        });
        if let Ok(url) = field("service_account_impersonation_url") {
            account["service_account_impersonation_url"] = url.into();
        }
        Ok(vec![ChildFile {
            name: CREDENTIAL_FILE,
            contents: SecretString::from(account.to_string()),
        }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_credential_file_points_google_libraries_at_the_endpoint() {
        let credential = ReceivedCredential {
            expires_at: "2026-11-29T12:00:00Z".into(),
            fields: [
                ("subject_token", "eyJ.subject.token"),
                ("sts_audience", "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/q"),
                ("token_url", "https://sts.googleapis.com/v1/token"),
                ("service_account_impersonation_url", "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/d@x.iam.gserviceaccount.com:generateAccessToken"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), SecretString::from(v.to_owned())))
            .collect(),
        };
        let secret = SecretString::from("per-run-secret".to_owned());
        let endpoint = ChildEndpoint {
            url: "http://127.0.0.1:4000/gcp",
            secret: &secret,
            dir: std::path::Path::new("/tmp/x"),
        };
        let files = UrlSourcedAccount.files(&credential, &endpoint).unwrap();
        let file: serde_json::Value =
            serde_json::from_str(files[0].contents.expose_secret()).unwrap();
        assert_eq!(file["type"], "external_account");
        assert_eq!(
            file["credential_source"]["url"],
            "http://127.0.0.1:4000/gcp"
        );
        assert_eq!(
            file["credential_source"]["headers"]["Authorization"],
            "per-run-secret"
        );
        assert!(file["service_account_impersonation_url"]
            .as_str()
            .unwrap()
            .ends_with(":generateAccessToken"));
        let document = UrlSourcedAccount.document(&credential).unwrap();
        assert_eq!(
            document.expose_secret(),
            r#"{"subject_token":"eyJ.subject.token"}"#
        );
    }
}
