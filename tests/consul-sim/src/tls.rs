//! HTTPS for the listeners: a certificate authority made at start, one
//! server certificate it signs, and the rustls configuration a Consul
//! agent's HTTPS listener amounts to.
//!
//! Consul (`agent/agent.go` `listenHTTP`) wraps an HTTPS listener with
//! `tls.NewListener` and `setupHTTPS` calls `http2.ConfigureServer`, so
//! clients negotiate HTTP/2 by ALPN (`h2`, else `http/1.1`). The
//! certificates follow what `consul tls ca create` and `consul tls cert
//! create -server` make: an EC P-256 CA, and a server certificate for
//! `server.<dc>.consul`, `localhost` and `127.0.0.1`, usable for server and
//! client authentication.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::ServerConfig;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

/// ALPN protocols offered, in preference order: what
/// `http2.ConfigureServer` leaves in `TLSConfig.NextProtos`.
pub(crate) const ALPN_H2: &[u8] = b"h2";
const ALPN_HTTP11: &[u8] = b"http/1.1";

/// `limits.https_handshake_timeout`: how long a client has to complete the
/// TLS handshake (Consul's default, 5 s).
pub(crate) const HTTPS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// One simulator's certificate authority and the acceptor every HTTPS
/// listener uses.
#[derive(Clone)]
pub(crate) struct Tls {
    /// The CA certificate, PEM.
    pub(crate) ca_pem: String,
    /// Accepts TLS connections with the server certificate.
    pub(crate) acceptor: TlsAcceptor,
    /// A client certificate the CA signed and its key (PEM), as
    /// `consul tls cert create -client` makes: for clients of listeners
    /// that verify incoming connections.
    pub(crate) client_pem: (String, String),
}

impl Tls {
    /// Makes a CA and a server certificate it signs for `server.<dc>.consul`
    /// of each of `dcs`, `localhost`, `127.0.0.1`, `::1` and `ips`
    /// (unspecified ones left out), and the rustls server configuration
    /// (ring provider, TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`).
    ///
    /// With `verify_incoming` (Consul's `tls.https.verify_incoming`), a
    /// client must present a certificate the CA signed, or the handshake
    /// fails.
    pub(crate) fn generate(
        dcs: &[String],
        ips: &[IpAddr],
        verify_incoming: bool,
    ) -> Result<Self, String> {
        let fail = |e: rcgen::Error| format!("cannot make the simulator's certificates: {e}");

        let mut ca_params = CertificateParams::new(Vec::new()).map_err(fail)?;
        // Named like `consul tls ca create`'s, with a number of its own so
        // no two simulators' CAs can be mistaken for each other.
        ca_params.distinguished_name.push(
            DnType::CommonName,
            format!("consul-sim Agent CA {}", fastrand::u64(..)),
        );
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().map_err(fail)?;
        let ca_cert = ca_params.self_signed(&ca_key).map_err(fail)?;
        let issuer = Issuer::new(ca_params, ca_key);

        // Datacenter names that cannot be a DNS label get no server name.
        let label = |dc: &&String| {
            !dc.is_empty() && dc.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        };
        let server_names: Vec<String> = dcs
            .iter()
            .filter(label)
            .map(|dc| format!("server.{dc}.consul"))
            .collect();
        let mut names = server_names.clone();
        names.push("localhost".into());
        let mut addrs: Vec<IpAddr> =
            vec![[127, 0, 0, 1].into(), std::net::Ipv6Addr::LOCALHOST.into()];
        for ip in ips {
            if !ip.is_unspecified() && !addrs.contains(ip) {
                addrs.push(*ip);
            }
        }
        names.extend(addrs.iter().map(IpAddr::to_string));
        let mut params = CertificateParams::new(names).map_err(fail)?;
        if let Some(name) = server_names.first() {
            params
                .distinguished_name
                .push(DnType::CommonName, name.as_str());
        }
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().map_err(fail)?;
        let cert = params.signed_by(&key, &issuer).map_err(fail)?;

        // `client.<dc>.consul`, client authentication only.
        let client_name = dcs.iter().find(label).map_or_else(
            || "client.consul".to_owned(),
            |dc| format!("client.{dc}.consul"),
        );
        let mut client_params = CertificateParams::new(vec![client_name.clone()]).map_err(fail)?;
        client_params
            .distinguished_name
            .push(DnType::CommonName, client_name);
        client_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_key = KeyPair::generate().map_err(fail)?;
        let client_cert = client_params
            .signed_by(&client_key, &issuer)
            .map_err(fail)?;

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("cannot configure TLS: {e}"))?;
        let builder = if verify_incoming {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(ca_cert.der().clone())
                .map_err(|e| format!("cannot trust the simulator's CA: {e}"))?;
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| format!("cannot verify client certificates: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .map_err(|e| format!("cannot configure TLS: {e}"))?;
        config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
        Ok(Self {
            ca_pem: ca_cert.pem(),
            acceptor: TlsAcceptor::from(Arc::new(config)),
            client_pem: (client_cert.pem(), client_key.serialize_pem()),
        })
    }
}
