//! Pool state snapshots, and the counters this crate keeps beside bb8's own statistics.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Why a connection was closed instead of being returned to the pool.
///
/// Every discard is counted by reason in [`PoolState::discards`] and logged with `tracing`:
/// at `warn` for a backend failure during an exchange (`IoError`, `Eof`), at `debug` for the
/// routine ones (the rest).
///
/// # Example
///
/// ```
/// use axum_tcp_pool::DiscardReason;
///
/// assert_eq!(DiscardReason::ReplyNotRead.as_str(), "reply_not_read");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DiscardReason {
    /// A read or write on the connection returned an I/O error.
    IoError,
    /// A read saw end-of-file: the backend closed its side.
    Eof,
    /// A read or write was still in flight when the connection was dropped (the handler
    /// future was cancelled: client went away, a timeout fired, a `select!` branch lost).
    Cancelled,
    /// The backend had sent bytes that the handler never read.
    UnreadBytes,
    /// Bytes were written after the last read: a request whose reply was never read.
    ReplyNotRead,
    /// The connection was dropped while its thread was panicking.
    Panic,
    /// The handler called [`TcpConnection::discard`](crate::TcpConnection::discard), or shut
    /// the write half down.
    Explicit,
    /// The checkout health check failed: the backend closed the idle connection, bytes were
    /// waiting on it, or the configured probe failed.
    HealthCheck,
}

impl DiscardReason {
    /// Every reason, in declaration order: for exporting one series per reason, so that a
    /// reason that has not happened yet still shows as `0`.
    ///
    /// ```
    /// use axum_tcp_pool::DiscardReason;
    ///
    /// let names: Vec<&str> = DiscardReason::ALL.iter().map(|r| r.as_str()).collect();
    /// assert!(names.contains(&"reply_not_read"));
    /// ```
    pub const ALL: [DiscardReason; 8] = [
        DiscardReason::IoError,
        DiscardReason::Eof,
        DiscardReason::Cancelled,
        DiscardReason::UnreadBytes,
        DiscardReason::ReplyNotRead,
        DiscardReason::Panic,
        DiscardReason::Explicit,
        DiscardReason::HealthCheck,
    ];

    /// A short `snake_case` name, for logs and metrics labels.
    ///
    /// ```
    /// assert_eq!(axum_tcp_pool::DiscardReason::Cancelled.as_str(), "cancelled");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            DiscardReason::IoError => "io_error",
            DiscardReason::Eof => "eof",
            DiscardReason::Cancelled => "cancelled",
            DiscardReason::UnreadBytes => "unread_bytes",
            DiscardReason::ReplyNotRead => "reply_not_read",
            DiscardReason::Panic => "panic",
            DiscardReason::Explicit => "explicit",
            DiscardReason::HealthCheck => "health_check",
        }
    }
}

/// Discarded connections, counted by [`DiscardReason`].
///
/// Connections closed by bb8 itself because they were idle too long or too old are counted in
/// [`PoolState::closed_idle_timeout`] and [`PoolState::closed_max_lifetime`].
///
/// ```
/// let d = axum_tcp_pool::Discards::default();
/// assert_eq!(d.total(), 0);
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
}

impl Discards {
    /// The count for one reason.
    ///
    /// ```
    /// use axum_tcp_pool::{DiscardReason, Discards};
    /// assert_eq!(Discards::default().get(DiscardReason::Panic), 0);
    /// ```
    pub fn get(&self, reason: DiscardReason) -> u64 {
        match reason {
            DiscardReason::IoError => self.io_error,
            DiscardReason::Eof => self.eof,
            DiscardReason::Cancelled => self.cancelled,
            DiscardReason::UnreadBytes => self.unread_bytes,
            DiscardReason::ReplyNotRead => self.reply_not_read,
            DiscardReason::Panic => self.panic,
            DiscardReason::Explicit => self.explicit,
            DiscardReason::HealthCheck => self.health_check,
        }
    }

    /// All discards, whatever the reason.
    ///
    /// ```
    /// assert_eq!(axum_tcp_pool::Discards::default().total(), 0);
    /// ```
    pub fn total(&self) -> u64 {
        DiscardReason::ALL.iter().map(|&r| self.get(r)).sum()
    }
}

/// A snapshot of a pool: sizes, bb8's statistics, and this crate's own counters.
///
/// Returned by [`TcpPool::state`](crate::TcpPool::state). Counters are totals since the pool
/// was built.
///
/// ```no_run
/// # async fn f(pool: axum_tcp_pool::TcpPool) {
/// let s = pool.state();
/// println!("{} open, {} idle, {} in use, {} timeouts", s.connections, s.idle, s.in_use, s.gets_timed_out);
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// Checkouts that had to wait for a connection (one restarted after a stale connect
    /// failure, see [`TcpPool::get`](crate::TcpPool::get), may count twice).
    pub gets_waited: u64,
    /// Checkouts that timed out (answered `503`).
    pub gets_timed_out: u64,
    /// Total time checkouts spent waiting.
    pub wait_time: Duration,
    /// Connections opened.
    pub connections_created: u64,
    /// Connect attempts that failed (refused, name not resolved, timed out), plus each time
    /// more than `max_size` new connections in a row failed their health check.
    pub connect_failures: u64,
    /// Connections closed when returned because they were not known clean (bb8's count).
    /// bb8 also counts here each connection that failed the checkout health check, so use
    /// [`discards`](Self::discards) for a count by reason.
    pub closed_broken: u64,
    /// Connections closed at checkout because they failed the health check (bb8's count;
    /// equal to `discards.health_check` unless a checkout was cancelled mid-probe).
    pub closed_invalid: u64,
    /// Connections closed because they sat idle longer than `idle_timeout`.
    pub closed_idle_timeout: u64,
    /// Connections closed because they were older than `max_lifetime`.
    pub closed_max_lifetime: u64,
    /// Connections closed instead of being reused, by reason.
    pub discards: Discards,
}

impl PoolState {
    pub(crate) fn new(s: bb8::State, c: &Counters) -> Self {
        let st = s.statistics;
        PoolState {
            connections: s.connections,
            idle: s.idle_connections,
            in_use: s.connections.saturating_sub(s.idle_connections),
            gets: st.get_started.saturating_sub(c.restarts.load(Relaxed)),
            gets_waited: st.get_waited,
            gets_timed_out: st.get_timed_out + c.restart_timeouts.load(Relaxed),
            wait_time: st.get_wait_time,
            connections_created: st.connections_created,
            connect_failures: c.connect_failures.load(Relaxed),
            closed_broken: st.connections_closed_broken,
            closed_invalid: st.connections_closed_invalid,
            closed_idle_timeout: st.connections_closed_idle_timeout,
            closed_max_lifetime: st.connections_closed_max_lifetime,
            discards: c.discards(),
        }
    }
}

/// Counters for what bb8 cannot know.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) connect_failures: AtomicU64,
    /// Checkouts started again after a stale connect failure (see `TcpPool::get`): bb8
    /// counts each restart as a checkout of its own.
    pub(crate) restarts: AtomicU64,
    /// Restarted checkouts that reached the first one's deadline (bb8 does not see these).
    pub(crate) restart_timeouts: AtomicU64,
    io_error: AtomicU64,
    eof: AtomicU64,
    cancelled: AtomicU64,
    unread_bytes: AtomicU64,
    reply_not_read: AtomicU64,
    panic: AtomicU64,
    explicit: AtomicU64,
    health_check: AtomicU64,
}

impl Counters {
    fn discard(&self, reason: DiscardReason) -> &AtomicU64 {
        match reason {
            DiscardReason::IoError => &self.io_error,
            DiscardReason::Eof => &self.eof,
            DiscardReason::Cancelled => &self.cancelled,
            DiscardReason::UnreadBytes => &self.unread_bytes,
            DiscardReason::ReplyNotRead => &self.reply_not_read,
            DiscardReason::Panic => &self.panic,
            DiscardReason::Explicit => &self.explicit,
            DiscardReason::HealthCheck => &self.health_check,
        }
    }

    pub(crate) fn record_discard(&self, reason: DiscardReason) {
        self.discard(reason).fetch_add(1, Relaxed);
    }

    fn discards(&self) -> Discards {
        let n = |r: DiscardReason| self.discard(r).load(Relaxed);
        Discards {
            io_error: n(DiscardReason::IoError),
            eof: n(DiscardReason::Eof),
            cancelled: n(DiscardReason::Cancelled),
            unread_bytes: n(DiscardReason::UnreadBytes),
            reply_not_read: n(DiscardReason::ReplyNotRead),
            panic: n(DiscardReason::Panic),
            explicit: n(DiscardReason::Explicit),
            health_check: n(DiscardReason::HealthCheck),
        }
    }
}
