//! HCP Terraform workload identity tokens (`iss https://app.terraform.io` or a
//! Terraform Enterprise host, `aud` what the workspace's
//! `TFC_WORKLOAD_IDENTITY_AUDIENCE` says, `sub
//! organization:ORG:project:PROJECT:workspace:WORKSPACE:run_phase:PHASE`).
//!
//! The organization must be one of the configured
//! `terraform_organization_id`s (ids survive renames). The token is for one
//! phase of one run of one workspace: the caller is the component the
//! workspace's stack (`terraform:ORG/WORKSPACE`) names, bound to that stack,
//! and the phase (`plan` or `apply`) is what the policy can limit.

use super::{invalid, plain, refused, StackComponents};
use crate::identity::{
    ClaimMapping, IdentityError, MappedPrincipal, PipelineRun, PipelineSystem, RunPhase,
    VerifiedClaims,
};
use crate::stacks::StackRef;

pub struct HcpTerraformMapping {
    pub stacks: StackComponents,
    /// `terraform_organization_id`s (`org-…`) trusted.
    pub organization_ids: Vec<String>,
    /// The web URL of runs (the issuer), for the audit's run link.
    pub web_url: String,
}

impl HcpTerraformMapping {
    fn check(&self, claims: &VerifiedClaims) -> Result<PipelineRun, IdentityError> {
        let org = plain(
            "terraform_organization_name",
            claims.required_text("terraform_organization_name")?,
        )?;
        let org_id = plain(
            "terraform_organization_id",
            claims.required_text("terraform_organization_id")?,
        )?;
        let workspace = plain(
            "terraform_workspace_name",
            claims.required_text("terraform_workspace_name")?,
        )?;
        let phase_text = plain(
            "terraform_run_phase",
            claims.required_text("terraform_run_phase")?,
        )?;
        let run_id = plain(
            "terraform_run_id",
            claims.required_text("terraform_run_id")?,
        )?;
        let sub = claims.required_text("sub")?;
        let parts: Vec<&str> = sub.split(':').collect();
        match parts.as_slice() {
            ["organization", o, "project", _, "workspace", w, "run_phase", p]
                if *o == org && *w == workspace && *p == phase_text => {}
            _ => {
                return Err(invalid(
                    "sub is not organization:ORG:project:PROJECT:workspace:WORKSPACE:run_phase:PHASE for the token's own organization, workspace and phase",
                ))
            }
        }
        if !self.organization_ids.iter().any(|id| id == org_id) {
            return Err(refused(format!(
                "HCP Terraform organization {org} ({org_id}) is not one this issuer trusts (organization_ids)"
            )));
        }
        let phase = RunPhase::parse(phase_text)
            .filter(|p| matches!(p, RunPhase::Plan | RunPhase::Apply))
            .ok_or_else(|| {
                refused(format!(
                    "run phase {phase_text:?} is neither plan nor apply"
                ))
            })?;
        let stack = StackRef::parse(&format!("terraform:{org}/{workspace}"))
            .map_err(|e| invalid(format!("the workspace is not a stack name: {e}")))?;
        let mut run = PipelineRun::new(PipelineSystem::HcpTerraform);
        run.run_url = Some(format!(
            "{}/app/{org}/workspaces/{workspace}/runs/{run_id}",
            self.web_url.trim_end_matches('/')
        ));
        run.run_id = Some(run_id.to_owned());
        run.phase = Some(phase);
        run.workflow = Some(workspace.to_owned());
        run.bound_stack = Some(stack);
        Ok(run)
    }
}

#[async_trait::async_trait]
impl ClaimMapping for HcpTerraformMapping {
    async fn principal(&self, claims: &VerifiedClaims) -> Result<MappedPrincipal, IdentityError> {
        self.stacks.principal_of(self.check(claims)?).await
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::test_support::{claims, stacks};
    use super::*;

    fn mapping() -> HcpTerraformMapping {
        HcpTerraformMapping {
            stacks: StackComponents {
                stacks: stacks(
                    r#"
                    [[stacks]]
                    ref = "terraform:acme/payments-prod"
                    tags = { "backstage.io/component" = "payments" }
                    "#,
                ),
                component_tags: crate::stacks::ComponentTags::same("backstage.io/component"),
            },
            organization_ids: vec!["org-AAA".into()],
            web_url: "https://app.terraform.io".into(),
        }
    }

    fn token(phase: &str) -> serde_json::Value {
        json!({
            "sub": format!("organization:acme:project:Default Project:workspace:payments-prod:run_phase:{phase}"),
            "terraform_organization_id": "org-AAA",
            "terraform_organization_name": "acme",
            "terraform_project_id": "prj-1",
            "terraform_project_name": "Default Project",
            "terraform_workspace_id": "ws-1",
            "terraform_workspace_name": "payments-prod",
            "terraform_full_workspace": "organization:acme:project:Default Project:workspace:payments-prod",
            "terraform_run_id": "run-123",
            "terraform_run_phase": phase,
        })
    }

    #[tokio::test]
    async fn the_workspace_names_the_component_and_binds_the_token() {
        let mapped = mapping().principal(&claims(token("plan"))).await.unwrap();
        assert_eq!(mapped.subject.to_string(), "component:default/payments");
        let run = mapped.pipeline.unwrap();
        assert_eq!(run.phase, Some(RunPhase::Plan));
        assert_eq!(
            run.bound_stack.unwrap().to_string(),
            "terraform:acme/payments-prod"
        );
        assert_eq!(
            run.run_url.as_deref(),
            Some("https://app.terraform.io/app/acme/workspaces/payments-prod/runs/run-123")
        );
    }

    #[tokio::test]
    async fn foreign_organizations_and_odd_phases_are_refused() {
        let mut foreign = token("apply");
        foreign["terraform_organization_id"] = json!("org-BBB");
        assert!(matches!(
            mapping().principal(&claims(foreign)).await,
            Err(IdentityError::PipelineRefused(_))
        ));
        assert!(matches!(
            mapping().principal(&claims(token("destroy"))).await,
            Err(IdentityError::PipelineRefused(_))
        ));
        let mut lying = token("plan");
        lying["terraform_run_phase"] = json!("apply");
        assert!(matches!(
            mapping().principal(&claims(lying)).await,
            Err(IdentityError::InvalidClaims(_))
        ));
    }
}
