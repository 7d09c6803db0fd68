//! A fault-injecting TCP proxy, Toxiproxy-style, for the fault tests, the chaos test and the
//! soak example.
//!
//! It sits between the pool and a real backend and, per connection and switchable at run
//! time ([`Fault`]), delays replies, swallows everything (blackhole), resets (RST) at once or
//! after N reply bytes, closes idle connections from the server side, half-closes (FIN) when
//! the client writes, or slices replies into 1-byte segments. [`Proxy::refuse`] /
//! [`Proxy::down`] / [`Proxy::up`] take the "backend" down and bring it back on the same port.
//!
//! It counts what a backend would see from the pool: accepts, connections open now and the
//! most open at once ([`ProxyStats`]). Nothing here panics on I/O.

mod conn;
mod fault;
mod shared;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::rng::Rng;
use conn::accept_one;
pub use fault::{Fault, ProxyStats};
use shared::{lock, Counters, Shared};

/// Decides the fault of each new connection, given its number (0, 1, 2, ...).
pub type Policy = Box<dyn FnMut(u64) -> Fault + Send>;

#[derive(Clone)]
pub struct ConnHandle {
    /// The connection's number, in accept order.
    pub id: u64,
    fault: watch::Sender<Fault>,
}

impl ConnHandle {
    /// Switches this connection's fault now.
    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }
}

/// The proxy. Dropping it stops accepting; open connections run until closed.
pub struct Proxy {
    shared: Arc<Shared>,
    accept_task: Mutex<Option<JoinHandle<()>>>,
}

impl Proxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let shared = Arc::new(Shared {
            addr: listener.local_addr()?,
            upstream,
            counters: Counters::default(),
            next_id: AtomicU64::new(0),
            policy: Mutex::new(Box::new(|_| Fault::none())),
            conns: Mutex::new(HashMap::new()),
            changed: watch::channel(()).0,
            kill: watch::channel(0).0,
            limit: AtomicUsize::new(usize::MAX),
            overflows: Mutex::new(Vec::new()),
        });
        let proxy = Proxy {
            shared,
            accept_task: Mutex::new(None),
        };
        proxy.spawn_accept(listener);
        Ok(proxy)
    }

    /// The address the pool should connect to.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// Records, at each accept that takes the open count above `limit`, what was open (the
    /// first 10 times), for an assertion message: see [`overflows`](Self::overflows).
    pub fn set_limit(&self, limit: usize) {
        self.shared.limit.store(limit, SeqCst);
    }

    /// What was open at the accepts that went above the limit.
    pub fn overflows(&self) -> Vec<String> {
        lock(&self.shared.overflows).clone()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ProxyStats {
        self.shared.stats()
    }

    /// Sets the fault of every connection accepted from now on.
    pub fn set_default(&self, fault: Fault) {
        self.set_policy(move |_| fault);
    }

    /// Lets `policy` choose the fault of each new connection from its number.
    pub fn set_policy(&self, policy: impl FnMut(u64) -> Fault + Send + 'static) {
        *lock(&self.shared.policy) = Box::new(policy);
    }

    /// Gives each new connection, with a chance of `percent` in 100, a random fault; the
    /// sequence is drawn from `seed`, so a seed replays the same faults.
    pub fn set_random_policy(&self, seed: u64, percent: u64) {
        let mut faults = Rng::new(seed);
        self.set_policy(move |_| {
            if faults.chance(percent) {
                faults.fault()
            } else {
                Fault::none()
            }
        });
    }

    /// Sets the fault of every open connection and of every new one.
    pub fn set_all(&self, fault: Fault) {
        self.set_default(fault);
        for c in self.connections() {
            c.set(fault);
        }
    }

    /// Switches one open connection, picked at random, to a random fault, or (half the time)
    /// clears its fault. Does nothing when no connection is open.
    pub fn shuffle_one_fault(&self, rng: &mut Rng) {
        let conns = self.connections();
        if conns.is_empty() {
            return;
        }
        let c = &conns[rng.below(conns.len() as u64) as usize];
        c.set(if rng.chance(50) {
            Fault::none()
        } else {
            rng.fault()
        });
    }

    /// The connections open now, in accept order.
    pub fn connections(&self) -> Vec<ConnHandle> {
        let conns = lock(&self.shared.conns);
        let mut v: Vec<ConnHandle> = conns
            .iter()
            .map(|(id, t)| ConnHandle {
                id: *id,
                fault: t.fault.clone(),
            })
            .collect();
        v.sort_by_key(|c| c.id);
        v
    }

    /// Stops listening: new connections are refused (the backend is down); open ones keep
    /// being served.
    pub async fn refuse(&self) {
        let task = lock(&self.accept_task).take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }

    /// The backend goes down: new connections are refused and every open one is closed.
    /// Returns once none is open.
    pub async fn down(&self) {
        self.refuse().await;
        self.shared.kill.send_modify(|k| *k += 1);
        let _ = self
            .wait_for(Duration::from_secs(20), |s| s.open == 0)
            .await;
    }

    /// Listens again on the same port (a restart).
    pub async fn up(&self) -> io::Result<()> {
        if lock(&self.accept_task).is_some() {
            return Ok(());
        }
        let listener = TcpListener::bind(self.shared.addr).await?;
        self.spawn_accept(listener);
        Ok(())
    }

    /// Waits until `cond` holds, at most `bound`; `None` if it did not.
    pub async fn wait_for(
        &self,
        bound: Duration,
        cond: impl Fn(&ProxyStats) -> bool,
    ) -> Option<ProxyStats> {
        let mut rx = self.shared.changed.subscribe();
        tokio::time::timeout(bound, async {
            loop {
                let s = self.stats();
                if cond(&s) {
                    return s;
                }
                // The sender lives in `shared`, which `self` keeps alive.
                let _ = rx.changed().await;
            }
        })
        .await
        .ok()
    }

    fn spawn_accept(&self, listener: TcpListener) {
        let shared = self.shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let (client, _) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    // EMFILE and friends: back off instead of spinning.
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    }
                };
                accept_one(&shared, client).await;
            }
        });
        *lock(&self.accept_task) = Some(task);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.accept_task).take() {
            task.abort();
        }
    }
}
