//! A slow upload does not hold a pool connection when the handler reads its body before it
//! checks out (`LazyConnection`): with `max_size(1)`, other requests are served meanwhile.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::Path;
use axum::routing::{get, put};
use axum::Router;
use axum_tcp_pool::{LazyConnection, TcpConnection, TcpPool, TcpPoolError, TcpPoolLayer};
use testkit::{bounded, read_line, serve, Backend, HttpClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn store(
    Path(key): Path<String>,
    conn: LazyConnection,
    body: Bytes,
) -> Result<String, TcpPoolError> {
    let mut conn = conn.get().await?;
    let text = String::from_utf8_lossy(&body);
    conn.write_all(format!("ECHO {key}={text}\n").as_bytes())
        .await?;
    Ok(read_line(&mut conn).await?)
}

async fn echo(Path(tag): Path<String>, mut conn: TcpConnection) -> Result<String, TcpPoolError> {
    conn.write_all(format!("ECHO {tag}\n").as_bytes()).await?;
    Ok(read_line(&mut conn).await?)
}

/// Notified when an upload has reached its handler (its head has been read and routed).
static UPLOAD_ROUTED: tokio::sync::Notify = tokio::sync::Notify::const_new();

async fn routed(req: axum::extract::Request) -> axum::extract::Request {
    UPLOAD_ROUTED.notify_one();
    req
}

/// The app; `signal` makes the upload route notify [`UPLOAD_ROUTED`] (one test only: the
/// tests of this file run at once).
async fn app(
    backend: &Backend,
    layer: fn(TcpPool) -> TcpPoolLayer,
    signal: bool,
) -> (TcpPool, std::net::SocketAddr) {
    let pool = TcpPool::builder(backend.addr_string())
        .max_size(1)
        .checkout_timeout(Duration::from_millis(300))
        .build()
        .expect("pool");
    let upload = match signal {
        true => put(store).layer(axum::middleware::map_request(routed)),
        false => put(store),
    };
    let app = Router::new()
        .route("/kv/{key}", upload)
        .route("/echo/{tag}", get(echo))
        .route_layer(layer(pool.clone()));
    (pool, serve(app).await)
}

/// Sends the head and the first byte of a 5-byte body, and keeps the rest back.
async fn start_slow_upload(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    let mut upload = tokio::net::TcpStream::connect(addr).await.expect("connect");
    upload
        .write_all(b"PUT /kv/k HTTP/1.1\r\nhost: test\r\ncontent-length: 5\r\n\r\nh")
        .await
        .expect("head");
    upload
}

async fn finish_upload(mut upload: tokio::net::TcpStream) -> String {
    upload.write_all(b"ello").await.expect("rest of the body");
    let mut response = Vec::new();
    bounded("the upload's response", async {
        let mut buf = [0u8; 512];
        while !response.ends_with(b"k=hello") {
            let n = upload.read(&mut buf).await.expect("read");
            assert!(
                n > 0,
                "closed early: {:?}",
                String::from_utf8_lossy(&response)
            );
            response.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_holds_no_connection_under_a_lazy_layer() {
    let backend = Backend::start().await;
    let (pool, addr) = app(&backend, |p| TcpPoolLayer::new(p).lazy(), true).await;
    let upload = start_slow_upload(addr).await;
    bounded("the upload is routed", UPLOAD_ROUTED.notified()).await;
    // Meanwhile, with the pool's one connection, other requests are served.
    let client = HttpClient::new(addr);
    for tag in ["a", "b", "c"] {
        let r = client.get(&format!("/echo/{tag}")).await;
        assert_eq!((r.status.as_u16(), r.body.as_str()), (200, tag), "{r:?}");
    }
    let response = finish_upload(upload).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let s = pool.state();
    assert_eq!((s.gets_timed_out, backend.seen().accepts), (0, 1), "{s:?}");
}

/// Under an eager layer the connection is checked out before the handler runs, so it is held
/// while the body arrives (what the docs say, and why they point handlers that read a body
/// to `LazyConnection` under a lazy layer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_an_eager_layer_a_slow_upload_holds_the_connection() {
    let backend = Backend::start().await;
    let (pool, addr) = app(&backend, TcpPoolLayer::new, false).await;
    let upload = start_slow_upload(addr).await;
    testkit::wait_pool(&pool, "the upload's checkout", |s| s.in_use == 1).await;
    let r = HttpClient::new(addr).get("/echo/a").await;
    assert_eq!(r.status.as_u16(), 503, "{r:?}");
    let response = finish_upload(upload).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}
