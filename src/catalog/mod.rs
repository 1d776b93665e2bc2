//! Who owns what, and who belongs to which group: the Backstage catalog (over its
//! REST API, cached) or a static catalog file for offline use.
//!
//! Group membership always comes from here, never from token claims: recent
//! Backstage versions no longer put ownership entities (`ent`) in user tokens, and a
//! token issued before a team change would otherwise keep its old groups.

mod backstage;
mod entity_ref;
mod static_file;

pub use backstage::{BackstageCatalog, BackstageCatalogSettings};
pub use entity_ref::{EntityRef, EntityRefError, DEFAULT_NAMESPACE};
pub use static_file::StaticCatalog;

use std::collections::BTreeMap;

/// A catalog entity found by one of its annotations, with all of them: the
/// caller checks the others (a repository id beside the slug, say) itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnotatedEntity {
    pub reference: EntityRef,
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum CatalogError {
    #[error("could not read the static catalog {path}: {message}")]
    File { path: String, message: String },
    #[error("the Backstage catalog could not be reached: {0}")]
    Unavailable(String),
    #[error("the Backstage catalog refused stackpass's token (HTTP {0}); check catalog.token")]
    Unauthorized(u16),
    #[error("the Backstage catalog returned an unusable answer for {entity}: {message}")]
    InvalidResponse { entity: String, message: String },
}

#[async_trait::async_trait]
pub trait Catalog: Send + Sync {
    /// The group that owns `component`, or `None` when the catalog has no such
    /// component (or it has no owner).
    async fn owner_of(&self, component: &EntityRef) -> Result<Option<EntityRef>, CatalogError>;

    /// The groups `member` belongs to directly. Unknown entities belong to none.
    async fn groups_of(&self, member: &EntityRef) -> Result<Vec<EntityRef>, CatalogError>;

    /// The entities of `kind` whose annotation `key` is `value` (compared
    /// case-insensitively, as Backstage's filters do). Machine callers are
    /// found this way: the component whose `github.com/project-slug` names
    /// the repository a pipeline ran in.
    async fn annotated(
        &self,
        kind: &str,
        key: &str,
        value: &str,
    ) -> Result<Vec<AnnotatedEntity>, CatalogError>;
}
