//! Rule 4: errors are responses that say what happened and leak nothing; the pool recovers.
//! Rule 6: after errors the pool serves `max_size` requests at once again.

use std::time::Duration;

use axum_tcp_pool::{TcpPool, TcpPoolError};
use futures_util::future::join_all;
use testkit::{app, assert_no_leak, serve, setup, HttpClient};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_pool_answers_503_with_retry_after_then_recovers() {
    let (backend, pool, client) = setup(
        |b| b.max_size(2).checkout_timeout(Duration::from_millis(100)),
        app::eager,
    )
    .await;
    let holders: Vec<_> = (0..2)
        .map(|i| client.spawn_get(&format!("/hold/h{i}")))
        .collect();
    backend.wait_for("pool exhausted", |s| s.holding == 2).await;
    let r = client.get("/echo/starved").await;
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(
        r.headers.get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    assert_no_leak(&r.body, &backend);
    assert_eq!(pool.state().gets_timed_out, 1);
    backend.release();
    for h in holders {
        assert_eq!(h.await.expect("holder").status, 200);
    }
    let r = client.get("/echo/recovered").await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "recovered"));
    assert_eq!(backend.seen().accepts, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_down_answers_502_promptly_then_recovers() {
    // A checkout timeout far beyond the test's bound: a 502 must come from the failed connect,
    // not from waiting the timeout out.
    let (backend, pool, client) = setup(
        |b| b.max_size(2).checkout_timeout(Duration::from_secs(3600)),
        app::eager,
    )
    .await;
    backend.stop().await;
    for _ in 0..3 {
        let r = client.get("/echo/x").await;
        assert_eq!(r.status, 502, "{r:?}");
        assert_no_leak(&r.body, &backend);
    }
    // One attempt failed; the reconnect backoff refused the others (no SYN).
    let s = pool.state();
    assert!(s.connect_failures >= 1, "{s:?}");
    assert_eq!(s.connect_failures + s.connects_backed_off, 3, "{s:?}");
    assert_eq!(pool.state().in_use, 0);
    backend.restart().await;
    // Within one backoff step.
    let (r, _) = client.get_when_back("/echo/back").await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "back"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_to_a_down_backend_all_fail_fast() {
    let (backend, pool, client) = setup(
        |b| b.max_size(2).checkout_timeout(Duration::from_secs(3600)),
        app::eager,
    )
    .await;
    backend.stop().await;
    let replies = join_all((0..20).map(|_| {
        let client = client.clone();
        async move { client.get("/echo/x").await }
    }))
    .await;
    assert!(replies.iter().all(|r| r.status == 502), "{replies:?}");
    assert_eq!(pool.state().in_use, 0);
}

/// A listener that never accepts, with its backlog full: connects to it hang.
fn blackhole() -> (
    socket2::Socket,
    Vec<std::net::TcpStream>,
    std::net::SocketAddr,
) {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    sock.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .expect("addr")
            .into(),
    )
    .expect("bind");
    sock.listen(0).expect("listen");
    let addr = sock.local_addr().expect("addr").as_socket().expect("inet");
    // Fill the accept queue; further SYNs are dropped.
    let mut fill = Vec::new();
    for _ in 0..4 {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        s.set_nonblocking(true).expect("nonblocking");
        let _ = s.connect(&addr.into());
        fill.push(std::net::TcpStream::from(s));
    }
    (sock, fill, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_answers_502() {
    let (_listener, _fill, addr) = blackhole();
    let pool = TcpPool::builder(addr.to_string())
        .connect_timeout(Duration::from_millis(200))
        .checkout_timeout(Duration::from_secs(3600))
        .build()
        .expect("pool");
    let client = HttpClient::new(serve(app::eager(&pool)).await);
    let r = client.get("/echo/x").await;
    assert_eq!(r.status, 502, "{r:?}");
    assert!(
        !r.body.contains("timed out") && !r.body.contains(&addr.to_string()),
        "{r:?}"
    );
    match pool.get().await {
        Err(TcpPoolError::BackendUnreachable(e)) => {
            assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}")
        }
        other => panic!("expected BackendUnreachable, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_layer_is_a_500_that_names_the_layer() {
    let client = HttpClient::new(serve(app::routes()).await);
    let r = client.get("/echo/x").await;
    assert_eq!(r.status, 500);
    assert!(r.body.contains("TcpPoolLayer"), "{r:?}");
    assert_eq!(client.get("/option").await.body, "none");
    assert_eq!(client.get("/result").await.body, "err 500");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extracting_twice_is_a_500_not_a_panic() {
    for router in [app::eager, app::lazy] {
        let (_backend, pool, client) = setup(|b| b, router).await;
        let r = client.get("/two").await;
        assert_eq!(r.status, 500, "{r:?}");
        assert!(r.body.contains("already extracted"), "{r:?}");
        assert_eq!(pool.state().in_use, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazy_option_and_result_degrade_gracefully_when_the_backend_is_down() {
    let (backend, _pool, client) =
        setup(|b| b.checkout_timeout(Duration::from_secs(3600)), app::lazy).await;
    assert_eq!(client.get("/option").await.body, "some");
    assert_eq!(client.get("/result").await.body, "ok");
    backend.stop().await;
    let r = client.get("/option").await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "none"));
    assert_eq!(client.get("/result").await.body, "err 502");
    let r = client.get("/echo/x").await;
    assert_eq!(r.status, 502);
    assert_no_leak(&r.body, &backend);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazy_option_is_none_when_the_pool_is_exhausted() {
    let (backend, _pool, client) = setup(
        |b| b.max_size(1).checkout_timeout(Duration::from_millis(50)),
        app::lazy,
    )
    .await;
    let holder = client.spawn_get("/hold/h");
    backend.wait_for("holder", |s| s.holding == 1).await;
    assert_eq!(client.get("/option").await.body, "none");
    assert_eq!(client.get("/result").await.body, "err 503");
    backend.release();
    assert_eq!(holder.await.expect("holder").status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eager_checks_out_for_every_route_lazy_only_when_extracted() {
    let (backend, pool, client) = setup(|b| b, app::lazy).await;
    for _ in 0..5 {
        assert_eq!(client.get("/none").await.status, 200);
    }
    assert_eq!(
        backend.seen().accepts,
        0,
        "a lazy route that does not extract opened a connection"
    );
    assert_eq!(pool.state().gets, 0);
    assert_eq!(client.get("/echo/x").await.body, "x");
    assert_eq!(backend.seen().accepts, 1);

    let (backend, pool, client) = setup(|b| b, app::eager).await;
    assert_eq!(client.get("/none").await.status, 200);
    assert_eq!(
        pool.state().connections,
        1,
        "eager checks out before the handler"
    );
    backend
        .wait_for("the eager connection accepted", |s| s.accepts >= 1)
        .await;
    assert_eq!(backend.seen().accepts, 1);
    assert_eq!(
        pool.state().idle,
        1,
        "an unused eager connection goes back clean"
    );
    // Eager: a failed checkout never calls the handler.
    backend.stop().await;
    let r = client.get("/none").await;
    assert_eq!(r.status, 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_mix_of_failures_the_pool_serves_max_size_at_once() {
    let (backend, pool, client) = setup(
        |b| b.max_size(4).checkout_timeout(Duration::from_secs(30)),
        app::eager,
    )
    .await;
    // Panics, discards, unread bytes, never-read replies, cancellations, EOFs, timeouts.
    for path in [
        "/panic",
        "/discard",
        "/twice/t",
        "/noread/n",
        "/timeout",
        "/close",
        "/echo/ok",
    ] {
        let _ = client.try_get(path).await;
    }
    let cancelled = client.spawn_try_get("/hold/gone");
    backend.wait_for("holder", |s| s.holding == 1).await;
    cancelled.abort();
    let _ = cancelled.await;
    backend
        .wait_for("dirty connections closed", |s| s.holding == 0)
        .await;
    testkit::wait_pool(&pool, "in_use back to 0", |s| s.in_use == 0).await;
    // max_size requests at once, all holding a connection together. (Idle connections with
    // late bytes from the mix are discarded at checkout and replaced; the backend may count
    // a replacement before it notices the old one's EOF, so the pool's own count is checked.)
    let holders: Vec<_> = (0..4)
        .map(|i| client.spawn_get(&format!("/hold/m{i}")))
        .collect();
    backend
        .wait_for("4 concurrent holders", |s| s.holding == 4)
        .await;
    let s = pool.state();
    assert!(s.connections <= 4 && s.in_use == 4, "{s:?}");
    backend.release();
    for (i, h) in holders.into_iter().enumerate() {
        let r = h.await.expect("holder");
        assert_eq!((r.status.as_u16(), r.body), (200, format!("m{i}")));
    }
    let s = pool.state();
    assert_eq!(s.in_use, 0, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_checkout_misses_the_failure_of_a_connect_it_waited_for() {
    // Many checkouts against a down backend, a pool of one: each must be told of a failed
    // connect, including those that start while bb8 is still booking the previous failure.
    let backend = testkit::Backend::start().await;
    backend.stop().await;
    let pool = TcpPool::builder(backend.addr_string())
        .max_size(1)
        .checkout_timeout(Duration::from_secs(3600))
        .build()
        .expect("pool");
    for wave in 0..200 {
        let results = testkit::bounded(
            &format!("wave {wave} of checkouts against a down backend"),
            join_all((0..50).map(|_| pool.get())),
        )
        .await;
        for r in results {
            assert!(
                matches!(r, Err(TcpPoolError::BackendUnreachable(_))),
                "wave {wave}: {r:?}"
            );
        }
    }
    assert_eq!(pool.state().in_use, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_connect_does_not_fail_a_request_that_a_busy_connection_can_serve() {
    let (backend, pool, client) = setup(
        |b| b.max_size(2).checkout_timeout(Duration::from_secs(3600)),
        app::eager,
    )
    .await;
    let holder = client.spawn_get("/hold/first");
    backend
        .wait_for("first request holding", |s| s.holding == 1)
        .await;
    // New connections are refused from now on; the one in use stays healthy.
    backend.stop_listening().await;
    let waiter = client.spawn_get("/echo/second");
    // The waiter's own connect attempt fails...
    testkit::wait_pool(&pool, "the waiter's connect failed", |s| {
        s.connect_failures >= 1
    })
    .await;
    // ...but the busy connection comes back to it.
    backend.release();
    assert_eq!(holder.await.expect("holder").body, "first");
    let r = waiter.await.expect("waiter");
    assert_eq!(
        (r.status.as_u16(), r.body.as_str()),
        (200, "second"),
        "{r:?}"
    );
}
