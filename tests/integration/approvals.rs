//! Approvals and break-glass through the HTTP API and the CLI: a rule that needs
//! a second person, the whole request → approve → issue → window-closes flow, the
//! fail-closed edges, and break-glass flagged and announced.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

const PROD_WITH_APPROVAL: &str = r#"
[[rules]]
name = "owners-deploy-prod"
provider = "aws"
role = "arn:aws:iam::{tags.aws-account}:role/{component}-prod-deployer"
max_duration = "1h"
approval = { count = 1, approvers = ["group:default/APPROVERS"], window = "WINDOW", request_ttl = "TTL" }
break_glass = { max_duration = "15m" }
[rules.tags]
environment = ["prod"]
aws-account = ["*"]
"#;

fn policy(dir: &Path, approvers: &str, window: &str, ttl: &str) {
    std::fs::write(
        dir.join("prod.toml"),
        PROD_WITH_APPROVAL
            .replace("APPROVERS", approvers)
            .replace("WINDOW", window)
            .replace("TTL", ttl),
    )
    .unwrap();
}

struct World {
    backstage: BackstageDouble,
    sts: StsRecorder,
    webhook: WebhookListener,
    broker: Broker,
    policy: tempfile::TempDir,
}

async fn world(window: &str, ttl: &str) -> World {
    world_with(window, ttl, default_entities()).await
}

async fn world_with(window: &str, ttl: &str, entities: Vec<Value>) -> World {
    let policy_dir = tempfile::tempdir().unwrap();
    policy(policy_dir.path(), "team-payments", window, ttl);
    let backstage = BackstageDouble::start_with(entities).await;
    let sts = StsRecorder::start(StsBehaviour::Succeed).await;
    let webhook = WebhookListener::start().await;
    let mut options = BrokerOptions::new(&backstage, &sts.url);
    // Agents get nothing without bounds; this one may act (and is still
    // refused approving and break-glass).
    options.extra_config = "[[policy.agents]]\nname = \"bots\"\nagents = [\"agent:*\"]\n".into();
    options.env.push((
        "STACKPASS_POLICY__FILES".into(),
        format!("[\"{}\"]", policy_dir.path().display()),
    ));
    options
        .env
        .push(("STACKPASS_POLICY__RELOAD_INTERVAL".into(), "100ms".into()));
    options.env.push((
        "STACKPASS_NOTIFICATIONS__WEBHOOK_URL".into(),
        webhook.url.clone(),
    ));
    let broker = Broker::start(options).await;
    World {
        backstage,
        sts,
        webhook,
        broker,
        policy: policy_dir,
    }
}

impl World {
    async fn call(&self, who: &str, method: &str, path: &str, body: Option<Value>) -> TestResponse {
        let client = reqwest::Client::new();
        let url = format!("{}{path}", self.broker.url);
        let mut request = match method {
            "GET" => client.get(url),
            _ => client.post(url),
        };
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .bearer_auth(self.backstage.user_token(who))
            .send()
            .await
            .unwrap();
        TestResponse::from_response(response).await
    }

    async fn credentials(&self, who: &str, body: Value) -> TestResponse {
        self.call(who, "POST", "/v1/credentials", Some(body)).await
    }

    /// `method path` with `token` as the bearer.
    async fn call_with(&self, token: &str, path: &str, body: Option<Value>) -> TestResponse {
        let mut request = reqwest::Client::new().post(format!("{}{path}", self.broker.url));
        if let Some(body) = body {
            request = request.json(&body);
        }
        TestResponse::from_response(request.bearer_auth(token).send().await.unwrap()).await
    }

    /// A token for `subject` with an agent acting for them (RFC 8693 `act`).
    fn agent_token(&self, subject: &str) -> String {
        let mut claims = self.backstage.user_claims(subject);
        claims["act"] = json!({ "sub": "agent:deploy-bot" });
        sign_jwt(
            &self.backstage.user_header(),
            &claims,
            Signer::Es256(&self.backstage.key),
        )
    }

    /// jane asks for `body`; the id of her access request.
    async fn requested(&self, body: Value) -> String {
        let created = self
            .call(
                "user:default/jane",
                "POST",
                "/v1/access-requests",
                Some(body),
            )
            .await;
        assert_eq!(created.status, 201, "{}", created.text);
        created.body["access_request"]["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn approve(&self, who: &str, id: &str) -> TestResponse {
        self.call(
            who,
            "POST",
            &format!("/v1/access-requests/{id}/approve"),
            None,
        )
        .await
    }

    async fn wait_for_reload(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let rows = self.broker.audit_rows().await;
            if rows
                .iter()
                .any(|r| r["event"] == "policy_reloaded" && r["outcome"] == "applied")
            {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "policy not reloaded");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn prod() -> Value {
    json!({ "stack": "pulumi:acme/payments/prod", "provider": "aws", "reason": "hotfix for INC-42" })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_approve_issue_and_the_window_closes() {
    let w = world("3s", "1h").await;

    // Without approval: 403 naming the rule and what it needs; nothing issued.
    let refused = w.credentials("user:default/jane", prod()).await;
    refused.assert_problem(403, "approval-required");
    assert!(refused.body["detail"]
        .as_str()
        .unwrap()
        .contains("needs 1 approval(s) from group:default/team-payments"));
    assert!(w.sts.calls().is_empty());

    // jane asks; the request is announced.
    let created = w
        .call(
            "user:default/jane",
            "POST",
            "/v1/access-requests",
            Some(prod()),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.body["access_request"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(created.body["access_request"]["state"], "pending");
    assert_eq!(
        created.body["access_request"]["reason"],
        "hotfix for INC-42"
    );
    // What the approver is shown, and what an approval will cover.
    let shown = &created.body["access_request"];
    assert_eq!(shown["mode"], "credentials");
    assert_eq!(shown["grant"]["target"], shown["role"]);
    assert_eq!(shown["grant"]["max_duration_seconds"], 3600);
    assert_eq!(shown["grant_digest"].as_str().unwrap().len(), 64);
    let announced = w.webhook.wait_for("user:default/jane asks for").await;
    assert!(announced["text"].as_str().unwrap().contains(&id));
    // Asking again returns the same pending request.
    let again = w
        .call(
            "user:default/jane",
            "POST",
            "/v1/access-requests",
            Some(prod()),
        )
        .await;
    assert_eq!(again.body["access_request"]["id"], id.as_str());

    // Fail closed: not your own, not an outsider, not an unknown id.
    w.call(
        "user:default/jane",
        "POST",
        &format!("/v1/access-requests/{id}/approve"),
        None,
    )
    .await
    .assert_problem(403, "approval-forbidden");
    w.call(
        "user:default/bob",
        "POST",
        &format!("/v1/access-requests/{id}/approve"),
        None,
    )
    .await
    .assert_problem(403, "approval-forbidden");
    w.call(
        "user:default/alex",
        "POST",
        "/v1/access-requests/nope/approve",
        None,
    )
    .await
    .assert_problem(404, "access-request-not-found");

    // alex sees it, approves it.
    let listed = w
        .call("user:default/alex", "GET", "/v1/access-requests", None)
        .await;
    assert!(listed.body["access_requests"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["id"] == id.as_str()));
    let bobs = w
        .call("user:default/bob", "GET", "/v1/access-requests", None)
        .await;
    assert!(
        bobs.body["access_requests"].as_array().unwrap().is_empty(),
        "bob may decide nothing here"
    );
    let approved = w
        .call(
            "user:default/alex",
            "POST",
            &format!("/v1/access-requests/{id}/approve"),
            Some(json!({ "note": "looked at the diff" })),
        )
        .await;
    assert_eq!(approved.status, 200, "{}", approved.text);
    assert_eq!(approved.body["access_request"]["state"], "approved");
    assert_eq!(
        approved.body["access_request"]["approvers"],
        json!(["user:default/alex"])
    );
    w.webhook.wait_for("user:default/alex approved").await;
    w.call(
        "user:default/alex",
        "POST",
        &format!("/v1/access-requests/{id}/approve"),
        None,
    )
    .await
    .assert_problem(409, "access-request-closed");

    // Within the window: credentials.
    let issued = w.credentials("user:default/jane", prod()).await;
    assert_eq!(issued.status, 200, "{}", issued.text);
    assert_eq!(issued.body["rule"], "owners-deploy-prod");
    // One approval, one issuance.
    w.credentials("user:default/jane", prod())
        .await
        .assert_problem(403, "approval-required");
    assert_eq!(w.sts.calls().len(), 1);

    // After the window: refused again.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    w.credentials("user:default/jane", prod())
        .await
        .assert_problem(403, "approval-required");

    let rows = w.broker.audit_rows().await;
    let steps: Vec<(String, String)> = rows
        .iter()
        .map(|r| {
            (
                r["event"].as_str().unwrap().to_owned(),
                r["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let has = |event: &str, outcome: &str| steps.iter().any(|(e, o)| e == event && o == outcome);
    assert!(has("decision", "approval_required"));
    assert!(has("access_requested", "pending"));
    assert!(has("approval", "approved"));
    assert!(has("approval", "used"));
    assert!(has("approval", "refused"));
    assert!(has("issuance_outcome", "issued"));
    let approval = rows
        .iter()
        .find(|r| r["event"] == "approval" && r["outcome"] == "approved")
        .unwrap();
    assert_eq!(
        approval["requester"], "user:default/alex",
        "the approver is who acted"
    );
    assert!(approval["detail"]
        .as_str()
        .unwrap()
        .contains("looked at the diff"));
    let allowed = rows
        .iter()
        .find(|r| r["event"] == "decision" && r["outcome"] == "allowed")
        .unwrap();
    assert!(
        allowed["detail"].as_str().unwrap().contains(&id),
        "the issuance names its access request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_request_cannot_be_approved_and_denials_are_final() {
    let w = world("1h", "1s").await;
    let created = w
        .call(
            "user:default/jane",
            "POST",
            "/v1/access-requests",
            Some(prod()),
        )
        .await;
    let id = created.body["access_request"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    w.call(
        "user:default/alex",
        "POST",
        &format!("/v1/access-requests/{id}/approve"),
        None,
    )
    .await
    .assert_problem(409, "access-request-closed");
    // The expiry and the refused attempt are both on the record.
    let rows = w.broker.audit_rows().await;
    assert!(rows
        .iter()
        .any(|r| r["event"] == "approval" && r["outcome"] == "expired"));
    let refused = rows
        .iter()
        .find(|r| r["event"] == "approval" && r["outcome"] == "refused")
        .unwrap();
    assert_eq!(refused["requester"], "user:default/alex");
    assert!(refused["detail"].as_str().unwrap().contains("has expired"));

    let fresh = w
        .call(
            "user:default/jane",
            "POST",
            "/v1/access-requests",
            Some(prod()),
        )
        .await;
    let fresh_id = fresh.body["access_request"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(fresh_id, id, "an expired request is not reused");
    let denied = w
        .call(
            "user:default/alex",
            "POST",
            &format!("/v1/access-requests/{fresh_id}/deny"),
            Some(json!({ "note": "not during the freeze" })),
        )
        .await;
    assert_eq!(
        denied.body["access_request"]["state"], "denied",
        "{}",
        denied.text
    );
    w.webhook.wait_for("user:default/alex denied").await;
    w.call(
        "user:default/alex",
        "POST",
        &format!("/v1/access-requests/{fresh_id}/approve"),
        None,
    )
    .await
    .assert_problem(409, "access-request-closed");
    w.credentials("user:default/jane", prod())
        .await
        .assert_problem(403, "approval-required");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_change_that_removes_the_approvers_right_voids_the_approval() {
    let w = world("1h", "1h").await;
    let created = w
        .call(
            "user:default/jane",
            "POST",
            "/v1/access-requests",
            Some(prod()),
        )
        .await;
    let id = created.body["access_request"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let approved = w
        .call(
            "user:default/alex",
            "POST",
            &format!("/v1/access-requests/{id}/approve"),
            None,
        )
        .await;
    assert_eq!(approved.body["access_request"]["state"], "approved");

    // Approvers are now the security group: alex's approval no longer counts.
    policy(w.policy.path(), "security", "1h", "1h");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let rows = w.broker.audit_rows().await;
        if rows
            .iter()
            .any(|r| r["event"] == "policy_reloaded" && r["outcome"] == "applied")
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "policy not reloaded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    w.credentials("user:default/jane", prod())
        .await
        .assert_problem(403, "approval-required");
    let rows = w.broker.audit_rows().await;
    assert!(rows
        .iter()
        .any(|r| r["event"] == "approval" && r["outcome"] == "invalidated"));
    assert!(w.sts.calls().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_glass_is_immediate_capped_flagged_and_announced() {
    let w = world("1h", "1h").await;
    let without_reason = w
        .credentials("user:default/jane", json!({ "stack": "pulumi:acme/payments/prod", "provider": "aws", "break_glass": { "reason": " " } }))
        .await;
    without_reason.assert_problem(422, "invalid-request");

    let response = w
        .credentials(
            "user:default/jane",
            json!({ "stack": "pulumi:acme/payments/prod", "provider": "aws", "duration_seconds": 3600, "break_glass": { "reason": "prod is down, INC-7" } }),
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text);
    assert_eq!(
        response.body["duration_seconds"], 900,
        "capped at the rule's break-glass maximum"
    );
    let message = w.webhook.wait_for("BREAK-GLASS").await;
    assert!(message["text"]
        .as_str()
        .unwrap()
        .contains("prod is down, INC-7"));
    assert_eq!(message["stackpass"]["event"], "break_glass");
    let rows = w.broker.audit_rows().await;
    let flagged = rows.iter().find(|r| r["event"] == "decision").unwrap();
    assert_eq!(flagged["outcome"], "break_glass");
    assert!(flagged["detail"]
        .as_str()
        .unwrap()
        .contains("prod is down, INC-7"));

    // Break-glass on a rule that does not allow it is refused.
    let dev = w
        .credentials("user:default/bob", json!({ "stack": "pulumi:acme/payments/prod", "provider": "aws", "break_glass": { "reason": "x" } }))
        .await;
    dev.assert_problem(403, "denied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_requests_lists_and_approves() {
    let w = world("1h", "1h").await;
    let run = |who: &str, args: &[&str]| {
        let mut all = vec!["approvals"];
        all.extend_from_slice(args);
        all.extend(["--server", &w.broker.url]);
        stackpass(&all)
            .env("STACKPASS_TOKEN", w.backstage.user_token(who))
            .output()
            .unwrap()
    };
    let requested = run(
        "user:default/jane",
        &[
            "request",
            "--stack",
            "pulumi:acme/payments/prod",
            "--reason",
            "release 1.2",
        ],
    );
    assert!(requested.status.success(), "{}", stderr(&requested));
    let id = stdout(&requested)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();

    let creds = stackpass(&[
        "creds",
        "--stack",
        "pulumi:acme/payments/prod",
        "--server",
        &w.broker.url,
    ])
    .env(
        "STACKPASS_TOKEN",
        w.backstage.user_token("user:default/jane"),
    )
    .output()
    .unwrap();
    assert_eq!(creds.status.code(), Some(1));
    assert!(
        stderr(&creds).contains(&format!("access request {id} is waiting")),
        "{}",
        stderr(&creds)
    );

    let own = run("user:default/jane", &["approve", &id]);
    assert_eq!(own.status.code(), Some(1));
    assert!(
        stderr(&own).contains("nobody may approve or deny their own access request"),
        "{}",
        stderr(&own)
    );

    let listed = run("user:default/alex", &["list"]);
    assert!(
        stdout(&listed).contains(&id) && stdout(&listed).contains("pending"),
        "{}",
        stdout(&listed)
    );
    // The approver sees what an approval covers: provider, mode, duration, grant.
    assert!(
        stdout(&listed).contains("via aws (credentials, 15m)")
            && stdout(&listed).contains("grant "),
        "{}",
        stdout(&listed)
    );
    let approved = run("user:default/alex", &["approve", &id, "--note", "ok"]);
    assert!(approved.status.success(), "{}", stderr(&approved));
    assert!(
        stdout(&approved).contains("approved"),
        "{}",
        stdout(&approved)
    );

    let creds = stackpass(&[
        "creds",
        "--stack",
        "pulumi:acme/payments/prod",
        "--server",
        &w.broker.url,
        "--format",
        "env",
    ])
    .env(
        "STACKPASS_TOKEN",
        w.backstage.user_token("user:default/jane"),
    )
    .output()
    .unwrap();
    assert!(creds.status.success(), "{}", stderr(&creds));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_approvers_over_http_one_wins_and_the_other_gets_409_and_is_audited() {
    let mut entities = default_entities();
    entities[0] = group("team-payments", &["jane", "alex", "kim"]);
    entities.push(user("kim", &["team-payments"]));
    let w = world_with("1h", "1h", entities).await;
    for round in 0..5 {
        let id = w.requested(prod()).await;
        let (a, b) = tokio::join!(
            w.approve("user:default/alex", &id),
            w.approve("user:default/kim", &id)
        );
        let mut statuses = [a.status, b.status];
        statuses.sort();
        assert_eq!(
            statuses,
            [200, 409],
            "round {round}: {} / {}",
            a.text,
            b.text
        );
        let loser = if a.status == 409 { &a } else { &b };
        loser.assert_problem(409, "access-request-closed");
        assert!(
            loser.body["detail"]
                .as_str()
                .unwrap()
                .contains("is approved"),
            "{}",
            loser.text
        );
        let rows = w.broker.audit_rows().await;
        let steps: Vec<&str> = rows
            .iter()
            .filter(|r| r["event"] == "approval" && r["detail"].as_str().unwrap().contains(&id))
            .map(|r| r["outcome"].as_str().unwrap())
            .collect();
        assert_eq!(steps.len(), 2, "round {round}: {steps:?}");
        assert!(steps.contains(&"approved") && steps.contains(&"refused"));
        // Use it, so the next round asks afresh.
        let issued = w.credentials("user:default/jane", prod()).await;
        assert_eq!(issued.status, 200, "{}", issued.text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_token_can_neither_approve_nor_break_glass() {
    let w = world("1h", "1h").await;
    let id = w.requested(prod()).await;
    let agent = w.agent_token("user:default/alex");
    let refused = w
        .call_with(&agent, &format!("/v1/access-requests/{id}/approve"), None)
        .await;
    refused.assert_problem(403, "approval-forbidden");
    assert!(refused.body["detail"]
        .as_str()
        .unwrap()
        .contains("only people decide"));
    let glass = w
        .call_with(
            &w.agent_token("user:default/jane"),
            "/v1/credentials",
            Some(json!({ "stack": "pulumi:acme/payments/prod", "provider": "aws", "break_glass": { "reason": "prod is down" } })),
        )
        .await;
    glass.assert_problem(403, "break-glass-forbidden");
    assert!(w.sts.calls().is_empty());
    w.credentials("user:default/jane", prod())
        .await
        .assert_problem(403, "approval-required");

    let rows = w.broker.audit_rows().await;
    let attempt = rows
        .iter()
        .find(|r| r["event"] == "approval" && r["outcome"] == "refused")
        .unwrap();
    assert_eq!(attempt["requester"], "user:default/alex");
    assert_eq!(attempt["actor"], "agent:deploy-bot");
    assert!(rows.iter().any(|r| r["event"] == "decision"
        && r["outcome"] == "denied"
        && r["actor"] == "agent:deploy-bot"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_the_role_needs_a_new_approval() {
    let w = world("1h", "1h").await;
    let id = w.requested(prod()).await;
    assert_eq!(w.approve("user:default/alex", &id).await.status, 200);

    // Same rule, same approvers, a broader role.
    std::fs::write(
        w.policy.path().join("prod.toml"),
        PROD_WITH_APPROVAL
            .replace("APPROVERS", "team-payments")
            .replace("WINDOW", "1h")
            .replace("TTL", "1h")
            .replace("{component}-prod-deployer", "admin"),
    )
    .unwrap();
    w.wait_for_reload().await;
    w.credentials("user:default/jane", prod())
        .await
        .assert_problem(403, "approval-required");
    assert!(w.sts.calls().is_empty());
    let rows = w.broker.audit_rows().await;
    assert!(rows
        .iter()
        .any(|r| r["event"] == "approval" && r["outcome"] == "invalidated"));

    // A new approval shows and covers the new role.
    let fresh = w.requested(prod()).await;
    assert_ne!(fresh, id);
    assert_eq!(w.approve("user:default/alex", &fresh).await.status, 200);
    let issued = w.credentials("user:default/jane", prod()).await;
    assert_eq!(issued.status, 200, "{}", issued.text);
    assert_eq!(w.sts.calls().len(), 1);
}
