//! The admin HTTP endpoint: `/health`, `/ready`, `/metrics`,
//! `/v1/explain` (why a name gets the answer it gets) and `/v1/events`
//! (Server-Sent Events: failovers and datacenter state changes).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use hickory_proto::rr::RecordType;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::health::{Data, HealthLookup, HealthView};
use crate::metrics::Metrics;
use crate::monitor::{Event, Events};
use crate::resolve::{DatacenterTrace, Outcome, PolicyTrace, Resolver};

/// How often an idle event stream gets a comment, so proxies and clients
/// see it alive.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// How many of the things not synced yet `/ready` names.
const READY_SHOWS: usize = 10;

/// What the admin endpoint reports on.
pub struct AdminState {
    /// The health view. The watches that must have synced before `/ready`
    /// says 200 are its required pairs ([`HealthView::set_required`]): the
    /// pinned ones (named by the configuration or prepared queries).
    pub view: Arc<HealthView>,
    /// The prepared-query listing, when served: `/ready` waits for its
    /// first read.
    pub prepared: Option<PreparedListing>,
    /// The metrics.
    pub metrics: Metrics,
    /// The resolver in use, for `/v1/explain`.
    pub resolver: Arc<ArcSwap<Resolver>>,
    /// The event stream, for `/v1/events`.
    pub events: Arc<Events>,
    /// Ends event streams on shutdown.
    pub shutdown: CancellationToken,
}

/// The prepared queries' channel.
pub type PreparedListing =
    tokio::sync::watch::Receiver<Option<Arc<Vec<crate::prepared::Definition>>>>;

impl AdminState {
    /// At most `limit` of what has not synced yet, as readable names, and
    /// how many there are in all. A readiness probe polls this often, and
    /// at start-up thousands of pinned watches may be pending: only the
    /// first few are looked at.
    pub fn pending(&self, limit: usize) -> (Vec<String>, usize) {
        if self.view.local_datacenter().is_empty() {
            return (
                vec!["Consul (the local datacenter is not known yet)".to_owned()],
                1,
            );
        }
        let prepared: Vec<String> = self
            .prepared
            .iter()
            .filter(|listing| listing.borrow().is_none())
            .map(|_| "the prepared queries".to_owned())
            .collect();
        let (services, services_total) = self.view.pending_required_first(limit);
        let datacenters = self.view.datacenters();
        let catalogs: Vec<String> = datacenters
            .iter()
            .filter(|dc| self.view.catalog(dc) == Data::Pending)
            .map(|dc| format!("catalog of {dc}"))
            .collect();
        let total = prepared.len() + services_total + catalogs.len();
        let names = prepared
            .into_iter()
            .chain(
                services
                    .into_iter()
                    .map(|k| format!("service {} in {}", k.service, k.datacenter)),
            )
            .chain(catalogs)
            .take(limit)
            .collect();
        (names, total)
    }

    fn route(&self, request: &Request<Incoming>) -> Response<AdminBody> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
        }
        match request.uri().path() {
            "/health" => text(StatusCode::OK, "ok\n".into()),
            "/ready" => {
                let (pending, total) = self.pending(READY_SHOWS);
                if total == 0 {
                    text(StatusCode::OK, "ready\n".into())
                } else {
                    let more = total.saturating_sub(pending.len());
                    let more = if more > 0 {
                        format!(" and {more} more")
                    } else {
                        String::new()
                    };
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("waiting for: {}{more}\n", pending.join(", ")),
                    )
                }
            }
            "/metrics" => {
                self.metrics.observe(&self.view.observation());
                Response::builder()
                    .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                    .body(AdminBody::full(self.metrics.render()))
                    .unwrap_or_default()
            }
            "/v1/explain" => self.explain(request.uri().query().unwrap_or("")),
            "/v1/events" => self.events(),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; try /health, /ready, /metrics, /v1/explain?name=NAME&type=A or /v1/events\n"
                    .into(),
            ),
        }
    }

    /// `/v1/explain?name=NAME&type=TYPE`: resolves the name as a query
    /// would, without starting watches, and says how the answer was chosen.
    fn explain(&self, query: &str) -> Response<AdminBody> {
        let mut name = None;
        let mut qtype = "A".to_owned();
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            match &*key {
                "name" => name = Some(value.into_owned()),
                "type" => qtype = value.into_owned(),
                _ => {}
            }
        }
        let Some(name) = name.filter(|n| !n.trim().is_empty()) else {
            return json_error(
                StatusCode::BAD_REQUEST,
                "missing name: /v1/explain?name=grafana.query.consul&type=A".to_owned(),
            );
        };
        let Ok(rtype) = qtype.to_ascii_uppercase().parse::<RecordType>() else {
            return json_error(
                StatusCode::BAD_REQUEST,
                format!("type {qtype:?} is not a DNS record type (e.g. A, AAAA, SRV)"),
            );
        };
        let resolver = self.resolver.load();
        let fqdn = match resolver.explain_name(&name) {
            Ok(n) => n,
            Err(message) => return json_error(StatusCode::BAD_REQUEST, message),
        };
        let (outcome, trace) =
            crate::dns::resolve_traced(&resolver, &*self.view, fqdn.clone(), rtype);
        let mut explanation = Explanation {
            name: fqdn.to_string(),
            r#type: rtype.to_string(),
            local_datacenter: self.view.local_datacenter().to_string(),
            rcode: None,
            kind: None,
            chosen: trace.chosen,
            reason: trace.reason,
            detail: trace.detail,
            definition: trace.definition,
            service: trace.service,
            policy: trace.policy,
            datacenters: trace.datacenters,
            records: Vec::new(),
            stale: false,
            extended_error: None,
        };
        match outcome {
            Outcome::Answer(answer) => {
                explanation.rcode = Some(crate::dns::rcode_label(answer.rcode).to_owned());
                explanation.kind = Some(answer.kind.label());
                explanation.stale = answer.stale;
                explanation.extended_error = answer.extended_error.map(|(_, t)| t);
                explanation.records = answer
                    .answers
                    .iter()
                    .chain(&answer.authorities)
                    .chain(&answer.additionals)
                    .map(ToString::to_string)
                    .collect();
                if explanation.reason.is_empty() {
                    explanation.reason = "not_a_query".to_owned();
                    explanation.detail = format!(
                        "{} is not a query or service name: it is answered without failover",
                        explanation.name
                    );
                }
            }
            Outcome::Pending(needs) => {
                explanation.reason = "pending".to_owned();
                explanation.detail = format!(
                    "no data yet for {}: a query would start its watch and wait up to dns.first_answer_wait",
                    needs.describe()
                );
            }
            Outcome::Forward(kind) => {
                explanation.kind = Some(kind.label());
                explanation.reason = "forwarded".to_owned();
                explanation.detail = "not answered here: relayed to dns.upstream".to_owned();
            }
        }
        json(StatusCode::OK, &explanation)
    }

    /// `/v1/events`: the current state, then each change as it happens.
    fn events(&self) -> Response<AdminBody> {
        let (current, receiver) = self.events.subscribe();
        let (sender, body) = mpsc::channel(64);
        tokio::spawn(stream_events(
            current,
            receiver,
            sender,
            self.shutdown.clone(),
        ));
        Response::builder()
            .header("content-type", "text/event-stream")
            .header("cache-control", "no-cache")
            .body(AdminBody::Stream(body))
            .unwrap_or_default()
    }
}

/// What `/v1/explain` answers.
#[derive(Debug, Serialize)]
struct Explanation {
    name: String,
    r#type: String,
    local_datacenter: String,
    rcode: Option<String>,
    kind: Option<&'static str>,
    chosen: Option<String>,
    reason: String,
    detail: String,
    definition: Option<String>,
    service: Option<String>,
    policy: Option<PolicyTrace>,
    datacenters: Vec<DatacenterTrace>,
    records: Vec<String>,
    stale: bool,
    extended_error: Option<String>,
}

/// One SSE message.
fn sse(id: u64, event: &Event) -> Bytes {
    let data = serde_json::to_string(event).unwrap_or_default();
    Bytes::from(format!(
        "id: {id}\nevent: {}\ndata: {data}\n\n",
        event.name()
    ))
}

/// Feeds one `/v1/events` client until it goes away or shutdown.
async fn stream_events(
    current: Vec<Event>,
    mut receiver: broadcast::Receiver<Arc<Event>>,
    sender: mpsc::Sender<Bytes>,
    shutdown: CancellationToken,
) {
    let mut id = 0u64;
    for event in &current {
        id += 1;
        if sender.send(sse(id, event)).await.is_err() {
            return;
        }
    }
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => return,
            () = sender.closed() => return,
            received = receiver.recv() => match received {
                Ok(event) => {
                    id += 1;
                    sse(id, &event)
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => Bytes::from(format!(
                    ": {missed} events were dropped: this client reads too slowly\n\n"
                )),
                Err(broadcast::error::RecvError::Closed) => return,
            },
            () = tokio::time::sleep(KEEP_ALIVE) => Bytes::from_static(b": keep-alive\n\n"),
        };
        if sender.send(message).await.is_err() {
            return;
        }
    }
}

/// A response body: whole, or an event stream.
#[derive(Debug)]
pub enum AdminBody {
    /// All of it at once.
    Full(Option<Bytes>),
    /// Chunks as they come; ends when the sender goes.
    Stream(mpsc::Receiver<Bytes>),
}

impl AdminBody {
    fn full(text: String) -> Self {
        Self::Full(Some(Bytes::from(text)))
    }
}

impl Default for AdminBody {
    fn default() -> Self {
        Self::Full(None)
    }
}

impl Body for AdminBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Self::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Self::Stream(receiver) => receiver
                .poll_recv(cx)
                .map(|b| b.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Self::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Self::Full(None) => SizeHint::with_exact(0),
            Self::Stream(_) => SizeHint::default(),
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<AdminBody> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(AdminBody::full(body))
        .unwrap_or_default()
}

fn json(status: StatusCode, value: &impl Serialize) -> Response<AdminBody> {
    let mut body = serde_json::to_string_pretty(value).unwrap_or_default();
    body.push('\n');
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(AdminBody::full(body))
        .unwrap_or_default()
}

fn json_error(status: StatusCode, message: String) -> Response<AdminBody> {
    json(status, &serde_json::json!({ "error": message }))
}

/// Serves the admin endpoint on an already bound listener until shutdown.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, shutdown: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let state = Arc::clone(&state);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let response = state.route(&request);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                () = shutdown.cancelled() => {}
                _ = connection => {}
            }
        });
    }
}

/// Binds the admin address, naming it on failure.
pub async fn bind(address: SocketAddr) -> Result<TcpListener, std::io::Error> {
    TcpListener::bind(address).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen for admin HTTP on {address}: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::health::{ServiceHealth, ServiceKey};

    /// A view of dc1 with its catalog synced (and nothing else), and an
    /// admin state on it without prepared queries.
    fn synced_local_catalog() -> (Arc<HealthView>, AdminState) {
        let view = Arc::new(HealthView::new("dc1"));
        let state = AdminState {
            view: Arc::clone(&view),
            prepared: None,
            metrics: Metrics::new(),
            resolver: Arc::new(ArcSwap::from_pointee(Resolver::new(
                &crate::config::Config::default(),
            ))),
            events: Arc::new(Events::new()),
            shutdown: CancellationToken::new(),
        };
        view.apply_catalog("dc1", HashSet::new());
        (view, state)
    }

    #[test]
    fn ready_waits_for_the_required_pairs_in_order_then_for_nothing() {
        let (view, state) = synced_local_catalog();
        assert!(state.pending(usize::MAX).0.is_empty(), "nothing required");
        let required: HashSet<ServiceKey> = [("dc2", "web"), ("dc1", "web"), ("dc1", "api")]
            .iter()
            .map(|(dc, s)| ServiceKey::new(dc, s))
            .collect();
        view.set_required(&required);
        assert_eq!(
            state.pending(usize::MAX).0,
            [
                "service api in dc1",
                "service web in dc1",
                "service web in dc2"
            ]
        );
        view.apply_service(&ServiceKey::new("dc1", "web"), ServiceHealth::default());
        view.apply_service(&ServiceKey::new("dc1", "other"), ServiceHealth::default());
        assert_eq!(
            state.pending(usize::MAX).0,
            ["service api in dc1", "service web in dc2"]
        );
        view.apply_service(&ServiceKey::new("dc1", "api"), ServiceHealth::default());
        view.apply_service(&ServiceKey::new("dc2", "web"), ServiceHealth::default());
        assert!(state.pending(usize::MAX).0.is_empty());
        view.set_datacenters(vec!["dc1".into(), "dc2".into()]);
        assert_eq!(state.pending(usize::MAX).0, ["catalog of dc2"]);
    }

    #[test]
    fn ready_names_the_first_few_of_many_pending_and_counts_them_all() {
        let (view, state) = synced_local_catalog();
        let required: HashSet<ServiceKey> = (0..30_000)
            .map(|i| ServiceKey::new("dc1", &format!("svc{i:05}")))
            .collect();
        view.set_required(&required);
        let (first, total) = state.pending(3);
        assert_eq!(
            first,
            [
                "service svc00000 in dc1",
                "service svc00001 in dc1",
                "service svc00002 in dc1"
            ]
        );
        assert_eq!(total, 30_000);
        view.apply_service(
            &ServiceKey::new("dc1", "svc00001"),
            ServiceHealth::default(),
        );
        assert_eq!(state.pending(2).0[1], "service svc00002 in dc1");
        assert_eq!(state.pending(2).1, 29_999);
        // Other things pending count too, named after the services.
        view.set_datacenters(vec!["dc1".into(), "dc2".into()]);
        let (first, total) = state.pending(usize::MAX);
        assert_eq!((first.len(), total), (30_000, 30_000));
        assert_eq!(first[29_999], "catalog of dc2");
    }
}
