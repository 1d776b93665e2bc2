//! The stack source in force: one per tool (`pulumi:` stacks from one source,
//! `terraform:` workspaces from another), and which tag names the component in
//! each, since the key a static file uses (`backstage.io/component`) is not one
//! Pulumi Cloud or HCP Terraform accept.

use std::sync::Arc;

use super::{Stack, StackRef, StackSource, StackSourceError, StackTool};

/// Routes each lookup to its tool's source; a tool without one has no stacks.
pub struct ByTool {
    pub pulumi: Option<Arc<dyn StackSource>>,
    pub terraform: Option<Arc<dyn StackSource>>,
}

#[async_trait::async_trait]
impl StackSource for ByTool {
    async fn stack(&self, reference: &StackRef) -> Result<Option<Stack>, StackSourceError> {
        let source = match reference.tool() {
            StackTool::Pulumi => &self.pulumi,
            StackTool::Terraform => &self.terraform,
        };
        match source {
            Some(source) => source.stack(reference).await,
            None => Ok(None),
        }
    }
}

/// The tag whose value names a stack's catalog component, per tool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentTags {
    pub pulumi: String,
    pub terraform: String,
}

impl ComponentTags {
    /// One key for every tool.
    pub fn same(tag: &str) -> ComponentTags {
        ComponentTags {
            pulumi: tag.to_owned(),
            terraform: tag.to_owned(),
        }
    }

    pub fn for_tool(&self, tool: StackTool) -> &str {
        match tool {
            StackTool::Pulumi => &self.pulumi,
            StackTool::Terraform => &self.terraform,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stacks::StaticStackRegistry;

    #[tokio::test]
    async fn each_tool_asks_its_own_source_and_a_tool_without_one_has_no_stacks() {
        let both = "[[stacks]]\nref = \"pulumi:a/b/c\"\n[[stacks]]\nref = \"terraform:a/w\"\n";
        let registry = Arc::new(StaticStackRegistry::parse(both).unwrap());
        let pulumi_only = ByTool {
            pulumi: Some(registry.clone()),
            terraform: None,
        };
        let p = StackRef::parse("pulumi:a/b/c").unwrap();
        let t = StackRef::parse("terraform:a/w").unwrap();
        assert!(pulumi_only.stack(&p).await.unwrap().is_some());
        assert!(pulumi_only.stack(&t).await.unwrap().is_none());
        let terraform_only = ByTool {
            pulumi: None,
            terraform: Some(registry),
        };
        assert!(terraform_only.stack(&p).await.unwrap().is_none());
        assert!(terraform_only.stack(&t).await.unwrap().is_some());
    }
}
