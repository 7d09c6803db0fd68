//! One HTTP API in front of two backends: one on a Unix domain socket, one behind TLS.
//!
//! What it shows:
//!
//! - `TcpPool::builder("unix:/path/to.sock")` for a backend on the same host;
//! - `TcpPoolBuilder::tls` with a `TlsConfig` trusting a custom CA (PEM), for a backend
//!   reached over TLS (feature `tls`);
//! - the same layer and extractor for both, each pool's layer on its own nested router;
//! - `TcpConnection::get_ref()`, a `BackendStream`, to tell the transports apart.
//!
//! To be runnable with nothing else installed, the example starts its two backends itself: a
//! line server that answers each line in upper case, once on a Unix socket in a fresh
//! temporary directory, once on a loopback port behind TLS with a CA and a certificate
//! generated at start-up (rcgen).
//!
//! Run it (the HTTP port is 3000, or `PORT`):
//!
//! ```text
//! cargo run --example transports --features tls
//! ```
//!
//! and try it:
//!
//! ```text
//! curl localhost:3000/unix/hello
//! curl localhost:3000/tls/hello
//! curl localhost:3000/stats
//! ```
//!
//! Stop it with Ctrl-C: requests in flight finish, the socket directory is removed. (Unix
//! platforms only, for the Unix socket.)

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::Router;
use axum_tcp_pool::rustls::pki_types::PrivateKeyDer;
use axum_tcp_pool::rustls::{self, ServerConfig};
use axum_tcp_pool::{BackendStream, TcpConnection, TcpPool, TcpPoolError, TcpPoolLayer, TlsConfig};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use testkit::{example, TempDir};

/// The longest line either side accepts (newline included).
const MAX_LINE: u64 = 64 * 1024;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    example::init_logging();

    // The backends: in a real service, a socket path and a host name of your own.
    // A fresh directory for the backend's socket, removed when dropped.
    let dir = TempDir::try_new()?;
    let socket = dir.path().join("backend.sock");
    spawn_unix_backend(&socket)?;
    let (tls_addr, ca_pem) = spawn_tls_backend().await?;

    let unix_pool = TcpPool::builder(format!("unix:{}", socket.display()))
        .max_size(8)
        .connect()
        .await?;
    let tls_pool = TcpPool::builder(tls_addr.to_string())
        .max_size(8)
        // The certificate is for "localhost"; the address is 127.0.0.1.
        .tls(TlsConfig::new().ca_pem(ca_pem).server_name("localhost"))
        .connect()
        .await?;

    let app = Router::new()
        .nest(
            "/unix",
            Router::new()
                .route("/{text}", get(upper))
                .layer(TcpPoolLayer::new(unix_pool.clone())),
        )
        .nest(
            "/tls",
            Router::new()
                .route("/{text}", get(upper))
                .layer(TcpPoolLayer::new(tls_pool.clone())),
        )
        .route("/stats", get(stats))
        .with_state([unix_pool, tls_pool]);

    println!("backends on unix:{} and {tls_addr} (TLS)", socket.display());
    example::serve(app, &["/unix/hello", "/tls/hello", "/stats"]).await?;
    Ok(())
}

/// Sends `text` and reads the one-line reply, whatever the transport.
async fn upper(Path(text): Path<String>, mut conn: TcpConnection) -> Result<String, TcpPoolError> {
    if text.contains('\n') {
        return Ok("one line only\n".into());
    }
    let transport = match conn.get_ref() {
        BackendStream::Tcp(_) => "TCP",
        BackendStream::Unix(_) => "a Unix socket",
        BackendStream::Tls(_) => "TLS",
        _ => "another transport",
    };
    conn.write_all(format!("{text}\n").as_bytes()).await?;
    let mut reply = String::new();
    BufReader::new(&mut conn)
        .take(MAX_LINE)
        .read_line(&mut reply)
        .await?;
    if !reply.ends_with('\n') {
        // Too long or cut short: whatever is left must not reach the next request.
        conn.discard();
        return Ok("bad reply from the backend\n".into());
    }
    Ok(format!("{} (over {transport})\n", reply.trim_end()))
}

async fn stats(State(pools): State<[TcpPool; 2]>) -> String {
    format!(
        "unix: {:?}\ntls: {:?}\n",
        pools[0].state(),
        pools[1].state()
    )
}

/// The backend's protocol: each line is answered in upper case.
async fn serve_upper(stream: impl AsyncRead + AsyncWrite + Unpin) {
    let (r, mut w) = tokio::io::split(stream);
    let mut r = BufReader::new(r);
    let mut line = String::new();
    loop {
        line.clear();
        match (&mut r).take(MAX_LINE).read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if w.write_all(line.to_uppercase().as_bytes()).await.is_err() {
            return;
        }
    }
}

fn spawn_unix_backend(path: &std::path::Path) -> Result<(), Error> {
    let listener = tokio::net::UnixListener::bind(path)?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_upper(stream));
        }
    });
    Ok(())
}

/// A TLS backend on a free loopback port with a certificate for "localhost" from a CA made
/// now; returns its address and the CA's PEM for the client to trust.
async fn spawn_tls_backend() -> Result<(SocketAddr, String), Error> {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "example CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate()?;
    let ca = ca_params.self_signed(&ca_key)?;
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])?
        .signed_by(&key, &ca, &ca_key)?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                match acceptor.accept(stream).await {
                    Ok(tls) => serve_upper(tls).await,
                    Err(e) => tracing::warn!(error = %e, "TLS backend: handshake failed"),
                }
            });
        }
    });
    Ok((addr, ca.pem()))
}
