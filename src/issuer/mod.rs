//! stackpass as an OIDC issuer: its signing keys, the discovery document and
//! JWKS that clouds fetch to trust it, and the subject tokens it mints for one
//! exchange.
//!
//! Keys come from a key set (`keyset`: per algorithm a next, a current and
//! retiring keys, rotated with overlap) or, for configurations from before key
//! sets, from one ES256 key file. The issuer holds them as one immutable
//! [`KeyRing`] behind a lock and swaps in a new ring whole when they are
//! reloaded; a set that fails to load never replaces a working one.
//!
//! Claim names are part of every cloud-side trust policy, so they are documented in
//! ARCHITECTURE.md and must not change casually. `sub` is `stack:{stack ref}`
//! unless the provider names its own; the requester and its context live under
//! one namespaced `stackpass` claim. An agent's issuance also carries the
//! RFC 8693 `act` claim (section 4.1): the current actor outermost, the
//! actors it acts for nested below it.

mod keyset;
mod ring;
mod signing_key;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use secrecy::SecretString;
use serde::Serialize;
use stackpass_provider::{IssuanceFacts, SigningAlgorithm, SubjectClaims};
use time::OffsetDateTime;
use uuid::Uuid;

pub use keyset::{
    choose_overlap, rotate, KeyDir, KeyEntry, KeySetError, Manifest, Rotation, DEFAULT_OVERLAP,
    JWKS_CACHE_MAX_AGE, MANIFEST, MIN_OVERLAP,
};
pub use ring::{KeyRing, KeyState, RingKey};
pub use signing_key::{SigningKey, SigningKeyError, RSA_BITS};

/// Claims the broker sets itself; a provider may not set them.
const RESERVED_CLAIMS: [&str; 9] = [
    "iss",
    "sub",
    "aud",
    "iat",
    "nbf",
    "exp",
    "jti",
    "act",
    "stackpass",
];

#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    #[error("could not sign the subject token: {0}")]
    Signing(String),
    #[error("no {0} signing key is loaded; create a key set with both algorithms (`stackpass keys generate --dir DIR`, with `--import-es256 FILE` to keep an existing ES256 key) and set issuer.key_dir to it")]
    NoKey(SigningAlgorithm),
    #[error("the provider asked for claim {0:?}, which the broker sets itself")]
    ReservedClaim(String),
    #[error("{0}")]
    KeySet(#[from] KeySetError),
    #[error("{0}")]
    Key(#[from] SigningKeyError),
    #[error("the keys read now have no current {0} key, but the loaded keys do; keeping the loaded keys (restore the key set's {MANIFEST})")]
    LostAlgorithm(SigningAlgorithm),
}

/// Where an issuer's keys come from, and where a reload reads them again.
pub enum SigningKeySource {
    /// A key set directory (`issuer.key_dir`).
    Dir(KeyDir),
    /// One ES256 key file (`issuer.signing_key`, from before key sets).
    File(PathBuf),
    /// Keys handed over in memory; nothing to reload.
    Fixed,
}

impl SigningKeySource {
    /// Reads the keys (`None` for fixed keys).
    pub fn load(&self, now: OffsetDateTime) -> Result<Option<KeyRing>, IssuerError> {
        Ok(match self {
            SigningKeySource::Dir(dir) => Some(dir.load(now)?),
            SigningKeySource::File(path) => Some(KeyRing::single(SigningKey::load(path)?)),
            SigningKeySource::Fixed => None,
        })
    }

    /// Changes when the keys on disk change: the manifest's digest, or the key
    /// file's size and modification time (never its contents).
    pub fn fingerprint(&self) -> Vec<u8> {
        match self {
            SigningKeySource::Dir(dir) => dir.fingerprint(),
            SigningKeySource::File(path) => std::fs::metadata(path)
                .map(|m| format!("{}:{:?}", m.len(), m.modified().ok()).into_bytes())
                .unwrap_or_default(),
            SigningKeySource::Fixed => Vec::new(),
        }
    }
}

pub struct Issuer {
    keys: RwLock<Arc<KeyRing>>,
    source: SigningKeySource,
    issuer_url: String,
    token_lifetime: Duration,
    /// Claim names the configured providers add, for the discovery document.
    provider_claims: Vec<&'static str>,
}

/// What the subject token says about one issuance: the broker's facts and the
/// provider's audience and claims.
pub struct SubjectTokenRequest<'a> {
    pub facts: &'a IssuanceFacts,
    pub provider: SubjectClaims,
    pub algorithm: SigningAlgorithm,
    /// `None`: the issuer's exchange lifetime (`issuer.token_lifetime`), for a
    /// token the broker exchanges at once. Federation mode hands the token out,
    /// so it lives as long as the grant.
    pub lifetime: Option<Duration>,
}

pub struct SubjectToken {
    pub token: SecretString,
    pub jti: Uuid,
    pub expires_at: OffsetDateTime,
}

#[derive(Serialize)]
struct SubjectClaimsOut<'a> {
    iss: &'a str,
    sub: String,
    aud: &'a str,
    iat: i64,
    nbf: i64,
    exp: i64,
    jti: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    act: Option<serde_json::Value>,
    stackpass: StackpassClaims<'a>,
    #[serde(flatten)]
    provider: &'a serde_json::Map<String, serde_json::Value>,
}

/// The broker's own claims, under one namespaced `stackpass` claim.
#[derive(Serialize)]
struct StackpassClaims<'a> {
    requester: &'a str,
    requester_kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    actor: Option<&'a str>,
    /// Only for chains (more than one actor), outermost first.
    #[serde(skip_serializing_if = "Option::is_none")]
    actor_chain: Option<&'a [String]>,
    stack: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    component: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    owner: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    environment: Option<&'a str>,
    rule: &'a str,
    issuance_id: &'a str,
}

impl Issuer {
    /// An issuer that signs with one key, for its algorithm only.
    pub fn new(
        key: SigningKey,
        issuer_url: String,
        token_lifetime: Duration,
        provider_claims: Vec<&'static str>,
    ) -> Self {
        Issuer {
            keys: RwLock::new(Arc::new(KeyRing::single(key))),
            source: SigningKeySource::Fixed,
            issuer_url,
            token_lifetime,
            provider_claims,
        }
    }

    /// An issuer with the keys `source` holds now; [`Issuer::reload_keys`] reads
    /// them again.
    pub fn load(
        source: SigningKeySource,
        issuer_url: String,
        token_lifetime: Duration,
        provider_claims: Vec<&'static str>,
    ) -> Result<Self, IssuerError> {
        let ring = source
            .load(OffsetDateTime::now_utc())?
            .unwrap_or_else(|| KeyRing::new(Vec::new()));
        Ok(Issuer {
            keys: RwLock::new(Arc::new(ring)),
            source,
            issuer_url,
            token_lifetime,
            provider_claims,
        })
    }

    /// The keys in force; a request holds on to one ring from start to end.
    pub fn keys(&self) -> Arc<KeyRing> {
        self.keys
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub fn key_source(&self) -> &SigningKeySource {
        &self.source
    }

    /// Reads the keys again and swaps them in if they changed: `Ok(Some(ring))`
    /// for new keys, `Ok(None)` if nothing changed. A set that does not load,
    /// or that lost an algorithm the loaded keys sign, is refused and the
    /// loaded keys stay.
    pub fn reload_keys(&self) -> Result<Option<Arc<KeyRing>>, IssuerError> {
        let Some(ring) = self.source.load(OffsetDateTime::now_utc())? else {
            return Ok(None);
        };
        let loaded = self.keys();
        if let Some(lost) = loaded
            .algorithms()
            .into_iter()
            .find(|a| ring.current(*a).is_none())
        {
            return Err(IssuerError::LostAlgorithm(lost));
        }
        if ring.same_as(&loaded) {
            return Ok(None);
        }
        let ring = Arc::new(ring);
        *self
            .keys
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = ring.clone();
        Ok(Some(ring))
    }

    pub fn issuer_url(&self) -> &str {
        &self.issuer_url
    }

    /// OpenID Connect Discovery 1.0 metadata: what AWS/GCP/Azure read to trust us.
    pub fn discovery_document(&self) -> serde_json::Value {
        let mut claims_supported = vec![
            "iss",
            "sub",
            "aud",
            "iat",
            "nbf",
            "exp",
            "jti",
            "act",
            "stackpass",
        ];
        claims_supported.extend(&self.provider_claims);
        serde_json::json!({
            "issuer": self.issuer_url,
            "jwks_uri": format!("{}/.well-known/jwks.json", self.issuer_url),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": self
                .keys()
                .algorithms()
                .iter()
                .map(|a| a.as_str())
                .collect::<Vec<_>>(),
            "claims_supported": claims_supported,
        })
    }

    /// Every key of every algorithm that is next, current, or retiring and not
    /// yet past `retire_after`.
    pub fn jwks(&self) -> serde_json::Value {
        let keys: Vec<_> = self
            .keys()
            .published(OffsetDateTime::now_utc())
            .map(SigningKey::public_jwk)
            .collect();
        serde_json::json!({ "keys": keys })
    }

    pub fn mint(&self, request: &SubjectTokenRequest<'_>) -> Result<SubjectToken, IssuerError> {
        if let Some(reserved) = request
            .provider
            .claims
            .keys()
            .find(|k| RESERVED_CLAIMS.contains(&k.as_str()))
        {
            return Err(IssuerError::ReservedClaim(reserved.clone()));
        }
        let ring = self.keys();
        let key = ring
            .current(request.algorithm)
            .ok_or(IssuerError::NoKey(request.algorithm))?;
        let now = OffsetDateTime::now_utc();
        let expires_at = now + request.lifetime.unwrap_or(self.token_lifetime);
        let jti = Uuid::new_v4();
        let facts = request.facts;
        let claims = SubjectClaimsOut {
            iss: &self.issuer_url,
            sub: request
                .provider
                .subject
                .clone()
                .unwrap_or_else(|| format!("stack:{}", facts.stack)),
            aud: &request.provider.audience,
            iat: now.unix_timestamp(),
            nbf: now.unix_timestamp(),
            exp: expires_at.unix_timestamp(),
            jti: jti.to_string(),
            act: act_claim(facts),
            stackpass: StackpassClaims {
                requester: &facts.requester,
                requester_kind: &facts.requester_kind,
                actor: facts.actor.as_deref(),
                actor_chain: (facts.actor_chain.len() > 1).then_some(&facts.actor_chain[..]),
                stack: &facts.stack,
                component: facts.component.as_deref(),
                owner: facts.owner.as_deref(),
                environment: facts.environment.as_deref(),
                rule: &facts.rule,
                issuance_id: &facts.issuance_id,
            },
            provider: &request.provider.claims,
        };
        let token = key
            .sign_jwt(&claims, None)
            .map_err(|e| IssuerError::Signing(e.to_string()))?;
        Ok(SubjectToken {
            token: SecretString::from(token),
            jti,
            expires_at,
        })
    }

    /// Signs a throwaway token with every current key and verifies it with the
    /// published half, proving each key is usable (readiness checks).
    pub fn self_test(&self) -> Result<(), IssuerError> {
        let ring = self.keys();
        let mut tested = 0;
        for key in ring.signing() {
            let algorithm = signing_key::jwt_algorithm(key.algorithm());
            let token = key
                .sign_jwt(&serde_json::json!({ "iss": self.issuer_url }), None)
                .map_err(|e| IssuerError::Signing(format!("{} key: {e}", key.algorithm())))?;
            let mut validation = jsonwebtoken::Validation::new(algorithm);
            validation.required_spec_claims.clear();
            validation.validate_exp = false;
            jsonwebtoken::decode::<serde_json::Value>(&token, &key.decoding_key(), &validation)
                .map_err(|e| {
                    IssuerError::Signing(format!(
                        "{} key {} does not verify with its own JWK: {e}",
                        key.algorithm(),
                        key.kid()
                    ))
                })?;
            tested += 1;
        }
        if tested == 0 {
            return Err(IssuerError::NoKey(SigningAlgorithm::default()));
        }
        Ok(())
    }
}

/// RFC 8693 section 4.1: `{"sub": current, "act": {"sub": before, ...}}`,
/// built from the innermost actor out.
fn act_claim(facts: &IssuanceFacts) -> Option<serde_json::Value> {
    let chain: Vec<&str> = if facts.actor_chain.is_empty() {
        facts.actor.iter().map(String::as_str).collect()
    } else {
        facts.actor_chain.iter().map(String::as_str).collect()
    };
    chain.iter().rev().fold(None, |inner, actor| {
        let mut act = serde_json::Map::new();
        act.insert("sub".into(), (*actor).into());
        if let Some(inner) = inner {
            act.insert("act".into(), inner);
        }
        Some(serde_json::Value::Object(act))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "https://stackpass.test";

    fn facts() -> IssuanceFacts {
        IssuanceFacts {
            issuance_id: "issuance-1".into(),
            requester: "user:default/jane".into(),
            requester_kind: "human".into(),
            stack: "pulumi:acme/payments/dev".into(),
            rule: "owners".into(),
            ..IssuanceFacts::default()
        }
    }

    fn request<'a>(
        facts: &'a IssuanceFacts,
        algorithm: SigningAlgorithm,
        subject: Option<&str>,
        lifetime: Option<Duration>,
    ) -> SubjectTokenRequest<'a> {
        SubjectTokenRequest {
            facts,
            provider: SubjectClaims {
                audience: "api://AzureADTokenExchange".into(),
                subject: subject.map(str::to_owned),
                claims: serde_json::Map::new(),
            },
            algorithm,
            lifetime,
        }
    }

    fn key_set(dir: &std::path::Path) -> Issuer {
        KeyDir::new(dir)
            .create(None, OffsetDateTime::now_utc())
            .unwrap();
        Issuer::load(
            SigningKeySource::Dir(KeyDir::new(dir)),
            URL.into(),
            Duration::from_secs(300),
            vec![],
        )
        .unwrap()
    }

    /// Verifies `token` as a relying party would: with the JWKS entry its
    /// header's kid names, and the algorithm that entry declares.
    fn verify(issuer: &Issuer, token: &SecretString) -> (jsonwebtoken::Header, serde_json::Value) {
        use secrecy::ExposeSecret;
        let token = token.expose_secret();
        let header = jsonwebtoken::decode_header(token).unwrap();
        let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_value(issuer.jwks()).unwrap();
        let jwk = jwks
            .find(header.kid.as_deref().unwrap())
            .expect("kid in JWKS");
        let algorithm: jsonwebtoken::Algorithm = jwk
            .common
            .key_algorithm
            .unwrap()
            .to_string()
            .parse()
            .unwrap();
        let mut validation = jsonwebtoken::Validation::new(algorithm);
        validation.set_audience(&["api://AzureADTokenExchange"]);
        validation.set_issuer(&[URL]);
        let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
        let claims = jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
            .unwrap()
            .claims;
        (header, claims)
    }

    #[test]
    fn a_key_set_signs_each_algorithm_with_its_current_key() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = key_set(dir.path());
        let facts = facts();
        let ring = issuer.keys();
        for algorithm in SigningAlgorithm::ALL {
            let minted = issuer
                .mint(&request(
                    &facts,
                    algorithm,
                    Some("/eid1/c/pub/t/tenant/a/app/sub"),
                    Some(Duration::from_secs(1800)),
                ))
                .unwrap();
            let (header, claims) = verify(&issuer, &minted.token);
            assert_eq!(header.alg, signing_key::jwt_algorithm(algorithm));
            assert_eq!(
                header.kid.as_deref(),
                Some(ring.current(algorithm).unwrap().kid())
            );
            assert_eq!(claims["sub"], "/eid1/c/pub/t/tenant/a/app/sub");
            assert_eq!(claims["jti"], minted.jti.to_string());
            assert_eq!(
                claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
                1800
            );
            assert_eq!(claims["stackpass"]["stack"], "pulumi:acme/payments/dev");
        }
        // Without a provider subject or lifetime: the broker's own.
        let minted = issuer
            .mint(&request(&facts, SigningAlgorithm::Es256, None, None))
            .unwrap();
        let (_, claims) = verify(&issuer, &minted.token);
        assert_eq!(claims["sub"], "stack:pulumi:acme/payments/dev");
        assert_eq!(
            claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
            300
        );
        assert!(claims.get("act").is_none());

        // An agent acting for jane, itself acting for another agent.
        let agent = IssuanceFacts {
            requester_kind: "agent".into(),
            actor: Some("component:agents/bot".into()),
            actor_chain: vec![
                "component:agents/bot".into(),
                "component:agents/planner".into(),
            ],
            ..facts.clone()
        };
        let minted = issuer
            .mint(&request(&agent, SigningAlgorithm::Es256, None, None))
            .unwrap();
        let (_, claims) = verify(&issuer, &minted.token);
        assert_eq!(
            claims["act"],
            serde_json::json!({ "sub": "component:agents/bot", "act": { "sub": "component:agents/planner" } })
        );
        assert_eq!(claims["stackpass"]["requester"], "user:default/jane");
        assert_eq!(claims["stackpass"]["actor"], "component:agents/bot");
        assert_eq!(
            claims["stackpass"]["actor_chain"][1],
            "component:agents/planner"
        );

        let discovery = issuer.discovery_document();
        assert_eq!(
            discovery["id_token_signing_alg_values_supported"],
            serde_json::json!(["ES256", "RS256"])
        );
        let jwks = issuer.jwks();
        let published: Vec<(&str, &str)> = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| (k["alg"].as_str().unwrap(), k["use"].as_str().unwrap()))
            .collect();
        assert_eq!(
            published,
            [
                ("ES256", "sig"),
                ("ES256", "sig"),
                ("RS256", "sig"),
                ("RS256", "sig")
            ],
            "current and next of both"
        );
        // The OpenAPI document describes both documents with wire types that
        // refuse unknown members; EC and RSA keys both fit.
        let described: crate::wire::DiscoveryDocument =
            serde_json::from_value(discovery.clone()).unwrap();
        assert_eq!(described.issuer, URL);
        let described: crate::wire::JwkSet = serde_json::from_value(jwks.clone()).unwrap();
        assert!(described
            .keys
            .iter()
            .all(|k| (k.x.is_some() && k.y.is_some()) != (k.n.is_some() && k.e.is_some())));
        issuer.self_test().unwrap();
    }

    #[test]
    fn a_single_signing_key_signs_es256_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing-key.pem");
        let key = SigningKey::generate(&path).unwrap();
        let kid = key.kid().to_owned();
        let issuer = Issuer::load(
            SigningKeySource::File(path),
            URL.into(),
            Duration::from_secs(300),
            vec![],
        )
        .unwrap();
        let facts = facts();
        let minted = issuer
            .mint(&request(&facts, SigningAlgorithm::Es256, None, None))
            .unwrap();
        assert_eq!(verify(&issuer, &minted.token).0.kid, Some(kid));
        let refused = issuer
            .mint(&request(&facts, SigningAlgorithm::Rs256, None, None))
            .err()
            .unwrap();
        assert!(
            matches!(refused, IssuerError::NoKey(SigningAlgorithm::Rs256)),
            "{refused}"
        );
        assert!(refused.to_string().contains("--import-es256"), "{refused}");
        assert_eq!(
            issuer.discovery_document()["id_token_signing_alg_values_supported"],
            serde_json::json!(["ES256"])
        );
        assert_eq!(issuer.jwks()["keys"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn reloads_swap_in_rotated_keys_and_keep_the_old_ones_when_the_new_fail() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = key_set(dir.path());
        let keys = KeyDir::new(dir.path());
        assert!(issuer.reload_keys().unwrap().is_none(), "nothing changed");

        let before = issuer.keys();
        let old = before
            .current(SigningAlgorithm::Rs256)
            .unwrap()
            .kid()
            .to_owned();
        keys.rotate(
            Some(SigningAlgorithm::Rs256),
            Duration::from_secs(3600),
            Duration::ZERO,
            OffsetDateTime::now_utc(),
        )
        .unwrap();
        assert_eq!(
            before.current(SigningAlgorithm::Rs256).unwrap().kid(),
            old,
            "a ring never changes under a request"
        );
        let reloaded = issuer.reload_keys().unwrap().expect("new keys");
        let new = reloaded
            .current(SigningAlgorithm::Rs256)
            .unwrap()
            .kid()
            .to_owned();
        assert_ne!(new, old);
        let facts = facts();
        let minted = issuer
            .mint(&request(&facts, SigningAlgorithm::Rs256, None, None))
            .unwrap();
        assert_eq!(verify(&issuer, &minted.token).0.kid, Some(new.clone()));
        let published = issuer.jwks().to_string();
        assert!(
            published.contains(&old),
            "the retiring key is still published"
        );
        assert_eq!(issuer.jwks()["keys"].as_array().unwrap().len(), 5);

        // A broken manifest, or one that lost RS256, never replaces working keys.
        let manifest = keys.read_manifest().unwrap();
        std::fs::write(keys.manifest_path(), "{").unwrap();
        assert!(matches!(
            issuer.reload_keys(),
            Err(IssuerError::KeySet(KeySetError::Manifest { .. }))
        ));
        let es256_only = Manifest {
            keys: manifest
                .keys
                .iter()
                .filter(|k| k.algorithm == SigningAlgorithm::Es256)
                .cloned()
                .collect(),
        };
        std::fs::write(keys.manifest_path(), es256_only.to_json()).unwrap();
        assert!(matches!(
            issuer.reload_keys(),
            Err(IssuerError::LostAlgorithm(SigningAlgorithm::Rs256))
        ));
        assert_eq!(
            issuer
                .keys()
                .current(SigningAlgorithm::Rs256)
                .unwrap()
                .kid(),
            new
        );
        issuer.self_test().unwrap();
    }
}
