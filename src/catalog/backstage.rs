//! The Backstage catalog over its REST API
//! (`GET /api/catalog/entities/by-name/{kind}/{namespace}/{name}`), authenticated
//! with a static external-access token and cached with a bounded TTL. Its URL's
//! scheme (https unless loopback or `insecure_allow_http`) is checked when the
//! configuration loads, and its client trusts the CAs configured for it.
//!
//! Owners come from the `ownedBy` relation (falling back to `spec.owner`), groups
//! from `memberOf` relations (falling back to `spec.memberOf`): relations are what
//! the catalog's processors resolved, the spec is what the YAML said.

use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::{Catalog, CatalogError, EntityRef};
use crate::http_client::{self, FetchError};

const MAX_ENTITY_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone)]
pub struct BackstageCatalogSettings {
    pub base_url: Url,
    pub token: Option<SecretString>,
    pub cache_ttl: Duration,
    pub cache_capacity: u64,
    /// Built by startup with the catalog's timeout and trusted CAs.
    pub http: reqwest::Client,
}

pub struct BackstageCatalog {
    http: reqwest::Client,
    base_url: Url,
    token: Option<SecretString>,
    owners: Cache<EntityRef, Option<EntityRef>>,
    groups: Cache<EntityRef, Vec<EntityRef>>,
}

#[derive(serde::Deserialize)]
struct Entity {
    #[serde(default)]
    metadata: Metadata,
    #[serde(default)]
    spec: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    relations: Vec<Relation>,
}

#[derive(serde::Deserialize, Default)]
struct Metadata {
    namespace: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Relation {
    #[serde(rename = "type")]
    kind: String,
    target_ref: String,
}

impl BackstageCatalog {
    pub fn new(settings: BackstageCatalogSettings) -> Self {
        BackstageCatalog {
            http: settings.http,
            base_url: settings.base_url,
            token: settings.token,
            owners: Cache::builder()
                .max_capacity(settings.cache_capacity)
                .time_to_live(settings.cache_ttl)
                .build(),
            groups: Cache::builder()
                .max_capacity(settings.cache_capacity)
                .time_to_live(settings.cache_ttl)
                .build(),
        }
    }

    fn entity_url(&self, entity: &EntityRef) -> Url {
        let mut url = self.base_url.clone();
        url.path_segments_mut()
            .expect("validated as an http(s) URL at start")
            .pop_if_empty()
            .extend(["api", "catalog", "entities", "by-name"])
            .extend([entity.kind(), entity.namespace(), entity.name()]);
        url
    }

    async fn fetch(&self, entity: &EntityRef) -> Result<Option<Entity>, CatalogError> {
        let url = self.entity_url(entity);
        let mut request = self.http.get(url.clone());
        if let Some(token) = &self.token {
            request = request.bearer_auth(token.expose_secret());
        }
        http_client::get_json(request, url.as_str(), MAX_ENTITY_BYTES)
            .await
            .map_err(|e| match e {
                FetchError::Status {
                    status: status @ (401 | 403),
                    ..
                } => CatalogError::Unauthorized(status),
                FetchError::InvalidJson { message, .. } => CatalogError::InvalidResponse {
                    entity: entity.to_string(),
                    message,
                },
                FetchError::TooLarge { limit, .. } => CatalogError::InvalidResponse {
                    entity: entity.to_string(),
                    message: format!("the entity is larger than {limit} bytes"),
                },
                other => CatalogError::Unavailable(other.to_string()),
            })
    }

    async fn fetch_owner(&self, component: &EntityRef) -> Result<Option<EntityRef>, CatalogError> {
        let Some(entity) = self.fetch(component).await? else {
            return Ok(None);
        };
        let namespace = entity
            .metadata
            .namespace
            .as_deref()
            .unwrap_or(component.namespace());
        let invalid = |e: super::EntityRefError| CatalogError::InvalidResponse {
            entity: component.to_string(),
            message: e.to_string(),
        };
        if let Some(relation) = entity.relations.iter().find(|r| r.kind == "ownedBy") {
            return EntityRef::parse(&relation.target_ref, Some("group"), namespace)
                .map(Some)
                .map_err(invalid);
        }
        match entity.spec.get("owner").and_then(|v| v.as_str()) {
            Some(owner) => EntityRef::parse(owner, Some("group"), namespace)
                .map(Some)
                .map_err(invalid),
            None => Ok(None),
        }
    }

    async fn fetch_groups(&self, member: &EntityRef) -> Result<Vec<EntityRef>, CatalogError> {
        let Some(entity) = self.fetch(member).await? else {
            return Ok(Vec::new());
        };
        let namespace = entity
            .metadata
            .namespace
            .as_deref()
            .unwrap_or(member.namespace());
        let from_relations: Vec<&str> = entity
            .relations
            .iter()
            .filter(|r| r.kind == "memberOf")
            .map(|r| r.target_ref.as_str())
            .collect();
        let raw: Vec<&str> = if from_relations.is_empty() {
            entity
                .spec
                .get("memberOf")
                .and_then(|v| v.as_array())
                .map(|groups| groups.iter().filter_map(|g| g.as_str()).collect())
                .unwrap_or_default()
        } else {
            from_relations
        };
        let mut groups = Vec::with_capacity(raw.len());
        for group in raw {
            // One malformed reference in someone's YAML must not lock them out of
            // every other group, so skip it loudly instead of failing the lookup.
            match EntityRef::parse(group, Some("group"), namespace) {
                Ok(group) => groups.push(group),
                Err(e) => {
                    tracing::warn!(member = %member, error = %e, "ignoring malformed group reference in the catalog")
                }
            }
        }
        groups.sort();
        groups.dedup();
        Ok(groups)
    }
}

#[async_trait::async_trait]
impl Catalog for BackstageCatalog {
    async fn owner_of(&self, component: &EntityRef) -> Result<Option<EntityRef>, CatalogError> {
        self.owners
            .try_get_with_by_ref(component, self.fetch_owner(component))
            .await
            .map_err(unshare)
    }

    async fn groups_of(&self, member: &EntityRef) -> Result<Vec<EntityRef>, CatalogError> {
        self.groups
            .try_get_with_by_ref(member, self.fetch_groups(member))
            .await
            .map_err(unshare)
    }
}

/// moka shares one error between all callers that waited on the same lookup.
fn unshare(error: Arc<CatalogError>) -> CatalogError {
    Arc::try_unwrap(error).unwrap_or_else(|shared| (*shared).clone())
}
