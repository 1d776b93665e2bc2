//! Which audit records announce something, and the message each one becomes:
//! Slack-compatible `text` for people and a `stackpass` object with the facts
//! for tools. Pure: a message is a function of its committed record alone, so
//! every replica, and every retry after a restart, sends the same message.
//!
//! The facts carry `id`, the audit record's id: the same on every delivery of
//! one message, so receivers can drop duplicates (delivery is at least once).

use serde_json::{json, Value};

use super::records::SourceRecord;
use super::slack::{inert, strip_controls};
use crate::audit::{AuditEvent, Outcome};

/// Longest person-typed text (reason, note) shown in a message, in characters.
const MAX_FREE_TEXT: usize = 300;
/// Longest name (entity ref, stack, role) shown in a message.
const MAX_NAME: usize = 200;

/// What people are told about one record.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub text: String,
    pub facts: Value,
}

impl Message {
    /// The JSON body posted to the webhook.
    pub fn body(&self) -> Value {
        json!({ "text": self.text, "stackpass": self.facts })
    }
}

/// The records that are announced: break-glass issuances, new access
/// requests, access requests approved or denied, and agents revoked or
/// restored.
pub const ANNOUNCED: [(AuditEvent, Outcome); 6] = [
    (AuditEvent::Decision, Outcome::BreakGlass),
    (AuditEvent::AccessRequested, Outcome::Pending),
    (AuditEvent::Approval, Outcome::Approved),
    (AuditEvent::Approval, Outcome::Denied),
    (AuditEvent::Revocation, Outcome::Revoked),
    (AuditEvent::Revocation, Outcome::Restored),
];

/// Whether records with this event and outcome are announced.
pub fn announces(event: &str, outcome: &str) -> bool {
    ANNOUNCED
        .iter()
        .any(|(e, o)| event == e.as_str() && outcome == o.as_str())
}

fn name(text: Option<&str>) -> String {
    inert(text.unwrap_or("(unknown)"), MAX_NAME)
}

fn free_text(text: &str) -> String {
    inert(text, MAX_FREE_TEXT)
}

/// A fact as tools get it: as recorded, with control and invisible characters
/// removed.
fn fact(text: Option<&str>) -> Value {
    text.map_or(Value::Null, |t| Value::String(strip_controls(t)))
}

fn detail_list(record: &SourceRecord, key: &str) -> Vec<String> {
    record
        .detail
        .as_ref()
        .and_then(|d| d.get(key))
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(Value::as_str)
                .map(strip_controls)
                .collect()
        })
        .unwrap_or_default()
}

/// The message for `record`, or `None` if it announces nothing.
pub fn render(record: &SourceRecord) -> Option<Message> {
    if !announces(&record.event, &record.outcome) {
        return None;
    }
    let requester = record.requester.as_deref();
    let stack = record.stack.as_deref();
    let role = record.role.as_deref();
    let (text, mut facts) = if record.event_is(AuditEvent::Decision, Outcome::BreakGlass) {
        let reason = record.detail_str("reason");
        let duration = record
            .duration_seconds
            .map(|s| humantime::format_duration(std::time::Duration::from_secs(s.max(0) as u64)))
            .map_or_else(|| "(unknown)".to_owned(), |d| d.to_string());
        let actor = record
            .actor
            .as_deref()
            .map(|a| format!(" (an agent, {}, acting for them)", name(Some(a))))
            .unwrap_or_default();
        (
            format!(
                ":rotating_light: BREAK-GLASS: {}{actor} took {} on {} for {duration} without approval. Reason: {}",
                name(requester),
                name(role),
                name(stack),
                free_text(reason.unwrap_or("(none recorded)")),
            ),
            json!({
                "event": "break_glass",
                "requester": fact(requester),
                "actor": fact(record.actor.as_deref()),
                "stack": fact(stack),
                "provider": fact(record.provider.as_deref()),
                "rule": fact(record.rule.as_deref()),
                "role": fact(role),
                "duration_seconds": record.duration_seconds,
                "reason": fact(reason),
            }),
        )
    } else if record.event_is(AuditEvent::AccessRequested, Outcome::Pending) {
        let id = record.detail_str("access_request");
        let reason = record.detail_str("reason");
        let approvers = detail_list(record, "approvers");
        let required = record
            .detail
            .as_ref()
            .and_then(|d| d.get("required_approvals"))
            .and_then(Value::as_i64);
        (
            format!(
                "{} asks for {} on {}, once ({}). {} approval(s) needed from {}. Approve with `stackpass approvals approve {}`.",
                name(requester),
                name(role),
                name(stack),
                reason.map_or_else(|| "no reason given".to_owned(), free_text),
                required.map_or_else(|| "(unknown)".to_owned(), |n| n.to_string()),
                name(Some(&approvers.join(", "))),
                name(id),
            ),
            json!({
                "event": "access_requested",
                "access_request": {
                    "id": fact(id),
                    "requester": fact(requester),
                    "stack": fact(stack),
                    "provider": fact(record.provider.as_deref()),
                    "rule": fact(record.rule.as_deref()),
                    "role": fact(role),
                    "duration_seconds": record.duration_seconds,
                    "reason": fact(reason),
                    "required_approvals": required,
                    "approvers": approvers,
                },
            }),
        )
    } else if record.event == AuditEvent::Revocation.as_str() {
        // `requester` is who revoked or restored.
        let revoked = record.outcome == Outcome::Revoked.as_str();
        let agent = record.detail_str("agent");
        let person = record.detail_str("person");
        let reason = record.detail_str("reason");
        let outstanding = record
            .detail
            .as_ref()
            .and_then(|d| d.get("outstanding_credentials"))
            .and_then(Value::as_i64);
        let whom = person.map_or_else(|| "every person".to_owned(), |p| name(Some(p)));
        let text = if revoked {
            format!(
                ":no_entry: {} revoked agent {} acting for {whom}.{}{}",
                name(requester),
                name(agent),
                reason
                    .map(|r| format!(" Reason: {}.", free_text(r)))
                    .unwrap_or_default(),
                match outstanding {
                    Some(n) if n > 0 =>
                        format!(" {n} credential(s) issued before stay valid until they expire."),
                    _ => String::new(),
                },
            )
        } else {
            format!(
                "{} restored agent {} acting for {whom}.",
                name(requester),
                name(agent),
            )
        };
        (
            text,
            json!({
                "event": if revoked { "agent_revoked" } else { "agent_restored" },
                "revocation": fact(record.detail_str("revocation")),
                "scope": fact(record.detail_str("scope")),
                "by": fact(requester),
                "person": fact(person),
                "agent": fact(agent),
                "reason": fact(reason),
                "outstanding_credentials": outstanding,
            }),
        )
    } else {
        // An approval step: `requester` is who acted.
        let approved = record.outcome == Outcome::Approved.as_str();
        let requested_by = record.detail_str("requested_by");
        let note = record.detail_str("note");
        let window_ends_at = record.detail_str("window_ends_at");
        let said = note
            .map(|n| format!(" Note: {}", free_text(n)))
            .unwrap_or_default();
        let text = if approved {
            let until = window_ends_at
                .map_or_else(|| "the approval window ends".to_owned(), |t| name(Some(t)));
            format!(
                "{} approved {}'s request for {} on {}; one issuance of it may be obtained until {until}.{said}",
                name(requester),
                name(requested_by),
                name(role),
                name(stack),
            )
        } else {
            format!(
                "{} denied {}'s request for {} on {}.{said}",
                name(requester),
                name(requested_by),
                name(role),
                name(stack),
            )
        };
        (
            text,
            json!({
                "event": if approved { "access_approved" } else { "access_denied" },
                "access_request": fact(record.detail_str("access_request")),
                "by": fact(requester),
                "requester": fact(requested_by),
                "stack": fact(stack),
                "role": fact(role),
                "note": fact(note),
                "window_ends_at": fact(window_ends_at),
            }),
        )
    };
    let common = json!({
        "id": record.record_id,
        "audit_seq": record.seq,
        "recorded_at": record.recorded_at,
        "request_id": fact(Some(&record.request_id)),
    });
    if let (Some(facts), Some(common)) = (facts.as_object_mut(), common.as_object()) {
        facts.extend(common.clone());
    }
    Some(Message { text, facts })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn break_glass(reason: &str) -> SourceRecord {
        SourceRecord {
            seq: 42,
            record_id: "7d1f0c3a-0000-4000-8000-000000000001".into(),
            recorded_at: "2026-11-29T09:00:00.000000Z".into(),
            event: "decision".into(),
            outcome: "break_glass".into(),
            request_id: "req-1".into(),
            requester: Some("user:default/jane".into()),
            stack: Some("pulumi:acme/payments/prod".into()),
            provider: Some("aws".into()),
            rule: Some("owners-deploy-prod".into()),
            role: Some("arn:aws:iam::999999999999:role/payments-prod-deployer".into()),
            duration_seconds: Some(900),
            detail: Some(json!({ "break_glass": true, "reason": reason })),
            ..SourceRecord::default()
        }
    }

    #[test]
    fn only_the_announced_steps_are_announced() {
        assert!(announces("decision", "break_glass"));
        assert!(announces("access_requested", "pending"));
        assert!(announces("approval", "approved"));
        assert!(announces("approval", "denied"));
        for (event, outcome) in [
            ("decision", "allowed"),
            ("decision", "denied"),
            ("issuance_outcome", "issued"),
            ("approval", "approval_recorded"),
            ("approval", "expired"),
            ("policy_reloaded", "applied"),
        ] {
            assert!(!announces(event, outcome), "{event}/{outcome}");
            let mut record = break_glass("x");
            record.event = event.into();
            record.outcome = outcome.into();
            assert_eq!(render(&record), None);
        }
    }

    #[test]
    fn break_glass_names_who_what_and_why_with_the_record_id_as_idempotency_key() {
        let message = render(&break_glass("prod is down, INC-7")).unwrap();
        assert_eq!(
            message.text,
            ":rotating_light: BREAK-GLASS: user:default/jane took arn:aws:iam::999999999999:role/payments-prod-deployer on pulumi:acme/payments/prod for 15m without approval. Reason: prod is down, INC-7"
        );
        assert_eq!(message.facts["event"], "break_glass");
        assert_eq!(message.facts["id"], "7d1f0c3a-0000-4000-8000-000000000001");
        assert_eq!(message.facts["audit_seq"], 42);
        assert_eq!(message.facts["reason"], "prod is down, INC-7");
        assert_eq!(message.body()["stackpass"], message.facts);
    }

    #[test]
    fn a_hostile_reason_is_inert_in_the_text_and_raw_but_clean_in_the_facts() {
        let reason = "<!channel> see <https://evil.example|INC-7> \u{202E}gpj.exe\u{202C} @here";
        let message = render(&break_glass(reason)).unwrap();
        let text = &message.text;
        assert!(text.ends_with(
            "Reason: &lt;!channel&gt; see &lt;https://evil.example|INC-7&gt; gpj.exe @\u{2060}here"
        ));
        assert!(!text.contains('\u{202E}') && !text.contains("<!"));
        assert_eq!(
            message.facts["reason"],
            "<!channel> see <https://evil.example|INC-7> gpj.exe @here"
        );
    }

    #[test]
    fn revocations_name_who_which_agent_and_for_whom() {
        let mut record = break_glass("");
        record.event = "revocation".into();
        record.outcome = "revoked".into();
        record.requester = Some("user:default/sam".into());
        record.stack = None;
        record.detail = Some(json!({
            "revocation": "r-1", "scope": "agent", "person": null,
            "agent": "agent:<!channel>", "reason": "compromised", "outstanding_credentials": 2,
        }));
        let revoked = render(&record).unwrap();
        assert_eq!(
            revoked.text,
            ":no_entry: user:default/sam revoked agent agent:&lt;!channel&gt; acting for every person. Reason: compromised. 2 credential(s) issued before stay valid until they expire."
        );
        assert_eq!(revoked.facts["event"], "agent_revoked");
        assert_eq!(revoked.facts["agent"], "agent:<!channel>");
        record.outcome = "restored".into();
        record.detail = Some(json!({
            "revocation": "r-1", "scope": "delegation", "person": "user:default/jane",
            "agent": "agent:bot", "outstanding_credentials": 0,
        }));
        let restored = render(&record).unwrap();
        assert_eq!(
            restored.text,
            "user:default/sam restored agent agent:bot acting for user:default/jane."
        );
        assert_eq!(restored.facts["event"], "agent_restored");
        record.outcome = "refused".into();
        assert_eq!(render(&record), None);
    }

    #[test]
    fn a_long_reason_is_cut() {
        let message = render(&break_glass(&"x".repeat(2000))).unwrap();
        assert!(message.text.ends_with(&format!("{}…", "x".repeat(300))));
        assert_eq!(message.facts["reason"].as_str().unwrap().len(), 2000);
    }

    #[test]
    fn access_requests_and_decisions_on_them() {
        let mut record = break_glass("");
        record.event = "access_requested".into();
        record.outcome = "pending".into();
        record.detail = Some(json!({
            "access_request": "ar-1", "reason": "hotfix <@U1>",
            "approvers": ["group:default/team-payments"], "required_approvals": 1,
        }));
        let asked = render(&record).unwrap();
        assert_eq!(
            asked.text,
            "user:default/jane asks for arn:aws:iam::999999999999:role/payments-prod-deployer on pulumi:acme/payments/prod, once (hotfix &lt;@U1&gt;). 1 approval(s) needed from group:default/team-payments. Approve with `stackpass approvals approve ar-1`."
        );
        assert_eq!(asked.facts["access_request"]["reason"], "hotfix <@U1>");

        record.event = "approval".into();
        record.outcome = "approved".into();
        record.requester = Some("user:default/alex".into());
        record.detail = Some(json!({
            "access_request": "ar-1", "requested_by": "user:default/jane",
            "note": "ok <!here>", "window_ends_at": "2026-11-29T10:00:00.000000Z",
        }));
        let approved = render(&record).unwrap();
        assert!(approved
            .text
            .starts_with("user:default/alex approved user:default/jane's request for "));
        assert!(approved
            .text
            .ends_with("until 2026-11-29T10:00:00.000000Z. Note: ok &lt;!here&gt;"));
        assert_eq!(approved.facts["event"], "access_approved");

        record.outcome = "denied".into();
        record.detail = Some(
            json!({ "access_request": "ar-1", "requested_by": "user:default/jane", "note": null }),
        );
        let denied = render(&record).unwrap();
        assert!(denied
            .text
            .starts_with("user:default/alex denied user:default/jane's request"));
        assert!(denied.text.ends_with("pulumi:acme/payments/prod."));
        assert_eq!(denied.facts["event"], "access_denied");
        assert_eq!(denied.facts["by"], "user:default/alex");
    }
}
