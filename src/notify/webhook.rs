//! One POST of one message to the configured webhook. The URL is a secret (a
//! Slack webhook URL is its own credential): it lives in a `SecretString`, and
//! no error or log line built here contains it.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use super::render::Message;

/// Why one delivery attempt did not land; never contains the URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PostError {
    #[error("the webhook answered HTTP {status}")]
    Refused {
        status: u16,
        /// The receiver's `Retry-After`, in seconds, when it sent one.
        retry_after: Option<Duration>,
    },
    #[error("the webhook could not be reached: {0}")]
    Unreachable(String),
}

pub struct Webhook {
    url: SecretString,
    http: reqwest::Client,
}

impl Webhook {
    pub fn new(url: SecretString, timeout: Duration) -> Self {
        Webhook {
            url,
            http: crate::http_client::build(timeout),
        }
    }

    /// Posts `message`; `key` (the audit record id) also goes in an
    /// `Idempotency-Key` header for receivers that de-duplicate on it.
    pub async fn post(&self, message: &Message, key: &str) -> Result<(), PostError> {
        let url = self.url.expose_secret();
        let response = self
            .http
            .post(url)
            .header("Idempotency-Key", key)
            .json(&message.body())
            .send()
            .await
            .map_err(|e| PostError::Unreachable(self.describe(e)))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        Err(PostError::Refused {
            status: status.as_u16(),
            retry_after,
        })
    }

    /// The error and its causes, without the URL (in case a cause quotes it).
    fn describe(&self, error: reqwest::Error) -> String {
        let error = error.without_url();
        let mut text = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text.replace(self.url.expose_secret(), "[webhook URL]")
    }
}
