//! Consul's JSON answers as the resolver reads them, and their conversion
//! into [`Instance`]s (reference §3, §4, §6.4).
//!
//! Decoding is lenient: a field that is missing or `null` takes its empty
//! value, unknown fields are ignored, so a newer or older Consul (or a
//! proxy adding fields) does not break a watch. A body that is not the
//! expected JSON shape at all is an error, and so is `null` where Consul
//! always sends a list or a map (its endpoints turn a nil result into
//! `[]` / `{}`): taken as "no instances", a broken proxy's `null` would
//! wipe a datacenter out of the answers; as an error, the last good data
//! stays.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer};

use std::sync::{Arc, LazyLock};

use crate::health::{Addresses, Check, CheckStatus, Instance, NodeInfo};

/// The node an instance holds until its shared one is set.
static NO_NODE: LazyLock<Arc<NodeInfo>> = LazyLock::new(Arc::default);

//------------ Lenient field helpers ------------------------------------------

/// Decodes `T`, taking its default for `null`.
fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Decodes a Go `map[string]string`, `null` maps and values becoming empty.
fn string_map<'de, D>(d: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: Deserializer<'de>,
{
    let raw: Option<BTreeMap<String, Option<String>>> = Option::deserialize(d)?;
    Ok(raw
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.unwrap_or_default()))
        .collect())
}

/// Decodes a list of strings, `null` lists and elements being dropped.
fn string_list<'de, D>(d: D) -> Result<Vec<String>, D::Error>
where
    D: Deserializer<'de>,
{
    let raw: Option<Vec<Option<String>>> = Option::deserialize(d)?;
    Ok(raw.unwrap_or_default().into_iter().flatten().collect())
}

/// Decodes a port; `null`, missing or out of range is 0 (Consul omits a
/// zero port, reference §3).
fn port<'de, D>(d: D) -> Result<u16, D::Error>
where
    D: Deserializer<'de>,
{
    let raw: Option<i64> = Option::deserialize(d)?;
    Ok(raw.and_then(|p| u16::try_from(p).ok()).unwrap_or(0))
}

//------------ Wire types -----------------------------------------------------

/// One element of `/v1/health/service/<svc>` (`CheckServiceNode`).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct HealthEntry {
    /// The node.
    #[serde(deserialize_with = "nullable")]
    node: WireNode,
    /// The service instance.
    #[serde(deserialize_with = "nullable")]
    service: WireService,
    /// Node-level and service-level checks.
    #[serde(deserialize_with = "nullable")]
    checks: Vec<Option<WireCheck>>,
}

/// `structs.Node`, the fields the resolver uses.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct WireNode {
    /// Node name.
    #[serde(deserialize_with = "nullable")]
    node: String,
    /// Node address (IP or host name).
    #[serde(deserialize_with = "nullable")]
    address: String,
    /// `lan`, `lan_ipv4`, `wan`, … as plain strings.
    #[serde(deserialize_with = "string_map")]
    tagged_addresses: BTreeMap<String, String>,
    /// Node metadata.
    #[serde(deserialize_with = "string_map")]
    meta: BTreeMap<String, String>,
}

/// A service tagged address (`structs.ServiceAddress`).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct WireServiceAddress {
    /// The address.
    #[serde(deserialize_with = "nullable")]
    address: String,
    /// The port (0 when unset).
    #[serde(deserialize_with = "port")]
    port: u16,
}

/// `structs.Weights`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct WireWeights {
    /// Weight while passing.
    #[serde(deserialize_with = "nullable")]
    passing: i64,
    /// Weight while warning.
    #[serde(deserialize_with = "nullable")]
    warning: i64,
}

/// `structs.NodeService`, the fields the resolver uses.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct WireService {
    /// Service ID.
    #[serde(rename = "ID", deserialize_with = "nullable")]
    id: String,
    /// Tags.
    #[serde(deserialize_with = "string_list")]
    tags: Vec<String>,
    /// The service's own address; empty means the node's.
    #[serde(deserialize_with = "nullable")]
    address: String,
    /// `lan_ipv4`, `wan`, … as `{Address, Port}` objects.
    #[serde(deserialize_with = "nullable")]
    tagged_addresses: BTreeMap<String, Option<WireServiceAddress>>,
    /// Service metadata.
    #[serde(deserialize_with = "string_map")]
    meta: BTreeMap<String, String>,
    /// The port.
    #[serde(deserialize_with = "port")]
    port: u16,
    /// SRV weights; `null` means 1/1.
    #[serde(deserialize_with = "nullable")]
    weights: Option<WireWeights>,
}

/// `structs.HealthCheck`, the fields the resolver uses.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct WireCheck {
    /// Check ID.
    #[serde(rename = "CheckID", deserialize_with = "nullable")]
    check_id: String,
    /// `passing`, `warning` or `critical`.
    #[serde(deserialize_with = "nullable")]
    status: String,
}

/// `GET /v1/agent/self`, only `Config.Datacenter`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct AgentSelf {
    /// The agent's configuration.
    #[serde(deserialize_with = "nullable")]
    config: AgentConfig,
}

/// `Config` of `/v1/agent/self`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct AgentConfig {
    /// The agent's datacenter.
    #[serde(deserialize_with = "nullable")]
    datacenter: String,
}

impl AgentSelf {
    /// The agent's datacenter, if it named one.
    pub(crate) fn datacenter(self) -> Option<String> {
        Some(self.config.datacenter).filter(|dc| !dc.is_empty())
    }
}

//------------ Decoding -------------------------------------------------------

/// Decodes a `/v1/health/service` body into instances. `translated` says
/// the agent rewrote addresses to WAN ones (`translate_wan_addrs` on, a
/// remote datacenter read through it): the LAN view is then rebuilt from
/// the `lan` tagged addresses where they exist.
///
/// `share` turns the entries' nodes into shared values, in order (see
/// [`NodeCache::share`](crate::health::NodeCache::share)).
pub(crate) fn decode_health(
    body: &[u8],
    translated: bool,
    share: impl FnOnce(Vec<NodeInfo>) -> Vec<Arc<NodeInfo>>,
) -> Result<Vec<Instance>, String> {
    let entries: Vec<Option<HealthEntry>> =
        serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let (nodes, mut instances): (Vec<NodeInfo>, Vec<Instance>) = entries
        .into_iter()
        .flatten()
        .map(|entry| instance(entry, translated))
        .unzip();
    for (instance, node) in instances.iter_mut().zip(share(nodes)) {
        instance.node = node;
    }
    // Kept for as long as the service is watched: no spare capacity (a
    // collect may reuse the larger buffer of the decoded entries).
    Ok(exact(instances))
}

/// `items` in an allocation of exactly their size. Not `shrink_to_fit`:
/// an allocator may keep the larger block on a shrinking `realloc`
/// (mimalloc does while at most half of it is wasted).
fn exact<T>(items: Vec<T>) -> Vec<T> {
    if items.capacity() == items.len() {
        return items;
    }
    let mut out = Vec::with_capacity(items.len());
    out.extend(items);
    out
}

/// Decodes a `/v1/catalog/services` body into the service names.
pub(crate) fn decode_catalog(body: &[u8]) -> Result<HashSet<String>, String> {
    let map: HashMap<String, IgnoredAny> =
        serde_json::from_slice(body).map_err(|e| e.to_string())?;
    Ok(map.into_keys().collect())
}

/// Decodes a `/v1/catalog/datacenters` body.
pub(crate) fn decode_datacenters(body: &[u8]) -> Result<Vec<String>, String> {
    let list: Option<Vec<Option<String>>> =
        serde_json::from_slice(body).map_err(|e| e.to_string())?;
    Ok(list
        .unwrap_or_default()
        .into_iter()
        .flatten()
        .filter(|dc| !dc.is_empty())
        .collect())
}

/// Decodes a `/v1/agent/self` body into the agent's datacenter.
pub(crate) fn decode_agent_datacenter(body: &[u8]) -> Result<String, String> {
    let agent: AgentSelf = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    agent
        .datacenter()
        .ok_or_else(|| "Config.Datacenter is missing or empty".to_owned())
}

/// Builds one instance from a health entry (reference §6.4).
///
/// - LAN: the service's address with the service's `lan_ipv4`/`lan_ipv6`
///   tagged addresses if any of those is set (`service_address`), else the
///   node's address with the node's tagged ones; a tagged address wins for
///   its family. This is the service-then-node order of Consul's DNS.
/// - WAN: the `wan`/`wan_ipv4`/`wan_ipv6` tagged addresses of the service
///   when it has any; else, for a service with its own address, nothing
///   (Consul answers the service address then, so does the resolver's
///   fallback to LAN); else the node's. `wan_port` is the port of the
///   service's `wan` tagged address.
///
/// Returns the node apart, the instance holding a placeholder for it.
fn instance(entry: HealthEntry, translated: bool) -> (NodeInfo, Instance) {
    let HealthEntry {
        node,
        service,
        checks,
    } = entry;
    let node_tag = |key: &str| {
        node.tagged_addresses
            .get(key)
            .map(String::as_str)
            .filter(|a| !a.is_empty())
    };
    let service_tagged = |key: &str| service.tagged_addresses.get(key).and_then(Option::as_ref);
    let service_tag = |key: &str| {
        service_tagged(key)
            .map(|tagged| tagged.address.as_str())
            .filter(|a| !a.is_empty())
    };

    // Under agent translation the plain addresses hold WAN values; the
    // `lan` tagged addresses still hold the originals.
    let (node_address, service_address, port) = if translated {
        let lan = service_tagged("lan");
        (
            node_tag("lan").unwrap_or(&node.address),
            lan.map(|tagged| tagged.address.as_str())
                .filter(|a| !a.is_empty())
                .unwrap_or(&service.address),
            lan.map(|tagged| tagged.port)
                .filter(|p| *p != 0)
                .unwrap_or(service.port),
        )
    } else {
        (
            node.address.as_str(),
            service.address.as_str(),
            service.port,
        )
    };

    let node_lan = Addresses::from_consul(node_address, node_tag("lan_ipv4"), node_tag("lan_ipv6"));
    let node_wan = Addresses::from_consul(
        node_tag("wan").unwrap_or_default(),
        node_tag("wan_ipv4"),
        node_tag("wan_ipv6"),
    );
    let service_lan = Addresses::from_consul(
        service_address,
        service_tag("lan_ipv4"),
        service_tag("lan_ipv6"),
    );
    let (lan, from_service) = if service_lan.is_empty() {
        (node_lan.clone(), false)
    } else {
        (service_lan, true)
    };

    let service_wan = Addresses::from_consul(
        service_tag("wan").unwrap_or_default(),
        service_tag("wan_ipv4"),
        service_tag("wan_ipv6"),
    );
    let wan = if !service_wan.is_empty() || from_service {
        service_wan
    } else {
        node_wan.clone()
    };
    let wan_port = service_tagged("wan")
        .map(|tagged| tagged.port)
        .filter(|p| *p != 0);

    let (weight_passing, weight_warning) = match &service.weights {
        Some(w) => (clamp_weight(w.passing, 1), clamp_weight(w.warning, 0)),
        None => (1, 1),
    };
    let checks: Vec<Check> = checks
        .into_iter()
        .flatten()
        .map(|check| Check {
            status: CheckStatus::from_consul(&check.status),
            id: check.check_id,
        })
        .collect();
    let checks = exact(checks);
    let instance = Instance {
        node: Arc::clone(&NO_NODE),
        service_id: service.id,
        lan,
        wan,
        service_address: from_service,
        port,
        wan_port,
        tags: service.tags,
        service_meta: service.meta,
        weight_passing,
        weight_warning,
        checks,
    };
    let node = NodeInfo {
        name: node.node,
        lan: node_lan,
        wan: node_wan,
        meta: node.meta,
    };
    (node, instance)
}

/// A weight within Consul's bounds (`min` ..= 65535).
fn clamp_weight(weight: i64, min: u16) -> u16 {
    u16::try_from(weight.clamp(i64::from(min), i64::from(u16::MAX))).unwrap_or(u16::MAX)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use serde_json::{Value, json};

    use super::*;

    #[test]
    fn kept_lists_have_no_spare_capacity() {
        let grown: Vec<u64> = (0..5).collect::<Vec<_>>().into_iter().chain([6]).collect();
        let mut spare = Vec::with_capacity(64);
        spare.extend([1u64, 2, 3]);
        for list in [grown, spare, Vec::new()] {
            let len = list.len();
            let kept = exact(list);
            assert_eq!((kept.len(), kept.capacity()), (len, len));
        }
    }

    /// Each entry's node as a value of its own.
    fn unshared(nodes: Vec<NodeInfo>) -> Vec<Arc<NodeInfo>> {
        nodes.into_iter().map(Arc::new).collect()
    }

    fn decode(value: &Value) -> Vec<Instance> {
        decode_health(value.to_string().as_bytes(), false, unshared).unwrap()
    }

    fn one(value: Value) -> Instance {
        let mut all = decode(&json!([value]));
        assert_eq!(all.len(), 1);
        all.remove(0)
    }

    fn v4(s: &str) -> Option<Ipv4Addr> {
        Some(s.parse().unwrap())
    }

    fn v6(s: &str) -> Option<Ipv6Addr> {
        Some(s.parse().unwrap())
    }

    /// The sample element of reference §3.
    fn sample() -> Value {
        json!({"Node":{"ID":"40e4","Node":"foobar","Address":"10.1.10.12","Datacenter":"dc1",
           "TaggedAddresses":{"lan":"10.1.10.12","lan_ipv4":"10.1.10.12","wan":"10.1.10.12"},
           "Meta":{"consul-network-segment":""},"CreateIndex":13,"ModifyIndex":15},
          "Service":{"ID":"redis1","Service":"redis","Tags":["primary"],"Address":"","Meta":{},"Port":8000,
           "TaggedAddresses":{"lan_ipv4":{"Address":"10.1.10.12","Port":8000}},
           "Weights":{"Passing":10,"Warning":1},"EnableTagOverride":false,"PeerName":"",
           "CreateIndex":16,"ModifyIndex":16},
          "Checks":[{"Node":"foobar","CheckID":"serfHealth","Name":"Serf Health Status","Status":"passing",
           "Notes":"","Output":"","ServiceID":"","ServiceName":"","ServiceTags":[],"Type":"",
           "Definition":{},"CreateIndex":13,"ModifyIndex":13},
           {"Node":"foobar","CheckID":"service:redis1","Status":"warning","ServiceID":"redis1"}]})
    }

    #[test]
    fn reference_sample_decodes_every_field() {
        let i = one(sample());
        assert_eq!(i.node.name, "foobar");
        assert_eq!(i.service_id, "redis1");
        // The service has a lan_ipv4 tagged address, so its side is used.
        assert!(i.service_address);
        assert_eq!(
            i.lan,
            Addresses {
                v4: v4("10.1.10.12"),
                v6: None,
                hostname: None
            }
        );
        // A service with its own address and no wan tags has no WAN view.
        assert!(i.wan.is_empty());
        assert_eq!(i.port, 8000);
        assert_eq!(i.wan_port, None);
        assert_eq!(i.tags, vec!["primary".to_owned()]);
        assert!(i.service_meta.is_empty());
        assert_eq!(
            i.node
                .meta
                .get("consul-network-segment")
                .map(String::as_str),
            Some("")
        );
        assert_eq!((i.weight_passing, i.weight_warning), (10, 1));
        assert_eq!(
            i.checks,
            vec![
                Check {
                    id: "serfHealth".into(),
                    status: CheckStatus::Passing
                },
                Check {
                    id: "service:redis1".into(),
                    status: CheckStatus::Warning
                },
            ]
        );
    }

    #[test]
    fn node_address_is_used_when_the_service_has_none() {
        let i = one(json!({
            "Node": {"Node": "n1", "Address": "10.0.0.1",
                     "TaggedAddresses": {"lan": "10.0.0.1", "lan_ipv6": "fd00::1",
                                         "wan": "203.0.113.1", "wan_ipv6": "2001:db8::1"}},
            "Service": {"ID": "web-1", "Address": "", "Port": 80},
            "Checks": []
        }));
        assert!(!i.service_address);
        assert_eq!(
            i.lan,
            Addresses {
                v4: v4("10.0.0.1"),
                v6: v6("fd00::1"),
                hostname: None
            }
        );
        assert_eq!(
            i.wan,
            Addresses {
                v4: v4("203.0.113.1"),
                v6: v6("2001:db8::1"),
                hostname: None
            }
        );
        assert_eq!(i.port, 80);
    }

    #[test]
    fn service_address_wins_over_the_node_and_tags_win_per_family() {
        let i = one(json!({
            "Node": {"Node": "n1", "Address": "10.0.0.1", "TaggedAddresses": {"lan_ipv4": "10.0.0.9"}},
            "Service": {"ID": "web-1", "Address": "10.0.0.5", "Port": 8080,
                        "TaggedAddresses": {"lan_ipv4": {"Address": "10.0.0.6", "Port": 8080},
                                            "lan_ipv6": {"Address": "fd00::6", "Port": 8080},
                                            "wan": {"Address": "198.51.100.6", "Port": 18080}}},
        }));
        assert!(i.service_address);
        assert_eq!(
            i.lan,
            Addresses {
                v4: v4("10.0.0.6"),
                v6: v6("fd00::6"),
                hostname: None
            }
        );
        assert_eq!(
            i.wan,
            Addresses {
                v4: v4("198.51.100.6"),
                v6: None,
                hostname: None
            }
        );
        assert_eq!(i.wan_port, Some(18080));
        assert_eq!(i.port, 8080);
    }

    #[test]
    fn an_ipv6_service_address_fills_only_v6() {
        let i = one(json!({
            "Node": {"Node": "n1", "Address": "10.0.0.1"},
            "Service": {"ID": "web-1", "Address": "fd00::5", "Port": 80},
        }));
        assert!(i.service_address);
        assert_eq!(
            i.lan,
            Addresses {
                v4: None,
                v6: v6("fd00::5"),
                hostname: None
            }
        );
    }

    #[test]
    fn host_names_are_kept_as_host_names() {
        let i = one(json!({
            "Node": {"Node": "n1", "Address": "10.0.0.1"},
            "Service": {"ID": "db", "Address": "db.example.com", "Port": 5432,
                        "TaggedAddresses": {"wan": {"Address": "db.example.net", "Port": 0}}},
        }));
        assert!(i.service_address);
        assert_eq!(i.lan.hostname.as_deref(), Some("db.example.com"));
        assert_eq!((i.lan.v4, i.lan.v6), (None, None));
        assert_eq!(i.wan.hostname.as_deref(), Some("db.example.net"));
        assert_eq!(i.wan_port, None, "a zero wan port is no port");
        let node = one(
            json!({"Node": {"Node": "n2", "Address": "node2.internal"}, "Service": {"ID": "x"}}),
        );
        assert!(!node.service_address);
        assert_eq!(node.lan.hostname.as_deref(), Some("node2.internal"));
    }

    #[test]
    fn service_wan_tags_win_over_node_wan_tags() {
        let i = one(json!({
            "Node": {"Node": "n1", "Address": "10.0.0.1", "TaggedAddresses": {"wan": "203.0.113.1"}},
            "Service": {"ID": "web", "Address": "",
                        "TaggedAddresses": {"wan_ipv4": {"Address": "198.51.100.7", "Port": 0}}},
        }));
        assert!(!i.service_address, "no service LAN address");
        assert_eq!(i.lan.v4, v4("10.0.0.1"));
        assert_eq!(
            i.wan,
            Addresses {
                v4: v4("198.51.100.7"),
                v6: None,
                hostname: None
            }
        );
    }

    #[test]
    fn missing_and_null_fields_take_empty_values() {
        let i = one(json!({
            "Node": {"Node": "n1", "Address": "10.0.0.1", "TaggedAddresses": null, "Meta": null},
            "Service": {"ID": "s", "Tags": null, "Meta": null, "TaggedAddresses": null,
                        "Weights": null, "Address": null, "Port": null},
            "Checks": null
        }));
        assert_eq!(i.lan.v4, v4("10.0.0.1"));
        assert!(i.tags.is_empty() && i.service_meta.is_empty() && i.node.meta.is_empty());
        assert!(i.checks.is_empty());
        assert_eq!((i.weight_passing, i.weight_warning, i.port), (1, 1, 0));
        let bare = one(json!({}));
        assert!(bare.lan.is_empty() && bare.wan.is_empty());
        assert_eq!(bare.node.name, "");
        let partial = one(
            json!({"Service": {"Weights": {"Passing": 0, "Warning": 70000}}, "Checks": [null]}),
        );
        assert_eq!((partial.weight_passing, partial.weight_warning), (1, 65535));
        assert!(partial.checks.is_empty());
        assert!(decode(&json!([])).is_empty());
        let null = decode_health(b"null", false, unshared).unwrap_err();
        assert!(null.contains("null"), "{null}");
        assert!(decode_catalog(b"null").unwrap_err().contains("null"));
        assert!(decode_catalog(b"{}").unwrap().is_empty());
    }

    #[test]
    fn unknown_fields_are_accepted() {
        let i = one(json!({
            "Node": {"Node": "n1", "Address": "10.0.0.1", "Future": {"x": [1, 2]}},
            "Service": {"ID": "web-1", "Service": "web", "Port": 80, "Locality": {"Region": "r"}},
            "Checks": [{"CheckID": "serfHealth", "Status": "passing", "Definition": {}}],
            "Extra": true
        }));
        assert_eq!(i.lan.v4, v4("10.0.0.1"));
        assert_eq!(i.port, 80);
        assert_eq!(i.checks.len(), 1);
    }

    #[test]
    fn unknown_check_statuses_are_critical() {
        let i = one(
            json!({"Checks": [{"CheckID": "_node_maintenance", "Status": "maintenance"},
                                      {"CheckID": "x"}]}),
        );
        assert!(
            i.checks.iter().all(|c| c.status == CheckStatus::Critical),
            "{:?}",
            i.checks
        );
    }

    #[test]
    fn malformed_bodies_are_errors() {
        for body in [&b"{}"[..], b"[1, 2]", b"not json", b"[{\"Node\": 5}]", b""] {
            assert!(
                decode_health(body, false, unshared).is_err(),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        assert!(decode_catalog(b"[]").is_err());
        assert!(decode_datacenters(b"{}").is_err());
        assert!(decode_agent_datacenter(b"{\"Config\": {}}").is_err());
    }

    #[test]
    fn translated_answers_recover_the_lan_view() {
        // What an agent with translate_wan_addrs sends for another DC: the
        // plain addresses and the port are the WAN ones.
        let entry = json!({
            "Node": {"Node": "n1", "Address": "203.0.113.1",
                     "TaggedAddresses": {"lan": "10.0.0.1", "wan": "203.0.113.1"}},
            "Service": {"ID": "web", "Address": "198.51.100.5", "Port": 18080,
                        "TaggedAddresses": {"lan": {"Address": "10.0.0.5", "Port": 8080},
                                            "wan": {"Address": "198.51.100.5", "Port": 18080}}},
        });
        let body = json!([entry]).to_string();
        let i = decode_health(body.as_bytes(), true, unshared)
            .unwrap()
            .remove(0);
        assert_eq!(i.lan.v4, v4("10.0.0.5"));
        assert_eq!(i.port, 8080);
        assert_eq!(i.wan.v4, v4("198.51.100.5"));
        assert_eq!(i.wan_port, Some(18080));
        let untranslated = decode_health(body.as_bytes(), false, unshared)
            .unwrap()
            .remove(0);
        assert_eq!(untranslated.lan.v4, v4("198.51.100.5"));
        assert_eq!(untranslated.port, 18080);
    }

    #[test]
    fn catalog_datacenters_and_agent_decode() {
        let names = decode_catalog(br#"{"consul":[],"redis":["primary"],"web":null}"#).unwrap();
        assert_eq!(
            names,
            ["consul", "redis", "web"]
                .into_iter()
                .map(str::to_owned)
                .collect()
        );
        assert_eq!(
            decode_datacenters(br#"["dc1","dc2"]"#).unwrap(),
            vec!["dc1", "dc2"]
        );
        let agent = br#"{"Config":{"Datacenter":"dc7","NodeName":"n"},"Member":{}}"#;
        assert_eq!(decode_agent_datacenter(agent).unwrap(), "dc7");
    }
}
