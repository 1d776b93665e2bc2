//! The check against the real Backstage backend (installed from npm, run on this
//! machine's Node.js): records its wire formats, checks every assumption the
//! broker and the Backstage double make, and has the real broker verify a real
//! Backstage user token and read the real catalog; then has the real scaffolder
//! run stackpass's scaffolder module (backstage/plugin-scaffolder-backend-module-stackpass)
//! as jane. See tests/backstage-real/.

use std::process::Command;

use crate::support;

#[test]
fn the_broker_works_against_a_real_backstage_backend() {
    let script = support::workspace_root().join("tests/backstage-real/run-check.sh");
    let output = Command::new(&script)
        .env("STACKPASS", support::stackpass_binary())
        .env("REQUIRE_STACKPASS", "1")
        .output()
        .expect("run tests/backstage-real/run-check.sh");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the real-Backstage check failed:\n{stderr}"
    );
    assert!(
        stderr.contains("stackpass verified jane's Backstage token"),
        "{stderr}"
    );
    assert!(
        stderr.contains("stackpass refused jane for billing-api"),
        "{stderr}"
    );
    // The scaffolder step (tests/backstage-real/scaffolder.js): each line is
    // printed only once every check of that task has passed.
    for line in [
        "ok: the module's example template is accepted and its steps match the actions",
        "ok: scaffolder task for payments completed as jane with no secret in its log",
        "ok: scaffolder task for billing-api failed with the policy's reasons: stackpass would deny aws credentials for pulumi:acme/billing-api/dev",
        "ok: scaffolder task for payments/prod failed with the rule's reasons:  rule owners-deploy-dev:",
    ] {
        assert!(stderr.contains(line), "missing {line:?} in:\n{stderr}");
    }
    assert!(!stderr.contains("FAIL"), "{stderr}");
}
