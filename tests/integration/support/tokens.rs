//! Signing keys and tokens: [`TestKey`], an ES256 key pair as an identity
//! provider holds it, and [`sign_jwt`], which assembles a JWT from raw JSON;
//! [`RsaTestKey`] and [`OidcIssuer`], an RS256 OIDC issuer serving its
//! discovery document and JWKS at its issuer URL on loopback, which the
//! machine issuers' doubles (GitHub Actions, GitLab CI, Pulumi Deployments,
//! HCP Terraform, Kubernetes) mint their tokens with.

use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use rsa::traits::PublicKeyParts;

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
        Signer::Rs256(key) => {
            let key = jsonwebtoken::EncodingKey::from_rsa_pem(key.pem.as_bytes()).unwrap();
            jsonwebtoken::crypto::sign(
                signing_input.as_bytes(),
                &key,
                jsonwebtoken::Algorithm::RS256,
            )
            .unwrap()
        }
        Signer::Unsigned => String::new(),
    };
    format!("{signing_input}.{signature}")
}

pub enum Signer<'a> {
    Es256(&'a TestKey),
    Rs256(&'a RsaTestKey),
    Hs256(&'a [u8]),
    Unsigned,
}

pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// An RS256 key pair, as GitHub, GitLab, Pulumi Cloud, HCP Terraform and a
/// kube-apiserver sign their tokens with.
pub struct RsaTestKey {
    pub pem: String,
    pub n: String,
    pub e: String,
}

impl RsaTestKey {
    /// RSA key generation costs CPU: one key per test binary, and each
    /// issuer double publishes it under its own `kid`.
    pub fn shared() -> &'static RsaTestKey {
        static KEY: OnceLock<RsaTestKey> = OnceLock::new();
        KEY.get_or_init(|| {
            let secret = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048).unwrap();
            RsaTestKey {
                pem: secret.to_pkcs8_pem(LineEnding::LF).unwrap().to_string(),
                n: URL_SAFE_NO_PAD.encode(secret.n().to_bytes_be()),
                e: URL_SAFE_NO_PAD.encode(secret.e().to_bytes_be()),
            }
        })
    }

    pub fn jwk(&self, kid: &str) -> Value {
        json!({ "kty": "RSA", "n": self.n, "e": self.e, "kid": kid, "alg": "RS256", "use": "sig" })
    }
}

/// What an issuer double's discovery document says besides the standard fields.
struct IssuerState {
    issuer: String,
    kid: String,
    claims_supported: Vec<String>,
}

/// An OIDC issuer on loopback: `{issuer}/.well-known/openid-configuration`
/// and its `jwks_uri`, RS256, and tokens signed with [`RsaTestKey::shared`].
pub struct OidcIssuer {
    /// The exact `iss` its tokens carry.
    pub issuer: String,
    pub kid: String,
}

impl OidcIssuer {
    /// This issuer as the agents' identity provider (`agents = true`, for
    /// `component:agents/*`, audience `stackpass`) and the widest agent
    /// bounds; the bounds entry ends the text, so a test may append keys
    /// (a quota) to it.
    pub fn agents_config(&self) -> String {
        format!(
            r#"
[[identity.issuers]]
name = "agents"
kind = "oidc"
issuer = "{issuer}"
audiences = ["stackpass"]
algorithms = ["RS256"]
subjects = ["component:agents/*"]
agents = true

# Agents get nothing without bounds; these are the widest allowed.
[[policy.agents]]
name = "agents"
agents = ["component:agents/*"]
max_duration = "1h"
"#,
            issuer = self.issuer
        )
    }

    /// `path` is where under the host the issuer lives (`""`, `"/oidc"`),
    /// `jwks_path` where its keys are (GitHub: `/.well-known/jwks`).
    pub async fn start(
        path: &str,
        jwks_path: &str,
        kid: &str,
        claims_supported: &[&str],
    ) -> OidcIssuer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}{path}", listener.local_addr().unwrap());
        let state = Arc::new(IssuerState {
            issuer: issuer.clone(),
            kid: kid.to_owned(),
            claims_supported: claims_supported.iter().map(|c| c.to_string()).collect(),
        });
        let jwks_path = jwks_path.to_owned();
        let router = Router::new()
            .route(
                &format!("{path}/.well-known/openid-configuration"),
                get({
                    let jwks_path = jwks_path.clone();
                    move |State(state): State<Arc<IssuerState>>| async move {
                        Json(json!({
                            "issuer": state.issuer,
                            "jwks_uri": format!("{}{jwks_path}", state.issuer),
                            "subject_types_supported": ["public", "pairwise"],
                            "response_types_supported": ["id_token"],
                            "claims_supported": state.claims_supported,
                            "id_token_signing_alg_values_supported": ["RS256"],
                            "scopes_supported": ["openid"],
                        }))
                    }
                }),
            )
            .route(
                &format!("{path}{jwks_path}"),
                get(|State(state): State<Arc<IssuerState>>| async move {
                    Json(json!({ "keys": [RsaTestKey::shared().jwk(&state.kid)] }))
                }),
            )
            .with_state(state);
        tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        OidcIssuer {
            issuer,
            kid: kid.to_owned(),
        }
    }

    /// `claims` with `iss`, `iat`, `nbf`, `exp` (`lifetime` seconds) and
    /// `jti` added, signed RS256 under this issuer's `kid`.
    pub fn sign(&self, mut claims: Value, lifetime: i64) -> String {
        let now = now();
        let fields = claims.as_object_mut().unwrap();
        fields.insert("iss".into(), json!(self.issuer));
        fields.entry("iat").or_insert(json!(now));
        fields.entry("nbf").or_insert(json!(now));
        fields.entry("exp").or_insert(json!(now + lifetime));
        fields
            .entry("jti")
            .or_insert(json!(uuid::Uuid::new_v4().to_string()));
        sign_jwt(
            &json!({ "alg": "RS256", "typ": "JWT", "kid": self.kid }),
            &claims,
            Signer::Rs256(RsaTestKey::shared()),
        )
    }
}
