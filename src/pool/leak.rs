//! Leak detection ([`leak_threshold`](crate::TcpPoolBuilder::leak_threshold)): a connection
//! held longer than the threshold is reported while it is still held.
//!
//! A connection is *held* from the successful checkout that lends it (past its health check)
//! until it comes back to the pool (`has_broken`) or is dropped. Held longer than the
//! threshold, it is reported once per checkout: one `warn` event, `"connection held longer
//! than leak_threshold, suspected leak"`, with the fields `pool`, `addr` and `endpoint` (the
//! endpoint's address), `held_ms` (how long it has been held so far), `threshold_ms` and,
//! when it was checked out under [`TcpPoolLayer`](crate::TcpPoolLayer) (eagerly, or lazily by
//! the extractor or [`LazyConnection::get`](crate::LazyConnection::get)), the request's
//! `method` and `path` (the path only: a query string may carry secrets). A checkout made
//! with [`TcpPool::get`](crate::TcpPool::get) has no request, so no `method` nor `path`. Each
//! report counts one in [`PoolState::suspected_leaks`](crate::PoolState::suspected_leaks).
//! If the connection comes back after the report, an `info` event, `"connection suspected of
//! leaking came back"`, gives the same fields with the whole time it was held: a slow
//! request, not a leak. The report comes while the connection is held (a leaked one may never
//! come back), at most a quarter of the threshold late.
//!
//! How it works, per endpoint: each connection has a record, made when it is opened and
//! dropped with it, that holds when it was lent (or that it is not), whether it was reported,
//! and the request it was lent to. A checkout stamps it; a return clears it. One background
//! task per endpoint looks at every record each quarter of the threshold (at least every
//! millisecond, at most every minute); it holds the endpoint weakly, and ends when the pool
//! is gone. No timer per checkout.
//!
//! Cost: off (the default), nothing but a test of an `Option` at a checkout, at a return and
//! when a request is handed to the layer. On, per checkout: one clock read, one uncontended
//! lock, a copy of the request's method and path into the record (no allocation for the
//! standard methods, once the record's buffer is long enough), one atomic store; per return, one atomic swap.

use std::sync::atomic::{AtomicU64, Ordering::*};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use http::{Method, Uri};
use tokio::time::{Instant, MissedTickBehavior};

use crate::pool::shared::Shared;

/// How often the records are looked at: a quarter of the threshold, within these bounds.
const MIN_SCAN: Duration = Duration::from_millis(1);
const MAX_SCAN: Duration = Duration::from_secs(60);

/// One endpoint's leak detection: its threshold and its connections' records.
#[derive(Debug)]
pub(crate) struct Leaks {
    threshold: Duration,
    /// Stamps are nanoseconds since this instant.
    epoch: Instant,
    records: Mutex<Vec<Arc<Lease>>>,
}

/// One connection's record.
#[derive(Debug, Default)]
pub(crate) struct Lease {
    /// `0`: not lent. Otherwise the stamp of the lend, shifted left by one, with the low bit
    /// set once it has been reported.
    state: AtomicU64,
    /// The stamp and the request of the last lend (written before `state`).
    lent: Mutex<Lent>,
}

#[derive(Debug, Default)]
struct Lent {
    /// Strictly increasing per connection, so no two lends of it look the same.
    since: u64,
    /// The request's method, `None` for a checkout outside a request.
    method: Option<Method>,
    /// The request's path, copied (its buffer reused: no allocation once it is long enough;
    /// no reference kept to the request's own buffers).
    path: String,
}

impl Lent {
    /// The method and path, for a report.
    fn request(&self) -> Option<(Method, String)> {
        let method = self.method.clone()?;
        Some((method, self.path.clone()))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn millis(nanos: u64) -> u64 {
    nanos / 1_000_000
}

impl Leaks {
    /// Leak detection with this threshold, or `None` when it is off.
    pub(crate) fn new(threshold: Option<Duration>) -> Option<Leaks> {
        Some(Leaks {
            threshold: threshold?,
            epoch: Instant::now(),
            records: Mutex::new(Vec::new()),
        })
    }

    /// Nanoseconds since the epoch, at least 1 and small enough to shift left by one.
    fn now(&self) -> u64 {
        let nanos = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        nanos.clamp(1, u64::MAX >> 2)
    }

    fn threshold_nanos(&self) -> u64 {
        u64::try_from(self.threshold.as_nanos()).unwrap_or(u64::MAX)
    }

    /// The record of a connection just opened.
    #[inline(never)]
    pub(crate) fn register(&self) -> Arc<Lease> {
        let lease = Arc::new(Lease::default());
        lock(&self.records).push(lease.clone());
        lease
    }

    /// The record of a connection being dropped.
    #[inline(never)]
    pub(crate) fn unregister(&self, lease: &Arc<Lease>) {
        let mut records = lock(&self.records);
        if let Some(i) = records.iter().position(|r| Arc::ptr_eq(r, lease)) {
            records.swap_remove(i);
        }
    }
}

// The hooks are out of line (`inline(never)`): the checkout and return paths that call them
// stay as small as with leak detection off.
impl Lease {
    /// The connection is lent (by a successful checkout), to no request so far.
    #[inline(never)]
    pub(crate) fn lend(&self, leaks: &Leaks) {
        let now = leaks.now();
        let since = {
            let mut lent = lock(&self.lent);
            lent.since = now.max(lent.since + 1);
            lent.method = None;
            lent.path.clear();
            lent.since
        };
        self.state.store(since << 1, Release);
    }

    /// The connection just lent is for this request (under the layer, right after the
    /// checkout). Only its path is kept, never the query.
    #[inline(never)]
    pub(crate) fn lent_to(&self, method: &Method, uri: &Uri) {
        let mut lent = lock(&self.lent);
        lent.method = Some(method.clone());
        lent.path.clear();
        lent.path.push_str(uri.path());
    }

    /// The connection came back (or is dropped). Logs it if it was reported.
    #[inline(never)]
    pub(crate) fn returned(&self, shared: &Shared) {
        let state = self.state.swap(0, AcqRel);
        if state & 1 == 0 {
            return;
        }
        let Some(leaks) = &shared.leaks else {
            return;
        };
        let held_ms = millis(leaks.now().saturating_sub(state >> 1));
        let request = lock(&self.lent).request();
        let (pool, endpoint) = (shared.config.name(), &*shared.addr);
        let threshold_ms = u64::try_from(leaks.threshold.as_millis()).unwrap_or(u64::MAX);
        let message = "connection suspected of leaking came back";
        match request {
            Some((method, path)) => tracing::info!(
                pool,
                addr = endpoint,
                endpoint,
                held_ms,
                threshold_ms,
                method = %method,
                path = path.as_str(),
                "{message}"
            ),
            None => tracing::info!(
                pool,
                addr = endpoint,
                endpoint,
                held_ms,
                threshold_ms,
                "{message}"
            ),
        }
    }
}

/// Starts the endpoint's background task, if leak detection is on. It holds the endpoint
/// weakly and ends once it is gone.
pub(crate) fn spawn(shared: &Arc<Shared>) {
    let Some(leaks) = &shared.leaks else {
        return;
    };
    let every = (leaks.threshold / 4).clamp(MIN_SCAN, MAX_SCAN);
    let endpoint: Weak<Shared> = Arc::downgrade(shared);
    shared.runtime.spawn(async move {
        let mut tick = tokio::time::interval_at(Instant::now() + every, every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(shared) = endpoint.upgrade() else {
                return;
            };
            scan(&shared);
        }
    });
}

/// Reports each connection held longer than the threshold and not reported yet.
fn scan(shared: &Shared) {
    let Some(leaks) = &shared.leaks else {
        return;
    };
    let (now, threshold) = (leaks.now(), leaks.threshold_nanos());
    let mut suspects = Vec::new();
    for lease in lock(&leaks.records).iter() {
        let state = lease.state.load(Acquire);
        let since = state >> 1;
        if state == 0 || state & 1 != 0 || now.saturating_sub(since) < threshold {
            continue;
        }
        let request = {
            let lent = lock(&lease.lent);
            if lent.since != since {
                continue;
            }
            lent.request()
        };
        // Still this lend, not returned meanwhile: reported once.
        if lease
            .state
            .compare_exchange(state, state | 1, AcqRel, Relaxed)
            .is_ok()
        {
            suspects.push((millis(now - since), request));
        }
    }
    let (pool, endpoint) = (shared.config.name(), &*shared.addr);
    let threshold_ms = u64::try_from(leaks.threshold.as_millis()).unwrap_or(u64::MAX);
    let message = "connection held longer than leak_threshold, suspected leak";
    for (held_ms, request) in suspects {
        shared.counters.suspected_leak();
        match request {
            Some((method, path)) => tracing::warn!(
                pool,
                addr = endpoint,
                endpoint,
                held_ms,
                threshold_ms,
                method = %method,
                path = path.as_str(),
                "{message}"
            ),
            None => tracing::warn!(
                pool,
                addr = endpoint,
                endpoint,
                held_ms,
                threshold_ms,
                "{message}"
            ),
        }
    }
}
