//! Wiring: the Consul watcher feeding the view, the DNS server answering
//! from it, and the admin endpoint reporting on both.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::consul::{ConsulClient, Watcher};
use crate::dns::{self, DnsHandler, WatchDemand, WireSettings};
use crate::health::{HealthView, ServiceKey};
use crate::metrics::Metrics;
use crate::resolve::Resolver;

/// How often the datacenter list (RTT order) is refreshed.
pub const DATACENTER_REFRESH: Duration = Duration::from_secs(60);

impl WatchDemand for Watcher {
    fn ensure_service(&self, key: &ServiceKey) {
        Self::ensure_service(self, key);
    }

    fn ensure_catalog(&self, datacenter: &str) {
        Self::ensure_catalog(self, datacenter);
    }
}

/// A started resolver.
pub struct Running {
    /// The DNS addresses bound (UDP and TCP on each).
    pub dns: Vec<SocketAddr>,
    /// The admin address bound, if any.
    pub admin: Option<SocketAddr>,
    /// The local datacenter.
    pub datacenter: String,
    /// The health view (for the demo's narration and for tests).
    pub view: Arc<HealthView>,
    server: hickory_server::Server<DnsHandler>,
    shutdown: CancellationToken,
}

impl Running {
    /// Serves until `shutdown` is cancelled, then stops every task.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        self.shutdown.cancelled().await;
        self.server.shutdown_token().cancel();
        self.server
            .block_until_done()
            .await
            .context("DNS server stopped with an error")?;
        Ok(())
    }
}

/// Retries an async Consul call until it succeeds or shutdown, logging
/// each failure; start-up cannot go on without its answer.
async fn retry<T, F, Fut>(
    what: &str,
    shutdown: &CancellationToken,
    mut call: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, crate::consul::ConsulError>>,
{
    let mut delay = Duration::from_millis(100);
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            Err(error) => {
                tracing::warn!(%error, "cannot read {what} from Consul yet; retrying in {delay:?}")
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => anyhow::bail!("stopped while waiting for {what}"),
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Starts everything: learns the local datacenter and the datacenter
/// list, starts the start-up watches, binds DNS and admin.
pub async fn start(config: Config, shutdown: CancellationToken) -> anyhow::Result<Running> {
    let metrics = Metrics::new();
    let client = Arc::new(ConsulClient::new(&config.consul).context("Consul client")?);
    let datacenter = if config.consul.datacenter.is_empty() {
        retry("the local datacenter (/v1/agent/self)", &shutdown, || {
            client.local_datacenter()
        })
        .await?
    } else {
        config.consul.datacenter.clone()
    };
    let view = Arc::new(HealthView::new(&datacenter));
    let mut datacenters = retry("the datacenter list", &shutdown, || client.datacenters()).await?;
    if !datacenters.contains(&datacenter) {
        datacenters.insert(0, datacenter.clone());
    }
    view.set_datacenters(datacenters.clone());

    let watcher = Arc::new(Watcher::new(
        Arc::clone(&client),
        Arc::clone(&view),
        metrics.clone(),
        shutdown.clone(),
    ));
    watcher.spawn_datacenter_refresh(DATACENTER_REFRESH);
    for dc in &datacenters {
        metrics.add_datacenter(dc);
        watcher.ensure_catalog(dc);
    }
    let resolver = Resolver::new(&config);
    let mut startup_watches = Vec::new();
    for def in resolver.query_defs() {
        for dc in Resolver::chain(&def.policy, &datacenter, &datacenters) {
            let key = ServiceKey::new(&dc, &def.service);
            watcher.ensure_service(&key);
            if !startup_watches.contains(&key) {
                startup_watches.push(key);
            }
        }
    }

    let handler = DnsHandler::new(
        Arc::new(ArcSwap::from_pointee(resolver)),
        Arc::clone(&view),
        Arc::clone(&watcher) as Arc<dyn WatchDemand>,
        metrics.clone(),
        WireSettings {
            udp_payload: config.dns.udp_payload,
            udp_answer_limit: config.dns.udp_answer_limit,
            first_answer_wait: config.dns.first_answer_wait,
        },
    );
    let (server, dns) =
        dns::serve(handler, &config.dns.listen, config.dns.tcp_idle_timeout).await?;

    let admin = if config.admin.listen.is_empty() {
        None
    } else {
        let address: SocketAddr = config.admin.listen.parse().context("admin.listen")?;
        let listener = admin::bind(address).await?;
        let bound = listener.local_addr()?;
        let state = Arc::new(AdminState {
            view: Arc::clone(&view),
            startup_watches,
            startup_catalogs: datacenters.clone(),
            metrics: metrics.clone(),
        });
        tokio::spawn(admin::serve(listener, state, shutdown.clone()));
        Some(bound)
    };
    for address in &dns {
        tracing::info!(%address, "answering DNS on UDP and TCP");
    }
    if let Some(address) = admin {
        tracing::info!(%address, "admin HTTP on /health /ready /metrics");
    }
    Ok(Running {
        dns,
        admin,
        datacenter,
        view,
        server,
        shutdown,
    })
}

/// Cancels `token` on SIGINT or SIGTERM.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = terminate => {}
        }
        tracing::info!("stopping");
        token.cancel();
    });
}
