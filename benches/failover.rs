//! Failover latency: the time from a health change in the simulator
//! (in-process `consul_sim::Sim`) to the first DNS answer of the server
//! (the release binary, a child process) that reflects it. `web` has two
//! instances in dc1 and two in dc2; each change sets every dc1 check
//! critical (failover to dc2) or passing again (back to dc1), alternately,
//! and `web.query.consul` A is polled over UDP every ~1 ms until the
//! answer changes. Prints p50/p99/max over 100 changes.
//!
//! `cargo bench --bench failover`; smoke (6 changes): `cargo test --bench
//! failover`, `BENCH_SMOKE=1` or `--smoke`.

mod common;

use std::net::{Ipv4Addr, UdpSocket};
use std::time::{Duration, Instant};

use common::{Seen, Server, check_id, look, ms, percentile, registration};

/// A change not reflected by then aborts the benchmark.
const LIMIT: Duration = Duration::from_secs(10);

/// The pause before each change: the watcher's request rate limit (a token
/// bucket refilling every 100 ms) refills, so the figures measure the
/// path, not the pacing of a burst.
const SETTLE: Duration = Duration::from_millis(200);

fn main() {
    let changes = if common::smoke() { 6 } else { 100 };
    let runtime = common::runtime();
    let sim = common::start_sim(&runtime, &["dc1", "dc2"]);
    let mut dc1 = Vec::new();
    let mut dc2 = Vec::new();
    for (dc, list, net) in [("dc1", &mut dc1, 1), ("dc2", &mut dc2, 2)] {
        for i in 1..=2 {
            let address = Ipv4Addr::new(127, 0, net, i);
            sim.register(
                dc,
                registration(dc, &format!("web-{dc}-{i}"), address, "web"),
            )
            .expect("register");
            list.push(address);
        }
    }
    let consul = runtime.block_on(sim.url("dc1"));
    let mut server = Server::spawn(
        &consul,
        "[[query]]\nname = \"web\"\nfailover = { datacenters = [\"dc2\"] }\n",
    );
    server.wait_ready(Duration::from_secs(30));
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let name = "web.query.consul.";
    let (local, remote) = (Seen::Addresses(dc1), Seen::Addresses(dc2));
    assert_eq!(look(&socket, server.dns, name), local, "before any change");

    let check = check_id("web");
    let mut samples = Vec::with_capacity(changes);
    let mut glitches = Vec::new();
    let started = Instant::now();
    for n in 0..changes {
        let (status, before, want) = if n % 2 == 0 {
            ("critical", &local, &remote)
        } else {
            ("passing", &remote, &local)
        };
        std::thread::sleep(SETTLE);
        let since = Instant::now();
        assert!(sim.set_check_status("dc1", None, &check, status) > 0);
        loop {
            let seen = look(&socket, server.dns, name);
            if seen == *want {
                samples.push(since.elapsed());
                break;
            }
            if seen != *before {
                glitches.push(seen.clone());
            }
            assert!(
                since.elapsed() < LIMIT,
                "change {n}: still {seen:?} after {LIMIT:?}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    samples.sort();
    println!(
        "failover latency (health change in consul-sim -> first DNS answer reflecting it): \
         n={} p50={} p99={} max={} (run {:.1} s)",
        samples.len(),
        ms(percentile(&samples, 50)),
        ms(percentile(&samples, 99)),
        ms(samples[samples.len() - 1]),
        started.elapsed().as_secs_f64(),
    );
    assert!(
        glitches.is_empty(),
        "other answers during the changes: {glitches:?}"
    );
    drop(server);
    drop(sim);
}
