//! The simulated federation: several datacenters, each with its own state
//! store, HTTP listener, leader and faults, and the library API tests use
//! to drive them.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::agent::{Agent, DEFAULT_CHECK_DEREGISTER_INTERVAL_MIN, DEFAULT_CHECK_REAP_INTERVAL};
use crate::http::ClientConnections;
use crate::model::{
    CheckInput, CheckServiceNode, Coordinate, DeregisterRequest, ExecuteResponse, PASSING,
    PreparedQuery, RegisterRequest, ServiceInput, compute_distance,
};
use crate::query::{self, Target};
use crate::store::Store;
use crate::tls::Tls;

/// Consul's error for a DC the servers do not know.
pub const ERR_NO_DC_PATH: &str = "No path to datacenter";
/// Consul's error for a known DC none of whose servers can be reached.
pub const ERR_DC_NOT_AVAILABLE: &str = "Remote DC has no server currently reachable";
/// Consul's error when a DC has no leader and the read is not stale.
pub const ERR_NO_LEADER: &str = "No cluster leader";
/// How many received requests each datacenter remembers.
pub const REQUEST_LOG_CAPACITY: usize = 100_000;
/// The Consul version the simulator reports.
pub const CONSUL_VERSION: &str = "1.20.0";
/// `limits.http_max_conns_per_client`'s default: connections one client IP
/// may have open to an agent's HTTP(S) listener at once.
pub const DEFAULT_HTTP_MAX_CONNS_PER_CLIENT: usize = 200;

/// Locks a mutex, ignoring poisoning: a panicking test thread must not take
/// the whole simulator down with it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

//------------ Faults ---------------------------------------------------------

/// A rule failing the next requests with a fixed answer.
#[derive(Debug, Clone, Serialize)]
pub struct FailRule {
    /// How many more requests this rule answers.
    pub remaining: u32,
    /// The HTTP status to answer with.
    pub status: u16,
    /// The body to answer with.
    pub body: String,
    /// Only requests whose path starts with this are failed (all if `None`).
    pub path_prefix: Option<String>,
}

/// The default body Consul sends with a status, for injected failures.
pub fn default_fault_body(status: u16) -> &'static str {
    match status {
        403 => "ACL not found",
        429 => "rate limit exceeded",
        500 => "rpc error making call: EOF",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "injected fault",
    }
}

/// Faults applied to requests arriving at one datacenter's listener.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Faults {
    /// Fail rules, tried in order.
    pub fail: Vec<FailRule>,
    /// A delay before every answer.
    pub delay: Option<Duration>,
    /// Answers' bodies sent one byte per this interval (a trickling
    /// server or proxy).
    pub trickle: Option<Duration>,
    /// Whether answers are held until the hang is lifted.
    pub hang: bool,
}

/// A request as received by a datacenter's listener.
#[derive(Debug, Clone, Serialize)]
pub struct RecordedRequest {
    /// HTTP method.
    pub method: String,
    /// URL path.
    pub path: String,
    /// Raw query string (empty if none).
    pub query: String,
    /// Headers, in the order received, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The HTTP version it came over: `HTTP/1.1`, or `HTTP/2.0` on an
    /// HTTPS listener when the client negotiated `h2`.
    pub version: String,
    /// The client's address (`ip:port`): requests sharing it came over one
    /// connection.
    pub remote_addr: String,
    /// Milliseconds since the Unix epoch when it arrived.
    pub received_unix_ms: u128,
}

impl RecordedRequest {
    /// The first value of query parameter `name`, if present.
    pub fn param(&self, name: &str) -> Option<String> {
        form_urlencoded::parse(self.query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    /// The value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

//------------ Datacenter -----------------------------------------------------

/// A check update an agent accepted while its cluster had no leader; the
/// agent's anti-entropy applies it once a leader is back.
#[derive(Debug, Clone)]
struct PendingCheckUpdate {
    node: Option<String>,
    check_id: String,
    status: String,
    output: Option<String>,
}

/// The state of one datacenter's HTTP listener.
struct Listener {
    addr: SocketAddr,
    running: Option<(watch::Sender<bool>, JoinHandle<()>)>,
}

/// One simulated datacenter.
pub(crate) struct Datacenter {
    pub(crate) name: String,
    pub(crate) server_node: String,
    pub(crate) server_addr: IpAddr,
    pub(crate) node_id: String,
    store: Mutex<Store>,
    all_changes: watch::Sender<u64>,
    service_changes: Mutex<HashMap<String, watch::Sender<u64>>>,
    abandon: watch::Sender<u64>,
    leader_lost_at: Mutex<Option<Instant>>,
    leader_changes: watch::Sender<u64>,
    pending_checks: Mutex<Vec<PendingCheckUpdate>>,
    partitioned: AtomicBool,
    coordinate: Mutex<Option<Coordinate>>,
    listener: tokio::sync::Mutex<Listener>,
    /// Open connections per client IP, counted against
    /// `http_max_conns_per_client`.
    pub(crate) connections: Arc<ClientConnections>,
    faults: Mutex<Faults>,
    fault_changes: watch::Sender<u64>,
    requests: Mutex<VecDeque<RecordedRequest>>,
    seen_cache_keys: Mutex<std::collections::HashSet<String>>,
    /// The agent answering this listener: its local services and checks.
    pub(crate) agent: Agent,
}

/// What a blocking read waits on: one service's changes, or any change.
pub(crate) enum Topic {
    Service(String),
    Any,
}

impl Datacenter {
    /// Runs a write against the store and wakes the waiters it concerns.
    pub(crate) fn write<R>(&self, f: impl FnOnce(&mut Store) -> R) -> R {
        let (result, changes, index) = {
            let mut store = lock(&self.store);
            let result = f(&mut store);
            (result, store.take_changes(), store.raft_index())
        };
        if changes.any {
            let channels = lock(&self.service_changes);
            for name in &changes.services {
                if let Some(tx) = channels.get(name) {
                    tx.send_replace(index);
                }
            }
        }
        self.all_changes.send_replace(index);
        result
    }

    /// Runs a read and subscribes to the changes that could alter it, under
    /// one lock, so no write can slip between the two.
    pub(crate) fn read<R>(
        &self,
        f: impl FnOnce(&Store) -> (R, Topic),
    ) -> (R, watch::Receiver<u64>) {
        let store = lock(&self.store);
        let (result, topic) = f(&store);
        let rx = match topic {
            Topic::Any => self.all_changes.subscribe(),
            Topic::Service(name) => lock(&self.service_changes)
                .entry(name)
                .or_insert_with(|| watch::channel(0).0)
                .subscribe(),
        };
        (result, rx)
    }

    /// Runs a read with no interest in later changes.
    pub(crate) fn peek<R>(&self, f: impl FnOnce(&Store) -> R) -> R {
        f(&lock(&self.store))
    }

    /// A receiver that fires when the store is abandoned (restored).
    pub(crate) fn abandoned(&self) -> watch::Receiver<u64> {
        self.abandon.subscribe()
    }

    /// `Some(milliseconds since the leader was lost)` when leaderless.
    pub(crate) fn leaderless_for(&self) -> Option<Duration> {
        lock(&self.leader_lost_at).map(|at| at.elapsed())
    }

    pub(crate) fn is_partitioned(&self) -> bool {
        self.partitioned.load(Ordering::SeqCst)
    }

    pub(crate) fn coordinate(&self) -> Option<Coordinate> {
        lock(&self.coordinate).clone()
    }

    pub(crate) fn faults(&self) -> Faults {
        lock(&self.faults).clone()
    }

    pub(crate) fn fault_changes(&self) -> watch::Receiver<u64> {
        self.fault_changes.subscribe()
    }

    fn change_faults(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut lock(&self.faults));
        self.fault_changes.send_modify(|n| *n += 1);
    }

    /// Takes the fail rule that answers a request for `path`, if any.
    pub(crate) fn take_fail_rule(&self, path: &str) -> Option<FailRule> {
        let mut faults = lock(&self.faults);
        let pos = faults.fail.iter().position(|r| {
            r.remaining > 0 && r.path_prefix.as_deref().is_none_or(|p| path.starts_with(p))
        })?;
        let rule = &mut faults.fail[pos];
        rule.remaining -= 1;
        let taken = rule.clone();
        if rule.remaining == 0 {
            faults.fail.remove(pos);
        }
        Some(taken)
    }

    pub(crate) fn record(&self, req: RecordedRequest) {
        let mut log = lock(&self.requests);
        if log.len() >= REQUEST_LOG_CAPACITY {
            log.pop_front();
        }
        log.push_back(req);
    }

    /// Whether a `?cached` read of `key` was answered before (for `X-Cache`).
    pub(crate) fn cache_seen(&self, key: String) -> bool {
        !lock(&self.seen_cache_keys).insert(key)
    }

    /// Applies an agent check update, or queues it while leaderless.
    /// Returns how many checks matched (queued updates count as matched if
    /// the check exists now).
    pub(crate) fn agent_check_update(
        &self,
        node: Option<&str>,
        check_id: &str,
        status: &str,
        output: Option<&str>,
    ) -> usize {
        let exists = self.peek(|s| {
            s.checks()
                .filter(|c| {
                    c.check_id == check_id && node.is_none_or(|n| c.node.eq_ignore_ascii_case(n))
                })
                .count()
        });
        if exists == 0 {
            return 0;
        }
        if self.leaderless_for().is_some() {
            lock(&self.pending_checks).push(PendingCheckUpdate {
                node: node.map(str::to_owned),
                check_id: check_id.to_owned(),
                status: status.to_owned(),
                output: output.map(str::to_owned),
            });
            return exists;
        }
        self.write(|s| s.update_check_status(node, check_id, status, output))
    }
}

//------------ Sim ------------------------------------------------------------

/// A datacenter to create.
#[derive(Debug, Clone)]
pub struct DcSpec {
    /// Datacenter name, e.g. `dc1`.
    pub name: String,
    /// Address of its HTTP listener; port 0 picks a free one.
    pub addr: SocketAddr,
    /// Its servers' WAN coordinate; `None` means unknown (RTT +Inf).
    pub coordinate: Option<Coordinate>,
}

/// Builds a [`Sim`].
#[derive(Debug, Default)]
pub struct SimBuilder {
    dcs: Vec<DcSpec>,
    seed: Vec<RegisterRequest>,
    translate_wan_addrs: bool,
    tls: bool,
    verify_incoming: bool,
    max_conns_per_client: Option<usize>,
    check_reap_interval: Option<Duration>,
    check_deregister_interval_min: Option<Duration>,
}

/// Default spacing of datacenters on the WAN coordinate line: 10 ms.
pub const DEFAULT_DC_SPACING_SECONDS: f64 = 0.010;

impl SimBuilder {
    /// Adds a datacenter listening on `addr`. Unless set otherwise its WAN
    /// coordinate puts it 10 ms further along a line than the previous one.
    pub fn dc(mut self, name: &str, addr: SocketAddr) -> Self {
        let position = self.dcs.len() as f64 * DEFAULT_DC_SPACING_SECONDS;
        self.dcs.push(DcSpec {
            name: name.to_owned(),
            addr,
            coordinate: Some(Coordinate::at(&[position])),
        });
        self
    }

    /// Sets a datacenter's WAN coordinate (`None`: unknown).
    pub fn coordinate(mut self, name: &str, coordinate: Option<Coordinate>) -> Self {
        if let Some(dc) = self.dcs.iter_mut().find(|d| d.name == name) {
            dc.coordinate = coordinate;
        }
        self
    }

    /// Turns on the agents' `translate_wan_addrs`: answers about another
    /// datacenter carry its WAN addresses (reference §6.4), and every
    /// response has `X-Consul-Translate-Addresses: true`.
    pub fn translate_wan_addrs(mut self, on: bool) -> Self {
        self.translate_wan_addrs = on;
        self
    }

    /// Serves every listener over HTTPS, as agents with `ports.https` set
    /// (and `ports.http` off) do: TLS with a certificate from a CA made for
    /// this simulator ([`Sim::ca_pem`]), HTTP/2 negotiated by ALPN, HTTP/1.1
    /// otherwise.
    pub fn tls(mut self, on: bool) -> Self {
        self.tls = on;
        self
    }

    /// With [`tls`](Self::tls), makes the listeners require a client
    /// certificate signed by the simulator's CA, as Consul's
    /// `tls.https.verify_incoming` does ([`Sim::client_cert_pem`] gives
    /// one).
    pub fn verify_incoming(mut self, on: bool) -> Self {
        self.verify_incoming = on;
        self
    }

    /// Sets `limits.http_max_conns_per_client`: how many connections one
    /// client IP may have open to a listener at once
    /// ([`DEFAULT_HTTP_MAX_CONNS_PER_CLIENT`] unless set; 0: no limit).
    /// Connections past it get a `429 Too Many Requests` and are closed.
    pub fn max_conns_per_client(mut self, max: usize) -> Self {
        self.max_conns_per_client = Some(max);
        self
    }

    /// Sets the agents' `check_reap_interval`: how often each looks for
    /// services whose check has been critical past its
    /// `DeregisterCriticalServiceAfter` ([`DEFAULT_CHECK_REAP_INTERVAL`],
    /// 30 s, unless set).
    pub fn check_reap_interval(mut self, interval: Duration) -> Self {
        self.check_reap_interval = Some(interval);
        self
    }

    /// Sets the agents' `check_deregister_interval_min`: shorter
    /// `DeregisterCriticalServiceAfter` values are raised to it
    /// ([`DEFAULT_CHECK_DEREGISTER_INTERVAL_MIN`], 1 min, unless set).
    pub fn check_deregister_interval_min(mut self, min: Duration) -> Self {
        self.check_deregister_interval_min = Some(min);
        self
    }

    /// Registrations applied at start, each in its `Datacenter` (the first
    /// datacenter if unset).
    pub fn seed(mut self, seed: Vec<RegisterRequest>) -> Self {
        self.seed.extend(seed);
        self
    }

    /// Binds every listener and applies the seed.
    pub async fn start(self) -> Result<Sim, String> {
        if self.dcs.is_empty() {
            return Err("at least one datacenter is needed".into());
        }
        let mut dcs = Vec::new();
        // Listeners stay bound from here to serving: releasing a port-0
        // address and binding it again lets a parallel test take it.
        let mut bound = Vec::new();
        for spec in &self.dcs {
            if dcs.iter().any(|d: &Arc<Datacenter>| d.name == spec.name) {
                return Err(format!("datacenter {:?} given twice", spec.name));
            }
            let std_listener = std::net::TcpListener::bind(spec.addr)
                .map_err(|e| format!("{}: cannot listen on {}: {e}", spec.name, spec.addr))?;
            let addr = std_listener
                .local_addr()
                .map_err(|e| format!("{}: {e}", spec.name))?;
            bound.push(std_listener);
            let max_conns = self
                .max_conns_per_client
                .unwrap_or(DEFAULT_HTTP_MAX_CONNS_PER_CLIENT);
            let agent = Agent::new(
                self.check_reap_interval
                    .unwrap_or(DEFAULT_CHECK_REAP_INTERVAL),
                self.check_deregister_interval_min
                    .unwrap_or(DEFAULT_CHECK_DEREGISTER_INTERVAL_MIN),
            );
            dcs.push(Arc::new(new_datacenter(spec, addr, max_conns, agent)));
        }
        let tls = if self.tls {
            let names: Vec<String> = dcs.iter().map(|d| d.name.clone()).collect();
            let ips: Vec<IpAddr> = dcs.iter().map(|d| d.server_addr).collect();
            Some(Tls::generate(&names, &ips, self.verify_incoming)?)
        } else {
            None
        };
        let sim = Sim {
            inner: Arc::new(Inner {
                dcs,
                translate_wan_addrs: self.translate_wan_addrs,
                tls,
                rpc_hold_timeout: Mutex::new(DEFAULT_RPC_HOLD_TIMEOUT),
            }),
        };
        for dc in &sim.inner.dcs {
            let name = dc.name.clone();
            sim.register(&name, server_registration(dc))?;
        }
        let first = sim.inner.dcs[0].name.clone();
        for (i, reg) in self.seed.into_iter().enumerate() {
            let dc = reg
                .datacenter
                .clone()
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| first.clone());
            sim.register(&dc, reg)
                .map_err(|e| format!("seed entry {i} (datacenter {dc}): {e}"))?;
        }
        for dc in &sim.inner.dcs {
            Agent::start_reaper(dc);
        }
        for (dc, listener) in sim.inner.dcs.iter().zip(bound) {
            sim.open_listener(&dc.name, Some(listener)).await?;
        }
        Ok(sim)
    }
}

fn new_datacenter(
    spec: &DcSpec,
    addr: SocketAddr,
    max_conns_per_client: usize,
    agent: Agent,
) -> Datacenter {
    Datacenter {
        name: spec.name.clone(),
        server_node: format!("{}-server-1", spec.name),
        server_addr: addr.ip(),
        node_id: uuid::Uuid::new_v4().to_string(),
        store: Mutex::new(Store::new(&spec.name)),
        all_changes: watch::channel(0).0,
        service_changes: Mutex::new(HashMap::new()),
        abandon: watch::channel(0).0,
        leader_lost_at: Mutex::new(None),
        leader_changes: watch::channel(0).0,
        pending_checks: Mutex::new(Vec::new()),
        partitioned: AtomicBool::new(false),
        coordinate: Mutex::new(spec.coordinate.clone()),
        listener: tokio::sync::Mutex::new(Listener {
            addr,
            running: None,
        }),
        connections: Arc::new(ClientConnections::new(max_conns_per_client)),
        faults: Mutex::new(Faults::default()),
        fault_changes: watch::channel(0).0,
        requests: Mutex::new(VecDeque::new()),
        seen_cache_keys: Mutex::new(Default::default()),
        agent,
    }
}

/// The node part of the catalog registrations a datacenter's agent sends
/// when it syncs (`syncService`/`syncCheck`): its node ID, name, address,
/// tagged addresses and meta, with `SkipNodeUpdate` (the node is in sync).
pub(crate) fn agent_node_registration(dc: &Datacenter) -> RegisterRequest {
    RegisterRequest {
        service: None,
        checks: None,
        skip_node_update: true,
        ..server_registration(dc)
    }
}

/// The registration of a datacenter's server node and its `consul`
/// service, as every Consul cluster has.
fn server_registration(dc: &Datacenter) -> RegisterRequest {
    let ip = dc.server_addr.to_string();
    let tagged = [
        ("lan", &ip),
        ("lan_ipv4", &ip),
        ("wan", &ip),
        ("wan_ipv4", &ip),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.clone()))
    .collect();
    let node_meta = [
        ("consul-network-segment", ""),
        ("consul-version", CONSUL_VERSION),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let service_meta = [
        ("non_voter", "false"),
        ("raft_version", "3"),
        ("read_replica", "false"),
        ("serf_protocol_current", "2"),
        ("serf_protocol_max", "5"),
        ("serf_protocol_min", "1"),
        ("version", CONSUL_VERSION),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    RegisterRequest {
        datacenter: Some(dc.name.clone()),
        id: Some(dc.node_id.clone()),
        node: Some(dc.server_node.clone()),
        address: Some(ip),
        tagged_addresses: Some(tagged),
        node_meta: Some(node_meta),
        service: Some(ServiceInput {
            id: Some("consul".into()),
            service: Some("consul".into()),
            port: Some(8300),
            meta: Some(service_meta),
            ..Default::default()
        }),
        checks: Some(vec![CheckInput {
            check_id: Some("serfHealth".into()),
            name: Some("Serf Health Status".into()),
            status: Some(PASSING.into()),
            output: Some("Agent alive and reachable".into()),
            ..Default::default()
        }]),
        ..Default::default()
    }
}

pub(crate) struct Inner {
    dcs: Vec<Arc<Datacenter>>,
    translate_wan_addrs: bool,
    tls: Option<Tls>,
    rpc_hold_timeout: Mutex<Duration>,
}

/// Consul's `rpc_hold_timeout`: how long a write or non-stale read waits
/// for a leader before failing with `No cluster leader`.
pub const DEFAULT_RPC_HOLD_TIMEOUT: Duration = Duration::from_secs(7);

/// A running simulated federation. Cheap to clone; the listeners stop when
/// the last clone is dropped.
#[derive(Clone)]
pub struct Sim {
    inner: Arc<Inner>,
}

/// A copy of one datacenter's state, for [`Sim::restore`].
#[derive(Clone)]
pub struct Snapshot(Store);

/// Why a request could not be routed to a datacenter: Consul's status and
/// plain-text body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteError {
    /// HTTP status.
    pub status: u16,
    /// Body text.
    pub message: String,
}

impl RouteError {
    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self {
            status: 500,
            message: message.into(),
        }
    }
}

/// Options of a prepared-query execution.
#[derive(Debug, Clone, Default)]
pub struct ExecuteOptions {
    /// `?limit=`: at most this many nodes (0: all).
    pub limit: usize,
    /// `?near=`: node name, `_agent` or `_ip`.
    pub near: String,
    /// The client's IP, for `near=_ip`.
    pub source_ip: Option<IpAddr>,
    /// Whether stale reads are allowed (`?stale`).
    pub stale: bool,
}

impl Sim {
    /// Starts building a federation.
    pub fn builder() -> SimBuilder {
        SimBuilder::default()
    }

    /// Starts datacenters named `names`, each on `127.0.0.1:0`.
    pub async fn start(names: &[&str]) -> Result<Self, String> {
        let mut builder = Self::builder();
        for name in names {
            builder = builder.dc(name, SocketAddr::from(([127, 0, 0, 1], 0)));
        }
        builder.start().await
    }

    pub(crate) fn dc(&self, name: &str) -> Option<&Arc<Datacenter>> {
        self.inner.dcs.iter().find(|d| d.name == name)
    }

    fn dc_or_err(&self, name: &str) -> Result<&Arc<Datacenter>, String> {
        self.dc(name)
            .ok_or_else(|| format!("unknown datacenter {name:?}"))
    }

    pub(crate) fn downgrade(&self) -> Weak<Inner> {
        Arc::downgrade(&self.inner)
    }

    pub(crate) fn upgrade(weak: &Weak<Inner>) -> Option<Self> {
        weak.upgrade().map(|inner| Self { inner })
    }

    /// Whether the agents translate remote-DC addresses to WAN ones.
    pub fn translates_wan_addrs(&self) -> bool {
        self.inner.translate_wan_addrs
    }

    /// Names of all datacenters, in creation order.
    pub fn datacenters(&self) -> Vec<String> {
        self.inner.dcs.iter().map(|d| d.name.clone()).collect()
    }

    /// The address a datacenter's listener is bound to.
    pub async fn addr(&self, dc: &str) -> SocketAddr {
        match self.dc(dc) {
            Some(d) => d.listener.lock().await.addr,
            None => panic!("unknown datacenter {dc:?}"),
        }
    }

    /// `http://ip:port` of a datacenter's listener (`https://` with TLS).
    pub async fn url(&self, dc: &str) -> String {
        let scheme = if self.tls_enabled() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr(dc).await)
    }

    /// Whether the listeners serve HTTPS ([`SimBuilder::tls`]).
    pub fn tls_enabled(&self) -> bool {
        self.inner.tls.is_some()
    }

    /// The PEM of the CA that signed the listeners' certificate, for
    /// clients to trust (`CONSUL_CACERT`); `None` without TLS.
    pub fn ca_pem(&self) -> Option<String> {
        self.inner.tls.as_ref().map(|t| t.ca_pem.clone())
    }

    /// A client certificate and its key (PEM) signed by the simulator's
    /// CA, for listeners with [`SimBuilder::verify_incoming`]; `None`
    /// without TLS.
    pub fn client_cert_pem(&self) -> Option<(String, String)> {
        self.inner.tls.as_ref().map(|t| t.client_pem.clone())
    }

    /// Sets `limits.http_max_conns_per_client` on every listener (0: no
    /// limit), as a config reload does: connections already open stay
    /// open, even past a lowered limit.
    pub fn set_max_conns_per_client(&self, max: usize) {
        for d in &self.inner.dcs {
            d.connections.set_max(max);
        }
    }

    /// Connections now open to `dc`'s listener, all clients together.
    pub fn open_connections(&self, dc: &str) -> usize {
        self.dc(dc).map_or(0, |d| d.connections.open())
    }

    /// How many connections `dc`'s listener has refused with a 429 for
    /// being past `http_max_conns_per_client`.
    pub fn refused_connections(&self, dc: &str) -> u64 {
        self.dc(dc).map_or(0, |d| d.connections.refused())
    }

    /// Name of a datacenter's server node (the agent answering its listener).
    pub fn server_node(&self, dc: &str) -> String {
        self.dc(dc)
            .map(|d| d.server_node.clone())
            .unwrap_or_default()
    }

    //--- Data

    /// Registers into `dc`'s catalog, as `PUT /v1/catalog/register` does.
    pub fn register(&self, dc: &str, req: RegisterRequest) -> Result<(), String> {
        self.dc_or_err(dc)?.write(|s| s.register(&req))
    }

    /// Deregisters from `dc`'s catalog.
    pub fn deregister(&self, dc: &str, req: DeregisterRequest) -> Result<(), String> {
        self.dc_or_err(dc)?.write(|s| s.deregister(&req))
    }

    /// Sets the status of check `check_id` (on `node`, or on every node that
    /// has it). Returns how many checks changed status or matched.
    pub fn set_check_status(
        &self,
        dc: &str,
        node: Option<&str>,
        check_id: &str,
        status: &str,
    ) -> usize {
        match self.dc(dc) {
            Some(d) => d.write(|s| s.update_check_status(node, check_id, status, None)),
            None => 0,
        }
    }

    /// Health of every instance of `service` in `dc`, as the catalog holds it.
    pub fn service_health(&self, dc: &str, service: &str) -> Vec<CheckServiceNode> {
        self.dc(dc)
            .map(|d| d.peek(|s| s.check_service_nodes(service)))
            .unwrap_or_default()
    }

    /// The current Raft index of `dc`.
    pub fn raft_index(&self, dc: &str) -> u64 {
        self.dc(dc).map_or(0, |d| d.peek(Store::raft_index))
    }

    //--- Faults

    /// Closes `dc`'s listener and drops its open connections: new
    /// connections are refused. Its data stays reachable from other DCs.
    pub async fn stop_listener(&self, dc: &str) {
        let Some(d) = self.dc(dc) else { return };
        let mut listener = d.listener.lock().await;
        if let Some((stop, task)) = listener.running.take() {
            stop.send_replace(true);
            let _ = task.await;
        }
    }

    /// Opens `dc`'s listener again on the same address.
    pub async fn start_listener(&self, dc: &str) -> Result<(), String> {
        self.open_listener(dc, None).await
    }

    /// Serves `dc` on `prebound` if given, else binds its address again.
    async fn open_listener(
        &self,
        dc: &str,
        prebound: Option<std::net::TcpListener>,
    ) -> Result<(), String> {
        let d = self.dc_or_err(dc)?.clone();
        let mut listener = d.listener.lock().await;
        if listener.running.is_some() {
            return Ok(());
        }
        let tcp = match prebound {
            Some(std_listener) => std_listener
                .set_nonblocking(true)
                .and_then(|()| TcpListener::from_std(std_listener)),
            None => TcpListener::bind(listener.addr).await,
        }
        .map_err(|e| format!("{dc}: cannot listen on {}: {e}", listener.addr))?;
        listener.addr = tcp.local_addr().map_err(|e| e.to_string())?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(crate::http::serve(
            tcp,
            self.downgrade(),
            d.name.clone(),
            self.inner.tls.as_ref().map(|t| t.acceptor.clone()),
            d.connections.clone(),
            stop_rx,
        ));
        listener.running = Some((stop_tx, task));
        Ok(())
    }

    /// Whether `dc`'s listener is accepting connections.
    pub async fn listener_running(&self, dc: &str) -> bool {
        match self.dc(dc) {
            Some(d) => d.listener.lock().await.running.is_some(),
            None => false,
        }
    }

    /// Cuts `dc` off from the other datacenters (`true`) or heals it:
    /// `?dc=` requests between it and the others fail with a 500, and
    /// prepared-query failover to it fails.
    pub fn partition(&self, dc: &str, cut: bool) {
        if let Some(d) = self.dc(dc) {
            d.partitioned.store(cut, Ordering::SeqCst);
        }
    }

    /// Fails the next `count` requests to `dc`'s listener (only those whose
    /// path starts with `path_prefix`, if given) with `status` and `body`
    /// (Consul's usual text for the status if `None`).
    pub fn fail_next(
        &self,
        dc: &str,
        count: u32,
        status: u16,
        body: Option<&str>,
        path_prefix: Option<&str>,
    ) {
        if let Some(d) = self.dc(dc) {
            d.change_faults(|f| {
                f.fail.push(FailRule {
                    remaining: count,
                    status,
                    body: body.unwrap_or(default_fault_body(status)).to_owned(),
                    path_prefix: path_prefix.map(str::to_owned),
                });
            });
        }
    }

    /// Delays every answer from `dc`'s listener (`None`: no delay).
    pub fn set_delay(&self, dc: &str, delay: Option<Duration>) {
        if let Some(d) = self.dc(dc) {
            d.change_faults(|f| f.delay = delay);
        }
    }

    /// Sends the body of every Consul API answer from `dc`'s listener one
    /// byte per `every`, its head at once (`None`: at once), as a
    /// trickling server or proxy would.
    pub fn trickle(&self, dc: &str, every: Option<Duration>) {
        if let Some(d) = self.dc(dc) {
            d.change_faults(|f| f.trickle = every);
        }
    }

    /// Holds every answer from `dc`'s listener until `hang(dc, false)`.
    pub fn hang(&self, dc: &str, hang: bool) {
        if let Some(d) = self.dc(dc) {
            d.change_faults(|f| f.hang = hang);
        }
    }

    /// Removes every fail rule, delay and hang on `dc`'s listener.
    pub fn clear_faults(&self, dc: &str) {
        if let Some(d) = self.dc(dc) {
            d.change_faults(|f| *f = Faults::default());
        }
    }

    /// The faults now set on `dc`'s listener.
    pub fn faults(&self, dc: &str) -> Faults {
        self.dc(dc).map(|d| d.faults()).unwrap_or_default()
    }

    /// Loses `dc`'s leader: non-stale reads and all writes fail with
    /// `No cluster leader`; stale reads answer with `KnownLeader: false`.
    pub fn lose_leader(&self, dc: &str) {
        if let Some(d) = self.dc(dc) {
            lock(&d.leader_lost_at).get_or_insert_with(Instant::now);
            d.leader_changes.send_modify(|n| *n += 1);
        }
    }

    /// Sets how long writes and non-stale reads wait for a leader before
    /// failing (Consul's `rpc_hold_timeout`, 7 s by default).
    pub fn set_rpc_hold_timeout(&self, timeout: Duration) {
        *lock(&self.inner.rpc_hold_timeout) = timeout;
    }

    /// Waits until `dc` has a leader, at most the RPC hold timeout, as
    /// Consul's `forwardRequestToLeader` does. False if none came.
    pub(crate) async fn await_leader(&self, dc: &Datacenter) -> bool {
        let hold = *lock(&self.inner.rpc_hold_timeout);
        let deadline = tokio::time::Instant::now() + hold;
        let mut changes = dc.leader_changes.subscribe();
        while dc.leaderless_for().is_some() {
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep_until(deadline) => return dc.leaderless_for().is_none(),
            }
        }
        true
    }

    /// Elects a leader again, applies the check updates agents queued, and
    /// lets the agent sync what it could not sync without a leader.
    pub fn regain_leader(&self, dc: &str) {
        let Some(d) = self.dc(dc) else { return };
        *lock(&d.leader_lost_at) = None;
        d.leader_changes.send_modify(|n| *n += 1);
        let pending = std::mem::take(&mut *lock(&d.pending_checks));
        for p in pending {
            d.write(|s| {
                s.update_check_status(
                    p.node.as_deref(),
                    &p.check_id,
                    &p.status,
                    p.output.as_deref(),
                )
            });
        }
        d.agent.sync(d);
    }

    /// A copy of `dc`'s state.
    pub fn snapshot(&self, dc: &str) -> Option<Snapshot> {
        self.dc(dc).map(|d| Snapshot(d.peek(Clone::clone)))
    }

    /// Restores `dc` to `snapshot`, as `consul snapshot restore` does:
    /// indexes go back to the snapshot's and every blocked query returns.
    pub fn restore(&self, dc: &str, snapshot: Snapshot) {
        let Some(d) = self.dc(dc) else { return };
        d.write(|s| *s = snapshot.0);
        d.abandon.send_modify(|n| *n += 1);
    }

    /// Restores `dc` to its current data with every index lowered to `to`
    /// (at least 1): an index rewind, as after restoring a snapshot taken
    /// at index `to`.
    pub fn rewind_index(&self, dc: &str, to: u64) {
        let Some(d) = self.dc(dc) else { return };
        d.write(|s| s.rewind_to(to));
        d.abandon.send_modify(|n| *n += 1);
    }

    /// Sets `dc`'s WAN coordinate (`None`: unknown, RTT +Inf).
    pub fn set_coordinate(&self, dc: &str, coordinate: Option<Coordinate>) {
        if let Some(d) = self.dc(dc) {
            *lock(&d.coordinate) = coordinate;
        }
    }

    /// Requests received by `dc`'s listener, oldest first.
    pub fn requests(&self, dc: &str) -> Vec<RecordedRequest> {
        self.dc(dc)
            .map(|d| lock(&d.requests).iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Forgets the requests recorded for `dc` (all DCs if `None`).
    pub fn clear_requests(&self, dc: Option<&str>) {
        for d in &self.inner.dcs {
            if dc.is_none_or(|n| n == d.name) {
                lock(&d.requests).clear();
            }
        }
    }

    /// A JSON overview of every datacenter, for `GET /_sim/state`.
    pub async fn state(&self) -> serde_json::Value {
        let mut out = Vec::new();
        for d in &self.inner.dcs {
            let listener = d.listener.lock().await;
            out.push(json!({
                "Datacenter": d.name,
                "Address": listener.addr.to_string(),
                "Listening": listener.running.is_some(),
                "Tls": self.tls_enabled(),
                "Connections": {
                    "Open": d.connections.open(),
                    "Refused": d.connections.refused(),
                    "MaxPerClient": d.connections.max(),
                },
                "Partitioned": d.is_partitioned(),
                "Leader": d.leaderless_for().is_none(),
                "RaftIndex": d.peek(Store::raft_index),
                "Coordinate": d.coordinate(),
                "Faults": d.faults(),
            }));
        }
        serde_json::Value::Array(out)
    }

    //--- Routing and federation

    /// Routes a request arriving at `from` to datacenter `target`, as
    /// Consul's RPC forwarding does.
    pub(crate) fn route(&self, from: &str, target: &str) -> Result<Arc<Datacenter>, RouteError> {
        let to = self
            .dc(target)
            .ok_or_else(|| RouteError::internal(ERR_NO_DC_PATH))?;
        if from != target {
            let source_cut = self.dc(from).is_some_and(|d| d.is_partitioned());
            if source_cut || to.is_partitioned() {
                return Err(RouteError::internal(ERR_DC_NOT_AVAILABLE));
            }
        }
        Ok(to.clone())
    }

    /// Datacenter names ordered by median WAN RTT from `from`
    /// (`GetDatacentersByDistance`): `from` first (RTT 0), names sorted
    /// alphabetically, then stably by RTT; unknown coordinates last.
    pub fn datacenters_by_distance(&self, from: &str) -> Vec<String> {
        let origin = self.dc(from).and_then(|d| d.coordinate());
        let mut dcs: Vec<(String, f64)> = self
            .inner
            .dcs
            .iter()
            .map(|d| {
                let rtt = if d.name == from {
                    0.0
                } else {
                    compute_distance(origin.as_ref(), d.coordinate().as_ref())
                };
                (d.name.clone(), rtt)
            })
            .collect();
        dcs.sort_by(|a, b| a.0.cmp(&b.0));
        dcs.sort_by(|a, b| a.1.total_cmp(&b.1));
        dcs.into_iter().map(|(n, _)| n).collect()
    }

    /// Executes a prepared query in datacenter `local` with Consul's
    /// algorithm (reference §5.4). `Ok(None)` means no such query.
    pub async fn execute(
        &self,
        local: &str,
        id_or_name: &str,
        opts: &ExecuteOptions,
    ) -> Result<Option<ExecuteResponse>, RouteError> {
        let dc = self.route(local, local)?;
        if !opts.stale && !self.await_leader(&dc).await {
            return Err(RouteError::internal(ERR_NO_LEADER));
        }
        let Some(query) = dc
            .peek(|s| query::resolve(s, id_or_name))
            .map_err(RouteError::internal)?
        else {
            return Ok(None);
        };
        let mut nodes = dc.peek(|s| {
            let mut nodes = query::select_nodes(&query.service, s);
            fastrand::shuffle(&mut nodes);
            let source = resolve_near(s, &dc, &query, opts);
            if let Some(source) = &source {
                sort_by_distance(s, source, &mut nodes, |n| &n.node.node);
                if let Some(pos) = nodes
                    .iter()
                    .take(10)
                    .position(|n| n.node.node.eq_ignore_ascii_case(source))
                {
                    nodes.swap(0, pos);
                }
            }
            nodes
        });
        if opts.limit > 0 {
            nodes.truncate(opts.limit);
        }
        let mut reply = self.execute_response(&dc, &query, nodes, &dc.name);
        if reply.nodes.is_empty() {
            let nearest: Vec<String> = self
                .datacenters_by_distance(local)
                .into_iter()
                .filter(|n| n != local)
                .collect();
            let mut failovers = 0;
            for target in query::failover_targets(&query.service, &nearest) {
                failovers += 1;
                reply.nodes = Vec::new();
                match target {
                    Target::Datacenter(name) => {
                        match self.execute_remote(local, &name, &query, opts).await {
                            Ok(nodes) => {
                                reply.nodes = nodes;
                                reply.datacenter = name;
                                reply.peer_name = String::new();
                            }
                            Err(_) => continue,
                        }
                    }
                    Target::Peer(peer) => {
                        // No peering in the simulator: nothing is imported.
                        reply.datacenter = String::new();
                        reply.peer_name = peer;
                    }
                }
                if !reply.nodes.is_empty() {
                    break;
                }
            }
            reply.failovers = failovers;
        }
        Ok(Some(reply))
    }

    /// `PreparedQuery.ExecuteRemote`: runs the whole query in `target`,
    /// shuffled and limited, with no further failover.
    async fn execute_remote(
        &self,
        local: &str,
        target: &str,
        query: &PreparedQuery,
        opts: &ExecuteOptions,
    ) -> Result<Vec<CheckServiceNode>, RouteError> {
        let dc = self.route(local, target)?;
        if !opts.stale && !self.await_leader(&dc).await {
            return Err(RouteError::internal(ERR_NO_LEADER));
        }
        let mut nodes = dc.peek(|s| query::select_nodes(&query.service, s));
        fastrand::shuffle(&mut nodes);
        if opts.limit > 0 {
            nodes.truncate(opts.limit);
        }
        Ok(nodes)
    }

    fn execute_response(
        &self,
        dc: &Datacenter,
        query: &PreparedQuery,
        nodes: Vec<CheckServiceNode>,
        datacenter: &str,
    ) -> ExecuteResponse {
        let leaderless = dc.leaderless_for();
        ExecuteResponse {
            service: query.service.service.clone(),
            nodes,
            dns: query.dns.clone(),
            datacenter: datacenter.to_owned(),
            peer_name: query.service.peer.clone(),
            failovers: 0,
            index: 1,
            last_contact: leaderless.map_or(0, |d| d.as_nanos() as i64),
            known_leader: leaderless.is_none(),
            consistency_level: if leaderless.is_some() {
                "stale"
            } else {
                "leader"
            }
            .into(),
            not_modified: false,
            backend: 0,
            results_filtered_by_acls: false,
        }
    }
}

/// The source node of a distance sort: `?near` wins over the query's
/// `Near`; `_agent` is the server node, `_ip` the node whose address is the
/// client's IP. Only nodes in the store count.
fn resolve_near(
    store: &Store,
    dc: &Datacenter,
    query: &PreparedQuery,
    opts: &ExecuteOptions,
) -> Option<String> {
    let near = if opts.near.is_empty() {
        &query.service.near
    } else {
        &opts.near
    };
    let node = match near.as_str() {
        "" => return None,
        "_agent" => dc.server_node.clone(),
        "_ip" => {
            let ip = opts.source_ip?.to_string();
            store.nodes().find(|n| n.address == ip)?.node.clone()
        }
        other => other.to_owned(),
    };
    Some(node)
}

/// Stable-sorts `items` by RTT from `source`'s LAN coordinate, each item's
/// node named by `node_of`; does nothing if the source has none. Nodes
/// without coordinates go last.
pub(crate) fn sort_by_distance<T>(
    store: &Store,
    source: &str,
    items: &mut [T],
    node_of: impl Fn(&T) -> &str,
) {
    let Some(origin) = store.coordinate(source) else {
        return;
    };
    items.sort_by(|a, b| {
        let da = compute_distance(Some(origin), store.coordinate(node_of(a)));
        let db = compute_distance(Some(origin), store.coordinate(node_of(b)));
        da.total_cmp(&db)
    });
}

/// Picks an address as `translateAddressAccept` does for HTTP answers
/// (any family accepted): the IPv6 tagged address, else the IPv4 one, else
/// the default.
fn pick_address(default: &str, v4: &str, v6: &str) -> String {
    [v6, v4, default]
        .into_iter()
        .find(|a| !a.is_empty())
        .unwrap_or_default()
        .to_owned()
}

/// Rewrites an instance seen from another datacenter to its WAN addresses
/// (`TranslateAddresses` in `agent/translate_addr.go`): node `wan`,
/// `wan_ipv4`, `wan_ipv6`; service `wan`, `wan_ipv4`, `wan_ipv6`, and the
/// `wan` port if non-zero.
pub(crate) fn translate_to_wan(node: &mut crate::model::Node, svc: &mut crate::model::NodeService) {
    let tagged = node.tagged_addresses.clone().unwrap_or_default();
    let get = |k: &str| tagged.get(k).cloned().unwrap_or_default();
    let wan = get("wan");
    let default = if wan.is_empty() {
        node.address.clone()
    } else {
        wan
    };
    node.address = pick_address(&default, &get("wan_ipv4"), &get("wan_ipv6"));
    let sget = |k: &str| {
        svc.tagged_addresses
            .get(k)
            .map(|a| a.address.clone())
            .unwrap_or_default()
    };
    let wan = sget("wan");
    let default = if wan.is_empty() {
        svc.address.clone()
    } else {
        wan
    };
    svc.address = pick_address(&default, &sget("wan_ipv4"), &sget("wan_ipv6"));
    if let Some(port) = svc
        .tagged_addresses
        .get("wan")
        .map(|a| a.port)
        .filter(|p| *p != 0)
    {
        svc.port = port;
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}
