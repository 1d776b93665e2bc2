//! Admission to the authenticated API. Who is asking is settled from the
//! headers before any body is read; then the body must arrive whole, within the
//! size limit and the body deadline. Only then does the request take one of the
//! broker's request slots (the concurrency limit inside this layer), so a
//! client without a valid token, or one that trickles its body, holds a
//! connection for a bounded time but never a slot.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;

use super::Problem;
use crate::broker::Broker;
use crate::identity::Principal;

/// The caller the admission layer verified, for the `Principal` extractor.
#[derive(Clone)]
pub(super) struct Admitted(pub Principal);

#[derive(Clone)]
pub(super) struct Admission {
    pub broker: Arc<Broker>,
    pub max_body_bytes: usize,
    pub body_read_timeout: Duration,
    /// The MCP server's audiences: a token minted for it is its alone, and
    /// is not taken here either (it would let the MCP client's token act
    /// outside the MCP tools).
    pub mcp_audiences: Vec<String>,
}

pub(super) async fn admit(
    State(admission): State<Admission>,
    request: Request,
    next: Next,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let principal = match Principal::from_request_parts(&mut parts, &admission.broker).await {
        Ok(principal) => principal,
        Err(problem) => return problem.into_response(),
    };
    let token = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .map(|(_, token)| token.trim());
    // Verified above: the audience read here is the signed one.
    if token.is_some_and(|token| super::audience::names_any(token, &admission.mcp_audiences)) {
        return Problem::new(
            StatusCode::UNAUTHORIZED,
            "token-for-another-resource",
            "Token for another resource",
            "the token was minted for this broker's MCP server, and is accepted there only",
            "use the MCP tools with it, or get a token whose audience is this broker's API",
        )
        .into_response();
    }
    parts.extensions.insert(Admitted(principal));
    let body = match tokio::time::timeout(
        admission.body_read_timeout,
        read_body(body, admission.max_body_bytes),
    )
    .await
    {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(problem)) => return close_after(problem),
        Err(_) => return close_after(body_timeout()),
    };
    next.run(Request::from_parts(parts, Body::from(body))).await
}

/// Reads the body, refusing it as soon as it passes `limit` (by its declared
/// length, or by what has arrived).
pub(super) async fn read_body(mut body: Body, limit: usize) -> Result<Bytes, Problem> {
    if http_body::Body::size_hint(&body).lower() > limit as u64 {
        return Err(too_large());
    }
    let mut buffer = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|_| Problem::invalid_request("the request body could not be read"))?;
        if let Some(data) = frame.data_ref() {
            if buffer.len() + data.len() > limit {
                return Err(too_large());
            }
            buffer.extend_from_slice(data);
        }
    }
    Ok(Bytes::from(buffer))
}

pub(super) fn body_timeout() -> Problem {
    Problem::new(
        StatusCode::REQUEST_TIMEOUT,
        "body-timeout",
        "Request body too slow",
        "the request body did not arrive in time",
        "send the whole body at once; a credential request is a small JSON object",
    )
}

fn too_large() -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload-too-large",
        "Request body too large",
        "the request body exceeds the broker's limit",
        "a credential request is a small JSON object; send only stack, provider and duration_seconds",
    )
}

/// The rest of an unread body is not worth reading: answer, then close.
pub(super) fn close_after(problem: Problem) -> Response {
    let mut response = problem.into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}
