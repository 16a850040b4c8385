//! Property tests of the UDP request path (issue 8): generated and mutated
//! datagrams — random bytes, cut headers and names, compression loops and
//! forward pointers, 255-byte names, 0 or 2 questions, every opcode and
//! class, OPT twice or with bad lengths, EDNS version 1, QR=1 — go through
//! the fast path's own code (cache lookup, then the answer logic) many
//! times over, and a sample of them through both UDP paths on sockets.
//!
//! Rules (DESIGN §2, RFC 1035, 6891): no panic; QR=1 and datagrams
//! shorter than a header get no reply; a reply has the query's ID, QR
//! set, and fits the client's payload (512 without EDNS); undecodable
//! datagrams get FORMERR; QDCOUNT ≠ 1 gets FORMERR; an opcode other than
//! QUERY gets NOTIMP; EDNS version > 0 gets BADVERS; a class other than
//! IN gets REFUSED; a question whose name is compressed (it can only
//! point into the header) gets FORMERR without it; the question comes
//! back byte for byte; OPT in the
//! reply only when the query had one; a cached reply keeps every rule.

use std::net::SocketAddr;
use std::sync::Arc;

use hickory_proto::op::{Message, OpCode, ResponseCode};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use tokio::net::UdpSocket;

use super::tests::{compare, exchange, handler, start, view};
use super::{Cache, Immediate};
use crate::dns::UdpMode;
use crate::health::HealthView;
use crate::metrics::Metrics;

/// Names the view answers, and some it does not.
const NAMES: &[&str] = &[
    "web.query.consul",
    "WeB.QuErY.CoNsUl",
    "big.service.consul",
    "_web._tcp.query.consul",
    "primary.tagged.service.consul",
    "web-1.node.consul",
    "0a010001.addr.dc1.consul",
    "fo.query.consul",
    "host.query.consul",
    "six.query.consul",
    "later.query.consul",
    "query.consul",
    "consul",
    "nope.query.consul",
    "example.com",
];

/// Record types worth asking for, and any other number.
fn qtype() -> impl Strategy<Value = u16> {
    prop_oneof![
        4 => prop::sample::select(vec![1u16, 28, 33, 255, 6, 2, 5, 16, 15, 41, 252, 251]),
        1 => any::<u16>(),
    ]
}

/// Classes: IN mostly, then CH, HS, NONE, ANY and any other.
fn qclass() -> impl Strategy<Value = u16> {
    prop_oneof![
        6 => Just(1u16),
        1 => prop::sample::select(vec![3u16, 4, 254, 255]),
        1 => any::<u16>(),
    ]
}

/// An owner name on the wire.
#[derive(Clone, Debug)]
enum WireName {
    /// One of [`NAMES`], in labels.
    Known(&'static str),
    /// Random labels (long ones too), maybe past 255 bytes in all.
    Labels(Vec<Vec<u8>>),
    /// A pointer to offset 12: the question's own start (a loop).
    SelfPointer,
    /// A pointer past the end of the message.
    Forward(u16),
    /// A label, then a pointer to that label (a loop of two).
    Loop,
    /// A label longer than 63 (the 0x40 / 0x80 prefixes are reserved).
    BadLabel(u8),
}

impl WireName {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Known(name) => {
                for label in name.split('.') {
                    out.push(label.len() as u8);
                    out.extend_from_slice(label.as_bytes());
                }
                out.push(0);
            }
            Self::Labels(labels) => {
                for label in labels {
                    out.push(label.len() as u8);
                    out.extend_from_slice(label);
                }
                out.push(0);
            }
            Self::SelfPointer => out.extend_from_slice(&[0xc0, 12]),
            Self::Forward(at) => out.extend_from_slice(&(0xc000 | (at & 0x3fff)).to_be_bytes()),
            Self::Loop => {
                let at = out.len() as u16;
                out.extend_from_slice(&[3, b'w', b'e', b'b']);
                out.extend_from_slice(&(0xc000 | at).to_be_bytes());
            }
            Self::BadLabel(length) => {
                out.push(*length);
                out.extend(std::iter::repeat_n(b'a', usize::from(*length & 0x3f)));
                out.push(0);
            }
        }
    }
}

fn wire_name() -> impl Strategy<Value = WireName> {
    let label = prop::collection::vec(
        prop::sample::select(b"abcdefghijklmnopqrstuvwxyzABCXYZ0123456789-_".to_vec()),
        1..=63,
    );
    prop_oneof![
        8 => prop::sample::select(NAMES.to_vec()).prop_map(WireName::Known),
        3 => prop::collection::vec(label, 1..8).prop_map(WireName::Labels),
        1 => Just(WireName::SelfPointer),
        1 => (13u16..0x3fff).prop_map(WireName::Forward),
        1 => Just(WireName::Loop),
        1 => (64u8..=255).prop_map(WireName::BadLabel),
    ]
}

/// An OPT record as sent: payload, extended RCODE, version, DO, and its
/// RDATA (options, or junk), with its RDLENGTH right or wrong.
#[derive(Clone, Debug)]
struct Opt {
    payload: u16,
    version: u8,
    rdata: Vec<u8>,
    rdlength_delta: i8,
    owner_root: bool,
}

fn opt() -> impl Strategy<Value = Opt> {
    (
        prop_oneof![
            Just(0u16),
            Just(511u16),
            Just(512u16),
            Just(600u16),
            Just(1232u16),
            Just(4096u16),
            any::<u16>()
        ],
        prop_oneof![8 => Just(0u8), 1 => Just(1u8), 1 => any::<u8>()],
        prop_oneof![
            4 => Just(Vec::new()),
            2 => Just(vec![0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]),
            1 => prop::collection::vec(any::<u8>(), 0..24),
        ],
        prop_oneof![8 => Just(0i8), 1 => -4i8..4],
        prop_oneof![9 => Just(true), 1 => Just(false)],
    )
        .prop_map(
            |(payload, version, rdata, rdlength_delta, owner_root)| Opt {
                payload,
                version,
                rdata,
                rdlength_delta,
                owner_root,
            },
        )
}

impl Opt {
    fn encode(&self, out: &mut Vec<u8>) {
        if self.owner_root {
            out.push(0);
        } else {
            out.extend_from_slice(&[3, b'c', b'o', b'm', 0]);
        }
        out.extend_from_slice(&41u16.to_be_bytes());
        out.extend_from_slice(&self.payload.to_be_bytes());
        out.extend_from_slice(&[0, self.version, 0, 0]);
        let length = (self.rdata.len() as i32 + i32::from(self.rdlength_delta)).max(0) as u16;
        out.extend_from_slice(&length.to_be_bytes());
        out.extend_from_slice(&self.rdata);
    }
}

/// A datagram built field by field.
#[derive(Clone, Debug)]
struct Datagram {
    id: u16,
    qr: bool,
    opcode: u8,
    rd: bool,
    /// What QDCOUNT says.
    qdcount: u16,
    /// The questions actually written.
    questions: Vec<(WireName, u16, u16)>,
    opts: Vec<Opt>,
    /// Bytes after the end.
    trailing: Vec<u8>,
    /// Where to cut it, if anywhere.
    cut: Option<usize>,
}

fn datagram() -> impl Strategy<Value = Datagram> {
    (
        any::<u16>(),
        prop_oneof![9 => Just(false), 1 => Just(true)],
        prop_oneof![8 => Just(0u8), 2 => 0u8..16],
        any::<bool>(),
        prop::collection::vec((wire_name(), qtype(), qclass()), 0..3),
        prop_oneof![8 => Just(None), 1 => Just(Some(0u16)), 1 => Just(Some(2u16))],
        prop_oneof![4 => prop::collection::vec(opt(), 0..=1), 1 => prop::collection::vec(opt(), 2..=2)],
        prop_oneof![9 => Just(Vec::new()), 1 => prop::collection::vec(any::<u8>(), 1..8)],
        prop_oneof![9 => Just(None), 1 => (0usize..80).prop_map(Some)],
    )
        .prop_map(
            |(id, qr, opcode, rd, mut questions, qdcount, opts, trailing, cut)| {
                if questions.is_empty() && qdcount.is_none() {
                    questions.push((WireName::Known("web.query.consul"), 1, 1));
                }
                let qdcount = qdcount.unwrap_or(questions.len() as u16);
                Datagram {
                    id,
                    qr,
                    opcode,
                    rd,
                    qdcount,
                    questions,
                    opts,
                    trailing,
                    cut,
                }
            },
        )
}

impl Datagram {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(&self.id.to_be_bytes());
        out.push(u8::from(self.qr) << 7 | (self.opcode & 0x0f) << 3 | u8::from(self.rd));
        out.push(0);
        out.extend_from_slice(&self.qdcount.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(&(self.opts.len() as u16).to_be_bytes());
        for (name, qtype, qclass) in &self.questions {
            name.encode(&mut out);
            out.extend_from_slice(&qtype.to_be_bytes());
            out.extend_from_slice(&qclass.to_be_bytes());
        }
        for opt in &self.opts {
            opt.encode(&mut out);
        }
        out.extend_from_slice(&self.trailing);
        if let Some(cut) = self.cut {
            out.truncate(cut);
        }
        out
    }
}

/// Any datagram: built, random, or a built one with a few bytes changed.
fn packet() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => datagram().prop_map(|d| d.encode()),
        1 => prop::collection::vec(any::<u8>(), 0..600),
        2 => (datagram(), prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4))
            .prop_map(|(d, changes)| {
                let mut bytes = d.encode();
                if !bytes.is_empty() {
                    for (at, value) in changes {
                        let at = at.index(bytes.len());
                        bytes[at] = value;
                    }
                }
                bytes
            }),
    ]
}

/// The most a UDP reply to `packet` may hold: the client's EDNS payload
/// (at least 512, at most what we advertise, 1232), 512 without EDNS.
fn reply_limit(request: Option<&Message>) -> usize {
    request
        .and_then(|m| m.edns.as_ref())
        .map_or(512, |e| usize::from(e.max_payload().clamp(512, 1232)))
}

/// Whether the first question's name holds a compression pointer (the
/// only thing before it is the header).
fn first_name_compressed(packet: &[u8]) -> bool {
    let mut at = 12;
    while let Some(&length) = packet.get(at) {
        if length == 0 {
            return false;
        }
        if length & 0xc0 != 0 {
            return true;
        }
        at += 1 + usize::from(length);
    }
    false
}

/// Checks every rule on `reply`, the response to `packet`.
fn check_reply(packet: &[u8], reply: &[u8]) -> Result<(), TestCaseError> {
    prop_assert!(packet.len() >= 12, "a reply to {} bytes", packet.len());
    prop_assert!(packet[2] & 0x80 == 0, "a reply to a response (QR=1)");
    prop_assert!(reply.len() >= 12, "a reply of {} bytes", reply.len());
    prop_assert_eq!(&reply[..2], &packet[..2], "the ID");
    prop_assert!(reply[2] & 0x80 != 0, "QR not set");
    prop_assert_eq!(reply[2] & 0x78, packet[2] & 0x78, "the opcode");
    let request = Message::from_vec(packet).ok();
    let limit = reply_limit(request.as_ref());
    prop_assert!(
        reply.len() <= limit,
        "a reply of {} bytes, over the {} the client can take",
        reply.len(),
        limit
    );
    let decoded = Message::from_vec(reply);
    prop_assert!(
        decoded.is_ok(),
        "the reply does not decode: {:?}",
        decoded.err()
    );
    let response = decoded.unwrap();
    let rcode = response.metadata.response_code;
    let Some(request) = request else {
        prop_assert_eq!(rcode, ResponseCode::FormErr, "an undecodable query");
        return Ok(());
    };
    if request.metadata.op_code != OpCode::Query {
        prop_assert!(
            matches!(rcode, ResponseCode::NotImp | ResponseCode::FormErr),
            "opcode {:?} answered {:?}",
            request.metadata.op_code,
            rcode
        );
        return Ok(());
    }
    // RFC 6891 §6.1.3: an unknown version gets BADVERS, whatever else
    // is wrong with the question.
    if let Some(edns) = &request.edns
        && edns.version() > 0
    {
        // 16: BADVERS (hickory decodes the number as BADSIG, its TSIG
        // twin).
        prop_assert_eq!(
            u16::from(rcode),
            16,
            "EDNS version {}: {:?}",
            edns.version(),
            rcode
        );
        prop_assert!(response.edns.is_some(), "BADVERS without OPT");
        return Ok(());
    }
    if first_name_compressed(packet) {
        prop_assert_eq!(rcode, ResponseCode::FormErr, "a compressed question");
        prop_assert!(response.queries.is_empty(), "a compressed question echoed");
        return Ok(());
    }
    if request.queries.len() != 1 {
        prop_assert_eq!(
            rcode,
            ResponseCode::FormErr,
            "{} questions",
            request.queries.len()
        );
        return Ok(());
    }
    prop_assert_eq!(
        response.edns.is_some(),
        request.edns.is_some(),
        "OPT in the reply iff in the query"
    );
    let asked = &request.queries[0];
    prop_assert_eq!(response.queries.len(), 1, "the question is echoed");
    let echoed = &response.queries[0];
    prop_assert_eq!(
        echoed.name().to_string(),
        asked.name().to_string(),
        "the question's name, letter case included"
    );
    prop_assert_eq!(echoed.query_type(), asked.query_type());
    prop_assert_eq!(echoed.query_class(), asked.query_class());
    if u16::from(asked.query_class()) != 1 {
        prop_assert_eq!(
            rcode,
            ResponseCode::Refused,
            "class {:?}",
            asked.query_class()
        );
    }
    prop_assert!(!response.metadata.recursion_available, "RA set");
    Ok(())
}

/// The fast path's own steps for one datagram: the cache, else the answer
/// logic (kept in the cache when it may be), as the worker loop does.
fn fast_reply(
    handler: &crate::dns::DnsHandler,
    cache: &mut Cache,
    view: &HealthView,
    packet: &[u8],
) -> Option<Vec<u8>> {
    if packet.len() < 12 {
        return None;
    }
    cache.follow(view.generation());
    let mut reply = Vec::new();
    if cache.answer(packet, &mut super::Moment::now(), &mut reply, view) {
        return Some(reply);
    }
    let source: SocketAddr = "127.0.0.1:5353".parse().unwrap();
    match handler.respond_now(packet, source) {
        Immediate::Ready { bytes, keep } => {
            if let Some(entry) = keep {
                cache.insert(packet, entry);
            }
            (!bytes.is_empty()).then_some(bytes)
        }
        Immediate::Drop | Immediate::Later(_) => None,
    }
}

/// 20,000 datagrams through the fast path's code, each three times
/// (worked out, then from the cache and its rotations).
#[test]
fn generated_datagrams_keep_every_rule_on_the_fast_path() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _entered = runtime.enter();
    let view = view();
    let handler = handler(&view, Metrics::new());
    let cache = std::cell::RefCell::new(Cache::new());
    // What the cases came to, so the generators cannot quietly stop
    // reaching a rule.
    let seen = std::cell::RefCell::new(std::collections::BTreeMap::<String, usize>::new());
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 20_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let result = runner.run(&packet(), |packet| {
        let mut cache = cache.borrow_mut();
        let first = fast_reply(&handler, &mut cache, &view, &packet);
        let outcome = first.as_deref().map_or_else(
            || "dropped".to_owned(),
            |r| {
                Message::from_vec(r).map_or_else(
                    |_| "undecodable".to_owned(),
                    |m| format!("{:?}", m.metadata.response_code),
                )
            },
        );
        *seen.borrow_mut().entry(outcome).or_default() += 1;
        for _ in 0..2 {
            let again = fast_reply(&handler, &mut cache, &view, &packet);
            prop_assert_eq!(first.is_some(), again.is_some(), "answered once, not again");
            if let Some(reply) = &again {
                check_reply(&packet, reply)?;
            }
        }
        match &first {
            Some(reply) => check_reply(&packet, reply),
            None => {
                let silent = packet.len() < 12
                    || packet[2] & 0x80 != 0
                    || Message::from_vec(&packet).is_ok_and(|m| {
                        m.queries
                            .first()
                            .is_some_and(|q| q.name().to_ascii().starts_with("later."))
                    });
                let direct = match handler.respond_now(&packet, "127.0.0.1:5353".parse().unwrap()) {
                    Immediate::Ready { bytes, .. } => format!("ready, {} bytes", bytes.len()),
                    Immediate::Drop => "drop".to_owned(),
                    Immediate::Later(_) => "later".to_owned(),
                };
                prop_assert!(
                    silent,
                    "no reply to a query that should get one (asked again: {})",
                    direct
                );
                Ok(())
            }
        }
    });
    if let Err(error) = result {
        panic!("{error}");
    }
    let seen = seen.into_inner();
    println!("outcomes: {seen:?}");
    for outcome in [
        "dropped", "NoError", "NXDomain", "FormErr", "NotImp", "Refused", "BADSIG",
    ] {
        assert!(
            seen.get(outcome).copied().unwrap_or(0) >= 30,
            "fewer than 30 cases came to {outcome}: {seen:?}"
        );
    }
}

/// A sample of the same datagrams through both UDP paths on sockets: the
/// fast path's reply decodes like hickory-server's own loop's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_datagrams_get_the_same_reply_from_both_udp_paths() {
    let view: Arc<HealthView> = view();
    let slow = start(&view, UdpMode::Hickory, Metrics::new()).await;
    let fast = start(&view, UdpMode::Fast(1), Metrics::new()).await;
    let (slow_at, fast_at) = (slow.bound[0], fast.bound[0]);
    let mut runner = TestRunner::new(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let mut packets = Vec::new();
    for _ in 0..400 {
        packets.push(packet().new_tree(&mut runner).unwrap().current());
    }
    let mut replied = 0;
    for (n, packet) in packets.iter().enumerate() {
        // A socket per datagram: a late reply cannot pass for the next's.
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let slow_reply = exchange(&socket, slow_at, packet).await;
        let fast_reply = exchange(&socket, fast_at, packet).await;
        let what = format!("datagram {n} {packet:02x?}");
        if packet.len() >= 12 && packet[2] & 0x80 != 0 {
            // hickory-server answers an undecodable response with FORMERR
            // (it checks QR only after decoding); the fast path never
            // answers one.
            assert!(fast_reply.is_none(), "{what}: a reply to QR=1");
            continue;
        }
        match (&slow_reply, &fast_reply) {
            (None, None) => {}
            (Some(s), Some(f)) => {
                // Truncated big answers: the shuffle picks what stays.
                let exact = !Message::from_vec(s).is_ok_and(|m| m.metadata.truncation);
                compare(&what, s, f, exact);
                replied += 1;
            }
            (s, f) => panic!("{what}: slow {s:02x?}, fast {f:02x?}"),
        }
    }
    assert!(replied > 200, "only {replied} of 400 got replies");
}
