//! `deploy/`: the container image and the Kubernetes manifests, checked
//! without a cluster or a container runtime (neither runs here). The image is
//! built with podman from the locally built binary (`scripts/build-image`,
//! `deploy/Containerfile.local`) into a podman store of the test's own, its
//! files listed and its root filesystem entered with chroot as the image's
//! non-root user. The manifests go through `scripts/check-deploy` (schemas,
//! consistency, and the real `stackpass config check` on the ConfigMap).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use crate::support::*;

/// podman against the test's own store (`STACKPASS_PODMAN_ROOT` of
/// `scripts/build-image`).
fn podman(store: &Path, args: &[&str]) -> std::process::Output {
    Command::new("podman")
        .arg("--root")
        .arg(store.join("storage"))
        .arg("--runroot")
        .arg(store.join("run"))
        .args(["--storage-driver", "vfs"])
        .args(args)
        .output()
        .expect("podman is not installed: run scripts/setup-podman (scripts/test does)")
}

/// What the image must hold: the binary, the CA bundle, and the files of the
/// libraries `ldd` says the binary loads (the dynamic loader included).
fn expected_files(binary: &Path) -> BTreeSet<String> {
    let ldd = Command::new("ldd").arg(binary).output().unwrap();
    assert!(ldd.status.success(), "{}", stderr(&ldd));
    let mut files: BTreeSet<String> = stdout(&ldd)
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                [_, "=>", path, ..] if path.starts_with('/') => Some((*path).to_owned()),
                [path, ..] if path.starts_with('/') => Some((*path).to_owned()),
                _ => None,
            }
        })
        .collect();
    assert!(
        files.iter().any(|f| f.ends_with("/libc.so.6")),
        "ldd named no libc: {files:?}"
    );
    files.insert("/usr/local/bin/stackpass".into());
    files.insert("/etc/ssl/certs/ca-certificates.crt".into());
    files
}

/// Every file and symlink under `root`, as absolute paths inside it.
fn files_under(root: &Path) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                pending.push(entry.path());
            } else {
                let inside = entry.path().strip_prefix(root).unwrap().to_owned();
                found.insert(format!("/{}", inside.display()));
            }
        }
    }
    found
}

#[test]
fn the_image_holds_only_the_binary_its_c_runtime_and_ca_certificates() {
    let store = tempfile::tempdir().unwrap();
    let binary = stackpass_binary();
    let tag = format!("localhost/stackpass-test:{}", uuid::Uuid::new_v4().simple());
    let built = Command::new(workspace_root().join("scripts/build-image"))
        .args(["--binary", binary.to_str().unwrap(), "--tag", &tag])
        .env("STACKPASS_PODMAN_ROOT", store.path())
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "scripts/build-image failed:\n{}{}",
        stdout(&built),
        stderr(&built)
    );

    let inspected = podman(store.path(), &["image", "inspect", &tag]);
    assert!(inspected.status.success(), "{}", stderr(&inspected));
    let image: serde_json::Value = serde_json::from_slice(&inspected.stdout).unwrap();
    let config = &image[0]["Config"];
    assert_eq!(config["User"], "10001:10001", "{config}");
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!(["/usr/local/bin/stackpass"])
    );
    assert_eq!(
        config["Cmd"],
        serde_json::json!(["serve", "--config", "/etc/stackpass/config/stackpass.toml"])
    );
    assert_eq!(
        image[0]["RootFS"]["Layers"].as_array().map(Vec::len),
        Some(1),
        "one layer, from scratch: {}",
        image[0]["RootFS"]
    );

    let mounted = podman(store.path(), &["image", "mount", &tag]);
    assert!(mounted.status.success(), "{}", stderr(&mounted));
    let root = std::path::PathBuf::from(stdout(&mounted).trim());
    let files = files_under(&root);
    assert_eq!(
        files,
        expected_files(&binary),
        "the image holds exactly the binary, its libraries and the CA bundle"
    );
    assert!(!root.join("bin/sh").exists(), "no shell");

    // No container can run here; the image's root filesystem can still be
    // entered, as its user: the binary, its loader and its libraries are
    // complete and usable by UID 10001 (nothing from the host is reachable).
    let ran = Command::new("chroot")
        .arg("--userspec=10001:10001")
        .arg(&root)
        .args(["/usr/local/bin/stackpass", "--version"])
        .output()
        .unwrap();
    assert!(
        ran.status.success(),
        "the image's binary did not run as 10001: {}",
        stderr(&ran)
    );
    assert!(stdout(&ran).starts_with("stackpass "), "{}", stdout(&ran));

    let _ = podman(store.path(), &["image", "unmount", &tag]);
    let removed = podman(store.path(), &["rmi", &tag]);
    assert!(removed.status.success(), "{}", stderr(&removed));
}

#[test]
fn the_kubernetes_manifests_validate_and_carry_a_config_that_passes_config_check() {
    let output = Command::new(workspace_root().join("scripts/check-deploy"))
        .env("STACKPASS", stackpass_binary())
        .env_remove(TEST_POSTGRES_URL)
        .output()
        .unwrap();
    let report = stdout(&output);
    assert!(
        output.status.success(),
        "scripts/check-deploy failed:\n{report}\n{}",
        stderr(&output)
    );
    for expected in [
        "ok   deployment.yaml: Deployment/stackpass valid for Kubernetes 1.32.0",
        "ok   servicemonitor.yaml valid for the Prometheus Operator's CRD",
        "ok   kubernetes-validate 1.37.0 refuses a misspelt field",
        "ok   stackpass config check passes the ConfigMap's config with the Secrets at their paths",
        "all deploy checks passed",
    ] {
        assert!(
            report.contains(expected),
            "{expected:?} missing from:\n{report}"
        );
    }
}
