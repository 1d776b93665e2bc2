//! [`WebhookListener`]: the notification webhook double, a Slack-style incoming
//! webhook that records every JSON message posted to it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::post;
use axum::{Json, Router};
use serde_json::Value;

use super::process::spawn_router;

/// A Slack-style incoming webhook: records every JSON message posted to it.
pub struct WebhookListener {
    pub url: String,
    messages: Arc<Mutex<Vec<Value>>>,
}

impl WebhookListener {
    pub async fn start() -> WebhookListener {
        let messages = Arc::new(Mutex::new(Vec::new()));
        let sink = messages.clone();
        let router = Router::new().route(
            "/hooks/T000/B000/XXXX",
            post(move |Json(body): Json<Value>| {
                let sink = sink.clone();
                async move {
                    sink.lock().unwrap().push(body);
                    "ok"
                }
            }),
        );
        let base = spawn_router(router).await;
        WebhookListener {
            url: format!("{base}/hooks/T000/B000/XXXX"),
            messages,
        }
    }

    /// Waits (bounded) for a message whose text contains `needle`.
    pub async fn wait_for(&self, needle: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(found) = self
                .messages
                .lock()
                .unwrap()
                .iter()
                .find(|m| m["text"].as_str().is_some_and(|t| t.contains(needle)))
            {
                return found.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no notification containing {needle:?}: {:?}",
                self.messages.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
