//! Rules as people write them: `[[policy.rules]]` in the server config and
//! `[[rules]]` in policy files, parsed strictly (unknown keys are errors) and
//! handed to `validate` as a whole. Every problem names its file and line (or
//! config key).

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::agents::{validate_bounds, AgentBounds, AgentBoundsConfig};
use super::validate::{validate, PolicyProblem, RuleSource, ValidationContext};
use super::written::RuleConfig;
use super::Rule;

#[derive(Debug, Clone, thiserror::Error)]
pub struct PolicyError {
    pub problems: Vec<PolicyProblem>,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the policy has {} problem(s):", self.problems.len())?;
        for problem in &self.problems {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    rules: Vec<toml::Spanned<RuleConfig>>,
    /// Agent bounds (`[[agents]]`), validated with the config's.
    #[serde(default)]
    agents: Vec<toml::Spanned<AgentBoundsConfig>>,
}

/// The policy files named by `paths`: files as given, directories as every
/// `*.toml` inside them in name order.
pub fn expand_paths(paths: &[PathBuf]) -> Result<Vec<PathBuf>, PolicyError> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let entries = std::fs::read_dir(path).map_err(|e| single(path, e.to_string()))?;
            let mut found: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|ext| ext == "toml"))
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

fn single(path: &Path, message: String) -> PolicyError {
    PolicyError {
        problems: vec![PolicyProblem {
            source: path.display().to_string(),
            message,
        }],
    }
}

/// Loads and validates the config's rules followed by every policy file's, in
/// order. Either every rule is valid and the set is returned, or nothing is.
pub fn load_rules(
    config_rules: &[RuleConfig],
    paths: &[PathBuf],
    context: &ValidationContext,
) -> Result<Vec<Rule>, PolicyError> {
    load_rules_with_digest(config_rules, paths, context).map(|loaded| loaded.rules)
}

/// Rules and agent bounds from the config and every policy file, validated as
/// one set.
pub fn load_policy_set(
    config_rules: &[RuleConfig],
    config_agents: &[AgentBoundsConfig],
    paths: &[PathBuf],
    context: &ValidationContext,
) -> Result<LoadedPolicy, PolicyError> {
    load_all(config_rules, config_agents, paths, context)
}

/// Rules, and the SHA-256 of exactly the text they were loaded from (the
/// config's rules, each file's name and contents), so the audit log can say
/// which policy decided.
pub struct LoadedPolicy {
    pub rules: Vec<Rule>,
    pub agents: Vec<AgentBounds>,
    pub digest: String,
}

pub fn load_rules_with_digest(
    config_rules: &[RuleConfig],
    paths: &[PathBuf],
    context: &ValidationContext,
) -> Result<LoadedPolicy, PolicyError> {
    load_all(config_rules, &[], paths, context)
}

fn load_all(
    config_rules: &[RuleConfig],
    config_agents: &[AgentBoundsConfig],
    paths: &[PathBuf],
    context: &ValidationContext,
) -> Result<LoadedPolicy, PolicyError> {
    use sha2::{Digest, Sha256};
    let mut digest = Sha256::new();
    digest.update(format!("{config_rules:?}").as_bytes());
    // Only hashed when there are agent bounds, so the digest of a policy
    // without them is what it always was.
    if !config_agents.is_empty() {
        digest.update(format!("{config_agents:?}").as_bytes());
    }
    let mut agents: Vec<(RuleSource, AgentBoundsConfig)> = config_agents
        .iter()
        .enumerate()
        .map(|(i, entry)| (RuleSource(format!("policy.agents[{i}]")), entry.clone()))
        .collect();
    let mut written: Vec<(RuleSource, RuleConfig)> = config_rules
        .iter()
        .enumerate()
        .map(|(i, rule)| (RuleSource(format!("policy.rules[{i}]")), rule.clone()))
        .collect();
    let mut problems = Vec::new();
    for file in expand_paths(paths)? {
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => {
                digest.update(file.display().to_string().as_bytes());
                digest.update((text.len() as u64).to_be_bytes());
                digest.update(text.as_bytes());
                text
            }
            Err(e) => {
                problems.push(PolicyProblem {
                    source: file.display().to_string(),
                    message: format!("cannot read: {e}"),
                });
                continue;
            }
        };
        match toml::from_str::<PolicyFile>(&text) {
            Ok(parsed) => {
                for rule in parsed.rules {
                    let line = text[..rule.span().start].matches('\n').count() + 1;
                    written.push((
                        RuleSource(format!("{}:{line}", file.display())),
                        rule.into_inner(),
                    ));
                }
                for entry in parsed.agents {
                    let line = text[..entry.span().start].matches('\n').count() + 1;
                    agents.push((
                        RuleSource(format!("{}:{line}", file.display())),
                        entry.into_inner(),
                    ));
                }
            }
            Err(e) => problems.push(PolicyProblem {
                source: file.display().to_string(),
                message: e.to_string().trim_end().replace('\n', "\n      "),
            }),
        }
    }
    let rules = validate(&written, context, &mut problems);
    let agents = validate_bounds(&agents, context, &mut problems);
    if problems.is_empty() {
        Ok(LoadedPolicy {
            rules,
            agents,
            digest: format!("{:x}", digest.finalize()),
        })
    } else {
        Err(PolicyError { problems })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::validate::covers;
    use crate::policy::ValuePattern;
    use crate::registry::Providers;

    fn context() -> ValidationContext {
        ValidationContext {
            environment_tag: "environment".into(),
            providers: Providers::from_providers([crate::fakes::FakeCloud::named("aws")]),
        }
    }

    fn load_text(text: &str) -> Result<Vec<Rule>, PolicyError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, text).unwrap();
        load_rules(&[], &[path], &context()).map_err(|e| PolicyError {
            problems: e
                .problems
                .into_iter()
                .map(|p| PolicyProblem {
                    source: p.source.replace(&dir.path().display().to_string(), "DIR"),
                    message: p.message.replace(&dir.path().display().to_string(), "DIR"),
                })
                .collect(),
        })
    }

    const DEPLOY: &str = r#"
[[rules]]
name = "owners-deploy-nonprod"
provider = "aws"
tags = { environment = ["dev", "staging"], aws-account = ["*"] }
role = "arn:aws:iam::{tags.aws-account}:role/{component}-deployer"
"#;

    #[test]
    fn a_valid_file_loads_with_its_lines() {
        let rules = load_text(DEPLOY).unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(
            rules[0].source.0,
            format!("{}:2", rules[0].source.0.rsplit_once(':').unwrap().0)
        );
    }

    #[test]
    fn unknown_keys_are_reported_with_file_and_line() {
        let err = load_text(&format!("{DEPLOY}colour = \"blue\"\n")).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("DIR/policy.toml") && text.contains("line 7") && text.contains("colour"),
            "{text}"
        );
    }

    #[test]
    fn a_template_using_an_unguaranteed_tag_is_reported() {
        let err = load_text(&DEPLOY.replace(", aws-account = [\"*\"]", "")).unwrap_err();
        assert_eq!(err.problems.len(), 1);
        assert_eq!(err.problems[0].source, "DIR/policy.toml:2");
        assert!(
            err.problems[0]
                .message
                .contains("role uses {tags.aws-account}, which no selector guarantees"),
            "{err}"
        );
    }

    #[test]
    fn shadowed_rules_are_reported() {
        let text = format!(
            "{DEPLOY}\n[[rules]]\nname = \"dev-only\"\nprovider = \"aws\"\ntags = {{ environment = [\"dev\"], aws-account = [\"111111111111\"] }}\nrole = \"arn:aws:iam::{{tags.aws-account}}:role/x\"\n"
        );
        let err = load_text(&text).unwrap_err();
        assert_eq!(err.problems.len(), 1, "{err}");
        assert_eq!(err.problems[0].source, "DIR/policy.toml:8");
        assert!(
            err.problems[0]
                .message
                .contains("can never match: rule \"owners-deploy-nonprod\" (DIR/policy.toml:2)"),
            "{err}"
        );

        // A narrower rule first does not shadow a broader one after it.
        let reversed = format!(
            "[[rules]]\nname = \"dev-only\"\nprovider = \"aws\"\ntags = {{ environment = [\"dev\"], aws-account = [\"111111111111\"] }}\nrole = \"arn:aws:iam::{{tags.aws-account}}:role/x\"\n{DEPLOY}"
        );
        assert!(load_text(&reversed).is_ok());
        // Globs: staging-* is covered by *, not by staging-eu.
        let mut a = load_text(DEPLOY).unwrap().remove(0);
        let mut b = a.clone();
        a.tags
            .insert("environment".into(), vec![ValuePattern::new("staging-eu")]);
        b.tags
            .insert("environment".into(), vec![ValuePattern::new("staging-*")]);
        assert!(!covers(&a, &b));
        assert!(covers(&b, &a));
    }

    #[test]
    fn widening_and_effects_are_checked() {
        let err = load_text(
            "[[rules]]\nname = \"everyone\"\nprovider = \"aws\"\nrequire_owner = false\nrole = \"arn:aws:iam::1:role/r\"\n\
             [[rules]]\nname = \"no-role\"\nprovider = \"aws\"\n\
             [[rules]]\nname = \"deny-with-role\"\neffect = \"deny\"\nprovider = \"aws\"\nrole = \"arn:aws:iam::1:role/r\"\n",
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("name the groups it widens to"), "{text}");
        assert!(text.contains("allow rules need a role"), "{text}");
        assert!(text.contains("deny rules grant nothing"), "{text}");
        let sre = load_text(
            "[[rules]]\nname = \"sre-read\"\nprovider = \"aws\"\nrequire_owner = false\ngroups = [\"group:default/sre\"]\nrole = \"arn:aws:iam::1:role/readonly\"\n",
        )
        .unwrap();
        assert!(!sre[0].require_owner);
    }

    #[test]
    fn run_phases_load_and_are_checked() {
        let phased = |phases: &str, extra: &str| {
            format!(
                "[[rules]]\nname = \"plans-read\"\nprovider = \"aws\"\nrun_phases = {phases}\n{extra}tags = {{ aws-account = [\"*\"] }}\nrole = \"arn:aws:iam::{{tags.aws-account}}:role/{{component}}-readonly\"\n"
            )
        };
        let rules = load_text(&phased("[\"plan\", \"preview\"]", "")).unwrap();
        assert_eq!(
            rules[0].run_phases,
            [
                crate::identity::RunPhase::Plan,
                crate::identity::RunPhase::Preview
            ]
        );
        let unknown = load_text(&phased("[\"deploy\"]", ""))
            .unwrap_err()
            .to_string();
        assert!(
            unknown.contains("deploy") && unknown.contains("plan"),
            "{unknown}"
        );
        let twice = load_text(&phased("[\"plan\", \"plan\"]", ""))
            .unwrap_err()
            .to_string();
        assert!(twice.contains("run_phases lists plan twice"), "{twice}");
        let humans = load_text(&phased("[\"plan\"]", "requester_kinds = [\"human\"]\n"))
            .unwrap_err()
            .to_string();
        assert!(
            humans.contains("run_phases only match pipeline runs"),
            "{humans}"
        );
        // A rule for any phase shadows a later phase-limited one; not the reverse.
        let plans = phased("[\"plan\"]", "");
        assert!(load_text(&format!("{plans}\n{DEPLOY}")).is_ok());
        let shadowed = load_text(&format!(
            "{DEPLOY}\n{}",
            plans.replace(
                "aws-account = [\"*\"]",
                "environment = [\"dev\"], aws-account = [\"*\"]"
            )
        ))
        .unwrap_err()
        .to_string();
        assert!(shadowed.contains("can never match"), "{shadowed}");
    }

    #[test]
    fn nothing_is_loaded_when_anything_is_wrong() {
        let text = format!("{DEPLOY}\n[[rules]]\nname = \"owners-deploy-nonprod\"\nprovider = \"gcp\"\nrole = \"x\"\n");
        let err = load_text(&text).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("the name is used by another rule")
                && text.contains("provider gcp is not configured"),
            "{text}"
        );
    }
}
