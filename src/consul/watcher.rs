//! The watch tasks: one blocking loop per (datacenter, service) feeding
//! [`HealthView::apply_service`], one per datacenter catalog feeding
//! [`HealthView::apply_catalog`], one on the local datacenter's prepared
//! queries feeding a [`tokio::sync::watch`] channel, the periodic
//! datacenter-list refresh, and the reaper of idle on-demand watches.
//!
//! Health watches are either pinned (named by the configuration or a
//! prepared query: they run until unpinned) or on demand (started by a
//! query, stopped after `consul.watch_idle` without one, and capped by
//! `consul.max_watches`).
//!
//! A loop never gives up: on an error it logs once per streak, counts the
//! error, backs off with jitter and keeps the last good data in the view.
//! Every task stops as soon as the shutdown token (or its own token, for a
//! stopped service watch) is cancelled.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::blocking::DEFAULT_BACKOFF_MIN;
use super::{Backoff, BlockingIndex, ConsulClient, ConsulError, IndexMove, RateLimit};
use crate::health::{Data, HealthLookup, HealthView, Instance, ServiceHealth, ServiceKey};
use crate::metrics::{Metrics, Outcome, RequestKind};
use crate::prepared::Definition;

/// One running watch task. It stops with the shutdown token, or alone
/// when aborted (no token of its own: thirty thousand child tokens cost
/// 3.6 MB).
#[derive(Debug)]
struct Task {
    /// The task.
    handle: JoinHandle<()>,
    /// A pinned health watch (never idle), named by the configuration or
    /// a prepared query.
    pinned: bool,
}

impl Task {
    /// A task not pinned (yet).
    fn new(handle: JoinHandle<()>) -> Self {
        Self {
            handle,
            pinned: false,
        }
    }
}

/// The tasks running now.
#[derive(Debug, Default)]
struct Running {
    /// Health watches.
    services: HashMap<ServiceKey, Task>,
    /// Catalog watches, by datacenter.
    catalogs: HashMap<String, Task>,
    /// Datacenter-list refreshers, the prepared-query watch, the reaper.
    background: Vec<JoinHandle<()>>,
    /// When the cap last refused a watch (to log once a minute).
    refused_logged: Option<Instant>,
}

impl Running {
    /// The number of blocking watches.
    fn watches(&self) -> usize {
        self.services.len() + self.catalogs.len()
    }
}

/// What the tasks share.
#[derive(Debug)]
struct Shared {
    /// The Consul client.
    client: Arc<ConsulClient>,
    /// Where the data goes.
    view: Arc<HealthView>,
    /// Error counter and watch gauge.
    metrics: Metrics,
    /// Stops everything.
    shutdown: CancellationToken,
    /// The tasks; also held while a service watch stores, so a stopped
    /// watch can never write after [`Watcher::stop_service`] returned.
    running: Mutex<Running>,
    /// `consul.max_watches`: on-demand health watches stop being started
    /// once this many health watches run.
    max_watches: std::sync::atomic::AtomicUsize,
    /// `consul.watch_idle` in milliseconds (the reaper reads it each round).
    watch_idle_ms: std::sync::atomic::AtomicU64,
    /// Wakes watches backing off after errors when a datacenter answers
    /// again, so its data is fresh at once rather than after the backoff.
    recovered: tokio::sync::Notify,
}

impl Shared {
    /// The task table, whatever a panicking holder left.
    fn running(&self) -> MutexGuard<'_, Running> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Owns the watch tasks that keep a [`HealthView`] current. Cheap to
/// clone; the clones share the tasks.
#[derive(Clone, Debug)]
pub struct Watcher {
    /// The shared state.
    shared: Arc<Shared>,
}

impl Watcher {
    /// A watcher with no task yet. Tasks stop when `shutdown` is cancelled.
    pub fn new(
        client: Arc<ConsulClient>,
        view: Arc<HealthView>,
        metrics: Metrics,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                client,
                view,
                metrics,
                shutdown,
                running: Mutex::new(Running::default()),
                max_watches: std::sync::atomic::AtomicUsize::new(usize::MAX),
                watch_idle_ms: std::sync::atomic::AtomicU64::new(u64::MAX),
                recovered: tokio::sync::Notify::new(),
            }),
        }
    }

    /// The same watcher with `consul.max_watches` set.
    #[must_use]
    pub fn with_max_watches(self, max_watches: usize) -> Self {
        self.set_max_watches(max_watches);
        self
    }

    /// Sets `consul.max_watches` (on reload: running watches are kept).
    pub fn set_max_watches(&self, max_watches: usize) {
        self.shared
            .max_watches
            .store(max_watches, std::sync::atomic::Ordering::Relaxed);
    }

    /// Sets `consul.watch_idle` for the reaper's next rounds.
    pub fn set_watch_idle(&self, idle: Duration) {
        self.shared.watch_idle_ms.store(
            u64::try_from(idle.as_millis()).unwrap_or(u64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Starts an on-demand watch of `key` (a query needs it) unless one
    /// runs. Returns `false` when `consul.max_watches` health watches run
    /// already and none is for `key`: the query cannot be answered.
    pub fn demand_service(&self, key: &ServiceKey) -> bool {
        {
            let mut running = self.shared.running();
            if running.services.contains_key(key) {
                return true;
            }
            let max_watches = self
                .shared
                .max_watches
                .load(std::sync::atomic::Ordering::Relaxed);
            if running.services.len() >= max_watches {
                let now = Instant::now();
                if running
                    .refused_logged
                    .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(60))
                {
                    running.refused_logged = Some(now);
                    tracing::warn!(
                        datacenter = %key.datacenter,
                        service = %key.service,
                        max_watches,
                        "not watching another service: consul.max_watches health watches run; \
                         raise it or lower consul.watch_idle"
                    );
                }
                return false;
            }
        }
        self.ensure_service(key);
        true
    }

    /// Makes `keys` the pinned health watches: starts those not running
    /// and stops those pinned before but not now (a query that needs one
    /// again starts it on demand). They are the pairs the view's `/ready`
    /// waits for ([`HealthView::set_required`]).
    pub fn set_pinned(&self, keys: HashSet<ServiceKey>) {
        for key in &keys {
            self.ensure_service(key);
        }
        let dropped: Vec<ServiceKey> = {
            let mut running = self.shared.running();
            let mut changed = false;
            let mut dropped = Vec::new();
            for (key, task) in &mut running.services {
                let pinned = keys.contains(key);
                if task.pinned != pinned {
                    changed = true;
                    task.pinned = pinned;
                    if !pinned {
                        dropped.push(key.clone());
                    }
                }
            }
            if changed {
                self.shared.view.set_required(&keys);
            }
            dropped
        };
        for key in dropped {
            self.stop_service(&key);
        }
    }

    /// The pinned health watches.
    pub fn pinned(&self) -> HashSet<ServiceKey> {
        let running = self.shared.running();
        running
            .services
            .iter()
            .filter(|(_, task)| task.pinned)
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// Spawns the reaper: every so often, on-demand watches that no answer
    /// read for `idle` (or what [`set_watch_idle`](Self::set_watch_idle)
    /// set later) are stopped.
    pub fn spawn_idle_reaper(&self, idle: Duration) {
        if self.shared.shutdown.is_cancelled() {
            return;
        }
        self.set_watch_idle(idle);
        let watcher = self.clone();
        let handle = tokio::spawn(async move {
            let stop = watcher.shared.shutdown.clone();
            loop {
                let idle = Duration::from_millis(
                    watcher
                        .shared
                        .watch_idle_ms
                        .load(std::sync::atomic::Ordering::Relaxed),
                );
                let every = (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(60));
                if !sleep_unless_stopped(&stop, every).await {
                    break;
                }
                watcher.stop_idle(idle);
            }
        });
        self.shared.running().background.push(handle);
    }

    /// Stops the on-demand watches idle for `idle` or longer; returns how
    /// many.
    pub fn stop_idle(&self, idle: Duration) -> usize {
        let candidates: Vec<ServiceKey> = {
            let running = self.shared.running();
            running
                .services
                .iter()
                .filter(|(_, task)| !task.pinned)
                .map(|(key, _)| key.clone())
                .collect()
        };
        let mut stopped = 0;
        for key in candidates {
            let idle_for = self.shared.view.idle_for(&key).unwrap_or(Duration::MAX);
            // Pinned meanwhile? stop_service re-checks nothing, so look again.
            if idle_for >= idle
                && !self
                    .shared
                    .running()
                    .services
                    .get(&key)
                    .is_some_and(|task| task.pinned)
                && self.stop_service(&key)
            {
                stopped += 1;
                tracing::debug!(datacenter = %key.datacenter, service = %key.service, ?idle_for, "idle Consul health watch stopped");
            }
        }
        stopped
    }

    /// Spawns the reachability probe: every `period`, each known
    /// datacenter's Consul is asked `GET /v1/status/leader` along its
    /// watches' route, with `2 * period` to answer. A datacenter that does
    /// not answer is marked unreachable in the view (its data is then
    /// stale, later unknown); one that answers again wakes its watches.
    pub fn spawn_reachability_probe(&self, period: Duration) {
        if self.shared.shutdown.is_cancelled() {
            return;
        }
        let handle = tokio::spawn(probe_loop(self.shared.clone(), period));
        self.shared.running().background.push(handle);
    }

    /// Starts the blocking watch of the prepared queries defined in `dc`
    /// (the local datacenter); every new listing is sent on `sink`.
    pub fn watch_prepared(&self, dc: &str, sink: watch::Sender<Option<Arc<Vec<Definition>>>>) {
        if self.shared.shutdown.is_cancelled() {
            return;
        }
        let target = PreparedTarget {
            datacenter: dc.to_owned(),
            sink,
        };
        let handle = tokio::spawn(watch_loop(self.shared.clone(), target));
        self.shared.running().background.push(handle);
    }

    /// Starts the blocking watch of `key` unless one runs; returns whether
    /// it started one. The view's slot is created at once, so readers see
    /// the pair as pending until the first answer. Must be called within a
    /// Tokio runtime; does nothing once shutdown began.
    pub fn ensure_service(&self, key: &ServiceKey) -> bool {
        if self.shared.shutdown.is_cancelled() {
            return false;
        }
        let mut running = self.shared.running();
        if running
            .services
            .get(key)
            .is_some_and(|task| !task.handle.is_finished())
        {
            return false;
        }
        self.shared.view.add_service_slot(key);
        let target = ServiceTarget { key: key.clone() };
        let handle = tokio::spawn(watch_loop(self.shared.clone(), target));
        running.services.insert(key.clone(), Task::new(handle));
        tracing::debug!(datacenter = %key.datacenter, service = %key.service, "Consul health watch started");
        true
    }

    /// Stops the watch of `key` and removes its slot from the view;
    /// returns whether one was running.
    pub fn stop_service(&self, key: &ServiceKey) -> bool {
        let mut running = self.shared.running();
        let Some(task) = running.services.remove(key) else {
            return false;
        };
        // Dropped at its next await; until then it cannot store (see
        // `ServiceTarget::store`).
        task.handle.abort();
        self.shared.view.remove_service_slot(key);
        tracing::debug!(datacenter = %key.datacenter, service = %key.service, "Consul health watch stopped");
        true
    }

    /// Whether a watch of `key` runs.
    pub fn is_watching(&self, key: &ServiceKey) -> bool {
        self.shared.running().services.contains_key(key)
    }

    /// Starts the blocking watch of `/v1/catalog/services` in `dc` (feeding
    /// the view's catalog) unless one runs; returns whether it started
    /// one. Must be called within a Tokio runtime.
    pub fn ensure_catalog(&self, dc: &str) -> bool {
        if self.shared.shutdown.is_cancelled() {
            return false;
        }
        let mut running = self.shared.running();
        if running
            .catalogs
            .get(dc)
            .is_some_and(|task| !task.handle.is_finished())
        {
            return false;
        }
        let target = CatalogTarget {
            datacenter: dc.to_owned(),
        };
        let handle = tokio::spawn(watch_loop(self.shared.clone(), target));
        running.catalogs.insert(dc.to_owned(), Task::new(handle));
        tracing::debug!(datacenter = dc, "Consul catalog watch started");
        true
    }

    /// Spawns a task that reads `/v1/catalog/datacenters` now and then
    /// every `period` into [`HealthView::set_datacenters`], until
    /// shutdown. Failed reads are retried sooner, with backoff.
    pub fn spawn_datacenter_refresh(&self, period: Duration) {
        if self.shared.shutdown.is_cancelled() {
            return;
        }
        let handle = tokio::spawn(refresh_datacenters(self.shared.clone(), period));
        self.shared.running().background.push(handle);
    }

    /// The number of blocking watches running (health and catalog).
    pub fn watch_count(&self) -> usize {
        self.shared.running().watches()
    }

    /// Waits for shutdown, then for every task to end.
    pub async fn stopped(&self) {
        self.shared.shutdown.cancelled().await;
        let handles: Vec<JoinHandle<()>> = {
            let mut running = self.shared.running();
            let running = &mut *running;
            let services = running.services.drain().map(|(_, task)| task.handle);
            let catalogs = running.catalogs.drain().map(|(_, task)| task.handle);
            services
                .chain(catalogs)
                .chain(running.background.drain(..))
                .collect()
        };
        for handle in handles {
            // A task that panicked has logged it; nothing is left to do.
            let _ = handle.await;
        }
    }
}

//------------ Watch loops ----------------------------------------------------

/// What one blocking loop reads and where it stores the answers.
trait Target: Send + Sync + 'static {
    /// What a read returns besides its index.
    type Value: Send;

    /// The datacenter read.
    fn datacenter(&self) -> &str;

    /// The service watched, for logs (`None` for a catalog).
    fn service(&self) -> Option<&str>;

    /// One read at `index` (0: a non-blocking one).
    fn read(
        &self,
        shared: &Shared,
        index: u64,
    ) -> impl Future<Output = Result<(u64, Self::Value), ConsulError>> + Send;

    /// Stores an answer read at `index` if it differs from the view's.
    fn store(&self, shared: &Shared, index: u64, value: Self::Value);

    /// Records whether the last read worked.
    fn outcome(&self, _shared: &Shared, _ok: bool) {}
}

/// The health of one service in one datacenter.
struct ServiceTarget {
    /// The pair.
    key: ServiceKey,
}

impl Target for ServiceTarget {
    type Value = Vec<Instance>;

    fn datacenter(&self) -> &str {
        &self.key.datacenter
    }

    fn service(&self) -> Option<&str> {
        Some(&self.key.service)
    }

    fn read(
        &self,
        shared: &Shared,
        index: u64,
    ) -> impl Future<Output = Result<(u64, Vec<Instance>), ConsulError>> + Send {
        let other_dc = *shared.view.local_datacenter() != self.key.datacenter;
        shared
            .client
            .service_health(&self.key.datacenter, &self.key.service, index, other_dc)
    }

    fn outcome(&self, shared: &Shared, ok: bool) {
        shared.view.set_failing(&self.key, !ok);
    }

    fn store(&self, shared: &Shared, index: u64, instances: Vec<Instance>) {
        let unchanged = match shared.view.service(&self.key.datacenter, &self.key.service) {
            Data::Ready(current) => current.index == index && current.instances == instances,
            Data::Pending => false,
        };
        if unchanged {
            return;
        }
        // Stored only while this task is the pair's watch: stop_service
        // removes it under the same lock, so a stopped watch never writes
        // after stop_service returned.
        let running = shared.running();
        let watching = running.services.get(&self.key).map(|task| task.handle.id());
        if watching.is_some() && watching == tokio::task::try_id() {
            shared
                .view
                .apply_service(&self.key, ServiceHealth { index, instances });
        }
    }
}

/// The service names of one datacenter.
struct CatalogTarget {
    /// The datacenter.
    datacenter: String,
}

impl Target for CatalogTarget {
    type Value = HashSet<String>;

    fn datacenter(&self) -> &str {
        &self.datacenter
    }

    fn service(&self) -> Option<&str> {
        None
    }

    async fn read(
        &self,
        shared: &Shared,
        index: u64,
    ) -> Result<(u64, HashSet<String>), ConsulError> {
        shared
            .client
            .catalog_services(&self.datacenter, index)
            .await
    }

    fn store(&self, shared: &Shared, _index: u64, names: HashSet<String>) {
        let unchanged = matches!(shared.view.catalog(&self.datacenter), Data::Ready(current) if *current == names);
        if !unchanged {
            shared.view.apply_catalog(&self.datacenter, names);
        }
    }
}

/// The prepared queries of the local datacenter.
struct PreparedTarget {
    datacenter: String,
    sink: watch::Sender<Option<Arc<Vec<Definition>>>>,
}

impl Target for PreparedTarget {
    type Value = Vec<Definition>;

    fn datacenter(&self) -> &str {
        &self.datacenter
    }

    fn service(&self) -> Option<&str> {
        None
    }

    async fn read(
        &self,
        shared: &Shared,
        index: u64,
    ) -> Result<(u64, Vec<Definition>), ConsulError> {
        shared
            .client
            .prepared_queries(&self.datacenter, index)
            .await
    }

    fn store(&self, _shared: &Shared, _index: u64, list: Vec<Definition>) {
        self.sink.send_if_modified(|current| {
            if current.as_deref() == Some(&list) {
                return false;
            }
            *current = Some(Arc::new(list));
            true
        });
    }
}

/// Sleeps for `duration` unless `stop` is cancelled first; returns whether
/// the loop should go on.
async fn sleep_unless_stopped(stop: &CancellationToken, duration: Duration) -> bool {
    tokio::select! {
        biased;
        () = stop.cancelled() => false,
        () = tokio::time::sleep(duration) => true,
    }
}

/// A blocking read answered this fast with the index sent did not block.
const NOT_BLOCKING_WITHIN: Duration = Duration::from_millis(50);
/// After this many such answers in a row the loop polls.
const NOT_BLOCKING_AFTER: u32 = 3;
/// The polling period for a server that does not block.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The blocking loop (reference §2): read at the current index, store what
/// changed, follow the index rules; on errors back off and keep the data.
///
/// A plain function returning an `async move` block rather than an `async
/// fn`: thousands of these wait for minutes, and an `async fn` keeps its
/// arguments twice (as passed and as moved into its body).
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would keep its arguments twice"
)]
fn watch_loop<T: Target>(shared: Arc<Shared>, target: T) -> impl Future<Output = ()> + Send {
    async move {
        let stop = &shared.shutdown;
        let mut index = BlockingIndex::new();
        let mut backoff = Backoff::default();
        let mut limit = RateLimit::default();
        let mut errors: u64 = 0;
        // Answers to blocking reads that came back at once with the index
        // sent: a server that does not block is polled instead.
        let mut unblocked: u32 = 0;
        loop {
            let pause = if unblocked >= NOT_BLOCKING_AFTER {
                limit.take(Instant::now()).max(POLL_INTERVAL)
            } else {
                limit.take(Instant::now())
            };
            if !pause.is_zero() && !sleep_unless_stopped(stop, pause).await {
                break;
            }
            let sent = index.get();
            let started = Instant::now();
            let result = tokio::select! {
                biased;
                () = stop.cancelled() => break,
                result = target.read(&shared, sent) => result,
            };
            let kind = if sent > 0 {
                RequestKind::Blocking
            } else {
                RequestKind::Immediate
            };
            shared.metrics.consul_request(
                target.datacenter(),
                kind,
                outcome_of(&result),
                started.elapsed(),
            );
            match result {
                Ok((returned, value)) => {
                    if errors > 0 {
                        tracing::info!(
                            datacenter = target.datacenter(),
                            service = target.service(),
                            errors,
                            "Consul watch recovered"
                        );
                        errors = 0;
                        backoff.reset();
                    }
                    if index.advance(returned) == IndexMove::Reset {
                        tracing::debug!(
                            datacenter = target.datacenter(),
                            service = target.service(),
                            consul_index = returned,
                            sent,
                            "Consul index went backwards; reading afresh"
                        );
                    }
                    if sent > 0 && returned == sent && started.elapsed() < NOT_BLOCKING_WITHIN {
                        unblocked = unblocked.saturating_add(1);
                        if unblocked == NOT_BLOCKING_AFTER {
                            tracing::info!(
                                datacenter = target.datacenter(),
                                service = target.service(),
                                "Consul answers this blocking query at once; polling every {POLL_INTERVAL:?}"
                            );
                        }
                    } else {
                        unblocked = 0;
                    }
                    target.store(&shared, returned.max(1), value);
                    target.outcome(&shared, true);
                }
                Err(error) => {
                    if errors == 0 {
                        tracing::warn!(
                            datacenter = target.datacenter(),
                            service = target.service(),
                            error = %error,
                            "Consul watch failed; keeping the last known data and retrying"
                        );
                    } else {
                        tracing::debug!(datacenter = target.datacenter(), service = target.service(), error = %error, errors, "Consul watch still failing");
                    }
                    errors += 1;
                    target.outcome(&shared, false);
                    index.restart();
                    let delay = backoff.next_delay();
                    tokio::select! {
                        biased;
                        () = stop.cancelled() => break,
                        () = shared.recovered.notified() => backoff.reset(),
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        tracing::trace!(
            datacenter = target.datacenter(),
            service = target.service(),
            "Consul watch ended"
        );
    }
}

/// The `outcome` label of a Consul request's result.
fn outcome_of<T>(result: &Result<T, ConsulError>) -> Outcome {
    match result {
        Ok(_) => Outcome::Ok,
        Err(ConsulError::Timeout { .. }) => Outcome::Timeout,
        Err(_) => Outcome::Error,
    }
}

/// Probes every known datacenter each `period` (see
/// [`Watcher::spawn_reachability_probe`]) until shutdown.
async fn probe_loop(shared: Arc<Shared>, period: Duration) {
    let stop = shared.shutdown.clone();
    let timeout = period * 2;
    loop {
        let tick = tokio::time::sleep(period);
        let mut probes = tokio::task::JoinSet::new();
        let datacenters = shared.view.datacenters();
        // An empty name: the local datacenter is not known yet.
        for dc in datacenters.iter().filter(|dc| !dc.is_empty()).cloned() {
            let client = Arc::clone(&shared.client);
            let metrics = shared.metrics.clone();
            probes.spawn(async move {
                let started = Instant::now();
                let result = client.probe(&dc, timeout).await;
                metrics.consul_request(
                    &dc,
                    RequestKind::Immediate,
                    outcome_of(&result),
                    started.elapsed(),
                );
                (dc, result)
            });
        }
        let mut recovered = false;
        loop {
            let next = tokio::select! {
                biased;
                () = stop.cancelled() => return,
                next = probes.join_next() => next,
            };
            let Some(joined) = next else { break };
            let Ok((dc, result)) = joined else { continue };
            let ok = result.is_ok();
            if shared.view.set_reachable(&dc, ok) {
                if ok {
                    recovered = true;
                    tracing::info!(datacenter = %dc, "Consul answers again; its data is fresh once its watches catch up");
                } else if let Err(error) = result {
                    tracing::warn!(datacenter = %dc, %error, "Consul does not answer; serving its last known data, flagged stale");
                }
            }
        }
        if recovered {
            shared.recovered.notify_waiters();
        }
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            () = tick => {}
        }
    }
}

/// Reads the datacenter list every `period` until shutdown.
async fn refresh_datacenters(shared: Arc<Shared>, period: Duration) {
    let stop = shared.shutdown.clone();
    let mut backoff = Backoff::new(DEFAULT_BACKOFF_MIN, period.max(DEFAULT_BACKOFF_MIN));
    let mut failing = false;
    loop {
        let started = Instant::now();
        let result = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            result = shared.client.datacenters() => result,
        };
        shared.metrics.consul_request(
            &shared.view.local_datacenter(),
            RequestKind::Immediate,
            outcome_of(&result),
            started.elapsed(),
        );
        let pause = match result {
            Ok(datacenters) => {
                if failing {
                    tracing::info!("Consul datacenter list readable again");
                    failing = false;
                    backoff.reset();
                }
                if !datacenters.is_empty() {
                    shared.view.set_datacenters(datacenters);
                }
                period
            }
            Err(error) => {
                let local = shared.view.local_datacenter();
                if !failing {
                    tracing::warn!(datacenter = %local, error = %error, "cannot read Consul's datacenter list; keeping the last one");
                    failing = true;
                }
                backoff.next_delay()
            }
        };
        if !sleep_unless_stopped(&stop, pause).await {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use consul_sim::Sim;

    use super::*;
    use crate::config::{ConsulConfig, DatacenterAddresses};
    use crate::consul::testutil::{self, BOUND, eventually, within};
    use crate::health::CheckStatus;

    /// A federation, a view fed by a watcher, and the shutdown token.
    struct Fixture {
        sim: Sim,
        view: Arc<HealthView>,
        metrics: Metrics,
        shutdown: CancellationToken,
        watcher: Watcher,
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            self.shutdown.cancel();
        }
    }

    async fn fixture(dcs: &[&str], config: impl FnOnce(ConsulConfig) -> ConsulConfig) -> Fixture {
        let sim = Sim::start(dcs).await.unwrap();
        let config = config(testutil::config(&sim, dcs[0]).await);
        let client = Arc::new(ConsulClient::with_env(&config, |_| None).unwrap());
        let view = Arc::new(HealthView::new(dcs[0]));
        let metrics = Metrics::new();
        let shutdown = CancellationToken::new();
        let watcher = Watcher::new(client, view.clone(), metrics.clone(), shutdown.clone());
        Fixture {
            sim,
            view,
            metrics,
            shutdown,
            watcher,
        }
    }

    fn health(view: &HealthView, key: &ServiceKey) -> Option<Arc<ServiceHealth>> {
        match view.service(&key.datacenter, &key.service) {
            Data::Ready(health) => Some(health),
            Data::Pending => None,
        }
    }

    fn status(view: &HealthView, key: &ServiceKey, node: &str) -> Option<CheckStatus> {
        health(view, key)?
            .instances
            .iter()
            .find(|i| i.node.name == node)
            .map(|i| i.status(&[]))
    }

    /// Health reads of `service` received by `dc`'s listener.
    fn reads(sim: &Sim, dc: &str, service: &str) -> Vec<consul_sim::RecordedRequest> {
        let path = format!("/v1/health/service/{service}");
        sim.requests(dc)
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// Waits until a blocking read (index > 0) of `service` has arrived
    /// at `dc` beyond the first `seen` reads.
    async fn blocked(sim: &Sim, dc: &str, service: &str, seen: usize) {
        eventually("the watch is blocked on a real index", BOUND, || {
            reads(sim, dc, service)
                .iter()
                .skip(seen)
                .any(|r| r.param("index").is_some_and(|i| i != "0"))
        })
        .await;
    }

    #[tokio::test]
    async fn a_watch_syncs_the_initial_instances() {
        let f = fixture(&["dc1"], |c| c).await;
        testutil::register(&f.sim, "dc1", "n1", "10.0.0.1", "web", "passing");
        testutil::register(&f.sim, "dc1", "n2", "10.0.0.2", "web", "warning");
        let key = ServiceKey::new("dc1", "web");
        f.sim.hang("dc1", true);
        assert!(f.watcher.ensure_service(&key));
        assert!(!f.watcher.ensure_service(&key), "one watch per pair");
        // The slot exists at once and stays pending until an answer comes.
        assert!(f.view.has_service_slot(&key));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(f.view.service("dc1", "web"), Data::Pending);
        f.sim.hang("dc1", false);
        eventually("initial sync", BOUND, || health(&f.view, &key).is_some()).await;
        let synced = health(&f.view, &key).unwrap();
        assert!(synced.index > 1);
        let mut nodes: Vec<_> = synced
            .instances
            .iter()
            .map(|i| (i.node.name.as_str(), i.lan.v4, i.port))
            .collect();
        nodes.sort();
        assert_eq!(
            nodes,
            [
                ("n1", Some("10.0.0.1".parse().unwrap()), 8080),
                ("n2", Some("10.0.0.2".parse().unwrap()), 8080)
            ]
        );
        assert_eq!(status(&f.view, &key, "n2"), Some(CheckStatus::Warning));
        assert_eq!(f.watcher.watch_count(), 1);
        let first = reads(&f.sim, "dc1", "web");
        assert_eq!(
            first[0].param("index").as_deref(),
            Some("0"),
            "the first read does not block"
        );
        assert!(f.watcher.stop_service(&key));
        assert!(!f.watcher.is_watching(&key));
        assert!(!f.view.has_service_slot(&key));
        assert_eq!(f.watcher.watch_count(), 0);
    }

    #[tokio::test]
    async fn a_stopped_watch_reads_and_stores_nothing_more() {
        let f = fixture(&["dc1"], |c| c).await;
        testutil::register(&f.sim, "dc1", "n1", "10.0.0.1", "web", "passing");
        let key = ServiceKey::new("dc1", "web");
        f.watcher.ensure_service(&key);
        eventually("initial sync and a blocking read", BOUND, || {
            health(&f.view, &key).is_some() && reads(&f.sim, "dc1", "web").len() == 2
        })
        .await;
        assert!(f.watcher.stop_service(&key));
        // A change that would answer the blocking read, were it alive.
        let matched = f
            .sim
            .set_check_status("dc1", Some("n1"), "service:n1", "critical");
        assert_eq!(matched, 1);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            reads(&f.sim, "dc1", "web").len(),
            2,
            "no read after the stop"
        );
        assert!(!f.view.has_service_slot(&key));
        assert!(
            health(&f.view, &key).is_none(),
            "nothing stored after the stop"
        );
        // Started again, it is a new watch that reads afresh.
        f.watcher.ensure_service(&key);
        eventually("synced again", BOUND, || {
            status(&f.view, &key, "n1") == Some(CheckStatus::Critical)
        })
        .await;
    }

    #[tokio::test]
    async fn check_flips_reach_the_view_within_200ms() {
        let f = fixture(&["dc1"], |c| c).await;
        testutil::register(&f.sim, "dc1", "n1", "10.0.0.1", "web", "passing");
        testutil::register(&f.sim, "dc1", "n2", "10.0.0.2", "web", "passing");
        let key = ServiceKey::new("dc1", "web");
        f.watcher.ensure_service(&key);
        eventually("initial sync", BOUND, || {
            health(&f.view, &key).is_some_and(|h| h.instances.len() == 2)
        })
        .await;
        let mut slowest = Duration::ZERO;
        for (round, want) in ["critical", "passing", "warning", "critical", "passing"]
            .into_iter()
            .enumerate()
        {
            let seen = reads(&f.sim, "dc1", "web").len();
            blocked(&f.sim, "dc1", "web", seen.saturating_sub(1)).await;
            let expected = CheckStatus::from_consul(want);
            assert_ne!(
                status(&f.view, &key, "n1"),
                Some(expected),
                "round {round} starts from another status"
            );
            let started = Instant::now();
            assert_eq!(
                f.sim
                    .set_check_status("dc1", Some("n1"), "service:n1", want),
                1
            );
            eventually("the flip reaches the view", BOUND, || {
                status(&f.view, &key, "n1") == Some(expected)
            })
            .await;
            slowest = slowest.max(started.elapsed());
            assert_eq!(status(&f.view, &key, "n2"), Some(CheckStatus::Passing));
        }
        assert!(
            slowest < Duration::from_millis(200),
            "slowest update took {slowest:?}"
        );
        assert_eq!(f.metrics.consul_failures("dc1"), 0);
    }

    #[tokio::test]
    async fn an_index_rewind_resets_the_loop_and_still_converges() {
        let f = fixture(&["dc1"], |c| c).await;
        for i in 0..20 {
            // Push the index well above where the rewind sends it.
            testutil::register(
                &f.sim,
                "dc1",
                &format!("other{i}"),
                "10.9.0.1",
                "other",
                "passing",
            );
        }
        testutil::register(&f.sim, "dc1", "n1", "10.0.0.1", "web", "passing");
        let key = ServiceKey::new("dc1", "web");
        f.watcher.ensure_service(&key);
        eventually("initial sync", BOUND, || health(&f.view, &key).is_some()).await;
        blocked(&f.sim, "dc1", "web", 0).await;
        let before = health(&f.view, &key).unwrap().index;
        assert!(before > 5, "index {before}");
        f.sim.clear_requests(Some("dc1"));
        f.sim.rewind_index("dc1", 2);
        eventually("the rewound index reaches the view", BOUND, || {
            health(&f.view, &key).is_some_and(|h| h.index < before)
        })
        .await;
        // A change after the rewind has an index below the old one: the
        // watch must see it because it restarted from 0.
        testutil::register(&f.sim, "dc1", "n2", "10.0.0.2", "web", "passing");
        eventually("the new instance reaches the view", BOUND, || {
            health(&f.view, &key).is_some_and(|h| h.instances.len() == 2)
        })
        .await;
        let after = health(&f.view, &key).unwrap().index;
        assert!(after < before, "{after} < {before}");
        let indexes: Vec<String> = reads(&f.sim, "dc1", "web")
            .iter()
            .filter_map(|r| r.param("index"))
            .collect();
        assert!(
            indexes.iter().any(|i| i == "0"),
            "no reset to 0 in {indexes:?}"
        );
        assert!(
            !indexes.iter().any(|i| i == &before.to_string()),
            "kept the old index: {indexes:?}"
        );
    }

    #[tokio::test]
    async fn errors_are_counted_and_the_last_snapshot_is_kept_until_recovery() {
        let f = fixture(&["dc1"], |c| c).await;
        testutil::register(&f.sim, "dc1", "n1", "10.0.0.1", "web", "passing");
        let key = ServiceKey::new("dc1", "web");
        f.watcher.ensure_service(&key);
        eventually("initial sync", BOUND, || health(&f.view, &key).is_some()).await;
        blocked(&f.sim, "dc1", "web", 0).await;
        // The blocked read answers the flip; the next four reads fail.
        f.sim
            .fail_next("dc1", 2, 500, None, Some("/v1/health/service/"));
        f.sim
            .fail_next("dc1", 2, 403, None, Some("/v1/health/service/"));
        f.sim
            .set_check_status("dc1", Some("n1"), "service:n1", "critical");
        eventually("the flip reaches the view", BOUND, || {
            status(&f.view, &key, "n1") == Some(CheckStatus::Critical)
        })
        .await;
        let kept = health(&f.view, &key).unwrap();
        eventually("four errors are counted", BOUND, || {
            f.metrics.consul_failures("dc1") == 4
        })
        .await;
        assert!(
            Arc::ptr_eq(&kept, &health(&f.view, &key).unwrap()),
            "the snapshot was kept as it was"
        );
        // Recovered: the next change arrives.
        f.sim
            .set_check_status("dc1", Some("n1"), "service:n1", "passing");
        eventually("recovery", BOUND, || {
            status(&f.view, &key, "n1") == Some(CheckStatus::Passing)
        })
        .await;
        assert_eq!(f.metrics.consul_failures("dc1"), 4);
        assert!(
            f.sim.faults("dc1").fail.is_empty(),
            "every injected failure was used"
        );
    }

    #[tokio::test]
    async fn a_dead_consul_keeps_the_snapshot_and_the_watch_comes_back() {
        let f = fixture(&["dc1"], |c| c).await;
        testutil::register(&f.sim, "dc1", "n1", "10.0.0.1", "web", "passing");
        let key = ServiceKey::new("dc1", "web");
        f.watcher.ensure_service(&key);
        eventually("initial sync", BOUND, || health(&f.view, &key).is_some()).await;
        blocked(&f.sim, "dc1", "web", 0).await;
        f.sim.stop_listener("dc1").await;
        eventually("errors are counted", BOUND, || {
            f.metrics.consul_failures("dc1") >= 2
        })
        .await;
        assert_eq!(
            status(&f.view, &key, "n1"),
            Some(CheckStatus::Passing),
            "data kept while Consul is down"
        );
        f.sim
            .set_check_status("dc1", Some("n1"), "service:n1", "critical");
        f.sim.start_listener("dc1").await.unwrap();
        eventually("the change made while down arrives", BOUND, || {
            status(&f.view, &key, "n1") == Some(CheckStatus::Critical)
        })
        .await;
    }

    #[tokio::test]
    async fn a_running_watch_moves_from_direct_addresses_to_the_agent() {
        let dead = testutil::dead_url();
        let f = fixture(&["dc1", "dc2"], |c| c).await;
        // Rebuild the watcher with direct addresses for dc2.
        let config = ConsulConfig {
            datacenters: vec![DatacenterAddresses {
                name: "dc2".into(),
                addresses: vec![dead, f.sim.url("dc2").await],
            }],
            ..testutil::config(&f.sim, "dc1").await
        };
        let client = Arc::new(ConsulClient::with_env(&config, |_| None).unwrap());
        let watcher = Watcher::new(
            client,
            f.view.clone(),
            f.metrics.clone(),
            f.shutdown.clone(),
        );
        testutil::register(&f.sim, "dc2", "m1", "10.2.0.1", "web", "passing");
        let key = ServiceKey::new("dc2", "web");
        watcher.ensure_service(&key);
        eventually("initial sync from dc2 itself", BOUND, || {
            health(&f.view, &key).is_some()
        })
        .await;
        blocked(&f.sim, "dc2", "web", 0).await;
        assert!(
            reads(&f.sim, "dc1", "web").is_empty(),
            "the agent was not asked"
        );
        f.sim.stop_listener("dc2").await;
        f.sim
            .set_check_status("dc2", Some("m1"), "service:m1", "critical");
        eventually("the change arrives through the agent", BOUND, || {
            status(&f.view, &key, "m1") == Some(CheckStatus::Critical)
        })
        .await;
        let via_agent = reads(&f.sim, "dc1", "web");
        assert!(!via_agent.is_empty());
        assert!(
            via_agent
                .iter()
                .all(|r| r.param("dc").as_deref() == Some("dc2")),
            "{via_agent:?}"
        );
    }

    #[tokio::test]
    async fn catalog_watch_and_datacenter_refresh_feed_the_view() {
        let f = fixture(&["dc1", "dc2"], |c| c).await;
        assert_eq!(*f.view.datacenters(), ["dc1"]);
        f.watcher
            .spawn_datacenter_refresh(Duration::from_millis(50));
        assert!(f.watcher.ensure_catalog("dc2"));
        assert!(!f.watcher.ensure_catalog("dc2"));
        assert_eq!(f.watcher.watch_count(), 1);
        eventually("the datacenter list", BOUND, || {
            *f.view.datacenters() == ["dc1", "dc2"]
        })
        .await;
        let names = |dc: &str| match f.view.catalog(dc) {
            Data::Ready(names) => Some(names),
            Data::Pending => None,
        };
        eventually("the dc2 catalog", BOUND, || {
            names("dc2").is_some_and(|n| n.contains("consul"))
        })
        .await;
        assert!(!names("dc2").unwrap().contains("grafana"));
        testutil::register(&f.sim, "dc2", "m1", "10.2.0.1", "grafana", "passing");
        eventually("a new service", BOUND, || {
            names("dc2").is_some_and(|n| n.contains("grafana"))
        })
        .await;
        assert_eq!(names("dc1"), None, "dc1's catalog is not watched");
    }

    #[tokio::test]
    async fn every_task_stops_promptly_on_shutdown() {
        let f = fixture(&["dc1", "dc2"], |c| ConsulConfig {
            wait: Duration::from_secs(60),
            ..c
        })
        .await;
        testutil::register(&f.sim, "dc1", "n1", "10.0.0.1", "web", "passing");
        f.watcher.ensure_service(&ServiceKey::new("dc1", "web"));
        f.watcher.ensure_service(&ServiceKey::new("dc2", "web"));
        f.watcher.ensure_catalog("dc1");
        f.watcher
            .spawn_datacenter_refresh(Duration::from_secs(3600));
        eventually("the first answers", BOUND, || {
            health(&f.view, &ServiceKey::new("dc1", "web")).is_some()
        })
        .await;
        blocked(&f.sim, "dc1", "web", 0).await;
        // One more watch stuck in backoff against a failing datacenter.
        f.watcher.ensure_service(&ServiceKey::new("nowhere", "web"));
        eventually("the failing watch errs", BOUND, || {
            f.metrics.consul_failures("nowhere") > 0
        })
        .await;
        assert_eq!(f.watcher.watch_count(), 4);
        let started = Instant::now();
        f.shutdown.cancel();
        within(f.watcher.stopped()).await;
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "took {:?}",
            started.elapsed()
        );
        assert_eq!(f.watcher.watch_count(), 0);
        assert!(
            !f.watcher.ensure_service(&ServiceKey::new("dc1", "api")),
            "no new watch after shutdown"
        );
    }

    async fn post_query(sim: &Sim, body: &str) -> String {
        let url = format!("{}/v1/query", sim.url("dc1").await);
        let reply: serde_json::Value = reqwest::Client::new()
            .post(url)
            .body(body.to_owned())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        reply["ID"].as_str().unwrap().to_owned()
    }

    #[tokio::test]
    async fn prepared_query_changes_arrive_within_a_second() {
        let f = fixture(&["dc1"], |c| c).await;
        let (sink, mut listing) = watch::channel(None);
        f.watcher.watch_prepared("dc1", sink);
        within(listing.wait_for(Option::is_some)).await.unwrap();
        assert!(listing.borrow().as_ref().unwrap().is_empty());
        let started = Instant::now();
        let id = post_query(
            &f.sim,
            r#"{"Name":"grafana","Service":{"Service":"grafana","Failover":{"Datacenters":["dc2"]}}}"#,
        )
        .await;
        within(listing.wait_for(|l| l.as_ref().is_some_and(|l| l.len() == 1)))
            .await
            .unwrap();
        let created = started.elapsed();
        assert_eq!(listing.borrow().as_ref().unwrap()[0].name, "grafana");
        let started = Instant::now();
        reqwest::Client::new()
            .delete(format!("{}/v1/query/{id}", f.sim.url("dc1").await))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
        within(listing.wait_for(|l| l.as_ref().is_some_and(|l| l.is_empty())))
            .await
            .unwrap();
        let deleted = started.elapsed();
        assert!(
            created < Duration::from_secs(1) && deleted < Duration::from_secs(1),
            "created after {created:?}, deleted after {deleted:?}"
        );
        // The listing is a blocking watch, not a poll.
        let blocking = f
            .sim
            .requests("dc1")
            .iter()
            .filter(|r| r.path == "/v1/query")
            .any(|r| r.param("index").is_some_and(|i| i != "0") && r.param("wait").is_some());
        assert!(blocking, "GET /v1/query is read with index and wait");
    }

    #[tokio::test]
    async fn on_demand_watches_stop_when_idle_and_pinned_ones_stay() {
        let f = fixture(&["dc1"], |c| c).await;
        let pinned = ServiceKey::new("dc1", "grafana");
        let used = ServiceKey::new("dc1", "loki");
        let idle = ServiceKey::new("dc1", "tempo");
        f.watcher.set_pinned([pinned.clone()].into());
        assert!(f.watcher.demand_service(&used));
        assert!(f.watcher.demand_service(&idle));
        assert_eq!(f.watcher.watch_count(), 3);
        let limit = Duration::from_millis(300);
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            // Answers read `used`: it stays.
            let _ = f.view.service("dc1", "loki");
            f.watcher.stop_idle(limit);
        }
        assert!(
            f.watcher.is_watching(&pinned),
            "pinned watches never idle out"
        );
        assert!(f.watcher.is_watching(&used), "a watch in use stays");
        assert!(!f.watcher.is_watching(&idle), "an unused watch stops");
        assert!(!f.view.has_service_slot(&idle));
        // Unpinned (a reload dropped its query), grafana stops at once;
        // on-demand watches are untouched.
        f.watcher.set_pinned(HashSet::new());
        assert!(!f.watcher.is_watching(&pinned));
        assert!(f.watcher.is_watching(&used));
    }

    #[tokio::test]
    async fn pinned_watches_are_what_the_view_waits_for() {
        let f = fixture(&["dc1"], |c| c).await;
        testutil::register(&f.sim, "dc1", "n1", "10.0.0.1", "web", "passing");
        let web = ServiceKey::new("dc1", "web");
        let api = ServiceKey::new("dc1", "api");
        f.sim.hang("dc1", true);
        f.watcher.set_pinned([web.clone(), api.clone()].into());
        assert_eq!(f.view.pending_required(), [api.clone(), web.clone()]);
        assert!(f.watcher.demand_service(&ServiceKey::new("dc1", "loki")));
        f.sim.hang("dc1", false);
        eventually("the pinned watches sync", BOUND, || {
            f.view.pending_required().is_empty()
        })
        .await;
        // Unpinned, a pair is no longer waited for; pinned again, it is
        // until its new watch answers.
        f.watcher.set_pinned([web.clone()].into());
        assert!(!f.watcher.is_watching(&api));
        f.sim.hang("dc1", true);
        f.watcher.set_pinned([web.clone(), api.clone()].into());
        assert_eq!(f.view.pending_required(), std::slice::from_ref(&api));
        f.sim.hang("dc1", false);
        eventually("the new watch syncs", BOUND, || {
            f.view.pending_required().is_empty()
        })
        .await;
    }

    #[tokio::test]
    async fn the_watch_cap_refuses_on_demand_watches_only() {
        let sim = Sim::start(&["dc1"]).await.unwrap();
        let config = testutil::config(&sim, "dc1").await;
        let client = Arc::new(ConsulClient::with_env(&config, |_| None).unwrap());
        let view = Arc::new(HealthView::new("dc1"));
        let shutdown = CancellationToken::new();
        let _stop = shutdown.clone().drop_guard();
        let watcher = Watcher::new(client, view, Metrics::new(), shutdown).with_max_watches(2);
        assert!(watcher.demand_service(&ServiceKey::new("dc1", "a")));
        assert!(watcher.demand_service(&ServiceKey::new("dc1", "b")));
        assert!(!watcher.demand_service(&ServiceKey::new("dc1", "c")));
        assert!(
            watcher.demand_service(&ServiceKey::new("dc1", "a")),
            "a running watch is fine"
        );
        watcher.set_pinned([ServiceKey::new("dc1", "d")].into());
        assert!(
            watcher.is_watching(&ServiceKey::new("dc1", "d")),
            "pinned watches ignore the cap"
        );
        assert_eq!(watcher.watch_count(), 3);
    }

    /// A server that answers every request at once with index 5 and an
    /// empty list, blocking or not; returns its URL and a request counter.
    async fn non_blocking_server() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let count = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&count);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let seen = Arc::clone(&seen);
                tokio::spawn(async move {
                    let mut buffer = vec![0; 4096];
                    let mut request = Vec::new();
                    while let Ok(n) = stream.read(&mut buffer).await {
                        if n == 0 {
                            return;
                        }
                        request.extend_from_slice(&buffer[..n]);
                        if !request.windows(4).any(|w| w == b"\r\n\r\n") {
                            continue;
                        }
                        request.clear();
                        seen.fetch_add(1, Ordering::SeqCst);
                        let reply = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                                     X-Consul-Index: 5\r\nContent-Length: 2\r\n\r\n[]";
                        if stream.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (url, count)
    }

    #[tokio::test]
    async fn a_server_that_does_not_block_is_polled() {
        let (url, requests) = non_blocking_server().await;
        let config = ConsulConfig {
            address: url,
            wait: Duration::from_secs(2),
            timeout: Duration::from_secs(2),
            ..ConsulConfig::default()
        };
        let client = Arc::new(ConsulClient::with_env(&config, |_| None).unwrap());
        let shutdown = CancellationToken::new();
        let _stop = shutdown.clone().drop_guard();
        let view = Arc::new(HealthView::new("dc1"));
        let watcher = Watcher::new(client, view, Metrics::new(), shutdown);
        let (sink, mut listing) = watch::channel(None);
        watcher.watch_prepared("dc1", sink);
        within(listing.wait_for(Option::is_some)).await.unwrap();
        let window = Duration::from_millis(2500);
        tokio::time::sleep(window).await;
        let count = requests.load(std::sync::atomic::Ordering::SeqCst);
        // The first read, three answered at once, then one a second;
        // without the fallback the rate limit alone allows about 25.
        assert!(
            (4..=8).contains(&count),
            "{count} requests in {window:?} to a server that does not block"
        );
    }
}
