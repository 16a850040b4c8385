//! Follows which datacenter each `[[query]]` and prepared query answers
//! from, and whether each datacenter's Consul answers, as the view
//! changes. A change is a state change: one log line, one count in
//! `consul_failover_dns_failovers_total`, one event on `/v1/events`.
//!
//! Queries need not arrive for a failover to be seen: when the view
//! changes, the definitions that read the changed services are resolved
//! again; every second, those whose answer can move with the clock alone
//! (a `failback_after` hold, stale data that ages); and all of them after
//! any change that is not one service's, and every [`FULL`] besides.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use hickory_proto::rr::RecordType;
use serde::Serialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::health::{HealthLookup, HealthView, Read, Recording};
use crate::metrics::Metrics;
use crate::resolve::{Outcome, Resolver};

/// Events kept for a subscriber that reads slowly; one further behind
/// is told how many it missed.
const BACKLOG: usize = 256;
/// The longest the monitor waits without a view change, and how often
/// the queries whose answers move with the clock are resolved again.
const TICK: Duration = Duration::from_secs(1);
/// How often every query is resolved again, changes or not.
const FULL: Duration = Duration::from_secs(30);
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
    /// The followed queries and what their resolutions read.
    followed: Followed,
}

/// The followed queries as of the last full pass, and which services
/// each one's resolution read, so a change of one service resolves again
/// only the queries that read it.
#[derive(Debug, Default)]
struct Followed {
    /// The resolver the list was taken from (a reload replaces it).
    resolver: Option<Arc<Resolver>>,
    /// (label, name), sorted by label ([`Resolver::followed`]).
    queries: Vec<(String, String)>,
    /// Per service name: the queries (indices) whose resolution read it.
    readers: HashMap<String, Vec<usize>>,
    /// Queries whose resolution read something not kept per service (a
    /// node): resolved again on every change.
    broad: Vec<usize>,
    /// Queries whose last answer can move with the clock alone (a
    /// `failback_after` hold, stale data that ages): resolved again
    /// every [`TICK`].
    timed: Vec<usize>,
    /// When all were last resolved.
    full_at: Option<Instant>,
    /// When the timed ones were last resolved.
    timed_at: Option<Instant>,
}

impl Followed {
    /// Notes what query `at`'s resolution read, and whether its answer
    /// can move with the clock.
    fn note(&mut self, at: usize, read: Read, timed: bool) {
        match self.timed.binary_search(&at) {
            Ok(i) if !timed => {
                self.timed.remove(i);
            }
            Err(i) if timed => self.timed.insert(i, at),
            _ => {}
        }
        for key in read.services {
            let readers = self.readers.entry(key.service).or_default();
            if !readers.contains(&at) {
                readers.push(at);
            }
        }
        // Nodes change with any service that runs on them.
        if read.node && !self.broad.contains(&at) {
            self.broad.push(at);
        }
    }

    /// The queries a change of `services` can move, and the timed ones
    /// when `tick`, each once.
    fn due<'a>(&self, services: impl Iterator<Item = &'a String>, tick: bool) -> Vec<usize> {
        let timed: &[usize] = if tick { &self.timed } else { &[] };
        let mut due: Vec<usize> = services
            .filter_map(|service| self.readers.get(service))
            .flatten()
            .chain(&self.broad)
            .chain(timed)
            .copied()
            .collect();
        due.sort_unstable();
        due.dedup();
        due
    }
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
            self.look(false);
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

    /// Looks once: the followed queries that the view's changes since the
    /// last look can move, and those the clock can move when the last
    /// such look is a [`TICK`] old (all of them when `all` is set, after a
    /// change that is not one service's, with a new resolver, or when the
    /// last full look is a [`FULL`] old), and every datacenter. Returns
    /// how many queries it resolved.
    fn look(&self, all: bool) -> usize {
        let local = self.view.local_datacenter();
        if local.is_empty() {
            return 0;
        }
        let resolver = self.resolver.load_full();
        let mut guard = self
            .events
            .seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let seen = &mut *guard;
        let changes = self.view.take_changes();
        let full = all
            || changes.all
            || !seen
                .followed
                .resolver
                .as_ref()
                .is_some_and(|r| Arc::ptr_eq(r, &resolver))
            || seen.followed.full_at.is_none_or(|at| at.elapsed() >= FULL);
        let due = if full {
            // Sorted by label: a lookup is a binary search (a scan made a
            // pass quadratic in the number of queries).
            let followed = resolver.followed();
            seen.queries.retain(|query, _| {
                followed
                    .binary_search_by(|(label, _)| label.as_str().cmp(query))
                    .is_ok()
            });
            let now = Some(Instant::now());
            seen.followed = Followed {
                resolver: Some(Arc::clone(&resolver)),
                queries: followed,
                full_at: now,
                timed_at: now,
                ..Followed::default()
            };
            (0..seen.followed.queries.len()).collect()
        } else {
            let tick = seen.followed.timed_at.is_none_or(|at| at.elapsed() >= TICK);
            if tick {
                seen.followed.timed_at = Some(Instant::now());
            }
            seen.followed.due(changes.services.iter(), tick)
        };
        let resolved = due.len();
        for at in due {
            let (label, name) = &seen.followed.queries[at];
            let Some(name) = resolver.query_name(name) else {
                continue;
            };
            let label = label.clone();
            let reading = Recording::new(&self.view);
            let (outcome, trace) =
                crate::dns::resolve_traced(&resolver, &reading, name, RecordType::A);
            let read = reading.into_read();
            let timed = read.stale || trace.reason == "failback_held";
            seen.followed.note(at, read, timed);
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
        resolved
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::health::{CheckStatus, ServiceHealth, ServiceKey, test_instance};

    fn health(status: CheckStatus) -> ServiceHealth {
        ServiceHealth {
            index: 1,
            instances: vec![test_instance("n1", "10.0.0.1", status)],
        }
    }

    /// Queries q0..q{n-1}, each on its own service, failing over dc1 →
    /// dc2, every instance passing.
    fn monitor(queries: usize) -> Monitor {
        monitor_with(queries, "")
    }

    /// As [`monitor`], with `extra` lines in each query.
    fn monitor_with(queries: usize, extra: &str) -> Monitor {
        let toml: String = (0..queries)
            .map(|q| {
                format!(
                    "[[query]]\nname = \"q{q}\"\nservice = \"svc{q}\"\n\
                     failover = {{ datacenters = [\"dc2\"] }}\n{extra}\n"
                )
            })
            .collect();
        let config = Config::from_toml_str(&toml, "test.toml").expect("config");
        let view = Arc::new(HealthView::new("dc1"));
        view.set_datacenters(vec!["dc1".to_owned(), "dc2".to_owned()]);
        for q in 0..queries {
            for dc in ["dc1", "dc2"] {
                view.apply_service(
                    &ServiceKey::new(dc, &format!("svc{q}")),
                    health(CheckStatus::Passing),
                );
            }
        }
        Monitor {
            resolver: Arc::new(ArcSwap::from_pointee(Resolver::new(&config))),
            view,
            metrics: Metrics::new(),
            events: Arc::new(Events::new()),
        }
    }

    fn moves(receiver: &mut broadcast::Receiver<Arc<Event>>) -> Vec<(String, Option<String>)> {
        let mut out = Vec::new();
        while let Ok(event) = receiver.try_recv() {
            if let Event::Failover { query, to, .. } = &*event {
                out.push((query.clone(), to.clone()));
            }
        }
        out
    }

    #[test]
    fn a_view_names_the_services_that_changed_since_last_asked() {
        let view = HealthView::new("dc1");
        assert!(view.take_changes().all, "a new view: everything");
        let none = view.take_changes();
        assert!(!none.all && none.services.is_empty());
        view.apply_service(&ServiceKey::new("dc1", "web"), health(CheckStatus::Passing));
        view.apply_service(
            &ServiceKey::new("dc2", "web"),
            health(CheckStatus::Critical),
        );
        view.set_failing(&ServiceKey::new("dc1", "db"), true); // no slot: no change
        view.apply_service(&ServiceKey::new("dc2", "api"), health(CheckStatus::Passing));
        let changes = view.take_changes();
        assert!(!changes.all);
        let mut names: Vec<_> = changes.services.into_iter().collect();
        names.sort();
        assert_eq!(names, ["api", "web"]);
        view.remove_service_slot(&ServiceKey::new("dc2", "api"));
        view.set_reachable("dc2", false);
        let changes = view.take_changes();
        assert!(changes.all, "reachability may move any answer");
        assert!(changes.services.is_empty());
        assert!(!view.take_changes().all);
    }

    #[test]
    fn a_change_of_one_service_resolves_again_only_the_queries_that_read_it() {
        let monitor = monitor(50);
        let (_, mut events) = monitor.events.subscribe();
        assert_eq!(monitor.look(false), 50, "the first look resolves all");
        assert!(moves(&mut events).is_empty());
        assert_eq!(monitor.look(false), 0, "nothing changed");

        monitor.view.apply_service(
            &ServiceKey::new("dc1", "svc7"),
            health(CheckStatus::Critical),
        );
        assert_eq!(monitor.look(false), 1);
        assert_eq!(
            moves(&mut events),
            [("q7".to_owned(), Some("dc2".to_owned()))]
        );

        // Back, and another service's change in the same look.
        monitor.view.apply_service(
            &ServiceKey::new("dc1", "svc7"),
            health(CheckStatus::Passing),
        );
        monitor.view.apply_service(
            &ServiceKey::new("dc1", "svc9"),
            health(CheckStatus::Critical),
        );
        assert_eq!(monitor.look(false), 2);
        let mut seen = moves(&mut events);
        seen.sort();
        assert_eq!(
            seen,
            [
                ("q7".to_owned(), Some("dc1".to_owned())),
                ("q9".to_owned(), Some("dc2".to_owned())),
            ]
        );
    }

    #[test]
    fn every_query_is_resolved_again_after_a_broad_change_a_reload_or_a_full_interval() {
        let monitor = monitor(20);
        assert_eq!(monitor.look(false), 20);

        monitor.view.set_reachable("dc2", false);
        assert_eq!(
            monitor.look(false),
            20,
            "a change that is not one service's"
        );

        let config = Config::from_toml_str(
            "[[query]]\nname = \"q0\"\nservice = \"svc0\"\n",
            "test.toml",
        )
        .expect("config");
        monitor.resolver.store(Arc::new(Resolver::new(&config)));
        assert_eq!(monitor.look(false), 1, "a reload: the new definitions");

        assert_eq!(monitor.look(false), 0);
        monitor.events.seen.lock().expect("lock").followed.full_at =
            Instant::now().checked_sub(FULL);
        assert_eq!(monitor.look(false), 1, "a full look is due: all (one here)");
        assert_eq!(monitor.look(false), 0);
        assert_eq!(monitor.look(true), 1, "looking at all resolves all");
    }

    /// Makes the next look a tick after the last timed one.
    fn tick(monitor: &Monitor) {
        monitor.events.seen.lock().expect("lock").followed.timed_at =
            Instant::now().checked_sub(TICK);
    }

    #[test]
    fn answers_on_stale_data_are_looked_at_every_tick() {
        let monitor = monitor(5);
        assert_eq!(monitor.look(false), 5);
        tick(&monitor);
        assert_eq!(monitor.look(false), 0, "nothing can move with the clock");

        // svc2's watch in dc1 fails: its data is stale, and ages.
        monitor
            .view
            .set_failing(&ServiceKey::new("dc1", "svc2"), true);
        assert_eq!(monitor.look(false), 1);
        assert_eq!(monitor.look(false), 0, "not a tick yet");
        tick(&monitor);
        assert_eq!(monitor.look(false), 1, "q2 only");

        monitor
            .view
            .set_failing(&ServiceKey::new("dc1", "svc2"), false);
        assert_eq!(monitor.look(false), 1);
        tick(&monitor);
        assert_eq!(monitor.look(false), 0, "fresh again");
    }

    #[test]
    fn a_failback_hold_is_looked_at_every_tick() {
        let monitor = monitor_with(3, "failback_after = \"1h\"");
        let (_, mut events) = monitor.events.subscribe();
        assert_eq!(monitor.look(false), 3);
        monitor.view.apply_service(
            &ServiceKey::new("dc1", "svc1"),
            health(CheckStatus::Critical),
        );
        assert_eq!(monitor.look(false), 1);
        assert_eq!(
            moves(&mut events),
            [("q1".to_owned(), Some("dc2".to_owned()))]
        );
        tick(&monitor);
        assert_eq!(monitor.look(false), 0, "failed over, nothing held");

        // dc1 is healthy again: answers stay on dc2 for the hold.
        monitor.view.apply_service(
            &ServiceKey::new("dc1", "svc1"),
            health(CheckStatus::Passing),
        );
        assert_eq!(monitor.look(false), 1);
        assert!(moves(&mut events).is_empty(), "held on dc2");
        tick(&monitor);
        assert_eq!(monitor.look(false), 1, "the hold ends with the clock");
    }
}
