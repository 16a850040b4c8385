//! A random-name flood (DESIGN §4): 100,000 `*.query.consul` and
//! `*.service.consul` names no catalog has, sent by the real `dnsperf`.
//! Every one must be NXDOMAIN from the catalog watches, start no watch
//! (`consul_failover_dns_watches` unchanged) and leave the server's memory where
//! it was (RSS within 10 %).

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use fastrand::Rng;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::support::{
    Federation, Net, Server, poll, program, query, run_bounded, server_config, try_udp,
};

/// Names in the measured flood.
const FLOOD: usize = 100_000;

/// Names in the warm-up flood.
const WARM_UP: usize = 20_000;

/// dnsperf's rate limit (queries per second).
const QPS: u32 = 20_000;

/// The seed of the random names.
const SEED: u64 = 0xf100d;

/// What dnsperf reported.
#[derive(Debug, Default)]
struct Report {
    /// `Queries sent`.
    sent: u64,
    /// `Queries completed`.
    completed: u64,
    /// `Response codes`: NXDOMAIN.
    nxdomain: u64,
    /// `Queries per second`.
    qps: f64,
    /// dnsperf's whole output.
    text: String,
}

/// A random DNS label of 6–24 letters, digits and inner hyphens.
fn label(rng: &mut Rng) -> String {
    let length = rng.usize(6..=24);
    (0..length)
        .map(|i| {
            if i > 0 && i + 1 < length && rng.u8(0..12) == 0 {
                '-'
            } else if rng.u8(0..4) == 0 {
                rng.digit(10)
            } else {
                rng.lowercase()
            }
        })
        .collect()
}

/// Writes a dnsperf input of `count` random names (half
/// `<label>.query.consul`, half `<label>.service.consul`, type A) to
/// `path`.
fn write_names(rng: &mut Rng, path: &Path, count: usize) {
    let mut text = String::with_capacity(count * 40);
    for i in 0..count {
        let kind = if i % 2 == 0 { "query" } else { "service" };
        writeln!(text, "flood-{}.{kind}.consul A", label(rng)).expect("write to a string");
    }
    fs::write(path, text).expect("write the dnsperf input");
}

/// The number at the start of `rest` (`  123 (45.00%)`).
fn leading_number(rest: &str) -> Option<u64> {
    rest.split_whitespace().next()?.parse().ok()
}

/// Parses dnsperf's statistics.
fn parse_report(text: &str) -> Report {
    let mut report = Report {
        text: text.to_owned(),
        ..Report::default()
    };
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("Queries sent:") {
            report.sent = leading_number(rest).unwrap_or_default();
        } else if let Some(rest) = line.strip_prefix("Queries completed:") {
            report.completed = leading_number(rest).unwrap_or_default();
        } else if let Some(rest) = line.strip_prefix("Response codes:") {
            // `NXDOMAIN 99990 (99.99%), NOERROR 10 (0.01%)`
            for part in rest.split(',') {
                let mut words = part.split_whitespace();
                if words.next() == Some("NXDOMAIN") {
                    report.nxdomain = words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                }
            }
        } else if let Some(rest) = line.strip_prefix("Queries per second:") {
            report.qps = rest.trim().parse().unwrap_or_default();
        }
    }
    assert!(
        report.sent > 0,
        "dnsperf printed no statistics:\n{}",
        report.text
    );
    report
}

/// Runs dnsperf once through `file` against `server` (at most [`QPS`],
/// 60 s).
fn dnsperf(server: &Server, file: &Path) -> Report {
    let dns = server.dns();
    let output = run_bounded(
        Command::new(program("dnsperf"))
            .arg("-s")
            .arg(dns.ip().to_string())
            .arg("-p")
            .arg(dns.port().to_string())
            .arg("-d")
            .arg(file)
            // 16 client sockets: the kernel spreads source ports over the
            // fast-path threads, so the warm-up fills every thread's
            // bounded answer cache (up to 4,096 answers each), not only
            // the one a single socket would reach.
            .args(["-n", "1", "-l", "60", "-t", "5", "-q", "200", "-c", "16"])
            .arg("-Q")
            .arg(QPS.to_string()),
        Duration::from_secs(90),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "dnsperf failed ({}):\n{stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    parse_report(&stdout)
}

/// `consul_failover_dns_watches`, which must be exported.
fn watches(server: &Server) -> f64 {
    server
        .watched_pairs()
        .expect("consul_failover_dns_watches is exported")
}

#[test]
fn random_name_flood_gets_nxdomain_without_watches_or_memory() {
    let net = Net::claim(45);
    let federation = Federation::start(net);
    for (i, service) in ["grafana", "loki", "tempo", "prometheus"]
        .iter()
        .enumerate()
    {
        let host = u8::try_from(i * 10 + 1).expect("small");
        federation.register_service("dc1", service, &[net.instance(1, host)]);
        federation.register_service("dc2", service, &[net.instance(2, host)]);
    }
    // Implicit queries on (the default), so every `*.query.consul` name
    // is looked up in the catalogs.
    let server = Server::start_with(net, &server_config(net, &federation, ""));
    let dns = server.dns();

    // Real names first, so their watches exist before the baseline.
    for name in ["loki.query.consul", "tempo.service.consul"] {
        let answered = poll(Duration::from_secs(5), Duration::from_millis(50), || {
            try_udp(dns, &query(name, RecordType::A), Duration::from_secs(1))
                .filter(|reply| reply.metadata.response_code == ResponseCode::NoError)
        });
        assert!(answered.is_some(), "{name} does not answer NOERROR");
    }
    // Let the watch count settle (unchanged for 1 s, at most 10 s).
    let mut last = (watches(&server), Instant::now());
    let settled = poll(Duration::from_secs(10), Duration::from_millis(100), || {
        let now = watches(&server);
        if now != last.0 {
            last = (now, Instant::now());
        }
        (last.1.elapsed() >= Duration::from_secs(1)).then_some(now)
    });
    assert!(
        settled.is_some(),
        "consul_failover_dns_watches keeps changing"
    );

    let dir = tempfile::tempdir().expect("temporary directory");
    let mut rng = Rng::with_seed(SEED);
    let warm_up = dir.path().join("warm-up.txt");
    let flood = dir.path().join("flood.txt");
    write_names(&mut rng, &warm_up, WARM_UP);
    write_names(&mut rng, &flood, FLOOD);

    // Warm-up: the first burst of traffic grows buffers, allocator arenas
    // and per-thread caches once, whatever the names; only growth past
    // that is per-name state (a leak, a cache of negative answers, a
    // metric label per name). So the baseline is taken after a first,
    // smaller flood of other random names.
    let warm = dnsperf(&server, &warm_up);
    println!(
        "warm-up: {} sent, {} completed, {} NXDOMAIN, {:.0} qps",
        warm.sent, warm.completed, warm.nxdomain, warm.qps
    );
    let watches_before = watches(&server);
    let rss_before = server.rss_kib();

    let started = Instant::now();
    let report = dnsperf(&server, &flood);
    let took = started.elapsed();
    let watches_after = watches(&server);
    let rss_after = server.rss_kib();
    let ratio = rss_after as f64 / rss_before as f64;
    println!(
        "flood: {} sent, {} completed, {} NXDOMAIN, {:.0} qps, {:.1} s",
        report.sent,
        report.completed,
        report.nxdomain,
        report.qps,
        took.as_secs_f64()
    );
    println!("consul_failover_dns_watches: {watches_before} before, {watches_after} after");
    println!("RSS: {rss_before} KiB before, {rss_after} KiB after, ratio {ratio:.3}");

    assert_eq!(
        watches_after, watches_before,
        "random names changed consul_failover_dns_watches"
    );
    assert_eq!(
        report.sent, FLOOD as u64,
        "dnsperf did not send every name:\n{}",
        report.text
    );
    // "Nearly" all: UDP on loopback may still drop a handful.
    let floor = FLOOD as u64 * 999 / 1000;
    assert!(
        report.completed >= floor,
        "only {} of {FLOOD} queries answered:\n{}",
        report.completed,
        report.text
    );
    assert_eq!(
        report.nxdomain, report.completed,
        "answers other than NXDOMAIN:\n{}",
        report.text
    );
    // Only growth fails: a smaller RSS after the flood is no leak.
    assert!(
        ratio <= 1.10,
        "RSS grew from {rss_before} KiB to {rss_after} KiB ({ratio:.3}) over {FLOOD} random names"
    );
}
