//! [`WebhookListener`]: the notification webhook double, a Slack-style incoming
//! webhook that records every JSON message posted to it (with its
//! `Idempotency-Key`), and can be told to fail ([`Receiver::Fail`]) or to take a
//! message and never answer ([`Receiver::Hang`]), as a receiver that is down or
//! stuck does.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::Value;

use super::process::spawn_router;

/// How the double answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receiver {
    /// 200 `ok`, recording the message.
    Accept,
    /// This status, without recording the message (Slack answers 5xx when it
    /// is in trouble).
    Fail(u16),
    /// Reads the message and never answers.
    Hang,
}

#[derive(Clone)]
struct Shared {
    messages: Arc<Mutex<Vec<Value>>>,
    behaviour: Arc<Mutex<Receiver>>,
    attempts: Arc<AtomicUsize>,
}

/// A Slack-style incoming webhook: records every JSON message posted to it.
pub struct WebhookListener {
    pub url: String,
    shared: Shared,
}

impl WebhookListener {
    pub async fn start() -> WebhookListener {
        let shared = Shared {
            messages: Arc::new(Mutex::new(Vec::new())),
            behaviour: Arc::new(Mutex::new(Receiver::Accept)),
            attempts: Arc::new(AtomicUsize::new(0)),
        };
        let state = shared.clone();
        let router = Router::new().route(
            "/hooks/T000/B000/XXXX",
            post(move |headers: HeaderMap, Json(mut body): Json<Value>| {
                let state = state.clone();
                async move {
                    state.attempts.fetch_add(1, Ordering::SeqCst);
                    let behaviour = *state.behaviour.lock().unwrap();
                    match behaviour {
                        Receiver::Accept => {
                            let key = headers
                                .get("idempotency-key")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned);
                            body["idempotency_key_header"] = key.into();
                            state.messages.lock().unwrap().push(body);
                            (StatusCode::OK, "ok")
                        }
                        Receiver::Fail(status) => {
                            (StatusCode::from_u16(status).unwrap(), "service_unavailable")
                        }
                        Receiver::Hang => std::future::pending().await,
                    }
                }
            }),
        );
        let base = spawn_router(router).await;
        WebhookListener {
            url: format!("{base}/hooks/T000/B000/XXXX"),
            shared,
        }
    }

    pub fn set(&self, behaviour: Receiver) {
        *self.shared.behaviour.lock().unwrap() = behaviour;
    }

    /// Every POST that reached the double, answered or not.
    pub fn attempts(&self) -> usize {
        self.shared.attempts.load(Ordering::SeqCst)
    }

    /// The messages accepted so far, in order; each has the `Idempotency-Key`
    /// header it came with as `idempotency_key_header`.
    pub fn messages(&self) -> Vec<Value> {
        self.shared.messages.lock().unwrap().clone()
    }

    /// Waits (bounded) for a message whose text contains `needle`.
    pub async fn wait_for(&self, needle: &str) -> Value {
        self.wait_for_within(needle, Duration::from_secs(10)).await
    }

    pub async fn wait_for_within(&self, needle: &str, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(found) = self
                .messages()
                .into_iter()
                .find(|m| m["text"].as_str().is_some_and(|t| t.contains(needle)))
            {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "no notification containing {needle:?}: {:?}",
                self.messages()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (bounded) until at least `count` POSTs arrived.
    pub async fn wait_for_attempts(&self, count: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.attempts() < count {
            assert!(
                Instant::now() < deadline,
                "only {} of {count} webhook attempts arrived",
                self.attempts()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
