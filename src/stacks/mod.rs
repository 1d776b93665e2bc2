//! Where stacks and their tags come from. Tags decide ownership and policy, so they
//! are only ever read from a trusted stack source, never from the caller.
//!
//! Sources: a static registry file (`registry.rs`), Pulumi Cloud
//! (`pulumi_cloud.rs`) and HCP Terraform / Terraform Enterprise
//! (`hcp_terraform.rs`), the remote ones behind a cache that serves a bounded
//! stale answer while the service is down (`cache.rs`), chosen per tool
//! (`by_tool.rs`). All of them implement [`StackSource`], so the broker never
//! knows which one answered.

mod by_tool;
mod cache;
pub mod hcp_terraform;
pub mod pulumi_cloud;
mod registry;
mod stack_ref;

use std::collections::BTreeMap;

pub use by_tool::{ByTool, ComponentTags};
pub use cache::{CacheSettings, Cached};
pub use hcp_terraform::{HcpTerraform, HcpTerraformSettings};
pub use pulumi_cloud::{PulumiCloud, PulumiCloudSettings};
pub use registry::StaticStackRegistry;
pub use stack_ref::{StackRef, StackRefError, StackTool};

use crate::http_client::FetchError;

/// A stack as its trusted source describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stack {
    pub reference: StackRef,
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StackSourceError {
    #[error("could not read the stack registry {path}: {message}")]
    Registry { path: String, message: String },
    /// The source is down (unreachable, timed out, 5xx, 429): a cached answer
    /// within its stale window may stand in.
    #[error("the stack source is unavailable: {0}")]
    Unavailable(String),
    /// The source answered, but not with tags: it refused the broker's token or
    /// sent something unreadable. The operator must act; no cached answer
    /// stands in.
    #[error("the stack source refused the lookup: {0}")]
    Refused(String),
}

impl StackSourceError {
    /// Maps a failed fetch from `service` to "down" or "refused".
    fn from_fetch(service: &str, error: FetchError, token_key: &str) -> StackSourceError {
        match error {
            FetchError::Unreachable { .. } => StackSourceError::Unavailable(format!("{service}: {error}")),
            FetchError::Status { status, .. } if status == 429 || status >= 500 => {
                StackSourceError::Unavailable(format!("{service}: {error}"))
            }
            FetchError::Status { status, .. } if status == 401 || status == 403 => {
                StackSourceError::Refused(format!(
                    "{service}: {error}; the broker's token is missing, invalid or lacks access (check {token_key})"
                ))
            }
            other => StackSourceError::Refused(format!("{service}: {other}")),
        }
    }
}

#[async_trait::async_trait]
pub trait StackSource: Send + Sync {
    /// The stack and its tags, or `None` when the source does not know it.
    async fn stack(&self, reference: &StackRef) -> Result<Option<Stack>, StackSourceError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetch_failures_are_down_or_refused() {
        let status = |status| FetchError::Status {
            url: "https://api.pulumi.com/api/stacks/a/b/c".into(),
            status,
        };
        for down in [429, 500, 502, 503, 504] {
            assert!(matches!(
                StackSourceError::from_fetch("Pulumi Cloud", status(down), "k"),
                StackSourceError::Unavailable(_)
            ));
        }
        let unreachable = FetchError::Unreachable {
            url: "u".into(),
            message: "timed out".into(),
        };
        assert!(matches!(
            StackSourceError::from_fetch("Pulumi Cloud", unreachable, "k"),
            StackSourceError::Unavailable(_)
        ));
        let refused =
            StackSourceError::from_fetch("Pulumi Cloud", status(401), "stacks.pulumi.token");
        assert!(
            matches!(&refused, StackSourceError::Refused(m) if m.contains("stacks.pulumi.token")),
            "{refused}"
        );
        let invalid = FetchError::InvalidJson {
            url: "u".into(),
            message: "expected value".into(),
        };
        assert!(matches!(
            StackSourceError::from_fetch("HCP Terraform", invalid, "k"),
            StackSourceError::Refused(_)
        ));
    }
}
