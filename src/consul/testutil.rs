//! Helpers for this module's tests: simulator set-up, registrations and
//! bounded waiting.

use std::future::Future;
use std::time::Duration;

use consul_sim::Sim;
use consul_sim::model::{CheckInput, RegisterRequest, ServiceInput};

use crate::config::ConsulConfig;

/// The longest any single step of a test may take.
pub(crate) const BOUND: Duration = Duration::from_secs(10);

/// Runs `f`, failing the test if it takes longer than [`BOUND`].
pub(crate) async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(BOUND, f)
        .await
        .expect("step finishes within the bound")
}

/// Polls `done` every few milliseconds until it holds; panics naming
/// `what` if it still does not after `limit`.
pub(crate) async fn eventually(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {limit:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A `[consul]` section pointing at `dc`'s listener, with a 2 s wait.
pub(crate) async fn config(sim: &Sim, dc: &str) -> ConsulConfig {
    ConsulConfig {
        address: sim.url(dc).await,
        wait: Duration::from_secs(2),
        timeout: Duration::from_secs(2),
        stale: true,
        ..ConsulConfig::default()
    }
}

/// Registers `service` on `node` at `address` in `dc`, port 8080, with the
/// service check `service:<node>` in `status` and a passing `serfHealth`
/// node check.
pub(crate) fn register(
    sim: &Sim,
    dc: &str,
    node: &str,
    address: &str,
    service: &str,
    status: &str,
) {
    let request = RegisterRequest {
        datacenter: Some(dc.to_owned()),
        node: Some(node.to_owned()),
        address: Some(address.to_owned()),
        service: Some(ServiceInput {
            id: Some(service.to_owned()),
            service: Some(service.to_owned()),
            port: Some(8080),
            ..ServiceInput::default()
        }),
        checks: Some(vec![
            CheckInput {
                check_id: Some("serfHealth".to_owned()),
                status: Some("passing".to_owned()),
                ..CheckInput::default()
            },
            CheckInput {
                check_id: Some(format!("service:{node}")),
                service_id: Some(service.to_owned()),
                status: Some(status.to_owned()),
                ..CheckInput::default()
            },
        ]),
        ..RegisterRequest::default()
    };
    sim.register(dc, request).expect("registration accepted");
}

/// An `http://` URL nothing listens on (a port bound then released).
pub(crate) fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let address = listener.local_addr().expect("bound address");
    drop(listener);
    format!("http://{address}")
}
