//! The decision itself: rules tried in order, the first that matches decides,
//! deny by default, and every miss explained without leaking what another
//! rule would have granted. Pure: no I/O, no clock, no randomness.

use std::collections::BTreeMap;

use super::{
    Decision, Denial, Effect, Grant, PolicyInput, RenderError, Rule, RuleMiss, Template, Variable,
    SAFE_VALUE_CHARACTERS,
};
use crate::catalog::{EntityRef, DEFAULT_NAMESPACE};
use crate::identity::Principal;

pub fn decide(rules: &[Rule], input: &PolicyInput<'_>) -> Decision {
    if let Some(denial) = outside_bound_stack(input) {
        return Decision::Deny(denial);
    }
    let mut misses = Vec::new();
    for rule in rules {
        match evaluate(rule, input) {
            Err(Miss::Broken(reasons)) => {
                // The rule applies; a later, broader rule must not get the
                // request because this one could not be filled in.
                misses.push(RuleMiss {
                    rule: rule.name.clone(),
                    reasons,
                });
                return Decision::Deny(Denial {
                    summary: format!(
                        "rule {} applies to this request but cannot be filled in for {}; nothing later is tried",
                        rule.name, input.stack.reference
                    ),
                    denied_by: Some(rule.name.clone()),
                    rules: misses,
                });
            }
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
            Err(Miss::Conditions(reasons)) => misses.push(RuleMiss {
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

/// A deployment system's token names the one stack its run deploys; it gets
/// credentials for that stack and no other, whatever the rules say.
fn outside_bound_stack(input: &PolicyInput<'_>) -> Option<Denial> {
    let run = input.principal.pipeline.as_ref()?;
    let bound = run.bound_stack.as_ref()?;
    (*bound != input.stack.reference).then(|| Denial {
        summary: format!(
            "this {} token is for a run of {bound}; it gets credentials for that stack only, not {}",
            run.system, input.stack.reference
        ),
        denied_by: None,
        rules: Vec::new(),
    })
}

/// Why a rule did not grant.
enum Miss {
    /// The request does not meet the rule's conditions: try the next rule.
    Conditions(Vec<String>),
    /// The request meets the conditions, but the rule's templates cannot be
    /// filled in for it: fail closed.
    Broken(Vec<String>),
}

/// Checks one rule. `Ok(Some)` grants, `Ok(None)` is a matching deny rule, and a
/// miss returns every reason, not just the first, so one denial tells the
/// requester everything that has to change.
fn evaluate(rule: &Rule, input: &PolicyInput<'_>) -> Result<Option<Grant>, Miss> {
    if rule.provider != *input.provider {
        // Nothing else about a rule for another cloud is relevant to this request.
        return Err(Miss::Conditions(vec![format!(
            "the rule is for {}, not {}",
            rule.provider, input.provider
        )]));
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
    if !rule.run_phases.is_empty() {
        let phases = || {
            rule.run_phases
                .iter()
                .map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join(" or ")
        };
        match principal.pipeline.as_ref().and_then(|run| run.phase) {
            Some(phase) if rule.run_phases.contains(&phase) => {}
            Some(phase) => reasons.push(format!(
                "the rule is for pipeline runs in phase {}; this run is in phase {phase}",
                phases()
            )),
            None => reasons.push(format!(
                "the rule is for pipeline runs in phase {}; this requester is not a pipeline run with a phase",
                phases()
            )),
        }
    }
    if rule.effect == Effect::Deny {
        return if reasons.is_empty() {
            Ok(None)
        } else {
            Err(Miss::Conditions(reasons))
        };
    }
    if rule.require_dedicated_audience && !principal.dedicated_audience {
        reasons.push(
            "the rule needs a token minted for this broker alone (its issuer's dedicated_audience); this token's audience is shared, so another service could be replaying it".into(),
        );
    }
    if rule.require_owner {
        match (input.component, input.owner) {
            (None, _) => reasons
                .push("the stack's tags name no catalog component, so it has no owner".into()),
            (Some(component), None) => {
                reasons.push(format!("the catalog has no owner for {component}"))
            }
            // A pipeline acts as the component it deploys: its own stacks
            // are its to deploy, and no one else's.
            (Some(component), Some(_)) if principal.pipeline.is_some() => {
                if principal.subject != *component {
                    reasons.push(format!(
                        "{} (a {} pipeline) may act on its own component's stacks only; this stack belongs to {component}",
                        principal.subject,
                        principal.pipeline.as_ref().map_or("", |run| run.system.as_str())
                    ));
                }
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
    if !reasons.is_empty() {
        return Err(Miss::Conditions(reasons));
    }
    let fill = |template: &Template, what: &str, reasons: &mut Vec<String>| match template
        .render(|variable| lookup(variable, input))
    {
        Ok(value) => Some(value),
        Err(RenderError::Missing(variable)) => {
            let entity = match variable {
                Variable::Component => input.component,
                Variable::Owner => input.owner,
                _ => None,
            }
            .filter(|e| e.namespace() != DEFAULT_NAMESPACE);
            reasons.push(match entity {
                Some(entity) => format!(
                    "the {what} template uses {variable}, which names only entities in the default namespace, and {entity} is not; the rule must use {{component.namespace}}/{{component.name}} or {{owner.namespace}}/{{owner.name}}"
                ),
                None => format!(
                    "the {what} template needs {variable}, which this stack does not have"
                ),
            });
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
            scopes: None,
            agent_bounds: None,
        })),
        _ => Err(Miss::Broken(reasons)),
    }
}

fn is_member(principal: &Principal, group: &EntityRef) -> bool {
    principal.subject == *group || principal.groups.contains(group)
}

fn lookup<'a>(variable: &Variable, input: &PolicyInput<'a>) -> Option<&'a str> {
    let in_default_namespace =
        |entity: &'a EntityRef| (entity.namespace() == DEFAULT_NAMESPACE).then(|| entity.name());
    match variable {
        Variable::Tag(tag) => input.stack.tags.get(tag).map(String::as_str),
        Variable::Component => input.component.and_then(in_default_namespace),
        Variable::Owner => input.owner.and_then(in_default_namespace),
        Variable::ComponentName => input.component.map(EntityRef::name),
        Variable::ComponentNamespace => input.component.map(EntityRef::namespace),
        Variable::OwnerName => input.owner.map(EntityRef::name),
        Variable::OwnerNamespace => input.owner.map(EntityRef::namespace),
        Variable::Environment => input.environment,
        Variable::StackOrganization => Some(input.stack.reference.organization()),
        Variable::StackProject => input.stack.reference.project(),
        Variable::StackName => Some(input.stack.reference.name()),
    }
}
