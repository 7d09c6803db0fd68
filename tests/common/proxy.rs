//! A fault-injecting TCP proxy, Toxiproxy-style, for the fault tests and the soak example.
//!
//! It sits between the pool and a real backend and, per connection and switchable at run
//! time ([`Fault`]), delays replies, swallows everything (blackhole), resets (RST) at once or
//! after N reply bytes, closes idle connections from the server side, half-closes (FIN) when
//! the client writes, or slices replies into 1-byte segments. [`Proxy::refuse`] /
//! [`Proxy::down`] / [`Proxy::up`] take the "backend" down and bring it back on the same port.
//!
//! It counts what a backend would see from the pool: accepts, connections open now and the
//! most open at once ([`ProxyStats`]). Only tokio, socket2 and std are used, so that the soak
//! example can include this file with `#[path]`; nothing here panics on I/O.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io;
use std::mem::MaybeUninit;
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// What the proxy does to one connection. Faults act on the reply direction (backend to
/// client) unless said otherwise; several can be combined.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fault {
    /// Delay each reply chunk by this much.
    pub latency: Option<Duration>,
    /// Accept, read and drop everything the client sends, never reply.
    pub blackhole: bool,
    /// Reset the client connection (RST) once this many reply bytes were forwarded since the
    /// fault was set (or the connection accepted); `Some(0)` resets at once.
    pub reset_after: Option<u64>,
    /// Close the connection from the server side after it was idle (no bytes either way) this
    /// long, like Redis `timeout`.
    pub idle_close: Option<Duration>,
    /// Half-close: send FIN to the client as soon as it writes, and forward nothing more.
    pub half_close: bool,
    /// Forward replies one byte at a time with this gap between segments.
    pub slice: Option<Duration>,
}

impl Fault {
    /// No fault: a transparent proxy.
    pub fn none() -> Fault {
        Fault::default()
    }
    /// Delay each reply chunk.
    pub fn latency(d: Duration) -> Fault {
        Fault {
            latency: Some(d),
            ..Fault::default()
        }
    }
    /// Accept, never reply.
    pub fn blackhole() -> Fault {
        Fault {
            blackhole: true,
            ..Fault::default()
        }
    }
    /// RST after `n` reply bytes (`0`: at once).
    pub fn reset_after(n: u64) -> Fault {
        Fault {
            reset_after: Some(n),
            ..Fault::default()
        }
    }
    /// Server-side close after `d` idle.
    pub fn idle_close(d: Duration) -> Fault {
        Fault {
            idle_close: Some(d),
            ..Fault::default()
        }
    }
    /// FIN while the client is writing.
    pub fn half_close() -> Fault {
        Fault {
            half_close: true,
            ..Fault::default()
        }
    }
    /// 1-byte reply segments, `gap` apart.
    pub fn slice(gap: Duration) -> Fault {
        Fault {
            slice: Some(gap),
            ..Fault::default()
        }
    }
}

/// What the proxy has seen from the client (pool) side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections accepted.
    pub accepts: usize,
    /// Connections open now: accepted, and neither closed by the proxy nor closed (FIN or
    /// RST received) by the client.
    pub open: usize,
    /// Most connections open at once.
    pub max_open: usize,
    /// Connections reset by a `reset_after` fault.
    pub resets: usize,
    /// Connections closed by an `idle_close` fault.
    pub idle_closes: usize,
    /// Connections half-closed by a `half_close` fault.
    pub half_closes: usize,
    /// Connections closed because the backend behind the proxy could not be reached or closed.
    pub upstream_closes: usize,
    /// Connections closed by [`Proxy::down`].
    pub killed: usize,
}

/// Decides the fault of each new connection, given its number (0, 1, 2, ...).
pub type Policy = Box<dyn FnMut(u64) -> Fault + Send>;

struct Tracked {
    client: Weak<TcpStream>,
    counted: Arc<AtomicBool>,
    fault: watch::Sender<Fault>,
}

#[derive(Default)]
struct Counters {
    accepts: AtomicUsize,
    open: AtomicUsize,
    max_open: AtomicUsize,
    resets: AtomicUsize,
    idle_closes: AtomicUsize,
    half_closes: AtomicUsize,
    upstream_closes: AtomicUsize,
    killed: AtomicUsize,
}

struct Shared {
    addr: SocketAddr,
    upstream: SocketAddr,
    counters: Counters,
    next_id: AtomicU64,
    policy: Mutex<Policy>,
    conns: Mutex<HashMap<u64, Tracked>>,
    changed: watch::Sender<()>,
    kill: watch::Sender<u64>,
    /// Above this many open connections, an accept records what was open (see
    /// [`Proxy::set_limit`]).
    limit: AtomicUsize,
    overflows: Mutex<Vec<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    fn bump(&self) {
        self.changed.send_replace(());
    }

    /// Stops counting a connection as open (once).
    fn retire(&self, counted: &AtomicBool) {
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
    fn retire_closed(&self) -> bool {
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
    fn record_overflow(&self, id: u64, open: usize, new: &TcpStream) {
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

    fn stats(&self) -> ProxyStats {
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

/// A handle to one proxied connection, to switch its fault at run time.
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

/// Counts a new connection, after retiring those the client has closed. When that would set
/// a new maximum while some counted socket still has unread bytes, the connection tasks get
/// a bounded moment (at most about 300 ms; they may be sleeping out a latency fault, on a
/// busy host) to drain them, so that a FIN behind them is seen.
async fn accept_one(shared: &Arc<Shared>, client: TcpStream) {
    let c = &shared.counters;
    for _ in 0..300 {
        let ambiguous = shared.retire_closed();
        if !ambiguous || c.open.load(SeqCst) < c.max_open.load(SeqCst) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    c.accepts.fetch_add(1, SeqCst);
    let open = c.open.fetch_add(1, SeqCst) + 1;
    c.max_open.fetch_max(open, SeqCst);
    let id = shared.next_id.fetch_add(1, SeqCst);
    if open > shared.limit.load(SeqCst) {
        shared.record_overflow(id, open, &client);
    }
    let fault = (lock(&shared.policy))(id);
    let (fault_tx, fault_rx) = watch::channel(fault);
    let counted = Arc::new(AtomicBool::new(true));
    let client = Arc::new(client);
    let _ = client.set_nodelay(true);
    // Subscribed before the connection is registered, so a `down` that sees it is not missed.
    let kill = shared.kill.subscribe();
    lock(&shared.conns).insert(
        id,
        Tracked {
            client: Arc::downgrade(&client),
            counted: counted.clone(),
            fault: fault_tx,
        },
    );
    shared.bump();
    let shared = shared.clone();
    tokio::spawn(async move {
        let mut kill = kill;
        tokio::select! {
            end = run_conn(&shared, &client, fault_rx) => {
                match end {
                    End::Reset => {
                        let _ = socket2::SockRef::from(&*client).set_linger(Some(Duration::ZERO));
                        shared.counters.resets.fetch_add(1, SeqCst);
                    }
                    End::IdleClose => {
                        let _ = socket2::SockRef::from(&*client).shutdown(Shutdown::Write);
                        shared.counters.idle_closes.fetch_add(1, SeqCst);
                    }
                    End::Upstream => {
                        let _ = socket2::SockRef::from(&*client).shutdown(Shutdown::Write);
                        shared.counters.upstream_closes.fetch_add(1, SeqCst);
                    }
                    End::Client => {}
                }
            }
            _ = kill.changed() => {
                let _ = socket2::SockRef::from(&*client).shutdown(Shutdown::Both);
                shared.counters.killed.fetch_add(1, SeqCst);
            }
        }
        // Close, stop counting, then unregister: a connection counted open is always in the
        // registry, where an accept can see it closed (its weak reference no longer upgrades).
        drop(client);
        shared.retire(&counted);
        lock(&shared.conns).remove(&id);
    });
}

/// How a proxied connection ended.
enum End {
    /// The client closed (FIN or RST) or a write to it failed.
    Client,
    /// The backend behind the proxy refused, closed or failed.
    Upstream,
    /// An `idle_close` fault fired.
    IdleClose,
    /// A `reset_after` fault fired.
    Reset,
}

/// Writes all of `buf` to a shared stream.
async fn write_all(stream: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        stream.writable().await?;
        match stream.try_write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn idle_deadline(fault: &Fault, last: Instant) {
    match fault.idle_close {
        Some(d) => tokio::time::sleep_until(last + d).await,
        None => std::future::pending().await,
    }
}

async fn run_conn(
    shared: &Shared,
    client: &TcpStream,
    mut fault_rx: watch::Receiver<Fault>,
) -> End {
    let Ok(upstream) = TcpStream::connect(shared.upstream).await else {
        return End::Upstream;
    };
    let _ = upstream.set_nodelay(true);
    let (mut up_r, mut up_w) = upstream.into_split();
    let mut from_client = [0u8; 4096];
    let mut from_upstream = [0u8; 4096];
    let mut sent: u64 = 0;
    let mut current = *fault_rx.borrow();
    let mut half_closed = false;
    let mut last = Instant::now();
    loop {
        let fault = *fault_rx.borrow_and_update();
        if fault != current {
            // A `reset_after` switched on now counts the bytes from now.
            current = fault;
            sent = 0;
        }
        if fault.reset_after.is_some_and(|n| sent >= n) {
            return End::Reset;
        }
        tokio::select! {
            changed = fault_rx.changed() => {
                if changed.is_err() {
                    return End::Client;
                }
            }
            _ = idle_deadline(&fault, last) => return End::IdleClose,
            ready = client.readable() => {
                if ready.is_err() {
                    return End::Client;
                }
                let n = match client.try_read(&mut from_client) {
                    Ok(0) => return End::Client,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(_) => return End::Client,
                };
                last = Instant::now();
                if fault.half_close && !half_closed {
                    half_closed = true;
                    let _ = socket2::SockRef::from(client).shutdown(Shutdown::Write);
                    shared.counters.half_closes.fetch_add(1, SeqCst);
                    shared.bump();
                }
                if fault.blackhole || half_closed {
                    continue;
                }
                if up_w.write_all(&from_client[..n]).await.is_err() {
                    return End::Upstream;
                }
            }
            read = up_r.read(&mut from_upstream) => {
                let n = match read {
                    Ok(0) | Err(_) => return End::Upstream,
                    Ok(n) => n,
                };
                if fault.blackhole || half_closed {
                    continue;
                }
                if let Some(d) = fault.latency {
                    tokio::time::sleep(d).await;
                }
                // Bytes allowed before a reset fault fires.
                let allowed = fault.reset_after.map_or(n as u64, |limit| (limit - sent).min(n as u64));
                let chunk = &from_upstream[..allowed as usize];
                let written = match fault.slice {
                    Some(gap) => write_sliced(client, chunk, gap).await,
                    None => write_all(client, chunk).await,
                };
                if written.is_err() {
                    return End::Client;
                }
                sent += allowed;
                last = Instant::now();
            }
        }
    }
}

async fn write_sliced(client: &TcpStream, chunk: &[u8], gap: Duration) -> io::Result<()> {
    for (i, b) in chunk.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(gap).await;
        }
        write_all(client, std::slice::from_ref(b)).await?;
    }
    Ok(())
}

/// A small seeded PRNG (splitmix64): the fault schedule of a chaos or soak run is a function
/// of its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// `true` with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// A duration in `lo..hi` milliseconds.
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi.saturating_sub(lo)))
    }

    /// One fault from the whole list (never `none`): latency, blackhole, reset at once or
    /// after a few bytes, server-side idle close, half-close, 1-byte slices.
    pub fn fault(&mut self) -> Fault {
        match self.below(7) {
            0 => Fault::latency(self.millis(1, 30)),
            1 => Fault::blackhole(),
            2 => Fault::reset_after(0),
            3 => Fault::reset_after(self.below(12)),
            4 => Fault::idle_close(self.millis(5, 50)),
            5 => Fault::half_close(),
            _ => Fault::slice(Duration::from_millis(1)),
        }
    }
}
