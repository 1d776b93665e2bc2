//! [`EntraDouble`]: the Microsoft Entra ID token endpoint
//! (`POST /{tenant}/oauth2/v2.0/token`) for the client credentials grant with a
//! federated `client_assertion`, as workload identity federation uses it.
//!
//! Tenants hold app registrations, and app registrations hold at most 20
//! federated identity credentials `{name, issuer, subject, audiences}`
//! ([`EntraDouble::add_federated_credential`] refuses a 21st, a duplicate name or
//! issuer+subject, a bad name, and anything but exactly one audience). The
//! assertion is judged as Entra does: only RS256 is accepted; `iss` and `sub` must
//! equal a credential's `issuer` and `subject` exactly (case-sensitive, no
//! wildcards) and `aud` must be its audience; the signature is checked with the
//! key named by `kid` from `{iss}/.well-known/openid-configuration` → `jwks_uri`
//! (cached per issuer, fetched again once for an unknown `kid`); and the time must
//! be within `nbf`..`exp`. Errors carry Entra's AADSTS codes and its error body:
//! `error`, `error_description` ending in `Trace ID`/`Correlation ID`/`Timestamp`
//! lines, `error_codes`, `timestamp`, `trace_id`, `correlation_id`, `error_uri`.
//!
//! [`EntraDouble::set_propagation_delay`] simulates the documented replication
//! lag of a new credential: its first N matching requests answer AADSTS70021.
//!
//! Differences from Entra, on purpose: the issuer may be plain `http://` on the
//! loopback, tenants are known by the ids registered here only, and the access
//! token is JWT-shaped but not signed by anything a resource would trust.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use time::macros::format_description;
use time::OffsetDateTime;

use super::google::{
    audiences, jwt_part, numeric, random_urlsafe, verify_signature, KeyCache, KeyError,
};
use super::process::spawn_router;

/// The audience every federated identity credential must name.
pub const AZURE_AD_TOKEN_EXCHANGE: &str = "api://AzureADTokenExchange";
pub const CLIENT_ASSERTION_TYPE_JWT_BEARER: &str =
    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// "A maximum of 20 federated identity credentials can be added to an
/// application or user-assigned managed identity."
pub const MAX_FEDERATED_CREDENTIALS: usize = 20;

const WORKLOAD_IDENTITY_FEDERATION_DOC: &str =
    "https://learn.microsoft.com/entra/workload-id/workload-identity-federation";
const ACCESS_TOKEN_LIFETIME: i64 = 3599;

/// A federated identity credential on an app registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederatedIdentityCredential {
    pub name: String,
    pub issuer: String,
    pub subject: String,
    pub audiences: Vec<String>,
}

impl FederatedIdentityCredential {
    /// With the one audience Entra expects, `api://AzureADTokenExchange`.
    pub fn new(name: &str, issuer: &str, subject: &str) -> FederatedIdentityCredential {
        FederatedIdentityCredential {
            name: name.to_owned(),
            issuer: issuer.to_owned(),
            subject: subject.to_owned(),
            audiences: vec![AZURE_AD_TOKEN_EXCHANGE.to_owned()],
        }
    }
}

/// Why Microsoft Graph refused to create a federated identity credential, in
/// Graph's error shape `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl GraphError {
    pub fn body(&self) -> Value {
        json!({ "error": { "code": self.code, "message": self.message } })
    }
}

/// One token request as the double received and answered it.
#[derive(Debug, Clone)]
pub struct EntraTokenCall {
    pub tenant: String,
    pub form: HashMap<String, String>,
    pub status: u16,
    pub response: Value,
}

impl EntraTokenCall {
    pub fn client_assertion(&self) -> Option<&str> {
        self.form.get("client_assertion").map(String::as_str)
    }

    /// The assertion's claims, decoded without verification.
    pub fn assertion_claims(&self) -> Option<Value> {
        self.client_assertion().and_then(|t| jwt_part(t, 1))
    }

    /// The assertion's JOSE header, decoded without verification.
    pub fn assertion_header(&self) -> Option<Value> {
        self.client_assertion().and_then(|t| jwt_part(t, 0))
    }

    /// The AADSTS code of an error answer.
    pub fn error_code(&self) -> Option<u64> {
        self.response["error_codes"][0].as_u64()
    }
}

/// An access token the double issued.
#[derive(Debug, Clone)]
pub struct EntraAccessToken {
    pub tenant: String,
    pub client_id: String,
    pub scope: String,
    /// The name of the federated identity credential that matched.
    pub credential: String,
    pub access_token: String,
}

struct Credential {
    fic: FederatedIdentityCredential,
    /// Requests left to fail with AADSTS70021 (propagation).
    unpropagated: u32,
}

#[derive(Default)]
struct Application {
    credentials: Vec<Credential>,
}

struct EntraState {
    /// tenant id → client id → application.
    tenants: Mutex<HashMap<String, HashMap<String, Application>>>,
    propagation_delay: Mutex<u32>,
    calls: Mutex<Vec<EntraTokenCall>>,
    issued: Mutex<Vec<EntraAccessToken>>,
    keys: KeyCache,
}

/// The Entra token endpoint on a random port: `{url}/{tenant}/oauth2/v2.0/token`.
pub struct EntraDouble {
    pub url: String,
    state: Arc<EntraState>,
}

impl EntraDouble {
    pub async fn start() -> EntraDouble {
        let state = Arc::new(EntraState {
            tenants: Mutex::new(HashMap::new()),
            propagation_delay: Mutex::new(0),
            calls: Mutex::new(Vec::new()),
            issued: Mutex::new(Vec::new()),
            keys: KeyCache::new(),
        });
        let router = Router::new()
            .route("/{tenant}/oauth2/v2.0/token", post(token))
            .with_state(state.clone());
        EntraDouble {
            url: spawn_router(router).await,
            state,
        }
    }

    /// `{url}/{tenant}/oauth2/v2.0/token`.
    pub fn token_url(&self, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/v2.0/token", self.url)
    }

    pub fn add_tenant(&self, tenant: &str) {
        self.state
            .tenants
            .lock()
            .unwrap()
            .entry(tenant.to_owned())
            .or_default();
    }

    /// Registers an application (its client id) in `tenant`, adding the tenant if
    /// needed.
    pub fn add_application(&self, tenant: &str, client_id: &str) {
        self.state
            .tenants
            .lock()
            .unwrap()
            .entry(tenant.to_owned())
            .or_default()
            .entry(client_id.to_owned())
            .or_default();
    }

    /// Adds a federated identity credential to an application, refusing what
    /// Entra refuses: a 21st credential, a name already used or not 3-120 URL
    /// friendly characters starting alphanumeric, an issuer+subject pair already
    /// present, anything but exactly one audience.
    pub fn add_federated_credential(
        &self,
        tenant: &str,
        client_id: &str,
        fic: FederatedIdentityCredential,
    ) -> Result<(), GraphError> {
        let mut tenants = self.state.tenants.lock().unwrap();
        let Some(app) = tenants
            .get_mut(tenant)
            .and_then(|apps| apps.get_mut(client_id))
        else {
            return Err(GraphError {
                status: 404,
                code: "Request_ResourceNotFound".into(),
                message: format!("Resource '{client_id}' does not exist or one of its queried reference-property objects are not present."),
            });
        };
        let bad_request = |message: String| GraphError {
            status: 400,
            code: "Request_BadRequest".into(),
            message,
        };
        let name_ok = (3..=120).contains(&fic.name.len())
            && fic.name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && fic
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !name_ok {
            return Err(bad_request(format!(
                "Federated Identity Credential name '{}' is invalid.",
                fic.name
            )));
        }
        if fic.issuer.is_empty() || fic.subject.is_empty() {
            return Err(bad_request(
                "Federated Identity Credential from HTTP body has empty properties".into(),
            ));
        }
        if fic.audiences.len() != 1 {
            return Err(bad_request(
                "Federated identity credentials must have exactly one audience.".into(),
            ));
        }
        if app.credentials.iter().any(|c| c.fic.name == fic.name) {
            return Err(GraphError {
                status: 409,
                code: "Request_MultipleObjectsWithSameKeyValue".into(),
                message: format!(
                    "FederatedIdentityCredential with name {} already exists.",
                    fic.name
                ),
            });
        }
        if app
            .credentials
            .iter()
            .any(|c| c.fic.issuer == fic.issuer && c.fic.subject == fic.subject)
        {
            return Err(bad_request(
                "Issuer and subject combination already exists for this application.".into(),
            ));
        }
        if app.credentials.len() >= MAX_FEDERATED_CREDENTIALS {
            return Err(bad_request(format!(
                "The maximum number of federated identity credentials ({MAX_FEDERATED_CREDENTIALS}) for this application has been reached."
            )));
        }
        let unpropagated = *self.state.propagation_delay.lock().unwrap();
        app.credentials.push(Credential { fic, unpropagated });
        Ok(())
    }

    /// Removes a federated identity credential by name; false if there was none.
    pub fn remove_federated_credential(&self, tenant: &str, client_id: &str, name: &str) -> bool {
        let mut tenants = self.state.tenants.lock().unwrap();
        let Some(app) = tenants
            .get_mut(tenant)
            .and_then(|apps| apps.get_mut(client_id))
        else {
            return false;
        };
        let before = app.credentials.len();
        app.credentials.retain(|c| c.fic.name != name);
        app.credentials.len() != before
    }

    pub fn federated_credentials(
        &self,
        tenant: &str,
        client_id: &str,
    ) -> Vec<FederatedIdentityCredential> {
        self.state
            .tenants
            .lock()
            .unwrap()
            .get(tenant)
            .and_then(|apps| apps.get(client_id))
            .map(|app| app.credentials.iter().map(|c| c.fic.clone()).collect())
            .unwrap_or_default()
    }

    /// Credentials added from now on answer their first `requests` matching token
    /// requests with AADSTS70021, as a credential still replicating does.
    pub fn set_propagation_delay(&self, requests: u32) {
        *self.state.propagation_delay.lock().unwrap() = requests;
    }

    /// How long a fetched key set is trusted before it is fetched again (an
    /// unknown `kid` always triggers one refetch). Default one hour.
    pub fn set_jwks_cache_ttl(&self, ttl: Duration) {
        self.state.keys.set_ttl(ttl);
    }

    pub fn calls(&self) -> Vec<EntraTokenCall> {
        self.state.calls.lock().unwrap().clone()
    }

    pub fn issued_tokens(&self) -> Vec<EntraAccessToken> {
        self.state.issued.lock().unwrap().clone()
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

/// An AADSTS error before it gets its trace and correlation ids.
struct Aadsts {
    status: StatusCode,
    error: &'static str,
    code: u64,
    message: String,
}

fn aadsts(
    status: StatusCode,
    error: &'static str,
    code: u64,
    message: impl Into<String>,
) -> Aadsts {
    Aadsts {
        status,
        error,
        code,
        message: message.into(),
    }
}

fn invalid_request(code: u64, message: impl Into<String>) -> Aadsts {
    aadsts(StatusCode::BAD_REQUEST, "invalid_request", code, message)
}

fn invalid_client(code: u64, message: impl Into<String>) -> Aadsts {
    aadsts(StatusCode::UNAUTHORIZED, "invalid_client", code, message)
}

fn missing_parameter(name: &str) -> Aadsts {
    invalid_request(
        900144,
        format!("The request body must contain the following parameter: '{name}'."),
    )
}

async fn token(
    State(state): State<Arc<EntraState>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let (status, response) = match grant(&state, &tenant, &form).await {
        Ok(ok) => (StatusCode::OK, ok),
        Err(error) => {
            // Entra echoes a client-request-id as the correlation id.
            let correlation_id = headers
                .get("client-request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            (error.status, error_body(&error, &correlation_id))
        }
    };
    state.calls.lock().unwrap().push(EntraTokenCall {
        tenant,
        form,
        status: status.as_u16(),
        response: response.clone(),
    });
    (status, Json(response)).into_response()
}

fn error_body(error: &Aadsts, correlation_id: &str) -> Value {
    let trace_id = uuid::Uuid::new_v4().to_string();
    let timestamp = OffsetDateTime::now_utc()
        .format(format_description!(
            "[year]-[month]-[day] [hour]:[minute]:[second]Z"
        ))
        .unwrap();
    json!({
        "error": error.error,
        "error_description": format!(
            "AADSTS{}: {}\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation_id}\r\nTimestamp: {timestamp}",
            error.code, error.message
        ),
        "error_codes": [error.code],
        "timestamp": timestamp,
        "trace_id": trace_id,
        "correlation_id": correlation_id,
        "error_uri": format!("https://login.microsoftonline.com/error?code={}", error.code),
    })
}

async fn grant(
    state: &EntraState,
    tenant: &str,
    form: &HashMap<String, String>,
) -> Result<Value, Aadsts> {
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or("");

    if !state.tenants.lock().unwrap().contains_key(tenant) {
        let looks_like_id = uuid::Uuid::parse_str(tenant).is_ok() || tenant.contains('.');
        return Err(if looks_like_id {
            invalid_request(
                90002,
                format!("Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant."),
            )
        } else {
            invalid_request(
                900023,
                format!("Specified tenant identifier '{tenant}' is neither a valid DNS name, nor a valid external domain."),
            )
        });
    }

    match field("grant_type") {
        "" => return Err(missing_parameter("grant_type")),
        "client_credentials" => {}
        other => {
            return Err(aadsts(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                70003,
                format!("The app requested an unsupported grant type '{other}'."),
            ))
        }
    }
    let client_id = field("client_id");
    if client_id.is_empty() {
        return Err(missing_parameter("client_id"));
    }
    let scope = field("scope");
    if scope.is_empty() {
        return Err(missing_parameter("scope"));
    }
    if scope.split_whitespace().count() > 1 {
        return Err(aadsts(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            700022,
            format!("The provided value for the input parameter scope is not valid because it contains more than one resource. Scope {scope} is not valid."),
        ));
    }
    if !scope.ends_with("/.default") {
        return Err(aadsts(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            1002012,
            format!("The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."),
        ));
    }
    let known_app = state.tenants.lock().unwrap()[tenant].contains_key(client_id);
    if !known_app {
        return Err(aadsts(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            format!("Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant."),
        ));
    }
    let assertion = field("client_assertion");
    if assertion.is_empty() {
        return Err(invalid_client(
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        ));
    }
    // Not matched to a documented message: Entra's text for a wrong
    // client_assertion_type is not published; AADSTS90014 is its
    // "MissingRequiredField" code.
    if field("client_assertion_type") != CLIENT_ASSERTION_TYPE_JWT_BEARER {
        return Err(invalid_request(
            90014,
            format!("The required field 'client_assertion_type' is missing or not '{CLIENT_ASSERTION_TYPE_JWT_BEARER}'."),
        ));
    }

    let malformed = || invalid_request(50027, "JWT token is invalid or malformed.");
    let header = jwt_part(assertion, 0).ok_or_else(malformed)?;
    let claims = jwt_part(assertion, 1).ok_or_else(malformed)?;
    match header["alg"].as_str().unwrap_or_default() {
        "RS256" => {}
        // HS256 is on Entra's list, but keyed with a client secret: a federated
        // credential has none, so such an assertion can only fail its signature.
        "HS256" => {
            return Err(invalid_client(
                700027,
                "Client assertion failed signature validation.",
            ))
        }
        // The text Entra answers for ES384 and the like (observed, AADSTS5002738).
        other => {
            return Err(invalid_request(
                5002738,
                format!("Invalid JWT token. '{other}' is not a supported signature algorithm. Supported signing algorithms are: 'RS256, HS256'"),
            ))
        }
    }

    let iss = claims["iss"].as_str().unwrap_or_default().to_owned();
    let sub = claims["sub"].as_str().unwrap_or_default().to_owned();
    let auds = audiences(&claims);
    let credential = match_credential(state, tenant, client_id, &iss, &sub, &auds)?;

    let kid = header["kid"].as_str().unwrap_or_default();
    let jwk = match state.keys.key(&iss, kid).await {
        Ok(jwk) => jwk,
        Err(KeyError::Unreachable) => {
            return Err(invalid_client(
                50166,
                format!("Request to External OIDC endpoint failed. Issuer: '{iss}'."),
            ))
        }
        Err(KeyError::UnknownKid) => {
            return Err(invalid_client(
                700027,
                "Client assertion failed signature validation.",
            ))
        }
    };
    let claims = verify_signature(assertion, &jwk, Algorithm::RS256)
        .ok_or_else(|| invalid_client(700027, "Client assertion failed signature validation."))?;

    let now = OffsetDateTime::now_utc();
    let exp = numeric(&claims, "exp");
    let nbf = numeric(&claims, "nbf").or_else(|| numeric(&claims, "iat"));
    let in_range = exp.is_some_and(|exp| now.unix_timestamp() < exp)
        && nbf.is_none_or(|nbf| nbf <= now.unix_timestamp());
    if !in_range {
        let at = |t: Option<i64>| {
            t.and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok())
                .map(entra_instant)
                .unwrap_or_default()
        };
        return Err(invalid_client(
            700024,
            format!(
                "Client assertion is not within its valid time range. Current time: {}, assertion valid from {}, expiry time of assertion {}. Review the documentation at https://learn.microsoft.com/entra/identity-platform/certificate-credentials .",
                entra_instant(now),
                at(nbf),
                at(exp)
            ),
        ));
    }

    let resource = scope.trim_end_matches("/.default");
    let access_token = access_token(tenant, client_id, resource);
    state.issued.lock().unwrap().push(EntraAccessToken {
        tenant: tenant.to_owned(),
        client_id: client_id.to_owned(),
        scope: scope.to_owned(),
        credential,
        access_token: access_token.clone(),
    });
    Ok(json!({
        "token_type": "Bearer",
        "expires_in": ACCESS_TOKEN_LIFETIME,
        "ext_expires_in": ACCESS_TOKEN_LIFETIME,
        "access_token": access_token,
    }))
}

/// Finds the credential for `iss`+`sub`+`aud` as Entra reports a miss: first by
/// issuer (700211), then subject (700213), then audience (700212); a match still
/// replicating answers 70021. Returns the credential's name.
fn match_credential(
    state: &EntraState,
    tenant: &str,
    client_id: &str,
    iss: &str,
    sub: &str,
    auds: &[String],
) -> Result<String, Aadsts> {
    let check = "Check your federated identity credential Subject, Audience and Issuer against the presented assertion.";
    let mut tenants = state.tenants.lock().unwrap();
    let app = tenants
        .get_mut(tenant)
        .and_then(|apps| apps.get_mut(client_id))
        .expect("checked above");
    if !app.credentials.iter().any(|c| c.fic.issuer == iss) {
        return Err(invalid_client(
            700211,
            format!("No matching federated identity record found for presented assertion issuer '{iss}'. {check} {WORKLOAD_IDENTITY_FEDERATION_DOC}"),
        ));
    }
    if !app
        .credentials
        .iter()
        .any(|c| c.fic.issuer == iss && c.fic.subject == sub)
    {
        return Err(invalid_client(
            700213,
            format!("No matching federated identity record found for presented assertion subject '{sub}'. {check} {WORKLOAD_IDENTITY_FEDERATION_DOC}"),
        ));
    }
    let Some(credential) = app.credentials.iter_mut().find(|c| {
        c.fic.issuer == iss
            && c.fic.subject == sub
            && auds.iter().any(|a| c.fic.audiences.contains(a))
    }) else {
        return Err(invalid_client(
            700212,
            format!(
                "No matching federated identity record found for presented assertion audience '{}'. {check} {WORKLOAD_IDENTITY_FEDERATION_DOC}",
                auds.join(",")
            ),
        ));
    };
    if credential.unpropagated > 0 {
        credential.unpropagated -= 1;
        return Err(invalid_request(
            70021,
            format!(
                "No matching federated identity record found for presented assertion. Assertion Issuer: '{iss}'. Assertion Subject: '{sub}'. Assertion Audience: '{}'. {WORKLOAD_IDENTITY_FEDERATION_DOC}",
                auds.join(",")
            ),
        ));
    }
    Ok(credential.fic.name.clone())
}

/// `2024-08-05T10:07:04.2542067Z`: how AADSTS700024 prints instants.
fn entra_instant(t: OffsetDateTime) -> String {
    let base = t
        .format(format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second]"
        ))
        .unwrap();
    format!("{base}.{:07}Z", t.nanosecond() / 100)
}

/// A JWT-shaped v1 access token (claims as Entra puts them; the signature is
/// random bytes: nothing downstream verifies it).
fn access_token(tenant: &str, client_id: &str, resource: &str) -> String {
    // The service principal's object id in the tenant, stable enough for a double.
    let oid = uuid::Uuid::new_v4().to_string();
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let header = json!({ "typ": "JWT", "alg": "RS256", "kid": "entra-double" });
    let claims = json!({
        "aud": resource,
        "iss": format!("https://sts.windows.net/{tenant}/"),
        "iat": now,
        "nbf": now,
        "exp": now + ACCESS_TOKEN_LIFETIME,
        "appid": client_id,
        "tid": tenant,
        "oid": oid,
        "sub": oid,
        "idtyp": "app",
        "ver": "1.0",
    });
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        random_urlsafe(256)
    )
}
