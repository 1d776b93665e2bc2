//! `[metrics]` and `[telemetry]`: what the broker tells its operators about
//! itself — Prometheus metrics, the log format, and OpenTelemetry traces.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve Prometheus metrics at `/metrics`.
    pub enabled: bool,
    /// Serve them on this address only (a separate listener, e.g.
    /// `0.0.0.0:9090`, that a NetworkPolicy opens to the monitoring
    /// namespace alone); unset, the API listener serves `/metrics`.
    pub listen: Option<SocketAddr>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            listen: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event (the default on a terminal).
    #[default]
    Text,
    /// One JSON object per line, with the request's and issuance's ids on
    /// every record, for log pipelines.
    Json,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    pub log_format: LogFormat,
    /// An OpenTelemetry collector's OTLP/HTTP traces endpoint, e.g.
    /// `http://otel-collector:4318/v1/traces`; unset, no traces are exported.
    pub otlp_endpoint: Option<Url>,
    /// How long one export may take before it is dropped.
    #[serde(with = "humantime_serde")]
    pub otlp_timeout: Duration,
    /// The `service.name` resource attribute on exported spans.
    pub service_name: String,
    /// The share of requests traced (0.0-1.0), decided at the root span.
    pub trace_sample_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            log_format: LogFormat::Text,
            otlp_endpoint: None,
            otlp_timeout: Duration::from_secs(5),
            service_name: "stackpass".into(),
            trace_sample_ratio: 1.0,
        }
    }
}
