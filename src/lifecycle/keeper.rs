//! The task of one endpoint: opens `min_idle`, closes connections at their deadline and
//! above `min_idle` after `idle_timeout`, and runs the idle probe rounds.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::pin;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::{Arc, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::task::{JoinError, JoinSet};

use crate::error::TcpPoolError;
use crate::lifecycle::probing;
use crate::lifecycle::state::{Verdict, Why};
use crate::lifecycle::sweep::{self, Taken};
use crate::pool::{PooledStream, Shared, TcpManager};
use crate::replicas::Endpoint;

/// How long after asking bb8 for connections `min_idle` is looked at again: if it is still
/// short then (the connects failed), bb8 is asked again and the wait doubles, up to
/// [`RETRY_MAX`]; it is reset once `min_idle` is met.
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(5);

type Connect = Result<PooledStream, TcpPoolError>;

/// Starts the task of `endpoint`, unless its settings need none (no `min_idle`, no
/// `max_lifetime`, no `idle_timeout`, no idle probing) or it runs already.
pub(crate) fn spawn(endpoint: &Arc<Endpoint>) {
    let shared = &endpoint.shared;
    let c = &shared.config;
    if !c.has_lifecycle() || shared.lifecycle.running.swap(true, SeqCst) {
        return;
    }
    let keeper = Keeper {
        endpoint: Arc::downgrade(endpoint),
        shared: shared.clone(),
        want_fill: c.min_idle > 0,
        retry_at: None,
        failures_then: 0,
        retry_delay: RETRY_MIN,
        next_idle: None,
        next_probe: c
            .idle_probe_interval
            .and_then(|every| Instant::now().checked_add(every)),
    };
    shared.runtime.spawn(keeper.run());
}

/// Opens the `min_idle` connections of a new `endpoint` (concurrently) and waits for them:
/// the first connect error is returned at once. For `TcpPoolBuilder::connect`: nobody else
/// can check out of the endpoint yet, so the task's own connects cannot exceed `max_size`
/// (bb8 would refuse them beyond it, after the backend saw them).
pub(crate) async fn fill(endpoint: &Endpoint) -> Result<(), TcpPoolError> {
    let mut fills = JoinSet::new();
    for _ in 0..wanted(endpoint) {
        connect(&mut fills, &endpoint.shared);
    }
    while let Some(result) = fills.join_next().await {
        add(endpoint, connected(result)?);
    }
    Ok(())
}

/// How many connections to open so that `min_idle` are idle, without exceeding `max_size`,
/// counting those being opened as idle already.
fn wanted(endpoint: &Endpoint) -> usize {
    let c = &endpoint.shared.config;
    let s = endpoint.pool.state();
    let pending = u32::try_from(endpoint.shared.fail_fast.connecting()).unwrap_or(u32::MAX);
    let missing = c
        .min_idle
        .saturating_sub(s.idle_connections.saturating_add(pending));
    let room = c
        .max_size
        .saturating_sub(s.connections.saturating_add(pending));
    missing.min(room) as usize
}

/// Opens a connection through the manager's own connect (fail-fast and reconnect backoff
/// apply), on its own task so the keeper goes on meanwhile.
fn connect(fills: &mut JoinSet<Connect>, shared: &Arc<Shared>) {
    let manager = TcpManager {
        shared: shared.clone(),
    };
    fills.spawn_on(
        async move { bb8::ManageConnection::connect(&manager).await },
        &shared.runtime,
    );
}

fn connected(result: Result<Connect, JoinError>) -> Connect {
    result.unwrap_or_else(|_| {
        Err(TcpPoolError::BackendUnreachable(io::Error::other(
            "connect task ended",
        )))
    })
}

/// Hands a new connection to bb8, which refuses it beyond `max_size` (checkouts opened
/// connections meanwhile): it is then closed, without waking the task to refill.
fn add(endpoint: &Endpoint, mut conn: PooledStream) {
    // bb8 asks `has_broken` first: a new connection, not a return.
    conn.life.sweep = Some(Verdict::Keep);
    match endpoint.pool.add(conn) {
        Ok(()) => {
            endpoint.shared.lifecycle.counts.added.fetch_add(1, Relaxed);
        }
        Err(bb8::AddError::Broken(mut conn) | bb8::AddError::NoCapacity(mut conn)) => {
            conn.life.unpooled = true;
        }
    }
}

struct Keeper {
    /// Only a weak reference: the task ends when the endpoint is dropped.
    endpoint: Weak<Endpoint>,
    shared: Arc<Shared>,
    /// `min_idle` is to be refilled (at start, and after a connection closed).
    want_fill: bool,
    /// After asking bb8 for connections: no look at `min_idle` before this.
    retry_at: Option<Instant>,
    /// The endpoint's failed and refused connects when bb8 was last asked: if there are more
    /// now, some of those connects may have failed.
    failures_then: u64,
    retry_delay: Duration,
    /// The next look for connections idle past `idle_timeout` (while more than `min_idle`
    /// are open).
    next_idle: Option<Instant>,
    next_probe: Option<Instant>,
}

impl Keeper {
    async fn run(mut self) {
        loop {
            let probe_due = {
                let Some(endpoint) = self.endpoint.upgrade() else {
                    return;
                };
                if self.shared.is_removed() {
                    if self.stop() {
                        return;
                    }
                    continue;
                }
                self.step(&endpoint)
            };
            if probe_due {
                probing::round(&self.endpoint, &self.shared).await;
                self.next_probe = self
                    .shared
                    .config
                    .idle_probe_interval
                    .and_then(|every| Instant::now().checked_add(every));
                continue;
            }
            self.wait().await;
        }
    }

    /// Ends the task of a removed endpoint: `true`, unless it was added back meanwhile
    /// (whoever revived it saw the task still running and started none).
    fn stop(&self) -> bool {
        let running = &self.shared.lifecycle.running;
        running.store(false, SeqCst);
        self.shared.is_removed() || running.swap(true, SeqCst)
    }

    /// Everything due now; whether an idle probe round is due.
    fn step(&mut self, endpoint: &Endpoint) -> bool {
        let shared = &*self.shared;
        let config = &shared.config;
        if shared.lifecycle.take_closed() && config.min_idle > 0 {
            // A new refill (the delay after failed ones is kept).
            self.want_fill = true;
            self.retry_at = None;
        }
        let now = Instant::now();
        let lifetime_due = shared
            .lifecycle
            .first_deadline()
            .is_some_and(|at| at <= now);
        let idle_due = self.next_idle.is_some_and(|at| at <= now);
        if lifetime_due || idle_due {
            let next_idle = sweep(endpoint, now, lifetime_due, idle_due);
            if idle_due {
                self.next_idle = next_idle;
            }
            if lifetime_due {
                shared.lifecycle.passed(now);
            }
        }
        if let Some(timeout) = config.idle_timeout {
            // A connection that opens now cannot idle out before `now + idle_timeout`.
            if self.next_idle.is_none() && endpoint.pool.state().connections > config.min_idle {
                self.next_idle = now.checked_add(timeout);
            }
        }
        if self.want_fill && self.retry_at.is_none_or(|at| at <= now) {
            self.fill(endpoint, now);
        }
        self.next_probe.is_some_and(|at| at <= now)
    }

    /// Refills `min_idle`: bb8 opens the connections, so that its own count keeps the
    /// endpoint within `max_size` (a connection the task opened itself could only be refused
    /// after the backend saw it, while checkouts opened theirs). Looked at again after a
    /// delay, until no connect is under way: if connects failed meanwhile and `min_idle` is
    /// still short, bb8 is asked again, after a longer delay; if none failed, the refill is
    /// done (a connection checked out meanwhile is in use, not missing).
    fn fill(&mut self, endpoint: &Endpoint, now: Instant) {
        let asked = self.retry_at.is_some();
        let failures = self.shared.counters.connects_not_made();
        if asked && self.shared.fail_fast.connecting() > 0 {
            // Connects under way: look again when they are likely done.
            self.retry_at = now.checked_add(RETRY_MIN);
            return;
        }
        let wanted = wanted(endpoint);
        let failed = failures > self.failures_then;
        if wanted == 0 || (asked && !failed) {
            self.want_fill = false;
            self.retry_at = None;
            self.retry_delay = RETRY_MIN;
            return;
        }
        sweep::open(endpoint, wanted);
        self.failures_then = failures;
        self.retry_at = now.checked_add(self.retry_delay);
        self.retry_delay = (self.retry_delay * 2).min(RETRY_MAX);
    }

    /// Waits for the next deadline, look or retry, or a wake-up.
    async fn wait(&mut self) {
        let lifecycle = &self.shared.lifecycle;
        let retry = self.retry_at.filter(|_| self.want_fill);
        let next = [
            lifecycle.first_deadline(),
            self.next_idle,
            self.next_probe,
            retry,
        ]
        .into_iter()
        .flatten()
        .min();
        let mut woken = pin!(lifecycle.woken().notified());
        let mut timer = pin!(next.map(|at| tokio::time::sleep_until(at.into())));
        poll_fn(|cx| {
            if woken.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
            if let Some(timer) = timer.as_mut().as_pin_mut() {
                if timer.poll(cx).is_ready() {
                    return Poll::Ready(());
                }
            }
            Poll::Pending
        })
        .await;
    }
}

/// Closes the idle connections past their deadline and, with `idle`, those idle longer than
/// `idle_timeout`, oldest first, while more than `min_idle` stay idle. Returns when to look
/// again for idle ones: when the oldest left above `min_idle` would expire, or, if none is
/// left above it, `idle_timeout` from now while more than `min_idle` are open.
fn sweep(endpoint: &Endpoint, now: Instant, lifetime: bool, idle: bool) -> Option<Instant> {
    let config = &endpoint.shared.config;
    let s = endpoint.pool.state();
    if !lifetime && s.idle_connections <= config.min_idle {
        // Nothing to close: no need to take them out.
        let timeout = config.idle_timeout?;
        return (s.connections > config.min_idle)
            .then(|| now.checked_add(timeout))
            .flatten();
    }
    let mut taken = Taken::idle(endpoint);
    let mut kept: Vec<usize> = Vec::with_capacity(taken.conns.len());
    for (i, conn) in taken.conns.iter_mut().enumerate() {
        if conn.life.deadline.is_some_and(|at| at <= now) {
            conn.life.sweep = Some(Verdict::Close(Why::MaxLifetime));
        } else {
            kept.push(i);
        }
    }
    let timeout = config.idle_timeout.filter(|_| idle)?;
    let mut closable = kept.len().saturating_sub(config.min_idle as usize);
    kept.sort_by_key(|&i| taken.conns[i].life.idle_since);
    for &i in &kept {
        if closable == 0 {
            break;
        }
        let conn = &mut taken.conns[i];
        match conn.life.idle_since.unwrap_or(now).checked_add(timeout) {
            Some(at) if at <= now => {
                conn.life.sweep = Some(Verdict::Close(Why::IdleTimeout));
                closable -= 1;
            }
            // The oldest one left above min_idle: the next to expire.
            at => return at,
        }
    }
    drop(taken);
    let open = endpoint.pool.state().connections;
    (open > config.min_idle)
        .then(|| now.checked_add(timeout))
        .flatten()
}
