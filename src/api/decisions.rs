//! `POST /v1/decisions`: what the policy would decide for a credential request,
//! and why, without minting or issuing anything. The dry run is audited.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use super::credentials::parse_body;
use super::{Problem, RequestId};
use crate::broker::Broker;

pub async fn explain(
    State(broker): State<Arc<Broker>>,
    Extension(request_id): Extension<RequestId>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let context = super::request_context(&request_id, client);
    let result = async {
        let principal = super::authenticate(&broker, &context, &headers).await?;
        let request = parse_body(&headers, body)?;
        let decision = broker.explain(&context, principal, &request).await?;
        Ok::<_, Problem>(Json(crate::wire::Decision::from(&decision)).into_response())
    }
    .await;
    result.unwrap_or_else(|problem| problem.with_request_id(&request_id.0).into_response())
}
