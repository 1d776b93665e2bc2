//! What a machine caller's token says about the pipeline run it came from:
//! the CI or deployment system, the run, the repository and ref, the phase of
//! the run (plan or apply, preview or update), and the one stack a deployment
//! system's token was minted for. The policy reads these facts (run phases,
//! the bound stack) and the audit log records them; nothing here does I/O.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::stacks::StackRef;

/// The system that ran the pipeline, one per machine issuer kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PipelineSystem {
    GithubActions,
    GitlabCi,
    PulumiDeployments,
    HcpTerraform,
    Kubernetes,
}

impl PipelineSystem {
    pub fn as_str(self) -> &'static str {
        match self {
            PipelineSystem::GithubActions => "github-actions",
            PipelineSystem::GitlabCi => "gitlab-ci",
            PipelineSystem::PulumiDeployments => "pulumi-deployments",
            PipelineSystem::HcpTerraform => "hcp-terraform",
            PipelineSystem::Kubernetes => "kubernetes",
        }
    }
}

impl fmt::Display for PipelineSystem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The phase of a run, as its system names it: HCP Terraform's
/// `terraform_run_phase` (`plan`, `apply`) and Pulumi Deployments'
/// `operation` (`preview`, `update`, `refresh`, `destroy`). A preview token
/// still carries `scope:write`, so the phase is what tells read from write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunPhase {
    Plan,
    Apply,
    Preview,
    Update,
    Refresh,
    Destroy,
}

impl RunPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            RunPhase::Plan => "plan",
            RunPhase::Apply => "apply",
            RunPhase::Preview => "preview",
            RunPhase::Update => "update",
            RunPhase::Refresh => "refresh",
            RunPhase::Destroy => "destroy",
        }
    }

    pub fn parse(value: &str) -> Option<RunPhase> {
        Some(match value {
            "plan" => RunPhase::Plan,
            "apply" => RunPhase::Apply,
            "preview" => RunPhase::Preview,
            "update" => RunPhase::Update,
            "refresh" => RunPhase::Refresh,
            "destroy" => RunPhase::Destroy,
            _ => return None,
        })
    }
}

impl fmt::Display for RunPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One pipeline run, as its issuer's verified claims describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineRun {
    pub system: PipelineSystem,
    /// The run's id in its system (GitHub `run_id`, GitLab `pipeline_id`,
    /// HCP Terraform `terraform_run_id`); `None` where the token names none.
    pub run_id: Option<String>,
    /// A link to the run, where the claims are enough to build one.
    pub run_url: Option<String>,
    /// `ORG/REPO` (GitHub), the project path (GitLab), the service account
    /// (Kubernetes).
    pub repository: Option<String>,
    pub git_ref: Option<String>,
    /// The workflow (GitHub `workflow_ref`) or job that ran.
    pub workflow: Option<String>,
    pub phase: Option<RunPhase>,
    /// Deployment systems mint a token for one stack's run: it gets
    /// credentials for that stack only.
    pub bound_stack: Option<StackRef>,
}

impl PipelineRun {
    pub fn new(system: PipelineSystem) -> Self {
        PipelineRun {
            system,
            run_id: None,
            run_url: None,
            repository: None,
            git_ref: None,
            workflow: None,
            phase: None,
            bound_stack: None,
        }
    }
}
