//! [`BackstageDouble`]: Backstage's auth backend (OIDC discovery, JWKS, ES256
//! user tokens) and catalog API (`/api/catalog/entities/by-name/...` and
//! `/api/catalog/entities/by-query?filter=...`, with a static token), following Backstage's documented responses, with request counters,
//! served over http or over https behind a private CA ([`BackstageDouble::start_tls`]);
//! switches for what a broken or hostile issuer publishes (raw JWKs, a plain-http
//! `jwks_uri`, an outage); and the catalog entities it serves ([`group`],
//! [`user`], [`component`], [`annotated`], [`default_entities`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::process::spawn_router;
use super::tls::{serve_tls, TestCa};
use super::tokens::{now, sign_jwt, Signer, TestKey};

pub const STATIC_CATALOG_TOKEN: &str = "catalog-static-token-3f9a7c1e5b";

#[derive(Default)]
pub struct Counters {
    pub discovery: AtomicUsize,
    pub jwks: AtomicUsize,
    pub catalog: AtomicUsize,
}

struct BackstageState {
    base_url: Mutex<String>,
    keys: Mutex<Vec<TestKey>>,
    /// Published as they are, after `keys`.
    raw_keys: Mutex<Vec<Value>>,
    /// Replaces the `jwks_uri` discovery names.
    jwks_uri: Mutex<Option<String>>,
    /// Discovery and JWKS answer 503, as an auth backend that is down.
    keys_unavailable: AtomicBool,
    entities: HashMap<(String, String, String), Value>,
    counters: Arc<Counters>,
}

/// Backstage's auth backend and catalog, as the broker sees them over HTTP.
pub struct BackstageDouble {
    pub url: String,
    /// The same double over plain http (equal to `url` unless started with TLS).
    pub plain_url: String,
    pub key: TestKey,
    state: Arc<BackstageState>,
}

impl BackstageDouble {
    pub async fn start() -> BackstageDouble {
        Self::start_with(default_entities()).await
    }

    pub async fn start_with(entities: Vec<Value>) -> BackstageDouble {
        Self::start_on(entities, None).await
    }

    /// Over https (`https://localhost:PORT`) with a certificate `ca` signed;
    /// [`BackstageDouble::plain_url`] serves the same over http.
    pub async fn start_tls(ca: &TestCa) -> BackstageDouble {
        Self::start_on(default_entities(), Some(ca)).await
    }

    async fn start_on(entities: Vec<Value>, tls: Option<&TestCa>) -> BackstageDouble {
        let key = TestKey::generate("53dedcff-a84a-4301-b1b5-b48fdb0acb5c");
        let state = Arc::new(BackstageState {
            base_url: Mutex::new(String::new()),
            keys: Mutex::new(vec![key.clone()]),
            raw_keys: Mutex::new(Vec::new()),
            jwks_uri: Mutex::new(None),
            keys_unavailable: AtomicBool::new(false),
            entities: entities
                .into_iter()
                .map(|e| {
                    let kind = e["kind"].as_str().unwrap().to_ascii_lowercase();
                    let namespace = e["metadata"]["namespace"]
                        .as_str()
                        .unwrap_or("default")
                        .to_ascii_lowercase();
                    let name = e["metadata"]["name"].as_str().unwrap().to_ascii_lowercase();
                    ((kind, namespace, name), e)
                })
                .collect(),
            counters: Arc::new(Counters::default()),
        });
        let router = Router::new()
            .route("/api/auth/.well-known/openid-configuration", get(discovery))
            .route("/api/auth/.well-known/jwks.json", get(jwks))
            .route(
                "/api/catalog/entities/by-name/{kind}/{namespace}/{name}",
                get(entity_by_name),
            )
            .route("/api/catalog/entities/by-query", get(entities_by_query))
            .with_state(state.clone());
        let plain_url = spawn_router(router.clone()).await;
        let url = match tls {
            Some(ca) => serve_tls(router, ca).await,
            None => plain_url.clone(),
        };
        *state.base_url.lock().unwrap() = url.clone();
        BackstageDouble {
            url,
            plain_url,
            key,
            state,
        }
    }

    pub fn issuer(&self) -> String {
        format!("{}/api/auth", self.url)
    }

    pub fn counters(&self) -> &Counters {
        &self.state.counters
    }

    pub fn catalog_hits(&self) -> usize {
        self.counters().catalog.load(Ordering::SeqCst)
    }

    pub fn key_fetches(&self) -> usize {
        self.counters().discovery.load(Ordering::SeqCst)
            + self.counters().jwks.load(Ordering::SeqCst)
    }

    /// Publishes an additional key, as Backstage does when it rotates.
    pub fn publish_key(&self, key: TestKey) {
        self.state.keys.lock().unwrap().push(key);
    }

    /// Publishes a JWK exactly as given (odd `alg`/`use`, a repeated kid, ...).
    pub fn publish_raw_jwk(&self, jwk: Value) {
        self.state.raw_keys.lock().unwrap().push(jwk);
    }

    /// Makes discovery name this `jwks_uri` instead of its own.
    pub fn set_jwks_uri(&self, uri: &str) {
        *self.state.jwks_uri.lock().unwrap() = Some(uri.to_owned());
    }

    /// Discovery and JWKS answer 503 while `down`.
    pub fn set_keys_unavailable(&self, down: bool) {
        self.state.keys_unavailable.store(down, Ordering::SeqCst);
    }

    /// Claims of a Backstage user identity token. Recent Backstage versions no
    /// longer include `ent`; the broker must not need it.
    pub fn user_claims(&self, subject: &str) -> Value {
        let now = now();
        json!({
            "iss": self.issuer(),
            "sub": subject,
            "aud": "backstage",
            "iat": now,
            "exp": now + 3600,
            "uip": "user-identity-proof-not-used-by-stackpass",
        })
    }

    pub fn user_header(&self) -> Value {
        json!({ "alg": "ES256", "kid": self.key.kid, "typ": "vnd.backstage.user" })
    }

    pub fn user_token(&self, subject: &str) -> String {
        sign_jwt(
            &self.user_header(),
            &self.user_claims(subject),
            Signer::Es256(&self.key),
        )
    }
}

async fn discovery(State(state): State<Arc<BackstageState>>) -> Response {
    state.counters.discovery.fetch_add(1, Ordering::SeqCst);
    if state.keys_unavailable.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let base = format!("{}/api/auth", state.base_url.lock().unwrap());
    let jwks_uri = state
        .jwks_uri
        .lock()
        .unwrap()
        .clone()
        .unwrap_or_else(|| format!("{base}/.well-known/jwks.json"));
    // Field for field what a real Backstage auth backend serves (see
    // tests/backstage-real/README.md for the recording this follows).
    Json(json!({
        "issuer": base,
        "token_endpoint": format!("{base}/v1/token"),
        "userinfo_endpoint": format!("{base}/v1/userinfo"),
        "jwks_uri": jwks_uri,
        "response_types_supported": ["code", "id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512", "EdDSA"],
        "scopes_supported": ["openid"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "claims_supported": ["sub", "ent"],
        "grant_types_supported": ["authorization_code"],
        "authorization_endpoint": format!("{base}/v1/authorize"),
        "code_challenge_methods_supported": ["S256", "plain"],
    }))
    .into_response()
}

async fn jwks(State(state): State<Arc<BackstageState>>) -> Response {
    state.counters.jwks.fetch_add(1, Ordering::SeqCst);
    if state.keys_unavailable.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let mut keys: Vec<Value> = state
        .keys
        .lock()
        .unwrap()
        .iter()
        .map(TestKey::jwk)
        .collect();
    keys.extend(state.raw_keys.lock().unwrap().iter().cloned());
    Json(json!({ "keys": keys })).into_response()
}

fn backstage_error(status: StatusCode, name: &str, message: &str, url: &str) -> Response {
    (
        status,
        Json(json!({
            "error": { "name": name, "message": message },
            "request": { "method": "GET", "url": url },
            "response": { "statusCode": status.as_u16() },
        })),
    )
        .into_response()
}

/// The catalog's static-token check; `None` when the caller may read.
fn unauthorized(headers: &HeaderMap, url: &str) -> Option<Response> {
    match headers.get("authorization").and_then(|v| v.to_str().ok()) {
        None => Some(backstage_error(
            StatusCode::UNAUTHORIZED,
            "AuthenticationError",
            "Missing credentials",
            url,
        )),
        Some(value) if value != format!("Bearer {STATIC_CATALOG_TOKEN}") => Some(backstage_error(
            StatusCode::UNAUTHORIZED,
            "AuthenticationError",
            "Illegal token",
            url,
        )),
        Some(_) => None,
    }
}

/// Backstage's search table: every leaf of the entity as a lower-case
/// `dotted.key` → lower-case value pair; annotation keys keep their dots and
/// slashes (`metadata.annotations.github.com/project-slug`).
fn flatten(prefix: &str, value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(fields) => {
            for (key, value) in fields {
                let key = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&key, value, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|item| flatten(prefix, item, out)),
        Value::String(text) => out.push((prefix.to_ascii_lowercase(), text.to_ascii_lowercase())),
        Value::Bool(_) | Value::Number(_) => {
            out.push((prefix.to_ascii_lowercase(), value.to_string()))
        }
        Value::Null => {}
    }
}

/// `GET /entities/by-query`: each `filter` parameter is a set of
/// comma-separated `key=value` conditions that must all hold (compared
/// case-insensitively); several `filter` parameters are alternatives.
/// Answers `{ items, totalItems, pageInfo }`.
async fn entities_by_query(
    State(state): State<Arc<BackstageState>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    state.counters.catalog.fetch_add(1, Ordering::SeqCst);
    let query = query.unwrap_or_default();
    let url = format!("/entities/by-query?{query}");
    if let Some(refusal) = unauthorized(&headers, &url) {
        return refusal;
    }
    let mut filters: Vec<Vec<(String, String)>> = Vec::new();
    let mut limit = usize::MAX;
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "filter" => filters.push(
                value
                    .split(',')
                    .map(|condition| match condition.split_once('=') {
                        Some((k, v)) => {
                            (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase())
                        }
                        None => (condition.trim().to_ascii_lowercase(), String::new()),
                    })
                    .collect(),
            ),
            "limit" => limit = value.parse().unwrap_or(usize::MAX),
            _ => {}
        }
    }
    let mut items: Vec<Value> = state
        .entities
        .values()
        .filter(|entity| {
            let mut pairs = Vec::new();
            flatten("", entity, &mut pairs);
            filters.is_empty()
                || filters.iter().any(|conditions| {
                    conditions.iter().all(|(k, v)| {
                        pairs
                            .iter()
                            .any(|(pk, pv)| pk == k && (v.is_empty() || pv == v))
                    })
                })
        })
        .cloned()
        .collect();
    let total = items.len();
    items.truncate(limit);
    Json(json!({ "items": items, "totalItems": total, "pageInfo": {} })).into_response()
}

async fn entity_by_name(
    State(state): State<Arc<BackstageState>>,
    UrlPath((kind, namespace, name)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    state.counters.catalog.fetch_add(1, Ordering::SeqCst);
    // Backstage reports the URL relative to the catalog router.
    let url = format!("/entities/by-name/{kind}/{namespace}/{name}");
    if let Some(refusal) = unauthorized(&headers, &url) {
        return refusal;
    }
    let key = (
        kind.to_ascii_lowercase(),
        namespace.to_ascii_lowercase(),
        name.to_ascii_lowercase(),
    );
    match state.entities.get(&key) {
        Some(entity) => Json(entity.clone()).into_response(),
        None => backstage_error(
            StatusCode::NOT_FOUND,
            "NotFoundError",
            &format!(
                "No entity named '{name}' found, with kind '{kind}' in namespace '{namespace}'"
            ),
            &url,
        ),
    }
}

/// Relations as the catalog serves them: type and a full lower-case `targetRef`.
fn relation(kind: &str, target: &str) -> Value {
    json!({ "type": kind, "targetRef": target.to_ascii_lowercase() })
}

fn metadata(name: &str) -> Value {
    json!({
        "namespace": "default",
        "name": name,
        "uid": uuid::Uuid::new_v4().to_string(),
        "etag": "f18cc47c103a8ab1210147aaf2e48eef683b7288",
        "annotations": { "backstage.io/managed-by-location": "file:/catalog/catalog-info.yaml" },
    })
}

pub fn group(name: &str, members: &[&str]) -> Value {
    json!({
        "apiVersion": "backstage.io/v1alpha1",
        "kind": "Group",
        "metadata": metadata(name),
        "spec": { "type": "team", "children": [] },
        "relations": members.iter().map(|m| relation("hasMember", &format!("user:default/{m}"))).collect::<Vec<_>>(),
    })
}

pub fn user(name: &str, groups: &[&str]) -> Value {
    json!({
        "apiVersion": "backstage.io/v1alpha1",
        "kind": "User",
        "metadata": metadata(name),
        "spec": { "profile": { "displayName": name }, "memberOf": groups },
        "relations": groups.iter().map(|g| relation("memberOf", &format!("group:default/{g}"))).collect::<Vec<_>>(),
    })
}

pub fn component(name: &str, owner: &str) -> Value {
    json!({
        "apiVersion": "backstage.io/v1alpha1",
        "kind": "Component",
        "metadata": metadata(name),
        "spec": { "type": "service", "lifecycle": "production", "owner": owner },
        "relations": [relation("ownedBy", &format!("group:default/{owner}"))],
    })
}

/// `entity` with these annotations added (as a catalog-info.yaml sets them).
pub fn annotated(mut entity: Value, annotations: &[(&str, &str)]) -> Value {
    for (key, value) in annotations {
        entity["metadata"]["annotations"][*key] = json!(value);
    }
    entity
}

/// jane and alex are in team-payments (owns payments); bob is in team-search
/// (owns search); sam is in security, the auditor group.
pub fn default_entities() -> Vec<Value> {
    vec![
        group("team-payments", &["jane", "alex"]),
        group("team-search", &["bob"]),
        group("security", &["sam"]),
        user("jane", &["team-payments"]),
        user("alex", &["team-payments"]),
        user("bob", &["team-search"]),
        user("sam", &["security"]),
        component("payments", "team-payments"),
        component("search", "team-search"),
    ]
}
