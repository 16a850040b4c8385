//! What the failover and scale benchmarks share: the smoke switch, the
//! simulator, the server binary as a child process, a UDP DNS client and
//! readings of `/proc`.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use consul_sim::Sim;
use consul_sim::model::{CheckInput, RegisterRequest, ServiceInput};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

/// Small sizes: `BENCH_SMOKE=1`, `--smoke`, or a run without `--bench`
/// (`cargo test --bench NAME`, what `scripts/test` runs).
pub fn smoke() -> bool {
    let args: Vec<String> = std::env::args().collect();
    std::env::var_os("BENCH_SMOKE").is_some_and(|v| v != "0")
        || args.iter().any(|a| a == "--smoke")
        || !args.iter().any(|a| a == "--bench")
}

/// A two-worker tokio runtime for the simulator.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Starts the simulator with `dcs` on free loopback ports.
pub fn start_sim(runtime: &tokio::runtime::Runtime, dcs: &[&str]) -> Sim {
    start_sim_with(runtime, dcs, false)
}

/// Starts the simulator with `dcs` on free loopback ports, serving HTTPS
/// (HTTP/2 or HTTP/1.1, as a Consul agent's HTTPS listener) if `tls`.
pub fn start_sim_with(runtime: &tokio::runtime::Runtime, dcs: &[&str], tls: bool) -> Sim {
    let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
    let builder = dcs
        .iter()
        .fold(Sim::builder().tls(tls), |b, dc| b.dc(dc, any));
    runtime.block_on(builder.start()).expect("simulator starts")
}

/// The registration of `service` on `node` (address `address`) with one
/// passing check `<service>-health`.
pub fn registration(dc: &str, node: &str, address: Ipv4Addr, service: &str) -> RegisterRequest {
    RegisterRequest {
        datacenter: Some(dc.to_owned()),
        node: Some(node.to_owned()),
        address: Some(address.to_string()),
        service: Some(ServiceInput {
            id: Some(service.to_owned()),
            service: Some(service.to_owned()),
            port: Some(8080),
            ..Default::default()
        }),
        check: Some(CheckInput {
            check_id: Some(check_id(service)),
            name: Some(format!("{service} health")),
            status: Some("passing".to_owned()),
            service_id: Some(service.to_owned()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The check of `service`'s instances.
pub fn check_id(service: &str) -> String {
    format!("{service}-health")
}

/// A loopback port free at the time of asking.
pub fn free_port() -> u16 {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let tcp = std::net::TcpListener::bind(socket.local_addr().expect("addr"));
    match tcp {
        Ok(_) => socket.local_addr().expect("addr").port(),
        Err(_) => free_port(),
    }
}

/// The server binary running with a configuration, killed on drop.
pub struct Server {
    pub child: Child,
    pub dns: SocketAddr,
    pub admin: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Spawns `consul-failover-dns run -c FILE`; `config` gets `[dns]`,
    /// `[admin]` and `[log]` tables prepended.
    pub fn spawn(consul: &str, config: &str) -> Self {
        Self::spawn_with(consul, None, config)
    }

    /// [`spawn`](Self::spawn), trusting the CA certificate `ca_pem` (PEM)
    /// for an `https://` Consul.
    pub fn spawn_with(consul: &str, ca_pem: Option<&str>, config: &str) -> Self {
        let dns: SocketAddr = (Ipv4Addr::LOCALHOST, free_port()).into();
        let admin: SocketAddr = (Ipv4Addr::LOCALHOST, free_port()).into();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        let ca_file = match ca_pem {
            Some(pem) => {
                let ca = dir.path().join("consul-ca.pem");
                std::fs::write(&ca, pem).expect("write the CA");
                format!("ca_file = \"{}\"\n", ca.display())
            }
            None => String::new(),
        };
        let text = format!(
            "[dns]\nlisten = [\"{dns}\"]\nttl = \"0s\"\n\n[admin]\nlisten = \"{admin}\"\n\n\
             [consul]\naddress = \"{consul}\"\ndatacenter = \"dc1\"\nwait = \"5m\"\n\
             max_watches = 100000\n{ca_file}\n{config}"
        );
        std::fs::write(&path, text).expect("write config");
        let log = std::fs::File::create(dir.path().join("log")).expect("log file");
        // BENCH_SERVER_WRAPPER runs the server under a profiler, e.g.
        // "heaptrack" (the figures read from /proc are then the wrapper's).
        let binary = env!("CARGO_BIN_EXE_consul-failover-dns");
        let mut command = match std::env::var("BENCH_SERVER_WRAPPER") {
            Ok(wrapper) if !wrapper.trim().is_empty() => {
                let mut words = wrapper.split_whitespace();
                let mut command = Command::new(words.next().expect("a wrapper word"));
                command.args(words).arg(binary);
                command
            }
            _ => Command::new(binary),
        };
        let child = command
            .args(["run", "-c"])
            .arg(&path)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn the server");
        Self {
            child,
            dns,
            admin,
            _dir: dir,
        }
    }

    /// Polls `/ready` every 10 ms until it says 200; the time it took.
    pub fn wait_ready(&mut self, limit: Duration) -> Duration {
        let start = Instant::now();
        loop {
            if http_status(self.admin, "/ready") == Some(200) {
                return start.elapsed();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = std::fs::read_to_string(self._dir.path().join("log")).unwrap_or_default();
                panic!("the server exited with {status}:\n{log}");
            }
            assert!(start.elapsed() < limit, "not ready after {limit:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The server's process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Under BENCH_SERVER_WRAPPER the child is the wrapper: the server
        // it started must not outlive the run (one left retrying a gone
        // simulator skews later runs).
        let _ = Command::new("pkill")
            .args(["-KILL", "-P", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status code of `GET path`, `None` when nothing answers.
pub fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    reply.split_whitespace().nth(1)?.parse().ok()
}

/// What one A query saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// NOERROR with these A records, sorted.
    Addresses(Vec<Ipv4Addr>),
    /// Another response code.
    Rcode(ResponseCode),
    /// No reply within 1 s.
    Nothing,
}

/// Asks `name` A over UDP once.
pub fn look(socket: &UdpSocket, server: SocketAddr, name: &str) -> Seen {
    let mut message = Message::new(fastrand::u16(..), MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = false;
    message.add_query(Query::query(
        Name::from_str(name).expect("name"),
        RecordType::A,
    ));
    let bytes = message.to_vec().expect("encode");
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    socket.send_to(&bytes, server).expect("send");
    let mut buf = [0u8; 4096];
    loop {
        let Ok((n, _)) = socket.recv_from(&mut buf) else {
            return Seen::Nothing;
        };
        let Ok(reply) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        if reply.metadata.id != message.metadata.id {
            continue;
        }
        if reply.metadata.response_code != ResponseCode::NoError {
            return Seen::Rcode(reply.metadata.response_code);
        }
        let mut addresses: Vec<Ipv4Addr> = reply
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect();
        addresses.sort();
        return Seen::Addresses(addresses);
    }
}

/// `VmRSS` of `/proc/<pid>/status`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

/// utime + stime of `/proc/<pid>/stat`, in clock ticks (USER_HZ, 100 on
/// Linux).
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // Fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

/// Clock ticks as a duration (USER_HZ = 100).
pub fn ticks(n: u64) -> Duration {
    Duration::from_millis(n * 10)
}

/// The `p`th percentile (nearest rank) of sorted `samples`.
pub fn percentile(sorted: &[Duration], p: usize) -> Duration {
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted[rank - 1]
}

/// A duration in milliseconds, two decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}
