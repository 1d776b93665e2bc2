//! [`Balancer`]: an HTTP load balancer in front of broker replicas that does
//! what a Kubernetes Service's endpoints do for an ingress: it polls each
//! backend's `/readyz` and sends each request to a backend whose last poll
//! passed (round robin); a poll that takes longer than a second fails, as a
//! probe does at Kubernetes' default `timeoutSeconds`. It never retries: a request it could not deliver is
//! answered 502 (the backend refused or dropped the connection) or 503 (no
//! backend ready), with a body starting [`BALANCER_ERROR`], so a test sees every
//! failure. Each answer names the backend that served it ([`BACKEND_HEADER`]).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;

use super::process::spawn_router;

/// The header naming the backend (its URL) that served an answer.
pub const BACKEND_HEADER: &str = "x-test-backend";

/// A readiness poll that takes longer fails (Kubernetes' default).
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// How the body of an answer the balancer made itself starts.
pub const BALANCER_ERROR: &str = "balancer:";

pub struct Balancer {
    pub url: String,
    state: Arc<BalancerState>,
    pollers: Vec<tokio::task::JoinHandle<()>>,
}

struct BalancerState {
    backends: Vec<Backend>,
    next: AtomicUsize,
    client: reqwest::Client,
}

struct Backend {
    url: String,
    ready: AtomicBool,
}

impl Balancer {
    /// Balances over `backends` (base URLs), polling each one's `/readyz`
    /// every `poll`. A backend counts as ready only after a poll passed.
    pub async fn start(backends: &[&str], poll: Duration) -> Balancer {
        let state = Arc::new(BalancerState {
            backends: backends
                .iter()
                .map(|url| Backend {
                    url: (*url).to_owned(),
                    ready: AtomicBool::new(false),
                })
                .collect(),
            next: AtomicUsize::new(0),
            client: reqwest::Client::builder()
                // Upstream keep-alive, as an ingress keeps it; idle
                // connections are dropped before the broker's own idle
                // limit (server.header_read_timeout, 10s) closes them under
                // a request.
                .pool_idle_timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
        });
        let pollers = (0..backends.len())
            .map(|index| tokio::spawn(poll_readiness(state.clone(), index, poll)))
            .collect();
        let router = Router::new().fallback(forward).with_state(state.clone());
        Balancer {
            url: spawn_router(router).await,
            state,
            pollers,
        }
    }

    /// Waits until every backend's poll passed.
    pub async fn wait_all_ready(&self, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        while !self
            .state
            .backends
            .iter()
            .all(|b| b.ready.load(Ordering::SeqCst))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "backends not ready within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        for poller in &self.pollers {
            poller.abort();
        }
    }
}

async fn poll_readiness(state: Arc<BalancerState>, index: usize, every: Duration) {
    let backend = &state.backends[index];
    let url = format!("{}/readyz", backend.url);
    loop {
        let probe = state.client.get(&url).timeout(PROBE_TIMEOUT).send().await;
        let ready = match probe {
            Ok(response) => response.status() == reqwest::StatusCode::OK,
            Err(_) => false,
        };
        backend.ready.store(ready, Ordering::SeqCst);
        tokio::time::sleep(every).await;
    }
}

fn balancer_error(status: StatusCode, message: String) -> Response {
    (status, format!("{BALANCER_ERROR} {message}")).into_response()
}

async fn forward(State(state): State<Arc<BalancerState>>, request: Request) -> Response {
    let count = state.backends.len();
    let start = state.next.fetch_add(1, Ordering::SeqCst);
    let Some(backend) = (0..count)
        .map(|offset| &state.backends[(start + offset) % count])
        .find(|backend| backend.ready.load(Ordering::SeqCst))
    else {
        return balancer_error(StatusCode::SERVICE_UNAVAILABLE, "no ready backend".into());
    };
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, 1 << 20).await else {
        return balancer_error(StatusCode::BAD_REQUEST, "unreadable body".into());
    };
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut upstream = state
        .client
        .request(parts.method, format!("{}{path}", backend.url))
        .body(body);
    for (name, value) in &parts.headers {
        if name != "host" && name != "content-length" && name != "connection" {
            upstream = upstream.header(name, value);
        }
    }
    let answer = match upstream.send().await {
        Ok(answer) => answer,
        Err(error) => {
            return balancer_error(
                StatusCode::BAD_GATEWAY,
                format!("{}: {error:?}", backend.url),
            )
        }
    };
    let status = answer.status();
    let headers = answer.headers().clone();
    let bytes = match answer.bytes().await {
        Ok(bytes) => bytes,
        Err(error) => {
            return balancer_error(
                StatusCode::BAD_GATEWAY,
                format!("{}: body: {error:?}", backend.url),
            )
        }
    };
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    for (name, value) in &headers {
        if name != "content-length" && name != "transfer-encoding" && name != "connection" {
            response.headers_mut().insert(name, value.clone());
        }
    }
    if let Ok(value) = HeaderValue::from_str(&backend.url) {
        response.headers_mut().insert(BACKEND_HEADER, value);
    }
    response
}
