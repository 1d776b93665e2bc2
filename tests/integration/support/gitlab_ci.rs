//! [`GitlabCiDouble`]: a GitLab instance's CI ID token issuer (discovery at the
//! instance URL, keys at `/oauth/discovery/keys`, RS256) on loopback, minting
//! the documented claims of an `id_tokens:` token.

use serde_json::{json, Value};

use super::tokens::OidcIssuer;

pub struct GitlabCiDouble {
    pub issuer: OidcIssuer,
}

pub struct GitlabPipeline {
    pub namespace: String,
    pub namespace_id: String,
    pub project: String,
    pub project_id: String,
    pub source: String,
    pub pipeline_id: String,
}

impl GitlabCiDouble {
    pub async fn start() -> GitlabCiDouble {
        GitlabCiDouble {
            issuer: OidcIssuer::start(
                "",
                "/oauth/discovery/keys",
                "gitlab-ci-kid",
                &[
                    "sub",
                    "iss",
                    "aud",
                    "exp",
                    "iat",
                    "nbf",
                    "jti",
                    "namespace_id",
                    "namespace_path",
                    "project_id",
                    "project_path",
                    "pipeline_id",
                    "pipeline_source",
                    "job_id",
                    "ref",
                    "ref_type",
                    "ref_protected",
                ],
            )
            .await,
        }
    }

    pub fn claims(&self, p: &GitlabPipeline, audience: &str) -> Value {
        let path = format!("{}/{}", p.namespace, p.project);
        json!({
            "sub": format!("project_path:{path}:ref_type:branch:ref:main"),
            "aud": audience,
            "namespace_id": p.namespace_id,
            "namespace_path": p.namespace,
            "project_id": p.project_id,
            "project_path": path,
            "user_id": "42",
            "user_login": "jane",
            "user_email": "jane@example.com",
            "user_access_level": "maintainer",
            "pipeline_id": p.pipeline_id,
            "pipeline_source": p.source,
            "job_id": "1212",
            "ref": "main",
            "ref_type": "branch",
            "ref_path": "refs/heads/main",
            "ref_protected": "true",
            "runner_id": 1,
            "runner_environment": "gitlab-hosted",
            "sha": "714a629c0b401fdce83e847fc9589983fc6f46bc",
            "project_visibility": "private",
            "ci_config_ref_uri": format!("gitlab.example.com/{path}//.gitlab-ci.yml@refs/heads/main"),
            "ci_config_sha": "714a629c0b401fdce83e847fc9589983fc6f46bc",
        })
    }

    pub fn token(&self, p: &GitlabPipeline, audience: &str) -> String {
        self.issuer.sign(self.claims(p, audience), 300)
    }
}
