//! `stackpass run -- COMMAND`: runs a command (`pulumi up`, `terraform apply`)
//! with credentials for every provider the stack's grants cover, kept fresh for
//! as long as it runs.
//!
//! The command never sees the identity token or fixed cloud secrets. Each
//! provider's current credential is served on a loopback endpoint that only
//! the child knows the per-run secret of, and the provider's
//! [`ChildDelivery`] points its cloud's tools there (AWS: the container
//! credentials provider; GCP: a URL-sourced external account; Azure: the OIDC
//! request URL and a token file). A background task per provider fetches the
//! next credential before the current one ends, so a run longer than one
//! credential's life keeps working. The exit code is the command's (128 + N
//! when signal N ended it); signals sent to `stackpass` go to the command.
//! Nothing secret is printed.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use rand_core::RngCore;
use secrecy::{ExposeSecret, SecretString};
use stackpass_provider::{ChildDelivery, ChildEndpoint, ReceivedCredential};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::Mutex;

use super::cache::{needs_refresh, renewal_time, token_expiry, write_private, CredentialCache};
use super::creds::{decide, issue, received};
use super::project::{detect_stack, ProcessEnv};
use super::{read_token_file, CliError, CredsArgs};
use crate::{registry, wire};

pub struct RunArgs {
    pub server: String,
    pub token: SecretString,
    /// Where the token came from, read again at each renewal: CI systems and
    /// Kubernetes replace short-lived tokens in place.
    pub token_file: Option<PathBuf>,
    pub stack: Option<String>,
    /// Empty: every provider the stack's grants cover.
    pub providers: Vec<String>,
    pub duration: Option<Duration>,
    pub cache: Option<CredentialCache>,
    pub command: Vec<OsString>,
}

/// One provider's credential as the child is being given it.
struct Delivery {
    kind: String,
    delivery: &'static dyn ChildDelivery,
    request: CredsArgs,
    url: String,
    current: Mutex<Current>,
}

struct Current {
    credential: ReceivedCredential,
    document: SecretString,
    fetched_at: OffsetDateTime,
    expires_at: OffsetDateTime,
}

struct Shared {
    secret: SecretString,
    token_file: Option<PathBuf>,
    dir: PathBuf,
    cache: Option<CredentialCache>,
    deliveries: BTreeMap<String, Arc<Delivery>>,
}

/// Runs the command; returns the exit code to leave with.
pub async fn run(args: RunArgs) -> Result<u8, CliError> {
    let Some((program, program_args)) = args.command.split_first() else {
        return Err(CliError::new(
            "no command to run",
            "put it after --, e.g. stackpass run -- pulumi up",
        ));
    };
    let stack = match args.stack {
        Some(stack) => stack,
        None => {
            let cwd = std::env::current_dir().map_err(|e| {
                CliError::new(
                    format!("could not read the current directory: {e}"),
                    "pass --stack",
                )
            })?;
            detect_stack(&cwd, &ProcessEnv)?
        }
    };
    let request = |provider: &str, delivery: &dyn ChildDelivery| CredsArgs {
        server: args.server.clone(),
        token: args.token.clone(),
        stack: stack.clone(),
        provider: provider.to_owned(),
        duration: args.duration,
        reason: None,
        break_glass: None,
        mode: Some(delivery.mode()),
    };
    let providers = if args.providers.is_empty() {
        covered_providers(&stack, &request).await?
    } else {
        let mut chosen = Vec::new();
        for kind in &args.providers {
            chosen.push((kind.clone(), delivery_for(kind)?));
        }
        chosen
    };

    let dir = private_dir()?;
    let _cleanup = RemoveOnDrop(dir.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| CliError::plain(format!("could not listen on 127.0.0.1: {e}")))?;
    let port = listener
        .local_addr()
        .map_err(|e| CliError::plain(format!("could not read the listener's port: {e}")))?
        .port();
    let mut shared = Shared {
        secret: fresh_secret(),
        token_file: args.token_file.clone(),
        dir,
        cache: args.cache,
        deliveries: BTreeMap::new(),
    };
    let mut child_env = Vec::new();
    let mut removed = vec!["STACKPASS_TOKEN"];
    let mut first_renewal = OffsetDateTime::now_utc() + time::Duration::days(1);
    for (kind, delivery) in providers {
        let request = request(&kind, delivery);
        let current = fetch(&request, delivery, shared.cache.as_ref()).await?;
        let url = format!("http://127.0.0.1:{port}/{kind}");
        let endpoint = ChildEndpoint {
            url: &url,
            secret: &shared.secret,
            dir: &shared.dir,
        };
        let environment = delivery
            .environment(&current.credential, &endpoint)
            .map_err(|e| CliError::new(e, "use stackpass creds --format json to see the answer"))?;
        write_files(delivery, &current.credential, &endpoint)?;
        removed.extend_from_slice(environment.remove);
        child_env.extend(environment.set);
        eprintln!(
            "stackpass: {kind} credentials for {stack} until {} (renewed while the command runs)",
            current.credential.expires_at
        );
        first_renewal = first_renewal.min(renewal_time(current.fetched_at, current.expires_at));
        shared.deliveries.insert(
            kind.clone(),
            Arc::new(Delivery {
                kind,
                delivery,
                request,
                url,
                current: Mutex::new(current),
            }),
        );
    }
    if args.token_file.is_none() && token_expiry(&args.token).is_some_and(|t| t < first_renewal) {
        eprintln!("stackpass: your identity token expires before these credentials need renewing; for a long run, pass --duration to cover it, or --token-file with a file your platform keeps fresh");
    }
    let shared = Arc::new(shared);
    let server = tokio::spawn(serve(listener, shared.clone()));
    let refreshers: Vec<_> = shared
        .deliveries
        .values()
        .map(|delivery| tokio::spawn(keep_fresh(shared.clone(), delivery.clone())))
        .collect();

    let mut command = tokio::process::Command::new(program);
    command.args(program_args);
    for name in removed {
        command.env_remove(name);
    }
    for (name, value) in &child_env {
        command.env(name, value.expose_secret());
    }
    let mut child = command.spawn().map_err(|e| {
        CliError::new(
            format!("could not start {}: {e}", program.to_string_lossy()),
            "check the command's name and that it is on PATH",
        )
    })?;
    let status = wait_passing_signals(&mut child).await?;
    server.abort();
    for refresher in refreshers {
        refresher.abort();
    }
    Ok(match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(1),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(255),
        (None, None) => 1,
    })
}

/// The providers whose rules allow this stack now, asked as dry runs; a
/// provider that needs approval, denies, or is not configured is named and
/// left out. None at all is an error with the broker's reasons.
async fn covered_providers(
    stack: &str,
    request: &impl Fn(&str, &dyn ChildDelivery) -> CredsArgs,
) -> Result<Vec<(String, &'static dyn ChildDelivery)>, CliError> {
    let mut covered = Vec::new();
    let mut left_out = Vec::new();
    for factory in registry::factories() {
        let Some(delivery) = factory.child_delivery() else {
            continue;
        };
        let kind = factory.kind().to_string();
        match decide(&request(&kind, delivery)).await {
            Ok(wire::Decision::Allow(_)) => covered.push((kind, delivery)),
            Ok(wire::Decision::NeedsApproval { .. }) => {
                eprintln!("stackpass: {kind} needs approval for {stack}; ask with `stackpass approvals request --stack {stack} --provider {kind}`");
                left_out.push(format!("{kind}: needs approval"));
            }
            Ok(wire::Decision::Deny(denial)) => {
                left_out.push(format!("{kind}: {}", denial.summary));
            }
            // This provider is not configured on the broker, or the request
            // is not one it can take: it covers nothing here.
            Err((Some(400 | 422), error)) => {
                left_out.push(format!("{kind}: {}", first_line(&error.message)));
            }
            Err((_, error)) => return Err(error),
        }
    }
    if covered.is_empty() {
        return Err(CliError::new(
            format!(
                "no provider's rules give you credentials for {stack}:\n  {}",
                left_out.join("\n  ")
            ),
            "`stackpass policy explain --stack STACK --provider P` says why",
        ));
    }
    Ok(covered)
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

fn delivery_for(kind: &str) -> Result<&'static dyn ChildDelivery, CliError> {
    registry::factory(kind)
        .and_then(|factory| factory.child_delivery())
        .ok_or_else(|| {
            CliError::new(
                format!("this stackpass build cannot run commands with {kind} credentials"),
                format!("use one of: {}", registry::known_kinds()),
            )
        })
}

async fn fetch(
    request: &CredsArgs,
    delivery: &dyn ChildDelivery,
    cache: Option<&CredentialCache>,
) -> Result<Current, CliError> {
    let text = issue(request, cache).await?;
    let issued: wire::IssuedCredential = serde_json::from_str(&text).map_err(|e| {
        CliError::new(
            format!("the broker's answer is not a credential: {e}"),
            "check that --server points at a stackpass broker",
        )
    })?;
    let credential = received(issued);
    let expires_at = OffsetDateTime::parse(&credential.expires_at, &Rfc3339).map_err(|_| {
        CliError::plain("the broker's expires_at is not an RFC 3339 time".to_owned())
    })?;
    let document = delivery
        .document(&credential)
        .map_err(|e| CliError::new(e, "use stackpass creds --format json to see the answer"))?;
    // A cached answer was fetched earlier; its refresh time follows from its
    // remaining life, which only under-estimates how early to renew.
    Ok(Current {
        credential,
        document,
        fetched_at: OffsetDateTime::now_utc(),
        expires_at,
    })
}

/// Renews the credential before it ends, rewriting the child's files; on a
/// failure keeps what it has while it lasts and tries again.
async fn keep_fresh(shared: Arc<Shared>, delivery: Arc<Delivery>) {
    loop {
        let wait = {
            let current = delivery.current.lock().await;
            refresh_at(&current) - OffsetDateTime::now_utc()
        };
        if wait.is_positive() {
            tokio::time::sleep(wait.try_into().unwrap_or(Duration::from_secs(1))).await;
        }
        if let Err(error) = refresh(&shared, &delivery).await {
            eprintln!(
                "stackpass: could not renew {} credentials ({}); retrying in 10s",
                delivery.kind,
                first_line(&error.message)
            );
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
    }
}

fn refresh_at(current: &Current) -> OffsetDateTime {
    renewal_time(current.fetched_at, current.expires_at)
}

async fn refresh(shared: &Shared, delivery: &Delivery) -> Result<(), CliError> {
    let mut current = delivery.current.lock().await;
    if !needs_refresh(
        current.fetched_at,
        current.expires_at,
        OffsetDateTime::now_utc(),
    ) {
        return Ok(());
    }
    let mut request = delivery.request.clone();
    if let Some(file) = &shared.token_file {
        request.token = read_token_file(file)?;
    }
    let next = fetch(&request, delivery.delivery, shared.cache.as_ref()).await?;
    let endpoint = ChildEndpoint {
        url: &delivery.url,
        secret: &shared.secret,
        dir: &shared.dir,
    };
    write_files(delivery.delivery, &next.credential, &endpoint)?;
    *current = next;
    Ok(())
}

async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let app = axum::Router::new()
        .route("/{kind}", axum::routing::get(document))
        .with_state(shared);
    if let Err(e) = axum::serve(listener, app).await {
        eprintln!("stackpass: the credential endpoint stopped: {e}");
    }
}

/// `GET /{kind}` with the per-run secret: the provider's document for its
/// current credential, renewed first if it is due.
async fn document(
    State(shared): State<Arc<Shared>>,
    UrlPath(kind): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .map(|value| value.strip_prefix("Bearer ").unwrap_or(value));
    if !presented.is_some_and(|p| same(p.as_bytes(), shared.secret.expose_secret().as_bytes())) {
        return (StatusCode::UNAUTHORIZED, "wrong or missing authorization").into_response();
    }
    let Some(delivery) = shared.deliveries.get(&kind) else {
        return (StatusCode::NOT_FOUND, "no such provider in this run").into_response();
    };
    if let Err(error) = refresh(&shared, delivery).await {
        eprintln!(
            "stackpass: could not renew {kind} credentials: {}",
            first_line(&error.message)
        );
    }
    let current = delivery.current.lock().await;
    if current.expires_at <= OffsetDateTime::now_utc() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({
                "message": "stackpass could not renew the credentials; see its messages on stderr"
            })),
        )
            .into_response();
    }
    (
        [(header::CONTENT_TYPE, "application/json")],
        current.document.expose_secret().to_owned(),
    )
        .into_response()
}

/// Compares without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn fresh_secret() -> SecretString {
    let mut bytes = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut bytes);
    SecretString::from(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// A new directory only this user can enter, for the child's credential files.
fn private_dir() -> Result<PathBuf, CliError> {
    let dir = std::env::temp_dir().join(format!("stackpass-run-{}", uuid::Uuid::new_v4().simple()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| {
            CliError::new(
                format!("could not create {}: {e}", dir.display()),
                "set TMPDIR to a writable directory",
            )
        })?;
    Ok(dir)
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes each file whole (temp file, then rename) so the child never reads
/// half a token.
fn write_files(
    delivery: &dyn ChildDelivery,
    credential: &ReceivedCredential,
    endpoint: &ChildEndpoint<'_>,
) -> Result<(), CliError> {
    let files = delivery
        .files(credential, endpoint)
        .map_err(|e| CliError::new(e, "use stackpass creds --format json to see the answer"))?;
    for file in files {
        let path = endpoint.dir.join(file.name);
        write_private(&path, file.contents.expose_secret().as_bytes()).map_err(|e| {
            CliError::new(
                format!("could not write {}: {e}", path.display()),
                "set TMPDIR to a writable directory",
            )
        })?;
    }
    Ok(())
}

/// Waits for the child, passing on the signals a supervisor sends
/// `stackpass` (SIGTERM, SIGHUP, SIGUSR1/2). Ctrl-C and Ctrl-\ at a terminal
/// already reach the child (it is in the terminal's foreground process
/// group), so SIGINT and SIGQUIT are passed on only when they did not come
/// from the terminal: a second SIGINT would make `pulumi up` cancel hard.
async fn wait_passing_signals(
    child: &mut tokio::process::Child,
) -> Result<std::process::ExitStatus, CliError> {
    use tokio::signal::unix::{signal, SignalKind};
    let listen = |kind: SignalKind| {
        signal(kind).map_err(|e| CliError::plain(format!("could not listen for signals: {e}")))
    };
    let mut term = listen(SignalKind::terminate())?;
    let mut hangup = listen(SignalKind::hangup())?;
    let mut interrupt = listen(SignalKind::interrupt())?;
    let mut quit = listen(SignalKind::quit())?;
    let mut user1 = listen(SignalKind::user_defined1())?;
    let mut user2 = listen(SignalKind::user_defined2())?;
    use rustix::process::Signal;
    loop {
        let (signal, from_terminal_too) = tokio::select! {
            status = child.wait() => {
                return status.map_err(|e| CliError::plain(format!("could not wait for the command: {e}")));
            }
            _ = term.recv() => (Signal::TERM, false),
            _ = hangup.recv() => (Signal::HUP, false),
            _ = interrupt.recv() => (Signal::INT, true),
            _ = quit.recv() => (Signal::QUIT, true),
            _ = user1.recv() => (Signal::USR1, false),
            _ = user2.recv() => (Signal::USR2, false),
        };
        if from_terminal_too && in_terminal_foreground() {
            continue;
        }
        if let Some(pid) = child
            .id()
            .and_then(|id| rustix::process::Pid::from_raw(id as i32))
        {
            let _ = rustix::process::kill_process(pid, signal);
        }
    }
}

/// Whether this process's group is the foreground group of the terminal on
/// stdin: then the terminal's Ctrl-C went to the child as well.
fn in_terminal_foreground() -> bool {
    rustix::termios::tcgetpgrp(std::io::stdin())
        .is_ok_and(|group| group == rustix::process::getpgrp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_comparison_needs_every_byte() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
        assert!(!same(b"", b"a"));
    }

    #[test]
    fn renewal_is_due_when_the_cache_would_refresh() {
        let t = OffsetDateTime::UNIX_EPOCH;
        let current = Current {
            credential: ReceivedCredential {
                expires_at: String::new(),
                fields: BTreeMap::new(),
            },
            document: SecretString::from(String::new()),
            fetched_at: t,
            expires_at: t + time::Duration::minutes(15),
        };
        let at = refresh_at(&current);
        assert_eq!(at, t + time::Duration::minutes(10));
        assert!(needs_refresh(current.fetched_at, current.expires_at, at));
        assert!(!needs_refresh(
            current.fetched_at,
            current.expires_at,
            at - time::Duration::seconds(1)
        ));
    }

    #[test]
    fn private_dirs_are_the_users_alone() {
        use std::os::unix::fs::PermissionsExt;
        let dir = private_dir().unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        drop(RemoveOnDrop(dir.clone()));
        assert_eq!(mode & 0o777, 0o700);
        assert!(!dir.exists());
    }
}
