//! `consul-failover-dns demo`: it starts, its printed `dig` commands
//! answer as the comments next to them say, and `--scenario fire` moves
//! the answers to dc2 and back.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The demo process, killed on drop.
struct Demo {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Demo {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_consul-failover-dns"))
            .arg("demo")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the binary starts");
        let stdout: ChildStdout = child.stdout.take().expect("piped");
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// Lines up to and including the first one containing `needle`.
    fn until(&self, needle: &str, within: Duration) -> Vec<String> {
        let deadline = std::time::Instant::now() + within;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let done = line.contains(needle);
                    seen.push(line);
                    if done {
                        return seen;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "no line containing {needle:?} within {within:?}; output so far:\n{}",
            seen.join("\n")
        );
    }
}

fn dig(command: &str) -> String {
    let mut words = command.split_whitespace();
    assert_eq!(words.next(), Some("dig"));
    let out = Command::new("dig")
        .args(words)
        .args([
            "+noall",
            "+answer",
            "+authority",
            "+comments",
            "+time=2",
            "+tries=1",
        ])
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run dig ({e}); install it with: apt-get install -y bind9-dnsutils")
        });
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn printed_commands_answer_and_fire_moves_answers() {
    let demo = Demo::start(&[]);
    let intro = demo.until("Ctrl-C stops the demo.", Duration::from_secs(60));
    let digs: Vec<&str> = intro
        .iter()
        .map(|l| l.trim())
        .filter(|l| l.starts_with("dig "))
        .map(|l| l.split('#').next().unwrap_or(l).trim())
        .collect();
    assert_eq!(digs.len(), 5, "{intro:#?}");
    let grafana = dig(digs[0]);
    assert!(grafana.contains("status: NOERROR"), "{grafana}");
    for ip in ["127.0.1.1", "127.0.1.2"] {
        assert!(grafana.contains(&format!("\tA\t{ip}")), "{grafana}");
    }
    let srv = dig(digs[1]);
    assert!(
        srv.contains("SRV\t1 1 3100 dc1-obs-1.node.dc1.consul."),
        "{srv}"
    );
    let dc2 = dig(digs[2]);
    assert!(dc2.contains("\tA\t127.0.2.1"), "{dc2}");
    let nodata = dig(digs[3]);
    assert!(
        nodata.contains("status: NOERROR") && nodata.contains("ANSWER: 0"),
        "{nodata}"
    );
    assert!(
        nodata.contains("SOA\tns.consul. hostmaster.consul."),
        "{nodata}"
    );
    let nx = dig(digs[4]);
    assert!(
        nx.contains("status: NXDOMAIN") && nx.contains("SOA\tns.consul."),
        "{nx}"
    );
    drop(demo);

    let fire = Demo::start(&["--scenario", "fire"]);
    let story = fire.until("scenario over", Duration::from_secs(90));
    let said = |label: &str, dc: &str| {
        story
            .iter()
            .any(|l| l.contains(label) && l.ends_with(&format!("({dc})")))
    };
    assert!(said("all healthy", "dc1"), "{story:#?}");
    assert!(said("dc1 down", "dc2"), "{story:#?}");
    assert!(said("dc1 recovered", "dc1"), "{story:#?}");
}
