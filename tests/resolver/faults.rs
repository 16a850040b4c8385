//! Issue 5, "Survive the fire": the server keeps answering from memory
//! when Consul misbehaves, and says so.
//!
//! One test per fault of the contract: the local agent's listener stopped
//! while dc2 is reached through its direct address (dc1's answers flagged
//! stale with Extended DNS Error 3, dc2's fresh); an index rewind; a hung
//! and a slow Consul; bursts of 5xx and 429; leader loss; a 403 on one
//! service (logged once, the token never); `failback_after`; the three
//! `on_all_unhealthy` policies; start-up with Consul down (SERVFAIL with
//! EDE 14 at once, `/ready` 503, recovery without restart); and data older
//! than `consul.max_stale` (unknown: failover goes on, else SERVFAIL with
//! EDE 22, never NXDOMAIN).
//!
//! Every wait is bounded; the figures are printed (`--nocapture`).

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use consul_sim::model::{CRITICAL, PASSING, WARNING};
use hickory_proto::op::ResponseCode;

use crate::support::{
    Answered, EDE_NO_REACHABLE_AUTHORITY, EDE_NOT_READY, Federation, Instance, Net, Server, ask,
    direct_datacenter, fault_server_config, http_get, metric_value, poll, run_bounded,
};

/// The bound on every answer's latency while Consul misbehaves.
const PROMPT: Duration = Duration::from_millis(100);

/// How soon a datacenter whose Consul stopped answering must be flagged
/// stale (the contract says ~1 s: a probe every 200 ms, 400 ms timeout).
const STALE_WITHIN: Duration = Duration::from_millis(1500);

/// How soon a datacenter must be fresh again once its Consul answers.
const FRESH_WITHIN: Duration = Duration::from_secs(3);

/// How long a health change seen by a working watch may take to show.
const CHANGE_WITHIN: Duration = Duration::from_millis(1500);

/// How long a watch may take to recover after errors (the watcher's
/// backoff tops out at 10 s).
const RECOVER_WITHIN: Duration = Duration::from_secs(12);

/// The `[[query]]` of most tests: grafana, local dc1, failing over to dc2.
const GRAFANA: &str = "\n[[query]]\nname = \"grafana\"\nfailover = { datacenters = [\"dc2\"] }\n";

/// Formats a duration in milliseconds.
fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Asks `name` A over UDP (with EDNS when `edns`); panics if no answer
/// came within 1 s.
fn must_ask(dns: SocketAddr, name: &str, edns: bool) -> (Answered, Duration) {
    ask(dns, name, edns, Duration::from_secs(1))
        .unwrap_or_else(|| panic!("{name}: no answer within 1 s"))
}

/// NOERROR with exactly `addresses` (sorted).
fn is_addresses(answer: &Answered, addresses: &[Ipv4Addr]) -> bool {
    answer.rcode == ResponseCode::NoError && answer.addresses == addresses
}

/// Asks `name` (EDNS) every 20 ms until `accept` holds, for at most
/// `limit`: the time since `since` and that answer. Panics with `what`
/// and the last answer if it never came.
fn expect_within(
    dns: SocketAddr,
    name: &str,
    since: Instant,
    limit: Duration,
    what: &str,
    accept: impl Fn(&Answered) -> bool,
) -> (Duration, Answered) {
    let deadline = since + limit;
    let mut last = None;
    loop {
        if let Some((answer, _)) = ask(dns, name, true, Duration::from_secs(1)) {
            if accept(&answer) {
                return (since.elapsed(), answer);
            }
            last = Some(answer);
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {name} still answers {last:?} {limit:?} after the change"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One sample of [`sample`].
#[derive(Debug)]
struct Sample {
    /// When it was asked, since the start of the sampling.
    at: Duration,
    /// The name asked.
    name: &'static str,
    /// The answer (`None`: nothing within 1 s).
    answer: Option<Answered>,
    /// How long the answer took.
    took: Duration,
}

/// Asks each of `names` (EDNS) every `every` for `length`.
fn sample(
    dns: SocketAddr,
    names: &[&'static str],
    length: Duration,
    every: Duration,
) -> Vec<Sample> {
    let start = Instant::now();
    let mut out = Vec::new();
    while start.elapsed() < length {
        for &name in names {
            let at = start.elapsed();
            let asked = Instant::now();
            let answer = ask(dns, name, true, Duration::from_secs(1));
            out.push(Sample {
                at,
                name,
                took: answer.as_ref().map_or(asked.elapsed(), |(_, took)| *took),
                answer: answer.map(|(answer, _)| answer),
            });
        }
        std::thread::sleep(every);
    }
    out
}

/// Asserts every sample was answered within [`PROMPT`]; returns the
/// slowest answer.
fn assert_prompt(samples: &[Sample], what: &str) -> Duration {
    for s in samples {
        assert!(
            s.answer.is_some(),
            "{what}: {} at {} got no answer within 1 s",
            s.name,
            ms(s.at)
        );
        assert!(
            s.took <= PROMPT,
            "{what}: {} at {} took {} (bound {})",
            s.name,
            ms(s.at),
            ms(s.took),
            ms(PROMPT)
        );
    }
    samples.iter().map(|s| s.took).max().unwrap_or_default()
}

/// The answers of `samples`, with the name and time, that `accept`
/// rejects.
fn rejected(samples: &[Sample], accept: impl Fn(&Sample, &Answered) -> bool) -> Vec<&Sample> {
    samples
        .iter()
        .filter(|s| s.answer.as_ref().is_some_and(|a| !accept(s, a)))
        .collect()
}

/// Requests for `/v1/health/service/<service>` that `dc`'s listener
/// received for datacenter `target` (no `?dc=` means the listener's own).
fn health_requests(
    federation: &Federation,
    dc: &str,
    service: &str,
    target: &str,
) -> Vec<consul_sim::RecordedRequest> {
    let path = format!("/v1/health/service/{service}");
    federation
        .sim
        .requests(dc)
        .into_iter()
        .filter(|r| r.path == path && r.param("dc").unwrap_or_else(|| dc.to_owned()) == target)
        .collect()
}

//------------ (a) the local agent down, dc2 reached directly -----------------

#[test]
fn local_agent_down_dc2_direct_fresh_dc1_stale() {
    let net = Net::claim(70);
    let federation = Federation::start(net);
    let (dc1, dc2) = federation.grafana_everywhere(net);
    let config = fault_server_config(
        net,
        &federation.url("dc1"),
        "",
        &format!(
            "{GRAFANA}{}",
            direct_datacenter("dc2", &federation.url("dc2"))
        ),
    );
    let server = Server::start_with(net, &config);
    let dns = server.dns();
    let (local, service_dc2, query_dc2) = (
        "grafana.query.consul",
        "grafana.service.dc2.consul",
        "grafana.query.dc2.consul",
    );

    // Everything fresh at first.
    for (name, want) in [(local, &dc1), (service_dc2, &dc2), (query_dc2, &dc2)] {
        let (answer, _) = must_ask(dns, name, true);
        assert!(
            is_addresses(&answer, want),
            "{name}: {answer:?}, want {want:?}"
        );
        assert!(
            answer.ede.is_empty(),
            "{name} before any fault: EDE {:?}",
            answer.ede
        );
    }
    // dc2 is read through its direct address, not only through the agent.
    let direct = health_requests(&federation, "dc2", "grafana", "dc2");
    println!(
        "requests for grafana received by dc2's own listener: {}",
        direct.len()
    );
    assert!(
        !direct.is_empty(),
        "dc2 has a direct address, but its listener received no /v1/health/service/grafana"
    );

    // The local agent goes away.
    let stopped = Instant::now();
    federation.stop_listener("dc1");
    let (stale_after, answer) = expect_within(
        dns,
        local,
        stopped,
        STALE_WITHIN,
        "dc1 stale",
        Answered::stale,
    );
    assert!(
        is_addresses(&answer, &dc1),
        "{local}: the stale answer should still be dc1's {dc1:?}: {answer:?}"
    );
    println!(
        "dc1's answers flagged stale {} after its listener stopped",
        ms(stale_after)
    );

    // For a while: dc1's answers stale but right, dc2's fresh.
    let samples = sample(
        dns,
        &[local, service_dc2, query_dc2],
        Duration::from_secs(1),
        Duration::from_millis(20),
    );
    let slowest = assert_prompt(&samples, "local agent down");
    let wrong = rejected(&samples, |s, a| {
        if s.name == local {
            is_addresses(a, &dc1) && a.stale()
        } else {
            is_addresses(a, &dc2) && !a.stale()
        }
    });
    assert!(
        wrong.is_empty(),
        "with dc1's agent down, {local} must be dc1's {dc1:?} flagged stale (EDE 3) and dc2's \
         names dc2's {dc2:?} unflagged; {} of {} samples were not, e.g. {:?}",
        wrong.len(),
        samples.len(),
        &wrong[..wrong.len().min(5)]
    );
    let stale_seen = samples
        .iter()
        .filter(|s| s.answer.as_ref().is_some_and(Answered::stale))
        .count()
        + 1;
    println!(
        "local agent down: {} samples, slowest {}, {stale_seen} stale answers seen",
        samples.len(),
        ms(slowest)
    );

    // Without EDNS the stale answer carries no OPT record.
    let (plain, _) = must_ask(dns, local, false);
    assert!(
        is_addresses(&plain, &dc1),
        "{local} without EDNS: {plain:?}"
    );
    assert!(
        !plain.opt,
        "{local} without EDNS got an OPT record: {plain:?}"
    );

    // dc2 is still watched live: a change there shows, unflagged.
    let changed = Instant::now();
    federation.set_check("dc2", "grafana-1", &Instance::check_id("grafana"), CRITICAL);
    let survivor = vec![net.instance(2, 2)];
    let (took, _) = expect_within(
        dns,
        service_dc2,
        changed,
        CHANGE_WITHIN,
        "a dc2 change with dc1's agent down",
        |a| is_addresses(a, &survivor) && !a.stale(),
    );
    println!(
        "a dc2 health change showed {} later, with dc1's agent down",
        ms(took)
    );

    let counted = metric_value(
        &server.metrics(),
        "consul_failover_dns_stale_answers_total",
        &[],
    );
    println!("consul_failover_dns_stale_answers_total = {counted}");
    assert!(
        counted >= stale_seen as f64,
        "consul_failover_dns_stale_answers_total is {counted}, but {stale_seen} stale answers were seen"
    );

    // The agent comes back: fresh again.
    let restarted = Instant::now();
    federation.start_listener("dc1");
    let (fresh_after, _) = expect_within(
        dns,
        local,
        restarted,
        FRESH_WITHIN,
        "dc1 fresh again",
        |a| is_addresses(a, &dc1) && a.ede.is_empty(),
    );
    println!(
        "dc1 fresh again {} after its listener restarted",
        ms(fresh_after)
    );
}

//------------ (b) index rewind -----------------------------------------------

#[test]
fn index_rewind_resets_the_watch_and_answers_stay_right() {
    let net = Net::claim(71);
    let federation = Federation::start(net);
    let (dc1, dc2) = federation.grafana_everywhere(net);
    let check = Instance::check_id("grafana");
    let server = Server::start_with(
        net,
        &fault_server_config(net, &federation.url("dc1"), "", GRAFANA),
    );
    let dns = server.dns();
    let name = "grafana.query.consul";
    let (answer, _) = must_ask(dns, name, true);
    assert!(is_addresses(&answer, &dc1), "{answer:?}");

    // Rewind dc1 (a snapshot restore): every blocked read returns at once
    // with a lower index.
    let before = federation.sim.raft_index("dc1");
    federation.sim.clear_requests(Some("dc1"));
    federation.sim.rewind_index("dc1", 1);
    println!("dc1's index rewound from {before} to 1");
    let samples = sample(
        dns,
        &[name],
        Duration::from_secs(1),
        Duration::from_millis(10),
    );
    let slowest = assert_prompt(&samples, "after the rewind");
    let wrong = rejected(&samples, |_, a| is_addresses(a, &dc1) && !a.stale());
    assert!(
        wrong.is_empty(),
        "after the rewind {name} must stay dc1's {dc1:?}, unflagged: {:?}",
        &wrong[..wrong.len().min(5)]
    );
    println!(
        "rewind: {} samples right, slowest {}",
        samples.len(),
        ms(slowest)
    );

    // The watch started over from index 0 (a non-blocking re-read).
    let reread = poll(Duration::from_secs(2), Duration::from_millis(20), || {
        health_requests(&federation, "dc1", "grafana", "dc1")
            .into_iter()
            .find(|r| r.param("index").is_none_or(|i| i == "0"))
    });
    let seen: Vec<Option<String>> = health_requests(&federation, "dc1", "grafana", "dc1")
        .iter()
        .map(|r| r.param("index"))
        .collect();
    assert!(
        reread.is_some(),
        "no read of grafana in dc1 with index 0 after the rewind (indexes sent: {seen:?})"
    );

    // A change after the rewind shows at once: with the old, higher index
    // the read would block for the whole wait (5 s).
    let changed = Instant::now();
    federation.set_check("dc1", "grafana-1", &check, CRITICAL);
    let survivor = vec![net.instance(1, 2)];
    let (took, _) = expect_within(
        dns,
        name,
        changed,
        CHANGE_WITHIN,
        "change after rewind",
        |a| is_addresses(a, &survivor),
    );
    println!("a dc1 change after the rewind showed in {}", ms(took));

    // The dc1 watch's next read must be blocked in Consul before the
    // restore. One that arrives after it, with the old and now higher
    // index, blocks the whole wait (reference §2: Consul's behaviour, not
    // the resolver's), and this test would race the watch.
    let current = federation.sim.raft_index("dc1").to_string();
    let blocked = poll(Duration::from_secs(2), Duration::from_millis(10), || {
        health_requests(&federation, "dc1", "grafana", "dc1")
            .into_iter()
            .find(|r| r.param("index").as_deref() == Some(current.as_str()))
    });
    assert!(
        blocked.is_some(),
        "the dc1 watch did not block at index {current} after the change"
    );
    // Recorded on arrival; give the read a moment to start waiting.
    std::thread::sleep(Duration::from_millis(50));

    // Rewind both datacenters (dc2 is read through dc1's agent), then
    // fail over and change dc2: both watches follow.
    federation.sim.rewind_index("dc1", 1);
    federation.sim.rewind_index("dc2", 1);
    let changed = Instant::now();
    federation.set_checks("dc1", &check, CRITICAL);
    let (took, _) = expect_within(
        dns,
        name,
        changed,
        CHANGE_WITHIN,
        "failover after rewind",
        |a| is_addresses(a, &dc2),
    );
    println!(
        "failover to dc2 after rewinding both showed in {}",
        ms(took)
    );
    let changed = Instant::now();
    federation.set_check("dc2", "grafana-2", &check, CRITICAL);
    let survivor = vec![net.instance(2, 1)];
    let (took, _) = expect_within(
        dns,
        name,
        changed,
        CHANGE_WITHIN,
        "dc2 change after rewind",
        |a| is_addresses(a, &survivor),
    );
    println!("a dc2 change after its rewind showed in {}", ms(took));
}

//------------ (c) a hung, then a slow Consul ---------------------------------

#[test]
fn hung_consul_answers_flow_from_memory_flagged_stale() {
    let net = Net::claim(72);
    let federation = Federation::start(net);
    let (dc1, _) = federation.grafana_everywhere(net);
    let server = Server::start_with(
        net,
        &fault_server_config(net, &federation.url("dc1"), "", GRAFANA),
    );
    let dns = server.dns();
    let name = "grafana.query.consul";

    for (fault, start, stop) in [
        (
            "hang",
            Box::new(|| federation.sim.hang("dc1", true)) as Box<dyn Fn()>,
            Box::new(|| federation.sim.hang("dc1", false)) as Box<dyn Fn()>,
        ),
        (
            "1.5 s delay",
            Box::new(|| {
                federation
                    .sim
                    .set_delay("dc1", Some(Duration::from_millis(1500)));
            }),
            Box::new(|| federation.sim.set_delay("dc1", None)),
        ),
    ] {
        let (answer, _) = must_ask(dns, name, true);
        assert!(
            is_addresses(&answer, &dc1) && answer.ede.is_empty(),
            "before the {fault}: {answer:?}"
        );
        start();
        let samples = sample(
            dns,
            &[name],
            Duration::from_secs(3),
            Duration::from_millis(20),
        );
        let slowest = assert_prompt(&samples, fault);
        let wrong = rejected(&samples, |_, a| is_addresses(a, &dc1));
        assert!(
            wrong.is_empty(),
            "{fault}: {name} must keep answering dc1's {dc1:?} from memory: {:?}",
            &wrong[..wrong.len().min(5)]
        );
        let first_stale = samples
            .iter()
            .position(|s| s.answer.as_ref().is_some_and(Answered::stale));
        let Some(first_stale) = first_stale else {
            panic!("{fault}: no answer flagged stale (EDE 3) in 3 s");
        };
        let flagged_at = samples[first_stale].at;
        let unflagged_later = rejected(&samples[first_stale..], |_, a| a.stale());
        println!(
            "{fault}: {} answers, slowest {}, flagged stale after {}",
            samples.len(),
            ms(slowest),
            ms(flagged_at)
        );
        assert!(
            flagged_at <= STALE_WITHIN,
            "{fault}: first stale answer after {}, want within {}",
            ms(flagged_at),
            ms(STALE_WITHIN)
        );
        assert!(
            unflagged_later.is_empty(),
            "{fault}: unflagged answers after the first stale one: {:?}",
            &unflagged_later[..unflagged_later.len().min(5)]
        );
        // Without EDNS: the same addresses, no OPT record.
        let (plain, _) = must_ask(dns, name, false);
        assert!(
            is_addresses(&plain, &dc1) && !plain.opt,
            "{fault}, no EDNS: {plain:?}"
        );

        let lifted = Instant::now();
        stop();
        let (fresh, _) = expect_within(dns, name, lifted, FRESH_WITHIN, fault, |a| {
            is_addresses(a, &dc1) && a.ede.is_empty()
        });
        println!("{fault}: fresh again {} after it was lifted", ms(fresh));
    }
}

//------------ (d) bursts of 5xx and 429 --------------------------------------

#[test]
fn error_bursts_answers_keep_coming() {
    let net = Net::claim(73);
    let federation = Federation::start(net);
    let check = Instance::check_id("grafana");
    let all = federation.register_service(
        "dc1",
        "grafana",
        &[net.instance(1, 1), net.instance(1, 2), net.instance(1, 3)],
    );
    federation.register_service("dc2", "grafana", &[net.instance(2, 1), net.instance(2, 2)]);
    let server = Server::start_with(
        net,
        &fault_server_config(net, &federation.url("dc1"), "", GRAFANA),
    );
    let dns = server.dns();
    let name = "grafana.query.consul";
    let two = vec![net.instance(1, 2), net.instance(1, 3)];
    let (answer, _) = must_ask(dns, name, true);
    assert!(is_addresses(&answer, &all), "{answer:?}");

    // 1. Every read of grafana fails with a 500 for 2 s. A warning (still
    // usable) wakes the blocked watch so that its next read fails.
    let started = Instant::now();
    federation.sim.fail_next(
        "dc1",
        100_000,
        500,
        None,
        Some("/v1/health/service/grafana"),
    );
    federation.set_check("dc1", "grafana-3", &check, WARNING);
    let samples = sample(
        dns,
        &[name],
        Duration::from_secs(2),
        Duration::from_millis(20),
    );
    let slowest = assert_prompt(&samples, "500s");
    let wrong = rejected(&samples, |_, a| is_addresses(a, &all));
    assert!(
        wrong.is_empty(),
        "500s: {name} must keep answering {all:?}: {:?}",
        &wrong[..wrong.len().min(5)]
    );
    let failed = health_requests(&federation, "dc1", "grafana", "dc1")
        .into_iter()
        .filter(|r| r.received_unix_ms >= unix_ms_at(started))
        .count();
    println!(
        "500s for 2 s: {} answers, slowest {}, {failed} reads of grafana in dc1 failed",
        samples.len(),
        ms(slowest)
    );
    assert!(
        failed >= 2,
        "the watch did not retry after a 500 ({failed} reads in 2 s)"
    );
    assert!(
        failed <= 30,
        "{failed} reads in 2 s of 500s: the watch does not back off"
    );

    // A change while reads fail, then the fault lifted: it shows once the
    // backoff lets the watch read again.
    federation.set_check("dc1", "grafana-1", &check, CRITICAL);
    let lifted = Instant::now();
    federation.sim.clear_faults("dc1");
    let (took, _) = expect_within(dns, name, lifted, RECOVER_WITHIN, "after the 500s", |a| {
        is_addresses(a, &two)
    });
    println!(
        "after the 500s: a change made during them showed {} after they stopped",
        ms(took)
    );

    // 2. 429 on every request (probes, catalog, health) for 15 requests,
    // then 503 for 2 s: answers keep coming.
    for (status, count) in [(429_u16, 15_u32), (503, 100_000)] {
        federation.sim.fail_next("dc1", count, status, None, None);
        federation.set_check("dc1", "grafana-3", &check, PASSING);
        let samples = sample(
            dns,
            &[name],
            Duration::from_secs(2),
            Duration::from_millis(20),
        );
        let slowest = assert_prompt(&samples, "429/503");
        let wrong = rejected(&samples, |_, a| is_addresses(a, &two));
        assert!(
            wrong.is_empty(),
            "{status}s: {name} must keep answering {two:?}: {:?}",
            &wrong[..wrong.len().min(5)]
        );
        let stale = samples
            .iter()
            .filter(|s| s.answer.as_ref().is_some_and(Answered::stale))
            .count();
        println!(
            "{status} x {count}: {} answers, slowest {}, {stale} flagged stale",
            samples.len(),
            ms(slowest)
        );
        federation.sim.clear_faults("dc1");
    }
    let changed = Instant::now();
    federation.set_check("dc1", "grafana-1", &check, PASSING);
    let (took, _) = expect_within(
        dns,
        name,
        changed,
        RECOVER_WITHIN,
        "after the 429s and 503s",
        |a| is_addresses(a, &all),
    );
    println!("after the 429s and 503s: a change showed in {}", ms(took));
}

/// Grafana with three instances in dc1 and one in dc2, and a server of
/// [`fault_server_config`] (`consul_extra` in `[consul]`) answering all
/// three of dc1: the federation, the server, dc1's addresses.
fn grafana_three_and_one(net: Net, consul_extra: &str) -> (Federation, Server, Vec<Ipv4Addr>) {
    let federation = Federation::start(net);
    let all = federation.register_service(
        "dc1",
        "grafana",
        &[net.instance(1, 1), net.instance(1, 2), net.instance(1, 3)],
    );
    federation.register_service("dc2", "grafana", &[net.instance(2, 1)]);
    let server = Server::start_with(
        net,
        &fault_server_config(net, &federation.url("dc1"), consul_extra, GRAFANA),
    );
    let (answer, _) = must_ask(server.dns(), "grafana.query.consul", true);
    assert!(is_addresses(&answer, &all), "{answer:?}");
    (federation, server, all)
}

/// Asks grafana every `every` for `length` and asserts each answer was
/// prompt and the last good `all`; prints what happened and returns the
/// log lines naming grafana and dc1 written after line `before`.
fn keeps_last_good(
    server: &Server,
    all: &[Ipv4Addr],
    what: &str,
    (length, every): (Duration, Duration),
    before: usize,
) -> Vec<String> {
    let name = "grafana.query.consul";
    let samples = sample(server.dns(), &[name], length, every);
    let slowest = assert_prompt(&samples, what);
    let wrong = rejected(&samples, |_, a| is_addresses(a, all));
    assert!(
        wrong.is_empty(),
        "{what}: {name} must keep its last good answer {all:?}: {:?}",
        &wrong[..wrong.len().min(5)]
    );
    let new: Vec<String> = server
        .logs()
        .lines()
        .skip(before)
        .filter(|l| l.contains("grafana") && l.contains("dc1"))
        .map(str::to_owned)
        .collect();
    println!(
        "{what}: {} answers, slowest {}, logged {new:#?}",
        samples.len(),
        ms(slowest)
    );
    new
}

/// Issue 8: answers a Consul (or a proxy before it) should never give.
/// Each, on every read of grafana in dc1, leaves grafana answered from the
/// last good data, promptly, and is logged once, naming the datacenter
/// and the service.
#[test]
fn malformed_consul_answers_keep_the_last_good_data_and_are_logged_once() {
    let (federation, server, all) = grafana_three_and_one(Net::claim(158), "");
    let (check, dns, name) = (
        Instance::check_id("grafana"),
        server.dns(),
        "grafana.query.consul",
    );
    let cases: [(&str, u16, &str); 8] = [
        ("not JSON", 200, "{\"Node\": {\"Node\": \"grafana-1\""),
        (
            "wrong types",
            200,
            "[{\"Node\": 5, \"Service\": \"grafana\", \"Checks\": {}}]",
        ),
        ("null for the list", 200, "null"),
        ("an object for the list", 200, "{\"Nodes\": []}"),
        (
            "an HTML error page",
            200,
            "<html><body>502 Bad Gateway</body></html>",
        ),
        (
            "a 502 from a proxy",
            502,
            "<html><body>502 Bad Gateway</body></html>",
        ),
        (
            "a 429",
            429,
            "Your IP is issuing too many concurrent connections, please rate limit your calls\n",
        ),
        ("a 500", 500, "rpc error making call: i/o deadline reached"),
    ];
    for (round, (what, status, body)) in cases.into_iter().enumerate() {
        let before = server.logs().lines().count();
        federation.sim.fail_next(
            "dc1",
            100_000,
            status,
            Some(body),
            Some("/v1/health/service/grafana"),
        );
        // A change wakes the blocked watch; its reads now get `body`.
        let status_now = if round % 2 == 0 { WARNING } else { PASSING };
        federation.set_check("dc1", "grafana-3", &check, status_now);
        let new = keeps_last_good(
            &server,
            &all,
            what,
            (Duration::from_millis(1500), Duration::from_millis(20)),
            before,
        );
        assert_eq!(
            new.len(),
            1,
            "{what}: want one log line naming grafana and dc1"
        );
        federation.sim.clear_faults("dc1");
        // Good data again: a change shows, so the watch reads again (and
        // its failures are over before the next case).
        let lifted = Instant::now();
        federation.set_check("dc1", "grafana-1", &check, CRITICAL);
        let two = &all[1..];
        expect_within(dns, name, lifted, RECOVER_WITHIN, what, |a| {
            is_addresses(a, two)
        });
        federation.set_check("dc1", "grafana-1", &check, PASSING);
        expect_within(dns, name, lifted, RECOVER_WITHIN, what, |a| {
            is_addresses(a, &all)
        });
    }

    // An answer past the 64 MiB body cap, twice: refused unread past the
    // cap, the last good data kept, one log line.
    let before = server.logs().lines().count();
    let huge = format!("[{}]", " ".repeat(64 << 20));
    federation.sim.fail_next(
        "dc1",
        2,
        200,
        Some(&huge),
        Some("/v1/health/service/grafana"),
    );
    federation.set_check("dc1", "grafana-3", &check, WARNING);
    let new = keeps_last_good(
        &server,
        &all,
        "past the body cap",
        (Duration::from_millis(1500), Duration::from_millis(20)),
        before,
    );
    // One warning for both refusals (and, once reads succeed again, the
    // watch's recovery).
    let refused = new
        .iter()
        .filter(|l| l.contains("the answer is larger than 67108864 bytes"))
        .count();
    assert_eq!(refused, 1, "past the body cap: want one log line");
}

/// Issue 8: a Consul that sends its answers' heads at once and their
/// bodies a byte at a time (a trickling server or proxy). Reads time out
/// within their bound; grafana keeps its last good answer throughout, and
/// the watch's failure is logged once.
#[test]
fn a_trickling_consul_times_out_and_the_last_good_data_stays() {
    let (federation, server, all) = grafana_three_and_one(Net::claim(161), "timeout = \"500ms\"");
    let (check, dns, name) = (
        Instance::check_id("grafana"),
        server.dns(),
        "grafana.query.consul",
    );

    let before = server.logs().lines().count();
    federation
        .sim
        .trickle("dc1", Some(Duration::from_millis(100)));
    // A change wakes the blocked read; its answer then trickles, and the
    // read's bound (wait + wait/16 + timeout, 5.8 s) ends it.
    federation.set_check("dc1", "grafana-3", &check, WARNING);
    let failed: Vec<String> = keeps_last_good(
        &server,
        &all,
        "trickling Consul",
        (Duration::from_secs(8), Duration::from_millis(50)),
        before,
    )
    .into_iter()
    .filter(|l| l.contains("watch failed"))
    .collect();
    assert_eq!(
        failed.len(),
        1,
        "want one log line for grafana in dc1:\n{}",
        server.logs()
    );

    federation.sim.trickle("dc1", None);
    let lifted = Instant::now();
    federation.set_check("dc1", "grafana-1", &check, CRITICAL);
    let (took, _) = expect_within(dns, name, lifted, RECOVER_WITHIN, "trickle lifted", |a| {
        is_addresses(a, &all[1..])
    });
    println!("trickle lifted: a change showed after {}", ms(took));
}

/// Milliseconds since the Unix epoch at `instant` (for the simulator's
/// request timestamps).
fn unix_ms_at(instant: Instant) -> u128 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis();
    now.saturating_sub(instant.elapsed().as_millis())
}

//------------ (e) leader loss ------------------------------------------------

#[test]
fn leader_loss_answers_keep_flowing_fresh() {
    let net = Net::claim(74);
    let federation = Federation::start(net);
    let (dc1, dc2) = federation.grafana_everywhere(net);
    let check = Instance::check_id("grafana");
    let server = Server::start_with(
        net,
        &fault_server_config(net, &federation.url("dc1"), "", GRAFANA),
    );
    let dns = server.dns();
    let name = "grafana.query.consul";

    let lost = Instant::now();
    federation.sim.lose_leader("dc1");
    let samples = sample(
        dns,
        &[name],
        Duration::from_secs(2),
        Duration::from_millis(20),
    );
    let slowest = assert_prompt(&samples, "leader lost");
    let wrong = rejected(&samples, |_, a| is_addresses(a, &dc1) && a.ede.is_empty());
    assert!(
        wrong.is_empty(),
        "without a leader in dc1, {name} must stay dc1's {dc1:?}, not flagged: {:?}",
        &wrong[..wrong.len().min(5)]
    );
    println!(
        "dc1 leaderless: {} answers, slowest {}",
        samples.len(),
        ms(slowest)
    );

    // Changes still flow (stale reads work without a leader).
    let changed = Instant::now();
    federation.set_check("dc1", "grafana-1", &check, CRITICAL);
    let survivor = vec![net.instance(1, 2)];
    let (took, answer) = expect_within(
        dns,
        name,
        changed,
        CHANGE_WITHIN,
        "change without a leader",
        |a| is_addresses(a, &survivor),
    );
    assert!(
        answer.ede.is_empty(),
        "flagged without a leader: {answer:?}"
    );
    println!("a dc1 change without its leader showed in {}", ms(took));

    federation.sim.lose_leader("dc2");
    let changed = Instant::now();
    federation.set_checks("dc1", &check, CRITICAL);
    let (took, answer) = expect_within(
        dns,
        name,
        changed,
        CHANGE_WITHIN,
        "failover with both leaderless",
        |a| is_addresses(a, &dc2),
    );
    assert!(answer.ede.is_empty(), "flagged without leaders: {answer:?}");
    println!("failover to leaderless dc2 showed in {}", ms(took));

    let stale_reads = health_requests(&federation, "dc1", "grafana", "dc1")
        .into_iter()
        .filter(|r| r.received_unix_ms >= unix_ms_at(lost))
        .filter(|r| r.param("stale").is_some())
        .count();
    assert!(
        stale_reads > 0,
        "no read of grafana in dc1 with ?stale while it had no leader"
    );

    federation.sim.regain_leader("dc1");
    federation.sim.regain_leader("dc2");
    let changed = Instant::now();
    federation.set_checks("dc1", &check, PASSING);
    let (took, _) = expect_within(dns, name, changed, CHANGE_WITHIN, "leaders back", |a| {
        is_addresses(a, &dc1) && a.ede.is_empty()
    });
    println!("leaders back: dc1 answers again after {}", ms(took));
}

//------------ (f) 403 on one service ----------------------------------------

#[test]
fn forbidden_service_logged_once_token_never() {
    let net = Net::claim(75);
    let federation = Federation::start(net);
    let grafana = federation.register_service("dc1", "grafana", &[net.instance(1, 1)]);
    let loki =
        federation.register_service("dc1", "loki", &[net.instance(1, 11), net.instance(1, 12)]);
    let token = "a1b2c3d4-70ke-4e00-b1ab-5ec2e7f00d75";
    let secrets = tempfile::tempdir().expect("temporary directory");
    let token_file = secrets.path().join("consul-token");
    fs::write(&token_file, format!("{token}\n")).expect("write the token file");
    let config = fault_server_config(
        net,
        &federation.url("dc1"),
        &format!("token_file = \"{}\"", token_file.display()),
        "\n[[query]]\nname = \"grafana\"\n\n[[query]]\nname = \"loki\"\n",
    );
    let server = Server::start_with(net, &config);
    let dns = server.dns();
    let (answer, _) = must_ask(dns, "loki.query.consul", true);
    assert!(is_addresses(&answer, &loki), "{answer:?}");
    let sent_token = health_requests(&federation, "dc1", "loki", "dc1")
        .iter()
        .any(|r| r.header("x-consul-token") == Some(token));
    assert!(
        sent_token,
        "the token of consul.token_file is not sent as X-Consul-Token"
    );

    // Every read of loki is now forbidden; a warning wakes its watch.
    let started = Instant::now();
    federation.sim.fail_next(
        "dc1",
        100_000,
        403,
        Some("Permission denied: token with AccessorID 'x' lacks permission 'service:read' on \"loki\""),
        Some("/v1/health/service/loki"),
    );
    federation.set_check("dc1", "loki-1", &Instance::check_id("loki"), WARNING);
    let forbidden = poll(Duration::from_secs(15), Duration::from_millis(50), || {
        let n = health_requests(&federation, "dc1", "loki", "dc1")
            .into_iter()
            .filter(|r| r.received_unix_ms >= unix_ms_at(started))
            .count();
        (n >= 3).then_some(n)
    });
    let samples = sample(
        dns,
        &["grafana.query.consul", "loki.query.consul"],
        Duration::from_millis(500),
        Duration::from_millis(20),
    );
    let Some(forbidden) = forbidden else {
        panic!("the loki watch did not retry 3 times within 15 s of the 403s");
    };
    let slowest = assert_prompt(&samples, "403 on loki");
    let wrong = rejected(&samples, |s, a| {
        s.name != "grafana.query.consul" || (is_addresses(a, &grafana) && a.ede.is_empty())
    });
    assert!(
        wrong.is_empty(),
        "a 403 on loki must not touch grafana's answers: {:?}",
        &wrong[..wrong.len().min(5)]
    );
    let loki_answers: Vec<&Answered> = samples
        .iter()
        .filter(|s| s.name == "loki.query.consul")
        .filter_map(|s| s.answer.as_ref())
        .collect();
    println!(
        "403 on loki: {forbidden} forbidden reads in {}, slowest answer {}, loki answered e.g. {:?}",
        ms(started.elapsed()),
        ms(slowest),
        loki_answers.first()
    );

    let logs = server.logs();
    let lines: Vec<String> = server
        .log_lines(&["loki", "dc1"])
        .into_iter()
        .filter(|line| {
            let line = line.to_lowercase();
            ["403", "acl", "permission", "forbidden", "denied"]
                .iter()
                .any(|word| line.contains(word))
        })
        .collect();
    println!("log lines about the 403: {lines:#?}");
    assert_eq!(
        lines.len(),
        1,
        "want exactly one log line naming loki, dc1 and the 403 after {forbidden} forbidden reads"
    );
    assert!(
        !logs.contains(token),
        "the token appears in the log:\n{}",
        server.log_lines(&[token]).join("\n")
    );
    // Nor anywhere else an operator looks, while the 403s go on.
    let admin = net.admin();
    let mut seen = vec![("/metrics".to_owned(), server.metrics())];
    for path in [
        "/v1/explain?name=loki.query.consul&type=A",
        "/v1/explain?name=grafana.query.consul&type=A",
        "/ready",
        "/health",
    ] {
        let (_, body) = http_get(admin, path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
        seen.push((path.to_owned(), body));
    }
    let explained = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_consul-failover-dns")).args([
            "explain",
            "loki",
            "--admin-listen",
            &admin.to_string(),
        ]),
        Duration::from_secs(10),
    );
    seen.push((
        "explain loki".to_owned(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&explained.stdout),
            String::from_utf8_lossy(&explained.stderr)
        ),
    ));
    let checked = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_consul-failover-dns"))
            .arg("check-config")
            .arg("-c")
            .arg(server.config_path()),
        Duration::from_secs(10),
    );
    seen.push((
        "check-config".to_owned(),
        String::from_utf8_lossy(&checked.stdout).into_owned(),
    ));
    for (place, text) in &seen {
        assert!(!text.is_empty(), "{place} said nothing");
        assert!(
            !text.contains(token),
            "the token appears in {place}:\n{text}"
        );
    }

    federation.sim.clear_faults("dc1");
    let lifted = Instant::now();
    let (took, _) = expect_within(
        dns,
        "loki.query.consul",
        lifted,
        RECOVER_WITHIN,
        "403 lifted",
        |a| is_addresses(a, &loki),
    );
    println!("403 lifted: loki answers after {}", ms(took));
    assert!(
        !server.logs().contains(token),
        "the token appears in the log"
    );
}

//------------ (g) failback_after ---------------------------------------------

#[test]
fn failback_waits_for_failback_after() {
    let net = Net::claim(76);
    let federation = Federation::start(net);
    let (dc1, dc2) = federation.grafana_everywhere(net);
    let check = Instance::check_id("grafana");
    let failback = Duration::from_secs(2);
    let server = Server::start_with(
        net,
        &fault_server_config(
            net,
            &federation.url("dc1"),
            "",
            "\n[[query]]\nname = \"grafana\"\nfailback_after = \"2s\"\n\
             failover = { datacenters = [\"dc2\"] }\n",
        ),
    );
    let dns = server.dns();
    let name = "grafana.query.consul";
    let (took, _) = expect_within(
        dns,
        name,
        Instant::now(),
        Duration::from_secs(3),
        "start",
        |a| is_addresses(a, &dc1),
    );
    println!("failback_after: dc1 answers {} after ready", ms(took));

    // Failing over is immediate.
    let changed = Instant::now();
    federation.set_checks("dc1", &check, CRITICAL);
    let (took, _) = expect_within(dns, name, changed, CHANGE_WITHIN, "failover", |a| {
        is_addresses(a, &dc2)
    });
    println!("failover with failback_after: {}", ms(took));
    std::thread::sleep(Duration::from_millis(300));

    // Failing back waits until dc1 stayed usable for 2 s.
    let recovered = Instant::now();
    federation.set_checks("dc1", &check, PASSING);
    let back = wait_switch(dns, name, recovered, &dc2, &dc1);
    println!(
        "dc1 recovered: answers moved back after {} (failback_after {})",
        ms(back),
        ms(failback)
    );
    assert!(
        back >= failback - Duration::from_millis(200)
            && back <= failback + Duration::from_millis(1500),
        "answers moved back to dc1 {} after it recovered; failback_after is {}",
        ms(back),
        ms(failback)
    );

    // A flap restarts the clock: usable 1 s, critical, usable again.
    let changed = Instant::now();
    federation.set_checks("dc1", &check, CRITICAL);
    expect_within(dns, name, changed, CHANGE_WITHIN, "second failover", |a| {
        is_addresses(a, &dc2)
    });
    std::thread::sleep(Duration::from_millis(300));
    let first = Instant::now();
    federation.set_checks("dc1", &check, PASSING);
    let early = sample(
        dns,
        &[name],
        Duration::from_secs(1),
        Duration::from_millis(20),
    );
    federation.set_checks("dc1", &check, CRITICAL);
    let critical = sample(
        dns,
        &[name],
        Duration::from_millis(500),
        Duration::from_millis(20),
    );
    let again = Instant::now();
    federation.set_checks("dc1", &check, PASSING);
    let wrong = rejected(&early, |_, a| is_addresses(a, &dc2))
        .into_iter()
        .chain(rejected(&critical, |_, a| is_addresses(a, &dc2)))
        .count();
    assert_eq!(
        wrong, 0,
        "during a 1 s flap of dc1 (failback_after 2 s) answers must stay on dc2"
    );
    let back = wait_switch(dns, name, again, &dc2, &dc1);
    println!(
        "after a flap: answers moved back {} after dc1's second recovery ({} after the first)",
        ms(back),
        ms(first.elapsed())
    );
    assert!(
        back >= failback - Duration::from_millis(200)
            && back <= failback + Duration::from_millis(1500),
        "answers moved back {} after the second recovery; failback_after is {}",
        ms(back),
        ms(failback)
    );
}

/// Asks `name` every 20 ms (for at most 6 s) until it answers `to`: the
/// time since `since`. Every answer before must be `from`.
fn wait_switch(
    dns: SocketAddr,
    name: &str,
    since: Instant,
    from: &[Ipv4Addr],
    to: &[Ipv4Addr],
) -> Duration {
    loop {
        let (answer, _) = must_ask(dns, name, true);
        if is_addresses(&answer, to) {
            return since.elapsed();
        }
        assert!(
            is_addresses(&answer, from),
            "{name}: {answer:?} at {}, want {from:?} until it switches to {to:?}",
            ms(since.elapsed())
        );
        assert!(
            since.elapsed() < Duration::from_secs(6),
            "{name} did not switch to {to:?} within 6 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

//------------ (h) on_all_unhealthy -------------------------------------------

#[test]
fn on_all_unhealthy_policies() {
    let net = Net::claim(77);
    let federation = Federation::start(net);
    let (dc1, _) = federation.grafana_everywhere(net);
    let check = Instance::check_id("grafana");
    let policies = [
        ("g-default", None),
        ("g-nxdomain", Some("nxdomain")),
        ("g-servfail", Some("servfail")),
        ("g-failopen", Some("fail-open")),
    ];
    let mut extra = String::new();
    for (name, policy) in policies {
        extra.push_str(&format!(
            "\n[[query]]\nname = \"{name}\"\nservice = \"grafana\"\n\
             failover = {{ datacenters = [\"dc2\"] }}\n"
        ));
        if let Some(policy) = policy {
            extra.push_str(&format!("on_all_unhealthy = \"{policy}\"\n"));
        }
    }
    let server = Server::start_with(
        net,
        &fault_server_config(net, &federation.url("dc1"), "", &extra),
    );
    let dns = server.dns();
    let names: Vec<String> = policies
        .iter()
        .map(|(name, _)| format!("{name}.query.consul"))
        .collect();
    for name in &names {
        let (answer, _) = must_ask(dns, name, true);
        assert!(is_addresses(&answer, &dc1), "{name}: {answer:?}");
    }

    // Nothing healthy anywhere.
    let changed = Instant::now();
    federation.set_checks("dc1", &check, CRITICAL);
    federation.set_checks("dc2", &check, CRITICAL);
    let want = [
        ResponseCode::NXDomain,
        ResponseCode::NXDomain,
        ResponseCode::ServFail,
        ResponseCode::NoError,
    ];
    for (name, rcode) in names.iter().zip(want) {
        let (took, answer) = expect_within(dns, name, changed, Duration::from_secs(2), name, |a| {
            a.rcode == rcode
        });
        println!(
            "all unhealthy: {name} -> {rcode} after {} ({answer:?})",
            ms(took)
        );
        assert!(!answer.stale(), "{name}: nothing is stale here: {answer:?}");
        if rcode == ResponseCode::NoError {
            assert_eq!(
                answer.addresses, dc1,
                "fail-open answers every instance of the first datacenter of the chain (dc1)"
            );
        } else {
            assert!(answer.addresses.is_empty(), "{name}: {answer:?}");
        }
    }

    // One dc2 instance back: every policy answers it.
    let changed = Instant::now();
    federation.set_check("dc2", "grafana-1", &check, PASSING);
    let one = vec![net.instance(2, 1)];
    for name in &names {
        expect_within(dns, name, changed, CHANGE_WITHIN, name, |a| {
            is_addresses(a, &one)
        });
    }
    let changed = Instant::now();
    federation.set_checks("dc1", &check, PASSING);
    for name in &names {
        expect_within(dns, name, changed, CHANGE_WITHIN, name, |a| {
            is_addresses(a, &dc1)
        });
    }
}

//------------ (i) start-up with Consul down ----------------------------------

#[test]
fn startup_with_consul_down_answers_at_once_then_recovers() {
    let net = Net::claim(78);
    let federation = Federation::start(net);
    let (dc1, _) = federation.grafana_everywhere(net);
    federation.stop_listener("dc1");
    let config = fault_server_config(net, &federation.url("dc1"), "", GRAFANA);
    let first_answer_wait = Duration::from_millis(500);
    let started = Instant::now();
    let mut server = Server::spawn_with(net, &config);
    let dns = server.dns();
    let name = "grafana.query.consul";

    // It binds at once and answers at once: SERVFAIL, EDE 14.
    let first = poll(Duration::from_secs(5), Duration::from_millis(10), || {
        ask(dns, name, true, Duration::from_secs(1))
    });
    let Some((answer, took)) = first else {
        let exited = server.exited();
        panic!("no DNS answer within 5 s of start-up with Consul down (exited: {exited:?})");
    };
    let first_after = started.elapsed();
    println!(
        "Consul down: first answer {} after start ({} for that query): {answer:?}",
        ms(first_after),
        ms(took)
    );
    assert!(
        first_after <= Duration::from_secs(3),
        "the first answer came {} after start",
        ms(first_after)
    );
    assert_eq!(answer.rcode, ResponseCode::ServFail, "{answer:?}");
    assert_eq!(
        answer.ede,
        [EDE_NOT_READY],
        "SERVFAIL before any sync carries EDE 14: {answer:?}"
    );
    let samples = sample(
        dns,
        &[name],
        Duration::from_millis(1500),
        Duration::from_millis(50),
    );
    let slowest = samples.iter().map(|s| s.took).max().unwrap_or_default();
    assert!(
        samples.iter().all(|s| s.answer.is_some()),
        "a query got no answer while Consul was down: {samples:?}"
    );
    assert!(
        slowest <= first_answer_wait + Duration::from_millis(250),
        "slowest answer {} with first_answer_wait {}",
        ms(slowest),
        ms(first_answer_wait)
    );
    let wrong = rejected(&samples, |_, a| {
        a.rcode == ResponseCode::ServFail && a.ede == [EDE_NOT_READY]
    });
    assert!(
        wrong.is_empty(),
        "with Consul down since start-up: {:?}",
        &wrong[..wrong.len().min(5)]
    );
    let (plain, _) = must_ask(dns, name, false);
    assert!(
        plain.rcode == ResponseCode::ServFail && !plain.opt,
        "without EDNS: SERVFAIL, no OPT: {plain:?}"
    );
    println!(
        "Consul down: {} answers, slowest {}",
        samples.len(),
        ms(slowest)
    );
    let ready = poll(Duration::from_secs(3), Duration::from_millis(20), || {
        http_get(net.admin(), "/ready").ok()
    });
    assert_eq!(
        ready.as_ref().map(|(status, _)| *status),
        Some(503),
        "/ready with Consul down since start-up: {ready:?}"
    );
    assert!(
        server.exited().is_none(),
        "the server exited with Consul down"
    );

    // Consul comes up: it recovers without a restart.
    let up = Instant::now();
    federation.start_listener("dc1");
    let (took, answer) = expect_within(dns, name, up, Duration::from_secs(15), "Consul up", |a| {
        is_addresses(a, &dc1)
    });
    assert!(answer.ede.is_empty(), "after recovery: {answer:?}");
    println!("Consul up: right answers {} later", ms(took));
    let ready = poll(Duration::from_secs(15), Duration::from_millis(20), || {
        matches!(http_get(net.admin(), "/ready"), Ok((200, _))).then(|| up.elapsed())
    });
    let Some(ready) = ready else {
        panic!("/ready not 200 within 15 s of Consul coming up");
    };
    println!("Consul up: /ready 200 {} later", ms(ready));
}

//------------ (j) older than max_stale ---------------------------------------

#[test]
fn older_than_max_stale_is_unknown() {
    let net = Net::claim(79);
    let federation = Federation::start(net);
    let (dc1, dc2) = federation.grafana_everywhere(net);
    let max_stale = Duration::from_secs(2);
    let config = fault_server_config(
        net,
        &federation.url("dc1"),
        "max_stale = \"2s\"",
        &format!(
            "{GRAFANA}\n[[query]]\nname = \"grafana-local\"\nservice = \"grafana\"\n{}",
            direct_datacenter("dc2", &federation.url("dc2"))
        ),
    );
    let server = Server::start_with(net, &config);
    let dns = server.dns();
    let (failover, local, service) = (
        "grafana.query.consul",
        "grafana-local.query.consul",
        "grafana.service.consul",
    );
    for name in [failover, local, service] {
        let (answer, _) = must_ask(dns, name, true);
        assert!(
            is_addresses(&answer, &dc1) && answer.ede.is_empty(),
            "{name}: {answer:?}"
        );
    }

    let stopped = Instant::now();
    federation.stop_listener("dc1");
    let samples = sample(
        dns,
        &[failover, local, service],
        max_stale + Duration::from_secs(3),
        Duration::from_millis(20),
    );
    let slowest = assert_prompt(&samples, "dc1 down");
    let nxdomain: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.answer
                .as_ref()
                .is_some_and(|a| a.rcode == ResponseCode::NXDomain)
        })
        .collect();
    assert!(
        nxdomain.is_empty(),
        "NXDOMAIN because dc1 is unreachable: {:?}",
        &nxdomain[..nxdomain.len().min(5)]
    );

    // The failover name: dc1's (stale) until max_stale, then dc2's.
    let failover_samples: Vec<&Sample> = samples.iter().filter(|s| s.name == failover).collect();
    let switch = failover_samples
        .iter()
        .find(|s| s.answer.as_ref().is_some_and(|a| is_addresses(a, &dc2)))
        .map(|s| s.at);
    let Some(switch) = switch else {
        panic!("{failover} never failed over to dc2 after dc1's data outlived max_stale");
    };
    let stale_before = failover_samples
        .iter()
        .filter(|s| s.at < switch)
        .filter(|s| {
            s.answer
                .as_ref()
                .is_some_and(|a| is_addresses(a, &dc1) && a.stale())
        })
        .count();
    println!(
        "max_stale {}: {failover} stale from dc1 ({stale_before} answers), on dc2 from {} after \
         dc1 stopped; slowest answer {}",
        ms(max_stale),
        ms(switch),
        ms(slowest)
    );
    assert!(
        stale_before > 0,
        "no stale dc1 answer before the data outlived max_stale"
    );
    assert!(
        switch >= max_stale - Duration::from_millis(500)
            && switch <= max_stale + Duration::from_millis(2500),
        "{failover} moved to dc2 {} after dc1 stopped; max_stale is {}",
        ms(switch),
        ms(max_stale)
    );
    let wrong = rejected(&samples, |s, a| match s.name {
        name if name == failover => {
            if s.at < switch {
                is_addresses(a, &dc1)
            } else {
                is_addresses(a, &dc2) && !a.stale()
            }
        }
        _ => is_addresses(a, &dc1) || a.rcode == ResponseCode::ServFail,
    });
    assert!(
        wrong.is_empty(),
        "answers other than dc1's (stale), dc2's (fresh) or SERVFAIL: {:?}",
        &wrong[..wrong.len().min(5)]
    );

    // Without failover: SERVFAIL with EDE 22 once dc1's data is unknown.
    for name in [local, service] {
        let (answer, _) = must_ask(dns, name, true);
        println!(
            "{name} {} after dc1 stopped: {answer:?}",
            ms(stopped.elapsed())
        );
        assert_eq!(answer.rcode, ResponseCode::ServFail, "{name}: {answer:?}");
        assert!(
            answer.ede.contains(&EDE_NO_REACHABLE_AUTHORITY),
            "{name}: SERVFAIL for an unreachable DC carries EDE 22: {answer:?}"
        );
    }

    // dc1 back: its answers return, fresh.
    let restarted = Instant::now();
    federation.start_listener("dc1");
    for name in [failover, local, service] {
        let (took, _) = expect_within(dns, name, restarted, FRESH_WITHIN, "dc1 back", |a| {
            is_addresses(a, &dc1) && a.ede.is_empty()
        });
        println!("dc1 back: {name} answers dc1 {} later", ms(took));
    }
    let stale_metric = metric_value(
        &server.metrics(),
        "consul_failover_dns_stale_answers_total",
        &[],
    );
    println!("consul_failover_dns_stale_answers_total = {stale_metric}");
    assert!(stale_metric >= stale_before as f64);
}
