//! The CLI's credential cache: the broker's answers, one 0600 file per key in a
//! 0700 directory of the user's own (`$STACKPASS_CACHE_DIR`, else
//! `$XDG_CACHE_HOME/stackpass`, else `~/.cache/stackpass`). SDKs call
//! `credential_process` again and again, often on every client they build; an
//! answer is reused until a margin before it expires, so they do not each cost
//! an issuance.
//!
//! A key is the broker, the identity (the token's `iss`, `sub` and `act.sub`,
//! read, not verified: the broker verifies, this only separates entries), the
//! stack, the provider, the mode and the requested duration. An entry is used
//! only if its file and directory belong to this user and nobody else can
//! write them, it parses, and its stored key is the key asked for; anything
//! else is ignored (and replaced by the next answer), never trusted. The
//! identity token itself is never written.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::CliError;

const FILE_PREFIX: &str = "credentials-";
/// Never hand out an answer closer than this (seconds) to its expiry.
const MAX_MARGIN_SECONDS: i64 = 300;

/// What an entry is for. Stored in the entry and compared on read, so a file
/// renamed or written for another key is never served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheKey {
    pub server: String,
    pub identity: String,
    pub stack: String,
    pub provider: String,
    pub mode: String,
    pub duration_seconds: Option<u64>,
}

impl CacheKey {
    pub fn new(
        server: &str,
        token: &SecretString,
        stack: &str,
        provider: &str,
        mode: &str,
        duration: Option<Duration>,
    ) -> CacheKey {
        CacheKey {
            server: server.trim_end_matches('/').to_owned(),
            identity: identity(token),
            stack: stack.to_owned(),
            provider: provider.to_owned(),
            mode: mode.to_owned(),
            duration_seconds: duration.map(|d| d.as_secs()),
        }
    }

    fn file_name(&self) -> String {
        let digest = Sha256::digest(serde_json::to_vec(self).unwrap_or_default());
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        format!("{FILE_PREFIX}{hex}.json")
    }
}

/// A JWT's claims, read without verifying anything (the broker verifies).
fn unverified_claims(token: &str) -> Option<serde_json::Value> {
    token
        .split('.')
        .nth(1)
        .and_then(|payload| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .ok()
        })
        .and_then(|json| serde_json::from_slice(&json).ok())
}

/// When the token says it expires, if it is a JWT that says so.
pub fn token_expiry(token: &SecretString) -> Option<OffsetDateTime> {
    let exp = unverified_claims(token.expose_secret())?
        .get("exp")?
        .as_i64()?;
    OffsetDateTime::from_unix_timestamp(exp).ok()
}

/// `iss sub [act.sub]` from the token's payload; a token that is not a JWT
/// is known by its SHA-256 (the token is never stored).
fn identity(token: &SecretString) -> String {
    let token = token.expose_secret();
    let claims = unverified_claims(token);
    let text = |value: Option<&serde_json::Value>| {
        value.and_then(serde_json::Value::as_str).map(str::to_owned)
    };
    match claims {
        Some(claims) => match (text(claims.get("iss")), text(claims.get("sub"))) {
            (Some(iss), Some(sub)) => {
                let actor = text(claims.get("act").and_then(|act| act.get("sub")));
                format!("{iss} {sub} {}", actor.unwrap_or_default())
            }
            _ => opaque(token),
        },
        None => opaque(token),
    }
}

fn opaque(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("token-sha256:{hex}")
}

#[derive(Serialize, Deserialize)]
struct Entry {
    version: u32,
    key: CacheKey,
    fetched_at: String,
    expires_at: String,
    /// The broker's answer, exactly as it came.
    answer: String,
}

/// When a credential fetched at `fetched_at` that expires at `expires_at`
/// should be replaced: five minutes before its end, or halfway through its
/// life if it is short.
pub fn renewal_time(fetched_at: OffsetDateTime, expires_at: OffsetDateTime) -> OffsetDateTime {
    let life: time::Duration = (expires_at - fetched_at).max(time::Duration::ZERO);
    let margin: time::Duration = (life / 2_i32).min(time::Duration::seconds(MAX_MARGIN_SECONDS));
    expires_at - margin
}

/// Whether [`renewal_time`] has come at `now`.
pub fn needs_refresh(
    fetched_at: OffsetDateTime,
    expires_at: OffsetDateTime,
    now: OffsetDateTime,
) -> bool {
    now >= renewal_time(fetched_at, expires_at)
}

pub struct CredentialCache {
    dir: PathBuf,
}

impl CredentialCache {
    /// The user's cache directory (not created yet), or `None` without one.
    pub fn locate() -> Option<CredentialCache> {
        let absolute = |name| {
            std::env::var_os(name)
                .map(PathBuf::from)
                .filter(|path| path.is_absolute())
        };
        let dir = absolute("STACKPASS_CACHE_DIR")
            .or_else(|| absolute("XDG_CACHE_HOME").map(|dir| dir.join("stackpass")))
            .or_else(|| absolute("HOME").map(|home| home.join(".cache/stackpass")))?;
        Some(CredentialCache { dir })
    }

    /// The broker's answer for `key`, if a trustworthy entry is still fresh.
    pub fn get(&self, key: &CacheKey) -> Option<String> {
        if !self.dir_is_private() {
            return None;
        }
        let path = self.dir.join(key.file_name());
        let meta = fs::symlink_metadata(&path).ok()?;
        if !meta.file_type().is_file()
            || meta.uid() != rustix::process::getuid().as_raw()
            || meta.mode() & 0o077 != 0
        {
            return None;
        }
        let entry: Entry = serde_json::from_slice(&fs::read(&path).ok()?).ok()?;
        if entry.version != 1 || entry.key != *key {
            return None;
        }
        let fetched_at = OffsetDateTime::parse(&entry.fetched_at, &Rfc3339).ok()?;
        let expires_at = OffsetDateTime::parse(&entry.expires_at, &Rfc3339).ok()?;
        (!needs_refresh(fetched_at, expires_at, OffsetDateTime::now_utc())).then_some(entry.answer)
    }

    /// Stores an answer (replacing whatever file was there) and removes the
    /// user's expired entries. A cache that cannot be written is reported,
    /// not fatal: the credential was issued either way.
    pub fn put(&self, key: &CacheKey, answer: &str, expires_at: &str) -> Result<(), String> {
        self.make_dir()?;
        let entry = Entry {
            version: 1,
            key: key.clone(),
            fetched_at: OffsetDateTime::now_utc()
                .format(&Rfc3339)
                .map_err(|e| e.to_string())?,
            expires_at: expires_at.to_owned(),
            answer: answer.to_owned(),
        };
        let text = serde_json::to_vec(&entry).map_err(|e| e.to_string())?;
        write_private(&self.dir.join(key.file_name()), &text)
            .map_err(|e| format!("could not write {}: {e}", self.dir.display()))?;
        self.remove_expired();
        Ok(())
    }

    /// Deletes every entry; returns how many there were.
    pub fn clear(&self) -> Result<usize, CliError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => {
                return Err(CliError::new(
                    format!("could not read the cache {}: {e}", self.dir.display()),
                    "check the directory's permissions, or set STACKPASS_CACHE_DIR",
                ))
            }
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            if is_cache_file(&entry.file_name().to_string_lossy()) {
                fs::remove_file(entry.path()).map_err(|e| {
                    CliError::new(
                        format!("could not remove {}: {e}", entry.path().display()),
                        "check the directory's permissions",
                    )
                })?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn make_dir(&self) -> Result<(), String> {
        if !self.dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.dir)
                .map_err(|e| format!("could not create {}: {e}", self.dir.display()))?;
        }
        if self.dir_is_private() {
            Ok(())
        } else {
            Err(format!(
                "{} is not a directory of yours that only you can write (0700); fix or remove it",
                self.dir.display()
            ))
        }
    }

    /// Others must not be able to plant or swap entries.
    fn dir_is_private(&self) -> bool {
        fs::symlink_metadata(&self.dir).is_ok_and(|meta| {
            meta.is_dir()
                && meta.uid() == rustix::process::getuid().as_raw()
                && meta.permissions().mode() & 0o022 == 0
        })
    }

    fn remove_expired(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        let now = OffsetDateTime::now_utc();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !is_cache_file(&name) {
                continue;
            }
            let expired = fs::read(entry.path())
                .ok()
                .and_then(|text| serde_json::from_slice::<Entry>(&text).ok())
                .and_then(|entry| OffsetDateTime::parse(&entry.expires_at, &Rfc3339).ok())
                .is_none_or(|expires_at| expires_at <= now);
            if expired {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

/// Writes `contents` to `path` whole, readable by this user alone: a new
/// 0600 file beside it, then a rename over whatever was there, so a reader
/// never sees half a file (or a file someone else made).
pub(super) fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = path.with_file_name(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
    let written = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&temp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written
}

fn is_cache_file(name: &str) -> bool {
    (name.starts_with(FILE_PREFIX) && name.ends_with(".json"))
        || (name.starts_with(&format!(".{FILE_PREFIX}")) && name.ends_with(".tmp"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> CacheKey {
        let token = SecretString::from(format!(
            "h.{}.s",
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(r#"{"iss":"https://idp","sub":"user:default/jane"}"#)
        ));
        CacheKey::new(
            "http://broker/",
            &token,
            "pulumi:acme/payments/dev",
            "aws",
            "credentials",
            None,
        )
    }

    fn in_an_hour() -> String {
        (OffsetDateTime::now_utc() + time::Duration::hours(1))
            .format(&Rfc3339)
            .unwrap()
    }

    #[test]
    fn the_identity_is_the_tokens_issuer_and_subject_never_the_token() {
        assert_eq!(key().identity, "https://idp user:default/jane ");
        let opaque = identity(&SecretString::from("not-a-jwt".to_owned()));
        assert!(opaque.starts_with("token-sha256:") && !opaque.contains("not-a-jwt"));
    }

    #[test]
    fn a_fresh_answer_is_reused_and_files_are_private() {
        let home = tempfile::tempdir().unwrap();
        let cache = CredentialCache {
            dir: home.path().join("stackpass"),
        };
        assert_eq!(cache.get(&key()), None);
        cache.put(&key(), "{answer}", &in_an_hour()).unwrap();
        assert_eq!(cache.get(&key()).as_deref(), Some("{answer}"));
        let file = cache.dir.join(key().file_name());
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(&cache.dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let mut other = key();
        other.duration_seconds = Some(3600);
        assert_eq!(cache.get(&other), None, "another duration is another key");
        assert_eq!(cache.clear().unwrap(), 1);
        assert_eq!(cache.get(&key()), None);
    }

    #[test]
    fn corrupt_loose_or_misplaced_entries_are_ignored_then_replaced() {
        let home = tempfile::tempdir().unwrap();
        let cache = CredentialCache {
            dir: home.path().join("stackpass"),
        };
        cache.put(&key(), "{answer}", &in_an_hour()).unwrap();
        let file = cache.dir.join(key().file_name());
        fs::write(&file, b"{not json").unwrap();
        assert_eq!(cache.get(&key()), None);
        cache.put(&key(), "{again}", &in_an_hour()).unwrap();
        assert_eq!(cache.get(&key()).as_deref(), Some("{again}"));
        // Readable by others: not trusted.
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(cache.get(&key()), None);
        // An entry for another key copied into this key's place.
        let mut other = key();
        other.stack = "pulumi:acme/payments/prod".into();
        cache.put(&other, "{prod}", &in_an_hour()).unwrap();
        fs::copy(cache.dir.join(other.file_name()), &file).unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(cache.get(&key()), None);
        // A directory others can write: nothing in it is trusted.
        cache.put(&key(), "{answer}", &in_an_hour()).unwrap();
        fs::set_permissions(&cache.dir, fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(cache.get(&key()), None);
        assert!(cache.put(&key(), "{answer}", &in_an_hour()).is_err());
    }

    #[test]
    fn refresh_comes_five_minutes_early_or_at_half_life() {
        let t = OffsetDateTime::UNIX_EPOCH;
        let hour = time::Duration::hours(1);
        let min = time::Duration::minutes(1);
        assert!(!needs_refresh(t, t + hour, t + 54 * min));
        assert!(needs_refresh(t, t + hour, t + 55 * min));
        let short = time::Duration::seconds(10);
        assert!(!needs_refresh(t, t + short, t + time::Duration::seconds(4)));
        assert!(needs_refresh(t, t + short, t + time::Duration::seconds(5)));
        assert!(needs_refresh(t, t - short, t));
    }
}
