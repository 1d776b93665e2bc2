//! [`PulumiCloudDouble`]: Pulumi Cloud's REST API as the broker reads it,
//! `GET /api/stacks/{organization}/{project}/{stack}`, following the documented
//! contract: the caller authenticates with `Authorization: token <access
//! token>` (anything else is 401, as the docs say for a missing or invalid
//! token), the answer is the stack document (`orgName`, `projectName`,
//! `stackName`, `activeUpdate`, `version`, `tags`) as `application/json`, and a
//! stack that does not exist, or that the token's identity may not see, is a
//! 404 with Pulumi's `{code, message}` error body. It counts requests, records
//! the `Accept` header of the last one, and can be "down" (answering 503 or 429).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::json;

use super::process::spawn_router;

/// The access token the double accepts.
pub const PULUMI_TOKEN: &str = "pul-3c1d7e0f9a2b4c6d8e0f1a2b3c4d5e6f7a8b9c0d";

#[derive(Default)]
struct Shared {
    /// `org/project/stack` → tags.
    stacks: Mutex<HashMap<String, BTreeMap<String, String>>>,
    /// Stacks that exist but the token's identity may not read.
    hidden: Mutex<HashSet<String>>,
    /// `Some(status)`: every request gets this status.
    down: Mutex<Option<u16>>,
    requests: AtomicUsize,
    last_accept: Mutex<Option<String>>,
}

pub struct PulumiCloudDouble {
    /// The API URL (`stacks.pulumi.url`).
    pub url: String,
    shared: Arc<Shared>,
}

impl PulumiCloudDouble {
    pub async fn start() -> PulumiCloudDouble {
        let shared = Arc::new(Shared::default());
        let router = Router::new()
            .route("/api/stacks/{org}/{project}/{stack}", get(get_stack))
            .with_state(shared.clone());
        PulumiCloudDouble {
            url: spawn_router(router).await,
            shared,
        }
    }

    /// Creates or retags `org/project/stack`.
    pub fn set_stack(&self, name: &str, tags: &[(&str, &str)]) {
        let tags = tags
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.shared
            .stacks
            .lock()
            .unwrap()
            .insert(name.to_owned(), tags);
    }

    /// The stack exists, but the broker's token may not read it.
    pub fn hide(&self, name: &str) {
        self.shared.hidden.lock().unwrap().insert(name.to_owned());
    }

    /// `Some(503)`: down; `None`: back up.
    pub fn set_down(&self, status: Option<u16>) {
        *self.shared.down.lock().unwrap() = status;
    }

    /// Every request that reached the double, answered or refused.
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    pub fn last_accept(&self) -> Option<String> {
        self.shared.last_accept.lock().unwrap().clone()
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json!({ "code": status.as_u16(), "message": message }).to_string(),
    )
        .into_response()
}

async fn get_stack(
    State(shared): State<Arc<Shared>>,
    Path((org, project, stack)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    shared.requests.fetch_add(1, Ordering::SeqCst);
    *shared.last_accept.lock().unwrap() = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(status) = *shared.down.lock().unwrap() {
        let status = StatusCode::from_u16(status).unwrap();
        return error(status, status.canonical_reason().unwrap_or("unavailable"));
    }
    let authorized = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        == Some(&format!("token {PULUMI_TOKEN}"));
    if !authorized {
        return error(
            StatusCode::UNAUTHORIZED,
            "Unauthorized: No credentials provided or are invalid.",
        );
    }
    let name = format!("{org}/{project}/{stack}");
    let tags = shared.stacks.lock().unwrap().get(&name).cloned();
    match tags {
        Some(tags) if !shared.hidden.lock().unwrap().contains(&name) => (
            [(header::CONTENT_TYPE, "application/json")],
            json!({
                "orgName": org,
                "projectName": project,
                "stackName": stack,
                "activeUpdate": "7f7d4b3e-3c5a-4a43-9d4e-3a1c2b0e9f11",
                "version": 12,
                "tags": tags,
            })
            .to_string(),
        )
            .into_response(),
        _ => error(
            StatusCode::NOT_FOUND,
            &format!("Not Found: Stack '{name}' not found"),
        ),
    }
}
