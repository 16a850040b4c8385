//! Prepared queries defined in Consul (`POST /v1/query`, with the real
//! `curl`) served as `<name>.query.consul`: a classic query created,
//! failed over, changed and deleted, each change taking effect within
//! 1 s; `name_prefix_match` templates with `${name.suffix}` and
//! `NearestN` failover over four datacenters at known distances; and
//! templates with a `Regexp`, `${match(N)}`, `${name.full}`,
//! `${name.prefix}` and `RemoveEmptyTags`.
//!
//! Every expected answer is also checked against consul-sim's own
//! `GET /v1/query/<name>/execute` (Consul's algorithm), so a wrong
//! expectation in this file cannot pass unnoticed.

use std::collections::BTreeSet;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use consul_sim::model::{CRITICAL, CheckInput, Coordinate, PASSING, RegisterRequest, ServiceInput};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::support::{
    Federation, Instance, Net, Server, bare_server_config, ipv4s, poll, program, query,
    run_bounded, srv_targets, target_datacenter, try_udp, udp, with_edns,
};

/// The server configuration of these tests: prepared queries on (the
/// default), implicit queries off, so only Consul's definitions answer.
const NO_IMPLICIT: &str = "[queries]\nprepared = true\nimplicit = false\n";

/// How long a created, changed or deleted prepared query may take to
/// show in DNS answers (the contract).
const TAKES_EFFECT: Duration = Duration::from_secs(1);

/// How long a health change may take to show (the failover bound of
/// these tests).
const FAILOVER: Duration = Duration::from_secs(2);

/// How long the tests measure before giving up, so a figure over a
/// bound is still printed.
const MEASURE: Duration = Duration::from_secs(5);

/// What one A question answered.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seen {
    /// NOERROR with these A records (sorted).
    Addresses(Vec<Ipv4Addr>),
    /// Another response code.
    Rcode(ResponseCode),
    /// No reply within 1 s.
    Nothing,
}

/// NXDOMAIN.
const NXDOMAIN: Seen = Seen::Rcode(ResponseCode::NXDomain);

/// Asks `name` A once over UDP.
fn look(dns: SocketAddr, name: &str) -> Seen {
    match try_udp(
        dns,
        &with_edns(query(name, RecordType::A), 1232, 0),
        Duration::from_secs(1),
    ) {
        None => Seen::Nothing,
        Some(reply) if reply.metadata.response_code == ResponseCode::NoError => {
            Seen::Addresses(ipv4s(&reply.answers))
        }
        Some(reply) => Seen::Rcode(reply.metadata.response_code),
    }
}

/// Polls `name` every 5 ms until it answers `want`, for at most
/// `limit`: the time since `since`, or what it answered last.
fn wait_for(
    dns: SocketAddr,
    name: &str,
    want: &Seen,
    since: Instant,
    limit: Duration,
) -> Result<Duration, Seen> {
    let mut last = Seen::Nothing;
    poll(limit, Duration::from_millis(5), || {
        last = look(dns, name);
        (last == *want).then(|| since.elapsed())
    })
    .ok_or(last)
}

/// Like [`wait_for`], panicking if `want` does not come within `limit`.
fn expect_within(
    dns: SocketAddr,
    name: &str,
    want: &Seen,
    since: Instant,
    limit: Duration,
    what: &str,
) -> Duration {
    wait_for(dns, name, want, since, limit).unwrap_or_else(|last| {
        panic!("{what}: {name} still answers {last:?} after {limit:?}, want {want:?}")
    })
}

/// Asserts consul-sim's `execute` of `name` in dc1 (Consul's algorithm)
/// answers what the test expects from the resolver: `want` addresses
/// from datacenter `dc`, or nothing (`want` NXDOMAIN). This checks the
/// test's expectation, not the resolver.
fn reference_agrees(federation: &Federation, name: &str, dc: &str, want: &Seen) {
    let reference = federation.execute("dc1", name);
    match want {
        Seen::Addresses(addresses) => assert_eq!(
            reference.as_ref(),
            Some(&(dc.to_owned(), addresses.clone())),
            "consul-sim's execute of {name} disagrees with this test's expectation"
        ),
        _ => assert!(
            reference.as_ref().is_none_or(|(_, nodes)| nodes.is_empty()),
            "consul-sim's execute of {name} answers {reference:?}, this test expects {want:?}"
        ),
    }
}

/// The SRV targets of `_<name>._tcp.query.consul`, after any SERVFAIL
/// (data syncing) is over (at most 3 s).
fn srv(dns: SocketAddr, name: &str) -> Vec<(String, u16)> {
    let question = format!("_{name}._tcp.query.consul");
    let reply = poll(Duration::from_secs(3), Duration::from_millis(20), || {
        Some(udp(
            dns,
            &with_edns(query(&question, RecordType::SRV), 1232, 0),
        ))
        .filter(|reply| reply.metadata.response_code != ResponseCode::ServFail)
    })
    .unwrap_or_else(|| panic!("{question} SRV: SERVFAIL for 3 s"));
    assert_eq!(
        reply.metadata.response_code,
        ResponseCode::NoError,
        "{question} SRV: {reply:?}"
    );
    srv_targets(&reply.answers)
}

/// The datacenters the SRV targets of `name` name.
fn srv_datacenters(dns: SocketAddr, name: &str) -> BTreeSet<String> {
    srv(dns, name)
        .iter()
        .map(|(target, _)| {
            target_datacenter(target).unwrap_or_else(|| panic!("SRV target {target:?}"))
        })
        .collect()
}

/// Runs the real `curl` against the Consul HTTP API (in `dir`, so
/// `--data @file` names a file there): the HTTP status and body.
fn curl_api(dir: &Path, method: &str, url: &str, data_file: Option<&str>) -> (u16, String) {
    let mut command = Command::new(program("curl"));
    command.current_dir(dir).args([
        "-sS",
        "--noproxy",
        "*",
        "--max-time",
        "10",
        "-w",
        "\n%{http_code}",
        "--request",
        method,
    ]);
    if let Some(file) = data_file {
        command.arg("--data").arg(format!("@{file}"));
    }
    command.arg(url);
    let output = run_bounded(&mut command, Duration::from_secs(15));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "curl --request {method} {url}: {}\n{stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    let code = code
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("curl printed no status: {stdout:?}"));
    (code, body.to_owned())
}

/// Writes `definition` to `<dir>/<file>` and POSTs it with curl to
/// `/v1/query` of `federation`'s dc1: the new query's ID.
fn create_query(federation: &Federation, dir: &Path, file: &str, definition: &str) -> String {
    fs::write(dir.join(file), definition).expect("write the query definition");
    let url = format!("{}/v1/query", federation.url("dc1"));
    let (code, body) = curl_api(dir, "POST", &url, Some(file));
    assert_eq!(code, 200, "POST {definition} to {url}: {body}");
    let reply: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("POST /v1/query: {e}: {body}"));
    reply["ID"]
        .as_str()
        .unwrap_or_else(|| panic!("no ID in {body}"))
        .to_owned()
}

/// Waits until the server's `consul_failover_dns_prepared_queries` is `count`
/// (at most 5 s): how long that took.
fn wait_for_gauge(server: &Server, count: f64) -> Duration {
    let since = Instant::now();
    let mut last = None;
    poll(MEASURE, Duration::from_millis(20), || {
        last = server.gauge("consul_failover_dns_prepared_queries");
        (last == Some(count)).then(|| since.elapsed())
    })
    .unwrap_or_else(|| panic!("consul_failover_dns_prepared_queries is {last:?}, want {count}"))
}

/// Formats a duration in milliseconds.
fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Registers `service` on `node` at `address` in `dc` with `tags` and
/// its passing check `<service>-health`.
fn register_tagged(
    federation: &Federation,
    dc: &str,
    node: &str,
    address: Ipv4Addr,
    service: &str,
    tags: &[&str],
) {
    let request = RegisterRequest {
        datacenter: Some(dc.to_owned()),
        node: Some(node.to_owned()),
        address: Some(address.to_string()),
        service: Some(ServiceInput {
            id: Some(service.to_owned()),
            service: Some(service.to_owned()),
            tags: Some(tags.iter().map(|t| (*t).to_owned()).collect()),
            port: Some(3100),
            ..Default::default()
        }),
        check: Some(CheckInput {
            check_id: Some(Instance::check_id(service)),
            name: Some(format!("{service} health")),
            status: Some(PASSING.to_owned()),
            service_id: Some(service.to_owned()),
            ..Default::default()
        }),
        ..Default::default()
    };
    federation
        .sim
        .register(dc, request)
        .unwrap_or_else(|e| panic!("register {service} on {node} in {dc}: {e}"));
}

#[test]
fn classic_prepared_query_is_created_failed_over_changed_and_deleted() {
    let net = Net::claim(40);
    let federation = Federation::start(net);
    let dc1 =
        federation.register_service("dc1", "grafana", &[net.instance(1, 1), net.instance(1, 2)]);
    let dc2 = federation.register_service("dc2", "grafana", &[net.instance(2, 1)]);
    let loki = federation.register_service("dc1", "loki", &[net.instance(1, 41)]);
    let check = Instance::check_id("grafana");
    let server = Server::start_with(net, &bare_server_config(net, &federation, NO_IMPLICIT));
    let dns = server.dns();
    let name = "grafana.query.consul";
    let dir = tempfile::tempdir().expect("temporary directory");

    // No [[query]], no implicit queries, no prepared query yet.
    assert_eq!(
        look(dns, name),
        NXDOMAIN,
        "{name} before any prepared query"
    );
    assert_eq!(
        server.gauge("consul_failover_dns_prepared_queries"),
        Some(0.0),
        "consul_failover_dns_prepared_queries before any prepared query"
    );

    // Create.
    let definition =
        r#"{"Name":"grafana","Service":{"Service":"grafana","Failover":{"Datacenters":["dc2"]}}}"#;
    let id = create_query(&federation, dir.path(), "query.json", definition);
    let created = Instant::now();
    let local = Seen::Addresses(dc1.clone());
    reference_agrees(&federation, "grafana", "dc1", &local);
    let took = expect_within(dns, name, &local, created, MEASURE, "create");
    println!("prepared query created -> answered: {}", ms(took));
    assert!(
        took <= TAKES_EFFECT,
        "a created prepared query took {} to answer (limit {TAKES_EFFECT:?})",
        ms(took)
    );
    let gauge = wait_for_gauge(&server, 1.0);
    println!(
        "consul_failover_dns_prepared_queries = 1 after {}",
        ms(gauge)
    );
    assert_eq!(
        look(dns, &format!("{id}.query.consul")),
        local,
        "the query by its ID"
    );
    assert_eq!(
        srv(dns, "grafana"),
        vec![
            ("grafana-1.node.dc1.consul.".to_owned(), 8080),
            ("grafana-2.node.dc1.consul.".to_owned(), 8080),
        ],
        "SRV of the local answer"
    );

    // Every dc1 instance critical: dc2 (Failover.Datacenters).
    let since = Instant::now();
    federation.set_checks("dc1", &check, CRITICAL);
    let remote = Seen::Addresses(dc2.clone());
    let took = expect_within(dns, name, &remote, since, FAILOVER, "failover");
    println!("dc1 critical -> dc2 answers: {}", ms(took));
    reference_agrees(&federation, "grafana", "dc2", &remote);
    assert_eq!(
        srv_datacenters(dns, "grafana"),
        BTreeSet::from(["dc2".to_owned()]),
        "SRV targets after failover"
    );

    // Restored: dc1 again.
    let since = Instant::now();
    federation.set_checks("dc1", &check, PASSING);
    let took = expect_within(dns, name, &local, since, FAILOVER, "failback");
    println!("dc1 passing -> dc1 answers: {}", ms(took));

    // Change (PUT): another service and a DNS TTL.
    let change = r#"{"Name":"grafana","Service":{"Service":"loki"},"DNS":{"TTL":"7s"}}"#;
    fs::write(dir.path().join("change.json"), change).expect("write the change");
    let url = format!("{}/v1/query/{id}", federation.url("dc1"));
    let (code, body) = curl_api(dir.path(), "PUT", &url, Some("change.json"));
    assert_eq!(code, 200, "PUT {url}: {body}");
    let changed = Instant::now();
    let now_loki = Seen::Addresses(loki.clone());
    reference_agrees(&federation, "grafana", "dc1", &now_loki);
    let took = expect_within(dns, name, &now_loki, changed, MEASURE, "change");
    println!("prepared query changed -> new answer: {}", ms(took));
    assert!(
        took <= TAKES_EFFECT,
        "a changed prepared query took {} to answer (limit {TAKES_EFFECT:?})",
        ms(took)
    );
    let reply = udp(dns, &query(name, RecordType::A));
    let ttls: Vec<u32> = reply.answers.iter().map(|r| r.ttl).collect();
    assert_eq!(
        ttls,
        [7],
        "DNS.TTL of the changed query: {:?}",
        reply.answers
    );

    // Delete.
    let (code, body) = curl_api(dir.path(), "DELETE", &url, None);
    assert_eq!(code, 200, "DELETE {url}: {body}");
    let deleted = Instant::now();
    reference_agrees(&federation, "grafana", "dc1", &NXDOMAIN);
    let took = expect_within(dns, name, &NXDOMAIN, deleted, MEASURE, "delete");
    println!("prepared query deleted -> NXDOMAIN: {}", ms(took));
    assert!(
        took <= TAKES_EFFECT,
        "a deleted prepared query took {} to give NXDOMAIN (limit {TAKES_EFFECT:?})",
        ms(took)
    );
    assert_eq!(
        look(dns, &format!("{id}.query.consul")),
        NXDOMAIN,
        "the deleted query by its ID"
    );
    wait_for_gauge(&server, 0.0);
}

/// The WAN coordinates of the template test: dc1 at 0, dc3 20 ms away,
/// dc2 50 ms, dc4 80 ms, so dc1's nearest are dc3 then dc2.
fn four_datacenters(net: Net) -> Federation {
    let at = |seconds: f64| Some(Coordinate::at(&[seconds]));
    Federation::start_dcs(
        net,
        &[
            ("dc1", at(0.0)),
            ("dc2", at(0.050)),
            ("dc3", at(0.020)),
            ("dc4", at(0.080)),
        ],
    )
}

#[test]
fn template_fails_over_to_the_nearest_datacenters() {
    let net = Net::claim(41);
    let federation = four_datacenters(net);
    let order = federation.sim.datacenters_by_distance("dc1");
    println!("datacenters by RTT from dc1: {order:?}");
    assert_eq!(order, ["dc1", "dc3", "dc2", "dc4"], "the test's geometry");
    let loki_dc1 =
        federation.register_service("dc1", "loki", &[net.instance(1, 1), net.instance(1, 2)]);
    let loki_dc2 = federation.register_service("dc2", "loki", &[net.instance(2, 1)]);
    let loki_dc3 = federation.register_service("dc3", "loki", &[net.instance(3, 1)]);
    federation.register_service("dc4", "loki", &[net.instance(4, 1)]);
    let tempo = federation.register_service("dc1", "tempo", &[net.instance(1, 21)]);
    let check = Instance::check_id("loki");
    let server = Server::start_with(net, &bare_server_config(net, &federation, NO_IMPLICIT));
    let dns = server.dns();
    let dir = tempfile::tempdir().expect("temporary directory");

    create_query(
        &federation,
        dir.path(),
        "geo.json",
        r#"{"Name":"geo-","Template":{"Type":"name_prefix_match"},"Service":{"Service":"${name.suffix}","Failover":{"NearestN":2}}}"#,
    );
    // A longer prefix wins over `geo-`, and an exact name over both.
    create_query(
        &federation,
        dir.path(),
        "geo-x.json",
        r#"{"Name":"geo-x-","Template":{"Type":"name_prefix_match"},"Service":{"Service":"${name.suffix}"}}"#,
    );
    create_query(
        &federation,
        dir.path(),
        "special.json",
        r#"{"Name":"geo-special","Service":{"Service":"tempo"}}"#,
    );
    let loaded = Instant::now();
    let name = "geo-loki.query.consul";
    let local = Seen::Addresses(loki_dc1.clone());
    reference_agrees(&federation, "geo-loki", "dc1", &local);
    let took = expect_within(dns, name, &local, loaded, MEASURE, "template created");
    println!("templates created -> {name} answered: {}", ms(took));
    assert!(
        took <= TAKES_EFFECT,
        "a created template took {} to answer (limit {TAKES_EFFECT:?})",
        ms(took)
    );
    wait_for_gauge(&server, 3.0);
    let tempo = Seen::Addresses(tempo);
    for other in ["geo-x-tempo", "geo-special"] {
        reference_agrees(&federation, other, "dc1", &tempo);
        expect_within(
            dns,
            &format!("{other}.query.consul"),
            &tempo,
            Instant::now(),
            FAILOVER,
            "prefix order",
        );
    }
    // A template naming a service no catalog has: NXDOMAIN.
    reference_agrees(&federation, "geo-nosuch", "dc1", &NXDOMAIN);
    expect_within(
        dns,
        "geo-nosuch.query.consul",
        &NXDOMAIN,
        Instant::now(),
        FAILOVER,
        "unknown service",
    );

    // dc1's loki critical: dc3, the nearest.
    let since = Instant::now();
    federation.set_checks("dc1", &check, CRITICAL);
    let nearest = Seen::Addresses(loki_dc3);
    reference_agrees(&federation, "geo-loki", "dc3", &nearest);
    let took = expect_within(dns, name, &nearest, since, FAILOVER, "nearest");
    println!("dc1 critical -> dc3 (nearest) answers: {}", ms(took));
    assert_eq!(
        srv_datacenters(dns, "geo-loki"),
        BTreeSet::from(["dc3".to_owned()])
    );

    // dc3's too: dc2, the second nearest.
    let since = Instant::now();
    federation.set_checks("dc3", &check, CRITICAL);
    let second = Seen::Addresses(loki_dc2);
    reference_agrees(&federation, "geo-loki", "dc2", &second);
    let took = expect_within(dns, name, &second, since, FAILOVER, "second nearest");
    println!("dc3 critical -> dc2 (second nearest) answers: {}", ms(took));

    // dc2's too: dc4 still has loki but is not among the 2 nearest.
    let since = Instant::now();
    federation.set_checks("dc2", &check, CRITICAL);
    reference_agrees(&federation, "geo-loki", "dc1", &NXDOMAIN);
    let took = expect_within(dns, name, &NXDOMAIN, since, FAILOVER, "NearestN 2");
    println!(
        "dc2 critical -> NXDOMAIN (dc4 is third nearest): {}",
        ms(took)
    );

    // dc1 back.
    let since = Instant::now();
    federation.set_checks("dc1", &check, PASSING);
    let took = expect_within(dns, name, &local, since, FAILOVER, "failback");
    println!("dc1 passing -> dc1 answers: {}", ms(took));
}

#[test]
fn template_regexp_matches_and_remove_empty_tags() {
    let net = Net::claim(42);
    let federation = Federation::start(net);
    let blue = net.instance(1, 51);
    let green = net.instance(1, 52);
    let blue_dc2 = net.instance(2, 51);
    register_tagged(&federation, "dc1", "loki-blue", blue, "loki", &["Blue"]);
    register_tagged(&federation, "dc1", "loki-green", green, "loki", &["green"]);
    register_tagged(&federation, "dc2", "loki-blue", blue_dc2, "loki", &["blue"]);
    let full = federation.register_service("dc1", "full-app", &[net.instance(1, 61)]);
    let tempo = federation.register_service("dc1", "tempo", &[net.instance(1, 71)]);
    let server = Server::start_with(net, &bare_server_config(net, &federation, NO_IMPLICIT));
    let dns = server.dns();
    let dir = tempfile::tempdir().expect("temporary directory");

    let regexp = r"^[a-z]+-([a-z]+)(?:-([a-z0-9]+))?$";
    let definitions = [
        // ${match(1)} the service, ${match(2)} a tag, empty tags dropped.
        format!(
            r#"{{"Name":"re-","Template":{{"Type":"name_prefix_match","Regexp":"{regexp}","RemoveEmptyTags":true}},"Service":{{"Service":"${{match(1)}}","Tags":["${{match(2)}}"]}}}}"#
        ),
        // The same without RemoveEmptyTags: an empty tag matches nothing.
        format!(
            r#"{{"Name":"rx-","Template":{{"Type":"name_prefix_match","Regexp":"{regexp}"}},"Service":{{"Service":"${{match(1)}}","Tags":["${{match(2)}}"]}}}}"#
        ),
        // ${match(2)} as the failover datacenter.
        format!(
            r#"{{"Name":"in-","Template":{{"Type":"name_prefix_match","Regexp":"{regexp}"}},"Service":{{"Service":"${{match(1)}}","Failover":{{"Datacenters":["${{match(2)}}"]}}}}}}"#
        ),
        // ${name.full} and ${name.prefix}.
        r#"{"Name":"full-","Template":{"Type":"name_prefix_match"},"Service":{"Service":"${name.full}"}}"#.to_owned(),
        r#"{"Name":"tempo","Template":{"Type":"name_prefix_match"},"Service":{"Service":"${name.prefix}"}}"#.to_owned(),
    ];
    for (i, definition) in definitions.iter().enumerate() {
        create_query(&federation, dir.path(), &format!("{i}.json"), definition);
    }
    let loaded = Instant::now();
    let both = Seen::Addresses(vec![blue, green]);
    reference_agrees(&federation, "re-loki", "dc1", &both);
    let took = expect_within(
        dns,
        "re-loki.query.consul",
        &both,
        loaded,
        MEASURE,
        "templates created",
    );
    println!("templates created -> re-loki answered: {}", ms(took));
    assert!(
        took <= TAKES_EFFECT,
        "created templates took {} to answer (limit {TAKES_EFFECT:?})",
        ms(took)
    );
    wait_for_gauge(&server, 5.0);

    // (name, answering DC, expected answer)
    let cases = [
        ("re-loki-blue", "dc1", Seen::Addresses(vec![blue])),
        ("re-loki-green", "dc1", Seen::Addresses(vec![green])),
        ("re-loki-red", "dc1", NXDOMAIN),
        ("rx-loki", "dc1", NXDOMAIN),
        ("rx-loki-blue", "dc1", Seen::Addresses(vec![blue])),
        ("in-loki-dc2", "dc1", both.clone()),
        ("full-app", "dc1", Seen::Addresses(full)),
        ("tempo-anything", "dc1", Seen::Addresses(tempo.clone())),
        ("tempo", "dc1", Seen::Addresses(tempo)),
    ];
    for (name, dc, want) in &cases {
        reference_agrees(&federation, name, dc, want);
        let took = expect_within(
            dns,
            &format!("{name}.query.consul"),
            want,
            Instant::now(),
            FAILOVER,
            "template rendering",
        );
        println!("{name}: {want:?} ({})", ms(took));
    }

    // dc1's loki critical: in-loki-dc2 fails over to ${match(2)}, an
    // unknown datacenter gives nothing, re- has no failover.
    federation.set_checks("dc1", &Instance::check_id("loki"), CRITICAL);
    let failover = [
        ("in-loki-dc2", "dc2", Seen::Addresses(vec![blue_dc2])),
        ("in-loki-dc9", "dc1", NXDOMAIN),
        ("re-loki", "dc1", NXDOMAIN),
    ];
    for (name, dc, want) in &failover {
        let since = Instant::now();
        reference_agrees(&federation, name, dc, want);
        let took = expect_within(
            dns,
            &format!("{name}.query.consul"),
            want,
            since,
            FAILOVER,
            "template failover",
        );
        println!("dc1 loki critical: {name}: {want:?} ({})", ms(took));
    }

    assert_eq!(
        srv(dns, "in-loki-dc2"),
        vec![("loki-blue.node.dc2.consul.".to_owned(), 3100)],
        "SRV of the failover answer"
    );

    // A name the regexp does not match: `${match(1)}` renders empty, so
    // the service is "". Consul renders that without error (`Render`
    // does not validate), finds no instance and answers `Nodes` `[]`,
    // so DNS says NXDOMAIN, as for any service no catalog has.
    reference_agrees(&federation, "re-loki_9", "dc1", &NXDOMAIN);
    expect_within(
        dns,
        "re-loki_9.query.consul",
        &NXDOMAIN,
        Instant::now(),
        FAILOVER,
        "a template rendering an empty service",
    );
}
