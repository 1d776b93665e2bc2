//! Agents' door to the broker: `POST /oauth2/token`, OAuth 2.0 Token
//! Exchange (RFC 8693), and its RFC 8414 metadata at
//! `/.well-known/oauth-authorization-server`.
//!
//! An agent sends the person's token (`subject_token`) and its own
//! (`actor_token`, from an issuer with `agents = true`), the stack
//! (`resource`) and the credential it wants (`requested_token_type`, a URN
//! each provider names, or a JWT in federation mode). Both tokens are
//! verified by the broker's verifier, made into one agent principal
//! (`identity::delegate`) and issued through the same `Broker::issue` as
//! `/v1/credentials`: policy, agent bounds, approvals and audit apply
//! unchanged. An agent alone sends its own token as `subject_token`.
//!
//! The form is parsed into an [`Exchange`] (pure, unit-tested) and every
//! refusal is an RFC 6749 section 5.2 error ([`OAuthError`]), never a
//! problem+json document: OAuth clients read `error`. Authentication
//! failures are logged, not audited (as on `/v1`); everything after them is
//! the broker's and audited there.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use stackpass_provider::token_exchange::NOT_APPLICABLE;
use stackpass_provider::{federation, CredentialField, Mode, ProviderError, ProviderKind};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tower::ServiceBuilder;

use super::cacheable;
use super::credentials::is_one_short_line;
use crate::broker::{Broker, BrokerError, CredentialRequest, Issued, RequestContext};
use crate::config::ServerConfig;
use crate::identity::{delegate, IdentityError, Principal, PrincipalKind};
use crate::registry::{LookupError, Providers};
use crate::stacks::StackRef;
use crate::wire;

/// RFC 8693 section 2.1.
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// RFC 8693 section 3: the token types this endpoint reads (all must be JWTs
/// a trusted issuer signed) and, for federation mode, issues.
pub const JWT: &str = federation::JWT_TOKEN_TYPE;
pub const ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
pub const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
const INPUT_TOKEN_TYPES: [&str; 3] = [JWT, ID_TOKEN, ACCESS_TOKEN];
/// The scope that names a provider: `provider:aws`.
const PROVIDER_SCOPE: &str = "provider:";
/// RFC 6749 section 5.2 allows only `%x20-21 / %x23-5B / %x5D-7E` in
/// `error_description`; this keeps it short too.
const MAX_DESCRIPTION_CHARS: usize = 600;

/// A form carries two tokens of up to `identity.max_token_bytes` (8 KiB by
/// default) besides its other parameters, so it may be larger than a `/v1`
/// JSON body: at least this, whatever `server.max_body_bytes` says.
const MIN_FORM_BYTES: usize = 32 * 1024;

/// The token endpoint takes no bearer token, so it is outside `/v1`'s
/// admission; it has a concurrency limit of its own, of the same size, so
/// a flood of exchanges cannot take `/v1`'s slots (nor the reverse).
pub fn routes(config: &ServerConfig) -> Router<Arc<Broker>> {
    let limits = BodyLimits {
        max_bytes: config.max_body_bytes.max(MIN_FORM_BYTES),
        read_timeout: config.body_read_timeout,
    };
    Router::new()
        .route("/oauth2/token", post(exchange))
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(super::overloaded_or_timed_out))
                .load_shed()
                .concurrency_limit(config.max_concurrent_requests),
        )
        .route("/.well-known/oauth-authorization-server", get(metadata))
        .layer(Extension(limits))
}

#[derive(Clone, Copy)]
struct BodyLimits {
    max_bytes: usize,
    read_timeout: Duration,
}

// ---------------------------------------------------------------------------
// Errors

/// An RFC 6749 section 5.2 error response (with RFC 8693's `invalid_target`
/// and RFC 8628's `authorization_pending`).
#[derive(Debug)]
pub struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: String,
    /// For `authorization_pending`: the access request a person must approve.
    access_request: Option<String>,
    /// For a 401: the `WWW-Authenticate` challenge, in the scheme the client
    /// tried (RFC 6749 section 5.2).
    challenge: &'static str,
    /// For a quota refusal: when to try again (`Retry-After`, seconds).
    retry_after: Option<Duration>,
}

impl OAuthError {
    fn new(status: StatusCode, error: &'static str, description: impl Into<String>) -> Self {
        OAuthError {
            status,
            error,
            description: description.into(),
            access_request: None,
            challenge: "Basic realm=\"stackpass\"",
            retry_after: None,
        }
    }

    fn invalid_request(description: impl Into<String>) -> Self {
        OAuthError::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    fn invalid_target(description: impl Into<String>) -> Self {
        OAuthError::new(StatusCode::BAD_REQUEST, "invalid_target", description)
    }

    fn invalid_scope(description: impl Into<String>) -> Self {
        OAuthError::new(StatusCode::BAD_REQUEST, "invalid_scope", description)
    }

    fn unavailable(description: impl Into<String>) -> Self {
        OAuthError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            description,
        )
    }

    fn server_error(status: StatusCode, description: impl Into<String>) -> Self {
        OAuthError::new(status, "server_error", description)
    }

    /// RFC 6749 section 5.2: a client that tried to authenticate gets 401.
    fn invalid_client(description: impl Into<String>) -> Self {
        OAuthError::new(StatusCode::UNAUTHORIZED, "invalid_client", description)
    }

    #[cfg(test)]
    fn error(&self) -> &'static str {
        self.error
    }

    #[cfg(test)]
    fn status(&self) -> StatusCode {
        self.status
    }
}

/// An RFC 6749 section 5.2 error: `invalid_request`, `invalid_client`,
/// `invalid_scope`, `invalid_target` (RFC 8693), `unsupported_grant_type`,
/// `unauthorized_client`, `authorization_pending` and `slow_down` (RFC 8628),
/// `temporarily_unavailable`, `server_error`.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = OAuthError)]
pub(super) struct ErrorBody<'a> {
    #[schema(value_type = String, example = "invalid_request")]
    error: &'a str,
    /// Printable ASCII without `"` or `\` (RFC 6749), at most 600 characters.
    error_description: String,
    /// For `authorization_pending`: the access request a person must approve.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    access_request_id: Option<&'a str>,
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.error,
            error_description: description_text(&self.description),
            access_request_id: self.access_request.as_deref(),
        };
        let mut response = (self.status, Json(body)).into_response();
        let headers = response.headers_mut();
        no_store(headers);
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(self.challenge),
            );
        }
        if let Some(retry_after) = self.retry_after {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after.as_secs()),
            );
        }
        response
    }
}

/// `error_description` in the characters RFC 6749 allows: quotes and
/// backslashes become `'` and `/`, anything else outside printable ASCII `?`.
fn description_text(text: &str) -> String {
    text.chars()
        .take(MAX_DESCRIPTION_CHARS)
        .map(|c| match c {
            '"' => '\'',
            '\\' => '/',
            ' '..='~' => c,
            _ => '?',
        })
        .collect()
}

fn no_store(headers: &mut HeaderMap) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

/// Which token a verification failure was about, for the description.
#[derive(Clone, Copy)]
enum Which {
    Subject,
    Actor,
}

impl Which {
    fn name(self) -> &'static str {
        match self {
            Which::Subject => "subject_token",
            Which::Actor => "actor_token",
        }
    }
}

/// RFC 8693 section 2.2.2: a subject or actor token that is invalid for any
/// reason, or unacceptable by policy, is `invalid_request`. An issuer whose
/// keys cannot be fetched is the broker's trouble, not the token's.
fn token_refused(which: Which, error: &IdentityError) -> OAuthError {
    if error.is_unavailable() {
        return OAuthError::unavailable(format!(
            "the {} could not be verified now: {error}",
            which.name()
        ));
    }
    OAuthError::invalid_request(format!("the {} was refused: {error}", which.name()))
}

/// The broker's refusals after both tokens were accepted.
fn from_broker_error(error: BrokerError) -> OAuthError {
    match error {
        BrokerError::Identity(e) => token_refused(Which::Subject, &e),
        BrokerError::Provider(LookupError::Unknown(_) | LookupError::NotEnabled(_))
        | BrokerError::UnknownStack(_) => OAuthError::invalid_target(error.to_string()),
        // "unwilling ... to issue a token for any target service indicated
        // by the resource" (RFC 8693 section 2.2.2).
        BrokerError::Denied(denial) => OAuthError::invalid_target(format!(
            "{}; the stack's owners see each rule's reasons with POST /v1/decisions",
            denial.summary
        )),
        BrokerError::InvalidRequest(detail) => OAuthError::invalid_request(detail),
        BrokerError::ApprovalRequired { .. } => OAuthError::new(
            StatusCode::BAD_REQUEST,
            "authorization_pending",
            format!("{error}: a person must approve the access request before an agent gets this; retry once it is approved"),
        ),
        // RFC 8628's `slow_down` (registered for token endpoint responses),
        // with the time the quota frees up.
        BrokerError::QuotaExceeded {
            retry_after,
            message,
        } => OAuthError {
            retry_after: Some(retry_after),
            ..OAuthError::new(StatusCode::TOO_MANY_REQUESTS, "slow_down", message)
        },
        // The same for a rate limit (`Retry-After` in whole seconds).
        BrokerError::RateLimited(limited) => OAuthError {
            retry_after: Some(Duration::from_secs(limited.retry_after_seconds())),
            ..OAuthError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "slow_down",
                format!(
                    "too many {} (limit {}); retry in {}s",
                    limited.limit.describe(),
                    limited.limit.label(),
                    limited.retry_after_seconds()
                ),
            )
        },
        // "If either the subject_token or actor_token are ... unacceptable
        // based on policy, the invalid_request error code MUST be used"
        // (RFC 8693 section 2.2.2): a revoked delegation is such a policy.
        BrokerError::DelegationRevoked { .. } => OAuthError::invalid_request(error.to_string()),
        BrokerError::RevocationStore(_) => OAuthError::unavailable(error.to_string()),
        BrokerError::BreakGlassNotAllowed(_) | BrokerError::BreakGlassNotAPerson => {
            OAuthError::invalid_request(error.to_string())
        }
        BrokerError::Catalog(_)
        | BrokerError::StackSource(_)
        | BrokerError::ApprovalStore(_) => OAuthError::unavailable(error.to_string()),
        BrokerError::Audit(_) => OAuthError::unavailable(
            "the audit log could not record this request, so nothing was issued; retry shortly",
        ),
        BrokerError::Cloud(ProviderError::Unavailable { .. }) => {
            OAuthError::unavailable(error.to_string())
        }
        BrokerError::Cloud(e) => OAuthError::server_error(StatusCode::BAD_GATEWAY, e.to_string()),
        BrokerError::AuditForbidden(_)
        | BrokerError::Revocation(_)
        | BrokerError::ApprovalNotNeeded
        | BrokerError::Approval(_)
        | BrokerError::IssuanceInterrupted
        | BrokerError::Issuer(_) => OAuthError::server_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the broker failed while handling this request; nothing was issued; report the time of the request to the operator",
        ),
    }
}

// ---------------------------------------------------------------------------
// The request

/// A token-exchange request, parsed: everything but the tokens' verification.
pub struct Exchange {
    pub subject_token: SecretString,
    pub actor_token: Option<SecretString>,
    pub stack: StackRef,
    pub provider: ProviderKind,
    pub mode: Mode,
    pub duration: Option<Duration>,
    pub reason: Option<String>,
}

/// The `requested_token_type`s this broker offers: each configured
/// provider's credential URN.
pub struct Offered {
    credentials: Vec<(&'static str, ProviderKind)>,
    providers: Vec<ProviderKind>,
}

impl Offered {
    pub fn of(providers: &Providers) -> Offered {
        Offered {
            credentials: providers
                .iter()
                .filter_map(|p| p.credential_token_type().map(|urn| (urn, p.kind())))
                .collect(),
            providers: providers.kinds().cloned().collect(),
        }
    }

    fn requested_types(&self) -> Vec<&'static str> {
        let mut types: Vec<&'static str> = self.credentials.iter().map(|(urn, _)| *urn).collect();
        types.push(JWT);
        types
    }

    fn scopes(&self) -> Vec<String> {
        self.providers
            .iter()
            .map(|p| format!("{PROVIDER_SCOPE}{p}"))
            .collect()
    }
}

/// The form's parameters. RFC 6749 section 3.2: none may appear twice,
/// except `resource` and `audience`, which RFC 8693 lets repeat (and which
/// [`parse`] then refuses as more than one stack). Empty values count as
/// absent (section 3.1).
fn form_fields(body: &[u8]) -> Result<BTreeMap<String, Vec<String>>, OAuthError> {
    let mut fields: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in url::form_urlencoded::parse(body) {
        if value.is_empty() {
            continue;
        }
        let values = fields.entry(name.into_owned()).or_default();
        values.push(value.into_owned());
    }
    if let Some((name, _)) = fields.iter().find(|(name, values)| {
        values.len() > 1 && !matches!(name.as_str(), "resource" | "audience")
    }) {
        return Err(OAuthError::invalid_request(format!(
            "{name} is sent more than once; send each parameter once"
        )));
    }
    Ok(fields)
}

/// Parses a token-exchange form. Unknown parameters are ignored (RFC 6749
/// section 3.2), except the client credentials this endpoint does not take.
pub fn parse(body: &[u8], offered: &Offered) -> Result<Exchange, OAuthError> {
    let mut fields = form_fields(body)?;
    let mut take = |name: &str| fields.remove(name).and_then(|mut v| v.pop());
    if take("client_secret").is_some() || take("client_assertion").is_some() {
        return Err(OAuthError::invalid_client(
            "this endpoint does not authenticate clients (token_endpoint_auth_methods_supported is none): the actor_token is the agent's credential; send no client_secret or client_assertion",
        ));
    }
    match take("grant_type").as_deref() {
        None => {
            return Err(OAuthError::invalid_request(format!(
                "grant_type is missing; send grant_type={GRANT_TYPE}"
            )))
        }
        Some(GRANT_TYPE) => {}
        Some(_) => {
            return Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                format!("this endpoint supports only grant_type={GRANT_TYPE}"),
            ))
        }
    }
    let subject_token = take("subject_token").ok_or_else(|| {
        OAuthError::invalid_request(
            "subject_token is missing: send the person's token (or, for an agent acting alone, the agent's own)",
        )
    })?;
    check_token_type("subject_token_type", take("subject_token_type"))?;
    let actor_token = take("actor_token");
    let actor_token_type = take("actor_token_type");
    match (&actor_token, actor_token_type) {
        (Some(_), kind) => check_token_type("actor_token_type", kind)?,
        (None, Some(_)) => {
            return Err(OAuthError::invalid_request(
                "actor_token_type is sent without an actor_token (RFC 8693 section 2.1)",
            ))
        }
        (None, None) => {}
    }

    let mut targets: Vec<String> = fields.remove("resource").unwrap_or_default();
    targets.extend(fields.remove("audience").unwrap_or_default());
    targets.dedup();
    let mut take = |name: &str| fields.remove(name).and_then(|mut v| v.pop());
    let stack = match targets.as_slice() {
        [] => {
            return Err(OAuthError::invalid_request(
                "resource is missing: name the stack, e.g. resource=pulumi:ORG/PROJECT/STACK or terraform:ORG/WORKSPACE",
            ))
        }
        [one] => StackRef::parse(one).map_err(|e| {
            OAuthError::invalid_target(format!("resource is not a stack reference: {e}"))
        })?,
        _ => {
            return Err(OAuthError::invalid_target(
                "one exchange is for one stack: send one resource (or audience)",
            ))
        }
    };

    let scoped = scope_provider(take("scope").as_deref(), offered)?;
    let (provider, mode) = match take("requested_token_type").as_deref() {
        Some(JWT) => match scoped {
            Some(provider) => (provider, Mode::Federation),
            None => {
                return Err(OAuthError::invalid_request(format!(
                    "a subject token for a cloud (requested_token_type={JWT}) needs the cloud: add scope=provider:KIND ({})",
                    offered.scopes().join(", ")
                )))
            }
        },
        Some(urn) => {
            let Some((_, provider)) = offered.credentials.iter().find(|(u, _)| *u == urn) else {
                return Err(OAuthError::invalid_request(format!(
                    "requested_token_type {} is not offered here; use one of {}",
                    description_text(urn),
                    offered.requested_types().join(", ")
                )));
            };
            if scoped.as_ref().is_some_and(|s| s != provider) {
                return Err(OAuthError::invalid_scope(format!(
                    "scope names another provider than requested_token_type ({provider})"
                )));
            }
            (provider.clone(), Mode::Credentials)
        }
        None => match scoped {
            Some(provider) => (provider, Mode::Credentials),
            None => {
                return Err(OAuthError::invalid_request(format!(
                    "requested_token_type is missing; use one of {}",
                    offered.requested_types().join(", ")
                )))
            }
        },
    };
    let duration = match take("duration_seconds") {
        None => None,
        Some(text) => Some(Duration::from_secs(text.parse::<u64>().map_err(|_| {
            OAuthError::invalid_request("duration_seconds must be a whole number of seconds")
        })?)),
    };
    let reason = take("reason").map(|r| r.trim().to_owned());
    if reason.as_deref().is_some_and(|r| !is_one_short_line(r)) {
        return Err(OAuthError::invalid_request(
            "reason must be one line of at most 500 characters",
        ));
    }
    Ok(Exchange {
        subject_token: SecretString::from(subject_token),
        actor_token: actor_token.map(SecretString::from),
        stack,
        provider,
        mode,
        duration,
        reason,
    })
}

fn check_token_type(name: &str, value: Option<String>) -> Result<(), OAuthError> {
    match value.as_deref() {
        None => Err(OAuthError::invalid_request(format!(
            "{name} is missing; send {JWT}"
        ))),
        Some(kind) if INPUT_TOKEN_TYPES.contains(&kind) => Ok(()),
        Some(kind) => Err(OAuthError::invalid_request(format!(
            "{name} {} is not supported: tokens here are JWTs from a trusted issuer ({})",
            description_text(kind),
            INPUT_TOKEN_TYPES.join(", ")
        ))),
    }
}

/// `scope`: space-separated; the only scope defined is `provider:KIND`
/// (at most one), naming the cloud.
fn scope_provider(
    scope: Option<&str>,
    offered: &Offered,
) -> Result<Option<ProviderKind>, OAuthError> {
    let mut provider = None;
    for token in scope
        .unwrap_or_default()
        .split(' ')
        .filter(|t| !t.is_empty())
    {
        let Some(kind) = token.strip_prefix(PROVIDER_SCOPE) else {
            return Err(OAuthError::invalid_scope(format!(
                "scope {} is not known; the only scope is provider:KIND ({})",
                description_text(token),
                offered.scopes().join(", ")
            )));
        };
        let kind = ProviderKind::parse(kind)
            .ok()
            .filter(|k| offered.providers.contains(k))
            .ok_or_else(|| {
                OAuthError::invalid_scope(format!(
                    "{} names no provider this broker has; use one of {}",
                    description_text(token),
                    offered.scopes().join(", ")
                ))
            })?;
        if provider.replace(kind).is_some() {
            return Err(OAuthError::invalid_scope(
                "scope names more than one provider; one exchange is for one cloud",
            ));
        }
    }
    Ok(provider)
}

// ---------------------------------------------------------------------------
// The handler

/// The token-exchange form (`application/x-www-form-urlencoded`, RFC 8693
/// section 2.1). Empty values count as absent; no parameter may repeat
/// except `resource` and `audience`, which together name one stack.
// For the OpenAPI document only: [`parse`] reads the form itself, and a
// test checks the two name the same parameters and required ones.
#[derive(utoipa::ToSchema)]
#[schema(as = TokenExchangeForm)]
#[allow(dead_code)] // Describes the form for the OpenAPI document; never built.
pub(super) struct ExchangeForm {
    /// `urn:ietf:params:oauth:grant-type:token-exchange`.
    #[schema(example = "urn:ietf:params:oauth:grant-type:token-exchange")]
    grant_type: String,
    /// The person's token (or, for an agent acting alone, the agent's own).
    subject_token: String,
    /// `urn:ietf:params:oauth:token-type:jwt`, `…:id_token` or `…:access_token`.
    #[schema(example = "urn:ietf:params:oauth:token-type:jwt")]
    subject_token_type: String,
    /// The agent's own token, from an issuer with `agents = true`.
    actor_token: Option<String>,
    actor_token_type: Option<String>,
    /// The stack: `pulumi:ORG/PROJECT/STACK` or `terraform:ORG/WORKSPACE`.
    #[schema(example = "pulumi:acme/payments/dev")]
    resource: Option<String>,
    /// Taken as `resource` (one stack in all).
    audience: Option<String>,
    /// `provider:KIND`, naming the cloud.
    #[schema(example = "provider:aws")]
    scope: Option<String>,
    /// A provider's credential URN (see the metadata), or
    /// `urn:ietf:params:oauth:token-type:jwt` for a subject token.
    requested_token_type: Option<String>,
    /// Whole seconds, capped by policy and the agent bounds.
    duration_seconds: Option<String>,
    /// One line, at most 500 characters, for approvers and the audit log.
    reason: Option<String>,
}

/// RFC 8693 section 2.2.1, with the broker's facts beside it.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = TokenExchangeResponse)]
pub(super) struct ExchangeResponse {
    /// The credential (a provider's `access_token` form, e.g. AWS's
    /// session JSON) or, in federation mode, the subject token.
    access_token: String,
    #[schema(value_type = String)]
    issued_token_type: &'static str,
    /// `N_A` for a subject token or an AWS session; `Bearer` for a cloud
    /// access token.
    #[schema(value_type = String)]
    token_type: &'static str,
    expires_in: u64,
    scope: String,
    /// Not secret: what was issued and by which rule, and the credential's
    /// public fields (the AWS key id, a federation audience).
    stackpass: IssuedFacts,
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = TokenExchangeFacts)]
struct IssuedFacts {
    issuance_id: String,
    requester: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    actor: Option<String>,
    stack: String,
    provider: String,
    rule: String,
    role: String,
    expires_at: String,
    /// The credential's public fields (the AWS key id, a federation audience).
    #[schema(value_type = BTreeMap<String, Option<String>>)]
    fields: BTreeMap<&'static str, Option<String>>,
}

/// Exchange a person's and an agent's tokens for a credential (RFC 8693).
///
/// Issued to agents only, through the same policy, agent bounds, approvals
/// and audit as `/v1/credentials`. Errors are RFC 6749 section 5.2 JSON.
#[utoipa::path(
    post,
    path = "/oauth2/token",
    tag = "agents",
    operation_id = "token_exchange",
    request_body(content = ExchangeForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "The credential, and what was issued by which rule",
            body = ExchangeResponse,
            headers(
                ("cache-control" = String, description = "`no-store`"),
                ("pragma" = String, description = "`no-cache`"),
            )),
        (status = 400, description = "`invalid_request` (a missing or refused parameter or token, a revoked delegation), `invalid_target` (a stack that is unknown, denied, or for an unknown provider), `invalid_scope`, `unsupported_grant_type`, `unauthorized_client` (the subject is not an agent and no actor_token was sent), `authorization_pending` (a person must approve `access_request_id`)",
            body = ErrorBody,
            headers(
                ("cache-control" = String, description = "`no-store`"),
                ("pragma" = String, description = "`no-cache`"),
            )),
        (status = 401, description = "`invalid_client`: the request carried client authentication (an Authorization header, client_secret or client_assertion), which this endpoint does not take",
            body = ErrorBody,
            headers(
                ("cache-control" = String, description = "`no-store`"),
                ("pragma" = String, description = "`no-cache`"),
            )),
        (status = 429, description = "`slow_down`: the agent's quota, or the broker's rate limit, is spent until `Retry-After`",
            body = ErrorBody,
            headers(
                ("cache-control" = String, description = "`no-store`"),
                ("pragma" = String, description = "`no-cache`"),
            )),
        (status = 500, description = "`server_error`: the broker failed; nothing was issued",
            body = ErrorBody),
        (status = 502, description = "`server_error`: the cloud refused the exchange or answered unusably",
            body = ErrorBody,
            headers(
                ("cache-control" = String, description = "`no-store`"),
                ("pragma" = String, description = "`no-cache`"),
            )),
        (status = 503, description = "`temporarily_unavailable`: an issuer's keys, the catalog, the stack source, the audit log, the approvals or revocations store, or the cloud cannot be reached",
            body = ErrorBody),
    ),
)]
async fn exchange(
    State(broker): State<Arc<Broker>>,
    Extension(limits): Extension<BodyLimits>,
    context: RequestContext,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match exchange_inner(&broker, limits, &context, &headers, body).await {
        Ok(response) => response,
        Err(error) => {
            tracing::info!(request_id = %context.request_id, error = error.error, "token exchange refused");
            error.into_response()
        }
    }
}

async fn exchange_inner(
    broker: &Broker,
    limits: BodyLimits,
    context: &RequestContext,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, OAuthError> {
    if let Some(authorization) = headers.get(header::AUTHORIZATION) {
        let bearer = authorization
            .as_bytes()
            .get(..7)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case(b"bearer "));
        return Err(OAuthError {
            challenge: if bearer {
                "Bearer realm=\"stackpass\""
            } else {
                "Basic realm=\"stackpass\""
            },
            ..OAuthError::invalid_client(
                "this endpoint does not authenticate clients (token_endpoint_auth_methods_supported is none): send no Authorization header; the actor_token is the agent's credential",
            )
        });
    }
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !is_form {
        return Err(OAuthError::invalid_request(
            "send the request as Content-Type: application/x-www-form-urlencoded (RFC 6749 section 3.2)",
        ));
    }
    let body = tokio::time::timeout(
        limits.read_timeout,
        axum::body::to_bytes(body, limits.max_bytes),
    )
    .await
    .map_err(|_| OAuthError::invalid_request("the request body did not arrive in time"))?
    .map_err(|_| {
        OAuthError::invalid_request(format!(
            "the request body could not be read or is larger than {} bytes",
            limits.max_bytes
        ))
    })?;
    let offered = Offered::of(broker.providers());
    let request = parse(&body, &offered)?;
    let principal = principal(broker, context, &request).await?;
    let credential_request = CredentialRequest {
        stack: request.stack.clone(),
        provider: request.provider.clone(),
        duration: request.duration,
        reason: request.reason.clone(),
        break_glass: None,
        mode: request.mode,
    };
    let issued = match broker
        .issue(context, principal.clone(), &credential_request)
        .await
    {
        Ok(issued) => issued,
        Err(BrokerError::ApprovalRequired { pending, .. }) => {
            return Err(
                approval_pending(broker, context, principal, &credential_request, pending).await,
            )
        }
        Err(error) => return Err(from_broker_error(error)),
    };
    let response = render(broker, &issued, request.mode, principal.actor)?;
    let mut response = Json(response).into_response();
    no_store(response.headers_mut());
    Ok(response)
}

/// Who asks: an agent acting for the person of `subject_token`, or an
/// agent alone (its own token as `subject_token`). A person or a service
/// alone has `/v1/credentials`; this endpoint issues to agents only, so the
/// agent bounds always apply to what it hands out.
async fn principal(
    broker: &Broker,
    context: &RequestContext,
    request: &Exchange,
) -> Result<Principal, OAuthError> {
    let subject = broker
        .authenticate(context, &request.subject_token)
        .await
        .map_err(|e| match e {
            BrokerError::Identity(e) => token_refused(Which::Subject, &e),
            other => from_broker_error(other),
        })?;
    let Some(actor_token) = &request.actor_token else {
        // An agent's own token (from an `agents = true` issuer), or a token
        // whose `act` already names the agent: accepted as on `/v1`.
        if subject.kind == PrincipalKind::Agent {
            return Ok(subject);
        }
        return Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            format!(
                "{} is not an agent, and this endpoint issues to agents only: send the agent's token as actor_token (a person alone uses POST /v1/credentials)",
                subject.subject
            ),
        ));
    };
    let agent = broker
        .authenticate_agent(context, actor_token)
        .await
        .map_err(|e| match e {
            BrokerError::Identity(e) => token_refused(Which::Actor, &e),
            other => from_broker_error(other),
        })?;
    delegate(subject, agent).map_err(|e| {
        tracing::warn!(request_id = %context.request_id, error = %e, "token exchange: delegation refused");
        OAuthError::invalid_request(e.to_string())
    })
}

/// A grant that needs approval: the agent is told which access request a
/// person must approve, opened now if there is none yet.
async fn approval_pending(
    broker: &Broker,
    context: &RequestContext,
    principal: Principal,
    request: &CredentialRequest,
    pending: Option<crate::approvals::AccessRequestId>,
) -> OAuthError {
    let id = match pending {
        Some(id) => id.to_string(),
        None => match broker.request_access(context, principal, request).await {
            Ok(opened) => opened.id.to_string(),
            Err(error) => return from_broker_error(error),
        },
    };
    OAuthError {
        access_request: Some(id.clone()),
        ..OAuthError::new(
            StatusCode::BAD_REQUEST,
            "authorization_pending",
            format!("this needs a person's approval: access request {id} waits for an approver (stackpass approvals approve {id}); retry the exchange once it is approved"),
        )
    }
}

fn render(
    broker: &Broker,
    issued: &Issued,
    mode: Mode,
    actor: Option<String>,
) -> Result<ExchangeResponse, OAuthError> {
    let unusable = || {
        OAuthError::server_error(
            StatusCode::BAD_GATEWAY,
            format!(
                "{} returned a credential this endpoint cannot carry; issuance {} is recorded",
                issued.provider, issued.issuance_id
            ),
        )
    };
    let (access_token, issued_token_type, token_type) = match mode {
        Mode::Federation => {
            let token = issued
                .credential
                .fields
                .iter()
                .find_map(|(name, field)| match field {
                    CredentialField::Secret(secret) if *name == federation::SUBJECT_TOKEN => {
                        Some(secret.expose_secret().to_owned())
                    }
                    _ => None,
                })
                .ok_or_else(unusable)?;
            // A JWT for a cloud's token service, not a bearer token for an API.
            (token, JWT, NOT_APPLICABLE)
        }
        Mode::Credentials => {
            let provider = broker
                .providers()
                .get(&issued.provider)
                .ok_or_else(unusable)?;
            let urn = provider.credential_token_type().ok_or_else(unusable)?;
            let token = provider
                .exchanged_token(&issued.credential)
                .ok_or_else(unusable)?;
            // The one place a secret is exposed: written straight into the response.
            (
                token.access_token.expose_secret().to_owned(),
                urn,
                token.token_type,
            )
        }
    };
    let expires_in = (issued.credential.expires_at - OffsetDateTime::now_utc())
        .whole_seconds()
        .max(0) as u64;
    let fields = issued
        .credential
        .fields
        .iter()
        .filter_map(|(name, field)| match field {
            CredentialField::Public(value) => Some((*name, value.clone())),
            CredentialField::Secret(_) => None,
        })
        .collect();
    Ok(ExchangeResponse {
        access_token,
        issued_token_type,
        token_type,
        expires_in,
        scope: format!("{PROVIDER_SCOPE}{}", issued.provider),
        stackpass: IssuedFacts {
            issuance_id: issued.issuance_id.to_string(),
            requester: issued.requester.to_string(),
            actor,
            stack: issued.stack.to_string(),
            provider: issued.provider.to_string(),
            rule: issued.rule.clone(),
            role: issued.target.to_string(),
            expires_at: issued
                .credential
                .expires_at
                .format(&Rfc3339)
                .unwrap_or_default(),
            fields,
        },
    })
}

// ---------------------------------------------------------------------------
// RFC 8414 metadata

/// The token endpoint's metadata (RFC 8414).
#[utoipa::path(
    get,
    path = "/.well-known/oauth-authorization-server",
    tag = "discovery",
    operation_id = "authorization_server_metadata",
    responses((status = 200, description = "RFC 8414 metadata",
        body = wire::AuthorizationServerMetadata,
        headers(("cache-control" = String, description = "`public, max-age=…`")))),
)]
async fn metadata(State(broker): State<Arc<Broker>>) -> Response {
    let document = metadata_document(
        broker.issuer().issuer_url(),
        &Offered::of(broker.providers()),
    );
    cacheable(Json(document))
}

/// RFC 8414 section 2. There is no authorization endpoint (nothing here is
/// granted by a redirect), so `response_types_supported` is empty; clients
/// are public (`none`): the agent authenticates with its `actor_token`,
/// which is verified like every token, rather than with a client secret
/// the broker would have to keep. The `token_exchange_*` members are this
/// broker's own (RFC 8414 section 2 allows additional metadata).
pub fn metadata_document(issuer: &str, offered: &Offered) -> wire::AuthorizationServerMetadata {
    let strings = |types: &[&str]| types.iter().map(|t| (*t).to_owned()).collect();
    wire::AuthorizationServerMetadata {
        issuer: issuer.to_owned(),
        token_endpoint: format!("{issuer}/oauth2/token"),
        jwks_uri: format!("{issuer}/.well-known/jwks.json"),
        grant_types_supported: vec![GRANT_TYPE.to_owned()],
        response_types_supported: Vec::new(),
        token_endpoint_auth_methods_supported: vec!["none".to_owned()],
        scopes_supported: offered.scopes(),
        token_exchange_subject_token_types_supported: strings(&INPUT_TOKEN_TYPES),
        token_exchange_actor_token_types_supported: strings(&INPUT_TOKEN_TYPES),
        token_exchange_requested_token_types_supported: strings(&offered.requested_types()),
        token_exchange_resource_format:
            "a stack reference: pulumi:ORG/PROJECT/STACK or terraform:ORG/WORKSPACE".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offered() -> Offered {
        Offered {
            credentials: vec![
                (
                    "urn:stackpass:params:oauth:token-type:aws-credentials",
                    ProviderKind::parse("aws").unwrap(),
                ),
                (
                    "urn:stackpass:params:oauth:token-type:gcp-access-token",
                    ProviderKind::parse("gcp").unwrap(),
                ),
            ],
            providers: vec![
                ProviderKind::parse("aws").unwrap(),
                ProviderKind::parse("gcp").unwrap(),
            ],
        }
    }

    fn form(pairs: &[(&str, &str)]) -> Vec<u8> {
        url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish()
            .into_bytes()
    }

    fn valid() -> Vec<(&'static str, &'static str)> {
        vec![
            ("grant_type", GRANT_TYPE),
            ("subject_token", "person.jwt"),
            ("subject_token_type", ACCESS_TOKEN),
            ("actor_token", "agent.jwt"),
            ("actor_token_type", JWT),
            ("resource", "pulumi:acme/payments/dev"),
            (
                "requested_token_type",
                "urn:stackpass:params:oauth:token-type:aws-credentials",
            ),
        ]
    }

    fn with(changes: &[(&'static str, Option<&'static str>)]) -> Vec<u8> {
        let mut pairs = valid();
        for (name, value) in changes {
            pairs.retain(|(n, _)| n != name);
            if let Some(value) = value {
                pairs.push((name, value));
            }
        }
        form(&pairs)
    }

    fn error(body: &[u8]) -> (&'static str, StatusCode) {
        match parse(body, &offered()) {
            Ok(_) => panic!("accepted"),
            Err(e) => (e.error(), e.status()),
        }
    }

    /// The form the OpenAPI document describes is the one `parse` reads:
    /// every parameter a complete request sends is described, and each the
    /// description requires is one whose absence `parse` refuses, by name.
    #[test]
    fn the_documented_form_is_the_parsed_one() {
        use utoipa::PartialSchema;
        let schema = serde_json::to_value(ExchangeForm::schema()).unwrap();
        let described: Vec<&str> = schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        for (name, _) in valid() {
            assert!(described.contains(&name), "{name} is not described");
        }
        let required = schema["required"].as_array().unwrap();
        assert_eq!(required.len(), 3);
        for name in required {
            let name = valid()
                .into_iter()
                .map(|(n, _)| n)
                .find(|n| name == n)
                .unwrap();
            let refused = parse(&with(&[(name, None)]), &offered()).err().unwrap();
            assert_eq!(refused.error(), "invalid_request");
            assert!(
                refused.description.contains(name),
                "{}",
                refused.description
            );
        }
    }

    #[test]
    fn a_complete_request_parses() {
        let exchange = parse(&with(&[("duration_seconds", Some("900"))]), &offered()).unwrap();
        assert_eq!(exchange.subject_token.expose_secret(), "person.jwt");
        assert_eq!(exchange.actor_token.unwrap().expose_secret(), "agent.jwt");
        assert_eq!(exchange.stack.to_string(), "pulumi:acme/payments/dev");
        assert_eq!(exchange.provider.as_str(), "aws");
        assert_eq!(exchange.mode, Mode::Credentials);
        assert_eq!(exchange.duration, Some(Duration::from_secs(900)));
    }

    #[test]
    fn federation_is_a_jwt_for_the_scoped_provider() {
        let exchange = parse(
            &with(&[
                ("requested_token_type", Some(JWT)),
                ("scope", Some("provider:gcp")),
            ]),
            &offered(),
        )
        .unwrap();
        assert_eq!(exchange.mode, Mode::Federation);
        assert_eq!(exchange.provider.as_str(), "gcp");
        // The scope alone asks for that provider's credentials.
        let exchange = parse(
            &with(&[
                ("requested_token_type", None),
                ("scope", Some("provider:gcp")),
            ]),
            &offered(),
        )
        .unwrap();
        assert_eq!(exchange.mode, Mode::Credentials);
        // audience names the stack as resource does.
        let exchange = parse(
            &with(&[
                ("resource", None),
                ("audience", Some("terraform:acme/search-dev")),
            ]),
            &offered(),
        )
        .unwrap();
        assert_eq!(exchange.stack.to_string(), "terraform:acme/search-dev");
    }

    #[test]
    fn each_mistake_gets_its_rfc_error() {
        let bad_request = StatusCode::BAD_REQUEST;
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (with(&[("grant_type", None)]), "invalid_request"),
            (
                with(&[("grant_type", Some("client_credentials"))]),
                "unsupported_grant_type",
            ),
            (with(&[("subject_token", None)]), "invalid_request"),
            (with(&[("subject_token_type", None)]), "invalid_request"),
            (
                with(&[(
                    "subject_token_type",
                    Some("urn:ietf:params:oauth:token-type:saml2"),
                )]),
                "invalid_request",
            ),
            (with(&[("actor_token_type", None)]), "invalid_request"),
            (with(&[("actor_token", None)]), "invalid_request"),
            (
                with(&[("actor_token_type", Some("urn:x:y"))]),
                "invalid_request",
            ),
            (with(&[("resource", None)]), "invalid_request"),
            (
                with(&[("resource", Some("arn:aws:s3:::bucket"))]),
                "invalid_target",
            ),
            (
                with(&[("audience", Some("pulumi:acme/payments/prod"))]),
                "invalid_target",
            ),
            (with(&[("requested_token_type", None)]), "invalid_request"),
            (
                with(&[("requested_token_type", Some(ACCESS_TOKEN))]),
                "invalid_request",
            ),
            (
                with(&[("requested_token_type", Some(JWT))]),
                "invalid_request",
            ),
            (with(&[("scope", Some("admin"))]), "invalid_scope"),
            (with(&[("scope", Some("provider:azure"))]), "invalid_scope"),
            (with(&[("scope", Some("provider:gcp"))]), "invalid_scope"),
            (
                with(&[("scope", Some("provider:aws provider:gcp"))]),
                "invalid_scope",
            ),
            (
                with(&[("duration_seconds", Some("15m"))]),
                "invalid_request",
            ),
            (with(&[("reason", Some("two\nlines"))]), "invalid_request"),
        ];
        for (body, expected) in cases {
            let (error, status) = error(&body);
            assert_eq!(error, expected, "{}", String::from_utf8_lossy(&body));
            assert_eq!(status, bad_request);
        }
        let mut twice = valid();
        twice.push(("subject_token", "other.jwt"));
        assert_eq!(error(&form(&twice)).0, "invalid_request");
        // The same resource twice is still one stack.
        let mut same = valid();
        same.push(("resource", "pulumi:acme/payments/dev"));
        assert!(parse(&form(&same), &offered()).is_ok());
        let secret = with(&[("client_secret", Some("s"))]);
        assert_eq!(error(&secret), ("invalid_client", StatusCode::UNAUTHORIZED));
    }

    #[test]
    fn descriptions_keep_to_the_characters_rfc_6749_allows() {
        assert_eq!(description_text("say \"hi\" \\ → ok"), "say 'hi' / ? ok");
        assert_eq!(
            description_text(&"x".repeat(1000)).len(),
            MAX_DESCRIPTION_CHARS
        );
        let response = OAuthError::invalid_request("bad").into_response();
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
        let response = OAuthError::invalid_client("no").into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(response.headers().contains_key(header::WWW_AUTHENTICATE));
    }

    #[test]
    fn broker_refusals_map_to_token_endpoint_errors() {
        let stack = StackRef::parse("pulumi:acme/payments/dev").unwrap();
        assert_eq!(
            from_broker_error(BrokerError::UnknownStack(stack)).error(),
            "invalid_target"
        );
        let denial = crate::policy::Denial {
            summary: "no rule grants aws".into(),
            denied_by: None,
            rules: Vec::new(),
        };
        assert_eq!(
            from_broker_error(BrokerError::Denied(denial)).error(),
            "invalid_target"
        );
        let expired = from_broker_error(BrokerError::Identity(IdentityError::Expired));
        assert_eq!(expired.error(), "invalid_request");
        let down = token_refused(Which::Actor, &IdentityError::KeysUnavailable("down".into()));
        assert_eq!(
            (down.error(), down.status()),
            ("temporarily_unavailable", StatusCode::SERVICE_UNAVAILABLE)
        );
        let cloud = from_broker_error(BrokerError::Cloud(ProviderError::Unavailable {
            provider: ProviderKind::parse("aws").unwrap(),
            message: "timeout".into(),
        }));
        assert_eq!(cloud.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn the_metadata_names_the_endpoint_and_the_types() {
        let document =
            serde_json::to_value(metadata_document("https://stackpass.example", &offered()))
                .unwrap();
        assert_eq!(
            document["token_endpoint"],
            "https://stackpass.example/oauth2/token"
        );
        assert_eq!(
            document["grant_types_supported"],
            serde_json::json!([GRANT_TYPE])
        );
        assert_eq!(
            document["token_endpoint_auth_methods_supported"],
            serde_json::json!(["none"])
        );
        assert_eq!(
            document["scopes_supported"],
            serde_json::json!(["provider:aws", "provider:gcp"])
        );
        assert_eq!(
            document["token_exchange_requested_token_types_supported"],
            serde_json::json!([
                "urn:stackpass:params:oauth:token-type:aws-credentials",
                "urn:stackpass:params:oauth:token-type:gcp-access-token",
                JWT
            ])
        );
    }
}
