//! Prometheus metrics, served by the admin endpoint in the text exposition
//! format (version 0.0.4). Every name starts with `consul_failover_dns_`.
//!
//! Label sets stay bounded whatever clients ask: `qtype` is one of a fixed
//! list or `other`, `query` names only `[[query]]` and prepared query
//! definitions (implicit queries are counted without it), and `datacenter`
//! names datacenters Consul lists.

use std::time::Duration;

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The metric name prefix.
pub const PREFIX: &str = "consul_failover_dns_";

/// Latency buckets of Consul requests, in seconds: from a loopback answer
/// to a blocking read that waited its whole `consul.wait` and more.
const LATENCY_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 300.0,
    600.0,
];

/// How a Consul request ended (the `outcome` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// An answer (2xx).
    Ok,
    /// No answer within its timeout.
    Timeout,
    /// Anything else: refused, reset, a 4xx/5xx, a body that does not parse.
    Error,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Timeout => "timeout",
            Self::Error => "error",
        }
    }
}

/// Whether a Consul request was a blocking read (the `kind` label of the
/// latency histogram): those wait for a change by design.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// `index` > 0: waits up to `consul.wait` for a change.
    Blocking,
    /// Answers at once (a first read, a probe, the datacenter list).
    Immediate,
}

/// A watched pair's state (the `state` label of the watches gauge).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchState {
    /// Has data, and its Consul answers.
    Synced,
    /// No data yet.
    Pending,
    /// Has data, but its watch fails or its Consul does not answer.
    Stale,
}

/// What a scrape sets from the health view (see
/// [`Metrics::observe`]).
#[derive(Debug, Default)]
pub struct Observation {
    /// Watched pairs per state.
    pub synced: usize,
    /// See [`WatchState::Pending`].
    pub pending: usize,
    /// See [`WatchState::Stale`].
    pub stale: usize,
    /// Per datacenter: whether its Consul answers, and for how long it
    /// has not.
    pub datacenters: Vec<(String, bool, Duration)>,
    /// Per synced pair: (service, datacenter, instances without a
    /// critical check).
    pub healthy: Vec<(String, String, usize)>,
}

/// Every metric the resolver exports.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    queries: IntCounterVec,
    answers: IntCounterVec,
    failovers: IntCounterVec,
    stale_answers: IntCounter,
    cached_answers: IntCounter,
    watches: IntGaugeVec,
    consul_requests: IntCounterVec,
    consul_latency: HistogramVec,
    reachable: IntGaugeVec,
    data_age: GaugeVec,
    healthy: IntGaugeVec,
    prepared_queries: IntGauge,
    reloads: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn name(short: &str) -> String {
    format!("{PREFIX}{short}")
}

fn counter_vec(short: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name(short), help), labels).expect("valid metric")
}

fn gauge_vec(short: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name(short), help), labels).expect("valid metric")
}

/// The `qtype` label: common types by name, the rest `other`, so random
/// types cannot grow the label set.
pub fn qtype_label(qtype: hickory_proto::rr::RecordType) -> &'static str {
    use hickory_proto::rr::RecordType as T;
    match qtype {
        T::A => "A",
        T::AAAA => "AAAA",
        T::SRV => "SRV",
        T::TXT => "TXT",
        T::ANY => "ANY",
        T::CNAME => "CNAME",
        T::NS => "NS",
        T::SOA => "SOA",
        T::PTR => "PTR",
        T::MX => "MX",
        T::HTTPS => "HTTPS",
        T::SVCB => "SVCB",
        T::DS => "DS",
        T::DNSKEY => "DNSKEY",
        _ => "other",
    }
}

impl Metrics {
    /// A fresh registry with every metric at zero.
    pub fn new() -> Self {
        let registry = Registry::new();
        let queries = counter_vec(
            "queries_total",
            "DNS responses sent, by query type, response code and kind of name.",
            &["qtype", "rcode", "kind"],
        );
        let answers = counter_vec(
            "answers_total",
            "Answers of [[query]] and prepared query definitions, by definition and the datacenter whose instances answered.",
            &["query", "datacenter"],
        );
        let failovers = counter_vec(
            "failovers_total",
            "Changes of the datacenter a [[query]] or prepared query answers from (failover and failback).",
            &["query", "from", "to"],
        );
        let stale_answers = IntCounter::new(
            name("stale_answers_total"),
            "Answers served from stale data (their datacenter's Consul stopped answering).",
        )
        .expect("valid metric");
        let cached_answers = IntCounter::new(
            name("udp_cached_answers_total"),
            "UDP answers the fast path reused from its cache (also counted in queries_total).",
        )
        .expect("valid metric");
        let watches = gauge_vec(
            "watches",
            "Watched (service, datacenter) pairs, by state: synced, pending (no data yet) or stale.",
            &["state"],
        );
        let consul_requests = counter_vec(
            "consul_requests_total",
            "Requests to Consul (watches, probes, lists), by datacenter and outcome.",
            &["datacenter", "outcome"],
        );
        let consul_latency = HistogramVec::new(
            HistogramOpts::new(
                name("consul_request_duration_seconds"),
                "Time to a Consul answer or failure, by datacenter and kind (blocking reads wait for a change by design).",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["datacenter", "kind"],
        )
        .expect("valid metric");
        let reachable = gauge_vec(
            "datacenter_reachable",
            "Whether the datacenter's Consul answers its probes (1) or not (0).",
            &["datacenter"],
        );
        let data_age = GaugeVec::new(
            Opts::new(
                name("datacenter_data_age_seconds"),
                "How long the datacenter's Consul has not answered: the age of the data served for it (0 while it answers).",
            ),
            &["datacenter"],
        )
        .expect("valid metric");
        let healthy = gauge_vec(
            "healthy_instances",
            "Instances with no critical check, per watched service and datacenter.",
            &["service", "datacenter"],
        );
        let prepared_queries = IntGauge::new(
            name("prepared_queries"),
            "Prepared queries (templates included) loaded from Consul.",
        )
        .expect("valid metric");
        let reloads = counter_vec(
            "config_reloads_total",
            "Configuration reloads (SIGHUP), by outcome: ok, or error (the old configuration stays).",
            &["outcome"],
        );
        let build_info = gauge_vec(
            "build_info",
            "Always 1; the version of the running binary.",
            &["version"],
        );
        build_info.with_label_values(&[crate::VERSION]).set(1);
        for outcome in ["ok", "error"] {
            reloads.with_label_values(&[outcome]);
        }
        for state in ["synced", "pending", "stale"] {
            watches.with_label_values(&[state]);
        }
        for metric in [
            Box::new(queries.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(answers.clone()),
            Box::new(failovers.clone()),
            Box::new(stale_answers.clone()),
            Box::new(cached_answers.clone()),
            Box::new(watches.clone()),
            Box::new(consul_requests.clone()),
            Box::new(consul_latency.clone()),
            Box::new(reachable.clone()),
            Box::new(data_age.clone()),
            Box::new(healthy.clone()),
            Box::new(prepared_queries.clone()),
            Box::new(reloads.clone()),
            Box::new(build_info),
        ] {
            registry.register(metric).expect("names are unique");
        }
        Self {
            registry,
            queries,
            answers,
            failovers,
            stale_answers,
            cached_answers,
            watches,
            consul_requests,
            consul_latency,
            reachable,
            data_age,
            healthy,
            prepared_queries,
            reloads,
        }
    }

    /// Counts one answer served from stale data.
    pub fn stale_answer(&self) {
        self.stale_answers.inc();
    }

    /// Counts answers the UDP fast path reused from its cache.
    pub fn cached_answers(&self, count: u64) {
        self.cached_answers.inc_by(count);
    }

    /// Sets the number of prepared queries loaded.
    pub fn set_prepared_queries(&self, count: usize) {
        self.prepared_queries
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// The counter of one kind of response, to hold and bump without a
    /// label lookup.
    pub fn query_counter(&self, qtype: &str, rcode: &str, kind: &str) -> IntCounter {
        self.queries.with_label_values(&[qtype, rcode, kind])
    }

    /// The counter of a definition's answers from `datacenter`.
    pub fn answer_counter(&self, query: &str, datacenter: &str) -> IntCounter {
        self.answers.with_label_values(&[query, datacenter])
    }

    /// Counts one change of the datacenter a definition answers from.
    pub fn failover(&self, query: &str, from: &str, to: &str) {
        self.failovers.with_label_values(&[query, from, to]).inc();
    }

    /// Exports the per-datacenter series at once, so a scrape shows every
    /// known datacenter before its first request.
    pub fn add_datacenter(&self, datacenter: &str) {
        for outcome in [Outcome::Ok, Outcome::Timeout, Outcome::Error] {
            self.consul_requests
                .with_label_values(&[datacenter, outcome.label()]);
        }
    }

    /// Counts one Consul request and its latency.
    pub fn consul_request(
        &self,
        datacenter: &str,
        kind: RequestKind,
        outcome: Outcome,
        took: Duration,
    ) {
        self.consul_requests
            .with_label_values(&[datacenter, outcome.label()])
            .inc();
        let kind = match kind {
            RequestKind::Blocking => "blocking",
            RequestKind::Immediate => "immediate",
        };
        self.consul_latency
            .with_label_values(&[datacenter, kind])
            .observe(took.as_secs_f64());
    }

    /// Failed Consul requests (timeouts included) for a datacenter so far.
    pub fn consul_failures(&self, datacenter: &str) -> u64 {
        [Outcome::Timeout, Outcome::Error]
            .iter()
            .map(|o| {
                self.consul_requests
                    .with_label_values(&[datacenter, o.label()])
                    .get()
            })
            .sum()
    }

    /// Counts one configuration reload.
    pub fn reload(&self, ok: bool) {
        self.reloads
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
    }

    /// Sets the gauges read from the health view. Pairs and datacenters
    /// no longer observed lose their series.
    pub fn observe(&self, seen: &Observation) {
        for (state, count) in [
            ("synced", seen.synced),
            ("pending", seen.pending),
            ("stale", seen.stale),
        ] {
            self.watches
                .with_label_values(&[state])
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        self.reachable.reset();
        self.data_age.reset();
        for (dc, reachable, down_for) in &seen.datacenters {
            self.reachable
                .with_label_values(&[dc])
                .set(i64::from(*reachable));
            self.data_age
                .with_label_values(&[dc])
                .set(down_for.as_secs_f64());
        }
        self.healthy.reset();
        for (service, dc, count) in &seen.healthy {
            self.healthy
                .with_label_values(&[service, dc])
                .set(i64::try_from(*count).unwrap_or(i64::MAX));
        }
    }

    /// Everything in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for these metric types.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_text_format_with_labels() {
        let m = Metrics::new();
        m.query_counter("A", "NOERROR", "query").inc();
        m.query_counter("A", "NOERROR", "query").inc();
        m.answer_counter("grafana", "dc2").inc();
        m.failover("grafana", "dc1", "dc2");
        m.consul_request(
            "dc1",
            RequestKind::Immediate,
            Outcome::Timeout,
            Duration::from_millis(3),
        );
        m.add_datacenter("dc3");
        m.observe(&Observation {
            synced: 3,
            pending: 1,
            stale: 0,
            datacenters: vec![("dc1".into(), false, Duration::from_secs(90))],
            healthy: vec![("web".into(), "dc1".into(), 2)],
        });
        m.reload(false);
        let text = m.render();
        for line in [
            "# TYPE consul_failover_dns_queries_total counter",
            "consul_failover_dns_queries_total{kind=\"query\",qtype=\"A\",rcode=\"NOERROR\"} 2",
            "consul_failover_dns_answers_total{datacenter=\"dc2\",query=\"grafana\"} 1",
            "consul_failover_dns_failovers_total{from=\"dc1\",query=\"grafana\",to=\"dc2\"} 1",
            "consul_failover_dns_consul_requests_total{datacenter=\"dc1\",outcome=\"timeout\"} 1",
            "consul_failover_dns_consul_requests_total{datacenter=\"dc3\",outcome=\"ok\"} 0",
            "consul_failover_dns_consul_request_duration_seconds_bucket{datacenter=\"dc1\",kind=\"immediate\",le=\"0.005\"} 1",
            "consul_failover_dns_watches{state=\"synced\"} 3",
            "consul_failover_dns_watches{state=\"pending\"} 1",
            "consul_failover_dns_datacenter_reachable{datacenter=\"dc1\"} 0",
            "consul_failover_dns_datacenter_data_age_seconds{datacenter=\"dc1\"} 90",
            "consul_failover_dns_healthy_instances{datacenter=\"dc1\",service=\"web\"} 2",
            "consul_failover_dns_config_reloads_total{outcome=\"error\"} 1",
            "consul_failover_dns_config_reloads_total{outcome=\"ok\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "no line {line:?} in\n{text}"
            );
        }
        assert!(
            text.contains(&format!(
                "consul_failover_dns_build_info{{version=\"{}\"}} 1",
                crate::VERSION
            )),
            "{text}"
        );
        assert_eq!(m.consul_failures("dc1"), 1);
        // A pair no longer observed loses its series.
        m.observe(&Observation::default());
        assert!(!m.render().contains("healthy_instances{"), "{}", m.render());
    }

    #[test]
    fn random_query_types_share_one_label() {
        use hickory_proto::rr::RecordType;
        assert_eq!(qtype_label(RecordType::A), "A");
        assert_eq!(qtype_label(RecordType::Unknown(65_000)), "other");
        assert_eq!(qtype_label(RecordType::Unknown(4242)), "other");
    }
}
