//! The Consul HTTP client: one request per call, with the token, TLS,
//! timeouts and the choice of address per datacenter.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use hyper::header::HeaderValue;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::time::Instant;
use url::Url;

use super::connection::{self, Answer, Connector, Failure};
use super::transport::{Lease, Transport};
use super::{ConsulError, MAX_ERROR_BODY, api};
use crate::config::{ConsulConfig, DEFAULT_CONSUL_ADDRESS};
use crate::health::{Instance, NodeCache};

/// The header carrying the ACL token.
pub const TOKEN_HEADER: &str = "X-Consul-Token";
/// The header carrying a read's Raft index.
pub const INDEX_HEADER: &str = "X-Consul-Index";
/// The header an agent with `translate_wan_addrs` sets on every answer.
pub const TRANSLATE_HEADER: &str = "X-Consul-Translate-Addresses";
/// How long a direct datacenter address that failed at the network level
/// is tried only after the others.
pub const AVOID_FAILED_ADDRESS_FOR: Duration = Duration::from_secs(30);

/// The `User-Agent` of every request.
pub const USER_AGENT: &str = concat!("consul-failover-dns/", env!("CARGO_PKG_VERSION"));

/// Formats a wait the way Consul parses it (Go's `time.ParseDuration`):
/// whole seconds as `300s`, anything finer in milliseconds (`1500ms`).
pub fn format_wait(wait: Duration) -> String {
    if wait.subsec_nanos() == 0 {
        format!("{}s", wait.as_secs())
    } else {
        format!("{}ms", wait.as_millis().max(1))
    }
}

/// Where one attempt of a read goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Address<'a> {
    /// A direct address of the datacenter read.
    Direct(&'a Url),
    /// The local agent, with `?dc=`.
    Agent,
}

/// A health read sent at once (see `ConsulClient::send_health_read`).
struct Sent<'a> {
    /// Where it went.
    address: Address<'a>,
    /// Its place on the connection, given back once the answer is read.
    lease: Lease<'a>,
    /// The answer's head to come.
    response: h2::client::ResponseFuture,
    /// When it times out.
    deadline: Instant,
}

/// The errors of the addresses a read tried, kept for when none answers.
/// Boxed: rare, and kept across every await of a read.
#[derive(Default)]
struct RouteErrors {
    /// The local agent's.
    agent: Option<Box<ConsulError>>,
    /// The last direct address's.
    direct: Option<Box<ConsulError>>,
}

impl RouteErrors {
    /// The error a read that no address answered returns: the agent's if
    /// it was tried (the route always holds it), else a direct one's.
    fn into_error(self) -> ConsulError {
        *self
            .agent
            .or(self.direct)
            .expect("the local agent is always tried")
    }
}

/// One HTTP answer that passed the status check.
struct Reply {
    /// The URL asked, for decode errors.
    url: String,
    /// `X-Consul-Index`, 0 when missing or unreadable.
    index: u64,
    /// Whether `X-Consul-Translate-Addresses: true` came with it.
    translate_header: bool,
    /// Whether the local agent answered (not a direct address).
    via_agent: bool,
    /// The body.
    body: Bytes,
}

/// A client of the local Consul agent and of the direct addresses of
/// remote datacenters. Cheap to share behind an `Arc`; every method is one
/// request (or one per address tried).
pub struct ConsulClient {
    /// The connections to Consul (TLS by rustls), within its per-client
    /// limit; redirects are never followed, so the token stays with Consul.
    transport: Transport,
    /// The local agent.
    agent: Url,
    /// Direct addresses per datacenter, tried before the agent.
    direct: HashMap<String, Vec<Url>>,
    /// The ACL token, marked sensitive.
    token: Option<HeaderValue>,
    /// The blocking-query wait.
    wait: Duration,
    /// Whether reads carry `?stale`.
    stale: bool,
    /// The timeout of non-blocking requests and the slack of blocking ones.
    timeout: Duration,
    /// Direct addresses that failed at the network level, until when they
    /// go after the others.
    avoid: Mutex<HashMap<Url, Instant>>,
    /// Per datacenter, the direct address that answered last: tried first
    /// next time.
    last_good: Mutex<HashMap<String, Url>>,
    /// One shared value per node, whatever services it runs.
    nodes: NodeCache,
    /// Health reads sent at once on an open HTTP/2 connection.
    sent_at_once: AtomicU64,
}

impl fmt::Debug for ConsulClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let direct: HashMap<&str, Vec<String>> = self
            .direct
            .iter()
            .map(|(dc, urls)| (dc.as_str(), urls.iter().map(shown_url).collect()))
            .collect();
        f.debug_struct("ConsulClient")
            .field("agent", &shown_url(&self.agent))
            .field("direct", &direct)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("wait", &self.wait)
            .field("stale", &self.stale)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl ConsulClient {
    /// Builds a client from the `[consul]` section and the process
    /// environment (see [`with_env`](Self::with_env)).
    pub fn new(config: &ConsulConfig) -> Result<Self, ConsulError> {
        Self::with_env(config, |name| std::env::var(name).ok())
    }

    /// Builds a client from the `[consul]` section and an environment
    /// lookup (the test seam for [`new`](Self::new)):
    ///
    /// - `CONSUL_HTTP_ADDR` replaces `consul.address` when that is left at
    ///   its default; without a scheme it is `http://`, or `https://` with
    ///   `CONSUL_HTTP_SSL=true`, as Consul's CLI reads it.
    /// - The token comes from `consul.token_file`, else `CONSUL_HTTP_TOKEN`,
    ///   else the file named by `CONSUL_HTTP_TOKEN_FILE`.
    /// - Extra CA certificates come from `consul.ca_file`, else
    ///   `CONSUL_CACERT`; `CONSUL_HTTP_SSL_VERIFY=false` turns certificate
    ///   checks off.
    /// - A client certificate (for agents with `verify_incoming`) comes
    ///   from `consul.cert_file` and `consul.key_file`, else
    ///   `CONSUL_CLIENT_CERT` and `CONSUL_CLIENT_KEY`.
    pub fn with_env(
        config: &ConsulConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConsulError> {
        let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let (address, origin) = match env("CONSUL_HTTP_ADDR") {
            Some(address) if config.address == DEFAULT_CONSUL_ADDRESS => {
                let https = env("CONSUL_HTTP_SSL").is_some_and(|v| parse_bool(&v) == Some(true));
                let address = address.trim();
                let address = if address.contains("://") {
                    address.to_owned()
                } else {
                    format!("{}://{address}", if https { "https" } else { "http" })
                };
                (address, "CONSUL_HTTP_ADDR")
            }
            _ => (config.address.clone(), "consul.address"),
        };
        let agent = parse_base_url(&address, origin)?;
        let mut direct: HashMap<String, Vec<Url>> = HashMap::new();
        for (i, dc) in config.datacenters.iter().enumerate() {
            let origin = format!("consul.datacenters[{i}].addresses");
            for address in &dc.addresses {
                direct
                    .entry(dc.name.clone())
                    .or_default()
                    .push(parse_base_url(address, &origin)?);
            }
        }
        let token = load_token(config, &env)?;
        let ca = if config.ca_file.is_empty() {
            env("CONSUL_CACERT").map(|path| (path, "CONSUL_CACERT"))
        } else {
            Some((config.ca_file.clone(), "consul.ca_file"))
        };
        let roots = match ca {
            Some((path, origin)) => load_ca(Path::new(&path), origin)?,
            None => Vec::new(),
        };
        let identity = match (config.cert_file.is_empty(), config.key_file.is_empty()) {
            (false, false) => Some((
                (config.cert_file.clone(), "consul.cert_file"),
                (config.key_file.clone(), "consul.key_file"),
            )),
            _ => match (env("CONSUL_CLIENT_CERT"), env("CONSUL_CLIENT_KEY")) {
                (Some(cert), Some(key)) => {
                    Some(((cert, "CONSUL_CLIENT_CERT"), (key, "CONSUL_CLIENT_KEY")))
                }
                _ => None,
            },
        };
        let identity = identity
            .map(|((cert, cert_origin), (key, key_origin))| {
                load_identity(Path::new(&cert), cert_origin, Path::new(&key), key_origin)
            })
            .transpose()?;
        let verify = env("CONSUL_HTTP_SSL_VERIFY").is_none_or(|v| parse_bool(&v) != Some(false));
        if !verify {
            tracing::warn!(
                "CONSUL_HTTP_SSL_VERIFY=false: Consul's TLS certificates are not checked"
            );
        }
        let connector = Connector::new(tls_config(roots, verify, identity)?, config.timeout);
        let transport = Transport::new(connector, config.http2, config.max_connections);
        Ok(Self {
            transport,
            agent,
            direct,
            token,
            wait: config.wait,
            stale: config.stale,
            timeout: config.timeout,
            avoid: Mutex::new(HashMap::new()),
            last_good: Mutex::new(HashMap::new()),
            nodes: NodeCache::default(),
            sent_at_once: AtomicU64::new(0),
        })
    }

    /// The local agent's base URL.
    pub fn agent_url(&self) -> &Url {
        &self.agent
    }

    /// The connections opened to the local agent so far.
    pub fn agent_connections(&self) -> usize {
        self.transport.lanes(&self.agent)
    }

    /// Health reads sent at once on an open HTTP/2 connection so far
    /// (the others waited for a place or a connection, or used HTTP/1.1).
    pub fn sent_at_once(&self) -> u64 {
        self.sent_at_once.load(Ordering::Relaxed)
    }

    /// The blocking-query wait sent as `?wait=`.
    pub fn wait(&self) -> Duration {
        self.wait
    }

    /// The HTTP timeout of a blocking read: the wait, plus the server's
    /// jitter of up to a sixteenth (reference §2), plus the request timeout
    /// as network slack. Always above `wait * 17 / 16`.
    pub fn blocking_timeout(&self) -> Duration {
        self.wait + self.wait / 16 + self.timeout
    }

    /// The local agent's datacenter (`GET /v1/agent/self`,
    /// `Config.Datacenter`).
    pub async fn local_datacenter(&self) -> Result<String, ConsulError> {
        let reply = self
            .send(
                &build_url(&self.agent, &["v1", "agent", "self"], &[]),
                self.timeout,
                true,
                false,
            )
            .await?;
        api::decode_agent_datacenter(&reply.body).map_err(|reason| ConsulError::Decode {
            url: reply.url,
            reason,
        })
    }

    /// Every known datacenter, nearest first by RTT, from the local agent
    /// (`GET /v1/catalog/datacenters`).
    pub async fn datacenters(&self) -> Result<Vec<String>, ConsulError> {
        let url = build_url(&self.agent, &["v1", "catalog", "datacenters"], &[]);
        let reply = self.send(&url, self.timeout, true, false).await?;
        api::decode_datacenters(&reply.body).map_err(|reason| ConsulError::Decode {
            url: reply.url,
            reason,
        })
    }

    /// One blocking read of `GET /v1/health/service/<service>?dc=<dc>`
    /// with `index` (0: a non-blocking read), `wait` and, if configured,
    /// `stale`; never `passing` (health is filtered per query later).
    /// Returns `X-Consul-Index` (0 when missing) and every instance.
    /// `other_dc` (whether `dc` is not the agent's own) tells whether an
    /// agent's `translate_wan_addrs` rewrote the addresses.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn would keep its arguments twice"
    )]
    pub fn service_health(
        &self,
        dc: &str,
        service: &str,
        index: u64,
        other_dc: bool,
    ) -> impl Future<Output = Result<(u64, Vec<Instance>), ConsulError>> + Send {
        // Thousands of watches each hold this future for minutes, so it
        // keeps little while Consul blocks: the read sent at once on an
        // open HTTP/2 connection, and the wait for its answer's head.
        // Everything before and after it, and every other way (HTTP/1.1,
        // no open connection, errors) is boxed. (A plain function around
        // an `async move` block: an `async fn` would keep its arguments
        // twice.)
        async move {
            let mut sent = self.send_health_read(dc, service, index);
            let head = match &mut sent {
                Some(sent) => {
                    Some(tokio::time::timeout_at(sent.deadline, &mut sent.response).await)
                }
                None => None,
            };
            let rest: Pin<Box<dyn Future<Output = Result<Reply, ConsulError>> + Send + '_>> =
                match (sent, head) {
                    (Some(sent), Some(head)) => {
                        Box::pin(self.after_head(dc, service, index, sent, head))
                    }
                    _ => Box::pin(self.read_health(dc, service, index)),
                };
            let reply = rest.await?;
            let translated = reply.translate_header && reply.via_agent && other_dc;
            let instances =
                api::decode_health(&reply.body, translated, |nodes| self.nodes.share(dc, nodes))
                    .map_err(|reason| ConsulError::Decode {
                        url: reply.url,
                        reason,
                    })?;
            Ok((reply.index, instances))
        }
    }

    /// A health read along the route, every step awaited.
    async fn read_health(&self, dc: &str, service: &str, index: u64) -> Result<Reply, ConsulError> {
        self.read_along_route(
            dc,
            &health_path(service),
            index,
            None,
            None,
            RouteErrors::default(),
        )
        .await
    }

    /// Sends a health read to the first address of `dc`'s route at once,
    /// if its HTTP/2 connection is open and has room: where it went, and
    /// the future of the answer's head.
    fn send_health_read(&self, dc: &str, service: &str, index: u64) -> Option<Sent<'_>> {
        let address = *self.route(dc).first()?;
        let (base, _) = self.base(address);
        let url = self.read_url(base, dc, &health_path(service), index);
        let lease = self.transport.try_lease(&url, index > 0)?;
        let response = lease.try_send(&url, self.token.as_ref())?;
        self.sent_at_once.fetch_add(1, Ordering::Relaxed);
        Some(Sent {
            address,
            lease,
            response,
            deadline: Instant::now() + self.read_timeout(index, None),
        })
    }

    /// The rest of a health read sent by
    /// [`send_health_read`](Self::send_health_read) once its head came (or
    /// its deadline passed): the body, the status check, and on failure
    /// the rest of the route, as [`read_along_route`](Self::read_along_route)
    /// would have gone on.
    async fn after_head(
        &self,
        dc: &str,
        service: &str,
        index: u64,
        sent: Sent<'_>,
        head: Result<
            Result<hyper::Response<h2::RecvStream>, h2::Error>,
            tokio::time::error::Elapsed,
        >,
    ) -> Result<Reply, ConsulError> {
        let Sent {
            address,
            lease,
            deadline,
            ..
        } = sent;
        let (base, via_agent) = self.base(address);
        let path = health_path(service);
        let url = self.read_url(base, dc, &path, index);
        let timed_out = || {
            Failure::Failed(ConsulError::Timeout {
                url: shown_url(&url),
                after: self.read_timeout(index, None),
            })
        };
        let answer = match head {
            Err(_) => Err(timed_out()),
            Ok(Err(error)) => Err(connection::h2_failure(&url, &error)),
            Ok(Ok(response)) => {
                tokio::time::timeout_at(deadline, connection::read_h2_body(response, &url))
                    .await
                    .unwrap_or_else(|_| Err(timed_out()))
            }
        };
        drop(lease);
        let error = match answer.map_err(Failure::into_inner) {
            Ok(answer) => match reply(answer, &url, via_agent) {
                Ok(reply) => {
                    self.answered(dc, address);
                    return Ok(reply);
                }
                Err(error) => error,
            },
            // The connection closed under the request, which was not
            // answered: the whole route again, on a new connection.
            Err((error, true)) => {
                tracing::debug!(url = %shown_url(&url), %error, "Consul connection closed; sending again");
                return self.read_health(dc, service, index).await;
            }
            Err((error, false)) => error,
        };
        let mut errors = RouteErrors::default();
        self.failed(dc, address, error, &mut errors);
        self.read_along_route(dc, &path, index, None, Some(address), errors)
            .await
    }

    /// One blocking read of `GET /v1/catalog/services?dc=<dc>`: the index
    /// and the names of the services the datacenter has.
    pub async fn catalog_services(
        &self,
        dc: &str,
        index: u64,
    ) -> Result<(u64, HashSet<String>), ConsulError> {
        let reply = self
            .blocking_read(dc, &["v1", "catalog", "services"], index)
            .await?;
        let names = api::decode_catalog(&reply.body).map_err(|reason| ConsulError::Decode {
            url: reply.url,
            reason,
        })?;
        Ok((reply.index, names))
    }

    /// One blocking read of `GET /v1/query` in `dc` (the local one): the
    /// index and every prepared query defined there.
    pub async fn prepared_queries(
        &self,
        dc: &str,
        index: u64,
    ) -> Result<(u64, Vec<crate::prepared::Definition>), ConsulError> {
        let reply = self.blocking_read(dc, &["v1", "query"], index).await?;
        let list =
            crate::prepared::decode_list(&reply.body).map_err(|reason| ConsulError::Decode {
                url: reply.url,
                reason,
            })?;
        Ok((reply.index, list))
    }

    /// Registers a service in the local agent
    /// (`PUT /v1/agent/service/register`, `registration` the JSON body);
    /// the agent syncs it to the catalog before it answers.
    pub async fn register_service(&self, registration: &Bytes) -> Result<(), ConsulError> {
        let url = build_url(&self.agent, &["v1", "agent", "service", "register"], &[]);
        self.request(
            &url,
            connection::Call::Put(registration),
            self.timeout,
            true,
            false,
        )
        .await
        .map(|_| ())
    }

    /// Removes a service from the local agent
    /// (`PUT /v1/agent/service/deregister/<id>`). An ID the agent does
    /// not know is an error (404).
    pub async fn deregister_service(&self, id: &str) -> Result<(), ConsulError> {
        let url = build_url(
            &self.agent,
            &["v1", "agent", "service", "deregister", id],
            &[],
        );
        let empty = Bytes::new();
        self.request(
            &url,
            connection::Call::Put(&empty),
            self.timeout,
            true,
            false,
        )
        .await
        .map(|_| ())
    }

    /// Whether the local agent has the service `id` registered
    /// (`GET /v1/agent/service/<id>`: 404 when it has not).
    pub async fn agent_has_service(&self, id: &str) -> Result<bool, ConsulError> {
        let url = build_url(&self.agent, &["v1", "agent", "service", id], &[]);
        match self.send(&url, self.timeout, true, false).await {
            Ok(_) => Ok(true),
            Err(ConsulError::Status { status: 404, .. }) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Whether `dc`'s Consul answers within `timeout`: a non-blocking
    /// `GET /v1/status/leader?dc=<dc>` along the route its watches take.
    /// Any answer counts, a leaderless one too (stale reads still work).
    pub async fn probe(&self, dc: &str, timeout: Duration) -> Result<(), ConsulError> {
        self.read_along_route(
            dc,
            &["v1", "status", "leader"],
            0,
            Some(timeout),
            None,
            RouteErrors::default(),
        )
        .await
        .map(|_| ())
    }

    /// A blocking read in `dc` along [`route`](Self::route); the first
    /// answer wins. If none answers, the agent's error is returned.
    async fn blocking_read(
        &self,
        dc: &str,
        path: &[&str],
        index: u64,
    ) -> Result<Reply, ConsulError> {
        self.read_along_route(dc, path, index, None, None, RouteErrors::default())
            .await
    }

    /// [`blocking_read`](Self::blocking_read), with the timeout of a
    /// non-blocking read replaced by `timeout` if given. With `tried`
    /// set, that address was tried already (its error is in `errors`).
    async fn read_along_route(
        &self,
        dc: &str,
        path: &[&str],
        index: u64,
        timeout: Option<Duration>,
        tried: Option<Address<'_>>,
        mut errors: RouteErrors,
    ) -> Result<Reply, ConsulError> {
        let timeout = self.read_timeout(index, timeout);
        // A health watch's blocking read: it may wait its turn for a
        // connection; others never wait behind it.
        let watch = index > 0 && path.starts_with(&["v1", "health"]);
        for address in self.route(dc) {
            if tried == Some(address) {
                continue;
            }
            let (base, via_agent) = self.base(address);
            let url = self.read_url(base, dc, path, index);
            match self.send(&url, timeout, via_agent, watch).await {
                Ok(reply) => {
                    self.answered(dc, address);
                    return Ok(reply);
                }
                Err(error) => self.failed(dc, address, error, &mut errors),
            }
        }
        Err(errors.into_error())
    }

    /// The timeout of a read at `index`: a blocking read's, else `timeout`
    /// or the configured one.
    fn read_timeout(&self, index: u64, timeout: Option<Duration>) -> Duration {
        if index > 0 {
            self.blocking_timeout()
        } else {
            timeout.unwrap_or(self.timeout)
        }
    }

    /// The base URL of `address`, and whether it is the local agent.
    fn base<'a>(&'a self, address: Address<'a>) -> (&'a Url, bool) {
        match address {
            Address::Direct(url) => (url, false),
            Address::Agent => (&self.agent, true),
        }
    }

    /// A read in `dc` answered from `address`: a direct address is
    /// preferred from now on.
    fn answered(&self, dc: &str, address: Address<'_>) {
        if let Address::Direct(base) = address {
            self.lock_avoid().remove(base);
            self.last_good
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(dc.to_owned(), base.clone());
        }
    }

    /// A read in `dc` failed at `address`: a direct address that failed
    /// at the network level is tried last for a while.
    fn failed(&self, dc: &str, address: Address<'_>, error: ConsulError, errors: &mut RouteErrors) {
        match address {
            Address::Agent => errors.agent = Some(Box::new(error)),
            Address::Direct(base) => {
                tracing::debug!(datacenter = dc, %error, "direct Consul address failed");
                if error.is_transport() {
                    self.lock_avoid()
                        .insert(base.clone(), Instant::now() + AVOID_FAILED_ADDRESS_FOR);
                }
                errors.direct = Some(Box::new(error));
            }
        }
    }

    /// The URL of a read of `path` in `dc` at `index` from `base`:
    /// `?dc=`, `index`, `wait` when blocking, `stale` if configured.
    fn read_url(&self, base: &Url, dc: &str, path: &[&str], index: u64) -> Url {
        let index_text = index.to_string();
        let wait_text = format_wait(self.wait);
        let mut query: Vec<(&str, Option<&str>)> =
            vec![("dc", Some(dc)), ("index", Some(&index_text))];
        if index > 0 {
            query.push(("wait", Some(&wait_text)));
        }
        if self.stale {
            query.push(("stale", None));
        }
        build_url(base, path, &query)
    }

    /// Where a read in `dc` goes, in order: its direct addresses that did
    /// not fail lately (configured order), the local agent, then the
    /// direct addresses that failed lately, so a dead direct address costs
    /// nothing while the agent answers.
    fn route(&self, dc: &str) -> Vec<Address<'_>> {
        let Some(urls) = self.direct.get(dc) else {
            return vec![Address::Agent];
        };
        let now = Instant::now();
        let mut avoid = self.lock_avoid();
        avoid.retain(|_, until| *until > now);
        let (avoided, mut fresh): (Vec<&Url>, Vec<&Url>) =
            urls.iter().partition(|url| avoid.contains_key(*url));
        // Stick to the address that answered last.
        if let Some(last) = self
            .last_good
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(dc)
            && let Some(at) = fresh.iter().position(|url| *url == last)
        {
            let last = fresh.remove(at);
            fresh.insert(0, last);
        }
        fresh
            .into_iter()
            .map(Address::Direct)
            .chain(std::iter::once(Address::Agent))
            .chain(avoided.into_iter().map(Address::Direct))
            .collect()
    }

    /// The failed-address map, whatever a panicking holder left.
    fn lock_avoid(&self) -> std::sync::MutexGuard<'_, HashMap<Url, Instant>> {
        self.avoid.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends one GET and reads the whole answer within `timeout`; any
    /// status other than 2xx is an error.
    async fn send(
        &self,
        url: &Url,
        timeout: Duration,
        via_agent: bool,
        watch: bool,
    ) -> Result<Reply, ConsulError> {
        self.request(url, connection::Call::Get, timeout, via_agent, watch)
            .await
    }

    /// Sends `what` to `url` and reads the whole answer within `timeout`;
    /// any status other than 2xx is an error.
    async fn request(
        &self,
        url: &Url,
        what: connection::Call<'_>,
        timeout: Duration,
        via_agent: bool,
        watch: bool,
    ) -> Result<Reply, ConsulError> {
        // Boxed: waiting for a place is rare, and the room for it would
        // otherwise be kept in every read's future.
        let lease = Box::pin(self.transport.lease(url, watch)).await;
        let answer = lease.send(url, what, self.token.as_ref(), timeout).await?;
        drop(lease);
        reply(answer, url, via_agent)
    }
}

/// An answer's index and translation flag, if its status is a success.
fn reply(answer: Answer, url: &Url, via_agent: bool) -> Result<Reply, ConsulError> {
    let Answer {
        status,
        headers,
        body,
    } = answer;
    let shown = shown_url(url);
    let index = headers
        .get(INDEX_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let translate_header = headers
        .get(TRANSLATE_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    if !status.is_success() {
        return Err(ConsulError::Status {
            url: shown,
            status: status.as_u16(),
            body: error_body(&body),
        });
    }
    Ok(Reply {
        url: shown,
        index,
        translate_header,
        via_agent,
        body,
    })
}

/// The path of a health read of `service`.
fn health_path(service: &str) -> [&str; 4] {
    ["v1", "health", "service", service]
}

/// Parses a base URL given in the configuration or the environment.
fn parse_base_url(address: &str, origin: &str) -> Result<Url, ConsulError> {
    let invalid = |reason: String| ConsulError::Address {
        origin: origin.to_owned(),
        address: address.to_owned(),
        reason,
    };
    let mut url = Url::parse(address.trim()).map_err(|e| invalid(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(format!(
            "the scheme {:?} is not supported",
            url.scheme()
        )));
    }
    if url.host().is_none() || url.cannot_be_a_base() {
        return Err(invalid("no host".to_owned()));
    }
    url.set_query(None);
    url.set_fragment(None);
    Ok(url)
}

/// `base` with `segments` appended to its path and `query` as parameters
/// (`None` values are bare keys such as `stale`).
fn build_url(base: &Url, segments: &[&str], query: &[(&str, Option<&str>)]) -> Url {
    let mut url = base.clone();
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(segments);
    }
    if !query.is_empty() {
        let mut pairs = url.query_pairs_mut();
        for (key, value) in query {
            match value {
                Some(value) => pairs.append_pair(key, value),
                None => pairs.append_key_only(key),
            };
        }
    }
    url
}

/// A URL for logs and errors: any password in it masked.
pub(super) fn shown_url(url: &Url) -> String {
    if url.password().is_some() {
        let mut masked = url.clone();
        // Only fails for URLs that cannot have credentials at all.
        let _ = masked.set_password(Some("redacted"));
        masked.to_string()
    } else {
        url.to_string()
    }
}

/// Loads the token: `consul.token_file`, else `CONSUL_HTTP_TOKEN`, else
/// the file named by `CONSUL_HTTP_TOKEN_FILE`.
fn load_token(
    config: &ConsulConfig,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Option<HeaderValue>, ConsulError> {
    let (token, origin) = if !config.token_file.is_empty() {
        let origin = format!("token file {} (consul.token_file)", config.token_file);
        (read_token_file(&config.token_file, &origin)?, origin)
    } else if let Some(token) = env("CONSUL_HTTP_TOKEN") {
        (token.trim().to_owned(), "CONSUL_HTTP_TOKEN".to_owned())
    } else if let Some(path) = env("CONSUL_HTTP_TOKEN_FILE") {
        let origin = format!("token file {path} (CONSUL_HTTP_TOKEN_FILE)");
        (read_token_file(&path, &origin)?, origin)
    } else {
        return Ok(None);
    };
    let mut value = HeaderValue::from_str(&token).map_err(|_| ConsulError::Token {
        origin,
        reason: "the token holds characters an HTTP header cannot carry".to_owned(),
    })?;
    value.set_sensitive(true);
    Ok(Some(value))
}

/// Reads a token file: the whole file, surrounding white space removed.
fn read_token_file(path: &str, origin: &str) -> Result<String, ConsulError> {
    let error = |reason: String| ConsulError::Token {
        origin: origin.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| error(format!("cannot read: {e}")))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(error("is empty".to_owned()));
    }
    Ok(token.to_owned())
}

/// Loads a PEM bundle of CA certificates.
fn load_ca(path: &Path, origin: &str) -> Result<Vec<CertificateDer<'static>>, ConsulError> {
    let error = |reason: String| ConsulError::CaFile {
        path: path.to_owned(),
        reason: format!("{reason} ({origin})"),
    };
    let pem = std::fs::read(path).map_err(|e| error(format!("cannot read: {e}")))?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(format!("not a PEM bundle: {e}")))?;
    if certificates.is_empty() {
        return Err(error("holds no PEM certificate".to_owned()));
    }
    Ok(certificates)
}

/// A client certificate chain and its private key, from PEM files.
type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// Loads the client certificate chain and its key; errors name the file
/// and where it was configured.
fn load_identity(
    cert: &Path,
    cert_origin: &str,
    key: &Path,
    key_origin: &str,
) -> Result<Identity, ConsulError> {
    let error = |path: &Path, origin: &str, reason: String| ConsulError::CertFile {
        path: path.to_owned(),
        reason: format!("{reason} ({origin})"),
    };
    let pem =
        std::fs::read(cert).map_err(|e| error(cert, cert_origin, format!("cannot read: {e}")))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(cert, cert_origin, format!("not a PEM certificate: {e}")))?;
    if chain.is_empty() {
        return Err(error(
            cert,
            cert_origin,
            "holds no PEM certificate".to_owned(),
        ));
    }
    let pem =
        std::fs::read(key).map_err(|e| error(key, key_origin, format!("cannot read: {e}")))?;
    // The key's bytes never go into an error.
    let key_der = PrivateKeyDer::from_pem_slice(&pem).map_err(|_| {
        error(
            key,
            key_origin,
            "holds no PEM private key (PKCS#8, PKCS#1 or SEC1)".to_owned(),
        )
    })?;
    Ok((chain, key_der))
}

/// The TLS settings of HTTPS connections: the web's public roots plus
/// `extra`, or no certificate check at all when `verify` is off; the
/// client certificate if given.
fn tls_config(
    extra: Vec<CertificateDer<'static>>,
    verify: bool,
    identity: Option<Identity>,
) -> Result<rustls::ClientConfig, ConsulError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| ConsulError::Client(e.to_string()))?;
    let builder = if verify {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        for certificate in extra {
            roots
                .add(certificate)
                .map_err(|e| ConsulError::Client(format!("CA certificate: {e}")))?;
        }
        builder.with_root_certificates(roots)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
    };
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| ConsulError::Client(format!("client certificate and key: {e}"))),
    }
}

/// Accepts any server certificate (`CONSUL_HTTP_SSL_VERIFY=false`), but
/// still checks the handshake signatures.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Reads Go's `strconv.ParseBool` spellings.
fn parse_bool(value: &str) -> Option<bool> {
    match value.trim() {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// An error body for messages: trimmed, at most [`MAX_ERROR_BODY`] bytes.
fn error_body(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.len() <= MAX_ERROR_BODY {
        return text.to_owned();
    }
    let mut end = MAX_ERROR_BODY;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use consul_sim::Sim;

    use super::*;
    use crate::config::DatacenterAddresses;
    use crate::consul::testutil::{self, BOUND, within};
    use crate::health::CheckStatus;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    /// A simulator of `dcs` over HTTPS, and its CA in a file.
    async fn tls_sim(dcs: &[&str]) -> (Sim, tempfile_lite::TempFile) {
        let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
        let sim = dcs
            .iter()
            .fold(Sim::builder(), |builder, dc| builder.dc(dc, any))
            .tls(true)
            .start()
            .await
            .unwrap();
        let ca = temp_file(&sim.ca_pem().expect("the simulator has a CA"));
        (sim, ca)
    }

    fn temp_file(contents: &str) -> tempfile_lite::TempFile {
        let file = tempfile_lite::TempFile::new();
        std::fs::File::create(&file.path)
            .unwrap()
            .write_all(contents.as_bytes())
            .unwrap();
        file
    }

    /// A tiny self-deleting temporary file (no extra dependency).
    mod tempfile_lite {
        use std::path::PathBuf;
        use std::sync::atomic::{AtomicU32, Ordering};

        /// A path under the temporary directory, removed on drop.
        pub(super) struct TempFile {
            /// The path.
            pub(super) path: PathBuf,
        }

        impl TempFile {
            /// A fresh, unique path.
            pub(super) fn new() -> Self {
                static NEXT: AtomicU32 = AtomicU32::new(0);
                let n = NEXT.fetch_add(1, Ordering::SeqCst);
                let path = std::env::temp_dir()
                    .join(format!("consul-client-test-{}-{n}", std::process::id()));
                Self { path }
            }

            /// The path as a string.
            pub(super) fn as_str(&self) -> &str {
                self.path.to_str().unwrap()
            }
        }

        impl Drop for TempFile {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }

    #[test]
    fn wait_is_sent_in_go_syntax_and_the_timeout_exceeds_consul_jitter() {
        assert_eq!(format_wait(Duration::from_secs(300)), "300s");
        assert_eq!(format_wait(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_wait(Duration::from_nanos(10)), "1ms");
        for (wait, timeout) in [(300_000, 5_000), (2_000, 1), (16, 1), (1, 1)] {
            let config = ConsulConfig {
                wait: Duration::from_millis(wait),
                timeout: Duration::from_millis(timeout),
                ..ConsulConfig::default()
            };
            let client = ConsulClient::with_env(&config, no_env).unwrap();
            assert!(
                client.blocking_timeout() > config.wait * 17 / 16,
                "{wait} ms"
            );
        }
    }

    #[test]
    fn urls_get_the_path_and_parameters_appended() {
        let base = parse_base_url("http://consul.example:8500/prefix/", "test").unwrap();
        let url = build_url(
            &base,
            &["v1", "health", "service", "my svc"],
            &[("dc", Some("dc1")), ("stale", None)],
        );
        assert_eq!(
            url.as_str(),
            "http://consul.example:8500/prefix/v1/health/service/my%20svc?dc=dc1&stale"
        );
        let bare = parse_base_url("https://10.0.0.1:8501", "test").unwrap();
        assert_eq!(
            build_url(&bare, &["v1", "agent", "self"], &[]).as_str(),
            "https://10.0.0.1:8501/v1/agent/self"
        );
        for bad in [
            "127.0.0.1:8500",
            "unix:///run/consul.sock",
            "ftp://x",
            "http://",
        ] {
            let error = parse_base_url(bad, "consul.address")
                .unwrap_err()
                .to_string();
            assert!(error.starts_with("consul.address: "), "{error}");
        }
    }

    #[test]
    fn environment_fills_in_address_and_token() {
        let config = ConsulConfig::default();
        let client = ConsulClient::with_env(
            &config,
            env_of(&[
                ("CONSUL_HTTP_ADDR", "10.1.2.3:8500"),
                ("CONSUL_HTTP_TOKEN", "t1"),
            ]),
        )
        .unwrap();
        assert_eq!(client.agent_url().as_str(), "http://10.1.2.3:8500/");
        assert!(client.token.is_some());
        let tls = ConsulClient::with_env(
            &config,
            env_of(&[
                ("CONSUL_HTTP_ADDR", "consul.internal:8501"),
                ("CONSUL_HTTP_SSL", "true"),
            ]),
        )
        .unwrap();
        assert_eq!(tls.agent_url().as_str(), "https://consul.internal:8501/");
        assert!(tls.token.is_none());
        // An address set in the file wins over the environment.
        let set = ConsulConfig {
            address: "http://192.0.2.1:8500".into(),
            ..ConsulConfig::default()
        };
        let client =
            ConsulClient::with_env(&set, env_of(&[("CONSUL_HTTP_ADDR", "10.1.2.3:8500")])).unwrap();
        assert_eq!(client.agent_url().as_str(), "http://192.0.2.1:8500/");
        let error =
            ConsulClient::with_env(&config, env_of(&[("CONSUL_HTTP_ADDR", "unix:///x.sock")]))
                .unwrap_err();
        assert!(
            error.to_string().starts_with("CONSUL_HTTP_ADDR: "),
            "{error}"
        );
    }

    #[test]
    fn token_sources_in_order_and_errors_name_the_file() {
        let file = temp_file("  from-config-file\n");
        let env_file = temp_file("from-env-file\n");
        let token = |config: &ConsulConfig, env: &[(&str, &str)]| {
            load_token(config, &env_of(env))
                .unwrap()
                .map(|v| v.to_str().unwrap().to_owned())
        };
        let with_file = ConsulConfig {
            token_file: file.as_str().into(),
            ..ConsulConfig::default()
        };
        let all = [
            ("CONSUL_HTTP_TOKEN", "from-env"),
            ("CONSUL_HTTP_TOKEN_FILE", env_file.as_str()),
        ];
        assert_eq!(token(&with_file, &all).as_deref(), Some("from-config-file"));
        let plain = ConsulConfig::default();
        assert_eq!(token(&plain, &all).as_deref(), Some("from-env"));
        assert_eq!(token(&plain, &all[1..]).as_deref(), Some("from-env-file"));
        assert_eq!(token(&plain, &[]), None);
        assert!(
            load_token(&plain, &env_of(&all))
                .unwrap()
                .unwrap()
                .is_sensitive()
        );

        let missing = ConsulConfig {
            token_file: "/nonexistent/consul.token".into(),
            ..ConsulConfig::default()
        };
        let error = ConsulClient::with_env(&missing, no_env)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("/nonexistent/consul.token") && error.contains("consul.token_file"),
            "{error}"
        );
        let empty = temp_file("\n");
        let error = load_token(
            &plain,
            &env_of(&[("CONSUL_HTTP_TOKEN_FILE", empty.as_str())]),
        )
        .unwrap_err();
        assert!(
            error.to_string().contains(empty.as_str()) && error.to_string().contains("empty"),
            "{error}"
        );
        let bad = temp_file("bad\u{7f}token");
        let with_bad = ConsulConfig {
            token_file: bad.as_str().into(),
            ..ConsulConfig::default()
        };
        let error = load_token(&with_bad, &no_env).unwrap_err().to_string();
        assert!(
            error.contains(bad.as_str()) && !error.contains("bad\u{7f}token"),
            "{error}"
        );
    }

    #[test]
    fn ca_errors_name_the_file() {
        let missing = ConsulConfig {
            ca_file: "/nonexistent/ca.pem".into(),
            ..ConsulConfig::default()
        };
        let error = ConsulClient::with_env(&missing, no_env).unwrap_err();
        assert!(
            matches!(&error, ConsulError::CaFile { path, .. } if path == Path::new("/nonexistent/ca.pem"))
        );
        let junk = temp_file("not a certificate");
        let error = ConsulClient::with_env(
            &ConsulConfig::default(),
            env_of(&[("CONSUL_CACERT", junk.as_str())]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains(junk.as_str()) && error.contains("CONSUL_CACERT"),
            "{error}"
        );
    }

    #[test]
    fn debug_output_redacts_the_token() {
        let secret = "5e3f9a1c-secret-token";
        let client = ConsulClient::with_env(
            &ConsulConfig::default(),
            env_of(&[("CONSUL_HTTP_TOKEN", secret)]),
        )
        .unwrap();
        let debug = format!("{client:?}");
        assert!(debug.contains("<redacted>"), "{debug}");
        assert!(!debug.contains(secret), "{debug}");
        assert!(!format!("{client:#?}").contains(secret));
        let with_password = ConsulConfig {
            address: "http://user:hunter2@127.0.0.1:8500".into(),
            ..Default::default()
        };
        let client = ConsulClient::with_env(&with_password, no_env).unwrap();
        assert!(!format!("{client:?}").contains("hunter2"));
    }

    #[tokio::test]
    async fn requests_carry_token_dc_index_wait_and_stale_but_not_passing() {
        let sim = Sim::start(&["dc1"]).await.unwrap();
        testutil::register(&sim, "dc1", "n1", "10.0.0.1", "web", "passing");
        let secret = "3c1d-token-under-test";
        let config = testutil::config(&sim, "dc1").await;
        let client =
            ConsulClient::with_env(&config, env_of(&[("CONSUL_HTTP_TOKEN", secret)])).unwrap();
        let (index, instances) = within(client.service_health("dc1", "web", 0, false))
            .await
            .unwrap();
        assert!(index > 0);
        assert_eq!(instances.len(), 1);
        assert_eq!(instances[0].lan.v4, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(instances[0].status(&[]), CheckStatus::Passing);
        // A blocking read at the current index waits; a change ends it.
        let blocked = client.service_health("dc1", "web", index, false);
        let flip = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(
                sim.set_check_status("dc1", Some("n1"), "service:n1", "critical"),
                1
            );
        };
        let (result, ()) = within(async { tokio::join!(blocked, flip) }).await;
        let (next, instances) = result.unwrap();
        assert!(next > index);
        assert_eq!(instances[0].status(&[]), CheckStatus::Critical);

        let health: Vec<_> = sim
            .requests("dc1")
            .into_iter()
            .filter(|r| r.path == "/v1/health/service/web")
            .collect();
        assert_eq!(health.len(), 2, "{health:?}");
        for request in &health {
            assert_eq!(request.header("x-consul-token"), Some(secret));
            assert_eq!(request.param("dc").as_deref(), Some("dc1"));
            assert!(request.param("stale").is_some(), "{request:?}");
            assert!(request.param("passing").is_none(), "{request:?}");
        }
        assert_eq!(health[0].param("index").as_deref(), Some("0"));
        assert_eq!(health[1].param("index"), Some(index.to_string()));
        assert_eq!(health[1].param("wait").as_deref(), Some("2s"));

        // Without `stale` in the configuration, no `stale` parameter.
        let strict = ConsulClient::with_env(
            &ConsulConfig {
                stale: false,
                ..config
            },
            no_env,
        )
        .unwrap();
        within(strict.catalog_services("dc1", 0)).await.unwrap();
        let last = sim.requests("dc1").pop().unwrap();
        assert_eq!(last.path, "/v1/catalog/services");
        assert!(
            last.param("stale").is_none() && last.header("x-consul-token").is_none(),
            "{last:?}"
        );
    }

    #[tokio::test]
    async fn agent_datacenter_list_and_catalog() {
        let sim = Sim::start(&["dc1", "dc2"]).await.unwrap();
        testutil::register(&sim, "dc2", "n1", "10.2.0.1", "loki", "passing");
        let client = ConsulClient::with_env(&testutil::config(&sim, "dc1").await, no_env).unwrap();
        assert_eq!(within(client.local_datacenter()).await.unwrap(), "dc1");
        assert_eq!(within(client.datacenters()).await.unwrap(), ["dc1", "dc2"]);
        let (index, names) = within(client.catalog_services("dc2", 0)).await.unwrap();
        assert!(index > 0);
        assert!(
            names.contains("loki") && names.contains("consul"),
            "{names:?}"
        );
        let (_, dc1_names) = within(client.catalog_services("dc1", 0)).await.unwrap();
        assert!(!dc1_names.contains("loki"), "{dc1_names:?}");
    }

    #[tokio::test]
    async fn errors_carry_status_and_body_and_timeouts_are_bounded() {
        let sim = Sim::start(&["dc1"]).await.unwrap();
        let config = ConsulConfig {
            timeout: Duration::from_millis(300),
            ..testutil::config(&sim, "dc1").await
        };
        let client = ConsulClient::with_env(&config, no_env).unwrap();
        sim.fail_next("dc1", 1, 403, Some("ACL not found"), None);
        let error = within(client.service_health("dc1", "web", 0, false))
            .await
            .unwrap_err();
        assert_eq!(error.status(), Some(403));
        assert!(!error.is_retryable());
        assert!(error.to_string().contains("ACL not found"), "{error}");
        let error = within(client.service_health("nowhere", "web", 0, true))
            .await
            .unwrap_err();
        assert_eq!(error.status(), Some(500));
        assert!(
            error.to_string().contains("No path to datacenter"),
            "{error}"
        );
        sim.hang("dc1", true);
        let started = Instant::now();
        let error = within(client.local_datacenter()).await.unwrap_err();
        assert!(matches!(error, ConsulError::Timeout { .. }), "{error}");
        assert!(error.is_retryable());
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        sim.hang("dc1", false);
        sim.stop_listener("dc1").await;
        let error = within(client.datacenters()).await.unwrap_err();
        assert!(matches!(error, ConsulError::Connect { .. }), "{error}");
    }

    #[tokio::test]
    async fn a_trickling_answer_times_out_within_the_bound() {
        // A server that sends its head at once, then a byte of its body
        // every 50 ms: the whole exchange is bounded, not each read.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut request = [0u8; 2048];
                    let _ = stream.read(&mut request).await;
                    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                                X-Consul-Index: 9\r\nContent-Length: 100000\r\n\r\n[";
                    let _ = stream.write_all(head.as_bytes()).await;
                    loop {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        if stream.write_all(b" ").await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let config = ConsulConfig {
            address: format!("http://{address}"),
            datacenter: "dc1".into(),
            timeout: Duration::from_millis(400),
            ..ConsulConfig::default()
        };
        let client = ConsulClient::with_env(&config, no_env).unwrap();
        let started = Instant::now();
        let error = within(client.service_health("dc1", "web", 0, false))
            .await
            .unwrap_err();
        let took = started.elapsed();
        assert!(matches!(error, ConsulError::Timeout { .. }), "{error}");
        assert!(error.to_string().contains(&address.to_string()), "{error}");
        assert!(
            took >= Duration::from_millis(400) && took < Duration::from_secs(2),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn direct_datacenter_addresses_come_first_then_the_agent() {
        let sim = Sim::start(&["dc1", "dc2"]).await.unwrap();
        testutil::register(&sim, "dc2", "n1", "10.2.0.1", "web", "passing");
        let dead = testutil::dead_url();
        let config = ConsulConfig {
            datacenters: vec![DatacenterAddresses {
                name: "dc2".into(),
                addresses: vec![dead.clone(), sim.url("dc2").await],
            }],
            ..testutil::config(&sim, "dc1").await
        };
        let client = ConsulClient::with_env(&config, no_env).unwrap();
        let (_, instances) = within(client.service_health("dc2", "web", 0, true))
            .await
            .unwrap();
        assert_eq!(instances.len(), 1);
        let health = |dc: &str| {
            sim.requests(dc)
                .into_iter()
                .filter(|r| r.path == "/v1/health/service/web")
                .collect::<Vec<_>>()
        };
        assert_eq!(health("dc2").len(), 1, "dc2's own address answered");
        assert!(health("dc1").is_empty(), "the agent was not needed");
        // The dead address now goes after the agent; dc1 has only the agent.
        let url = |u: &str| Url::parse(u).unwrap();
        let (live, dead) = (url(&sim.url("dc2").await), url(&dead));
        assert_eq!(
            client.route("dc2"),
            [
                Address::Direct(&live),
                Address::Agent,
                Address::Direct(&dead),
            ]
        );
        assert_eq!(client.route("dc1"), [Address::Agent]);

        // dc2's own servers unreachable: the local agent forwards with ?dc=.
        sim.stop_listener("dc2").await;
        let (_, instances) = within(client.service_health("dc2", "web", 0, true))
            .await
            .unwrap();
        assert_eq!(instances.len(), 1);
        let via_agent = health("dc1");
        assert_eq!(via_agent.len(), 1);
        assert_eq!(via_agent[0].param("dc").as_deref(), Some("dc2"));
        // Everything down: the agent's error is reported.
        sim.stop_listener("dc1").await;
        let error = within(client.service_health("dc2", "web", 0, true))
            .await
            .unwrap_err();
        assert!(error.to_string().contains(&sim.url("dc1").await), "{error}");
    }

    /// Runs `n` blocking reads of `svc` in dc1 at once (each waits the
    /// client's `wait`, as nothing changes) and returns their results.
    async fn blocking_reads(
        client: &Arc<ConsulClient>,
        n: usize,
        index: u64,
    ) -> Vec<Result<(u64, Vec<Instance>), ConsulError>> {
        let mut reads = tokio::task::JoinSet::new();
        for _ in 0..n {
            let client = Arc::clone(client);
            reads.spawn(async move { client.service_health("dc1", "svc", index, false).await });
        }
        let mut results = Vec::new();
        while let Some(result) = reads.join_next().await {
            results.push(result.expect("read task"));
        }
        results
    }

    /// One datacenter whose agent allows 4 connections from a client,
    /// with `svc` registered; a client config using at most 4, blocking
    /// for `wait`; and the index to block on.
    async fn limited_to_four(wait: Duration) -> (Sim, ConsulConfig, u64) {
        let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
        let sim = Sim::builder()
            .dc("dc1", any)
            .max_conns_per_client(4)
            .start()
            .await
            .unwrap();
        testutil::register(&sim, "dc1", "n1", "10.1.0.1", "svc", "passing");
        let index = sim.raft_index("dc1");
        let config = ConsulConfig {
            wait,
            max_connections: 4,
            ..testutil::config(&sim, "dc1").await
        };
        (sim, config, index)
    }

    #[tokio::test]
    async fn http1_blocking_reads_take_turns_within_consuls_connection_limit() {
        // The agent allows 4 connections from us; 12 watches block at once.
        let (sim, config, index) = limited_to_four(Duration::from_millis(500)).await;
        let client = Arc::new(ConsulClient::with_env(&config, no_env).unwrap());
        let start = Instant::now();
        let results = tokio::time::timeout(BOUND, blocking_reads(&client, 12, index))
            .await
            .unwrap();
        let failed: Vec<String> = results
            .iter()
            .filter_map(|r| r.as_ref().err().map(ToString::to_string))
            .collect();
        assert!(failed.is_empty(), "reads refused: {failed:?}");
        // Six turns of two (two of the four connections are kept for
        // other reads), each blocking for the 500 ms wait.
        assert!(
            start.elapsed() >= Duration::from_millis(2900),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(sim.refused_connections("dc1"), 0);

        // The same load past the limit is refused with 429, as Consul does.
        let greedy = Arc::new(
            ConsulClient::with_env(
                &ConsulConfig {
                    max_connections: 12,
                    ..config
                },
                no_env,
            )
            .unwrap(),
        );
        let results = tokio::time::timeout(BOUND, blocking_reads(&greedy, 12, index))
            .await
            .unwrap();
        let refused = results
            .iter()
            .filter(|r| {
                matches!(r, Err(ConsulError::Status { status: 429, .. }))
                    || matches!(r, Err(e) if e.is_transport())
            })
            .count();
        assert!(refused >= 8, "{results:?}");
        assert!(sim.refused_connections("dc1") >= 8);
    }

    #[tokio::test]
    async fn first_reads_never_wait_behind_blocking_reads() {
        let (sim, config, index) = limited_to_four(Duration::from_secs(5)).await;
        let client = Arc::new(ConsulClient::with_env(&config, no_env).unwrap());
        // Six watches block for 5 s: two hold connections, four queue.
        let waiting = tokio::spawn({
            let client = Arc::clone(&client);
            async move { blocking_reads(&client, 6, index).await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        // A new watch's first read and a catalog read still go at once.
        let start = Instant::now();
        let (_, instances) = within(client.service_health("dc1", "svc", 0, false))
            .await
            .unwrap();
        within(client.catalog_services("dc1", 0)).await.unwrap();
        assert_eq!(instances.len(), 1);
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
        waiting.abort();
        assert_eq!(sim.refused_connections("dc1"), 0);
    }

    #[tokio::test]
    async fn https_carries_240_blocking_reads_per_http2_connection() {
        let (sim, ca) = tls_sim(&["dc1"]).await;
        testutil::register(&sim, "dc1", "n1", "10.1.0.1", "svc", "passing");
        let index = sim.raft_index("dc1");
        let config = ConsulConfig {
            wait: Duration::from_millis(500),
            ca_file: ca.as_str().to_owned(),
            ..testutil::config(&sim, "dc1").await
        };
        assert!(config.address.starts_with("https://"), "{}", config.address);
        let client = Arc::new(ConsulClient::with_env(&config, no_env).unwrap());
        let results = tokio::time::timeout(BOUND, blocking_reads(&client, 500, index))
            .await
            .unwrap();
        let failed: Vec<String> = results
            .iter()
            .filter_map(|r| r.as_ref().err().map(ToString::to_string))
            .collect();
        assert!(
            failed.is_empty(),
            "{} failed, first: {:?}",
            failed.len(),
            failed.first()
        );
        assert_eq!(
            client.agent_connections(),
            3,
            "500 reads, 240 per connection"
        );
        let versions: HashSet<String> =
            sim.requests("dc1").into_iter().map(|r| r.version).collect();
        assert_eq!(versions, HashSet::from(["HTTP/2.0".to_owned()]));
        assert_eq!(sim.refused_connections("dc1"), 0);

        // A connection that closes is opened again on the next read.
        sim.stop_listener("dc1").await;
        let error = within(client.catalog_services("dc1", 0)).await.unwrap_err();
        assert!(error.is_transport(), "{error}");
        sim.start_listener("dc1").await.unwrap();
        within(client.catalog_services("dc1", 0)).await.unwrap();

        // A certificate from another CA is refused, naming the address.
        let (_other, other_ca) = tls_sim(&["dc1"]).await;
        let wrong = ConsulClient::with_env(
            &ConsulConfig {
                ca_file: other_ca.as_str().to_owned(),
                ..config.clone()
            },
            no_env,
        )
        .unwrap();
        let error = within(wrong.catalog_services("dc1", 0)).await.unwrap_err();
        let text = error.to_string();
        assert!(
            matches!(error, ConsulError::Connect { .. })
                && text.contains(&config.address)
                && text.contains("certificate"),
            "{text}"
        );

        // With http2 off, HTTPS is HTTP/1.1.
        let http1 = ConsulClient::with_env(
            &ConsulConfig {
                http2: false,
                ..config
            },
            no_env,
        )
        .unwrap();
        sim.clear_requests(None);
        within(http1.catalog_services("dc1", 0)).await.unwrap();
        assert_eq!(sim.requests("dc1").pop().unwrap().version, "HTTP/1.1");
        assert_eq!(http1.agent_connections(), 1);
    }

    #[tokio::test]
    async fn registers_and_deregisters_in_the_agent_over_http2_and_http1() {
        let (sim, ca) = tls_sim(&["dc1"]).await;
        let secret = "9a7e-register-token";
        let config = ConsulConfig {
            ca_file: ca.as_str().to_owned(),
            ..testutil::config(&sim, "dc1").await
        };
        for http2 in [true, false] {
            let client = ConsulClient::with_env(
                &ConsulConfig {
                    http2,
                    ..config.clone()
                },
                env_of(&[("CONSUL_HTTP_TOKEN", secret)]),
            )
            .unwrap();
            sim.clear_requests(None);
            assert!(!within(client.agent_has_service("dns-1")).await.unwrap());
            let body = Bytes::from_static(
                br#"{"ID":"dns-1","Name":"dns","Tags":["metrics"],"Port":8653}"#,
            );
            within(client.register_service(&body)).await.unwrap();
            assert!(within(client.agent_has_service("dns-1")).await.unwrap());
            let listed = sim.service_health("dc1", "dns");
            assert_eq!(listed.len(), 1, "{listed:?}");
            assert_eq!(listed[0].service.port, 8653);
            assert_eq!(listed[0].service.tags, ["metrics"]);
            within(client.deregister_service("dns-1")).await.unwrap();
            assert!(sim.service_health("dc1", "dns").is_empty());
            // Consul's 404 for an ID it does not know, and its 400s, are
            // errors with the agent's text.
            let gone = within(client.deregister_service("dns-1"))
                .await
                .unwrap_err();
            assert!(
                matches!(&gone, ConsulError::Status { status: 404, body, .. } if body.contains("Unknown service ID")),
                "{gone}"
            );
            let bad = within(client.register_service(&Bytes::from_static(b"{}")))
                .await
                .unwrap_err();
            assert!(
                matches!(&bad, ConsulError::Status { status: 400, body, .. } if body.contains("Missing service name")),
                "{bad}"
            );
            let writes: Vec<_> = sim
                .requests("dc1")
                .into_iter()
                .filter(|r| r.path.starts_with("/v1/agent/service/"))
                .collect();
            assert_eq!(writes.len(), 6, "{writes:?}");
            let version = if http2 { "HTTP/2.0" } else { "HTTP/1.1" };
            for request in &writes {
                assert_eq!(request.version, version, "{request:?}");
                assert_eq!(request.header("x-consul-token"), Some(secret));
            }
            assert_eq!(writes[1].method, "PUT", "{:?}", writes[1]);
        }
    }

    #[tokio::test]
    async fn a_client_certificate_is_presented_to_agents_that_verify_incoming() {
        let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
        let sim = Sim::builder()
            .dc("dc1", any)
            .tls(true)
            .verify_incoming(true)
            .start()
            .await
            .unwrap();
        let ca = temp_file(&sim.ca_pem().unwrap());
        let (cert_pem, key_pem) = sim.client_cert_pem().unwrap();
        let (cert, key) = (temp_file(&cert_pem), temp_file(&key_pem));
        let base = ConsulConfig {
            ca_file: ca.as_str().to_owned(),
            ..testutil::config(&sim, "dc1").await
        };
        for http2 in [true, false] {
            // Without a certificate the agent ends the handshake.
            let bare = ConsulClient::with_env(
                &ConsulConfig {
                    http2,
                    ..base.clone()
                },
                no_env,
            )
            .unwrap();
            let refused = within(bare.catalog_services("dc1", 0)).await.unwrap_err();
            assert!(refused.is_transport(), "{refused}");
            // From the configuration, and from Consul's environment names.
            let configured = ConsulClient::with_env(
                &ConsulConfig {
                    http2,
                    cert_file: cert.as_str().to_owned(),
                    key_file: key.as_str().to_owned(),
                    ..base.clone()
                },
                no_env,
            )
            .unwrap();
            within(configured.catalog_services("dc1", 0)).await.unwrap();
            let from_env = ConsulClient::with_env(
                &ConsulConfig {
                    http2,
                    ..base.clone()
                },
                env_of(&[
                    ("CONSUL_CLIENT_CERT", cert.as_str()),
                    ("CONSUL_CLIENT_KEY", key.as_str()),
                ]),
            )
            .unwrap();
            within(from_env.catalog_services("dc1", 0)).await.unwrap();
        }
        // Files that are not what they should be are named.
        let junk = temp_file("not a key");
        let error = ConsulClient::with_env(
            &ConsulConfig {
                cert_file: cert.as_str().to_owned(),
                key_file: junk.as_str().to_owned(),
                ..base.clone()
            },
            no_env,
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains(junk.as_str()) && error.contains("consul.key_file"),
            "{error}"
        );
        let error = ConsulClient::with_env(
            &ConsulConfig {
                cert_file: "/nonexistent/client.pem".into(),
                key_file: key.as_str().to_owned(),
                ..base
            },
            no_env,
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("/nonexistent/client.pem") && error.contains("consul.cert_file"),
            "{error}"
        );
        assert!(!error.contains(&key_pem), "{error}");
    }

    #[tokio::test]
    async fn a_read_sent_at_once_on_http2_fails_over_like_any_other() {
        let (sim, ca) = tls_sim(&["dc1", "dc2"]).await;
        testutil::register(&sim, "dc1", "n1", "10.1.0.1", "web", "passing");
        testutil::register(&sim, "dc2", "n1", "10.2.0.1", "web", "passing");
        let dc2 = sim.url("dc2").await;
        let config = ConsulConfig {
            wait: Duration::from_millis(300),
            timeout: Duration::from_millis(700),
            ca_file: ca.as_str().to_owned(),
            datacenters: vec![DatacenterAddresses {
                name: "dc2".into(),
                addresses: vec![dc2.clone()],
            }],
            ..testutil::config(&sim, "dc1").await
        };
        let client = Arc::new(ConsulClient::with_env(&config, no_env).unwrap());
        let health = |dc: &str| {
            sim.requests(dc)
                .into_iter()
                .filter(|r| r.path == "/v1/health/service/web")
                .collect::<Vec<_>>()
        };

        // The first read opens dc2's connection; the blocking one goes
        // out at once on it and sees the change.
        let (index, _) = within(client.service_health("dc2", "web", 0, true))
            .await
            .unwrap();
        assert_eq!(client.sent_at_once(), 0, "no connection was open yet");
        let blocked = tokio::spawn({
            let client = Arc::clone(&client);
            async move { client.service_health("dc2", "web", index, true).await }
        });
        testutil::eventually("the blocking read reached dc2", BOUND, || {
            health("dc2").len() == 2
        })
        .await;
        let matched = sim.set_check_status("dc2", Some("n1"), "service:n1", "critical");
        assert_eq!(matched, 1);
        let (moved, instances) = within(blocked).await.unwrap().unwrap();
        assert!(moved > index);
        assert_eq!(instances[0].checks[1].status, CheckStatus::Critical);
        assert_eq!(client.sent_at_once(), 1);

        // dc2 answers 500: the agent is asked next (?dc=dc2), and dc2
        // stays first (a status is not a network failure).
        sim.fail_next("dc2", 1, 500, None, Some("/v1/health"));
        let (_, instances) = within(client.service_health("dc2", "web", moved, true))
            .await
            .unwrap();
        assert_eq!(instances.len(), 1);
        assert_eq!(client.sent_at_once(), 2);
        let via_agent = health("dc1");
        assert_eq!(via_agent.len(), 1, "{via_agent:?}");
        assert_eq!(via_agent[0].param("dc").as_deref(), Some("dc2"));
        let live = Url::parse(&dc2).unwrap();
        assert_eq!(
            client.route("dc2"),
            [Address::Direct(&live), Address::Agent]
        );

        // dc2's connection drops under a read in flight: sent again along
        // the whole route, where dc2 now refuses connections and the agent
        // answers; dc2 then goes last.
        let before = health("dc2").len();
        let blocked = tokio::spawn({
            let client = Arc::clone(&client);
            async move { client.service_health("dc2", "web", moved, true).await }
        });
        testutil::eventually("the third blocking read reached dc2", BOUND, || {
            health("dc2").len() > before
        })
        .await;
        assert_eq!(client.sent_at_once(), 3);
        sim.stop_listener("dc2").await;
        let (_, instances) = within(blocked).await.unwrap().unwrap();
        assert_eq!(instances.len(), 1);
        assert_eq!(health("dc1").len(), 2);
        assert_eq!(
            client.route("dc2"),
            [Address::Agent, Address::Direct(&live)]
        );

        // The agent holds its answer past the deadline: a timeout naming
        // the address, within the blocking read's bound.
        let (index, _) = within(client.service_health("dc1", "web", 0, false))
            .await
            .unwrap();
        sim.hang("dc1", true);
        let at_once = client.sent_at_once();
        let started = Instant::now();
        let error = within(client.service_health("dc1", "web", index, false))
            .await
            .unwrap_err();
        let took = started.elapsed();
        assert_eq!(client.sent_at_once(), at_once + 1);
        assert!(
            matches!(error, ConsulError::Timeout { .. })
                && error.to_string().contains(&config.address),
            "{error}"
        );
        assert!(
            took >= client.blocking_timeout() && took < client.blocking_timeout() * 2,
            "{took:?}"
        );
        sim.hang("dc1", false);
    }

    #[test]
    fn a_read_in_flight_is_small() {
        // Thousands of watch tasks each hold one read; its future's size
        // is their memory. With the handshake inlined it was 8.8 KB; 2.2 KB
        // before the short-lived parts (waiting for a place or the lock,
        // reading the body) were boxed and the layers thinned; 976 bytes
        // before a read was sent at once on an open HTTP/2 connection,
        // everything else boxed; 272 bytes now.
        let config = ConsulConfig::default();
        let client = ConsulClient::with_env(&config, no_env).unwrap();
        let read = client.service_health("dc1", "svc", 7, false);
        let size = size_of_val(&read);
        println!("a service_health future: {size} bytes");
        assert!(size <= 320, "{size} bytes");
    }
}
