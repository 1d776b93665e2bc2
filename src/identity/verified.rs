//! Tokens this broker has already verified, so that a caller presenting the
//! same token again (a pipeline asking for several stacks, an agent's
//! successive calls, a program polling) costs a hash instead of a signature
//! check. The signature check is the only step skipped: a remembered token is
//! used only while
//!
//! - it has not expired (the issuer's leeway, as when it was first verified),
//! - the key that verified it is still the one its issuer publishes under its
//!   `kid` ([`KeySource`] hands out one shared key per fetched key set, so a
//!   refresh that drops or replaces the key ends every entry it verified, and
//!   a refresh that keeps it only costs one more signature check), and
//! - it is at most [`REMEMBERED_FOR`] old,
//!
//! and the issuer's claim mapping and subject checks run again every time, so
//! catalog ownership and the issuer's rules are as current as for a new token.
//! Only tokens that passed every check are remembered, keyed by their SHA-256,
//! so a remembered token is the very same bytes.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey};
use sha2::{Digest, Sha256};

use super::mapping::VerifiedClaims;
use super::TrustedIssuer;

/// At most this many tokens are remembered; the least used go first.
const CAPACITY: u64 = 4096;
/// However long a token lives, it is verified again after this.
pub const REMEMBERED_FOR: Duration = Duration::from_secs(300);

/// A token whose signature and time claims were checked.
#[derive(Clone)]
pub(super) struct VerifiedToken {
    /// The index of its issuer in the verifier's list.
    pub issuer: usize,
    pub kid: String,
    pub alg: Algorithm,
    /// The key that verified it, as its issuer's key source handed it out.
    pub key: Arc<DecodingKey>,
    pub claims: Arc<VerifiedClaims>,
    pub exp: i64,
}

pub(super) struct VerifiedTokens {
    cache: moka::sync::Cache<[u8; 32], VerifiedToken>,
}

/// The cache key: a token's SHA-256.
pub(super) fn fingerprint(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl VerifiedTokens {
    pub fn new() -> Self {
        VerifiedTokens {
            cache: moka::sync::Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(REMEMBERED_FOR)
                .build(),
        }
    }

    /// The remembered verification of the token with this fingerprint, if it
    /// still holds at `now` (unix seconds) and its issuer still hands out the
    /// key that verified it.
    pub async fn get(
        &self,
        fingerprint: &[u8; 32],
        issuers: &[TrustedIssuer],
        now: i64,
    ) -> Option<VerifiedToken> {
        let verified = self.cache.get(fingerprint)?;
        let issuer = &issuers[verified.issuer];
        // As jsonwebtoken decides expiry: expired once exp < now - leeway.
        let unexpired = verified.exp >= now.saturating_sub(issuer.leeway.as_secs() as i64);
        let still_published = unexpired
            && issuer
                .keys
                .key(&verified.kid, verified.alg)
                .await
                .is_ok_and(|key| Arc::ptr_eq(&key, &verified.key));
        if still_published {
            Some(verified)
        } else {
            self.cache.invalidate(fingerprint);
            None
        }
    }

    pub fn remember(&self, fingerprint: [u8; 32], verified: VerifiedToken) {
        self.cache.insert(fingerprint, verified);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use jsonwebtoken::{Algorithm, DecodingKey};
    use secrecy::SecretString;
    use serde_json::json;
    use stackpass_provider::SigningAlgorithm;

    use super::super::keys::{KeySource, KeySourceError};
    use super::super::{
        CatalogEntityMapping, IdentityError, SubjectPattern, TrustedIssuer, Verifier,
    };
    use crate::issuer::SigningKey;

    /// One issuer's published key, which a test replaces as a refresh would.
    struct Published(Mutex<Option<(String, Arc<DecodingKey>)>>);

    impl Published {
        fn with(key: &SigningKey) -> Arc<Published> {
            let published = Arc::new(Published(Mutex::new(None)));
            published.set(Some(key));
            published
        }

        fn set(&self, key: Option<&SigningKey>) {
            *self.0.lock().unwrap() = key.map(|k| (k.kid().to_owned(), Arc::new(k.decoding_key())));
        }
    }

    #[async_trait::async_trait]
    impl KeySource for Published {
        async fn key(&self, kid: &str, _: Algorithm) -> Result<Arc<DecodingKey>, KeySourceError> {
            match &*self.0.lock().unwrap() {
                Some((published, key)) if published == kid => Ok(key.clone()),
                _ => Err(KeySourceError::UnknownKey),
            }
        }
    }

    fn verifier(keys: Arc<Published>) -> Verifier {
        let issuer = TrustedIssuer {
            name: "test".into(),
            issuer: "https://issuer.test".into(),
            audiences: vec!["stackpass".into()],
            algorithms: vec![Algorithm::ES256],
            leeway: Duration::ZERO,
            max_token_lifetime: Duration::from_secs(3600),
            keys,
            mapping: Arc::new(CatalogEntityMapping),
            token_type: None,
            subjects: vec![SubjectPattern::parse("user:*/*").unwrap()],
            users_only: true,
            dedicated_audience: None,
            agents: false,
        };
        Verifier::new(vec![issuer], 8192)
    }

    fn token(key: &SigningKey, sub: &str, lifetime: i64) -> SecretString {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let claims = json!({ "iss": "https://issuer.test", "aud": "stackpass", "sub": sub,
            "iat": now, "exp": now + lifetime });
        SecretString::from(key.sign_jwt(&claims, None).unwrap())
    }

    fn signing_key() -> SigningKey {
        SigningKey::random(SigningAlgorithm::Es256).unwrap().0
    }

    #[tokio::test]
    async fn a_remembered_token_is_refused_once_its_key_is_no_longer_published() {
        let (key, other) = (signing_key(), signing_key());
        let published = Published::with(&key);
        let verifier = verifier(published.clone());
        let token = token(&key, "user:default/jane", 600);
        for _ in 0..2 {
            let principal = verifier.verify(&token).await.unwrap();
            assert_eq!(principal.subject.to_string(), "user:default/jane");
        }

        // The same key fetched again: a new key set, checked once more, still good.
        published.set(Some(&key));
        assert!(verifier.verify(&token).await.is_ok());

        // Rotated away: the remembered verification must not outlive the key.
        published.set(Some(&other));
        assert!(matches!(
            verifier.verify(&token).await,
            Err(IdentityError::UnknownKey)
        ));
        published.set(None);
        assert!(matches!(
            verifier.verify(&token).await,
            Err(IdentityError::UnknownKey)
        ));
    }

    #[tokio::test]
    async fn a_remembered_token_is_refused_once_it_expires() {
        let key = signing_key();
        let verifier = verifier(Published::with(&key));
        let token = token(&key, "user:default/jane", 1);
        assert!(verifier.verify(&token).await.is_ok());
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert!(matches!(
            verifier.verify(&token).await,
            Err(IdentityError::Expired)
        ));
    }

    #[tokio::test]
    async fn only_the_same_bytes_are_remembered_and_only_once_accepted() {
        let key = signing_key();
        let verifier = verifier(Published::with(&key));
        // Refused tokens are not remembered: a group subject fails the same
        // way the second time.
        let group = token(&key, "group:default/admins", 600);
        for _ in 0..2 {
            assert!(matches!(
                verifier.verify(&group).await,
                Err(IdentityError::GroupSubject { .. })
            ));
        }
        // A token with its signature altered is not the remembered one.
        let good = token(&key, "user:default/jane", 600);
        assert!(verifier.verify(&good).await.is_ok());
        let good = secrecy::ExposeSecret::expose_secret(&good).to_owned();
        let (signed, signature) = good.rsplit_once('.').unwrap();
        let mut forged: Vec<char> = signature.chars().collect();
        forged[10] = if forged[10] == 'A' { 'B' } else { 'A' };
        let forged = format!("{signed}.{}", forged.into_iter().collect::<String>());
        assert!(matches!(
            verifier.verify(&SecretString::from(forged)).await,
            Err(IdentityError::BadSignature)
        ));
    }
}
