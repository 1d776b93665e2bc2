//! GitHub Actions OIDC tokens (`iss https://token.actions.githubusercontent.com`).
//!
//! The repository's owner must be one of the configured `repository_owner_id`s
//! (an organization's id survives its renames; a fork lives under another
//! owner). The component is the one annotated `github.com/project-slug` with
//! the token's `repository`, and it must record the token's `repository_id`
//! in `stackpass.dev/github-repository-id`, so a repository that takes over a
//! renamed or deleted repository's name does not take over its credentials.
//! Both subject forms are checked against the claims: `repo:ORG/REPO:…` and
//! the immutable `repo:ORG@OWNER_ID/REPO@REPO_ID:…`.

use std::sync::Arc;

use super::{
    component_by_annotation, invalid, plain, refused, GITHUB_REFUSED_EVENTS,
    GITHUB_REPOSITORY_ID_ANNOTATION,
};
use crate::catalog::Catalog;
use crate::identity::{
    ClaimMapping, IdentityError, MappedPrincipal, PipelineRun, PipelineSystem, PrincipalKind,
    VerifiedClaims,
};

pub const PROJECT_SLUG_ANNOTATION: &str = "github.com/project-slug";

pub struct GithubActionsMapping {
    pub catalog: Arc<dyn Catalog>,
    /// `repository_owner_id`s whose repositories may be callers.
    pub owner_ids: Vec<String>,
    /// `event_name`s trusted; [`GITHUB_REFUSED_EVENTS`] never are.
    pub events: Vec<String>,
    /// Where runs are shown (`https://github.com`), for the audit's run link.
    pub web_url: Option<String>,
}

/// The facts the claims give, checked against each other before any lookup.
#[derive(Debug, PartialEq, Eq)]
struct Checked<'a> {
    repository: &'a str,
    repository_id: String,
    run: PipelineRun,
}

impl GithubActionsMapping {
    fn check<'a>(&self, claims: &'a VerifiedClaims) -> Result<Checked<'a>, IdentityError> {
        let repository = plain("repository", claims.required_text("repository")?)?;
        let (owner, name) = repository
            .split_once('/')
            .filter(|(o, n)| !o.is_empty() && !n.is_empty() && !n.contains('/'))
            .ok_or_else(|| invalid("the repository claim is not OWNER/REPO"))?;
        let repository_id = claims
            .id("repository_id")?
            .ok_or_else(|| invalid("the repository_id claim is missing"))?;
        let owner_id = claims
            .id("repository_owner_id")?
            .ok_or_else(|| invalid("the repository_owner_id claim is missing"))?;
        if let Some(claimed_owner) = claims.text("repository_owner")? {
            if !claimed_owner.eq_ignore_ascii_case(owner) {
                return Err(invalid("repository_owner does not match repository"));
            }
        }
        check_subject(
            claims.required_text("sub")?,
            owner,
            name,
            &owner_id,
            &repository_id,
        )?;
        if !self.owner_ids.contains(&owner_id) {
            return Err(refused(format!(
                "{repository}'s owner (repository_owner_id {owner_id}) is not one this issuer trusts (repository_owner_ids); a fork lives under another owner and never gets its upstream's credentials"
            )));
        }
        let event = plain("event_name", claims.required_text("event_name")?)?;
        if GITHUB_REFUSED_EVENTS.contains(&event) {
            return Err(refused(format!(
                "{event} runs execute with the base repository's identity for code a fork may have written, so they are never trusted; deploy from push, workflow_dispatch or another trusted event"
            )));
        }
        if !self.events.iter().any(|e| e == event) {
            return Err(refused(format!(
                "event {event} is not trusted by this issuer (events: {})",
                self.events.join(", ")
            )));
        }
        let run_id = claims.id("run_id")?;
        let attempt = claims.id("run_attempt")?;
        let mut run = PipelineRun::new(PipelineSystem::GithubActions);
        run.run_url = match (&self.web_url, &run_id) {
            (Some(web), Some(id)) => Some(match &attempt {
                Some(attempt) => format!(
                    "{}/{repository}/actions/runs/{id}/attempts/{attempt}",
                    web.trim_end_matches('/')
                ),
                None => format!(
                    "{}/{repository}/actions/runs/{id}",
                    web.trim_end_matches('/')
                ),
            }),
            _ => None,
        };
        run.run_id = run_id;
        run.repository = Some(repository.to_owned());
        run.git_ref = claims
            .text("ref")?
            .map(|r| plain("ref", r).map(str::to_owned))
            .transpose()?;
        run.workflow = claims
            .text("job_workflow_ref")?
            .or(claims.text("workflow_ref")?)
            .map(|w| plain("workflow_ref", w).map(str::to_owned))
            .transpose()?;
        Ok(Checked {
            repository,
            repository_id,
            run,
        })
    }
}

/// `sub` must agree with the claims it is built from. A repository may
/// customize its subject template; only the two `repo:` forms are parsed.
fn check_subject(
    sub: &str,
    owner: &str,
    name: &str,
    owner_id: &str,
    repository_id: &str,
) -> Result<(), IdentityError> {
    let Some(rest) = sub.strip_prefix("repo:") else {
        return Ok(());
    };
    let mismatch = || invalid("sub names another repository than the repository claims");
    let (path, _) = rest.split_once(':').ok_or_else(mismatch)?;
    let (sub_owner, sub_name) = path.split_once('/').ok_or_else(mismatch)?;
    let part = |written: &str, expected_name: &str, expected_id: &str| match written.split_once('@')
    {
        Some((n, id)) => n.eq_ignore_ascii_case(expected_name) && id == expected_id,
        None => written.eq_ignore_ascii_case(expected_name),
    };
    if part(sub_owner, owner, owner_id) && part(sub_name, name, repository_id) {
        Ok(())
    } else {
        Err(mismatch())
    }
}

#[async_trait::async_trait]
impl ClaimMapping for GithubActionsMapping {
    async fn principal(&self, claims: &VerifiedClaims) -> Result<MappedPrincipal, IdentityError> {
        let checked = self.check(claims)?;
        let subject = component_by_annotation(
            self.catalog.as_ref(),
            PROJECT_SLUG_ANNOTATION,
            checked.repository,
            GITHUB_REPOSITORY_ID_ANNOTATION,
            &checked.repository_id,
        )
        .await?;
        Ok(MappedPrincipal {
            subject,
            kind: PrincipalKind::Service,
            actors: Vec::new(),
            pipeline: Some(checked.run),
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::test_support::{catalog, claims};
    use super::super::GITHUB_DEFAULT_EVENTS;
    use super::*;

    const CATALOG: &str = r#"
        [[components]]
        ref = "component:default/payments"
        owner = "group:default/team-payments"
        annotations = { "github.com/project-slug" = "acme/payments", "stackpass.dev/github-repository-id" = "42" }
        [[components]]
        ref = "component:default/ledger"
        owner = "group:default/team-payments"
        annotations = { "github.com/project-slug" = "acme/ledger" }
    "#;

    fn mapping() -> GithubActionsMapping {
        GithubActionsMapping {
            catalog: catalog(CATALOG),
            owner_ids: vec!["7".into()],
            events: GITHUB_DEFAULT_EVENTS
                .iter()
                .map(|e| e.to_string())
                .collect(),
            web_url: Some("https://github.com".into()),
        }
    }

    fn token(overrides: serde_json::Value) -> serde_json::Value {
        let mut base = json!({
            "sub": "repo:acme/payments:ref:refs/heads/main",
            "repository": "acme/payments",
            "repository_id": "42",
            "repository_owner": "acme",
            "repository_owner_id": "7",
            "run_id": "1001",
            "run_attempt": "2",
            "ref": "refs/heads/main",
            "event_name": "push",
            "workflow_ref": "acme/payments/.github/workflows/deploy.yml@refs/heads/main",
        });
        for (k, v) in overrides.as_object().unwrap() {
            base[k] = v.clone();
        }
        base
    }

    async fn map(overrides: serde_json::Value) -> Result<MappedPrincipal, IdentityError> {
        mapping().principal(&claims(token(overrides))).await
    }

    #[tokio::test]
    async fn the_annotated_component_is_the_caller() {
        let mapped = map(json!({})).await.unwrap();
        assert_eq!(mapped.subject.to_string(), "component:default/payments");
        assert_eq!(mapped.kind, PrincipalKind::Service);
        let run = mapped.pipeline.unwrap();
        assert_eq!(run.system, PipelineSystem::GithubActions);
        assert_eq!(run.run_id.as_deref(), Some("1001"));
        assert_eq!(
            run.run_url.as_deref(),
            Some("https://github.com/acme/payments/actions/runs/1001/attempts/2")
        );
        assert_eq!(run.git_ref.as_deref(), Some("refs/heads/main"));
    }

    #[tokio::test]
    async fn immutable_subjects_are_checked_against_the_ids() {
        let ok = map(json!({ "sub": "repo:acme@7/payments@42:ref:refs/heads/main" })).await;
        assert!(ok.is_ok(), "{ok:?}");
        for sub in [
            "repo:acme@8/payments@42:ref:refs/heads/main",
            "repo:acme@7/payments@43:ref:refs/heads/main",
            "repo:acme/other:ref:refs/heads/main",
        ] {
            assert!(
                matches!(
                    map(json!({ "sub": sub })).await,
                    Err(IdentityError::InvalidClaims(_))
                ),
                "{sub}"
            );
        }
    }

    #[tokio::test]
    async fn ids_decide_not_names() {
        // A recreated repository under the old name: same slug, new id.
        let recreated =
            map(json!({ "repository_id": "99", "sub": "repo:acme/payments:ref:x" })).await;
        assert!(matches!(recreated, Err(IdentityError::PipelineRefused(m)) if m.contains("42")));
        // Another owner (a fork, or an org that took the name) is refused first.
        let fork = map(json!({
            "repository": "mallory/payments", "repository_owner": "mallory",
            "repository_owner_id": "666", "sub": "repo:mallory/payments:ref:x"
        }))
        .await;
        assert!(matches!(fork, Err(IdentityError::PipelineRefused(_))));
        // A component without the id annotation is never trusted.
        let unpinned =
            map(json!({ "repository": "acme/ledger", "sub": "repo:acme/ledger:ref:x" })).await;
        assert!(
            matches!(unpinned, Err(IdentityError::PipelineRefused(m)) if m.contains("stackpass.dev/github-repository-id"))
        );
        let unknown =
            map(json!({ "repository": "acme/unknown", "sub": "repo:acme/unknown:ref:x" })).await;
        assert!(matches!(unknown, Err(IdentityError::NoCatalogEntity(_))));
    }

    #[tokio::test]
    async fn events_that_run_fork_code_are_refused() {
        for event in [
            "pull_request_target",
            "workflow_run",
            "pull_request",
            "issue_comment",
        ] {
            assert!(
                matches!(
                    map(json!({ "event_name": event })).await,
                    Err(IdentityError::PipelineRefused(_))
                ),
                "{event}"
            );
        }
        let mut allowed = mapping();
        allowed.events.push("pull_request_target".into());
        let still = allowed
            .principal(&claims(token(
                json!({ "event_name": "pull_request_target" }),
            )))
            .await;
        assert!(matches!(still, Err(IdentityError::PipelineRefused(_))));
    }

    #[tokio::test]
    async fn malformed_claims_are_refused() {
        for bad in [
            json!({ "repository": "acme" }),
            json!({ "repository_id": true }),
            json!({ "repository_id": null }),
            json!({ "repository_owner": "someone-else" }),
            json!({ "ref": "refs/heads/\u{1b}[2J" }),
            json!({ "event_name": null }),
        ] {
            assert!(map(bad.clone()).await.is_err(), "{bad}");
        }
    }
}
