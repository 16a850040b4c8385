//! Consul's prepared queries (reference §5), served as `<name>.query`.
//!
//! [`Definition`] is one entry of `GET /v1/query` as Consul sends it;
//! [`PreparedQueries`] is the settled set the resolver reads: static
//! queries by name and by ID, ready as [`QueryDef`]s, and
//! `name_prefix_match` templates rendered per name asked for. Lookup
//! follows `PreparedQueryResolve`: an ID, then the exact name, then the
//! longest template prefix; names compare case-insensitively.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;

use crate::config::{Failover, Origin, Policy, QueryDef, parse_duration};

/// `Template.Type` of the only template kind Consul has.
pub const NAME_PREFIX_MATCH: &str = "name_prefix_match";

/// One prepared query as `GET /v1/query` lists it. Unknown fields are
/// accepted, `null` lists and maps read as empty.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct Definition {
    /// The query's UUID.
    #[serde(rename = "ID")]
    pub id: String,
    /// The name (a template's prefix).
    pub name: String,
    /// Set for templates.
    #[serde(deserialize_with = "null_default")]
    pub template: TemplateOptions,
    /// What to look up.
    #[serde(deserialize_with = "null_default")]
    pub service: ServiceQuery,
    /// DNS options.
    #[serde(rename = "DNS", deserialize_with = "null_default")]
    pub dns: DnsOptions,
}

/// `Template`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct TemplateOptions {
    /// `name_prefix_match`, or empty for a static query.
    #[serde(rename = "Type")]
    pub kind: String,
    /// An RE2 expression matched against the full name, for `${match(N)}`.
    pub regexp: String,
    /// Drop tags that render empty.
    pub remove_empty_tags: bool,
}

/// `Service`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceQuery {
    /// The Consul service.
    pub service: String,
    /// Where to go when the local datacenter has nothing usable.
    #[serde(deserialize_with = "null_default")]
    pub failover: FailoverOptions,
    /// Warning instances are not served.
    pub only_passing: bool,
    /// Checks that do not count.
    #[serde(rename = "IgnoreCheckIDs", deserialize_with = "null_default")]
    pub ignore_check_ids: Vec<String>,
    /// Required tags; `!tag` excludes.
    #[serde(deserialize_with = "null_default")]
    pub tags: Vec<String>,
    /// Required node metadata.
    #[serde(deserialize_with = "null_default")]
    pub node_meta: BTreeMap<String, String>,
    /// Required service metadata.
    #[serde(deserialize_with = "null_default")]
    pub service_meta: BTreeMap<String, String>,
    /// A cluster peer to query instead (not supported).
    pub peer: String,
}

/// `Service.Failover`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct FailoverOptions {
    /// The nearest N other datacenters, by RTT.
    #[serde(rename = "NearestN")]
    pub nearest_n: i64,
    /// Datacenters after those, in order.
    #[serde(deserialize_with = "null_default")]
    pub datacenters: Vec<String>,
    /// Datacenters (or peers) in order, instead of the two above.
    #[serde(deserialize_with = "null_default")]
    pub targets: Vec<FailoverTarget>,
}

/// One of `Service.Failover.Targets`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct FailoverTarget {
    /// A cluster peer (not supported).
    pub peer: String,
    /// A datacenter.
    pub datacenter: String,
}

/// `DNS`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct DnsOptions {
    /// The answer TTL, a Go duration.
    #[serde(rename = "TTL")]
    pub ttl: String,
}

fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Decodes a `GET /v1/query` body.
pub fn decode_list(body: &[u8]) -> Result<Vec<Definition>, String> {
    let list: Option<Vec<Option<Definition>>> =
        serde_json::from_slice(body).map_err(|e| e.to_string())?;
    Ok(list.unwrap_or_default().into_iter().flatten().collect())
}

/// What settles a definition into a [`QueryDef`] besides the definition.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `[queries.defaults]`: `min_healthy`, `failback_after` and
    /// `on_all_unhealthy`, which Consul has no field for.
    pub defaults: Policy,
    /// `dns.ttl`, for queries without `DNS.TTL`.
    pub ttl: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            defaults: Policy::default(),
            ttl: Duration::ZERO,
        }
    }
}

/// A template, ready to render.
#[derive(Clone, Debug)]
struct Template {
    /// The lower-cased prefix.
    prefix: String,
    regexp: Option<Regex>,
    definition: Definition,
}

/// The prepared queries the resolver serves.
#[derive(Clone, Debug, Default)]
pub struct PreparedQueries {
    by_name: HashMap<String, Arc<QueryDef>>,
    by_id: HashMap<String, Arc<QueryDef>>,
    /// Longest prefix first.
    templates: Vec<Template>,
    settings: Settings,
    /// Definitions the resolver cannot serve, with the reason (logged by
    /// the loader).
    skipped: Vec<(String, String)>,
    count: usize,
}

impl PreparedQueries {
    /// Settles a `GET /v1/query` listing.
    pub fn new(definitions: Vec<Definition>, settings: Settings) -> Self {
        let mut set = Self {
            count: definitions.len(),
            settings,
            ..Self::default()
        };
        for definition in definitions {
            let label = if definition.name.is_empty() {
                definition.id.clone()
            } else {
                definition.name.clone()
            };
            if definition.template.kind.is_empty() {
                match set.settle(&definition.name, &definition) {
                    Ok(def) => {
                        let def = Arc::new(def);
                        if !definition.name.is_empty() {
                            set.by_name
                                .insert(definition.name.to_ascii_lowercase(), Arc::clone(&def));
                        }
                        set.by_id.insert(definition.id.to_ascii_lowercase(), def);
                    }
                    Err(reason) => set.skipped.push((label, reason)),
                }
                continue;
            }
            if definition.template.kind != NAME_PREFIX_MATCH {
                set.skipped.push((
                    label,
                    format!(
                        "template type {:?} is not {NAME_PREFIX_MATCH:?}",
                        definition.template.kind
                    ),
                ));
                continue;
            }
            let regexp = if definition.template.regexp.is_empty() {
                None
            } else {
                match Regex::new(&definition.template.regexp) {
                    Ok(re) => Some(re),
                    Err(error) => {
                        set.skipped
                            .push((label, format!("bad Template.Regexp: {error}")));
                        continue;
                    }
                }
            };
            set.templates.push(Template {
                prefix: definition.name.to_ascii_lowercase(),
                regexp,
                definition,
            });
        }
        set.templates
            .sort_by_key(|t| std::cmp::Reverse(t.prefix.len()));
        set
    }

    /// How many definitions Consul listed (templates and skipped ones
    /// included).
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether Consul listed none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Definitions that cannot be served, with why.
    pub fn skipped(&self) -> &[(String, String)] {
        &self.skipped
    }

    /// Static queries (not templates), for the watches started up front.
    pub fn static_defs(&self) -> impl Iterator<Item = &QueryDef> {
        self.by_id.values().map(|d| &**d)
    }

    /// The definition `name` (lower-case, as asked) resolves to: a query
    /// ID, an exact name, or the longest matching template rendered for
    /// the name. `Err` for a template that does not render.
    pub fn resolve(&self, name: &str) -> Option<Result<Arc<QueryDef>, String>> {
        if let Some(def) = self.by_id.get(name).or_else(|| self.by_name.get(name)) {
            return Some(Ok(Arc::clone(def)));
        }
        let template = self
            .templates
            .iter()
            .find(|t| name.starts_with(t.prefix.as_str()))?;
        Some(self.render(template, name).map(Arc::new))
    }

    fn render(&self, template: &Template, name: &str) -> Result<QueryDef, String> {
        let matches: Vec<&str> = template
            .regexp
            .as_ref()
            .and_then(|re| re.captures(name))
            .map(|caps| caps.iter().map(|m| m.map_or("", |m| m.as_str())).collect())
            .unwrap_or_default();
        let vars = Interpolation {
            full: name,
            prefix: &template.definition.name,
            suffix: name.get(template.prefix.len()..).unwrap_or(""),
            matches: &matches,
        };
        let mut definition = template.definition.clone();
        let s = &mut definition.service;
        let fields = std::iter::once(&mut s.service)
            .chain(std::iter::once(&mut s.peer))
            .chain(s.failover.datacenters.iter_mut())
            .chain(
                s.failover
                    .targets
                    .iter_mut()
                    .flat_map(|t| [&mut t.datacenter, &mut t.peer]),
            )
            .chain(s.ignore_check_ids.iter_mut())
            .chain(s.tags.iter_mut())
            .chain(s.node_meta.values_mut())
            .chain(s.service_meta.values_mut());
        for field in fields {
            *field = vars.apply(field)?;
        }
        if template.definition.template.remove_empty_tags {
            s.tags.retain(|t| !t.is_empty());
        }
        self.settle(name, &definition)
    }

    /// A definition as a [`QueryDef`]. A template may render an empty
    /// service (a name its regexp does not match): as in Consul, that is a
    /// query without instances, not an error.
    fn settle(&self, name: &str, definition: &Definition) -> Result<QueryDef, String> {
        let s = &definition.service;
        if s.service.is_empty() && definition.template.kind.is_empty() {
            return Err("Service.Service is empty".to_owned());
        }
        let ttl = if definition.dns.ttl.is_empty() {
            self.settings.ttl
        } else {
            parse_duration(&definition.dns.ttl).map_err(|e| format!("DNS.TTL: {e}"))?
        };
        let datacenters = if s.failover.targets.is_empty() {
            s.failover.datacenters.clone()
        } else {
            s.failover
                .targets
                .iter()
                .filter(|t| !t.datacenter.is_empty())
                .map(|t| t.datacenter.clone())
                .collect()
        };
        Ok(QueryDef {
            name: name.to_ascii_lowercase(),
            service: s.service.clone(),
            tags: s.tags.clone(),
            ignore_check_ids: s.ignore_check_ids.clone(),
            node_meta: s.node_meta.clone(),
            service_meta: s.service_meta.clone(),
            ttl,
            policy: Policy {
                only_passing: s.only_passing,
                failover: Failover {
                    nearest_n: usize::try_from(s.failover.nearest_n).unwrap_or(0),
                    datacenters,
                },
                ..self.settings.defaults.clone()
            },
            origin: if definition.template.kind.is_empty() {
                Origin::Prepared {
                    id: definition.id.clone(),
                }
            } else {
                Origin::Template {
                    id: definition.id.clone(),
                    prefix: definition.name.to_ascii_lowercase(),
                }
            },
        })
    }
}

/// Whether a definition names a cluster peer, which this resolver cannot
/// reach (logged once per definition by the loader).
pub fn uses_peers(definition: &Definition) -> bool {
    !definition.service.peer.is_empty()
        || definition
            .service
            .failover
            .targets
            .iter()
            .any(|t| !t.peer.is_empty())
}

/// The variables of a template rendering.
struct Interpolation<'a> {
    full: &'a str,
    prefix: &'a str,
    suffix: &'a str,
    matches: &'a [&'a str],
}

impl Interpolation<'_> {
    /// Replaces every `${…}` in `text`.
    fn apply(&self, text: &str) -> Result<String, String> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                return Err(format!("unclosed ${{ in {text:?}"));
            };
            out.push_str(self.value(after[..end].trim())?);
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    fn value(&self, expression: &str) -> Result<&str, String> {
        match expression {
            "name.full" => Ok(self.full),
            "name.prefix" => Ok(self.prefix),
            "name.suffix" => Ok(self.suffix),
            // Enterprise network segments; empty in the default segment.
            "agent.segment" => Ok(""),
            _ => {
                let index = expression
                    .strip_prefix("match(")
                    .and_then(|e| e.strip_suffix(')'))
                    .and_then(|n| n.trim().parse::<usize>().ok())
                    .ok_or_else(|| format!("unknown interpolation ${{{expression}}}"))?;
                Ok(self.matches.get(index).copied().unwrap_or(""))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn definitions(json: &str) -> PreparedQueries {
        PreparedQueries::new(decode_list(json.as_bytes()).unwrap(), Settings::default())
    }

    #[test]
    fn decodes_consul_listing_with_nulls_and_unknown_fields() {
        let set = definitions(
            r#"[{"ID":"8f246b77-f3e1-ff88-5b48-8ec93abf3e05","Name":"grafana","Session":"",
                 "Token":"<hidden>","Template":{"Type":"","Regexp":"","RemoveEmptyTags":false},
                 "Service":{"Service":"grafana","Failover":{"NearestN":1,"Datacenters":["dc3","dc2"],
                 "Targets":null},"OnlyPassing":true,"IgnoreCheckIDs":null,"Near":"","Tags":["Prod","!canary"],
                 "NodeMeta":null,"ServiceMeta":{"team":"obs"},"Connect":{"Enabled":false},"Peer":""},
                 "DNS":{"TTL":"10s"},"CreateIndex":20,"ModifyIndex":20}]"#,
        );
        let def = set.resolve("grafana").unwrap().unwrap();
        assert_eq!(def.service, "grafana");
        assert_eq!(def.ttl, Duration::from_secs(10));
        assert!(def.policy.only_passing);
        assert_eq!(def.policy.failover.nearest_n, 1);
        assert_eq!(def.policy.failover.datacenters, ["dc3", "dc2"]);
        assert_eq!(def.tags, ["Prod", "!canary"]);
        assert_eq!(
            def.service_meta.get("team").map(String::as_str),
            Some("obs")
        );
        let by_id = set.resolve("8f246b77-f3e1-ff88-5b48-8ec93abf3e05").unwrap();
        assert_eq!(by_id.unwrap(), def);
        assert!(set.resolve("grafana2").is_none());
        assert!(decode_list(b"null").unwrap().is_empty());
        assert!(decode_list(b"{").is_err());
    }

    #[test]
    fn targets_give_the_datacenter_order() {
        let set = definitions(
            r#"[{"ID":"1","Name":"loki","Service":{"Service":"loki","Failover":{"Targets":[
                 {"Datacenter":"dc3"},{"Peer":"other"},{"Datacenter":"dc2"}]}}}]"#,
        );
        let def = set.resolve("loki").unwrap().unwrap();
        assert_eq!(def.policy.failover.datacenters, ["dc3", "dc2"]);
    }

    #[test]
    fn exact_names_beat_templates_and_the_longest_prefix_wins() {
        let set = definitions(
            r#"[{"ID":"1","Name":"geo-","Template":{"Type":"name_prefix_match"},
                  "Service":{"Service":"${name.suffix}","Failover":{"NearestN":2}}},
                 {"ID":"2","Name":"geo-lo","Template":{"Type":"name_prefix_match"},
                  "Service":{"Service":"long-${name.suffix}"}},
                 {"ID":"3","Name":"geo-tempo","Service":{"Service":"tempo-static"}},
                 {"ID":"4","Name":"","Template":{"Type":"name_prefix_match"},
                  "Service":{"Service":"${name.full}"}}]"#,
        );
        let service = |name: &str| set.resolve(name).unwrap().unwrap().service.clone();
        assert_eq!(service("geo-grafana"), "grafana");
        assert_eq!(
            set.resolve("geo-grafana")
                .unwrap()
                .unwrap()
                .policy
                .failover
                .nearest_n,
            2
        );
        assert_eq!(service("geo-loki"), "long-ki");
        assert_eq!(service("geo-tempo"), "tempo-static");
        assert_eq!(service("anything"), "anything");
        assert_eq!(set.len(), 4);
    }

    #[test]
    fn regexp_matches_and_empty_tags() {
        let set = definitions(
            r#"[{"ID":"1","Name":"svc-","Template":{"Type":"name_prefix_match",
                  "Regexp":"^svc-([a-z]+)(?:-([a-z]+))?$","RemoveEmptyTags":true},
                  "Service":{"Service":"${match(1)}","Tags":["${match(2)}","x${match(9)}",""],
                  "NodeMeta":{"rack":"${ match(2) }"}}}]"#,
        );
        let def = set.resolve("svc-loki-blue").unwrap().unwrap();
        assert_eq!(def.service, "loki");
        assert_eq!(def.tags, ["blue", "x"]);
        assert_eq!(def.node_meta.get("rack").map(String::as_str), Some("blue"));
        let def = set.resolve("svc-loki").unwrap().unwrap();
        assert_eq!(def.tags, ["x"]);
        // A name the regexp does not match renders every match empty: a
        // query for no service, which has no instances (as in Consul).
        assert_eq!(set.resolve("svc-").unwrap().unwrap().service, "");
    }

    #[test]
    fn bad_definitions_are_skipped_with_a_reason() {
        let set = definitions(
            r#"[{"ID":"1","Name":"a","Template":{"Type":"other"},"Service":{"Service":"a"}},
                 {"ID":"2","Name":"b-","Template":{"Type":"name_prefix_match","Regexp":"("},
                  "Service":{"Service":"b"}},
                 {"ID":"3","Name":"c","Service":{"Service":"c"},"DNS":{"TTL":"soon"}},
                 {"ID":"4","Name":"d","Service":{"Service":"${nope}"},
                  "Template":{"Type":"name_prefix_match"}}]"#,
        );
        assert_eq!(set.skipped().len(), 3, "{:?}", set.skipped());
        assert!(set.resolve("a").is_none());
        assert!(set.resolve("d").unwrap().unwrap_err().contains("${nope}"));
    }

    #[test]
    fn peers_are_noticed() {
        let list = decode_list(
            br#"[{"ID":"1","Name":"a","Service":{"Service":"a","Failover":{"Targets":[{"Peer":"p"}]}}},
                 {"ID":"2","Name":"b","Service":{"Service":"b"}}]"#,
        )
        .unwrap();
        assert!(uses_peers(&list[0]));
        assert!(!uses_peers(&list[1]));
    }
}
