//! `consul-failover-dns demo`: an embedded two-datacenter simulated Consul
//! running an observability stack, and the resolver in front of it, so a
//! fresh clone can see the product work with one command.
//!
//! With `--scenario fire`, dc1 burns down a few seconds in (every dc1
//! check goes critical) and comes back later; the demo narrates what
//! `grafana.query.consul` answers as it happens.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context as _;
use consul_sim::Sim;
use consul_sim::model::RegisterRequest;
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio_util::sync::CancellationToken;

use crate::app;
use crate::config::Config;

/// The demo's scripted events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// dc1 goes down after a few seconds, answers move to dc2, then back.
    Fire,
}

/// The stack every datacenter runs: service name and port.
pub const STACK: [(&str, u16); 5] = [
    ("grafana", 3000),
    ("loki", 3100),
    ("tempo", 3200),
    ("prometheus", 9090),
    ("alertmanager", 9093),
];

/// Nodes per datacenter: dc1 has two, dc2 one.
fn nodes(dc: &str) -> Vec<(String, Ipv4Addr)> {
    match dc {
        "dc1" => vec![
            ("dc1-obs-1".to_owned(), Ipv4Addr::new(127, 0, 1, 1)),
            ("dc1-obs-2".to_owned(), Ipv4Addr::new(127, 0, 1, 2)),
        ],
        _ => vec![("dc2-obs-1".to_owned(), Ipv4Addr::new(127, 0, 2, 1))],
    }
}

/// Register bodies for the stack in one datacenter: every node runs every
/// service, each with a passing service check.
pub fn stack_registrations(dc: &str) -> Vec<RegisterRequest> {
    let mut out = Vec::new();
    for (node, address) in nodes(dc) {
        for (service, port) in STACK {
            let body = serde_json::json!({
                "Node": node,
                "Address": address.to_string(),
                "NodeMeta": { "role": "observability" },
                "Service": { "ID": service, "Service": service, "Port": port, "Tags": ["demo"] },
                "Check": {
                    "CheckID": format!("service:{service}"),
                    "Name": format!("{service} HTTP"),
                    "ServiceID": service,
                    "Status": "passing",
                },
            });
            out.push(serde_json::from_value(body).expect("the demo's register bodies are valid"));
        }
    }
    out
}

/// Sets every service check of the stack in `dc` to `status`.
fn set_stack_status(sim: &Sim, dc: &str, status: &str) {
    for (service, _) in STACK {
        sim.set_check_status(dc, None, &format!("service:{service}"), status);
    }
}

/// Binds the first free port from 8600 up on 127.0.0.1 (UDP and TCP both
/// probed), as the demo promises 8600 "or the next free port".
fn free_port(first: u16) -> u16 {
    (first..first.saturating_add(100))
        .find(|port| {
            let address = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), *port);
            std::net::UdpSocket::bind(address).is_ok()
                && std::net::TcpListener::bind(address).is_ok()
        })
        .unwrap_or(0)
}

/// Asks the resolver for A records over UDP; returns the addresses, or
/// the RCODE name when there are none.
async fn ask_a(server: SocketAddr, name: &str) -> Result<Vec<Ipv4Addr>, String> {
    let mut message = Message::query();
    message.metadata.id = fastrand::u16(..);
    let name = Name::from_ascii(name).map_err(|e| e.to_string())?;
    message.add_query(Query::query(name, RecordType::A));
    let bytes = message.to_vec().map_err(|e| e.to_string())?;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    socket
        .send_to(&bytes, server)
        .await
        .map_err(|e| e.to_string())?;
    let mut buffer = vec![0; 4096];
    let received = tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut buffer))
        .await
        .map_err(|_| "no answer within 2 s".to_owned())?
        .map_err(|e| e.to_string())?;
    let reply = Message::from_vec(&buffer[..received]).map_err(|e| e.to_string())?;
    let addresses: Vec<Ipv4Addr> = reply
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect();
    if addresses.is_empty() {
        Err(format!("{}", reply.metadata.response_code))
    } else {
        Ok(addresses)
    }
}

fn describe(answer: &Result<Vec<Ipv4Addr>, String>) -> String {
    match answer {
        Ok(addresses) => {
            let mut sorted = addresses.clone();
            sorted.sort();
            let dc = if sorted.iter().all(|a| a.octets()[2] == 1) {
                "dc1"
            } else {
                "dc2"
            };
            let list: Vec<String> = sorted.iter().map(ToString::to_string).collect();
            format!("{} ({dc})", list.join(", "))
        }
        Err(error) => error.clone(),
    }
}

/// Runs the demo until `shutdown`.
pub async fn run(scenario: Option<Scenario>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let any = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
    let sim = Sim::builder()
        .dc("dc1", any)
        .dc("dc2", any)
        .start()
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the simulated Consul: {e}"))?;
    for dc in ["dc1", "dc2"] {
        for registration in stack_registrations(dc) {
            sim.register(dc, registration)
                .map_err(|e| anyhow::anyhow!("demo registration in {dc}: {e}"))?;
        }
    }
    let dns_port = free_port(8600);
    let admin_port = free_port(8653);
    let queries: String = STACK
        .iter()
        .map(|(service, _)| format!("[[query]]\nname = \"{service}\"\n"))
        .collect();
    let toml = format!(
        "[dns]\nlisten = [\"127.0.0.1:{dns_port}\"]\n\
         [consul]\naddress = \"{}\"\ndatacenter = \"dc1\"\nwait = \"1m\"\n\
         [queries.defaults]\nfailover = {{ nearest_n = 0, datacenters = [\"dc1\", \"dc2\"] }}\n\
         {queries}\
         [admin]\nlisten = \"127.0.0.1:{admin_port}\"\n",
        sim.url("dc1").await
    );
    let config =
        Config::from_toml_str(&toml, "demo configuration").context("demo configuration")?;
    let running = app::start(config, shutdown.clone()).await?;
    let server = running.dns[0];
    let port = server.port();

    println!("consul-failover-dns demo: a simulated Consul federation with dc1 and dc2");
    println!(
        "  dc1 Consul: {}    dc2 Consul: {}",
        sim.url("dc1").await,
        sim.url("dc2").await
    );
    println!(
        "  stack in each DC: grafana:3000 loki:3100 tempo:3200 prometheus:9090 alertmanager:9093"
    );
    println!("  dc1 nodes 127.0.1.1, 127.0.1.2; dc2 node 127.0.2.1");
    println!();
    println!("DNS on 127.0.0.1:{port} (UDP and TCP). Try:");
    println!("  dig @127.0.0.1 -p {port} grafana.query.consul");
    println!("  dig @127.0.0.1 -p {port} loki.query.consul SRV");
    println!("  dig @127.0.0.1 -p {port} prometheus.service.dc2.consul");
    println!(
        "  dig @127.0.0.1 -p {port} grafana.query.consul AAAA     # NODATA: NOERROR with the SOA"
    );
    println!("  dig @127.0.0.1 -p {port} nothing.query.consul          # NXDOMAIN");
    if let Some(admin) = running.admin {
        println!("  curl http://{admin}/metrics");
    }
    println!("Simulate a fire in dc1 from another shell:");
    println!(
        "  curl -X PUT '{}/v1/agent/check/fail/service:grafana?node=dc1-obs-1'   (and dc1-obs-2; .../pass/... to recover)",
        sim.url("dc1").await
    );
    println!("Ctrl-C stops the demo.");
    println!();

    if scenario == Some(Scenario::Fire) {
        let narrate = async {
            let step = |label: &'static str| async move {
                let answer = ask_a(server, "grafana.query.consul.").await;
                println!(
                    "[fire] {label:<28} grafana.query.consul -> {}",
                    describe(&answer)
                );
            };
            step("all healthy").await;
            tokio::time::sleep(Duration::from_secs(3)).await;
            println!("[fire] dc1 is burning: every dc1 check goes critical");
            set_stack_status(&sim, "dc1", "critical");
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                step("dc1 down").await;
            }
            println!("[fire] dc1 is back: its checks pass again");
            set_stack_status(&sim, "dc1", "passing");
            for _ in 0..2 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                step("dc1 recovered").await;
            }
            println!("[fire] scenario over; the demo keeps serving until Ctrl-C");
        };
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = narrate => {}
        }
    }
    running.wait().await?;
    drop(sim);
    Ok(())
}
