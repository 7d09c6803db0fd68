//! Rule 3: a connection the backend closed, or that has bytes waiting, is never handed out;
//! a configured probe runs on checkout; after a backend restart the first request succeeds.

use std::io;
use std::time::Duration;

use axum_tcp_pool::{BackendStream, TcpPool, TcpPoolBuilder};
use testkit::{app, read_line, setup, Backend};
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_closed_by_the_backend_while_idle_are_replaced() {
    let (backend, pool, client) = setup(|b| b.max_size(4), app::eager).await;
    assert_eq!(client.get("/echo/a").await.body, "a");
    backend.close_all().await; // like a Redis `timeout`: the server drops idle clients
    let r = client.get("/echo/b").await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "b"));
    let s = pool.state();
    assert_eq!(s.discards.health_check, 1, "{s:?}");
    assert_eq!(backend.seen().accepts, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_request_after_a_backend_restart_succeeds() {
    let (backend, pool, client) = setup(|b| b.max_size(4).min_idle(2), app::eager).await;
    backend.wait_for("min_idle", |s| s.open == 2).await;
    assert_eq!(client.get("/echo/before").await.body, "before");
    backend.stop().await;
    backend.restart().await;
    let r = client.get("/echo/after").await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "after"));
    assert!(pool.state().discards.health_check >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unexpected_bytes_on_an_idle_connection_are_never_handed_out() {
    let (backend, pool) = one_connection_pool().await;
    let mut conn = pool.get().await.expect("conn");
    // Read the reply to a first request, then send a second one through the raw socket
    // (untracked), so its reply arrives while the connection sits idle.
    conn.write_all(b"ECHO one\n").await.expect("write");
    assert_eq!(read_line(&mut conn).await.expect("read"), "one");
    conn.get_ref()
        .tcp()
        .expect("a TCP connection")
        .try_write(b"ECHO stray\n")
        .expect("raw write");
    drop(conn);
    // Once the backend has written the stray reply, it sits in the idle socket's queue.
    backend
        .wait_for("stray reply written", |s| s.replies == 2)
        .await;
    let mut conn = pool.get().await.expect("conn");
    conn.write_all(b"ECHO two\n").await.expect("write");
    let line = read_line(&mut conn).await.expect("read");
    assert_eq!(
        line, "two",
        "a checkout handed out a connection with a stray reply waiting"
    );
    let s = pool.state();
    assert_eq!(
        s.discards.unread_bytes + s.discards.health_check,
        1,
        "{s:?}"
    );
}

fn ping_probe(b: TcpPoolBuilder) -> TcpPoolBuilder {
    b.health_check(async |stream: &mut BackendStream| {
        stream.write_all(b"PING\n").await?;
        let reply = read_line(stream).await?;
        if reply == "PONG" {
            Ok(())
        } else {
            Err(io::Error::new(io::ErrorKind::InvalidData, "bad PING reply"))
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_probe_runs_on_every_checkout() {
    let (backend, pool, client) = setup(|b| ping_probe(b.max_size(2)), app::eager).await;
    for i in 0..5 {
        assert_eq!(
            client.get(&format!("/echo/p{i}")).await.body,
            format!("p{i}")
        );
    }
    // Five probes and five requests on one connection.
    assert_eq!(backend.seen().lines, 10);
    assert_eq!(backend.seen().accepts, 1);
    assert_eq!(pool.state().discards.total(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_fails_the_probe_answers_502_without_looping_forever() {
    let (backend, pool, client) = setup(
        |b| {
            b.max_size(2)
                .checkout_timeout(Duration::from_secs(3600))
                .health_check(async |stream: &mut BackendStream| {
                    stream.write_all(b"ECHO NOPE\n").await?;
                    let reply = read_line(stream).await?;
                    Err(io::Error::new(io::ErrorKind::InvalidData, reply))
                })
        },
        app::eager,
    )
    .await;
    let r = client.get("/echo/x").await;
    assert_eq!(r.status, 502, "{r:?}");
    assert!(!r.body.contains("NOPE"), "{r:?}");
    // Bounded: max_size + 1 fresh connections fail in a row, then the checkout gives up (bb8
    // may already have started one more connect, which then waits idle): not a reconnect loop.
    let seen = backend.seen();
    assert!(seen.accepts <= 4, "{seen:?}");
    assert_eq!(pool.state().in_use, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_that_hangs_is_bounded_by_connect_timeout() {
    let (backend, pool, client) = setup(
        |b| {
            b.max_size(1)
                .connect_timeout(Duration::from_millis(50))
                .checkout_timeout(Duration::from_secs(3600))
                .health_check(async |stream: &mut BackendStream| {
                    stream.write_all(b"HOLD forever\n").await?;
                    read_line(stream).await.map(drop)
                })
        },
        app::eager,
    )
    .await;
    let r = client.get("/echo/x").await;
    assert_eq!(r.status, 502, "{r:?}");
    // Both probed connections (max_size + 1 in a row) were closed, not returned mid-probe.
    // (The backend stops counting a connection as holding a moment before it stops counting
    // it as open: wait for both.)
    let seen = backend
        .wait_for("probed connections closed", |s| {
            s.accepts >= 2 && s.holding == 0 && s.open <= 1
        })
        .await;
    assert!(seen.open <= 1, "{seen:?}");
    assert_eq!(pool.state().discards.health_check, 2);
}

/// A handler whose last read was short (a buffered reader: the socket was drained then) gives
/// its connection back without a second look at the socket; bytes that arrive afterwards, while
/// it is idle, are caught by the next checkout's peek and never handed to a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_after_a_drained_read_are_caught_at_the_next_checkout() {
    use tokio::io::AsyncReadExt;
    let (backend, pool) = one_connection_pool().await;
    let mut conn = pool.get().await.expect("conn");
    conn.write_all(b"PARTIAL head tail\n").await.expect("write");
    let mut buf = [0u8; 64];
    let n = conn.read(&mut buf).await.expect("read the head");
    assert_eq!(&buf[..n], b"head", "a short read: the tail is held back");
    drop(conn);
    let s = testkit::wait_pool(&pool, "returned clean", |s| s.idle == 1).await;
    assert_eq!(
        s.discards.total(),
        0,
        "nothing was waiting at return: {s:?}"
    );
    backend.release();
    backend
        .wait_for("tail written while idle", |s| s.replies == 1)
        .await;
    let mut conn = pool.get().await.expect("conn");
    conn.write_all(b"ECHO next\n").await.expect("write");
    assert_eq!(read_line(&mut conn).await.expect("read"), "next");
    let s = pool.state();
    assert_eq!(
        (s.discards.health_check, backend.seen().accepts),
        (1, 2),
        "{s:?}"
    );
}

/// A backend and a pool of one connection to it.
async fn one_connection_pool() -> (Backend, TcpPool) {
    let backend = Backend::start().await;
    let pool = TcpPool::builder(backend.addr_string())
        .max_size(1)
        .build()
        .expect("pool");
    (backend, pool)
}
