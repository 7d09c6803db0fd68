//! The handlers the tests drive, one per behaviour, and [`setup`]: a backend, a pool and
//! the app served over them.

use axum::extract::Path;
use axum::routing::get;
use axum::Router;
use axum_tcp_pool::{TcpConnection, TcpPool, TcpPoolBuilder, TcpPoolError, TcpPoolLayer};
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::backend::Backend;
use crate::echo::read_line;
use crate::http::{serve, HttpClient};

async fn exchange(conn: &mut TcpConnection, cmd: &str) -> Result<String, TcpPoolError> {
    conn.write_all(format!("{cmd}\n").as_bytes()).await?;
    Ok(read_line(conn).await?)
}

async fn echo(Path(text): Path<String>, mut conn: TcpConnection) -> Result<String, TcpPoolError> {
    exchange(&mut conn, &format!("ECHO {text}")).await
}

async fn hold(Path(text): Path<String>, mut conn: TcpConnection) -> Result<String, TcpPoolError> {
    exchange(&mut conn, &format!("HOLD {text}")).await
}

/// Reads one of two reply lines: leaves bytes unread.
async fn twice(Path(text): Path<String>, mut conn: TcpConnection) -> Result<String, TcpPoolError> {
    exchange(&mut conn, &format!("TWICE {text}")).await
}

/// Sends a request and never reads the reply.
async fn noread(Path(text): Path<String>, mut conn: TcpConnection) -> Result<String, TcpPoolError> {
    conn.write_all(format!("ECHO {text}\n").as_bytes()).await?;
    Ok("sent".into())
}

/// A clean exchange, then a panic.
async fn panics(mut conn: TcpConnection) -> Result<String, TcpPoolError> {
    exchange(&mut conn, "ECHO before-panic").await?;
    panic!("handler panic (expected by the test)");
}

async fn discard(mut conn: TcpConnection) -> Result<String, TcpPoolError> {
    let reply = exchange(&mut conn, "ECHO x").await?;
    conn.discard();
    Ok(reply)
}

/// The backend closes the connection: the read sees EOF.
async fn close(mut conn: TcpConnection) -> Result<String, TcpPoolError> {
    exchange(&mut conn, "CLOSE").await
}

/// A handler-level timeout fires while the read is in flight.
async fn timeout(mut conn: TcpConnection) -> Result<String, (StatusCode, &'static str)> {
    conn.write_all(b"HOLD late\n")
        .await
        .map_err(|_| (StatusCode::BAD_GATEWAY, "write failed"))?;
    match tokio::time::timeout(std::time::Duration::from_millis(50), read_line(&mut conn)).await {
        Ok(Ok(line)) => Ok(line),
        Ok(Err(_)) => Err((StatusCode::BAD_GATEWAY, "read failed")),
        Err(_) => Err((StatusCode::GATEWAY_TIMEOUT, "backend too slow")),
    }
}

/// Reads the first part of a reply, then waits on something that is not the socket (a
/// database call, say) until the request is cancelled.
async fn partial(mut conn: TcpConnection) -> Result<String, TcpPoolError> {
    conn.write_all(b"PARTIAL head tail\n").await?;
    let mut head = [0u8; 4];
    conn.read_exact(&mut head).await?;
    std::future::pending::<()>().await;
    Ok("unreachable".into())
}

async fn nodelay(conn: TcpConnection) -> Result<String, TcpPoolError> {
    match conn.get_ref().tcp() {
        Some(tcp) => Ok(tcp.nodelay()?.to_string()),
        None => Ok("not tcp".into()),
    }
}

async fn none() -> &'static str {
    "no connection needed"
}

async fn option(conn: Option<TcpConnection>) -> &'static str {
    if conn.is_some() {
        "some"
    } else {
        "none"
    }
}

async fn result(conn: Result<TcpConnection, TcpPoolError>) -> String {
    match conn {
        Ok(_) => "ok".into(),
        Err(e) => format!("err {}", e.status().as_u16()),
    }
}

async fn two(_a: TcpConnection, _b: TcpConnection) -> &'static str {
    "unreachable: the second extraction is rejected"
}

/// Every test route, without the layer.
pub fn routes() -> Router {
    Router::new()
        .route("/echo/{text}", get(echo))
        .route("/hold/{text}", get(hold))
        .route("/twice/{text}", get(twice))
        .route("/noread/{text}", get(noread))
        .route("/panic", get(panics))
        .route("/discard", get(discard))
        .route("/close", get(close))
        .route("/timeout", get(timeout))
        .route("/nodelay", get(nodelay))
        .route("/partial", get(partial))
        .route("/none", get(none))
        .route("/option", get(option))
        .route("/result", get(result))
        .route("/two", get(two))
}

/// Every test route behind an eager layer.
pub fn eager(pool: &TcpPool) -> Router {
    routes().layer(TcpPoolLayer::new(pool.clone()))
}

/// Every test route behind a lazy layer.
pub fn lazy(pool: &TcpPool) -> Router {
    routes().layer(TcpPoolLayer::new(pool.clone()).lazy())
}

/// A backend, a pool over it (configured by `f`), and an app served with `router`.
pub async fn setup(
    f: impl FnOnce(TcpPoolBuilder) -> TcpPoolBuilder,
    router: fn(&TcpPool) -> Router,
) -> (Backend, TcpPool, HttpClient) {
    let backend = Backend::start().await;
    let pool = f(TcpPool::builder(backend.addr_string()))
        .build()
        .expect("valid pool config");
    let addr = serve(router(&pool)).await;
    (backend, pool, HttpClient::new(addr))
}

/// Asserts that an error body leaks nothing internal.
pub fn assert_no_leak(body: &str, backend: &Backend) {
    let lower = body.to_lowercase();
    let addr = match backend.socket_path() {
        Some(path) => [path.display().to_string(), "unix:".into()],
        None => [backend.addr.to_string(), backend.addr.port().to_string()],
    };
    for needle in addr.into_iter().chain([
        "127.0.0.1".to_string(),
        "refused".into(),
        "os error".into(),
        "os {".into(),
        "kind:".into(),
        "io error".into(),
        "certificate".into(),
        "tls".into(),
        "handshake".into(),
    ]) {
        assert!(
            !lower.contains(&needle.to_lowercase()),
            "error body leaks {needle:?}: {body:?}"
        );
    }
}
