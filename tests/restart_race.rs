//! A connect attempt that started while the backend was down and is seen failing after the
//! backend is back must not fail a checkout that began waiting after it started: with the
//! reconnect backoff off (with it on, that checkout fails with the attempt it waited for, as
//! a checkout waits for one connect attempt at most: see `tests/backoff.rs`).

#![cfg(target_os = "linux")]

use std::time::Duration;

use axum_tcp_pool::TcpPool;
use testkit::blackhole::Hole;
use testkit::bounded;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_connect_failure_does_not_fail_a_newer_checkout() {
    stale_failure_then_newer_checkout(Duration::from_secs(3600)).await;
}

/// The restarted checkout keeps the first one's deadline: a timeout too long to be one
/// (`Duration::MAX`) must not overflow there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_longest_checkout_timeout_survives_a_restarted_checkout() {
    stale_failure_then_newer_checkout(Duration::MAX).await;
}

async fn stale_failure_then_newer_checkout(checkout_timeout: Duration) {
    // The backend is "down" in a way that makes a connect hang: it listens but its accept
    // queue is full, so SYNs are dropped.
    let hole = Hole::new().await;
    let addr = hole.addr;
    let pool = TcpPool::builder(addr.to_string())
        .max_size(1)
        // Shorter than the first SYN retransmission (1 s): the hanging attempt times out.
        .connect_timeout(Duration::from_millis(600))
        .checkout_timeout(checkout_timeout)
        // The restarted checkout is the old behaviour, without the backoff.
        .reconnect_backoff(Duration::ZERO, Duration::ZERO)
        .build()
        .expect("valid pool");
    // The first checkout's attempt hangs.
    let first = tokio::spawn({
        let pool = pool.clone();
        async move { pool.get().await.map(drop) }
    });
    hole.wait_syn_sent().await;
    // The backend comes back: its queue drains and it accepts (and keeps) connections.
    let Hole {
        listener, fillers, ..
    } = hole;
    let listener = std::sync::Arc::new(listener);
    let acceptor = {
        let listener = listener.clone();
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            while let Ok((s, _)) = listener.accept() {
                kept.push(s);
                if kept.len() >= 16 {
                    break;
                }
            }
        })
    };
    // A checkout that starts now, while the stale attempt is still under way (and holds the
    // only slot), must get a connection when that attempt fails.
    let second = pool.get();
    let second = bounded("second checkout", second).await;
    let first = bounded("first checkout", first).await.expect("task");
    let s = pool.state();
    assert!(
        second.is_ok(),
        "the checkout that began after the backend came back failed: {second:?}; first: {first:?}; {s:?}"
    );
    assert!(s.connect_failures >= 1, "the stale attempt did fail: {s:?}");
    // The second checkout was started again inside bb8 (its stale wake-up found no attempt
    // under way); it is still one checkout.
    assert_eq!(s.gets, 2, "two calls to get, two checkouts: {s:?}");
    drop(second);
    drop(pool);
    drop(fillers);
    drop(acceptor);
}
