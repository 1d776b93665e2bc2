//! Revocation over HTTP: `POST /v1/delegations/revoke` and `/restore` (the
//! caller's own delegation to an agent), `POST /v1/agents/revoke` and
//! `/restore` (an agent for every person; agent admins), and
//! `GET /v1/delegations` (the caller's revocations and every agent-wide one).

use std::sync::Arc;

use axum::extract::State;
use axum::Json;

use super::credentials::is_one_short_line;
use super::extract::JsonBody;
use super::Problem;
use crate::broker::{Broker, RequestContext};
use crate::identity::Principal;
use crate::wire;

fn checked_reason(body: &wire::RevocationRequest, required: bool) -> Result<(), Problem> {
    match body.reason.as_deref() {
        Some(reason) if !is_one_short_line(reason) || reason.trim().is_empty() => Err(
            revocation_problem("reason is at most 500 characters on one line"),
        ),
        None if required => Err(revocation_problem(
            "reason is mandatory when revoking an agent for every person: say why",
        )),
        _ => Ok(()),
    }
}

fn revocation_problem(detail: &str) -> Problem {
    Problem::new(
        axum::http::StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-request",
        "Invalid request",
        detail,
        "send {\"agent\": \"AGENT\"} (the agent's act.sub, or a pattern such as component:agents/*) and optionally \"reason\"",
    )
}

/// Revoke the caller's own delegation to an agent.
#[utoipa::path(
    post,
    path = "/v1/delegations/revoke",
    tag = "revocations",
    operation_id = "revoke_delegation",
    request_body(content = wire::RevocationRequest, example = json!({"agent": "component:agents/deploy-bot", "reason": "lost laptop"})),
    responses((status = 200, description = "The revocation, and the credentials already issued under it (stackpass cannot recall them)", body = wire::RevocationAnswer)),
    security(("bearer" = [])),
)]
pub async fn revoke_delegation(
    State(broker): State<Arc<Broker>>,
    context: RequestContext,
    principal: Principal,
    JsonBody(body): JsonBody<wire::RevocationRequest>,
) -> Result<Json<wire::RevocationAnswer>, Problem> {
    checked_reason(&body, false)?;
    let answer = broker
        .revoke_agent(&context, &principal, &body.agent, false, body.reason)
        .await?;
    Ok(Json((&answer).into()))
}

/// Restore the caller's own delegation to an agent.
#[utoipa::path(
    post,
    path = "/v1/delegations/restore",
    tag = "revocations",
    operation_id = "restore_delegation",
    request_body(content = wire::RevocationRequest, example = json!({"agent": "component:agents/deploy-bot", "reason": "lost laptop"})),
    responses((status = 200, description = "The lifted revocation", body = wire::RevocationAnswer)),
    security(("bearer" = [])),
)]
pub async fn restore_delegation(
    State(broker): State<Arc<Broker>>,
    context: RequestContext,
    principal: Principal,
    JsonBody(body): JsonBody<wire::RevocationRequest>,
) -> Result<Json<wire::RevocationAnswer>, Problem> {
    checked_reason(&body, false)?;
    let answer = broker
        .restore_agent(&context, &principal, &body.agent, false)
        .await?;
    Ok(Json((&answer).into()))
}

/// Revoke an agent for every person (agent admins; a reason is required).
#[utoipa::path(
    post,
    path = "/v1/agents/revoke",
    tag = "revocations",
    operation_id = "revoke_agent",
    request_body(content = wire::RevocationRequest, example = json!({"agent": "component:agents/deploy-bot", "reason": "lost laptop"})),
    responses((status = 200, description = "The revocation, and the credentials already issued under it (stackpass cannot recall them)", body = wire::RevocationAnswer)),
    security(("bearer" = [])),
)]
pub async fn revoke_agent(
    State(broker): State<Arc<Broker>>,
    context: RequestContext,
    principal: Principal,
    JsonBody(body): JsonBody<wire::RevocationRequest>,
) -> Result<Json<wire::RevocationAnswer>, Problem> {
    checked_reason(&body, true)?;
    let answer = broker
        .revoke_agent(&context, &principal, &body.agent, true, body.reason)
        .await?;
    Ok(Json((&answer).into()))
}

/// Restore an agent revoked for every person (agent admins).
#[utoipa::path(
    post,
    path = "/v1/agents/restore",
    tag = "revocations",
    operation_id = "restore_agent",
    request_body(content = wire::RevocationRequest, example = json!({"agent": "component:agents/deploy-bot", "reason": "lost laptop"})),
    responses((status = 200, description = "The lifted revocation", body = wire::RevocationAnswer)),
    security(("bearer" = [])),
)]
pub async fn restore_agent(
    State(broker): State<Arc<Broker>>,
    context: RequestContext,
    principal: Principal,
    JsonBody(body): JsonBody<wire::RevocationRequest>,
) -> Result<Json<wire::RevocationAnswer>, Problem> {
    checked_reason(&body, false)?;
    let answer = broker
        .restore_agent(&context, &principal, &body.agent, true)
        .await?;
    Ok(Json((&answer).into()))
}

/// The caller's revocations and every agent-wide one.
#[utoipa::path(
    get,
    path = "/v1/delegations",
    tag = "revocations",
    operation_id = "list_revocations",
    responses((status = 200, description = "Revocations", body = wire::RevocationList)),
    security(("bearer" = [])),
)]
pub async fn list(
    State(broker): State<Arc<Broker>>,
    principal: Principal,
) -> Result<Json<wire::RevocationList>, Problem> {
    let revocations = broker.list_revocations(&principal).await?;
    Ok(Json(wire::RevocationList {
        revocations: revocations.iter().map(Into::into).collect(),
    }))
}
