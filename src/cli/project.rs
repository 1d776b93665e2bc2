//! Which stack the current directory deploys, for `stackpass run` without
//! `--stack`. The precedence, first match wins:
//!
//! 1. `--stack` (or `STACKPASS_STACK`);
//! 2. a Pulumi project (`Pulumi.yaml` here or in a parent directory, as the
//!    Pulumi CLI finds it): the stack is `PULUMI_STACK`, else the stack the
//!    workspace selected (`pulumi stack select`, kept in
//!    `$PULUMI_HOME/workspaces/<project>-<sha1 of the Pulumi.yaml path>-workspace.json`);
//!    it must name the organisation (`ORG/PROJECT/STACK` or `ORG/STACK`), since
//!    only Pulumi Cloud knows a login's default organisation;
//! 3. a Terraform directory (`*.tf` here): the organisation from the `cloud`
//!    block (else `TF_CLOUD_ORGANIZATION`), the workspace from `TF_WORKSPACE`,
//!    else the block's `workspaces { name = … }`, else the workspace
//!    `terraform workspace select` recorded in `.terraform/environment`.
//!
//! Nothing found is an error that says what to set.

use std::path::{Path, PathBuf};

use sha1::{Digest, Sha1};

use super::CliError;

/// The variables detection reads, so tests need not change the process's.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process's environment; empty values count as unset.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name)
            .ok()
            .filter(|value| !value.trim().is_empty())
    }
}

/// The stack reference (`pulumi:ORG/PROJECT/STACK` or `terraform:ORG/WORKSPACE`)
/// the directory `dir` deploys.
pub fn detect_stack(dir: &Path, env: &dyn Env) -> Result<String, CliError> {
    if let Some(project_file) = find_pulumi_project(dir) {
        return pulumi_stack(&project_file, env);
    }
    if has_terraform_files(dir) {
        return terraform_stack(dir, env);
    }
    Err(CliError::new(
        format!(
            "nothing in {} says which stack to use: no Pulumi.yaml here or above, and no *.tf files",
            dir.display()
        ),
        "pass --stack pulumi:ORG/PROJECT/STACK or --stack terraform:ORG/WORKSPACE (or set STACKPASS_STACK)",
    ))
}

fn find_pulumi_project(dir: &Path) -> Option<PathBuf> {
    dir.ancestors().find_map(|dir| {
        ["Pulumi.yaml", "Pulumi.yml"]
            .iter()
            .map(|name| dir.join(name))
            .find(|path| path.is_file())
    })
}

fn pulumi_stack(project_file: &Path, env: &dyn Env) -> Result<String, CliError> {
    let text = std::fs::read_to_string(project_file).map_err(|e| {
        CliError::new(
            format!("could not read {}: {e}", project_file.display()),
            "check the file's permissions, or pass --stack",
        )
    })?;
    let project = top_level_name(&text).ok_or_else(|| {
        CliError::new(
            format!("{} has no top-level name", project_file.display()),
            "give the project a `name:` or pass --stack",
        )
    })?;
    let (stack, source) = match env.var("PULUMI_STACK") {
        Some(stack) => (stack, "PULUMI_STACK"),
        None => match selected_pulumi_stack(project_file, &project, env) {
            Some(stack) => (stack, "the workspace's selected stack"),
            None => return Err(CliError::new(
                format!("the Pulumi project {project} has no selected stack"),
                "run `pulumi stack select ORG/PROJECT/STACK`, set PULUMI_STACK, or pass --stack",
            )),
        },
    };
    let parts: Vec<&str> = stack.trim().split('/').collect();
    let reference = match parts.as_slice() {
        [org, project, stack] => format!("pulumi:{org}/{project}/{stack}"),
        [org, stack] => format!("pulumi:{org}/{project}/{stack}"),
        _ => {
            return Err(CliError::new(
                format!("{source} names the stack {stack:?} without its organisation"),
                format!("use the fully-qualified name ORG/{project}/{stack} (pulumi stack select or PULUMI_STACK), or pass --stack"),
            ))
        }
    };
    Ok(reference)
}

/// The project's `name:`: a top-level key in Pulumi.yaml, a plain scalar.
fn top_level_name(yaml: &str) -> Option<String> {
    yaml.lines().find_map(|line| {
        let value = line.strip_prefix("name:")?;
        let value = value.split(" #").next().unwrap_or_default().trim();
        let value = value.trim_matches(|c| c == '"' || c == '\'');
        (!value.is_empty()).then(|| value.to_owned())
    })
}

fn selected_pulumi_stack(project_file: &Path, project: &str, env: &dyn Env) -> Option<String> {
    let home = env
        .var("PULUMI_HOME")
        .map(PathBuf::from)
        .or_else(|| env.var("HOME").map(|home| Path::new(&home).join(".pulumi")))?;
    let absolute = std::fs::canonicalize(project_file).ok()?;
    let digest = Sha1::digest(absolute.to_string_lossy().as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let file = home
        .join("workspaces")
        .join(format!("{project}-{hex}-workspace.json"));
    let settings: serde_json::Value = serde_json::from_slice(&std::fs::read(file).ok()?).ok()?;
    settings
        .get("stack")?
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

fn has_terraform_files(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|entry| entry.file_name().to_string_lossy().ends_with(".tf"))
    })
}

/// What a `terraform { cloud { … } }` block says.
#[derive(Debug, Default, PartialEq)]
struct CloudBlock {
    organization: Option<String>,
    workspace: Option<String>,
}

fn terraform_stack(dir: &Path, env: &dyn Env) -> Result<String, CliError> {
    let block = cloud_block(dir)?;
    let organization = block
        .organization
        .or_else(|| env.var("TF_CLOUD_ORGANIZATION"))
        .ok_or_else(|| {
            CliError::new(
                format!("the Terraform configuration in {} names no HCP Terraform organization", dir.display()),
                "add a `cloud { organization = \"…\" }` block, set TF_CLOUD_ORGANIZATION, or pass --stack terraform:ORG/WORKSPACE",
            )
        })?;
    let workspace = env
        .var("TF_WORKSPACE")
        .or(block.workspace)
        .or_else(|| {
            std::fs::read_to_string(dir.join(".terraform/environment"))
                .ok()
                .map(|name| name.trim().to_owned())
                .filter(|name| !name.is_empty() && name != "default")
        })
        .ok_or_else(|| {
            CliError::new(
                format!("nothing selects an HCP Terraform workspace in {}", dir.display()),
                "set TF_WORKSPACE, name it in `cloud { workspaces { name = \"…\" } }`, or pass --stack terraform:ORG/WORKSPACE",
            )
        })?;
    Ok(format!("terraform:{organization}/{workspace}"))
}

fn cloud_block(dir: &Path) -> Result<CloudBlock, CliError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| entry.path())
                .filter(|path| path.extension().is_some_and(|ext| ext == "tf"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|e| {
            CliError::new(
                format!("could not read {}: {e}", file.display()),
                "check the file's permissions, or pass --stack",
            )
        })?;
        let body: hcl::Body = hcl::from_str(&text).map_err(|e| {
            CliError::new(
                format!(
                    "{} is not valid HCL: {}",
                    file.display(),
                    e.to_string().lines().next().unwrap_or_default()
                ),
                "fix the file (terraform validate), or pass --stack",
            )
        })?;
        if let Some(block) = find_cloud_block(&body) {
            return Ok(block);
        }
    }
    Ok(CloudBlock::default())
}

fn find_cloud_block(body: &hcl::Body) -> Option<CloudBlock> {
    let cloud = body
        .blocks()
        .filter(|block| block.identifier() == "terraform")
        .flat_map(|terraform| terraform.body().blocks())
        .find(|block| block.identifier() == "cloud")?;
    let text = |body: &hcl::Body, key: &str| {
        body.attributes()
            .find(|attribute| attribute.key() == key)
            .and_then(|attribute| match attribute.expr() {
                hcl::Expression::String(value) => Some(value.clone()),
                _ => None,
            })
    };
    let workspace = cloud
        .body()
        .blocks()
        .find(|block| block.identifier() == "workspaces")
        .and_then(|workspaces| text(workspaces.body(), "name"));
    Some(CloudBlock {
        organization: text(cloud.body(), "organization"),
        workspace,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    struct Vars(HashMap<&'static str, String>);

    impl Env for Vars {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).cloned()
        }
    }

    fn vars(pairs: &[(&'static str, &str)]) -> Vars {
        Vars(pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect())
    }

    #[test]
    fn a_pulumi_project_uses_pulumi_stack_then_the_workspace_selection() {
        let home = tempfile::tempdir().unwrap();
        let project = home.path().join("infra");
        std::fs::create_dir_all(project.join("src")).unwrap();
        std::fs::write(
            project.join("Pulumi.yaml"),
            "name: payments # the service\nruntime: nodejs\n",
        )
        .unwrap();
        let nested = project.join("src");
        let env = vars(&[("PULUMI_STACK", "acme/dev")]);
        assert_eq!(
            detect_stack(&nested, &env).unwrap(),
            "pulumi:acme/payments/dev"
        );
        let pulumi_home = home.path().join("pulumi-home");
        let env = vars(&[("PULUMI_HOME", pulumi_home.to_str().unwrap())]);
        let error = detect_stack(&project, &env).unwrap_err();
        assert!(error.message.contains("no selected stack"), "{error}");
        let path = std::fs::canonicalize(project.join("Pulumi.yaml")).unwrap();
        let digest = Sha1::digest(path.to_string_lossy().as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::create_dir_all(pulumi_home.join("workspaces")).unwrap();
        let selection = pulumi_home.join(format!("workspaces/payments-{hex}-workspace.json"));
        std::fs::write(&selection, r#"{"stack":"acme/payments/staging"}"#).unwrap();
        assert_eq!(
            detect_stack(&project, &env).unwrap(),
            "pulumi:acme/payments/staging"
        );
        std::fs::write(&selection, r#"{"stack":"staging"}"#).unwrap();
        let error = detect_stack(&project, &env).unwrap_err();
        assert!(
            error.hint.unwrap().contains("ORG/payments/staging"),
            "an unqualified stack names what to write"
        );
    }

    #[test]
    fn a_terraform_directory_uses_its_cloud_block_and_tf_workspace() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("main.tf"),
            "terraform {\n  cloud {\n    organization = \"acme\"\n    workspaces {\n      name = \"search-dev\"\n    }\n  }\n}\n",
        )
        .unwrap();
        assert_eq!(
            detect_stack(dir.path(), &vars(&[])).unwrap(),
            "terraform:acme/search-dev"
        );
        assert_eq!(
            detect_stack(dir.path(), &vars(&[("TF_WORKSPACE", "search-prod")])).unwrap(),
            "terraform:acme/search-prod"
        );
        std::fs::write(
            dir.path().join("main.tf"),
            "terraform {\n  cloud {\n    workspaces { tags = [\"search\"] }\n  }\n}\n",
        )
        .unwrap();
        let error = detect_stack(dir.path(), &vars(&[])).unwrap_err();
        assert!(error.message.contains("organization"), "{error}");
        let env = vars(&[("TF_CLOUD_ORGANIZATION", "acme")]);
        assert!(detect_stack(dir.path(), &env)
            .unwrap_err()
            .message
            .contains("workspace"));
        std::fs::create_dir(dir.path().join(".terraform")).unwrap();
        std::fs::write(dir.path().join(".terraform/environment"), "search-qa\n").unwrap();
        assert_eq!(
            detect_stack(dir.path(), &env).unwrap(),
            "terraform:acme/search-qa"
        );
        std::fs::write(dir.path().join("main.tf"), "terraform {").unwrap();
        assert!(detect_stack(dir.path(), &env)
            .unwrap_err()
            .message
            .contains("not valid HCL"));
    }

    #[test]
    fn nothing_to_go_on_says_what_to_pass() {
        let dir = tempfile::tempdir().unwrap();
        let error = detect_stack(dir.path(), &vars(&[])).unwrap_err();
        assert!(error.hint.unwrap().contains("--stack"));
    }
}
