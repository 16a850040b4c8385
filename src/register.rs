//! `[register]`: the resolver's own service in the local Consul agent, with
//! an HTTP check on the admin listener's `/health`, so Prometheus finds
//! every resolver's `/metrics` through `consul_sd_configs` (the `metrics`
//! tag) and Consul shows which ones are alive.
//!
//! The registration is sent once Consul answers, checked every
//! `check_interval` and sent again if the agent lost it (an agent started
//! afresh, or an operator's deregistration), and removed on a clean stop.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::config::{RegisterConfig, format_duration};
use crate::consul::{Backoff, ConsulClient, ConsulError};

/// The first retry after a failed registration; the delay doubles up to
/// `check_interval`.
const RETRY_FIRST: Duration = Duration::from_millis(500);

/// How long a stopping resolver waits for the agent to take its
/// registration back: a local agent answers in milliseconds, and a hung
/// one must not hold the stop (its check then goes critical instead).
const DEREGISTER_WITHIN: Duration = Duration::from_secs(1);

/// What is sent to the agent.
#[derive(Clone, Debug)]
pub struct Registration {
    /// The service ID.
    pub id: String,
    /// The `PUT /v1/agent/service/register` body.
    pub body: Bytes,
    /// How often the registration is checked.
    pub interval: Duration,
}

impl Registration {
    /// The registration of a resolver whose admin listener is bound at
    /// `admin`.
    pub fn new(config: &RegisterConfig, admin: SocketAddr) -> Self {
        let body = serde_json::to_vec(&body(config, admin)).unwrap_or_default();
        Self {
            id: config.service_id().to_owned(),
            body: Bytes::from(body),
            interval: config.check_interval,
        }
    }
}

/// The registration body: the service on the admin port, its address
/// (`address`, else the admin listener's IP if it is a specific one, else
/// none, so Consul uses the node's), and an HTTP check of `/health`
/// reaching the admin listener from the agent on the same host.
pub fn body(config: &RegisterConfig, admin: SocketAddr) -> Value {
    let address = if config.address.is_empty() {
        let ip = admin.ip();
        if ip.is_unspecified() || ip.is_loopback() {
            String::new()
        } else {
            ip.to_string()
        }
    } else {
        config.address.clone()
    };
    let check_ip = match admin.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let mut check = json!({
        "Name": format!("{} /health", config.name),
        "HTTP": format!("http://{}/health", SocketAddr::new(check_ip, admin.port())),
        "Method": "GET",
        "Interval": format_duration(config.check_interval),
        "Timeout": format_duration(config.check_timeout),
    });
    if !config.deregister_critical_after.is_zero() {
        check["DeregisterCriticalServiceAfter"] =
            Value::String(format_duration(config.deregister_critical_after));
    }
    let mut meta = config.meta.clone();
    meta.entry("version".to_owned())
        .or_insert_with(|| crate::VERSION.to_owned());
    let mut service = json!({
        "ID": config.service_id(),
        "Name": config.name,
        "Tags": config.tags,
        "Port": admin.port(),
        "Meta": meta,
        "Check": check,
    });
    if !address.is_empty() {
        service["Address"] = Value::String(address);
    }
    service
}

/// Keeps `registration` in the local agent until `shutdown`, then removes
/// it. Failures are logged once per streak; the DNS side never waits for
/// any of this.
pub async fn run(
    client: Arc<ConsulClient>,
    registration: Registration,
    shutdown: CancellationToken,
) {
    let id = registration.id.as_str();
    let mut registered = false;
    let mut failing = false;
    let mut backoff = Backoff::new(RETRY_FIRST, registration.interval);
    loop {
        let outcome = if registered {
            match client.agent_has_service(id).await {
                Ok(true) => Ok(()),
                Ok(false) => {
                    tracing::warn!(
                        service_id = id,
                        "the local Consul agent no longer has this resolver's service; registering it again"
                    );
                    registered = false;
                    continue;
                }
                Err(error) => Err(error),
            }
        } else {
            match client.register_service(&registration.body).await {
                Ok(()) => {
                    registered = true;
                    tracing::info!(service_id = id, "registered in the local Consul agent");
                    Ok(())
                }
                Err(error) => Err(error),
            }
        };
        let delay = match outcome {
            Ok(()) => {
                if std::mem::take(&mut failing) && registered {
                    tracing::info!(service_id = id, "the local Consul agent answers again");
                }
                backoff.reset();
                registration.interval
            }
            Err(error) => {
                if !failing {
                    log_failure(id, registered, &error);
                }
                failing = true;
                if registered {
                    registration.interval
                } else {
                    backoff.next_delay().max(RETRY_FIRST)
                }
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(delay) => {}
        }
    }
    if !registered {
        return;
    }
    let gone = tokio::time::timeout(DEREGISTER_WITHIN, client.deregister_service(id)).await;
    match gone {
        Ok(Ok(())) => tracing::info!(service_id = id, "deregistered from the local Consul agent"),
        // Gone already: what was wanted.
        Ok(Err(ConsulError::Status { status: 404, .. })) => {}
        Ok(Err(error)) => tracing::warn!(
            service_id = id,
            %error,
            "cannot deregister from the local Consul agent; its check will go critical"
        ),
        Err(_) => tracing::warn!(
            service_id = id,
            "the local Consul agent did not answer the deregistration within {DEREGISTER_WITHIN:?}; its check will go critical"
        ),
    }
}

/// The first failure of a streak, at the level it deserves: a refusal
/// (400, 403) will not mend itself.
fn log_failure(id: &str, registered: bool, error: &ConsulError) {
    let what = if registered {
        "cannot check this resolver's registration in the local Consul agent; retrying"
    } else {
        "cannot register in the local Consul agent; retrying"
    };
    match error {
        ConsulError::Status { status, .. } if (400..500).contains(status) && *status != 429 => {
            tracing::error!(service_id = id, %error, "{what}");
        }
        _ => tracing::warn!(service_id = id, %error, "{what}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admin(text: &str) -> SocketAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn the_default_registration_is_the_metrics_service_on_the_admin_port() {
        let body = body(&RegisterConfig::default(), admin("127.0.0.1:8653"));
        assert_eq!(body["ID"], "consul-failover-dns");
        assert_eq!(body["Name"], "consul-failover-dns");
        assert_eq!(body["Tags"], json!(["metrics"]));
        assert_eq!(body["Port"], 8653);
        assert_eq!(body["Meta"]["version"], crate::VERSION);
        // Loopback: the node's address is the one others can reach.
        assert!(body.get("Address").is_none(), "{body}");
        let check = &body["Check"];
        assert_eq!(check["HTTP"], "http://127.0.0.1:8653/health");
        assert_eq!(check["Interval"], "10s");
        assert_eq!(check["Timeout"], "5s");
        assert!(check.get("DeregisterCriticalServiceAfter").is_none());
    }

    #[test]
    fn the_address_follows_the_admin_listener_unless_given() {
        let config = RegisterConfig {
            id: "cfd-host1".into(),
            deregister_critical_after: Duration::from_secs(600),
            ..RegisterConfig::default()
        };
        let wildcard = body(&config, admin("0.0.0.0:9000"));
        assert!(wildcard.get("Address").is_none());
        assert_eq!(wildcard["ID"], "cfd-host1");
        assert_eq!(wildcard["Check"]["HTTP"], "http://127.0.0.1:9000/health");
        assert_eq!(wildcard["Check"]["DeregisterCriticalServiceAfter"], "10m");
        let v6 = body(&config, admin("[::]:9000"));
        assert_eq!(v6["Check"]["HTTP"], "http://[::1]:9000/health");
        let specific = body(&config, admin("10.1.2.3:8653"));
        assert_eq!(specific["Address"], "10.1.2.3");
        assert_eq!(specific["Check"]["HTTP"], "http://10.1.2.3:8653/health");
        let given = RegisterConfig {
            address: "metrics.host1.example".into(),
            ..config
        };
        assert_eq!(
            body(&given, admin("10.1.2.3:8653"))["Address"],
            "metrics.host1.example"
        );
    }
}
