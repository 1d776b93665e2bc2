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
//!
//! Machine callers (a principal with a pipeline run) meet the owner
//! requirement on their own component's stacks, and a token bound to one
//! stack (Pulumi Deployments, HCP Terraform) is refused for any other before
//! a rule is tried.

mod agents;
mod decide;
mod live;
mod load;
mod pattern;
mod template;
pub mod testing;
#[cfg(test)]
mod tests;
mod validate;
mod written;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use stackpass_provider::{CloudProvider, ProviderKind, Target};

pub use agents::{
    agent_of, bounds_for, bounds_label, narrow, AgentBounds, AgentBoundsConfig, AgentRequest,
    BeyondBounds, BoundsApplied, Quota, DEFAULT_AGENT_MAX_DURATION,
};
pub use decide::decide;
pub use live::LivePolicy;
pub use load::{
    expand_paths, load_policy_set, load_rules, load_rules_with_digest, LoadedPolicy, PolicyError,
};
pub use pattern::ValuePattern;
pub use template::{RenderError, Template, TemplateError, Variable, SAFE_VALUE_CHARACTERS};
pub use validate::{PolicyProblem, RuleSource, ValidationContext};
pub use written::RuleConfig;

use crate::catalog::EntityRef;
use crate::identity::{Principal, PrincipalKind, RunPhase};
use crate::stacks::Stack;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    Allow,
    Deny,
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
    /// Allow rules only: the requester's token must have been minted for this
    /// broker alone ([`Principal::dedicated_audience`]).
    pub require_dedicated_audience: bool,
    /// Empty: any caller. Otherwise the requester must be a pipeline run in
    /// one of these phases (`plan`, `preview` for read-only grants, say).
    pub run_phases: Vec<RunPhase>,
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRequirement {
    /// At least one: zero approvals never means approved.
    pub count: u32,
    /// Approvers must be in one of these groups, and never the requester.
    pub approvers: Vec<EntityRef>,
    /// How long after approval the requester may obtain credentials.
    pub window: Duration,
    /// How long a request waits for approval before it expires.
    pub request_ttl: Duration,
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
    /// OAuth scopes narrowing the provider's configured ones (agent bounds:
    /// GCP scopes, the Azure scope); `None`: the provider's own.
    pub scopes: Option<Vec<String>>,
    /// The `[[policy.agents]]` entry that narrowed this grant, for agents.
    pub agent_bounds: Option<BoundsApplied>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// One line for humans.
    pub summary: String,
    /// The deny rule that matched, if one did.
    pub denied_by: Option<String>,
    /// Each rule considered, with why it did not match.
    pub rules: Vec<RuleMiss>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleMiss {
    pub rule: String,
    pub reasons: Vec<String>,
}
