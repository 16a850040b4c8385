//! Command-line entry point: parses flags, loads the configuration, sets up
//! logging and hands over to `app` (or `demo`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use consul_failover_dns::config::{Config, LogFormat};
use consul_failover_dns::{app, demo, explain};
use tokio_util::sync::CancellationToken;

/// mimalloc rather than glibc's allocator: with 30,000 watches start-up
/// costs about a tenth less CPU, for a few MiB more resident memory (the
/// README's Performance section has the figures).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A DNS stub for the consul. zone with datacenter failover.
#[derive(Parser)]
#[command(name = "consul-failover-dns", version = consul_failover_dns::VERSION)]
struct Cli {
    /// What to do (default: run).
    #[command(subcommand)]
    command: Option<Command>,
    /// The configuration file (TOML); without it every key has its default.
    #[arg(short, long, global = true)]
    config: Option<PathBuf>,
    /// DNS listen address (UDP and TCP), repeatable; overrides dns.listen.
    #[arg(long, global = true)]
    listen: Vec<SocketAddr>,
    /// Consul HTTP address; overrides consul.address.
    #[arg(long, global = true)]
    consul_address: Option<String>,
    /// Admin HTTP listen address ("" turns it off); overrides admin.listen.
    #[arg(long, global = true)]
    admin_listen: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve DNS (the default).
    Run,
    /// Validate the configuration and print the effective one.
    CheckConfig,
    /// Ask the running server (its admin endpoint, admin.listen) why NAME
    /// gets the answer it gets: the definition, each datacenter of the
    /// failover chain, the one chosen and why, and the records.
    Explain {
        /// A name in the zone (grafana.query.consul), or a bare query name
        /// (grafana).
        name: String,
        /// The record type asked.
        #[arg(long = "type", default_value = "A")]
        qtype: String,
        /// Print the JSON the admin endpoint answered instead.
        #[arg(long)]
        json: bool,
    },
    /// Run an embedded two-datacenter simulated Consul with an
    /// observability stack, and the resolver in front of it.
    Demo {
        /// `fire`: dc1 goes down after a few seconds, then recovers.
        #[arg(long)]
        scenario: Option<demo::Scenario>,
    },
}

/// EX_USAGE: bad command line or configuration.
const EXIT_CONFIG: u8 = 64;

fn load(cli: &Cli) -> Result<Config, String> {
    let mut config = match &cli.config {
        Some(path) => Config::load(path).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    if !cli.listen.is_empty() {
        config.dns.listen.clone_from(&cli.listen);
    }
    if let Some(address) = &cli.consul_address {
        config.consul.address.clone_from(address);
    }
    if let Some(address) = &cli.admin_listen {
        config.admin.listen.clone_from(address);
    }
    let origin = cli
        .config
        .as_ref()
        .map_or_else(|| "command line".to_owned(), |p| p.display().to_string());
    config.validate(&origin).map_err(|e| e.to_string())?;
    Ok(config)
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,hickory_server=warn,hickory_proto=warn")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// `explain NAME`: prints what the running server says.
fn explain(config: &Config, name: &str, qtype: &str, json: bool) -> ExitCode {
    if config.admin.listen.is_empty() {
        eprintln!(
            "consul-failover-dns: admin.listen is off; explain asks the running server's admin endpoint (give --admin-listen ADDR or -c FILE)"
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    let Ok(admin) = config.admin.listen.parse::<SocketAddr>() else {
        eprintln!(
            "consul-failover-dns: admin.listen {:?} is not an address",
            config.admin.listen
        );
        return ExitCode::from(EXIT_CONFIG);
    };
    match explain::fetch(admin, name, qtype) {
        Ok(value) if json => {
            println!("{value:#}");
            ExitCode::SUCCESS
        }
        Ok(value) => {
            print!("{}", explain::render(&value));
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("consul-failover-dns: {error}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match load(&cli) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("consul-failover-dns: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if matches!(cli.command, Some(Command::CheckConfig)) {
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    if let Some(Command::Explain { name, qtype, json }) = &cli.command {
        return explain(&config, name, qtype, *json);
    }
    init_logging(config.log.format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("consul-failover-dns: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        app::cancel_on_signals(shutdown.clone());
        match cli.command {
            Some(Command::Demo { scenario }) => demo::run(scenario, shutdown).await,
            _ => {
                let running = app::start(config, shutdown.clone()).await?;
                let file = cli.config.clone();
                app::reload_on_sighup(
                    running.reloader(),
                    move || match &file {
                        Some(_) => load(&cli),
                        None => Err("no configuration file to reload (started without -c)".into()),
                    },
                    shutdown,
                );
                running.wait().await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("consul-failover-dns: {error:#}");
            ExitCode::FAILURE
        }
    }
}
