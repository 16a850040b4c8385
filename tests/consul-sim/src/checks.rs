//! The checks a simulated agent runs itself (`agent/checks/check.go`):
//! HTTP checks (`CheckHTTP`) and TCP checks (`CheckTCP`), with a small
//! HTTP/1.1 client over a tokio `TcpStream` that behaves as the Go client
//! Consul builds for them: keep-alives off (`Connection: close`), the
//! check's timeout (10 s by default) over the whole exchange including
//! redirects, redirects followed as Go's `http.Client` does (at most 10,
//! none with `DisableRedirects`), and the output kept in a circular buffer
//! of `OutputMaxSize` bytes, so the body's *last* bytes (4 KB by default).
//!
//! Error texts follow Go's (`Get "http://…": dial tcp …: connect:
//! connection refused`). Plain `http://` only: an `https://` target fails
//! with a text saying the simulator does not model it. Not sent: Go's
//! automatic `Accept-Encoding: gzip` (so servers answer uncompressed).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::model::{CRITICAL, PASSING, WARNING};

/// `checks.MinInterval`: shorter intervals are raised to this.
pub const MIN_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// The HTTP and TCP checks' timeout when the check sets none.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// `checks.DefaultBufSize`, the agent's default `check_output_max_size`.
pub const DEFAULT_CHECK_OUTPUT_MAX_SIZE: usize = 4096;
/// `checks.UserAgent`.
const USER_AGENT: &str = "Consul Health Check";
/// Go's `http.Client` default redirect limit.
const MAX_REDIRECTS: usize = 10;
/// Longest response head read (Go's `MaxResponseHeaderBytes` default is
/// 10 MB; a check never needs that much).
const MAX_HEAD: usize = 1 << 20;

/// A spawned task that is aborted when this handle is dropped.
#[derive(Debug)]
pub(crate) struct AbortOnDrop(Option<JoinHandle<()>>);

impl AbortOnDrop {
    pub(crate) fn spawn(task: impl Future<Output = ()> + Send + 'static) -> Self {
        Self(Some(tokio::spawn(task)))
    }

    /// Lets the task run on without this handle (for a task dropping its
    /// own handle).
    pub(crate) fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// `lib.RandomStagger`: a random duration in `[0, d)`.
pub(crate) fn random_stagger(d: Duration) -> Duration {
    match u64::try_from(d.as_nanos()) {
        Ok(0) => Duration::ZERO,
        Ok(n) => Duration::from_nanos(fastrand::u64(0..n)),
        Err(_) => Duration::from_nanos(fastrand::u64(..)),
    }
}

//------------ Results and errors -------------------------------------------------

/// A check result: status and output.
pub(crate) type Outcome = (&'static str, String);

/// Go's `urlErrorOp`: `GET` becomes `Get`.
fn url_error_op(method: &str) -> String {
    let mut chars = method.chars();
    match chars.next() {
        Some(first) => first.to_string() + &chars.as_str().to_lowercase(),
        None => String::new(),
    }
}

/// An I/O error's text as Go's `syscall.Errno` prints it (lowercase, no
/// `(os error N)`).
fn errno_text(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => "connection refused".into(),
        ConnectionReset => "connection reset by peer".into(),
        TimedOut => "connection timed out".into(),
        HostUnreachable => "no route to host".into(),
        NetworkUnreachable => "network is unreachable".into(),
        AddrNotAvailable => "cannot assign requested address".into(),
        _ => {
            let text = e.to_string();
            let text = text.split(" (os error").next().unwrap_or(&text);
            let mut chars = text.chars();
            match chars.next() {
                Some(c) => c.to_lowercase().chain(chars).collect(),
                None => String::new(),
            }
        }
    }
}

/// Splits `host:port` as Go's `net.SplitHostPort` (brackets around IPv6).
fn split_host_port(addr: &str) -> Result<(String, u16), String> {
    let missing = || format!("address {addr}: missing port in address");
    let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(missing)?;
        (host, after.strip_prefix(':').ok_or_else(missing)?)
    } else {
        let (host, port) = addr.rsplit_once(':').ok_or_else(missing)?;
        if host.contains(':') {
            return Err(format!("address {addr}: too many colons in address"));
        }
        (host, port)
    };
    let port = port
        .parse()
        .map_err(|_| format!("dial tcp: lookup tcp/{port}: unknown port"))?;
    Ok((host.to_owned(), port))
}

/// Dials `host:port` as Go's `net.Dialer` does, within `deadline`: every
/// resolved address in turn. Errors are Go's `dial tcp …` texts; a timeout
/// is `Err(None)`.
async fn dial(host: &str, port: u16, deadline: Instant) -> Result<TcpStream, Option<String>> {
    let addrs: Vec<SocketAddr> = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => {
            let lookup = tokio::time::timeout_at(deadline, tokio::net::lookup_host((host, port)))
                .await
                .map_err(|_| None)?;
            match lookup {
                Ok(found) => found.collect(),
                Err(_) => Vec::new(),
            }
        }
    };
    if addrs.is_empty() {
        return Err(Some(format!("dial tcp: lookup {host}: no such host")));
    }
    let mut last = None;
    for addr in addrs {
        match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
            Err(_) => return Err(None),
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) => last = Some(format!("dial tcp {addr}: connect: {}", errno_text(&e))),
        }
    }
    Err(last)
}

//------------ TCP checks -------------------------------------------------------------

/// One run of `CheckTCP.check`: connect to `addr` within `timeout`.
pub(crate) async fn tcp_probe(addr: &str, timeout: Duration) -> Outcome {
    let (host, port) = match split_host_port(addr) {
        Ok(hp) => hp,
        Err(e) => return (CRITICAL, format!("dial tcp: {e}")),
    };
    match dial(&host, port, Instant::now() + timeout).await {
        Ok(stream) => {
            drop(stream);
            (PASSING, format!("TCP connect {addr}: Success"))
        }
        Err(Some(e)) => (CRITICAL, e),
        Err(None) => (CRITICAL, format!("dial tcp {addr}: i/o timeout")),
    }
}

//------------ HTTP checks -------------------------------------------------------------

/// What an HTTP check sends, and how it reads the answer.
#[derive(Debug, Clone)]
pub(crate) struct HttpProbe {
    /// The check's `HTTP` (or `ProxyHTTP` when set).
    pub(crate) url: String,
    /// The check's `Method` (`GET` when empty).
    pub(crate) method: String,
    pub(crate) header: BTreeMap<String, Vec<String>>,
    pub(crate) body: String,
    pub(crate) disable_redirects: bool,
    pub(crate) timeout: Duration,
    pub(crate) output_max_size: usize,
}

/// A parsed `http://` URL.
#[derive(Debug, Clone, PartialEq)]
struct Url {
    /// Host as written, with its port if given: the `Host` header.
    authority: String,
    /// Host to dial, without brackets.
    host: String,
    port: u16,
    /// Path and query; `/` if empty.
    target: String,
}

/// Parses an absolute URL the way the check's request needs it: `http`
/// only; Go's texts for what its client refuses.
fn parse_url(url: &str, method_op: &str) -> Result<Url, String> {
    let fail = |why: &str| format!("{method_op} {url:?}: {why}");
    let Some((scheme, rest)) = url.split_once("://") else {
        let scheme = url.split_once(':').map_or("", |(s, _)| s);
        return Err(fail(&format!("unsupported protocol scheme {scheme:?}")));
    };
    match scheme.to_ascii_lowercase().as_str() {
        "http" => {}
        "https" => return Err(fail("consul-sim does not model HTTPS checks")),
        other => return Err(fail(&format!("unsupported protocol scheme {other:?}"))),
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let tail = tail.split_once('#').map_or(tail, |(t, _)| t);
    if authority.is_empty() {
        return Err(fail("http: no Host in request URL"));
    }
    let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
        let (host, after) = inner
            .split_once(']')
            .ok_or_else(|| format!("parse {url:?}: missing ']' in host"))?;
        (host.to_owned(), after.strip_prefix(':').unwrap_or(""))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p),
            None => (authority.to_owned(), ""),
        }
    };
    let port = if port.is_empty() {
        80
    } else {
        port.parse().map_err(|_| {
            format!(
                "parse {url:?}: invalid port {:?} after host",
                format!(":{port}")
            )
        })?
    };
    let target = if tail.is_empty() || tail.starts_with('?') {
        format!("/{tail}")
    } else {
        tail.to_owned()
    };
    Ok(Url {
        authority: authority.to_owned(),
        host,
        port,
        target,
    })
}

/// Resolves a `Location` against the URL it came from.
fn resolve_location(base: &Url, location: &str) -> String {
    if location.contains("://") {
        location.to_owned()
    } else if let Some(rest) = location.strip_prefix("//") {
        format!("http://{rest}")
    } else if location.starts_with('/') {
        format!("http://{}{location}", base.authority)
    } else {
        let path = base.target.split('?').next().unwrap_or("/");
        let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
        format!("http://{}{dir}/{location}", base.authority)
    }
}

/// A response head.
struct Head {
    /// Go's `resp.Status`: the status line after the protocol.
    status: String,
    code: u16,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .rev()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The last `max` bytes written (`circbuf.Buffer`).
struct Tail {
    bytes: Vec<u8>,
    max: usize,
}

impl Tail {
    fn push(&mut self, data: &[u8]) {
        self.bytes.extend_from_slice(data);
        if self.bytes.len() > self.max {
            let excess = self.bytes.len() - self.max;
            self.bytes.drain(..excess);
        }
    }
}

type Reader = BufReader<TcpStream>;

/// Reads one CRLF- (or LF-) terminated line; `Ok(None)` at a clean EOF.
async fn read_line(reader: &mut Reader, budget: &mut usize) -> std::io::Result<Option<String>> {
    let mut line = Vec::new();
    let n = (&mut *reader)
        .take(*budget as u64 + 1)
        .read_until(b'\n', &mut line)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    if n > *budget {
        return Err(std::io::Error::other(format!(
            "net/http: server response headers exceeded {MAX_HEAD} bytes; aborted"
        )));
    }
    *budget -= n;
    if !line.ends_with(b"\n") {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        line.pop();
    }
    Ok(Some(String::from_utf8_lossy(&line).into_owned()))
}

/// `local->peer` of a connection, as Go's `net.OpError` writes it.
fn endpoints(stream: &TcpStream) -> String {
    let shown = |a: std::io::Result<SocketAddr>| a.map(|a| a.to_string()).unwrap_or_default();
    format!(
        "{}->{}",
        shown(stream.local_addr()),
        shown(stream.peer_addr())
    )
}

/// Go's text for a read error on an established connection.
fn read_error(e: &std::io::Error, stream: &TcpStream) -> String {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => "unexpected EOF".into(),
        std::io::ErrorKind::Other => e.to_string(),
        _ => format!("read tcp {}: read: {}", endpoints(stream), errno_text(e)),
    }
}

/// Reads a response head, skipping `1xx` interim answers (not `101`).
async fn read_head(reader: &mut Reader) -> Result<Head, String> {
    let mut budget = MAX_HEAD;
    loop {
        let line = match read_line(reader, &mut budget).await {
            Ok(Some(line)) => line,
            Ok(None) => return Err("EOF".into()),
            Err(e) => return Err(read_error(&e, reader.get_ref())),
        };
        let malformed = || {
            format!(
                "net/http: HTTP/1.x transport connection broken: malformed HTTP response {line:?}"
            )
        };
        let (_proto, status) = line.split_once(' ').ok_or_else(malformed)?;
        let status = status.trim_start_matches(' ').to_owned();
        let code_text = status.split(' ').next().unwrap_or("");
        let code: u16 = match code_text.parse() {
            Ok(c) if code_text.len() == 3 => c,
            _ => {
                return Err(format!(
                    "net/http: HTTP/1.x transport connection broken: malformed HTTP status code {code_text:?}"
                ));
            }
        };
        let mut headers = Vec::new();
        loop {
            match read_line(reader, &mut budget).await {
                Ok(Some(h)) if h.is_empty() => break,
                Ok(Some(h)) => {
                    if let Some((k, v)) = h.split_once(':') {
                        headers.push((k.trim().to_owned(), v.trim().to_owned()));
                    }
                }
                Ok(None) => return Err("unexpected EOF".into()),
                Err(e) => return Err(read_error(&e, reader.get_ref())),
            }
        }
        if (100..200).contains(&code) && code != 101 {
            continue;
        }
        return Ok(Head {
            status,
            code,
            headers,
        });
    }
}

/// Reads the body into `out` by the response's framing; stops quietly at
/// an error or early EOF (Go's `io.Copy` error is only logged).
async fn read_body(reader: &mut Reader, head: &Head, method: &str, out: &mut Tail) {
    if method == "HEAD" || (100..200).contains(&head.code) || head.code == 204 || head.code == 304 {
        return;
    }
    let mut buf = vec![0u8; 8192];
    let chunked = head
        .header("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
    if chunked {
        let mut budget = usize::MAX / 2;
        loop {
            let Ok(Some(line)) = read_line(reader, &mut budget).await else {
                return;
            };
            let size = line.split(';').next().unwrap_or("").trim();
            let Ok(mut left) = usize::from_str_radix(size, 16) else {
                return;
            };
            if left == 0 {
                return;
            }
            while left > 0 {
                let want = left.min(buf.len());
                match reader.read(&mut buf[..want]).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        out.push(&buf[..n]);
                        left -= n;
                    }
                }
            }
            if !matches!(read_line(reader, &mut budget).await, Ok(Some(_))) {
                return;
            }
        }
    }
    let mut left = head
        .header("content-length")
        .and_then(|v| v.parse::<u64>().ok());
    loop {
        let want = left.map_or(buf.len(), |l| (l as usize).min(buf.len()));
        if want == 0 {
            return;
        }
        match reader.read(&mut buf[..want]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                out.push(&buf[..n]);
                if let Some(l) = &mut left {
                    *l -= n as u64;
                }
            }
        }
    }
}

impl HttpProbe {
    /// The headers Go sends for the check: the check's own (`Host`,
    /// `User-Agent` and framing headers excluded, as Go's request writer
    /// excludes them), `Accept` defaulted; and the `Host` override if any.
    fn request_headers(&self) -> (Vec<(String, String)>, Option<String>, String) {
        let first = |name: &str| {
            self.header
                .get(name)
                .and_then(|v| v.first())
                .filter(|v| !v.is_empty())
                .cloned()
        };
        let user_agent = first("User-Agent").unwrap_or_else(|| USER_AGENT.to_owned());
        let mut out = Vec::new();
        for (name, values) in &self.header {
            if [
                "Host",
                "User-Agent",
                "Content-Length",
                "Transfer-Encoding",
                "Trailer",
            ]
            .contains(&name.as_str())
            {
                continue;
            }
            for value in values {
                out.push((
                    name.clone(),
                    value.replace(['\r', '\n'], " ").trim().to_owned(),
                ));
            }
        }
        if first("Accept").is_none() {
            out.retain(|(name, _)| name != "Accept");
            out.push(("Accept".into(), "text/plain, text/*, */*".into()));
        }
        (out, first("Host"), user_agent)
    }

    /// One run of `CheckHTTP.check`: the status and output it reports.
    pub(crate) async fn run(&self) -> Outcome {
        let method = if self.method.is_empty() {
            "GET".to_owned()
        } else {
            self.method.clone()
        };
        let op = url_error_op(&method);
        let deadline = Instant::now() + self.timeout;
        let (headers, host_override, user_agent) = self.request_headers();
        let mut url = self.url.clone();
        let mut hop_method = method.clone();
        let mut body = self.body.clone();
        let mut host = host_override.clone();
        let mut redirects = 0;
        loop {
            let target = match parse_url(&url, &op) {
                Ok(t) => t,
                Err(e) => return (CRITICAL, e),
            };
            let exchange = async {
                let stream = dial(&target.host, target.port, deadline).await?;
                let mut request = format!(
                    "{hop_method} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: {user_agent}\r\n",
                    target.target,
                    host.as_deref().unwrap_or(&target.authority)
                );
                let sends_body =
                    !body.is_empty() || matches!(hop_method.as_str(), "POST" | "PUT" | "PATCH");
                if sends_body {
                    request.push_str(&format!("Content-Length: {}\r\n", body.len()));
                }
                for (name, value) in &headers {
                    request.push_str(&format!("{name}: {value}\r\n"));
                }
                request.push_str("Connection: close\r\n\r\n");
                request.push_str(&body);
                let mut reader = BufReader::new(stream);
                if let Err(e) = reader.get_mut().write_all(request.as_bytes()).await {
                    return Err(Some(format!(
                        "write tcp {}: write: {}",
                        endpoints(reader.get_ref()),
                        errno_text(&e)
                    )));
                }
                let head = read_head(&mut reader).await.map_err(Some)?;
                Ok::<_, Option<String>>((reader, head))
            };
            let (mut reader, head) = match tokio::time::timeout_at(deadline, exchange).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(Some(e))) => return (CRITICAL, format!("{op} {url:?}: {e}")),
                Ok(Err(None)) | Err(_) => {
                    return (
                        CRITICAL,
                        format!(
                            "{op} {url:?}: context deadline exceeded \
                             (Client.Timeout exceeded while awaiting headers)"
                        ),
                    );
                }
            };
            let location = head.header("location").filter(|l| !l.is_empty());
            let redirect = matches!(head.code, 301 | 302 | 303 | 307 | 308)
                && !self.disable_redirects
                && location.is_some();
            if let (true, Some(location)) = (redirect, location) {
                let next = resolve_location(&target, location);
                redirects += 1;
                if redirects >= MAX_REDIRECTS {
                    return (
                        CRITICAL,
                        format!("{op} {next:?}: stopped after {MAX_REDIRECTS} redirects"),
                    );
                }
                if matches!(head.code, 301..=303) {
                    if hop_method != "GET" && hop_method != "HEAD" {
                        hop_method = "GET".into();
                    }
                    body.clear();
                }
                // A Host override survives only relative redirects.
                if !location.contains("://") && !location.starts_with("//") {
                    host = host_override.clone();
                } else {
                    host = None;
                }
                url = next;
                continue;
            }
            let mut out = Tail {
                bytes: Vec::new(),
                max: self.output_max_size,
            };
            let _ = tokio::time::timeout_at(
                deadline,
                read_body(&mut reader, &head, &hop_method, &mut out),
            )
            .await;
            let result = format!(
                "HTTP {method} {}: {} Output: {}",
                self.url,
                head.status,
                String::from_utf8_lossy(&out.bytes)
            );
            let status = match head.code {
                200..=299 => PASSING,
                429 => WARNING,
                _ => CRITICAL,
            };
            return (status, result);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_as_the_check_needs() {
        let u = parse_url("http://127.0.0.1:8080/health?x=1", "Get").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.target.as_str()),
            ("127.0.0.1", 8080, "/health?x=1")
        );
        assert_eq!(u.authority, "127.0.0.1:8080");
        let u = parse_url("http://[::1]/", "Get").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 80));
        assert_eq!(parse_url("http://h", "Get").unwrap().target, "/");
        assert_eq!(
            parse_url("ftp://h/", "Get").unwrap_err(),
            "Get \"ftp://h/\": unsupported protocol scheme \"ftp\""
        );
        assert_eq!(
            parse_url("", "Get").unwrap_err(),
            "Get \"\": unsupported protocol scheme \"\""
        );
        let base = parse_url("http://h:1/a/b?q", "Get").unwrap();
        assert_eq!(resolve_location(&base, "/c"), "http://h:1/c");
        assert_eq!(resolve_location(&base, "c"), "http://h:1/a/c");
        assert_eq!(resolve_location(&base, "http://o/"), "http://o/");
    }

    #[test]
    fn tail_keeps_the_last_bytes() {
        let mut t = Tail {
            bytes: Vec::new(),
            max: 4,
        };
        t.push(b"ab");
        t.push(b"cdef");
        assert_eq!(t.bytes, b"cdef");
        t.push(b"g");
        assert_eq!(t.bytes, b"defg");
    }

    #[test]
    fn go_names_and_texts() {
        assert_eq!(url_error_op("GET"), "Get");
        assert_eq!(url_error_op("POST"), "Post");
        assert_eq!(split_host_port("h:80").unwrap(), ("h".to_owned(), 80));
        assert_eq!(split_host_port("[::1]:80").unwrap(), ("::1".to_owned(), 80));
        assert_eq!(
            split_host_port("h").unwrap_err(),
            "address h: missing port in address"
        );
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(errno_text(&refused), "connection refused");
    }
}
