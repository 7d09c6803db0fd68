//! Outlier detection: [`OutlierDetection`] (the settings), [`Outlier`] (one endpoint's
//! failure count and ejection) and [`Ejections`] (the pool-wide cap on ejected endpoints).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::time::Instant;

use crate::error::TcpPoolError;

/// When an endpoint of a pool with [several](crate::TcpPoolBuilder::endpoint) is taken out of
/// rotation, and for how long. See [the builder's docs](crate::TcpPoolBuilder#several-endpoints).
///
/// An endpoint is ejected after `consecutive_failures` failures in a row: connect failures,
/// and I/O errors or end-of-file met by a handler on its connections. A connection given back
/// clean after use resets the count; a connection found closed while idle does not count.
/// The n-th ejection in a row lasts `base_ejection_time × n`, at most `max_ejection_time`.
///
/// ```
/// use std::time::Duration;
/// use axum_tcp_pool::OutlierDetection;
/// let strict = OutlierDetection::new()
///     .consecutive_failures(3)
///     .base_ejection_time(Duration::from_secs(10))
///     .max_ejection_time(Duration::from_secs(120))
///     .max_ejected_percent(34);
/// let off = OutlierDetection::disabled();
/// assert_ne!(strict, off);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutlierDetection {
    enabled: bool,
    consecutive_failures: u32,
    base_ejection_time: Duration,
    max_ejection_time: Duration,
    max_ejected_percent: u32,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection::new()
    }
}

impl OutlierDetection {
    /// The defaults: 5 failures in a row eject for 30 s (×n, at most 300 s); at most 50% of
    /// the endpoints are ejected at once.
    ///
    /// ```
    /// assert_eq!(axum_tcp_pool::OutlierDetection::new(), Default::default());
    /// ```
    pub fn new() -> Self {
        OutlierDetection {
            enabled: true,
            consecutive_failures: 5,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejected_percent: 50,
        }
    }

    /// No endpoint is ever ejected (failover inside a checkout still happens).
    ///
    /// ```
    /// let off = axum_tcp_pool::OutlierDetection::disabled();
    /// ```
    pub fn disabled() -> Self {
        OutlierDetection {
            enabled: false,
            ..OutlierDetection::new()
        }
    }

    /// Failures in a row that eject an endpoint (at least 1; default 5).
    ///
    /// ```
    /// let o = axum_tcp_pool::OutlierDetection::new().consecutive_failures(3);
    /// ```
    pub fn consecutive_failures(mut self, n: u32) -> Self {
        self.consecutive_failures = n;
        self
    }

    /// The length of a first ejection (default 30 s); the n-th in a row lasts n times this.
    ///
    /// ```
    /// let o = axum_tcp_pool::OutlierDetection::new().base_ejection_time(std::time::Duration::from_secs(5));
    /// ```
    pub fn base_ejection_time(mut self, d: Duration) -> Self {
        self.base_ejection_time = d;
        self
    }

    /// The longest an ejection lasts (default 300 s; not less than `base_ejection_time`).
    ///
    /// ```
    /// let o = axum_tcp_pool::OutlierDetection::new().max_ejection_time(std::time::Duration::from_secs(60));
    /// ```
    pub fn max_ejection_time(mut self, d: Duration) -> Self {
        self.max_ejection_time = d;
        self
    }

    /// The most endpoints ejected at once, in percent of the pool's endpoints, rounded down
    /// (0 to 100; default 50). A pool of one endpoint never ejects it.
    ///
    /// ```
    /// let o = axum_tcp_pool::OutlierDetection::new().max_ejected_percent(100);
    /// ```
    pub fn max_ejected_percent(mut self, percent: u32) -> Self {
        self.max_ejected_percent = percent;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), TcpPoolError> {
        if self.consecutive_failures == 0 {
            return Err(TcpPoolError::config(
                "outlier_detection: consecutive_failures must be at least 1; use OutlierDetection::disabled() to turn ejection off",
            ));
        }
        if self.base_ejection_time.is_zero() {
            return Err(TcpPoolError::config(
                "outlier_detection: base_ejection_time must be greater than zero",
            ));
        }
        if self.max_ejection_time < self.base_ejection_time {
            return Err(TcpPoolError::config(format!(
                "outlier_detection: max_ejection_time ({:?}) must not be less than base_ejection_time ({:?})",
                self.max_ejection_time, self.base_ejection_time
            )));
        }
        if self.max_ejected_percent > 100 {
            return Err(TcpPoolError::config(format!(
                "outlier_detection: max_ejected_percent must be 0 to 100 (got {})",
                self.max_ejected_percent
            )));
        }
        Ok(())
    }
}

/// The pool-wide cap: which endpoints are ejected now, out of how many.
///
/// The one state all endpoints of a pool share, it also carries [`Returns`]: the wake-up of
/// checkouts waiting on a full endpoint when a connection comes back to any endpoint.
#[derive(Debug)]
pub(crate) struct Ejections {
    inner: Mutex<Budget>,
    pub(crate) returns: Returns,
}

/// Wakes the checkouts that wait on a full endpoint when a connection comes back to any
/// endpoint of the pool, so they can move to the one that has room now.
#[derive(Debug, Default)]
pub(crate) struct Returns {
    notify: tokio::sync::Notify,
    waiters: std::sync::atomic::AtomicUsize,
}

impl Returns {
    /// A connection came back (clean or to be closed: either frees a place). Costs a load
    /// while no checkout waits on a full endpoint.
    pub(crate) fn returned(&self) {
        if self.waiters.load(Relaxed) > 0 {
            self.notify.notify_waiters();
        }
    }

    /// Counts a waiting checkout until the guard is dropped; `notified()` is its wake-up.
    pub(crate) fn waiter(&self) -> ReturnWaiter<'_> {
        self.waiters.fetch_add(1, Relaxed);
        ReturnWaiter(self)
    }
}

/// See [`Returns::waiter`].
pub(crate) struct ReturnWaiter<'a>(&'a Returns);

impl<'a> ReturnWaiter<'a> {
    pub(crate) fn notified(&self) -> tokio::sync::futures::Notified<'a> {
        self.0.notify.notified()
    }
}

impl Drop for ReturnWaiter<'_> {
    fn drop(&mut self) {
        self.0.waiters.fetch_sub(1, Relaxed);
    }
}

#[derive(Debug)]
struct Budget {
    /// Endpoints in the pool's set.
    endpoints: usize,
    /// `max_ejected_percent`.
    percent: u32,
    /// Ejections under way: endpoint id and end, oldest first.
    active: Vec<(u64, Instant)>,
}

impl Budget {
    /// The most endpoints ejected at once: rounded down; a pool of one never ejects it.
    fn cap(&self) -> usize {
        if self.endpoints <= 1 {
            0
        } else {
            self.endpoints * self.percent as usize / 100
        }
    }
}

impl Ejections {
    /// The set changed: `ids` are the endpoints in it now.
    /// The cap of `settings`, over no endpoints yet.
    pub(crate) fn new(settings: &OutlierDetection) -> Self {
        Ejections {
            inner: Mutex::new(Budget {
                endpoints: 0,
                percent: settings.max_ejected_percent,
                active: Vec::new(),
            }),
            returns: Returns::default(),
        }
    }

    /// The set changed: `ids` are the endpoints in it now. Ejections of endpoints no longer
    /// in it end, and so do the newest ones over the new cap (a smaller set allows fewer).
    pub(crate) fn set_endpoints(&self, ids: &[u64]) {
        if let Ok(mut b) = self.inner.lock() {
            b.endpoints = ids.len();
            b.active.retain(|(id, _)| ids.contains(id));
            let cap = b.cap();
            b.active.truncate(cap);
        }
    }

    /// Whether endpoint `id`'s ejection is still booked (not ended by a change of the set).
    fn is_booked(&self, id: u64) -> bool {
        self.inner
            .lock()
            .map(|b| b.active.iter().any(|&(other, _)| other == id))
            .unwrap_or(false)
    }

    /// Books an ejection of endpoint `id` until `until` if the cap allows one more.
    fn try_book(&self, id: u64, until: Instant, now: Instant) -> bool {
        let Ok(mut b) = self.inner.lock() else {
            return false;
        };
        b.active.retain(|&(other, end)| end > now && other != id);
        if b.active.len() >= b.cap() {
            return false;
        }
        b.active.push((id, until));
        true
    }
}

/// One endpoint's failure count and ejection.
#[derive(Debug)]
pub(crate) struct Outlier {
    settings: OutlierDetection,
    ejections: Arc<Ejections>,
    id: u64,
    consecutive: AtomicU32,
    times_ejected: AtomicU64,
    /// Set while an ejection may be under way: the check on every checkout reads only this
    /// until an endpoint is first ejected.
    maybe_ejected: AtomicBool,
    ejection: Mutex<Ejection>,
}

#[derive(Debug, Default)]
struct Ejection {
    /// The end of the current (or last) ejection.
    until: Option<Instant>,
    /// n: how many ejections in a row this one is.
    level: u32,
    /// The first clean return since the last ejection ended: n falls back from there.
    clean_since: Option<Instant>,
}

impl Outlier {
    pub(crate) fn new(settings: OutlierDetection, ejections: Arc<Ejections>, id: u64) -> Self {
        Outlier {
            settings,
            ejections,
            id,
            consecutive: AtomicU32::new(0),
            times_ejected: AtomicU64::new(0),
            maybe_ejected: AtomicBool::new(false),
            ejection: Mutex::new(Ejection::default()),
        }
    }

    /// A failure: counts, and ejects once there are enough in a row. Returns whether this
    /// failure ejected the endpoint, and for how long.
    pub(crate) fn failed(&self) -> Option<Duration> {
        self.failed_at(Instant::now())
    }

    fn failed_at(&self, now: Instant) -> Option<Duration> {
        if !self.settings.enabled {
            return None;
        }
        let n = self.consecutive.fetch_add(1, Relaxed).saturating_add(1);
        // Still at or past the threshold after an ejection ends: one more failure ejects again.
        if n < self.settings.consecutive_failures {
            return None;
        }
        self.eject(now)
    }

    /// A connection came back clean after use: the failures in a row end.
    pub(crate) fn succeeded(&self) {
        // Read first: no shared write on the hot path while nothing fails.
        if self.consecutive.load(Relaxed) != 0 {
            self.succeeded_at(Instant::now());
        }
    }

    /// The end of failures in a row; after an ejection (the count stays at the threshold
    /// while ejected, so this is its first clean return), n starts falling back.
    fn succeeded_at(&self, now: Instant) {
        self.consecutive.store(0, Relaxed);
        if self.times_ejected.load(Relaxed) == 0 {
            return;
        }
        if let Ok(mut e) = self.ejection.lock() {
            if e.clean_since.is_none() && e.until.is_some_and(|until| until <= now) {
                e.clean_since = Some(now);
            }
        }
    }

    fn eject(&self, now: Instant) -> Option<Duration> {
        let mut e = self.ejection.lock().ok()?;
        if e.until.is_some_and(|until| until > now) {
            return None;
        }
        // n falls back by one for each base ejection time served cleanly since the last
        // ejection: from its first clean return after it ended.
        let level = match e.clean_since.take() {
            Some(since) => {
                let served = now.saturating_duration_since(since);
                let steps = served.as_nanos() / self.settings.base_ejection_time.as_nanos().max(1);
                e.level
                    .saturating_sub(u32::try_from(steps).unwrap_or(u32::MAX))
            }
            None => e.level,
        }
        .saturating_add(1);
        let length = self
            .settings
            .base_ejection_time
            .checked_mul(level)
            .unwrap_or(Duration::MAX)
            .min(self.settings.max_ejection_time);
        let until = now.checked_add(length)?;
        if !self.ejections.try_book(self.id, until, now) {
            return None;
        }
        e.until = Some(until);
        e.level = level;
        self.maybe_ejected.store(true, Relaxed);
        self.times_ejected.fetch_add(1, Relaxed);
        Some(length)
    }

    /// Whether the endpoint is ejected now.
    pub(crate) fn is_ejected(&self) -> bool {
        self.is_ejected_at(Instant::now())
    }

    fn is_ejected_at(&self, now: Instant) -> bool {
        if !self.maybe_ejected.load(Relaxed) {
            return false;
        }
        let Ok(mut e) = self.ejection.lock() else {
            return false;
        };
        if e.until.is_some_and(|until| until > now) {
            if self.ejections.is_booked(self.id) {
                return true;
            }
            // Ended early by a change of the set (it shrank, or this endpoint left it).
            e.until = Some(now);
        }
        self.maybe_ejected.store(false, Relaxed);
        false
    }

    /// The pool-wide state this endpoint shares with the others.
    pub(crate) fn pool(&self) -> &Ejections {
        &self.ejections
    }

    pub(crate) fn consecutive_failures(&self) -> u32 {
        self.consecutive.load(Relaxed)
    }

    pub(crate) fn times_ejected(&self) -> u64 {
        self.times_ejected.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outlier(settings: OutlierDetection, endpoints: usize) -> Vec<Outlier> {
        let ejections = Arc::new(Ejections::new(&settings));
        let ids: Vec<u64> = (0..endpoints as u64).collect();
        ejections.set_endpoints(&ids);
        ids.iter()
            .map(|&id| Outlier::new(settings, ejections.clone(), id))
            .collect()
    }

    fn settings() -> OutlierDetection {
        OutlierDetection::new()
            .consecutive_failures(3)
            .base_ejection_time(Duration::from_secs(10))
            .max_ejection_time(Duration::from_secs(25))
    }

    /// A clock the tests move by hand.
    struct Clock(Instant);

    impl Clock {
        fn advance(&mut self, secs: u64) -> Instant {
            self.0 += Duration::from_secs(secs);
            self.0
        }
    }

    #[test]
    fn ejects_after_failures_in_a_row_for_longer_each_time_and_falls_back() {
        let o = outlier(settings(), 3);
        let o = &o[0];
        let mut clock = Clock(Instant::now());
        let t = clock.0;
        assert_eq!((o.failed_at(t), o.failed_at(t)), (None, None));
        o.succeeded();
        assert_eq!(
            (o.failed_at(t), o.failed_at(t)),
            (None, None),
            "the count was reset"
        );
        assert_eq!(o.failed_at(t), Some(Duration::from_secs(10)));
        assert!(o.is_ejected_at(t));
        assert_eq!(o.failed_at(t), None, "already ejected");
        let t = clock.advance(10);
        assert!(!o.is_ejected_at(t), "the ejection ended");
        assert_eq!(
            o.failed_at(t),
            Some(Duration::from_secs(20)),
            "one more failure: longer"
        );
        let t = clock.advance(20);
        assert_eq!(o.failed_at(t), Some(Duration::from_secs(25)), "capped");
        // Out of its ejection but not serving: n does not fall back.
        let t = clock.advance(25 + 30);
        assert_eq!(
            o.failed_at(t),
            Some(Duration::from_secs(25)),
            "n is 4, capped"
        );
        // Served cleanly for three base ejection times: n falls from 4 to 1.
        let t = clock.advance(25);
        o.succeeded_at(t);
        let t = clock.advance(30);
        assert_eq!(
            (o.failed_at(t), o.failed_at(t)),
            (None, None),
            "the count was reset"
        );
        assert_eq!(o.failed_at(t), Some(Duration::from_secs(20)), "n is 2");
        assert_eq!(o.times_ejected(), 5);
    }

    #[test]
    fn the_cap_is_rounded_down_and_one_endpoint_is_never_ejected() {
        let mut clock = Clock(Instant::now());
        let t = clock.0;
        let fail = |o: &Outlier| (0..3).filter_map(|_| o.failed_at(t)).count();
        let three = outlier(settings().max_ejected_percent(50), 3);
        assert_eq!(three.iter().map(fail).sum::<usize>(), 1, "50% of 3 is 1");
        let one = outlier(settings().max_ejected_percent(100), 1);
        assert_eq!(fail(&one[0]), 0);
        let off = outlier(OutlierDetection::disabled(), 3);
        assert_eq!(fail(&off[0]), 0);
        // Once the first ejection ends, another endpoint may be ejected.
        let t = clock.advance(10);
        assert_eq!(three[1].failed_at(t), Some(Duration::from_secs(10)));
    }
}
