//! RFC 9457 problem details: the single place where errors become HTTP responses.
//! Every problem carries a stable `type`, a `detail` saying what happened, a `hint`
//! saying what to do, and the request id, so a user can quote it to an operator.

use std::borrow::Cow;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use stackpass_provider::ProviderError;

use crate::broker::BrokerError;
use crate::identity::IdentityError;
use crate::registry::LookupError;

pub const CONTENT_TYPE: &str = "application/problem+json";

/// Every problem type the API answers with, and its one status: the OpenAPI
/// document lists them (`api::openapi`), and [`Problem::new`] refuses, in
/// debug builds, a type or status that is not here.
pub const TYPES: &[(&str, StatusCode)] = &[
    ("unauthenticated", StatusCode::UNAUTHORIZED),
    ("token-for-another-resource", StatusCode::UNAUTHORIZED),
    ("identity-unavailable", StatusCode::SERVICE_UNAVAILABLE),
    ("body-timeout", StatusCode::REQUEST_TIMEOUT),
    ("payload-too-large", StatusCode::PAYLOAD_TOO_LARGE),
    ("unsupported-media-type", StatusCode::UNSUPPORTED_MEDIA_TYPE),
    ("invalid-request", StatusCode::UNPROCESSABLE_ENTITY),
    ("provider-not-enabled", StatusCode::UNPROCESSABLE_ENTITY),
    ("unknown-stack", StatusCode::NOT_FOUND),
    ("denied", StatusCode::FORBIDDEN),
    ("approval-required", StatusCode::FORBIDDEN),
    ("approval-not-needed", StatusCode::CONFLICT),
    ("approval-forbidden", StatusCode::FORBIDDEN),
    ("access-request-not-found", StatusCode::NOT_FOUND),
    ("access-request-closed", StatusCode::CONFLICT),
    ("access-request-contended", StatusCode::CONFLICT),
    ("break-glass-not-allowed", StatusCode::FORBIDDEN),
    ("break-glass-forbidden", StatusCode::FORBIDDEN),
    ("quota-exceeded", StatusCode::TOO_MANY_REQUESTS),
    ("rate-limited", StatusCode::TOO_MANY_REQUESTS),
    ("delegation-revoked", StatusCode::FORBIDDEN),
    ("revocation-forbidden", StatusCode::FORBIDDEN),
    ("revocation-not-found", StatusCode::NOT_FOUND),
    ("revocation-contended", StatusCode::CONFLICT),
    ("audit-forbidden", StatusCode::FORBIDDEN),
    ("catalog-unavailable", StatusCode::SERVICE_UNAVAILABLE),
    ("stack-source-unavailable", StatusCode::SERVICE_UNAVAILABLE),
    ("audit-unavailable", StatusCode::SERVICE_UNAVAILABLE),
    ("approvals-unavailable", StatusCode::SERVICE_UNAVAILABLE),
    ("revocations-unavailable", StatusCode::SERVICE_UNAVAILABLE),
    ("cloud-refused", StatusCode::BAD_GATEWAY),
    ("cloud-invalid-response", StatusCode::BAD_GATEWAY),
    ("cloud-unavailable", StatusCode::SERVICE_UNAVAILABLE),
    ("timeout", StatusCode::SERVICE_UNAVAILABLE),
    ("overloaded", StatusCode::SERVICE_UNAVAILABLE),
    ("not-ready", StatusCode::SERVICE_UNAVAILABLE),
    ("draining", StatusCode::SERVICE_UNAVAILABLE),
    ("not-found", StatusCode::NOT_FOUND),
    ("method-not-allowed", StatusCode::METHOD_NOT_ALLOWED),
    ("internal", StatusCode::INTERNAL_SERVER_ERROR),
];

/// The URI a problem type slug stands for.
pub fn type_uri(slug: &str) -> String {
    format!("urn:stackpass:problem:{slug}")
}

/// An RFC 9457 problem details document (`application/problem+json`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// `urn:stackpass:problem:{slug}`: stable, one status each.
    #[serde(rename = "type", serialize_with = "serialize_type")]
    #[schema(value_type = String)]
    pub kind: &'static str,
    #[schema(value_type = String)]
    pub title: &'static str,
    /// The HTTP status, repeated.
    #[serde(serialize_with = "serialize_status")]
    #[schema(value_type = u16)]
    pub status: StatusCode,
    /// What happened.
    // Boxed, like `request_id` and `cloud_code`, to keep `Result<_, Problem>` small.
    #[schema(value_type = String)]
    pub detail: Box<str>,
    /// What to do about it.
    #[schema(value_type = String)]
    pub hint: Cow<'static, str>,
    /// The broker's request id (also the `x-request-id` header), to quote to
    /// an operator.
    #[schema(value_type = String)]
    pub request_id: Box<str>,
    /// For denials: each rule considered and why it did not match.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<crate::wire::RuleMiss>>)]
    pub rules: Option<Box<Vec<crate::wire::RuleMiss>>>,
    /// For a cloud's refusal: the cloud's own error code (`InvalidIdentityToken`,
    /// `invalid_grant`, `AADSTS700213`), for searching its documentation.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub cloud_code: Option<Box<str>>,
    /// For a quota or a rate limit: seconds until a retry can succeed, also sent as the
    /// `Retry-After` header.
    #[serde(
        rename = "retry_after_seconds",
        skip_serializing_if = "Option::is_none"
    )]
    // A `NonZeroU32`: it fits in the padding, keeping `Problem` small.
    #[schema(value_type = Option<u32>, minimum = 1)]
    pub retry_after: Option<std::num::NonZeroU32>,
}

/// Stable problem type URIs: `urn:stackpass:problem:{slug}`.
fn serialize_type<S: serde::Serializer>(slug: &&'static str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&type_uri(slug))
}

fn serialize_status<S: serde::Serializer>(status: &StatusCode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u16(status.as_u16())
}

impl Problem {
    pub fn new(
        status: StatusCode,
        slug: &'static str,
        title: &'static str,
        detail: impl Into<String>,
        hint: impl Into<Cow<'static, str>>,
    ) -> Self {
        debug_assert!(
            TYPES.contains(&(slug, status)),
            "problem type {slug} with status {status} is not in problem::TYPES, which the OpenAPI document lists"
        );
        Problem {
            kind: slug,
            title,
            status,
            detail: detail.into().into_boxed_str(),
            hint: hint.into(),
            request_id: Box::default(),
            rules: None,
            cloud_code: None,
            retry_after: None,
        }
    }

    pub fn with_request_id(mut self, request_id: &str) -> Self {
        self.request_id = request_id.into();
        self
    }

    pub fn invalid_request(detail: impl Into<String>) -> Self {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-request",
            "Invalid request",
            detail,
            "send {\"stack\": \"pulumi:ORG/PROJECT/STACK\", \"provider\": \"PROVIDER\"} and optionally \"duration_seconds\"",
        )
    }

    pub fn from_broker_error(error: &BrokerError) -> Self {
        match error {
            BrokerError::Identity(e) => from_identity_error(e),
            BrokerError::Provider(LookupError::NotEnabled(_)) => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "provider-not-enabled",
                "Provider not enabled",
                error.to_string(),
                "ask for a provider this broker has configured, or ask the platform team to enable it",
            ),
            BrokerError::Provider(LookupError::Unknown(_)) | BrokerError::InvalidRequest(_) => {
                Problem::invalid_request(error.to_string())
            }
            BrokerError::UnknownStack(_) => Problem::new(
                StatusCode::NOT_FOUND,
                "unknown-stack",
                "Unknown stack",
                error.to_string(),
                "check the stack reference (pulumi:ORG/PROJECT/STACK or terraform:ORG/WORKSPACE) or register the stack",
            ),
            BrokerError::Denied(denial) => Problem {
                rules: Some(Box::new(crate::wire::rule_misses(&denial.rules))),
                ..Problem::new(
                    StatusCode::FORBIDDEN,
                    "denied",
                    "Denied by policy",
                    denial.summary.clone(),
                    "the stack's owners and auditors see each rule's reasons here (everyone's are in the audit log under this request id); ask the stack's owning team or the platform team for access",
                )
            },
            BrokerError::Catalog(e) => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "catalog-unavailable",
                "Catalog unavailable",
                e.to_string(),
                "retry shortly; if it persists, the operator should check the Backstage catalog",
            ),
            BrokerError::StackSource(e) => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "stack-source-unavailable",
                "Stack source unavailable",
                e.to_string(),
                "retry shortly; if it persists, the operator should check the stack source",
            ),
            BrokerError::Audit(_) => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "audit-unavailable",
                "Audit log unavailable",
                "the audit log could not record this request, so no credential was issued",
                "retry shortly; if it persists, the operator should check the audit store",
            ),
            BrokerError::AuditForbidden(detail) => Problem::new(
                StatusCode::FORBIDDEN,
                "audit-forbidden",
                "Audit log access denied",
                detail.clone(),
                "add requester=<your entity ref> to read your own records, or ask to join an auditor group",
            ),
            BrokerError::ApprovalRequired { rule, approval, pending } => {
                let approvers = approval.approvers.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
                Problem::new(
                    StatusCode::FORBIDDEN,
                    "approval-required",
                    "Approval required",
                    match pending {
                        Some(pending) => format!(
                            "rule {rule} needs {} approval(s) from {approvers}; access request {pending} is waiting for them",
                            approval.count
                        ),
                        None => format!(
                            "rule {rule} needs {} approval(s) from {approvers}, and there is no open access request",
                            approval.count
                        ),
                    },
                    "request access with `stackpass approvals request --stack S --reason ...`, then ask again once it is approved",
                )
            }
            BrokerError::ApprovalNotNeeded => Problem::new(
                StatusCode::CONFLICT,
                "approval-not-needed",
                "No approval needed",
                error.to_string(),
                "use `stackpass creds` or POST /v1/credentials",
            ),
            BrokerError::Approval(e) => {
                use crate::approvals::ApprovalError::*;
                let (status, slug, title) = match e {
                    NotFound(_) => (StatusCode::NOT_FOUND, "access-request-not-found", "Access request not found"),
                    NotPending { .. } | Expired(_) | AlreadyApproved(_) => {
                        (StatusCode::CONFLICT, "access-request-closed", "Access request cannot be decided")
                    }
                    Contended(_) => (StatusCode::CONFLICT, "access-request-contended", "Access request changed meanwhile"),
                    OwnRequest | NotAnApprover { .. } | RuleChanged(_) | NotAPerson { .. } => {
                        (StatusCode::FORBIDDEN, "approval-forbidden", "Not allowed to decide this request")
                    }
                };
                Problem::new(status, slug, title, e.to_string(), "list what you may decide with `stackpass approvals list`")
            }
            BrokerError::BreakGlassNotAllowed(_) => Problem::new(
                StatusCode::FORBIDDEN,
                "break-glass-not-allowed",
                "Break-glass not allowed",
                error.to_string(),
                "send the request without break_glass and ask an approver",
            ),
            BrokerError::QuotaExceeded { retry_after, .. } => {
                let mut problem = Problem::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "quota-exceeded",
                    "Agent quota exceeded",
                    error.to_string(),
                    format!(
                        "retry after {} seconds (Retry-After); the agents entry's quota counts issuances in a sliding window",
                        retry_after.as_secs()
                    ),
                );
                problem.retry_after = std::num::NonZeroU32::new(
                    u32::try_from(retry_after.as_secs().max(1)).unwrap_or(u32::MAX),
                );
                problem
            }
            BrokerError::RateLimited(limited) => {
                let seconds = limited.retry_after_seconds();
                let mut problem = Problem::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate-limited",
                    "Rate limited",
                    format!(
                        "too many {} (limit {}); retry in {seconds}s",
                        limited.limit.describe(),
                        limited.limit.label()
                    ),
                    format!(
                        "retry after {seconds} seconds (Retry-After){}; the operator sets this rate with {}",
                        if limited.limit == crate::broker::limits::Limit::AuthFailuresPerAddress {
                            ", with a valid token: until then every request from this address is refused"
                        } else {
                            ""
                        },
                        limited.limit.config_key()
                    ),
                );
                problem.retry_after =
                    std::num::NonZeroU32::new(u32::try_from(seconds).unwrap_or(u32::MAX));
                problem
            }
            BrokerError::BreakGlassNotAPerson => Problem::new(
                StatusCode::FORBIDDEN,
                "break-glass-forbidden",
                "Break-glass is for people",
                error.to_string(),
                "a person must break glass with their own token, without an agent acting for them",
            ),
            BrokerError::DelegationRevoked { revoked } => Problem::new(
                StatusCode::FORBIDDEN,
                "delegation-revoked",
                "Delegation revoked",
                error.to_string(),
                if revoked.scope == "agent" {
                    "an agent admin revoked this agent; they can restore it with `stackpass agents restore AGENT --all-persons`"
                } else {
                    "the person revoked this agent's delegation; only they can restore it, with `stackpass agents restore AGENT`"
                },
            ),
            BrokerError::Revocation(e) => {
                use crate::revocations::RevocationError::*;
                let (status, slug, title, hint) = match e {
                    NotAPerson { .. } => (StatusCode::FORBIDDEN, "revocation-forbidden", "Not allowed to revoke", "a person revokes or restores with their own token, without an agent acting for them"),
                    NotAnAdmin(_) => (StatusCode::FORBIDDEN, "revocation-forbidden", "Not allowed to revoke", "revoke your own delegation with POST /v1/delegations/revoke, or ask an agent admin"),
                    InvalidAgent(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid-request", "Invalid request", "name the agent as it acts (its act.sub), or a pattern such as component:agents/*"),
                    NothingToRestore { .. } => (StatusCode::NOT_FOUND, "revocation-not-found", "No such revocation", "list revocations with `stackpass agents list`; an admin's revocation is restored with --all-persons"),
                    Contended(_) => (StatusCode::CONFLICT, "revocation-contended", "Revocation changed meanwhile", "retry"),
                };
                Problem::new(status, slug, title, e.to_string(), hint)
            }
            BrokerError::RevocationStore(_) => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "revocations-unavailable",
                "Revocations unavailable",
                "revocations could not be read or written, so nothing was decided or issued",
                "retry shortly; if it persists, the operator should check the audit database",
            ),
            BrokerError::ApprovalStore(_) => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "approvals-unavailable",
                "Approvals unavailable",
                "access requests could not be read or written, so nothing was decided",
                "retry shortly; if it persists, the operator should check the audit database",
            ),
            BrokerError::Cloud(e) => from_provider_error(e),
            BrokerError::IssuanceInterrupted => Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
                error.to_string(),
                "report the request id to the operator; no credential was returned",
            ),
            BrokerError::Issuer(_) => Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
                "the broker failed while handling this request; nothing was issued",
                "report the request id to the operator",
            ),
        }
    }
}

impl From<BrokerError> for Problem {
    fn from(error: BrokerError) -> Self {
        Problem::from_broker_error(&error)
    }
}

fn from_identity_error(error: &IdentityError) -> Problem {
    if error.is_unavailable() {
        return Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "identity-unavailable",
            "Identity provider unavailable",
            "the token issuer's signing keys, or the catalog or stack source that names the caller, could not be reached",
            "retry shortly; if it persists, the operator should check the identity issuer, the catalog and the stack source",
        );
    }
    if matches!(
        error,
        IdentityError::PipelineRefused(_) | IdentityError::NoCatalogEntity(_)
    ) {
        return Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "Authentication failed",
            error.to_string(),
            "the token is genuine, but this broker does not trust the pipeline it names as any caller; the detail says what binds it",
        );
    }
    Problem::new(
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        "Authentication failed",
        error.to_string(),
        "send a current Backstage identity token as Authorization: Bearer <token>",
    )
}

fn from_provider_error(error: &ProviderError) -> Problem {
    match error {
        ProviderError::Rejected { code, hint, .. } => {
            let mut problem = Problem::new(
                StatusCode::BAD_GATEWAY,
                "cloud-refused",
                "Cloud refused the exchange",
                error.to_string(),
                hint.clone(),
            );
            problem.cloud_code = Some(code.as_str().into());
            problem
        }
        ProviderError::InvalidResponse { .. } => Problem::new(
            StatusCode::BAD_GATEWAY,
            "cloud-invalid-response",
            "Cloud sent an unusable response",
            error.to_string(),
            "retry; if it persists, report the request id to the operator",
        ),
        ProviderError::Unavailable { .. } => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "cloud-unavailable",
            "Cloud unreachable",
            error.to_string(),
            "retry shortly; if it persists, the operator should check connectivity to the cloud's token endpoint",
        ),
    }
}

impl IntoResponse for Problem {
    /// Rendered now, and again by the request-id layer once it adds the id.
    fn into_response(self) -> Response {
        let mut response = self.render();
        response.extensions_mut().insert(self);
        response
    }
}

impl Problem {
    pub(super) fn render(&self) -> Response {
        let status = self.status;
        let unauthenticated = status == StatusCode::UNAUTHORIZED;
        let mut response = (status, axum::Json(self)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if unauthenticated {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds.get()));
        }
        response
    }
}
