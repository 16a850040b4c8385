//! The answer logic: a question, the health view and the query policy in,
//! an [`Answer`] out. Pure: no I/O and no clock; the caller passes the SOA
//! serial and the random source, so every branch is unit-testable.
//!
//! Names (DESIGN §2), relative to the zone (`consul.` or an alt domain):
//! `<q>.query[.<dc>]`, `_<q>._tcp.query[.<dc>]`, `[<tag>.]<svc>.service[.<dc>]`,
//! `_<svc>._<tag|tcp>.service[.<dc>]`, `<node>.node[.<dc>]`,
//! `<hex>.addr[.<dc>]`, the apex, and the empty non-terminals above them.
//!
//! `<q>` resolves to a `[[query]]` of the configuration, else a prepared
//! query defined in Consul (ID, exact name, longest template prefix), else,
//! with `queries.implicit`, the service of that name.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, SOA, SRV};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use crate::config::{Config, OnAllUnhealthy, Policy, QueryDef};
use crate::health::{
    Addresses, CheckStatus, Data, Freshness, HealthLookup, Instance, ServiceHealth, ServiceKey,
};
use crate::prepared::{PreparedQueries, Settings};

/// A question as asked: the name keeps the client's letter case.
#[derive(Clone, Debug)]
pub struct Question {
    /// QNAME, as sent.
    pub name: Name,
    /// QTYPE.
    pub qtype: RecordType,
    /// QCLASS.
    pub qclass: DNSClass,
}

/// What kind of name a question was about (a metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `*.query.<domain>`.
    Query,
    /// `*.service.<domain>`.
    Service,
    /// `*.addr.<domain>`.
    Addr,
    /// `*.node.<domain>`.
    Node,
    /// The apex and empty non-terminals.
    Zone,
    /// Another name in the zone.
    Other,
    /// A name outside the zone.
    OutOfZone,
}

impl Kind {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Query => "query",
            Self::Service => "service",
            Self::Addr => "addr",
            Self::Node => "node",
            Self::Zone => "zone",
            Self::Other => "other",
            Self::OutOfZone => "out_of_zone",
        }
    }
}

/// A complete answer.
#[derive(Clone, Debug)]
pub struct Answer {
    /// RCODE.
    pub rcode: ResponseCode,
    /// Answer section.
    pub answers: Vec<Record>,
    /// Authority section (the apex SOA on negative answers).
    pub authorities: Vec<Record>,
    /// Additional section (SRV targets' addresses).
    pub additionals: Vec<Record>,
    /// What was asked about.
    pub kind: Kind,
    /// The datacenter whose instances answered, if any.
    pub datacenter: Option<String>,
    /// Whether that datacenter is not the local one.
    pub remote: bool,
    /// An Extended DNS Error (RFC 8914) info code and text.
    pub extended_error: Option<(u16, String)>,
    /// Pairs of the failover chain with no data yet, behind the
    /// datacenter that answered: start their watches (without waiting),
    /// so a later failover is a memory read.
    pub warm: Vec<ServiceKey>,
    /// Whether the data answered from is stale (its Consul stopped
    /// answering): flagged with Extended DNS Error 3.
    pub stale: bool,
    /// Whether the answer depends on the clock as well as on the view
    /// (`failback_after` holds it on a failover datacenter): it must be
    /// worked out again for every query, never reused.
    pub volatile: bool,
    /// The `query` label of the answer metrics: the `[[query]]` or
    /// prepared query answered, [`IMPLICIT`] for an implicit query; `None`
    /// for other names.
    pub query: Option<String>,
}

/// The `query` label of answers to implicit queries (no definition names
/// them; a name cannot hold parentheses).
pub const IMPLICIT: &str = "(implicit)";

/// How an answer was chosen, filled in when [`Context::trace`] asks for
/// it (`/v1/explain`).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Trace {
    /// Where the definition answered came from.
    pub definition: Option<String>,
    /// The Consul service looked up.
    pub service: Option<String>,
    /// The policy applied, as in the configuration.
    pub policy: Option<PolicyTrace>,
    /// Every datacenter of the failover chain, in order.
    pub datacenters: Vec<DatacenterTrace>,
    /// The datacenter whose instances answered.
    pub chosen: Option<String>,
    /// Why, in one word: `local_healthy`, `failover`, `stale`,
    /// `failback_held`, `below_min_healthy`, `all_unhealthy`,
    /// `not_ready`, `unknown`, `pending`, `no_such_service`,
    /// `not_a_query` or `no_such_name`.
    pub reason: String,
    /// Why, in a sentence.
    pub detail: String,
}

/// The policy values `/v1/explain` shows.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PolicyTrace {
    /// `only_passing`.
    pub only_passing: bool,
    /// `min_healthy`.
    pub min_healthy: usize,
    /// `failback_after`, in seconds.
    pub failback_after_seconds: f64,
    /// `on_all_unhealthy`.
    pub on_all_unhealthy: String,
}

/// One datacenter of a chain, as resolution saw it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DatacenterTrace {
    /// Its name.
    pub name: String,
    /// `fresh`, `stale` (its Consul stopped answering; data still used),
    /// `unknown` (stale for longer than `consul.max_stale`), `pending` (no
    /// data yet), `unreachable` (no data, and its Consul does not answer)
    /// or `not_in_catalog` (the service does not exist there).
    pub state: &'static str,
    /// Instances that pass the definition's filters and health rules.
    pub usable: Option<usize>,
    /// Every instance Consul lists for the service there.
    pub total: Option<usize>,
    /// Whether its Consul answers.
    pub reachable: bool,
}

impl Answer {
    /// SERVFAIL with Extended DNS Error "Not Ready" naming what is missing.
    pub fn not_ready(needs: &Needs) -> Self {
        let mut answer = Self::empty(needs.kind, ResponseCode::ServFail);
        answer.extended_error = Some((
            EDE_NOT_READY,
            format!("no data from Consul yet for {}", needs.describe()),
        ));
        answer
    }

    fn empty(kind: Kind, rcode: ResponseCode) -> Self {
        Self {
            rcode,
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
            kind,
            datacenter: None,
            remote: false,
            extended_error: None,
            warm: Vec::new(),
            stale: false,
            volatile: false,
            query: None,
        }
    }

    /// SERVFAIL with an Extended DNS Error.
    pub fn servfail(kind: Kind, code: u16, text: String) -> Self {
        let mut answer = Self::empty(kind, ResponseCode::ServFail);
        answer.extended_error = Some((code, text));
        answer
    }
}

/// The result of one resolution pass.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// A final answer.
    Answer(Answer),
    /// Data the answer needs is not synced yet: start these watches, wait,
    /// and resolve again.
    Pending(Needs),
    /// A name in the zone this resolver does not answer itself: relay the
    /// question to `dns.upstream` (the Consul agent's DNS). Only returned
    /// when an upstream is configured.
    Forward(Kind),
}

/// Data a pending answer waits for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Needs {
    /// What kind of name is waiting (for the answer given if it times out).
    pub kind: Kind,
    /// Service health per (datacenter, service).
    pub services: Vec<ServiceKey>,
    /// Catalogs of these datacenters.
    pub catalogs: Vec<String>,
}

impl Needs {
    /// What is waited for, for people: "web in dc1, the catalog of dc2".
    pub fn describe(&self) -> String {
        let waiting: Vec<String> = self
            .services
            .iter()
            .map(|k| format!("{} in {}", k.service, k.datacenter))
            .chain(
                self.catalogs
                    .iter()
                    .map(|dc| format!("the catalog of {dc}")),
            )
            .collect();
        waiting.join(", ")
    }
}

/// Per-call inputs that would otherwise need the clock or a global RNG.
pub struct Context<'a> {
    /// The SOA serial (Unix seconds, as Consul uses).
    pub serial: u32,
    /// Shuffles answers.
    pub rng: &'a mut fastrand::Rng,
    /// A monotonic clock reading, for `failback_after`.
    pub now: Duration,
    /// Filled in with how the answer was chosen, when set.
    pub trace: Option<&'a mut Trace>,
}

impl Context<'_> {
    /// Records the reason of the choice, if tracing.
    fn reason(&mut self, chosen: Option<&str>, reason: &str, detail: String) {
        if let Some(trace) = self.trace.as_deref_mut() {
            trace.chosen = chosen.map(str::to_owned);
            trace.reason = reason.to_owned();
            trace.detail = detail;
        }
    }
}

/// EDE info code 14, "Not Ready" (RFC 8914 §4.15).
pub const EDE_NOT_READY: u16 = 14;
/// EDE info code 0, "Other Error" (RFC 8914 §4.1).
pub const EDE_OTHER: u16 = 0;
/// EDE info code 3, "Stale Answer" (RFC 8914 §4.4).
pub const EDE_STALE_ANSWER: u16 = 3;
/// EDE info code 22, "No Reachable Authority" (RFC 8914 §4.23).
pub const EDE_NO_REACHABLE_AUTHORITY: u16 = 22;

/// One datacenter of a chain with data for the query.
struct Candidate {
    position: usize,
    health: Arc<ServiceHealth>,
    usable: usize,
    stale: bool,
}

/// What one datacenter of a chain offers.
enum Step {
    /// Its catalog does not list the service.
    Skip,
    /// Never synced, and its Consul does not answer.
    NotReady,
    /// Stale for longer than `consul.max_stale`.
    Unknown,
    /// Data is on its way: wait for it.
    Wait(Needs),
    /// Data to answer from.
    Use(Candidate),
}

/// The `failback_after` memory of one query seen from one datacenter.
#[derive(Debug)]
struct Failback {
    /// The datacenter answers come from.
    current: String,
    /// An earlier datacenter of the chain that is good again, and since
    /// when.
    better_since: Option<(String, Duration)>,
}

/// The settled configuration resolution needs.
#[derive(Clone, Debug)]
pub struct Resolver {
    domains: Vec<ZoneNames>,
    queries: HashMap<String, Arc<QueryDef>>,
    prepared: Option<Arc<PreparedQueries>>,
    implicit: bool,
    defaults: Policy,
    ttl: u32,
    negative_ttl: u32,
    translate_wan_addrs: bool,
    forward: bool,
    /// `failback_after` state per (query, local datacenter); shared by
    /// the copies a reload or a prepared-query change makes.
    failback: Arc<std::sync::Mutex<HashMap<String, Failback>>>,
}

fn seconds(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

impl Resolver {
    /// Settles a validated configuration.
    pub fn new(config: &Config) -> Self {
        let domains = std::iter::once(&config.dns.domain)
            .chain(&config.dns.alt_domains)
            .filter_map(|d| {
                let fqdn = format!("{}.", d.trim_end_matches('.').to_ascii_lowercase());
                let domain = Name::from_ascii(fqdn).ok()?;
                let under = |label: &str| Name::from_ascii(label).ok()?.append_domain(&domain).ok();
                Some(ZoneNames {
                    ns: under("ns")?,
                    hostmaster: under("hostmaster")?,
                    domain,
                })
            })
            .collect();
        let queries = config
            .query_defs()
            .into_iter()
            .map(|q| (q.name.clone(), Arc::new(q)))
            .collect();
        Self {
            domains,
            queries,
            prepared: config
                .queries
                .prepared
                .then(|| Arc::new(PreparedQueries::default())),
            implicit: config.queries.implicit,
            defaults: config.queries.defaults.clone(),
            ttl: seconds(config.dns.ttl),
            negative_ttl: seconds(config.dns.negative_ttl),
            translate_wan_addrs: config.consul.translate_wan_addrs,
            forward: !config.dns.upstream.is_empty(),
            failback: Arc::default(),
        }
    }

    /// The `[[query]]` definitions.
    pub fn query_defs(&self) -> impl Iterator<Item = &QueryDef> {
        self.queries.values().map(|q| &**q)
    }

    /// The definitions whose answering datacenter is followed (failover
    /// events and metrics): every `[[query]]` and static prepared query,
    /// as (metric label, name to ask). Templates need a name to render.
    pub fn followed(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .query_defs()
            .map(|d| (d.name.clone(), d.name.clone()))
            .collect();
        if let Some(prepared) = &self.prepared {
            for def in prepared.static_defs() {
                let Some(label) = def.metric_label() else {
                    continue;
                };
                // A name in `[[query]]` hides the prepared query of that name.
                if def.name.is_empty() || !self.queries.contains_key(&def.name) {
                    let ask = match &def.origin {
                        crate::config::Origin::Prepared { id } if def.name.is_empty() => id,
                        _ => &def.name,
                    };
                    out.push((label.to_owned(), ask.clone()));
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// The full name of query `name` in the first zone
    /// (`<name>.query.<domain>`).
    pub fn query_name(&self, name: &str) -> Option<Name> {
        let zone = self.domains.first()?;
        let relative = Name::from_ascii(format!("{name}.query")).ok()?;
        relative.append_domain(&zone.domain).ok()
    }

    /// A name as an operator types it for `explain`: a name in one of the
    /// zones as it is; a bare word (no dot) as `<word>.query.<domain>`.
    pub fn explain_name(&self, name: &str) -> Result<Name, String> {
        let trimmed = name.trim();
        if !trimmed.contains('.') && !trimmed.is_empty() {
            return self
                .query_name(trimmed)
                .ok_or_else(|| format!("{trimmed:?} is not a valid query name"));
        }
        let name = Name::from_ascii(trimmed)
            .map_err(|e| format!("{trimmed:?} is not a valid DNS name: {e}"))?;
        let mut fqdn = name.clone();
        fqdn.set_fqdn(true);
        if self.domains.iter().any(|z| z.domain.zone_of(&fqdn)) {
            Ok(fqdn)
        } else {
            let zones: Vec<String> = self.domains.iter().map(|z| z.domain.to_string()).collect();
            Err(format!(
                "{trimmed:?} is not in the zone(s) served: {}",
                zones.join(", ")
            ))
        }
    }

    /// What settles Consul's prepared queries under this configuration.
    pub fn prepared_settings(config: &Config) -> Settings {
        Settings {
            defaults: config.queries.defaults.clone(),
            ttl: config.dns.ttl,
        }
    }

    /// Whether prepared queries are served (`queries.prepared`).
    pub fn serves_prepared(&self) -> bool {
        self.prepared.is_some()
    }

    /// The prepared queries served now (empty when off or none loaded).
    pub fn prepared(&self) -> Option<&Arc<PreparedQueries>> {
        self.prepared.as_ref()
    }

    /// This resolver carrying on the `failback_after` memory of `other`
    /// (a reload must not reset the holds in progress).
    #[must_use]
    pub fn with_failback_of(mut self, other: &Self) -> Self {
        self.failback = Arc::clone(&other.failback);
        self
    }

    /// This resolver with another set of prepared queries; ignored when
    /// `queries.prepared` is off.
    #[must_use]
    pub fn with_prepared(&self, set: Arc<PreparedQueries>) -> Self {
        let mut next = self.clone();
        if next.prepared.is_some() {
            next.prepared = Some(set);
        }
        next
    }

    /// The failover chain of a policy seen from `local`: the local
    /// datacenter, the `nearest_n` nearest others, then the listed ones
    /// that are known, not local and not already chosen (reference §5.4).
    pub fn chain(policy: &Policy, local: &str, datacenters: &[String]) -> Vec<String> {
        let mut chain = vec![local.to_owned()];
        let nearest = datacenters.iter().filter(|dc| *dc != local);
        chain.extend(nearest.take(policy.failover.nearest_n).cloned());
        for dc in &policy.failover.datacenters {
            if datacenters.contains(dc) && !chain.contains(dc) {
                chain.push(dc.clone());
            }
        }
        chain
    }

    /// Answers one question from the view.
    pub fn resolve(
        &self,
        question: &Question,
        view: &impl HealthLookup,
        ctx: &mut Context<'_>,
    ) -> Outcome {
        let Some(names) = self
            .domains
            .iter()
            .find(|z| z.domain.zone_of(&question.name))
        else {
            return Outcome::Answer(Answer::empty(Kind::OutOfZone, ResponseCode::Refused));
        };
        if question.qclass != DNSClass::IN {
            return Outcome::Answer(Answer::empty(Kind::OutOfZone, ResponseCode::Refused));
        }
        let zone = Zone {
            domain: &names.domain,
            ns: &names.ns,
            soa: self.soa(names, ctx.serial),
        };
        let relative = relative_labels(&question.name, &names.domain);
        let labels: Vec<&str> = relative.iter().map(String::as_str).collect();
        let datacenters = view.datacenters();
        let local = view.local_datacenter();
        let parsed = Parsed::from_labels(&labels, &datacenters);
        if local.is_empty()
            && !matches!(
                parsed,
                Parsed::Apex | Parsed::EmptyNonTerminal | Parsed::Addr { .. }
            )
        {
            // Start-up with Consul unreachable: nothing is known yet, not
            // even which datacenters exist.
            return Outcome::Answer(Answer::servfail(
                Kind::Other,
                EDE_NOT_READY,
                "Consul has not answered yet: the local datacenter is not known".to_owned(),
            ));
        }
        match parsed {
            Parsed::Apex => Outcome::Answer(self.apex(question, &zone)),
            Parsed::EmptyNonTerminal => Outcome::Answer(zone.nodata(Kind::Zone)),
            Parsed::NoSuchName(Kind::Other) if self.forward => Outcome::Forward(Kind::Other),
            Parsed::UnknownDatacenter(kind) | Parsed::NoSuchName(kind) => {
                Outcome::Answer(zone.nxdomain(kind))
            }
            Parsed::Addr { ip, datacenter } => {
                Outcome::Answer(self.addr(question, &zone, ip, datacenter))
            }
            Parsed::Node { name, datacenter } => {
                let dc = datacenter.unwrap_or(&local);
                match view.node(dc, &name) {
                    Some(node) => {
                        let wan = self.translate_wan_addrs && dc != *local && !node.wan.is_empty();
                        let addresses = if wan { &node.wan } else { &node.lan };
                        Outcome::Answer(self.node(question, &zone, addresses))
                    }
                    None if self.forward => Outcome::Forward(Kind::Node),
                    None => Outcome::Answer(zone.nxdomain(Kind::Node)),
                }
            }
            Parsed::Query { name, datacenter } => {
                let local = datacenter.unwrap_or(&local);
                self.query(question, &zone, view, ctx, &name, local, &datacenters)
            }
            Parsed::Service {
                service,
                tag,
                datacenter,
            } => {
                let dc = datacenter.unwrap_or(&local);
                let def = QueryDef {
                    tags: tag.map(|t| vec![t]).unwrap_or_default(),
                    ..QueryDef::implicit(
                        &service,
                        &Policy::default(),
                        Duration::from_secs(u64::from(self.ttl)),
                    )
                };
                self.lookup(
                    question,
                    &zone,
                    view,
                    ctx,
                    &def,
                    &[dc.to_owned()],
                    Kind::Service,
                )
            }
        }
    }

    fn soa(&self, names: &ZoneNames, serial: u32) -> Record {
        let soa = SOA::new(
            names.ns.clone(),
            names.hostmaster.clone(),
            serial,
            3600,
            600,
            86_400,
            self.negative_ttl,
        );
        Record::from_rdata(names.domain.clone(), self.negative_ttl, RData::SOA(soa))
    }

    fn apex(&self, question: &Question, zone: &Zone<'_>) -> Answer {
        let mut answer = Answer::empty(Kind::Zone, ResponseCode::NoError);
        let mut soa = zone.soa.clone();
        soa.name = question.name.clone();
        let ns = Record::from_rdata(
            question.name.clone(),
            self.ttl,
            RData::NS(NS(zone.ns.clone())),
        );
        match question.qtype {
            RecordType::SOA => answer.answers.push(soa),
            RecordType::NS => answer.answers.push(ns),
            RecordType::ANY => answer.answers.extend([soa, ns]),
            _ => return zone.nodata(Kind::Zone),
        }
        answer
    }

    fn addr(&self, question: &Question, zone: &Zone<'_>, ip: IpAddr, _dc: Option<&str>) -> Answer {
        let data = match (ip, question.qtype) {
            (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => RData::A(A(v4)),
            (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => RData::AAAA(AAAA(v6)),
            _ => return zone.nodata(Kind::Addr),
        };
        let mut answer = Answer::empty(Kind::Addr, ResponseCode::NoError);
        answer
            .answers
            .push(Record::from_rdata(question.name.clone(), self.ttl, data));
        answer
    }

    /// A node's addresses, or a CNAME to its host name.
    fn node(&self, question: &Question, zone: &Zone<'_>, addresses: &Addresses) -> Answer {
        let owner = &question.name;
        let mut answer = Answer::empty(Kind::Node, ResponseCode::NoError);
        let (v4, v6) = match question.qtype {
            RecordType::A => (true, false),
            RecordType::AAAA => (false, true),
            RecordType::ANY => (true, true),
            _ => (false, false),
        };
        if let Some(ip) = addresses.v4.filter(|_| v4) {
            answer
                .answers
                .push(Record::from_rdata(owner.clone(), self.ttl, RData::A(A(ip))));
        }
        if let Some(ip) = addresses.v6.filter(|_| v6) {
            answer.answers.push(Record::from_rdata(
                owner.clone(),
                self.ttl,
                RData::AAAA(AAAA(ip)),
            ));
        }
        let host = addresses.hostname.as_deref().and_then(fqdn);
        if let Some(target) = host.filter(|_| (v4 || v6) && answer.answers.is_empty()) {
            answer.answers.push(Record::from_rdata(
                owner.clone(),
                self.ttl,
                RData::CNAME(CNAME(target)),
            ));
        }
        if answer.answers.is_empty() {
            return zone.nodata(Kind::Node);
        }
        answer
    }

    #[allow(clippy::too_many_arguments)]
    fn query(
        &self,
        question: &Question,
        zone: &Zone<'_>,
        view: &impl HealthLookup,
        ctx: &mut Context<'_>,
        name: &str,
        local: &str,
        datacenters: &[String],
    ) -> Outcome {
        if let Some(def) = self.queries.get(name) {
            let chain = Self::chain(&def.policy, local, datacenters);
            return self.lookup(question, zone, view, ctx, def, &chain, Kind::Query);
        }
        match self.prepared.as_ref().and_then(|p| p.resolve(name)) {
            Some(Ok(def)) => {
                let chain = Self::chain(&def.policy, local, datacenters);
                return self.lookup(question, zone, view, ctx, &def, &chain, Kind::Query);
            }
            Some(Err(reason)) => {
                ctx.reason(
                    None,
                    "template_error",
                    format!("the prepared query template for {name:?} does not render: {reason}"),
                );
                return Outcome::Answer(Answer::servfail(
                    Kind::Query,
                    EDE_OTHER,
                    format!("the prepared query template for {name:?} does not render: {reason}"),
                ));
            }
            None => {}
        }
        if !self.implicit {
            ctx.reason(
                None,
                "no_such_name",
                format!(
                    "no [[query]] or prepared query is named {name:?}, and queries.implicit is off"
                ),
            );
            return Outcome::Answer(zone.nxdomain(Kind::Query));
        }
        let def = QueryDef::implicit(
            name,
            &self.defaults,
            Duration::from_secs(u64::from(self.ttl)),
        );
        let chain = Self::chain(&def.policy, local, datacenters);
        // An implicit query names a service: without one in any catalog of
        // the chain it is NXDOMAIN, and no watch is started for it.
        let mut pending = Vec::new();
        let mut unreachable = Vec::new();
        let mut known = false;
        for dc in &chain {
            match view.catalog(dc) {
                Data::Ready(catalog) => known |= catalog.contains(name),
                Data::Pending if view.reachable(dc) => pending.push(dc.clone()),
                Data::Pending => unreachable.push(dc.as_str()),
            }
        }
        if !known {
            let detail = format!(
                "no catalog of the failover chain ({}) lists a service {name:?}",
                chain.join(", ")
            );
            ctx.reason(None, "no_such_service", detail);
            if let Some(trace) = ctx.trace.as_deref_mut() {
                trace.definition = Some(def.origin_text());
                trace.service = Some(def.service.clone());
            }
            if !pending.is_empty() {
                return Outcome::Pending(Needs {
                    kind: Kind::Query,
                    services: Vec::new(),
                    catalogs: pending,
                });
            }
            if !unreachable.is_empty() {
                // Unreachable is not absent: no NXDOMAIN on a guess.
                return Outcome::Answer(Answer::servfail(
                    Kind::Query,
                    EDE_NOT_READY,
                    format!(
                        "the catalog of {} is not synced and its Consul does not answer",
                        unreachable.join(", ")
                    ),
                ));
            }
            return Outcome::Answer(zone.nxdomain(Kind::Query));
        }
        self.lookup(question, zone, view, ctx, &def, &chain, Kind::Query)
    }

    /// Walks the chain and answers from the first datacenter with enough
    /// usable instances.
    #[allow(clippy::too_many_arguments)]
    fn lookup(
        &self,
        question: &Question,
        zone: &Zone<'_>,
        view: &impl HealthLookup,
        ctx: &mut Context<'_>,
        def: &QueryDef,
        chain: &[String],
        kind: Kind,
    ) -> Outcome {
        // Remote means "not this resolver's datacenter", whatever `.query.<dc>`
        // made local for the chain: it picks WAN addresses and is counted.
        let real_local = view.local_datacenter();
        let answer_from = |position: usize,
                           basis: &[(usize, bool)],
                           instances: &[&Instance],
                           ctx: &mut Context<'_>| {
            let remote = chain[position] != *real_local;
            let mut answer = self.render(
                question,
                zone,
                ctx,
                def,
                &chain[position],
                remote,
                instances,
                kind,
            );
            answer.warm = Self::warm(view, def, &chain[position + 1..]);
            if kind == Kind::Query {
                answer.query = Some(def.metric_label().unwrap_or(IMPLICIT).to_owned());
            }
            // Stale data behind the choice counts too: a datacenter
            // passed over on stale data, or the one answering.
            let stale: Vec<&str> = basis
                .iter()
                .filter(|(at, stale)| *stale && *at <= position)
                .map(|(at, _)| chain[*at].as_str())
                .collect();
            if !stale.is_empty() {
                answer.stale = true;
                answer.extended_error = Some((
                    EDE_STALE_ANSWER,
                    format!(
                        "Consul of {} does not answer; its last known data was used",
                        stale.join(", ")
                    ),
                ));
            }
            Outcome::Answer(answer)
        };
        if let Some(trace) = ctx.trace.as_deref_mut() {
            trace.definition = Some(def.origin_text());
            trace.service = Some(def.service.clone());
            trace.policy = Some(PolicyTrace {
                only_passing: def.policy.only_passing,
                min_healthy: def.policy.min_healthy,
                failback_after_seconds: def.policy.failback_after.as_secs_f64(),
                on_all_unhealthy: def.policy.on_all_unhealthy.as_str().to_owned(),
            });
        }
        if def.service.is_empty() {
            // A template rendered for a name its regexp does not match.
            ctx.reason(
                None,
                "no_such_service",
                "the prepared query template renders no service for this name".to_owned(),
            );
            return Outcome::Answer(zone.nxdomain(kind));
        }
        let mut seen: Vec<Candidate> = Vec::with_capacity(chain.len());
        let mut not_ready: Vec<&str> = Vec::new();
        let mut unknown: Vec<&str> = Vec::new();
        let mut chosen = None;
        let mut looked = 0;
        for (position, dc) in chain.iter().enumerate() {
            looked = position + 1;
            let step = Self::candidate(view, def, position, dc);
            if let Some(trace) = ctx.trace.as_deref_mut() {
                trace.datacenters.push(Self::trace_step(view, dc, &step));
            }
            match step {
                Step::Skip => {}
                Step::NotReady => not_ready.push(dc),
                Step::Unknown => unknown.push(dc),
                Step::Wait(needs) => {
                    ctx.reason(
                        None,
                        "pending",
                        format!("waiting for the first data of {} in {dc}", def.service),
                    );
                    return Outcome::Pending(Needs { kind, ..needs });
                }
                Step::Use(candidate) => {
                    let enough = candidate.usable >= def.policy.min_healthy;
                    seen.push(candidate);
                    if enough {
                        chosen = Some(seen.len() - 1);
                        break;
                    }
                }
            }
        }
        if let Some(trace) = ctx.trace.as_deref_mut() {
            // The rest of the chain, for the record.
            for (position, dc) in chain.iter().enumerate().skip(looked) {
                let step = Self::candidate(view, def, position, dc);
                trace.datacenters.push(Self::trace_step(view, dc, &step));
            }
        }
        let mut basis: Vec<(usize, bool)> = seen.iter().map(|c| (c.position, c.stale)).collect();
        let min = def.policy.min_healthy;
        if let Some(at) = chosen {
            let held = self.hold_back(view, def, chain, &seen[at], ctx.now);
            let candidate = held.as_ref().unwrap_or(&seen[at]);
            basis.extend(held.as_ref().map(|h| (h.position, h.stale)));
            let usable = usable_instances(&candidate.health.instances, def);
            let position = candidate.position;
            let mut outcome = answer_from(position, &basis, &usable, ctx);
            let stale = matches!(&outcome, Outcome::Answer(a) if a.stale);
            let dc = &chain[position];
            let (reason, detail) = if held.is_some() {
                (
                    "failback_held",
                    format!(
                        "{} is healthy again but failback_after holds answers on {dc} until it has stayed so for {:?}",
                        chain[seen[at].position], def.policy.failback_after
                    ),
                )
            } else if stale {
                let text = match &outcome {
                    Outcome::Answer(a) => a.extended_error.as_ref().map(|(_, t)| t.clone()),
                    _ => None,
                };
                (
                    "stale",
                    format!("{dc} answers: {}", text.unwrap_or_default()),
                )
            } else if position == 0 {
                (
                    "local_healthy",
                    format!(
                        "{dc}, first in the chain, has {} usable instance(s) (min_healthy {min})",
                        usable.len()
                    ),
                )
            } else {
                let before: Vec<&str> = chain[..position].iter().map(String::as_str).collect();
                (
                    "failover",
                    format!(
                        "{} {} fewer than min_healthy {min} usable instance(s); {dc} has {}",
                        before.join(", "),
                        if before.len() == 1 { "has" } else { "have" },
                        usable.len()
                    ),
                )
            };
            ctx.reason(Some(dc), reason, detail);
            if let (Some(_), Outcome::Answer(answer)) = (&held, &mut outcome) {
                answer.volatile = true;
            }
            return outcome;
        }
        // Below min_healthy everywhere: the first datacenter with anything
        // usable beats no answer.
        if let Some(candidate) = seen.iter().find(|c| c.usable > 0) {
            let usable = usable_instances(&candidate.health.instances, def);
            let dc = &chain[candidate.position];
            ctx.reason(
                Some(dc),
                "below_min_healthy",
                format!(
                    "no datacenter has min_healthy {min} usable instance(s); {dc} is the first with any ({})",
                    usable.len()
                ),
            );
            return answer_from(candidate.position, &basis, &usable, ctx);
        }
        // A datacenter we cannot see is not an unhealthy one.
        if !not_ready.is_empty() {
            let text = format!(
                "no data from Consul yet for {} in {}, and its Consul does not answer",
                def.service,
                not_ready.join(", ")
            );
            ctx.reason(None, "not_ready", text.clone());
            return Outcome::Answer(Answer::servfail(kind, EDE_NOT_READY, text));
        }
        if !unknown.is_empty() {
            let text = format!(
                "Consul of {} has not answered for longer than consul.max_stale; nothing usable is known for {}",
                unknown.join(", "),
                def.service
            );
            ctx.reason(None, "unknown", text.clone());
            return Outcome::Answer(Answer::servfail(kind, EDE_NO_REACHABLE_AUTHORITY, text));
        }
        let first_open = seen
            .first()
            .filter(|f| f.position == 0 && !f.health.instances.is_empty());
        let dc = first_open
            .filter(|_| def.policy.on_all_unhealthy == OnAllUnhealthy::FailOpen)
            .map(|_| chain[0].as_str());
        ctx.reason(
            dc,
            "all_unhealthy",
            format!(
                "no datacenter of the chain ({}) has a usable instance of {}; on_all_unhealthy = {:?}",
                chain.join(", "),
                def.service,
                def.policy.on_all_unhealthy.as_str(),
            ),
        );
        match def.policy.on_all_unhealthy {
            OnAllUnhealthy::Nxdomain => Outcome::Answer(zone.nxdomain(kind)),
            OnAllUnhealthy::Servfail => {
                Outcome::Answer(Answer::empty(kind, ResponseCode::ServFail))
            }
            OnAllUnhealthy::FailOpen => match first_open {
                Some(first) => {
                    let all: Vec<&Instance> = first.health.instances.iter().collect();
                    answer_from(0, &basis, &all, ctx)
                }
                _ => Outcome::Answer(zone.nxdomain(kind)),
            },
        }
    }

    /// One step of a chain as `/v1/explain` shows it.
    fn trace_step(view: &impl HealthLookup, dc: &str, step: &Step) -> DatacenterTrace {
        let (state, usable, total) = match step {
            Step::Skip => ("not_in_catalog", None, None),
            Step::NotReady => ("unreachable", None, None),
            Step::Unknown => ("unknown", None, None),
            Step::Wait(_) => ("pending", None, None),
            Step::Use(c) => (
                if c.stale { "stale" } else { "fresh" },
                Some(c.usable),
                Some(c.health.instances.len()),
            ),
        };
        DatacenterTrace {
            name: dc.to_owned(),
            state,
            usable,
            total,
            reachable: view.reachable(dc),
        }
    }

    /// What one datacenter of a chain offers a query.
    fn candidate(view: &impl HealthLookup, def: &QueryDef, position: usize, dc: &str) -> Step {
        let catalog = view.catalog(dc);
        if matches!(&catalog, Data::Ready(c) if !c.contains(&def.service)) {
            return Step::Skip;
        }
        let health = match (view.service(dc, &def.service), catalog) {
            (Data::Ready(health), _) => health,
            // Waiting for a Consul that does not answer is pointless.
            (Data::Pending, _) if !view.reachable(dc) => return Step::NotReady,
            // Whether the service exists comes first: a name no catalog
            // lists must never start a watch.
            (Data::Pending, Data::Pending) => {
                return Step::Wait(Needs {
                    kind: Kind::Other,
                    services: Vec::new(),
                    catalogs: vec![dc.to_owned()],
                });
            }
            (Data::Pending, Data::Ready(_)) => {
                return Step::Wait(Needs {
                    kind: Kind::Other,
                    services: vec![ServiceKey::new(dc, &def.service)],
                    catalogs: Vec::new(),
                });
            }
        };
        let stale = match view.freshness(dc, &def.service) {
            Freshness::Fresh => false,
            Freshness::Stale => true,
            Freshness::Unknown => return Step::Unknown,
        };
        let usable = usable_instances(&health.instances, def).len();
        Step::Use(Candidate {
            position,
            health,
            usable,
            stale,
        })
    }

    /// `failback_after`: when the chosen datacenter comes before the one
    /// answers came from so far, keep answering from that one (if it is
    /// still good) until the chosen one has been good for the whole hold.
    /// Returns the datacenter to answer from instead of `chosen`, if any.
    fn hold_back(
        &self,
        view: &impl HealthLookup,
        def: &QueryDef,
        chain: &[String],
        chosen: &Candidate,
        now: Duration,
    ) -> Option<Candidate> {
        let hold = def.policy.failback_after;
        if hold.is_zero() {
            return None;
        }
        let key = format!("{}\0{}", def.name, chain[0]);
        let mut memory = self
            .failback
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let chosen_dc = &chain[chosen.position];
        let state = memory.entry(key).or_insert_with(|| Failback {
            current: chosen_dc.clone(),
            better_since: None,
        });
        let current_at = chain.iter().position(|dc| *dc == state.current);
        let Some(current_at) = current_at.filter(|at| *at > chosen.position) else {
            // Same datacenter, or a later one than before (failover is
            // never held back).
            state.current = chosen_dc.clone();
            state.better_since = None;
            return None;
        };
        let since = match &state.better_since {
            Some((dc, since)) if dc == chosen_dc => *since,
            _ => {
                state.better_since = Some((chosen_dc.clone(), now));
                now
            }
        };
        let still_good = match Self::candidate(view, def, current_at, &chain[current_at]) {
            Step::Use(c) if c.usable >= def.policy.min_healthy => Some(c),
            _ => None,
        };
        match still_good {
            Some(current) if now.saturating_sub(since) < hold => Some(current),
            _ => {
                state.current = chosen_dc.clone();
                state.better_since = None;
                None
            }
        }
    }

    /// The pairs behind the answering datacenter that lack data although
    /// their catalog lists the service; reading the others marks them used.
    fn warm(view: &impl HealthLookup, def: &QueryDef, rest: &[String]) -> Vec<ServiceKey> {
        rest.iter()
            .filter(|dc| matches!(view.service(dc, &def.service), Data::Pending))
            .filter(|dc| matches!(view.catalog(dc), Data::Ready(c) if c.contains(&def.service)))
            .map(|dc| ServiceKey::new(dc, &def.service))
            .collect()
    }

    /// Records for the chosen instances.
    #[allow(clippy::too_many_arguments)]
    fn render(
        &self,
        question: &Question,
        zone: &Zone<'_>,
        ctx: &mut Context<'_>,
        def: &QueryDef,
        dc: &str,
        remote: bool,
        instances: &[&Instance],
        kind: Kind,
    ) -> Answer {
        let ttl = seconds(def.ttl);
        let wan = remote && self.translate_wan_addrs;
        let owner = &question.name;
        let mut answer = Answer::empty(kind, ResponseCode::NoError);
        answer.datacenter = Some(dc.to_owned());
        answer.remote = remote;
        let addresses = |i: &Instance| {
            if wan && !i.wan.is_empty() {
                i.wan.clone()
            } else {
                i.lan.clone()
            }
        };
        match question.qtype {
            RecordType::A | RecordType::AAAA | RecordType::ANY => {
                let want_v4 = question.qtype != RecordType::AAAA;
                let want_v6 = question.qtype != RecordType::A;
                let mut seen = HashSet::new();
                let mut hostname = None;
                for instance in instances {
                    let a = addresses(instance);
                    if want_v4 {
                        if let Some(v4) = a.v4.filter(|ip| seen.insert(IpAddr::V4(*ip))) {
                            answer.answers.push(Record::from_rdata(
                                owner.clone(),
                                ttl,
                                RData::A(A(v4)),
                            ));
                        }
                    }
                    if want_v6 {
                        if let Some(v6) = a.v6.filter(|ip| seen.insert(IpAddr::V6(*ip))) {
                            answer.answers.push(Record::from_rdata(
                                owner.clone(),
                                ttl,
                                RData::AAAA(AAAA(v6)),
                            ));
                        }
                    }
                    if hostname.is_none() && a.v4.is_none() && a.v6.is_none() {
                        hostname = a.hostname.clone();
                    }
                }
                let any_ip = instances.iter().any(|i| {
                    let a = addresses(i);
                    a.v4.is_some() || a.v6.is_some()
                });
                if answer.answers.is_empty() && !any_ip {
                    // Only host names: one CNAME, as Consul answers.
                    if let Some(target) = hostname.and_then(|h| fqdn(&h)) {
                        answer.answers.push(Record::from_rdata(
                            owner.clone(),
                            ttl,
                            RData::CNAME(CNAME(target)),
                        ));
                    }
                }
                ctx.rng.shuffle(&mut answer.answers);
            }
            RecordType::SRV => {
                let mut seen = HashSet::new();
                let mut glue_seen = HashSet::new();
                let mut records = Vec::new();
                for instance in instances {
                    let a = addresses(instance);
                    let port = if wan {
                        instance.wan_port.unwrap_or(instance.port)
                    } else {
                        instance.port
                    };
                    let weight = match instance.status(&def.ignore_check_ids) {
                        CheckStatus::Warning => instance.weight_warning,
                        _ => instance.weight_passing,
                    };
                    let ip = a.v4.map(IpAddr::V4).or(a.v6.map(IpAddr::V6));
                    let key = (instance.node.name.clone(), ip, a.hostname.clone(), port);
                    if !seen.insert(key) {
                        continue;
                    }
                    let (target, glue) = match (ip, &a.hostname) {
                        (None, Some(host)) => match fqdn(host) {
                            Some(t) => (t, Vec::new()),
                            None => continue,
                        },
                        (None, None) => continue,
                        (Some(ip), _) => {
                            let node_target = (!instance.service_address && !wan)
                                .then(|| node_name(&instance.node.name, dc, zone.domain))
                                .flatten();
                            let target =
                                node_target.unwrap_or_else(|| addr_name(ip, dc, zone.domain));
                            let mut glue = Vec::new();
                            if let Some(v4) = a.v4 {
                                glue.push(Record::from_rdata(target.clone(), ttl, RData::A(A(v4))));
                            }
                            if let Some(v6) = a.v6 {
                                glue.push(Record::from_rdata(
                                    target.clone(),
                                    ttl,
                                    RData::AAAA(AAAA(v6)),
                                ));
                            }
                            (target, glue)
                        }
                    };
                    records.push((
                        Record::from_rdata(
                            owner.clone(),
                            ttl,
                            RData::SRV(SRV::new(1, weight, port, target)),
                        ),
                        glue,
                    ));
                }
                ctx.rng.shuffle(&mut records);
                for (srv, glue) in records {
                    answer.answers.push(srv);
                    for g in glue {
                        if glue_seen.insert((g.name.clone(), g.data.clone())) {
                            answer.additionals.push(g);
                        }
                    }
                }
            }
            _ => {}
        }
        if answer.answers.is_empty() {
            let mut nodata = zone.nodata(kind);
            nodata.datacenter = answer.datacenter;
            nodata.remote = answer.remote;
            return nodata;
        }
        answer
    }
}

/// A served zone and its fixed SOA names, built once per configuration.
#[derive(Clone, Debug)]
struct ZoneNames {
    domain: Name,
    ns: Name,
    hostmaster: Name,
}

/// The zone a question fell in.
struct Zone<'a> {
    domain: &'a Name,
    ns: &'a Name,
    soa: Record,
}

impl Zone<'_> {
    fn nxdomain(&self, kind: Kind) -> Answer {
        let mut answer = Answer::empty(kind, ResponseCode::NXDomain);
        answer.authorities.push(self.soa.clone());
        answer
    }

    fn nodata(&self, kind: Kind) -> Answer {
        let mut answer = Answer::empty(kind, ResponseCode::NoError);
        answer.authorities.push(self.soa.clone());
        answer
    }
}

/// Instances that pass the query's filters and health rules.
pub fn usable_instances<'a>(instances: &'a [Instance], def: &QueryDef) -> Vec<&'a Instance> {
    instances
        .iter()
        .filter(|i| tags_match(&i.tags, &def.tags))
        .filter(|i| {
            def.node_meta
                .iter()
                .all(|(k, v)| i.node.meta.get(k) == Some(v))
        })
        .filter(|i| {
            def.service_meta
                .iter()
                .all(|(k, v)| i.service_meta.get(k) == Some(v))
        })
        .filter(|i| match i.status(&def.ignore_check_ids) {
            CheckStatus::Passing => true,
            CheckStatus::Warning => !def.policy.only_passing,
            CheckStatus::Critical => false,
        })
        .collect()
}

/// Consul's tag filter: every plain tag present, every `!tag` absent,
/// compared case-insensitively.
pub fn tags_match(have: &[String], want: &[String]) -> bool {
    want.iter().all(|w| match w.strip_prefix('!') {
        Some(excluded) => !have.iter().any(|h| h.eq_ignore_ascii_case(excluded)),
        None => have.iter().any(|h| h.eq_ignore_ascii_case(w)),
    })
}

fn fqdn(host: &str) -> Option<Name> {
    let host = host.trim_end_matches('.');
    Name::from_ascii(format!("{host}.")).ok()
}

fn node_name(node: &str, dc: &str, domain: &Name) -> Option<Name> {
    Name::from_ascii(format!("{node}.node.{dc}"))
        .ok()?
        .append_domain(domain)
        .ok()
}

fn addr_name(ip: IpAddr, dc: &str, domain: &Name) -> Name {
    let hex = match ip {
        IpAddr::V4(v4) => format!("{:08x}", u32::from(v4)),
        IpAddr::V6(v6) => format!("{:032x}", u128::from(v6)),
    };
    Name::from_ascii(format!("{hex}.addr.{dc}"))
        .and_then(|n| n.append_domain(domain))
        .unwrap_or_else(|_| domain.clone())
}

/// The question's labels left of the zone, lower-cased, leftmost first.
fn relative_labels(name: &Name, domain: &Name) -> Vec<String> {
    let keep = usize::from(name.num_labels().saturating_sub(domain.num_labels()));
    name.iter()
        .take(keep)
        .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
        .collect()
}

/// A name in the zone, classified.
#[derive(Debug, PartialEq, Eq)]
enum Parsed<'a> {
    Apex,
    EmptyNonTerminal,
    Query {
        name: String,
        datacenter: Option<&'a str>,
    },
    Service {
        service: String,
        tag: Option<String>,
        datacenter: Option<&'a str>,
    },
    Addr {
        ip: IpAddr,
        datacenter: Option<&'a str>,
    },
    Node {
        name: String,
        datacenter: Option<&'a str>,
    },
    UnknownDatacenter(Kind),
    NoSuchName(Kind),
}

const KIND_LABELS: [&str; 4] = ["query", "service", "node", "addr"];

impl<'a> Parsed<'a> {
    fn from_labels(labels: &[&str], datacenters: &'a [String]) -> Self {
        let known_dc = |label: &str| {
            datacenters
                .iter()
                .find(|d| d.eq_ignore_ascii_case(label))
                .map(String::as_str)
        };
        let Some(last) = labels.last() else {
            return Self::Apex;
        };
        // `<kind>` or `<kind>.<dc>` alone, or a bare known `<dc>`: the
        // ancestors of real names.
        if labels.len() == 1
            && (KIND_LABELS.contains(last) || known_dc(last).is_some() || *last == "ns")
        {
            return Self::EmptyNonTerminal;
        }
        // Find the kind label: the last label, or the one before a DC label.
        let (kind_at, datacenter) = if KIND_LABELS.contains(last) {
            (labels.len() - 1, None)
        } else if labels.len() >= 2 && KIND_LABELS.contains(&labels[labels.len() - 2]) {
            match known_dc(last) {
                Some(dc) => (labels.len() - 2, Some(dc)),
                None => return Self::UnknownDatacenter(kind_of(labels[labels.len() - 2])),
            }
        } else {
            return Self::NoSuchName(Kind::Other);
        };
        let head = &labels[..kind_at];
        if head.is_empty() {
            return Self::EmptyNonTerminal;
        }
        match labels[kind_at] {
            "query" => {
                if head == ["_tcp"] {
                    return Self::EmptyNonTerminal;
                }
                let name = match head {
                    [q, tcp] if q.starts_with('_') && *tcp == "_tcp" => q[1..].to_owned(),
                    _ => head.join("."),
                };
                if name.is_empty() {
                    return Self::NoSuchName(Kind::Query);
                }
                Self::Query { name, datacenter }
            }
            "service" => {
                if head.len() == 1 && head[0].starts_with('_') {
                    return Self::EmptyNonTerminal;
                }
                let (service, tag) = match head {
                    [svc, tag] if svc.starts_with('_') && tag.starts_with('_') => {
                        let tag = &tag[1..];
                        (svc[1..].to_owned(), (tag != "tcp").then(|| tag.to_owned()))
                    }
                    [tags @ .., svc] => (
                        (*svc).to_owned(),
                        (!tags.is_empty()).then(|| tags.join(".")),
                    ),
                    [] => return Self::EmptyNonTerminal,
                };
                if service.is_empty() {
                    return Self::NoSuchName(Kind::Service);
                }
                Self::Service {
                    service,
                    tag,
                    datacenter,
                }
            }
            "addr" => match head {
                [hex] => parse_hex_ip(hex).map_or(Self::NoSuchName(Kind::Addr), |ip| Self::Addr {
                    ip,
                    datacenter,
                }),
                _ => Self::NoSuchName(Kind::Addr),
            },
            "node" => Self::Node {
                name: head.join("."),
                datacenter,
            },
            _ => Self::NoSuchName(Kind::Other),
        }
    }
}

fn kind_of(label: &str) -> Kind {
    match label {
        "query" => Kind::Query,
        "service" => Kind::Service,
        "addr" => Kind::Addr,
        "node" => Kind::Node,
        _ => Kind::Other,
    }
}

/// `<hex>.addr`: 8 hex digits are IPv4, 32 are IPv6.
fn parse_hex_ip(hex: &str) -> Option<IpAddr> {
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    match hex.len() {
        8 => u32::from_str_radix(hex, 16)
            .ok()
            .map(|v| IpAddr::V4(Ipv4Addr::from(v))),
        32 => u128::from_str_radix(hex, 16)
            .ok()
            .map(|v| IpAddr::V6(Ipv6Addr::from(v))),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
