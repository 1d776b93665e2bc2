//! [`KeyDir`]: the key set's directory on disk. Every write is a temporary
//! file renamed (manifest) or hard-linked (keys) into place, a key file is
//! never replaced, and a lock file keeps two commands from changing the set
//! at once.

use super::*;

/// A key set directory.
#[derive(Debug, Clone)]
pub struct KeyDir {
    path: PathBuf,
}

/// Held while a command changes the key set; removes the lock file on drop.
pub(super) struct Lock {
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

    pub(super) fn lock(&self) -> Result<Lock, KeySetError> {
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
    /// rotated further, and its next keys must have been published for
    /// `min_next_age` (see [`check_next_published`]). New key files are written
    /// before the manifest that names them; pruned keys' files are deleted
    /// after it.
    pub fn rotate(
        &self,
        algorithm: Option<SigningAlgorithm>,
        overlap: Duration,
        min_next_age: Duration,
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
        check_next_published(&manifest, &algorithms, now, min_next_age)?;
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
