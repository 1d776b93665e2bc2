//! Role and policy templates such as `arn:aws:iam::{tags.aws-account}:role/{component}-deployer`.
//!
//! Templates are parsed when the configuration loads, so an unknown variable is a
//! start-up error rather than a surprise at request time. Substituted values are
//! restricted to the characters IAM allows in names, so a tag value can never
//! change the shape of the ARN it lands in (no `/`, `*`, `:` or spaces).

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Variable(Variable),
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Variable {
    Tag(String),
    /// The component's name; only in the default namespace, where the name
    /// alone names it (elsewhere two components would share one role).
    Component,
    Owner,
    /// Explicit parts, for catalogs with more than one namespace.
    ComponentName,
    ComponentNamespace,
    OwnerName,
    OwnerNamespace,
    Environment,
    StackOrganization,
    StackProject,
    StackName,
}

impl fmt::Display for Variable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Variable::Tag(tag) => write!(f, "{{tags.{tag}}}"),
            Variable::Component => f.write_str("{component}"),
            Variable::Owner => f.write_str("{owner}"),
            Variable::ComponentName => f.write_str("{component.name}"),
            Variable::ComponentNamespace => f.write_str("{component.namespace}"),
            Variable::OwnerName => f.write_str("{owner.name}"),
            Variable::OwnerNamespace => f.write_str("{owner.namespace}"),
            Variable::Environment => f.write_str("{environment}"),
            Variable::StackOrganization => f.write_str("{stack.organization}"),
            Variable::StackProject => f.write_str("{stack.project}"),
            Variable::StackName => f.write_str("{stack.name}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("template {template:?} has an unclosed '{{'")]
    Unclosed { template: String },
    #[error("template {template:?} has a stray '}}'")]
    StrayBrace { template: String },
    #[error("template {template:?} uses unknown variable {{{name}}}; use {{tags.NAME}}, {{component}}, {{owner}}, {{component.name}}, {{component.namespace}}, {{owner.name}}, {{owner.namespace}}, {{environment}}, {{stack.organization}}, {{stack.project}} or {{stack.name}}")]
    UnknownVariable { template: String, name: String },
}

/// Why a template could not be filled for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenderError {
    Missing(Variable),
    Unsafe(Variable),
}

impl Template {
    pub fn parse(source: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = source;
        while !rest.is_empty() {
            match (rest.find('{'), rest.find('}')) {
                (_, Some(close)) if rest.find('{').is_none_or(|open| close < open) => {
                    return Err(TemplateError::StrayBrace {
                        template: source.into(),
                    });
                }
                (Some(open), _) => {
                    if open > 0 {
                        parts.push(Part::Literal(rest[..open].to_owned()));
                    }
                    let after = &rest[open + 1..];
                    let close = after.find('}').ok_or_else(|| TemplateError::Unclosed {
                        template: source.into(),
                    })?;
                    let name = &after[..close];
                    parts.push(Part::Variable(parse_variable(name).ok_or_else(|| {
                        TemplateError::UnknownVariable {
                            template: source.into(),
                            name: name.into(),
                        }
                    })?));
                    rest = &after[close + 1..];
                }
                (None, _) => {
                    parts.push(Part::Literal(rest.to_owned()));
                    rest = "";
                }
            }
        }
        Ok(Template {
            source: source.to_owned(),
            parts,
        })
    }

    /// Parses a template embedded in a JSON document (a session policy): only
    /// `{name}` where `name` looks like a variable is one; every other brace is
    /// JSON. A variable-looking name that is not a known variable is an error, so a
    /// typo cannot silently stay literal.
    pub fn parse_embedded(source: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = source;
        while let Some(open) = rest.find('{') {
            literal.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            let name = after
                .find('}')
                .map(|close| &after[..close])
                .filter(|name| looks_like_variable(name));
            match name {
                Some(name) => {
                    let variable =
                        parse_variable(name).ok_or_else(|| TemplateError::UnknownVariable {
                            template: source.into(),
                            name: name.into(),
                        })?;
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Variable(variable));
                    rest = &after[name.len() + 1..];
                }
                None => {
                    literal.push('{');
                    rest = after;
                }
            }
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Template {
            source: source.to_owned(),
            parts,
        })
    }

    pub fn variables(&self) -> impl Iterator<Item = &Variable> {
        self.parts.iter().filter_map(|p| match p {
            Part::Variable(v) => Some(v),
            Part::Literal(_) => None,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Fills the template; `lookup` answers each variable or `None` if it has no value.
    pub fn render<'a>(
        &self,
        lookup: impl Fn(&Variable) -> Option<&'a str>,
    ) -> Result<String, RenderError> {
        let mut out = String::with_capacity(self.source.len() + 32);
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Variable(variable) => {
                    let value =
                        lookup(variable).ok_or_else(|| RenderError::Missing(variable.clone()))?;
                    if !is_safe_value(value) {
                        return Err(RenderError::Unsafe(variable.clone()));
                    }
                    out.push_str(value);
                }
            }
        }
        Ok(out)
    }
}

fn parse_variable(name: &str) -> Option<Variable> {
    Some(match name {
        "component" => Variable::Component,
        "owner" => Variable::Owner,
        "component.name" => Variable::ComponentName,
        "component.namespace" => Variable::ComponentNamespace,
        "owner.name" => Variable::OwnerName,
        "owner.namespace" => Variable::OwnerNamespace,
        "environment" => Variable::Environment,
        "stack.organization" => Variable::StackOrganization,
        "stack.project" => Variable::StackProject,
        "stack.name" => Variable::StackName,
        _ => {
            let tag = name.strip_prefix("tags.")?;
            if tag.is_empty() {
                return None;
            }
            Variable::Tag(tag.to_owned())
        }
    })
}

fn looks_like_variable(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/'))
}

/// The characters IAM accepts in role names and account ids, and nothing that has
/// meaning in an ARN.
pub const SAFE_VALUE_CHARACTERS: &str = "letters, digits and + = , . @ _ -";

fn is_safe_value(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 128
        && value.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '+' | '=' | ',' | '.' | '@' | '_' | '-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_renders() {
        let t =
            Template::parse("arn:aws:iam::{tags.aws-account}:role/{component}-deployer").unwrap();
        let rendered = t
            .render(|v| match v {
                Variable::Tag(tag) if tag == "aws-account" => Some("111111111111"),
                Variable::Component => Some("payments"),
                _ => None,
            })
            .unwrap();
        assert_eq!(rendered, "arn:aws:iam::111111111111:role/payments-deployer");
        assert_eq!(t.variables().count(), 2);
    }

    #[test]
    fn rejects_bad_templates() {
        assert!(matches!(
            Template::parse("role/{component"),
            Err(TemplateError::Unclosed { .. })
        ));
        assert!(matches!(
            Template::parse("role/component}"),
            Err(TemplateError::StrayBrace { .. })
        ));
        assert!(matches!(
            Template::parse("role/{nope}"),
            Err(TemplateError::UnknownVariable { .. })
        ));
        assert!(matches!(
            Template::parse("role/{tags.}"),
            Err(TemplateError::UnknownVariable { .. })
        ));
    }

    #[test]
    fn embedded_templates_leave_json_braces_alone() {
        let t = Template::parse_embedded(
            r#"{"Statement":[{"Resource":"arn:aws:s3:::{component}-*"}]}"#,
        )
        .unwrap();
        let rendered = t.render(|_| Some("payments")).unwrap();
        assert_eq!(
            rendered,
            r#"{"Statement":[{"Resource":"arn:aws:s3:::payments-*"}]}"#
        );
        assert!(matches!(
            Template::parse_embedded(r#"{"Resource":"{compnent}"}"#),
            Err(TemplateError::UnknownVariable { .. })
        ));
    }

    #[test]
    fn refuses_values_that_would_change_the_arn() {
        let t = Template::parse("arn:aws:iam::1:role/{component}").unwrap();
        for bad in ["a/b", "*", "a:b", "a b", "", "ä"] {
            assert_eq!(
                t.render(|_| Some(bad)),
                Err(RenderError::Unsafe(Variable::Component)),
                "{bad:?}"
            );
        }
        assert_eq!(
            t.render(|_| None),
            Err(RenderError::Missing(Variable::Component))
        );
    }
}
