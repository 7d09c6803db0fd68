//! The checkout gate: a checkout never finds the idle queue emptied by the lifecycle task.
//!
//! A sweep takes an endpoint's idle connections out of bb8 for an instant, and an idle probe
//! takes one out for a round trip: a checkout whose first poll of bb8 ran then would find
//! none idle and have bb8 open one, so sweeps and probing would grow the pool. The first
//! poll of a checkout is where bb8 takes an idle connection or decides to connect; the gate
//! keeps it apart from the task taking connections out:
//!
//! - While no sweep holds connections (nearly always), a checkout counts itself in for its
//!   first poll and out after it: two atomic additions, no lock.
//! - A sweep first marks itself holding (checkouts arriving now take the slow way), waits
//!   for the checkouts already in their first poll (a few microseconds), then takes the
//!   connections out; it unmarks itself after giving them back, and wakes the checkouts
//!   waiting at the gate.
//! - A checkout that finds a sweep holding takes the lifecycle's lock (held by a sweep while
//!   it takes connections out or gives them back). If connections are out and bb8 has none
//!   idle, it waits until they are given back, or until a connection in use comes back: bb8
//!   would otherwise open one for it. Else it makes its first poll under the lock.
//! - Later polls go through the gate the same way but never wait at it: bb8 looks again for
//!   an idle connection only after a health check failed, and that check waits (in the
//!   manager, under the lock) while connections are out.
//!
//! A checkout thus waits at most for one probe (within `connect_timeout`, often one round
//! trip) where it would otherwise have had a new connection opened: the probed connection,
//! if healthy, is then handed to it.

use std::sync::atomic::{AtomicU64, Ordering::Acquire, Ordering::Relaxed, Ordering::Release};
use std::time::Instant;

use tokio::sync::futures::Notified;
use tokio::sync::Notify;

/// One sweep holding or taking connections out, in [`Gate::state`]'s upper half.
const HOLDER: u64 = 1 << 32;
/// The checkouts in their first poll, [`Gate::state`]'s lower half.
const ENTERING: u64 = HOLDER - 1;
/// How long a sweep spins for the checkouts in their first poll before it yields its
/// thread, and how many times it yields before it goes on anyway (a first poll holds no
/// lock a sweep takes, so this bound is never met but by a thread descheduled for long).
const SPINS: u32 = 128;
const YIELDS: u32 = 10_000;

/// See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    /// Sweeps holding (upper half) and checkouts in their first poll (lower half): one word,
    /// so that a checkout counting itself in and a sweep marking itself holding are ordered.
    state: AtomicU64,
    /// Wakes the checkouts waiting at the gate: connections given back, or one came back
    /// from use while a sweep held some.
    back: Notify,
}

/// A checkout in its first poll, let through without the lock; counted out when dropped
/// (even if bb8 panics).
pub(crate) struct Entered<'a>(&'a Gate);

impl Drop for Entered<'_> {
    #[inline]
    fn drop(&mut self) {
        self.0.state.fetch_sub(1, Release);
    }
}

impl Gate {
    /// A checkout's way in for its first poll when no sweep holds connections; `None` when
    /// one does (take the slow way, under the lifecycle's lock).
    #[inline]
    pub(crate) fn enter(&self) -> Option<Entered<'_>> {
        if self.state.load(Relaxed) >= HOLDER {
            return None;
        }
        if self.state.fetch_add(1, Acquire) >= HOLDER {
            self.state.fetch_sub(1, Release);
            return None;
        }
        Some(Entered(self))
    }

    /// Whether a sweep holds connections now (a connection coming back from use then wakes
    /// the checkouts waiting at the gate).
    #[inline]
    pub(crate) fn is_held(&self) -> bool {
        self.state.load(Relaxed) >= HOLDER
    }

    /// Marks a sweep holding and waits for the checkouts in their first poll: after this, no
    /// checkout polls bb8 for the first time without the lifecycle's lock until
    /// [`release`](Self::release). Call it holding no lock.
    pub(crate) fn hold(&self) {
        self.state.fetch_add(HOLDER, Relaxed);
        for i in 0..SPINS + YIELDS {
            if self.state.load(Acquire) & ENTERING == 0 {
                return;
            }
            if i < SPINS {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// A second holder for connections already held (a set split from a held one).
    pub(crate) fn hold_more(&self) {
        self.state.fetch_add(HOLDER, Relaxed);
    }

    /// Ends one hold (its connections given back) and wakes the checkouts waiting.
    pub(crate) fn release(&self) {
        self.state.fetch_sub(HOLDER, Release);
        self.back.notify_waiters();
    }

    /// Wakes the checkouts waiting at the gate (a connection came back from use).
    pub(crate) fn wake(&self) {
        self.back.notify_waiters();
    }

    /// What a checkout waiting at the gate waits for.
    pub(crate) fn back(&self) -> &Notify {
        &self.back
    }
}

pin_project_lite::pin_project! {
    /// A checkout waiting at the gate: for the sweep's connections to come back (or one in
    /// use), since when, and whether bb8 has not seen it yet. Boxed by the checkout, whose
    /// future (copied into its box on every request) grows by one pointer only.
    pub(crate) struct AtGate<'a> {
        #[pin]
        pub(crate) back: Notified<'a>,
        pub(crate) since: Instant,
        pub(crate) unpolled: bool,
    }
}
