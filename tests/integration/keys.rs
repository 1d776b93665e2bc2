//! stackpass's own signing keys, end to end: the key set a development broker
//! creates (ES256 and RS256, current and next), rotation with overlap while the
//! broker runs (picked up on SIGHUP, or by itself when the manifest changes,
//! by every replica sharing the directory), a broken key set that never
//! replaces working keys, the upgrade from a single `issuer.signing_key`, and
//! an independent OIDC client (PyJWT) verifying ES256 and RS256 subject tokens
//! from nothing but the broker's discovery document.
//!
//! Subject tokens come out of the broker the real way: federation mode hands
//! the caller the token it minted. testcloud (the test-only provider) is set to
//! ask for RS256, AWS asks for ES256.
#![cfg(feature = "testcloud")]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

const TESTCLOUD_RS256: &str = r#"
[providers.testcloud]
audience = "testcloud-keys"
signing_algorithm = "RS256"

[[policy.rules]]
name = "owners-use-testcloud"
provider = "testcloud"
tags = { environment = ["dev"] }
role = "project/{component}-{environment}"
max_duration = "30m"
"#;

const TESTCLOUD_AUDIENCE: &str = "testcloud-keys";
const AWS_AUDIENCE: &str = "sts.amazonaws.com";

async fn broker(backstage: &BackstageDouble, env: &[(&str, &str)]) -> Broker {
    let mut options = BrokerOptions::new(backstage, "http://127.0.0.1:9");
    options.extra_config = TESTCLOUD_RS256.into();
    options.env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Broker::start(options).await
}

/// The key set a development broker created beside its config.
fn key_dir(broker: &Broker) -> PathBuf {
    broker.dir.path().join("stackpass-keys")
}

/// A subject token minted by the broker, from a federation-mode issuance:
/// ES256 for `aws`, RS256 for `testcloud` (as configured above).
async fn subject_token(broker: &Broker, identity: &str, provider: &str) -> String {
    let response = broker
        .request_credentials(
            Some(identity),
            json!({ "stack": "pulumi:acme/payments/dev", "provider": provider, "mode": "federation" }),
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text);
    response.body["credentials"]["subject_token"]
        .as_str()
        .expect("federation mode hands out the subject token")
        .to_owned()
}

/// The token's header `(alg, kid)`.
fn header(token: &str) -> (String, String) {
    let header = jsonwebtoken::decode_header(token).unwrap();
    (format!("{:?}", header.alg), header.kid.expect("a kid"))
}

/// One line of `stackpass keys list`.
#[derive(Debug, Clone, PartialEq)]
struct Listed {
    kid: String,
    algorithm: String,
    state: String,
    retire_after: String,
}

fn list_keys(dir: &Path) -> Vec<Listed> {
    let output = stackpass(&["keys", "list", "--dir", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    stdout(&output)
        .lines()
        .skip(1)
        .map(|line| {
            let mut fields = line.split_whitespace();
            let mut next = || fields.next().unwrap_or_default().to_owned();
            Listed {
                kid: next(),
                algorithm: next(),
                state: next(),
                retire_after: next(),
            }
        })
        .collect()
}

fn kid_of(listed: &[Listed], algorithm: &str, state: &str) -> String {
    let found: Vec<_> = listed
        .iter()
        .filter(|k| k.algorithm == algorithm && k.state == state)
        .collect();
    assert_eq!(found.len(), 1, "one {state} {algorithm} key: {listed:?}");
    found[0].kid.clone()
}

/// `(alg, kid)` of every key the broker's JWKS publishes, checking each is a
/// signing key with its algorithm named.
async fn published(broker: &Broker) -> Vec<(String, String)> {
    let jwks = broker.get("/.well-known/jwks.json").await;
    assert_eq!(jwks.status, 200, "{}", jwks.text);
    let mut keys: Vec<_> = jwks.body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            assert_eq!(k["use"], "sig", "{k}");
            assert!(k.get("d").is_none(), "no private member: {k}");
            (
                k["alg"].as_str().unwrap().to_owned(),
                k["kid"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    keys.sort();
    keys
}

/// Verifies `token` with the JWKS key its kid names, as a relying party does.
async fn verifies_with_jwks(broker: &Broker, token: &str, audience: &str) -> bool {
    let jwks: jsonwebtoken::jwk::JwkSet =
        serde_json::from_value(broker.get("/.well-known/jwks.json").await.body).unwrap();
    let (_, kid) = header(token);
    let Some(jwk) = jwks.find(&kid) else {
        return false;
    };
    let algorithm = jsonwebtoken::decode_header(token).unwrap().alg;
    let mut validation = jsonwebtoken::Validation::new(algorithm);
    validation.set_audience(&[audience]);
    validation.set_issuer(&[broker.url.as_str()]);
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    jsonwebtoken::decode::<Value>(token, &key, &validation).is_ok()
}

/// `keys rotate --force`: these tests rotate keys published moments ago;
/// the hour `keys rotate` otherwise waits is checked on its own.
fn rotate(dir: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["keys", "rotate", "--dir", dir.to_str().unwrap(), "--force"];
    args.extend_from_slice(extra);
    stackpass(&args).output().unwrap()
}

fn hang_up(broker: &Broker) {
    let status = Command::new("kill")
        .args(["-HUP", &broker.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Mints with `provider` until the token's kid is `kid` (at most 15 s).
async fn until_signed_by(broker: &Broker, identity: &str, provider: &str, kid: &str) -> String {
    for _ in 0..150 {
        let token = subject_token(broker, identity, provider).await;
        if header(&token).1 == kid {
            return token;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{provider} tokens were never signed by {kid}; broker log:\n{}",
        broker.logs()
    );
}

// Blocking child processes below must not starve the doubles served on this runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_development_broker_publishes_current_and_next_keys_of_both_algorithms() {
    let backstage = BackstageDouble::start().await;
    let broker = broker(&backstage, &[]).await;
    let jane = backstage.user_token("user:default/jane");

    let discovery = broker.get("/.well-known/openid-configuration").await;
    assert_eq!(
        discovery.body["id_token_signing_alg_values_supported"],
        json!(["ES256", "RS256"]),
        "{}",
        discovery.text
    );

    // create_key_if_missing made a full key set: a current and a next key per
    // algorithm, all published, each file private.
    let dir = key_dir(&broker);
    let listed = list_keys(&dir);
    assert_eq!(listed.len(), 4, "{listed:?}");
    let mut expected: Vec<_> = listed
        .iter()
        .map(|k| (k.algorithm.clone(), k.kid.clone()))
        .collect();
    expected.sort();
    assert_eq!(published(&broker).await, expected);
    for key in &listed {
        assert!(["current", "next"].contains(&key.state.as_str()), "{key:?}");
        assert_eq!(key.retire_after, "-");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let file = dir.join(format!("{}-{}.pem", key.algorithm.to_lowercase(), key.kid));
            assert_eq!(
                std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
                0o600,
                "{}",
                file.display()
            );
        }
    }

    // Each algorithm's current key signs; the next keys do not yet.
    let es256 = subject_token(&broker, &jane, "aws").await;
    let rs256 = subject_token(&broker, &jane, "testcloud").await;
    assert_eq!(
        header(&es256),
        ("ES256".into(), kid_of(&listed, "ES256", "current"))
    );
    assert_eq!(
        header(&rs256),
        ("RS256".into(), kid_of(&listed, "RS256", "current"))
    );
    assert!(verifies_with_jwks(&broker, &es256, AWS_AUDIENCE).await);
    assert!(verifies_with_jwks(&broker, &rs256, TESTCLOUD_AUDIENCE).await);

    // The configured issuer.signing_key was imported as the ES256 current key:
    // importing the same file elsewhere gives the same kid.
    let elsewhere = tempfile::tempdir().unwrap();
    let imported = elsewhere.path().join("keys");
    let output = stackpass(&[
        "keys",
        "generate",
        "--dir",
        imported.to_str().unwrap(),
        "--import-es256",
        broker.dir.path().join("signing-key.pem").to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        kid_of(&list_keys(&imported), "ES256", "current"),
        kid_of(&listed, "ES256", "current")
    );
    // A second generate into the same directory is refused, and changes nothing.
    let manifest = std::fs::read(imported.join("keyset.json")).unwrap();
    let again = stackpass(&["keys", "generate", "--dir", imported.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("already holds a key set"),
        "{}",
        stderr(&again)
    );
    assert_eq!(
        std::fs::read(imported.join("keyset.json")).unwrap(),
        manifest
    );

    // No private key material reaches the log, even at debug level.
    for key in &listed {
        let file = dir.join(format!("{}-{}.pem", key.algorithm.to_lowercase(), key.kid));
        let pem = std::fs::read_to_string(file).unwrap();
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let first_line = pem.lines().nth(1).unwrap();
        let logs = broker.logs();
        assert!(!logs.contains(&body) && !logs.contains(first_line));
    }
}

// Blocking child processes below must not starve the doubles served on this runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_signs_with_the_next_key_after_sighup_and_keeps_the_old_one_published() {
    let backstage = BackstageDouble::start().await;
    // Manifest polling is slowed down to an hour: here only SIGHUP reloads.
    let broker = broker(
        &backstage,
        &[("STACKPASS_ISSUER__KEY_RELOAD_INTERVAL", "1h")],
    )
    .await;
    let jane = backstage.user_token("user:default/jane");
    let dir = key_dir(&broker);
    let before = list_keys(&dir);
    let es256_before = subject_token(&broker, &jane, "aws").await;
    let rs256_before = subject_token(&broker, &jane, "testcloud").await;

    // An overlap shorter than the longest token the configuration signs (AWS
    // grants, and so federation tokens, last up to 12h) is refused.
    let config = broker.config_path();
    let config = config.to_str().unwrap();
    let manifest = std::fs::read(dir.join("keyset.json")).unwrap();
    let short = rotate(&dir, &["--config", config, "--overlap", "6h"]);
    assert_eq!(short.status.code(), Some(1));
    assert!(
        stderr(&short).contains("(12h)") && stderr(&short).contains("--overlap"),
        "{}",
        stderr(&short)
    );
    assert_eq!(std::fs::read(dir.join("keyset.json")).unwrap(), manifest);

    let rotated = rotate(&dir, &["--config", config]);
    assert!(rotated.status.success(), "{}", stderr(&rotated));
    assert!(
        stdout(&rotated).contains("overlap 1day"),
        "{}",
        stdout(&rotated)
    );
    let after = list_keys(&dir);
    assert_eq!(after.len(), 6, "{after:?}");
    for algorithm in ["ES256", "RS256"] {
        assert_eq!(
            kid_of(&after, algorithm, "current"),
            kid_of(&before, algorithm, "next")
        );
        let retiring = after
            .iter()
            .find(|k| k.algorithm == algorithm && k.state == "retiring")
            .unwrap();
        assert_eq!(retiring.kid, kid_of(&before, algorithm, "current"));
        let retire_after = time::OffsetDateTime::parse(
            &retiring.retire_after,
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        let overlap = retire_after - time::OffsetDateTime::now_utc();
        assert!(
            overlap > time::Duration::hours(23) && overlap <= time::Duration::hours(24),
            "{retiring:?}"
        );
    }

    // Until the broker is told, it signs with the keys it loaded.
    assert_eq!(
        header(&subject_token(&broker, &jane, "testcloud").await).1,
        kid_of(&before, "RS256", "current")
    );
    hang_up(&broker);
    let rs256_after = until_signed_by(
        &broker,
        &jane,
        "testcloud",
        &kid_of(&after, "RS256", "current"),
    )
    .await;
    let es256_after = subject_token(&broker, &jane, "aws").await;
    assert_eq!(header(&es256_after).1, kid_of(&after, "ES256", "current"));

    // Everything the rotation left is published: the retiring keys too, so
    // tokens signed before the rotation still verify.
    let mut expected: Vec<_> = after
        .iter()
        .map(|k| (k.algorithm.clone(), k.kid.clone()))
        .collect();
    expected.sort();
    assert_eq!(published(&broker).await, expected);
    assert!(verifies_with_jwks(&broker, &es256_before, AWS_AUDIENCE).await);
    assert!(verifies_with_jwks(&broker, &rs256_before, TESTCLOUD_AUDIENCE).await);
    assert!(verifies_with_jwks(&broker, &es256_after, AWS_AUDIENCE).await);
    assert!(verifies_with_jwks(&broker, &rs256_after, TESTCLOUD_AUDIENCE).await);
    let logs = broker.logs();
    assert!(
        logs.contains("signing keys reloaded") && logs.contains("SIGHUP"),
        "{logs}"
    );

    // A manifest that does not load never replaces working keys.
    let good = std::fs::read(dir.join("keyset.json")).unwrap();
    std::fs::write(dir.join("keyset.json"), "{\"version\": 1, \"keys\": [").unwrap();
    hang_up(&broker);
    for _ in 0..100 {
        if broker.logs().contains("signing keys not reloaded") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        broker.logs().contains("signing keys not reloaded"),
        "{}",
        broker.logs()
    );
    assert_eq!(
        header(&subject_token(&broker, &jane, "testcloud").await).1,
        kid_of(&after, "RS256", "current")
    );
    assert_eq!(published(&broker).await, expected);
    std::fs::write(dir.join("keyset.json"), good).unwrap();

    // Both reloads are in the audit log: the keys now in force (public facts
    // only), and the refusal with its reason.
    let reloads: Vec<Value> = broker
        .audit_rows()
        .await
        .into_iter()
        .filter(|r| r["event"] == "keys_reloaded")
        .collect();
    let outcomes: Vec<&str> = reloads
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["applied", "rejected"]);
    let applied: Value = serde_json::from_str(reloads[0]["detail"].as_str().unwrap()).unwrap();
    assert_eq!(applied["reason"], "SIGHUP");
    let kids: Vec<&str> = applied["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert!(
        kids.contains(&kid_of(&after, "RS256", "current").as_str()),
        "{applied}"
    );
    assert!(
        !reloads[0].to_string().contains("PRIVATE"),
        "no key material"
    );
}

// Blocking child processes below must not starve the doubles served on this runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sharing_a_key_set_pick_up_a_rotation_by_themselves_and_agree() {
    let backstage = BackstageDouble::start().await;
    let shared = tempfile::tempdir().unwrap();
    let dir = shared.path().join("keys");
    let env = [
        ("STACKPASS_ISSUER__KEY_DIR", dir.to_str().unwrap()),
        ("STACKPASS_ISSUER__KEY_RELOAD_INTERVAL", "1s"),
    ];
    // The first replica creates the key set; the second finds it.
    let first = broker(&backstage, &env).await;
    let second = broker(&backstage, &env).await;
    let jane = backstage.user_token("user:default/jane");
    assert_eq!(published(&first).await, published(&second).await);

    let before = list_keys(&dir);
    let rotated = rotate(&dir, &["--algorithm", "rs256"]);
    assert!(rotated.status.success(), "{}", stderr(&rotated));
    let after = list_keys(&dir);
    let new_rs256 = kid_of(&after, "RS256", "current");
    assert_eq!(new_rs256, kid_of(&before, "RS256", "next"));
    assert_eq!(
        kid_of(&after, "ES256", "current"),
        kid_of(&before, "ES256", "current"),
        "only RS256 rotated"
    );

    // No signal: each replica notices the manifest changed.
    for replica in [&first, &second] {
        until_signed_by(replica, &jane, "testcloud", &new_rs256).await;
        assert_eq!(
            header(&subject_token(replica, &jane, "aws").await).1,
            kid_of(&before, "ES256", "current")
        );
    }
    assert_eq!(published(&first).await, published(&second).await);
    assert_eq!(published(&first).await.len(), 5);
}

/// An OIDC relying party in a few lines of PyJWT: discovery, then the JWKS it
/// names, then each token verified with the key its kid selects. Prints one
/// result per token given on stdin.
const PYJWT_CLIENT: &str = r#"
import json, sys, urllib.request
import jwt

issuer = sys.argv[1]
with urllib.request.urlopen(issuer + "/.well-known/openid-configuration") as response:
    discovery = json.load(response)
assert discovery["issuer"] == issuer, discovery
client = jwt.PyJWKClient(discovery["jwks_uri"], cache_keys=False)
results = []
for case in json.load(sys.stdin):
    try:
        header = jwt.get_unverified_header(case["token"])
        key = client.get_signing_key_from_jwt(case["token"])
        if key.algorithm_name != header["alg"]:
            raise ValueError(f"JWK alg {key.algorithm_name} but token alg {header['alg']}")
        claims = jwt.decode(
            case["token"],
            key.key,
            algorithms=discovery["id_token_signing_alg_values_supported"],
            audience=case["audience"],
            issuer=discovery["issuer"],
            options={"require": ["exp", "iat", "nbf", "sub", "jti"]},
        )
        results.append({"verified": True, "alg": header["alg"], "kid": header["kid"], "sub": claims["sub"]})
    except Exception as error:
        results.append({"verified": False, "error": f"{type(error).__name__}: {error}"})
print(json.dumps(results))
"#;

fn pyjwt_verify(issuer: &str, cases: &[(&str, &str)]) -> Vec<Value> {
    let python = workspace_root().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup-test-deps (or the README's test command) first",
        python.display()
    );
    let input: Vec<Value> = cases
        .iter()
        .map(|(token, audience)| json!({ "token": token, "audience": audience }))
        .collect();
    let mut command = Command::new(python);
    command.args(["-c", PYJWT_CLIENT, issuer]);
    let output = output_with_stdin(command, Value::from(input).to_string().as_bytes());
    assert!(output.status.success(), "{}", stderr(&output));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The same token with one signature character changed (in the middle, where
/// every bit counts).
fn tampered(token: &str) -> String {
    let (signed, signature) = token.rsplit_once('.').unwrap();
    let mut signature: Vec<char> = signature.chars().collect();
    let middle = signature.len() / 2;
    signature[middle] = if signature[middle] == 'A' { 'B' } else { 'A' };
    format!("{signed}.{}", signature.into_iter().collect::<String>())
}

// Blocking child processes below must not starve the doubles served on this runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_independent_oidc_client_verifies_es256_and_rs256_subject_tokens() {
    let backstage = BackstageDouble::start().await;
    let broker = broker(
        &backstage,
        &[("STACKPASS_ISSUER__KEY_RELOAD_INTERVAL", "1h")],
    )
    .await;
    let jane = backstage.user_token("user:default/jane");
    let es256 = subject_token(&broker, &jane, "aws").await;
    let rs256 = subject_token(&broker, &jane, "testcloud").await;
    let forged = tampered(&rs256);

    let results = pyjwt_verify(
        &broker.url,
        &[
            (&es256, AWS_AUDIENCE),
            (&rs256, TESTCLOUD_AUDIENCE),
            (&forged, TESTCLOUD_AUDIENCE),
            (&rs256, AWS_AUDIENCE),
        ],
    );
    for (result, (token, alg)) in results.iter().zip([(&es256, "ES256"), (&rs256, "RS256")]) {
        assert_eq!(result["verified"], true, "{result}");
        assert_eq!(result["alg"], alg);
        assert_eq!(result["kid"], header(token).1);
        assert_eq!(result["sub"], "stack:pulumi:acme/payments/dev");
    }
    assert_eq!(results[2]["verified"], false, "{}", results[2]);
    assert!(
        results[2]["error"].as_str().unwrap().contains("Signature"),
        "{}",
        results[2]
    );
    assert_eq!(results[3]["verified"], false, "{}", results[3]);
    assert!(
        results[3]["error"].as_str().unwrap().contains("Audience"),
        "{}",
        results[3]
    );

    // After a rotation the client still verifies the tokens signed before it
    // (their keys are retiring, still published) and those signed after.
    let rotated = rotate(&key_dir(&broker), &[]);
    assert!(rotated.status.success(), "{}", stderr(&rotated));
    hang_up(&broker);
    let listed = list_keys(&key_dir(&broker));
    let rs256_new = until_signed_by(
        &broker,
        &jane,
        "testcloud",
        &kid_of(&listed, "RS256", "current"),
    )
    .await;
    let es256_new = subject_token(&broker, &jane, "aws").await;
    assert_eq!(header(&es256_new).1, kid_of(&listed, "ES256", "current"));
    let results = pyjwt_verify(
        &broker.url,
        &[
            (&es256, AWS_AUDIENCE),
            (&rs256, TESTCLOUD_AUDIENCE),
            (&es256_new, AWS_AUDIENCE),
            (&rs256_new, TESTCLOUD_AUDIENCE),
        ],
    );
    assert!(results.iter().all(|r| r["verified"] == true), "{results:?}");
}

/// A configuration from before key sets: one `issuer.signing_key`, and a
/// provider that needs RS256. `config check` names the provider and the command
/// that moves the key into a key set; after it, the ES256 kid is unchanged.
#[test]
fn a_next_key_published_moments_ago_is_not_promoted_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let generated = stackpass(&["keys", "generate", "--dir", keys.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(generated.status.success(), "{}", stderr(&generated));
    let before = list_keys(&keys);
    let refused = stackpass(&["keys", "rotate", "--dir", keys.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    let text = stderr(&refused);
    assert!(
        text.contains("clouds may cache the JWKS for 1h") && text.contains("--force"),
        "{text}"
    );
    assert_eq!(list_keys(&keys), before, "nothing changed");
}

#[test]
fn a_single_signing_key_moves_into_a_key_set_keeping_its_kid() {
    let dir = tempfile::tempdir().unwrap();
    let quickstart = workspace_root().join("examples/quickstart");
    for file in ["catalog.toml", "stacks.toml"] {
        std::fs::copy(quickstart.join(file), dir.path().join(file)).unwrap();
    }
    let key = dir.path().join("signing-key.pem");
    let generated = stackpass(&["keys", "generate", "--out", key.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(generated.status.success(), "{}", stderr(&generated));
    let kid = stdout(&generated)
        .split("kid ")
        .nth(1)
        .unwrap()
        .trim_end_matches([')', '\n'])
        .to_owned();

    let config = dir.path().join("stackpass.toml");
    let legacy = r#"
[issuer]
signing_key = "signing-key.pem"

[[identity.issuers]]
name = "dev"
kind = "development"
issuer = "stackpass-keys-test"
audiences = ["stackpass"]
key_file = "dev-issuer-key.pem"

[catalog]
kind = "static"
file = "catalog.toml"

[stacks]
kind = "static"
file = "stacks.toml"

[audit]
url = "sqlite://stackpass.db"
"#
    .to_owned()
        + TESTCLOUD_RS256;
    std::fs::write(&config, &legacy).unwrap();
    let check = || {
        stackpass(&["config", "check", "--config", config.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let refused = check();
    assert_eq!(refused.status.code(), Some(1));
    let text = stderr(&refused);
    let keys = dir.path().join("stackpass-keys");
    let fix = format!(
        "stackpass keys generate --dir {} --import-es256 {}",
        keys.display(),
        key.display()
    );
    assert!(
        text.contains("providers.testcloud: signs subject tokens with RS256")
            && text.contains(&fix),
        "{text}"
    );

    // Run the command it names, drop signing_key: the same ES256 key, now with
    // RS256 beside it.
    let mut command = fix.split_whitespace().skip(1);
    let args: Vec<&str> = command.by_ref().collect();
    let moved = stackpass(&args).output().unwrap();
    assert!(moved.status.success(), "{}", stderr(&moved));
    assert_eq!(kid_of(&list_keys(&keys), "ES256", "current"), kid);
    std::fs::write(
        &config,
        legacy.replace("signing_key = \"signing-key.pem\"\n", ""),
    )
    .unwrap();
    let ok = check();
    assert!(ok.status.success(), "{}", stderr(&ok));

    // Rotating without the config still refuses overlaps under an hour.
    let short = rotate(&keys, &["--overlap", "30m"]);
    assert_eq!(short.status.code(), Some(1));
    assert!(stderr(&short).contains("(1h)"), "{}", stderr(&short));
}
