//! Pulumi Deployments OIDC tokens (`iss https://api.pulumi.com/oidc`, `aud`
//! the organization's name, `sub
//! pulumi:deploy:org:ORG:project:PROJECT:stack:STACK:operation:OP:scope:write`).
//!
//! The token is for one deployment of one stack: the caller is the component
//! that stack's component tag names (read from the trusted stack source), and
//! it is bound to that stack. Every deployment carries `scope:write`, a
//! preview too, so the `operation` is the phase the policy can limit.

use super::{invalid, plain, refused, StackComponents};
use crate::identity::{
    ClaimMapping, IdentityError, MappedPrincipal, PipelineRun, PipelineSystem, RunPhase,
    VerifiedClaims,
};
use crate::stacks::StackRef;

pub struct PulumiDeploymentsMapping {
    pub stacks: StackComponents,
    /// The organizations trusted (also the audiences their tokens carry).
    pub organizations: Vec<String>,
}

/// The parts of a Deployments subject, in their fixed order.
#[derive(Debug, PartialEq, Eq)]
struct Subject<'a> {
    org: &'a str,
    project: &'a str,
    stack: &'a str,
    operation: &'a str,
}

fn parse_subject(sub: &str) -> Result<Subject<'_>, IdentityError> {
    let shape = || {
        invalid("sub is not pulumi:deploy:org:ORG:project:PROJECT:stack:STACK:operation:OPERATION:scope:SCOPE")
    };
    let parts: Vec<&str> = sub.split(':').collect();
    match parts.as_slice() {
        ["pulumi", "deploy", "org", org, "project", project, "stack", stack, "operation", operation, "scope", _scope] => {
            Ok(Subject {
                org,
                project,
                stack,
                operation,
            })
        }
        _ => Err(shape()),
    }
}

impl PulumiDeploymentsMapping {
    fn check(&self, claims: &VerifiedClaims) -> Result<PipelineRun, IdentityError> {
        let sub = plain("sub", claims.required_text("sub")?)?;
        let subject = parse_subject(sub)?;
        // Each part of the subject is also a claim of its own; they must agree.
        for (claim, value) in [
            ("org", subject.org),
            ("project", subject.project),
            ("stack", subject.stack),
            ("operation", subject.operation),
        ] {
            if let Some(own) = claims.text(claim)? {
                if own != value {
                    return Err(invalid(format!("the {claim} claim does not match sub")));
                }
            }
        }
        if !self.organizations.iter().any(|o| o == subject.org) {
            return Err(refused(format!(
                "Pulumi organization {} is not one this issuer trusts",
                subject.org
            )));
        }
        let stack = StackRef::parse(&format!(
            "pulumi:{}/{}/{}",
            subject.org, subject.project, subject.stack
        ))
        .map_err(|e| invalid(format!("sub does not name a stack: {e}")))?;
        let phase = RunPhase::parse(subject.operation)
            .filter(|p| {
                matches!(
                    p,
                    RunPhase::Preview | RunPhase::Update | RunPhase::Refresh | RunPhase::Destroy
                )
            })
            .ok_or_else(|| {
                refused(format!(
                    "operation {:?} is not one stackpass knows (preview, update, refresh, destroy), so no rule could tell whether it writes",
                    subject.operation
                ))
            })?;
        let mut run = PipelineRun::new(PipelineSystem::PulumiDeployments);
        run.phase = Some(phase);
        run.bound_stack = Some(stack);
        run.run_id = claims
            .text("jti")?
            .map(|j| plain("jti", j).map(str::to_owned))
            .transpose()?;
        Ok(run)
    }
}

#[async_trait::async_trait]
impl ClaimMapping for PulumiDeploymentsMapping {
    async fn principal(&self, claims: &VerifiedClaims) -> Result<MappedPrincipal, IdentityError> {
        self.stacks.principal_of(self.check(claims)?).await
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::test_support::{claims, stacks};
    use super::*;

    fn mapping() -> PulumiDeploymentsMapping {
        PulumiDeploymentsMapping {
            stacks: StackComponents {
                stacks: stacks(
                    r#"
                    [[stacks]]
                    ref = "pulumi:acme/payments/prod"
                    tags = { "backstage.io/component" = "payments" }
                    [[stacks]]
                    ref = "pulumi:acme/orphan/prod"
                    "#,
                ),
                component_tags: crate::stacks::ComponentTags::same("backstage.io/component"),
            },
            organizations: vec!["acme".into()],
        }
    }

    fn token(sub: &str) -> serde_json::Value {
        json!({ "sub": sub, "aud": "acme" })
    }

    #[tokio::test]
    async fn the_stack_names_the_component_and_binds_the_token() {
        let mapped = mapping()
            .principal(&claims(token(
                "pulumi:deploy:org:acme:project:payments:stack:prod:operation:preview:scope:write",
            )))
            .await
            .unwrap();
        assert_eq!(mapped.subject.to_string(), "component:default/payments");
        let run = mapped.pipeline.unwrap();
        assert_eq!(run.phase, Some(RunPhase::Preview));
        assert_eq!(
            run.bound_stack.unwrap().to_string(),
            "pulumi:acme/payments/prod"
        );
    }

    #[tokio::test]
    async fn unknown_stacks_orgs_and_operations_are_refused() {
        let map = |sub: &'static str| async move { mapping().principal(&claims(token(sub))).await };
        assert!(matches!(
            map("pulumi:deploy:org:acme:project:orphan:stack:prod:operation:update:scope:write")
                .await,
            Err(IdentityError::NoCatalogEntity(_))
        ));
        assert!(matches!(
            map("pulumi:deploy:org:acme:project:nope:stack:prod:operation:update:scope:write")
                .await,
            Err(IdentityError::NoCatalogEntity(_))
        ));
        assert!(matches!(
            map("pulumi:deploy:org:evil:project:payments:stack:prod:operation:update:scope:write")
                .await,
            Err(IdentityError::PipelineRefused(_))
        ));
        assert!(matches!(
            map("pulumi:deploy:org:acme:project:payments:stack:prod:operation:plan:scope:write")
                .await,
            Err(IdentityError::PipelineRefused(_))
        ));
        assert!(matches!(
            map("pulumi:deploy:org:acme:project:payments:stack:prod").await,
            Err(IdentityError::InvalidClaims(_))
        ));
    }

    #[tokio::test]
    async fn claims_must_agree_with_the_subject() {
        let mut t = token(
            "pulumi:deploy:org:acme:project:payments:stack:prod:operation:preview:scope:write",
        );
        t["operation"] = json!("update");
        assert!(matches!(
            mapping().principal(&claims(t)).await,
            Err(IdentityError::InvalidClaims(_))
        ));
    }
}
