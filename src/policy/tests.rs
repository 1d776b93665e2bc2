//! Decisions, table-driven against the pure function: each row is a request
//! (a change to the standard one), the rules in force, and what the policy must
//! answer. The standard request: jane, of team-payments (which owns the
//! payments component), asks for aws credentials for the dev payments stack.

use std::collections::BTreeMap;
use std::time::Duration;

use stackpass_provider::ProviderKind;

use super::*;
use crate::fakes::FakeCloud;
use crate::identity::{PipelineRun, PipelineSystem, PrincipalKind, RunPhase};
use crate::stacks::StackRef;

fn entity(s: &str) -> EntityRef {
    EntityRef::parse_strict(s).unwrap()
}

fn principal(subject: &str, groups: &[&str]) -> Principal {
    Principal {
        issuer: "https://backstage.example.com/api/auth".into(),
        issuer_name: "backstage".into(),
        subject: entity(subject),
        kind: PrincipalKind::Human,
        actor: None,
        actor_chain: Vec::new(),
        groups: groups.iter().map(|g| entity(g)).collect(),
        dedicated_audience: false,
        pipeline: None,
    }
}

/// The payments component's own pipeline: an HCP Terraform run of the dev
/// stack (the standard request's), in `phase`.
fn pipeline(phase: RunPhase) -> Principal {
    let mut run = PipelineRun::new(PipelineSystem::HcpTerraform);
    run.phase = Some(phase);
    run.bound_stack = Some(StackRef::parse("pulumi:acme/payments/dev").unwrap());
    Principal {
        issuer: "https://app.terraform.io".into(),
        issuer_name: "hcp".into(),
        kind: PrincipalKind::Service,
        pipeline: Some(run),
        ..principal("component:default/payments", &[])
    }
}

/// Plans read: the read-only role for pipeline runs in plan or preview.
fn plans_read() -> Rule {
    Rule {
        name: "plans-read".into(),
        run_phases: vec![RunPhase::Plan, RunPhase::Preview],
        target: target("arn:aws:iam::{tags.aws-account}:role/{component}-readonly"),
        ..nonprod()
    }
}

/// Applies write.
fn applies_write() -> Rule {
    Rule {
        name: "applies-write".into(),
        run_phases: vec![RunPhase::Apply, RunPhase::Update],
        ..nonprod()
    }
}

fn target(template: &str) -> Option<TargetTemplate> {
    Some(TargetTemplate {
        template: Template::parse(template).unwrap(),
        provider: FakeCloud::named("aws"),
    })
}

/// Owners may deploy dev and staging, for up to an hour.
fn nonprod() -> Rule {
    Rule {
        name: "team-deploys-nonprod".into(),
        source: RuleSource::default(),
        effect: Effect::Allow,
        provider: ProviderKind::from_static("aws"),
        tags: [
            (
                "environment".to_string(),
                vec![ValuePattern::new("dev"), ValuePattern::new("staging")],
            ),
            ("aws-account".to_string(), vec![ValuePattern::new("*")]),
        ]
        .into(),
        requester_kinds: Vec::new(),
        groups: Vec::new(),
        require_owner: true,
        require_dedicated_audience: false,
        run_phases: Vec::new(),
        target: target("arn:aws:iam::{tags.aws-account}:role/{component}-deployer"),
        max_duration: Duration::from_secs(3600),
        default_duration: Duration::from_secs(900),
        session_policy: None,
        session_tags: BTreeMap::new(),
        approval: None,
        break_glass_max_duration: None,
    }
}

/// SRE may read everything, owner or not.
fn sre_read() -> Rule {
    Rule {
        name: "sre-read-everything".into(),
        require_owner: false,
        groups: vec![entity("group:default/sre")],
        tags: BTreeMap::new(),
        target: target("arn:aws:iam::111111111111:role/readonly"),
        ..nonprod()
    }
}

/// Nothing touches dev while it is frozen.
fn freeze_dev() -> Rule {
    Rule {
        name: "freeze-dev".into(),
        effect: Effect::Deny,
        target: None,
        require_owner: false,
        tags: [("environment".to_string(), vec![ValuePattern::new("dev")])].into(),
        ..nonprod()
    }
}

fn with_approval() -> Rule {
    Rule {
        approval: Some(ApprovalRequirement {
            count: 2,
            approvers: vec![entity("group:default/team-payments")],
            window: Duration::from_secs(3600),
            request_ttl: Duration::from_secs(86400),
            break_glass_max_duration: None,
        }),
        ..nonprod()
    }
}

struct Case {
    principal: Principal,
    stack: Stack,
    component: Option<EntityRef>,
    owner: Option<EntityRef>,
    provider: ProviderKind,
    duration: Option<Duration>,
}

impl Case {
    fn standard() -> Case {
        Case {
            principal: principal("user:default/jane", &["group:default/team-payments"]),
            stack: Stack {
                reference: StackRef::parse("pulumi:acme/payments/dev").unwrap(),
                tags: [
                    ("environment", "dev"),
                    ("aws-account", "111111111111"),
                    ("backstage.io/component", "payments"),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            },
            component: Some(entity("component:default/payments")),
            owner: Some(entity("group:default/team-payments")),
            provider: ProviderKind::from_static("aws"),
            duration: None,
        }
    }

    fn tag(&mut self, key: &str, value: Option<&str>) {
        match value {
            Some(value) => self.stack.tags.insert(key.into(), value.into()),
            None => self.stack.tags.remove(key),
        };
    }

    fn decide(&self, rules: &[Rule]) -> Decision {
        decide(
            rules,
            &PolicyInput {
                principal: &self.principal,
                stack: &self.stack,
                component: self.component.as_ref(),
                owner: self.owner.as_ref(),
                environment: self.stack.tags.get("environment").map(String::as_str),
                provider: &self.provider,
                requested_duration: self.duration,
            },
        )
    }
}

enum Expect {
    Allow {
        rule: &'static str,
        target: &'static str,
        duration: u64,
    },
    Approval {
        rule: &'static str,
    },
    /// Each rule's reasons, in order; `denied_by` for a deny rule.
    Deny {
        denied_by: Option<&'static str>,
        reasons: &'static [&'static str],
    },
}

struct Row {
    name: &'static str,
    rules: fn() -> Vec<Rule>,
    change: fn(&mut Case),
    expect: Expect,
}

const PAYMENTS_DEV: &str = "arn:aws:iam::111111111111:role/payments-deployer";

fn rows() -> Vec<Row> {
    use Expect::*;
    vec![
        Row {
            name: "an owner gets the rendered role for the provider's default duration",
            rules: || vec![nonprod()],
            change: |_| {},
            expect: Allow { rule: "team-deploys-nonprod", target: PAYMENTS_DEV, duration: 900 },
        },
        Row {
            name: "a rule that needs a dedicated-audience token refuses a shared one",
            rules: || vec![Rule { require_dedicated_audience: true, ..nonprod() }],
            change: |_| {},
            expect: Deny {
                denied_by: None,
                reasons: &["the rule needs a token minted for this broker alone (its issuer's dedicated_audience); this token's audience is shared, so another service could be replaying it"],
            },
        },
        Row {
            name: "a rule that needs a dedicated-audience token grants with one",
            rules: || vec![Rule { require_dedicated_audience: true, ..nonprod() }],
            change: |c| c.principal.dedicated_audience = true,
            expect: Allow { rule: "team-deploys-nonprod", target: PAYMENTS_DEV, duration: 900 },
        },
        Row {
            name: "a pipeline deploys its own component's stacks",
            rules: || vec![nonprod()],
            change: |c| c.principal = pipeline(RunPhase::Apply),
            expect: Allow { rule: "team-deploys-nonprod", target: PAYMENTS_DEV, duration: 900 },
        },
        Row {
            name: "a pipeline of another component gets nothing of this one",
            rules: || vec![nonprod()],
            change: |c| {
                c.principal = pipeline(RunPhase::Apply);
                c.principal.subject = entity("component:default/search");
            },
            expect: Deny {
                denied_by: None,
                reasons: &["component:default/search (a hcp-terraform pipeline) may act on its own component's stacks only; this stack belongs to component:default/payments"],
            },
        },
        Row {
            name: "a token bound to another stack is refused before any rule",
            rules: || vec![nonprod()],
            change: |c| {
                c.principal = pipeline(RunPhase::Apply);
                c.stack.reference = StackRef::parse("pulumi:acme/payments/staging").unwrap();
            },
            expect: Deny { denied_by: None, reasons: &[] },
        },
        Row {
            name: "a plan gets the read-only rule's grant",
            rules: || vec![applies_write(), plans_read()],
            change: |c| c.principal = pipeline(RunPhase::Plan),
            expect: Allow {
                rule: "plans-read",
                target: "arn:aws:iam::111111111111:role/payments-readonly",
                duration: 900,
            },
        },
        Row {
            name: "an apply gets the writing rule's grant",
            rules: || vec![plans_read(), applies_write()],
            change: |c| c.principal = pipeline(RunPhase::Apply),
            expect: Allow { rule: "applies-write", target: PAYMENTS_DEV, duration: 900 },
        },
        Row {
            name: "a plan is told which phases the writing rule is for",
            rules: || vec![applies_write()],
            change: |c| c.principal = pipeline(RunPhase::Plan),
            expect: Deny {
                denied_by: None,
                reasons: &["the rule is for pipeline runs in phase apply or update; this run is in phase plan"],
            },
        },
        Row {
            name: "a person never matches a run-phase rule",
            rules: || vec![plans_read()],
            change: |_| {},
            expect: Deny {
                denied_by: None,
                reasons: &["the rule is for pipeline runs in phase plan or preview; this requester is not a pipeline run with a phase"],
            },
        },
        Row {
            name: "a longer request is capped by the rule",
            rules: || vec![nonprod()],
            change: |c| c.duration = Some(Duration::from_secs(7200)),
            expect: Allow { rule: "team-deploys-nonprod", target: PAYMENTS_DEV, duration: 3600 },
        },
        Row {
            name: "a shorter request is kept",
            rules: || vec![nonprod()],
            change: |c| c.duration = Some(Duration::from_secs(1800)),
            expect: Allow { rule: "team-deploys-nonprod", target: PAYMENTS_DEV, duration: 1800 },
        },
        Row {
            name: "a user who owns the component directly is allowed",
            rules: || vec![nonprod()],
            change: |c| {
                c.principal.groups.clear();
                c.owner = Some(entity("user:default/jane"));
            },
            expect: Allow { rule: "team-deploys-nonprod", target: PAYMENTS_DEV, duration: 900 },
        },
        Row {
            name: "a non-member is told why, and nothing about the role",
            rules: || vec![nonprod()],
            change: |c| c.principal = principal("user:default/bob", &["group:default/team-search"]),
            expect: Deny {
                denied_by: None,
                reasons: &["user:default/bob is not a member of group:default/team-payments, which owns component:default/payments"],
            },
        },
        Row {
            name: "an environment outside the selector",
            rules: || vec![nonprod()],
            change: |c| c.tag("environment", Some("prod")),
            expect: Deny {
                denied_by: None,
                reasons: &[r#"the stack's tag environment is "prod"; the rule needs one of "dev", "staging""#],
            },
        },
        Row {
            name: "every reason at once",
            rules: || vec![nonprod()],
            change: |c| {
                c.principal = principal("user:default/bob", &[]);
                c.tag("environment", None);
                c.tag("aws-account", None);
            },
            expect: Deny {
                denied_by: None,
                reasons: &[
                    "the stack has no aws-account tag",
                    "the stack has no environment tag",
                    "user:default/bob is not a member of group:default/team-payments, which owns component:default/payments",
                ],
            },
        },
        Row {
            name: "a stack whose tags name no component has no owner",
            rules: || vec![nonprod()],
            change: |c| {
                c.component = None;
                c.owner = None;
            },
            expect: Deny {
                denied_by: None,
                reasons: &["the stack's tags name no catalog component, so it has no owner"],
            },
        },
        Row {
            name: "a component the catalog has no owner for",
            rules: || vec![nonprod()],
            change: |c| c.owner = None,
            expect: Deny {
                denied_by: None,
                reasons: &["the catalog has no owner for component:default/payments"],
            },
        },
        Row {
            name: "a tag value that would reshape the role never reaches it",
            rules: || vec![nonprod()],
            change: |c| c.tag("aws-account", Some("111111111111:role/admin#")),
            expect: Deny {
                denied_by: Some("team-deploys-nonprod"),
                reasons: &["the value of {tags.aws-account} cannot be used in the role (allowed: letters, digits and + = , . @ _ -)"],
            },
        },
        Row {
            name: "a rendered role the provider cannot parse is refused without showing it",
            rules: || vec![nonprod()],
            change: |c| c.tag("aws-account", Some("x-bad-x")),
            expect: Deny {
                denied_by: Some("team-deploys-nonprod"),
                reasons: &["the role template does not give a valid aws target for this stack; check the stack's tags"],
            },
        },
        Row {
            name: "a rule that applies but cannot be filled in fails closed, not through to a broader rule",
            rules: || vec![nonprod(), sre_read()],
            change: |c| {
                c.principal.groups.push(entity("group:default/sre"));
                c.tag("aws-account", Some("x-bad-x"));
            },
            expect: Deny {
                denied_by: Some("team-deploys-nonprod"),
                reasons: &["the role template does not give a valid aws target for this stack; check the stack's tags"],
            },
        },
        Row {
            name: "{component} never drops a namespace: two namespaces' components do not share a role",
            rules: || vec![nonprod()],
            change: |c| c.component = Some(entity("component:b/payments")),
            expect: Deny {
                denied_by: Some("team-deploys-nonprod"),
                reasons: &["the role template uses {component}, which names only entities in the default namespace, and component:b/payments is not; the rule must use {component.namespace}/{component.name} or {owner.namespace}/{owner.name}"],
            },
        },
        Row {
            name: "a rule for many namespaces names both parts",
            rules: || vec![Rule {
                target: target("arn:aws:iam::{tags.aws-account}:role/{component.namespace}-{component.name}-deployer"),
                ..nonprod()
            }],
            change: |c| c.component = Some(entity("component:b/payments")),
            expect: Allow {
                rule: "team-deploys-nonprod",
                target: "arn:aws:iam::111111111111:role/b-payments-deployer",
                duration: 900,
            },
        },
        Row {
            name: "nothing matches without rules",
            rules: Vec::new,
            change: |_| {},
            expect: Deny { denied_by: None, reasons: &[] },
        },
        Row {
            name: "rules for another provider do not match",
            rules: || vec![nonprod()],
            change: |c| c.provider = ProviderKind::from_static("gcp"),
            expect: Deny { denied_by: None, reasons: &["the rule is for aws, not gcp"] },
        },
        Row {
            name: "the first matching rule wins",
            rules: || {
                let mut prod_only = nonprod();
                prod_only.name = "prod-only".into();
                prod_only.tags.insert("environment".into(), vec![ValuePattern::new("prod")]);
                vec![prod_only, nonprod(), sre_read()]
            },
            change: |_| {},
            expect: Allow { rule: "team-deploys-nonprod", target: PAYMENTS_DEV, duration: 900 },
        },
        Row {
            name: "globs match tag values",
            rules: || {
                let mut rule = nonprod();
                rule.tags.insert("environment".into(), vec![ValuePattern::new("staging-*")]);
                vec![rule]
            },
            change: |c| c.tag("environment", Some("staging-eu")),
            expect: Allow { rule: "team-deploys-nonprod", target: PAYMENTS_DEV, duration: 900 },
        },
        Row {
            name: "a rule for humans does not match an agent",
            rules: || vec![Rule { requester_kinds: vec![PrincipalKind::Human], ..nonprod() }],
            change: |c| c.principal.kind = PrincipalKind::Agent,
            expect: Deny {
                denied_by: None,
                reasons: &["the rule is for human requesters; this one is agent"],
            },
        },
        Row {
            name: "a rule can widen the owner requirement to a group",
            rules: || vec![nonprod(), sre_read()],
            change: |c| {
                c.principal = principal("user:default/oncall", &["group:default/sre"]);
                c.tag("environment", Some("prod"));
            },
            expect: Allow {
                rule: "sre-read-everything",
                target: "arn:aws:iam::111111111111:role/readonly",
                duration: 900,
            },
        },
        Row {
            name: "a widened rule still needs its group",
            rules: || vec![sre_read()],
            change: |c| c.principal = principal("user:default/bob", &["group:default/team-search"]),
            expect: Deny {
                denied_by: None,
                reasons: &["user:default/bob is in none of the rule's groups (group:default/sre)"],
            },
        },
        Row {
            name: "a matching deny rule stops evaluation",
            rules: || vec![freeze_dev(), nonprod()],
            change: |_| {},
            expect: Deny { denied_by: Some("freeze-dev"), reasons: &[] },
        },
        Row {
            name: "a deny rule that does not match is passed over",
            rules: || vec![freeze_dev(), nonprod()],
            change: |c| c.tag("environment", Some("staging")),
            expect: Allow { rule: "team-deploys-nonprod", target: PAYMENTS_DEV, duration: 900 },
        },
        Row {
            name: "a rule with an approval requirement needs approval",
            rules: || vec![with_approval()],
            change: |_| {},
            expect: Approval { rule: "team-deploys-nonprod" },
        },
    ]
}

#[test]
fn decisions() {
    for row in rows() {
        let mut case = Case::standard();
        (row.change)(&mut case);
        let decision = case.decide(&(row.rules)());
        let name = row.name;
        match (row.expect, decision) {
            (
                Expect::Allow {
                    rule,
                    target,
                    duration,
                },
                Decision::Allow(grant),
            ) => {
                assert_eq!(grant.rule, rule, "{name}");
                assert_eq!(grant.target.as_str(), target, "{name}");
                assert_eq!(grant.duration, Duration::from_secs(duration), "{name}");
            }
            (Expect::Approval { rule }, Decision::NeedsApproval { grant, approval }) => {
                assert_eq!(grant.rule, rule, "{name}");
                assert_eq!(approval.count, 2, "{name}");
            }
            (Expect::Deny { denied_by, reasons }, Decision::Deny(denial)) => {
                assert_eq!(denial.denied_by.as_deref(), denied_by, "{name}");
                let got: Vec<&str> = denial
                    .rules
                    .iter()
                    .flat_map(|m| m.reasons.iter().map(String::as_str))
                    .collect();
                assert_eq!(got, reasons, "{name}");
                assert!(
                    !denial.summary.contains("deployer")
                        && !denial.summary.contains("111111111111"),
                    "{name}: a denial must not reveal the role: {}",
                    denial.summary
                );
            }
            (_, other) => panic!("{name}: unexpected {other:?}"),
        }
    }
}

#[test]
fn a_bound_token_is_told_which_stack_it_is_for() {
    let mut case = Case::standard();
    case.principal = pipeline(RunPhase::Apply);
    case.stack.reference = StackRef::parse("pulumi:acme/payments/staging").unwrap();
    let Decision::Deny(denial) = case.decide(&[nonprod()]) else {
        panic!("denied")
    };
    assert_eq!(
        denial.summary,
        "this hcp-terraform token is for a run of pulumi:acme/payments/dev; it gets credentials for that stack only, not pulumi:acme/payments/staging"
    );
}

#[test]
fn summaries_say_whether_any_rule_could_have_granted() {
    let Decision::Deny(none) = Case::standard().decide(&[]) else {
        panic!()
    };
    assert_eq!(
        none.summary,
        "no rule grants aws credentials on this broker"
    );
    let mut bob = Case::standard();
    bob.principal = principal("user:default/bob", &[]);
    let Decision::Deny(missed) = bob.decide(&[nonprod()]) else {
        panic!()
    };
    assert_eq!(
        missed.summary,
        "no rule grants aws credentials for pulumi:acme/payments/dev to user:default/bob"
    );
}

#[test]
fn session_policy_and_tags_are_rendered_into_the_grant() {
    let mut rule = nonprod();
    rule.session_policy = Some(
        Template::parse_embedded(
            r#"{"Statement":[{"Effect":"Allow","Resource":"arn:aws:s3:::{component}-*"}]}"#,
        )
        .unwrap(),
    );
    rule.session_tags = [("team".to_string(), Template::parse("{owner}").unwrap())].into();
    let Decision::Allow(grant) = Case::standard().decide(&[rule]) else {
        panic!()
    };
    assert_eq!(
        grant.session_policy.as_deref(),
        Some(r#"{"Statement":[{"Effect":"Allow","Resource":"arn:aws:s3:::payments-*"}]}"#)
    );
    assert_eq!(grant.session_tags["team"], "team-payments");
}

#[test]
fn globs_match_tag_values() {
    for (pattern, value, expected) in [
        ("dev", "dev", true),
        ("dev", "dev2", false),
        ("*", "", true),
        ("dev-*", "dev-eu", true),
        ("dev-*", "prod-eu", false),
        ("*-eu", "dev-eu", true),
        ("d?v", "dev", true),
        ("d?v", "deev", false),
        ("a*b*c", "axxbyyc", true),
        ("a*b*c", "axxbyy", false),
    ] {
        assert_eq!(
            ValuePattern::new(pattern).matches(value),
            expected,
            "{pattern} vs {value}"
        );
    }
}
