//! End-to-end tests of the `consul-failover-dns` binary: it runs as a
//! child process against `consul_sim` (in this process) and is queried by
//! a Rust client and by real peers (`dig`, `unbound`, glibc, `curl`).
//!
//! Each test claims its own number and so its own loopback addresses
//! ([`support::Net`]), so they run in parallel. A test whose external
//! program is missing fails and names the package to install; the
//! namespace tests need root.
//!
//! | module | what | numbers |
//! |---|---|---|
//! | `failover` | dc1 → dc2 → dc1, and the failover latency measurement | 1 |
//! | `wire` | the wire rules of DESIGN §2, each through dig and Rust | 3–12 |
//! | `forwarders` | unbound, `getaddrinfo` and `curl` through it | 20–21 |
//! | `harness` | the harness itself, against Knot DNS | 30 |
//! | `prepared` | Consul prepared queries and templates over DNS | 40–42 |
//! | `differential` | random prepared queries vs consul-sim's `execute` | 43–44 |
//! | `flood` | 100,000 random names through `dnsperf` | 45 |
//! | `forwarders` (SRV) | SRV targets through unbound | 46 |
//! | `upstream` | `dns.upstream` relaying to dnsmasq, and a silent upstream | 60–61 |
//! | `faults` | issue 5: Consul down, hung, slow, failing, leaderless, rewound, forbidden; stale and unknown data; `failback_after`, `on_all_unhealthy`; start-up with Consul down; issue 8: malformed answers (not JSON, wrong types, `null`, HTML, 502, 429, 500, past the body cap), a trickling Consul | 70–79, 158, 161 |
//! | `chaos` | random Consul faults under a steady query stream (`CHAOS_SECS`, `CHAOS_SEED`) | 80 |
//! | `reload` | SIGHUP reloads (good and bad files), SIGTERM | 81–84 |
//! | `observe` | metrics (promtool), `/v1/explain`, `explain`, `/v1/events` across a failover | 150–151 |
//! | `access` | issue 8: `dns.allow` over UDP (cached answers too) and TCP, and its reload; `dns.rate_limit` with its slip | 157, 160 |
//! | `tcp` | issue 8: the TCP connection cap, idle and slow clients, pipelining, 64 KiB messages; 30 s of hostile load (`HOSTILE_SECS`) | 155–156, 159 |
//! | `register` | `[register]`: the resolver's own service and `/health` check in its agent; found and scraped the way the shipped consul_sd recipe does | 152–154 |
//! | `recipes` | `config/` recipes: unbound (forward and stub zone), `named`, `dnsmasq` run as shipped through a failover; resolved, CoreDNS, Prometheus, Grafana files checked | 100–103 |
//!
//! Run `cargo test --test resolver -- --nocapture` to see the failover
//! latency figures.

#[path = "../support/mod.rs"]
mod support;

mod access;
mod chaos;
mod differential;
mod failover;
mod faults;
mod flood;
mod forwarders;
mod harness;
mod observe;
mod prepared;
mod recipes;
mod register;
mod reload;
mod tcp;
mod upstream;
mod wire;
