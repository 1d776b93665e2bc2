//! `POST /v1/credentials`: a bearer token and a stack in, a credential out; and
//! the credential request body that `/v1/decisions` and `/v1/access-requests`
//! share.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use secrecy::ExposeSecret;
use stackpass_provider::{CredentialField, Mode, ProviderKind};
use time::format_description::well_known::Rfc3339;

use super::extract::JsonBody;
use super::Problem;
use crate::broker::{Broker, CredentialRequest, Issued, RequestContext};
use crate::identity::Principal;
use crate::stacks::StackRef;
use crate::wire;

const MAX_REASON_CHARS: usize = 500;

/// Issue a credential for a stack.
///
/// The policy decides from the caller's identity, the stack's tags (read from
/// the stack source) and the owner (from the catalog); the issuance is
/// audited before the credential is returned.
#[utoipa::path(
    post,
    path = "/v1/credentials",
    tag = "credentials",
    operation_id = "issue_credentials",
    request_body(
        content = wire::CredentialRequest,
        example = json!({"stack": "pulumi:acme/payments/dev", "provider": "aws", "duration_seconds": 900}),
    ),
    responses(
        (status = 200, description = "The credential (secrets included), and what was issued by which rule",
            body = wire::IssuedCredential,
            headers(("cache-control" = String, description = "`no-store`"))),
    ),
    security(("bearer" = [])),
)]
pub async fn issue(
    State(broker): State<Arc<Broker>>,
    context: RequestContext,
    principal: Principal,
    JsonBody(body): JsonBody<wire::CredentialRequest>,
) -> Result<Response, Problem> {
    let request = credential_request(body)?;
    let issued = broker.issue(&context, principal, &request).await?;
    let body = issued_body(&issued);
    let mut response = Json(body).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// The answer body, secrets exposed: `/v1/credentials` writes it straight
/// into its response, the MCP `get_credentials` tool into its result.
pub(super) fn issued_body(issued: &Issued) -> wire::IssuedCredential {
    wire::IssuedCredential {
        issuance_id: issued.issuance_id.to_string(),
        requester: issued.requester.to_string(),
        stack: issued.stack.to_string(),
        provider: issued.provider.to_string(),
        rule: issued.rule.clone(),
        role: issued.target.to_string(),
        duration_seconds: issued.duration.as_secs(),
        expires_at: issued.expires_at.format(&Rfc3339).unwrap_or_default(),
        credentials: issued
            .credential
            .fields
            .iter()
            .map(|(name, field)| {
                let value = match field {
                    CredentialField::Public(value) => value.clone().into(),
                    CredentialField::Secret(secret) => secret.expose_secret().into(),
                };
                ((*name).to_owned(), value)
            })
            .collect(),
    }
}

/// Parses what the caller sent into a request the broker can act on. The
/// provider's own duration limits are checked by the broker, which knows them.
pub(super) fn credential_request(
    body: wire::CredentialRequest,
) -> Result<CredentialRequest, Problem> {
    let stack =
        StackRef::parse(&body.stack).map_err(|e| Problem::invalid_request(e.to_string()))?;
    let provider =
        ProviderKind::parse(&body.provider).map_err(|e| Problem::invalid_request(e.to_string()))?;
    let reason = body
        .reason
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty());
    let break_glass = match body.break_glass {
        Some(wire::BreakGlass { reason }) if reason.trim().is_empty() => {
            return Err(Problem::invalid_request(
                "break_glass.reason is mandatory: say why this cannot wait for approval",
            ));
        }
        Some(wire::BreakGlass { reason }) => Some(reason.trim().to_owned()),
        None => None,
    };
    for text in reason.iter().chain(break_glass.iter()) {
        if !is_one_short_line(text) {
            return Err(Problem::invalid_request(format!(
                "reasons are at most {MAX_REASON_CHARS} characters on one line"
            )));
        }
    }
    let mode = match body.mode.as_deref() {
        None => Mode::Credentials,
        Some(text) => Mode::parse(text).ok_or_else(|| {
            Problem::invalid_request(format!(
                "mode {text:?} is not known: use \"credentials\" (the cloud's credential) or \"federation\" (a subject token your tools exchange)"
            ))
        })?,
    };
    Ok(CredentialRequest {
        mode,
        stack,
        provider,
        duration: body.duration_seconds.map(Duration::from_secs),
        reason,
        break_glass,
    })
}

/// Reasons and notes end up in notifications and the audit log: one line, bounded.
pub(super) fn is_one_short_line(text: &str) -> bool {
    text.chars().count() <= MAX_REASON_CHARS && !text.chars().any(char::is_control)
}
