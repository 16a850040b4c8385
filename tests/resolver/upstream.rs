//! `dns.upstream`: names in the zone the server does not answer itself are
//! relayed to a real upstream (`dnsmasq` playing the Consul agent's DNS),
//! over UDP and TCP; names of its own never are; a silent upstream costs a
//! prompt SERVFAIL with an Extended DNS Error, never a timeout.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::time::{Duration, Instant};

use crate::support::{
    Dig, DigRecord, Dnsmasq, Federation, Net, Server, dig, metric_value, poll, server_config,
};

/// The address dnsmasq gives `web.connect.consul`.
const WEB: &str = "127.0.0.99";
/// The address dnsmasq gives `db-1.node.consul`, a node the server's view
/// does not know.
const DB_NODE: &str = "127.0.0.98";

/// [`server_config`] with `dns.upstream = upstream`.
fn config_with_upstream(net: Net, federation: &Federation, upstream: SocketAddr) -> String {
    let config = server_config(net, federation, "");
    assert!(config.starts_with("[dns]\n"), "{config}");
    config.replacen("[dns]\n", &format!("[dns]\nupstream = \"{upstream}\"\n"), 1)
}

/// What a dig reply says, TTLs aside: status, AA, and the sorted answer
/// and authority records.
fn gist(out: &Dig) -> (String, bool, Vec<String>, Vec<String>) {
    let records = |section: &[DigRecord]| {
        let mut out: Vec<String> = section
            .iter()
            .map(|r| format!("{} {} {}", r.name.to_lowercase(), r.rtype, r.data))
            .collect();
        out.sort();
        out
    };
    (
        out.status.clone(),
        out.flag("aa"),
        records(&out.answer),
        records(&out.authority),
    )
}

#[test]
fn upstream_dnsmasq_answers_names_the_server_does_not() {
    let net = Net::claim(60);
    let federation = Federation::start(net);
    let grafana =
        federation.register_service("dc1", "grafana", &[net.instance(1, 1), net.instance(1, 2)]);
    // 6 strings of 250 bytes: more than a 1232-byte UDP answer holds.
    let long_txt = vec!["x".repeat(250); 6].join(",");
    let dnsmasq = Dnsmasq::start(
        net,
        &[
            format!("--host-record=web.connect.consul,{WEB}"),
            format!("--host-record=db-1.node.consul,{DB_NODE}"),
            format!("--txt-record=big.connect.consul,{long_txt}"),
        ],
    );
    let server = Server::start_with(net, &config_with_upstream(net, &federation, dnsmasq.addr()));
    let dns = server.dns();

    // Relayed, over UDP and over TCP, with the letter case of the question.
    for transport in ["+notcp", "+tcp"] {
        let out = dig(dns, &[transport, "WeB.CoNnEcT.consul", "A"]);
        assert_eq!(out.status, "NOERROR", "{transport}:\n{}", out.text);
        assert_eq!(out.answer_data("A"), [WEB], "{transport}:\n{}", out.text);
        assert!(
            out.text.contains("WeB.CoNnEcT.consul."),
            "question case:\n{}",
            out.text
        );
        assert!(!out.flag("ra"), "RA stays clear:\n{}", out.text);
    }
    assert_eq!(dnsmasq.queries_for("A", "web.connect.consul"), 2);

    // A node the view does not know is the agent's to answer.
    let out = dig(dns, &["db-1.node.consul", "A"]);
    assert_eq!(out.answer_data("A"), [DB_NODE], "{}", out.text);

    // Whatever dnsmasq says about names it does not know, or types it has
    // no record of, the client hears.
    for (name, rtype, status) in [
        ("nothere.connect.consul", "A", "NXDOMAIN"),
        ("web.connect.consul", "AAAA", "NOERROR"),
        ("web.connect.consul", "TXT", "NOERROR"),
        ("deep.below.nothing.consul", "A", "NXDOMAIN"),
    ] {
        let direct = dig(dnsmasq.addr(), &[name, rtype]);
        let relayed = dig(dns, &[name, rtype]);
        assert_eq!(direct.status, status, "{name} {rtype}:\n{}", direct.text);
        assert_eq!(
            gist(&relayed),
            gist(&direct),
            "{name} {rtype}: relayed\n{}\ndirect\n{}",
            relayed.text,
            direct.text
        );
    }

    // Too big for UDP: dnsmasq truncates, the relay asks again over TCP,
    // and the client gets TC over UDP and everything over TCP.
    let before = dnsmasq.queries_for("TXT", "big.connect.consul");
    let udp = dig(dns, &["+ignore", "big.connect.consul", "TXT"]);
    assert!(udp.flag("tc"), "{}", udp.text);
    assert_eq!(
        dnsmasq.queries_for("TXT", "big.connect.consul") - before,
        2,
        "UDP, then TCP after TC:\n{}",
        dnsmasq.logs()
    );
    let tcp = dig(dns, &["+tcp", "big.connect.consul", "TXT"]);
    let direct = dig(dnsmasq.addr(), &["+tcp", "big.connect.consul", "TXT"]);
    assert!(!tcp.flag("tc") && tcp.answer.len() == 1, "{}", tcp.text);
    assert_eq!(gist(&tcp), gist(&direct));

    // Names the server answers itself are never relayed.
    let soa_before = dnsmasq.queries_for("SOA", "consul");
    let out = dig(dns, &["grafana.service.consul", "A"]);
    let expected: Vec<String> = grafana.iter().map(ToString::to_string).collect();
    assert_eq!(out.answer_data("A"), expected, "{}", out.text);
    let out = dig(dns, &["consul", "SOA"]);
    assert_eq!(out.status, "NOERROR", "{}", out.text);
    assert_eq!(out.answer_data("SOA").len(), 1, "{}", out.text);
    let out = dig(dns, &["nothing.query.consul", "A"]);
    assert_eq!(out.status, "NXDOMAIN", "{}", out.text);
    let out = dig(dns, &["grafana-1.node.consul", "A"]);
    assert_eq!(
        out.answer_data("A"),
        [grafana[0].to_string()],
        "{}",
        out.text
    );
    for name in [
        "grafana.service.consul",
        "nothing.query.consul",
        "grafana-1.node.consul",
    ] {
        assert_eq!(dnsmasq.queries_for("A", name), 0, "{}", dnsmasq.logs());
    }
    assert_eq!(dnsmasq.queries_for("SOA", "consul"), soa_before);

    let metrics = server.metrics();
    let relayed = metric_value(
        &metrics,
        "consul_failover_dns_queries_total",
        &[("kind", "other"), ("rcode", "NOERROR")],
    );
    assert!(relayed >= 4.0, "{metrics}");
    let nodes = metric_value(
        &metrics,
        "consul_failover_dns_queries_total",
        &[("kind", "node"), ("rcode", "NOERROR")],
    );
    assert!(nodes >= 2.0, "{metrics}");
}

#[test]
fn upstream_silent_gets_a_prompt_servfail() {
    let net = Net::claim(61);
    let federation = Federation::start(net);
    let grafana =
        federation.register_service("dc1", "grafana", &[net.instance(1, 1), net.instance(1, 2)]);
    // Bound on UDP and TCP, never read: a hung agent.
    let silent = Dnsmasq::addr_for(net);
    let _udp = UdpSocket::bind(silent).expect("bind the silent UDP socket");
    let _tcp = TcpListener::bind(silent).expect("bind the silent TCP listener");
    let server = Server::start_with(net, &config_with_upstream(net, &federation, silent));
    let dns = server.dns();
    let first_answer_wait = Duration::from_secs(1);

    for transport in ["+notcp", "+tcp"] {
        let started = Instant::now();
        let out = dig(
            dns,
            &[transport, "+tries=1", "+time=3", "web.connect.consul", "A"],
        );
        let waited = started.elapsed();
        println!("silent upstream, dig {transport}: SERVFAIL after {waited:?}");
        assert_eq!(out.status, "SERVFAIL", "{}", out.text);
        assert!(
            waited < first_answer_wait.mul_f32(1.5),
            "{transport}: SERVFAIL after {waited:?}"
        );
        assert!(
            out.text.contains("EDE: 22") && out.text.contains(&silent.to_string()),
            "Extended DNS Error naming the upstream:\n{}",
            out.text
        );
    }

    // The server keeps answering its own names, also while a relay waits.
    let expected: Vec<String> = grafana.iter().map(ToString::to_string).collect();
    std::thread::scope(|scope| {
        let pending = scope.spawn(|| dig(dns, &["+time=3", "other.connect.consul", "A"]));
        std::thread::sleep(Duration::from_millis(100));
        let started = Instant::now();
        let out = dig(dns, &["grafana.service.consul", "A"]);
        assert!(started.elapsed() < Duration::from_millis(500));
        assert_eq!(out.answer_data("A"), expected, "{}", out.text);
        let out = pending.join().expect("the relayed dig");
        assert_eq!(out.status, "SERVFAIL", "{}", out.text);
    });

    // One warning for the whole streak of failures.
    let logs = poll(Duration::from_secs(2), Duration::from_millis(20), || {
        let logs = server.logs();
        logs.contains("dns.upstream failed").then_some(logs)
    })
    .expect("a warning about the upstream");
    assert_eq!(logs.matches("dns.upstream failed").count(), 1, "{logs}");
    assert!(logs.contains(&silent.to_string()), "{logs}");
}
