//! Turns a validated [`Config`] into a running [`Broker`]: loads keys and files,
//! opens the audit store, builds the catalog, stack source and providers. Anything
//! that can fail at start fails here, with the config key that caused it.

use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use stackpass_provider::SigningAlgorithm;

use crate::approvals::SqlApprovalStore;
use crate::audit::{AuditStore, SqlAuditStore};
use crate::broker::limits::{LimitSettings, Limits, Rate};
use crate::broker::{Broker, BrokerParts};
use crate::catalog::{
    BackstageCatalog, BackstageCatalogSettings, Catalog, CatalogError, StaticCatalog,
};
use crate::config::{
    CatalogKind, Config, ConfigError, IssuerKind, RemoteStacksConfig, StackSourceConfig, StacksKind,
};
use crate::database::{Database, DatabaseError};
use crate::http_client::{self, TlsTrust};
use crate::identity::machines::{
    GithubActionsMapping, GitlabCiMapping, HcpTerraformMapping, KubernetesMapping,
    PulumiDeploymentsMapping, StackComponents,
};
use crate::identity::{
    CatalogEntityMapping, ClaimMapping, FetchSettings, KeySource, RemoteJwks, StaticKeys,
    TrustedIssuer, Verifier,
};
use crate::issuer::{
    Issuer, IssuerError, KeyDir, KeyRing, KeySetError, SigningKey, SigningKeyError,
    SigningKeySource, MANIFEST,
};
use crate::notify;
use crate::policy::{
    expand_paths, load_policy_set, AgentBoundsConfig, LoadedPolicy, PolicyError, RuleConfig,
    ValidationContext,
};
use crate::registry::Providers;
use crate::stacks::{
    hcp_terraform, pulumi_cloud, ByTool, CacheSettings, Cached, ComponentTags, HcpTerraform,
    HcpTerraformSettings, PulumiCloud, PulumiCloudSettings, StackSource, StackSourceError,
    StaticStackRegistry,
};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("issuer.signing_key: {0}")]
    SigningKey(#[from] SigningKeyError),
    #[error("issuer.key_dir: {0}")]
    KeySet(#[from] KeySetError),
    #[error("issuer: {0}")]
    Issuer(IssuerError),
    #[error("providers.{provider}: signs subject tokens with {algorithm}, but {missing}")]
    MissingAlgorithm {
        provider: String,
        algorithm: SigningAlgorithm,
        missing: String,
    },
    #[error("identity.issuers[{index}].key_file: {error}")]
    DevelopmentKey {
        index: usize,
        error: SigningKeyError,
    },
    #[error("catalog: {0}")]
    Catalog(#[from] CatalogError),
    #[error("catalog.token_file: could not read {path}: {message}")]
    CatalogToken { path: String, message: String },
    #[error("{key}: {error}")]
    Tls {
        key: String,
        error: crate::http_client::TlsTrustError,
    },
    #[error("stacks: {0}")]
    Stacks(#[from] StackSourceError),
    #[error("stacks.{tool}.token_file: could not read {path}: {message}")]
    StacksToken {
        tool: &'static str,
        path: String,
        message: String,
    },
    #[error("{0}")]
    Policy(#[from] PolicyError),
    #[error("{0}")]
    Providers(#[from] ConfigError),
    #[error("audit.url: {0}")]
    Database(#[from] DatabaseError),
    #[error("server.listen: a development issuer is configured, so the broker only listens on loopback addresses; remove the development issuer to listen on {0}")]
    DevelopmentOnLoopbackOnly(std::net::SocketAddr),
}

pub async fn build_broker(config: &Config) -> Result<Broker, StartupError> {
    if config.development_issuer().is_some() && !config.server.listen.ip().is_loopback() {
        return Err(StartupError::DevelopmentOnLoopbackOnly(
            config.server.listen,
        ));
    }
    let keys = key_source(config, true)?.expect("created when missing");
    let catalog = build_catalog(config)?;
    let (stacks, component_tags) = load_stacks(config)?;
    let verifier = build_verifier(config, &catalog, &stacks, &component_tags)?;
    let providers = config.providers()?;
    let issuer = Issuer::load(
        keys,
        config.issuer_url(),
        config.issuer.token_lifetime,
        providers
            .iter()
            .flat_map(|p| p.claims_supported().iter().copied())
            .collect(),
    )
    .map_err(keys_error)?;
    check_algorithms(config, &providers, &issuer.keys(), issuer.key_source())?;
    let policy = load_policy(config, &providers)?;
    // Access requests live beside the audit log: one database, one failure domain.
    let db = Database::open(&config.audit.url, config.audit.busy_timeout).await?;
    if let Some(warning) = crate::audit::history_rewritable(&db).await {
        tracing::warn!("{warning}");
    }
    let audit: Arc<dyn AuditStore> = Arc::new(SqlAuditStore::new(db.clone()));
    // Notifications are delivered from the audit log by a background dispatcher.
    let notifier = notify::start(&config.notifications, db.clone(), audit.clone());
    Ok(Broker::new(BrokerParts {
        verifier,
        catalog,
        stacks,
        rules: policy.rules,
        agents: policy.agents,
        issuer,
        providers,
        audit,
        approvals: Arc::new(SqlApprovalStore::new(db.clone())),
        revocations: Arc::new(crate::revocations::SqlRevocationStore::new(db)),
        agent_admin_groups: config.agents.admin_groups.clone(),
        notifier,
        auditor_groups: config.audit.auditor_groups.clone(),
        component_tags,
        environment_tag: config.stacks.environment_tag.clone(),
        cloud_budget: config.cloud_budget(),
        limits: start_limits(config),
    }))
}

/// `[limits]`, with the task that forgets idle keys every minute (so a
/// limiter's memory follows the clients active in the last minute or so).
fn start_limits(config: &Config) -> Arc<Limits> {
    let rate = |per_minute, burst| Rate { per_minute, burst };
    let limits = &config.limits;
    let limits = Arc::new(Limits::new(LimitSettings {
        issuance_per_principal: rate(
            limits.issuance_per_principal_per_minute,
            limits.issuance_per_principal_burst,
        ),
        issuance_per_address: rate(
            limits.issuance_per_address_per_minute,
            limits.issuance_per_address_burst,
        ),
        auth_failures_per_address: rate(
            limits.auth_failures_per_address_per_minute,
            limits.auth_failures_per_address_burst,
        ),
        max_tracked_keys: limits.max_tracked_keys,
    }));
    let pruned = Arc::downgrade(&limits);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(60));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            every.tick().await;
            let Some(limits) = pruned.upgrade() else {
                return;
            };
            limits.prune();
        }
    });
    limits
}

/// With `audit.checkpoint_dir` set, writes a signed checkpoint there every
/// `audit.checkpoint_interval` (see `audit::spawn_checkpoint_shipper`).
pub fn spawn_checkpoint_shipper(broker: Arc<Broker>, config: &Config) {
    let Some(dir) = config.audit.checkpoint_dir.clone() else {
        return;
    };
    let keys = broker.clone();
    crate::audit::spawn_checkpoint_shipper(
        broker.audit_store(),
        Box::new(move || keys.issuer().keys()),
        config.issuer_url(),
        dir,
        config.audit.checkpoint_interval,
    );
}

/// The signing keys the configuration names, for signing outside the server
/// (`stackpass audit checkpoint --sign`). Never creates keys.
pub fn load_signing_keys(config: &Config) -> Result<KeyRing, StartupError> {
    let source = key_source(config, false)?.ok_or_else(|| KeySetError::Missing {
        dir: config.issuer.key_dir.display().to_string(),
    })?;
    Ok(source
        .load(time::OffsetDateTime::now_utc())
        .map_err(keys_error)?
        .unwrap_or_else(|| KeyRing::new(Vec::new())))
}

fn keys_error(error: IssuerError) -> StartupError {
    match error {
        IssuerError::KeySet(e) => StartupError::KeySet(e),
        IssuerError::Key(e) => StartupError::SigningKey(e),
        other => StartupError::Issuer(other),
    }
}

/// Where the broker's signing keys come from:
///
/// - `issuer.signing_key` set (and not a development setup): that one ES256 key,
///   as before key sets;
/// - otherwise the key set in `issuer.key_dir`;
/// - with neither, the former default key file `stackpass-signing-key.pem`
///   beside the config, if it exists (configurations that never named their key).
///
/// `create_key_if_missing` (development) always uses a key set, creating it on
/// first start (when `create`) and importing `signing_key` (created first if
/// missing) or the former default file as its ES256 current key, so that key's
/// kid survives. `None`: a development key set that does not exist yet and may
/// not be created here (`config check`).
fn key_source(config: &Config, create: bool) -> Result<Option<SigningKeySource>, StartupError> {
    let issuer = &config.issuer;
    let dir = KeyDir::new(&issuer.key_dir);
    if issuer.create_key_if_missing {
        if dir.exists() {
            return Ok(Some(SigningKeySource::Dir(dir)));
        }
        if !create {
            return Ok(None);
        }
        let import = match &issuer.signing_key {
            Some(path) => {
                SigningKey::load_or_generate(path)?;
                Some(SigningKey::load_file(path, SigningAlgorithm::Es256)?)
            }
            None if issuer.former_default_key.exists() => Some(SigningKey::load_file(
                &issuer.former_default_key,
                SigningAlgorithm::Es256,
            )?),
            None => None,
        };
        let now = time::OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .expect("0 is a valid nanosecond");
        dir.create(import, now)?;
        tracing::warn!(key_dir = %dir.path().display(), "created a development key set (create_key_if_missing)");
        return Ok(Some(SigningKeySource::Dir(dir)));
    }
    if let Some(path) = &issuer.signing_key {
        if dir.exists() {
            tracing::warn!(signing_key = %path.display(), key_dir = %dir.path().display(),
                "issuer.signing_key is set, so only that ES256 key is used and the key set in issuer.key_dir is not; remove issuer.signing_key to use the key set");
        }
        return Ok(Some(SigningKeySource::File(path.clone())));
    }
    if dir.exists() {
        return Ok(Some(SigningKeySource::Dir(dir)));
    }
    if issuer.former_default_key.exists() {
        tracing::warn!(signing_key = %issuer.former_default_key.display(),
            "no key set in issuer.key_dir: using the former default signing key (ES256 only); move it into a key set with `stackpass keys generate --dir {} --import-es256 {}`",
            dir.path().display(), issuer.former_default_key.display());
        return Ok(Some(SigningKeySource::File(
            issuer.former_default_key.clone(),
        )));
    }
    Err(KeySetError::Missing {
        dir: dir.path().display().to_string(),
    }
    .into())
}

/// Every configured provider's algorithm has a current key.
fn check_algorithms(
    config: &Config,
    providers: &Providers,
    ring: &KeyRing,
    source: &SigningKeySource,
) -> Result<(), StartupError> {
    for provider in providers.iter() {
        let algorithm = provider.signing_algorithm();
        if ring.current(algorithm).is_some() {
            continue;
        }
        let missing = match source {
            SigningKeySource::File(path) => format!(
                "the broker signs with one ES256 key ({}); move it into a key set that keeps its kid with `stackpass keys generate --dir {} --import-es256 {}`, then remove issuer.signing_key",
                path.display(),
                config.issuer.key_dir.display(),
                path.display()
            ),
            SigningKeySource::Dir(dir) => format!(
                "the key set in {} has no current {algorithm} key; restore its {MANIFEST} from a backup",
                dir.path().display()
            ),
            SigningKeySource::Fixed => format!("no {algorithm} key is loaded"),
        };
        return Err(StartupError::MissingAlgorithm {
            provider: provider.kind().to_string(),
            algorithm,
            missing,
        });
    }
    Ok(())
}

/// The longest subject token this configuration can sign: the exchange
/// lifetime, or a federation-mode token as long as the longest grant any
/// configured provider issues. A retiring key must stay published that long.
pub fn longest_subject_token(config: &Config) -> Result<Duration, StartupError> {
    Ok(config
        .providers()?
        .iter()
        .map(|p| p.limits().max_duration)
        .fold(config.issuer.token_lifetime, Duration::max))
}

/// One trusted issuer per `[[identity.issuers]]`. Remote issuers fetch keys
/// lazily, on the first token they see, so a Backstage outage does not stop the
/// broker; a development issuer's key is created on first start.
fn build_verifier(
    config: &Config,
    catalog: &Arc<dyn Catalog>,
    stacks: &Arc<dyn StackSource>,
    component_tags: &ComponentTags,
) -> Result<Verifier, StartupError> {
    let identity = &config.identity;
    let fetch = FetchSettings {
        refresh_interval: identity.jwks_refresh_interval,
        min_refetch_interval: identity.jwks_min_refetch_interval,
        max_key_age: identity.jwks_max_key_age,
        timeout: identity.fetch_timeout,
    };
    let mut issuers = Vec::new();
    for (index, issuer) in identity.issuers.iter().enumerate() {
        let issuer_id = issuer.issuer_id().expect("validated: issuers have an id");
        let keys: Arc<dyn KeySource> = match (issuer.kind, &issuer.key_file) {
            (IssuerKind::Development, Some(path)) => {
                let key = SigningKey::load_or_generate(path)
                    .map_err(|error| StartupError::DevelopmentKey { index, error })?;
                tracing::warn!(issuer = %issuer.name, "a development issuer is trusted: anyone who can read its key file can sign in as anyone");
                Arc::new(StaticKeys::new(key.kid().to_owned(), key.decoding_key()))
            }
            _ => Arc::new(RemoteJwks::new(
                issuer
                    .discovery()
                    .expect("validated: remote issuers have a discovery URL"),
                issuer_id.clone(),
                fetch,
                http_client::build_trusting(identity.fetch_timeout, &issuer.tls_trust()).map_err(
                    |error| StartupError::Tls {
                        key: format!("identity.issuers[{index}].ca_file"),
                        error,
                    },
                )?,
                issuer.insecure_allow_http,
            )),
        };
        issuers.push(TrustedIssuer {
            name: issuer.name.clone(),
            issuer: issuer_id,
            audiences: issuer.accepted_audiences(),
            algorithms: issuer
                .parsed_algorithms()
                .expect("validated: algorithms parse"),
            leeway: issuer.leeway,
            max_token_lifetime: issuer.max_token_lifetime,
            keys,
            mapping: claim_mapping(issuer, catalog, stacks, component_tags),
            token_type: issuer.token_type().map(str::to_owned),
            subjects: issuer
                .parsed_subjects()
                .expect("validated: subject patterns parse"),
            users_only: issuer.kind == IssuerKind::Backstage,
            dedicated_audience: issuer.dedicated_audience.clone(),
            agents: issuer.agents,
        });
    }
    Ok(Verifier::new(issuers, identity.max_token_bytes))
}

/// How the issuer's claims become a principal: Backstage-style `sub` for
/// people and services, a catalog or stack lookup for machine callers.
fn claim_mapping(
    issuer: &crate::config::TrustedIssuerConfig,
    catalog: &Arc<dyn Catalog>,
    stacks: &Arc<dyn StackSource>,
    component_tags: &ComponentTags,
) -> Arc<dyn ClaimMapping> {
    let stack_components = || StackComponents {
        stacks: stacks.clone(),
        component_tags: component_tags.clone(),
    };
    let validated = "validated: machine issuers have their pins";
    match issuer.kind {
        IssuerKind::Backstage | IssuerKind::Oidc | IssuerKind::Development => {
            Arc::new(CatalogEntityMapping)
        }
        IssuerKind::GithubActions => Arc::new(GithubActionsMapping {
            catalog: catalog.clone(),
            owner_ids: issuer.repository_owner_ids.clone().expect(validated),
            events: issuer.github_events(),
            web_url: issuer.run_web_url(),
        }),
        IssuerKind::GitlabCi => Arc::new(GitlabCiMapping {
            catalog: catalog.clone(),
            namespace_ids: issuer.namespace_ids.clone().expect(validated),
            sources: issuer.gitlab_sources(),
            web_url: issuer.run_web_url().expect(validated),
        }),
        IssuerKind::PulumiDeployments => Arc::new(PulumiDeploymentsMapping {
            stacks: stack_components(),
            organizations: issuer.audiences.clone().expect(validated),
        }),
        IssuerKind::HcpTerraform => Arc::new(HcpTerraformMapping {
            stacks: stack_components(),
            organization_ids: issuer.organization_ids.clone().expect(validated),
            web_url: issuer.run_web_url().expect(validated),
        }),
        IssuerKind::Kubernetes => Arc::new(KubernetesMapping {
            service_accounts: issuer.service_accounts.clone().expect(validated),
        }),
    }
}

/// The stack source in force: each tool's own `[stacks.<tool>]` source, else
/// `[stacks]`' static registry, else none (that tool has no stacks); and the
/// component tag of each.
fn load_stacks(config: &Config) -> Result<(Arc<dyn StackSource>, ComponentTags), StartupError> {
    let stacks = &config.stacks;
    let shared: Option<Arc<dyn StackSource>> = match stacks.kind {
        Some(StacksKind::Static) => Some(Arc::new(StaticStackRegistry::load(
            stacks
                .file
                .as_deref()
                .expect("validated: static stacks have a file"),
        )?)),
        None => None,
    };
    let mut tags = ComponentTags::same(&stacks.component_tag);
    let source_of = |tool: &'static str,
                     own: &Option<StackSourceConfig>,
                     tag: &mut String|
     -> Result<Option<Arc<dyn StackSource>>, StartupError> {
        match own {
            Some(own) => {
                *tag = own.component_tag().to_owned();
                build_stack_source(tool, own).map(Some)
            }
            None => Ok(shared.clone()),
        }
    };
    let pulumi = source_of("pulumi", &stacks.pulumi, &mut tags.pulumi)?;
    let terraform = source_of("terraform", &stacks.terraform, &mut tags.terraform)?;
    Ok((Arc::new(ByTool { pulumi, terraform }), tags))
}

fn build_stack_source(
    tool: &'static str,
    config: &StackSourceConfig,
) -> Result<Arc<dyn StackSource>, StartupError> {
    Ok(match config {
        StackSourceConfig::Static(s) => Arc::new(StaticStackRegistry::load(&s.file)?),
        StackSourceConfig::PulumiCloud(remote) => {
            let source = PulumiCloud::new(PulumiCloudSettings {
                url: remote_url(remote, pulumi_cloud::DEFAULT_URL),
                token: stacks_token(tool, remote)?,
                http: stacks_http(tool, remote)?,
            });
            Arc::new(Cached::new(source, "pulumi-cloud", cache_settings(remote)))
        }
        StackSourceConfig::HcpTerraform(remote) => {
            let source = HcpTerraform::new(HcpTerraformSettings {
                url: remote_url(remote, hcp_terraform::DEFAULT_URL),
                token: stacks_token(tool, remote)?,
                http: stacks_http(tool, remote)?,
                project_tags: remote
                    .project_tags
                    .clone()
                    .unwrap_or_else(|| vec![remote.component_tag.clone()]),
            });
            Arc::new(Cached::new(source, "hcp-terraform", cache_settings(remote)))
        }
    })
}

fn remote_url(remote: &RemoteStacksConfig, default: &str) -> url::Url {
    remote
        .url
        .clone()
        .unwrap_or_else(|| url::Url::parse(default).expect("the default URL parses"))
}

fn cache_settings(remote: &RemoteStacksConfig) -> CacheSettings {
    CacheSettings {
        ttl: remote.cache_ttl,
        stale_window: remote.stale_window,
        negative_ttl: remote.negative_ttl(),
        capacity: remote.cache_capacity,
    }
}

fn stacks_tls(remote: &RemoteStacksConfig) -> TlsTrust {
    TlsTrust {
        ca_file: remote.ca_file.clone(),
        public_roots: remote.trust_public_roots,
    }
}

fn stacks_http(
    tool: &'static str,
    remote: &RemoteStacksConfig,
) -> Result<reqwest::Client, StartupError> {
    http_client::build_trusting(remote.timeout, &stacks_tls(remote)).map_err(|error| {
        StartupError::Tls {
            key: format!("stacks.{tool}.ca_file"),
            error,
        }
    })
}

/// The source's token: inline (or from the environment), else its file.
fn stacks_token(
    tool: &'static str,
    remote: &RemoteStacksConfig,
) -> Result<SecretString, StartupError> {
    if let Some(token) = &remote.token {
        return Ok(token.clone());
    }
    let path = remote
        .token_file
        .as_ref()
        .expect("validated: a remote stack source has a token or token_file");
    let error = |message: String| StartupError::StacksToken {
        tool,
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(error("the file is empty".into()));
    }
    Ok(SecretString::from(token.to_owned()))
}

/// The config's rules and agent bounds and the policy files', validated
/// together against the configured providers.
pub fn load_policy(config: &Config, providers: &Providers) -> Result<LoadedPolicy, PolicyError> {
    load_policy_set(
        &config.policy.rules,
        &config.policy.agents,
        &config.policy.files,
        &validation_context(config, providers),
    )
}

fn validation_context(config: &Config, providers: &Providers) -> ValidationContext {
    ValidationContext {
        environment_tag: config.stacks.environment_tag.clone(),
        providers: providers.clone(),
    }
}

fn load_static_catalog(config: &Config) -> Result<StaticCatalog, StartupError> {
    let file = config.catalog.file.as_deref();
    Ok(StaticCatalog::load(
        file.expect("validated: static catalogs have a file"),
    )?)
}

fn build_catalog(config: &Config) -> Result<Arc<dyn Catalog>, StartupError> {
    let catalog = &config.catalog;
    Ok(match catalog.kind {
        CatalogKind::Static => Arc::new(load_static_catalog(config)?),
        CatalogKind::Backstage => {
            let token = match (&catalog.token, &catalog.token_file) {
                (Some(token), _) => Some(token.clone()),
                (None, Some(path)) => Some(SecretString::from(
                    std::fs::read_to_string(path)
                        .map_err(|e| StartupError::CatalogToken {
                            path: path.display().to_string(),
                            message: e.to_string(),
                        })?
                        .trim()
                        .to_owned(),
                )),
                (None, None) => None,
            };
            Arc::new(BackstageCatalog::new(BackstageCatalogSettings {
                base_url: catalog
                    .url
                    .clone()
                    .expect("validated: the Backstage catalog has a URL"),
                token,
                cache_ttl: catalog.cache_ttl,
                cache_capacity: catalog.cache_capacity,
                http: http_client::build_trusting(catalog.timeout, &catalog_tls(config))
                    .map_err(catalog_tls_error)?,
            }))
        }
    })
}

fn catalog_tls(config: &Config) -> TlsTrust {
    TlsTrust {
        ca_file: config.catalog.ca_file.clone(),
        public_roots: config.catalog.trust_public_roots,
    }
}

fn catalog_tls_error(error: crate::http_client::TlsTrustError) -> StartupError {
    StartupError::Tls {
        key: "catalog.ca_file".into(),
        error,
    }
}

/// Every configured CA bundle reads and holds certificates.
fn check_ca_bundles(config: &Config) -> Result<(), StartupError> {
    for (index, issuer) in config.identity.issuers.iter().enumerate() {
        issuer
            .tls_trust()
            .certificates()
            .map_err(|error| StartupError::Tls {
                key: format!("identity.issuers[{index}].ca_file"),
                error,
            })?;
    }
    if config.catalog.kind == CatalogKind::Backstage {
        catalog_tls(config)
            .certificates()
            .map_err(catalog_tls_error)?;
    }
    for (tool, source) in config.stacks.tool_sources() {
        if let StackSourceConfig::PulumiCloud(remote) | StackSourceConfig::HcpTerraform(remote) =
            source
        {
            stacks_tls(remote)
                .certificates()
                .map_err(|error| StartupError::Tls {
                    key: format!("stacks.{tool}.ca_file"),
                    error,
                })?;
        }
    }
    Ok(())
}

/// What `stackpass config check` verifies beyond the config file itself: the files
/// it names load (CA bundles included), the policy validates, the signing keys
/// load and every provider's algorithm has one. No network, no writes. Returns
/// the number of rules.
pub fn check(config: &Config) -> Result<usize, StartupError> {
    check_ca_bundles(config)?;
    let providers = config.providers()?;
    if let Some(source) = key_source(config, false)? {
        let ring = source
            .load(time::OffsetDateTime::now_utc())
            .map_err(keys_error)?
            .expect("keys from disk");
        check_algorithms(config, &providers, &ring, &source)?;
    }
    if config.catalog.kind == CatalogKind::Static {
        load_static_catalog(config)?;
    }
    load_stacks(config)?;
    Ok(load_policy(config, &providers)?.rules.len())
}

/// Watches the policy files: on SIGHUP, or when their contents change (checked
/// every `policy.reload_interval`), loads and validates them again. A valid
/// policy replaces the old one as a whole; an invalid one is rejected, logged and
/// audited, and the old policy keeps serving.
pub fn spawn_policy_reloader(broker: Arc<Broker>, config: &Config) {
    if config.policy.files.is_empty() {
        return;
    }
    let source = Arc::new(PolicySource {
        rules: config.policy.rules.clone(),
        agents: config.policy.agents.clone(),
        files: config.policy.files.clone(),
        context: validation_context(config, broker.providers()),
    });
    let watched = source.clone();
    spawn_watch(
        config.policy.reload_interval,
        move || watched.fingerprint(),
        "a policy file changed",
        move |reason| {
            let (broker, source) = (broker.clone(), source.clone());
            async move { reload(&broker, &source, reason).await }
        },
    );
}

/// Calls `reload` with the reason on SIGHUP, and whenever `fingerprint`
/// changes (checked every `interval`): the one watch loop the policy and key
/// reloaders share.
fn spawn_watch<Fingerprint, Reload, Reloaded>(
    interval: Duration,
    fingerprint: impl Fn() -> Fingerprint + Send + 'static,
    changed: &'static str,
    mut reload: Reload,
) where
    Fingerprint: PartialEq + Send + 'static,
    Reload: FnMut(&'static str) -> Reloaded + Send + 'static,
    Reloaded: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seen = fingerprint();
        loop {
            #[cfg(unix)]
            let hangup_received = async {
                match hangup.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hangup_received = std::future::pending::<Option<()>>();
            let reason = tokio::select! {
                _ = hangup_received => "SIGHUP",
                _ = ticker.tick() => {
                    if fingerprint() == seen {
                        continue;
                    }
                    changed
                }
            };
            seen = fingerprint();
            reload(reason).await;
        }
    });
}

struct PolicySource {
    rules: Vec<RuleConfig>,
    agents: Vec<AgentBoundsConfig>,
    files: Vec<std::path::PathBuf>,
    context: ValidationContext,
}

impl PolicySource {
    /// A digest of every policy file's name and contents (missing files included),
    /// so edits, additions, removals and atomic renames are all noticed.
    fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut digest = Sha256::new();
        for file in expand_paths(&self.files).unwrap_or_default() {
            digest.update(file.display().to_string().as_bytes());
            digest.update(std::fs::read(&file).unwrap_or_default());
        }
        format!("{:x}", digest.finalize())
    }
}

async fn reload(broker: &Broker, source: &PolicySource, reason: &str) {
    let loaded = load_policy_set(
        &source.rules,
        &source.agents,
        &source.files,
        &source.context,
    )
    .map_err(|e| e.problems.iter().map(ToString::to_string).collect());
    if let Err(e) = broker.reload_policy(reason, loaded).await {
        tracing::error!(error = %e, "could not audit a policy reload");
    }
}

/// Watches the signing keys: on SIGHUP, or when the key set's manifest changes
/// (checked every `issuer.key_reload_interval`), reads them again. Keys that
/// load replace the old ones whole; a set that does not load (or lost an
/// algorithm) is logged and the loaded keys keep signing. Replicas sharing the
/// directory converge on the same keys, with the same kids.
pub fn spawn_key_reloader(broker: Arc<Broker>, config: &Config) {
    if matches!(broker.issuer().key_source(), SigningKeySource::Fixed) {
        return;
    }
    let watched = broker.clone();
    spawn_watch(
        config.issuer.key_reload_interval,
        move || watched.issuer().key_source().fingerprint(),
        "the key set changed",
        move |reason| reload_keys(broker.clone(), reason),
    );
}

async fn reload_keys(broker: Arc<Broker>, reason: &'static str) {
    let reloading = broker.clone();
    let reloaded = tokio::task::spawn_blocking(move || reloading.issuer().reload_keys()).await;
    let recorded = match reloaded {
        Ok(Ok(Some(keys))) => broker.record_key_reload(reason, Ok(&keys)).await,
        Ok(Ok(None)) => {
            tracing::debug!(reason, "signing keys unchanged");
            Ok(())
        }
        Ok(Err(error)) => {
            broker
                .record_key_reload(reason, Err(error.to_string()))
                .await
        }
        Err(error) => {
            tracing::error!(reason, %error, "the signing key reload failed");
            Ok(())
        }
    };
    if let Err(error) = recorded {
        tracing::error!(reason, %error, "could not record a signing key reload");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stacks::StackRef;

    /// `[stacks]`' file serves the tool without a table of its own, with its
    /// own component tag; the other tool's table brings its source and key.
    #[tokio::test]
    async fn each_tool_gets_its_own_source_or_the_shared_one() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write(
            "shared.toml",
            "[[stacks]]\nref = \"terraform:acme/w\"\n[[stacks]]\nref = \"pulumi:acme/p/shared\"\n",
        );
        write("pulumi.toml", "[[stacks]]\nref = \"pulumi:acme/p/own\"\n");
        write("catalog.toml", "");
        write(
            "stackpass.toml",
            r#"
            [[identity.issuers]]
            name = "backstage"
            kind = "backstage"
            url = "http://localhost:7007"
            [catalog]
            kind = "static"
            file = "catalog.toml"
            [stacks]
            kind = "static"
            file = "shared.toml"
            [stacks.pulumi]
            kind = "static"
            file = "pulumi.toml"
            "#,
        );
        let config = Config::load(&dir.path().join("stackpass.toml")).unwrap();
        let (stacks, tags) = load_stacks(&config).unwrap();
        assert_eq!(tags.pulumi, "backstage-component");
        assert_eq!(tags.terraform, "backstage.io/component");
        let found = |r: &str| {
            let stacks = stacks.clone();
            let r = StackRef::parse(r).unwrap();
            async move { stacks.stack(&r).await.unwrap().is_some() }
        };
        assert!(found("terraform:acme/w").await);
        assert!(found("pulumi:acme/p/own").await);
        assert!(!found("pulumi:acme/p/shared").await);
    }
}
