//! [`TcpPoolLayer`]: the tower layer, configuration only.

use std::fmt;

use tower_layer::Layer;

use crate::{TcpPool, TcpPoolService};

/// A tower [`Layer`] that gives every request a connection from a [`TcpPool`], for the
/// [`TcpConnection`](crate::TcpConnection) extractor.
///
/// - **Eager** (the default, [`TcpPoolLayer::new`]): the connection is checked out before the
///   inner service runs. If the checkout fails, the inner service is never called and the
///   client gets the error response (`503` or `502`, see the
///   [crate docs](crate#errors-and-http-responses)).
/// - **Lazy** ([`TcpPoolLayer::lazy`]): the request carries the pool, and the connection is
///   checked out only when a handler extracts `TcpConnection`. Routes that do not need the
///   backend open nothing, and a handler taking `Option<TcpConnection>` or
///   `Result<TcpConnection, TcpPoolError>` can degrade gracefully when the backend is down.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), axum_tcp_pool::TcpPoolError> {
/// use axum::{routing::get, Router};
/// use axum_tcp_pool::{TcpConnection, TcpPool, TcpPoolLayer};
///
/// async fn handler(_conn: TcpConnection) -> &'static str { "ok" }
///
/// let pool = TcpPool::builder("127.0.0.1:6379").build()?;
/// let eager: Router = Router::new().route("/", get(handler)).layer(TcpPoolLayer::new(pool.clone()));
/// let lazy: Router = Router::new().route("/", get(handler)).layer(TcpPoolLayer::new(pool).lazy());
/// # Ok(()) }
/// ```
///
/// The layer's marker `M` is its pool's: a layer over a `TcpPool<Cache>` serves handlers that
/// take `TcpConnection<Cache>`, and layers of different markers stack on one router (see
/// [several pools in one router](crate#several-pools-in-one-router)).
pub struct TcpPoolLayer<M = ()> {
    pool: TcpPool<M>,
    lazy: bool,
}

impl<M> Clone for TcpPoolLayer<M> {
    fn clone(&self) -> Self {
        TcpPoolLayer {
            pool: self.pool.clone(),
            lazy: self.lazy,
        }
    }
}

impl<M> fmt::Debug for TcpPoolLayer<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpPoolLayer")
            .field("pool", &self.pool)
            .field("lazy", &self.lazy)
            .finish()
    }
}

impl<M> TcpPoolLayer<M> {
    /// An eager layer over `pool`: each request checks a connection out before the inner
    /// service is called.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), axum_tcp_pool::TcpPoolError> {
    /// let pool = axum_tcp_pool::TcpPool::builder("127.0.0.1:6379").build()?;
    /// let layer = axum_tcp_pool::TcpPoolLayer::new(pool);
    /// assert!(!layer.is_lazy());
    /// # Ok(()) }
    /// ```
    pub fn new(pool: TcpPool<M>) -> Self {
        TcpPoolLayer { pool, lazy: false }
    }

    /// Switches to lazy checkout: a connection is checked out only when a handler extracts
    /// [`TcpConnection`](crate::TcpConnection).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), axum_tcp_pool::TcpPoolError> {
    /// let pool = axum_tcp_pool::TcpPool::builder("127.0.0.1:6379").build()?;
    /// assert!(axum_tcp_pool::TcpPoolLayer::new(pool).lazy().is_lazy());
    /// # Ok(()) }
    /// ```
    pub fn lazy(mut self) -> Self {
        self.lazy = true;
        self
    }

    /// Whether this layer checks out lazily.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), axum_tcp_pool::TcpPoolError> {
    /// let pool = axum_tcp_pool::TcpPool::builder("127.0.0.1:6379").build()?;
    /// assert!(!axum_tcp_pool::TcpPoolLayer::new(pool).is_lazy());
    /// # Ok(()) }
    /// ```
    pub fn is_lazy(&self) -> bool {
        self.lazy
    }

    /// The pool this layer checks out from.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), axum_tcp_pool::TcpPoolError> {
    /// let pool = axum_tcp_pool::TcpPool::builder("127.0.0.1:6379").build()?;
    /// let layer = axum_tcp_pool::TcpPoolLayer::new(pool);
    /// assert_eq!(layer.pool().state().in_use, 0);
    /// # Ok(()) }
    /// ```
    pub fn pool(&self) -> &TcpPool<M> {
        &self.pool
    }
}

impl<S, M> Layer<S> for TcpPoolLayer<M> {
    type Service = TcpPoolService<S, M>;

    fn layer(&self, inner: S) -> Self::Service {
        TcpPoolService::new(inner, self.pool.clone(), self.lazy)
    }
}
