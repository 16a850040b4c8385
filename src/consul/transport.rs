//! Connections to Consul, kept within the agent's per-client limit.
//!
//! A Consul agent accepts at most `limits.http_max_conns_per_client` (200
//! by default) HTTP connections from one client IP and answers the others
//! with 429 and a close (`agent/agent.go` `listenHTTP`, go-connlimit). A
//! blocking read holds its connection for up to `consul.wait`, so one
//! HTTP/1.1 connection per watch cannot watch more than about 200
//! (service, datacenter) pairs through one agent. Over HTTPS the agent
//! also speaks HTTP/2 (`setupHTTPS` calls `http2.ConfigureServer`), which
//! carries up to 250 concurrent requests per connection (Go's default
//! `MaxConcurrentStreams`). So, per origin (scheme, host, port):
//!
//! - `https://` with `consul.http2` (the default): lanes, each one HTTP/2
//!   connection (see `h2`) with at most [`STREAMS_PER_CONNECTION`]
//!   requests in flight. Requests fill the first lane with room; a new
//!   lane opens when all are full, up to `consul.max_connections` lanes.
//! - `http://` (or `consul.http2 = false`): one HTTP/1.1 connection per
//!   request in flight, at most `consul.max_connections` at once.
//!
//! Blocking health reads may use all but an eighth of that (at least 8
//! connections' worth, at most half), so the other reads (a new watch's
//! first read, the catalog and prepared-query watches, probes) never wait
//! behind reads that block for `consul.wait`. Past that capacity a
//! blocking read waits its turn (first come, first served) and a warning
//! names the origin and the settings involved, once a minute.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use url::Url;

use hyper::header::HeaderValue;

use super::ConsulError;
use super::connection::{self, Answer, Connection, Connector};

/// Requests in flight on one HTTP/2 connection: under Go's default of 250
/// concurrent streams, so a connection never queues requests itself, with
/// room for streams the server has not yet seen closed (a read abandoned
/// when its watch stopped). 240 × the 132 connections that blocking reads
/// may use by default holds 30,000 watches at once.
pub const STREAMS_PER_CONNECTION: usize = 240;

/// Connections kept for reads other than blocking health reads: an
/// eighth of `consul.max_connections`, at least this many, at most half.
const RESERVED_CONNECTIONS: usize = 8;

/// How often "all connections are busy" may be logged per origin.
const BUSY_LOG_EVERY: Duration = Duration::from_secs(60);

/// The connections of a [`ConsulClient`](super::ConsulClient).
pub struct Transport {
    /// Opens connections.
    connector: Connector,
    /// `consul.http2`: HTTP/2 for `https://` origins.
    http2: bool,
    /// `consul.max_connections`, per origin.
    max_connections: usize,
    /// Per origin, its budget.
    origins: Mutex<HashMap<String, Arc<Budget>>>,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("http2", &self.http2)
            .field("max_connections", &self.max_connections)
            .finish_non_exhaustive()
    }
}

/// One origin's share of connections.
struct Budget {
    /// Requests that may be in flight at once.
    permits: Arc<Semaphore>,
    /// Blocking health reads that may be in flight at once: fewer than
    /// `permits`, so the other reads (first reads of new watches, the
    /// catalog and prepared-query watches, probes) always find room
    /// rather than waiting behind reads that block for `consul.wait`.
    watches: Arc<Semaphore>,
    /// The connections opened so far.
    lanes: Mutex<Vec<Arc<Lane>>>,
    /// Whether they speak HTTP/2 (else HTTP/1.1, one request at a time).
    http2: bool,
    /// Requests in flight on one connection.
    per_connection: usize,
    /// When "all busy" was last logged.
    busy_logged: Mutex<Option<Instant>>,
}

/// One connection and its load.
struct Lane {
    /// The connection.
    connection: Connection,
    /// Requests in flight on it.
    busy: AtomicUsize,
}

/// The right to send one request, and the connection to send it on. The
/// place is given back when the lease is dropped (the answer read, or the
/// request abandoned).
pub struct Lease<'a> {
    /// The transport.
    transport: &'a Transport,
    /// The lane whose count this lease holds.
    lane: Arc<Lane>,
    /// The origin's permit.
    _permit: OwnedSemaphorePermit,
    /// The permit of a blocking health read.
    _watch: Option<OwnedSemaphorePermit>,
}

impl Lease<'_> {
    /// Sends `what` to `url` on the leased connection (see
    /// [`Connection::send`]); the connection's own future, no layer of its
    /// own around it.
    pub fn send<'a>(
        &'a self,
        url: &'a Url,
        what: connection::Call<'a>,
        token: Option<&'a HeaderValue>,
        timeout: Duration,
    ) -> impl Future<Output = Result<Answer, ConsulError>> + Send + 'a {
        self.lane
            .connection
            .send(&self.transport.connector, url, what, token, timeout)
    }
}

impl Lease<'_> {
    /// Sends `GET url` on the leased connection without waiting (see
    /// [`Connection::try_send`]).
    pub fn try_send(
        &self,
        url: &Url,
        token: Option<&HeaderValue>,
    ) -> Option<h2::client::ResponseFuture> {
        self.lane.connection.try_send(url, token)
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        self.lane.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A lock, whatever a panicking holder left.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Transport {
    /// A transport opening connections with `connector`: HTTP/2 to
    /// `https://` origins if `http2`, else HTTP/1.1.
    pub fn new(connector: Connector, http2: bool, max_connections: usize) -> Self {
        Self {
            connector,
            http2,
            max_connections: max_connections.max(1),
            origins: Mutex::new(HashMap::new()),
        }
    }

    /// Waits for room to send one request to `url` (a blocking health
    /// read if `watch`) and returns the way to send it.
    pub async fn lease(&self, url: &Url, watch: bool) -> Lease<'_> {
        let budget = self.budget(url);
        let watch = if watch {
            if budget.watches.available_permits() == 0 {
                self.log_busy(&budget, url);
            }
            Some(
                Arc::clone(&budget.watches)
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed"),
            )
        } else {
            None
        };
        let permit = Arc::clone(&budget.permits)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        self.lease_with(&budget, permit, watch)
    }

    /// [`lease`](Self::lease) if there is room now, without waiting.
    pub fn try_lease(&self, url: &Url, watch: bool) -> Option<Lease<'_>> {
        let budget = self.budget(url);
        let watch = if watch {
            Some(Arc::clone(&budget.watches).try_acquire_owned().ok()?)
        } else {
            None
        };
        let permit = Arc::clone(&budget.permits).try_acquire_owned().ok()?;
        Some(self.lease_with(&budget, permit, watch))
    }

    /// The budget of `url`'s origin, made on first use.
    fn budget(&self, url: &Url) -> Arc<Budget> {
        let origin = url.origin().ascii_serialization();
        let mut origins = lock(&self.origins);
        Arc::clone(origins.entry(origin).or_insert_with(|| {
            let http2 = self.http2 && url.scheme() == "https";
            let per_connection = if http2 { STREAMS_PER_CONNECTION } else { 1 };
            let connections = self.max_connections;
            let reserved = (connections / 8)
                .max(RESERVED_CONNECTIONS)
                .min(connections / 2);
            Arc::new(Budget {
                permits: Arc::new(Semaphore::new(connections * per_connection)),
                watches: Arc::new(Semaphore::new((connections - reserved) * per_connection)),
                lanes: Mutex::new(Vec::new()),
                http2,
                per_connection,
                busy_logged: Mutex::new(None),
            })
        }))
    }

    /// A lease holding `permit` (and `watch`) on the first lane of
    /// `budget` with room, a new one if all are full.
    fn lease_with(
        &self,
        budget: &Budget,
        permit: OwnedSemaphorePermit,
        watch: Option<OwnedSemaphorePermit>,
    ) -> Lease<'_> {
        let lane = {
            let mut lanes = lock(&budget.lanes);
            // The permits keep the requests in flight under lanes × their
            // capacity, so when every lane is full there is room for one
            // more.
            let lane = match lanes
                .iter()
                .find(|lane| lane.busy.load(Ordering::Relaxed) < budget.per_connection)
            {
                Some(lane) => Arc::clone(lane),
                None => {
                    let lane = Arc::new(Lane {
                        connection: Connection::new(budget.http2),
                        busy: AtomicUsize::new(0),
                    });
                    lanes.push(Arc::clone(&lane));
                    lane
                }
            };
            // Counted under the lock, so two leases never both take the
            // last place of a lane.
            lane.busy.fetch_add(1, Ordering::Relaxed);
            lane
        };
        Lease {
            transport: self,
            lane,
            _permit: permit,
            _watch: watch,
        }
    }

    /// The connections (lanes) opened to `url`'s origin so far.
    pub fn lanes(&self, url: &Url) -> usize {
        lock(&self.origins)
            .get(&url.origin().ascii_serialization())
            .map_or(0, |budget| lock(&budget.lanes).len())
    }

    /// Logs, at most once a minute per origin, that requests wait.
    fn log_busy(&self, budget: &Budget, url: &Url) {
        let now = Instant::now();
        let mut logged = lock(&budget.busy_logged);
        if logged.is_some_and(|at| now.duration_since(at) < BUSY_LOG_EVERY) {
            return;
        }
        *logged = Some(now);
        let origin = url.origin().ascii_serialization();
        if budget.http2 {
            tracing::warn!(
                origin,
                connections = self.max_connections,
                per_connection = STREAMS_PER_CONNECTION,
                "every HTTP/2 connection to Consul is full; watches wait their turn, so \
                 answers may lag by up to consul.wait (raise consul.max_connections, and \
                 Consul's limits.http_max_conns_per_client with it)"
            );
        } else {
            tracing::warn!(
                origin,
                connections = self.max_connections,
                "every HTTP/1.1 connection to Consul is busy with a blocking read; watches \
                 wait their turn, so answers may lag by up to consul.wait (use https://, \
                 where one HTTP/2 connection carries 240 watches, or raise \
                 consul.max_connections together with Consul's \
                 limits.http_max_conns_per_client, 200 by default)"
            );
        }
    }
}
