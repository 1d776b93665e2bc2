//! The keys an issuer holds at one moment: each loaded [`SigningKey`] with its
//! state. A ring is immutable; a reload builds a new one and swaps it in whole,
//! so a token is signed and published from one consistent set.

use std::fmt;

use stackpass_provider::SigningAlgorithm;
use time::OffsetDateTime;

use super::SigningKey;

pub struct RingKey {
    pub key: SigningKey,
    pub state: KeyState,
}

pub struct KeyRing {
    keys: Vec<RingKey>,
}

impl KeyRing {
    /// A ring of keys whose states the caller has checked (see
    /// [`super::keyset::Manifest`]): at most one current key per algorithm.
    pub fn new(mut keys: Vec<RingKey>) -> Self {
        keys.sort_by_key(|k| (k.key.algorithm(), k.state.rank_for_listing()));
        KeyRing { keys }
    }

    /// Every key, by algorithm: the signing one, the next, the retiring.
    pub fn entries(&self) -> impl Iterator<Item = &RingKey> {
        self.keys.iter()
    }

    /// One key that signs for its algorithm (a single `issuer.signing_key`).
    pub fn single(key: SigningKey) -> Self {
        KeyRing::new(vec![RingKey {
            key,
            state: KeyState::Current,
        }])
    }

    /// The key that signs `algorithm`'s tokens, if any.
    pub fn current(&self, algorithm: SigningAlgorithm) -> Option<&SigningKey> {
        self.keys
            .iter()
            .find(|k| k.state == KeyState::Current && k.key.algorithm() == algorithm)
            .map(|k| &k.key)
    }

    /// Every key that signs, one per algorithm, in `SigningAlgorithm` order.
    pub fn signing(&self) -> impl Iterator<Item = &SigningKey> {
        self.keys
            .iter()
            .filter(|k| k.state == KeyState::Current)
            .map(|k| &k.key)
    }

    /// The algorithms that have a current key, in `SigningAlgorithm` order.
    pub fn algorithms(&self) -> Vec<SigningAlgorithm> {
        self.signing().map(SigningKey::algorithm).collect()
    }

    /// Whether both rings hold the same keys in the same states.
    pub fn same_as(&self, other: &KeyRing) -> bool {
        let facts = |ring: &KeyRing| -> Vec<(String, KeyState)> {
            ring.keys
                .iter()
                .map(|k| (k.key.kid().to_owned(), k.state))
                .collect()
        };
        facts(self) == facts(other)
    }

    /// What the JWKS publishes at `now`: next, current and retiring keys until
    /// their `retire_after`.
    pub fn published(&self, now: OffsetDateTime) -> impl Iterator<Item = &SigningKey> {
        self.keys
            .iter()
            .filter(move |k| k.state.published_at(now))
            .map(|k| &k.key)
    }
}

/// `ES256 current kid…, next kid…; RS256 …`: what a reload log line says.
/// Only public facts.
impl fmt::Display for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut previous = None;
        for key in &self.keys {
            let algorithm = key.key.algorithm();
            if previous != Some(algorithm) {
                if previous.is_some() {
                    f.write_str("; ")?;
                }
                write!(f, "{algorithm} ")?;
            } else {
                f.write_str(", ")?;
            }
            previous = Some(algorithm);
            write!(f, "{} {}", key.state.name(), key.key.kid())?;
        }
        Ok(())
    }
}

/// Where a key is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    Next,
    Current,
    Retiring { retire_after: OffsetDateTime },
}

impl KeyState {
    pub fn name(self) -> &'static str {
        match self {
            KeyState::Next => "next",
            KeyState::Current => "current",
            KeyState::Retiring { .. } => "retiring",
        }
    }

    /// Listing order: the signing key first, then the next, then retiring.
    pub fn rank_for_listing(self) -> u8 {
        match self {
            KeyState::Current => 0,
            KeyState::Next => 1,
            KeyState::Retiring { .. } => 2,
        }
    }

    /// Whether the JWKS carries a key in this state at `now`.
    pub fn published_at(self, now: OffsetDateTime) -> bool {
        match self {
            KeyState::Next | KeyState::Current => true,
            KeyState::Retiring { retire_after } => now < retire_after,
        }
    }

    pub fn retire_after(self) -> Option<OffsetDateTime> {
        match self {
            KeyState::Retiring { retire_after } => Some(retire_after),
            _ => None,
        }
    }
}
