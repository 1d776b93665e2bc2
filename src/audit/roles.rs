//! The PostgreSQL role split that keeps the audit log append-only against the
//! broker itself: a migration-owner role owns the schema (migrates, prunes) and
//! a runtime role, which the broker serves as, may add records and read them
//! but not change, delete or truncate them, alter the tables, or disable their
//! triggers. [`setup_postgres`] applies the migrations as the owner and grants
//! the runtime role exactly that; it is idempotent, so it is also the upgrade
//! step when a new version adds migrations.
//!
//! The runtime role locks the chain's start row (`SELECT … FOR UPDATE`, which
//! PostgreSQL allows only with an UPDATE privilege) through an UPDATE grant on
//! the `id` column alone, which the table's check constraint pins to 1.

use std::time::Duration;

use crate::database::{is_postgres_url, Database, DatabaseError};

#[derive(Debug, thiserror::Error)]
pub enum RolesError {
    #[error("{0}")]
    Open(#[from] DatabaseError),
    #[error("the role split is for PostgreSQL; a SQLite file is protected by who may write it")]
    NotPostgres,
    #[error("{0:?} is not a role name this command accepts: use lowercase letters, digits and _")]
    BadName(String),
    #[error("there is no role {0:?}: create it first (CREATE ROLE {0} LOGIN PASSWORD '…')")]
    NoSuchRole(String),
    #[error("role {0:?} is a superuser or owns the audit tables, so it could rewrite history: use a separate login role for the broker")]
    Privileged(String),
    #[error("role {0:?} may create objects in the schema (through PUBLIC): run REVOKE CREATE ON SCHEMA public FROM PUBLIC as the database owner")]
    CanCreate(String),
    #[error("granting the runtime role failed: {0}")]
    Grant(String),
}

/// What the runtime role may do, table by table; every other table in the
/// schema (working state such as access requests) it may read and change.
const AUDIT_GRANTS: &[&str] = &[
    "REVOKE ALL ON audit_records, audit_chain, _sqlx_migrations FROM PUBLIC",
    "REVOKE ALL ON audit_records, audit_chain, _sqlx_migrations FROM {role}",
    "GRANT SELECT, INSERT ON audit_records TO {role}",
    "GRANT SELECT, UPDATE (id) ON audit_chain TO {role}",
    "GRANT SELECT ON _sqlx_migrations TO {role}",
];

/// Migrates the database `owner_url` names (connected as the schema's owner)
/// and grants `runtime_role` what the broker needs and no more. Returns a
/// summary for the operator.
pub async fn setup_postgres(
    owner_url: &str,
    runtime_role: &str,
    busy_timeout: Duration,
) -> Result<String, RolesError> {
    if !is_postgres_url(owner_url) {
        return Err(RolesError::NotPostgres);
    }
    if runtime_role.is_empty()
        || !runtime_role
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(RolesError::BadName(runtime_role.to_owned()));
    }
    let Database::Postgres(pool) = Database::open(owner_url, busy_timeout).await? else {
        return Err(RolesError::NotPostgres);
    };
    let grant = |e: sqlx::Error| RolesError::Grant(e.to_string());
    let privileged: Option<bool> = sqlx::query_scalar(
        "SELECT r.rolsuper OR pg_has_role(r.oid, c.relowner, 'USAGE') \
         FROM pg_roles r, pg_class c WHERE r.rolname = $1 AND c.oid = 'audit_records'::regclass",
    )
    .bind(runtime_role)
    .fetch_optional(&pool)
    .await
    .map_err(grant)?;
    match privileged {
        None => return Err(RolesError::NoSuchRole(runtime_role.to_owned())),
        Some(true) => return Err(RolesError::Privileged(runtime_role.to_owned())),
        Some(false) => {}
    }
    let schema: String = sqlx::query_scalar("SELECT current_schema()")
        .fetch_one(&pool)
        .await
        .map_err(grant)?;
    let quote = |name: &str| format!("\"{}\"", name.replace('"', "\"\""));
    let (role, schema_q) = (quote(runtime_role), quote(&schema));
    let mut tx = pool.begin().await.map_err(grant)?;
    let mut statements = vec![
        format!("REVOKE CREATE ON SCHEMA {schema_q} FROM {role}"),
        format!("GRANT USAGE ON SCHEMA {schema_q} TO {role}"),
        format!(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema_q} TO {role}"
        ),
        format!("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema_q} TO {role}"),
    ];
    statements.extend(AUDIT_GRANTS.iter().map(|s| s.replace("{role}", &role)));
    for statement in &statements {
        sqlx::query(statement)
            .execute(&mut *tx)
            .await
            .map_err(grant)?;
    }
    let can_create: bool = sqlx::query_scalar("SELECT has_schema_privilege($1, $2, 'CREATE')")
        .bind(runtime_role)
        .bind(&schema)
        .fetch_one(&mut *tx)
        .await
        .map_err(grant)?;
    if can_create {
        return Err(RolesError::CanCreate(runtime_role.to_owned()));
    }
    tx.commit().await.map_err(grant)?;
    Ok(format!(
        "migrated; role {runtime_role} may append and read the audit log (not change, delete or truncate it) and use the working tables in schema {schema}"
    ))
}

/// Why the connected role could rewrite the audit log, if it could: the
/// broker warns at start when it runs as the owner instead of a runtime role.
pub async fn history_rewritable(db: &Database) -> Option<String> {
    let Database::Postgres(pool) = db else {
        return None;
    };
    let owner: bool = sqlx::query_scalar(
        "SELECT pg_has_role(current_user, relowner, 'USAGE') FROM pg_class WHERE oid = 'audit_records'::regclass",
    )
    .fetch_one(pool)
    .await
    .unwrap_or(false);
    let writes: bool = sqlx::query_scalar(
        "SELECT has_table_privilege('audit_records', 'UPDATE') OR has_table_privilege('audit_records', 'DELETE') \
         OR has_table_privilege('audit_records', 'TRUNCATE')",
    )
    .fetch_one(pool)
    .await
    .unwrap_or(false);
    (owner || writes).then(|| {
        format!(
            "the broker's database role {} the audit tables, so it could rewrite history; serve as a runtime role set up with `stackpass audit setup-postgres`",
            if owner { "owns" } else { "may update or delete rows of" }
        )
    })
}
