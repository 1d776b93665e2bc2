//! Signing keys and tokens: [`TestKey`], an ES256 key pair as an identity
//! provider holds it, and [`sign_jwt`], which assembles a JWT from raw JSON.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::{EncodePrivateKey, LineEnding};
use serde_json::{json, Value};

/// An ES256 key pair as an identity provider holds it.
#[derive(Clone)]
pub struct TestKey {
    pub kid: String,
    pub pem: String,
    pub x: String,
    pub y: String,
}

impl TestKey {
    pub fn generate(kid: &str) -> TestKey {
        let secret = p256::SecretKey::random(&mut rand_core::OsRng);
        let point = secret.public_key().to_encoded_point(false);
        TestKey {
            kid: kid.to_owned(),
            pem: secret.to_pkcs8_pem(LineEnding::LF).unwrap().to_string(),
            x: URL_SAFE_NO_PAD.encode(point.x().unwrap()),
            y: URL_SAFE_NO_PAD.encode(point.y().unwrap()),
        }
    }

    /// As Backstage publishes it: no `use`, `alg` ES256.
    pub fn jwk(&self) -> Value {
        json!({ "kty": "EC", "x": self.x, "y": self.y, "crv": "P-256", "kid": self.kid, "alg": "ES256" })
    }

    pub fn public_key_pem(&self) -> String {
        use p256::pkcs8::{DecodePrivateKey, EncodePublicKey};
        let secret = p256::SecretKey::from_pkcs8_pem(&self.pem).unwrap();
        secret
            .public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap()
    }
}

/// Assembles a JWT from raw JSON so tests can build tokens no library would
/// (`alg: none`, HS256 keyed with a public key, ...).
pub fn sign_jwt(header: &Value, claims: &Value, signer: Signer<'_>) -> String {
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = match signer {
        Signer::Es256(key) => {
            let key = jsonwebtoken::EncodingKey::from_ec_pem(key.pem.as_bytes()).unwrap();
            jsonwebtoken::crypto::sign(
                signing_input.as_bytes(),
                &key,
                jsonwebtoken::Algorithm::ES256,
            )
            .unwrap()
        }
        Signer::Hs256(secret) => {
            let key = jsonwebtoken::EncodingKey::from_secret(secret);
            jsonwebtoken::crypto::sign(
                signing_input.as_bytes(),
                &key,
                jsonwebtoken::Algorithm::HS256,
            )
            .unwrap()
        }
        Signer::Unsigned => String::new(),
    };
    format!("{signing_input}.{signature}")
}

pub enum Signer<'a> {
    Es256(&'a TestKey),
    Hs256(&'a [u8]),
    Unsigned,
}

pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}
