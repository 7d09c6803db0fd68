//! The lifecycle state: [`Lifecycle`] for one endpoint (what its task, its connections and
//! `pool.state()` share), [`Life`] for one connection.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::hash::{BuildHasher, RandomState};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::lifecycle::gate::{AtGate, Entered, Gate};
use crate::lifecycle::lifetime;
use crate::pool::Shared;
use crate::state::PoolState;

/// One endpoint's lifecycle state.
#[derive(Debug)]
pub(crate) struct Lifecycle {
    /// The deadlines of its open connections that have one, with their ids: the task's
    /// timer is the first. Entries past are dropped by the sweep that handles them.
    deadlines: Mutex<BTreeSet<(Instant, u64)>>,
    /// Wakes the task: a connection opened or closed, the endpoint dropped or removed.
    wake: Notify,
    /// A connection closed since the task last looked: refill `min_idle`.
    closed: AtomicBool,
    /// The task is running (a revived endpoint starts one only if not).
    pub(crate) running: AtomicBool,
    /// Held while a sweep takes connections out or gives them back, while `pool.state()`
    /// reads bb8's counts and these (a snapshot never sees half a sweep), and by a checkout's
    /// first poll while a sweep holds connections (see `gate`).
    consistent: Mutex<()>,
    /// Keeps the checkouts' first polls apart from the sweeps (see `gate`).
    pub(crate) gate: Gate,
    next_id: AtomicU64,
    rng: AtomicU64,
    pub(crate) counts: Counts,
}

/// What the lifecycle counts, for [`PoolState`].
#[derive(Debug, Default)]
pub(crate) struct Counts {
    pub(crate) closed_idle_timeout: AtomicU64,
    pub(crate) closed_max_lifetime: AtomicU64,
    pub(crate) idle_probes: AtomicU64,
    pub(crate) idle_probe_failures: AtomicU64,
    /// Connections the task opened and bb8 took (bb8 counts only those it opens).
    pub(crate) added: AtomicU64,
    /// Checkouts the sweeps made (bb8 counts them as its own).
    pub(crate) sweep_gets: AtomicU64,
    /// Checkouts that waited at the gate for a sweep's connections, and how long in all
    /// (nanoseconds): waits bb8 does not see.
    pub(crate) gate_waits: AtomicU64,
    pub(crate) gate_wait_nanos: AtomicU64,
    /// Checkouts at the gate, or that ended there (timed out, cancelled): bb8 never saw them.
    pub(crate) gate_unpolled: AtomicU64,
    /// Idle connections out of bb8 in a sweep or an idle probe right now: still idle for
    /// `pool.state()`.
    pub(crate) out: AtomicU64,
    /// Connections bb8 closed as broken (not known clean, failed the checkout check, of a
    /// removed endpoint): bb8's own count would include the lifecycle's closes.
    pub(crate) broken: AtomicU64,
}

thread_local! {
    /// How many endpoints' [`Lifecycle::consistent`] locks this thread holds.
    static HOLDING: Cell<u32> = const { Cell::new(0) };
}

/// A held [`Lifecycle::consistent`] lock (or, for `pool.state()` only, none), counted in
/// [`HOLDING`] while held.
pub(crate) struct Consistent<'a>(Option<MutexGuard<'a, ()>>);

impl<'a> Consistent<'a> {
    fn held(guard: Option<MutexGuard<'a, ()>>) -> Consistent<'a> {
        if guard.is_some() {
            HOLDING.with(|h| h.set(h.get() + 1));
        }
        Consistent(guard)
    }
}

impl Drop for Consistent<'_> {
    fn drop(&mut self) {
        if self.0.take().is_some() {
            HOLDING.with(|h| h.set(h.get().saturating_sub(1)));
        }
    }
}

thread_local! {
    /// Set while a checkout polls bb8 under the gate's lock with connections out.
    static PARK: Cell<bool> = const { Cell::new(false) };
}

/// Whether this thread polls a checkout under the gate's lock with connections out (see
/// [`Lifecycle::check_failed`]).
pub(crate) fn parked() -> bool {
    PARK.with(Cell::get)
}

/// Sets [`PARK`] for one poll (reset even if bb8 panics).
struct Park;

impl Park {
    fn set(on: bool) -> Park {
        PARK.with(|p| p.set(on));
        Park
    }
}

impl Drop for Park {
    fn drop(&mut self) {
        PARK.with(|p| p.set(false));
    }
}

/// Held by a checkout for one poll of bb8: no sweep takes connections out meanwhile (the
/// gate's count, or its lock with the manager told whether connections are out).
pub(crate) struct Pass<'a> {
    _entered: Option<Entered<'a>>,
    _locked: Option<(Consistent<'a>, Park)>,
}

/// One connection's lifecycle state.
#[derive(Debug)]
pub(crate) struct Life {
    id: u64,
    /// When `max_lifetime` (less its jitter) runs out.
    pub(crate) deadline: Option<Instant>,
    /// Since when it is idle: its connect, then its last return (with `idle_timeout` only).
    pub(crate) idle_since: Option<Instant>,
    /// Lent and given back since the last idle probe round.
    pub(crate) used: bool,
    /// Set while a sweep has it out of bb8: what its return means. `None`: a real return.
    pub(crate) sweep: Option<Verdict>,
    /// Opened by the task and refused by bb8 (full): its close is no reason to refill.
    pub(crate) unpooled: bool,
}

/// What a sweep decided for a connection it took out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Back to the idle queue, untouched.
    Keep,
    /// Closed, and counted for this reason.
    Close(Why),
}

/// Why the lifecycle closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Why {
    IdleTimeout,
    MaxLifetime,
    ProbeFailed,
    /// Dropped in the middle of an idle probe (the task ended): closed, counted nowhere.
    Aborted,
}

impl Why {
    fn as_str(self) -> &'static str {
        match self {
            Why::IdleTimeout => "idle_timeout",
            Why::MaxLifetime => "max_lifetime",
            Why::ProbeFailed => "idle_probe_failed",
            Why::Aborted => "idle_probe_aborted",
        }
    }
}

impl Lifecycle {
    pub(crate) fn new() -> Lifecycle {
        Lifecycle {
            deadlines: Mutex::new(BTreeSet::new()),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
            running: AtomicBool::new(false),
            consistent: Mutex::new(()),
            gate: Gate::default(),
            next_id: AtomicU64::new(0),
            // Per endpoint, so pools started together do not draw the same lifetimes.
            rng: AtomicU64::new(RandomState::new().hash_one(0u64)),
            counts: Counts::default(),
        }
    }

    /// The state of a connection just opened to `shared`'s endpoint: its deadline drawn and
    /// registered with the task, which is woken.
    pub(crate) fn opened(shared: &Shared) -> Box<Life> {
        let this = &shared.lifecycle;
        let config = &shared.config;
        let id = this.next_id.fetch_add(1, Relaxed);
        let now = Instant::now();
        let deadline = config.max_lifetime.and_then(|lifetime| {
            let random = lifetime::splitmix(this.rng.fetch_add(0x9E37_79B9_7F4A_7C15, Relaxed));
            lifetime::deadline(
                now,
                lifetime,
                config.max_lifetime_jitter,
                lifetime::unit(random),
            )
        });
        if let Some(at) = deadline {
            this.deadlines().insert((at, id));
        }
        this.wake.notify_one();
        Box::new(Life {
            id,
            deadline,
            idle_since: config.idle_timeout.map(|_| now),
            used: false,
            sweep: None,
            unpooled: false,
        })
    }

    /// A connection closed (dropped): its deadline is forgotten, and the task refills.
    pub(crate) fn dropped(&self, life: &Life) {
        if let Some(at) = life.deadline {
            self.deadlines().remove(&(at, life.id));
        }
        if !life.unpooled {
            self.closed.store(true, SeqCst);
            self.wake.notify_one();
        }
    }

    /// Wakes the task (the endpoint was dropped or removed from the set).
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// What wakes the task.
    pub(crate) fn woken(&self) -> &Notify {
        &self.wake
    }

    /// Whether a connection closed since the last call.
    pub(crate) fn take_closed(&self) -> bool {
        self.closed.swap(false, SeqCst)
    }

    /// The earliest deadline of an open connection.
    pub(crate) fn first_deadline(&self) -> Option<Instant> {
        self.deadlines().first().map(|&(at, _)| at)
    }

    /// Forgets the deadlines up to `now` (their idle connections were just closed; those in
    /// use are closed when they come back).
    pub(crate) fn passed(&self, now: Instant) {
        let mut deadlines = self.deadlines();
        let later = deadlines.split_off(&(now, u64::MAX));
        *deadlines = later;
    }

    /// See [`Lifecycle::consistent`]'s field.
    pub(crate) fn consistent(&self) -> Consistent<'_> {
        let guard = match self.consistent.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        Consistent::held(Some(guard))
    }

    /// [`consistent`](Self::consistent) for `pool.state()`: if this thread holds an
    /// endpoint's lock already (a checkout's poll under the gate runs the health check probe,
    /// user code, which may read `pool.state()`), only if it is free: waiting would deadlock
    /// (this endpoint's lock) or risk it (another's, held by a thread waiting for this one).
    /// Without it, the snapshot of this endpoint may show half a sweep.
    pub(crate) fn consistent_for_state(&self) -> Consistent<'_> {
        if HOLDING.with(Cell::get) == 0 {
            return self.consistent();
        }
        match self.consistent.try_lock() {
            Ok(g) => Consistent::held(Some(g)),
            Err(TryLockError::Poisoned(p)) => Consistent::held(Some(p.into_inner())),
            Err(TryLockError::WouldBlock) => Consistent::held(None),
        }
    }

    /// A checkout's way through the gate (see `gate`) for one poll of bb8, which it makes
    /// while it holds the returned [`Pass`]: without a lock while no sweep holds
    /// connections. `Err`: a sweep has connections out and `go_on` says no (bb8 has none
    /// idle), so that poll would have bb8 open one; wait for the returned future (enabled
    /// already), then ask again.
    ///
    /// Every later poll goes through here too, with `later` (never `Err`): a health check
    /// that fails in it would have bb8 look for another idle connection, or connect, there;
    /// under the lock, with connections out, [`check_failed`](Self::check_failed) waits first.
    #[inline]
    pub(crate) fn pass<'a>(
        &'a self,
        later: bool,
        go_on: impl FnOnce() -> bool,
    ) -> Result<Pass<'a>, Pin<Box<AtGate<'a>>>> {
        match self.gate.enter() {
            Some(entered) => Ok(Pass {
                _entered: Some(entered),
                _locked: None,
            }),
            None => self.pass_held(later, go_on),
        }
    }

    /// [`pass`](Self::pass) while a sweep holds connections: under the lock a sweep takes
    /// them out and gives them back with.
    #[cold]
    fn pass_held<'a>(
        &'a self,
        later: bool,
        go_on: impl FnOnce() -> bool,
    ) -> Result<Pass<'a>, Pin<Box<AtGate<'a>>>> {
        let consistent = self.consistent();
        let out = self.counts.out.load(Relaxed) > 0;
        if out && !later {
            // Enabled under the lock: the give-back (under it too) cannot be missed; and
            // before bb8's idle count is read, so a return just after is not missed either.
            let mut waiting = Box::pin(AtGate {
                back: self.gate.back().notified(),
                since: Instant::now(),
                unpolled: false,
            });
            waiting.as_mut().project().back.enable();
            if !go_on() {
                return Err(waiting);
            }
        }
        Ok(Pass {
            _entered: None,
            _locked: Some((consistent, Park::set(out))),
        })
    }

    /// A checkout health check failed: before bb8 looks for another idle connection (or
    /// connects), wait, while a sweep has connections out (this poll runs under the gate's
    /// lock), for them to be given back or for a connection to come back from use. Counted
    /// in `gets_waited` once.
    pub(crate) async fn check_failed(&self, removed: impl Fn() -> bool) {
        let mut counted = false;
        while PARK.with(Cell::get) && !removed() {
            // Enabled under the lock (this poll's): the give-back cannot be missed.
            let mut back = pin!(self.gate.back().notified());
            back.as_mut().enable();
            if !counted {
                counted = true;
                self.counts.gate_waits.fetch_add(1, Relaxed);
            }
            back.await;
        }
    }

    /// A checkout begins to wait at the gate: with `unpolled` (bb8 has not seen it), counted
    /// in `gets` until it reaches bb8 (which then counts it); with `first`, in `gets_waited`.
    #[cold]
    pub(crate) fn gate_wait(&self, first: bool, unpolled: bool) {
        if first {
            self.counts.gate_waits.fetch_add(1, Relaxed);
        }
        if unpolled {
            self.counts.gate_unpolled.fetch_add(1, Relaxed);
        }
    }

    /// A checkout's wait at the gate, begun at `since`, ended: counted in `wait_time`; with
    /// `to_bb8`, a checkout bb8 had not seen goes on to bb8.
    #[cold]
    pub(crate) fn gate_waited(&self, since: Instant, to_bb8: bool) {
        let nanos = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.counts.gate_wait_nanos.fetch_add(nanos, Relaxed);
        if to_bb8 {
            self.counts.gate_unpolled.fetch_sub(1, Relaxed);
        }
    }

    /// A checkout counted in `gets_waited` at the gate then waited in bb8, which counts it:
    /// counted once.
    pub(crate) fn waited_in_bb8(&self) {
        self.counts.gate_waits.fetch_sub(1, Relaxed);
    }

    /// A connection closed as broken (bb8's `has_broken` said so).
    pub(crate) fn broken(&self) {
        self.counts.broken.fetch_add(1, Relaxed);
    }

    fn deadlines(&self) -> MutexGuard<'_, BTreeSet<(Instant, u64)>> {
        match self.deadlines.lock() {
            Ok(d) => d,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Puts the lifecycle's counts into `s`, the endpoint's state made from bb8's (read
    /// under [`consistent`](Self::consistent)): bb8 counts the sweeps' checkouts as
    /// checkouts, the connections they hold as in use, and their closes as broken, and does
    /// not count the connections the task opened.
    pub(crate) fn counted(&self, s: &mut PoolState) {
        let c = &self.counts;
        let load = |a: &AtomicU64| a.load(Relaxed);
        s.closed_idle_timeout = load(&c.closed_idle_timeout);
        s.closed_max_lifetime = load(&c.closed_max_lifetime);
        s.idle_probes = load(&c.idle_probes);
        s.idle_probe_failures = load(&c.idle_probe_failures);
        s.connections_created += load(&c.added);
        let out = u32::try_from(load(&c.out)).unwrap_or(u32::MAX);
        s.idle = s.idle.saturating_add(out).min(s.connections);
        s.in_use = s.connections - s.idle;
        s.gets = s.gets.saturating_sub(load(&c.sweep_gets));
        s.gets += load(&c.gate_unpolled);
        s.gets_waited += load(&c.gate_waits);
        s.wait_time += Duration::from_nanos(load(&c.gate_wait_nanos));
        s.closed_broken = load(&c.broken);
    }
}

impl Life {
    pub(crate) fn id(&self) -> u64 {
        self.id
    }
}

/// A connection given back after use (bb8's `has_broken`, found clean): whether it must
/// close for its age (counted). Reads the clock only when `max_lifetime` or `idle_timeout`
/// is set, once for both.
#[inline]
pub(crate) fn returned(shared: &Shared, life: &mut Life) -> bool {
    life.used = true;
    let idle_timeout = shared.config.idle_timeout.is_some();
    if life.deadline.is_none() && !idle_timeout {
        return false;
    }
    let now = Instant::now();
    if life.deadline.is_some_and(|at| now >= at) {
        expired(shared);
        return true;
    }
    if idle_timeout {
        life.idle_since = Some(now);
    }
    false
}

/// Counts and logs a connection closed at the end of its lifetime when it came back.
#[cold]
fn expired(shared: &Shared) {
    shared
        .lifecycle
        .counts
        .closed_max_lifetime
        .fetch_add(1, Relaxed);
    tracing::debug!(
        pool = shared.config.name(),
        addr = &*shared.addr,
        endpoint = &*shared.addr,
        reason = Why::MaxLifetime.as_str(),
        "closing connection at the end of its lifetime"
    );
}

/// A connection a sweep took out comes back (bb8's `has_broken`): whether it closes, as the
/// sweep decided (counted here) or because its endpoint was removed. Neither a lend nor a
/// return: its tracker and the endpoint's fail-fast and outlier state are left alone.
pub(crate) fn swept_back(shared: &Shared, verdict: Verdict) -> bool {
    let why = match verdict {
        Verdict::Keep if !shared.is_removed() => return false,
        Verdict::Keep => None,
        Verdict::Close(why) => Some(why),
    };
    let counts = &shared.lifecycle.counts;
    match why {
        Some(Why::IdleTimeout) => counts.closed_idle_timeout.fetch_add(1, Relaxed),
        Some(Why::MaxLifetime) => counts.closed_max_lifetime.fetch_add(1, Relaxed),
        Some(Why::ProbeFailed) => counts.idle_probe_failures.fetch_add(1, Relaxed),
        Some(Why::Aborted) | None => counts.broken.fetch_add(1, Relaxed),
    };
    tracing::debug!(
        pool = shared.config.name(),
        addr = &*shared.addr,
        endpoint = &*shared.addr,
        reason = why.map_or("endpoint_removed", Why::as_str),
        "closing idle connection"
    );
    true
}
