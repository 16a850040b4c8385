//! Command-line entry point. Until the resolver lands it only reports its
//! version; every command (`demo`, `run`, …) says it is not built yet.

use std::process::ExitCode;

use clap::Parser;

/// A DNS stub for the consul. zone with datacenter failover.
#[derive(Parser)]
#[command(name = "consul-failover-dns", version = consul_failover_dns::VERSION)]
struct Cli {
    /// The command and its arguments (`demo`, `run`, `check-config`, …).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.first().map_or("run", String::as_str);
    eprintln!(
        "consul-failover-dns {}: `{command}` is not built yet; only --version works in this build",
        consul_failover_dns::VERSION
    );
    // EX_USAGE, as for any command this build cannot run.
    ExitCode::from(64)
}
