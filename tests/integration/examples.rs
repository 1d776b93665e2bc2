//! The examples under examples/ that cannot run here (Pulumi, Terraform, GitHub
//! Actions, GitLab CI, an AWS profile): scripts/check-examples validates each
//! one (type checks, Pulumi's mocks, HCL, actionlint, GitLab's schema,
//! shellcheck) and has the real binary show which stack and provider it would
//! ask the broker for. This test runs it and insists every example was checked.

use std::process::Command;

use crate::support;

#[test]
fn every_example_is_checked_and_passes() {
    let script = support::workspace_root().join("scripts/check-examples");
    let output = Command::new(&script)
        .env("STACKPASS", support::stackpass_binary())
        .output()
        .expect("run scripts/check-examples");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "scripts/check-examples failed:\n{stdout}\n{stderr}"
    );
    assert!(!stdout.contains("FAIL"), "{stdout}");
    // One line per example that only its own checks print, so an example whose
    // checks stopped early (or were never reached) fails this test.
    for line in [
        "ok: pulumi-typescript: tsc type-checks index.ts",
        "ok: pulumi-typescript: the program runs under Pulumi's mocks",
        "ok: pulumi-typescript: the derived stack pulumi:acme/payments/dev",
        "ok: pulumi-python: the program runs under Pulumi's mocks",
        "ok: pulumi-python: the derived stack pulumi:acme/payments/dev",
        "ok: terraform: main.tf is valid HCL2",
        "ok: terraform: the derived stack terraform:acme/search-dev",
        "ok: github-actions: actionlint finds nothing",
        "ok: github-actions (its working directory and env): the derived stack pulumi:acme/payments/dev",
        "ok: gitlab-ci: valid against GitLab's CI schema",
        "ok: gitlab-ci (the directory it applies): the derived stack terraform:acme/search-dev",
        "ok: aws-profile: [profile payments-dev] the real stackpass asks the broker",
        "ok: aws-profile: [profile payments-dev-short] --duration reaches the request",
        "ok: aws-profile: [profile search-dev] the real stackpass asks the broker",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}
