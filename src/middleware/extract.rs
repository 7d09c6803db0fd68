//! The [`TcpConnection`] extractor: takes the connection (or checks one out, lazily) from the
//! slot the layer put into the request.

use std::any::type_name;
use std::convert::Infallible;

use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use http::request::Parts;

use crate::error::TcpPoolError;
use crate::middleware::slot::{self, Slot, Taken};
use crate::pool::TcpConnection;

/// Extracts the request's connection: `TcpConnection<M>` from the layer over the pool of
/// marker `M` (`()` unless [several pools](crate::TcpPool::with_marker) are in use).
///
/// Rejections ([`TcpPoolError`], whose response says what happened):
/// - no [`TcpPoolLayer`](crate::TcpPoolLayer) of marker `M` on the route: `500` naming the
///   missing layer (a run-time error: the compiler checks which pool a handler talks to, not
///   that the router has that pool's layer); the log names the marker type, the body does not;
/// - extracted a second time in the same request: `500`;
/// - lazy mode only, the checkout failed: `503` (pool exhausted) or `502` (backend down).
///
/// Take `Result<TcpConnection, TcpPoolError>` to handle these yourself, or
/// `Option<TcpConnection>` to get `None` for all of them.
///
/// ```
/// use axum_tcp_pool::{TcpConnection, TcpPoolError};
///
/// async fn strict(conn: TcpConnection) {}
/// async fn explicit(conn: Result<TcpConnection, TcpPoolError>) -> String {
///     match conn {
///         Ok(_) => "connected".into(),
///         // The error's text is for logs (it may name an address); the body stays generic.
///         Err(e) => {
///             tracing::warn!(error = %e, "no backend connection");
///             "no connection".into()
///         }
///     }
/// }
/// async fn degraded(conn: Option<TcpConnection>) -> &'static str {
///     if conn.is_some() { "fresh" } else { "served without the cache" }
/// }
/// # let _ = axum::Router::<()>::new()
/// #     .route("/a", axum::routing::get(strict))
/// #     .route("/b", axum::routing::get(explicit))
/// #     .route("/c", axum::routing::get(degraded));
/// ```
impl<S, M> FromRequestParts<S> for TcpConnection<M>
where
    S: Send + Sync,
    M: 'static,
{
    type Rejection = TcpPoolError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let result = take(parts).await;
        if let Err(TcpPoolError::MissingLayer) = result {
            slot::log_missing_layer::<M>("TcpConnection");
        }
        result
    }
}

/// Takes the connection out of the request's slot for marker `M`, or checks one out (lazy).
async fn take<M: 'static>(parts: &mut Parts) -> Result<TcpConnection<M>, TcpPoolError> {
    match Slot::<M>::take(parts)? {
        Taken::Ready(conn) => Ok(conn),
        Taken::Pool(pool) => {
            let conn = pool.get().await?;
            // Lazy: checked out for this request now (the layer names it when eager).
            conn.lent_to(&parts.method, &parts.uri);
            Ok(conn)
        }
    }
}

/// `Option<TcpConnection>`: `None` whenever no connection can be had (layer missing, already
/// extracted, backend unreachable, pool exhausted); the reason is logged with the marker type,
/// at `warn` for a missing layer or a second extraction, at `debug` otherwise.
impl<S, M> OptionalFromRequestParts<S> for TcpConnection<M>
where
    S: Send + Sync,
    M: 'static,
{
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        match take::<M>(parts).await {
            Ok(conn) => Ok(Some(conn)),
            Err(err @ (TcpPoolError::MissingLayer | TcpPoolError::AlreadyExtracted)) => {
                // A mistake in the router, not a bad day at the backend: make it visible.
                tracing::warn!(error = %err, marker = type_name::<M>(), "no TcpConnection for this request");
                Ok(None)
            }
            Err(err) => {
                tracing::debug!(error = %err, marker = type_name::<M>(), "no TcpConnection for this request");
                Ok(None)
            }
        }
    }
}
