//! The `stackpass` binary: the broker (`serve`) and its CLI in one executable.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use stackpass::audit::AuditQuery;
use stackpass::cli::args::{
    AgentsCommand, ApprovalsCommand, AuditCommand, AuditTarget, CacheCommand, Cli, Command,
    ConfigCommand, DevCommand, ExportFormat, KeysCommand, PolicyCommand,
};
use stackpass::cli::cache::CredentialCache;
use stackpass::cli::{self, read_token, CliError, CredsArgs, DevTokenArgs};
use stackpass::config::Config;
use stackpass::issuer::{KeyDir, KeyEntry, Manifest, SigningKey};
use stackpass_provider::SigningAlgorithm;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(ca_file) = &cli.ca_file {
        cli::trust_broker_ca(ca_file.clone());
    }
    // The broker's configuration says how it logs and where its traces go, so
    // it is read before anything else; the CLI logs warnings as text.
    let server_config = match &cli.command {
        Command::Serve { config, .. } => match load_config(config) {
            Ok(config) => Some(config),
            Err(error) => {
                report(&error);
                return ExitCode::FAILURE;
            }
        },
        _ => None,
    };
    // Dropped last, after the runtime: flushes spans still queued for export.
    let _telemetry = match stackpass::telemetry::init(server_config.as_ref().map(|c| &c.telemetry))
    {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
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
    if let Command::Run {
        stack,
        providers,
        duration,
        server,
        token_file,
        no_cache,
        command,
    } = cli.command
    {
        let args = read_token(token_file.as_deref()).map(|token| cli::RunArgs {
            server,
            token,
            token_file,
            stack,
            providers,
            duration,
            cache: (!no_cache).then(CredentialCache::locate).flatten(),
            command,
        });
        return match args.map(|args| runtime.block_on(cli::run(args))) {
            Ok(Ok(code)) => ExitCode::from(code),
            Ok(Err(error)) | Err(error) => {
                eprintln!("{error}");
                ExitCode::FAILURE
            }
        };
    }
    let result = match (cli.command, server_config) {
        (Command::Serve { listen, .. }, Some(config)) => runtime.block_on(serve(config, listen)),
        (command, _) => runtime.block_on(run(command)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            report(&error);
            ExitCode::FAILURE
        }
    }
}

fn report(error: &anyhow::Error) {
    match error.downcast_ref::<CliError>() {
        Some(cli_error) => eprintln!("{cli_error}"),
        None => eprintln!("error: {error:#}"),
    }
}

fn load_config(path: &std::path::Path) -> anyhow::Result<Config> {
    Config::load(path).map_err(|e| {
        CliError::new(e.to_string(), "fix the keys listed above; `stackpass config check --config FILE` re-checks without starting").into()
    })
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve { .. } => unreachable!("serve is started from main with its configuration"),
        Command::Creds {
            request,
            format,
            mode,
            reason,
            break_glass,
            no_cache,
        } => {
            let printer = cli::Printer::new(&request.provider, &format, mode)?;
            let mut args = request.into_creds()?;
            args.reason = reason;
            args.break_glass = break_glass;
            let cache = (!no_cache).then(CredentialCache::locate).flatten();
            match cli::fetch_credentials(args, &printer, cache.as_ref()).await {
                Ok(text) => println!("{text}"),
                Err(error) => {
                    if let Some(text) = printer.failure(&error) {
                        println!("{text}");
                    }
                    return Err(error.into());
                }
            }
            Ok(())
        }
        Command::Run { .. } => unreachable!("run is dispatched in main, for its exit code"),
        Command::Cache { command } => {
            let cache = CredentialCache::locate().ok_or_else(|| {
                CliError::new(
                    "no cache directory: HOME and XDG_CACHE_HOME are unset",
                    "set STACKPASS_CACHE_DIR",
                )
            })?;
            match command {
                CacheCommand::Clear => {
                    let removed = cache.clear()?;
                    println!(
                        "removed {removed} cached credential(s) from {}",
                        cache.dir().display()
                    );
                }
                CacheCommand::Path => println!("{}", cache.dir().display()),
            }
            Ok(())
        }
        Command::Approvals {
            command,
            server,
            token_file,
        } => {
            let token = read_token(token_file.as_deref())?;
            let action = match command {
                ApprovalsCommand::Request {
                    stack,
                    provider,
                    duration,
                    mode,
                    reason,
                } => cli::ApprovalAction::Request(CredsArgs {
                    server: server.clone(),
                    token: token.clone(),
                    stack,
                    provider,
                    duration,
                    reason,
                    break_glass: None,
                    mode,
                }),
                ApprovalsCommand::List => cli::ApprovalAction::List,
                ApprovalsCommand::Approve { id, note } => cli::ApprovalAction::Approve { id, note },
                ApprovalsCommand::Deny { id, note } => cli::ApprovalAction::Deny { id, note },
            };
            println!("{}", cli::approvals(&server, &token, action).await?);
            Ok(())
        }
        Command::Agents {
            command,
            server,
            token_file,
        } => {
            let token = read_token(token_file.as_deref())?;
            let action = match command {
                AgentsCommand::Revoke {
                    agent,
                    all_persons,
                    reason,
                } => cli::AgentAction::Revoke {
                    agent,
                    all_persons,
                    reason,
                },
                AgentsCommand::Restore { agent, all_persons } => {
                    cli::AgentAction::Restore { agent, all_persons }
                }
                AgentsCommand::List => cli::AgentAction::List,
            };
            println!("{}", cli::agents(&server, &token, action).await?);
            Ok(())
        }
        Command::Policy { command } => match command {
            PolicyCommand::Test { files } => {
                let report = stackpass::policy::testing::run(&files);
                println!("{}", report.text);
                if report.failed > 0 {
                    return Err(CliError::new(
                        format!("{} policy test(s) failed", report.failed),
                        "each FAIL above says what was expected and what the policy decided",
                    )
                    .into());
                }
                Ok(())
            }
            PolicyCommand::Explain { request } => {
                println!("{}", cli::explain(request.into_creds()?).await?);
                Ok(())
            }
        },
        Command::Keys { command } => keys(command),
        Command::Openapi => {
            print!("{}", stackpass::api::openapi_json());
            Ok(())
        }
        Command::Config {
            command: ConfigCommand::Check { config },
        } => {
            let loaded = load_config(&config)?;
            let rules = stackpass::startup::check(&loaded)
                .map_err(|e| CliError::new(e.to_string(), "fix the file or key named above"))?;
            if let Some(tls) = &loaded.server.tls {
                stackpass::api::tls::check(tls)
                    .map_err(|e| CliError::new(e.to_string(), "fix the file named above"))?;
            }
            println!(
                "{}: ok ({} trusted issuer(s), {} rule(s), providers: {})",
                config.display(),
                loaded.identity.issuers.len(),
                rules,
                loaded
                    .providers
                    .keys()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            Ok(())
        }
        Command::Setup { provider, config } => {
            let loaded = load_config(&config)?;
            println!("{}", cli::trust_setup(&loaded, &provider)?);
            Ok(())
        }
        Command::Audit { command } => audit(command).await,
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

/// `stackpass keys …`: the key set on disk. Running brokers reload it by
/// themselves (or at once on SIGHUP).
fn keys(command: KeysCommand) -> anyhow::Result<()> {
    // Whole seconds: the manifest's times are for people to read.
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("0 is a valid nanosecond");
    match command {
        KeysCommand::Generate { out: Some(out), .. } => {
            let key = SigningKey::generate(&out)
                .map_err(|e| CliError::new(e.to_string(), "choose another --out path"))?;
            println!("wrote {} (kid {})", out.display(), key.kid());
            eprintln!("note: this is one ES256 key (issuer.signing_key); `stackpass keys generate --dir DIR` makes a key set with RS256 and rotation");
        }
        KeysCommand::Generate {
            dir, import_es256, ..
        } => {
            let dir = KeyDir::new(dir.unwrap_or_else(|| DEFAULT_KEY_DIR.into()));
            let import = import_es256
                .map(|path| {
                    SigningKey::load_file(&path, SigningAlgorithm::Es256).map_err(|e| {
                        CliError::new(e.to_string(), "--import-es256 takes the ES256 key the broker signs with today (issuer.signing_key)")
                    })
                })
                .transpose()?;
            let manifest = dir.create(import, now).map_err(|e| {
                CliError::new(
                    e.to_string(),
                    "choose another --dir, or rotate the existing key set",
                )
            })?;
            println!("wrote a key set to {}", dir.path().display());
            print_keys(&manifest, now);
            eprintln!(
                "next: set issuer.key_dir = \"{}\" (and remove issuer.signing_key)",
                dir.path().display()
            );
        }
        KeysCommand::Rotate {
            target,
            algorithm,
            overlap,
            force,
        } => {
            let (dir, config) = key_target(&target)?;
            let longest = config
                .as_ref()
                .map(stackpass::startup::longest_subject_token)
                .transpose()
                .map_err(|e| {
                    CliError::new(e.to_string(), "fix the configuration key named above")
                })?;
            let overlap = stackpass::issuer::choose_overlap(overlap, longest)
                .map_err(|e| CliError::plain(e.to_string()))?;
            let min_next_age = if force {
                Duration::ZERO
            } else {
                stackpass::issuer::JWKS_CACHE_MAX_AGE
            };
            let rotation = dir
                .rotate(algorithm.map(Into::into), overlap, min_next_age, now)
                .map_err(|e| CliError::new(e.to_string(), "nothing was changed"))?;
            println!(
                "rotated {} (overlap {})",
                dir.path().display(),
                humantime::format_duration(overlap)
            );
            print_keys(&rotation.manifest, now);
            for pruned in &rotation.pruned {
                println!(
                    "pruned {} {} (retired)",
                    pruned.kid,
                    pruned.algorithm.as_str()
                );
            }
            eprintln!("running brokers sign with the new current keys within issuer.key_reload_interval (30s by default), or at once on SIGHUP");
        }
        KeysCommand::List { target } => {
            let (dir, _) = key_target(&target)?;
            let manifest = dir
                .read_manifest()
                .map_err(|e| CliError::new(e.to_string(), "pass --dir DIR or --config FILE"))?;
            print_keys(&manifest, now);
        }
    }
    Ok(())
}

/// `issuer.key_dir`'s default.
const DEFAULT_KEY_DIR: &str = "stackpass-keys";

/// The key set `--dir` names, else `--config`'s `issuer.key_dir`, else the
/// default; and the config, if given.
fn key_target(
    target: &stackpass::cli::args::KeysTarget,
) -> anyhow::Result<(KeyDir, Option<Config>)> {
    let config = target.config.as_deref().map(load_config).transpose()?;
    let dir = match (&target.dir, &config) {
        (Some(dir), _) => dir.clone(),
        (None, Some(config)) => config.issuer.key_dir.clone(),
        (None, None) => DEFAULT_KEY_DIR.into(),
    };
    Ok((KeyDir::new(dir), config))
}

/// One line per key: kid, algorithm, state, retire_after. Public facts only.
fn print_keys(manifest: &Manifest, now: time::OffsetDateTime) {
    println!(
        "{:<43}  {:<9}  {:<8}  RETIRE_AFTER",
        "KID", "ALGORITHM", "STATE"
    );
    let mut keys: Vec<&KeyEntry> = manifest.keys.iter().collect();
    keys.sort_by_key(|k| (k.algorithm, k.state.rank_for_listing()));
    for key in keys {
        let retire_after = match key.state.retire_after() {
            Some(at) => {
                let text = at
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default();
                if at <= now {
                    format!("{text} (passed: pruned at the next rotation)")
                } else {
                    text
                }
            }
            None => "-".into(),
        };
        println!(
            "{:<43}  {:<9}  {:<8}  {retire_after}",
            key.kid,
            key.algorithm.as_str(),
            key.state.name()
        );
    }
}

/// Where an audit command reads: `--database`, or the config's audit store.
async fn open_audit(
    target: &AuditTarget,
) -> anyhow::Result<(stackpass::audit::SqlAuditStore, Option<Config>)> {
    let (url, busy_timeout, config) = match &target.database {
        Some(url) => (url.clone(), Duration::from_secs(5), None),
        None => {
            let config = load_config(&target.config)?;
            (
                config.audit.url.clone(),
                config.audit.busy_timeout,
                Some(config),
            )
        }
    };
    Ok((cli::audit::open_store(&url, busy_timeout).await?, config))
}

fn parse_time(flag: &str, value: &str) -> Result<time::OffsetDateTime, CliError> {
    time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339).map_err(
        |_| {
            CliError::new(
                format!("{flag} {value:?} is not an RFC 3339 time"),
                "write it like 2026-11-23T08:00:00Z",
            )
        },
    )
}

async fn audit(command: AuditCommand) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match command {
        AuditCommand::Verify {
            target,
            from_checkpoint,
            jwks,
            allow_unsigned,
        } => {
            let (store, _) = open_audit(&target).await?;
            let anchor = cli::audit::Anchor {
                checkpoint: from_checkpoint,
                jwks,
                allow_unsigned,
            };
            println!("{}", cli::audit::verify(&store, anchor).await?);
        }
        AuditCommand::Checkpoint { target, sign } => {
            let (store, _) = open_audit(&target).await?;
            let signer = if sign {
                let config = load_config(&target.config)?;
                let keys = stackpass::startup::load_signing_keys(&config).map_err(|e| {
                    CliError::new(
                        e.to_string(),
                        "sign on the broker's host, with its --config",
                    )
                })?;
                Some((keys, config.issuer_url()))
            } else {
                None
            };
            println!("{}", cli::audit::checkpoint(&store, signer).await?);
        }
        AuditCommand::Export {
            target,
            format: ExportFormat::Ndjson,
            since,
        } => {
            let (store, _) = open_audit(&target).await?;
            let query = AuditQuery {
                since: since.map(|s| parse_time("--since", &s)).transpose()?,
                ..AuditQuery::default()
            };
            let written = cli::audit::export(&store, query, &mut stdout).await?;
            eprintln!("exported {written} record(s)");
        }
        AuditCommand::Prune { target, before } => {
            let (store, config) = open_audit(&target).await?;
            let before =
                match (before, config.and_then(|c| c.audit.retention)) {
                    (Some(before), _) => parse_time("--before", &before)?,
                    (None, Some(retention)) => time::OffsetDateTime::now_utc() - retention,
                    (None, None) => return Err(CliError::new(
                        "no retention period to prune by",
                        "set audit.retention in the config (e.g. \"400d\") or pass --before TIME",
                    )
                    .into()),
                };
            println!("{}", cli::audit::prune(&store, before).await?);
        }
        AuditCommand::SetupPostgres {
            database,
            runtime_role,
        } => println!(
            "{}",
            cli::audit::setup_postgres(&database, &runtime_role).await?
        ),
        AuditCommand::List { target, limit } => {
            let (store, _) = open_audit(&target).await?;
            cli::audit::list(&store, limit, &mut stdout).await?;
        }
    }
    Ok(())
}

/// `/metrics` on a listener of its own, for the life of the process.
async fn serve_metrics(
    address: SocketAddr,
    handle: metrics_exporter_prometheus::PrometheusHandle,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(address).await.map_err(|e| {
        CliError::new(
            format!("could not listen on {address} for metrics: {e}"),
            "pick a free address for metrics.listen",
        )
    })?;
    let bound = listener
        .local_addr()
        .context("reading the metrics address")?;
    tracing::info!("metrics on http://{bound}/metrics");
    let router = stackpass::api::metrics_routes(handle);
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            tracing::error!(%error, "the metrics listener stopped");
        }
    });
    Ok(())
}

async fn serve(mut config: Config, listen: Option<SocketAddr>) -> anyhow::Result<()> {
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
    let broker = Arc::new(broker);
    stackpass::startup::spawn_policy_reloader(broker.clone(), &config);
    stackpass::startup::spawn_key_reloader(broker.clone(), &config);
    stackpass::startup::spawn_checkpoint_shipper(broker.clone(), &config);
    let mcp = stackpass::api::McpSettings::from_config(&config);
    let metrics = if config.metrics.enabled {
        Some(stackpass::metrics::install().context("installing the metrics recorder")?)
    } else {
        None
    };
    let api_metrics = match (config.metrics.listen, metrics) {
        (Some(address), Some(handle)) => {
            serve_metrics(address, handle).await?;
            None
        }
        (_, metrics) => metrics,
    };
    let draining = stackpass::api::Draining::default();
    let router = stackpass::api::router(broker, &config.server, mcp, api_metrics, draining.clone());
    let tls = match &config.server.tls {
        Some(tls) => Some(
            stackpass::api::tls::acceptor(tls)
                .map_err(|e| CliError::new(e.to_string(), "fix the file named above"))?,
        ),
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(issuer = %config.issuer_url(), "listening on {scheme}://{}", config.server.listen);
    let limits = stackpass::api::ConnectionLimits {
        max_connections: config.server.max_connections,
        header_read_timeout: config.server.header_read_timeout,
    };
    let timing = stackpass::api::ShutdownTiming {
        delay: config.server.shutdown_delay,
        drain_timeout: config.server.request_timeout,
    };
    stackpass::api::serve(listener, router, limits, tls, draining, timing)
        .await
        .context("serving HTTP")?;
    Ok(())
}
