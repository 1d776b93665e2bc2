//! Where access requests live: tables `access_requests` and `approvals` in the
//! shared database, next to the audit log. Strings exist only in the rows;
//! every row is parsed back into a typed [`AccessRequest`], and a row that does
//! not parse is an error, never a guess.

use std::time::Duration;

use sqlx::Row;
use stackpass_provider::ProviderKind;
use time::OffsetDateTime;

use super::{AccessRequest, AccessRequestId, AccessState};
use crate::catalog::EntityRef;
use crate::database::{format_timestamp, on_db, parse_timestamp, Database};
use crate::stacks::StackRef;

#[derive(Debug, Clone, thiserror::Error)]
#[error("the access request store failed: {0}")]
pub struct StoreError(pub String);

/// What a state change records besides the new state.
#[derive(Debug, Clone, Copy, Default)]
pub struct Transition<'a> {
    pub decided_by: Option<&'a EntityRef>,
    pub window_ends_at: Option<OffsetDateTime>,
    pub note: Option<&'a str>,
}

/// Access requests and their approvals.
#[async_trait::async_trait]
pub trait ApprovalStore: Send + Sync {
    async fn create(&self, request: &AccessRequest) -> Result<(), StoreError>;
    async fn get(&self, id: AccessRequestId) -> Result<Option<AccessRequest>, StoreError>;
    /// The newest request in `state` for this requester, stack, provider and rule.
    async fn find(
        &self,
        requester: &EntityRef,
        stack: &StackRef,
        provider: &ProviderKind,
        rule: &str,
        state: AccessState,
    ) -> Result<Option<AccessRequest>, StoreError>;
    /// Pending requests that have not expired, and `requester`'s own.
    async fn list_visible(
        &self,
        requester: &EntityRef,
        now: OffsetDateTime,
    ) -> Result<Vec<AccessRequest>, StoreError>;
    /// Records an approval; false if this approver had already approved.
    async fn add_approval(
        &self,
        id: AccessRequestId,
        approver: &EntityRef,
        at: OffsetDateTime,
    ) -> Result<bool, StoreError>;
    /// Moves a request from `from` to `to` (compare-and-set); false if it was no
    /// longer in `from` (someone else decided first).
    async fn transition(
        &self,
        id: AccessRequestId,
        from: AccessState,
        to: AccessState,
        transition: Transition<'_>,
    ) -> Result<bool, StoreError>;
}

const COLUMNS: &str =
    "id, created_at, expires_at, requester, stack, provider, rule, role, duration_seconds, \
     reason, required_approvals, state, decided_at, decided_by, window_ends_at, note";

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
    async fn create(&self, r: &AccessRequest) -> Result<(), StoreError> {
        on_db!(&self.db, pool => {
            sqlx::query(&format!(
                "INSERT INTO access_requests ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
            ))
            .bind(r.id.to_string())
            .bind(format_timestamp(r.created_at))
            .bind(format_timestamp(r.expires_at))
            .bind(r.requester.to_string())
            .bind(r.stack.to_string())
            .bind(r.provider.as_str())
            .bind(&r.rule)
            .bind(&r.role)
            .bind(r.duration.as_secs() as i64)
            .bind(&r.reason)
            .bind(i64::from(r.required_approvals))
            .bind(r.state.as_str())
            .bind(r.decided_at.map(format_timestamp))
            .bind(r.decided_by.as_ref().map(ToString::to_string))
            .bind(r.window_ends_at.map(format_timestamp))
            .bind(&r.note)
            .execute(pool)
            .await
            .map_err(store_error)?;
        });
        Ok(())
    }

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
    ) -> Result<Option<AccessRequest>, StoreError> {
        let found = self
            .select(
                &format!(
                    "SELECT {COLUMNS} FROM access_requests WHERE requester = $1 AND stack = $2 AND provider = $3 \
                     AND rule = $4 AND state = $5 ORDER BY created_at DESC LIMIT 1"
                ),
                &[
                    &requester.to_string(),
                    &stack.to_string(),
                    provider.as_str(),
                    rule,
                    state.as_str(),
                ],
            )
            .await?;
        Ok(found.into_iter().next())
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

    async fn add_approval(
        &self,
        id: AccessRequestId,
        approver: &EntityRef,
        at: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let inserted = on_db!(&self.db, pool => {
            sqlx::query("INSERT INTO approvals (request_id, approver, approved_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                .bind(id.to_string())
                .bind(approver.to_string())
                .bind(format_timestamp(at))
                .execute(pool)
                .await
                .map_err(store_error)?
                .rows_affected()
        });
        Ok(inserted == 1)
    }

    async fn transition(
        &self,
        id: AccessRequestId,
        from: AccessState,
        to: AccessState,
        transition: Transition<'_>,
    ) -> Result<bool, StoreError> {
        let now = format_timestamp(OffsetDateTime::now_utc());
        let updated = on_db!(&self.db, pool => {
            sqlx::query(
                "UPDATE access_requests SET state = $1, decided_at = $2, decided_by = COALESCE($3, decided_by), \
                 window_ends_at = COALESCE($4, window_ends_at), note = COALESCE($5, note) WHERE id = $6 AND state = $7",
            )
            .bind(to.as_str())
            .bind(&now)
            .bind(transition.decided_by.map(ToString::to_string))
            .bind(transition.window_ends_at.map(format_timestamp))
            .bind(transition.note)
            .bind(id.to_string())
            .bind(from.as_str())
            .execute(pool)
            .await
            .map_err(store_error)?
            .rows_affected()
        });
        Ok(updated == 1)
    }
}
