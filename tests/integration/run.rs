//! `stackpass run` and the CLI's credential cache, end to end: the real broker,
//! moto's STS behind the recorder (which counts issuances and can make
//! credentials short-lived), and the real AWS CLI as the command.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

struct RunWorld {
    world: World,
    _moto: Moto,
    dir: tempfile::TempDir,
    token: String,
    moto_url: String,
}

impl RunWorld {
    /// Credentials from moto that expire after `life`.
    async fn start(life: Duration) -> RunWorld {
        let moto = Moto::start().await;
        let backstage = BackstageDouble::start().await;
        let sts = StsRecorder::start(StsBehaviour::ForwardShortLived {
            upstream: moto.url.clone(),
            life,
        })
        .await;
        let broker = Broker::start(BrokerOptions::new(&backstage, &sts.url)).await;
        let token = backstage.user_token("user:default/jane");
        RunWorld {
            world: World::from_parts(backstage, sts, broker),
            moto_url: moto.url.clone(),
            _moto: moto,
            dir: tempfile::tempdir().unwrap(),
            token,
        }
    }

    /// `stackpass ARGS` as jane, with a cache of the test's own and an AWS
    /// environment that names only moto.
    fn stackpass(&self, args: &[&str]) -> Command {
        let mut command = stackpass(args);
        command
            .env("STACKPASS_URL", &self.world.broker.url)
            .env("STACKPASS_TOKEN", &self.token)
            .env("STACKPASS_CACHE_DIR", self.dir.path().join("cache"))
            .env("AWS_ENDPOINT_URL", &self.moto_url)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("PATH", path_with_venv())
            .current_dir(self.dir.path());
        command
    }

    fn issued(&self) -> usize {
        self.world.sts.calls().len()
    }
}

fn combined(output: &std::process::Output) -> String {
    format!("{}{}", stdout(output), stderr(output))
}

// Blocking child processes below must not starve the doubles served on this runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_outliving_its_credentials_keeps_working_and_sees_no_secret() {
    let run = RunWorld::start(Duration::from_secs(6)).await;
    // Someone's own keys and profile in the environment must not be what the
    // command uses.
    let output = run
        .stackpass(&[
            "run",
            "--stack",
            "pulumi:acme/payments/dev",
            "--",
            "sh",
            "-c",
            "aws sts get-caller-identity --output text --query Arn && sleep 8 && aws sts get-caller-identity --output text --query Arn && env",
        ])
        .env("AWS_ACCESS_KEY_ID", "AKIAPERSONALADMINKEY")
        .env("AWS_SECRET_ACCESS_KEY", "personal-secret")
        .env("AWS_PROFILE", "admin")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "run failed ({:?}): {}",
        output.status,
        combined(&output)
    );
    let text = stdout(&output);
    let arns: Vec<&str> = text
        .lines()
        .filter(|line| line.starts_with("arn:aws:sts::"))
        .collect();
    assert_eq!(
        arns,
        vec!["arn:aws:sts::111111111111:assumed-role/payments-deployer/user.default.jane"; 2],
        "{}",
        combined(&output)
    );
    // The first credential expired 6 s in; the command's second call needed
    // the one stackpass fetched before that.
    assert!(run.issued() >= 2, "issuances: {}", run.issued());
    // The child's environment: the endpoint, not keys; no identity token.
    let env = text;
    assert!(env.contains("AWS_CONTAINER_CREDENTIALS_FULL_URI=http://127.0.0.1:"));
    for absent in [
        "AWS_ACCESS_KEY_ID=",
        "AWS_SECRET_ACCESS_KEY=",
        "AWS_PROFILE=",
        "STACKPASS_TOKEN=",
    ] {
        assert!(!env.contains(absent), "the child saw {absent}");
    }
    // stackpass itself printed nothing secret: no key id it was issued, no
    // token, no secret key.
    let said = stderr(&output);
    assert!(said.contains("aws credentials for pulumi:acme/payments/dev"));
    for row in run.world.broker.audit_rows().await {
        if let Some(key_id) = row["credential_id"].as_str() {
            assert!(!combined(&output).contains(key_id), "printed {key_id}");
        }
    }
    assert!(!said.contains(&run.token));
    assert!(!said.to_lowercase().contains("secret"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_and_signals_pass_through() {
    let run = RunWorld::start(Duration::from_secs(900)).await;
    let stack = ["run", "--stack", "pulumi:acme/payments/dev", "--"];
    let with = |script: &str| {
        let mut args = stack.to_vec();
        args.extend(["sh", "-c", script]);
        run.stackpass(&args).output().unwrap()
    };
    assert_eq!(with("exit 7").status.code(), Some(7));
    assert_eq!(with("kill -9 $$").status.code(), Some(137));
    // A supervisor's SIGTERM reaches the command, which decides the exit code.
    let ready = run.dir.path().join("ready");
    let script = format!(
        "trap 'exit 42' TERM; touch {}; sleep 30 & wait",
        ready.display()
    );
    let mut args = stack.to_vec();
    args.extend(["sh", "-c", &script]);
    let mut child = run.stackpass(&args).stdin(Stdio::null()).spawn().unwrap();
    wait_for_file(&ready).await;
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(42));
    // No command, or one that does not exist: an error that says so.
    let missing = run
        .stackpass(&[
            "run",
            "--stack",
            "pulumi:acme/payments/dev",
            "--",
            "no-such-command-here",
        ])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(stderr(&missing).contains("could not start no-such-command-here"));
}

async fn wait_for_file(path: &Path) {
    for _ in 0..200 {
        if path.exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} never appeared", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stack_comes_from_the_pulumi_project_or_an_error_says_what_to_pass() {
    let run = RunWorld::start(Duration::from_secs(900)).await;
    let project = run.dir.path().join("payments-infra");
    std::fs::create_dir(&project).unwrap();
    std::fs::write(
        project.join("Pulumi.yaml"),
        "name: payments\nruntime: nodejs\n",
    )
    .unwrap();
    let output = run
        .stackpass(&[
            "run",
            "--",
            "aws",
            "sts",
            "get-caller-identity",
            "--query",
            "Account",
            "--output",
            "text",
        ])
        .env("PULUMI_STACK", "acme/dev")
        .env("PULUMI_HOME", run.dir.path().join("pulumi-home"))
        .current_dir(&project)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", combined(&output));
    assert_eq!(stdout(&output).trim(), "111111111111");
    let nothing = run.stackpass(&["run", "--", "true"]).output().unwrap();
    assert_eq!(nothing.status.code(), Some(1));
    let said = stderr(&nothing);
    assert!(said.contains("nothing in"), "{said}");
    assert!(said.contains("hint: pass --stack"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_process_calls_reuse_the_cache_until_near_expiry() {
    let run = RunWorld::start(Duration::from_secs(4)).await;
    let creds = || {
        let output = run
            .stackpass(&[
                "creds",
                "--stack",
                "pulumi:acme/payments/dev",
                "--format",
                "credential-process",
            ])
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", combined(&output));
        let value: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        value["AccessKeyId"].as_str().unwrap().to_owned()
    };
    let first = creds();
    for _ in 0..4 {
        assert_eq!(creds(), first, "a fresh answer is reused");
    }
    assert_eq!(run.issued(), 1, "five calls, one issuance");
    // --no-cache asks the broker.
    let fresh = run
        .stackpass(&["creds", "--stack", "pulumi:acme/payments/dev", "--no-cache"])
        .output()
        .unwrap();
    assert!(fresh.status.success());
    assert_eq!(run.issued(), 2);
    // Past half of a short life, the next call renews.
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    let renewed = creds();
    assert_ne!(renewed, first);
    assert_eq!(run.issued(), 3);
    // A corrupted entry is ignored, then replaced by the next answer.
    let cache = run.dir.path().join("cache");
    let entries: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("credentials-"))
        .collect();
    assert_eq!(entries.len(), 1, "one key, one file");
    std::fs::write(entries[0].path(), b"\x00garbage").unwrap();
    let after = creds();
    assert_ne!(after, renewed);
    assert_eq!(run.issued(), 4);
    assert_eq!(creds(), after, "the replaced entry is used again");
    assert_eq!(run.issued(), 4);
    // cache clear empties it.
    let cleared = run.stackpass(&["cache", "clear"]).output().unwrap();
    assert!(
        stdout(&cleared).contains("removed 1"),
        "{}",
        combined(&cleared)
    );
    creds();
    assert_eq!(run.issued(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_read_the_token_file_again() {
    let run = RunWorld::start(Duration::from_secs(4)).await;
    let token_file = run.dir.path().join("token");
    std::fs::write(&token_file, &run.token).unwrap();
    // Halfway through, the platform replaces the token in the file — here with
    // bob's, whom the policy refuses, so the renewal shows whose token it used.
    let bob = run.world.backstage.user_token("user:default/bob");
    let script = format!(
        "aws sts get-caller-identity --query Account --output text && printf %s \"$BOB\" > {} && sleep 6 && aws sts get-caller-identity --query Account --output text",
        token_file.display()
    );
    let output = run
        .stackpass(&[
            "run",
            "--stack",
            "pulumi:acme/payments/dev",
            "--token-file",
            token_file.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            &script,
        ])
        .env_remove("STACKPASS_TOKEN")
        .env("BOB", &bob)
        .output()
        .unwrap();
    assert!(!output.status.success(), "{}", combined(&output));
    assert_eq!(stdout(&output).trim(), "111111111111");
    let said = stderr(&output);
    assert!(
        said.contains("could not renew aws credentials") && said.contains("Denied by policy"),
        "{said}"
    );
    assert!(!said.contains(&bob) && !said.contains(&run.token));
}
