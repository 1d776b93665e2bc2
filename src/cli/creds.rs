//! `stackpass creds`: asks a broker for credentials and prints them as JSON, shell
//! `export` lines, or the exact AWS `credential_process` format.

use std::path::Path;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::CliError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Json,
    Env,
    CredentialProcess,
}

pub struct CredsArgs {
    pub server: String,
    pub token: SecretString,
    pub stack: String,
    pub provider: String,
    pub duration: Option<Duration>,
    pub format: OutputFormat,
    /// Why access is needed (shown to approvers).
    pub reason: Option<String>,
    /// Break-glass reason: issue now under a break-glass rule.
    pub break_glass: Option<String>,
}

#[derive(Deserialize)]
struct Issued {
    expires_at: String,
    credentials: AwsCredentials,
}

#[derive(Deserialize)]
struct AwsCredentials {
    access_key_id: String,
    secret_access_key: SecretString,
    session_token: SecretString,
}

#[derive(Deserialize)]
struct ProblemBody {
    title: Option<String>,
    detail: Option<String>,
    hint: Option<String>,
    request_id: Option<String>,
    rules: Option<Vec<RuleMiss>>,
}

#[derive(Deserialize)]
struct RuleMiss {
    rule: String,
    reasons: Vec<String>,
}

/// Reads the bearer token from a file (trimmed), for `--token-file`.
pub fn read_token_file(path: &Path) -> Result<SecretString, CliError> {
    let token = std::fs::read_to_string(path).map_err(|e| {
        CliError::new(
            format!("could not read token file {}: {e}", path.display()),
            "pass a readable --token-file or set STACKPASS_TOKEN",
        )
    })?;
    Ok(SecretString::from(token.trim().to_owned()))
}

/// Calls the broker (`body` means POST, none means GET) and returns the answer's
/// text, or the broker's problem as a CLI error.
async fn call(
    server: &str,
    token: &SecretString,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<String, CliError> {
    let base = server.trim_end_matches('/');
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| CliError::plain(format!("could not build an HTTP client: {e}")))?;
    let url = format!("{base}{path}");
    let request = match body {
        Some(body) => client.post(url).json(body),
        None => client.get(url),
    };
    let response = request
        .bearer_auth(token.expose_secret())
        .send()
        .await
        .map_err(|e| {
            CliError::new(
                format!(
                    "could not reach the broker at {base}: {}",
                    if e.is_timeout() {
                        "timed out"
                    } else {
                        "connection failed"
                    }
                ),
                "check --server / STACKPASS_URL and that the broker is running",
            )
        })?;
    let status = response.status();
    let text = response
        .text()
        .await
        .map_err(|e| CliError::plain(format!("could not read the broker's answer: {e}")))?;
    if !status.is_success() {
        return Err(problem_error(status.as_u16(), &text));
    }
    Ok(text)
}

fn request_body(args: &CredsArgs) -> serde_json::Value {
    let mut body = serde_json::json!({ "stack": args.stack, "provider": args.provider });
    if let Some(duration) = args.duration {
        body["duration_seconds"] = duration.as_secs().into();
    }
    if let Some(reason) = &args.reason {
        body["reason"] = reason.as_str().into();
    }
    if let Some(reason) = &args.break_glass {
        body["break_glass"] = serde_json::json!({ "reason": reason });
    }
    body
}

/// What `stackpass approvals` does.
pub enum ApprovalAction {
    /// Ask for access that needs approval.
    Request(CredsArgs),
    List,
    Approve {
        id: String,
        note: Option<String>,
    },
    Deny {
        id: String,
        note: Option<String>,
    },
}

pub async fn approvals(
    server: &str,
    token: &SecretString,
    action: ApprovalAction,
) -> Result<String, CliError> {
    let describe = |r: &serde_json::Value| {
        format!(
            "{}  {:<11} {}  {} on {}  ({}/{} approvals{})",
            r["id"].as_str().unwrap_or_default(),
            r["state"].as_str().unwrap_or_default(),
            r["requester"].as_str().unwrap_or_default(),
            r["role"].as_str().unwrap_or_default(),
            r["stack"].as_str().unwrap_or_default(),
            r["approvers"].as_array().map_or(0, Vec::len),
            r["required_approvals"],
            r["window_ends_at"]
                .as_str()
                .map(|w| format!(", usable until {w}"))
                .unwrap_or_default(),
        )
    };
    let parse = |text: String| -> Result<serde_json::Value, CliError> {
        serde_json::from_str(&text)
            .map_err(|e| CliError::plain(format!("the broker's answer is not JSON: {e}")))
    };
    match action {
        ApprovalAction::Request(args) => {
            let answer = parse(
                call(
                    server,
                    token,
                    "/v1/access-requests",
                    Some(&request_body(&args)),
                )
                .await?,
            )?;
            Ok(describe(&answer["access_request"]))
        }
        ApprovalAction::List => {
            let answer = parse(call(server, token, "/v1/access-requests", None).await?)?;
            let lines: Vec<String> = answer["access_requests"]
                .as_array()
                .into_iter()
                .flatten()
                .map(describe)
                .collect();
            Ok(if lines.is_empty() {
                "no access requests for you to see".into()
            } else {
                lines.join("\n")
            })
        }
        ApprovalAction::Approve { id, note } => {
            let answer = parse(
                call(
                    server,
                    token,
                    &format!("/v1/access-requests/{id}/approve"),
                    Some(&serde_json::json!({ "note": note })),
                )
                .await?,
            )?;
            Ok(describe(&answer["access_request"]))
        }
        ApprovalAction::Deny { id, note } => {
            let answer = parse(
                call(
                    server,
                    token,
                    &format!("/v1/access-requests/{id}/deny"),
                    Some(&serde_json::json!({ "note": note })),
                )
                .await?,
            )?;
            Ok(describe(&answer["access_request"]))
        }
    }
}

/// Asks the broker what it would decide, and why (`POST /v1/decisions`).
pub async fn explain(args: CredsArgs) -> Result<String, CliError> {
    let text = call(
        &args.server,
        &args.token,
        "/v1/decisions",
        Some(&request_body(&args)),
    )
    .await?;
    let decision: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| CliError::plain(format!("the broker's answer is not a decision: {e}")))?;
    let mut out = String::new();
    if decision["decision"] == "needs_approval" {
        out.push_str(&format!(
            "decision: needs approval\nrule: {}\nrole: {}\napprovals needed: {} from {}",
            decision["grant"]["rule"].as_str().unwrap_or_default(),
            decision["grant"]["role"].as_str().unwrap_or_default(),
            decision["approval"]["count"],
            decision["approval"]["approvers"]
        ));
    } else if decision["decision"] == "allow" {
        out.push_str(&format!(
            "decision: allow
rule: {}
role: {}
duration: {} (at most {})",
            decision["rule"].as_str().unwrap_or_default(),
            decision["role"].as_str().unwrap_or_default(),
            decision["duration"].as_str().unwrap_or_default(),
            decision["max_duration"].as_str().unwrap_or_default(),
        ));
        if let Some(policy) = decision["session_policy"].as_str() {
            out.push_str(&format!(
                "
session policy: {policy}"
            ));
        }
    } else {
        out.push_str(&format!(
            "decision: deny
why: {}",
            decision["summary"].as_str().unwrap_or_default()
        ));
        for rule in decision["rules"].as_array().into_iter().flatten() {
            for reason in rule["reasons"].as_array().into_iter().flatten() {
                out.push_str(&format!(
                    "
  rule {}: {}",
                    rule["rule"].as_str().unwrap_or_default(),
                    reason.as_str().unwrap_or_default()
                ));
            }
        }
    }
    Ok(out)
}

/// Fetches credentials and returns the text to print on stdout.
pub async fn fetch_credentials(args: CredsArgs) -> Result<String, CliError> {
    let text = call(
        &args.server,
        &args.token,
        "/v1/credentials",
        Some(&request_body(&args)),
    )
    .await?;
    let issued: Issued = serde_json::from_str(&text).map_err(|e| {
        CliError::new(
            format!("the broker's answer is not a credential: {e}"),
            "check that --server points at a stackpass broker",
        )
    })?;
    Ok(match args.format {
        OutputFormat::Json => text,
        OutputFormat::Env => format!(
            "export AWS_ACCESS_KEY_ID={}\nexport AWS_SECRET_ACCESS_KEY={}\nexport AWS_SESSION_TOKEN={}\nexport AWS_CREDENTIAL_EXPIRATION={}",
            issued.credentials.access_key_id,
            issued.credentials.secret_access_key.expose_secret(),
            issued.credentials.session_token.expose_secret(),
            issued.expires_at
        ),
        OutputFormat::CredentialProcess => serde_json::json!({
            "Version": 1,
            "AccessKeyId": issued.credentials.access_key_id,
            "SecretAccessKey": issued.credentials.secret_access_key.expose_secret(),
            "SessionToken": issued.credentials.session_token.expose_secret(),
            "Expiration": issued.expires_at,
        })
        .to_string(),
    })
}

fn problem_error(status: u16, text: &str) -> CliError {
    let Ok(problem) = serde_json::from_str::<ProblemBody>(text) else {
        return CliError::new(
            format!("the broker answered HTTP {status}"),
            "check --server / STACKPASS_URL",
        );
    };
    let mut message = format!(
        "{} (HTTP {status}): {}",
        problem.title.as_deref().unwrap_or("request failed"),
        problem.detail.as_deref().unwrap_or("no detail")
    );
    for rule in problem.rules.iter().flatten() {
        for reason in &rule.reasons {
            message.push_str(&format!("\n  rule {}: {reason}", rule.rule));
        }
    }
    if let Some(id) = problem.request_id {
        message.push_str(&format!("\n  request id: {id}"));
    }
    CliError {
        message,
        hint: problem.hint,
    }
}
