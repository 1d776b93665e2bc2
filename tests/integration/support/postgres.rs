//! The real PostgreSQL server: [`postgres_admin_url`] and [`PgDatabase`], a fresh
//! database per test, dropped after; [`PgDatabase::with_roles`] adds the
//! role split a production deployment uses (a migration-owner role and a
//! runtime role set up by `stackpass audit setup-postgres`).

/// The server tests create their databases on. `scripts/setup-postgres` (run by
/// `scripts/test`) makes sure one listens at the default; point
/// `STACKPASS_TEST_POSTGRES_URL` elsewhere to use another.
pub fn postgres_admin_url() -> String {
    std::env::var(super::process::TEST_POSTGRES_URL)
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A fresh database for one test on the real PostgreSQL server, dropped after.
pub struct PgDatabase {
    /// As the server's administrator, or with [`PgDatabase::with_roles`] as
    /// the migration-owner role (which owns the database and its schema).
    pub url: String,
    /// With [`PgDatabase::with_roles`]: as the runtime role the broker uses.
    pub runtime_url: Option<String>,
    name: String,
    roles: Vec<String>,
}

/// A URL for `role` (password `password`) on the admin URL's server.
fn url_as(role: &str, password: &str, database: &str) -> String {
    let admin = postgres_admin_url()
        .parse::<sqlx::postgres::PgConnectOptions>()
        .unwrap();
    format!(
        "postgres://{role}:{password}@{}:{}/{database}",
        admin.get_host(),
        admin.get_port()
    )
}

impl PgDatabase {
    pub async fn create() -> PgDatabase {
        Self::create_with("").await
    }

    /// The credential ids of every committed `issued` record.
    pub async fn issued_credential_ids(&self) -> std::collections::HashSet<String> {
        let options = self
            .url
            .parse::<sqlx::postgres::PgConnectOptions>()
            .unwrap();
        let mut conn = sqlx::ConnectOptions::connect(&options).await.unwrap();
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT credential_id FROM audit_records WHERE event = 'issuance_outcome' AND outcome = 'issued'",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap();
        ids.into_iter().collect()
    }

    /// A database `LATIN1`-encoded: text it cannot hold is a data error.
    pub async fn create_latin1() -> PgDatabase {
        Self::create_with(" ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0").await
    }

    async fn create_with(options: &str) -> PgDatabase {
        let admin = postgres_admin_url();
        let name = format!("stackpass_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::ConnectOptions::connect(&admin.parse::<sqlx::postgres::PgConnectOptions>().unwrap())
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {admin} is not reachable ({e}); run scripts/setup-postgres or set STACKPASS_TEST_POSTGRES_URL"));
        sqlx::query(&format!("CREATE DATABASE {name}{options}"))
            .execute(&mut conn)
            .await
            .unwrap();
        let (base, _) = admin.rsplit_once('/').unwrap();
        PgDatabase {
            url: format!("{base}/{name}"),
            runtime_url: None,
            name,
            roles: Vec::new(),
        }
    }

    /// A fresh database owned by a migration-owner role (not a superuser),
    /// migrated and with a runtime role granted by the shipped
    /// `stackpass audit setup-postgres`. Both roles log in with a password, so
    /// this works under the password authentication of a fresh server too.
    pub async fn with_roles() -> PgDatabase {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let (owner, runtime) = (format!("sp_owner_{id}"), format!("sp_runtime_{id}"));
        let mut db = Self::create().await;
        for role in [&owner, &runtime] {
            db.admin(&format!("CREATE ROLE {role} LOGIN PASSWORD 'pw-{role}'"))
                .await;
            db.roles.push(role.clone());
        }
        db.admin(&format!("ALTER DATABASE {} OWNER TO {owner}", db.name))
            .await;
        // On PostgreSQL 15 the public schema belongs to the database's owner.
        db.url = url_as(&owner, &format!("pw-{owner}"), &db.name);
        let output = super::process::stackpass(&[
            "audit",
            "setup-postgres",
            "--database",
            &db.url,
            "--runtime-role",
            &runtime,
        ])
        .output()
        .unwrap();
        assert!(
            output.status.success(),
            "setup-postgres: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        db.runtime_url = Some(url_as(&runtime, &format!("pw-{runtime}"), &db.name));
        db
    }

    /// Runs SQL as the server's administrator (not through the broker).
    pub async fn admin(&self, sql: &str) {
        let mut conn = sqlx::ConnectOptions::connect(
            &postgres_admin_url()
                .parse::<sqlx::postgres::PgConnectOptions>()
                .unwrap(),
        )
        .await
        .unwrap();
        sqlx::query(sql).execute(&mut conn).await.unwrap();
    }

    /// Makes the database unreachable for the broker, as if its server stopped:
    /// refuses new connections and terminates the open ones.
    pub async fn go_down(&self) {
        self.admin(&format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS false",
            self.name
        ))
        .await;
        self.admin(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}'",
            self.name
        ))
        .await;
    }

    pub async fn come_back(&self) {
        self.admin(&format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS true",
            self.name
        ))
        .await;
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        let roles = self.roles.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let admin = postgres_admin_url()
                    .parse::<sqlx::postgres::PgConnectOptions>()
                    .unwrap();
                if let Ok(mut conn) = sqlx::ConnectOptions::connect(&admin).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await;
                    for role in roles {
                        let _ = sqlx::query(&format!("DROP ROLE IF EXISTS {role}"))
                            .execute(&mut conn)
                            .await;
                    }
                }
            });
        })
        .join();
    }
}
