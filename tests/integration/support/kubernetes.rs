//! [`KubernetesDouble`]: a cluster's service-account token issuer (the
//! kube-apiserver's `--service-account-issuer`: discovery, keys at
//! `/openid/v1/jwks`, RS256) on loopback, minting a projected token with the
//! `kubernetes.io` claim.

use serde_json::{json, Value};

use super::tokens::OidcIssuer;

pub struct KubernetesDouble {
    pub issuer: OidcIssuer,
}

impl KubernetesDouble {
    pub async fn start() -> KubernetesDouble {
        KubernetesDouble {
            issuer: OidcIssuer::start("", "/openid/v1/jwks", "k8s-sa-kid", &["sub", "iss"]).await,
        }
    }

    pub fn claims(&self, namespace: &str, account: &str, audience: &str) -> Value {
        json!({
            "aud": [audience],
            "sub": format!("system:serviceaccount:{namespace}:{account}"),
            "kubernetes.io": {
                "namespace": namespace,
                "node": { "name": "node-1", "uid": "646e7c5e-32d6-4d42-9dbd-e504e6cbe6b1" },
                "pod": { "name": format!("{account}-7d4b9c-x2x9z"), "uid": "5e0bd49b-f040-43b0-99b7-22765a53f7f3" },
                "serviceaccount": { "name": account, "uid": "14ee3fa4-a7e2-420f-9f9a-dbc4507c3798" },
            },
        })
    }

    pub fn token(&self, namespace: &str, account: &str, audience: &str) -> String {
        self.issuer
            .sign(self.claims(namespace, account, audience), 3600)
    }
}
