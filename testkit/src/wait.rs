//! Bounded waits: every wait in a test ends, by its event or by failing the test.

use std::future::Future;
use std::time::Duration;

/// Upper bound for any single wait in a test: a generous safety net, not a timing assertion.
pub const BOUND: Duration = Duration::from_secs(20);

/// Runs `fut`, failing the test if it does not finish within [`BOUND`].
pub async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(BOUND, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {BOUND:?} waiting for: {what}"),
    }
}

/// Waits until the pool's state satisfies `cond`. The pool has no change events; its
/// bookkeeping trails the socket close the backend sees by a few instructions.
pub async fn wait_pool<M>(
    pool: &axum_tcp_pool::TcpPool<M>,
    what: &str,
    cond: impl Fn(&axum_tcp_pool::PoolState) -> bool,
) -> axum_tcp_pool::PoolState {
    bounded(what, async {
        loop {
            let s = pool.state();
            if cond(&s) {
                return s;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
}
