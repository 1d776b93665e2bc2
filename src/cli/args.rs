//! The command line as clap parses it: every subcommand, flag and default.
//! `main.rs` dispatches; the commands' work lives in the sibling modules.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use secrecy::SecretString;
use stackpass_provider::Mode;

use super::{read_token_file, CliError, CredsArgs};
use crate::config::DEFAULT_CONFIG_FILE;
use crate::registry;

#[derive(Parser)]
#[command(
    name = "stackpass",
    version,
    about = "Short-lived cloud credentials for Pulumi and Terraform stacks, by Backstage identity"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// A PEM bundle of CA certificates to trust for the broker's https
    /// (a private CA), besides the public roots. Otherwise SSL_CERT_FILE,
    /// if set, is trusted the same way.
    #[arg(long, global = true, env = "STACKPASS_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the broker.
    Serve {
        #[arg(long, env = "STACKPASS_CONFIG", default_value = DEFAULT_CONFIG_FILE)]
        config: PathBuf,
        /// Overrides server.listen (use 127.0.0.1:0 for a random port).
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Ask a broker for credentials for a stack.
    Creds {
        #[command(flatten)]
        request: RequestArgs,
        /// json (the broker's answer), or a format of the provider's own
        /// (aws: env, credential-process; gcp: env, gcp-executable; azure: env,
        /// azure-oidc).
        #[arg(long, default_value = "json")]
        format: String,
        /// credentials (the cloud's credential) or federation (a subject token
        /// your tools exchange themselves). Default: what --format needs.
        #[arg(long, value_parser = parse_mode)]
        mode: Option<Mode>,
        /// Why you need access (shown to approvers when the rule needs approval).
        #[arg(long)]
        reason: Option<String>,
        /// Break-glass: issue now without approval, if the rule allows it; the
        /// reason is mandatory, and the issuance is flagged and announced.
        #[arg(long, value_name = "REASON")]
        break_glass: Option<String>,
        /// Ask the broker even if the credential cache has a fresh answer (and
        /// do not cache this one).
        #[arg(long)]
        no_cache: bool,
    },
    /// Run a command (pulumi up, terraform apply, …) with credentials for
    /// every provider the stack's grants cover, renewed while it runs. The
    /// stack: --stack, else the Pulumi project's selected stack, else the
    /// Terraform directory's cloud block or TF_WORKSPACE.
    #[command(trailing_var_arg = true)]
    Run {
        /// The stack, e.g. pulumi:acme/payments/dev [default: found from the
        /// current directory].
        #[arg(long, env = "STACKPASS_STACK")]
        stack: Option<String>,
        /// Only these providers (repeatable) [default: every provider whose
        /// rules allow the stack].
        #[arg(long = "provider")]
        providers: Vec<String>,
        /// How long each credential should last, e.g. 1h (capped by policy);
        /// they are renewed before they end either way.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// The broker's URL.
        #[arg(long, env = "STACKPASS_URL", default_value = "http://127.0.0.1:8080")]
        server: String,
        /// A file holding the identity token (otherwise STACKPASS_TOKEN).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Do not use the credential cache.
        #[arg(long)]
        no_cache: bool,
        /// The command and its arguments, after --.
        #[arg(required = true, value_name = "COMMAND", allow_hyphen_values = true)]
        command: Vec<std::ffi::OsString>,
    },
    /// Manage the CLI's credential cache.
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
    },
    /// List, approve or deny access requests.
    Approvals {
        #[command(subcommand)]
        command: ApprovalsCommand,
        /// The broker's URL.
        #[arg(
            long,
            global = true,
            env = "STACKPASS_URL",
            default_value = "http://127.0.0.1:8080"
        )]
        server: String,
        /// A file holding your identity token (otherwise STACKPASS_TOKEN).
        #[arg(long, global = true)]
        token_file: Option<PathBuf>,
    },
    /// Revoke or restore AI agents acting for people, and list revocations.
    Agents {
        #[command(subcommand)]
        command: AgentsCommand,
        /// The broker's URL.
        #[arg(
            long,
            global = true,
            env = "STACKPASS_URL",
            default_value = "http://127.0.0.1:8080"
        )]
        server: String,
        /// A file holding your identity token (otherwise STACKPASS_TOKEN).
        #[arg(long, global = true)]
        token_file: Option<PathBuf>,
    },
    /// Print what a cloud must be told to trust this broker (aws, gcp, azure),
    /// filled in from the configuration and the targets its rules name.
    Setup {
        provider: String,
        #[arg(long, env = "STACKPASS_CONFIG", default_value = DEFAULT_CONFIG_FILE)]
        config: PathBuf,
    },
    /// Manage signing keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Print the HTTP API's OpenAPI 3.1 document (what GET /openapi.json
    /// serves); `stackpass openapi > docs/openapi.json` regenerates the
    /// committed copy.
    Openapi,
    /// Work with configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Read the audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Test and explain policies.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Development helpers for the quickstart.
    Dev {
        #[command(subcommand)]
        command: DevCommand,
    },
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create a key set: a current and a next key for ES256 and for RS256, each
    /// a PKCS#8 PEM file (mode 0600) beside a keyset.json manifest. Refuses a
    /// directory that already holds a key set. With --out, writes one ES256 key
    /// instead (issuer.signing_key, the form from before key sets).
    Generate {
        /// The key set directory, created mode 0700 [default: stackpass-keys].
        #[arg(long, conflicts_with = "out")]
        dir: Option<PathBuf>,
        /// Make this existing ES256 key (e.g. issuer.signing_key) the current
        /// ES256 key, so the kid clouds already trust stays.
        #[arg(long, value_name = "FILE", conflicts_with = "out")]
        import_es256: Option<PathBuf>,
        /// Write a single ES256 key to FILE. Never overwrites.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Rotate with overlap, per algorithm: next becomes current, current retires
    /// (published until now + overlap), a new next key is made, retiring keys
    /// past their time are pruned. Running brokers pick it up by themselves.
    Rotate {
        #[command(flatten)]
        target: KeysTarget,
        /// Rotate only this algorithm [default: every algorithm in the set].
        #[arg(long, value_enum)]
        algorithm: Option<KeyAlgorithm>,
        /// How long the retiring key stays published [default: 24h]; never
        /// shorter than the longest token the broker signs (1h, or what
        /// --config's providers issue).
        #[arg(long, value_parser = humantime::parse_duration)]
        overlap: Option<Duration>,
        /// Promote next keys published less than an hour ago. Clouds cache the
        /// JWKS for up to an hour, so some may refuse tokens signed with a key
        /// they have not fetched yet: only for a key that must go now.
        #[arg(long)]
        force: bool,
    },
    /// Print each key's kid, algorithm, state and retire_after (no secrets).
    List {
        #[command(flatten)]
        target: KeysTarget,
    },
}

/// The key set a `keys` command works on.
#[derive(clap::Args)]
pub struct KeysTarget {
    /// The key set directory [default: --config's issuer.key_dir, else
    /// stackpass-keys].
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The broker's config: its issuer.key_dir, and the longest token it can
    /// sign, which a rotation's overlap must cover.
    #[arg(long, env = "STACKPASS_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum KeyAlgorithm {
    Es256,
    Rs256,
}

impl From<KeyAlgorithm> for stackpass_provider::SigningAlgorithm {
    fn from(algorithm: KeyAlgorithm) -> Self {
        match algorithm {
            KeyAlgorithm::Es256 => stackpass_provider::SigningAlgorithm::Es256,
            KeyAlgorithm::Rs256 => stackpass_provider::SigningAlgorithm::Rs256,
        }
    }
}

#[derive(Subcommand)]
pub enum CacheCommand {
    /// Delete every cached credential of yours.
    Clear,
    /// Print where the cache is.
    Path,
}

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Validate a configuration (and the files it names) without starting.
    Check {
        #[arg(long, env = "STACKPASS_CONFIG", default_value = DEFAULT_CONFIG_FILE)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum ApprovalsCommand {
    /// Ask for access to a stack whose rule needs approval.
    Request {
        #[arg(long)]
        stack: String,
        /// Default: the first provider this build has (aws in the default build).
        #[arg(long, default_value_t = registry::default_provider())]
        provider: String,
        /// At most this long; the approval covers no longer.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// credentials or federation: the approval covers only this mode
        /// [default: credentials].
        #[arg(long, value_parser = parse_mode)]
        mode: Option<Mode>,
        /// Why you need access; approvers see it.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Requests you may decide, and your own.
    List,
    /// Approve a request (never your own).
    Approve {
        id: String,
        #[arg(long)]
        note: Option<String>,
    },
    /// Deny a request.
    Deny {
        id: String,
        #[arg(long)]
        note: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum AgentsCommand {
    /// Stop AGENT acting for you (its act.sub, or a pattern such as
    /// component:agents/*); with --all-persons, for everyone (agent admins).
    /// Lists the credentials it already holds, which cannot be recalled.
    Revoke {
        agent: String,
        /// Revoke the agent for every person (needs an [agents] admin group).
        #[arg(long)]
        all_persons: bool,
        /// Why (mandatory with --all-persons).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Lift a revocation you made (with --all-persons: an admin's).
    Restore {
        agent: String,
        #[arg(long)]
        all_persons: bool,
    },
    /// Your revocations and every agent-wide one.
    List,
}

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Run policy test files offline; exit 1 if any case fails.
    Test {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Ask a broker what it would decide for a request, and why (nothing is issued).
    Explain {
        #[command(flatten)]
        request: RequestArgs,
    },
}

/// A credential request as `creds` and `policy explain` send it.
#[derive(clap::Args)]
pub struct RequestArgs {
    #[arg(long)]
    pub stack: String,
    /// Default: the first provider this build has (aws in the default build).
    #[arg(long, default_value_t = registry::default_provider())]
    pub provider: String,
    /// How long the credentials should last, e.g. 15m or 1h (capped by policy).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// The broker's URL.
    #[arg(long, env = "STACKPASS_URL", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// A file holding the identity token (otherwise STACKPASS_TOKEN).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
}

impl RequestArgs {
    pub fn into_creds(self) -> Result<CredsArgs, CliError> {
        let token = read_token(self.token_file.as_deref())?;
        Ok(CredsArgs {
            server: self.server,
            token,
            stack: self.stack,
            provider: self.provider,
            duration: self.duration,
            reason: None,
            break_glass: None,
            mode: None,
        })
    }
}

/// The identity token: from `--token-file`, else `STACKPASS_TOKEN`.
pub fn read_token(file: Option<&std::path::Path>) -> Result<SecretString, CliError> {
    match file {
        Some(path) => read_token_file(path),
        None => match std::env::var("STACKPASS_TOKEN") {
            Ok(token) if !token.trim().is_empty() => {
                Ok(SecretString::from(token.trim().to_owned()))
            }
            _ => Err(CliError::new(
                "no identity token",
                "pass --token-file FILE or set STACKPASS_TOKEN to your Backstage identity token",
            )),
        },
    }
}

#[derive(clap::Args)]
pub struct AuditTarget {
    #[arg(long, env = "STACKPASS_CONFIG", default_value = DEFAULT_CONFIG_FILE)]
    pub config: PathBuf,
    /// Audit store URL (sqlite://PATH or postgres://…); overrides the config's audit.url.
    #[arg(long)]
    pub database: Option<String>,
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Walk the hash chain; report the first broken link (exit 1) or a summary.
    Verify {
        #[command(flatten)]
        target: AuditTarget,
        /// Also check against a checkpoint kept earlier: a signed checkpoint
        /// (`audit checkpoint --sign`, or a file the server wrote to
        /// audit.checkpoint_dir), as text or a file path.
        #[arg(long)]
        from_checkpoint: Option<String>,
        /// The broker's JWKS (URL, e.g. https://HOST/.well-known/jwks.json, or
        /// a saved file) to check a signed checkpoint's signature with.
        #[arg(long)]
        jwks: Option<String>,
        /// Accept an unsigned checkpoint (a bare stackpass-checkpoint-v1 line):
        /// it proves only as much as the place it was kept.
        #[arg(long)]
        allow_unsigned: bool,
    },
    /// Print the chain's head, to keep somewhere the database's admins cannot edit.
    Checkpoint {
        #[command(flatten)]
        target: AuditTarget,
        /// Sign it with the broker's current issuer key (from --config), as a
        /// JWS that `audit verify --jwks` checks.
        #[arg(long)]
        sign: bool,
    },
    /// Write records as JSON lines (for SIEM ingestion), in chain order.
    Export {
        #[command(flatten)]
        target: AuditTarget,
        #[arg(long, value_enum, default_value = "ndjson")]
        format: ExportFormat,
        /// Only records at or after this RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
    },
    /// Delete records older than the retention period and seal the chain.
    Prune {
        #[command(flatten)]
        target: AuditTarget,
        /// Prune records recorded before this RFC 3339 time (default: now - audit.retention).
        #[arg(long)]
        before: Option<String>,
    },
    /// PostgreSQL: migrate as the schema's owner and grant the broker's runtime
    /// role append and read on the audit log, nothing that rewrites it.
    SetupPostgres {
        /// The database URL as the schema's owner (the migration-owner role).
        #[arg(long)]
        database: String,
        /// The existing login role the broker serves as (audit.url's user).
        #[arg(long)]
        runtime_role: String,
    },
    /// Print the most recent records as JSON lines, oldest first.
    List {
        #[command(flatten)]
        target: AuditTarget,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ExportFormat {
    Ndjson,
}

#[derive(Subcommand)]
pub enum DevCommand {
    /// Print an identity token from the configured development issuer.
    Token {
        #[arg(long)]
        user: String,
        #[arg(long, env = "STACKPASS_CONFIG", default_value = DEFAULT_CONFIG_FILE)]
        config: PathBuf,
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        lifetime: Duration,
        /// Make it an agent's token acting for --user.
        #[arg(long)]
        actor: Option<String>,
    },
}

fn parse_mode(text: &str) -> Result<Mode, String> {
    Mode::parse(text).ok_or_else(|| "use credentials or federation".to_owned())
}
