//! The HTTP API's request and response bodies, in one place: the API
//! serializes them and the CLI deserializes them, so the two cannot drift.
//! Domain types never go on the wire themselves; the conversions below are the
//! only place that decides what a decision or an access request looks like
//! over HTTP.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::approvals::AccessRequest as DomainAccessRequest;
use crate::database::format_timestamp;
use crate::policy;

/// `POST /v1/credentials`, `/v1/decisions` and `/v1/access-requests`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CredentialRequest {
    pub stack: String,
    pub provider: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<u64>,
    /// Why access is needed, for approvers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Issue now under a break-glass rule, flagged and announced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub break_glass: Option<BreakGlass>,
    /// `credentials` (default): the cloud's credential; `federation`: the
    /// broker's subject token for the caller's tools to exchange.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BreakGlass {
    pub reason: String,
}

/// The answer to `POST /v1/credentials`. `credentials` holds the provider's
/// fields (secrets included): the one place secrets go on the wire.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct IssuedCredential {
    pub issuance_id: String,
    pub requester: String,
    pub stack: String,
    pub provider: String,
    pub rule: String,
    pub role: String,
    pub duration_seconds: u64,
    pub expires_at: String,
    /// The provider's credential fields by name (AWS: `access_key_id`,
    /// `secret_access_key`, `session_token`, …; federation mode: the
    /// `subject_token` and what a tool needs to exchange it).
    #[schema(value_type = std::collections::BTreeMap<String, serde_json::Value>)]
    pub credentials: serde_json::Map<String, serde_json::Value>,
}

/// `POST /v1/access-requests/{id}/approve` and `/deny`.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionNote {
    pub note: Option<String>,
}

/// The answer to `POST /v1/decisions`: what the policy would decide.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    Allow(Grant),
    NeedsApproval { grant: Grant, approval: Approval },
    Deny(Denial),
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Grant {
    pub rule: String,
    pub provider: String,
    pub role: String,
    /// A duration as humantime writes it, e.g. `15m` or `1h 30m`.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, example = "15m")]
    pub duration: Duration,
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, example = "1h")]
    pub max_duration: Duration,
    pub session_policy: Option<String>,
    pub session_tags: BTreeMap<String, String>,
    /// OAuth scopes the credential is narrowed to (agents' GCP/Azure bounds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    /// The `[[policy.agents]]` entry that narrowed the grant, for agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_bounds: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Approval {
    pub count: u32,
    pub approvers: Vec<String>,
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, example = "8h")]
    pub window: Duration,
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, example = "1day")]
    pub request_ttl: Duration,
    #[serde(with = "humantime_serde::option")]
    #[schema(value_type = Option<String>, example = "1h")]
    pub break_glass_max_duration: Option<Duration>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Denial {
    pub summary: String,
    pub denied_by: Option<String>,
    pub rules: Vec<RuleMiss>,
}

/// One rule a denial considered, and why it did not match.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RuleMiss {
    pub rule: String,
    pub reasons: Vec<String>,
}

/// An access request as the API shows it; timestamps in the audit log's form.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AccessRequest {
    pub id: String,
    pub created_at: String,
    pub expires_at: String,
    pub requester: String,
    pub stack: String,
    pub provider: String,
    pub rule: String,
    pub role: String,
    pub duration_seconds: i64,
    pub reason: Option<String>,
    pub required_approvals: i64,
    pub state: String,
    pub decided_at: Option<String>,
    pub decided_by: Option<String>,
    pub window_ends_at: Option<String>,
    pub note: Option<String>,
    pub approvers: Vec<String>,
    /// What the approvers are shown and an approval covers, besides provider,
    /// role and duration (an upper bound): the mode, the grant's facts and their
    /// SHA-256. Absent for requests stored before approvals were bound.
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub grant: Option<serde_json::Value>,
    #[serde(default)]
    pub grant_digest: Option<String>,
    /// When the one issuance an approval covers took it.
    #[serde(default)]
    pub used_at: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AccessRequestEnvelope {
    pub access_request: AccessRequest,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AccessRequestList {
    pub access_requests: Vec<AccessRequest>,
}

/// The answer to `GET /v1/audit`: records as `audit export` writes them, and the
/// cursor for the next page.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    pub records: Vec<serde_json::Value>,
    pub next_cursor: Option<String>,
}

/// An RFC 9457 problem as the CLI reads it.
#[derive(Debug, Deserialize)]
pub struct ProblemBody {
    pub title: Option<String>,
    pub detail: Option<String>,
    pub hint: Option<String>,
    pub request_id: Option<String>,
    pub rules: Option<Vec<RuleMiss>>,
}

impl From<&policy::Grant> for Grant {
    fn from(grant: &policy::Grant) -> Self {
        Grant {
            rule: grant.rule.clone(),
            provider: grant.provider.to_string(),
            role: grant.target.to_string(),
            duration: grant.duration,
            max_duration: grant.max_duration,
            session_policy: grant.session_policy.clone(),
            session_tags: grant.session_tags.clone(),
            scopes: grant.scopes.clone(),
            agent_bounds: grant.agent_bounds.as_ref().map(|b| b.entry.clone()),
        }
    }
}

impl From<&policy::ApprovalRequirement> for Approval {
    fn from(approval: &policy::ApprovalRequirement) -> Self {
        Approval {
            count: approval.count,
            approvers: approval.approvers.iter().map(ToString::to_string).collect(),
            window: approval.window,
            request_ttl: approval.request_ttl,
            break_glass_max_duration: approval.break_glass_max_duration,
        }
    }
}

impl From<&policy::Denial> for Denial {
    fn from(denial: &policy::Denial) -> Self {
        Denial {
            summary: denial.summary.clone(),
            denied_by: denial.denied_by.clone(),
            rules: rule_misses(&denial.rules),
        }
    }
}

pub fn rule_misses(misses: &[policy::RuleMiss]) -> Vec<RuleMiss> {
    misses
        .iter()
        .map(|m| RuleMiss {
            rule: m.rule.clone(),
            reasons: m.reasons.clone(),
        })
        .collect()
}

impl From<&policy::Decision> for Decision {
    fn from(decision: &policy::Decision) -> Self {
        match decision {
            policy::Decision::Allow(grant) => Decision::Allow(grant.into()),
            policy::Decision::NeedsApproval { grant, approval } => Decision::NeedsApproval {
                grant: grant.into(),
                approval: approval.into(),
            },
            policy::Decision::Deny(denial) => Decision::Deny(denial.into()),
        }
    }
}

impl From<&DomainAccessRequest> for AccessRequest {
    fn from(r: &DomainAccessRequest) -> Self {
        AccessRequest {
            id: r.id.to_string(),
            created_at: format_timestamp(r.created_at),
            expires_at: format_timestamp(r.expires_at),
            requester: r.requester.to_string(),
            stack: r.stack.to_string(),
            provider: r.provider.to_string(),
            rule: r.rule.clone(),
            role: r.role.clone(),
            duration_seconds: r.duration.as_secs() as i64,
            reason: r.reason.clone(),
            required_approvals: i64::from(r.required_approvals),
            state: r.state.as_str().to_owned(),
            decided_at: r.decided_at.map(format_timestamp),
            decided_by: r.decided_by.as_ref().map(ToString::to_string),
            window_ends_at: r.window_ends_at.map(format_timestamp),
            note: r.note.clone(),
            approvers: r.approvers.iter().map(ToString::to_string).collect(),
            mode: r.binding.as_ref().map(|b| b.mode.as_str().to_owned()),
            grant: r
                .binding
                .as_ref()
                .and_then(|b| serde_json::from_str(&b.facts).ok()),
            grant_digest: r.binding.as_ref().map(|b| b.digest.clone()),
            used_at: r.used_at.map(format_timestamp),
        }
    }
}

/// `POST /v1/delegations/revoke` and `/restore` (the caller's own delegation
/// to `agent`), `POST /v1/agents/revoke` and `/restore` (the agent for every
/// person; agent admins, `reason` required to revoke).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevocationRequest {
    /// The agent as it acts (its `act.sub`), or a glob (`*`, `?`) on it.
    pub agent: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One revocation as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Revocation {
    pub id: String,
    /// `delegation` (one person's) or `agent` (every person's).
    pub scope: String,
    /// The person whose delegation is revoked; absent for an agent revocation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub person: Option<String>,
    pub agent: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub revoked_by: String,
    pub revoked_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restored_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restored_by: Option<String>,
}

/// A credential issued to the agent before the revocation that has not
/// expired: stackpass cannot recall it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OutstandingCredential {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuance_id: Option<String>,
    pub person: String,
    pub agent: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stack: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// The non-secret id the cloud shows (the AWS access key id, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential_id: Option<String>,
    pub expires_at: String,
}

/// How to cut one provider's outstanding credentials short.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RecallHint {
    pub provider: String,
    pub hint: String,
}

/// The answer to a revocation or a restore.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RevocationAnswer {
    pub revocation: Revocation,
    /// Nothing changed: it was revoked (or restored) already.
    pub unchanged: bool,
    pub outstanding_credentials: Vec<OutstandingCredential>,
    /// Present when credentials are outstanding: stackpass cannot recall them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recall_hints: Vec<RecallHint>,
}

/// `GET /v1/delegations`: the caller's revocations and every agent-wide one.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RevocationList {
    pub revocations: Vec<Revocation>,
}

impl From<&crate::revocations::Revocation> for Revocation {
    fn from(r: &crate::revocations::Revocation) -> Self {
        Revocation {
            id: r.id.to_string(),
            scope: r.scope.as_str().to_owned(),
            person: r.scope.person().map(ToString::to_string),
            agent: r.agent.clone(),
            reason: r.reason.clone(),
            revoked_by: r.revoked_by.to_string(),
            revoked_at: format_timestamp(r.revoked_at),
            restored_at: r.restored_at.map(format_timestamp),
            restored_by: r.restored_by.as_ref().map(ToString::to_string),
        }
    }
}

impl From<&crate::broker::RevocationAnswer> for RevocationAnswer {
    fn from(a: &crate::broker::RevocationAnswer) -> Self {
        RevocationAnswer {
            revocation: (&a.revocation).into(),
            unchanged: a.unchanged,
            outstanding_credentials: a
                .outstanding
                .iter()
                .map(|o| OutstandingCredential {
                    issuance_id: o.issuance_id.clone(),
                    person: o.person.clone(),
                    agent: o.agent.clone(),
                    stack: o.stack.clone(),
                    provider: o.provider.clone(),
                    role: o.role.clone(),
                    credential_id: o.credential_id.clone(),
                    expires_at: format_timestamp(o.expires_at),
                })
                .collect(),
            note: (!a.outstanding.is_empty()).then(|| {
                "credentials issued before the revocation cannot be recalled by stackpass; they stay valid until expires_at unless cut short at the cloud (see recall_hints)".to_owned()
            }),
            recall_hints: a
                .recall_hints
                .iter()
                .map(|(provider, hint)| RecallHint {
                    provider: provider.clone(),
                    hint: (*hint).to_owned(),
                })
                .collect(),
        }
    }
}

/// `GET /healthz` and `GET /readyz` when they pass.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// `ok` (`/healthz`: the process answers) or `ready` (`/readyz`: the
    /// audit store and the signing key are usable).
    #[schema(example = "ready")]
    pub status: String,
}

/// `GET /.well-known/openid-configuration`: the broker as an OIDC issuer, for
/// the clouds that verify its subject tokens.
// Built as JSON by `issuer::Issuer`; an issuer test holds it to this shape.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryDocument {
    pub issuer: String,
    pub jwks_uri: String,
    pub response_types_supported: Vec<String>,
    pub subject_types_supported: Vec<String>,
    /// `ES256`, `RS256`: the algorithms of the keys in force.
    pub id_token_signing_alg_values_supported: Vec<String>,
    pub claims_supported: Vec<String>,
}

/// `GET /.well-known/jwks.json`: every published key (next, current,
/// retiring).
// Built as JSON by `issuer::Issuer`; an issuer test holds it to this shape.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JwkSet {
    pub keys: Vec<Jwk>,
}

/// One public signing key (RFC 7517): EC P-256 (`x`, `y`) or RSA (`n`, `e`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Jwk {
    /// `EC` or `RSA`.
    pub kty: String,
    /// The RFC 7638 thumbprint.
    pub kid: String,
    #[serde(rename = "use")]
    pub key_use: String,
    pub alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
}

/// `GET /.well-known/oauth-authorization-server` (RFC 8414): the token
/// endpoint's metadata. The `token_exchange_*` members are this broker's own.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationServerMetadata {
    pub issuer: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
    pub grant_types_supported: Vec<String>,
    /// Empty: nothing here is granted by a redirect.
    pub response_types_supported: Vec<String>,
    /// `none`: the agent authenticates with its `actor_token`.
    pub token_endpoint_auth_methods_supported: Vec<String>,
    /// `provider:KIND` for each configured provider.
    pub scopes_supported: Vec<String>,
    pub token_exchange_subject_token_types_supported: Vec<String>,
    pub token_exchange_actor_token_types_supported: Vec<String>,
    pub token_exchange_requested_token_types_supported: Vec<String>,
    pub token_exchange_resource_format: String,
}

/// `GET /.well-known/oauth-protected-resource[/mcp]` (RFC 9728): the MCP
/// server's metadata, when `[mcp]` is enabled.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProtectedResourceMetadata {
    pub resource: String,
    pub authorization_servers: Vec<String>,
    pub bearer_methods_supported: Vec<String>,
    pub resource_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes_supported: Option<Vec<String>>,
}
