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
    /// Bytes were written after the last successful read (and not declared as needing no
    /// reply).
    written_since_read: bool,
    /// Any read or write was attempted during this checkout.
    used: bool,
    /// The last read returned less than it asked for, and nothing was written since: the
    /// socket's receive queue was empty right after it. (Not for TLS, whose session buffers
    /// what the socket held.)
    drained: bool,
    /// The pool's `write_only` setting: writes need no reply.
    write_only: bool,
    /// Set while a [`PooledFramed`](crate::PooledFramed) owns the connection: replies are
    /// counted in frames, and `written_since_read` is not used.
    frames: Option<Frames>,
}

/// What a [`PooledFramed`](crate::PooledFramed) knows and the socket cannot show, kept up to
/// date after each of its operations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Frames {
    /// Reply frames are still expected for the request frames sent.
    pub(crate) owed: bool,
    /// The codec's read buffer holds bytes not decoded into a frame yet.
    pub(crate) buffered: bool,
}

impl Tracker {
    /// Forgets the previous checkout: called when the connection is handed out, with the
    /// pool's `write_only` setting.
    pub(crate) fn reset(&mut self, write_only: bool) {
        *self = Tracker {
            write_only,
            ..Tracker::default()
        };
    }

    /// Whether writes need no reply on this pool (`write_only`).
    pub(crate) fn write_only(&self) -> bool {
        self.write_only
    }

    /// What was written so far needs no reply (`expect_no_reply`). Unread bytes are still
    /// found: a write keeps the return-time look at the socket on (see
    /// [`drained_by_last_read`](Self::drained_by_last_read)).
    pub(crate) fn no_reply_needed(&mut self) {
        self.written_since_read = false;
    }

    /// Counts replies in frames from now on, with this state (a `PooledFramed` took the
    /// connection, or did an operation). Whether a reply is owed is the frames' business:
    /// what was written but not answered before the first call is counted by the caller.
    pub(crate) fn count_frames(&mut self, frames: Frames) {
        self.frames = Some(frames);
    }

    /// Back to counting in bytes (the `PooledFramed` became a plain connection again): a
    /// frame still owed counts as a reply not read.
    pub(crate) fn count_bytes(&mut self, owed: bool) {
        self.frames = None;
        self.written_since_read = owed;
    }

    /// Whether a reply was owed in bytes: for a `PooledFramed` taking over the connection.
    pub(crate) fn reply_owed(&self) -> bool {
        self.frames.is_none() && self.written_since_read
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
        match self.frames {
            Some(Frames { owed: true, .. }) => Some(DiscardReason::ReplyNotRead),
            Some(Frames { buffered: true, .. }) => Some(DiscardReason::UnreadBytes),
            Some(_) => None,
            None if self.written_since_read => Some(DiscardReason::ReplyNotRead),
            None => None,
        }
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
    ///
    /// A write clears it, whether or not a reply is expected: a write-only exchange
    /// (`write_only`, `expect_no_reply`, `expect_replies(0)`) may still provoke bytes (an
    /// error reply), so the connection gets its look at the socket when it comes back.
    pub(crate) fn drained_by_last_read(&self) -> bool {
        self.drained
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
                    Ok(_) => {
                        self.drained = false;
                        if !self.write_only {
                            self.written_since_read = true;
                        }
                    }
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

    #[test]
    fn a_reply_not_needed_is_not_owed_but_the_socket_is_still_looked_at() {
        let mut t = Tracker::default();
        t.read(&Poll::Ready(Ok(())), 2, 8);
        assert!(t.drained_by_last_read());
        t.write(&Poll::Ready(Ok(3)), false);
        assert_eq!(t.verdict(), Some(DiscardReason::ReplyNotRead));
        t.no_reply_needed();
        assert_eq!(t.verdict(), None);
        assert!(
            !t.drained_by_last_read(),
            "bytes provoked by the write must be looked for when it comes back"
        );
        t.write(&Poll::Ready(Ok(3)), false);
        assert_eq!(
            t.verdict(),
            Some(DiscardReason::ReplyNotRead),
            "for what was written so far only"
        );
    }

    #[test]
    fn write_only_writes_owe_nothing_and_keep_the_look_at_the_socket() {
        let mut t = Tracker::default();
        t.reset(true);
        assert!(t.write_only());
        t.read(&Poll::Ready(Ok(())), 2, 8);
        t.write(&Poll::Ready(Ok(3)), false);
        assert_eq!(t.verdict(), None);
        assert!(!t.drained_by_last_read());
        t.write(&Poll::Pending, false);
        assert_eq!(t.verdict(), Some(DiscardReason::Cancelled));
        t.reset(false);
        assert!(!t.write_only(), "each checkout takes the pool's setting");
    }

    #[test]
    fn frames_replace_bytes_while_counted() {
        let mut t = Tracker::default();
        t.write(&Poll::Ready(Ok(3)), false);
        assert!(t.reply_owed());
        t.count_frames(Frames::default());
        assert!(!t.reply_owed());
        assert_eq!(t.verdict(), None, "the frames say what is owed");
        t.count_frames(Frames {
            owed: false,
            buffered: true,
        });
        assert_eq!(t.verdict(), Some(DiscardReason::UnreadBytes));
        t.count_frames(Frames {
            owed: true,
            buffered: true,
        });
        assert_eq!(t.verdict(), Some(DiscardReason::ReplyNotRead));
        t.read(&Poll::Pending, 0, 8);
        assert_eq!(
            t.verdict(),
            Some(DiscardReason::Cancelled),
            "a read in flight is a cancellation first"
        );
        t.read(&Poll::Ready(Ok(())), 2, 8);
        t.count_bytes(true);
        assert_eq!(t.verdict(), Some(DiscardReason::ReplyNotRead));
        t.count_bytes(false);
        assert_eq!(t.verdict(), None);
    }

    #[test]
    fn a_panic_wins_over_frames_owed() {
        let mut t = Tracker::default();
        t.count_frames(Frames {
            owed: true,
            buffered: false,
        });
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            struct OnDrop<'a>(&'a mut Tracker);
            impl Drop for OnDrop<'_> {
                fn drop(&mut self) {
                    self.0.on_drop();
                }
            }
            let _guard = OnDrop(&mut t);
            panic!("expected by the test");
        }));
        assert!(result.is_err());
        assert_eq!(t.marked(), Some(DiscardReason::Panic));
    }
}
