//! The Backstage catalog over its REST API
//! (`GET /api/catalog/entities/by-name/{kind}/{namespace}/{name}`, and
//! `GET /api/catalog/entities/by-query?filter=kind=…,metadata.annotations.KEY=VALUE`
//! to find machine callers' components by annotation), authenticated
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

use super::{AnnotatedEntity, Catalog, CatalogError, EntityRef};
use crate::http_client::{self, FetchError};
use crate::metrics::{CATALOG_CACHE_HITS, CATALOG_FETCHES};

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
    annotated: Cache<(String, String, String), Vec<AnnotatedEntity>>,
}

/// `GET /entities/by-query`'s answer (`pageInfo` is not followed: a lookup
/// asks for two items, and two already mean "ambiguous").
#[derive(serde::Deserialize)]
struct QueryPage {
    items: Vec<QueriedEntity>,
}

#[derive(serde::Deserialize)]
struct QueriedEntity {
    kind: String,
    metadata: QueriedMetadata,
}

#[derive(serde::Deserialize)]
struct QueriedMetadata {
    name: String,
    namespace: Option<String>,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
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
            annotated: Cache::builder()
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
        self.get(self.entity_url(entity), &entity.to_string()).await
    }

    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        url: Url,
        entity: &str,
    ) -> Result<Option<T>, CatalogError> {
        let mut request = self.http.get(url.clone());
        if let Some(token) = &self.token {
            request = request.bearer_auth(token.expose_secret());
        }
        let fetched = http_client::get_json(request, url.as_str(), MAX_ENTITY_BYTES).await;
        let result = match &fetched {
            Ok(Some(_)) => "ok",
            Ok(None) => "not_found",
            Err(_) => "error",
        };
        metrics::counter!(CATALOG_FETCHES, "result" => result).increment(1);
        fetched.map_err(|e| match e {
            FetchError::Status {
                status: status @ (401 | 403),
                ..
            } => CatalogError::Unauthorized(status),
            FetchError::InvalidJson { message, .. } => CatalogError::InvalidResponse {
                entity: entity.to_owned(),
                message,
            },
            FetchError::TooLarge { limit, .. } => CatalogError::InvalidResponse {
                entity: entity.to_owned(),
                message: format!("the entity is larger than {limit} bytes"),
            },
            other => CatalogError::Unavailable(other.to_string()),
        })
    }

    async fn fetch_annotated(
        &self,
        kind: &str,
        key: &str,
        value: &str,
    ) -> Result<Vec<AnnotatedEntity>, CatalogError> {
        let what = format!("{kind} with annotation {key}={value}");
        let mut url = self.base_url.clone();
        url.path_segments_mut()
            .expect("validated as an http(s) URL at start")
            .pop_if_empty()
            .extend(["api", "catalog", "entities", "by-query"]);
        url.query_pairs_mut()
            .append_pair(
                "filter",
                &format!("kind={kind},metadata.annotations.{key}={value}"),
            )
            .append_pair("limit", "2");
        let Some(page) = self.get::<QueryPage>(url, &what).await? else {
            return Ok(Vec::new());
        };
        page.items
            .into_iter()
            .map(|item| {
                let namespace = item.metadata.namespace.as_deref().unwrap_or("default");
                EntityRef::parse(
                    &format!("{}:{}/{}", item.kind, namespace, item.metadata.name),
                    None,
                    namespace,
                )
                .map(|reference| AnnotatedEntity {
                    reference,
                    annotations: item.metadata.annotations,
                })
                .map_err(|e| CatalogError::InvalidResponse {
                    entity: what.clone(),
                    message: e.to_string(),
                })
            })
            .collect()
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
            .entry_by_ref(component)
            .or_try_insert_with(self.fetch_owner(component))
            .await
            .map(counted)
            .map_err(unshare)
    }

    async fn groups_of(&self, member: &EntityRef) -> Result<Vec<EntityRef>, CatalogError> {
        self.groups
            .entry_by_ref(member)
            .or_try_insert_with(self.fetch_groups(member))
            .await
            .map(counted)
            .map_err(unshare)
    }

    async fn annotated(
        &self,
        kind: &str,
        key: &str,
        value: &str,
    ) -> Result<Vec<AnnotatedEntity>, CatalogError> {
        // The filter syntax separates conditions with ',' and key from value
        // with '=': a value holding either could add a condition of its own.
        if [kind, key, value]
            .iter()
            .any(|part| part.is_empty() || part.contains([',', '=']))
        {
            return Ok(Vec::new());
        }
        let cache_key = (
            kind.to_ascii_lowercase(),
            key.to_owned(),
            value.to_ascii_lowercase(),
        );
        self.annotated
            .entry(cache_key)
            .or_try_insert_with(self.fetch_annotated(kind, key, value))
            .await
            .map(counted)
            .map_err(unshare)
    }
}

/// A cached answer (one this lookup did not fetch) counts as a cache hit.
fn counted<K, V>(entry: moka::Entry<K, V>) -> V {
    if !entry.is_fresh() {
        metrics::counter!(CATALOG_CACHE_HITS).increment(1);
    }
    entry.into_value()
}

/// moka shares one error between all callers that waited on the same lookup.
fn unshare(error: Arc<CatalogError>) -> CatalogError {
    Arc::try_unwrap(error).unwrap_or_else(|shared| (*shared).clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value that would add a condition of its own to the filter is never
    /// sent: it cannot match, so nothing is asked (the catalog here is a
    /// closed port, which any request would fail on).
    #[tokio::test]
    async fn annotation_values_cannot_extend_the_filter() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let catalog = BackstageCatalog::new(BackstageCatalogSettings {
            base_url: Url::parse(&url).unwrap(),
            token: None,
            cache_ttl: Duration::from_secs(1),
            cache_capacity: 10,
            http: reqwest::Client::new(),
        });
        for value in ["acme/payments,kind=user", "a=b", ""] {
            let found = catalog
                .annotated("component", "github.com/project-slug", value)
                .await
                .unwrap();
            assert!(found.is_empty(), "{value}");
        }
        assert!(matches!(
            catalog
                .annotated("component", "github.com/project-slug", "acme/payments")
                .await,
            Err(CatalogError::Unavailable(_))
        ));
    }
}
