//! `stackpass creds`: asks a broker for credentials (or, in federation mode, a
//! subject token) and prints them as JSON or in a provider's own format.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use stackpass_provider::{Mode, ProviderFactory, ReceivedCredential};

use super::cache::{CacheKey, CredentialCache};
use super::CliError;
use crate::{registry, wire};

#[derive(Clone)]
pub struct CredsArgs {
    pub server: String,
    pub token: SecretString,
    pub stack: String,
    pub provider: String,
    pub duration: Option<Duration>,
    /// Why access is needed (shown to approvers).
    pub reason: Option<String>,
    /// Break-glass reason: issue now under a break-glass rule.
    pub break_glass: Option<String>,
    /// `None`: what the format needs (credentials for `json`).
    pub mode: Option<Mode>,
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

/// `--ca-file` / `STACKPASS_CA_FILE`, set once by `main` before any call.
static BROKER_CA_FILE: OnceLock<PathBuf> = OnceLock::new();

/// Trusts the CAs in `ca_file` (PEM) for the broker's https, besides the
/// public roots: for a broker whose certificate a private CA signed.
pub fn trust_broker_ca(ca_file: PathBuf) {
    let _ = BROKER_CA_FILE.set(ca_file);
}

/// The CA bundle to trust beside the public roots: `--ca-file`, else
/// `SSL_CERT_FILE` (which reqwest's built-in roots do not read by themselves).
fn broker_ca_file() -> Option<(PathBuf, &'static str)> {
    match BROKER_CA_FILE.get() {
        Some(path) => Some((path.clone(), "--ca-file / STACKPASS_CA_FILE")),
        None => std::env::var_os("SSL_CERT_FILE")
            .filter(|value| !value.is_empty())
            .map(|value| (PathBuf::from(value), "SSL_CERT_FILE")),
    }
}

/// The client for the broker: public roots, plus the bundle named above.
fn broker_client() -> Result<reqwest::Client, CliError> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(60));
    if let Some((path, from)) = broker_ca_file() {
        let trust = crate::http_client::TlsTrust {
            ca_file: Some(path),
            public_roots: true,
        };
        let certificates = trust.certificates().map_err(|e| {
            CliError::new(
                e.to_string(),
                format!("{from} must name a readable PEM file of CA certificates"),
            )
        })?;
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder
        .build()
        .map_err(|e| CliError::plain(format!("could not build an HTTP client: {e}")))
}

/// Calls the broker (`body` means POST, none means GET) and returns the answer's
/// text, or the broker's problem as a CLI error.
async fn call(
    server: &str,
    token: &SecretString,
    path: &str,
    body: Option<&impl serde::Serialize>,
) -> Result<String, CliError> {
    call_for_status(server, token, path, body)
        .await
        .map_err(|(_, error)| error)
}

/// [`call`], keeping the HTTP status of a refusal (`None`: no answer at all).
async fn call_for_status(
    server: &str,
    token: &SecretString,
    path: &str,
    body: Option<&impl serde::Serialize>,
) -> Result<String, (Option<u16>, CliError)> {
    let base = server.trim_end_matches('/');
    let client = broker_client().map_err(|e| (None, e))?;
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
            let error = if is_untrusted_certificate(&e) {
                CliError::new(
                    format!("could not reach the broker at {base}: its TLS certificate is not trusted"),
                    "if a private CA signed it, pass its PEM bundle with --ca-file (or STACKPASS_CA_FILE)",
                )
            } else {
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
            };
            (None, error)
        })?;
    let status = response.status();
    let text = response.text().await.map_err(|e| {
        (
            None,
            CliError::plain(format!("could not read the broker's answer: {e}")),
        )
    })?;
    if !status.is_success() {
        return Err((Some(status.as_u16()), problem_error(status.as_u16(), &text)));
    }
    Ok(text)
}

/// Whether a failed request failed on the server's certificate (rustls says
/// so somewhere in the error's chain).
fn is_untrusted_certificate(error: &reqwest::Error) -> bool {
    let mut source: Option<&dyn std::error::Error> = Some(error);
    while let Some(current) = source {
        if current.to_string().contains("certificate") {
            return true;
        }
        source = current.source();
    }
    false
}

fn request_body(args: &CredsArgs) -> wire::CredentialRequest {
    wire::CredentialRequest {
        stack: args.stack.clone(),
        provider: args.provider.clone(),
        duration_seconds: args.duration.map(|d| d.as_secs()),
        reason: args.reason.clone(),
        break_glass: args
            .break_glass
            .clone()
            .map(|reason| wire::BreakGlass { reason }),
        mode: args.mode.map(|mode| mode.as_str().to_owned()),
    }
}

fn parse<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T, CliError> {
    serde_json::from_str(text).map_err(|e| {
        CliError::new(
            format!("the broker's answer is not {what}: {e}"),
            "check that --server points at a stackpass broker",
        )
    })
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
    let one = |text: String| -> Result<String, CliError> {
        let answer: wire::AccessRequestEnvelope = parse(&text, "an access request")?;
        Ok(describe(&answer.access_request))
    };
    let no_note = None::<&wire::DecisionNote>;
    match action {
        ApprovalAction::Request(args) => one(call(
            server,
            token,
            "/v1/access-requests",
            Some(&request_body(&args)),
        )
        .await?),
        ApprovalAction::List => {
            let text = call(server, token, "/v1/access-requests", no_note).await?;
            let answer: wire::AccessRequestList = parse(&text, "a list of access requests")?;
            Ok(if answer.access_requests.is_empty() {
                "no access requests for you to see".into()
            } else {
                let lines: Vec<String> = answer.access_requests.iter().map(describe).collect();
                lines.join("\n")
            })
        }
        ApprovalAction::Approve { id, note } => one(call(
            server,
            token,
            &format!("/v1/access-requests/{id}/approve"),
            Some(&wire::DecisionNote { note }),
        )
        .await?),
        ApprovalAction::Deny { id, note } => one(call(
            server,
            token,
            &format!("/v1/access-requests/{id}/deny"),
            Some(&wire::DecisionNote { note }),
        )
        .await?),
    }
}

/// What `stackpass agents` does.
pub enum AgentAction {
    Revoke {
        agent: String,
        all_persons: bool,
        reason: Option<String>,
    },
    Restore {
        agent: String,
        all_persons: bool,
    },
    List,
}

pub async fn agents(
    server: &str,
    token: &SecretString,
    action: AgentAction,
) -> Result<String, CliError> {
    let prefix = |all: bool| if all { "/v1/agents" } else { "/v1/delegations" };
    let (path, body) = match action {
        AgentAction::List => {
            let text = call(server, token, "/v1/delegations", None::<&()>).await?;
            let answer: wire::RevocationList = parse(&text, "a list of revocations")?;
            return Ok(if answer.revocations.is_empty() {
                "no revocations for you to see".into()
            } else {
                let lines: Vec<String> =
                    answer.revocations.iter().map(describe_revocation).collect();
                lines.join("\n")
            });
        }
        AgentAction::Revoke {
            agent,
            all_persons,
            reason,
        } => {
            if all_persons && reason.is_none() {
                return Err(CliError::new(
                    "revoking an agent for every person needs a reason",
                    "add --reason \"why\"",
                ));
            }
            (
                format!("{}/revoke", prefix(all_persons)),
                wire::RevocationRequest { agent, reason },
            )
        }
        AgentAction::Restore { agent, all_persons } => (
            format!("{}/restore", prefix(all_persons)),
            wire::RevocationRequest {
                agent,
                reason: None,
            },
        ),
    };
    let text = call(server, token, &path, Some(&body)).await?;
    let answer: wire::RevocationAnswer = parse(&text, "a revocation")?;
    let mut lines = vec![describe_revocation(&answer.revocation)];
    if answer.unchanged {
        lines.push("(unchanged: it was already in this state)".into());
    }
    if !answer.outstanding_credentials.is_empty() {
        lines.push(format!(
            "{} credential(s) issued before cannot be recalled by stackpass and stay valid until they expire:",
            answer.outstanding_credentials.len()
        ));
        for c in &answer.outstanding_credentials {
            lines.push(format!(
                "  {}  {} for {} via {} {}  credential {}  issuance {}  expires {}",
                c.agent,
                c.stack.as_deref().unwrap_or("-"),
                c.person,
                c.provider.as_deref().unwrap_or("-"),
                c.role.as_deref().unwrap_or("-"),
                c.credential_id.as_deref().unwrap_or("-"),
                c.issuance_id.as_deref().unwrap_or("-"),
                c.expires_at,
            ));
        }
        for h in &answer.recall_hints {
            lines.push(format!(
                "  to cut {} credentials short: {}",
                h.provider, h.hint
            ));
        }
    }
    Ok(lines.join("\n"))
}

fn describe_revocation(r: &wire::Revocation) -> String {
    let whom = match &r.person {
        Some(person) => format!("acting for {person}"),
        None => "acting for anyone".into(),
    };
    let state = match (&r.restored_at, &r.restored_by) {
        (Some(at), Some(by)) => format!("restored {at} by {by}"),
        _ => "revoked".into(),
    };
    format!(
        "{}  {:<8} {} {}  by {} at {}{}",
        r.id,
        state,
        r.agent,
        whom,
        r.revoked_by,
        r.revoked_at,
        r.reason
            .as_deref()
            .map(|why| format!("  reason: {why}"))
            .unwrap_or_default(),
    )
}

/// One access request on one line: what an approval of it covers (role,
/// stack, provider, mode, duration and the grant's digest), then its state.
fn describe(r: &wire::AccessRequest) -> String {
    format!(
        "{}  {:<11} {}  {} on {} via {} ({}, {})  grant {}  ({}/{} approvals{})",
        r.id,
        r.state,
        r.requester,
        r.role,
        r.stack,
        r.provider,
        r.mode.as_deref().unwrap_or("unbound"),
        humantime::format_duration(std::time::Duration::from_secs(
            r.duration_seconds.max(0) as u64
        )),
        r.grant_digest
            .as_deref()
            .map(|d| &d[..d.len().min(12)])
            .unwrap_or("none"),
        r.approvers.len(),
        r.required_approvals,
        r.window_ends_at
            .as_deref()
            .map(|w| format!(", one issuance until {w}"))
            .unwrap_or_default(),
    )
}

/// Asks the broker what it would decide, and why (`POST /v1/decisions`).
pub async fn explain(args: CredsArgs) -> Result<String, CliError> {
    Ok(match decide(&args).await.map_err(|(_, error)| error)? {
        wire::Decision::NeedsApproval { grant, approval } => format!(
            "decision: needs approval\nrule: {}\nrole: {}\napprovals needed: {} from {}",
            grant.rule,
            grant.role,
            approval.count,
            serde_json::to_string(&approval.approvers).unwrap_or_default()
        ),
        wire::Decision::Allow(grant) => {
            let mut out = format!(
                "decision: allow\nrule: {}\nrole: {}\nduration: {} (at most {})",
                grant.rule,
                grant.role,
                humantime::format_duration(grant.duration),
                humantime::format_duration(grant.max_duration),
            );
            if let Some(policy) = grant.session_policy {
                out.push_str(&format!("\nsession policy: {policy}"));
            }
            out
        }
        wire::Decision::Deny(denial) => {
            let mut out = format!("decision: deny\nwhy: {}", denial.summary);
            for rule in &denial.rules {
                for reason in &rule.reasons {
                    out.push_str(&format!("\n  rule {}: {reason}", rule.rule));
                }
            }
            out
        }
    })
}

/// How the CLI prints the answer: plain JSON, or a provider's own format.
pub struct Printer {
    factory: Option<&'static dyn ProviderFactory>,
    format: String,
    mode: Mode,
}

impl Printer {
    /// Checks `format` (and `mode`, if given) before anything is requested, so a
    /// typo never costs an issuance. A provider format decides the mode.
    pub fn new(provider: &str, format: &str, mode: Option<Mode>) -> Result<Printer, CliError> {
        if format == "json" {
            return Ok(Printer {
                factory: None,
                format: format.to_owned(),
                mode: mode.unwrap_or_default(),
            });
        }
        let factory = registry::factory(provider).ok_or_else(|| {
            CliError::new(
                format!(
                    "this stackpass build has no {provider} provider, so it can only print json"
                ),
                "use --format json",
            )
        })?;
        let formats = factory.output_formats();
        let Some(found) = formats.iter().find(|f| f.name == format) else {
            let names: Vec<&str> = formats.iter().map(|f| f.name).collect();
            return Err(CliError::new(
                format!("{provider} credentials cannot be printed as {format}"),
                format!("use --format json, {}", names.join(", ")),
            ));
        };
        if let Some(mode) = mode.filter(|mode| *mode != found.mode) {
            return Err(CliError::new(
                format!("--format {format} prints {} mode, not {mode}", found.mode),
                format!("drop --mode, or use --format json with --mode {mode}"),
            ));
        }
        Ok(Printer {
            factory: Some(factory),
            format: format.to_owned(),
            mode: found.mode,
        })
    }

    /// What the format's reader expects on stdout when there is no credential.
    pub fn failure(&self, error: &CliError) -> Option<String> {
        self.factory?.render_failure(&self.format, &error.message)
    }
}

/// Fetches credentials (from the cache when it has a fresh answer) and
/// returns the text to print on stdout.
pub async fn fetch_credentials(
    mut args: CredsArgs,
    printer: &Printer,
    cache: Option<&CredentialCache>,
) -> Result<String, CliError> {
    args.mode = Some(printer.mode);
    let text = issue(&args, cache).await?;
    let Some(factory) = printer.factory else {
        return Ok(text);
    };
    let received = received(parse(&text, "a credential")?);
    factory
        .render(&printer.format, &received)
        .map_err(|e| CliError::new(e, "use --format json"))
}

/// The broker's answer to a credential request: a fresh one from the cache, or
/// a new issuance (then cached). A break-glass issuance is never taken from or
/// put in the cache: each one is a deliberate, announced act.
pub async fn issue(args: &CredsArgs, cache: Option<&CredentialCache>) -> Result<String, CliError> {
    let cache = cache.filter(|_| args.break_glass.is_none());
    let key = cache.map(|_| {
        CacheKey::new(
            &args.server,
            &args.token,
            &args.stack,
            &args.provider,
            args.mode.unwrap_or_default().as_str(),
            args.duration,
        )
    });
    if let (Some(cache), Some(key)) = (cache, &key) {
        if let Some(answer) = cache.get(key) {
            return Ok(answer);
        }
    }
    let text = call(
        &args.server,
        &args.token,
        "/v1/credentials",
        Some(&request_body(args)),
    )
    .await?;
    if let (Some(cache), Some(key)) = (cache, &key) {
        let issued: wire::IssuedCredential = parse(&text, "a credential")?;
        if let Err(e) = cache.put(key, &text, &issued.expires_at) {
            eprintln!("warning: the credential was issued but not cached: {e}");
        }
    }
    Ok(text)
}

/// The credential fields of an answer, as a provider's formats read them.
pub fn received(issued: wire::IssuedCredential) -> ReceivedCredential {
    ReceivedCredential {
        expires_at: issued.expires_at,
        fields: issued
            .credentials
            .into_iter()
            .filter_map(|(name, value)| {
                let text = match value {
                    serde_json::Value::Null => return None,
                    serde_json::Value::String(text) => text,
                    other => other.to_string(),
                };
                Some((name, SecretString::from(text)))
            })
            .collect(),
    }
}

/// What the broker would decide for a request (`POST /v1/decisions`), keeping
/// the status of a refusal (`None`: the broker did not answer).
pub async fn decide(args: &CredsArgs) -> Result<wire::Decision, (Option<u16>, CliError)> {
    let text = call_for_status(
        &args.server,
        &args.token,
        "/v1/decisions",
        Some(&request_body(args)),
    )
    .await?;
    parse(&text, "a decision").map_err(|e| (None, e))
}

fn problem_error(status: u16, text: &str) -> CliError {
    let Ok(problem) = serde_json::from_str::<wire::ProblemBody>(text) else {
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
