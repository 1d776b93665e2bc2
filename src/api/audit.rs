//! `GET /v1/audit`: the audit log for auditors (everything) and requesters (their
//! own records), filtered and paginated with an opaque cursor. Each read is
//! audited before its page is sent (see `broker::audit_reads`).

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::Problem;
use crate::audit::{record_json, AuditQuery};
use crate::broker::{Broker, RequestContext};
use crate::identity::Principal;
use crate::wire;

const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct Params {
    /// Records of this requester (an entity ref); a requester who is not an
    /// auditor must name themself.
    requester: Option<String>,
    /// Records of this stack.
    stack: Option<String>,
    /// Records of this provider.
    provider: Option<String>,
    /// Records with this outcome (`issued`, `denied`, …).
    outcome: Option<String>,
    /// RFC 3339; records at or after.
    since: Option<String>,
    /// RFC 3339; records before.
    until: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Records per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// Read the audit log: auditors everything, requesters their own records.
///
/// The read is itself audited before the page is sent.
#[utoipa::path(
    get,
    path = "/v1/audit",
    tag = "audit",
    operation_id = "read_audit",
    params(Params),
    responses((status = 200, description = "A page of records, oldest first, and the cursor of the next",
        body = wire::AuditPage,
        headers(("cache-control" = String, description = "`no-store`")))),
    security(("bearer" = [])),
)]
pub async fn read(
    State(broker): State<Arc<Broker>>,
    context: RequestContext,
    principal: Principal,
    params: Result<Query<Params>, QueryRejection>,
) -> Result<Response, Problem> {
    let Query(params) = params.map_err(|e| Problem::invalid_request(e.body_text()))?;
    let query = parse(params)?;
    let page = broker.read_audit(&context, &principal, &query).await?;
    let body = wire::AuditPage {
        records: page.records.iter().map(record_json).collect(),
        next_cursor: page.next_after_seq.map(encode_cursor),
    };
    let mut response = Json(body).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

fn parse(params: Params) -> Result<AuditQuery, Problem> {
    let time = |name: &str, value: Option<String>| -> Result<Option<OffsetDateTime>, Problem> {
        value
            .map(|v| {
                OffsetDateTime::parse(&v, &Rfc3339).map_err(|_| {
                    Problem::invalid_request(format!(
                        "{name} must be an RFC 3339 time, e.g. 2026-11-23T08:00:00Z"
                    ))
                })
            })
            .transpose()
    };
    let limit = params.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(Problem::invalid_request(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    Ok(AuditQuery {
        requester: params.requester,
        stack: params.stack,
        provider: params.provider,
        outcome: params.outcome,
        since: time("since", params.since)?,
        until: time("until", params.until)?,
        after_seq: params.cursor.as_deref().map(decode_cursor).transpose()?,
        limit,
    })
}

/// Cursors are opaque to clients so the pagination scheme can change.
fn encode_cursor(after_seq: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("after:{after_seq}"))
}

fn decode_cursor(cursor: &str) -> Result<i64, Problem> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| text.strip_prefix("after:")?.parse().ok())
        .ok_or_else(|| {
            Problem::invalid_request(
                "cursor is not one this broker issued; use next_cursor from the previous page",
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        assert_eq!(decode_cursor(&encode_cursor(42)).unwrap(), 42);
        assert!(decode_cursor("not-a-cursor").is_err());
        assert!(decode_cursor(&URL_SAFE_NO_PAD.encode("after:x")).is_err());
    }
}
