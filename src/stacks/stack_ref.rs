//! Stack references as callers write them: `pulumi:acme/payments/dev`
//! (organization/project/stack) or `terraform:acme/payments-dev`
//! (organization/workspace). Parsing is strict so that a reference that reaches a
//! stack source, the policy or the audit log is always well formed.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StackTool {
    Pulumi,
    Terraform,
}

impl StackTool {
    pub fn as_str(self) -> &'static str {
        match self {
            StackTool::Pulumi => "pulumi",
            StackTool::Terraform => "terraform",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StackRef {
    tool: StackTool,
    organization: String,
    /// Pulumi projects; Terraform workspaces have none.
    project: Option<String>,
    name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StackRefError {
    #[error("stack reference {input:?} does not name a tool; write pulumi:ORG/PROJECT/STACK or terraform:ORG/WORKSPACE")]
    MissingTool { input: String },
    #[error("stack reference {input:?} names unknown tool {tool:?}; use pulumi or terraform")]
    UnknownTool { input: String, tool: String },
    #[error("stack reference {input:?} has the wrong shape; {expected}")]
    WrongShape {
        input: String,
        expected: &'static str,
    },
    #[error("stack reference {input:?} has an invalid segment {segment:?}: use letters, digits, '-', '_' and '.', at most 100 characters")]
    InvalidSegment { input: String, segment: String },
}

const MAX_SEGMENT_LEN: usize = 100;

impl StackRef {
    pub fn parse(input: &str) -> Result<Self, StackRefError> {
        let (tool, path) = input
            .split_once(':')
            .ok_or_else(|| StackRefError::MissingTool {
                input: input.to_owned(),
            })?;
        let tool = match tool {
            "pulumi" => StackTool::Pulumi,
            "terraform" => StackTool::Terraform,
            other => {
                return Err(StackRefError::UnknownTool {
                    input: input.to_owned(),
                    tool: other.to_owned(),
                })
            }
        };
        let segments: Vec<&str> = path.split('/').collect();
        let (organization, project, name) = match (tool, segments.as_slice()) {
            (StackTool::Pulumi, [org, project, stack]) => (*org, Some(*project), *stack),
            (StackTool::Terraform, [org, workspace]) => (*org, None, *workspace),
            (StackTool::Pulumi, _) => {
                return Err(StackRefError::WrongShape {
                    input: input.to_owned(),
                    expected: "Pulumi stacks are pulumi:ORGANIZATION/PROJECT/STACK",
                })
            }
            (StackTool::Terraform, _) => {
                return Err(StackRefError::WrongShape {
                    input: input.to_owned(),
                    expected: "Terraform workspaces are terraform:ORGANIZATION/WORKSPACE",
                })
            }
        };
        for segment in [Some(organization), project, Some(name)]
            .into_iter()
            .flatten()
        {
            if !valid_segment(segment) {
                return Err(StackRefError::InvalidSegment {
                    input: input.to_owned(),
                    segment: segment.to_owned(),
                });
            }
        }
        Ok(StackRef {
            tool,
            organization: organization.to_owned(),
            project: project.map(str::to_owned),
            name: name.to_owned(),
        })
    }

    pub fn tool(&self) -> StackTool {
        self.tool
    }

    pub fn organization(&self) -> &str {
        &self.organization
    }

    pub fn project(&self) -> Option<&str> {
        self.project.as_deref()
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

fn valid_segment(segment: &str) -> bool {
    !segment.is_empty()
        && segment.len() <= MAX_SEGMENT_LEN
        && segment != "."
        && segment != ".."
        && segment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl fmt::Display for StackRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/", self.tool.as_str(), self.organization)?;
        if let Some(project) = &self.project {
            write!(f, "{project}/")?;
        }
        f.write_str(&self.name)
    }
}

impl serde::Serialize for StackRef {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for StackRef {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        StackRef::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pulumi_and_terraform_references() {
        let pulumi = StackRef::parse("pulumi:acme/payments/dev").unwrap();
        assert_eq!(pulumi.tool(), StackTool::Pulumi);
        assert_eq!(pulumi.organization(), "acme");
        assert_eq!(pulumi.project(), Some("payments"));
        assert_eq!(pulumi.name(), "dev");
        assert_eq!(pulumi.to_string(), "pulumi:acme/payments/dev");

        let terraform = StackRef::parse("terraform:acme/payments-dev").unwrap();
        assert_eq!(terraform.project(), None);
        assert_eq!(terraform.to_string(), "terraform:acme/payments-dev");
    }

    #[test]
    fn rejects_malformed_references() {
        for bad in [
            "",
            "acme/payments/dev",
            "pulumi:",
            "pulumi:acme/payments",
            "pulumi:acme/payments/dev/extra",
            "terraform:acme/payments/dev",
            "terraform:acme",
            "cdk:acme/payments/dev",
            "Pulumi:acme/payments/dev",
            "pulumi:acme//dev",
            "pulumi:acme/../dev",
            "pulumi:acme/pay ments/dev",
            "pulumi:acme/payments/dev\u{0}",
            "pulumi:acme/payments/dév",
        ] {
            assert!(StackRef::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        let long = format!("pulumi:acme/payments/{}", "a".repeat(101));
        assert!(StackRef::parse(&long).is_err());
    }

    #[test]
    fn error_messages_say_how_to_fix_the_reference() {
        let err = StackRef::parse("pulumi:acme/payments")
            .unwrap_err()
            .to_string();
        assert!(err.contains("pulumi:ORGANIZATION/PROJECT/STACK"), "{err}");
    }
}
