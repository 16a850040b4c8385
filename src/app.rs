//! Wiring: the Consul watcher feeding the view, the DNS server answering
//! from it, and the admin endpoint reporting on both.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::consul::{ConsulClient, Watcher};
use crate::dns::{self, DnsHandler, UdpMode, WatchDemand, WireSettings};
use crate::health::{HealthLookup, HealthView, ServiceKey};
use crate::metrics::Metrics;
use crate::monitor::{Events, Monitor};
use crate::prepared::{Definition, PreparedQueries, Settings, uses_peers};
use crate::register::Registration;
use crate::resolve::Resolver;

/// How often the datacenter list (RTT order) is refreshed.
pub const DATACENTER_REFRESH: Duration = Duration::from_secs(60);

impl WatchDemand for Watcher {
    fn ensure_service(&self, key: &ServiceKey) -> bool {
        self.demand_service(key)
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
    /// The health view (for the demo's narration and for tests).
    pub view: Arc<HealthView>,
    listeners: dns::Listeners,
    shutdown: CancellationToken,
    reloader: Arc<Reloader>,
    /// The `[register]` task: it deregisters when shutdown comes.
    registration: Option<tokio::task::JoinHandle<()>>,
}

/// What a configuration reload replaces while the server runs.
pub struct Reloader {
    config: std::sync::Mutex<Config>,
    resolver: Arc<ArcSwap<Resolver>>,
    settings: Arc<ArcSwap<Settings>>,
    listing: Option<watch::Receiver<Option<Arc<Vec<Definition>>>>>,
    watcher: Arc<Watcher>,
    view: Arc<HealthView>,
    wire: Arc<dns::Wire>,
    metrics: Metrics,
}

impl Reloader {
    /// Puts a validated configuration in force: answers (`[dns]` answer
    /// keys, `[queries]`, `[[query]]`, `consul.translate_wan_addrs`), the
    /// watches they pin, `consul.max_stale`, `consul.max_watches` and
    /// `consul.watch_idle`. Returns the changed keys that only a restart
    /// applies (listeners, the Consul connection, logging).
    pub fn apply(&self, config: Config) -> Vec<&'static str> {
        let mut current = self
            .config
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let needs_restart = restart_keys(&current, &config);
        let settings = Arc::new(Resolver::prepared_settings(&config));
        self.settings.store(Arc::clone(&settings));
        let mut resolver = Resolver::new(&config).with_failback_of(&self.resolver.load());
        if let Some(listing) = self.listing.as_ref().and_then(|l| l.borrow().clone()) {
            let set = PreparedQueries::new(Vec::clone(&listing), Settings::clone(&settings));
            resolver = resolver.with_prepared(Arc::new(set));
        }
        self.resolver.store(Arc::new(resolver));
        self.wire.set(wire_settings(&config));
        self.wire.set_allow(allow_list(&config));
        self.view.set_max_stale(config.consul.max_stale);
        // Answers cached by the UDP fast path were built with the old ones.
        self.view.invalidate_answers();
        self.watcher.set_max_watches(config.consul.max_watches);
        self.watcher.set_watch_idle(config.consul.watch_idle);
        if !self.view.local_datacenter().is_empty() {
            self.watcher
                .set_pinned(pinned_watches(&self.resolver.load(), &self.view));
        }
        *current = config;
        needs_restart
    }
}

/// The keys that differ between two configurations and apply only at
/// start-up.
fn restart_keys(old: &Config, new: &Config) -> Vec<&'static str> {
    let (o, n) = (&old.consul, &new.consul);
    [
        ("dns.listen", old.dns.listen != new.dns.listen),
        (
            "dns.udp_fast_path",
            old.dns.udp_fast_path != new.dns.udp_fast_path,
        ),
        (
            "dns.udp_threads",
            old.dns.udp_threads != new.dns.udp_threads,
        ),
        (
            "dns.tcp_idle_timeout",
            old.dns.tcp_idle_timeout != new.dns.tcp_idle_timeout,
        ),
        (
            "dns.tcp_max_connections",
            old.dns.tcp_max_connections != new.dns.tcp_max_connections,
        ),
        ("consul.address", o.address != n.address),
        ("consul.datacenter", o.datacenter != n.datacenter),
        ("consul.token_file", o.token_file != n.token_file),
        ("consul.ca_file", o.ca_file != n.ca_file),
        ("consul.cert_file", o.cert_file != n.cert_file),
        ("consul.key_file", o.key_file != n.key_file),
        ("consul.wait", o.wait != n.wait),
        ("consul.stale", o.stale != n.stale),
        ("consul.timeout", o.timeout != n.timeout),
        (
            "consul.max_connections",
            o.max_connections != n.max_connections,
        ),
        ("consul.http2", o.http2 != n.http2),
        (
            "consul.probe_interval",
            o.probe_interval != n.probe_interval,
        ),
        ("consul.datacenters", o.datacenters != n.datacenters),
        (
            "queries.prepared",
            old.queries.prepared != new.queries.prepared,
        ),
        ("admin.listen", old.admin.listen != new.admin.listen),
        ("register", old.register != new.register),
        ("log.format", old.log.format != new.log.format),
    ]
    .into_iter()
    .filter_map(|(key, changed)| changed.then_some(key))
    .collect()
}

/// The DNS protocol settings of a configuration.
fn wire_settings(config: &Config) -> WireSettings {
    WireSettings {
        udp_payload: config.dns.udp_payload,
        udp_answer_limit: config.dns.udp_answer_limit,
        first_answer_wait: config.dns.first_answer_wait,
        upstream: config.dns.upstream.parse().ok(),
        rate_limit: config.dns.rate_limit,
        rate_limit_slip: config.dns.rate_limit_slip,
    }
}

/// `dns.allow` as networks (validated with the configuration).
fn allow_list(config: &Config) -> Vec<ipnet::IpNet> {
    crate::config::parse_allow(&config.dns.allow).unwrap_or_default()
}

/// Reloads the configuration on every SIGHUP: `load` reads and validates
/// the file (with the command line's overrides); a file that does not load
/// is logged and the running configuration stays.
pub fn reload_on_sighup(
    reloader: Arc<Reloader>,
    load: impl Fn() -> Result<Config, String> + Send + 'static,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        let mut hangups =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                Ok(signal) => signal,
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for SIGHUP; reloading is off");
                    return;
                }
            };
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                got = hangups.recv() => if got.is_none() { return },
            }
            match load() {
                Ok(config) => {
                    let restart = reloader.apply(config);
                    reloader.metrics.reload(true);
                    tracing::info!("configuration reloaded");
                    if !restart.is_empty() {
                        tracing::warn!(
                            keys = %restart.join(", "),
                            "these changed keys take effect only after a restart"
                        );
                    }
                }
                Err(error) => {
                    reloader.metrics.reload(false);
                    tracing::error!(
                        %error,
                        "configuration not reloaded; the running one stays in force"
                    );
                }
            }
        }
    });
}

impl Running {
    /// What reloads the configuration of this server.
    pub fn reloader(&self) -> Arc<Reloader> {
        Arc::clone(&self.reloader)
    }

    /// Serves until `shutdown` is cancelled, then stops every task.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        self.shutdown.cancelled().await;
        // DNS keeps answering while the agent is told (within
        // consul.timeout).
        if let Some(registration) = self.registration.take() {
            let _ = registration.await;
        }
        self.listeners.stop_fast_path();
        self.listeners.server.shutdown_token().cancel();
        self.listeners
            .server
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
    let mut failures = 0_u32;
    loop {
        match call().await {
            Ok(value) => {
                if failures > 0 {
                    tracing::info!(failures, "read {what} from Consul");
                }
                return Ok(value);
            }
            // Once, then once a minute (every 12th try at the 5 s ceiling).
            Err(error) if failures % 12 == 0 => {
                tracing::warn!(%error, "cannot read {what} from Consul yet; answering SERVFAIL until it answers, retrying");
            }
            Err(error) => tracing::debug!(%error, "cannot read {what} from Consul yet"),
        }
        failures += 1;
        tokio::select! {
            () = shutdown.cancelled() => anyhow::bail!("stopped while waiting for {what}"),
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Starts everything. DNS and admin are bound first, so the server
/// answers at once even while Consul is unreachable (SERVFAIL with an
/// Extended DNS Error until data arrives); the local datacenter, the
/// datacenter list and the watches follow in the background, retried until
/// Consul answers.
pub async fn start(config: Config, shutdown: CancellationToken) -> anyhow::Result<Running> {
    let metrics = Metrics::new();
    let client = Arc::new(ConsulClient::new(&config.consul).context("Consul client")?);
    let view = Arc::new(HealthView::new(&config.consul.datacenter));
    view.set_max_stale(config.consul.max_stale);
    let watcher = Arc::new(
        Watcher::new(
            Arc::clone(&client),
            Arc::clone(&view),
            metrics.clone(),
            shutdown.clone(),
        )
        .with_max_watches(config.consul.max_watches),
    );
    let resolver = Arc::new(ArcSwap::from_pointee(Resolver::new(&config)));
    let listing = resolver
        .load()
        .serves_prepared()
        .then(|| watch::channel(None).0);
    let settings = Arc::new(ArcSwap::from_pointee(Resolver::prepared_settings(&config)));

    let handler = DnsHandler::new(
        Arc::clone(&resolver),
        Arc::clone(&view),
        Arc::clone(&watcher) as Arc<dyn WatchDemand>,
        metrics.clone(),
        wire_settings(&config),
    );
    let wire = handler.wire();
    wire.set_allow(allow_list(&config));
    let listeners = dns::serve(
        handler,
        &config.dns.listen,
        dns::TcpSettings::from_config(&config.dns),
        UdpMode::from_config(config.dns.udp_fast_path, config.dns.udp_threads),
    )
    .await?;
    let dns = listeners.bound.clone();

    let events = Arc::new(Events::new());
    tokio::spawn(
        Monitor {
            resolver: Arc::clone(&resolver),
            view: Arc::clone(&view),
            metrics: metrics.clone(),
            events: Arc::clone(&events),
        }
        .run(shutdown.clone()),
    );
    let admin = if config.admin.listen.is_empty() {
        None
    } else {
        let address: SocketAddr = config.admin.listen.parse().context("admin.listen")?;
        let listener = admin::bind(address).await?;
        let bound = listener.local_addr()?;
        let state = Arc::new(AdminState {
            view: Arc::clone(&view),
            prepared: listing.as_ref().map(watch::Sender::subscribe),
            metrics: metrics.clone(),
            resolver: Arc::clone(&resolver),
            events: Arc::clone(&events),
            shutdown: shutdown.clone(),
        });
        tokio::spawn(admin::serve(listener, state, shutdown.clone()));
        Some(bound)
    };
    for address in &dns {
        tracing::info!(%address, "answering DNS on UDP and TCP");
    }
    if let Some(address) = admin {
        tracing::info!(%address, "admin HTTP on /health /ready /metrics /v1/explain /v1/events");
    }
    let reloader = Arc::new(Reloader {
        resolver: Arc::clone(&resolver),
        settings: Arc::clone(&settings),
        listing: listing.as_ref().map(watch::Sender::subscribe),
        watcher: Arc::clone(&watcher),
        view: Arc::clone(&view),
        wire,
        metrics: metrics.clone(),
        config: std::sync::Mutex::new(config.clone()),
    });
    let registration = match (&config.register, admin) {
        (Some(register), Some(address)) => Some(tokio::spawn(crate::register::run(
            Arc::clone(&client),
            Registration::new(register, address),
            shutdown.clone(),
        ))),
        _ => None,
    };
    tokio::spawn(connect(Connect {
        client,
        view: Arc::clone(&view),
        watcher,
        resolver,
        metrics,
        listing,
        settings,
        probe_interval: config.consul.probe_interval,
        watch_idle: config.consul.watch_idle,
        shutdown: shutdown.clone(),
    }));
    Ok(Running {
        dns,
        admin,
        view,
        listeners,
        shutdown,
        reloader,
        registration,
    })
}

/// What [`connect`] needs.
struct Connect {
    client: Arc<ConsulClient>,
    view: Arc<HealthView>,
    watcher: Arc<Watcher>,
    resolver: Arc<ArcSwap<Resolver>>,
    metrics: Metrics,
    listing: Option<watch::Sender<Option<Arc<Vec<Definition>>>>>,
    settings: Arc<ArcSwap<Settings>>,
    probe_interval: Duration,
    watch_idle: Duration,
    shutdown: CancellationToken,
}

/// Learns the local datacenter (unless configured) and the datacenter
/// list, retrying until Consul answers, then starts every watch.
async fn connect(c: Connect) {
    // Probing first: a configured local datacenter whose Consul is down is
    // known unreachable at once, so its queries do not wait for it.
    c.watcher.spawn_reachability_probe(c.probe_interval);
    let configured = c.view.local_datacenter();
    let datacenter = if configured.is_empty() {
        let learned = retry("the local datacenter (/v1/agent/self)", &c.shutdown, || {
            c.client.local_datacenter()
        })
        .await;
        let Ok(learned) = learned else { return };
        c.view.set_local_datacenter(&learned);
        learned
    } else {
        String::clone(&configured)
    };
    let Ok(mut datacenters) = retry("the datacenter list", &c.shutdown, || {
        c.client.datacenters()
    })
    .await
    else {
        return;
    };
    if !datacenters.contains(&datacenter) {
        datacenters.insert(0, datacenter.clone());
    }
    c.view.set_datacenters(datacenters);
    tracing::info!(datacenter = %datacenter, "Consul reached; starting watches");
    c.watcher.spawn_datacenter_refresh(DATACENTER_REFRESH);
    c.watcher.spawn_idle_reaper(c.watch_idle);
    watch_datacenters(&c.view, &c.watcher, &c.metrics);
    c.watcher
        .set_pinned(pinned_watches(&c.resolver.load(), &c.view));
    if let Some(sender) = c.listing {
        let listing = sender.subscribe();
        c.watcher.watch_prepared(&datacenter, sender);
        follow_prepared(
            listing, c.resolver, c.settings, c.watcher, c.view, c.metrics, c.shutdown,
        )
        .await;
    } else {
        // Still follow datacenter-list changes for the pinned watches.
        loop {
            tokio::select! {
                () = c.shutdown.cancelled() => return,
                () = tokio::time::sleep(PIN_REFRESH) => {}
            }
            watch_datacenters(&c.view, &c.watcher, &c.metrics);
            c.watcher
                .set_pinned(pinned_watches(&c.resolver.load(), &c.view));
        }
    }
}

/// Starts the catalog watch of every known datacenter (new ones appear in
/// the refreshed list) and exports its metrics.
fn watch_datacenters(view: &HealthView, watcher: &Watcher, metrics: &Metrics) {
    for dc in view.datacenters().iter() {
        metrics.add_datacenter(dc);
        watcher.ensure_catalog(dc);
    }
}

/// The health watches that always run: every (datacenter, service) of the
/// failover chains of the `[[query]]` definitions and of Consul's static
/// prepared queries (templates name their services only when asked).
pub fn pinned_watches(resolver: &Resolver, view: &HealthView) -> HashSet<ServiceKey> {
    let local = view.local_datacenter();
    let datacenters = view.datacenters();
    let prepared = resolver.prepared().map(|p| p.static_defs());
    resolver
        .query_defs()
        .chain(prepared.into_iter().flatten())
        .flat_map(|def| {
            Resolver::chain(&def.policy, &local, &datacenters)
                .into_iter()
                .map(|dc| ServiceKey::new(&dc, &def.service))
        })
        .collect()
}

/// How often the pinned watches are recomputed without a prepared-query
/// change (the datacenter list, hence the chains, may have changed).
const PIN_REFRESH: Duration = Duration::from_secs(30);

/// Applies every new prepared-query listing: settles it, swaps it into the
/// resolver, pins the watches of its static queries, and logs the
/// definitions that cannot be served (once per listing change).
async fn follow_prepared(
    mut listing: watch::Receiver<Option<Arc<Vec<Definition>>>>,
    resolver: Arc<ArcSwap<Resolver>>,
    settings: Arc<ArcSwap<Settings>>,
    watcher: Arc<Watcher>,
    view: Arc<HealthView>,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let mut warned_peers = HashSet::new();
    loop {
        let changed = tokio::select! {
            () = shutdown.cancelled() => return,
            changed = listing.changed() => {
                if changed.is_err() {
                    return;
                }
                true
            }
            () = tokio::time::sleep(PIN_REFRESH) => false,
        };
        if changed {
            let Some(definitions) = listing.borrow_and_update().clone() else {
                continue;
            };
            for definition in definitions.iter().filter(|d| uses_peers(d)) {
                if warned_peers.insert(definition.id.clone()) {
                    tracing::warn!(
                        query = %definition.name,
                        id = %definition.id,
                        "prepared query names a cluster peer; peers are not supported, only its datacenters are served"
                    );
                }
            }
            let set =
                PreparedQueries::new(Vec::clone(&definitions), Settings::clone(&settings.load()));
            for (query, reason) in set.skipped() {
                tracing::warn!(%query, %reason, "prepared query cannot be served");
            }
            metrics.set_prepared_queries(set.len());
            tracing::info!(count = set.len(), "prepared queries loaded from Consul");
            let set = Arc::new(set);
            resolver.rcu(|current| current.with_prepared(Arc::clone(&set)));
            view.invalidate_answers();
        }
        watch_datacenters(&view, &watcher, &metrics);
        watcher.set_pinned(pinned_watches(&resolver.load(), &view));
    }
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
