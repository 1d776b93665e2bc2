//! The policy in force. A reload swaps the whole rule set behind an `Arc`, so a
//! request sees one policy from start to end and a broken file never replaces
//! a working policy (it never gets this far).

use std::sync::{Arc, RwLock};

use super::{AgentBounds, ApprovalRequirement, Rule};

/// Rules and agent bounds, swapped together.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    pub rules: Arc<Vec<Rule>>,
    pub agents: Arc<Vec<AgentBounds>>,
}

pub struct LivePolicy {
    set: RwLock<PolicySet>,
}

impl LivePolicy {
    pub fn new(rules: Vec<Rule>, agents: Vec<AgentBounds>) -> Self {
        LivePolicy {
            set: RwLock::new(PolicySet {
                rules: Arc::new(rules),
                agents: Arc::new(agents),
            }),
        }
    }

    pub fn current(&self) -> Arc<Vec<Rule>> {
        self.snapshot().rules
    }

    /// Rules and agent bounds of one policy version.
    pub fn snapshot(&self) -> PolicySet {
        self.set.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Swaps in a new, already validated policy; requests in flight keep the one
    /// they started with.
    pub fn replace(&self, rules: Vec<Rule>, agents: Vec<AgentBounds>) {
        *self.set.write().unwrap_or_else(|p| p.into_inner()) = PolicySet {
            rules: Arc::new(rules),
            agents: Arc::new(agents),
        };
    }

    /// The approval a rule of the current policy requires, if the rule still
    /// exists and still requires one.
    pub fn approval_for(&self, rule: &str) -> Option<ApprovalRequirement> {
        self.current()
            .iter()
            .find(|r| r.name == rule)
            .and_then(|r| r.approval.clone())
    }

    /// The approval an access request for `rule` needs under the current
    /// policy, given the grant facts it is bound to: for an agent's request
    /// beyond its bounds, the bounds entry's (if the entry still exists and
    /// still asks for approval); otherwise the rule's.
    pub fn approval_for_request(
        &self,
        rule: &str,
        bound_facts: Option<&str>,
    ) -> Option<ApprovalRequirement> {
        let beyond = bound_facts.and_then(|facts| {
            let facts: serde_json::Value = serde_json::from_str(facts).ok()?;
            let beyond = facts.get("beyond_agent_bounds")?.as_bool()?;
            let entry = facts.get("agent_bounds")?.as_str()?.to_owned();
            beyond.then_some(entry)
        });
        match beyond {
            Some(entry) => self
                .snapshot()
                .agents
                .iter()
                .find(|a| a.name == entry)
                .and_then(|a| a.approval.clone()),
            None => self.approval_for(rule),
        }
    }
}
