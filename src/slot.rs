//! The per-request slot that [`TcpPoolService`](crate::TcpPoolService) puts into the request's
//! extensions and the [`TcpConnection`] extractor empties.

use crate::{TcpConnection, TcpPool};

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
