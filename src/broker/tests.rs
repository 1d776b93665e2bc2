//! The broker against in-process parts: the static catalog and stack registry,
//! a real SQLite audit and approvals store in a temp dir, a fake cloud that
//! counts its calls, and an audit store that can be made to stop writing.

use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;
use stackpass_provider::{CloudProvider, ProviderKind};

use super::*;
use crate::approvals::{AccessState, ApprovalError, SqlApprovalStore};
use crate::audit::{AuditQuery, SqlAuditStore, StoredRecord};
use crate::catalog::StaticCatalog;
use crate::database::Database;
use crate::fakes::{FailingAudit, FakeCloud};
use crate::identity::PrincipalKind;
use crate::issuer::SigningKey;
use crate::policy::{load_policy_set, LoadedPolicy, ValidationContext};
use crate::stacks::{ComponentTags, StaticStackRegistry};

const CATALOG: &str = r#"
[[components]]
ref = "component:default/payments"
owner = "group:default/team-payments"

[[users]]
ref = "user:default/jane"
member_of = ["group:default/team-payments"]
[[users]]
ref = "user:default/alex"
member_of = ["group:default/team-payments"]
[[users]]
ref = "user:default/kim"
member_of = ["group:default/team-payments"]
[[users]]
ref = "user:default/bob"
member_of = ["group:default/team-search"]
[[users]]
ref = "user:default/sam"
member_of = ["group:default/security"]
"#;

const STACKS: &str = r#"
[[stacks]]
ref = "pulumi:acme/payments/dev"
tags = { "backstage.io/component" = "payments", environment = "dev", aws-account = "111111111111" }
[[stacks]]
ref = "pulumi:acme/payments/prod"
tags = { "backstage.io/component" = "payments", environment = "prod", aws-account = "999999999999" }
[[stacks]]
ref = "pulumi:acme/payments/staging"
tags = { "backstage.io/component" = "payments", environment = "staging", aws-account = "222222222222" }
"#;

const POLICY: &str = r#"
[[rules]]
name = "owners-deploy-dev"
provider = "aws"
tags = { environment = ["dev"], aws-account = ["*"] }
role = "arn:aws:iam::{tags.aws-account}:role/{component}-deployer"

[[rules]]
name = "owners-deploy-prod"
provider = "aws"
tags = { environment = ["prod"], aws-account = ["*"] }
role = "arn:aws:iam::{tags.aws-account}:role/{component}-prod-deployer"
approval = { approvers = ["group:default/team-payments"] }
break_glass = { max_duration = "15m" }

[[rules]]
name = "owners-deploy-staging"
provider = "aws"
tags = { environment = ["staging"], aws-account = ["*"] }
role = "arn:aws:iam::{tags.aws-account}:role/{component}-deployer"
approval = { approvers = ["group:default/team-payments"] }

[[agents]]
name = "deploy-bots"
agents = ["agent:*"]
aws_session_policy = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"*"}]}'
quota = { per_agent = 2, per_person = 3, window = "1h" }
beyond_bounds = "approval"
approval = { approvers = ["group:default/security"] }
"#;

struct World {
    broker: Broker,
    cloud: Arc<FakeCloud>,
    audit: Arc<FailingAudit>,
    _dir: tempfile::TempDir,
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(
        &format!("sqlite://{}", dir.path().join("audit.db").display()),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let audit = FailingAudit::over(Arc::new(SqlAuditStore::new(db.clone())));
    let cloud = FakeCloud::shared("aws");
    let providers = Providers::from_providers([cloud.clone() as Arc<dyn CloudProvider>]);
    let policy_file = dir.path().join("policy.toml");
    std::fs::write(&policy_file, POLICY).unwrap();
    let policy = load_policy_set(
        &[],
        &[],
        &[policy_file],
        &ValidationContext {
            environment_tag: "environment".into(),
            providers: providers.clone(),
        },
    )
    .unwrap();
    let key = SigningKey::load_or_generate(&dir.path().join("key.pem")).unwrap();
    let broker = Broker::new(BrokerParts {
        verifier: Verifier::new(Vec::new(), 8192),
        catalog: Arc::new(StaticCatalog::parse(CATALOG).unwrap()),
        stacks: Arc::new(StaticStackRegistry::parse(STACKS).unwrap()),
        rules: policy.rules,
        agents: policy.agents,
        issuer: Issuer::new(
            key,
            "https://stackpass.test".into(),
            Duration::from_secs(300),
            vec![],
        ),
        providers,
        audit: audit.clone(),
        approvals: Arc::new(SqlApprovalStore::new(db.clone())),
        notifier: Notifier::disabled(),
        revocations: Arc::new(crate::revocations::SqlRevocationStore::new(db)),
        agent_admin_groups: vec![EntityRef::parse_strict("group:default/security").unwrap()],
        auditor_groups: vec![EntityRef::parse_strict("group:default/security").unwrap()],
        component_tags: ComponentTags::same("backstage.io/component"),
        environment_tag: "environment".into(),
        cloud_budget: Duration::from_secs(5),
        limits: Arc::new(super::limits::Limits::new(
            super::limits::LimitSettings::off(),
        )),
    });
    World {
        broker,
        cloud,
        audit,
        _dir: dir,
    }
}

fn context() -> RequestContext {
    RequestContext {
        client_request_id: None,
        request_id: "req-1".into(),
        client_addr: Some("127.0.0.1".into()),
    }
}

fn person(subject: &str) -> Principal {
    Principal {
        issuer: "https://backstage.test/api/auth".into(),
        issuer_name: "backstage".into(),
        subject: EntityRef::parse_strict(subject).unwrap(),
        kind: PrincipalKind::Human,
        actor: None,
        actor_chain: Vec::new(),
        groups: Vec::new(),
        dedicated_audience: false,
        pipeline: None,
    }
}

fn ask(stack: &str) -> CredentialRequest {
    CredentialRequest {
        stack: StackRef::parse(stack).unwrap(),
        provider: ProviderKind::from_static("aws"),
        duration: None,
        reason: None,
        break_glass: None,
        mode: Mode::Credentials,
    }
}

impl World {
    async fn issue(&self, who: &str, request: &CredentialRequest) -> Result<Issued, BrokerError> {
        self.broker.issue(&context(), person(who), request).await
    }

    async fn rows(&self) -> Vec<StoredRecord> {
        let query = AuditQuery {
            limit: 1000,
            ..AuditQuery::default()
        };
        self.audit.query(&query).await.unwrap().records
    }

    async fn events(&self) -> Vec<(String, String)> {
        self.rows()
            .await
            .into_iter()
            .map(|r| (r.event, r.outcome))
            .collect()
    }
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(e, o)| (e.to_string(), o.to_string()))
        .collect()
}

fn detail(record: &StoredRecord) -> serde_json::Value {
    serde_json::from_str(record.detail.as_deref().unwrap_or("null")).unwrap()
}

#[tokio::test]
async fn an_owner_is_issued_only_after_decision_intent_and_outcome_are_recorded() {
    let w = world().await;
    let issued = w
        .issue("user:default/jane", &ask("pulumi:acme/payments/dev"))
        .await
        .unwrap();
    assert_eq!(
        issued.target.as_str(),
        "arn:aws:iam::111111111111:role/payments-deployer"
    );
    assert_eq!(
        issued.duration,
        Duration::from_secs(900),
        "the provider's default"
    );
    let rows = w.rows().await;
    assert_eq!(
        w.events().await,
        pairs(&[
            ("decision", "allowed"),
            ("issuance_intent", "pending"),
            ("issuance_outcome", "issued")
        ])
    );
    for row in &rows {
        assert_eq!(row.issuance_id, Some(issued.issuance_id.to_string()));
        assert_eq!(row.role.as_deref(), Some(issued.target.as_str()));
        assert_eq!(row.owner.as_deref(), Some("group:default/team-payments"));
        assert_eq!(row.requester.as_deref(), Some("user:default/jane"));
    }
    assert_eq!(
        rows[2].credential_id.as_deref(),
        Some(issued.credential.credential_id.as_str())
    );
    // The subject token the cloud saw is the one the intent names.
    let claims = w.cloud.last_claims();
    assert_eq!(detail(&rows[1])["subject_token_id"], claims["jti"]);
    assert_eq!(claims["aud"], "aws-audience");
    assert_eq!(claims["sub"], "stack:pulumi:acme/payments/dev");
    assert_eq!(claims["stackpass"]["owner"], "group:default/team-payments");
}

#[tokio::test]
async fn a_denial_is_recorded_with_its_reasons_and_the_cloud_is_never_called() {
    let w = world().await;
    let denied = w
        .issue("user:default/bob", &ask("pulumi:acme/payments/dev"))
        .await;
    // Bob owns nothing here: he learns he was denied, not the stack's tags,
    // owners or the groups that would have been let in.
    let Err(BrokerError::Denied(shown)) = denied else {
        panic!("{denied:?}")
    };
    assert!(shown.rules.is_empty(), "{shown:?}");
    assert_eq!(
        shown.summary,
        "no rule grants aws credentials for pulumi:acme/payments/dev to user:default/bob"
    );
    let dry_run = w
        .broker
        .explain(
            &context(),
            person("user:default/bob"),
            &ask("pulumi:acme/payments/dev"),
        )
        .await
        .unwrap();
    assert!(
        matches!(dry_run, Decision::Deny(ref d) if d.rules.is_empty()),
        "{dry_run:?}"
    );
    let rows = w.rows().await;
    assert_eq!(
        w.events().await,
        pairs(&[("decision", "denied"), ("dry_run", "would_deny")])
    );
    let reasons = detail(&rows[0])["rules"][0]["reasons"].to_string();
    assert!(
        reasons.contains("is not a member of group:default/team-payments"),
        "{reasons}"
    );
    assert_eq!(w.cloud.calls(), 0);

    // An auditor sees every reason.
    let denied = w
        .issue("user:default/sam", &ask("pulumi:acme/payments/dev"))
        .await;
    let Err(BrokerError::Denied(shown)) = denied else {
        panic!("{denied:?}")
    };
    assert!(!shown.rules.is_empty(), "{shown:?}");
}

#[tokio::test]
async fn an_unknown_stack_is_refused_and_recorded_for_issuance_and_dry_runs() {
    let w = world().await;
    let request = ask("pulumi:acme/ghost/dev");
    assert!(matches!(
        w.issue("user:default/jane", &request).await,
        Err(BrokerError::UnknownStack(_))
    ));
    assert!(matches!(
        w.broker
            .explain(&context(), person("user:default/jane"), &request)
            .await,
        Err(BrokerError::UnknownStack(_))
    ));
    assert_eq!(
        w.events().await,
        pairs(&[("decision", "unknown_stack"), ("dry_run", "unknown_stack")])
    );
}

#[tokio::test]
async fn without_a_committed_intent_the_cloud_is_never_called() {
    let w = world().await;
    w.audit.fail_after(0);
    let result = w
        .issue("user:default/jane", &ask("pulumi:acme/payments/dev"))
        .await;
    assert!(matches!(result, Err(BrokerError::Audit(_))), "{result:?}");
    assert_eq!(w.cloud.calls(), 0);
    assert!(w.rows().await.is_empty());
}

#[tokio::test]
async fn a_credential_whose_outcome_cannot_be_recorded_is_withheld() {
    let w = world().await;
    w.audit.fail_after(1);
    let result = w
        .issue("user:default/jane", &ask("pulumi:acme/payments/dev"))
        .await;
    assert!(matches!(result, Err(BrokerError::Audit(_))), "{result:?}");
    assert_eq!(w.cloud.calls(), 1, "the cloud minted it");
    assert_eq!(
        w.events().await,
        pairs(&[("decision", "allowed"), ("issuance_intent", "pending")])
    );
}

#[tokio::test]
async fn a_cloud_refusal_is_recorded_as_a_failed_outcome() {
    let w = world().await;
    w.cloud
        .refuse
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let result = w
        .issue("user:default/jane", &ask("pulumi:acme/payments/dev"))
        .await;
    assert!(matches!(result, Err(BrokerError::Cloud(_))), "{result:?}");
    let rows = w.rows().await;
    assert_eq!(rows.last().unwrap().outcome, "failed");
    assert!(detail(rows.last().unwrap())["error"]
        .as_str()
        .unwrap()
        .contains("InvalidIdentityToken"));
}

#[tokio::test]
async fn a_credential_that_outlives_its_grant_is_withheld_and_recorded_as_failed() {
    let w = world().await;
    w.cloud
        .overissue
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let result = w
        .issue("user:default/jane", &ask("pulumi:acme/payments/dev"))
        .await;
    assert!(
        matches!(
            result,
            Err(BrokerError::Cloud(ProviderError::InvalidResponse { .. }))
        ),
        "{result:?}"
    );
    let rows = w.rows().await;
    assert_eq!(rows.last().unwrap().outcome, "failed");
    assert!(detail(rows.last().unwrap())["error"]
        .as_str()
        .unwrap()
        .contains("after the grant ends"));
}

#[tokio::test]
async fn federation_mode_hands_out_the_subject_token_without_calling_the_cloud() {
    let w = world().await;
    let mut request = ask("pulumi:acme/payments/dev");
    request.mode = Mode::Federation;
    request.duration = Some(Duration::from_secs(1800));
    let issued = w.issue("user:default/jane", &request).await.unwrap();
    assert_eq!(
        w.cloud.calls(),
        0,
        "the caller exchanges it, not the broker"
    );
    let fields: Vec<&str> = issued
        .credential
        .fields
        .iter()
        .map(|(name, _)| *name)
        .collect();
    assert_eq!(fields, ["token_type", "audience", "subject_token"]);
    let Some((_, stackpass_provider::CredentialField::Secret(token))) =
        issued.credential.fields.last()
    else {
        panic!("the subject token is a secret field");
    };
    let claims: serde_json::Value = {
        use base64::Engine;
        let payload = token.expose_secret().split('.').nth(1).unwrap().to_owned();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap()
    };
    assert_eq!(claims["aud"], "aws-audience");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        1800
    );
    assert_eq!(
        issued.credential.credential_id,
        claims["jti"].as_str().unwrap()
    );

    // One commit: the decision and the issuance, naming the token and its audience.
    let rows = w.rows().await;
    assert_eq!(
        w.events().await,
        pairs(&[("decision", "allowed"), ("issuance_outcome", "issued")])
    );
    let detail = detail(&rows[1]);
    assert_eq!(detail["mode"], "federation");
    assert_eq!(detail["audience"], "aws-audience");
    assert_eq!(detail["subject_token_id"], claims["jti"]);
    assert_eq!(rows[1].credential_id.as_deref(), claims["jti"].as_str());

    // No record, no token.
    w.audit.fail_after(0);
    let result = w.issue("user:default/jane", &request).await;
    assert!(matches!(result, Err(BrokerError::Audit(_))), "{result:?}");
}

#[tokio::test]
async fn the_provider_and_duration_are_checked_before_anything_happens() {
    let w = world().await;
    let mut unknown = ask("pulumi:acme/payments/dev");
    unknown.provider = ProviderKind::from_static("oracle");
    assert!(matches!(
        w.issue("user:default/jane", &unknown).await,
        Err(BrokerError::Provider(
            crate::registry::LookupError::Unknown(_)
        ))
    ));
    let mut short = ask("pulumi:acme/payments/dev");
    short.duration = Some(Duration::from_secs(60));
    match w.issue("user:default/jane", &short).await {
        Err(BrokerError::InvalidRequest(message)) => {
            assert!(message.contains("between 900 and 43200"), "{message}")
        }
        other => panic!("expected an invalid request, got {other:?}"),
    }
    assert!(w.rows().await.is_empty());
    assert_eq!(w.cloud.calls(), 0);
}

#[tokio::test]
async fn approval_is_required_then_given_by_a_teammate_and_then_used() {
    let w = world().await;
    let prod = ask("pulumi:acme/payments/prod");
    match w.issue("user:default/jane", &prod).await {
        Err(BrokerError::ApprovalRequired { pending: None, .. }) => {}
        other => panic!("expected approval required, got {other:?}"),
    }
    let created = w
        .broker
        .request_access(&context(), person("user:default/jane"), &prod)
        .await
        .unwrap();
    let id = created.id.to_string();
    let refused = |who: &'static str| {
        let broker = &w.broker;
        let id = id.clone();
        async move {
            broker
                .approve_access_request(&context(), &person(who), &id, None)
                .await
        }
    };
    assert!(matches!(
        refused("user:default/jane").await,
        Err(BrokerError::Approval(ApprovalError::OwnRequest))
    ));
    assert!(matches!(
        refused("user:default/bob").await,
        Err(BrokerError::Approval(ApprovalError::NotAnApprover { .. }))
    ));
    let approved = w
        .broker
        .approve_access_request(&context(), &person("user:default/alex"), &id, Some("go"))
        .await
        .unwrap();
    assert!(approved.window_ends_at.is_some());

    let issued = w.issue("user:default/jane", &prod).await.unwrap();
    let rows = w.rows().await;
    let decision = rows.iter().rev().find(|r| r.event == "decision").unwrap();
    assert_eq!(decision.outcome, "allowed");
    assert_eq!(detail(decision)["access_request"], id);
    assert_eq!(detail(decision)["approvers"][0], "user:default/alex");
    assert_eq!(
        issued.target.as_str(),
        "arn:aws:iam::999999999999:role/payments-prod-deployer"
    );
    assert_eq!(
        w.events().await[..5],
        pairs(&[
            ("decision", "approval_required"),
            ("access_requested", "pending"),
            ("approval", "refused"),
            ("approval", "refused"),
            ("approval", "approved")
        ])
    );
}

impl World {
    /// jane asks for `request`; the id of her access request.
    async fn requested(&self, request: &CredentialRequest) -> String {
        self.broker
            .request_access(&context(), person("user:default/jane"), request)
            .await
            .unwrap()
            .id
            .to_string()
    }

    async fn approve(&self, who: &Principal, id: &str) -> Result<AccessRequest, BrokerError> {
        self.broker
            .approve_access_request(&context(), who, id, None)
            .await
    }

    /// Applies `policy` as a reload would.
    async fn reload(&self, policy: &str) {
        let file = self._dir.path().join("reloaded.toml");
        std::fs::write(&file, policy).unwrap();
        let loaded = load_policy_set(
            &[],
            &[],
            &[file],
            &ValidationContext {
                environment_tag: "environment".into(),
                providers: self.broker.providers().clone(),
            },
        )
        .unwrap();
        self.broker.reload_policy("test", Ok(loaded)).await.unwrap();
    }
}

fn agent_for(subject: &str) -> Principal {
    Principal {
        kind: PrincipalKind::Agent,
        actor: Some("agent:deploy-bot".into()),
        actor_chain: Vec::new(),
        ..person(subject)
    }
}

fn approval_required<T: std::fmt::Debug>(result: Result<T, BrokerError>) -> bool {
    matches!(result, Err(BrokerError::ApprovalRequired { .. }))
}

#[tokio::test]
async fn one_approval_covers_one_issuance() {
    let w = world().await;
    let prod = ask("pulumi:acme/payments/prod");
    let id = w.requested(&prod).await;
    w.approve(&person("user:default/alex"), &id).await.unwrap();
    w.issue("user:default/jane", &prod).await.unwrap();
    assert!(approval_required(w.issue("user:default/jane", &prod).await));
    assert_eq!(w.cloud.calls(), 1);
    let used = w
        .broker
        .list_access_requests(&context(), &person("user:default/jane"))
        .await
        .unwrap();
    assert_eq!(used[0].state, AccessState::Used);
    assert!(w
        .events()
        .await
        .contains(&("approval".to_string(), "used".to_string())));
}

#[tokio::test]
async fn two_concurrent_issuances_cannot_both_use_one_approval() {
    let w = world().await;
    let prod = ask("pulumi:acme/payments/prod");
    let id = w.requested(&prod).await;
    w.approve(&person("user:default/alex"), &id).await.unwrap();
    let (a, b) = tokio::join!(
        w.issue("user:default/jane", &prod),
        w.issue("user:default/jane", &prod)
    );
    assert_eq!(
        [a.is_ok(), b.is_ok()].iter().filter(|ok| **ok).count(),
        1,
        "{a:?} {b:?}"
    );
    assert_eq!(w.cloud.calls(), 1);
}

#[tokio::test]
async fn a_reload_that_changes_the_grant_voids_the_approval() {
    let w = world().await;
    let prod = ask("pulumi:acme/payments/prod");
    let id = w.requested(&prod).await;
    w.approve(&person("user:default/alex"), &id).await.unwrap();
    // Same rule name and approvers, a broader role.
    w.reload(&POLICY.replace("{component}-prod-deployer", "admin"))
        .await;
    assert!(approval_required(w.issue("user:default/jane", &prod).await));
    assert_eq!(w.cloud.calls(), 0);
    let rows = w.rows().await;
    let invalidated = rows.iter().find(|r| r.outcome == "invalidated").unwrap();
    assert_eq!(
        detail(invalidated)["note"],
        "the grant changed since it was approved"
    );

    // Asked again under the new policy, the approver is shown the new role.
    let again = w
        .broker
        .request_access(&context(), person("user:default/jane"), &prod)
        .await
        .unwrap();
    assert_ne!(again.id.to_string(), id);
    assert_eq!(again.role, "arn:aws:iam::999999999999:role/admin");
}

#[tokio::test]
async fn an_approval_issues_at_most_its_approved_duration_and_only_in_its_mode() {
    let w = world().await;
    let mut prod = ask("pulumi:acme/payments/prod");
    prod.duration = Some(Duration::from_secs(1800));
    let id = w.requested(&prod).await;
    w.approve(&person("user:default/alex"), &id).await.unwrap();

    let mut federation = ask("pulumi:acme/payments/prod");
    federation.mode = Mode::Federation;
    assert!(approval_required(
        w.issue("user:default/jane", &federation).await
    ));
    let mut longer = ask("pulumi:acme/payments/prod");
    longer.duration = Some(Duration::from_secs(3600));
    let issued = w.issue("user:default/jane", &longer).await.unwrap();
    assert_eq!(issued.duration, Duration::from_secs(1800));
}

#[tokio::test]
async fn agents_neither_approve_deny_nor_break_glass_and_each_attempt_is_audited() {
    let w = world().await;
    let prod = ask("pulumi:acme/payments/prod");
    let id = w.requested(&prod).await;
    let alex_agent = agent_for("user:default/alex");
    assert!(matches!(
        w.approve(&alex_agent, &id).await,
        Err(BrokerError::Approval(ApprovalError::NotAPerson { .. }))
    ));
    assert!(matches!(
        w.broker
            .deny_access_request(&context(), &alex_agent, &id, None)
            .await,
        Err(BrokerError::Approval(ApprovalError::NotAPerson { .. }))
    ));
    let refused: Vec<StoredRecord> = w
        .rows()
        .await
        .into_iter()
        .filter(|r| r.outcome == "refused")
        .collect();
    assert_eq!(refused.len(), 2);
    assert_eq!(refused[0].actor.as_deref(), Some("agent:deploy-bot"));
    assert_eq!(refused[0].requester_kind.as_deref(), Some("agent"));
    assert_eq!(detail(&refused[1])["action"], "deny");
    assert!(approval_required(w.issue("user:default/jane", &prod).await));

    let mut glass = ask("pulumi:acme/payments/prod");
    glass.break_glass = Some("prod is down".into());
    assert!(matches!(
        w.broker
            .issue(&context(), agent_for("user:default/jane"), &glass)
            .await,
        Err(BrokerError::BreakGlassNotAPerson)
    ));
    let last = w.rows().await.pop().unwrap();
    assert_eq!(
        (last.event.as_str(), last.outcome.as_str()),
        ("decision", "denied")
    );
    assert_eq!(detail(&last)["break_glass"], true);
    assert_eq!(w.cloud.calls(), 0);
}

#[tokio::test]
async fn racing_approvers_one_wins_and_the_other_is_told_and_audited() {
    for _ in 0..5 {
        let w = world().await;
        let id = w.requested(&ask("pulumi:acme/payments/prod")).await;
        let (alex, kim) = (person("user:default/alex"), person("user:default/kim"));
        let (a, b) = tokio::join!(w.approve(&alex, &id), w.approve(&kim, &id));
        let results = [a, b];
        assert_eq!(
            results.iter().filter(|r| r.is_ok()).count(),
            1,
            "{results:?}"
        );
        assert!(results.iter().any(|r| matches!(
            r,
            Err(BrokerError::Approval(ApprovalError::NotPending {
                state: "approved",
                ..
            }))
        )));
        let rows = w.rows().await;
        let outcomes: Vec<&str> = rows
            .iter()
            .filter(|r| r.event == "approval")
            .map(|r| r.outcome.as_str())
            .collect();
        assert_eq!(outcomes.len(), 2, "{outcomes:?}");
        assert!(outcomes.contains(&"approved") && outcomes.contains(&"refused"));
        let stored = w
            .broker
            .list_access_requests(&context(), &person("user:default/jane"))
            .await
            .unwrap();
        assert_eq!(
            stored[0].approvers.len(),
            1,
            "only the winner's approval counts"
        );
    }
}

#[tokio::test]
async fn an_approval_whose_record_cannot_be_committed_changes_nothing() {
    let w = world().await;
    let prod = ask("pulumi:acme/payments/prod");
    let id = w.requested(&prod).await;
    w.audit.fail_after(0);
    assert!(matches!(
        w.approve(&person("user:default/alex"), &id).await,
        Err(BrokerError::Audit(_))
    ));
    *w.audit.allowed.lock().unwrap() = None;
    let stored = w
        .broker
        .list_access_requests(&context(), &person("user:default/jane"))
        .await
        .unwrap();
    assert_eq!(stored[0].state, AccessState::Pending);
    assert!(stored[0].approvers.is_empty());
    assert!(approval_required(w.issue("user:default/jane", &prod).await));
}

#[tokio::test]
async fn break_glass_is_capped_and_flagged_and_refused_where_the_rule_does_not_allow_it() {
    let w = world().await;
    let mut prod = ask("pulumi:acme/payments/prod");
    prod.duration = Some(Duration::from_secs(3600));
    prod.break_glass = Some("prod is down".into());
    let issued = w.issue("user:default/jane", &prod).await.unwrap();
    assert_eq!(
        issued.duration,
        Duration::from_secs(900),
        "capped by break_glass"
    );
    let rows = w.rows().await;
    assert_eq!(rows[0].outcome, "break_glass");
    assert_eq!(detail(&rows[0])["reason"], "prod is down");
    assert_eq!(detail(&rows[1])["decision"], "break_glass");

    let mut staging = ask("pulumi:acme/payments/staging");
    staging.break_glass = Some("in a hurry".into());
    assert!(matches!(
        w.issue("user:default/jane", &staging).await,
        Err(BrokerError::BreakGlassNotAllowed(_))
    ));
    let refused = w.rows().await.pop().unwrap();
    assert_eq!(
        (refused.event.as_str(), refused.outcome.as_str()),
        ("decision", "denied")
    );
    assert_eq!(detail(&refused)["break_glass"], true);
}

#[tokio::test]
async fn dry_runs_explain_and_are_recorded_as_dry_runs() {
    let w = world().await;
    let jane = || person("user:default/jane");
    let allow = w
        .broker
        .explain(&context(), jane(), &ask("pulumi:acme/payments/dev"))
        .await
        .unwrap();
    assert!(matches!(allow, Decision::Allow(_)));
    w.broker
        .explain(&context(), jane(), &ask("pulumi:acme/payments/prod"))
        .await
        .unwrap();
    w.broker
        .explain(
            &context(),
            person("user:default/bob"),
            &ask("pulumi:acme/payments/dev"),
        )
        .await
        .unwrap();
    assert_eq!(
        w.events().await,
        pairs(&[
            ("dry_run", "would_allow"),
            ("dry_run", "would_need_approval"),
            ("dry_run", "would_deny")
        ])
    );
    assert_eq!(w.cloud.calls(), 0);
}

#[tokio::test]
async fn only_auditors_read_everything_and_others_only_their_own_records() {
    let w = world().await;
    w.issue("user:default/jane", &ask("pulumi:acme/payments/dev"))
        .await
        .unwrap();
    let all = AuditQuery {
        limit: 100,
        ..AuditQuery::default()
    };
    assert!(matches!(
        w.broker
            .read_audit(&context(), &person("user:default/bob"), &all)
            .await,
        Err(BrokerError::AuditForbidden(_))
    ));
    let own = AuditQuery {
        requester: Some("user:default/bob".into()),
        ..all.clone()
    };
    // bob's only record is his refused read: reads are audited too.
    let bobs = w
        .broker
        .read_audit(&context(), &person("user:default/bob"), &own)
        .await
        .unwrap()
        .records;
    assert_eq!(
        bobs.iter()
            .map(|r| (r.event.as_str(), r.outcome.as_str()))
            .collect::<Vec<_>>(),
        [("audit_read", "denied")]
    );
    let everything = w
        .broker
        .read_audit(&context(), &person("user:default/sam"), &all)
        .await
        .unwrap();
    assert_eq!(everything.records.len(), 5, "3 for the issuance, 2 reads");
    assert_eq!(everything.records[4].event, "audit_read");
}

#[tokio::test]
async fn a_reloaded_policy_applies_as_a_whole_and_a_rejected_one_is_recorded() {
    let w = world().await;
    w.broker
        .reload_policy("test", Err(vec!["policy.toml:1: broken".into()]))
        .await
        .unwrap();
    w.issue("user:default/jane", &ask("pulumi:acme/payments/dev"))
        .await
        .unwrap();
    w.broker
        .reload_policy(
            "test",
            Ok(LoadedPolicy {
                rules: Vec::new(),
                agents: Vec::new(),
                digest: "d1".into(),
            }),
        )
        .await
        .unwrap();
    assert!(matches!(
        w.issue("user:default/jane", &ask("pulumi:acme/payments/dev"))
            .await,
        Err(BrokerError::Denied(_))
    ));
    let rows = w.rows().await;
    let reloads: Vec<&str> = rows
        .iter()
        .filter(|r| r.event == "policy_reloaded")
        .map(|r| r.outcome.as_str())
        .collect();
    assert_eq!(reloads, ["rejected", "applied"]);
    let applied = rows.iter().find(|r| r.outcome == "applied").unwrap();
    assert!(applied
        .detail
        .as_deref()
        .unwrap()
        .contains(r#""policy_sha256":"d1""#));
}

#[tokio::test]
async fn a_reload_whose_record_cannot_be_committed_is_not_applied() {
    let w = world().await;
    w.audit.fail_after(0);
    let emptied = w
        .broker
        .reload_policy(
            "test",
            Ok(LoadedPolicy {
                rules: Vec::new(),
                agents: Vec::new(),
                digest: "d1".into(),
            }),
        )
        .await;
    assert!(emptied.is_err());
    w.audit.fail_after(usize::MAX);
    w.issue("user:default/jane", &ask("pulumi:acme/payments/dev"))
        .await
        .expect("the policy in force is still the recorded one");
}

fn agent(name: &str, subject: &str) -> Principal {
    Principal {
        actor: Some(name.into()),
        ..agent_for(subject)
    }
}

#[tokio::test]
async fn an_agent_gets_the_persons_grant_narrowed_by_its_bounds() {
    let w = world().await;
    let dev = ask("pulumi:acme/payments/dev");
    // The owner could get an hour; the agent gets the 15-minute cap and the
    // entry's session policy.
    let issued = w
        .broker
        .issue(&context(), agent_for("user:default/jane"), &dev)
        .await
        .unwrap();
    assert_eq!(issued.duration, Duration::from_secs(900));
    let policies = w.cloud.session_policies.lock().unwrap().clone();
    assert!(policies[0].as_deref().unwrap().contains("s3:GetObject"));
    let outcome = w.rows().await.pop().unwrap();
    assert_eq!(outcome.outcome, "issued");
    assert_eq!(outcome.actor.as_deref(), Some("agent:deploy-bot"));
    assert_eq!(detail(&outcome)["agent_bounds"]["entry"], "deploy-bots");

    // The dry run shows the narrowed grant.
    let Decision::Allow(grant) = w
        .broker
        .explain(&context(), agent_for("user:default/jane"), &dev)
        .await
        .unwrap()
    else {
        panic!("expected allow")
    };
    assert_eq!(grant.max_duration, Duration::from_secs(900));
    assert!(grant.session_policy.is_some());

    // Acting for someone who is not an owner: nothing.
    assert!(matches!(
        w.broker
            .issue(&context(), agent_for("user:default/bob"), &dev)
            .await,
        Err(BrokerError::Denied(_))
    ));
    // An agent no entry names: nothing, with the reason.
    match w
        .broker
        .issue(&context(), agent("robot:x", "user:default/jane"), &dev)
        .await
    {
        Err(BrokerError::Denied(denial)) => {
            assert!(
                denial.summary.contains("no [[policy.agents]] entry"),
                "{denial:?}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(w.cloud.calls(), 1);
}

#[tokio::test]
async fn agent_quotas_refuse_the_next_issuance_and_spare_other_agents() {
    let w = world().await;
    let dev = ask("pulumi:acme/payments/dev");
    let bot = || agent("agent:one", "user:default/jane");
    for _ in 0..2 {
        w.broker.issue(&context(), bot(), &dev).await.unwrap();
    }
    match w.broker.issue(&context(), bot(), &dev).await {
        Err(BrokerError::QuotaExceeded {
            retry_after,
            message,
        }) => {
            assert!(
                retry_after > Duration::from_secs(3500) && retry_after <= Duration::from_secs(3601),
                "{retry_after:?}"
            );
            assert!(message.contains("agent agent:one got 2"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let refusal = w.rows().await.pop().unwrap();
    assert_eq!(refusal.outcome, "denied");
    assert_eq!(detail(&refusal)["denied_by"], "agents:deploy-bots");
    // Another agent for the same person is unaffected until the person's
    // quota (3) is reached.
    w.broker
        .issue(&context(), agent("agent:two", "user:default/jane"), &dev)
        .await
        .unwrap();
    assert!(matches!(
        w.broker
            .issue(&context(), agent("agent:three", "user:default/jane"), &dev)
            .await,
        Err(BrokerError::QuotaExceeded { .. })
    ));
    // And people are not counted at all.
    w.issue("user:default/jane", &dev).await.unwrap();
    assert_eq!(w.cloud.calls(), 4);
}

#[tokio::test]
async fn beyond_the_bounds_a_person_approves_and_the_agent_gets_it() {
    let w = world().await;
    let mut dev = ask("pulumi:acme/payments/dev");
    dev.duration = Some(Duration::from_secs(3600));
    let bot = || agent_for("user:default/jane");
    assert!(approval_required(
        w.broker.issue(&context(), bot(), &dev).await
    ));
    let request = w
        .broker
        .request_access(&context(), bot(), &dev)
        .await
        .unwrap();
    let id = request.id.to_string();
    // The entry's approvers decide, not the rule's (there are none) nor the
    // team's; never an agent.
    assert!(w.approve(&person("user:default/alex"), &id).await.is_err());
    assert!(w
        .approve(&agent_for("user:default/sam"), &id)
        .await
        .is_err());
    w.approve(&person("user:default/sam"), &id).await.unwrap();
    let issued = w.broker.issue(&context(), bot(), &dev).await.unwrap();
    assert_eq!(issued.duration, Duration::from_secs(3600));
    // The person's own request is not covered by the agent's approval, nor
    // does the person need one.
    let own = w.issue("user:default/jane", &dev).await.unwrap();
    assert_eq!(own.duration, Duration::from_secs(3600));
}
