//! Issue 7: `[register]` puts the resolver in its local Consul agent as a
//! service (tag `metrics`, the admin port) with an HTTP check on
//! `/health`, keeps it there when the agent loses it, and takes it back on
//! SIGTERM.

use std::fs;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use crate::support::{Federation, Net, Server, http_get, http_request, poll, server_config};

/// How long the agent (consul-sim running the check) and the resolver
/// (checking its registration every `check_interval`, 1 s here) may take.
const WITHIN: Duration = Duration::from_secs(5);

/// What the resolver logs once registered.
const REGISTERED: &str = "registered in the local Consul agent";

/// Asserts `server` logged `count` lines holding all of `needles`,
/// giving a line written just after what the test saw 2 s to appear.
fn assert_logged(server: &Server, needles: &[&str], count: usize) {
    let seen = poll(Duration::from_secs(2), Duration::from_millis(10), || {
        let n = server.log_lines(needles).len();
        (n >= count).then_some(n)
    });
    assert_eq!(seen, Some(count), "{needles:?}:\n{}", server.logs());
}

/// The registered instance in dc1, once its check reports `status`: its
/// node, tags, port, check ID and output.
fn registered(
    federation: &Federation,
    status: &str,
) -> Option<(String, Vec<String>, u16, String, String)> {
    let nodes = federation.sim.service_health("dc1", "consul-failover-dns");
    let [node] = nodes.as_slice() else {
        return None;
    };
    let check = node
        .checks
        .iter()
        .find(|c| c.service_id == node.service.id)?;
    (check.status == status).then(|| {
        (
            node.node.node.clone(),
            node.service.tags.clone(),
            node.service.port,
            check.check_id.clone(),
            check.output.clone(),
        )
    })
}

#[test]
fn registers_in_the_local_agent_with_a_passing_health_check_and_deregisters_on_sigterm() {
    let net = Net::claim(152);
    let federation = Federation::start(net);
    federation.grafana_everywhere(net);
    let config = server_config(
        net,
        &federation,
        "\n[register]\ntags = [\"metrics\", \"dns\"]\ncheck_interval = \"1s\"\nmeta = { rack = \"r1\" }\n",
    );
    let mut server = Server::start_with(net, &config);

    // The agent runs the HTTP check against the admin listener's /health.
    let (node, tags, port, check_id, output) = poll(WITHIN, Duration::from_millis(50), || {
        registered(&federation, "passing")
    })
    .unwrap_or_else(|| {
        panic!(
            "no passing consul-failover-dns in dc1 within {WITHIN:?}: {:?}",
            federation.sim.service_health("dc1", "consul-failover-dns")
        )
    });
    assert_eq!(node, federation.sim.server_node("dc1"), "the agent's node");
    assert_eq!(tags, ["metrics", "dns"]);
    assert_eq!(port, net.admin().port());
    assert_eq!(check_id, "service:consul-failover-dns");
    assert_eq!(
        output,
        format!(
            "HTTP GET http://{}/health: 200 OK Output: ok\n",
            net.admin()
        )
    );
    let service = &federation.sim.service_health("dc1", "consul-failover-dns")[0].service;
    let meta = service.meta.clone().unwrap_or_default();
    assert_eq!(meta.get("rack").map(String::as_str), Some("r1"));
    assert_eq!(
        meta.get("version").map(String::as_str),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert!(
        service.address.is_empty(),
        "a loopback admin listener leaves the address to the node's: {service:?}"
    );
    assert_logged(&server, &[REGISTERED], 1);

    // The agent loses it (restarted without its data, or an operator):
    // the resolver notices within its check interval and registers again.
    let agent = federation.runtime().block_on(federation.sim.addr("dc1"));
    let (status, body) = http_request(
        agent,
        "PUT",
        "/v1/agent/service/deregister/consul-failover-dns",
        None,
    )
    .expect("consul-sim answers");
    assert_eq!((status, body.as_str()), (200, ""));
    assert!(registered(&federation, "passing").is_none());
    poll(WITHIN, Duration::from_millis(50), || {
        registered(&federation, "passing")
    })
    .unwrap_or_else(|| panic!("not registered again within {WITHIN:?}"));
    assert_logged(&server, &[REGISTERED], 2);
    assert_logged(&server, &["no longer has", "registering it again"], 1);

    // A clean stop takes it back.
    server.signal("TERM");
    let status = server
        .wait_exit(Duration::from_secs(3))
        .expect("the server exits after SIGTERM");
    assert!(status.success(), "exit status {status}");
    assert!(
        federation
            .sim
            .service_health("dc1", "consul-failover-dns")
            .is_empty(),
        "still registered after SIGTERM"
    );
    assert_eq!(
        server
            .log_lines(&["deregistered from the local Consul agent"])
            .len(),
        1,
        "{}",
        server.logs()
    );
}

#[test]
fn registration_waits_for_an_unreachable_agent_and_warns_once() {
    let net = Net::claim(153);
    let federation = Federation::start(net);
    federation.grafana_everywhere(net);
    federation.stop_listener("dc1");
    let config = server_config(net, &federation, "\n[register]\ncheck_interval = \"1s\"\n");
    let server = Server::spawn_with(net, &config);
    let refused = || server.log_lines(&["cannot register in the local Consul agent"]);
    poll(WITHIN, Duration::from_millis(50), || {
        (!refused().is_empty()).then_some(())
    })
    .unwrap_or_else(|| panic!("no warning about the registration: {}", server.logs()));
    // Retried every second or so meanwhile: one warning for the streak.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(refused().len(), 1, "{}", server.logs());
    federation.start_listener("dc1");
    poll(WITHIN, Duration::from_millis(50), || {
        registered(&federation, "passing")
    })
    .unwrap_or_else(|| {
        panic!(
            "not registered after the agent came back: {}",
            server.logs()
        )
    });
    assert_logged(&server, &[REGISTERED], 1);
}

/// Debian's `prometheus` is built without `consul_sd_configs` (its config
/// loader rejects the key), so this does what that discovery does, by the
/// shipped recipe: `GET /v1/health/service/<services>?tag=<tags>` on the
/// recipe's agent, `__address__` = the service's address, else its node's,
/// and the service port, then scrapes `metrics_path` there.
#[test]
fn consul_sd_with_the_shipped_prometheus_recipe_finds_and_scrapes_it() {
    let net = Net::claim(154);
    let federation = Federation::start(net);
    federation.grafana_everywhere(net);
    // The admin listener's own address: a loopback one is otherwise left
    // out (the node's address is what other hosts reach).
    let config = server_config(
        net,
        &federation,
        &format!(
            "\n[register]\naddress = \"{}\"\ncheck_interval = \"1s\"\n",
            net.admin().ip()
        ),
    );
    let _server = Server::start_with(net, &config);
    poll(WITHIN, Duration::from_millis(50), || {
        registered(&federation, "passing")
    })
    .expect("registered and passing");

    let recipe = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/prometheus/consul-failover-dns.yml"
    ))
    .expect("the Prometheus recipe");
    let recipe: Value = serde_yaml_ng::from_str(&recipe).expect("YAML");
    let job = &recipe["scrape_configs"][0];
    let sd = &job["consul_sd_configs"][0];
    let service = sd["services"][0].as_str().expect("a service");
    let tags: Vec<&str> = sd["tags"]
        .as_array()
        .expect("tags")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let path = job["metrics_path"].as_str().unwrap_or("/metrics");
    let agent = federation.runtime().block_on(federation.sim.addr("dc1"));
    let query: String = tags.iter().map(|t| format!("&tag={t}")).collect();
    let (status, body) = http_get(agent, &format!("/v1/health/service/{service}?stale{query}"))
        .expect("consul-sim answers");
    assert_eq!(status, 200, "{body}");
    let entries: Value = serde_json::from_str(&body).expect("JSON");
    let [entry] = entries.as_array().expect("an array").as_slice() else {
        panic!("one instance of {service} tagged {tags:?} expected: {entries:#}");
    };
    let host = Some(&entry["Service"]["Address"])
        .and_then(Value::as_str)
        .filter(|a| !a.is_empty())
        .or_else(|| entry["Node"]["Address"].as_str())
        .expect("an address");
    let port = entry["Service"]["Port"].as_u64().expect("a port");
    let target: SocketAddr = format!("{host}:{port}").parse().expect("host:port");
    assert_eq!(target, net.admin(), "{entry:#}");
    let (status, metrics) = http_get(target, path).expect("scrape");
    assert_eq!(status, 200, "{metrics}");
    assert!(
        metrics.contains("consul_failover_dns_build_info{version=\""),
        "{metrics}"
    );
}
