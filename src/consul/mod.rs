//! Consul's HTTP API: the client and the blocking watches that keep the
//! [`HealthView`](crate::health::HealthView) current.
//!
//! # Layout
//!
//! - [`ConsulClient`] (`client`): one HTTP request per call: the agent's
//!   datacenter, the datacenter list, one blocking read of a service's
//!   health or of a datacenter's catalog. It owns the token, TLS, timeouts
//!   and the choice of address (direct addresses of a datacenter first,
//!   then the local agent with `?dc=`).
//! - `api`: Consul's JSON answers and their conversion into
//!   [`Instance`](crate::health::Instance)s (reference §3, §6.4).
//! - `blocking`: the pure parts of a watch loop: the index rules of
//!   reference §2, the error backoff and the request rate limit.
//! - [`Watcher`] (`watcher`): the tasks running one blocking loop per
//!   (datacenter, service), one per datacenter catalog, and the periodic
//!   datacenter-list refresh, all stopped by one cancellation token.

mod api;
mod blocking;
mod client;
mod connection;
#[cfg(test)]
mod testutil;
mod transport;
mod watcher;

use std::path::PathBuf;
use std::time::Duration;

pub use blocking::{Backoff, BlockingIndex, IndexMove, RateLimit};
pub use client::{ConsulClient, format_wait};
pub use watcher::Watcher;

/// Why a Consul request (or building the client) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsulError {
    /// An address (from the configuration or `CONSUL_HTTP_ADDR`) is not a
    /// usable URL.
    #[error("{origin}: {address:?} is not an http:// or https:// URL ({reason})")]
    Address {
        /// Where the address came from, e.g. `consul.address`.
        origin: String,
        /// The address as given.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The token (its file, or `CONSUL_HTTP_TOKEN`) cannot be used.
    #[error("{origin}: {reason}")]
    Token {
        /// Where it came from, e.g. `token file /etc/consul.token
        /// (consul.token_file)`.
        origin: String,
        /// What is wrong (never the token itself).
        reason: String,
    },
    /// The CA file cannot be used.
    #[error("CA file {}: {reason}", path.display())]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The client certificate or its key cannot be used.
    #[error("client certificate {}: {reason}", path.display())]
    CertFile {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong (never the key itself).
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the Consul HTTP client: {0}")]
    Client(String),
    /// No connection could be made.
    #[error("{url}: cannot connect: {reason}")]
    Connect {
        /// The request URL (it never holds the token).
        url: String,
        /// The cause chain.
        reason: String,
    },
    /// No complete answer came within the request's timeout.
    #[error("{url}: no answer within {}", humantime::format_duration(*after))]
    Timeout {
        /// The request URL.
        url: String,
        /// The timeout that ran out.
        after: Duration,
    },
    /// The connection failed after it was made (reset, bad HTTP, …).
    #[error("{url}: {reason}")]
    Transport {
        /// The request URL.
        url: String,
        /// The cause chain.
        reason: String,
    },
    /// Consul answered with an error status; its body is plain text
    /// (reference §1).
    #[error("{url}: HTTP {status}: {body}")]
    Status {
        /// The request URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The body, shortened to [`MAX_ERROR_BODY`] bytes.
        body: String,
    },
    /// The answer is not the JSON expected.
    #[error("{url}: cannot decode the answer: {reason}")]
    Decode {
        /// The request URL.
        url: String,
        /// The decoder's message.
        reason: String,
    },
}

/// The most bytes of an error body kept in [`ConsulError::Status`].
pub const MAX_ERROR_BODY: usize = 512;

impl ConsulError {
    /// Whether the same request may succeed later without a configuration
    /// change: network failures, timeouts, 429 and 5xx answers. A watch
    /// retries every error anyway; this tells start-up code (the agent's
    /// datacenter) whether waiting is worthwhile.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Connect { .. } | Self::Timeout { .. } | Self::Transport { .. } => true,
            Self::Status { status, .. } => *status == 429 || *status >= 500,
            Self::Address { .. }
            | Self::Token { .. }
            | Self::CaFile { .. }
            | Self::CertFile { .. }
            | Self::Client(_)
            | Self::Decode { .. } => false,
        }
    }

    /// Whether the request never got an HTTP answer (the address is worth
    /// avoiding for a while).
    pub fn is_transport(&self) -> bool {
        matches!(
            self,
            Self::Connect { .. } | Self::Timeout { .. } | Self::Transport { .. }
        )
    }

    /// The HTTP status, for errors that carry one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_errors_are_network_429_and_5xx() {
        let status = |status| ConsulError::Status {
            url: "u".into(),
            status,
            body: String::new(),
        };
        assert!(status(500).is_retryable());
        assert!(status(503).is_retryable());
        assert!(status(429).is_retryable());
        assert!(!status(403).is_retryable());
        assert!(!status(404).is_retryable());
        assert_eq!(status(404).status(), Some(404));
        let timeout = ConsulError::Timeout {
            url: "u".into(),
            after: Duration::from_millis(1500),
        };
        assert!(timeout.is_retryable() && timeout.is_transport());
        assert_eq!(timeout.to_string(), "u: no answer within 1s 500ms");
        assert!(
            ConsulError::Connect {
                url: "u".into(),
                reason: "refused".into()
            }
            .is_retryable()
        );
        assert!(
            !ConsulError::Decode {
                url: "u".into(),
                reason: "x".into()
            }
            .is_retryable()
        );
        let file = ConsulError::Token {
            origin: "token file /etc/t".into(),
            reason: "cannot read".into(),
        };
        assert_eq!(file.to_string(), "token file /etc/t: cannot read");
        assert!(!file.is_retryable());
    }
}
