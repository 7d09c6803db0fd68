//! [`PoolState`]: a snapshot of a pool's sizes and counters, and the counters this crate
//! keeps beside bb8's own statistics.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::clean::DiscardReason;

/// Connections closed instead of reused, by [`DiscardReason`]. Connections closed for age,
/// idleness or a failed idle probe are in [`PoolState::closed_idle_timeout`],
/// [`PoolState::closed_max_lifetime`] and [`PoolState::idle_probe_failures`].
///
/// ```
/// use axum_tcp_pool::{DiscardReason, Discards};
/// let d = Discards::default();
/// assert_eq!((d.total(), d.get(DiscardReason::Panic)), (0, 0));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Discards {
    /// See [`DiscardReason::IoError`].
    pub io_error: u64,
    /// See [`DiscardReason::Eof`].
    pub eof: u64,
    /// See [`DiscardReason::Cancelled`].
    pub cancelled: u64,
    /// See [`DiscardReason::UnreadBytes`].
    pub unread_bytes: u64,
    /// See [`DiscardReason::ReplyNotRead`].
    pub reply_not_read: u64,
    /// See [`DiscardReason::Panic`].
    pub panic: u64,
    /// See [`DiscardReason::Explicit`].
    pub explicit: u64,
    /// See [`DiscardReason::HealthCheck`].
    pub health_check: u64,
    /// See [`DiscardReason::Codec`].
    pub codec: u64,
}

impl Discards {
    /// The count for one reason.
    ///
    /// ```
    /// use axum_tcp_pool::{DiscardReason, Discards};
    /// assert_eq!(Discards::default().get(DiscardReason::Eof), 0);
    /// ```
    pub fn get(&self, reason: DiscardReason) -> u64 {
        let mut copy = *self;
        *copy.count_mut(reason)
    }

    /// All discards, whatever the reason.
    ///
    /// ```
    /// assert_eq!(axum_tcp_pool::Discards::default().total(), 0);
    /// ```
    pub fn total(&self) -> u64 {
        DiscardReason::ALL.iter().map(|&r| self.get(r)).sum()
    }

    /// The field for `reason`: the one place that maps reasons to fields.
    fn count_mut(&mut self, reason: DiscardReason) -> &mut u64 {
        match reason {
            DiscardReason::IoError => &mut self.io_error,
            DiscardReason::Eof => &mut self.eof,
            DiscardReason::Cancelled => &mut self.cancelled,
            DiscardReason::UnreadBytes => &mut self.unread_bytes,
            DiscardReason::ReplyNotRead => &mut self.reply_not_read,
            DiscardReason::Panic => &mut self.panic,
            DiscardReason::Explicit => &mut self.explicit,
            DiscardReason::HealthCheck => &mut self.health_check,
            DiscardReason::Codec => &mut self.codec,
        }
    }
}

/// A snapshot of a pool: sizes, bb8's statistics and this crate's counters (totals since the
/// pool was built). Returned by [`TcpPool::state`](crate::TcpPool::state).
///
/// ```no_run
/// # async fn f(pool: axum_tcp_pool::TcpPool) {
/// let s = pool.state();
/// println!("{} open, {} idle, {} in use, {} timeouts", s.connections, s.idle, s.in_use, s.gets_timed_out);
/// # }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolState {
    /// Open connections (idle and in use).
    pub connections: u32,
    /// Idle connections, ready to be checked out.
    pub idle: u32,
    /// Connections checked out right now.
    pub in_use: u32,
    /// Checkouts started.
    pub gets: u64,
    /// Checkouts that found no idle connection and waited: for a new connection to be
    /// opened (so the first checkout of an empty pool counts), for one to come back, or for
    /// the idle probe to give its connection back.
    pub gets_waited: u64,
    /// Checkouts that timed out (answered `503`).
    pub gets_timed_out: u64,
    /// Total time checkouts spent waiting.
    pub wait_time: Duration,
    /// Connections opened.
    pub connections_created: u64,
    /// Connect attempts that failed (refused, not resolved, timed out), plus each time more
    /// than `max_size` new connections in a row failed their health check.
    pub connect_failures: u64,
    /// Connections closed when returned because they were not known clean, plus those that
    /// failed the checkout health check (bb8's count; see [`discards`](Self::discards)).
    pub closed_broken: u64,
    /// Connections closed at checkout because they failed the health check (bb8's count).
    pub closed_invalid: u64,
    /// Connections above `min_idle` closed because they sat idle longer than `idle_timeout`
    /// (see [`idle_timeout`](crate::TcpPoolBuilder::idle_timeout)).
    pub closed_idle_timeout: u64,
    /// Connections closed because they reached their lifetime (`max_lifetime` less its
    /// jitter): idle ones at their deadline, ones in use when they came back.
    pub closed_max_lifetime: u64,
    /// Connections closed instead of being reused, by reason.
    pub discards: Discards,
    /// Connect attempts refused by the
    /// [reconnect backoff](crate::TcpPoolBuilder::reconnect_backoff): made while an
    /// endpoint was backing off after a failed connect, they failed at once without reaching
    /// the backend (no SYN). Counted neither in `connect_failures` nor as connections.
    pub connects_backed_off: u64,
    /// Connections held longer than [`leak_threshold`](crate::TcpPoolBuilder::leak_threshold),
    /// each counted once, when its `warn` is logged (whether it came back later or not).
    pub suspected_leaks: u64,
    /// Each endpoint in the pool's set, in its order; the fields above are sums over these
    /// (and over endpoints removed since the pool was built, so totals never go down).
    pub endpoints: Vec<EndpointState>,
    /// Idle connections checked by idle probing (the peek, then the probe if configured; see
    /// [`idle_probe_interval`](crate::TcpPoolBuilder::idle_probe_interval)).
    pub idle_probes: u64,
    /// Idle connections idle probing found dead, and closed.
    pub idle_probe_failures: u64,
    /// Whether the pool was [closed](crate::TcpPool::close).
    pub closed: bool,
}

/// One endpoint of a pool: its sizes and its outlier-detection state. In
/// [`PoolState::endpoints`].
///
/// ```no_run
/// # async fn f(pool: axum_tcp_pool::TcpPool) {
/// for e in &pool.state().endpoints {
///     println!("{}: {} in use, ejected: {}, {} checkouts", e.addr, e.in_use, e.ejected, e.checkouts);
/// }
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndpointState {
    /// The endpoint's address (as given, or as resolved from a host name).
    pub addr: String,
    /// Open connections to it (idle and in use).
    pub connections: u32,
    /// Its idle connections.
    pub idle: u32,
    /// Its connections checked out right now.
    pub in_use: u32,
    /// Taken out of rotation by outlier detection right now.
    pub ejected: bool,
    /// Failures in a row since its last clean return.
    pub consecutive_failures: u32,
    /// Times it was ejected since the pool was built.
    pub times_ejected: u64,
    /// Successful checkouts of its connections.
    pub checkouts: u64,
}

impl PoolState {
    /// Adds `other`'s sizes and counters to these (not its endpoints).
    pub(crate) fn add(&mut self, other: &PoolState) {
        self.connections += other.connections;
        self.idle += other.idle;
        self.in_use += other.in_use;
        self.gets += other.gets;
        self.gets_waited += other.gets_waited;
        self.gets_timed_out += other.gets_timed_out;
        self.wait_time += other.wait_time;
        self.connections_created += other.connections_created;
        self.connect_failures += other.connect_failures;
        self.closed_broken += other.closed_broken;
        self.closed_invalid += other.closed_invalid;
        self.closed_idle_timeout += other.closed_idle_timeout;
        self.closed_max_lifetime += other.closed_max_lifetime;
        self.idle_probes += other.idle_probes;
        self.idle_probe_failures += other.idle_probe_failures;
        for &reason in DiscardReason::ALL {
            *self.discards.count_mut(reason) += other.discards.get(reason);
        }
        self.connects_backed_off += other.connects_backed_off;
        self.suspected_leaks += other.suspected_leaks;
    }
}

/// Counters for what bb8 cannot know.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    connect_failures: AtomicU64,
    /// Checkouts started again after a stale connect failure: bb8 counts each restart as a
    /// checkout of its own.
    restarts: AtomicU64,
    /// Restarted checkouts that reached the first one's deadline (bb8 does not see these).
    restart_timeouts: AtomicU64,
    /// Discards, indexed by [`DiscardReason::index`].
    discards: [AtomicU64; DiscardReason::COUNT],
    connects_backed_off: AtomicU64,
    /// Connections reported as held longer than the leak threshold.
    suspected_leaks: AtomicU64,
}

impl Counters {
    pub(crate) fn connect_failed(&self) {
        self.connect_failures.fetch_add(1, Relaxed);
    }

    pub(crate) fn restarted(&self) {
        self.restarts.fetch_add(1, Relaxed);
    }

    pub(crate) fn restart_timed_out(&self) {
        self.restart_timeouts.fetch_add(1, Relaxed);
    }

    pub(crate) fn discarded(&self, reason: DiscardReason) {
        self.discards[reason.index()].fetch_add(1, Relaxed);
    }

    pub(crate) fn connect_backed_off(&self) {
        self.connects_backed_off.fetch_add(1, Relaxed);
    }

    /// Connects that failed or were refused by the backoff, so far.
    pub(crate) fn connects_not_made(&self) -> u64 {
        self.connect_failures.load(Relaxed) + self.connects_backed_off.load(Relaxed)
    }

    pub(crate) fn suspected_leak(&self) {
        self.suspected_leaks.fetch_add(1, Relaxed);
    }

    /// These counters with bb8's state, bb8's counts corrected for restarted checkouts.
    pub(crate) fn snapshot(&self, s: bb8::State) -> PoolState {
        let st = s.statistics;
        let mut discards = Discards::default();
        for &reason in DiscardReason::ALL {
            *discards.count_mut(reason) = self.discards[reason.index()].load(Relaxed);
        }
        PoolState {
            connections: s.connections,
            idle: s.idle_connections,
            in_use: s.connections.saturating_sub(s.idle_connections),
            gets: st.get_started.saturating_sub(self.restarts.load(Relaxed)),
            gets_waited: st.get_waited,
            gets_timed_out: st.get_timed_out + self.restart_timeouts.load(Relaxed),
            wait_time: st.get_wait_time,
            connections_created: st.connections_created,
            connect_failures: self.connect_failures.load(Relaxed),
            closed_broken: st.connections_closed_broken,
            closed_invalid: st.connections_closed_invalid,
            closed_idle_timeout: st.connections_closed_idle_timeout,
            closed_max_lifetime: st.connections_closed_max_lifetime,
            discards,
            connects_backed_off: self.connects_backed_off.load(Relaxed),
            suspected_leaks: self.suspected_leaks.load(Relaxed),
            endpoints: Vec::new(),
            idle_probes: 0,
            idle_probe_failures: 0,
            closed: false,
        }
    }
}
