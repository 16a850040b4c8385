//! DNS serving: hickory-server on UDP and TCP, with a request handler that
//! applies the protocol rules (RFC 1035, 2308, 6891, 8914) around the pure
//! answer logic in [`crate::resolve`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwap, ArcSwapOption};
use hickory_proto::ProtoError;
use hickory_proto::op::{
    Edns, EmitAndCount, Header, MessageType, Metadata, OpCode, ResponseCode, emit_message_parts,
};
use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
use hickory_proto::rr::{Record, RecordType};
use hickory_proto::serialize::binary::{
    BinDecodable, BinDecoder, BinEncodable, BinEncoder, NameEncoding,
};
use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponseBuilder, Queries};
use tokio::net::{TcpListener, UdpSocket};

use crate::health::{HealthLookup, HealthView, ServiceKey};
use crate::metrics::Metrics;
use crate::resolve::{Answer, Context, EDE_OTHER, Kind, Needs, Outcome, Question, Resolver, Trace};
use crate::upstream::{EDE_NO_REACHABLE_AUTHORITY, Upstream};

/// The EDNS option code of Extended DNS Errors (RFC 8914).
const EDNS_EXTENDED_ERROR: u16 = 15;
/// The UDP limit without EDNS (RFC 1035 §4.2.1).
const PLAIN_UDP_LIMIT: usize = 512;

/// Starts watches for data a question needs (implemented by the Consul
/// watcher; a no-op in tests that feed the view directly).
pub trait WatchDemand: Send + Sync {
    /// Makes sure a watch for the pair runs; `false` when none runs and
    /// the watch limit (`consul.max_watches`) refused to start one.
    fn ensure_service(&self, key: &ServiceKey) -> bool;
    /// Makes sure the catalog of the datacenter is watched.
    fn ensure_catalog(&self, datacenter: &str);
}

/// DNS protocol settings the handler applies.
#[derive(Clone, Copy, Debug)]
pub struct WireSettings {
    /// The EDNS payload size advertised and the UDP limit's upper bound.
    pub udp_payload: u16,
    /// At most this many answers per UDP response (0: no cap).
    pub udp_answer_limit: usize,
    /// How long a query may wait for data not synced yet, and for a
    /// relayed answer.
    pub first_answer_wait: Duration,
    /// Where names in the zone the resolver does not answer itself are
    /// relayed (`dns.upstream`, the Consul agent's DNS), if anywhere.
    pub upstream: Option<SocketAddr>,
    /// UDP responses a second per client network (0: no limit).
    pub rate_limit: u32,
    /// Every this many responses over the limit, one goes out truncated
    /// (0: all dropped).
    pub rate_limit_slip: u32,
}

/// An answer, with the AA bit of a relayed one.
struct Reply {
    answer: Answer,
    /// AA as the upstream set it; `None` for answers of our own.
    upstream_authoritative: Option<bool>,
}

impl From<Answer> for Reply {
    fn from(answer: Answer) -> Self {
        Self {
            answer,
            upstream_authoritative: None,
        }
    }
}

/// One pass of the answer logic.
enum Step {
    /// The answer.
    Done(Answer),
    /// Data is missing; its watches are started.
    Wait(Needs),
    /// The name is relayed upstream.
    Forward(Kind),
}

/// The protocol settings in force; a reload replaces them while the
/// handler serves.
pub struct Wire {
    settings: ArcSwap<WireSettings>,
    upstream: ArcSwapOption<Upstream>,
    /// `dns.allow`: the clients answered; empty, every one.
    allow: ArcSwap<Vec<ipnet::IpNet>>,
}

impl Wire {
    fn new(settings: WireSettings) -> Self {
        Self {
            upstream: ArcSwapOption::from(settings.upstream.map(|a| Arc::new(Upstream::new(a)))),
            settings: ArcSwap::from_pointee(settings),
            allow: ArcSwap::from_pointee(Vec::new()),
        }
    }

    /// Answers only these clients from the next query on (`dns.allow`;
    /// empty: every client).
    pub fn set_allow(&self, allow: Vec<ipnet::IpNet>) {
        self.allow.store(Arc::new(allow));
    }

    /// Whether a client at `ip` is answered.
    pub(crate) fn allows(&self, ip: std::net::IpAddr) -> bool {
        allowed(&self.allow.load(), ip)
    }

    /// Puts new settings in force for the next queries.
    pub fn set(&self, settings: WireSettings) {
        if self.settings.load().upstream != settings.upstream {
            self.upstream
                .store(settings.upstream.map(|a| Arc::new(Upstream::new(a))));
        }
        self.settings.store(Arc::new(settings));
    }

    fn get(&self) -> WireSettings {
        **self.settings.load()
    }
}

/// Whether `ip` is in `allow` (empty: every address is). An IPv4 client
/// seen through an IPv6 socket (`::ffff:a.b.c.d`) counts as IPv4.
pub(crate) fn allowed(allow: &[ipnet::IpNet], ip: std::net::IpAddr) -> bool {
    let ip = ip.to_canonical();
    allow.is_empty() || allow.iter().any(|net| net.contains(&ip))
}

/// The request handler shared by every listener.
#[derive(Clone)]
pub struct DnsHandler {
    resolver: Arc<ArcSwap<Resolver>>,
    view: Arc<HealthView>,
    demand: Arc<dyn WatchDemand>,
    metrics: Metrics,
    wire: Arc<Wire>,
}

impl DnsHandler {
    /// A handler answering from `view` with the given resolver.
    pub fn new(
        resolver: Arc<ArcSwap<Resolver>>,
        view: Arc<HealthView>,
        demand: Arc<dyn WatchDemand>,
        metrics: Metrics,
        settings: WireSettings,
    ) -> Self {
        Self {
            resolver,
            view,
            demand,
            metrics,
            wire: Arc::new(Wire::new(settings)),
        }
    }

    /// The settings in force, to replace on reload.
    pub fn wire(&self) -> Arc<Wire> {
        Arc::clone(&self.wire)
    }

    /// One pass of the answer logic over `view`: starts the watches the
    /// answer or the question needs, without waiting for them.
    fn step(&self, question: &Question, view: &impl HealthLookup, rng: &mut fastrand::Rng) -> Step {
        let resolver = self.resolver.load();
        let outcome = resolver.resolve(
            question,
            view,
            &mut Context {
                serial: unix_seconds(),
                rng,
                now: monotonic(),
                trace: None,
            },
        );
        match outcome {
            Outcome::Answer(answer) => {
                for key in &answer.warm {
                    self.demand.ensure_service(key);
                }
                Step::Done(answer)
            }
            Outcome::Forward(kind) => Step::Forward(kind),
            Outcome::Pending(needs) => {
                for key in &needs.services {
                    if !self.demand.ensure_service(key) {
                        return Step::Done(Answer::servfail(
                            needs.kind,
                            EDE_OTHER,
                            format!(
                                "not watching {} in {}: the watch limit consul.max_watches is reached",
                                key.service, key.datacenter
                            ),
                        ));
                    }
                }
                for dc in &needs.catalogs {
                    self.demand.ensure_catalog(dc);
                }
                Step::Wait(needs)
            }
        }
    }

    /// Resolves, starting watches and waiting up to `first_answer_wait`
    /// for data that is not synced yet; then SERVFAIL with EDE "Not Ready".
    /// Names to forward are relayed to the upstream within the same time.
    async fn answer(&self, question: &Question, over_tcp: bool, client_edns: bool) -> Reply {
        let deadline = tokio::time::Instant::now() + self.wire.get().first_answer_wait;
        let mut rng = fastrand::Rng::new();
        loop {
            // Register for change notifications before reading the view,
            // so an update between the read and the wait is not missed.
            let changed = self.view.changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match self.step(question, &*self.view, &mut rng) {
                Step::Done(answer) => return answer.into(),
                Step::Forward(kind) => {
                    return self
                        .forward(question, kind, over_tcp, client_edns, deadline)
                        .await;
                }
                Step::Wait(needs) => {
                    if tokio::time::timeout_at(deadline, changed).await.is_err() {
                        return Answer::not_ready(&needs).into();
                    }
                }
            }
        }
    }

    /// Relays `question` to the upstream by `deadline`: its RCODE, AA bit
    /// and records (its OPT record aside), or SERVFAIL with an Extended
    /// DNS Error naming the upstream.
    async fn forward(
        &self,
        question: &Question,
        kind: Kind,
        over_tcp: bool,
        client_edns: bool,
        deadline: tokio::time::Instant,
    ) -> Reply {
        let Some(upstream) = self.wire.upstream.load_full() else {
            // The resolver forwards only when dns.upstream is set; a
            // handler built without one says so rather than guess.
            return Answer::servfail(
                kind,
                EDE_NO_REACHABLE_AUTHORITY,
                "no dns.upstream to relay to".to_owned(),
            )
            .into();
        };
        let edns_payload = client_edns.then_some(self.wire.get().udp_payload);
        let reply = match upstream
            .relay(question, over_tcp, edns_payload, deadline)
            .await
        {
            Ok(reply) => reply,
            Err(error) => {
                return Answer::servfail(kind, error.extended_error_code(), error.to_string())
                    .into();
            }
        };
        let mut rcode = reply.metadata.response_code;
        if !client_edns && rcode.high() > 0 {
            // An extended RCODE needs an OPT record the client cannot read.
            rcode = ResponseCode::ServFail;
        }
        // The upstream's own Extended DNS Error, if it gave one.
        let extended_error = reply
            .edns
            .as_ref()
            .and_then(|e| e.option(EdnsCode::Unknown(EDNS_EXTENDED_ERROR)))
            .and_then(|option| match option {
                EdnsOption::Unknown(_, data) if data.len() >= 2 => Some((
                    u16::from_be_bytes([data[0], data[1]]),
                    String::from_utf8_lossy(&data[2..]).into_owned(),
                )),
                _ => None,
            });
        let mut answer = Answer::servfail(kind, 0, String::new());
        answer.rcode = rcode;
        answer.extended_error = extended_error;
        answer.answers = reply.answers;
        answer.authorities = reply.authorities;
        answer.additionals = reply
            .additionals
            .into_iter()
            .filter(|r| r.record_type() != RecordType::OPT)
            .collect();
        Reply {
            answer,
            upstream_authoritative: Some(reply.metadata.authoritative),
        }
    }
}

/// Time since the first call, from a monotonic clock.
/// Resolves `name` (`qtype`, class IN) from `view` as a query would,
/// recording how the answer was chosen; starts no watch. For
/// `/v1/explain` and the failover monitor.
pub(crate) fn resolve_traced(
    resolver: &Resolver,
    view: &impl HealthLookup,
    name: hickory_proto::rr::Name,
    qtype: RecordType,
) -> (Outcome, Trace) {
    let question = Question {
        name,
        qtype,
        qclass: hickory_proto::rr::DNSClass::IN,
    };
    let mut trace = Trace::default();
    let outcome = resolver.resolve(
        &question,
        view,
        &mut Context {
            serial: unix_seconds(),
            rng: &mut fastrand::Rng::new(),
            now: monotonic(),
            trace: Some(&mut trace),
        },
    );
    (outcome, trace)
}

pub(crate) fn monotonic() -> Duration {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(std::time::Instant::now).elapsed()
}

pub(crate) fn unix_seconds() -> u32 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // SOA serials are 32-bit sequence numbers (RFC 1982): wrap.
    (secs & u64::from(u32::MAX)) as u32
}

/// The RCODE as a metric label.
pub(crate) fn rcode_label(rcode: ResponseCode) -> &'static str {
    match rcode {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::BADVERS => "BADVERS",
        _ => "OTHER",
    }
}

/// The question section of our responses: the request's own bytes
/// (which keeps the client's 0x20 case), with every suffix of the first
/// name registered for compression, so the answers' owner names become
/// pointers to it (`c00c` for the question name itself).
///
/// hickory-server's own question writer registers one candidate that
/// spans the whole section, type and class included; no name ever
/// matches it, and every response carried its first owner name in full.
struct RawQuestion<'a> {
    bytes: &'a [u8],
    count: usize,
    writer: Writer,
}

/// Who writes a response: [`encode`] (TCP and the UDP fast path), or
/// hickory-server's UDP loop (`dns.udp_fast_path = false`), whose
/// question writer gives no compression. Truncation measures the
/// response the writer will send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Writer {
    /// [`encode`]: owner names point to the question.
    Ours,
    /// hickory-server's `MessageResponse`.
    Hickory,
}

impl<'a> RawQuestion<'a> {
    /// The question of `request`, as `writer` writes it.
    fn of(request: &'a Request, writer: Writer) -> Self {
        Self {
            bytes: request.queries.as_bytes(),
            count: request.queries.len(),
            writer,
        }
    }
}

impl EmitAndCount for RawQuestion<'_> {
    fn emit(&mut self, encoder: &mut BinEncoder<'_>) -> Result<usize, ProtoError> {
        let start = encoder.offset();
        encoder.emit_vec(self.bytes)?;
        if !matches!(encoder.name_encoding(), NameEncoding::Compressed) || self.count == 0 {
            return Ok(self.count);
        }
        match self.writer {
            Writer::Ours => {
                if let Some((labels, end)) = name_labels(self.bytes) {
                    // As hickory-proto's name writer stores them: from a
                    // label's start to just before the root's zero byte.
                    for label in labels {
                        encoder.store_label_pointer(start + label, start + end);
                    }
                }
            }
            Writer::Hickory => encoder.store_label_pointer(start, start + self.bytes.len()),
        }
        Ok(self.count)
    }
}

/// Where the labels of the uncompressed name at the start of `bytes`
/// begin, and where its terminating zero is; `None` for a name with a
/// pointer or a reserved label type, or one cut short.
fn name_labels(bytes: &[u8]) -> Option<(Vec<usize>, usize)> {
    let mut labels = Vec::new();
    let mut at = 0;
    loop {
        let length = *bytes.get(at)?;
        match length {
            0 => return Some((labels, at)),
            1..=63 if at + 1 + usize::from(length) < bytes.len() => {
                labels.push(at);
                at += 1 + usize::from(length);
            }
            _ => return None,
        }
    }
}

/// The encoded size of a response with these sections.
fn encoded_len(
    writer: Writer,
    metadata: &Metadata,
    request: &Request,
    answers: &[Record],
    authorities: &[Record],
    additionals: &[Record],
    edns: Option<&Edns>,
) -> usize {
    let mut buffer = Vec::with_capacity(1500);
    let mut encoder = BinEncoder::new(&mut buffer);
    let result = emit_message_parts(
        metadata,
        &mut RawQuestion::of(request, writer),
        &mut answers.iter(),
        &mut authorities.iter(),
        &mut additionals.iter(),
        edns,
        None,
        &mut encoder,
    );
    match result {
        Ok(_) => buffer.len(),
        Err(_) => usize::MAX,
    }
}

/// The largest `n` in `0..=max` for which `fits(n)` holds, given that
/// `fits` is monotone and `fits(0)` is assumed.
fn largest_fitting(max: usize, fits: impl Fn(usize) -> bool) -> usize {
    let (mut low, mut high) = (0, max);
    while low < high {
        let mid = (low + high).div_ceil(2);
        if fits(mid) { low = mid } else { high = mid - 1 }
    }
    low
}

/// A response worked out for a request, ready to encode.
pub(crate) enum Prepared {
    /// An error with no records (NOTIMP, BADVERS, FORMERR).
    Error {
        /// The RCODE.
        code: ResponseCode,
        /// Our OPT record, if the request had one.
        edns: Option<Edns>,
        /// Whether the question goes back as it came (not when its bytes
        /// hold a compression pointer: in the reply it would point into
        /// a different header).
        echo: bool,
    },
    /// An answer of ours or a relayed one.
    Answer(Box<Response>),
}

/// An answer with its header and OPT record, truncated for the transport.
pub(crate) struct Response {
    metadata: Metadata,
    answer: Answer,
    edns: Option<Edns>,
}

/// Whether the same request may get the same bytes until the view
/// changes: the answer depends on the view alone (not on the clock, an
/// upstream, stale data or watches still to start).
fn reusable(answer: &Answer) -> bool {
    !answer.stale
        && !answer.volatile
        && answer.extended_error.is_none()
        && answer.warm.is_empty()
        && answer.kind != Kind::OutOfZone
}

impl DnsHandler {
    /// The question of a request that gets an answer, or the error it gets.
    fn check(&self, request: &Request, settings: &WireSettings) -> Result<Question, Prepared> {
        // RFC 6891 §6.1.1: answer an OPT with an OPT advertising our size.
        let edns = our_edns(request, settings);
        if !self.wire.allows(request.src().ip()) {
            return Err(Prepared::Error {
                code: ResponseCode::Refused,
                edns,
                echo: !compressed(request.queries.as_bytes()),
            });
        }
        // A question is the message's first name: nothing before it to
        // point to but the header. Not a query anyone sends, and not one
        // to echo.
        let echo = !compressed(request.queries.as_bytes());
        let code = if request.metadata.op_code != OpCode::Query {
            ResponseCode::NotImp
        } else if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            // RFC 6891 §6.1.3.
            ResponseCode::BADVERS
        } else if !echo {
            ResponseCode::FormErr
        } else {
            match request.request_info() {
                Ok(info) => {
                    let original = info.query.original();
                    return Ok(Question {
                        name: original.name().clone(),
                        qtype: original.query_type(),
                        qclass: original.query_class(),
                    });
                }
                Err(_) => ResponseCode::FormErr,
            }
        };
        Err(Prepared::Error { code, edns, echo })
    }

    /// The response to a request, waiting for data or an upstream if the
    /// answer needs them, to be sent by `writer`.
    pub(crate) async fn prepare(&self, request: &Request, writer: Writer) -> Prepared {
        let settings = self.wire.get();
        let question = match self.check(request, &settings) {
            Ok(question) => question,
            Err(error) => return error,
        };
        let udp = request.protocol() == Protocol::Udp;
        let reply = self.answer(&question, !udp, request.edns.is_some()).await;
        self.finish(request, &settings, reply, writer)
    }

    /// The response to a request if one pass of the answer logic over
    /// `view` gives it (no waiting, no relaying), with the answer before
    /// truncation when it may be reused (to build rotations from).
    fn prepare_now(
        &self,
        request: &Request,
        view: &impl HealthLookup,
    ) -> Option<(Prepared, Option<Answer>)> {
        let settings = self.wire.get();
        let question = match self.check(request, &settings) {
            Ok(question) => question,
            Err(error) => return Some((error, None)),
        };
        match self.step(&question, view, &mut fastrand::Rng::new()) {
            Step::Done(answer) => {
                let copy = reusable(&answer).then(|| answer.clone());
                Some((
                    self.finish(request, &settings, answer.into(), Writer::Ours),
                    copy,
                ))
            }
            Step::Wait(_) | Step::Forward(_) => None,
        }
    }

    /// Applies the protocol rules to an answer: header, Extended DNS
    /// Error, the UDP answer limit and truncation to the client's size,
    /// as `writer` will encode the response.
    fn finish(
        &self,
        request: &Request,
        settings: &WireSettings,
        reply: Reply,
        writer: Writer,
    ) -> Prepared {
        let Reply {
            mut answer,
            upstream_authoritative,
        } = reply;
        let mut edns = our_edns(request, settings);
        let udp = request.protocol() == Protocol::Udp;
        let limit = match (&request.edns, udp) {
            (_, false) => usize::from(u16::MAX),
            (Some(req), true) => {
                usize::from(req.max_payload().min(settings.udp_payload)).max(PLAIN_UDP_LIMIT)
            }
            (None, true) => PLAIN_UDP_LIMIT,
        };
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.response_code = answer.rcode;
        metadata.authoritative = upstream_authoritative.unwrap_or(answer.kind != Kind::OutOfZone);
        metadata.recursion_available = false;
        if let (Some(e), Some((code, text))) = (edns.as_mut(), &answer.extended_error) {
            let mut data = code.to_be_bytes().to_vec();
            data.extend_from_slice(text.as_bytes());
            e.options_mut()
                .insert(EdnsOption::Unknown(EDNS_EXTENDED_ERROR, data));
        }
        if udp && settings.udp_answer_limit > 0 && answer.answers.len() > settings.udp_answer_limit
        {
            answer.answers.truncate(settings.udp_answer_limit);
            metadata.truncation = true;
        }
        // RFC 2181 §9 and RFC 6891 §7: what does not fit goes, the OPT
        // record stays, and TC is set when answers were cut.
        let size = |answers: usize, additionals: usize| {
            encoded_len(
                writer,
                &metadata,
                request,
                &answer.answers[..answers],
                &answer.authorities,
                &answer.additionals[..additionals],
                edns.as_ref(),
            )
        };
        let (all_answers, all_additionals) = (answer.answers.len(), answer.additionals.len());
        if size(all_answers, all_additionals) > limit {
            if size(all_answers, 0) <= limit {
                let keep = largest_fitting(all_additionals, |n| size(all_answers, n) <= limit);
                answer.additionals.truncate(keep);
            } else {
                let keep = largest_fitting(all_answers, |n| size(n, 0) <= limit);
                answer.answers.truncate(keep);
                answer.additionals.clear();
                metadata.truncation = true;
            }
        }
        Prepared::Answer(Box::new(Response {
            metadata,
            answer,
            edns,
        }))
    }

    /// The counters one response moves.
    fn counters(&self, request: &Request, prepared: &Prepared) -> Vec<prometheus::IntCounter> {
        let qtype = request
            .queries
            .queries()
            .first()
            .map_or("none", |q| crate::metrics::qtype_label(q.query_type()));
        match prepared {
            Prepared::Error { code, .. } => {
                vec![
                    self.metrics
                        .query_counter(qtype, rcode_label(*code), "invalid"),
                ]
            }
            Prepared::Answer(response) => {
                let answer = &response.answer;
                let mut counters = vec![self.metrics.query_counter(
                    qtype,
                    rcode_label(answer.rcode),
                    answer.kind.label(),
                )];
                if let (Some(query), Some(dc)) = (&answer.query, &answer.datacenter) {
                    counters.push(self.metrics.answer_counter(query, dc));
                }
                counters
            }
        }
    }

    /// Counts one response sent.
    fn count(&self, request: &Request, prepared: &Prepared) {
        if let Prepared::Answer(response) = prepared {
            if response.answer.stale {
                self.metrics.stale_answer();
            }
        }
        for counter in self.counters(request, prepared) {
            counter.inc();
        }
    }
}

/// Our OPT record for a request that had one.
fn our_edns(request: &Request, settings: &WireSettings) -> Option<Edns> {
    request.edns.as_ref().map(|_| {
        let mut e = Edns::new();
        e.set_max_payload(settings.udp_payload);
        e
    })
}

/// Whether question bytes hold a compression pointer (or a reserved
/// label type).
fn compressed(questions: &[u8]) -> bool {
    let mut at = 0;
    while let Some(&length) = questions.get(at) {
        if length & 0xc0 != 0 {
            return true;
        }
        // The end of a name: skip its type and class.
        at += if length == 0 {
            5
        } else {
            1 + usize::from(length)
        };
    }
    false
}

/// An empty question section.
fn no_question() -> Queries {
    Queries::read(&mut BinDecoder::new(&[]), 0)
        .unwrap_or_else(|_| unreachable!("nothing to decode"))
}

/// An error response to `request`, with the question it came with if
/// `echo`, else none.
fn error_response<'a>(
    request: &'a Request,
    code: ResponseCode,
    edns: Option<&'a Edns>,
    echo: bool,
    none: &'a Queries,
) -> hickory_server::zone_handler::MessageResponse<
    'a,
    'a,
    impl Iterator<Item = &'a Record> + Send + 'a,
    impl Iterator<Item = &'a Record> + Send + 'a,
    impl Iterator<Item = &'a Record> + Send + 'a,
    impl Iterator<Item = &'a Record> + Send + 'a,
> {
    let mut builder = if echo {
        MessageResponseBuilder::from_message_request(request)
    } else {
        MessageResponseBuilder::new(none, None)
    };
    if let Some(e) = edns {
        builder.edns(e);
    }
    builder.error_msg(&request.metadata, code)
}

/// The most a response to `request` may hold: over TCP 65535; over UDP
/// the client's EDNS payload within ours (`ours`, our OPT record), at
/// least 512, and 512 without EDNS.
fn size_limit(request: &Request, ours: Option<&Edns>) -> u16 {
    if request.protocol() != Protocol::Udp {
        return u16::MAX;
    }
    match (&request.edns, ours) {
        (Some(theirs), Some(ours)) => theirs
            .max_payload()
            .min(ours.max_payload())
            .max(PLAIN_UDP_LIMIT as u16),
        _ => PLAIN_UDP_LIMIT as u16,
    }
}

/// FORMERR for a message whose header decodes but whose body does not,
/// the way hickory-server answers it: the header's ID, opcode and RD, no
/// question, no OPT record. Shorter than a header, or a response (QR=1,
/// which hickory-server's own loop answers too): nothing, so a forged
/// source address gets nothing reflected to it.
fn formerr(message: &[u8]) -> Option<Vec<u8>> {
    let header = Header::read(&mut BinDecoder::new(message)).ok()?;
    if header.metadata.message_type == MessageType::Response {
        return None;
    }
    let none = no_question();
    let mut bytes = Vec::with_capacity(12);
    let mut encoder = BinEncoder::new(&mut bytes);
    encoder.set_max_size(512);
    MessageResponseBuilder::new(&none, None)
        .error_msg(&header.metadata, ResponseCode::FormErr)
        .destructive_emit(&mut encoder)
        .ok()?;
    Some(bytes)
}

/// Encodes a response as hickory-server does: within what the transport
/// and the client take ([`size_limit`]), SERVFAIL if it cannot be
/// encoded.
fn encode(request: &Request, prepared: &Prepared) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(512);
    let mut encoder = BinEncoder::new(&mut bytes);
    let result = match prepared {
        Prepared::Error { code, edns, echo } => {
            let limit = size_limit(request, edns.as_ref());
            encoder.set_max_size(limit);
            let none = no_question();
            let sent = error_response(request, *code, edns.as_ref(), *echo, &none)
                .destructive_emit(&mut encoder);
            if sent.is_ok() || !*echo {
                sent
            } else {
                // The question echoed does not fit (two long names): the
                // error goes without it, as RFC 1035 allows.
                drop(encoder);
                bytes.clear();
                encoder = BinEncoder::new(&mut bytes);
                encoder.set_max_size(limit);
                error_response(request, *code, edns.as_ref(), false, &none)
                    .destructive_emit(&mut encoder)
            }
            .map(|_| ())
        }
        Prepared::Answer(response) => {
            encoder.set_max_size(size_limit(request, response.edns.as_ref()));
            let answer = &response.answer;
            emit_message_parts(
                &response.metadata,
                &mut RawQuestion::of(request, Writer::Ours),
                &mut answer.answers.iter(),
                &mut answer.authorities.iter(),
                &mut answer.additionals.iter(),
                response.edns.as_ref(),
                None,
                &mut encoder,
            )
            .map(|_| ())
        }
    };
    if let Err(error) = result {
        tracing::error!(%error, "cannot encode a DNS response; answering SERVFAIL");
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.response_code = ResponseCode::ServFail;
        bytes.clear();
        let mut encoder = BinEncoder::new(&mut bytes);
        let header = Header {
            metadata,
            counts: Default::default(),
        };
        if header.emit(&mut encoder).is_err() {
            bytes.clear();
        }
    }
    bytes
}

#[async_trait::async_trait]
impl RequestHandler for DnsHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let prepared = self.prepare(request, Writer::Hickory).await;
        self.count(request, &prepared);
        let sent = match &prepared {
            Prepared::Error { code, edns, echo } => {
                let none = no_question();
                response
                    .send_response(error_response(request, *code, edns.as_ref(), *echo, &none))
                    .await
            }
            Prepared::Answer(prepared) => {
                let mut builder = MessageResponseBuilder::from_message_request(request);
                if let Some(e) = &prepared.edns {
                    builder.edns(e);
                }
                let answer = &prepared.answer;
                let message = builder.build(
                    prepared.metadata,
                    answer.answers.iter(),
                    answer.authorities.iter(),
                    std::iter::empty(),
                    answer.additionals.iter(),
                );
                response.send_response(message).await
            }
        };
        sent.unwrap_or_else(|error| {
            tracing::warn!(%error, "failed to send a DNS response");
            let mut metadata = Metadata::response_from_request(&request.metadata);
            metadata.response_code = ResponseCode::ServFail;
            Header {
                metadata,
                counts: Default::default(),
            }
            .into()
        })
    }
}

/// A bind failure, naming the address.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for DNS on {protocol} {address}: {source}")]
pub struct ServeError {
    /// "UDP" or "TCP".
    pub protocol: &'static str,
    /// The address.
    pub address: SocketAddr,
    /// Why.
    pub source: std::io::Error,
}

/// The DNS listeners of a running server.
pub struct Listeners {
    /// hickory-server: UDP when the fast path is off (TCP is ours, see
    /// `tcp`); its shutdown token stops our TCP listeners too.
    pub server: Server<DnsHandler>,
    /// The addresses bound (UDP and TCP on each).
    pub bound: Vec<SocketAddr>,
    /// The UDP fast-path threads, when on.
    fast: Vec<fast::FastPath>,
}

impl Listeners {
    /// Stops the UDP fast-path threads (hickory-server stops through its
    /// own shutdown token).
    pub fn stop_fast_path(&mut self) {
        for fast in self.fast.drain(..) {
            fast.stop();
        }
    }
}

/// How UDP is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UdpMode {
    /// hickory-server's own UDP loop (`dns.udp_fast_path = false`).
    Hickory,
    /// The fast path with this many threads (and sockets) per address.
    Fast(usize),
}

impl UdpMode {
    /// The fast path with `threads` threads (0: [`default_udp_threads`]),
    /// or hickory-server's loop.
    pub fn from_config(fast_path: bool, threads: usize) -> Self {
        match (fast_path, threads) {
            (false, _) => Self::Hickory,
            (true, 0) => Self::Fast(default_udp_threads(
                std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            )),
            (true, n) => Self::Fast(n),
        }
    }
}

/// The fast path's threads when `dns.udp_threads` is 0: one per two of
/// the host's `cores`, at least one. A stub shares its host with the
/// programs it answers and the forwarder in front of it, and fewer threads
/// take fewer wake-ups per query: on 2 cores, one thread answered 135–145k
/// qps at saturation for 5.6–5.9 µs of CPU each, two threads 109–122k at
/// 7.3–8.2 µs (`benches/load.sh`, same runs).
pub fn default_udp_threads(cores: usize) -> usize {
    cores.div_ceil(2).max(1)
}

/// Binds the fast path's UDP sockets on `address` and the TCP listener on
/// the same port (for port 0, a port free for both).
fn bind_fast(
    address: SocketAddr,
    threads: usize,
) -> Result<(Vec<std::net::UdpSocket>, SocketAddr, TcpListener), ServeError> {
    let mut attempts = 0;
    loop {
        let (sockets, local) = fast::bind(address, threads).map_err(|source| ServeError {
            protocol: "UDP",
            address,
            source,
        })?;
        attempts += 1;
        let tcp = std::net::TcpListener::bind(local)
            .and_then(|tcp| {
                tcp.set_nonblocking(true)?;
                TcpListener::from_std(tcp)
            })
            .map_err(|source| ServeError {
                protocol: "TCP",
                address: local,
                source,
            });
        match tcp {
            Ok(tcp) => return Ok((sockets, local, tcp)),
            // A port picked by the kernel may be taken for TCP: pick again.
            Err(_) if address.port() == 0 && attempts < 20 => {}
            Err(error) => return Err(error),
        }
    }
}

/// Binds UDP and TCP on every address and returns the running listeners.
pub async fn serve(
    handler: DnsHandler,
    listen: &[SocketAddr],
    tcp_settings: TcpSettings,
    udp: UdpMode,
) -> Result<Listeners, ServeError> {
    let shared = Arc::new(handler.clone());
    let mut server = Server::new(handler);
    let mut bound = Vec::new();
    let mut fast = Vec::new();
    for address in listen {
        let (local, tcp) =
            match udp {
                UdpMode::Hickory => {
                    let socket = UdpSocket::bind(address)
                        .await
                        .map_err(|source| ServeError {
                            protocol: "UDP",
                            address: *address,
                            source,
                        })?;
                    let local = socket.local_addr().map_err(|source| ServeError {
                        protocol: "UDP",
                        address: *address,
                        source,
                    })?;
                    server.register_socket(socket);
                    // Port 0 binds TCP on the port UDP got.
                    let tcp = TcpListener::bind(local)
                        .await
                        .map_err(|source| ServeError {
                            protocol: "TCP",
                            address: local,
                            source,
                        })?;
                    (local, tcp)
                }
                UdpMode::Fast(threads) => {
                    let (sockets, local, tcp) = bind_fast(*address, threads)?;
                    let runtime = tokio::runtime::Handle::current();
                    fast.push(fast::FastPath::start(&shared, sockets, &runtime).map_err(
                        |source| ServeError {
                            protocol: "UDP",
                            address: local,
                            source,
                        },
                    )?);
                    (local, tcp)
                }
            };
        tokio::spawn(tcp::serve(
            tcp,
            Arc::clone(&shared),
            tcp_settings,
            server.shutdown_token().clone(),
        ));
        bound.push(local);
    }
    Ok(Listeners {
        server,
        bound,
        fast,
    })
}

mod fast;
#[doc(hidden)]
pub mod fuzzing;
mod ratelimit;
mod tcp;

pub use tcp::TcpSettings;

#[cfg(test)]
mod tests;
