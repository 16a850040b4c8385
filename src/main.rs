//! Command-line entry point. Until the resolver lands it only reports its version.

use clap::Parser;

/// A DNS stub for the consul. zone with datacenter failover.
#[derive(Parser)]
#[command(name = "consul-failover-dns", version = consul_failover_dns::VERSION)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    eprintln!(
        "consul-failover-dns {}: the resolver is not built yet; see --version",
        consul_failover_dns::VERSION
    );
    std::process::exit(64);
}
