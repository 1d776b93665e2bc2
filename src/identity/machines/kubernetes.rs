//! Kubernetes service-account tokens (projected volume tokens; `iss` the
//! cluster's `--service-account-issuer`, `aud` the projection's `audience`,
//! `sub system:serviceaccount:NAMESPACE:NAME`, the `kubernetes.io` claim
//! naming the namespace, service account and pod).
//!
//! Kept explicit: the configuration maps each `NAMESPACE/NAME` to one
//! component; any other service account is nobody.

use std::collections::BTreeMap;

use super::{invalid, nobody, plain};
use crate::catalog::EntityRef;
use crate::identity::{
    ClaimMapping, IdentityError, MappedPrincipal, PipelineRun, PipelineSystem, PrincipalKind,
    VerifiedClaims,
};

pub struct KubernetesMapping {
    /// `NAMESPACE/NAME` → the component it acts as.
    pub service_accounts: BTreeMap<String, EntityRef>,
}

#[async_trait::async_trait]
impl ClaimMapping for KubernetesMapping {
    async fn principal(&self, claims: &VerifiedClaims) -> Result<MappedPrincipal, IdentityError> {
        let sub = plain("sub", claims.required_text("sub")?)?;
        let (namespace, name) = sub
            .strip_prefix("system:serviceaccount:")
            .and_then(|rest| rest.split_once(':'))
            .filter(|(ns, n)| !ns.is_empty() && !n.is_empty() && !n.contains(':'))
            .ok_or_else(|| invalid("sub is not system:serviceaccount:NAMESPACE:NAME"))?;
        // The kubernetes.io claim says the same in structured form; a token
        // whose two halves disagree was not minted by a kube-apiserver.
        let k8s = claims
            .0
            .get("kubernetes.io")
            .and_then(|v| v.as_object())
            .ok_or_else(|| invalid("the kubernetes.io claim is missing"))?;
        let claimed_namespace = k8s.get("namespace").and_then(|v| v.as_str());
        let claimed_name = k8s
            .get("serviceaccount")
            .and_then(|sa| sa.get("name"))
            .and_then(|v| v.as_str());
        if claimed_namespace != Some(namespace) || claimed_name != Some(name) {
            return Err(invalid(
                "the kubernetes.io claim names another service account than sub",
            ));
        }
        let account = format!("{namespace}/{name}");
        let subject = self
            .service_accounts
            .get(&account)
            .cloned()
            .ok_or_else(|| {
                nobody(format!(
                    "service account {account} is not mapped to a component (service_accounts)"
                ))
            })?;
        let mut run = PipelineRun::new(PipelineSystem::Kubernetes);
        run.repository = Some(account);
        run.run_id = k8s
            .get("pod")
            .and_then(|pod| pod.get("name"))
            .and_then(|v| v.as_str())
            .map(|pod| plain("kubernetes.io.pod.name", pod).map(str::to_owned))
            .transpose()?;
        Ok(MappedPrincipal {
            subject,
            kind: PrincipalKind::Service,
            actors: Vec::new(),
            pipeline: Some(run),
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::test_support::claims;
    use super::*;

    fn mapping() -> KubernetesMapping {
        KubernetesMapping {
            service_accounts: BTreeMap::from([(
                "payments/deployer".to_owned(),
                EntityRef::parse_strict("component:default/payments").unwrap(),
            )]),
        }
    }

    fn token(namespace: &str, name: &str) -> serde_json::Value {
        json!({
            "sub": format!("system:serviceaccount:{namespace}:{name}"),
            "kubernetes.io": {
                "namespace": namespace,
                "serviceaccount": { "name": name, "uid": "sa-uid" },
                "pod": { "name": "deployer-abc", "uid": "pod-uid" },
            },
        })
    }

    #[tokio::test]
    async fn mapped_service_accounts_are_their_component() {
        let mapped = mapping()
            .principal(&claims(token("payments", "deployer")))
            .await
            .unwrap();
        assert_eq!(mapped.subject.to_string(), "component:default/payments");
        assert_eq!(
            mapped.pipeline.unwrap().run_id.as_deref(),
            Some("deployer-abc")
        );
    }

    #[tokio::test]
    async fn others_are_nobody_and_inconsistent_tokens_invalid() {
        assert!(matches!(
            mapping()
                .principal(&claims(token("payments", "default")))
                .await,
            Err(IdentityError::NoCatalogEntity(_))
        ));
        let mut lying = token("payments", "deployer");
        lying["kubernetes.io"]["namespace"] = json!("other");
        assert!(matches!(
            mapping().principal(&claims(lying)).await,
            Err(IdentityError::InvalidClaims(_))
        ));
        let mut bad = token("payments", "deployer");
        bad["sub"] = json!("system:serviceaccount:payments");
        assert!(mapping().principal(&claims(bad)).await.is_err());
    }
}
