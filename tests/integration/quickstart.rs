//! The README's quickstart, run exactly as a newcomer would run it.

use std::process::Command;

use crate::support;

#[test]
fn the_quickstart_demo_passes() {
    let output = Command::new(support::workspace_root().join("examples/quickstart/demo.sh"))
        .env("STACKPASS", support::stackpass_binary())
        .env_remove(support::TEST_POSTGRES_URL)
        .output()
        .expect("run demo.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "demo.sh failed\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
    );
    assert!(stdout.contains("==> Demo passed"), "{stdout}");
}
