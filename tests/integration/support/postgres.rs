//! The real PostgreSQL server: [`postgres_admin_url`] and [`PgDatabase`], a fresh
//! database per test, dropped after.

/// The server tests create their databases on. `scripts/setup-postgres` (run by
/// `scripts/test`) makes sure one listens at the default; point
/// `STACKPASS_TEST_POSTGRES_URL` elsewhere to use another.
pub fn postgres_admin_url() -> String {
    std::env::var("STACKPASS_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A fresh database for one test on the real PostgreSQL server, dropped after.
pub struct PgDatabase {
    pub url: String,
    name: String,
}

impl PgDatabase {
    pub async fn create() -> PgDatabase {
        let admin = postgres_admin_url();
        let name = format!("stackpass_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::ConnectOptions::connect(&admin.parse::<sqlx::postgres::PgConnectOptions>().unwrap())
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {admin} is not reachable ({e}); run scripts/setup-postgres or set STACKPASS_TEST_POSTGRES_URL"));
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        let (base, _) = admin.rsplit_once('/').unwrap();
        PgDatabase {
            url: format!("{base}/{name}"),
            name,
        }
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
                }
            });
        })
        .join();
    }
}
