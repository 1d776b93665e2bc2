//! Targets: what a grant lets the requester become at the cloud (an AWS role,
//! later a GCP service account or an Azure application). Each provider parses
//! its own; the broker carries them opaquely and shows their text.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

/// A target parsed by its provider. The text is what the audit log and the
/// API show; the parsed value is the provider's own type, which only it reads
/// back (with [`Target::parsed`]).
#[derive(Clone)]
pub struct Target {
    text: Arc<str>,
    parsed: Arc<dyn Any + Send + Sync>,
}

impl Target {
    pub fn new<T: Any + Send + Sync>(text: impl Into<String>, parsed: T) -> Self {
        Target {
            text: text.into().into(),
            parsed: Arc::new(parsed),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The provider's parsed value, if this target is of type `T`.
    pub fn parsed<T: Any>(&self) -> Option<&T> {
        self.parsed.downcast_ref()
    }
}

impl PartialEq for Target {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for Target {}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Target({:?})", self.text)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// One piece of a target pattern as a rule writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatternPart<'a> {
    Literal(&'a str),
    /// A `{…}` filled in per request; the value never contains `:`, `/`, `*`,
    /// spaces or anything outside letters, digits and `+=,.@_-`.
    Hole,
}

/// Splits a target pattern into literals and holes, so providers check their
/// syntax without knowing the broker's template language.
pub fn pattern_parts(pattern: &str) -> Vec<PatternPart<'_>> {
    let mut parts = Vec::new();
    let mut rest = pattern;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(PatternPart::Literal(&rest[..open]));
        }
        match rest[open..].find('}') {
            Some(close) => {
                parts.push(PatternPart::Hole);
                rest = &rest[open + close + 1..];
            }
            None => {
                parts.push(PatternPart::Literal(&rest[open..]));
                rest = "";
            }
        }
    }
    if !rest.is_empty() {
        parts.push(PatternPart::Literal(rest));
    }
    parts
}

/// Stands for a hole in [`masked_pattern`]'s output. Hole values are letters,
/// digits and `+=,.@_-`, so a slot that accepts those accepts a hole.
pub const HOLE: char = '\u{0}';

/// The pattern with each `{…}` replaced by one [`HOLE`], so a provider checks
/// a rule's target with the same code that parses a rendered one, treating
/// [`HOLE`] as "some safe value".
pub fn masked_pattern(pattern: &str) -> Result<String, String> {
    let mut masked = String::with_capacity(pattern.len());
    for part in pattern_parts(pattern) {
        match part {
            PatternPart::Literal(text) if text.contains(HOLE) => {
                return Err("it contains a NUL character".into());
            }
            PatternPart::Literal(text) => masked.push_str(text),
            PatternPart::Hole => masked.push(HOLE),
        }
    }
    Ok(masked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_split_into_literals_and_holes() {
        use PatternPart::*;
        assert_eq!(
            pattern_parts("arn:aws:iam::{tags.a}:role/{component}-x"),
            vec![
                Literal("arn:aws:iam::"),
                Hole,
                Literal(":role/"),
                Hole,
                Literal("-x")
            ]
        );
        assert_eq!(pattern_parts("{a}{b}"), vec![Hole, Hole]);
        assert_eq!(pattern_parts(""), vec![]);
    }

    #[test]
    fn targets_compare_by_text_and_keep_their_parsed_value() {
        let a = Target::new("x", 1u32);
        assert_eq!(a, Target::new("x", "other"));
        assert_eq!(a.parsed::<u32>(), Some(&1));
        assert_eq!(a.parsed::<String>(), None);
    }
}
