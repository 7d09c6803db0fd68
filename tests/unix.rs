//! Pools over Unix domain sockets (`unix:/path`): the same layer, extractor and clean-connection
//! rule as TCP, against the test backend listening on a socket in a temporary directory.
#![cfg(unix)]

use axum_tcp_pool::{DiscardReason, TcpPool, TcpPoolError};
use http::StatusCode;
use testkit::{app, assert_no_leak, serve, wait_pool, Backend, HttpClient, TempDir};

async fn setup(max_size: u32) -> (Backend, TcpPool, HttpClient) {
    let backend = Backend::start_unix().await;
    let pool = TcpPool::builder(backend.addr_string())
        .max_size(max_size)
        .build()
        .expect("valid pool config");
    let client = HttpClient::new(serve(app::eager(&pool)).await);
    (backend, pool, client)
}

#[tokio::test]
async fn requests_round_trip_and_reuse_one_connection() {
    let (backend, pool, client) = setup(4).await;
    for text in ["one", "two", "three"] {
        let reply = client.get(&format!("/echo/{text}")).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, text);
    }
    assert_eq!(backend.seen().accepts, 1, "one connection, reused");
    let state = pool.state();
    assert_eq!((state.connections, state.idle), (1, 1));
    assert_eq!(state.discards.total(), 0);
    // TCP options do not apply to a Unix socket: nothing to read, nothing failed.
    assert_eq!(client.get("/nodelay").await.body, "not tcp");
}

#[tokio::test]
async fn a_dirty_connection_is_closed_not_reused() {
    let (backend, pool, client) = setup(4).await;
    // The handler reads one of two reply lines: the second is left in the socket.
    let reply = client.get("/twice/x").await;
    assert_eq!(reply.body, "x");
    backend
        .wait_for("dirty connection closed", |s| s.open == 0)
        .await;
    wait_pool(&pool, "discard counted", |s| {
        s.discards.get(DiscardReason::UnreadBytes) == 1
    })
    .await;
    // A reply never read is caught by the tracking, whatever the transport.
    assert_eq!(client.get("/noread/y").await.status, StatusCode::OK);
    wait_pool(&pool, "discard counted", |s| {
        s.discards.get(DiscardReason::ReplyNotRead) == 1
    })
    .await;
    assert_eq!(client.get("/echo/z").await.body, "z");
    assert_eq!(
        backend.seen().accepts,
        3,
        "a new connection after each dirty one"
    );
}

#[tokio::test]
async fn a_connection_the_backend_closed_while_idle_is_replaced_at_checkout() {
    let (backend, pool, client) = setup(1).await;
    assert_eq!(client.get("/echo/a").await.body, "a");
    backend.close_all().await;
    assert_eq!(client.get("/echo/b").await.body, "b");
    assert_eq!(backend.seen().accepts, 2);
    assert_eq!(pool.state().discards.get(DiscardReason::HealthCheck), 1);
}

#[tokio::test]
async fn backend_down_is_a_502_without_detail() {
    let (backend, pool, client) = setup(2).await;
    assert_eq!(client.get("/echo/up").await.body, "up");
    backend.stop().await;
    // The socket file is still there, nobody listens on it: connection refused.
    let reply = client.get("/echo/down").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_no_leak(&reply.body, &backend);
    assert!(pool.state().connect_failures >= 1);
    // Back up: a request gets a fresh connection (within one reconnect backoff step).
    backend.restart().await;
    let (reply, _) = client.get_when_back("/echo/again").await;
    assert_eq!(reply.body, "again");
}

#[tokio::test]
async fn a_missing_socket_file_is_a_502() {
    let dir = TempDir::new();
    let path = dir.path().join("nobody-here.sock");
    let pool = TcpPool::builder(format!("unix:{}", path.display()))
        .build()
        .expect("valid pool config");
    match pool.get().await {
        Err(TcpPoolError::BackendUnreachable(e)) => {
            assert_eq!(e.kind(), std::io::ErrorKind::NotFound)
        }
        other => panic!("expected BackendUnreachable, got {other:?}"),
    }
    let client = HttpClient::new(serve(app::eager(&pool)).await);
    let reply = client.get("/echo/x").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert!(!reply.body.contains("nobody-here"), "{}", reply.body);
}

#[tokio::test]
async fn connect_fails_fast_when_the_socket_is_missing_and_works_when_it_is_there() {
    let backend = Backend::start_unix().await;
    let pool = TcpPool::builder(backend.addr_string())
        .min_idle(2)
        .connect()
        .await
        .expect("backend is up");
    assert!(pool.state().idle >= 2);
    let gone = format!("unix:{}", backend.socket_path().expect("path").display()) + ".gone";
    let err = TcpPool::builder(gone)
        .connect()
        .await
        .expect_err("no socket");
    assert!(
        matches!(err, TcpPoolError::BackendUnreachable(_)),
        "{err:?}"
    );
}

#[tokio::test]
async fn unix_addresses_are_validated_at_build() {
    let err = TcpPool::builder("unix:").build().expect_err("empty path");
    assert!(matches!(err, TcpPoolError::Config(_)));
    assert!(err.to_string().contains("no socket path"), "{err}");
    let long = format!("unix:/tmp/{}.sock", "x".repeat(200));
    let err = TcpPool::builder(long).build().expect_err("path too long");
    assert!(matches!(err, TcpPoolError::Config(_)));
    assert!(err.to_string().contains("shorter path"), "{err}");
    // Relative paths are paths too; nothing is connected at build.
    assert!(TcpPool::builder("unix:relative.sock").build().is_ok());
}

#[tokio::test]
async fn socket_files_live_in_a_temporary_directory_removed_on_drop() {
    let backend = Backend::start_unix().await;
    let path = backend.socket_path().expect("a unix backend");
    assert!(path.starts_with(std::env::temp_dir()));
    assert!(path.exists());
    let dir = path.parent().expect("dir").to_path_buf();
    drop(backend);
    assert!(!dir.exists(), "temporary directory removed");
}

#[tokio::test]
async fn tcp_options_are_ignored_for_a_unix_socket() {
    let backend = Backend::start_unix().await;
    // TCP_NODELAY and TCP keepalive cannot be set on a Unix socket: applying them would fail
    // every connect.
    let pool = TcpPool::builder(backend.addr_string())
        .nodelay(true)
        .keepalive(Some(std::time::Duration::from_secs(30)))
        .build()
        .expect("valid pool config");
    let conn = pool.get().await.expect("connects");
    assert!(conn.get_ref().unix().is_some());
    assert!(conn.get_ref().tcp().is_none());
}
