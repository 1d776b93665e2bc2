//! Access requests and their approvals: credentials that a rule grants only once
//! enough other people have approved, for a time-boxed window.
//!
//! Here: the typed [`AccessRequest`] and the pure rules that decide whether an
//! approval counts; `store` keeps requests in the shared database. The
//! workflow that ties them to the policy, catalog and audit log is
//! `broker::approvals`. The rules fail closed: zero approvals never approve, an expired request cannot be
//! approved, nobody approves their own request, and every approval is checked
//! again against the *current* policy and catalog when it is used, so a policy
//! change that takes away an approver's right takes away their approval too.

mod store;

use std::fmt;
use std::time::Duration;

use stackpass_provider::ProviderKind;
use time::OffsetDateTime;
use uuid::Uuid;

pub use store::{ApprovalStore, SqlApprovalStore, StoreError, Transition};

use crate::catalog::EntityRef;
use crate::policy::ApprovalRequirement;
use crate::stacks::StackRef;

/// An access request's id: a UUID, written as text in URLs and the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AccessRequestId(Uuid);

impl AccessRequestId {
    pub fn new() -> Self {
        AccessRequestId(Uuid::new_v4())
    }

    /// `None` for anything that is not an id this broker could have issued.
    pub fn parse(text: &str) -> Option<Self> {
        Uuid::parse_str(text).ok().map(AccessRequestId)
    }
}

impl Default for AccessRequestId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for AccessRequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessState {
    Pending,
    Approved,
    Denied,
    Expired,
    /// Approved once, but the approvals no longer hold under the current policy.
    Invalidated,
}

impl AccessState {
    pub fn as_str(self) -> &'static str {
        match self {
            AccessState::Pending => "pending",
            AccessState::Approved => "approved",
            AccessState::Denied => "denied",
            AccessState::Expired => "expired",
            AccessState::Invalidated => "invalidated",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            AccessState::Pending,
            AccessState::Approved,
            AccessState::Denied,
            AccessState::Expired,
            AccessState::Invalidated,
        ]
        .into_iter()
        .find(|state| state.as_str() == s)
    }
}

/// One request for credentials that needs approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRequest {
    pub id: AccessRequestId,
    pub created_at: OffsetDateTime,
    /// A pending request can no longer be approved after this.
    pub expires_at: OffsetDateTime,
    pub requester: EntityRef,
    pub stack: StackRef,
    pub provider: ProviderKind,
    pub rule: String,
    /// The grant's target as text (an AWS role ARN, for example).
    pub role: String,
    pub duration: Duration,
    pub reason: Option<String>,
    pub required_approvals: u32,
    pub state: AccessState,
    pub decided_at: Option<OffsetDateTime>,
    pub decided_by: Option<EntityRef>,
    /// Credentials may be obtained until then (approved requests only).
    pub window_ends_at: Option<OffsetDateTime>,
    pub note: Option<String>,
    /// Who has approved so far.
    pub approvers: Vec<EntityRef>,
}

impl AccessRequest {
    pub fn is_expired(&self, now: OffsetDateTime) -> bool {
        now >= self.expires_at
    }

    pub fn window_open(&self, now: OffsetDateTime) -> bool {
        self.state == AccessState::Approved && self.window_ends_at.is_some_and(|end| now < end)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApprovalError {
    #[error("access request {0} does not exist")]
    NotFound(String),
    #[error("access request {id} is {state}, so it can no longer be decided")]
    NotPending {
        id: AccessRequestId,
        state: &'static str,
    },
    #[error("access request {0} has expired; the requester must ask again")]
    Expired(AccessRequestId),
    #[error("nobody may approve or deny their own access request")]
    OwnRequest,
    #[error("{approver} is not an approver for rule {rule}")]
    NotAnApprover { approver: EntityRef, rule: String },
    #[error("rule {0} no longer requires approval or no longer exists; the request is void")]
    RuleChanged(String),
    #[error("{0} has already approved this request")]
    AlreadyApproved(EntityRef),
}

/// Whether `approver` may decide `request` now, under `requirement` (the current
/// policy's requirement for the request's rule, if it still has one).
pub fn check_decider(
    request: &AccessRequest,
    approver: &EntityRef,
    approver_groups: &[EntityRef],
    requirement: Option<&ApprovalRequirement>,
    now: OffsetDateTime,
) -> Result<(), ApprovalError> {
    if request.state != AccessState::Pending {
        return Err(ApprovalError::NotPending {
            id: request.id,
            state: request.state.as_str(),
        });
    }
    if request.is_expired(now) {
        return Err(ApprovalError::Expired(request.id));
    }
    if *approver == request.requester {
        return Err(ApprovalError::OwnRequest);
    }
    let requirement =
        requirement.ok_or_else(|| ApprovalError::RuleChanged(request.rule.clone()))?;
    if !may_approve(approver, approver_groups, requirement) {
        return Err(ApprovalError::NotAnApprover {
            approver: approver.clone(),
            rule: request.rule.clone(),
        });
    }
    Ok(())
}

fn may_approve(
    approver: &EntityRef,
    groups: &[EntityRef],
    requirement: &ApprovalRequirement,
) -> bool {
    requirement
        .approvers
        .iter()
        .any(|g| g == approver || groups.contains(g))
}

/// How many of `approvals` (each approver with their current groups) still count
/// under `requirement`: the requester's own never does, nor anyone who is no
/// longer an approver.
pub fn valid_approvals(
    requester: &EntityRef,
    approvals: &[(EntityRef, Vec<EntityRef>)],
    requirement: &ApprovalRequirement,
) -> u32 {
    approvals
        .iter()
        .filter(|(approver, groups)| {
            approver != requester && may_approve(approver, groups, requirement)
        })
        .count() as u32
}

/// Approved means enough valid approvals; never with zero.
pub fn is_approved(valid: u32, requirement: &ApprovalRequirement) -> bool {
    valid >= requirement.count.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entity(s: &str) -> EntityRef {
        EntityRef::parse_strict(s).unwrap()
    }

    fn requirement(count: u32) -> ApprovalRequirement {
        ApprovalRequirement {
            count,
            approvers: vec![entity("group:default/team-payments")],
            window: Duration::from_secs(3600),
            request_ttl: Duration::from_secs(86400),
            break_glass_max_duration: None,
        }
    }

    fn request(state: AccessState, expires_in: time::Duration) -> AccessRequest {
        let now = OffsetDateTime::now_utc();
        AccessRequest {
            id: AccessRequestId::new(),
            created_at: now,
            expires_at: now + expires_in,
            requester: entity("user:default/jane"),
            stack: StackRef::parse("pulumi:acme/payments/prod").unwrap(),
            provider: ProviderKind::from_static("aws"),
            rule: "owners-deploy-prod".into(),
            role: "arn:aws:iam::1:role/r".into(),
            duration: Duration::from_secs(900),
            reason: None,
            required_approvals: 1,
            state,
            decided_at: None,
            decided_by: None,
            window_ends_at: None,
            note: None,
            approvers: vec![],
        }
    }

    fn teammate() -> (EntityRef, Vec<EntityRef>) {
        (
            entity("user:default/alex"),
            vec![entity("group:default/team-payments")],
        )
    }

    #[test]
    fn zero_approvals_never_approve() {
        assert!(!is_approved(0, &requirement(1)));
        // Even a requirement that somehow says zero needs one.
        assert!(!is_approved(0, &requirement(0)));
        assert!(is_approved(1, &requirement(1)));
        assert!(!is_approved(1, &requirement(2)));
    }

    #[test]
    fn a_teammate_may_approve_a_pending_request() {
        let (alex, groups) = teammate();
        let now = OffsetDateTime::now_utc();
        assert_eq!(
            check_decider(
                &request(AccessState::Pending, time::Duration::hours(1)),
                &alex,
                &groups,
                Some(&requirement(1)),
                now
            ),
            Ok(())
        );
    }

    #[test]
    fn the_requester_cannot_approve_their_own_request() {
        let jane = entity("user:default/jane");
        let groups = vec![entity("group:default/team-payments")];
        let result = check_decider(
            &request(AccessState::Pending, time::Duration::hours(1)),
            &jane,
            &groups,
            Some(&requirement(1)),
            OffsetDateTime::now_utc(),
        );
        assert_eq!(result, Err(ApprovalError::OwnRequest));
        // And a self-approval that got into the store anyway does not count.
        assert_eq!(
            valid_approvals(&jane.clone(), &[(jane, groups)], &requirement(1)),
            0
        );
    }

    #[test]
    fn an_expired_request_cannot_be_approved() {
        let (alex, groups) = teammate();
        let expired = request(AccessState::Pending, time::Duration::seconds(-1));
        let result = check_decider(
            &expired,
            &alex,
            &groups,
            Some(&requirement(1)),
            OffsetDateTime::now_utc(),
        );
        assert_eq!(result, Err(ApprovalError::Expired(expired.id)));
    }

    #[test]
    fn decided_requests_stay_decided() {
        let (alex, groups) = teammate();
        for state in [
            AccessState::Approved,
            AccessState::Denied,
            AccessState::Expired,
            AccessState::Invalidated,
        ] {
            let result = check_decider(
                &request(state, time::Duration::hours(1)),
                &alex,
                &groups,
                Some(&requirement(1)),
                OffsetDateTime::now_utc(),
            );
            assert!(
                matches!(result, Err(ApprovalError::NotPending { .. })),
                "{state:?}"
            );
        }
    }

    #[test]
    fn outsiders_are_not_approvers() {
        let bob = entity("user:default/bob");
        let groups = vec![entity("group:default/team-search")];
        let result = check_decider(
            &request(AccessState::Pending, time::Duration::hours(1)),
            &bob,
            &groups,
            Some(&requirement(1)),
            OffsetDateTime::now_utc(),
        );
        assert!(matches!(result, Err(ApprovalError::NotAnApprover { .. })));
    }

    #[test]
    fn a_policy_change_that_removes_the_right_voids_approvals() {
        let (alex, groups) = teammate();
        let approvals = vec![(alex.clone(), groups.clone())];
        assert_eq!(
            valid_approvals(&entity("user:default/jane"), &approvals, &requirement(1)),
            1
        );
        let mut changed = requirement(1);
        changed.approvers = vec![entity("group:default/security")];
        assert_eq!(
            valid_approvals(&entity("user:default/jane"), &approvals, &changed),
            0
        );
        // A rule that no longer requires approval voids pending requests too.
        let result = check_decider(
            &request(AccessState::Pending, time::Duration::hours(1)),
            &alex,
            &groups,
            None,
            OffsetDateTime::now_utc(),
        );
        assert_eq!(
            result,
            Err(ApprovalError::RuleChanged("owners-deploy-prod".into()))
        );
    }

    #[test]
    fn the_window_closes() {
        let mut approved = request(AccessState::Approved, time::Duration::hours(1));
        let now = OffsetDateTime::now_utc();
        approved.window_ends_at = Some(now + time::Duration::minutes(5));
        assert!(approved.window_open(now));
        approved.window_ends_at = Some(now - time::Duration::seconds(1));
        assert!(!approved.window_open(now));
    }
}
