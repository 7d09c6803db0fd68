//! Taking an endpoint's idle connections out of bb8 and putting them back: bb8 can neither
//! list nor remove its idle connections, so a sweep checks each out, without I/O, and gives
//! back those it keeps in the order that leaves bb8's queue as it was.

use std::cell::Cell;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bb8::PooledConnection;

use crate::lifecycle::state::Verdict;
use crate::pool::{Shared, TcpManager};
use crate::replicas::Endpoint;

thread_local! {
    /// Set only around a sweep's synchronous checkout, on its thread: the checkout health
    /// check is skipped for it (and for nobody else).
    static SWEEPING: Cell<bool> = const { Cell::new(false) };
}

/// Whether the checkout running on this thread is a sweep's (bb8's `is_valid` skips the
/// health check then).
#[inline]
pub(crate) fn sweeping() -> bool {
    SWEEPING.with(Cell::get)
}

/// Resets the flag even if bb8 panics.
struct Sweeping;

impl Sweeping {
    fn start() -> Sweeping {
        SWEEPING.with(|s| s.set(true));
        Sweeping
    }
}

impl Drop for Sweeping {
    fn drop(&mut self) {
        SWEEPING.with(|s| s.set(false));
    }
}

/// An endpoint's idle connections, out of bb8, in the order bb8 would have handed them out
/// (the most recently returned first). Dropped, it gives them back last first, so bb8's LIFO
/// queue is as it was, but for those marked [`Verdict::Close`], which bb8 closes.
pub(crate) struct Taken {
    pub(crate) conns: Vec<PooledConnection<'static, TcpManager>>,
    shared: Arc<Shared>,
}

impl Taken {
    /// Takes every idle connection of `endpoint` out of bb8, synchronously: one poll of a
    /// checkout per idle connection, never one when bb8 reports none idle (so a sweep never
    /// makes bb8 connect). Each is marked [`Verdict::Keep`] until decided otherwise.
    ///
    /// Holds the checkout gate until dropped: a checkout made elsewhere meanwhile that finds
    /// no connection idle waits for these to come back instead of having bb8 open one.
    pub(crate) fn idle(endpoint: &Endpoint) -> Taken {
        let pool = &endpoint.pool;
        let lifecycle = &endpoint.shared.lifecycle;
        let counts = &lifecycle.counts;
        // Released when this set is dropped. From here on a checkout's first poll is made
        // under the lock, or waits for these connections if bb8 has none idle.
        lifecycle.gate.hold();
        let _consistent = lifecycle.consistent();
        let idle = pool.state().idle_connections as usize;
        let mut conns = Vec::with_capacity(idle);
        for _ in 0..idle {
            if pool.state().idle_connections == 0 {
                break;
            }
            counts.sweep_gets.fetch_add(1, Relaxed);
            counts.out.fetch_add(1, Relaxed);
            let _sweeping = Sweeping::start();
            let mut get = pin!(pool.get_owned());
            match get.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
                Poll::Ready(Ok(mut conn)) => {
                    conn.life.sweep = Some(Verdict::Keep);
                    conns.push(conn);
                }
                // Taken by a checkout in between: the queue is empty; the pending checkout
                // is dropped here.
                _ => {
                    counts.out.fetch_sub(1, Relaxed);
                    break;
                }
            }
        }
        Taken {
            conns,
            shared: endpoint.shared.clone(),
        }
    }

    /// Takes the connection `id` out of this set, if it is in it, as a set of its own.
    pub(crate) fn remove(&mut self, id: u64) -> Option<Taken> {
        let i = self.conns.iter().position(|c| c.life.id() == id)?;
        self.shared.lifecycle.gate.hold_more();
        Some(Taken {
            conns: vec![self.conns.remove(i)],
            shared: self.shared.clone(),
        })
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        let lifecycle = &self.shared.lifecycle;
        if !self.conns.is_empty() {
            let _consistent = lifecycle.consistent();
            while let Some(conn) = self.conns.pop() {
                drop(conn);
                lifecycle.counts.out.fetch_sub(1, Relaxed);
            }
        }
        lifecycle.gate.release();
    }
}

/// Has bb8 open `n` connections for `endpoint`'s idle queue, within its `max_size`: with the
/// idle connections taken out, checkouts polled once find none and have bb8 reserve a place
/// and open one (its own count of open and pending connections is what keeps the endpoint
/// within `max_size`); the checkouts are then dropped, so the new connections go to the idle
/// queue, and the idle ones are given back. A connection given back meanwhile and taken by
/// one of these checkouts is given back too.
///
/// bb8 opens one for a waiting checkout only while there are more of them than connects
/// under way: `n` more checkouts than connects under way (bb8 may then open one more than
/// `n` if a checkout of a request is also waiting for one; still within `max_size`).
pub(crate) fn open(endpoint: &Endpoint, n: usize) {
    let pool = &endpoint.pool;
    let counts = &endpoint.shared.lifecycle.counts;
    let under_way = usize::try_from(endpoint.shared.fail_fast.connecting()).unwrap_or(usize::MAX);
    let n = n
        .saturating_add(under_way)
        .min(endpoint.shared.config.max_size as usize);
    let mut taken = Taken::idle(endpoint);
    let _consistent = endpoint.shared.lifecycle.consistent();
    let mut checkouts = Vec::with_capacity(n);
    for _ in 0..n {
        counts.sweep_gets.fetch_add(1, Relaxed);
        counts.out.fetch_add(1, Relaxed);
        let _sweeping = Sweeping::start();
        let mut get = Box::pin(pool.get_owned());
        match get.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(mut conn)) => {
                conn.life.sweep = Some(Verdict::Keep);
                taken.conns.push(conn);
            }
            Poll::Ready(Err(_)) => {
                counts.out.fetch_sub(1, Relaxed);
            }
            Poll::Pending => {
                counts.out.fetch_sub(1, Relaxed);
                checkouts.push(get);
            }
        }
    }
    drop(checkouts);
    drop(_consistent);
    drop(taken);
}
