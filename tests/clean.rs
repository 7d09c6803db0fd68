//! Rule 2: only clean connections go back to the pool; everything else is closed, counted by
//! reason, and never reaches the next request.

use std::time::Duration;

use axum_tcp_pool::{DiscardReason, TcpPool};
use testkit::{app, setup, Backend, HttpClient};

/// After a dirty request: exactly one discard of `reason`, the backend saw the connection
/// close, nothing is in use, and the next request gets its own reply on a new connection.
async fn assert_discarded(
    backend: &Backend,
    pool: &TcpPool,
    client: &HttpClient,
    reason: DiscardReason,
) {
    backend
        .wait_for("discarded connection closed", |s| s.open == 0)
        .await;
    let s = testkit::wait_pool(pool, "connection released", |s| s.connections == 0).await;
    assert_eq!(
        s.discards.get(reason),
        1,
        "expected one {reason:?} discard: {s:?}"
    );
    assert_eq!(s.discards.total(), 1, "{s:?}");
    assert_eq!((s.in_use, s.idle, s.connections), (0, 0, 0), "{s:?}");
    let r = client.get("/echo/next").await;
    assert_eq!(
        (r.status.as_u16(), r.body.as_str()),
        (200, "next"),
        "next request got a foreign reply"
    );
    assert_eq!(
        backend.seen().accepts,
        2,
        "the next request must use a new connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_exchange_goes_back_to_the_pool() {
    let (backend, pool, client) = setup(|b| b, app::eager).await;
    assert_eq!(client.get("/echo/a").await.body, "a");
    assert_eq!(client.get("/echo/b").await.body, "b");
    assert_eq!(backend.seen().accepts, 1);
    assert_eq!(pool.state().discards.total(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_bytes_close_the_connection() {
    let (backend, pool, client) = setup(|b| b, app::eager).await;
    let r = client.get("/twice/dup").await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "dup"));
    // The second "dup" line may still be in flight when the connection is returned: then the
    // next checkout's peek catches it instead. Either way, it is closed and never read.
    backend.wait_for("connection closed", |s| s.open == 0).await;
    let s = pool.state();
    assert_eq!(
        s.discards.unread_bytes + s.discards.health_check,
        1,
        "{s:?}"
    );
    let r = client.get("/echo/next").await;
    assert_eq!(r.body, "next");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_never_read_is_never_read_by_the_next_request() {
    let (backend, pool, client) = setup(|b| b, app::eager).await;
    let r = client.get("/noread/late").await;
    assert_eq!(r.body, "sent");
    assert_discarded(&backend, &pool, &client, DiscardReason::ReplyNotRead).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_does_not_return_its_connection() {
    let (backend, pool, client) = setup(|b| b, app::eager).await;
    // The panic ends the HTTP connection: the client sees an error, not a response.
    assert!(client.try_get("/panic").await.is_err());
    assert_discarded(&backend, &pool, &client, DiscardReason::Panic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discard_closes_the_connection() {
    let (backend, pool, client) = setup(|b| b, app::eager).await;
    assert_eq!(client.get("/discard").await.body, "x");
    assert_discarded(&backend, &pool, &client, DiscardReason::Explicit).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eof_from_the_backend_closes_the_connection_and_answers_502() {
    let (backend, pool, client) = setup(|b| b, app::eager).await;
    let r = client.get("/close").await;
    assert_eq!(r.status, 502, "{r:?}");
    testkit::assert_no_leak(&r.body, &backend);
    assert_discarded(&backend, &pool, &client, DiscardReason::Eof).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_timeout_mid_read_discards_the_connection() {
    let (backend, pool, client) = setup(|b| b, app::eager).await;
    let r = client.get("/timeout").await;
    assert_eq!(r.status, 504, "{r:?}");
    assert_discarded(&backend, &pool, &client, DiscardReason::Cancelled).await;
    // The held reply is released now: it must not surface anywhere.
    backend.release();
    assert_eq!(client.get("/echo/after").await.body, "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_mid_exchange_discards_the_connection() {
    let (backend, pool, client) = setup(|b| b, app::eager).await;
    let request = client.spawn_try_get("/hold/abandoned");
    backend
        .wait_for("handler waiting for its reply", |s| s.holding == 1)
        .await;
    // The client goes away: hyper drops the handler future mid-read.
    request.abort();
    let _ = request.await;
    assert_discarded(&backend, &pool, &client, DiscardReason::Cancelled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_use_tcp_nodelay_by_default() {
    let (_backend, _pool, client) = setup(|b| b, app::eager).await;
    assert_eq!(client.get("/nodelay").await.body, "true");
    let (_backend, _pool, client) = setup(|b| b.nodelay(false), app::eager).await;
    assert_eq!(client.get("/nodelay").await.body, "false");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_is_applied_when_configured() {
    let backend = Backend::start().await;
    let pool = TcpPool::builder(backend.addr_string())
        .keepalive(Some(Duration::from_secs(42)))
        .build()
        .expect("pool");
    let conn = pool.get().await.expect("connection");
    let sock = socket2::SockRef::from(conn.get_ref().tcp().expect("a TCP connection"));
    assert!(sock.keepalive().expect("SO_KEEPALIVE"));
    assert_eq!(
        sock.tcp_keepalive_time().expect("TCP_KEEPIDLE"),
        Duration::from_secs(42)
    );
    drop(conn);
    let pool = TcpPool::builder(backend.addr_string())
        .build()
        .expect("pool");
    let conn = pool.get().await.expect("connection");
    assert!(
        !socket2::SockRef::from(conn.get_ref().tcp().expect("a TCP connection"))
            .keepalive()
            .expect("SO_KEEPALIVE")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_a_request_the_same_rule_holds() {
    use tokio::io::AsyncWriteExt;
    let backend = Backend::start().await;
    let pool = TcpPool::builder(backend.addr_string())
        .build()
        .expect("pool");
    let mut conn = pool.get().await.expect("connection");
    conn.write_all(b"ECHO hi\n").await.expect("write");
    assert_eq!(conn.discard_reason(), Some(DiscardReason::ReplyNotRead));
    assert_eq!(testkit::read_line(&mut conn).await.expect("read"), "hi");
    assert_eq!(conn.discard_reason(), None);
    drop(conn);
    assert_eq!(pool.state().idle, 1);
    let mut conn = pool.get().await.expect("connection");
    conn.write_all(b"ECHO bye\n").await.expect("write");
    drop(conn);
    backend.wait_for("closed", |s| s.open == 0).await;
    assert_eq!(pool.state().discards.reply_not_read, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framed_codecs_work_on_a_borrowed_connection() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_util::codec::{Framed, LinesCodec};
    let backend = Backend::start().await;
    let pool = TcpPool::builder(backend.addr_string())
        .build()
        .expect("pool");
    for i in 0..3 {
        let mut conn = pool.get().await.expect("connection");
        let mut framed = Framed::new(&mut conn, LinesCodec::new());
        framed.send(format!("ECHO framed{i}")).await.expect("send");
        let reply = framed.next().await.expect("a reply").expect("a line");
        assert_eq!(reply, format!("framed{i}"));
        assert!(framed.read_buffer().is_empty());
        drop(framed);
        assert_eq!(conn.discard_reason(), None);
    }
    assert_eq!(backend.seen().accepts, 1, "the connection was reused");
    assert_eq!(pool.state().discards.total(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_cancelled_between_reads_discards_its_connection() {
    for router in [app::eager, app::lazy] {
        let (backend, pool, client) = setup(|b| b, router).await;
        let request = client.spawn_try_get("/partial");
        // The handler has read the head of the reply; the tail is still to come.
        backend
            .wait_for("reply half sent", |s| s.holding == 1)
            .await;
        request.abort();
        let _ = request.await;
        // No read was in flight when the request was dropped, but the exchange was.
        assert_discarded(&backend, &pool, &client, DiscardReason::Cancelled).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_dropped_outside_the_runtime_releases_its_slot() {
    let backend = Backend::start().await;
    let pool = TcpPool::builder(backend.addr_string())
        .max_size(2)
        .min_idle(2)
        .build()
        .expect("pool");
    let mut conn = pool.get().await.expect("connection");
    conn.discard(); // going back makes bb8 spawn a refill: needs a runtime
    let dropped = std::thread::spawn(move || drop(conn)).join();
    assert!(
        dropped.is_ok(),
        "dropping a connection on a plain thread panicked"
    );
    let s = testkit::wait_pool(&pool, "discard booked", |s| s.discards.explicit == 1).await;
    assert_eq!(s.in_use, 0, "{s:?}");
    // Both slots are usable again.
    let a = pool.get().await.expect("first");
    let b = testkit::bounded("second connection", pool.get())
        .await
        .expect("second");
    drop((a, b));
}
