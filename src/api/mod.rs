//! The HTTP API (axum). Handlers stay thin: extract (the caller and request
//! context are extractors, `extract`), call the broker, map errors through
//! [`Problem`]. Bodies are the `wire` types. Cross-cutting concerns are tower
//! layers around the router: request ids, tracing, timeout, panic catching;
//! the authenticated API (`/v1`) also passes `admission` (caller, then body)
//! and the concurrency limit, which the discovery documents, the JWKS and the
//! health checks stay out of, so that the clouds can always fetch the keys.
//! `/metrics` is served here unless it has a listener of its own.
//! `serve` owns the connections; `tls` the optional https listener's
//! certificate and its reload.

mod admission;
mod approvals;
mod audience;
mod audit;
mod credentials;
mod decisions;
mod extract;
mod mcp;
mod openapi;
mod origin;
mod problem;
mod revocations;
mod serve;
pub mod tls;
mod token_exchange;

use std::sync::Arc;

use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use tower::ServiceBuilder;

pub use mcp::McpSettings;
pub use openapi::{document as openapi_document, document_json as openapi_json};
use origin::{request_origin, Origin, TrustedProxies};
pub use problem::Problem;
pub use serve::{serve, ConnectionLimits, Draining, ShutdownTiming};

use crate::broker::Broker;
use crate::config::ServerConfig;
use crate::issuer::JWKS_CACHE_MAX_AGE;
use crate::wire;

/// `draining` is the listener's flag: once set, `/readyz` fails and every
/// answer closes its connection.
pub fn router(
    broker: Arc<Broker>,
    config: &ServerConfig,
    mcp: Option<McpSettings>,
    metrics: Option<PrometheusHandle>,
    draining: Draining,
) -> Router {
    let admission = admission::Admission {
        broker: broker.clone(),
        max_body_bytes: config.max_body_bytes,
        body_read_timeout: config.body_read_timeout,
        mcp_audiences: mcp
            .as_ref()
            .map(|settings| settings.audiences.clone())
            .unwrap_or_default(),
    };
    let authenticated = Router::new()
        .route("/v1/credentials", post(credentials::issue))
        .route("/v1/audit", get(audit::read))
        .route("/v1/decisions", post(decisions::explain))
        .route(
            "/v1/access-requests",
            get(approvals::list).post(approvals::create),
        )
        .route("/v1/access-requests/{id}/approve", post(approvals::approve))
        .route("/v1/access-requests/{id}/deny", post(approvals::deny))
        .route("/v1/delegations", get(revocations::list))
        .route(
            "/v1/delegations/revoke",
            post(revocations::revoke_delegation),
        )
        .route(
            "/v1/delegations/restore",
            post(revocations::restore_delegation),
        )
        .route("/v1/agents/revoke", post(revocations::revoke_agent))
        .route("/v1/agents/restore", post(revocations::restore_agent))
        .layer(
            ServiceBuilder::new()
                .layer(middleware::from_fn_with_state(admission, admission::admit))
                .layer(HandleErrorLayer::new(overloaded_or_timed_out))
                .load_shed()
                .concurrency_limit(config.max_concurrent_requests),
        );
    let mcp = mcp.map(|settings| mcp::routes(broker.clone(), settings, config));
    Router::new()
        .merge(authenticated)
        .merge(metrics.map(metrics_routes).unwrap_or_default())
        .merge(token_exchange::routes(config))
        .merge(mcp.unwrap_or_default())
        .route("/healthz", get(healthz))
        .route(
            "/readyz",
            get({
                let draining = draining.clone();
                move |state: State<Arc<Broker>>| readyz(state, draining.clone())
            }),
        )
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/openapi.json", get(openapi::serve))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            draining,
            close_when_draining,
        ))
        // Admission enforces the limit; this only keeps axum's own extractors
        // (2 MB by default) from refusing a body admission let through.
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(
            ServiceBuilder::new()
                .layer(middleware::from_fn_with_state(
                    Arc::new(TrustedProxies::new(config.trusted_proxies.clone())),
                    request_origin,
                ))
                .layer(tower_http::catch_panic::CatchPanicLayer::custom(
                    panic_response,
                ))
                .layer(HandleErrorLayer::new(overloaded_or_timed_out))
                .timeout(config.request_timeout),
        )
        .with_state(broker)
}

/// While draining, every answer says `Connection: close`: clients holding a
/// keep-alive connection to this replica reconnect (to another one, once the
/// load balancer has taken this one out) rather than racing the idle close
/// when the shutdown delay ends.
async fn close_when_draining(
    State(draining): State<Draining>,
    request: axum::extract::Request,
    next: middleware::Next,
) -> Response {
    let mut response = next.run(request).await;
    if draining.is_draining() {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// `/metrics` alone, for the API listener or a listener of its own.
pub fn metrics_routes<S: Clone + Send + Sync + 'static>(handle: PrometheusHandle) -> Router<S> {
    Router::new()
        .route("/metrics", get(metrics_page))
        .layer(Extension(handle))
}

/// Prometheus metrics in the text exposition format (0.0.4).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    operation_id = "metrics",
    responses((status = 200, description = "Prometheus text format: counters, gauges and histograms named `stackpass_*` (README, \"Metrics, logs and traces\")", body = String, content_type = "text/plain")),
)]
async fn metrics_page(Extension(handle): Extension<PrometheusHandle>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        handle.render(),
    )
        .into_response()
}

async fn overloaded_or_timed_out(error: tower::BoxError) -> Problem {
    if error.is::<tower::timeout::error::Elapsed>() {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "Request timed out",
            "the broker did not finish this request in time; no credential was returned (one minted for it is recorded in the audit log as withheld)",
            "retry; if it persists, a dependency (catalog, cloud, audit store) is slow",
        )
    } else {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "Broker overloaded",
            "the broker is at its concurrency limit",
            "retry with backoff",
        )
    }
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    Problem::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "Internal error",
        "the broker failed while handling this request; nothing was issued",
        "report the time of the request to the operator",
    )
    .into_response()
}

async fn not_found() -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "not-found",
        "Not found",
        "no such endpoint",
        "see the README for the API",
    )
}

async fn method_not_allowed() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        "this endpoint does not accept that method",
        "see the README for the API",
    )
}

/// Liveness: the process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    operation_id = "healthz",
    responses((status = 200, description = "`{\"status\": \"ok\"}`", body = wire::Health)),
)]
async fn healthz() -> Json<wire::Health> {
    Json(wire::Health {
        status: "ok".to_owned(),
    })
}

/// Readiness: the audit store and the signing key are usable, and the broker
/// is not shutting down.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    operation_id = "readyz",
    responses((status = 200, description = "`{\"status\": \"ready\"}`", body = wire::Health)),
)]
async fn readyz(State(broker): State<Arc<Broker>>, draining: Draining) -> Response {
    if draining.is_draining() {
        return Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "Draining",
            "the broker is shutting down: it still serves requests it is sent, then stops accepting and finishes those in flight",
            "send new requests to another replica",
        )
        .into_response();
    }
    match broker.ready().await {
        Ok(()) => Json(wire::Health {
            status: "ready".to_owned(),
        })
        .into_response(),
        Err(reason) => {
            tracing::warn!(%reason, "not ready");
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not-ready",
                "Not ready",
                "the audit store or the signing key is not usable",
                "the operator should check the broker's logs",
            )
            .into_response()
        }
    }
}

/// Clouds cache these documents for as long as `keys rotate` waits before it
/// promotes a newly published key.
fn cacheable(body: impl IntoResponse) -> Response {
    let mut response = body.into_response();
    let cache = format!("public, max-age={}", JWKS_CACHE_MAX_AGE.as_secs());
    if let Ok(value) = HeaderValue::from_str(&cache) {
        response.headers_mut().insert(header::CACHE_CONTROL, value);
    }
    response
}

/// The broker as an OIDC issuer, for the clouds that verify its subject tokens.
#[utoipa::path(
    get,
    path = "/.well-known/openid-configuration",
    tag = "discovery",
    operation_id = "openid_configuration",
    responses((status = 200, description = "OIDC discovery document",
        body = wire::DiscoveryDocument,
        headers(("cache-control" = String, description = "`public, max-age=…`")))),
)]
async fn discovery(State(broker): State<Arc<Broker>>) -> Response {
    cacheable(Json(broker.issuer().discovery_document()))
}

/// The subject tokens' public keys: next, current and retiring.
#[utoipa::path(
    get,
    path = "/.well-known/jwks.json",
    tag = "discovery",
    operation_id = "jwks",
    responses((status = 200, description = "JWK set",
        body = wire::JwkSet,
        headers(("cache-control" = String, description = "`public, max-age=…`")))),
)]
async fn jwks(State(broker): State<Arc<Broker>>) -> Response {
    cacheable(Json(broker.issuer().jwks()))
}
