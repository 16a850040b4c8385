//! `limits.http_max_conns_per_client` (default 200): past it an agent
//! answers a new connection from the same IP with go-connlimit's raw
//! `429 Too Many Requests` and closes it (`agent/agent.go` `listenHTTP`,
//! `HTTPConnStateFuncWithDefault429Handler`); over HTTPS after the TLS
//! handshake. A closed connection frees its place at once.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use consul_sim::model::RegisterRequest;
use consul_sim::{Sim, TOO_MANY_CONNS_BODY};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

const ANY: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

/// The bytes go-connlimit writes to a refused connection.
fn too_many_conns_response() -> String {
    format!(
        "HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{TOO_MANY_CONNS_BODY}",
        TOO_MANY_CONNS_BODY.len()
    )
}

fn register(sim: &Sim, node: &str) {
    let body = common::instance("dc1", node, "10.0.0.1", "x", "passing");
    let req: RegisterRequest = serde_json::from_value(body).unwrap();
    sim.register("dc1", req).unwrap();
}

/// Polls `done` every 10 ms until it holds; panics after 10 s.
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A TCP connection to `addr` from `source` (any port).
async fn connect_from(source: IpAddr, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    socket.connect(addr).await.unwrap()
}

/// A raw HTTP/1.1 connection with `GET path` sent.
async fn send_get(addr: SocketAddr, path: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

/// A TLS connection to `sim`'s dc1, trusting its CA and offering `alpn`.
async fn tls_connect(sim: &Sim, alpn: &[u8]) -> TlsStream<TcpStream> {
    let ca = CertificateDer::from_pem_slice(sim.ca_pem().unwrap().as_bytes()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = TcpStream::connect(sim.addr("dc1").await).await.unwrap();
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

/// Reads one response from a raw connection: its head and its body (by
/// `Content-Length`).
async fn read_response(stream: &mut (impl AsyncRead + Unpin)) -> (String, String) {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let mut chunk = [0; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(
            n > 0,
            "closed mid-head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_owned)
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let mut chunk = [0; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed mid-body");
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8(buf[head_end..head_end + length].to_vec()).unwrap();
    (head, body)
}

/// Everything a connection receives until closed.
async fn read_refusal(mut stream: impl AsyncRead + Unpin) -> String {
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.unwrap();
    String::from_utf8(out).unwrap()
}

/// With a limit of 5, five connections held by blocking queries are
/// served; the sixth gets Consul's 429 and is closed, before any request
/// is read; once one closes, a new connection is served; the held queries
/// then answer normally.
#[tokio::test]
async fn connection_past_the_limit_gets_consuls_429() {
    let sim = Sim::builder()
        .dc("dc1", ANY)
        .max_conns_per_client(5)
        .start()
        .await
        .unwrap();
    let addr = sim.addr("dc1").await;
    register(&sim, "n1");
    let mut first = send_get(addr, "/v1/health/service/x").await;
    let (head, _) = read_response(&mut first).await;
    let index: u64 = head
        .lines()
        .find_map(|l| l.strip_prefix("x-consul-index: "))
        .unwrap()
        .parse()
        .unwrap();
    drop(first);
    wait_until("the first connection to close", || {
        sim.open_connections("dc1") == 0
    })
    .await;

    let blocking = format!("/v1/health/service/x?index={index}&wait=20s");
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(send_get(addr, &blocking).await);
    }
    wait_until("5 held queries", || sim.requests("dc1").len() == 6).await;
    assert_eq!(sim.open_connections("dc1"), 5);

    // The sixth gets the 429 and is closed, whether or not it sends a
    // request: the answer is written at accept. (So an HTTP client that
    // reads it before writing its request, as hyper can, reports an
    // unexpected message rather than a 429; against Consul too.)
    let sent = send_get(addr, "/v1/catalog/datacenters").await;
    assert_eq!(read_refusal(sent).await, too_many_conns_response());
    let silent = TcpStream::connect(addr).await.unwrap();
    assert_eq!(read_refusal(silent).await, too_many_conns_response());
    assert_eq!(sim.refused_connections("dc1"), 2);
    assert_eq!(sim.requests("dc1").len(), 6, "refused ones are no requests");
    let state = sim.state().await;
    assert_eq!(
        state[0]["Connections"],
        serde_json::json!({"Open": 5, "Refused": 2, "MaxPerClient": 5})
    );

    drop(held.pop());
    wait_until("a held connection to close", || {
        sim.open_connections("dc1") == 4
    })
    .await;
    let mut fresh = send_get(addr, "/v1/catalog/datacenters").await;
    let (head, body) = read_response(&mut fresh).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(body, r#"["dc1"]"#);

    register(&sim, "n2");
    for mut stream in held {
        let (head, body) = read_response(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&body)
                .unwrap()
                .as_array()
                .map(Vec::len),
            Some(2)
        );
    }
    assert_eq!(sim.refused_connections("dc1"), 2);
}

/// The default is Consul's 200 per client IP, counted per IP: at 200 open
/// connections from 127.0.0.1 the next one is refused while 127.0.0.2 is
/// still served; closing one lets 127.0.0.1 in again.
#[tokio::test]
async fn default_limit_is_200_per_client_ip() {
    let sim = Sim::start(&["dc1"]).await.unwrap();
    let addr = sim.addr("dc1").await;
    let local = IpAddr::from([127, 0, 0, 1]);
    let mut open = Vec::new();
    for _ in 0..200 {
        open.push(connect_from(local, addr).await);
    }
    wait_until("200 open connections", || {
        sim.open_connections("dc1") == 200
    })
    .await;
    let refused = read_refusal(connect_from(local, addr).await).await;
    assert_eq!(refused, too_many_conns_response());
    assert_eq!(sim.refused_connections("dc1"), 1);

    let mut other = connect_from(IpAddr::from([127, 0, 0, 2]), addr).await;
    other
        .write_all(format!("GET /v1/agent/self HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (head, _) = read_response(&mut other).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let log = sim.requests("dc1");
    assert_eq!(log.len(), 1);
    assert!(log[0].remote_addr.starts_with("127.0.0.2:"), "{log:?}");

    // 200 from 127.0.0.1 and 1 from 127.0.0.2 open; close one of the 200.
    drop(open.pop());
    wait_until("a connection to close", || {
        sim.open_connections("dc1") == 200
    })
    .await;
    let mut again = send_get(addr, "/v1/agent/self").await;
    let (head, _) = read_response(&mut again).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(sim.refused_connections("dc1"), 1);
}

/// Over HTTPS the limit counts TLS connections (an HTTP/2 one carrying any
/// number of requests is one); a refused connection completes the
/// handshake and gets the same HTTP/1.1 bytes whatever ALPN chose, which
/// an HTTP/2 client cannot read at all.
#[tokio::test]
async fn https_connection_past_the_limit_gets_429_after_the_handshake() {
    let sim = Sim::builder()
        .dc("dc1", ANY)
        .tls(true)
        .max_conns_per_client(2)
        .start()
        .await
        .unwrap();
    let url = sim.url("dc1").await;
    let ca = reqwest::Certificate::from_pem(sim.ca_pem().unwrap().as_bytes()).unwrap();
    let client = || {
        reqwest::Client::builder()
            .add_root_certificate(ca.clone())
            .build()
            .unwrap()
    };
    register(&sim, "n1");
    let a = client();
    let b = client();
    // One request each first: a client that has not yet learnt the
    // connection is HTTP/2 opens one per concurrent request.
    let mut index = 0;
    for http in [&a, &b] {
        index = http
            .get(format!("{url}/v1/health/service/x"))
            .send()
            .await
            .unwrap()
            .headers()["x-consul-index"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
    }
    let blocking = format!("{url}/v1/health/service/x?index={index}&wait=20s");
    let mut holders = Vec::new();
    for http in [&a, &b] {
        for _ in 0..3 {
            let http = http.clone();
            let url = blocking.clone();
            holders.push(tokio::spawn(
                async move { http.get(url).send().await.unwrap() },
            ));
        }
    }
    wait_until("6 held queries", || sim.requests("dc1").len() == 8).await;
    assert_eq!(sim.open_connections("dc1"), 2);

    let mut http1 = tls_connect(&sim, b"http/1.1").await;
    http1
        .write_all(b"GET /v1/agent/self HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = read_response(&mut http1).await;
    assert!(
        head.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
        "{head}"
    );
    assert_eq!(body, TOO_MANY_CONNS_BODY);
    let h2 = tls_connect(&sim, b"h2").await;
    assert_eq!(h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(read_refusal(h2).await, too_many_conns_response());
    let h2 = client().get(format!("{url}/v1/agent/self")).send().await;
    assert!(h2.is_err(), "{h2:?}");
    assert_eq!(sim.refused_connections("dc1"), 3);
    assert_eq!(sim.requests("dc1").len(), 8);

    register(&sim, "n2");
    for holder in holders {
        let resp = holder.await.unwrap();
        assert_eq!(
            (resp.status().as_u16(), resp.version()),
            (200, reqwest::Version::HTTP_2)
        );
    }
    drop(a);
    wait_until("a's connection to close", || {
        sim.open_connections("dc1") == 1
    })
    .await;
    let resp = client()
        .get(format!("{url}/v1/agent/self"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (resp.status().as_u16(), resp.version()),
        (200, reqwest::Version::HTTP_2)
    );
}

/// The limit can change at run time, as on a config reload: connections
/// already open stay open and usable past a lowered limit, new ones are
/// refused; 0 lifts the limit.
#[tokio::test]
async fn lowered_limit_keeps_open_connections() {
    let sim = Sim::start(&["dc1"]).await.unwrap();
    let addr = sim.addr("dc1").await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(TcpStream::connect(addr).await.unwrap());
    }
    wait_until("3 open connections", || sim.open_connections("dc1") == 3).await;
    sim.set_max_conns_per_client(2);
    let refused = read_refusal(TcpStream::connect(addr).await.unwrap()).await;
    assert_eq!(refused, too_many_conns_response());
    for stream in &mut open {
        stream
            .write_all(format!("GET /v1/agent/self HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let (head, _) = read_response(stream).await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    }
    sim.set_max_conns_per_client(0);
    let mut more = Vec::new();
    for _ in 0..5 {
        more.push(send_get(addr, "/v1/agent/self").await);
    }
    for stream in &mut more {
        let (head, _) = read_response(stream).await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    }
    assert_eq!(sim.open_connections("dc1"), 8);
    assert_eq!(sim.refused_connections("dc1"), 1);
}
