//! GCP end to end, against the Google STS and IAM Credentials double: owner
//! allowed and non-owner denied, in credentials and federation mode; Google's
//! refusal mapped to a problem that names the binding to fix; audit rows; the
//! subject within 127 bytes for any stack name; and the federation-mode output
//! consumed by Google's own client library (google-auth from PyPI) running
//! `stackpass creds --format gcp-executable`.

use serde_json::{json, Value};

use crate::support::*;

const PROJECT_NUMBER: &str = "123456789012";
const POOL: &str = "stackpass";
const PROVIDER: &str = "broker";
const DEPLOYER: &str = "payments-deployer@acme-dev.iam.gserviceaccount.com";

fn gcp_config(google: &GoogleDouble) -> String {
    format!(
        r#"
[providers.gcp]
sts_endpoint = "{url}"
iam_credentials_endpoint = "{url}"
timeout = "10s"

[[policy.rules]]
name = "owners-deploy-gcp"
provider = "gcp"
tags = {{ environment = ["dev"] }}
target = "projects/{PROJECT_NUMBER}/locations/global/workloadIdentityPools/{POOL}/providers/{PROVIDER}/serviceAccounts/{{component}}-deployer@acme-{{environment}}.iam.gserviceaccount.com"
max_duration = "1h"
"#,
        url = google.url
    )
}

struct Gcp {
    backstage: BackstageDouble,
    google: GoogleDouble,
    broker: Broker,
    _sts: StsRecorder,
}

/// A broker trusted by the Google double's pool provider; `impersonation`
/// decides whether the pool may impersonate the payments deployer.
async fn gcp_world(impersonation: bool) -> Gcp {
    let backstage = BackstageDouble::start().await;
    let sts = StsRecorder::start(StsBehaviour::Succeed).await;
    let google = GoogleDouble::start().await;
    let mut options = BrokerOptions::new(&backstage, &sts.url);
    options.extra_config = gcp_config(&google);
    let broker = Broker::start(options).await;
    let provider = google.add_provider(PROJECT_NUMBER, POOL, PROVIDER, &broker.url);
    let principals: Vec<String> = if impersonation {
        vec![pool_principal(&provider, "stack:pulumi:acme/payments/dev")]
    } else {
        Vec::new()
    };
    let principals: Vec<&str> = principals.iter().map(String::as_str).collect();
    google.add_service_account(DEPLOYER, &principals);
    Gcp {
        backstage,
        google,
        broker,
        _sts: sts,
    }
}

fn gcp_request(stack: &str, mode: &str) -> Value {
    json!({ "stack": stack, "provider": "gcp", "mode": mode })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_gets_an_impersonated_token_and_a_non_owner_is_denied() {
    let world = gcp_world(true).await;
    let jane = world.backstage.user_token("user:default/jane");
    let response = world
        .broker
        .request_credentials(
            Some(&jane),
            gcp_request("pulumi:acme/payments/dev", "credentials"),
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text);
    let credentials = &response.body["credentials"];
    let issued = world.google.service_account_tokens();
    assert_eq!(issued.len(), 1);
    assert_eq!(credentials["access_token"], issued[0].access_token.as_str());
    assert_eq!(credentials["service_account"], DEPLOYER);
    assert_eq!(credentials["project_id"], "acme-dev");
    assert_eq!(
        response.body["duration_seconds"], 900,
        "GCP's default grant"
    );
    assert_eq!(
        issued[0].lifetime_seconds, 900,
        "the grant is the token's lifetime"
    );

    // What Google saw: the documented form, a token for the pool provider's
    // default audience, ES256, the stack as subject.
    let call = &world.google.sts_calls()[0];
    assert_eq!(
        call.form["audience"],
        format!("//iam.googleapis.com/projects/{PROJECT_NUMBER}/locations/global/workloadIdentityPools/{POOL}/providers/{PROVIDER}")
    );
    assert_eq!(
        call.form["subject_token_type"],
        "urn:ietf:params:oauth:token-type:jwt"
    );
    assert_eq!(
        call.form["scope"],
        "https://www.googleapis.com/auth/cloud-platform"
    );
    assert_eq!(call.subject_header().unwrap()["alg"], "ES256");
    let claims = call.subject_claims().unwrap();
    assert_eq!(claims["sub"], "stack:pulumi:acme/payments/dev");
    assert_eq!(claims["iss"], world.broker.url.as_str());

    // Audited like every issuance; the credential id is the service account.
    let rows = world.broker.audit_rows().await;
    let outcome = rows.last().unwrap();
    assert_eq!(outcome["event"], "issuance_outcome");
    assert_eq!(outcome["outcome"], "issued");
    assert_eq!(outcome["provider"], "gcp");
    assert_eq!(outcome["credential_id"], DEPLOYER);
    let token = credentials["access_token"].as_str().unwrap();
    assert!(!rows.iter().any(|r| r.to_string().contains(token)));

    let bob = world.backstage.user_token("user:default/bob");
    world
        .broker
        .request_credentials(
            Some(&bob),
            gcp_request("pulumi:acme/payments/dev", "credentials"),
        )
        .await
        .assert_problem(403, "denied");
    assert_eq!(
        world.google.sts_calls().len(),
        1,
        "a denial never reaches Google"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn googles_refusal_names_the_binding_to_fix_and_is_audited() {
    let world = gcp_world(false).await;
    let jane = world.backstage.user_token("user:default/jane");
    let response = world
        .broker
        .request_credentials(
            Some(&jane),
            gcp_request("pulumi:acme/payments/dev", "credentials"),
        )
        .await;
    response.assert_problem(502, "cloud-refused");
    assert_eq!(
        response.body["cloud_code"],
        "PERMISSION_DENIED/IAM_PERMISSION_DENIED"
    );
    let hint = response.body["hint"].as_str().unwrap();
    assert!(
        hint.contains(&format!("roles/iam.workloadIdentityUser on {DEPLOYER}")),
        "{hint}"
    );
    let rows = world.broker.audit_rows().await;
    assert_eq!(rows.last().unwrap()["outcome"], "failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federation_mode_hands_out_a_subject_token_google_accepts() {
    let world = gcp_world(true).await;
    let jane = world.backstage.user_token("user:default/jane");
    let response = world
        .broker
        .request_credentials(
            Some(&jane),
            gcp_request("pulumi:acme/payments/dev", "federation"),
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text);
    let credentials = &response.body["credentials"];
    assert_eq!(
        credentials["token_type"],
        "urn:ietf:params:oauth:token-type:jwt"
    );
    assert!(
        world.google.sts_calls().is_empty(),
        "the broker exchanged nothing"
    );
    assert_eq!(
        credentials["service_account_impersonation_url"],
        world.google.generate_access_token_url(DEPLOYER)
    );
    let subject_token = credentials["subject_token"].as_str().unwrap();
    let claims = jwt_part(subject_token, 1).unwrap();
    assert_eq!(claims["aud"], credentials["audience"]);
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        900,
        "the subject token lives as long as the grant"
    );

    // The caller exchanges it as Google's libraries would: STS accepts it.
    let exchanged = reqwest::Client::new()
        .post(world.google.sts_token_url())
        .form(&[
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("audience", credentials["sts_audience"].as_str().unwrap()),
            ("scope", "https://www.googleapis.com/auth/cloud-platform"),
            (
                "requested_token_type",
                "urn:ietf:params:oauth:token-type:access_token",
            ),
            ("subject_token", subject_token),
            ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(
        exchanged.status(),
        200,
        "{}",
        exchanged.text().await.unwrap()
    );

    // Audited: the subject token's id and what it is good for.
    let rows = world.broker.audit_rows().await;
    let events: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r["event"].as_str().unwrap(), r["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(
        events,
        [("decision", "allowed"), ("issuance_outcome", "issued")]
    );
    let detail: Value = serde_json::from_str(rows[1]["detail"].as_str().unwrap()).unwrap();
    assert_eq!(detail["mode"], "federation");
    assert_eq!(detail["audience"], credentials["audience"]);
    assert_eq!(rows[1]["credential_id"], claims["jti"]);
    assert!(!rows.iter().any(|r| r.to_string().contains(subject_token)));

    // Credentials mode needs a service account to cap the lifetime; a target
    // without one is federation-only.
    let bob = world.backstage.user_token("user:default/bob");
    world
        .broker
        .request_credentials(
            Some(&bob),
            gcp_request("pulumi:acme/payments/dev", "federation"),
        )
        .await
        .assert_problem(403, "denied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_stack_name_still_maps_to_a_subject_google_accepts() {
    let world = gcp_world(false).await;
    let provider = provider_resource_name(PROJECT_NUMBER, POOL, PROVIDER);
    let jane = world.backstage.user_token("user:default/jane");
    let response = world
        .broker
        .request_credentials(Some(&jane), gcp_request(LONG_STACK, "federation"))
        .await;
    assert_eq!(response.status, 200, "{}", response.text);
    let subject_token = response.body["credentials"]["subject_token"]
        .as_str()
        .unwrap();
    let subject = jwt_part(subject_token, 1).unwrap()["sub"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(subject.len() <= 127, "{subject}");
    assert!(
        subject.starts_with("stack:pulumi:acme/payments-platform-"),
        "{subject}"
    );

    // Google maps it and the pool may impersonate with that exact principal.
    world
        .google
        .allow_impersonation(DEPLOYER, &pool_principal(&provider, &subject));
    let response = world
        .broker
        .request_credentials(Some(&jane), gcp_request(LONG_STACK, "credentials"))
        .await;
    assert_eq!(response.status, 200, "{}", response.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn google_auth_runs_the_cli_as_its_executable_source() {
    let world = gcp_world(true).await;
    let jane = world.backstage.user_token("user:default/jane");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("credentials.json");
    let command = format!(
        "{} creds --stack pulumi:acme/payments/dev --provider gcp --format gcp-executable --server {}",
        stackpass_binary().display(),
        world.broker.url
    );
    // Google's external_account credential configuration, as `stackpass setup
    // gcp` prints it, pointed at the double.
    let credential_config = json!({
        "type": "external_account",
        "audience": format!("//iam.googleapis.com/{}", provider_resource_name(PROJECT_NUMBER, POOL, PROVIDER)),
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "token_url": world.google.sts_token_url(),
        "service_account_impersonation_url": world.google.generate_access_token_url(DEPLOYER),
        "credential_source": { "executable": { "command": command, "timeout_millis": 30000 } }
    });
    std::fs::write(&config, credential_config.to_string()).unwrap();
    let script = r#"
import json, sys
from google.auth import pluggable
from google.auth.transport.requests import Request
# The class ADC picks for an executable credential_source; loading through ADC
# would also look the project up at cloudresourcemanager.googleapis.com.
credentials = pluggable.Credentials.from_file(sys.argv[1], scopes=["https://www.googleapis.com/auth/cloud-platform"])
credentials.refresh(Request())
print(json.dumps({"token": credentials.token}))
"#;
    let output = tokio::process::Command::new(venv_python())
        .args(["-c", script])
        .arg(&config)
        .env("GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES", "1")
        .env("STACKPASS_TOKEN", &jane)
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let printed: Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    let issued = world.google.service_account_tokens();
    assert_eq!(
        issued.len(),
        1,
        "google-auth impersonated through the double"
    );
    assert_eq!(printed["token"], issued[0].access_token.as_str());
    assert_eq!(
        world.google.sts_calls()[0].subject_claims().unwrap()["iss"],
        world.broker.url.as_str()
    );

    // A refusal reaches google-auth as the documented failure document.
    let bob = world.backstage.user_token("user:default/bob");
    let output = tokio::process::Command::new(venv_python())
        .args(["-c", script])
        .arg(&config)
        .env("GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES", "1")
        .env("STACKPASS_TOKEN", &bob)
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("Denied by policy"),
        "{}",
        stderr(&output)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stackpass_run_gives_google_auth_a_url_sourced_account_it_refreshes_from() {
    let world = gcp_world(true).await;
    let jane = world.backstage.user_token("user:default/jane");
    // Google's own library, loading what `run` put in the environment.
    let script = r#"
import json, os
from google.auth import identity_pool
from google.auth.transport.requests import Request
path = os.environ["GOOGLE_APPLICATION_CREDENTIALS"]
assert os.environ["CLOUDSDK_AUTH_CREDENTIAL_FILE_OVERRIDE"] == path
assert "GOOGLE_OAUTH_ACCESS_TOKEN" not in os.environ
credentials = identity_pool.Credentials.from_file(path, scopes=["https://www.googleapis.com/auth/cloud-platform"])
credentials.refresh(Request())
first = credentials.token
credentials.refresh(Request())
print(json.dumps({"tokens": [first, credentials.token]}))
"#;
    let dir = tempfile::tempdir().unwrap();
    let output = stackpass(&[
        "run",
        "--stack",
        "pulumi:acme/payments/dev",
        "--provider",
        "gcp",
        "--server",
        &world.broker.url,
        "--",
    ])
    .arg(venv_python())
    .args(["-c", script])
    .env("STACKPASS_TOKEN", &jane)
    .env("STACKPASS_CACHE_DIR", dir.path())
    .env("GOOGLE_OAUTH_ACCESS_TOKEN", "someone-elses-token")
    .output()
    .unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        stdout(&output),
        stderr(&output)
    );
    let printed: Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    let issued = world.google.service_account_tokens();
    assert_eq!(
        issued.len(),
        2,
        "each refresh impersonated through the double"
    );
    assert_eq!(printed["tokens"][1], issued[1].access_token.as_str());
    // The library fetched the broker's subject token from `run`'s endpoint and
    // exchanged it at STS itself (once: its STS token was still valid).
    let calls = world.google.sts_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(
        calls[0].subject_claims().unwrap()["sub"],
        "stack:pulumi:acme/payments/dev"
    );
    assert!(!stderr(&output).contains(&jane));
}

/// An agent acting for jane gets her grant narrowed: the read-only scope of
/// its `[[policy.agents]]` entry in both Google calls, and the 15-minute cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_token_is_narrowed_to_its_entrys_scopes_and_cap() {
    let backstage = BackstageDouble::start().await;
    let sts = StsRecorder::start(StsBehaviour::Succeed).await;
    let google = GoogleDouble::start().await;
    let mut options = BrokerOptions::new(&backstage, &sts.url);
    options.extra_config = format!(
        "{}\n[[policy.agents]]\nname = \"readers\"\nagents = [\"agent:*\"]\nproviders = [\"gcp\"]\n\
         gcp_scopes = [\"https://www.googleapis.com/auth/cloud-platform.read-only\"]\n",
        gcp_config(&google)
    );
    let broker = Broker::start(options).await;
    let provider = google.add_provider(PROJECT_NUMBER, POOL, PROVIDER, &broker.url);
    let principal = pool_principal(&provider, "stack:pulumi:acme/payments/dev");
    google.add_service_account(DEPLOYER, &[principal.as_str()]);

    let mut claims = backstage.user_claims("user:default/jane");
    claims["act"] = json!({ "sub": "agent:reader" });
    let token = sign_jwt(
        &backstage.user_header(),
        &claims,
        Signer::Es256(&backstage.key),
    );
    let mut request = gcp_request("pulumi:acme/payments/dev", "credentials");
    request["duration_seconds"] = 3600.into();
    // An hour is beyond the entry's 15 minutes, and the entry denies beyond.
    broker
        .request_credentials(Some(&token), request)
        .await
        .assert_problem(403, "denied");
    let response = broker
        .request_credentials(
            Some(&token),
            gcp_request("pulumi:acme/payments/dev", "credentials"),
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text);
    let read_only = "https://www.googleapis.com/auth/cloud-platform.read-only";
    assert_eq!(google.sts_calls()[0].form["scope"], read_only);
    let generated = google.generate_calls();
    assert_eq!(generated[0].body["scope"], json!([read_only]));
    assert_eq!(response.body["duration_seconds"], 900);
}
