//! The per-request slot that [`TcpPoolService`](crate::TcpPoolService) puts into the request's
//! extensions and the [`TcpConnection`] extractor empties.

use crate::{TcpConnection, TcpPool};

/// What a request carries: a connection checked out eagerly, or the pool to check one out
/// from lazily; `Taken` once a handler has extracted it.
pub(crate) enum Slot {
    Ready(TcpConnection),
    Lazy(TcpPool),
    Taken,
}

/// `http::Extensions` requires `Clone`, but a connection belongs to one request only: a copy
/// of the extensions gets an empty slot (a lazy one may still check out from the pool).
impl Clone for Slot {
    fn clone(&self) -> Self {
        match self {
            Slot::Lazy(pool) => Slot::Lazy(pool.clone()),
            Slot::Ready(_) | Slot::Taken => Slot::Taken,
        }
    }
}
