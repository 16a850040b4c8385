//! `consul-sim`: serves several simulated Consul datacenters over HTTP.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use consul_sim::Sim;
use consul_sim::model::{Coordinate, RegisterRequest};
use consul_sim::sim::DEFAULT_HTTP_MAX_CONNS_PER_CLIENT;

/// A multi-datacenter Consul HTTP API simulator with fault injection.
///
/// Each --dc gets its own listener; each answers ?dc=<other> for the
/// others, as WAN federation does. Faults are driven over /_sim/ (see the
/// crate README).
#[derive(Parser)]
#[command(name = "consul-sim", version)]
struct Cli {
    /// A datacenter and its listen address, e.g. dc1=127.0.0.1:8500
    /// (port 0 picks a free port). Repeatable; the first is the primary.
    #[arg(long = "dc", value_name = "NAME=ADDR", required = true)]
    dcs: Vec<String>,
    /// A JSON array of /v1/catalog/register bodies, each with its Datacenter.
    #[arg(long, value_name = "FILE")]
    seed: Option<std::path::PathBuf>,
    /// A datacenter's WAN coordinate as comma-separated seconds along the
    /// first axes (e.g. dc2=0.015,0.002), or NAME=none for unknown.
    /// Default: datacenters 10 ms apart on a line, in --dc order.
    #[arg(long = "coord", value_name = "NAME=X[,Y...]")]
    coords: Vec<String>,
    /// Behave like agents with translate_wan_addrs: answers about another
    /// datacenter carry its WAN tagged addresses.
    #[arg(long)]
    translate_wan_addrs: bool,
    /// Serve HTTPS (HTTP/2 by ALPN, else HTTP/1.1) with a certificate from
    /// a CA made at start, whose PEM is written to DIR/ca.pem for clients
    /// to trust (e.g. CONSUL_CACERT). DIR is created if missing.
    #[arg(long, value_name = "DIR")]
    tls_dir: Option<std::path::PathBuf>,
    /// Consul's limits.http_max_conns_per_client: connections one client
    /// IP may have open to a listener; more get a 429 and are closed.
    /// 0: no limit.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_HTTP_MAX_CONNS_PER_CLIENT)]
    max_conns_per_client: usize,
}

fn parse_dc(spec: &str) -> Result<(String, SocketAddr), String> {
    let (name, addr) = spec
        .split_once('=')
        .ok_or_else(|| format!("--dc {spec:?}: expected NAME=ADDR, e.g. dc1=127.0.0.1:8500"))?;
    if name.is_empty() {
        return Err(format!("--dc {spec:?}: the datacenter name is empty"));
    }
    let addr = addr
        .parse()
        .map_err(|e| format!("--dc {spec:?}: {addr:?} is not an IP:PORT address ({e})"))?;
    Ok((name.to_owned(), addr))
}

fn parse_coord(spec: &str) -> Result<(String, Option<Coordinate>), String> {
    let (name, value) = spec
        .split_once('=')
        .ok_or_else(|| format!("--coord {spec:?}: expected NAME=X[,Y...] or NAME=none"))?;
    if value == "none" {
        return Ok((name.to_owned(), None));
    }
    let position = value
        .split(',')
        .map(|v| {
            v.trim()
                .parse::<f64>()
                .map_err(|_| format!("--coord {spec:?}: {v:?} is not a number of seconds"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((name.to_owned(), Some(Coordinate::at(&position))))
}

async fn run(cli: Cli) -> Result<(), String> {
    let mut builder = Sim::builder()
        .translate_wan_addrs(cli.translate_wan_addrs)
        .tls(cli.tls_dir.is_some())
        .max_conns_per_client(cli.max_conns_per_client);
    for spec in &cli.dcs {
        let (name, addr) = parse_dc(spec)?;
        builder = builder.dc(&name, addr);
    }
    for spec in &cli.coords {
        let (name, coord) = parse_coord(spec)?;
        if !cli
            .dcs
            .iter()
            .any(|d| d.split_once('=').is_some_and(|(n, _)| n == name))
        {
            return Err(format!("--coord {spec:?}: no --dc named {name:?}"));
        }
        builder = builder.coordinate(&name, coord);
    }
    if let Some(path) = &cli.seed {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("--seed {}: {e}", path.display()))?;
        let seed: Vec<RegisterRequest> = serde_json::from_str(&text).map_err(|e| {
            format!(
                "--seed {}: not a JSON array of register bodies: {e}",
                path.display()
            )
        })?;
        builder = builder.seed(seed);
    }
    let sim = builder.start().await?;
    // Written before the listening lines: a script that has read those can
    // use the CA at once.
    if let (Some(dir), Some(ca)) = (&cli.tls_dir, sim.ca_pem()) {
        let path = dir.join("ca.pem");
        std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(&path, ca))
            .map_err(|e| format!("--tls-dir {}: {e}", dir.display()))?;
    }
    for dc in sim.datacenters() {
        println!("{dc} listening on {}", sim.url(&dc).await);
    }
    tokio::signal::ctrl_c()
        .await
        .map_err(|e| format!("waiting for Ctrl-C: {e}"))?;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("consul-sim: {e}");
            ExitCode::from(1)
        }
    }
}
