//! A catalog read from a TOML file, for development and air-gapped sites.
//!
//! ```toml
//! [[components]]
//! ref = "component:default/payments"
//! owner = "group:default/team-payments"
//! # found by machine callers (see identity's machine mappings)
//! annotations = { "github.com/project-slug" = "acme/payments", "stackpass.dev/github-repository-id" = "123456" }
//!
//! [[users]]
//! ref = "user:default/jane"
//! member_of = ["group:default/team-payments"]
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::{AnnotatedEntity, Catalog, CatalogError, EntityRef};

#[derive(Debug, Default)]
pub struct StaticCatalog {
    owners: HashMap<EntityRef, EntityRef>,
    groups: HashMap<EntityRef, Vec<EntityRef>>,
    annotations: Vec<AnnotatedEntity>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    #[serde(default)]
    components: Vec<ComponentEntry>,
    #[serde(default)]
    users: Vec<UserEntry>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ComponentEntry {
    #[serde(rename = "ref")]
    reference: EntityRef,
    owner: EntityRef,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    #[serde(rename = "ref")]
    reference: EntityRef,
    #[serde(default)]
    member_of: Vec<EntityRef>,
}

impl StaticCatalog {
    pub fn load(path: &Path) -> Result<Self, CatalogError> {
        let error = |message: String| CatalogError::File {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
        Self::parse(&text).map_err(error)
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let file: CatalogFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut catalog = StaticCatalog::default();
        for component in file.components {
            if component.owner.kind() != "group" && component.owner.kind() != "user" {
                return Err(format!(
                    "component {} is owned by {}: owners must be groups or users",
                    component.reference, component.owner
                ));
            }
            if !component.annotations.is_empty() {
                catalog.annotations.push(AnnotatedEntity {
                    reference: component.reference.clone(),
                    annotations: component.annotations,
                });
            }
            if catalog
                .owners
                .insert(component.reference.clone(), component.owner)
                .is_some()
            {
                return Err(format!("component {} is listed twice", component.reference));
            }
        }
        for user in file.users {
            if catalog
                .groups
                .insert(user.reference.clone(), user.member_of)
                .is_some()
            {
                return Err(format!("user {} is listed twice", user.reference));
            }
        }
        Ok(catalog)
    }
}

#[async_trait::async_trait]
impl Catalog for StaticCatalog {
    async fn owner_of(&self, component: &EntityRef) -> Result<Option<EntityRef>, CatalogError> {
        Ok(self.owners.get(component).cloned())
    }

    async fn groups_of(&self, member: &EntityRef) -> Result<Vec<EntityRef>, CatalogError> {
        Ok(self.groups.get(member).cloned().unwrap_or_default())
    }

    async fn annotated(
        &self,
        kind: &str,
        key: &str,
        value: &str,
    ) -> Result<Vec<AnnotatedEntity>, CatalogError> {
        Ok(self
            .annotations
            .iter()
            .filter(|e| e.reference.kind().eq_ignore_ascii_case(kind))
            .filter(|e| {
                e.annotations
                    .get(key)
                    .is_some_and(|v| v.eq_ignore_ascii_case(value))
            })
            .cloned()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_owners_and_groups() {
        let catalog = StaticCatalog::parse(
            r#"
            [[components]]
            ref = "component:default/payments"
            owner = "group:default/team-payments"
            [[users]]
            ref = "user:default/jane"
            member_of = ["group:default/team-payments"]
            "#,
        )
        .unwrap();
        let payments = EntityRef::parse_strict("component:default/payments").unwrap();
        let jane = EntityRef::parse_strict("user:default/jane").unwrap();
        let bob = EntityRef::parse_strict("user:default/bob").unwrap();
        assert_eq!(
            catalog
                .owner_of(&payments)
                .await
                .unwrap()
                .unwrap()
                .to_string(),
            "group:default/team-payments"
        );
        assert_eq!(catalog.groups_of(&jane).await.unwrap().len(), 1);
        assert!(catalog.groups_of(&bob).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn finds_components_by_annotation() {
        let catalog = StaticCatalog::parse(
            r#"
            [[components]]
            ref = "component:default/payments"
            owner = "group:default/team-payments"
            annotations = { "github.com/project-slug" = "Acme/Payments" }
            [[components]]
            ref = "component:default/billing"
            owner = "group:default/team-billing"
            "#,
        )
        .unwrap();
        let found = catalog
            .annotated("component", "github.com/project-slug", "acme/payments")
            .await
            .unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].reference.to_string(), "component:default/payments");
        assert!(catalog
            .annotated("component", "github.com/project-slug", "acme/billing")
            .await
            .unwrap()
            .is_empty());
        assert!(catalog
            .annotated("user", "github.com/project-slug", "acme/payments")
            .await
            .unwrap()
            .is_empty());
    }

    #[test]
    fn rejects_bad_entries() {
        assert!(StaticCatalog::parse(
            "[[components]]\nref = \"payments\"\nowner = \"group:default/x\"\n"
        )
        .is_err());
        assert!(StaticCatalog::parse(
            "[[components]]\nref = \"component:default/p\"\nowner = \"component:default/x\"\n"
        )
        .is_err());
        assert!(
            StaticCatalog::parse("[[users]]\nref = \"user:default/j\"\ngroups = []\n").is_err()
        );
    }
}
