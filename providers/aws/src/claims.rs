//! What AWS reads from the subject token: the requester as source identity (so
//! CloudTrail names the person) and principal tags from the catalog (so IAM
//! policies can use `aws:PrincipalTag/component`). The role session is named
//! after the requester too.
//!
//! An agent acting for a person: source identity is a single value (2 to 64
//! characters, and it sticks to every role chained from the session), so it
//! keeps naming the person, the one accountable; the agent is the `actor`
//! principal tag (`none` for anyone else), so CloudTrail's session context
//! names both and an IAM condition on `aws:PrincipalTag/actor` can keep
//! agents out of a role.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};
use stackpass_provider::IssuanceFacts;

pub const SOURCE_IDENTITY_CLAIM: &str = "https://aws.amazon.com/source_identity";
pub const TAGS_CLAIM: &str = "https://aws.amazon.com/tags";

/// The tags stackpass always sets; a rule's session tags may not override them.
const RESERVED_TAGS: [&str; 5] = ["requester", "actor", "component", "owner", "environment"];

/// STS session tag values: at most 256 characters of
/// `[\p{L}\p{Z}\p{N}_.:/=+\-@]` (API reference, `Tag`).
const TAG_VALUE_MAX: usize = 256;

pub fn subject_claims(facts: &IssuanceFacts) -> serde_json::Map<String, serde_json::Value> {
    let mut claims = serde_json::Map::new();
    claims.insert(
        SOURCE_IDENTITY_CLAIM.into(),
        safe_name(&facts.requester).into(),
    );
    claims.insert(TAGS_CLAIM.into(), principal_tags(facts));
    claims
}

/// The principal tags: who asked and what the stack is, then the grant's own
/// session tags (which may not override the first four). All transitive.
fn principal_tags(facts: &IssuanceFacts) -> serde_json::Value {
    let mut tags: BTreeMap<&str, [String; 1]> = BTreeMap::new();
    for (key, value) in &facts.session_tags {
        tags.insert(key, [value.clone()]);
    }
    let actor = facts.actor.as_deref().map(tag_value);
    let fixed = [
        Some(facts.requester.as_str()),
        actor.as_deref(),
        facts.component_name.as_deref(),
        facts.owner.as_deref(),
        facts.environment.as_deref(),
    ];
    for (key, value) in RESERVED_TAGS.into_iter().zip(fixed) {
        tags.insert(key, [value.unwrap_or("none").to_owned()]);
    }
    serde_json::json!({
        "principal_tags": tags,
        "transitive_tag_keys": tags.keys().collect::<Vec<_>>(),
    })
}

/// A name AWS accepts as `SourceIdentity` and `RoleSessionName`: 2 to 64 of
/// `[A-Za-z0-9_+=,.@-]`. `user:default/jane` becomes `user.default.jane`; this is
/// unambiguous because entity kinds and namespaces cannot contain the
/// separators. Over-long names keep a readable prefix and end in a hash so
/// distinct requesters stay distinct.
pub fn safe_name(requester: &str) -> String {
    let name: String = requester
        .replacen(':', ".", 1)
        .replacen('/', ".", 1)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_+=,.@-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    if name.len() <= 64 {
        return name;
    }
    let digest = Sha256::digest(name.as_bytes());
    let suffix: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("{}-{suffix}", &name[..64 - 13])
}

/// A value STS accepts as a session tag: an agent's name comes from its
/// token's `act.sub`, which may hold characters tags may not; those become
/// `-`, and an over-long name keeps a prefix and a hash, as [`safe_name`].
fn tag_value(text: &str) -> String {
    let value: String = text
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c.is_whitespace() || "_.:/=+-@".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    if value.chars().count() <= TAG_VALUE_MAX {
        return value;
    }
    let digest = Sha256::digest(text.as_bytes());
    let suffix: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    let prefix: String = value.chars().take(TAG_VALUE_MAX - 13).collect();
    format!("{prefix}-{suffix}")
}

/// Session tag keys as IAM accepts them, and not in the `aws:` namespace.
pub fn check_tag_key(key: &str) -> Result<(), String> {
    let valid = !key.is_empty()
        && key.len() <= 128
        && !key.starts_with("aws:")
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.:/=+-@".contains(c));
    if valid {
        Ok(())
    } else {
        Err("not a valid AWS tag key".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_names_fit_the_aws_charset_and_length() {
        assert_eq!(safe_name("user:default/jane"), "user.default.jane");
        let a = safe_name(&format!("user:default/{}", "a".repeat(63)));
        let b = safe_name(&format!("user:default/{}b", "a".repeat(62)));
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c)));
    }

    #[test]
    fn principal_tags_name_the_requester_and_catalog_facts_and_win_over_session_tags() {
        let facts = IssuanceFacts {
            requester: "user:default/jane".into(),
            component_name: Some("payments".into()),
            owner: Some("group:default/team-payments".into()),
            session_tags: [
                ("cost-center".to_string(), "cc-42".to_string()),
                ("owner".to_string(), "someone-else".to_string()),
            ]
            .into(),
            ..IssuanceFacts::default()
        };
        let claims = subject_claims(&facts);
        assert_eq!(claims[SOURCE_IDENTITY_CLAIM], "user.default.jane");
        let tags = &claims[TAGS_CLAIM]["principal_tags"];
        assert_eq!(tags["owner"][0], "group:default/team-payments");
        assert_eq!(tags["cost-center"][0], "cc-42");
        assert_eq!(tags["environment"][0], "none");
        assert_eq!(tags["actor"][0], "none");
        assert_eq!(
            claims[TAGS_CLAIM]["transitive_tag_keys"]
                .as_array()
                .unwrap()
                .len(),
            6
        );
    }

    #[test]
    fn an_agent_is_a_tag_and_the_person_stays_the_source_identity() {
        let facts = IssuanceFacts {
            requester: "user:default/jane".into(),
            requester_kind: "agent".into(),
            actor: Some("component:agents/deploy-bot".into()),
            session_tags: [("actor".to_string(), "forged".to_string())].into(),
            ..IssuanceFacts::default()
        };
        let claims = subject_claims(&facts);
        assert_eq!(claims[SOURCE_IDENTITY_CLAIM], "user.default.jane");
        let tags = &claims[TAGS_CLAIM]["principal_tags"];
        assert_eq!(tags["actor"][0], "component:agents/deploy-bot");
        assert_eq!(tags["requester"][0], "user:default/jane");
        assert_eq!(tag_value("bot#1 (prod)"), "bot-1 -prod-");
        let long = tag_value(&"a".repeat(300));
        assert_eq!(long.chars().count(), TAG_VALUE_MAX);
        assert_ne!(long, tag_value(&format!("{}b", "a".repeat(299))));
    }

    #[test]
    fn tag_keys_are_checked() {
        assert!(check_tag_key("cost-center").is_ok());
        for bad in ["", "aws:x", "a b", &"k".repeat(129)] {
            assert!(check_tag_key(bad).is_err(), "{bad:?}");
        }
    }
}
