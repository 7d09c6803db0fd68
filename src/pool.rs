//! [`TcpPool`]: the cheap, cloneable handle to a pool of TCP connections.

use std::fmt;
use std::future::{poll_fn, Future};
use std::marker::PhantomData;
use std::pin::{pin, Pin};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use tokio::time::{sleep_until, Sleep};
use tracing::Instrument;

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
/// The type parameter `M` is a marker naming the pool, for apps with
/// [several pools in one router](crate#several-pools-in-one-router): a handler taking
/// [`TcpConnection<M>`](TcpConnection) gets its connection from the layer over the
/// `TcpPool<M>`. It defaults to `()`, and [`with_marker`](Self::with_marker) sets it. It costs
/// nothing at run time and puts no bounds on `M` (any `'static` type will do, typically an
/// empty enum).
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
pub struct TcpPool<M = ()> {
    pub(crate) pool: bb8::Pool<TcpManager>,
    pub(crate) shared: Arc<Shared>,
    marker: PhantomData<fn() -> M>,
}

/// Every clone is the same pool, whatever `M` is (no `M: Clone` bound).
impl<M> Clone for TcpPool<M> {
    fn clone(&self) -> Self {
        TcpPool {
            pool: self.pool.clone(),
            shared: self.shared.clone(),
            marker: PhantomData,
        }
    }
}

impl TcpPool {
    pub(crate) fn new(pool: bb8::Pool<TcpManager>, shared: Arc<Shared>) -> Self {
        TcpPool {
            pool,
            shared,
            marker: PhantomData,
        }
    }

    /// Starts configuring a pool for `addr`: `"host:port"` (the host name is resolved again
    /// on every connect), or `"unix:/path/to.sock"` for a Unix domain socket. See
    /// [`TcpPoolBuilder`] for the settings and their defaults.
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
}

impl<M> TcpPool<M> {
    /// The same pool, with the marker type `N`: its layer puts connections into requests
    /// for handlers that take [`TcpConnection<N>`](TcpConnection). A free conversion (the
    /// handle is moved, nothing is copied); clones keep their own marker.
    ///
    /// See [several pools in one router](crate#several-pools-in-one-router).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), axum_tcp_pool::TcpPoolError> {
    /// use axum_tcp_pool::TcpPool;
    ///
    /// /// The cache's pool.
    /// enum Cache {}
    ///
    /// let cache: TcpPool<Cache> = TcpPool::builder("127.0.0.1:11211")
    ///     .name("cache")
    ///     .build()?
    ///     .with_marker();
    /// assert_eq!(cache.name(), "cache");
    /// # Ok(()) }
    /// ```
    pub fn with_marker<N>(self) -> TcpPool<N> {
        TcpPool {
            pool: self.pool,
            shared: self.shared,
            marker: PhantomData,
        }
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
    ///   while this call waits fails and no connection is in use elsewhere that could be
    ///   returned to it (it does not wait out the checkout timeout). An attempt that started
    ///   before this call (say, while the backend was down) does not fail it: a new attempt
    ///   is made for it if none is under way, within the same `checkout_timeout`.
    ///
    /// # Cancellation
    ///
    /// Cancel-safe: dropping the future never loses a connection. A connection that was being
    /// probed by the health check when the future was dropped is closed.
    ///
    /// # Tracing
    ///
    /// Each call runs in a `debug` span named `tcp_pool.checkout` with the fields `pool` (the
    /// [name](Self::name)), `addr`, and, recorded when it ends, `wait_us` (microseconds from the call
    /// to its outcome) and `outcome` (`ok`, `timeout` or `unreachable`; a cancelled checkout
    /// records neither). When no subscriber wants it (none installed, or none at `debug` for
    /// this crate), no span is made: nothing is formatted or allocated and the clock is not
    /// read, at the cost of a level check (about 30 instructions per checkout, counted with
    /// callgrind, out of about 1,850).
    ///
    /// ```no_run
    /// # async fn f(pool: axum_tcp_pool::TcpPool) -> Result<(), axum_tcp_pool::TcpPoolError> {
    /// use tokio::io::AsyncWriteExt;
    /// let mut conn = pool.get().await?;
    /// conn.write_all(b"PING\r\n").await?;
    /// # Ok(()) }
    /// ```
    pub async fn get(&self) -> Result<TcpConnection<M>, TcpPoolError> {
        // Only a subscriber that may want `debug` pays for the span. (With none set, even a
        // disabled span costs a few hundred instructions when tracing's `log` fallback is
        // compiled in, as axum's default features do.)
        if tracing::Level::DEBUG <= tracing::level_filters::LevelFilter::current() {
            let span = tracing::debug_span!(
                "tcp_pool.checkout",
                pool = %self.name(),
                addr = %self.addr(),
                wait_us = tracing::field::Empty,
                outcome = tracing::field::Empty,
            );
            if !span.is_disabled() {
                let start = Instant::now();
                let result = self.checkout().instrument(span.clone()).await;
                let wait_us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
                let outcome = match &result {
                    Ok(_) => "ok",
                    Err(TcpPoolError::CheckoutTimeout) => "timeout",
                    Err(_) => "unreachable",
                };
                span.record("wait_us", wait_us);
                span.record("outcome", outcome);
                return result;
            }
        }
        self.checkout().await
    }

    /// [`get`](Self::get), without its span.
    async fn checkout(&self) -> Result<TcpConnection<M>, TcpPoolError> {
        // Registered before the checkout starts, so no failure in between is missed.
        let mut failed = pin!(self.shared.connect_failed.notified());
        let mut since = self.shared.attempts_started();
        let mut checkout = pin!(self.pool.get_owned());
        // When this call began to wait (read only if it waits), and the deadline a restarted
        // checkout keeps (bb8 would give the restarted one a full `checkout_timeout` of its own).
        let mut waiting_since = None;
        let mut deadline: Option<Pin<Box<Sleep>>> = None;
        poll_fn(|cx| loop {
            if let Poll::Ready(result) = checkout.as_mut().poll(cx) {
                return Poll::Ready(match result {
                    Ok(conn) => Ok(TcpConnection::new(conn)),
                    Err(bb8::RunError::User(e)) => Err(e),
                    Err(bb8::RunError::TimedOut) => Err(TcpPoolError::CheckoutTimeout),
                });
            }
            if let Some(deadline) = deadline.as_mut() {
                if deadline.as_mut().poll(cx).is_ready() {
                    self.shared.counters.restart_timeouts.fetch_add(1, Relaxed);
                    return Poll::Ready(Err(TcpPoolError::CheckoutTimeout));
                }
            }
            let waiting_since = *waiting_since.get_or_insert_with(tokio::time::Instant::now);
            if failed.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            failed.set(self.shared.connect_failed.notified());
            // A connect attempt failed. With a connection in use elsewhere, one may be returned
            // to us: keep waiting. An idle one is no such hope: bb8 hands idle connections to
            // waiters, so one idle now is a brand-new connection not yet checked, and after
            // fresh connections kept failing their health check it is one more of the same.
            // (bb8 reports a failed check before it drops that connection, and a replacement
            // may already be open: counting all open connections kept this checkout waiting
            // through another round of failing connects.)
            let state = self.pool.state();
            if state.connections > state.idle_connections {
                continue;
            }
            // None in use: if an attempt made since we started waiting failed, the backend is
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
                self.shared.counters.restarts.fetch_add(1, Relaxed);
                let timeout = self.shared.config.checkout_timeout;
                deadline.get_or_insert_with(|| Box::pin(sleep_until(waiting_since + timeout)));
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

    /// The pool's name, as set with [`TcpPoolBuilder::name`], or else its address. It is the
    /// `pool` field of this crate's tracing spans and events and the `pool` label of its
    /// metrics.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), axum_tcp_pool::TcpPoolError> {
    /// use axum_tcp_pool::TcpPool;
    /// assert_eq!(TcpPool::builder("127.0.0.1:6379").build()?.name(), "127.0.0.1:6379");
    /// assert_eq!(TcpPool::builder("127.0.0.1:6379").name("sessions").build()?.name(), "sessions");
    /// # Ok(()) }
    /// ```
    pub fn name(&self) -> &str {
        self.shared.config.name()
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

impl<M> fmt::Debug for TcpPool<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpPool")
            .field("marker", &std::any::type_name::<M>())
            .field("config", &self.shared.config)
            .field("state", &self.state())
            .finish()
    }
}
