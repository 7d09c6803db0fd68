//! The clean-connection rule: what is tracked on a checked-out connection, the reasons it may
//! be closed for, the one verdict, and the cancellation scope.
//!
//! [`TcpConnection`](crate::TcpConnection) feeds its I/O into a [`Tracker`] and calls
//! [`Tracker::on_drop`] when dropped; the pool's return path reads [`Tracker::marked`] and,
//! if nothing is marked, looks at the socket for unread bytes ([`returned`]). The layer's
//! response future and [`Guarded`] drop unfinished work inside [`scope::abandon`].

mod reason;
pub(crate) mod scope;
mod tracker;

pub use reason::DiscardReason;
pub use scope::Guarded;
pub(crate) use tracker::{Frames, Tracker};

use crate::transport::{BackendStream, NotClean};

/// The verdict when a connection comes back to the pool: the reason it was marked with, or,
/// if none, what a non-blocking look at the socket finds (unread bytes, end-of-file, an
/// error). `None`: clean, it may be reused.
///
/// The look is skipped when the handler's last read was short on a plain socket: the receive
/// queue was empty then, so only bytes that arrived since could be waiting, and those are
/// what every checkout's peek catches before the connection is handed out again. One system
/// call per request instead of two, for the usual buffered reader or codec.
pub(crate) fn returned(tracker: &Tracker, stream: &mut BackendStream) -> Option<DiscardReason> {
    if let Some(reason) = tracker.marked() {
        return Some(reason);
    }
    if tracker.drained_by_last_read() && stream.reads_from_socket() {
        return None;
    }
    stream.idle_state().map(|found| idle_reason(&found))
}

/// The reason an idle check's finding closes a connection for, when it comes back.
pub(crate) fn idle_reason(found: &NotClean) -> DiscardReason {
    match found {
        NotClean::Eof => DiscardReason::Eof,
        NotClean::Unread => DiscardReason::UnreadBytes,
        NotClean::Failed(_) => DiscardReason::IoError,
    }
}
