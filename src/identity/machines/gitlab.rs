//! GitLab CI ID tokens (`id_tokens:` in `.gitlab-ci.yml`; `iss` is the GitLab
//! instance, e.g. `https://gitlab.com`).
//!
//! The project's namespace must be one of the configured `namespace_id`s;
//! the component is the one annotated `gitlab.com/project-slug` with the
//! token's `project_path`, and it must record the token's `project_id` in
//! `stackpass.dev/gitlab-project-id`. Pipelines a fork's merge request can
//! start in the parent project (`merge_request_event`,
//! `external_pull_request_event`) are never trusted.

use std::sync::Arc;

use super::{
    component_by_annotation, invalid, plain, refused, GITLAB_PROJECT_ID_ANNOTATION,
    GITLAB_REFUSED_SOURCES,
};
use crate::catalog::Catalog;
use crate::identity::{
    ClaimMapping, IdentityError, MappedPrincipal, PipelineRun, PipelineSystem, PrincipalKind,
    VerifiedClaims,
};

pub const PROJECT_SLUG_ANNOTATION: &str = "gitlab.com/project-slug";

pub struct GitlabCiMapping {
    pub catalog: Arc<dyn Catalog>,
    /// `namespace_id`s whose projects may be callers.
    pub namespace_ids: Vec<String>,
    /// `pipeline_source`s trusted; [`GITLAB_REFUSED_SOURCES`] never are.
    pub sources: Vec<String>,
    /// The instance's web URL (its issuer), for the audit's run link.
    pub web_url: String,
}

impl GitlabCiMapping {
    fn check<'a>(
        &self,
        claims: &'a VerifiedClaims,
    ) -> Result<(&'a str, String, PipelineRun), IdentityError> {
        let project = plain("project_path", claims.required_text("project_path")?)?;
        if !project.contains('/') {
            return Err(invalid("the project_path claim is not NAMESPACE/PROJECT"));
        }
        let project_id = claims
            .id("project_id")?
            .ok_or_else(|| invalid("the project_id claim is missing"))?;
        let namespace_id = claims
            .id("namespace_id")?
            .ok_or_else(|| invalid("the namespace_id claim is missing"))?;
        let sub = claims.required_text("sub")?;
        if let Some(rest) = sub.strip_prefix("project_path:") {
            if rest.split_once(':').map(|(p, _)| p) != Some(project) {
                return Err(invalid("sub names another project than project_path"));
            }
        }
        if !self.namespace_ids.contains(&namespace_id) {
            return Err(refused(format!(
                "{project}'s namespace (namespace_id {namespace_id}) is not one this issuer trusts (namespace_ids); a fork lives in another namespace and never gets its parent's credentials"
            )));
        }
        let source = plain("pipeline_source", claims.required_text("pipeline_source")?)?;
        if GITLAB_REFUSED_SOURCES.contains(&source) {
            return Err(refused(format!(
                "{source} pipelines can run a fork's code with the parent project's identity, so they are never trusted"
            )));
        }
        if !self.sources.iter().any(|s| s == source) {
            return Err(refused(format!(
                "pipeline source {source} is not trusted by this issuer (pipeline_sources: {})",
                self.sources.join(", ")
            )));
        }
        let mut run = PipelineRun::new(PipelineSystem::GitlabCi);
        run.run_id = claims.id("pipeline_id")?;
        run.run_url = run.run_id.as_ref().map(|id| {
            format!(
                "{}/{project}/-/pipelines/{id}",
                self.web_url.trim_end_matches('/')
            )
        });
        run.repository = Some(project.to_owned());
        run.git_ref = claims
            .text("ref")?
            .map(|r| plain("ref", r).map(str::to_owned))
            .transpose()?;
        run.workflow = claims.id("job_id")?.map(|job| format!("job {job}"));
        Ok((project, project_id, run))
    }
}

#[async_trait::async_trait]
impl ClaimMapping for GitlabCiMapping {
    async fn principal(&self, claims: &VerifiedClaims) -> Result<MappedPrincipal, IdentityError> {
        let (project, project_id, run) = self.check(claims)?;
        let subject = component_by_annotation(
            self.catalog.as_ref(),
            PROJECT_SLUG_ANNOTATION,
            project,
            GITLAB_PROJECT_ID_ANNOTATION,
            &project_id,
        )
        .await?;
        Ok(MappedPrincipal {
            subject,
            kind: PrincipalKind::Service,
            actors: Vec::new(),
            pipeline: Some(run),
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::test_support::{catalog, claims};
    use super::super::GITLAB_DEFAULT_SOURCES;
    use super::*;

    fn mapping() -> GitlabCiMapping {
        GitlabCiMapping {
            catalog: catalog(
                r#"
                [[components]]
                ref = "component:default/payments"
                owner = "group:default/team-payments"
                annotations = { "gitlab.com/project-slug" = "acme/payments", "stackpass.dev/gitlab-project-id" = "22" }
                "#,
            ),
            namespace_ids: vec!["5".into()],
            sources: GITLAB_DEFAULT_SOURCES
                .iter()
                .map(|s| s.to_string())
                .collect(),
            web_url: "https://gitlab.example.com".into(),
        }
    }

    async fn map(overrides: serde_json::Value) -> Result<MappedPrincipal, IdentityError> {
        let mut token = json!({
            "sub": "project_path:acme/payments:ref_type:branch:ref:main",
            "project_path": "acme/payments",
            "project_id": "22",
            "namespace_id": "5",
            "namespace_path": "acme",
            "pipeline_id": "900",
            "pipeline_source": "push",
            "job_id": "901",
            "ref": "main",
            "ref_type": "branch",
        });
        for (k, v) in overrides.as_object().unwrap() {
            token[k] = v.clone();
        }
        mapping().principal(&claims(token)).await
    }

    #[tokio::test]
    async fn the_annotated_project_is_the_caller() {
        let mapped = map(json!({})).await.unwrap();
        assert_eq!(mapped.subject.to_string(), "component:default/payments");
        let run = mapped.pipeline.unwrap();
        assert_eq!(
            run.run_url.as_deref(),
            Some("https://gitlab.example.com/acme/payments/-/pipelines/900")
        );
    }

    #[tokio::test]
    async fn ids_namespaces_and_sources_bind_it() {
        assert!(matches!(
            map(json!({ "project_id": "23" })).await,
            Err(IdentityError::PipelineRefused(_))
        ));
        assert!(matches!(
            map(json!({ "namespace_id": "6" })).await,
            Err(IdentityError::PipelineRefused(_))
        ));
        for source in ["merge_request_event", "external_pull_request_event", "chat"] {
            assert!(matches!(
                map(json!({ "pipeline_source": source })).await,
                Err(IdentityError::PipelineRefused(_))
            ));
        }
        assert!(matches!(
            map(json!({ "sub": "project_path:acme/other:ref_type:branch:ref:main" })).await,
            Err(IdentityError::InvalidClaims(_))
        ));
    }
}
