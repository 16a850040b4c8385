//! The handler over real sockets, fed from a view filled by hand (no
//! Consul): the protocol rules around the answer logic.

use std::net::Ipv4Addr;

use hickory_proto::op::{Message, MessageType, Query};
use hickory_proto::rr::rdata::opt::EdnsCode;
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::config::Config;
use crate::health::{CheckStatus, Instance, ServiceHealth, test_instance};
use crate::resolve::EDE_NOT_READY;
use crate::upstream::tests::{FAKE_ADDRESS, FakeUpstream, Mode};

/// Starts no watch: the tests fill the view themselves.
struct NoWatches;

impl WatchDemand for NoWatches {
    fn ensure_service(&self, _key: &ServiceKey) -> bool {
        true
    }
    fn ensure_catalog(&self, _datacenter: &str) {}
}

fn instances(count: u8) -> Vec<Instance> {
    (1..=count)
        .map(|i| {
            let address = Ipv4Addr::new(10, 9, 0, i).to_string();
            test_instance(&format!("node-{i}"), &address, CheckStatus::Passing)
        })
        .collect()
}

/// A served handler over a view holding `big` (100 instances) and `web`
/// (2) in dc1, and `later` watched but never synced.
async fn start(extra: &str) -> (SocketAddr, Listeners) {
    start_waiting("200ms", extra).await
}

/// [`start`] with `dns.first_answer_wait` set to `wait`.
async fn start_waiting(wait: &str, extra: &str) -> (SocketAddr, Listeners) {
    let config = Config::from_toml_str(
        &format!(
            "[dns]\nfirst_answer_wait = \"{wait}\"\n{extra}\n[consul]\ndatacenter = \"dc1\"\n"
        ),
        "test.toml",
    )
    .unwrap();
    let view = Arc::new(HealthView::new("dc1"));
    view.apply_catalog(
        "dc1",
        ["big".to_owned(), "web".to_owned(), "later".to_owned()].into(),
    );
    view.apply_service(
        &ServiceKey::new("dc1", "big"),
        ServiceHealth {
            index: 2,
            instances: instances(100),
        },
    );
    view.apply_service(
        &ServiceKey::new("dc1", "web"),
        ServiceHealth {
            index: 2,
            instances: instances(2),
        },
    );
    view.add_service_slot(&ServiceKey::new("dc1", "later"));
    let handler = DnsHandler::new(
        Arc::new(ArcSwap::from_pointee(Resolver::new(&config))),
        view,
        Arc::new(NoWatches),
        Metrics::new(),
        WireSettings {
            udp_payload: config.dns.udp_payload,
            udp_answer_limit: config.dns.udp_answer_limit,
            first_answer_wait: config.dns.first_answer_wait,
            upstream: config.dns.upstream.parse().ok(),
            rate_limit: config.dns.rate_limit,
            rate_limit_slip: config.dns.rate_limit_slip,
        },
    );
    let listeners = serve(
        handler,
        &["127.0.0.1:0".parse().unwrap()],
        TcpSettings::from_config(&config.dns),
        UdpMode::from_config(config.dns.udp_fast_path, config.dns.udp_threads),
    )
    .await
    .unwrap();
    (listeners.bound[0], listeners)
}

fn query(name: &str, qtype: RecordType, edns: Option<u16>) -> Message {
    let mut message = Message::query();
    message.metadata.id = 4242;
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        message.set_edns(e);
    }
    message
}

async fn udp(server: SocketAddr, bytes: &[u8]) -> (Message, usize) {
    let reply = udp_bytes(server, bytes).await;
    (Message::from_vec(&reply).unwrap(), reply.len())
}

async fn udp_bytes(server: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(bytes, server).await.unwrap();
    let mut buffer = vec![0; 65_535];
    let n = tokio::time::timeout(Duration::from_secs(3), socket.recv(&mut buffer))
        .await
        .expect("a reply")
        .unwrap();
    buffer.truncate(n);
    buffer
}

async fn tcp(server: SocketAddr, message: &Message) -> Message {
    Message::from_vec(&tcp_bytes(server, &message.to_vec().unwrap()).await).unwrap()
}

async fn tcp_bytes(server: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = tokio::net::TcpStream::connect(server).await.unwrap();
    let mut framed = u16::try_from(bytes.len()).unwrap().to_be_bytes().to_vec();
    framed.extend_from_slice(bytes);
    stream.write_all(&framed).await.unwrap();
    let mut length = [0; 2];
    tokio::time::timeout(Duration::from_secs(3), stream.read_exact(&mut length))
        .await
        .expect("a reply")
        .unwrap();
    let mut buffer = vec![0; usize::from(u16::from_be_bytes(length))];
    stream.read_exact(&mut buffer).await.unwrap();
    buffer
}

#[tokio::test]
async fn udp_truncation_sets_tc_and_keeps_opt_and_tcp_gives_all() {
    truncation_sets_tc_and_keeps_opt_and_tcp_gives_all("").await;
}

#[tokio::test]
async fn udp_truncation_on_hickory_servers_loop_measures_its_encoding() {
    truncation_sets_tc_and_keeps_opt_and_tcp_gives_all("udp_fast_path = false").await;
}

/// The UDP truncation rules with `extra` in `[dns]`; a truncated reply
/// holds as many A records (16 bytes each) as fit.
async fn truncation_sets_tc_and_keeps_opt_and_tcp_gives_all(extra: &str) {
    let (server, _s) = start(extra).await;
    let (reply, size) = udp(
        server,
        &query("big.query.consul.", RecordType::A, Some(4096))
            .to_vec()
            .unwrap(),
    )
    .await;
    assert!(
        reply.metadata.truncation,
        "100 A records cannot fit 1232 bytes"
    );
    assert!(size <= 1232, "{size} bytes over UDP");
    assert!(
        !reply.answers.is_empty() && reply.answers.len() < 100,
        "{}",
        reply.answers.len()
    );
    let opt = reply
        .edns
        .as_ref()
        .expect("OPT kept when truncating (RFC 6891 §7)");
    assert_eq!(opt.max_payload(), 1232);

    for payload in [512, 600, 1000, 1232, 4096] {
        let name = "BiG.query.consul.";
        let bytes = query(name, RecordType::A, Some(payload)).to_vec().unwrap();
        let (reply, size) = udp(server, &bytes).await;
        assert!(reply.metadata.truncation, "{payload}");
        assert!(
            size <= usize::from(payload.min(1232)),
            "{size} bytes for a {payload}-byte limit"
        );
        assert!(
            size + 16 > usize::from(payload.min(1232)),
            "{size} bytes for a {payload}-byte limit: room for another record"
        );
        assert!(reply.edns.is_some(), "OPT dropped at {payload}");
        assert!(
            reply.answers.len() > 1,
            "{payload}: {}",
            reply.answers.len()
        );
    }

    let (plain, size) = udp(
        server,
        &query("big.query.consul.", RecordType::A, None)
            .to_vec()
            .unwrap(),
    )
    .await;
    assert!(
        plain.metadata.truncation && size <= 512 && size + 16 > 512 && plain.edns.is_none(),
        "{size}"
    );

    let all = tcp(
        server,
        &query("big.query.consul.", RecordType::A, Some(1232)),
    )
    .await;
    assert!(!all.metadata.truncation);
    assert_eq!(all.answers.len(), 100);

    let (small, _) = udp(
        server,
        &query("web.query.consul.", RecordType::A, Some(1232))
            .to_vec()
            .unwrap(),
    )
    .await;
    assert!(!small.metadata.truncation && small.answers.len() == 2 && small.metadata.authoritative);
}

#[tokio::test]
async fn udp_answer_limit_caps_and_says_so() {
    let (server, _s) = start("udp_answer_limit = 3").await;
    let (reply, _) = udp(
        server,
        &query("web.query.consul.", RecordType::A, Some(1232))
            .to_vec()
            .unwrap(),
    )
    .await;
    assert_eq!(reply.answers.len(), 2);
    assert!(!reply.metadata.truncation);
    let (reply, _) = udp(
        server,
        &query("big.query.consul.", RecordType::A, Some(1232))
            .to_vec()
            .unwrap(),
    )
    .await;
    assert_eq!(reply.answers.len(), 3);
    assert!(reply.metadata.truncation);
}

#[tokio::test]
async fn protocol_errors_get_their_rcodes() {
    let (server, _s) = start("").await;
    let mut status = query("web.query.consul.", RecordType::A, None);
    status.metadata.op_code = OpCode::Status;
    let (reply, _) = udp(server, &status.to_vec().unwrap()).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NotImp);

    let mut badvers = query("web.query.consul.", RecordType::A, Some(1232));
    badvers.edns.as_mut().unwrap().set_version(1);
    let (reply, _) = udp(server, &badvers.to_vec().unwrap()).await;
    // BADVERS and BADSIG share the value 16; the decoder names it BADSIG.
    assert_eq!(
        u16::from(reply.metadata.response_code),
        u16::from(ResponseCode::BADVERS)
    );
    assert!(reply.edns.is_some(), "BADVERS travels in the OPT record");

    let mut two = query("web.query.consul.", RecordType::A, None);
    two.add_query(Query::query(
        Name::from_ascii("big.query.consul.").unwrap(),
        RecordType::A,
    ));
    let (reply, _) = udp(server, &two.to_vec().unwrap()).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
    assert_eq!(reply.metadata.message_type, MessageType::Response);

    let (reply, _) = udp(
        server,
        &query("example.com.", RecordType::A, None).to_vec().unwrap(),
    )
    .await;
    assert_eq!(reply.metadata.response_code, ResponseCode::Refused);
    assert!(!reply.metadata.recursion_available && !reply.metadata.authoritative);
}

#[tokio::test]
async fn owner_names_point_to_the_question() {
    let (server, _s) = start("").await;
    // `WeB.query.consul.`: 18 bytes of name, type and class at 30.
    let web = query("WeB.query.consul.", RecordType::A, None)
        .to_vec()
        .unwrap();
    let nope = query("nope.service.consul.", RecordType::A, None)
        .to_vec()
        .unwrap();
    for (transport, web_reply, nope_reply) in [
        (
            "UDP",
            udp_bytes(server, &web).await,
            udp_bytes(server, &nope).await,
        ),
        (
            "TCP",
            tcp_bytes(server, &web).await,
            tcp_bytes(server, &nope).await,
        ),
    ] {
        // Header, question, two A records of a pointer, type, class, TTL,
        // length and address each.
        assert_eq!(
            web_reply.len(),
            12 + 22 + 2 * 16,
            "{transport}: {web_reply:02x?}"
        );
        for record in [34, 50] {
            assert_eq!(
                web_reply[record..record + 4],
                [0xc0, 0x0c, 0, 1],
                "{transport}: the A record at {record} in {web_reply:02x?}"
            );
        }
        let message = Message::from_vec(&web_reply).unwrap();
        assert_eq!(message.answers.len(), 2);
        assert_eq!(message.answers[0].name.to_ascii(), "WeB.query.consul.");

        let message = Message::from_vec(&nope_reply).unwrap();
        assert_eq!(message.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(message.authorities.len(), 1, "{transport}: {message:?}");
        assert_eq!(message.authorities[0].record_type(), RecordType::SOA);
        // The SOA owner `consul.` points to the question's last label, at
        // 12 + 5 + 8 = 25.
        let soa = 12 + 21 + 4;
        assert_eq!(
            nope_reply[soa..soa + 4],
            [0xc0, 25, 0, 6],
            "{transport}: {nope_reply:02x?}"
        );
    }
}

#[tokio::test]
async fn question_case_is_echoed() {
    let (server, _s) = start("").await;
    let (reply, _) = udp(
        server,
        &query("WeB.QuErY.cOnSuL.", RecordType::A, None)
            .to_vec()
            .unwrap(),
    )
    .await;
    assert_eq!(reply.queries[0].name().to_ascii(), "WeB.QuErY.cOnSuL.");
    assert_eq!(reply.answers.len(), 2);
    assert!(reply.answers.iter().all(|r| matches!(r.data, RData::A(_))));
}

#[tokio::test]
async fn unsynced_data_gets_servfail_with_an_extended_error_in_time() {
    let (server, _s) = start("").await;
    let started = std::time::Instant::now();
    let (reply, _) = udp(
        server,
        &query("later.query.consul.", RecordType::A, Some(1232))
            .to_vec()
            .unwrap(),
    )
    .await;
    let waited = started.elapsed();
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    assert!(
        waited >= Duration::from_millis(150),
        "answered after {waited:?}, before first_answer_wait"
    );
    match reply
        .edns
        .as_ref()
        .and_then(|e| e.option(EdnsCode::Unknown(EDNS_EXTENDED_ERROR)))
    {
        Some(EdnsOption::Unknown(_, data)) => {
            assert_eq!(u16::from_be_bytes([data[0], data[1]]), EDE_NOT_READY);
            let text = String::from_utf8_lossy(&data[2..]);
            assert!(text.contains("later in dc1"), "{text}");
        }
        other => panic!("no Extended DNS Error: {other:?}"),
    }
}

/// The Extended DNS Error of `reply`: info code and text.
fn extended_error(reply: &Message) -> Option<(u16, String)> {
    match reply
        .edns
        .as_ref()?
        .option(EdnsCode::Unknown(EDNS_EXTENDED_ERROR))?
    {
        EdnsOption::Unknown(_, data) if data.len() >= 2 => Some((
            u16::from_be_bytes([data[0], data[1]]),
            String::from_utf8_lossy(&data[2..]).into_owned(),
        )),
        _ => None,
    }
}

#[tokio::test]
async fn upstream_answers_names_the_resolver_does_not_answer() {
    let fake = FakeUpstream::start(Mode::Answer).await;
    let (server, _s) = start(&format!("upstream = \"{}\"", fake.addr)).await;

    let (reply, _) = udp(
        server,
        &query("WeB.CoNnEcT.consul.", RecordType::A, Some(4096))
            .to_vec()
            .unwrap(),
    )
    .await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert_eq!(reply.queries[0].name().to_ascii(), "WeB.CoNnEcT.consul.");
    assert!(reply.metadata.authoritative, "AA as the upstream set it");
    assert!(!reply.metadata.recursion_available);
    assert!(
        matches!(&reply.answers[..], [r] if r.data == RData::A(FAKE_ADDRESS.into())),
        "{:?}",
        reply.answers
    );
    assert_eq!(reply.additionals.len(), 1, "{:?}", reply.additionals);
    assert_eq!(
        reply.edns.as_ref().map(Edns::max_payload),
        Some(1232),
        "our OPT, not the upstream's"
    );

    let reply = tcp(server, &query("web.connect.consul.", RecordType::A, None)).await;
    assert!(matches!(&reply.answers[..], [r] if r.data == RData::A(FAKE_ADDRESS.into())));
    assert!(reply.edns.is_none());

    let (reply, _) = udp(
        server,
        &query("missing.connect.consul.", RecordType::A, None)
            .to_vec()
            .unwrap(),
    )
    .await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);

    // Names the resolver answers itself never reach the upstream.
    let before = fake.transports();
    assert_eq!(before, ["UDP", "TCP", "UDP"]);
    for name in ["web.query.consul.", "nothing.service.consul.", "consul."] {
        let (reply, _) = udp(server, &query(name, RecordType::A, None).to_vec().unwrap()).await;
        assert_ne!(
            reply.metadata.response_code,
            ResponseCode::ServFail,
            "{name}"
        );
    }
    assert_eq!(fake.transports(), before);
}

#[tokio::test]
async fn upstream_truncated_over_udp_is_fetched_over_tcp_and_cut_for_the_client() {
    let fake = FakeUpstream::start(Mode::TruncateUdp).await;
    let (server, _s) = start(&format!("upstream = \"{}\"", fake.addr)).await;
    let (reply, size) = udp(
        server,
        &query("big.connect.consul.", RecordType::A, Some(1232))
            .to_vec()
            .unwrap(),
    )
    .await;
    assert_eq!(fake.transports(), ["UDP", "TCP"]);
    assert!(reply.metadata.truncation && size <= 1232, "{size}");
    assert!(reply.answers.len() > 1 && reply.answers.len() < 100);
    assert!(reply.edns.is_some(), "OPT kept when truncating");

    let reply = tcp(
        server,
        &query("big.connect.consul.", RecordType::A, Some(1232)),
    )
    .await;
    assert!(!reply.metadata.truncation);
    assert_eq!(reply.answers.len(), 100);
}

#[tokio::test]
async fn upstream_stray_replies_are_ignored() {
    let fake = FakeUpstream::start(Mode::StrayFirst).await;
    let (server, _s) = start(&format!("upstream = \"{}\"", fake.addr)).await;
    let (reply, _) = udp(
        server,
        &query("web.connect.consul.", RecordType::A, None)
            .to_vec()
            .unwrap(),
    )
    .await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert!(matches!(&reply.answers[..], [r] if r.data == RData::A(FAKE_ADDRESS.into())));
}

#[tokio::test]
async fn upstream_silent_gets_a_prompt_servfail_with_an_extended_error() {
    let fake = FakeUpstream::start(Mode::Silent).await;
    let wait = Duration::from_secs(1);
    let (server, _s) = start_waiting("1s", &format!("upstream = \"{}\"", fake.addr)).await;
    let ask = |name: &str, edns| query(name, RecordType::A, edns).to_vec().unwrap();

    let started = std::time::Instant::now();
    let (reply, _) = udp(server, &ask("web.connect.consul.", Some(1232))).await;
    let udp_waited = started.elapsed();
    let started = std::time::Instant::now();
    let over_tcp = tcp(
        server,
        &query("web.connect.consul.", RecordType::A, Some(1232)),
    )
    .await;
    let tcp_waited = started.elapsed();
    println!("silent upstream: SERVFAIL after {udp_waited:?} (UDP), {tcp_waited:?} (TCP)");
    for (reply, waited) in [(&reply, udp_waited), (&over_tcp, tcp_waited)] {
        assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
        assert!(
            waited >= wait - Duration::from_millis(50) && waited < wait.mul_f32(1.5),
            "SERVFAIL after {waited:?} with first_answer_wait {wait:?}"
        );
        let (code, text) = extended_error(reply).expect("an Extended DNS Error");
        assert_eq!(code, EDE_NO_REACHABLE_AUTHORITY);
        assert!(text.contains(&fake.addr.to_string()), "{text}");
    }

    // Meanwhile, names of our own are answered at once.
    let started = std::time::Instant::now();
    let (reply, _) = udp(server, &ask("web.query.consul.", None)).await;
    assert_eq!(reply.answers.len(), 2);
    assert!(started.elapsed() < Duration::from_millis(200));
}

#[tokio::test]
async fn upstream_unset_means_nxdomain_and_no_relay() {
    let (server, _s) = start("").await;
    let (reply, _) = udp(
        server,
        &query("web.connect.consul.", RecordType::A, None)
            .to_vec()
            .unwrap(),
    )
    .await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
}

#[test]
fn the_fast_path_takes_a_thread_per_two_cores_by_default() {
    let threads: Vec<usize> = [1, 2, 3, 4, 64].map(default_udp_threads).to_vec();
    assert_eq!(threads, [1, 1, 2, 2, 32]);
    assert!(matches!(UdpMode::from_config(true, 3), UdpMode::Fast(3)));
    assert!(matches!(UdpMode::from_config(false, 3), UdpMode::Hickory));
}

#[test]
fn question_labels_are_found_or_refused() {
    assert_eq!(name_labels(&[0, 0, 1, 0, 1]), Some((vec![], 0)));
    assert_eq!(
        name_labels(b"\x03web\x06consul\x00\x00\x01\x00\x01"),
        Some((vec![0, 4], 11))
    );
    // A pointer, a reserved label type, a name cut short, no bytes.
    assert_eq!(name_labels(b"\x03web\xc0\x0c"), None);
    assert_eq!(name_labels(b"\x40web"), None);
    assert_eq!(name_labels(b"\x03web"), None);
    assert_eq!(name_labels(b"\x03we"), None);
    assert_eq!(name_labels(b""), None);
}
