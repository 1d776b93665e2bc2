//! One of stackpass's signing keys: ES256 (P-256) or RS256 (RSA, at least 2048
//! bits), kept as a 0600 PKCS#8 PEM file (or a root-owned 0640 one, as a
//! Kubernetes Secret is mounted) and published as a JWK whose `kid` is
//! its RFC 7638 thumbprint (so the same key always has the same `kid`, on every
//! replica). The private half lives only in `secrecy` types and ring's parsed
//! key pair; no error or log line ever carries it.
//!
//! Tokens are signed here rather than with `jsonwebtoken::encode`: that takes
//! the key as PKCS#8 bytes and parses it again on every signature, which for
//! P-256 derives the public point (a scalar multiplication as costly as the
//! signature itself) and for RSA re-validates the key. The key pair is parsed
//! once, at load; the token is the same compact JWS (RFC 7515) jsonwebtoken
//! writes and verifies.

use std::io::Write;
use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::DecodingKey;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use rsa::traits::PublicKeyParts;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use stackpass_provider::SigningAlgorithm;

/// Whether a key file with this mode and owner is readable by more than its
/// owner should let read it. PostgreSQL's rule for its TLS key: 0600 or
/// stricter, except that a file owned by root may be group-readable (0640),
/// because the administrator who owns it chose the group. That is how
/// Kubernetes mounts a Secret for a pod with an `fsGroup`: root-owned, mode
/// 0440, its group the pod's own (it cannot be 0600 and the broker's).
#[cfg(unix)]
fn too_open(mode: u32, owner: u32) -> bool {
    let group_read = if owner == 0 { 0o040 } else { 0 };
    mode & 0o077 & !group_read != 0
}

/// RSA keys smaller than this are refused, generated keys have exactly this.
pub const RSA_BITS: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum SigningKeyError {
    #[error(
        "signing key {path} does not exist; create a key set with `stackpass keys generate --dir DIR` (or a single ES256 key with `stackpass keys generate --out {path}`)"
    )]
    NotFound { path: String },
    #[error("could not read signing key {path}: {message}")]
    Unreadable { path: String, message: String },
    #[error(
        "signing key {path} is readable by other users (mode {mode:o}); run `chmod 600 {path}` (a file owned by root may be 0640)"
    )]
    TooOpen { path: String, mode: u32 },
    #[error("signing key {path} is not {expected}")]
    Invalid {
        path: String,
        expected: &'static str,
    },
    #[error("{path} already exists; refusing to overwrite a key (move it away first)")]
    Exists { path: String },
    #[error("could not write signing key {path}: {message}")]
    Unwritable { path: String, message: String },
    #[error("could not generate an {algorithm} key: {message}")]
    Generation {
        algorithm: SigningAlgorithm,
        message: String,
    },
    #[error("could not sign a token with key {kid}: {message}")]
    Signing { kid: String, message: String },
}

/// The public half as the JWK members that identify it.
#[derive(Clone)]
enum PublicKey {
    Ec { x: String, y: String },
    Rsa { n: String, e: String },
}

/// The private half, parsed once.
enum KeyPair {
    Ecdsa(ring::signature::EcdsaKeyPair),
    Rsa(ring::signature::RsaKeyPair),
}

impl KeyPair {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, ring::error::Unspecified> {
        let random = ring::rand::SystemRandom::new();
        match self {
            KeyPair::Ecdsa(pair) => pair
                .sign(&random, message)
                .map(|signature| signature.as_ref().to_vec()),
            KeyPair::Rsa(pair) => {
                let mut signature = vec![0; pair.public().modulus_len()];
                pair.sign(
                    &ring::signature::RSA_PKCS1_SHA256,
                    &random,
                    message,
                    &mut signature,
                )?;
                Ok(signature)
            }
        }
    }
}

pub struct SigningKey {
    algorithm: SigningAlgorithm,
    pair: KeyPair,
    kid: String,
    public: PublicKey,
}

/// What a PEM file must hold for each algorithm, for error messages.
fn expected(algorithm: SigningAlgorithm) -> &'static str {
    match algorithm {
        SigningAlgorithm::Es256 => "a PKCS#8 PEM P-256 private key",
        SigningAlgorithm::Rs256 => "a PKCS#8 PEM RSA private key of at least 2048 bits",
    }
}

pub(super) fn jwt_algorithm(algorithm: SigningAlgorithm) -> jsonwebtoken::Algorithm {
    match algorithm {
        SigningAlgorithm::Es256 => jsonwebtoken::Algorithm::ES256,
        SigningAlgorithm::Rs256 => jsonwebtoken::Algorithm::RS256,
    }
}

/// RFC 7638: SHA-256 over the required members in lexicographic order, without
/// whitespace, base64url without padding.
fn thumbprint(public: &PublicKey) -> String {
    let canonical = match public {
        PublicKey::Ec { x, y } => format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#),
        PublicKey::Rsa { n, e } => format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#),
    };
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

/// An RSA public key's JWK members: unsigned big-endian, no leading zeros.
fn rsa_members(key: &rsa::RsaPublicKey) -> PublicKey {
    PublicKey::Rsa {
        n: URL_SAFE_NO_PAD.encode(key.n().to_bytes_be()),
        e: URL_SAFE_NO_PAD.encode(key.e().to_bytes_be()),
    }
}

impl SigningKey {
    /// Parses a PKCS#8 PEM private key of `algorithm`. The reason on failure
    /// names what was expected, never the key.
    fn from_pem(algorithm: SigningAlgorithm, pem: &SecretString) -> Result<Self, &'static str> {
        let invalid = expected(algorithm);
        let (public, pair) = match algorithm {
            SigningAlgorithm::Es256 => {
                let secret =
                    p256::SecretKey::from_pkcs8_pem(pem.expose_secret()).map_err(|_| invalid)?;
                let point = secret.public_key().to_encoded_point(false);
                let public = PublicKey::Ec {
                    x: URL_SAFE_NO_PAD.encode(point.x().ok_or(invalid)?),
                    y: URL_SAFE_NO_PAD.encode(point.y().ok_or(invalid)?),
                };
                let der = secret.to_pkcs8_der().map_err(|_| invalid)?;
                let pair = ring::signature::EcdsaKeyPair::from_pkcs8(
                    &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    der.as_bytes(),
                    &ring::rand::SystemRandom::new(),
                )
                .map_err(|_| invalid)?;
                (public, KeyPair::Ecdsa(pair))
            }
            SigningAlgorithm::Rs256 => {
                let secret =
                    rsa::RsaPrivateKey::from_pkcs8_pem(pem.expose_secret()).map_err(|_| invalid)?;
                secret.validate().map_err(|_| invalid)?;
                if secret.n().bits() < RSA_BITS {
                    return Err(invalid);
                }
                let public = rsa_members(&secret.to_public_key());
                let der = secret.to_pkcs8_der().map_err(|_| invalid)?;
                let pair =
                    ring::signature::RsaKeyPair::from_pkcs8(der.as_bytes()).map_err(|_| invalid)?;
                (public, KeyPair::Rsa(pair))
            }
        };
        Ok(SigningKey {
            algorithm,
            pair,
            kid: thumbprint(&public),
            public,
        })
    }

    /// A fresh key in memory, with its PKCS#8 PEM for the caller to store.
    pub fn random(algorithm: SigningAlgorithm) -> Result<(Self, SecretString), SigningKeyError> {
        let failed = |message: String| SigningKeyError::Generation { algorithm, message };
        let pem = match algorithm {
            SigningAlgorithm::Es256 => p256::SecretKey::random(&mut rand_core::OsRng)
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| failed(e.to_string()))?,
            SigningAlgorithm::Rs256 => rsa::RsaPrivateKey::new(&mut rand_core::OsRng, RSA_BITS)
                .map_err(|e| failed(e.to_string()))?
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| failed(e.to_string()))?,
        };
        let pem = SecretString::from(pem.as_str());
        let key = Self::from_pem(algorithm, &pem).map_err(|e| failed(e.to_owned()))?;
        Ok((key, pem))
    }

    /// Loads a single ES256 key file (`issuer.signing_key`, development issuers).
    pub fn load(path: &Path) -> Result<Self, SigningKeyError> {
        Self::load_file(path, SigningAlgorithm::Es256).map(|(key, _)| key)
    }

    /// Loads a key file of `algorithm`, refusing files other users can read.
    /// Returns the PEM too, for copying the key into a key set.
    pub fn load_file(
        path: &Path,
        algorithm: SigningAlgorithm,
    ) -> Result<(Self, SecretString), SigningKeyError> {
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
            use std::os::unix::fs::{MetadataExt, PermissionsExt};
            let mode = metadata.permissions().mode() & 0o777;
            if too_open(mode, metadata.uid()) {
                return Err(SigningKeyError::TooOpen { path: shown, mode });
            }
        }
        #[cfg(not(unix))]
        let _ = metadata;
        let pem = SecretString::from(std::fs::read_to_string(path).map_err(|e| {
            SigningKeyError::Unreadable {
                path: shown.clone(),
                message: e.to_string(),
            }
        })?);
        let key = Self::from_pem(algorithm, &pem).map_err(|expected| SigningKeyError::Invalid {
            path: shown,
            expected,
        })?;
        Ok((key, pem))
    }

    /// Creates a new ES256 key at `path` with mode 0600. Never overwrites:
    /// replacing a key that clouds trust must be a deliberate act.
    pub fn generate(path: &Path) -> Result<Self, SigningKeyError> {
        let (key, pem) = Self::random(SigningAlgorithm::Es256)?;
        write_private_file(path, &pem)?;
        Ok(key)
    }

    /// Loads the ES256 key, creating it (and its directory, mode 0700) first if it
    /// does not exist. For development setups only.
    pub fn load_or_generate(path: &Path) -> Result<Self, SigningKeyError> {
        if let Some(parent) = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty() && !p.exists())
        {
            create_private_dir(parent).map_err(|e| SigningKeyError::Unwritable {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
        }
        match Self::generate(path) {
            Err(SigningKeyError::Exists { .. }) => Self::load(path),
            other => other,
        }
    }

    pub fn algorithm(&self) -> SigningAlgorithm {
        self.algorithm
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// `claims` as a compact JWS signed by this key, its header naming the
    /// key's algorithm and `kid`, with `typ` "JWT" unless another is given.
    pub fn sign_jwt<T: serde::Serialize>(
        &self,
        claims: &T,
        typ: Option<&str>,
    ) -> Result<String, SigningKeyError> {
        let failed = |message: String| SigningKeyError::Signing {
            kid: self.kid.clone(),
            message,
        };
        let mut header = jsonwebtoken::Header::new(jwt_algorithm(self.algorithm));
        header.kid = Some(self.kid.clone());
        if let Some(typ) = typ {
            header.typ = Some(typ.to_owned());
        }
        let header = serde_json::to_vec(&header).map_err(|e| failed(e.to_string()))?;
        let claims = serde_json::to_vec(claims).map_err(|e| failed(e.to_string()))?;
        let mut token = URL_SAFE_NO_PAD.encode(header);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(claims, &mut token);
        let signature = self
            .pair
            .sign(token.as_bytes())
            .map_err(|_| failed("the signature failed".into()))?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut token);
        Ok(token)
    }

    pub fn decoding_key(&self) -> DecodingKey {
        match &self.public {
            PublicKey::Ec { x, y } => DecodingKey::from_ec_components(x, y)
                .expect("coordinates come from a valid P-256 key"),
            PublicKey::Rsa { n, e } => DecodingKey::from_rsa_components(n, e)
                .expect("components come from a valid RSA key"),
        }
    }

    /// The public half as a JWK, as published in `/.well-known/jwks.json`.
    pub fn public_jwk(&self) -> serde_json::Value {
        let mut jwk = match &self.public {
            PublicKey::Ec { x, y } => serde_json::json!({
                "kty": "EC",
                "crv": "P-256",
                "x": x,
                "y": y,
            }),
            PublicKey::Rsa { n, e } => serde_json::json!({
                "kty": "RSA",
                "n": n,
                "e": e,
            }),
        };
        jwk["kid"] = self.kid.clone().into();
        jwk["use"] = "sig".into();
        jwk["alg"] = self.algorithm.as_str().into();
        jwk
    }
}

/// Creates `dir` (and its parents) with mode 0700.
pub(super) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Writes a new private file atomically and without ever replacing one: the
/// PEM goes to a 0600 temporary file beside `path`, is synced, and is then
/// hard-linked to `path` (which fails if `path` exists), so `path` is either
/// absent or complete.
pub(super) fn write_private_file(path: &Path, pem: &SecretString) -> Result<(), SigningKeyError> {
    let shown = path.display().to_string();
    let unwritable = |e: std::io::Error| SigningKeyError::Unwritable {
        path: shown.clone(),
        message: e.to_string(),
    };
    if path.exists() {
        return Err(SigningKeyError::Exists { path: shown });
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = path.with_file_name(format!(".{name}.{}.tmp", uuid::Uuid::new_v4()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let written = options.open(&temporary).and_then(|mut file| {
        file.write_all(pem.expose_secret().as_bytes())?;
        file.sync_all()
    });
    let linked = written.and_then(|()| std::fs::hard_link(&temporary, path));
    let _ = std::fs::remove_file(&temporary);
    match linked {
        Ok(()) => {
            sync_parent(path);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Err(SigningKeyError::Exists { path: shown })
        }
        Err(e) => Err(unwritable(e)),
    }
}

/// Makes a rename or link in `path`'s directory durable (best effort: not every
/// platform can sync a directory).
pub(super) fn sync_parent(path: &Path) {
    if let Some(parent) = path.parent() {
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        if let Ok(dir) = std::fs::File::open(parent) {
            let _ = dir.sync_all();
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(unix)]
    #[test]
    fn only_the_owner_reads_a_key_except_a_root_owned_one_its_group_may() {
        use super::too_open;
        for (mode, owner, refused) in [
            (0o600, 1000, false),
            (0o400, 1000, false),
            (0o640, 1000, true),
            (0o604, 1000, true),
            (0o600, 0, false),
            (0o440, 0, false),
            (0o640, 0, false),
            (0o660, 0, true),
            (0o650, 0, true),
            (0o644, 0, true),
            (0o444, 0, true),
        ] {
            assert_eq!(too_open(mode, owner), refused, "{mode:o} owned by {owner}");
        }
    }

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
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, ["key.pem"], "no temporary file is left behind");
    }

    #[test]
    fn rsa_keys_are_2048_bits_and_sign_what_their_jwk_verifies() {
        let (key, pem) = SigningKey::random(SigningAlgorithm::Rs256).unwrap();
        let jwk = key.public_jwk();
        assert_eq!(jwk["kty"], "RSA");
        assert_eq!(jwk["alg"], "RS256");
        assert_eq!(jwk["use"], "sig");
        assert_eq!(jwk["e"], "AQAB");
        let n = URL_SAFE_NO_PAD.decode(jwk["n"].as_str().unwrap()).unwrap();
        assert_eq!(n.len() * 8, RSA_BITS);
        assert!(jwk.get("d").is_none() && jwk.get("p").is_none());

        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some(key.kid().to_owned());
        let token = key
            .sign_jwt(
                &serde_json::json!({"sub": "x", "exp": 4_000_000_000u64}),
                None,
            )
            .unwrap();
        assert_eq!(jsonwebtoken::decode_header(&token).unwrap(), header);
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.required_spec_claims.clear();
        jsonwebtoken::decode::<serde_json::Value>(&token, &key.decoding_key(), &validation)
            .unwrap();

        // The PEM reloads to the same key, and is not an ES256 key.
        let again = SigningKey::from_pem(SigningAlgorithm::Rs256, &pem).unwrap();
        assert_eq!(again.kid(), key.kid());
        assert!(SigningKey::from_pem(SigningAlgorithm::Es256, &pem).is_err());
    }

    #[test]
    fn small_rsa_keys_are_refused() {
        let small = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 1024).unwrap();
        let pem = SecretString::from(small.to_pkcs8_pem(LineEnding::LF).unwrap().as_str());
        assert_eq!(
            SigningKey::from_pem(SigningAlgorithm::Rs256, &pem).err(),
            Some(expected(SigningAlgorithm::Rs256))
        );
    }

    /// RFC 7638 section 3.1: the example RSA key and its published thumbprint.
    #[test]
    fn rsa_thumbprints_match_rfc_7638() {
        const N: &str = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        let n = rsa::BigUint::from_bytes_be(&URL_SAFE_NO_PAD.decode(N).unwrap());
        let e = rsa::BigUint::from_bytes_be(&URL_SAFE_NO_PAD.decode("AQAB").unwrap());
        let public = rsa_members(&rsa::RsaPublicKey::new(n, e).unwrap());
        let PublicKey::Rsa { n, e } = &public else {
            panic!("an RSA key");
        };
        assert_eq!((n.as_str(), e.as_str()), (N, "AQAB"));
        assert_eq!(
            thumbprint(&public),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
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

    #[test]
    fn errors_never_carry_key_material() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rsa.pem");
        let (_, pem) = SigningKey::random(SigningAlgorithm::Rs256).unwrap();
        write_private_file(&path, &pem).unwrap();
        // An RSA key where an ES256 key is expected: the error names the file and
        // the expected kind, never the PEM.
        let err = SigningKey::load(&path).err().unwrap().to_string();
        let body: String = pem
            .expose_secret()
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .take(1)
            .collect();
        assert!(err.contains("P-256") && !err.contains(&body), "{err}");
    }
}
