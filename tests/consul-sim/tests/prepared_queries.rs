//! Prepared queries over real HTTP (reference §5, with §1 conventions):
//! create/list/get/update/delete and their errors, validation, execution by
//! ID, name and template, the instance filters, and the failover algorithm
//! of §5.4.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Answer, Fixture, instance, node_addresses};
use consul_sim::model::Coordinate;
use serde_json::{Value, json};

//------------ Helpers --------------------------------------------------------

/// `POST path` on `dc` with a JSON body.
async fn post(f: &Fixture, dc: &str, path: &str, body: Value) -> Answer {
    f.call("POST", dc, path, Some(body)).await
}

/// Creates `definition` through `dc`'s listener and returns its ID.
async fn create(f: &Fixture, dc: &str, definition: Value) -> String {
    let answer = post(f, dc, "/v1/query", definition.clone()).await;
    assert_eq!(answer.status, 200, "create {definition}: {}", answer.body);
    let body = answer.json();
    let id = body["ID"].as_str().expect("an ID").to_owned();
    assert_eq!(body, json!({ "ID": id }), "create answers only the ID");
    id
}

/// Posts `definition` and asserts Consul's error status and exact text.
async fn assert_create_fails(f: &Fixture, definition: Value, status: u16, text: &str) {
    let answer = post(f, "dc1", "/v1/query", definition.clone()).await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (status, text),
        "create {definition}"
    );
}

/// `GET /v1/query/<id-or-name>/execute<query>` on `dc`.
async fn execute(f: &Fixture, dc: &str, id_or_name: &str, query: &str) -> Answer {
    f.get(dc, &format!("/v1/query/{id_or_name}/execute{query}"))
        .await
}

/// Executes and asserts a 200 with `X-Consul-Index: 1`; returns the body.
async fn execute_ok(f: &Fixture, dc: &str, id_or_name: &str, query: &str) -> Value {
    let answer = execute(f, dc, id_or_name, query).await;
    assert_eq!(answer.status, 200, "execute {id_or_name}: {}", answer.body);
    assert_eq!(answer.index(), 1, "execute's X-Consul-Index is always 1");
    answer.json()
}

/// `GET /v1/query/<id-or-name>/explain` on dc1, asserting a 200.
async fn explain_ok(f: &Fixture, id_or_name: &str) -> Value {
    let answer = f
        .get("dc1", &format!("/v1/query/{id_or_name}/explain"))
        .await;
    assert_eq!(answer.status, 200, "explain {id_or_name}: {}", answer.body);
    assert_eq!(answer.index(), 1, "explain's X-Consul-Index is always 1");
    answer.json()
}

/// Registers a prepared register body through its own DC's listener.
async fn register_body(f: &Fixture, dc: &str, body: Value) {
    let answer = f.put(dc, "/v1/catalog/register", body.clone()).await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, "true"),
        "register {body}"
    );
}

/// Registers `service` on `node` with tags `tags`.
async fn register_tagged(
    f: &Fixture,
    dc: &str,
    node: &str,
    address: &str,
    service: &str,
    tags: &[&str],
) {
    let mut body = instance(dc, node, address, service, "passing");
    body["Service"]["Tags"] = json!(tags);
    register_body(f, dc, body).await;
}

/// A federation on `127.0.0.1:0` whose DC coordinates are `positions`
/// (seconds along one axis), wrapped in the shared fixture.
async fn start_with_coordinates(positions: &[(&str, f64)]) -> Fixture {
    let mut builder = common::builder();
    for (name, _) in positions {
        builder = builder.dc(name, SocketAddr::from(([127, 0, 0, 1], 0)));
    }
    for (name, at) in positions {
        builder = builder.coordinate(name, Some(Coordinate::at(&[*at])));
    }
    Fixture::with(builder.start().await.expect("simulator starts"))
}

/// Node addresses of an execute body's `Nodes`.
fn addresses(body: &Value) -> Vec<String> {
    node_addresses(&body["Nodes"])
}

/// `(Datacenter, Failovers, sorted node addresses)` of an execute body.
fn outcome(body: &Value) -> (String, u64, Vec<String>) {
    (
        body["Datacenter"].as_str().expect("Datacenter").to_owned(),
        body["Failovers"].as_u64().expect("Failovers"),
        addresses(body),
    )
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// A name_prefix_match template definition.
fn template(name: &str, regexp: &str, service: Value) -> Value {
    json!({
        "Name": name,
        "Template": {"Type": "name_prefix_match", "Regexp": regexp},
        "Service": service,
    })
}

//------------ §5.1 Create ----------------------------------------------------

/// Reference §5.1: `POST /v1/query` answers 200 `{"ID":"<uuid>"}` and
/// `GET /v1/query/<uuid>` returns a one-element array with the stored
/// definition; absent slices/maps come back as `null` and `RaftIndex` is
/// flattened into `CreateIndex`/`ModifyIndex`.
#[tokio::test]
async fn create_returns_uuid_and_get_returns_stored_definition() {
    let f = Fixture::start(&["dc1", "dc2"]).await;
    let id = create(
        &f,
        "dc1",
        json!({"Name": "grafana", "Service": {"Service": "grafana",
               "Failover": {"Datacenters": ["dc2"]}}, "DNS": {"TTL": "10s"}}),
    )
    .await;
    assert_eq!(id.len(), 36, "{id}");
    assert!(uuid_like(&id), "{id} is a UUID");

    let answer = f.get("dc1", &format!("/v1/query/{id}")).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    let list = answer.json();
    let items = list.as_array().expect("an array");
    assert_eq!(items.len(), 1, "{list}");
    let q = &items[0];
    assert_eq!(q["ID"], json!(id));
    assert_eq!(q["Name"], json!("grafana"));
    assert_eq!(q["Session"], json!(""));
    assert_eq!(q["Service"]["Service"], json!("grafana"));
    assert_eq!(q["Service"]["Failover"]["Datacenters"], json!(["dc2"]));
    assert_eq!(q["Service"]["Failover"]["NearestN"], json!(0));
    assert_eq!(q["Service"]["OnlyPassing"], json!(false));
    assert_eq!(q["Service"]["Tags"], Value::Null);
    assert_eq!(q["Service"]["NodeMeta"], Value::Null);
    assert_eq!(q["Service"]["ServiceMeta"], Value::Null);
    assert_eq!(q["Service"]["IgnoreCheckIDs"], Value::Null);
    assert_eq!(q["DNS"], json!({"TTL": "10s"}));
    assert_eq!(
        q["Template"],
        json!({"Type": "", "Regexp": "", "RemoveEmptyTags": false})
    );
    let create_index = q["CreateIndex"].as_u64().expect("CreateIndex");
    assert!(create_index >= 1);
    assert_eq!(q["ModifyIndex"].as_u64(), Some(create_index));
    assert!(q.get("RaftIndex").is_none(), "RaftIndex is flattened: {q}");
    assert_eq!(answer.index(), create_index, "X-Consul-Index of a get");
}

fn uuid_like(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.iter().map(|g| g.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && s.chars().all(|c| c == '-' || c.is_ascii_hexdigit())
}

/// Reference §5.1: a create body carrying an `ID` is refused with 500
/// `ID must be empty when creating a new prepared query`.
#[tokio::test]
async fn create_with_id_is_rejected() {
    let f = Fixture::start(&["dc1"]).await;
    assert_create_fails(
        &f,
        json!({"ID": "8f246b77-f3e1-ff88-5b48-8ec93abf3e05", "Name": "x",
               "Service": {"Service": "x"}}),
        500,
        "ID must be empty when creating a new prepared query",
    )
    .await;
    assert_eq!(f.get("dc1", "/v1/query").await.json(), json!([]));
}

/// Reference §5.1: no Name, no Template and no Session → 500
/// `Invalid prepared query: Must be bound to a session`.
#[tokio::test]
async fn create_without_name_template_or_session_is_rejected() {
    let f = Fixture::start(&["dc1"]).await;
    assert_create_fails(
        &f,
        json!({"Service": {"Service": "redis"}}),
        500,
        "Invalid prepared query: Must be bound to a session",
    )
    .await;
}

/// Reference §5.1: no `Service.Service` → 500
/// `Invalid prepared query: Must provide a Service name to query`.
#[tokio::test]
async fn create_without_service_is_rejected() {
    let f = Fixture::start(&["dc1"]).await;
    assert_create_fails(
        &f,
        json!({"Name": "nothing"}),
        500,
        "Invalid prepared query: Must provide a Service name to query",
    )
    .await;
}

/// Reference §5.1: a negative `NearestN` → 500
/// `Invalid prepared query: Bad NearestN '-1', must be >= 0`.
#[tokio::test]
async fn create_with_negative_nearest_n_is_rejected() {
    let f = Fixture::start(&["dc1"]).await;
    assert_create_fails(
        &f,
        json!({"Name": "n", "Service": {"Service": "redis", "Failover": {"NearestN": -1}}}),
        500,
        "Invalid prepared query: Bad NearestN '-1', must be >= 0",
    )
    .await;
}

/// Reference §5.2: `Targets` cannot be combined with `NearestN` or
/// `Datacenters` → 500 `Invalid prepared query: Targets cannot be populated
/// with NearestN or Datacenters`.
#[tokio::test]
async fn create_with_targets_and_nearest_n_or_datacenters_is_rejected() {
    let f = Fixture::start(&["dc1", "dc2"]).await;
    let text = "Invalid prepared query: Targets cannot be populated with NearestN or Datacenters";
    assert_create_fails(
        &f,
        json!({"Name": "t1", "Service": {"Service": "redis", "Failover": {
            "NearestN": 1, "Targets": [{"Datacenter": "dc2"}]}}}),
        500,
        text,
    )
    .await;
    assert_create_fails(
        &f,
        json!({"Name": "t2", "Service": {"Service": "redis", "Failover": {
            "Datacenters": ["dc2"], "Targets": [{"Datacenter": "dc2"}]}}}),
        500,
        text,
    )
    .await;
    // Targets alone are fine.
    create(
        &f,
        "dc1",
        json!({"Name": "t3", "Service": {"Service": "redis", "Failover": {
            "Targets": [{"Datacenter": "dc2"}]}}}),
    )
    .await;
}

/// Reference §5.2: `DNS.TTL` must parse as a Go duration (else 500
/// `Invalid prepared query: Bad DNS TTL '<x>': <Go error>`) and be ≥ 0.
#[tokio::test]
async fn create_with_bad_dns_ttl_is_rejected() {
    let f = Fixture::start(&["dc1"]).await;
    assert_create_fails(
        &f,
        json!({"Name": "ttl", "Service": {"Service": "redis"}, "DNS": {"TTL": "abc"}}),
        500,
        "Invalid prepared query: Bad DNS TTL 'abc': time: invalid duration \"abc\"",
    )
    .await;
    assert_create_fails(
        &f,
        json!({"Name": "ttl", "Service": {"Service": "redis"}, "DNS": {"TTL": "10"}}),
        500,
        "Invalid prepared query: Bad DNS TTL '10': time: missing unit in duration \"10\"",
    )
    .await;
    assert_create_fails(
        &f,
        json!({"Name": "ttl", "Service": {"Service": "redis"}, "DNS": {"TTL": "-1s"}}),
        500,
        "Invalid prepared query: DNS TTL '-1000000000', must be >=0",
    )
    .await;
    create(
        &f,
        "dc1",
        json!({"Name": "ttl", "Service": {"Service": "redis"}, "DNS": {"TTL": "1m30s"}}),
    )
    .await;
}

/// Reference §5.1: malformed JSON and unknown fields → 400
/// `Request decode failed: …`.
#[tokio::test]
async fn create_with_bad_json_or_unknown_field_is_400() {
    let f = Fixture::start(&["dc1"]).await;
    let url = format!("{}/v1/query", f.sim.url("dc1").await);
    let resp = f
        .http
        .post(&url)
        .body("{\"Name\": ")
        .send()
        .await
        .expect("answered");
    assert_eq!(resp.status().as_u16(), 400);
    let text = resp.text().await.expect("body");
    assert!(text.starts_with("Request decode failed: "), "{text:?}");

    let answer = post(
        &f,
        "dc1",
        "/v1/query",
        json!({"Name": "x", "Service": {"Service": "x"}, "Bogus": 1}),
    )
    .await;
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert!(
        answer.body.starts_with("Request decode failed: "),
        "{:?}",
        answer.body
    );
    assert_eq!(f.get("dc1", "/v1/query").await.json(), json!([]));
}

/// Reference §5.1 (state store): a name equal, case-insensitively, to an
/// existing query's name → 500 `raft apply failed: name '<n>' aliases an
/// existing query name`.
#[tokio::test]
async fn create_with_aliasing_name_is_rejected() {
    let f = Fixture::start(&["dc1"]).await;
    create(
        &f,
        "dc1",
        json!({"Name": "grafana", "Service": {"Service": "grafana"}}),
    )
    .await;
    assert_create_fails(
        &f,
        json!({"Name": "GraFana", "Service": {"Service": "other"}}),
        500,
        "raft apply failed: name 'GraFana' aliases an existing query name",
    )
    .await;
    let list = f.get("dc1", "/v1/query").await.json();
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
}

/// Reference §5.2: only one catch-all template (`Name: ""`) may exist →
/// 500 `raft apply failed: a query template with an empty name already
/// exists`.
#[tokio::test]
async fn create_second_catch_all_template_is_rejected() {
    let f = Fixture::start(&["dc1"]).await;
    create(
        &f,
        "dc1",
        template("", "", json!({"Service": "${name.full}"})),
    )
    .await;
    assert_create_fails(
        &f,
        template("", "", json!({"Service": "other-${name.full}"})),
        500,
        "raft apply failed: a query template with an empty name already exists",
    )
    .await;
}

/// Reference §5.2: a template `Type` other than `name_prefix_match` → 500
/// `raft apply failed: failed compiling template: Bad Template.Type '<t>'`.
#[tokio::test]
async fn create_template_with_bad_type_is_rejected() {
    let f = Fixture::start(&["dc1"]).await;
    assert_create_fails(
        &f,
        json!({"Name": "geo-", "Template": {"Type": "prefix"},
               "Service": {"Service": "${name.suffix}"}}),
        500,
        "raft apply failed: failed compiling template: Bad Template.Type 'prefix'",
    )
    .await;
}

/// Reference §5.2: a template `Regexp` that does not compile → 500
/// `raft apply failed: failed compiling template: Bad Regexp: …`.
#[tokio::test]
async fn create_template_with_bad_regexp_is_rejected() {
    let f = Fixture::start(&["dc1"]).await;
    let answer = post(
        &f,
        "dc1",
        "/v1/query",
        template("geo-", "^geo-(.*$", json!({"Service": "${match(1)}"})),
    )
    .await;
    assert_eq!(answer.status, 500, "{}", answer.body);
    assert!(
        answer
            .body
            .starts_with("raft apply failed: failed compiling template: Bad Regexp: "),
        "{:?}",
        answer.body
    );
    assert_eq!(f.get("dc1", "/v1/query").await.json(), json!([]));
}

/// Reference §5.2: a template interpolating an unknown variable fails its
/// test render → 500 `raft apply failed: failed compiling template: …
/// unknown variable accessed: …`.
#[tokio::test]
async fn create_template_with_unknown_variable_is_rejected() {
    let f = Fixture::start(&["dc1"]).await;
    let answer = post(
        &f,
        "dc1",
        "/v1/query",
        template("geo-", "", json!({"Service": "${name.bogus}"})),
    )
    .await;
    assert_eq!(answer.status, 500, "{}", answer.body);
    assert!(
        answer
            .body
            .starts_with("raft apply failed: failed compiling template: "),
        "{:?}",
        answer.body
    );
    assert!(
        answer
            .body
            .contains("unknown variable accessed: name.bogus"),
        "{:?}",
        answer.body
    );
    assert_eq!(f.get("dc1", "/v1/query").await.json(), json!([]));
}

//------------ §5.1 List, get, update, delete ---------------------------------

/// Reference §5.1: `GET /v1/query` is `[]` with no queries (never null),
/// then lists every query of the DC; queries are per datacenter.
#[tokio::test]
async fn list_returns_empty_array_then_all_queries() {
    let f = Fixture::start(&["dc1", "dc2"]).await;
    let answer = f.get("dc1", "/v1/query").await;
    assert_eq!((answer.status, answer.body.as_str()), (200, "[]"));
    assert!(answer.index() >= 1, "index never 0");

    let a = create(&f, "dc1", json!({"Name": "a", "Service": {"Service": "a"}})).await;
    let b = create(&f, "dc1", json!({"Name": "b", "Service": {"Service": "b"}})).await;
    let answer = f.get("dc1", "/v1/query").await;
    assert_eq!(answer.status, 200);
    let mut ids: Vec<String> = answer
        .json()
        .as_array()
        .expect("array")
        .iter()
        .map(|q| q["ID"].as_str().expect("ID").to_owned())
        .collect();
    ids.sort();
    let mut want = vec![a, b];
    want.sort();
    assert_eq!(ids, want);
    assert_eq!(f.get("dc2", "/v1/query").await.body, "[]", "dc2 has none");
    assert_eq!(f.get("dc1", "/v1/query?dc=dc2").await.body, "[]");
}

/// Reference §5.1 [doc≠code]: `GET /v1/query` blocks on `index`/`wait`
/// like other reads: it returns when a query changes, or after the wait
/// with the same index.
#[tokio::test]
async fn list_blocks_until_a_query_changes() {
    let f = Fixture::start(&["dc1"]).await;
    create(&f, "dc1", json!({"Name": "a", "Service": {"Service": "a"}})).await;
    let first = f.get("dc1", "/v1/query").await;
    let index = first.index();

    let started = Instant::now();
    let timed_out = f
        .get("dc1", &format!("/v1/query?index={index}&wait=300ms"))
        .await;
    assert_eq!(timed_out.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(timed_out.index(), index, "timeout keeps the index");
    assert_eq!(timed_out.json().as_array().map(Vec::len), Some(1));

    let writer = {
        let sim = f.sim.clone();
        let http = f.http.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let url = format!("{}/v1/query", sim.url("dc1").await);
            let body = json!({"Name": "b", "Service": {"Service": "b"}}).to_string();
            http.post(url)
                .body(body)
                .send()
                .await
                .expect("create")
                .status()
        })
    };
    let started = Instant::now();
    let woke = f
        .get("dc1", &format!("/v1/query?index={index}&wait=20s"))
        .await;
    assert_eq!(writer.await.expect("writer"), 200);
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "woken by write"
    );
    assert!(woke.index() > index, "{} > {index}", woke.index());
    assert_eq!(woke.json().as_array().map(Vec::len), Some(2));
}

/// Reference §5.1: `GET /v1/query/<uuid>` for an unknown UUID → 404
/// `Query not found`; a non-UUID → 500 `failed prepared query lookup: UUID
/// must be 36 characters` (get is by ID only, never by name).
#[tokio::test]
async fn get_unknown_or_non_uuid_is_an_error() {
    let f = Fixture::start(&["dc1"]).await;
    create(
        &f,
        "dc1",
        json!({"Name": "grafana", "Service": {"Service": "grafana"}}),
    )
    .await;
    let answer = f
        .get("dc1", "/v1/query/8f246b77-f3e1-ff88-5b48-8ec93abf3e05")
        .await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (404, "Query not found")
    );
    let answer = f.get("dc1", "/v1/query/grafana").await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (
            500,
            "failed prepared query lookup: UUID must be 36 characters"
        )
    );
}

/// Reference §5.1: `PUT /v1/query/<uuid>` answers 200 with an empty body
/// and replaces the whole definition (omitted fields are reset) while
/// keeping `CreateIndex`; a query may keep its own name.
#[tokio::test]
async fn update_replaces_whole_definition_and_keeps_create_index() {
    let f = Fixture::start(&["dc1", "dc2"]).await;
    let id = create(
        &f,
        "dc1",
        json!({"Name": "grafana", "Service": {"Service": "grafana", "Tags": ["v1"],
               "OnlyPassing": true, "Failover": {"Datacenters": ["dc2"]}},
               "DNS": {"TTL": "5s"}}),
    )
    .await;
    let before = f.get("dc1", &format!("/v1/query/{id}")).await.json()[0].clone();

    let answer = f
        .put(
            "dc1",
            &format!("/v1/query/{id}"),
            json!({"Name": "grafana", "Service": {"Service": "grafana-v2"}}),
        )
        .await;
    assert_eq!((answer.status, answer.body.as_str()), (200, ""));

    let after = f.get("dc1", &format!("/v1/query/{id}")).await.json();
    assert_eq!(after.as_array().map(Vec::len), Some(1));
    let q = &after[0];
    assert_eq!(q["ID"], json!(id));
    assert_eq!(q["Name"], json!("grafana"));
    assert_eq!(q["Service"]["Service"], json!("grafana-v2"));
    assert_eq!(q["Service"]["Tags"], Value::Null);
    assert_eq!(q["Service"]["OnlyPassing"], json!(false));
    assert_eq!(q["Service"]["Failover"]["Datacenters"], Value::Null);
    assert_eq!(q["DNS"]["TTL"], json!(""));
    assert_eq!(q["CreateIndex"], before["CreateIndex"]);
    assert!(
        q["ModifyIndex"].as_u64() > before["ModifyIndex"].as_u64(),
        "{q}"
    );

    // An update is still validated.
    let answer = f
        .put(
            "dc1",
            &format!("/v1/query/{id}"),
            json!({"Name": "grafana"}),
        )
        .await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (
            500,
            "Invalid prepared query: Must provide a Service name to query"
        )
    );
}

/// Reference §5.1: `PUT` on an unknown ID → 500 `Cannot modify
/// non-existent prepared query: '<id>'`.
#[tokio::test]
async fn update_unknown_query_is_500() {
    let f = Fixture::start(&["dc1"]).await;
    let id = "8f246b77-f3e1-ff88-5b48-8ec93abf3e05";
    let answer = f
        .put(
            "dc1",
            &format!("/v1/query/{id}"),
            json!({"Name": "x", "Service": {"Service": "x"}}),
        )
        .await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (
            500,
            "Cannot modify non-existent prepared query: '8f246b77-f3e1-ff88-5b48-8ec93abf3e05'"
        )
    );
    assert_eq!(f.get("dc1", "/v1/query").await.body, "[]");
}

/// Reference §5.1: `DELETE /v1/query/<uuid>` answers 200 with an empty
/// body and removes the query; deleting it again → 500 `Cannot modify
/// non-existent prepared query: '<id>'`.
#[tokio::test]
async fn delete_removes_query_and_unknown_is_500() {
    let f = Fixture::start(&["dc1"]).await;
    let id = create(
        &f,
        "dc1",
        json!({"Name": "grafana", "Service": {"Service": "grafana"}}),
    )
    .await;
    let answer = f
        .call("DELETE", "dc1", &format!("/v1/query/{id}"), None)
        .await;
    assert_eq!((answer.status, answer.body.as_str()), (200, ""));
    assert_eq!(f.get("dc1", "/v1/query").await.body, "[]");
    let answer = f.get("dc1", &format!("/v1/query/{id}")).await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (404, "Query not found")
    );
    let answer = execute(&f, "dc1", "grafana", "").await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (404, "Query not found")
    );
    let answer = f
        .call("DELETE", "dc1", &format!("/v1/query/{id}"), None)
        .await;
    assert_eq!(
        (answer.status, answer.body),
        (
            500,
            format!("Cannot modify non-existent prepared query: '{id}'")
        )
    );
}

//------------ §5.3 Execute ---------------------------------------------------

/// Reference §5.3: execute by ID answers the local instances with the
/// top-level fields of `PreparedQueryExecuteResponse` plus the embedded
/// `QueryMeta`, `Index` 1, `Failovers` 0 and `Datacenter` the local DC.
#[tokio::test]
async fn execute_by_id_returns_local_instances_and_response_fields() {
    let f = Fixture::start(&["dc1", "dc2"]).await;
    f.register("dc1", "web-1", "10.0.1.1", "web", "passing")
        .await;
    f.register("dc1", "web-2", "10.0.1.2", "web", "passing")
        .await;
    f.register("dc2", "web-3", "10.0.2.1", "web", "passing")
        .await;
    let id = create(
        &f,
        "dc1",
        json!({"Name": "web-query", "Service": {"Service": "web"}, "DNS": {"TTL": "10s"}}),
    )
    .await;
    let body = execute_ok(&f, "dc1", &id, "").await;

    let mut keys: Vec<&str> = body
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    let mut want = vec![
        "Service",
        "Nodes",
        "DNS",
        "Datacenter",
        "PeerName",
        "Failovers",
        "Index",
        "LastContact",
        "KnownLeader",
        "ConsistencyLevel",
        "NotModified",
        "Backend",
        "ResultsFilteredByACLs",
    ];
    want.sort_unstable();
    assert_eq!(keys, want, "{body}");
    assert_eq!(body["Service"], json!("web"));
    assert_eq!(body["DNS"], json!({"TTL": "10s"}));
    assert_eq!(body["Datacenter"], json!("dc1"));
    assert_eq!(body["PeerName"], json!(""));
    assert_eq!(body["Failovers"], json!(0));
    assert_eq!(body["Index"], json!(1));
    assert_eq!(body["KnownLeader"], json!(true));
    assert_eq!(body["LastContact"], json!(0));
    assert_eq!(body["NotModified"], json!(false));
    assert_eq!(body["ResultsFilteredByACLs"], json!(false));
    assert_eq!(addresses(&body), strings(&["10.0.1.1", "10.0.1.2"]));
    for node in body["Nodes"].as_array().expect("array") {
        assert_eq!(node["Node"]["Datacenter"], json!("dc1"));
        assert_eq!(node["Service"]["Service"], json!("web"));
        assert_eq!(node["Service"]["Port"], json!(8080));
        assert!(node["Checks"].is_array(), "{node}");
    }
}

/// Reference §5.2: execute resolves an exact query name case-insensitively.
#[tokio::test]
async fn execute_by_name_is_case_insensitive() {
    let f = Fixture::start(&["dc1"]).await;
    f.register("dc1", "web-1", "10.0.1.1", "web", "passing")
        .await;
    create(
        &f,
        "dc1",
        json!({"Name": "Web-Query", "Service": {"Service": "web"}}),
    )
    .await;
    for name in ["Web-Query", "web-query", "WEB-QUERY"] {
        let body = execute_ok(&f, "dc1", name, "").await;
        assert_eq!(
            outcome(&body),
            ("dc1".to_owned(), 0, strings(&["10.0.1.1"])),
            "{name}"
        );
    }
}

/// Reference §5.1: executing (or explaining) an unknown ID or name → 404
/// `Query not found`.
#[tokio::test]
async fn execute_unknown_query_is_404() {
    let f = Fixture::start(&["dc1"]).await;
    create(
        &f,
        "dc1",
        json!({"Name": "web", "Service": {"Service": "web"}}),
    )
    .await;
    for path in [
        "/v1/query/nope/execute",
        "/v1/query/8f246b77-f3e1-ff88-5b48-8ec93abf3e05/execute",
        "/v1/query/nope/explain",
    ] {
        let answer = f.get("dc1", path).await;
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (404, "Query not found"),
            "{path}"
        );
    }
}

/// Reference §5.3: with no instance anywhere and no failover, `Nodes` is
/// `[]` (never null), `Failovers` 0, `Datacenter` the local DC.
#[tokio::test]
async fn execute_with_no_instances_returns_empty_array() {
    let f = Fixture::start(&["dc1", "dc2"]).await;
    f.register("dc2", "web-3", "10.0.2.1", "web", "passing")
        .await;
    create(
        &f,
        "dc1",
        json!({"Name": "web", "Service": {"Service": "web"}}),
    )
    .await;
    let answer = execute(&f, "dc1", "web", "").await;
    assert_eq!(answer.status, 200);
    assert!(answer.body.contains("\"Nodes\":[]"), "{}", answer.body);
    let body = answer.json();
    assert_eq!(body["Nodes"], json!([]));
    assert_eq!(outcome(&body), ("dc1".to_owned(), 0, vec![]));
}

/// Reference §5.1: a `limit` that is not an integer → 500
/// `Bad limit: strconv.Atoi: parsing "x": invalid syntax`.
#[tokio::test]
async fn execute_with_bad_limit_is_500() {
    let f = Fixture::start(&["dc1"]).await;
    create(
        &f,
        "dc1",
        json!({"Name": "web", "Service": {"Service": "web"}}),
    )
    .await;
    let answer = execute(&f, "dc1", "web", "?limit=x").await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (
            500,
            "Bad limit: strconv.Atoi: parsing \"x\": invalid syntax"
        )
    );
}

/// Reference §5.1: `limit` is parsed with Go's `strconv.Atoi`, whose error
/// for a too-large number is `value out of range`, not `invalid syntax`.
#[tokio::test]
async fn execute_with_out_of_range_limit_reports_go_error() {
    let f = Fixture::start(&["dc1"]).await;
    create(
        &f,
        "dc1",
        json!({"Name": "web", "Service": {"Service": "web"}}),
    )
    .await;
    let answer = execute(&f, "dc1", "web", "?limit=99999999999999999999").await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (
            500,
            "Bad limit: strconv.Atoi: parsing \"99999999999999999999\": value out of range"
        )
    );
}

/// Reference §5.4 step 3: `limit` caps the number of nodes returned.
#[tokio::test]
async fn execute_limit_caps_nodes() {
    let f = Fixture::start(&["dc1"]).await;
    for i in 1..=4 {
        f.register(
            "dc1",
            &format!("web-{i}"),
            &format!("10.0.1.{i}"),
            "web",
            "passing",
        )
        .await;
    }
    create(
        &f,
        "dc1",
        json!({"Name": "web", "Service": {"Service": "web"}}),
    )
    .await;
    let all = execute_ok(&f, "dc1", "web", "").await;
    assert_eq!(all["Nodes"].as_array().map(Vec::len), Some(4));
    let limited = execute_ok(&f, "dc1", "web", "?limit=2").await;
    assert_eq!(limited["Nodes"].as_array().map(Vec::len), Some(2));
    assert_eq!(limited["Failovers"], json!(0));
    let zero = execute_ok(&f, "dc1", "web", "?limit=0").await;
    assert_eq!(
        zero["Nodes"].as_array().map(Vec::len),
        Some(4),
        "0 = no limit"
    );
    let negative = execute_ok(&f, "dc1", "web", "?limit=-1").await;
    assert_eq!(
        negative["Nodes"].as_array().map(Vec::len),
        Some(4),
        "only a limit > 0 applies"
    );
}

/// Reference §5.2: a template cannot be executed or explained by its ID →
/// 500 `prepared query templates can only be resolved up by name, not by
/// ID`.
#[tokio::test]
async fn template_by_id_is_rejected() {
    let f = Fixture::start(&["dc1"]).await;
    let id = create(
        &f,
        "dc1",
        template("geo-", "", json!({"Service": "${name.suffix}"})),
    )
    .await;
    let text = "prepared query templates can only be resolved up by name, not by ID";
    let answer = execute(&f, "dc1", &id, "").await;
    assert_eq!((answer.status, answer.body.as_str()), (500, text));
    let answer = f.get("dc1", &format!("/v1/query/{id}/explain")).await;
    assert_eq!((answer.status, answer.body.as_str()), (500, text));
}

/// Reference §5.2: a template's `Regexp` runs on the full name and
/// `${match(N)}` interpolates its groups into `Service` and `Tags`.
#[tokio::test]
async fn template_regexp_matches_feed_service_and_tags() {
    let f = Fixture::start(&["dc1"]).await;
    register_tagged(&f, "dc1", "web-eu", "10.0.1.1", "web", &["EU"]).await;
    register_tagged(&f, "dc1", "web-us", "10.0.1.2", "web", &["us"]).await;
    register_tagged(&f, "dc1", "db-eu", "10.0.1.3", "db", &["eu"]).await;
    create(
        &f,
        "dc1",
        template(
            "geo-",
            "^geo-([a-z]+)-([a-z]+)$",
            json!({"Service": "${match(1)}", "Tags": ["${match(2)}"]}),
        ),
    )
    .await;

    let body = execute_ok(&f, "dc1", "geo-web-eu", "").await;
    assert_eq!(body["Service"], json!("web"));
    assert_eq!(addresses(&body), strings(&["10.0.1.1"]));
    let body = execute_ok(&f, "dc1", "geo-web-us", "").await;
    assert_eq!(addresses(&body), strings(&["10.0.1.2"]));
    let body = execute_ok(&f, "dc1", "geo-db-eu", "").await;
    assert_eq!(body["Service"], json!("db"));
    assert_eq!(addresses(&body), strings(&["10.0.1.3"]));

    let explained = explain_ok(&f, "geo-web-eu").await;
    assert_eq!(explained["Query"]["Service"]["Service"], json!("web"));
    assert_eq!(explained["Query"]["Service"]["Tags"], json!(["eu"]));
}

/// Reference §5.2: `${name.full}`, `${name.prefix}`, `${name.suffix}` and
/// `${match(N)}` (group 0 is the whole match, out of range → ""), rendered
/// by explain, while get returns the stored unrendered definition.
#[tokio::test]
async fn template_interpolations_render_in_explain() {
    let f = Fixture::start(&["dc1"]).await;
    let id = create(
        &f,
        "dc1",
        json!({"Name": "svc-", "Template": {"Type": "name_prefix_match",
                "Regexp": "^svc-(.*)$"},
               "Service": {"Service": "${name.suffix}",
                "Near": "${name.full}|${name.prefix}|${name.suffix}|${match(0)}|${match(1)}|${match(7)}",
                "Tags": ["${name.prefix}", "x-${match(1)}"],
                "NodeMeta": {"full": "${name.full}"}}}),
    )
    .await;
    let explained = explain_ok(&f, "svc-API").await;
    let q = &explained["Query"];
    assert_eq!(q["ID"], json!(id));
    assert_eq!(q["Name"], json!("svc-"));
    assert_eq!(q["Service"]["Service"], json!("API"));
    assert_eq!(q["Service"]["Near"], json!("svc-API|svc-|API|svc-API|API|"));
    assert_eq!(q["Service"]["Tags"], json!(["svc-", "x-API"]));
    assert_eq!(q["Service"]["NodeMeta"], json!({"full": "svc-API"}));

    let stored = f.get("dc1", &format!("/v1/query/{id}")).await.json();
    assert_eq!(stored[0]["Service"]["Service"], json!("${name.suffix}"));
    assert_eq!(
        stored[0]["Service"]["Tags"],
        json!(["${name.prefix}", "x-${match(1)}"])
    );
}

/// Reference §5.2: the template prefix matches case-insensitively, but
/// `${name.suffix}` is Go's case-sensitive `strings.TrimPrefix` and the
/// regexp is case-sensitive, so `SVC-api` renders suffix `SVC-api` and
/// empty matches.
#[tokio::test]
async fn template_suffix_trim_is_case_sensitive() {
    let f = Fixture::start(&["dc1"]).await;
    create(
        &f,
        "dc1",
        template(
            "svc-",
            "^svc-(.*)$",
            json!({"Service": "${name.suffix}", "Near": "${name.full}/${name.prefix}/${match(1)}"}),
        ),
    )
    .await;
    let explained = explain_ok(&f, "SVC-api").await;
    assert_eq!(explained["Query"]["Name"], json!("svc-"));
    assert_eq!(explained["Query"]["Service"]["Service"], json!("SVC-api"));
    assert_eq!(
        explained["Query"]["Service"]["Near"],
        json!("SVC-api/svc-/")
    );
}

/// Reference §5.2: resolution order is exact name (static queries win),
/// then the longest template prefix (case-insensitive), with the catch-all
/// `""` template last.
#[tokio::test]
async fn template_resolution_prefers_exact_name_then_longest_prefix() {
    let f = Fixture::start(&["dc1"]).await;
    for (node, addr, svc) in [
        ("n1", "10.0.0.1", "static"),
        ("n2", "10.0.0.2", "short"),
        ("n3", "10.0.0.3", "long"),
        ("n4", "10.0.0.4", "anything"),
    ] {
        f.register("dc1", node, addr, svc, "passing").await;
    }
    create(
        &f,
        "dc1",
        template("", "", json!({"Service": "${name.full}"})),
    )
    .await;
    create(&f, "dc1", template("web-", "", json!({"Service": "short"}))).await;
    create(
        &f,
        "dc1",
        template("web-eu-", "", json!({"Service": "long"})),
    )
    .await;
    create(
        &f,
        "dc1",
        json!({"Name": "web-eu-static", "Service": {"Service": "static"}}),
    )
    .await;

    for (name, service, addr) in [
        ("web-eu-static", "static", "10.0.0.1"),
        ("WEB-EU-STATIC", "static", "10.0.0.1"),
        ("web-eu-x", "long", "10.0.0.3"),
        ("Web-EU-x", "long", "10.0.0.3"),
        ("web-x", "short", "10.0.0.2"),
        ("web-", "short", "10.0.0.2"),
        ("anything", "anything", "10.0.0.4"),
    ] {
        let body = execute_ok(&f, "dc1", name, "").await;
        assert_eq!(body["Service"], json!(service), "{name}");
        assert_eq!(addresses(&body), strings(&[addr]), "{name}");
    }
}

/// Reference §5.2: `RemoveEmptyTags` drops tags that render empty;
/// without it an empty tag stays and must be carried by the instance.
#[tokio::test]
async fn template_remove_empty_tags() {
    let f = Fixture::start(&["dc1"]).await;
    register_tagged(&f, "dc1", "web-1", "10.0.1.1", "web", &["primary"]).await;
    register_tagged(&f, "dc1", "web-2", "10.0.1.2", "web", &["replica"]).await;
    create(
        &f,
        "dc1",
        json!({"Name": "rm-", "Template": {"Type": "name_prefix_match",
                "Regexp": "^rm-([a-z]+)$", "RemoveEmptyTags": true},
               "Service": {"Service": "web", "Tags": ["${match(1)}"]}}),
    )
    .await;
    create(
        &f,
        "dc1",
        json!({"Name": "keep-", "Template": {"Type": "name_prefix_match",
                "Regexp": "^keep-([a-z]+)$"},
               "Service": {"Service": "web", "Tags": ["${match(1)}"]}}),
    )
    .await;

    let body = execute_ok(&f, "dc1", "rm-primary", "").await;
    assert_eq!(addresses(&body), strings(&["10.0.1.1"]));
    let body = execute_ok(&f, "dc1", "rm-123", "").await;
    assert_eq!(addresses(&body), strings(&["10.0.1.1", "10.0.1.2"]));
    assert_eq!(
        explain_ok(&f, "rm-123").await["Query"]["Service"]["Tags"],
        json!([])
    );

    let body = execute_ok(&f, "dc1", "keep-replica", "").await;
    assert_eq!(addresses(&body), strings(&["10.0.1.2"]));
    let body = execute_ok(&f, "dc1", "keep-123", "").await;
    assert_eq!(body["Nodes"], json!([]));
    assert_eq!(
        explain_ok(&f, "keep-123").await["Query"]["Service"]["Tags"],
        json!([""])
    );
}

/// Reference §5.2 (Consul's `Render`): with `RemoveEmptyTags` the rendered
/// `Tags` is always a fresh slice, so a template without tags renders
/// `"Tags":[]`, not `null`; without it an absent `Tags` stays `null`.
#[tokio::test]
async fn template_remove_empty_tags_renders_empty_array_without_tags() {
    let f = Fixture::start(&["dc1"]).await;
    create(
        &f,
        "dc1",
        json!({"Name": "rm-", "Template": {"Type": "name_prefix_match",
                "RemoveEmptyTags": true},
               "Service": {"Service": "${name.suffix}"}}),
    )
    .await;
    create(
        &f,
        "dc1",
        template("keep-", "", json!({"Service": "${name.suffix}"})),
    )
    .await;
    let explained = explain_ok(&f, "rm-web").await;
    assert_eq!(explained["Query"]["Service"]["Service"], json!("web"));
    assert_eq!(explained["Query"]["Service"]["Tags"], json!([]));
    let explained = explain_ok(&f, "keep-web").await;
    assert_eq!(explained["Query"]["Service"]["Tags"], Value::Null);
}

/// Reference §5.1: explain answers `{"Query":{…fully rendered…}}` plus the
/// query metadata, for static queries too.
#[tokio::test]
async fn explain_returns_rendered_query() {
    let f = Fixture::start(&["dc1", "dc2"]).await;
    let id = create(
        &f,
        "dc1",
        json!({"Name": "geo-", "Template": {"Type": "name_prefix_match"},
               "Service": {"Service": "${name.suffix}",
                "Failover": {"NearestN": 2, "Datacenters": ["${name.suffix}-dc"]}},
               "DNS": {"TTL": "7s"}}),
    )
    .await;
    let explained = explain_ok(&f, "geo-cache").await;
    assert_eq!(explained["Index"], json!(1));
    assert_eq!(explained["KnownLeader"], json!(true));
    let q = &explained["Query"];
    assert_eq!(q["ID"], json!(id));
    assert_eq!(q["Name"], json!("geo-"));
    assert_eq!(
        q["Template"],
        json!({"Type": "name_prefix_match", "Regexp": "", "RemoveEmptyTags": false})
    );
    assert_eq!(q["Service"]["Service"], json!("cache"));
    assert_eq!(
        q["Service"]["Failover"],
        json!({"NearestN": 2, "Datacenters": ["cache-dc"], "Targets": null})
    );
    assert_eq!(q["DNS"], json!({"TTL": "7s"}));

    let static_id = create(
        &f,
        "dc1",
        json!({"Name": "plain", "Service": {"Service": "redis"}}),
    )
    .await;
    let explained = explain_ok(&f, &static_id).await;
    assert_eq!(explained["Query"]["Name"], json!("plain"));
    assert_eq!(explained["Query"]["Service"]["Service"], json!("redis"));
}

//------------ §5.4 step 1: filters -------------------------------------------

/// Reference §5.4 step 1 / §3: the health filter always drops instances
/// with a critical check and, with `OnlyPassing` false, keeps warning ones.
#[tokio::test]
async fn health_filter_drops_critical_keeps_warning() {
    let f = Fixture::start(&["dc1"]).await;
    f.register("dc1", "web-1", "10.0.1.1", "web", "passing")
        .await;
    f.register("dc1", "web-2", "10.0.1.2", "web", "warning")
        .await;
    f.register("dc1", "web-3", "10.0.1.3", "web", "critical")
        .await;
    create(
        &f,
        "dc1",
        json!({"Name": "web", "Service": {"Service": "web"}}),
    )
    .await;
    let body = execute_ok(&f, "dc1", "web", "").await;
    assert_eq!(addresses(&body), strings(&["10.0.1.1", "10.0.1.2"]));
}

/// Reference §5.2: `OnlyPassing` true drops warning instances too.
#[tokio::test]
async fn only_passing_drops_warning() {
    let f = Fixture::start(&["dc1"]).await;
    f.register("dc1", "web-1", "10.0.1.1", "web", "passing")
        .await;
    f.register("dc1", "web-2", "10.0.1.2", "web", "warning")
        .await;
    f.register("dc1", "web-3", "10.0.1.3", "web", "critical")
        .await;
    create(
        &f,
        "dc1",
        json!({"Name": "web", "Service": {"Service": "web", "OnlyPassing": true}}),
    )
    .await;
    let body = execute_ok(&f, "dc1", "web", "").await;
    assert_eq!(addresses(&body), strings(&["10.0.1.1"]));
}

/// Reference §5.2: checks listed in `IgnoreCheckIDs` (node-level or
/// service-level) are skipped by the health filter; others still count.
#[tokio::test]
async fn ignore_check_ids_skips_listed_checks() {
    let f = Fixture::start(&["dc1"]).await;
    f.register("dc1", "web-1", "10.0.1.1", "web", "passing")
        .await;
    // web-2: service check passing, node-level check "maint" critical.
    let mut body = instance("dc1", "web-2", "10.0.1.2", "web", "passing");
    body["Checks"] = json!([{"CheckID": "maint", "Name": "maint", "Status": "critical"}]);
    register_body(&f, "dc1", body).await;
    // web-3: its service check is critical.
    f.register("dc1", "web-3", "10.0.1.3", "web", "critical")
        .await;
    // web-4: node-level "maint" warning plus a critical "other".
    let mut body = instance("dc1", "web-4", "10.0.1.4", "web", "passing");
    body["Checks"] = json!([
        {"CheckID": "maint", "Name": "maint", "Status": "warning"},
        {"CheckID": "other", "Name": "other", "Status": "critical"},
    ]);
    register_body(&f, "dc1", body).await;

    create(
        &f,
        "dc1",
        json!({"Name": "plain", "Service": {"Service": "web"}}),
    )
    .await;
    create(
        &f,
        "dc1",
        json!({"Name": "ignoring", "Service": {"Service": "web",
               "IgnoreCheckIDs": ["maint", "service:web-3"]}}),
    )
    .await;
    create(
        &f,
        "dc1",
        json!({"Name": "ignoring-passing", "Service": {"Service": "web",
               "OnlyPassing": true, "IgnoreCheckIDs": ["maint", "other"]}}),
    )
    .await;

    let body = execute_ok(&f, "dc1", "plain", "").await;
    assert_eq!(addresses(&body), strings(&["10.0.1.1"]));
    let body = execute_ok(&f, "dc1", "ignoring", "").await;
    assert_eq!(
        addresses(&body),
        strings(&["10.0.1.1", "10.0.1.2", "10.0.1.3"])
    );
    let body = execute_ok(&f, "dc1", "ignoring-passing", "").await;
    assert_eq!(
        addresses(&body),
        strings(&["10.0.1.1", "10.0.1.2", "10.0.1.4"])
    );
}

/// Reference §5.2: `NodeMeta` keeps instances whose node has every listed
/// key with exactly that value.
#[tokio::test]
async fn node_meta_filter_requires_all_pairs() {
    let f = Fixture::start(&["dc1"]).await;
    for (node, addr, meta) in [
        ("web-1", "10.0.1.1", json!({"rack": "a", "env": "prod"})),
        ("web-2", "10.0.1.2", json!({"rack": "a", "env": "dev"})),
        ("web-3", "10.0.1.3", json!({"rack": "A", "env": "prod"})),
        ("web-4", "10.0.1.4", json!({"env": "prod"})),
    ] {
        let mut body = instance("dc1", node, addr, "web", "passing");
        body["NodeMeta"] = meta;
        register_body(&f, "dc1", body).await;
    }
    create(
        &f,
        "dc1",
        json!({"Name": "web", "Service": {"Service": "web",
               "NodeMeta": {"rack": "a", "env": "prod"}}}),
    )
    .await;
    let body = execute_ok(&f, "dc1", "web", "").await;
    assert_eq!(addresses(&body), strings(&["10.0.1.1"]));
}

/// Reference §5.2: `ServiceMeta` keeps instances whose service has every
/// listed key with exactly that value.
#[tokio::test]
async fn service_meta_filter_requires_all_pairs() {
    let f = Fixture::start(&["dc1"]).await;
    for (node, addr, meta) in [
        ("web-1", "10.0.1.1", json!({"version": "2", "tier": "gold"})),
        ("web-2", "10.0.1.2", json!({"version": "1", "tier": "gold"})),
        ("web-3", "10.0.1.3", json!({"version": "2"})),
    ] {
        let mut body = instance("dc1", node, addr, "web", "passing");
        body["Service"]["Meta"] = meta;
        register_body(&f, "dc1", body).await;
    }
    create(
        &f,
        "dc1",
        json!({"Name": "web", "Service": {"Service": "web",
               "ServiceMeta": {"version": "2", "tier": "gold"}}}),
    )
    .await;
    let body = execute_ok(&f, "dc1", "web", "").await;
    assert_eq!(addresses(&body), strings(&["10.0.1.1"]));
}

/// Reference §5.2: `Tags` requires every plain tag and none of the
/// `!`-prefixed ones, comparing case-insensitively.
#[tokio::test]
async fn tags_filter_is_case_insensitive_with_negation() {
    let f = Fixture::start(&["dc1"]).await;
    register_tagged(&f, "dc1", "web-1", "10.0.1.1", "web", &["Primary", "v1"]).await;
    register_tagged(
        &f,
        "dc1",
        "web-2",
        "10.0.1.2",
        "web",
        &["primary", "Canary"],
    )
    .await;
    register_tagged(&f, "dc1", "web-3", "10.0.1.3", "web", &["replica"]).await;
    register_tagged(&f, "dc1", "web-4", "10.0.1.4", "web", &[]).await;
    create(
        &f,
        "dc1",
        json!({"Name": "primary", "Service": {"Service": "web", "Tags": ["PRIMARY"]}}),
    )
    .await;
    create(
        &f,
        "dc1",
        json!({"Name": "stable", "Service": {"Service": "web",
               "Tags": ["primary", "!canary"]}}),
    )
    .await;
    create(
        &f,
        "dc1",
        json!({"Name": "not-canary", "Service": {"Service": "web", "Tags": ["!CANARY"]}}),
    )
    .await;
    let body = execute_ok(&f, "dc1", "primary", "").await;
    assert_eq!(addresses(&body), strings(&["10.0.1.1", "10.0.1.2"]));
    let body = execute_ok(&f, "dc1", "stable", "").await;
    assert_eq!(addresses(&body), strings(&["10.0.1.1"]));
    let body = execute_ok(&f, "dc1", "not-canary", "").await;
    assert_eq!(
        addresses(&body),
        strings(&["10.0.1.1", "10.0.1.3", "10.0.1.4"])
    );
}

//------------ §5.4 Failover --------------------------------------------------

/// Reference §5.4: the classic query — local instances while dc1 is
/// healthy (Failovers 0); after every dc1 check is failed through
/// `/v1/agent/check/fail`, dc2's instances with Datacenter "dc2" and
/// Failovers 1.
#[tokio::test]
async fn grafana_fails_over_to_dc2_when_dc1_checks_fail() {
    let f = Fixture::start(&["dc1", "dc2", "dc3"]).await;
    f.register("dc1", "grafana-1", "10.0.1.1", "grafana", "passing")
        .await;
    f.register("dc1", "grafana-2", "10.0.1.2", "grafana", "passing")
        .await;
    f.register("dc2", "grafana-3", "10.0.2.1", "grafana", "passing")
        .await;
    f.register("dc2", "grafana-4", "10.0.2.2", "grafana", "passing")
        .await;
    f.register("dc3", "grafana-5", "10.0.3.1", "grafana", "passing")
        .await;
    let answer = post(
        &f,
        "dc1",
        "/v1/query",
        json!({"Name": "grafana", "Service": {"Service": "grafana",
               "Failover": {"Datacenters": ["dc2"]}}}),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);

    let body = execute_ok(&f, "dc1", "grafana", "").await;
    assert_eq!(
        outcome(&body),
        ("dc1".to_owned(), 0, strings(&["10.0.1.1", "10.0.1.2"]))
    );

    for node in ["grafana-1", "grafana-2"] {
        let answer = f
            .call(
                "PUT",
                "dc1",
                &format!("/v1/agent/check/fail/service:{node}"),
                None,
            )
            .await;
        assert_eq!((answer.status, answer.body.as_str()), (200, ""), "{node}");
    }

    let body = execute_ok(&f, "dc1", "grafana", "").await;
    assert_eq!(
        outcome(&body),
        ("dc2".to_owned(), 1, strings(&["10.0.2.1", "10.0.2.2"]))
    );
    assert_eq!(body["Service"], json!("grafana"));
    for node in body["Nodes"].as_array().expect("array") {
        assert_eq!(node["Node"]["Datacenter"], json!("dc2"));
    }
}

/// Reference §5.4 step 4: failover also happens when the filters (here a
/// tag) leave nothing locally, though dc1 has healthy instances.
#[tokio::test]
async fn failover_when_filters_empty_local_result() {
    let f = Fixture::start(&["dc1", "dc2"]).await;
    register_tagged(&f, "dc1", "web-1", "10.0.1.1", "web", &["blue"]).await;
    register_tagged(&f, "dc2", "web-2", "10.0.2.1", "web", &["green"]).await;
    create(
        &f,
        "dc1",
        json!({"Name": "green", "Service": {"Service": "web", "Tags": ["green"],
               "Failover": {"Datacenters": ["dc2"]}}}),
    )
    .await;
    let body = execute_ok(&f, "dc1", "green", "").await;
    assert_eq!(
        outcome(&body),
        ("dc2".to_owned(), 1, strings(&["10.0.2.1"]))
    );
}

/// Reference §5.4 step 5: `NearestN` picks the nearest other DCs by WAN
/// RTT from the coordinates, nearest first, before `Datacenters`.
#[tokio::test]
async fn nearest_n_follows_coordinates() {
    // dc1 at 0; dc3 is 20 ms away, dc4 35 ms, dc2 50 ms.
    let f =
        start_with_coordinates(&[("dc1", 0.0), ("dc2", 0.05), ("dc3", 0.02), ("dc4", 0.035)]).await;
    assert_eq!(
        f.get("dc1", "/v1/catalog/datacenters").await.json(),
        json!(["dc1", "dc3", "dc4", "dc2"])
    );
    f.register("dc2", "web-2", "10.0.2.1", "web", "passing")
        .await;
    f.register("dc3", "web-3", "10.0.3.1", "web", "passing")
        .await;
    f.register("dc4", "web-4", "10.0.4.1", "web", "passing")
        .await;
    create(
        &f,
        "dc1",
        json!({"Name": "near1", "Service": {"Service": "web", "Failover": {"NearestN": 1}}}),
    )
    .await;
    let body = execute_ok(&f, "dc1", "near1", "").await;
    assert_eq!(
        outcome(&body),
        ("dc3".to_owned(), 1, strings(&["10.0.3.1"]))
    );

    // With dc3's instance critical, NearestN 2 goes on to dc4, not dc2.
    f.sim
        .set_check_status("dc3", Some("web-3"), "service:web-3", "critical");
    create(
        &f,
        "dc1",
        json!({"Name": "near2", "Service": {"Service": "web", "Failover": {"NearestN": 2}}}),
    )
    .await;
    let body = execute_ok(&f, "dc1", "near2", "").await;
    assert_eq!(
        outcome(&body),
        ("dc4".to_owned(), 2, strings(&["10.0.4.1"]))
    );

    // NearestN 1 (dc3, empty) then Datacenters [dc2].
    create(
        &f,
        "dc1",
        json!({"Name": "near-then-list", "Service": {"Service": "web",
               "Failover": {"NearestN": 1, "Datacenters": ["dc2"]}}}),
    )
    .await;
    let body = execute_ok(&f, "dc1", "near-then-list", "").await;
    assert_eq!(
        outcome(&body),
        ("dc2".to_owned(), 2, strings(&["10.0.2.1"]))
    );

    // NearestN larger than the number of other DCs tries each once.
    f.sim
        .set_check_status("dc4", Some("web-4"), "service:web-4", "critical");
    f.sim
        .set_check_status("dc2", Some("web-2"), "service:web-2", "critical");
    create(
        &f,
        "dc1",
        json!({"Name": "near9", "Service": {"Service": "web", "Failover": {"NearestN": 9}}}),
    )
    .await;
    let body = execute_ok(&f, "dc1", "near9", "").await;
    assert_eq!(body["Nodes"], json!([]));
    assert_eq!(body["Failovers"], json!(3));
}

/// Reference §5.4 step 5 and §4: DCs whose coordinates are unknown have
/// RTT +Inf, so `NearestN` reaches them only after every DC with a known
/// coordinate.
#[tokio::test]
async fn nearest_n_puts_unknown_coordinates_last() {
    let f = start_with_coordinates(&[("dc1", 0.0), ("dc2", 0.01), ("dc3", 0.09)]).await;
    f.sim.set_coordinate("dc2", None);
    f.register("dc2", "web-2", "10.0.2.1", "web", "passing")
        .await;
    f.register("dc3", "web-3", "10.0.3.1", "web", "passing")
        .await;
    create(
        &f,
        "dc1",
        json!({"Name": "web", "Service": {"Service": "web", "Failover": {"NearestN": 1}}}),
    )
    .await;
    let body = execute_ok(&f, "dc1", "web", "").await;
    assert_eq!(
        outcome(&body),
        ("dc3".to_owned(), 1, strings(&["10.0.3.1"]))
    );
}

/// Reference §5.4 (issue #3630) and §1: without a local leader a default
/// execute fails with 500 `No cluster leader` after the RPC hold timeout;
/// a `?stale` execute still answers, with `KnownLeader` false.
#[tokio::test]
async fn local_leader_loss_fails_execute_unless_stale() {
    let f = Fixture::start(&["dc1", "dc2"]).await;
    f.sim.set_rpc_hold_timeout(Duration::from_millis(200));
    f.register("dc1", "web-1", "10.0.1.1", "web", "passing")
        .await;
    create(
        &f,
        "dc1",
        json!({"Name": "web", "Service": {"Service": "web",
               "Failover": {"Datacenters": ["dc2"]}}}),
    )
    .await;
    f.sim.lose_leader("dc1");
    let started = Instant::now();
    let answer = execute(&f, "dc1", "web", "").await;
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (500, "No cluster leader")
    );
    let body = execute_ok(&f, "dc1", "web", "?stale").await;
    assert_eq!(
        outcome(&body),
        ("dc1".to_owned(), 0, strings(&["10.0.1.1"]))
    );
    assert_eq!(body["KnownLeader"], json!(false));
    assert_eq!(body["ConsistencyLevel"], json!("stale"));
}

/// Reference §5.4 step 5: a DC already chosen by `NearestN` is not tried
/// again when also listed in `Datacenters`.
#[tokio::test]
async fn datacenter_chosen_by_nearest_n_is_not_retried() {
    let f = Fixture::start(&["dc1", "dc2", "dc3"]).await;
    f.register("dc2", "web-2", "10.0.2.1", "web", "critical")
        .await;
    f.register("dc3", "web-3", "10.0.3.1", "web", "passing")
        .await;
    create(
        &f,
        "dc1",
        json!({"Name": "web", "Service": {"Service": "web",
               "Failover": {"NearestN": 1, "Datacenters": ["dc2", "dc3"]}}}),
    )
    .await;
    let body = execute_ok(&f, "dc1", "web", "").await;
    assert_eq!(
        outcome(&body),
        ("dc3".to_owned(), 2, strings(&["10.0.3.1"]))
    );
}

/// Reference §5.4 step 5: unknown DCs and the local DC in `Datacenters`
/// are skipped silently and not counted in `Failovers`.
#[tokio::test]
async fn unknown_and_local_datacenters_are_skipped_and_not_counted() {
    let f = Fixture::start(&["dc1", "dc2", "dc3"]).await;
    f.register("dc1", "web-1", "10.0.1.1", "web", "critical")
        .await;
    f.register("dc3", "web-3", "10.0.3.1", "web", "passing")
        .await;
    create(
        &f,
        "dc1",
        json!({"Name": "web", "Service": {"Service": "web",
               "Failover": {"Datacenters": ["dc9", "dc1", "DC3", "dc3"]}}}),
    )
    .await;
    let body = execute_ok(&f, "dc1", "web", "").await;
    assert_eq!(
        outcome(&body),
        ("dc3".to_owned(), 1, strings(&["10.0.3.1"]))
    );

    create(
        &f,
        "dc1",
        json!({"Name": "nowhere", "Service": {"Service": "web",
               "Failover": {"Datacenters": ["dc9", "dc1"]}}}),
    )
    .await;
    let body = execute_ok(&f, "dc1", "nowhere", "").await;
    assert_eq!(outcome(&body), ("dc1".to_owned(), 0, vec![]));
}

/// Reference §5.4 step 5 (Consul source): duplicates within `Datacenters`
/// are not removed, so an empty DC listed twice is attempted twice.
#[tokio::test]
async fn duplicate_datacenters_are_attempted_twice() {
    let f = Fixture::start(&["dc1", "dc2", "dc3"]).await;
    f.register("dc3", "web-3", "10.0.3.1", "web", "passing")
        .await;
    create(
        &f,
        "dc1",
        json!({"Name": "web", "Service": {"Service": "web",
               "Failover": {"Datacenters": ["dc2", "dc2", "dc3"]}}}),
    )
    .await;
    let body = execute_ok(&f, "dc1", "web", "").await;
    assert_eq!(
        outcome(&body),
        ("dc3".to_owned(), 3, strings(&["10.0.3.1"]))
    );
}

/// Reference §5.4 steps 6–7: a partitioned candidate is attempted (counted
/// in `Failovers`), its error skipped, and the next candidate answers.
#[tokio::test]
async fn partitioned_candidate_is_counted_and_skipped() {
    let f = Fixture::start(&["dc1", "dc2", "dc3"]).await;
    f.register("dc2", "web-2", "10.0.2.1", "web", "passing")
        .await;
    f.register("dc3", "web-3", "10.0.3.1", "web", "passing")
        .await;
    create(
        &f,
        "dc1",
        json!({"Name": "web", "Service": {"Service": "web",
               "Failover": {"Datacenters": ["dc2", "dc3"]}}}),
    )
    .await;
    f.sim.partition("dc2", true);
    let body = execute_ok(&f, "dc1", "web", "").await;
    assert_eq!(
        outcome(&body),
        ("dc3".to_owned(), 2, strings(&["10.0.3.1"]))
    );

    f.sim.partition("dc2", false);
    let body = execute_ok(&f, "dc1", "web", "").await;
    assert_eq!(
        outcome(&body),
        ("dc2".to_owned(), 1, strings(&["10.0.2.1"]))
    );
}

/// Reference §5.4 steps 6–7: a candidate without a leader fails its RPC
/// after the hold timeout; it is counted and the next candidate answers.
#[tokio::test]
async fn leaderless_candidate_is_counted_and_skipped() {
    let f = Fixture::start(&["dc1", "dc2", "dc3"]).await;
    f.sim.set_rpc_hold_timeout(Duration::from_millis(200));
    f.register("dc2", "web-2", "10.0.2.1", "web", "passing")
        .await;
    f.register("dc3", "web-3", "10.0.3.1", "web", "passing")
        .await;
    create(
        &f,
        "dc1",
        json!({"Name": "web", "Service": {"Service": "web",
               "Failover": {"Datacenters": ["dc2", "dc3"]}}}),
    )
    .await;
    f.sim.lose_leader("dc2");
    let started = Instant::now();
    let body = execute_ok(&f, "dc1", "web", "").await;
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "serial failover waits"
    );
    assert_eq!(
        outcome(&body),
        ("dc3".to_owned(), 2, strings(&["10.0.3.1"]))
    );
}

/// Reference §5.4 step 7: when every candidate errors or is empty, the
/// answer is 200 with `Nodes` `[]` and `Failovers` counting every attempt;
/// `Datacenter` is the last DC that answered (the local one if none did).
#[tokio::test]
async fn all_candidates_failing_returns_empty_200() {
    let f = Fixture::start(&["dc1", "dc2", "dc3"]).await;
    f.register("dc1", "web-1", "10.0.1.1", "web", "critical")
        .await;
    f.register("dc2", "web-2", "10.0.2.1", "web", "passing")
        .await;
    create(
        &f,
        "dc1",
        json!({"Name": "web", "Service": {"Service": "web",
               "Failover": {"Datacenters": ["dc3", "dc2"]}}}),
    )
    .await;
    f.sim.partition("dc2", true);
    let answer = execute(&f, "dc1", "web", "").await;
    assert_eq!(answer.status, 200);
    let body = answer.json();
    assert_eq!(body["Nodes"], json!([]));
    assert_eq!(outcome(&body), ("dc3".to_owned(), 2, vec![]));

    f.sim.partition("dc3", true);
    let body = execute_ok(&f, "dc1", "web", "").await;
    assert_eq!(outcome(&body), ("dc1".to_owned(), 2, vec![]));
}

/// Reference §5.4 step 6: the remote DC applies `limit` too.
#[tokio::test]
async fn failover_applies_limit_remotely() {
    let f = Fixture::start(&["dc1", "dc2"]).await;
    for i in 1..=3 {
        f.register(
            "dc2",
            &format!("web-{i}"),
            &format!("10.0.2.{i}"),
            "web",
            "passing",
        )
        .await;
    }
    create(
        &f,
        "dc1",
        json!({"Name": "web", "Service": {"Service": "web",
               "Failover": {"Datacenters": ["dc2"]}}}),
    )
    .await;
    let body = execute_ok(&f, "dc1", "web", "?limit=1").await;
    assert_eq!(body["Datacenter"], json!("dc2"));
    assert_eq!(body["Failovers"], json!(1));
    assert_eq!(body["Nodes"].as_array().map(Vec::len), Some(1));
}

/// Reference §5.4 step 5 and §1: `?dc=` runs the whole execute in that DC:
/// its own queries, its own instances, and failover relative to it (so it
/// is the "local" DC skipped in `Datacenters`).
#[tokio::test]
async fn dc_param_executes_in_other_datacenter() {
    let f = Fixture::start(&["dc1", "dc2", "dc3"]).await;
    f.register("dc1", "web-1", "10.0.1.1", "web", "passing")
        .await;
    f.register("dc2", "web-2", "10.0.2.1", "web", "passing")
        .await;
    let id = create(
        &f,
        "dc1",
        json!({"Name": "web", "Service": {"Service": "web"}}),
    )
    .await;
    let answer = post(
        &f,
        "dc1",
        "/v1/query?dc=dc2",
        json!({"Name": "web2", "Service": {"Service": "web",
               "Failover": {"Datacenters": ["dc2", "dc1"]}}}),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);

    // The query lives in dc2 only.
    let answer = execute(&f, "dc1", "web2", "").await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (404, "Query not found")
    );
    let answer = execute(&f, "dc1", &id, "?dc=dc2").await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (404, "Query not found")
    );

    let body = execute_ok(&f, "dc1", "web2", "?dc=dc2").await;
    assert_eq!(
        outcome(&body),
        ("dc2".to_owned(), 0, strings(&["10.0.2.1"]))
    );

    // dc2's instance fails: dc2 (local there) is skipped, dc1 answers.
    f.sim
        .set_check_status("dc2", Some("web-2"), "service:web-2", "critical");
    let body = execute_ok(&f, "dc3", "web2", "?dc=dc2").await;
    assert_eq!(
        outcome(&body),
        ("dc1".to_owned(), 1, strings(&["10.0.1.1"]))
    );
}

/// Reference §1: an execute with `?dc=` naming an unknown DC → 500
/// `No path to datacenter`.
#[tokio::test]
async fn execute_in_unknown_datacenter_is_500() {
    let f = Fixture::start(&["dc1"]).await;
    create(
        &f,
        "dc1",
        json!({"Name": "web", "Service": {"Service": "web"}}),
    )
    .await;
    let answer = execute(&f, "dc1", "web", "?dc=dc9").await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (500, "No path to datacenter")
    );
}

/// Reference §5.1: execute's `X-Consul-Index` stays 1 however many writes
/// the DC has seen (execute never blocks).
#[tokio::test]
async fn execute_index_is_always_one() {
    let f = Fixture::start(&["dc1"]).await;
    for i in 1..=5 {
        f.register(
            "dc1",
            &format!("web-{i}"),
            &format!("10.0.1.{i}"),
            "web",
            "passing",
        )
        .await;
    }
    create(
        &f,
        "dc1",
        json!({"Name": "web", "Service": {"Service": "web"}}),
    )
    .await;
    assert!(f.sim.raft_index("dc1") > 5);
    let started = Instant::now();
    let answer = execute(&f, "dc1", "web", "?index=1000&wait=5s").await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "execute never blocks"
    );
    assert_eq!(answer.status, 200);
    assert_eq!(answer.index(), 1);
    assert_eq!(answer.json()["Index"], json!(1));
}
