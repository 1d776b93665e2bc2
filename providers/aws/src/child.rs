//! How `stackpass run` gives a command AWS credentials that stay fresh: the
//! container credentials provider every AWS SDK and the AWS CLI have. The child
//! gets `AWS_CONTAINER_CREDENTIALS_FULL_URI` (the CLI's loopback endpoint) and
//! `AWS_CONTAINER_AUTHORIZATION_TOKEN`, and fetches again whenever its copy
//! nears `Expiration`, so a `pulumi up` longer than one credential's life keeps
//! working. Anything that AWS tools try before the container provider
//! (variables, profiles, the shared credentials and config files) is hidden
//! from the child, so it acts with the stack's credentials and nothing else.

use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use stackpass_provider::{
    ChildDelivery, ChildEndpoint, ChildEnvironment, ChildFile, Mode, ReceivedCredential,
};

pub struct ContainerCredentials;

/// Variables that would win over the container provider, or point the child
/// at someone else's credentials.
const SHADOWING: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_CREDENTIAL_EXPIRATION",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
];

/// An empty shared credentials file and a config file with at most a region:
/// a `[default]` profile with keys, `credential_process`, SSO or `role_arn`
/// would otherwise come before the container provider.
const CREDENTIALS_FILE: &str = "aws-credentials";
const CONFIG_FILE: &str = "aws-config";

impl ChildDelivery for ContainerCredentials {
    fn mode(&self) -> Mode {
        Mode::Credentials
    }

    fn environment(
        &self,
        _first: &ReceivedCredential,
        endpoint: &ChildEndpoint<'_>,
    ) -> Result<ChildEnvironment, String> {
        let path = |name: &str| SecretString::from(endpoint.dir.join(name).display().to_string());
        let mut set = vec![
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                SecretString::from(endpoint.url.to_owned()),
            ),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN", endpoint.secret.clone()),
            ("AWS_SHARED_CREDENTIALS_FILE", path(CREDENTIALS_FILE)),
            ("AWS_CONFIG_FILE", path(CONFIG_FILE)),
        ];
        // Hiding the config file must not lose the region the person chose.
        // The SDKs read AWS_REGION, the AWS CLI v1 AWS_DEFAULT_REGION: set both.
        let from_env = |name| std::env::var(name).ok().filter(|v| !v.is_empty());
        let (region, default_region) = (from_env("AWS_REGION"), from_env("AWS_DEFAULT_REGION"));
        let chosen = region
            .clone()
            .or_else(|| default_region.clone())
            .or_else(user_region);
        if let Some(chosen) = chosen {
            if region.is_none() {
                set.push(("AWS_REGION", SecretString::from(chosen.clone())));
            }
            if default_region.is_none() {
                set.push(("AWS_DEFAULT_REGION", SecretString::from(chosen)));
            }
        }
        Ok(ChildEnvironment {
            set,
            remove: SHADOWING,
        })
    }

    /// The container credentials document (as ECS serves it).
    fn document(&self, credential: &ReceivedCredential) -> Result<SecretString, String> {
        Ok(SecretString::from(
            serde_json::json!({
                "AccessKeyId": credential.field("access_key_id")?.expose_secret(),
                "SecretAccessKey": credential.field("secret_access_key")?.expose_secret(),
                "Token": credential.field("session_token")?.expose_secret(),
                "Expiration": credential.expires_at,
            })
            .to_string(),
        ))
    }

    fn files(
        &self,
        _credential: &ReceivedCredential,
        _endpoint: &ChildEndpoint<'_>,
    ) -> Result<Vec<ChildFile>, String> {
        Ok(vec![
            ChildFile {
                name: CREDENTIALS_FILE,
                contents: SecretString::from(String::new()),
            },
            ChildFile {
                name: CONFIG_FILE,
                contents: SecretString::from(String::new()),
            },
        ])
    }
}

/// The region of the profile the person had selected, from their AWS config
/// file (`AWS_CONFIG_FILE`, else `~/.aws/config`).
fn user_region() -> Option<String> {
    let file = std::env::var_os("AWS_CONFIG_FILE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".aws/config")))?;
    let text = std::fs::read_to_string(file).ok()?;
    let profile = std::env::var("AWS_PROFILE")
        .or_else(|_| std::env::var("AWS_DEFAULT_PROFILE"))
        .unwrap_or_else(|_| "default".into());
    region_in(&text, &profile)
}

fn region_in(config: &str, profile: &str) -> Option<String> {
    let wanted = if profile == "default" {
        "default".to_owned()
    } else {
        format!("profile {profile}")
    };
    let mut in_section = false;
    for line in config.lines() {
        let line = line.trim();
        if let Some(section) = line.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            in_section = section.trim() == wanted;
        } else if in_section {
            if let Some((key, value)) = line.split_once('=') {
                let value = value.trim();
                // A region is letters, digits and dashes; anything else is not one.
                if key.trim() == "region"
                    && !value.is_empty()
                    && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                {
                    return Some(value.to_owned());
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_what_the_container_provider_reads() {
        let credential = ReceivedCredential {
            expires_at: "2026-11-29T12:00:00Z".into(),
            fields: [
                ("access_key_id", "ASIAEXAMPLE"),
                ("secret_access_key", "s3cr3t"),
                ("session_token", "t0ken"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), SecretString::from(v.to_owned())))
            .collect(),
        };
        let text = ContainerCredentials.document(&credential).unwrap();
        let value: serde_json::Value = serde_json::from_str(text.expose_secret()).unwrap();
        assert_eq!(
            value,
            serde_json::json!({ "AccessKeyId": "ASIAEXAMPLE", "SecretAccessKey": "s3cr3t",
                                "Token": "t0ken", "Expiration": "2026-11-29T12:00:00Z" })
        );
    }

    #[test]
    fn the_selected_profile_keeps_its_region() {
        let config = "[default]\nregion = eu-west-1\n\n[profile dev]\noutput = json\nregion=us-east-2\n[profile odd]\nregion = $(rm -rf)\n";
        assert_eq!(region_in(config, "default").as_deref(), Some("eu-west-1"));
        assert_eq!(region_in(config, "dev").as_deref(), Some("us-east-2"));
        assert_eq!(region_in(config, "odd"), None);
        assert_eq!(region_in(config, "missing"), None);
    }
}
