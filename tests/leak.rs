//! Leak detection: a connection held longer than `leak_threshold` is reported once, while
//! it is still held, with the pool, the endpoint, how long it has been held and, under the
//! layer, the request's method and path (never the query); `suspected_leaks` counts it.
//!
//! Each test runs on a current-thread runtime, so the server, the pool's background task
//! and the test all log to the test's own subscriber. Waits are on events: the log events
//! themselves, the backend's `HOLD` count, the pool's state.

use std::time::Duration;

use axum::extract::Path;
use axum::routing::{get, put};
use axum::Router;
use axum_tcp_pool::{LazyConnection, TcpConnection, TcpPool, TcpPoolError, TcpPoolLayer};
use bytes::Bytes;
use http::{Method, StatusCode};
use testkit::events::{EventCapture, LEAK_CAME_BACK as CAME_BACK, LEAK_WARN as WARN};
use testkit::{bounded, read_line, serve, wait_pool, Backend, BytesClient, HttpClient};
use tokio::io::AsyncWriteExt;

async fn exchange(conn: &mut TcpConnection, cmd: &str) -> Result<String, TcpPoolError> {
    conn.write_all(format!("{cmd}\n").as_bytes()).await?;
    Ok(read_line(conn).await?)
}

/// Holds its connection until the test releases the backend's `HOLD`s.
async fn hold(Path(name): Path<String>, mut conn: TcpConnection) -> Result<String, TcpPoolError> {
    exchange(&mut conn, &format!("HOLD {name}")).await
}

async fn echo(Path(name): Path<String>, mut conn: TcpConnection) -> Result<String, TcpPoolError> {
    exchange(&mut conn, &format!("ECHO {name}")).await
}

/// Checks out only when asked, then holds like [`hold`].
async fn lazy_hold(
    Path(name): Path<String>,
    conn: LazyConnection,
    body: Bytes,
) -> Result<String, TcpPoolError> {
    let mut conn = conn.get().await?;
    exchange(&mut conn, &format!("HOLD {name}-{}", body.len())).await
}

fn router(pool: &TcpPool, lazy: bool) -> Router {
    let mut layer = TcpPoolLayer::new(pool.clone());
    if lazy {
        layer = layer.lazy();
    }
    Router::new()
        .route("/hold/{name}", get(hold))
        .route("/echo/{name}", get(echo))
        .route("/lazy/{name}", put(lazy_hold))
        .layer(layer)
}

async fn setup(
    threshold: Option<Duration>,
    lazy: bool,
) -> (Backend, TcpPool, HttpClient, BytesClient) {
    let backend = Backend::start().await;
    let pool = TcpPool::builder(backend.addr_string())
        .name("leaky")
        .max_size(4)
        .leak_threshold(threshold)
        .build()
        .expect("valid pool config");
    let addr = serve(router(&pool, lazy)).await;
    (backend, pool, HttpClient::new(addr), BytesClient::new(addr))
}

const THRESHOLD: Duration = Duration::from_millis(150);

#[tokio::test]
async fn a_connection_held_past_the_threshold_is_reported_once_while_held() {
    let capture = EventCapture::default();
    let _guard = capture.install();
    let (backend, pool, client, _) = setup(Some(THRESHOLD), false).await;
    let endpoint = backend.addr_string();

    // A request that holds its connection until the test says; the query must not show.
    let first = client.spawn_get("/hold/a?token=secret-value");
    let warn = capture.wait_for(WARN, "path", "/hold/a").await;
    let figures = capture.dump();
    assert!(!first.is_finished(), "reported while still held: {figures}");
    assert_eq!(warn.level, tracing::Level::WARN, "{figures}");
    assert_eq!(warn.field("pool"), Some("leaky"), "{figures}");
    assert_eq!(warn.field("endpoint"), Some(endpoint.as_str()), "{figures}");
    assert_eq!(warn.field("method"), Some("GET"), "{figures}");
    assert!(warn.number("held_ms") >= 150, "{figures}");
    assert_eq!(warn.number("threshold_ms"), 150, "{figures}");
    assert!(
        !figures.contains("secret-value"),
        "the query is never logged: {figures}"
    );
    let s = pool.state();
    assert_eq!((s.suspected_leaks, s.in_use), (1, 1), "{s:?}");

    // A second request held past the threshold: by its report, the first connection has been
    // scanned at least four more times, still held, and was not reported again.
    let second = client.spawn_get("/hold/b");
    capture.wait_for(WARN, "path", "/hold/b").await;
    let figures = capture.dump();
    assert_eq!(capture.with(WARN).len(), 2, "{figures}");
    assert_eq!(
        capture.matching(WARN, "path", "/hold/a").len(),
        1,
        "{figures}"
    );
    assert!(!first.is_finished(), "{figures}");
    assert_eq!(pool.state().suspected_leaks, 2);

    // Released: both finish; each says it came back, after at least the threshold.
    backend.release();
    assert_eq!(bounded("first", first).await.expect("first").status, 200);
    assert_eq!(bounded("second", second).await.expect("second").status, 200);
    let back = capture.wait_for(CAME_BACK, "path", "/hold/a").await;
    assert_eq!(back.level, tracing::Level::INFO);
    assert!(back.number("held_ms") >= warn.number("held_ms"), "{back:?}");
    assert_eq!(back.field("method"), Some("GET"));
    capture.wait_for(CAME_BACK, "path", "/hold/b").await;

    // The connections went back clean and are reused; nothing more is reported.
    wait_pool(&pool, "both idle", |s| s.idle == 2).await;
    assert_eq!(client.get("/echo/again").await.body, "again");
    let s = pool.state();
    assert_eq!(
        (s.connections_created, s.suspected_leaks, s.discards.total()),
        (2, 2, 0),
        "{s:?}"
    );
    assert_eq!(capture.with(WARN).len(), 2, "{}", capture.dump());
}

#[tokio::test]
async fn a_connection_held_shorter_than_the_threshold_is_not_reported() {
    let capture = EventCapture::default();
    let _guard = capture.install();
    let threshold = Duration::from_millis(800);
    let (backend, pool, client, _) = setup(Some(threshold), false).await;

    // A witness held past the threshold from before the short request until after it: its
    // report proves the pool looked at its connections all the while the short one was held.
    let witness = pool.get().await.expect("witness");
    // Held for about half the threshold (the backend answers that late): scanned while held
    // (every 200 ms), never reported.
    backend.set_delay(threshold / 2);
    assert_eq!(client.get("/echo/short").await.body, "short");
    backend.set_delay(Duration::ZERO);
    let warn = capture
        .wait_for(WARN, "endpoint", &backend.addr_string())
        .await;
    let figures = capture.dump();
    assert_eq!(warn.field("path"), None, "the witness: {figures}");
    assert_eq!(capture.with(WARN).len(), 1, "only the witness: {figures}");
    assert!(capture.matching(WARN, "path", "/echo/short").is_empty());
    assert_eq!(pool.state().suspected_leaks, 1, "only the witness");
    drop(witness);
    capture.wait_for(CAME_BACK, "pool", "leaky").await;
    assert!(capture
        .with(CAME_BACK)
        .iter()
        .all(|e| e.field("path").is_none()));
}

#[tokio::test]
async fn a_lazy_checkout_is_reported_with_its_method_and_path() {
    let capture = EventCapture::default();
    let _guard = capture.install();
    let (backend, pool, client, bytes) = setup(Some(THRESHOLD), true).await;
    let request = {
        let client = bytes;
        tokio::spawn(async move {
            client
                .send(
                    Method::PUT,
                    "/lazy/k?password=hunter2",
                    Bytes::from_static(b"body"),
                )
                .await
        })
    };
    let warn = capture.wait_for(WARN, "path", "/lazy/k").await;
    let figures = capture.dump();
    assert_eq!(warn.field("method"), Some("PUT"), "{figures}");
    assert!(warn.number("held_ms") >= 150, "{figures}");
    assert!(!figures.contains("hunter2"), "{figures}");
    assert!(!request.is_finished());
    assert_eq!(pool.state().suspected_leaks, 1);
    // The extractor under a lazy layer checks out in the request too.
    let eager_style = client.spawn_get("/hold/x");
    capture.wait_for(WARN, "path", "/hold/x").await;
    backend.release();
    assert_eq!(
        bounded("lazy", request).await.expect("lazy").status,
        StatusCode::OK
    );
    assert_eq!(bounded("x", eager_style).await.expect("x").status, 200);
    assert_eq!(pool.state().suspected_leaks, 2);
}

#[tokio::test]
async fn a_checkout_outside_a_request_is_reported_without_method_or_path() {
    let capture = EventCapture::default();
    let _guard = capture.install();
    let (_backend, pool, _, _) = setup(Some(THRESHOLD), false).await;
    let conn = pool.get().await.expect("checkout");
    let endpoint = conn.endpoint().to_owned();
    let warn = capture.wait_for(WARN, "endpoint", &endpoint).await;
    assert_eq!(
        (warn.field("method"), warn.field("path")),
        (None, None),
        "{warn:?}"
    );
    assert_eq!(warn.field("pool"), Some("leaky"));
    assert!(warn.number("held_ms") >= 150, "{warn:?}");
    assert_eq!(pool.state().suspected_leaks, 1);
    drop(conn);
    let back = capture.wait_for(CAME_BACK, "endpoint", &endpoint).await;
    assert!(back.number("held_ms") >= 150);
    // Checked out again: the record is fresh, so the next hold is a new report.
    let again = pool.get().await.expect("again");
    wait_pool(&pool, "a second report", |s| s.suspected_leaks == 2).await;
    drop(again);
    assert_eq!(
        pool.state().connections_created,
        1,
        "the same connection, reused"
    );
}

#[tokio::test]
async fn without_a_threshold_nothing_is_reported() {
    let capture = EventCapture::default();
    let _guard = capture.install();
    let (backend, pool, client, _) = setup(None, false).await;
    // A pool with a threshold on the same backend is the clock: by its report, the request
    // on the pool without one has been held longer than that threshold.
    let witness_pool = TcpPool::builder(backend.addr_string())
        .name("witness")
        .leak_threshold(Some(THRESHOLD))
        .build()
        .expect("witness pool");
    let held = client.spawn_get("/hold/none");
    backend
        .wait_for("the request holding", |s| s.holding == 1)
        .await;
    let witness = witness_pool.get().await.expect("witness");
    capture.wait_for(WARN, "pool", "witness").await;
    assert!(!held.is_finished());
    let figures = capture.dump();
    assert!(
        capture.matching(WARN, "pool", "leaky").is_empty(),
        "{figures}"
    );
    backend.release();
    assert_eq!(bounded("held", held).await.expect("held").status, 200);
    drop(witness);
    assert_eq!(pool.state().suspected_leaks, 0);
    assert!(capture.matching(CAME_BACK, "pool", "leaky").is_empty());
}

#[tokio::test]
async fn a_zero_threshold_is_a_config_error() {
    let err = TcpPool::builder("127.0.0.1:6379")
        .leak_threshold(Some(Duration::ZERO))
        .build()
        .expect_err("zero threshold");
    assert!(matches!(err, TcpPoolError::Config(_)), "{err:?}");
    assert!(err.to_string().contains("leak_threshold"), "{err}");
    assert!(TcpPool::builder("127.0.0.1:6379")
        .leak_threshold(None)
        .build()
        .is_ok());
}
