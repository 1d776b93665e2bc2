//! `stackpass setup aws|gcp|azure` and `examples/cloud-trust/Pulumi.yaml` tell
//! operators the same cloud-side trust, and that trust matches the tokens the
//! broker really mints: the attribute mapping reads claims that are there, the
//! audiences are the ones in `aud`, the role trust allows what the token needs.
//! (The Pulumi CLI cannot be installed here, so the program itself is checked
//! against the broker, not run.)

use serde_json::{json, Value};

use crate::support::*;

const RULES: &str = r#"
[providers.gcp]
[providers.azure]

[[policy.rules]]
name = "owners-deploy-gcp"
provider = "gcp"
tags = { environment = ["dev"] }
target = "projects/123456789012/locations/global/workloadIdentityPools/stackpass/providers/broker/serviceAccounts/{component}-deployer@acme-dev.iam.gserviceaccount.com"

[[policy.rules]]
name = "owners-deploy-azure"
provider = "azure"
tags = { environment = ["dev"] }
target = "tenants/72f988bf-86f1-41af-91ab-2d7cd011db47/applications/0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d/subjects/team:{owner}:env:{environment}"
"#;

/// The example Pulumi program as JSON (PyYAML comes with the AWS CLI in the
/// test venv).
fn pulumi_program() -> Value {
    let path = workspace_root().join("examples/cloud-trust/Pulumi.yaml");
    let output = std::process::Command::new(venv_python())
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(&path)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    serde_json::from_str(&stdout(&output)).unwrap()
}

fn setup(broker: &Broker, provider: &str) -> String {
    let output = stackpass(&["setup", provider, "--config"])
        .arg(broker.config_path())
        .env("STACKPASS_SERVER__PUBLIC_URL", &broker.url)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    stdout(&output)
}

async fn federation_claims(broker: &Broker, token: &str, provider: &str) -> Value {
    let response = broker
        .request_credentials(
            Some(token),
            json!({ "stack": "pulumi:acme/payments/dev", "provider": provider, "mode": "federation" }),
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text);
    jwt_part(
        response.body["credentials"]["subject_token"]
            .as_str()
            .unwrap(),
        1,
    )
    .unwrap()
}

/// Follows `assertion.a.b` through a token's claims.
fn claim<'a>(claims: &'a Value, expression: &str) -> &'a Value {
    expression
        .trim_start_matches("assertion.")
        .split('.')
        .fold(claims, |value, key| &value[key])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_the_example_program_and_the_minted_tokens_agree() {
    let backstage = BackstageDouble::start().await;
    let sts = StsRecorder::start(StsBehaviour::Succeed).await;
    let mut options = BrokerOptions::new(&backstage, &sts.url);
    options.extra_config = RULES.into();
    let broker = Broker::start(options).await;
    let jane = backstage.user_token("user:default/jane");
    let program = pulumi_program();
    let resources = &program["resources"];

    // Without a public URL there is no issuer a cloud could reach.
    let output = stackpass(&["setup", "gcp", "--config"])
        .arg(broker.config_path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("server.public_url"),
        "{}",
        stderr(&output)
    );

    // GCP: the mapping setup prints is the program's, and every claim it maps
    // is in a real token (so no attribute is silently empty).
    let gcp = setup(&broker, "gcp");
    assert!(
        gcp.contains(&format!("--issuer-uri=\"{}\"", broker.url)),
        "{gcp}"
    );
    assert!(
        gcp.contains("add-iam-policy-binding payments-deployer@acme-dev.iam.gserviceaccount.com")
            || gcp.contains(
                "add-iam-policy-binding {component}-deployer@acme-dev.iam.gserviceaccount.com"
            ),
        "{gcp}"
    );
    let mapping = resources["stackpassProvider"]["properties"]["attributeMapping"]
        .as_object()
        .unwrap();
    let printed: Vec<String> = mapping
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap()))
        .collect();
    for pair in &printed {
        assert!(
            gcp.contains(pair.as_str()),
            "setup gcp lacks {pair}:\n{gcp}"
        );
    }
    let claims = federation_claims(&broker, &jane, "gcp").await;
    for (attribute, expression) in mapping {
        assert!(
            !claim(&claims, expression.as_str().unwrap()).is_null(),
            "{attribute} maps {expression}, which the token lacks: {claims}"
        );
    }
    assert!(
        resources["stackpassProvider"]["properties"]["oidc"]
            .get("allowedAudiences")
            .is_none(),
        "the default audience is the one stackpass uses"
    );

    // Azure: audience and exact subject.
    let azure = setup(&broker, "azure");
    let credential = &resources["paymentsProd"]["properties"];
    let claims = federation_claims(&broker, &jane, "azure").await;
    assert_eq!(credential["audiences"][0], claims["aud"]);
    assert!(
        azure.contains(&format!(r#""audiences":[{}]"#, claims["aud"])),
        "{azure}"
    );
    assert!(
        azure.contains(r#""subject":"team:{owner}:env:{environment}""#),
        "{azure}"
    );
    assert_eq!(claims["sub"], "team:team-payments:env:dev");

    // AWS: the role trust allows exactly what setup prints.
    let aws = setup(&broker, "aws");
    let policy: Value = serde_json::from_str(
        resources["paymentsDeployer"]["properties"]["assumeRolePolicy"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    for action in policy["Statement"][0]["Action"].as_array().unwrap() {
        assert!(
            aws.contains(&action.to_string()),
            "setup aws lacks {action}:\n{aws}"
        );
    }
    assert!(aws.contains(&format!("--url {}", broker.url)), "{aws}");
}
