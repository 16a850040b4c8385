//! Consul's wire types, with Go's field names, order and `omitempty` rules
//! (reference §3, §4, §5.2, §5.3). Maps are `BTreeMap` because Go's JSON
//! encoder sorts map keys. `Option` marks Go nil maps and slices, which
//! Go encodes as `null`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A string-to-string map as Go's `map[string]string`.
pub type StringMap = BTreeMap<String, String>;

/// Check status values (`api/health.go`).
pub const PASSING: &str = "passing";
/// Check status values (`api/health.go`).
pub const WARNING: &str = "warning";
/// Check status values (`api/health.go`).
pub const CRITICAL: &str = "critical";

fn is_zero_u16(v: &u16) -> bool {
    *v == 0
}

fn is_empty(v: &str) -> bool {
    v.is_empty()
}

//------------ Catalog objects ----------------------------------------------

/// A catalog node (`structs.Node`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct Node {
    #[serde(rename = "ID")]
    pub id: String,
    pub node: String,
    pub address: String,
    pub datacenter: String,
    pub tagged_addresses: Option<StringMap>,
    pub meta: Option<StringMap>,
    pub create_index: u64,
    pub modify_index: u64,
}

/// A service's tagged address (`structs.ServiceAddress`; no json tags, so
/// the keys are `Address` and `Port`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceAddress {
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub port: u16,
}

/// Service weights used for DNS SRV (`structs.Weights`). Absent or invalid
/// weights are stored as 1/1 (`ToServiceNode`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct Weights {
    pub passing: i64,
    pub warning: i64,
}

/// A service instance on a node (`structs.NodeService`).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct NodeService {
    #[serde(skip_serializing_if = "is_empty")]
    pub kind: String,
    #[serde(rename = "ID")]
    pub id: String,
    pub service: String,
    pub tags: Vec<String>,
    pub address: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tagged_addresses: BTreeMap<String, ServiceAddress>,
    pub meta: Option<StringMap>,
    #[serde(skip_serializing_if = "is_zero_u16")]
    pub port: u16,
    #[serde(skip_serializing_if = "is_empty")]
    pub socket_path: String,
    pub weights: Weights,
    pub enable_tag_override: bool,
    pub proxy: Value,
    pub connect: Value,
    pub peer_name: String,
    pub create_index: u64,
    pub modify_index: u64,
}

/// A health check (`structs.HealthCheck`).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct HealthCheck {
    pub node: String,
    #[serde(rename = "CheckID")]
    pub check_id: String,
    pub name: String,
    pub status: String,
    pub notes: String,
    pub output: String,
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    pub service_name: String,
    pub service_tags: Vec<String>,
    #[serde(rename = "Type")]
    pub kind: String,
    pub interval: String,
    pub timeout: String,
    pub exposed_port: u16,
    pub definition: Value,
    pub create_index: u64,
    pub modify_index: u64,
}

/// One element of `/v1/health/service` and of prepared-query `Nodes`
/// (`structs.CheckServiceNode`).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct CheckServiceNode {
    pub node: Node,
    pub service: NodeService,
    pub checks: Vec<HealthCheck>,
}

/// One element of `/v1/catalog/service/<svc>` (`structs.ServiceNode`, the
/// flattened node + service form).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceNode {
    #[serde(rename = "ID")]
    pub id: String,
    pub node: String,
    pub address: String,
    pub datacenter: String,
    pub tagged_addresses: Option<StringMap>,
    pub node_meta: Option<StringMap>,
    pub service_kind: String,
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    pub service_name: String,
    pub service_tags: Vec<String>,
    pub service_address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_tagged_addresses: Option<BTreeMap<String, ServiceAddress>>,
    pub service_weights: Weights,
    pub service_meta: Option<StringMap>,
    pub service_port: u16,
    pub service_socket_path: String,
    pub service_enable_tag_override: bool,
    pub service_proxy: Value,
    pub service_connect: Value,
    pub service_locality: Option<Value>,
    #[serde(skip_serializing_if = "is_empty")]
    pub peer_name: String,
    pub create_index: u64,
    pub modify_index: u64,
}

impl ServiceNode {
    /// Flattens a node and one of its services, as `ToServiceNode` does.
    pub fn new(node: &Node, svc: &NodeService) -> Self {
        Self {
            id: node.id.clone(),
            node: node.node.clone(),
            address: node.address.clone(),
            datacenter: node.datacenter.clone(),
            tagged_addresses: node.tagged_addresses.clone(),
            node_meta: node.meta.clone(),
            service_kind: svc.kind.clone(),
            service_id: svc.id.clone(),
            service_name: svc.service.clone(),
            service_tags: svc.tags.clone(),
            service_address: svc.address.clone(),
            service_tagged_addresses: (!svc.tagged_addresses.is_empty())
                .then(|| svc.tagged_addresses.clone()),
            service_weights: svc.weights,
            service_meta: svc.meta.clone(),
            service_port: svc.port,
            service_socket_path: svc.socket_path.clone(),
            service_enable_tag_override: svc.enable_tag_override,
            service_proxy: svc.proxy.clone(),
            service_connect: svc.connect.clone(),
            service_locality: None,
            peer_name: svc.peer_name.clone(),
            create_index: svc.create_index,
            modify_index: svc.modify_index,
        }
    }
}

//------------ Catalog writes -------------------------------------------------

/// The service part of a register body. Unknown fields are rejected, as
/// Consul's `lib.DecodeJSON` does; fields the simulator does not model are
/// accepted and ignored.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default, deny_unknown_fields)]
pub struct ServiceInput {
    pub kind: Option<String>,
    #[serde(rename = "ID")]
    pub id: Option<String>,
    pub service: Option<String>,
    pub tags: Option<Vec<String>>,
    pub address: Option<String>,
    pub tagged_addresses: Option<BTreeMap<String, ServiceAddress>>,
    pub meta: Option<StringMap>,
    pub port: Option<u16>,
    pub socket_path: Option<String>,
    pub weights: Option<Weights>,
    pub enable_tag_override: Option<bool>,
    pub proxy: Option<Value>,
    pub connect: Option<Value>,
    pub locality: Option<Value>,
    pub peer_name: Option<String>,
    pub create_index: Option<u64>,
    pub modify_index: Option<u64>,
}

/// A check in a register body.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default, deny_unknown_fields)]
pub struct CheckInput {
    pub node: Option<String>,
    #[serde(rename = "CheckID")]
    pub check_id: Option<String>,
    pub name: Option<String>,
    pub status: Option<String>,
    pub notes: Option<String>,
    pub output: Option<String>,
    #[serde(rename = "ServiceID")]
    pub service_id: Option<String>,
    #[serde(rename = "Type")]
    pub kind: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub definition: Option<Value>,
    pub service_name: Option<String>,
    pub service_tags: Option<Vec<String>>,
    pub exposed_port: Option<u16>,
    pub peer_name: Option<String>,
    pub create_index: Option<u64>,
    pub modify_index: Option<u64>,
}

/// `PUT /v1/catalog/register` body (`structs.RegisterRequest`); also the
/// element type of a `--seed` file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default, deny_unknown_fields)]
pub struct RegisterRequest {
    pub datacenter: Option<String>,
    #[serde(rename = "ID")]
    pub id: Option<String>,
    pub node: Option<String>,
    pub address: Option<String>,
    pub tagged_addresses: Option<StringMap>,
    pub node_meta: Option<StringMap>,
    pub service: Option<ServiceInput>,
    pub check: Option<CheckInput>,
    pub checks: Option<Vec<CheckInput>>,
    pub skip_node_update: bool,
    pub peer_name: Option<String>,
    pub locality: Option<Value>,
    pub token: Option<String>,
}

/// `PUT /v1/catalog/deregister` body (`structs.DeregisterRequest`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default, deny_unknown_fields)]
pub struct DeregisterRequest {
    pub datacenter: Option<String>,
    pub node: Option<String>,
    #[serde(rename = "ServiceID")]
    pub service_id: Option<String>,
    #[serde(rename = "CheckID")]
    pub check_id: Option<String>,
    pub peer_name: Option<String>,
    pub token: Option<String>,
}

//------------ Coordinates ----------------------------------------------------

/// A Vivaldi network coordinate (`serf/coordinate.Coordinate`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct Coordinate {
    pub vec: Vec<f64>,
    pub error: f64,
    pub adjustment: f64,
    pub height: f64,
}

/// Dimensionality of Consul's coordinates.
pub const COORDINATE_DIMENSIONS: usize = 8;

impl Coordinate {
    /// A coordinate at `position` (seconds along the first axes).
    pub fn at(position: &[f64]) -> Self {
        let mut vec = vec![0.0; COORDINATE_DIMENSIONS];
        for (slot, value) in vec.iter_mut().zip(position) {
            *slot = *value;
        }
        Self {
            vec,
            error: 1.5,
            adjustment: 0.0,
            height: 0.0,
        }
    }

    /// Estimated round-trip time in seconds, as serf's `DistanceTo` and
    /// Consul's `lib.ComputeDistance`: Euclidean distance of the vectors
    /// plus both heights, plus both adjustments if that stays positive.
    pub fn distance_to(&self, other: &Self) -> f64 {
        let magnitude = self
            .vec
            .iter()
            .zip(&other.vec)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f64>()
            .sqrt();
        let raw = magnitude + self.height + other.height;
        let adjusted = raw + self.adjustment + other.adjustment;
        let seconds = if adjusted > 0.0 { adjusted } else { raw };
        // Go converts to a time.Duration (whole nanoseconds) and back.
        (seconds * 1e9).trunc() / 1e9
    }
}

/// Distance between two optional coordinates; a missing one is +Inf.
pub fn compute_distance(a: Option<&Coordinate>, b: Option<&Coordinate>) -> f64 {
    match (a, b) {
        (Some(a), Some(b)) => a.distance_to(b),
        _ => f64::INFINITY,
    }
}

//------------ Prepared queries ----------------------------------------------

/// `Template` of a prepared query (`structs.QueryTemplateOptions`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default, deny_unknown_fields)]
pub struct QueryTemplate {
    #[serde(rename = "Type")]
    pub kind: String,
    pub regexp: String,
    pub remove_empty_tags: bool,
}

/// A failover target (`structs.QueryFailoverTarget`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default, deny_unknown_fields)]
pub struct QueryFailoverTarget {
    pub peer: String,
    pub datacenter: String,
}

/// `Service.Failover` (`structs.QueryFailoverOptions`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default, deny_unknown_fields)]
pub struct QueryFailover {
    #[serde(rename = "NearestN")]
    pub nearest_n: i64,
    pub datacenters: Option<Vec<String>>,
    pub targets: Option<Vec<QueryFailoverTarget>>,
}

/// `Service.Connect` (`structs.QueryConnect`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default, deny_unknown_fields)]
pub struct QueryConnect {
    pub enabled: bool,
}

/// `Service` of a prepared query (`structs.ServiceQuery`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default, deny_unknown_fields)]
pub struct ServiceQuery {
    pub service: String,
    pub sameness_group: String,
    pub failover: QueryFailover,
    pub only_passing: bool,
    #[serde(rename = "IgnoreCheckIDs")]
    pub ignore_check_ids: Option<Vec<String>>,
    pub near: String,
    pub tags: Option<Vec<String>>,
    pub node_meta: Option<StringMap>,
    pub service_meta: Option<StringMap>,
    pub connect: QueryConnect,
    pub peer: String,
}

/// `DNS` of a prepared query (`structs.QueryDNSOptions`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default, deny_unknown_fields)]
pub struct QueryDns {
    #[serde(rename = "TTL")]
    pub ttl: String,
}

/// A prepared query definition (`structs.PreparedQuery`; `RaftIndex` is
/// embedded, so its fields appear at the top level).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default, deny_unknown_fields)]
pub struct PreparedQuery {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub session: String,
    pub token: String,
    pub template: QueryTemplate,
    pub service: ServiceQuery,
    #[serde(rename = "DNS")]
    pub dns: QueryDns,
    pub create_index: u64,
    pub modify_index: u64,
}

/// `GET /v1/query/<id>/execute` answer (`structs.PreparedQueryExecuteResponse`
/// with its embedded `QueryMeta`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExecuteResponse {
    pub service: String,
    pub nodes: Vec<CheckServiceNode>,
    #[serde(rename = "DNS")]
    pub dns: QueryDns,
    pub datacenter: String,
    pub peer_name: String,
    pub failovers: usize,
    pub index: u64,
    pub last_contact: i64,
    pub known_leader: bool,
    pub consistency_level: String,
    pub not_modified: bool,
    pub backend: u8,
    #[serde(rename = "ResultsFilteredByACLs")]
    pub results_filtered_by_acls: bool,
}
