//! Notifications to people: access requests created and decided, break-glass
//! issuances. One configurable webhook receiving Slack-compatible JSON
//! (`{"text": …}`, plus a `stackpass` object with the facts for other tools).
//! Delivery never blocks or fails a request: it runs in the background with a
//! timeout and a few retries, and failures are logged (without the URL, which is
//! a secret for Slack webhooks).

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

#[derive(Clone)]
pub struct Notifier {
    webhook: Option<SecretString>,
    http: reqwest::Client,
}

impl Notifier {
    pub fn new(webhook: Option<SecretString>) -> Self {
        Notifier {
            webhook,
            http: crate::http_client::build(Duration::from_secs(5)),
        }
    }

    pub fn send(&self, text: String, facts: serde_json::Value) {
        let Some(webhook) = self.webhook.clone() else {
            return;
        };
        let http = self.http.clone();
        tokio::spawn(async move {
            let body = serde_json::json!({ "text": text, "stackpass": facts });
            for attempt in 1..=3u32 {
                match http.post(webhook.expose_secret()).json(&body).send().await {
                    Ok(response) if response.status().is_success() => return,
                    Ok(response) => tracing::warn!(
                        status = response.status().as_u16(),
                        attempt,
                        "notification webhook refused the message"
                    ),
                    Err(e) => {
                        tracing::warn!(attempt, error = %e.without_url(), "notification webhook unreachable")
                    }
                }
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            }
            tracing::error!("notification dropped after 3 attempts");
        });
    }
}
