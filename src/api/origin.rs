//! Where a request comes from, settled once per request: the broker's own
//! request id (what the audit log and every answer carry), the id the client
//! sent if it sent a plain one (kept beside it, never instead of it), and the
//! client's address, read through `X-Forwarded-For` only when the connection
//! comes from a configured trusted proxy. It also puts every request on
//! `/metrics` (in flight, answered, how long it took).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;
use ipnet::IpNet;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

use super::Problem;
use crate::metrics::{HTTP_IN_FLIGHT, HTTP_REQUESTS, HTTP_REQUEST_SECONDS};

/// Where one HTTP request comes from. `request_id` is the broker's own id,
/// echoed in `x-request-id`, in every problem body and in every audit record,
/// so a user's report can be matched to the logs; the client's own id, if it
/// sent one, is recorded beside it.
#[derive(Debug, Clone)]
pub(super) struct Origin {
    pub request_id: String,
    pub client_request_id: Option<String>,
    pub client_addr: Option<IpAddr>,
}

/// The middleware: settles where the request comes from before anything else
/// runs, and stamps the broker's request id on every answer.
pub(super) async fn request_origin(
    State(proxies): State<Arc<TrustedProxies>>,
    mut request: Request,
    next: Next,
) -> Response {
    let id = Uuid::new_v4().to_string();
    let client_request_id = client_request_id(request.headers());
    let client_addr = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|peer| proxies.client_addr(peer.0.ip(), request.headers()));
    let span = tracing::info_span!("request", request_id = %id, client_request_id = client_request_id.as_deref(),
        method = %request.method(), path = %request.uri().path());
    // A caller's W3C `traceparent` makes this request part of its trace (when
    // traces are exported at all; otherwise the propagator extracts nothing).
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&TraceHeaders(request.headers()))
    });
    let _ = span.set_parent(parent);
    request.extensions_mut().insert(Origin {
        request_id: id.clone(),
        client_request_id,
        client_addr,
    });
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = method_label(request.method());
    let in_flight = InFlight::start();
    let mut response = async move {
        let response = next.run(request).await;
        tracing::info!(status = response.status().as_u16(), "handled");
        response
    }
    .instrument(span)
    .await;
    in_flight.finish(route, method, response.status().as_u16());
    // Problems from anywhere inside (handlers, extractors, timeouts, panics)
    // carry the request id, so a user can quote it to an operator.
    if let Some(problem) = response.extensions_mut().remove::<Problem>() {
        response = problem.with_request_id(&id).render();
    }
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// One request on the in-flight gauge from its start until it is answered or
/// dropped (a client that hangs up mid-request is not left counted).
struct InFlight(Instant);

impl InFlight {
    fn start() -> Self {
        metrics::gauge!(HTTP_IN_FLIGHT).increment(1.0);
        InFlight(Instant::now())
    }

    /// Counts the answer under its route template (never the raw path, which
    /// holds ids and would make a label per request).
    fn finish(self, route: String, method: &'static str, status: u16) {
        metrics::histogram!(HTTP_REQUEST_SECONDS, "route" => route.clone())
            .record(self.0.elapsed().as_secs_f64());
        metrics::counter!(HTTP_REQUESTS, "route" => route, "method" => method,
            "status" => status.to_string())
        .increment(1);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!(HTTP_IN_FLIGHT).decrement(1.0);
    }
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Reads trace context from request headers.
struct TraceHeaders<'a>(&'a HeaderMap);

impl opentelemetry::propagation::Extractor for TraceHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|name| name.as_str()).collect()
    }
}

/// The proxies (load balancers, ingress) whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(networks: Vec<IpNet>) -> Self {
        TrustedProxies(networks)
    }

    fn trusts(&self, address: IpAddr) -> bool {
        self.0.iter().any(|network| network.contains(&address))
    }

    /// The client's address: the peer, unless the peer is a trusted proxy, in
    /// which case the nearest hop in `X-Forwarded-For` that is not itself a
    /// trusted proxy. Hops further left were written by the client and could
    /// say anything; an unparsable hop stops the walk at the last one believed.
    pub fn client_addr(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            match hop.trim().parse::<IpAddr>() {
                Ok(address) => {
                    client = address;
                    if !self.trusts(address) {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        client
    }
}

/// A client's `x-request-id`, if it is short and plain enough to keep: it
/// cannot forge log lines or bloat audit rows.
fn client_request_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(forwarded: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in forwarded {
            headers.append("x-forwarded-for", value.parse().unwrap());
        }
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxies = TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap()]);
        let spoofed = headers(&["6.6.6.6"]);
        // A direct client cannot name another address.
        assert_eq!(
            proxies.client_addr(ip("203.0.113.7"), &spoofed),
            ip("203.0.113.7")
        );
        // Behind the proxy, the hop the proxy saw; what the client wrote to
        // the left of it is ignored.
        let chain = headers(&["6.6.6.6, 198.51.100.4", "10.1.2.3"]);
        assert_eq!(
            proxies.client_addr(ip("10.0.0.1"), &chain),
            ip("198.51.100.4")
        );
        // Garbage stops the walk at the last believed hop.
        let garbage = headers(&["198.51.100.4, not-an-ip"]);
        assert_eq!(
            proxies.client_addr(ip("10.0.0.1"), &garbage),
            ip("10.0.0.1")
        );
        // No proxies configured: always the peer.
        let none = TrustedProxies::default();
        assert_eq!(none.client_addr(ip("10.0.0.1"), &chain), ip("10.0.0.1"));
    }

    #[test]
    fn only_plain_short_client_request_ids_are_kept() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("x-request-id", value.parse().unwrap());
            client_request_id(&headers)
        };
        assert_eq!(
            with("ci-run-42.step_3").as_deref(),
            Some("ci-run-42.step_3")
        );
        assert_eq!(with("a b"), None);
        assert_eq!(with(&"x".repeat(65)), None);
    }
}
