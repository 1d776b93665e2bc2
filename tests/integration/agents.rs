//! Agent bounds through the HTTP API: tokens with an RFC 8693 `act` claim get
//! the person's grant narrowed by their `[[policy.agents]]` entry (lifetime
//! cap, AWS session policy in the STS call), nothing without an entry or for a
//! non-owner, per-agent quotas answered 429 with `Retry-After`, and a request
//! beyond the bounds approved by a person before the agent gets it.

use serde_json::{json, Value};

use crate::support::*;

const BOUNDS: &str = r#"
[[policy.agents]]
name = "deploy-bots"
agents = ["agent:deploy-*"]
aws_session_policy = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"*"}]}'
quota = { per_agent = 2, window = "1h" }
beyond_bounds = "approval"
approval = { approvers = ["group:default/security"] }
"#;

struct World {
    backstage: BackstageDouble,
    sts: StsRecorder,
    broker: Broker,
}

async fn world() -> World {
    let backstage = BackstageDouble::start().await;
    let sts = StsRecorder::start(StsBehaviour::Succeed).await;
    let mut options = BrokerOptions::new(&backstage, &sts.url);
    options.extra_config = BOUNDS.into();
    let broker = Broker::start(options).await;
    World {
        backstage,
        sts,
        broker,
    }
}

impl World {
    /// A Backstage token for `person` with `agent` acting for them.
    fn agent_token(&self, agent: &str, person: &str) -> String {
        let mut claims = self.backstage.user_claims(person);
        claims["act"] = json!({ "sub": agent });
        sign_jwt(
            &self.backstage.user_header(),
            &claims,
            Signer::Es256(&self.backstage.key),
        )
    }

    async fn post(&self, token: &str, path: &str, body: Value) -> TestResponse {
        let response = reqwest::Client::new()
            .post(format!("{}{path}", self.broker.url))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        TestResponse::from_response(response).await
    }
}

/// An audit row's detail, stored as JSON text.
fn detail(row: &Value) -> Value {
    serde_json::from_str(row["detail"].as_str().unwrap()).unwrap()
}

fn dev(duration: Option<u64>) -> Value {
    let mut body = credential_request("pulumi:acme/payments/dev");
    if let Some(seconds) = duration {
        body["duration_seconds"] = seconds.into();
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_gets_at_most_its_bounds_of_what_the_person_may_get() {
    let w = world().await;
    let bot = w.agent_token("agent:deploy-a", "user:default/jane");
    // The rule allows jane an hour; her agent gets 15 minutes and the
    // entry's session policy.
    let issued = w.broker.request_credentials(Some(&bot), dev(None)).await;
    assert_eq!(issued.status, 200, "{}", issued.text);
    assert_eq!(issued.body["duration_seconds"], 900);
    let call = w.sts.calls().pop().unwrap();
    assert_eq!(call.form["DurationSeconds"], "900");
    let policy: Value = serde_json::from_str(&call.form["Policy"]).unwrap();
    assert_eq!(policy["Statement"][0]["Action"], "s3:GetObject");

    // The dry run shows the narrowed grant.
    let explained = w.post(&bot, "/v1/decisions", dev(None)).await;
    assert_eq!(explained.status, 200, "{}", explained.text);
    assert_eq!(explained.body["decision"], "allow");
    assert_eq!(explained.body["max_duration"], "15m");
    assert_eq!(explained.body["agent_bounds"], "deploy-bots");

    // For bob, who does not own payments: nothing.
    let for_bob = w.agent_token("agent:deploy-a", "user:default/bob");
    w.broker
        .request_credentials(Some(&for_bob), dev(None))
        .await
        .assert_problem(403, "denied");
    // An agent no entry names: nothing, and jane (an owner) is told why.
    let stranger = w.agent_token("agent:other", "user:default/jane");
    let refused = w
        .broker
        .request_credentials(Some(&stranger), dev(None))
        .await;
    refused.assert_problem(403, "denied");
    assert!(
        refused.body["detail"]
            .as_str()
            .unwrap()
            .contains("no [[policy.agents]] entry names it"),
        "{}",
        refused.text
    );
    assert_eq!(w.sts.calls().len(), 1);

    let rows = w.broker.audit_rows().await;
    let outcome = rows
        .iter()
        .find(|r| r["event"] == "issuance_outcome" && r["outcome"] == "issued")
        .unwrap();
    assert_eq!(outcome["requester"], "user:default/jane");
    assert_eq!(outcome["actor"], "agent:deploy-a");
    assert_eq!(detail(outcome)["agent_bounds"]["entry"], "deploy-bots");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quota_refuses_an_agents_third_issuance_with_retry_after() {
    let w = world().await;
    let a = w.agent_token("agent:deploy-a", "user:default/jane");
    for _ in 0..2 {
        let issued = w.broker.request_credentials(Some(&a), dev(None)).await;
        assert_eq!(issued.status, 200, "{}", issued.text);
    }
    let refused = w.broker.request_credentials(Some(&a), dev(None)).await;
    refused.assert_problem(429, "quota-exceeded");
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((3500..=3601).contains(&retry), "{retry}");
    assert_eq!(refused.body["retry_after_seconds"], retry);
    // Another agent, for the same person, is unaffected.
    let b = w.agent_token("agent:deploy-b", "user:default/jane");
    let issued = w.broker.request_credentials(Some(&b), dev(None)).await;
    assert_eq!(issued.status, 200, "{}", issued.text);
    assert_eq!(w.sts.calls().len(), 3);
    let rows = w.broker.audit_rows().await;
    let denial = rows
        .iter()
        .find(|r| r["outcome"] == "denied")
        .expect("the refusal is audited");
    assert_eq!(denial["actor"], "agent:deploy-a");
    assert_eq!(detail(denial)["denied_by"], "agents:deploy-bots");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_bounds_a_person_approves_and_then_the_agent_gets_it() {
    let w = world().await;
    let bot = w.agent_token("agent:deploy-a", "user:default/jane");
    w.broker
        .request_credentials(Some(&bot), dev(Some(3600)))
        .await
        .assert_problem(403, "approval-required");
    let created = w.post(&bot, "/v1/access-requests", dev(Some(3600))).await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.body["access_request"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/v1/access-requests/{id}/approve");
    // jane's team is not the entry's approvers; sam (security) is.
    let alex = w.backstage.user_token("user:default/alex");
    assert_eq!(w.post(&alex, &path, json!({})).await.status, 403);
    let sam = w.backstage.user_token("user:default/sam");
    let approved = w.post(&sam, &path, json!({})).await;
    assert_eq!(approved.status, 200, "{}", approved.text);
    let issued = w
        .broker
        .request_credentials(Some(&bot), dev(Some(3600)))
        .await;
    assert_eq!(issued.status, 200, "{}", issued.text);
    assert_eq!(issued.body["duration_seconds"], 3600);
    assert_eq!(w.sts.calls().pop().unwrap().form["DurationSeconds"], "3600");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_never_overshoot_the_quota() {
    let w = world().await;
    let a = w.agent_token("agent:deploy-a", "user:default/jane");
    // Ten at once against a quota of two: the count is checked again under the
    // chain lock as each issuance's first records commit.
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let (url, token) = (format!("{}/v1/credentials", w.broker.url), a.clone());
        requests.spawn(async move {
            let response = reqwest::Client::new()
                .post(url)
                .bearer_auth(token)
                .json(&dev(None))
                .send()
                .await
                .unwrap();
            TestResponse::from_response(response).await
        });
    }
    let answers = requests.join_all().await;
    let issued = answers.iter().filter(|r| r.status == 200).count();
    let refused = answers.iter().filter(|r| r.status == 429).count();
    assert_eq!(
        (issued, refused),
        (2, 8),
        "{:?}",
        answers.iter().map(|r| &r.text).collect::<Vec<_>>()
    );
    for answer in answers.iter().filter(|r| r.status == 429) {
        answer.assert_problem(429, "quota-exceeded");
        assert!(answer.header("retry-after").is_some());
    }
    let rows = w.broker.audit_rows().await;
    let allowed = rows
        .iter()
        .filter(|r| r["event"] == "decision" && r["outcome"] == "allowed")
        .count();
    assert_eq!(allowed, 2, "only the two issuances are recorded as allowed");
}
