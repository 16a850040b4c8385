//! Follows which datacenter each `[[query]]` and prepared query answers
//! from, and whether each datacenter's Consul answers, as the view
//! changes. A change is a state change: one log line, one count in
//! `consul_failover_dns_failovers_total`, one event on `/v1/events`.
//!
//! Queries need not arrive for a failover to be seen: the definitions are
//! resolved again whenever the view changes (and every second, for
//! `failback_after` holds that end with the clock).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use hickory_proto::rr::RecordType;
use serde::Serialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::health::{HealthLookup, HealthView};
use crate::metrics::Metrics;
use crate::resolve::{Outcome, Resolver};

/// Events kept for a subscriber that reads slowly; one further behind
/// is told how many it missed.
const BACKLOG: usize = 256;
/// The longest the monitor waits without a view change.
const TICK: Duration = Duration::from_secs(1);
/// The shortest time between two passes, so a burst of updates costs
/// one pass.
const SETTLE: Duration = Duration::from_millis(10);

/// Something an operator may want to react to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A query's answers moved to another datacenter (failover or
    /// failback), or to none.
    Failover {
        /// The `[[query]]` or prepared query.
        query: String,
        /// The datacenter it answered from; `None`: none answered.
        from: Option<String>,
        /// The datacenter it answers from now; `None`: none answers.
        to: Option<String>,
        /// Why, in one word (as `/v1/explain` says it).
        reason: String,
        /// Why, in a sentence.
        detail: String,
        /// When it was seen (RFC 3339).
        time: String,
    },
    /// A datacenter's Consul stopped or started answering.
    Datacenter {
        /// The datacenter.
        datacenter: String,
        /// `reachable` or `unreachable`.
        state: &'static str,
        /// When it was seen (RFC 3339).
        time: String,
    },
}

impl Event {
    /// The SSE event name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Failover { .. } => "failover",
            Self::Datacenter { .. } => "datacenter",
        }
    }
}

/// What the monitor saw last.
#[derive(Debug, Default)]
struct Seen {
    /// Per followed query: the datacenter it answers from.
    queries: BTreeMap<String, Option<String>>,
    /// Per datacenter: whether its Consul answers.
    datacenters: BTreeMap<String, bool>,
}

/// The event stream, and the state a new subscriber starts from.
#[derive(Debug)]
pub struct Events {
    sender: broadcast::Sender<Arc<Event>>,
    seen: Mutex<Seen>,
}

impl Default for Events {
    fn default() -> Self {
        Self::new()
    }
}

impl Events {
    /// No events yet, no subscribers.
    pub fn new() -> Self {
        Self {
            sender: broadcast::channel(BACKLOG).0,
            seen: Mutex::new(Seen::default()),
        }
    }

    /// Subscribes, and returns the current state as it would have been
    /// announced: each followed query's datacenter and each datacenter's
    /// reachability. Taken under the same lock that sends, so nothing
    /// falls between the two.
    pub fn subscribe(&self) -> (Vec<Event>, broadcast::Receiver<Arc<Event>>) {
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let time = now();
        let mut current: Vec<Event> = seen
            .datacenters
            .iter()
            .map(|(dc, reachable)| Event::Datacenter {
                datacenter: dc.clone(),
                state: reachability(*reachable),
                time: time.clone(),
            })
            .collect();
        current.extend(seen.queries.iter().map(|(query, dc)| Event::Failover {
            query: query.clone(),
            from: None,
            to: dc.clone(),
            reason: "current".to_owned(),
            detail: "the datacenter it answers from now".to_owned(),
            time: time.clone(),
        }));
        (current, self.sender.subscribe())
    }

    fn send(&self, event: Event) {
        // No subscriber is not an error.
        let _ = self.sender.send(Arc::new(event));
    }
}

fn reachability(reachable: bool) -> &'static str {
    if reachable {
        "reachable"
    } else {
        "unreachable"
    }
}

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Follows the view; see the module comment.
pub struct Monitor {
    /// The resolver in use (swapped on reload).
    pub resolver: Arc<ArcSwap<Resolver>>,
    /// The health view.
    pub view: Arc<HealthView>,
    /// Counts failovers.
    pub metrics: Metrics,
    /// Where events go.
    pub events: Arc<Events>,
}

impl Monitor {
    /// Runs until shutdown.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            let changed = self.view.changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            self.pass();
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = changed => {}
                () = tokio::time::sleep(TICK) => {}
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(SETTLE) => {}
            }
        }
    }

    /// Looks once: every followed query, every datacenter.
    pub fn pass(&self) {
        let local = self.view.local_datacenter();
        if local.is_empty() {
            return;
        }
        let resolver = self.resolver.load();
        let mut seen = self
            .events
            .seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let followed = resolver.followed();
        seen.queries
            .retain(|query, _| followed.iter().any(|(label, _)| label == query));
        for (label, name) in followed {
            let Some(name) = resolver.query_name(&name) else {
                continue;
            };
            let (outcome, trace) =
                crate::dns::resolve_traced(&resolver, &*self.view, name, RecordType::A);
            if matches!(outcome, Outcome::Pending(_)) {
                // Not synced yet: nothing to say.
                continue;
            }
            let to = trace.chosen;
            let Some(from) = seen.queries.insert(label.clone(), to.clone()) else {
                continue;
            };
            if from == to {
                continue;
            }
            let none = |dc: &Option<String>| dc.clone().unwrap_or_else(|| "none".to_owned());
            self.metrics.failover(&label, &none(&from), &none(&to));
            tracing::info!(
                query = %label,
                from = %none(&from),
                to = %none(&to),
                reason = %trace.reason,
                detail = %trace.detail,
                "answers moved to another datacenter"
            );
            self.events.send(Event::Failover {
                query: label,
                from,
                to,
                reason: trace.reason,
                detail: trace.detail,
                time: now(),
            });
        }
        let datacenters = self.view.datacenters();
        seen.datacenters
            .retain(|dc, _| datacenters.iter().any(|d| d == dc));
        for dc in datacenters.iter().filter(|dc| !dc.is_empty()) {
            let reachable = self.view.reachable(dc);
            let before = seen.datacenters.insert(dc.clone(), reachable);
            if before.is_some_and(|b| b != reachable) {
                // The probe loop logs the change with its error.
                self.events.send(Event::Datacenter {
                    datacenter: dc.clone(),
                    state: reachability(reachable),
                    time: now(),
                });
            }
        }
    }
}
