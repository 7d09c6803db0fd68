//! [`TcpPoolService`]: puts a connection (eager) or the pool (lazy) into each request.

use std::fmt;
use std::task::{Context, Poll};

use axum_core::response::{IntoResponse, Response};
use http::Request;
use tower_service::Service;

use crate::middleware::future::ResponseFuture;
use crate::middleware::slot::Slot;
use crate::pool::TcpPool;

/// The service made by [`TcpPoolLayer`](crate::TcpPoolLayer); see there for eager and lazy.
///
/// `poll_ready` is the inner service's. Checkout failures become responses (`503`, `502`),
/// so the error type stays the inner service's.
///
/// # Cancellation
///
/// Dropping the response future while it checks out never loses a connection. Dropping it
/// while the inner service runs closes every connection the request used, even between two
/// reads; so does an inner service that answers while still holding unfinished work (a
/// timeout layer between this one and the handler). See the
/// [clean-connection rule](crate::TcpConnection#the-clean-connection-rule).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), axum_tcp_pool::TcpPoolError> {
/// use axum_tcp_pool::{TcpPool, TcpPoolLayer, TcpPoolService};
/// use tower::{service_fn, Layer};
///
/// let pool = TcpPool::builder("127.0.0.1:6379").build()?;
/// let inner = service_fn(|_req: http::Request<String>| async {
///     Ok::<_, std::convert::Infallible>("hello")
/// });
/// let svc: TcpPoolService<_> = TcpPoolLayer::new(pool).lazy().layer(inner);
/// # Ok(()) }
/// ```
pub struct TcpPoolService<S, M = ()> {
    inner: S,
    pool: TcpPool<M>,
    lazy: bool,
}

impl<S: Clone, M> Clone for TcpPoolService<S, M> {
    fn clone(&self) -> Self {
        TcpPoolService {
            inner: self.inner.clone(),
            pool: self.pool.clone(),
            lazy: self.lazy,
        }
    }
}

impl<S: fmt::Debug, M> fmt::Debug for TcpPoolService<S, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpPoolService")
            .field("inner", &self.inner)
            .field("pool", &self.pool)
            .field("lazy", &self.lazy)
            .finish()
    }
}

impl<S, M> TcpPoolService<S, M> {
    pub(crate) fn new(inner: S, pool: TcpPool<M>, lazy: bool) -> Self {
        TcpPoolService { inner, pool, lazy }
    }

    /// The wrapped service.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), axum_tcp_pool::TcpPoolError> {
    /// # use tower::Layer;
    /// # let pool = axum_tcp_pool::TcpPool::builder("127.0.0.1:6379").build()?;
    /// let svc = axum_tcp_pool::TcpPoolLayer::new(pool).layer(42u8);
    /// assert_eq!(*svc.get_ref(), 42);
    /// # Ok(()) }
    /// ```
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, ReqBody, M> Service<Request<ReqBody>> for TcpPoolService<S, M>
where
    S: Service<Request<ReqBody>> + Clone,
    S::Response: IntoResponse,
    M: 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        // An outer layer of the same marker has provided for this request already: a second
        // checkout would hold two connections for one handler (and, eager, wait for the
        // second while holding the first).
        if req.extensions().get::<Slot<M>>().is_some() {
            return ResponseFuture::inner(self.inner.call(req));
        }
        if self.lazy {
            req.extensions_mut()
                .insert(Slot::<M>::Lazy(self.pool.clone()));
            return ResponseFuture::inner(self.inner.call(req));
        }
        // The inner service is called only after the checkout: keep the instance that
        // `poll_ready` readied, leave a fresh clone in its place.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::checkout::<M>(self.pool.clone().with_marker(), inner, req)
    }
}
