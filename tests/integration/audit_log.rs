//! The audit log as a security team uses it: tamper evidence (`audit verify`,
//! checkpoints), retention pruning that keeps the chain verifiable, reading it over
//! HTTP with access control, exporting it, and surviving a crash mid-burst.

use serde_json::Value;
use stackpass::audit::StoredRecord;
use std::path::Path;

use crate::support::*;

/// jane issues (3 records), bob is denied (1), jane issues again (3), jane asks
/// for an unknown stack (1): 8 records.
async fn some_history(w: &World) {
    let jane = w.backstage.user_token("user:default/jane");
    let bob = w.backstage.user_token("user:default/bob");
    for (token, stack, status) in [
        (&jane, "pulumi:acme/payments/dev", 200),
        (&bob, "pulumi:acme/payments/dev", 403),
        (&jane, "pulumi:acme/payments/dev", 200),
        (&jane, "pulumi:acme/nope/dev", 404),
    ] {
        let response = w
            .broker
            .request_credentials(Some(token), credential_request(stack))
            .await;
        assert_eq!(response.status, status, "{}", response.text);
    }
}

async fn sqlite(path: &Path) -> sqlx::SqliteConnection {
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(path);
    sqlx::ConnectOptions::connect(&options).await.unwrap()
}

/// A consistent standalone copy of the broker's live database.
async fn snapshot(broker: &Broker, name: &str) -> std::path::PathBuf {
    let copy = broker.dir.path().join(name);
    let mut conn = sqlite(&broker.audit_path()).await;
    sqlx::query(&format!("VACUUM INTO '{}'", copy.display()))
        .execute(&mut conn)
        .await
        .unwrap();
    copy
}

/// Tampers with a copy the way someone with database access would: the
/// append-only triggers are in their way, so they drop them first.
async fn tamper(path: &Path, statements: &[&str]) {
    let mut conn = sqlite(path).await;
    sqlx::query("DROP TRIGGER audit_records_no_update")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("DROP TRIGGER audit_records_no_delete")
        .execute(&mut conn)
        .await
        .unwrap();
    for statement in statements {
        sqlx::query(statement).execute(&mut conn).await.unwrap();
    }
}

#[track_caller]
fn assert_broken(output: &std::process::Output, needle: &str) {
    assert_eq!(
        output.status.code(),
        Some(1),
        "verify should fail: {}{}",
        stdout(output),
        stderr(output)
    );
    let text = stderr(output);
    assert!(text.starts_with("error: audit chain BROKEN: "), "{text}");
    assert!(text.contains(needle), "expected {needle:?} in: {text}");
    assert!(text.contains("\nhint: "), "{text}");
}

async fn insert_record(path: &Path, r: &StoredRecord) {
    let mut conn = sqlite(path).await;
    sqlx::query(
        "INSERT INTO audit_records (seq, record_id, recorded_at, event, outcome, request_id, issuance_id, requester, \
         requester_kind, actor, issuer, stack, tags, component, owner, rule, provider, role, duration_seconds, \
         expires_at, credential_id, client_addr, detail, prev_hash, hash) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(r.seq)
    .bind(&r.record_id)
    .bind(&r.recorded_at)
    .bind(&r.event)
    .bind(&r.outcome)
    .bind(&r.request_id)
    .bind(&r.issuance_id)
    .bind(&r.requester)
    .bind(&r.requester_kind)
    .bind(&r.actor)
    .bind(&r.issuer)
    .bind(&r.stack)
    .bind(&r.tags)
    .bind(&r.component)
    .bind(&r.owner)
    .bind(&r.rule)
    .bind(&r.provider)
    .bind(&r.role)
    .bind(r.duration_seconds)
    .bind(&r.expires_at)
    .bind(&r.credential_id)
    .bind(&r.client_addr)
    .bind(&r.detail)
    .bind(&r.prev_hash)
    .bind(&r.hash)
    .execute(&mut conn)
    .await
    .unwrap();
}

async fn row(path: &Path, seq: i64) -> StoredRecord {
    use sqlx::Row;
    let mut conn = sqlite(path).await;
    let r = sqlx::query("SELECT * FROM audit_records WHERE seq = ?")
        .bind(seq)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    StoredRecord {
        seq: r.get("seq"),
        record_id: r.get("record_id"),
        recorded_at: r.get("recorded_at"),
        event: r.get("event"),
        outcome: r.get("outcome"),
        request_id: r.get("request_id"),
        issuance_id: r.get("issuance_id"),
        requester: r.get("requester"),
        requester_kind: r.get("requester_kind"),
        actor: r.get("actor"),
        issuer: r.get("issuer"),
        stack: r.get("stack"),
        tags: r.get("tags"),
        component: r.get("component"),
        owner: r.get("owner"),
        rule: r.get("rule"),
        provider: r.get("provider"),
        role: r.get("role"),
        duration_seconds: r.get("duration_seconds"),
        expires_at: r.get("expires_at"),
        credential_id: r.get("credential_id"),
        client_addr: r.get("client_addr"),
        detail: r.get("detail"),
        prev_hash: r.get("prev_hash"),
        hash: r.get("hash"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_catches_edited_deleted_swapped_and_inserted_records() {
    let w = World::with_sts(StsBehaviour::Succeed).await;
    some_history(&w).await;

    let intact = snapshot(&w.broker, "intact.db").await;
    let output = verify_database(&format!("sqlite://{}", intact.display()), None);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).starts_with("audit chain intact: 8 record(s), seq 1..8"),
        "{}",
        stdout(&output)
    );

    // An edited field: bob's denial rewritten as an allow.
    let edited = snapshot(&w.broker, "edited.db").await;
    let denial = row(&edited, 4).await;
    assert_eq!(denial.outcome, "denied");
    tamper(
        &edited,
        &["UPDATE audit_records SET outcome = 'allowed' WHERE seq = 4"],
    )
    .await;
    assert_broken(
        &verify_database(&format!("sqlite://{}", edited.display()), None),
        &format!(
            "record 4 ({}) does not match its hash: edited",
            denial.record_id
        ),
    );

    // A deleted record.
    let deleted = snapshot(&w.broker, "deleted.db").await;
    let after = row(&deleted, 5).await;
    tamper(&deleted, &["DELETE FROM audit_records WHERE seq = 4"]).await;
    assert_broken(
        &verify_database(&format!("sqlite://{}", deleted.display()), None),
        &format!(
            "records 4..4 are missing before record 5 ({}): deleted",
            after.record_id
        ),
    );

    // Two records swapped.
    let swapped = snapshot(&w.broker, "swapped.db").await;
    let third = row(&swapped, 3).await;
    tamper(
        &swapped,
        &[
            "UPDATE audit_records SET seq = -1 WHERE seq = 2",
            "UPDATE audit_records SET seq = 2 WHERE seq = 3",
            "UPDATE audit_records SET seq = 3 WHERE seq = -1",
        ],
    )
    .await;
    assert_broken(
        &verify_database(&format!("sqlite://{}", swapped.display()), None),
        &format!("record 2 ({}) does not match its hash", third.record_id),
    );

    // A forged record inserted by someone who knows the hashing scheme: it links
    // correctly and its own hash is right, but the records after it had to move
    // and no longer match theirs.
    let inserted = snapshot(&w.broker, "inserted.db").await;
    let moved = row(&inserted, 3).await;
    let mut forged = row(&inserted, 2).await;
    forged.record_id = uuid::Uuid::new_v4().to_string();
    forged.requester = Some("user:default/mallory".into());
    let link = forged.hash.clone();
    forged.seal(3, &link);
    tamper(
        &inserted,
        &[
            "UPDATE audit_records SET seq = -(seq + 1) WHERE seq >= 3",
            "UPDATE audit_records SET seq = -seq WHERE seq < 0",
        ],
    )
    .await;
    insert_record(&inserted, &forged).await;
    assert_eq!(
        row(&inserted, 3).await.compute_hash(),
        forged.hash,
        "the forgery is self-consistent"
    );
    assert_broken(
        &verify_database(&format!("sqlite://{}", inserted.display()), None),
        &format!("record 4 ({}) does not match its hash", moved.record_id),
    );

    // A record appended at the end without the right link.
    let appended = snapshot(&w.broker, "appended.db").await;
    tamper(
        &appended,
        &[&format!(
            "INSERT INTO audit_records (seq, record_id, recorded_at, event, outcome, request_id, prev_hash, hash) \
             VALUES (9, 'forged', '2026-01-01T00:00:00.000000Z', 'decision', 'allowed', 'x', '{}', '{}')",
            "1".repeat(64),
            "2".repeat(64)
        )],
    )
    .await;
    assert_broken(
        &verify_database(&format!("sqlite://{}", appended.display()), None),
        "record 9 (forged)",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_catches_a_truncated_tail() {
    let w = World::with_sts(StsBehaviour::Succeed).await;
    some_history(&w).await;
    let output = stackpass(&["audit", "checkpoint", "--database", &w.broker.audit_url()])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let checkpoint = stdout(&output).trim().to_owned();
    assert!(
        checkpoint.starts_with("stackpass-checkpoint-v1:8:"),
        "{checkpoint}"
    );

    // More history after the checkpoint is fine.
    some_history(&w).await;
    let output = verify_database(&w.broker.audit_url(), Some(&checkpoint));
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("16 record(s)")
            && stdout(&output).contains("consistent with the checkpoint")
    );

    // Deleting the newest records leaves a chain that is valid on its own; only
    // the checkpoint kept elsewhere reveals it.
    let truncated = snapshot(&w.broker, "truncated.db").await;
    tamper(&truncated, &["DELETE FROM audit_records WHERE seq >= 8"]).await;
    let database = format!("sqlite://{}", truncated.display());
    assert!(verify_database(&database, None).status.success());
    assert_broken(
        &verify_database(&database, Some(&checkpoint)),
        "records were deleted from the end",
    );

    let garbage = verify_database(&database, Some("not-a-checkpoint"));
    assert_eq!(garbage.status.code(), Some(1));
    assert!(
        stderr(&garbage).contains("not a checkpoint"),
        "{}",
        stderr(&garbage)
    );
}

/// Issue 13, finding 3: deleting records past a checkpoint and moving the
/// chain's start by hand used to pass `verify --from-checkpoint`, because a
/// checkpoint below the start was taken on trust. Now the start must be named
/// by a chained `audit_pruned` record, which only `stackpass audit prune` writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fake_prune_past_a_checkpoint_is_caught() {
    let w = World::with_sts(StsBehaviour::Succeed).await;
    some_history(&w).await;
    let output = stackpass(&["audit", "checkpoint", "--database", &w.broker.audit_url()])
        .output()
        .unwrap();
    let checkpoint = stdout(&output).trim().to_owned();
    assert!(
        checkpoint.starts_with("stackpass-checkpoint-v1:8:"),
        "{checkpoint}"
    );
    some_history(&w).await;

    let faked = snapshot(&w.broker, "fake-prune.db").await;
    let rows = audit_rows(&faked).await;
    let hash12 = rows[11]["hash"].as_str().unwrap().to_owned();
    tamper(
        &faked,
        &[
            "DELETE FROM audit_records WHERE seq <= 12",
            &format!(
                "UPDATE audit_chain SET start_seq = 13, start_prev_hash = '{hash12}' WHERE id = 1"
            ),
        ],
    )
    .await;
    let database = format!("sqlite://{}", faked.display());
    assert_broken(
        &verify_database(&database, Some(&checkpoint)),
        "no audit_pruned record in it names that start",
    );
    assert_broken(
        &verify_database(&database, None),
        "the chain starts at record 13",
    );

    // A real prune past the same checkpoint verifies against it.
    let cutoff = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let output = stackpass(&[
        "audit",
        "prune",
        "--database",
        &w.broker.audit_url(),
        "--before",
        &cutoff,
    ])
    .output()
    .unwrap();
    assert!(
        stdout(&output).starts_with("pruned 16 record(s)"),
        "{}{}",
        stdout(&output),
        stderr(&output)
    );
    let output = verify_database(&w.broker.audit_url(), Some(&checkpoint));
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("seq 17..17"),
        "{}",
        stdout(&output)
    );

    // Moving the start backwards (to hide that a prune happened) is refused.
    let mut conn = sqlite(&w.broker.audit_path()).await;
    let refused = sqlx::query("UPDATE audit_chain SET start_seq = 1 WHERE id = 1")
        .execute(&mut conn)
        .await;
    assert!(refused
        .unwrap_err()
        .to_string()
        .contains("moves only forward"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_seals_the_chain_so_it_still_verifies() {
    let w = World::with_sts(StsBehaviour::Succeed).await;
    some_history(&w).await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let cutoff = time::OffsetDateTime::now_utc();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    some_history(&w).await;

    let before = cutoff
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let output = stackpass(&[
        "audit",
        "prune",
        "--database",
        &w.broker.audit_url(),
        "--before",
        &before,
    ])
    .output()
    .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).starts_with("pruned 8 record(s)"),
        "{}",
        stdout(&output)
    );

    let rows = w.broker.audit_rows().await;
    assert_eq!(rows.first().unwrap()["seq"], 9, "the oldest 8 are gone");
    let seal = rows.last().unwrap();
    assert_eq!(
        (seal["event"].as_str(), seal["outcome"].as_str()),
        (Some("audit_pruned"), Some("pruned"))
    );
    let detail: Value = serde_json::from_str(seal["detail"].as_str().unwrap()).unwrap();
    assert_eq!(detail["records_pruned"], 8);
    assert_eq!(detail["pruned_through_seq"], 8);

    let output = verify_database(&w.broker.audit_url(), None);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("9 record(s), seq 9..17"),
        "{}",
        stdout(&output)
    );

    // The broker keeps appending onto the sealed chain, and tampering is still caught.
    some_history(&w).await;
    assert!(verify_database(&w.broker.audit_url(), None)
        .status
        .success());
    let copy = snapshot(&w.broker, "pruned-then-deleted.db").await;
    tamper(&copy, &["DELETE FROM audit_records WHERE seq = 9"]).await;
    assert_broken(
        &verify_database(&format!("sqlite://{}", copy.display()), None),
        "records 9..9 are missing",
    );

    // Without --before, prune needs a retention period.
    let output = stackpass(&[
        "audit",
        "prune",
        "--config",
        w.broker.config_path().to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("no retention period"),
        "{}",
        stderr(&output)
    );
    // Outside stackpass, the append-only triggers stop a plain DELETE.
    let mut conn = sqlite(&w.broker.audit_path()).await;
    let refused = sqlx::query("DELETE FROM audit_records WHERE seq = 9")
        .execute(&mut conn)
        .await;
    assert!(refused.unwrap_err().to_string().contains("append-only"));
}

async fn read_audit(w: &World, who: &str, query: &str) -> TestResponse {
    let token = w.backstage.user_token(who);
    let response = reqwest::Client::new()
        .get(format!("{}/v1/audit?{query}", w.broker.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    TestResponse::from_response(response).await
}

#[tokio::test]
async fn the_audit_api_serves_auditors_everything_and_requesters_their_own() {
    let w = World::with_sts(StsBehaviour::Succeed).await;
    some_history(&w).await;

    let all = read_audit(&w, "user:default/sam", "").await;
    assert_eq!(all.status, 200, "{}", all.text);
    let records = all.body["records"].as_array().unwrap();
    assert_eq!(records.len(), 8);
    assert_eq!(records[0]["seq"], 1);
    assert_eq!(records[0]["prev_hash"], stackpass::audit::GENESIS_HASH);
    assert_eq!(records[1]["prev_hash"], records[0]["hash"]);
    assert!(records[0]["tags"].is_object(), "tags are JSON, not text");
    assert!(all.body["next_cursor"].is_null());

    let denied = read_audit(&w, "user:default/sam", "outcome=denied").await;
    let denied = denied.body["records"].as_array().unwrap().clone();
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0]["requester"], "user:default/bob");
    assert!(denied[0]["detail"]["rules"].is_array());

    let own = read_audit(&w, "user:default/jane", "requester=user:default/jane").await;
    assert_eq!(own.status, 200, "{}", own.text);
    assert!(own.body["records"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["requester"] == "user:default/jane"));
    assert_eq!(own.body["records"].as_array().unwrap().len(), 7);

    read_audit(&w, "user:default/jane", "")
        .await
        .assert_problem(403, "audit-forbidden");
    read_audit(&w, "user:default/bob", "requester=user:default/jane")
        .await
        .assert_problem(403, "audit-forbidden");
    read_audit(&w, "user:default/sam", "cursor=garbage")
        .await
        .assert_problem(422, "invalid-request");
    read_audit(&w, "user:default/sam", "since=yesterday")
        .await
        .assert_problem(422, "invalid-request");
    read_audit(&w, "user:default/sam", "limit=0")
        .await
        .assert_problem(422, "invalid-request");
    read_audit(&w, "user:default/sam", "colour=blue")
        .await
        .assert_problem(422, "invalid-request");
    let anonymous = reqwest::get(format!("{}/v1/audit", w.broker.url))
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    // Cursor pagination walks everything exactly once.
    let mut seen = Vec::new();
    let mut query = "limit=3".to_owned();
    loop {
        let page = read_audit(&w, "user:default/sam", &query).await;
        assert_eq!(page.status, 200, "{}", page.text);
        seen.extend(
            page.body["records"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["seq"].as_i64().unwrap()),
        );
        match page.body["next_cursor"].as_str() {
            Some(cursor) => query = format!("limit=3&cursor={cursor}"),
            None => break,
        }
    }
    // Every read appends its own audit_read record, so the walk also meets
    // the reads made so far; it still sees each record once, in order.
    assert_eq!(seen[..8], (1..=8).collect::<Vec<_>>());
    assert_eq!(seen, (1..=*seen.last().unwrap()).collect::<Vec<_>>());

    let future = read_audit(&w, "user:default/sam", "since=2999-01-01T00:00:00Z").await;
    assert!(future.body["records"].as_array().unwrap().is_empty());
    let stack = read_audit(&w, "user:default/sam", "stack=pulumi:acme/nope/dev").await;
    assert_eq!(stack.body["records"].as_array().unwrap().len(), 1);
}

/// Issue 13, finding 12: checkpoints were unsigned. The server now writes a
/// checkpoint signed with its issuer key to `audit.checkpoint_dir` on a
/// schedule, `audit checkpoint --sign` does the same from cron, and `verify`
/// checks the signature with the published JWKS; a forged one is refused, and
/// an unsigned one only with `--allow-unsigned`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_checkpoints_are_shipped_and_verified_with_the_jwks() {
    let backstage = BackstageDouble::start().await;
    let sts = StsRecorder::start(StsBehaviour::Succeed).await;
    let shipped = tempfile::tempdir().unwrap();
    let mut options = BrokerOptions::new(&backstage, &sts.url);
    options.env.extend([
        (
            "STACKPASS_AUDIT__CHECKPOINT_DIR".to_owned(),
            shipped.path().display().to_string(),
        ),
        (
            "STACKPASS_AUDIT__CHECKPOINT_INTERVAL".to_owned(),
            "1s".to_owned(),
        ),
    ]);
    let broker = Broker::start(options).await;
    let jane = backstage.user_token("user:default/jane");
    for _ in 0..2 {
        let response = broker
            .request_credentials(Some(&jane), credential_request("pulumi:acme/payments/dev"))
            .await;
        assert_eq!(response.status, 200, "{}", response.text);
    }
    let at_six = shipped.path().join(format!("checkpoint-{:020}.jws", 6));
    for _ in 0..50 {
        if at_six.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let latest = shipped.path().join("latest.jws");
    assert!(
        at_six.exists() && latest.exists(),
        "no signed checkpoint was shipped"
    );
    let jwks_url = format!("{}/.well-known/jwks.json", broker.url);
    let jwks_file = shipped.path().join("jwks-saved.json");
    std::fs::write(&jwks_file, broker.get("/.well-known/jwks.json").await.text).unwrap();

    let database = broker.audit_url();
    let output = verify_signed(&database, at_six.to_str().unwrap(), &jwks_url);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("6 record(s)")
            && stdout(&output).contains("consistent with the checkpoint signed by key"),
        "{}",
        stdout(&output)
    );

    // The cron path: sign the head from the CLI with the broker's config.
    let output = stackpass(&[
        "audit",
        "checkpoint",
        "--sign",
        "--config",
        broker.config_path().to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let signed = stdout(&output).trim().to_owned();
    let output = verify_signed(&database, &signed, jwks_file.to_str().unwrap());
    assert!(output.status.success(), "{}", stderr(&output));

    // Truncating the tail is caught against the signed checkpoint.
    let truncated = snapshot(&broker, "signed-truncated.db").await;
    tamper(&truncated, &["DELETE FROM audit_records WHERE seq >= 5"]).await;
    assert_broken(
        &verify_signed(
            &format!("sqlite://{}", truncated.display()),
            at_six.to_str().unwrap(),
            &jwks_url,
        ),
        "records were deleted from the end",
    );

    // A checkpoint rewritten to match a rewritten chain no longer verifies.
    let parts: Vec<&str> = signed.split('.').collect();
    let payload: Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, parts[1])
            .unwrap(),
    )
    .unwrap();
    let forged_payload = payload["checkpoint"]
        .as_str()
        .unwrap()
        .replace(":6:", ":4:");
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            serde_json::json!({ "iss": payload["iss"], "iat": payload["iat"], "checkpoint": forged_payload })
                .to_string()
        ),
        parts[2]
    );
    let output = verify_signed(&database, &forged, &jwks_url);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("checkpoint REFUSED"),
        "{}",
        stderr(&output)
    );

    // Unsigned checkpoints are taken only when asked to.
    let output = stackpass(&["audit", "checkpoint", "--database", &database])
        .output()
        .unwrap();
    let unsigned = stdout(&output).trim().to_owned();
    let output = stackpass(&[
        "audit",
        "verify",
        "--database",
        &database,
        "--from-checkpoint",
        &unsigned,
    ])
    .output()
    .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("--allow-unsigned"),
        "{}",
        stderr(&output)
    );
    let output = verify_database(&database, Some(&unsigned));
    assert!(
        stdout(&output).contains("consistent with the checkpoint (unsigned)"),
        "{}",
        stdout(&output)
    );
}

/// Issue 13, finding 12: reads of the audit log were not audited. Each read
/// (and each refused read) now appends who read what and how much they got,
/// committed before the page is returned.
#[tokio::test]
async fn every_read_of_the_audit_log_is_audited_before_it_is_returned() {
    let w = World::with_sts(StsBehaviour::Succeed).await;
    some_history(&w).await;
    let page = read_audit(&w, "user:default/sam", "outcome=denied&limit=5").await;
    assert_eq!(page.status, 200, "{}", page.text);
    read_audit(&w, "user:default/jane", "")
        .await
        .assert_problem(403, "audit-forbidden");

    let rows = w.broker.audit_rows().await;
    let reads: Vec<&Value> = rows.iter().filter(|r| r["event"] == "audit_read").collect();
    assert_eq!(reads.len(), 2, "{rows:?}");
    assert_eq!(reads[0]["requester"], "user:default/sam");
    assert_eq!(reads[0]["outcome"], "returned");
    let detail: Value = serde_json::from_str(reads[0]["detail"].as_str().unwrap()).unwrap();
    assert_eq!(detail["query"]["outcome"], "denied");
    assert_eq!(detail["query"]["limit"], 5);
    assert_eq!(detail["result"]["records_returned"], 1);
    assert_eq!(reads[1]["requester"], "user:default/jane");
    assert_eq!(reads[1]["outcome"], "denied");
    assert!(verify_database(&w.broker.audit_url(), None)
        .status
        .success());

    // Fail closed: a read whose record cannot be committed returns nothing.
    let mut conn = sqlite(&w.broker.audit_path()).await;
    sqlx::query(
        "CREATE TRIGGER refuse_reads BEFORE INSERT ON audit_records WHEN NEW.event = 'audit_read' \
         BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let refused = read_audit(&w, "user:default/sam", "").await;
    refused.assert_problem(503, "audit-unavailable");
    assert!(
        !refused.text.contains("user:default/bob"),
        "{}",
        refused.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_writes_every_record_as_a_json_line() {
    let w = World::with_sts(StsBehaviour::Succeed).await;
    some_history(&w).await;
    let output = stackpass(&[
        "audit",
        "export",
        "--database",
        &w.broker.audit_url(),
        "--format",
        "ndjson",
    ])
    .output()
    .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let lines: Vec<Value> = stdout(&output)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 8);
    assert!(lines
        .iter()
        .all(|l| l["hash"].as_str().is_some_and(|h| h.len() == 64)));
    assert_eq!(stderr(&output).trim(), "exported 8 record(s)");

    let missing = stackpass(&[
        "audit",
        "export",
        "--database",
        "sqlite:///nonexistent/audit.db",
    ])
    .output()
    .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr(&missing).contains("there is no audit database"),
        "{}",
        stderr(&missing)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_credential_received_before_a_crash_has_a_committed_record() {
    let backstage = BackstageDouble::start().await;
    let sts = StsRecorder::start(BURST_STS).await;
    let broker = Broker::start(BrokerOptions::new(&backstage, &sts.url)).await;
    let received = burst_then_kill(&backstage, &broker, 120, 40).await;
    assert!(
        received.len() >= 20,
        "the burst issued some credentials before the kill: {}",
        received.len()
    );

    let rows = audit_rows(&broker.audit_path()).await;
    let recorded: std::collections::HashSet<String> = rows
        .iter()
        .filter(|r| r["event"] == "issuance_outcome" && r["outcome"] == "issued")
        .map(|r| r["credential_id"].as_str().unwrap().to_owned())
        .collect();
    for key in &received {
        assert!(
            recorded.contains(key),
            "credential {key} reached the client without a committed record"
        );
    }
    let output = verify_database(&broker.audit_url(), None);
    assert!(
        output.status.success(),
        "the chain survives the crash: {}",
        stderr(&output)
    );
}
