//! The policy decision: a pure function of (rules, principal, stack, ownership,
//! request) that yields a [`Decision`]. No I/O happens here: everything the
//! decision needs has been resolved by the broker beforehand, so every verdict can
//! be unit-tested and explained.
//!
//! Deny by default. Rules are tried in order and the first rule that matches
//! grants; a denial lists every rule considered and why it did not match. Reasons
//! only mention the requested stack's own facts and the requester's relation to its
//! owner, never other teams' stacks, roles or members.

mod template;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;
use stackpass_provider::ProviderKind;

pub use template::{RenderError, Template, TemplateError, Variable, SAFE_VALUE_CHARACTERS};

use crate::catalog::EntityRef;
use crate::config::RuleConfig;
use crate::identity::Principal;
use crate::stacks::Stack;

/// The shortest credential STS will issue; also the default when none is asked for.
pub const MIN_DURATION: Duration = Duration::from_secs(900);

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub provider: ProviderKind,
    pub tags: BTreeMap<String, BTreeSet<String>>,
    pub role: Template,
    pub max_duration: Duration,
    pub session_policy: Option<String>,
}

impl Rule {
    pub fn from_config(config: &RuleConfig) -> Result<Rule, TemplateError> {
        Ok(Rule {
            name: config.name.clone(),
            provider: config.provider,
            tags: config
                .tags
                .iter()
                .map(|(tag, values)| (tag.clone(), values.iter().cloned().collect()))
                .collect(),
            role: Template::parse(&config.role)?,
            max_duration: config.max_duration,
            session_policy: config.session_policy.clone(),
        })
    }
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
    pub provider: ProviderKind,
    pub requested_duration: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    Allow(Grant),
    Deny(Denial),
}

/// What may be issued. `duration` is the requested duration capped by the rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Grant {
    pub rule: String,
    pub provider: ProviderKind,
    pub role: String,
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    #[serde(with = "humantime_serde")]
    pub max_duration: Duration,
    pub session_policy: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Denial {
    /// One line for humans.
    pub summary: String,
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
            Ok(grant) => return Decision::Allow(grant),
            Err(reasons) => misses.push(RuleMiss {
                rule: rule.name.clone(),
                reasons,
            }),
        }
    }
    let summary = if rules.iter().all(|r| r.provider != input.provider) {
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
        rules: misses,
    })
}

/// Checks one rule; on a miss returns every reason, not just the first, so one
/// denial tells the requester everything that has to change.
fn evaluate(rule: &Rule, input: &PolicyInput<'_>) -> Result<Grant, Vec<String>> {
    if rule.provider != input.provider {
        // Nothing else about a rule for another cloud is relevant to this request.
        return Err(vec![format!(
            "the rule is for {}, not {}",
            rule.provider, input.provider
        )]);
    }
    let mut reasons = Vec::new();
    for (tag, allowed) in &rule.tags {
        match input.stack.tags.get(tag) {
            Some(value) if allowed.contains(value) => {}
            Some(value) => reasons.push(format!(
                "the stack's tag {tag} is {value:?}; the rule needs one of {}",
                allowed
                    .iter()
                    .map(|v| format!("{v:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            None => reasons.push(format!("the stack has no {tag} tag")),
        }
    }
    match (input.component, input.owner) {
        (None, _) => {
            reasons.push("the stack's tags name no catalog component, so it has no owner".into())
        }
        (Some(component), None) => {
            reasons.push(format!("the catalog has no owner for {component}"))
        }
        (Some(component), Some(owner)) => {
            if !is_member(input.principal, owner) {
                reasons.push(format!(
                    "{} is not a member of {owner}, which owns {component}",
                    input.principal.subject
                ));
            }
        }
    }
    let role = rule.role.render(|variable| lookup(variable, input));
    let role = match role {
        Ok(role) => Some(role),
        Err(RenderError::Missing(variable)) => {
            reasons.push(format!(
                "the role template needs {variable}, which this stack does not have"
            ));
            None
        }
        Err(RenderError::Unsafe(variable)) => {
            reasons.push(format!(
                "the value of {variable} cannot be used in a role name (allowed: {SAFE_VALUE_CHARACTERS})"
            ));
            None
        }
    };
    match role {
        Some(role) if reasons.is_empty() => Ok(Grant {
            rule: rule.name.clone(),
            provider: rule.provider,
            role,
            duration: input
                .requested_duration
                .unwrap_or(MIN_DURATION)
                .min(rule.max_duration),
            max_duration: rule.max_duration,
            session_policy: rule.session_policy.clone(),
        }),
        _ => Err(reasons),
    }
}

fn is_member(principal: &Principal, owner: &EntityRef) -> bool {
    principal.subject == *owner || principal.groups.contains(owner)
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
    use crate::identity::PrincipalKind;
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
            provider: ProviderKind::Aws,
            tags: [(
                "environment".to_string(),
                ["dev".to_string(), "staging".to_string()].into(),
            )]
            .into(),
            role: Template::parse("arn:aws:iam::{tags.aws-account}:role/{component}-deployer")
                .unwrap(),
            max_duration: Duration::from_secs(3600),
            session_policy: None,
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
                provider: ProviderKind::Aws,
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
                    provider: self.provider,
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
            grant.role,
            "arn:aws:iam::111111111111:role/payments-deployer"
        );
        assert_eq!(grant.rule, "team-deploys-nonprod");
        assert_eq!(grant.duration, MIN_DURATION);
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
        assert_eq!(
            denial.rules[0].reasons.len(),
            3,
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
            reasons[0].contains("cannot be used in a role name"),
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
        case.provider = ProviderKind::Gcp;
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
            .insert("environment".into(), ["prod".to_string()].into());
        let Decision::Allow(grant) = Case::new().decide(&[first, second]) else {
            panic!()
        };
        assert_eq!(grant.rule, "second");
    }
}
