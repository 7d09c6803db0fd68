//! The checkout: choose an endpoint, take a connection from its bb8 pool (raced against the
//! endpoint's fail-fast watch), and fail over to another endpoint when it cannot connect.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::task::Poll;

use tokio::time::{sleep_until, timeout_at, Instant, Sleep};

use crate::error::{EndpointError, TcpPoolError};
use crate::failfast::Woken;
use crate::lifecycle::AtGate;
use crate::pool::connection::TcpConnection;
use crate::pool::manager::removed;
use crate::pool::probe::take_pending as take_check_pending;
use crate::replicas::{Endpoint, Endpoints, Tried};

/// Checks a connection out of the pool's endpoints. One endpoint: straight to it. Several:
/// the balancer chooses, and a connect failure moves the checkout to an endpoint it has not
/// tried, within one `checkout_timeout`. `BackendUnreachable` only when every endpoint it
/// could try failed.
/// `span`, if any, gets the `endpoint` field of each endpoint tried.
pub(crate) async fn checkout<M>(
    set: &Endpoints,
    span: Option<&tracing::Span>,
) -> Result<TcpConnection<M>, TcpPoolError> {
    if set.is_closed() {
        return Err(TcpPoolError::Closed);
    }
    let result = checkout_set(set, span).await;
    if set.is_closed() {
        // Closed while this checkout waited (the close woke it), or while it probed a new
        // connection: that one is closed as it is dropped.
        return Err(TcpPoolError::Closed);
    }
    result
}

async fn checkout_set<M>(
    set: &Endpoints,
    span: Option<&tracing::Span>,
) -> Result<TcpConnection<M>, TcpPoolError> {
    if let Some(one) = set.only_first() {
        match checkout_one(one, None, span, false, None).await {
            // Removed while this checkout waited: try the set as it is now.
            Err(TcpPoolError::BackendUnreachable(_)) if one.shared.is_removed() => {}
            Err(TcpPoolError::BackendUnreachable(e)) => {
                let e = EndpointError::wrap(one.shared.addr.clone(), e, &set.responses);
                return Err(TcpPoolError::BackendUnreachable(e));
            }
            result => return result,
        }
    }
    failover(set, span).await
}

/// The checkout over the set (several endpoints, one other than the first, or a set still
/// to be resolved).
async fn failover<M>(
    set: &Endpoints,
    span: Option<&tracing::Span>,
) -> Result<TcpConnection<M>, TcpPoolError> {
    let deadline = Instant::now().checked_add(set.config.checkout_timeout);
    if !set.is_looked_up() {
        // A pool that resolves its set starts empty: wait for the first lookup.
        match deadline {
            Some(at) => {
                if timeout_at(at, set.looked_up()).await.is_err() {
                    return Err(TcpPoolError::CheckoutTimeout);
                }
            }
            None => set.looked_up().await,
        }
    }
    let mut endpoints = set.current();
    let mut tried = Tried::default();
    let (mut last_error, mut attempts, mut repicks) = (None, 0, 0);
    // A set replaced while this checkout ran is taken afresh, a bounded number of times.
    let mut refreshes = 0;
    loop {
        let Some(i) = set.pick(&endpoints, &tried) else {
            let now = set.current();
            if refreshes < 3 && !Arc::ptr_eq(&now, &endpoints) {
                refreshes += 1;
                endpoints = now;
                tried = Tried::default();
                continue;
            }
            break;
        };
        let endpoint = &endpoints[i];
        // If this one has no connection for it, choose again when a connection comes back to
        // any endpoint (a bounded number of times).
        let repick = repicks < MAX_REPICKS;
        let _waiting = Waiting::new(endpoint);
        // Waiting at the gate (its idle connections out for a probe) is waiting for a
        // connection to come back too: with one idle elsewhere, choose again.
        let gated = AtomicBool::new(false);
        let full = || endpoint.shared.is_full() || gated.load(Relaxed);
        let idle_elsewhere = || {
            endpoints.iter().enumerate().any(|(j, e)| {
                let s = &e.shared;
                j != i
                    && !tried.contains(j)
                    && !s.is_removed()
                    && s.has_idle_connection()
                    && !s.outlier.is_ejected()
            })
        };
        let attempt = unless_returned(
            set,
            repick,
            full,
            idle_elsewhere,
            checkout_one(endpoint, deadline, span, true, Some(&gated)),
        );
        let result = match deadline {
            Some(at) => match timeout_at(at, attempt).await {
                Ok(result) => result,
                Err(_) => {
                    endpoint.shared.counters.restart_timed_out();
                    Some(Err(TcpPoolError::CheckoutTimeout))
                }
            },
            None => attempt.await,
        };
        let Some(result) = result else {
            repicks += 1;
            // No longer waiting here: others waiting elsewhere may now see room here.
            drop(_waiting);
            set.returns().returned();
            continue;
        };
        tried.insert(i);
        match result {
            Err(TcpPoolError::BackendUnreachable(e)) => {
                tracing::debug!(
                    pool = set.config.name(),
                    addr = &*endpoint.shared.addr,
                    endpoint = &*endpoint.shared.addr,
                    error = %e,
                    "endpoint failed, trying another"
                );
                last_error = Some((e, endpoint.shared.addr.clone()));
                attempts += 1;
            }
            result => return result,
        }
    }
    // For the logs: how many endpoints were tried, and the last one's error.
    Err(TcpPoolError::BackendUnreachable(match last_error {
        Some((e, last)) if attempts == 1 => EndpointError::wrap(last, e, &set.responses),
        Some((e, last)) => {
            let all = io::Error::new(
                e.kind(),
                format!("every endpoint tried ({attempts}) failed; the last: {e}"),
            );
            EndpointError::wrap(last, all, &set.responses)
        }
        None => io::Error::new(io::ErrorKind::NotConnected, "no endpoint to connect to"),
    }))
}

/// How many times one checkout chooses again when a connection comes back elsewhere.
const MAX_REPICKS: u32 = 64;

/// `attempt`, or, with `repick`, `None` if it has to wait and a connection comes back to
/// any endpoint of the pool first (the attempt is dropped: cancel-safe). A checkout that
/// waits on one endpoint thus moves when another gets room: checkouts choosing at the same
/// moment can all pick the endpoint with one free place. Nothing is registered unless the
/// attempt waits.
///
/// Asked once, when the attempt first has to wait: whether it waits for a connection to come
/// back (`full`: not for a connect, which it keeps waiting for), and whether another
/// endpoint has an idle connection now (`idle_elsewhere`: checkouts choosing at the same
/// moment all took this one), which means choose again at once.
async fn unless_returned<F: Future>(
    set: &Endpoints,
    repick: bool,
    full: impl Fn() -> bool,
    idle_elsewhere: impl Fn() -> bool,
    attempt: F,
) -> Option<F::Output> {
    let mut attempt = pin!(attempt);
    let mut waiting = None;
    let mut decided = None;
    poll_fn(|cx| {
        if let Poll::Ready(result) = attempt.as_mut().poll(cx) {
            return Poll::Ready(Some(result));
        }
        // Decided at the first wait.
        if !*decided.get_or_insert_with(|| repick && full()) {
            return Poll::Pending;
        }
        if waiting.is_none() && idle_elsewhere() {
            return Poll::Ready(None);
        }
        let (_waiter, returned) = waiting.get_or_insert_with(|| {
            let waiter = set.returns().waiter();
            let mut returned = Box::pin(waiter.notified());
            returned.as_mut().enable();
            (waiter, returned)
        });
        if returned.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await
}

/// Counts a checkout as waiting on an endpoint, for the balancer, until dropped.
struct Waiting<'a>(&'a Endpoint);

impl<'a> Waiting<'a> {
    fn new(endpoint: &'a Endpoint) -> Self {
        endpoint.shared.waiting.fetch_add(1, Relaxed);
        Waiting(endpoint)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.shared.waiting.fetch_sub(1, Relaxed);
    }
}

/// Checks a connection out of one endpoint: bb8's own checkout, failed early by the fail-fast
/// watch when a connect attempt made for it fails and no connection could come back to it.
/// A restarted checkout keeps `deadline` (or else the first one's `checkout_timeout`).
/// `at_gate_flag`, if any, is set while the checkout waits at the gate.
async fn checkout_one<M>(
    endpoint: &Endpoint,
    deadline: Option<Instant>,
    span: Option<&tracing::Span>,
    fail_over: bool,
    at_gate_flag: Option<&AtomicBool>,
) -> Result<TcpConnection<M>, TcpPoolError> {
    let (pool, shared) = (&endpoint.pool, &*endpoint.shared);
    if let Some(span) = span {
        span.record("endpoint", &*shared.addr);
    }
    // Registered before the checkout starts, so no failure in between is missed.
    let mut watch = pin!(shared.fail_fast.watch());
    let mut get = pin!(pool.get_owned());
    // When this call began to wait (read only if it waits), and the deadline a restarted
    // checkout keeps (bb8 would give the restarted one a full `checkout_timeout` of its own).
    let mut waiting_since: Option<Instant> = None;
    let mut restart_deadline: Option<Pin<Box<Sleep>>> = None;
    // Every poll of bb8's checkout goes through the lifecycle's gate (see `lifecycle::gate`):
    // bb8 takes an idle connection or decides to connect in its first, and again after a
    // health check failed (which then waits in the manager). `at_gate` while a sweep has the
    // idle connections out; `polled`: bb8 has polled (and counted) this checkout.
    let gated = shared.config.has_lifecycle();
    let mut polled = false;
    // This checkout counted in `gets_waited` by the gate, and bb8 waited for a connection for
    // it (and counts it too, unless it times out): counted once.
    let (mut gate_counted, mut bb8_waited) = (false, false);
    let mut at_gate: Option<Pin<Box<AtGate<'_>>>> = None;
    poll_fn(|cx| loop {
        let pass = if !gated {
            None
        } else {
            if let Some(waiting) = at_gate.as_mut() {
                let waiting = waiting.as_mut().project();
                let (since, unpolled) = (*waiting.since, *waiting.unpolled);
                if waiting.back.poll(cx).is_pending() {
                    // Within the checkout's timeout, as a wait in bb8 would be.
                    if restart_deadline.is_none() {
                        let at = deadline
                            .or_else(|| waiting_since?.checked_add(shared.config.checkout_timeout));
                        restart_deadline = at.map(|at| Box::pin(sleep_until(at)));
                    }
                    if let Some(at) = restart_deadline.as_mut() {
                        if at.as_mut().poll(cx).is_ready() {
                            shared.lifecycle.gate_waited(since, false);
                            shared.counters.restart_timed_out();
                            return Poll::Ready(Err(TcpPoolError::CheckoutTimeout));
                        }
                    }
                    return Poll::Pending;
                }
                shared.lifecycle.gate_waited(since, unpolled);
                at_gate = None;
                if let Some(flag) = at_gate_flag {
                    flag.store(false, Relaxed);
                }
            }
            // Go on if bb8 has a connection idle, or the endpoint was removed (bb8 then fails
            // the checkout, no connect made).
            let go_on = || shared.is_removed() || pool.state().idle_connections > 0;
            let watch_bb8 = gate_counted && !bb8_waited;
            if watch_bb8 {
                take_check_pending();
            }
            match shared.lifecycle.pass(polled, go_on) {
                Ok(pass) => Some((pass, watch_bb8)),
                Err(mut waiting) => {
                    // Counted in `gets` only if bb8 has not counted it yet, in `gets_waited`
                    // only at its first wait.
                    let first = waiting_since.is_none();
                    gate_counted |= first;
                    shared.lifecycle.gate_wait(first, !polled);
                    waiting_since.get_or_insert_with(Instant::now);
                    *waiting.as_mut().project().unpolled = !polled;
                    at_gate = Some(waiting);
                    if let Some(flag) = at_gate_flag {
                        flag.store(true, Relaxed);
                    }
                    continue;
                }
            }
        };
        // One call site, the result used in place: bb8's result holds the pooled connection
        // (large with TLS), which every extra move copies.
        let result = get.as_mut().poll(cx);
        if let Some((pass, watch_bb8)) = pass {
            drop(pass);
            polled = true;
            if watch_bb8 && result.is_pending() && !take_check_pending() {
                bb8_waited = true;
            }
        }
        if let Poll::Ready(result) = result {
            if bb8_waited && !matches!(result, Err(bb8::RunError::TimedOut)) {
                // bb8 counted this wait too.
                shared.lifecycle.waited_in_bb8();
            }
            return Poll::Ready(match result {
                Ok(mut conn) => {
                    conn.lent = true;
                    if let (Some(lease), Some(leaks)) = (&conn.lease, &shared.leaks) {
                        lease.lend(leaks);
                    }
                    shared.fail_fast.lend();
                    Ok(TcpConnection::new(conn))
                }
                Err(bb8::RunError::User(e)) => Err(e),
                Err(bb8::RunError::TimedOut) => Err(TcpPoolError::CheckoutTimeout),
            });
        }
        if let Some(at) = restart_deadline.as_mut() {
            if at.as_mut().poll(cx).is_ready() {
                shared.counters.restart_timed_out();
                return Poll::Ready(Err(TcpPoolError::CheckoutTimeout));
            }
        }
        let waiting_since = *waiting_since.get_or_insert_with(Instant::now);
        let woken = watch.as_mut().poll_woken(cx, fail_over);
        if woken.is_ready() && shared.is_removed() {
            // Removed while this checkout waited (the removal wakes it): try the set.
            return Poll::Ready(Err(TcpPoolError::BackendUnreachable(removed())));
        }
        match woken {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Woken::Recheck) => {}
            Poll::Ready(Woken::Fail(err)) => return Poll::Ready(Err(err)),
            Poll::Ready(Woken::Restart) => {
                watch.as_mut().restarted();
                get.set(pool.get_owned());
                polled = false;
                bb8_waited = false;
                shared.counters.restarted();
                if restart_deadline.is_none() {
                    // No deadline for a timeout too long to be represented: the checkout
                    // then waits as long as bb8's own timeout lets it.
                    let at = deadline
                        .or_else(|| waiting_since.checked_add(shared.config.checkout_timeout));
                    restart_deadline = at.map(|at| Box::pin(sleep_until(at)));
                }
            }
        }
    })
    .await
}
