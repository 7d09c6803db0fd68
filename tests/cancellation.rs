//! Rule 2, where an exchange is left unfinished without a read or write in flight: a timeout
//! layer inside the pool layer, a task that is aborted, a streaming body the server drops.
//! Each leaves a reply half-read on the connection; each must close it (`Cancelled`), never
//! hand the rest of that reply to the next request.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::routing::get;
use axum::Router;
use axum_tcp_pool::{Guarded, TcpConnection, TcpPool, TcpPoolLayer};
use testkit::{bounded, read_line, serve, wait_pool, Backend, HttpClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{oneshot, Notify};
use tower::ServiceBuilder;
use tower_http::timeout::TimeoutLayer;

/// Starts a reply in two parts and reads its head: the exchange is now between two reads.
async fn read_head(conn: &mut TcpConnection) -> std::io::Result<()> {
    conn.write_all(b"PARTIAL head tail\n").await?;
    let mut head = [0u8; 4];
    conn.read_exact(&mut head).await?;
    assert_eq!(&head, b"head");
    Ok(())
}

/// The connection the first request left behind was closed, and the next request gets its
/// own reply, on a new connection.
async fn assert_closed_then_fresh(backend: &Backend, pool: &TcpPool, client: &HttpClient) {
    let s = wait_pool(pool, "the half-read connection is closed", |s| {
        s.discards.cancelled == 1
    })
    .await;
    assert_eq!((s.idle, s.discards.total()), (0, 1), "{s:?}");
    backend
        .wait_for("closed at the backend", |s| s.open == 0)
        .await;
    backend.release();
    let r = client.get("/echo/next").await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "next"), "{r:?}");
    assert_eq!(backend.seen().accepts, 2);
}

async fn echo(
    axum::extract::Path(tag): axum::extract::Path<String>,
    mut conn: TcpConnection,
) -> String {
    conn.write_all(format!("ECHO {tag}\n").as_bytes())
        .await
        .expect("write");
    read_line(&mut conn).await.expect("read")
}

fn pool(backend: &Backend) -> TcpPool {
    TcpPool::builder(backend.addr_string())
        .max_size(1)
        .build()
        .expect("pool")
}

/// Reads the head, then waits (no read in flight) until a timeout gives up on it.
async fn slow(mut conn: TcpConnection) -> &'static str {
    read_head(&mut conn).await.expect("head");
    std::future::pending::<()>().await;
    "never"
}

fn timeout_layer() -> TimeoutLayer {
    TimeoutLayer::with_status_code(
        http::StatusCode::REQUEST_TIMEOUT,
        Duration::from_millis(100),
    )
}

/// The pool layer over a timeout layer over the handler, as one tower stack: the timeout's
/// response future still holds the handler it gave up on when it answers, and the pool
/// layer's response future drops it as abandoned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_layer_inside_the_pool_layer_closes_the_connection_it_gave_up_on() {
    let backend = Backend::start().await;
    let pool = pool(&backend);
    let slow_route = ServiceBuilder::new()
        .layer(TcpPoolLayer::new(pool.clone()))
        .layer(timeout_layer())
        .service(axum::handler::HandlerWithoutStateExt::into_service(slow));
    let app = Router::new()
        .route_service("/slow", slow_route)
        .route("/echo/{tag}", get(echo))
        .route_layer(TcpPoolLayer::new(pool.clone()));
    let client = HttpClient::new(serve(app).await);
    let r = client.get("/slow").await;
    assert_eq!(r.status.as_u16(), 408, "{r:?}");
    assert_closed_then_fresh(&backend, &pool, &client).await;
}

/// Inside axum's router a timeout layered on the handler (`get(slow.layer(..))`) is not
/// enough: axum drops the handler the timeout gave up on itself, before the pool layer sees
/// the answer, and the half-read connection looks clean. Two ways that work: the timeout
/// around the exchange inside the handler (the read is in flight when it fires), or the
/// timeout layer outside the pool layer (next test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_around_the_exchange_inside_the_handler_closes_the_connection() {
    let backend = Backend::start().await;
    let pool = pool(&backend);
    async fn bounded_read(mut conn: TcpConnection) -> (http::StatusCode, &'static str) {
        let exchange = async {
            read_head(&mut conn).await?;
            let mut tail = [0u8; 5];
            conn.read_exact(&mut tail).await
        };
        match tokio::time::timeout(Duration::from_millis(100), exchange).await {
            Ok(_) => (http::StatusCode::OK, "whole"),
            Err(_) => (http::StatusCode::GATEWAY_TIMEOUT, "too slow"),
        }
    }
    let app = Router::new()
        .route("/slow", get(bounded_read))
        .route("/echo/{tag}", get(echo))
        .route_layer(TcpPoolLayer::new(pool.clone()));
    let client = HttpClient::new(serve(app).await);
    let r = client.get("/slow").await;
    assert_eq!(r.status.as_u16(), 504, "{r:?}");
    assert_closed_then_fresh(&backend, &pool, &client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guarded_task_aborted_between_two_reads_closes_its_connection() {
    let backend = Backend::start().await;
    let pool = pool(&backend);
    let (task_tx, task_rx) = oneshot::channel::<tokio::task::AbortHandle>();
    let task_tx = Arc::new(Mutex::new(Some(task_tx)));
    let head_read = Arc::new(Notify::new());
    let app = Router::new()
        .route(
            "/spawn",
            get({
                let (task_tx, head_read) = (task_tx.clone(), head_read.clone());
                move |mut conn: TcpConnection| async move {
                    let task = tokio::spawn(Guarded::new(async move {
                        read_head(&mut conn).await.expect("head");
                        head_read.notify_one();
                        std::future::pending::<()>().await;
                    }));
                    if let Some(tx) = task_tx.lock().expect("lock").take() {
                        let _ = tx.send(task.abort_handle());
                    }
                    "spawned"
                }
            }),
        )
        .route("/echo/{tag}", get(echo))
        .route_layer(TcpPoolLayer::new(pool.clone()));
    let client = HttpClient::new(serve(app).await);
    let notified = head_read.notified();
    assert_eq!(client.get("/spawn").await.body, "spawned");
    let task = bounded("the task", task_rx).await.expect("abort handle");
    bounded("the head read", notified).await;
    task.abort();
    assert_closed_then_fresh(&backend, &pool, &client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guarded_body_dropped_on_a_client_reset_closes_its_connection() {
    let backend = Backend::start().await;
    let pool = pool(&backend);
    // The body sends the head, then waits before it reads the tail (no read in flight).
    let more = Arc::new(Notify::new());
    let app = Router::new()
        .route(
            "/stream",
            get({
                let more = more.clone();
                move |mut conn: TcpConnection| async move {
                    read_head(&mut conn).await.expect("head");
                    let chunks =
                        futures_util::stream::unfold(Some((conn, more)), |state| async move {
                            let (mut conn, more) = state?;
                            more.notified().await;
                            let tail = read_line(&mut conn).await;
                            Some((tail.map(Bytes::from), None))
                        });
                    let first =
                        futures_util::stream::once(async { Ok(Bytes::from_static(b"head")) });
                    Body::from_stream(Guarded::new(futures_util::StreamExt::chain(first, chunks)))
                }
            }),
        )
        .route("/echo/{tag}", get(echo))
        .route_layer(TcpPoolLayer::new(pool.clone()));
    let addr = serve(app).await;
    let client = HttpClient::new(addr);
    // A raw client that reads the first chunk, then goes away.
    let mut raw = tokio::net::TcpStream::connect(addr).await.expect("connect");
    raw.write_all(b"GET /stream HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .expect("request");
    let mut seen = Vec::new();
    bounded("the first chunk", async {
        let mut buf = [0u8; 1024];
        while !seen.windows(4).any(|w| w == b"head") {
            let n = raw.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed before the first chunk");
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    drop(raw);
    assert_closed_then_fresh(&backend, &pool, &client).await;
    drop(more);
}

/// A timeout layer outside the pool layer cancels the pool layer's response future, which
/// drops the handler inside the cancellation scope.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_layer_outside_the_pool_layer_closes_the_connection() {
    let backend = Backend::start().await;
    let pool = pool(&backend);
    let app = Router::new()
        .route("/slow", get(slow))
        .route("/echo/{tag}", get(echo))
        .route_layer(
            ServiceBuilder::new()
                .layer(timeout_layer())
                .layer(TcpPoolLayer::new(pool.clone())),
        );
    let client = HttpClient::new(serve(app).await);
    let r = client.get("/slow").await;
    assert_eq!(r.status.as_u16(), 408, "{r:?}");
    assert_closed_then_fresh(&backend, &pool, &client).await;
}
