//! The background dispatcher each broker runs when a webhook is configured:
//! queue what the audit log announces, claim one due message at a time, post
//! it, and record how that went. Retries back off exponentially (1s, 2s, 4s, …
//! up to `max_retry_interval`, or longer when the receiver sends
//! `Retry-After`). A message is never sent once its record is older than
//! `give_up_after`: it is then given up, which is logged, marked in the outbox
//! and audited (`notification` / `given_up`), so an operator can see it in the
//! log the broker keeps anyway.
//!
//! A round stops at the first failed post: if the receiver is down, the other
//! queued messages wait for the next round instead of each failing in turn.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use time::OffsetDateTime;
use tokio::sync::Notify;

use super::outbox::{self, Claim, OutboxError};
use super::records::{self, ReadError, SourceRecord};
use super::render::render;
use super::webhook::{PostError, Webhook};
use crate::audit::{AuditError, AuditEvent, AuditRecord, AuditStore, Outcome};
use crate::database::{parse_timestamp, Database};

#[derive(Debug, Clone, thiserror::Error)]
pub enum DispatchError {
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("a given-up notification could not be audited, so it stays queued: {0}")]
    Audit(#[from] AuditError),
}

/// How often and how long to try.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How often the audit log is checked for records committed by other
    /// replicas (this broker's own records wake the dispatcher at once).
    pub poll_interval: Duration,
    /// How long a claim holds a message; longer than one post can take.
    pub lease: Duration,
    pub max_retry_interval: Duration,
    /// Age of a record past which its message is given up.
    pub give_up_after: Duration,
}

/// The wait before attempt `attempts + 1`, after `attempts` failed.
pub fn backoff(attempts: i64, max: Duration, retry_after: Option<Duration>) -> Duration {
    let exponent = attempts.clamp(1, 32) as u32 - 1;
    let doubled = Duration::from_secs(1).saturating_mul(1u32 << exponent.min(30));
    let wait = doubled.min(max);
    match retry_after {
        Some(asked) => wait.max(asked.min(max)),
        None => wait,
    }
}

pub struct Dispatcher {
    pub db: Database,
    pub audit: Arc<dyn AuditStore>,
    pub webhook: Webhook,
    pub timing: Timing,
    /// Names this dispatcher's claims.
    pub owner: String,
    pub wake: Arc<Notify>,
}

enum Attempt {
    /// Delivered, or finished without sending (given up): go on.
    Done,
    /// The receiver failed: stop this round.
    Failed,
}

impl Dispatcher {
    pub async fn run(self) {
        loop {
            if let Err(error) = self.round().await {
                tracing::warn!(%error, "notification dispatch round failed; trying again");
            }
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.timing.poll_interval) => {}
            }
        }
    }

    async fn round(&self) -> Result<(), DispatchError> {
        loop {
            let scanned = outbox::scan(&self.db).await?;
            if scanned.queued > 0 {
                tracing::debug!(queued = scanned.queued, "notifications queued");
            }
            if !scanned.more {
                break;
            }
        }
        loop {
            let now = OffsetDateTime::now_utc();
            let Some(claim) =
                outbox::claim(&self.db, &self.owner, now, now + self.timing.lease).await?
            else {
                return Ok(());
            };
            if let Attempt::Failed = self.attempt(claim).await? {
                return Ok(());
            }
        }
    }

    async fn attempt(&self, claim: Claim) -> Result<Attempt, DispatchError> {
        let Some(record) = records::read(&self.db, claim.seq).await? else {
            self.abandon(
                &claim,
                None,
                "its audit record is no longer in the log (pruned)",
            )
            .await?;
            return Ok(Attempt::Done);
        };
        let Some(message) = render(&record) else {
            self.abandon(&claim, Some(&record), "its audit record announces nothing")
                .await?;
            return Ok(Attempt::Done);
        };
        let recorded_at = parse_timestamp(&claim.recorded_at).unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let horizon = recorded_at + self.timing.give_up_after;
        if OffsetDateTime::now_utc() > horizon {
            let why = match &claim.last_error {
                Some(last) => {
                    format!("not delivered within notifications.give_up_after; last error: {last}")
                }
                None => "its record is older than notifications.give_up_after; not sent".to_owned(),
            };
            self.abandon(&claim, Some(&record), &why).await?;
            return Ok(Attempt::Done);
        }
        match self.webhook.post(&message, &claim.record_id).await {
            Ok(()) => {
                let now = OffsetDateTime::now_utc();
                if !outbox::delivered(&self.db, claim.seq, &self.owner, now).await? {
                    tracing::warn!(audit_seq = claim.seq, "notification delivered after its claim lapsed; it may be delivered twice (receivers de-duplicate on stackpass.id)");
                }
                tracing::info!(audit_seq = claim.seq, record_id = %claim.record_id,
                    event = %record.event, attempts = claim.attempts, "notification delivered");
                Ok(Attempt::Done)
            }
            Err(error) => {
                let retry_after = match &error {
                    PostError::Refused { retry_after, .. } => *retry_after,
                    PostError::Unreachable(_) => None,
                };
                let wait = backoff(claim.attempts, self.timing.max_retry_interval, retry_after);
                let next = OffsetDateTime::now_utc() + wait;
                let text = error.to_string();
                if next > horizon {
                    let why = format!(
                        "not delivered within notifications.give_up_after; last error: {text}"
                    );
                    self.abandon(&claim, Some(&record), &why).await?;
                } else {
                    outbox::retry_at(&self.db, claim.seq, &self.owner, next, &text).await?;
                    tracing::warn!(audit_seq = claim.seq, attempts = claim.attempts, %error,
                        retry_in = %humantime::format_duration(wait), "notification not delivered; will retry");
                }
                Ok(Attempt::Failed)
            }
        }
    }

    /// Gives a message up: audited first (so a crash here leaves it queued and
    /// it is given up again, never silently), then marked in the outbox.
    async fn abandon(
        &self,
        claim: &Claim,
        record: Option<&SourceRecord>,
        why: &str,
    ) -> Result<(), DispatchError> {
        let request_id = record.map_or("notification", |r| r.request_id.as_str());
        let mut audit = AuditRecord::new(AuditEvent::Notification, Outcome::GivenUp, request_id);
        audit.stack = record.and_then(|r| r.stack.clone());
        audit.detail = Some(json!({
            "audit_seq": claim.seq,
            "record_id": claim.record_id,
            "event": record.map(|r| r.event.as_str()),
            "outcome": record.map(|r| r.outcome.as_str()),
            "attempts": claim.attempts,
            "error": why,
        }));
        self.audit.append(vec![audit]).await?;
        let now = OffsetDateTime::now_utc();
        outbox::give_up(&self.db, claim.seq, &self.owner, now, why).await?;
        tracing::error!(audit_seq = claim.seq, record_id = %claim.record_id, attempts = claim.attempts,
            error = why, "notification given up; audited as notification/given_up");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_exponentially_up_to_the_cap() {
        let max = Duration::from_secs(300);
        let waits: Vec<u64> = (1..=12).map(|n| backoff(n, max, None).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(backoff(i64::MAX, max, None), max);
        assert_eq!(backoff(0, max, None), Duration::from_secs(1));
    }

    #[test]
    fn retry_after_is_honoured_within_the_cap() {
        let max = Duration::from_secs(300);
        let asked = |s| Some(Duration::from_secs(s));
        assert_eq!(backoff(1, max, asked(30)), Duration::from_secs(30));
        assert_eq!(backoff(6, max, asked(2)), Duration::from_secs(32));
        assert_eq!(backoff(1, max, asked(86_400)), max);
    }
}
