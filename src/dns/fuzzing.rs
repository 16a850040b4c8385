//! The request path for `fuzz/` (cargo-fuzz, nightly): a handler over a
//! small fixed view, taking a datagram the way the UDP fast path does
//! (its cache first, then the answer logic) and a message the way TCP
//! does. Not an API; the property tests in `fast/props.rs` cover the same
//! path on stable in CI.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use super::fast::{Cache, Immediate, Moment};
use super::{DnsHandler, WatchDemand, WireSettings};
use crate::config::Config;
use crate::health::{CheckStatus, HealthView, ServiceHealth, ServiceKey, test_instance};
use crate::metrics::Metrics;
use crate::resolve::Resolver;

/// Starts no watch.
struct NoWatches;

impl WatchDemand for NoWatches {
    fn ensure_service(&self, _key: &ServiceKey) -> bool {
        true
    }
    fn ensure_catalog(&self, _datacenter: &str) {}
}

/// A handler, its view and one fast-path cache.
pub struct Target {
    handler: DnsHandler,
    view: Arc<HealthView>,
    cache: Mutex<Cache>,
    runtime: tokio::runtime::Runtime,
}

impl Default for Target {
    fn default() -> Self {
        Self::new()
    }
}

impl Target {
    /// dc1 and dc2 with `web` (three instances in dc1, one critical, one
    /// in dc2) and `big` (60 in dc1); a `[[query]]` `fo` failing over.
    pub fn new() -> Self {
        let view = Arc::new(HealthView::new("dc1"));
        view.set_datacenters(vec!["dc1".to_owned(), "dc2".to_owned()]);
        for dc in ["dc1", "dc2"] {
            view.apply_catalog(dc, ["web", "big"].iter().map(|s| (*s).to_owned()).collect());
        }
        let instances = |prefix: &str, count: u8, dc: u8| -> Vec<_> {
            (1..=count)
                .map(|i| {
                    let status = if i == 2 {
                        CheckStatus::Critical
                    } else {
                        CheckStatus::Passing
                    };
                    test_instance(&format!("{prefix}-{i}"), &format!("10.{dc}.0.{i}"), status)
                })
                .collect()
        };
        let health = |instances| ServiceHealth {
            index: 2,
            instances,
        };
        view.apply_service(
            &ServiceKey::new("dc1", "web"),
            health(instances("web", 3, 1)),
        );
        view.apply_service(
            &ServiceKey::new("dc2", "web"),
            health(instances("web2", 1, 2)),
        );
        view.apply_service(
            &ServiceKey::new("dc1", "big"),
            health(instances("big", 60, 1)),
        );
        let config = Config::from_toml_str(
            "[consul]\ndatacenter = \"dc1\"\n[[query]]\nname = \"fo\"\nservice = \"web\"\n\
             failover = { datacenters = [\"dc2\"] }\n",
            "fuzz.toml",
        )
        .unwrap_or_default();
        let handler = DnsHandler::new(
            Arc::new(ArcSwap::from_pointee(Resolver::new(&config))),
            Arc::clone(&view),
            Arc::new(NoWatches),
            Metrics::new(),
            WireSettings {
                udp_payload: config.dns.udp_payload,
                udp_answer_limit: config.dns.udp_answer_limit,
                first_answer_wait: std::time::Duration::from_millis(1),
                upstream: None,
                rate_limit: 0,
                rate_limit_slip: 2,
            },
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("a runtime for the fuzz target: {e}"));
        Self {
            handler,
            view,
            cache: Mutex::new(Cache::new()),
            runtime,
        }
    }

    /// The fast path's reply to a datagram, if any (twice: the second
    /// may come from the cache).
    pub fn udp(&self, datagram: &[u8]) -> Option<Vec<u8>> {
        if datagram.len() < 12 {
            return None;
        }
        let _entered = self.runtime.enter();
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        cache.follow(self.view.generation());
        let mut reply = Vec::new();
        if cache.answer(datagram, &mut Moment::now(), &mut reply, &self.view) {
            return Some(reply);
        }
        let source = SocketAddr::from(([127, 0, 0, 1], 5353));
        match self.handler.respond_now(datagram, source) {
            Immediate::Ready { bytes, keep } => {
                if let Some(entry) = keep {
                    cache.insert(datagram, entry);
                }
                Some(bytes)
            }
            Immediate::Drop | Immediate::Later(_) => None,
        }
    }

    /// The reply to a message over TCP, if any.
    pub fn tcp(&self, message: &[u8]) -> Option<Vec<u8>> {
        let source = SocketAddr::from(([127, 0, 0, 1], 5353));
        self.runtime
            .block_on(self.handler.respond_tcp(message.to_vec(), source))
    }
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::{Message, Query, ResponseCode};
    use hickory_proto::rr::{Name, RecordType};

    use super::Target;

    #[test]
    fn the_fuzz_target_answers_over_both_transports() {
        let target = Target::new();
        let mut query = Message::query();
        query.add_query(Query::query(
            Name::from_ascii("web.query.consul.").unwrap(),
            RecordType::A,
        ));
        let bytes = query.to_vec().unwrap();
        for _ in 0..2 {
            let reply = Message::from_vec(&target.udp(&bytes).expect("a UDP reply")).unwrap();
            assert_eq!(reply.answers.len(), 2, "{reply:?}");
        }
        let reply = Message::from_vec(&target.tcp(&bytes).expect("a TCP reply")).unwrap();
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert!(target.udp(&bytes[..11]).is_none());
        assert!(target.tcp(&[0xff; 3]).is_none());
    }
}
