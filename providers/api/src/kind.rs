//! Provider names. The core knows no list of clouds: a kind is any well-formed
//! name, and whether this broker has such a provider is the registry's question.

use std::borrow::Cow;
use std::fmt;

/// A provider's name: 1 to 32 of `a-z`, `0-9` and `-`, starting with a letter.
/// Provider crates declare theirs with [`ProviderKind::from_static`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProviderKind(Cow<'static, str>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a provider name; provider names are lower-case letters, digits and '-', like aws"
)]
pub struct InvalidProviderKind(pub String);

impl ProviderKind {
    /// For a provider crate's own constant. Panics at compile time (in a `const`)
    /// on a malformed name.
    pub const fn from_static(name: &'static str) -> Self {
        assert!(is_valid(name.as_bytes()), "malformed provider name");
        ProviderKind(Cow::Borrowed(name))
    }

    pub fn parse(name: &str) -> Result<Self, InvalidProviderKind> {
        if is_valid(name.as_bytes()) {
            Ok(ProviderKind(Cow::Owned(name.to_owned())))
        } else {
            Err(InvalidProviderKind(name.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

const fn is_valid(name: &[u8]) -> bool {
    if name.is_empty() || name.len() > 32 || !name[0].is_ascii_lowercase() {
        return false;
    }
    let mut i = 0;
    while i < name.len() {
        let c = name[i];
        if !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-') {
            return false;
        }
        i += 1;
    }
    true
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for ProviderKind {
    type Err = InvalidProviderKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ProviderKind::parse(s)
    }
}

impl<'de> serde::Deserialize<'de> for ProviderKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        ProviderKind::parse(&name).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_names_parse() {
        assert_eq!(ProviderKind::parse("aws").unwrap().as_str(), "aws");
        assert_eq!(
            ProviderKind::parse("aws").unwrap(),
            ProviderKind::from_static("aws")
        );
        for bad in ["", "AWS", "1cloud", "a b", "a_b", &"x".repeat(33)] {
            assert!(ProviderKind::parse(bad).is_err(), "{bad:?}");
        }
    }
}
