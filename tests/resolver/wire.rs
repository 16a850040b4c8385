//! The wire rules of DESIGN §2, each checked through `dig` and through a
//! Rust client (hickory-proto messages over std sockets).

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use consul_sim::model::WARNING;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

use crate::support::{
    Federation, Instance, Net, Server, assert_apex_soa, brief, dig, ipv4s, ipv6s, poll, query, tcp,
    try_udp, types, udp, udp_bytes, with_edns,
};

/// A server over the data every wire test uses (all in dc1 unless said):
///
/// | service | instances |
/// |---|---|
/// | grafana | `.1.1`, `.1.2`; dc2 `.2.1`, `.2.2` |
/// | web | node `web-a` at `.1.11`, port 8080, passing; node `web-b` at `.1.12` with service address `.1.22`, port 9090, warning; weights 7 passing / 3 warning |
/// | dual | node `dual-4` at `.1.31`, node `dual-6` at an IPv6 address |
/// | big | 100 nodes at `.1.101` … `.1.200` |
struct Wire {
    /// Its addresses.
    net: Net,
    /// The server (dropped before the simulator it watches).
    server: Server,
    /// The simulator.
    _federation: Federation,
}

impl Wire {
    /// Registers the data and starts the server.
    fn start(n: u8) -> Self {
        let net = Net::claim(n);
        let federation = Federation::start(net);
        federation.register_service("dc1", "grafana", &[net.instance(1, 1), net.instance(1, 2)]);
        federation.register_service("dc2", "grafana", &[net.instance(2, 1), net.instance(2, 2)]);
        federation
            .register(&Instance::new("dc1", "web-a", net.instance(1, 11), "web").weights(7, 3));
        federation.register(
            &Instance::new("dc1", "web-b", net.instance(1, 12), "web")
                .service_address(net.instance(1, 22))
                .port(9090)
                .status(WARNING)
                .weights(7, 3),
        );
        federation.register(&Instance::new("dc1", "dual-4", net.instance(1, 31), "dual"));
        federation.register(&Instance::new(
            "dc1",
            "dual-6",
            net.instance_v6(1, 31),
            "dual",
        ));
        let big: Vec<Ipv4Addr> = (101..=200).map(|host| net.instance(1, host)).collect();
        federation.register_service("dc1", "big", &big);
        let server = Server::start(net, &federation);
        Self {
            net,
            server,
            _federation: federation,
        }
    }

    /// Waits (at most 5 s) until `name` `rtype` gets an answer other than
    /// SERVFAIL: names first asked for start a watch, and the server may
    /// answer SERVFAIL while it has no data yet (DESIGN §2,
    /// `first_answer_wait`).
    fn warm(&self, name: &str, rtype: RecordType) {
        let reply = poll(Duration::from_secs(5), Duration::from_millis(50), || {
            try_udp(
                self.server.dns(),
                &with_edns(query(name, rtype), 1232, 0),
                Duration::from_secs(2),
            )
            .filter(|reply| reply.metadata.response_code != ResponseCode::ServFail)
        });
        assert!(
            reply.is_some(),
            "{name} {rtype}: no answer but SERVFAIL within 5 s"
        );
    }

    /// The sorted dc1 addresses of `big`.
    fn big(&self) -> Vec<Ipv4Addr> {
        (101..=200).map(|host| self.net.instance(1, host)).collect()
    }
}

/// `addresses` as dig prints them, sorted as strings.
fn strings<T: ToString>(addresses: &[T]) -> Vec<String> {
    let mut out: Vec<String> = addresses.iter().map(ToString::to_string).collect();
    out.sort();
    out
}

#[test]
fn a_answers_are_authoritative_and_keep_the_question_case() {
    let wire = Wire::start(3);
    let dns = wire.server.dns();
    let dc1 = vec![wire.net.instance(1, 1), wire.net.instance(1, 2)];
    let asked = "GrAfAnA.QuErY.CoNsUl.";

    let reply = udp(dns, &query(asked, RecordType::A));
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert!(reply.metadata.authoritative, "AA: {reply:?}");
    assert!(!reply.metadata.truncation, "TC: {reply:?}");
    assert_eq!(reply.queries.len(), 1, "{reply:?}");
    assert_eq!(
        reply.queries[0].name().to_ascii(),
        asked,
        "the question's letter case (0x20)"
    );
    assert_eq!(ipv4s(&reply.answers), dc1);
    assert_eq!(types(&reply.answers), [RecordType::A, RecordType::A]);
    for record in &reply.answers {
        assert_eq!(
            record.name.to_ascii().to_lowercase(),
            asked.to_lowercase(),
            "{record}"
        );
        assert_eq!(record.ttl, 0, "dns.ttl is 0s: {record}");
    }

    let out = dig(dns, &[asked, "A"]);
    assert_eq!(
        (out.opcode.as_str(), out.status.as_str()),
        ("QUERY", "NOERROR"),
        "{}",
        out.text
    );
    assert!(
        out.flag("qr") && out.flag("aa") && !out.flag("tc"),
        "{}",
        out.text
    );
    assert_eq!(
        out.edns,
        Some((0, 1232)),
        "EDNS echoed with udp_payload: {}",
        out.text
    );
    assert_eq!(out.answer_data("A"), strings(&dc1), "{}", out.text);
    assert!(
        out.text.contains(&format!(";{asked}")),
        "question case in dig's output:\n{}",
        out.text
    );
}

#[test]
fn aaaa_of_an_ipv4_only_name_is_nodata_with_the_apex_soa() {
    let wire = Wire::start(4);
    let dns = wire.server.dns();
    wire.warm("web.service.consul", RecordType::A);
    for name in ["grafana.query.consul", "web.service.consul"] {
        let reply = udp(dns, &query(name, RecordType::AAAA));
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NoError,
            "{name}: {reply:?}"
        );
        assert!(reply.metadata.authoritative, "{name}: AA");
        assert!(reply.answers.is_empty(), "{name}: {:?}", reply.answers);
        assert_apex_soa(&reply.authorities, name);

        let out = dig(dns, &[name, "AAAA"]);
        assert_eq!(out.status, "NOERROR", "{}", out.text);
        assert!(out.answer.is_empty(), "{}", out.text);
        assert_eq!(out.authority.len(), 1, "{}", out.text);
        assert_eq!(
            (
                out.authority[0].name.as_str(),
                out.authority[0].rtype.as_str()
            ),
            ("consul.", "SOA"),
            "{}",
            out.text
        );
        assert!(
            out.authority[0]
                .data
                .starts_with("ns.consul. hostmaster.consul. "),
            "{}",
            out.text
        );
    }
}

#[test]
fn unknown_names_in_the_zone_are_nxdomain_with_the_apex_soa() {
    let wire = Wire::start(5);
    let dns = wire.server.dns();
    for name in ["nosuch.query.consul", "nosuch.service.consul"] {
        let reply = udp(dns, &query(name, RecordType::A));
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NXDomain,
            "{name}: {reply:?}"
        );
        assert!(reply.metadata.authoritative, "{name}: AA");
        assert!(reply.answers.is_empty(), "{name}: {:?}", reply.answers);
        assert_apex_soa(&reply.authorities, name);

        let out = dig(dns, &[name, "A"]);
        assert_eq!(out.status, "NXDOMAIN", "{}", out.text);
        assert!(out.flag("aa"), "{}", out.text);
        assert!(out.answer.is_empty(), "{}", out.text);
        assert_eq!(out.authority.len(), 1, "{}", out.text);
        assert_eq!(
            (
                out.authority[0].name.as_str(),
                out.authority[0].rtype.as_str()
            ),
            ("consul.", "SOA"),
            "{}",
            out.text
        );
    }
}

#[test]
fn names_outside_the_zone_are_refused_without_recursion() {
    let wire = Wire::start(6);
    let dns = wire.server.dns();
    let reply = udp(dns, &query("example.com", RecordType::A));
    assert_eq!(
        reply.metadata.response_code,
        ResponseCode::Refused,
        "{reply:?}"
    );
    assert!(!reply.metadata.recursion_available, "RA: {reply:?}");
    assert!(reply.answers.is_empty(), "{reply:?}");

    let out = dig(dns, &["example.com", "A"]);
    assert_eq!(out.status, "REFUSED", "{}", out.text);
    assert!(
        out.flag("qr") && out.flag("rd") && !out.flag("ra"),
        "{}",
        out.text
    );
    assert!(out.answer.is_empty(), "{}", out.text);
}

#[test]
fn opcodes_other_than_query_are_notimp() {
    let wire = Wire::start(7);
    let dns = wire.server.dns();
    for opcode in [OpCode::Status, OpCode::Notify, OpCode::Update] {
        let mut message = Message::new(fastrand::u16(..), MessageType::Query, opcode);
        message.add_query(Query::query(
            Name::from_ascii("grafana.query.consul.").expect("name"),
            RecordType::A,
        ));
        let reply = udp(dns, &message);
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NotImp,
            "{opcode:?}: {reply:?}"
        );
        assert_eq!(reply.metadata.op_code, opcode, "the opcode is echoed");
        assert!(reply.answers.is_empty(), "{opcode:?}: {reply:?}");
    }

    let out = dig(dns, &["+opcode=status", "grafana.query.consul", "A"]);
    assert_eq!(
        (out.opcode.as_str(), out.status.as_str()),
        ("STATUS", "NOTIMP"),
        "{}",
        out.text
    );
    assert!(out.answer.is_empty(), "{}", out.text);
}

#[test]
fn a_question_count_other_than_one_is_formerr() {
    let wire = Wire::start(8);
    let dns = wire.server.dns();
    let mut two = query("grafana.query.consul", RecordType::A);
    two.add_query(Query::query(
        Name::from_ascii("web.service.consul.").expect("name"),
        RecordType::A,
    ));
    let mut none = query("grafana.query.consul", RecordType::A);
    none.queries.clear();
    for (what, message) in [("two questions", two), ("no question", none)] {
        let reply = udp(dns, &message);
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::FormErr,
            "{what}: {reply:?}"
        );
        assert!(reply.answers.is_empty(), "{what}: {reply:?}");
    }

    // dig +header-only sends QDCOUNT 0.
    let out = dig(dns, &["+header-only", "grafana.query.consul", "A"]);
    assert_eq!(out.status, "FORMERR", "{}", out.text);
    assert!(out.answer.is_empty(), "{}", out.text);
}

#[test]
fn edns_versions_above_zero_get_badvers_with_an_opt_record() {
    let wire = Wire::start(9);
    let dns = wire.server.dns();
    let reply = udp(
        dns,
        &with_edns(query("grafana.query.consul", RecordType::A), 1232, 1),
    );
    // Code 16 is both BADVERS and BADSIG; hickory decodes it as BADSIG.
    assert_eq!(
        u16::from(reply.metadata.response_code),
        u16::from(ResponseCode::BADVERS),
        "{reply:?}"
    );
    let edns = reply
        .edns
        .as_ref()
        .expect("BADVERS comes with an OPT record");
    assert_eq!(edns.version(), 0, "the version the server speaks");
    assert!(reply.answers.is_empty(), "{reply:?}");

    let out = dig(
        dns,
        &["+edns=1", "+noednsnegotiation", "grafana.query.consul", "A"],
    );
    assert_eq!(out.status, "BADVERS", "{}", out.text);
    assert_eq!(
        out.edns.map(|(version, _)| version),
        Some(0),
        "{}",
        out.text
    );
    assert!(out.answer.is_empty(), "{}", out.text);
}

#[test]
fn srv_answers_carry_weights_ports_targets_and_their_addresses() {
    let wire = Wire::start(10);
    let dns = wire.server.dns();
    let net = wire.net;
    let [a, b, c, d] = net.instance(1, 22).octets();
    let addr_target = format!("{a:02x}{b:02x}{c:02x}{d:02x}.addr.dc1.consul.");
    // (priority, weight, port, target): web-a is passing (weight 7) and
    // has no service address; web-b is warning (weight 3) with its own.
    let want_srv: BTreeSet<(u16, u16, u16, String)> = [
        (1, 7, 8080, "web-a.node.dc1.consul.".to_owned()),
        (1, 3, 9090, addr_target.clone()),
    ]
    .into();
    let want_additional: BTreeSet<(String, Ipv4Addr)> = [
        ("web-a.node.dc1.consul.".to_owned(), net.instance(1, 11)),
        (addr_target.clone(), net.instance(1, 22)),
    ]
    .into();

    wire.warm("web.service.consul", RecordType::SRV);
    for name in ["web.service.consul", "_web._tcp.service.consul"] {
        for reply in [
            udp(dns, &with_edns(query(name, RecordType::SRV), 1232, 0)),
            tcp(dns, &query(name, RecordType::SRV)),
        ] {
            assert_eq!(
                reply.metadata.response_code,
                ResponseCode::NoError,
                "{name}: {reply:?}"
            );
            assert!(!reply.metadata.truncation, "{name}: {reply:?}");
            let srv: BTreeSet<_> = reply
                .answers
                .iter()
                .map(|r| match &r.data {
                    RData::SRV(srv) => (
                        srv.priority,
                        srv.weight,
                        srv.port,
                        srv.target.to_ascii().to_lowercase(),
                    ),
                    other => panic!("{name}: not an SRV record in the answer: {other:?}"),
                })
                .collect();
            assert_eq!(srv, want_srv, "{name}");
            assert_eq!(reply.answers.len(), 2, "{name}: {:?}", reply.answers);
            let additional: BTreeSet<(String, Ipv4Addr)> = reply
                .additionals
                .iter()
                .filter_map(|r| match &r.data {
                    RData::A(a) => Some((r.name.to_ascii().to_lowercase(), a.0)),
                    _ => None,
                })
                .collect();
            assert_eq!(
                additional, want_additional,
                "{name}: additional {:?}",
                reply.additionals
            );
        }

        let out = dig(dns, &[name, "SRV"]);
        assert_eq!(out.status, "NOERROR", "{}", out.text);
        let want: Vec<String> = want_srv
            .iter()
            .map(|(p, w, port, t)| format!("{p} {w} {port} {t}"))
            .collect();
        let mut got = out.answer_data("SRV");
        got.sort();
        let mut want = want;
        want.sort();
        assert_eq!(got, want, "{}", out.text);
        let additional: BTreeSet<(String, Ipv4Addr)> = out
            .additional
            .iter()
            .filter(|r| r.rtype == "A")
            .map(|r| {
                (
                    r.name.to_lowercase(),
                    r.data.parse().expect("an IPv4 address"),
                )
            })
            .collect();
        assert_eq!(additional, want_additional, "{}", out.text);
    }
}

#[test]
fn any_answers_the_a_and_aaaa_records() {
    let wire = Wire::start(11);
    let dns = wire.server.dns();
    let v4 = vec![wire.net.instance(1, 31)];
    let v6 = vec![wire.net.instance_v6(1, 31)];
    let name = "dual.service.consul";
    wire.warm(name, RecordType::A);

    let reply = udp(dns, &query(name, RecordType::A));
    assert_eq!(
        (ipv4s(&reply.answers), ipv6s(&reply.answers)),
        (v4.clone(), vec![]),
        "A only"
    );
    let reply = udp(dns, &query(name, RecordType::AAAA));
    assert_eq!(
        (ipv4s(&reply.answers), ipv6s(&reply.answers)),
        (vec![], v6.clone()),
        "AAAA only"
    );
    for reply in [
        udp(dns, &query(name, RecordType::ANY)),
        tcp(dns, &query(name, RecordType::ANY)),
    ] {
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NoError,
            "{reply:?}"
        );
        assert_eq!(reply.answers.len(), 2, "{:?}", reply.answers);
        assert_eq!(
            (ipv4s(&reply.answers), ipv6s(&reply.answers)),
            (v4.clone(), v6.clone()),
            "ANY"
        );
    }

    let out = dig(dns, &[name, "ANY"]);
    assert_eq!(out.status, "NOERROR", "{}", out.text);
    assert_eq!(out.answer.len(), 2, "{}", out.text);
    assert_eq!(out.answer_data("A"), strings(&v4), "{}", out.text);
    let aaaa: Vec<Ipv6Addr> = out
        .answer_data("AAAA")
        .iter()
        .map(|a| a.parse().expect("IPv6"))
        .collect();
    assert_eq!(aaaa, v6, "{}", out.text);
}

#[test]
fn udp_answers_that_do_not_fit_set_tc_and_keep_opt_while_tcp_gives_all() {
    let wire = Wire::start(12);
    let dns = wire.server.dns();
    let name = "big.service.consul";
    let big = wire.big();
    wire.warm(name, RecordType::A);

    // (EDNS payload asked, the limit the answer must fit in.)
    for (payload, limit) in [
        (Some(1232), 1232),
        (Some(4096), 1232),
        (Some(600), 600),
        (None, 512),
    ] {
        let message = match payload {
            Some(payload) => with_edns(query(name, RecordType::A), payload, 0),
            None => query(name, RecordType::A),
        };
        let bytes = (0..3)
            .find_map(|_| udp_bytes(dns, &message, Duration::from_secs(2)))
            .expect("a UDP answer");
        let reply = Message::from_vec(&bytes).expect("the answer decodes");
        assert!(
            bytes.len() <= limit,
            "payload {payload:?}: {} bytes > {limit}",
            bytes.len()
        );
        assert!(
            reply.metadata.truncation,
            "payload {payload:?}: TC must be set: {}",
            brief(&reply)
        );
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NoError,
            "payload {payload:?}"
        );
        assert_eq!(
            reply.edns.is_some(),
            payload.is_some(),
            "payload {payload:?}: OPT kept iff asked: {}",
            brief(&reply)
        );
        assert!(
            reply.answers.len() < 100,
            "payload {payload:?}: {} answers",
            reply.answers.len()
        );
        let got = ipv4s(&reply.answers);
        assert!(
            got.iter().all(|a| big.contains(a)),
            "payload {payload:?}: {got:?}"
        );
    }

    for message in [
        query(name, RecordType::A),
        with_edns(query(name, RecordType::A), 1232, 0),
    ] {
        let reply = tcp(dns, &message);
        assert!(!reply.metadata.truncation, "TCP: {}", brief(&reply));
        assert_eq!(ipv4s(&reply.answers), big, "TCP gives every instance");
    }

    let out = dig(dns, &["+ignore", name, "A"]);
    assert!(out.flag("tc"), "{}", out.text);
    assert_eq!(
        out.edns,
        Some((0, 1232)),
        "OPT kept when truncating: {}",
        out.text
    );
    assert!(out.answer.len() < 100, "{}", out.text);
    let out = dig(dns, &["+tcp", name, "A"]);
    assert!(!out.flag("tc"), "{}", out.text);
    assert_eq!(out.answer_data("A"), strings(&big), "{}", out.text);
}
