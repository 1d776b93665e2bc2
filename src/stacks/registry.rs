//! The static stack registry: a TOML file listing stacks and their tags, for sites
//! that keep stack metadata in a reviewed repository, and for offline use.
//!
//! ```toml
//! [[stacks]]
//! ref = "pulumi:acme/payments/dev"
//! tags = { "backstage.io/component" = "payments", environment = "dev", aws-account = "111111111111" }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::{Stack, StackRef, StackSource, StackSourceError};

#[derive(Debug)]
pub struct StaticStackRegistry {
    stacks: HashMap<StackRef, Stack>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    #[serde(default)]
    stacks: Vec<RegistryEntry>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryEntry {
    #[serde(rename = "ref")]
    reference: StackRef,
    #[serde(default)]
    tags: BTreeMap<String, String>,
}

impl StaticStackRegistry {
    pub fn load(path: &Path) -> Result<Self, StackSourceError> {
        let error = |message: String| StackSourceError::Registry {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
        Self::parse(&text).map_err(error)
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let file: RegistryFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut stacks = HashMap::new();
        for entry in file.stacks {
            let stack = Stack {
                reference: entry.reference.clone(),
                tags: entry.tags,
            };
            if stacks.insert(entry.reference.clone(), stack).is_some() {
                return Err(format!("stack {} is listed twice", entry.reference));
            }
        }
        Ok(StaticStackRegistry { stacks })
    }

    pub fn len(&self) -> usize {
        self.stacks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.stacks.is_empty()
    }
}

#[async_trait::async_trait]
impl StackSource for StaticStackRegistry {
    async fn stack(&self, reference: &StackRef) -> Result<Option<Stack>, StackSourceError> {
        Ok(self.stacks.get(reference).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stacks_and_rejects_duplicates_and_bad_refs() {
        let registry = StaticStackRegistry::parse(
            r#"
            [[stacks]]
            ref = "pulumi:acme/payments/dev"
            tags = { environment = "dev" }
            [[stacks]]
            ref = "terraform:acme/payments-dev"
            "#,
        )
        .unwrap();
        assert_eq!(registry.len(), 2);

        let dup = StaticStackRegistry::parse(
            "[[stacks]]\nref = \"pulumi:a/b/c\"\n[[stacks]]\nref = \"pulumi:a/b/c\"\n",
        )
        .unwrap_err();
        assert!(dup.contains("listed twice"), "{dup}");

        let bad = StaticStackRegistry::parse("[[stacks]]\nref = \"pulumi:a/b\"\n").unwrap_err();
        assert!(bad.contains("PROJECT/STACK"), "{bad}");

        let unknown =
            StaticStackRegistry::parse("[[stacks]]\nref = \"pulumi:a/b/c\"\nowner = \"x\"\n")
                .unwrap_err();
        assert!(unknown.contains("unknown field"), "{unknown}");
    }
}
