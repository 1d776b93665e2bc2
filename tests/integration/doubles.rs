//! The cloud doubles judge subject tokens as the clouds do: a token a test OIDC
//! issuer signs correctly is accepted, and each way the clouds refuse one
//! (audience, issuer, expiry, lifetime, subject size, algorithm, subject match,
//! forged signature, credential limit) is refused with the cloud's own error. Key
//! rotation is followed by refetching the key set once for an unknown `kid`.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs8::{EncodePrivateKey, LineEnding};
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};

use crate::support::*;

// ---------------------------------------------------------------------------
// A test OIDC issuer: discovery and a JWKS that can be rotated.

#[derive(Clone)]
struct IssuerState {
    url: Arc<Mutex<String>>,
    keys: Arc<Mutex<Vec<Value>>>,
}

struct TestIssuer {
    url: String,
    state: IssuerState,
}

impl TestIssuer {
    async fn start(keys: Vec<Value>) -> TestIssuer {
        let state = IssuerState {
            url: Arc::new(Mutex::new(String::new())),
            keys: Arc::new(Mutex::new(keys)),
        };
        let router = Router::new()
            .route(
                "/.well-known/openid-configuration",
                get(|State(s): State<IssuerState>| async move {
                    let url = s.url.lock().unwrap().clone();
                    Json(json!({
                        "issuer": url,
                        "jwks_uri": format!("{url}/jwks"),
                        "response_types_supported": ["id_token"],
                        "subject_types_supported": ["public"],
                        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
                    }))
                }),
            )
            .route(
                "/jwks",
                get(|State(s): State<IssuerState>| async move {
                    Json(json!({ "keys": s.keys.lock().unwrap().clone() }))
                }),
            )
            .with_state(state.clone());
        let url = spawn_test_router(router).await;
        *state.url.lock().unwrap() = url.clone();
        TestIssuer { url, state }
    }

    /// Replaces the published key set (rotation).
    fn publish(&self, keys: Vec<Value>) {
        *self.state.keys.lock().unwrap() = keys;
    }
}

async fn spawn_test_router(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

/// An RS256 key pair as an identity provider holds it.
struct RsaKey {
    kid: String,
    pem: String,
    n: String,
    e: String,
}

impl RsaKey {
    fn generate(kid: &str) -> RsaKey {
        let secret = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048).unwrap();
        RsaKey {
            kid: kid.to_owned(),
            pem: secret.to_pkcs8_pem(LineEnding::LF).unwrap().to_string(),
            n: URL_SAFE_NO_PAD.encode(secret.n().to_bytes_be()),
            e: URL_SAFE_NO_PAD.encode(secret.e().to_bytes_be()),
        }
    }

    fn jwk(&self) -> Value {
        json!({ "kty": "RSA", "n": self.n, "e": self.e, "kid": self.kid, "alg": "RS256", "use": "sig" })
    }

    /// The same key published under another `kid`.
    fn renamed(&self, kid: &str) -> RsaKey {
        RsaKey {
            kid: kid.to_owned(),
            pem: self.pem.clone(),
            n: self.n.clone(),
            e: self.e.clone(),
        }
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        let key = EncodingKey::from_rsa_pem(self.pem.as_bytes()).unwrap();
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }
}

/// RSA key generation costs CPU: three keys for the whole binary.
fn rsa_key(index: usize) -> &'static RsaKey {
    static KEYS: OnceLock<Vec<RsaKey>> = OnceLock::new();
    &KEYS.get_or_init(|| {
        (0..3)
            .map(|i| RsaKey::generate(&format!("rsa-{i}")))
            .collect()
    })[index]
}

fn sign_es256(key: &TestKey, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(key.kid.clone());
    let encoding = EncodingKey::from_ec_pem(key.pem.as_bytes()).unwrap();
    jsonwebtoken::encode(&header, claims, &encoding).unwrap()
}

fn claims(issuer: &str, sub: &str, aud: &str) -> Value {
    let now = now();
    json!({ "iss": issuer, "sub": sub, "aud": aud, "iat": now, "nbf": now, "exp": now + 600 })
}

fn with(mut claims: Value, changes: Value) -> Value {
    for (key, value) in changes.as_object().unwrap() {
        claims[key] = value.clone();
    }
    claims
}

async fn post_form(url: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(url)
        .form(form)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

// ---------------------------------------------------------------------------
// Google

const PROJECT: &str = "123456789012";
const SA: &str = "deployer@my-project.iam.gserviceaccount.com";
const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";

struct GoogleSetup {
    google: GoogleDouble,
    issuer: TestIssuer,
    provider: String,
    ec: TestKey,
}

impl GoogleSetup {
    async fn start() -> GoogleSetup {
        let ec = TestKey::generate("ec-1");
        let issuer = TestIssuer::start(vec![rsa_key(0).jwk(), ec.jwk()]).await;
        let google = GoogleDouble::start().await;
        let provider = google.add_provider(PROJECT, "stackpass", "broker", &issuer.url);
        google.add_service_account(SA, &[&pool_principal(&provider, "team-a")]);
        GoogleSetup {
            google,
            issuer,
            provider,
            ec,
        }
    }

    fn audience(&self) -> String {
        format!("https://iam.googleapis.com/{}", self.provider)
    }

    fn claims(&self, sub: &str) -> Value {
        claims(&self.issuer.url, sub, &self.audience())
    }

    async fn exchange(&self, subject_token: &str) -> (u16, Value) {
        let audience = format!("//iam.googleapis.com/{}", self.provider);
        post_form(
            &self.google.sts_token_url(),
            &[
                ("grant_type", GRANT_TYPE_TOKEN_EXCHANGE),
                ("audience", &audience),
                ("scope", CLOUD_PLATFORM),
                ("requested_token_type", TOKEN_TYPE_ACCESS_TOKEN),
                ("subject_token_type", TOKEN_TYPE_JWT),
                ("subject_token", subject_token),
            ],
        )
        .await
    }

    async fn generate(&self, bearer: &str, email: &str, body: Value) -> (u16, Value) {
        let response = reqwest::Client::new()
            .post(self.google.generate_access_token_url(email))
            .bearer_auth(bearer)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }
}

fn assert_invalid_grant(answer: &(u16, Value), needle: &str) {
    assert_eq!(answer.0, 400, "{answer:?}");
    assert_eq!(answer.1["error"], "invalid_grant", "{answer:?}");
    let description = answer.1["error_description"].as_str().unwrap();
    assert!(description.contains(needle), "{description}");
}

#[tokio::test]
async fn google_accepts_good_rs256_and_es256_tokens_and_impersonates() {
    let g = GoogleSetup::start().await;

    let principal = pool_principal(&g.provider, "team-a");
    for token in [
        rsa_key(0).sign(&g.claims("team-a")),
        sign_es256(&g.ec, &g.claims("team-a")),
    ] {
        let (status, body) = g.exchange(&token).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["issued_token_type"], TOKEN_TYPE_ACCESS_TOKEN);
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], 3600);
        let federated = body["access_token"].as_str().unwrap();
        let remembered = g.google.federated_tokens();
        let remembered = remembered
            .iter()
            .find(|t| t.access_token == federated)
            .expect("the double remembers what it issued");
        assert_eq!(remembered.principal, principal);
        assert_eq!(remembered.provider, g.provider);
        assert_eq!(remembered.scope, CLOUD_PLATFORM);
        let left = remembered.expires_at.unix_timestamp() - now();
        assert!((3590..=3600).contains(&left), "{left}");

        let (status, body) = g
            .generate(
                federated,
                SA,
                json!({ "scope": [CLOUD_PLATFORM], "lifetime": "900s" }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert!(body["accessToken"].as_str().unwrap().starts_with("ya29."));
        let issued = g.google.service_account_tokens().pop().unwrap();
        assert_eq!(issued.access_token, body["accessToken"].as_str().unwrap());
        assert_eq!(issued.expire_time, body["expireTime"].as_str().unwrap());
        assert_eq!(issued.principal, principal);
        assert_eq!(issued.scope, [CLOUD_PLATFORM]);
        let expire = time::OffsetDateTime::parse(
            body["expireTime"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        let left = expire.unix_timestamp() - now();
        assert!((890..=900).contains(&left), "{left}");
    }

    let calls = g.google.sts_calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].status, 200);
    assert_eq!(
        calls[0].form["audience"],
        format!("//iam.googleapis.com/{}", g.provider)
    );
    assert_eq!(calls[0].response["token_type"], "Bearer");
    assert_eq!(calls[0].subject_claims().unwrap()["sub"], "team-a");
    assert_eq!(calls[0].subject_header().unwrap()["alg"], "RS256");
    assert_eq!(calls[1].subject_header().unwrap()["alg"], "ES256");
    assert_eq!(
        principal,
        format!("principal://iam.googleapis.com/projects/{PROJECT}/locations/global/workloadIdentityPools/stackpass/subject/team-a")
    );
    assert!(g
        .google
        .federated_tokens()
        .iter()
        .all(|t| t.principal == principal));
    let issued = g.google.service_account_tokens();
    assert_eq!(issued.len(), 2);
    assert_eq!(issued[0].service_account, SA);
    assert_eq!(issued[0].lifetime_seconds, 900);
    let generated = &g.google.generate_calls()[0];
    assert_eq!(generated.body["lifetime"], "900s");
    assert_eq!(
        (
            generated.service_account.as_str(),
            generated.project.as_str()
        ),
        (SA, "-")
    );
    assert_eq!(generated.status, 200);
    assert_eq!(
        generated.response["accessToken"],
        issued[0].access_token.as_str()
    );
    // One discovery + JWKS fetch served both tokens.
    assert_eq!(g.google.jwks_fetches(&g.issuer.url), 1);
    assert_eq!(g.google.discovery_fetches(&g.issuer.url), 1);
}

#[tokio::test]
async fn google_refuses_tokens_the_way_sts_does() {
    let g = GoogleSetup::start().await;
    let key = rsa_key(0);
    let now = now();

    let wrong_audience = g
        .exchange(&key.sign(&with(
            g.claims("team-a"),
            json!({ "aud": "sts.amazonaws.com" }),
        )))
        .await;
    assert_invalid_grant(
        &wrong_audience,
        "The audience in ID Token [sts.amazonaws.com] does not match the expected audience",
    );

    // Another issuer, with the same key even: the provider trusts one issuer URL.
    let other = TestIssuer::start(vec![key.jwk()]).await;
    let wrong_issuer = g
        .exchange(&key.sign(&with(g.claims("team-a"), json!({ "iss": other.url }))))
        .await;
    assert_invalid_grant(
        &wrong_issuer,
        &format!(
            "The issuer in ID Token {} does not match the expected ones",
            other.url
        ),
    );
    assert_eq!(g.google.jwks_fetches(&other.url), 0, "never fetched");

    let expired = g
        .exchange(&key.sign(&with(
            g.claims("team-a"),
            json!({ "iat": now - 7200, "nbf": now - 7200, "exp": now - 60 }),
        )))
        .await;
    assert_invalid_grant(&expired, "expired");

    let too_long = g
        .exchange(&key.sign(&with(
            g.claims("team-a"),
            json!({ "iat": now, "exp": now + 48 * 3600 }),
        )))
        .await;
    assert_invalid_grant(&too_long, "48 hours");
    let just_under = g
        .exchange(&key.sign(&with(
            g.claims("team-a"),
            json!({ "iat": now, "exp": now + 48 * 3600 - 1 }),
        )))
        .await;
    assert_eq!(just_under.0, 200, "{just_under:?}");

    let future = g
        .exchange(&key.sign(&with(g.claims("team-a"), json!({ "iat": now + 3600 }))))
        .await;
    assert_invalid_grant(&future, "in the future");

    // google.subject is at most 127 bytes.
    let long = "s".repeat(128);
    let (status, body) = g.exchange(&key.sign(&g.claims(&long))).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_request");
    assert!(body["error_description"]
        .as_str()
        .unwrap()
        .contains("google.subject exceeds the 127 bytes limit"));
    let (status, body) = g.exchange(&key.sign(&g.claims(&"s".repeat(127)))).await;
    assert_eq!(status, 200, "{body}");

    // A forged signature under a published kid, and algorithms off the list.
    let forger = rsa_key(1).renamed(&key.kid);
    assert_invalid_grant(
        &g.exchange(&forger.sign(&g.claims("team-a"))).await,
        "Invalid JWT signature",
    );
    let hs256 = sign_jwt(
        &json!({ "alg": "HS256", "typ": "JWT", "kid": key.kid }),
        &g.claims("team-a"),
        Signer::Hs256(key.n.as_bytes()),
    );
    assert_invalid_grant(&g.exchange(&hs256).await, "not supported");
    let none = sign_jwt(
        &json!({ "alg": "none", "kid": key.kid }),
        &g.claims("team-a"),
        Signer::Unsigned,
    );
    assert_invalid_grant(&g.exchange(&none).await, "not supported");

    // The audience parameter must name a registered provider.
    let (status, body) = post_form(
        &g.google.sts_token_url(),
        &[
            ("grant_type", GRANT_TYPE_TOKEN_EXCHANGE),
            ("audience", "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/x/providers/y"),
            ("scope", CLOUD_PLATFORM),
            ("requested_token_type", TOKEN_TYPE_ACCESS_TOKEN),
            ("subject_token_type", TOKEN_TYPE_JWT),
            ("subject_token", &key.sign(&g.claims("team-a"))),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_target"))
    );

    // An issuer whose discovery cannot be fetched.
    let dead = "http://127.0.0.1:1";
    let unreachable = g.google.add_provider(PROJECT, "stackpass", "dead", dead);
    let audience = format!("//iam.googleapis.com/{unreachable}");
    let token = key.sign(&claims(
        dead,
        "team-a",
        &format!("https://iam.googleapis.com/{unreachable}"),
    ));
    let answer = post_form(
        &g.google.sts_token_url(),
        &[
            ("grant_type", GRANT_TYPE_TOKEN_EXCHANGE),
            ("audience", &audience),
            ("scope", CLOUD_PLATFORM),
            ("requested_token_type", TOKEN_TYPE_ACCESS_TOKEN),
            ("subject_token_type", TOKEN_TYPE_JWT),
            ("subject_token", &token),
        ],
    )
    .await;
    assert_invalid_grant(
        &answer,
        "Error connecting to the given credential's issuer.",
    );

    // Refusals issue nothing, and are recorded with what was answered.
    assert_eq!(g.google.federated_tokens().len(), 2);
    let calls = g.google.sts_calls();
    assert_eq!(calls[0].status, 400);
    assert_eq!(calls[0].response, wrong_audience.1);
}

#[tokio::test]
async fn google_default_audiences_and_explicit_ones() {
    let g = GoogleSetup::start().await;
    let key = rsa_key(0);
    let bare = format!("//iam.googleapis.com/{}", g.provider);
    let (status, body) = g
        .exchange(&key.sign(&with(g.claims("team-a"), json!({ "aud": bare }))))
        .await;
    assert_eq!(status, 200, "{body}");

    let custom = g.google.add_provider_with_audiences(
        PROJECT,
        "stackpass",
        "custom",
        &g.issuer.url,
        &["stackpass-google"],
    );
    let exchange = |aud: &str| {
        let token = key.sign(&claims(&g.issuer.url, "team-a", aud));
        let audience = format!("//iam.googleapis.com/{custom}");
        let url = g.google.sts_token_url();
        async move {
            post_form(
                &url,
                &[
                    ("grant_type", GRANT_TYPE_TOKEN_EXCHANGE),
                    ("audience", &audience),
                    ("scope", CLOUD_PLATFORM),
                    ("requested_token_type", TOKEN_TYPE_ACCESS_TOKEN),
                    ("subject_token_type", TOKEN_TYPE_ID_TOKEN),
                    ("subject_token", &token),
                ],
            )
            .await
        }
    };
    assert_eq!(exchange("stackpass-google").await.0, 200);
    let default_no_longer = exchange(&format!("https://iam.googleapis.com/{custom}")).await;
    assert_invalid_grant(&default_no_longer, "does not match the expected audience");
}

#[tokio::test]
async fn google_iam_credentials_refuses_like_iam() {
    let g = GoogleSetup::start().await;
    let key = rsa_key(0);
    let (_, body) = g.exchange(&key.sign(&g.claims("team-a"))).await;
    let federated = body["access_token"].as_str().unwrap().to_owned();
    let (_, body) = g.exchange(&key.sign(&g.claims("team-b"))).await;
    let stranger = body["access_token"].as_str().unwrap().to_owned();
    let scope = json!({ "scope": [CLOUD_PLATFORM] });

    // A principal without the binding, and a service account that does not exist.
    for (bearer, email) in [
        (&stranger, SA),
        (&federated, "nobody@my-project.iam.gserviceaccount.com"),
    ] {
        let (status, body) = g.generate(bearer, email, scope.clone()).await;
        assert_eq!(status, 403, "{body}");
        assert_eq!(
            body,
            json!({ "error": {
                "code": 403,
                "message": "Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist).",
                "status": "PERMISSION_DENIED",
                "details": [{
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "IAM_PERMISSION_DENIED",
                    "domain": "iam.googleapis.com",
                    "metadata": { "permission": "iam.serviceAccounts.getAccessToken" },
                }],
            }})
        );
    }

    // Granting the binding lets the other principal in.
    g.google
        .allow_impersonation(SA, &pool_principal(&g.provider, "team-b"));
    let (status, body) = g.generate(&stranger, SA, scope.clone()).await;
    assert_eq!(status, 200, "{body}");

    // Lifetimes: 3600 s by default, 43200 s with the org policy extension.
    let over = g
        .generate(
            &federated,
            SA,
            json!({ "scope": [CLOUD_PLATFORM], "lifetime": "3601s" }),
        )
        .await;
    assert_eq!(over.0, 400, "{over:?}");
    assert_eq!(over.1["error"]["status"], "INVALID_ARGUMENT");
    let hour = g
        .generate(
            &federated,
            SA,
            json!({ "scope": [CLOUD_PLATFORM], "lifetime": "3600s" }),
        )
        .await;
    assert_eq!(hour.0, 200, "{hour:?}");
    g.google.extend_lifetime(SA);
    let twelve = g
        .generate(
            &federated,
            SA,
            json!({ "scope": [CLOUD_PLATFORM], "lifetime": "43200s" }),
        )
        .await;
    assert_eq!(twelve.0, 200, "{twelve:?}");
    let beyond = g
        .generate(
            &federated,
            SA,
            json!({ "scope": [CLOUD_PLATFORM], "lifetime": "43201s" }),
        )
        .await;
    assert_eq!(beyond.0, 400, "{beyond:?}");

    // Bad and expired bearers are 401 UNAUTHENTICATED.
    let (status, body) = g.generate("ya29.not-issued", SA, scope.clone()).await;
    assert_eq!(
        (status, body["error"]["status"].as_str()),
        (401, Some("UNAUTHENTICATED"))
    );
    g.google.expire_federated_tokens();
    let (status, body) = g.generate(&federated, SA, scope.clone()).await;
    assert_eq!(
        (status, body["error"]["status"].as_str()),
        (401, Some("UNAUTHENTICATED"))
    );
    assert_eq!(
        body["error"]["details"][0]["reason"], "ACCESS_TOKEN_EXPIRED",
        "{body}"
    );

    let calls = g.google.generate_calls();
    assert_eq!(calls.len(), 9);
    assert_eq!(calls[0].status, 403);
    assert_eq!(
        calls[0].authorization.as_deref(),
        Some(format!("Bearer {stranger}").as_str())
    );
    assert_eq!(g.google.service_account_tokens().len(), 3);
}

#[tokio::test]
async fn google_refetches_keys_once_for_an_unknown_kid_after_rotation() {
    let g = GoogleSetup::start().await;
    let (old, new) = (rsa_key(0), rsa_key(1));

    assert_eq!(g.exchange(&old.sign(&g.claims("team-a"))).await.0, 200);
    assert_eq!(g.exchange(&old.sign(&g.claims("team-a"))).await.0, 200);
    assert_eq!(g.google.jwks_fetches(&g.issuer.url), 1, "cached");

    // The issuer rotates: the new kid is fetched on first sight, the old one is
    // gone after that fetch.
    g.issuer.publish(vec![new.jwk()]);
    let (status, body) = g.exchange(&new.sign(&g.claims("team-a"))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(g.google.jwks_fetches(&g.issuer.url), 2);
    assert_eq!(g.exchange(&new.sign(&g.claims("team-a"))).await.0, 200);
    assert_eq!(g.google.jwks_fetches(&g.issuer.url), 2, "cached again");
    assert_invalid_grant(
        &g.exchange(&old.sign(&g.claims("team-a"))).await,
        "Invalid JWT signature",
    );
    assert_eq!(
        g.google.jwks_fetches(&g.issuer.url),
        3,
        "one refetch for the unknown kid, no more"
    );

    // With no caching, every exchange fetches.
    g.google.set_jwks_cache_ttl(Duration::ZERO);
    assert_eq!(g.exchange(&new.sign(&g.claims("team-a"))).await.0, 200);
    assert_eq!(g.google.jwks_fetches(&g.issuer.url), 4);
}

// ---------------------------------------------------------------------------
// Entra

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const CLIENT: &str = "97e0a5b7-d745-40b6-94fe-5f77d35c6e05";
const GRAPH_DEFAULT: &str = "https://graph.microsoft.com/.default";

struct EntraSetup {
    entra: EntraDouble,
    issuer: TestIssuer,
}

impl EntraSetup {
    async fn start() -> EntraSetup {
        let issuer = TestIssuer::start(vec![rsa_key(0).jwk(), rsa_key(2).jwk()]).await;
        let entra = EntraDouble::start().await;
        entra.add_application(TENANT, CLIENT);
        entra
            .add_federated_credential(
                TENANT,
                CLIENT,
                FederatedIdentityCredential::new("stackpass-team-a", &issuer.url, "team-a"),
            )
            .unwrap();
        EntraSetup { entra, issuer }
    }

    fn claims(&self, sub: &str) -> Value {
        claims(&self.issuer.url, sub, AZURE_AD_TOKEN_EXCHANGE)
    }

    async fn token(&self, assertion: &str) -> (u16, Value) {
        self.token_for(TENANT, CLIENT, GRAPH_DEFAULT, assertion)
            .await
    }

    async fn token_for(
        &self,
        tenant: &str,
        client: &str,
        scope: &str,
        assertion: &str,
    ) -> (u16, Value) {
        post_form(
            &self.entra.token_url(tenant),
            &[
                ("client_id", client),
                ("grant_type", "client_credentials"),
                ("scope", scope),
                ("client_assertion_type", CLIENT_ASSERTION_TYPE_JWT_BEARER),
                ("client_assertion", assertion),
            ],
        )
        .await
    }
}

/// Asserts Entra's error body: status, `error`, the AADSTS code in
/// `error_codes`, the description (with its trace lines) and `error_uri`.
fn assert_aadsts(answer: &(u16, Value), status: u16, error: &str, code: u64, needle: &str) {
    let (got, body) = answer;
    assert_eq!(*got, status, "{body}");
    assert_eq!(body["error"], error, "{body}");
    assert_eq!(body["error_codes"], json!([code]), "{body}");
    let description = body["error_description"].as_str().unwrap();
    assert!(
        description.starts_with(&format!("AADSTS{code}: ")),
        "{description}"
    );
    assert!(description.contains(needle), "{description}");
    let trace_id = body["trace_id"].as_str().unwrap();
    let correlation_id = body["correlation_id"].as_str().unwrap();
    let timestamp = body["timestamp"].as_str().unwrap();
    assert!(
        description.ends_with(&format!(
            "\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation_id}\r\nTimestamp: {timestamp}"
        )),
        "{description}"
    );
    assert_eq!(timestamp.len(), "2016-01-09 02:02:12Z".len(), "{timestamp}");
    assert_eq!(
        body["error_uri"],
        format!("https://login.microsoftonline.com/error?code={code}")
    );
}

#[tokio::test]
async fn entra_accepts_a_good_rs256_assertion() {
    let e = EntraSetup::start().await;
    let (status, body) = e.token(&rsa_key(0).sign(&e.claims("team-a"))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3599);
    assert_eq!(body["ext_expires_in"], 3599);
    let access_token = body["access_token"].as_str().unwrap();
    let claims: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(access_token.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["aud"], "https://graph.microsoft.com");
    assert_eq!(claims["appid"], CLIENT);
    assert_eq!(claims["tid"], TENANT);

    let calls = e.entra.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].status, 200);
    assert_eq!(calls[0].response, body);
    assert_eq!(calls[0].error_code(), None);
    assert_eq!(calls[0].tenant, TENANT);
    assert_eq!(calls[0].form["client_id"], CLIENT);
    assert_eq!(calls[0].assertion_claims().unwrap()["sub"], "team-a");
    assert_eq!(calls[0].assertion_header().unwrap()["kid"], "rsa-0");
    let issued = e.entra.issued_tokens();
    assert_eq!(issued.len(), 1);
    assert_eq!(issued[0].credential, "stackpass-team-a");
    assert_eq!(issued[0].access_token, access_token);
    assert_eq!(
        (issued[0].tenant.as_str(), issued[0].client_id.as_str()),
        (TENANT, CLIENT)
    );
    assert_eq!(issued[0].scope, GRAPH_DEFAULT);
    assert_eq!(e.entra.jwks_fetches(&e.issuer.url), 1);
    assert_eq!(e.entra.discovery_fetches(&e.issuer.url), 1);
}

#[tokio::test]
async fn entra_refuses_assertions_with_its_aadsts_codes() {
    let e = EntraSetup::start().await;
    let key = rsa_key(0);
    let now = now();

    // RS256 only: an ES256 assertion from an issuer that publishes the key.
    let ec = TestKey::generate("ec-1");
    e.issuer.publish(vec![key.jwk(), ec.jwk()]);
    let es256 = e.token(&sign_es256(&ec, &e.claims("team-a"))).await;
    assert_aadsts(
        &es256,
        400,
        "invalid_request",
        5002738,
        "'ES256' is not a supported signature algorithm",
    );

    // iss, sub, aud each must match the credential exactly.
    let subject = e.token(&key.sign(&e.claims("team-b"))).await;
    assert_aadsts(
        &subject,
        401,
        "invalid_client",
        700213,
        "No matching federated identity record found for presented assertion subject 'team-b'.",
    );
    let case = e.token(&key.sign(&e.claims("Team-A"))).await;
    assert_aadsts(&case, 401, "invalid_client", 700213, "'Team-A'");
    let other = TestIssuer::start(vec![key.jwk()]).await;
    let issuer = e
        .token(&key.sign(&with(e.claims("team-a"), json!({ "iss": other.url }))))
        .await;
    assert_aadsts(
        &issuer,
        401,
        "invalid_client",
        700211,
        &format!("presented assertion issuer '{}'", other.url),
    );
    let trailing = e
        .token(&key.sign(&with(
            e.claims("team-a"),
            json!({ "iss": format!("{}/", e.issuer.url) }),
        )))
        .await;
    assert_aadsts(&trailing, 401, "invalid_client", 700211, "issuer");
    let audience = e
        .token(&key.sign(&with(
            e.claims("team-a"),
            json!({ "aud": "api://AzureADMyOrg" }),
        )))
        .await;
    assert_aadsts(
        &audience,
        401,
        "invalid_client",
        700212,
        "presented assertion audience 'api://AzureADMyOrg'",
    );

    // Time range.
    let expired = e
        .token(&key.sign(&with(
            e.claims("team-a"),
            json!({ "iat": now - 7200, "nbf": now - 7200, "exp": now - 60 }),
        )))
        .await;
    assert_aadsts(
        &expired,
        401,
        "invalid_client",
        700024,
        "Client assertion is not within its valid time range.",
    );
    let early = e
        .token(&key.sign(&with(
            e.claims("team-a"),
            json!({ "nbf": now + 600, "exp": now + 1200 }),
        )))
        .await;
    assert_aadsts(&early, 401, "invalid_client", 700024, "valid time range");

    // A forged signature under a published kid.
    let forged = e
        .token(&rsa_key(1).renamed(&key.kid).sign(&e.claims("team-a")))
        .await;
    assert_aadsts(
        &forged,
        401,
        "invalid_client",
        700027,
        "Client assertion failed signature validation.",
    );

    // Tenant, application, scope.
    let good = key.sign(&e.claims("team-a"));
    let tenant = e
        .token_for(
            "00000000-0000-0000-0000-000000000001",
            CLIENT,
            GRAPH_DEFAULT,
            &good,
        )
        .await;
    assert_aadsts(
        &tenant,
        400,
        "invalid_request",
        90002,
        "Tenant '00000000-0000-0000-0000-000000000001' not found.",
    );
    let tenant_name = e
        .token_for("not a tenant", CLIENT, GRAPH_DEFAULT, &good)
        .await;
    assert_aadsts(
        &tenant_name,
        400,
        "invalid_request",
        900023,
        "neither a valid DNS name",
    );
    let app = e
        .token_for(
            TENANT,
            "11111111-1111-1111-1111-111111111111",
            GRAPH_DEFAULT,
            &good,
        )
        .await;
    assert_aadsts(
        &app,
        400,
        "unauthorized_client",
        700016,
        "Application with identifier '11111111-1111-1111-1111-111111111111' was not found in the directory",
    );
    e.entra.add_tenant("contoso.onmicrosoft.com");
    let elsewhere = e
        .token_for("contoso.onmicrosoft.com", CLIENT, GRAPH_DEFAULT, &good)
        .await;
    assert_aadsts(
        &elsewhere,
        400,
        "unauthorized_client",
        700016,
        "in the directory 'contoso.onmicrosoft.com'",
    );
    let scope = e
        .token_for(
            TENANT,
            CLIENT,
            "https://graph.microsoft.com/User.Read",
            &good,
        )
        .await;
    assert_aadsts(
        &scope,
        400,
        "invalid_scope",
        1002012,
        "must have a scope value with /.default suffixed",
    );

    // An issuer whose discovery cannot be fetched.
    let dead = "http://127.0.0.1:1";
    e.entra
        .add_federated_credential(
            TENANT,
            CLIENT,
            FederatedIdentityCredential::new("dead-issuer", dead, "team-a"),
        )
        .unwrap();
    let unreachable = e
        .token(&key.sign(&with(e.claims("team-a"), json!({ "iss": dead }))))
        .await;
    assert_aadsts(
        &unreachable,
        401,
        "invalid_client",
        50166,
        "External OIDC endpoint",
    );

    assert!(e.entra.issued_tokens().is_empty());
    assert_eq!(e.entra.calls().len(), 15);
    assert_eq!(e.entra.calls()[1].error_code(), Some(700213));
}

#[tokio::test]
async fn entra_allows_twenty_federated_credentials_per_application() {
    let entra = EntraDouble::start().await;
    entra.add_application(TENANT, CLIENT);
    for i in 0..MAX_FEDERATED_CREDENTIALS {
        entra
            .add_federated_credential(
                TENANT,
                CLIENT,
                FederatedIdentityCredential::new(
                    &format!("fic-{i}"),
                    "https://issuer.example",
                    &format!("subject-{i}"),
                ),
            )
            .unwrap();
    }
    let refused = entra
        .add_federated_credential(
            TENANT,
            CLIENT,
            FederatedIdentityCredential::new("fic-20", "https://issuer.example", "subject-20"),
        )
        .unwrap_err();
    assert_eq!(refused.status, 400);
    assert_eq!(refused.body()["error"]["code"], "Request_BadRequest");
    assert!(refused.message.contains("(20)"), "{refused:?}");
    assert_eq!(entra.federated_credentials(TENANT, CLIENT).len(), 20);

    // Removing one makes room again; duplicates and bad shapes are refused.
    assert!(entra.remove_federated_credential(TENANT, CLIENT, "fic-0"));
    let duplicate_pair =
        FederatedIdentityCredential::new("fic-new", "https://issuer.example", "subject-1");
    assert!(entra
        .add_federated_credential(TENANT, CLIENT, duplicate_pair)
        .is_err());
    let mut two_audiences =
        FederatedIdentityCredential::new("fic-new", "https://issuer.example", "subject-new");
    two_audiences.audiences.push("api://other".into());
    assert!(entra
        .add_federated_credential(TENANT, CLIENT, two_audiences)
        .is_err());
    assert!(entra
        .add_federated_credential(
            TENANT,
            CLIENT,
            FederatedIdentityCredential::new("-bad", "https://issuer.example", "subject-new"),
        )
        .is_err());
    entra
        .add_federated_credential(
            TENANT,
            CLIENT,
            FederatedIdentityCredential::new("fic-new", "https://issuer.example", "subject-new"),
        )
        .unwrap();
}

#[tokio::test]
async fn entra_new_credentials_can_lag_and_keys_rotate() {
    let e = EntraSetup::start().await;
    e.entra.set_propagation_delay(2);
    e.entra
        .add_federated_credential(
            TENANT,
            CLIENT,
            FederatedIdentityCredential::new("stackpass-team-b", &e.issuer.url, "team-b"),
        )
        .unwrap();
    let key = rsa_key(0);
    for _ in 0..2 {
        let lagging = e.token(&key.sign(&e.claims("team-b"))).await;
        assert_aadsts(
            &lagging,
            400,
            "invalid_request",
            70021,
            "No matching federated identity record found for presented assertion. Assertion Issuer",
        );
    }
    assert_eq!(e.token(&key.sign(&e.claims("team-b"))).await.0, 200);
    // The credential added before the knob never lagged.
    assert_eq!(e.token(&key.sign(&e.claims("team-a"))).await.0, 200);
    assert_eq!(e.entra.jwks_fetches(&e.issuer.url), 1);

    // Rotation: an unknown kid is fetched once.
    e.issuer.publish(vec![rsa_key(1).jwk()]);
    let (status, body) = e.token(&rsa_key(1).sign(&e.claims("team-a"))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(e.entra.jwks_fetches(&e.issuer.url), 2);
    let stale = e.token(&key.sign(&e.claims("team-a"))).await;
    assert_aadsts(
        &stale,
        401,
        "invalid_client",
        700027,
        "signature validation",
    );
    assert_eq!(e.entra.jwks_fetches(&e.issuer.url), 3);

    // With no caching, every request fetches discovery and keys.
    e.entra.set_jwks_cache_ttl(Duration::ZERO);
    assert_eq!(e.token(&rsa_key(1).sign(&e.claims("team-a"))).await.0, 200);
    assert_eq!(e.entra.jwks_fetches(&e.issuer.url), 4);
    assert_eq!(e.entra.discovery_fetches(&e.issuer.url), 4);
}
