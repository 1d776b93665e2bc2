//! `stackpass setup azure`: the federated identity credentials each app
//! registration needs. Entra matches issuer, subject and audience exactly and
//! allows at most 20 per app, so subjects are templates over owner and
//! environment: one credential per value.

use std::collections::BTreeMap;

use stackpass_provider::TrustContext;

/// Entra's limit of federated identity credentials per app registration.
pub const MAX_CREDENTIALS_PER_APP: usize = 20;

pub fn setup(context: &TrustContext<'_>, audience: &str) -> String {
    let issuer = context.issuer_url;
    let mut by_app: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for target in context.targets {
        let Some((head, subject)) = target.split_once("/subjects/") else {
            continue;
        };
        let app = head.split('/').nth(3).unwrap_or("CLIENT_ID").to_owned();
        let subjects = by_app.entry(app).or_default();
        if !subjects.contains(&subject.to_owned()) {
            subjects.push(subject.to_owned());
        }
    }
    if by_app.is_empty() {
        by_app.insert("CLIENT_ID".into(), vec!["SUBJECT".into()]);
    }
    let mut out = format!(
        "# Azure: trust stackpass ({issuer}) with federated identity credentials.\n\
         # Entra fetches {issuer}/.well-known/openid-configuration and its JWKS over HTTPS,\n\
         # verifies RS256 only, and matches issuer and subject exactly (no wildcards):\n\
         # a subject with {{…}} needs one credential per value it takes. At most\n\
         # {MAX_CREDENTIALS_PER_APP} per app.\n"
    );
    for (app, subjects) in &by_app {
        out.push_str(&format!("\n# app {app}\n"));
        if subjects.len() > MAX_CREDENTIALS_PER_APP {
            out.push_str(&format!(
                "# WARNING: {} subjects; Entra allows {MAX_CREDENTIALS_PER_APP} per app. Make the subject template coarser.\n",
                subjects.len()
            ));
        }
        for subject in subjects {
            let name: String = subject
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' {
                        c
                    } else {
                        '-'
                    }
                })
                .collect();
            let parameters = serde_json::json!({
                "name": format!("stackpass-{}", name.trim_matches('-')),
                "issuer": issuer,
                "subject": subject,
                "audiences": [audience],
            });
            out.push_str(&format!(
                "az ad app federated-credential create --id {app} --parameters '{parameters}'\n"
            ));
        }
    }
    out.push_str(
        "\n# Terraform's azurerm and Pulumi's azure-native take the assertion themselves:\n\
         #   eval \"$(stackpass creds --provider azure --stack STACK --format azure-oidc)\"\n\
         # sets ARM_USE_OIDC, ARM_OIDC_TOKEN, ARM_CLIENT_ID, ARM_TENANT_ID (and ARM_SUBSCRIPTION_ID).\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_credential_per_app_and_subject() {
        let targets = vec![
            "tenants/t/applications/app-1/subjects/team:{owner}:env:prod".to_owned(),
            "tenants/t/applications/app-1/subscriptions/s/subjects/team:{owner}:env:prod"
                .to_owned(),
            "tenants/t/applications/app-2/subjects/deployers".to_owned(),
        ];
        let text = setup(
            &TrustContext {
                issuer_url: "https://sp.example.com",
                targets: &targets,
            },
            "api://AzureADTokenExchange",
        );
        assert_eq!(text.matches("--id app-1").count(), 1);
        assert_eq!(text.matches("--id app-2").count(), 1);
        assert!(
            text.contains(r#""subject":"team:{owner}:env:prod""#),
            "{text}"
        );
        assert!(text.contains(r#""audiences":["api://AzureADTokenExchange"]"#));
    }
}
