//! HCP Terraform (or Terraform Enterprise) as a stack source: the tags of
//! `terraform:ORG/WORKSPACE` are the workspace's effective key-value tag
//! bindings, its own and those it inherits from its project.
//!
//! Two JSON:API requests with the broker's token (`Authorization: Bearer …`):
//! `GET {url}/api/v2/organizations/{org}/workspaces/{name}` for the workspace's
//! id and project, then `GET {url}/api/v2/workspaces/{id}/effective-tag-bindings`
//! (not paginated: every binding comes at once). A 404 means "no such
//! workspace" and equally "this token may not see it": both are an unknown
//! stack, never a stack without tags.
//!
//! Who may write a tag matters: a workspace admin can bind a key the project
//! already binds, and the workspace's value then wins (unless the organization
//! reserved the key with overrides disabled). So `project_tags` lists the keys
//! whose value counts only when inherited from the workspace's project (an
//! effective binding with `links.inherited-from` naming that project); a
//! workspace whose own binding sets one of them is refused as unknown, logged
//! with the reason. By default that is the component tag, so ownership comes
//! from whoever manages the project.
//!
//! Flat workspace tags (`tag-names`, keys without values, from before key-value
//! tags) are ignored: they cannot name a component or an environment, any
//! workspace writer can add them, and read as `key = ""` they could only
//! confuse a selector.

use std::collections::BTreeMap;

use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION};
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::{Stack, StackRef, StackSource, StackSourceError, StackTool};
use crate::http_client;

pub const DEFAULT_URL: &str = "https://app.terraform.io";

const JSON_API: &str = "application/vnd.api+json";
const MAX_WORKSPACE_BYTES: usize = 512 * 1024;
const MAX_BINDINGS_BYTES: usize = 1024 * 1024;

/// HCP Terraform tag keys: no `/` (unlike `backstage.io/component`); we accept
/// letters, digits, `-`, `_`, `.` and `:`, up to 128 characters.
pub fn valid_tag_key(key: &str) -> bool {
    (1..=128).contains(&key.len())
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

pub struct HcpTerraformSettings {
    /// `https://app.terraform.io`, or a Terraform Enterprise address.
    pub url: Url,
    pub token: SecretString,
    pub http: reqwest::Client,
    /// Keys whose value counts only when inherited from the project.
    pub project_tags: Vec<String>,
}

pub struct HcpTerraform {
    settings: HcpTerraformSettings,
}

#[derive(Debug, serde::Deserialize)]
struct Document<T> {
    data: T,
}

#[derive(Debug, serde::Deserialize)]
struct Workspace {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    attributes: WorkspaceAttributes,
    #[serde(default)]
    relationships: WorkspaceRelationships,
}

#[derive(Debug, serde::Deserialize)]
struct WorkspaceAttributes {
    name: String,
}

#[derive(Debug, Default, serde::Deserialize)]
struct WorkspaceRelationships {
    organization: Option<Relationship>,
    project: Option<Relationship>,
}

#[derive(Debug, serde::Deserialize)]
struct Relationship {
    data: Option<ResourceId>,
}

#[derive(Debug, serde::Deserialize)]
struct ResourceId {
    id: String,
}

#[derive(Debug, serde::Deserialize)]
struct Binding {
    #[serde(rename = "type")]
    kind: String,
    attributes: BindingAttributes,
    #[serde(default)]
    links: Option<BindingLinks>,
}

#[derive(Debug, serde::Deserialize)]
struct BindingAttributes {
    key: String,
    #[serde(default)]
    value: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
struct BindingLinks {
    /// The project's path, e.g. `/api/v2/projects/prj-Lg4wmRZEpDUf8ZhB`.
    #[serde(rename = "inherited-from")]
    inherited_from: Option<String>,
}

/// Why a workspace's answer is not used (it is then an unknown stack).
#[derive(Debug, PartialEq, Eq)]
struct Refusal(String);

/// The workspace `workspace` describes, if it is the one asked for: its id and
/// project id.
fn check_workspace(reference: &StackRef, workspace: &Workspace) -> Result<(), Refusal> {
    if workspace.kind != "workspaces" {
        return Err(Refusal(format!(
            "the answer is a {:?}, not a workspace",
            workspace.kind
        )));
    }
    if workspace.attributes.name != reference.name() {
        return Err(Refusal(format!(
            "the answer names workspace {:?}; ask for it by its exact name",
            workspace.attributes.name
        )));
    }
    let organization = workspace
        .relationships
        .organization
        .as_ref()
        .and_then(|r| r.data.as_ref())
        .map(|d| d.id.as_str());
    if organization.is_some_and(|o| o != reference.organization()) {
        return Err(Refusal(format!(
            "the answer belongs to organization {:?}",
            organization.unwrap_or_default()
        )));
    }
    Ok(())
}

/// The tags of a workspace in project `project` from its effective bindings,
/// refusing a workspace that sets a project-only key itself.
fn tags_from(
    bindings: Vec<Binding>,
    project: Option<&str>,
    project_tags: &[String],
) -> Result<BTreeMap<String, String>, Refusal> {
    let mut tags = BTreeMap::new();
    for binding in bindings {
        if binding.kind != "effective-tag-bindings" {
            return Err(Refusal(format!(
                "a binding is a {:?}, not an effective tag binding",
                binding.kind
            )));
        }
        let key = binding.attributes.key;
        let inherited_from = binding.links.and_then(|l| l.inherited_from);
        let from_project = match (&inherited_from, project) {
            (None, _) => false,
            (Some(path), Some(project)) if names_project(path, project) => true,
            (Some(path), _) => {
                return Err(Refusal(format!(
                    "tag {key:?} is inherited from {path:?}, which is not the workspace's project"
                )))
            }
        };
        if !from_project && project_tags.contains(&key) {
            return Err(Refusal(format!(
                "tag {key:?} is bound on the workspace itself, but it only counts when inherited from the project (stacks.terraform.project_tags); bind it on the project and remove the workspace's own binding, or reserve the key with overrides disabled"
            )));
        }
        let value = binding.attributes.value.unwrap_or_default();
        if tags.insert(key.clone(), value).is_some() {
            return Err(Refusal(format!("tag {key:?} is bound twice")));
        }
    }
    Ok(tags)
}

/// Whether an `inherited-from` link names project `id` (`/api/v2/projects/{id}`).
fn names_project(link: &str, id: &str) -> bool {
    link.trim_end_matches('/')
        .strip_suffix(id)
        .is_some_and(|rest| rest.ends_with("/projects/"))
}

impl HcpTerraform {
    pub fn new(settings: HcpTerraformSettings) -> Self {
        HcpTerraform { settings }
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.settings.url.clone();
        url.path_segments_mut()
            .expect("validated as an http(s) URL at start")
            .pop_if_empty()
            .extend(["api", "v2"])
            .extend(segments);
        url
    }

    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        url: Url,
        limit: usize,
    ) -> Result<Option<T>, StackSourceError> {
        let mut authorization =
            HeaderValue::from_str(&format!("Bearer {}", self.settings.token.expose_secret()))
                .map_err(|_| {
                    StackSourceError::Refused(
                        "the HCP Terraform token holds characters no HTTP header may carry".into(),
                    )
                })?;
        authorization.set_sensitive(true);
        let request = self
            .settings
            .http
            .get(url.clone())
            .header(AUTHORIZATION, authorization)
            .header(ACCEPT, JSON_API);
        http_client::get_json(request, url.as_str(), limit)
            .await
            .map_err(|e| StackSourceError::from_fetch("HCP Terraform", e, "stacks.terraform.token"))
    }
}

#[async_trait::async_trait]
impl StackSource for HcpTerraform {
    async fn stack(&self, reference: &StackRef) -> Result<Option<Stack>, StackSourceError> {
        if reference.tool() != StackTool::Terraform {
            return Ok(None);
        }
        let workspace_url = self.url(&[
            "organizations",
            reference.organization(),
            "workspaces",
            reference.name(),
        ]);
        let Some(Document { data: workspace }) = self
            .get::<Document<Workspace>>(workspace_url, MAX_WORKSPACE_BYTES)
            .await?
        else {
            return Ok(None);
        };
        let refused = |Refusal(reason)| {
            tracing::warn!(stack = %reference, reason = %reason, "HCP Terraform workspace refused as a stack");
            Ok(None)
        };
        if let Err(refusal) = check_workspace(reference, &workspace) {
            return refused(refusal);
        }
        let bindings_url = self.url(&["workspaces", &workspace.id, "effective-tag-bindings"]);
        // Deleted (or access revoked) between the two requests: unknown, as above.
        let Some(Document { data: bindings }) = self
            .get::<Document<Vec<Binding>>>(bindings_url, MAX_BINDINGS_BYTES)
            .await?
        else {
            return Ok(None);
        };
        let project = workspace
            .relationships
            .project
            .as_ref()
            .and_then(|r| r.data.as_ref())
            .map(|d| d.id.as_str());
        match tags_from(bindings, project, &self.settings.project_tags) {
            Ok(tags) => Ok(Some(Stack {
                reference: reference.clone(),
                tags,
            })),
            Err(refusal) => refused(refusal),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented sample of the effective-tag-bindings endpoint, with the
    /// component tag inherited from the project.
    const EFFECTIVE: &str = r#"{
      "data": [
        { "id": "07cc44202a430fc2", "type": "effective-tag-bindings",
          "attributes": { "key": "costcenter", "value": "123" } },
        { "id": "f8b11951f98e11f8", "type": "effective-tag-bindings",
          "attributes": { "key": "backstage-component", "value": "payments" },
          "links": { "inherited-from": "/api/v2/projects/prj-Lg4wmRZEpDUf8ZhB" } }
      ]
    }"#;

    fn bindings(json: &str) -> Vec<Binding> {
        serde_json::from_str::<Document<Vec<Binding>>>(json)
            .unwrap()
            .data
    }

    fn project_only() -> Vec<String> {
        vec!["backstage-component".into()]
    }

    #[test]
    fn inherited_and_own_bindings_are_the_tags() {
        let tags = tags_from(
            bindings(EFFECTIVE),
            Some("prj-Lg4wmRZEpDUf8ZhB"),
            &project_only(),
        )
        .unwrap();
        assert_eq!(tags["backstage-component"], "payments");
        assert_eq!(tags["costcenter"], "123");
    }

    #[test]
    fn a_workspace_override_of_a_project_only_key_is_refused() {
        let overridden = r#"{"data":[
            {"id":"1","type":"effective-tag-bindings","attributes":{"key":"backstage-component","value":"payments"}}
        ]}"#;
        let err = tags_from(bindings(overridden), Some("prj-1"), &project_only()).unwrap_err();
        assert!(err.0.contains("project_tags"), "{err:?}");
        // The same binding is fine where the site trusts workspace admins.
        assert!(tags_from(bindings(overridden), Some("prj-1"), &[]).is_ok());
    }

    #[test]
    fn a_binding_inherited_from_another_project_is_refused() {
        let err = tags_from(bindings(EFFECTIVE), Some("prj-other"), &project_only()).unwrap_err();
        assert!(err.0.contains("not the workspace's project"), "{err:?}");
        let err = tags_from(bindings(EFFECTIVE), None, &project_only()).unwrap_err();
        assert!(err.0.contains("not the workspace's project"), "{err:?}");
        assert!(!names_project("/api/v2/projects/xprj-1", "prj-1"));
        assert!(names_project("/api/v2/projects/prj-1", "prj-1"));
        assert!(names_project(
            "https://tfe.example.com/api/v2/projects/prj-1/",
            "prj-1"
        ));
    }

    #[test]
    fn a_missing_value_is_empty_and_a_duplicate_key_is_refused() {
        let key_only =
            r#"{"data":[{"id":"1","type":"effective-tag-bindings","attributes":{"key":"team"}}]}"#;
        assert_eq!(
            tags_from(bindings(key_only), None, &[]).unwrap()["team"],
            ""
        );
        let twice = r#"{"data":[
            {"id":"1","type":"effective-tag-bindings","attributes":{"key":"a","value":"1"}},
            {"id":"2","type":"effective-tag-bindings","attributes":{"key":"a","value":"2"}}]}"#;
        assert!(tags_from(bindings(twice), None, &[]).is_err());
    }

    #[test]
    fn the_workspace_must_be_the_one_asked_for() {
        let workspace = |json: &str| {
            serde_json::from_str::<Document<Workspace>>(json)
                .unwrap()
                .data
        };
        let doc = r#"{"data":{"id":"ws-6jrRyVDv1J8zQMB5","type":"workspaces",
            "attributes":{"name":"payments-prod","tag-names":["flat"]},
            "relationships":{"organization":{"data":{"id":"acme","type":"organizations"}},
                             "project":{"data":{"id":"prj-1","type":"projects"}}}}}"#;
        let reference = StackRef::parse("terraform:acme/payments-prod").unwrap();
        assert_eq!(check_workspace(&reference, &workspace(doc)), Ok(()));
        let other = StackRef::parse("terraform:acme/Payments-Prod").unwrap();
        assert!(check_workspace(&other, &workspace(doc)).is_err());
        let other_org = StackRef::parse("terraform:globex/payments-prod").unwrap();
        assert!(check_workspace(&other_org, &workspace(doc)).is_err());
    }

    #[test]
    fn urls_follow_the_api_under_any_address() {
        let source = HcpTerraform::new(HcpTerraformSettings {
            url: Url::parse("https://tfe.example.com").unwrap(),
            token: SecretString::from("t"),
            http: reqwest::Client::new(),
            project_tags: Vec::new(),
        });
        assert_eq!(
            source
                .url(&["organizations", "acme", "workspaces", "payments-prod"])
                .as_str(),
            "https://tfe.example.com/api/v2/organizations/acme/workspaces/payments-prod"
        );
        assert_eq!(
            source
                .url(&["workspaces", "ws-1/../x", "effective-tag-bindings"])
                .as_str(),
            "https://tfe.example.com/api/v2/workspaces/ws-1%2F..%2Fx/effective-tag-bindings"
        );
    }

    #[test]
    fn tag_keys_follow_hcp_terraform() {
        assert!(valid_tag_key("backstage-component"));
        assert!(!valid_tag_key("backstage.io/component"));
        assert!(!valid_tag_key(""));
    }
}
