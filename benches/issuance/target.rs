//! What the load is aimed at: a fresh release broker with a fresh audit store
//! (a SQLite file, or a new database on the PostgreSQL server), between the
//! Backstage double and the STS double's load behaviour; and the checks after
//! a run (the chain verifies, every completed request was a committed issuance).

use serde_json::Value;

use super::load::Request;
use super::support::*;

#[derive(Clone, Copy, PartialEq)]
pub enum Store {
    Sqlite,
    Postgres,
}

impl Store {
    pub fn name(self) -> &'static str {
        match self {
            Store::Sqlite => "sqlite",
            Store::Postgres => "postgres",
        }
    }

    pub fn parse(name: &str) -> Store {
        match name.trim() {
            "sqlite" => Store::Sqlite,
            "postgres" => Store::Postgres,
            other => panic!("BENCH_STORES: unknown store {other:?} (sqlite, postgres)"),
        }
    }
}

pub struct Target {
    pub store: Store,
    pub backstage: BackstageDouble,
    pub sts: StsRecorder,
    pub broker: Broker,
    pub request: Request,
    /// Dropped (the database with it) after the broker.
    _database: Option<PgDatabase>,
}

/// The broker's settings for load, beside [`BrokerOptions::new`]'s: quiet
/// logs, a catalog cache that outlives a run, and no issuance rate limits.
pub fn load_options(backstage: &BackstageDouble, sts: &StsRecorder) -> BrokerOptions {
    let mut options = BrokerOptions::new(backstage, &sts.url);
    // Keep the start-up line the harness waits for; drop per-request logging.
    options.env.push((
        "STACKPASS_LOG".into(),
        "warn,stackpass=info,stackpass::api=warn,stackpass::broker=warn".into(),
    ));
    options
        .env
        .push(("STACKPASS_CATALOG__CACHE_TTL".into(), "10m".into()));
    // Thousands of issuances a second by one principal from one address:
    // the [limits] defaults (120 a minute per principal) would answer 429
    // to nearly all of them, so they are off here (as in the test config).
    for limit in ["ISSUANCE_PER_PRINCIPAL", "ISSUANCE_PER_ADDRESS"] {
        options
            .env
            .push((format!("STACKPASS_LIMITS__{limit}_PER_MINUTE"), "0".into()));
    }
    options
}

impl Target {
    /// Starts the doubles and the broker; no request has been sent yet.
    pub async fn start(store: Store) -> Target {
        let backstage = BackstageDouble::start().await;
        let sts = StsRecorder::start(StsBehaviour::Load).await;
        let mut options = load_options(&backstage, &sts);
        let database = match store {
            Store::Sqlite => None,
            Store::Postgres => Some(PgDatabase::create().await),
        };
        options.audit_url = database.as_ref().map(|db| db.url.clone());
        let broker = Broker::start(options).await;
        let request = Request {
            url: format!("{}/v1/credentials", broker.url),
            token: backstage.user_token("user:default/jane"),
            body: credential_request("pulumi:acme/payments/dev").to_string(),
        };
        Target {
            store,
            backstage,
            sts,
            broker,
            request,
            _database: database,
        }
    }

    /// 50 issuances one after another, each checked to be a 200 with
    /// credentials from the STS double, then two seconds of wrk at
    /// `connections`: the caches are filled and the connection pools open.
    pub async fn warm_up(&self, connections: usize) {
        let client = reqwest::Client::new();
        for _ in 0..50 {
            let response = client
                .post(&self.request.url)
                .bearer_auth(&self.request.token)
                .header("content-type", "application/json")
                .body(self.request.body.clone())
                .send()
                .await
                .unwrap();
            let status = response.status();
            let text = response.text().await.unwrap();
            assert_eq!(status, 200, "{text}");
            let body: Value = serde_json::from_str(&text).unwrap();
            let key = body["credentials"]["access_key_id"]
                .as_str()
                .unwrap_or_default();
            assert!(key.starts_with("ASIA"), "{text}");
        }
        super::load::wrk(&self.request, connections, 2).await;
    }

    /// Requests the Backstage double has answered so far (keys and catalog).
    pub fn backstage_requests(&self) -> usize {
        self.backstage.key_fetches() + self.backstage.catalog_hits()
    }

    pub fn audit_url(&self) -> String {
        match &self._database {
            Some(db) => db.url.clone(),
            None => self.broker.audit_url(),
        }
    }

    /// After a run: the audit chain verifies, and at least `completed`
    /// issuances are committed as issued (requests still in flight when the
    /// generator stopped may have been issued too), each with credentials
    /// the STS double minted.
    pub async fn check(&self, completed: u64) {
        let output = verify_database(&self.audit_url(), None);
        assert!(
            output.status.success(),
            "{}: chain broken after the run: {}",
            self.store.name(),
            stderr(&output)
        );
        let issued = issued_count(&self.audit_url()).await;
        assert!(
            issued >= completed,
            "{}: {issued} issuances committed, but the load generator completed {completed}",
            self.store.name()
        );
        assert!(
            self.sts.load_calls() >= issued,
            "{}: {issued} issuances committed, but STS minted only {}",
            self.store.name(),
            self.sts.load_calls()
        );
    }
}

/// Committed `issued` records in an audit store (as
/// [`PgDatabase::issued_credential_ids`] counts them, without reading them).
async fn issued_count(audit_url: &str) -> u64 {
    const ISSUED: &str = "SELECT count(*) FROM audit_records WHERE event = 'issuance_outcome' AND outcome = 'issued'";
    let count: i64 = if audit_url.starts_with("sqlite:") {
        let options = audit_url
            .parse::<sqlx::sqlite::SqliteConnectOptions>()
            .unwrap()
            .read_only(true);
        let mut conn = sqlx::ConnectOptions::connect(&options).await.unwrap();
        sqlx::query_scalar(ISSUED)
            .fetch_one(&mut conn)
            .await
            .unwrap()
    } else {
        let options = audit_url
            .parse::<sqlx::postgres::PgConnectOptions>()
            .unwrap();
        let mut conn = sqlx::ConnectOptions::connect(&options).await.unwrap();
        sqlx::query_scalar(ISSUED)
            .fetch_one(&mut conn)
            .await
            .unwrap()
    };
    count as u64
}
