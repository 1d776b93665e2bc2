//! Azure end to end, against the Entra token endpoint double: owner allowed
//! and non-owner denied, in credentials and federation mode (the latter
//! through the CLI's `azure-oidc` output, exchanged as azurerm would); Entra's
//! exact-subject refusal mapped to a problem naming the credential to add;
//! RS256 only; audit rows; and key rotation with a token minted before it
//! still accepted until it expires.

use std::collections::HashMap;

use serde_json::{json, Value};

use crate::support::*;

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const CLIENT: &str = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
const SUBSCRIPTION: &str = "5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9";
/// What the rule's subject template renders to for the payments dev stack.
const PAYMENTS_DEV: &str = "team:team-payments:env:dev";

fn azure_config(entra: &EntraDouble) -> String {
    format!(
        r#"
[providers.azure]
authority_host = "{url}"
timeout = "10s"

[[policy.rules]]
name = "owners-deploy-azure"
provider = "azure"
tags = {{ environment = ["dev"] }}
target = "tenants/{TENANT}/applications/{CLIENT}/subscriptions/{SUBSCRIPTION}/subjects/team:{{owner}}:env:{{environment}}"
max_duration = "2h"
"#,
        url = entra.url
    )
}

struct Azure {
    backstage: BackstageDouble,
    entra: EntraDouble,
    broker: Broker,
    _sts: StsRecorder,
}

/// A broker whose issuer the Entra double's app trusts for `subjects`.
async fn azure_world(subjects: &[&str]) -> Azure {
    let backstage = BackstageDouble::start().await;
    let sts = StsRecorder::start(StsBehaviour::Succeed).await;
    let entra = EntraDouble::start().await;
    let mut options = BrokerOptions::new(&backstage, &sts.url);
    options.extra_config = azure_config(&entra);
    let broker = Broker::start(options).await;
    entra.add_application(TENANT, CLIENT);
    for (n, subject) in subjects.iter().enumerate() {
        entra
            .add_federated_credential(
                TENANT,
                CLIENT,
                FederatedIdentityCredential::new(&format!("stackpass-{n}"), &broker.url, subject),
            )
            .unwrap();
    }
    Azure {
        backstage,
        entra,
        broker,
        _sts: sts,
    }
}

fn azure_request(mode: &str, duration_seconds: u64) -> Value {
    json!({ "stack": "pulumi:acme/payments/dev", "provider": "azure", "mode": mode,
            "duration_seconds": duration_seconds })
}

/// Exchanges an assertion at the double as azurerm does with ARM_OIDC_TOKEN.
async fn exchange(entra: &EntraDouble, assertion: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(entra.token_url(TENANT))
        .form(&[
            ("client_id", CLIENT),
            ("grant_type", "client_credentials"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion),
            ("scope", "https://management.azure.com/.default"),
        ])
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_gets_an_entra_token_and_a_non_owner_is_denied() {
    let world = azure_world(&[PAYMENTS_DEV]).await;
    let jane = world.backstage.user_token("user:default/jane");
    let response = world
        .broker
        .request_credentials(Some(&jane), azure_request("credentials", 5400))
        .await;
    assert_eq!(response.status, 200, "{}", response.text);
    let credentials = &response.body["credentials"];
    let issued = world.entra.issued_tokens();
    assert_eq!(issued.len(), 1);
    assert_eq!(credentials["access_token"], issued[0].access_token.as_str());
    assert_eq!(credentials["tenant_id"], TENANT);
    assert_eq!(credentials["client_id"], CLIENT);
    assert_eq!(credentials["subscription_id"], SUBSCRIPTION);

    // What Entra saw: an RS256 assertion for its audience, with the rule's
    // coarse subject, not the stack.
    let call = &world.entra.calls()[0];
    assert_eq!(
        call.form["client_assertion_type"],
        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    );
    assert_eq!(call.assertion_header().unwrap()["alg"], "RS256");
    let claims = call.assertion_claims().unwrap();
    assert_eq!(claims["sub"], PAYMENTS_DEV);
    assert_eq!(claims["aud"], "api://AzureADTokenExchange");
    assert_eq!(claims["stackpass"]["stack"], "pulumi:acme/payments/dev");

    let rows = world.broker.audit_rows().await;
    let outcome = rows.last().unwrap();
    assert_eq!(
        (outcome["provider"].as_str(), outcome["outcome"].as_str()),
        (Some("azure"), Some("issued"))
    );
    assert_eq!(outcome["credential_id"], CLIENT);
    let token = credentials["access_token"].as_str().unwrap();
    assert!(!rows.iter().any(|r| r.to_string().contains(token)));

    let bob = world.backstage.user_token("user:default/bob");
    world
        .broker
        .request_credentials(Some(&bob), azure_request("credentials", 5400))
        .await
        .assert_problem(403, "denied");

    // Entra decides its tokens' lifetime (60-90 min): a shorter grant cannot
    // be honoured in credentials mode, and says what to do instead.
    let short = world
        .broker
        .request_credentials(Some(&jane), azure_request("credentials", 900))
        .await;
    short.assert_problem(422, "invalid-request");
    assert!(
        short.body["detail"]
            .as_str()
            .unwrap()
            .contains("federation"),
        "{}",
        short.text
    );
    assert_eq!(world.entra.calls().len(), 1, "neither reached Entra");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entras_exact_subject_refusal_names_the_credential_to_add() {
    let world = azure_world(&["team:someone-else:env:dev"]).await;
    let jane = world.backstage.user_token("user:default/jane");
    let response = world
        .broker
        .request_credentials(Some(&jane), azure_request("credentials", 5400))
        .await;
    response.assert_problem(502, "cloud-refused");
    assert_eq!(response.body["cloud_code"], "AADSTS700213");
    let hint = response.body["hint"].as_str().unwrap();
    assert!(
        hint.contains(&format!("{PAYMENTS_DEV:?}")) && hint.contains(CLIENT),
        "{hint}"
    );
    assert_eq!(
        world.broker.audit_rows().await.last().unwrap()["outcome"],
        "failed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_prints_azure_oidc_variables_that_entra_accepts() {
    let world = azure_world(&[PAYMENTS_DEV]).await;
    let jane = world.backstage.user_token("user:default/jane");
    let output = stackpass(&[
        "creds",
        "--stack",
        "pulumi:acme/payments/dev",
        "--provider",
        "azure",
        "--format",
        "azure-oidc",
        "--duration",
        "30m",
        "--server",
        &world.broker.url,
    ])
    .env("STACKPASS_TOKEN", &jane)
    .output()
    .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let exports: HashMap<String, String> = stdout(&output)
        .lines()
        .filter_map(|line| line.strip_prefix("export ")?.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    assert_eq!(exports["ARM_USE_OIDC"], "true");
    assert_eq!(exports["ARM_CLIENT_ID"], CLIENT);
    assert_eq!(exports["ARM_TENANT_ID"], TENANT);
    assert_eq!(exports["ARM_SUBSCRIPTION_ID"], SUBSCRIPTION);
    let assertion = &exports["ARM_OIDC_TOKEN"];
    let claims = jwt_part(assertion, 1).unwrap();
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        1800
    );
    assert!(
        world.entra.calls().is_empty(),
        "federation mode exchanges nothing"
    );

    let answer = exchange(&world.entra, assertion).await;
    assert_eq!(answer.status(), 200, "{}", answer.text().await.unwrap());

    let rows = world.broker.audit_rows().await;
    let detail: Value =
        serde_json::from_str(rows.last().unwrap()["detail"].as_str().unwrap()).unwrap();
    assert_eq!(detail["mode"], "federation");
    assert_eq!(detail["audience"], "api://AzureADTokenExchange");
    assert_eq!(detail["subject_token_id"], claims["jti"]);

    // A format that needs credentials mode refuses --mode federation before
    // anything is asked.
    let output = stackpass(&[
        "creds",
        "--stack",
        "pulumi:acme/payments/dev",
        "--provider",
        "azure",
        "--format",
        "env",
        "--mode",
        "federation",
        "--server",
        &world.broker.url,
    ])
    .env("STACKPASS_TOKEN", &jane)
    .output()
    .unwrap();
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("--format env prints credentials mode"),
        "{}",
        stderr(&output)
    );
}

/// An RS256 assertion the broker minted in federation mode, and its `kid`.
async fn assertion(world: &Azure, jane: &str) -> (String, String) {
    let response = world
        .broker
        .request_credentials(Some(jane), azure_request("federation", 1800))
        .await;
    assert_eq!(response.status, 200, "{}", response.text);
    let token = response.body["credentials"]["subject_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let kid = jwt_part(&token, 0).unwrap()["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    (token, kid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_key_rotation_entra_accepts_old_and_new_assertions() {
    let world = azure_world(&[PAYMENTS_DEV]).await;
    let jane = world.backstage.user_token("user:default/jane");
    let (before, old_kid) = assertion(&world, &jane).await;
    assert_eq!(exchange(&world.entra, &before).await.status(), 200);
    let fetches = world.entra.jwks_fetches(&world.broker.url);

    let keys = world.broker.dir.path().join("stackpass-keys");
    // The next key was published moments ago, with the broker: --force, as
    // keys.rs's tests do (the hour rotate otherwise waits is tested there).
    let rotated = stackpass(&["keys", "rotate", "--dir", keys.to_str().unwrap(), "--force"])
        .output()
        .unwrap();
    assert!(rotated.status.success(), "{}", stderr(&rotated));
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &world.broker.pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let mut after = None;
    for _ in 0..150 {
        let (token, kid) = assertion(&world, &jane).await;
        if kid != old_kid {
            after = Some(token);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let after = after.expect("the broker never signed with the rotated-in key");

    // The new key was published (as `next`) before it signed anything, so
    // Entra's cached key set already has it: no refetch.
    assert_eq!(exchange(&world.entra, &after).await.status(), 200);
    assert_eq!(world.entra.jwks_fetches(&world.broker.url), fetches);
    // The old key stays published until its tokens have expired.
    world.entra.set_jwks_cache_ttl(std::time::Duration::ZERO);
    assert_eq!(exchange(&world.entra, &before).await.status(), 200);
    assert!(
        world.entra.jwks_fetches(&world.broker.url) > fetches,
        "fetched afresh"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stackpass_run_serves_azurerm_its_oidc_request_url_and_a_token_file() {
    let world = azure_world(&[PAYMENTS_DEV]).await;
    let jane = world.backstage.user_token("user:default/jane");
    // What azurerm does with ARM_OIDC_REQUEST_URL/TOKEN (the GitHub Actions
    // ID-token protocol), then its client-credentials exchange; and what the
    // Azure Identity SDKs read from AZURE_FEDERATED_TOKEN_FILE.
    let script = r#"
import json, os, sys, urllib.error, urllib.parse, urllib.request
url = os.environ["ARM_OIDC_REQUEST_URL"] + "?audience=" + urllib.parse.quote("api://AzureADTokenExchange")
def fetch(authorization):
    request = urllib.request.Request(url, headers={"Authorization": authorization, "Accept": "application/json; api-version=2.0"})
    return json.load(urllib.request.urlopen(request))["value"]
try:
    fetch("Bearer wrong")
    sys.exit("a wrong request token was accepted")
except urllib.error.HTTPError as e:
    assert e.code == 401, e.code
assertion = fetch("Bearer " + os.environ["ARM_OIDC_REQUEST_TOKEN"])
assert open(os.environ["AZURE_FEDERATED_TOKEN_FILE"]).read() == assertion
assert "ARM_CLIENT_SECRET" not in os.environ
body = urllib.parse.urlencode({
    "client_id": os.environ["ARM_CLIENT_ID"],
    "scope": "https://management.azure.com/.default",
    "grant_type": "client_credentials",
    "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
    "client_assertion": assertion,
}).encode()
answer = json.load(urllib.request.urlopen(sys.argv[1], body))
print(json.dumps({"access_token": answer["access_token"], "subscription": os.environ["ARM_SUBSCRIPTION_ID"]}))
"#;
    let dir = tempfile::tempdir().unwrap();
    let output = stackpass(&[
        "run",
        "--stack",
        "pulumi:acme/payments/dev",
        "--provider",
        "azure",
        "--server",
        &world.broker.url,
        "--",
    ])
    .arg(venv_python())
    .args(["-c", script])
    .arg(world.entra.token_url(TENANT))
    .env("STACKPASS_TOKEN", &jane)
    .env("STACKPASS_CACHE_DIR", dir.path())
    .env("ARM_CLIENT_SECRET", "someone-elses-secret")
    .output()
    .unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        stdout(&output),
        stderr(&output)
    );
    let printed: Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    let issued = world.entra.issued_tokens();
    assert_eq!(issued.len(), 1);
    assert_eq!(printed["subscription"], SUBSCRIPTION);
    assert_eq!(
        world.entra.calls()[0].assertion_claims().unwrap()["sub"],
        PAYMENTS_DEV
    );
}
