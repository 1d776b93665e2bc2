//! The audit log from outside the broker: [`audit_rows`] reads a SQLite audit
//! store, [`burst_then_kill`] crashes a broker mid-burst, [`verify_database`] and
//! [`verify_signed`] run `stackpass audit verify`.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};

use super::backstage::BackstageDouble;
use super::broker::{credential_request, Broker};
use super::process::stackpass;
use super::sts::StsBehaviour;

pub async fn audit_rows(path: &Path) -> Vec<Value> {
    use sqlx::{Column, Row};
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .read_only(true);
    let mut conn = sqlx::ConnectOptions::connect(&options).await.unwrap();
    let rows = sqlx::query("SELECT * FROM audit_records ORDER BY seq")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    rows.iter()
        .map(|row| {
            let mut object = serde_json::Map::new();
            for column in row.columns() {
                let name = column.name();
                let value = match row.try_get::<Option<i64>, _>(name) {
                    Ok(Some(n)) => json!(n),
                    _ => match row.try_get::<Option<String>, _>(name) {
                        Ok(Some(s)) => json!(s),
                        _ => Value::Null,
                    },
                };
                object.insert(name.to_owned(), value);
            }
            Value::Object(object)
        })
        .collect()
}

/// The STS for [`burst_then_kill`] with `kill_after` 40: the first 40
/// issuances finish at once, the rest wait at STS until long after the kill,
/// so the kill always lands mid-burst, however loaded the machine is.
pub const BURST_STS: StsBehaviour = StsBehaviour::SlowAfter {
    fast: 40,
    delay: std::time::Duration::from_secs(10),
};

/// Fires a burst of issuances and SIGKILLs the broker in the middle of it.
/// Returns the access key ids the client actually received.
pub async fn burst_then_kill(
    backstage: &BackstageDouble,
    broker: &Broker,
    total: usize,
    kill_after: usize,
) -> Vec<String> {
    let token = backstage.user_token("user:default/jane");
    let received = Arc::new(std::sync::Mutex::new(Vec::new()));
    let done = Arc::new(AtomicUsize::new(0));
    let client = reqwest::Client::new();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..total {
        let (received, done, client, token, url) = (
            received.clone(),
            done.clone(),
            client.clone(),
            token.clone(),
            broker.url.clone(),
        );
        tasks.spawn(async move {
            let response = client
                .post(format!("{url}/v1/credentials"))
                .bearer_auth(token)
                .json(&credential_request("pulumi:acme/payments/dev"))
                .send()
                .await;
            if let Ok(response) = response {
                if response.status() == 200 {
                    if let Ok(body) = response.json::<Value>().await {
                        let key = body["credentials"]["access_key_id"]
                            .as_str()
                            .unwrap()
                            .to_owned();
                        received.lock().unwrap().push(key);
                    }
                }
            }
            done.fetch_add(1, Ordering::SeqCst);
        });
    }
    while done.load(Ordering::SeqCst) < kill_after {
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    std::process::Command::new("kill")
        .args(["-9", &broker.pid().to_string()])
        .status()
        .unwrap();
    while tasks.join_next().await.is_some() {}
    let received = received.lock().unwrap().clone();
    received
}

/// `stackpass audit verify --database URL [--from-checkpoint C --allow-unsigned]`:
/// an unsigned checkpoint, as `stackpass audit checkpoint` prints without `--sign`.
pub fn verify_database(database: &str, checkpoint: Option<&str>) -> std::process::Output {
    let mut args = vec!["audit", "verify", "--database", database];
    if let Some(checkpoint) = checkpoint {
        args.extend(["--from-checkpoint", checkpoint, "--allow-unsigned"]);
    }
    stackpass(&args).output().unwrap()
}

/// `stackpass audit verify --database URL --from-checkpoint C --jwks J`: a
/// signed checkpoint (text or file) checked with the broker's JWKS (URL or file).
pub fn verify_signed(database: &str, checkpoint: &str, jwks: &str) -> std::process::Output {
    stackpass(&[
        "audit",
        "verify",
        "--database",
        database,
        "--from-checkpoint",
        checkpoint,
        "--jwks",
        jwks,
    ])
    .output()
    .unwrap()
}
