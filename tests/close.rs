//! `TcpPool::close`: checkouts fail at once with `Closed` (`503`), idle connections close now,
//! connections in use close when they come back, and the future resolves when none is open;
//! with `axum::serve(..).with_graceful_shutdown`, in-flight requests finish first.

use std::time::Duration;

use axum_tcp_pool::{TcpPool, TcpPoolError};
use testkit::{app, bounded, wait_pool, Backend, HttpClient};
use tokio::io::AsyncWriteExt;

fn pool(backend: &Backend, max_size: u32) -> TcpPool {
    TcpPool::builder(backend.addr_string())
        .max_size(max_size)
        .checkout_timeout(Duration::from_secs(3600))
        .build()
        .expect("pool")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_closes_idle_connections_now_and_fails_checkouts_with_503() {
    let backend = Backend::start().await;
    let pool = pool(&backend, 4);
    let client = HttpClient::new(testkit::serve(app::eager(&pool)).await);
    let together: Vec<_> = (0..3)
        .map(|i| client.spawn_get(&format!("/echo/t{i}")))
        .collect();
    for t in together {
        assert_eq!(t.await.expect("request").status, 200);
    }
    let before = wait_pool(&pool, "idle again", |s| s.in_use == 0).await;
    assert!(before.idle >= 1 && !before.closed, "{before:?}");

    bounded("close", pool.close()).await;
    let after = backend
        .wait_for("every socket closed", |s| s.open == 0)
        .await;
    let s = pool.state();
    assert_eq!((s.connections, s.idle, s.closed), (0, 0, true), "{s:?}");
    assert_eq!(s.discards.total(), 0, "closing is not a discard: {s:?}");

    assert!(matches!(pool.get().await, Err(TcpPoolError::Closed)));
    let r = client.get("/echo/late").await;
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.headers["retry-after"], "1");
    assert_eq!(
        r.body,
        "Service unavailable: the service is shutting down, try again later\n"
    );
    // Nothing was opened for the late request, and closing twice is harmless.
    bounded("close again", pool.close()).await;
    assert_eq!(backend.seen().accepts, after.accepts);
    println!(
        "closed {} idle connections; accepts {} before and after the late request",
        before.idle, after.accepts
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_in_use_finishes_its_exchange_then_closes_and_the_future_waits_for_it() {
    let backend = Backend::start().await;
    let pool = pool(&backend, 2);
    let client = HttpClient::new(testkit::serve(app::eager(&pool)).await);
    let held = client.spawn_get("/hold/held");
    backend.wait_for("held", |s| s.holding == 1).await;
    // A second connection, idle when the pool closes.
    assert_eq!(client.get("/echo/warm").await.status, 200);
    wait_pool(&pool, "one idle", |s| s.idle == 1).await;

    let closing = tokio::spawn(pool.close());
    // The idle connection closes now; the held one stays open until it comes back.
    backend
        .wait_for("the idle one closed", |s| s.open == 1)
        .await;
    let r = client.get("/echo/new").await;
    assert_eq!(r.status, 503, "a new request during the close: {r:?}");
    assert!(!closing.is_finished(), "resolved with a connection in use");

    backend.release();
    let r = held.await.expect("held request");
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "held"));
    bounded("close resolves once the held one is back", closing)
        .await
        .expect("close task");
    let s = pool.state();
    assert_eq!((s.connections, s.in_use), (0, 0), "{s:?}");
    assert_eq!(backend.wait_for("closed", |s| s.open == 0).await.open, 0);
    assert_eq!(
        backend.seen().accepts,
        2,
        "no connection opened after close"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkouts_waiting_when_the_pool_closes_fail_at_once() {
    let backend = Backend::start().await;
    let pool = pool(&backend, 1);
    let client = HttpClient::new(testkit::serve(app::eager(&pool)).await);
    let held = client.spawn_get("/hold/held");
    backend.wait_for("held", |s| s.holding == 1).await;
    let waiters: Vec<_> = (0..5)
        .map(|i| client.spawn_get(&format!("/echo/w{i}")))
        .collect();
    wait_pool(&pool, "the requests wait", |s| s.gets >= 6).await;
    let waiting_get = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.get().await.map(drop) })
    };
    wait_pool(&pool, "the get waits", |s| s.gets >= 7).await;

    let closing = tokio::spawn(pool.close());
    for w in waiters {
        let r = bounded("a waiting request", w).await.expect("request");
        assert_eq!(r.status, 503, "{r:?}");
    }
    let got = bounded("the waiting get", waiting_get).await.expect("task");
    assert!(matches!(got, Err(TcpPoolError::Closed)), "{got:?}");
    assert!(!closing.is_finished());
    backend.release();
    assert_eq!(held.await.expect("held").body, "held");
    bounded("close", closing).await.expect("close task");
    assert_eq!(backend.seen().accepts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_pool_of_several_endpoints_closes_all_and_refuses_a_new_set() {
    let (a, b) = (Backend::start().await, Backend::start().await);
    let pool = TcpPool::builder(a.addr_string())
        .endpoint(b.addr_string())
        .max_size(2)
        .min_idle(1)
        .build()
        .expect("pool");
    a.wait_for("min_idle open", |s| s.open == 1).await;
    b.wait_for("min_idle open", |s| s.open == 1).await;
    let mut conn = pool.get().await.expect("checkout");
    conn.write_all(b"ECHO x\n").await.expect("write");
    let closing = tokio::spawn(pool.close());
    let e = pool.set_endpoints([a.addr_string()]).unwrap_err();
    assert!(matches!(e, TcpPoolError::Closed), "{e:?}");
    assert_eq!(pool.endpoints().len(), 2);
    // The connection in use is closed when it comes back, even with its reply unread.
    drop(conn);
    bounded("close", closing).await.expect("close task");
    a.wait_for("a closed", |s| s.open == 0).await;
    b.wait_for("b closed", |s| s.open == 0).await;
    let s = pool.state();
    assert!(
        s.closed && s.connections == 0 && s.endpoints.iter().all(|e| e.connections == 0),
        "{s:?}"
    );
}

/// The `shutdown` example's order: the server stops accepting and finishes its in-flight
/// requests, then the pool closes, then nothing is open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_then_close_finishes_in_flight_requests_first() {
    let backend = Backend::start().await;
    let pool = pool(&backend, 4);
    let (addr, stop, server) = testkit::serve_until_stopped(app::eager(&pool)).await;
    let client = HttpClient::new(addr);
    let in_flight: Vec<_> = (0..3)
        .map(|i| client.spawn_get(&format!("/hold/f{i}")))
        .collect();
    backend.wait_for("3 in flight", |s| s.holding == 3).await;
    let _ = stop.send(());
    backend.release();
    for (i, h) in in_flight.into_iter().enumerate() {
        let r = bounded("in-flight request", h).await.expect("request");
        assert_eq!((r.status.as_u16(), r.body), (200, format!("f{i}")));
    }
    bounded("server", server)
        .await
        .expect("task")
        .expect("serve");
    assert!(!pool.state().closed);
    bounded("close", pool.close()).await;
    assert_eq!(backend.wait_for("closed", |s| s.open == 0).await.open, 0);
    assert_eq!(pool.state().connections, 0);
}

/// A checkout that was probing a connection when the pool closed gets `Closed`, not the
/// connection, and the connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_probing_when_the_pool_closes_gets_closed_and_its_connection_closes() {
    use std::sync::Arc;
    use tokio::sync::Notify;
    let backend = Backend::start().await;
    let (probing, go) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let pool = {
        let (probing, go) = (probing.clone(), go.clone());
        TcpPool::builder(backend.addr_string())
            .health_check(move |_stream: &mut axum_tcp_pool::BackendStream| {
                let (probing, go) = (probing.clone(), go.clone());
                Box::pin(async move {
                    probing.notify_one();
                    go.notified().await;
                    Ok(())
                }) as axum_tcp_pool::ProbeFuture<'_>
            })
            .build()
            .expect("pool")
    };
    let client = HttpClient::new(testkit::serve(app::eager(&pool)).await);
    let request = client.spawn_get("/echo/probed");
    bounded("the probe runs", probing.notified()).await;
    let closing = tokio::spawn(pool.close());
    go.notify_one();
    let r = bounded("the request", request).await.expect("request");
    assert_eq!(r.status, 503, "{r:?}");
    bounded("close", closing).await.expect("close task");
    assert_eq!(backend.wait_for("closed", |s| s.open == 0).await.accepts, 1);
    assert_eq!(
        backend.seen().lines,
        0,
        "the connection was handed to the handler"
    );
}
