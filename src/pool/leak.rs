//! Leak detection ([`leak_threshold`](crate::TcpPoolBuilder::leak_threshold)): a connection
//! held longer than the threshold is reported, once, while it is still held. What users see
//! (the events, their fields, the counter) is in the builder's docs, "Leak detection".
//!
//! A connection is *held* from the successful checkout that lends it (past its health check,
//! in `checkout_one`) until it comes back to the pool (`has_broken`) or is dropped.
//!
//! Per endpoint, with the threshold set: each connection has a record ([`Lease`]), made when
//! it is opened and dropped with it, registered in the endpoint's [`Leaks`]. A checkout stamps
//! it (nanoseconds since the endpoint's epoch, strictly increasing per connection, so no two
//! lends look alike); under the layer, the request's method and path are copied into it right
//! after (by the eager layer when it puts the connection into the request, by the extractor
//! or `LazyConnection::get` when lazy); a return swaps the stamp to 0. One background task per
//! endpoint looks at every record each quarter of the threshold (1 ms to 60 s): a record
//! stamped longer ago than the threshold and not yet reported is marked reported (a
//! compare-and-swap on the stamp, so a return racing with it either wins, and nothing is
//! reported, or sees the mark, and says it came back), counted, then logged. The task holds
//! the endpoint weakly and ends when it is gone. No timer per checkout.
//!
//! Off (the default): no record, no task; a checkout and a return each test an `Option`, and
//! the eager layer chose its slot-filling function once, at the checkout. On, per checkout:
//! one clock read, two uncontended locks, a copy of the method (no allocation for the
//! standard ones) and the path (into the record's reused buffer), one atomic store; per
//! return, one atomic swap.

use std::sync::atomic::{AtomicU64, Ordering::*};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use http::{Method, Uri};
use tokio::time::{Instant, MissedTickBehavior};

use crate::pool::shared::Shared;

/// One leak event at `level`, with the request's method and path when known.
macro_rules! report {
    ($level:ident, $message:expr, ($pool:expr, $endpoint:expr, $held_ms:expr, $threshold_ms:expr), $request:expr) => {{
        let (pool, endpoint, held_ms, threshold_ms) = ($pool, $endpoint, $held_ms, $threshold_ms);
        match $request {
            Some((method, path)) => tracing::$level!(
                pool,
                addr = endpoint,
                endpoint,
                held_ms,
                threshold_ms,
                method = %method,
                path = path.as_str(),
                $message
            ),
            None => tracing::$level!(pool, addr = endpoint, endpoint, held_ms, threshold_ms, $message),
        }
    }};
}

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
    /// checkout), unless a request was named already for this lend. Only its path is kept,
    /// never the query.
    #[inline(never)]
    pub(crate) fn lent_to(&self, method: &Method, uri: &Uri) {
        let mut lent = lock(&self.lent);
        if lent.method.is_some() {
            return;
        }
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
        report!(
            info,
            "connection suspected of leaking came back",
            (pool, endpoint, held_ms, threshold_ms),
            request
        );
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
    for (held_ms, request) in suspects {
        shared.counters.suspected_leak();
        report!(
            warn,
            "connection held longer than leak_threshold, suspected leak",
            (pool, endpoint, held_ms, threshold_ms),
            request
        );
    }
}
