//! The MCP server at `/mcp`, driven by the official MCP Python SDK
//! (`mcp_client.py`): RFC 9728 discovery from the 401's `WWW-Authenticate`,
//! every tool over streamable HTTP with a token whose audience is the MCP
//! resource, the credentials it returns used with the real AWS CLI against
//! moto, and tokens for any other audience refused.

use std::process::Command;

use serde_json::{json, Value};

use crate::support::*;

struct McpWorld {
    backstage: BackstageDouble,
    idp: OidcIssuer,
    broker: Broker,
    moto: Moto,
    resource: String,
    _sts: StsRecorder,
}

async fn world() -> McpWorld {
    let moto = Moto::start().await;
    let sts = StsRecorder::start(StsBehaviour::Forward(moto.url.clone())).await;
    let backstage = BackstageDouble::start().await;
    let idp = OidcIssuer::start("", "/jwks", "idp-key", &["sub", "aud", "act"]).await;
    let mut options = BrokerOptions::new(&backstage, &sts.url);
    // The resource URL must be known before the broker starts, so the
    // identity provider can be configured to mint tokens for it.
    let resource = format!("{}/mcp", options.at_fixed_address());
    // Each issuer vouches for its own people (issuers may not overlap):
    // jane and alex sign in through the identity provider that mints tokens
    // for /mcp, bob and sam through Backstage.
    options.env.push((
        "STACKPASS_IDENTITY__ISSUERS".into(),
        format!(
            r#"[{{name="backstage",kind="backstage",url="{backstage}",subjects=["user:default/bob","user:default/sam"]}},{{name="idp",kind="oidc",issuer="{issuer}",audiences=["{resource}","stackpass-mcp"],algorithms=["RS256"],subjects=["user:default/jane","user:default/alex"]}}]"#,
            backstage = backstage.url,
            issuer = idp.issuer,
        ),
    ));
    options.extra_config = format!(
        r#"
[mcp]
enabled = true
audience = "stackpass-mcp"
{PROD_APPROVAL_RULE}
"#
    );
    let broker = Broker::start(options).await;
    McpWorld {
        backstage,
        idp,
        broker,
        moto,
        resource,
        _sts: sts,
    }
}

fn idp_token(w: &McpWorld, subject: &str, aud: Value) -> String {
    w.idp.sign(json!({ "sub": subject, "aud": aud }), 600)
}

async fn initialize(w: &McpWorld, token: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/mcp", w.broker.url))
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({
            "jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": { "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": { "name": "t", "version": "1" } }
        }))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_official_python_sdk_discovers_the_metadata_and_calls_every_tool() {
    let w = world().await;
    let token = idp_token(&w, "user:default/jane", json!(w.resource));
    // A Backstage token is genuine and its issuer trusted, but it was minted
    // for Backstage: it must not pass through to /mcp.
    let wrong = w.backstage.user_token("user:default/bob");
    // Async: the doubles answer from this test's runtime meanwhile.
    let output = tokio::process::Command::new(venv_python())
        .arg(workspace_root().join("tests/integration/mcp_client.py"))
        .env("MCP_URL", &w.resource)
        .env("MCP_TOKEN", &token)
        .env("MCP_WRONG_TOKEN", &wrong)
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "the MCP client failed:\n{}\nbroker log:\n{}",
        stderr(&output),
        w.broker.logs()
    );
    let report: Value = serde_json::from_str(&stdout(&output)).unwrap();

    // Discovery: 401 naming the metadata, which names the resource and the
    // issuer that mints tokens for it.
    let discovery = &report["discovery"];
    let metadata_url = format!("{}/.well-known/oauth-protected-resource/mcp", w.broker.url);
    assert_eq!(discovery["anonymous_status"], 401);
    assert_eq!(
        discovery["anonymous_www_authenticate"],
        format!("Bearer resource_metadata=\"{metadata_url}\"")
    );
    assert_eq!(discovery["metadata_url"], metadata_url.as_str());
    assert_eq!(discovery["metadata"]["resource"], w.resource.as_str());
    assert_eq!(
        discovery["metadata"]["authorization_servers"],
        json!([w.idp.issuer])
    );
    assert_eq!(
        discovery["metadata"]["bearer_methods_supported"],
        json!(["header"])
    );
    assert_eq!(discovery["wrong_audience_status"], 401);
    assert_eq!(discovery["wrong_audience_error"], "invalid_token");
    assert_eq!(discovery["wrong_audience_metadata"], metadata_url.as_str());
    assert!(
        report["wrong_audience_session"]
            .as_str()
            .unwrap()
            .starts_with("refused"),
        "{report}"
    );

    let session = &report["session"];
    assert_eq!(session["server"], "stackpass");
    let tools = session["tools"].as_object().unwrap();
    let mut names: Vec<&str> = tools.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "explain_decision",
            "get_credentials",
            "list_stacks",
            "request_access"
        ]
    );

    // list_stacks: per stack and provider, what the policy says.
    let listed = &session["list"];
    assert_eq!(listed["is_error"], false, "{listed}");
    let stacks = listed["structured"]["stacks"].as_array().unwrap();
    let outcome = |i: usize| stacks[i]["providers"][0]["outcome"].as_str().unwrap();
    assert_eq!(stacks[0]["stack"], "pulumi:acme/payments/dev");
    assert_eq!(outcome(0), "allowed");
    assert_eq!(outcome(1), "denied", "jane is not in team-search");
    assert_eq!(outcome(2), "unknown");
    assert_eq!(session["list_empty"]["is_error"], true);

    assert_eq!(session["explain"]["is_error"], false);
    assert_eq!(session["explain"]["structured"]["decision"], "allow");
    assert_eq!(
        session["explain"]["structured"]["role"],
        "arn:aws:iam::111111111111:role/payments-deployer"
    );
    assert_eq!(
        session["explain_prod"]["structured"]["decision"],
        "needs_approval"
    );

    // request_access: a pending access request for people to approve.
    let request = &session["request"];
    assert_eq!(request["is_error"], false, "{request}");
    let access = &request["structured"]["access_request"];
    assert_eq!(access["requester"], "user:default/jane");
    assert_eq!(access["state"], "pending");
    assert_eq!(access["reason"], "deploy the hotfix");

    // Tool errors: isError with the problem /v1 would answer.
    let denied = &session["denied"];
    assert_eq!(denied["is_error"], true);
    assert_eq!(denied["structured"]["type"], "urn:stackpass:problem:denied");
    assert!(denied["content"][0]["text"]
        .as_str()
        .unwrap()
        .contains("no rule grants aws credentials for terraform:acme/search-dev"));
    assert_eq!(session["bad_arguments"]["is_error"], true);
    assert!(session["bad_arguments"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .contains("break_glass"));

    // get_credentials: marked secret, and they work.
    let issued = &session["credentials"];
    assert_eq!(issued["is_error"], false, "{issued}");
    assert_eq!(issued["meta"]["stackpass/secret"], true);
    let summary = issued["content"][0]["text"].as_str().unwrap();
    let secret_block = &issued["content"][1];
    assert_eq!(secret_block["_meta"]["stackpass/secret"], true);
    assert_eq!(secret_block["annotations"]["audience"], json!(["user"]));
    let body = &issued["structured"];
    assert_eq!(body["requester"], "user:default/jane");
    let credentials = &body["credentials"];
    let secret = credentials["secret_access_key"].as_str().unwrap();
    assert!(!summary.contains(secret), "the summary holds no secret");
    let caller = Command::new(aws_cli())
        .args([
            "sts",
            "get-caller-identity",
            "--endpoint-url",
            &w.moto.url,
            "--output",
            "json",
        ])
        .env(
            "AWS_ACCESS_KEY_ID",
            credentials["access_key_id"].as_str().unwrap(),
        )
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env(
            "AWS_SESSION_TOKEN",
            credentials["session_token"].as_str().unwrap(),
        )
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env_remove("AWS_PROFILE")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .output()
        .unwrap();
    assert!(caller.status.success(), "{}", stderr(&caller));
    let identity: Value = serde_json::from_str(&stdout(&caller)).unwrap();
    assert!(identity["Arn"]
        .as_str()
        .unwrap()
        .contains("assumed-role/payments-deployer"));

    // Secrets never reach the log, even at debug (the test broker logs at debug).
    let logs = w.broker.logs();
    assert!(!logs.contains(secret));
    assert!(!logs.contains(credentials["session_token"].as_str().unwrap()));
    assert!(!logs.contains(&token), "nor does the bearer token");

    // The audit records the MCP issuance as any other.
    let rows = w.broker.audit_rows().await;
    let recorded = |event: &str, outcome: &str, stack: &str| {
        rows.iter().any(|r| {
            r["event"] == event
                && r["outcome"] == outcome
                && r["requester"] == "user:default/jane"
                && r["stack"] == stack
        })
    };
    assert!(recorded(
        "issuance_outcome",
        "issued",
        "pulumi:acme/payments/dev"
    ));
    assert!(recorded(
        "access_requested",
        "pending",
        "pulumi:acme/payments/prod"
    ));
    assert!(recorded("decision", "denied", "terraform:acme/search-dev"));
}

#[tokio::test]
async fn only_tokens_whose_every_audience_is_this_mcp_server_are_accepted() {
    let w = world().await;
    // The configured audience names the server as well as its URL.
    let accepted = [
        json!(w.resource),
        json!("stackpass-mcp"),
        json!([w.resource, "stackpass-mcp"]),
    ];
    for aud in accepted {
        let response = initialize(&w, &idp_token(&w, "user:default/jane", aud.clone())).await;
        assert_eq!(response.status(), 200, "{aud}");
    }
    // A token that another service (here Backstage) would also accept could be
    // replayed by it: refused, though the issuer and signature are good.
    let refused = [json!([w.resource, "backstage"]), json!("backstage")];
    for aud in refused {
        let response = initialize(&w, &idp_token(&w, "user:default/jane", aud.clone())).await;
        assert_eq!(response.status(), 401, "{aud}");
        let challenge = response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            challenge.starts_with("Bearer error=\"invalid_token\""),
            "{challenge}"
        );
        assert!(challenge.contains("resource_metadata=\""), "{challenge}");
    }
    // A forged token is refused the same way, before any audience is read.
    let forged = format!("{}x", idp_token(&w, "user:default/jane", json!(w.resource)));
    assert_eq!(initialize(&w, &forged).await.status(), 401);
    // A genuine Backstage token: verified, then refused for its audience alone.
    let backstage = w.backstage.user_token("user:default/bob");
    assert_eq!(initialize(&w, &backstage).await.status(), 401);
    assert!(w
        .broker
        .logs()
        .contains("MCP token refused: its audience is not this MCP server"));
    // /v1 is unchanged: the same token works there.
    let response = w
        .broker
        .request_credentials(
            Some(&backstage),
            credential_request("terraform:acme/search-dev"),
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text);
    // ...and a token minted for the MCP server is not taken by /v1.
    let for_mcp = idp_token(&w, "user:default/jane", json!(w.resource));
    w.broker
        .request_credentials(
            Some(&for_mcp),
            credential_request("pulumi:acme/payments/dev"),
        )
        .await
        .assert_problem(401, "token-for-another-resource");
    // A good token does not lift /v1's body limit.
    let oversized = reqwest::Client::new()
        .post(format!("{}/mcp", w.broker.url))
        .bearer_auth(idp_token(&w, "user:default/jane", json!(w.resource)))
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .body(format!("{{\"pad\":\"{}\"}}", "x".repeat(100_000)))
        .send()
        .await
        .unwrap();
    assert_eq!(oversized.status(), 413);
    // The metadata is public, also at the suffix-less path.
    let plain = w.broker.get("/.well-known/oauth-protected-resource").await;
    assert_eq!(plain.status, 200);
    assert_eq!(plain.body["resource"], w.resource.as_str());
}

#[tokio::test]
async fn the_example_agent_runs_a_command_with_credentials_from_mcp() {
    let w = world().await;
    let agent = workspace_root().join("examples/agent-mcp/agent.py");
    let aws = aws_cli();
    let run = |token: Option<String>| {
        let mut command = tokio::process::Command::new(venv_python());
        command
            .arg(&agent)
            .args(["--stack", "pulumi:acme/payments/dev", "--"])
            .arg(&aws)
            .args([
                "sts",
                "get-caller-identity",
                "--endpoint-url",
                &w.moto.url,
                "--output",
                "json",
            ])
            .env("STACKPASS_MCP_URL", &w.resource)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env_remove("STACKPASS_MCP_TOKEN_FILE");
        match token {
            Some(token) => command.env("STACKPASS_MCP_TOKEN", token),
            None => command.env_remove("STACKPASS_MCP_TOKEN"),
        };
        command.output()
    };
    let output = run(Some(idp_token(&w, "user:default/jane", json!(w.resource))))
        .await
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let identity: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert!(identity["Arn"]
        .as_str()
        .unwrap()
        .contains("assumed-role/payments-deployer"));
    assert!(
        stderr(&output).contains("stackpass: issued aws credentials for pulumi:acme/payments/dev")
    );
    assert!(!stderr(&output).contains("secret_access_key"));

    // Without a token: where to get one, from the metadata.
    let output = run(None).await.unwrap();
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains(&format!(
            "get a token whose audience is {} from: {}",
            w.resource, w.idp.issuer
        )),
        "{}",
        stderr(&output)
    );
}
