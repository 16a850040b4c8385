//! consul-failover-dns: a DNS stub for the `consul.` zone.
//!
//! It watches Consul service health in every federated datacenter through
//! HTTP blocking queries, keeps that view in memory, and answers
//! `<name>.query.consul` and `<svc>.service.consul` with the local healthy
//! instances, failing over to another datacenter when the local one has none.
//!
//! # Layout
//!
//! ```text
//! Consul HTTP ──► consul  (client, blocking watches, backoff)
//!                   │ apply_service / apply_catalog
//!                   ▼
//!                 health  (immutable snapshots per (datacenter, service))
//!                   │
//!   config ───►   resolve (pure: question + view + policy → Answer)
//!   prepared ─┘   (Consul's prepared queries and templates, settled)
//!                   │
//!                   ▼
//!                 dns     (UDP fast path with cached answers, TCP accept
//!                   │      loop; hickory-server's UDP loop for comparison)
//!                   │ other names in the zone
//!                   ▼
//!                 upstream (relay to dns.upstream, the Consul agent's DNS)
//! admin (HTTP: /health /ready /metrics /v1/explain /v1/events)
//! register (the resolver's own service in the local agent)
//! app (wiring)     demo
//! ```
//!
//! The Consul simulator the tests and the demo run against lives in
//! `tests/consul-sim`, a separate crate that never depends on this one.

pub mod admin;
pub mod app;
pub mod config;
pub mod consul;
pub mod demo;
pub mod dns;
pub mod explain;
pub mod health;
pub mod metrics;
pub mod monitor;
pub mod prepared;
pub mod register;
pub mod resolve;
pub mod upstream;

/// The version of this build, as Cargo knows it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
