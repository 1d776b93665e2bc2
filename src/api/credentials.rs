//! `POST /v1/credentials`: a bearer token and a stack in, a credential out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use secrecy::{ExposeSecret, SecretString};
use stackpass_provider::{CredentialField, ProviderKind};
use time::format_description::well_known::Rfc3339;

use super::{Problem, RequestId};
use crate::broker::{Broker, CredentialRequest};
use crate::identity::IdentityError;
use crate::stacks::StackRef;
use crate::wire;

const MAX_REASON_CHARS: usize = 500;

pub async fn issue(
    State(broker): State<Arc<Broker>>,
    Extension(request_id): Extension<RequestId>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let id = request_id.0.clone();
    match handle(&broker, request_id, client, &headers, body).await {
        Ok(response) => response,
        Err(problem) => problem.with_request_id(&id).into_response(),
    }
}

async fn handle(
    broker: &Broker,
    request_id: RequestId,
    client: SocketAddr,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let context = super::request_context(&request_id, client);
    let principal = super::authenticate(broker, &context, headers).await?;
    let request = parse_body(headers, body)?;
    let issued = broker.issue(&context, principal, &request).await?;

    let body = wire::IssuedCredential {
        issuance_id: issued.issuance_id.to_string(),
        requester: issued.requester.to_string(),
        stack: issued.stack.to_string(),
        provider: issued.provider.to_string(),
        rule: issued.rule.clone(),
        role: issued.target.to_string(),
        duration_seconds: issued.duration.as_secs(),
        expires_at: issued.expires_at.format(&Rfc3339).unwrap_or_default(),
        // The one place a secret is exposed: written straight into the response.
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
    };
    let mut response = (StatusCode::OK, Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

pub fn bearer_token(headers: &HeaderMap) -> Result<SecretString, IdentityError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(IdentityError::Missing)?
        .to_str()
        .map_err(|_| IdentityError::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(IdentityError::Missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(IdentityError::Missing);
    }
    Ok(SecretString::from(token.trim().to_owned()))
}

pub(super) fn parse_body(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<CredentialRequest, Problem> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            "the request body must be JSON",
            "send Content-Type: application/json",
        ));
    }
    let bytes = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Request body too large",
                "the request body exceeds the broker's limit",
                "a credential request is a small JSON object; send only stack, provider and duration_seconds",
            )
        } else {
            Problem::invalid_request("the request body could not be read")
        }
    })?;
    let body: wire::CredentialRequest = serde_json::from_slice(&bytes)
        .map_err(|e| Problem::invalid_request(format!("invalid JSON body: {e}")))?;
    let stack =
        StackRef::parse(&body.stack).map_err(|e| Problem::invalid_request(e.to_string()))?;
    let provider =
        ProviderKind::parse(&body.provider).map_err(|e| Problem::invalid_request(e.to_string()))?;
    // The provider's own limits are checked by the broker, which knows them.
    let duration = body.duration_seconds.map(Duration::from_secs);
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
        if text.chars().count() > MAX_REASON_CHARS || text.chars().any(char::is_control) {
            return Err(Problem::invalid_request(format!(
                "reasons are at most {MAX_REASON_CHARS} characters on one line"
            )));
        }
    }
    Ok(CredentialRequest {
        stack,
        provider,
        duration,
        reason,
        break_glass,
    })
}
