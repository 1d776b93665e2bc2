//! Rules as people write them (`[[policy.rules]]` in the server config,
//! `[[rules]]` in policy files), deserialized strictly: unknown keys are
//! errors. Nothing here is trusted until `validate` has checked it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use stackpass_provider::ProviderKind;

use super::Effect;
use crate::catalog::EntityRef;
use crate::identity::{PrincipalKind, RunPhase};

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
    /// Only tokens minted for this broker alone (the issuer's
    /// `dedicated_audience`), not tokens Backstage sends every plugin.
    #[serde(default)]
    pub require_dedicated_audience: bool,
    /// Only pipeline runs in these phases (`plan`, `apply`, `preview`,
    /// `update`, `refresh`, `destroy`): e.g. a read-only role for plans.
    #[serde(default)]
    pub run_phases: Vec<RunPhase>,
    /// Target template in the provider's syntax, e.g. an AWS role
    /// `arn:aws:iam::{tags.aws-account}:role/{component}-deployer`. Written
    /// `role` or `target`.
    #[serde(alias = "target")]
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
