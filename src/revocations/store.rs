//! Where revocations live: table `revocations` (migration 0007) in the shared
//! database, beside the audit log. Every change is built here as a
//! [`Guarded`] statement ([`insert`], [`restore`]) and committed by the audit
//! store with the audit record that describes it; reads are one indexed
//! SELECT, so every broker on the database sees a revocation on its next
//! request, with no cache in between.
//!
//! [`RevocationStore::outstanding`] reads committed `issuance_outcome`/`issued`
//! audit records: the credentials already handed to an agent that have not
//! expired.

use sqlx::Row;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{covers, Revocation, Scope};
use crate::audit::{Bind, Guarded, Statement};
use crate::catalog::EntityRef;
use crate::database::{format_timestamp, on_db, parse_timestamp, Database};
use crate::policy::ValuePattern;

#[derive(Debug, Clone, thiserror::Error)]
#[error("the revocation store failed: {0}")]
pub struct StoreError(pub String);

/// A credential issued to an agent that has not expired: stackpass cannot
/// recall it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outstanding {
    pub issuance_id: Option<String>,
    pub person: String,
    pub agent: String,
    pub stack: Option<String>,
    pub provider: Option<String>,
    pub role: Option<String>,
    /// The non-secret id (the AWS access key id, the subject token's id, …).
    pub credential_id: Option<String>,
    pub expires_at: OffsetDateTime,
}

#[async_trait::async_trait]
pub trait RevocationStore: Send + Sync {
    /// The oldest active revocation that stops `actor` acting for `person`.
    async fn active_for(
        &self,
        person: &EntityRef,
        actor: &str,
    ) -> Result<Option<Revocation>, StoreError>;
    /// The active revocation with exactly this scope and agent, if any.
    async fn active(&self, scope: &Scope, agent: &str) -> Result<Option<Revocation>, StoreError>;
    /// `person`'s revocations and every agent-wide one, newest first (at most 200).
    async fn list_for(&self, person: &EntityRef) -> Result<Vec<Revocation>, StoreError>;
    /// Credentials issued to agents matching `agent` (for `person`, or for
    /// anyone) that expire after `now`, soonest first.
    async fn outstanding(
        &self,
        person: Option<&EntityRef>,
        agent: &str,
        now: OffsetDateTime,
    ) -> Result<Vec<Outstanding>, StoreError>;
}

fn text(value: impl Into<String>) -> Bind {
    Bind::Text(Some(value.into()))
}

const COLUMNS: &str =
    "id, person, agent, is_pattern, reason, revoked_by, revoked_at, restored_at, restored_by";

/// Stores a new revocation; its check (one row inserted) fails if the same
/// scope and agent are revoked already. All guarded changes run under the
/// audit chain lock, so two brokers revoking at once insert one row.
pub fn insert(r: &Revocation) -> Guarded {
    let person = r.scope.person().map(ToString::to_string);
    let check = Statement::new(
        format!(
            "INSERT INTO revocations ({COLUMNS}) SELECT $1, $2, $3, $4, $5, $6, $7, NULL, NULL \
             WHERE NOT EXISTS (SELECT 1 FROM revocations WHERE agent = $8 \
             AND COALESCE(person, '') = $9 AND restored_at IS NULL)"
        ),
        vec![
            text(r.id.to_string()),
            Bind::Text(person.clone()),
            text(r.agent.clone()),
            Bind::Int(i64::from(r.is_pattern())),
            Bind::Text(r.reason.clone()),
            text(r.revoked_by.to_string()),
            text(format_timestamp(r.revoked_at)),
            text(r.agent.clone()),
            text(person.unwrap_or_default()),
        ],
    );
    Guarded {
        check,
        then: Vec::new(),
    }
}

/// Lifts `r`: fails (no row changed) if it was restored already.
pub fn restore(r: &Revocation, by: &EntityRef, at: OffsetDateTime) -> Guarded {
    let check = Statement::new(
        "UPDATE revocations SET restored_at = $1, restored_by = $2 \
         WHERE id = $3 AND restored_at IS NULL",
        vec![
            text(format_timestamp(at)),
            text(by.to_string()),
            text(r.id.to_string()),
        ],
    );
    Guarded {
        check,
        then: Vec::new(),
    }
}

fn store_error(e: sqlx::Error) -> StoreError {
    StoreError(e.to_string())
}

struct RawRevocation {
    id: String,
    person: Option<String>,
    agent: String,
    reason: Option<String>,
    revoked_by: String,
    revoked_at: String,
    restored_at: Option<String>,
    restored_by: Option<String>,
}

impl RawRevocation {
    fn parse(self) -> Result<Revocation, StoreError> {
        let id = self.id.clone();
        let bad = |column: &str| {
            StoreError(format!(
                "revocation {id} has an unreadable {column}; the row was changed outside stackpass"
            ))
        };
        let entity = |t: &str, c: &str| EntityRef::parse_strict(t).map_err(|_| bad(c));
        let time = |t: &str, c: &str| parse_timestamp(t).ok_or_else(|| bad(c));
        Ok(Revocation {
            id: Uuid::parse_str(&self.id).map_err(|_| bad("id"))?,
            scope: match &self.person {
                Some(person) => Scope::Delegation(entity(person, "person")?),
                None => Scope::Agent,
            },
            agent: self.agent,
            reason: self.reason,
            revoked_by: entity(&self.revoked_by, "revoked_by")?,
            revoked_at: time(&self.revoked_at, "revoked_at")?,
            restored_at: self
                .restored_at
                .map(|t| time(&t, "restored_at"))
                .transpose()?,
            restored_by: self
                .restored_by
                .map(|e| entity(&e, "restored_by"))
                .transpose()?,
        })
    }
}

pub struct SqlRevocationStore {
    db: Database,
}

impl SqlRevocationStore {
    pub fn new(db: Database) -> Self {
        SqlRevocationStore { db }
    }

    async fn select(&self, sql: &str, binds: &[&str]) -> Result<Vec<Revocation>, StoreError> {
        let raw = on_db!(&self.db, pool => {
            let mut query = sqlx::query(sql);
            for value in binds {
                query = query.bind(*value);
            }
            let rows = query.fetch_all(pool).await.map_err(store_error)?;
            let mut raw = Vec::with_capacity(rows.len());
            for row in &rows {
                raw.push(RawRevocation {
                    id: row.try_get("id").map_err(store_error)?,
                    person: row.try_get("person").map_err(store_error)?,
                    agent: row.try_get("agent").map_err(store_error)?,
                    reason: row.try_get("reason").map_err(store_error)?,
                    revoked_by: row.try_get("revoked_by").map_err(store_error)?,
                    revoked_at: row.try_get("revoked_at").map_err(store_error)?,
                    restored_at: row.try_get("restored_at").map_err(store_error)?,
                    restored_by: row.try_get("restored_by").map_err(store_error)?,
                });
            }
            raw
        });
        raw.into_iter().map(RawRevocation::parse).collect()
    }
}

#[async_trait::async_trait]
impl RevocationStore for SqlRevocationStore {
    async fn active_for(
        &self,
        person: &EntityRef,
        actor: &str,
    ) -> Result<Option<Revocation>, StoreError> {
        // Exact agents by index; patterns (few: people revoke by name) are
        // read and matched here.
        let candidates = self
            .select(
                &format!(
                    "SELECT {COLUMNS} FROM revocations WHERE restored_at IS NULL \
                     AND (agent = $1 OR is_pattern = 1) AND (person IS NULL OR person = $2) \
                     ORDER BY revoked_at"
                ),
                &[actor, &person.to_string()],
            )
            .await?;
        Ok(candidates.into_iter().find(|r| covers(r, person, actor)))
    }

    async fn active(&self, scope: &Scope, agent: &str) -> Result<Option<Revocation>, StoreError> {
        let person = scope.person().map(ToString::to_string).unwrap_or_default();
        let found = self
            .select(
                &format!(
                    "SELECT {COLUMNS} FROM revocations WHERE agent = $1 \
                     AND COALESCE(person, '') = $2 AND restored_at IS NULL"
                ),
                &[agent, &person],
            )
            .await?;
        Ok(found.into_iter().next())
    }

    async fn list_for(&self, person: &EntityRef) -> Result<Vec<Revocation>, StoreError> {
        self.select(
            &format!(
                "SELECT {COLUMNS} FROM revocations WHERE person = $1 OR person IS NULL \
                 ORDER BY revoked_at DESC LIMIT 200"
            ),
            &[&person.to_string()],
        )
        .await
    }

    async fn outstanding(
        &self,
        person: Option<&EntityRef>,
        agent: &str,
        now: OffsetDateTime,
    ) -> Result<Vec<Outstanding>, StoreError> {
        let pattern = ValuePattern::new(agent);
        let mut sql = String::from(
            "SELECT issuance_id, requester, actor, stack, provider, role, credential_id, expires_at \
             FROM audit_records WHERE event = 'issuance_outcome' AND outcome = 'issued' \
             AND actor IS NOT NULL AND expires_at > $1",
        );
        let mut binds = vec![format_timestamp(now)];
        if let Some(person) = person {
            binds.push(person.to_string());
            sql.push_str(&format!(" AND requester = ${}", binds.len()));
        }
        if !pattern.is_glob() {
            binds.push(agent.to_owned());
            sql.push_str(&format!(" AND actor = ${}", binds.len()));
        }
        sql.push_str(" ORDER BY expires_at LIMIT 1000");
        type Row = (
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let rows: Vec<Row> = on_db!(&self.db, pool => {
            let mut query = sqlx::query(&sql);
            for value in &binds {
                query = query.bind(value.as_str());
            }
            let rows = query.fetch_all(pool).await.map_err(store_error)?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                out.push((
                    row.try_get(0).map_err(store_error)?,
                    row.try_get(1).map_err(store_error)?,
                    row.try_get(2).map_err(store_error)?,
                    row.try_get(3).map_err(store_error)?,
                    row.try_get(4).map_err(store_error)?,
                    row.try_get(5).map_err(store_error)?,
                    row.try_get(6).map_err(store_error)?,
                    row.try_get(7).map_err(store_error)?,
                ));
            }
            out
        });
        let mut outstanding = Vec::new();
        for (issuance_id, requester, actor, stack, provider, role, credential_id, expires_at) in
            rows
        {
            let (Some(person), Some(agent), Some(expires_at)) = (requester, actor, expires_at)
            else {
                continue;
            };
            if !pattern.matches(&agent) {
                continue;
            }
            let Some(expires_at) = parse_timestamp(&expires_at) else {
                return Err(StoreError(format!(
                    "an issued record of {person} has an unreadable expires_at"
                )));
            };
            outstanding.push(Outstanding {
                issuance_id,
                person,
                agent,
                stack,
                provider,
                role,
                credential_id,
                expires_at,
            });
        }
        Ok(outstanding)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::audit::{AuditEvent, AuditRecord, AuditStore, Outcome, SqlAuditStore};

    fn entity(s: &str) -> EntityRef {
        EntityRef::parse_strict(s).unwrap()
    }

    async fn open() -> (tempfile::TempDir, Database) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("audit.db").display());
        let db = Database::open(&url, Duration::from_secs(5)).await.unwrap();
        (dir, db)
    }

    #[tokio::test]
    async fn revoke_is_idempotent_restore_lifts_and_patterns_match() {
        let (_dir, db) = open().await;
        let audit: Arc<dyn AuditStore> = Arc::new(SqlAuditStore::new(db.clone()));
        let store = SqlRevocationStore::new(db);
        let jane = entity("user:default/jane");
        let now = OffsetDateTime::now_utc();
        let first = Revocation::new(
            Scope::Delegation(jane.clone()),
            "agent:deploy-bot",
            None,
            &jane,
            now,
        );
        let record = || AuditRecord::new(AuditEvent::Revocation, Outcome::Revoked, "r");
        assert!(audit
            .append_guarded(insert(&first), vec![record()])
            .await
            .unwrap());
        // The same scope and agent again: nothing inserted, nothing recorded.
        let again = Revocation::new(
            Scope::Delegation(jane.clone()),
            "agent:deploy-bot",
            None,
            &jane,
            now,
        );
        assert!(!audit
            .append_guarded(insert(&again), vec![record()])
            .await
            .unwrap());
        let found = store.active_for(&jane, "agent:deploy-bot").await.unwrap();
        assert_eq!(found.as_ref().map(|r| r.id), Some(first.id));
        assert!(store
            .active_for(&entity("user:default/alex"), "agent:deploy-bot")
            .await
            .unwrap()
            .is_none());
        assert!(store
            .active_for(&jane, "agent:other")
            .await
            .unwrap()
            .is_none());

        // An agent-wide pattern covers everyone.
        let admin = entity("user:default/sam");
        let wide = Revocation::new(Scope::Agent, "component:agents/*", None, &admin, now);
        assert!(audit
            .append_guarded(insert(&wide), vec![record()])
            .await
            .unwrap());
        let alex = entity("user:default/alex");
        let hit = store
            .active_for(&alex, "component:agents/deploy-bot")
            .await
            .unwrap();
        assert_eq!(hit.map(|r| r.id), Some(wide.id));
        assert_eq!(store.list_for(&alex).await.unwrap().len(), 1);
        assert_eq!(store.list_for(&jane).await.unwrap().len(), 2);

        // Restored once; a second restore changes nothing.
        assert!(audit
            .append_guarded(restore(&first, &jane, now), vec![record()])
            .await
            .unwrap());
        assert!(!audit
            .append_guarded(restore(&first, &jane, now), vec![record()])
            .await
            .unwrap());
        assert!(store
            .active_for(&jane, "agent:deploy-bot")
            .await
            .unwrap()
            .is_none());
        assert!(store
            .active(&Scope::Delegation(jane.clone()), "agent:deploy-bot")
            .await
            .unwrap()
            .is_none());
        let listed = store.list_for(&jane).await.unwrap();
        let lifted = listed.iter().find(|r| r.id == first.id).unwrap();
        assert_eq!(lifted.restored_by.as_ref(), Some(&jane));
        // Revoked anew after a restore: a new row.
        assert!(audit
            .append_guarded(insert(&again), vec![record()])
            .await
            .unwrap());
    }

    #[tokio::test]
    async fn outstanding_lists_unexpired_issuances_to_the_agent() {
        let (_dir, db) = open().await;
        let audit = SqlAuditStore::new(db.clone());
        let store = SqlRevocationStore::new(db);
        let now = OffsetDateTime::now_utc();
        let issued = |person: &str, actor: Option<&str>, expires: OffsetDateTime, id: &str| {
            let mut r = AuditRecord::new(AuditEvent::IssuanceOutcome, Outcome::Issued, "req");
            r.requester = Some(person.into());
            r.actor = actor.map(Into::into);
            r.provider = Some("aws".into());
            r.role = Some("arn:aws:iam::1:role/x".into());
            r.credential_id = Some(id.into());
            r.expires_at = Some(expires);
            r.issuance_id = Some(Uuid::new_v4());
            r
        };
        let later = now + time::Duration::minutes(10);
        audit
            .append(vec![
                issued("user:default/jane", Some("agent:bot"), later, "ASIA1"),
                issued(
                    "user:default/jane",
                    Some("agent:bot"),
                    now - time::Duration::minutes(1),
                    "ASIA2",
                ),
                issued("user:default/jane", None, later, "ASIA3"),
                issued("user:default/jane", Some("agent:other"), later, "ASIA4"),
                issued("user:default/alex", Some("agent:bot"), later, "ASIA5"),
            ])
            .await
            .unwrap();
        let ids = |o: Vec<Outstanding>| {
            o.into_iter()
                .map(|o| o.credential_id.unwrap())
                .collect::<Vec<_>>()
        };
        let jane = entity("user:default/jane");
        assert_eq!(
            ids(store
                .outstanding(Some(&jane), "agent:bot", now)
                .await
                .unwrap()),
            ["ASIA1"]
        );
        let mut everyone = ids(store.outstanding(None, "agent:bot", now).await.unwrap());
        everyone.sort();
        assert_eq!(everyone, ["ASIA1", "ASIA5"]);
        let mut pattern = ids(store
            .outstanding(Some(&jane), "agent:*", now)
            .await
            .unwrap());
        pattern.sort();
        assert_eq!(pattern, ["ASIA1", "ASIA4"]);
    }
}
