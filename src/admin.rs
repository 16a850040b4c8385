//! The admin HTTP endpoint: `/health`, `/ready` and `/metrics`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::health::{Data, HealthLookup, HealthView, ServiceKey};
use crate::metrics::Metrics;

/// What the admin endpoint reports on.
pub struct AdminState {
    /// The health view.
    pub view: Arc<HealthView>,
    /// The watches that must have synced before `/ready` says 200: the
    /// pinned ones (named by the configuration or prepared queries).
    pub required_watches: Box<dyn Fn() -> Vec<ServiceKey> + Send + Sync>,
    /// The prepared-query listing, when served: `/ready` waits for its
    /// first read.
    pub prepared: Option<PreparedListing>,
    /// The metrics.
    pub metrics: Metrics,
}

/// The prepared queries' channel.
pub type PreparedListing =
    tokio::sync::watch::Receiver<Option<Arc<Vec<crate::prepared::Definition>>>>;

impl AdminState {
    /// What has not synced yet, as readable names.
    pub fn pending(&self) -> Vec<String> {
        if self.view.local_datacenter().is_empty() {
            return vec!["Consul (the local datacenter is not known yet)".to_owned()];
        }
        let mut required = (self.required_watches)();
        required.sort();
        let prepared = self
            .prepared
            .iter()
            .filter(|listing| listing.borrow().is_none())
            .map(|_| "the prepared queries".to_owned());
        let services = required
            .into_iter()
            .filter(|k| self.view.service(&k.datacenter, &k.service) == Data::Pending)
            .map(|k| format!("service {} in {}", k.service, k.datacenter));
        let datacenters = self.view.datacenters();
        let catalogs = datacenters
            .iter()
            .filter(|dc| self.view.catalog(dc) == Data::Pending)
            .map(|dc| format!("catalog of {dc}"));
        prepared.chain(services).chain(catalogs).collect()
    }

    fn route(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        let text = |status: StatusCode, body: String| {
            Response::builder()
                .status(status)
                .header("content-type", "text/plain; charset=utf-8")
                .body(Full::new(Bytes::from(body)))
                .unwrap_or_default()
        };
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
        }
        match request.uri().path() {
            "/health" => text(StatusCode::OK, "ok\n".into()),
            "/ready" => {
                let pending = self.pending();
                if pending.is_empty() {
                    text(StatusCode::OK, "ready\n".into())
                } else {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("waiting for: {}\n", pending.join(", ")),
                    )
                }
            }
            "/metrics" => Response::builder()
                .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                .body(Full::new(Bytes::from(self.metrics.render())))
                .unwrap_or_default(),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; try /health, /ready or /metrics\n".into(),
            ),
        }
    }
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
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
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
