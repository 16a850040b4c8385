//! One HTTP/2 connection to Consul's HTTPS listener, on hyper's connection
//! API rather than through reqwest.
//!
//! Thirty thousand blocking reads in flight cost reqwest about 7 KB each
//! (its boxed pooled-client future, a copy of the request kept for
//! retries, the redirect layer's header copy), on top of the HTTP/2
//! stream itself; measured with heaptrack on the scale benchmark. A lane
//! needs none of that: it is one connection, opened again when it closes,
//! sending a GET with the token and reading the answer.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::client::conn::http2::SendRequest;
use hyper::header::{HeaderMap, HeaderValue, USER_AGENT};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use reqwest::Url;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::ConsulError;
use super::client::TOKEN_HEADER;

/// How often an idle connection is pinged.
const PING_EVERY: Duration = Duration::from_secs(30);
/// How long a ping may go unanswered before the connection is dropped.
const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer body read (a whole catalog of a big datacenter is a
/// few MB).
pub const MAX_BODY: usize = 64 << 20;

/// What opening a connection needs.
pub struct Connector {
    /// TLS settings, ALPN `h2` only.
    tls: TlsConnector,
    /// Timeout of the TCP connect and TLS handshake together.
    connect_timeout: Duration,
}

impl Connector {
    /// A connector with these TLS settings (their ALPN is set to `h2`).
    pub fn new(mut tls: rustls::ClientConfig, connect_timeout: Duration) -> Self {
        tls.alpn_protocols = vec![b"h2".to_vec()];
        Self {
            tls: TlsConnector::from(Arc::new(tls)),
            connect_timeout,
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

/// One HTTP/2 connection, opened on first use and again after it closed.
#[derive(Default)]
pub struct Connection {
    /// The sender of the open connection; the lock also makes concurrent
    /// first requests wait for one handshake instead of opening several.
    sender: tokio::sync::Mutex<Option<SendRequest<Empty<Bytes>>>>,
}

impl Connection {
    /// Sends `GET url` with `headers` and reads the answer, all within
    /// `timeout`.
    pub async fn get(
        &self,
        connector: &Connector,
        url: &Url,
        shown: &str,
        token: Option<&HeaderValue>,
        timeout: Duration,
    ) -> Result<Answer, ConsulError> {
        let exchange = async {
            let mut sender = self.sender(connector, url, shown).await?;
            let uri: Uri = url.as_str().parse().map_err(|e| ConsulError::Transport {
                url: shown.to_owned(),
                reason: format!("{e}"),
            })?;
            let mut request = Request::get(uri).header(USER_AGENT, super::client::USER_AGENT);
            if let Some(token) = token {
                request = request.header(TOKEN_HEADER, token.clone());
            }
            let request = request
                .body(Empty::new())
                .map_err(|e| transport(shown, &e))?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| transport(shown, &e))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_BODY)
                .collect()
                .await
                .map_err(|e| ConsulError::Transport {
                    url: shown.to_owned(),
                    reason: chain(&*e),
                })?
                .to_bytes();
            Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(ConsulError::Timeout {
                    url: shown.to_owned(),
                    after: timeout,
                })
            })
    }

    /// The open connection's sender, connecting first if there is none.
    async fn sender(
        &self,
        connector: &Connector,
        url: &Url,
        shown: &str,
    ) -> Result<SendRequest<Empty<Bytes>>, ConsulError> {
        let mut held = self.sender.lock().await;
        if let Some(sender) = held.as_ref()
            && !sender.is_closed()
        {
            return Ok(sender.clone());
        }
        *held = None;
        // Boxed: the handshake's state is large and rarely alive, and a
        // read's future would otherwise carry room for it in every one of
        // thousands of watch tasks.
        let sender =
            tokio::time::timeout(connector.connect_timeout, Box::pin(connect(connector, url)))
                .await
                .unwrap_or_else(|_| {
                    Err(format!(
                        "no connection within {:?}",
                        connector.connect_timeout
                    ))
                })
                .map_err(|reason| ConsulError::Connect {
                    url: shown.to_owned(),
                    reason,
                })?;
        *held = Some(sender.clone());
        Ok(sender)
    }
}

/// Opens a TCP connection, TLS with ALPN `h2`, and the HTTP/2 handshake;
/// the connection runs in a task of its own until it closes.
async fn connect(connector: &Connector, url: &Url) -> Result<SendRequest<Empty<Bytes>>, String> {
    let host = url.host().ok_or("the URL has no host")?;
    let port = url.port_or_known_default().ok_or("the URL has no port")?;
    let name = match host {
        url::Host::Domain(domain) => {
            ServerName::try_from(domain.to_owned()).map_err(|e| format!("{domain}: {e}"))?
        }
        url::Host::Ipv4(ip) => ServerName::from(std::net::IpAddr::V4(ip)),
        url::Host::Ipv6(ip) => ServerName::from(std::net::IpAddr::V6(ip)),
    };
    let tcp = match host {
        url::Host::Domain(domain) => TcpStream::connect((domain, port)).await,
        url::Host::Ipv4(ip) => TcpStream::connect((ip, port)).await,
        url::Host::Ipv6(ip) => TcpStream::connect((ip, port)).await,
    }
    .map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let tls = connector
        .tls
        .connect(name, tcp)
        .await
        .map_err(|e| chain(&e))?;
    if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
        return Err("the server does not offer HTTP/2 (ALPN h2); set consul.http2 = false".into());
    }
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(PING_EVERY)
        .keep_alive_timeout(PING_TIMEOUT)
        .keep_alive_while_idle(true)
        .handshake(TokioIo::new(tls))
        .await
        .map_err(|e| chain(&e))?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "HTTP/2 connection to Consul closed");
        }
    });
    Ok(sender)
}

/// A transport error for `shown`.
fn transport(shown: &str, error: &(dyn std::error::Error + 'static)) -> ConsulError {
    ConsulError::Transport {
        url: shown.to_owned(),
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
