//! The binary as built so far: `--version` works, every command reports
//! that it is not built yet with exit status 64.

use std::process::Command;

#[test]
fn version_prints_the_package_version() {
    let out = Command::new(env!("CARGO_BIN_EXE_consul-failover-dns"))
        .arg("--version")
        .output()
        .expect("binary runs");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("consul-failover-dns {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn commands_say_they_are_not_built_yet() {
    for args in [&["demo"][..], &["demo", "--scenario", "fire"], &[]] {
        let out = Command::new(env!("CARGO_BIN_EXE_consul-failover-dns"))
            .args(args)
            .output()
            .expect("binary runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains("is not built yet"), "{args:?}: {stderr}");
    }
}
