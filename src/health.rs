//! The in-memory view of Consul service health.
//!
//! Each (datacenter, service) pair has its own slot holding an immutable
//! [`ServiceHealth`] snapshot. A watch that sees a change builds a new
//! snapshot and stores it into its slot: readers load whole snapshots
//! without waiting for writers, and an update to one service never
//! rebuilds another. The slots live in a sharded map (readers take a
//! shard's read lock only to clone the slot's `Arc`), so starting the
//! 30,000th watch costs what the first did. The per-datacenter catalogs,
//! few, sit in an immutable map swapped atomically.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use dashmap::DashMap;
use tokio::sync::Notify;

/// The status of one Consul health check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CheckStatus {
    /// `passing`.
    Passing,
    /// `warning`.
    Warning,
    /// `critical`, and every status Consul may add that is not the other two
    /// (maintenance checks are `critical`).
    Critical,
}

impl CheckStatus {
    /// Reads Consul's status string; anything unknown counts as critical.
    pub fn from_consul(status: &str) -> Self {
        match status {
            "passing" => Self::Passing,
            "warning" => Self::Warning,
            _ => Self::Critical,
        }
    }
}

/// One health check of an instance, node-level or service-level.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// `CheckID`.
    pub id: String,
    /// `Status`.
    pub status: CheckStatus,
}

/// The addresses of an instance as seen from one side (LAN or WAN).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Addresses {
    /// The IPv4 address, if any.
    pub v4: Option<Ipv4Addr>,
    /// The IPv6 address, if any.
    pub v6: Option<Ipv6Addr>,
    /// A host name, when the address Consul holds is not an IP.
    pub hostname: Option<Box<str>>,
}

impl Addresses {
    /// Addresses from a plain Consul address plus optional per-family
    /// tagged addresses (`lan_ipv4`/`lan_ipv6` or `wan_ipv4`/`wan_ipv6`).
    /// The tagged address wins for its family (reference §6.4).
    pub fn from_consul(address: &str, tagged_v4: Option<&str>, tagged_v6: Option<&str>) -> Self {
        let mut out = Self::default();
        match address.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => out.v4 = Some(ip),
            Ok(IpAddr::V6(ip)) => out.v6 = Some(ip),
            Err(_) if !address.is_empty() => out.hostname = Some(address.into()),
            Err(_) => {}
        }
        if let Some(Ok(ip)) = tagged_v4.map(str::parse::<Ipv4Addr>) {
            out.v4 = Some(ip);
        }
        if let Some(Ok(ip)) = tagged_v6.map(str::parse::<Ipv6Addr>) {
            out.v6 = Some(ip);
        }
        out
    }

    /// Whether no address at all is known.
    pub fn is_empty(&self) -> bool {
        self.v4.is_none() && self.v6.is_none() && self.hostname.is_none()
    }
}

/// One service instance with its node and checks, as a
/// `/v1/health/service` entry gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    /// The node, shared by every instance on it (see [`NodeInfo`]).
    pub node: Arc<NodeInfo>,
    /// The service ID.
    pub service_id: String,
    /// Addresses clients in the same datacenter use.
    pub lan: Addresses,
    /// Addresses clients in other datacenters use (`wan*` tagged
    /// addresses); empty when none are tagged.
    pub wan: Addresses,
    /// Whether `lan` came from the service's own address (SRV targets then
    /// use the `<hex>.addr` form) rather than the node's.
    pub service_address: bool,
    /// The service port.
    pub port: u16,
    /// The port for other datacenters (the service's `wan` tagged address).
    pub wan_port: Option<u16>,
    /// `Weights.Passing`.
    pub weight_passing: u16,
    /// `Weights.Warning`.
    pub weight_warning: u16,
    /// Service tags.
    pub tags: Vec<String>,
    /// Service metadata.
    pub service_meta: BTreeMap<String, String>,
    /// Node and service checks.
    pub checks: Vec<Check>,
}

impl Instance {
    /// The aggregate status over the checks not ignored: critical if any is
    /// critical, else warning if any warns, else passing (no checks is
    /// passing, as in Consul).
    pub fn status(&self, ignore_check_ids: &[String]) -> CheckStatus {
        self.checks
            .iter()
            .filter(|check| !ignore_check_ids.contains(&check.id))
            .map(|check| check.status)
            .max()
            .unwrap_or(CheckStatus::Passing)
    }
}

/// A test instance: `node` at `address`, port 3000, weights 10/1, a
/// passing `serfHealth` node check and a `service:svc` check in `status`
/// (for the tests and the fuzz target).
pub(crate) fn test_instance(node: &str, address: &str, status: CheckStatus) -> Instance {
    Instance {
        node: Arc::new(NodeInfo {
            name: node.to_owned(),
            lan: Addresses::from_consul(address, None, None),
            wan: Addresses::default(),
            meta: BTreeMap::new(),
        }),
        service_id: "svc".to_owned(),
        lan: Addresses::from_consul(address, None, None),
        wan: Addresses::default(),
        service_address: false,
        port: 3000,
        wan_port: None,
        weight_passing: 10,
        weight_warning: 1,
        tags: vec![],
        service_meta: BTreeMap::new(),
        checks: vec![
            Check {
                id: "serfHealth".to_owned(),
                status: CheckStatus::Passing,
            },
            Check {
                id: "service:svc".to_owned(),
                status,
            },
        ],
    }
}

/// The health of one service in one datacenter at one Consul index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceHealth {
    /// The `X-Consul-Index` this snapshot was read at.
    pub index: u64,
    /// Every registered instance, healthy or not.
    pub instances: Vec<Instance>,
}

/// What the view holds for one piece of data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Data<T> {
    /// Data synced from Consul.
    Ready(T),
    /// Nothing synced yet (no watch, or its first answer has not come).
    Pending,
}

/// The services one datacenter's catalog lists.
pub type Catalog = HashSet<String>;

/// A node as its services' health entries show it: one value shared by
/// every instance on the node (see [`NodeCache`]), and what `<node>.node`
/// answers read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node name as Consul spells it.
    pub name: String,
    /// Its LAN addresses.
    pub lan: Addresses,
    /// Its WAN tagged addresses (empty when none).
    pub wan: Addresses,
    /// Node metadata.
    pub meta: BTreeMap<String, String>,
}

/// Hands out one shared [`NodeInfo`] per node and datacenter, so the
/// instances of a node's many services hold its name, addresses and
/// metadata once (a datacenter has far fewer nodes than instances).
/// Entries of nodes no instance holds any more are swept as the cache
/// grows.
#[derive(Debug, Default)]
pub struct NodeCache {
    /// Datacenter → node name → the shared value.
    nodes: Mutex<NodeMap>,
}

/// The map inside a [`NodeCache`].
#[derive(Debug, Default)]
struct NodeMap {
    /// Datacenter → node name → the shared value.
    by_dc: HashMap<String, HashMap<String, std::sync::Weak<NodeInfo>>>,
    /// Entries in `by_dc`.
    entries: usize,
    /// Entries after the last sweep.
    after_sweep: usize,
}

impl NodeCache {
    /// The shared value equal to each of `nodes` (datacenter `datacenter`),
    /// in order; a node whose data changed gets a new value.
    pub fn share(&self, datacenter: &str, nodes: Vec<NodeInfo>) -> Vec<Arc<NodeInfo>> {
        let mut map = self.nodes.lock().unwrap_or_else(PoisonError::into_inner);
        let map = &mut *map;
        if !map.by_dc.contains_key(datacenter) {
            map.by_dc.insert(datacenter.to_owned(), HashMap::new());
        }
        let known = map.by_dc.get_mut(datacenter).expect("inserted above");
        let mut added = 0;
        let shared = nodes
            .into_iter()
            .map(|node| {
                if let Some(current) = known.get(&node.name).and_then(std::sync::Weak::upgrade)
                    && *current == node
                {
                    return current;
                }
                let name = node.name.clone();
                let node = Arc::new(node);
                if known.insert(name, Arc::downgrade(&node)).is_none() {
                    added += 1;
                }
                node
            })
            .collect();
        map.entries += added;
        // Amortised: a sweep once the map doubled since the last one.
        if map.entries > 2 * map.after_sweep.max(1024) {
            for known in map.by_dc.values_mut() {
                known.retain(|_, node| node.strong_count() > 0);
            }
            map.entries = map.by_dc.values().map(HashMap::len).sum();
            map.after_sweep = map.entries;
        }
        shared
    }

    /// Entries in the cache, live or not yet swept.
    pub fn entries(&self) -> usize {
        self.nodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entries
    }
}

/// How far the view vouches for a pair's data (DESIGN §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// Its Consul answers and its watch is current.
    Fresh,
    /// Its Consul stopped answering (or its watch fails) and the data is
    /// younger than `consul.max_stale`: still used, answers flagged.
    Stale,
    /// Older than that: treated as having no usable instance.
    Unknown,
}

/// What resolution reads: the view, or a fixed map in tests.
pub trait HealthLookup {
    /// The datacenter the resolver treats as local.
    fn local_datacenter(&self) -> Arc<String>;
    /// Every known datacenter, nearest first by RTT, the local one included
    /// (the order of `/v1/catalog/datacenters`).
    fn datacenters(&self) -> Arc<Vec<String>>;
    /// The health of `service` in `datacenter`.
    fn service(&self, datacenter: &str, service: &str) -> Data<Arc<ServiceHealth>>;
    /// The service names `datacenter` has.
    fn catalog(&self, datacenter: &str) -> Data<Arc<Catalog>>;
    /// A node of a watched service in `datacenter`, by case-insensitive
    /// name.
    fn node(&self, datacenter: &str, node: &str) -> Option<Arc<NodeInfo>>;
    /// How current the data of `service` in `datacenter` is.
    fn freshness(&self, datacenter: &str, service: &str) -> Freshness;
    /// Whether `datacenter`'s Consul answered its last probe.
    fn reachable(&self, datacenter: &str) -> bool;
}

/// What an answer read from the view ([`Recording`]).
#[derive(Debug, Default)]
pub(crate) struct Read {
    /// The pairs read, each once.
    pub(crate) services: Vec<ServiceKey>,
    /// Whether it read a node, which a change of any service on it moves.
    pub(crate) node: bool,
    /// Whether any data read was stale (it ages into unusable).
    pub(crate) stale: bool,
}

/// The view, noting what is read from it: the fast path keeps an answer
/// with the pairs it read, and the failover monitor resolves a query
/// again when what it read changes.
pub(crate) struct Recording<'a> {
    view: &'a HealthView,
    read: std::cell::RefCell<Read>,
}

impl<'a> Recording<'a> {
    pub(crate) fn new(view: &'a HealthView) -> Self {
        Self {
            view,
            read: Default::default(),
        }
    }

    /// What was read.
    pub(crate) fn into_read(self) -> Read {
        self.read.into_inner()
    }

    fn service_read(&self, datacenter: &str, service: &str) {
        let mut read = self.read.borrow_mut();
        if !read
            .services
            .iter()
            .any(|key| key.datacenter == datacenter && key.service == service)
        {
            read.services.push(ServiceKey::new(datacenter, service));
        }
    }
}

impl HealthLookup for Recording<'_> {
    fn local_datacenter(&self) -> Arc<String> {
        self.view.local_datacenter()
    }
    fn datacenters(&self) -> Arc<Vec<String>> {
        self.view.datacenters()
    }
    fn service(&self, datacenter: &str, service: &str) -> Data<Arc<ServiceHealth>> {
        self.service_read(datacenter, service);
        self.view.service(datacenter, service)
    }
    fn catalog(&self, datacenter: &str) -> Data<Arc<Catalog>> {
        // A catalog's change is a change of everything.
        self.view.catalog(datacenter)
    }
    fn node(&self, datacenter: &str, node: &str) -> Option<Arc<NodeInfo>> {
        self.read.borrow_mut().node = true;
        self.view.node(datacenter, node)
    }
    fn freshness(&self, datacenter: &str, service: &str) -> Freshness {
        self.service_read(datacenter, service);
        let freshness = self.view.freshness(datacenter, service);
        if freshness == Freshness::Stale {
            self.read.borrow_mut().stale = true;
        }
        freshness
    }
    fn reachable(&self, datacenter: &str) -> bool {
        self.view.reachable(datacenter)
    }
}

/// A (datacenter, service) pair.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// The datacenter.
    pub datacenter: String,
    /// The service name.
    pub service: String,
}

impl ServiceKey {
    /// A key from borrowed names.
    pub fn new(datacenter: &str, service: &str) -> Self {
        Self {
            datacenter: datacenter.to_owned(),
            service: service.to_owned(),
        }
    }
}

type Slot<T> = Arc<ArcSwapOption<T>>;

/// One (datacenter, service) pair: its snapshot and when an answer last
/// read it.
#[derive(Debug)]
struct ServiceSlot {
    data: ArcSwapOption<ServiceHealth>,
    /// Milliseconds since the view's epoch.
    last_used: AtomicU64,
    /// Since when (ms since the epoch, at least 1) its watch fails; 0
    /// while it works.
    failing_since: AtomicU64,
    /// Whether `/ready` waits for the pair (see
    /// [`HealthView::set_required`]); changed under the `required` lock.
    required: AtomicBool,
}

/// A pair's slot, held to mark it used (see [`HealthView::touch`]).
#[derive(Clone, Debug)]
pub struct SlotUse(Arc<ServiceSlot>);

/// The nodes index entry of one node.
#[derive(Debug)]
struct NodeEntry {
    info: Arc<NodeInfo>,
    /// The watched services that have an instance on it.
    services: HashSet<String>,
}

/// The shared, always-current health view.
pub struct HealthView {
    /// Empty until learned from Consul.
    local: ArcSwap<String>,
    datacenters: ArcSwap<Vec<String>>,
    /// One slot per watched pair: a sharded map, so adding the 30,000th
    /// watch costs what the first did.
    services: DashMap<ServiceKey, Arc<ServiceSlot>>,
    catalogs: ArcSwap<HashMap<String, Slot<Catalog>>>,
    /// (datacenter, lower-cased node name) → the node.
    nodes: DashMap<(String, String), NodeEntry>,
    /// Datacenters whose Consul does not answer, and since when (ms since
    /// the epoch).
    unreachable: DashMap<String, u64>,
    /// `consul.max_stale` in milliseconds.
    max_stale_ms: AtomicU64,
    /// Serialises the rare rebuilds of the slot maps.
    grow: Mutex<()>,
    /// The required pairs (see [`HealthView::set_required`]) that have no
    /// data yet, no slot or an empty one. Kept as slots come, fill and go,
    /// so `/ready` costs what the pending pairs cost, not what all do.
    /// Every change of a slot's `required` flag, every slot's first data,
    /// and every slot's creation and removal happen under this lock.
    required: Mutex<BTreeSet<ServiceKey>>,
    changed: Notify,
    /// Counts changes that can alter an answer; answers cached under one
    /// value are reused only while it holds.
    generation: AtomicU64,
    /// What changed since [`HealthView::take_changes`] was last called.
    changes: Mutex<Changes>,
    epoch: Instant,
}

/// What changed in a view since its changes were last taken, so that the
/// failover monitor resolves again only the queries a change can move.
#[derive(Debug, PartialEq, Eq)]
pub struct Changes {
    /// Anything may have changed: reachability, the datacenters, a
    /// catalog, a setting (a new view starts so).
    pub all: bool,
    /// The services (by name, in any datacenter) whose data, slot or
    /// failing state changed; empty when `all` is set.
    pub services: HashSet<String>,
}

impl Default for Changes {
    fn default() -> Self {
        Self {
            all: true,
            services: HashSet::new(),
        }
    }
}

impl std::fmt::Debug for HealthView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthView")
            .field("local", &self.local.load())
            .field("services", &self.services.len())
            .finish_non_exhaustive()
    }
}

impl HealthView {
    /// An empty view for the given local datacenter.
    pub fn new(local: &str) -> Self {
        Self {
            local: ArcSwap::from_pointee(local.to_owned()),
            datacenters: ArcSwap::from_pointee(vec![local.to_owned()]),
            services: DashMap::new(),
            catalogs: ArcSwap::default(),
            nodes: DashMap::new(),
            unreachable: DashMap::new(),
            max_stale_ms: AtomicU64::new(72 * 3600 * 1000),
            grow: Mutex::new(()),
            required: Mutex::new(BTreeSet::new()),
            changed: Notify::new(),
            generation: AtomicU64::new(0),
            changes: Mutex::new(Changes::default()),
            epoch: Instant::now(),
        }
    }

    /// Records a change that may alter any answer: cached answers go,
    /// waiting queries look again.
    fn bump(&self) {
        self.record(None);
    }

    /// Records a change of one service's data in one datacenter: as
    /// [`bump`](Self::bump), but [`take_changes`](Self::take_changes)
    /// names the service instead of saying everything changed.
    fn bump_service(&self, key: &ServiceKey) {
        self.record(Some(&key.service));
    }

    /// Notes a change of `service` (`None`: of anything), moves the
    /// generation and wakes the waiters.
    fn record(&self, service: Option<&String>) {
        {
            let mut changes = self.lock_changes();
            match service {
                None => {
                    changes.all = true;
                    changes.services.clear();
                }
                Some(service) if !changes.all && !changes.services.contains(service) => {
                    changes.services.insert(service.clone());
                }
                Some(_) => {}
            }
        }
        self.generation.fetch_add(1, Ordering::Release);
        self.changed.notify_waiters();
    }

    /// What changed since the last call (the first call: everything).
    /// One reader only, the failover monitor: a second would take the
    /// changes the first has not seen.
    pub fn take_changes(&self) -> Changes {
        std::mem::replace(
            &mut *self.lock_changes(),
            Changes {
                all: false,
                services: HashSet::new(),
            },
        )
    }

    fn lock_changes(&self) -> MutexGuard<'_, Changes> {
        self.changes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The change counter: an answer built after reading a value reflects
    /// the view at least as of that value.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Drops every cached answer: for changes outside the view (a new
    /// resolver or new DNS settings).
    pub fn invalidate_answers(&self) {
        self.bump();
    }

    /// A handle to mark a pair used without looking it up, for answers
    /// reused from a cache.
    pub fn slot_use(&self, key: &ServiceKey) -> Option<SlotUse> {
        self.slot(key).map(SlotUse)
    }

    /// Marks pairs used at `at`, as reading them then would (the caller
    /// reads the time once for a batch of answers).
    pub fn touch(&self, uses: &[SlotUse], at: Instant) {
        if uses.is_empty() {
            return;
        }
        let now = self.ms_at(at);
        for SlotUse(slot) in uses {
            if slot.last_used.load(Ordering::Relaxed) < now {
                slot.last_used.store(now, Ordering::Relaxed);
            }
        }
    }

    fn now_ms(&self) -> u64 {
        self.ms_at(Instant::now())
    }

    /// Milliseconds from the epoch to `at`.
    fn ms_at(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// Sets the local datacenter, once learned from Consul (a view made
    /// with an empty name answers nothing that needs it until then).
    pub fn set_local_datacenter(&self, local: &str) {
        self.local.store(Arc::new(local.to_owned()));
        self.bump();
    }

    /// Replaces the datacenter list (nearest first, local included).
    pub fn set_datacenters(&self, datacenters: Vec<String>) {
        if **self.datacenters.load() != datacenters {
            self.datacenters.store(Arc::new(datacenters));
            self.bump();
        }
    }

    /// Whether a slot exists for the pair (a watch was started for it).
    pub fn has_service_slot(&self, key: &ServiceKey) -> bool {
        self.services.contains_key(key)
    }

    /// Rebuilds one slot map under the writers' lock when `edit` says it
    /// changed it; readers keep the old map until the swap.
    fn rebuild<K: Clone + Eq + std::hash::Hash, V>(
        &self,
        map: &ArcSwap<HashMap<K, Arc<V>>>,
        edit: impl FnOnce(&mut HashMap<K, Arc<V>>) -> bool,
    ) -> bool {
        let _guard = self.grow.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next = HashMap::clone(&map.load());
        let changed = edit(&mut next);
        if changed {
            map.store(Arc::new(next));
        }
        changed
    }

    /// Creates the slot for a pair if it does not exist yet; returns
    /// whether it was created.
    pub fn add_service_slot(&self, key: &ServiceKey) -> bool {
        if self.services.contains_key(key) {
            return false;
        }
        let pending = self.lock_required();
        let mut created = false;
        self.services.entry(key.clone()).or_insert_with(|| {
            created = true;
            Arc::new(ServiceSlot {
                data: ArcSwapOption::empty(),
                last_used: AtomicU64::new(self.now_ms()),
                failing_since: AtomicU64::new(0),
                // A required pair with no slot is pending.
                required: AtomicBool::new(pending.contains(key)),
            })
        });
        created
    }

    /// The required pairs without data, whatever a panicking holder left.
    fn lock_required(&self) -> MutexGuard<'_, BTreeSet<ServiceKey>> {
        self.required.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the pairs `/ready` waits for (the pinned watches), replacing
    /// the previous set; [`pending_required`](Self::pending_required) then
    /// tells which of them have no data yet. Costs a pass over the slots
    /// and the keys; nothing else recomputes the set.
    pub fn set_required(&self, keys: &HashSet<ServiceKey>) {
        let mut pending = self.lock_required();
        for slot in &self.services {
            slot.required
                .store(keys.contains(slot.key()), Ordering::Relaxed);
        }
        pending.retain(|key| keys.contains(key));
        for key in keys {
            let synced = self
                .services
                .get(key)
                .is_some_and(|slot| slot.data.load().is_some());
            if !synced && !pending.contains(key) {
                pending.insert(key.clone());
            }
        }
    }

    /// The required pairs (see [`set_required`](Self::set_required)) that
    /// have no data yet, sorted.
    pub fn pending_required(&self) -> Vec<ServiceKey> {
        self.pending_required_first(usize::MAX).0
    }

    /// The first `limit` of [`pending_required`](Self::pending_required),
    /// and how many there are in all: what a readiness poll needs, at a
    /// cost that does not grow with thousands of pending pairs.
    pub fn pending_required_first(&self, limit: usize) -> (Vec<ServiceKey>, usize) {
        let pending = self.lock_required();
        (pending.iter().take(limit).cloned().collect(), pending.len())
    }

    /// The slot of a pair, out of the map's lock.
    fn slot(&self, key: &ServiceKey) -> Option<Arc<ServiceSlot>> {
        self.services.get(key).map(|slot| Arc::clone(&slot))
    }

    /// Removes a pair's slot (its watch stopped).
    pub fn remove_service_slot(&self, key: &ServiceKey) {
        let removed = {
            let mut pending = self.lock_required();
            let removed = self.services.remove(key).map(|(_, slot)| slot);
            if removed
                .as_ref()
                .is_some_and(|slot| slot.required.load(Ordering::Relaxed))
            {
                pending.insert(key.clone());
            }
            removed
        };
        if let Some(old) = removed.and_then(|slot| slot.data.load_full()) {
            self.index_nodes(key, Some(&old), None);
            self.bump_service(key);
        }
    }

    /// Stores a new snapshot for a pair, creating its slot if needed.
    pub fn apply_service(&self, key: &ServiceKey, health: ServiceHealth) {
        self.add_service_slot(key);
        if let Some(slot) = self.slot(key) {
            let health = Arc::new(health);
            let old = if slot.data.load().is_some() {
                slot.data.swap(Some(Arc::clone(&health)))
            } else {
                // The first data: under the lock, so a required pair stops
                // being pending with it.
                let mut pending = self.lock_required();
                let old = slot.data.swap(Some(Arc::clone(&health)));
                let current = || {
                    self.services
                        .get(key)
                        .is_some_and(|now| Arc::ptr_eq(&now, &slot))
                };
                if old.is_none() && slot.required.load(Ordering::Relaxed) && current() {
                    pending.remove(key);
                }
                old
            };
            self.index_nodes(key, old.as_deref(), Some(&health));
        }
        self.bump_service(key);
    }

    /// Moves the nodes index from a pair's old snapshot to its new one.
    fn index_nodes(
        &self,
        key: &ServiceKey,
        old: Option<&ServiceHealth>,
        new: Option<&ServiceHealth>,
    ) {
        let node_key = |name: &str| (key.datacenter.clone(), name.to_ascii_lowercase());
        let mut kept = HashSet::new();
        for instance in new.map_or(&[][..], |h| &h.instances) {
            let node_key = node_key(&instance.node.name);
            let mut entry = self
                .nodes
                .entry(node_key.clone())
                .or_insert_with(|| NodeEntry {
                    info: Arc::clone(&instance.node),
                    services: HashSet::new(),
                });
            if entry.info != instance.node {
                entry.info = Arc::clone(&instance.node);
            }
            entry.services.insert(key.service.clone());
            kept.insert(node_key);
        }
        for instance in old.map_or(&[][..], |h| &h.instances) {
            let node_key = node_key(&instance.node.name);
            if kept.contains(&node_key) {
                continue;
            }
            if let Some(mut entry) = self.nodes.get_mut(&node_key) {
                entry.services.remove(&key.service);
            }
            self.nodes
                .remove_if(&node_key, |_, entry| entry.services.is_empty());
        }
    }

    /// Sets `consul.max_stale`: how long data stays usable once its
    /// Consul stopped answering.
    pub fn set_max_stale(&self, max_stale: Duration) {
        self.max_stale_ms.store(
            u64::try_from(max_stale.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.bump();
    }

    /// Records a probe of `datacenter`'s Consul; returns whether its
    /// reachability changed.
    pub fn set_reachable(&self, datacenter: &str, reachable: bool) -> bool {
        let changed = if reachable {
            self.unreachable.remove(datacenter).is_some()
        } else if self.unreachable.contains_key(datacenter) {
            false
        } else {
            self.unreachable
                .insert(datacenter.to_owned(), self.now_ms().max(1));
            true
        };
        if changed {
            self.bump();
        }
        changed
    }

    /// Records whether the watch of a pair fails (its data then ages).
    pub fn set_failing(&self, key: &ServiceKey, failing: bool) {
        if let Some(slot) = self.slot(key) {
            let was = slot.failing_since.load(Ordering::Relaxed);
            if !failing && was != 0 {
                slot.failing_since.store(0, Ordering::Relaxed);
                self.bump_service(key);
            } else if failing && was == 0 {
                slot.failing_since
                    .store(self.now_ms().max(1), Ordering::Relaxed);
                self.bump_service(key);
            }
        }
    }

    /// How long ago an answer last read the pair (`None`: no slot).
    pub fn idle_for(&self, key: &ServiceKey) -> Option<Duration> {
        let slot = self.slot(key)?;
        let last = slot.last_used.load(Ordering::Relaxed);
        Some(Duration::from_millis(self.now_ms().saturating_sub(last)))
    }

    /// The number of nodes indexed (for tests and metrics).
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Stores a datacenter's catalog of service names.
    pub fn apply_catalog(&self, datacenter: &str, services: Catalog) {
        if !self.catalogs.load().contains_key(datacenter) {
            self.rebuild(&self.catalogs, |map| {
                if map.contains_key(datacenter) {
                    return false;
                }
                map.insert(datacenter.to_owned(), Slot::default());
                true
            });
        }
        if let Some(slot) = self.catalogs.load().get(datacenter) {
            slot.store(Some(Arc::new(services)));
        }
        self.bump();
    }

    /// Every pair that has a slot, synced or not.
    pub fn service_keys(&self) -> Vec<ServiceKey> {
        self.services
            .iter()
            .map(|entry| entry.key().clone())
            .collect()
    }

    /// How long `datacenter`'s Consul has not answered its probes (`None`
    /// while it answers).
    pub fn unreachable_for(&self, datacenter: &str) -> Option<Duration> {
        let since = *self.unreachable.get(datacenter)?;
        Some(Duration::from_millis(self.now_ms().saturating_sub(since)))
    }

    /// What the metrics gauges show: watched pairs by state, reachability
    /// and data age per datacenter, healthy instances per synced pair. A
    /// scrape calls this; it visits every pair once.
    pub fn observation(&self) -> crate::metrics::Observation {
        let mut seen = crate::metrics::Observation::default();
        for entry in &self.services {
            let key = entry.key();
            let Some(data) = entry.value().data.load_full() else {
                seen.pending += 1;
                continue;
            };
            let failing = entry.value().failing_since.load(Ordering::Relaxed) != 0;
            if failing || self.unreachable.contains_key(&key.datacenter) {
                seen.stale += 1;
            } else {
                seen.synced += 1;
            }
            let healthy = data
                .instances
                .iter()
                .filter(|i| i.status(&[]) != CheckStatus::Critical)
                .count();
            seen.healthy
                .push((key.service.clone(), key.datacenter.clone(), healthy));
        }
        for dc in self.datacenters().iter().filter(|dc| !dc.is_empty()) {
            let down = self.unreachable_for(dc);
            seen.datacenters
                .push((dc.clone(), down.is_none(), down.unwrap_or_default()));
        }
        seen
    }

    /// Waits until the view next changes. Register interest first with
    /// [`HealthView::changed`] to avoid missing a change.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }
}

impl HealthLookup for HealthView {
    fn local_datacenter(&self) -> Arc<String> {
        self.local.load_full()
    }

    fn datacenters(&self) -> Arc<Vec<String>> {
        self.datacenters.load_full()
    }

    fn service(&self, datacenter: &str, service: &str) -> Data<Arc<ServiceHealth>> {
        let key = ServiceKey::new(datacenter, service);
        let Some(slot) = self.slot(&key) else {
            return Data::Pending;
        };
        // Reading marks the pair used; write only when the stamp moved, so
        // hot pairs do not bounce a cache line between cores.
        let now = self.now_ms();
        if slot.last_used.load(Ordering::Relaxed) < now {
            slot.last_used.store(now, Ordering::Relaxed);
        }
        match slot.data.load_full() {
            Some(health) => Data::Ready(health),
            None => Data::Pending,
        }
    }

    fn node(&self, datacenter: &str, node: &str) -> Option<Arc<NodeInfo>> {
        let key = (datacenter.to_owned(), node.to_ascii_lowercase());
        self.nodes.get(&key).map(|entry| Arc::clone(&entry.info))
    }

    fn freshness(&self, datacenter: &str, service: &str) -> Freshness {
        let unreachable = self.unreachable.get(datacenter).map_or(0, |since| *since);
        let failing = self
            .services
            .get(&ServiceKey::new(datacenter, service))
            .map_or(0, |slot| slot.failing_since.load(Ordering::Relaxed));
        // The data was last confirmed when the first of the two began.
        let since = match (unreachable, failing) {
            (0, 0) => return Freshness::Fresh,
            (0, t) | (t, 0) => t,
            (a, b) => a.min(b),
        };
        if self.now_ms().saturating_sub(since) >= self.max_stale_ms.load(Ordering::Relaxed) {
            Freshness::Unknown
        } else {
            Freshness::Stale
        }
    }

    fn reachable(&self, datacenter: &str) -> bool {
        !self.unreachable.contains_key(datacenter)
    }

    fn catalog(&self, datacenter: &str) -> Data<Arc<Catalog>> {
        match self
            .catalogs
            .load()
            .get(datacenter)
            .and_then(|slot| slot.load_full())
        {
            Some(catalog) => Data::Ready(catalog),
            None => Data::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_instances_fit_in_a_kilobyte() {
        // A service's instances are one allocation kept for as long as it
        // is watched. Five (a typical service) in 1,024 bytes stay in the
        // allocator's 1 KiB size class; at 216 bytes each they took the
        // 1,280-byte one, 7.7 MB more at 30,000 watches.
        let size = size_of::<Instance>();
        println!("an instance: {size} bytes");
        assert!(size * 5 <= 1024, "{size} bytes");
    }

    fn node(name: &str, address: &str) -> NodeInfo {
        NodeInfo {
            name: name.to_owned(),
            lan: Addresses::from_consul(address, None, None),
            ..NodeInfo::default()
        }
    }

    #[test]
    fn instances_of_one_node_share_it_until_it_changes() {
        let cache = NodeCache::default();
        let web = cache.share("dc1", vec![node("n1", "10.0.0.1"), node("n2", "10.0.0.2")]);
        let db = cache.share("dc1", vec![node("n1", "10.0.0.1")]);
        assert!(Arc::ptr_eq(&web[0], &db[0]), "one value for n1");
        assert!(!Arc::ptr_eq(&web[0], &web[1]));
        let other_dc = cache.share("dc2", vec![node("n1", "10.0.0.1")]);
        assert!(!Arc::ptr_eq(&web[0], &other_dc[0]), "per datacenter");
        // A changed node is a new value; holders of the old keep theirs.
        let moved = cache.share("dc1", vec![node("n1", "10.0.0.9")]);
        assert!(!Arc::ptr_eq(&moved[0], &web[0]));
        assert_eq!(web[0].lan.v4, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(moved[0].lan.v4, Some(Ipv4Addr::new(10, 0, 0, 9)));
        let again = cache.share("dc1", vec![node("n1", "10.0.0.9")]);
        assert!(Arc::ptr_eq(&moved[0], &again[0]));
    }

    #[test]
    fn nodes_no_instance_holds_are_swept() {
        let cache = NodeCache::default();
        let kept = cache.share("dc1", vec![node("kept", "10.0.0.1")]);
        for round in 0..10 {
            let batch: Vec<NodeInfo> = (0..1000)
                .map(|i| node(&format!("n{round}-{i}"), "10.0.0.2"))
                .collect();
            drop(cache.share("dc1", batch));
        }
        // 10,001 nodes went through; the dropped ones are swept as the
        // map doubles, so it never holds more than twice the floor.
        assert!(
            cache.entries() <= 2 * 1024 + 1000,
            "{} entries",
            cache.entries()
        );
        let again = cache.share("dc1", vec![node("kept", "10.0.0.1")]);
        assert!(
            Arc::ptr_eq(&kept[0], &again[0]),
            "a live node survives sweeps"
        );
    }

    fn check(id: &str, status: CheckStatus) -> Check {
        Check {
            id: id.to_owned(),
            status,
        }
    }

    #[test]
    fn tagged_addresses_win_per_family() {
        let a = Addresses::from_consul("10.0.0.1", Some("10.0.0.2"), Some("fd00::2"));
        assert_eq!(a.v4, Some(Ipv4Addr::new(10, 0, 0, 2)));
        assert_eq!(a.v6, Some("fd00::2".parse().unwrap()));
        assert_eq!(a.hostname, None);
        let h = Addresses::from_consul("grafana.example.com", None, Some("junk"));
        assert_eq!(h.hostname.as_deref(), Some("grafana.example.com"));
        assert_eq!(h.v6, None);
        assert!(Addresses::from_consul("", None, None).is_empty());
    }

    #[test]
    fn status_is_the_worst_check_not_ignored() {
        let mut i = test_instance("n", "10.0.0.1", CheckStatus::Passing);
        i.checks.clear();
        assert_eq!(i.status(&[]), CheckStatus::Passing);
        i.checks = vec![
            check("serfHealth", CheckStatus::Passing),
            check("svc", CheckStatus::Warning),
        ];
        assert_eq!(i.status(&[]), CheckStatus::Warning);
        i.checks.push(check("flaky", CheckStatus::Critical));
        assert_eq!(i.status(&[]), CheckStatus::Critical);
        assert_eq!(i.status(&["flaky".to_owned()]), CheckStatus::Warning);
        assert_eq!(
            CheckStatus::from_consul("maintenance"),
            CheckStatus::Critical
        );
    }

    #[test]
    fn view_slots_hold_snapshots_per_pair() {
        let view = HealthView::new("dc1");
        let key = ServiceKey::new("dc1", "grafana");
        assert_eq!(view.service("dc1", "grafana"), Data::Pending);
        assert!(view.add_service_slot(&key));
        assert!(!view.add_service_slot(&key));
        assert_eq!(view.service("dc1", "grafana"), Data::Pending);
        view.apply_service(
            &key,
            ServiceHealth {
                index: 7,
                instances: vec![],
            },
        );
        let other = ServiceKey::new("dc2", "grafana");
        view.apply_service(
            &other,
            ServiceHealth {
                index: 9,
                instances: vec![],
            },
        );
        match view.service("dc1", "grafana") {
            Data::Ready(h) => assert_eq!(h.index, 7),
            Data::Pending => panic!("dc1 grafana should be synced"),
        }
        assert_eq!(view.catalog("dc1"), Data::Pending);
        view.apply_catalog("dc1", ["grafana".to_owned()].into());
        assert!(matches!(view.catalog("dc1"), Data::Ready(c) if c.contains("grafana")));
        view.remove_service_slot(&key);
        assert_eq!(view.service("dc1", "grafana"), Data::Pending);
        assert_eq!(view.service_keys(), vec![other]);
    }

    #[test]
    fn nodes_index_follows_the_watched_services() {
        let view = HealthView::new("dc1");
        let snapshot = |nodes: &[(&str, &str)]| ServiceHealth {
            index: 1,
            instances: nodes
                .iter()
                .map(|(n, a)| test_instance(n, a, CheckStatus::Passing))
                .collect(),
        };
        let web = ServiceKey::new("dc1", "web");
        let api = ServiceKey::new("dc1", "api");
        view.apply_service(
            &web,
            snapshot(&[("Node-A", "10.0.0.1"), ("node-b", "10.0.0.2")]),
        );
        view.apply_service(&api, snapshot(&[("node-b", "10.0.0.2")]));
        let a = view
            .node("dc1", "node-a")
            .expect("indexed, case-insensitively");
        assert_eq!(a.name, "Node-A");
        assert_eq!(a.lan.v4, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert!(view.node("dc2", "node-a").is_none(), "per datacenter");
        // node-b leaves web but still runs api; node-a is gone with web.
        view.apply_service(&web, snapshot(&[("node-c", "10.0.0.3")]));
        assert!(view.node("dc1", "node-a").is_none());
        assert!(view.node("dc1", "node-b").is_some());
        assert!(view.node("dc1", "node-c").is_some());
        // A moved address is seen.
        view.apply_service(&api, snapshot(&[("node-b", "10.0.0.9")]));
        assert_eq!(
            view.node("dc1", "node-b").unwrap().lan.v4,
            Some(Ipv4Addr::new(10, 0, 0, 9))
        );
        view.remove_service_slot(&api);
        assert!(view.node("dc1", "node-b").is_none());
        assert_eq!(view.node_count(), 1);
    }

    fn keys(pairs: &[(&str, &str)]) -> HashSet<ServiceKey> {
        pairs.iter().map(|(dc, s)| ServiceKey::new(dc, s)).collect()
    }

    /// The required pairs without data, computed the slow way: every
    /// required pair looked up.
    fn pending_by_lookup(view: &HealthView, required: &HashSet<ServiceKey>) -> Vec<ServiceKey> {
        let mut pending: Vec<ServiceKey> = required
            .iter()
            .filter(|k| view.slot(k).is_none_or(|slot| slot.data.load().is_none()))
            .cloned()
            .collect();
        pending.sort();
        pending
    }

    #[test]
    fn required_pairs_stay_pending_until_their_first_data() {
        let view = HealthView::new("dc1");
        let web1 = ServiceKey::new("dc1", "web");
        let web2 = ServiceKey::new("dc2", "web");
        let api1 = ServiceKey::new("dc1", "api");
        assert!(view.pending_required().is_empty());
        // A pair with data before it is required is not pending.
        view.apply_service(&web1, ServiceHealth::default());
        view.add_service_slot(&api1);
        view.set_required(&keys(&[("dc1", "web"), ("dc2", "web"), ("dc1", "api")]));
        assert_eq!(view.pending_required(), [api1.clone(), web2.clone()]);
        // A slot for a required pair without one: still pending, until data.
        view.add_service_slot(&web2);
        assert_eq!(view.pending_required(), [api1.clone(), web2.clone()]);
        view.apply_service(&web2, ServiceHealth::default());
        assert_eq!(view.pending_required(), std::slice::from_ref(&api1));
        // A second snapshot changes nothing.
        view.apply_service(&web2, ServiceHealth::default());
        assert_eq!(view.pending_required(), std::slice::from_ref(&api1));
        view.apply_service(&api1, ServiceHealth::default());
        assert!(view.pending_required().is_empty());
        // A required pair whose slot goes is pending again; a new slot and
        // data bring it back.
        view.remove_service_slot(&web2);
        assert_eq!(view.pending_required(), std::slice::from_ref(&web2));
        view.add_service_slot(&web2);
        view.apply_service(&web2, ServiceHealth::default());
        assert!(view.pending_required().is_empty());
        // Unrequired pairs come and go unseen.
        view.set_required(&keys(&[("dc1", "web")]));
        view.remove_service_slot(&web2);
        view.remove_service_slot(&api1);
        assert!(view.pending_required().is_empty());
        view.set_required(&keys(&[("dc1", "web"), ("dc3", "db")]));
        assert_eq!(view.pending_required(), [ServiceKey::new("dc3", "db")]);
        view.set_required(&HashSet::new());
        assert!(view.pending_required().is_empty());
    }

    #[test]
    fn pending_required_pairs_match_a_lookup_of_each_after_random_changes() {
        let mut rng = fastrand::Rng::with_seed(11);
        let view = HealthView::new("dc1");
        let all: Vec<ServiceKey> = ["dc1", "dc2"]
            .iter()
            .flat_map(|dc| (0..6).map(move |s| ServiceKey::new(dc, &format!("s{s}"))))
            .collect();
        let mut required = HashSet::new();
        for _ in 0..3_000 {
            let key = &all[rng.usize(..all.len())];
            match rng.u8(..8) {
                0 => {
                    required = all.iter().filter(|_| rng.bool()).cloned().collect();
                    view.set_required(&required);
                }
                1 | 2 => {
                    view.add_service_slot(key);
                }
                3 => view.remove_service_slot(key),
                _ => view.apply_service(key, ServiceHealth::default()),
            }
            assert_eq!(view.pending_required(), pending_by_lookup(&view, &required));
        }
    }

    #[test]
    fn first_data_racing_required_changes_leaves_no_pair_pending_wrongly() {
        let view = Arc::new(HealthView::new("dc1"));
        let all: Vec<ServiceKey> = (0..200)
            .map(|s| ServiceKey::new("dc1", &format!("s{s}")))
            .collect();
        let required: HashSet<ServiceKey> = all.iter().cloned().collect();
        for key in &all {
            view.add_service_slot(key);
        }
        std::thread::scope(|scope| {
            let writer = Arc::clone(&view);
            let keys = &all;
            scope.spawn(move || {
                for key in keys {
                    writer.apply_service(key, ServiceHealth::default());
                }
            });
            for _ in 0..50 {
                view.set_required(&HashSet::new());
                view.set_required(&required);
            }
        });
        // Whatever the interleaving, the data that came after the last
        // `set_required` took its pairs out of the pending set.
        assert!(view.pending_required().is_empty());
    }

    #[test]
    fn reading_a_pair_marks_it_used() {
        let view = HealthView::new("dc1");
        let key = ServiceKey::new("dc1", "web");
        assert!(view.idle_for(&key).is_none());
        view.add_service_slot(&key);
        std::thread::sleep(Duration::from_millis(30));
        assert!(view.idle_for(&key).unwrap() >= Duration::from_millis(30));
        let _ = view.service("dc1", "web");
        assert!(view.idle_for(&key).unwrap() < Duration::from_millis(30));
    }

    #[test]
    fn data_goes_stale_then_unknown() {
        let view = HealthView::new("dc1");
        view.set_max_stale(Duration::from_millis(40));
        let key = ServiceKey::new("dc1", "web");
        view.apply_service(&key, ServiceHealth::default());
        assert_eq!(view.freshness("dc1", "web"), Freshness::Fresh);
        assert!(view.set_reachable("dc1", false));
        assert!(
            !view.set_reachable("dc1", false),
            "no change the second time"
        );
        assert!(!view.reachable("dc1"));
        assert_eq!(view.freshness("dc1", "web"), Freshness::Stale);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(view.freshness("dc1", "web"), Freshness::Unknown);
        assert!(view.set_reachable("dc1", true));
        assert_eq!(view.freshness("dc1", "web"), Freshness::Fresh);
        // A failing watch alone ages its own pair only.
        let other = ServiceKey::new("dc1", "api");
        view.apply_service(&other, ServiceHealth::default());
        view.set_failing(&key, true);
        assert_eq!(view.freshness("dc1", "web"), Freshness::Stale);
        assert_eq!(view.freshness("dc1", "api"), Freshness::Fresh);
        view.set_failing(&key, false);
        assert_eq!(view.freshness("dc1", "web"), Freshness::Fresh);
    }
}
