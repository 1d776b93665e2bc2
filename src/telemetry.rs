//! The process's log and trace output: text or JSON lines on stderr, and,
//! when a collector is configured, the same spans exported over OTLP/HTTP.
//!
//! Spans carry ids and names only (request id, issuance id, provider, stage);
//! every instrumented function skips its arguments, so neither a log line nor
//! an exported span can carry a token or a credential. rmcp's debug and trace
//! events hold whole MCP results (credentials among them) and are dropped
//! whatever `STACKPASS_LOG` says.

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogFormat, TelemetryConfig};

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("telemetry.otlp_endpoint: the trace exporter could not be built: {0}")]
    Exporter(String),
    #[error("a log subscriber is already installed")]
    AlreadyInstalled,
}

/// Keeps the trace exporter alive; dropping it flushes the spans still queued
/// (call it outside the async runtime: the exporter's client blocks).
pub struct Telemetry {
    traces: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.traces.take() {
            if let Err(error) = provider.shutdown() {
                eprintln!("warning: not every trace span was exported: {error}");
            }
        }
    }
}

/// Installs the subscriber. `server`: the broker's telemetry settings (the
/// CLI passes `None`: text on stderr, warnings only by default, no traces).
pub fn init(server: Option<&TelemetryConfig>) -> Result<Telemetry, TelemetryError> {
    let default = if server.is_some() { "info" } else { "warn" };
    let filter =
        || EnvFilter::try_from_env("STACKPASS_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let no_rmcp_detail = tracing_subscriber::filter::filter_fn(|meta| {
        !(meta.target().starts_with("rmcp") && *meta.level() > tracing::Level::INFO)
    });
    let format = server.map_or(LogFormat::Text, |t| t.log_format);
    let lines = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .boxed(),
        // Each line names the spans it happened in, outermost first: the
        // request (request_id) and, inside an issuance, its issuance_id.
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_current_span(false)
            .with_span_list(true)
            .boxed(),
    };
    let traces = match server.and_then(|t| t.otlp_endpoint.as_ref().map(|url| (t, url))) {
        Some((settings, endpoint)) => Some(trace_provider(settings, endpoint.as_str())?),
        None => None,
    };
    let trace_layer = traces.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("stackpass"))
            .with_filter(filter())
    });
    if traces.is_some() {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
    }
    tracing_subscriber::registry()
        .with(lines.with_filter(filter()))
        .with(trace_layer)
        .with(no_rmcp_detail)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    Ok(Telemetry { traces })
}

fn trace_provider(
    settings: &TelemetryConfig,
    endpoint: &str,
) -> Result<SdkTracerProvider, TelemetryError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .with_timeout(settings.otlp_timeout)
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
        settings.trace_sample_ratio,
    )));
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(sampler)
        .with_resource(
            Resource::builder()
                .with_service_name(settings.service_name.clone())
                .build(),
        )
        .build())
}
