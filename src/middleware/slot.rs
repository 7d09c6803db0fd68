//! The per-request slot that [`TcpPoolService`](crate::TcpPoolService) puts into the request's
//! extensions and the [`TcpConnection`] extractor empties.

use http::request::Parts;

use crate::error::TcpPoolError;
use crate::pool::{TcpConnection, TcpPool};

/// What a request carries: a connection checked out eagerly, or the pool to check one out
/// from lazily; `Taken` once a handler has extracted it.
///
/// Extensions are keyed by type, so each marker `M` has its own slot: layers over pools of
/// different markers on one router do not see each other's connections.
pub(crate) enum Slot<M> {
    Ready(TcpConnection<M>),
    Lazy(TcpPool<M>),
    Taken,
}

/// `http::Extensions` requires `Clone`, but a connection belongs to one request only: a copy
/// of the extensions gets an empty slot (a lazy one may still check out from the pool).
impl<M> Clone for Slot<M> {
    fn clone(&self) -> Self {
        match self {
            Slot::Lazy(pool) => Slot::Lazy(pool.clone()),
            Slot::Ready(_) | Slot::Taken => Slot::Taken,
        }
    }
}

/// What a handler takes out of the request's slot for marker `M`.
pub(crate) enum Taken<M> {
    /// Checked out already (eager layer).
    Ready(TcpConnection<M>),
    /// To check out from (lazy layer).
    Pool(TcpPool<M>),
}

impl<M> Taken<M> {
    /// The connection: the one checked out already, or one checked out now, lent to
    /// `request` (its method and target) for leak detection.
    pub(crate) async fn connection(
        self,
        request: Option<(&http::Method, &http::Uri)>,
    ) -> Result<TcpConnection<M>, TcpPoolError> {
        match self {
            Taken::Ready(conn) => Ok(conn),
            Taken::Pool(pool) => {
                let conn = pool.get().await?;
                if let Some((method, uri)) = request {
                    conn.lent_to(method, uri);
                }
                Ok(conn)
            }
        }
    }
}

impl<M: 'static> Slot<M> {
    /// Empties the request's slot for marker `M`: the connection, or the pool to check one
    /// out from. Fails if no layer of marker `M` put a slot there, or it was emptied before.
    pub(crate) fn take(parts: &mut Parts) -> Result<Taken<M>, TcpPoolError> {
        let slot = parts
            .extensions
            .get_mut::<Slot<M>>()
            .ok_or(TcpPoolError::MissingLayer)?;
        match std::mem::replace(slot, Slot::Taken) {
            Slot::Ready(conn) => Ok(Taken::Ready(conn)),
            Slot::Lazy(pool) => Ok(Taken::Pool(pool)),
            Slot::Taken => Err(TcpPoolError::AlreadyExtracted),
        }
    }
}

/// Logs, at `error`, which layer a strict extractor (`extractor<M>`) missed: the error and
/// its response cannot name the marker type.
pub(crate) fn log_missing_layer<M>(extractor: &str) {
    let marker = std::any::type_name::<M>();
    tracing::error!(
        marker,
        "{extractor}<{marker}> extracted on a route without a TcpPoolLayer over a TcpPool<{marker}>",
    );
}
