//! [`Shared`]: what one endpoint's bb8 pool, its manager and its connections share.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use crate::failfast::FailFast;
use crate::lifecycle::Lifecycle;
use crate::pool::config::Config;
use crate::pool::leak::Leaks;
use crate::replicas::Outlier;
use crate::state::Counters;
use crate::transport::Connector;

/// One endpoint: the pool's settings, the endpoint's address and connector, its counters,
/// fail-fast state and outlier state.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Arc<Config>,
    /// The endpoint's address: the `endpoint` field of spans and events.
    pub(crate) addr: Arc<str>,
    pub(crate) connector: Connector,
    pub(crate) counters: Counters,
    pub(crate) fail_fast: FailFast,
    pub(crate) outlier: Outlier,
    /// Checkouts waiting for a connection of this endpoint (for the balancer).
    pub(crate) waiting: AtomicU64,
    /// Connections open (from connect until bb8 drops them).
    pub(crate) open: AtomicU64,
    /// Taken out of the pool's set (or the pool closed): no new connection, none given back.
    pub(crate) removed: AtomicBool,
    /// Woken, once removed, by each connection closing and each connect ending.
    pub(crate) drained: tokio::sync::Notify,
    /// The runtime the pool was built in, lent to a connection dropped on a thread without
    /// one (bb8 may spawn a refill task then).
    pub(crate) runtime: tokio::runtime::Handle,
    /// Lifetimes, `min_idle`, idle timeout and idle probing (see the `lifecycle` module).
    pub(crate) lifecycle: Lifecycle,
    /// Leak detection, `None` when off.
    pub(crate) leaks: Option<Leaks>,
}

impl Shared {
    /// Counts and logs a failed connect attempt (or a backend that accepts connections but
    /// fails every new one's health check).
    pub(crate) fn connect_failed(&self, err: &io::Error, what: &str) {
        self.counters.connect_failed();
        tracing::warn!(
            pool = self.config.name(),
            addr = &*self.addr,
            endpoint = &*self.addr,
            reason = %err.kind(),
            error = %err,
            "{what}"
        );
    }

    /// A failure counted against this endpoint by outlier detection.
    pub(crate) fn failed(&self) {
        if let Some(length) = self.outlier.failed() {
            tracing::warn!(
                pool = self.config.name(),
                addr = &*self.addr,
                endpoint = &*self.addr,
                ejected_for_ms = u64::try_from(length.as_millis()).unwrap_or(u64::MAX),
                failures = self.outlier.consecutive_failures(),
                "endpoint ejected after failures in a row"
            );
        }
    }

    pub(crate) fn is_removed(&self) -> bool {
        self.removed.load(Relaxed)
    }

    /// Connections lent out plus checkouts waiting: the balancer's load.
    pub(crate) fn load(&self) -> u64 {
        self.fail_fast.lent() + self.waiting.load(Relaxed)
    }

    /// Whether every connection this endpoint may open is lent out or promised to a waiting
    /// checkout: a checkout here would wait.
    pub(crate) fn is_full(&self) -> bool {
        self.load() >= u64::from(self.config.max_size)
    }

    /// Whether a connection is open that is neither lent out nor promised to a waiting
    /// checkout.
    pub(crate) fn has_idle_connection(&self) -> bool {
        self.open.load(Relaxed) > self.load()
    }

    /// Whether a checkout here would not make the pool open a connection while another
    /// endpoint has one idle: a connection is open that is neither lent out nor promised to
    /// a waiting checkout, or none is open at all. (An endpoint with no connection yet, just
    /// added or back from an outage, must not lose every choice to one with an idle
    /// connection, or at low load it would never open its first.)
    pub(crate) fn has_idle(&self) -> bool {
        self.open.load(Relaxed) == 0 || self.has_idle_connection()
    }

    /// Counts and logs a failed connect attempt, through the outage log (the first of an
    /// outage, then summaries).
    pub(crate) fn connect_attempt_failed(&self, err: &io::Error) {
        self.counters.connect_failed();
        self.fail_fast
            .outage
            .failed(self.config.name(), &self.addr, err);
    }

    /// A connection that never served a request, opened by `attempt`, failed its health
    /// check: if connections opened
    /// since the last such failure fail too, a failed connect for the reconnect backoff
    /// (see `FailFast::new_connection_failed`). Not counted in `connect_failures` (each
    /// connect succeeded); the connects it then refuses are, in `connects_backed_off`.
    #[cold]
    pub(crate) fn new_connection_failed(&self, attempt: u64, err: &io::Error) {
        if self.fail_fast.new_connection_failed(attempt) {
            tracing::debug!(
                pool = self.config.name(),
                addr = &*self.addr,
                endpoint = &*self.addr,
                error = %err,
                "new connections fail before serving anything: backing off"
            );
        }
    }

    /// Counts and logs a connect refused by the reconnect backoff.
    pub(crate) fn connect_backed_off(&self) {
        self.counters.connect_backed_off();
        self.fail_fast
            .outage
            .refused(self.config.name(), &self.addr);
    }

    /// A connect attempt succeeded: logs the end of an outage.
    pub(crate) fn connect_succeeded(&self) {
        self.fail_fast
            .outage
            .connected(self.config.name(), &self.addr);
    }
}
