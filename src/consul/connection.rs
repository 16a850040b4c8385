//! One connection to Consul, plain or TLS: HTTP/1.1 on hyper's connection
//! API, HTTP/2 on the `h2` crate, rather than through a pooled client.
//!
//! The transport must know how many connections are open: Consul refuses
//! more than 200 per client. A pooled client opens a new connection when
//! a request starts before the previous answer's connection went back to
//! its pool, and holds idle ones, so its count drifts past any budget
//! (seen in tests: 429s at 150 requests in flight). And thirty thousand
//! blocking reads in flight cost reqwest about 7 KB each (its boxed pooled
//! future, a copy of the request kept for retries, header copies),
//! measured with heaptrack on the scale benchmark. A lane needs none of
//! that: it is one connection, opened again when it closes, sending a GET
//! with the token and reading the answer.
//!
//! HTTP/2 goes through the `h2` crate directly rather than hyper's HTTP/2
//! client: hyper spawns a task for every request to wait for its answer,
//! sized for its largest variant (the connection itself, 2.5 KB), and a
//! blocking read waits minutes for that answer; thirty thousand reads cost
//! 70 MB of such tasks (heaptrack, scale benchmark). With `h2` a read in
//! flight is its stream's state and the watch task awaiting it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1;
use hyper::header::{HOST, HeaderMap, HeaderValue, USER_AGENT};
use hyper::{Method, Request, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use url::Url;

use super::ConsulError;
use super::client::{TOKEN_HEADER, shown_url};

/// How often an idle connection is pinged.
const PING_EVERY: Duration = Duration::from_secs(30);
/// How long a ping may go unanswered before the connection is dropped.
const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer body read (a whole catalog of a big datacenter is a
/// few MB).
const MAX_BODY: usize = 64 << 20;
/// HTTP/2 flow-control window per stream: an answer this large arrives
/// without waiting for a window update.
const STREAM_WINDOW: u32 = 1 << 20;
/// HTTP/2 flow-control window per connection.
const CONNECTION_WINDOW: u32 = 4 << 20;

/// What opening a connection needs.
pub struct Connector {
    /// TLS settings for HTTP/2 (ALPN `h2` only).
    tls_h2: TlsConnector,
    /// TLS settings for HTTP/1.1 (ALPN `http/1.1`).
    tls_h1: TlsConnector,
    /// Timeout of the TCP connect and TLS handshake together.
    connect_timeout: Duration,
}

impl Connector {
    /// A connector with these TLS settings (ALPN set per protocol).
    pub fn new(tls: rustls::ClientConfig, connect_timeout: Duration) -> Self {
        let mut h2 = tls.clone();
        h2.alpn_protocols = vec![b"h2".to_vec()];
        let mut h1 = tls;
        h1.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self {
            tls_h2: TlsConnector::from(Arc::new(h2)),
            tls_h1: TlsConnector::from(Arc::new(h1)),
            connect_timeout,
        }
    }
}

/// What a request sends: the reads are GETs; a PUT carries a JSON body
/// (the agent's service registration).
#[derive(Clone, Copy, Debug)]
pub enum Call<'a> {
    /// `GET`, no body.
    Get,
    /// `PUT` with this body.
    Put(&'a Bytes),
}

impl Call<'_> {
    /// The HTTP method.
    fn method(self) -> Method {
        match self {
            Self::Get => Method::GET,
            Self::Put(_) => Method::PUT,
        }
    }

    /// The body, if any.
    fn body(self) -> Option<Bytes> {
        match self {
            Self::Get => None,
            Self::Put(body) => Some(body.clone()),
        }
    }
}

/// The sending half of an open connection.
#[derive(Clone)]
enum Sender {
    /// HTTP/1.1: one request at a time.
    Http1(Arc<tokio::sync::Mutex<http1::SendRequest<Full<Bytes>>>>),
    /// HTTP/2: many at once.
    Http2 {
        /// Opens streams.
        sender: h2::client::SendRequest<Bytes>,
        /// Set when the connection's task ended.
        closed: Arc<AtomicBool>,
    },
}

impl Sender {
    /// Whether the connection closed.
    fn is_closed(&self) -> bool {
        match self {
            Self::Http1(sender) => sender.try_lock().is_ok_and(|s| s.is_closed()),
            Self::Http2 { closed, .. } => closed.load(Ordering::Acquire),
        }
    }
}

/// The answer to one request.
pub struct Answer {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

/// The open connection, if any, and how many were opened so far.
#[derive(Default)]
struct Held {
    /// The sender of the open connection.
    sender: Option<Sender>,
    /// Connections opened so far: tells the one a request used from any
    /// opened since.
    opened: u64,
}

/// One connection, opened on first use and again after it closed.
pub struct Connection {
    /// HTTP/2 (else HTTP/1.1).
    http2: bool,
    /// The open connection; the lock also makes concurrent first requests
    /// wait for one handshake instead of opening several.
    held: tokio::sync::Mutex<Held>,
}

impl Connection {
    /// A connection speaking HTTP/2 (or HTTP/1.1), not yet open.
    pub fn new(http2: bool) -> Self {
        Self {
            http2,
            held: tokio::sync::Mutex::default(),
        }
    }

    /// Sends `what` to `url` with the token and reads the answer, all
    /// within `timeout`.
    pub async fn send(
        &self,
        connector: &Connector,
        url: &Url,
        what: Call<'_>,
        token: Option<&HeaderValue>,
        timeout: Duration,
    ) -> Result<Answer, ConsulError> {
        let exchange = async {
            // A reused connection the server closed meanwhile (an idle
            // timeout) fails before any answer: then once more on a new one.
            let mut reused = true;
            loop {
                let (mut sender, serial, fresh) = match self.open_sender() {
                    Some((sender, serial)) => (sender, serial, false),
                    // Boxed: waiting for the lock or a handshake is rare,
                    // and a read's future would otherwise keep room for it
                    // while it waits minutes for its answer.
                    None => Box::pin(self.sender(connector, url)).await?,
                };
                reused &= !fresh;
                // The outcome is taken apart before the next await, so the
                // future keeps no room for it there.
                match exchange(&mut sender, url, what, token).await {
                    Ok(answer) => return Ok(answer),
                    Err(Failure::Unsent(error)) if reused => {
                        tracing::debug!(url = %shown_url(url), %error, "Consul connection closed; opening another");
                    }
                    Err(Failure::Unsent(error) | Failure::Failed(error)) => return Err(error),
                }
                drop(sender);
                // Dropped only if no other request opened a new one
                // meanwhile.
                Box::pin(self.forget(serial)).await;
                reused = false;
            }
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(ConsulError::Timeout {
                    url: shown_url(url),
                    after: timeout,
                })
            })
    }

    /// Sends `GET url` with the token on the open HTTP/2 connection
    /// without waiting for anything, and returns the future of the
    /// answer's head. `None` when that cannot be done at once (no open
    /// connection, its lock held, HTTP/1.1, the connection closing, no
    /// stream free): then [`send`](Self::send) is the way.
    ///
    /// A blocking read then waits minutes holding only this future, not
    /// the layers of `send`.
    pub fn try_send(
        &self,
        url: &Url,
        token: Option<&HeaderValue>,
    ) -> Option<h2::client::ResponseFuture> {
        let (Sender::Http2 { mut sender, .. }, _) = self.open_sender()? else {
            return None;
        };
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if !matches!(sender.poll_ready(&mut cx), std::task::Poll::Ready(Ok(()))) {
            return None;
        }
        let request = h2_request(url, Method::GET, token).ok()?;
        sender
            .send_request(request, true)
            .ok()
            .map(|(response, _)| response)
    }

    /// The open connection's sender and serial if one is open and its
    /// lock free, without waiting.
    fn open_sender(&self) -> Option<(Sender, u64)> {
        let held = self.held.try_lock().ok()?;
        let sender = held.sender.as_ref().filter(|sender| !sender.is_closed())?;
        Some((sender.clone(), held.opened))
    }

    /// Drops the open connection if it is still the one numbered `serial`
    /// (no other request opened a newer one meanwhile).
    async fn forget(&self, serial: u64) {
        let mut held = self.held.lock().await;
        if held.opened == serial {
            held.sender = None;
        }
    }

    /// The open connection's sender, connecting first if there is none;
    /// its serial number, and whether it was opened now.
    async fn sender(
        &self,
        connector: &Connector,
        url: &Url,
    ) -> Result<(Sender, u64, bool), ConsulError> {
        let mut held = self.held.lock().await;
        if let Some(sender) = held.sender.as_ref()
            && !sender.is_closed()
        {
            return Ok((sender.clone(), held.opened, false));
        }
        held.sender = None;
        // Boxed: the handshake's state is large and rarely alive, and a
        // read's future would otherwise carry room for it in every one of
        // thousands of watch tasks.
        let sender = tokio::time::timeout(
            connector.connect_timeout,
            Box::pin(connect(connector, url, self.http2)),
        )
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "no connection within {:?}",
                connector.connect_timeout
            ))
        })
        .map_err(|reason| ConsulError::Connect {
            url: shown_url(url),
            reason,
        })?;
        held.sender = Some(sender.clone());
        held.opened += 1;
        Ok((sender, held.opened, true))
    }
}

/// One request on `sender`.
async fn exchange(
    sender: &mut Sender,
    url: &Url,
    what: Call<'_>,
    token: Option<&HeaderValue>,
) -> Result<Answer, Failure> {
    match sender {
        Sender::Http2 { sender, .. } => exchange_h2(sender, url, what, token).await,
        // Boxed: HTTP/1.1 reads are at most one per connection, while
        // the HTTP/2 ones sized inline are hundreds per connection.
        Sender::Http1(sender) => Box::pin(exchange_h1(sender, url, what, token)).await,
    }
}

/// One request on an HTTP/2 connection: a GET's head ends the stream, a
/// PUT's body follows it; the answer's body is read as it arrives, its
/// flow-control capacity given back at once.
async fn exchange_h2(
    sender: &mut h2::client::SendRequest<Bytes>,
    url: &Url,
    what: Call<'_>,
    token: Option<&HeaderValue>,
) -> Result<Answer, Failure> {
    // Errors before the stream opens: the connection is gone, nothing
    // was sent.
    std::future::poll_fn(|cx| sender.poll_ready(cx))
        .await
        .map_err(|e| Failure::Unsent(transport(url, &e)))?;
    let request = h2_request(url, what.method(), token)?;
    let body = what.body();
    let (response, mut stream) = sender
        .send_request(request, body.is_none())
        .map_err(|e| Failure::Unsent(transport(url, &e)))?;
    if let Some(body) = body {
        // Small (a registration): within the stream's initial window.
        stream
            .send_data(body, true)
            .map_err(|e| h2_failure(url, &e))?;
    }
    let response = response.await.map_err(|e| h2_failure(url, &e))?;
    // Boxed: the body's state is alive for an instant, the wait for the
    // head above for minutes.
    Box::pin(read_h2_body(response, url)).await
}

/// The head of a request of `url` on HTTP/2, with the token.
fn h2_request(
    url: &Url,
    method: Method,
    token: Option<&HeaderValue>,
) -> Result<Request<()>, ConsulError> {
    let uri: Uri = url.as_str().parse().map_err(|e| transport(url, &e))?;
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .version(Version::HTTP_2)
        .header(USER_AGENT, super::client::USER_AGENT);
    if let Some(token) = token {
        request = request.header(TOKEN_HEADER, token.clone());
    }
    request.body(()).map_err(|e| transport(url, &e))
}

/// Reads an HTTP/2 answer's body as it arrives, giving its flow-control
/// capacity back at once.
pub(super) async fn read_h2_body(
    response: hyper::Response<h2::RecvStream>,
    url: &Url,
) -> Result<Answer, Failure> {
    let (parts, mut body) = response.into_parts();
    // Most answers come in one DATA frame: kept as it is, not copied.
    let mut first: Option<Bytes> = None;
    let mut rest = BytesMut::new();
    let mut held = 0;
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| h2_failure(url, &e))?;
        let _ = body.flow_control().release_capacity(chunk.len());
        held += chunk.len();
        if held > MAX_BODY {
            return Err(Failure::Failed(too_large(url)));
        }
        match &first {
            None => first = Some(chunk),
            Some(head) => {
                if rest.is_empty() {
                    rest.extend_from_slice(head);
                }
                rest.extend_from_slice(&chunk);
            }
        }
    }
    let body = if rest.is_empty() {
        first.unwrap_or_default()
    } else {
        rest.freeze()
    };
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// An answer whose body passed [`MAX_BODY`].
fn too_large(url: &Url) -> ConsulError {
    ConsulError::Transport {
        url: shown_url(url),
        reason: format!("the answer is larger than {MAX_BODY} bytes"),
    }
}

/// An HTTP/2 error once the request went out: unsent if the server
/// refused the stream or went away before it, or the connection broke
/// (a GET is safe to send again); failed otherwise.
pub(super) fn h2_failure(url: &Url, error: &h2::Error) -> Failure {
    let failure = transport(url, error);
    if error.is_go_away() || error.is_io() || error.reason() == Some(h2::Reason::REFUSED_STREAM) {
        Failure::Unsent(failure)
    } else {
        Failure::Failed(failure)
    }
}

/// One request on an HTTP/1.1 connection (one at a time).
async fn exchange_h1(
    sender: &tokio::sync::Mutex<http1::SendRequest<Full<Bytes>>>,
    url: &Url,
    what: Call<'_>,
    token: Option<&HeaderValue>,
) -> Result<Answer, Failure> {
    // The path and query; the host goes in Host.
    let uri: Uri = url[url::Position::BeforePath..]
        .parse()
        .map_err(|e| transport(url, &e))?;
    let mut request = Request::builder()
        .method(what.method())
        .uri(uri)
        .header(USER_AGENT, super::client::USER_AGENT)
        .header(
            HOST,
            &url[url::Position::BeforeHost..url::Position::AfterPort],
        );
    if let Some(token) = token {
        request = request.header(TOKEN_HEADER, token.clone());
    }
    let request = request
        .body(Full::new(what.body().unwrap_or_default()))
        .map_err(|e| transport(url, &e))?;
    let response = {
        let mut sender = sender.lock().await;
        match sender.ready().await {
            Ok(()) => sender.send_request(request).await,
            Err(e) => Err(e),
        }
    }
    .map_err(|e| unsent_or_failed(url, &e))?;
    let (parts, body) = response.into_parts();
    let body = Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                too_large(url)
            } else {
                transport(url, &*e)
            }
        })?
        .to_bytes();
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// Opens a TCP connection, TLS for `https://` (ALPN `h2` or `http/1.1`),
/// and the HTTP handshake; the connection runs in a task of its own until
/// it closes.
async fn connect(connector: &Connector, url: &Url, http2: bool) -> Result<Sender, String> {
    let host = url.host().ok_or("the URL has no host")?;
    let port = url.port_or_known_default().ok_or("the URL has no port")?;
    let tcp = match host {
        url::Host::Domain(domain) => TcpStream::connect((domain, port)).await,
        url::Host::Ipv4(ip) => TcpStream::connect((ip, port)).await,
        url::Host::Ipv6(ip) => TcpStream::connect((ip, port)).await,
    }
    .map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    if url.scheme() != "https" {
        return handshake(tcp, http2).await;
    }
    let name = match host {
        url::Host::Domain(domain) => {
            ServerName::try_from(domain.to_owned()).map_err(|e| format!("{domain}: {e}"))?
        }
        url::Host::Ipv4(ip) => ServerName::from(std::net::IpAddr::V4(ip)),
        url::Host::Ipv6(ip) => ServerName::from(std::net::IpAddr::V6(ip)),
    };
    let tls = if http2 {
        &connector.tls_h2
    } else {
        &connector.tls_h1
    };
    let tls = tls.connect(name, tcp).await.map_err(|e| chain(&e))?;
    if http2 && tls.get_ref().1.alpn_protocol() != Some(b"h2") {
        return Err("the server does not offer HTTP/2 (ALPN h2); set consul.http2 = false".into());
    }
    handshake(tls, http2).await
}

/// The HTTP handshake on an open stream.
async fn handshake<T>(io: T, http2: bool) -> Result<Sender, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    if http2 {
        let (sender, mut connection) = h2::client::Builder::new()
            .enable_push(false)
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .handshake::<T, Bytes>(io)
            .await
            .map_err(|e| chain(&e))?;
        let closed = Arc::new(AtomicBool::new(false));
        let ping = connection.ping_pong();
        let ended = closed.clone();
        tokio::spawn(async move {
            tokio::select! {
                result = &mut connection => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "HTTP/2 connection to Consul closed");
                    }
                }
                reason = keep_alive(ping) => {
                    tracing::debug!(reason, "HTTP/2 connection to Consul dropped");
                }
            }
            ended.store(true, Ordering::Release);
            // Dropping the connection fails the streams still open.
        });
        Ok(Sender::Http2 { sender, closed })
    } else {
        let (sender, connection) = http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| chain(&e))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "HTTP/1.1 connection to Consul closed");
            }
        });
        Ok(Sender::Http1(Arc::new(tokio::sync::Mutex::new(sender))))
    }
}

/// Pings every [`PING_EVERY`], idle or not; returns why the connection
/// should be dropped: a ping unanswered within [`PING_TIMEOUT`], or one
/// that failed. Without a ping handle it never returns.
async fn keep_alive(ping: Option<h2::PingPong>) -> String {
    let Some(mut ping) = ping else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(PING_EVERY).await;
        match tokio::time::timeout(PING_TIMEOUT, ping.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => return format!("ping failed: {error}"),
            Err(_) => return format!("no answer to a ping within {PING_TIMEOUT:?}"),
        }
    }
}

/// How a request failed.
pub(super) enum Failure {
    /// Before the request went out (the connection was closed): it may be
    /// sent again.
    Unsent(ConsulError),
    /// Otherwise.
    Failed(ConsulError),
}

impl Failure {
    /// The error, and whether the request may be sent again.
    pub(super) fn into_inner(self) -> (ConsulError, bool) {
        match self {
            Self::Unsent(error) => (error, true),
            Self::Failed(error) => (error, false),
        }
    }
}

impl From<ConsulError> for Failure {
    fn from(error: ConsulError) -> Self {
        Self::Failed(error)
    }
}

/// A send error: unsent if hyper says the request never went out.
fn unsent_or_failed(url: &Url, error: &hyper::Error) -> Failure {
    let failure = transport(url, error);
    if error.is_canceled() || error.is_closed() {
        Failure::Unsent(failure)
    } else {
        Failure::Failed(failure)
    }
}

/// A transport error for `url` (shown with any password masked).
fn transport(url: &Url, error: &(dyn std::error::Error + 'static)) -> ConsulError {
    ConsulError::Transport {
        url: shown_url(url),
        reason: chain(error),
    }
}

/// An error and its causes on one line, repeated texts dropped.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = vec![error.to_string()];
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        source = cause.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An HTTP/2 connection over an in-memory pipe, and the server's end
    /// once its handshake is done (polled only by whoever holds it).
    async fn http2_pair() -> (
        Sender,
        h2::server::Connection<tokio::io::DuplexStream, Bytes>,
    ) {
        let (client, server) = tokio::io::duplex(1 << 16);
        let (sender, server) = tokio::join!(handshake(client, true), h2::server::handshake(server));
        (sender.unwrap(), server.unwrap())
    }

    /// Answers the first request on `server` with status 200, index 7 and
    /// `body`, sent in DATA frames of at most `chunk` bytes as the client's
    /// flow-control window allows.
    async fn answer_with(
        mut server: h2::server::Connection<tokio::io::DuplexStream, Bytes>,
        mut body: Bytes,
        chunk: usize,
    ) {
        let (_, mut respond) = server.accept().await.unwrap().unwrap();
        tokio::spawn(async move { while server.accept().await.is_some() {} });
        let head = hyper::Response::builder()
            .status(200)
            .header("x-consul-index", "7")
            .body(())
            .unwrap();
        let mut send = respond.send_response(head, body.is_empty()).unwrap();
        while !body.is_empty() {
            send.reserve_capacity(body.len().min(chunk));
            let room = std::future::poll_fn(|cx| send.poll_capacity(cx))
                .await
                .unwrap()
                .unwrap();
            let part = body.split_to(room.min(chunk).min(body.len()));
            send.send_data(part, body.is_empty()).unwrap();
        }
    }

    #[tokio::test]
    async fn an_http2_answer_larger_than_the_windows_arrives_whole() {
        // 6 MiB in 16 KiB frames: more than the stream and connection
        // windows, so it only arrives if the reader gives capacity back.
        let body: Bytes = (0..6 << 20).map(|i: u32| (i % 251) as u8).collect();
        let (mut sender, server) = http2_pair().await;
        tokio::spawn(answer_with(server, body.clone(), 16 << 10));
        let url = Url::parse("http://127.0.0.1:8500/v1/x").unwrap();
        let answer = tokio::time::timeout(
            Duration::from_secs(20),
            exchange(&mut sender, &url, Call::Get, None),
        )
        .await
        .expect("the answer stalled")
        .unwrap_or_else(|_| panic!("the exchange failed"));
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.headers["x-consul-index"], "7");
        assert_eq!(answer.body.len(), body.len());
        assert!(answer.body == body, "the body arrived changed");
    }

    #[tokio::test]
    async fn an_http2_answer_past_the_body_cap_is_an_error_not_memory() {
        // One byte more than the cap, in 1 MiB frames; the reader stops at
        // the cap rather than holding it all.
        let body = Bytes::from(vec![b' '; MAX_BODY + 1]);
        let (mut sender, server) = http2_pair().await;
        tokio::spawn(answer_with(server, body, 1 << 20));
        let url = Url::parse("http://127.0.0.1:8500/v1/health/service/web").unwrap();
        let outcome = tokio::time::timeout(
            Duration::from_secs(60),
            exchange(&mut sender, &url, Call::Get, None),
        )
        .await
        .expect("the answer stalled");
        let Err(Failure::Failed(error)) = outcome else {
            panic!("an answer past the cap was taken");
        };
        let text = error.to_string();
        assert!(
            text.contains("larger than 67108864 bytes") && text.contains("/v1/health/service/web"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn an_http2_answer_in_one_frame_and_an_empty_one() {
        for body in [Bytes::from_static(b"[{\"Node\":{}}]"), Bytes::new()] {
            let (mut sender, server) = http2_pair().await;
            tokio::spawn(answer_with(server, body.clone(), 16 << 10));
            let url = Url::parse("http://127.0.0.1:8500/v1/x").unwrap();
            let answer = exchange(&mut sender, &url, Call::Get, None)
                .await
                .unwrap_or_else(|_| panic!("the exchange failed"));
            assert_eq!(answer.body, body);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_connection_that_answers_pings_stays_open() {
        let (sender, mut server) = http2_pair().await;
        tokio::spawn(async move { while server.accept().await.is_some() {} });
        tokio::time::sleep(PING_EVERY * 4).await;
        assert!(!sender.is_closed());
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_connection_whose_pings_go_unanswered_is_dropped() {
        let (sender, _silent) = http2_pair().await;
        tokio::time::sleep(PING_EVERY + PING_TIMEOUT / 2).await;
        assert!(
            !sender.is_closed(),
            "dropped before the ping's time ran out"
        );
        tokio::time::sleep(PING_TIMEOUT).await;
        assert!(sender.is_closed(), "kept after an unanswered ping");
    }
}
