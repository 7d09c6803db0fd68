//! [`LazyConnection`]: an extractor that checks out only when the handler asks, so a handler
//! can read its body first.

use std::any::type_name;
use std::fmt;

use axum_core::extract::FromRequestParts;
use http::request::Parts;

use crate::error::TcpPoolError;
use crate::middleware::slot::{self, Slot, Taken};
use crate::pool::TcpConnection;

/// What leak detection reports of the request a lazy checkout is made for.
struct Request {
    method: http::Method,
    uri: http::Uri,
}

/// A connection not checked out yet: [`get`](Self::get) checks it out. Take it before the
/// body (`conn: LazyConnection, body: Bytes`) and call `get` after the body has arrived: a
/// slow upload then holds no pool connection.
///
/// Under a lazy [`TcpPoolLayer`](crate::TcpPoolLayer) nothing is checked out until `get`.
/// Under an eager one the connection was checked out before the handler ran, and `get` hands
/// it over (the upload held it, as it holds a [`TcpConnection`] extracted before the body
/// under either layer: put a request-body timeout, such as tower-http's
/// `RequestBodyTimeoutLayer`, in front). Rejections are those of [`TcpConnection`]'s
/// extractor: no layer of marker `M` (`500`), taken twice in one request (`500`).
///
/// ```
/// use axum::{body::Bytes, extract::Path};
/// use axum_tcp_pool::{LazyConnection, TcpPoolError};
/// use tokio::io::AsyncWriteExt;
///
/// async fn put(Path(key): Path<String>, conn: LazyConnection, body: Bytes) -> Result<(), TcpPoolError> {
///     let mut conn = conn.get().await?; // the body has arrived: check out now
///     conn.write_all(format!("SET {key} {}\n", body.len()).as_bytes()).await?;
///     # conn.discard();
///     Ok(())
/// }
/// # let _ = axum::Router::<()>::new().route("/kv/{key}", axum::routing::put(put));
/// ```
pub struct LazyConnection<M = ()> {
    taken: Taken<M>,
    /// The request, for leak detection (only when it is on and nothing is checked out yet).
    request: Option<Request>,
}

impl<M> LazyConnection<M> {
    /// Checks the connection out (or hands over the one an eager layer checked out).
    ///
    /// # Errors
    ///
    /// Those of [`TcpPool::get`](crate::TcpPool::get): `CheckoutTimeout` (`503`) and
    /// `BackendUnreachable` (`502`).
    ///
    /// # Cancellation
    ///
    /// Cancel-safe, as [`TcpPool::get`](crate::TcpPool::get) is.
    ///
    /// ```no_run
    /// # async fn f(conn: axum_tcp_pool::LazyConnection) -> Result<(), axum_tcp_pool::TcpPoolError> {
    /// let conn = conn.get().await?;
    /// # Ok(()) }
    /// ```
    pub async fn get(self) -> Result<TcpConnection<M>, TcpPoolError> {
        let request = self.request.as_ref().map(|r| (&r.method, &r.uri));
        self.taken.connection(request).await
    }
}

impl<M> fmt::Debug for LazyConnection<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.taken {
            Taken::Ready(_) => "checked out",
            Taken::Pool(_) => "not checked out",
        };
        f.debug_struct("LazyConnection")
            .field("marker", &type_name::<M>())
            .field("state", &state)
            .finish()
    }
}

impl<S, M> FromRequestParts<S> for LazyConnection<M>
where
    S: Send + Sync,
    M: 'static,
{
    type Rejection = TcpPoolError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let taken = Slot::<M>::take(parts).inspect_err(|err| {
            if let TcpPoolError::MissingLayer = err {
                slot::log_missing_layer::<M>("LazyConnection");
            }
        })?;
        let request = match &taken {
            Taken::Pool(pool) if pool.leak_detection() => Some(Request {
                method: parts.method.clone(),
                uri: parts.uri.clone(),
            }),
            _ => None,
        };
        Ok(LazyConnection { taken, request })
    }
}
