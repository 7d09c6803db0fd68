//! Fail-fast: a failed connect attempt fails the checkouts waiting for a connection at once
//! (`502`), instead of letting them wait out the checkout timeout (bb8 retries silently and
//! only ever reports a timeout).
//!
//! Connect attempts are numbered. A waiting checkout is failed only by an attempt that started
//! after it began to wait: a stale attempt, begun while the backend was down and seen failing
//! after it came back, must not fail a checkout the backend could now serve. When only a stale
//! attempt failed and none is under way, the checkout is restarted so that bb8 makes an
//! attempt for it.
//!
//! With the [reconnect backoff](backoff) on (the default), a checkout never waits for more
//! than one connect attempt: when only a stale attempt failed, it fails too instead of being
//! restarted (the restarted checkout would wait for a second attempt, which the backoff
//! would refuse or make the probe); failures are logged through [`outage`].
//!
//! The manager reports to this module ([`FailFast::begin_attempt`], [`Attempt::failed`],
//! [`FailFast::check_failed`]); the checkout watches it ([`Watch`]).

pub(crate) mod backoff;
pub(crate) mod outage;
pub(crate) mod throttle;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::*};
use std::sync::Mutex;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::sync::futures::Notified;
use tokio::sync::Notify;

use crate::error::TcpPoolError;
use backoff::Backoff;
use outage::Outage;

/// How long after a new connection fails another, opened since, failing means the backend
/// accepts connections and closes them (see [`FailFast::new_connection_failed`]).
const EPISODE: std::time::Duration = std::time::Duration::from_secs(1);

/// The fail-fast state of one pool.
#[derive(Debug)]
pub(crate) struct FailFast {
    /// Woken (`notify_waiters`) each time a connect attempt fails, after bb8 has booked the
    /// failure: a checkout that starts after the wake-up gets an attempt of its own.
    failed: Notify,
    /// The kind of the last connect failure, for the error handed to the waiters.
    last_failure: Mutex<io::ErrorKind>,
    /// Brand-new connections that failed their health check in a row.
    fresh_failures: AtomicU32,
    /// When a new connection that never served a request last began an episode of failures
    /// (see [`new_connection_failed`](Self::new_connection_failed)), and `attempts` then.
    new_failed: Mutex<Option<(std::time::Instant, u64)>>,
    /// Connect attempts started; an attempt's number is the count when it started.
    attempts: AtomicU64,
    /// Connect attempts under way.
    connecting: AtomicU64,
    /// The highest number of a failed attempt.
    last_failed: AtomicU64,
    /// Connections lent to a request or task (checked out and past their health check) and
    /// given back, since the pool was built: the difference is those lent right now, which
    /// could come back to a waiting checkout; `lends` is also the endpoint's checkouts.
    lends: AtomicU64,
    returns: AtomicU64,
    /// Whether a connect attempt may go ahead now.
    pub(crate) backoff: Backoff,
    /// The log of connect failures.
    pub(crate) outage: Outage,
}

impl FailFast {
    /// With the reconnect backoff `(min, max)` (`(ZERO, ZERO)`: off).
    pub(crate) fn new((min, max): (std::time::Duration, std::time::Duration)) -> Self {
        FailFast {
            failed: Notify::new(),
            last_failure: Mutex::new(io::ErrorKind::Other),
            fresh_failures: AtomicU32::new(0),
            new_failed: Mutex::new(None),
            attempts: AtomicU64::new(0),
            connecting: AtomicU64::new(0),
            last_failed: AtomicU64::new(0),
            lends: AtomicU64::new(0),
            returns: AtomicU64::new(0),
            backoff: Backoff::new(min, max),
            outage: Outage::default(),
        }
    }
}

/// One connect attempt, under way until dropped (also when its future is cancelled).
#[derive(Debug)]
pub(crate) struct Attempt<'a> {
    fail_fast: &'a FailFast,
    number: u64,
}

impl Attempt<'_> {
    /// This attempt's number (a connection remembers the attempt that opened it).
    pub(crate) fn number(&self) -> u64 {
        self.number
    }

    /// Records that this attempt failed. The waiters are woken later, by [`FailFast::wake`],
    /// once bb8 has booked the failure.
    pub(crate) fn failed(&self, err: &io::Error) {
        self.fail_fast.record_failure(self.number, err.kind());
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        self.fail_fast.connecting.fetch_sub(1, SeqCst);
    }
}

impl FailFast {
    /// Starts a connect attempt. Keep the [`Attempt`] until its failure, if any, is recorded:
    /// a waiting checkout never sees it as neither under way nor failed.
    pub(crate) fn begin_attempt(&self) -> Attempt<'_> {
        self.connecting.fetch_add(1, SeqCst);
        let number = self.attempts.fetch_add(1, SeqCst) + 1;
        Attempt {
            fail_fast: self,
            number,
        }
    }

    fn record_failure(&self, attempt: u64, kind: io::ErrorKind) {
        self.last_failed.fetch_max(attempt, SeqCst);
        if let Ok(mut last) = self.last_failure.lock() {
            *last = kind;
        }
    }

    /// Wakes the waiting checkouts: called from bb8's error sink for a failed connect.
    pub(crate) fn wake(&self) {
        self.failed.notify_waiters();
    }

    /// A health check failed on a connection opened by `attempt`. A stale idle connection is
    /// routine; but when more brand-new connections than `max_size` fail in a row, the
    /// backend accepts connections without serving them: that is recorded as a failure of the
    /// connect attempt (returns `true`), so waiting checkouts fail fast instead of
    /// reconnecting in a loop.
    pub(crate) fn check_failed(
        &self,
        fresh: bool,
        attempt: u64,
        err: &io::Error,
        max_size: u32,
    ) -> bool {
        if !fresh {
            return false;
        }
        let in_a_row = self.fresh_failures.fetch_add(1, Relaxed) + 1;
        if in_a_row <= max_size {
            return false;
        }
        self.fresh_failures.store(0, Relaxed);
        self.record_failure(attempt, err.kind());
        true
    }

    /// A connection that never served a request, opened by `attempt`, failed its health
    /// check: whether that is a failed connect for the
    /// reconnect backoff (which it then steps). One failing is not: a restart closes the new
    /// idle connections (those `min_idle` opened) the same way, and so do they all if several
    /// were open. But when a connection opened after such a failure fails too, within
    /// [`EPISODE`] of it, the backend accepts connections and closes them (a proxy whose
    /// upstream is down, a server at its connection limit): each TCP connect succeeds, so
    /// only this can back it off. Each step begins a new episode: the next needs a
    /// connection opened after it.
    pub(crate) fn new_connection_failed(&self, attempt: u64) -> bool {
        let now = std::time::Instant::now();
        let started = self.attempts.load(SeqCst);
        let Ok(mut episode) = self.new_failed.lock() else {
            return false;
        };
        match *episode {
            Some((at, mark)) if now.duration_since(at) < EPISODE => {
                if attempt <= mark {
                    // Opened before the episode began: the same cause.
                    return false;
                }
                *episode = Some((now, started));
                drop(episode);
                self.backoff.fresh_failed();
                true
            }
            _ => {
                *episode = Some((now, started));
                false
            }
        }
    }

    /// A new connection served a request and came back clean: the backend does not accept
    /// and close every connection, so the episode of failing new connections, if any, ends
    /// (a second restart within [`EPISODE`] closing one `min_idle` opened since the first is
    /// not the next failure). Once per connection, at its first clean return.
    #[cold]
    pub(crate) fn new_connection_served(&self) {
        if let Ok(mut episode) = self.new_failed.lock() {
            *episode = None;
        }
    }

    /// A health check passed: the streak of failing new connections ends, and a backoff
    /// whose probe connected lets every attempt go ahead.
    pub(crate) fn check_passed(&self) {
        // Read first: no shared write on the hot path while nothing fails.
        if self.fresh_failures.load(Relaxed) != 0 {
            self.fresh_failures.store(0, Relaxed);
        }
        self.backoff.checked();
    }

    /// A connection passed its checkout and is lent to a request or task.
    pub(crate) fn lend(&self) {
        self.lends.fetch_add(1, Relaxed);
    }

    /// Connect attempts under way now.
    pub(crate) fn connecting(&self) -> u64 {
        self.connecting.load(SeqCst)
    }

    /// Connections lent out now.
    pub(crate) fn lent(&self) -> u64 {
        // Returns first: every return follows its lend, so the difference is never negative
        // (at worst it counts one given back meanwhile, which only makes a checkout wait).
        let returns = self.returns.load(Acquire);
        self.lends.load(Acquire).saturating_sub(returns)
    }

    /// Connections lent since the pool was built: the endpoint's successful checkouts.
    pub(crate) fn lends(&self) -> u64 {
        self.lends.load(Relaxed)
    }

    /// A lent connection came back to the pool (clean or to be closed).
    pub(crate) fn give_back(&self) {
        self.returns.fetch_add(1, Release);
    }

    /// Watches for failures on behalf of a checkout that is about to start. Registered before
    /// the checkout starts, so no failure in between is missed; costs nothing until polled.
    pub(crate) fn watch(&self) -> Watch<'_> {
        Watch {
            fail_fast: self,
            since: self.attempts.load(SeqCst),
            notified: self.failed.notified(),
        }
    }

    /// The kind of the last connect failure.
    pub(crate) fn last_failure_kind(&self) -> io::ErrorKind {
        self.last_failure
            .lock()
            .map(|k| *k)
            .unwrap_or(io::ErrorKind::Other)
    }

    fn error(&self) -> TcpPoolError {
        let kind = self.last_failure_kind();
        TcpPoolError::BackendUnreachable(io::Error::new(
            kind,
            "a connect attempt to the backend failed while waiting for a connection",
        ))
    }
}

/// What a woken [`Watch`] tells its checkout.
#[derive(Debug)]
pub(crate) enum Woken {
    /// Poll the checkout again, then the watch: a connection may still come.
    Recheck,
    /// An attempt made since the checkout began to wait failed: answer with this error.
    Fail(TcpPoolError),
    /// Only a stale attempt failed and none is under way: start the checkout afresh (then
    /// call [`Watch::restarted`]), so that bb8 makes an attempt for it. Only with the
    /// reconnect backoff off: with it on, that checkout fails (it waited for one attempt).
    Restart,
}

pin_project! {
    /// A checkout's view of the pool's connect failures.
    pub(crate) struct Watch<'a> {
        fail_fast: &'a FailFast,
        since: u64,
        #[pin]
        notified: Notified<'a>,
    }
}

impl Watch<'_> {
    /// Pending until a connect attempt fails. While a connection is lent to a request or
    /// task, which could come back to this checkout, it keeps waiting. Connections idle or
    /// under a health check are no such hope: bb8 hands idle ones to waiters, so one idle now
    /// is brand-new and not yet checked, and one under a check goes to its own checkout or is
    /// closed.
    ///
    /// With `fail_over` (the pool has other endpoints to try), a failed attempt fails the
    /// checkout even while connections are lent: it moves on rather than wait for one.
    pub(crate) fn poll_woken(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        fail_over: bool,
    ) -> Poll<Woken> {
        let mut this = self.project();
        if this.notified.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        this.notified.set(this.fail_fast.failed.notified());
        if fail_over && this.fail_fast.last_failed.load(SeqCst) > *this.since {
            return Poll::Ready(Woken::Fail(this.fail_fast.error()));
        }
        if this.fail_fast.lent() > 0 {
            return Poll::Ready(Woken::Recheck);
        }
        if this.fail_fast.last_failed.load(SeqCst) > *this.since {
            return Poll::Ready(Woken::Fail(this.fail_fast.error()));
        }
        if this.fail_fast.connecting.load(SeqCst) > 0 {
            return Poll::Ready(Woken::Recheck);
        }
        if this.fail_fast.backoff.is_on() && this.fail_fast.last_failed.load(SeqCst) > 0 {
            // A checkout waits for one connect attempt at most.
            return Poll::Ready(Woken::Fail(this.fail_fast.error()));
        }
        Poll::Ready(Woken::Restart)
    }

    /// The checkout was started afresh: only attempts from now on can fail it.
    pub(crate) fn restarted(self: Pin<&mut Self>) {
        let this = self.project();
        *this.since = this.fail_fast.attempts.load(SeqCst);
    }
}
