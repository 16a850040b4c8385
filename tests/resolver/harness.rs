//! The harness checked against a known-good authoritative server (Knot
//! DNS) serving a tiny `consul.` zone: the Rust client, dig's parser,
//! unbound's forwarding, `getaddrinfo` and `curl` in a private mount
//! namespace. When this passes and a server test fails, the fault is the
//! server's.

use std::fmt::Write as _;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::support::{
    Knot, Net, Unbound, assert_apex_soa, curl, dig, getaddrinfo_v4, ipv4s, poll, query, runtime,
    serve_http, udp, with_edns,
};

#[test]
fn plumbing_against_knot() {
    let net = Net::claim(30);
    let loki = [net.instance(1, 41), net.instance(1, 42)];
    let mut zone = format!(
        "$ORIGIN consul.\n$TTL 0\n@ SOA ns.consul. hostmaster.consul. 1 3600 600 86400 0\n\
         @ NS ns.consul.\nns A {ns}\nloki.query A {}\nloki.query A {}\n",
        loki[0],
        loki[1],
        ns = net.dns().ip(),
    );
    for host in 101..=200 {
        writeln!(zone, "big.service A {}", net.instance(1, host)).expect("write to a string");
    }
    let knot = Knot::start(net, &zone);

    // Rust client: A, NODATA, NXDOMAIN, truncation with the OPT kept.
    let reply = udp(net.dns(), &query("loki.query.consul", RecordType::A));
    assert_eq!(ipv4s(&reply.answers), loki);
    let reply = udp(net.dns(), &query("loki.query.consul", RecordType::AAAA));
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert!(reply.answers.is_empty(), "{reply:?}");
    assert_apex_soa(&reply.authorities, "knot NODATA");
    let reply = udp(net.dns(), &query("nosuch.query.consul", RecordType::A));
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    assert_apex_soa(&reply.authorities, "knot NXDOMAIN");
    let reply = udp(
        net.dns(),
        &with_edns(query("big.service.consul", RecordType::A), 1232, 0),
    );
    assert!(reply.metadata.truncation, "{reply:?}");
    assert!(
        reply.edns.is_some(),
        "knot keeps the OPT record when truncating"
    );

    // dig, parsed.
    let out = dig(net.dns(), &["loki.query.consul", "A"]);
    assert_eq!(
        (out.opcode.as_str(), out.status.as_str()),
        ("QUERY", "NOERROR"),
        "{}",
        out.text
    );
    assert!(
        out.flag("qr") && out.flag("aa") && !out.flag("ra"),
        "{}",
        out.text
    );
    assert_eq!(
        out.edns.map(|(version, _)| version),
        Some(0),
        "{}",
        out.text
    );
    assert_eq!(
        out.answer_data("A"),
        loki.map(|a| a.to_string()),
        "{}",
        out.text
    );
    let out = dig(net.dns(), &["nosuch.query.consul", "A"]);
    assert_eq!(out.status, "NXDOMAIN", "{}", out.text);
    assert_eq!(out.authority.len(), 1, "{}", out.text);
    assert_eq!(
        (
            out.authority[0].name.as_str(),
            out.authority[0].rtype.as_str()
        ),
        ("consul.", "SOA")
    );
    let out = dig(net.dns(), &["+ignore", "big.service.consul", "A"]);
    assert!(out.flag("tc"), "{}", out.text);
    assert!(out.edns.is_some(), "{}", out.text);
    let out = dig(net.dns(), &["+tcp", "big.service.consul", "A"]);
    assert_eq!(out.answer.len(), 100, "{}", out.text);
    let out = dig(net.dns(), &["example.com", "A"]);
    assert_eq!(out.status, "REFUSED", "{}", out.text);

    // unbound forwarding consul. to knot.
    let unbound = Unbound::start(net, net.dns());
    let reply = udp(unbound.addr(), &query("loki.query.consul", RecordType::A));
    assert_eq!(ipv4s(&reply.answers), loki);
    let out = dig(unbound.addr(), &["nosuch.query.consul", "A"]);
    assert_eq!(out.status, "NXDOMAIN", "{}", out.text);

    // getaddrinfo and curl in a namespace whose resolv.conf names unbound.
    let std::net::IpAddr::V4(forwarder) = unbound.addr().ip() else {
        unreachable!("IPv4")
    };
    assert_eq!(
        getaddrinfo_v4(forwarder, "loki.query.consul"),
        Some(loki.to_vec())
    );
    let runtime = runtime();
    for address in loki {
        serve_http(&runtime, (address, 3100).into(), "loki dc1");
    }
    let body = poll(Duration::from_secs(10), Duration::from_millis(100), || {
        curl(forwarder, "http://loki.query.consul:3100/").ok()
    });
    assert_eq!(
        body.as_deref(),
        Some("loki dc1"),
        "knot log:\n{}",
        knot.logs()
    );
}
