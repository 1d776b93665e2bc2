//! Turns a validated [`Config`] into a running [`Broker`]: loads keys and files,
//! opens the audit store, builds the catalog, stack source and providers. Anything
//! that can fail at start fails here, with the config key that caused it.

use std::collections::HashMap;
use std::sync::Arc;

use secrecy::SecretString;
use stackpass_provider::{CloudProvider, ProviderKind};

use crate::audit::{AuditError, AuditStore, SqlAuditStore};
use crate::broker::Broker;
use crate::catalog::{
    BackstageCatalog, BackstageCatalogSettings, Catalog, CatalogError, StaticCatalog,
};
use crate::config::{CatalogKind, Config, IssuerKind, StacksKind};
use crate::identity::{KeySourceError, Verifier};
use crate::issuer::{Issuer, SigningKey, SigningKeyError};
use crate::policy::{load_rules, PolicyError, Rule, ValidationContext};
use crate::stacks::{StackSource, StackSourceError, StaticStackRegistry};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("issuer.signing_key: {0}")]
    SigningKey(#[from] SigningKeyError),
    #[error("identity.issuers: {0}")]
    Identity(#[from] KeySourceError),
    #[error("catalog: {0}")]
    Catalog(#[from] CatalogError),
    #[error("catalog.token_file: could not read {path}: {message}")]
    CatalogToken { path: String, message: String },
    #[error("stacks: {0}")]
    Stacks(#[from] StackSourceError),
    #[error("{0}")]
    Policy(#[from] PolicyError),
    #[error("audit.url: {0}")]
    Audit(#[from] AuditError),
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
    for issuer in &config.identity.issuers {
        if let (IssuerKind::Development, Some(path)) = (issuer.kind, &issuer.key_file) {
            SigningKey::load_or_generate(path)
                .map_err(|e| KeySourceError::Config(e.to_string()))?;
            tracing::warn!(issuer = %issuer.name, "a development issuer is trusted: anyone who can read its key file can sign in as anyone");
        }
    }
    let verifier = Verifier::from_config(&config.identity)?;
    let catalog = build_catalog(config)?;
    let stacks = load_stacks(config)?;
    let rules = load_policy(config)?;
    let audit: Arc<dyn AuditStore> =
        Arc::new(SqlAuditStore::open(&config.audit.url, config.audit.busy_timeout).await?);
    Ok(Broker {
        verifier,
        catalog,
        stacks,
        rules: std::sync::RwLock::new(Arc::new(rules)),
        issuer: Issuer::new(
            signing_key,
            config.issuer_url(),
            config.issuer.token_lifetime,
        ),
        providers: build_providers(config).await,
        audit,
        auditor_groups: config.audit.auditor_groups.clone(),
        component_tag: config.stacks.component_tag.clone(),
        environment_tag: config.stacks.environment_tag.clone(),
    })
}

fn load_stacks(config: &Config) -> Result<Arc<dyn StackSource>, StartupError> {
    let file = config.stacks.file.as_deref();
    Ok(match config.stacks.kind {
        StacksKind::Static => Arc::new(StaticStackRegistry::load(
            file.expect("validated: static stacks have a file"),
        )?),
    })
}

/// The config's rules and the policy files', validated together.
pub fn load_policy(config: &Config) -> Result<Vec<Rule>, PolicyError> {
    load_rules(
        &config.policy.rules,
        &config.policy.files,
        &ValidationContext {
            environment_tag: config.stacks.environment_tag.clone(),
            enabled_providers: Some(config.providers.enabled()),
        },
    )
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

#[allow(unused_mut)]
async fn build_providers(config: &Config) -> HashMap<ProviderKind, Arc<dyn CloudProvider>> {
    let mut providers: HashMap<ProviderKind, Arc<dyn CloudProvider>> = HashMap::new();
    #[cfg(feature = "aws")]
    if let Some(aws) = &config.providers.aws {
        let provider = stackpass_aws::AwsProvider::new(stackpass_aws::AwsSettings {
            region: aws.region.clone(),
            endpoint_url: aws
                .endpoint_url
                .as_ref()
                .map(|u| u.as_str().trim_end_matches('/').to_owned()),
            audience: aws.audience.clone(),
            connect_timeout: std::time::Duration::from_secs(3).min(aws.timeout),
            operation_timeout: aws.timeout,
            max_attempts: aws.max_attempts,
        })
        .await;
        providers.insert(ProviderKind::Aws, Arc::new(provider));
    }
    providers
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
    Ok(load_policy(config)?.len())
}
