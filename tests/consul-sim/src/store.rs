//! One datacenter's catalog state, with the Raft and table indexes that
//! drive blocking queries (reference §2, §3, §4).
//!
//! Index rules follow Consul's state store (`agent/consul/state/catalog.go`):
//! every write takes the next Raft index; nodes, services, checks and
//! prepared queries each have a table index bumped only by real changes;
//! each service name has its own index, bumped when one of its instances,
//! their checks, or their node change; when the last instance of a service
//! goes, the service's index entry is removed and the "extinction" index
//! takes that write's index. Identical re-registrations change nothing but
//! the Raft index, as in Consul.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{Value, json};

use crate::model::{
    CRITICAL, CheckInput, CheckServiceNode, Coordinate, DeregisterRequest, HealthCheck, Node,
    NodeService, PreparedQuery, RegisterRequest, Weights,
};

/// Key of a node: its name, lowercased (Consul's node index is
/// case-insensitive).
type NodeKey = String;

/// What a write touched, so the owner can wake the right waiters.
#[derive(Debug, Default, Clone)]
pub struct Changes {
    /// Lowercased service names whose index moved.
    pub services: BTreeSet<String>,
    /// Whether anything at all changed besides the Raft index.
    pub any: bool,
}

/// One datacenter's state store. `Clone` is a snapshot.
#[derive(Debug, Clone)]
pub struct Store {
    /// Name of the datacenter this store belongs to.
    pub datacenter: String,
    raft_index: u64,
    nodes_index: u64,
    services_index: u64,
    checks_index: u64,
    queries_index: u64,
    coordinates_index: u64,
    extinction_index: u64,
    service_index: HashMap<String, u64>,
    nodes: BTreeMap<NodeKey, Node>,
    services: BTreeMap<(NodeKey, String), NodeService>,
    /// The keys of `services` by lowercased service name, in the same
    /// (node, service ID) order: a read of one service (and
    /// [`has_service`](Self::has_service)) looks at that service's
    /// instances only, not at every instance of the datacenter, as Consul's
    /// `service` index does. Kept in step with `services` by
    /// [`insert_service`](Self::insert_service) and
    /// [`remove_service`](Self::remove_service); never holds an empty set.
    instances_by_name: HashMap<String, BTreeSet<(NodeKey, String)>>,
    checks: BTreeMap<(NodeKey, String), HealthCheck>,
    coordinates: BTreeMap<NodeKey, Coordinate>,
    queries: BTreeMap<String, PreparedQuery>,
    changes: Changes,
}

fn key(name: &str) -> String {
    name.to_lowercase()
}

fn default_proxy() -> Value {
    json!({"Mode": "", "MeshGateway": {}, "Expose": {}})
}

impl Store {
    /// An empty store for `datacenter`.
    pub fn new(datacenter: &str) -> Self {
        Self {
            datacenter: datacenter.to_owned(),
            raft_index: 0,
            nodes_index: 0,
            services_index: 0,
            checks_index: 0,
            queries_index: 0,
            coordinates_index: 0,
            extinction_index: 0,
            service_index: HashMap::new(),
            nodes: BTreeMap::new(),
            services: BTreeMap::new(),
            instances_by_name: HashMap::new(),
            checks: BTreeMap::new(),
            coordinates: BTreeMap::new(),
            queries: BTreeMap::new(),
            changes: Changes::default(),
        }
    }

    /// The last Raft index applied.
    pub fn raft_index(&self) -> u64 {
        self.raft_index
    }

    /// Takes what the writes since the last call touched.
    pub fn take_changes(&mut self) -> Changes {
        std::mem::take(&mut self.changes)
    }

    /// Starts a write: the next Raft index.
    fn next_index(&mut self) -> u64 {
        self.raft_index += 1;
        self.raft_index
    }

    fn touch_service(&mut self, name: &str, idx: u64) {
        let k = key(name);
        self.service_index.insert(k.clone(), idx);
        self.changes.services.insert(k);
        self.changes.any = true;
    }

    fn touch_services_of_node(&mut self, node: &NodeKey, idx: u64) {
        let names: Vec<String> = self
            .services
            .range((node.clone(), String::new())..)
            .take_while(|((n, _), _)| n == node)
            .map(|(_, s)| s.service.clone())
            .collect();
        for name in names {
            self.touch_service(&name, idx);
        }
    }

    //--- Writes

    /// Applies a catalog registration (`Catalog.Register` +
    /// `EnsureRegistration`). Everything is validated before anything is
    /// written. Errors carry Consul's text; the HTTP layer sends them as 500.
    pub fn register(&mut self, req: &RegisterRequest) -> Result<(), String> {
        if req.peer_name.as_deref().is_some_and(|p| !p.is_empty()) {
            return Err("cannot register requests with PeerName in them".into());
        }
        let node_name = req.node.clone().unwrap_or_default();
        if node_name.is_empty() {
            return Err("Must provide node".into());
        }
        if let Some(id) = req.id.as_deref().filter(|id| !id.is_empty())
            && uuid::Uuid::try_parse(id).is_err()
        {
            let why = if id.len() == 36 {
                "uuid is improperly formatted"
            } else {
                "uuid string is wrong length"
            };
            return Err(format!("Bad node ID: {why}"));
        }
        let address = req.address.clone().unwrap_or_default();
        if address.is_empty() && !req.skip_node_update {
            return Err("Must provide address if SkipNodeUpdate is not set".into());
        }
        let service = req.service.as_ref().map(validate_service).transpose()?;
        let nk = key(&node_name);
        let mut checks: Vec<CheckInput> = req.checks.clone().unwrap_or_default();
        checks.extend(req.check.clone());
        for check in &mut checks {
            if check.node.as_deref().is_none_or(str::is_empty) {
                check.node = Some(node_name.clone());
            }
            if check.check_id.as_deref().is_none_or(str::is_empty) {
                check.check_id = check.name.clone();
            }
            let check_id = check.check_id.clone().unwrap_or_default();
            let check_node = check.node.clone().unwrap_or_default();
            if key(&check_node) != nk {
                return Err(format!(
                    "Node '{check_node}' for check '{check_id}' doesn't match register request node '{node_name}'"
                ));
            }
            if let Some(sid) = check.service_id.as_deref().filter(|s| !s.is_empty()) {
                let in_request = service
                    .as_ref()
                    .is_some_and(|s| s.id.eq_ignore_ascii_case(sid));
                if !in_request && self.service_on_node(&nk, sid).is_none() {
                    return Err(format!(
                        "Unknown service ID '{sid}' for check ID '{check_id}'"
                    ));
                }
            }
        }

        let idx = self.next_index();

        // Node: rewritten only if new or changed (`ChangesNode`).
        let existing = self.nodes.get(&nk);
        if existing.is_none() || !req.skip_node_update {
            let node = Node {
                id: req.id.clone().unwrap_or_default(),
                node: node_name.clone(),
                address,
                datacenter: self.datacenter.clone(),
                tagged_addresses: req.tagged_addresses.clone(),
                meta: req.node_meta.clone(),
                create_index: existing.map_or(idx, |n| n.create_index),
                modify_index: idx,
            };
            let changed = existing.is_none_or(|old| {
                old.id != node.id
                    || old.node != node.node
                    || old.address != node.address
                    || old.tagged_addresses != node.tagged_addresses
                    || old.meta != node.meta
            });
            if changed {
                self.nodes.insert(nk.clone(), node);
                self.nodes_index = idx;
                self.changes.any = true;
                self.touch_services_of_node(&nk, idx);
            }
        }

        // Service: the same ID on the node is replaced whole.
        if let Some(mut svc) = service {
            let old_key = self.service_on_node(&nk, &svc.id);
            let old = old_key.as_ref().and_then(|k| self.services.get(k)).cloned();
            svc.create_index = old.as_ref().map_or(idx, |o| o.create_index);
            svc.modify_index = old.as_ref().map_or(idx, |o| o.modify_index);
            if old.as_ref() != Some(&svc) {
                svc.modify_index = idx;
                if let (Some(k), Some(o)) = (old_key, old) {
                    self.remove_service(&k);
                    if key(&o.service) != key(&svc.service) {
                        self.after_service_removed(&o.service, idx);
                    }
                }
                let name = svc.service.clone();
                self.insert_service((nk.clone(), svc.id.clone()), svc);
                self.services_index = idx;
                self.nodes_index = idx;
                self.touch_service(&name, idx);
            }
        }

        for input in checks {
            self.ensure_check(&nk, input, idx);
        }
        Ok(())
    }

    /// Stores a service instance under `k`, replacing any with that key.
    fn insert_service(&mut self, k: (NodeKey, String), svc: NodeService) {
        let name = key(&svc.service);
        if let Some(old) = self.services.insert(k.clone(), svc) {
            self.unindex_instance(&key(&old.service), &k);
        }
        self.instances_by_name.entry(name).or_default().insert(k);
    }

    /// Removes the service instance under `k`.
    fn remove_service(&mut self, k: &(NodeKey, String)) -> Option<NodeService> {
        let svc = self.services.remove(k)?;
        self.unindex_instance(&key(&svc.service), k);
        Some(svc)
    }

    /// Drops `k` from the instances of service `name` (lowercased).
    fn unindex_instance(&mut self, name: &str, k: &(NodeKey, String)) {
        if let Some(keys) = self.instances_by_name.get_mut(name) {
            keys.remove(k);
            if keys.is_empty() {
                self.instances_by_name.remove(name);
            }
        }
    }

    /// The key of the service with ID `id` (case-insensitive) on a node.
    fn service_on_node(&self, nk: &NodeKey, id: &str) -> Option<(NodeKey, String)> {
        self.services
            .range((nk.clone(), String::new())..)
            .take_while(|((n, _), _)| n == nk)
            .find(|((_, sid), _)| sid.eq_ignore_ascii_case(id))
            .map(|(k, _)| k.clone())
    }

    /// Upserts one validated check (`ensureCheckTxn`): status defaults to
    /// critical; a service check copies its service's name and tags.
    fn ensure_check(&mut self, nk: &NodeKey, input: CheckInput, idx: u64) {
        let check_id = input.check_id.clone().unwrap_or_default();
        let service_id = input.service_id.clone().unwrap_or_default();
        let service = self
            .service_on_node(nk, &service_id)
            .and_then(|k| self.services.get(&k));
        let (service_id, service_name, service_tags) = match service {
            Some(svc) if !service_id.is_empty() => {
                (svc.id.clone(), svc.service.clone(), svc.tags.clone())
            }
            _ => (String::new(), String::new(), Vec::new()),
        };
        let definition = match input.definition.clone() {
            Some(Value::Null) | None => json!({}),
            Some(d) => d,
        };
        let ck = (nk.clone(), check_id.clone());
        let prev = self.checks.get(&ck);
        let mut check = HealthCheck {
            node: self.nodes[nk].node.clone(),
            check_id,
            name: input.name.clone().unwrap_or_default(),
            status: input
                .status
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| CRITICAL.to_owned()),
            notes: input.notes.clone().unwrap_or_default(),
            output: input.output.clone().unwrap_or_default(),
            service_id,
            service_name,
            service_tags,
            kind: input.kind.clone().unwrap_or_default(),
            interval: input.interval.clone().unwrap_or_default(),
            timeout: input.timeout.clone().unwrap_or_default(),
            exposed_port: input.exposed_port.unwrap_or(0),
            definition,
            create_index: prev.map_or(idx, |p| p.create_index),
            modify_index: prev.map_or(idx, |p| p.modify_index),
        };
        if prev == Some(&check) {
            return;
        }
        check.modify_index = idx;
        self.put_check(ck, check, idx);
    }

    fn put_check(&mut self, ck: (NodeKey, String), check: HealthCheck, idx: u64) {
        let service = check.service_name.clone();
        let node = ck.0.clone();
        self.checks.insert(ck, check);
        self.checks_index = idx;
        self.changes.any = true;
        if service.is_empty() {
            self.touch_services_of_node(&node, idx);
        } else {
            self.touch_service(&service, idx);
        }
    }

    /// Sets the status (and optionally output) of every check with `check_id`
    /// on `node` (or on any node if `node` is `None`). Returns how many
    /// checks matched.
    pub fn update_check_status(
        &mut self,
        node: Option<&str>,
        check_id: &str,
        status: &str,
        output: Option<&str>,
    ) -> usize {
        let matches: Vec<(NodeKey, String)> = match node {
            // A node has at most one check with an ID: look it up.
            Some(node) => {
                let ck = (key(node), check_id.to_owned());
                if self.checks.contains_key(&ck) {
                    vec![ck]
                } else {
                    Vec::new()
                }
            }
            None => self
                .checks
                .keys()
                .filter(|(_, id)| id == check_id)
                .cloned()
                .collect(),
        };
        if matches.is_empty() {
            return 0;
        }
        let idx = self.next_index();
        for ck in &matches {
            let mut check = self.checks[ck].clone();
            check.status = status.to_owned();
            if let Some(output) = output {
                check.output = output.to_owned();
            }
            if check != self.checks[ck] {
                check.modify_index = idx;
                self.put_check(ck.clone(), check, idx);
            }
        }
        matches.len()
    }

    /// Applies a catalog deregistration: a whole node, one service (with its
    /// checks), or one check.
    pub fn deregister(&mut self, req: &DeregisterRequest) -> Result<(), String> {
        let node_name = req.node.clone().unwrap_or_default();
        if node_name.is_empty() {
            return Err("Must provide node".into());
        }
        let nk = key(&node_name);
        let service_id = req.service_id.clone().unwrap_or_default();
        let check_id = req.check_id.clone().unwrap_or_default();
        let idx = self.next_index();
        // Precedence as in the FSM: a service, else a check, else the node.
        // Unknown names are silently ignored.
        if !service_id.is_empty() {
            if let Some((_, sid)) = self.service_on_node(&nk, &service_id) {
                self.delete_service(&nk, &sid, idx);
            }
        } else if !check_id.is_empty() {
            self.delete_check(&nk, &check_id, idx);
        } else if self.nodes.contains_key(&nk) {
            let service_ids: Vec<String> = self
                .services
                .keys()
                .filter(|(n, _)| *n == nk)
                .map(|(_, id)| id.clone())
                .collect();
            for id in service_ids {
                self.delete_service(&nk, &id, idx);
            }
            let check_ids: Vec<String> = self
                .checks
                .keys()
                .filter(|(n, _)| *n == nk)
                .map(|(_, id)| id.clone())
                .collect();
            for id in check_ids {
                self.delete_check(&nk, &id, idx);
            }
            self.nodes.remove(&nk);
            self.coordinates.remove(&nk);
            self.nodes_index = idx;
            self.changes.any = true;
        }
        Ok(())
    }

    fn delete_check(&mut self, nk: &NodeKey, check_id: &str, idx: u64) {
        if let Some(check) = self.checks.remove(&(nk.clone(), check_id.to_owned())) {
            self.checks_index = idx;
            self.changes.any = true;
            if check.service_name.is_empty() {
                self.touch_services_of_node(nk, idx);
            } else if self.has_service(&check.service_name) {
                self.touch_service(&check.service_name, idx);
            }
        }
    }

    fn delete_service(&mut self, nk: &NodeKey, service_id: &str, idx: u64) {
        let Some(svc) = self.remove_service(&(nk.clone(), service_id.to_owned())) else {
            return;
        };
        let check_ids: Vec<String> = self
            .checks
            .iter()
            .filter(|((n, _), c)| n == nk && c.service_id == service_id)
            .map(|((_, id), _)| id.clone())
            .collect();
        for id in check_ids {
            self.checks.remove(&(nk.clone(), id));
            self.checks_index = idx;
        }
        self.services_index = idx;
        self.nodes_index = idx;
        self.after_service_removed(&svc.service, idx);
    }

    fn after_service_removed(&mut self, name: &str, idx: u64) {
        self.changes.any = true;
        if self.has_service(name) {
            self.touch_service(name, idx);
        } else {
            let k = key(name);
            self.service_index.remove(&k);
            self.extinction_index = idx;
            self.changes.services.insert(k);
        }
    }

    /// Sets a node's LAN coordinate (`PUT /v1/coordinate/update`).
    pub fn set_coordinate(&mut self, node: &str, coord: Coordinate) -> Result<(), String> {
        let nk = key(node);
        if !self.nodes.contains_key(&nk) {
            return Err(format!("Node {node:?} not found"));
        }
        let idx = self.next_index();
        self.coordinates.insert(nk, coord);
        self.coordinates_index = idx;
        self.changes.any = true;
        Ok(())
    }

    /// Stores a prepared query (create or update).
    pub fn put_query(&mut self, mut query: PreparedQuery) {
        let idx = self.next_index();
        match self.queries.get(&query.id) {
            Some(prev) => query.create_index = prev.create_index,
            None => query.create_index = idx,
        }
        query.modify_index = idx;
        self.queries.insert(query.id.clone(), query);
        self.queries_index = idx;
        self.changes.any = true;
    }

    /// Removes a prepared query; false if there was none with that ID.
    pub fn delete_query(&mut self, id: &str) -> bool {
        if !self.queries.contains_key(id) {
            return false;
        }
        let idx = self.next_index();
        self.queries.remove(id);
        self.queries_index = idx;
        self.changes.any = true;
        true
    }

    /// Lowers every index above `to` to `to`, as restoring an older snapshot
    /// does to a cluster whose Raft log was at a higher index.
    pub fn rewind_to(&mut self, to: u64) {
        let to = to.max(1);
        let clamp = |v: &mut u64| *v = (*v).min(to);
        clamp(&mut self.raft_index);
        clamp(&mut self.nodes_index);
        clamp(&mut self.services_index);
        clamp(&mut self.checks_index);
        clamp(&mut self.queries_index);
        clamp(&mut self.coordinates_index);
        clamp(&mut self.extinction_index);
        self.service_index.values_mut().for_each(clamp);
        for n in self.nodes.values_mut() {
            clamp(&mut n.create_index);
            clamp(&mut n.modify_index);
        }
        for s in self.services.values_mut() {
            clamp(&mut s.create_index);
            clamp(&mut s.modify_index);
        }
        for c in self.checks.values_mut() {
            clamp(&mut c.create_index);
            clamp(&mut c.modify_index);
        }
        for q in self.queries.values_mut() {
            clamp(&mut q.create_index);
            clamp(&mut q.modify_index);
        }
    }

    //--- Reads

    /// Whether any instance of the service `name` exists.
    pub fn has_service(&self, name: &str) -> bool {
        self.instances_by_name.contains_key(&key(name))
    }

    fn catalog_max_index(&self, checks: bool) -> u64 {
        let mut idx = self.nodes_index.max(self.services_index);
        if checks {
            idx = idx.max(self.checks_index);
        }
        idx
    }

    /// The index Consul reports for reads of one service
    /// (`maxIndexForService`): its own index if it exists, else the last
    /// extinction index, else the catalog's max index.
    pub fn service_read_index(&self, name: &str) -> u64 {
        if let Some(idx) = self.service_index.get(&key(name)) {
            return *idx;
        }
        if self.extinction_index > 0 {
            return self.extinction_index;
        }
        self.catalog_max_index(true)
    }

    /// Index of `/v1/catalog/services`: the services table, or with a
    /// `node-meta` filter the max of services and nodes.
    pub fn services_read_index(&self, node_meta_filter: bool) -> u64 {
        if node_meta_filter {
            self.catalog_max_index(false)
        } else {
            self.services_index
        }
    }

    /// Index of `/v1/catalog/nodes`.
    pub fn nodes_read_index(&self) -> u64 {
        self.nodes_index
    }

    /// Index of prepared-query reads.
    pub fn queries_read_index(&self) -> u64 {
        self.queries_index
    }

    /// Index of coordinate reads.
    pub fn coordinates_read_index(&self) -> u64 {
        self.coordinates_index
    }

    /// Every node, in name order.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    /// A node by name (case-insensitive).
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(&key(name))
    }

    /// A node's LAN coordinate.
    pub fn coordinate(&self, name: &str) -> Option<&Coordinate> {
        self.coordinates.get(&key(name))
    }

    /// Every node coordinate, by node name.
    pub fn coordinates(&self) -> impl Iterator<Item = (&Node, &Coordinate)> {
        self.coordinates
            .iter()
            .filter_map(|(k, c)| Some((self.nodes.get(k)?, c)))
    }

    /// All service instances, in (node, service ID) order.
    pub fn services(&self) -> impl Iterator<Item = (&Node, &NodeService)> {
        self.services.iter().map(|((n, _), s)| (&self.nodes[n], s))
    }

    /// Every instance of service `name` with its node and checks (node-level
    /// checks first, then the instance's own), in (node, service ID) order.
    pub fn check_service_nodes(&self, name: &str) -> Vec<CheckServiceNode> {
        self.instances_by_name
            .get(&key(name))
            .into_iter()
            .flatten()
            .filter_map(|k| Some(self.check_service_node(&k.0, self.services.get(k)?)))
            .collect()
    }

    fn check_service_node(&self, nk: &NodeKey, svc: &NodeService) -> CheckServiceNode {
        let on_node = || {
            self.checks
                .range((nk.clone(), String::new())..)
                .take_while(move |((n, _), _)| n == nk)
                .map(|(_, c)| c)
        };
        let mut checks: Vec<HealthCheck> = on_node()
            .filter(|c| c.service_id.is_empty())
            .cloned()
            .collect();
        checks.extend(on_node().filter(|c| c.service_id == svc.id).cloned());
        CheckServiceNode {
            node: self.nodes[nk].clone(),
            service: svc.clone(),
            checks,
        }
    }

    /// Every check, in (node, check ID) order.
    pub fn checks(&self) -> impl Iterator<Item = &HealthCheck> {
        self.checks.values()
    }

    /// All prepared queries, in ID order.
    pub fn queries(&self) -> impl Iterator<Item = &PreparedQuery> {
        self.queries.values()
    }

    /// A prepared query by ID.
    pub fn query(&self, id: &str) -> Option<&PreparedQuery> {
        self.queries.get(id)
    }
}

/// Validates and defaults a service from a register body (`servicePreApply`).
fn validate_service(input: &crate::model::ServiceInput) -> Result<NodeService, String> {
    let name = input.service.clone().unwrap_or_default();
    let mut id = input.id.clone().unwrap_or_default();
    if id.is_empty() && name.is_empty() {
        return Err("service name (Service.Service) is required; both Service ID (Service.ID) and Service Name cannot be empty".into());
    }
    if id.is_empty() {
        id = name.clone();
    }
    if name.is_empty() {
        return Err(
            "Must provide service name (Service.Service) when service ID is provided".into(),
        );
    }
    let address = input.address.clone().unwrap_or_default();
    if matches!(
        address.as_str(),
        "0.0.0.0" | "::" | "[::]" | "0:0:0:0:0:0:0:0"
    ) {
        return Err("Invalid service address".into());
    }
    // Invalid weights are silently replaced by the default (`ToServiceNode`).
    let weights = input
        .weights
        .filter(|w| w.passing >= 1 && w.passing <= 65535 && w.warning >= 0 && w.warning <= 65535)
        .unwrap_or(Weights {
            passing: 1,
            warning: 1,
        });
    Ok(NodeService {
        kind: input.kind.clone().unwrap_or_default(),
        id,
        service: name,
        tags: input.tags.clone().unwrap_or_default(),
        address,
        tagged_addresses: input.tagged_addresses.clone().unwrap_or_default(),
        meta: input.meta.clone(),
        port: input.port.unwrap_or(0),
        socket_path: input.socket_path.clone().unwrap_or_default(),
        weights,
        enable_tag_override: input.enable_tag_override.unwrap_or(false),
        proxy: default_proxy(),
        connect: json!({}),
        peer_name: String::new(),
        create_index: 0,
        modify_index: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ServiceInput;

    fn registration(node: &str, id: &str, service: &str) -> RegisterRequest {
        RegisterRequest {
            node: Some(node.to_owned()),
            address: Some("10.0.0.1".to_owned()),
            service: Some(ServiceInput {
                id: Some(id.to_owned()),
                service: Some(service.to_owned()),
                port: Some(80),
                ..Default::default()
            }),
            check: Some(CheckInput {
                check_id: Some(format!("{id}-health")),
                status: Some("passing".to_owned()),
                service_id: Some(id.to_owned()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The instances of `name` found by scanning every instance, as the
    /// store did before it had a per-name index.
    fn scanned(store: &Store, name: &str) -> Vec<(NodeKey, String)> {
        store
            .services
            .iter()
            .filter(|(_, s)| key(&s.service) == key(name))
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn indexed(store: &Store, name: &str) -> Vec<(NodeKey, String)> {
        store
            .check_service_nodes(name)
            .iter()
            .map(|n| (key(&n.node.node), n.service.id.clone()))
            .collect()
    }

    #[test]
    fn reads_by_name_find_the_instances_a_scan_finds_in_the_same_order() {
        let mut store = Store::new("dc1");
        for (node, id, service) in [
            ("n2", "web", "web"),
            ("n1", "web-b", "Web"),
            ("n1", "web-a", "web"),
            ("n3", "api", "api"),
        ] {
            store.register(&registration(node, id, service)).unwrap();
        }
        let want = [
            ("n1".to_owned(), "web-a".to_owned()),
            ("n1".to_owned(), "web-b".to_owned()),
            ("n2".to_owned(), "web".to_owned()),
        ];
        assert_eq!(indexed(&store, "web"), want);
        assert_eq!(indexed(&store, "WEB"), want, "names are case-insensitive");
        assert_eq!(scanned(&store, "web"), want);
        assert!(store.has_service("Api"));
        assert!(!store.has_service("db"));
        assert!(store.check_service_nodes("db").is_empty());
        // Checks come with their instance.
        let nodes = store.check_service_nodes("api");
        assert_eq!(nodes[0].checks.len(), 1);
        assert_eq!(nodes[0].checks[0].check_id, "api-health");
    }

    #[test]
    fn the_name_index_follows_renames_deregistrations_and_snapshots() {
        let mut store = Store::new("dc1");
        store.register(&registration("n1", "s1", "web")).unwrap();
        store.register(&registration("n2", "s1", "web")).unwrap();
        // The same ID registered under another name moves the instance.
        store.register(&registration("n1", "S1", "api")).unwrap();
        assert_eq!(indexed(&store, "web"), [("n2".to_owned(), "s1".to_owned())]);
        assert_eq!(indexed(&store, "api"), [("n1".to_owned(), "S1".to_owned())]);
        let snapshot = store.clone();
        store
            .deregister(&DeregisterRequest {
                node: Some("n2".to_owned()),
                service_id: Some("s1".to_owned()),
                ..Default::default()
            })
            .unwrap();
        assert!(!store.has_service("web"), "the last instance went");
        assert!(
            !store.instances_by_name.contains_key("web"),
            "no empty set kept"
        );
        store
            .deregister(&DeregisterRequest {
                node: Some("N1".to_owned()),
                ..Default::default()
            })
            .unwrap();
        assert!(
            !store.has_service("api"),
            "a deregistered node takes its instances"
        );
        assert!(store.instances_by_name.is_empty());
        assert!(snapshot.has_service("web") && snapshot.has_service("api"));
    }

    #[test]
    fn the_name_index_matches_a_scan_after_random_writes() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut store = Store::new("dc1");
        let names = ["web", "Web", "api", "db", "cache"];
        for _ in 0..2_000 {
            let node = format!("n{}", rng.usize(..6));
            let id = format!("s{}", rng.usize(..4));
            match rng.u8(..10) {
                0 => {
                    let request = DeregisterRequest {
                        node: Some(node),
                        ..Default::default()
                    };
                    store.deregister(&request).unwrap();
                }
                1..=3 => {
                    let request = DeregisterRequest {
                        node: Some(node),
                        service_id: Some(id),
                        ..Default::default()
                    };
                    store.deregister(&request).unwrap();
                }
                _ => {
                    let name = names[rng.usize(..names.len())];
                    store.register(&registration(&node, &id, name)).unwrap();
                }
            }
            for name in names {
                assert_eq!(indexed(&store, name), scanned(&store, name), "{name}");
                assert_eq!(store.has_service(name), !scanned(&store, name).is_empty());
            }
            let total: usize = store.instances_by_name.values().map(BTreeSet::len).sum();
            assert_eq!(total, store.services.len());
        }
    }

    #[test]
    fn a_check_update_on_one_node_touches_that_node_only() {
        let mut store = Store::new("dc1");
        store.register(&registration("n1", "web", "web")).unwrap();
        store.register(&registration("n2", "web", "web")).unwrap();
        let index = store.service_read_index("web");
        assert_eq!(
            store.update_check_status(Some("N1"), "web-health", "critical", None),
            1
        );
        assert!(store.service_read_index("web") > index);
        let status = |store: &Store, node: &str| {
            store.checks[&(node.to_owned(), "web-health".to_owned())]
                .status
                .clone()
        };
        assert_eq!(status(&store, "n1"), "critical");
        assert_eq!(status(&store, "n2"), "passing");
        assert_eq!(
            store.update_check_status(Some("n3"), "web-health", "critical", None),
            0
        );
        assert_eq!(
            store.update_check_status(None, "web-health", "warning", None),
            2
        );
        assert_eq!(status(&store, "n2"), "warning");
    }
}
