//! The answer logic (`Resolver::resolve`) on a 10,000-service view in three
//! datacenters, five instances per service per datacenter, built directly
//! with the `HealthView` API (no Consul, no sockets).
//!
//! Criterion is the harness because it is the well-kept standard for
//! statistics-backed Rust benchmarks on stable (warm-up, outlier
//! detection, confidence intervals, baselines); `default-features = false`
//! keeps plotting and rayon out of the dependency tree.
//!
//! `cargo bench --bench answer` measures; `cargo test --bench answer` (what
//! `scripts/test` runs) or `BENCH_SMOKE=1` builds a 100-service view and
//! runs each case once, so the bench cannot rot.

use std::collections::{BTreeMap, HashSet};
use std::hint::black_box;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use consul_failover_dns::config::Config;
use consul_failover_dns::health::{
    Addresses, Check, CheckStatus, HealthView, Instance, NodeInfo, ServiceHealth, ServiceKey,
};
use consul_failover_dns::resolve::{Context, Outcome, Question, Resolver};
use criterion::{Criterion, criterion_group, criterion_main};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{DNSClass, Name, RecordType};

const DATACENTERS: [&str; 3] = ["dc1", "dc2", "dc3"];
const INSTANCES: usize = 5;

/// Whether to build the small view: `BENCH_SMOKE=1`, `--smoke`, or a run
/// without `--bench` (`cargo test --bench answer`).
fn smoke() -> bool {
    let args: Vec<String> = std::env::args().collect();
    std::env::var_os("BENCH_SMOKE").is_some_and(|v| v != "0")
        || args.iter().any(|a| a == "--smoke")
        || !args.iter().any(|a| a == "--bench")
}

fn instance(dc: usize, service: usize, i: usize, status: CheckStatus) -> Instance {
    let address = Ipv4Addr::new(
        10 + dc as u8,
        (service >> 8) as u8,
        service as u8,
        i as u8 + 1,
    );
    let lan = Addresses {
        v4: Some(address),
        ..Addresses::default()
    };
    Instance {
        node: Arc::new(NodeInfo {
            name: format!("node-{dc}-{service}-{i}"),
            lan: lan.clone(),
            wan: lan.clone(),
            meta: BTreeMap::new(),
        }),
        service_id: format!("svc{service}"),
        lan: lan.clone(),
        wan: lan,
        service_address: false,
        port: 8080,
        wan_port: None,
        tags: vec!["v1".to_owned()],
        service_meta: BTreeMap::new(),
        weight_passing: 1,
        weight_warning: 1,
        checks: vec![Check {
            id: format!("svc{service}-health"),
            status,
        }],
    }
}

/// A view of `services` services in every datacenter; `svc0` is critical
/// everywhere in dc1 (the failover case).
fn view(services: usize) -> HealthView {
    let view = HealthView::new("dc1");
    view.set_datacenters(DATACENTERS.iter().map(|d| (*d).to_owned()).collect());
    for (d, dc) in DATACENTERS.iter().enumerate() {
        let catalog: HashSet<String> = (0..services).map(|s| format!("svc{s}")).collect();
        view.apply_catalog(dc, catalog);
        for s in 0..services {
            let status = if d == 0 && s == 0 {
                CheckStatus::Critical
            } else {
                CheckStatus::Passing
            };
            let instances = (0..INSTANCES).map(|i| instance(d, s, i, status)).collect();
            view.apply_service(
                &ServiceKey::new(dc, &format!("svc{s}")),
                ServiceHealth {
                    index: 1,
                    instances,
                },
            );
        }
    }
    view
}

fn question(name: &str, qtype: RecordType) -> Question {
    Question {
        name: Name::from_str(name).expect("a valid name"),
        qtype,
        qclass: DNSClass::IN,
    }
}

fn bench(c: &mut Criterion) {
    let services = if smoke() { 100 } else { 10_000 };
    let view = view(services);
    let config = Config::from_toml_str(
        r#"
[consul]
datacenter = "dc1"
[queries.defaults]
failover = { datacenters = ["dc1", "dc2", "dc3"] }
"#,
        "bench",
    )
    .expect("bench config");
    let resolver = Resolver::new(&config);
    let mut rng = fastrand::Rng::with_seed(6);
    let middle = services / 2;
    let cases = [
        (
            "query A local healthy",
            question(&format!("svc{middle}.query.consul."), RecordType::A),
            ResponseCode::NoError,
        ),
        (
            "query A failover (local all critical)",
            question("svc0.query.consul.", RecordType::A),
            ResponseCode::NoError,
        ),
        (
            "service SRV",
            question(
                &format!("_svc{middle}._tcp.service.consul."),
                RecordType::SRV,
            ),
            ResponseCode::NoError,
        ),
        (
            "query A NXDOMAIN random name",
            question("q7xk2mzzp.query.consul.", RecordType::A),
            ResponseCode::NXDomain,
        ),
    ];
    let mut group = c.benchmark_group(format!("resolve/{services}x3x{INSTANCES}"));
    for (label, question, want) in &cases {
        // Check the case answers what it claims before timing it.
        let mut ctx = Context {
            serial: 1,
            rng: &mut rng,
            now: Duration::from_secs(1),
            trace: None,
        };
        match resolver.resolve(question, &view, &mut ctx) {
            Outcome::Answer(answer) => {
                assert_eq!(answer.rcode, *want, "{label}: {answer:?}");
                if *want == ResponseCode::NoError {
                    assert!(!answer.answers.is_empty(), "{label}: {answer:?}");
                }
                if label.contains("failover") {
                    assert_eq!(answer.datacenter.as_deref(), Some("dc2"), "{label}");
                }
            }
            other => panic!("{label}: {other:?}"),
        }
        group.bench_function(*label, |b| {
            b.iter(|| {
                let mut ctx = Context {
                    serial: 1,
                    rng: &mut rng,
                    now: Duration::from_secs(1),
                    trace: None,
                };
                black_box(resolver.resolve(black_box(question), &view, &mut ctx))
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
