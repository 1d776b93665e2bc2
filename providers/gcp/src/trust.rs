//! `stackpass setup gcp`: the workload identity pool provider that trusts this
//! broker, the impersonation binding each service account needs, and the
//! credential configuration Google's client libraries read for
//! executable-sourced credentials (federation mode).

use stackpass_provider::TrustContext;

use crate::settings::GcpSettings;

/// Claims a pool provider maps, so IAM conditions and principal sets can use
/// them: `google.subject` is stackpass's `sub` (at most 127 bytes).
pub const ATTRIBUTE_MAPPING: &str = "google.subject=assertion.sub,attribute.stack=assertion.stackpass.stack,attribute.environment=assertion.stackpass.environment,attribute.requester=assertion.stackpass.requester,attribute.rule=assertion.stackpass.rule";

pub fn setup(context: &TrustContext<'_>, settings: &GcpSettings) -> String {
    let issuer = context.issuer_url;
    let mut pools: Vec<(String, String, String)> = Vec::new();
    let mut accounts: Vec<(String, String, String)> = Vec::new();
    for target in context.targets {
        let segments: Vec<&str> = target.split('/').collect();
        if segments.len() < 8 {
            continue;
        }
        let pool = (
            segments[1].to_owned(),
            segments[5].to_owned(),
            segments[7].to_owned(),
        );
        if let Some(account) = segments.get(9) {
            accounts.push(((*account).to_owned(), pool.0.clone(), pool.1.clone()));
        }
        pools.push(pool);
    }
    pools.sort();
    pools.dedup();
    accounts.sort();
    accounts.dedup();
    if pools.is_empty() {
        pools.push(("PROJECT_NUMBER".into(), "POOL".into(), "PROVIDER".into()));
    }
    let mut out = format!(
        "# GCP: trust stackpass ({issuer}) through workload identity federation.\n\
         # Google fetches {issuer}/.well-known/jwks.json, so it must be reachable over HTTPS.\n\
         # Leave the allowed audiences empty: stackpass puts the provider's default\n\
         # audience (https://iam.googleapis.com/<provider>) in `aud`.\n"
    );
    for (number, pool, provider) in &pools {
        out.push_str(&format!(
            "\ngcloud iam workload-identity-pools create {pool} --project={number} --location=global\n\
             gcloud iam workload-identity-pools providers create-oidc {provider} --project={number} \\\n  \
             --location=global --workload-identity-pool={pool} \\\n  \
             --issuer-uri=\"{issuer}\" \\\n  \
             --attribute-mapping=\"{ATTRIBUTE_MAPPING}\" \\\n  \
             --attribute-condition=\"assertion.iss == '{issuer}'\"\n"
        ));
    }
    if !accounts.is_empty() {
        out.push_str(
            "\n# Each service account a rule names lets the pool impersonate it. Narrow the\n\
             # member to one environment with .../attribute.environment/prod.\n",
        );
    }
    for (account, number, pool) in &accounts {
        out.push_str(&format!(
            "gcloud iam service-accounts add-iam-policy-binding {account} \\\n  \
             --role=roles/iam.workloadIdentityUser \\\n  \
             --member=\"principalSet://iam.googleapis.com/projects/{number}/locations/global/workloadIdentityPools/{pool}/*\"\n"
        ));
    }
    let (number, pool, provider) = &pools[0];
    let mut config = serde_json::json!({
        "universe_domain": "googleapis.com",
        "type": "external_account",
        "audience": format!("//iam.googleapis.com/projects/{number}/locations/global/workloadIdentityPools/{pool}/providers/{provider}"),
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "token_url": format!("{}/v1/token", settings.sts_endpoint),
        "credential_source": {
            "executable": {
                "command": "stackpass creds --provider gcp --stack STACK --format gcp-executable",
                "timeout_millis": 30000
            }
        }
    });
    if let Some((account, _, _)) = accounts.first() {
        config["service_account_impersonation_url"] = format!(
            "{}/v1/projects/-/serviceAccounts/{account}:generateAccessToken",
            settings.iam_credentials_endpoint
        )
        .into();
    }
    out.push_str(&format!(
        "\n# Federation mode: Google's client libraries (and so Pulumi's and Terraform's\n\
         # google providers) run stackpass for a subject token and exchange it\n\
         # themselves. Save this as the file GOOGLE_APPLICATION_CREDENTIALS names, with\n\
         # GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES=1, STACKPASS_URL and STACKPASS_TOKEN set:\n{}\n",
        serde_json::to_string_pretty(&config).unwrap_or_default()
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use stackpass_provider::SettingsContext;

    #[test]
    fn pool_providers_bindings_and_the_credential_config_come_from_the_targets() {
        let settings = GcpSettings::parse(
            serde_json::json!({}),
            &SettingsContext {
                cloud_budget: std::time::Duration::from_secs(15),
            },
        )
        .unwrap();
        let targets = vec![
            "projects/123/locations/global/workloadIdentityPools/stackpass/providers/broker/serviceAccounts/{component}@acme.iam.gserviceaccount.com".to_owned(),
            "projects/123/locations/global/workloadIdentityPools/stackpass/providers/broker".to_owned(),
        ];
        let text = setup(
            &TrustContext {
                issuer_url: "https://sp.example.com",
                targets: &targets,
            },
            &settings,
        );
        assert_eq!(text.matches("providers create-oidc broker").count(), 1);
        assert!(text.contains("--issuer-uri=\"https://sp.example.com\""));
        assert!(text.contains("add-iam-policy-binding {component}@acme.iam.gserviceaccount.com"));
        assert!(text.contains("\"token_url\": \"https://sts.googleapis.com/v1/token\""));
        assert!(text.contains("--format gcp-executable"));
    }
}
