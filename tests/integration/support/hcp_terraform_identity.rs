//! [`HcpTerraformIssuerDouble`]: HCP Terraform's workload identity issuer
//! (`https://app.terraform.io`; discovery, keys, RS256) on loopback, minting
//! the token a run phase gets in `TFC_WORKLOAD_IDENTITY_TOKEN`: `aud` the
//! workspace's `TFC_WORKLOAD_IDENTITY_AUDIENCE`, `sub
//! organization:…:project:…:workspace:…:run_phase:…` and the `terraform_*`
//! claims.

use serde_json::{json, Value};

use super::tokens::OidcIssuer;

pub struct HcpTerraformIssuerDouble {
    pub issuer: OidcIssuer,
}

pub struct TerraformRun {
    pub organization: String,
    pub organization_id: String,
    pub workspace: String,
    pub phase: String,
    pub run_id: String,
}

impl HcpTerraformIssuerDouble {
    pub async fn start() -> HcpTerraformIssuerDouble {
        HcpTerraformIssuerDouble {
            issuer: OidcIssuer::start(
                "",
                "/.well-known/jwks",
                "j-fFp9evPRHKxGWNPfspt5ADUrACSHbGaj7CzQX3FNM",
                &[
                    "sub",
                    "aud",
                    "iss",
                    "exp",
                    "iat",
                    "nbf",
                    "jti",
                    "terraform_run_phase",
                    "terraform_workspace_id",
                    "terraform_workspace_name",
                    "terraform_organization_id",
                    "terraform_organization_name",
                    "terraform_run_id",
                    "terraform_full_workspace",
                    "terraform_project_id",
                    "terraform_project_name",
                ],
            )
            .await,
        }
    }

    pub fn claims(&self, run: &TerraformRun, audience: &str) -> Value {
        let workspace = format!(
            "organization:{}:project:Default Project:workspace:{}",
            run.organization, run.workspace
        );
        json!({
            "aud": audience,
            "sub": format!("{workspace}:run_phase:{}", run.phase),
            "terraform_run_phase": run.phase,
            "terraform_workspace_id": "ws-mbsd5E3Ktt5Rg2Xm",
            "terraform_workspace_name": run.workspace,
            "terraform_organization_id": run.organization_id,
            "terraform_organization_name": run.organization,
            "terraform_run_id": run.run_id,
            "terraform_full_workspace": workspace,
            "terraform_project_id": "prj-vegSA59s1XPwMr2t",
            "terraform_project_name": "Default Project",
        })
    }

    pub fn token(&self, run: &TerraformRun, audience: &str) -> String {
        self.issuer.sign(self.claims(run, audience), 1800)
    }
}
