//! Differential test of prepared queries: random services and random
//! prepared-query definitions in random federations, each answered by
//! the resolver over DNS and by consul-sim's
//! `GET /v1/query/<name>/execute` (Consul's algorithm, reference §5.4).
//! Both must pick the same datacenter and the same addresses, or both
//! nothing (`Nodes` `[]` ↔ NXDOMAIN).
//!
//! Two batches, one server each: 3 datacenters and 4 datacenters, each
//! with random WAN coordinates so the RTT order (and so `NearestN`)
//! varies. The seed is printed; `DIFF_SEED=<n>` (decimal or `0x…`)
//! replays another one.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use consul_sim::model::{
    CRITICAL, CheckInput, Coordinate, PASSING, RegisterRequest, ServiceInput, WARNING,
};
use fastrand::Rng;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use serde_json::{Value, json};

use crate::support::{
    Federation, Net, Server, bare_server_config, http_request, ipv4s, poll, query, srv_targets,
    target_datacenter, try_udp, with_edns,
};

/// The seed when `DIFF_SEED` is not set.
const DEFAULT_SEED: u64 = 0x00c0_ffee_2024;

/// Scenarios per batch (two batches).
const SCENARIOS: usize = 110;

/// Nodes per datacenter, shared by every scenario's instances (so a
/// node's meta and its critical node check touch several services).
const NODES_PER_DC: u8 = 12;

/// The service tags instances and queries pick from.
const TAGS: [&str; 4] = ["alpha", "beta", "gamma", "delta"];

/// The node check every node has.
const NODE_CHECK: &str = "serfHealth";

/// How long one scenario may keep answering SERVFAIL (data syncing).
const SYNC_RETRY: Duration = Duration::from_secs(3);

/// The seed of this run.
fn base_seed() -> u64 {
    match std::env::var("DIFF_SEED") {
        Ok(text) => {
            let text = text.trim();
            let parsed = match text.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => text.parse(),
            };
            parsed.unwrap_or_else(|e| panic!("DIFF_SEED={text:?}: {e}"))
        }
        Err(_) => DEFAULT_SEED,
    }
}

/// One node of a datacenter.
#[derive(Clone, Debug)]
struct NodeSpec {
    /// Its name.
    name: String,
    /// Its address.
    address: Ipv4Addr,
    /// Its node meta.
    meta: BTreeMap<String, String>,
    /// The status of its node check (`serfHealth`).
    node_check: &'static str,
}

/// One instance of a scenario's service.
#[derive(Clone, Debug)]
struct InstanceSpec {
    /// Its datacenter (1-based index).
    dc: u8,
    /// Its node (index into that datacenter's nodes).
    node: usize,
    /// The service's own address, if any.
    service_address: Option<Ipv4Addr>,
    /// Its tags (random case).
    tags: Vec<String>,
    /// Its service meta.
    meta: BTreeMap<String, String>,
    /// Its service checks: (check ID, status).
    checks: Vec<(String, &'static str)>,
}

/// One scenario: a service with its instances, and a prepared query.
#[derive(Clone, Debug)]
struct Scenario {
    /// The query's name (`qN`).
    name: String,
    /// The definition POSTed to `/v1/query`.
    definition: Value,
    /// The service's instances, in every datacenter.
    instances: Vec<InstanceSpec>,
}

/// What answered a scenario: nothing, or a datacenter and its
/// addresses (sorted, deduplicated).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    /// No instance anywhere (execute `Nodes` `[]`, DNS NXDOMAIN).
    Empty,
    /// These addresses from this datacenter.
    Answer {
        /// The answering datacenter.
        dc: String,
        /// The addresses.
        addresses: Vec<Ipv4Addr>,
    },
}

/// `s` with each letter's case chosen at random.
fn random_case(rng: &mut Rng, s: &str) -> String {
    s.chars()
        .map(|c| {
            if rng.bool() {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

/// A check status: passing 65 %, warning 20 %, critical 15 %.
fn random_status(rng: &mut Rng) -> &'static str {
    match rng.u8(0..20) {
        0..=12 => PASSING,
        13..=16 => WARNING,
        _ => CRITICAL,
    }
}

/// The nodes of datacenter `dc` (1-based).
fn nodes(rng: &mut Rng, net: Net, dc: u8) -> Vec<NodeSpec> {
    (1..=NODES_PER_DC)
        .map(|k| {
            let mut meta = BTreeMap::new();
            meta.insert("rack".to_owned(), rng.choice(["r1", "r2"]).unwrap().into());
            if rng.bool() {
                meta.insert("zone".to_owned(), rng.choice(["a", "b"]).unwrap().into());
            }
            let node_check = match rng.u8(0..10) {
                0 => CRITICAL,
                1 => WARNING,
                _ => PASSING,
            };
            NodeSpec {
                name: format!("n{dc}-{k:02}"),
                address: net.instance(dc, k),
                meta,
                node_check,
            }
        })
        .collect()
}

/// Scenario number `i`: a service `svc<i>` with 0–3 instances per
/// datacenter and a query `q<i>` over it.
fn scenario(rng: &mut Rng, net: Net, dcs: &[String], i: usize) -> Scenario {
    let service = format!("svc{i}");
    let mut instances = Vec::new();
    for dc in 1..=u8::try_from(dcs.len()).expect("few datacenters") {
        let mut pool: Vec<usize> = (0..usize::from(NODES_PER_DC)).collect();
        rng.shuffle(&mut pool);
        for node in pool.into_iter().take(rng.usize(0..=3)) {
            let service_address = (rng.u8(0..10) < 3).then(|| net.instance(dc, rng.u8(100..200)));
            let mut tags = Vec::new();
            for tag in TAGS {
                if rng.bool() {
                    tags.push(random_case(rng, tag));
                }
            }
            let mut meta = BTreeMap::new();
            if rng.u8(0..10) < 7 {
                meta.insert("version".to_owned(), rng.choice(["1", "2"]).unwrap().into());
            }
            if rng.bool() {
                meta.insert(
                    "env".to_owned(),
                    rng.choice(["prod", "dev"]).unwrap().into(),
                );
            }
            let mut checks = vec![(format!("{service}-health"), random_status(rng))];
            if rng.u8(0..4) == 0 {
                checks.push((format!("{service}-extra"), random_status(rng)));
            }
            if rng.u8(0..100) < 8 {
                checks.push((format!("_service_maintenance:{service}"), CRITICAL));
            }
            instances.push(InstanceSpec {
                dc,
                node,
                service_address,
                tags,
                meta,
                checks,
            });
        }
    }

    // The query: failover by NearestN, Datacenters (possibly unknown or
    // local names) or Targets (never with the other two, which Consul
    // rejects), and random filters.
    let mut pool: Vec<String> = dcs.to_vec();
    pool.extend(["dc9".to_owned(), "nowhere".to_owned()]);
    rng.shuffle(&mut pool);
    let listed: Vec<String> = pool
        .into_iter()
        .take(rng.usize(0..=dcs.len() + 2))
        .collect();
    let nearest_n = rng.u8(0..=3);
    let failover = match rng.u8(0..3) {
        0 => json!({ "NearestN": nearest_n }),
        1 => json!({ "NearestN": nearest_n, "Datacenters": listed }),
        _ => json!({
            "Targets": listed
                .iter()
                .map(|dc| json!({ "Datacenter": dc }))
                .collect::<Vec<_>>()
        }),
    };
    let mut definition = json!({ "Service": service, "Failover": failover });
    if rng.u8(0..10) < 3 {
        definition["OnlyPassing"] = json!(true);
    }
    if rng.u8(0..10) < 3 {
        let mut tags = TAGS.to_vec();
        rng.shuffle(&mut tags);
        let tags: Vec<String> = tags
            .into_iter()
            .take(rng.usize(1..=2))
            .map(|tag| {
                let tag = random_case(rng, tag);
                if rng.u8(0..100) < 35 {
                    format!("!{tag}")
                } else {
                    tag
                }
            })
            .collect();
        definition["Tags"] = json!(tags);
    }
    if rng.u8(0..10) < 2 {
        definition["NodeMeta"] = if rng.bool() {
            json!({ "rack": rng.choice(["r1", "r2"]).unwrap() })
        } else {
            json!({ "zone": rng.choice(["a", "b"]).unwrap() })
        };
    }
    if rng.u8(0..100) < 25 {
        definition["ServiceMeta"] = if rng.bool() {
            json!({ "version": rng.choice(["1", "2"]).unwrap() })
        } else {
            json!({ "env": rng.choice(["prod", "dev"]).unwrap() })
        };
    }
    if rng.u8(0..100) < 25 {
        let candidates = [
            format!("{service}-health"),
            format!("{service}-extra"),
            NODE_CHECK.to_owned(),
            format!("_service_maintenance:{service}"),
        ];
        let mut ignore: Vec<String> = candidates.into_iter().filter(|_| rng.bool()).collect();
        if ignore.is_empty() {
            ignore.push(NODE_CHECK.to_owned());
        }
        definition["IgnoreCheckIDs"] = json!(ignore);
    }
    let name = format!("q{i}");
    Scenario {
        definition: json!({ "Name": name, "Service": definition }),
        name,
        instances,
    }
}

/// The catalog registration of `instance` of `service`.
fn registration(
    dcs: &[String],
    nodes: &[Vec<NodeSpec>],
    service: &str,
    instance: &InstanceSpec,
) -> (String, RegisterRequest) {
    let dc = dcs[usize::from(instance.dc) - 1].clone();
    let node = &nodes[usize::from(instance.dc) - 1][instance.node];
    let mut checks = vec![CheckInput {
        check_id: Some(NODE_CHECK.to_owned()),
        name: Some("Serf Health Status".to_owned()),
        status: Some(node.node_check.to_owned()),
        ..Default::default()
    }];
    for (id, status) in &instance.checks {
        checks.push(CheckInput {
            check_id: Some(id.clone()),
            name: Some(id.clone()),
            status: Some((*status).to_owned()),
            service_id: Some(service.to_owned()),
            ..Default::default()
        });
    }
    let request = RegisterRequest {
        datacenter: Some(dc.clone()),
        node: Some(node.name.clone()),
        address: Some(node.address.to_string()),
        node_meta: Some(node.meta.clone()),
        service: Some(ServiceInput {
            id: Some(service.to_owned()),
            service: Some(service.to_owned()),
            tags: Some(instance.tags.clone()),
            address: instance.service_address.map(|a| a.to_string()),
            meta: Some(instance.meta.clone()),
            port: Some(8080),
            ..Default::default()
        }),
        checks: Some(checks),
        ..Default::default()
    };
    (dc, request)
}

/// A readable account of a scenario, for a failure.
fn describe(scenario: &Scenario, dcs: &[String], nodes: &[Vec<NodeSpec>]) -> String {
    let mut out = format!("query {}: {}\n", scenario.name, scenario.definition);
    if scenario.instances.is_empty() {
        out.push_str("  no instance in any datacenter\n");
    }
    for instance in &scenario.instances {
        let node = &nodes[usize::from(instance.dc) - 1][instance.node];
        let _ = writeln!(
            out,
            "  {} node {} {} meta {:?} {NODE_CHECK}={} | service address {:?} tags {:?} meta {:?} checks {:?}",
            dcs[usize::from(instance.dc) - 1],
            node.name,
            node.address,
            node.meta,
            node.node_check,
            instance.service_address,
            instance.tags,
            instance.meta,
            instance.checks,
        );
    }
    out
}

/// consul-sim's execute of `name` in dc1.
fn reference(federation: &Federation, name: &str) -> Outcome {
    match federation.execute("dc1", name) {
        None => panic!("consul-sim does not know query {name}"),
        Some((_, addresses)) if addresses.is_empty() => Outcome::Empty,
        Some((dc, addresses)) => Outcome::Answer { dc, addresses },
    }
}

/// One question to the server over UDP (EDNS 1232, 1 s timeout):
/// `Ok(None)` for SERVFAIL (data still syncing), `Err` for no reply.
fn ask(dns: SocketAddr, name: &str, rtype: RecordType) -> Result<Option<Message>, String> {
    let reply = try_udp(
        dns,
        &with_edns(query(name, rtype), 1232, 0),
        Duration::from_secs(1),
    )
    .ok_or_else(|| format!("no reply to {name} {rtype} within 1 s"))?;
    Ok((reply.metadata.response_code != ResponseCode::ServFail).then_some(reply))
}

/// The resolver's answer for query `name`: A for the addresses, SRV
/// (`_<name>._tcp.query.consul`) for the datacenter (its targets) and
/// its glue, which must agree with the A records. SERVFAIL is retried
/// for at most [`SYNC_RETRY`]; `Err` describes anything that is neither
/// NXDOMAIN nor a consistent answer.
fn resolve(dns: SocketAddr, name: &str) -> Result<Outcome, String> {
    let a_name = format!("{name}.query.consul");
    let srv_name = format!("_{name}._tcp.query.consul");
    let deadline = Instant::now() + SYNC_RETRY;
    let (a, srv) = loop {
        if let (Some(a), Some(srv)) = (
            ask(dns, &a_name, RecordType::A)?,
            ask(dns, &srv_name, RecordType::SRV)?,
        ) {
            break (a, srv);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "SERVFAIL for {SYNC_RETRY:?} on {a_name} A or {srv_name} SRV"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (a_code, srv_code) = (a.metadata.response_code, srv.metadata.response_code);
    match (a_code, srv_code) {
        (ResponseCode::NXDomain, ResponseCode::NXDomain) => return Ok(Outcome::Empty),
        (ResponseCode::NoError, ResponseCode::NoError) => {}
        _ => return Err(format!("A answered {a_code}, SRV answered {srv_code}")),
    }
    let addresses = ipv4s(&a.answers);
    if addresses.is_empty() {
        return Err(format!("NOERROR without A records: {:?}", a.answers));
    }
    let targets = srv_targets(&srv.answers);
    let dcs: BTreeSet<Option<String>> = targets
        .iter()
        .map(|(target, _)| target_datacenter(target))
        .collect();
    let dc = match dcs.into_iter().collect::<Vec<_>>().as_slice() {
        [Some(dc)] => dc.clone(),
        _ => return Err(format!("SRV targets of no single datacenter: {targets:?}")),
    };
    let glue: BTreeSet<Ipv4Addr> = ipv4s(&srv.additionals).into_iter().collect();
    let a_set: BTreeSet<Ipv4Addr> = addresses.iter().copied().collect();
    if glue != a_set {
        return Err(format!(
            "SRV glue {glue:?} (targets {targets:?}) differs from the A records {a_set:?}"
        ));
    }
    Ok(Outcome::Answer {
        dc,
        addresses: a_set.into_iter().collect(),
    })
}

/// Runs one batch: a federation of `dc_count` datacenters with random
/// coordinates (test number `n`), [`SCENARIOS`] scenarios, one server.
fn run_batch(n: u8, dc_count: usize) {
    let started = Instant::now();
    let base = base_seed();
    let seed = base.wrapping_add(dc_count as u64);
    println!(
        "differential, {dc_count} datacenters: seed {seed:#x} (DIFF_SEED={base:#x}; set DIFF_SEED to replay another)"
    );
    let mut rng = Rng::with_seed(seed);
    let net = Net::claim(n);
    let dcs: Vec<String> = (1..=dc_count).map(|i| format!("dc{i}")).collect();
    let coordinates: Vec<(&str, Option<Coordinate>)> = dcs
        .iter()
        .map(|dc| {
            let position = [rng.f64() * 0.1, rng.f64() * 0.1];
            (dc.as_str(), Some(Coordinate::at(&position)))
        })
        .collect();
    let federation = Federation::start_dcs(net, &coordinates);
    println!(
        "  datacenters by RTT from dc1: {:?}",
        federation.sim.datacenters_by_distance("dc1")
    );

    let nodes: Vec<Vec<NodeSpec>> = (1..=u8::try_from(dc_count).expect("few datacenters"))
        .map(|dc| nodes(&mut rng, net, dc))
        .collect();
    let scenarios: Vec<Scenario> = (0..SCENARIOS)
        .map(|i| scenario(&mut rng, net, &dcs, i))
        .collect();
    for scenario in &scenarios {
        let service = scenario.definition["Service"]["Service"]
            .as_str()
            .expect("a service name");
        for instance in &scenario.instances {
            let (dc, request) = registration(&dcs, &nodes, service, instance);
            federation
                .sim
                .register(&dc, request)
                .unwrap_or_else(|e| panic!("register {service} in {dc}: {e}"));
        }
    }

    let server = Server::start_with(
        net,
        &bare_server_config(net, &federation, "[queries]\nimplicit = false\n"),
    );
    let dns = server.dns();
    let consul = federation.addr("dc1");
    for scenario in &scenarios {
        let body = scenario.definition.to_string();
        let (status, reply) = http_request(consul, "POST", "/v1/query", Some(&body))
            .unwrap_or_else(|e| panic!("POST /v1/query {body}: {e}"));
        assert_eq!(status, 200, "POST /v1/query {body}: {reply}");
    }
    let posted = Instant::now();
    let mut gauge = None;
    let loaded = poll(Duration::from_secs(10), Duration::from_millis(20), || {
        gauge = server.gauge("consul_failover_dns_prepared_queries");
        (gauge == Some(SCENARIOS as f64)).then(|| posted.elapsed())
    })
    .unwrap_or_else(|| {
        panic!("consul_failover_dns_prepared_queries is {gauge:?} 10 s after posting {SCENARIOS} queries")
    });
    println!(
        "  {SCENARIOS} queries posted; consul_failover_dns_prepared_queries = {SCENARIOS} after {:.1} ms",
        loaded.as_secs_f64() * 1000.0
    );

    let mut matched = 0;
    let mut failed_over = 0;
    let mut empty = 0;
    let mut mismatches = Vec::new();
    for scenario in &scenarios {
        let want = reference(&federation, &scenario.name);
        let got = resolve(dns, &scenario.name);
        match &want {
            Outcome::Empty => empty += 1,
            Outcome::Answer { dc, .. } if dc != "dc1" => failed_over += 1,
            Outcome::Answer { .. } => {}
        }
        if got.as_ref() == Ok(&want) {
            matched += 1;
        } else {
            mismatches.push(format!(
                "{}  consul-sim execute: {want:?}\n  resolver over DNS:  {got:?}\n",
                describe(scenario, &dcs, &nodes)
            ));
        }
    }
    println!(
        "  {SCENARIOS} scenarios ran, {matched} matched, {} mismatched; {failed_over} failed over to another datacenter, {empty} answered nothing ({:.1} s)",
        mismatches.len(),
        started.elapsed().as_secs_f64()
    );
    for mismatch in &mismatches {
        println!("MISMATCH {mismatch}");
    }
    assert!(
        failed_over > 0 && empty > 0 && failed_over + empty < SCENARIOS,
        "the random scenarios should cover local answers, failovers and empty answers"
    );
    assert!(
        mismatches.is_empty(),
        "{} of {SCENARIOS} scenarios differ from consul-sim (seed {seed:#x}); the first:\n{}",
        mismatches.len(),
        mismatches[0]
    );
}

#[test]
fn prepared_queries_match_consul_in_three_datacenters() {
    run_batch(43, 3);
}

#[test]
fn prepared_queries_match_consul_in_four_datacenters() {
    run_batch(44, 4);
}
