//! Shared harness of the resolver's end-to-end tests.
//!
//! - [`Net`]: the loopback addresses one test owns, so tests run in
//!   parallel without sharing a port.
//! - [`Federation`]: `consul_sim` (dc1 and dc2) on a background tokio
//!   runtime in the test process; the server binary reaches it over
//!   loopback. [`Instance`] registers a node, a service and its check.
//! - [`Server`]: the `consul-failover-dns` binary as a child process,
//!   killed on drop, its log printed when the test fails.
//! - DNS clients: [`query`], [`udp`], [`tcp`] (hickory-proto messages over
//!   std sockets) and [`dig`] (the real `dig`, its output parsed).
//! - Real peers: [`Unbound`] forwarding `consul.`, [`in_namespace`] for
//!   `getent`/`curl` in a private mount namespace whose `/etc/resolv.conf`
//!   names that unbound, [`serve_http`] for the services they reach,
//!   [`Knot`], a known-good authoritative server the harness checks itself
//!   against, and [`Dnsmasq`], the upstream `dns.upstream` relays to.
//!
//! Every wait is bounded and every child process is killed on drop.

use std::collections::{BTreeSet, HashSet};
use std::fs::{self, File};
use std::io::{self, Read, Seek, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use consul_sim::Sim;
use consul_sim::model::{CheckInput, RegisterRequest, ServiceInput, Weights};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tempfile::TempDir;
use tokio::runtime::Runtime;

//------------ Programs -------------------------------------------------------

/// Waits (at most 15 s) until the DNS server `name` started as `child`
/// answers `consul. SOA` on `addr` (with an answer record if `served`);
/// panics with `setup` if it exits or never answers.
pub fn wait_answering(child: &mut Child, addr: SocketAddr, name: &str, served: bool, setup: &str) {
    let probe = query("consul.", RecordType::SOA);
    let up = poll(Duration::from_secs(15), Duration::from_millis(50), || {
        if let Some(status) = child.try_wait().expect("child status") {
            panic!("{name} exited with {status} (its log follows)\n{setup}");
        }
        try_udp(addr, &probe, Duration::from_millis(500))
            .filter(|reply| !served || !reply.answers.is_empty())
    });
    if up.is_none() {
        panic!("{name} did not answer consul. within 15 s (its log follows)");
    }
}

/// How to install every program these tests talk to.
pub const INSTALL_HINT: &str = "apt-get install -y bind9-dnsutils bind9 bind9-utils unbound dnsmasq-base knot dnsperf curl prometheus";

/// The Debian package that ships program `name`, for the message of a
/// missing one.
fn package_of(name: &str) -> &'static str {
    match name {
        "dig" => "bind9-dnsutils",
        "named" => "bind9",
        "named-checkconf" => "bind9-utils",
        "unbound" | "unbound-checkconf" => "unbound",
        "dnsmasq" => "dnsmasq-base",
        "knotd" => "knot",
        "dnsperf" => "dnsperf",
        "curl" => "curl",
        "getent" => "libc-bin",
        "unshare" => "util-linux",
        "prometheus" | "promtool" => "prometheus",
        _ => "(see INSTALL_HINT)",
    }
}

/// The path of the external program `name` (searched in `PATH`, then
/// `/usr/sbin` and `/sbin`). A missing program fails the test with the
/// package to install: these tests are never skipped silently.
pub fn program(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not installed; this test needs it: apt-get install -y {} \
                 (every program these tests use: {INSTALL_HINT})",
                package_of(name)
            )
        })
}

/// Runs `command` to completion, for at most `limit` (then kills it and
/// panics), and returns its status and output.
pub fn run_bounded(command: &mut Command, limit: Duration) -> Output {
    let mut stdout = tempfile::tempfile().expect("temporary file");
    let mut stderr = tempfile::tempfile().expect("temporary file");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(stdout.try_clone().expect("file clones"))
        .stderr(stderr.try_clone().expect("file clones"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("child status") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} still running after {limit:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let read = |file: &mut File| {
        let mut bytes = Vec::new();
        file.rewind().expect("rewind");
        file.read_to_end(&mut bytes).expect("read output");
        bytes
    };
    Output {
        status,
        stdout: read(&mut stdout),
        stderr: read(&mut stderr),
    }
}

//------------ Waiting --------------------------------------------------------

/// Calls `probe` every `every` until it returns `Some`, for at most
/// `limit`; `None` when time ran out.
pub fn poll<T>(
    limit: Duration,
    every: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

//------------ Net ------------------------------------------------------------

/// Numbers already claimed in this test process.
static CLAIMED: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// The loopback addresses one test owns, from its number `n` (Linux routes
/// all of 127/8 to `lo`, so no set-up is needed):
///
/// | what | address |
/// |---|---|
/// | the server's DNS (UDP and TCP) | `127.0.n.1:8600` |
/// | the server's admin HTTP | `127.0.n.1:8653` |
/// | a forwarder (unbound) | `127.0.n.2:53` |
/// | a forwarder bound to `lo`'s address (named) | `127.0.0.1:(20000+n)` |
/// | a stub refusing every question ([`Net::refuser`]) | `127.0.n.250:53` |
/// | an upstream DNS (dnsmasq, [`Dnsmasq::addr_for`]) | `127.0.n.9:8601` |
/// | the simulated Consul of dc1, dc2 | `127.0.n.3:0`, `127.0.n.4:0` |
/// | instances in dc1, dc2 | `127.(10+n).1.x`, `127.(10+n).2.x` |
#[derive(Clone, Copy, Debug)]
pub struct Net {
    n: u8,
}

impl Net {
    /// Claims number `n` (1..=200) for the calling test; panics if another
    /// test of this process has it.
    pub fn claim(n: u8) -> Self {
        assert!((1..=200).contains(&n), "test number {n} is out of 1..=200");
        let mut claimed = CLAIMED.lock().unwrap_or_else(|e| e.into_inner());
        assert!(
            !claimed.contains(&n),
            "test number {n} is used by two tests"
        );
        claimed.push(n);
        Self { n }
    }

    /// The server's DNS address.
    pub fn dns(self) -> SocketAddr {
        SocketAddr::from(([127, 0, self.n, 1], 8600))
    }

    /// A forwarder's address for a program that listens only on the
    /// addresses of an interface (`named`: `lo` has 127.0.0.1 alone):
    /// `127.0.0.1:(20000 + n)`, below the ephemeral port range.
    pub fn forwarder_on_lo(self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 20_000 + u16::from(self.n)))
    }

    /// Where a forwarder under test sends every name outside `consul.`
    /// (`127.0.n.250:53`), so that nothing leaves this machine: a stub that
    /// refuses every question listens there.
    pub fn refuser(self) -> SocketAddr {
        SocketAddr::from(([127, 0, self.n, 250], 53))
    }

    /// The server's admin HTTP address.
    pub fn admin(self) -> SocketAddr {
        SocketAddr::from(([127, 0, self.n, 1], 8653))
    }

    /// The forwarder's address (port 53: glibc's resolver knows no other).
    pub fn forwarder(self) -> SocketAddr {
        SocketAddr::from(([127, 0, self.n, 2], 53))
    }

    /// Where the simulated Consul of the `index`th datacenter listens.
    pub fn consul(self, index: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, self.n, 3 + index], 0))
    }

    /// Address `host` of datacenter number `dc` (1 or 2).
    pub fn instance(self, dc: u8, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(127, 10 + self.n, dc, host)
    }

    /// An IPv6 address (data only; nothing is sent to it).
    pub fn instance_v6(self, dc: u8, host: u8) -> Ipv6Addr {
        Ipv6Addr::new(
            0xfd00,
            0,
            u16::from(self.n),
            u16::from(dc),
            0,
            0,
            0,
            u16::from(host),
        )
    }
}

//------------ Federation -----------------------------------------------------

/// The simulated Consul federation (dc1, dc2) of one test, on its own
/// multi-thread runtime.
pub struct Federation {
    /// The simulator (dropped before the runtime: fields drop in order).
    pub sim: Sim,
    /// Runs the simulator's listeners and any [`serve_http`] stub.
    runtime: Runtime,
}

/// A multi-thread tokio runtime with two workers, for work in the
/// background of a synchronous test.
pub fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

impl Federation {
    /// Starts dc1 and dc2 on `net`'s Consul addresses.
    pub fn start(net: Net) -> Self {
        let runtime = runtime();
        let sim = runtime
            .block_on(
                Sim::builder()
                    .dc("dc1", net.consul(0))
                    .dc("dc2", net.consul(1))
                    .start(),
            )
            .expect("simulator starts");
        Self { sim, runtime }
    }

    /// The runtime the simulator runs on.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// `http://ip:port` of `dc`'s Consul HTTP API.
    pub fn url(&self, dc: &str) -> String {
        self.runtime.block_on(self.sim.url(dc))
    }

    /// Registers `instance` in its datacenter.
    pub fn register(&self, instance: &Instance) {
        self.sim
            .register(instance.dc, instance.request())
            .unwrap_or_else(|e| panic!("register {instance:?}: {e}"));
    }

    /// The two-instance grafana of dc1 and dc2 most tests use: the sorted
    /// addresses of each.
    pub fn grafana_everywhere(&self, net: Net) -> (Vec<Ipv4Addr>, Vec<Ipv4Addr>) {
        let dc1 =
            self.register_service("dc1", "grafana", &[net.instance(1, 1), net.instance(1, 2)]);
        let dc2 =
            self.register_service("dc2", "grafana", &[net.instance(2, 1), net.instance(2, 2)]);
        (dc1, dc2)
    }

    /// Registers `service` in `dc` on nodes `<service>-1`, `<service>-2`…
    /// at `addresses` (passing, port 8080) and returns the addresses sorted.
    pub fn register_service(
        &self,
        dc: &'static str,
        service: &str,
        addresses: &[Ipv4Addr],
    ) -> Vec<Ipv4Addr> {
        for (i, address) in addresses.iter().enumerate() {
            self.register(&Instance::new(
                dc,
                &format!("{service}-{}", i + 1),
                address,
                service,
            ));
        }
        let mut sorted = addresses.to_vec();
        sorted.sort();
        sorted
    }

    /// Sets check `check_id` on every node of `dc` (one Raft index, so all
    /// change at once) and returns how many checks it matched (at least 1).
    pub fn set_checks(&self, dc: &str, check_id: &str, status: &str) -> usize {
        let matched = self.sim.set_check_status(dc, None, check_id, status);
        assert!(matched > 0, "no check {check_id:?} in {dc}");
        matched
    }

    /// Sets check `check_id` of `node` in `dc`.
    pub fn set_check(&self, dc: &str, node: &str, check_id: &str, status: &str) {
        let matched = self.sim.set_check_status(dc, Some(node), check_id, status);
        assert_eq!(matched, 1, "check {check_id:?} of {node} in {dc}");
    }
}

/// One service instance to register: a node, its service and one service
/// check `<service>-health`.
#[derive(Clone, Debug)]
pub struct Instance {
    /// The datacenter.
    pub dc: &'static str,
    /// The node name.
    pub node: String,
    /// The node address.
    pub node_address: String,
    /// The service name (also its ID on the node).
    pub service: String,
    /// The service's own address, if any.
    pub service_address: Option<String>,
    /// The service port.
    pub port: u16,
    /// The check status: `passing`, `warning` or `critical`.
    pub status: &'static str,
    /// The service's `Weights` (passing, warning), if set.
    pub weights: Option<(i64, i64)>,
}

impl Instance {
    /// `service` on `node` at `address` in `dc`, port 8080, passing.
    pub fn new(dc: &'static str, node: &str, address: impl ToString, service: &str) -> Self {
        Self {
            dc,
            node: node.to_owned(),
            node_address: address.to_string(),
            service: service.to_owned(),
            service_address: None,
            port: 8080,
            status: consul_sim::model::PASSING,
            weights: None,
        }
    }

    /// Gives the service its own address.
    pub fn service_address(mut self, address: impl ToString) -> Self {
        self.service_address = Some(address.to_string());
        self
    }

    /// Sets the service port.
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Sets the check status.
    pub fn status(mut self, status: &'static str) -> Self {
        self.status = status;
        self
    }

    /// Sets the service's weights.
    pub fn weights(mut self, passing: i64, warning: i64) -> Self {
        self.weights = Some((passing, warning));
        self
    }

    /// The ID of the instance's check: `<service>-health`.
    pub fn check_id(service: &str) -> String {
        format!("{service}-health")
    }

    /// The catalog registration.
    fn request(&self) -> RegisterRequest {
        RegisterRequest {
            datacenter: Some(self.dc.to_owned()),
            node: Some(self.node.clone()),
            address: Some(self.node_address.clone()),
            service: Some(ServiceInput {
                id: Some(self.service.clone()),
                service: Some(self.service.clone()),
                address: self.service_address.clone(),
                port: Some(self.port),
                weights: self
                    .weights
                    .map(|(passing, warning)| Weights { passing, warning }),
                ..Default::default()
            }),
            check: Some(CheckInput {
                check_id: Some(Self::check_id(&self.service)),
                name: Some(format!("{} health", self.service)),
                status: Some(self.status.to_owned()),
                service_id: Some(self.service.clone()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

//------------ Server ---------------------------------------------------------

/// The configuration every server under test starts from: DNS and admin
/// on `net`, Consul at dc1's simulator, `grafana` as a configured query
/// failing over to dc2, and every implicit query failing over to dc2.
/// `extra` is appended (further `[[query]]` tables).
pub fn server_config(net: Net, federation: &Federation, extra: &str) -> String {
    format!(
        r#"[dns]
listen = ["{dns}"]
ttl = "0s"

[consul]
address = "{consul}"
datacenter = "dc1"
wait = "5s"

[queries.defaults]
failover = {{ datacenters = ["dc1", "dc2"] }}

[admin]
listen = "{admin}"

[[query]]
name = "grafana"
failover = {{ datacenters = ["dc2"] }}
{extra}"#,
        dns = net.dns(),
        admin = net.admin(),
        consul = federation.url("dc1"),
    )
}

/// A running `consul-failover-dns run -c FILE`, ready (`/ready` said 200).
/// Dropping it kills the process; if the test is failing, its log
/// (stderr) is printed.
pub struct Server {
    /// The process.
    child: Child,
    /// Holds the configuration file and the log.
    dir: TempDir,
    /// The addresses it serves.
    net: Net,
}

impl Server {
    /// Starts the server with [`server_config`] and waits until ready.
    pub fn start(net: Net, federation: &Federation) -> Self {
        Self::start_with(net, &server_config(net, federation, ""))
    }

    /// Starts the server with configuration `config` and waits (at most
    /// 30 s) until `/ready` says 200; panics with its log if it exits or
    /// never gets ready.
    pub fn start_with(net: Net, config: &str) -> Self {
        let mut server = Self::spawn_with(net, config);
        let ready = poll(Duration::from_secs(30), Duration::from_millis(20), || {
            if let Some(status) = server.child.try_wait().expect("child status") {
                panic!(
                    "the server exited with {status} before it was ready (its log follows)\n\
                     configuration:\n{config}"
                );
            }
            matches!(http_get(net.admin(), "/ready"), Ok((200, _))).then_some(())
        });
        if ready.is_none() {
            panic!("the server was not ready after 30 s (its log follows)");
        }
        server
    }

    /// Its DNS address.
    pub fn dns(&self) -> SocketAddr {
        self.net.dns()
    }

    /// What it logged so far.
    pub fn logs(&self) -> String {
        fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// `/metrics` (Prometheus text).
    pub fn metrics(&self) -> String {
        match http_get(self.net.admin(), "/metrics") {
            Ok((200, body)) => body,
            other => panic!("GET /metrics: {other:?}"),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- consul-failover-dns log ----\n{}---- end of log ----",
                self.logs()
            );
        }
    }
}

/// The value of the Prometheus sample `metric` whose labels include every
/// `name="value"` of `labels` (0 if there is none).
pub fn metric_value(metrics: &str, metric: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let rest = series.strip_prefix(metric)?;
            let matches = (rest.is_empty() || rest.starts_with('{'))
                && labels
                    .iter()
                    .all(|(name, value)| rest.contains(&format!("{name}=\"{value}\"")));
            matches.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// `GET path` over HTTP/1.0 (so the body is neither chunked nor kept
/// alive), with 2 s timeouts: the status and body.
pub fn http_get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| io::Error::other(format!("not an HTTP response: {response:?}")))?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    Ok((status, body.to_owned()))
}

//------------ DNS client -----------------------------------------------------

/// A standard query (opcode QUERY, RD set, class IN, no EDNS) for `name`
/// (case kept as written; a final dot is added) and `rtype`.
pub fn query(name: &str, rtype: RecordType) -> Message {
    let fqdn = if name.ends_with('.') {
        name.to_owned()
    } else {
        format!("{name}.")
    };
    let name = Name::from_ascii(&fqdn).unwrap_or_else(|e| panic!("bad name {fqdn:?}: {e}"));
    let mut message = Message::new(fastrand::u16(..), MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(name, rtype));
    message
}

/// `message` with an EDNS OPT record of version `version` advertising
/// `payload` bytes.
pub fn with_edns(mut message: Message, payload: u16, version: u8) -> Message {
    let mut edns = Edns::new();
    edns.set_max_payload(payload).set_version(version);
    message.edns = Some(edns);
    message
}

/// Sends `query` over UDP and returns the reply's raw bytes, or `None` if
/// nothing with the query's ID came back within `timeout`.
pub fn udp_bytes(server: SocketAddr, query: &Message, timeout: Duration) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind(SocketAddr::new(server.ip(), 0)).expect("bind a UDP socket");
    socket.connect(server).expect("connect the UDP socket");
    socket
        .send(&query.to_vec().expect("the query encodes"))
        .expect("send the query");
    let deadline = Instant::now() + timeout;
    let mut buffer = vec![0; 65_535];
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        socket
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("timeout");
        let length = match socket.recv(&mut buffer) {
            Ok(length) => length,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return None;
            }
            // ICMP port unreachable: nothing listens (yet).
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return None,
            Err(e) => panic!("receive from {server}: {e}"),
        };
        if length >= 2 && u16::from_be_bytes([buffer[0], buffer[1]]) == query.metadata.id {
            return Some(buffer[..length].to_vec());
        }
    }
}

/// Sends `query` over UDP and decodes the reply; `None` if none came in
/// `timeout`.
pub fn try_udp(server: SocketAddr, query: &Message, timeout: Duration) -> Option<Message> {
    let bytes = udp_bytes(server, query, timeout)?;
    Some(decode(&bytes, server))
}

/// Sends `query` over UDP (up to 3 tries of 2 s) and decodes the reply.
pub fn udp(server: SocketAddr, query: &Message) -> Message {
    (0..3)
        .find_map(|_| try_udp(server, query, Duration::from_secs(2)))
        .unwrap_or_else(|| panic!("no UDP answer from {server} to {:?}", query.queries))
}

/// Sends `query` over TCP (2-byte length prefix) and decodes the reply,
/// with 5 s timeouts.
pub fn tcp(server: SocketAddr, query: &Message) -> Message {
    let mut stream = TcpStream::connect_timeout(&server, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect to {server} over TCP: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let bytes = query.to_vec().expect("the query encodes");
    let length = u16::try_from(bytes.len()).expect("a query fits in 64 KiB");
    let mut framed = length.to_be_bytes().to_vec();
    framed.extend_from_slice(&bytes);
    stream.write_all(&framed).expect("send over TCP");
    let mut length = [0; 2];
    stream
        .read_exact(&mut length)
        .expect("read the TCP length prefix");
    let mut reply = vec![0; usize::from(u16::from_be_bytes(length))];
    stream.read_exact(&mut reply).expect("read the TCP reply");
    let message = decode(&reply, server);
    assert_eq!(message.metadata.id, query.metadata.id, "TCP reply ID");
    message
}

/// Decodes a reply, panicking with its bytes if it does not parse.
fn decode(bytes: &[u8], server: SocketAddr) -> Message {
    let message = Message::from_vec(bytes)
        .unwrap_or_else(|e| panic!("undecodable reply from {server} ({e}): {bytes:02x?}"));
    assert_eq!(
        message.metadata.message_type,
        MessageType::Response,
        "QR of the reply from {server}"
    );
    message
}

/// The IPv4 addresses of the A records in `records`, sorted.
pub fn ipv4s(records: &[Record]) -> Vec<Ipv4Addr> {
    let mut out: Vec<Ipv4Addr> = records
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

/// The IPv6 addresses of the AAAA records in `records`, sorted.
pub fn ipv6s(records: &[Record]) -> Vec<Ipv6Addr> {
    let mut out: Vec<Ipv6Addr> = records
        .iter()
        .filter_map(|r| match &r.data {
            RData::AAAA(a) => Some(a.0),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

/// A one-line account of `message` (header, counts, OPT, the first
/// answers), for assertion messages about large replies.
pub fn brief(message: &Message) -> String {
    let m = &message.metadata;
    let flags: Vec<&str> = [
        (m.authoritative, "aa"),
        (m.truncation, "tc"),
        (m.recursion_desired, "rd"),
        (m.recursion_available, "ra"),
    ]
    .into_iter()
    .filter_map(|(set, name)| set.then_some(name))
    .collect();
    let first: Vec<String> = message
        .answers
        .iter()
        .take(3)
        .map(ToString::to_string)
        .collect();
    format!(
        "id {} {:?} rcode {} flags [{}] answers {} (first: {first:?}) authorities {} additionals {} OPT {:?}",
        m.id,
        m.op_code,
        u16::from(m.response_code),
        flags.join(" "),
        message.answers.len(),
        message.authorities.len(),
        message.additionals.len(),
        message
            .edns
            .as_ref()
            .map(|e| (e.version(), e.max_payload())),
    )
}

/// The record types of `records`, in order.
pub fn types(records: &[Record]) -> Vec<RecordType> {
    records.iter().map(Record::record_type).collect()
}

/// Asserts `records` (an authority section) is exactly the SOA of the
/// zone apex `consul.` (RFC 2308 negative answers).
pub fn assert_apex_soa(records: &[Record], context: &str) {
    assert_eq!(
        types(records),
        [RecordType::SOA],
        "{context}: authority section {records:?}"
    );
    assert_eq!(
        records[0].name.to_ascii().to_lowercase(),
        "consul.",
        "{context}: SOA owner"
    );
    let RData::SOA(soa) = &records[0].data else {
        unreachable!("checked above")
    };
    assert_eq!(
        soa.mname.to_ascii().to_lowercase(),
        "ns.consul.",
        "{context}: SOA mname"
    );
    assert_eq!(
        soa.rname.to_ascii().to_lowercase(),
        "hostmaster.consul.",
        "{context}: SOA rname"
    );
}

//------------ dig ------------------------------------------------------------

/// One record line of dig's output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DigRecord {
    /// Owner name, as printed.
    pub name: String,
    /// TTL.
    pub ttl: u32,
    /// Type mnemonic (`A`, `SOA`, …).
    pub rtype: String,
    /// The RDATA fields, space separated.
    pub data: String,
}

/// dig's output, parsed.
#[derive(Clone, Debug, Default)]
pub struct Dig {
    /// `opcode:` of the header line (`QUERY`, `STATUS`…).
    pub opcode: String,
    /// `status:` of the header line (`NOERROR`, `NXDOMAIN`, `BADVERS`…).
    pub status: String,
    /// The header flags (`qr`, `aa`, `tc`, `rd`, `ra`…).
    pub flags: BTreeSet<String>,
    /// The EDNS version and UDP size of the OPT pseudo-section, if any.
    pub edns: Option<(u8, u16)>,
    /// The answer section.
    pub answer: Vec<DigRecord>,
    /// The authority section.
    pub authority: Vec<DigRecord>,
    /// The additional section (OPT excluded).
    pub additional: Vec<DigRecord>,
    /// The whole output, for messages.
    pub text: String,
}

impl Dig {
    /// Whether header flag `flag` is set.
    pub fn flag(&self, flag: &str) -> bool {
        self.flags.contains(flag)
    }

    /// The sorted RDATA of the answer records of type `rtype`.
    pub fn answer_data(&self, rtype: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .answer
            .iter()
            .filter(|r| r.rtype == rtype)
            .map(|r| r.data.clone())
            .collect();
        out.sort();
        out
    }

    /// Parses dig's default output (header comments and sections).
    pub fn parse(text: &str) -> Self {
        let mut dig = Self {
            text: text.to_owned(),
            ..Self::default()
        };
        let mut section = "";
        for line in text.lines() {
            let line = line.trim_end();
            if let Some(header) = line.strip_prefix(";; ->>HEADER<<- ") {
                for part in header.split(", ") {
                    match part.split_once(": ") {
                        Some(("opcode", value)) => dig.opcode = value.to_owned(),
                        Some(("status", value)) => dig.status = value.to_owned(),
                        _ => {}
                    }
                }
            } else if let Some(flags) = line.strip_prefix(";; flags:") {
                let flags = flags.split(';').next().unwrap_or_default();
                dig.flags = flags.split_whitespace().map(str::to_owned).collect();
            } else if let Some(edns) = line.strip_prefix("; EDNS: ") {
                let version = edns_field(edns, "version:").unwrap_or(u8::MAX);
                let udp = edns_field(edns, "udp:").unwrap_or(0);
                dig.edns = Some((version, udp));
            } else if let Some(name) = line
                .strip_prefix(";; ")
                .and_then(|l| l.strip_suffix(" SECTION:"))
            {
                section = match name {
                    "ANSWER" => "answer",
                    "AUTHORITY" => "authority",
                    "ADDITIONAL" => "additional",
                    _ => "",
                };
            } else if line.is_empty() {
                section = "";
            } else if !line.starts_with(';') && !section.is_empty() {
                let fields: Vec<&str> = line.split_whitespace().collect();
                assert!(
                    fields.len() >= 4,
                    "unexpected dig record line {line:?} in\n{text}"
                );
                let record = DigRecord {
                    name: fields[0].to_owned(),
                    ttl: fields[1]
                        .parse()
                        .unwrap_or_else(|_| panic!("TTL in {line:?}")),
                    rtype: fields[3].to_owned(),
                    data: fields[4..].join(" "),
                };
                match section {
                    "answer" => dig.answer.push(record),
                    "authority" => dig.authority.push(record),
                    _ => dig.additional.push(record),
                }
            }
        }
        assert!(
            !dig.status.is_empty(),
            "dig printed no header line:\n{text}"
        );
        dig
    }
}

/// The value after `name` in dig's `; EDNS: version: 0, flags:; udp: 1232`.
fn edns_field<T: std::str::FromStr>(edns: &str, name: &str) -> Option<T> {
    edns.split([',', ';'])
        .find_map(|part| part.trim().strip_prefix(name))
        .and_then(|value| value.trim().parse().ok())
}

/// Runs `dig @server -p PORT +tries=1 +time=2 ARGS…` and parses its output;
/// panics if dig fails (no reply: exit 9) or prints no header.
pub fn dig(server: SocketAddr, args: &[&str]) -> Dig {
    let output = run_bounded(
        Command::new(program("dig"))
            .arg(format!("@{}", server.ip()))
            .arg("-p")
            .arg(server.port().to_string())
            .args(["+tries=1", "+time=2"])
            .args(args),
        Duration::from_secs(20),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "dig {args:?} failed ({}):\n{stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Dig::parse(&stdout)
}

//------------ Unbound --------------------------------------------------------

/// A foreground `unbound` on `net.forwarder()` forwarding `consul.` (and,
/// so that nothing ever leaves this machine, every other name) to
/// `upstream`. No validation, no trust anchors, no remote control. Killed
/// on drop; its log printed if the test fails.
pub struct Unbound {
    /// The process.
    child: Child,
    /// Holds its configuration, pid file and log.
    dir: TempDir,
    /// Where it listens.
    addr: SocketAddr,
}

impl Unbound {
    /// Starts unbound and waits (at most 15 s) until it answers
    /// `consul. SOA`.
    pub fn start(net: Net, upstream: SocketAddr) -> Self {
        let binary = program("unbound");
        let dir = tempfile::tempdir().expect("temporary directory");
        let addr = net.forwarder();
        let forward = format!("{}@{}", upstream.ip(), upstream.port());
        let config = format!(
            r#"server:
    interface: {ip}
    port: {port}
    do-ip6: no
    access-control: 127.0.0.0/8 allow
    username: ""
    chroot: ""
    directory: "{dir}"
    pidfile: "{dir}/unbound.pid"
    use-syslog: no
    logfile: ""
    verbosity: 1
    num-threads: 1
    module-config: "iterator"
    do-not-query-localhost: no
    domain-insecure: "consul"

remote-control:
    control-enable: no

forward-zone:
    name: "consul."
    forward-addr: {forward}

forward-zone:
    name: "."
    forward-addr: {forward}
"#,
            ip = addr.ip(),
            port = addr.port(),
            dir = dir.path().display(),
        );
        let config_path = dir.path().join("unbound.conf");
        fs::write(&config_path, &config).expect("write unbound.conf");
        let log = File::create(dir.path().join("unbound.log")).expect("create log");
        let child = Command::new(binary)
            .arg("-d")
            .arg("-c")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("file clones"))
            .stderr(log)
            .spawn()
            .expect("unbound starts");
        let mut unbound = Self { child, dir, addr };
        wait_answering(&mut unbound.child, addr, "unbound", false, &config);
        unbound
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What it logged so far.
    pub fn logs(&self) -> String {
        fs::read_to_string(self.dir.path().join("unbound.log")).unwrap_or_default()
    }
}

impl Drop for Unbound {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- unbound log ----\n{}---- end of log ----", self.logs());
        }
    }
}

//------------ A private mount namespace -----------------------------------

/// Runs `argv` (for at most 30 s) in a private mount namespace
/// (`unshare -m`) where `/etc/resolv.conf` names only `nameserver` and
/// `/etc/nsswitch.conf` says `hosts: files dns`, so glibc's
/// `getaddrinfo` asks that server. Needs root.
pub fn in_namespace(nameserver: Ipv4Addr, argv: &[&str]) -> Output {
    let unshare = program("unshare");
    let dir = tempfile::tempdir().expect("temporary directory");
    let resolv = dir.path().join("resolv.conf");
    let nsswitch = dir.path().join("nsswitch.conf");
    fs::write(
        &resolv,
        format!("nameserver {nameserver}\noptions timeout:2 attempts:2\n"),
    )
    .expect("write resolv.conf");
    fs::write(&nsswitch, "hosts: files dns\n").expect("write nsswitch.conf");
    let script = r#"mount --bind "$1" /etc/resolv.conf && mount --bind "$2" /etc/nsswitch.conf && shift 2 && exec "$@""#;
    let output = run_bounded(
        Command::new(unshare)
            .args(["-m", "sh", "-c", script, "sh"])
            .arg(&resolv)
            .arg(&nsswitch)
            .args(argv),
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("unshare failed") && !stderr.contains("mount:"),
        "cannot set up the mount namespace (these tests need root): {stderr}"
    );
    output
}

/// The IPv4 addresses glibc's `getaddrinfo` gives for `name` through
/// `nameserver` (`getent ahostsv4`), sorted; `None` when the lookup fails.
pub fn getaddrinfo_v4(nameserver: Ipv4Addr, name: &str) -> Option<Vec<Ipv4Addr>> {
    let getent = program("getent");
    let output = in_namespace(
        nameserver,
        &[getent.to_str().expect("UTF-8 path"), "ahostsv4", name],
    );
    if !output.status.success() {
        return None;
    }
    let addresses: HashSet<Ipv4Addr> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next()?.parse().ok())
        .collect();
    let mut addresses: Vec<Ipv4Addr> = addresses.into_iter().collect();
    addresses.sort();
    Some(addresses)
}

/// `curl` of `url` (no proxy, 10 s at most) in the namespace of
/// [`in_namespace`]: the body, or curl's error.
pub fn curl(nameserver: Ipv4Addr, url: &str) -> Result<String, String> {
    let curl = program("curl");
    let output = in_namespace(
        nameserver,
        &[
            curl.to_str().expect("UTF-8 path"),
            "-sS",
            "--noproxy",
            "*",
            "--max-time",
            "10",
            url,
        ],
    );
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "curl {url}: {}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

//------------ HTTP stub ------------------------------------------------------

/// Serves `HTTP/1.0 200 OK` with `body` to every connection on `addr`, on
/// `runtime` (e.g. [`Federation::runtime`]), until the runtime is dropped.
pub fn serve_http(runtime: &Runtime, addr: SocketAddr, body: &'static str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = std::net::TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    let _context = runtime.enter();
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    runtime.spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                // Read the request head (bounded), then answer and close.
                let mut request = Vec::new();
                let mut chunk = [0; 1024];
                let read = async {
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16_384 {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => request.extend_from_slice(&chunk[..n]),
                        }
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(5), read).await;
                let response = format!(
                    "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
}

//------------ Prepared queries, N datacenters, process figures -------------
//
// Added for `prepared`, `differential`, `flood` and the SRV test of
// `forwarders`: a federation of any number of datacenters, a server
// configuration without the grafana `[[query]]`, the server's PID and
// RSS, gauges, an HTTP client with a body, Consul's prepared-query
// `execute` as the reference answer, and SRV target parsing.

impl Federation {
    /// Starts the datacenters `dcs` (name and WAN coordinate, `None`:
    /// unknown) on `net`'s Consul addresses, the `i`th on
    /// `net.consul(i)`.
    pub fn start_dcs(net: Net, dcs: &[(&str, Option<consul_sim::model::Coordinate>)]) -> Self {
        let runtime = runtime();
        let mut builder = Sim::builder();
        for (i, (name, _)) in dcs.iter().enumerate() {
            let index = u8::try_from(i).expect("fewer than 256 datacenters");
            builder = builder.dc(name, net.consul(index));
        }
        for (name, coordinate) in dcs {
            builder = builder.coordinate(name, coordinate.clone());
        }
        let sim = runtime.block_on(builder.start()).expect("simulator starts");
        Self { sim, runtime }
    }

    /// The address of `dc`'s Consul HTTP API.
    pub fn addr(&self, dc: &str) -> SocketAddr {
        self.runtime.block_on(self.sim.addr(dc))
    }

    /// `GET /v1/query/<name>/execute` on `dc`'s listener, over HTTP (the
    /// reference answer, Consul's algorithm): `None` for 404 (no such
    /// query), else the answering datacenter and the instance addresses
    /// (service address, else node address), deduplicated and sorted.
    /// An empty address list means `Nodes` was `[]`.
    pub fn execute(&self, dc: &str, name: &str) -> Option<(String, Vec<Ipv4Addr>)> {
        let path = format!("/v1/query/{name}/execute");
        let (status, body) = http_request(self.addr(dc), "GET", &path, None)
            .unwrap_or_else(|e| panic!("GET {path} on {dc}: {e}"));
        if status == 404 {
            return None;
        }
        assert_eq!(status, 200, "GET {path} on {dc}: {body}");
        let reply: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
        let datacenter = reply["Datacenter"].as_str().unwrap_or_default().to_owned();
        let nodes = reply["Nodes"]
            .as_array()
            .unwrap_or_else(|| panic!("{path}: no Nodes array: {body}"));
        let addresses: BTreeSet<Ipv4Addr> = nodes
            .iter()
            .map(|node| {
                let service = node["Service"]["Address"].as_str().unwrap_or_default();
                let address = if service.is_empty() {
                    node["Node"]["Address"].as_str().unwrap_or_default()
                } else {
                    service
                };
                address
                    .parse()
                    .unwrap_or_else(|e| panic!("{path}: address {address:?}: {e}"))
            })
            .collect();
        Some((datacenter, addresses.into_iter().collect()))
    }
}

/// A configuration with DNS and admin on `net` and Consul at dc1's
/// simulator, local datacenter dc1, TTL 0, and nothing else: no
/// `[[query]]`, no `[queries.defaults]`. `extra` is appended (e.g.
/// `[queries]` with `implicit = false`).
pub fn bare_server_config(net: Net, federation: &Federation, extra: &str) -> String {
    format!(
        r#"[dns]
listen = ["{dns}"]
ttl = "0s"

[consul]
address = "{consul}"
datacenter = "dc1"
wait = "5s"

[admin]
listen = "{admin}"

{extra}"#,
        dns = net.dns(),
        admin = net.admin(),
        consul = federation.url("dc1"),
    )
}

impl Server {
    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The resident set size (`VmRSS` of `/proc/<pid>/status`), in KiB.
    pub fn rss_kib(&self) -> u64 {
        let path = format!("/proc/{}/status", self.pid());
        let status = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in {path}:\n{status}"))
    }

    /// The watched (service, datacenter) pairs in every state
    /// (`consul_failover_dns_watches`), `None` when not exported.
    pub fn watched_pairs(&self) -> Option<f64> {
        let metrics = self.metrics();
        metrics
            .contains("consul_failover_dns_watches{")
            .then(|| metric_value(&metrics, "consul_failover_dns_watches", &[]))
    }

    /// The value of the unlabelled sample `metric` of `/metrics`, `None`
    /// when the server does not export it.
    pub fn gauge(&self, metric: &str) -> Option<f64> {
        self.metrics()
            .lines()
            .filter_map(|line| line.strip_prefix(metric)?.strip_prefix(' '))
            .find_map(|value| value.trim().parse().ok())
    }
}

/// `method path` over HTTP/1.0 with an optional JSON `body`, 5 s
/// timeouts: the status and body.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let body = body.unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| io::Error::other(format!("not an HTTP response: {response:?}")))?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    Ok((status, body.to_owned()))
}

/// The SRV records of `records` as (target in lower case, port), sorted.
pub fn srv_targets(records: &[Record]) -> Vec<(String, u16)> {
    let mut out: Vec<(String, u16)> = records
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(srv) => Some((srv.target.to_ascii().to_lowercase(), srv.port)),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

/// The datacenter an SRV target names: `dc2` of
/// `<node>.node.dc2.consul.` or `<hex>.addr.dc2.consul.`; `None` for
/// any other form.
pub fn target_datacenter(target: &str) -> Option<String> {
    let labels: Vec<&str> = target.trim_end_matches('.').split('.').collect();
    match labels.as_slice() {
        [.., kind, dc, domain]
            if (kind.eq_ignore_ascii_case("node") || kind.eq_ignore_ascii_case("addr"))
                && domain.eq_ignore_ascii_case("consul") =>
        {
            Some(dc.to_lowercase())
        }
        _ => None,
    }
}

/// The SRV target Consul gives an instance with a service address:
/// `<8 hex digits>.addr.<dc>.consul.`.
pub fn addr_target(address: Ipv4Addr, dc: &str) -> String {
    format!("{:08x}.addr.{dc}.consul.", u32::from(address))
}

//------------ Knot -----------------------------------------------------------

/// `knotd` serving `zone` (the text of a `consul.` zone file) on
/// `net.dns()`: a known-good authoritative server, so the harness (dig
/// parsing, unbound, the namespace) is checked apart from the server
/// under test. Killed on drop.
pub struct Knot {
    /// The process.
    child: Child,
    /// Holds configuration, zone, database and log.
    dir: TempDir,
}

impl Knot {
    /// Starts knotd and waits (at most 15 s) until it answers `consul. SOA`.
    pub fn start(net: Net, zone: &str) -> Self {
        let binary = program("knotd");
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().display();
        let dns = net.dns();
        fs::write(dir.path().join("consul.zone"), zone).expect("write the zone");
        let config = format!(
            r#"server:
    rundir: "{path}"
    listen: {ip}@{port}
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1

control:
    listen: "{path}/knot.sock"

database:
    storage: "{path}"

log:
  - target: stderr
    any: info

zone:
  - domain: consul.
    storage: "{path}"
    file: "consul.zone"
"#,
            ip = dns.ip(),
            port = dns.port(),
        );
        let config_path = dir.path().join("knot.conf");
        fs::write(&config_path, &config).expect("write knot.conf");
        let log = File::create(dir.path().join("knot.log")).expect("create log");
        let child = Command::new(binary)
            .arg("-c")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("file clones"))
            .stderr(log)
            .spawn()
            .expect("knotd starts");
        let mut knot = Self { child, dir };
        wait_answering(&mut knot.child, dns, "knotd", true, &config);
        knot
    }

    /// What it logged so far.
    pub fn logs(&self) -> String {
        fs::read_to_string(self.dir.path().join("knot.log")).unwrap_or_default()
    }
}

impl Drop for Knot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- knotd log ----\n{}---- end of log ----", self.logs());
        }
    }
}

//------------ dnsmasq --------------------------------------------------------

/// A foreground `dnsmasq` on [`Dnsmasq::addr_for`] playing the Consul
/// agent's DNS (the server's `dns.upstream`): it answers from the records
/// given (`--host-record=…`, `--txt-record=…`), NXDOMAIN for other names
/// under `consul.` (`--local=/consul/`), and forwards nothing. It logs
/// every query. Killed on drop; its log printed if the test fails.
pub struct Dnsmasq {
    /// The process.
    child: Child,
    /// Holds its pid file and log.
    dir: TempDir,
    /// Where it listens.
    addr: SocketAddr,
}

impl Dnsmasq {
    /// Where the dnsmasq of `net` listens (UDP and TCP): `127.0.n.9:8601`.
    pub fn addr_for(net: Net) -> SocketAddr {
        SocketAddr::from(([127, 0, net.n, 9], 8601))
    }

    /// Starts dnsmasq with `records` (dnsmasq options) and waits (at most
    /// 15 s) until it answers.
    pub fn start(net: Net, records: &[String]) -> Self {
        let binary = program("dnsmasq");
        let dir = tempfile::tempdir().expect("temporary directory");
        let addr = Self::addr_for(net);
        let log = File::create(dir.path().join("dnsmasq.log")).expect("create log");
        let mut command = Command::new(binary);
        command
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--no-poll",
                "--bind-interfaces",
                "--local=/consul/",
                "--log-queries",
                "--log-facility=-",
                // As root it would switch to `nobody`; stay who we are.
                "--user=root",
                "--group=root",
            ])
            .arg(format!("--listen-address={}", addr.ip()))
            .arg(format!("--port={}", addr.port()))
            .arg(format!(
                "--pid-file={}",
                dir.path().join("dnsmasq.pid").display()
            ))
            .args(records)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("file clones"))
            .stderr(log);
        let child = command.spawn().expect("dnsmasq starts");
        let mut dnsmasq = Self { child, dir, addr };
        wait_answering(
            &mut dnsmasq.child,
            addr,
            "dnsmasq",
            false,
            &format!("{command:?}"),
        );
        dnsmasq
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What it logged so far.
    pub fn logs(&self) -> String {
        fs::read_to_string(self.dir.path().join("dnsmasq.log")).unwrap_or_default()
    }

    /// How many queries for `name` (any case, no final dot) of type
    /// `rtype` it logged so far (`query[A] name from …`).
    pub fn queries_for(&self, rtype: &str, name: &str) -> usize {
        let wanted = format!("query[{rtype}] {name} ").to_ascii_lowercase();
        self.logs()
            .lines()
            .filter(|line| line.to_ascii_lowercase().contains(&wanted))
            .count()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- dnsmasq log ----\n{}---- end of log ----", self.logs());
        }
    }
}

//------------ Faults, chaos and reloads (issue 5) ----------------------------
//
// Added for `faults`, `chaos` and `reload`: Extended DNS Errors read from
// the OPT record, one timed question, a configuration for the fault tests
// (direct datacenter addresses, `max_stale`, …), a server started without
// waiting for `/ready`, its configuration file rewritten in place, signals
// sent to it and its exit awaited, and the simulator's async faults from
// a synchronous test.

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};

/// Raises a flag when dropped: a background thread told to stop by the
/// flag stops also when the test panics (a scoped thread left running
/// would keep the test from ever ending).
pub struct RaiseOnDrop<'a>(pub &'a AtomicBool);

impl Drop for RaiseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The EDNS option code of Extended DNS Errors (RFC 8914).
pub const EDNS_EXTENDED_ERROR: u16 = 15;
/// EDE info code 3, "Stale Answer".
pub const EDE_STALE_ANSWER: u16 = 3;
/// EDE info code 14, "Not Ready".
pub const EDE_NOT_READY: u16 = 14;
/// EDE info code 22, "No Reachable Authority".
pub const EDE_NO_REACHABLE_AUTHORITY: u16 = 22;

/// The Extended DNS Errors (RFC 8914) of `message`'s OPT record, in
/// order: each info code (the option's first two bytes, big-endian) and
/// its extra text. Empty without OPT or without the option.
pub fn extended_errors(message: &Message) -> Vec<(u16, String)> {
    let Some(edns) = &message.edns else {
        return Vec::new();
    };
    edns.options()
        .get_all(EdnsCode::Unknown(EDNS_EXTENDED_ERROR))
        .into_iter()
        .filter_map(|option| match option {
            EdnsOption::Unknown(_, data) if data.len() >= 2 => Some((
                u16::from_be_bytes([data[0], data[1]]),
                String::from_utf8_lossy(&data[2..]).into_owned(),
            )),
            _ => None,
        })
        .collect()
}

/// What one A question over UDP saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answered {
    /// The response code.
    pub rcode: ResponseCode,
    /// The A records of the answer section, sorted.
    pub addresses: Vec<Ipv4Addr>,
    /// The Extended DNS Error info codes.
    pub ede: Vec<u16>,
    /// Whether the reply had an OPT record.
    pub opt: bool,
}

impl Answered {
    /// Whether the answer carries EDE 3 "Stale Answer".
    pub fn stale(&self) -> bool {
        self.ede.contains(&EDE_STALE_ANSWER)
    }
}

/// Asks `name` A once over UDP, with EDNS (payload 1232) when `edns`:
/// what came back and how long it took, or `None` after `timeout`.
pub fn ask(
    dns: SocketAddr,
    name: &str,
    edns: bool,
    timeout: Duration,
) -> Option<(Answered, Duration)> {
    let mut message = query(name, RecordType::A);
    if edns {
        message = with_edns(message, 1232, 0);
    }
    let started = Instant::now();
    let reply = try_udp(dns, &message, timeout)?;
    let took = started.elapsed();
    let answered = Answered {
        rcode: reply.metadata.response_code,
        addresses: ipv4s(&reply.answers),
        ede: extended_errors(&reply)
            .into_iter()
            .map(|(code, _)| code)
            .collect(),
        opt: reply.edns.is_some(),
    };
    Some((answered, took))
}

/// A configuration for the fault tests: DNS and admin on `net`, Consul
/// (the local agent) at `consul` (a URL), local datacenter dc1, TTL 0,
/// `dns.first_answer_wait` 500 ms, blocking waits of 5 s, implicit
/// queries off. `consul_extra` is added to `[consul]` (e.g. `max_stale`),
/// `extra` appended (`[[query]]`, `[[consul.datacenters]]`, …).
pub fn fault_server_config(net: Net, consul: &str, consul_extra: &str, extra: &str) -> String {
    format!(
        r#"[dns]
listen = ["{dns}"]
ttl = "0s"
first_answer_wait = "500ms"

[consul]
address = "{consul}"
datacenter = "dc1"
wait = "5s"
{consul_extra}

[queries]
implicit = false

[admin]
listen = "{admin}"

{extra}"#,
        dns = net.dns(),
        admin = net.admin(),
    )
}

/// `[[consul.datacenters]]` giving `dc` the direct address `url`.
pub fn direct_datacenter(dc: &str, url: &str) -> String {
    format!("\n[[consul.datacenters]]\nname = \"{dc}\"\naddresses = [\"{url}\"]\n")
}

impl Federation {
    /// Stops `dc`'s listener (connections refused, open ones dropped).
    pub fn stop_listener(&self, dc: &str) {
        self.runtime.block_on(self.sim.stop_listener(dc));
    }

    /// Starts `dc`'s listener again on the same address.
    pub fn start_listener(&self, dc: &str) {
        self.runtime
            .block_on(self.sim.start_listener(dc))
            .unwrap_or_else(|e| panic!("start {dc}'s listener: {e}"));
    }
}

impl Server {
    /// Starts the server with configuration `config` without waiting for
    /// `/ready` (its log is printed if the test fails).
    pub fn spawn_with(net: Net, config: &str) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let config_path = dir.path().join("consul-failover-dns.toml");
        fs::write(&config_path, config).expect("write configuration");
        let log = File::create(dir.path().join("server.log")).expect("create log");
        let child = Command::new(env!("CARGO_BIN_EXE_consul-failover-dns"))
            .arg("run")
            .arg("-c")
            .arg(&config_path)
            .env("RUST_LOG", "warn,consul_failover_dns=info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("file clones"))
            .stderr(log)
            .spawn()
            .expect("the server binary starts");
        Self { child, dir, net }
    }

    /// The configuration file it was started with (`-c`).
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("consul-failover-dns.toml")
    }

    /// Replaces the configuration file with `config` atomically (written
    /// beside it, then renamed), so a reload never reads half a file.
    pub fn rewrite_config(&self, config: &str) {
        let next = self.dir.path().join("next.toml");
        fs::write(&next, config).expect("write the new configuration");
        fs::rename(&next, self.config_path()).expect("replace the configuration");
    }

    /// Sends signal `name` (`HUP`, `TERM`…) with `kill -s`.
    pub fn signal(&self, name: &str) {
        let output = run_bounded(
            Command::new("kill")
                .arg("-s")
                .arg(name)
                .arg(self.pid().to_string()),
            Duration::from_secs(5),
        );
        assert!(
            output.status.success(),
            "kill -s {name} {}: {}",
            self.pid(),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Its exit status if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("child status")
    }

    /// Waits at most `limit` for it to exit: its status, or `None`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        poll(limit, Duration::from_millis(5), || self.exited())
    }

    /// The lines of its log containing every one of `needles` (case
    /// insensitive).
    pub fn log_lines(&self, needles: &[&str]) -> Vec<String> {
        self.logs()
            .lines()
            .filter(|line| {
                let line = line.to_lowercase();
                needles.iter().all(|n| line.contains(&n.to_lowercase()))
            })
            .map(str::to_owned)
            .collect()
    }
}
