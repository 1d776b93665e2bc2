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

use super::credentials::{bearer_token, parse_body};
use super::{Problem, RequestId};
use crate::broker::{Broker, BrokerError, RequestContext};

pub async fn explain(
    State(broker): State<Arc<Broker>>,
    Extension(request_id): Extension<RequestId>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let context = RequestContext {
        request_id: request_id.0.clone(),
        client_addr: Some(client.ip().to_string()),
    };
    let result = async {
        let token = bearer_token(&headers)
            .map_err(|e| Problem::from_broker_error(&BrokerError::Identity(e)))?;
        let principal = broker
            .authenticate(&context, &token)
            .await
            .map_err(|e| Problem::from_broker_error(&e))?;
        let request = parse_body(&headers, body)?;
        let decision = broker
            .explain(&context, principal, &request)
            .await
            .map_err(|e| Problem::from_broker_error(&e))?;
        Ok::<_, Problem>(Json(decision).into_response())
    }
    .await;
    result.unwrap_or_else(|problem| problem.with_request_id(&request_id.0).into_response())
}
