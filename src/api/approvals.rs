//! Access requests over HTTP: `POST /v1/access-requests` (ask for access a rule
//! grants only with approval), `GET /v1/access-requests` (what the caller may
//! decide, and their own), `POST /v1/access-requests/{id}/approve` and `/deny`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

use super::credentials::{credential_request, is_one_short_line};
use super::extract::JsonBody;
use super::Problem;
use crate::broker::{Broker, RequestContext};
use crate::identity::Principal;
use crate::wire;

/// Ask for access that a rule grants only with approval.
///
/// Returns the caller's pending request for the same grant if there is one.
#[utoipa::path(
    post,
    path = "/v1/access-requests",
    tag = "approvals",
    operation_id = "request_access",
    request_body(
        content = wire::CredentialRequest,
        example = json!({"stack": "pulumi:acme/payments/prod", "provider": "aws", "reason": "hotfix INC-42"}),
    ),
    responses((status = 201, description = "The access request, pending its approvers", body = wire::AccessRequestEnvelope,
        links(
            ("approve" = (operation_id = "approve_access_request", parameters(("id" = "$response.body#/access_request/id")), description = "An approver approves it")),
            ("deny" = (operation_id = "deny_access_request", parameters(("id" = "$response.body#/access_request/id")), description = "An approver denies it")),
        ))),
    security(("bearer" = [])),
)]
pub async fn create(
    State(broker): State<Arc<Broker>>,
    context: RequestContext,
    principal: Principal,
    JsonBody(body): JsonBody<wire::CredentialRequest>,
) -> Result<(StatusCode, Json<wire::AccessRequestEnvelope>), Problem> {
    let request = credential_request(body)?;
    let created = broker.request_access(&context, principal, &request).await?;
    let body = wire::AccessRequestEnvelope {
        access_request: (&created).into(),
    };
    Ok((StatusCode::CREATED, Json(body)))
}

/// The access requests the caller may decide, and their own.
#[utoipa::path(
    get,
    path = "/v1/access-requests",
    tag = "approvals",
    operation_id = "list_access_requests",
    responses((status = 200, description = "Access requests", body = wire::AccessRequestList)),
    security(("bearer" = [])),
)]
pub async fn list(
    State(broker): State<Arc<Broker>>,
    context: RequestContext,
    principal: Principal,
) -> Result<Json<wire::AccessRequestList>, Problem> {
    let requests = broker.list_access_requests(&context, &principal).await?;
    Ok(Json(wire::AccessRequestList {
        access_requests: requests.iter().map(Into::into).collect(),
    }))
}

/// Approve an access request (people only, never their own).
#[utoipa::path(
    post,
    path = "/v1/access-requests/{id}/approve",
    tag = "approvals",
    operation_id = "approve_access_request",
    params(("id" = String, Path, description = "The access request's id")),
    request_body(content = Option<wire::DecisionNote>, description = "An optional note; an empty body is no note"),
    responses((status = 200, description = "The access request after the approval", body = wire::AccessRequestEnvelope)),
    security(("bearer" = [])),
)]
pub async fn approve(
    State(broker): State<Arc<Broker>>,
    context: RequestContext,
    principal: Principal,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<wire::AccessRequestEnvelope>, Problem> {
    let note = note(&body)?;
    let decided = broker
        .approve_access_request(&context, &principal, &id, note.as_deref())
        .await?;
    Ok(envelope(&decided))
}

/// Deny an access request (people only).
#[utoipa::path(
    post,
    path = "/v1/access-requests/{id}/deny",
    tag = "approvals",
    operation_id = "deny_access_request",
    params(("id" = String, Path, description = "The access request's id")),
    request_body(content = Option<wire::DecisionNote>, description = "An optional note; an empty body is no note"),
    responses((status = 200, description = "The access request, denied", body = wire::AccessRequestEnvelope)),
    security(("bearer" = [])),
)]
pub async fn deny(
    State(broker): State<Arc<Broker>>,
    context: RequestContext,
    principal: Principal,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<wire::AccessRequestEnvelope>, Problem> {
    let note = note(&body)?;
    let decided = broker
        .deny_access_request(&context, &principal, &id, note.as_deref())
        .await?;
    Ok(envelope(&decided))
}

fn envelope(request: &crate::approvals::AccessRequest) -> Json<wire::AccessRequestEnvelope> {
    Json(wire::AccessRequestEnvelope {
        access_request: request.into(),
    })
}

/// The optional `{"note": …}` of a decision; an empty body, or `null`, is
/// no note.
fn note(body: &[u8]) -> Result<Option<String>, Problem> {
    let decision: wire::DecisionNote = if body.is_empty() {
        wire::DecisionNote::default()
    } else {
        serde_json::from_slice::<Option<wire::DecisionNote>>(body)
            .map_err(|e| Problem::invalid_request(format!("invalid JSON body: {e}")))?
            .unwrap_or_default()
    };
    if decision
        .note
        .as_deref()
        .is_some_and(|n| !is_one_short_line(n))
    {
        return Err(Problem::invalid_request(
            "note is at most 500 characters on one line",
        ));
    }
    Ok(decision.note)
}

#[cfg(test)]
mod tests {
    use super::note;

    /// The OpenAPI document offers the note as optional, `null` included
    /// (it was refused with 422 before the document said so).
    #[test]
    fn no_body_and_null_are_no_note() {
        assert_eq!(note(b"").unwrap(), None);
        assert_eq!(note(b"null").unwrap(), None);
        assert_eq!(note(br#"{"note": null}"#).unwrap(), None);
        assert_eq!(note(br#"{"note": "ok"}"#).unwrap().as_deref(), Some("ok"));
        assert!(note(br#"{"note": "a\nb"}"#).is_err());
        assert!(note(br#"{"other": 1}"#).is_err());
        assert!(note(b"[").is_err());
    }
}
