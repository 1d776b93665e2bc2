//! `stackpass setup aws`: the IAM OIDC identity provider that trusts this
//! broker, and the trust policy each role a rule names needs.

use stackpass_provider::TrustContext;

use crate::claims::{SOURCE_IDENTITY_CLAIM, TAGS_CLAIM};

pub fn setup(context: &TrustContext<'_>, audience: &str) -> String {
    // IAM names the provider by the issuer without its scheme.
    let provider = context
        .issuer_url
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let mut accounts: Vec<&str> = context
        .targets
        .iter()
        .filter_map(|role| role.split(':').nth(4))
        .collect();
    accounts.sort_unstable();
    accounts.dedup();
    if accounts.is_empty() {
        accounts.push("ACCOUNT");
    }
    let mut out = format!(
        "# AWS: trust stackpass ({issuer}) from IAM.\n\
         # 1. In each account, one IAM OIDC identity provider (AWS fetches the JWKS\n\
         #    from {issuer}/.well-known/jwks.json, so it must be reachable over HTTPS):\n\
         aws iam create-open-id-connect-provider --url {issuer} --client-id-list {audience}\n\n\
         # 2. Each role a rule names trusts it with this policy. `sub` is stack:<stack ref>;\n\
         #    narrow it (StringLike \"stack:pulumi:acme/payments/*\") per role. The subject\n\
         #    token carries {SOURCE_IDENTITY_CLAIM} and {TAGS_CLAIM},\n\
         #    hence SetSourceIdentity and TagSession.\n",
        issuer = context.issuer_url,
    );
    for account in accounts {
        let policy = serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Effect": "Allow",
                "Principal": { "Federated": format!("arn:aws:iam::{account}:oidc-provider/{provider}") },
                "Action": ["sts:AssumeRoleWithWebIdentity", "sts:SetSourceIdentity", "sts:TagSession"],
                "Condition": {
                    "StringEquals": { format!("{provider}:aud"): audience },
                    "StringLike": { format!("{provider}:sub"): "stack:*" }
                }
            }]
        });
        out.push_str(&format!(
            "\n# account {account}\n{}\n",
            serde_json::to_string_pretty(&policy).unwrap_or_default()
        ));
    }
    if !context.targets.is_empty() {
        out.push_str("\n# Roles your rules name:\n");
        for role in context.targets {
            out.push_str(&format!("#   {role}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trust_policy_names_the_provider_audience_and_accounts() {
        let targets = vec![
            "arn:aws:iam::111122223333:role/{component}-deployer".to_owned(),
            "arn:aws:iam::111122223333:role/reader".to_owned(),
        ];
        let text = setup(
            &TrustContext {
                issuer_url: "https://stackpass.example.com",
                targets: &targets,
            },
            "sts.amazonaws.com",
        );
        assert!(
            text.contains("--url https://stackpass.example.com --client-id-list sts.amazonaws.com")
        );
        assert!(text.contains("arn:aws:iam::111122223333:oidc-provider/stackpass.example.com"));
        assert!(text.contains("\"stackpass.example.com:aud\": \"sts.amazonaws.com\""));
        assert_eq!(
            text.matches("\"Version\"").count(),
            1,
            "one policy per account"
        );
    }
}
