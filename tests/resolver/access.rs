//! Issue 8: `dns.allow`. A client outside the list gets REFUSED over UDP
//! (also for a name the fast path has cached for an allowed client) and
//! TCP; a reload that empties the list answers everyone.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;

use crate::support::{Federation, Net, Server, poll, query, server_config};

/// `127.0.n.host` of the test's network.
fn client_ip(net: Net, host: u8) -> Ipv4Addr {
    let IpAddr::V4(dns) = net.dns().ip() else {
        unreachable!("IPv4")
    };
    let [a, b, c, _] = dns.octets();
    Ipv4Addr::new(a, b, c, host)
}

/// The reply to `name` A over UDP from `from`.
fn udp_from(from: Ipv4Addr, server: SocketAddr, name: &str) -> Message {
    let socket = UdpSocket::bind((from, 0)).expect("bind the client");
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let bytes = query(name, RecordType::A).to_vec().expect("encodes");
    socket.send_to(&bytes, server).expect("send");
    let mut buffer = [0u8; 4096];
    let (n, _) = socket.recv_from(&mut buffer).expect("a reply");
    Message::from_vec(&buffer[..n]).expect("decodes")
}

/// The reply to `name` A over TCP from `from`.
fn tcp_from(from: Ipv4Addr, server: SocketAddr, name: &str) -> Message {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("a socket");
    socket
        .bind(&SocketAddr::from((from, 0)).into())
        .expect("bind the client");
    socket
        .connect_timeout(&server.into(), Duration::from_secs(2))
        .expect("connect");
    let mut stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let bytes = query(name, RecordType::A).to_vec().expect("encodes");
    let mut framed = u16::try_from(bytes.len()).unwrap().to_be_bytes().to_vec();
    framed.extend_from_slice(&bytes);
    stream.write_all(&framed).expect("send");
    let mut length = [0u8; 2];
    stream.read_exact(&mut length).expect("a length");
    let mut reply = vec![0u8; usize::from(u16::from_be_bytes(length))];
    stream.read_exact(&mut reply).expect("a reply");
    Message::from_vec(&reply).expect("decodes")
}

#[test]
fn clients_outside_dns_allow_are_refused_until_a_reload_lets_them_in() {
    let net = Net::claim(157);
    let federation = Federation::start(net);
    let (grafana, _) = federation.grafana_everywhere(net);
    let (inside, outside) = (client_ip(net, 10), client_ip(net, 11));
    let base = server_config(net, &federation, "");
    let restricted = base.replacen(
        "ttl = \"0s\"\n",
        &format!("ttl = \"0s\"\nallow = [\"{inside}/32\", \"::1\"]\n"),
        1,
    );
    assert_ne!(restricted, base);
    let server = Server::start_with(net, &restricted);
    let dns = server.dns();
    let name = "grafana.query.consul";

    for round in 0..3 {
        // The later rounds come from the fast path's cache.
        let allowed = udp_from(inside, dns, name);
        assert_eq!(
            allowed.metadata.response_code,
            ResponseCode::NoError,
            "round {round}"
        );
        assert_eq!(allowed.answers.len(), grafana.len(), "round {round}");
        let refused = udp_from(outside, dns, name);
        assert_eq!(
            refused.metadata.response_code,
            ResponseCode::Refused,
            "round {round}: {refused:?}"
        );
        assert!(refused.answers.is_empty(), "round {round}: {refused:?}");
        assert_eq!(refused.queries.len(), 1, "the question is echoed");
    }
    assert_eq!(tcp_from(inside, dns, name).answers.len(), grafana.len());
    assert_eq!(
        tcp_from(outside, dns, name).metadata.response_code,
        ResponseCode::Refused
    );

    // A reload without dns.allow answers everyone.
    server.rewrite_config(&base);
    server.signal("HUP");
    let answered = poll(Duration::from_secs(5), Duration::from_millis(50), || {
        let reply = udp_from(outside, dns, name);
        (reply.metadata.response_code == ResponseCode::NoError).then_some(reply)
    })
    .unwrap_or_else(|| panic!("still refused after the reload: {}", server.logs()));
    assert_eq!(answered.answers.len(), grafana.len());
    assert_eq!(tcp_from(outside, dns, name).answers.len(), grafana.len());
}

#[test]
fn dns_rate_limit_drops_and_slips_past_the_rate_per_network() {
    let net = Net::claim(160);
    let federation = Federation::start(net);
    let (grafana, _) = federation.grafana_everywhere(net);
    let config = server_config(net, &federation, "").replacen(
        "ttl = \"0s\"\n",
        "ttl = \"0s\"\nrate_limit = 20\nrate_limit_slip = 2\n",
        1,
    );
    let server = Server::start_with(net, &config);
    let dns = server.dns();
    let name = "grafana.query.consul";
    // 200 queries at once from one client: 20 (the burst) answered, and of
    // the rest about one in two sent truncated, the others dropped.
    let socket = UdpSocket::bind((client_ip(net, 20), 0)).expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let started = std::time::Instant::now();
    for id in 0..200u16 {
        let mut q = query(name, RecordType::A);
        q.metadata.id = id;
        socket.send_to(&q.to_vec().unwrap(), dns).expect("send");
    }
    let (mut full, mut truncated) = (0, 0);
    let mut buffer = [0u8; 4096];
    while let Ok((n, _)) = socket.recv_from(&mut buffer) {
        let reply = Message::from_vec(&buffer[..n]).expect("decodes");
        if reply.metadata.truncation {
            assert!(reply.answers.is_empty(), "{reply:?}");
            assert_eq!(reply.queries.len(), 1, "the slip keeps the question");
            truncated += 1;
        } else {
            assert_eq!(reply.answers.len(), grafana.len());
            full += 1;
        }
    }
    let took = started.elapsed().as_secs_f64();
    println!(
        "rate limit 20/s, slip 2: {full} answered, {truncated} truncated of 200 in {took:.2} s"
    );
    // The burst, plus what the rate earned while they were sent.
    let earned = (took * 20.0).ceil() as usize;
    assert!((20..=20 + earned).contains(&full), "{full} answered");
    let over = 200 - full;
    assert!(
        truncated + 2 >= over / 2 && truncated <= over / 2 + 2,
        "{truncated} truncated of {over} over the limit"
    );
    // TCP is never limited; another network is not this one's.
    assert_eq!(
        tcp_from(client_ip(net, 20), dns, name).answers.len(),
        grafana.len()
    );
    let elsewhere = Ipv4Addr::new(127, 99, 0, 1);
    assert_eq!(udp_from(elsewhere, dns, name).answers.len(), grafana.len());
    assert!(
        poll(Duration::from_secs(2), Duration::from_millis(20), || {
            (!server.log_lines(&["over dns.rate_limit"]).is_empty()).then_some(())
        })
        .is_some(),
        "{}",
        server.logs()
    );
}
