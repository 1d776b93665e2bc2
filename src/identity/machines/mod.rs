//! Machine callers: each CI, deployment or cluster issuer's mapping from its
//! verified claims to a catalog component and a [`PipelineRun`].
//!
//! | kind | the principal is | bound by |
//! | --- | --- | --- |
//! | `github-actions` | the component annotated `github.com/project-slug` = `repository` | `repository_owner_id` pinned in config, the component's `stackpass.dev/github-repository-id` = `repository_id`, an allow-list of events |
//! | `gitlab-ci` | the component annotated `gitlab.com/project-slug` = `project_path` | `namespace_id` pinned, `stackpass.dev/gitlab-project-id` = `project_id`, an allow-list of pipeline sources |
//! | `pulumi-deployments` | the component the run's stack names (its component tag) | the stack in `sub`: credentials for that stack only |
//! | `hcp-terraform` | the component the run's workspace names | `terraform_organization_id` pinned; the workspace: that stack only |
//! | `kubernetes` | the component configured for the service account | the explicit map |
//!
//! Names (slugs, paths) find the component; ids, which survive renames and
//! are never reused, decide whether the token may be it.

mod github;
mod gitlab;
mod kubernetes;
mod pulumi;
mod terraform;

use std::sync::Arc;

pub use github::GithubActionsMapping;
pub use gitlab::GitlabCiMapping;
pub use kubernetes::KubernetesMapping;
pub use pulumi::PulumiDeploymentsMapping;
pub use terraform::HcpTerraformMapping;

use super::{IdentityError, MappedPrincipal, PipelineRun, PrincipalKind};
use crate::catalog::{Catalog, CatalogError, EntityRef};
use crate::stacks::{ComponentTags, StackRef, StackSource};

/// The annotation stackpass reads a GitHub repository's numeric id from.
pub const GITHUB_REPOSITORY_ID_ANNOTATION: &str = "stackpass.dev/github-repository-id";
/// The annotation stackpass reads a GitLab project's numeric id from.
pub const GITLAB_PROJECT_ID_ANNOTATION: &str = "stackpass.dev/gitlab-project-id";

/// GitHub events whose runs execute in the base repository's context, with its
/// identity, for code a fork may have written: never trusted, whatever the
/// configuration says.
pub const GITHUB_REFUSED_EVENTS: &[&str] = &["pull_request_target", "workflow_run"];
/// What a GitHub Actions issuer trusts unless configured otherwise. Not
/// `pull_request`: with "send write tokens to workflows from fork pull
/// requests" a fork's pull request gets a token whose claims are the base
/// repository's, indistinguishable from the base's own.
pub const GITHUB_DEFAULT_EVENTS: &[&str] = &[
    "push",
    "workflow_dispatch",
    "schedule",
    "release",
    "merge_group",
    "deployment",
];
/// GitLab pipeline sources that run a fork's merge request code in the parent
/// project, with its identity.
pub const GITLAB_REFUSED_SOURCES: &[&str] = &["merge_request_event", "external_pull_request_event"];
pub const GITLAB_DEFAULT_SOURCES: &[&str] = &[
    "push",
    "web",
    "schedule",
    "api",
    "trigger",
    "pipeline",
    "parent_pipeline",
];

fn refused(reason: impl Into<String>) -> IdentityError {
    IdentityError::PipelineRefused(reason.into())
}

fn nobody(reason: impl Into<String>) -> IdentityError {
    IdentityError::NoCatalogEntity(reason.into())
}

fn invalid(reason: impl Into<String>) -> IdentityError {
    IdentityError::InvalidClaims(reason.into())
}

fn catalog_down(error: CatalogError) -> IdentityError {
    IdentityError::LookupUnavailable(error.to_string())
}

/// A claim value that is logged, audited and used in a catalog query: printable
/// and of a sane length.
fn plain<'a>(name: &str, value: &'a str) -> Result<&'a str, IdentityError> {
    if value.is_empty() || value.len() > 256 || value.chars().any(char::is_control) {
        return Err(invalid(format!(
            "the {name} claim must be 1 to 256 printable characters"
        )));
    }
    Ok(value)
}

/// The one component whose annotation `key` is `value`, if its id annotation
/// is `id`: the slug finds it, the id (which survives renames and is never
/// reused) decides. Two components with the same slug trust neither.
async fn component_by_annotation(
    catalog: &dyn Catalog,
    key: &str,
    value: &str,
    id_key: &str,
    id: &str,
) -> Result<EntityRef, IdentityError> {
    let mut found = catalog
        .annotated("component", key, value)
        .await
        .map_err(catalog_down)?;
    // Whatever the catalog answers, only a component can be a pipeline's caller.
    found.retain(|e| e.reference.kind() == "component");
    let entity = match found.as_slice() {
        [] => {
            return Err(nobody(format!(
                "no catalog component has the annotation {key}: {value}; add it (and {id_key}: {id}) to the component this pipeline deploys"
            )))
        }
        [one] => one,
        [first, second, ..] => {
            return Err(nobody(format!(
                "{} and {} both have the annotation {key}: {value}, so neither is trusted; keep it on one component",
                first.reference, second.reference
            )))
        }
    };
    match entity.annotations.get(id_key) {
        Some(recorded) if recorded.trim() == id => Ok(entity.reference.clone()),
        Some(recorded) => Err(refused(format!(
            "{} records {id_key}: {}, but this token's is {id}: the repository was deleted and recreated, or another one took its name; if this is the repository {} deploys, update the annotation",
            entity.reference,
            recorded.escape_debug(),
            entity.reference
        ))),
        None => Err(refused(format!(
            "{} has {key}: {value} but no {id_key} annotation; add {id_key}: {id} so a later repository with the same name cannot act as it",
            entity.reference
        ))),
    }
}

/// The component a stack's tags name, read from the trusted stack source
/// (the same tag the broker's resolver reads).
pub struct StackComponents {
    pub stacks: Arc<dyn StackSource>,
    pub component_tags: ComponentTags,
}

impl StackComponents {
    /// The caller a run bound to one stack acts as: a service, the component
    /// that stack's component tag names.
    pub(super) async fn principal_of(
        &self,
        run: PipelineRun,
    ) -> Result<MappedPrincipal, IdentityError> {
        let stack = run
            .bound_stack
            .as_ref()
            .expect("a stack-bound mapping sets the run's stack");
        Ok(MappedPrincipal {
            subject: self.component_of(stack).await?,
            kind: PrincipalKind::Service,
            actors: Vec::new(),
            pipeline: Some(run),
        })
    }

    async fn component_of(&self, stack: &StackRef) -> Result<EntityRef, IdentityError> {
        let found = self
            .stacks
            .stack(stack)
            .await
            .map_err(|e| IdentityError::LookupUnavailable(e.to_string()))?
            .ok_or_else(|| nobody(format!("the stack source does not know {stack}")))?;
        let component_tag = self.component_tags.for_tool(stack.tool());
        let value = found.tags.get(component_tag).ok_or_else(|| {
            nobody(format!(
                "{stack} has no {component_tag} tag, so no component owns its runs"
            ))
        })?;
        EntityRef::parse(value, Some("component"), "default")
            .ok()
            .filter(|c| c.kind() == "component")
            .ok_or_else(|| {
                nobody(format!(
                    "{stack}'s {component_tag} tag is not a component reference"
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::AnnotatedEntity;

    /// A catalog that cannot be reached.
    struct Down;

    #[async_trait::async_trait]
    impl Catalog for Down {
        async fn owner_of(&self, _: &EntityRef) -> Result<Option<EntityRef>, CatalogError> {
            Err(CatalogError::Unavailable("connection refused".into()))
        }
        async fn groups_of(&self, _: &EntityRef) -> Result<Vec<EntityRef>, CatalogError> {
            Err(CatalogError::Unavailable("connection refused".into()))
        }
        async fn annotated(
            &self,
            _: &str,
            _: &str,
            _: &str,
        ) -> Result<Vec<AnnotatedEntity>, CatalogError> {
            Err(CatalogError::Unavailable("connection refused".into()))
        }
    }

    #[tokio::test]
    async fn an_unreachable_catalog_is_unavailable_not_a_refusal() {
        let error = component_by_annotation(&Down, "k", "v", "id", "1")
            .await
            .unwrap_err();
        assert!(error.is_unavailable(), "{error}");
    }

    #[tokio::test]
    async fn two_components_with_one_slug_trust_neither() {
        let catalog = test_support::catalog(
            r#"
            [[components]]
            ref = "component:default/a"
            owner = "group:default/x"
            annotations = { "github.com/project-slug" = "acme/r", "stackpass.dev/github-repository-id" = "1" }
            [[components]]
            ref = "component:default/b"
            owner = "group:default/x"
            annotations = { "github.com/project-slug" = "ACME/R", "stackpass.dev/github-repository-id" = "1" }
            "#,
        );
        let error = component_by_annotation(
            catalog.as_ref(),
            "github.com/project-slug",
            "acme/r",
            GITHUB_REPOSITORY_ID_ANNOTATION,
            "1",
        )
        .await
        .unwrap_err();
        assert!(
            matches!(error, IdentityError::NoCatalogEntity(m) if m.contains("neither is trusted"))
        );
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    //! A catalog and a stack source built from text, for the mappings' tests.

    use std::sync::Arc;

    use crate::catalog::StaticCatalog;
    use crate::identity::VerifiedClaims;
    use crate::stacks::StaticStackRegistry;

    pub fn claims(value: serde_json::Value) -> VerifiedClaims {
        serde_json::from_value(value).unwrap()
    }

    pub fn catalog(text: &str) -> Arc<StaticCatalog> {
        Arc::new(StaticCatalog::parse(text).unwrap())
    }

    pub fn stacks(text: &str) -> Arc<StaticStackRegistry> {
        Arc::new(StaticStackRegistry::parse(text).unwrap())
    }
}
