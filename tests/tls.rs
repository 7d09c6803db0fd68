//! Pools over TLS (feature `tls`): the test backend behind a rustls server (TLS 1.3, session
//! tickets on), with a CA and certificates generated at test time by rcgen.
#![cfg(feature = "tls")]

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum_tcp_pool::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use axum_tcp_pool::rustls::server::WebPkiClientVerifier;
use axum_tcp_pool::rustls::{self, RootCertStore, ServerConfig};
use axum_tcp_pool::{BackendStream, DiscardReason, TcpPool, TcpPoolError, TlsConfig};
use http::StatusCode;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use testkit::{app, assert_no_leak, read_line, serve, wait_pool, Backend, HttpClient};

/// A certificate and its key.
struct Issued {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Issued {
    fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }
    fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.serialize_der().into())
    }
}

/// A certificate authority with its own name (two CAs must not share a subject).
fn ca(name: &str) -> Issued {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("self-signed CA");
    Issued { cert, key }
}

/// A certificate for `names` (DNS names or IP addresses) signed by `ca`.
fn issue(ca: &Issued, names: &[&str]) -> Issued {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names).expect("params");
    params.distinguished_name.push(DnType::CommonName, "test");
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &ca.cert, &ca.key).expect("signed");
    Issued { cert, key }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS 1.3 server config for `server`; with `client_ca`, a client certificate signed by
/// it is required. rustls sends two session tickets after each handshake by default.
fn server_config(server: &Issued, client_ca: Option<&Issued>) -> Arc<ServerConfig> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3");
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            roots.add(ca.der()).expect("client CA");
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(vec![server.der()], server.key_der())
        .expect("server cert");
    assert_eq!(
        config.send_tls13_tickets, 2,
        "the server sends session tickets"
    );
    Arc::new(config)
}

/// A CA, a TLS backend with a certificate from it for 127.0.0.1 and localhost, and the PEM
/// of the CA for the pool.
async fn tls_backend() -> (Backend, Issued) {
    let ca = ca("test CA");
    let server = issue(&ca, &["localhost", "127.0.0.1"]);
    let backend = Backend::start_tls(server_config(&server, None)).await;
    (backend, ca)
}

fn tls_pool(backend: &Backend, tls: TlsConfig) -> TcpPool {
    TcpPool::builder(backend.addr_string())
        .max_size(4)
        .tls(tls)
        .build()
        .expect("valid pool config")
}

/// [`tls_backend`] and a [`tls_pool`] on it that trusts its CA: the usual setup.
async fn tls_backend_and_pool() -> (Backend, TcpPool) {
    let (backend, ca) = tls_backend().await;
    let pool = tls_pool(&backend, TlsConfig::new().ca_pem(ca.cert.pem()));
    (backend, pool)
}

/// A rustls client config of the test's own making that trusts `ca`, for
/// [`TlsConfig::from_rustls`].
fn own_rustls_config(ca: &Issued) -> Arc<rustls::ClientConfig> {
    let mut store = RootCertStore::empty();
    store.add(ca.der()).expect("root");
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(store)
        .with_no_client_auth();
    Arc::new(config)
}

/// Collects what is logged (at `warn` and above) while the guard lives, on this thread: the
/// tests run on a current-thread runtime, so the pool's background connects log here too.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("logs")).into_owned()
    }
}

impl io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().expect("logs").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn tls_session(conn: &axum_tcp_pool::TcpConnection) -> &rustls::ClientConnection {
    match conn.get_ref() {
        BackendStream::Tls(tls) => tls.get_ref().1,
        other => panic!("expected a TLS stream, got {other:?}"),
    }
}

#[tokio::test]
async fn requests_round_trip_and_a_fresh_connection_with_session_tickets_is_reused() {
    let (backend, pool) = tls_backend_and_pool().await;
    // Open the connection, and let the server finish its side of the handshake: once it has,
    // its session tickets (TLS records nobody asked for) sit in the connection's socket.
    let conn = pool.get().await.expect("connection");
    backend
        .wait_for("server handshake done, tickets sent", |s| s.handshakes == 1)
        .await;
    drop(conn);
    let client = HttpClient::new(serve(app::eager(&pool)).await);
    for text in ["one", "two", "three"] {
        let reply = client.get(&format!("/echo/{text}")).await;
        assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, text));
    }
    assert_eq!(backend.seen().accepts, 1, "one connection, reused");
    assert_eq!(pool.state().discards.total(), 0, "{:?}", pool.state());
    let conn = pool.get().await.expect("connection");
    let session = tls_session(&conn);
    assert_eq!(
        session.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(
        session.tls13_tickets_received(),
        2,
        "the tickets were there"
    );
    assert!(conn.get_ref().tcp().is_some(), "the TCP socket under TLS");
}

#[tokio::test]
async fn plaintext_left_unread_inside_the_tls_session_closes_the_connection() {
    let (backend, pool) = tls_backend_and_pool().await;
    let client = HttpClient::new(serve(app::eager(&pool)).await);
    // Both reply lines come in one TLS record: the handler reads the first, and the second
    // stays decrypted in the session's buffer, with nothing left on the socket.
    assert_eq!(client.get("/twice/x").await.body, "x");
    wait_pool(&pool, "discard counted", |s| {
        s.discards.get(DiscardReason::UnreadBytes) == 1
    })
    .await;
    backend.wait_for("connection closed", |s| s.open == 0).await;
    assert_eq!(client.get("/noread/y").await.status, StatusCode::OK);
    wait_pool(&pool, "discard counted", |s| {
        s.discards.get(DiscardReason::ReplyNotRead) == 1
    })
    .await;
    assert_eq!(client.get("/echo/z").await.body, "z");
    assert_eq!(backend.seen().accepts, 3);
}

#[tokio::test]
async fn unread_bytes_that_arrive_while_idle_are_caught_at_checkout() {
    let (backend, ca) = tls_backend().await;
    let pool = tls_pool(
        &backend,
        TlsConfig::new()
            .ca_pem(ca.cert.pem())
            .server_name("localhost"),
    );
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = pool.get().await.expect("connection");
    assert!(conn.get_ref().tls().is_some(), "a TLS connection");
    // The head of a reply, read; its tail comes only once released, after the connection went
    // back: nothing is unread at return, so it goes back clean, and the tail arrives while idle.
    conn.write_all(b"PARTIAL head tail\n").await.expect("write");
    let mut head = [0u8; 4];
    conn.read_exact(&mut head).await.expect("read head");
    assert_eq!(&head, b"head");
    backend.wait_for("reply held", |s| s.holding == 1).await;
    drop(conn);
    wait_pool(&pool, "returned clean", |s| {
        s.idle == 1 && s.discards.total() == 0
    })
    .await;
    backend.release();
    backend
        .wait_for("tail written while idle", |s| s.replies == 1)
        .await;
    let mut conn = pool.get().await.expect("connection");
    conn.write_all(b"ECHO two\n").await.expect("write");
    assert_eq!(
        read_line(&mut conn).await.expect("read"),
        "two",
        "never the stray reply"
    );
    assert_eq!(backend.seen().accepts, 2);
}

#[tokio::test]
async fn a_connection_the_backend_closed_while_idle_is_replaced() {
    let (backend, pool) = tls_backend_and_pool().await;
    let client = HttpClient::new(serve(app::eager(&pool)).await);
    assert_eq!(client.get("/echo/a").await.body, "a");
    backend.close_all().await;
    assert_eq!(client.get("/echo/b").await.body, "b");
    assert_eq!(backend.seen().accepts, 2);
}

#[tokio::test]
async fn backend_down_is_a_502_without_detail() {
    let (backend, pool) = tls_backend_and_pool().await;
    let client = HttpClient::new(serve(app::eager(&pool)).await);
    assert_eq!(client.get("/echo/up").await.body, "up");
    backend.stop().await;
    let reply = client.get("/echo/down").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_no_leak(&reply.body, &backend);
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_a_502_and_a_warn_log_with_the_reason() {
    let (logs, _guard) = Logs::capture();
    let (backend, _ca) = tls_backend().await;
    let other = ca("another CA");
    let pool = tls_pool(&backend, TlsConfig::new().ca_pem(other.cert.pem()));
    let client = HttpClient::new(serve(app::eager(&pool)).await);
    let reply = client.get("/echo/x").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_no_leak(&reply.body, &backend);
    let logs = logs.text();
    let line = logs
        .lines()
        .find(|l| l.contains("connect to backend failed"))
        .unwrap_or_else(|| panic!("no connect failure logged:\n{logs}"));
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("TLS handshake"), "{line}");
    assert!(line.contains("UnknownIssuer"), "{line}");
    assert_eq!(pool.state().connections, 0);
    backend
        .wait_for("server saw the handshake fail", |s| {
            s.handshake_failures == 1
        })
        .await;
}

#[tokio::test]
async fn the_server_name_is_checked() {
    let (logs, _guard) = Logs::capture();
    let (backend, ca) = tls_backend().await;
    // The address is 127.0.0.1 (in the certificate); a name that is not in it is refused.
    let pool = tls_pool(
        &backend,
        TlsConfig::new()
            .ca_pem(ca.cert.pem())
            .server_name("elsewhere.example"),
    );
    let err = pool.get().await.expect_err("wrong name");
    assert!(
        matches!(err, TcpPoolError::BackendUnreachable(_)),
        "{err:?}"
    );
    assert!(
        logs.text().contains("not valid for name"),
        "{}",
        logs.text()
    );
    let pool = tls_pool(
        &backend,
        TlsConfig::new()
            .ca_pem(ca.cert.pem())
            .server_name("localhost"),
    );
    drop(pool.get().await.expect("localhost is in the certificate"));
}

#[tokio::test]
async fn a_client_certificate_required_by_the_server_works_with_one_and_fails_without() {
    let ca = ca("test CA");
    let server = issue(&ca, &["127.0.0.1"]);
    let client_ca = self::ca("client CA");
    let client_cert = issue(&client_ca, &["client.test"]);
    let backend = Backend::start_tls(server_config(&server, Some(&client_ca))).await;

    let with = tls_pool(
        &backend,
        TlsConfig::new()
            .ca_pem(ca.cert.pem())
            .client_cert_pem(client_cert.cert.pem(), client_cert.key.serialize_pem()),
    );
    let client = HttpClient::new(serve(app::eager(&with)).await);
    let reply = client.get("/echo/mtls").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::OK, "mtls")
    );
    assert_eq!(backend.seen().handshakes, 1);

    // In TLS 1.3 the server checks the client's certificate after the client has finished
    // its handshake, so the refusal (an alert) reaches the client at the first read or the
    // checkout health check: a 502 either way.
    let without = tls_pool(&backend, TlsConfig::new().ca_pem(ca.cert.pem()));
    let client = HttpClient::new(serve(app::eager(&without)).await);
    let reply = client.get("/echo/nocert").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_no_leak(&reply.body, &backend);
    assert!(backend.seen().handshake_failures >= 1);
    assert_eq!(
        backend.seen().handshakes,
        1,
        "no session without a certificate"
    );
}

#[tokio::test]
async fn connect_timeout_bounds_the_handshake() {
    // Accepts TCP connections and never answers the TLS handshake.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let ca = ca("test CA");
    let pool = TcpPool::builder(addr.to_string())
        .connect_timeout(Duration::from_millis(100))
        .checkout_timeout(Duration::from_secs(15))
        .tls(TlsConfig::new().ca_pem(ca.cert.pem()))
        .build()
        .expect("pool");
    match pool.get().await {
        Err(TcpPoolError::BackendUnreachable(e)) => {
            assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}")
        }
        other => panic!("expected a connect timeout, got {other:?}"),
    }
    silent.abort();
}

#[tokio::test]
async fn a_health_check_probe_talks_plaintext_over_tls() {
    let (backend, ca) = tls_backend().await;
    let pool = TcpPool::builder(backend.addr_string())
        .tls(TlsConfig::new().ca_pem(ca.cert.pem()))
        .health_check(async |stream: &mut BackendStream| {
            use tokio::io::AsyncWriteExt;
            stream.write_all(b"PING\n").await?;
            match read_line(stream).await?.as_str() {
                "PONG" => Ok(()),
                _ => Err(io::Error::new(io::ErrorKind::InvalidData, "no PONG")),
            }
        })
        .build()
        .expect("pool");
    let client = HttpClient::new(serve(app::eager(&pool)).await);
    assert_eq!(client.get("/echo/a").await.body, "a");
    assert_eq!(client.get("/echo/b").await.body, "b");
    let seen = backend.seen();
    assert_eq!(
        (seen.accepts, seen.lines),
        (1, 4),
        "two probes, two requests"
    );
}

#[tokio::test]
async fn unusable_tls_settings_are_config_errors_at_build() {
    let ca = ca("test CA");
    let leaf = issue(&ca, &["localhost"]);
    let bad = |tls: TlsConfig, addr: &str, says: &str| match TcpPool::builder(addr).tls(tls).build()
    {
        Err(TcpPoolError::Config(msg)) => assert!(msg.contains(says), "{msg:?} lacks {says:?}"),
        other => panic!("expected a Config error saying {says:?}, got {other:?}"),
    };
    let addr = "127.0.0.1:6380";
    bad(TlsConfig::new(), addr, "root certificates");
    bad(
        TlsConfig::new().ca_pem("not a certificate"),
        addr,
        "ca_pem: no certificate found",
    );
    bad(
        TlsConfig::new().ca_pem("-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n"),
        addr,
        "ca_pem: invalid PEM",
    );
    bad(
        TlsConfig::new().ca_pem(leaf.key.serialize_pem()),
        addr,
        "ca_pem: no certificate found",
    );
    let roots = || TlsConfig::new().ca_pem(ca.cert.pem());
    bad(
        roots().client_cert_pem(leaf.cert.pem(), "no key here"),
        addr,
        "no usable private key",
    );
    bad(
        roots().client_cert_pem("no cert here", leaf.key.serialize_pem()),
        addr,
        "client_cert_pem (certificate chain): no certificate found",
    );
    let other_key = KeyPair::generate().expect("key");
    bad(
        roots().client_cert_pem(leaf.cert.pem(), other_key.serialize_pem()),
        addr,
        "key belongs to the certificate",
    );
    bad(roots().server_name("not a name!"), addr, "server name");
    bad(roots(), "unix:/run/backend.sock", "over TCP only");
    // The same settings, right, build.
    let tls = roots().client_cert_pem(leaf.cert.pem(), leaf.key.serialize_pem());
    assert!(TcpPool::builder(addr).tls(tls).build().is_ok());
    // The escape hatch takes a rustls config as it is.
    let tls = TlsConfig::from_rustls(own_rustls_config(&ca));
    assert!(TcpPool::builder(addr).tls(tls).build().is_ok());
}

#[tokio::test]
async fn a_rustls_config_of_your_own_is_used_as_it_is() {
    let (backend, ca) = tls_backend().await;
    let pool = tls_pool(&backend, TlsConfig::from_rustls(own_rustls_config(&ca)));
    let client = HttpClient::new(serve(app::eager(&pool)).await);
    assert_eq!(client.get("/echo/own").await.body, "own");
}

#[cfg(feature = "tls-native-roots")]
#[tokio::test]
async fn native_roots_load_the_system_store_or_say_why_not() {
    let result = TcpPool::builder("127.0.0.1:6380")
        .tls(TlsConfig::new().native_roots())
        .build();
    // Debian's ca-certificates bundle: where it is, the roots load; where it is not (and no
    // other store is found), build says so instead of failing every handshake later.
    if std::path::Path::new("/etc/ssl/certs/ca-certificates.crt").exists() {
        assert!(result.is_ok(), "{result:?}");
    } else {
        match result {
            Err(TcpPoolError::Config(msg)) => assert!(msg.contains("native_roots"), "{msg}"),
            other => panic!("expected a Config error, got {other:?}"),
        }
    }
}
