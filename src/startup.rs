//! Turns a validated [`Config`] into a running [`Broker`]: loads keys and files,
//! opens the audit store, builds the catalog, stack source and providers. Anything
//! that can fail at start fails here, with the config key that caused it.

use std::sync::Arc;

use secrecy::SecretString;

use crate::approvals::SqlApprovalStore;
use crate::audit::SqlAuditStore;
use crate::broker::{Broker, BrokerParts};
use crate::catalog::{
    BackstageCatalog, BackstageCatalogSettings, Catalog, CatalogError, StaticCatalog,
};
use crate::config::{CatalogKind, Config, ConfigError, IssuerKind, StacksKind};
use crate::database::{Database, DatabaseError};
use crate::identity::{
    CatalogEntityMapping, FetchSettings, KeySource, RemoteJwks, StaticKeys, TrustedIssuer, Verifier,
};
use crate::issuer::{Issuer, SigningKey, SigningKeyError};
use crate::notify::Notifier;
use crate::policy::{expand_paths, load_rules, PolicyError, Rule, RuleConfig, ValidationContext};
use crate::registry::Providers;
use crate::stacks::{StackSource, StackSourceError, StaticStackRegistry};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("issuer.signing_key: {0}")]
    SigningKey(#[from] SigningKeyError),
    #[error("identity.issuers[{index}].key_file: {error}")]
    DevelopmentKey {
        index: usize,
        error: SigningKeyError,
    },
    #[error("catalog: {0}")]
    Catalog(#[from] CatalogError),
    #[error("catalog.token_file: could not read {path}: {message}")]
    CatalogToken { path: String, message: String },
    #[error("stacks: {0}")]
    Stacks(#[from] StackSourceError),
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
    let signing_key = if config.issuer.create_key_if_missing {
        SigningKey::load_or_generate(&config.issuer.signing_key)?
    } else {
        SigningKey::load(&config.issuer.signing_key)?
    };
    let verifier = build_verifier(config)?;
    let catalog = build_catalog(config)?;
    let stacks = load_stacks(config)?;
    let providers = config.providers()?;
    let rules = load_policy(config, &providers)?;
    // Access requests live beside the audit log: one database, one failure domain.
    let db = Database::open(&config.audit.url, config.audit.busy_timeout).await?;
    Ok(Broker::new(BrokerParts {
        verifier,
        catalog,
        stacks,
        rules,
        issuer: Issuer::new(
            signing_key,
            config.issuer_url(),
            config.issuer.token_lifetime,
            providers
                .iter()
                .flat_map(|p| p.claims_supported().iter().copied())
                .collect(),
        ),
        providers,
        audit: Arc::new(SqlAuditStore::new(db.clone())),
        approvals: Arc::new(SqlApprovalStore::new(db)),
        notifier: Notifier::new(config.notifications.webhook_url.clone()),
        auditor_groups: config.audit.auditor_groups.clone(),
        component_tag: config.stacks.component_tag.clone(),
        environment_tag: config.stacks.environment_tag.clone(),
    }))
}

/// One trusted issuer per `[[identity.issuers]]`. Remote issuers fetch keys
/// lazily, on the first token they see, so a Backstage outage does not stop the
/// broker; a development issuer's key is created on first start.
fn build_verifier(config: &Config) -> Result<Verifier, StartupError> {
    let identity = &config.identity;
    let fetch = FetchSettings {
        refresh_interval: identity.jwks_refresh_interval,
        min_refetch_interval: identity.jwks_min_refetch_interval,
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
            mapping: Arc::new(CatalogEntityMapping),
        });
    }
    Ok(Verifier::new(issuers, identity.max_token_bytes))
}

fn load_stacks(config: &Config) -> Result<Arc<dyn StackSource>, StartupError> {
    let file = config.stacks.file.as_deref();
    Ok(match config.stacks.kind {
        StacksKind::Static => Arc::new(StaticStackRegistry::load(
            file.expect("validated: static stacks have a file"),
        )?),
    })
}

/// The config's rules and the policy files', validated together against the
/// configured providers.
pub fn load_policy(config: &Config, providers: &Providers) -> Result<Vec<Rule>, PolicyError> {
    load_rules(
        &config.policy.rules,
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
                timeout: catalog.timeout,
            }))
        }
    })
}

/// What `stackpass config check` verifies beyond the config file itself: the files
/// it names load, the policy validates, the signing key is usable. No network, no
/// writes. Returns the number of rules.
pub fn check(config: &Config) -> Result<usize, StartupError> {
    if !config.issuer.create_key_if_missing {
        SigningKey::load(&config.issuer.signing_key)?;
    }
    if config.catalog.kind == CatalogKind::Static {
        load_static_catalog(config)?;
    }
    load_stacks(config)?;
    Ok(load_policy(config, &config.providers()?)?.len())
}

/// Watches the policy files: on SIGHUP, or when their contents change (checked
/// every `policy.reload_interval`), loads and validates them again. A valid
/// policy replaces the old one as a whole; an invalid one is rejected, logged and
/// audited, and the old policy keeps serving.
pub fn spawn_policy_reloader(broker: Arc<Broker>, config: &Config) {
    if config.policy.files.is_empty() {
        return;
    }
    let source = PolicySource {
        rules: config.policy.rules.clone(),
        files: config.policy.files.clone(),
        context: validation_context(config, broker.providers()),
    };
    let interval = config.policy.reload_interval;
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seen = source.fingerprint();
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
                    let now = source.fingerprint();
                    if now == seen {
                        continue;
                    }
                    "a policy file changed"
                }
            };
            seen = source.fingerprint();
            reload(&broker, &source, reason).await;
        }
    });
}

struct PolicySource {
    rules: Vec<RuleConfig>,
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
    let loaded = load_rules(&source.rules, &source.files, &source.context)
        .map_err(|e| e.problems.iter().map(ToString::to_string).collect());
    if let Err(e) = broker.reload_policy(reason, loaded).await {
        tracing::error!(error = %e, "could not audit a policy reload");
    }
}
