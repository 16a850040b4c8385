//! Shared helpers for consul-sim's tests: start a federation, talk to it
//! over HTTP as a Consul client would, and register instances.
//!
//! The `*_over_https` test targets compile a plain target's source again;
//! there the fixture serves HTTPS and its client speaks HTTP/2 (checked on
//! every answer), so the same tests check both transports.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use std::net::SocketAddr;

use consul_sim::{Sim, SimBuilder};
use serde_json::{Value, json};

/// A federation under test plus an HTTP client.
pub struct Fixture {
    pub sim: Sim,
    pub http: reqwest::Client,
}

/// What an HTTP call returned.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Answer {
    /// The body parsed as JSON (panics with the body if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    /// A header's value as a string.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `X-Consul-Index` as a number.
    pub fn index(&self) -> u64 {
        self.header("x-consul-index")
            .unwrap_or_else(|| panic!("no X-Consul-Index in {:?}", self.headers))
            .parse()
            .expect("X-Consul-Index is a number")
    }
}

/// Whether this test target runs over HTTPS and HTTP/2 (its name ends in
/// `_over_https`).
pub fn over_https() -> bool {
    env!("CARGO_CRATE_NAME").ends_with("_over_https")
}

/// `Sim::builder()`, serving HTTPS in the `*_over_https` targets.
pub fn builder() -> SimBuilder {
    Sim::builder().tls(over_https())
}

/// A client for `sim` with a 30 s timeout, trusting its CA if it has one.
pub fn client(sim: &Sim) -> reqwest::Client {
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(30));
    if let Some(ca) = sim.ca_pem() {
        let ca = reqwest::Certificate::from_pem(ca.as_bytes()).expect("CA PEM parses");
        builder = builder.add_root_certificate(ca);
    }
    builder.build().expect("client builds")
}

impl Fixture {
    /// Starts datacenters `names` on 127.0.0.1:0.
    pub async fn start(names: &[&str]) -> Self {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let builder = names.iter().fold(builder(), |b, name| b.dc(name, any));
        Self::with(builder.start().await.expect("simulator starts"))
    }

    /// Wraps a started simulator, with a client from [`client`].
    pub fn with(sim: Sim) -> Self {
        Self {
            http: client(&sim),
            sim,
        }
    }

    /// Sends `method` to `path` (with its query string) on `dc`'s listener.
    pub async fn call(&self, method: &str, dc: &str, path: &str, body: Option<Value>) -> Answer {
        let url = format!("{}{path}", self.sim.url(dc).await);
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("valid method");
        let mut req = self.http.request(method, url);
        if let Some(body) = body {
            req = req.body(body.to_string());
        }
        let resp = req.send().await.expect("request is answered");
        if over_https() {
            assert_eq!(resp.version(), reqwest::Version::HTTP_2, "{path}");
        }
        Answer {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            body: resp.text().await.expect("body reads"),
        }
    }

    /// `GET path` on `dc`.
    pub async fn get(&self, dc: &str, path: &str) -> Answer {
        self.call("GET", dc, path, None).await
    }

    /// `PUT path` on `dc` with a JSON body.
    pub async fn put(&self, dc: &str, path: &str, body: Value) -> Answer {
        self.call("PUT", dc, path, Some(body)).await
    }

    /// Registers, through dc1's (or the first DC's) HTTP API, an instance
    /// of `service` on `node` at `address` in `dc`, with one service check
    /// `service:<node>` in `status`.
    pub async fn register(&self, dc: &str, node: &str, address: &str, service: &str, status: &str) {
        let body = instance(dc, node, address, service, status);
        let answer = self.put(dc, "/v1/catalog/register", body).await;
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (200, "true"),
            "register {node}"
        );
    }
}

/// A register body: `service` on `node` at `address` in `dc`, port 8080,
/// with the service check `service:<node>` in `status`.
pub fn instance(dc: &str, node: &str, address: &str, service: &str, status: &str) -> Value {
    json!({
        "Datacenter": dc,
        "Node": node,
        "Address": address,
        "Service": {"Service": service, "Port": 8080},
        "Check": {"CheckID": format!("service:{node}"), "Name": service,
                  "ServiceID": service, "Status": status},
    })
}

/// Addresses of the node entries in a health or execute `Nodes` array, sorted.
pub fn node_addresses(nodes: &Value) -> Vec<String> {
    let mut out: Vec<String> = nodes
        .as_array()
        .expect("an array of nodes")
        .iter()
        .map(|n| {
            n["Node"]["Address"]
                .as_str()
                .expect("an address")
                .to_owned()
        })
        .collect();
    out.sort();
    out
}
