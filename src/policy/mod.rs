//! The policy decision: a pure function of (rules, principal, stack, ownership,
//! request) that yields a [`Decision`]. `decide` does no I/O: everything it needs
//! has been resolved by the broker beforehand, so every verdict can be
//! unit-tested, explained and tested offline (`stackpass policy test`). Loading
//! and validating rule files lives in `load`.
//!
//! Deny by default. Rules are tried in order and the first rule that matches
//! decides: an `allow` rule grants, a `deny` rule refuses. A rule matches when the
//! provider, every tag selector, the requester kind and the requester's groups
//! match and, unless the rule explicitly widens it, the requester is a member of
//! the stack's owning group. A denial lists every rule considered and why it did
//! not match. Reasons only mention the requested stack's own facts and the
//! requester's relation to its owner, never other teams' stacks, roles or members.

mod live;
mod load;
mod template;
pub mod testing;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use std::sync::Arc;

use serde::Serialize;
use stackpass_provider::{CloudProvider, ProviderKind, Target};

pub use live::LivePolicy;
pub use load::{
    expand_paths, load_rules, validate, PolicyError, PolicyProblem, RuleConfig, RuleSource,
    ValidationContext,
};
pub use template::{RenderError, Template, TemplateError, Variable, SAFE_VALUE_CHARACTERS};

use crate::catalog::EntityRef;
use crate::identity::{Principal, PrincipalKind};
use crate::stacks::Stack;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    Allow,
    Deny,
}

/// One accepted value of a tag selector: exact, or a glob with `*` and `?`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ValuePattern(String);

impl ValuePattern {
    pub fn new(pattern: &str) -> Self {
        ValuePattern(pattern.to_owned())
    }

    pub fn is_glob(&self) -> bool {
        self.0.contains(['*', '?'])
    }

    pub fn matches(&self, value: &str) -> bool {
        glob_match(self.0.as_bytes(), value.as_bytes())
    }

    /// Whether every value this pattern matches is also matched by `other`.
    fn covered_by(&self, other: &ValuePattern) -> bool {
        if self.is_glob() {
            other.0 == self.0 || other.0 == "*"
        } else {
            other.matches(&self.0)
        }
    }
}

impl fmt::Display for ValuePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// `*` matches any run of characters, `?` exactly one; everything else itself.
fn glob_match(pattern: &[u8], value: &[u8]) -> bool {
    let (mut p, mut v) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while v < value.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, v));
                p += 1;
            }
            Some(&c) if c == b'?' || c == value[v] => {
                p += 1;
                v += 1;
            }
            _ => match star {
                Some((star_p, star_v)) => {
                    p = star_p + 1;
                    v = star_v + 1;
                    star = Some((star_p, star_v + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    /// Where the rule was written, for error messages and explanations.
    pub source: RuleSource,
    pub effect: Effect,
    pub provider: ProviderKind,
    /// The stack must carry each tag, with a value matching one of the patterns.
    pub tags: BTreeMap<String, Vec<ValuePattern>>,
    /// Empty: any kind.
    pub requester_kinds: Vec<PrincipalKind>,
    /// Empty: no group requirement; otherwise the requester must be in one.
    pub groups: Vec<EntityRef>,
    /// Owner membership is required unless a rule widens it explicitly.
    pub require_owner: bool,
    /// Allow rules only: what the grant lets the requester become (the `role`
    /// key; an AWS role ARN, for example).
    pub target: Option<TargetTemplate>,
    pub max_duration: Duration,
    /// What a request that names no duration gets: the provider's default,
    /// capped by `max_duration`.
    pub default_duration: Duration,
    pub session_policy: Option<Template>,
    pub session_tags: BTreeMap<String, Template>,
    /// A second person must approve before credentials are issued.
    pub approval: Option<ApprovalRequirement>,
    /// With approval required: the cap for break-glass issuance without it.
    pub break_glass_max_duration: Option<Duration>,
}

/// A rule's target as written, with the provider that parses what it renders
/// to: the template was checked against the provider's syntax when the policy
/// loaded, and each rendered value is parsed into a typed [`Target`].
#[derive(Clone)]
pub struct TargetTemplate {
    pub template: Template,
    pub provider: Arc<dyn CloudProvider>,
}

impl fmt::Debug for TargetTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "TargetTemplate({:?} for {})",
            self.template.source(),
            self.provider.kind()
        )
    }
}

/// Who must approve, how many, and for how long an approval lets the requester in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApprovalRequirement {
    /// At least one: zero approvals never means approved.
    pub count: u32,
    /// Approvers must be in one of these groups, and never the requester.
    pub approvers: Vec<EntityRef>,
    /// How long after approval the requester may obtain credentials.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// How long a request waits for approval before it expires.
    #[serde(with = "humantime_serde")]
    pub request_ttl: Duration,
    #[serde(with = "humantime_serde::option")]
    pub break_glass_max_duration: Option<Duration>,
}

/// Everything the decision looks at, resolved by the broker from trusted sources.
#[derive(Debug, Clone, Copy)]
pub struct PolicyInput<'a> {
    pub principal: &'a Principal,
    pub stack: &'a Stack,
    /// The catalog component the stack's component tag points at.
    pub component: Option<&'a EntityRef>,
    /// The component's owner according to the catalog.
    pub owner: Option<&'a EntityRef>,
    pub environment: Option<&'a str>,
    pub provider: &'a ProviderKind,
    pub requested_duration: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow(Grant),
    /// The grant, once enough approvers have approved (or by break-glass).
    NeedsApproval {
        grant: Grant,
        approval: ApprovalRequirement,
    },
    Deny(Denial),
}

/// What may be issued. `duration` is the requested duration capped by the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub rule: String,
    pub provider: ProviderKind,
    pub target: Target,
    pub duration: Duration,
    pub max_duration: Duration,
    pub session_policy: Option<String>,
    pub session_tags: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Denial {
    /// One line for humans.
    pub summary: String,
    /// The deny rule that matched, if one did.
    pub denied_by: Option<String>,
    /// Each rule considered, with why it did not match.
    pub rules: Vec<RuleMiss>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleMiss {
    pub rule: String,
    pub reasons: Vec<String>,
}

pub fn decide(rules: &[Rule], input: &PolicyInput<'_>) -> Decision {
    let mut misses = Vec::new();
    for rule in rules {
        match evaluate(rule, input) {
            Ok(Some(grant)) => {
                return match &rule.approval {
                    Some(approval) => Decision::NeedsApproval {
                        grant,
                        approval: approval.clone(),
                    },
                    None => Decision::Allow(grant),
                }
            }
            Ok(None) => {
                return Decision::Deny(Denial {
                    summary: format!(
                        "rule {} denies {} credentials for {} to {}",
                        rule.name, input.provider, input.stack.reference, input.principal.subject
                    ),
                    denied_by: Some(rule.name.clone()),
                    rules: misses,
                })
            }
            Err(reasons) => misses.push(RuleMiss {
                rule: rule.name.clone(),
                reasons,
            }),
        }
    }
    let summary = if rules
        .iter()
        .all(|r| r.provider != *input.provider || r.effect == Effect::Deny)
    {
        format!(
            "no rule grants {} credentials on this broker",
            input.provider
        )
    } else {
        format!(
            "no rule grants {} credentials for {} to {}",
            input.provider, input.stack.reference, input.principal.subject
        )
    };
    Decision::Deny(Denial {
        summary,
        denied_by: None,
        rules: misses,
    })
}

/// Checks one rule. `Ok(Some)` grants, `Ok(None)` is a matching deny rule, and a
/// miss returns every reason, not just the first, so one denial tells the
/// requester everything that has to change.
fn evaluate(rule: &Rule, input: &PolicyInput<'_>) -> Result<Option<Grant>, Vec<String>> {
    if rule.provider != *input.provider {
        // Nothing else about a rule for another cloud is relevant to this request.
        return Err(vec![format!(
            "the rule is for {}, not {}",
            rule.provider, input.provider
        )]);
    }
    let mut reasons = Vec::new();
    for (tag, allowed) in &rule.tags {
        match input.stack.tags.get(tag) {
            Some(value) if allowed.iter().any(|p| p.matches(value)) => {}
            Some(value) => reasons.push(format!(
                "the stack's tag {tag} is {value:?}; the rule needs one of {}",
                allowed
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            None => reasons.push(format!("the stack has no {tag} tag")),
        }
    }
    let principal = input.principal;
    if !rule.requester_kinds.is_empty() && !rule.requester_kinds.contains(&principal.kind) {
        reasons.push(format!(
            "the rule is for {} requesters; this one is {}",
            rule.requester_kinds
                .iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(" or "),
            principal.kind.as_str()
        ));
    }
    if !rule.groups.is_empty() && !rule.groups.iter().any(|g| is_member(principal, g)) {
        reasons.push(format!(
            "{} is in none of the rule's groups ({})",
            principal.subject,
            rule.groups
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if rule.effect == Effect::Deny {
        return if reasons.is_empty() {
            Ok(None)
        } else {
            Err(reasons)
        };
    }
    if rule.require_owner {
        match (input.component, input.owner) {
            (None, _) => reasons
                .push("the stack's tags name no catalog component, so it has no owner".into()),
            (Some(component), None) => {
                reasons.push(format!("the catalog has no owner for {component}"))
            }
            (Some(component), Some(owner)) => {
                if !is_member(principal, owner) {
                    reasons.push(format!(
                        "{} is not a member of {owner}, which owns {component}",
                        principal.subject
                    ));
                }
            }
        }
    }
    let fill = |template: &Template, what: &str, reasons: &mut Vec<String>| match template
        .render(|variable| lookup(variable, input))
    {
        Ok(value) => Some(value),
        Err(RenderError::Missing(variable)) => {
            reasons.push(format!(
                "the {what} template needs {variable}, which this stack does not have"
            ));
            None
        }
        Err(RenderError::Unsafe(variable)) => {
            reasons.push(format!(
                "the value of {variable} cannot be used in the {what} (allowed: {SAFE_VALUE_CHARACTERS})"
            ));
            None
        }
    };
    let target = rule.target.as_ref().and_then(|target| {
        let rendered = fill(&target.template, "role", &mut reasons)?;
        // The reason names neither the value nor the error: a denial must not
        // reveal what the rule would have granted.
        target
            .provider
            .parse_target(&rendered)
            .inspect_err(|_| {
                reasons.push(format!(
                    "the role template does not give a valid {} target for this stack; check the stack's tags",
                    rule.provider
                ))
            })
            .ok()
    });
    let session_policy = rule
        .session_policy
        .as_ref()
        .map(|t| fill(t, "session policy", &mut reasons));
    let mut session_tags = BTreeMap::new();
    for (key, template) in &rule.session_tags {
        if let Some(value) = fill(template, "session tag", &mut reasons) {
            session_tags.insert(key.clone(), value);
        }
    }
    match target {
        Some(target) if reasons.is_empty() => Ok(Some(Grant {
            rule: rule.name.clone(),
            provider: rule.provider.clone(),
            target,
            duration: input
                .requested_duration
                .unwrap_or(rule.default_duration)
                .min(rule.max_duration),
            max_duration: rule.max_duration,
            session_policy: session_policy.flatten(),
            session_tags,
        })),
        _ => Err(reasons),
    }
}

fn is_member(principal: &Principal, group: &EntityRef) -> bool {
    principal.subject == *group || principal.groups.contains(group)
}

fn lookup<'a>(variable: &Variable, input: &PolicyInput<'a>) -> Option<&'a str> {
    match variable {
        Variable::Tag(tag) => input.stack.tags.get(tag).map(String::as_str),
        Variable::Component => input.component.map(EntityRef::name),
        Variable::Owner => input.owner.map(EntityRef::name),
        Variable::Environment => input.environment,
        Variable::StackOrganization => Some(input.stack.reference.organization()),
        Variable::StackProject => input.stack.reference.project(),
        Variable::StackName => Some(input.stack.reference.name()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::FakeCloud;
    use crate::identity::PrincipalKind;
    use crate::stacks::StackRef;

    fn aws() -> ProviderKind {
        ProviderKind::from_static("aws")
    }

    fn target(template: &str) -> Option<TargetTemplate> {
        Some(TargetTemplate {
            template: Template::parse(template).unwrap(),
            provider: FakeCloud::named("aws"),
        })
    }

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
            groups: groups.iter().map(|g| entity(g)).collect(),
        }
    }

    fn stack(reference: &str, tags: &[(&str, &str)]) -> Stack {
        Stack {
            reference: StackRef::parse(reference).unwrap(),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn nonprod_rule() -> Rule {
        Rule {
            name: "team-deploys-nonprod".into(),
            source: RuleSource::default(),
            effect: Effect::Allow,
            provider: aws(),
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
            target: target("arn:aws:iam::{tags.aws-account}:role/{component}-deployer"),
            max_duration: Duration::from_secs(3600),
            default_duration: Duration::from_secs(900),
            session_policy: None,
            session_tags: BTreeMap::new(),
            approval: None,
            break_glass_max_duration: None,
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
        fn new() -> Case {
            Case {
                principal: principal("user:default/jane", &["group:default/team-payments"]),
                stack: stack(
                    "pulumi:acme/payments/dev",
                    &[
                        ("environment", "dev"),
                        ("aws-account", "111111111111"),
                        ("backstage.io/component", "payments"),
                    ],
                ),
                component: Some(entity("component:default/payments")),
                owner: Some(entity("group:default/team-payments")),
                provider: aws(),
                duration: None,
            }
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

    fn denial(decision: Decision) -> Denial {
        match decision {
            Decision::Deny(denial) => denial,
            other => panic!("expected a denial, got {other:?}"),
        }
    }

    #[test]
    fn owner_member_gets_the_rendered_role() {
        let Decision::Allow(grant) = Case::new().decide(&[nonprod_rule()]) else {
            panic!("expected allow");
        };
        assert_eq!(
            grant.target.as_str(),
            "arn:aws:iam::111111111111:role/payments-deployer"
        );
        assert_eq!(grant.rule, "team-deploys-nonprod");
        assert_eq!(grant.duration, Duration::from_secs(900));
    }

    #[test]
    fn duration_is_capped_by_the_rule() {
        let mut case = Case::new();
        case.duration = Some(Duration::from_secs(7200));
        let Decision::Allow(grant) = case.decide(&[nonprod_rule()]) else {
            panic!()
        };
        assert_eq!(grant.duration, Duration::from_secs(3600));
        case.duration = Some(Duration::from_secs(1800));
        let Decision::Allow(grant) = case.decide(&[nonprod_rule()]) else {
            panic!()
        };
        assert_eq!(grant.duration, Duration::from_secs(1800));
    }

    #[test]
    fn a_user_who_owns_the_component_directly_is_allowed() {
        let mut case = Case::new();
        case.principal.groups.clear();
        case.owner = Some(entity("user:default/jane"));
        assert!(matches!(case.decide(&[nonprod_rule()]), Decision::Allow(_)));
    }

    #[test]
    fn non_member_is_denied_with_an_explanation() {
        let mut case = Case::new();
        case.principal = principal("user:default/bob", &["group:default/team-search"]);
        let denial = denial(case.decide(&[nonprod_rule()]));
        assert_eq!(denial.rules.len(), 1);
        assert_eq!(denial.rules[0].rule, "team-deploys-nonprod");
        assert_eq!(
            denial.rules[0].reasons,
            vec!["user:default/bob is not a member of group:default/team-payments, which owns component:default/payments"]
        );
        // The denial must not leak the role (and its account id) the rule would have granted.
        let text = serde_json::to_string(&denial).unwrap();
        assert!(
            !text.contains("111111111111") && !text.contains("deployer"),
            "{text}"
        );
    }

    #[test]
    fn environment_outside_the_selector_is_denied() {
        let mut case = Case::new();
        case.stack.tags.insert("environment".into(), "prod".into());
        let denial = denial(case.decide(&[nonprod_rule()]));
        assert_eq!(
            denial.rules[0].reasons,
            vec![
                r#"the stack's tag environment is "prod"; the rule needs one of "dev", "staging""#
            ]
        );
    }

    #[test]
    fn every_reason_is_reported_at_once() {
        let mut case = Case::new();
        case.principal = principal("user:default/bob", &[]);
        case.stack.tags.remove("environment");
        case.stack.tags.remove("aws-account");
        let denial = denial(case.decide(&[nonprod_rule()]));
        // No environment tag, no aws-account tag, not a member, and the role
        // template cannot be filled.
        assert_eq!(
            denial.rules[0].reasons.len(),
            4,
            "{:?}",
            denial.rules[0].reasons
        );
    }

    #[test]
    fn missing_component_or_owner_denies() {
        let mut case = Case::new();
        case.component = None;
        case.owner = None;
        let reasons = denial(case.decide(&[nonprod_rule()])).rules[0]
            .reasons
            .clone();
        assert!(reasons[0].contains("no catalog component"), "{reasons:?}");

        let mut case = Case::new();
        case.owner = None;
        let reasons = denial(case.decide(&[nonprod_rule()])).rules[0]
            .reasons
            .clone();
        assert!(reasons[0].contains("no owner"), "{reasons:?}");
    }

    #[test]
    fn unsafe_tag_values_never_reach_the_role() {
        let mut case = Case::new();
        case.stack
            .tags
            .insert("aws-account".into(), "111111111111:role/admin#".into());
        let reasons = denial(case.decide(&[nonprod_rule()])).rules[0]
            .reasons
            .clone();
        assert!(
            reasons[0].contains("cannot be used in the role"),
            "{reasons:?}"
        );
    }

    #[test]
    fn deny_by_default_and_rules_for_other_providers_do_not_match() {
        let case = Case::new();
        let denial_without_rules = denial(case.decide(&[]));
        assert!(denial_without_rules.rules.is_empty());
        assert_eq!(
            denial_without_rules.summary,
            "no rule grants aws credentials on this broker"
        );

        let mut case = Case::new();
        case.provider = ProviderKind::from_static("gcp");
        let denial = denial(case.decide(&[nonprod_rule()]));
        assert_eq!(
            denial.rules[0].reasons,
            vec!["the rule is for aws, not gcp"]
        );
    }

    #[test]
    fn first_matching_rule_wins() {
        let mut second = nonprod_rule();
        second.name = "second".into();
        let mut first = nonprod_rule();
        first.name = "first".into();
        first
            .tags
            .insert("environment".into(), vec![ValuePattern::new("prod")]);
        let Decision::Allow(grant) = Case::new().decide(&[first, second]) else {
            panic!()
        };
        assert_eq!(grant.rule, "second");
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
        let mut case = Case::new();
        case.stack
            .tags
            .insert("environment".into(), "staging-eu".into());
        let mut rule = nonprod_rule();
        rule.tags
            .insert("environment".into(), vec![ValuePattern::new("staging-*")]);
        assert!(matches!(case.decide(&[rule]), Decision::Allow(_)));
    }

    #[test]
    fn requester_kinds_and_groups_narrow_a_rule() {
        let mut humans_only = nonprod_rule();
        humans_only.requester_kinds = vec![PrincipalKind::Human];
        let mut case = Case::new();
        case.principal.kind = PrincipalKind::Agent;
        let reasons = denial(case.decide(&[humans_only.clone()])).rules[0]
            .reasons
            .clone();
        assert_eq!(
            reasons,
            vec!["the rule is for human requesters; this one is agent"]
        );
        case.principal.kind = PrincipalKind::Human;
        assert!(matches!(case.decide(&[humans_only]), Decision::Allow(_)));
    }

    #[test]
    fn a_rule_can_widen_the_owner_requirement_to_a_group() {
        let mut sre = nonprod_rule();
        sre.name = "sre-read-everything".into();
        sre.require_owner = false;
        sre.groups = vec![entity("group:default/sre")];
        sre.tags.clear();
        sre.target = target("arn:aws:iam::111111111111:role/readonly");
        let mut case = Case::new();
        case.principal = principal("user:default/oncall", &["group:default/sre"]);
        case.stack.tags.insert("environment".into(), "prod".into());
        let Decision::Allow(grant) = case.decide(&[nonprod_rule(), sre.clone()]) else {
            panic!()
        };
        assert_eq!(grant.rule, "sre-read-everything");
        case.principal = principal("user:default/bob", &["group:default/team-search"]);
        let denial = denial(case.decide(&[sre]));
        assert!(
            denial.rules[0].reasons[0].contains("in none of the rule's groups"),
            "{denial:?}"
        );
    }

    #[test]
    fn a_deny_rule_that_matches_stops_evaluation() {
        let mut freeze = nonprod_rule();
        freeze.name = "freeze-staging".into();
        freeze.effect = Effect::Deny;
        freeze.target = None;
        freeze.tags = [("environment".to_string(), vec![ValuePattern::new("dev")])].into();
        let denial = denial(Case::new().decide(&[freeze.clone(), nonprod_rule()]));
        assert_eq!(denial.denied_by.as_deref(), Some("freeze-staging"));
        let mut case = Case::new();
        case.stack
            .tags
            .insert("environment".into(), "staging".into());
        assert!(matches!(
            case.decide(&[freeze, nonprod_rule()]),
            Decision::Allow(_)
        ));
    }

    #[test]
    fn session_policy_and_tags_are_rendered_into_the_grant() {
        let mut rule = nonprod_rule();
        rule.session_policy = Some(
            Template::parse_embedded(
                r#"{"Statement":[{"Effect":"Allow","Resource":"arn:aws:s3:::{component}-*"}]}"#,
            )
            .unwrap(),
        );
        rule.session_tags = [("team".to_string(), Template::parse("{owner}").unwrap())].into();
        let Decision::Allow(grant) = Case::new().decide(&[rule]) else {
            panic!()
        };
        assert_eq!(
            grant.session_policy.as_deref(),
            Some(r#"{"Statement":[{"Effect":"Allow","Resource":"arn:aws:s3:::payments-*"}]}"#)
        );
        assert_eq!(grant.session_tags["team"], "team-payments");
    }

    #[test]
    fn a_rule_with_an_approval_requirement_needs_approval() {
        let mut rule = nonprod_rule();
        rule.approval = Some(ApprovalRequirement {
            count: 2,
            approvers: vec![entity("group:default/team-payments")],
            window: Duration::from_secs(3600),
            request_ttl: Duration::from_secs(86400),
            break_glass_max_duration: None,
        });
        let Decision::NeedsApproval { grant, approval } = Case::new().decide(&[rule]) else {
            panic!()
        };
        assert_eq!(grant.rule, "team-deploys-nonprod");
        assert_eq!(approval.count, 2);
    }
}
