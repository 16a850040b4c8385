//! The HTTP side: one listener per datacenter (HTTP/1.1, or HTTPS with
//! HTTP/2 by ALPN, each with Consul's per-client connection limit),
//! Consul's endpoints with its parameters, headers, status codes and error
//! texts (reference §1–§5), and the `/_sim/` control API for fault
//! injection.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::agent::Agent;
use crate::definition::decode_service_definition;
use crate::duration::parse_go_duration;
use crate::model::{
    CRITICAL, CheckServiceNode, Coordinate, DeregisterRequest, PASSING, PreparedQuery,
    RegisterRequest, ServiceNode, StringMap, WARNING,
};
use crate::query::{self, is_uuid};
use crate::sim::{
    CONSUL_VERSION, Datacenter, ERR_NO_LEADER, ExecuteOptions, Inner, RouteError, Sim, Topic,
    default_fault_body, lock, sort_by_distance, unix_ms,
};
use crate::store::Store;
use crate::tls::{ALPN_H2, HTTPS_HANDSHAKE_TIMEOUT};

/// `default_query_time`: the blocking wait when none (or ≤ 0) is given.
pub const DEFAULT_QUERY_TIME: Duration = Duration::from_secs(300);
/// `max_query_time`: longer waits are clamped to this.
pub const MAX_QUERY_TIME: Duration = Duration::from_secs(600);
/// `JitterFraction`: up to wait/16 is added to every blocking wait.
pub const JITTER_FRACTION: u32 = 16;
/// Largest request body accepted.
const MAX_BODY: usize = 16 << 20;

//------------ Serving --------------------------------------------------------

/// The body of the answer to a connection past `http_max_conns_per_client`
/// (go-connlimit's `tooManyConnsMsg`).
pub const TOO_MANY_CONNS_BODY: &str =
    "Your IP is issuing too many concurrent connections, please rate limit your calls\n";
/// How long writing that answer may take: the `10 * time.Millisecond`
/// `listenHTTP` passes to `HTTPConnStateFuncWithDefault429Handler`.
const TOO_MANY_CONNS_WRITE_DEADLINE: Duration = Duration::from_millis(10);
/// `SETTINGS_MAX_CONCURRENT_STREAMS` of the HTTP/2 server: x/net/http2's
/// `defaultMaxStreams`, which `http2.ConfigureServer(server, nil)` keeps.
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 250;

/// Accepts connections on `listener` for datacenter `dc` until `stop`
/// fires (or the simulator is dropped); then drops every open connection.
/// With `tls` every connection is TLS first, then HTTP/2 if the client
/// chose `h2` by ALPN, else HTTP/1.1; without, HTTP/1.1 only (Consul's
/// plain listener has no h2c). Each connection is counted against its
/// client IP's limit in `clients` from accept to close.
///
/// The future is boxed: `/_sim/` requests served by it can start
/// listeners, which spawn `serve`, and the box breaks that type cycle.
pub(crate) fn serve(
    listener: TcpListener,
    sim: Weak<Inner>,
    dc: String,
    tls: Option<TlsAcceptor>,
    clients: Arc<ClientConnections>,
    mut stop: watch::Receiver<bool>,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        break;
                    }
                }
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        // Counted at accept, as go-connlimit does on
                        // `http.StateNew`, before any TLS handshake.
                        let slot = clients.admit(peer.ip());
                        let tls = tls.clone();
                        let sim = sim.clone();
                        let dc = dc.clone();
                        connections.spawn(async move {
                            match slot {
                                Some(slot) => {
                                    serve_connection(stream, tls, sim, dc, peer).await;
                                    drop(slot);
                                }
                                None => refuse(stream, tls).await,
                            }
                        });
                    }
                    // Out of file descriptors and the like: wait, don't spin.
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    })
}

/// A byte stream a connection is served on: TCP, or TLS over TCP.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// The stream to speak HTTP on, and whether the client chose HTTP/2: the
/// TCP stream itself, or TLS over it once the handshake completed within
/// `https_handshake_timeout`; `None` if it failed or took longer (the
/// connection is then dropped).
async fn accept(stream: TcpStream, tls: Option<TlsAcceptor>) -> Option<(Box<dyn Stream>, bool)> {
    let Some(acceptor) = tls else {
        return Some((Box::new(stream), false));
    };
    let stream: TlsStream<TcpStream> =
        tokio::time::timeout(HTTPS_HANDSHAKE_TIMEOUT, acceptor.accept(stream))
            .await
            .ok()?
            .ok()?;
    let h2 = stream.get_ref().1.alpn_protocol() == Some(ALPN_H2);
    Some((Box::new(stream), h2))
}

/// Serves HTTP on one admitted connection until it closes.
async fn serve_connection(
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    sim: Weak<Inner>,
    dc: String,
    peer: SocketAddr,
) {
    let Some((stream, h2)) = accept(stream, tls).await else {
        return;
    };
    let service = service_fn(move |req| handle(sim.clone(), dc.clone(), peer, req));
    // HTTP/2 streams run as tasks of their own; they end when this
    // connection does (`_open` dropped), as HTTP/1.1 requests, which run
    // inside it, do.
    let (_open, closed) = watch::channel(());
    let builder = auto::Builder::new(StreamExecutor(closed));
    let builder = if h2 {
        let mut builder = builder.http2_only();
        builder
            .http2()
            .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS);
        builder
    } else {
        builder.http1_only()
    };
    let _ = builder
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// Spawns an HTTP/2 connection's stream tasks, each dropped when the
/// connection's `watch` sender is.
#[derive(Clone)]
struct StreamExecutor(watch::Receiver<()>);

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, stream: F) {
        let mut closed = self.0.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stream => {}
                // Never sent to: this fires when the sender is dropped.
                _ = closed.changed() => {}
            }
        });
    }
}

/// Answers a connection past the per-client limit as go-connlimit's
/// `HTTPConnStateFuncWithDefault429Handler` does: a raw HTTP/1.1 429 with
/// [`TOO_MANY_CONNS_BODY`] written within 10 ms, then close. Over HTTPS it
/// is written on the TLS connection (Go's `tls.Conn.Write` completes the
/// handshake first), as HTTP/1.1 bytes whatever ALPN chose.
///
/// Two liberties: the handshake gets `https_handshake_timeout`, where Go's
/// 10 ms deadline covers it too (a loaded test machine would otherwise
/// turn the 429 into a reset); and the answer is written from the
/// connection's own task, where Go writes it inside the accept loop.
async fn refuse(stream: TcpStream, tls: Option<TlsAcceptor>) {
    let Some((mut stream, _)) = accept(stream, tls).await else {
        return;
    };
    let answer = format!(
        "HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{TOO_MANY_CONNS_BODY}",
        TOO_MANY_CONNS_BODY.len()
    );
    let _ = tokio::time::timeout(TOO_MANY_CONNS_WRITE_DEADLINE, async {
        stream.write_all(answer.as_bytes()).await?;
        // TLS: close_notify, as Go's `tls.Conn.Close` sends.
        stream.shutdown().await
    })
    .await;
}

/// One listener's open connections per client IP, against
/// `limits.http_max_conns_per_client`: go-connlimit's `Limiter`, one per
/// agent.
pub(crate) struct ClientConnections {
    max: AtomicUsize,
    open: Mutex<HashMap<IpAddr, usize>>,
    refused: AtomicU64,
}

impl ClientConnections {
    /// A count allowing `max` connections per client IP (0: any number).
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max: AtomicUsize::new(max),
            open: Mutex::new(HashMap::new()),
            refused: AtomicU64::new(0),
        }
    }

    pub(crate) fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }

    /// Changes the limit; connections already open stay open.
    pub(crate) fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    /// Connections open, all clients together.
    pub(crate) fn open(&self) -> usize {
        lock(&self.open).values().sum()
    }

    /// Connections refused so far.
    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Counts a new connection from `ip` (`Limiter.Accept`): its slot,
    /// which frees the place when dropped, or `None` (counted as refused)
    /// if `ip` already has the maximum open.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<ConnectionSlot> {
        let max = self.max();
        let mut open = lock(&self.open);
        let count = open.entry(ip).or_insert(0);
        if max > 0 && *count >= max {
            drop(open);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *count += 1;
        Some(ConnectionSlot {
            clients: self.clone(),
            ip,
        })
    }
}

/// An admitted connection's place in its client's count.
struct ConnectionSlot {
    clients: Arc<ClientConnections>,
    ip: IpAddr,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = lock(&self.clients.open);
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// An answer's body: whole, or trickled ([`crate::sim::Faults::trickle`]).
type Body = http_body_util::Either<Full<Bytes>, Trickle>;

/// A body sent one byte per interval.
struct Trickle {
    rest: Bytes,
    every: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Trickle {
    fn new(body: Bytes, every: Duration) -> Self {
        Self {
            rest: body,
            every,
            sleep: Box::pin(tokio::time::sleep(every)),
        }
    }
}

impl hyper::body::Body for Trickle {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.rest.is_empty() {
            return std::task::Poll::Ready(None);
        }
        if this.sleep.as_mut().poll(cx).is_pending() {
            return std::task::Poll::Pending;
        }
        let next = Instant::now() + this.every;
        this.sleep.as_mut().reset(next);
        let byte = this.rest.split_to(1);
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(byte))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.rest.len() as u64)
    }
}

async fn handle(
    sim: Weak<Inner>,
    dc: String,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let whole = |reply: Reply| reply.into_response().map(http_body_util::Either::Left);
    let Some(sim) = Sim::upgrade(&sim) else {
        return Ok(whole(Reply::text(503, "simulator shutting down")));
    };
    let (parts, body) = req.into_parts();
    let body = match http_body_util::Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return Ok(whole(Reply::text(
                400,
                format!("Request decode failed: {e}"),
            )));
        }
    };
    let Some(listener) = sim.dc(&dc).cloned() else {
        return Ok(whole(Reply::text(500, "unknown listener")));
    };
    let req = Req {
        method: parts.method,
        version: parts.version,
        path: parts.uri.path().to_owned(),
        raw_query: parts.uri.query().unwrap_or("").to_owned(),
        params: Params::parse(parts.uri.query().unwrap_or("")),
        headers: parts.headers,
        body,
        peer,
        listener,
    };
    let reply = if req.path.starts_with("/_sim/") {
        sim_api(&sim, &req).await
    } else {
        req.listener.record(crate::sim::RecordedRequest {
            method: req.method.to_string(),
            path: req.path.clone(),
            query: req.raw_query.clone(),
            headers: req
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            version: format!("{:?}", req.version),
            remote_addr: req.peer.to_string(),
            received_unix_ms: unix_ms(),
        });
        match apply_faults(&req).await {
            Some(reply) => reply,
            None => consul_api(&sim, &req).await,
        }
    };
    let reply = if sim.translates_wan_addrs() {
        reply.header("x-consul-translate-addresses", "true")
    } else {
        reply
    };
    let trickle = if req.path.starts_with("/_sim/") {
        None
    } else {
        req.listener.faults().trickle
    };
    Ok(match trickle {
        None => whole(reply),
        Some(every) => {
            let body = reply.body.clone();
            reply
                .into_response()
                .map(|_| http_body_util::Either::Right(Trickle::new(body, every)))
        }
    })
}

/// Applies `translate_wan_addrs` to instances from datacenter `dc` read
/// through `req`'s listener.
fn translate(sim: &Sim, req: &Req, dc: &str, nodes: &mut [CheckServiceNode]) {
    if sim.translates_wan_addrs() && dc != req.listener.name {
        for n in nodes {
            crate::sim::translate_to_wan(&mut n.node, &mut n.service);
        }
    }
}

/// Holds, delays or fails a request as the listener's faults say.
async fn apply_faults(req: &Req) -> Option<Reply> {
    let dc = &req.listener;
    let mut changes = dc.fault_changes();
    while dc.faults().hang {
        if changes.changed().await.is_err() {
            break;
        }
    }
    if let Some(delay) = dc.faults().delay {
        tokio::time::sleep(delay).await;
    }
    dc.take_fail_rule(&req.path)
        .map(|rule| Reply::text(rule.status, rule.body))
}

//------------ Requests and replies -------------------------------------------

/// Query parameters in order, repeated keys kept.
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(query: &str) -> Self {
        Self(
            form_urlencoded::parse(query.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// First value, as Go's `Query().Get` (empty if absent).
    fn get(&self, key: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map_or("", |(_, v)| v.as_str())
    }

    fn has(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| k == key)
    }

    fn all(&self, key: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// `node-meta=key:value` pairs (`parseMetaPair`): no colon means an
    /// empty value; a repeated key keeps the last value.
    fn node_meta(&self) -> StringMap {
        self.all("node-meta")
            .into_iter()
            .map(|raw| match raw.split_once(':') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (raw.to_owned(), String::new()),
            })
            .collect()
    }
}

struct Req {
    method: Method,
    version: hyper::Version,
    path: String,
    raw_query: String,
    params: Params,
    headers: hyper::HeaderMap,
    body: Bytes,
    peer: SocketAddr,
    listener: Arc<Datacenter>,
}

impl Req {
    fn pretty(&self) -> bool {
        self.params.has("pretty")
    }

    /// The client IP for `near=_ip`: the first `X-Forwarded-For` entry, else
    /// the peer address.
    fn source_ip(&self) -> IpAddr {
        self.headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(self.peer.ip())
    }

    /// The datacenter asked for: `?dc=`, else the listener's.
    fn target_dc(&self) -> String {
        match self.params.get("dc") {
            "" => self.listener.name.clone(),
            dc => dc.to_owned(),
        }
    }

    fn decode<T: DeserializeOwned>(&self) -> Result<T, Reply> {
        serde_json::from_slice(&self.body)
            .map_err(|e| Reply::text(400, format!("Request decode failed: {e}")))
    }
}

struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Bytes,
    content_type: Option<&'static str>,
}

impl Reply {
    fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Bytes::from(body.into()),
            content_type: Some("text/plain; charset=utf-8"),
        }
    }

    fn empty() -> Self {
        Self {
            status: 200,
            headers: Vec::new(),
            body: Bytes::new(),
            content_type: None,
        }
    }

    /// JSON as Consul writes it: compact, or with `?pretty` indented by four
    /// spaces with a trailing newline.
    fn json(value: &impl Serialize, pretty: bool) -> Self {
        let body = if pretty {
            let mut out = Vec::new();
            let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
            let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
            value
                .serialize(&mut ser)
                .expect("simulator values always serialize");
            out.push(b'\n');
            out
        } else {
            serde_json::to_vec(value).expect("simulator values always serialize")
        };
        Self {
            status: 200,
            headers: Vec::new(),
            body: Bytes::from(body),
            content_type: Some("application/json"),
        }
    }

    fn route_error(e: RouteError) -> Self {
        Self::text(e.status, e.message)
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        let mut resp = Response::new(Full::new(self.body));
        *resp.status_mut() = StatusCode::from_u16(self.status).unwrap_or(StatusCode::OK);
        let headers = resp.headers_mut();
        if let Some(ct) = self.content_type {
            headers.insert("content-type", HeaderValue::from_static(ct));
        }
        for (name, value) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.append(HeaderName::from_static(name), v);
            }
        }
        resp
    }
}

fn method_not_allowed(req: &Req, allowed: &[Method]) -> Reply {
    let allow = std::iter::once("OPTIONS")
        .chain(allowed.iter().map(Method::as_str))
        .collect::<Vec<_>>()
        .join(",");
    if req.method == Method::OPTIONS {
        return Reply::empty().header("allow", allow);
    }
    Reply::text(405, format!("method {} not allowed", req.method)).header("allow", allow)
}

fn not_found() -> Reply {
    Reply::text(404, "404 page not found\n")
}

//------------ Read options and blocking ---------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Consistency {
    Leader,
    Stale,
    Consistent,
}

impl Consistency {
    fn as_str(self) -> &'static str {
        match self {
            Self::Leader => "leader",
            Self::Stale => "stale",
            Self::Consistent => "consistent",
        }
    }
}

/// What the common read parameters say (`parseConsistency`, `parseWait`).
struct ReadOptions {
    consistency: Consistency,
    cached: bool,
    min_index: u64,
    wait: Option<Duration>,
}

fn parse_read_options(req: &Req) -> Result<ReadOptions, Reply> {
    let p = &req.params;
    let mut stale = p.has("stale");
    let consistent = p.has("consistent");
    let cached = p.has("cached");
    let max_stale = p.get("max_stale");
    if !max_stale.is_empty() {
        let dur = parse_go_duration(max_stale)
            .map_err(|_| Reply::text(400, format!("Invalid max_stale value {max_stale:?}")))?;
        if dur.0 > 0 {
            stale = true;
        }
    }
    if stale && consistent {
        return Err(Reply::text(
            400,
            "Cannot specify ?stale with ?consistent, conflicting semantics.",
        ));
    }
    if cached && consistent {
        return Err(Reply::text(
            400,
            "Cannot specify ?cached with ?consistent, conflicting semantics.",
        ));
    }
    let wait = match p.get("wait") {
        "" => None,
        w => Some(
            parse_go_duration(w)
                .map_err(|_| Reply::text(400, "Invalid wait time"))?
                .positive()
                .unwrap_or(Duration::ZERO),
        ),
    };
    let min_index = match p.get("index") {
        "" => 0,
        i => i
            .parse::<u64>()
            .map_err(|_| Reply::text(400, "Invalid index"))?,
    };
    let consistency = if stale {
        Consistency::Stale
    } else if consistent {
        Consistency::Consistent
    } else {
        Consistency::Leader
    };
    Ok(ReadOptions {
        consistency,
        cached,
        min_index,
        wait,
    })
}

/// How long a blocking query may hold (`RPCQueryTimeout`): the wait, 300 s
/// if unset or ≤ 0, at most 600 s, plus a random jitter below wait/16.
pub fn blocking_timeout(wait: Option<Duration>) -> Duration {
    let base = match wait {
        Some(w) if w > MAX_QUERY_TIME => MAX_QUERY_TIME,
        Some(w) if !w.is_zero() => w,
        _ => DEFAULT_QUERY_TIME,
    };
    let max_jitter = (base / JITTER_FRACTION).as_nanos() as u64;
    let jitter = if max_jitter == 0 {
        0
    } else {
        fastrand::u64(0..max_jitter)
    };
    base + Duration::from_nanos(jitter)
}

/// A read routed to its datacenter, with its metadata headers.
struct Read {
    dc: Arc<Datacenter>,
    opts: ReadOptions,
}

impl Read {
    /// Parses the read parameters, routes to the target DC and checks the
    /// leader (waiting up to the hold timeout, as Consul's forwarding does).
    async fn start(sim: &Sim, req: &Req) -> Result<Self, Reply> {
        let opts = parse_read_options(req)?;
        let dc = sim
            .route(&req.listener.name, &req.target_dc())
            .map_err(Reply::route_error)?;
        if opts.consistency != Consistency::Stale && !sim.await_leader(&dc).await {
            return Err(Self::meta_headers(&dc, Reply::text(500, ERR_NO_LEADER)));
        }
        Ok(Self { dc, opts })
    }

    fn meta_headers(dc: &Datacenter, reply: Reply) -> Reply {
        let leaderless = dc.leaderless_for();
        reply
            .header("x-consul-knownleader", leaderless.is_none().to_string())
            .header(
                "x-consul-lastcontact",
                leaderless.map_or(0, |d| d.as_millis()).to_string(),
            )
    }

    /// Runs a blocking query: at once if `index` is 0 or the result's
    /// index (`index_of`) is past it, else when a relevant write (its
    /// topic) moves it past, the store is restored, or the wait (plus
    /// jitter) runs out. The result (`value_of`) is read under the same
    /// lock as its index, and only when it is returned: a wake-up that
    /// leaves the index where it was costs an index lookup, not a read.
    async fn block<T>(
        &self,
        mut index_of: impl FnMut(&Store) -> (u64, Topic),
        mut value_of: impl FnMut(&Store) -> T,
    ) -> (u64, T) {
        let deadline =
            (self.opts.min_index > 0).then(|| Instant::now() + blocking_timeout(self.opts.wait));
        let mut abandoned = self.dc.abandoned();
        let mut abandon = false;
        loop {
            let ((index, value), mut changed) = self.dc.read(|s| {
                let (index, topic) = index_of(s);
                let index = index.max(1);
                let done = deadline.is_none_or(|deadline| {
                    abandon || index > self.opts.min_index || Instant::now() >= deadline
                });
                ((index, done.then(|| value_of(s))), topic)
            });
            if let Some(value) = value {
                return (index, value);
            }
            let Some(deadline) = deadline else {
                unreachable!("a read without an index is answered at once");
            };
            tokio::select! {
                _ = changed.changed() => {}
                _ = abandoned.changed() => abandon = true,
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// A JSON reply with Consul's query metadata headers.
    fn reply(&self, req: &Req, index: u64, value: &impl Serialize) -> Reply {
        let mut reply = Self::meta_headers(&self.dc, Reply::json(value, req.pretty()))
            .header("x-consul-index", index.max(1).to_string())
            .header(
                "x-consul-effective-consistency",
                self.opts.consistency.as_str(),
            )
            .header("x-consul-query-backend", "blocking-query")
            .header("x-consul-default-acl-policy", "allow");
        if self.opts.cached {
            let key = format!("{}?{}", req.path, req.raw_query);
            if req.listener.cache_seen(key) {
                reply = reply.header("x-cache", "HIT").header("age", "0");
            } else {
                reply = reply.header("x-cache", "MISS");
            }
        }
        reply
    }
}

//------------ Consul endpoints -------------------------------------------------

async fn consul_api(sim: &Sim, req: &Req) -> Reply {
    let path = req.path.as_str();
    let get = [Method::GET];
    let put = [Method::PUT];
    let allowed: &[Method] = match path {
        "/v1/catalog/register"
        | "/v1/catalog/deregister"
        | "/v1/coordinate/update"
        | "/v1/agent/service/register" => &put,
        "/v1/query" => &[Method::GET, Method::POST],
        p if p.starts_with("/v1/agent/check/") => &put,
        p if p.starts_with("/v1/agent/service/deregister/")
            || p.starts_with("/v1/agent/service/maintenance/") =>
        {
            &put
        }
        p if p.starts_with("/v1/query/")
            && !p.ends_with("/execute")
            && !p.ends_with("/explain") =>
        {
            &[Method::GET, Method::PUT, Method::DELETE]
        }
        _ => &get,
    };
    if !allowed.contains(&req.method) {
        if known_path(path) {
            return method_not_allowed(req, allowed);
        }
        return not_found();
    }
    let result = match path {
        "/v1/catalog/register" => register(sim, req).await,
        "/v1/catalog/deregister" => deregister(sim, req).await,
        "/v1/catalog/datacenters" => Ok(Reply::json(
            &sim.datacenters_by_distance(&req.listener.name),
            req.pretty(),
        )),
        "/v1/catalog/services" => catalog_services(sim, req).await,
        "/v1/catalog/nodes" => catalog_nodes(sim, req).await,
        "/v1/coordinate/datacenters" => Ok(coordinate_datacenters(sim, req)),
        "/v1/coordinate/nodes" => coordinate_nodes(sim, req).await,
        "/v1/coordinate/update" => coordinate_update(sim, req).await,
        "/v1/agent/self" => Ok(agent_self(sim, req)),
        "/v1/agent/service/register" => agent_service_register(sim, req).await,
        "/v1/agent/services" => agent_services(req),
        "/v1/status/leader" => status(sim, req, true),
        "/v1/status/peers" => status(sim, req, false),
        "/v1/query" if req.method == Method::POST => query_create(sim, req).await,
        "/v1/query" => query_list(sim, req).await,
        p => {
            if let Some(name) = p.strip_prefix("/v1/health/service/") {
                health_service(sim, req, name).await
            } else if let Some(name) = p.strip_prefix("/v1/catalog/service/") {
                catalog_service(sim, req, name).await
            } else if let Some(rest) = p.strip_prefix("/v1/agent/check/") {
                agent_check(req, rest)
            } else if let Some(id) = p.strip_prefix("/v1/agent/service/deregister/") {
                agent_service_deregister(sim, req, &percent_decode(id)).await
            } else if p.starts_with("/v1/agent/service/maintenance/") {
                // Service maintenance mode is not simulated.
                Ok(not_found())
            } else if let Some(id) = p.strip_prefix("/v1/agent/service/") {
                agent_service(req, &percent_decode(id)).await
            } else if let Some(rest) = p.strip_prefix("/v1/query/") {
                query_item(sim, req, rest).await
            } else {
                Ok(not_found())
            }
        }
    };
    result.unwrap_or_else(|reply| reply)
}

fn known_path(path: &str) -> bool {
    const EXACT: &[&str] = &[
        "/v1/catalog/register",
        "/v1/catalog/deregister",
        "/v1/catalog/datacenters",
        "/v1/catalog/services",
        "/v1/catalog/nodes",
        "/v1/coordinate/datacenters",
        "/v1/coordinate/nodes",
        "/v1/coordinate/update",
        "/v1/agent/self",
        "/v1/agent/service/register",
        "/v1/agent/services",
        "/v1/status/leader",
        "/v1/status/peers",
        "/v1/query",
    ];
    const PREFIX: &[&str] = &[
        "/v1/health/service/",
        "/v1/catalog/service/",
        "/v1/agent/check/",
        "/v1/agent/service/",
        "/v1/query/",
    ];
    EXACT.contains(&path) || PREFIX.iter().any(|p| path.starts_with(p))
}

/// Routes a write to its datacenter and waits for its leader.
async fn write_target(sim: &Sim, req: &Req, dc: Option<&str>) -> Result<Arc<Datacenter>, Reply> {
    let target = dc
        .filter(|d| !d.is_empty())
        .map_or_else(|| req.target_dc(), str::to_owned);
    let dc = sim
        .route(&req.listener.name, &target)
        .map_err(Reply::route_error)?;
    if !sim.await_leader(&dc).await {
        return Err(Reply::text(500, ERR_NO_LEADER));
    }
    Ok(dc)
}

async fn register(sim: &Sim, req: &Req) -> Result<Reply, Reply> {
    let body: RegisterRequest = req.decode()?;
    let dc = write_target(sim, req, body.datacenter.as_deref()).await?;
    dc.write(|s| s.register(&body))
        .map_err(|e| Reply::text(500, e))?;
    Ok(Reply::json(&true, req.pretty()))
}

async fn deregister(sim: &Sim, req: &Req) -> Result<Reply, Reply> {
    let body: DeregisterRequest = req.decode()?;
    let dc = write_target(sim, req, body.datacenter.as_deref()).await?;
    dc.write(|s| s.deregister(&body))
        .map_err(|e| Reply::text(500, e))?;
    Ok(Reply::json(&true, req.pretty()))
}

/// Go's `strconv.ParseBool`.
fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

fn reject_filter(req: &Req) -> Result<(), Reply> {
    if req.params.has("filter") {
        return Err(Reply::text(
            400,
            "Failed to create boolean expression evaluator: consul-sim does not implement ?filter",
        ));
    }
    Ok(())
}

/// Whether `tags` has every one of `want`, compared case-insensitively
/// (`serviceTagFilter`).
fn has_all_tags(tags: &[String], want: &[&str]) -> bool {
    want.iter()
        .all(|w| tags.iter().any(|t| t.eq_ignore_ascii_case(w)))
}

/// Removes the elements failing `keep` the way Go's `Filter` helpers do: by
/// swapping the last element into the hole, which changes the order.
fn swap_retain<T>(items: &mut Vec<T>, mut keep: impl FnMut(&T) -> bool) {
    let mut i = 0;
    while i < items.len() {
        if keep(&items[i]) {
            i += 1;
        } else {
            items.swap_remove(i);
        }
    }
}

/// The node a `?near=` sort starts from (`_agent` is the server node).
fn near_source(req: &Req, dc: &Datacenter) -> Option<String> {
    match req.params.get("near") {
        "" => None,
        "_agent" => Some(dc.server_node.clone()),
        node => Some(node.to_owned()),
    }
}

/// The read topic of one service: its own changes if it exists, else any
/// change (Consul watches the catalog's max index then).
fn service_topic(store: &Store, name: &str) -> Topic {
    if store.has_service(name) {
        Topic::Service(name.to_lowercase())
    } else {
        Topic::Any
    }
}

async fn health_service(sim: &Sim, req: &Req, name: &str) -> Result<Reply, Reply> {
    let passing = if req.params.has("passing") {
        match req.params.get("passing") {
            "" => true,
            v => parse_go_bool(v).ok_or_else(|| Reply::text(400, "Invalid value for ?passing"))?,
        }
    } else {
        false
    };
    let (read, index, nodes) = service_instances(sim, req, name, passing).await?;
    Ok(read.reply(req, index, &nodes))
}

async fn catalog_service(sim: &Sim, req: &Req, name: &str) -> Result<Reply, Reply> {
    let (read, index, nodes) = service_instances(sim, req, name, false).await?;
    let out: Vec<ServiceNode> = nodes
        .iter()
        .map(|n| ServiceNode::new(&n.node, &n.service))
        .collect();
    Ok(read.reply(req, index, &out))
}

/// The instance read shared by `/v1/health/service` and
/// `/v1/catalog/service`, with Consul's filter order: tags (in the state
/// read), node-meta, `passing` if asked, then the `near` sort and WAN
/// translation.
async fn service_instances(
    sim: &Sim,
    req: &Req,
    name: &str,
    passing: bool,
) -> Result<(Read, u64, Vec<CheckServiceNode>), Reply> {
    if name.is_empty() {
        return Err(Reply::text(400, "Missing service name"));
    }
    reject_filter(req)?;
    let read = Read::start(sim, req).await?;
    let tags = req.params.all("tag");
    let node_meta = req.params.node_meta();
    let (index, mut nodes) = read
        .block(
            |s| (s.service_read_index(name), service_topic(s, name)),
            |s| {
                let mut nodes = s.check_service_nodes(name);
                nodes.retain(|n| has_all_tags(&n.service.tags, &tags));
                nodes
            },
        )
        .await;
    if !node_meta.is_empty() {
        swap_retain(&mut nodes, |n| {
            query::meta_satisfied(n.node.meta.as_ref(), &node_meta)
        });
    }
    if passing {
        swap_retain(&mut nodes, |n: &CheckServiceNode| {
            n.checks.iter().all(|c| c.status == PASSING)
        });
    }
    if let Some(source) = near_source(req, &read.dc) {
        read.dc
            .peek(|s| sort_by_distance(s, &source, &mut nodes, |n| &n.node.node));
    }
    translate(sim, req, &read.dc.name, &mut nodes);
    Ok((read, index, nodes))
}

async fn catalog_services(sim: &Sim, req: &Req) -> Result<Reply, Reply> {
    reject_filter(req)?;
    let read = Read::start(sim, req).await?;
    let node_meta = req.params.node_meta();
    let (index, services) = read
        .block(
            |s| (s.services_read_index(!node_meta.is_empty()), Topic::Any),
            |s| {
                let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
                for (node, svc) in s.services() {
                    if !node_meta.is_empty()
                        && !query::meta_satisfied(node.meta.as_ref(), &node_meta)
                    {
                        continue;
                    }
                    out.entry(svc.service.clone())
                        .or_default()
                        .extend(svc.tags.iter().cloned());
                }
                out
            },
        )
        .await;
    Ok(read.reply(req, index, &services))
}

async fn catalog_nodes(sim: &Sim, req: &Req) -> Result<Reply, Reply> {
    reject_filter(req)?;
    let read = Read::start(sim, req).await?;
    let node_meta = req.params.node_meta();
    let (index, mut nodes) = read
        .block(
            |s| (s.nodes_read_index(), Topic::Any),
            |s| {
                s.nodes()
                    .filter(|n| query::meta_satisfied(n.meta.as_ref(), &node_meta))
                    .cloned()
                    .collect::<Vec<_>>()
            },
        )
        .await;
    if let Some(source) = near_source(req, &read.dc) {
        read.dc
            .peek(|s| sort_by_distance(s, &source, &mut nodes, |n| &n.node));
    }
    Ok(read.reply(req, index, &nodes))
}

fn coordinate_datacenters(sim: &Sim, req: &Req) -> Reply {
    let out: Vec<Value> = sim
        .datacenters()
        .iter()
        .filter_map(|name| {
            let dc = sim.dc(name)?;
            let coord = dc.coordinate()?;
            Some(json!({
                "Datacenter": name,
                "AreaID": "wan",
                "Coordinates": [{"Node": dc.server_node, "Segment": "", "Coord": coord}],
            }))
        })
        .collect();
    Reply::json(&out, req.pretty())
}

async fn coordinate_nodes(sim: &Sim, req: &Req) -> Result<Reply, Reply> {
    let read = Read::start(sim, req).await?;
    let (index, coords) = read
        .block(
            |s| (s.coordinates_read_index(), Topic::Any),
            |s| {
                s.coordinates()
                    .map(|(n, c)| {
                        json!({"Node": n.node, "Segment": "", "Coord": c, "Partition": ""})
                    })
                    .collect::<Vec<Value>>()
            },
        )
        .await;
    Ok(read.reply(req, index, &coords))
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CoordinateUpdate {
    node: String,
    #[serde(default)]
    #[allow(dead_code)]
    segment: String,
    coord: Coordinate,
}

async fn coordinate_update(sim: &Sim, req: &Req) -> Result<Reply, Reply> {
    let body: CoordinateUpdate = req.decode()?;
    let dc = write_target(sim, req, None).await?;
    dc.write(|s| s.set_coordinate(&body.node, body.coord))
        .map_err(|e| Reply::text(500, e))?;
    Ok(Reply::json(&true, req.pretty()))
}

fn agent_self(sim: &Sim, req: &Req) -> Reply {
    let dc = &req.listener;
    let ip = dc.server_addr.to_string();
    let coord = dc.coordinate();
    let leader = dc.leaderless_for().is_none();
    let body = json!({
        "Config": {
            "Datacenter": dc.name,
            "PrimaryDatacenter": sim.datacenters().first().cloned().unwrap_or_default(),
            "NodeName": dc.server_node,
            "NodeID": dc.node_id,
            "Revision": "consul-sim",
            "Server": true,
            "Version": CONSUL_VERSION,
            "BuildDate": "2024-10-14T00:00:00Z",
            "BindAddr": ip,
        },
        "DebugConfig": {"Datacenter": dc.name, "NodeName": dc.server_node},
        "Coord": coord,
        "Member": {
            "Name": dc.server_node,
            "Addr": ip,
            "Port": 8301,
            "Tags": {"role": "consul", "dc": dc.name, "segment": "", "id": dc.node_id,
                     "port": "8300", "build": format!("{CONSUL_VERSION}:consul-sim")},
            "Status": 1,
            "ProtocolMin": 1, "ProtocolMax": 5, "ProtocolCur": 2,
            "DelegateMin": 2, "DelegateMax": 5, "DelegateCur": 4,
        },
        "Stats": {"consul": {"server": "true", "leader": leader.to_string(),
                             "known_datacenters": sim.datacenters().len().to_string(),
                             "acl": "disabled"}},
        "Meta": {"consul-network-segment": "", "consul-version": CONSUL_VERSION},
    });
    Reply::json(&body, req.pretty())
}

fn status(sim: &Sim, req: &Req, leader: bool) -> Result<Reply, Reply> {
    let dc = sim
        .route(&req.listener.name, &req.target_dc())
        .map_err(Reply::route_error)?;
    let server = format!("{}:8300", dc.server_addr);
    Ok(if leader {
        let addr = if dc.leaderless_for().is_some() {
            String::new()
        } else {
            server
        };
        Reply::json(&addr, req.pretty())
    } else {
        Reply::json(&[server], req.pretty())
    })
}

fn agent_check(req: &Req, rest: &str) -> Result<Reply, Reply> {
    let (action, check_id) = rest.split_once('/').ok_or_else(not_found)?;
    if check_id.is_empty() {
        return Err(Reply::text(400, "Missing check ID"));
    }
    let (status, output) = match action {
        "pass" => (PASSING.to_owned(), req.params.get("note").to_owned()),
        "warn" => (WARNING.to_owned(), req.params.get("note").to_owned()),
        "fail" => (CRITICAL.to_owned(), req.params.get("note").to_owned()),
        "update" => {
            #[derive(serde::Deserialize, Default)]
            #[serde(rename_all = "PascalCase", default)]
            struct Update {
                status: String,
                output: String,
            }
            let body: Update = req.decode()?;
            if ![PASSING, WARNING, CRITICAL].contains(&body.status.as_str()) {
                return Err(Reply::text(
                    400,
                    format!("Invalid check status: '{}'", body.status),
                ));
            }
            (body.status, body.output)
        }
        _ => return Err(not_found()),
    };
    // Simulator extension: `?node=` picks one node when several carry the
    // same check ID; without it every such check is updated. A check of
    // this listener's own agent goes to the agent, as in Consul.
    let node = Some(req.params.get("node")).filter(|n| !n.is_empty());
    if let Some(result) = Agent::update_ttl(&req.listener, node, check_id, &status, &output) {
        return result
            .map(|()| Reply::empty())
            .map_err(|(status, text)| Reply::text(status, text));
    }
    let matched = req
        .listener
        .agent_check_update(node, check_id, &status, Some(&output));
    if matched == 0 {
        return Err(Reply::text(
            404,
            format!(
                "Unknown check ID {check_id:?}. Ensure that the check ID is passed, not the check name."
            ),
        ));
    }
    Ok(Reply::empty())
}

//------------ Agent services ---------------------------------------------------

/// Decodes `%XX` escapes, as Go's server does before routing (`URL.Path`);
/// a malformed escape is kept as written.
fn percent_decode(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).and_then(|b| hex(*b)),
                bytes.get(i + 2).and_then(|b| hex(*b)),
            )
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `PUT /v1/agent/service/register` (`AgentRegisterService`): 200 with an
/// empty body once the agent has the service and has synced it to its
/// datacenter's catalog. Without a leader the sync waits up to the RPC
/// hold timeout, then the answer is still 200 (Consul only logs the failed
/// sync) and the catalog gets the service when a leader is back.
async fn agent_service_register(sim: &Sim, req: &Req) -> Result<Reply, Reply> {
    let def = decode_service_definition(&req.body)
        .map_err(|e| Reply::text(400, format!("Request decode failed: {e}")))?;
    let replace = req.params.has("replace-existing-checks")
        && matches!(req.params.get("replace-existing-checks"), "" | "true");
    Agent::register(&req.listener, &def, replace)
        .map_err(|(status, text)| Reply::text(status, text))?;
    if req.listener.leaderless_for().is_some() {
        sim.await_leader(&req.listener).await;
    }
    Ok(Reply::empty())
}

/// `PUT /v1/agent/service/deregister/<id>` (`AgentDeregisterService`).
async fn agent_service_deregister(sim: &Sim, req: &Req, id: &str) -> Result<Reply, Reply> {
    req.listener
        .agent
        .deregister(&req.listener, id)
        .map_err(|(status, text)| Reply::text(status, text))?;
    if req.listener.leaderless_for().is_some() {
        sim.await_leader(&req.listener).await;
    }
    Ok(Reply::empty())
}

/// `GET /v1/agent/services`: the agent's services by ID.
fn agent_services(req: &Req) -> Result<Reply, Reply> {
    reject_filter(req)?;
    let services = req.listener.agent.services(&req.listener.name);
    Ok(Reply::json(&services, req.pretty()))
}

/// `GET /v1/agent/service/<id>` (`AgentService`): the service with its
/// `ContentHash` (also in `X-Consul-ContentHash`), or 404. With `?hash=`
/// equal to the current hash the read blocks (`LocalBlockingQuery`) until
/// the service changes or the wait (300 s if unset or 0, at most 600 s,
/// plus up to wait/16 jitter) is over.
async fn agent_service(req: &Req, id: &str) -> Result<Reply, Reply> {
    // `parseWait`.
    let wait = match req.params.get("wait") {
        "" => None,
        w => Some(parse_go_duration(w).map_err(|_| Reply::text(400, "Invalid wait time"))?),
    };
    let index = req.params.get("index");
    if !index.is_empty() && index.parse::<u64>().is_err() {
        return Err(Reply::text(400, "Invalid index"));
    }
    let hash = req.params.get("hash");
    // A negative wait puts the deadline in the past: no blocking.
    let deadline = (!hash.is_empty()).then(|| match wait {
        Some(w) if w.0 < 0 => Instant::now(),
        w => Instant::now() + blocking_timeout(w.and_then(|w| w.positive())),
    });
    let dc = &req.listener;
    loop {
        let (found, mut changes) = dc.agent.service(&dc.name, id);
        let Some((current, view)) = found else {
            return Err(Reply::text(404, format!("unknown service ID: {id}")));
        };
        let done = match deadline {
            None => true,
            Some(deadline) => current != hash || Instant::now() >= deadline,
        };
        if done {
            return Ok(Reply::json(&view, req.pretty()).header("x-consul-contenthash", current));
        }
        if let Some(deadline) = deadline {
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }
}

//------------ Prepared queries -------------------------------------------------

const ERR_QUERY_NOT_FOUND: &str = "Query not found";

async fn query_create(sim: &Sim, req: &Req) -> Result<Reply, Reply> {
    let mut query: PreparedQuery = req.decode()?;
    if !query.id.is_empty() {
        return Err(Reply::text(
            500,
            "ID must be empty when creating a new prepared query",
        ));
    }
    query::parse_query(&query)
        .map_err(|e| Reply::text(500, format!("Invalid prepared query: {e}")))?;
    let dc = write_target(sim, req, None).await?;
    query.id = uuid::Uuid::new_v4().to_string();
    let id = query.id.clone();
    dc.write(|s| {
        query::check_unique(s, &query)?;
        s.put_query(query);
        Ok::<_, String>(())
    })
    .map_err(|e| Reply::text(500, format!("raft apply failed: {e}")))?;
    Ok(Reply::json(&json!({"ID": id}), req.pretty()))
}

async fn query_list(sim: &Sim, req: &Req) -> Result<Reply, Reply> {
    let read = Read::start(sim, req).await?;
    let (index, queries) = read
        .block(
            |s| (s.queries_read_index(), Topic::Any),
            |s| s.queries().cloned().collect::<Vec<PreparedQuery>>(),
        )
        .await;
    Ok(read.reply(req, index, &queries))
}

async fn query_item(sim: &Sim, req: &Req, rest: &str) -> Result<Reply, Reply> {
    if let Some(id) = rest.strip_suffix("/execute") {
        return query_execute(sim, req, id).await;
    }
    if let Some(id) = rest.strip_suffix("/explain") {
        return query_explain(sim, req, id).await;
    }
    if rest.contains('/') {
        return Err(not_found());
    }
    let id = rest;
    match req.method {
        Method::GET => {
            if !is_uuid(id) {
                return Err(Reply::text(
                    500,
                    "failed prepared query lookup: UUID must be 36 characters",
                ));
            }
            let read = Read::start(sim, req).await?;
            let (index, query) = read
                .block(
                    |s| (s.queries_read_index(), Topic::Any),
                    |s| s.query(id).cloned(),
                )
                .await;
            match query {
                Some(q) => Ok(read.reply(req, index, &[q])),
                None => Err(Reply::text(404, ERR_QUERY_NOT_FOUND)),
            }
        }
        Method::PUT => {
            let mut query: PreparedQuery = if req.body.is_empty() {
                PreparedQuery::default()
            } else {
                req.decode()?
            };
            query.id = id.to_owned();
            let missing = || {
                Reply::text(
                    500,
                    format!("Cannot modify non-existent prepared query: '{id}'"),
                )
            };
            let dc = write_target(sim, req, None).await?;
            if dc.peek(|s| s.query(id).is_none()) {
                return Err(missing());
            }
            query::parse_query(&query)
                .map_err(|e| Reply::text(500, format!("Invalid prepared query: {e}")))?;
            dc.write(|s| {
                query::check_unique(s, &query)?;
                s.put_query(query);
                Ok::<_, String>(())
            })
            .map_err(|e| Reply::text(500, format!("raft apply failed: {e}")))?;
            Ok(Reply::empty())
        }
        _ => {
            let dc = write_target(sim, req, None).await?;
            if !dc.write(|s| s.delete_query(id)) {
                return Err(Reply::text(
                    500,
                    format!("Cannot modify non-existent prepared query: '{id}'"),
                ));
            }
            Ok(Reply::empty())
        }
    }
}

async fn query_execute(sim: &Sim, req: &Req, id: &str) -> Result<Reply, Reply> {
    let limit = match req.params.get("limit") {
        "" => 0,
        l => l.parse::<i64>().map_err(|e| {
            // Go's strconv.Atoi error texts.
            let why = match e.kind() {
                std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow => {
                    "value out of range"
                }
                _ => "invalid syntax",
            };
            Reply::text(
                500,
                format!("Bad limit: strconv.Atoi: parsing {l:?}: {why}"),
            )
        })?,
    };
    let opts = parse_read_options(req)?;
    let target = req.target_dc();
    let exec = ExecuteOptions {
        limit: usize::try_from(limit).unwrap_or(0),
        near: req.params.get("near").to_owned(),
        source_ip: Some(req.source_ip()),
        stale: opts.consistency == Consistency::Stale,
    };
    sim.route(&req.listener.name, &target)
        .map_err(Reply::route_error)?;
    let mut reply = sim
        .execute(&target, id, &exec)
        .await
        .map_err(Reply::route_error)?
        .ok_or_else(|| Reply::text(404, ERR_QUERY_NOT_FOUND))?;
    reply.consistency_level = opts.consistency.as_str().to_owned();
    // Translated by the reply's datacenter, so failover answers get WAN
    // addresses (reference §5.3).
    let answered_by = reply.datacenter.clone();
    translate(sim, req, &answered_by, &mut reply.nodes);
    let dc = sim.dc(&target).cloned().ok_or_else(not_found)?;
    let read = Read { dc, opts };
    Ok(read.reply(req, 1, &reply))
}

async fn query_explain(sim: &Sim, req: &Req, id: &str) -> Result<Reply, Reply> {
    let read = Read::start(sim, req).await?;
    let query = read
        .dc
        .peek(|s| query::resolve(s, id))
        .map_err(|e| Reply::text(500, e))?
        .ok_or_else(|| Reply::text(404, ERR_QUERY_NOT_FOUND))?;
    let leaderless = read.dc.leaderless_for();
    let body = json!({
        "Query": query,
        "Index": 1,
        "LastContact": leaderless.map_or(0, |d| d.as_nanos() as u64),
        "KnownLeader": leaderless.is_none(),
        "ConsistencyLevel": read.opts.consistency.as_str(),
        "NotModified": false,
        "Backend": 0,
        "ResultsFilteredByACLs": false,
    });
    Ok(read.reply(req, 1, &body))
}

//------------ /_sim/ control API -------------------------------------------------

async fn sim_api(sim: &Sim, req: &Req) -> Reply {
    let path = req.path.trim_end_matches('/');
    let ok = || Reply::json(&json!({"ok": true}), false);
    match (req.method.clone(), path) {
        (Method::GET, "/_sim/state") => return Reply::json(&sim.state().await, true),
        (Method::GET, "/_sim/requests") => {
            let dc = req.target_dc();
            return Reply::json(&sim.requests(&dc), req.pretty());
        }
        (Method::DELETE, "/_sim/requests") => {
            let dc = req.params.get("dc");
            sim.clear_requests((!dc.is_empty()).then_some(dc));
            return ok();
        }
        _ => {}
    }
    let Some(rest) = path.strip_prefix("/_sim/dc/") else {
        return not_found();
    };
    let (dc, action) = rest.split_once('/').unwrap_or((rest, ""));
    if sim.dc(dc).is_none() {
        return Reply::text(404, format!("unknown datacenter {dc:?}"));
    }
    let dc = dc.to_owned();
    let number = |name: &str, default: u64| -> Result<u64, Reply> {
        match req.params.get(name) {
            "" => Ok(default),
            v => v.parse().map_err(|_| {
                Reply::text(400, format!("?{name}= must be a whole number, got {v:?}"))
            }),
        }
    };
    let result: Result<Reply, Reply> = async {
        match (req.method.clone(), action) {
            (Method::POST, "listener/stop") => {
                if dc == req.listener.name {
                    // Stopping the listener this request came in on would
                    // drop this very connection: answer first.
                    let sim = sim.clone();
                    tokio::spawn(async move { sim.stop_listener(&dc).await });
                    return Ok(
                        Reply::json(&json!({"ok": true, "stopping": true}), false).with_status(202)
                    );
                }
                sim.stop_listener(&dc).await;
                Ok(ok())
            }
            (Method::POST, "listener/start") => {
                sim.start_listener(&dc)
                    .await
                    .map_err(|e| Reply::text(500, e))?;
                Ok(ok())
            }
            (Method::POST, "partition") => {
                sim.partition(&dc, true);
                Ok(ok())
            }
            (Method::DELETE, "partition") => {
                sim.partition(&dc, false);
                Ok(ok())
            }
            (Method::POST, "fail") => {
                let status = u16::try_from(number("status", 500)?)
                    .map_err(|_| Reply::text(400, "?status= out of range"))?;
                let count = u32::try_from(number("count", 1)?)
                    .map_err(|_| Reply::text(400, "?count= out of range"))?;
                let body = match req.params.get("body") {
                    "" => default_fault_body(status).to_owned(),
                    b => b.to_owned(),
                };
                let prefix = req.params.get("path");
                sim.fail_next(
                    &dc,
                    count,
                    status,
                    Some(&body),
                    (!prefix.is_empty()).then_some(prefix),
                );
                Ok(ok())
            }
            (Method::PUT, "delay") => {
                let ms = number("ms", 0)?;
                sim.set_delay(&dc, (ms > 0).then(|| Duration::from_millis(ms)));
                Ok(ok())
            }
            (Method::PUT, "trickle") => {
                let ms = number("ms", 0)?;
                sim.trickle(&dc, (ms > 0).then(|| Duration::from_millis(ms)));
                Ok(ok())
            }
            (Method::POST, "hang") => {
                sim.hang(&dc, true);
                Ok(ok())
            }
            (Method::DELETE, "hang") => {
                sim.hang(&dc, false);
                Ok(ok())
            }
            (Method::DELETE, "faults") => {
                sim.clear_faults(&dc);
                Ok(ok())
            }
            (Method::POST, "rewind") => {
                sim.rewind_index(&dc, number("to", 1)?);
                Ok(ok())
            }
            (Method::DELETE, "leader") => {
                sim.lose_leader(&dc);
                Ok(ok())
            }
            (Method::PUT, "leader") => {
                sim.regain_leader(&dc);
                Ok(ok())
            }
            (Method::PUT, "coordinate") => {
                let coord: Option<Coordinate> = req.decode()?;
                sim.set_coordinate(&dc, coord);
                Ok(ok())
            }
            _ => Err(not_found()),
        }
    }
    .await;
    result.unwrap_or_else(|r| r)
}

impl Reply {
    fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An HTTP/2 stream's task is dropped with its connection, not left to
    /// finish a request no one can receive (a blocking query could hold
    /// the simulator for minutes).
    #[tokio::test]
    async fn stream_tasks_end_with_their_connection() {
        let (open, closed) = watch::channel(());
        let (alive, ended) = tokio::sync::oneshot::channel::<()>();
        hyper::rt::Executor::execute(&StreamExecutor(closed), async move {
            let _alive = alive;
            std::future::pending::<()>().await;
        });
        tokio::task::yield_now().await;
        drop(open);
        let ended = tokio::time::timeout(Duration::from_secs(5), ended).await;
        assert!(matches!(ended, Ok(Err(_))), "the task was dropped");
    }

    /// Go-connlimit's accounting: the limit-th connection of an IP is
    /// admitted, the next refused; other IPs count apart; a dropped slot
    /// frees its place; 0 means no limit.
    #[test]
    fn connections_are_counted_per_client_ip() {
        let clients = Arc::new(ClientConnections::new(2));
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        let first = clients.admit(a).expect("1st");
        let _second = clients.admit(a).expect("2nd");
        assert!(clients.admit(a).is_none());
        let other = clients.admit(b).expect("another IP");
        assert_eq!((clients.open(), clients.refused()), (3, 1));
        drop(first);
        assert_eq!(clients.open(), 2);
        let _third = clients.admit(a).expect("a freed place");
        clients.set_max(0);
        let more: Vec<_> = (0..10).map(|_| clients.admit(a)).collect();
        assert!(more.iter().all(Option::is_some));
        drop(more);
        drop(other);
        assert_eq!(clients.open(), 2);
        assert_eq!(lock(&clients.open).len(), 1, "no empty entry left");
    }
}
