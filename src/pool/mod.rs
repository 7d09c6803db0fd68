//! The pool: [`TcpPool`] (the handle), [`TcpPoolBuilder`] (its settings), the checked-out
//! [`TcpConnection`], and the machinery under them: the bb8 manager of each endpoint, the
//! checkout with fail-fast and failover, and the health check.

mod build;
mod builder;
mod checkout;
mod config;
mod connection;
mod health;
pub(crate) mod leak;
mod manager;
mod pooled;
mod probe;
mod shared;

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Instant;

use tracing::Instrument;

pub use builder::TcpPoolBuilder;
pub use connection::TcpConnection;
pub use probe::{ProbeFn, ProbeFuture};

pub(crate) use config::{check_endpoints, Config};
pub(crate) use manager::{FailureSink, TcpManager};
pub(crate) use pooled::PooledStream;
pub(crate) use shared::Shared;

use crate::error::TcpPoolError;
use crate::replicas::Endpoints;
use crate::state::PoolState;

/// A pool of connections to a backend: one address, or [several](TcpPoolBuilder::endpoint)
/// with balancing, outlier ejection and failover. Cloning is cheap and every clone is the
/// same pool; it closes when the last handle and the last checked-out connection are gone.
///
/// Build one with [`TcpPool::builder`]; hand it to [`TcpPoolLayer`](crate::TcpPoolLayer), or
/// call [`get`](Self::get). `M` is a marker naming the pool when a router has
/// [several](Self::with_marker); it defaults to `()` and costs nothing at run time.
///
/// ```no_run
/// # #[tokio::main]
/// # async fn main() -> Result<(), axum_tcp_pool::TcpPoolError> {
/// use axum_tcp_pool::TcpPool;
///
/// let pool = TcpPool::builder("127.0.0.1:6379").max_size(16).build()?;
/// let conn = pool.get().await?;
/// println!("{:?}", pool.state());
/// # drop(conn); Ok(()) }
/// ```
pub struct TcpPool<M = ()> {
    set: Arc<Endpoints>,
    marker: PhantomData<fn() -> M>,
}

/// Every clone is the same pool, whatever `M` is (no `M: Clone` bound).
impl<M> Clone for TcpPool<M> {
    fn clone(&self) -> Self {
        TcpPool {
            set: self.set.clone(),
            marker: PhantomData,
        }
    }
}

impl<M> TcpPool<M> {
    fn new(set: Arc<Endpoints>) -> Self {
        TcpPool {
            set,
            marker: PhantomData,
        }
    }

    /// The same pool, with the marker type `N`: for apps with several pools in one router.
    /// Its layer serves handlers that take [`TcpConnection<N>`](TcpConnection); the compiler
    /// keeps one pool's connections from being used as another's.
    ///
    /// A handler asking for a marker whose layer is not on its route gets
    /// [`MissingLayer`](TcpPoolError::MissingLayer) (`500`) at run time. Two layers of one
    /// marker on a route check out once (the outer one provides).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), axum_tcp_pool::TcpPoolError> {
    /// use axum::{routing::get, Router};
    /// use axum_tcp_pool::{TcpConnection, TcpPool, TcpPoolLayer};
    ///
    /// enum Cache {}
    /// enum Legacy {}
    ///
    /// async fn both(cache: TcpConnection<Cache>, legacy: TcpConnection<Legacy>) -> &'static str {
    ///     "from both"
    /// }
    ///
    /// let cache: TcpPool<Cache> = TcpPool::builder("127.0.0.1:11211").name("cache").build()?.with_marker();
    /// let legacy: TcpPool<Legacy> = TcpPool::builder("127.0.0.1:7000").name("legacy").build()?.with_marker();
    /// let app: Router = Router::new()
    ///     .route("/both", get(both))
    ///     .route_layer(TcpPoolLayer::new(cache).lazy())
    ///     .route_layer(TcpPoolLayer::new(legacy).lazy());
    /// # Ok(()) }
    /// ```
    ///
    /// ```compile_fail,E0308
    /// # use axum_tcp_pool::TcpConnection;
    /// enum Cache {}
    /// enum Legacy {}
    /// fn to_legacy(conn: TcpConnection<Cache>) -> TcpConnection<Legacy> {
    ///     conn // error: expected `TcpConnection<Legacy>`, found `TcpConnection<Cache>`
    /// }
    /// ```
    pub fn with_marker<N>(self) -> TcpPool<N> {
        TcpPool::new(self.set)
    }

    /// Checks a connection out, for use outside a request (a background task, a start-up
    /// check); in a handler, take the [`TcpConnection`] extractor instead. The connection is
    /// health-checked first, and goes back to the pool when dropped if it is clean.
    ///
    /// # Errors
    ///
    /// - [`CheckoutTimeout`](TcpPoolError::CheckoutTimeout): no connection became free within
    ///   the `checkout_timeout`;
    /// - [`BackendUnreachable`](TcpPoolError::BackendUnreachable): a connect attempt made
    ///   while this call waited failed and no connection is in use elsewhere that could come
    ///   back to it (an attempt that started before this call does not fail it);
    /// - [`Closed`](TcpPoolError::Closed): the pool was [closed](Self::close), before or
    ///   while this call waited.
    ///
    /// # Cancellation
    ///
    /// Cancel-safe: dropping the future never loses a connection; one that was being probed
    /// by the health check is closed.
    ///
    /// # Tracing
    ///
    /// A `debug` span `tcp_pool.checkout` with the fields `pool`, `addr` (the first
    /// endpoint), `endpoint` (the one tried last, the one the connection goes to when `ok`),
    /// `wait_us` and `outcome` (`ok`, `timeout`, `unreachable`, `closed`). When no subscriber wants it, no span is
    /// made and the clock is not read.
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
                endpoint = tracing::field::Empty,
                wait_us = tracing::field::Empty,
                outcome = tracing::field::Empty,
            );
            if !span.is_disabled() {
                let start = Instant::now();
                let result = checkout::checkout(&self.set, Some(&span))
                    .instrument(span.clone())
                    .await;
                let wait_us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
                let outcome = match &result {
                    Ok(_) => "ok",
                    Err(TcpPoolError::CheckoutTimeout) => "timeout",
                    Err(TcpPoolError::Closed) => "closed",
                    Err(_) => "unreachable",
                };
                span.record("wait_us", wait_us);
                span.record("outcome", outcome);
                return result;
            }
        }
        checkout::checkout(&self.set, None).await
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
        self.set.state()
    }

    /// The address given to [`TcpPool::builder`] (the first endpoint, as configured).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), axum_tcp_pool::TcpPoolError> {
    /// let pool = axum_tcp_pool::TcpPool::builder("127.0.0.1:6379").build()?;
    /// assert_eq!(pool.addr(), "127.0.0.1:6379");
    /// # Ok(()) }
    /// ```
    pub fn addr(&self) -> &str {
        self.set.config.addr()
    }

    /// The pool's [name](TcpPoolBuilder::name), or else its address: the `pool` field of its
    /// spans and events and the `pool` label of its metrics.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), axum_tcp_pool::TcpPoolError> {
    /// use axum_tcp_pool::TcpPool;
    /// assert_eq!(TcpPool::builder("127.0.0.1:6379").name("sessions").build()?.name(), "sessions");
    /// # Ok(()) }
    /// ```
    pub fn name(&self) -> &str {
        self.set.config.name()
    }

    /// Whether leak detection is on.
    pub(crate) fn leak_detection(&self) -> bool {
        self.set.config.leak_threshold.is_some()
    }

    /// The configured `max_size`.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn max_size(&self) -> u32 {
        self.set.config.max_size()
    }

    /// Remembers `now` as the endpoints last exported as metrics; returns those exported
    /// before that are gone.
    #[cfg(feature = "metrics")]
    pub(crate) fn recorded_endpoints(&self, now: Vec<String>) -> Vec<String> {
        self.set.recorded_endpoints(now)
    }

    /// The addresses of the endpoints in the set now, in order.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), axum_tcp_pool::TcpPoolError> {
    /// let pool = axum_tcp_pool::TcpPool::builder("127.0.0.1:7001").endpoint("127.0.0.1:7002").build()?;
    /// assert_eq!(pool.endpoints(), ["127.0.0.1:7001", "127.0.0.1:7002"]);
    /// # Ok(()) }
    /// ```
    pub fn endpoints(&self) -> Vec<String> {
        self.set
            .current()
            .iter()
            .map(|e| e.shared.addr.to_string())
            .collect()
    }

    /// Closes the pool, for a graceful shutdown. At once: checkouts, new or waiting, fail with
    /// [`Closed`](TcpPoolError::Closed) (`503`), idle connections are closed, and the set of
    /// endpoints stops changing; connections in use are closed when they come back, connects
    /// under way when they end. The future resolves when no connection is open any more (it
    /// need not be awaited for the close to happen, and may be awaited from any handle, any
    /// number of times).
    ///
    /// Call it after the server has finished its in-flight requests
    /// (`axum::serve(..).with_graceful_shutdown(..)` returns then): see the `shutdown`
    /// example. A connection a task keeps forever keeps the future pending: bound it with a
    /// timeout.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), axum_tcp_pool::TcpPoolError> {
    /// use axum_tcp_pool::{TcpPool, TcpPoolError};
    ///
    /// let pool = TcpPool::builder("127.0.0.1:6379").build()?;
    /// pool.close().await;
    /// assert!(matches!(pool.get().await, Err(TcpPoolError::Closed)));
    /// assert!(pool.state().closed);
    /// # Ok(()) }
    /// ```
    pub fn close(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.set.close();
        let set = self.set.clone();
        async move { set.drained().await }
    }

    /// Replaces the pool's endpoints, at run time, without dropping a request: endpoints kept
    /// keep their idle connections; new ones start empty; a removed one takes no new checkout,
    /// its idle connections are closed at once and those in use when they come back. With
    /// [`resolve_endpoints`](TcpPoolBuilder::resolve_endpoints), these are the host names to
    /// resolve (resolved again at once).
    ///
    /// # Errors
    ///
    /// [`TcpPoolError::Config`] for an empty set, an address listed twice, or one that
    /// [`build`](TcpPoolBuilder::build) would refuse; the set is then left as it was.
    /// [`TcpPoolError::Closed`] once the pool is [closed](Self::close).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), axum_tcp_pool::TcpPoolError> {
    /// let pool = axum_tcp_pool::TcpPool::builder("127.0.0.1:7001").endpoint("127.0.0.1:7002").build()?;
    /// pool.set_endpoints(["127.0.0.1:7002", "127.0.0.1:7003"])?;
    /// assert_eq!(pool.endpoints(), ["127.0.0.1:7002", "127.0.0.1:7003"]);
    /// assert!(pool.set_endpoints(Vec::<String>::new()).is_err());
    /// # Ok(()) }
    /// ```
    pub fn set_endpoints<I>(&self, addrs: I) -> Result<(), TcpPoolError>
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let addrs: Vec<String> = addrs.into_iter().map(Into::into).collect();
        self.set.set_names(addrs)
    }
}

impl<M> fmt::Debug for TcpPool<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpPool")
            .field("marker", &std::any::type_name::<M>())
            .field("config", &self.set.config)
            .field("state", &self.state())
            .finish()
    }
}
