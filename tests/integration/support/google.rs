//! [`GoogleDouble`]: Google's Security Token Service (`POST /v1/token`) and IAM
//! Service Account Credentials API (`generateAccessToken`) on one local server, so
//! a broker pointed at it with base-URL overrides runs the whole federation path:
//! subject token → federated access token → service account access token.
//!
//! It judges subject tokens as workload identity federation does (the STS API
//! reference of `subject_token`): the token's `iss`, read unverified, must be the
//! issuer URI of the pool provider named by `audience`; the keys come from
//! `{iss}/.well-known/openid-configuration` → `jwks_uri`, picked by `kid`; only
//! RS256 and ES256 verify; `aud` must be one of the provider's allowed audiences
//! (by default its own resource name, with or without the `https:` prefix); `iat`
//! must be in the past, `exp` in the future and less than 48 hours after `iat`;
//! and `google.subject` (mapped from `sub`) may not exceed 127 bytes. Key sets are
//! cached per issuer ([`GoogleDouble::set_jwks_cache_ttl`]) and fetched again once
//! when a token names an unknown `kid`. Errors have Google's wire shapes: OAuth
//! `{error, error_description}` from STS, `google.rpc.Status` from IAM.
//!
//! Differences from Google, on purpose: the issuer may be plain `http://` on the
//! loopback (Google requires public HTTPS), and there are no attribute mappings
//! or conditions beyond `google.subject = assertion.sub`.
//!
//! [`KeyCache`] here is also the Entra double's key fetcher: both clouds find an
//! issuer's keys the same way.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::process::spawn_router;

pub const GRANT_TYPE_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const TOKEN_TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
pub const TOKEN_TYPE_ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";

/// Default and extended ("org policy
/// `constraints/iam.allowServiceAccountCredentialLifetimeExtension`") caps on a
/// `generateAccessToken` lifetime, in seconds.
pub const DEFAULT_MAX_LIFETIME: u64 = 3600;
pub const EXTENDED_MAX_LIFETIME: u64 = 43_200;

/// Lifetime of a federated (STS) access token, as STS reports it in `expires_in`.
const FEDERATED_TOKEN_LIFETIME: i64 = 3600;
/// `exp` must be less than this many seconds after `iat` (STS `subject_token`).
const MAX_SUBJECT_TOKEN_VALIDITY: i64 = 48 * 3600;
/// `google.subject` may be at most this many bytes.
const MAX_GOOGLE_SUBJECT_BYTES: usize = 127;

const PERMISSION_GET_ACCESS_TOKEN: &str = "iam.serviceAccounts.getAccessToken";

/// `projects/NUM/locations/global/workloadIdentityPools/POOL/providers/PROV`.
pub fn provider_resource_name(project_number: &str, pool: &str, provider: &str) -> String {
    format!(
        "projects/{project_number}/locations/global/workloadIdentityPools/{pool}/providers/{provider}"
    )
}

/// The federated principal a subject of a provider's pool becomes:
/// `principal://iam.googleapis.com/projects/NUM/locations/global/workloadIdentityPools/POOL/subject/SUBJECT`.
/// `provider_resource` is a provider resource name (see [`provider_resource_name`]).
pub fn pool_principal(provider_resource: &str, subject: &str) -> String {
    let pool = provider_resource
        .split_once("/providers/")
        .map(|(pool, _)| pool)
        .unwrap_or(provider_resource);
    format!("principal://iam.googleapis.com/{pool}/subject/{subject}")
}

/// A workload identity pool provider (OIDC) as registered in the double.
#[derive(Debug, Clone)]
pub struct PoolProvider {
    /// `projects/NUM/locations/global/workloadIdentityPools/POOL/providers/PROV`.
    pub resource_name: String,
    /// `oidc.issuerUri`.
    pub issuer_uri: String,
    /// `oidc.allowedAudiences`; empty means Google's default (the provider's own
    /// resource name as `//iam.googleapis.com/...` or `https://iam.googleapis.com/...`).
    pub allowed_audiences: Vec<String>,
}

impl PoolProvider {
    /// The audiences a subject token may carry.
    pub fn accepted_audiences(&self) -> Vec<String> {
        if self.allowed_audiences.is_empty() {
            vec![
                format!("//iam.googleapis.com/{}", self.resource_name),
                format!("https://iam.googleapis.com/{}", self.resource_name),
            ]
        } else {
            self.allowed_audiences.clone()
        }
    }
}

#[derive(Debug, Clone)]
struct ServiceAccount {
    /// Members holding `roles/iam.workloadIdentityUser` (or Token Creator) on it:
    /// federated `principal://...` values or `serviceAccount:EMAIL` for delegation.
    principals: HashSet<String>,
    max_lifetime: u64,
}

/// A federated access token the STS endpoint issued.
#[derive(Debug, Clone)]
pub struct FederatedToken {
    pub access_token: String,
    /// `principal://iam.googleapis.com/.../subject/SUBJECT`.
    pub principal: String,
    pub provider: String,
    pub scope: String,
    pub expires_at: OffsetDateTime,
}

/// A service account access token `generateAccessToken` issued.
#[derive(Debug, Clone)]
pub struct ServiceAccountToken {
    pub access_token: String,
    pub service_account: String,
    /// The federated principal that asked for it.
    pub principal: String,
    pub scope: Vec<String>,
    pub lifetime_seconds: u64,
    pub expire_time: String,
}

/// One `POST /v1/token` as the double received and answered it.
#[derive(Debug, Clone)]
pub struct GoogleStsCall {
    pub form: HashMap<String, String>,
    pub status: u16,
    pub response: Value,
}

impl GoogleStsCall {
    pub fn subject_token(&self) -> Option<&str> {
        self.form.get("subject_token").map(String::as_str)
    }

    /// The subject token's claims, decoded without verification.
    pub fn subject_claims(&self) -> Option<Value> {
        self.subject_token().and_then(|t| jwt_part(t, 1))
    }

    /// The subject token's JOSE header, decoded without verification.
    pub fn subject_header(&self) -> Option<Value> {
        self.subject_token().and_then(|t| jwt_part(t, 0))
    }
}

/// One `generateAccessToken` call as the double received and answered it.
#[derive(Debug, Clone)]
pub struct GenerateAccessTokenCall {
    /// The `{EMAIL}` of `projects/-/serviceAccounts/{EMAIL}:generateAccessToken`.
    pub service_account: String,
    /// The `{PROJECT}` path segment (Google requires `-`).
    pub project: String,
    pub authorization: Option<String>,
    pub body: Value,
    pub status: u16,
    pub response: Value,
}

struct GoogleState {
    providers: Mutex<HashMap<String, PoolProvider>>,
    service_accounts: Mutex<HashMap<String, ServiceAccount>>,
    federated_tokens: Mutex<HashMap<String, FederatedToken>>,
    service_account_tokens: Mutex<Vec<ServiceAccountToken>>,
    sts_calls: Mutex<Vec<GoogleStsCall>>,
    generate_calls: Mutex<Vec<GenerateAccessTokenCall>>,
    keys: KeyCache,
}

/// Google STS and IAM Credentials on one random port. Point both the STS and the
/// IAM Credentials base URLs of the broker at [`GoogleDouble::url`].
pub struct GoogleDouble {
    pub url: String,
    state: Arc<GoogleState>,
}

impl GoogleDouble {
    pub async fn start() -> GoogleDouble {
        let state = Arc::new(GoogleState {
            providers: Mutex::new(HashMap::new()),
            service_accounts: Mutex::new(HashMap::new()),
            federated_tokens: Mutex::new(HashMap::new()),
            service_account_tokens: Mutex::new(Vec::new()),
            sts_calls: Mutex::new(Vec::new()),
            generate_calls: Mutex::new(Vec::new()),
            keys: KeyCache::new(),
        });
        let router = Router::new()
            .route("/v1/token", post(sts_token))
            .route(
                "/v1/projects/{project}/serviceAccounts/{method}",
                post(generate_access_token),
            )
            .with_state(state.clone());
        GoogleDouble {
            url: spawn_router(router).await,
            state,
        }
    }

    /// `{url}/v1/token`.
    pub fn sts_token_url(&self) -> String {
        format!("{}/v1/token", self.url)
    }

    /// `{url}/v1/projects/-/serviceAccounts/{email}:generateAccessToken`.
    pub fn generate_access_token_url(&self, email: &str) -> String {
        format!(
            "{}/v1/projects/-/serviceAccounts/{email}:generateAccessToken",
            self.url
        )
    }

    /// Registers an OIDC pool provider trusting `issuer_uri`, accepting Google's
    /// default audiences. Returns its resource name.
    pub fn add_provider(
        &self,
        project_number: &str,
        pool: &str,
        provider: &str,
        issuer_uri: &str,
    ) -> String {
        self.add_provider_with_audiences(project_number, pool, provider, issuer_uri, &[])
    }

    /// As [`GoogleDouble::add_provider`] with explicit `allowedAudiences` (empty:
    /// Google's default).
    pub fn add_provider_with_audiences(
        &self,
        project_number: &str,
        pool: &str,
        provider: &str,
        issuer_uri: &str,
        allowed_audiences: &[&str],
    ) -> String {
        let resource_name = provider_resource_name(project_number, pool, provider);
        self.state.providers.lock().unwrap().insert(
            resource_name.clone(),
            PoolProvider {
                resource_name: resource_name.clone(),
                issuer_uri: issuer_uri.to_owned(),
                allowed_audiences: allowed_audiences.iter().map(|a| a.to_string()).collect(),
            },
        );
        resource_name
    }

    /// Registers a service account (max token lifetime 3600 s) that the given
    /// members may impersonate: `principal://...` values (see [`pool_principal`])
    /// or `serviceAccount:EMAIL` for delegation chains.
    pub fn add_service_account(&self, email: &str, principals: &[&str]) {
        self.state.service_accounts.lock().unwrap().insert(
            email.to_owned(),
            ServiceAccount {
                principals: principals.iter().map(|p| p.to_string()).collect(),
                max_lifetime: DEFAULT_MAX_LIFETIME,
            },
        );
    }

    /// Grants one more member the right to impersonate `email`.
    pub fn allow_impersonation(&self, email: &str, principal: &str) {
        self.state
            .service_accounts
            .lock()
            .unwrap()
            .get_mut(email)
            .unwrap_or_else(|| panic!("no service account {email}"))
            .principals
            .insert(principal.to_owned());
    }

    /// Lists `email` in the org policy
    /// `constraints/iam.allowServiceAccountCredentialLifetimeExtension`: its
    /// tokens may then live up to 43200 s instead of 3600 s.
    pub fn extend_lifetime(&self, email: &str) {
        self.state
            .service_accounts
            .lock()
            .unwrap()
            .get_mut(email)
            .unwrap_or_else(|| panic!("no service account {email}"))
            .max_lifetime = EXTENDED_MAX_LIFETIME;
    }

    /// How long a fetched key set is trusted before it is fetched again (an
    /// unknown `kid` always triggers one refetch). Default one hour.
    pub fn set_jwks_cache_ttl(&self, ttl: Duration) {
        self.state.keys.set_ttl(ttl);
    }

    /// Makes every federated token issued so far expired, so the next
    /// `generateAccessToken` with one answers 401 as Google does.
    pub fn expire_federated_tokens(&self) {
        let past = OffsetDateTime::now_utc() - time::Duration::seconds(1);
        for token in self.state.federated_tokens.lock().unwrap().values_mut() {
            token.expires_at = past;
        }
    }

    pub fn sts_calls(&self) -> Vec<GoogleStsCall> {
        self.state.sts_calls.lock().unwrap().clone()
    }

    pub fn generate_calls(&self) -> Vec<GenerateAccessTokenCall> {
        self.state.generate_calls.lock().unwrap().clone()
    }

    pub fn federated_tokens(&self) -> Vec<FederatedToken> {
        self.state
            .federated_tokens
            .lock()
            .unwrap()
            .values()
            .cloned()
            .collect()
    }

    pub fn service_account_tokens(&self) -> Vec<ServiceAccountToken> {
        self.state.service_account_tokens.lock().unwrap().clone()
    }

    /// How many times the double fetched `issuer`'s JWKS.
    pub fn jwks_fetches(&self, issuer: &str) -> usize {
        self.state.keys.jwks_fetches(issuer)
    }

    /// How many times the double fetched `issuer`'s discovery document.
    pub fn discovery_fetches(&self, issuer: &str) -> usize {
        self.state.keys.discovery_fetches(issuer)
    }
}

// ---------------------------------------------------------------------------
// STS: POST /v1/token

async fn sts_token(State(state): State<Arc<GoogleState>>, body: axum::body::Bytes) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let (status, response) = match exchange(&state, &form).await {
        Ok(ok) => (StatusCode::OK, ok),
        Err((status, error, description)) => (
            status,
            json!({ "error": error, "error_description": description }),
        ),
    };
    state.sts_calls.lock().unwrap().push(GoogleStsCall {
        form,
        status: status.as_u16(),
        response: response.clone(),
    });
    (status, Json(response)).into_response()
}

type StsError = (StatusCode, &'static str, String);

fn sts_error(error: &'static str, description: impl Into<String>) -> StsError {
    (StatusCode::BAD_REQUEST, error, description.into())
}

async fn exchange(state: &GoogleState, form: &HashMap<String, String>) -> Result<Value, StsError> {
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or("");
    if field("grant_type") != GRANT_TYPE_TOKEN_EXCHANGE {
        return Err(sts_error(
            "unsupported_grant_type",
            format!(
                "Invalid value for \"grant_type\": {:?}.",
                field("grant_type")
            ),
        ));
    }
    if field("requested_token_type") != TOKEN_TYPE_ACCESS_TOKEN {
        return Err(sts_error(
            "invalid_request",
            format!(
                "Invalid value for \"requested_token_type\": {:?}. Must be {TOKEN_TYPE_ACCESS_TOKEN}.",
                field("requested_token_type")
            ),
        ));
    }
    let subject_token_type = field("subject_token_type");
    if subject_token_type != TOKEN_TYPE_JWT && subject_token_type != TOKEN_TYPE_ID_TOKEN {
        return Err(sts_error(
            "invalid_request",
            format!("Invalid value for \"subject_token_type\": {subject_token_type:?}."),
        ));
    }
    let subject_token = field("subject_token");
    if subject_token.is_empty() {
        return Err(sts_error(
            "invalid_request",
            "Missing required parameter \"subject_token\".",
        ));
    }
    let provider = field("audience")
        .strip_prefix("//iam.googleapis.com/")
        .and_then(|name| state.providers.lock().unwrap().get(name).cloned())
        .ok_or_else(|| {
            sts_error(
                "invalid_target",
                "The target service indicated by the \"audience\" parameters is invalid. This might either be because the pool or provider is disabled or deleted or because it doesn't exist.",
            )
        })?;
    let scope = field("scope");
    if scope.trim().is_empty() {
        return Err(sts_error(
            "invalid_request",
            "Scope(s) must be provided when exchanging an external credential.",
        ));
    }

    let claims = verify_subject_token(state, &provider, subject_token).await?;

    let subject = match claims.get("sub") {
        Some(Value::String(sub)) => sub.clone(),
        _ => {
            return Err(sts_error(
                "unauthorized_client",
                "The mapped attribute 'google.subject' must be of type STRING.",
            ))
        }
    };
    if subject.len() > MAX_GOOGLE_SUBJECT_BYTES {
        return Err(sts_error(
            "invalid_request",
            "The size of mapped attribute google.subject exceeds the 127 bytes limit. Either modify your attribute mapping or the incoming assertion to produce a mapped attribute that is less than 127 bytes.",
        ));
    }

    let access_token = format!("ya29.d.{}", random_urlsafe(96));
    state.federated_tokens.lock().unwrap().insert(
        access_token.clone(),
        FederatedToken {
            access_token: access_token.clone(),
            principal: pool_principal(&provider.resource_name, &subject),
            provider: provider.resource_name.clone(),
            scope: scope.to_owned(),
            expires_at: OffsetDateTime::now_utc()
                + time::Duration::seconds(FEDERATED_TOKEN_LIFETIME),
        },
    );
    Ok(json!({
        "access_token": access_token,
        "issued_token_type": TOKEN_TYPE_ACCESS_TOKEN,
        "token_type": "Bearer",
        "expires_in": FEDERATED_TOKEN_LIFETIME,
    }))
}

/// The checks of the STS `subject_token` reference, in the order STS reports
/// them: form of the token, issuer, keys and signature, audience, times.
async fn verify_subject_token(
    state: &GoogleState,
    provider: &PoolProvider,
    token: &str,
) -> Result<Value, StsError> {
    let malformed = || sts_error("invalid_grant", "Unable to parse the ID Token.");
    let header = jwt_part(token, 0).ok_or_else(malformed)?;
    let unverified = jwt_part(token, 1).ok_or_else(malformed)?;

    let alg = header["alg"].as_str().unwrap_or_default();
    let algorithm = match alg {
        "RS256" => Algorithm::RS256,
        "ES256" => Algorithm::ES256,
        other => {
            return Err(sts_error(
                "invalid_grant",
                format!("The ID Token's signing algorithm {other:?} is not supported. Supported algorithms: RS256, ES256."),
            ))
        }
    };
    let kid = header["kid"]
        .as_str()
        .ok_or_else(|| sts_error("invalid_grant", "The ID Token header has no \"kid\"."))?;

    let iss = unverified["iss"].as_str().unwrap_or_default();
    if iss.trim_end_matches('/') != provider.issuer_uri.trim_end_matches('/') {
        return Err(sts_error(
            "invalid_grant",
            format!(
                "The issuer in ID Token {iss} does not match the expected ones: {}",
                provider.issuer_uri
            ),
        ));
    }

    let jwk = match state.keys.key(iss, kid).await {
        Ok(jwk) => jwk,
        Err(KeyError::Unreachable) => {
            return Err(sts_error(
                "invalid_grant",
                "Error connecting to the given credential's issuer.",
            ))
        }
        Err(KeyError::UnknownKid) => {
            return Err(sts_error("invalid_grant", "Invalid JWT signature."))
        }
    };
    let claims = verify_signature(token, &jwk, algorithm)
        .ok_or_else(|| sts_error("invalid_grant", "Invalid JWT signature."))?;

    let audiences = audiences(&claims);
    let accepted = provider.accepted_audiences();
    if !audiences.iter().any(|aud| accepted.contains(aud)) {
        return Err(sts_error(
            "invalid_grant",
            format!(
                "The audience in ID Token [{}] does not match the expected audience.",
                audiences.join(", ")
            ),
        ));
    }

    let now = OffsetDateTime::now_utc().unix_timestamp();
    let (Some(iat), Some(exp)) = (numeric(&claims, "iat"), numeric(&claims, "exp")) else {
        return Err(sts_error(
            "invalid_grant",
            "The ID Token must contain the \"iat\" and \"exp\" claims.",
        ));
    };
    if iat > now {
        return Err(sts_error(
            "invalid_grant",
            format!("ID Token issued at {iat} is in the future."),
        ));
    }
    if exp <= now {
        return Err(sts_error(
            "invalid_grant",
            format!("ID Token expired at {exp}."),
        ));
    }
    if exp - iat >= MAX_SUBJECT_TOKEN_VALIDITY {
        return Err(sts_error(
            "invalid_grant",
            format!(
                "The ID Token's lifetime (exp - iat = {} s) must be less than 48 hours.",
                exp - iat
            ),
        ));
    }
    Ok(claims)
}

// ---------------------------------------------------------------------------
// IAM Credentials: POST /v1/projects/-/serviceAccounts/{EMAIL}:generateAccessToken

async fn generate_access_token(
    State(state): State<Arc<GoogleState>>,
    Path((project, method)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Some(email) = method.strip_suffix(":generateAccessToken") else {
        return rpc_status(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "The requested URL was not found on this server.",
            json!([]),
        );
    };
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (status, response) =
        match generate(&state, &project, email, authorization.as_deref(), &body) {
            Ok(ok) => (StatusCode::OK, ok),
            Err(error) => error,
        };
    state
        .generate_calls
        .lock()
        .unwrap()
        .push(GenerateAccessTokenCall {
            service_account: email.to_owned(),
            project,
            authorization,
            body,
            status: status.as_u16(),
            response: response.clone(),
        });
    let mut out = (status, Json(response)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        out.headers_mut().insert(
            "www-authenticate",
            r#"Bearer realm="https://accounts.google.com/", error="invalid_token""#
                .parse()
                .unwrap(),
        );
    }
    out
}

type RpcError = (StatusCode, Value);

fn rpc_body(code: StatusCode, status: &str, message: &str, details: Value) -> RpcError {
    (
        code,
        json!({ "error": {
            "code": code.as_u16(),
            "message": message,
            "status": status,
            "details": details,
        }}),
    )
}

fn rpc_status(code: StatusCode, status: &str, message: &str, details: Value) -> Response {
    let (code, body) = rpc_body(code, status, message, details);
    (code, Json(body)).into_response()
}

fn unauthenticated(reason: &str, message: &str) -> RpcError {
    rpc_body(
        StatusCode::UNAUTHORIZED,
        "UNAUTHENTICATED",
        message,
        json!([{
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": reason,
            "domain": "googleapis.com",
            "metadata": {
                "service": "iamcredentials.googleapis.com",
                "method": "google.iam.credentials.v1.IAMCredentials.GenerateAccessToken",
            },
        }]),
    )
}

fn invalid_argument(details: Value) -> RpcError {
    rpc_body(
        StatusCode::BAD_REQUEST,
        "INVALID_ARGUMENT",
        "Request contains an invalid argument.",
        details,
    )
}

fn permission_denied() -> RpcError {
    rpc_body(
        StatusCode::FORBIDDEN,
        "PERMISSION_DENIED",
        "Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist).",
        json!([{
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "IAM_PERMISSION_DENIED",
            "domain": "iam.googleapis.com",
            "metadata": { "permission": PERMISSION_GET_ACCESS_TOKEN },
        }]),
    )
}

fn generate(
    state: &GoogleState,
    project: &str,
    email: &str,
    authorization: Option<&str>,
    body: &Value,
) -> Result<Value, RpcError> {
    let bearer = authorization
        .and_then(|a| {
            a.strip_prefix("Bearer ")
                .or_else(|| a.strip_prefix("bearer "))
        })
        .map(str::trim);
    let Some(bearer) = bearer else {
        return Err(unauthenticated(
            "CREDENTIALS_MISSING",
            "Request is missing required authentication credential. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.",
        ));
    };
    let invalid_credentials = "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.";
    let federated = state.federated_tokens.lock().unwrap().get(bearer).cloned();
    let Some(federated) = federated else {
        return Err(unauthenticated(
            "ACCESS_TOKEN_TYPE_UNSUPPORTED",
            invalid_credentials,
        ));
    };
    if federated.expires_at <= OffsetDateTime::now_utc() {
        return Err(unauthenticated("ACCESS_TOKEN_EXPIRED", invalid_credentials));
    }

    // "The `-` wildcard character is required; replacing it with a project ID
    // is invalid."
    if project != "-" {
        return Err(invalid_argument(json!([{
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": [{
                "field": "name",
                "description": "The `-` wildcard character is required in place of the project ID.",
            }],
        }])));
    }
    let scope: Vec<String> = match &body["scope"] {
        Value::Array(items) => items
            .iter()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    if scope.is_empty() {
        return Err(invalid_argument(json!([{
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": [{ "field": "scope", "description": "At least one value required." }],
        }])));
    }
    let lifetime = match &body["lifetime"] {
        Value::Null => DEFAULT_MAX_LIFETIME,
        Value::String(text) => parse_duration(text).ok_or_else(|| {
            rpc_body(
                StatusCode::BAD_REQUEST,
                "INVALID_ARGUMENT",
                &format!(
                    "Invalid value at 'lifetime' (type.googleapis.com/google.protobuf.Duration), {text:?}"
                ),
                json!([{
                    "@type": "type.googleapis.com/google.rpc.BadRequest",
                    "fieldViolations": [{
                        "field": "lifetime",
                        "description": format!("Invalid value at 'lifetime' (type.googleapis.com/google.protobuf.Duration), {text:?}"),
                    }],
                }]),
            )
        })?,
        other => {
            return Err(invalid_argument(json!([{
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{ "field": "lifetime", "description": format!("Invalid value {other}") }],
            }])))
        }
    };

    // The chain caller → delegates... → target: each link must hold the right
    // on the next service account.
    let delegates: Vec<String> = match &body["delegates"] {
        Value::Array(items) => items
            .iter()
            .filter_map(|d| d.as_str())
            .map(|d| {
                d.strip_prefix("projects/-/serviceAccounts/")
                    .unwrap_or(d)
                    .to_owned()
            })
            .collect(),
        _ => Vec::new(),
    };
    let accounts = state.service_accounts.lock().unwrap().clone();
    let mut caller = federated.principal.clone();
    for next in delegates.iter().map(String::as_str).chain([email]) {
        let allowed = accounts
            .get(next)
            .is_some_and(|sa| sa.principals.contains(&caller));
        if !allowed {
            return Err(permission_denied());
        }
        caller = format!("serviceAccount:{next}");
    }
    let max_lifetime = accounts[email].max_lifetime;
    if lifetime == 0 || lifetime > max_lifetime {
        return Err(invalid_argument(json!([{
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": [{
                "field": "lifetime",
                "description": format!("The lifetime of the access token must be between 1s and {max_lifetime}s for this service account."),
            }],
        }])));
    }

    let access_token = format!("ya29.c.{}", random_urlsafe(160));
    let expire_time = (OffsetDateTime::now_utc() + time::Duration::seconds(lifetime as i64))
        .replace_nanosecond(0)
        .unwrap()
        .format(&Rfc3339)
        .unwrap();
    state
        .service_account_tokens
        .lock()
        .unwrap()
        .push(ServiceAccountToken {
            access_token: access_token.clone(),
            service_account: email.to_owned(),
            principal: federated.principal,
            scope,
            lifetime_seconds: lifetime,
            expire_time: expire_time.clone(),
        });
    Ok(json!({ "accessToken": access_token, "expireTime": expire_time }))
}

/// A `google.protobuf.Duration` in JSON: decimal seconds with an `s` suffix,
/// e.g. `"3600s"` or `"1.5s"`. Whole seconds, rounded up.
fn parse_duration(text: &str) -> Option<u64> {
    let number = text.strip_suffix('s')?;
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !fraction.bytes().all(|b| b.is_ascii_digit()) || fraction.len() > 9 {
        return None;
    }
    let whole: u64 = whole.parse().ok()?;
    Some(whole + u64::from(fraction.bytes().any(|b| b != b'0')))
}

// ---------------------------------------------------------------------------
// Shared with the Entra double: reading tokens and finding an issuer's keys.

/// Part `index` (0 header, 1 claims) of a compact JWT, decoded without any
/// verification.
pub fn jwt_part(token: &str, index: usize) -> Option<Value> {
    let mut parts = token.split('.');
    let part = parts.nth(index)?;
    if token.split('.').count() != 3 {
        return None;
    }
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).ok()?).ok()
}

/// The `aud` claim as a list (a JWT may carry one string or an array).
pub(super) fn audiences(claims: &Value) -> Vec<String> {
    match &claims["aud"] {
        Value::String(aud) => vec![aud.clone()],
        Value::Array(items) => items
            .iter()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// An integer NumericDate claim.
pub(super) fn numeric(claims: &Value, name: &str) -> Option<i64> {
    claims[name]
        .as_i64()
        .or_else(|| claims[name].as_f64().map(|f| f as i64))
}

/// Verifies `token`'s signature with `jwk` under exactly `algorithm` (the caller
/// has already checked the header's `alg` against its allow-list) and returns its
/// claims. Claims are judged by the caller, in the cloud's own terms.
pub(super) fn verify_signature(token: &str, jwk: &Jwk, algorithm: Algorithm) -> Option<Value> {
    let key = DecodingKey::from_jwk(jwk).ok()?;
    let mut validation = Validation::new(algorithm);
    validation.algorithms = vec![algorithm];
    validation.required_spec_claims = HashSet::new();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .ok()
        .map(|data| data.claims)
}

pub(super) fn random_urlsafe(bytes: usize) -> String {
    use rand_core::RngCore;
    let mut buf = vec![0u8; bytes];
    rand_core::OsRng.fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

pub(super) enum KeyError {
    /// Discovery or JWKS could not be fetched or read.
    Unreachable,
    /// No key with that `kid`, even after fetching the set again.
    UnknownKid,
}

struct CachedKeys {
    fetched: Instant,
    keys: Vec<Jwk>,
}

/// An issuer's signing keys as a cloud finds them: `{iss}/.well-known/openid-configuration`,
/// then its `jwks_uri`; cached per issuer for a while, and fetched again once
/// when a token names a `kid` the cached set lacks (key rotation).
pub(super) struct KeyCache {
    client: reqwest::Client,
    ttl: Mutex<Duration>,
    cached: tokio::sync::Mutex<HashMap<String, CachedKeys>>,
    discovery_fetches: Mutex<HashMap<String, usize>>,
    jwks_fetches: Mutex<HashMap<String, usize>>,
}

impl KeyCache {
    pub(super) fn new() -> KeyCache {
        KeyCache {
            client: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
            ttl: Mutex::new(Duration::from_secs(3600)),
            cached: tokio::sync::Mutex::new(HashMap::new()),
            discovery_fetches: Mutex::new(HashMap::new()),
            jwks_fetches: Mutex::new(HashMap::new()),
        }
    }

    pub(super) fn set_ttl(&self, ttl: Duration) {
        *self.ttl.lock().unwrap() = ttl;
    }

    pub(super) fn jwks_fetches(&self, issuer: &str) -> usize {
        let issuer = issuer.trim_end_matches('/');
        *self.jwks_fetches.lock().unwrap().get(issuer).unwrap_or(&0)
    }

    pub(super) fn discovery_fetches(&self, issuer: &str) -> usize {
        let issuer = issuer.trim_end_matches('/');
        *self
            .discovery_fetches
            .lock()
            .unwrap()
            .get(issuer)
            .unwrap_or(&0)
    }

    /// The key `kid` of `issuer`.
    pub(super) async fn key(&self, issuer: &str, kid: &str) -> Result<Jwk, KeyError> {
        let issuer = issuer.trim_end_matches('/');
        let ttl = *self.ttl.lock().unwrap();
        // One lock across the fetch: concurrent requests share one refetch.
        let mut cached = self.cached.lock().await;
        let fresh = cached
            .get(issuer)
            .is_some_and(|entry| entry.fetched.elapsed() < ttl);
        if fresh {
            if let Some(jwk) = find_kid(&cached[issuer].keys, kid) {
                return Ok(jwk);
            }
        }
        let keys = self.fetch(issuer).await.map_err(|why| {
            // Shown with a failing test's output; the clouds say less.
            eprintln!("double: cannot fetch the keys of {issuer}: {why}");
            KeyError::Unreachable
        })?;
        let found = find_kid(&keys, kid);
        cached.insert(
            issuer.to_owned(),
            CachedKeys {
                fetched: Instant::now(),
                keys,
            },
        );
        found.ok_or(KeyError::UnknownKid)
    }

    async fn fetch(&self, issuer: &str) -> Result<Vec<Jwk>, String> {
        *self
            .discovery_fetches
            .lock()
            .unwrap()
            .entry(issuer.to_owned())
            .or_default() += 1;
        let discovery: Value = self
            .get_json(&format!("{issuer}/.well-known/openid-configuration"))
            .await?;
        let jwks_uri = discovery["jwks_uri"]
            .as_str()
            .ok_or("discovery document has no jwks_uri")?;
        *self
            .jwks_fetches
            .lock()
            .unwrap()
            .entry(issuer.to_owned())
            .or_default() += 1;
        let jwks: Value = self.get_json(jwks_uri).await?;
        let keys = jwks["keys"].as_array().ok_or("JWKS has no keys array")?;
        // A key this library cannot read is skipped, not fatal to the set.
        Ok(keys
            .iter()
            .filter_map(|k| serde_json::from_value::<Jwk>(k.clone()).ok())
            .collect())
    }

    async fn get_json(&self, url: &str) -> Result<Value, String> {
        let response = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("{url}: HTTP {}", response.status()));
        }
        response.json().await.map_err(|e| format!("{url}: {e}"))
    }
}

fn find_kid(keys: &[Jwk], kid: &str) -> Option<Jwk> {
    keys.iter()
        .find(|k| k.common.key_id.as_deref() == Some(kid))
        .cloned()
}
