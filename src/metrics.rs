//! Prometheus metrics: the names, help texts and histogram buckets in one
//! place, the recorder the process installs once, and the text page `/metrics`
//! serves. Counters and histograms are recorded through the `metrics` facade
//! where the thing happens (the broker's events, the audit writer, the
//! identity and catalog caches, the HTTP layer); without an installed recorder
//! (unit tests, CLI commands) every recording is a no-op.
//!
//! Labels are bounded sets: provider kinds, rule names from the policy file,
//! outcomes and reasons from fixed lists, issuer names from the configuration,
//! route templates rather than paths. Never a subject, a stack or a token.

use std::time::Duration;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

pub const ISSUANCES: &str = "stackpass_issuances_total";
pub const DECISIONS: &str = "stackpass_decisions_total";
pub const DENIALS: &str = "stackpass_denials_total";
pub const AUTHENTICATION_FAILURES: &str = "stackpass_authentication_failures_total";
pub const AUDIT_COMMIT_SECONDS: &str = "stackpass_audit_commit_duration_seconds";
pub const AUDIT_COMMIT_APPENDS: &str = "stackpass_audit_commit_appends";
pub const AUDIT_COMMIT_FAILURES: &str = "stackpass_audit_commit_failures_total";
pub const CLOUD_EXCHANGE_SECONDS: &str = "stackpass_cloud_exchange_duration_seconds";
pub const CLOUD_EXCHANGE_ERRORS: &str = "stackpass_cloud_exchange_errors_total";
pub const JWKS_FETCHES: &str = "stackpass_jwks_fetches_total";
pub const JWKS_CACHE_HITS: &str = "stackpass_jwks_cache_hits_total";
pub const CATALOG_FETCHES: &str = "stackpass_catalog_fetches_total";
pub const CATALOG_CACHE_HITS: &str = "stackpass_catalog_cache_hits_total";
pub const HTTP_REQUESTS: &str = "stackpass_http_requests_total";
pub const HTTP_REQUEST_SECONDS: &str = "stackpass_http_request_duration_seconds";
pub const HTTP_IN_FLIGHT: &str = "stackpass_http_requests_in_flight";
pub const POLICY_RELOADS: &str = "stackpass_policy_reloads_total";
pub const KEY_RELOADS: &str = "stackpass_signing_key_reloads_total";
pub const RATE_LIMITED: &str = "stackpass_rate_limited_total";
pub const BUILD_INFO: &str = "stackpass_build_info";

/// Whole requests: most answer in a few milliseconds, an issuance that waits
/// on a slow cloud can take seconds, and the request timeout is 30 s by default.
const REQUEST_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Audit commits: an fsync on a local disk is 0.1-10 ms; a PostgreSQL round trip
/// across a network adds a few; more than a second means the store is in trouble.
const COMMIT_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
];
/// Appends (requests' record sets) that share one commit under group commit.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];
/// Cloud token exchanges: tens to hundreds of milliseconds over the internet.
const CLOUD_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Installs the process-wide recorder (once, when the server starts) and
/// describes every metric, so that `/metrics` lists them with their help
/// text even before the first event.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(HTTP_REQUEST_SECONDS.into()), REQUEST_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(AUDIT_COMMIT_SECONDS.into()), COMMIT_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(AUDIT_COMMIT_APPENDS.into()), BATCH_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(CLOUD_EXCHANGE_SECONDS.into()), CLOUD_BUCKETS)?
        .install_recorder()?;
    describe();
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    // Histograms are kept as buckets, but the exporter still needs its
    // periodic upkeep to drain recorded samples into them.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

fn describe() {
    describe_counter!(
        ISSUANCES,
        "Credential issuances by provider, rule and outcome (issued, federated, failed, abandoned, withheld)"
    );
    describe_counter!(
        DECISIONS,
        "Policy decisions on credential requests by outcome (allowed, denied, approval_required, unknown_stack; dry runs excluded)"
    );
    describe_counter!(
        DENIALS,
        "Refused credential requests by reason (no_rule_matched, deny_rule, agent_bounds, quota, unknown_stack, delegation_revoked, break_glass_refused)"
    );
    describe_counter!(
        AUTHENTICATION_FAILURES,
        "Requests whose bearer token was refused, by reason"
    );
    describe_histogram!(
        AUDIT_COMMIT_SECONDS,
        Unit::Seconds,
        "Time to commit one audit transaction (chain lock, inserts, commit), by store"
    );
    describe_histogram!(
        AUDIT_COMMIT_APPENDS,
        Unit::Count,
        "Appends (one request's records each) committed together in one group commit"
    );
    describe_counter!(
        AUDIT_COMMIT_FAILURES,
        "Audit commits that failed (nothing is issued when they do), by store"
    );
    describe_histogram!(
        CLOUD_EXCHANGE_SECONDS,
        Unit::Seconds,
        "Time the cloud's token exchange took, by provider and result"
    );
    describe_counter!(
        CLOUD_EXCHANGE_ERRORS,
        "Cloud token exchanges that failed, by provider and the cloud's error code (unavailable, invalid_response for no answer or an unusable one)"
    );
    describe_counter!(
        JWKS_FETCHES,
        "Fetches of a trusted issuer's discovery document and keys, by issuer and result"
    );
    describe_counter!(
        JWKS_CACHE_HITS,
        "Token verifications served from the cached keys, by issuer"
    );
    describe_counter!(
        CATALOG_FETCHES,
        "Catalog lookups that went to the catalog, by result"
    );
    describe_counter!(
        CATALOG_CACHE_HITS,
        "Catalog lookups answered from the cache"
    );
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by route template, method and status"
    );
    describe_histogram!(
        HTTP_REQUEST_SECONDS,
        Unit::Seconds,
        "Time to answer an HTTP request, by route template"
    );
    describe_gauge!(HTTP_IN_FLIGHT, "HTTP requests being worked on now");
    describe_counter!(
        POLICY_RELOADS,
        "Policy reloads, by result (applied, rejected: the previous policy stays)"
    );
    describe_counter!(
        KEY_RELOADS,
        "Signing key set reloads, by result (applied, rejected: the loaded keys stay)"
    );
    describe_counter!(
        RATE_LIMITED,
        "Requests refused with 429 by a configured limit, by limit"
    );
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the version label says which build runs"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_strictly_increasing() {
        for buckets in [
            REQUEST_BUCKETS,
            COMMIT_BUCKETS,
            BATCH_BUCKETS,
            CLOUD_BUCKETS,
        ] {
            assert!(buckets.windows(2).all(|pair| pair[0] < pair[1]));
        }
    }
}
