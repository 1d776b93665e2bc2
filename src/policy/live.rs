//! The policy in force. A reload swaps the whole rule set behind an `Arc`, so a
//! request sees one policy from start to end and a broken file never replaces
//! a working policy (it never gets this far).

use std::sync::{Arc, RwLock};

use super::{ApprovalRequirement, Rule};

pub struct LivePolicy {
    rules: RwLock<Arc<Vec<Rule>>>,
}

impl LivePolicy {
    pub fn new(rules: Vec<Rule>) -> Self {
        LivePolicy {
            rules: RwLock::new(Arc::new(rules)),
        }
    }

    pub fn current(&self) -> Arc<Vec<Rule>> {
        self.rules.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Swaps in a new, already validated policy; requests in flight keep the one
    /// they started with.
    pub fn replace(&self, rules: Vec<Rule>) {
        *self.rules.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(rules);
    }

    /// The approval a rule of the current policy requires, if the rule still
    /// exists and still requires one.
    pub fn approval_for(&self, rule: &str) -> Option<ApprovalRequirement> {
        self.current()
            .iter()
            .find(|r| r.name == rule)
            .and_then(|r| r.approval.clone())
    }
}
