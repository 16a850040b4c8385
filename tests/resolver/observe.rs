//! What an operator sees of a failover (issue 7): `/metrics` (checked
//! with `promtool check metrics`), `/v1/explain` and the `explain`
//! command, and the `/v1/events` stream, through local healthy, failover,
//! failback, stale and all-unhealthy states of `grafana.query.consul`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use consul_sim::model::{CRITICAL, PASSING};
use hickory_proto::rr::RecordType;
use serde_json::Value;

use crate::support::{
    Federation, Instance, Net, Server, http_get, ipv4s, metric_value, poll, query, run_bounded, udp,
};

const NAME: &str = "grafana.query.consul";

/// `/v1/explain` for `name` A.
fn explain(admin: SocketAddr, name: &str) -> Value {
    let (status, body) =
        http_get(admin, &format!("/v1/explain?name={name}&type=A")).expect("GET /v1/explain");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// Polls `/v1/explain` until `check` holds (at most 5 s); the last
/// explanation.
fn explain_until(admin: SocketAddr, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    poll(Duration::from_secs(5), Duration::from_millis(20), || {
        last = explain(admin, NAME);
        check(&last).then_some(())
    })
    .unwrap_or_else(|| panic!("{what}: /v1/explain still says\n{last:#}"));
    last
}

/// The datacenter entry `dc` of an explanation.
fn datacenter<'a>(explanation: &'a Value, dc: &str) -> &'a Value {
    explanation["datacenters"]
        .as_array()
        .and_then(|dcs| dcs.iter().find(|d| d["name"] == dc))
        .unwrap_or_else(|| panic!("no {dc} in {explanation:#}"))
}

/// A `/v1/events` subscriber: each SSE message's `event` and parsed
/// `data`, as they arrive.
struct Events {
    received: mpsc::Receiver<(String, Value)>,
    seen: Vec<(String, Value)>,
}

impl Events {
    fn connect(admin: SocketAddr) -> Self {
        let mut stream = TcpStream::connect(admin).expect("connect to admin");
        // HTTP/1.0: the body is the rest of the connection, unchunked.
        stream
            .write_all(b"GET /v1/events HTTP/1.0\r\n\r\n")
            .expect("send");
        let (sender, received) = mpsc::channel();
        std::thread::spawn(move || {
            let mut event = String::new();
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { return };
                if let Some(name) = line.strip_prefix("event: ") {
                    event = name.to_owned();
                } else if let Some(data) = line.strip_prefix("data: ") {
                    let value = serde_json::from_str(data).expect("event data is JSON");
                    if sender.send((event.clone(), value)).is_err() {
                        return;
                    }
                }
            }
        });
        Self {
            received,
            seen: Vec::new(),
        }
    }

    /// Waits (at most `limit`) for an event matching `want`.
    fn wait(&mut self, limit: Duration, want: impl Fn(&str, &Value) -> bool) -> Option<Value> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let (event, data) = self.received.recv_timeout(left).ok()?;
            let matched = want(&event, &data);
            self.seen.push((event, data.clone()));
            if matched {
                return Some(data);
            }
        }
    }

    /// Waits (at most 5 s) for an event matching `want`; panics with what
    /// came instead.
    fn expect(&mut self, what: &str, want: impl Fn(&str, &Value) -> bool) -> Value {
        self.wait(Duration::from_secs(5), want)
            .unwrap_or_else(|| panic!("no {what} event within 5 s; received: {:#?}", self.seen))
    }
}

/// `consul_failover_dns_failovers_total` for grafana from → to.
fn failovers(metrics: &str, from: &str, to: &str) -> f64 {
    metric_value(
        metrics,
        "consul_failover_dns_failovers_total",
        &[("query", "grafana"), ("from", from), ("to", to)],
    )
}

/// Every metric family of a scrape with its label names (`le` aside;
/// a histogram's `_bucket`, `_sum` and `_count` as one).
fn families(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let histograms: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" histogram"))
        .collect();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let series = line.rsplit_once(' ').map_or(line, |(s, _)| s);
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let name = histograms
            .iter()
            .find(|h| {
                ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|suffix| name == format!("{h}{suffix}"))
            })
            .map_or(name, |h| *h);
        let entry = out.entry(name.to_owned()).or_default();
        for pair in labels
            .trim_end_matches('}')
            .split(',')
            .filter(|p| !p.is_empty())
        {
            let label = pair.split_once('=').map_or(pair, |(l, _)| l);
            if label != "le" {
                entry.insert(label.to_owned());
            }
        }
    }
    out
}

/// `promtool check metrics` on `text`: it must find nothing to say.
fn promtool_accepts(text: &str) {
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        panic!("`promtool` is not installed; this test needs it: apt-get install -y prometheus");
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}\n{}{}\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn metrics_explain_and_events_follow_a_failover() {
    let net = Net::claim(150);
    let federation = Federation::start(net);
    let (dc1, dc2) = federation.grafana_everywhere(net);
    let check = Instance::check_id("grafana");
    let server = Server::start(net, &federation);
    let (dns, admin) = (server.dns(), net.admin());
    let answer = || ipv4s(&udp(dns, &query(NAME, RecordType::A)).answers);

    // Local healthy. A subscriber first gets the current state; the
    // server follows grafana from its first data on, a moment after
    // `/ready`, so a subscriber that came too early tries again.
    let current =
        |e: &str, d: &Value| e == "failover" && d["query"] == "grafana" && d["to"] == "dc1";
    let mut events = Events::connect(admin);
    let mut found = false;
    for _ in 0..50 {
        if events.wait(Duration::from_millis(100), current).is_some() {
            found = true;
            break;
        }
        events = Events::connect(admin);
    }
    assert!(found, "no current state of grafana: {:#?}", events.seen);
    assert!(
        events.seen.iter().any(|(e, d)| e == "datacenter"
            && d["datacenter"] == "dc2"
            && d["state"] == "reachable"),
        "the current state names dc2 reachable: {:#?}",
        events.seen
    );
    assert_eq!(answer(), dc1);
    assert_eq!(answer(), dc1);
    let before = server.metrics();
    let value = |text: &str, metric: &str, labels: &[(&str, &str)]| {
        metric_value(text, &format!("consul_failover_dns_{metric}"), labels)
    };
    assert!(
        value(
            &before,
            "answers_total",
            &[("query", "grafana"), ("datacenter", "dc1")]
        ) >= 2.0,
        "{before}"
    );
    assert!(
        value(
            &before,
            "queries_total",
            &[("qtype", "A"), ("rcode", "NOERROR"), ("kind", "query")]
        ) >= 2.0,
        "{before}"
    );
    let healthy = |text: &str, dc: &str| {
        value(
            text,
            "healthy_instances",
            &[("service", "grafana"), ("datacenter", dc)],
        )
    };
    assert_eq!(healthy(&before, "dc1"), 2.0, "{before}");
    assert_eq!(healthy(&before, "dc2"), 2.0, "{before}");
    assert!(
        value(&before, "watches", &[("state", "synced")]) >= 2.0,
        "{before}"
    );
    assert_eq!(
        value(&before, "watches", &[("state", "stale")]),
        0.0,
        "{before}"
    );
    assert_eq!(
        value(&before, "datacenter_reachable", &[("datacenter", "dc1")]),
        1.0
    );
    assert!(
        value(
            &before,
            "consul_requests_total",
            &[("datacenter", "dc2"), ("outcome", "ok")]
        ) >= 1.0,
        "{before}"
    );
    assert!(
        value(
            &before,
            "consul_request_duration_seconds_count",
            &[("datacenter", "dc1"), ("kind", "immediate")]
        ) >= 1.0,
        "{before}"
    );
    assert!(
        before.contains("consul_failover_dns_build_info{version=\""),
        "{before}"
    );
    assert_eq!(failovers(&before, "dc1", "dc2"), 0.0, "{before}");
    promtool_accepts(&before);
    // The list the shipped dashboard and scrape job are checked against
    // is what the server exports (failovers_total has no series yet).
    let listed: BTreeMap<String, BTreeSet<String>> = crate::recipes::METRICS
        .iter()
        .map(|(name, labels)| {
            let labels = labels.iter().map(|l| (*l).to_owned()).collect();
            ((*name).to_owned(), labels)
        })
        .filter(|(name, _)| !name.ends_with("failovers_total"))
        .collect();
    assert_eq!(families(&before), listed, "{before}");
    let local = explain(admin, NAME);
    assert_eq!(local["chosen"], "dc1", "{local:#}");
    assert_eq!(local["reason"], "local_healthy", "{local:#}");
    assert_eq!(datacenter(&local, "dc1")["usable"], 2, "{local:#}");
    assert_eq!(datacenter(&local, "dc1")["state"], "fresh", "{local:#}");
    assert_eq!(
        local["records"].as_array().map(Vec::len),
        Some(2),
        "{local:#}"
    );
    assert!(
        local["definition"]
            .as_str()
            .is_some_and(|d| d.contains("[[query]] \"grafana\"")),
        "{local:#}"
    );

    // Failover: every dc1 instance critical.
    federation.set_checks("dc1", &check, CRITICAL);
    let moved = events.expect("failover", |e, d| {
        e == "failover" && d["from"] == "dc1" && d["to"] == "dc2"
    });
    assert_eq!(moved["query"], "grafana", "{moved:#}");
    assert_eq!(moved["reason"], "failover", "{moved:#}");
    assert_eq!(answer(), dc2);
    let over = explain(admin, NAME);
    assert_eq!(over["chosen"], "dc2", "{over:#}");
    assert_eq!(over["reason"], "failover", "{over:#}");
    assert_eq!(datacenter(&over, "dc1")["usable"], 0, "{over:#}");
    assert_eq!(datacenter(&over, "dc1")["total"], 2, "{over:#}");
    let after = server.metrics();
    assert_eq!(failovers(&after, "dc1", "dc2"), 1.0, "{after}");
    assert_eq!(healthy(&after, "dc1"), 0.0, "{after}");
    assert!(
        value(
            &after,
            "answers_total",
            &[("query", "grafana"), ("datacenter", "dc2")]
        ) >= 1.0,
        "{after}"
    );
    // The command prints the same, for people.
    let cli = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_consul-failover-dns")).args([
            "explain",
            "grafana",
            "--admin-listen",
            &admin.to_string(),
        ]),
        Duration::from_secs(10),
    );
    let printed = String::from_utf8_lossy(&cli.stdout);
    assert!(
        cli.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    assert!(
        printed.starts_with("grafana.query.consul. A: NOERROR from dc2 (failover)\n"),
        "{printed}"
    );
    assert!(printed.contains("<- answers"), "{printed}");

    // Failback.
    federation.set_checks("dc1", &check, PASSING);
    events.expect("failback", |e, d| {
        e == "failover" && d["from"] == "dc2" && d["to"] == "dc1"
    });
    assert_eq!(failovers(&server.metrics(), "dc2", "dc1"), 1.0);

    // Stale: dc1's Consul (the agent every read goes through) hangs.
    federation.sim.hang("dc1", true);
    events.expect("dc1 unreachable", |e, d| {
        e == "datacenter" && d["datacenter"] == "dc1" && d["state"] == "unreachable"
    });
    let stale = explain_until(admin, "dc1 hung", |e| e["reason"] == "stale");
    assert_eq!(stale["chosen"], "dc1", "{stale:#}");
    assert_eq!(datacenter(&stale, "dc1")["state"], "stale", "{stale:#}");
    assert_eq!(datacenter(&stale, "dc1")["reachable"], false, "{stale:#}");
    assert_eq!(stale["stale"], true, "{stale:#}");
    assert_eq!(answer(), dc1);
    let hung = server.metrics();
    assert_eq!(
        value(&hung, "datacenter_reachable", &[("datacenter", "dc1")]),
        0.0,
        "{hung}"
    );
    assert!(
        value(
            &hung,
            "datacenter_data_age_seconds",
            &[("datacenter", "dc1")]
        ) > 0.0,
        "{hung}"
    );
    assert!(
        value(&hung, "watches", &[("state", "stale")]) >= 1.0,
        "{hung}"
    );
    assert!(value(&hung, "stale_answers_total", &[]) >= 1.0, "{hung}");
    federation.sim.hang("dc1", false);
    events.expect("dc1 reachable", |e, d| {
        e == "datacenter" && d["datacenter"] == "dc1" && d["state"] == "reachable"
    });
    explain_until(admin, "dc1 back", |e| e["reason"] == "local_healthy");

    // All unhealthy: NXDOMAIN (on_all_unhealthy's default), no datacenter.
    federation.set_checks("dc1", &check, CRITICAL);
    federation.set_checks("dc2", &check, CRITICAL);
    let gone = events.expect("to none", |e, d| {
        e == "failover" && d["to"].is_null() && !d["from"].is_null()
    });
    assert_eq!(gone["reason"], "all_unhealthy", "{gone:#}");
    let none = explain_until(admin, "all critical", |e| e["reason"] == "all_unhealthy");
    assert!(none["chosen"].is_null(), "{none:#}");
    assert_eq!(none["rcode"], "NXDOMAIN", "{none:#}");
    assert!(
        none["detail"]
            .as_str()
            .is_some_and(|d| d.contains("on_all_unhealthy = \"nxdomain\"")),
        "{none:#}"
    );

    // A reload is counted.
    let hup = run_bounded(
        Command::new("kill").args(["-HUP", &server.pid().to_string()]),
        Duration::from_secs(5),
    );
    assert!(hup.status.success());
    poll(Duration::from_secs(5), Duration::from_millis(20), || {
        (value(
            &server.metrics(),
            "config_reloads_total",
            &[("outcome", "ok")],
        ) == 1.0)
            .then_some(())
    })
    .expect("config_reloads_total{outcome=\"ok\"} is 1 after SIGHUP");
    promtool_accepts(&server.metrics());
}

#[test]
fn explain_refuses_what_it_cannot_explain() {
    let net = Net::claim(151);
    let federation = Federation::start(net);
    let server = Server::start(net, &federation);
    let admin = net.admin();
    for (path, want) in [
        ("/v1/explain", "missing name"),
        (
            "/v1/explain?name=grafana&type=NOPE",
            "not a DNS record type",
        ),
        ("/v1/explain?name=www.example.com", "not in the zone"),
    ] {
        let (status, body) = http_get(admin, path).expect("GET");
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains(want), "{path}: {body}");
    }
    // Not a query: answered, without a failover chain.
    let apex = explain(admin, "consul.");
    assert_eq!(apex["reason"], "not_a_query", "{apex:#}");
    drop(server);
}
