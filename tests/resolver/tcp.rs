//! Issue 8: DNS over TCP under hostile clients. `dns.tcp_max_connections`
//! holds (one more is closed at once, UDP keeps answering), idle and slow
//! ("slow loris") connections are closed after `dns.tcp_idle_timeout`,
//! pipelined queries are answered in order, and a 64 KiB message is read.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message};
use hickory_proto::rr::RecordType;
use hickory_proto::rr::rdata::opt::EdnsOption;

use crate::support::{Federation, Net, Server, poll, query, server_config, try_udp};

/// The cap and the idle timeout of these tests.
const MAX: usize = 8;
const IDLE: Duration = Duration::from_secs(1);

fn start(net: Net) -> (Federation, Server) {
    let federation = Federation::start(net);
    federation.grafana_everywhere(net);
    let config = server_config(net, &federation, "").replacen(
        "ttl = \"0s\"\n",
        &format!("ttl = \"0s\"\ntcp_max_connections = {MAX}\ntcp_idle_timeout = \"1s\"\n"),
        1,
    );
    assert!(config.contains("tcp_max_connections"), "{config}");
    let server = Server::start_with(net, &config);
    (federation, server)
}

fn connect(server: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&server, Duration::from_secs(2)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    stream
}

/// A query framed for TCP.
fn framed(message: &Message) -> Vec<u8> {
    let bytes = message.to_vec().expect("encodes");
    let mut out = u16::try_from(bytes.len())
        .expect("fits")
        .to_be_bytes()
        .to_vec();
    out.extend_from_slice(&bytes);
    out
}

/// Reads one framed reply.
fn read_reply(stream: &mut TcpStream) -> Message {
    let mut length = [0u8; 2];
    stream.read_exact(&mut length).expect("a length prefix");
    let mut reply = vec![0u8; usize::from(u16::from_be_bytes(length))];
    stream.read_exact(&mut reply).expect("a reply");
    Message::from_vec(&reply).expect("the reply decodes")
}

/// How long until the server closes `stream` (reads EOF or a reset), at
/// most `limit`.
fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    stream.set_read_timeout(Some(limit)).expect("timeout");
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => Some(started.elapsed()),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => Some(started.elapsed()),
        _ => None,
    }
}

#[test]
fn pipelined_queries_are_answered_in_order_and_64_kib_messages_are_read() {
    let net = Net::claim(155);
    let (_federation, server) = start(net);
    let mut stream = connect(server.dns());
    let names = [
        "grafana.query.consul",
        "nosuch.query.consul",
        "grafana.service.consul",
    ];
    let mut all = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let mut q = query(name, RecordType::A);
        q.metadata.id = 100 + i as u16;
        all.extend_from_slice(&framed(&q));
    }
    stream.write_all(&all).expect("send three at once");
    for (i, name) in names.iter().enumerate() {
        let reply = read_reply(&mut stream);
        assert_eq!(reply.metadata.id, 100 + i as u16, "{name}: in order");
        assert_eq!(reply.queries[0].name().to_string(), format!("{name}."));
    }

    // A query padded to a 65,535-byte message: read whole and answered.
    let mut big = query("grafana.query.consul", RecordType::A);
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    big.set_edns(edns);
    let unpadded = big.to_vec().unwrap().len();
    let padding = 65_535 - unpadded - 4;
    big.edns
        .as_mut()
        .unwrap()
        .options_mut()
        .insert(EdnsOption::Unknown(12, vec![0; padding]));
    big.metadata.id = 200;
    let bytes = framed(&big);
    assert_eq!(bytes.len(), 2 + 65_535);
    stream.write_all(&bytes).expect("send 64 KiB");
    let reply = read_reply(&mut stream);
    assert_eq!(reply.metadata.id, 200);
    assert_eq!(reply.answers.len(), 2, "{reply:?}");
    // The connection still serves.
    stream
        .write_all(&framed(&query("grafana.query.consul", RecordType::A)))
        .unwrap();
    assert_eq!(read_reply(&mut stream).answers.len(), 2);
}

#[test]
fn connections_past_the_cap_are_closed_and_slow_senders_dropped() {
    let net = Net::claim(156);
    let (_federation, server) = start(net);
    let dns = server.dns();
    let mut held: Vec<TcpStream> = (0..MAX).map(|_| connect(dns)).collect();
    // Each held connection is served (so it is counted).
    for stream in &mut held {
        stream
            .write_all(&framed(&query("grafana.query.consul", RecordType::A)))
            .unwrap();
        assert_eq!(read_reply(stream).answers.len(), 2);
    }
    // One more is closed at once; UDP answers meanwhile.
    let mut extra = connect(dns);
    let _ = extra.write_all(&framed(&query("grafana.query.consul", RecordType::A)));
    let took = closed_within(&mut extra, Duration::from_millis(500))
        .expect("a connection past the cap is closed");
    println!("past the cap: closed after {took:?}");
    let started = Instant::now();
    let udp = try_udp(
        dns,
        &query("grafana.query.consul", RecordType::A),
        Duration::from_secs(1),
    );
    assert_eq!(
        udp.map(|r| r.answers.len()),
        Some(2),
        "UDP while TCP is full"
    );
    assert!(
        started.elapsed() < Duration::from_millis(50),
        "{:?}",
        started.elapsed()
    );
    // The warning is written just after the close the client saw.
    let warned = poll(Duration::from_secs(2), Duration::from_millis(10), || {
        let lines = server.log_lines(&["DNS TCP connection limit reached"]);
        (!lines.is_empty()).then_some(lines.len())
    });
    assert_eq!(warned, Some(1), "{}", server.logs());

    // The idle ones go after the idle timeout, freeing their places.
    for stream in &mut held {
        let took = closed_within(stream, IDLE * 3).expect("an idle connection is closed");
        assert!(took <= IDLE * 2, "closed after {took:?}");
    }
    drop(held);

    // A slow sender: a byte every 200 ms, never a whole message.
    let mut slow = connect(dns);
    let started = Instant::now();
    let message = framed(&query("grafana.query.consul", RecordType::A));
    let mut closed = false;
    for byte in message.iter().cycle().take(40) {
        if slow.write_all(&[*byte]).is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        if started.elapsed() > IDLE * 3 {
            break;
        }
    }
    if !closed {
        closed = closed_within(&mut slow, IDLE).is_some();
    }
    assert!(
        closed,
        "a slow sender was still connected after {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() < IDLE * 3, "{:?}", started.elapsed());

    // Places are free again.
    let mut again = connect(dns);
    again
        .write_all(&framed(&query("grafana.query.consul", RecordType::A)))
        .unwrap();
    assert_eq!(read_reply(&mut again).answers.len(), 2);
}

/// The open descriptors of process `pid` that are sockets.
fn sockets_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// About 30 s (`HOSTILE_SECS`) of random names over UDP, storms of TCP
/// connections past the cap and slow-loris senders, all at once: a UDP
/// probe is answered within 50 ms throughout, the server's sockets stay
/// within the cap, and its RSS within 20 % of where it started.
#[test]
fn hostile_load_leaves_the_server_answering_within_bounds() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    let net = Net::claim(159);
    let (_federation, server) = start(net);
    let dns = server.dns();
    let length = Duration::from_secs(
        std::env::var("HOSTILE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(30),
    );
    let probe = query("grafana.query.consul", RecordType::A);
    // Warm-up, then the baselines.
    for _ in 0..50 {
        assert!(try_udp(dns, &probe, Duration::from_secs(1)).is_some());
    }
    let rss_before = server.rss_kib();
    let sockets_before = sockets_of(server.pid());
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();

    // Random names, about 4,000 a second.
    {
        let (stop, sent) = (Arc::clone(&stop), Arc::clone(&sent));
        workers.push(std::thread::spawn(move || {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
            socket.set_nonblocking(true).expect("nonblocking");
            let mut rng = fastrand::Rng::with_seed(159);
            let mut buffer = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..40 {
                    let label: String = (0..rng.usize(1..40)).map(|_| rng.alphanumeric()).collect();
                    let kind = if rng.bool() { "query" } else { "service" };
                    let mut q = query(&format!("{label}.{kind}.consul"), RecordType::A);
                    q.metadata.id = rng.u16(..);
                    let _ = socket.send_to(&q.to_vec().expect("encodes"), dns);
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                while socket.recv_from(&mut buffer).is_ok() {}
                std::thread::sleep(Duration::from_millis(10));
            }
        }));
    }
    // TCP storms: twice the cap, held a moment, again and again.
    {
        let (stop, refused) = (Arc::clone(&stop), Arc::clone(&refused));
        workers.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let mut held: Vec<TcpStream> = (0..MAX * 2)
                    .filter_map(|_| TcpStream::connect_timeout(&dns, Duration::from_secs(1)).ok())
                    .collect();
                std::thread::sleep(Duration::from_millis(200));
                for stream in &mut held {
                    let _ = stream.set_nonblocking(true);
                    let mut byte = [0u8; 1];
                    if matches!(stream.read(&mut byte), Ok(0)) {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
                drop(held);
            }
        }));
    }
    // Slow loris: a byte every 300 ms on a few connections.
    {
        let stop = Arc::clone(&stop);
        workers.push(std::thread::spawn(move || {
            let mut rng = fastrand::Rng::with_seed(7);
            let mut slow: Vec<TcpStream> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                while slow.len() < 4 {
                    if let Ok(stream) = TcpStream::connect_timeout(&dns, Duration::from_secs(1)) {
                        slow.push(stream);
                    }
                }
                slow.retain_mut(|s| s.write_all(&[rng.u8(..)]).is_ok());
                std::thread::sleep(Duration::from_millis(300));
            }
        }));
    }

    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut most_sockets = 0;
    let mut probes = 0;
    while started.elapsed() < length {
        let asked = Instant::now();
        let reply = try_udp(dns, &probe, Duration::from_secs(1));
        let took = asked.elapsed();
        assert_eq!(
            reply.map(|r| r.answers.len()),
            Some(2),
            "probe {probes} at {:?}",
            started.elapsed()
        );
        slowest = slowest.max(took);
        most_sockets = most_sockets.max(sockets_of(server.pid()));
        probes += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.join().expect("a load thread");
    }
    let rss_after = server.rss_kib();
    println!(
        "hostile load for {length:?}: {} random names sent, {} TCP connections closed at the cap, \
         {probes} probes, slowest {slowest:?}, sockets {sockets_before} -> at most {most_sockets} \
         (cap {MAX}), RSS {rss_before} -> {rss_after} KiB",
        sent.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
    );
    assert!(
        slowest < Duration::from_millis(50),
        "a probe took {slowest:?}"
    );
    assert!(
        refused.load(Ordering::Relaxed) > 0,
        "the storms never reached the cap"
    );
    // The cap, plus the sockets the server had anyway (listeners, Consul);
    // a few more for Consul connections opened meanwhile.
    assert!(
        most_sockets <= sockets_before + MAX + 4,
        "{most_sockets} sockets open (cap {MAX}, {sockets_before} before)"
    );
    assert!(
        rss_after * 10 <= rss_before * 12,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
}
