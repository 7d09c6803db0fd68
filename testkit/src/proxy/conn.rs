//! One proxied connection: counted at accept, then bytes forwarded both ways with the
//! connection's current [`Fault`] applied, until one side closes or a fault ends it.

use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::shared::{lock, Shared, Tracked};
use super::Fault;

/// Counts a new connection, after retiring those the client has closed. When that would set
/// a new maximum while some counted socket still has unread bytes, the connection tasks get
/// a bounded moment (at most about 2 s; they may be sleeping out a latency fault, on a busy
/// host: 300 ms once proved too short with three proxies and their pools on two busy CPUs)
/// to drain them, so that a FIN behind them is seen.
pub(super) async fn accept_one(shared: &Arc<Shared>, client: TcpStream) {
    let c = &shared.counters;
    for _ in 0..2_000 {
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
