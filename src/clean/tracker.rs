//! [`Tracker`]: what happened on a checked-out connection, and the one verdict on whether it
//! may be reused.

use std::io;
use std::task::Poll;

use crate::clean::reason::DiscardReason;
use crate::clean::scope;

/// The state of one connection's current checkout. It lives with the pooled connection, so
/// the guard handlers use ([`TcpConnection`](crate::TcpConnection)) and the pool's return
/// path read the same flags.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    /// Why the connection must not be reused; the first reason wins.
    dirty: Option<DiscardReason>,
    /// A read returned `Pending` and has not completed since.
    read_pending: bool,
    /// A write returned `Pending` and has not completed since.
    write_pending: bool,
    /// Bytes were written after the last successful read.
    written_since_read: bool,
    /// Any read or write was attempted during this checkout.
    used: bool,
    /// The last read returned less than it asked for: the socket's receive queue was empty
    /// right after it. (Not for TLS, whose session buffers what the socket held.)
    drained: bool,
}

impl Tracker {
    /// Forgets the previous checkout: called when the connection is handed out.
    pub(crate) fn reset(&mut self) {
        *self = Tracker::default();
    }

    /// Records why the connection must not be reused; the first reason wins.
    pub(crate) fn mark(&mut self, reason: DiscardReason) {
        self.dirty.get_or_insert(reason);
    }

    /// The verdict so far: `None` if the connection is clean as far as its I/O shows (the
    /// unread-bytes check still runs when it is returned).
    pub(crate) fn verdict(&self) -> Option<DiscardReason> {
        if let Some(reason) = self.dirty {
            return Some(reason);
        }
        if self.read_pending || self.write_pending {
            return Some(DiscardReason::Cancelled);
        }
        if self.written_since_read {
            return Some(DiscardReason::ReplyNotRead);
        }
        None
    }

    /// The final verdict, when the guard is dropped: a panic, the verdict so far, or, for a
    /// connection that was used, a cancellation (the request or [`Guarded`](crate::Guarded)
    /// future it belonged to was dropped unfinished). Recorded, so the return path sees it.
    pub(crate) fn on_drop(&mut self) -> Option<DiscardReason> {
        let reason = if std::thread::panicking() {
            Some(DiscardReason::Panic)
        } else if let Some(reason) = self.verdict() {
            Some(reason)
        } else if self.used && scope::abandoning() {
            Some(DiscardReason::Cancelled)
        } else {
            None
        };
        if let Some(reason) = reason {
            self.mark(reason);
        }
        self.dirty
    }

    /// Whether any read or write was attempted during this checkout.
    pub(crate) fn used(&self) -> bool {
        self.used
    }

    /// The mark left by [`on_drop`](Self::on_drop) or a failed check, if any.
    pub(crate) fn marked(&self) -> Option<DiscardReason> {
        self.dirty
    }

    /// Whether the last read found the socket's receive queue emptied: a short read, after
    /// which nothing was written. What arrived since is caught by the next checkout's peek.
    pub(crate) fn drained_by_last_read(&self) -> bool {
        self.drained && !self.written_since_read
    }

    /// Records a read's outcome: `filled` bytes arrived, into a buffer with room for `wanted`.
    pub(crate) fn read(&mut self, poll: &Poll<io::Result<()>>, filled: usize, wanted: usize) {
        self.used = true;
        match poll {
            Poll::Pending => self.read_pending = true,
            Poll::Ready(Err(_)) => {
                self.read_pending = false;
                self.drained = false;
                self.mark(DiscardReason::IoError);
            }
            Poll::Ready(Ok(())) => {
                self.read_pending = false;
                self.drained = filled < wanted;
                if filled > 0 {
                    self.written_since_read = false;
                } else if wanted > 0 {
                    self.mark(DiscardReason::Eof);
                }
            }
        }
    }

    /// Records a write's outcome. Writing nothing from a non-empty buffer means the socket
    /// can take no more (`write_all` turns it into `WriteZero`): not reusable.
    pub(crate) fn write(&mut self, poll: &Poll<io::Result<usize>>, empty: bool) {
        self.used = true;
        match poll {
            Poll::Pending => self.write_pending = true,
            Poll::Ready(result) => {
                self.write_pending = false;
                match result {
                    Err(_) => self.mark(DiscardReason::IoError),
                    Ok(0) if !empty => self.mark(DiscardReason::IoError),
                    Ok(0) => {}
                    Ok(_) => self.written_since_read = true,
                }
            }
        }
    }

    /// Records a flush's outcome.
    pub(crate) fn flushed(&mut self, result: &io::Result<()>) {
        if result.is_err() {
            self.mark(DiscardReason::IoError);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_order() {
        let mut t = Tracker::default();
        assert_eq!(t.verdict(), None);
        t.write(&Poll::Ready(Ok(3)), false);
        assert_eq!(t.verdict(), Some(DiscardReason::ReplyNotRead));
        t.read(&Poll::Pending, 0, 8);
        assert_eq!(t.verdict(), Some(DiscardReason::Cancelled));
        t.read(&Poll::Ready(Ok(())), 2, 8);
        assert!(t.drained_by_last_read(), "a short read drains");
        assert_eq!(t.verdict(), None);
        t.read(&Poll::Ready(Ok(())), 0, 8);
        assert_eq!(t.verdict(), Some(DiscardReason::Eof));
        t.mark(DiscardReason::Explicit);
        assert_eq!(
            t.verdict(),
            Some(DiscardReason::Eof),
            "the first reason wins"
        );
    }

    #[test]
    fn a_used_connection_dropped_in_an_abandoned_scope_is_cancelled() {
        let mut used = Tracker::default();
        used.read(&Poll::Ready(Ok(())), 1, 1);
        assert!(!used.drained_by_last_read(), "a full read may leave bytes");
        let mut unused = Tracker::default();
        scope::abandon(|| {
            assert_eq!(used.on_drop(), Some(DiscardReason::Cancelled));
            assert_eq!(unused.on_drop(), None);
        });
        let mut outside = Tracker::default();
        outside.read(&Poll::Ready(Ok(())), 1, 1);
        assert_eq!(outside.on_drop(), None);
    }
}
