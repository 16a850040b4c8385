//! Issue 5: SIGHUP reloads the configuration file given with `-c`; SIGTERM
//! stops the server.
//!
//! - A good file is applied with no dropped query: a client thread asks
//!   continuously through several reloads while a `[[query]]` appears and
//!   goes, `dns.ttl` changes, and the watches follow (`consul_failover_dns_watches`);
//!   Consul's prepared queries are untouched (`consul_failover_dns_prepared_queries`).
//! - A bad file (an unknown key, malformed TOML, a bad value) is logged,
//!   naming the file, and the old configuration keeps serving; a good file
//!   afterwards is applied.
//! - SIGTERM: exit status 0 within 2 s, also with Consul hung.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::support::{
    Federation, Net, RaiseOnDrop, Server, ask, fault_server_config, http_request, poll, query,
    try_udp,
};

/// How long a reload may take to show in the answers.
const APPLIED_WITHIN: Duration = Duration::from_secs(2);

/// How long a SIGTERM may take to stop the server.
const STOPS_WITHIN: Duration = Duration::from_secs(2);

/// The log line of a reload that was applied.
const RELOADED: &str = "configuration reloaded";

/// The first configuration: grafana failing over to dc2, TTL 0.
const GRAFANA: &str = "\n[[query]]\nname = \"grafana\"\nfailover = { datacenters = [\"dc2\"] }\n";

/// A `[[query]]` added by a reload.
const LOKI: &str = "\n[[query]]\nname = \"loki\"\nfailover = { datacenters = [\"dc2\"] }\n";

/// Formats a duration in milliseconds.
fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// `base` (a [`fault_server_config`]) with `dns.ttl` set to `ttl`.
fn with_ttl(base: &str, ttl: &str) -> String {
    let changed = base.replacen("ttl = \"0s\"", &format!("ttl = \"{ttl}\""), 1);
    assert_ne!(changed, base, "no `ttl = \"0s\"` line to change");
    changed
}

/// The federation of these tests: grafana and loki in dc1 and dc2, two
/// instances each; returns grafana's and loki's dc1 addresses.
fn federation(net: Net) -> (Federation, Vec<Ipv4Addr>, Vec<Ipv4Addr>) {
    let federation = Federation::start(net);
    let grafana =
        federation.register_service("dc1", "grafana", &[net.instance(1, 1), net.instance(1, 2)]);
    federation.register_service("dc2", "grafana", &[net.instance(2, 1), net.instance(2, 2)]);
    let loki =
        federation.register_service("dc1", "loki", &[net.instance(1, 11), net.instance(1, 12)]);
    federation.register_service("dc2", "loki", &[net.instance(2, 11), net.instance(2, 12)]);
    (federation, grafana, loki)
}

/// What the client thread counted.
#[derive(Debug, Default)]
struct Counts {
    /// Queries sent.
    sent: usize,
    /// Queries without a right answer within 500 ms.
    failed: usize,
    /// The first few failures.
    examples: Vec<String>,
    /// The slowest answer.
    slowest: Duration,
}

/// Asks `name` A (EDNS) back to back until `stop`, counting every query
/// that got no answer within 500 ms or an answer other than NOERROR with
/// `want`.
fn client(dns: SocketAddr, name: &str, want: &[Ipv4Addr], stop: &AtomicBool) -> Counts {
    let mut counts = Counts::default();
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        counts.sent += 1;
        let at = started.elapsed();
        match ask(dns, name, true, Duration::from_millis(500)) {
            Some((answer, took)) => {
                counts.slowest = counts.slowest.max(took);
                if answer.rcode != ResponseCode::NoError || answer.addresses != want {
                    counts.failed += 1;
                    if counts.examples.len() < 5 {
                        counts.examples.push(format!("at {}: {answer:?}", ms(at)));
                    }
                }
            }
            None => {
                counts.failed += 1;
                if counts.examples.len() < 5 {
                    counts
                        .examples
                        .push(format!("at {}: no answer in 500 ms", ms(at)));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    counts
}

/// The TTL of the first A record of `name` (over UDP, no EDNS).
fn ttl_of(dns: SocketAddr, name: &str) -> Option<u32> {
    let reply = try_udp(dns, &query(name, RecordType::A), Duration::from_secs(1))?;
    reply.answers.first().map(|record| record.ttl)
}

/// Polls until `probe` holds, for at most [`APPLIED_WITHIN`]; panics
/// with `what` otherwise. Returns how long it took.
fn applied(what: &str, mut probe: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    poll(APPLIED_WITHIN, Duration::from_millis(20), || {
        probe().then(|| started.elapsed())
    })
    .unwrap_or_else(|| panic!("{what}: not applied within {APPLIED_WITHIN:?}"))
}

/// Replaces the configuration file with `config` and sends SIGHUP;
/// panics if the server exits on it.
fn reload(server: &mut Server, config: &str) {
    server.rewrite_config(config);
    server.signal("HUP");
    std::thread::sleep(Duration::from_millis(50));
    if let Some(status) = server.exited() {
        panic!("the server exited on SIGHUP ({status})");
    }
}

/// Whether `name` answers NOERROR with `want`.
fn answers(dns: SocketAddr, name: &str, want: &[Ipv4Addr]) -> bool {
    ask(dns, name, true, Duration::from_secs(1))
        .is_some_and(|(a, _)| a.rcode == ResponseCode::NoError && a.addresses == want)
}

/// Whether `name` answers NXDOMAIN.
fn nxdomain(dns: SocketAddr, name: &str) -> bool {
    ask(dns, name, true, Duration::from_secs(1))
        .is_some_and(|(a, _)| a.rcode == ResponseCode::NXDomain)
}

#[test]
fn sighup_applies_a_good_file_without_dropping_a_query() {
    let net = Net::claim(81);
    let (federation, grafana, loki) = federation(net);
    // A prepared query defined in Consul: reloads must leave it alone.
    let (status, body) = http_request(
        federation.addr("dc1"),
        "POST",
        "/v1/query",
        Some(r#"{"Name":"pq-grafana","Service":{"Service":"grafana"}}"#),
    )
    .expect("create a prepared query");
    assert_eq!(status, 200, "POST /v1/query: {body}");

    let v1 = fault_server_config(net, &federation.url("dc1"), "", GRAFANA);
    let v2 = with_ttl(&format!("{v1}{LOKI}"), "30s");
    let mut server = Server::start_with(net, &v1);
    let dns = server.dns();
    let (grafana_name, loki_name, pq_name) = (
        "grafana.query.consul",
        "loki.query.consul",
        "pq-grafana.query.consul",
    );
    assert!(answers(dns, grafana_name, &grafana));
    assert!(nxdomain(dns, loki_name), "loki is not configured yet");
    assert!(
        answers(dns, pq_name, &grafana),
        "the prepared query answers"
    );
    assert_eq!(ttl_of(dns, grafana_name), Some(0));
    let watches = server.watched_pairs().expect("consul_failover_dns_watches");
    let prepared = server
        .gauge("consul_failover_dns_prepared_queries")
        .expect("consul_failover_dns_prepared_queries");
    println!(
        "before reloads: consul_failover_dns_watches {watches}, consul_failover_dns_prepared_queries {prepared}"
    );
    assert_eq!(prepared, 1.0);

    let stop = AtomicBool::new(false);
    let counts = std::thread::scope(|scope| {
        let _stop_on_panic = RaiseOnDrop(&stop);
        let worker = scope.spawn(|| client(dns, grafana_name, &grafana, &stop));
        let at_start = server.log_lines(&[RELOADED]).len();
        let reloads_logged = |server: &Server| server.log_lines(&[RELOADED]).len() - at_start;

        // 1. loki appears, TTL 30 s, two more watches (loki in dc1, dc2).
        federation.sim.clear_requests(Some("dc1"));
        reload(&mut server, &v2);
        let took = applied("loki added", || answers(dns, loki_name, &loki));
        println!(
            "reload 1 (loki added, ttl 30s): loki answers after {}",
            ms(took)
        );
        applied("ttl 30s", || ttl_of(dns, grafana_name) == Some(30));
        applied("the reload logged", || reloads_logged(&server) >= 1);
        let after_first = reloads_logged(&server);
        let mut seen = 0.0;
        let grew = poll(APPLIED_WITHIN, Duration::from_millis(20), || {
            seen = server.watched_pairs().unwrap_or(-1.0);
            (seen == watches + 2.0).then_some(())
        });
        assert!(
            grew.is_some(),
            "consul_failover_dns_watches is {seen} after adding loki (dc1, dc2), was {watches}"
        );
        let loki_reads: Vec<Option<String>> = federation
            .sim
            .requests("dc1")
            .into_iter()
            .filter(|r| r.path == "/v1/health/service/loki")
            .map(|r| r.param("dc"))
            .collect();
        println!("reads of loki after the reload (their ?dc=): {loki_reads:?}");
        assert!(!loki_reads.is_empty(), "no watch of loki started");

        // 2. loki goes again, TTL back to 0, the watches stop.
        reload(&mut server, &v1);
        let took = applied("loki removed", || nxdomain(dns, loki_name));
        println!("reload 2 (loki removed): NXDOMAIN after {}", ms(took));
        applied("ttl 0s", || ttl_of(dns, grafana_name) == Some(0));
        applied("the reload logged", || {
            reloads_logged(&server) > after_first
        });
        let shrunk = poll(APPLIED_WITHIN, Duration::from_millis(20), || {
            seen = server.watched_pairs().unwrap_or(-1.0);
            (seen == watches).then_some(())
        });
        assert!(
            shrunk.is_some(),
            "consul_failover_dns_watches is {seen} after removing loki, want {watches} again"
        );

        // 3. Six reloads 300 ms apart, alternating, ending with loki.
        for (i, config) in [&v1, &v2, &v1, &v2, &v1, &v2].into_iter().enumerate() {
            reload(&mut server, config);
            std::thread::sleep(Duration::from_millis(250));
            assert!(
                server.exited().is_none(),
                "the server exited after SIGHUP number {}",
                i + 3
            );
        }
        applied("the last reload (loki back)", || {
            answers(dns, loki_name, &loki)
        });
        applied("ttl 30s again", || ttl_of(dns, grafana_name) == Some(30));
        let logged = reloads_logged(&server);
        println!("{logged} reloads logged after 8 SIGHUPs");
        assert!(logged >= 3, "only {logged} reloads logged after 8 SIGHUPs");
        assert!(
            answers(dns, pq_name, &grafana),
            "the prepared query after the reloads"
        );
        let prepared_after = server.gauge("consul_failover_dns_prepared_queries");
        assert_eq!(
            prepared_after,
            Some(prepared),
            "consul_failover_dns_prepared_queries after the reloads"
        );

        stop.store(true, Ordering::Relaxed);
        worker.join().expect("the client thread")
    });
    println!(
        "client during the reloads: {} queries, {} failed, slowest {}",
        counts.sent,
        counts.failed,
        ms(counts.slowest)
    );
    assert!(
        counts.sent >= 100,
        "the client sent only {} queries",
        counts.sent
    );
    assert_eq!(
        counts.failed, 0,
        "queries dropped or wrong during the reloads: {:?}",
        counts.examples
    );
    assert!(server.exited().is_none(), "the server exited");
}

#[test]
fn sighup_with_a_bad_file_keeps_the_old_configuration() {
    let net = Net::claim(82);
    let (federation, grafana, loki) = federation(net);
    let v1 = fault_server_config(net, &federation.url("dc1"), "", GRAFANA);
    let v2 = with_ttl(&format!("{v1}{LOKI}"), "30s");
    let mut server = Server::start_with(net, &v1);
    let dns = server.dns();
    let path = server.config_path().display().to_string();
    let (grafana_name, loki_name) = ("grafana.query.consul", "loki.query.consul");

    let bad = [
        (
            "an unknown key",
            v2.replacen("ttl = \"30s\"", "ttl = \"30s\"\nbogus_key = 1", 1),
            "bogus_key",
        ),
        ("malformed TOML", format!("{v2}\n[[query]\nname = "), ""),
        (
            "a bad value",
            format!("{v2}\n[[query]]\nname = \"tempo\"\non_all_unhealthy = \"explode\"\n"),
            "explode",
        ),
    ];
    let stop = AtomicBool::new(false);
    let counts = std::thread::scope(|scope| {
        let _stop_on_panic = RaiseOnDrop(&stop);
        let worker = scope.spawn(|| client(dns, grafana_name, &grafana, &stop));
        let at_start = server.log_lines(&[RELOADED]).len();
        for (what, config, names) in &bad {
            assert!(
                config.contains(names),
                "{what}: the test's file lacks {names:?}"
            );
            let before = server.log_lines(&[&path]).len();
            reload(&mut server, config);
            let logged = poll(APPLIED_WITHIN, Duration::from_millis(20), || {
                let lines = server.log_lines(&[&path]);
                (lines.len() > before).then_some(lines)
            });
            let Some(lines) = logged else {
                panic!("{what}: no log line naming {path} within {APPLIED_WITHIN:?}");
            };
            println!("{what}: logged {:?}", lines.last());
            if !names.is_empty() {
                assert!(
                    server.logs().contains(names),
                    "{what}: the log does not name {names:?}"
                );
            }
            // The old configuration keeps serving.
            std::thread::sleep(Duration::from_millis(300));
            assert!(server.exited().is_none(), "{what}: the server exited");
            assert!(
                nxdomain(dns, loki_name),
                "{what}: loki answers: the bad file was applied"
            );
            assert_eq!(
                ttl_of(dns, grafana_name),
                Some(0),
                "{what}: the TTL changed"
            );
            assert_eq!(
                server.log_lines(&[RELOADED]).len(),
                at_start,
                "{what}: a bad file was reported as reloaded"
            );
        }
        // A good file afterwards is applied.
        reload(&mut server, &v2);
        let took = applied("the good file after the bad ones", || {
            answers(dns, loki_name, &loki)
        });
        println!("a good file after three bad ones: applied in {}", ms(took));
        assert_eq!(ttl_of(dns, grafana_name), Some(30));
        stop.store(true, Ordering::Relaxed);
        worker.join().expect("the client thread")
    });
    println!(
        "client during the bad reloads: {} queries, {} failed, slowest {}",
        counts.sent,
        counts.failed,
        ms(counts.slowest)
    );
    assert_eq!(
        counts.failed, 0,
        "queries dropped or wrong while bad files were rejected: {:?}",
        counts.examples
    );
}

/// Sends SIGTERM to `server` and asserts it exits with status 0 within
/// [`STOPS_WITHIN`]; returns how long it took.
fn terminate(server: &mut Server, what: &str) -> Duration {
    let sent = Instant::now();
    server.signal("TERM");
    let status = server.wait_exit(STOPS_WITHIN);
    let took = sent.elapsed();
    let Some(status) = status else {
        panic!("{what}: still running {STOPS_WITHIN:?} after SIGTERM");
    };
    println!("{what}: exited with {status} {} after SIGTERM", ms(took));
    assert!(
        status.success(),
        "{what}: exit status {status} after SIGTERM"
    );
    took
}

#[test]
fn sigterm_stops_gracefully() {
    let net = Net::claim(83);
    let (federation, grafana, _) = federation(net);
    let mut server = Server::start_with(
        net,
        &fault_server_config(net, &federation.url("dc1"), "", GRAFANA),
    );
    assert!(answers(server.dns(), "grafana.query.consul", &grafana));
    terminate(&mut server, "serving");
}

#[test]
fn sigterm_stops_gracefully_with_consul_hung() {
    let net = Net::claim(84);
    let (federation, grafana, _) = federation(net);
    let mut server = Server::start_with(
        net,
        &fault_server_config(net, &federation.url("dc1"), "", GRAFANA),
    );
    let dns = server.dns();
    assert!(answers(dns, "grafana.query.consul", &grafana));
    // Requests to Consul now hang; wake the blocked watches so that their
    // next reads hang too.
    federation.sim.hang("dc1", true);
    federation.set_check(
        "dc1",
        "grafana-1",
        "grafana-health",
        consul_sim::model::WARNING,
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        answers(dns, "grafana.query.consul", &grafana),
        "answers with Consul hung"
    );
    terminate(&mut server, "Consul hung");
    federation.sim.hang("dc1", false);
}
