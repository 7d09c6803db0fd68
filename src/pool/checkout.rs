//! The checkout: bb8's `get`, raced against the pool's fail-fast watch.

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::task::Poll;

use tokio::time::{sleep_until, Instant, Sleep};

use crate::error::TcpPoolError;
use crate::failfast::Woken;
use crate::pool::connection::TcpConnection;
use crate::pool::manager::TcpManager;
use crate::pool::shared::Shared;

/// Checks a connection out of `pool`: bb8's own checkout, failed early by the fail-fast
/// watch when a connect attempt made for it fails and no connection could come back to it.
pub(crate) async fn checkout<M>(
    pool: &bb8::Pool<TcpManager>,
    shared: &Shared,
) -> Result<TcpConnection<M>, TcpPoolError> {
    // Registered before the checkout starts, so no failure in between is missed.
    let mut watch = pin!(shared.fail_fast.watch());
    let mut get = pin!(pool.get_owned());
    // When this call began to wait (read only if it waits), and the deadline a restarted
    // checkout keeps (bb8 would give the restarted one a full `checkout_timeout` of its own).
    let mut waiting_since = None;
    let mut deadline: Option<Pin<Box<Sleep>>> = None;
    poll_fn(|cx| loop {
        if let Poll::Ready(result) = get.as_mut().poll(cx) {
            return Poll::Ready(match result {
                Ok(mut conn) => {
                    conn.lent = true;
                    shared.fail_fast.lend();
                    Ok(TcpConnection::new(conn))
                }
                Err(bb8::RunError::User(e)) => Err(e),
                Err(bb8::RunError::TimedOut) => Err(TcpPoolError::CheckoutTimeout),
            });
        }
        if let Some(deadline) = deadline.as_mut() {
            if deadline.as_mut().poll(cx).is_ready() {
                shared.counters.restart_timed_out();
                return Poll::Ready(Err(TcpPoolError::CheckoutTimeout));
            }
        }
        let waiting_since = *waiting_since.get_or_insert_with(Instant::now);
        match watch.as_mut().poll_woken(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Woken::Recheck) => {}
            Poll::Ready(Woken::Fail(err)) => return Poll::Ready(Err(err)),
            Poll::Ready(Woken::Restart) => {
                watch.as_mut().restarted();
                get.set(pool.get_owned());
                shared.counters.restarted();
                if deadline.is_none() {
                    // No deadline for a timeout too long to be represented: the checkout
                    // then waits as long as bb8's own timeout lets it.
                    let timeout = shared.config.checkout_timeout;
                    deadline = waiting_since
                        .checked_add(timeout)
                        .map(|at| Box::pin(sleep_until(at)));
                }
            }
        }
    })
    .await
}
