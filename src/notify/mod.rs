//! Notifications to people: break-glass issuances, access requests created,
//! approved and denied, posted to one webhook as Slack-compatible JSON
//! (`{"text": …, "stackpass": {facts}}`).
//!
//! The audit log is the outbox: a notification exists exactly when its audit
//! record is committed, and is delivered at least once, across restarts and
//! replicas, from there. Every broker with a webhook runs a dispatcher that
//! queues announcing records, claims them with a lease, posts them with
//! retries and marks them delivered or, past `give_up_after`, given up (and
//! audited). The broker's own commits wake its dispatcher at once; records
//! other replicas commit are found by polling.
//!
//! - `records`: reading the audit records notifications are made from.
//! - `render`: which records announce, and their messages (pure).
//! - `slack`: making typed text inert in a Slack-compatible message (pure).
//! - `outbox`: the delivery state (migration 0005).
//! - `webhook`: one POST; the URL is a secret and never logged.
//! - `dispatch`: the background loop, retries and giving up.

mod dispatch;
mod outbox;
#[cfg(test)]
mod outbox_tests;
mod records;
mod render;
mod slack;
mod webhook;

use std::sync::Arc;

use tokio::sync::Notify;

use crate::audit::{AuditRecord, AuditStore};
use crate::config::NotificationsConfig;
use crate::database::Database;

/// What the broker holds to tell its dispatcher that something announcing was
/// just committed. Without a webhook it does nothing.
#[derive(Clone, Default)]
pub struct Notifier {
    wake: Option<Arc<Notify>>,
}

impl Notifier {
    /// No webhook: nothing is delivered.
    pub fn disabled() -> Self {
        Notifier::default()
    }

    /// Whether any of `records` announces something (decide before the
    /// records are handed to the audit store).
    pub fn announces_any(&self, records: &[AuditRecord]) -> bool {
        self.wake.is_some()
            && records
                .iter()
                .any(|r| render::announces(r.event.as_str(), r.outcome.as_str()))
    }

    /// Called once announcing records are committed: the dispatcher looks now
    /// rather than at its next poll.
    pub fn wake(&self) {
        if let Some(wake) = &self.wake {
            wake.notify_one();
        }
    }
}

/// Starts this broker's dispatcher when a webhook is configured; the
/// [`Notifier`] wakes it.
pub fn start(config: &NotificationsConfig, db: Database, audit: Arc<dyn AuditStore>) -> Notifier {
    let Some(url) = config.webhook_url.clone() else {
        return Notifier::disabled();
    };
    let wake = Arc::new(Notify::new());
    let dispatcher = dispatch::Dispatcher {
        db,
        audit,
        webhook: webhook::Webhook::new(url, config.timeout),
        timing: dispatch::Timing {
            poll_interval: config.poll_interval,
            lease: config.lease,
            max_retry_interval: config.max_retry_interval,
            give_up_after: config.give_up_after,
        },
        owner: uuid::Uuid::new_v4().to_string(),
        wake: wake.clone(),
    };
    tokio::spawn(dispatcher.run());
    Notifier { wake: Some(wake) }
}
