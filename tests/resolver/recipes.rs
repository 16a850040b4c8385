//! The recipes of `config/` (issue 7), each used as shipped.
//!
//! `unbound` (forward zone and stub zone), `named` and `dnsmasq` run with
//! the recipe file as it is in `config/`, only the server's address
//! rewritten to this test's, inside a minimal wrapper that lets the
//! program run in a temporary directory on this test's loopback address,
//! validate DNSSEC (or, for dnsmasq, filter private answers) as a
//! distribution's default would, and send nothing off this machine. Each
//! resolves `grafana.query.consul` before, during and after a failover.
//!
//! The systemd-resolved drop-in, the CoreDNS block, the Prometheus job and
//! the Grafana dashboard cannot run here; each is parsed and checked
//! against what its program accepts and what the resolver exports.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use consul_sim::model::{CRITICAL, PASSING};
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use serde::Deserialize;
use tempfile::TempDir;

use crate::support::{
    Federation, Instance, Net, Server, dig, ipv4s, poll, program, query, run_bounded, try_udp,
    wait_answering, with_edns,
};

/// The name every forwarder test resolves.
const NAME: &str = "grafana.query.consul";

/// The DS of the root zone's key-signing key 20326 (KSK-2017), the trust
/// anchor of the validating wrappers. Nothing can fetch the root's
/// DNSKEY here, so a name that is not excepted from validation fails.
const ROOT_DS: &str =
    ". IN DS 20326 8 2 E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D";

/// The text of `config/<path>`.
fn recipe(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config")
        .join(path);
    fs::read_to_string(&full).unwrap_or_else(|e| panic!("read {}: {e}", full.display()))
}

/// `text` with every `from` replaced by `to`; panics if `from` is not
/// there (the recipe no longer names the default address this way).
fn rewrite(text: &str, from: &str, to: &str, what: &str) -> String {
    assert!(
        text.contains(from),
        "{what} does not contain {from:?}, the address the test rewrites:\n{text}"
    );
    text.replace(from, to)
}

/// Runs a configuration checker (`unbound-checkconf`, `named-checkconf`,
/// `dnsmasq --test`) and panics with its output unless it accepts.
fn check_config(command: &mut Command, config: &str) {
    let output = run_bounded(command, Duration::from_secs(20));
    assert!(
        output.status.success(),
        "{command:?} rejects the configuration ({}):\n{}{}\nconfiguration:\n{config}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}

//------------ A forwarder under test ------------------------------------------

/// A DNS program started in the foreground with its log in a temporary
/// directory; killed on drop, its log printed if the test fails.
struct Forwarder {
    /// Its name, for messages.
    name: &'static str,
    /// The process.
    child: Child,
    /// Holds its configuration, pid file and log.
    dir: TempDir,
    /// Where it listens.
    addr: SocketAddr,
}

impl Forwarder {
    /// Starts `command` (stdout and stderr to `<dir>/log`) and waits (at
    /// most 15 s) until it answers on `addr`.
    fn start(
        name: &'static str,
        mut command: Command,
        dir: TempDir,
        addr: SocketAddr,
        config: &str,
    ) -> Self {
        let log = File::create(dir.path().join("log")).expect("create log");
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("file clones"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let mut forwarder = Self {
            name,
            child,
            dir,
            addr,
        };
        wait_answering(&mut forwarder.child, addr, name, false, config);
        forwarder
    }

    /// What it logged so far.
    fn logs(&self) -> String {
        fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- {} log ----\n{}---- end of log ----",
                self.name,
                self.logs()
            );
        }
    }
}

//------------ The refuser -----------------------------------------------------

/// A DNS stub on [`Net::refuser`] that answers REFUSED to every question
/// and notes what it was asked: the wrappers send it every name outside
/// `consul.`, so nothing leaves this machine, and a validator that wants
/// the root's key learns at once that it cannot have it. Stopped on drop.
struct Refuser {
    /// Tells the thread to stop.
    stop: Arc<AtomicBool>,
    /// `name type` of every question received.
    asked: Arc<Mutex<Vec<String>>>,
    /// The thread answering.
    thread: Option<JoinHandle<()>>,
}

impl Refuser {
    /// Binds `addr` (UDP) and starts answering.
    fn start(addr: SocketAddr) -> Self {
        let socket = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let asked = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, asked) = (Arc::clone(&stop), Arc::clone(&asked));
            std::thread::spawn(move || {
                let mut buffer = [0; 4096];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((length, from)) = socket.recv_from(&mut buffer) else {
                        continue;
                    };
                    if length < 12 {
                        continue;
                    }
                    let question = Message::from_vec(&buffer[..length]).ok().and_then(|m| {
                        m.queries.first().map(|q| {
                            format!("{} {}", q.name().to_ascii().to_lowercase(), q.query_type())
                        })
                    });
                    asked
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(question.unwrap_or_else(|| "(undecodable)".to_owned()));
                    // The query itself, as a response with RCODE 5.
                    let mut reply = buffer[..length].to_vec();
                    reply[2] |= 0x80;
                    reply[3] = (reply[3] & 0xf0) | 5;
                    let _ = socket.send_to(&reply, from);
                }
            })
        };
        Self {
            stop,
            asked,
            thread: Some(thread),
        }
    }

    /// `name type` of every question it was asked so far.
    fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for Refuser {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A temporary directory and its path as text (for configuration files).
fn workdir() -> (TempDir, PathBuf, String) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().to_path_buf();
    let text = path.display().to_string();
    (dir, path, text)
}

//------------ unbound ---------------------------------------------------------

/// `unbound` with the recipe `config/unbound/<file>` included as shipped
/// (address rewritten), checked by `unbound-checkconf` first.
fn unbound_with(net: Net, file: &str) -> Forwarder {
    let (dir, path, text) = workdir();
    let dns = net.dns();
    let recipe = rewrite(
        &recipe(&format!("unbound/{file}")),
        "127.0.0.1@8600",
        &format!("{}@{}", dns.ip(), dns.port()),
        file,
    );
    fs::write(path.join("consul.conf"), &recipe).expect("write the recipe");
    let addr = net.forwarder();
    let refuser = net.refuser();
    // The wrapper: not part of the recipe.
    let wrapper = format!(
        r#"# Test wrapper around the recipe: run unprivileged in {text} on this
# test's address, validate DNSSEC as Debian's unbound does (with the root
# key as trust anchor), and send nothing off this machine.
server:
    interface: {ip}
    port: {port}
    do-ip6: no
    access-control: 127.0.0.0/8 allow
    username: ""
    chroot: ""
    directory: "{text}"
    pidfile: "{text}/unbound.pid"
    use-syslog: no
    logfile: ""
    verbosity: 1
    val-log-level: 2
    num-threads: 1
    module-config: "validator iterator"
    trust-anchor: "{ROOT_DS}"

remote-control:
    control-enable: no

# Every name outside consul. goes to a stub on loopback that refuses
# every question (so neither the root's key nor anything else is fetched).
forward-zone:
    name: "."
    forward-addr: {refuser_ip}@{refuser_port}

# The recipe, as shipped but for the server's address.
include: "{text}/consul.conf"
"#,
        ip = addr.ip(),
        port = addr.port(),
        refuser_ip = refuser.ip(),
        refuser_port = refuser.port(),
    );
    let config = path.join("unbound.conf");
    fs::write(&config, &wrapper).expect("write unbound.conf");
    let setup = format!("{wrapper}\n---- consul.conf ----\n{recipe}");
    check_config(
        Command::new(program("unbound-checkconf")).arg(&config),
        &setup,
    );
    let mut command = Command::new(program("unbound"));
    command.arg("-d").arg("-c").arg(&config);
    Forwarder::start("unbound", command, dir, addr, &setup)
}

//------------ named -----------------------------------------------------------

/// `named` with the recipes `config/bind/named.conf.consul` (top level)
/// and `named.conf.consul-options` (inside `options`) included as shipped
/// (address rewritten), checked by `named-checkconf` first.
fn named_with(net: Net) -> Forwarder {
    let (dir, path, text) = workdir();
    let dns = net.dns();
    let zone = rewrite(
        &recipe("bind/named.conf.consul"),
        "127.0.0.1 port 8600",
        &format!("{} port {}", dns.ip(), dns.port()),
        "named.conf.consul",
    );
    let options = recipe("bind/named.conf.consul-options");
    fs::write(path.join("named.conf.consul"), &zone).expect("write the recipe");
    fs::write(path.join("named.conf.consul-options"), &options).expect("write the recipe");
    // named listens only on interface addresses: 127.0.0.1, a port of
    // this test's own.
    let addr = net.forwarder_on_lo();
    let refuser = net.refuser();
    fs::write(
        path.join("root.hints"),
        format!(
            ".                 3600000  NS  refuser.test.\n\
             refuser.test.     3600000  A   {}\n",
            refuser.ip()
        ),
    )
    .expect("write root.hints");
    // The wrapper: not part of the recipe.
    let wrapper = format!(
        r#"// Test wrapper around the recipes: run in {text} on this test's
// address, validate DNSSEC as Debian's named does (dnssec-validation auto,
// named's built-in root key), and send nothing off this machine.
options {{
    directory "{text}";
    pid-file "{text}/named.pid";
    session-keyfile "{text}/session.key";
    managed-keys-directory "{text}";
    listen-on port {port} {{ {ip}; }};
    listen-on-v6 {{ none; }};
    recursion yes;
    allow-query {{ 127.0.0.0/8; }};
    allow-recursion {{ 127.0.0.0/8; }};
    dnssec-validation auto;
    // Every name outside consul. goes to a stub on loopback that
    // refuses every question.
    forwarders {{ {refuser_ip} port {refuser_port}; }};
    forward only;
    // The recipe, as shipped.
    include "{text}/named.conf.consul-options";
}};

controls {{ }};

// Root hints naming only that stub, in case named primes.
zone "." {{
    type hint;
    file "{text}/root.hints";
}};

// The recipe, as shipped but for the server's address.
include "{text}/named.conf.consul";
"#,
        ip = addr.ip(),
        port = addr.port(),
        refuser_ip = refuser.ip(),
        refuser_port = refuser.port(),
    );
    let config = path.join("named.conf");
    fs::write(&config, &wrapper).expect("write named.conf");
    let setup = format!(
        "{wrapper}\n---- named.conf.consul-options ----\n{options}\n\
         ---- named.conf.consul ----\n{zone}"
    );
    check_config(
        Command::new(program("named-checkconf")).arg(&config),
        &setup,
    );
    let mut command = Command::new(program("named"));
    // -g: foreground, log to stderr; -4: IPv4 only; no -u: stay who we are.
    command.arg("-g").arg("-4").arg("-c").arg(&config);
    Forwarder::start("named", command, dir, addr, &setup)
}

//------------ dnsmasq ---------------------------------------------------------

/// `dnsmasq` with the recipe `config/dnsmasq/consul.conf` included as
/// shipped (address rewritten), checked by `dnsmasq --test` first.
fn dnsmasq_with(net: Net) -> Forwarder {
    let (dir, path, text) = workdir();
    let dns = net.dns();
    let recipe = rewrite(
        &recipe("dnsmasq/consul.conf"),
        "127.0.0.1#8600",
        &format!("{}#{}", dns.ip(), dns.port()),
        "consul.conf",
    );
    fs::write(path.join("consul.conf"), &recipe).expect("write the recipe");
    let addr = net.forwarder();
    let trust_anchor = ROOT_DS
        .strip_prefix(". IN DS ")
        .expect("the root DS")
        .replace(' ', ",");
    // The wrapper: not part of the recipe.
    let wrapper = format!(
        r#"# Test wrapper around the recipe: run in {text} on this test's address,
# with the rebinding protection many distributions and routers turn on
# and DNSSEC validation, and no upstream but the recipe's.
no-resolv
no-hosts
no-poll
bind-interfaces
listen-address={ip}
port={port}
pid-file={text}/dnsmasq.pid
user=root
group=root
log-queries
log-facility=-
stop-dns-rebind
dnssec
trust-anchor=.,{trust_anchor}

# The recipe, as shipped but for the server's address.
conf-file={text}/consul.conf
"#,
        ip = addr.ip(),
        port = addr.port(),
    );
    let config = path.join("dnsmasq.conf");
    fs::write(&config, &wrapper).expect("write dnsmasq.conf");
    let setup = format!("{wrapper}\n---- consul.conf ----\n{recipe}");
    let conf_file = format!("--conf-file={}", config.display());
    check_config(
        Command::new(program("dnsmasq"))
            .arg("--test")
            .arg(&conf_file),
        &setup,
    );
    let mut command = Command::new(program("dnsmasq"));
    command.arg("--keep-in-foreground").arg(&conf_file);
    Forwarder::start("dnsmasq", command, dir, addr, &setup)
}

//------------ The failover through a forwarder ------------------------------

/// `addresses` as dig prints them, sorted.
fn strings(addresses: &[Ipv4Addr]) -> Vec<String> {
    let mut text: Vec<String> = addresses.iter().map(Ipv4Addr::to_string).collect();
    text.sort();
    text
}

/// Asserts `dig NAME A` through `forwarder` (with and without the DNSSEC
/// OK bit) is NOERROR with exactly `want`, and not marked authenticated.
fn assert_dig(forwarder: &Forwarder, want: &[Ipv4Addr], when: &str) {
    for extra in [&[][..], &["+dnssec"][..]] {
        let mut args = vec![NAME, "A"];
        args.extend_from_slice(extra);
        let out = dig(forwarder.addr, &args);
        assert_eq!(
            out.status, "NOERROR",
            "{when}: dig {args:?} through {} (a SERVFAIL here is DNSSEC validation or a refused \
             loopback server: see its log):\n{}",
            forwarder.name, out.text
        );
        assert_eq!(
            out.answer_data("A"),
            strings(want),
            "{when}: dig {args:?} through {}:\n{}",
            forwarder.name,
            out.text
        );
        assert!(
            !out.flag("ad"),
            "{when}: {} calls an answer under consul. authenticated:\n{}",
            forwarder.name,
            out.text
        );
    }
}

/// Polls `NAME` A through `forwarder` (at most 10 s) until it is NOERROR
/// with exactly `want`; panics with the last answer otherwise.
fn wait_through(forwarder: &Forwarder, want: &[Ipv4Addr], when: &str) -> Duration {
    let started = Instant::now();
    let mut last = None;
    let seen = poll(Duration::from_secs(10), Duration::from_millis(50), || {
        let reply = try_udp(
            forwarder.addr,
            &with_edns(query(NAME, RecordType::A), 1232, 0),
            Duration::from_secs(2),
        );
        let seen = reply.map(|r| (r.metadata.response_code, ipv4s(&r.answers)));
        let done = seen
            .as_ref()
            .is_some_and(|(rcode, got)| *rcode == ResponseCode::NoError && got == want);
        last = Some(seen);
        done.then_some(())
    });
    assert!(
        seen.is_some(),
        "{when}: {NAME} A through {} is {last:?} after 10 s, want {want:?}",
        forwarder.name
    );
    started.elapsed()
}

/// The simulated federation and the server of `net`: grafana with two
/// instances in dc1 and two in dc2 (the `[[query]]` fails over to dc2).
fn federation(net: Net) -> (Federation, Server, Vec<Ipv4Addr>, Vec<Ipv4Addr>) {
    let federation = Federation::start(net);
    let (dc1, dc2) = federation.grafana_everywhere(net);
    let server = Server::start(net, &federation);
    (federation, server, dc1, dc2)
}

/// `grafana.query.consul` through `forwarder`: dc1's instances, dc2's
/// once dc1's checks are critical, dc1's again once they pass; and no
/// name under `consul.` ever reached `refuser` (the forwarder sent every
/// one to the server).
fn follows_failover(
    federation: &Federation,
    forwarder: &Forwarder,
    refuser: &Refuser,
    dc1: &[Ipv4Addr],
    dc2: &[Ipv4Addr],
) {
    let check = Instance::check_id("grafana");
    assert_dig(forwarder, dc1, "before the failover");

    federation.set_checks("dc1", &check, CRITICAL);
    let took = wait_through(forwarder, dc2, "dc1 critical");
    assert_dig(forwarder, dc2, "after the failover");
    println!("{}: failover seen after {took:?}", forwarder.name);

    federation.set_checks("dc1", &check, PASSING);
    let took = wait_through(forwarder, dc1, "dc1 passing again");
    assert_dig(forwarder, dc1, "after the failback");
    println!("{}: failback seen after {took:?}", forwarder.name);

    let asked = refuser.asked();
    println!("{} asked outside the zone: {asked:?}", forwarder.name);
    let astray: Vec<&String> = asked
        .iter()
        .filter(|q| {
            q.split(' ')
                .next()
                .is_some_and(|name| name.ends_with("consul."))
        })
        .collect();
    assert!(
        astray.is_empty(),
        "{} sent questions under consul. elsewhere than to the server: {astray:?}",
        forwarder.name
    );
}

#[test]
fn unbound_forward_zone_recipe_follows_failover() {
    let net = Net::claim(100);
    let (federation, _server, dc1, dc2) = federation(net);
    let refuser = Refuser::start(net.refuser());
    let unbound = unbound_with(net, "consul-forward-zone.conf");
    follows_failover(&federation, &unbound, &refuser, &dc1, &dc2);
}

#[test]
fn unbound_stub_zone_recipe_follows_failover() {
    let net = Net::claim(101);
    let (federation, _server, dc1, dc2) = federation(net);
    let refuser = Refuser::start(net.refuser());
    let unbound = unbound_with(net, "consul-stub-zone.conf");
    follows_failover(&federation, &unbound, &refuser, &dc1, &dc2);
}

#[test]
fn bind_recipe_follows_failover() {
    let net = Net::claim(102);
    let (federation, _server, dc1, dc2) = federation(net);
    let refuser = Refuser::start(net.refuser());
    let named = named_with(net);
    follows_failover(&federation, &named, &refuser, &dc1, &dc2);
}

#[test]
fn dnsmasq_recipe_follows_failover() {
    let net = Net::claim(103);
    let (federation, _server, dc1, dc2) = federation(net);
    let refuser = Refuser::start(net.refuser());
    let dnsmasq = dnsmasq_with(net);
    follows_failover(&federation, &dnsmasq, &refuser, &dc1, &dc2);
}

//------------ Recipes that cannot run here ----------------------------------

/// The lines of `text` that are neither empty nor comments (`#` or `;`
/// first), trimmed.
fn content_lines(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#') && !line.starts_with(';'))
        .collect()
}

/// Whether `name` is a plausible DNS name: dot-separated labels of
/// letters, digits and hyphens, 1 to 63 bytes, not starting or ending
/// with a hyphen.
fn is_dns_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// The keys systemd-resolved (252, Debian 12) accepts in `[Resolve]`.
const RESOLVED_KEYS: &[&str] = &[
    "DNS",
    "FallbackDNS",
    "Domains",
    "LLMNR",
    "MulticastDNS",
    "DNSSEC",
    "DNSOverTLS",
    "Cache",
    "CacheFromLocalhost",
    "DNSStubListener",
    "DNSStubListenerExtra",
    "ReadEtcHosts",
    "ResolveUnicastSingleLabel",
];

#[test]
fn systemd_resolved_recipe_is_well_formed() {
    let text = recipe("systemd-resolved/consul.conf");
    let mut section = None;
    let mut keys: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for line in content_lines(&text) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            assert_eq!(
                name, "Resolve",
                "a resolved.conf drop-in has only [Resolve]"
            );
            section = Some(name);
            continue;
        }
        assert!(section.is_some(), "{line:?} before [Resolve]");
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{line:?} is not KEY=VALUE"));
        let key = key.trim();
        assert!(
            RESOLVED_KEYS.contains(&key),
            "[Resolve] has no key {key:?} (known: {RESOLVED_KEYS:?})"
        );
        keys.entry(key)
            .or_default()
            .extend(value.split_whitespace());
    }
    // DNS=: addresses with a port (systemd 246 or later), each parsed.
    let servers: Vec<SocketAddr> = keys
        .get("DNS")
        .expect("DNS= is set")
        .iter()
        .map(|s| {
            s.parse()
                .unwrap_or_else(|e| panic!("DNS={s}: not IP:port ({e})"))
        })
        .collect();
    assert_eq!(servers, [SocketAddr::from(([127, 0, 0, 1], 8600))]);
    // Domains=: `~consul` routes consul. there and adds no search suffix;
    // a bare `consul` would be a search domain, `~.` would send every
    // name to the server (which refuses them).
    let domains = keys.get("Domains").expect("Domains= is set");
    assert_eq!(domains, &["~consul"], "Domains=");

    // The negative trust anchor beside it: one domain name per line.
    let negative = recipe("systemd-resolved/consul.negative");
    let names = content_lines(&negative);
    for name in &names {
        assert!(
            is_dns_name(name),
            "consul.negative: {name:?} is not one domain name (resolved ignores the line)"
        );
    }
    assert_eq!(names, ["consul"], "consul.negative");
}

/// One directive of a Corefile: its words and its block, if any.
#[derive(Debug)]
struct Directive {
    /// The plugin's name and arguments.
    words: Vec<String>,
    /// The lines of its `{ … }` block, as words.
    block: Vec<Vec<String>>,
}

/// Parses a Corefile: server blocks (`KEY… {`, directives, `}`), each
/// directive optionally with a block of sub-directives. Panics on what
/// CoreDNS's parser would reject for these shapes (unbalanced braces,
/// nesting beyond a directive's block, a directive outside a block).
fn parse_corefile(text: &str) -> Vec<(Vec<String>, Vec<Directive>)> {
    let mut servers: Vec<(Vec<String>, Vec<Directive>)> = Vec::new();
    let mut depth = 0;
    for (number, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let at = || format!("Corefile line {}: {raw:?}", number + 1);
        let mut words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        let opens = words.last().is_some_and(|w| w == "{");
        if opens {
            words.pop();
        }
        assert!(
            !words.iter().any(|w| w.contains('{') || w.contains('}')) || words == ["}"],
            "{}: braces must stand alone at the end of a line",
            at()
        );
        if words == ["}"] {
            assert!(!opens, "{}", at());
            assert!(depth > 0, "{}: unbalanced }}", at());
            depth -= 1;
            continue;
        }
        match depth {
            0 => {
                assert!(opens, "{}: a server block opens with KEY {{", at());
                servers.push((words, Vec::new()));
            }
            1 => {
                let (_, directives) = servers.last_mut().expect("inside a server block");
                directives.push(Directive {
                    words,
                    block: Vec::new(),
                });
            }
            2 => {
                assert!(!opens, "{}: nested too deep", at());
                let (_, directives) = servers.last_mut().expect("inside a server block");
                directives
                    .last_mut()
                    .expect("inside a directive's block")
                    .block
                    .push(words);
            }
            _ => unreachable!(),
        }
        if opens {
            depth += 1;
            assert!(depth <= 2, "{}: nested too deep", at());
        }
    }
    assert_eq!(depth, 0, "Corefile: unclosed {{");
    servers
}

/// CoreDNS plugins a block for `consul.` may reasonably use.
const COREDNS_PLUGINS: &[&str] = &[
    "bind",
    "errors",
    "forward",
    "log",
    "loop",
    "health",
    "ready",
    "prometheus",
    "reload",
    "debug",
    "whoami",
];

/// Options of CoreDNS's `forward` block.
const FORWARD_OPTIONS: &[&str] = &[
    "except",
    "force_tcp",
    "prefer_udp",
    "expire",
    "max_fails",
    "tls",
    "tls_servername",
    "policy",
    "health_check",
    "max_concurrent",
    "next",
    "failfast_all_unhealthy_upstreams",
];

#[test]
fn coredns_recipe_is_well_formed() {
    let servers = parse_corefile(&recipe("coredns/Corefile"));
    assert_eq!(servers.len(), 1, "one server block: {servers:?}");
    let (keys, directives) = &servers[0];
    assert_eq!(keys, &["consul:53"], "the block serves consul. on port 53");
    let mut forwards = Vec::new();
    for directive in directives {
        let plugin = directive.words[0].as_str();
        assert!(
            COREDNS_PLUGINS.contains(&plugin),
            "plugin {plugin:?} (known here: {COREDNS_PLUGINS:?})"
        );
        // `cache` keeps even TTL-0 answers for 5 s: answers from the old
        // datacenter after a failover.
        assert_ne!(plugin, "cache");
        if plugin == "forward" {
            forwards.push(directive);
        }
        if plugin != "forward" {
            assert!(directive.block.is_empty(), "{directive:?}");
        }
    }
    assert_eq!(forwards.len(), 1, "one forward: {directives:?}");
    let forward = forwards[0];
    assert_eq!(
        forward.words[1], ".",
        "forward FROM: every name of the block"
    );
    let to: Vec<SocketAddr> = forward.words[2..]
        .iter()
        .map(|to| {
            to.parse()
                .unwrap_or_else(|e| panic!("forward TO {to:?}: not IP:port ({e})"))
        })
        .collect();
    assert_eq!(to, [SocketAddr::from(([127, 0, 0, 1], 8600))]);
    for option in &forward.block {
        assert!(
            FORWARD_OPTIONS.contains(&option[0].as_str()),
            "forward option {option:?}"
        );
    }
}

//------------ Prometheus and Grafana ----------------------------------------

/// Every metric the resolver exports (issue 7) and its labels. The
/// Prometheus job and the Grafana dashboard may name no other;
/// `observe` checks a real scrape against this list.
pub const METRICS: &[(&str, &[&str])] = &[
    ("consul_failover_dns_build_info", &["version"]),
    (
        "consul_failover_dns_queries_total",
        &["qtype", "rcode", "kind"],
    ),
    (
        "consul_failover_dns_answers_total",
        &["query", "datacenter"],
    ),
    (
        "consul_failover_dns_failovers_total",
        &["query", "from", "to"],
    ),
    ("consul_failover_dns_stale_answers_total", &[]),
    ("consul_failover_dns_udp_cached_answers_total", &[]),
    ("consul_failover_dns_watches", &["state"]),
    (
        "consul_failover_dns_consul_requests_total",
        &["datacenter", "outcome"],
    ),
    (
        "consul_failover_dns_consul_request_duration_seconds",
        &["datacenter", "kind"],
    ),
    ("consul_failover_dns_datacenter_reachable", &["datacenter"]),
    (
        "consul_failover_dns_datacenter_data_age_seconds",
        &["datacenter"],
    ),
    (
        "consul_failover_dns_healthy_instances",
        &["service", "datacenter"],
    ),
    ("consul_failover_dns_prepared_queries", &[]),
    ("consul_failover_dns_config_reloads_total", &["outcome"]),
];

/// The histogram among [`METRICS`] (series `_bucket`, `_sum`, `_count`).
const HISTOGRAM: &str = "consul_failover_dns_consul_request_duration_seconds";

/// The values each enumerated label may take, by metric and label.
const LABEL_VALUES: &[(&str, &str, &[&str])] = &[
    (
        "consul_failover_dns_queries_total",
        "kind",
        &[
            "query",
            "service",
            "addr",
            "node",
            "zone",
            "other",
            "out_of_zone",
            "invalid",
        ],
    ),
    (
        "consul_failover_dns_watches",
        "state",
        &["synced", "pending", "stale"],
    ),
    (
        "consul_failover_dns_consul_requests_total",
        "outcome",
        &["ok", "error", "timeout"],
    ),
    (
        "consul_failover_dns_config_reloads_total",
        "outcome",
        &["ok", "error"],
    ),
];

/// Labels Prometheus adds to every series of the recipe's job (`job`,
/// `instance`, and the recipe's relabelling).
const TARGET_LABELS: &[&str] = &["job", "instance", "consul_dc", "node"];

/// Whether `name` is a valid Prometheus label name.
fn is_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A Prometheus configuration, as much of it as the recipe may use;
/// unknown keys are errors, as they are to Prometheus.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrometheusConfig {
    scrape_configs: Vec<ScrapeConfig>,
}

/// A `scrape_config`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code, reason = "the keys a recipe may set; serde reads them all")]
struct ScrapeConfig {
    job_name: String,
    #[serde(default)]
    metrics_path: Option<String>,
    #[serde(default)]
    scheme: Option<String>,
    #[serde(default)]
    scrape_interval: Option<String>,
    #[serde(default)]
    scrape_timeout: Option<String>,
    consul_sd_configs: Vec<ConsulSdConfig>,
    #[serde(default)]
    relabel_configs: Vec<RelabelConfig>,
}

/// A `consul_sd_config`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code, reason = "the keys a recipe may set; serde reads them all")]
struct ConsulSdConfig {
    server: String,
    #[serde(default)]
    services: Vec<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    datacenter: Option<String>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    scheme: Option<String>,
    #[serde(default)]
    allow_stale: Option<bool>,
    #[serde(default)]
    refresh_interval: Option<String>,
}

/// A `relabel_config`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code, reason = "the keys a recipe may set; serde reads them all")]
struct RelabelConfig {
    #[serde(default)]
    source_labels: Vec<String>,
    #[serde(default)]
    separator: Option<String>,
    #[serde(default)]
    target_label: Option<String>,
    #[serde(default)]
    regex: Option<String>,
    #[serde(default)]
    replacement: Option<String>,
    #[serde(default)]
    action: Option<String>,
}

#[test]
fn prometheus_recipe_is_well_formed() {
    let text = recipe("prometheus/consul-failover-dns.yml");
    let config: PrometheusConfig = serde_yaml_ng::from_str(&text)
        .unwrap_or_else(|e| panic!("consul-failover-dns.yml: {e}\n{text}"));
    assert_eq!(config.scrape_configs.len(), 1, "{config:?}");
    let job = &config.scrape_configs[0];
    assert_eq!(job.job_name, "consul-failover-dns");
    assert_eq!(
        job.metrics_path.as_deref().unwrap_or("/metrics"),
        "/metrics"
    );
    assert_eq!(job.scheme.as_deref().unwrap_or("http"), "http");
    assert!(!job.consul_sd_configs.is_empty(), "{job:?}");
    for sd in &job.consul_sd_configs {
        // The service and tag the resolver registers itself with.
        assert_eq!(sd.services, ["consul-failover-dns"], "{sd:?}");
        assert_eq!(sd.tags, ["metrics"], "{sd:?}");
        let (host, port) = sd
            .server
            .rsplit_once(':')
            .unwrap_or_else(|| panic!("server {:?} is not HOST:PORT", sd.server));
        assert!(!host.is_empty() && port.parse::<u16>().is_ok(), "{sd:?}");
        if let Some(scheme) = &sd.scheme {
            assert!(["http", "https"].contains(&scheme.as_str()), "{sd:?}");
        }
    }
    let own_labels: BTreeSet<&str> = METRICS
        .iter()
        .flat_map(|(_, labels)| labels.iter().copied())
        .chain(["le"])
        .collect();
    for relabel in &job.relabel_configs {
        for source in &relabel.source_labels {
            assert!(
                source.starts_with("__meta_consul_")
                    || ["__address__", "__scheme__", "__metrics_path__"].contains(&source.as_str()),
                "relabel source {source:?} is no label consul_sd_configs gives a target"
            );
        }
        if let Some(regex) = &relabel.regex {
            // Prometheus anchors relabelling regexes (RE2 syntax).
            assert!(
                regex::Regex::new(&format!("^(?:{regex})$")).is_ok(),
                "relabel regex {regex:?}"
            );
        }
        if let Some(action) = &relabel.action {
            assert!(
                [
                    "replace",
                    "keep",
                    "drop",
                    "labelmap",
                    "labeldrop",
                    "labelkeep"
                ]
                .contains(&action.as_str()),
                "relabel action {action:?}"
            );
        }
        if let Some(target) = &relabel.target_label {
            assert!(is_label_name(target), "target_label {target:?}");
            // A target label the series carry themselves would rename
            // theirs to exported_<label> and break the dashboard.
            assert!(
                !own_labels.contains(target.as_str()),
                "target_label {target:?} clashes with a label of the resolver's series"
            );
            assert!(
                TARGET_LABELS.contains(&target.as_str()),
                "target_label {target:?}: add it to TARGET_LABELS so the dashboard may use it"
            );
        }
    }
}

/// A metric name as it appears in an expression: the exported metric it
/// belongs to (histogram series map to the histogram), or `None` for a
/// name that is none of [`METRICS`].
fn exported(series: &str) -> Option<&'static str> {
    let base = ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| series.strip_suffix(suffix))
        .filter(|base| *base == HISTOGRAM)
        .unwrap_or(series);
    METRICS
        .iter()
        .map(|(name, _)| *name)
        .find(|name| *name == base)
}

/// The labels of the series `series` of an exported metric (with `le`
/// for histogram buckets).
fn labels_of(series: &str) -> BTreeSet<&'static str> {
    let metric = exported(series).expect("an exported metric");
    let mut labels: BTreeSet<&'static str> = METRICS
        .iter()
        .find(|(name, _)| *name == metric)
        .map(|(_, labels)| labels.iter().copied().collect())
        .unwrap_or_default();
    if series.ends_with("_bucket") {
        labels.insert("le");
    }
    labels
}

/// One label matcher of a selector: label name, operator (`=`, `!=`,
/// `=~`, `!~`) and value.
type Matcher = (String, String, String);

/// What one PromQL expression names: each series with its label
/// matchers, and the labels of every `by (…)` / `without (…)` clause.
#[derive(Debug, Default)]
struct Named {
    series: Vec<(String, Vec<Matcher>)>,
    grouping: Vec<String>,
}

/// Reads the metric names, matchers and grouping labels of `expr`.
/// Panics on an unterminated `{…}` or string.
fn promql_names(expr: &str) -> Named {
    let bytes = expr.as_bytes();
    let mut named = Named::default();
    let word_at = |start: usize| {
        let end = bytes[start..]
            .iter()
            .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_' || *b == b':'))
            .map_or(bytes.len(), |n| start + n);
        (&expr[start..end], end)
    };
    let skip_space = |mut i: usize| {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'"' {
            let end = expr[i + 1..]
                .find('"')
                .unwrap_or_else(|| panic!("unterminated string in {expr}"));
            i += end + 2;
            continue;
        }
        if !(b.is_ascii_alphabetic() || b == b'_') || (i > 0 && is_word(bytes[i - 1])) {
            i += 1;
            continue;
        }
        let (word, end) = word_at(i);
        let next = skip_space(end);
        if word == "by" || word == "without" {
            if bytes.get(next) == Some(&b'(') {
                let close = expr[next..]
                    .find(')')
                    .unwrap_or_else(|| panic!("unterminated by ( in {expr}"));
                named.grouping.extend(
                    expr[next + 1..next + close]
                        .split(',')
                        .map(|l| l.trim().to_owned())
                        .filter(|l| !l.is_empty()),
                );
                i = next + close + 1;
                continue;
            }
        } else if word.starts_with("consul_failover_dns_") {
            let mut matchers = Vec::new();
            let mut after = end;
            if bytes.get(next) == Some(&b'{') {
                let close = next
                    + expr[next..]
                        .find('}')
                        .unwrap_or_else(|| panic!("unterminated {{ in {expr}"));
                for part in expr[next + 1..close].split(',') {
                    let part = part.trim();
                    if part.is_empty() {
                        continue;
                    }
                    let op_at = part
                        .find(['=', '!'])
                        .unwrap_or_else(|| panic!("matcher {part:?} in {expr}"));
                    let name = part[..op_at].trim();
                    let rest = &part[op_at..];
                    let op = ["=~", "!~", "!=", "="]
                        .into_iter()
                        .find(|op| rest.starts_with(op))
                        .unwrap_or_else(|| panic!("matcher {part:?} in {expr}"));
                    let value = rest[op.len()..].trim().trim_matches('"');
                    matchers.push((name.to_owned(), op.to_owned(), value.to_owned()));
                }
                after = close + 1;
            }
            named.series.push((word.to_owned(), matchers));
            i = after;
            continue;
        }
        i = end;
    }
    named
}

/// Whether `b` may continue an identifier.
fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b':'
}

/// The `{{label}}` names of a Grafana legend format.
fn legend_labels(legend: &str) -> Vec<String> {
    legend
        .split("{{")
        .skip(1)
        .filter_map(|part| part.split_once("}}"))
        .map(|(label, _)| label.trim().to_owned())
        .collect()
}

/// Checks one PromQL expression of the dashboard (at `place`) and its
/// legend: every metric exported, every label one that metric (or the
/// scrape job) has, every enumerated value one the resolver uses. Returns
/// the exported metrics it names.
fn check_expr(expr: &str, legend: &str, place: &str) -> BTreeSet<&'static str> {
    let named = promql_names(expr);
    assert!(!named.series.is_empty(), "{place}: no metric in {expr:?}");
    let mut metrics = BTreeSet::new();
    let mut available: BTreeSet<&str> = TARGET_LABELS.iter().copied().collect();
    for (series, matchers) in &named.series {
        let metric = exported(series).unwrap_or_else(|| {
            panic!("{place}: {series} is not a metric the resolver exports ({expr})")
        });
        metrics.insert(metric);
        let labels = labels_of(series);
        available.extend(labels.iter().copied());
        for (name, op, value) in matchers {
            assert!(
                labels.contains(name.as_str()) || TARGET_LABELS.contains(&name.as_str()),
                "{place}: {series} has no label {name:?} ({expr})"
            );
            let allowed = LABEL_VALUES
                .iter()
                .find(|(m, l, _)| *m == metric && l == name)
                .map(|(_, _, values)| *values);
            if let (Some(values), "=") = (allowed, op.as_str()) {
                assert!(
                    values.contains(&value.as_str()),
                    "{place}: {series}{{{name}=\"{value}\"}}: {name} is one of {values:?}"
                );
            }
        }
    }
    for label in named.grouping.iter().chain(&legend_labels(legend)) {
        assert!(
            available.contains(label.as_str()),
            "{place}: label {label:?} is on none of the series of {expr:?}"
        );
    }
    metrics
}

#[test]
fn grafana_dashboard_names_only_exported_metrics() {
    let text = recipe("grafana/consul-failover-dns.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("consul-failover-dns.json is not JSON: {e}"));
    assert!(dashboard["title"].is_string() && dashboard["uid"].is_string());
    assert!(dashboard["schemaVersion"].is_u64(), "schemaVersion");
    // Importable anywhere: no fixed datasource; a `datasource` variable
    // of type datasource instead.
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list");
    assert!(
        variables.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "a `datasource` variable of type datasource (prometheus)"
    );
    let variable_names: BTreeSet<&str> = variables
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    let check_datasource = |value: &serde_json::Value, place: &str| {
        assert_eq!(value["type"], "prometheus", "{place}: datasource {value}");
        assert_eq!(value["uid"], "${datasource}", "{place}: datasource {value}");
    };

    let mut seen: BTreeSet<&'static str> = BTreeSet::new();
    let check_variables = |expr: &str, place: &str| {
        for part in expr.split('$').skip(1) {
            let name: String = part
                .trim_start_matches('{')
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(
                name.starts_with("__") || variable_names.contains(name.as_str()),
                "{place}: ${name} is no variable of the dashboard ({expr})"
            );
        }
    };

    // Variables' own queries: label_values(metric{…}, label).
    for variable in variables.iter().filter(|v| v["type"] == "query") {
        let place = format!("variable {}", variable["name"]);
        check_datasource(&variable["datasource"], &place);
        let query = variable["query"]["query"]
            .as_str()
            .or_else(|| variable["query"].as_str())
            .expect("a query variable's query");
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .unwrap_or_else(|| panic!("{place}: {query}"));
        let (selector, label) = inner.rsplit_once(',').expect("label_values(metric, label)");
        let legend = format!("{{{{{}}}}}", label.trim());
        seen.extend(check_expr(selector, &legend, &place));
        check_variables(query, &place);
    }

    // Every panel (rows included, with the panels they hold) and every
    // annotation query.
    let mut panels: Vec<&serde_json::Value> = Vec::new();
    let mut stack: Vec<&serde_json::Value> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .collect();
    while let Some(panel) = stack.pop() {
        if let Some(inner) = panel["panels"].as_array() {
            stack.extend(inner);
        }
        panels.push(panel);
    }
    let mut ids = BTreeSet::new();
    let mut targets = 0;
    for panel in &panels {
        let id = panel["id"].as_u64().expect("every panel has a numeric id");
        assert!(ids.insert(id), "panel id {id} is used twice");
        let title = panel["title"].as_str().expect("every panel has a title");
        let grid = &panel["gridPos"];
        for key in ["x", "y", "w", "h"] {
            assert!(grid[key].is_u64(), "panel {title:?}: gridPos.{key}");
        }
        assert!(
            grid["x"].as_u64().unwrap_or(0) + grid["w"].as_u64().unwrap_or(0) <= 24,
            "panel {title:?} is wider than the dashboard"
        );
        if panel["type"] == "row" {
            continue;
        }
        check_datasource(&panel["datasource"], title);
        let panel_targets = panel["targets"].as_array().expect("targets");
        assert!(!panel_targets.is_empty(), "panel {title:?} has no query");
        let mut refs = BTreeSet::new();
        for target in panel_targets {
            let place = format!("panel {title:?}");
            check_datasource(&target["datasource"], &place);
            let expr = target["expr"].as_str().expect("every target has an expr");
            let legend = target["legendFormat"].as_str().unwrap_or_default();
            assert!(
                refs.insert(target["refId"].as_str().expect("refId")),
                "{place}: refId used twice"
            );
            seen.extend(check_expr(expr, legend, &place));
            check_variables(expr, &place);
            targets += 1;
        }
    }
    for annotation in dashboard["annotations"]["list"]
        .as_array()
        .expect("annotations.list")
    {
        if let Some(expr) = annotation["expr"].as_str() {
            let place = format!("annotation {}", annotation["name"]);
            check_datasource(&annotation["datasource"], &place);
            let text = annotation["textFormat"].as_str().unwrap_or_default();
            seen.extend(check_expr(expr, text, &place));
            check_variables(expr, &place);
        }
    }
    assert!(targets >= METRICS.len(), "{targets} queries");

    // And every exported metric is on the dashboard.
    let missing: Vec<&str> = METRICS
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| !seen.contains(name))
        .collect();
    assert!(missing.is_empty(), "metrics on no panel: {missing:?}");
}

/// The expression checker itself: it must see what the dashboard test
/// relies on it to see.
#[test]
fn grafana_expression_checker_catches_mistakes() {
    let good = check_expr(
        r#"histogram_quantile(0.99, sum by (datacenter, le) (rate(consul_failover_dns_consul_request_duration_seconds_bucket{instance=~"$instance"}[5m])))"#,
        "{{datacenter}}",
        "good",
    );
    assert_eq!(good.into_iter().collect::<Vec<_>>(), [HISTOGRAM]);
    let bad = [
        // A metric the resolver does not export.
        ("sum(rate(consul_failover_dns_query_total[5m]))", ""),
        // A label the metric does not have.
        (
            "sum by (datacentre) (rate(consul_failover_dns_answers_total[5m]))",
            "",
        ),
        (r#"consul_failover_dns_watches{status="synced"}"#, ""),
        // A value the label never takes.
        (r#"consul_failover_dns_watches{state="ready"}"#, ""),
        // A legend naming a label the series do not carry.
        ("consul_failover_dns_prepared_queries", "{{datacenter}}"),
        // `le` only on buckets.
        (
            "sum by (le) (rate(consul_failover_dns_consul_request_duration_seconds_sum[5m]))",
            "",
        ),
    ];
    for (expr, legend) in bad {
        let caught = std::panic::catch_unwind(|| check_expr(expr, legend, "bad")).is_err();
        assert!(caught, "the checker accepts {expr:?} / {legend:?}");
    }
}
