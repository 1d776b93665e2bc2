//! Which subjects an issuer may vouch for: entity-reference patterns
//! (`kind:namespace/name`, each part a name or `*`). A token's subject outside its
//! issuer's patterns is refused, so one trusted issuer cannot speak for another
//! issuer's people; two issuers whose patterns overlap are refused when the
//! configuration loads.

use std::fmt;

use crate::catalog::EntityRef;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectPatternError {
    #[error("{0:?} is not kind:namespace/name (each part a name or *), e.g. \"user:default/*\" or \"component:ci/*\"")]
    Shape(String),
    #[error("{0:?} would let tokens name a group; a group is a set of people, never a caller")]
    Group(String),
}

/// One part of a pattern: any value, or exactly this (lower-cased) value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Any,
    Exactly(String),
}

impl Part {
    fn matches(&self, value: &str) -> bool {
        match self {
            Part::Any => true,
            Part::Exactly(own) => own == value,
        }
    }

    fn overlaps(&self, other: &Part) -> bool {
        match (self, other) {
            (Part::Exactly(a), Part::Exactly(b)) => a == b,
            _ => true,
        }
    }
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Part::Any => f.write_str("*"),
            Part::Exactly(value) => f.write_str(value),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectPattern {
    kind: Part,
    namespace: Part,
    name: Part,
}

impl SubjectPattern {
    pub fn parse(input: &str) -> Result<SubjectPattern, SubjectPatternError> {
        let shape = || SubjectPatternError::Shape(input.to_owned());
        let (kind, rest) = input.split_once(':').ok_or_else(shape)?;
        let (namespace, name) = rest.split_once('/').ok_or_else(shape)?;
        // Each literal part must be what an entity reference allows there;
        // checking the three together with placeholders reuses that grammar.
        let literal = |part: &str, placeholder: &str| -> String {
            if part == "*" {
                placeholder.to_owned()
            } else {
                part.to_owned()
            }
        };
        EntityRef::parse_strict(&format!(
            "{}:{}/{}",
            literal(kind, "k"),
            literal(namespace, "n"),
            literal(name, "n")
        ))
        .map_err(|_| shape())?;
        let part = |value: &str| match value {
            "*" => Part::Any,
            literal => Part::Exactly(literal.to_ascii_lowercase()),
        };
        let pattern = SubjectPattern {
            kind: part(kind),
            namespace: part(namespace),
            name: part(name),
        };
        if pattern.kind.matches("group") {
            return Err(SubjectPatternError::Group(input.to_owned()));
        }
        Ok(pattern)
    }

    pub fn matches(&self, subject: &EntityRef) -> bool {
        self.kind.matches(subject.kind())
            && self.namespace.matches(subject.namespace())
            && self.name.matches(subject.name())
    }

    /// Some subject of this kind could match.
    pub fn admits_kind(&self, kind: &str) -> bool {
        self.kind.matches(kind)
    }

    /// Some subject matches both patterns.
    pub fn overlaps(&self, other: &SubjectPattern) -> bool {
        self.kind.overlaps(&other.kind)
            && self.namespace.overlaps(&other.namespace)
            && self.name.overlaps(&other.name)
    }
}

impl fmt::Display for SubjectPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.kind, self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(s: &str) -> SubjectPattern {
        SubjectPattern::parse(s).unwrap()
    }

    fn entity(s: &str) -> EntityRef {
        EntityRef::parse_strict(s).unwrap()
    }

    #[test]
    fn patterns_match_by_part() {
        assert!(pattern("user:*/*").matches(&entity("user:default/jane")));
        assert!(pattern("User:Default/*").matches(&entity("user:default/jane")));
        assert!(!pattern("user:*/*").matches(&entity("component:default/jane")));
        assert!(pattern("component:ci/*").matches(&entity("component:ci/deployer")));
        assert!(!pattern("component:ci/*").matches(&entity("component:default/deployer")));
        assert!(pattern("user:default/jane").matches(&entity("user:default/jane")));
        assert!(!pattern("user:default/jane").matches(&entity("user:default/janet")));
    }

    #[test]
    fn overlap_is_some_subject_in_both() {
        assert!(pattern("user:*/*").overlaps(&pattern("user:default/x")));
        assert!(pattern("component:ci/*").overlaps(&pattern("component:*/deployer")));
        assert!(!pattern("user:*/*").overlaps(&pattern("component:*/*")));
        assert!(!pattern("component:ci/*").overlaps(&pattern("component:default/*")));
    }

    #[test]
    fn malformed_and_group_patterns_are_refused() {
        for bad in [
            "user",
            "user:jane",
            "user:default/",
            ":default/x",
            "us er:a/b",
            "user:a/b/c",
        ] {
            assert!(
                matches!(
                    SubjectPattern::parse(bad),
                    Err(SubjectPatternError::Shape(_))
                ),
                "{bad}"
            );
        }
        for group in ["group:default/*", "*:*/*", "Group:*/admins"] {
            assert!(
                matches!(
                    SubjectPattern::parse(group),
                    Err(SubjectPatternError::Group(_))
                ),
                "{group}"
            );
        }
    }
}
