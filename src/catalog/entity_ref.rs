//! Backstage entity references (`kind:namespace/name`), parsed once into a value
//! that cannot be invalid afterwards.
//!
//! Backstage compares entity references case-insensitively, so a parsed reference
//! is stored lower-cased: `User:Default/Jane` and `user:default/jane` are the same
//! principal everywhere in stackpass (policy, audit, subject token).

use std::fmt;

/// The namespace an entity reference without one is in.
pub const DEFAULT_NAMESPACE: &str = "default";

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntityRef {
    kind: String,
    namespace: String,
    name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntityRefError {
    #[error("entity reference {input:?} is empty")]
    Empty { input: String },
    #[error("entity reference {input:?} has no kind; write it as kind:namespace/name, e.g. user:default/jane")]
    MissingKind { input: String },
    #[error("entity reference {input:?} has an invalid {part}: {rule}")]
    InvalidPart {
        input: String,
        part: &'static str,
        rule: &'static str,
    },
}

const MAX_PART_LEN: usize = 63;

impl EntityRef {
    /// Parses `[kind:][namespace/]name`. A missing kind takes `default_kind` (an error
    /// if there is none); a missing namespace takes `default_namespace`.
    pub fn parse(
        input: &str,
        default_kind: Option<&str>,
        default_namespace: &str,
    ) -> Result<Self, EntityRefError> {
        let trimmed = input;
        if trimmed.is_empty() {
            return Err(EntityRefError::Empty {
                input: input.to_owned(),
            });
        }
        let (kind, rest) = match trimmed.split_once(':') {
            Some((kind, rest)) => (kind, rest),
            None => match default_kind {
                Some(kind) => (kind, trimmed),
                None => {
                    return Err(EntityRefError::MissingKind {
                        input: input.to_owned(),
                    });
                }
            },
        };
        let (namespace, name) = rest.split_once('/').unwrap_or((default_namespace, rest));
        let invalid = |part, rule| EntityRefError::InvalidPart {
            input: input.to_owned(),
            part,
            rule,
        };
        if !valid_kind(kind) {
            return Err(invalid(
                "kind",
                "letters and digits, starting with a letter",
            ));
        }
        if !valid_namespace(namespace) {
            return Err(invalid(
                "namespace",
                "letters, digits and single dashes, at most 63 characters",
            ));
        }
        if !valid_name(name) {
            return Err(invalid(
                "name",
                "letters and digits separated by single '-', '_' or '.', at most 63 characters",
            ));
        }
        Ok(EntityRef {
            kind: kind.to_ascii_lowercase(),
            namespace: namespace.to_ascii_lowercase(),
            name: name.to_ascii_lowercase(),
        })
    }

    /// Parses a fully qualified reference (`kind:namespace/name`, namespace optional).
    pub fn parse_strict(input: &str) -> Result<Self, EntityRefError> {
        Self::parse(input, None, DEFAULT_NAMESPACE)
    }

    pub fn kind(&self) -> &str {
        &self.kind
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for EntityRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.kind, self.namespace, self.name)
    }
}

impl serde::Serialize for EntityRef {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for EntityRef {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        EntityRef::parse_strict(&raw).map_err(serde::de::Error::custom)
    }
}

fn valid_kind(kind: &str) -> bool {
    let mut chars = kind.chars();
    kind.len() <= MAX_PART_LEN
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric())
}

fn valid_namespace(namespace: &str) -> bool {
    !namespace.is_empty()
        && namespace.len() <= MAX_PART_LEN
        && namespace
            .split('-')
            .all(|seg| !seg.is_empty() && seg.chars().all(|c| c.is_ascii_alphanumeric()))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_PART_LEN
        && name
            .split(['-', '_', '.'])
            .all(|seg| !seg.is_empty() && seg.chars().all(|c| c.is_ascii_alphanumeric()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_and_short_forms() {
        let full = EntityRef::parse_strict("user:default/jane").unwrap();
        assert_eq!(full.to_string(), "user:default/jane");
        let short = EntityRef::parse("team-payments", Some("group"), "default").unwrap();
        assert_eq!(short.to_string(), "group:default/team-payments");
        let ns = EntityRef::parse("acme/payments", Some("component"), "default").unwrap();
        assert_eq!(ns.to_string(), "component:acme/payments");
    }

    #[test]
    fn compares_case_insensitively() {
        assert_eq!(
            EntityRef::parse_strict("User:Default/Jane").unwrap(),
            EntityRef::parse_strict("user:default/jane").unwrap()
        );
        assert_eq!(
            EntityRef::parse_strict("User:default/Jane").unwrap(),
            EntityRef::parse_strict("user:default/jane").unwrap()
        );
    }

    #[test]
    fn rejects_malformed_references() {
        for bad in [
            "",
            "jane",
            "user:",
            "user:default/",
            "user:/jane",
            "user:default/ja ne",
            "user:default/jane/extra",
            "us-er:default/jane",
            "user:default/-jane",
            "user:default/jane..x",
            "user:default/jane\n",
            "1user:default/jane",
        ] {
            assert!(
                EntityRef::parse_strict(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
        let long = format!("user:default/{}", "a".repeat(64));
        assert!(EntityRef::parse_strict(&long).is_err());
    }
}
