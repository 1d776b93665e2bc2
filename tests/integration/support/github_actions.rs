//! [`GithubActionsDouble`]: GitHub Actions' OIDC token issuer
//! (`token.actions.githubusercontent.com`: discovery, keys at
//! `/.well-known/jwks`, RS256) on loopback, minting the documented claim set
//! of a job's ID token for a [`GithubRun`].

use serde_json::{json, Value};

use super::tokens::OidcIssuer;

pub struct GithubActionsDouble {
    pub issuer: OidcIssuer,
}

/// The repository and run a token is minted for.
#[derive(Clone)]
pub struct GithubRun {
    pub owner: String,
    pub owner_id: String,
    pub repo: String,
    pub repo_id: String,
    pub event: String,
    pub git_ref: String,
    pub run_id: String,
    /// `repo:ORG@ID/REPO@ID:…`, the default for repositories created since
    /// GitHub introduced immutable subjects, instead of `repo:ORG/REPO:…`.
    pub immutable_subject: bool,
}

impl GithubRun {
    pub fn new(owner: &str, owner_id: &str, repo: &str, repo_id: &str) -> GithubRun {
        GithubRun {
            owner: owner.into(),
            owner_id: owner_id.into(),
            repo: repo.into(),
            repo_id: repo_id.into(),
            event: "push".into(),
            git_ref: "refs/heads/main".into(),
            run_id: "9876543210".into(),
            immutable_subject: false,
        }
    }
}

impl GithubActionsDouble {
    pub async fn start() -> GithubActionsDouble {
        GithubActionsDouble {
            issuer: OidcIssuer::start(
                "",
                "/.well-known/jwks",
                "38826b17-6a30-5f9b-b169-8beb8202f723",
                &[
                    "sub",
                    "aud",
                    "exp",
                    "iat",
                    "iss",
                    "jti",
                    "nbf",
                    "ref",
                    "sha",
                    "repository",
                    "repository_id",
                    "repository_owner",
                    "repository_owner_id",
                    "run_id",
                    "run_number",
                    "run_attempt",
                    "actor",
                    "actor_id",
                    "workflow",
                    "workflow_ref",
                    "workflow_sha",
                    "head_ref",
                    "base_ref",
                    "event_name",
                    "ref_type",
                    "ref_protected",
                    "environment",
                    "job_workflow_ref",
                    "job_workflow_sha",
                    "repository_visibility",
                    "runner_environment",
                ],
            )
            .await,
        }
    }

    /// The claims GitHub puts in a job's ID token (requested with `audience`).
    pub fn claims(&self, run: &GithubRun, audience: &str) -> Value {
        let repository = format!("{}/{}", run.owner, run.repo);
        let sub = if run.immutable_subject {
            format!(
                "repo:{}@{}/{}@{}:ref:{}",
                run.owner, run.owner_id, run.repo, run.repo_id, run.git_ref
            )
        } else {
            format!("repo:{repository}:ref:{}", run.git_ref)
        };
        let workflow_ref = format!("{repository}/.github/workflows/deploy.yml@{}", run.git_ref);
        json!({
            "sub": sub,
            "aud": audience,
            "ref": run.git_ref,
            "sha": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4",
            "repository": repository,
            "repository_owner": run.owner,
            "repository_owner_id": run.owner_id,
            "repository_id": run.repo_id,
            "repository_visibility": "private",
            "run_id": run.run_id,
            "run_number": "42",
            "run_attempt": "1",
            "actor": "octocat",
            "actor_id": "583231",
            "workflow": "deploy",
            "workflow_ref": workflow_ref,
            "workflow_sha": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4",
            "job_workflow_ref": workflow_ref,
            "job_workflow_sha": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4",
            "head_ref": "",
            "base_ref": "",
            "event_name": run.event,
            "ref_type": "branch",
            "ref_protected": "true",
            "runner_environment": "github-hosted",
        })
    }

    /// A signed token; GitHub's live about five minutes.
    pub fn token(&self, run: &GithubRun, audience: &str) -> String {
        self.issuer.sign(self.claims(run, audience), 300)
    }
}
