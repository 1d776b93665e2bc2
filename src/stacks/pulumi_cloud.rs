//! Pulumi Cloud (or a self-hosted Pulumi Cloud's API) as a stack source: the
//! tags of `pulumi:ORG/PROJECT/STACK` are the `tags` of
//! `GET {url}/api/stacks/{org}/{project}/{stack}` (there is no documented read
//! of tags alone), asked with the broker's own access token
//! (`Authorization: token …`, `Accept: application/vnd.pulumi+8`). A 404 is an
//! unknown stack. The answer must name the stack exactly as it was asked for:
//! a differently spelled alias of a stack would otherwise slip past policy
//! rules written for its real name.

use std::collections::BTreeMap;

use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::{Stack, StackRef, StackSource, StackSourceError, StackTool};
use crate::http_client;

pub const DEFAULT_URL: &str = "https://api.pulumi.com";

/// A stack's document is small (names, version, tags); anything larger is
/// not what we asked for.
const MAX_STACK_BYTES: usize = 256 * 1024;

/// Pulumi Cloud's rule for tag names: `^[a-zA-Z0-9-_.:]{1,40}$`.
pub fn valid_tag_name(name: &str) -> bool {
    (1..=40).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

pub struct PulumiCloudSettings {
    /// The API's base URL (`https://api.pulumi.com`, not the console's).
    pub url: Url,
    pub token: SecretString,
    pub http: reqwest::Client,
}

pub struct PulumiCloud {
    settings: PulumiCloudSettings,
}

/// The fields of Pulumi Cloud's stack document (`AppStack`) that we read.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct StackDocument {
    org_name: String,
    project_name: String,
    stack_name: String,
    #[serde(default)]
    tags: Option<BTreeMap<String, String>>,
}

impl PulumiCloud {
    pub fn new(settings: PulumiCloudSettings) -> Self {
        PulumiCloud { settings }
    }

    fn stack_url(&self, reference: &StackRef) -> Url {
        let mut url = self.settings.url.clone();
        url.path_segments_mut()
            .expect("validated as an http(s) URL at start")
            .pop_if_empty()
            .extend(["api", "stacks", reference.organization()])
            .extend(reference.project())
            .push(reference.name());
        url
    }
}

/// The stack `document` describes, if it is the one asked for.
fn stack_from(reference: &StackRef, document: StackDocument) -> Option<Stack> {
    let named = (
        document.org_name.as_str(),
        Some(document.project_name.as_str()),
        document.stack_name.as_str(),
    );
    if named
        != (
            reference.organization(),
            reference.project(),
            reference.name(),
        )
    {
        tracing::warn!(
            stack = %reference,
            answered = %format!("{}/{}/{}", document.org_name, document.project_name, document.stack_name),
            "Pulumi Cloud answered for a differently spelled stack; ask for it by its exact name"
        );
        return None;
    }
    Some(Stack {
        reference: reference.clone(),
        tags: document.tags.unwrap_or_default(),
    })
}

#[async_trait::async_trait]
impl StackSource for PulumiCloud {
    async fn stack(&self, reference: &StackRef) -> Result<Option<Stack>, StackSourceError> {
        if reference.tool() != StackTool::Pulumi {
            return Ok(None);
        }
        let url = self.stack_url(reference);
        let mut authorization =
            HeaderValue::from_str(&format!("token {}", self.settings.token.expose_secret()))
                .map_err(|_| {
                    StackSourceError::Refused(
                        "the Pulumi access token holds characters no HTTP header may carry".into(),
                    )
                })?;
        authorization.set_sensitive(true);
        let request = self
            .settings
            .http
            .get(url.clone())
            .header(AUTHORIZATION, authorization)
            .header(ACCEPT, "application/vnd.pulumi+8")
            .header(CONTENT_TYPE, "application/json");
        let document: Option<StackDocument> =
            http_client::get_json(request, url.as_str(), MAX_STACK_BYTES)
                .await
                .map_err(|e| {
                    StackSourceError::from_fetch("Pulumi Cloud", e, "stacks.pulumi.token")
                })?;
        Ok(document.and_then(|document| stack_from(reference, document)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document(json: &str) -> StackDocument {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn the_documented_stack_response_gives_its_tags() {
        let reference = StackRef::parse("pulumi:acme/payments/prod").unwrap();
        let stack = stack_from(
            &reference,
            document(
                r#"{
                "orgName": "acme", "projectName": "payments", "stackName": "prod",
                "activeUpdate": "1f0c0c1e-0000-0000-0000-000000000000", "version": 42,
                "tags": { "backstage-component": "payments", "environment": "prod",
                          "pulumi:project": "payments", "gitHub:owner": "acme" }
            }"#,
            ),
        )
        .unwrap();
        assert_eq!(stack.tags["backstage-component"], "payments");
        assert_eq!(stack.tags["environment"], "prod");
        assert_eq!(stack.tags.len(), 4);

        let untagged = stack_from(
            &reference,
            document(r#"{"orgName":"acme","projectName":"payments","stackName":"prod"}"#),
        )
        .unwrap();
        assert!(untagged.tags.is_empty());
        let null_tags = stack_from(
            &reference,
            document(
                r#"{"orgName":"acme","projectName":"payments","stackName":"prod","tags":null}"#,
            ),
        )
        .unwrap();
        assert!(null_tags.tags.is_empty());
    }

    #[test]
    fn an_answer_for_another_spelling_of_the_stack_is_not_used() {
        let reference = StackRef::parse("pulumi:ACME/payments/prod").unwrap();
        let answer = document(
            r#"{"orgName":"acme","projectName":"payments","stackName":"prod","tags":{"backstage-component":"payments"}}"#,
        );
        assert!(stack_from(&reference, answer).is_none());
    }

    #[test]
    fn tag_values_that_are_not_strings_are_refused() {
        assert!(serde_json::from_str::<StackDocument>(
            r#"{"orgName":"a","projectName":"b","stackName":"c","tags":{"x":1}}"#
        )
        .is_err());
    }

    #[test]
    fn the_stack_url_keeps_a_self_hosted_path_prefix() {
        let source = PulumiCloud::new(PulumiCloudSettings {
            url: Url::parse("https://pulumi.example.com/api-gateway/").unwrap(),
            token: SecretString::from("pul-x"),
            http: reqwest::Client::new(),
        });
        let reference = StackRef::parse("pulumi:acme/payments/prod").unwrap();
        assert_eq!(
            source.stack_url(&reference).as_str(),
            "https://pulumi.example.com/api-gateway/api/stacks/acme/payments/prod"
        );
    }

    #[test]
    fn tag_names_follow_pulumi_cloud() {
        for ok in [
            "backstage-component",
            "environment",
            "a:b.c_d-e",
            &"x".repeat(40),
        ] {
            assert!(valid_tag_name(ok), "{ok}");
        }
        for bad in ["", "backstage.io/component", "has space", &"x".repeat(41)] {
            assert!(!valid_tag_name(bad), "{bad}");
        }
    }
}
