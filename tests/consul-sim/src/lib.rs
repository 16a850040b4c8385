//! consul-sim: a multi-datacenter Consul HTTP API simulator for tests.
//!
//! No Consul binary can be installed where consul-failover-dns is tested,
//! so this crate stands in for a WAN-federated set of Consul datacenters.
//! It follows `shared/reference/consul-api.md` (cited as "reference §N" in
//! the docs here): wire field names, status codes, error texts, blocking
//! query semantics, prepared queries with Consul's failover algorithm.
//! It never depends on the resolver crate, so a misreading of Consul
//! cannot hide in both.
//!
//! Layout:
//! - [`model`]: Consul's JSON types.
//! - [`store`]: one datacenter's catalog and its Raft/table indexes.
//! - [`query`]: prepared-query validation, templates, filters, failover list.
//! - [`sim`]: the federation, fault injection and the library API.
//! - `agent`: each listener's agent: services registered through
//!   `/v1/agent/service/register`, synced to the catalog, their checks run.
//! - `definition`: that endpoint's body, decoded and validated as Consul does.
//! - `checks`: the HTTP and TCP checks the agent runs.
//! - `http`: the listeners (HTTP/1.1; HTTPS with HTTP/2; the per-client
//!   connection limit), Consul's endpoints and the `/_sim/` API.
//! - `tls`: the simulator's CA and server certificate.
//! - [`duration`]: Go's duration syntax.
//!
//! ```no_run
//! # async fn demo() -> Result<(), String> {
//! let sim = consul_sim::Sim::start(&["dc1", "dc2"]).await?;
//! println!("dc1 at {}", sim.url("dc1").await);
//! sim.lose_leader("dc2");
//! # Ok(()) }
//! ```

mod agent;
mod checks;
mod definition;
pub mod duration;
mod http;
pub mod model;
pub mod query;
pub mod sim;
pub mod store;
mod tls;

pub use agent::{
    CHECK_UPDATE_INTERVAL, DEFAULT_CHECK_DEREGISTER_INTERVAL_MIN, DEFAULT_CHECK_REAP_INTERVAL,
};
pub use checks::{DEFAULT_CHECK_OUTPUT_MAX_SIZE, DEFAULT_CHECK_TIMEOUT, MIN_CHECK_INTERVAL};
pub use http::{
    DEFAULT_QUERY_TIME, H2_MAX_CONCURRENT_STREAMS, JITTER_FRACTION, MAX_QUERY_TIME,
    TOO_MANY_CONNS_BODY, blocking_timeout,
};
pub use sim::{DcSpec, ExecuteOptions, Faults, RecordedRequest, Sim, SimBuilder, Snapshot};
