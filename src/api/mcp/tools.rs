//! The MCP tools. Each one is a `/v1` endpoint in MCP clothing and calls the
//! same broker function (`explain`, `request_access`, `issue`), so nothing
//! an agent does here escapes the policy, the agent bounds, the quotas,
//! revocation or the audit. Failures are tool results with `isError` and the
//! problem the `/v1` endpoint would have answered, so an agent reads why.
//!
//! Tool arguments and results are never logged: `get_credentials` results
//! carry secrets (rmcp itself logs whole results at debug, which the
//! broker's log filter keeps out, see `main.rs`).

use std::borrow::Cow;
use std::sync::Arc;

use rmcp::model::{
    Annotations, CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock,
    Implementation, JsonObject, ListToolsResult, MetaObject, PaginatedRequestParams, Role,
    ServerCapabilities, ServerConfig, TextContent, Tool, ToolAnnotations,
};
use rmcp::service::RequestContext as McpRequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde::Deserialize;
use serde_json::{json, Value};

use super::super::credentials::{credential_request, issued_body};
use super::super::Problem;
use super::McpCaller;
use crate::broker::{Broker, BrokerError, CredentialRequest};
use crate::wire;

/// The `_meta` key that marks a result or content block as secret. MCP has
/// no standard secret flag; clients that know this key keep the value out of
/// transcripts and logs.
pub const SECRET_META_KEY: &str = "stackpass/secret";

/// `list_stacks` explains each stack for each provider: a bounded fan-out.
const MAX_LISTED_STACKS: usize = 10;

#[derive(Clone)]
pub(super) struct StackpassTools {
    broker: Arc<Broker>,
}

impl StackpassTools {
    pub(super) fn new(broker: Arc<Broker>) -> Self {
        StackpassTools { broker }
    }
}

/// `explain_decision` and `get_credentials`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StackArgs {
    stack: String,
    provider: String,
    duration_seconds: Option<u64>,
    mode: Option<String>,
    reason: Option<String>,
}

impl StackArgs {
    /// The `/v1` request these arguments make (never break-glass).
    fn request(self) -> Result<CredentialRequest, Problem> {
        credential_request(wire::CredentialRequest {
            stack: self.stack,
            provider: self.provider,
            duration_seconds: self.duration_seconds,
            reason: self.reason,
            break_glass: None,
            mode: self.mode,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccessArgs {
    stack: String,
    provider: String,
    duration_seconds: Option<u64>,
    reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListArgs {
    stacks: Vec<String>,
    provider: Option<String>,
}

fn schema(value: Value) -> Arc<JsonObject> {
    match value {
        Value::Object(object) => Arc::new(object),
        _ => Arc::new(JsonObject::new()),
    }
}

fn stack_properties() -> Value {
    json!({
        "stack": {
            "type": "string",
            "description": "The stack reference: pulumi:ORG/PROJECT/STACK or terraform:ORG/WORKSPACE"
        },
        "provider": {
            "type": "string",
            "description": "The cloud: aws, gcp or azure (those this broker has configured)"
        },
        "duration_seconds": {
            "type": "integer",
            "minimum": 1,
            "description": "How long the credential should live; capped by the rule and, for agents, by the agent bounds"
        }
    })
}

fn tools() -> Vec<Tool> {
    let mut explain = stack_properties();
    explain["mode"] = json!({
        "type": "string", "enum": ["credentials", "federation"],
        "description": "credentials (default): the cloud's credential; federation: the broker's subject token"
    });
    let mut access = stack_properties();
    access["reason"] = json!({
        "type": "string", "maxLength": 500,
        "description": "Why access is needed, shown to the approvers (one line)"
    });
    let mut issue = explain.clone();
    issue["reason"] = json!({
        "type": "string", "maxLength": 500,
        "description": "Why the credential is needed, recorded in the audit log (one line)"
    });
    let read_only = |title: &str| {
        ToolAnnotations::from_raw(
            Some(title.into()),
            Some(true),
            Some(false),
            Some(true),
            Some(false),
        )
    };
    let mut list = Tool::new(
        "list_stacks",
        "Which of the given stacks the caller may get credentials for, per provider: allowed, needs approval, denied (with the reasons the broker may show) or unknown. The broker's stack sources (Pulumi Cloud, HCP Terraform) cannot be enumerated, so name the stacks to check (at most 10), e.g. those in the repository you work on. Each check is an audited dry run; nothing is issued.",
        schema(json!({
            "type": "object",
            "properties": {
                "stacks": {
                    "type": "array", "minItems": 1, "maxItems": MAX_LISTED_STACKS,
                    "items": { "type": "string" },
                    "description": "Stack references to check"
                },
                "provider": { "type": "string", "description": "Only this provider (default: every provider the broker has)" }
            },
            "required": ["stacks"],
            "additionalProperties": false
        })),
    );
    list.annotations = Some(read_only("List stacks I may act on"));
    let mut explain_tool = Tool::new(
        "explain_decision",
        "What the broker's policy would decide for a credential request, and why: the rule, role, duration and session policy it would grant, whether approval is needed, or the reasons for a denial. An audited dry run; nothing is issued.",
        schema(json!({
            "type": "object",
            "properties": explain,
            "required": ["stack", "provider"],
            "additionalProperties": false
        })),
    );
    explain_tool.annotations = Some(read_only("Explain a decision"));
    let mut access_tool = Tool::new(
        "request_access",
        "Ask for access that a rule grants only with approval. Creates an access request that people (never an agent) approve; once approved, get_credentials succeeds within the approval's window.",
        schema(json!({
            "type": "object",
            "properties": access,
            "required": ["stack", "provider", "reason"],
            "additionalProperties": false
        })),
    );
    access_tool.annotations = Some(ToolAnnotations::from_raw(
        Some("Request access (approval)".into()),
        Some(false),
        Some(false),
        Some(false),
        Some(false),
    ));
    let mut issue_tool = Tool::new(
        "get_credentials",
        "Issue short-lived cloud credentials for a stack, if the policy allows it (for an agent: within its bounds). The result holds SECRETS: its values are marked with _meta \"stackpass/secret\": true and the content annotation audience [\"user\"]; pass them to the process that needs them and never repeat, log or store them. Every issuance is audited under the caller's name (and the agent's).",
        schema(json!({
            "type": "object",
            "properties": issue,
            "required": ["stack", "provider"],
            "additionalProperties": false
        })),
    );
    issue_tool.annotations = Some(ToolAnnotations::from_raw(
        Some("Get cloud credentials".into()),
        Some(false),
        Some(false),
        Some(false),
        Some(true),
    ));
    vec![list, explain_tool, access_tool, issue_tool]
}

impl ServerHandler for StackpassTools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(
                Implementation::new("stackpass", env!("CARGO_PKG_VERSION"))
                    .with_title("stackpass credential broker"),
            )
            .with_instructions(
                "stackpass issues short-lived cloud credentials for Pulumi and Terraform stacks under policy. Use explain_decision before get_credentials; when approval is needed, request_access and wait for a person to approve. Credential values are secret: never repeat them to the user or write them anywhere but the process that needs them.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: McpRequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(tools()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        tools().into_iter().find(|tool| tool.name == name)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: McpRequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let caller = context
            .extensions
            .get::<axum::http::request::Parts>()
            .and_then(|parts| parts.extensions.get::<McpCaller>())
            .cloned()
            .ok_or_else(|| ErrorData::internal_error("the request was not authenticated", None))?;
        let arguments = Value::Object(request.arguments.unwrap_or_default());
        tracing::debug!(request_id = %caller.context.request_id, tool = %request.name, "MCP tool call");
        let result = match request.name.as_ref() {
            "list_stacks" => self.list_stacks(&caller, arguments).await,
            "explain_decision" => self.explain(&caller, arguments).await,
            "request_access" => self.request_access(&caller, arguments).await,
            "get_credentials" => self.get_credentials(&caller, arguments).await,
            _ => {
                return Err(ErrorData::invalid_params(
                    Cow::Owned(format!("no tool named {:?}", request.name)),
                    None,
                ))
            }
        };
        Ok(result
            .unwrap_or_else(|problem| failure(problem.with_request_id(&caller.context.request_id)))
            .into())
    }
}

impl StackpassTools {
    async fn list_stacks(
        &self,
        caller: &McpCaller,
        arguments: Value,
    ) -> Result<CallToolResult, Problem> {
        let args: ListArgs = parse(arguments)?;
        if args.stacks.is_empty() || args.stacks.len() > MAX_LISTED_STACKS {
            return Err(Problem::invalid_request(format!(
                "stacks names 1 to {MAX_LISTED_STACKS} stack references; the broker cannot enumerate its stack sources, so name the stacks to check"
            )));
        }
        let providers: Vec<String> = match &args.provider {
            Some(provider) => vec![provider.clone()],
            None => self
                .broker
                .providers()
                .kinds()
                .map(|k| k.to_string())
                .collect(),
        };
        let mut stacks = Vec::new();
        for stack in &args.stacks {
            let mut answers = Vec::new();
            for provider in &providers {
                let body = wire::CredentialRequest {
                    stack: stack.clone(),
                    provider: provider.clone(),
                    ..Default::default()
                };
                let answer = match credential_request(body) {
                    Err(problem) => json!({ "provider": provider, "error": problem }),
                    Ok(request) => match self
                        .broker
                        .explain(&caller.context, caller.principal.clone(), &request)
                        .await
                    {
                        Ok(decision) => {
                            let decision = wire::Decision::from(&decision);
                            json!({ "provider": provider, "outcome": outcome(&decision), "decision": decision })
                        }
                        Err(BrokerError::UnknownStack(_)) => {
                            json!({ "provider": provider, "outcome": "unknown", "detail": format!("stack {stack} is not known to this broker") })
                        }
                        Err(error) => {
                            let problem = Problem::from(error);
                            // The caller's token or the broker itself failing is not
                            // an answer about this stack: stop and say so.
                            if problem.status.is_server_error() || problem.status.as_u16() == 401 {
                                return Err(problem);
                            }
                            json!({ "provider": provider, "outcome": "error", "error": problem })
                        }
                    },
                };
                answers.push(answer);
            }
            stacks.push(json!({ "stack": stack, "providers": answers }));
        }
        let summary: Vec<String> = stacks
            .iter()
            .flat_map(|s| {
                s["providers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(move |p| {
                        format!(
                            "{} {}: {}",
                            s["stack"].as_str().unwrap_or_default(),
                            p["provider"].as_str().unwrap_or_default(),
                            p["outcome"].as_str().unwrap_or("error")
                        )
                    })
            })
            .collect();
        let body = json!({ "stacks": stacks });
        Ok(structured(summary.join("\n"), body))
    }

    async fn explain(
        &self,
        caller: &McpCaller,
        arguments: Value,
    ) -> Result<CallToolResult, Problem> {
        let request = parse::<StackArgs>(arguments)?.request()?;
        let decision = self
            .broker
            .explain(&caller.context, caller.principal.clone(), &request)
            .await?;
        let decision = wire::Decision::from(&decision);
        let text = match &decision {
            wire::Decision::Allow(grant) => format!(
                "allowed by rule {}: {} for up to {}s",
                grant.rule,
                grant.role,
                grant.max_duration.as_secs()
            ),
            wire::Decision::NeedsApproval { grant, approval } => format!(
                "needs approval ({} of {}) under rule {}; use request_access",
                approval.count,
                approval.approvers.join(", "),
                grant.rule
            ),
            wire::Decision::Deny(denial) => format!("denied: {}", denial.summary),
        };
        Ok(structured(text, json!(decision)))
    }

    async fn request_access(
        &self,
        caller: &McpCaller,
        arguments: Value,
    ) -> Result<CallToolResult, Problem> {
        let args: AccessArgs = parse(arguments)?;
        let request = credential_request(wire::CredentialRequest {
            stack: args.stack,
            provider: args.provider,
            duration_seconds: args.duration_seconds,
            reason: Some(args.reason),
            break_glass: None,
            mode: None,
        })?;
        let created = self
            .broker
            .request_access(&caller.context, caller.principal.clone(), &request)
            .await?;
        let body = wire::AccessRequestEnvelope {
            access_request: (&created).into(),
        };
        let text = format!(
            "access request {} created; a person must approve it before get_credentials succeeds",
            body.access_request.id
        );
        Ok(structured(text, json!(body)))
    }

    async fn get_credentials(
        &self,
        caller: &McpCaller,
        arguments: Value,
    ) -> Result<CallToolResult, Problem> {
        let request = parse::<StackArgs>(arguments)?.request()?;
        let issued = self
            .broker
            .issue(&caller.context, caller.principal.clone(), &request)
            .await?;
        let body = issued_body(&issued);
        let summary = format!(
            "issued {} credentials for {} (role {}, rule {}), expiring at {} (issuance {}). The values are SECRET: they are in structuredContent and the next content block, marked \"{SECRET_META_KEY}\"; pass them only to the process that needs them.",
            body.provider, body.stack, body.role, body.rule, body.expires_at, body.issuance_id
        );
        let secret_meta = || {
            let mut meta = MetaObject::new();
            meta.0.insert(SECRET_META_KEY.into(), Value::Bool(true));
            meta
        };
        let value = json!(body);
        let mut result = CallToolResult::success(vec![
            ContentBlock::text(summary),
            ContentBlock::Text(
                TextContent::new(value.to_string())
                    .with_meta(secret_meta())
                    .with_annotations(Annotations::default().with_audience(vec![Role::User])),
            ),
        ]);
        result.structured_content = Some(value);
        result.meta = Some(secret_meta());
        Ok(result)
    }
}

fn parse<T: for<'de> Deserialize<'de>>(arguments: Value) -> Result<T, Problem> {
    serde_json::from_value(arguments)
        .map_err(|e| Problem::invalid_request(format!("invalid arguments: {e}")))
}

fn outcome(decision: &wire::Decision) -> &'static str {
    match decision {
        wire::Decision::Allow(_) => "allowed",
        wire::Decision::NeedsApproval { .. } => "needs_approval",
        wire::Decision::Deny(_) => "denied",
    }
}

/// A result as text for the model and as `structuredContent` for programs.
fn structured(text: String, body: Value) -> CallToolResult {
    let mut result = CallToolResult::success(vec![
        ContentBlock::text(text),
        ContentBlock::text(body.to_string()),
    ]);
    result.structured_content = Some(body);
    result
}

/// A tool error: the problem `/v1` would have answered, as text and as
/// `structuredContent`.
fn failure(problem: Problem) -> CallToolResult {
    let text = format!("{}: {} ({})", problem.title, problem.detail, problem.hint);
    let body = json!(problem);
    let mut result = CallToolResult::error(vec![ContentBlock::text(text)]);
    result.structured_content = Some(body);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tool_schema_is_a_closed_object() {
        let tools = tools();
        let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
        assert_eq!(
            names,
            [
                "list_stacks",
                "explain_decision",
                "request_access",
                "get_credentials"
            ]
        );
        for tool in &tools {
            assert_eq!(tool.input_schema["type"], "object", "{}", tool.name);
            assert_eq!(
                tool.input_schema["additionalProperties"], false,
                "{}",
                tool.name
            );
            for required in tool.input_schema["required"].as_array().unwrap() {
                let name = required.as_str().unwrap();
                assert!(
                    tool.input_schema["properties"].get(name).is_some(),
                    "{}: {name}",
                    tool.name
                );
            }
        }
    }

    #[test]
    fn arguments_outside_the_schema_are_refused() {
        let refused = parse::<StackArgs>(
            json!({ "stack": "pulumi:a/b/c", "provider": "aws", "break_glass": { "reason": "x" } }),
        );
        assert!(refused.is_err());
        let refused = parse::<AccessArgs>(json!({ "stack": "pulumi:a/b/c", "provider": "aws" }));
        assert!(refused.is_err(), "reason is required");
    }
}
