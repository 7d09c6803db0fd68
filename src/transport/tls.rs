//! [`TlsConfig`]: connecting to the backend over TLS (feature `tls`), with rustls and its
//! `ring` crypto provider.

use std::fmt;
use std::io;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use crate::error::TcpPoolError;
use crate::transport::address::Address;

/// How a pool connects to its backend over TLS: set with
/// [`TcpPoolBuilder::tls`](crate::TcpPoolBuilder::tls). Available with the `tls` feature.
///
/// - **Server name**: the name the backend's certificate must be valid for, and sent in SNI.
///   It defaults to the host of the pool's address (`"cache.internal"` for
///   `"cache.internal:6380"`, the IP address for `"10.0.0.7:6380"`); set it with
///   [`server_name`](Self::server_name) when connecting by IP to a certificate issued for a
///   name.
/// - **Root certificates**: at least one source is required: a custom CA in PEM
///   ([`ca_pem`](Self::ca_pem), may be called several times), and/or the operating system's
///   roots (`native_roots`, feature `tls-native-roots`).
/// - **Client certificate** (mutual TLS), optional: [`client_cert_pem`](Self::client_cert_pem).
/// - **Anything else** (ALPN, protocol versions, a custom verifier): build a rustls
///   [`ClientConfig`] yourself and pass it to [`from_rustls`](Self::from_rustls).
///
/// Nothing is parsed until [`TcpPoolBuilder::build`](crate::TcpPoolBuilder::build) (or
/// `connect`), which returns [`TcpPoolError::Config`] saying what to fix for a PEM without a
/// certificate, an unreadable key, an invalid server name, no root certificate, or a TLS
/// setting on a Unix socket address.
///
/// A handshake that fails (the server's certificate is not signed by a trusted root, does
/// not match the server name, the server refuses the protocol) is a failed connect attempt:
/// [`TcpPoolError::BackendUnreachable`], answered `502`, and a `warn` log that carries the
/// reason (e.g. `invalid peer certificate: UnknownIssuer`). The handshake counts against
/// `connect_timeout`, together with the TCP connect.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let ca = rcgen::generate_simple_self_signed(vec!["cache.internal".into()])?;
/// # let (ca_pem, cert_pem, key_pem) = (ca.cert.pem(), ca.cert.pem(), ca.key_pair.serialize_pem());
/// use axum_tcp_pool::{TcpPool, TlsConfig};
///
/// // ca_pem: e.g. std::fs::read("/etc/backend/ca.pem")?
/// let tls = TlsConfig::new()
///     .ca_pem(ca_pem)
///     .client_cert_pem(cert_pem, key_pem); // only if the backend asks for one
/// let pool = TcpPool::builder("cache.internal:6380").tls(tls).build()?;
/// # Ok(()) }
/// ```
///
/// A wrong PEM is reported by `build`:
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use axum_tcp_pool::{TcpPool, TcpPoolError, TlsConfig};
///
/// let err = TcpPool::builder("cache.internal:6380")
///     .tls(TlsConfig::new().ca_pem("not a certificate"))
///     .build()
///     .unwrap_err();
/// assert!(matches!(err, TcpPoolError::Config(_)));
/// assert!(err.to_string().contains("ca_pem"));
/// # }
/// ```
#[derive(Clone, Default)]
pub struct TlsConfig {
    server_name: Option<String>,
    ca_pems: Vec<Vec<u8>>,
    #[cfg(feature = "tls-native-roots")]
    native_roots: bool,
    client_cert: Option<(Vec<u8>, Vec<u8>)>,
    rustls: Option<Arc<ClientConfig>>,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("TlsConfig");
        d.field("server_name", &self.server_name)
            .field("ca_pems", &self.ca_pems.len());
        #[cfg(feature = "tls-native-roots")]
        d.field("native_roots", &self.native_roots);
        // Never the key.
        d.field("client_cert", &self.client_cert.is_some())
            .field("rustls", &self.rustls.is_some())
            .finish()
    }
}

impl TlsConfig {
    /// An empty configuration: add root certificates with [`ca_pem`](Self::ca_pem) (or
    /// `native_roots`) before building the pool.
    ///
    /// ```
    /// let tls = axum_tcp_pool::TlsConfig::new();
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Uses a rustls client configuration as it is: its roots, client certificate, protocol
    /// versions, ALPN protocols and crypto provider. [`server_name`](Self::server_name) still
    /// applies; the other settings of this type are ignored.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use axum_tcp_pool::rustls::{self, ClientConfig, RootCertStore};
    ///
    /// let provider = Arc::new(rustls::crypto::ring::default_provider());
    /// let mut config = ClientConfig::builder_with_provider(provider)
    ///     .with_safe_default_protocol_versions()
    ///     .expect("ring supports the default versions")
    ///     .with_root_certificates(RootCertStore::empty()) // add yours
    ///     .with_no_client_auth();
    /// config.alpn_protocols = vec![b"my-protocol".to_vec()];
    /// let tls = axum_tcp_pool::TlsConfig::from_rustls(Arc::new(config));
    /// ```
    pub fn from_rustls(config: Arc<ClientConfig>) -> Self {
        TlsConfig {
            rustls: Some(config),
            ..Self::default()
        }
    }

    /// The name the server's certificate must be valid for (a DNS name or an IP address),
    /// also sent as SNI. Defaults to the host of the pool's address.
    ///
    /// ```
    /// let tls = axum_tcp_pool::TlsConfig::new().server_name("cache.internal");
    /// ```
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Trusts the certificates in this PEM text (one or more `BEGIN CERTIFICATE` sections),
    /// typically the CA that signed the backend's certificate. Can be called several times.
    ///
    /// ```no_run
    /// # fn f() -> std::io::Result<()> {
    /// let tls = axum_tcp_pool::TlsConfig::new().ca_pem(std::fs::read("/etc/backend/ca.pem")?);
    /// # Ok(()) }
    /// ```
    pub fn ca_pem(mut self, pem: impl AsRef<[u8]>) -> Self {
        self.ca_pems.push(pem.as_ref().to_vec());
        self
    }

    /// Also trusts the operating system's root certificates (loaded once, by `build`).
    /// Available with the `tls-native-roots` feature.
    ///
    /// ```
    /// let tls = axum_tcp_pool::TlsConfig::new().native_roots();
    /// ```
    #[cfg(feature = "tls-native-roots")]
    pub fn native_roots(mut self) -> Self {
        self.native_roots = true;
        self
    }

    /// Presents this client certificate (mutual TLS): `cert_chain_pem` holds the certificate,
    /// then any intermediates, in PEM; `key_pem` its private key in PEM (PKCS#8, PKCS#1 or
    /// SEC1).
    ///
    /// ```no_run
    /// # fn f() -> std::io::Result<()> {
    /// let tls = axum_tcp_pool::TlsConfig::new()
    ///     .ca_pem(std::fs::read("ca.pem")?)
    ///     .client_cert_pem(std::fs::read("client.pem")?, std::fs::read("client.key")?);
    /// # Ok(()) }
    /// ```
    pub fn client_cert_pem(
        mut self,
        cert_chain_pem: impl AsRef<[u8]>,
        key_pem: impl AsRef<[u8]>,
    ) -> Self {
        self.client_cert = Some((cert_chain_pem.as_ref().to_vec(), key_pem.as_ref().to_vec()));
        self
    }

    /// Parses everything and makes the handshake for `address`.
    pub(crate) fn handshake(&self, address: &Address) -> Result<Handshake, TcpPoolError> {
        let name =
            match (&self.server_name, address) {
                (_, Address::Unix(_)) => return Err(TcpPoolError::config(
                    "TLS is supported over TCP only: remove tls() or use a \"host:port\" address",
                )),
                (Some(name), _) => name.as_str(),
                (None, address) => address.host().unwrap_or_default(),
            };
        let server_name = ServerName::try_from(name.to_string()).map_err(|_| {
            TcpPoolError::config(format!(
                "TLS server name {name:?} is not a valid DNS name or IP address: set TlsConfig::server_name"
            ))
        })?;
        let config = match &self.rustls {
            Some(config) => config.clone(),
            None => Arc::new(self.client_config()?),
        };
        Ok(Handshake {
            connector: TlsConnector::from(config),
            server_name,
        })
    }

    fn client_config(&self) -> Result<ClientConfig, TcpPoolError> {
        let roots = self.roots()?;
        let builder = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| TcpPoolError::config(format!("TLS: {e}")))?
            .with_root_certificates(roots);
        let Some((chain_pem, key_pem)) = &self.client_cert else {
            return Ok(builder.with_no_client_auth());
        };
        let chain = certs(chain_pem, "client_cert_pem (certificate chain)")?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
            TcpPoolError::config(format!(
                "client_cert_pem: no usable private key in the key PEM ({e}): expected a PKCS#8, PKCS#1 or SEC1 key (\"BEGIN PRIVATE KEY\")"
            ))
        })?;
        builder.with_client_auth_cert(chain, key).map_err(|e| {
            TcpPoolError::config(format!(
                "client_cert_pem: the certificate and key cannot be used ({e}): check that the key belongs to the certificate"
            ))
        })
    }

    fn roots(&self) -> Result<RootCertStore, TcpPoolError> {
        let mut roots = RootCertStore::empty();
        for pem in &self.ca_pems {
            for cert in certs(pem, "ca_pem")? {
                roots.add(cert).map_err(|e| {
                    TcpPoolError::config(format!(
                        "ca_pem: a certificate cannot be used as a root ({e})"
                    ))
                })?;
            }
        }
        #[cfg(feature = "tls-native-roots")]
        if self.native_roots {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(TcpPoolError::config(format!(
                    "native_roots: no usable root certificate found on this system ({} errors{}): install the CA certificates package or use ca_pem",
                    found.errors.len(),
                    found.errors.first().map(|e| format!(", first: {e}")).unwrap_or_default()
                )));
            }
        }
        if roots.is_empty() {
            return Err(TcpPoolError::config(
                "TLS needs root certificates to verify the backend: add TlsConfig::ca_pem (or native_roots with the tls-native-roots feature)",
            ));
        }
        Ok(roots)
    }
}

/// Every certificate in `pem`; an error naming `what` if there is none or the PEM is broken.
fn certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, TcpPoolError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TcpPoolError::config(format!("{what}: invalid PEM ({e})")))?;
    if certs.is_empty() {
        return Err(TcpPoolError::config(format!(
            "{what}: no certificate found: expected PEM text with \"-----BEGIN CERTIFICATE-----\" sections"
        )));
    }
    Ok(certs)
}

/// A parsed [`TlsConfig`]: the handshake each connect does.
#[derive(Clone)]
pub(crate) struct Handshake {
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl fmt::Debug for Handshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handshake")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl Handshake {
    /// The TLS handshake over a connected socket. The error says that it was the handshake
    /// that failed, and why (rustls' reason).
    pub(crate) async fn connect(
        &self,
        tcp: TcpStream,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        self.connector
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "TLS handshake with {:?} failed: {e}",
                        self.server_name.to_str()
                    ),
                )
            })
    }
}
