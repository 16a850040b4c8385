//! The relay against fake upstreams on 127.0.0.1: one that answers, one
//! that never does, one whose UDP replies are truncated, one that sends
//! stray replies first. [`FakeUpstream`] also serves the handler's tests.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::*;

/// The address every fake answers with.
pub(crate) const FAKE_ADDRESS: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 99);

/// How a [`FakeUpstream`] treats queries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Answers over UDP and TCP (see [`fake_reply`]).
    Answer,
    /// Bound on UDP and TCP, never reads, never answers.
    Silent,
    /// Over UDP an empty reply with TC set; TCP answers.
    TruncateUdp,
    /// Over UDP, first a reply with another ID, then one with our ID and
    /// another question, then the answer.
    StrayFirst,
}

/// A DNS server on 127.0.0.1 (UDP and TCP on one port) playing the
/// upstream; stopped on drop.
pub(crate) struct FakeUpstream {
    /// Where it listens.
    pub(crate) addr: SocketAddr,
    /// The queries it received, with the transport ("UDP", "TCP").
    pub(crate) queries: Arc<Mutex<Vec<(&'static str, Message)>>>,
    tasks: Vec<JoinHandle<()>>,
    /// Held (never read) by a silent fake.
    _silent: Option<(UdpSocket, TcpListener)>,
}

impl FakeUpstream {
    pub(crate) async fn start(mode: Mode) -> Self {
        let (udp, tcp) = bind_pair().await;
        let addr = udp.local_addr().unwrap();
        let queries = Arc::new(Mutex::new(Vec::new()));
        if mode == Mode::Silent {
            return Self {
                addr,
                queries,
                tasks: Vec::new(),
                _silent: Some((udp, tcp)),
            };
        }
        let seen = Arc::clone(&queries);
        let udp_task = tokio::spawn(async move {
            let mut buffer = vec![0; MAX_MESSAGE];
            while let Ok((length, peer)) = udp.recv_from(&mut buffer).await {
                let Ok(query) = Message::from_vec(&buffer[..length]) else {
                    continue;
                };
                seen.lock().unwrap().push(("UDP", query.clone()));
                let mut replies = Vec::new();
                let mut reply = fake_reply(&query);
                match mode {
                    Mode::TruncateUdp => {
                        reply.answers.clear();
                        reply.additionals.clear();
                        reply.metadata.truncation = true;
                    }
                    Mode::StrayFirst => {
                        let mut stray = reply.clone();
                        stray.metadata.id = query.metadata.id.wrapping_add(1);
                        stray.answers[0].data = RData::A(A::new(10, 0, 0, 1));
                        replies.push(stray);
                        let mut other = reply.clone();
                        other.queries[0].set_name(Name::from_ascii("other.consul.").unwrap());
                        other.answers[0].data = RData::A(A::new(10, 0, 0, 2));
                        replies.push(other);
                    }
                    Mode::Answer | Mode::Silent => {}
                }
                replies.push(reply);
                for reply in replies {
                    let _ = udp.send_to(&reply.to_vec().unwrap(), peer).await;
                }
            }
        });
        let seen = Arc::clone(&queries);
        let tcp_task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = tcp.accept().await {
                let seen = Arc::clone(&seen);
                tokio::spawn(async move {
                    let mut length = [0; 2];
                    while stream.read_exact(&mut length).await.is_ok() {
                        let mut bytes = vec![0; usize::from(u16::from_be_bytes(length))];
                        if stream.read_exact(&mut bytes).await.is_err() {
                            return;
                        }
                        let Ok(query) = Message::from_vec(&bytes) else {
                            return;
                        };
                        seen.lock().unwrap().push(("TCP", query.clone()));
                        let reply = fake_reply(&query).to_vec().unwrap();
                        let mut framed = u16::try_from(reply.len()).unwrap().to_be_bytes().to_vec();
                        framed.extend_from_slice(&reply);
                        if stream.write_all(&framed).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            queries,
            tasks: vec![udp_task, tcp_task],
            _silent: None,
        }
    }

    /// The transports of the queries received so far, in order.
    pub(crate) fn transports(&self) -> Vec<&'static str> {
        self.queries
            .lock()
            .unwrap()
            .iter()
            .map(|(t, _)| *t)
            .collect()
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A UDP socket and a TCP listener on one free port of 127.0.0.1.
async fn bind_pair() -> (UdpSocket, TcpListener) {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        if let Ok(tcp) = TcpListener::bind(udp.local_addr().unwrap()).await {
            return (udp, tcp);
        }
    }
    panic!("no port free for both UDP and TCP on 127.0.0.1");
}

/// The fake's answer: AA set; names starting with `missing` get NXDOMAIN;
/// names starting with `big` get 100 A records; others one A record,
/// [`FAKE_ADDRESS`], plus an additional A record; an OPT (4096) when the
/// query had one.
pub(crate) fn fake_reply(query: &Message) -> Message {
    let mut reply = Message::response(query.metadata.id, OpCode::Query);
    reply.metadata.authoritative = true;
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.queries.clone_from(&query.queries);
    if let Some(q) = query.queries.first() {
        let name = q.name().clone();
        let label = name.iter().next().unwrap_or_default().to_ascii_lowercase();
        if label.starts_with(b"missing") {
            reply.metadata.response_code = ResponseCode::NXDomain;
        } else if q.query_type() == RecordType::A {
            let count = if label.starts_with(b"big") { 100 } else { 1 };
            for i in 0..count {
                let address = if count == 1 {
                    FAKE_ADDRESS
                } else {
                    Ipv4Addr::new(127, 1, 0, i)
                };
                reply
                    .answers
                    .push(Record::from_rdata(name.clone(), 5, RData::A(A(address))));
            }
            let extra = Name::from_ascii("extra.connect.consul.").unwrap();
            let mut record = Record::from_rdata(extra, 5, RData::A(A::new(127, 0, 0, 98)));
            record.dns_class = DNSClass::IN;
            reply.additionals.push(record);
        }
    }
    reply.edns = query.edns.as_ref().map(|_| {
        let mut edns = Edns::new();
        edns.set_max_payload(4096);
        edns
    });
    reply
}

fn question(name: &str) -> Question {
    Question {
        name: Name::from_ascii(name).unwrap(),
        qtype: RecordType::A,
        qclass: DNSClass::IN,
    }
}

fn soon(millis: u64) -> Instant {
    Instant::now() + Duration::from_millis(millis)
}

fn addresses(reply: &Message) -> Vec<Ipv4Addr> {
    reply
        .answers
        .iter()
        .filter_map(|r| match r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn upstream_relay_sends_a_fresh_query_over_udp() {
    let fake = FakeUpstream::start(Mode::Answer).await;
    let upstream = Upstream::new(fake.addr);
    let asked = question("WeB.CoNnEcT.consul.");
    let reply = upstream
        .relay(&asked, false, Some(1232), soon(1000))
        .await
        .unwrap();
    assert_eq!(addresses(&reply), [FAKE_ADDRESS]);
    assert!(reply.metadata.authoritative);
    let reply = upstream
        .relay(&asked, false, None, soon(1000))
        .await
        .unwrap();
    assert_eq!(addresses(&reply), [FAKE_ADDRESS]);

    let queries = fake.queries.lock().unwrap().clone();
    assert_eq!(
        queries.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
        ["UDP", "UDP"]
    );
    let (first, second) = (&queries[0].1, &queries[1].1);
    for query in [first, second] {
        assert!(!query.metadata.recursion_desired, "RD is clear");
        assert!(query.queries[0].name().eq_case(&asked.name), "case kept");
    }
    assert_eq!(first.edns.as_ref().map(Edns::max_payload), Some(1232));
    assert!(second.edns.is_none(), "no EDNS when the client sent none");
}

#[tokio::test]
async fn upstream_relay_uses_tcp_for_tcp_clients() {
    let fake = FakeUpstream::start(Mode::Answer).await;
    let upstream = Upstream::new(fake.addr);
    let reply = upstream
        .relay(&question("big.connect.consul."), true, None, soon(1000))
        .await
        .unwrap();
    assert_eq!(reply.answers.len(), 100);
    assert_eq!(fake.transports(), ["TCP"]);
}

#[tokio::test]
async fn upstream_relay_retries_truncated_udp_replies_over_tcp() {
    let fake = FakeUpstream::start(Mode::TruncateUdp).await;
    let upstream = Upstream::new(fake.addr);
    let reply = upstream
        .relay(
            &question("big.connect.consul."),
            false,
            Some(1232),
            soon(1000),
        )
        .await
        .unwrap();
    assert!(!reply.metadata.truncation);
    assert_eq!(reply.answers.len(), 100);
    assert_eq!(fake.transports(), ["UDP", "TCP"]);
}

#[tokio::test]
async fn upstream_relay_ignores_replies_with_another_id_or_question() {
    let fake = FakeUpstream::start(Mode::StrayFirst).await;
    let upstream = Upstream::new(fake.addr);
    let reply = upstream
        .relay(&question("web.connect.consul."), false, None, soon(1000))
        .await
        .unwrap();
    assert_eq!(addresses(&reply), [FAKE_ADDRESS]);
    assert_eq!(fake.transports(), ["UDP"]);
}

#[tokio::test]
async fn upstream_relay_passes_negative_answers() {
    let fake = FakeUpstream::start(Mode::Answer).await;
    let upstream = Upstream::new(fake.addr);
    let reply = upstream
        .relay(
            &question("missing.connect.consul."),
            false,
            None,
            soon(1000),
        )
        .await
        .unwrap();
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
}

#[tokio::test]
async fn upstream_relay_to_a_silent_upstream_ends_at_the_deadline() {
    let fake = FakeUpstream::start(Mode::Silent).await;
    let upstream = Upstream::new(fake.addr);
    for over_tcp in [false, true] {
        let started = Instant::now();
        let error = upstream
            .relay(&question("web.connect.consul."), over_tcp, None, soon(300))
            .await
            .unwrap_err();
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(290) && waited < Duration::from_millis(450),
            "over TCP {over_tcp}: {waited:?}"
        );
        assert!(matches!(error, UpstreamError::Timeout { .. }), "{error}");
        assert_eq!(error.extended_error_code(), EDE_NO_REACHABLE_AUTHORITY);
        assert!(
            error.to_string().contains(&fake.addr.to_string()),
            "{error}"
        );
    }
    assert!(upstream.failing.load(Ordering::Relaxed));
}

#[tokio::test]
async fn upstream_relay_to_a_closed_port_fails_at_once() {
    // A port nothing listens on: ICMP port unreachable, TCP RST.
    let (udp, tcp) = bind_pair().await;
    let addr = udp.local_addr().unwrap();
    drop((udp, tcp));
    let upstream = Upstream::new(addr);
    for over_tcp in [false, true] {
        let started = Instant::now();
        let error = upstream
            .relay(&question("web.connect.consul."), over_tcp, None, soon(2000))
            .await
            .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
        assert!(
            matches!(error, UpstreamError::Unreachable { .. }),
            "{error}"
        );
        assert_eq!(error.extended_error_code(), EDE_NO_REACHABLE_AUTHORITY);
    }
}

#[tokio::test]
async fn upstream_relay_recovers_after_failures() {
    let fake = FakeUpstream::start(Mode::Answer).await;
    let upstream = Upstream::new(fake.addr);
    upstream.failing.store(true, Ordering::Relaxed);
    upstream
        .relay(&question("web.connect.consul."), false, None, soon(1000))
        .await
        .unwrap();
    assert!(!upstream.failing.load(Ordering::Relaxed));
}

#[test]
fn upstream_verdict_rejects_what_is_not_an_answer() {
    let query = query(&question("web.connect.consul."), None);
    let reply = fake_reply(&query);
    assert!(matches!(
        verdict(&query, &reply.to_vec().unwrap()),
        Verdict::Answer(_)
    ));
    assert!(matches!(verdict(&query, &[]), Verdict::Foreign));
    let id = query.metadata.id.to_be_bytes();
    assert!(matches!(
        verdict(&query, &[id[0], id[1], 0xff]),
        Verdict::Bad(_)
    ));
    assert!(matches!(
        verdict(&query, &query.to_vec().unwrap()),
        Verdict::Bad(reason) if reason == "not a response"
    ));
    let mut no_question = reply.clone();
    no_question.queries.clear();
    assert!(matches!(
        verdict(&query, &no_question.to_vec().unwrap()),
        Verdict::Bad(_)
    ));
    no_question.metadata.response_code = ResponseCode::FormErr;
    assert!(matches!(
        verdict(&query, &no_question.to_vec().unwrap()),
        Verdict::Answer(_)
    ));
    let mut aaaa = reply;
    aaaa.queries[0].set_query_type(RecordType::AAAA);
    assert!(matches!(
        verdict(&query, &aaaa.to_vec().unwrap()),
        Verdict::Bad(_)
    ));
}
