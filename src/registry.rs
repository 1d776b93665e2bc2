//! The one list of clouds this build knows, and the set configured on this
//! broker. Adding a cloud is one crate, one cargo feature and one line in
//! [`factories`]; nothing else in the core names a cloud.

use std::collections::BTreeMap;
use std::sync::Arc;

use stackpass_provider::{
    CloudProvider, ProviderFactory, ProviderKind, SettingProblem, SettingsContext,
};

/// Every provider compiled into this build: one cfg'd push per provider.
#[allow(clippy::vec_init_then_push)]
pub fn factories() -> Vec<&'static dyn ProviderFactory> {
    #[allow(unused_mut)]
    let mut all: Vec<&'static dyn ProviderFactory> = Vec::new();
    #[cfg(feature = "aws")]
    all.push(&stackpass_aws::Aws);
    #[cfg(feature = "gcp")]
    all.push(&stackpass_gcp::Gcp);
    #[cfg(feature = "azure")]
    all.push(&stackpass_azure::Azure);
    #[cfg(feature = "testcloud")]
    all.push(&stackpass_testcloud::Testcloud);
    all
}

pub fn factory(kind: &str) -> Option<&'static dyn ProviderFactory> {
    factories().into_iter().find(|f| f.kind().as_str() == kind)
}

/// The provider the CLI asks for when none is named: the first in this build.
pub fn default_provider() -> String {
    factories()
        .first()
        .map_or_else(String::new, |f| f.kind().to_string())
}

/// The names of the providers in this build, for messages.
pub fn known_kinds() -> String {
    let names: Vec<String> = factories().iter().map(|f| f.kind().to_string()).collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// Why a request's provider cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("unknown provider {0:?}: this broker knows {known}", known = known_kinds())]
    Unknown(String),
    #[error("provider {0} is not enabled on this broker")]
    NotEnabled(ProviderKind),
}

/// The providers configured on this broker (`[providers.<kind>]` tables), by kind.
#[derive(Clone, Default)]
pub struct Providers {
    by_kind: BTreeMap<ProviderKind, Arc<dyn CloudProvider>>,
}

impl Providers {
    /// Builds every configured provider; problems carry full keys
    /// (`providers.aws.max_attempts`). No I/O.
    pub fn configure(
        tables: &BTreeMap<String, serde_json::Value>,
        context: &SettingsContext,
    ) -> Result<Providers, Vec<SettingProblem>> {
        let mut providers = Providers::default();
        let mut problems = Vec::new();
        for (name, table) in tables {
            let Some(factory) = factory(name) else {
                problems.push(SettingProblem::new(
                    format!("providers.{name}"),
                    format!(
                        "this build has no {name} provider (it has: {}); build with --features {name}",
                        known_kinds()
                    ),
                ));
                continue;
            };
            match factory.configure(table.clone(), context) {
                Ok(provider) => {
                    providers.by_kind.insert(factory.kind(), provider);
                }
                Err(found) => problems.extend(found.into_iter().map(|p| {
                    let key = if p.key.is_empty() {
                        format!("providers.{name}")
                    } else {
                        format!("providers.{name}.{}", p.key)
                    };
                    SettingProblem::new(key, p.message)
                })),
            }
        }
        if problems.is_empty() {
            Ok(providers)
        } else {
            Err(problems)
        }
    }

    /// Every provider in this build with its default settings, for checking
    /// policy offline (`stackpass policy test`). A provider that has no usable
    /// defaults is left out.
    pub fn offline() -> Providers {
        let context = SettingsContext {
            cloud_budget: std::time::Duration::from_secs(3600),
        };
        let by_kind = factories()
            .into_iter()
            .filter_map(|f| {
                let provider = f.configure(serde_json::json!({}), &context).ok()?;
                Some((f.kind(), provider))
            })
            .collect();
        Providers { by_kind }
    }

    pub fn get(&self, kind: &ProviderKind) -> Option<&Arc<dyn CloudProvider>> {
        self.by_kind.get(kind)
    }

    /// The provider a request names: unknown to this build, known but not
    /// configured, or ready.
    pub fn lookup(&self, kind: &ProviderKind) -> Result<&Arc<dyn CloudProvider>, LookupError> {
        match self.by_kind.get(kind) {
            Some(provider) => Ok(provider),
            None if factory(kind.as_str()).is_some() => Err(LookupError::NotEnabled(kind.clone())),
            None => Err(LookupError::Unknown(kind.to_string())),
        }
    }

    pub fn kinds(&self) -> impl Iterator<Item = &ProviderKind> {
        self.by_kind.keys()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn CloudProvider>> {
        self.by_kind.values()
    }

    /// A set with exactly these providers (tests and fakes).
    pub fn from_providers(providers: impl IntoIterator<Item = Arc<dyn CloudProvider>>) -> Self {
        Providers {
            by_kind: providers.into_iter().map(|p| (p.kind(), p)).collect(),
        }
    }
}
