//! `stackpass policy test`: table-driven tests for a policy, run offline. Each
//! test file names the policy files it tests and lists cases: a principal, a stack
//! with its tags, the catalog's answer (owner), a request, and the expected
//! decision and grant. Meant for the CI of the repository that holds the policy.
//!
//! ```toml
//! policy = ["../policy"]            # files or directories, relative to this file
//!
//! [[cases]]
//! name = "jane deploys her team's dev stack"
//! principal = { subject = "user:default/jane", groups = ["group:default/team-payments"] }
//! stack = { ref = "pulumi:acme/payments/dev", tags = { "backstage.io/component" = "payments", environment = "dev" } }
//! owner = "group:default/team-payments"
//! request = { provider = "aws", duration = "30m" }
//! expect = "allow"
//! grant = { rule = "owners-deploy-nonprod", role = "arn:aws:iam::111111111111:role/payments-deployer", duration = "30m" }
//!
//! [[cases]]
//! name = "a plan only reads"
//! principal = { subject = "component:default/payments", pipeline = { system = "hcp-terraform", phase = "plan", stack = "terraform:acme/payments-prod" } }
//! # stack, owner, request as above
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use stackpass_provider::ProviderKind;

use super::load::load_rules;
use super::validate::ValidationContext;
use super::{decide, Decision, PolicyInput};
use crate::catalog::EntityRef;
use crate::identity::{PipelineRun, PipelineSystem, Principal, PrincipalKind, RunPhase};
use crate::registry::Providers;
use crate::stacks::{Stack, StackRef};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    policy: Vec<PathBuf>,
    #[serde(default = "default_component_tag")]
    component_tag: String,
    #[serde(default = "default_environment_tag")]
    environment_tag: String,
    #[serde(default)]
    cases: Vec<Case>,
}

fn default_component_tag() -> String {
    "backstage.io/component".into()
}

fn default_environment_tag() -> String {
    "environment".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    principal: TestPrincipal,
    stack: TestStack,
    owner: Option<EntityRef>,
    request: TestRequest,
    expect: Expectation,
    grant: Option<ExpectedGrant>,
    /// For denials: the rule expected to have refused (deny rules).
    denied_by: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestPrincipal {
    subject: EntityRef,
    #[serde(default)]
    groups: Vec<EntityRef>,
    kind: Option<PrincipalKind>,
    actor: Option<String>,
    /// The token was minted for the broker alone (see `require_dedicated_audience`).
    #[serde(default)]
    dedicated_audience: bool,
    /// A machine caller: its pipeline run (see `run_phases`).
    pipeline: Option<TestPipeline>,
}

/// `pipeline = { system = "hcp-terraform", phase = "plan", stack = "terraform:acme/payments-prod" }`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestPipeline {
    system: PipelineSystem,
    phase: Option<RunPhase>,
    /// The stack a deployment system's token is bound to.
    stack: Option<StackRef>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestStack {
    #[serde(rename = "ref")]
    reference: StackRef,
    #[serde(default)]
    tags: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestRequest {
    provider: ProviderKind,
    #[serde(default, with = "humantime_serde")]
    duration: Option<Duration>,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Expectation {
    Allow,
    Deny,
    Approval,
}

impl Expectation {
    fn as_str(self) -> &'static str {
        match self {
            Expectation::Allow => "allow",
            Expectation::Deny => "deny",
            Expectation::Approval => "approval",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectedGrant {
    rule: Option<String>,
    role: Option<String>,
    #[serde(default, with = "humantime_serde")]
    duration: Option<Duration>,
    session_policy: Option<String>,
    #[serde(default)]
    session_tags: Option<BTreeMap<String, String>>,
}

/// What a run found: a readable report and whether everything passed.
pub struct TestReport {
    pub text: String,
    pub passed: usize,
    pub failed: usize,
}

/// Runs every case in `files`. A file that cannot be read, or a policy that does
/// not validate, counts as a failure with the reason in the report.
pub fn run(files: &[PathBuf]) -> TestReport {
    let mut report = TestReport {
        text: String::new(),
        passed: 0,
        failed: 0,
    };
    for file in files {
        if let Err(message) = run_file(file, &mut report) {
            report.failed += 1;
            let _ = writeln!(report.text, "FAIL {}: {message}", file.display());
        }
    }
    let _ = write!(
        report.text,
        "{} passed, {} failed",
        report.passed, report.failed
    );
    report
}

fn run_file(file: &Path, report: &mut TestReport) -> Result<(), String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read: {e}"))?;
    let tests: TestFile = toml::from_str(&text).map_err(|e| e.to_string())?;
    let base = file.parent().unwrap_or(Path::new("."));
    let policy_paths: Vec<PathBuf> = tests.policy.iter().map(|p| base.join(p)).collect();
    let context = ValidationContext {
        environment_tag: tests.environment_tag.clone(),
        providers: Providers::offline(),
    };
    let rules = load_rules(&[], &policy_paths, &context).map_err(|e| e.to_string())?;
    for case in &tests.cases {
        match check(case, &rules, &tests) {
            Ok(()) => {
                report.passed += 1;
                let _ = writeln!(report.text, "ok   {} :: {}", file.display(), case.name);
            }
            Err(why) => {
                report.failed += 1;
                let _ = writeln!(
                    report.text,
                    "FAIL {} :: {}\n     {}",
                    file.display(),
                    case.name,
                    why.replace('\n', "\n     ")
                );
            }
        }
    }
    Ok(())
}

fn check(case: &Case, rules: &[super::Rule], tests: &TestFile) -> Result<(), String> {
    let principal = Principal {
        issuer: "policy-test".into(),
        issuer_name: "policy-test".into(),
        subject: case.principal.subject.clone(),
        kind: case.principal.kind.unwrap_or(
            match (&case.principal.actor, case.principal.subject.kind()) {
                (Some(_), _) => PrincipalKind::Agent,
                (None, "user") => PrincipalKind::Human,
                (None, _) => PrincipalKind::Service,
            },
        ),
        actor: case.principal.actor.clone(),
        actor_chain: Vec::new(),
        groups: case.principal.groups.clone(),
        dedicated_audience: case.principal.dedicated_audience,
        pipeline: case.principal.pipeline.as_ref().map(|p| {
            let mut run = PipelineRun::new(p.system);
            run.phase = p.phase;
            run.bound_stack = p.stack.clone();
            run
        }),
    };
    let stack = Stack {
        reference: case.stack.reference.clone(),
        tags: case.stack.tags.clone(),
    };
    let component = stack
        .tags
        .get(&tests.component_tag)
        .and_then(|value| EntityRef::parse(value, Some("component"), "default").ok());
    let decision = decide(
        rules,
        &PolicyInput {
            principal: &principal,
            stack: &stack,
            component: component.as_ref(),
            owner: case.owner.as_ref(),
            environment: stack.tags.get(&tests.environment_tag).map(String::as_str),
            provider: &case.request.provider,
            requested_duration: case.request.duration,
        },
    );
    match (case.expect, decision) {
        (Expectation::Allow, Decision::Allow(grant))
        | (Expectation::Approval, Decision::NeedsApproval { grant, .. }) => {
            let Some(expected) = &case.grant else {
                return Ok(());
            };
            let mut wrong = Vec::new();
            let mut compare = |field: &str, want: Option<String>, got: String| {
                if let Some(want) = want {
                    if want != got {
                        wrong.push(format!("{field}: expected {want:?}, got {got:?}"));
                    }
                }
            };
            compare("rule", expected.rule.clone(), grant.rule.clone());
            compare("role", expected.role.clone(), grant.target.to_string());
            compare(
                "duration",
                expected
                    .duration
                    .map(|d| humantime::format_duration(d).to_string()),
                humantime::format_duration(grant.duration).to_string(),
            );
            compare(
                "session_policy",
                expected.session_policy.clone(),
                grant.session_policy.clone().unwrap_or_default(),
            );
            compare(
                "session_tags",
                expected.session_tags.as_ref().map(|t| format!("{t:?}")),
                format!("{:?}", grant.session_tags),
            );
            if wrong.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "allowed by rule {:?}, but the grant differs:\n{}",
                    grant.rule,
                    wrong.join("\n")
                ))
            }
        }
        (Expectation::Deny, Decision::Deny(denial)) => match (&case.denied_by, &denial.denied_by) {
            (Some(want), got) if got.as_deref() != Some(want.as_str()) => Err(format!(
                "denied, but by {got:?} rather than rule {want:?}: {}",
                denial.summary
            )),
            _ => Ok(()),
        },
        (expected @ (Expectation::Allow | Expectation::Approval), Decision::Deny(denial)) => {
            let mut why = format!(
                "expected {}, got deny: {}",
                expected.as_str(),
                denial.summary
            );
            for miss in &denial.rules {
                for reason in &miss.reasons {
                    let _ = write!(why, "\n  rule {}: {reason}", miss.rule);
                }
            }
            Err(why)
        }
        (expected, Decision::Allow(grant)) => Err(format!(
            "expected {}, got allow by rule {:?} (role {})",
            expected.as_str(),
            grant.rule,
            grant.target
        )),
        (expected, Decision::NeedsApproval { grant, approval }) => Err(format!(
            "expected {}, got approval required by rule {:?} ({} approval(s) from {})",
            expected.as_str(),
            grant.rule,
            approval.count,
            approval
                .approvers
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}
