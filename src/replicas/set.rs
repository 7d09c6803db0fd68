//! [`Endpoints`]: a pool's set of endpoints, the balancer over it, and run-time changes to it.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Waker};

use tokio::sync::Notify;

use crate::error::TcpPoolError;
use crate::pool::{check_endpoints, Config};
use crate::replicas::balance::{Balancer, Load};
use crate::replicas::endpoint::Endpoint;
use crate::replicas::outlier::Ejections;
use crate::state::PoolState;

/// The current set of one pool's endpoints (what every handle of the pool shares), those
/// removed but still draining, and the totals of those drained.
#[derive(Debug)]
pub(crate) struct Endpoints {
    pub(crate) config: Arc<Config>,
    current: RwLock<Arc<[Arc<Endpoint>]>>,
    /// The first endpoint the pool was built with, and whether the set is that endpoint
    /// alone: the checkout of a one-endpoint pool then takes neither the lock nor a
    /// reference count.
    /// (None for a pool that resolves its set: it starts empty.)
    first: Option<Arc<Endpoint>>,
    first_only: AtomicBool,
    /// Set once the first lookup of `resolve_endpoints` was applied (at once without it).
    looked_up: AtomicBool,
    looked_up_now: Notify,
    /// Removed endpoints with connections still open (in use when they were removed).
    draining: Mutex<Vec<Arc<Endpoint>>>,
    /// The totals of removed endpoints that have no connection left.
    retired: Mutex<PoolState>,
    balancer: Balancer,
    ejections: Arc<Ejections>,
    next_id: AtomicU64,
    /// The addresses as given (host names, with `resolve_endpoints`).
    pub(crate) names: Mutex<Vec<String>>,
    /// Wakes the resolver task when `names` change.
    pub(crate) names_changed: Arc<Notify>,
    /// The runtime the pool was built in (bb8 spawns its tasks there).
    runtime: tokio::runtime::Handle,
    /// Set by `TcpPool::close`: no checkout, no change of the set, every endpoint drained.
    closed: AtomicBool,
    /// The endpoints whose metrics were exported last.
    #[cfg(feature = "metrics")]
    recorded: Mutex<Vec<String>>,
    /// The throttle of the `warn` logged for the pool's `502` responses.
    pub(crate) responses: Arc<crate::failfast::throttle::Throttle>,
}

impl Endpoints {
    /// The set of `endpoints`, made from `config` (ids 0, 1, ... in order), built in the
    /// current runtime.
    pub(crate) fn new(
        config: Arc<Config>,
        endpoints: Vec<Arc<Endpoint>>,
        ejections: Arc<Ejections>,
        runtime: tokio::runtime::Handle,
    ) -> Arc<Endpoints> {
        let names: Vec<String> = config.addrs().map(str::to_owned).collect();
        let ids: Vec<u64> = endpoints.iter().map(|e| e.id).collect();
        ejections.set_endpoints(&ids);
        let next_id = ids.iter().max().map_or(0, |id| id + 1);
        let looked_up = config.resolve_every.is_none();
        Arc::new(Endpoints {
            balancer: Balancer::new(config.balance),
            config,
            first: endpoints.first().cloned(),
            first_only: AtomicBool::new(endpoints.len() == 1),
            looked_up: AtomicBool::new(looked_up),
            looked_up_now: Notify::new(),
            current: RwLock::new(endpoints.into()),
            draining: Mutex::new(Vec::new()),
            retired: Mutex::new(PoolState::default()),
            ejections,
            next_id: AtomicU64::new(next_id),
            names: Mutex::new(names),
            names_changed: Arc::new(Notify::new()),
            runtime,
            closed: AtomicBool::new(false),
            #[cfg(feature = "metrics")]
            recorded: Mutex::new(Vec::new()),
            responses: Default::default(),
        })
    }

    /// The endpoint of a pool whose set is the one endpoint it was built with; `None` for
    /// any other set. (Read without a lock: a checkout that races a change may still go
    /// there, and finds it removed.)
    pub(crate) fn only_first(&self) -> Option<&Endpoint> {
        match &self.first {
            Some(first) if self.first_only.load(Relaxed) => Some(first),
            _ => None,
        }
    }

    /// The set now. (A checkout keeps this snapshot; a change makes a new one.)
    pub(crate) fn current(&self) -> Arc<[Arc<Endpoint>]> {
        match self.current.read() {
            Ok(set) => set.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The endpoint of `set` to try next, among those not `tried` and not removed: one that
    /// is neither ejected nor full (every connection it may open in use or promised); else a
    /// full one, where the checkout waits; else, as a last resort, an ejected one.
    pub(crate) fn pick(&self, set: &[Arc<Endpoint>], tried: &Tried) -> Option<usize> {
        #[derive(Clone, Copy, PartialEq, PartialOrd)]
        enum Tier {
            Free,
            Full,
            Ejected,
        }
        let tier = |i: usize| {
            let s = &set[i].shared;
            if s.outlier.is_ejected() {
                Tier::Ejected
            } else if s.is_full() {
                Tier::Full
            } else {
                Tier::Free
            }
        };
        let view = |up_to: Tier| {
            move |i: usize| {
                let s = &set[i].shared;
                let eligible = !tried.contains(i) && !s.is_removed() && tier(i) <= up_to;
                eligible.then(|| Load {
                    load: s.load(),
                    idle: s.has_idle(),
                })
            }
        };
        [Tier::Free, Tier::Full, Tier::Ejected]
            .into_iter()
            .find_map(|up_to| self.balancer.pick(set.len(), view(up_to)))
    }

    /// Replaces the set with the endpoints at `addrs` (each with the address it was resolved
    /// from). Kept ones keep their connections; new ones start empty; removed ones take no new
    /// checkout, their idle connections are closed now and those in use when they come back.
    pub(crate) fn replace(&self, addrs: &[(String, String)]) -> Result<(), TcpPoolError> {
        check_endpoints(addrs.iter().map(|(a, _)| a.as_str()))?;
        let _runtime = self.runtime.enter();
        let mut current = match self.current.write() {
            Ok(set) => set,
            Err(poisoned) => poisoned.into_inner(),
        };
        // Checked under the lock `close` takes: a closed pool's set never changes again.
        if self.is_closed() {
            return Err(TcpPoolError::Closed);
        }
        let mut draining = match self.draining.lock() {
            Ok(d) => d,
            Err(poisoned) => poisoned.into_inner(),
        };
        let is = |e: &Arc<Endpoint>, addr: &str, name: &str| {
            e.shared.addr.as_ref() == addr && e.name_addr == name
        };
        // New endpoints first, so that an error leaves everything as it was.
        let mut made: Vec<Option<Arc<Endpoint>>> = Vec::with_capacity(addrs.len());
        for (addr, name) in addrs {
            let known = current
                .iter()
                .chain(draining.iter())
                .any(|e| is(e, addr, name));
            made.push(match known {
                true => None,
                false => {
                    let id = self.next_id.fetch_add(1, Relaxed);
                    Some(Endpoint::start(
                        &self.config,
                        addr,
                        name,
                        id,
                        &self.ejections,
                    )?)
                }
            });
        }
        let mut next = Vec::with_capacity(addrs.len());
        for ((addr, name), made) in addrs.iter().zip(made) {
            let kept = current.iter().find(|e| is(e, addr, name)).cloned();
            // An endpoint added back while it drains is revived, so that the backend never
            // sees more than max_size connections from this pool.
            let revived = || {
                let i = draining.iter().position(|e| is(e, addr, name))?;
                let e = draining.swap_remove(i);
                e.shared.removed.store(false, Relaxed);
                crate::lifecycle::spawn(&e);
                Some(e)
            };
            if let Some(e) = made.or(kept).or_else(revived) {
                next.push(e);
            }
        }
        let removed: Vec<Arc<Endpoint>> = current
            .iter()
            .filter(|e| !next.iter().any(|n| n.id == e.id))
            .cloned()
            .collect();
        let ids: Vec<u64> = next.iter().map(|e| e.id).collect();
        self.ejections.set_endpoints(&ids);
        self.first_only.store(
            matches!((&next[..], &self.first), ([one], Some(first)) if Arc::ptr_eq(one, first)),
            Relaxed,
        );
        *current = next.into();
        drop(current);
        for endpoint in &removed {
            tracing::info!(
                pool = self.config.name(),
                endpoint = &*endpoint.shared.addr,
                "endpoint removed from the pool"
            );
            drain(endpoint);
        }
        draining.extend(removed);
        drop(draining);
        self.prune();
        Ok(())
    }

    /// `TcpPool::close`: from now on checkouts fail with `Closed`; every endpoint is drained
    /// (idle connections closed now, those in use when they come back, connects under way
    /// when they end). The set stays as it is, for `state()`.
    ///
    /// A connect that passed its last removed check just before the close may still put its
    /// connection in the idle queue after the idle ones were closed: a task watches until
    /// every endpoint is drained (closing such a late one), so the close happens whether or
    /// not the caller awaits `TcpPool::close`'s future. It ends once nothing is open.
    pub(crate) fn close(self: &Arc<Self>) {
        let current = match self.current.write() {
            Ok(set) => set,
            Err(poisoned) => poisoned.into_inner(),
        };
        if self.closed.swap(true, SeqCst) {
            return;
        }
        let set = self.clone();
        self.runtime.spawn(async move { set.drained().await });
        let _runtime = self.runtime.enter();
        tracing::info!(pool = self.config.name(), "closing the pool");
        for endpoint in current.iter() {
            drain(endpoint);
        }
        drop(current);
        // The resolver task ends at its next wake-up; checkouts waiting for its first lookup
        // go on, and fail with `Closed`.
        self.names_changed.notify_waiters();
        if !self.looked_up.swap(true, SeqCst) {
            self.looked_up_now.notify_waiters();
        }
    }

    /// Whether `TcpPool::close` was called.
    #[inline]
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Relaxed)
    }

    /// Resolves once no connection of any endpoint (current or draining) is open and no
    /// connect is under way.
    pub(crate) async fn drained(&self) {
        let endpoints: Vec<Arc<Endpoint>> = {
            let draining = match self.draining.lock() {
                Ok(d) => d.clone(),
                Err(poisoned) => poisoned.into_inner().clone(),
            };
            self.current().iter().cloned().chain(draining).collect()
        };
        for endpoint in endpoints {
            drained(&endpoint).await;
        }
    }

    /// The addresses as given (host names, with `resolve_endpoints`).
    pub(crate) fn names(&self) -> Vec<String> {
        match self.names.lock() {
            Ok(names) => names.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// `set_endpoints`: validates `addrs`, then makes them the set (or, with
    /// `resolve_endpoints`, the names to resolve, resolved at once in the background).
    pub(crate) fn set_names(&self, addrs: Vec<String>) -> Result<(), TcpPoolError> {
        if self.is_closed() {
            return Err(TcpPoolError::Closed);
        }
        check_endpoints(addrs.iter().map(String::as_str))?;
        for addr in &addrs {
            self.config.connector(addr, addr)?;
        }
        let mut names = match self.names.lock() {
            Ok(names) => names,
            Err(poisoned) => poisoned.into_inner(),
        };
        if self.config.resolve_every.is_none() {
            let pairs: Vec<(String, String)> =
                addrs.iter().map(|a| (a.clone(), a.clone())).collect();
            self.replace(&pairs)?;
        }
        *names = addrs;
        drop(names);
        self.names_changed.notify_waiters();
        Ok(())
    }

    /// The resolver's findings for `names`: each address found is an endpoint; a name whose
    /// lookup failed keeps the endpoints it had. Nothing changes if `names` changed meanwhile
    /// or nothing was found at all.
    pub(crate) fn apply_resolved(
        &self,
        names: &[String],
        resolved: Vec<Option<Vec<std::net::SocketAddr>>>,
    ) {
        let current = self.current();
        let mut pairs: Vec<(String, String)> = Vec::new();
        for (name, found) in names.iter().zip(resolved) {
            let mut found: Vec<String> = match found {
                Some(addrs) => addrs.iter().map(ToString::to_string).collect(),
                None => current
                    .iter()
                    .filter(|e| &e.name_addr == name)
                    .map(|e| e.shared.addr.to_string())
                    .collect(),
            };
            if found.is_empty() {
                // Nothing found and nothing to keep (a Unix socket path, or a name that does
                // not resolve yet): the name itself, resolved again on every connect.
                found.push(name.clone());
            }
            for addr in found {
                // Two names giving one address: one endpoint.
                if !pairs.iter().any(|(a, _)| *a == addr) {
                    pairs.push((addr, name.clone()));
                }
            }
        }
        let unchanged = pairs.len() == current.len()
            && pairs
                .iter()
                .zip(current.iter())
                .all(|((a, n), e)| *a == *e.shared.addr && *n == e.name_addr);
        if !(pairs.is_empty() || unchanged || self.names() != names || self.is_closed()) {
            if let Err(e) = self.replace(&pairs) {
                tracing::warn!(pool = self.config.name(), error = %e, "resolved endpoints not applied");
            }
        }
        if !self.looked_up.swap(true, SeqCst) {
            self.looked_up_now.notify_waiters();
        }
    }

    /// What wakes checkouts waiting on a full endpoint when any endpoint gets one back.
    pub(crate) fn returns(&self) -> &crate::replicas::outlier::Returns {
        &self.ejections.returns
    }

    /// Whether the first lookup of `resolve_endpoints` was applied (always, without it).
    pub(crate) fn is_looked_up(&self) -> bool {
        self.looked_up.load(SeqCst)
    }

    /// Waits until the first lookup of `resolve_endpoints` was applied (at once without it).
    pub(crate) async fn looked_up(&self) {
        loop {
            let mut notified = pin!(self.looked_up_now.notified());
            notified.as_mut().enable();
            if self.looked_up.load(SeqCst) {
                return;
            }
            notified.await;
        }
    }

    /// Remembers `now` as the endpoints last exported; returns those exported before that
    /// are gone.
    #[cfg(feature = "metrics")]
    pub(crate) fn recorded_endpoints(&self, now: Vec<String>) -> Vec<String> {
        let Ok(mut recorded) = self.recorded.lock() else {
            return Vec::new();
        };
        let before = std::mem::replace(&mut *recorded, now);
        before
            .into_iter()
            .filter(|e| !recorded.contains(e))
            .collect()
    }

    /// Moves drained endpoints' totals into `retired`.
    fn prune(&self) {
        let (Ok(mut draining), Ok(mut retired)) = (self.draining.lock(), self.retired.lock())
        else {
            return;
        };
        draining.retain(|e| {
            // Attempts first: a connect that succeeds counts its connection open before its
            // attempt ends, so no connection is missed between the two.
            let done = e.shared.fail_fast.connecting() == 0 && e.shared.open.load(SeqCst) == 0;
            if done {
                retired.add(&e.state().0);
                return false;
            }
            // A connect that ended just as the endpoint was removed may have left one idle.
            if e.pool.state().idle_connections > 0 {
                close_idle(e);
            }
            true
        });
    }

    /// The pool's state: the sums over every endpoint (current, draining and drained), and an
    /// entry for each current one.
    pub(crate) fn state(&self) -> PoolState {
        self.prune();
        // The three lists under one view, locked in the order `replace` and `prune` use, so
        // an endpoint moving between them is counted once and totals never go down.
        let current = match self.current.read() {
            Ok(set) => set,
            Err(poisoned) => poisoned.into_inner(),
        };
        let draining = match self.draining.lock() {
            Ok(d) => d,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut total = match self.retired.lock() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        for e in draining.iter() {
            total.add(&e.state().0);
        }
        total.closed = self.is_closed();
        total.endpoints.reserve(current.len());
        for e in current.iter() {
            let (s, entry) = e.state();
            total.add(&s);
            total.endpoints.push(entry);
        }
        total
    }
}

/// The endpoints a checkout has tried, by index (no allocation for the first 64).
#[derive(Debug, Default)]
pub(crate) struct Tried {
    first: u64,
    more: Vec<usize>,
}

impl Tried {
    pub(crate) fn insert(&mut self, i: usize) {
        match u32::try_from(i).ok().and_then(|i| 1u64.checked_shl(i)) {
            Some(bit) => self.first |= bit,
            None => self.more.push(i),
        }
    }

    pub(crate) fn contains(&self, i: usize) -> bool {
        match u32::try_from(i).ok().and_then(|i| 1u64.checked_shl(i)) {
            Some(bit) => self.first & bit != 0,
            None => self.more.contains(&i),
        }
    }
}

/// Takes `endpoint` out of service: no new connection, none given back, its idle ones closed
/// now, and the checkouts waiting on it woken (they move to the set as it is now).
fn drain(endpoint: &Endpoint) {
    endpoint.shared.removed.store(true, SeqCst);
    close_idle(endpoint);
    // Its lifecycle task ends; checkouts waiting for its sweep go on (and fail).
    endpoint.shared.lifecycle.wake();
    endpoint.shared.lifecycle.gate.wake();
    endpoint.shared.fail_fast.wake();
}

/// Resolves once a removed endpoint has no connection open and no connect under way. Woken
/// by each of its connections closing and each of its connects ending; it also looks again
/// every 100 ms, for a connect that succeeded just as the endpoint was removed (its
/// connection may reach the idle queue after the removal closed the idle ones).
async fn drained(endpoint: &Endpoint) {
    let shared = &endpoint.shared;
    loop {
        let mut notified = pin!(shared.drained.notified());
        notified.as_mut().enable();
        // Attempts first: a connect that succeeds counts its connection open before its
        // attempt ends.
        if shared.fail_fast.connecting() == 0 && shared.open.load(SeqCst) == 0 {
            return;
        }
        if endpoint.pool.state().idle_connections > 0 {
            close_idle(endpoint);
        }
        let _ = tokio::time::timeout(std::time::Duration::from_millis(100), notified).await;
    }
}

/// Closes the idle connections of a removed endpoint now: one poll of a checkout makes bb8
/// take each idle connection, which the health check of a removed endpoint rejects (no I/O),
/// so bb8 closes it; the checkout, left waiting, is then dropped.
fn close_idle(endpoint: &Endpoint) {
    let mut get = pin!(endpoint.pool.get());
    let _ = get.as_mut().poll(&mut Context::from_waker(Waker::noop()));
}

#[cfg(test)]
mod tests {
    use super::Tried;

    #[test]
    fn tried_holds_any_index() {
        let mut t = Tried::default();
        for i in [0, 3, 63, 64, 200] {
            assert!(!t.contains(i));
            t.insert(i);
            assert!(t.contains(i));
        }
        assert!(!t.contains(1) && !t.contains(65));
    }
}
