//! Reconnect backoff: after a failed connect to an endpoint, new connect attempts to it wait
//! an exponential, jittered delay, so a backend that is down does not get one SYN per
//! request, and does not get them all at once when it comes back.
//!
//! - **Healthy** (no failure since the last success): every attempt goes ahead, as many at
//!   once as bb8 asks for.
//! - **Backing off**, after the `n`-th failure in a row: for a delay `d = min × 2^(n-1)`
//!   (at most `max`), with *equal jitter* (a random delay between `d/2` and `d`), every
//!   attempt is refused at once, without a SYN (the checkout that needed it gets `502`, or
//!   fails over to another endpoint). Then one attempt at a time probes the endpoint; the
//!   others are still refused while it is under way.
//! - The probe failing is the next failure in a row (a longer delay). A probe that connects
//!   leaves the endpoint *unproven*: one attempt at a time goes ahead until a connection
//!   passes its checkout health check (microseconds after the probe, when a request takes
//!   it), then every attempt; the endpoint is healthy again once a connection has served a
//!   request (`proven`: a new connection's first clean return after use; an old one proves
//!   nothing, a server at its connection limit serves those). Until then, a new connection
//!   failing (see below) is the next failure in a row, and the delay goes on doubling.
//! - **A backend that accepts and closes** (a proxy whose upstream is down, a server at its
//!   connection limit): each TCP connect succeeds. A connection that never served a request
//!   and fails its checkout health check is a failed connect here when it was opened after
//!   another such failure, within 1 s of it, and no new connection served in between
//!   (`FailFast::new_connection_failed`). One alone is not: a restart closes the idle
//!   connections `min_idle` opened the same way, and so are those opened before it. An
//!   exchange that fails is not either: a backend closing a connection on a bad request
//!   (twice) would back a healthy backend off. A storm of 1,000 requests against such a
//!   backend makes 30 to 78 connects where it made 376 to 988
//!   (`tests/backoff_close_edges.rs`).
//! - Attempts that were already under way when the first failure came
//!   (several, started together while healthy) count as failures but do not lengthen the
//!   delay; one begun before the last success that fails after it starts no new step (it is
//!   stale).
//!
//! Equal rather than full jitter: full jitter (`0..d`) may draw a delay near zero, so the
//! probe rate of one endpoint would not be bounded by the step; equal jitter keeps at least
//! `d/2` between probes while still spreading the probes of many app instances over `d/2`.
//!
//! The decision is taken inside the manager's `connect`, so every path that opens a
//! connection (a checkout, the `min_idle` refill) obeys it.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// One endpoint's reconnect backoff.
#[derive(Debug)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    state: Mutex<State>,
    /// `State::unproven`, readable without the lock by every checkout and clean return.
    unproven: AtomicU8,
}

#[derive(Debug, Default)]
struct State {
    /// Failures in a row; 0 when healthy.
    failures: u32,
    /// No attempt before this (`None` while backing off: never, the delay does not fit in an
    /// `Instant`).
    until: Option<Instant>,
    /// The number of the probe under way, if any.
    probe: Option<u64>,
    probes: u64,
    /// Successes so far: an attempt admitted before the last one is stale.
    resets: u64,
    /// After failures, an attempt connected: `failures` is kept until a connection serves a
    /// request. [`CONNECTED`]: one attempt at a time goes ahead, until a connection passes
    /// its checkout health check; [`CHECKED`]: every attempt goes ahead.
    unproven: u8,
}

/// `State::unproven`: healthy or backing off.
const NO: u8 = 0;
/// A probe connected; no connection has passed a health check since.
const CONNECTED: u8 = 1;
/// A connection passed its health check; none has served a request yet.
const CHECKED: u8 = 2;

/// Whether a connect attempt may go ahead.
#[derive(Debug)]
pub(crate) enum Admission<'a> {
    /// Go ahead; report the outcome on the permit.
    Go(Permit<'a>),
    /// Refused: the endpoint is backing off (or being probed by another attempt).
    Refused,
}

/// An attempt allowed to go ahead. Dropped without an outcome (its future cancelled), a
/// probe frees its place for the next one.
#[derive(Debug)]
pub(crate) struct Permit<'a> {
    backoff: &'a Backoff,
    probe: Option<u64>,
    /// `State::resets` when admitted.
    resets: u64,
}

impl Backoff {
    /// `(ZERO, ZERO)` turns it off (validated by the config: `min <= max`).
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            state: Mutex::new(State::default()),
            unproven: AtomicU8::new(NO),
        }
    }

    /// Whether the backoff is on.
    pub(crate) fn is_on(&self) -> bool {
        !self.max.is_zero()
    }

    /// Decides whether a connect attempt may go ahead now.
    pub(crate) fn admit(&self) -> Admission<'_> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Admission<'_> {
        let go = |probe, resets| {
            Admission::Go(Permit {
                backoff: self,
                probe,
                resets,
            })
        };
        if !self.is_on() {
            return go(None, 0);
        }
        let Ok(mut s) = self.state.lock() else {
            return go(None, 0);
        };
        if s.failures == 0 || s.unproven == CHECKED {
            return go(None, s.resets);
        }
        if s.unproven == CONNECTED {
            // Connected, not yet seen to serve: one attempt at a time, as a probe (a backend
            // that accepts and closes would otherwise get one SYN per request meanwhile).
            if s.probe.is_some() {
                return Admission::Refused;
            }
            s.probes += 1;
            let probe = s.probes;
            s.probe = Some(probe);
            return go(Some(probe), s.resets);
        }
        let due = s.until.is_some_and(|at| now >= at);
        if !due || s.probe.is_some() {
            return Admission::Refused;
        }
        s.probes += 1;
        let probe = s.probes;
        s.probe = Some(probe);
        go(Some(probe), s.resets)
    }

    /// The delay after the `failures`-th failure in a row: `min × 2^(failures-1)`, at most
    /// `max`, with equal jitter.
    fn delay(&self, failures: u32) -> Duration {
        let doubled = 2u32.saturating_pow(failures.saturating_sub(1));
        let step = self.min.saturating_mul(doubled).min(self.max);
        let half = step / 2;
        let span = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        let random = RandomState::new().hash_one(failures);
        let jitter = Duration::from_nanos(random % span.saturating_add(1));
        (step - half).saturating_add(jitter).min(step)
    }

    /// The current failures in a row (0: healthy).
    #[cfg(test)]
    fn failures(&self) -> u32 {
        self.state.lock().map_or(0, |s| s.failures)
    }

    /// New connections that never served a request keep failing their health check: while
    /// the endpoint is healthy or unproven, the next failure in a row.
    pub(crate) fn fresh_failed(&self) {
        if !self.is_on() {
            return;
        }
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        if s.failures == 0 || s.unproven != NO {
            self.step(&mut s);
        }
    }

    /// A connection passed its checkout health check: a connected endpoint lets every
    /// attempt go ahead. One load, no lock, when there is nothing to do (every checkout).
    #[inline]
    pub(crate) fn checked(&self) {
        if self.unproven.load(Relaxed) == CONNECTED {
            self.set_checked();
        }
    }

    #[cold]
    fn set_checked(&self) {
        if let Ok(mut s) = self.state.lock() {
            if s.unproven == CONNECTED {
                s.unproven = CHECKED;
                self.unproven.store(CHECKED, Relaxed);
            }
        }
    }

    /// A connection served a request and came back clean: an unproven endpoint is healthy.
    /// One load, no lock, when there is nothing to do (every clean return calls it).
    #[inline]
    pub(crate) fn proven(&self) {
        if self.unproven.load(Relaxed) != NO {
            self.reset();
        }
    }

    #[cold]
    fn reset(&self) {
        if let Ok(mut s) = self.state.lock() {
            if s.unproven != NO {
                s.failures = 0;
                s.until = None;
                s.unproven = NO;
                self.unproven.store(NO, Relaxed);
            }
        }
    }

    /// The next failure in a row: a longer delay, every attempt refused until it ends.
    fn step(&self, s: &mut State) {
        s.failures = s.failures.saturating_add(1);
        s.until = Instant::now().checked_add(self.delay(s.failures));
        s.unproven = NO;
        self.unproven.store(NO, Relaxed);
    }
}

impl Permit<'_> {
    /// The attempt connected: every attempt goes ahead again; after failures, the endpoint
    /// is unproven until a new connection serves a request.
    pub(crate) fn succeeded(self) {
        let backoff = self.backoff;
        if let Ok(mut s) = backoff.state.lock() {
            let unproven = if s.failures > 0 {
                s.unproven.max(CONNECTED)
            } else {
                NO
            };
            *s = State {
                failures: s.failures,
                probes: s.probes,
                resets: s.resets.wrapping_add(1),
                unproven,
                ..State::default()
            };
            backoff.unproven.store(unproven, Relaxed);
        }
    }

    /// The attempt failed. The first failure, or a failed probe, starts the next step.
    pub(crate) fn failed(self) {
        let backoff = self.backoff;
        if !backoff.is_on() {
            return;
        }
        let Ok(mut s) = backoff.state.lock() else {
            return;
        };
        let was_probe = self.probe.is_some() && s.probe == self.probe;
        if was_probe {
            s.probe = None;
        }
        if self.resets != s.resets {
            // Begun before the last success: stale, the endpoint has connected since.
            return;
        }
        if s.failures == 0 || was_probe || s.unproven != NO {
            backoff.step(&mut s);
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.probe.is_none() {
            return;
        }
        if let Ok(mut s) = self.backoff.state.lock() {
            if s.probe == self.probe {
                s.probe = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_delay_doubles_with_equal_jitter_up_to_max() {
        let b = Backoff::new(ms(100), ms(1000));
        for (failures, step) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (40, 1000),
        ] {
            for _ in 0..50 {
                let d = b.delay(failures);
                assert!(d >= ms(step) / 2 && d <= ms(step), "{failures}: {d:?}");
            }
        }
        assert!(Backoff::new(Duration::MAX, Duration::MAX).delay(u32::MAX) > ms(0));
    }

    #[test]
    fn refuses_during_the_delay_then_lets_one_probe_through() {
        let b = Backoff::new(ms(100), ms(1000));
        let (first, second) = match (b.admit(), b.admit()) {
            (Admission::Go(a), Admission::Go(c)) => (a, c),
            other => panic!("healthy: both go, got {other:?}"),
        };
        let t0 = Instant::now();
        first.failed();
        // Already under way when the first failure came: does not lengthen the delay.
        second.failed();
        assert_eq!(b.failures(), 1);
        assert!(matches!(b.admit_at(t0), Admission::Refused));
        let step1 = t0 + ms(100) + ms(50);
        let Admission::Go(probe) = b.admit_at(step1) else {
            panic!("the delay is over: one probe");
        };
        assert!(
            matches!(b.admit_at(step1), Admission::Refused),
            "one probe at a time"
        );
        let t1 = Instant::now();
        probe.failed();
        assert_eq!(b.failures(), 2);
        assert!(matches!(b.admit_at(t1), Admission::Refused));
        let step2 = t1 + ms(200) + ms(50);
        let Admission::Go(probe) = b.admit_at(step2) else {
            panic!("second step over: a probe");
        };
        drop(probe);
        let Admission::Go(probe) = b.admit_at(step2) else {
            panic!("a cancelled probe frees its place");
        };
        probe.succeeded();
        // Connected: one attempt at a time until a connection passes its health check,
        // then every one; the level kept until a connection serves.
        let Admission::Go(one) = b.admit_at(t1) else {
            panic!("connected: one attempt goes");
        };
        assert!(
            matches!(b.admit_at(t1), Admission::Refused),
            "one at a time"
        );
        drop(one);
        b.checked();
        let (Admission::Go(_a), Admission::Go(_b)) = (b.admit_at(t1), b.admit_at(t1)) else {
            panic!("checked: every attempt goes");
        };
        assert_eq!(b.failures(), 2);
        b.proven();
        assert_eq!(b.failures(), 0);
        assert!(matches!(b.admit_at(t1), Admission::Go(_)));
    }

    // A backend that accepts and closes: each probe connects, each new connection fails its
    // health check. The delay goes on doubling instead of starting over.
    #[test]
    fn new_connections_closed_unused_go_on_doubling_the_delay() {
        let b = Backoff::new(ms(100), ms(1000));
        b.fresh_failed();
        assert_eq!(
            b.failures(),
            1,
            "healthy: a fresh failure starts the backoff"
        );
        assert!(matches!(b.admit(), Admission::Refused));
        b.fresh_failed();
        assert_eq!(b.failures(), 1, "while backing off: no second step");
        let Admission::Go(probe) = b.admit_at(Instant::now() + ms(150)) else {
            panic!("a probe after the step");
        };
        probe.succeeded();
        assert!(
            matches!(b.admit(), Admission::Go(_)),
            "unproven: an attempt goes"
        );
        b.fresh_failed();
        assert_eq!(
            b.failures(),
            2,
            "unproven: the next step, not a fresh start"
        );
        assert!(matches!(b.admit(), Admission::Refused));
        // A clean return while backing off proves nothing (not unproven).
        b.proven();
        assert_eq!(b.failures(), 2);
    }

    // "The first success resets it". An attempt begun before the success (while
    // healthy, or a second one admitted with it) that fails after it is stale: it must not
    // start a new step on an endpoint that just connected (failed before the fix: 1 failure,
    // every attempt refused for a step).
    #[test]
    fn a_stale_failure_after_a_success_starts_no_step() {
        let b = Backoff::new(ms(100), ms(1000));
        let (Admission::Go(stale), Admission::Go(first)) = (b.admit(), b.admit()) else {
            panic!("healthy: both go");
        };
        first.failed();
        let t0 = Instant::now();
        let Admission::Go(probe) = b.admit_at(t0 + ms(150)) else {
            panic!("a probe after the step");
        };
        probe.succeeded();
        stale.failed();
        assert_eq!(b.failures(), 1, "a stale failure made a new step");
        assert!(
            matches!(b.admit(), Admission::Go(_)),
            "a stale failure restarted the backoff"
        );
    }

    #[test]
    fn off_always_goes() {
        let b = Backoff::new(Duration::ZERO, Duration::ZERO);
        let Admission::Go(p) = b.admit() else {
            panic!("off");
        };
        p.failed();
        assert!(matches!(b.admit(), Admission::Go(_)));
        assert_eq!(b.failures(), 0);
    }
}
