//! [`PulumiDeploymentsDouble`]: Pulumi Cloud's Deployments OIDC issuer
//! (`https://api.pulumi.com/oidc`; discovery, keys, RS256) on loopback under
//! `/oidc`, minting a deployment's token: `aud` the organization's name, `sub
//! pulumi:deploy:org:…:project:…:stack:…:operation:…:scope:write`, and each
//! part of the subject as a claim of its own.

use serde_json::{json, Value};

use super::tokens::OidcIssuer;

pub struct PulumiDeploymentsDouble {
    pub issuer: OidcIssuer,
}

impl PulumiDeploymentsDouble {
    pub async fn start() -> PulumiDeploymentsDouble {
        PulumiDeploymentsDouble {
            issuer: OidcIssuer::start(
                "/oidc",
                "/.well-known/jwks",
                "pulumi-oidc-kid",
                &[
                    "sub",
                    "aud",
                    "iss",
                    "exp",
                    "iat",
                    "nbf",
                    "jti",
                    "org",
                    "project",
                    "stack",
                    "stackId",
                    "operation",
                    "scope",
                ],
            )
            .await,
        }
    }

    /// A deployment of `org/project/stack` running `operation` (preview,
    /// update, refresh, destroy); every one carries `scope:write`.
    pub fn claims(&self, org: &str, project: &str, stack: &str, operation: &str) -> Value {
        json!({
            "aud": org,
            "sub": format!("pulumi:deploy:org:{org}:project:{project}:stack:{stack}:operation:{operation}:scope:write"),
            "org": org,
            "project": project,
            "stack": stack,
            "stackId": format!("{org}/{project}/{stack}"),
            "operation": operation,
            "scope": "write",
        })
    }

    pub fn token(&self, org: &str, project: &str, stack: &str, operation: &str) -> String {
        self.issuer
            .sign(self.claims(org, project, stack, operation), 3600)
    }
}
