//! stackpass's ES256 signing key: generated once into a 0600 PKCS#8 PEM file,
//! loaded at start, published as a JWK whose `kid` is its RFC 7638 thumbprint (so
//! the same key always has the same `kid`, on every replica).

use std::io::Write;
use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{DecodingKey, EncodingKey};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum SigningKeyError {
    #[error(
        "signing key {path} does not exist; create one with `stackpass keys generate --out {path}`"
    )]
    NotFound { path: String },
    #[error("could not read signing key {path}: {message}")]
    Unreadable { path: String, message: String },
    #[error(
        "signing key {path} is readable by other users (mode {mode:o}); run `chmod 600 {path}`"
    )]
    TooOpen { path: String, mode: u32 },
    #[error("signing key {path} is not a PKCS#8 PEM P-256 private key")]
    Invalid { path: String },
    #[error("{path} already exists; refusing to overwrite a key (move it away first)")]
    Exists { path: String },
    #[error("could not write signing key {path}: {message}")]
    Unwritable { path: String, message: String },
}

pub struct SigningKey {
    encoding: EncodingKey,
    kid: String,
    x: String,
    y: String,
}

impl SigningKey {
    pub fn load(path: &Path) -> Result<Self, SigningKeyError> {
        let shown = path.display().to_string();
        let metadata = std::fs::metadata(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => SigningKeyError::NotFound {
                path: shown.clone(),
            },
            _ => SigningKeyError::Unreadable {
                path: shown.clone(),
                message: e.to_string(),
            },
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = metadata.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(SigningKeyError::TooOpen { path: shown, mode });
            }
        }
        let pem = SecretString::from(std::fs::read_to_string(path).map_err(|e| {
            SigningKeyError::Unreadable {
                path: shown.clone(),
                message: e.to_string(),
            }
        })?);
        Self::from_pem(&pem).ok_or(SigningKeyError::Invalid { path: shown })
    }

    fn from_pem(pem: &SecretString) -> Option<Self> {
        let secret = p256::SecretKey::from_pkcs8_pem(pem.expose_secret()).ok()?;
        let point = secret.public_key().to_encoded_point(false);
        let x = URL_SAFE_NO_PAD.encode(point.x()?);
        let y = URL_SAFE_NO_PAD.encode(point.y()?);
        let encoding = EncodingKey::from_ec_pem(pem.expose_secret().as_bytes()).ok()?;
        // RFC 7638: the thumbprint covers the required members in lexicographic order.
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let kid = URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()));
        Some(SigningKey {
            encoding,
            kid,
            x,
            y,
        })
    }

    /// Creates a new key at `path` with mode 0600. Never overwrites: replacing a key
    /// that clouds trust must be a deliberate act.
    pub fn generate(path: &Path) -> Result<Self, SigningKeyError> {
        let shown = path.display().to_string();
        let secret = p256::SecretKey::random(&mut rand_core::OsRng);
        let pem = secret
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|_| SigningKeyError::Invalid {
                path: shown.clone(),
            })?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => SigningKeyError::Exists {
                path: shown.clone(),
            },
            _ => SigningKeyError::Unwritable {
                path: shown.clone(),
                message: e.to_string(),
            },
        })?;
        let unwritable = |e: std::io::Error| SigningKeyError::Unwritable {
            path: shown.clone(),
            message: e.to_string(),
        };
        file.write_all(pem.as_bytes()).map_err(unwritable)?;
        file.sync_all().map_err(unwritable)?;
        Self::from_pem(&SecretString::from(pem.to_string()))
            .ok_or(SigningKeyError::Invalid { path: shown })
    }

    /// Loads the key, creating it (and its directory, mode 0700) first if it does
    /// not exist. For development setups only.
    pub fn load_or_generate(path: &Path) -> Result<Self, SigningKeyError> {
        if let Some(parent) = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty() && !p.exists())
        {
            let mut builder = std::fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::DirBuilderExt;
                builder.mode(0o700);
            }
            builder
                .create(parent)
                .map_err(|e| SigningKeyError::Unwritable {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?;
        }
        match Self::generate(path) {
            Err(SigningKeyError::Exists { .. }) => Self::load(path),
            other => other,
        }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn encoding_key(&self) -> &EncodingKey {
        &self.encoding
    }

    pub fn decoding_key(&self) -> DecodingKey {
        DecodingKey::from_ec_components(&self.x, &self.y)
            .expect("coordinates come from a valid P-256 key")
    }

    /// The public half as a JWK, as published in `/.well-known/jwks.json`.
    pub fn public_jwk(&self) -> serde_json::Value {
        serde_json::json!({
            "kty": "EC",
            "crv": "P-256",
            "x": self.x,
            "y": self.y,
            "kid": self.kid,
            "use": "sig",
            "alg": "ES256",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_private_and_reload_with_the_same_kid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        let generated = SigningKey::generate(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let loaded = SigningKey::load(&path).unwrap();
        assert_eq!(generated.kid(), loaded.kid());
        assert_eq!(generated.public_jwk(), loaded.public_jwk());
        assert!(matches!(
            SigningKey::generate(&path),
            Err(SigningKeyError::Exists { .. })
        ));
    }

    #[test]
    fn refuses_missing_open_and_invalid_keys() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = SigningKey::load(&missing).err().unwrap().to_string();
        assert!(err.contains("stackpass keys generate"), "{err}");

        let invalid = dir.path().join("invalid.pem");
        std::fs::write(&invalid, "not a key").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&invalid, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(matches!(
                SigningKey::load(&invalid),
                Err(SigningKeyError::TooOpen { .. })
            ));
            std::fs::set_permissions(&invalid, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        assert!(matches!(
            SigningKey::load(&invalid),
            Err(SigningKeyError::Invalid { .. })
        ));
    }
}
