//! Azure targets: the Entra app registration (tenant and client id) whose
//! federated credential trusts stackpass, the subject that credential matches,
//! and optionally the subscription tools should use:
//!
//! `tenants/TENANT/applications/CLIENT_ID[/subscriptions/SUBSCRIPTION_ID]/subjects/SUBJECT`
//!
//! Entra matches the subject exactly (no wildcards for custom issuers) and an
//! app holds at most 20 federated credentials, so the subject should be
//! coarse: a template over owner and environment (`team:{owner}:env:{environment}`),
//! not one per stack.

use stackpass_provider::{masked_pattern, HOLE};

pub const SYNTAX: &str =
    "tenants/TENANT/applications/CLIENT_ID[/subscriptions/SUBSCRIPTION_ID]/subjects/SUBJECT";
/// Entra's limit on a federated credential's subject.
const MAX_SUBJECT_CHARS: usize = 600;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureTarget {
    pub tenant: String,
    pub client_id: String,
    pub subscription: Option<String>,
    pub subject: String,
}

impl AzureTarget {
    pub fn parse(text: &str) -> Result<AzureTarget, String> {
        check_shape(text).map_err(|why| explain(text, &why))
    }
}

/// Checks a rule's target template; holes may sit inside any value.
pub fn check_pattern(pattern: &str) -> Result<(), String> {
    let masked = masked_pattern(pattern).map_err(|why| explain(pattern, &why))?;
    check_shape(&masked)
        .map(|_| ())
        .map_err(|why| explain(pattern, &why))
}

fn explain(text: &str, why: &str) -> String {
    format!("{text:?} is not an Azure target: {why}; write {SYNTAX}")
}

fn check_shape(text: &str) -> Result<AzureTarget, String> {
    let (head, subject) = text
        .split_once("/subjects/")
        .ok_or("it has no /subjects/SUBJECT (the subject the federated credential matches)")?;
    let segments: Vec<&str> = head.split('/').collect();
    let subscription = match segments.as_slice() {
        ["tenants", _, "applications", _] => None,
        ["tenants", _, "applications", _, "subscriptions", subscription] => Some(*subscription),
        _ => {
            return Err(
                "it must start tenants/TENANT/applications/CLIENT_ID, then optionally /subscriptions/ID".into(),
            )
        }
    };
    let (tenant, client_id) = (segments[1], segments[3]);
    if !(is_guid(tenant) || is_domain(tenant)) {
        return Err(format!(
            "the tenant {tenant:?} must be a tenant id (a GUID) or a verified domain"
        ));
    }
    if !is_guid(client_id) {
        return Err(format!(
            "the client id {client_id:?} must be the app registration's application (client) id, a GUID"
        ));
    }
    if let Some(subscription) = subscription.filter(|s| !is_guid(s)) {
        return Err(format!("the subscription {subscription:?} must be a GUID"));
    }
    if subject.is_empty()
        || subject.chars().count() > MAX_SUBJECT_CHARS
        || subject
            .chars()
            .any(|c| c.is_whitespace() || (c.is_control() && c != HOLE))
    {
        return Err(format!(
            "the subject must be 1 to {MAX_SUBJECT_CHARS} characters without spaces"
        ));
    }
    Ok(AzureTarget {
        tenant: tenant.to_owned(),
        client_id: client_id.to_owned(),
        subscription: subscription.map(str::to_owned),
        subject: subject.to_owned(),
    })
}

/// A GUID, or a template whose holes sit where its hex digits would.
fn is_guid(text: &str) -> bool {
    if text == HOLE.to_string() {
        return true;
    }
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups.iter().zip([8, 4, 4, 4, 12]).all(|(group, len)| {
            group.chars().all(|c| c.is_ascii_hexdigit() || c == HOLE)
                && (group.len() == len || group.contains(HOLE))
        })
}

fn is_domain(text: &str) -> bool {
    text.contains('.')
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | HOLE))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
    const CLIENT: &str = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";

    #[test]
    fn targets_with_and_without_a_subscription() {
        let plain = AzureTarget::parse(&format!(
            "tenants/{TENANT}/applications/{CLIENT}/subjects/team:payments:env:prod"
        ))
        .unwrap();
        assert_eq!(plain.subscription, None);
        assert_eq!(plain.subject, "team:payments:env:prod");
        let with = AzureTarget::parse(&format!(
            "tenants/contoso.onmicrosoft.com/applications/{CLIENT}/subscriptions/{TENANT}/subjects/a/b"
        ))
        .unwrap();
        assert_eq!(with.tenant, "contoso.onmicrosoft.com");
        assert_eq!(with.subscription.as_deref(), Some(TENANT));
        assert_eq!(with.subject, "a/b");
    }

    #[test]
    fn malformed_targets_say_what_is_wrong() {
        for (text, needle) in [
            (
                format!("tenants/{TENANT}/applications/{CLIENT}"),
                "/subjects/",
            ),
            (
                format!("tenants/{TENANT}/applications/payments/subjects/x"),
                "client id",
            ),
            (
                format!("tenants/nope/applications/{CLIENT}/subjects/x"),
                "tenant",
            ),
            (
                format!("tenants/{TENANT}/apps/{CLIENT}/subjects/x"),
                "must start",
            ),
            (
                format!("tenants/{TENANT}/applications/{CLIENT}/subscriptions/prod/subjects/x"),
                "subscription",
            ),
            (
                format!("tenants/{TENANT}/applications/{CLIENT}/subjects/a b"),
                "without spaces",
            ),
        ] {
            let error = AzureTarget::parse(&text).unwrap_err();
            assert!(error.contains(needle), "{text}: {error}");
        }
    }

    #[test]
    fn patterns_take_holes_in_values() {
        check_pattern(&format!(
            "tenants/{TENANT}/applications/{{tags.azure-client-id}}/subscriptions/{{tags.azure-subscription}}/subjects/team:{{owner}}:env:{{environment}}"
        ))
        .unwrap();
        assert!(check_pattern("tenants/{t}/applications/{c}").is_err());
    }
}
