//! Configuration: the TOML file of DESIGN §5, its defaults and validation.
//!
//! Every key is optional. Unknown keys are errors naming the file, the key
//! and the keys allowed there. [`Config::from_toml_str`] is the test seam;
//! [`Config::load`] reads a file.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The default DNS listen address.
pub const DEFAULT_DNS_LISTEN: &str = "127.0.0.1:8600";
/// The default admin HTTP listen address.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:8653";
/// The default Consul HTTP address.
pub const DEFAULT_CONSUL_ADDRESS: &str = "http://127.0.0.1:8500";
/// The EDNS UDP payload advertised by default (DNS flag day 2020).
pub const DEFAULT_UDP_PAYLOAD: u16 = 1232;

/// A configuration error, naming the file and what is wrong in it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown keys or wrong types.
    #[error("{path}: {message}")]
    Parse {
        /// The file (or `<string>`).
        path: String,
        /// The parser's message, with line, key and allowed keys.
        message: String,
    },
    /// A value is well-typed but not acceptable.
    #[error("{path}: {key}: {message}")]
    Invalid {
        /// The file (or `<string>`).
        path: String,
        /// The key at fault, e.g. `query[2].failover.datacenters`.
        key: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}

/// What to answer when no datacenter in the chain has a usable instance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnAllUnhealthy {
    /// NXDOMAIN, as Consul answers.
    #[default]
    Nxdomain,
    /// SERVFAIL.
    Servfail,
    /// Every known instance of the first datacenter in the chain, health
    /// ignored.
    FailOpen,
}

impl OnAllUnhealthy {
    /// The value as written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Nxdomain => "nxdomain",
            Self::Servfail => "servfail",
            Self::FailOpen => "fail-open",
        }
    }
}

/// `failover = { nearest_n, datacenters }`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Failover {
    /// Try this many nearest datacenters (by RTT) after the local one.
    pub nearest_n: usize,
    /// Then these, in order (unknown, repeated and local ones skipped).
    pub datacenters: Vec<String>,
}

/// The most fast-path threads per listen address `dns.udp_threads` takes.
const MAX_UDP_THREADS: usize = 256;
/// The most `consul.max_connections` accepted.
const MAX_CONSUL_CONNECTIONS: usize = 10_000;

/// `[dns]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// UDP and TCP listen addresses.
    pub listen: Vec<SocketAddr>,
    /// The zone served.
    pub domain: String,
    /// Further zones served with the same names.
    pub alt_domains: Vec<String>,
    /// TTL of positive answers unless a query sets its own.
    #[serde(with = "duration")]
    pub ttl: Duration,
    /// SOA minimum, the TTL of negative answers.
    #[serde(with = "duration")]
    pub negative_ttl: Duration,
    /// The EDNS UDP payload size advertised and used as the UDP limit.
    pub udp_payload: u16,
    /// At most this many answers per UDP response (0: no cap).
    pub udp_answer_limit: usize,
    /// How long a query may wait for data not yet synced.
    #[serde(with = "duration")]
    pub first_answer_wait: Duration,
    /// Idle timeout of a TCP connection.
    #[serde(with = "duration")]
    pub tcp_idle_timeout: Duration,
    /// Most TCP connections served at once.
    pub tcp_max_connections: usize,
    /// Where other names in the zone go (empty: NXDOMAIN).
    pub upstream: String,
    /// The clients answered (CIDRs or addresses); others get REFUSED.
    /// Empty: every client.
    pub allow: Vec<String>,
    /// UDP responses a second per client network (/24, /56); 0: no limit.
    pub rate_limit: u32,
    /// Every this many responses over the limit, one goes out truncated
    /// so a real client retries over TCP; 0: all dropped.
    pub rate_limit_slip: u32,
    /// Serve UDP with the fast path (threads with a socket each, batched
    /// system calls, cached responses); `false`: hickory-server's loop.
    pub udp_fast_path: bool,
    /// Fast-path threads (and sockets) per listen address; 0: one per two
    /// cores, at least one.
    pub udp_threads: usize,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            listen: vec![DEFAULT_DNS_LISTEN.parse().expect("valid constant")],
            domain: "consul".to_owned(),
            alt_domains: Vec::new(),
            ttl: Duration::ZERO,
            negative_ttl: Duration::ZERO,
            udp_payload: DEFAULT_UDP_PAYLOAD,
            udp_answer_limit: 0,
            first_answer_wait: Duration::from_secs(1),
            tcp_idle_timeout: Duration::from_secs(10),
            tcp_max_connections: 1024,
            upstream: String::new(),
            allow: Vec::new(),
            rate_limit: 0,
            rate_limit_slip: 2,
            udp_fast_path: true,
            udp_threads: 0,
        }
    }
}

/// `[[consul.datacenters]]`: direct addresses for one datacenter.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatacenterAddresses {
    /// The datacenter.
    pub name: String,
    /// Its Consul HTTP addresses, tried in order before the local agent.
    pub addresses: Vec<String>,
}

/// `[consul]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsulConfig {
    /// The local agent's HTTP address.
    pub address: String,
    /// The local datacenter; empty asks the agent.
    pub datacenter: String,
    /// A file holding the ACL token.
    pub token_file: String,
    /// A PEM CA bundle for HTTPS.
    pub ca_file: String,
    /// A PEM client certificate for HTTPS, for agents that verify
    /// incoming connections (`tls.https.verify_incoming`); with
    /// `key_file`.
    pub cert_file: String,
    /// The PEM private key of `cert_file`.
    pub key_file: String,
    /// The blocking-query wait.
    #[serde(with = "duration")]
    pub wait: Duration,
    /// Use `?stale` reads.
    pub stale: bool,
    /// How long data may be used once its Consul stops answering.
    #[serde(with = "duration")]
    pub max_stale: Duration,
    /// HTTP timeout of non-blocking requests (blocking ones add `wait`).
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// How often each datacenter's Consul is probed (`/v1/status/leader`)
    /// so an unreachable one is noticed, and its data flagged stale, at
    /// once. A probe may take twice this long.
    #[serde(with = "duration")]
    pub probe_interval: Duration,
    /// Stop an on-demand watch unused this long.
    #[serde(with = "duration")]
    pub watch_idle: Duration,
    /// The most watches at once.
    pub max_watches: usize,
    /// The most connections to one Consul address (scheme, host, port).
    /// Keep it under Consul's `limits.http_max_conns_per_client` (200).
    pub max_connections: usize,
    /// Speak HTTP/2 to `https://` addresses (Consul's HTTPS listener does):
    /// one connection then carries 240 blocking reads instead of one.
    pub http2: bool,
    /// Answer remote-DC instances with their WAN addresses.
    pub translate_wan_addrs: bool,
    /// Direct addresses per datacenter.
    pub datacenters: Vec<DatacenterAddresses>,
}

impl Default for ConsulConfig {
    fn default() -> Self {
        Self {
            address: DEFAULT_CONSUL_ADDRESS.to_owned(),
            datacenter: String::new(),
            token_file: String::new(),
            ca_file: String::new(),
            cert_file: String::new(),
            key_file: String::new(),
            wait: Duration::from_secs(300),
            stale: true,
            max_stale: Duration::from_secs(72 * 3600),
            timeout: Duration::from_secs(5),
            probe_interval: Duration::from_millis(250),
            watch_idle: Duration::from_secs(3600),
            max_watches: 10_000,
            max_connections: 150,
            http2: true,
            translate_wan_addrs: false,
            datacenters: Vec::new(),
        }
    }
}

/// `[queries.defaults]`: the policy of implicit queries and the defaults
/// of `[[query]]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Serve only instances whose checks all pass.
    pub only_passing: bool,
    /// Fail over when fewer usable instances than this remain.
    pub min_healthy: usize,
    /// Return to a recovered datacenter only after it stayed healthy this
    /// long.
    #[serde(with = "duration")]
    pub failback_after: Duration,
    /// What to answer when nothing is usable anywhere.
    pub on_all_unhealthy: OnAllUnhealthy,
    /// The failover chain after the local datacenter.
    pub failover: Failover,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            only_passing: false,
            min_healthy: 1,
            failback_after: Duration::ZERO,
            on_all_unhealthy: OnAllUnhealthy::Nxdomain,
            failover: Failover::default(),
        }
    }
}

/// `[queries]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueriesConfig {
    /// Serve Consul's prepared queries.
    pub prepared: bool,
    /// `<service>.query.consul` for any service.
    pub implicit: bool,
    /// Policy defaults.
    pub defaults: Policy,
}

impl Default for QueriesConfig {
    fn default() -> Self {
        Self {
            prepared: true,
            implicit: true,
            defaults: Policy::default(),
        }
    }
}

/// `[[query]]` as written: policy keys left out take `[queries.defaults]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QueryConfig {
    /// The name answered as `<name>.query.<domain>`.
    pub name: String,
    /// The Consul service (default: `name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Required tags; `!tag` excludes.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Checks that do not count.
    #[serde(default)]
    pub ignore_check_ids: Vec<String>,
    /// Required node metadata.
    #[serde(default)]
    pub node_meta: BTreeMap<String, String>,
    /// Required service metadata.
    #[serde(default)]
    pub service_meta: BTreeMap<String, String>,
    /// TTL of this query's answers (default `dns.ttl`).
    #[serde(
        default,
        with = "optional_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl: Option<Duration>,
    /// Overrides `[queries.defaults].only_passing`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub only_passing: Option<bool>,
    /// Overrides `[queries.defaults].min_healthy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_healthy: Option<usize>,
    /// Overrides `[queries.defaults].failback_after`.
    #[serde(
        default,
        with = "optional_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub failback_after: Option<Duration>,
    /// Overrides `[queries.defaults].on_all_unhealthy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_all_unhealthy: Option<OnAllUnhealthy>,
    /// Overrides `[queries.defaults].failover`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<Failover>,
}

/// `[admin]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// The admin HTTP address; empty turns it off.
    pub listen: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_ADMIN_LISTEN.to_owned(),
        }
    }
}

/// `[register]`: the resolver's own service in the local Consul agent,
/// so Prometheus finds its metrics through `consul_sd_configs`. Present
/// (even empty) turns registration on.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegisterConfig {
    /// The service name.
    pub name: String,
    /// The service ID, unique on the agent; empty: the name.
    pub id: String,
    /// The service tags.
    pub tags: Vec<String>,
    /// The service address; empty: `admin.listen`'s IP when it is a
    /// specific one, else the agent's node address.
    pub address: String,
    /// Service metadata.
    pub meta: BTreeMap<String, String>,
    /// How often the agent checks `/health`; also how often the resolver
    /// makes sure the agent still has the registration.
    #[serde(with = "duration")]
    pub check_interval: Duration,
    /// How long the agent waits for `/health`.
    #[serde(with = "duration")]
    pub check_timeout: Duration,
    /// Consul removes the service after its check stayed critical this
    /// long (at least 1m); 0s: never.
    #[serde(with = "duration")]
    pub deregister_critical_after: Duration,
}

impl Default for RegisterConfig {
    fn default() -> Self {
        Self {
            name: "consul-failover-dns".to_owned(),
            id: String::new(),
            tags: vec!["metrics".to_owned()],
            address: String::new(),
            meta: BTreeMap::new(),
            check_interval: Duration::from_secs(10),
            check_timeout: Duration::from_secs(5),
            deregister_critical_after: Duration::ZERO,
        }
    }
}

impl RegisterConfig {
    /// The service ID: `id`, else the name.
    pub fn service_id(&self) -> &str {
        if self.id.is_empty() {
            &self.name
        } else {
            &self.id
        }
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
}

/// The whole configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[dns]`.
    pub dns: DnsConfig,
    /// `[consul]`.
    pub consul: ConsulConfig,
    /// `[queries]`.
    pub queries: QueriesConfig,
    /// `[[query]]`.
    pub query: Vec<QueryConfig>,
    /// `[admin]`.
    pub admin: AdminConfig,
    /// `[register]`; absent: no registration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub register: Option<RegisterConfig>,
    /// `[log]`.
    pub log: LogConfig,
}

/// A query with every policy value settled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryDef {
    /// The query name.
    pub name: String,
    /// The Consul service.
    pub service: String,
    /// Required tags; `!tag` excludes.
    pub tags: Vec<String>,
    /// Checks that do not count.
    pub ignore_check_ids: Vec<String>,
    /// Required node metadata.
    pub node_meta: BTreeMap<String, String>,
    /// Required service metadata.
    pub service_meta: BTreeMap<String, String>,
    /// Answer TTL.
    pub ttl: Duration,
    /// Health policy and failover chain.
    pub policy: Policy,
    /// Where the definition came from.
    pub origin: Origin,
}

/// Where a query definition came from (shown by `/v1/explain`; names the
/// `query` label of the answer metrics).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Origin {
    /// A `[[query]]` of the configuration.
    Config,
    /// A prepared query of Consul, by ID.
    Prepared {
        /// Its UUID.
        id: String,
    },
    /// A prepared query template of Consul, rendered for the name asked.
    Template {
        /// Its UUID.
        id: String,
        /// Its name: the prefix it matches.
        prefix: String,
    },
    /// `queries.implicit` (a service of that name), or a `.service.`
    /// lookup.
    #[default]
    Implicit,
}

impl QueryDef {
    /// The `query` label of the answer and failover metrics: the
    /// `[[query]]` or prepared query name (a template's prefix). `None`
    /// for implicit queries, so the label set stays as small as the
    /// definitions.
    pub fn metric_label(&self) -> Option<&str> {
        match &self.origin {
            Origin::Config => Some(&self.name),
            Origin::Prepared { id } if self.name.is_empty() => Some(id),
            Origin::Prepared { .. } => Some(&self.name),
            Origin::Template { prefix, .. } => Some(prefix),
            Origin::Implicit => None,
        }
    }

    /// Where the definition came from, for people.
    pub fn origin_text(&self) -> String {
        match &self.origin {
            Origin::Config => format!("[[query]] {:?} of the configuration", self.name),
            Origin::Prepared { id } => format!("Consul prepared query {:?} (ID {id})", self.name),
            Origin::Template { id, prefix } => {
                format!(
                    "Consul prepared query template {prefix:?} (ID {id}), rendered for {:?}",
                    self.name
                )
            }
            Origin::Implicit => format!("the service {:?} (queries.implicit)", self.service),
        }
    }

    /// The implicit query for a service: no filters, the defaults.
    pub fn implicit(service: &str, defaults: &Policy, ttl: Duration) -> Self {
        Self {
            name: service.to_owned(),
            service: service.to_owned(),
            tags: Vec::new(),
            ignore_check_ids: Vec::new(),
            node_meta: BTreeMap::new(),
            service_meta: BTreeMap::new(),
            ttl,
            policy: defaults.clone(),
            origin: Origin::Implicit,
        }
    }
}

impl Config {
    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml_str(&text, &path.display().to_string())
    }

    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|error| ConfigError::Parse {
            path: origin.to_owned(),
            message: error.to_string().trim_end().to_owned(),
        })?;
        config.validate(origin)?;
        Ok(config)
    }

    /// The effective configuration as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|error| format!("# cannot print: {error}\n"))
    }

    /// Every `[[query]]` with its policy settled.
    pub fn query_defs(&self) -> Vec<QueryDef> {
        self.query
            .iter()
            .map(|q| {
                let d = &self.queries.defaults;
                QueryDef {
                    name: q.name.to_ascii_lowercase(),
                    service: q.service.clone().unwrap_or_else(|| q.name.clone()),
                    tags: q.tags.clone(),
                    ignore_check_ids: q.ignore_check_ids.clone(),
                    node_meta: q.node_meta.clone(),
                    service_meta: q.service_meta.clone(),
                    ttl: q.ttl.unwrap_or(self.dns.ttl),
                    policy: Policy {
                        only_passing: q.only_passing.unwrap_or(d.only_passing),
                        min_healthy: q.min_healthy.unwrap_or(d.min_healthy),
                        failback_after: q.failback_after.unwrap_or(d.failback_after),
                        on_all_unhealthy: q.on_all_unhealthy.unwrap_or(d.on_all_unhealthy),
                        failover: q.failover.clone().unwrap_or_else(|| d.failover.clone()),
                    },
                    origin: Origin::Config,
                }
            })
            .collect()
    }

    /// Checks what serde cannot: ranges, names, addresses, duplicates.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: origin.to_owned(),
            key: key.to_owned(),
            message,
        };
        if self.dns.listen.is_empty() {
            return Err(invalid(
                "dns.listen",
                "is empty; give at least one address, e.g. [\"127.0.0.1:8600\"]".into(),
            ));
        }
        for (key, domain) in std::iter::once(("dns.domain", &self.dns.domain))
            .chain(self.dns.alt_domains.iter().map(|d| ("dns.alt_domains", d)))
        {
            check_domain(domain).map_err(|m| invalid(key, m))?;
        }
        if self.dns.udp_payload < 512 {
            return Err(invalid(
                "dns.udp_payload",
                format!(
                    "{} is below 512, the DNS minimum; use 1232",
                    self.dns.udp_payload
                ),
            ));
        }
        if !self.dns.upstream.is_empty() && self.dns.upstream.parse::<SocketAddr>().is_err() {
            return Err(invalid(
                "dns.upstream",
                format!(
                    "{:?} is not IP:PORT, e.g. \"127.0.0.1:8601\"",
                    self.dns.upstream
                ),
            ));
        }
        if let Err(message) = parse_allow(&self.dns.allow) {
            return Err(invalid("dns.allow", message));
        }
        if self.dns.tcp_max_connections == 0 {
            return Err(invalid(
                "dns.tcp_max_connections",
                "must be at least 1".into(),
            ));
        }
        check_url(&self.consul.address).map_err(|m| invalid("consul.address", m))?;
        match (
            self.consul.cert_file.is_empty(),
            self.consul.key_file.is_empty(),
        ) {
            (false, true) => {
                return Err(invalid(
                    "consul.key_file",
                    "is empty while consul.cert_file is set; give the certificate's private key"
                        .into(),
                ));
            }
            (true, false) => {
                return Err(invalid(
                    "consul.cert_file",
                    "is empty while consul.key_file is set; give the client certificate".into(),
                ));
            }
            _ => {}
        }
        for (i, dc) in self.consul.datacenters.iter().enumerate() {
            if dc.name.is_empty() {
                return Err(invalid(
                    &format!("consul.datacenters[{i}].name"),
                    "is empty".into(),
                ));
            }
            for address in &dc.addresses {
                check_url(address)
                    .map_err(|m| invalid(&format!("consul.datacenters[{i}].addresses"), m))?;
            }
        }
        if self.consul.wait.is_zero() {
            return Err(invalid(
                "consul.wait",
                "must be above 0s, e.g. \"5m\"".into(),
            ));
        }
        if self.consul.timeout.is_zero() {
            return Err(invalid(
                "consul.timeout",
                "must be above 0s, e.g. \"5s\"".into(),
            ));
        }
        if self.consul.probe_interval < Duration::from_millis(10) {
            return Err(invalid(
                "consul.probe_interval",
                "must be at least 10ms, e.g. \"250ms\"".into(),
            ));
        }
        if self.consul.watch_idle < Duration::from_secs(1) {
            return Err(invalid(
                "consul.watch_idle",
                format!(
                    "{} is too short: on-demand watches would stop between queries; use at least \"1s\", e.g. \"1h\"",
                    duration::format(self.consul.watch_idle)
                ),
            ));
        }
        if self.dns.udp_threads > MAX_UDP_THREADS {
            return Err(invalid(
                "dns.udp_threads",
                format!("must be at most {MAX_UDP_THREADS} (0: one per two cores)"),
            ));
        }
        if !(1..=MAX_CONSUL_CONNECTIONS).contains(&self.consul.max_connections) {
            return Err(invalid(
                "consul.max_connections",
                format!("must be 1 to {MAX_CONSUL_CONNECTIONS}"),
            ));
        }
        if self.consul.max_watches == 0 {
            return Err(invalid("consul.max_watches", "must be at least 1".into()));
        }
        if !self.admin.listen.is_empty() && self.admin.listen.parse::<SocketAddr>().is_err() {
            return Err(invalid(
                "admin.listen",
                format!("{:?} is not IP:PORT (or \"\" for off)", self.admin.listen),
            ));
        }
        if let Some(register) = &self.register {
            check_register(register, &self.admin.listen)
                .map_err(|(key, m)| invalid(&format!("register.{key}"), m))?;
        }
        check_policy(
            &self.queries.defaults.failover,
            self.queries.defaults.min_healthy,
        )
        .map_err(|(key, m)| invalid(&format!("queries.defaults.{key}"), m))?;
        let mut names = HashSet::new();
        for (i, q) in self.query.iter().enumerate() {
            let key = |k: &str| format!("query[{i}].{k}");
            check_query_name(&q.name).map_err(|m| invalid(&key("name"), m))?;
            if !names.insert(q.name.to_ascii_lowercase()) {
                return Err(invalid(
                    &key("name"),
                    format!("{:?} is defined twice; query names must be unique", q.name),
                ));
            }
            if q.service.as_deref() == Some("") {
                return Err(invalid(
                    &key("service"),
                    "is empty; leave it out to use name".into(),
                ));
            }
            let failover = q
                .failover
                .as_ref()
                .unwrap_or(&self.queries.defaults.failover);
            let min = q.min_healthy.unwrap_or(self.queries.defaults.min_healthy);
            check_policy(failover, min).map_err(|(k, m)| invalid(&key(k), m))?;
        }
        Ok(())
    }
}

/// `[register]` against what Consul accepts (its agent's validation,
/// `AgentRegisterService`), so a mistake is named at start-up rather than
/// in a 400 from the agent.
fn check_register(register: &RegisterConfig, admin: &str) -> Result<(), (&'static str, String)> {
    if admin.is_empty() {
        return Err((
            "name",
            "[register] needs the admin listener (its /health is the check, its /metrics what Prometheus scrapes); set admin.listen or remove [register]".into(),
        ));
    }
    if register.name.is_empty() {
        return Err(("name", "is empty, e.g. \"consul-failover-dns\"".into()));
    }
    if !register.address.is_empty() {
        match register.address.parse::<std::net::IpAddr>() {
            Ok(ip) if ip.is_unspecified() => {
                return Err((
                    "address",
                    format!(
                        "{:?} is not an address Consul accepts; leave it \"\" for the agent's node address",
                        register.address
                    ),
                ));
            }
            Ok(_) => {}
            Err(_) if check_domain(&register.address).is_ok() => {}
            Err(_) => {
                return Err((
                    "address",
                    format!(
                        "{:?} is neither an IP address nor a host name",
                        register.address
                    ),
                ));
            }
        }
    }
    for key in register.meta.keys() {
        let valid = !key.is_empty()
            && key.len() <= 128
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid || key.starts_with("consul-") {
            return Err((
                "meta",
                format!(
                    "{key:?}: Consul takes keys of up to 128 letters, digits, '_' and '-', not starting with \"consul-\""
                ),
            ));
        }
    }
    if register.check_interval < Duration::from_secs(1) {
        return Err((
            "check_interval",
            "must be at least 1s (Consul's minimum), e.g. \"10s\"".into(),
        ));
    }
    if register.check_timeout.is_zero() {
        return Err(("check_timeout", "must be above 0s, e.g. \"5s\"".into()));
    }
    if !register.deregister_critical_after.is_zero()
        && register.deregister_critical_after < Duration::from_secs(60)
    {
        return Err((
            "deregister_critical_after",
            "must be 0s (never) or at least 1m (Consul raises anything shorter to 1m)".into(),
        ));
    }
    Ok(())
}

/// `dns.allow` as networks: each entry a CIDR (`10.0.0.0/8`,
/// `fd00::/8`) or a single address.
pub fn parse_allow(entries: &[String]) -> Result<Vec<ipnet::IpNet>, String> {
    entries
        .iter()
        .map(|entry| {
            let entry = entry.trim();
            entry
                .parse::<ipnet::IpNet>()
                .map(|net| net.trunc())
                .or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    format!("{entry:?} is not a network or an address, e.g. \"10.0.0.0/8\", \"127.0.0.1\", \"fd00::/8\"")
                })
        })
        .collect()
}

fn check_domain(domain: &str) -> Result<(), String> {
    let trimmed = domain.trim_end_matches('.');
    if trimmed.is_empty()
        || trimmed.split('.').any(|l| l.is_empty() || l.len() > 63)
        || !trimmed
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err(format!("{domain:?} is not a DNS domain, e.g. \"consul\""));
    }
    Ok(())
}

fn check_url(address: &str) -> Result<(), String> {
    match url::Url::parse(address) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Ok(()),
        _ => Err(format!(
            "{address:?} is not an http:// or https:// URL, e.g. \"http://127.0.0.1:8500\""
        )),
    }
}

fn check_query_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.len() > 200
        || name.split('.').any(|l| l.is_empty() || l.len() > 63)
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(format!(
            "{name:?} cannot be a DNS name; use letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

fn check_policy(failover: &Failover, min_healthy: usize) -> Result<(), (&'static str, String)> {
    if min_healthy == 0 {
        return Err((
            "min_healthy",
            "must be at least 1 (1 is Consul's behaviour)".into(),
        ));
    }
    let mut seen = HashSet::new();
    for dc in &failover.datacenters {
        if dc.is_empty() {
            return Err(("failover.datacenters", "holds an empty name".into()));
        }
        if !seen.insert(dc) {
            return Err(("failover.datacenters", format!("{dc:?} is listed twice")));
        }
    }
    Ok(())
}

/// Durations as Go-like strings: `"0s"`, `"5m"`, `"72h"`, `"1m30s"`.
/// Parses a duration as the configuration writes them (`"10s"`, `"5m"`,
/// `"1h30m"`), as Consul's Go durations mostly are.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    duration::parse(text)
}

/// Writes a duration as the configuration does (`"10s"`, `"1h30m"`), which
/// Consul's Go durations read too.
pub fn format_duration(value: Duration) -> String {
    duration::format(value)
}

mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*value))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).map_err(serde::de::Error::custom)
    }

    pub(super) fn parse(text: &str) -> Result<Duration, String> {
        humantime::parse_duration(text.trim()).map_err(|_| {
            format!("{text:?} is not a duration; write e.g. \"0s\", \"500ms\", \"5m\", \"72h\"")
        })
    }

    pub(super) fn format(value: Duration) -> String {
        if value.is_zero() {
            "0s".to_owned()
        } else {
            humantime::format_duration(value)
                .to_string()
                .replace(' ', "")
        }
    }
}

/// `Option<Duration>` in the same format.
mod optional_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        value: &Option<Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(v) => s.serialize_str(&super::duration::format(*v)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        super::duration::parse(&text)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(text, "test.toml")
    }

    #[test]
    fn empty_file_gives_the_documented_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.dns.listen, vec!["127.0.0.1:8600".parse().unwrap()]);
        assert_eq!(c.dns.domain, "consul");
        assert_eq!(c.dns.udp_payload, 1232);
        assert_eq!(c.dns.first_answer_wait, Duration::from_secs(1));
        assert_eq!(c.consul.wait, Duration::from_secs(300));
        assert_eq!(c.consul.max_stale, Duration::from_secs(72 * 3600));
        assert!(c.consul.stale);
        assert!(c.queries.implicit && c.queries.prepared);
        assert_eq!(c.queries.defaults.min_healthy, 1);
        assert_eq!(c.admin.listen, "127.0.0.1:8653");
    }

    #[test]
    fn unknown_keys_name_the_file_the_key_and_the_choices() {
        let e = parse("[dns]\nlisen = [\"127.0.0.1:53\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("test.toml: "), "{e}");
        assert!(e.contains("lisen") && e.contains("listen"), "{e}");
        let e = parse("[[query]]\nname = \"a\"\nfailover = { nearest = 1 }\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("nearest") && e.contains("nearest_n"), "{e}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("[dns]\nttl = \"soon\"\n", "soon"),
            ("[dns]\nudp_payload = 100\n", "dns.udp_payload"),
            ("[dns]\ndomain = \"bad domain\"\n", "dns.domain"),
            ("[consul]\naddress = \"127.0.0.1:8500\"\n", "consul.address"),
            ("[admin]\nlisten = \"nowhere\"\n", "admin.listen"),
            ("[consul]\nwatch_idle = \"0s\"\n", "consul.watch_idle"),
            ("[dns]\nudp_threads = 100000\n", "dns.udp_threads"),
            ("[consul]\nmax_connections = 0\n", "consul.max_connections"),
            (
                "[consul]\nprobe_interval = \"1ms\"\n",
                "consul.probe_interval",
            ),
            (
                "[queries.defaults]\nmin_healthy = 0\n",
                "queries.defaults.min_healthy",
            ),
            (
                "[queries.defaults]\non_all_unhealthy = \"panic\"\n",
                "fail-open",
            ),
            (
                "[[query]]\nname = \"a\"\n[[query]]\nname = \"A\"\n",
                "query[1].name",
            ),
            (
                "[[query]]\nname = \"a\"\nfailover = { datacenters = [\"dc2\", \"dc2\"] }\n",
                "query[0].failover.datacenters",
            ),
        ];
        for (text, needle) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(
                e.contains(needle),
                "{text:?} gave {e:?}, expected it to mention {needle:?}"
            );
        }
    }

    #[test]
    fn query_policy_falls_back_to_the_defaults() {
        let c = parse(
            "[dns]\nttl = \"5s\"\n[queries.defaults]\nonly_passing = true\nfailover = { nearest_n = 2 }\n\
             [[query]]\nname = \"Grafana\"\nmin_healthy = 2\nttl = \"30s\"\n\
             [[query]]\nname = \"logs\"\nservice = \"loki\"\nfailover = { datacenters = [\"dc2\"] }\n",
        )
        .unwrap();
        let defs = c.query_defs();
        assert_eq!(defs[0].name, "grafana");
        assert_eq!(defs[0].service, "Grafana");
        assert_eq!(defs[0].ttl, Duration::from_secs(30));
        assert_eq!(defs[0].policy.min_healthy, 2);
        assert!(defs[0].policy.only_passing);
        assert_eq!(defs[0].policy.failover.nearest_n, 2);
        assert_eq!(defs[1].service, "loki");
        assert_eq!(defs[1].ttl, Duration::from_secs(5));
        assert_eq!(
            defs[1].policy.failover,
            Failover {
                nearest_n: 0,
                datacenters: vec!["dc2".into()]
            }
        );
    }

    #[test]
    fn effective_config_round_trips() {
        let c =
            parse("[consul]\nwait = \"1m30s\"\n[[query]]\nname = \"x\"\nttl = \"10s\"\n").unwrap();
        let again = parse(&c.to_toml()).unwrap();
        assert_eq!(c, again);
        assert!(c.to_toml().contains("wait = \"1m30s\""), "{}", c.to_toml());
    }

    #[test]
    fn register_is_off_unless_its_table_is_there_and_is_checked() {
        assert_eq!(parse("").unwrap().register, None);
        let c = parse("[register]\n").unwrap();
        let register = c.register.clone().expect("[register] turns it on");
        assert_eq!(register, RegisterConfig::default());
        assert_eq!(register.service_id(), "consul-failover-dns");
        assert_eq!(register.tags, ["metrics"]);
        assert_eq!(parse(&c.to_toml()).unwrap(), c, "{}", c.to_toml());
        let cases = [
            (
                "[admin]\nlisten = \"\"\n[register]\n",
                "register.name: [register] needs the admin listener",
            ),
            ("[register]\nname = \"\"\n", "register.name: is empty"),
            (
                "[register]\naddress = \"0.0.0.0\"\n",
                "register.address: \"0.0.0.0\" is not an address Consul accepts",
            ),
            (
                "[register]\naddress = \"not a host\"\n",
                "register.address: \"not a host\" is neither",
            ),
            (
                "[register]\nmeta = { \"consul-x\" = \"1\" }\n",
                "register.meta: \"consul-x\"",
            ),
            (
                "[register]\nmeta = { \"a.b\" = \"1\" }\n",
                "register.meta: \"a.b\"",
            ),
            (
                "[register]\ncheck_interval = \"500ms\"\n",
                "register.check_interval: must be at least 1s",
            ),
            (
                "[register]\ncheck_timeout = \"0s\"\n",
                "register.check_timeout: must be above 0s",
            ),
            (
                "[register]\nderegister_critical_after = \"30s\"\n",
                "register.deregister_critical_after: must be 0s (never) or at least 1m",
            ),
            ("[register]\nport = 1\n", "unknown field `port`"),
        ];
        for (text, needle) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(
                e.contains(needle),
                "{text:?} gave {e:?}, expected {needle:?}"
            );
        }
        let fine = parse(
            "[register]\naddress = \"metrics.host1.example\"\nderegister_critical_after = \"10m\"\n",
        );
        assert!(fine.is_ok(), "{fine:?}");
    }

    #[test]
    fn dns_allow_takes_networks_and_addresses() {
        let c = parse(
            "[dns]\nallow = [\"10.0.0.0/8\", \"127.0.0.1\", \"fd00::/8\", \"10.1.2.3/16\"]\n",
        )
        .unwrap();
        let nets = parse_allow(&c.dns.allow).unwrap();
        let shown: Vec<String> = nets.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            ["10.0.0.0/8", "127.0.0.1/32", "fd00::/8", "10.1.0.0/16"]
        );
        let e = parse("[dns]\nallow = [\"10.0.0.0/33\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("dns.allow: \"10.0.0.0/33\" is not a network"),
            "{e}"
        );
        let e = parse("[dns]\nallow = [\"localhost\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("dns.allow: \"localhost\""), "{e}");
    }

    #[test]
    fn a_client_certificate_needs_its_key_and_the_key_its_certificate() {
        let e = parse("[consul]\ncert_file = \"/etc/c.pem\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("consul.key_file: is empty while consul.cert_file is set"),
            "{e}"
        );
        let e = parse("[consul]\nkey_file = \"/etc/k.pem\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("consul.cert_file: is empty while consul.key_file is set"),
            "{e}"
        );
        assert!(parse("[consul]\ncert_file = \"c\"\nkey_file = \"k\"\n").is_ok());
    }

    #[test]
    fn every_shipped_config_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
                seen += 1;
            }
        }
        assert!(seen > 0, "no .toml files in {}", dir.display());
    }
}
