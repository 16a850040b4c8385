//! HTTPS listeners as Consul's (`agent/agent.go` `listenHTTP`,
//! `setupHTTPS`): TLS with the simulator's own CA, HTTP/2 negotiated by
//! ALPN with x/net/http2's 250 concurrent streams per connection, HTTP/1.1
//! for clients that offer only that; plain listeners stay HTTP/1.1 only.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use common::instance;
use consul_sim::model::RegisterRequest;
use consul_sim::{H2_MAX_CONCURRENT_STREAMS, Sim};
use reqwest::Version;
use tokio::task::JoinSet;
use tokio::time::Instant;

const ANY: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

async fn start_tls(names: &[&str]) -> Sim {
    let builder = names
        .iter()
        .fold(Sim::builder().tls(true), |b, n| b.dc(n, ANY));
    builder.start().await.expect("simulator starts")
}

/// A client trusting `sim`'s CA; HTTP/1.1 only if `http1`.
fn trusting(sim: &Sim, http1: bool) -> reqwest::Client {
    let ca = sim.ca_pem().expect("a CA with TLS on");
    let mut builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap());
    if http1 {
        builder = builder.http1_only();
    }
    builder.build().unwrap()
}

/// Registers an instance of `service` on `node` through the library (no
/// HTTP request, so no stream or connection is needed).
fn register(sim: &Sim, node: &str, service: &str) {
    let body = instance("dc1", node, "10.0.0.1", service, "passing");
    let req: RegisterRequest = serde_json::from_value(body).unwrap();
    sim.register("dc1", req).unwrap();
}

fn index_of(resp: &reqwest::Response) -> u64 {
    resp.headers()["x-consul-index"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Polls `done` every 10 ms until it holds; panics after `limit`.
async fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A client trusting the CA negotiates HTTP/2 and reads both a plain
/// endpoint and a blocking query, which holds for its wait and then
/// answers with the same index; the simulator records the version.
#[tokio::test]
async fn https_negotiates_http2_and_serves_blocking_queries() {
    let sim = start_tls(&["dc1", "dc2"]).await;
    assert!(sim.tls_enabled());
    let url = sim.url("dc1").await;
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let ca = sim.ca_pem().unwrap();
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");
    let http = trusting(&sim, false);

    let resp = http
        .get(format!("{url}/v1/catalog/datacenters"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (resp.status().as_u16(), resp.version()),
        (200, Version::HTTP_2)
    );
    assert_eq!(resp.text().await.unwrap(), r#"["dc1","dc2"]"#);

    register(&sim, "n1", "x");
    let first = http
        .get(format!("{url}/v1/health/service/x"))
        .send()
        .await
        .unwrap();
    let index = index_of(&first);
    let start = Instant::now();
    let held = http
        .get(format!("{url}/v1/health/service/x?index={index}&wait=1s"))
        .send()
        .await
        .unwrap();
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "held for the wait"
    );
    assert_eq!(
        (held.status().as_u16(), held.version()),
        (200, Version::HTTP_2)
    );
    assert_eq!(index_of(&held), index);

    // A write wakes a blocked query at once.
    let waiter = {
        let http = http.clone();
        let url = format!("{url}/v1/health/service/x?index={index}&wait=20s");
        tokio::spawn(async move { http.get(url).send().await.unwrap() })
    };
    wait_until(Duration::from_secs(10), "the blocking read", || {
        sim.requests("dc1").len() == 4
    })
    .await;
    register(&sim, "n2", "x");
    let woken = waiter.await.unwrap();
    assert!(index_of(&woken) > index);
    assert_eq!(
        woken
            .json::<serde_json::Value>()
            .await
            .unwrap()
            .as_array()
            .map(Vec::len),
        Some(2)
    );

    let log = sim.requests("dc1");
    assert!(log.iter().all(|r| r.version == "HTTP/2.0"), "{log:?}");
    let peers: HashSet<_> = log.iter().map(|r| r.remote_addr.clone()).collect();
    assert_eq!(peers.len(), 1, "one connection: {peers:?}");
}

/// A client that offers only `http/1.1` by ALPN is served HTTP/1.1 over
/// TLS, blocking queries included.
#[tokio::test]
async fn https_serves_http1_clients() {
    let sim = start_tls(&["dc1"]).await;
    let url = sim.url("dc1").await;
    let http = trusting(&sim, true);
    register(&sim, "n1", "x");
    let first = http
        .get(format!("{url}/v1/health/service/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (first.status().as_u16(), first.version()),
        (200, Version::HTTP_11)
    );
    let index = index_of(&first);
    let start = Instant::now();
    let held = http
        .get(format!("{url}/v1/health/service/x?index={index}&wait=1s"))
        .send()
        .await
        .unwrap();
    assert!(start.elapsed() >= Duration::from_secs(1));
    assert_eq!(
        (held.status().as_u16(), held.version()),
        (200, Version::HTTP_11)
    );
    let log = sim.requests("dc1");
    assert_eq!(log.len(), 2);
    assert!(log.iter().all(|r| r.version == "HTTP/1.1"), "{log:?}");
}

/// The handshake fails for a client that does not trust the simulator's
/// CA, including one trusting another simulator's: each makes its own.
#[tokio::test]
async fn https_needs_the_simulators_ca() {
    let sim = start_tls(&["dc1"]).await;
    let other = start_tls(&["dc1"]).await;
    assert_ne!(sim.ca_pem(), other.ca_pem());
    let url = format!("{}/v1/catalog/datacenters", sim.url("dc1").await);
    for http in [reqwest::Client::new(), trusting(&other, false)] {
        let err = http.get(&url).send().await.unwrap_err();
        assert!(err.is_connect(), "{err:?}");
        assert!(format!("{err:?}").contains("UnknownIssuer"), "{err:?}");
    }
    assert!(sim.requests("dc1").is_empty());
}

/// The certificate names `localhost`, `127.0.0.1` and each datacenter's
/// `server.<dc>.consul`, as `consul tls cert create -server` does.
#[tokio::test]
async fn certificate_names_localhost_and_the_servers() {
    let sim = start_tls(&["dc1", "dc2"]).await;
    let addr = sim.addr("dc2").await;
    let ca = reqwest::Certificate::from_pem(sim.ca_pem().unwrap().as_bytes()).unwrap();
    let http = reqwest::Client::builder()
        .add_root_certificate(ca)
        .resolve("server.dc1.consul", addr)
        .resolve("server.dc2.consul", addr)
        .resolve("localhost", addr)
        .build()
        .unwrap();
    for host in ["localhost", "server.dc1.consul", "server.dc2.consul"] {
        let url = format!("https://{host}:{}/v1/agent/self", addr.port());
        let resp = http.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{url}");
    }
}

/// A plain listener speaks HTTP/1.1 only: no h2c, not even with prior
/// knowledge.
#[tokio::test]
async fn plain_http_has_no_h2c() {
    let sim = Sim::start(&["dc1"]).await.unwrap();
    assert!(!sim.tls_enabled());
    assert_eq!(sim.ca_pem(), None);
    let url = format!("{}/v1/catalog/datacenters", sim.url("dc1").await);
    assert!(url.starts_with("http://"));
    let resp = reqwest::get(&url).await.unwrap();
    assert_eq!(resp.version(), Version::HTTP_11);
    let h2c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    assert!(h2c.get(&url).send().await.is_err());
    let log = sim.requests("dc1");
    assert_eq!(log.len(), 1, "the h2c attempt is no request: {log:?}");
    assert_eq!(log[0].version, "HTTP/1.1");
}

/// One HTTP/2 connection carries at most 250 requests at once (x/net/http2's
/// `defaultMaxStreams`): of 300 blocking queries sent together over it, 250
/// are received and held while the other 50 wait in the client; once a
/// write answers the 250, the 50 are received and answered.
#[tokio::test]
async fn h2_connection_serves_at_most_250_streams_at_once() {
    let sim = start_tls(&["dc1"]).await;
    let url = sim.url("dc1").await;
    let http = trusting(&sim, false);
    register(&sim, "n1", "x");
    // The first request opens the connection and learns its settings.
    let first = http
        .get(format!("{url}/v1/health/service/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(first.version(), Version::HTTP_2);
    let index = index_of(&first);
    let blocking = format!("{url}/v1/health/service/x?index={index}&wait=20s");
    let mut waiters = JoinSet::new();
    for _ in 0..300 {
        let http = http.clone();
        let url = blocking.clone();
        waiters.spawn(async move {
            let resp = http.get(url).send().await.unwrap();
            (resp.status().as_u16(), resp.version())
        });
    }
    let index_param = index.to_string();
    let held = || {
        sim.requests("dc1")
            .iter()
            .filter(|r| r.param("index").as_deref() == Some(index_param.as_str()))
            .count()
    };
    let max = H2_MAX_CONCURRENT_STREAMS as usize;
    assert_eq!(max, 250);
    wait_until(Duration::from_secs(20), "250 held queries", || {
        held() >= max
    })
    .await;
    // More time changes nothing: the 251st waits for a free stream.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(held(), max);
    assert_eq!(sim.open_connections("dc1"), 1);

    register(&sim, "n2", "x");
    let mut answered = 0;
    while let Some(result) = waiters.join_next().await {
        assert_eq!(result.unwrap(), (200, Version::HTTP_2));
        answered += 1;
    }
    assert_eq!(answered, 300);
    assert_eq!(held(), 300);
    let log = sim.requests("dc1");
    let peers: HashSet<_> = log.iter().map(|r| r.remote_addr.as_str()).collect();
    assert_eq!(peers.len(), 1, "all over one connection: {peers:?}");
    assert!(log.iter().all(|r| r.version == "HTTP/2.0"));
}

/// Stopping an HTTPS listener drops its connections and the HTTP/2 requests
/// in flight on them; restarting serves HTTPS with HTTP/2 on the same port
/// again, and the fault API works over it.
#[tokio::test]
async fn stopped_https_listener_drops_streams_and_restarts() {
    let sim = start_tls(&["dc1"]).await;
    let url = sim.url("dc1").await;
    let http = trusting(&sim, false);
    register(&sim, "n1", "x");
    let first = http
        .get(format!("{url}/v1/health/service/x"))
        .send()
        .await
        .unwrap();
    let index = index_of(&first);
    let waiter = {
        let http = http.clone();
        let url = format!("{url}/v1/health/service/x?index={index}&wait=20s");
        tokio::spawn(async move { http.get(url).send().await })
    };
    wait_until(Duration::from_secs(10), "the blocking read", || {
        sim.requests("dc1").len() == 2
    })
    .await;
    let start = Instant::now();
    sim.stop_listener("dc1").await;
    let dropped = waiter.await.unwrap();
    assert!(dropped.is_err(), "{dropped:?}");
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(sim.open_connections("dc1"), 0);
    let err = http
        .get(format!("{url}/v1/agent/self"))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err:?}");

    sim.start_listener("dc1").await.unwrap();
    assert_eq!(sim.url("dc1").await, url);
    let fail = http
        .post(format!("{url}/_sim/dc/dc1/fail?status=503&count=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (fail.status().as_u16(), fail.version()),
        (200, Version::HTTP_2)
    );
    let failed = http
        .get(format!("{url}/v1/catalog/services"))
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), 503);
    assert_eq!(failed.text().await.unwrap(), "Service Unavailable");
    let state: serde_json::Value = http
        .get(format!("{url}/_sim/state"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state[0]["Tls"], true);
    assert_eq!(state[0]["Listening"], true);
    // Stopping the listener a request came in on answers first.
    let stop = http
        .post(format!("{url}/_sim/dc/dc1/listener/stop"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (stop.status().as_u16(), stop.version()),
        (202, Version::HTTP_2)
    );
    wait_until(Duration::from_secs(10), "the listener to stop", || {
        sim.open_connections("dc1") == 0
    })
    .await;
}

#[tokio::test]
async fn verify_incoming_requires_a_client_certificate_from_the_ca() {
    let sim = Sim::builder()
        .dc("dc1", ANY)
        .tls(true)
        .verify_incoming(true)
        .start()
        .await
        .expect("simulator starts");
    let url = format!("{}/v1/catalog/datacenters", sim.url("dc1").await);
    let refused = trusting(&sim, false).get(&url).send().await;
    assert!(
        refused.is_err(),
        "served without a client certificate: {refused:?}"
    );
    let (cert, key) = sim.client_cert_pem().expect("a client certificate");
    let ca = sim.ca_pem().unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap())
        .build()
        .unwrap();
    let reply = client.get(&url).send().await.expect("served with one");
    assert_eq!(reply.status(), 200);
    assert_eq!(reply.version(), Version::HTTP_2);
    // A certificate from another simulator's CA is refused too.
    let other = Sim::builder()
        .dc("dc1", ANY)
        .tls(true)
        .start()
        .await
        .unwrap();
    let (cert, key) = other.client_cert_pem().unwrap();
    let stranger = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap())
        .build()
        .unwrap();
    assert!(stranger.get(&url).send().await.is_err());
    // Without verify_incoming, no certificate is needed.
    let open = start_tls(&["dc1"]).await;
    let url = format!("{}/v1/catalog/datacenters", open.url("dc1").await);
    assert_eq!(
        trusting(&open, false)
            .get(&url)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}
