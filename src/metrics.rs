//! Prometheus metrics, served by the admin endpoint in the text exposition
//! format (version 0.0.4).

use prometheus::{Encoder, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

/// Every metric the resolver exports.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    queries: IntCounterVec,
    remote_answers: IntCounterVec,
    watch_errors: IntCounterVec,
    watches: IntGauge,
    prepared_queries: IntGauge,
    stale_answers: prometheus::IntCounter,
    cached_answers: prometheus::IntCounter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric at zero.
    pub fn new() -> Self {
        let registry = Registry::new();
        let queries = IntCounterVec::new(
            Opts::new(
                "consul_dns_queries_total",
                "DNS queries answered, by response code and kind of name.",
            ),
            &["rcode", "kind"],
        )
        .expect("valid metric");
        let remote_answers = IntCounterVec::new(
            Opts::new(
                "consul_dns_remote_answers_total",
                "Answers served from a datacenter other than the local one (failover), by datacenter.",
            ),
            &["datacenter"],
        )
        .expect("valid metric");
        let watch_errors = IntCounterVec::new(
            Opts::new(
                "consul_dns_watch_errors_total",
                "Failed Consul requests of watches, by datacenter.",
            ),
            &["datacenter"],
        )
        .expect("valid metric");
        let watches = IntGauge::new("consul_dns_watches", "Consul blocking watches running.")
            .expect("valid metric");
        let prepared_queries = IntGauge::new(
            "consul_dns_prepared_queries",
            "Prepared queries (templates included) loaded from Consul.",
        )
        .expect("valid metric");
        let stale_answers = prometheus::IntCounter::new(
            "consul_dns_stale_answers_total",
            "Answers served from stale data (their datacenter's Consul stopped answering).",
        )
        .expect("valid metric");
        let cached_answers = prometheus::IntCounter::new(
            "consul_dns_udp_cached_answers_total",
            "UDP answers the fast path reused from its cache (also counted in consul_dns_queries_total).",
        )
        .expect("valid metric");
        for metric in [
            Box::new(cached_answers.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(queries.clone()),
            Box::new(remote_answers.clone()),
            Box::new(watch_errors.clone()),
            Box::new(watches.clone()),
            Box::new(prepared_queries.clone()),
            Box::new(stale_answers.clone()),
        ] {
            registry.register(metric).expect("names are unique");
        }
        Self {
            registry,
            queries,
            remote_answers,
            watch_errors,
            watches,
            prepared_queries,
            stale_answers,
            cached_answers,
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

    /// Counts one answered query.
    pub fn query(&self, rcode: &str, kind: &str) {
        self.queries.with_label_values(&[rcode, kind]).inc();
    }

    /// The counter [`Metrics::query`] increments, to hold and bump
    /// without a label lookup.
    pub fn query_counter(&self, rcode: &str, kind: &str) -> prometheus::IntCounter {
        self.queries.with_label_values(&[rcode, kind])
    }

    /// The counter [`Metrics::remote_answer`] increments.
    pub fn remote_counter(&self, datacenter: &str) -> prometheus::IntCounter {
        self.remote_answers.with_label_values(&[datacenter])
    }

    /// Counts one answer served from a non-local datacenter.
    pub fn remote_answer(&self, datacenter: &str) {
        self.remote_answers.with_label_values(&[datacenter]).inc();
    }

    /// Exports the per-datacenter counters at 0, so a scrape shows every
    /// known datacenter before its first error or failover.
    pub fn add_datacenter(&self, datacenter: &str) {
        self.watch_errors.with_label_values(&[datacenter]);
        self.remote_answers.with_label_values(&[datacenter]);
    }

    /// Counts one failed Consul request of a watch.
    pub fn watch_error(&self, datacenter: &str) {
        self.watch_errors.with_label_values(&[datacenter]).inc();
    }

    /// Sets the number of running watches.
    pub fn set_watches(&self, count: usize) {
        self.watches.set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// The current value of the watch-error counter for a datacenter.
    pub fn watch_errors(&self, datacenter: &str) -> u64 {
        self.watch_errors.with_label_values(&[datacenter]).get()
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
        m.query("NOERROR", "query");
        m.query("NOERROR", "query");
        m.remote_answer("dc2");
        m.watch_error("dc1");
        m.set_watches(3);
        m.add_datacenter("dc3");
        let text = m.render();
        assert!(
            text.contains("# TYPE consul_dns_queries_total counter"),
            "{text}"
        );
        assert!(
            text.contains("consul_dns_queries_total{kind=\"query\",rcode=\"NOERROR\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("consul_dns_remote_answers_total{datacenter=\"dc2\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("consul_dns_watch_errors_total{datacenter=\"dc1\"} 1"),
            "{text}"
        );
        assert!(text.contains("consul_dns_watches 3"), "{text}");
        assert_eq!(m.watch_errors("dc1"), 1);
        assert!(
            text.contains("consul_dns_watch_errors_total{datacenter=\"dc3\"} 0"),
            "{text}"
        );
    }
}
