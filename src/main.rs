//! The `stackpass` binary: the broker (`serve`) and its CLI in one executable.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use secrecy::SecretString;
use stackpass::audit::{AuditStore, SqliteAuditStore};
use stackpass::cli::{self, CliError, CredsArgs, DevTokenArgs, OutputFormat};
use stackpass::config::{Config, DEFAULT_CONFIG_FILE};
use stackpass::issuer::SigningKey;

#[derive(Parser)]
#[command(
    name = "stackpass",
    version,
    about = "Short-lived cloud credentials for Pulumi and Terraform stacks, by Backstage identity"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
        #[arg(long)]
        stack: String,
        #[arg(long, default_value = "aws")]
        provider: String,
        /// How long the credentials should last, e.g. 15m or 1h (capped by policy).
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        #[arg(long, value_enum, default_value = "json")]
        format: OutputFormat,
        /// The broker's URL.
        #[arg(long, env = "STACKPASS_URL", default_value = "http://127.0.0.1:8080")]
        server: String,
        /// A file holding the identity token (otherwise STACKPASS_TOKEN).
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// Manage signing keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
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
    /// Development helpers for the quickstart.
    Dev {
        #[command(subcommand)]
        command: DevCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a new ES256 signing key (PKCS#8 PEM, mode 0600). Never overwrites.
    Generate {
        #[arg(long, default_value = "stackpass-signing-key.pem")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a configuration (and the files it names) without starting.
    Check {
        #[arg(long, env = "STACKPASS_CONFIG", default_value = DEFAULT_CONFIG_FILE)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Print the most recent audit records as JSON lines, oldest first.
    List {
        #[arg(long, env = "STACKPASS_CONFIG", default_value = DEFAULT_CONFIG_FILE)]
        config: PathBuf,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
}

#[derive(Subcommand)]
enum DevCommand {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(matches!(cli.command, Command::Serve { .. }));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            match error.downcast_ref::<CliError>() {
                Some(cli_error) => eprintln!("{cli_error}"),
                None => eprintln!("error: {error:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(server: bool) {
    let default = if server { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("STACKPASS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn load_config(path: &std::path::Path) -> anyhow::Result<Config> {
    Config::load(path).map_err(|e| {
        CliError::new(e.to_string(), "fix the keys listed above; `stackpass config check --config FILE` re-checks without starting").into()
    })
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config, listen } => serve(&config, listen).await,
        Command::Creds {
            stack,
            provider,
            duration,
            format,
            server,
            token_file,
        } => {
            let token = match token_file {
                Some(path) => cli::read_token_file(&path)?,
                None => match std::env::var("STACKPASS_TOKEN") {
                    Ok(token) if !token.trim().is_empty() => SecretString::from(token.trim().to_owned()),
                    _ => {
                        return Err(CliError::new(
                            "no identity token",
                            "pass --token-file FILE or set STACKPASS_TOKEN to your Backstage identity token",
                        )
                        .into())
                    }
                },
            };
            let output = cli::fetch_credentials(CredsArgs {
                server,
                token,
                stack,
                provider,
                duration,
                format,
            })
            .await?;
            println!("{output}");
            Ok(())
        }
        Command::Keys {
            command: KeysCommand::Generate { out },
        } => {
            let key = SigningKey::generate(&out)
                .map_err(|e| CliError::new(e.to_string(), "choose another --out path"))?;
            println!("wrote {} (kid {})", out.display(), key.kid());
            Ok(())
        }
        Command::Config {
            command: ConfigCommand::Check { config },
        } => {
            let loaded = load_config(&config)?;
            stackpass::startup::check(&loaded)
                .map_err(|e| CliError::new(e.to_string(), "fix the file or key named above"))?;
            println!(
                "{}: ok ({} trusted issuer(s), {} rule(s), providers: {})",
                config.display(),
                loaded.identity.issuers.len(),
                loaded.policy.rules.len(),
                loaded
                    .providers
                    .enabled()
                    .iter()
                    .map(|p| p.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            Ok(())
        }
        Command::Audit {
            command: AuditCommand::List { config, limit },
        } => {
            let loaded = load_config(&config)?;
            let path = loaded.audit.sqlite_path().ok_or_else(|| {
                CliError::new(
                    "audit.url is not a sqlite:// URL",
                    "set audit.url = \"sqlite://PATH\"",
                )
            })?;
            let store = SqliteAuditStore::open(&path, loaded.audit.busy_timeout)
                .await
                .map_err(|e| CliError::new(e.to_string(), "check audit.url"))?;
            for record in store
                .recent(limit)
                .await
                .map_err(|e| CliError::plain(e.to_string()))?
            {
                println!("{}", serde_json::to_string(&record)?);
            }
            Ok(())
        }
        Command::Dev {
            command:
                DevCommand::Token {
                    user,
                    config,
                    lifetime,
                    actor,
                },
        } => {
            let loaded = load_config(&config)?;
            println!(
                "{}",
                cli::dev_token(
                    &loaded,
                    &DevTokenArgs {
                        user,
                        lifetime,
                        actor
                    }
                )?
            );
            Ok(())
        }
    }
}

async fn serve(config_path: &std::path::Path, listen: Option<SocketAddr>) -> anyhow::Result<()> {
    let mut config = load_config(config_path)?;
    if let Some(listen) = listen {
        config.server.listen = listen;
    }
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .map_err(|e| {
            CliError::new(
                format!("could not listen on {}: {e}", config.server.listen),
                "pick a free address with --listen",
            )
        })?;
    // With port 0 the real port is only known now, and the issuer URL derives from it.
    config.server.listen = listener.local_addr().context("reading the bound address")?;
    let broker = stackpass::startup::build_broker(&config)
        .await
        .map_err(|e| CliError::new(e.to_string(), "fix the configuration key named above"))?;
    let router = stackpass::api::router(Arc::new(broker), &config.server);
    tracing::info!(issuer = %config.issuer_url(), "listening on http://{}", config.server.listen);
    stackpass::api::serve(listener, router)
        .await
        .context("serving HTTP")?;
    Ok(())
}
