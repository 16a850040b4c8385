//! The agent behind each datacenter's listener: a server agent whose node
//! is the datacenter's server node. Services registered through its
//! `/v1/agent/service/register` live in its local state (`agent/local`)
//! and are synced to its datacenter's catalog the way Consul's
//! anti-entropy does it, checks included; the agent runs their HTTP, TCP
//! and TTL checks itself and reaps services whose check stays critical
//! past `DeregisterCriticalServiceAfter`.
//!
//! Sync (`State.SyncChanges`): each out-of-sync service is registered with
//! its out-of-sync checks in one catalog write, then each other
//! out-of-sync check with its service; deleted services and checks are
//! deregistered. It runs inside the request that changed something, and
//! whenever a check changes status. An output-only change is kept locally
//! and synced `check_update_interval` (5 min) later, at half that plus a
//! random stagger, as Consul defers it. Without a leader nothing syncs;
//! what is out of sync is sent when a leader is back
//! ([`Sim::regain_leader`](crate::Sim::regain_leader)), where Consul's
//! anti-entropy would retry within its interval.
//!
//! Not modelled: ACLs and tokens; Connect (sidecars, proxies, gateways);
//! gRPC, H2PING, UDP, OSService and alias checks, which are registered but
//! never run (they keep their initial status); `/v1/agent/checks` and
//! check registration on its own; the periodic full anti-entropy sync
//! (a catalog change made behind the agent's back, such as
//! [`Sim::set_check_status`](crate::Sim::set_check_status) or a snapshot
//! restore, is not reverted).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use tokio::sync::{Notify, watch};

use crate::checks::{
    AbortOnDrop, DEFAULT_CHECK_OUTPUT_MAX_SIZE, DEFAULT_CHECK_TIMEOUT, HttpProbe,
    MIN_CHECK_INTERVAL, Outcome, random_stagger, tcp_probe,
};
use crate::definition::{CheckType, Refusal, ServiceDefinition, ip_family_is_v4};
use crate::duration::format_go_duration;
use crate::model::{
    CRITICAL, CheckInput, DeregisterRequest, RegisterRequest, ServiceAddress, ServiceInput,
    StringMap, Weights,
};
use crate::sim::{Datacenter, agent_node_registration, lock};

/// `check_reap_interval`: how often the agent looks for services to reap.
pub const DEFAULT_CHECK_REAP_INTERVAL: Duration = Duration::from_secs(30);
/// `check_deregister_interval_min`: the shortest
/// `DeregisterCriticalServiceAfter` honoured; shorter ones are raised.
pub const DEFAULT_CHECK_DEREGISTER_INTERVAL_MIN: Duration = Duration::from_secs(60);
/// `check_update_interval`: how long an output-only check change may wait
/// before it is synced.
pub const CHECK_UPDATE_INTERVAL: Duration = Duration::from_secs(300);

/// A service in the agent's local state (`structs.NodeService` after
/// `validateService` and the tagged-address defaults).
#[derive(Debug, Clone)]
struct LocalService {
    id: String,
    name: String,
    tags: Option<Vec<String>>,
    meta: Option<StringMap>,
    port: u16,
    address: String,
    socket_path: String,
    tagged_addresses: BTreeMap<String, ServiceAddress>,
    weights: Weights,
    enable_tag_override: bool,
    in_sync: bool,
}

impl LocalService {
    /// `NodeService()` plus `validateService`'s and `addServiceInternal`'s
    /// defaults: ID from the name, weights 1/1, and `lan_ipv4`/`wan_ipv4`
    /// (or the IPv6 pair) from an IP `Address` unless given.
    fn new(def: &ServiceDefinition) -> Self {
        let id = if def.id.is_empty() {
            def.name.clone()
        } else {
            def.id.clone()
        };
        let port = u16::try_from(def.port).unwrap_or_default();
        let mut tagged: BTreeMap<String, ServiceAddress> = def
            .tagged_addresses
            .iter()
            .flatten()
            .map(|(key, a)| {
                let addr = ServiceAddress {
                    address: a.address.clone(),
                    port: u16::try_from(a.port).unwrap_or_default(),
                };
                (key.clone(), addr)
            })
            .collect();
        let defaults: &[&str] = match ip_family_is_v4(&def.address) {
            Some(true) => &["lan_ipv4", "wan_ipv4"],
            Some(false) => &["lan_ipv6", "wan_ipv6"],
            None => &[],
        };
        for key in defaults {
            tagged
                .entry((*key).to_owned())
                .or_insert_with(|| ServiceAddress {
                    address: def.address.clone(),
                    port,
                });
        }
        let weights = def.weights.map_or(
            Weights {
                passing: 1,
                warning: 1,
            },
            |w| Weights {
                passing: w.passing,
                warning: w.warning,
            },
        );
        Self {
            id,
            name: def.name.clone(),
            tags: def.tags.clone(),
            meta: def.meta.clone(),
            port,
            address: def.address.clone(),
            socket_path: def.socket_path.clone(),
            tagged_addresses: tagged,
            weights,
            enable_tag_override: def.enable_tag_override,
            in_sync: false,
        }
    }

    fn to_input(&self) -> ServiceInput {
        ServiceInput {
            id: Some(self.id.clone()),
            service: Some(self.name.clone()),
            tags: self.tags.clone(),
            address: Some(self.address.clone()),
            tagged_addresses: Some(self.tagged_addresses.clone()),
            meta: self.meta.clone(),
            port: Some(self.port),
            socket_path: (!self.socket_path.is_empty()).then(|| self.socket_path.clone()),
            weights: Some(self.weights),
            enable_tag_override: Some(self.enable_tag_override),
            ..Default::default()
        }
    }

    /// `buildAgentService`: the `api.AgentService` JSON, with Go's field
    /// order and `omitempty`s; `ContentHash` only if given.
    fn view(&self, datacenter: &str, content_hash: Option<&str>) -> Value {
        let mut m = Map::new();
        m.insert("ID".into(), json!(self.id));
        m.insert("Service".into(), json!(self.name));
        m.insert("Tags".into(), json!(self.tags.clone().unwrap_or_default()));
        m.insert("Meta".into(), json!(self.meta.clone().unwrap_or_default()));
        m.insert("Port".into(), json!(self.port));
        m.insert("Address".into(), json!(self.address));
        if !self.socket_path.is_empty() {
            m.insert("SocketPath".into(), json!(self.socket_path));
        }
        if !self.tagged_addresses.is_empty() {
            m.insert("TaggedAddresses".into(), json!(self.tagged_addresses));
        }
        m.insert("Weights".into(), json!(self.weights));
        m.insert("EnableTagOverride".into(), json!(self.enable_tag_override));
        if let Some(hash) = content_hash {
            m.insert("ContentHash".into(), json!(hash));
        }
        m.insert("Datacenter".into(), json!(datacenter));
        Value::Object(m)
    }
}

/// A content hash in Consul's format (`%x` of a 64-bit hash). Consul
/// hashes the struct with `hashstructure`; this is FNV-1a over the JSON,
/// so it changes when the service does but is not Consul's value.
fn content_hash(view: &Value) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in view.to_string().bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:x}")
}

/// The part of a check the agent syncs to the catalog
/// (`structs.HealthCheck`).
#[derive(Debug, Clone, PartialEq)]
struct CheckRecord {
    check_id: String,
    name: String,
    status: String,
    notes: String,
    output: String,
    service_id: String,
    kind: String,
    interval: String,
    timeout: String,
}

impl CheckRecord {
    fn to_input(&self, node: &str) -> CheckInput {
        CheckInput {
            node: Some(node.to_owned()),
            check_id: Some(self.check_id.clone()),
            name: Some(self.name.clone()),
            status: Some(self.status.clone()),
            notes: Some(self.notes.clone()),
            output: Some(self.output.clone()),
            service_id: Some(self.service_id.clone()),
            kind: Some(self.kind.clone()),
            interval: Some(self.interval.clone()),
            timeout: Some(self.timeout.clone()),
            ..Default::default()
        }
    }
}

/// `checks.StatusHandler`: results pass only once they reach the
/// `SuccessBeforePassing` / `FailuresBefore*` thresholds.
#[derive(Debug)]
struct StatusHandler {
    success_before_passing: i64,
    failures_before_warning: i64,
    failures_before_critical: i64,
    successes: i64,
    failures: i64,
}

impl StatusHandler {
    fn new(c: &CheckType) -> Self {
        let failures_before_warning = if c.failures_before_warning == 0 {
            c.failures_before_critical
        } else {
            c.failures_before_warning
        };
        Self {
            success_before_passing: c.success_before_passing,
            failures_before_warning,
            failures_before_critical: c.failures_before_critical,
            successes: 0,
            failures: 0,
        }
    }

    /// `updateCheck`: the status to record for a result, if any. Passing
    /// and warning count as successes; failures below the critical
    /// threshold but at the warning one are recorded as warning.
    fn judge(&mut self, status: &str) -> Option<String> {
        if status == crate::model::PASSING || status == crate::model::WARNING {
            self.successes += 1;
            self.failures = 0;
            (self.successes >= self.success_before_passing).then(|| status.to_owned())
        } else {
            self.failures += 1;
            self.successes = 0;
            if self.failures >= self.failures_before_critical {
                Some(status.to_owned())
            } else if self.failures >= self.failures_before_warning {
                Some(crate::model::WARNING.to_owned())
            } else {
                None
            }
        }
    }
}

/// A TTL check's timer state (`CheckTTL`).
#[derive(Debug)]
struct TtlState {
    /// Restarts the TTL timer.
    reset: Arc<Notify>,
    /// The last output set, quoted when the TTL expires.
    last_output: String,
}

/// A check in the agent's local state, with what runs it.
#[derive(Debug)]
struct LocalCheck {
    record: CheckRecord,
    in_sync: bool,
    /// Distinguishes this registration of the check ID from earlier ones,
    /// so a runner of a replaced check never reports.
    generation: u64,
    /// Since when the check is critical (`CriticalTime`): set by the first
    /// critical update, not by registration.
    critical_since: Option<Instant>,
    /// `DeregisterCriticalServiceAfter`, raised to the minimum.
    reap_after: Option<Duration>,
    handler: StatusHandler,
    output_max_size: usize,
    ttl: Option<TtlState>,
    /// The HTTP/TCP/TTL task, held only to be dropped: that stops it.
    _runner: Option<AbortOnDrop>,
    /// The pending deferred sync of an output-only change.
    deferred: Option<AbortOnDrop>,
}

/// What a local check update changed (`State.UpdateCheck`).
enum Change {
    Nothing,
    Output,
    Status,
}

impl LocalCheck {
    /// `State.UpdateCheck`: tracks the critical time; an identical update
    /// does nothing, an output-only one is deferred, a status change marks
    /// the check out of sync.
    fn update(&mut self, status: &str, output: &str) -> Change {
        if status == CRITICAL {
            self.critical_since.get_or_insert_with(Instant::now);
        } else {
            self.critical_since = None;
        }
        if self.record.status == status && self.record.output == output {
            return Change::Nothing;
        }
        self.record.output = output.to_owned();
        if self.record.status == status {
            return Change::Output;
        }
        self.record.status = status.to_owned();
        self.in_sync = false;
        Change::Status
    }

    fn synced(&mut self) {
        self.in_sync = true;
        self.deferred = None;
    }
}

/// The agent's local state (`local.State`).
#[derive(Debug, Default)]
struct LocalState {
    services: BTreeMap<String, LocalService>,
    checks: BTreeMap<String, LocalCheck>,
    /// Services removed locally and not yet from the catalog.
    deleted_services: BTreeSet<String>,
    /// Checks removed locally (not with their service) and not yet from
    /// the catalog.
    deleted_checks: BTreeSet<String>,
    next_generation: u64,
}

impl LocalState {
    /// Removes a service and its checks (stopping their runners); false if
    /// there is no such service.
    fn remove_service(&mut self, id: &str) -> bool {
        if self.services.remove(id).is_none() {
            return false;
        }
        self.deleted_services.insert(id.to_owned());
        self.checks.retain(|_, c| c.record.service_id != id);
        true
    }
}

/// One datacenter's agent.
#[derive(Debug)]
pub(crate) struct Agent {
    state: Mutex<LocalState>,
    /// Bumped on every change to the local services, for `?hash=` reads.
    service_changes: watch::Sender<u64>,
    reap_interval: Duration,
    deregister_interval_min: Duration,
    reaper: Mutex<Option<AbortOnDrop>>,
}

impl Agent {
    /// An agent with nothing registered, reaping every `reap_interval`
    /// and honouring `DeregisterCriticalServiceAfter` from
    /// `deregister_interval_min` up.
    pub(crate) fn new(reap_interval: Duration, deregister_interval_min: Duration) -> Self {
        Self {
            state: Mutex::new(LocalState::default()),
            service_changes: watch::channel(0).0,
            reap_interval,
            deregister_interval_min,
            reaper: Mutex::new(None),
        }
    }

    /// Starts the reaper (`reapServices`) of `dc`'s agent. It stops with
    /// the simulator.
    pub(crate) fn start_reaper(dc: &Arc<Datacenter>) {
        let weak = Arc::downgrade(dc);
        let interval = dc.agent.reap_interval;
        let task = AbortOnDrop::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(dc) = weak.upgrade() else { return };
                dc.agent.reap(&dc);
            }
        });
        *lock(&dc.agent.reaper) = Some(task);
    }

    /// `AgentRegisterService` after decoding: validates `def`, adds the
    /// service and its checks to the local state (an existing check ID
    /// keeps its status and output; with `replace_existing_checks` the
    /// service's other checks go), starts the checks and syncs.
    pub(crate) fn register(
        dc: &Arc<Datacenter>,
        def: &ServiceDefinition,
        replace_existing_checks: bool,
    ) -> Result<(), Refusal> {
        let check_types = def.validate()?;
        let agent = &dc.agent;
        let service = LocalService::new(def);
        let service_id = service.id.clone();
        let mut st = lock(&agent.state);
        let existing: Vec<String> = st
            .checks
            .iter()
            .filter(|(_, c)| c.record.service_id == service_id)
            .map(|(id, _)| id.clone())
            .collect();
        let several = check_types.len() > 1;
        let mut records = Vec::new();
        for (i, ct) in check_types.iter().enumerate() {
            let check_id = match (ct.check_id.is_empty(), several) {
                (false, _) => ct.check_id.clone(),
                (true, false) => format!("service:{service_id}"),
                (true, true) => format!("service:{service_id}:{}", i + 1),
            };
            let (status, output) = match st.checks.get(&check_id) {
                // The snapshot of the agent's checks (`checkStateSnapshot`).
                Some(prev) => (prev.record.status.clone(), prev.record.output.clone()),
                None if ct.status.is_empty() => (CRITICAL.to_owned(), String::new()),
                None => (ct.status.clone(), String::new()),
            };
            let name = if ct.name.is_empty() {
                format!("Service '{}' check", service.name)
            } else {
                ct.name.clone()
            };
            let every = |nanos: i64| {
                if nanos == 0 {
                    String::new()
                } else {
                    format_go_duration(nanos)
                }
            };
            let record = CheckRecord {
                check_id,
                name,
                status,
                notes: ct.notes.clone(),
                output,
                service_id: service_id.clone(),
                kind: ct.kind().to_owned(),
                interval: every(ct.interval),
                timeout: every(ct.timeout),
            };
            records.push((record, ct));
        }
        st.deleted_services.remove(&service_id);
        st.services.insert(service_id.clone(), service);
        let mut kept = BTreeSet::new();
        for (record, ct) in records {
            st.next_generation += 1;
            let generation = st.next_generation;
            let output_max_size = match usize::try_from(ct.output_max_size) {
                Ok(n) if n > 0 && n < DEFAULT_CHECK_OUTPUT_MAX_SIZE => n,
                _ => DEFAULT_CHECK_OUTPUT_MAX_SIZE,
            };
            let (runner, ttl) = start_runner(dc, &record.check_id, generation, ct, output_max_size);
            let reap_after = u64::try_from(ct.deregister_critical_service_after)
                .ok()
                .filter(|n| *n > 0)
                .map(|n| Duration::from_nanos(n).max(agent.deregister_interval_min));
            let id = record.check_id.clone();
            st.deleted_checks.remove(&id);
            kept.insert(id.clone());
            // Replacing a check drops (and so stops) its old runner.
            st.checks.insert(
                id,
                LocalCheck {
                    record,
                    in_sync: false,
                    generation,
                    critical_since: None,
                    reap_after,
                    handler: StatusHandler::new(ct),
                    output_max_size,
                    ttl,
                    _runner: runner,
                    deferred: None,
                },
            );
        }
        if replace_existing_checks {
            for id in existing.into_iter().filter(|id| !kept.contains(id)) {
                st.checks.remove(&id);
                st.deleted_checks.insert(id);
            }
        }
        agent.service_changes.send_modify(|n| *n += 1);
        agent.sync_locked(dc, &mut st);
        Ok(())
    }

    /// `AgentDeregisterService`: removes the service with ID `id` (exact
    /// match) and its checks, and syncs.
    pub(crate) fn deregister(&self, dc: &Datacenter, id: &str) -> Result<(), Refusal> {
        let mut st = lock(&self.state);
        if !st.remove_service(id) {
            return Err((
                404,
                format!(
                    "Unknown service ID {id:?}. Ensure that the service ID is passed, not the service name."
                ),
            ));
        }
        self.service_changes.send_modify(|n| *n += 1);
        self.sync_locked(dc, &mut st);
        Ok(())
    }

    /// The `AgentService` JSON of service `id` with its content hash, if
    /// the agent has it, and a receiver that fires on the next change to
    /// the local services (subscribed under the same lock).
    pub(crate) fn service(
        &self,
        datacenter: &str,
        id: &str,
    ) -> (Option<(String, Value)>, watch::Receiver<u64>) {
        let st = lock(&self.state);
        let changes = self.service_changes.subscribe();
        let found = st.services.get(id).map(|s| {
            let hash = content_hash(&s.view(datacenter, None));
            let view = s.view(datacenter, Some(&hash));
            (hash, view)
        });
        (found, changes)
    }

    /// `/v1/agent/services`: every local service by ID.
    pub(crate) fn services(&self, datacenter: &str) -> BTreeMap<String, Value> {
        lock(&self.state)
            .services
            .iter()
            .map(|(id, s)| (id.clone(), s.view(datacenter, None)))
            .collect()
    }

    /// `/v1/agent/check/{pass,warn,fail,update}` for a check of this agent
    /// (`updateTTLCheck`): `None` if the agent has no check `check_id` (or
    /// `node` names another node), so the caller treats it as a catalog
    /// check. A TTL check takes the status through its status handler,
    /// its output truncated to `OutputMaxSize`, and its timer restarts;
    /// any other check is a 500, as in Consul.
    pub(crate) fn update_ttl(
        dc: &Arc<Datacenter>,
        node: Option<&str>,
        check_id: &str,
        status: &str,
        output: &str,
    ) -> Option<Result<(), Refusal>> {
        if node.is_some_and(|n| !n.eq_ignore_ascii_case(&dc.server_node)) {
            return None;
        }
        let agent = &dc.agent;
        let mut st = lock(&agent.state);
        let check = st.checks.get_mut(check_id)?;
        let max = check.output_max_size;
        let Some(ttl) = &mut check.ttl else {
            return Some(Err((
                500,
                format!("CheckID {check_id:?} does not have associated TTL"),
            )));
        };
        let output = if output.len() > max {
            format!(
                "{} ... (captured {max} of {} bytes)",
                String::from_utf8_lossy(&output.as_bytes()[..max]),
                output.len()
            )
        } else {
            output.to_owned()
        };
        ttl.last_output = output.clone();
        ttl.reset.notify_one();
        agent.report_locked(dc, &mut st, check_id, status, &output);
        Some(Ok(()))
    }

    /// Syncs what is out of sync, if there is a leader.
    pub(crate) fn sync(&self, dc: &Datacenter) {
        self.sync_locked(dc, &mut lock(&self.state));
    }

    /// `State.SyncChanges` (see the module docs). A failed catalog write
    /// ends the pass, leaving the rest out of sync for the next one.
    fn sync_locked(&self, dc: &Datacenter, st: &mut LocalState) {
        if dc.leaderless_for().is_some() {
            return;
        }
        let node = agent_node_registration(dc);
        for id in std::mem::take(&mut st.deleted_services) {
            let req = DeregisterRequest {
                node: node.node.clone(),
                service_id: Some(id),
                ..Default::default()
            };
            // With a node given, a deregistration cannot fail.
            let _ = dc.write(|s| s.deregister(&req));
        }
        let out_of_sync: Vec<String> = st
            .services
            .iter()
            .filter(|(_, s)| !s.in_sync)
            .map(|(id, _)| id.clone())
            .collect();
        for id in out_of_sync {
            let riders: Vec<String> = st
                .checks
                .iter()
                .filter(|(_, c)| !c.in_sync && c.record.service_id == id)
                .map(|(k, _)| k.clone())
                .collect();
            let req = RegisterRequest {
                service: st.services.get(&id).map(LocalService::to_input),
                checks: Some(
                    riders
                        .iter()
                        .filter_map(|k| st.checks.get(k))
                        .map(|c| c.record.to_input(&dc.server_node))
                        .collect(),
                ),
                ..node.clone()
            };
            if dc.write(|s| s.register(&req)).is_err() {
                return;
            }
            if let Some(s) = st.services.get_mut(&id) {
                s.in_sync = true;
            }
            for k in riders {
                if let Some(c) = st.checks.get_mut(&k) {
                    c.synced();
                }
            }
        }
        for id in std::mem::take(&mut st.deleted_checks) {
            let req = DeregisterRequest {
                node: node.node.clone(),
                check_id: Some(id),
                ..Default::default()
            };
            let _ = dc.write(|s| s.deregister(&req));
        }
        let out_of_sync: Vec<String> = st
            .checks
            .iter()
            .filter(|(_, c)| !c.in_sync)
            .map(|(id, _)| id.clone())
            .collect();
        for id in out_of_sync {
            let Some(check) = st.checks.get(&id) else {
                continue;
            };
            let req = RegisterRequest {
                service: st
                    .services
                    .get(&check.record.service_id)
                    .map(LocalService::to_input),
                check: Some(check.record.to_input(&dc.server_node)),
                ..node.clone()
            };
            if dc.write(|s| s.register(&req)).is_err() {
                return;
            }
            if let Some(c) = st.checks.get_mut(&id) {
                c.synced();
            }
        }
    }

    /// A check result (after the caller made sure the check is current):
    /// through the status handler into the local state, then synced now
    /// (a status change) or later (an output-only change).
    fn report_locked(
        &self,
        dc: &Arc<Datacenter>,
        st: &mut LocalState,
        check_id: &str,
        status: &str,
        output: &str,
    ) {
        let Some(check) = st.checks.get_mut(check_id) else {
            return;
        };
        let Some(status) = check.handler.judge(status) else {
            return;
        };
        match check.update(&status, output) {
            Change::Nothing => {}
            Change::Status => self.sync_locked(dc, st),
            Change::Output => {
                if check.deferred.is_none() {
                    let weak = Arc::downgrade(dc);
                    let id = check_id.to_owned();
                    let generation = check.generation;
                    check.deferred = Some(AbortOnDrop::spawn(deferred_sync(weak, id, generation)));
                }
            }
        }
    }

    /// One reaper pass (`reapServicesInternal`): removes every service one
    /// of whose checks has been critical for longer than its
    /// `DeregisterCriticalServiceAfter`.
    fn reap(&self, dc: &Datacenter) {
        let mut st = lock(&self.state);
        let doomed: BTreeSet<String> = st
            .checks
            .values()
            .filter(|c| !c.record.service_id.is_empty())
            .filter(|c| match (c.critical_since, c.reap_after) {
                (Some(since), Some(after)) => since.elapsed() > after,
                _ => false,
            })
            .map(|c| c.record.service_id.clone())
            .collect();
        if doomed.is_empty() {
            return;
        }
        for id in &doomed {
            st.remove_service(id);
        }
        self.service_changes.send_modify(|n| *n += 1);
        self.sync_locked(dc, &mut st);
    }
}

/// Reports a runner's result for check `check_id` of `generation`; false
/// if that check is gone or replaced (the runner then stops).
fn report(dc: &Arc<Datacenter>, check_id: &str, generation: u64, outcome: Outcome) -> bool {
    let agent = &dc.agent;
    let mut st = lock(&agent.state);
    if st
        .checks
        .get(check_id)
        .is_none_or(|c| c.generation != generation)
    {
        return false;
    }
    agent.report_locked(dc, &mut st, check_id, outcome.0, &outcome.1);
    true
}

/// The deferred sync of an output-only change (`DeferCheck`): after half
/// of `check_update_interval` plus a random stagger within it.
async fn deferred_sync(dc: Weak<Datacenter>, check_id: String, generation: u64) {
    let d = CHECK_UPDATE_INTERVAL;
    tokio::time::sleep(d / 2 + random_stagger(d)).await;
    let Some(dc) = dc.upgrade() else { return };
    let agent = &dc.agent;
    let mut st = lock(&agent.state);
    let Some(check) = st
        .checks
        .get_mut(&check_id)
        .filter(|c| c.generation == generation)
    else {
        return;
    };
    if let Some(own) = check.deferred.take() {
        own.disarm();
    }
    check.in_sync = false;
    agent.sync_locked(&dc, &mut st);
}

/// What an interval check runs.
enum Probe {
    Http(HttpProbe),
    Tcp { addr: String, timeout: Duration },
}

impl Probe {
    async fn run(&self) -> Outcome {
        match self {
            Self::Http(probe) => probe.run().await,
            Self::Tcp { addr, timeout } => tcp_probe(addr, *timeout).await,
        }
    }
}

/// Starts what runs check `ct` (`addCheck`): a TTL timer, or an HTTP or
/// TCP prober (interval raised to 1 s at least). Other kinds get nothing.
fn start_runner(
    dc: &Arc<Datacenter>,
    check_id: &str,
    generation: u64,
    ct: &CheckType,
    output_max_size: usize,
) -> (Option<AbortOnDrop>, Option<TtlState>) {
    let weak = Arc::downgrade(dc);
    let id = check_id.to_owned();
    let positive = |nanos: i64| {
        u64::try_from(nanos)
            .ok()
            .filter(|n| *n > 0)
            .map(Duration::from_nanos)
    };
    if ct.is_ttl() {
        let ttl = positive(ct.ttl).unwrap_or(MIN_CHECK_INTERVAL);
        let reset = Arc::new(Notify::new());
        let task = AbortOnDrop::spawn(run_ttl(weak, id, generation, ttl, reset.clone()));
        let state = TtlState {
            reset,
            last_output: String::new(),
        };
        return (Some(task), Some(state));
    }
    let timeout = positive(ct.timeout).unwrap_or(DEFAULT_CHECK_TIMEOUT);
    let probe = if ct.is_http() {
        let url = if ct.proxy_http.is_empty() {
            ct.http.clone()
        } else {
            ct.proxy_http.clone()
        };
        Probe::Http(HttpProbe {
            url,
            method: ct.method.clone(),
            header: ct.header.clone().unwrap_or_default(),
            body: ct.body.clone(),
            disable_redirects: ct.disable_redirects,
            timeout,
            output_max_size,
        })
    } else if ct.is_tcp() {
        Probe::Tcp {
            addr: ct.tcp.clone(),
            timeout,
        }
    } else {
        return (None, None);
    };
    let interval = positive(ct.interval)
        .unwrap_or(MIN_CHECK_INTERVAL)
        .max(MIN_CHECK_INTERVAL);
    let task = AbortOnDrop::spawn(run_interval(weak, id, generation, interval, probe));
    (Some(task), None)
}

/// `CheckHTTP.run` / `CheckTCP.run`: the first probe after a random
/// stagger within the interval (`lib.RandomStagger`), then one every
/// interval after the previous one ends.
async fn run_interval(
    dc: Weak<Datacenter>,
    check_id: String,
    generation: u64,
    interval: Duration,
    probe: Probe,
) {
    tokio::time::sleep(random_stagger(interval)).await;
    loop {
        let outcome = probe.run().await;
        let Some(dc) = dc.upgrade() else { return };
        if !report(&dc, &check_id, generation, outcome) {
            return;
        }
        drop(dc);
        tokio::time::sleep(interval).await;
    }
}

/// `CheckTTL.run`: critical with `TTL expired` when no update came within
/// the TTL; the timer then waits for the next update to start again.
async fn run_ttl(
    dc: Weak<Datacenter>,
    check_id: String,
    generation: u64,
    ttl: Duration,
    reset: Arc<Notify>,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(ttl) => {
                let Some(dc) = dc.upgrade() else { return };
                let output = {
                    let st = lock(&dc.agent.state);
                    match st.checks.get(&check_id).filter(|c| c.generation == generation) {
                        Some(LocalCheck { ttl: Some(t), .. }) if !t.last_output.is_empty() => format!(
                            "TTL expired (last output before timeout follows): {}",
                            t.last_output
                        ),
                        Some(_) => "TTL expired".to_owned(),
                        None => return,
                    }
                };
                if !report(&dc, &check_id, generation, (CRITICAL, output)) {
                    return;
                }
                drop(dc);
                reset.notified().await;
            }
            () = reset.notified() => {}
        }
    }
}
