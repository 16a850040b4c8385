//! Failover of `grafana.query.consul` (a `[[query]]` failing over to dc2)
//! driven by check changes in the simulator, and the failover latency:
//! time from a check change to the first DNS answer reflecting it.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use consul_sim::model::{CRITICAL, PASSING};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::support::{
    Federation, Instance, Net, Server, assert_apex_soa, dig, ipv4s, metric_value, query, try_udp,
    udp,
};

/// How long one flip may take before the test fails.
const FLIP_LIMIT: Duration = Duration::from_secs(10);

/// The pause before each measured check change.
const SETTLE: Duration = Duration::from_millis(200);

/// What one UDP poll of a name saw.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seen {
    /// NOERROR with these A records (sorted).
    Addresses(Vec<Ipv4Addr>),
    /// Another response code.
    Rcode(ResponseCode),
    /// No reply within the poll's timeout.
    Nothing,
}

/// Asks `name` A once over UDP (1 s timeout).
fn look(server: SocketAddr, name: &str) -> Seen {
    match try_udp(server, &query(name, RecordType::A), Duration::from_secs(1)) {
        None => Seen::Nothing,
        Some(reply) if reply.metadata.response_code == ResponseCode::NoError => {
            Seen::Addresses(ipv4s(&reply.answers))
        }
        Some(reply) => Seen::Rcode(reply.metadata.response_code),
    }
}

/// Polls `name` every ~2 ms until it answers `want`, for at most
/// [`FLIP_LIMIT`]: the time from `since` to that answer, and every other
/// answer seen on the way (besides `before`, the answer expected until
/// the change shows). Panics if `want` never comes.
fn wait_for(
    server: SocketAddr,
    name: &str,
    since: Instant,
    before: &Seen,
    want: &Seen,
) -> (Duration, Vec<Seen>) {
    let mut other = Vec::new();
    loop {
        let seen = look(server, name);
        if seen == *want {
            return (since.elapsed(), other);
        }
        if seen != *before {
            other.push(seen.clone());
        }
        assert!(
            since.elapsed() < FLIP_LIMIT,
            "{name}: still {seen:?} {FLIP_LIMIT:?} after the change, want {want:?} (also seen: {other:?})"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The `p`th percentile (nearest rank) of sorted `samples`.
fn percentile(sorted: &[Duration], p: usize) -> Duration {
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted[rank - 1]
}

/// Formats a duration in milliseconds.
fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

#[test]
fn grafana_fails_over_to_dc2_and_back() {
    let net = Net::claim(1);
    let federation = Federation::start(net);
    let (dc1, dc2) = federation.grafana_everywhere(net);
    let check = Instance::check_id("grafana");
    let server = Server::start(net, &federation);
    let dns = server.dns();
    let name = "grafana.query.consul";
    // As dig's answer_data gives them: text, sorted.
    let strings = |addresses: &[Ipv4Addr]| {
        let mut text: Vec<String> = addresses.iter().map(Ipv4Addr::to_string).collect();
        text.sort();
        text
    };

    // Local instances first.
    let reply = udp(dns, &query(name, RecordType::A));
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert_eq!(ipv4s(&reply.answers), dc1);
    assert_eq!(dig(dns, &[name, "A"]).answer_data("A"), strings(&dc1));

    // One dc1 instance down: the other one (grafana-2) still answers, no
    // failover.
    let survivor = net.instance(1, 2);
    federation.set_check("dc1", "grafana-1", &check, CRITICAL);
    let (_, other) = wait_for(
        dns,
        name,
        Instant::now(),
        &Seen::Addresses(dc1.clone()),
        &Seen::Addresses(vec![survivor]),
    );
    assert!(other.is_empty(), "answers on the way: {other:?}");

    // Every dc1 instance down: dc2's.
    federation.set_checks("dc1", &check, CRITICAL);
    let (_, other) = wait_for(
        dns,
        name,
        Instant::now(),
        &Seen::Addresses(vec![survivor]),
        &Seen::Addresses(dc2.clone()),
    );
    assert!(other.is_empty(), "answers on the way: {other:?}");
    let out = dig(dns, &[name, "A"]);
    assert_eq!(out.status, "NOERROR", "{}", out.text);
    assert_eq!(out.answer_data("A"), strings(&dc2), "{}", out.text);
    let remote = metric_value(
        &server.metrics(),
        "consul_failover_dns_answers_total",
        &[("datacenter", "dc2")],
    );
    assert!(
        remote >= 2.0,
        "consul_failover_dns_answers_total{{datacenter=\"dc2\"}} is {remote}"
    );

    // Nothing healthy anywhere: NXDOMAIN with the apex SOA.
    federation.set_checks("dc2", &check, CRITICAL);
    wait_for(
        dns,
        name,
        Instant::now(),
        &Seen::Addresses(dc2.clone()),
        &Seen::Rcode(ResponseCode::NXDomain),
    );
    let reply = udp(dns, &query(name, RecordType::A));
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    assert!(reply.answers.is_empty(), "{:?}", reply.answers);
    assert_apex_soa(&reply.authorities, "all unhealthy");

    // dc2 back, then dc1 back.
    federation.set_checks("dc2", &check, PASSING);
    wait_for(
        dns,
        name,
        Instant::now(),
        &Seen::Rcode(ResponseCode::NXDomain),
        &Seen::Addresses(dc2.clone()),
    );
    federation.set_checks("dc1", &check, PASSING);
    let (_, other) = wait_for(
        dns,
        name,
        Instant::now(),
        &Seen::Addresses(dc2.clone()),
        &Seen::Addresses(dc1.clone()),
    );
    assert!(other.is_empty(), "answers on the way: {other:?}");
    assert_eq!(dig(dns, &[name, "A"]).answer_data("A"), strings(&dc1));

    // The measurement: 20 flips dc1 → dc2 → dc1, each timed from the
    // check change in the simulator to the first changed DNS answer.
    let (local, remote) = (Seen::Addresses(dc1.clone()), Seen::Addresses(dc2.clone()));
    let mut failovers = Vec::new();
    let mut failbacks = Vec::new();
    let mut glitches = Vec::new();
    for _ in 0..20 {
        // A real failover is one change, not a burst: give the watcher's
        // request rate limit (a token bucket refilling every 100 ms) time
        // to refill, so the figures measure the path, not the pacing.
        std::thread::sleep(SETTLE);
        let since = Instant::now();
        federation.set_checks("dc1", &check, CRITICAL);
        let (took, other) = wait_for(dns, name, since, &local, &remote);
        failovers.push(took);
        glitches.extend(other);

        std::thread::sleep(SETTLE);
        let since = Instant::now();
        federation.set_checks("dc1", &check, PASSING);
        let (took, other) = wait_for(dns, name, since, &remote, &local);
        failbacks.push(took);
        glitches.extend(other);
    }
    let mut all: Vec<Duration> = failovers.iter().chain(&failbacks).copied().collect();
    for samples in [&mut failovers, &mut failbacks, &mut all] {
        samples.sort();
    }
    for (what, samples) in [
        ("dc1 -> dc2", &failovers),
        ("dc2 -> dc1", &failbacks),
        ("all", &all),
    ] {
        eprintln!(
            "failover latency {what}: n={} p50={} p99={} max={}",
            samples.len(),
            ms(percentile(samples, 50)),
            ms(percentile(samples, 99)),
            ms(samples[samples.len() - 1]),
        );
    }
    assert!(
        glitches.is_empty(),
        "answers other than dc1's or dc2's during the flips: {glitches:?}"
    );
}
