//! Scale: 10,000 services × 3 datacenters × 5 instances, every service a
//! `[[query]]` failing over dc1 → dc2 → dc3, so all 30,000 (service,
//! datacenter) pairs are watched from start-up. The simulator runs in this
//! process; the server is the binary, a child process, so its figures are
//! its own. Prints the server's RSS, the time from its start (the
//! simulator already up and loaded) to `/ready`, and the CPU time one
//! single-instance check change costs it (utime + stime of
//! `/proc/<pid>/stat` over many changes, less the idle CPU of as long a
//! quiet period, divided by the number of changes).
//!
//! `cargo bench --bench scale`; smoke (50 services, 20 changes): `cargo
//! test --bench scale`, `BENCH_SMOKE=1` or `--smoke`.

mod common;

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::{Server, check_id, cpu_ticks, registration, rss_kib, ticks};

const DATACENTERS: [&str; 3] = ["dc1", "dc2", "dc3"];
const INSTANCES: usize = 5;
/// Nodes per instance slot: instance `i` of service `s` runs on node
/// `node-i-(s % NODES)`, so a datacenter has `5 × NODES` nodes.
const NODES: usize = 200;
/// The pause between two check changes.
const GAP: Duration = Duration::from_millis(5);

fn main() {
    let smoke = common::smoke();
    let (mut services, updates) = if smoke { (50, 20) } else { (10_000, 1_000) };
    // SCALE_SERVICES overrides the number of services (to find a trend).
    if let Some(n) = std::env::var("SCALE_SERVICES")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        services = n;
    }
    // HTTPS by default: Consul's HTTPS listener speaks HTTP/2, where one
    // connection carries 240 watches; over HTTP/1.1 (SCALE_HTTP1=1) each
    // watch needs a connection and Consul allows 200 per client.
    let tls = std::env::var("SCALE_HTTP1").map_or(true, |v| v != "1");
    let runtime = common::runtime();
    let sim = common::start_sim_with(&runtime, &DATACENTERS, tls);
    let loading = Instant::now();
    for (d, dc) in DATACENTERS.iter().enumerate() {
        for s in 0..services {
            for i in 0..INSTANCES {
                let slot = s % NODES;
                let address = Ipv4Addr::new(10, d as u8 + 1, i as u8, slot as u8);
                let node = format!("node-{i}-{slot}");
                sim.register(dc, registration(dc, &node, address, &format!("svc{s}")))
                    .expect("register");
            }
        }
    }
    eprintln!(
        "scale: consul-sim loaded with {} instances in {:.1} s",
        services * INSTANCES * DATACENTERS.len(),
        loading.elapsed().as_secs_f64()
    );
    let mut config = String::new();
    for s in 0..services {
        writeln!(
            config,
            "[[query]]\nname = \"svc{s}\"\nfailover = {{ datacenters = [\"dc2\", \"dc3\"] }}"
        )
        .expect("write");
    }
    let consul = runtime.block_on(sim.url("dc1"));
    let ca = sim.ca_pem();
    let mut server = Server::spawn_with(&consul, ca.as_deref(), &config);
    let ready = server.wait_ready(Duration::from_secs(120));
    let pid = server.pid();
    // The server's own CPU until ready (the simulator, in this process,
    // shares the 2 cores meanwhile).
    let startup_cpu = ticks(cpu_ticks(pid));
    // Let start-up work (first answers, metrics) finish.
    std::thread::sleep(Duration::from_secs(1));
    let rss = rss_kib(pid);
    if std::env::var_os("SCALE_HOLD").is_some() {
        eprintln!("HOLD pid {pid}");
        std::thread::sleep(Duration::from_secs(40));
    }

    // Idle CPU over as long as the changes will take.
    let span = GAP * u32::try_from(updates).expect("count") + Duration::from_secs(1);
    let before = cpu_ticks(pid);
    std::thread::sleep(span);
    let idle = cpu_ticks(pid) - before;

    // One instance's check per change, each in a different service.
    let before = cpu_ticks(pid);
    let started = Instant::now();
    for n in 0..updates {
        let s = (n * 7919) % services;
        let i = n % INSTANCES;
        let node = format!("node-{i}-{}", s % NODES);
        let status = if (n / services) % 2 == 0 {
            "critical"
        } else {
            "passing"
        };
        let matched =
            sim.set_check_status("dc1", Some(&node), &check_id(&format!("svc{s}")), status);
        assert_eq!(matched, 1, "check of svc{s} on {node}");
        std::thread::sleep(GAP);
    }
    std::thread::sleep(span.saturating_sub(started.elapsed()));
    let busy = cpu_ticks(pid) - before;
    let per_update = ticks(busy.saturating_sub(idle)) / u32::try_from(updates).expect("count");
    let rss_after = rss_kib(pid);
    println!(
        "scale ({}): {services} services x {} DCs x {INSTANCES} instances, {} watches: \
         RSS {:.1} MiB after ready ({:.1} MiB after the changes), ready {:.2} s after start \
         ({:.2} s of server CPU), \
         CPU per single-instance update {:.1} us ({} changes: {} ms busy, {} ms idle baseline)",
        if tls { "HTTPS, HTTP/2" } else { "HTTP/1.1" },
        DATACENTERS.len(),
        services * DATACENTERS.len(),
        rss as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        ready.as_secs_f64(),
        startup_cpu.as_secs_f64(),
        per_update.as_secs_f64() * 1e6,
        updates,
        ticks(busy).as_millis(),
        ticks(idle).as_millis(),
    );
    drop(server);
    drop(sim);
}
