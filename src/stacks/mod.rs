//! Where stacks and their tags come from. Tags decide ownership and policy, so they
//! are only ever read from a trusted stack source, never from the caller.
//!
//! Today's source is a static registry file; Pulumi Cloud and Terraform Cloud
//! sources implement the same [`StackSource`] trait.

mod registry;
mod stack_ref;

use std::collections::BTreeMap;

pub use registry::StaticStackRegistry;
pub use stack_ref::{StackRef, StackRefError, StackTool};

/// A stack as its trusted source describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stack {
    pub reference: StackRef,
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StackSourceError {
    #[error("could not read the stack registry {path}: {message}")]
    Registry { path: String, message: String },
    #[error("the stack source is unavailable: {0}")]
    Unavailable(String),
}

#[async_trait::async_trait]
pub trait StackSource: Send + Sync {
    /// The stack and its tags, or `None` when the source does not know it.
    async fn stack(&self, reference: &StackRef) -> Result<Option<Stack>, StackSourceError>;
}
