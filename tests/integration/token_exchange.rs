//! `POST /oauth2/token` (RFC 8693 token exchange) and its RFC 8414 metadata,
//! against the real broker: person tokens from the Backstage double, agent
//! tokens from an OIDC issuer double configured with `agents = true`, and
//! moto's STS behind the recorder. Conformance (each malformed or refused
//! request gets its RFC error code and status, never a credential), an
//! owner's delegation yielding working AWS credentials, a non-owner's
//! yielding nothing, nested `act` chains in the subject token and audit log,
//! approvals, and an agent acting alone.

use std::process::Command;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};

use crate::support::*;

const GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
const AWS: &str = "urn:stackpass:params:oauth:token-type:aws-credentials";
const DEV: &str = "pulumi:acme/payments/dev";
const PROD: &str = "pulumi:acme/payments/prod";
const BOT: &str = "component:agents/deploy-bot";

struct Exchange {
    world: World,
    agents: OidcIssuer,
    moto_url: String,
    _moto: Moto,
}

impl Exchange {
    async fn start() -> Exchange {
        Exchange::start_with("").await
    }

    /// With `extra` appended to the broker's configuration.
    async fn start_with(extra: &str) -> Exchange {
        Exchange::start_with_catalog(default_entities(), extra).await
    }

    async fn start_with_catalog(entities: Vec<Value>, extra: &str) -> Exchange {
        let moto = Moto::start().await;
        let backstage = BackstageDouble::start_with(entities).await;
        let sts = StsRecorder::start(StsBehaviour::Forward(moto.url.clone())).await;
        let agents = OidcIssuer::start("", "/jwks", "agents-1", &[]).await;
        let mut options = BrokerOptions::new(&backstage, &sts.url);
        options.extra_config = format!(
            r#"
[[policy.rules]]
name = "owners-deploy-prod"
provider = "aws"
tags = {{ environment = ["prod"], aws-account = ["*"] }}
role = "arn:aws:iam::{{tags.aws-account}}:role/{{component}}-prod-deployer"
max_duration = "1h"
approval = {{ count = 1, approvers = ["group:default/security"], window = "1h", request_ttl = "1h" }}
{agents}{extra}
"#,
            agents = agents.agents_config()
        );
        let broker = Broker::start(options).await;
        Exchange {
            world: World::from_parts(backstage, sts, broker),
            agents,
            moto_url: moto.url.clone(),
            _moto: moto,
        }
    }

    fn person(&self, subject: &str) -> String {
        self.world.backstage.user_token(subject)
    }

    fn agent(&self, claims: Value) -> String {
        self.agents.sign(claims, 300)
    }

    fn bot(&self) -> String {
        self.agent(json!({ "sub": BOT, "aud": "stackpass" }))
    }

    /// A complete request from the bot for jane, with `changes` applied
    /// (`None` removes a parameter).
    fn form(&self, changes: &[(&str, Option<&str>)]) -> Vec<(String, String)> {
        let jane = self.person("user:default/jane");
        let bot = self.bot();
        let mut form: Vec<(String, String)> = [
            ("grant_type", GRANT),
            ("subject_token", jane.as_str()),
            ("subject_token_type", JWT),
            ("actor_token", bot.as_str()),
            ("actor_token_type", JWT),
            ("resource", DEV),
            ("requested_token_type", AWS),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (name, value) in changes {
            form.retain(|(n, _)| n != name);
            if let Some(value) = value {
                form.push((name.to_string(), value.to_string()));
            }
        }
        form
    }

    async fn post(&self, form: &[(String, String)]) -> TestResponse {
        let response = reqwest::Client::new()
            .post(format!("{}/oauth2/token", self.world.broker.url))
            .form(form)
            .send()
            .await
            .unwrap();
        TestResponse::from_response(response).await
    }
}

/// An RFC 6749 section 5.2 error: status, `error`, an ASCII description,
/// `no-store`, and no token in the body.
#[track_caller]
fn assert_oauth_error(response: &TestResponse, status: u16, error: &str) {
    assert_eq!(response.status, status, "{}", response.text);
    assert_eq!(response.body["error"], error, "{}", response.text);
    let description = response.body["error_description"].as_str().unwrap();
    assert!(!description.is_empty());
    assert!(
        description
            .chars()
            .all(|c| (' '..='~').contains(&c) && c != '"' && c != '\\'),
        "{description}"
    );
    assert_eq!(response.header("cache-control"), Some("no-store"));
    assert!(response.body.get("access_token").is_none());
}

/// What a conformance case changes in the form, and the answer it expects.
type Case<'a> = (&'a str, Vec<(&'a str, Option<&'a str>)>, u16, &'a str);

fn decode_unverified(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn detail(row: &Value) -> Value {
    row["detail"]
        .as_str()
        .map(|d| serde_json::from_str(d).unwrap())
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn the_metadata_document_advertises_the_exchange() {
    let x = Exchange::start().await;
    let response = x
        .world
        .broker
        .get("/.well-known/oauth-authorization-server")
        .await;
    assert_eq!(response.status, 200, "{}", response.text);
    let url = &x.world.broker.url;
    let document = &response.body;
    assert_eq!(document["issuer"], *url);
    assert_eq!(document["token_endpoint"], format!("{url}/oauth2/token"));
    assert_eq!(document["grant_types_supported"], json!([GRANT]));
    assert_eq!(
        document["token_endpoint_auth_methods_supported"],
        json!(["none"])
    );
    assert_eq!(document["scopes_supported"], json!(["provider:aws"]));
    assert_eq!(
        document["token_exchange_requested_token_types_supported"],
        json!([AWS, JWT])
    );
    assert!(document["token_exchange_subject_token_types_supported"]
        .as_array()
        .unwrap()
        .contains(&json!(JWT)));
    // The same issuer as the OIDC discovery document.
    let discovery = x
        .world
        .broker
        .get("/.well-known/openid-configuration")
        .await;
    assert_eq!(discovery.body["issuer"], document["issuer"]);
}

#[tokio::test]
async fn malformed_and_refused_requests_get_the_rfc_errors() {
    let x = Exchange::start().await;
    let now = now();
    let expired_bot = x.agent(json!({ "sub": BOT, "aud": "stackpass", "iat": now - 900, "nbf": now - 900, "exp": now - 600 }));
    let mut expired_jane = x.world.backstage.user_claims("user:default/jane");
    expired_jane["iat"] = json!(now - 7200);
    expired_jane["exp"] = json!(now - 3600);
    let expired_jane = sign_jwt(
        &x.world.backstage.user_header(),
        &expired_jane,
        Signer::Es256(&x.world.backstage.key),
    );
    let stranger = OidcIssuer::start("", "/jwks", "stranger-1", &[]).await;
    let untrusted_bot = stranger.sign(json!({ "sub": BOT, "aud": "stackpass" }), 300);
    let bob = x.person("user:default/bob");
    let cases: Vec<Case<'_>> = vec![
        (
            "no grant_type",
            vec![("grant_type", None)],
            400,
            "invalid_request",
        ),
        (
            "another grant",
            vec![("grant_type", Some("client_credentials"))],
            400,
            "unsupported_grant_type",
        ),
        (
            "no subject_token",
            vec![("subject_token", None)],
            400,
            "invalid_request",
        ),
        (
            "saml subject",
            vec![(
                "subject_token_type",
                Some("urn:ietf:params:oauth:token-type:saml2"),
            )],
            400,
            "invalid_request",
        ),
        (
            "actor without type",
            vec![("actor_token_type", None)],
            400,
            "invalid_request",
        ),
        (
            "no resource",
            vec![("resource", None)],
            400,
            "invalid_request",
        ),
        (
            "not a stack",
            vec![("resource", Some("https://example.com/api"))],
            400,
            "invalid_target",
        ),
        (
            "unknown stack",
            vec![("resource", Some("pulumi:acme/nothing/dev"))],
            400,
            "invalid_target",
        ),
        (
            "unknown token type",
            vec![(
                "requested_token_type",
                Some("urn:stackpass:params:oauth:token-type:oracle-credentials"),
            )],
            400,
            "invalid_request",
        ),
        (
            "unknown scope",
            vec![("scope", Some("admin"))],
            400,
            "invalid_scope",
        ),
        (
            "unconfigured provider",
            vec![("scope", Some("provider:gcp"))],
            400,
            "invalid_scope",
        ),
        (
            "expired actor",
            vec![("actor_token", Some(&expired_bot))],
            400,
            "invalid_request",
        ),
        (
            "expired subject",
            vec![("subject_token", Some(&expired_jane))],
            400,
            "invalid_request",
        ),
        (
            "actor from an untrusted issuer",
            vec![("actor_token", Some(&untrusted_bot))],
            400,
            "invalid_request",
        ),
        // A person's token as the actor: Backstage vouches for people, not agents.
        (
            "a human actor",
            vec![("actor_token", Some(&bob))],
            400,
            "invalid_request",
        ),
        // The person alone: this endpoint issues to agents only.
        (
            "no actor",
            vec![("actor_token", None), ("actor_token_type", None)],
            400,
            "unauthorized_client",
        ),
        (
            "a client secret",
            vec![("client_secret", Some("hunter2"))],
            401,
            "invalid_client",
        ),
    ];
    for (what, changes, status, error) in cases {
        let response = x.post(&x.form(&changes)).await;
        assert_eq!(response.status, status, "{what}: {}", response.text);
        assert_oauth_error(&response, status, error);
    }
    // JSON is not the form RFC 6749 asks for; an Authorization header is a
    // client authentication this endpoint does not take.
    let client = reqwest::Client::new();
    let url = format!("{}/oauth2/token", x.world.broker.url);
    let json = client
        .post(&url)
        .json(&json!({ "grant_type": GRANT }))
        .send()
        .await
        .unwrap();
    assert_oauth_error(
        &TestResponse::from_response(json).await,
        400,
        "invalid_request",
    );
    let basic = client
        .post(&url)
        .basic_auth("agent", Some("secret"))
        .form(&x.form(&[]))
        .send()
        .await
        .unwrap();
    let basic = TestResponse::from_response(basic).await;
    assert_oauth_error(&basic, 401, "invalid_client");
    assert_eq!(
        basic.header("www-authenticate"),
        Some("Basic realm=\"stackpass\"")
    );
    let bearer = client
        .post(&url)
        .bearer_auth(x.person("user:default/jane"))
        .form(&x.form(&[]))
        .send()
        .await
        .unwrap();
    let bearer = TestResponse::from_response(bearer).await;
    assert_oauth_error(&bearer, 401, "invalid_client");
    assert_eq!(
        bearer.header("www-authenticate"),
        Some("Bearer realm=\"stackpass\"")
    );
    // Nothing was asked of STS, and no refusal reached the log with a token in it.
    assert!(x.world.sts.calls().is_empty());
    assert!(!x.world.broker.logs().contains(&expired_bot));
    assert!(!x.world.broker.logs().contains(&bob));
}

// Blocking child processes below must not starve the doubles served on this runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owners_delegation_yields_working_aws_credentials_naming_both() {
    let x = Exchange::start().await;
    let response = x.post(&x.form(&[("duration_seconds", Some("900"))])).await;
    assert_eq!(response.status, 200, "{}", response.text);
    assert_eq!(response.header("cache-control"), Some("no-store"));
    let body = &response.body;
    assert_eq!(body["issued_token_type"], AWS);
    assert_eq!(body["token_type"], "N_A");
    assert_eq!(body["scope"], "provider:aws");
    let expires_in = body["expires_in"].as_u64().unwrap();
    assert!((850..=900).contains(&expires_in), "{expires_in}");
    assert_eq!(body["stackpass"]["requester"], "user:default/jane");
    assert_eq!(body["stackpass"]["actor"], BOT);
    assert!(body["stackpass"]["fields"]
        .get("secret_access_key")
        .is_none());

    // The access token is a credential_process document: the AWS CLI uses it.
    let document: Value = serde_json::from_str(body["access_token"].as_str().unwrap()).unwrap();
    assert_eq!(document["Version"], 1);
    let dir = tempfile::tempdir().unwrap();
    let credential_file = dir.path().join("credential.json");
    std::fs::write(&credential_file, document.to_string()).unwrap();
    let config = dir.path().join("aws-config");
    std::fs::write(
        &config,
        format!(
            "[profile agent]\nregion = us-east-1\ncredential_process = cat {}\n",
            credential_file.display()
        ),
    )
    .unwrap();
    let output = Command::new(aws_cli())
        .args(["sts", "get-caller-identity", "--profile", "agent"])
        .args(["--endpoint-url", &x.moto_url, "--output", "json"])
        .env("AWS_CONFIG_FILE", &config)
        .env("AWS_SHARED_CREDENTIALS_FILE", dir.path().join("none"))
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .output()
        .unwrap();
    assert!(output.status.success(), "aws failed: {}", stderr(&output));
    let identity: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        identity["Arn"],
        "arn:aws:sts::111111111111:assumed-role/payments-deployer/user.default.jane"
    );

    // The subject token STS saw: verified with the broker's published key,
    // the person as requester and source identity, the agent in act and tags.
    let calls = x.world.sts.calls();
    assert_eq!(calls.len(), 1);
    let token = &calls[0].form["WebIdentityToken"];
    let jwks = x.world.broker.get("/.well-known/jwks.json").await.body;
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwks["keys"][0].clone()).unwrap();
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&["sts.amazonaws.com"]);
    validation.set_issuer(&[x.world.broker.url.as_str()]);
    let claims: Value =
        jsonwebtoken::decode(token, &DecodingKey::from_jwk(&jwk).unwrap(), &validation)
            .unwrap()
            .claims;
    assert_eq!(claims["sub"], format!("stack:{DEV}"));
    assert_eq!(claims["act"], json!({ "sub": BOT }));
    assert_eq!(claims["stackpass"]["requester"], "user:default/jane");
    assert_eq!(claims["stackpass"]["requester_kind"], "agent");
    assert_eq!(claims["stackpass"]["actor"], BOT);
    assert_eq!(
        claims["https://aws.amazon.com/source_identity"],
        "user.default.jane"
    );
    let tags = &claims["https://aws.amazon.com/tags"]["principal_tags"];
    assert_eq!(tags["actor"], json!([BOT]));
    assert_eq!(tags["requester"], json!(["user:default/jane"]));

    // The audit log names both, and never the credential.
    let rows = x.world.broker.audit_rows().await;
    let issued = rows.iter().find(|r| r["outcome"] == "issued").unwrap();
    assert_eq!(issued["requester"], "user:default/jane");
    assert_eq!(issued["requester_kind"], "agent");
    assert_eq!(issued["actor"], BOT);
    let dump = serde_json::to_string(&rows).unwrap();
    assert!(!dump.contains(document["SecretAccessKey"].as_str().unwrap()));
    assert!(!x
        .world
        .broker
        .logs()
        .contains(document["SecretAccessKey"].as_str().unwrap()));
}

#[tokio::test]
async fn an_agent_acting_for_a_non_owner_gets_nothing() {
    let x = Exchange::start().await;
    let bob = x.person("user:default/bob");
    let response = x.post(&x.form(&[("subject_token", Some(&bob))])).await;
    assert_oauth_error(&response, 400, "invalid_target");
    assert!(x.world.sts.calls().is_empty());
    let rows = x.world.broker.audit_rows().await;
    let denied = rows.last().unwrap();
    assert_eq!(denied["outcome"], "denied");
    assert_eq!(denied["requester"], "user:default/bob");
    assert_eq!(denied["actor"], BOT);
    // Bob learns nothing about the payments stack's rules.
    assert!(
        !response.text.contains("team-payments"),
        "{}",
        response.text
    );
}

#[tokio::test]
async fn a_nested_act_chain_is_minted_and_recorded_outermost_first() {
    let x = Exchange::start().await;
    let bot = x.agent(json!({
        "sub": BOT,
        "aud": "stackpass",
        "act": { "sub": "component:agents/planner" },
    }));
    let response = x.post(&x.form(&[("actor_token", Some(&bot))])).await;
    assert_eq!(response.status, 200, "{}", response.text);
    let token = &x.world.sts.calls()[0].form["WebIdentityToken"];
    let claims = decode_unverified(token);
    assert_eq!(
        claims["act"],
        json!({ "sub": BOT, "act": { "sub": "component:agents/planner" } })
    );
    assert_eq!(
        claims["stackpass"]["actor_chain"],
        json!([BOT, "component:agents/planner"])
    );
    let rows = x.world.broker.audit_rows().await;
    let issued = rows.iter().find(|r| r["outcome"] == "issued").unwrap();
    assert_eq!(issued["actor"], BOT);
    assert_eq!(
        detail(issued)["actor_chain"],
        json!([BOT, "component:agents/planner"])
    );
    // An agent cannot put the person in its own chain.
    let loop_bot = x.agent(json!({
        "sub": BOT,
        "aud": "stackpass",
        "act": { "sub": "user:default/jane" },
    }));
    let response = x.post(&x.form(&[("actor_token", Some(&loop_bot))])).await;
    assert_oauth_error(&response, 400, "invalid_request");
}

#[tokio::test]
async fn a_delegation_that_needs_approval_tells_the_agent_who_must_approve() {
    let x = Exchange::start().await;
    let response = x.post(&x.form(&[("resource", Some(PROD))])).await;
    assert_oauth_error(&response, 400, "authorization_pending");
    let id = response.body["access_request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The same request again names the same access request.
    let again = x.post(&x.form(&[("resource", Some(PROD))])).await;
    assert_eq!(again.body["access_request_id"], id.as_str());
    assert!(x.world.sts.calls().is_empty());
    // Jane sees it as hers, with the agent that asked.
    let list = reqwest::Client::new()
        .get(format!("{}/v1/access-requests", x.world.broker.url))
        .bearer_auth(x.person("user:default/jane"))
        .send()
        .await
        .unwrap();
    let list = TestResponse::from_response(list).await;
    assert!(list.text.contains(&id), "{}", list.text);
}

#[tokio::test]
async fn an_agent_alone_gets_what_rules_grant_agents_directly() {
    // The bot is a catalog component in the agent-fleet group, and one rule
    // grants that group's agents a reader role on dev stacks they do not own.
    let mut bot = component("deploy-bot", "platform");
    bot["metadata"]["namespace"] = json!("agents");
    bot["relations"]
        .as_array_mut()
        .unwrap()
        .push(json!({ "type": "memberOf", "targetRef": "group:default/agent-fleet" }));
    let mut entities = default_entities();
    entities.push(group("agent-fleet", &[]));
    entities.push(bot);
    let x = Exchange::start_with_catalog(
        entities,
        r#"
[[policy.rules]]
name = "agent-fleet-reads-dev"
provider = "aws"
requester_kinds = ["agent"]
require_owner = false
groups = ["group:default/agent-fleet"]
tags = { environment = ["dev"], aws-account = ["*"] }
role = "arn:aws:iam::{tags.aws-account}:role/agent-fleet-reader"
max_duration = "15m"
"#,
    )
    .await;
    let alone = |stack: &'static str| {
        x.form(&[
            ("subject_token", Some(&x.bot())),
            ("actor_token", None),
            ("actor_token_type", None),
            ("resource", Some(stack)),
        ])
    };
    let response = x.post(&alone("terraform:acme/search-dev")).await;
    assert_eq!(response.status, 200, "{}", response.text);
    assert_eq!(response.body["stackpass"]["requester"], BOT);
    assert_eq!(response.body["stackpass"]["actor"], BOT);
    assert_eq!(
        response.body["stackpass"]["role"],
        "arn:aws:iam::222222222222:role/agent-fleet-reader"
    );
    let claims = decode_unverified(&x.world.sts.calls()[0].form["WebIdentityToken"]);
    assert_eq!(claims["act"], json!({ "sub": BOT }));
    assert_eq!(claims["stackpass"]["requester_kind"], "agent");
    let rows = x.world.broker.audit_rows().await;
    let issued = rows.iter().find(|r| r["outcome"] == "issued").unwrap();
    assert_eq!(issued["requester"], BOT);
    assert_eq!(issued["requester_kind"], "agent");
    assert_eq!(issued["actor"], BOT);
    // Prod matches no rule for it: nothing.
    let response = x.post(&alone(PROD)).await;
    assert_oauth_error(&response, 400, "invalid_target");
    assert_eq!(x.world.sts.calls().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcp_answers_a_bearer_token_and_federation_a_jwt_for_the_pool() {
    const GCP: &str = "urn:stackpass:params:oauth:token-type:gcp-access-token";
    const DEPLOYER: &str = "payments-deployer@acme-dev.iam.gserviceaccount.com";
    let google = GoogleDouble::start().await;
    let x = Exchange::start_with(&format!(
        r#"
[providers.gcp]
sts_endpoint = "{url}"
iam_credentials_endpoint = "{url}"
timeout = "10s"

[[policy.rules]]
name = "owners-deploy-gcp"
provider = "gcp"
tags = {{ environment = ["dev"] }}
target = "projects/123456789012/locations/global/workloadIdentityPools/stackpass/providers/broker/serviceAccounts/{{component}}-deployer@acme-{{environment}}.iam.gserviceaccount.com"
max_duration = "1h"
"#,
        url = google.url
    ))
    .await;
    let provider = google.add_provider("123456789012", "stackpass", "broker", &x.world.broker.url);
    google.add_service_account(
        DEPLOYER,
        &[&pool_principal(&provider, &format!("stack:{DEV}"))],
    );

    let response = x
        .post(&x.form(&[("requested_token_type", Some(GCP))]))
        .await;
    assert_eq!(response.status, 200, "{}", response.text);
    assert_eq!(response.body["issued_token_type"], GCP);
    assert_eq!(response.body["token_type"], "Bearer");
    assert_eq!(response.body["scope"], "provider:gcp");
    assert!(response.body["access_token"]
        .as_str()
        .is_some_and(|t| !t.is_empty()));
    assert_eq!(
        response.body["stackpass"]["fields"]["service_account"],
        DEPLOYER
    );

    // Federation: the broker's subject token for the pool, with the agent in act.
    let response = x
        .post(&x.form(&[
            ("requested_token_type", Some(JWT)),
            ("scope", Some("provider:gcp")),
        ]))
        .await;
    assert_eq!(response.status, 200, "{}", response.text);
    assert_eq!(response.body["issued_token_type"], JWT);
    assert_eq!(response.body["token_type"], "N_A");
    let claims = decode_unverified(response.body["access_token"].as_str().unwrap());
    assert_eq!(
        claims["aud"],
        format!("https://iam.googleapis.com/{provider}")
    );
    assert_eq!(claims["act"], json!({ "sub": BOT }));
    assert_eq!(claims["stackpass"]["requester"], "user:default/jane");
    // The metadata now offers both providers.
    let document = x
        .world
        .broker
        .get("/.well-known/oauth-authorization-server")
        .await
        .body;
    assert_eq!(
        document["scopes_supported"],
        json!(["provider:aws", "provider:gcp"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_agent_exchanges_and_runs_a_command_with_the_credentials() {
    let x = Exchange::start().await;
    let script = workspace_root().join("examples/agent-token-exchange/agent.py");
    let run = |person: &str| {
        std::process::Command::new(venv_python())
            .arg(&script)
            .args(["--stack", DEV, "--", "aws", "sts", "get-caller-identity"])
            .args([
                "--endpoint-url",
                &x.moto_url,
                "--query",
                "Arn",
                "--output",
                "text",
            ])
            .env("STACKPASS_URL", &x.world.broker.url)
            .env("PERSON_TOKEN", x.person(person))
            .env("AGENT_TOKEN", x.bot())
            .env("AWS_REGION", "us-east-1")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("PATH", path_with_venv())
            .env_remove("AWS_PROFILE")
            .output()
            .unwrap()
    };
    let output = run("user:default/jane");
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        stdout(&output).trim(),
        "arn:aws:sts::111111111111:assumed-role/payments-deployer/user.default.jane"
    );
    assert!(stderr(&output).contains(&format!("agent: {BOT} acting for user:default/jane")));
    // A person who does not own the stack: the RFC error, with a hint.
    let refused = run("user:default/bob");
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("error: invalid_target"),
        "{}",
        stderr(&refused)
    );
}
