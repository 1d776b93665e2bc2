//! The MCP server at `/mcp` (Model Context Protocol, streamable HTTP, served
//! by the `rmcp` SDK) and what the MCP authorization specification asks of a
//! protected resource: RFC 9728 metadata at
//! `/.well-known/oauth-protected-resource/mcp` (and without the suffix), and a
//! 401 whose `WWW-Authenticate` names that metadata.
//!
//! The gate here admits a request only with a token the broker's verifier
//! accepts AND whose every audience names this MCP server (its resource URL or
//! `mcp.audience`): a token minted for Backstage, for `/v1` or for any other
//! service is refused, so nothing that was sent elsewhere can be replayed here
//! (the spec's "token passthrough" rule). The tools (`tools.rs`) then call the
//! same broker functions as `/v1`, so policy, agent bounds, quotas,
//! revocation and the audit apply unchanged.
//!
//! The server is stateless (no `Mcp-Session-Id`, JSON responses): any replica
//! answers any request, as `/v1` does.

mod tools;

use std::sync::Arc;

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use secrecy::{ExposeSecret, SecretString};
use tower::ServiceBuilder;

use super::audience::aimed_at;
use super::{admission, Origin, Problem};
use crate::broker::{Broker, RequestContext};
use crate::config::{Config, ServerConfig};
use crate::identity::Principal;
use crate::wire;

/// Where the metadata lives (RFC 9728 section 3.1: the well-known prefix
/// inserted before the resource's path).
const METADATA_PATH: &str = "/.well-known/oauth-protected-resource/mcp";

/// What the MCP server needs from configuration, settled at startup.
#[derive(Debug, Clone)]
pub struct McpSettings {
    /// `{public_url}/mcp`: the RFC 9728 `resource`.
    pub resource: String,
    /// Audiences that name this server; a token's every `aud` must be one.
    pub audiences: Vec<String>,
    pub authorization_servers: Vec<String>,
    pub scopes_supported: Vec<String>,
    /// `{public_url}{METADATA_PATH}`, for `WWW-Authenticate`.
    pub metadata_url: String,
    /// The public URL's host (and host:port), for rmcp's `Host` check
    /// against DNS rebinding.
    pub allowed_hosts: Vec<String>,
}

impl McpSettings {
    /// `None` when `[mcp]` is not enabled.
    pub fn from_config(config: &Config) -> Option<McpSettings> {
        if !config.mcp.enabled {
            return None;
        }
        let public = config.public_url();
        let mut allowed_hosts = Vec::new();
        if let Some(host) = public.host_str() {
            allowed_hosts.push(host.to_owned());
            if let Some(port) = public.port() {
                allowed_hosts.push(format!("{host}:{port}"));
            }
        }
        Some(McpSettings {
            resource: config.mcp_resource(),
            audiences: config.mcp_audiences(),
            authorization_servers: config.mcp_authorization_servers(),
            scopes_supported: config.mcp.scopes_supported.clone(),
            metadata_url: format!("{}{METADATA_PATH}", config.issuer_url()),
            allowed_hosts,
        })
    }

    /// The RFC 9728 protected-resource metadata document.
    fn metadata(&self) -> wire::ProtectedResourceMetadata {
        wire::ProtectedResourceMetadata {
            resource: self.resource.clone(),
            authorization_servers: self.authorization_servers.clone(),
            bearer_methods_supported: vec!["header".to_owned()],
            resource_name: "stackpass MCP server".to_owned(),
            scopes_supported: (!self.scopes_supported.is_empty())
                .then(|| self.scopes_supported.clone()),
        }
    }
}

/// The caller the gate verified, for the tools (rmcp hands tools the HTTP
/// request's parts, extensions included).
#[derive(Clone)]
struct McpCaller {
    principal: Principal,
    context: RequestContext,
}

#[derive(Clone)]
struct Gate {
    broker: Arc<Broker>,
    settings: Arc<McpSettings>,
    max_body_bytes: usize,
    body_read_timeout: Duration,
}

/// `/mcp` and its metadata documents, to merge into the API router.
pub(super) fn routes(
    broker: Arc<Broker>,
    settings: McpSettings,
    server: &ServerConfig,
) -> Router<Arc<Broker>> {
    let max_body_bytes = server.max_body_bytes;
    let settings = Arc::new(settings);
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_sse_keep_alive(None)
        .with_max_request_body_bytes(max_body_bytes)
        .with_allowed_hosts(settings.allowed_hosts.clone());
    let tools = tools::StackpassTools::new(broker.clone());
    let service = StreamableHttpService::new(
        move || Ok(tools.clone()),
        Arc::new(NeverSessionManager::default()),
        config,
    );
    let gate = Gate {
        broker,
        settings: settings.clone(),
        max_body_bytes,
        body_read_timeout: server.body_read_timeout,
    };
    Router::new()
        .route_service("/mcp", service)
        .layer(
            ServiceBuilder::new()
                .layer(middleware::from_fn_with_state(gate, admit))
                .layer(axum::error_handling::HandleErrorLayer::new(
                    super::overloaded_or_timed_out,
                ))
                .load_shed()
                .concurrency_limit(server.max_concurrent_requests),
        )
        .route(METADATA_PATH, get(metadata))
        .route(
            "/.well-known/oauth-protected-resource",
            get(metadata_at_root),
        )
        .layer(Extension(settings))
}

/// The MCP server's protected-resource metadata (RFC 9728).
#[utoipa::path(
    get,
    path = "/.well-known/oauth-protected-resource/mcp",
    tag = "mcp",
    operation_id = "mcp_resource_metadata",
    responses((status = 200, description = "RFC 9728 metadata of `/mcp`", body = wire::ProtectedResourceMetadata)),
)]
async fn metadata(
    Extension(settings): Extension<Arc<McpSettings>>,
) -> Json<wire::ProtectedResourceMetadata> {
    Json(settings.metadata())
}

/// The same metadata, without the resource's path.
#[utoipa::path(
    get,
    path = "/.well-known/oauth-protected-resource",
    tag = "mcp",
    operation_id = "mcp_resource_metadata_at_root",
    responses((status = 200, description = "RFC 9728 metadata of `/mcp`", body = wire::ProtectedResourceMetadata)),
)]
async fn metadata_at_root(
    Extension(settings): Extension<Arc<McpSettings>>,
) -> Json<wire::ProtectedResourceMetadata> {
    Json(settings.metadata())
}

/// A JSON-RPC 2.0 message to the MCP server (`initialize`, `tools/list`,
/// `tools/call`, a notification, …).
// For the OpenAPI document only: rmcp reads and writes these messages.
#[derive(utoipa::ToSchema)]
#[schema(as = McpRequest)]
#[allow(dead_code)] // Describes rmcp's input for the OpenAPI document; never built.
pub(in crate::api) struct JsonRpcRequest {
    /// `2.0`.
    #[schema(example = "2.0")]
    jsonrpc: String,
    /// A string or a number; absent for a notification (answered 202, no
    /// body).
    #[schema(value_type = Option<serde_json::Value>, example = 1)]
    id: Option<serde_json::Value>,
    #[schema(example = "tools/list")]
    method: String,
    params: Option<serde_json::Value>,
}

/// A JSON-RPC 2.0 answer: `result`, or `error` (a refused tool call is a
/// result with `isError`).
#[derive(utoipa::ToSchema)]
#[schema(as = McpResponse)]
#[allow(dead_code)] // Describes rmcp's output for the OpenAPI document; never built.
pub(in crate::api) struct JsonRpcResponse {
    jsonrpc: String,
    #[schema(value_type = Option<serde_json::Value>)]
    id: Option<serde_json::Value>,
    result: Option<serde_json::Value>,
    error: Option<JsonRpcError>,
}

#[derive(utoipa::ToSchema)]
#[schema(as = McpError)]
#[allow(dead_code)] // Part of JsonRpcResponse's description.
pub(in crate::api) struct JsonRpcError {
    code: i64,
    message: String,
    data: Option<serde_json::Value>,
}

/// Admits a request whose token the verifier accepts and whose audience is
/// this MCP server (anything else gets a 401 naming the metadata), and whose
/// body then arrives whole within the limits `/v1` has, before it takes a
/// request slot. The OpenAPI document describes `/mcp` here, at its door:
/// the JSON-RPC answers are rmcp's, the others this gate's.
#[utoipa::path(
    post,
    path = "/mcp",
    tag = "mcp",
    operation_id = "mcp",
    summary = "The MCP server: JSON-RPC over POST (streamable HTTP, stateless, JSON answers).",
    description = "Tools `list_stacks`, `explain_decision`, `request_access` and `get_credentials`, under the same policy, agent bounds, quotas, revocation and audit as `/v1`. A 401 names the RFC 9728 metadata in `WWW-Authenticate: Bearer resource_metadata=…`.",
    request_body(
        content = JsonRpcRequest,
        example = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
    ),
    params(
        ("accept" = String, Header, description = "Must name both `application/json` and `text/event-stream` (answers are JSON)", example = "application/json, text/event-stream"),
    ),
    responses(
        (status = 200, description = "The JSON-RPC answer: a result, or a JSON-RPC error (an unknown method or tool, bad parameters)", body = JsonRpcResponse),
        (status = 202, description = "A notification or a response was accepted; no body"),
        (status = 400, description = "A malformed JSON-RPC message or MCP header (JSON-RPC error), or an unsupported `MCP-Protocol-Version` (text)",
            content((JsonRpcResponse = "application/json"), (String = "text/plain"))),
        (status = 403, description = "The `Host` is not the broker's public URL's (DNS rebinding protection)", body = String, content_type = "text/plain"),
        (status = 406, description = "The `Accept` header does not name both `application/json` and `text/event-stream`", body = String, content_type = "text/plain"),
        (status = 415, description = "The body is not `application/json`, or not a JSON-RPC message rmcp recognizes (e.g. a request whose `id` is `null`)", body = String, content_type = "text/plain"),
    ),
    security(("mcp_bearer" = [])),
)]
async fn admit(State(gate): State<Gate>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let origin = parts.extensions.get::<Origin>();
    let context = RequestContext {
        request_id: origin.map(|o| o.request_id.clone()).unwrap_or_default(),
        client_request_id: origin.and_then(|o| o.client_request_id.clone()),
        client_addr: origin.and_then(|o| o.client_addr).map(|a| a.to_string()),
    };
    let Some(token) = bearer_token(&parts.headers) else {
        return challenge(
            &gate.settings,
            &context,
            None,
            "no bearer token was sent; send Authorization: Bearer <token> with a token whose audience is this MCP server",
        );
    };
    let principal = match gate.broker.authenticate(&context, &token).await {
        Ok(principal) => principal,
        Err(crate::broker::BrokerError::Identity(error)) if !error.is_unavailable() => {
            return challenge(
                &gate.settings,
                &context,
                Some("invalid_token"),
                &error.to_string(),
            );
        }
        Err(error) => {
            return Problem::from(error)
                .with_request_id(&context.request_id)
                .render()
        }
    };
    // Verified above: these are the signed token's own audiences.
    if !aimed_at(token.expose_secret(), &gate.settings.audiences) {
        tracing::warn!(request_id = %context.request_id, subject = %principal.subject, "MCP token refused: its audience is not this MCP server");
        return challenge(
            &gate.settings,
            &context,
            Some("invalid_token"),
            &format!(
                "the token's audience is not this MCP server; get a token whose only audience is {}",
                gate.settings.resource
            ),
        );
    }
    let body = match tokio::time::timeout(
        gate.body_read_timeout,
        admission::read_body(body, gate.max_body_bytes),
    )
    .await
    {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(problem)) => {
            return admission::close_after(problem.with_request_id(&context.request_id))
        }
        Err(_) => {
            return admission::close_after(
                admission::body_timeout().with_request_id(&context.request_id),
            )
        }
    };
    parts.extensions.insert(McpCaller { principal, context });
    let mut response = next.run(Request::from_parts(parts, Body::from(body))).await;
    // rmcp answers its own refusals (406, 415, 403 for a foreign Host, 400
    // for a protocol version) in plain text without a Content-Type.
    if response.status().as_u16() >= 400 && !response.headers().contains_key(header::CONTENT_TYPE) {
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    response
}

fn bearer_token(headers: &axum::http::HeaderMap) -> Option<SecretString> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty())
        .then(|| SecretString::from(token.to_owned()))
}

/// 401 with the RFC 6750 / RFC 9728 challenge: `resource_metadata` always,
/// `error` only when a token was sent (RFC 6750 section 3.1).
fn challenge(
    settings: &McpSettings,
    context: &RequestContext,
    error: Option<&str>,
    detail: &str,
) -> Response {
    let mut response = Problem::new(
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        "Authentication failed",
        detail,
        "get a token for this MCP server from an issuer its metadata names (authorization_servers)",
    )
    .with_request_id(&context.request_id)
    .render();
    let mut value = String::from("Bearer ");
    if let Some(error) = error {
        value.push_str(&format!(
            "error=\"{error}\", error_description=\"{}\", ",
            quotable(detail)
        ));
    }
    value.push_str(&format!(
        "resource_metadata=\"{}\"",
        quotable(&settings.metadata_url)
    ));
    if let Ok(value) = HeaderValue::from_str(&value) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response.into_response()
}

/// RFC 6750 section 3: `error_description` holds printable ASCII except `"`
/// and `\`.
fn quotable(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            ' ' | '!' | '#'..='[' | ']'..='~' => c,
            _ => '?',
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_text_stays_within_the_quoted_string_grammar() {
        assert_eq!(quotable("a \"b\" \\ c\nd é"), "a ?b? ? c?d ?");
    }
}
