//! The `consul-sim` binary as a new user meets it: started with `--dc` and
//! `--seed`, driven with `curl`, including the classic prepared-query
//! failover of the issue's acceptance list.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

/// A running `consul-sim`, killed on drop.
struct Running {
    child: Child,
    urls: Vec<(String, String)>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_consul-sim"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("consul-sim starts");
        let dcs = args.iter().filter(|a| **a == "--dc").count();
        let mut lines = BufReader::new(child.stdout.take().expect("stdout piped")).lines();
        let mut urls = Vec::new();
        for _ in 0..dcs {
            let line = lines.next().expect("a line per datacenter").expect("utf-8");
            // "dc1 listening on http://127.0.0.1:PORT"
            let (dc, url) = line
                .split_once(" listening on ")
                .unwrap_or_else(|| panic!("unexpected line {line:?}"));
            urls.push((dc.to_owned(), url.to_owned()));
        }
        Self { child, urls }
    }

    fn url(&self, dc: &str) -> &str {
        &self.urls.iter().find(|(d, _)| d == dc).expect("known dc").1
    }
}

/// Runs curl; panics with install instructions if it is missing.
fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "20"])
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("curl is needed for this test ({e}); install it: apt-get install -y curl")
        });
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 body")
}

fn seed_file() -> tempfile_path::Path {
    let seed = json!([
        {"Datacenter": "dc1", "Node": "dc1-grafana-1", "Address": "127.0.1.1",
         "Service": {"Service": "grafana", "Port": 3000},
         "Check": {"CheckID": "grafana-1", "Name": "grafana", "ServiceID": "grafana", "Status": "passing"}},
        {"Datacenter": "dc1", "Node": "dc1-grafana-2", "Address": "127.0.1.2",
         "Service": {"Service": "grafana", "Port": 3000},
         "Check": {"CheckID": "grafana-2", "Name": "grafana", "ServiceID": "grafana", "Status": "passing"}},
        {"Datacenter": "dc2", "Node": "dc2-grafana-1", "Address": "127.0.2.1",
         "Service": {"Service": "grafana", "Port": 3000},
         "Check": {"CheckID": "grafana-1", "Name": "grafana", "ServiceID": "grafana", "Status": "passing"}}
    ]);
    tempfile_path::Path::with_contents("seed.json", &seed.to_string())
}

/// A file in a fresh temporary directory, removed on drop.
mod tempfile_path {
    pub struct Path(std::path::PathBuf);

    impl Path {
        pub fn with_contents(name: &str, contents: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "consul-sim-cli-{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(name);
            std::fs::write(&path, contents).unwrap();
            Self(path)
        }

        pub fn as_str(&self) -> &str {
            self.0.to_str().unwrap()
        }

        /// The temporary directory the file is in.
        pub fn dir(&self) -> &str {
            self.0.parent().unwrap().to_str().unwrap()
        }
    }

    impl Drop for Path {
        fn drop(&mut self) {
            if let Some(dir) = self.0.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

/// The issue's acceptance check: the classic prepared query posted to dc1,
/// every dc1 grafana check failed, then execute answers dc2's instances
/// with `"Datacenter":"dc2"` and `"Failovers":1` (reference §5.4).
#[test]
fn classic_prepared_query_fails_over_with_curl() {
    let seed = seed_file();
    let sim = Running::start(&[
        "--dc",
        "dc1=127.0.0.1:0",
        "--dc",
        "dc2=127.0.0.1:0",
        "--seed",
        seed.as_str(),
    ]);
    let dc1 = sim.url("dc1");
    let created = curl(&[
        "--request",
        "POST",
        "--data",
        r#"{"Name":"grafana","Service":{"Service":"grafana","Failover":{"Datacenters":["dc2"]}}}"#,
        &format!("{dc1}/v1/query"),
    ]);
    let created: Value = serde_json::from_str(&created).unwrap();
    assert_eq!(created["ID"].as_str().unwrap().len(), 36);

    let local: Value =
        serde_json::from_str(&curl(&[&format!("{dc1}/v1/query/grafana/execute")])).unwrap();
    assert_eq!(
        (local["Datacenter"].as_str(), local["Failovers"].as_u64()),
        (Some("dc1"), Some(0))
    );
    assert_eq!(local["Nodes"].as_array().unwrap().len(), 2);

    for check in ["grafana-1", "grafana-2"] {
        curl(&[
            "--request",
            "PUT",
            "--fail",
            &format!("{dc1}/v1/agent/check/fail/{check}"),
        ]);
    }
    let failed: Value =
        serde_json::from_str(&curl(&[&format!("{dc1}/v1/query/grafana/execute")])).unwrap();
    assert_eq!(failed["Datacenter"], "dc2");
    assert_eq!(failed["Failovers"], 1);
    let nodes = failed["Nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0]["Node"]["Address"], "127.0.2.1");
    assert_eq!(nodes[0]["Node"]["Datacenter"], "dc2");
}

/// `--dc` addresses each get a listener and each answers `?dc=` for the
/// others; the seed lands in the datacenter each entry names.
#[test]
fn each_dc_listens_and_seed_lands_in_its_dc() {
    let seed = seed_file();
    let sim = Running::start(&[
        "--dc",
        "dc1=127.0.0.1:0",
        "--dc",
        "dc2=127.0.0.1:0",
        "--seed",
        seed.as_str(),
        "--coord",
        "dc2=0.030",
    ]);
    assert_ne!(sim.url("dc1"), sim.url("dc2"));
    let via_dc1: Value = serde_json::from_str(&curl(&[&format!(
        "{}/v1/health/service/grafana?dc=dc2",
        sim.url("dc1")
    )]))
    .unwrap();
    let direct: Value = serde_json::from_str(&curl(&[&format!(
        "{}/v1/health/service/grafana",
        sim.url("dc2")
    )]))
    .unwrap();
    assert_eq!(via_dc1, direct);
    assert_eq!(direct.as_array().unwrap().len(), 1);
    let dcs = curl(&[&format!("{}/v1/catalog/datacenters", sim.url("dc2"))]);
    assert_eq!(dcs, r#"["dc2","dc1"]"#);
}

/// Bad arguments fail with exit code 1 and a message naming the flag.
#[test]
fn bad_arguments_name_the_flag() {
    for (args, needle) in [
        (vec!["--dc", "dc1"], "--dc \"dc1\": expected NAME=ADDR"),
        (vec!["--dc", "dc1=localhost:x"], "is not an IP:PORT address"),
        (
            vec![
                "--dc",
                "dc1=127.0.0.1:0",
                "--seed",
                "/nonexistent/seed.json",
            ],
            "--seed /nonexistent/seed.json",
        ),
        (
            vec!["--dc", "dc1=127.0.0.1:0", "--coord", "dc9=0.1"],
            "no --dc named \"dc9\"",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_consul-sim"))
            .args(&args)
            .output()
            .expect("consul-sim runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

/// `--tls-dir` serves HTTPS and writes the CA there: curl trusting it
/// negotiates HTTP/2; without it the handshake fails.
#[test]
fn tls_dir_serves_https_and_writes_the_ca() {
    let dir = tempfile_path::Path::with_contents("README", "");
    let tls_dir = format!("{}/tls", dir.dir());
    let sim = Running::start(&["--dc", "dc1=127.0.0.1:0", "--tls-dir", &tls_dir]);
    let url = sim.url("dc1");
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let ca = format!("{tls_dir}/ca.pem");
    let pem = std::fs::read_to_string(&ca).expect("ca.pem written");
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    let out = curl(&[
        "--cacert",
        &ca,
        "--write-out",
        " %{http_version}",
        &format!("{url}/v1/catalog/datacenters"),
    ]);
    assert_eq!(out, r#"["dc1"] 2"#);
    let untrusted = Command::new("curl")
        .args([
            "--silent",
            "--max-time",
            "20",
            &format!("{url}/v1/agent/self"),
        ])
        .status()
        .expect("curl runs");
    assert!(!untrusted.success());
}

/// `--max-conns-per-client`: with 1, a second connection while one is open
/// gets Consul's 429 text; once it closes, curl is served again.
#[test]
fn max_conns_per_client_flag_limits_connections() {
    let sim = Running::start(&["--dc", "dc1=127.0.0.1:0", "--max-conns-per-client", "1"]);
    let url = sim.url("dc1");
    let addr = url.strip_prefix("http://").unwrap();
    let held = std::net::TcpStream::connect(addr).unwrap();
    let self_url = format!("{url}/v1/agent/self");
    let answer = |args: &[&str]| {
        let mut all = vec!["--write-out", "\n%{http_code}"];
        all.extend_from_slice(args);
        curl(&all)
    };
    // The held connection is counted once the listener has accepted it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let refused = loop {
        let out = answer(&[&self_url]);
        if out.ends_with("\n429") || std::time::Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(
        refused,
        "Your IP is issuing too many concurrent connections, please rate limit your calls\n\n429"
    );
    drop(held);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let served = loop {
        let out = answer(&["--output", "/dev/null", &self_url]);
        if out.ends_with("\n200") || std::time::Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(served, "\n200");
}
