//! Rules validated as a set before a single one is used: every field checked
//! (the provider checks its own targets, durations, session policies and
//! session tags), templates that use a tag no selector guarantees, widening the
//! owner requirement without naming groups, and rules that can never match
//! because an earlier rule matches everything they would.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::time::Duration;

use super::written::RuleConfig;
use super::{Effect, Rule, TargetTemplate, Template, ValuePattern, Variable};
use crate::identity::PrincipalKind;
use crate::registry::Providers;

/// Where a rule was written: a file and line, or a key of the server config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleSource(pub String);

impl fmt::Display for RuleSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyProblem {
    pub source: String,
    pub message: String,
}

impl fmt::Display for PolicyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.source, self.message)
    }
}

/// What validation needs to know about the deployment.
#[derive(Clone)]
pub struct ValidationContext {
    pub environment_tag: String,
    /// The providers rules may name; each checks its own rules' targets,
    /// durations, session policies and session tags.
    pub providers: Providers,
}

/// Validates written rules as a set and converts the valid ones.
pub fn validate(
    written: &[(RuleSource, RuleConfig)],
    context: &ValidationContext,
    problems: &mut Vec<PolicyProblem>,
) -> Vec<Rule> {
    let mut names = HashSet::new();
    let mut rules: Vec<Rule> = Vec::new();
    for (source, config) in written {
        let mut messages: Vec<String> = Vec::new();
        if !names.insert(config.name.clone()) {
            messages.push("the name is used by another rule".into());
        }
        let provider = context.providers.get(&config.provider);
        if provider.is_none() {
            messages.push(format!(
                "provider {} is not configured on this broker (configured: {})",
                config.provider,
                context
                    .providers
                    .kinds()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        for (tag, values) in &config.tags {
            if values.is_empty() {
                messages.push(format!(
                    "tags.{tag} lists no values, so the rule could never match"
                ));
            }
        }
        if !config.run_phases.is_empty()
            && !config.requester_kinds.is_empty()
            && !config.requester_kinds.contains(&PrincipalKind::Service)
        {
            messages.push(
                "run_phases only match pipeline runs, which are service requesters; add \"service\" to requester_kinds or drop run_phases".into(),
            );
        }
        let mut phases = HashSet::new();
        if let Some(twice) = config.run_phases.iter().find(|p| !phases.insert(**p)) {
            messages.push(format!("run_phases lists {twice} twice"));
        }
        if !config.require_owner && config.groups.is_empty() {
            messages.push(
                "require_owner = false widens the rule to everyone; name the groups it widens to"
                    .into(),
            );
        }
        let target = match (config.effect, &config.role) {
            (Effect::Allow, None) => {
                let syntax = provider.map_or("", |p| p.target_syntax());
                messages.push(format!(
                    "allow rules need a role (or target): what the grant becomes at the cloud, written {syntax}"
                ));
                None
            }
            (Effect::Deny, Some(_)) => {
                messages.push("deny rules grant nothing, so they take no role (or target)".into());
                None
            }
            (_, Some(role)) => Template::parse(role)
                .map_err(|e| messages.push(format!("role: {e}")))
                .ok()
                .zip(provider)
                .and_then(|(template, provider)| {
                    provider
                        .check_target_pattern(template.source())
                        .map_err(|e| messages.push(format!("role: {e}")))
                        .ok()?;
                    Some(TargetTemplate {
                        template,
                        provider: provider.clone(),
                    })
                }),
            (Effect::Deny, None) => None,
        };
        let session_policy = config.session_policy.as_ref().and_then(|policy| {
            let template = Template::parse_embedded(policy)
                .map_err(|e| messages.push(format!("session_policy: {e}")))
                .ok()?;
            let sample = template.render(|_| Some("x")).unwrap_or_default();
            if let Some(Err(e)) = provider.map(|p| p.check_session_policy(&sample)) {
                messages.push(e);
            }
            Some(template)
        });
        let mut session_tags = BTreeMap::new();
        for (key, value) in &config.session_tags {
            if let Some(Err(e)) = provider.map(|p| p.check_session_tag_key(key)) {
                messages.push(format!("session_tags.{key}: {e}"));
            }
            match Template::parse(value) {
                Ok(template) => {
                    session_tags.insert(key.clone(), template);
                }
                Err(e) => messages.push(format!("session_tags.{key}: {e}")),
            }
        }
        let approval = config.approval.as_ref().map(|approval| {
            if approval.count == 0 {
                messages.push(
                    "approval.count must be at least 1; zero approvals never means approved".into(),
                );
            }
            if approval.approvers.is_empty() {
                messages.push("approval.approvers must name at least one group".into());
            }
            if approval.window < Duration::from_secs(1)
                || approval.window > Duration::from_secs(7 * 24 * 3600)
            {
                messages.push("approval.window must be between 1s and 7d".into());
            }
            if approval.request_ttl < Duration::from_secs(1)
                || approval.request_ttl > Duration::from_secs(30 * 24 * 3600)
            {
                messages.push("approval.request_ttl must be between 1s and 30d".into());
            }
            super::ApprovalRequirement {
                count: approval.count,
                approvers: approval.approvers.clone(),
                window: approval.window,
                request_ttl: approval.request_ttl,
                break_glass_max_duration: config.break_glass.as_ref().map(|b| b.max_duration),
            }
        });
        if config.effect == Effect::Deny
            && (config.approval.is_some() || config.break_glass.is_some())
        {
            messages.push("deny rules take no approval or break_glass".into());
        }
        if let Some(break_glass) = &config.break_glass {
            if config.approval.is_none() {
                messages
                    .push("break_glass only makes sense on a rule that requires approval".into());
            }
            if break_glass.max_duration < Duration::from_secs(900)
                || break_glass.max_duration > Duration::from_secs(3600)
            {
                messages.push("break_glass.max_duration must be between 15m and 1h".into());
            }
        }
        let limits = provider.map(|p| p.limits());
        if let Some(limits) = limits.filter(|_| config.effect == Effect::Allow) {
            let max = config.max_duration;
            if max < limits.min_duration || max > limits.max_duration {
                messages.push(format!(
                    "max_duration must be between {} and {} (the range {} accepts)",
                    humantime::format_duration(limits.min_duration),
                    humantime::format_duration(limits.max_duration),
                    config.provider
                ));
            }
        }
        let rule = Rule {
            name: config.name.clone(),
            source: source.clone(),
            effect: config.effect,
            provider: config.provider.clone(),
            tags: config
                .tags
                .iter()
                .map(|(tag, values)| {
                    (
                        tag.clone(),
                        values.iter().map(|v| ValuePattern::new(v)).collect(),
                    )
                })
                .collect(),
            requester_kinds: config.requester_kinds.clone(),
            groups: config.groups.clone(),
            require_owner: config.require_owner && config.effect == Effect::Allow,
            require_dedicated_audience: config.require_dedicated_audience
                && config.effect == Effect::Allow,
            run_phases: config.run_phases.clone(),
            target,
            max_duration: config.max_duration,
            default_duration: limits
                .map_or(config.max_duration, |l| l.default_duration)
                .min(config.max_duration),
            session_policy,
            session_tags,
            break_glass_max_duration: approval.as_ref().and_then(|a| a.break_glass_max_duration),
            approval,
        };
        messages.extend(unguaranteed_variables(&rule, &context.environment_tag));
        if messages.is_empty() {
            if let Some(earlier) = rules.iter().find(|earlier| covers(earlier, &rule)) {
                messages.push(format!(
                    "can never match: rule {:?} ({}) comes first and matches every request this one does",
                    earlier.name, earlier.source
                ));
            }
        }
        if messages.is_empty() {
            rules.push(rule);
        }
        problems.extend(messages.into_iter().map(|message| PolicyProblem {
            source: source.to_string(),
            message: format!("rule {:?}: {message}", config.name),
        }));
    }
    rules
}

/// Template variables a rule uses but whose presence nothing in the rule
/// guarantees: a tag must have a selector, the environment its tag's selector,
/// and component and owner need the owner requirement (which implies both).
fn unguaranteed_variables(rule: &Rule, environment_tag: &str) -> Vec<String> {
    let templates = rule
        .target
        .iter()
        .map(|t| ("role", &t.template))
        .chain(rule.session_policy.iter().map(|t| ("session_policy", t)))
        .chain(rule.session_tags.values().map(|t| ("session_tags", t)));
    let mut messages = Vec::new();
    for (field, template) in templates {
        for variable in template.variables() {
            let guaranteed = match variable {
                Variable::Tag(tag) => rule.tags.contains_key(tag),
                Variable::Environment => rule.tags.contains_key(environment_tag),
                Variable::Component
                | Variable::Owner
                | Variable::ComponentName
                | Variable::ComponentNamespace
                | Variable::OwnerName
                | Variable::OwnerNamespace => rule.require_owner,
                Variable::StackOrganization | Variable::StackName | Variable::StackProject => true,
            };
            if !guaranteed {
                let hint = match variable {
                    Variable::Tag(tag) => format!("add a selector such as tags.{tag} = [\"*\"]"),
                    Variable::Environment => format!("add a selector on tags.{environment_tag}"),
                    _ => "keep require_owner = true".into(),
                };
                messages.push(format!(
                    "{field} uses {variable}, which no selector guarantees; {hint}"
                ));
            }
        }
    }
    messages
}

/// Whether `earlier` matches every request `later` matches (so `later` can never
/// be reached). Conservative: only says yes when it is sure.
pub(super) fn covers(earlier: &Rule, later: &Rule) -> bool {
    let tags = earlier.tags.iter().all(|(tag, patterns)| {
        later.tags.get(tag).is_some_and(|later_patterns| {
            later_patterns
                .iter()
                .all(|p| patterns.iter().any(|e| p.covered_by(e)))
        })
    });
    let kinds = earlier.requester_kinds.is_empty()
        || (!later.requester_kinds.is_empty()
            && later
                .requester_kinds
                .iter()
                .all(|k| earlier.requester_kinds.contains(k)));
    let groups = earlier.groups.is_empty()
        || (!later.groups.is_empty() && later.groups.iter().all(|g| earlier.groups.contains(g)));
    let owner = !earlier.require_owner || later.require_owner;
    let audience = !earlier.require_dedicated_audience || later.require_dedicated_audience;
    let phases = earlier.run_phases.is_empty()
        || (!later.run_phases.is_empty()
            && later
                .run_phases
                .iter()
                .all(|p| earlier.run_phases.contains(p)));
    earlier.provider == later.provider && tags && kinds && groups && owner && audience && phases
}
