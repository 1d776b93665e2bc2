//! [`OtlpCollector`]: an OpenTelemetry collector's OTLP/HTTP traces receiver
//! (`POST /v1/traces`, `application/x-protobuf`, an `ExportTraceServiceRequest`
//! as the OTLP specification defines it), decoding what it gets with
//! OpenTelemetry's own protobuf types and keeping the raw bodies too, so a test
//! can look for what must never be exported.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{header, HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;

use super::process::spawn_router;

/// One exported span, as the collector decoded it.
#[derive(Debug, Clone)]
pub struct ExportedSpan {
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    /// String attributes (tracing fields) by key.
    pub attributes: Vec<(String, String)>,
    /// The resource's `service.name`.
    pub service: String,
}

impl ExportedSpan {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct Received {
    spans: Vec<ExportedSpan>,
    bodies: Vec<Vec<u8>>,
}

pub struct OtlpCollector {
    /// The traces endpoint, for `telemetry.otlp_endpoint`.
    pub traces_url: String,
    received: Arc<Mutex<Received>>,
}

impl OtlpCollector {
    pub async fn start() -> OtlpCollector {
        let received = Arc::new(Mutex::new(Received::default()));
        let sink = received.clone();
        let router = Router::new().route(
            "/v1/traces",
            post(move |headers: HeaderMap, body: Bytes| {
                let sink = sink.clone();
                async move { receive(&sink, &headers, &body) }
            }),
        );
        let url = spawn_router(router).await;
        OtlpCollector {
            traces_url: format!("{url}/v1/traces"),
            received,
        }
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ExportedSpan> {
        self.received.lock().unwrap().spans.clone()
    }

    /// Whether any exported body holds `needle` anywhere, in any field.
    pub fn bodies_contain(&self, needle: &str) -> bool {
        let received = self.received.lock().unwrap();
        received.bodies.iter().any(|body| {
            body.windows(needle.len())
                .any(|window| window == needle.as_bytes())
        })
    }

    /// Waits until spans named all of `names` have arrived (exports are batched).
    pub async fn wait_for(&self, names: &[&str], within: Duration) -> Vec<ExportedSpan> {
        let deadline = Instant::now() + within;
        loop {
            let spans = self.spans();
            if names
                .iter()
                .all(|name| spans.iter().any(|span| span.name == *name))
                || Instant::now() > deadline
            {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn receive(
    sink: &Mutex<Received>,
    headers: &HeaderMap,
    body: &[u8],
) -> (StatusCode, [(header::HeaderName, &'static str); 1], Vec<u8>) {
    let protobuf = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == b"application/x-protobuf");
    let request = match ExportTraceServiceRequest::decode(body) {
        Ok(request) if protobuf => request,
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                [(header::CONTENT_TYPE, "text/plain")],
                b"expected an ExportTraceServiceRequest as application/x-protobuf".to_vec(),
            )
        }
    };
    let mut received = sink.lock().unwrap();
    received.bodies.push(body.to_vec());
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|resource| resource.attributes.iter())
            .find(|kv| kv.key == "service.name")
            .map(|kv| any_value_text(kv.value.as_ref()))
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                received.spans.push(ExportedSpan {
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), any_value_text(kv.value.as_ref())))
                        .collect(),
                    service: service.clone(),
                });
            }
        }
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
}

fn any_value_text(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    match value.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(text)) => text.clone(),
        Some(Value::IntValue(number)) => number.to_string(),
        Some(Value::BoolValue(flag)) => flag.to_string(),
        Some(Value::DoubleValue(number)) => number.to_string(),
        _ => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
