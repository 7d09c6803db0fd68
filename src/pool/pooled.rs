//! [`PooledStream`]: what bb8 holds for each connection.

use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;

use crate::clean::Tracker;
use crate::lifecycle::{Life, Lifecycle};
use crate::pool::leak::Lease;
use crate::pool::shared::Shared;
use crate::transport::BackendStream;

/// What bb8 holds for each connection: the stream, and the state that decides whether it
/// may be reused.
#[derive(Debug)]
pub(crate) struct PooledStream {
    pub(crate) stream: BackendStream,
    pub(crate) tracker: Tracker,
    /// Has served no request yet (no clean return after use).
    pub(crate) fresh: bool,
    /// Lent to a request or task by a checkout, not yet back (see `FailFast::lend`).
    pub(crate) lent: bool,
    /// The number of the connect attempt that opened it.
    pub(crate) attempt: u64,
    /// The endpoint it goes to (counted open there until dropped).
    pub(crate) endpoint: Arc<Shared>,
    /// Its deadline, idle time and sweep state (see the `lifecycle` module). Boxed: bb8
    /// moves this struct on every checkout and return, and each byte of it costs there.
    pub(crate) life: Box<Life>,
    /// Its leak-detection record, when leak detection is on.
    pub(crate) lease: Option<Arc<Lease>>,
}

impl PooledStream {
    pub(crate) fn new(stream: BackendStream, attempt: u64, endpoint: Arc<Shared>) -> PooledStream {
        endpoint.open.fetch_add(1, SeqCst);
        let life = Lifecycle::opened(&endpoint);
        let lease = endpoint.leaks.as_ref().map(|leaks| leaks.register());
        PooledStream {
            stream,
            tracker: Tracker::default(),
            fresh: true,
            lent: false,
            attempt,
            endpoint,
            life,
            lease,
        }
    }
}

impl Drop for PooledStream {
    fn drop(&mut self) {
        self.endpoint.open.fetch_sub(1, SeqCst);
        self.endpoint.lifecycle.dropped(&self.life);
        if let (Some(lease), Some(leaks)) = (&self.lease, &self.endpoint.leaks) {
            lease.returned(&self.endpoint);
            leaks.unregister(lease);
        }
        if self.endpoint.is_removed() {
            self.endpoint.drained.notify_waiters();
        }
    }
}
