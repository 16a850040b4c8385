//! consul-failover-dns: a DNS stub for the `consul.` zone.
//!
//! It watches Consul service health in every federated datacenter through
//! HTTP blocking queries, keeps that view in memory, and answers
//! `<name>.query.consul` and `<svc>.service.consul` with the local healthy
//! instances, failing over to another datacenter when the local one has none.
//!
//! This crate is being built issue by issue; so far it only carries its
//! version. The Consul simulator its tests run against lives in
//! `tests/consul-sim`, a separate crate that never depends on this one.

/// The version of this build, as Cargo knows it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
