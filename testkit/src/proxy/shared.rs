//! The state the proxy and its connection tasks share: the registry of open connections,
//! the counters, the fault policy, and the open-count bookkeeping that keeps
//! `ProxyStats::max_open` true to what the pool had open.

use std::collections::HashMap;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use tokio::net::TcpStream;
use tokio::sync::watch;

use super::{Fault, Policy, ProxyStats};

pub(super) struct Tracked {
    pub(super) client: Weak<TcpStream>,
    pub(super) counted: Arc<AtomicBool>,
    pub(super) fault: watch::Sender<Fault>,
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) accepts: AtomicUsize,
    pub(super) open: AtomicUsize,
    pub(super) max_open: AtomicUsize,
    pub(super) resets: AtomicUsize,
    pub(super) idle_closes: AtomicUsize,
    pub(super) half_closes: AtomicUsize,
    pub(super) upstream_closes: AtomicUsize,
    pub(super) killed: AtomicUsize,
}

pub(super) struct Shared {
    pub(super) addr: SocketAddr,
    pub(super) upstream: SocketAddr,
    pub(super) counters: Counters,
    pub(super) next_id: AtomicU64,
    pub(super) policy: Mutex<Policy>,
    pub(super) conns: Mutex<HashMap<u64, Tracked>>,
    pub(super) changed: watch::Sender<()>,
    pub(super) kill: watch::Sender<u64>,
    /// Above this many open connections, an accept records what was open (see
    /// [`Proxy::set_limit`]).
    pub(super) limit: AtomicUsize,
    pub(super) overflows: Mutex<Vec<String>>,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    pub(super) fn bump(&self) {
        self.changed.send_replace(());
    }

    /// Stops counting a connection as open (once).
    pub(super) fn retire(&self, counted: &AtomicBool) {
        if counted.swap(false, SeqCst) {
            self.counters.open.fetch_sub(1, SeqCst);
            self.bump();
        }
    }

    /// Retires tracked connections whose client already closed them.
    ///
    /// Why at accept time: when the pool discards a connection it shuts the socket down
    /// (FIN) *before* bb8 books a replacement, but this proxy's task for the old connection
    /// may not have read that FIN yet when the replacement is accepted. Counting by task
    /// exit would then see `max_size + 1` connections that never were open at once from the
    /// pool's side. So at each accept we first ask the kernel: a non-blocking `MSG_PEEK` that
    /// returns 0 means the FIN has arrived (an error means RST). A FIN queued *behind* unread
    /// bytes (a request the pool wrote, then gave up on) cannot be seen by a peek: this
    /// returns whether a still-counted socket has bytes waiting, and the caller lets the
    /// connection tasks drain them before it counts (see [`accept_one`]).
    pub(super) fn retire_closed(&self) -> bool {
        let conns = lock(&self.conns);
        let mut ambiguous = false;
        for t in conns.values() {
            if !t.counted.load(SeqCst) {
                continue;
            }
            let Some(client) = t.client.upgrade() else {
                self.retire(&t.counted);
                continue;
            };
            let mut buf = [MaybeUninit::<u8>::uninit(); 1];
            let closed = match socket2::SockRef::from(&*client).peek(&mut buf) {
                Ok(0) => true,
                Ok(_) => {
                    ambiguous = true;
                    false
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => false,
                Err(_) => true,
            };
            if closed {
                self.retire(&t.counted);
            }
        }
        ambiguous
    }

    /// Describes each connection counted open, for [`Proxy::overflows`].
    pub(super) fn record_overflow(&self, id: u64, open: usize, new: &TcpStream) {
        let state = |s: &TcpStream| {
            let mut buf = [MaybeUninit::<u8>::uninit(); 1];
            match socket2::SockRef::from(s).peek(&mut buf) {
                Ok(0) => "fin".to_string(),
                Ok(_) => "bytes waiting".to_string(),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => "idle".to_string(),
                Err(e) => format!("error {:?}", e.kind()),
            }
        };
        let conns = lock(&self.conns);
        let mut ids: Vec<_> = conns.keys().copied().collect();
        ids.sort_unstable();
        let mut report = format!("accept #{id} made {open} open (new one: {}):", state(new));
        for i in ids {
            let Some(t) = conns.get(&i) else { continue };
            if !t.counted.load(SeqCst) {
                continue;
            }
            let st = t.client.upgrade().map_or("gone".to_string(), |c| state(&c));
            report.push_str(&format!(" #{i} {st} {:?};", *t.fault.borrow()));
        }
        drop(conns);
        let mut overflows = lock(&self.overflows);
        if overflows.len() < 10 {
            overflows.push(report);
        }
    }

    pub(super) fn stats(&self) -> ProxyStats {
        let c = &self.counters;
        ProxyStats {
            accepts: c.accepts.load(SeqCst),
            open: c.open.load(SeqCst),
            max_open: c.max_open.load(SeqCst),
            resets: c.resets.load(SeqCst),
            idle_closes: c.idle_closes.load(SeqCst),
            half_closes: c.half_closes.load(SeqCst),
            upstream_closes: c.upstream_closes.load(SeqCst),
            killed: c.killed.load(SeqCst),
        }
    }
}
