//! Real forwarders in front of the server: `unbound` with a forward zone
//! for `consul.`, glibc's `getaddrinfo` and `curl` through that unbound
//! (DESIGN §8).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use consul_sim::model::{CRITICAL, PASSING};
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{Record, RecordType};

use crate::support::{
    Federation, Instance, Net, Server, Unbound, addr_target, assert_apex_soa, curl, dig,
    getaddrinfo_v4, ipv4s, poll, query, serve_http, srv_targets, udp, with_edns,
};

/// The answer section as sorted `(type, rdata)` text, TTLs and owner case
/// aside.
fn answer_set(reply: &Message) -> Vec<(RecordType, String)> {
    let mut out: Vec<(RecordType, String)> = reply
        .answers
        .iter()
        .map(|r: &Record| (r.record_type(), r.data.to_string().to_lowercase()))
        .collect();
    out.sort();
    out
}

/// The IPv4 address of `unbound`.
fn ipv4(unbound: &Unbound) -> Ipv4Addr {
    match unbound.addr().ip() {
        IpAddr::V4(ip) => ip,
        IpAddr::V6(ip) => panic!("unbound listens on IPv6 {ip}"),
    }
}

#[test]
fn unbound_forwards_the_same_answers() {
    let net = Net::claim(20);
    let federation = Federation::start(net);
    federation.register_service("dc1", "grafana", &[net.instance(1, 1), net.instance(1, 2)]);
    federation.register_service("dc2", "grafana", &[net.instance(2, 1), net.instance(2, 2)]);
    federation.register(&Instance::new("dc1", "web-a", net.instance(1, 11), "web"));
    federation.register(
        &Instance::new("dc1", "web-b", net.instance(1, 12), "web")
            .service_address(net.instance(1, 22)),
    );
    let server = Server::start(net, &federation);
    let unbound = Unbound::start(net, server.dns());

    let questions = [
        (
            "grafana.query.consul",
            RecordType::A,
            ResponseCode::NoError,
            2,
        ),
        (
            "grafana.query.consul",
            RecordType::AAAA,
            ResponseCode::NoError,
            0,
        ),
        (
            "web.service.consul",
            RecordType::A,
            ResponseCode::NoError,
            2,
        ),
        (
            "web.service.consul",
            RecordType::SRV,
            ResponseCode::NoError,
            2,
        ),
        (
            "_web._tcp.service.consul",
            RecordType::SRV,
            ResponseCode::NoError,
            2,
        ),
        (
            "nosuch.query.consul",
            RecordType::A,
            ResponseCode::NXDomain,
            0,
        ),
        (
            "nosuch.service.consul",
            RecordType::A,
            ResponseCode::NXDomain,
            0,
        ),
    ];
    for (name, rtype, rcode, count) in questions {
        // Names first asked for may SERVFAIL while their watch starts.
        let direct = poll(Duration::from_secs(5), Duration::from_millis(50), || {
            Some(udp(server.dns(), &with_edns(query(name, rtype), 1232, 0)))
                .filter(|reply| reply.metadata.response_code != ResponseCode::ServFail)
        })
        .unwrap_or_else(|| panic!("{name} {rtype}: SERVFAIL for 5 s"));
        assert_eq!(
            direct.metadata.response_code, rcode,
            "{name} {rtype} from the server: {direct:?}"
        );
        assert_eq!(
            direct.answers.len(),
            count,
            "{name} {rtype} from the server: {:?}",
            direct.answers
        );

        let forwarded = udp(unbound.addr(), &query(name, rtype));
        assert_eq!(
            forwarded.metadata.response_code, rcode,
            "{name} {rtype} through unbound: {forwarded:?}"
        );
        assert!(forwarded.metadata.recursion_available, "unbound recurses");
        assert_eq!(
            answer_set(&forwarded),
            answer_set(&direct),
            "{name} {rtype}: unbound vs the server"
        );
        if count == 0 {
            assert_apex_soa(
                &forwarded.authorities,
                &format!("{name} {rtype} through unbound"),
            );
        }
    }

    let want: Vec<String> = {
        let mut v = vec![
            net.instance(1, 1).to_string(),
            net.instance(1, 2).to_string(),
        ];
        v.sort();
        v
    };
    let out = dig(unbound.addr(), &["grafana.query.consul", "A"]);
    assert_eq!(out.status, "NOERROR", "{}", out.text);
    assert_eq!(out.answer_data("A"), want, "{}", out.text);
    let out = dig(unbound.addr(), &["grafana.query.consul", "AAAA"]);
    assert_eq!(out.status, "NOERROR", "{}", out.text);
    assert!(out.answer.is_empty(), "{}", out.text);
}

#[test]
fn getaddrinfo_and_curl_follow_failover_through_unbound() {
    let net = Net::claim(21);
    let federation = Federation::start(net);
    // loki is no [[query]]: [queries.defaults] makes it fail over to dc2.
    let dc1 =
        federation.register_service("dc1", "loki", &[net.instance(1, 41), net.instance(1, 42)]);
    let dc2 = federation.register_service("dc2", "loki", &[net.instance(2, 41)]);
    for address in &dc1 {
        serve_http(federation.runtime(), (*address, 3100).into(), "loki dc1");
    }
    for address in &dc2 {
        serve_http(federation.runtime(), (*address, 3100).into(), "loki dc2");
    }
    let server = Server::start(net, &federation);
    let unbound = Unbound::start(net, server.dns());
    let resolver = ipv4(&unbound);
    let name = "loki.query.consul";
    let url = "http://loki.query.consul:3100/";
    let check = Instance::check_id("loki");

    // Polls getaddrinfo until it gives `want` (at most 15 s; unbound does
    // not cache TTL-0 answers, but a first lookup may meet a watch being
    // started).
    let wait_for = |want: &[Ipv4Addr]| {
        let mut last = None;
        let seen = poll(Duration::from_secs(15), Duration::from_millis(100), || {
            last = getaddrinfo_v4(resolver, name);
            last.as_deref()
                .filter(|got| *got == want)
                .map(<[Ipv4Addr]>::to_vec)
        });
        assert!(
            seen.is_some(),
            "getaddrinfo({name}) is {last:?}, want {want:?}\nunbound log:\n{}",
            unbound.logs()
        );
    };

    wait_for(&dc1);
    assert_eq!(curl(resolver, url).as_deref(), Ok("loki dc1"));

    federation.set_checks("dc1", &check, CRITICAL);
    wait_for(&dc2);
    assert_eq!(curl(resolver, url).as_deref(), Ok("loki dc2"));

    federation.set_checks("dc1", &check, PASSING);
    wait_for(&dc1);
    assert_eq!(curl(resolver, url).as_deref(), Ok("loki dc1"));
}

/// The SRV targets (lower case) of `_grafana._tcp.query.consul` through
/// `unbound`, each with the A records unbound gives for it: polls (at
/// most 10 s) until the targets are exactly the keys of `want`, then
/// asserts each resolves to its address.
fn srv_through_unbound(unbound: &Unbound, want: &BTreeMap<String, Ipv4Addr>) {
    let name = "_grafana._tcp.query.consul";
    let mut last = Vec::new();
    let seen = poll(Duration::from_secs(10), Duration::from_millis(50), || {
        let reply = udp(
            unbound.addr(),
            &with_edns(query(name, RecordType::SRV), 1232, 0),
        );
        last = srv_targets(&reply.answers);
        let targets: Vec<&String> = last.iter().map(|(target, _)| target).collect();
        (reply.metadata.response_code == ResponseCode::NoError
            && targets == want.keys().collect::<Vec<_>>())
        .then_some(())
    });
    assert!(
        seen.is_some(),
        "{name} SRV through unbound: targets {last:?}, want {:?}\nunbound log:\n{}",
        want.keys(),
        unbound.logs()
    );
    for (target, address) in want {
        let reply = udp(unbound.addr(), &query(target, RecordType::A));
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NoError,
            "{target} A through unbound: {reply:?}"
        );
        assert_eq!(
            ipv4s(&reply.answers),
            [*address],
            "{target} A through unbound"
        );
        println!("{target} -> {address}");
    }
}

#[test]
fn srv_targets_resolve_through_unbound_and_follow_failover() {
    let net = Net::claim(46);
    let federation = Federation::start(net);
    // grafana-1: node target; grafana-2: a service address, so an
    // `.addr.` target.
    federation.register(&Instance::new(
        "dc1",
        "grafana-1",
        net.instance(1, 1),
        "grafana",
    ));
    federation.register(
        &Instance::new("dc1", "grafana-2", net.instance(1, 2), "grafana")
            .service_address(net.instance(1, 22)),
    );
    federation.register_service("dc2", "grafana", &[net.instance(2, 1), net.instance(2, 2)]);
    let server = Server::start(net, &federation);
    let unbound = Unbound::start(net, server.dns());

    let local = BTreeMap::from([
        ("grafana-1.node.dc1.consul.".to_owned(), net.instance(1, 1)),
        (addr_target(net.instance(1, 22), "dc1"), net.instance(1, 22)),
    ]);
    srv_through_unbound(&unbound, &local);

    // dc1 down: grafana's [[query]] fails over to dc2.
    federation.set_checks("dc1", &Instance::check_id("grafana"), CRITICAL);
    let remote = BTreeMap::from([
        ("grafana-1.node.dc2.consul.".to_owned(), net.instance(2, 1)),
        ("grafana-2.node.dc2.consul.".to_owned(), net.instance(2, 2)),
    ]);
    srv_through_unbound(&unbound, &remote);

    // And back.
    federation.set_checks("dc1", &Instance::check_id("grafana"), PASSING);
    srv_through_unbound(&unbound, &local);
}
