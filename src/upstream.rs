//! The relay to `dns.upstream` (the Consul agent's DNS) for names in the
//! zone this resolver does not answer itself (DESIGN §2).
//!
//! Each relayed question is a fresh query (random ID, RD clear, EDNS when
//! the client sent EDNS) over UDP from an ephemeral socket connected to the
//! upstream, sent again once if half the time passes in silence; replies
//! whose ID or question do not match are ignored. A truncated UDP reply, or
//! a client that came over TCP, makes it a TCP exchange (RFC 1035 §4.2.2
//! framing). The whole relay is bounded by one deadline, so a silent
//! upstream costs the client a prompt SERVFAIL, never a timeout.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::Instant;

use crate::resolve::Question;

pub use crate::resolve::EDE_NO_REACHABLE_AUTHORITY;
/// EDE info code 23, "Network Error" (RFC 8914 §4.24).
pub const EDE_NETWORK_ERROR: u16 = 23;

/// The largest DNS message.
const MAX_MESSAGE: usize = 65_535;

/// Why a relay failed. Every message names the upstream's address.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No acceptable reply before the deadline.
    #[error("upstream {addr} did not answer within {waited:?}")]
    Timeout {
        /// The upstream.
        addr: SocketAddr,
        /// The time the relay had.
        waited: Duration,
    },
    /// Refused or unroutable (ICMP unreachable, TCP RST).
    #[error("upstream {addr} is unreachable over {protocol}: {source}")]
    Unreachable {
        /// The upstream.
        addr: SocketAddr,
        /// "UDP" or "TCP".
        protocol: &'static str,
        /// Why.
        source: io::Error,
    },
    /// Another socket error.
    #[error("upstream {addr} over {protocol}: {source}")]
    Io {
        /// The upstream.
        addr: SocketAddr,
        /// "UDP" or "TCP".
        protocol: &'static str,
        /// Why.
        source: io::Error,
    },
    /// A reply that is not an answer to the query sent.
    #[error("upstream {addr} sent a bad reply over {protocol}: {reason}")]
    BadReply {
        /// The upstream.
        addr: SocketAddr,
        /// "UDP" or "TCP".
        protocol: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The question cannot be put on the wire.
    #[error("cannot relay the question to upstream {addr}: {reason}")]
    Encode {
        /// The upstream.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
}

impl UpstreamError {
    /// The Extended DNS Error info code (RFC 8914) the client gets with
    /// its SERVFAIL.
    pub fn extended_error_code(&self) -> u16 {
        match self {
            Self::Timeout { .. } | Self::Unreachable { .. } => EDE_NO_REACHABLE_AUTHORITY,
            Self::Io { .. } | Self::BadReply { .. } | Self::Encode { .. } => EDE_NETWORK_ERROR,
        }
    }
}

/// Which transport an exchange used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    fn label(self) -> &'static str {
        match self {
            Self::Udp => "UDP",
            Self::Tcp => "TCP",
        }
    }
}

/// How a received message relates to the query sent.
enum Verdict {
    /// The answer.
    Answer(Message),
    /// Not ours (another ID): ignore it.
    Foreign,
    /// Our ID but not an answer to our question.
    Bad(String),
}

/// The relay to one upstream DNS server.
#[derive(Debug)]
pub struct Upstream {
    addr: SocketAddr,
    /// Whether the last relay failed (failures are logged once a streak).
    failing: AtomicBool,
}

impl Upstream {
    /// A relay to `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            failing: AtomicBool::new(false),
        }
    }

    /// The upstream's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Asks the upstream `question` (the name keeps the client's letter
    /// case) and returns its reply, by `deadline`. Over TCP when
    /// `over_tcp` (the client came over TCP) or when the UDP reply is
    /// truncated; with an OPT record advertising `edns_payload` when set.
    pub async fn relay(
        &self,
        question: &Question,
        over_tcp: bool,
        edns_payload: Option<u16>,
        deadline: Instant,
    ) -> Result<Message, UpstreamError> {
        let result = self
            .exchange(question, over_tcp, edns_payload, deadline)
            .await;
        match &result {
            Ok(_) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(upstream = %self.addr, "dns.upstream answers again");
                }
            }
            Err(error) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        upstream = %self.addr,
                        %error,
                        "dns.upstream failed; relayed names get SERVFAIL until it answers"
                    );
                }
            }
        }
        result
    }

    async fn exchange(
        &self,
        question: &Question,
        over_tcp: bool,
        edns_payload: Option<u16>,
        deadline: Instant,
    ) -> Result<Message, UpstreamError> {
        let query = query(question, edns_payload);
        let bytes = query.to_vec().map_err(|e| UpstreamError::Encode {
            addr: self.addr,
            reason: e.to_string(),
        })?;
        let started = Instant::now();
        let waited = deadline.saturating_duration_since(started);
        if !over_tcp {
            let reply = self.udp(&query, &bytes, started, deadline, waited).await?;
            if !reply.metadata.truncation {
                return Ok(reply);
            }
        }
        let exchange = self.tcp(&query, &bytes);
        match tokio::time::timeout_at(deadline, exchange).await {
            Ok(result) => result,
            Err(_) => Err(UpstreamError::Timeout {
                addr: self.addr,
                waited,
            }),
        }
    }

    /// One UDP exchange: sends `bytes`, once more at half time, and waits
    /// for the reply to `query` until `deadline`.
    async fn udp(
        &self,
        query: &Message,
        bytes: &[u8],
        started: Instant,
        deadline: Instant,
        waited: Duration,
    ) -> Result<Message, UpstreamError> {
        let io_error = |source: io::Error| self.io_error(Transport::Udp, source);
        let local = if self.addr.is_ipv4() {
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
        } else {
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
        };
        let socket = UdpSocket::bind(local).await.map_err(io_error)?;
        socket.connect(self.addr).await.map_err(io_error)?;
        socket.send(bytes).await.map_err(io_error)?;
        let mut resend_at = Some(started + waited / 2);
        let mut bad = None;
        let mut buffer = vec![0; MAX_MESSAGE];
        loop {
            let wake = resend_at.unwrap_or(deadline);
            match tokio::time::timeout_at(wake, socket.recv(&mut buffer)).await {
                Err(_) if resend_at.take().is_some() => {
                    socket.send(bytes).await.map_err(io_error)?;
                }
                Err(_) => {
                    return Err(bad.unwrap_or(UpstreamError::Timeout {
                        addr: self.addr,
                        waited,
                    }));
                }
                Ok(Err(source)) => return Err(io_error(source)),
                Ok(Ok(length)) => match verdict(query, &buffer[..length]) {
                    Verdict::Answer(reply) => return Ok(reply),
                    Verdict::Foreign => {}
                    // Possibly spoofed: keep waiting for the real one,
                    // but say what came if nothing better does.
                    Verdict::Bad(reason) => bad = Some(self.bad_reply(Transport::Udp, reason)),
                },
            }
        }
    }

    /// One TCP exchange (unbounded: the caller bounds it).
    async fn tcp(&self, query: &Message, bytes: &[u8]) -> Result<Message, UpstreamError> {
        let io_error = |source: io::Error| self.io_error(Transport::Tcp, source);
        let length = u16::try_from(bytes.len()).map_err(|_| UpstreamError::Encode {
            addr: self.addr,
            reason: format!("a {}-byte query", bytes.len()),
        })?;
        let mut stream = TcpStream::connect(self.addr).await.map_err(io_error)?;
        let mut framed = Vec::with_capacity(bytes.len() + 2);
        framed.extend_from_slice(&length.to_be_bytes());
        framed.extend_from_slice(bytes);
        stream.write_all(&framed).await.map_err(io_error)?;
        let mut length = [0; 2];
        stream.read_exact(&mut length).await.map_err(io_error)?;
        let mut reply = vec![0; usize::from(u16::from_be_bytes(length))];
        stream.read_exact(&mut reply).await.map_err(io_error)?;
        match verdict(query, &reply) {
            Verdict::Answer(reply) => Ok(reply),
            Verdict::Foreign => Err(self.bad_reply(Transport::Tcp, "another ID".to_owned())),
            Verdict::Bad(reason) => Err(self.bad_reply(Transport::Tcp, reason)),
        }
    }

    fn io_error(&self, transport: Transport, source: io::Error) -> UpstreamError {
        let (addr, protocol) = (self.addr, transport.label());
        match source.kind() {
            io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
            | io::ErrorKind::AddrNotAvailable => UpstreamError::Unreachable {
                addr,
                protocol,
                source,
            },
            _ => UpstreamError::Io {
                addr,
                protocol,
                source,
            },
        }
    }

    fn bad_reply(&self, transport: Transport, reason: String) -> UpstreamError {
        UpstreamError::BadReply {
            addr: self.addr,
            protocol: transport.label(),
            reason,
        }
    }
}

/// A fresh query for `question`: random ID, RD clear, an OPT record
/// advertising `edns_payload` when set.
fn query(question: &Question, edns_payload: Option<u16>) -> Message {
    let mut message = Message::new(fastrand::u16(..), MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = false;
    let mut query = Query::query(question.name.clone(), question.qtype);
    query.set_query_class(question.qclass);
    message.add_query(query);
    message.edns = edns_payload.map(|payload| {
        let mut edns = Edns::new();
        edns.set_max_payload(payload);
        edns
    });
    message
}

/// Whether `bytes` answer `query`: same ID, a response to a standard
/// query, and the same question (letter case aside; an error reply may
/// leave the question out).
fn verdict(query: &Message, bytes: &[u8]) -> Verdict {
    let id = match bytes {
        [high, low, ..] => u16::from_be_bytes([*high, *low]),
        _ => return Verdict::Foreign,
    };
    if id != query.metadata.id {
        return Verdict::Foreign;
    }
    let reply = match Message::from_vec(bytes) {
        Ok(reply) => reply,
        Err(error) => return Verdict::Bad(format!("undecodable ({error})")),
    };
    if reply.metadata.message_type != MessageType::Response {
        return Verdict::Bad("not a response".to_owned());
    }
    if reply.metadata.op_code != OpCode::Query {
        return Verdict::Bad(format!("opcode {:?}", reply.metadata.op_code));
    }
    let Some(asked) = query.queries.first() else {
        return Verdict::Bad("no question was asked".to_owned());
    };
    let same = |q: &Query| {
        q.name() == asked.name()
            && q.query_type() == asked.query_type()
            && q.query_class() == asked.query_class()
    };
    match reply.queries.as_slice() {
        [q] if same(q) => Verdict::Answer(reply),
        [] if reply.metadata.response_code != ResponseCode::NoError => Verdict::Answer(reply),
        other => {
            let got: Vec<String> = other
                .iter()
                .map(|q| format!("{} {}", q.name(), q.query_type()))
                .collect();
            Verdict::Bad(format!(
                "the question is [{}], not {} {}",
                got.join(", "),
                asked.name(),
                asked.query_type()
            ))
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
