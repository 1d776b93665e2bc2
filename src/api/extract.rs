//! Extractors: what every handler needs from a request, taken once here.
//! [`RequestContext`] (the request id and client address the audit log
//! records), [`Principal`] (the verified caller behind the bearer token) and
//! [`JsonBody`] (a JSON body, with the problems a bad one deserves).
//!
//! Handlers list `Principal` before their body, so every route authenticates
//! before it reads the request: an anonymous caller learns nothing, not even
//! request syntax.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use secrecy::SecretString;
use serde::de::DeserializeOwned;

use super::admission::Admitted;
use super::{Origin, Problem};
use crate::broker::{Broker, BrokerError, RequestContext};
use crate::identity::{IdentityError, Principal};

impl FromRequestParts<Arc<Broker>> for RequestContext {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &Arc<Broker>) -> Result<Self, Problem> {
        let origin = parts.extensions.get::<Origin>();
        Ok(RequestContext {
            request_id: origin.map(|o| o.request_id.clone()).unwrap_or_default(),
            client_request_id: origin.and_then(|o| o.client_request_id.clone()),
            client_addr: origin.and_then(|o| o.client_addr).map(|a| a.to_string()),
        })
    }
}

/// The caller, or 401 (503 if the issuer's keys cannot be fetched); on `/v1`
/// routes, the one `admission` already verified.
impl FromRequestParts<Arc<Broker>> for Principal {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, broker: &Arc<Broker>) -> Result<Self, Problem> {
        if let Some(Admitted(principal)) = parts.extensions.get::<Admitted>() {
            return Ok(principal.clone());
        }
        let context = RequestContext::from_request_parts(parts, broker).await?;
        let token = bearer_token(&parts.headers)
            .inspect_err(|e| crate::broker::authentication_failed(&context, e))
            .map_err(BrokerError::Identity)?;
        Ok(broker.authenticate(&context, &token).await?)
    }
}

fn bearer_token(headers: &HeaderMap) -> Result<SecretString, IdentityError> {
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

/// A JSON body: `Content-Type: application/json` and well formed for `T`
/// (unknown fields included), or the problem saying which. The body is the one
/// `admission` already read whole, within the size limit and its deadline.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Arc<Broker>> for JsonBody<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, broker: &Arc<Broker>) -> Result<Self, Problem> {
        let is_json = request
            .headers()
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
        let bytes = Bytes::from_request(request, broker)
            .await
            .map_err(|_| Problem::invalid_request("the request body could not be read"))?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| Problem::invalid_request(format!("invalid JSON body: {e}")))
    }
}
