//! Rule 1: connections are reused, the backend never sees more than `max_size`, idle ones
//! close after `idle_timeout`, old ones are replaced, `min_idle` is refilled. Rule 6: no leaks.

use std::time::Duration;

use futures_util::future::join_all;
use testkit::{app, bounded, setup, Backend};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_requests_reuse_one_connection() {
    let (backend, pool, client) = setup(|b| b.max_size(4), app::eager).await;
    for i in 0..300 {
        let r = client.get(&format!("/echo/req{i}")).await;
        assert_eq!(
            (r.status.as_u16(), r.body.as_str()),
            (200, format!("req{i}").as_str())
        );
    }
    let seen = backend.seen();
    assert_eq!(
        seen.accepts, 1,
        "300 sequential requests opened {} connections",
        seen.accepts
    );
    let s = pool.state();
    assert_eq!((s.connections, s.idle, s.in_use), (1, 1, 0), "{s:?}");
    assert_eq!(s.discards.total(), 0, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_load_never_exceeds_max_size() {
    let (backend, pool, client) = setup(|b| b.max_size(4), app::eager).await;
    // 400 requests, 32 at a time, over a pool of 4.
    for wave in 0..10 {
        let replies = join_all((0..40).map(|i| {
            let client = client.clone();
            async move { client.get(&format!("/echo/w{wave}r{i}")).await }
        }))
        .await;
        for (i, r) in replies.iter().enumerate() {
            assert_eq!(r.status, 200, "{r:?}");
            assert_eq!(
                r.body,
                format!("w{wave}r{i}"),
                "a request got another request's reply"
            );
        }
    }
    let seen = backend.seen();
    assert!(
        seen.accepts <= 4,
        "backend accepted {} connections for max_size 4",
        seen.accepts
    );
    assert!(
        seen.max_open <= 4,
        "backend saw {} concurrent connections",
        seen.max_open
    );
    assert_eq!(pool.state().in_use, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_max_size_wait_for_a_free_connection() {
    let (backend, pool, client) = setup(
        |b| b.max_size(3).checkout_timeout(Duration::from_secs(60)),
        app::eager,
    )
    .await;
    let requests: Vec<_> = (0..9)
        .map(|i| client.spawn_get(&format!("/hold/h{i}")))
        .collect();
    // Three requests hold the three connections; six wait in the pool.
    backend
        .wait_for("3 requests holding", |s| s.holding == 3)
        .await;
    let s = pool.state();
    assert_eq!((s.connections, s.in_use), (3, 3), "{s:?}");
    for h in requests {
        let r = loop_release(&backend, h).await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    let seen = backend.seen();
    assert_eq!(seen.accepts, 3, "{seen:?}");
    assert!(seen.max_open <= 3, "{seen:?}");
    assert_eq!(pool.state().in_use, 0);
}

/// Awaits a request whose `HOLD` may still need releasing.
async fn loop_release(
    backend: &Backend,
    mut h: tokio::task::JoinHandle<testkit::Reply>,
) -> testkit::Reply {
    bounded("held request to finish", async {
        loop {
            tokio::select! {
                r = &mut h => return r.expect("request task"),
                _ = backend.wait_for("a holder", |s| s.holding > 0) => backend.release(),
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_above_min_idle_close_after_idle_timeout() {
    let (backend, pool, client) = setup(
        |b| b.max_size(4).idle_timeout(Some(Duration::from_millis(100))),
        app::eager,
    )
    .await;
    let replies = join_all((0..4).map(|i| {
        let client = client.clone();
        async move { client.get(&format!("/hold/x{i}")).await }
    }));
    let waiter = async {
        backend.wait_for("4 holders", |s| s.holding == 4).await;
        backend.release();
    };
    let (replies, ()) = tokio::join!(replies, waiter);
    assert!(replies.iter().all(|r| r.status == 200));
    // Shrink: with min_idle 0, every idle connection is closed by the reaper.
    backend
        .wait_for("idle connections closed", |s| s.open == 0)
        .await;
    let s = testkit::wait_pool(&pool, "reaped", |s| s.connections == 0).await;
    testkit::wait_pool(&pool, "reaper counted", |s| s.closed_idle_timeout >= 4).await;
    assert_eq!(s.idle, 0, "{s:?}");
    // And the pool grows again on demand.
    assert_eq!(client.get("/echo/again").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_idle_is_opened_and_refilled() {
    let (backend, pool, client) = setup(|b| b.max_size(4).min_idle(2), app::eager).await;
    backend.wait_for("min_idle opened", |s| s.open == 2).await;
    // Both idle connections are killed by the backend; the discard at checkout triggers a refill.
    backend.close_all().await;
    assert_eq!(client.get("/echo/after").await.status, 200);
    let seen = backend.wait_for("min_idle refilled", |s| s.open >= 2).await;
    assert!(seen.accepts >= 4, "{seen:?}");
    testkit::wait_pool(&pool, "min_idle idle again", |s| s.idle >= 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_older_than_max_lifetime_are_replaced() {
    let (backend, pool, client) = setup(
        |b| b.max_size(2).max_lifetime(Some(Duration::from_millis(100))),
        app::eager,
    )
    .await;
    assert_eq!(client.get("/echo/one").await.status, 200);
    assert_eq!(backend.seen().accepts, 1);
    // The reaper closes it once it is older than max_lifetime.
    backend
        .wait_for("expired connection closed", |s| s.open == 0)
        .await;
    assert_eq!(client.get("/echo/two").await.status, 200);
    assert_eq!(backend.seen().accepts, 2);
    testkit::wait_pool(&pool, "reaper counted", |s| s.closed_max_lifetime >= 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_pool_handle_closes_idle_connections() {
    let backend = Backend::start().await;
    let pool = axum_tcp_pool::TcpPool::builder(backend.addr_string())
        .min_idle(3)
        .build()
        .expect("pool");
    backend.wait_for("min_idle opened", |s| s.open == 3).await;
    drop(pool);
    backend
        .wait_for("idle connections closed", |s| s.open == 0)
        .await;
}
