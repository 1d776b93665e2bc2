//! The Prometheus counters the broker's events drive: each committed event is
//! counted here, once, so the figures on `/metrics` agree with the audit log
//! by construction (dry runs are explanations, not decisions, and are left out).

use super::{Allowance, Event};
use crate::metrics::{DECISIONS, DENIALS, ISSUANCES, KEY_RELOADS, POLICY_RELOADS};
use crate::policy::Denial;

impl Event<'_> {
    /// Counts this event, once its records are committed.
    pub(super) fn count(&self) {
        match self {
            Event::UnknownStack { dry_run: false, .. } => {
                decision("unknown_stack");
                denial("unknown_stack");
            }
            Event::DelegationRevoked { dry_run: false, .. } => {
                decision("denied");
                denial("delegation_revoked");
            }
            Event::Denied {
                denial: refused,
                dry_run: false,
                ..
            } => {
                decision("denied");
                denial(denial_reason(refused));
            }
            Event::BreakGlassRefused { .. } => {
                decision("denied");
                denial("break_glass_refused");
            }
            Event::ApprovalRequired { .. } => decision("approval_required"),
            Event::Allowed(issuance) => decision(match issuance.allowance {
                Allowance::Policy => "allowed",
                Allowance::Approved { .. } => "allowed_by_approval",
                Allowance::BreakGlass { .. } => "allowed_by_break_glass",
            }),
            Event::Issued { issuance, .. } => issuance_outcome(issuance.grant, "issued"),
            Event::Federated { issuance, .. } => issuance_outcome(issuance.grant, "federated"),
            Event::IssuanceFailed { issuance, .. } => issuance_outcome(issuance.grant, "failed"),
            Event::IssuanceAbandoned { issuance } => issuance_outcome(issuance.grant, "abandoned"),
            Event::IssuanceWithheld { issuance, .. } => {
                issuance_outcome(issuance.grant, "withheld")
            }
            Event::PolicyReloaded { result, .. } => metrics::counter!(POLICY_RELOADS,
                "result" => if result.is_ok() { "applied" } else { "rejected" })
            .increment(1),
            Event::KeysReloaded { result, .. } => metrics::counter!(KEY_RELOADS,
                "result" => if result.is_ok() { "applied" } else { "rejected" })
            .increment(1),
            _ => {}
        }
    }
}

fn decision(outcome: &'static str) {
    metrics::counter!(DECISIONS, "outcome" => outcome).increment(1);
}

fn denial(reason: &'static str) {
    metrics::counter!(DENIALS, "reason" => reason).increment(1);
}

fn issuance_outcome(grant: &crate::policy::Grant, outcome: &'static str) {
    metrics::counter!(ISSUANCES,
        "provider" => grant.provider.as_str().to_owned(),
        "rule" => grant.rule.clone(),
        "outcome" => outcome)
    .increment(1);
}

/// A denial's reason from a fixed set: which kind of policy statement refused.
fn denial_reason(denial: &Denial) -> &'static str {
    match denial.denied_by.as_deref() {
        None => "no_rule_matched",
        Some(label) if label.starts_with(&crate::policy::bounds_label("")) => {
            if denial.summary.starts_with("quota:") {
                "quota"
            } else {
                "agent_bounds"
            }
        }
        Some(_) => "deny_rule",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denial(denied_by: Option<&str>, summary: &str) -> Denial {
        Denial {
            summary: summary.into(),
            denied_by: denied_by.map(str::to_owned),
            rules: Vec::new(),
        }
    }

    #[test]
    fn denial_reasons_come_from_a_fixed_set() {
        assert_eq!(denial_reason(&denial(None, "x")), "no_rule_matched");
        assert_eq!(
            denial_reason(&denial(Some("prod-freeze"), "x")),
            "deny_rule"
        );
        let bounds = crate::policy::bounds_label("ci-agents");
        assert_eq!(
            denial_reason(&denial(Some(&bounds), "beyond the agent's bounds")),
            "agent_bounds"
        );
        assert_eq!(
            denial_reason(&denial(Some(&bounds), "quota: agent got 3 credential(s)")),
            "quota"
        );
    }
}
