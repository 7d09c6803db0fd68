//! [`TcpPoolLayer`]: the tower layer, configuration only.

use std::fmt;

use tower_layer::Layer;

use crate::middleware::service::TcpPoolService;
use crate::pool::TcpPool;

/// A tower [`Layer`] that gives each request a connection from a [`TcpPool`], for the
/// [`TcpConnection`](crate::TcpConnection) and [`LazyConnection`](crate::LazyConnection)
/// extractors.
///
/// - **Eager** ([`TcpPoolLayer::new`]): checks out before the inner service runs; if that
///   fails the inner service is not called and the client gets `503` or `502`.
/// - **Lazy** ([`lazy`](Self::lazy)): checks out when a handler extracts the connection, so
///   routes that do not use it open nothing and `Option<TcpConnection>` can answer without
///   the backend.
///
/// Put it on the routes that talk to the backend with `route_layer`: with `layer` on a whole
/// router an eager layer checks out for every request, unknown paths included (a `404`
/// becomes a `502` while the backend is down). An eager layer holds the connection while the
/// request body arrives; handlers that read a body should take
/// [`LazyConnection`](crate::LazyConnection).
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
/// let eager: Router = Router::new().route("/", get(handler)).route_layer(TcpPoolLayer::new(pool.clone()));
/// let lazy: Router = Router::new().route("/", get(handler)).route_layer(TcpPoolLayer::new(pool).lazy());
/// # Ok(()) }
/// ```
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
