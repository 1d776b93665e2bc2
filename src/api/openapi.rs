//! The OpenAPI 3.1 document of the HTTP API, served at `GET /openapi.json`
//! and committed as `docs/openapi.json` (a test keeps the two equal;
//! `stackpass openapi > docs/openapi.json` regenerates it).
//!
//! It is generated (utoipa): schemas from the derives on the `wire` types,
//! `Problem` and the token endpoint's bodies; operations from each handler's
//! `#[utoipa::path]`. The problems each operation can answer are listed once,
//! here ([`OPERATION_PROBLEMS`]), and become its error responses, one per
//! status, whose schema names exactly the problem `type`s of that status, so a
//! client (or schemathesis) validating an answer knows which problems to
//! expect. Every answer carries `x-request-id`.

use std::sync::LazyLock;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{HttpMethod, Operation};
use utoipa::openapi::schema::{AllOfBuilder, ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Object, OpenApi as Document, Ref, RefOr, Schema};
use utoipa::{Modify, OpenApi};

use super::problem::{self, type_uri, Problem};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "stackpass",
        description = "Credential broker: a verified identity token and a stack in, short-lived cloud credentials out, audited. Errors are RFC 9457 problem details (`application/problem+json`) with a stable `type` (`urn:stackpass:problem:{slug}`), except on `/oauth2/token`, which answers RFC 6749 error JSON. Every answer carries the broker's request id in `x-request-id`; an unknown path is a 404 `not-found` problem, a known path with another method a 405 `method-not-allowed` problem.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        super::credentials::issue,
        super::decisions::explain,
        super::approvals::create,
        super::approvals::list,
        super::approvals::approve,
        super::approvals::deny,
        super::audit::read,
        super::revocations::list,
        super::revocations::revoke_delegation,
        super::revocations::restore_delegation,
        super::revocations::revoke_agent,
        super::revocations::restore_agent,
        super::token_exchange::exchange,
        super::token_exchange::metadata,
        super::healthz,
        super::readyz,
        super::metrics_page,
        super::discovery,
        super::jwks,
        super::mcp::admit,
        super::mcp::metadata,
        super::mcp::metadata_at_root,
        serve,
    ),
    components(schemas(Problem)),
    modifiers(&BearerJwt, &Problems, &Headers),
    tags(
        (name = "credentials", description = "Issuing credentials, and what the policy would decide"),
        (name = "approvals", description = "Access requests and their approval"),
        (name = "audit", description = "Reading the audit log"),
        (name = "revocations", description = "Revoking agents' delegations"),
        (name = "agents", description = "OAuth 2.0 Token Exchange (RFC 8693) for agents"),
        (name = "mcp", description = "The MCP server (streamable HTTP, stateless, JSON answers), when `[mcp]` is enabled; otherwise these paths are 404 `not-found`"),
        (name = "discovery", description = "Public documents: OIDC discovery, keys, metadata, this document"),
        (name = "health", description = "Liveness and readiness"),
    ),
)]
struct ApiDoc;

/// The security scheme `/v1` requires.
pub const BEARER: &str = "bearer";
/// The security scheme `/mcp` requires: a token minted for it alone.
pub const MCP_BEARER: &str = "mcp_bearer";

/// Problems every `/v1` operation can answer before its handler runs:
/// admission (the caller, then the body), the rate and concurrency limits,
/// the request timeout and a caught panic.
const ADMISSION: &[&str] = &[
    "unauthenticated",
    "token-for-another-resource",
    "identity-unavailable",
    "body-timeout",
    "payload-too-large",
    "invalid-request",
    "rate-limited",
    "overloaded",
    "timeout",
    "internal",
];

/// A JSON body (`JsonBody`).
const JSON_BODY: &[&str] = &["unsupported-media-type", "invalid-request"];

/// Resolving a credential request: revocation check, stack, owner, policy,
/// all audited.
const RESOLVE: &[&str] = &[
    "delegation-revoked",
    "revocations-unavailable",
    "provider-not-enabled",
    "invalid-request",
    "unknown-stack",
    "catalog-unavailable",
    "stack-source-unavailable",
    "audit-unavailable",
];

/// Changing a revocation.
const REVOCATION: &[&str] = &[
    "revocation-forbidden",
    "revocation-not-found",
    "revocation-contended",
    "revocations-unavailable",
    "audit-unavailable",
];

/// Deciding an access request.
const DECIDING: &[&str] = &[
    "access-request-not-found",
    "access-request-closed",
    "access-request-contended",
    "approval-forbidden",
    "approvals-unavailable",
    "audit-unavailable",
];

/// Which problems each operation answers besides [`ADMISSION`] (for `/v1`).
pub const OPERATION_PROBLEMS: &[(&str, HttpMethod, &[&[&str]])] = &[
    (
        "/v1/credentials",
        HttpMethod::Post,
        &[
            ADMISSION,
            JSON_BODY,
            RESOLVE,
            &[
                "denied",
                "quota-exceeded",
                "approval-required",
                "break-glass-not-allowed",
                "break-glass-forbidden",
                "approvals-unavailable",
                "cloud-refused",
                "cloud-invalid-response",
                "cloud-unavailable",
            ],
        ],
    ),
    (
        "/v1/decisions",
        HttpMethod::Post,
        &[ADMISSION, JSON_BODY, RESOLVE],
    ),
    (
        "/v1/access-requests",
        HttpMethod::Post,
        &[
            ADMISSION,
            JSON_BODY,
            RESOLVE,
            &[
                "denied",
                "approval-not-needed",
                "access-request-contended",
                "approvals-unavailable",
            ],
        ],
    ),
    (
        "/v1/access-requests",
        HttpMethod::Get,
        &[
            ADMISSION,
            &[
                "delegation-revoked",
                "revocations-unavailable",
                "approvals-unavailable",
                "audit-unavailable",
            ],
        ],
    ),
    (
        "/v1/access-requests/{id}/approve",
        HttpMethod::Post,
        &[ADMISSION, DECIDING],
    ),
    (
        "/v1/access-requests/{id}/deny",
        HttpMethod::Post,
        &[ADMISSION, DECIDING],
    ),
    (
        "/v1/audit",
        HttpMethod::Get,
        &[
            ADMISSION,
            &[
                "delegation-revoked",
                "revocations-unavailable",
                "audit-forbidden",
                "audit-unavailable",
            ],
        ],
    ),
    (
        "/v1/delegations",
        HttpMethod::Get,
        &[ADMISSION, &["revocations-unavailable"]],
    ),
    (
        "/v1/delegations/revoke",
        HttpMethod::Post,
        &[ADMISSION, JSON_BODY, REVOCATION],
    ),
    (
        "/v1/delegations/restore",
        HttpMethod::Post,
        &[ADMISSION, JSON_BODY, REVOCATION],
    ),
    (
        "/v1/agents/revoke",
        HttpMethod::Post,
        &[ADMISSION, JSON_BODY, REVOCATION],
    ),
    (
        "/v1/agents/restore",
        HttpMethod::Post,
        &[ADMISSION, JSON_BODY, REVOCATION],
    ),
    // Outside admission: the token endpoint answers RFC 6749 JSON itself,
    // and only its outer layers answer problems.
    (
        "/oauth2/token",
        HttpMethod::Post,
        &[&["overloaded", "timeout", "internal"]],
    ),
    (
        "/readyz",
        HttpMethod::Get,
        &[&["not-ready", "draining", "timeout", "internal"]],
    ),
    ("/healthz", HttpMethod::Get, &[&["timeout", "internal"]]),
    // 404 when metrics are off or have a listener of their own.
    (
        "/metrics",
        HttpMethod::Get,
        &[&["not-found", "timeout", "internal"]],
    ),
    (
        "/.well-known/openid-configuration",
        HttpMethod::Get,
        &[&["timeout", "internal"]],
    ),
    (
        "/.well-known/jwks.json",
        HttpMethod::Get,
        &[&["timeout", "internal"]],
    ),
    (
        "/.well-known/oauth-authorization-server",
        HttpMethod::Get,
        &[&["timeout", "internal"]],
    ),
    (
        "/openapi.json",
        HttpMethod::Get,
        &[&["timeout", "internal"]],
    ),
    // `/mcp`'s gate: the caller, the audience, the body, the limits; 404
    // when `[mcp]` is not enabled.
    (
        "/mcp",
        HttpMethod::Post,
        &[&[
            "unauthenticated",
            "identity-unavailable",
            "body-timeout",
            "payload-too-large",
            "invalid-request",
            "rate-limited",
            "overloaded",
            "timeout",
            "internal",
            "not-found",
        ]],
    ),
    (
        "/.well-known/oauth-protected-resource/mcp",
        HttpMethod::Get,
        &[&["not-found", "timeout", "internal"]],
    ),
    (
        "/.well-known/oauth-protected-resource",
        HttpMethod::Get,
        &[&["not-found", "timeout", "internal"]],
    ),
];

/// The document.
pub fn document() -> Document {
    ApiDoc::openapi()
}

/// The document as served and committed: pretty JSON, one trailing newline.
pub fn document_json() -> String {
    let mut text =
        serde_json::to_string_pretty(&document()).expect("the OpenAPI document serializes to JSON");
    text.push('\n');
    text
}

static DOCUMENT: LazyLock<String> = LazyLock::new(document_json);

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "discovery",
    responses((status = 200, description = "This OpenAPI 3.1 document", body = Object)),
)]
pub(super) async fn serve() -> Response {
    let mut response = DOCUMENT.as_str().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

struct BearerJwt;

impl Modify for BearerJwt {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "An identity token from an issuer the broker trusts (a Backstage user token, an OIDC token of a configured machine issuer or agent)",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            MCP_BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "An identity token whose every audience is this MCP server (its resource URL or `mcp.audience`); tokens for `/v1` or any other service are refused here, and these are refused on `/v1`",
                    ))
                    .build(),
            ),
        );
    }
}

/// Lists every problem type on the `Problem` schema and adds each
/// operation's problem responses.
struct Problems;

impl Modify for Problems {
    fn modify(&self, openapi: &mut Document) {
        if let Some(RefOr::T(Schema::Object(problem))) = openapi
            .components
            .as_mut()
            .and_then(|c| c.schemas.get_mut("Problem"))
        {
            problem.properties.insert(
                "type".to_owned(),
                type_enum(problem::TYPES.iter().map(|t| t.0)),
            );
        }
        for (path, method, groups) in OPERATION_PROBLEMS {
            let Some(operation) = operation_mut(openapi, path, method) else {
                panic!("OPERATION_PROBLEMS names {path}, whose method has no #[utoipa::path]");
            };
            let mut slugs: Vec<&str> = groups.iter().flat_map(|g| g.iter().copied()).collect();
            slugs.sort_unstable();
            slugs.dedup();
            let mut by_status: std::collections::BTreeMap<u16, Vec<&str>> = Default::default();
            for slug in slugs {
                by_status
                    .entry(status_of(slug).as_u16())
                    .or_default()
                    .push(slug);
            }
            for (status, slugs) in by_status {
                add_problem_response(operation, status, &slugs);
            }
        }
    }
}

fn status_of(slug: &str) -> StatusCode {
    problem::TYPES
        .iter()
        .find(|(s, _)| *s == slug)
        .map(|(_, status)| *status)
        .unwrap_or_else(|| panic!("problem type {slug} is not in problem::TYPES"))
}

fn type_enum<'a>(slugs: impl Iterator<Item = &'a str>) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(slugs.map(type_uri)))
        .build()
        .into()
}

fn operation_mut<'a>(
    openapi: &'a mut Document,
    path: &str,
    method: &HttpMethod,
) -> Option<&'a mut Operation> {
    let item = openapi.paths.paths.get_mut(path)?;
    match method {
        HttpMethod::Get => item.get.as_mut(),
        HttpMethod::Post => item.post.as_mut(),
        _ => None,
    }
}

/// The problem+json answer of `status` with these types, added beside what
/// the handler documented for that status (the token endpoint's OAuth JSON).
fn add_problem_response(operation: &mut Operation, status: u16, slugs: &[&str]) {
    let schema = AllOfBuilder::new()
        .item(Ref::from_schema_name("Problem"))
        .item(
            ObjectBuilder::new()
                .property("type", type_enum(slugs.iter().copied()))
                .build(),
        )
        .build();
    let content = ContentBuilder::new()
        .schema(Some(Schema::AllOf(schema)))
        .build();
    let listed = slugs
        .iter()
        .map(|s| format!("`{s}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let response = operation
        .responses
        .responses
        .entry(status.to_string())
        .or_insert_with(|| RefOr::T(Default::default()));
    let RefOr::T(response) = response else {
        return;
    };
    let description = format!("Problem ({listed})");
    response.description = if response.description.is_empty() {
        description
    } else {
        format!("{}; or a problem ({listed})", response.description)
    };
    response
        .content
        .insert(problem::CONTENT_TYPE.to_owned(), content.into());
}

/// The headers every answer carries (`x-request-id`), and those that a
/// status always carries; utoipa has no `required` on a header, so it is set
/// here (schemathesis checks required headers are sent).
struct Headers;

impl Modify for Headers {
    fn modify(&self, openapi: &mut Document) {
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                item.get.as_mut(),
                item.post.as_mut(),
                item.put.as_mut(),
                item.delete.as_mut(),
                item.patch.as_mut(),
            ];
            for operation in operations.into_iter().flatten() {
                for (status, response) in operation.responses.responses.iter_mut() {
                    let RefOr::T(response) = response else {
                        continue;
                    };
                    let problem = response.content.contains_key(problem::CONTENT_TYPE);
                    let mut add = |name: &str, schema: Object, description: &str| {
                        response
                            .headers
                            .entry(name.to_owned())
                            .or_insert_with(|| header(schema, description));
                    };
                    add(
                        "x-request-id",
                        Object::with_type(Type::String),
                        "The broker's request id, as in the audit log and in problem bodies",
                    );
                    if problem {
                        add(
                            "cache-control",
                            Object::with_type(Type::String),
                            "`no-store`",
                        );
                    }
                    if status == "401" {
                        add(
                            "www-authenticate",
                            Object::with_type(Type::String),
                            "The challenge: `Bearer` (on `/oauth2/token`, the scheme the client tried)",
                        );
                    }
                    if status == "429" {
                        add(
                            "retry-after",
                            ObjectBuilder::new()
                                .schema_type(Type::Integer)
                                .minimum(Some(1))
                                .build(),
                            "Seconds until a retry can succeed",
                        );
                    }
                    for header in response.headers.values_mut() {
                        if let RefOr::T(header) = header {
                            // Every header this document names is always sent.
                            header
                                .extensions
                                .get_or_insert_with(Default::default)
                                .insert("required".to_owned(), true.into());
                        }
                    }
                }
            }
        }
    }
}

fn header(schema: Object, description: &str) -> RefOr<utoipa::openapi::header::Header> {
    RefOr::T(
        HeaderBuilder::new()
            .schema(Some(schema))
            .description(Some(description))
            .build(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed document is what this code generates.
    #[test]
    fn the_committed_document_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == document_json(),
            "{} is not what the code generates; regenerate it with\n    cargo run -q -- openapi > docs/openapi.json",
            path.display()
        );
    }

    #[test]
    fn every_problem_type_is_listed_with_one_status() {
        let mut slugs: Vec<_> = problem::TYPES.iter().map(|t| t.0).collect();
        slugs.sort_unstable();
        let before = slugs.len();
        slugs.dedup();
        assert_eq!(before, slugs.len(), "a problem type is listed twice");
        let document = serde_json::to_value(document()).unwrap();
        let listed = &document["components"]["schemas"]["Problem"]["properties"]["type"]["enum"];
        assert_eq!(listed.as_array().unwrap().len(), problem::TYPES.len());
    }

    #[test]
    fn the_document_is_openapi_3_1_with_bearer_jwt() {
        let document = serde_json::to_value(document()).unwrap();
        assert_eq!(document["openapi"], "3.1.0");
        assert_eq!(
            document["components"]["securitySchemes"][BEARER]["bearerFormat"],
            "JWT"
        );
        let issue = &document["paths"]["/v1/credentials"]["post"];
        assert_eq!(issue["security"][0][BEARER], serde_json::json!([]));
        let unauthenticated = &issue["responses"]["401"];
        assert_eq!(
            unauthenticated["headers"]["www-authenticate"]["required"],
            true
        );
        let forbidden = &issue["responses"]["403"]["content"]["application/problem+json"]["schema"]
            ["allOf"][1]["properties"]["type"]["enum"];
        assert!(forbidden
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("urn:stackpass:problem:denied")));
        let limited = &issue["responses"]["429"];
        assert_eq!(limited["headers"]["retry-after"]["required"], true);
    }
}
