//! Agent bounds (`[[policy.agents]]` in the server config, `[[agents]]` in
//! policy files): which agents may act for people at all, and the narrowing
//! applied to whatever the person could get. Written, validated as a set
//! (like rules: every problem reported, nothing loaded when anything is
//! wrong), and applied by [`narrow`], which is pure like `decide`.
//!
//! An agent is the current actor of a delegation (`Principal.actor`), or a
//! principal of kind `agent` acting on its own. The effective decision is the
//! person's decision (the rules evaluated with the person's identity and
//! groups) narrowed by the first entry matching the agent and the provider:
//! the duration capped, the cloud scope-down added. It never widens. An agent
//! no entry matches gets nothing.

use std::collections::HashSet;
use std::time::Duration;

use serde::Deserialize;
use stackpass_provider::ProviderKind;

use super::validate::{PolicyProblem, RuleSource, ValidationContext};
use super::written::ApprovalConfig;
use super::{ApprovalRequirement, Decision, Denial, RuleMiss, ValuePattern};
use crate::identity::{Principal, PrincipalKind};

/// The lifetime cap when an entry names none.
pub const DEFAULT_AGENT_MAX_DURATION: Duration = Duration::from_secs(15 * 60);
/// No entry may let an agent hold a credential longer than this.
pub const AGENT_MAX_DURATION_CEILING: Duration = Duration::from_secs(3600);

/// One `[[policy.agents]]` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentBoundsConfig {
    pub name: String,
    /// Glob patterns (`*`, `?`) on the agent's identity (the actor string).
    pub agents: Vec<String>,
    /// Empty: every provider.
    #[serde(default)]
    pub providers: Vec<ProviderKind>,
    #[serde(default = "default_max_duration", with = "humantime_serde")]
    pub max_duration: Duration,
    /// AWS inline session policy (JSON) added to the grant.
    pub aws_session_policy: Option<String>,
    /// GCP OAuth scopes the access token is narrowed to.
    pub gcp_scopes: Option<Vec<String>>,
    /// The Azure `.default` scope the token is pinned to.
    pub azure_scope: Option<String>,
    pub quota: Option<QuotaConfig>,
    #[serde(default)]
    pub beyond_bounds: BeyondBounds,
    /// Who approves a request beyond the bounds (`beyond_bounds = "approval"`).
    pub approval: Option<ApprovalConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    pub per_agent: Option<u32>,
    pub per_person: Option<u32>,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

/// What happens to a request for longer than the entry's `max_duration`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BeyondBounds {
    #[default]
    Deny,
    Approval,
}

fn default_max_duration() -> Duration {
    DEFAULT_AGENT_MAX_DURATION
}

/// A validated entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentBounds {
    pub name: String,
    pub source: RuleSource,
    pub agents: Vec<ValuePattern>,
    pub providers: Vec<ProviderKind>,
    pub max_duration: Duration,
    /// The session policy as JSON text, checked to be a policy document.
    pub aws_session_policy: Option<String>,
    pub gcp_scopes: Option<Vec<String>>,
    pub azure_scope: Option<String>,
    pub quota: Option<Quota>,
    pub beyond_bounds: BeyondBounds,
    pub approval: Option<ApprovalRequirement>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub per_agent: Option<u32>,
    pub per_person: Option<u32>,
    pub window: Duration,
}

/// Which entry narrowed a grant, recorded in the grant (and so in its
/// approval binding and audit records).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundsApplied {
    pub entry: String,
    /// The grant goes past the entry's `max_duration` and needs the entry's
    /// approval.
    pub beyond: bool,
}

/// The agent a principal's request is made by, if any: the current actor of
/// a delegation, or an agent acting on its own.
pub fn agent_of(principal: &Principal) -> Option<String> {
    principal
        .actor
        .clone()
        .or_else(|| (principal.kind == PrincipalKind::Agent).then(|| principal.subject.to_string()))
}

/// The first entry naming `agent` for `provider`.
pub fn bounds_for<'a>(
    bounds: &'a [AgentBounds],
    agent: &str,
    provider: &ProviderKind,
) -> Option<&'a AgentBounds> {
    bounds.iter().find(|entry| {
        entry.agents.iter().any(|p| p.matches(agent))
            && (entry.providers.is_empty() || entry.providers.contains(provider))
    })
}

/// One agent request's facts that the narrowing looks at.
#[derive(Debug, Clone, Copy)]
pub struct AgentRequest<'a> {
    pub agent: &'a str,
    pub provider: &'a ProviderKind,
    /// The duration asked for, if one was.
    pub requested_duration: Option<Duration>,
}

/// The person's decision narrowed by the agent's bounds. Pure.
///
/// - The person is denied: so is the agent, with the person's reasons.
/// - No entry matches the agent and provider: denied.
/// - A duration asked for beyond the entry's cap: denied, or needs the
///   entry's approval (`beyond_bounds`); a rule that already needs approval
///   is not stacked with a second approval: denied.
/// - Otherwise the grant's duration and cap are lowered to the entry's, and
///   the entry's scope-down is added. An AWS session policy on both the rule
///   and the entry is merged only when the entry's statements are all `Deny`
///   (then appending them is exactly the intersection); otherwise AWS cannot
///   express the intersection in one request and the request is denied.
pub fn narrow(person: Decision, request: &AgentRequest<'_>, bounds: &[AgentBounds]) -> Decision {
    let (grant, approval) = match person {
        Decision::Deny(denial) => return Decision::Deny(denial),
        Decision::Allow(grant) => (grant, None),
        Decision::NeedsApproval { grant, approval } => (grant, Some(approval)),
    };
    let Some(entry) = bounds_for(bounds, request.agent, request.provider) else {
        return Decision::Deny(Denial {
            summary: format!(
                "agent {} may not act for {} with {} credentials: no [[policy.agents]] entry names it, and an agent without bounds gets nothing",
                request.agent, grant.provider, request.provider
            ),
            denied_by: None,
            rules: Vec::new(),
        });
    };
    let refuse = |reason: String| {
        Decision::Deny(Denial {
            summary: format!("agent bounds {}: {reason}", entry.name),
            denied_by: Some(bounds_label(&entry.name)),
            rules: vec![RuleMiss {
                rule: bounds_label(&entry.name),
                reasons: vec![reason],
            }],
        })
    };
    let mut grant = grant;
    let beyond = request
        .requested_duration
        .is_some_and(|asked| asked > entry.max_duration);
    if beyond {
        let asked = request.requested_duration.unwrap_or_default();
        let why = format!(
            "agent {} may hold credentials for at most {}; {} was asked for",
            request.agent,
            humantime::format_duration(entry.max_duration),
            humantime::format_duration(asked)
        );
        match (entry.beyond_bounds, &approval, &entry.approval) {
            (BeyondBounds::Approval, None, Some(_)) => {}
            (BeyondBounds::Approval, Some(_), _) => {
                return refuse(format!(
                    "{why}, and rule {} already needs approval, so no second approval can lift the cap; ask for {} or less",
                    grant.rule,
                    humantime::format_duration(entry.max_duration)
                ))
            }
            _ => {
                return refuse(format!(
                    "{why}; ask for {} or less",
                    humantime::format_duration(entry.max_duration)
                ))
            }
        }
    } else {
        grant.duration = grant.duration.min(entry.max_duration);
        grant.max_duration = grant.max_duration.min(entry.max_duration);
    }
    match request.provider.as_str() {
        "aws" => match merge_session_policy(
            grant.session_policy.as_deref(),
            entry.aws_session_policy.as_deref(),
        ) {
            Ok(policy) => grant.session_policy = policy,
            Err(why) => return refuse(why),
        },
        "gcp" => {
            if let Some(scopes) = &entry.gcp_scopes {
                grant.scopes = Some(scopes.clone());
            }
        }
        "azure" => {
            if let Some(scope) = &entry.azure_scope {
                grant.scopes = Some(vec![scope.clone()]);
            }
        }
        _ => {}
    }
    grant.agent_bounds = Some(BoundsApplied {
        entry: entry.name.clone(),
        beyond,
    });
    match (beyond, approval, &entry.approval) {
        (true, _, Some(entry_approval)) => Decision::NeedsApproval {
            grant,
            approval: entry_approval.clone(),
        },
        (_, Some(approval), _) => Decision::NeedsApproval { grant, approval },
        _ => Decision::Allow(grant),
    }
}

/// How a bounds entry is named where a rule name would be.
pub fn bounds_label(name: &str) -> String {
    format!("agents:{name}")
}

/// The session policy honouring both the rule's and the agent entry's.
fn merge_session_policy(rule: Option<&str>, agent: Option<&str>) -> Result<Option<String>, String> {
    let (rule, agent) = match (rule, agent) {
        (rule, None) => return Ok(rule.map(str::to_owned)),
        (None, Some(agent)) => return Ok(Some(agent.to_owned())),
        (Some(rule), Some(agent)) => (rule, agent),
    };
    let agent_statements =
        statements(agent).ok_or("the entry's aws_session_policy is not a policy document")?;
    if agent_statements
        .iter()
        .any(|s| s.get("Effect").and_then(|e| e.as_str()) != Some("Deny"))
    {
        return Err("the rule has its own session_policy and the entry's aws_session_policy allows; AWS takes one inline session policy and cannot intersect two, so stackpass refuses rather than widen (write the entry's policy as Deny statements, or give agents a rule of their own)".into());
    }
    let mut document: serde_json::Value = serde_json::from_str(rule)
        .map_err(|_| "the rule's session_policy did not render to JSON".to_owned())?;
    let rule_statements =
        statements(rule).ok_or("the rule's session_policy is not a policy document")?;
    let merged: Vec<serde_json::Value> = rule_statements
        .into_iter()
        .chain(agent_statements)
        .collect();
    document
        .as_object_mut()
        .ok_or("the rule's session_policy is not a JSON object")?
        .insert("Statement".into(), serde_json::Value::Array(merged));
    Ok(Some(document.to_string()))
}

/// A policy document's statements (`Statement` may be one object or a list).
fn statements(policy: &str) -> Option<Vec<serde_json::Value>> {
    let document: serde_json::Value = serde_json::from_str(policy).ok()?;
    match document.as_object()?.get("Statement")? {
        serde_json::Value::Array(list) => Some(list.clone()),
        one @ serde_json::Value::Object(_) => Some(vec![one.clone()]),
        _ => None,
    }
}

/// Validates entries as a set and converts the valid ones.
pub fn validate_bounds(
    written: &[(RuleSource, AgentBoundsConfig)],
    context: &ValidationContext,
    problems: &mut Vec<PolicyProblem>,
) -> Vec<AgentBounds> {
    let mut names = HashSet::new();
    let mut valid = Vec::new();
    for (source, config) in written {
        let mut messages: Vec<String> = Vec::new();
        if config.name.trim().is_empty() {
            messages.push("name must not be empty".into());
        }
        if !names.insert(config.name.clone()) {
            messages.push("the name is used by another agents entry".into());
        }
        if config.agents.is_empty() || config.agents.iter().any(|a| a.trim().is_empty()) {
            messages.push(
                "agents must list at least one pattern (e.g. \"component:agents/*\"), none empty"
                    .into(),
            );
        }
        for provider in &config.providers {
            if context.providers.get(provider).is_none() {
                messages.push(format!(
                    "provider {provider} is not configured on this broker"
                ));
            }
        }
        let covers = |kind: &str| {
            context.providers.kinds().any(|k| k.as_str() == kind)
                && (config.providers.is_empty()
                    || config.providers.iter().any(|p| p.as_str() == kind))
        };
        if config.max_duration < Duration::from_secs(60)
            || config.max_duration > AGENT_MAX_DURATION_CEILING
        {
            messages.push("max_duration must be between 1m and 1h".into());
        }
        for kind in context.providers.kinds() {
            let in_scope = config.providers.is_empty() || config.providers.contains(kind);
            let limits = context.providers.get(kind).map(|p| p.limits());
            if let Some(limits) = limits.filter(|_| in_scope) {
                if config.max_duration < limits.min_duration {
                    messages.push(format!(
                        "max_duration {} is below the {} that {kind} issues at least, so no request could succeed; raise it or list the providers this entry is for",
                        humantime::format_duration(config.max_duration),
                        humantime::format_duration(limits.min_duration)
                    ));
                }
            }
        }
        if let Some(policy) = &config.aws_session_policy {
            if !covers("aws") {
                messages.push(
                    "aws_session_policy is set but the entry covers no configured aws provider"
                        .into(),
                );
            }
            match statements(policy) {
                None => messages.push(
                    "aws_session_policy must be a JSON policy document with a Statement".into(),
                ),
                Some(list) => {
                    if list.iter().any(|s| {
                        !matches!(
                            s.get("Effect").and_then(|e| e.as_str()),
                            Some("Allow" | "Deny")
                        )
                    }) {
                        messages.push(
                            "aws_session_policy: every statement needs Effect \"Allow\" or \"Deny\""
                                .into(),
                        );
                    }
                }
            }
            if let Some(Err(e)) = context
                .providers
                .kinds()
                .find(|k| k.as_str() == "aws")
                .and_then(|k| context.providers.get(k))
                .map(|p| p.check_session_policy(policy))
            {
                messages.push(format!("aws_session_policy: {e}"));
            }
        }
        for (key, kind, scopes) in [
            ("gcp_scopes", "gcp", config.gcp_scopes.clone()),
            (
                "azure_scope",
                "azure",
                config.azure_scope.clone().map(|s| vec![s]),
            ),
        ] {
            let Some(scopes) = scopes else { continue };
            if !covers(kind) {
                messages.push(format!(
                    "{key} is set but the entry covers no configured {kind} provider"
                ));
                continue;
            }
            if scopes.is_empty() {
                messages.push(format!("{key} must name at least one scope"));
                continue;
            }
            let provider = context
                .providers
                .kinds()
                .find(|k| k.as_str() == kind)
                .and_then(|k| context.providers.get(k));
            if let Some(Err(e)) = provider.map(|p| p.check_scopes(&scopes)) {
                messages.push(format!("{key}: {e}"));
            }
        }
        let quota = config.quota.as_ref().map(|quota| {
            if quota.per_agent.is_none() && quota.per_person.is_none() {
                messages.push("quota must set per_agent, per_person or both".into());
            }
            if quota.per_agent == Some(0) || quota.per_person == Some(0) {
                messages.push("quota counts must be at least 1 (to let an agent nothing, remove it from agents)".into());
            }
            if quota.window < Duration::from_secs(1)
                || quota.window > Duration::from_secs(7 * 24 * 3600)
            {
                messages.push("quota.window must be between 1s and 7d".into());
            }
            Quota {
                per_agent: quota.per_agent,
                per_person: quota.per_person,
                window: quota.window,
            }
        });
        let approval = match (config.beyond_bounds, &config.approval) {
            (BeyondBounds::Approval, None) => {
                messages.push("beyond_bounds = \"approval\" needs an approval (approvers, count, window) naming who approves".into());
                None
            }
            (BeyondBounds::Deny, Some(_)) => {
                messages.push("approval only applies with beyond_bounds = \"approval\"".into());
                None
            }
            (BeyondBounds::Deny, None) => None,
            (BeyondBounds::Approval, Some(approval)) => {
                if approval.count == 0 {
                    messages.push("approval.count must be at least 1".into());
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
                Some(ApprovalRequirement {
                    count: approval.count,
                    approvers: approval.approvers.clone(),
                    window: approval.window,
                    request_ttl: approval.request_ttl,
                    // Agents never break glass.
                    break_glass_max_duration: None,
                })
            }
        };
        if messages.is_empty() {
            valid.push(AgentBounds {
                name: config.name.clone(),
                source: source.clone(),
                agents: config.agents.iter().map(|a| ValuePattern::new(a)).collect(),
                providers: config.providers.clone(),
                max_duration: config.max_duration,
                aws_session_policy: config.aws_session_policy.clone(),
                gcp_scopes: config.gcp_scopes.clone(),
                azure_scope: config.azure_scope.clone(),
                quota,
                beyond_bounds: config.beyond_bounds,
                approval,
            });
        }
        problems.extend(messages.into_iter().map(|message| PolicyProblem {
            source: source.to_string(),
            message: format!("agents {:?}: {message}", config.name),
        }));
    }
    valid
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::policy::Grant;
    use crate::registry::Providers;

    fn aws() -> ProviderKind {
        ProviderKind::from_static("aws")
    }

    fn grant(max: u64, duration: u64, session_policy: Option<&str>) -> Grant {
        Grant {
            rule: "owners-deploy".into(),
            provider: aws(),
            target: stackpass_provider::Target::new("arn:aws:iam::1:role/deployer", ()),
            duration: Duration::from_secs(duration),
            max_duration: Duration::from_secs(max),
            session_policy: session_policy.map(str::to_owned),
            session_tags: BTreeMap::new(),
            scopes: None,
            agent_bounds: None,
        }
    }

    fn load(text: &str) -> Result<Vec<AgentBounds>, Vec<PolicyProblem>> {
        #[derive(Deserialize)]
        struct File {
            agents: Vec<AgentBoundsConfig>,
        }
        let file: File = toml::from_str(text).map_err(|e| {
            vec![PolicyProblem {
                source: "toml".into(),
                message: e.to_string(),
            }]
        })?;
        let written: Vec<_> = file
            .agents
            .into_iter()
            .enumerate()
            .map(|(i, a)| (RuleSource(format!("agents[{i}]")), a))
            .collect();
        let context = ValidationContext {
            environment_tag: "environment".into(),
            providers: Providers::from_providers([crate::fakes::FakeCloud::named("aws")]),
        };
        let mut problems = Vec::new();
        let valid = validate_bounds(&written, &context, &mut problems);
        if problems.is_empty() {
            Ok(valid)
        } else {
            Err(problems)
        }
    }

    const BOTS: &str = r#"
[[agents]]
name = "deploy-bots"
agents = ["component:agents/*"]
aws_session_policy = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"*"}]}'
quota = { per_agent = 2, window = "1h" }
"#;

    fn request(agent: &str, duration: Option<u64>) -> AgentRequest<'_> {
        AgentRequest {
            agent,
            provider: Box::leak(Box::new(aws())),
            requested_duration: duration.map(Duration::from_secs),
        }
    }

    fn denial(decision: &Decision) -> &str {
        match decision {
            Decision::Deny(denial) => &denial.summary,
            other => panic!("expected a denial, got {other:?}"),
        }
    }

    #[test]
    fn an_agent_acting_for_someone_denied_gets_nothing() {
        let bounds = load(BOTS).unwrap();
        let person = Decision::Deny(Denial {
            summary: "user:default/jane is not a member of group:default/payments".into(),
            denied_by: None,
            rules: vec![],
        });
        let narrowed = narrow(
            person.clone(),
            &request("component:agents/bot", None),
            &bounds,
        );
        assert_eq!(narrowed, person);
    }

    #[test]
    fn an_agent_for_an_owner_gets_at_most_the_bounds() {
        let bounds = load(BOTS).unwrap();
        // The owner could get an hour; the agent gets the 15-minute default cap.
        let narrowed = narrow(
            Decision::Allow(grant(3600, 3600, None)),
            &request("component:agents/bot", None),
            &bounds,
        );
        let Decision::Allow(narrowed) = narrowed else {
            panic!("{narrowed:?}")
        };
        assert_eq!(narrowed.duration, Duration::from_secs(900));
        assert_eq!(narrowed.max_duration, Duration::from_secs(900));
        assert_eq!(
            narrowed.session_policy.as_deref(),
            bounds[0].aws_session_policy.as_deref()
        );
        assert_eq!(
            narrowed.agent_bounds,
            Some(BoundsApplied {
                entry: "deploy-bots".into(),
                beyond: false
            })
        );
        // A shorter rule cap stays the shorter one: never widened.
        let Decision::Allow(short) = narrow(
            Decision::Allow(grant(600, 600, None)),
            &request("component:agents/bot", None),
            &bounds,
        ) else {
            panic!()
        };
        assert_eq!(short.max_duration, Duration::from_secs(600));
    }

    #[test]
    fn no_matching_entry_is_denied_with_a_reason() {
        let bounds = load(BOTS).unwrap();
        for decision in [
            Decision::Allow(grant(3600, 900, None)),
            Decision::NeedsApproval {
                grant: grant(3600, 900, None),
                approval: ApprovalRequirement {
                    count: 1,
                    approvers: vec![],
                    window: Duration::from_secs(60),
                    request_ttl: Duration::from_secs(60),
                    break_glass_max_duration: None,
                },
            },
        ] {
            let narrowed = narrow(decision, &request("agent-7", None), &bounds);
            assert!(
                denial(&narrowed).contains("no [[policy.agents]] entry names it"),
                "{narrowed:?}"
            );
        }
        // An entry for another provider does not apply either.
        let gcp_only = load(&BOTS.replace(
            "agents = [\"component:agents/*\"]",
            "agents = [\"component:agents/*\"]\nproviders = [\"aws\"]",
        ))
        .unwrap();
        let other = ProviderKind::from_static("gcp");
        let narrowed = narrow(
            Decision::Allow(grant(3600, 900, None)),
            &AgentRequest {
                agent: "component:agents/bot",
                provider: &other,
                requested_duration: None,
            },
            &gcp_only,
        );
        assert!(matches!(narrowed, Decision::Deny(_)));
    }

    #[test]
    fn beyond_the_bounds_is_denied_or_needs_the_entrys_approval() {
        let bounds = load(BOTS).unwrap();
        let narrowed = narrow(
            Decision::Allow(grant(3600, 3600, None)),
            &request("component:agents/bot", Some(3600)),
            &bounds,
        );
        assert!(
            denial(&narrowed).contains("at most 15m; 1h was asked for"),
            "{narrowed:?}"
        );
        let approving = load(&format!(
            "{BOTS}beyond_bounds = \"approval\"\napproval = {{ approvers = [\"group:default/sre\"] }}\n"
        ))
        .unwrap();
        let narrowed = narrow(
            Decision::Allow(grant(3600, 3600, None)),
            &request("component:agents/bot", Some(3600)),
            &approving,
        );
        let Decision::NeedsApproval { grant, approval } = narrowed else {
            panic!("{narrowed:?}")
        };
        assert_eq!(grant.duration, Duration::from_secs(3600));
        assert!(grant.agent_bounds.as_ref().unwrap().beyond);
        assert_eq!(approval.approvers[0].to_string(), "group:default/sre");
        assert_eq!(approval.break_glass_max_duration, None);
        // Within the bounds, the same entry allows without approval.
        let within = narrow(
            Decision::Allow(grant_of(3600)),
            &request("component:agents/bot", Some(900)),
            &approving,
        );
        assert!(matches!(within, Decision::Allow(_)), "{within:?}");
    }

    fn grant_of(max: u64) -> Grant {
        grant(max, 900, None)
    }

    #[test]
    fn session_policies_are_intersected_or_refused() {
        let rule = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}"#;
        // An Allow entry policy cannot be intersected with the rule's: refused.
        let bounds = load(BOTS).unwrap();
        let narrowed = narrow(
            Decision::Allow(grant(3600, 900, Some(rule))),
            &request("component:agents/bot", None),
            &bounds,
        );
        assert!(
            denial(&narrowed).contains("cannot intersect two"),
            "{narrowed:?}"
        );
        // Deny statements are appended: exactly the intersection.
        let denying = load(&BOTS.replace("\"Effect\":\"Allow\"", "\"Effect\":\"Deny\"")).unwrap();
        let Decision::Allow(narrowed) = narrow(
            Decision::Allow(grant(3600, 900, Some(rule))),
            &request("component:agents/bot", None),
            &denying,
        ) else {
            panic!()
        };
        let merged: serde_json::Value =
            serde_json::from_str(narrowed.session_policy.as_deref().unwrap()).unwrap();
        let effects: Vec<_> = merged["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["Effect"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(effects, ["Allow", "Deny"]);
        assert_eq!(merged["Version"], "2012-10-17");
    }

    #[test]
    fn agent_of_names_the_actor_or_an_agent_acting_alone() {
        let mut principal = Principal {
            issuer: "https://idp".into(),
            issuer_name: "idp".into(),
            subject: crate::catalog::EntityRef::parse("user:default/jane", None, "default")
                .unwrap(),
            kind: PrincipalKind::Agent,
            actor: Some("component:agents/bot".into()),
            actor_chain: vec![],
            groups: vec![],
            dedicated_audience: false,
            pipeline: None,
        };
        assert_eq!(
            agent_of(&principal).as_deref(),
            Some("component:agents/bot")
        );
        principal.actor = None;
        assert_eq!(agent_of(&principal).as_deref(), Some("user:default/jane"));
        principal.kind = PrincipalKind::Human;
        assert_eq!(agent_of(&principal), None);
    }

    #[test]
    fn entries_are_validated_as_a_set() {
        let problems = load(&format!(
            "{BOTS}\n[[agents]]\nname = \"deploy-bots\"\nagents = []\nmax_duration = \"2h\"\nproviders = [\"gcp\"]\nquota = {{ per_agent = 0, window = \"1h\" }}\nbeyond_bounds = \"approval\"\n\
             gcp_scopes = [\"https://www.googleapis.com/auth/cloud-platform\"]\n"
        ))
        .unwrap_err();
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        let text = text.join("\n");
        for expected in [
            "the name is used by another agents entry",
            "agents must list at least one pattern",
            "provider gcp is not configured",
            "max_duration must be between 1m and 1h",
            "quota counts must be at least 1",
            "needs an approval",
            "gcp_scopes is set but the entry covers no configured gcp provider",
        ] {
            assert!(text.contains(expected), "{expected}: {text}");
        }
        // A cap below what the cloud issues at all could never succeed.
        let short = load(&BOTS.replace(
            "name = \"deploy-bots\"",
            "name = \"x\"\nmax_duration = \"5m\"",
        ))
        .unwrap_err();
        assert!(short[0].message.contains("below the 15m"), "{short:?}");
        let bad_policy = load(&BOTS.replace("\"Statement\":[", "\"Nope\":[")).unwrap_err();
        assert!(
            bad_policy[0].message.contains("with a Statement"),
            "{bad_policy:?}"
        );
        let unknown = load(&format!("{BOTS}colour = \"blue\"\n")).unwrap_err();
        assert!(unknown[0].message.contains("colour"), "{unknown:?}");
        // The default cap is 15 minutes, default beyond_bounds deny.
        let ok = load(BOTS).unwrap();
        assert_eq!(ok[0].max_duration, DEFAULT_AGENT_MAX_DURATION);
        assert_eq!(ok[0].beyond_bounds, BeyondBounds::Deny);
    }
}
