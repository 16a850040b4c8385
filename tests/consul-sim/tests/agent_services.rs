//! The agent service endpoints (`/v1/agent/service/register`,
//! `/v1/agent/service/deregister/<id>`, `/v1/agent/service/<id>`,
//! `/v1/agent/services`) and the checks the simulated agent runs, against
//! Consul's behaviour: status codes, texts, defaults, and what the catalog
//! shows on the agent's node.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Fixture;
use consul_sim::Sim;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;

//------------ Helpers ------------------------------------------------------------

/// A tiny HTTP server answering every request with the status line and
/// body currently set, recording each request's head.
struct Target {
    addr: SocketAddr,
    answer: Arc<Mutex<(String, String)>>,
    heads: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Target {
    async fn start(status: &str, body: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answer = Arc::new(Mutex::new((status.to_owned(), body.to_owned())));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (a, h) = (answer.clone(), heads.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let (a, h) = (a.clone(), h.clone());
                tokio::spawn(async move {
                    // The head, then as many bytes as its Content-Length.
                    let mut got = Vec::new();
                    let mut buf = [0u8; 1024];
                    let complete = |got: &[u8]| {
                        let end = got.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
                        let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        (got.len() >= end + length).then_some(())
                    };
                    while complete(&got).is_none() {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    h.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&got).into_owned());
                    let (status, body) = a.lock().unwrap().clone();
                    let reply = format!(
                        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(reply.as_bytes()).await;
                });
            }
        });
        Self {
            addr,
            answer,
            heads,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/health", self.addr)
    }

    fn answer(&self, status: &str, body: &str) {
        *self.answer.lock().unwrap() = (status.to_owned(), body.to_owned());
    }

    fn requests(&self) -> usize {
        self.heads.lock().unwrap().len()
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Polls `GET path` on dc1 until `done` holds for its JSON, for at most
/// `within`; returns that JSON.
async fn wait_for(
    f: &Fixture,
    path: &str,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let a = f.get("dc1", path).await;
        let value = a.json();
        if done(&value) {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{path} did not get there within {within:?}: {}",
            a.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The service check `id` of the first instance in a health answer.
fn check<'v>(health: &'v Value, id: &str) -> Option<&'v Value> {
    health[0]["Checks"]
        .as_array()?
        .iter()
        .find(|c| c["CheckID"] == id)
}

async fn register(f: &Fixture, body: Value) {
    let a = f.put("dc1", "/v1/agent/service/register", body).await;
    assert_eq!((a.status, a.body.as_str()), (200, ""), "register");
}

//------------ Register ---------------------------------------------------------------

/// Register: 200 with an empty body (no Content-Type); the service is in
/// the catalog at once on the agent's node, with its check critical and
/// Consul's defaults (ID from the name, `service:<id>`, the check name,
/// tagged addresses from an IPv4 address, weights 1/1); a blocked
/// `/v1/catalog/services` read wakes with a higher index.
#[tokio::test]
async fn register_puts_the_service_on_the_agent_node_at_once() {
    let f = Fixture::start(&["dc1"]).await;
    let before = f.get("dc1", "/v1/catalog/services").await;
    let url = format!(
        "{}/v1/catalog/services?index={}&wait=5s",
        f.sim.url("dc1").await,
        before.index()
    );
    let http = f.http.clone();
    let waiter = tokio::spawn(async move { http.get(url).send().await.unwrap() });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let a = f
        .put(
            "dc1",
            "/v1/agent/service/register",
            json!({"Name": "web", "Port": 8080, "Tags": ["v1"], "Address": "10.1.2.3",
                   "Check": {"TTL": "30s", "Notes": "a note"}}),
        )
        .await;
    assert_eq!((a.status, a.body.as_str()), (200, ""));
    assert_eq!(a.header("content-type"), None);
    let woke = waiter.await.unwrap();
    let index: u64 = woke.headers()["x-consul-index"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(index > before.index());
    assert_eq!(woke.json::<Value>().await.unwrap()["web"], json!(["v1"]));

    let health = f.get("dc1", "/v1/health/service/web").await.json();
    let e = &health[0];
    assert_eq!(e["Node"]["Node"], f.sim.server_node("dc1"));
    assert_eq!(e["Service"]["ID"], "web");
    assert_eq!(e["Service"]["Port"], 8080);
    assert_eq!(e["Service"]["Weights"], json!({"Passing": 1, "Warning": 1}));
    assert_eq!(
        e["Service"]["TaggedAddresses"],
        json!({"lan_ipv4": {"Address": "10.1.2.3", "Port": 8080},
               "wan_ipv4": {"Address": "10.1.2.3", "Port": 8080}})
    );
    assert_eq!(e["Checks"][0]["CheckID"], "serfHealth", "node checks first");
    let c = check(&health, "service:web").expect("the service check");
    assert_eq!(c["Status"], "critical");
    assert_eq!(c["Name"], "Service 'web' check");
    assert_eq!(c["Notes"], "a note");
    assert_eq!(c["Output"], "");
    assert_eq!(c["ServiceID"], "web");
    assert_eq!(c["ServiceName"], "web");
    assert_eq!(c["ServiceTags"], json!(["v1"]));
    assert_eq!(c["Type"], "ttl");
    assert_eq!(c["Node"], f.sim.server_node("dc1"));
    // Recorded like any other request.
    assert!(
        f.sim
            .requests("dc1")
            .iter()
            .any(|r| r.method == "PUT" && r.path == "/v1/agent/service/register")
    );
}

/// Several checks are `service:<id>:<n>`, counted from 1; a given Status is
/// the initial one; check `Interval`/`Timeout` are Go duration strings.
#[tokio::test]
async fn several_checks_are_numbered() {
    let f = Fixture::start(&["dc1"]).await;
    register(
        &f,
        json!({"ID": "web-1", "Name": "web",
               "Check": {"TTL": "30s", "Status": "passing"},
               "Checks": [{"TTL": "30s", "Name": "second"},
                          {"TCP": "127.0.0.1:1", "Interval": "90s", "Timeout": "1500ms",
                           "CheckID": "own"}]}),
    )
    .await;
    let health = f.get("dc1", "/v1/health/service/web").await.json();
    let first = check(&health, "service:web-1:1").expect("first");
    assert_eq!(first["Status"], "passing");
    let second = check(&health, "service:web-1:2").expect("second");
    assert_eq!(
        (second["Name"].as_str(), second["Status"].as_str()),
        (Some("second"), Some("critical"))
    );
    let own = check(&health, "own").expect("own ID");
    assert_eq!(
        (
            own["Type"].as_str(),
            own["Interval"].as_str(),
            own["Timeout"].as_str()
        ),
        (Some("tcp"), Some("1m30s"), Some("1.5s"))
    );
    assert_eq!(first["Interval"], "");
}

/// Validation: Consul's order, statuses and texts.
#[tokio::test]
async fn registration_errors() {
    let f = Fixture::start(&["dc1"]).await;
    let long = "x".repeat(513);
    let cases = [
        (
            json!({"Name": "web", "Foo": 1}),
            400,
            "Request decode failed: json: unknown field \"Foo\"",
        ),
        (
            json!({"Name": "web", "Check": {"ID": "c", "TTL": "1s"}}),
            400,
            "Request decode failed: json: unknown field \"ID\"",
        ),
        (
            json!({"Name": "web", "Check": {"TTL": "soon"}}),
            400,
            "Request decode failed: time: invalid duration \"soon\"",
        ),
        (
            json!({"Name": "web", "Port": "80"}),
            400,
            "Request decode failed: json: cannot unmarshal string into Go struct field .Port of type int",
        ),
        (json!({"Port": 80}), 400, "Missing service name"),
        (
            json!({"Name": "web", "Address": "0.0.0.0"}),
            400,
            "Invalid service address",
        ),
        (
            json!({"Name": "web", "Address": "::"}),
            400,
            "Invalid service address",
        ),
        (
            json!({"Name": "web", "Weights": {"Passing": 1, "Warning": -1}}),
            400,
            "Invalid Weights: Warning must be greater or equal than 0",
        ),
        (
            json!({"Name": "web", "Meta": {"bad key": "v"}}),
            400,
            "Invalid Service Meta: Couldn't load metadata pair ('bad key', 'v'): Key contains invalid characters",
        ),
        (
            json!({"Name": "web", "Meta": {"k": long}}),
            400,
            "Invalid Service Meta: Couldn't load metadata pair ('k', 'LONG'): Value is too long (limit: 512 characters)",
        ),
        (
            json!({"Name": "web", "Check": {"HTTP": "http://127.0.0.1:1/"}}),
            400,
            "Invalid check: Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or OSService checks",
        ),
        (
            json!({"Name": "web", "Check": {"TCP": "127.0.0.1:1"}}),
            400,
            "Invalid check: Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or OSService checks",
        ),
        (
            json!({"Name": "web", "Check": {"Name": "only a name"}}),
            400,
            "Invalid check: TTL must be > 0 for TTL checks",
        ),
        (
            json!({"Name": "web", "Check": {"TTL": "1s", "Interval": "1s"}}),
            400,
            "Invalid check: Interval and TTL cannot both be specified",
        ),
        (
            json!({"Name": "web", "Check": {"TTL": "1s", "Status": "ok"}}),
            400,
            "Status for checks must 'passing', 'warning', 'critical'",
        ),
        (
            json!({"Name": "web", "Check": {"ScriptArgs": ["true"], "Interval": "1s"}}),
            500,
            "Scripts are disabled on this agent from remote calls; to enable, configure 'enable_script_checks' to true",
        ),
    ];
    for (body, status, text) in cases {
        let text = text.replace("LONG", &long);
        let a = f
            .put("dc1", "/v1/agent/service/register", body.clone())
            .await;
        assert_eq!(
            (a.status, a.body.as_str()),
            (status, text.as_str()),
            "{body}"
        );
        assert!(a.header("content-type").unwrap().starts_with("text/plain"));
    }
    let a = f
        .call("PUT", "dc1", "/v1/agent/service/register", None)
        .await;
    assert_eq!(
        (a.status, a.body.as_str()),
        (400, "Request decode failed: EOF")
    );
    // Keys match case-insensitively, as Go's decoder matches them.
    register(&f, json!({"name": "lower", "PORT": 1})).await;
    // Nothing was registered by the failed attempts.
    let services = f.get("dc1", "/v1/agent/services").await.json();
    assert_eq!(
        services.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["lower"]
    );
}

/// Wrong methods: 405 with `Allow`; OPTIONS is a 200 with `Allow`.
#[tokio::test]
async fn wrong_methods_are_405() {
    let f = Fixture::start(&["dc1"]).await;
    for (method, path, allow) in [
        ("GET", "/v1/agent/service/register", "OPTIONS,PUT"),
        ("POST", "/v1/agent/service/register", "OPTIONS,PUT"),
        ("GET", "/v1/agent/service/deregister/web", "OPTIONS,PUT"),
        ("PUT", "/v1/agent/services", "OPTIONS,GET"),
        ("PUT", "/v1/agent/service/web", "OPTIONS,GET"),
    ] {
        let a = f.call(method, "dc1", path, None).await;
        assert_eq!(
            (a.status, a.body.as_str()),
            (405, format!("method {method} not allowed").as_str()),
            "{method} {path}"
        );
        assert_eq!(a.header("allow"), Some(allow), "{method} {path}");
    }
    let a = f
        .call("OPTIONS", "dc1", "/v1/agent/service/register", None)
        .await;
    assert_eq!((a.status, a.header("allow")), (200, Some("OPTIONS,PUT")));
}

//------------ Re-registration ------------------------------------------------------------

/// Re-registration keeps an existing check's status and output (even over
/// a Status in the request); `replace-existing-checks` removes the
/// service's checks missing from the request, otherwise they stay.
#[tokio::test]
async fn reregistration_keeps_check_state() {
    let f = Fixture::start(&["dc1"]).await;
    let body = json!({"Name": "web", "Checks": [
        {"CheckID": "a", "TTL": "60s"}, {"CheckID": "b", "TTL": "60s"}]});
    register(&f, body.clone()).await;
    let a = f
        .put("dc1", "/v1/agent/check/pass/a?note=fine", json!(null))
        .await;
    assert_eq!((a.status, a.body.as_str()), (200, ""));
    let health = f.get("dc1", "/v1/health/service/web").await.json();
    let a = check(&health, "a").unwrap();
    assert_eq!(
        (a["Status"].as_str(), a["Output"].as_str()),
        (Some("passing"), Some("fine"))
    );

    register(
        &f,
        json!({"Name": "web", "Tags": ["new"], "Check":
        {"CheckID": "a", "TTL": "60s", "Status": "critical"}}),
    )
    .await;
    let health = f.get("dc1", "/v1/health/service/web").await.json();
    let a = check(&health, "a").unwrap();
    assert_eq!(
        (a["Status"].as_str(), a["Output"].as_str()),
        (Some("passing"), Some("fine"))
    );
    assert_eq!(a["ServiceTags"], json!(["new"]));
    assert!(
        check(&health, "b").is_some(),
        "kept without replace-existing-checks"
    );

    for query in [
        "?replace-existing-checks=maybe",
        "?replace-existing-checks=1",
    ] {
        let a = f
            .put(
                "dc1",
                &format!("/v1/agent/service/register{query}"),
                json!({"Name": "web", "Check": {"CheckID": "a", "TTL": "60s"}}),
            )
            .await;
        assert_eq!(a.status, 200);
        let health = f.get("dc1", "/v1/health/service/web").await.json();
        assert!(check(&health, "b").is_some(), "{query} is not true");
    }
    let a = f
        .put(
            "dc1",
            "/v1/agent/service/register?replace-existing-checks",
            json!({"Name": "web", "Check": {"CheckID": "a", "TTL": "60s"}}),
        )
        .await;
    assert_eq!(a.status, 200);
    let health = f.get("dc1", "/v1/health/service/web").await.json();
    assert!(check(&health, "b").is_none(), "replaced");
    assert_eq!(check(&health, "a").unwrap()["Status"], "passing");
}

//------------ Deregister ---------------------------------------------------------------

/// Deregister: 200 empty, the service and its checks leave the catalog and
/// the agent, its check stops running; an unknown ID (or a name that is not
/// the ID) is a 404 with Consul's text.
#[tokio::test]
async fn deregister_removes_the_service_and_stops_its_checks() {
    let f = Fixture::start(&["dc1"]).await;
    let target = Target::start("200 OK", "ok").await;
    register(
        &f,
        json!({"ID": "web-1", "Name": "web", "Check": {"HTTP": target.url(), "Interval": "1s"}}),
    )
    .await;
    let probed = Instant::now() + Duration::from_secs(5);
    while target.requests() == 0 {
        assert!(Instant::now() < probed, "the check never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let a = f
        .put("dc1", "/v1/agent/service/deregister/web", json!(null))
        .await;
    assert_eq!(
        (a.status, a.body.as_str()),
        (
            404,
            "Unknown service ID \"web\". Ensure that the service ID is passed, not the service name."
        )
    );
    let a = f
        .put("dc1", "/v1/agent/service/deregister/web-1", json!(null))
        .await;
    assert_eq!((a.status, a.body.as_str()), (200, ""));
    assert_eq!(f.get("dc1", "/v1/health/service/web").await.body, "[]");
    let services = f.get("dc1", "/v1/catalog/services").await.json();
    assert!(services.get("web").is_none(), "{services}");
    let node = f.sim.server_node("dc1");
    let consul = f.get("dc1", "/v1/health/service/consul").await.json();
    let checks: Vec<&str> = consul[0]["Checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["CheckID"].as_str().unwrap())
        .collect();
    assert_eq!(checks, ["serfHealth"], "no check left on {node}");
    assert_eq!(f.get("dc1", "/v1/agent/service/web-1").await.status, 404);
    let seen = target.requests();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(target.requests(), seen, "the check stopped");
    let a = f
        .put("dc1", "/v1/agent/service/deregister/web-1", json!(null))
        .await;
    assert_eq!(a.status, 404);
    let a = f
        .put("dc1", "/v1/agent/service/deregister/", json!(null))
        .await;
    assert_eq!(
        (a.status, a.body.as_str()),
        (
            404,
            "Unknown service ID \"\". Ensure that the service ID is passed, not the service name."
        )
    );
}

//------------ Reads ---------------------------------------------------------------------

/// `GET /v1/agent/service/<id>`: the `AgentService` fields in Go's order
/// with a `ContentHash` also sent as `X-Consul-ContentHash`; 404 with
/// Consul's text otherwise. `/v1/agent/services` lists only this agent's
/// services, without the hash.
#[tokio::test]
async fn agent_service_reads() {
    let f = Fixture::start(&["dc1", "dc2"]).await;
    register(
        &f,
        json!({"Name": "web", "Port": 80, "Address": "10.0.0.9", "Meta": {"v": "1"},
               "Weights": {"Passing": 3, "Warning": 2}, "EnableTagOverride": true}),
    )
    .await;
    f.register("dc1", "n1", "10.0.0.1", "other", "passing")
        .await;
    let a = f.get("dc1", "/v1/agent/service/web").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-type"), Some("application/json"));
    let v = a.json();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "ID",
            "Service",
            "Tags",
            "Meta",
            "Port",
            "Address",
            "TaggedAddresses",
            "Weights",
            "EnableTagOverride",
            "ContentHash",
            "Datacenter"
        ]
    );
    assert_eq!(v["Tags"], json!([]));
    assert_eq!(v["Meta"], json!({"v": "1"}));
    assert_eq!(v["Weights"], json!({"Passing": 3, "Warning": 2}));
    assert_eq!(v["EnableTagOverride"], true);
    assert_eq!(v["Datacenter"], "dc1");
    let hash = v["ContentHash"].as_str().unwrap();
    assert!(hash.chars().all(|c| c.is_ascii_hexdigit()), "{hash}");
    assert_eq!(a.header("x-consul-contenthash"), Some(hash));

    let a = f.get("dc1", "/v1/agent/service/nope").await;
    assert_eq!(
        (a.status, a.body.as_str()),
        (404, "unknown service ID: nope")
    );

    let all = f.get("dc1", "/v1/agent/services").await.json();
    assert_eq!(all.as_object().unwrap().len(), 1, "{all}");
    assert!(all["web"].get("ContentHash").is_none());
    assert_eq!(all["web"]["Port"], 80);
    assert_eq!(f.get("dc2", "/v1/agent/services").await.body, "{}");
    assert_eq!(f.get("dc2", "/v1/agent/service/web").await.status, 404);
}

/// `?hash=` blocks while the hash is current: until the wait is over, or
/// until the service changes.
#[tokio::test]
async fn agent_service_blocks_on_its_hash() {
    let f = Fixture::start(&["dc1"]).await;
    register(&f, json!({"Name": "web"})).await;
    let hash = f.get("dc1", "/v1/agent/service/web").await.json()["ContentHash"]
        .as_str()
        .unwrap()
        .to_owned();
    let start = Instant::now();
    let a = f
        .get(
            "dc1",
            &format!("/v1/agent/service/web?hash={hash}&wait=300ms"),
        )
        .await;
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert_eq!(a.json()["ContentHash"], hash.as_str());
    let a = f.get("dc1", "/v1/agent/service/web?hash=other").await;
    assert_eq!(a.status, 200, "a different hash answers at once");

    let url = format!(
        "{}/v1/agent/service/web?hash={hash}&wait=10s",
        f.sim.url("dc1").await
    );
    let http = f.http.clone();
    let waiter = tokio::spawn(async move { http.get(url).send().await.unwrap() });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiter.is_finished());
    register(&f, json!({"Name": "web", "Tags": ["changed"]})).await;
    let v: Value = tokio::time::timeout(Duration::from_secs(2), waiter)
        .await
        .expect("woken by the change")
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["Tags"], json!(["changed"]));
    assert_ne!(v["ContentHash"], hash.as_str());
    let a = f.get("dc1", "/v1/agent/service/web?wait=soon&hash=x").await;
    assert_eq!((a.status, a.body.as_str()), (400, "Invalid wait time"));
}

//------------ Checks the agent runs -----------------------------------------------------

/// An HTTP check is run by the agent: 2xx is passing, 429 warning, any
/// other status critical, with Consul's output text; the request is Go's
/// (`User-Agent`, `Accept`, `Connection: close`).
#[tokio::test]
async fn http_check_follows_the_target() {
    let f = Fixture::start(&["dc1"]).await;
    let target = Target::start("200 OK", "all good").await;
    let url = target.url();
    register(
        &f,
        json!({"Name": "web", "Check": {"HTTP": url, "Interval": "1s"}}),
    )
    .await;
    let path = "/v1/health/service/web";
    let within = Duration::from_secs(5);
    for (status, body, want) in [
        ("200 OK", "all good", "passing"),
        ("429 Too Many Requests", "slow down", "warning"),
        ("500 Internal Server Error", "broken", "critical"),
        ("204 No Content", "", "passing"),
    ] {
        target.answer(status, body);
        let health = wait_for(&f, path, within, |h| {
            check(h, "service:web").is_some_and(|c| c["Status"] == want)
        })
        .await;
        let c = check(&health, "service:web").unwrap();
        assert_eq!(
            c["Output"],
            format!("HTTP GET {url}: {status} Output: {body}")
        );
        assert_eq!(
            (c["Type"].as_str(), c["Interval"].as_str()),
            (Some("http"), Some("1s"))
        );
    }
    // An output-only change waits for `check_update_interval` (5 min)
    // before the catalog sees it, as in Consul.
    let runs = target.requests();
    target.answer("204 No Content", "now with a body");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(target.requests() > runs, "the check kept running");
    let health = f.get("dc1", path).await.json();
    assert_eq!(
        check(&health, "service:web").unwrap()["Output"],
        format!("HTTP GET {url}: 204 No Content Output: ")
    );
    let head = target.heads.lock().unwrap()[0].clone();
    assert!(head.starts_with("GET /health HTTP/1.1\r\n"), "{head}");
    for line in [
        "User-Agent: Consul Health Check",
        "Accept: text/plain, text/*, */*",
        "Connection: close",
        &format!("Host: {}", target.addr),
    ] {
        assert!(head.contains(line), "{line:?} missing from {head}");
    }
}

/// An HTTP check's method, headers and body are sent; the output keeps
/// only the body's last 4 KB (Consul's circular buffer).
#[tokio::test]
async fn http_check_request_and_output_cap() {
    let f = Fixture::start(&["dc1"]).await;
    let body = format!("{}{}", "a".repeat(5000), "END");
    let target = Target::start("200 OK", &body).await;
    register(
        &f,
        json!({"Name": "web", "Check": {"HTTP": target.url(), "Interval": "1s",
               "Method": "POST", "Header": {"X-Probe": ["one", "two"]}, "Body": "ping"}}),
    )
    .await;
    let health = wait_for(&f, "/v1/health/service/web", Duration::from_secs(5), |h| {
        check(h, "service:web").is_some_and(|c| c["Status"] == "passing")
    })
    .await;
    let output = check(&health, "service:web").unwrap()["Output"]
        .as_str()
        .unwrap()
        .to_owned();
    let prefix = format!("HTTP POST {}: 200 OK Output: ", target.url());
    let kept = output.strip_prefix(&prefix).expect("Consul's format");
    assert_eq!(kept.len(), 4096);
    assert!(kept.ends_with("END"));
    let head = target.heads.lock().unwrap()[0].clone();
    assert!(head.starts_with("POST /health HTTP/1.1\r\n"), "{head}");
    assert!(head.contains("X-Probe: one\r\nX-Probe: two\r\n"), "{head}");
    assert!(head.contains("Content-Length: 4\r\n"), "{head}");
}

/// A transport error is critical with Go's error text. (The check starts
/// passing here: from critical, a critical result only changes the output,
/// which the agent syncs minutes later.)
#[tokio::test]
async fn http_check_transport_error_is_critical() {
    let f = Fixture::start(&["dc1"]).await;
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let url = format!("http://{addr}/");
    register(
        &f,
        json!({"Name": "web", "Check": {"HTTP": url, "Interval": "1s", "Status": "passing"}}),
    )
    .await;
    let health = wait_for(&f, "/v1/health/service/web", Duration::from_secs(5), |h| {
        check(h, "service:web").is_some_and(|c| c["Status"] == "critical")
    })
    .await;
    assert_eq!(
        check(&health, "service:web").unwrap()["Output"],
        format!("Get \"{url}\": dial tcp {addr}: connect: connection refused")
    );
}

/// A TCP check passes once it can connect, with Consul's output.
#[tokio::test]
async fn tcp_check_connects() {
    let f = Fixture::start(&["dc1"]).await;
    let target = Target::start("200 OK", "").await;
    let addr = target.addr.to_string();
    register(
        &f,
        json!({"Name": "db", "Check": {"TCP": addr, "Interval": "1s"}}),
    )
    .await;
    let health = wait_for(&f, "/v1/health/service/db", Duration::from_secs(5), |h| {
        check(h, "service:db").is_some_and(|c| c["Status"] == "passing")
    })
    .await;
    let c = check(&health, "service:db").unwrap();
    assert_eq!(c["Output"], format!("TCP connect {addr}: Success"));
    assert_eq!(c["Type"], "tcp");
}

/// A TTL check goes critical when no update comes within its TTL, quoting
/// the last output; updates through `/v1/agent/check/*` reset the timer.
/// Updating a check that is not a TTL check is a 500.
#[tokio::test]
async fn ttl_checks_expire() {
    let f = Fixture::start(&["dc1"]).await;
    register(&f, json!({"Name": "web", "Check": {"TTL": "1s"}})).await;
    let a = f
        .put(
            "dc1",
            "/v1/agent/check/pass/service:web?note=alive",
            json!(null),
        )
        .await;
    assert_eq!(a.status, 200);
    let health = f.get("dc1", "/v1/health/service/web").await.json();
    assert_eq!(check(&health, "service:web").unwrap()["Status"], "passing");
    let start = Instant::now();
    let health = wait_for(&f, "/v1/health/service/web", Duration::from_secs(5), |h| {
        check(h, "service:web").is_some_and(|c| c["Status"] == "critical")
    })
    .await;
    assert!(start.elapsed() >= Duration::from_millis(800));
    assert_eq!(
        check(&health, "service:web").unwrap()["Output"],
        "TTL expired (last output before timeout follows): alive"
    );

    let target = Target::start("200 OK", "ok").await;
    register(
        &f,
        json!({"Name": "api", "Check": {"HTTP": target.url(), "Interval": "10s"}}),
    )
    .await;
    let a = f
        .put("dc1", "/v1/agent/check/pass/service:api", json!(null))
        .await;
    assert_eq!(
        (a.status, a.body.as_str()),
        (500, "CheckID \"service:api\" does not have associated TTL")
    );
}

/// `DeregisterCriticalServiceAfter`: the reaper removes a service whose
/// check has been critical for longer (here with a 100 ms reap interval and
/// no minimum).
#[tokio::test]
async fn critical_services_are_reaped() {
    let sim = common::builder()
        .dc("dc1", SocketAddr::from(([127, 0, 0, 1], 0)))
        .check_reap_interval(Duration::from_millis(100))
        .check_deregister_interval_min(Duration::ZERO)
        .start()
        .await
        .unwrap();
    let f = Fixture::with(sim);
    register(
        &f,
        json!({"Name": "web", "Check": {"TTL": "1s", "DeregisterCriticalServiceAfter": "300ms"}}),
    )
    .await;
    register(&f, json!({"Name": "stays", "Check": {"TTL": "1s"}})).await;
    let a = f
        .put("dc1", "/v1/agent/check/pass/service:web", json!(null))
        .await;
    assert_eq!(a.status, 200);
    let services = wait_for(&f, "/v1/agent/services", Duration::from_secs(5), |s| {
        s.get("web").is_none()
    })
    .await;
    assert!(services.get("stays").is_some());
    assert_eq!(f.get("dc1", "/v1/health/service/web").await.body, "[]");
    assert_eq!(
        f.get("dc1", "/v1/health/service/stays").await.json()[0]["Service"]["ID"],
        "stays"
    );
}

//------------ Leader loss ---------------------------------------------------------------

/// Without a leader the register waits for one up to the hold timeout and
/// still answers 200; the agent has the service, the catalog gets it once a
/// leader is back.
#[tokio::test]
async fn register_without_a_leader_syncs_later() {
    let f = Fixture::start(&["dc1"]).await;
    f.sim.set_rpc_hold_timeout(Duration::from_millis(200));
    f.sim.lose_leader("dc1");
    let start = Instant::now();
    register(&f, json!({"Name": "web", "Check": {"TTL": "60s"}})).await;
    assert!(start.elapsed() >= Duration::from_millis(200));
    assert_eq!(f.get("dc1", "/v1/agent/service/web").await.status, 200);
    assert_eq!(
        f.get("dc1", "/v1/health/service/web?stale").await.body,
        "[]"
    );
    f.sim.regain_leader("dc1");
    let health = f.get("dc1", "/v1/health/service/web").await.json();
    assert_eq!(check(&health, "service:web").unwrap()["Status"], "critical");
}

/// The simulator's library API is unchanged by the agent: a catalog
/// registration on the server node is not one of the agent's services.
#[tokio::test]
async fn catalog_registrations_are_not_agent_services() {
    let sim = Sim::start(&["dc1"]).await.unwrap();
    let f = Fixture::with(sim);
    let node = f.sim.server_node("dc1");
    f.register("dc1", &node, "127.0.0.1", "cataloged", "passing")
        .await;
    assert_eq!(f.get("dc1", "/v1/agent/services").await.body, "{}");
}
