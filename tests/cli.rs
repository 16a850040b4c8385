//! The command line: `--version`, `check-config`, configuration errors
//! (exit status 64, naming the file and the key) and flag overrides.

use std::path::Path;
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_consul-failover-dns"))
        .args(args)
        .output()
        .expect("binary runs")
}

fn write_config(dir: &Path, text: &str) -> String {
    let path = dir.join("test.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn version_prints_the_package_version() {
    let out = run(&["--version"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("consul-failover-dns {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn check_config_prints_the_effective_configuration() {
    let shipped = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/consul-failover-dns.toml"
    );
    let out = run(&[
        "check-config",
        "-c",
        shipped,
        "--listen",
        "127.0.0.9:5353",
        "--admin-listen",
        "",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("listen = [\"127.0.0.9:5353\"]"),
        "--listen overrides the file:\n{stdout}"
    );
    assert!(
        stdout.contains("[admin]\nlisten = \"\""),
        "--admin-listen overrides the file:\n{stdout}"
    );
    assert!(stdout.contains("name = \"grafana\""), "{stdout}");
    assert!(stdout.contains("wait = \"5m\""), "{stdout}");
}

#[test]
fn configuration_errors_name_the_file_and_key_and_exit_64() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[dns]\nlisen = []\n", "unknown field `lisen`"),
        (
            "[consul]\nwait = \"forever\"\n",
            "\"forever\" is not a duration",
        ),
        (
            "[[query]]\nname = \"a\"\nfailover = { datacenters = [\"dc2\", \"dc2\"] }\n",
            "query[0].failover.datacenters",
        ),
    ];
    for (text, needle) in cases {
        let path = write_config(dir.path(), text);
        for command in ["check-config", "run"] {
            let out = run(&[command, "-c", &path]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(64), "{command} {text:?}: {stderr}");
            assert!(
                stderr.contains(&path),
                "{text:?}: the file is not named in {stderr:?}"
            );
            assert!(
                stderr.contains(needle),
                "{text:?}: {needle:?} not in {stderr:?}"
            );
        }
    }
    let out = run(&[
        "check-config",
        "-c",
        "/nonexistent/consul-failover-dns.toml",
    ]);
    assert_eq!(out.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("/nonexistent/consul-failover-dns.toml: cannot read")
    );
    let out = run(&["check-config", "--consul-address", "localhost:8500"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("consul.address"));
}
