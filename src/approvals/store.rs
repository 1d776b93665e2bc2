//! Where access requests live: tables `access_requests` and `approvals` in the
//! shared database, next to the audit log. Strings exist only in the rows;
//! every row is parsed back into a typed [`AccessRequest`], and a row that does
//! not parse is an error, never a guess.
//!
//! Reads happen here; writes do not. Every change is built here as a
//! [`Guarded`] statement ([`insert`], [`change`]) and committed by the audit
//! store together with the audit record that describes it, so no request
//! changes state without its record, and every change is a compare-and-set on
//! the request's `version`.

use std::time::Duration;

use sqlx::Row;
use stackpass_provider::{Mode, ProviderKind};
use time::OffsetDateTime;

use super::{AccessRequest, AccessRequestId, AccessState, Binding};
use crate::audit::{Bind, Guarded, Statement};
use crate::catalog::EntityRef;
use crate::database::{format_timestamp, on_db, parse_timestamp, Database};
use crate::stacks::StackRef;

#[derive(Debug, Clone, thiserror::Error)]
#[error("the access request store failed: {0}")]
pub struct StoreError(pub String);

/// What a state change records besides the new state.
#[derive(Debug, Clone, Copy, Default)]
pub struct Transition<'a> {
    pub decided_at: Option<OffsetDateTime>,
    pub decided_by: Option<&'a EntityRef>,
    pub window_ends_at: Option<OffsetDateTime>,
    pub note: Option<&'a str>,
    pub used_at: Option<OffsetDateTime>,
    /// An approval to add, by this approver at this time.
    pub approval: Option<(&'a EntityRef, OffsetDateTime)>,
}

/// Access requests and their approvals, for reading.
#[async_trait::async_trait]
pub trait ApprovalStore: Send + Sync {
    async fn get(&self, id: AccessRequestId) -> Result<Option<AccessRequest>, StoreError>;
    /// The requests in `state` for this requester, stack, provider and rule,
    /// newest first (at most 20).
    async fn find(
        &self,
        requester: &EntityRef,
        stack: &StackRef,
        provider: &ProviderKind,
        rule: &str,
        state: AccessState,
    ) -> Result<Vec<AccessRequest>, StoreError>;
    /// Pending requests that have not expired, and `requester`'s own.
    async fn list_visible(
        &self,
        requester: &EntityRef,
        now: OffsetDateTime,
    ) -> Result<Vec<AccessRequest>, StoreError>;
}

fn text(value: impl Into<String>) -> Bind {
    Bind::Text(Some(value.into()))
}

fn optional(value: Option<String>) -> Bind {
    Bind::Text(value)
}

/// Stores a new request (its check: the row was inserted).
pub fn insert(r: &AccessRequest) -> Guarded {
    let binding = r.binding.as_ref();
    let check = Statement::new(
        format!(
            "INSERT INTO access_requests ({COLUMNS}) VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21)"
        ),
        vec![
            text(r.id.to_string()),
            text(format_timestamp(r.created_at)),
            text(format_timestamp(r.expires_at)),
            text(r.requester.to_string()),
            text(r.stack.to_string()),
            text(r.provider.as_str()),
            text(r.rule.clone()),
            text(r.role.clone()),
            Bind::Int(r.duration.as_secs() as i64),
            optional(r.reason.clone()),
            Bind::Int(i64::from(r.required_approvals)),
            text(r.state.as_str()),
            optional(r.decided_at.map(format_timestamp)),
            optional(r.decided_by.as_ref().map(ToString::to_string)),
            optional(r.window_ends_at.map(format_timestamp)),
            optional(r.note.clone()),
            optional(binding.map(|b| b.mode.as_str().to_owned())),
            optional(binding.map(|b| b.facts.clone())),
            optional(binding.map(|b| b.digest.clone())),
            Bind::Int(r.version),
            optional(r.used_at.map(format_timestamp)),
        ],
    );
    Guarded {
        check,
        then: Vec::new(),
    }
}

/// Moves `from` (as read, at its version) to state `to`: a compare-and-set
/// that fails if anyone changed the request since it was read.
pub fn change(from: &AccessRequest, to: AccessState, t: Transition<'_>) -> Guarded {
    let check = Statement::new(
        "UPDATE access_requests SET version = version + 1, state = $1, \
         decided_at = COALESCE($2, decided_at), decided_by = COALESCE($3, decided_by), \
         window_ends_at = COALESCE($4, window_ends_at), note = COALESCE($5, note), \
         used_at = COALESCE($6, used_at) WHERE id = $7 AND version = $8",
        vec![
            text(to.as_str()),
            optional(t.decided_at.map(format_timestamp)),
            optional(t.decided_by.map(ToString::to_string)),
            optional(t.window_ends_at.map(format_timestamp)),
            optional(t.note.map(str::to_owned)),
            optional(t.used_at.map(format_timestamp)),
            text(from.id.to_string()),
            Bind::Int(from.version),
        ],
    );
    let then = t
        .approval
        .map(|(approver, at)| {
            Statement::new(
                "INSERT INTO approvals (request_id, approver, approved_at) VALUES ($1, $2, $3)",
                vec![
                    text(from.id.to_string()),
                    text(approver.to_string()),
                    text(format_timestamp(at)),
                ],
            )
        })
        .into_iter()
        .collect();
    Guarded { check, then }
}

const COLUMNS: &str =
    "id, created_at, expires_at, requester, stack, provider, rule, role, duration_seconds, \
     reason, required_approvals, state, decided_at, decided_by, window_ends_at, note, \
     mode, grant_facts, grant_digest, version, used_at";

fn store_error(e: sqlx::Error) -> StoreError {
    StoreError(e.to_string())
}

/// A row's text columns, before they are parsed.
struct RawRequest {
    id: String,
    created_at: String,
    expires_at: String,
    requester: String,
    stack: String,
    provider: String,
    rule: String,
    role: String,
    duration_seconds: i64,
    reason: Option<String>,
    required_approvals: i64,
    state: String,
    decided_at: Option<String>,
    decided_by: Option<String>,
    window_ends_at: Option<String>,
    note: Option<String>,
    mode: Option<String>,
    grant_facts: Option<String>,
    grant_digest: Option<String>,
    version: i64,
    used_at: Option<String>,
}

macro_rules! raw_request_from_row {
    ($row:expr) => {{
        let row = $row;
        RawRequest {
            id: row.try_get("id").map_err(store_error)?,
            created_at: row.try_get("created_at").map_err(store_error)?,
            expires_at: row.try_get("expires_at").map_err(store_error)?,
            requester: row.try_get("requester").map_err(store_error)?,
            stack: row.try_get("stack").map_err(store_error)?,
            provider: row.try_get("provider").map_err(store_error)?,
            rule: row.try_get("rule").map_err(store_error)?,
            role: row.try_get("role").map_err(store_error)?,
            duration_seconds: row.try_get("duration_seconds").map_err(store_error)?,
            reason: row.try_get("reason").map_err(store_error)?,
            required_approvals: row.try_get("required_approvals").map_err(store_error)?,
            state: row.try_get("state").map_err(store_error)?,
            decided_at: row.try_get("decided_at").map_err(store_error)?,
            decided_by: row.try_get("decided_by").map_err(store_error)?,
            window_ends_at: row.try_get("window_ends_at").map_err(store_error)?,
            note: row.try_get("note").map_err(store_error)?,
            mode: row.try_get("mode").map_err(store_error)?,
            grant_facts: row.try_get("grant_facts").map_err(store_error)?,
            grant_digest: row.try_get("grant_digest").map_err(store_error)?,
            version: row.try_get("version").map_err(store_error)?,
            used_at: row.try_get("used_at").map_err(store_error)?,
        }
    }};
}

impl RawRequest {
    fn parse(self, approvers: Vec<String>) -> Result<AccessRequest, StoreError> {
        let id = self.id.clone();
        let bad = |column: &str| {
            StoreError(format!(
                "access request {id} has an unreadable {column}; the row was changed outside stackpass"
            ))
        };
        let time = |text: &str, column: &str| parse_timestamp(text).ok_or_else(|| bad(column));
        let entity =
            |text: &str, column: &str| EntityRef::parse_strict(text).map_err(|_| bad(column));
        Ok(AccessRequest {
            id: AccessRequestId::parse(&self.id).ok_or_else(|| bad("id"))?,
            created_at: time(&self.created_at, "created_at")?,
            expires_at: time(&self.expires_at, "expires_at")?,
            requester: entity(&self.requester, "requester")?,
            stack: StackRef::parse(&self.stack).map_err(|_| bad("stack"))?,
            provider: ProviderKind::parse(&self.provider).map_err(|_| bad("provider"))?,
            rule: self.rule,
            role: self.role,
            duration: u64::try_from(self.duration_seconds)
                .map(Duration::from_secs)
                .map_err(|_| bad("duration_seconds"))?,
            reason: self.reason,
            required_approvals: u32::try_from(self.required_approvals)
                .map_err(|_| bad("required_approvals"))?,
            state: AccessState::parse(&self.state).ok_or_else(|| bad("state"))?,
            decided_at: self
                .decided_at
                .map(|t| time(&t, "decided_at"))
                .transpose()?,
            decided_by: self
                .decided_by
                .map(|e| entity(&e, "decided_by"))
                .transpose()?,
            window_ends_at: self
                .window_ends_at
                .map(|t| time(&t, "window_ends_at"))
                .transpose()?,
            note: self.note,
            binding: match (self.mode, self.grant_facts, self.grant_digest) {
                (Some(mode), Some(facts), Some(digest)) => Some(Binding {
                    mode: Mode::parse(&mode).ok_or_else(|| bad("mode"))?,
                    facts,
                    digest,
                }),
                (None, None, None) => None,
                _ => return Err(bad("grant binding")),
            },
            version: self.version,
            used_at: self.used_at.map(|t| time(&t, "used_at")).transpose()?,
            approvers: approvers
                .iter()
                .map(|a| entity(a, "approver"))
                .collect::<Result<_, _>>()?,
        })
    }
}

/// The SQL store, over the shared database handle.
pub struct SqlApprovalStore {
    db: Database,
}

impl SqlApprovalStore {
    pub fn new(db: Database) -> Self {
        SqlApprovalStore { db }
    }

    async fn approvers_of(&self, id: &str) -> Result<Vec<String>, StoreError> {
        Ok(on_db!(&self.db, pool => {
            sqlx::query_scalar("SELECT approver FROM approvals WHERE request_id = $1 ORDER BY approved_at")
                .bind(id)
                .fetch_all(pool)
                .await
                .map_err(store_error)?
        }))
    }

    async fn select(&self, sql: &str, binds: &[&str]) -> Result<Vec<AccessRequest>, StoreError> {
        let raw = on_db!(&self.db, pool => {
            let mut query = sqlx::query(sql);
            for value in binds {
                query = query.bind(*value);
            }
            let rows = query.fetch_all(pool).await.map_err(store_error)?;
            let mut raw = Vec::with_capacity(rows.len());
            for row in &rows {
                raw.push(raw_request_from_row!(row));
            }
            raw
        });
        let mut requests = Vec::with_capacity(raw.len());
        for row in raw {
            let approvers = self.approvers_of(&row.id).await?;
            requests.push(row.parse(approvers)?);
        }
        Ok(requests)
    }
}

#[async_trait::async_trait]
impl ApprovalStore for SqlApprovalStore {
    async fn get(&self, id: AccessRequestId) -> Result<Option<AccessRequest>, StoreError> {
        let found = self
            .select(
                &format!("SELECT {COLUMNS} FROM access_requests WHERE id = $1"),
                &[&id.to_string()],
            )
            .await?;
        Ok(found.into_iter().next())
    }

    async fn find(
        &self,
        requester: &EntityRef,
        stack: &StackRef,
        provider: &ProviderKind,
        rule: &str,
        state: AccessState,
    ) -> Result<Vec<AccessRequest>, StoreError> {
        self.select(
                &format!(
                    "SELECT {COLUMNS} FROM access_requests WHERE requester = $1 AND stack = $2 AND provider = $3 \
                     AND rule = $4 AND state = $5 ORDER BY created_at DESC LIMIT 20"
                ),
                &[
                    &requester.to_string(),
                    &stack.to_string(),
                    provider.as_str(),
                    rule,
                    state.as_str(),
                ],
            )
            .await
    }

    async fn list_visible(
        &self,
        requester: &EntityRef,
        now: OffsetDateTime,
    ) -> Result<Vec<AccessRequest>, StoreError> {
        self.select(
            &format!(
                "SELECT {COLUMNS} FROM access_requests WHERE (state = 'pending' AND expires_at > $1) OR requester = $2 \
                 ORDER BY created_at DESC LIMIT 200"
            ),
            &[&format_timestamp(now), &requester.to_string()],
        )
        .await
    }
}
