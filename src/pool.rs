//! [`TcpPool`]: the cheap, cloneable handle to a pool of TCP connections.

use std::fmt;
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;

use crate::manager::{Shared, TcpManager};
use crate::{PoolState, TcpConnection, TcpPoolBuilder, TcpPoolError};

/// A pool of TCP connections to one backend address.
///
/// Cloning is cheap (two reference counts) and every clone is the same pool. When the last
/// handle, and the last connection checked out of it, are dropped, its idle connections are
/// closed and its background tasks stop.
///
/// Build one with [`TcpPool::builder`]; hand it to [`TcpPoolLayer`](crate::TcpPoolLayer) to
/// give every request a connection, or call [`get`](Self::get) yourself.
///
/// ```no_run
/// # #[tokio::main]
/// # async fn main() -> Result<(), axum_tcp_pool::TcpPoolError> {
/// use axum_tcp_pool::TcpPool;
/// use std::time::Duration;
///
/// let pool = TcpPool::builder("127.0.0.1:6379")
///     .max_size(16)
///     .checkout_timeout(Duration::from_secs(2))
///     .build()?;
/// let conn = pool.get().await?;
/// println!("{:?}", pool.state());
/// # drop(conn); Ok(()) }
/// ```
#[derive(Clone)]
pub struct TcpPool {
    pub(crate) pool: bb8::Pool<TcpManager>,
    pub(crate) shared: Arc<Shared>,
}

impl TcpPool {
    /// Starts configuring a pool for `addr` (`"host:port"`). The host name is resolved again
    /// on every connect. See [`TcpPoolBuilder`] for the settings and their defaults.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), axum_tcp_pool::TcpPoolError> {
    /// let pool = axum_tcp_pool::TcpPool::builder("localhost:11211").max_size(4).build()?;
    /// assert_eq!(pool.state().connections, 0);
    /// # Ok(()) }
    /// ```
    pub fn builder(addr: impl Into<String>) -> TcpPoolBuilder {
        TcpPoolBuilder::new(addr.into())
    }

    /// Checks a connection out of the pool, for use outside a request (a background task, a
    /// startup check). Inside a handler, take the [`TcpConnection`] extractor instead.
    ///
    /// The connection is health-checked before it is handed out (see
    /// [`TcpPoolBuilder::health_check`]). It goes back to the pool when dropped if it is clean.
    ///
    /// # Errors
    ///
    /// - [`TcpPoolError::CheckoutTimeout`] if no connection became free within the
    ///   `checkout_timeout`;
    /// - [`TcpPoolError::BackendUnreachable`] as soon as a connect attempt that started
    ///   while this call waits fails and the pool has no open connection that could be
    ///   returned to it (it does not wait out the checkout timeout). An attempt that started
    ///   before this call (say, while the backend was down) does not fail it: a new attempt
    ///   is made for it if none is under way.
    ///
    /// # Cancellation
    ///
    /// Cancel-safe: dropping the future never loses a connection. A connection that was being
    /// probed by the health check when the future was dropped is closed.
    ///
    /// ```no_run
    /// # async fn f(pool: axum_tcp_pool::TcpPool) -> Result<(), axum_tcp_pool::TcpPoolError> {
    /// use tokio::io::AsyncWriteExt;
    /// let mut conn = pool.get().await?;
    /// conn.write_all(b"PING\r\n").await?;
    /// # Ok(()) }
    /// ```
    pub async fn get(&self) -> Result<TcpConnection, TcpPoolError> {
        // Registered before the checkout starts, so no failure in between is missed.
        let mut failed = pin!(self.shared.connect_failed.notified());
        let mut since = self.shared.attempts_started();
        let mut checkout = pin!(self.pool.get_owned());
        poll_fn(|cx| loop {
            if let Poll::Ready(result) = checkout.as_mut().poll(cx) {
                return Poll::Ready(match result {
                    Ok(conn) => Ok(TcpConnection::new(conn)),
                    Err(bb8::RunError::User(e)) => Err(e),
                    Err(bb8::RunError::TimedOut) => Err(TcpPoolError::CheckoutTimeout),
                });
            }
            if failed.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            failed.set(self.shared.connect_failed.notified());
            // A connect attempt failed. With a connection open, one may be returned to us:
            // keep waiting.
            if self.pool.state().connections != 0 {
                continue;
            }
            // None open: if an attempt made since we started waiting failed, the backend is
            // unreachable.
            if self.shared.failed_since(since) {
                return Poll::Ready(Err(self.shared.last_connect_failure()));
            }
            // Only an older attempt failed (it may have started while the backend was down
            // and be seen failing after it came back). If no attempt is under way, bb8 will
            // not start one for a checkout already waiting: start the checkout afresh, so
            // that one is made for it. (Bounded: only an attempt older than the new start
            // can wake it like this again, and none is under way.)
            if !self.shared.connecting() {
                since = self.shared.attempts_started();
                checkout.set(self.pool.get_owned());
            }
        })
        .await
    }

    /// A snapshot of the pool's sizes and counters.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), axum_tcp_pool::TcpPoolError> {
    /// let pool = axum_tcp_pool::TcpPool::builder("127.0.0.1:6379").build()?;
    /// let s = pool.state();
    /// assert_eq!((s.connections, s.idle, s.in_use), (0, 0, 0));
    /// # Ok(()) }
    /// ```
    pub fn state(&self) -> PoolState {
        PoolState::new(self.pool.state(), &self.shared.counters)
    }

    /// The address this pool connects to, as configured.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), axum_tcp_pool::TcpPoolError> {
    /// let pool = axum_tcp_pool::TcpPool::builder("127.0.0.1:6379").build()?;
    /// assert_eq!(pool.addr(), "127.0.0.1:6379");
    /// # Ok(()) }
    /// ```
    pub fn addr(&self) -> &str {
        &self.shared.config.addr
    }

    /// The underlying [`bb8::Pool`], for what this crate does not wrap.
    ///
    /// Connections checked out through it are [`PooledStream`](crate::manager::PooledStream)s
    /// whose I/O is *not* tracked by the clean-connection rule, and checkouts through it wait
    /// out the checkout timeout when the backend is down.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), axum_tcp_pool::TcpPoolError> {
    /// let pool = axum_tcp_pool::TcpPool::builder("127.0.0.1:6379").max_size(3).build()?;
    /// assert_eq!(pool.bb8().config().max_size, 3);
    /// # Ok(()) }
    /// ```
    pub fn bb8(&self) -> &bb8::Pool<TcpManager> {
        &self.pool
    }
}

impl fmt::Debug for TcpPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpPool")
            .field("config", &self.shared.config)
            .field("state", &self.state())
            .finish()
    }
}
