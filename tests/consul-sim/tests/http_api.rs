//! Reference §1–§4 and the §8 checklist, over HTTP: conventions, blocking
//! queries, the health, catalog, coordinate, agent and status endpoints,
//! and catalog writes. Each test names the section it checks.

mod common;

use std::time::Duration;

use common::{Fixture, instance, node_addresses};
use consul_sim::blocking_timeout;
use consul_sim::model::Coordinate;
use serde_json::{Value, json};
use tokio::time::Instant;

fn keys(v: &Value) -> Vec<&str> {
    v.as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect()
}

//------------ §1 conventions ---------------------------------------------------

/// Reference §1: success is compact JSON with `Content-Type:
/// application/json`; `?pretty` indents by four spaces and ends in a newline.
#[tokio::test]
async fn json_is_compact_unless_pretty() {
    let f = Fixture::start(&["dc1"]).await;
    let compact = f.get("dc1", "/v1/catalog/datacenters").await;
    assert_eq!(compact.status, 200);
    assert_eq!(compact.header("content-type"), Some("application/json"));
    assert_eq!(compact.body, r#"["dc1"]"#);
    let pretty = f.get("dc1", "/v1/catalog/datacenters?pretty").await;
    assert_eq!(pretty.body, "[\n    \"dc1\"\n]\n");
}

/// Reference §1: errors are plain-text bodies; an unknown `?dc=` is a 500
/// `No path to datacenter`.
#[tokio::test]
async fn unknown_datacenter_is_plain_text_500() {
    let f = Fixture::start(&["dc1"]).await;
    let a = f.get("dc1", "/v1/health/service/web?dc=nowhere").await;
    assert_eq!((a.status, a.body.as_str()), (500, "No path to datacenter"));
    assert!(a.header("content-type").unwrap().starts_with("text/plain"));
}

/// Reference §1: the 400 texts for bad `wait`, `index`, `max_stale` and
/// conflicting consistency modes.
#[tokio::test]
async fn bad_read_parameters_are_400_with_consul_texts() {
    let f = Fixture::start(&["dc1"]).await;
    let cases = [
        ("wait=5", "Invalid wait time"),
        ("wait=10x", "Invalid wait time"),
        ("index=abc", "Invalid index"),
        ("index=-1", "Invalid index"),
        ("max_stale=soon", "Invalid max_stale value \"soon\""),
        (
            "stale&consistent",
            "Cannot specify ?stale with ?consistent, conflicting semantics.",
        ),
        (
            "cached&consistent",
            "Cannot specify ?cached with ?consistent, conflicting semantics.",
        ),
    ];
    for (query, text) in cases {
        let a = f
            .get("dc1", &format!("/v1/health/service/web?{query}"))
            .await;
        assert_eq!((a.status, a.body.as_str()), (400, text), "?{query}");
    }
}

/// Reference §1: reads carry `X-Consul-Index`, `X-Consul-KnownLeader`,
/// `X-Consul-LastContact` and `X-Consul-Effective-Consistency` by mode.
#[tokio::test]
async fn reads_carry_query_metadata_headers() {
    let f = Fixture::start(&["dc1"]).await;
    for (query, mode) in [
        ("", "leader"),
        ("?stale", "stale"),
        ("?consistent", "consistent"),
    ] {
        let a = f.get("dc1", &format!("/v1/catalog/services{query}")).await;
        assert_eq!(a.status, 200);
        assert!(a.index() >= 1);
        assert_eq!(a.header("x-consul-knownleader"), Some("true"));
        assert_eq!(a.header("x-consul-lastcontact"), Some("0"));
        assert_eq!(a.header("x-consul-effective-consistency"), Some(mode));
    }
}

/// Reference §1: endpoints without query metadata send no `X-Consul-Index`.
#[tokio::test]
async fn endpoints_without_metadata_send_no_index() {
    let f = Fixture::start(&["dc1"]).await;
    for path in [
        "/v1/catalog/datacenters",
        "/v1/coordinate/datacenters",
        "/v1/status/leader",
        "/v1/status/peers",
        "/v1/agent/self",
    ] {
        let a = f.get("dc1", path).await;
        assert_eq!(a.status, 200, "{path}");
        assert_eq!(a.header("x-consul-index"), None, "{path}");
    }
}

/// Reference §1 and §8: `X-Consul-Index` is never 0, even after a rewind
/// to 0.
#[tokio::test]
async fn index_is_never_zero() {
    let f = Fixture::start(&["dc1"]).await;
    f.sim.rewind_index("dc1", 0);
    for path in [
        "/v1/health/service/nothing",
        "/v1/catalog/services",
        "/v1/query",
    ] {
        let a = f.get("dc1", path).await;
        assert_eq!(a.index(), 1, "{path}");
    }
}

/// Reference §1: a wrong method is a 405 with `Allow` listing OPTIONS and
/// the accepted methods.
#[tokio::test]
async fn wrong_method_is_405_with_allow() {
    let f = Fixture::start(&["dc1"]).await;
    let a = f.get("dc1", "/v1/catalog/register").await;
    assert_eq!((a.status, a.body.as_str()), (405, "method GET not allowed"));
    assert_eq!(a.header("allow"), Some("OPTIONS,PUT"));
}

/// Reference §1: `?dc=` is answered by the other DC with its own Raft index.
#[tokio::test]
async fn remote_dc_answers_with_its_own_index() {
    let f = Fixture::start(&["dc1", "dc2"]).await;
    for i in 0..5 {
        f.register(
            "dc2",
            &format!("n{i}"),
            &format!("10.2.0.{i}"),
            "web",
            "passing",
        )
        .await;
    }
    let local = f.get("dc1", "/v1/catalog/services").await;
    let remote = f.get("dc1", "/v1/catalog/services?dc=dc2").await;
    let direct = f.get("dc2", "/v1/catalog/services").await;
    assert_eq!(remote.index(), direct.index());
    assert_ne!(remote.index(), local.index());
    assert_eq!(remote.json()["web"], json!([]));
    assert!(local.json().get("web").is_none());
}

//------------ §2 blocking queries --------------------------------------------------

/// Reference §2: a blocking read returns as soon as a write touches its
/// result (within 50 ms), with a higher index.
#[tokio::test]
async fn blocking_read_returns_promptly_on_change() {
    let f = Fixture::start(&["dc1"]).await;
    f.register("dc1", "n1", "10.0.0.1", "web", "passing").await;
    let first = f.get("dc1", "/v1/health/service/web").await;
    let index = first.index();
    let path = format!("/v1/health/service/web?index={index}&wait=10s");
    let url = format!("{}{path}", f.sim.url("dc1").await);
    let http = f.http.clone();
    let waiter = tokio::spawn(async move {
        let resp = http.get(url).send().await.unwrap();
        let at = Instant::now();
        let idx: u64 = resp.headers()["x-consul-index"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        (at, idx, resp.text().await.unwrap())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "the read must block until a change");
    let changed_at = Instant::now();
    f.sim
        .set_check_status("dc1", Some("n1"), "service:n1", "critical");
    let (returned_at, new_index, body) = waiter.await.unwrap();
    let latency = returned_at.duration_since(changed_at);
    assert!(
        latency < Duration::from_millis(50),
        "returned {latency:?} after the change"
    );
    assert!(new_index > index);
    assert!(body.contains("\"Status\":\"critical\""));
}

/// Reference §2: with no change, a blocking read holds for `wait` (plus at
/// most wait/16 jitter) and returns 200 with the same index.
#[tokio::test]
async fn blocking_read_holds_for_wait_then_returns_same_index() {
    let f = Fixture::start(&["dc1"]).await;
    f.register("dc1", "n1", "10.0.0.1", "web", "passing").await;
    let index = f.get("dc1", "/v1/health/service/web").await.index();
    let start = Instant::now();
    let a = f
        .get(
            "dc1",
            &format!("/v1/health/service/web?index={index}&wait=500ms"),
        )
        .await;
    let held = start.elapsed();
    assert_eq!(a.status, 200);
    assert_eq!(a.index(), index);
    assert!(held >= Duration::from_millis(500), "held only {held:?}");
    assert!(
        held < Duration::from_millis(500 + 500 / 16 + 150),
        "held {held:?}"
    );
}

/// Reference §2: a write to another service does not move this service's
/// index, so the read keeps blocking (per-service indexes).
#[tokio::test]
async fn unrelated_write_does_not_end_the_block() {
    let f = Fixture::start(&["dc1"]).await;
    f.register("dc1", "n1", "10.0.0.1", "web", "passing").await;
    let index = f.get("dc1", "/v1/health/service/web").await.index();
    let url = format!(
        "{}/v1/health/service/web?index={index}&wait=600ms",
        f.sim.url("dc1").await
    );
    let http = f.http.clone();
    let start = Instant::now();
    let waiter = tokio::spawn(async move { http.get(url).send().await.unwrap() });
    tokio::time::sleep(Duration::from_millis(100)).await;
    f.register("dc1", "n2", "10.0.0.2", "db", "passing").await;
    let resp = waiter.await.unwrap();
    assert!(start.elapsed() >= Duration::from_millis(600));
    assert_eq!(
        resp.headers()["x-consul-index"].to_str().unwrap(),
        index.to_string()
    );
}

/// Reference §2: `wait` absent or ≤ 0 means 300 s, above 600 s is clamped
/// to 600 s, and a jitter below wait/16 is added.
#[test]
fn blocking_timeout_defaults_clamps_and_jitters() {
    let cases = [
        (None, 300),
        (Some(Duration::ZERO), 300),
        (Some(Duration::from_secs(20)), 20),
        (Some(Duration::from_secs(3600)), 600),
    ];
    for (wait, base) in cases {
        let base = Duration::from_secs(base);
        let mut saw_jitter = false;
        for _ in 0..200 {
            let t = blocking_timeout(wait);
            assert!(t >= base && t < base + base / 16, "{wait:?}: {t:?}");
            saw_jitter |= t > base;
        }
        assert!(saw_jitter, "{wait:?}: no jitter in 200 draws");
    }
}

/// Reference §2: `wait` takes Go durations such as `1m30s`; `index` 0 or
/// absent answers at once.
#[tokio::test]
async fn go_durations_accepted_and_index_zero_does_not_block() {
    let f = Fixture::start(&["dc1"]).await;
    let start = Instant::now();
    for q in [
        "wait=1m30s",
        "wait=1m30s&index=0",
        "wait=1.5h&index=0",
        "wait=300ms&index=0",
    ] {
        let a = f.get("dc1", &format!("/v1/catalog/services?{q}")).await;
        assert_eq!(a.status, 200, "?{q}");
    }
    assert!(start.elapsed() < Duration::from_secs(2));
}

/// Reference §2 (client rule 1): a snapshot restore returns blocked reads
/// at once, with an index lower than the one they sent.
#[tokio::test]
async fn index_rewind_returns_blocked_reads_with_lower_index() {
    let f = Fixture::start(&["dc1"]).await;
    for i in 0..5 {
        f.register(
            "dc1",
            &format!("n{i}"),
            &format!("10.0.0.{i}"),
            "web",
            "passing",
        )
        .await;
    }
    let index = f.get("dc1", "/v1/health/service/web").await.index();
    assert!(index > 3);
    let url = format!(
        "{}/v1/health/service/web?index={index}&wait=10s",
        f.sim.url("dc1").await
    );
    let http = f.http.clone();
    let waiter = tokio::spawn(async move { http.get(url).send().await.unwrap() });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let start = Instant::now();
    f.sim.rewind_index("dc1", 2);
    let resp = waiter.await.unwrap();
    assert!(start.elapsed() < Duration::from_millis(100));
    let new: u64 = resp.headers()["x-consul-index"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(new, 2);
}

/// Reference §2: an index higher than the server's blocks the full wait,
/// then returns the lower index.
#[tokio::test]
async fn index_from_the_future_blocks_then_returns_lower_index() {
    let f = Fixture::start(&["dc1"]).await;
    f.register("dc1", "n1", "10.0.0.1", "web", "passing").await;
    let start = Instant::now();
    let a = f
        .get("dc1", "/v1/health/service/web?index=1000000&wait=300ms")
        .await;
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert!(a.index() < 1_000_000);
}

/// Reference §2: a snapshot restore brings back the old data and indexes.
#[tokio::test]
async fn snapshot_restore_brings_back_old_state() {
    let f = Fixture::start(&["dc1"]).await;
    f.register("dc1", "n1", "10.0.0.1", "web", "passing").await;
    let snap = f.sim.snapshot("dc1").unwrap();
    let before = f.get("dc1", "/v1/health/service/web").await;
    f.register("dc1", "n2", "10.0.0.2", "web", "passing").await;
    assert_eq!(
        node_addresses(&f.get("dc1", "/v1/health/service/web").await.json()).len(),
        2
    );
    f.sim.restore("dc1", snap);
    let after = f.get("dc1", "/v1/health/service/web").await;
    assert_eq!(after.index(), before.index());
    assert_eq!(node_addresses(&after.json()), vec!["10.0.0.1"]);
}

//------------ §3 /v1/health/service ------------------------------------------------

/// Reference §3: an empty service name is a 400 `Missing service name`.
#[tokio::test]
async fn health_without_service_name_is_400() {
    let f = Fixture::start(&["dc1"]).await;
    let a = f.get("dc1", "/v1/health/service/").await;
    assert_eq!((a.status, a.body.as_str()), (400, "Missing service name"));
}

/// Reference §3: without `passing` every instance comes back, critical ones
/// included; an unknown service gives `[]`, never `null`.
#[tokio::test]
async fn health_returns_all_instances_without_passing() {
    let f = Fixture::start(&["dc1"]).await;
    f.register("dc1", "a", "10.0.0.1", "web", "passing").await;
    f.register("dc1", "b", "10.0.0.2", "web", "warning").await;
    f.register("dc1", "c", "10.0.0.3", "web", "critical").await;
    let all = f.get("dc1", "/v1/health/service/web").await.json();
    assert_eq!(
        node_addresses(&all),
        vec!["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    );
    assert_eq!(f.get("dc1", "/v1/health/service/none").await.body, "[]");
}

/// Reference §3: `passing` (empty or ParseBool true) drops any instance with
/// a non-passing check, node-level ones too; `passing=false` keeps all;
/// a bad value is a 400.
#[tokio::test]
async fn passing_filter_and_its_parsing() {
    let f = Fixture::start(&["dc1"]).await;
    f.register("dc1", "a", "10.0.0.1", "web", "passing").await;
    f.register("dc1", "b", "10.0.0.2", "web", "warning").await;
    f.register("dc1", "c", "10.0.0.3", "web", "passing").await;
    // A failing node-level check on c.
    let node_check = json!({"Node": "c", "Address": "10.0.0.3",
        "Check": {"CheckID": "serfHealth", "Name": "Serf", "Status": "critical"}});
    assert_eq!(
        f.put("dc1", "/v1/catalog/register", node_check)
            .await
            .status,
        200
    );
    for q in ["passing", "passing=true", "passing=1", "passing=T"] {
        let a = f.get("dc1", &format!("/v1/health/service/web?{q}")).await;
        assert_eq!(node_addresses(&a.json()), vec!["10.0.0.1"], "?{q}");
    }
    let all = f
        .get("dc1", "/v1/health/service/web?passing=false")
        .await
        .json();
    assert_eq!(all.as_array().unwrap().len(), 3);
    let bad = f.get("dc1", "/v1/health/service/web?passing=yes").await;
    assert_eq!(
        (bad.status, bad.body.as_str()),
        (400, "Invalid value for ?passing")
    );
}

/// Reference §3: repeated `tag` requires all tags (case-insensitive);
/// `node-meta=key:value` requires every pair.
#[tokio::test]
async fn tag_and_node_meta_filters() {
    let f = Fixture::start(&["dc1"]).await;
    for (node, ip, tags, meta) in [
        (
            "a",
            "10.0.0.1",
            json!(["Primary", "v2"]),
            json!({"rack": "r1"}),
        ),
        ("b", "10.0.0.2", json!(["primary"]), json!({"rack": "r2"})),
        ("c", "10.0.0.3", json!(["v2"]), json!({"rack": "r1"})),
    ] {
        let body = json!({"Node": node, "Address": ip, "NodeMeta": meta,
            "Service": {"Service": "web", "Tags": tags}});
        assert_eq!(f.put("dc1", "/v1/catalog/register", body).await.status, 200);
    }
    let get = |q: &'static str| {
        let f = &f;
        async move {
            node_addresses(
                &f.get("dc1", &format!("/v1/health/service/web?{q}"))
                    .await
                    .json(),
            )
        }
    };
    assert_eq!(get("tag=primary").await, vec!["10.0.0.1", "10.0.0.2"]);
    assert_eq!(get("tag=PRIMARY&tag=v2").await, vec!["10.0.0.1"]);
    assert_eq!(get("node-meta=rack:r1").await, vec!["10.0.0.1", "10.0.0.3"]);
    assert_eq!(get("node-meta=rack:r1&tag=primary").await, vec!["10.0.0.1"]);
    assert_eq!(get("node-meta=rack:r3").await, Vec::<String>::new());
}

/// Reference §3: `filter` may answer 400 when not supported.
#[tokio::test]
async fn filter_is_rejected_with_400() {
    let f = Fixture::start(&["dc1"]).await;
    let a = f
        .get("dc1", "/v1/health/service/web?filter=Service.Port%3D%3D80")
        .await;
    assert_eq!(a.status, 400);
}

/// Reference §3: the element shape — field names and order of Node,
/// Service and Checks; `Port` absent when 0; service `TaggedAddresses`
/// absent when empty; `Tags` `[]`; `Weights` default 1/1; the service
/// address is not filled in from the node.
#[tokio::test]
async fn health_element_shape() {
    let f = Fixture::start(&["dc1"]).await;
    let body = json!({"Node": "n1", "Address": "10.0.0.1",
        "Service": {"Service": "noport"},
        "Check": {"CheckID": "c1", "Name": "c1", "ServiceID": "noport", "Status": "passing"}});
    assert_eq!(f.put("dc1", "/v1/catalog/register", body).await.status, 200);
    let all = f.get("dc1", "/v1/health/service/noport").await.json();
    let e = &all[0];
    assert_eq!(keys(e), ["Node", "Service", "Checks"]);
    assert_eq!(
        keys(&e["Node"]),
        [
            "ID",
            "Node",
            "Address",
            "Datacenter",
            "TaggedAddresses",
            "Meta",
            "CreateIndex",
            "ModifyIndex"
        ]
    );
    assert_eq!(
        keys(&e["Service"]),
        [
            "ID",
            "Service",
            "Tags",
            "Address",
            "Meta",
            "Weights",
            "EnableTagOverride",
            "Proxy",
            "Connect",
            "PeerName",
            "CreateIndex",
            "ModifyIndex"
        ]
    );
    assert_eq!(e["Service"]["ID"], "noport");
    assert_eq!(e["Service"]["Tags"], json!([]));
    assert_eq!(e["Service"]["Address"], "");
    assert_eq!(e["Service"]["Weights"], json!({"Passing": 1, "Warning": 1}));
    assert_eq!(e["Node"]["Datacenter"], "dc1");
    assert_eq!(
        keys(&e["Checks"][0]),
        [
            "Node",
            "CheckID",
            "Name",
            "Status",
            "Notes",
            "Output",
            "ServiceID",
            "ServiceName",
            "ServiceTags",
            "Type",
            "Interval",
            "Timeout",
            "ExposedPort",
            "Definition",
            "CreateIndex",
            "ModifyIndex"
        ]
    );
    assert_eq!(e["Checks"][0]["ServiceName"], "noport");
    assert_eq!(e["Checks"][0]["Definition"], json!({}));
    // With a port and tagged addresses both appear.
    let body = json!({"Node": "n2", "Address": "10.0.0.2", "Service": {"Service": "withport",
        "Port": 9000, "TaggedAddresses": {"lan_ipv4": {"Address": "10.0.0.2", "Port": 9000}}}});
    assert_eq!(f.put("dc1", "/v1/catalog/register", body).await.status, 200);
    let s = &f.get("dc1", "/v1/health/service/withport").await.json()[0]["Service"];
    assert_eq!(s["Port"], 9000);
    assert_eq!(
        s["TaggedAddresses"]["lan_ipv4"],
        json!({"Address": "10.0.0.2", "Port": 9000})
    );
}

/// Reference §3: instances come in node-name order; the node's checks
/// precede the instance's own.
#[tokio::test]
async fn health_order_is_by_node_with_node_checks_first() {
    let f = Fixture::start(&["dc1"]).await;
    for node in ["zeta", "alpha", "mid"] {
        let body = json!({"Node": node, "Address": "10.0.0.9",
            "Service": {"Service": "web"},
            "Checks": [
                {"CheckID": "svc", "Name": "svc", "ServiceID": "web", "Status": "passing"},
                {"CheckID": "serfHealth", "Name": "serf", "Status": "passing"}]});
        assert_eq!(f.put("dc1", "/v1/catalog/register", body).await.status, 200);
    }
    let all = f.get("dc1", "/v1/health/service/web").await.json();
    let nodes: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Node"]["Node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, ["alpha", "mid", "zeta"]);
    let checks: Vec<&str> = all[0]["Checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["CheckID"].as_str().unwrap())
        .collect();
    assert_eq!(checks, ["serfHealth", "svc"]);
}

//------------ Catalog writes -----------------------------------------------------

/// Reference §3 (catalog register): `Service.ID` defaults to the name, check
/// `Status` to critical, and `true` is the answer; a body `Datacenter`
/// forwards the write there.
#[tokio::test]
async fn register_defaults_and_forwarding() {
    let f = Fixture::start(&["dc1", "dc2"]).await;
    let body = json!({"Datacenter": "dc2", "Node": "n1", "Address": "10.2.0.1",
        "Service": {"Service": "api"}, "Check": {"Name": "api-alive", "ServiceID": "api"}});
    let a = f.put("dc1", "/v1/catalog/register", body).await;
    assert_eq!((a.status, a.body.as_str()), (200, "true"));
    assert_eq!(f.get("dc1", "/v1/health/service/api").await.body, "[]");
    let e = &f.get("dc2", "/v1/health/service/api").await.json()[0];
    assert_eq!(e["Service"]["ID"], "api");
    assert_eq!(e["Checks"][0]["CheckID"], "api-alive");
    assert_eq!(e["Checks"][0]["Status"], "critical");
    assert_eq!(e["Node"]["Datacenter"], "dc2");
}

/// Reference §1 (errors): register validation errors are plain-text 500s;
/// undecodable bodies and unknown fields are 400 `Request decode failed`.
#[tokio::test]
async fn register_errors() {
    let f = Fixture::start(&["dc1"]).await;
    let cases = [
        (json!({"Address": "10.0.0.1"}), 500, "Must provide node"),
        (
            json!({"Node": "n1"}),
            500,
            "Must provide address if SkipNodeUpdate is not set",
        ),
        (
            json!({"Node": "n1", "Address": "10.0.0.1", "Service": {"Port": 80}}),
            500,
            "service name (Service.Service) is required; both Service ID (Service.ID) and Service Name cannot be empty",
        ),
        (
            json!({"Node": "n1", "Address": "10.0.0.1", "Service": {"ID": "x"}}),
            500,
            "Must provide service name (Service.Service) when service ID is provided",
        ),
        (
            json!({"Node": "n1", "Address": "10.0.0.1", "Check": {"CheckID": "c", "ServiceID": "ghost"}}),
            500,
            "Unknown service ID 'ghost' for check ID 'c'",
        ),
        (
            json!({"Node": "n1", "Address": "10.0.0.1", "Service": {"Service": "s", "Address": "0.0.0.0"}}),
            500,
            "Invalid service address",
        ),
    ];
    for (body, status, text) in cases {
        let a = f.put("dc1", "/v1/catalog/register", body.clone()).await;
        assert_eq!((a.status, a.body.as_str()), (status, text), "{body}");
    }
    let a = f
        .put(
            "dc1",
            "/v1/catalog/register",
            json!({"Node": "n1", "Adress": "x"}),
        )
        .await;
    assert_eq!(a.status, 400);
    assert!(a.body.starts_with("Request decode failed: "), "{}", a.body);
    let a = f.call("PUT", "dc1", "/v1/catalog/register", None).await;
    assert_eq!(a.status, 400);
    // Nothing was written by the failed attempts.
    let nodes = f.get("dc1", "/v1/catalog/nodes").await.body;
    assert!(!nodes.contains("\"n1\""), "n1 still listed: {nodes}");
}

/// Reference §3: an identical re-registration leaves indexes alone; a real
/// change moves the service's index and ModifyIndex, not CreateIndex.
#[tokio::test]
async fn reregistration_moves_indexes_only_on_change() {
    let f = Fixture::start(&["dc1"]).await;
    f.register("dc1", "n1", "10.0.0.1", "web", "passing").await;
    let first = f.get("dc1", "/v1/health/service/web").await;
    f.register("dc1", "n1", "10.0.0.1", "web", "passing").await;
    assert_eq!(
        f.get("dc1", "/v1/health/service/web").await.index(),
        first.index()
    );
    f.register("dc1", "n1", "10.0.0.1", "web", "warning").await;
    let changed = f.get("dc1", "/v1/health/service/web").await;
    assert!(changed.index() > first.index());
    let (old, new) = (
        &first.json()[0]["Checks"][0],
        &changed.json()[0]["Checks"][0],
    );
    assert_eq!(new["CreateIndex"], old["CreateIndex"]);
    assert_eq!(new["ModifyIndex"].as_u64(), Some(changed.index()));
}

/// Reference §3: deregister removes a service (with its checks), a check,
/// or a whole node; unknown names are a silent `true`. The last instance
/// going away wakes a blocked read with an empty result.
#[tokio::test]
async fn deregister_forms_and_extinction_wakes_watchers() {
    let f = Fixture::start(&["dc1"]).await;
    f.register("dc1", "n1", "10.0.0.1", "web", "passing").await;
    f.register("dc1", "n2", "10.0.0.2", "web", "passing").await;
    let a = f
        .put(
            "dc1",
            "/v1/catalog/deregister",
            json!({"Node": "n1", "CheckID": "service:n1"}),
        )
        .await;
    assert_eq!((a.status, a.body.as_str()), (200, "true"));
    let e = f.get("dc1", "/v1/health/service/web").await.json();
    assert_eq!(e[0]["Checks"], json!([]));
    let a = f
        .put("dc1", "/v1/catalog/deregister", json!({"Node": "ghost"}))
        .await;
    assert_eq!((a.status, a.body.as_str()), (200, "true"));
    f.put(
        "dc1",
        "/v1/catalog/deregister",
        json!({"Node": "n1", "ServiceID": "web"}),
    )
    .await;
    let now = f.get("dc1", "/v1/health/service/web").await;
    assert_eq!(node_addresses(&now.json()), vec!["10.0.0.2"]);
    let url = format!(
        "{}/v1/health/service/web?index={}&wait=5s",
        f.sim.url("dc1").await,
        now.index()
    );
    let http = f.http.clone();
    let waiter = tokio::spawn(async move { http.get(url).send().await.unwrap() });
    tokio::time::sleep(Duration::from_millis(100)).await;
    f.put("dc1", "/v1/catalog/deregister", json!({"Node": "n2"}))
        .await;
    let resp = waiter.await.unwrap();
    let new: u64 = resp.headers()["x-consul-index"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(new > now.index());
    assert_eq!(resp.text().await.unwrap(), "[]");
    let nodes = f.get("dc1", "/v1/catalog/nodes").await.body;
    assert!(!nodes.contains("\"n2\""), "n2 still listed: {nodes}");
}

/// Reference §3 (agent checks): pass/warn/fail flip a check's status, the
/// `note` becomes its Output, the answer is an empty 200; an unknown ID is
/// a 404 with Consul's text.
#[tokio::test]
async fn agent_check_updates() {
    let f = Fixture::start(&["dc1"]).await;
    f.register("dc1", "n1", "10.0.0.1", "web", "passing").await;
    for (action, status) in [
        ("warn", "warning"),
        ("fail", "critical"),
        ("pass", "passing"),
    ] {
        let a = f
            .put(
                "dc1",
                &format!("/v1/agent/check/{action}/service:n1?note=by%20test"),
                json!(null),
            )
            .await;
        assert_eq!((a.status, a.body.as_str()), (200, ""));
        let c = &f.get("dc1", "/v1/health/service/web").await.json()[0]["Checks"][0];
        assert_eq!(
            (c["Status"].as_str(), c["Output"].as_str()),
            (Some(status), Some("by test"))
        );
    }
    let a = f
        .put(
            "dc1",
            "/v1/agent/check/update/service:n1",
            json!({"Status": "warning", "Output": "slow"}),
        )
        .await;
    assert_eq!(a.status, 200);
    let a = f
        .put(
            "dc1",
            "/v1/agent/check/update/service:n1",
            json!({"Status": "sad"}),
        )
        .await;
    assert_eq!(
        (a.status, a.body.as_str()),
        (400, "Invalid check status: 'sad'")
    );
    let a = f.put("dc1", "/v1/agent/check/fail/nope", json!(null)).await;
    assert_eq!(a.status, 404);
    assert_eq!(
        a.body,
        "Unknown check ID \"nope\". Ensure that the check ID is passed, not the check name."
    );
}

//------------ §4 other reads -----------------------------------------------------

/// Reference §4: `/v1/catalog/datacenters` lists the local DC first, then by
/// WAN RTT from coordinates, ties alphabetical, unknown coordinates last.
/// From dc1, dc3 and dc5 tie at 20 ms; from dc2, dc1 is 50 ms away and dc5
/// √(50²+20²) ≈ 53.9 ms.
#[tokio::test]
async fn datacenters_in_rtt_order() {
    let any = "127.0.0.1:0".parse().unwrap();
    let sim = common::builder()
        .dc("dc1", any)
        .dc("dc2", any)
        .dc("dc3", any)
        .dc("dc4", any)
        .dc("dc5", any)
        .coordinate("dc1", Some(Coordinate::at(&[0.0])))
        .coordinate("dc2", Some(Coordinate::at(&[0.050])))
        .coordinate("dc3", Some(Coordinate::at(&[0.020])))
        .coordinate("dc4", None)
        .coordinate("dc5", Some(Coordinate::at(&[0.0, 0.020])))
        .start()
        .await
        .unwrap();
    let f = Fixture::with(sim);
    assert_eq!(
        f.get("dc1", "/v1/catalog/datacenters").await.json(),
        json!(["dc1", "dc3", "dc5", "dc2", "dc4"])
    );
    assert_eq!(
        f.get("dc2", "/v1/catalog/datacenters").await.json(),
        json!(["dc2", "dc3", "dc1", "dc5", "dc4"])
    );
    assert_eq!(
        f.get("dc4", "/v1/catalog/datacenters").await.json()[0],
        "dc4"
    );
    assert_eq!(f.sim.datacenters_by_distance("dc3")[0], "dc3");
}

/// Reference §4: RTT is serf's distance — vector distance plus heights,
/// plus adjustments when that stays positive.
#[test]
fn coordinate_distance_follows_serf() {
    let mut a = Coordinate::at(&[0.003, 0.004]);
    let mut b = Coordinate::at(&[0.0]);
    assert!((a.distance_to(&b) - 0.005).abs() < 1e-9);
    a.height = 0.001;
    b.height = 0.002;
    assert!((a.distance_to(&b) - 0.008).abs() < 1e-9);
    a.adjustment = -0.001;
    assert!((a.distance_to(&b) - 0.007).abs() < 1e-9);
    a.adjustment = -1.0;
    assert!(
        (a.distance_to(&b) - 0.008).abs() < 1e-9,
        "a negative total keeps the raw distance"
    );
}

/// Reference §4: `/v1/catalog/services` maps names to their tags, includes
/// the servers' `consul` service, and health flips do not move its index.
#[tokio::test]
async fn catalog_services_map_and_index() {
    let f = Fixture::start(&["dc1"]).await;
    for (node, tags) in [("a", json!(["b", "a"])), ("b", json!(["a", "c"]))] {
        let body = json!({"Node": node, "Address": "10.0.0.1", "Service": {"Service": "web", "Tags": tags}});
        f.put("dc1", "/v1/catalog/register", body).await;
    }
    f.register("dc1", "c", "10.0.0.3", "db", "passing").await;
    let a = f.get("dc1", "/v1/catalog/services").await;
    assert_eq!(
        a.json(),
        json!({"consul": [], "db": [], "web": ["a", "b", "c"]})
    );
    f.sim.set_check_status("dc1", None, "service:c", "critical");
    assert_eq!(
        f.get("dc1", "/v1/catalog/services").await.index(),
        a.index()
    );
}

/// Reference §4: `/v1/catalog/service/<svc>` answers the flattened
/// `ServiceNode` form.
#[tokio::test]
async fn catalog_service_flattened_shape() {
    let f = Fixture::start(&["dc1"]).await;
    f.register("dc1", "n1", "10.0.0.1", "web", "critical").await;
    let a = f.get("dc1", "/v1/catalog/service/web").await;
    let e = &a.json()[0];
    assert_eq!(
        keys(e),
        [
            "ID",
            "Node",
            "Address",
            "Datacenter",
            "TaggedAddresses",
            "NodeMeta",
            "ServiceKind",
            "ServiceID",
            "ServiceName",
            "ServiceTags",
            "ServiceAddress",
            "ServiceWeights",
            "ServiceMeta",
            "ServicePort",
            "ServiceSocketPath",
            "ServiceEnableTagOverride",
            "ServiceProxy",
            "ServiceConnect",
            "ServiceLocality",
            "CreateIndex",
            "ModifyIndex"
        ]
    );
    assert_eq!(
        (e["ServiceName"].as_str(), e["ServicePort"].as_u64()),
        (Some("web"), Some(8080))
    );
    assert_eq!(
        a.index(),
        f.get("dc1", "/v1/health/service/web").await.index()
    );
    let missing = f.get("dc1", "/v1/catalog/service/").await;
    assert_eq!(
        (missing.status, missing.body.as_str()),
        (400, "Missing service name")
    );
}

/// Reference §4: `/v1/catalog/nodes`, `/v1/coordinate/datacenters`,
/// `/v1/agent/self`, `/v1/status/leader` and `/v1/status/peers` shapes.
#[tokio::test]
async fn other_read_endpoint_shapes() {
    let f = Fixture::start(&["dc1", "dc2"]).await;
    f.register("dc1", "n1", "10.0.0.1", "web", "passing").await;
    let nodes = f.get("dc1", "/v1/catalog/nodes").await.json();
    let names: Vec<&str> = nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["Node"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["dc1-server-1", "n1"]);
    let coords = f.get("dc1", "/v1/coordinate/datacenters").await.json();
    assert_eq!(coords[1]["Datacenter"], "dc2");
    assert_eq!(coords[1]["Coordinates"][0]["Node"], "dc2-server-1");
    assert_eq!(
        keys(&coords[1]["Coordinates"][0]["Coord"]),
        ["Vec", "Error", "Adjustment", "Height"]
    );
    assert_eq!(
        coords[1]["Coordinates"][0]["Coord"]["Vec"]
            .as_array()
            .unwrap()
            .len(),
        8
    );
    let me = f.get("dc2", "/v1/agent/self").await.json();
    assert_eq!(me["Config"]["Datacenter"], "dc2");
    assert_eq!(me["Config"]["NodeName"], "dc2-server-1");
    assert_eq!(me["Config"]["Server"], true);
    let addr = f.sim.addr("dc1").await.ip();
    assert_eq!(
        f.get("dc1", "/v1/status/leader").await.json(),
        json!(format!("{addr}:8300"))
    );
    assert_eq!(
        f.get("dc1", "/v1/status/peers").await.json(),
        json!([format!("{addr}:8300")])
    );
}

//------------ Faults -------------------------------------------------------------

/// Fault injection: a stopped listener refuses connections while its data
/// stays reachable through another DC's `?dc=`; restarting reuses the port.
#[tokio::test]
async fn stopped_listener_refuses_and_restarts_on_same_port() {
    let f = Fixture::start(&["dc1", "dc2"]).await;
    f.register("dc1", "n1", "10.0.0.1", "web", "passing").await;
    let addr = f.sim.addr("dc1").await;
    let url = f.sim.url("dc1").await;
    f.sim.stop_listener("dc1").await;
    let err = f
        .http
        .get(format!("{url}/v1/catalog/services"))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    let via_dc2 = f.get("dc2", "/v1/health/service/web?dc=dc1").await;
    assert_eq!(node_addresses(&via_dc2.json()), vec!["10.0.0.1"]);
    f.sim.start_listener("dc1").await.unwrap();
    assert_eq!(f.sim.addr("dc1").await, addr);
    assert_eq!(f.get("dc1", "/v1/catalog/datacenters").await.status, 200);
}

/// Fault injection: a partitioned DC cannot be reached with `?dc=` from the
/// others, nor reach them (500, Consul's text); its own listener still works.
#[tokio::test]
async fn partition_fails_cross_dc_requests() {
    let f = Fixture::start(&["dc1", "dc2"]).await;
    f.sim.partition("dc2", true);
    for (from, to) in [("dc1", "dc2"), ("dc2", "dc1")] {
        let a = f.get(from, &format!("/v1/catalog/services?dc={to}")).await;
        assert_eq!(
            (a.status, a.body.as_str()),
            (500, "Remote DC has no server currently reachable")
        );
    }
    assert_eq!(f.get("dc2", "/v1/catalog/services").await.status, 200);
    assert_eq!(
        f.get("dc1", "/v1/catalog/datacenters").await.json(),
        json!(["dc1", "dc2"])
    );
    f.sim.partition("dc2", false);
    assert_eq!(
        f.get("dc1", "/v1/catalog/services?dc=dc2").await.status,
        200
    );
}

/// Fault injection: the next N requests (optionally by path prefix) fail
/// with the given status; then service resumes.
#[tokio::test]
async fn fail_next_requests() {
    let f = Fixture::start(&["dc1"]).await;
    f.sim.fail_next("dc1", 2, 429, None, Some("/v1/health/"));
    assert_eq!(f.get("dc1", "/v1/catalog/services").await.status, 200);
    for _ in 0..2 {
        let a = f.get("dc1", "/v1/health/service/web").await;
        assert_eq!((a.status, a.body.as_str()), (429, "rate limit exceeded"));
    }
    assert_eq!(f.get("dc1", "/v1/health/service/web").await.status, 200);
}

/// Fault injection: a trickle sends the head at once and the body a byte
/// at a time; the body arrives whole in the end.
#[tokio::test]
async fn trickle() {
    let f = Fixture::start(&["dc1"]).await;
    let whole = f.get("dc1", "/v1/catalog/services").await.body;
    f.sim.trickle("dc1", Some(Duration::from_millis(5)));
    let url = format!("{}/v1/catalog/services", f.sim.url("dc1").await);
    let start = Instant::now();
    let reply = f.http.get(&url).send().await.unwrap();
    let head = start.elapsed();
    assert_eq!(reply.status(), 200);
    assert!(reply.headers().contains_key("x-consul-index"));
    let body = reply.text().await.unwrap();
    let took = start.elapsed();
    assert_eq!(body, whole);
    let least = Duration::from_millis(5) * u32::try_from(whole.len() - 1).unwrap();
    assert!(took >= least, "{} bytes in {took:?}", whole.len());
    assert!(head < least, "the head waited for the body: {head:?}");
    // Lifted through the HTTP API too.
    let lifted = f
        .http
        .put(format!(
            "{}/_sim/dc/dc1/trickle?ms=0",
            f.sim.url("dc1").await
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(lifted.status(), 200);
    let start = Instant::now();
    assert_eq!(f.get("dc1", "/v1/catalog/services").await.body, whole);
    assert!(start.elapsed() < least);
}

/// Fault injection: delays and hangs hold answers; lifting a hang releases
/// them.
#[tokio::test]
async fn delay_and_hang() {
    let f = Fixture::start(&["dc1"]).await;
    f.sim.set_delay("dc1", Some(Duration::from_millis(200)));
    let start = Instant::now();
    assert_eq!(f.get("dc1", "/v1/catalog/services").await.status, 200);
    assert!(start.elapsed() >= Duration::from_millis(200));
    f.sim.set_delay("dc1", None);
    f.sim.hang("dc1", true);
    let url = format!("{}/v1/catalog/services", f.sim.url("dc1").await);
    let http = f.http.clone();
    let waiter = tokio::spawn(async move { http.get(url).send().await.unwrap().status() });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "a hung DC must not answer");
    f.sim.hang("dc1", false);
    assert_eq!(waiter.await.unwrap(), 200);
}

/// Fault injection: with no leader, non-stale reads and writes fail with
/// `No cluster leader` after the hold timeout; `?stale` reads answer with
/// `KnownLeader: false` and a growing LastContact; agent check updates
/// apply once a leader is back.
#[tokio::test]
async fn leader_loss() {
    let f = Fixture::start(&["dc1"]).await;
    f.register("dc1", "n1", "10.0.0.1", "web", "passing").await;
    f.sim.set_rpc_hold_timeout(Duration::from_millis(200));
    f.sim.lose_leader("dc1");
    let start = Instant::now();
    let a = f.get("dc1", "/v1/health/service/web").await;
    assert!(start.elapsed() >= Duration::from_millis(200));
    assert_eq!((a.status, a.body.as_str()), (500, "No cluster leader"));
    let w = f
        .put(
            "dc1",
            "/v1/catalog/register",
            instance("dc1", "n2", "10.0.0.2", "web", "passing"),
        )
        .await;
    assert_eq!((w.status, w.body.as_str()), (500, "No cluster leader"));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let s = f.get("dc1", "/v1/health/service/web?stale").await;
    assert_eq!(s.status, 200);
    assert_eq!(s.header("x-consul-knownleader"), Some("false"));
    assert!(
        s.header("x-consul-lastcontact")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 50
    );
    assert_eq!(node_addresses(&s.json()), vec!["10.0.0.1"]);
    assert_eq!(f.get("dc1", "/v1/status/leader").await.body, "\"\"");
    assert_eq!(f.get("dc1", "/v1/catalog/datacenters").await.status, 200);
    let c = f
        .put("dc1", "/v1/agent/check/fail/service:n1", json!(null))
        .await;
    assert_eq!(c.status, 200);
    assert_eq!(
        f.get("dc1", "/v1/health/service/web?stale").await.json()[0]["Checks"][0]["Status"],
        "passing"
    );
    f.sim.regain_leader("dc1");
    let a = f.get("dc1", "/v1/health/service/web").await;
    assert_eq!(a.header("x-consul-knownleader"), Some("true"));
    assert_eq!(a.json()[0]["Checks"][0]["Status"], "critical");
}

/// Fault injection: a leader elected within the hold timeout lets the
/// waiting request through, as Consul's forwarding retries do.
#[tokio::test]
async fn leader_back_within_hold_timeout_serves_request() {
    let f = Fixture::start(&["dc1"]).await;
    f.sim.set_rpc_hold_timeout(Duration::from_secs(5));
    f.sim.lose_leader("dc1");
    let sim = f.sim.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        sim.regain_leader("dc1");
    });
    let start = Instant::now();
    let a = f.get("dc1", "/v1/catalog/services").await;
    assert_eq!(a.status, 200);
    assert!(start.elapsed() < Duration::from_secs(2));
}

/// Fault injection: each listener records what it received — path, query
/// string and headers.
#[tokio::test]
async fn request_log_records_path_query_and_headers() {
    let f = Fixture::start(&["dc1"]).await;
    f.http
        .get(format!(
            "{}/v1/health/service/web?dc=dc1&index=1&wait=10ms&stale",
            f.sim.url("dc1").await
        ))
        .header("X-Consul-Token", "secret-token")
        .send()
        .await
        .unwrap();
    let log = f.sim.requests("dc1");
    let r = log
        .iter()
        .find(|r| r.path == "/v1/health/service/web")
        .expect("recorded");
    assert_eq!(r.param("wait").as_deref(), Some("10ms"));
    assert_eq!(r.param("stale").as_deref(), Some(""));
    assert_eq!(r.header("x-consul-token"), Some("secret-token"));
    f.sim.clear_requests(None);
    assert!(f.sim.requests("dc1").is_empty());
}

/// Fault injection over HTTP: `/_sim/` drives the same faults.
#[tokio::test]
async fn sim_http_api_drives_faults() {
    let f = Fixture::start(&["dc1", "dc2"]).await;
    let a = f
        .call(
            "POST",
            "dc1",
            "/_sim/dc/dc1/fail?count=1&status=503&path=/v1/catalog",
            None,
        )
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(f.get("dc1", "/v1/catalog/services").await.status, 503);
    assert_eq!(f.get("dc1", "/v1/catalog/services").await.status, 200);
    f.call("POST", "dc1", "/_sim/dc/dc2/partition", None).await;
    assert_eq!(
        f.get("dc1", "/v1/catalog/services?dc=dc2").await.status,
        500
    );
    f.call("DELETE", "dc1", "/_sim/dc/dc2/partition", None)
        .await;
    f.call("DELETE", "dc1", "/_sim/dc/dc2/leader", None).await;
    assert_eq!(f.get("dc1", "/v1/status/leader?dc=dc2").await.body, "\"\"");
    f.call("PUT", "dc1", "/_sim/dc/dc2/leader", None).await;
    let url2 = f.sim.url("dc2").await;
    assert_eq!(
        f.call("POST", "dc1", "/_sim/dc/dc2/listener/stop", None)
            .await
            .status,
        200
    );
    assert!(
        f.http
            .get(format!("{url2}/v1/agent/self"))
            .send()
            .await
            .is_err()
    );
    assert_eq!(
        f.call("POST", "dc1", "/_sim/dc/dc2/listener/start", None)
            .await
            .status,
        200
    );
    assert_eq!(f.get("dc2", "/v1/agent/self").await.status, 200);
    f.register("dc1", "n1", "10.0.0.1", "web", "passing").await;
    f.call("POST", "dc1", "/_sim/dc/dc1/rewind?to=1", None)
        .await;
    assert_eq!(f.get("dc1", "/v1/health/service/web").await.index(), 1);
    let state = f.get("dc1", "/_sim/state").await.json();
    assert_eq!(state[1]["Datacenter"], "dc2");
    assert_eq!(state[1]["Listening"], true);
    let log = f.get("dc1", "/_sim/requests?dc=dc1").await.json();
    assert!(
        log.as_array()
            .unwrap()
            .iter()
            .any(|r| r["path"] == "/v1/health/service/web")
    );
}

/// Reference §2: `?leader` is the default mode; `?cached` is accepted and
/// answers `X-Cache: MISS` first, then `HIT` with `Age`.
#[tokio::test]
async fn leader_and_cached_modes_are_accepted() {
    let f = Fixture::start(&["dc1"]).await;
    let a = f.get("dc1", "/v1/health/service/web?leader").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("x-consul-effective-consistency"), Some("leader"));
    let first = f.get("dc1", "/v1/catalog/services?cached").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-cache"), Some("MISS"));
    let second = f.get("dc1", "/v1/catalog/services?cached").await;
    assert_eq!(second.header("x-cache"), Some("HIT"));
    assert_eq!(second.header("age"), Some("0"));
    assert_eq!(second.body, first.body);
}

/// Reference §1, §3 and §6.4: with `translate_wan_addrs`, answers about
/// another DC carry its WAN node and service addresses and WAN port, local
/// answers keep LAN ones, and every response says
/// `X-Consul-Translate-Addresses: true`.
#[tokio::test]
async fn translate_wan_addrs_rewrites_remote_answers() {
    let any = "127.0.0.1:0".parse().unwrap();
    let sim = common::builder()
        .dc("dc1", any)
        .dc("dc2", any)
        .translate_wan_addrs(true)
        .start()
        .await
        .unwrap();
    let f = Fixture::with(sim);
    let body = json!({"Datacenter": "dc2", "Node": "n1", "Address": "10.2.0.1",
        "TaggedAddresses": {"lan": "10.2.0.1", "wan": "198.51.100.1"},
        "Service": {"Service": "web", "Port": 80, "Address": "10.2.0.5",
                    "TaggedAddresses": {"wan": {"Address": "198.51.100.5", "Port": 8443}}}});
    assert_eq!(f.put("dc1", "/v1/catalog/register", body).await.status, 200);
    let remote = f.get("dc1", "/v1/health/service/web?dc=dc2").await;
    assert_eq!(remote.header("x-consul-translate-addresses"), Some("true"));
    let e = &remote.json()[0];
    assert_eq!(e["Node"]["Address"], "198.51.100.1");
    assert_eq!(
        (
            e["Service"]["Address"].as_str(),
            e["Service"]["Port"].as_u64()
        ),
        (Some("198.51.100.5"), Some(8443))
    );
    let local = f.get("dc2", "/v1/health/service/web").await.json();
    assert_eq!(local[0]["Node"]["Address"], "10.2.0.1");
    assert_eq!(local[0]["Service"]["Port"], 80);
    let cat = f.get("dc1", "/v1/catalog/service/web?dc=dc2").await.json();
    assert_eq!(
        (
            cat[0]["Address"].as_str(),
            cat[0]["ServiceAddress"].as_str()
        ),
        (Some("198.51.100.1"), Some("198.51.100.5"))
    );
    // A failover answer is translated by the DC that answered.
    let q =
        json!({"Name": "web", "Service": {"Service": "web", "Failover": {"Datacenters": ["dc2"]}}});
    assert_eq!(
        f.call("POST", "dc1", "/v1/query", Some(q)).await.status,
        200
    );
    let exec = f.get("dc1", "/v1/query/web/execute").await.json();
    assert_eq!(exec["Datacenter"], "dc2");
    assert_eq!(exec["Nodes"][0]["Service"]["Address"], "198.51.100.5");
}
