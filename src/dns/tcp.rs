//! DNS over TCP (RFC 1035 §4.2.2, RFC 7766): our own accept loop rather
//! than hickory-server's, which has no connection limit.
//!
//! - At most `dns.tcp_max_connections` connections at once; one more is
//!   closed as soon as it is accepted (logged once a minute), so a storm
//!   of connections cannot take memory or descriptors without bound.
//! - Each message must arrive whole within `dns.tcp_idle_timeout` of the
//!   previous answer (or of the accept), and each answer must be taken
//!   within it: idle connections and slow senders or readers ("slow
//!   loris") are closed.
//! - Pipelined queries are answered in order, one after the other, over
//!   the same answer logic as UDP; messages up to 65535 bytes are read,
//!   answers up to 65535 bytes are sent.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::MessageType;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{DnsHandler, Writer, encode, formerr};

/// How often the "connection limit reached" warning may repeat.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// The TCP settings (restart-only keys).
#[derive(Clone, Copy, Debug)]
pub struct TcpSettings {
    /// `dns.tcp_idle_timeout`.
    pub idle_timeout: Duration,
    /// `dns.tcp_max_connections`.
    pub max_connections: usize,
}

impl TcpSettings {
    /// The settings of a `[dns]` section.
    pub fn from_config(dns: &crate::config::DnsConfig) -> Self {
        Self {
            idle_timeout: dns.tcp_idle_timeout,
            max_connections: dns.tcp_max_connections,
        }
    }
}

/// Accepts connections on `listener` until `shutdown`.
pub(super) async fn serve(
    listener: TcpListener,
    handler: Arc<DnsHandler>,
    settings: TcpSettings,
    shutdown: CancellationToken,
) {
    let places = Arc::new(Semaphore::new(settings.max_connections));
    let mut warned: Option<Instant> = None;
    let mut refused: u64 = 0;
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors, or a connection reset before it was
                // taken: wait a moment rather than spin.
                tracing::debug!(%error, "accepting a DNS TCP connection failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(place) = Arc::clone(&places).try_acquire_owned() else {
            drop(stream);
            refused += 1;
            if warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                tracing::warn!(
                    max = settings.max_connections,
                    refused,
                    %peer,
                    "DNS TCP connection limit reached (dns.tcp_max_connections); closing new connections"
                );
                warned = Some(Instant::now());
                refused = 0;
            }
            continue;
        };
        let handler = Arc::clone(&handler);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = connection(stream, peer, &handler, settings.idle_timeout) => {}
            }
            drop(place);
        });
    }
}

/// Serves one connection until the client closes it, a message or an
/// answer takes longer than `idle`, or a write fails.
async fn connection(stream: TcpStream, peer: SocketAddr, handler: &DnsHandler, idle: Duration) {
    let _ = stream.set_nodelay(true);
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    loop {
        // Else closed, broken, or too slow.
        let Ok(Ok(Some(message))) = tokio::time::timeout(idle, read_message(&mut reader)).await
        else {
            return;
        };
        let Some(answer) = handler.respond_tcp(message, peer).await else {
            continue;
        };
        let Ok(length) = u16::try_from(answer.len()) else {
            continue;
        };
        let mut framed = Vec::with_capacity(answer.len() + 2);
        framed.extend_from_slice(&length.to_be_bytes());
        framed.extend_from_slice(&answer);
        let Ok(Ok(())) = tokio::time::timeout(idle, writer.write_all(&framed)).await else {
            return;
        };
    }
}

/// One length-prefixed message; `None` when the client closed the
/// connection between messages.
async fn read_message(
    reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut length = [0u8; 2];
    match reader.read_exact(&mut length).await {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error),
    }
    let mut message = vec![0u8; usize::from(u16::from_be_bytes(length))];
    reader.read_exact(&mut message).await?;
    Ok(Some(message))
}

impl DnsHandler {
    /// The answer to one message received over TCP, as for UDP: shorter
    /// than a header or a response (QR=1) gets nothing, undecodable gets
    /// FORMERR, the rest the answer logic (waiting for Consul data or an
    /// upstream if it must).
    pub(super) async fn respond_tcp(&self, message: Vec<u8>, peer: SocketAddr) -> Option<Vec<u8>> {
        if message.len() < 12 {
            return None;
        }
        let header: [u8; 12] = message[..12].try_into().ok()?;
        let Ok(request) = Request::from_bytes(message, peer, Protocol::Tcp) else {
            return formerr(&header);
        };
        if request.metadata.message_type == MessageType::Response {
            return None;
        }
        let prepared = self.prepare(&request, Writer::Ours).await;
        self.count(&request, &prepared);
        let bytes = encode(&request, &prepared);
        (!bytes.is_empty()).then_some(bytes)
    }
}
