//! The outbox's state machine on a real SQLite file: what a scan queues, that a
//! claim is exclusive until its lease ends, and that only the claimer finishes.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;

use super::outbox::{claim, delivered, give_up, retry_at, scan};
use crate::audit::{AuditEvent, AuditRecord, AuditStore, Outcome, SqlAuditStore};
use crate::database::Database;

async fn open() -> (tempfile::TempDir, Database, Arc<dyn AuditStore>) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("audit.db").display());
    let db = Database::open(&url, Duration::from_secs(5)).await.unwrap();
    let audit: Arc<dyn AuditStore> = Arc::new(SqlAuditStore::new(db.clone()));
    (dir, db, audit)
}

fn record(event: AuditEvent, outcome: Outcome) -> AuditRecord {
    AuditRecord::new(event, outcome, "req-1")
}

const LEASE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_scan_queues_only_announcing_records_once() {
    let (_dir, db, audit) = open().await;
    audit
        .append(vec![
            record(AuditEvent::Decision, Outcome::Allowed),
            record(AuditEvent::Decision, Outcome::BreakGlass),
            record(AuditEvent::IssuanceIntent, Outcome::Pending),
            record(AuditEvent::AccessRequested, Outcome::Pending),
            record(AuditEvent::Approval, Outcome::ApprovalRecorded),
            record(AuditEvent::Approval, Outcome::Denied),
        ])
        .await
        .unwrap();
    let first = scan(&db).await.unwrap();
    assert_eq!((first.queued, first.more), (3, false));
    // Nothing new: nothing queued again.
    assert_eq!(scan(&db).await.unwrap().queued, 0);

    let now = OffsetDateTime::now_utc();
    let mut seqs = Vec::new();
    while let Some(c) = claim(&db, "a", now, now + LEASE).await.unwrap() {
        seqs.push(c.seq);
    }
    assert_eq!(seqs, [2, 4, 6], "oldest first, each once");
}

#[tokio::test]
async fn a_scan_past_one_batch_reports_more_and_loses_nothing() {
    let (_dir, db, audit) = open().await;
    let many: Vec<_> = (0..620)
        .map(|_| record(AuditEvent::Decision, Outcome::BreakGlass))
        .collect();
    audit.append(many).await.unwrap();
    let first = scan(&db).await.unwrap();
    assert_eq!((first.queued, first.more), (500, true));
    let second = scan(&db).await.unwrap();
    assert_eq!((second.queued, second.more), (120, false));
}

#[tokio::test]
async fn a_claim_is_exclusive_until_its_lease_ends_and_only_the_claimer_finishes() {
    let (_dir, db, audit) = open().await;
    audit
        .append(vec![record(AuditEvent::Decision, Outcome::BreakGlass)])
        .await
        .unwrap();
    scan(&db).await.unwrap();
    let now = OffsetDateTime::now_utc();
    let taken = claim(&db, "a", now, now + LEASE).await.unwrap().unwrap();
    assert_eq!(taken.attempts, 1);
    assert!(claim(&db, "b", now, now + LEASE).await.unwrap().is_none());

    // "a" died: after its lease, "b" takes the message over, and "a" can no
    // longer finish it.
    let later = now + LEASE + Duration::from_secs(1);
    let again = claim(&db, "b", later, later + LEASE)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((again.seq, again.attempts), (taken.seq, 2));
    assert!(!delivered(&db, taken.seq, "a", later).await.unwrap());

    // A failed attempt is due again at the time it names, with its error kept.
    let retry = later + Duration::from_secs(4);
    assert!(
        retry_at(&db, taken.seq, "b", retry, "the webhook answered HTTP 503")
            .await
            .unwrap()
    );
    assert!(claim(&db, "b", later, later + LEASE)
        .await
        .unwrap()
        .is_none());
    let third = claim(&db, "b", retry, retry + LEASE)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        third.last_error.as_deref(),
        Some("the webhook answered HTTP 503")
    );
    assert!(delivered(&db, third.seq, "b", retry).await.unwrap());

    // Finished messages are never claimed again, however late.
    let much_later = retry + Duration::from_secs(86_400);
    assert!(claim(&db, "c", much_later, much_later + LEASE)
        .await
        .unwrap()
        .is_none());
    assert!(!give_up(&db, third.seq, "b", much_later, "late")
        .await
        .unwrap());
}
