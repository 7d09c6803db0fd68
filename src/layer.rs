//! [`TcpPoolLayer`]: the tower layer, configuration only.

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
#[derive(Debug, Clone)]
pub struct TcpPoolLayer {
    pool: TcpPool,
    lazy: bool,
}

impl TcpPoolLayer {
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
    pub fn new(pool: TcpPool) -> Self {
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
    pub fn pool(&self) -> &TcpPool {
        &self.pool
    }
}

impl<S> Layer<S> for TcpPoolLayer {
    type Service = TcpPoolService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TcpPoolService::new(inner, self.pool.clone(), self.lazy)
    }
}
