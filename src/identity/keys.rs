//! Where verification keys come from: an issuer's published JWKS (found through
//! OIDC discovery, cached, refetched on rotation) or a static key for the local
//! development issuer. Only keys fit for verifying signatures are kept, a kid
//! published twice names no key, a `jwks_uri` may not downgrade to plain http,
//! and cached keys outlive failed refreshes only up to a maximum age.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use url::Url;

use crate::http_client;
use crate::metrics::{JWKS_CACHE_HITS, JWKS_FETCHES};

const MAX_DISCOVERY_BYTES: usize = 64 * 1024;
const MAX_JWKS_BYTES: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum KeySourceError {
    #[error("no published key matches the token's kid and algorithm")]
    UnknownKey,
    #[error("the issuer publishes more than one key under this kid")]
    AmbiguousKey,
    #[error("{0}")]
    Unavailable(String),
}

/// A set of verification keys for one issuer.
///
/// A key is handed out shared: the same `Arc` for as long as the key set it
/// came from is the one in force, and a new one once the keys are fetched
/// again. So [`Arc::ptr_eq`] with a key handed out earlier tells a caller
/// that the key it used then is still published now (see `verified.rs`).
#[async_trait::async_trait]
pub trait KeySource: Send + Sync {
    async fn key(&self, kid: &str, alg: Algorithm) -> Result<Arc<DecodingKey>, KeySourceError>;
}

#[derive(Clone)]
struct CachedKey {
    key: Arc<DecodingKey>,
    /// The JWK's own `alg`, when it names one; a key is only used for that algorithm.
    alg: Option<Algorithm>,
}

impl CachedKey {
    fn usable_for(&self, alg: Algorithm) -> Option<Arc<DecodingKey>> {
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
    /// How long keys keep verifying while every refresh fails; past it the
    /// issuer is unavailable rather than trusted on keys it may have revoked.
    pub max_key_age: Duration,
    pub timeout: Duration,
}

/// Keys published by an OIDC issuer (Backstage's auth backend included).
pub struct RemoteJwks {
    http: reqwest::Client,
    discovery_url: Url,
    issuer: String,
    insecure_allow_http: bool,
    refresh_interval: Duration,
    min_refetch_interval: Duration,
    max_key_age: Duration,
    cache: RwLock<KeyCache>,
    /// Serializes fetches and remembers when the last one was attempted.
    last_attempt: tokio::sync::Mutex<Option<Instant>>,
}

#[derive(Default)]
struct KeyCache {
    keys: HashMap<String, CachedKey>,
    /// Kids published more than once: no key under them is trusted, since the
    /// broker cannot tell which one the issuer meant.
    ambiguous: HashSet<String>,
    fetched_at: Option<Instant>,
}

/// What the cache holds for a kid.
enum Cached {
    Key(Arc<DecodingKey>),
    Ambiguous,
    Missing,
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
    /// `http` trusts the CAs configured for this issuer; `insecure_allow_http`
    /// lets a discovery document name a plain-http `jwks_uri` off loopback.
    pub fn new(
        discovery_url: Url,
        issuer: String,
        settings: FetchSettings,
        http: reqwest::Client,
        insecure_allow_http: bool,
    ) -> Self {
        RemoteJwks {
            http,
            discovery_url,
            issuer,
            insecure_allow_http,
            refresh_interval: settings.refresh_interval,
            min_refetch_interval: settings.min_refetch_interval,
            max_key_age: settings.max_key_age,
            cache: RwLock::new(KeyCache::default()),
            last_attempt: tokio::sync::Mutex::new(None),
        }
    }

    /// `max_age`: keys fetched longer ago than this are not looked at.
    fn cached(&self, kid: &str, alg: Algorithm, max_age: Duration) -> Cached {
        let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
        if cache.fetched_at.is_none_or(|t| t.elapsed() >= max_age) {
            return Cached::Missing;
        }
        if cache.ambiguous.contains(kid) {
            return Cached::Ambiguous;
        }
        match cache.keys.get(kid).and_then(|k| k.usable_for(alg)) {
            Some(key) => Cached::Key(key),
            None => Cached::Missing,
        }
    }

    async fn fetch(&self) -> Result<KeyCache, KeySourceError> {
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
        http_client::check_learned_scheme(
            &discovery.jwks_uri,
            &self.discovery_url,
            self.insecure_allow_http,
        )
        .map_err(|e| KeySourceError::Unavailable(format!("jwks_uri refused: {e}")))?;
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

/// Keeps every usable signing key and skips the rest (encryption keys, keys for
/// algorithms that do not sign, key types this build cannot use), so one odd key
/// does not take the whole issuer down. A kid published twice is kept apart as
/// ambiguous, whatever the two entries hold.
fn parse_key_set(keys: Vec<serde_json::Value>) -> KeyCache {
    let mut seen = HashSet::new();
    let mut ambiguous = HashSet::new();
    for kid in keys.iter().filter_map(|k| k.get("kid")?.as_str()) {
        if !seen.insert(kid) {
            ambiguous.insert(kid.to_owned());
        }
    }
    let mut parsed = HashMap::new();
    for value in keys {
        if !fits_signature_verification(&value) {
            continue;
        }
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        if ambiguous.contains(&kid) {
            continue;
        }
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        let alg = jwk
            .common
            .key_algorithm
            .and_then(|a| serde_json::to_value(a).ok())
            .and_then(|v| v.as_str().and_then(|s| Algorithm::from_str(s).ok()));
        parsed.insert(
            kid,
            CachedKey {
                key: Arc::new(key),
                alg,
            },
        );
    }
    KeyCache {
        keys: parsed,
        ambiguous,
        fetched_at: Some(Instant::now()),
    }
}

/// RFC 7517 section 4: a key marked for another `use`, restricted to other
/// `key_ops`, or bound to an `alg` that is not an asymmetric signature
/// algorithm is not a token-verification key, whatever else it holds.
fn fits_signature_verification(jwk: &serde_json::Value) -> bool {
    if jwk.get("use").is_some_and(|u| u.as_str() != Some("sig")) {
        return false;
    }
    if let Some(ops) = jwk.get("key_ops") {
        let verifies = ops
            .as_array()
            .is_some_and(|ops| ops.iter().any(|op| op.as_str() == Some("verify")));
        if !verifies {
            return false;
        }
    }
    match jwk.get("alg") {
        None => true,
        Some(alg) => alg.as_str().is_some_and(|alg| {
            matches!(
                alg,
                "ES256"
                    | "ES384"
                    | "RS256"
                    | "RS384"
                    | "RS512"
                    | "PS256"
                    | "PS384"
                    | "PS512"
                    | "EdDSA"
            )
        }),
    }
}

#[async_trait::async_trait]
impl KeySource for RemoteJwks {
    async fn key(&self, kid: &str, alg: Algorithm) -> Result<Arc<DecodingKey>, KeySourceError> {
        match self.cached(kid, alg, self.refresh_interval) {
            Cached::Key(key) => {
                metrics::counter!(JWKS_CACHE_HITS, "issuer" => self.issuer.clone()).increment(1);
                return Ok(key);
            }
            Cached::Ambiguous => return Err(KeySourceError::AmbiguousKey),
            Cached::Missing => {}
        }
        let mut last_attempt = self.last_attempt.lock().await;
        // Another request may have refreshed the keys while this one waited.
        match self.cached(kid, alg, self.refresh_interval) {
            Cached::Key(key) => return Ok(key),
            Cached::Ambiguous => return Err(KeySourceError::AmbiguousKey),
            Cached::Missing => {}
        }
        let may_fetch = last_attempt.is_none_or(|t| t.elapsed() >= self.min_refetch_interval);
        let mut fetch_error = None;
        if may_fetch {
            *last_attempt = Some(Instant::now());
            let fetched = self.fetch().await;
            metrics::counter!(JWKS_FETCHES, "issuer" => self.issuer.clone(),
                "result" => if fetched.is_ok() { "ok" } else { "error" })
            .increment(1);
            match fetched {
                Ok(keys) => {
                    *self.cache.write().unwrap_or_else(|p| p.into_inner()) = keys;
                }
                Err(e) => {
                    tracing::warn!(issuer = %self.issuer, error = %e, "could not refresh the issuer's signing keys");
                    fetch_error = Some(e);
                }
            }
        }
        // Keys that are past their refresh interval still verify while the issuer is
        // unreachable, so a short Backstage outage does not log everyone out; but
        // only up to max_key_age, or a key the issuer revoked would verify forever.
        match self.cached(kid, alg, self.max_key_age) {
            Cached::Key(key) => return Ok(key),
            Cached::Ambiguous => return Err(KeySourceError::AmbiguousKey),
            Cached::Missing => {}
        }
        let (have_keys, fetched_at) = {
            let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
            (!cache.keys.is_empty(), cache.fetched_at)
        };
        let too_old = fetched_at.is_some_and(|t| t.elapsed() >= self.max_key_age);
        match fetch_error {
            Some(e) if too_old => Err(KeySourceError::Unavailable(format!(
                "the issuer's keys could not be refreshed for longer than jwks_max_key_age ({}s), so they are no longer trusted: {e}",
                self.max_key_age.as_secs()
            ))),
            Some(e) if !have_keys => Err(e),
            None if too_old || (!have_keys && !may_fetch) => Err(KeySourceError::Unavailable(
                "the issuer's keys could not be fetched recently; retrying shortly".into(),
            )),
            _ => Err(KeySourceError::UnknownKey),
        }
    }
}

/// One fixed ES256 key: the development issuer's public key.
pub struct StaticKeys {
    kid: String,
    key: Arc<DecodingKey>,
}

impl StaticKeys {
    pub fn new(kid: String, key: DecodingKey) -> Self {
        StaticKeys {
            kid,
            key: Arc::new(key),
        }
    }
}

#[async_trait::async_trait]
impl KeySource for StaticKeys {
    async fn key(&self, kid: &str, alg: Algorithm) -> Result<Arc<DecodingKey>, KeySourceError> {
        if kid == self.kid && alg == Algorithm::ES256 {
            Ok(self.key.clone())
        } else {
            Err(KeySourceError::UnknownKey)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A P-256 public key as a JWK (the point is RFC 7515 appendix A.3's).
    fn ec_jwk(kid: &str) -> serde_json::Value {
        json!({
            "kty": "EC", "crv": "P-256", "kid": kid,
            "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
        })
    }

    fn with(mut jwk: serde_json::Value, key: &str, value: serde_json::Value) -> serde_json::Value {
        jwk[key] = value;
        jwk
    }

    #[test]
    fn only_signature_keys_are_kept() {
        let cache = parse_key_set(vec![
            ec_jwk("plain"),
            with(ec_jwk("sig"), "use", json!("sig")),
            with(ec_jwk("verify"), "key_ops", json!(["verify"])),
            with(ec_jwk("es256"), "alg", json!("ES256")),
            with(ec_jwk("enc"), "use", json!("enc")),
            with(ec_jwk("wrap"), "key_ops", json!(["wrapKey"])),
            with(ec_jwk("oaep"), "alg", json!("RSA-OAEP")),
            with(ec_jwk("hmac"), "alg", json!("HS256")),
            with(ec_jwk("unknown-alg"), "alg", json!("ES999")),
        ]);
        let mut kept: Vec<&str> = cache.keys.keys().map(String::as_str).collect();
        kept.sort();
        assert_eq!(kept, ["es256", "plain", "sig", "verify"]);
        assert!(cache.ambiguous.is_empty());
    }

    #[test]
    fn a_kid_published_twice_names_no_key() {
        let cache = parse_key_set(vec![
            ec_jwk("twice"),
            ec_jwk("once"),
            // The second entry is not even usable; the kid is still ambiguous.
            with(ec_jwk("twice"), "use", json!("enc")),
        ]);
        assert!(cache.ambiguous.contains("twice"));
        assert!(!cache.keys.contains_key("twice"));
        assert!(cache.keys.contains_key("once"));
    }
}
