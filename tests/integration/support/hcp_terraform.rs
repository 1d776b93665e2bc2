//! [`HcpTerraformDouble`]: the part of the HCP Terraform / Terraform
//! Enterprise API the broker reads, following the documented JSON:API shapes:
//!
//! - `GET /api/v2/organizations/{org}/workspaces/{name}`: the workspace
//!   (`type: workspaces`, `attributes.name`, flat `tag-names`, and
//!   `relationships.organization` / `relationships.project`);
//! - `GET /api/v2/workspaces/{id}/effective-tag-bindings`: every key-value tag
//!   the workspace has, its own and its project's, each
//!   `type: effective-tag-bindings` with `attributes.key` / `value`, an inherited
//!   one with `links.inherited-from` naming the project's path. A workspace's
//!   own binding of a key its project binds overrides it (the project's then
//!   does not appear), as in HCP Terraform when the key is not reserved.
//!
//! Authentication is `Authorization: Bearer <token>`; a missing or wrong token
//! is 401. A workspace that does not exist and one the token may not see are
//! the same 404, as the docs say. Answers are `application/vnd.api+json`. It
//! counts requests and can be "down" (503 or 429 for every request).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};

use super::process::spawn_router;

/// The team or organization token the double accepts.
pub const HCP_TERRAFORM_TOKEN: &str = "hcpt0k3n.atlasv1.Qm9yZGVyc0FyZUZvclJlYWxseVN0cm9uZ1Rva2Vucw";

const JSON_API: &str = "application/vnd.api+json";

#[derive(Clone)]
struct Workspace {
    id: String,
    project: String,
    /// Bound on the workspace itself.
    bindings: BTreeMap<String, String>,
    tag_names: Vec<String>,
}

#[derive(Default)]
struct Shared {
    /// `org/name` → workspace.
    workspaces: Mutex<HashMap<String, Workspace>>,
    /// project id → its bindings, inherited by its workspaces.
    projects: Mutex<HashMap<String, BTreeMap<String, String>>>,
    /// Workspaces (by id) the token may not see.
    hidden: Mutex<HashSet<String>>,
    down: Mutex<Option<u16>>,
    requests: AtomicUsize,
}

pub struct HcpTerraformDouble {
    /// The address (`stacks.terraform.url`).
    pub url: String,
    shared: Arc<Shared>,
}

fn owned(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

impl HcpTerraformDouble {
    pub async fn start() -> HcpTerraformDouble {
        let shared = Arc::new(Shared::default());
        let router = Router::new()
            .route(
                "/api/v2/organizations/{org}/workspaces/{name}",
                get(show_workspace),
            )
            .route(
                "/api/v2/workspaces/{id}/effective-tag-bindings",
                get(effective_tag_bindings),
            )
            .with_state(shared.clone());
        HcpTerraformDouble {
            url: spawn_router(router).await,
            shared,
        }
    }

    /// Creates or replaces project `id`'s tag bindings.
    pub fn set_project(&self, id: &str, bindings: &[(&str, &str)]) {
        self.shared
            .projects
            .lock()
            .unwrap()
            .insert(id.to_owned(), owned(bindings));
    }

    /// Creates or replaces workspace `org/name` in `project`, with its own
    /// bindings and flat tags; returns its id.
    pub fn set_workspace(
        &self,
        org_and_name: &str,
        project: &str,
        bindings: &[(&str, &str)],
        tag_names: &[&str],
    ) -> String {
        let id = format!("ws-{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
        self.shared.workspaces.lock().unwrap().insert(
            org_and_name.to_owned(),
            Workspace {
                id: id.clone(),
                project: project.to_owned(),
                bindings: owned(bindings),
                tag_names: tag_names.iter().map(|t| (*t).to_owned()).collect(),
            },
        );
        id
    }

    /// The workspace exists, but the token may not see it.
    pub fn hide(&self, org_and_name: &str) {
        let id = self.shared.workspaces.lock().unwrap()[org_and_name]
            .id
            .clone();
        self.shared.hidden.lock().unwrap().insert(id);
    }

    pub fn set_down(&self, status: Option<u16>) {
        *self.shared.down.lock().unwrap() = status;
    }

    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }
}

fn json_api(status: StatusCode, body: Value) -> Response {
    (status, [(header::CONTENT_TYPE, JSON_API)], body.to_string()).into_response()
}

fn error(status: StatusCode, title: &str) -> Response {
    json_api(
        status,
        json!({ "errors": [{ "status": status.as_u16().to_string(), "title": title }] }),
    )
}

/// Counts the request and answers what every endpoint answers first: down, or
/// not authenticated.
fn gate(shared: &Shared, headers: &HeaderMap) -> Option<Response> {
    shared.requests.fetch_add(1, Ordering::SeqCst);
    if let Some(status) = *shared.down.lock().unwrap() {
        let status = StatusCode::from_u16(status).unwrap();
        return Some(error(
            status,
            status.canonical_reason().unwrap_or("unavailable"),
        ));
    }
    let authorized = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {HCP_TERRAFORM_TOKEN}"));
    (!authorized).then(|| error(StatusCode::UNAUTHORIZED, "unauthorized"))
}

async fn show_workspace(
    State(shared): State<Arc<Shared>>,
    Path((org, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = gate(&shared, &headers) {
        return refused;
    }
    let workspace = shared
        .workspaces
        .lock()
        .unwrap()
        .get(&format!("{org}/{name}"))
        .cloned();
    let Some(ws) = workspace.filter(|ws| !shared.hidden.lock().unwrap().contains(&ws.id)) else {
        return error(StatusCode::NOT_FOUND, "not found");
    };
    json_api(
        StatusCode::OK,
        json!({
            "data": {
                "id": ws.id,
                "type": "workspaces",
                "attributes": {
                    "name": name,
                    "execution-mode": "remote",
                    "locked": false,
                    "tag-names": ws.tag_names,
                },
                "relationships": {
                    "organization": { "data": { "id": org, "type": "organizations" } },
                    "project": { "data": { "id": ws.project, "type": "projects" } },
                    "tag-bindings": { "links": { "related": format!("/api/v2/workspaces/{}/tag-bindings", ws.id) } },
                    "effective-tag-bindings": { "links": { "related": format!("/api/v2/workspaces/{}/effective-tag-bindings", ws.id) } },
                },
                "links": { "self": format!("/api/v2/organizations/{org}/workspaces/{name}") },
            }
        }),
    )
}

async fn effective_tag_bindings(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = gate(&shared, &headers) {
        return refused;
    }
    let workspace = shared
        .workspaces
        .lock()
        .unwrap()
        .values()
        .find(|ws| ws.id == id)
        .cloned();
    let Some(ws) = workspace.filter(|ws| !shared.hidden.lock().unwrap().contains(&ws.id)) else {
        return error(StatusCode::NOT_FOUND, "not found");
    };
    let inherited = shared
        .projects
        .lock()
        .unwrap()
        .get(&ws.project)
        .cloned()
        .unwrap_or_default();
    let mut data: Vec<Value> = ws
        .bindings
        .iter()
        .map(|(key, value)| {
            json!({
                "id": format!("{:016x}", key.len() * 7919 + value.len()),
                "type": "effective-tag-bindings",
                "attributes": { "key": key, "value": value },
            })
        })
        .collect();
    // The workspace's own binding of a key overrides the project's.
    data.extend(
        inherited
            .iter()
            .filter(|(key, _)| !ws.bindings.contains_key(*key))
            .map(|(key, value)| {
                json!({
                    "id": format!("{:016x}", key.len() * 104_729 + value.len()),
                    "type": "effective-tag-bindings",
                    "attributes": { "key": key, "value": value },
                    "links": { "inherited-from": format!("/api/v2/projects/{}", ws.project) },
                })
            }),
    );
    json_api(StatusCode::OK, json!({ "data": data }))
}
