//! Revocation of AI agents through the HTTP API and the CLI: a person revokes
//! their delegation to an agent and its next request is refused (other agents,
//! other people and the person themself unaffected), the answer lists the
//! credential the agent already holds with its expiry, an admin revokes an
//! agent for everyone, agents and non-admins cannot, and a revocation survives
//! a restart and reaches every broker on one PostgreSQL at once.

use serde_json::{json, Value};

use crate::support::*;

const DEPLOY_BOT: &str = "agent:deploy-bot";
/// Agent admins, and bounds for the test agents (agents get nothing without).
const ADMINS: &str = r#"
[agents]
admin_groups = ["group:default/security"]

[[policy.agents]]
name = "test-agents"
agents = ["agent:*"]
max_duration = "1h"
"#;

fn dev() -> Value {
    credential_request("pulumi:acme/payments/dev")
}

/// `subject`'s token with `agent` acting for them (RFC 8693 `act`).
fn agent_token(backstage: &BackstageDouble, subject: &str, agent: &str) -> String {
    let mut claims = backstage.user_claims(subject);
    claims["act"] = json!({ "sub": agent });
    sign_jwt(
        &backstage.user_header(),
        &claims,
        Signer::Es256(&backstage.key),
    )
}

async fn post(url: &str, path: &str, token: &str, body: Value) -> TestResponse {
    let response = reqwest::Client::new()
        .post(format!("{url}{path}"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    TestResponse::from_response(response).await
}

async fn get(url: &str, path: &str, token: &str) -> TestResponse {
    let response = reqwest::Client::new()
        .get(format!("{url}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    TestResponse::from_response(response).await
}

async fn start(
    backstage: &BackstageDouble,
    sts: &StsRecorder,
    audit_url: Option<String>,
) -> Broker {
    start_with(backstage, sts, audit_url, Vec::new()).await
}

async fn start_with(
    backstage: &BackstageDouble,
    sts: &StsRecorder,
    audit_url: Option<String>,
    env: Vec<(String, String)>,
) -> Broker {
    let mut options = BrokerOptions::new(backstage, &sts.url);
    options.extra_config = ADMINS.into();
    options.audit_url = audit_url;
    options.env = env;
    Broker::start(options).await
}

fn revocation_rows(rows: &[Value], outcome: &str) -> Vec<Value> {
    rows.iter()
        .filter(|r| r["event"] == "revocation" && r["outcome"] == outcome)
        .cloned()
        .collect()
}

fn detail(row: &Value) -> Value {
    serde_json::from_str(row["detail"].as_str().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_revokes_their_agent_and_only_its_next_requests_are_refused() {
    let backstage = BackstageDouble::start().await;
    let sts = StsRecorder::start(StsBehaviour::Succeed).await;
    let broker = start(&backstage, &sts, None).await;
    let jane = backstage.user_token("user:default/jane");
    let bot = agent_token(&backstage, "user:default/jane", DEPLOY_BOT);

    let before = broker.request_credentials(Some(&bot), dev()).await;
    assert_eq!(before.status, 200, "{}", before.text);
    let key_id = before.body["credentials"]["access_key_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let expires_at = before.body["expires_at"].as_str().unwrap().to_owned();
    let issuance_id = before.body["issuance_id"].as_str().unwrap().to_owned();
    // jane's own credential is not the agent's: it is not listed.
    assert_eq!(
        broker.request_credentials(Some(&jane), dev()).await.status,
        200
    );

    let revoked = post(
        &broker.url,
        "/v1/delegations/revoke",
        &jane,
        json!({ "agent": DEPLOY_BOT, "reason": "it went rogue" }),
    )
    .await;
    assert_eq!(revoked.status, 200, "{}", revoked.text);
    let revocation = &revoked.body["revocation"];
    assert_eq!(revocation["scope"], "delegation");
    assert_eq!(revocation["person"], "user:default/jane");
    assert_eq!(revocation["agent"], DEPLOY_BOT);
    assert_eq!(revoked.body["unchanged"], false);
    let outstanding = revoked.body["outstanding_credentials"].as_array().unwrap();
    assert_eq!(outstanding.len(), 1, "{}", revoked.text);
    assert_eq!(outstanding[0]["credential_id"], key_id.as_str());
    assert_eq!(outstanding[0]["issuance_id"], issuance_id.as_str());
    assert_eq!(outstanding[0]["provider"], "aws");
    assert_eq!(outstanding[0]["stack"], "pulumi:acme/payments/dev");
    assert!(outstanding[0]["role"]
        .as_str()
        .unwrap()
        .starts_with("arn:aws:iam::111111111111:role/"));
    // The same instant, in the audit's fixed-width form.
    let listed = time::OffsetDateTime::parse(
        outstanding[0]["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let issued =
        time::OffsetDateTime::parse(&expires_at, &time::format_description::well_known::Rfc3339)
            .unwrap();
    assert!(
        (listed - issued).abs() < time::Duration::seconds(1),
        "{listed} vs {issued}"
    );
    assert!(revoked.body["note"]
        .as_str()
        .unwrap()
        .contains("cannot be recalled"));
    assert_eq!(revoked.body["recall_hints"][0]["provider"], "aws");
    assert!(revoked.body["recall_hints"][0]["hint"]
        .as_str()
        .unwrap()
        .contains("Revoke active sessions"));
    let id = revocation["id"].as_str().unwrap().to_owned();

    // The agent's next request, and a dry run, are refused; nothing reaches STS.
    let calls = sts.calls().len();
    let refused = broker.request_credentials(Some(&bot), dev()).await;
    refused.assert_problem(403, "delegation-revoked");
    assert!(refused.body["detail"]
        .as_str()
        .unwrap()
        .contains("user:default/jane revoked"));
    post(&broker.url, "/v1/decisions", &bot, dev())
        .await
        .assert_problem(403, "delegation-revoked");
    assert_eq!(sts.calls().len(), calls);
    // Nor may it read jane's audit records or list her access requests.
    get(&broker.url, "/v1/audit?requester=user:default/jane", &bot)
        .await
        .assert_problem(403, "delegation-revoked");
    get(&broker.url, "/v1/access-requests", &bot)
        .await
        .assert_problem(403, "delegation-revoked");

    // A chain with the revoked agent inside it is refused too: other-bot
    // acting through deploy-bot for jane.
    let mut chained = backstage.user_claims("user:default/jane");
    chained["act"] = json!({ "sub": "agent:other-bot", "act": { "sub": DEPLOY_BOT } });
    let chained = sign_jwt(
        &backstage.user_header(),
        &chained,
        Signer::Es256(&backstage.key),
    );
    broker
        .request_credentials(Some(&chained), dev())
        .await
        .assert_problem(403, "delegation-revoked");

    // Other agents, other people's use of the same agent, and jane herself.
    let other = agent_token(&backstage, "user:default/jane", "agent:other-bot");
    assert_eq!(
        broker.request_credentials(Some(&other), dev()).await.status,
        200
    );
    let alex_bot = agent_token(&backstage, "user:default/alex", DEPLOY_BOT);
    assert_eq!(
        broker
            .request_credentials(Some(&alex_bot), dev())
            .await
            .status,
        200
    );
    assert_eq!(
        broker.request_credentials(Some(&jane), dev()).await.status,
        200
    );

    // Revoking again changes nothing and records nothing.
    let again = post(
        &broker.url,
        "/v1/delegations/revoke",
        &jane,
        json!({ "agent": DEPLOY_BOT }),
    )
    .await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.body["unchanged"], true);
    assert_eq!(again.body["revocation"]["id"], id.as_str());

    let rows = broker.audit_rows().await;
    let made = revocation_rows(&rows, "revoked");
    assert_eq!(made.len(), 1);
    assert_eq!(made[0]["requester"], "user:default/jane");
    let made_detail = detail(&made[0]);
    assert_eq!(made_detail["revocation"], id.as_str());
    assert_eq!(made_detail["agent"], DEPLOY_BOT);
    assert_eq!(made_detail["outstanding_credentials"], 1);
    let denials: Vec<&Value> = rows
        .iter()
        .filter(|r| r["event"] == "decision" && r["outcome"] == "denied")
        .collect();
    assert_eq!(
        denials.len(),
        4,
        "the issuance, the chain, the audit read, the listing"
    );
    // The chain's denial names its current actor, and the revocation that
    // stopped it.
    let (chain, denials): (Vec<&Value>, Vec<&Value>) = denials
        .into_iter()
        .partition(|r| r["actor"] == "agent:other-bot");
    assert_eq!(chain.len(), 1);
    assert_eq!(detail(chain[0])["revocation"], id.as_str());
    assert_eq!(
        detail(chain[0])["actor_chain"],
        json!(["agent:other-bot", DEPLOY_BOT])
    );
    assert!(rows.iter().any(|r| r["event"] == "dry_run"
        && r["outcome"] == "would_deny"
        && r["actor"] == DEPLOY_BOT
        && detail(r)["revocation"] == id.as_str()));
    for denial in &denials {
        assert_eq!(denial["actor"], DEPLOY_BOT);
        assert_eq!(denial["requester"], "user:default/jane");
        assert_eq!(detail(denial)["revocation"], id.as_str());
    }
    assert_eq!(denials[0]["stack"], "pulumi:acme/payments/dev");
    assert!(verify_database(&broker.audit_url(), None).status.success());

    // The CLI lists it; jane restores it; the agent may act again.
    let list = stackpass(&["agents", "list", "--server", &broker.url])
        .env("STACKPASS_TOKEN", &jane)
        .output()
        .unwrap();
    assert!(list.status.success(), "{}", stderr(&list));
    assert!(stdout(&list).contains(&id) && stdout(&list).contains("it went rogue"));
    let restored = stackpass(&["agents", "restore", DEPLOY_BOT, "--server", &broker.url])
        .env("STACKPASS_TOKEN", &jane)
        .output()
        .unwrap();
    assert!(restored.status.success(), "{}", stderr(&restored));
    assert!(
        stdout(&restored).contains("restored"),
        "{}",
        stdout(&restored)
    );
    assert_eq!(
        broker.request_credentials(Some(&bot), dev()).await.status,
        200
    );
    let rows = broker.audit_rows().await;
    assert_eq!(revocation_rows(&rows, "restored").len(), 1);
    // Restoring what is not revoked is refused, and audited.
    post(
        &broker.url,
        "/v1/delegations/restore",
        &jane,
        json!({ "agent": DEPLOY_BOT }),
    )
    .await
    .assert_problem(404, "revocation-not-found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_revokes_an_agent_for_everyone_and_agents_and_others_cannot() {
    let backstage = BackstageDouble::start().await;
    let sts = StsRecorder::start(StsBehaviour::Succeed).await;
    let webhook = WebhookListener::start().await;
    let env = vec![(
        "STACKPASS_NOTIFICATIONS__WEBHOOK_URL".to_owned(),
        webhook.url.clone(),
    )];
    let broker = start_with(&backstage, &sts, None, env).await;
    let jane = backstage.user_token("user:default/jane");
    let jane_bot = agent_token(&backstage, "user:default/jane", DEPLOY_BOT);
    let alex_bot = agent_token(&backstage, "user:default/alex", DEPLOY_BOT);
    assert_eq!(
        broker
            .request_credentials(Some(&jane_bot), dev())
            .await
            .status,
        200
    );
    assert_eq!(
        broker
            .request_credentials(Some(&alex_bot), dev())
            .await
            .status,
        200
    );

    // jane is no agent admin.
    let body = json!({ "agent": DEPLOY_BOT, "reason": "compromised" });
    let refused = post(&broker.url, "/v1/agents/revoke", &jane, body.clone()).await;
    refused.assert_problem(403, "revocation-forbidden");
    assert!(refused.body["detail"]
        .as_str()
        .unwrap()
        .contains("group:default/security"));
    // An agent can neither revoke nor restore, not even acting for an admin.
    let sam_bot = agent_token(&backstage, "user:default/sam", DEPLOY_BOT);
    for path in [
        "/v1/agents/revoke",
        "/v1/delegations/revoke",
        "/v1/agents/restore",
    ] {
        post(&broker.url, path, &sam_bot, body.clone())
            .await
            .assert_problem(403, "revocation-forbidden");
    }
    // The CLI says so in one line, with a hint.
    let cli = stackpass(&[
        "agents",
        "revoke",
        DEPLOY_BOT,
        "--all-persons",
        "--reason",
        "compromised",
        "--server",
        &broker.url,
    ])
    .env("STACKPASS_TOKEN", &jane)
    .output()
    .unwrap();
    assert!(!cli.status.success());
    let error = stderr(&cli);
    assert!(error.contains("agent admin group"), "{error}");
    assert!(error.to_lowercase().contains("hint"), "{error}");
    let rows = broker.audit_rows().await;
    let attempts = revocation_rows(&rows, "refused");
    assert_eq!(attempts.len(), 5, "{attempts:?}");
    assert!(attempts
        .iter()
        .any(|r| r["actor"] == DEPLOY_BOT && r["requester"] == "user:default/sam"));
    assert!(revocation_rows(&rows, "revoked").is_empty());

    // An admin must say why.
    let sam = backstage.user_token("user:default/sam");
    post(
        &broker.url,
        "/v1/agents/revoke",
        &sam,
        json!({ "agent": DEPLOY_BOT }),
    )
    .await
    .assert_problem(422, "invalid-request");

    // sam revokes it for everyone, through the CLI; both persons' credentials are listed.
    let cli = stackpass(&[
        "agents",
        "revoke",
        DEPLOY_BOT,
        "--all-persons",
        "--reason",
        "compromised",
        "--server",
        &broker.url,
    ])
    .env("STACKPASS_TOKEN", &sam)
    .output()
    .unwrap();
    assert!(cli.status.success(), "{}", stderr(&cli));
    let out = stdout(&cli);
    assert!(out.contains("acting for anyone"), "{out}");
    assert!(
        out.contains("2 credential(s) issued before cannot be recalled"),
        "{out}"
    );
    assert!(
        out.contains("user:default/jane") && out.contains("user:default/alex"),
        "{out}"
    );
    // Announced, naming who revoked which agent for whom.
    let announced = webhook
        .wait_for("user:default/sam revoked agent agent:deploy-bot acting for every person")
        .await;
    assert_eq!(announced["stackpass"]["event"], "agent_revoked");
    assert_eq!(announced["stackpass"]["outstanding_credentials"], 2);

    broker
        .request_credentials(Some(&jane_bot), dev())
        .await
        .assert_problem(403, "delegation-revoked");
    let alex_refused = broker.request_credentials(Some(&alex_bot), dev()).await;
    alex_refused.assert_problem(403, "delegation-revoked");
    assert!(alex_refused.body["detail"]
        .as_str()
        .unwrap()
        .contains("every person"));
    assert_eq!(
        broker.request_credentials(Some(&jane), dev()).await.status,
        200
    );

    // jane cannot lift the admin's revocation, neither as hers nor as admin.
    post(
        &broker.url,
        "/v1/delegations/restore",
        &jane,
        json!({ "agent": DEPLOY_BOT }),
    )
    .await
    .assert_problem(404, "revocation-not-found");
    post(
        &broker.url,
        "/v1/agents/restore",
        &jane,
        json!({ "agent": DEPLOY_BOT }),
    )
    .await
    .assert_problem(403, "revocation-forbidden");
    broker
        .request_credentials(Some(&jane_bot), dev())
        .await
        .assert_problem(403, "delegation-revoked");
    // jane sees the agent-wide revocation in her list.
    let list = reqwest::Client::new()
        .get(format!("{}/v1/delegations", broker.url))
        .bearer_auth(&jane)
        .send()
        .await
        .unwrap();
    let list = TestResponse::from_response(list).await;
    assert_eq!(list.body["revocations"][0]["scope"], "agent");
    assert!(list.body["revocations"][0].get("person").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_survives_a_restart() {
    let backstage = BackstageDouble::start().await;
    let sts = StsRecorder::start(StsBehaviour::Succeed).await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("audit.db").display());
    let bot = agent_token(&backstage, "user:default/jane", DEPLOY_BOT);
    {
        let broker = start(&backstage, &sts, Some(url.clone())).await;
        let jane = backstage.user_token("user:default/jane");
        let revoked = post(
            &broker.url,
            "/v1/delegations/revoke",
            &jane,
            json!({ "agent": "agent:*" }),
        )
        .await;
        assert_eq!(revoked.status, 200, "{}", revoked.text);
    }
    let broker = start(&backstage, &sts, Some(url)).await;
    // The pattern covers every agent of jane's.
    broker
        .request_credentials(Some(&bot), dev())
        .await
        .assert_problem(403, "delegation-revoked");
    let other = agent_token(&backstage, "user:default/jane", "agent:other-bot");
    broker
        .request_credentials(Some(&other), dev())
        .await
        .assert_problem(403, "delegation-revoked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_on_one_broker_refuses_the_next_request_on_another() {
    let db = PgDatabase::create().await;
    let backstage = BackstageDouble::start().await;
    let sts = StsRecorder::start(StsBehaviour::Succeed).await;
    let a = start(&backstage, &sts, Some(db.url.clone())).await;
    let b = start(&backstage, &sts, Some(db.url.clone())).await;
    let jane = backstage.user_token("user:default/jane");
    let bot = agent_token(&backstage, "user:default/jane", DEPLOY_BOT);
    let issued = b.request_credentials(Some(&bot), dev()).await;
    assert_eq!(issued.status, 200, "{}", issued.text);

    // Revoked on A: B's very next request for the agent is refused.
    let revoked = post(
        &a.url,
        "/v1/delegations/revoke",
        &jane,
        json!({ "agent": DEPLOY_BOT }),
    )
    .await;
    assert_eq!(revoked.status, 200, "{}", revoked.text);
    // The credential B issued is listed by A.
    assert_eq!(
        revoked.body["outstanding_credentials"][0]["credential_id"],
        issued.body["credentials"]["access_key_id"]
    );
    b.request_credentials(Some(&bot), dev())
        .await
        .assert_problem(403, "delegation-revoked");
    // Revoked on both at once: one revocation, the other answer unchanged.
    let sam = backstage.user_token("user:default/sam");
    let body = json!({ "agent": "agent:other-bot", "reason": "retired" });
    let (x, y) = tokio::join!(
        post(&a.url, "/v1/agents/revoke", &sam, body.clone()),
        post(&b.url, "/v1/agents/revoke", &sam, body.clone())
    );
    assert_eq!((x.status, y.status), (200, 200), "{} / {}", x.text, y.text);
    assert_eq!(x.body["revocation"]["id"], y.body["revocation"]["id"]);
    let mut unchanged = [x.body["unchanged"].as_bool(), y.body["unchanged"].as_bool()];
    unchanged.sort();
    assert_eq!(unchanged, [Some(false), Some(true)]);
    let other = agent_token(&backstage, "user:default/alex", "agent:other-bot");
    a.request_credentials(Some(&other), dev())
        .await
        .assert_problem(403, "delegation-revoked");

    // Restored on B: A's next request goes through.
    let restored = post(
        &b.url,
        "/v1/delegations/restore",
        &jane,
        json!({ "agent": DEPLOY_BOT }),
    )
    .await;
    assert_eq!(restored.status, 200, "{}", restored.text);
    assert_eq!(a.request_credentials(Some(&bot), dev()).await.status, 200);
    let output = verify_database(&db.url, None);
    assert!(output.status.success(), "{}", stderr(&output));
}
