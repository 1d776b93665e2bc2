//! Where verification keys come from: an issuer's published JWKS (found through
//! OIDC discovery, cached, refetched on rotation) or a static key for the local
//! development issuer.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use url::Url;

use crate::http_client;

const MAX_DISCOVERY_BYTES: usize = 64 * 1024;
const MAX_JWKS_BYTES: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum KeySourceError {
    #[error("no published key matches the token's kid and algorithm")]
    UnknownKey,
    #[error("{0}")]
    Unavailable(String),
}

/// A set of verification keys for one issuer.
#[async_trait::async_trait]
pub trait KeySource: Send + Sync {
    async fn key(&self, kid: &str, alg: Algorithm) -> Result<DecodingKey, KeySourceError>;
}

#[derive(Clone)]
struct CachedKey {
    key: DecodingKey,
    /// The JWK's own `alg`, when it names one; a key is only used for that algorithm.
    alg: Option<Algorithm>,
}

impl CachedKey {
    fn usable_for(&self, alg: Algorithm) -> Option<DecodingKey> {
        match self.alg {
            Some(own) if own != alg => None,
            _ => Some(self.key.clone()),
        }
    }
}

/// How often and how patiently keys are fetched from an issuer.
#[derive(Debug, Clone, Copy)]
pub struct FetchSettings {
    /// How long fetched keys are trusted before they are fetched again.
    pub refresh_interval: Duration,
    /// An unknown `kid` triggers a refetch at most this often, so a flood of
    /// forged tokens cannot become a flood of requests to the issuer.
    pub min_refetch_interval: Duration,
    pub timeout: Duration,
}

/// Keys published by an OIDC issuer (Backstage's auth backend included).
pub struct RemoteJwks {
    http: reqwest::Client,
    discovery_url: Url,
    issuer: String,
    refresh_interval: Duration,
    min_refetch_interval: Duration,
    cache: RwLock<KeyCache>,
    /// Serializes fetches and remembers when the last one was attempted.
    last_attempt: tokio::sync::Mutex<Option<Instant>>,
}

#[derive(Default)]
struct KeyCache {
    keys: HashMap<String, CachedKey>,
    fetched_at: Option<Instant>,
}

#[derive(Deserialize)]
struct DiscoveryDocument {
    issuer: String,
    jwks_uri: Url,
}

#[derive(Deserialize)]
struct RawKeySet {
    keys: Vec<serde_json::Value>,
}

impl RemoteJwks {
    pub fn new(discovery_url: Url, issuer: String, settings: FetchSettings) -> Self {
        RemoteJwks {
            http: http_client::build(settings.timeout),
            discovery_url,
            issuer,
            refresh_interval: settings.refresh_interval,
            min_refetch_interval: settings.min_refetch_interval,
            cache: RwLock::new(KeyCache::default()),
            last_attempt: tokio::sync::Mutex::new(None),
        }
    }

    fn cached(&self, kid: &str, alg: Algorithm, require_fresh: bool) -> Option<DecodingKey> {
        let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
        let fresh = cache
            .fetched_at
            .is_some_and(|t| t.elapsed() < self.refresh_interval);
        if require_fresh && !fresh {
            return None;
        }
        cache.keys.get(kid).and_then(|k| k.usable_for(alg))
    }

    async fn fetch(&self) -> Result<HashMap<String, CachedKey>, KeySourceError> {
        let unavailable = |e: http_client::FetchError| KeySourceError::Unavailable(e.to_string());
        let discovery: DiscoveryDocument = http_client::get_json(
            self.http.get(self.discovery_url.clone()),
            self.discovery_url.as_str(),
            MAX_DISCOVERY_BYTES,
        )
        .await
        .map_err(unavailable)?
        .ok_or_else(|| {
            KeySourceError::Unavailable(format!("{} answered 404", self.discovery_url))
        })?;
        // OpenID Connect Discovery 1.0, section 4.3: the document must name the issuer
        // we asked about, or its keys are not that issuer's keys.
        if discovery.issuer != self.issuer {
            return Err(KeySourceError::Unavailable(format!(
                "discovery document at {} names issuer {:?}, expected {:?}",
                self.discovery_url, discovery.issuer, self.issuer
            )));
        }
        if !matches!(discovery.jwks_uri.scheme(), "https" | "http") {
            return Err(KeySourceError::Unavailable(
                "jwks_uri is not an http(s) URL".into(),
            ));
        }
        let raw: RawKeySet = http_client::get_json(
            self.http.get(discovery.jwks_uri.clone()),
            discovery.jwks_uri.as_str(),
            MAX_JWKS_BYTES,
        )
        .await
        .map_err(unavailable)?
        .ok_or_else(|| {
            KeySourceError::Unavailable(format!("{} answered 404", discovery.jwks_uri))
        })?;
        Ok(parse_key_set(raw.keys))
    }
}

/// Keeps every usable signing key and skips the rest (encryption keys, key types
/// this build cannot use), so one odd key does not take the whole issuer down.
fn parse_key_set(keys: Vec<serde_json::Value>) -> HashMap<String, CachedKey> {
    let mut parsed = HashMap::new();
    for value in keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        if jwk
            .common
            .public_key_use
            .as_ref()
            .is_some_and(|u| *u != jsonwebtoken::jwk::PublicKeyUse::Signature)
        {
            continue;
        }
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        let alg = jwk
            .common
            .key_algorithm
            .and_then(|a| serde_json::to_value(a).ok())
            .and_then(|v| v.as_str().and_then(|s| Algorithm::from_str(s).ok()));
        parsed.insert(kid, CachedKey { key, alg });
    }
    parsed
}

#[async_trait::async_trait]
impl KeySource for RemoteJwks {
    async fn key(&self, kid: &str, alg: Algorithm) -> Result<DecodingKey, KeySourceError> {
        if let Some(key) = self.cached(kid, alg, true) {
            return Ok(key);
        }
        let mut last_attempt = self.last_attempt.lock().await;
        // Another request may have refreshed the keys while this one waited.
        if let Some(key) = self.cached(kid, alg, true) {
            return Ok(key);
        }
        let may_fetch = last_attempt.is_none_or(|t| t.elapsed() >= self.min_refetch_interval);
        let mut fetch_error = None;
        if may_fetch {
            *last_attempt = Some(Instant::now());
            match self.fetch().await {
                Ok(keys) => {
                    let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
                    *cache = KeyCache {
                        keys,
                        fetched_at: Some(Instant::now()),
                    };
                }
                Err(e) => {
                    tracing::warn!(issuer = %self.issuer, error = %e, "could not refresh the issuer's signing keys");
                    fetch_error = Some(e);
                }
            }
        }
        // Keys that are past their refresh interval still verify while the issuer is
        // unreachable: a short Backstage outage must not log everyone out.
        if let Some(key) = self.cached(kid, alg, false) {
            return Ok(key);
        }
        let have_keys = !self
            .cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys
            .is_empty();
        match fetch_error {
            Some(e) if !have_keys => Err(e),
            None if !have_keys && !may_fetch => Err(KeySourceError::Unavailable(
                "the issuer's keys could not be fetched recently; retrying shortly".into(),
            )),
            _ => Err(KeySourceError::UnknownKey),
        }
    }
}

/// One fixed ES256 key: the development issuer's public key.
pub struct StaticKeys {
    kid: String,
    key: DecodingKey,
}

impl StaticKeys {
    pub fn new(kid: String, key: DecodingKey) -> Self {
        StaticKeys { kid, key }
    }
}

#[async_trait::async_trait]
impl KeySource for StaticKeys {
    async fn key(&self, kid: &str, alg: Algorithm) -> Result<DecodingKey, KeySourceError> {
        if kid == self.kid && alg == Algorithm::ES256 {
            Ok(self.key.clone())
        } else {
            Err(KeySourceError::UnknownKey)
        }
    }
}
