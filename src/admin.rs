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

use crate::health::{Data, HealthLookup, HealthView};
use crate::metrics::Metrics;

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
