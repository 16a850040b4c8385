//! The UDP fast path: threads (`dns.udp_threads`), each with its own SO_REUSEPORT
//! socket, receiving and sending in batches (`recvmmsg`/`sendmmsg`).
//!
//! A response is a pure function of the request's bytes after its ID, the
//! health view and the settings (the SOA serial and the shuffle aside). So
//! each thread keeps the encoded responses it sent, keyed by those bytes,
//! for as long as the view's generation does not move: a repeated question
//! costs a hash lookup and a copy, with the ID and the SOA serial patched.
//! Answers with several records keep rotations, served in turn. Anything
//! not in the cache goes through the same code as TCP (hickory-proto
//! parsing and the answer logic): at once when the view has the data,
//! on the async runtime when the answer must wait for Consul or an
//! upstream. Only answers that depend on the view alone are kept (not
//! stale ones, not those held by `failback_after`, no errors).

use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hickory_proto::rr::{RData, Record, RecordType};
use hickory_server::net::xfer::Protocol;
use hickory_server::server::Request;
use nix::errno::Errno;
use nix::sys::socket::{ControlMessage, MsgFlags, MultiHeaders, Shutdown, SockaddrStorage};
use rustc_hash::FxHashMap;
use socket2::{Domain, Socket, Type};

use super::ratelimit::{self, Limiter, Verdict};
use super::{DnsHandler, Writer, encode, unix_seconds};
use crate::health::{HealthView, Recording, SlotUse};
use crate::resolve::Answer;

/// Datagrams per system call.
const BATCH: usize = 32;
/// The largest query taken (hickory-server reads 4096 bytes too); longer
/// ones are dropped.
const MAX_QUERY: usize = 4096;
/// Requests longer than this are answered but not cached.
const MAX_KEY: usize = 512;
/// Entries per cache segment; a thread keeps two.
const SEGMENT: usize = 2048;
/// At most this many rotations of an answer with several records.
const ROTATIONS: usize = 8;
/// The receive buffer asked for each socket.
const RECEIVE_BUFFER: usize = 4 << 20;

/// Binds `count` UDP sockets sharing `address` with SO_REUSEPORT (port 0:
/// a free port). Returns them and the address bound.
///
/// A plain bind comes first, so a port that anything else holds (another
/// program, or another server's SO_REUSEPORT group) is an error rather
/// than shared, and port 0 gets a port nobody uses.
pub(crate) fn bind(
    address: SocketAddr,
    count: usize,
) -> std::io::Result<(Vec<UdpSocket>, SocketAddr)> {
    let bound = UdpSocket::bind(address)?.local_addr()?;
    let mut sockets = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        let socket = Socket::new(Domain::for_address(bound), Type::DGRAM, None)?;
        if bound.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        socket.set_reuse_port(true)?;
        // Best effort: the kernel caps it at net.core.rmem_max.
        let _ = socket.set_recv_buffer_size(RECEIVE_BUFFER);
        // No receive timeout: a thread blocks until a datagram comes or
        // [`FastPath::stop`] shuts the socket's receive side down. (A
        // timeout would arm and cancel a kernel timer on every sleep.)
        socket.bind(&bound.into())?;
        sockets.push(socket.into());
    }
    Ok((sockets, bound))
}

/// The running fast-path threads; dropping it stops them.
pub(crate) struct FastPath {
    stop: Arc<AtomicBool>,
    /// The threads' sockets, to wake them when stopping.
    sockets: Vec<Arc<UdpSocket>>,
}

impl FastPath {
    /// Starts one thread per socket. Answers that must wait run on
    /// `runtime`.
    pub(crate) fn start(
        handler: &Arc<DnsHandler>,
        sockets: Vec<UdpSocket>,
        runtime: &tokio::runtime::Handle,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let sockets: Vec<Arc<UdpSocket>> = sockets.into_iter().map(Arc::new).collect();
        for (n, socket) in sockets.iter().enumerate() {
            let worker = Worker {
                handler: Arc::clone(handler),
                socket: Arc::clone(socket),
                runtime: runtime.clone(),
                stop: Arc::clone(&stop),
            };
            std::thread::Builder::new()
                .name(format!("dns-udp-{n}"))
                .spawn(move || worker.run())?;
        }
        Ok(Self { stop, sockets })
    }

    /// Tells the threads to stop and wakes them; each finishes the batch
    /// in hand and closes its socket. Not waited for, so shutdown stays
    /// prompt.
    pub(crate) fn stop(self) {
        drop(self);
    }
}

impl Drop for FastPath {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for socket in &self.sockets {
            // Wakes a thread blocked in recvmmsg, and makes every later
            // receive return at once. On an unconnected UDP socket Linux
            // does this and then reports ENOTCONN, which is expected.
            let _ = nix::sys::socket::shutdown(socket.as_raw_fd(), Shutdown::Read);
        }
    }
}

/// One fast-path thread.
struct Worker {
    handler: Arc<DnsHandler>,
    socket: Arc<UdpSocket>,
    runtime: tokio::runtime::Handle,
    stop: Arc<AtomicBool>,
}

impl Worker {
    /// Serves until told to stop. A panic (a bug) is logged and serving
    /// starts over, so the socket never goes silent.
    fn run(self) {
        // Watches started by answers are tasks of the runtime.
        let _runtime = self.runtime.enter();
        while !self.stop.load(Ordering::Relaxed) {
            let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.serve()));
            if served.is_err() {
                tracing::error!("the UDP fast path failed on a query (a bug); serving on");
            }
        }
    }

    fn serve(&self) {
        let fd = self.socket.as_raw_fd();
        let mut receive = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
        let mut send = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
        let mut buffers = Box::new([[0u8; MAX_QUERY]; BATCH]);
        // Per buffer: its length and sender, `None` for a datagram to drop.
        let mut received: Vec<Option<(usize, SockaddrStorage)>> = Vec::with_capacity(BATCH);
        let mut replies: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(1232)).collect();
        let mut destinations: Vec<Option<SockaddrStorage>> = Vec::with_capacity(BATCH);
        let mut cache = Cache::new();
        let mut limiter = Limiter::default();
        let mut warned_limit: Option<std::time::Instant> = None;
        let mut warned = false;
        while !self.stop.load(Ordering::Relaxed) {
            received.clear();
            {
                // On the stack, made for each call (they borrow the
                // buffers, which are read after it).
                let mut slices = buffers.each_mut().map(|b| [IoSliceMut::new(&mut b[..])]);
                match nix::sys::socket::recvmmsg(
                    fd,
                    &mut receive,
                    slices.iter_mut(),
                    MsgFlags::MSG_WAITFORONE,
                    None,
                ) {
                    Ok(messages) => {
                        for message in messages {
                            // Oversized datagrams were cut: drop them.
                            let whole = !message.flags.contains(MsgFlags::MSG_TRUNC);
                            received.push(
                                message
                                    .address
                                    .filter(|_| whole)
                                    .map(|address| (message.bytes, address)),
                            );
                        }
                    }
                    Err(Errno::EAGAIN | Errno::EINTR) => continue,
                    Err(error) => {
                        if !warned {
                            tracing::warn!(%error, "receiving DNS over UDP failed");
                            warned = true;
                        }
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                }
            }
            cache.follow(self.handler.view.generation());
            let allow = self.handler.wire.allow.load();
            let limits = self.handler.wire.get();
            let mut moment = Moment::now();
            destinations.clear();
            let mut used = 0;
            let mut hits = 0;
            let mut limited = 0_u64;
            for (at, (length, address)) in received
                .iter()
                .enumerate()
                .filter_map(|(at, r)| r.as_ref().map(|r| (at, r)))
            {
                if *length < 12 {
                    continue;
                }
                let packet = &buffers[at][..*length];
                let reply = &mut replies[used];
                reply.clear();
                // A client outside dns.allow gets REFUSED from the answer
                // logic, never a cached answer.
                let allowed = allow.is_empty()
                    || to_std(address).is_some_and(|source| super::allowed(&allow, source.ip()));
                if allowed && cache.answer(packet, &mut moment, reply, &self.handler.view) {
                    hits += 1;
                } else {
                    let Some(source) = to_std(address) else {
                        continue;
                    };
                    match self.handler.respond_now(packet, source) {
                        Immediate::Ready { bytes, keep } => {
                            if let Some(entry) = keep {
                                cache.insert(packet, entry);
                            }
                            *reply = bytes;
                        }
                        Immediate::Drop => continue,
                        Immediate::Later(request) => {
                            let handler = Arc::clone(&self.handler);
                            let socket = Arc::clone(&self.socket);
                            self.runtime.spawn(async move {
                                let prepared = handler.prepare(&request, Writer::Ours).await;
                                handler.count(&request, &prepared);
                                let bytes = encode(&request, &prepared);
                                if !bytes.is_empty() {
                                    let _ = socket.send_to(&bytes, source);
                                }
                            });
                            continue;
                        }
                    }
                }
                // dns.rate_limit: over it, dropped, or every slip-th sent
                // truncated.
                if limits.rate_limit > 0 {
                    let verdict = to_std(address).map_or(Verdict::Send, |source| {
                        limiter.verdict(
                            source.ip(),
                            limits.rate_limit,
                            limits.rate_limit_slip,
                            moment.at,
                        )
                    });
                    match verdict {
                        Verdict::Send => {}
                        Verdict::Slip => match ratelimit::slipped(reply) {
                            Some(slip) => *reply = slip,
                            None => {
                                limited += 1;
                                continue;
                            }
                        },
                        Verdict::Drop => {
                            limited += 1;
                            continue;
                        }
                    }
                }
                destinations.push(Some(*address));
                used += 1;
            }
            if limited > 0 && warned_limit.is_none_or(|at| at.elapsed() >= Duration::from_secs(60))
            {
                tracing::warn!(
                    rate_limit = limits.rate_limit,
                    dropped = limited,
                    "UDP responses over dns.rate_limit dropped (every rate_limit_slip-th sent truncated)"
                );
                warned_limit = Some(std::time::Instant::now());
            }
            self.send(fd, &mut send, &replies[..used], &destinations);
            if hits > 0 {
                self.handler.metrics.cached_answers(hits);
            }
        }
    }

    /// Sends the replies in as few calls as the kernel takes them; one that
    /// fails is skipped (a client that went away).
    fn send(
        &self,
        fd: i32,
        headers: &mut MultiHeaders<SockaddrStorage>,
        replies: &[Vec<u8>],
        destinations: &[Option<SockaddrStorage>],
    ) {
        // On the stack: at most a batch of replies.
        let slices: [[IoSlice<'_>; 1]; BATCH] =
            std::array::from_fn(|i| [IoSlice::new(replies.get(i).map_or(&[], Vec::as_slice))]);
        let count = replies.len().min(BATCH);
        let mut from = 0;
        while from < count {
            let none: [ControlMessage<'_>; 0] = [];
            match nix::sys::socket::sendmmsg(
                fd,
                headers,
                slices[from..count].iter(),
                &destinations[from..],
                none,
                MsgFlags::empty(),
            ) {
                Ok(sent) => {
                    let count = sent.count();
                    from += count.max(1);
                }
                Err(Errno::EINTR) => {}
                Err(_) => from += 1,
            }
        }
    }
}

/// A kernel socket address as a std one.
fn to_std(address: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = address.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*v4)));
    }
    address
        .as_sockaddr_in6()
        .map(|v6| SocketAddr::V6(SocketAddrV6::from(*v6)))
}

/// What a request not in the cache gets.
pub(super) enum Immediate {
    /// The response to send now, and what to cache, if it may be reused.
    Ready { bytes: Vec<u8>, keep: Option<Entry> },
    /// Nothing is sent (a response, or shorter than a header).
    Drop,
    /// The answer must wait (for Consul data or an upstream).
    Later(Box<Request>),
}

/// A cached response.
pub(super) struct Entry {
    /// The encoded responses without their ID, served in turn.
    variants: Box<[Variant]>,
    next: usize,
    /// The counters a response moves.
    counters: Box<[prometheus::IntCounter]>,
    /// The pairs the answer read, marked used on every reuse.
    uses: Box<[SlotUse]>,
}

impl Entry {
    /// Writes the next variant, with `packet`'s ID, into `reply`.
    fn serve(
        &mut self,
        packet: &[u8],
        moment: &mut Moment,
        reply: &mut Vec<u8>,
        view: &HealthView,
    ) {
        let variant = &self.variants[self.next % self.variants.len()];
        self.next = self.next.wrapping_add(1);
        reply.extend_from_slice(&packet[..2]);
        reply.extend_from_slice(&variant.bytes);
        if !variant.serials.is_empty() {
            let serial = moment.serial().to_be_bytes();
            for &at in &variant.serials {
                reply[at..at + 4].copy_from_slice(&serial);
            }
        }
        for counter in &self.counters {
            counter.inc();
        }
        view.touch(&self.uses, moment.at);
    }
}

/// The time of a batch of datagrams, read once for all of them.
pub(super) struct Moment {
    at: std::time::Instant,
    /// The SOA serial, read when a response first needs it.
    serial: Option<u32>,
}

impl Moment {
    pub(super) fn now() -> Self {
        Self {
            at: std::time::Instant::now(),
            serial: None,
        }
    }

    fn serial(&mut self) -> u32 {
        *self.serial.get_or_insert_with(unix_seconds)
    }
}

/// One encoded response.
struct Variant {
    /// The response from byte 2 on (after the ID).
    bytes: Box<[u8]>,
    /// Where SOA serials start in the full response.
    serials: Box<[usize]>,
}

/// A thread's responses for the current view generation: two segments,
/// so a full cache drops what was not asked for lately rather than
/// everything.
pub(super) struct Cache {
    generation: u64,
    recent: FxHashMap<Box<[u8]>, Entry>,
    older: FxHashMap<Box<[u8]>, Entry>,
}

impl Cache {
    pub(super) fn new() -> Self {
        Self {
            generation: u64::MAX,
            // Full size from the start and never reallocated: a flood of
            // new names costs no memory growth.
            recent: FxHashMap::with_capacity_and_hasher(SEGMENT, Default::default()),
            older: FxHashMap::with_capacity_and_hasher(SEGMENT, Default::default()),
        }
    }

    /// Forgets everything when the view moved on.
    pub(super) fn follow(&mut self, generation: u64) {
        if generation != self.generation {
            self.recent.clear();
            self.older.clear();
            self.generation = generation;
        }
    }

    /// Writes the cached response to `packet` into `reply`, if there is one.
    pub(super) fn answer(
        &mut self,
        packet: &[u8],
        moment: &mut Moment,
        reply: &mut Vec<u8>,
        view: &HealthView,
    ) -> bool {
        let key = &packet[2..];
        if let Some(entry) = self.recent.get_mut(key) {
            entry.serve(packet, moment, reply, view);
            return true;
        }
        let Some((key, mut entry)) = self.older.remove_entry(key) else {
            return false;
        };
        entry.serve(packet, moment, reply, view);
        self.put(key, entry);
        true
    }

    /// Keeps a response to `packet`.
    pub(super) fn insert(&mut self, packet: &[u8], entry: Entry) {
        if packet.len() <= MAX_KEY {
            self.put(packet[2..].into(), entry);
        }
    }

    fn put(&mut self, key: Box<[u8]>, entry: Entry) {
        if self.recent.len() >= SEGMENT {
            std::mem::swap(&mut self.recent, &mut self.older);
            self.recent.clear();
        }
        self.recent.insert(key, entry);
    }
}

impl DnsHandler {
    /// Answers a datagram not in the cache, as hickory-server would: too
    /// short is dropped, undecodable gets FORMERR without a question, a
    /// response is dropped (no reflection); the rest gets the answer logic.
    pub(super) fn respond_now(&self, packet: &[u8], source: SocketAddr) -> Immediate {
        let Ok(request) = Request::from_bytes(packet.to_vec(), source, Protocol::Udp) else {
            return super::formerr(packet).map_or(Immediate::Drop, |bytes| Immediate::Ready {
                bytes,
                keep: None,
            });
        };
        if request.metadata.message_type == hickory_proto::op::MessageType::Response {
            return Immediate::Drop;
        }
        let recorder = Recording::new(&self.view);
        let Some((prepared, answer)) = self.prepare_now(&request, &recorder) else {
            return Immediate::Later(Box::new(request));
        };
        self.count(&request, &prepared);
        let bytes = encode(&request, &prepared);
        let keep = match answer {
            Some(answer) if bytes.len() > 2 => {
                let mut variants = vec![variant(&bytes, &answer)];
                let settings = self.wire.get();
                for turn in 1..rotations(&answer) {
                    let mut rotated = answer.clone();
                    rotated.answers.rotate_left(turn);
                    let prepared = self.finish(&request, &settings, rotated.into(), Writer::Ours);
                    variants.push(variant(&encode(&request, &prepared), &answer));
                }
                let uses = recorder
                    .into_read()
                    .services
                    .iter()
                    .filter_map(|key| self.view.slot_use(key))
                    .collect();
                Some(Entry {
                    variants: variants.into(),
                    next: 1,
                    counters: self.counters(&request, &prepared).into(),
                    uses,
                })
            }
            _ => None,
        };
        Immediate::Ready { bytes, keep }
    }
}

/// How many rotations an answer gets: one per record, up to [`ROTATIONS`],
/// when every record has the same type (a CNAME and its target stay in
/// order).
fn rotations(answer: &Answer) -> usize {
    let records = &answer.answers;
    match records.first() {
        Some(first)
            if records
                .iter()
                .all(|r| r.record_type() == first.record_type()) =>
        {
            records.len().min(ROTATIONS)
        }
        _ => 1,
    }
}

/// A response kept for reuse, with where its SOA serials are.
fn variant(bytes: &[u8], answer: &Answer) -> Variant {
    let mut serials = Vec::new();
    for pattern in answer
        .answers
        .iter()
        .chain(&answer.authorities)
        .filter_map(soa_tail)
    {
        let mut from = 12;
        while let Some(at) = bytes[from..]
            .windows(pattern.len())
            .position(|w| w == pattern)
        {
            serials.push(from + at);
            from += at + pattern.len();
        }
    }
    serials.sort_unstable();
    serials.dedup();
    Variant {
        bytes: bytes[2..].into(),
        serials: serials.into(),
    }
}

/// The last 20 bytes of an SOA record's data (serial, refresh, retry,
/// expire, minimum) as encoded.
fn soa_tail(record: &Record) -> Option<[u8; 20]> {
    if record.record_type() != RecordType::SOA {
        return None;
    }
    let RData::SOA(soa) = &record.data else {
        return None;
    };
    let mut tail = [0u8; 20];
    tail[..4].copy_from_slice(&soa.serial.to_be_bytes());
    tail[4..8].copy_from_slice(&soa.refresh.to_be_bytes());
    tail[8..12].copy_from_slice(&soa.retry.to_be_bytes());
    tail[12..16].copy_from_slice(&soa.expire.to_be_bytes());
    tail[16..].copy_from_slice(&soa.minimum.to_be_bytes());
    Some(tail)
}

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;
