//! Differential: the fast path against hickory-server's own UDP loop, both
//! serving one view. For a corpus of queries (every name form, many types,
//! EDNS on and off, 0x20 case, truncation sizes, protocol errors and
//! malformed datagrams), each reply of the fast path — the first one
//! worked out, the next ones from its cache — decodes to the same response
//! as the slow path's, and a change of the view shows in the very next
//! answer.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_proto::op::{Edns, Message, OpCode, Query};
use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use tokio::net::UdpSocket;

use crate::config::Config;
use crate::dns::{DnsHandler, Listeners, UdpMode, WatchDemand, WireSettings, serve};
use crate::health::{
    Addresses, CheckStatus, HealthView, Instance, ServiceHealth, ServiceKey, test_instance,
};
use crate::metrics::Metrics;
use crate::resolve::Resolver;

struct NoWatches;

impl WatchDemand for NoWatches {
    fn ensure_service(&self, _key: &ServiceKey) -> bool {
        true
    }
    fn ensure_catalog(&self, _datacenter: &str) {}
}

fn instance(node: &str, address: &str, status: CheckStatus) -> Instance {
    test_instance(node, address, status)
}

fn health(instances: Vec<Instance>) -> ServiceHealth {
    ServiceHealth {
        index: 2,
        instances,
    }
}

/// dc1 and dc2 with: `web` (3 in dc1, 2 in dc2), `big` (100 in dc1),
/// `down` (critical in dc1, healthy in dc2), `host` (a host-name
/// address), `six` (IPv6), `tagged` (tags), and `later`, never synced.
pub(super) fn view() -> Arc<HealthView> {
    let view = Arc::new(HealthView::new("dc1"));
    view.set_datacenters(vec!["dc1".to_owned(), "dc2".to_owned()]);
    let names = ["web", "big", "down", "host", "six", "tagged", "later"];
    for dc in ["dc1", "dc2"] {
        view.apply_catalog(dc, names.iter().map(|n| (*n).to_owned()).collect());
    }
    let web: Vec<Instance> = (1..=3)
        .map(|i| {
            instance(
                &format!("web-{i}"),
                &format!("10.1.0.{i}"),
                CheckStatus::Passing,
            )
        })
        .collect();
    view.apply_service(&ServiceKey::new("dc1", "web"), health(web));
    let web2: Vec<Instance> = (1..=2)
        .map(|i| {
            instance(
                &format!("web2-{i}"),
                &format!("10.2.0.{i}"),
                CheckStatus::Passing,
            )
        })
        .collect();
    view.apply_service(&ServiceKey::new("dc2", "web"), health(web2));
    let big: Vec<Instance> = (1..=100)
        .map(|i| {
            instance(
                &format!("big-{i}"),
                &Ipv4Addr::new(10, 9, 0, i).to_string(),
                CheckStatus::Passing,
            )
        })
        .collect();
    view.apply_service(&ServiceKey::new("dc1", "big"), health(big));
    view.apply_service(
        &ServiceKey::new("dc1", "down"),
        health(vec![instance("down-1", "10.1.1.1", CheckStatus::Critical)]),
    );
    view.apply_service(
        &ServiceKey::new("dc2", "down"),
        health(vec![instance("down-2", "10.2.1.1", CheckStatus::Passing)]),
    );
    let mut host = instance("host-1", "10.1.2.1", CheckStatus::Passing);
    host.lan = Addresses {
        v4: None,
        v6: None,
        hostname: Some("db.example.com".into()),
    };
    host.service_address = true;
    view.apply_service(&ServiceKey::new("dc1", "host"), health(vec![host]));
    let mut six = instance("six-1", "10.1.3.1", CheckStatus::Passing);
    six.lan.v6 = Some(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1));
    view.apply_service(&ServiceKey::new("dc1", "six"), health(vec![six]));
    let tagged: Vec<Instance> = (1..=2)
        .map(|i| {
            let mut t = instance(
                &format!("tag-{i}"),
                &format!("10.1.4.{i}"),
                CheckStatus::Passing,
            );
            t.tags = vec![if i == 1 { "primary" } else { "replica" }.to_owned()];
            t
        })
        .collect();
    view.apply_service(&ServiceKey::new("dc1", "tagged"), health(tagged));
    view.add_service_slot(&ServiceKey::new("dc1", "later"));
    view
}

/// The handler of the tests: the view, a `[[query]]` `fo` failing over
/// from dc1 to dc2, TTL 5 s.
pub(super) fn handler(view: &Arc<HealthView>, metrics: Metrics) -> DnsHandler {
    let config = Config::from_toml_str(
        "[dns]\nfirst_answer_wait = \"100ms\"\nttl = \"5s\"\n[consul]\ndatacenter = \"dc1\"\n\
         [[query]]\nname = \"fo\"\nservice = \"down\"\nfailover = { datacenters = [\"dc2\"] }\n",
        "test.toml",
    )
    .unwrap();
    DnsHandler::new(
        Arc::new(ArcSwap::from_pointee(Resolver::new(&config))),
        Arc::clone(view),
        Arc::new(NoWatches),
        metrics,
        WireSettings {
            udp_payload: config.dns.udp_payload,
            udp_answer_limit: config.dns.udp_answer_limit,
            first_answer_wait: config.dns.first_answer_wait,
            upstream: None,
            rate_limit: config.dns.rate_limit,
            rate_limit_slip: config.dns.rate_limit_slip,
        },
    )
}

/// One server over `view` with UDP served as `mode`.
pub(super) async fn start(view: &Arc<HealthView>, mode: UdpMode, metrics: Metrics) -> Listeners {
    serve(
        handler(view, metrics),
        &["127.0.0.1:0".parse().unwrap()],
        crate::dns::TcpSettings {
            idle_timeout: Duration::from_secs(5),
            max_connections: 64,
        },
        mode,
    )
    .await
    .unwrap()
}

/// The reply to a datagram, or `None` after 200 ms of silence.
pub(super) async fn exchange(
    socket: &UdpSocket,
    server: SocketAddr,
    bytes: &[u8],
) -> Option<Vec<u8>> {
    socket.send_to(bytes, server).await.unwrap();
    let mut buffer = vec![0; 65_535];
    loop {
        match tokio::time::timeout(Duration::from_millis(200), socket.recv_from(&mut buffer)).await
        {
            Err(_) => return None,
            Ok(Ok((n, from))) if from == server => return Some(buffer[..n].to_vec()),
            Ok(_) => {}
        }
    }
}

/// A record as comparable text, with the SOA serial left out (the two
/// paths may straddle a second).
fn text(record: &Record) -> String {
    let data = match &record.data {
        RData::SOA(soa) => format!(
            "SOA {} {} {} {} {} {}",
            soa.mname, soa.rname, soa.refresh, soa.retry, soa.expire, soa.minimum
        ),
        other => other.to_string(),
    };
    format!(
        "{} {} {} {} {}",
        record.name,
        record.ttl,
        record.dns_class,
        record.record_type(),
        data
    )
}

fn serials(message: &Message) -> Vec<u32> {
    message
        .answers
        .iter()
        .chain(&message.authorities)
        .filter_map(|r| match &r.data {
            RData::SOA(soa) => Some(soa.serial),
            _ => None,
        })
        .collect()
}

/// What must match between the two paths' replies to one request.
/// `exact_records` is false where the slow path's random shuffle picks
/// which records survive truncation.
pub(super) fn compare(what: &str, slow: &[u8], fast: &[u8], exact_records: bool) {
    assert_eq!(slow[..2], fast[..2], "{what}: ID");
    let (slow_m, fast_m) = match (Message::from_vec(slow), Message::from_vec(fast)) {
        (Ok(s), Ok(f)) => (s, f),
        (Err(_), Err(_)) => {
            assert_eq!(slow, fast, "{what}: undecodable replies differ");
            return;
        }
        (s, f) => panic!("{what}: one reply decodes, the other not: {s:?} / {f:?}"),
    };
    assert_eq!(slow_m.metadata, fast_m.metadata, "{what}: header");
    assert_eq!(slow_m.queries, fast_m.queries, "{what}: question");
    // The question's case comes back as sent, in both.
    assert_eq!(
        slow_m
            .queries
            .iter()
            .map(|q| q.name().to_string())
            .collect::<Vec<_>>(),
        fast_m
            .queries
            .iter()
            .map(|q| q.name().to_string())
            .collect::<Vec<_>>(),
        "{what}: question case"
    );
    let (ss, fs) = (serials(&slow_m), serials(&fast_m));
    assert_eq!(ss.len(), fs.len(), "{what}: SOA count");
    for (s, f) in ss.iter().zip(&fs) {
        assert!(s.abs_diff(*f) <= 1, "{what}: SOA serial {s} vs {f}");
    }
    let sorted = |records: &[Record]| {
        let mut all: Vec<String> = records.iter().map(text).collect();
        all.sort();
        all
    };
    if exact_records {
        assert_eq!(
            sorted(&slow_m.answers),
            sorted(&fast_m.answers),
            "{what}: answers"
        );
        assert_eq!(
            sorted(&slow_m.additionals),
            sorted(&fast_m.additionals),
            "{what}: additionals"
        );
    } else {
        let limit = slow_m
            .edns
            .as_ref()
            .map_or(512, |e| usize::from(e.max_payload()));
        assert!(fast.len() <= limit.max(512), "{what}: {} bytes", fast.len());
    }
    assert_eq!(
        sorted(&slow_m.authorities),
        sorted(&fast_m.authorities),
        "{what}: authorities"
    );
    assert_eq!(slow_m.edns, fast_m.edns, "{what}: OPT record");
}

fn mixed_case(name: &str, seed: &mut fastrand::Rng) -> String {
    name.chars()
        .map(|c| {
            if seed.bool() {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

/// A query message.
fn query(name: &str, qtype: RecordType, class: DNSClass, edns: Option<(u16, bool)>) -> Message {
    let mut message = Message::query();
    message.metadata.id = 0x5150;
    message.metadata.recursion_desired = true;
    let mut q = Query::query(Name::from_ascii(name).unwrap(), qtype);
    q.set_query_class(class);
    message.add_query(q);
    if let Some((payload, cookie)) = edns {
        let mut e = Edns::new();
        e.set_max_payload(payload);
        if cookie {
            e.set_dnssec_ok(true);
            e.options_mut().insert(EdnsOption::Unknown(
                u16::from(EdnsCode::Cookie),
                vec![1, 2, 3, 4, 5, 6, 7, 8],
            ));
        }
        message.set_edns(e);
    }
    message
}

/// The corpus of well-formed requests, with whether their records may be
/// compared exactly.
fn corpus() -> Vec<(String, Vec<u8>, bool)> {
    let names = [
        "web.query.consul.",
        "web.query.dc2.consul.",
        "_web._tcp.query.consul.",
        "web.service.consul.",
        "web.service.dc2.consul.",
        "primary.tagged.service.consul.",
        "_tagged._replica.service.consul.",
        "_web._tcp.service.consul.",
        "fo.query.consul.",
        "down.service.consul.",
        "host.query.consul.",
        "six.query.consul.",
        "web-1.node.consul.",
        "web2-1.node.dc2.consul.",
        "0a010001.addr.consul.",
        "0a010001.addr.dc1.consul.",
        "consul.",
        "query.consul.",
        "service.consul.",
        "dc1.consul.",
        "_tcp.query.consul.",
        "nope.query.consul.",
        "nope.service.consul.",
        "web.query.dc9.consul.",
        "web.connect.consul.",
        "example.com.",
        "later.query.consul.",
        "big.query.consul.",
    ];
    let types = [
        RecordType::A,
        RecordType::AAAA,
        RecordType::SRV,
        RecordType::ANY,
        RecordType::TXT,
        RecordType::SOA,
        RecordType::NS,
        RecordType::CNAME,
        RecordType::MX,
    ];
    let edns = [
        None,
        Some((512, false)),
        Some((1232, true)),
        Some((4096, false)),
    ];
    let mut rng = fastrand::Rng::with_seed(20_261_125);
    let mut out = Vec::new();
    for name in names {
        let exact = !name.starts_with("big.");
        for qtype in types {
            for e in edns {
                let m = query(name, qtype, DNSClass::IN, e);
                out.push((format!("{name} {qtype} {e:?}"), m.to_vec().unwrap(), exact));
            }
        }
        let cased = mixed_case(name, &mut rng);
        let m = query(&cased, RecordType::A, DNSClass::IN, Some((1232, false)));
        out.push((format!("{cased} A (0x20)"), m.to_vec().unwrap(), exact));
        let m = query(name, RecordType::A, DNSClass::CH, None);
        out.push((format!("{name} A CH"), m.to_vec().unwrap(), exact));
    }
    for payload in [512, 600, 1000, 1232, 4096] {
        for qtype in [RecordType::A, RecordType::SRV, RecordType::ANY] {
            let m = query(
                "big.service.consul.",
                qtype,
                DNSClass::IN,
                Some((payload, false)),
            );
            out.push((format!("big {qtype} {payload}"), m.to_vec().unwrap(), false));
        }
    }
    // Protocol errors.
    let mut status = query("web.query.consul.", RecordType::A, DNSClass::IN, None);
    status.metadata.op_code = OpCode::Status;
    out.push(("opcode STATUS".to_owned(), status.to_vec().unwrap(), true));
    let mut v1 = query(
        "web.query.consul.",
        RecordType::A,
        DNSClass::IN,
        Some((1232, false)),
    );
    v1.edns.as_mut().unwrap().set_version(1);
    out.push(("EDNS version 1".to_owned(), v1.to_vec().unwrap(), true));
    let mut two = query("web.query.consul.", RecordType::A, DNSClass::IN, None);
    two.add_query(Query::query(
        Name::from_ascii("web.service.consul.").unwrap(),
        RecordType::A,
    ));
    out.push(("two questions".to_owned(), two.to_vec().unwrap(), true));
    let mut none = Message::query();
    none.metadata.id = 7;
    out.push(("no question".to_owned(), none.to_vec().unwrap(), true));
    out
}

/// Datagrams that are not well-formed queries.
fn malformed() -> Vec<(String, Vec<u8>)> {
    let good = query(
        "web.query.consul.",
        RecordType::A,
        DNSClass::IN,
        Some((1232, false)),
    )
    .to_vec()
    .unwrap();
    let mut out = Vec::new();
    for cut in [0, 5, 11, 12, 13, 20, good.len() - 1] {
        out.push((format!("cut at {cut}"), good[..cut].to_vec()));
    }
    let mut response = good.clone();
    response[2] |= 0x80;
    out.push(("QR set".to_owned(), response));
    // A name that points at itself.
    let mut looped = good[..12].to_vec();
    looped.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    looped[11] = 0;
    out.push(("compression loop".to_owned(), looped));
    let mut trailing = good.clone();
    trailing.extend_from_slice(&[0xde, 0xad]);
    out.push(("trailing bytes".to_owned(), trailing));
    let mut rng = fastrand::Rng::with_seed(7);
    for n in 0..40 {
        let mut bytes = good.clone();
        for _ in 0..3 {
            let at = rng.usize(2..bytes.len());
            bytes[at] = rng.u8(..);
        }
        out.push((format!("mutated {n}"), bytes));
        let len = rng.usize(0..64);
        out.push((
            format!("random {n}"),
            (0..len).map(|_| rng.u8(..)).collect(),
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_path_replies_decode_like_the_slow_path() {
    let view = view();
    let fast_metrics = Metrics::new();
    let slow = start(&view, UdpMode::Hickory, Metrics::new()).await;
    let fast = start(&view, UdpMode::Fast(2), fast_metrics.clone()).await;
    let (slow_at, fast_at) = (slow.bound[0], fast.bound[0]);
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();

    let mut compared = 0;
    for (what, bytes, exact) in corpus() {
        let slow_reply = exchange(&socket, slow_at, &bytes).await;
        // The first is worked out, the next ones may come from the cache
        // (and go round its rotations).
        for round in 0..3 {
            let fast_reply = exchange(&socket, fast_at, &bytes).await;
            match (&slow_reply, &fast_reply) {
                (None, None) => {}
                (Some(s), Some(f)) => compare(&format!("{what} (round {round})"), s, f, exact),
                (s, f) => panic!("{what} (round {round}): slow {s:?}, fast {f:?}"),
            }
            compared += 1;
        }
    }
    for (what, bytes) in malformed() {
        let slow_reply = exchange(&socket, slow_at, &bytes).await;
        let fast_reply = exchange(&socket, fast_at, &bytes).await;
        if bytes.len() >= 12 && bytes[2] & 0x80 != 0 {
            // A response (QR=1): hickory-server answers an undecodable one
            // with FORMERR (it checks QR only after decoding), which
            // reflects it to a forged source; the fast path never answers.
            assert!(fast_reply.is_none(), "{what}: a reply to QR=1");
            compared += 1;
            continue;
        }
        match (&slow_reply, &fast_reply) {
            (None, None) => {}
            (Some(s), Some(f)) => compare(&what, s, f, true),
            (s, f) => panic!("{what}: slow {s:?}, fast {f:?}"),
        }
        compared += 1;
    }
    let rendered = fast_metrics.render();
    let cached: f64 = rendered
        .lines()
        .find(|l| l.starts_with("consul_failover_dns_udp_cached_answers_total "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("the cached-answers counter");
    assert!(cached > 500.0, "only {cached} answers came from the cache");
    assert!(compared > 1000, "{compared}");

    // A change of the view shows in the very next answer of the fast path.
    let web = query("web.query.consul.", RecordType::A, DNSClass::IN, None)
        .to_vec()
        .unwrap();
    for step in 0..3 {
        let instances: Vec<Instance> = (1..=3)
            .map(|i| {
                let status = if i <= step {
                    CheckStatus::Critical
                } else {
                    CheckStatus::Passing
                };
                instance(&format!("web-{i}"), &format!("10.1.0.{i}"), status)
            })
            .collect();
        view.apply_service(&ServiceKey::new("dc1", "web"), health(instances));
        let reply = exchange(&socket, fast_at, &web).await.unwrap();
        let answers = Message::from_vec(&reply).unwrap().answers;
        assert_eq!(answers.len(), 3 - step, "step {step}: {answers:?}");
        let slow_reply = exchange(&socket, slow_at, &web).await.unwrap();
        compare(&format!("after change {step}"), &slow_reply, &reply, true);
    }
    // Failover and back, each seen by the very next answer.
    let fo = query("fo.query.consul.", RecordType::A, DNSClass::IN, None)
        .to_vec()
        .unwrap();
    for (status, expected) in [
        (CheckStatus::Critical, "10.2.1.1"),
        (CheckStatus::Passing, "10.1.1.1"),
        (CheckStatus::Critical, "10.2.1.1"),
    ] {
        view.apply_service(
            &ServiceKey::new("dc1", "down"),
            health(vec![instance("down-1", "10.1.1.1", status)]),
        );
        for _ in 0..3 {
            let reply = exchange(&socket, fast_at, &fo).await.unwrap();
            let answers = Message::from_vec(&reply).unwrap().answers;
            let got: Vec<String> = answers.iter().map(|r| r.data.to_string()).collect();
            assert_eq!(got, [expected], "dc1 {status:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotations_give_every_instance_a_turn_first() {
    let view = view();
    let fast = start(&view, UdpMode::Fast(1), Metrics::new()).await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let web = query("web.query.consul.", RecordType::A, DNSClass::IN, None)
        .to_vec()
        .unwrap();
    let mut first = std::collections::BTreeSet::new();
    for _ in 0..12 {
        let reply = exchange(&socket, fast.bound[0], &web).await.unwrap();
        let answers = Message::from_vec(&reply).unwrap().answers;
        assert_eq!(answers.len(), 3);
        first.insert(answers[0].data.to_string());
    }
    assert_eq!(first.len(), 3, "{first:?}");
}

#[test]
fn a_port_held_by_another_socket_is_an_error_not_shared() {
    let held = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let address = held.local_addr().unwrap();
    let error = super::bind(address, 2).expect_err("bind must fail");
    assert_eq!(error.kind(), std::io::ErrorKind::AddrInUse);
    // A free port: every socket shares it.
    let (sockets, bound) = super::bind("127.0.0.1:0".parse().unwrap(), 3).unwrap();
    assert_eq!(sockets.len(), 3);
    assert!(
        sockets
            .iter()
            .all(|s| s.local_addr().unwrap() == bound && bound.port() != 0)
    );
}

/// The threads block in `recvmmsg` with no timeout: stopping must wake
/// them, so they close their sockets and the port is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_wakes_blocked_threads_and_frees_the_port() {
    let view = view();
    let mut fast = start(&view, UdpMode::Fast(2), Metrics::new()).await;
    let address = fast.bound[0];
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let web = query("web.query.consul.", RecordType::A, DNSClass::IN, None)
        .to_vec()
        .unwrap();
    assert!(exchange(&socket, address, &web).await.is_some());
    // Both threads are blocked now, waiting for the next datagram.
    tokio::time::sleep(Duration::from_millis(50)).await;
    fast.stop_fast_path();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        // A plain bind fails while any fast-path socket holds the port.
        match std::net::UdpSocket::bind(address) {
            Ok(_) => break,
            Err(error) => {
                assert_eq!(error.kind(), std::io::ErrorKind::AddrInUse);
                assert!(
                    std::time::Instant::now() < deadline,
                    "the fast-path threads still hold {address} 5 s after stop"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
