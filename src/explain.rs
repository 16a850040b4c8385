//! `consul-failover-dns explain NAME`: asks the running server's admin
//! endpoint (`/v1/explain`) and prints its answer for people.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

/// How long the admin endpoint gets to answer.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The largest explanation read.
const MAX_ANSWER: u64 = 4 << 20;

/// Fetches `/v1/explain` for `name` and `qtype` from the admin endpoint at
/// `admin`. Returns the JSON, or an error that names the address.
pub fn fetch(admin: SocketAddr, name: &str, qtype: &str) -> Result<Value, String> {
    let query: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("name", name)
        .append_pair("type", qtype)
        .finish();
    let unreachable = |e: std::io::Error| {
        format!("cannot ask the server's admin endpoint at {admin} (admin.listen): {e}")
    };
    let mut stream = TcpStream::connect_timeout(&admin, TIMEOUT).map_err(unreachable)?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .map_err(unreachable)?;
    stream
        .set_write_timeout(Some(TIMEOUT))
        .map_err(unreachable)?;
    write!(
        stream,
        "GET /v1/explain?{query} HTTP/1.1\r\nHost: {admin}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    )
    .map_err(unreachable)?;
    let mut raw = Vec::new();
    stream
        .take(MAX_ANSWER)
        .read_to_end(&mut raw)
        .map_err(unreachable)?;
    let text = String::from_utf8_lossy(&raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Err(format!("{admin} answered something that is not HTTP"));
    };
    let status = head.split_whitespace().nth(1).unwrap_or("");
    let value: Value = serde_json::from_str(body).map_err(|e| {
        format!("{admin} answered HTTP {status} without an explanation (is it consul-failover-dns's admin endpoint?): {e}")
    })?;
    if status != "200" {
        let message = value["error"].as_str().unwrap_or("no reason given");
        return Err(format!("{admin} refused: {message}"));
    }
    Ok(value)
}

/// The explanation as lines for a terminal.
pub fn render(value: &Value) -> String {
    let s = |key: &str| value[key].as_str().unwrap_or("").to_owned();
    let mut out = String::new();
    let rcode = value["rcode"].as_str().unwrap_or("no answer yet");
    let chosen = match value["chosen"].as_str() {
        Some(dc) => format!(" from {dc}"),
        None => String::new(),
    };
    out.push_str(&format!(
        "{} {}: {rcode}{chosen} ({})\n",
        s("name"),
        s("type"),
        s("reason")
    ));
    if !s("detail").is_empty() {
        out.push_str(&format!("  {}\n", s("detail")));
    }
    if let Some(definition) = value["definition"].as_str() {
        out.push_str(&format!("definition: {definition}"));
        if let Some(service) = value["service"].as_str() {
            out.push_str(&format!(", service {service:?}"));
        }
        out.push('\n');
    }
    if let Some(policy) = value["policy"].as_object() {
        out.push_str(&format!(
            "policy: min_healthy {}, only_passing {}, failback_after {}s, on_all_unhealthy {}\n",
            policy["min_healthy"],
            policy["only_passing"],
            policy["failback_after_seconds"],
            policy["on_all_unhealthy"].as_str().unwrap_or("")
        ));
    }
    if let Some(dcs) = value["datacenters"].as_array().filter(|d| !d.is_empty()) {
        out.push_str(&format!(
            "datacenters (local: {}), in failover order:\n",
            s("local_datacenter")
        ));
        for (n, dc) in dcs.iter().enumerate() {
            let name = dc["name"].as_str().unwrap_or("");
            let counts = match (dc["usable"].as_u64(), dc["total"].as_u64()) {
                (Some(usable), Some(total)) => format!("{usable} of {total} usable"),
                _ => String::new(),
            };
            let reach = if dc["reachable"].as_bool() == Some(false) {
                ", Consul unreachable"
            } else {
                ""
            };
            let mark = if value["chosen"].as_str() == Some(name) {
                "  <- answers"
            } else {
                ""
            };
            out.push_str(&format!(
                "  {}. {name:<12} {:<14} {counts}{reach}{mark}\n",
                n + 1,
                dc["state"].as_str().unwrap_or("")
            ));
        }
    }
    if let Some(error) = value["extended_error"].as_str() {
        out.push_str(&format!("extended DNS error: {error}\n"));
    }
    if let Some(records) = value["records"].as_array().filter(|r| !r.is_empty()) {
        out.push_str("records:\n");
        for record in records {
            out.push_str(&format!("  {}\n", record.as_str().unwrap_or("")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_failover_readably() {
        let value = serde_json::json!({
            "name": "grafana.query.consul.",
            "type": "A",
            "local_datacenter": "dc1",
            "rcode": "NOERROR",
            "chosen": "dc2",
            "reason": "failover",
            "detail": "dc1 has fewer than min_healthy 1 usable instance(s); dc2 has 2",
            "definition": "[[query]] \"grafana\" of the configuration",
            "service": "grafana",
            "policy": {"only_passing": false, "min_healthy": 1, "failback_after_seconds": 0.0, "on_all_unhealthy": "nxdomain"},
            "datacenters": [
                {"name": "dc1", "state": "fresh", "usable": 0, "total": 2, "reachable": true},
                {"name": "dc2", "state": "fresh", "usable": 2, "total": 2, "reachable": true}
            ],
            "records": ["grafana.query.consul. 0 IN A 10.0.2.1"],
            "stale": false,
            "extended_error": null
        });
        let text = render(&value);
        assert!(
            text.starts_with("grafana.query.consul. A: NOERROR from dc2 (failover)\n"),
            "{text}"
        );
        assert!(
            text.contains("  1. dc1          fresh          0 of 2 usable\n"),
            "{text}"
        );
        assert!(
            text.contains("  2. dc2          fresh          2 of 2 usable  <- answers\n"),
            "{text}"
        );
        assert!(
            text.contains("  grafana.query.consul. 0 IN A 10.0.2.1\n"),
            "{text}"
        );
    }

    #[test]
    fn an_address_nobody_listens_on_is_named() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let error = fetch(address, "grafana", "A").unwrap_err();
        assert!(error.contains(&address.to_string()), "{error}");
        assert!(error.contains("admin.listen"), "{error}");
    }
}
