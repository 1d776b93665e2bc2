//! Rules as people write them: `[[policy.rules]]` in the server config and
//! `[[rules]]` in policy files, parsed strictly and validated as a whole before a
//! single one is used. Every problem names its file and line (or config key):
//! unknown keys, templates that use a tag no selector guarantees, widening the
//! owner requirement without naming groups, and rules that can never match
//! because an earlier rule matches everything they would.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use stackpass_provider::ProviderKind;

use super::{Effect, Rule, TargetTemplate, Template, ValuePattern, Variable};
use crate::catalog::EntityRef;
use crate::identity::PrincipalKind;
use crate::registry::Providers;

/// One rule as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    #[serde(default = "default_effect")]
    pub effect: Effect,
    pub provider: ProviderKind,
    /// Tag selectors: the stack's tag must match one of the values (`*`/`?` globs).
    #[serde(default)]
    pub tags: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub requester_kinds: Vec<PrincipalKind>,
    #[serde(default)]
    pub groups: Vec<EntityRef>,
    #[serde(default = "default_true")]
    pub require_owner: bool,
    /// Role template, e.g. `arn:aws:iam::{tags.aws-account}:role/{component}-deployer`.
    pub role: Option<String>,
    #[serde(default = "default_max_duration", with = "humantime_serde")]
    pub max_duration: Duration,
    /// Inline session policy (JSON) that narrows the role; may use `{variables}`.
    pub session_policy: Option<String>,
    /// Session tags, each value a template.
    #[serde(default)]
    pub session_tags: BTreeMap<String, String>,
    /// Require approval by other people before issuing.
    pub approval: Option<ApprovalConfig>,
    /// Allow break-glass (issue now, capped, flagged, announced) on an approval rule.
    pub break_glass: Option<BreakGlassConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalConfig {
    #[serde(default = "default_count")]
    pub count: u32,
    pub approvers: Vec<EntityRef>,
    #[serde(default = "default_window", with = "humantime_serde")]
    pub window: Duration,
    #[serde(default = "default_request_ttl", with = "humantime_serde")]
    pub request_ttl: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakGlassConfig {
    #[serde(default = "default_break_glass", with = "humantime_serde")]
    pub max_duration: Duration,
}

fn default_count() -> u32 {
    1
}

fn default_window() -> Duration {
    Duration::from_secs(3600)
}

fn default_request_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}

fn default_break_glass() -> Duration {
    Duration::from_secs(900)
}

fn default_effect() -> Effect {
    Effect::Allow
}

fn default_true() -> bool {
    true
}

fn default_max_duration() -> Duration {
    Duration::from_secs(3600)
}

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

/// Every problem found in a set of rules.
#[derive(Debug, Clone, thiserror::Error)]
pub struct PolicyError {
    pub problems: Vec<PolicyProblem>,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the policy has {} problem(s):", self.problems.len())?;
        for problem in &self.problems {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    rules: Vec<toml::Spanned<RuleConfig>>,
}

/// The policy files named by `paths`: files as given, directories as every
/// `*.toml` inside them in name order.
pub fn expand_paths(paths: &[PathBuf]) -> Result<Vec<PathBuf>, PolicyError> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let entries = std::fs::read_dir(path).map_err(|e| single(path, e.to_string()))?;
            let mut found: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|ext| ext == "toml"))
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

fn single(path: &Path, message: String) -> PolicyError {
    PolicyError {
        problems: vec![PolicyProblem {
            source: path.display().to_string(),
            message,
        }],
    }
}

/// Loads and validates the config's rules followed by every policy file's, in
/// order. Either every rule is valid and the set is returned, or nothing is.
pub fn load_rules(
    config_rules: &[RuleConfig],
    paths: &[PathBuf],
    context: &ValidationContext,
) -> Result<Vec<Rule>, PolicyError> {
    let mut written: Vec<(RuleSource, RuleConfig)> = config_rules
        .iter()
        .enumerate()
        .map(|(i, rule)| (RuleSource(format!("policy.rules[{i}]")), rule.clone()))
        .collect();
    let mut problems = Vec::new();
    for file in expand_paths(paths)? {
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) => {
                problems.push(PolicyProblem {
                    source: file.display().to_string(),
                    message: format!("cannot read: {e}"),
                });
                continue;
            }
        };
        match toml::from_str::<PolicyFile>(&text) {
            Ok(parsed) => {
                for rule in parsed.rules {
                    let line = text[..rule.span().start].matches('\n').count() + 1;
                    written.push((
                        RuleSource(format!("{}:{line}", file.display())),
                        rule.into_inner(),
                    ));
                }
            }
            Err(e) => problems.push(PolicyProblem {
                source: file.display().to_string(),
                message: e.to_string().trim_end().replace('\n', "\n      "),
            }),
        }
    }
    let rules = validate(&written, context, &mut problems);
    if problems.is_empty() {
        Ok(rules)
    } else {
        Err(PolicyError { problems })
    }
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
        if !config.require_owner && config.groups.is_empty() {
            messages.push(
                "require_owner = false widens the rule to everyone; name the groups it widens to"
                    .into(),
            );
        }
        let target = match (config.effect, &config.role) {
            (Effect::Allow, None) => {
                messages.push("allow rules need a role".into());
                None
            }
            (Effect::Deny, Some(_)) => {
                messages.push("deny rules grant nothing, so they take no role".into());
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
                Variable::Component | Variable::Owner => rule.require_owner,
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
fn covers(earlier: &Rule, later: &Rule) -> bool {
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
    earlier.provider == later.provider && tags && kinds && groups && owner
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> ValidationContext {
        ValidationContext {
            environment_tag: "environment".into(),
            providers: Providers::from_providers([crate::fakes::FakeCloud::named("aws")]),
        }
    }

    fn load_text(text: &str) -> Result<Vec<Rule>, PolicyError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, text).unwrap();
        load_rules(&[], &[path], &context()).map_err(|e| PolicyError {
            problems: e
                .problems
                .into_iter()
                .map(|p| PolicyProblem {
                    source: p.source.replace(&dir.path().display().to_string(), "DIR"),
                    message: p.message.replace(&dir.path().display().to_string(), "DIR"),
                })
                .collect(),
        })
    }

    const DEPLOY: &str = r#"
[[rules]]
name = "owners-deploy-nonprod"
provider = "aws"
tags = { environment = ["dev", "staging"], aws-account = ["*"] }
role = "arn:aws:iam::{tags.aws-account}:role/{component}-deployer"
"#;

    #[test]
    fn a_valid_file_loads_with_its_lines() {
        let rules = load_text(DEPLOY).unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(
            rules[0].source.0,
            format!("{}:2", rules[0].source.0.rsplit_once(':').unwrap().0)
        );
    }

    #[test]
    fn unknown_keys_are_reported_with_file_and_line() {
        let err = load_text(&format!("{DEPLOY}colour = \"blue\"\n")).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("DIR/policy.toml") && text.contains("line 7") && text.contains("colour"),
            "{text}"
        );
    }

    #[test]
    fn a_template_using_an_unguaranteed_tag_is_reported() {
        let err = load_text(&DEPLOY.replace(", aws-account = [\"*\"]", "")).unwrap_err();
        assert_eq!(err.problems.len(), 1);
        assert_eq!(err.problems[0].source, "DIR/policy.toml:2");
        assert!(
            err.problems[0]
                .message
                .contains("role uses {tags.aws-account}, which no selector guarantees"),
            "{err}"
        );
    }

    #[test]
    fn shadowed_rules_are_reported() {
        let text = format!(
            "{DEPLOY}\n[[rules]]\nname = \"dev-only\"\nprovider = \"aws\"\ntags = {{ environment = [\"dev\"], aws-account = [\"111111111111\"] }}\nrole = \"arn:aws:iam::{{tags.aws-account}}:role/x\"\n"
        );
        let err = load_text(&text).unwrap_err();
        assert_eq!(err.problems.len(), 1, "{err}");
        assert_eq!(err.problems[0].source, "DIR/policy.toml:8");
        assert!(
            err.problems[0]
                .message
                .contains("can never match: rule \"owners-deploy-nonprod\" (DIR/policy.toml:2)"),
            "{err}"
        );

        // A narrower rule first does not shadow a broader one after it.
        let reversed = format!(
            "[[rules]]\nname = \"dev-only\"\nprovider = \"aws\"\ntags = {{ environment = [\"dev\"], aws-account = [\"111111111111\"] }}\nrole = \"arn:aws:iam::{{tags.aws-account}}:role/x\"\n{DEPLOY}"
        );
        assert!(load_text(&reversed).is_ok());
        // Globs: staging-* is covered by *, not by staging-eu.
        let mut a = load_text(DEPLOY).unwrap().remove(0);
        let mut b = a.clone();
        a.tags
            .insert("environment".into(), vec![ValuePattern::new("staging-eu")]);
        b.tags
            .insert("environment".into(), vec![ValuePattern::new("staging-*")]);
        assert!(!covers(&a, &b));
        assert!(covers(&b, &a));
    }

    #[test]
    fn widening_and_effects_are_checked() {
        let err = load_text(
            "[[rules]]\nname = \"everyone\"\nprovider = \"aws\"\nrequire_owner = false\nrole = \"arn:aws:iam::1:role/r\"\n\
             [[rules]]\nname = \"no-role\"\nprovider = \"aws\"\n\
             [[rules]]\nname = \"deny-with-role\"\neffect = \"deny\"\nprovider = \"aws\"\nrole = \"arn:aws:iam::1:role/r\"\n",
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("name the groups it widens to"), "{text}");
        assert!(text.contains("allow rules need a role"), "{text}");
        assert!(text.contains("deny rules grant nothing"), "{text}");
        let sre = load_text(
            "[[rules]]\nname = \"sre-read\"\nprovider = \"aws\"\nrequire_owner = false\ngroups = [\"group:default/sre\"]\nrole = \"arn:aws:iam::1:role/readonly\"\n",
        )
        .unwrap();
        assert!(!sre[0].require_owner);
    }

    #[test]
    fn nothing_is_loaded_when_anything_is_wrong() {
        let text = format!("{DEPLOY}\n[[rules]]\nname = \"owners-deploy-nonprod\"\nprovider = \"gcp\"\nrole = \"x\"\n");
        let err = load_text(&text).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("the name is used by another rule")
                && text.contains("provider gcp is not configured"),
            "{text}"
        );
    }
}
