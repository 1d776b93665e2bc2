//! The key set: a directory (`issuer.key_dir`) holding a manifest,
//! `keyset.json`, and one 0600 PKCS#8 PEM file per key, named
//! `{algorithm}-{kid}.pem`. The manifest says, per key, its algorithm, its
//! `kid` (the RFC 7638 thumbprint, so replicas sharing the directory agree) and
//! its state:
//!
//! - `next`: published in the JWKS, not yet signing, so clouds that cache the
//!   JWKS already know it when it starts signing;
//! - `current`: signing, exactly one per algorithm;
//! - `retiring`: published until `retire_after`, so tokens it signed still
//!   verify, then dropped (and pruned at the next rotation).
//!
//! [`rotate`] is the state machine as a pure function of a manifest, fresh next
//! keys and the clock; [`KeyDir`] does the I/O around it: every write is a
//! temporary file renamed (manifest) or hard-linked (keys) into place, a key
//! file is never replaced, and changes take a lock file so two rotations cannot
//! interleave.

mod dir;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use stackpass_provider::SigningAlgorithm;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::ring::{KeyRing, KeyState, RingKey};
use super::signing_key::{create_private_dir, sync_parent, write_private_file};
use super::{SigningKey, SigningKeyError};

pub use dir::KeyDir;

pub const MANIFEST: &str = "keyset.json";
const LOCK: &str = "keyset.lock";
const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum KeySetError {
    #[error("{dir} holds no key set ({MANIFEST} is missing); create one with `stackpass keys generate --dir {dir}`")]
    Missing { dir: String },
    #[error("{dir} already holds a key set; change it with `stackpass keys rotate --dir {dir}`")]
    AlreadyExists { dir: String },
    #[error("could not read {path}: {message}")]
    Unreadable { path: String, message: String },
    #[error("{path} is not a valid key set manifest: {problem}; restore it from a backup, or fix what is named")]
    Manifest { path: String, problem: String },
    #[error("key {kid} ({algorithm}): {error}")]
    KeyFile {
        kid: String,
        algorithm: SigningAlgorithm,
        error: SigningKeyError,
    },
    #[error("{path} holds key {actual}, but {MANIFEST} names it {kid}; the file was replaced: restore the original")]
    KidMismatch {
        path: String,
        kid: String,
        actual: String,
    },
    #[error("the key set has no next {0} key to make current; it was edited by hand: restore {MANIFEST} from a backup")]
    NoNextKey(SigningAlgorithm),
    #[error("the next {algorithm} key was published at {published_at}; clouds may cache the JWKS for {}, so until {ready_at} some would refuse tokens it signs. Rotate after that, or pass --force", humantime::format_duration(JWKS_CACHE_MAX_AGE))]
    NextTooNew {
        algorithm: SigningAlgorithm,
        published_at: OffsetDateTime,
        ready_at: OffsetDateTime,
    },
    #[error(
        "the key set has no {0} keys; it was edited by hand: restore {MANIFEST} from a backup"
    )]
    NoKeys(SigningAlgorithm),
    #[error("could not write {path}: {message}")]
    Unwritable { path: String, message: String },
    #[error("{path} exists: another `stackpass keys` command is changing this key set; if none is running, delete {path}")]
    Locked { path: String },
    #[error("an overlap of {overlap} is shorter than {limit}: a retiring key must stay published until every token it signed has expired; use --overlap {suggested} or longer")]
    OverlapTooShort {
        overlap: String,
        limit: String,
        suggested: String,
    },
    #[error("{0}")]
    Key(#[from] SigningKeyError),
}

/// The default overlap: the longest subject token a broker signs today is a
/// federation-mode token as long as the longest grant (AWS: 12h), and clouds
/// cache the JWKS (the broker says `max-age=3600`; some keep it longer). A
/// day covers both with room for clock skew.
pub const DEFAULT_OVERLAP: Duration = Duration::from_secs(24 * 3600);

/// The longest `issuer.token_lifetime` can be: the floor for any overlap when
/// the broker's configuration is not at hand.
pub const MIN_OVERLAP: Duration = Duration::from_secs(3600);

/// The overlap a rotation uses: `requested`, or the default; refused if it is
/// shorter than the longest token the broker can sign (`longest_token`, from
/// its configuration, when known; otherwise [`MIN_OVERLAP`]). The default
/// grows to cover that token plus an hour of JWKS caching.
pub fn choose_overlap(
    requested: Option<Duration>,
    longest_token: Option<Duration>,
) -> Result<Duration, KeySetError> {
    let minimum = longest_token.unwrap_or(MIN_OVERLAP).max(MIN_OVERLAP);
    let suggested = DEFAULT_OVERLAP.max(minimum + MIN_OVERLAP);
    match requested {
        None => Ok(suggested),
        Some(overlap) if overlap >= minimum => Ok(overlap),
        Some(overlap) => Err(KeySetError::OverlapTooShort {
            overlap: humantime::format_duration(overlap).to_string(),
            limit: match longest_token {
                Some(_) => format!(
                    "the longest token this configuration can sign ({})",
                    humantime::format_duration(minimum)
                ),
                None => format!(
                    "the longest issuer.token_lifetime ({}); federation-mode tokens can live longer, so pass --config FILE to check against the broker's providers",
                    humantime::format_duration(minimum)
                ),
            },
            suggested: humantime::format_duration(suggested).to_string(),
        }),
    }
}

/// One key as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEntry {
    pub kid: String,
    pub algorithm: SigningAlgorithm,
    pub state: KeyState,
    pub created_at: OffsetDateTime,
}

impl KeyEntry {
    /// The entry for a key made just now.
    pub fn new(key: &SigningKey, state: KeyState, now: OffsetDateTime) -> Self {
        KeyEntry {
            kid: key.kid().to_owned(),
            algorithm: key.algorithm(),
            state,
            created_at: now,
        }
    }

    /// The key's file name inside the key set directory. The kid is checked to
    /// be a thumbprint (base64url), so this never leaves the directory.
    pub fn file_name(&self) -> String {
        format!(
            "{}-{}.pem",
            self.algorithm.as_str().to_ascii_lowercase(),
            self.kid
        )
    }
}

/// The parsed manifest: every entry well formed, the states consistent (see
/// [`Manifest::check`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Manifest {
    pub keys: Vec<KeyEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    version: u32,
    keys: Vec<RawEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    kid: String,
    algorithm: String,
    state: String,
    created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retire_after: Option<String>,
}

fn format_time(time: OffsetDateTime) -> String {
    time.format(&Rfc3339).expect("UTC times format as RFC 3339")
}

fn parse_time(kid: &str, field: &str, text: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|_| format!("key {kid}: {field} {text:?} is not an RFC 3339 time"))
}

fn parse_algorithm(kid: &str, text: &str) -> Result<SigningAlgorithm, String> {
    SigningAlgorithm::ALL
        .into_iter()
        .find(|a| a.as_str() == text)
        .ok_or_else(|| format!("key {kid}: algorithm {text:?} is not ES256 or RS256"))
}

/// A SHA-256 thumbprint in base64url: 43 characters of `A-Za-z0-9-_`.
fn is_thumbprint(kid: &str) -> bool {
    kid.len() == 43
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Manifest {
    pub fn parse(text: &str) -> Result<Manifest, String> {
        let raw: RawManifest = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if raw.version != VERSION {
            return Err(format!(
                "version {} is not {VERSION}; this stackpass is older than the one that wrote it",
                raw.version
            ));
        }
        let mut keys = Vec::new();
        for entry in raw.keys {
            let kid = entry.kid;
            let state = match (entry.state.as_str(), entry.retire_after) {
                ("next", None) => KeyState::Next,
                ("current", None) => KeyState::Current,
                ("retiring", Some(text)) => KeyState::Retiring {
                    retire_after: parse_time(&kid, "retire_after", &text)?,
                },
                ("retiring", None) => {
                    return Err(format!("key {kid}: a retiring key needs retire_after"))
                }
                ("next" | "current", Some(_)) => {
                    return Err(format!("key {kid}: only retiring keys have retire_after"))
                }
                (other, _) => {
                    return Err(format!(
                        "key {kid}: state {other:?} is not next, current or retiring"
                    ))
                }
            };
            keys.push(KeyEntry {
                algorithm: parse_algorithm(&kid, &entry.algorithm)?,
                created_at: parse_time(&kid, "created_at", &entry.created_at)?,
                state,
                kid,
            });
        }
        let manifest = Manifest { keys };
        manifest.check()?;
        Ok(manifest)
    }

    pub fn to_json(&self) -> String {
        let raw = RawManifest {
            version: VERSION,
            keys: self
                .keys
                .iter()
                .map(|k| RawEntry {
                    kid: k.kid.clone(),
                    algorithm: k.algorithm.as_str().to_owned(),
                    state: k.state.name().to_owned(),
                    created_at: format_time(k.created_at),
                    retire_after: k.state.retire_after().map(format_time),
                })
                .collect(),
        };
        let mut text = serde_json::to_string_pretty(&raw).expect("the manifest serializes");
        text.push('\n');
        text
    }

    /// Kids are thumbprints and unique; an algorithm that has keys has exactly
    /// one current key and at most one next key.
    pub fn check(&self) -> Result<(), String> {
        let mut kids = HashSet::new();
        for key in &self.keys {
            if !is_thumbprint(&key.kid) {
                return Err(format!(
                    "kid {:?} is not an RFC 7638 SHA-256 thumbprint",
                    key.kid
                ));
            }
            if !kids.insert(key.kid.as_str()) {
                return Err(format!("key {} is listed twice", key.kid));
            }
        }
        for algorithm in SigningAlgorithm::ALL {
            let count = |state: KeyState| {
                self.keys
                    .iter()
                    .filter(|k| k.algorithm == algorithm && k.state == state)
                    .count()
            };
            if !self.keys.iter().any(|k| k.algorithm == algorithm) {
                continue;
            }
            if count(KeyState::Current) != 1 {
                return Err(format!(
                    "{algorithm} has {} current keys; it needs exactly one",
                    count(KeyState::Current)
                ));
            }
            if count(KeyState::Next) > 1 {
                return Err(format!("{algorithm} has more than one next key"));
            }
        }
        Ok(())
    }

    /// The keys in listing order: by algorithm, then current, next, and
    /// retiring keys by `retire_after`.
    pub fn sorted(mut keys: Vec<KeyEntry>) -> Manifest {
        keys.sort_by_key(|k| {
            (
                k.algorithm,
                k.state.rank_for_listing(),
                k.state.retire_after(),
            )
        });
        Manifest { keys }
    }

    /// The algorithms that have keys, in `SigningAlgorithm` order.
    pub fn algorithms(&self) -> Vec<SigningAlgorithm> {
        SigningAlgorithm::ALL
            .into_iter()
            .filter(|a| self.keys.iter().any(|k| k.algorithm == *a))
            .collect()
    }
}

/// What a rotation leaves behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    pub manifest: Manifest,
    /// Retiring keys past their `retire_after`, dropped from the manifest; their
    /// files can be deleted.
    pub pruned: Vec<KeyEntry>,
}

/// One rotation step for the algorithms of `new_next` (one fresh key each,
/// state `next`): their next key becomes current, their current key retires at
/// `now + overlap`, the fresh key becomes next, and their retiring keys past
/// `retire_after` are pruned. Other algorithms are left alone.
/// How long clouds may cache the broker's JWKS (its `Cache-Control` max-age):
/// a key published as `next` is in every cloud's copy only after this.
pub const JWKS_CACHE_MAX_AGE: Duration = Duration::from_secs(3600);

/// Refuses to promote a next key of `algorithms` that was published less than
/// `min_age` before `now`: a token it signs could reach a cloud whose cached
/// JWKS does not have it yet.
pub fn check_next_published(
    manifest: &Manifest,
    algorithms: &[SigningAlgorithm],
    now: OffsetDateTime,
    min_age: Duration,
) -> Result<(), KeySetError> {
    for key in &manifest.keys {
        if key.state == KeyState::Next && algorithms.contains(&key.algorithm) {
            let ready_at = key.created_at + min_age;
            if now < ready_at {
                return Err(KeySetError::NextTooNew {
                    algorithm: key.algorithm,
                    published_at: key.created_at,
                    ready_at,
                });
            }
        }
    }
    Ok(())
}

pub fn rotate(
    manifest: &Manifest,
    new_next: Vec<KeyEntry>,
    now: OffsetDateTime,
    overlap: Duration,
) -> Result<Rotation, KeySetError> {
    let mut keys = manifest.keys.clone();
    let mut pruned = Vec::new();
    for fresh in &new_next {
        let algorithm = fresh.algorithm;
        if !keys.iter().any(|k| k.algorithm == algorithm) {
            return Err(KeySetError::NoKeys(algorithm));
        }
        if !keys
            .iter()
            .any(|k| k.algorithm == algorithm && k.state == KeyState::Next)
        {
            return Err(KeySetError::NoNextKey(algorithm));
        }
        for key in keys.iter_mut().filter(|k| k.algorithm == algorithm) {
            key.state = match key.state {
                KeyState::Current => KeyState::Retiring {
                    retire_after: now + overlap,
                },
                KeyState::Next => KeyState::Current,
                retiring => retiring,
            };
        }
        let (expired, kept): (Vec<_>, Vec<_>) = keys.into_iter().partition(|k| {
            k.algorithm == algorithm
                && matches!(k.state, KeyState::Retiring { retire_after } if retire_after <= now)
        });
        pruned.extend(expired);
        keys = kept;
        keys.push(KeyEntry {
            state: KeyState::Next,
            ..fresh.clone()
        });
    }
    let manifest = Manifest::sorted(keys);
    manifest.check().map_err(|problem| KeySetError::Manifest {
        path: MANIFEST.into(),
        problem,
    })?;
    Ok(Rotation { manifest, pruned })
}

/// Fresh keys, one per entry of `algorithms`, in that order. Generated side by
/// side: an RSA key takes a good fraction of a second.
pub(super) fn random_keys(
    algorithms: &[SigningAlgorithm],
) -> Result<Vec<(SigningKey, SecretString)>, SigningKeyError> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = algorithms
            .iter()
            .map(|algorithm| scope.spawn(move || SigningKey::random(*algorithm)))
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("key generation does not panic"))
            .collect()
    })
}
