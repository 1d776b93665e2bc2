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

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use stackpass_provider::SigningAlgorithm;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::ring::{KeyRing, RingKey};
use super::signing_key::{create_private_dir, sync_parent, write_private_file};
use super::{SigningKey, SigningKeyError};

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
fn random_keys(
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

/// A key set directory.
#[derive(Debug, Clone)]
pub struct KeyDir {
    path: PathBuf,
}

/// Held while a command changes the key set; removes the lock file on drop.
struct Lock {
    path: PathBuf,
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl KeyDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        KeyDir { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn shown(&self) -> String {
        self.path.display().to_string()
    }

    pub fn manifest_path(&self) -> PathBuf {
        self.path.join(MANIFEST)
    }

    /// Whether the directory holds a key set (its manifest exists).
    pub fn exists(&self) -> bool {
        self.manifest_path().exists()
    }

    fn read_manifest_text(&self) -> Result<String, KeySetError> {
        let path = self.manifest_path();
        std::fs::read_to_string(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => KeySetError::Missing { dir: self.shown() },
            _ => KeySetError::Unreadable {
                path: path.display().to_string(),
                message: e.to_string(),
            },
        })
    }

    pub fn read_manifest(&self) -> Result<Manifest, KeySetError> {
        let text = self.read_manifest_text()?;
        Manifest::parse(&text).map_err(|problem| KeySetError::Manifest {
            path: self.manifest_path().display().to_string(),
            problem,
        })
    }

    /// A digest of the manifest as it is on disk (empty if it cannot be read):
    /// a change means the key set changed.
    pub fn fingerprint(&self) -> Vec<u8> {
        std::fs::read(self.manifest_path())
            .map(|bytes| Sha256::digest(bytes).to_vec())
            .unwrap_or_default()
    }

    /// Loads every key the manifest lists, except retiring keys past
    /// `retire_after` (no longer published, and pruned by the next rotation).
    /// If the manifest changes while the keys load (another host rotating),
    /// loads again from the new one.
    pub fn load(&self, now: OffsetDateTime) -> Result<KeyRing, KeySetError> {
        let mut attempts = 0;
        loop {
            let before = self.fingerprint();
            let loaded = self.load_once(now);
            attempts += 1;
            if loaded.is_ok() || attempts == 3 || self.fingerprint() == before {
                return loaded;
            }
        }
    }

    fn load_once(&self, now: OffsetDateTime) -> Result<KeyRing, KeySetError> {
        let manifest = self.read_manifest()?;
        let mut keys = Vec::new();
        for entry in manifest.keys {
            if !entry.state.published_at(now) {
                continue;
            }
            let key = self.load_key(&entry)?;
            keys.push(RingKey {
                key,
                state: entry.state,
            });
        }
        Ok(KeyRing::new(keys))
    }

    fn load_key(&self, entry: &KeyEntry) -> Result<SigningKey, KeySetError> {
        let path = self.path.join(entry.file_name());
        let (key, _) = SigningKey::load_file(&path, entry.algorithm).map_err(|error| {
            KeySetError::KeyFile {
                kid: entry.kid.clone(),
                algorithm: entry.algorithm,
                error,
            }
        })?;
        if key.kid() != entry.kid {
            return Err(KeySetError::KidMismatch {
                path: path.display().to_string(),
                kid: entry.kid.clone(),
                actual: key.kid().to_owned(),
            });
        }
        Ok(key)
    }

    fn lock(&self) -> Result<Lock, KeySetError> {
        let path = self.path.join(LOCK);
        let shown = path.display().to_string();
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut file) => {
                use std::io::Write;
                let _ = writeln!(file, "{}", std::process::id());
                Ok(Lock { path })
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(KeySetError::Locked { path: shown })
            }
            Err(e) => Err(KeySetError::Unwritable {
                path: shown,
                message: e.to_string(),
            }),
        }
    }

    /// Replaces the manifest atomically: a temporary file, synced, renamed over
    /// it, the directory synced. Readers see the old or the new manifest whole.
    fn write_manifest(&self, manifest: &Manifest) -> Result<(), KeySetError> {
        let path = self.manifest_path();
        let temporary = self
            .path
            .join(format!(".{MANIFEST}.{}.tmp", uuid::Uuid::new_v4()));
        let unwritable = |e: std::io::Error| KeySetError::Unwritable {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let written = (|| {
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&temporary)?;
            file.write_all(manifest.to_json().as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&temporary, &path)
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&temporary);
            return Err(unwritable(e));
        }
        sync_parent(&path);
        Ok(())
    }

    fn write_key(&self, entry: &KeyEntry, pem: &SecretString) -> Result<(), KeySetError> {
        Ok(write_private_file(&self.path.join(entry.file_name()), pem)?)
    }

    /// Creates the key set: for every algorithm a current and a next key. With
    /// `import_es256` (a key and its PEM), that key is ES256's current key, so
    /// its kid, which clouds already trust, survives the move. Refuses a
    /// directory that already holds a key set.
    pub fn create(
        &self,
        import_es256: Option<(SigningKey, SecretString)>,
        now: OffsetDateTime,
    ) -> Result<Manifest, KeySetError> {
        create_private_dir(&self.path).map_err(|e| KeySetError::Unwritable {
            path: self.shown(),
            message: e.to_string(),
        })?;
        let _lock = self.lock()?;
        if self.exists() {
            return Err(KeySetError::AlreadyExists { dir: self.shown() });
        }
        let mut wanted = Vec::new();
        for algorithm in SigningAlgorithm::ALL {
            if algorithm != SigningAlgorithm::Es256 || import_es256.is_none() {
                wanted.push((algorithm, KeyState::Current));
            }
            wanted.push((algorithm, KeyState::Next));
        }
        let algorithms: Vec<_> = wanted.iter().map(|(a, _)| *a).collect();
        let mut keys: Vec<_> = random_keys(&algorithms)?
            .into_iter()
            .zip(wanted.into_iter().map(|(_, state)| state))
            .collect();
        if let Some(imported) = import_es256 {
            keys.push((imported, KeyState::Current));
        }
        let mut entries = Vec::new();
        for ((key, pem), state) in &keys {
            let entry = KeyEntry::new(key, *state, now);
            self.write_key(&entry, pem)?;
            entries.push(entry);
        }
        let manifest = Manifest::sorted(entries);
        manifest.check().map_err(|problem| KeySetError::Manifest {
            path: self.manifest_path().display().to_string(),
            problem,
        })?;
        self.write_manifest(&manifest)?;
        Ok(manifest)
    }

    /// Rotates `algorithm` (or every algorithm the set has) at `now`: see
    /// [`rotate`]. The whole set must load first, so a broken set is never
    /// rotated further. New key files are written before the manifest that
    /// names them; pruned keys' files are deleted after it.
    pub fn rotate(
        &self,
        algorithm: Option<SigningAlgorithm>,
        overlap: Duration,
        now: OffsetDateTime,
    ) -> Result<Rotation, KeySetError> {
        if !self.exists() {
            return Err(KeySetError::Missing { dir: self.shown() });
        }
        let _lock = self.lock()?;
        let manifest = self.read_manifest()?;
        self.load_once(now)?;
        let algorithms = match algorithm {
            Some(algorithm) => vec![algorithm],
            None => manifest.algorithms(),
        };
        let fresh: Vec<_> = random_keys(&algorithms)?
            .into_iter()
            .map(|(key, pem)| (KeyEntry::new(&key, KeyState::Next, now), pem))
            .collect();
        let rotation = rotate(
            &manifest,
            fresh.iter().map(|(entry, _)| entry.clone()).collect(),
            now,
            overlap,
        )?;
        for (entry, pem) in &fresh {
            self.write_key(entry, pem)?;
        }
        self.write_manifest(&rotation.manifest)?;
        for entry in &rotation.pruned {
            let _ = std::fs::remove_file(self.path.join(entry.file_name()));
        }
        Ok(rotation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const HOUR: Duration = Duration::from_secs(3600);

    fn kid(n: u8) -> String {
        format!("{}{:02}", "k".repeat(41), n)
    }

    fn entry(n: u8, algorithm: SigningAlgorithm, state: KeyState) -> KeyEntry {
        KeyEntry {
            kid: kid(n),
            algorithm,
            state,
            created_at: datetime!(2026-11-01 00:00 UTC),
        }
    }

    fn states(manifest: &Manifest) -> Vec<(String, SigningAlgorithm, KeyState)> {
        manifest
            .keys
            .iter()
            .map(|k| (k.kid.clone(), k.algorithm, k.state))
            .collect()
    }

    use SigningAlgorithm::{Es256, Rs256};

    #[test]
    fn rotation_promotes_next_retires_current_and_prunes_expired_keys() {
        let now = datetime!(2026-11-29 12:00 UTC);
        let manifest = Manifest {
            keys: vec![
                entry(1, Es256, KeyState::Current),
                entry(2, Es256, KeyState::Next),
                entry(
                    3,
                    Es256,
                    KeyState::Retiring {
                        retire_after: datetime!(2026-11-29 11:00 UTC),
                    },
                ),
                entry(
                    4,
                    Es256,
                    KeyState::Retiring {
                        retire_after: datetime!(2026-11-29 13:00 UTC),
                    },
                ),
                entry(5, Rs256, KeyState::Current),
                entry(6, Rs256, KeyState::Next),
            ],
        };
        let rotated = rotate(
            &manifest,
            vec![entry(7, Es256, KeyState::Next)],
            now,
            24 * HOUR,
        )
        .unwrap();
        assert_eq!(
            states(&rotated.manifest),
            [
                (kid(2), Es256, KeyState::Current),
                (kid(7), Es256, KeyState::Next),
                (
                    kid(4),
                    Es256,
                    KeyState::Retiring {
                        retire_after: datetime!(2026-11-29 13:00 UTC)
                    }
                ),
                (
                    kid(1),
                    Es256,
                    KeyState::Retiring {
                        retire_after: datetime!(2026-11-30 12:00 UTC)
                    }
                ),
                (kid(5), Rs256, KeyState::Current),
                (kid(6), Rs256, KeyState::Next),
            ],
            "RS256 was not asked for and is untouched"
        );
        assert_eq!(
            rotated.pruned.iter().map(|k| &k.kid).collect::<Vec<_>>(),
            [&kid(3)]
        );

        // Rotating again an hour later: key 4 has expired, key 1 has not.
        let later = now + HOUR;
        let again = rotate(
            &rotated.manifest,
            vec![
                entry(8, Es256, KeyState::Next),
                entry(9, Rs256, KeyState::Next),
            ],
            later,
            24 * HOUR,
        )
        .unwrap();
        let current: Vec<_> = again
            .manifest
            .keys
            .iter()
            .filter(|k| k.state == KeyState::Current)
            .map(|k| (k.algorithm, k.kid.clone()))
            .collect();
        assert_eq!(current, [(Es256, kid(7)), (Rs256, kid(6))]);
        assert_eq!(
            again.pruned.iter().map(|k| &k.kid).collect::<Vec<_>>(),
            [&kid(4)]
        );
        let retiring: Vec<_> = again
            .manifest
            .keys
            .iter()
            .filter_map(|k| k.state.retire_after().map(|at| (k.kid.clone(), at)))
            .collect();
        assert_eq!(
            retiring,
            [
                (kid(1), datetime!(2026-11-30 12:00 UTC)),
                (kid(2), datetime!(2026-11-30 13:00 UTC)),
                (kid(5), datetime!(2026-11-30 13:00 UTC)),
            ]
        );
    }

    #[test]
    fn rotation_needs_a_next_key_and_keys_of_the_algorithm() {
        let now = datetime!(2026-11-29 12:00 UTC);
        let only_current = Manifest {
            keys: vec![entry(1, Es256, KeyState::Current)],
        };
        assert!(matches!(
            rotate(
                &only_current,
                vec![entry(2, Es256, KeyState::Next)],
                now,
                HOUR
            ),
            Err(KeySetError::NoNextKey(Es256))
        ));
        assert!(matches!(
            rotate(
                &only_current,
                vec![entry(2, Rs256, KeyState::Next)],
                now,
                HOUR
            ),
            Err(KeySetError::NoKeys(Rs256))
        ));
    }

    #[test]
    fn overlaps_cover_the_longest_token() {
        assert_eq!(choose_overlap(None, None).unwrap(), DEFAULT_OVERLAP);
        assert_eq!(
            choose_overlap(None, Some(12 * HOUR)).unwrap(),
            DEFAULT_OVERLAP
        );
        assert_eq!(choose_overlap(None, Some(30 * HOUR)).unwrap(), 31 * HOUR);
        assert_eq!(
            choose_overlap(Some(2 * HOUR), None).unwrap(),
            2 * HOUR,
            "an operator may choose less than the default"
        );
        let err = choose_overlap(Some(HOUR / 2), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("30m") && err.contains("(1h)") && err.contains("--config"),
            "{err}"
        );
        let err = choose_overlap(Some(6 * HOUR), Some(12 * HOUR))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("this configuration") && err.contains("(12h)"),
            "{err}"
        );
        assert!(choose_overlap(Some(12 * HOUR), Some(12 * HOUR)).is_ok());
    }

    #[test]
    fn retiring_keys_are_published_until_retire_after() {
        let at = datetime!(2026-11-29 12:00 UTC);
        let state = KeyState::Retiring { retire_after: at };
        assert!(state.published_at(at - Duration::from_secs(1)));
        assert!(!state.published_at(at));
        assert!(KeyState::Next.published_at(at) && KeyState::Current.published_at(at));
    }

    #[test]
    fn manifests_round_trip_and_bad_ones_are_refused() {
        let manifest = Manifest {
            keys: vec![
                entry(1, Es256, KeyState::Current),
                entry(2, Es256, KeyState::Next),
                entry(
                    3,
                    Es256,
                    KeyState::Retiring {
                        retire_after: datetime!(2026-11-30 12:00:00.5 UTC),
                    },
                ),
                entry(4, Rs256, KeyState::Current),
            ],
        };
        let text = manifest.to_json();
        assert!(
            text.contains("\"retire_after\": \"2026-11-30T12:00:00.5Z\""),
            "{text}"
        );
        assert_eq!(Manifest::parse(&text).unwrap(), manifest);

        let refused = |edit: &dyn Fn(&mut serde_json::Value)| {
            let mut value: serde_json::Value = serde_json::from_str(&text).unwrap();
            edit(&mut value);
            Manifest::parse(&value.to_string()).unwrap_err()
        };
        assert!(refused(&|v| v["keys"][1]["state"] = "current".into()).contains("2 current"));
        assert!(refused(&|v| {
            v["keys"][2].as_object_mut().unwrap().remove("retire_after");
        })
        .contains("needs retire_after"));
        assert!(
            refused(&|v| v["keys"][0]["kid"] = "../../etc/passwd".into()).contains("thumbprint")
        );
        assert!(refused(&|v| v["keys"][1]["kid"] = kid(1).into()).contains("twice"));
        assert!(refused(&|v| v["keys"][3]["algorithm"] = "HS256".into()).contains("HS256"));
        assert!(refused(&|v| v["version"] = 2.into()).contains("version 2"));
        assert!(refused(&|v| v["keys"][0]["extra"] = true.into()).contains("extra"));
    }

    #[test]
    fn a_key_set_is_created_once_rotated_and_loaded_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let keys = KeyDir::new(dir.path().join("keys"));
        let now = OffsetDateTime::now_utc();
        let imported_path = dir.path().join("legacy.pem");
        let legacy = SigningKey::generate(&imported_path).unwrap();
        let import = SigningKey::load_file(&imported_path, Es256).unwrap();
        let created = keys.create(Some(import), now).unwrap();
        assert_eq!(created.keys.len(), 4);
        assert!(created
            .keys
            .iter()
            .any(|k| k.kid == legacy.kid() && k.state == KeyState::Current));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(keys.path()), 0o700);
            for key in &created.keys {
                assert_eq!(mode(&keys.path().join(key.file_name())), 0o600);
            }
        }
        assert!(matches!(
            keys.create(None, now),
            Err(KeySetError::AlreadyExists { .. })
        ));

        let ring = keys.load(now).unwrap();
        assert_eq!(ring.current(Es256).unwrap().kid(), legacy.kid());
        assert_eq!(ring.algorithms(), [Es256, Rs256]);
        assert_eq!(ring.published(now).count(), 4);

        let rotation = keys.rotate(Some(Rs256), 2 * HOUR, now).unwrap();
        assert_eq!(rotation.manifest.keys.len(), 5);
        assert_eq!(keys.read_manifest().unwrap(), rotation.manifest);
        let ring = keys.load(now).unwrap();
        let next_rs256 = created
            .keys
            .iter()
            .find(|k| k.algorithm == Rs256 && k.state == KeyState::Next)
            .unwrap();
        assert_eq!(ring.current(Rs256).unwrap().kid(), next_rs256.kid);
        assert_eq!(ring.current(Es256).unwrap().kid(), legacy.kid());

        // Two hours and a bit later the old RS256 key is no longer loaded, and
        // the next rotation prunes it and deletes its file.
        let later = now + 2 * HOUR + Duration::from_secs(1);
        assert_eq!(keys.load(later).unwrap().published(later).count(), 4);
        let rotation = keys.rotate(Some(Rs256), 2 * HOUR, later).unwrap();
        assert_eq!(rotation.pruned.len(), 1);
        assert!(!keys.path().join(rotation.pruned[0].file_name()).exists());
        let leftovers = std::fs::read_dir(keys.path())
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                let name = name.to_string_lossy();
                name.starts_with('.') || name == LOCK
            })
            .count();
        assert_eq!(leftovers, 0, "no temporary or lock file is left behind");
    }

    #[test]
    fn loading_refuses_open_swapped_and_missing_key_files() {
        let dir = tempfile::tempdir().unwrap();
        let keys = KeyDir::new(dir.path());
        let now = OffsetDateTime::now_utc();
        assert!(matches!(keys.load(now), Err(KeySetError::Missing { .. })));
        let manifest = keys.create(None, now).unwrap();
        let es256: Vec<_> = manifest
            .keys
            .iter()
            .filter(|k| k.algorithm == Es256)
            .collect();
        let first = keys.path().join(es256[0].file_name());

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&first, std::fs::Permissions::from_mode(0o644)).unwrap();
            let err = keys.load(now).err().unwrap();
            assert!(
                matches!(
                    &err,
                    KeySetError::KeyFile {
                        error: SigningKeyError::TooOpen { .. },
                        ..
                    }
                ),
                "{err}"
            );
            assert!(err.to_string().contains("chmod 600"), "{err}");
            std::fs::set_permissions(&first, std::fs::Permissions::from_mode(0o600)).unwrap();
        }

        // A key file replaced by another key is refused by its thumbprint.
        let second = keys.path().join(es256[1].file_name());
        std::fs::remove_file(&first).unwrap();
        std::fs::copy(&second, &first).unwrap();
        assert!(matches!(
            keys.load(now),
            Err(KeySetError::KidMismatch { .. })
        ));

        std::fs::remove_file(&first).unwrap();
        assert!(matches!(
            keys.load(now),
            Err(KeySetError::KeyFile {
                error: SigningKeyError::NotFound { .. },
                ..
            })
        ));
    }

    #[test]
    fn a_held_lock_stops_a_second_change() {
        let dir = tempfile::tempdir().unwrap();
        let keys = KeyDir::new(dir.path());
        let now = OffsetDateTime::now_utc();
        keys.create(None, now).unwrap();
        let held = keys.lock().unwrap();
        let err = keys.rotate(None, HOUR, now).err().unwrap();
        assert!(matches!(err, KeySetError::Locked { .. }), "{err}");
        drop(held);
        keys.rotate(None, HOUR, now).unwrap();
    }
}
