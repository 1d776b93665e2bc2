//! Access requests over HTTP: `POST /v1/access-requests` (ask for access a rule
//! grants only with approval), `GET /v1/access-requests` (what the caller may
//! decide, and their own), `POST /v1/access-requests/{id}/approve` and `/deny`.

use std::net::SocketAddr;
use std::sync::Arc;

use super::{Problem, RequestId};
use crate::broker::Broker;
use crate::wire;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

pub async fn create(
    State(broker): State<Arc<Broker>>,
    Extension(request_id): Extension<RequestId>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let context = super::request_context(&request_id, client);
    let result = async {
        let principal = super::authenticate(&broker, &context, &headers).await?;
        let request = super::credentials::parse_body(&headers, body)?;
        let created = broker.request_access(&context, principal, &request).await?;
        let body = Json(wire::AccessRequestEnvelope {
            access_request: (&created).into(),
        });
        Ok::<_, Problem>((axum::http::StatusCode::CREATED, body).into_response())
    }
    .await;
    result.unwrap_or_else(|problem| problem.with_request_id(&request_id.0).into_response())
}

pub async fn list(
    State(broker): State<Arc<Broker>>,
    Extension(request_id): Extension<RequestId>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let context = super::request_context(&request_id, client);
    let result = async {
        let principal = super::authenticate(&broker, &context, &headers).await?;
        let requests = broker.list_access_requests(&principal).await?;
        let body = wire::AccessRequestList {
            access_requests: requests.iter().map(Into::into).collect(),
        };
        Ok::<_, Problem>(Json(body).into_response())
    }
    .await;
    result.unwrap_or_else(|problem| problem.with_request_id(&request_id.0).into_response())
}

pub async fn approve(
    state: State<Arc<Broker>>,
    request_id: Extension<RequestId>,
    client: ConnectInfo<SocketAddr>,
    id: Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    decide(
        state,
        request_id,
        client,
        id,
        headers,
        body,
        Verdict::Approve,
    )
    .await
}

pub async fn deny(
    state: State<Arc<Broker>>,
    request_id: Extension<RequestId>,
    client: ConnectInfo<SocketAddr>,
    id: Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    decide(state, request_id, client, id, headers, body, Verdict::Deny).await
}

enum Verdict {
    Approve,
    Deny,
}

async fn decide(
    State(broker): State<Arc<Broker>>,
    Extension(request_id): Extension<RequestId>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
    verdict: Verdict,
) -> Response {
    let context = super::request_context(&request_id, client);
    let result = async {
        let principal = super::authenticate(&broker, &context, &headers).await?;
        let body: wire::DecisionNote = if body.is_empty() {
            wire::DecisionNote::default()
        } else {
            serde_json::from_slice(&body)
                .map_err(|e| Problem::invalid_request(format!("invalid JSON body: {e}")))?
        };
        if body
            .note
            .as_ref()
            .is_some_and(|n| n.chars().count() > 500 || n.chars().any(char::is_control))
        {
            return Err(Problem::invalid_request(
                "note is at most 500 characters on one line",
            ));
        }
        let note = body.note.as_deref();
        let decided = match verdict {
            Verdict::Approve => {
                broker
                    .approve_access_request(&context, &principal, &id, note)
                    .await?
            }
            Verdict::Deny => {
                broker
                    .deny_access_request(&context, &principal, &id, note)
                    .await?
            }
        };
        Ok(Json(wire::AccessRequestEnvelope {
            access_request: (&decided).into(),
        })
        .into_response())
    }
    .await;
    result.unwrap_or_else(|problem| problem.with_request_id(&request_id.0).into_response())
}
