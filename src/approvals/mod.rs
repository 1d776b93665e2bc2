//! Access requests and their approvals: credentials that a rule grants only once
//! enough other people have approved, for a time-boxed window.
//!
//! Here: the typed [`AccessRequest`] and the pure rules that decide whether an
//! approval counts; `store` keeps requests in the shared database. The
//! workflow that ties them to the policy, catalog and audit log is
//! `broker::approvals`. The rules fail closed: zero approvals never approve, an expired request cannot be
//! approved, nobody approves their own request, only people (never agents or
//! services) decide, and every approval is checked again against the
//! *current* policy and catalog when it is used, so a policy change that takes
//! away an approver's right takes away their approval too.
//!
//! An approval binds what the approver was shown ([`Binding`]): the provider,
//! the role, the mode, the duration (an upper bound) and a digest of the
//! grant's facts. It covers exactly one issuance of that grant; a grant that
//! changed since (target, session policy or tags, duration cap, rule) needs a
//! new approval.

mod store;

use std::fmt;
use std::time::Duration;

use sha2::{Digest, Sha256};
use stackpass_provider::{Mode, ProviderKind};
use time::OffsetDateTime;
use uuid::Uuid;

pub use store::{change, insert, ApprovalStore, SqlApprovalStore, StoreError, Transition};

use crate::catalog::EntityRef;
use crate::identity::{Principal, PrincipalKind};
use crate::policy::{ApprovalRequirement, Grant};
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
    /// Approved once, but the approvals no longer hold under the current
    /// policy, or the grant is no longer the one that was approved.
    Invalidated,
    /// Approved, and taken by the one issuance it covers.
    Used,
}

impl AccessState {
    pub fn as_str(self) -> &'static str {
        match self {
            AccessState::Pending => "pending",
            AccessState::Approved => "approved",
            AccessState::Denied => "denied",
            AccessState::Expired => "expired",
            AccessState::Invalidated => "invalidated",
            AccessState::Used => "used",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            AccessState::Pending,
            AccessState::Approved,
            AccessState::Denied,
            AccessState::Expired,
            AccessState::Invalidated,
            AccessState::Used,
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
    /// What the approvers were shown besides provider, role and duration;
    /// `None` only for requests stored before approvals were bound, which are
    /// never used.
    pub binding: Option<Binding>,
    /// Bumped by every change of state: the compare-and-set token.
    pub version: i64,
    /// When the one issuance this approval covers took it.
    pub used_at: Option<OffsetDateTime>,
}

/// The grant an access request asks for, as its approvers are shown it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub mode: Mode,
    /// The grant's facts as canonical JSON: rule, provider, target, duration
    /// cap, session policy and tags.
    pub facts: String,
    /// SHA-256 of `facts`, hex: what an issuance must match.
    pub digest: String,
}

impl Binding {
    pub fn of(grant: &Grant, mode: Mode) -> Self {
        // serde_json's map is ordered by key, so the text is canonical.
        let mut facts = serde_json::json!({
            "rule": grant.rule,
            "provider": grant.provider.as_str(),
            "target": grant.target.as_str(),
            "max_duration_seconds": grant.max_duration.as_secs(),
            "session_policy": grant.session_policy,
            "session_tags": grant.session_tags,
        });
        // Only agents' grants carry these, so the digests of every other
        // request (and those already stored) are unchanged.
        if let (Some(fields), Some(bounds)) = (facts.as_object_mut(), &grant.agent_bounds) {
            fields.insert("agent_bounds".into(), bounds.entry.clone().into());
            fields.insert("beyond_agent_bounds".into(), bounds.beyond.into());
            fields.insert("scopes".into(), serde_json::json!(grant.scopes));
        }
        let facts = facts.to_string();
        Binding {
            mode,
            digest: digest(&facts),
            facts,
        }
    }
}

fn digest(facts: &str) -> String {
    Sha256::digest(facts.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether an approved request covers an issuance of `grant` in `mode`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Coverage {
    Covers,
    /// Approved for the other mode; it stays usable for that one.
    OtherMode,
    /// The grant is not the one that was approved: the approval is void.
    Changed(&'static str),
}

/// Does `request` cover an issuance of `grant` (the current policy's) in `mode`?
pub fn coverage(request: &AccessRequest, grant: &Grant, mode: Mode) -> Coverage {
    let Some(binding) = &request.binding else {
        return Coverage::Changed("it was approved before approvals bound their grant");
    };
    if binding.mode != mode {
        return Coverage::OtherMode;
    }
    if request.role != grant.target.as_str()
        || request.provider != grant.provider
        || request.rule != grant.rule
        || request.duration > grant.max_duration
        || Binding::of(grant, mode).digest != binding.digest
    {
        return Coverage::Changed("the grant changed since it was approved");
    }
    Coverage::Covers
}

/// The duration an approved request issues for: what the caller asks now, at
/// most what was approved; what was approved if the caller names none.
pub fn approved_duration(request: &AccessRequest, requested: Option<Duration>) -> Duration {
    requested.map_or(request.duration, |d| d.min(request.duration))
}

/// Only people decide access requests and break glass: a human principal
/// with no agent acting for them.
pub fn is_a_person(principal: &Principal) -> bool {
    principal.kind == PrincipalKind::Human && principal.actor.is_none()
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
    #[error("only people decide access requests; this token is {kind}{}", actor.as_ref().map(|a| format!(" (acting: {a})")).unwrap_or_default())]
    NotAPerson {
        kind: &'static str,
        actor: Option<String>,
    },
    #[error(
        "access request {0} kept changing while this decision was made; look at it again and retry"
    )]
    Contended(AccessRequestId),
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
            binding: Some(Binding::of(&grant(), Mode::Credentials)),
            version: 0,
            used_at: None,
        }
    }

    fn grant() -> Grant {
        Grant {
            rule: "owners-deploy-prod".into(),
            provider: ProviderKind::from_static("aws"),
            target: stackpass_provider::Target::new("arn:aws:iam::1:role/r", ()),
            duration: Duration::from_secs(900),
            max_duration: Duration::from_secs(3600),
            session_policy: None,
            scopes: None,
            agent_bounds: None,
            session_tags: Default::default(),
        }
    }

    #[test]
    fn an_approval_covers_only_the_grant_it_showed() {
        let approved = request(AccessState::Approved, time::Duration::hours(1));
        assert_eq!(
            coverage(&approved, &grant(), Mode::Credentials),
            Coverage::Covers
        );
        assert_eq!(
            coverage(&approved, &grant(), Mode::Federation),
            Coverage::OtherMode
        );
        let changes: [fn(&mut Grant); 5] = [
            |g| g.target = stackpass_provider::Target::new("arn:aws:iam::1:role/admin", ()),
            |g| g.session_policy = Some("{}".into()),
            |g| {
                g.session_tags.insert("team".into(), "x".into());
            },
            |g| g.max_duration = Duration::from_secs(7200),
            |g| g.rule = "other".into(),
        ];
        for change in changes {
            let mut changed = grant();
            change(&mut changed);
            assert!(
                matches!(
                    coverage(&approved, &changed, Mode::Credentials),
                    Coverage::Changed(_)
                ),
                "{changed:?}"
            );
        }
        // The requested duration is not part of the grant's identity.
        let mut shorter = grant();
        shorter.duration = Duration::from_secs(60);
        assert_eq!(
            coverage(&approved, &shorter, Mode::Credentials),
            Coverage::Covers
        );
        let mut unbound = approved.clone();
        unbound.binding = None;
        assert!(matches!(
            coverage(&unbound, &grant(), Mode::Credentials),
            Coverage::Changed(_)
        ));
    }

    #[test]
    fn an_approval_issues_at_most_the_approved_duration() {
        let approved = request(AccessState::Approved, time::Duration::hours(1));
        assert_eq!(approved_duration(&approved, None), approved.duration);
        assert_eq!(
            approved_duration(&approved, Some(Duration::from_secs(3600))),
            approved.duration
        );
        assert_eq!(
            approved_duration(&approved, Some(Duration::from_secs(60))),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn only_people_decide() {
        let mut principal = Principal {
            issuer: "https://backstage.test".into(),
            issuer_name: "backstage".into(),
            subject: entity("user:default/alex"),
            kind: PrincipalKind::Human,
            actor: None,
            actor_chain: Vec::new(),
            groups: vec![],
            dedicated_audience: false,
            pipeline: None,
        };
        assert!(is_a_person(&principal));
        principal.actor = Some("agent:bot".into());
        assert!(!is_a_person(&principal));
        principal.kind = PrincipalKind::Agent;
        assert!(!is_a_person(&principal));
        principal.actor = None;
        principal.kind = PrincipalKind::Service;
        assert!(!is_a_person(&principal));
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
