//! Issue 14, part 5, the checkout gate's edges: "idle connections are checked in the
//! background at that interval (the non-blocking peek, then the configured probe if any), and
//! dead ones are replaced (probing itself opens no connection and does not grow the pool)".
//!
//! The probe of these tests is scripted per backend: an armed step makes the next probe call
//! on a connection (the idle probe's or a checkout's health check) report that it entered,
//! wait for the test, then pass or fail. So a probe is held mid-flight for as long as a test
//! needs, and a checkout's health check fails on demand. Real sockets on 127.0.0.1, waits on
//! events (a probe entered, the pool's counts, the backend's counts), no sleeps.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use axum_tcp_pool::{BackendStream, PoolState, TcpConnection, TcpPool, TcpPoolError};
use testkit::{app, bounded, read_line, serve, wait_pool, Backend, HttpClient};
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;

/// One armed step of a backend's script: the next probe call on a connection other than
/// `except` (by local port) takes it.
struct Step {
    except: Option<u16>,
    entered: oneshot::Sender<u16>,
    release: oneshot::Receiver<bool>,
}

/// The scripts, by backend port (the tests of this file run in parallel in one process).
static SCRIPTS: Mutex<BTreeMap<u16, VecDeque<Step>>> = Mutex::new(BTreeMap::new());

/// A pool whose `state()` the probe reads (see the deadlock test).
static STATE_POOL: OnceLock<TcpPool> = OnceLock::new();

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("backend port")
}

/// The two ends of an armed step: the local port of the connection it was taken on, and
/// the release (`true`: the probe goes on with its `PING`; `false`: it fails).
struct Armed {
    entered: oneshot::Receiver<u16>,
    release: oneshot::Sender<bool>,
}

impl Armed {
    async fn entered(&mut self, what: &str) -> u16 {
        bounded(what, &mut self.entered).await.expect("step taken")
    }
    fn pass(self) {
        let _ = self.release.send(true);
    }
    fn fail(self) {
        let _ = self.release.send(false);
    }
}

fn arm(backend: &Backend, except: Option<u16>) -> Armed {
    let (entered_tx, entered) = oneshot::channel();
    let (release, release_rx) = oneshot::channel();
    SCRIPTS
        .lock()
        .expect("scripts")
        .entry(port_of(&backend.addr_string()))
        .or_default()
        .push_back(Step {
            except,
            entered: entered_tx,
            release: release_rx,
        });
    Armed { entered, release }
}

/// `PING`, answered `PONG`; first the backend's next armed step, if any applies.
async fn scripted_ping(stream: &mut BackendStream) -> std::io::Result<()> {
    let tcp = stream.tcp();
    let peer = tcp.and_then(|s| s.peer_addr().ok()).map(|a| a.port());
    let local = tcp.and_then(|s| s.local_addr().ok()).map(|a| a.port());
    let step = peer.and_then(|peer| {
        let mut scripts = SCRIPTS.lock().ok()?;
        let steps = scripts.get_mut(&peer)?;
        let i = steps
            .iter()
            .position(|s| s.except.is_none() || s.except != local)?;
        steps.remove(i)
    });
    if let Some(step) = step {
        let _ = step.entered.send(local.unwrap_or(0));
        if !step.release.await.unwrap_or(true) {
            return Err(std::io::Error::other("scripted probe failure"));
        }
    }
    stream.write_all(b"PING\n").await?;
    match read_line(stream).await?.as_str() {
        "PONG" => Ok(()),
        _ => Err(std::io::Error::other("not PONG")),
    }
}

/// [`scripted_ping`], after reading the pool's state (a health check that looks at the pool).
async fn state_reading_ping(stream: &mut BackendStream) -> std::io::Result<()> {
    if let Some(pool) = STATE_POOL.get() {
        let _ = pool.state();
    }
    scripted_ping(stream).await
}

/// A pool probed every 20 ms with [`scripted_ping`] (also its checkout health check), no
/// idle timeout nor lifetime.
fn builder(backend: &Backend, max_size: u32, min_idle: u32) -> axum_tcp_pool::TcpPoolBuilder {
    TcpPool::builder(backend.addr_string())
        .max_size(max_size)
        .min_idle(min_idle)
        .idle_timeout(None)
        .max_lifetime(None)
        .checkout_timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(10))
        .idle_probe_interval(Some(Duration::from_millis(20)))
        .health_check(scripted_ping)
}

async fn exchange(conn: &mut TcpConnection, cmd: &str) -> Result<String, TcpPoolError> {
    conn.write_all(format!("{cmd}\n").as_bytes()).await?;
    Ok(read_line(conn).await?)
}

/// A pool of one idle connection (max_size 4), whose idle probe is under way and held.
async fn only_connection_probed(backend: &Backend) -> (TcpPool, Armed) {
    let pool = builder(backend, 4, 0).build().expect("pool");
    open_idle(&pool, backend, 1).await;
    let mut probe = arm(backend, None);
    probe.entered("idle probe of the only connection").await;
    (pool, probe)
}

/// A task that checks a connection out of `pool` and makes one exchange on it.
fn spawn_exchange(
    pool: &TcpPool,
    cmd: &'static str,
) -> tokio::task::JoinHandle<Result<String, TcpPoolError>> {
    let pool = pool.clone();
    tokio::spawn(async move {
        let mut conn = pool.get().await?;
        exchange(&mut conn, cmd).await
    })
}

/// Opens `n` connections with `n` concurrent checkouts and gives them back (min_idle 0).
async fn open_idle(pool: &TcpPool, backend: &Backend, n: usize) {
    let mut conns = Vec::new();
    for _ in 0..n {
        conns.push(bounded("checkout", pool.get()).await.expect("checkout"));
    }
    drop(conns);
    backend.wait_for("connections open", |s| s.open == n).await;
    wait_pool(pool, "connections idle", |s| s.idle as usize == n).await;
}

/// The invariants `pool.state()` keeps at any time.
fn coherent(s: &PoolState) {
    assert_eq!(s.idle + s.in_use, s.connections, "{s:?}");
    assert!(s.gets >= s.gets_waited, "gets_waited > gets: {s:?}");
    assert!(s.gets >= s.gets_timed_out, "gets_timed_out > gets: {s:?}");
}

/// Part 5, "probing itself opens no connection". Two idle connections: the idle probe holds
/// X; a checkout takes Y, whose health check (the configured probe, a round trip) fails.
/// bb8 then looks for another idle connection in a later poll of the same checkout, outside
/// the gate: with X out, it finds none and opens a third connection, where without probing
/// it would have taken X. The checkout must wait for X instead (X is healthy; the wait is
/// counted in `gets_waited`): the backend sees 2 connections, not 3.
///
/// Failed on 304f5c3: 3 accepts, 3 connections created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_check_failing_while_the_probe_holds_the_other_connection_opens_none() {
    let backend = Backend::start().await;
    let pool = builder(&backend, 4, 0).build().expect("pool");
    open_idle(&pool, &backend, 2).await;
    // No checkout in flight: the next probe call is the idle probe's.
    let mut probe = arm(&backend, None);
    let x = probe.entered("idle probe of X").await;
    let mut check = arm(&backend, Some(x));
    let before = pool.state();
    let checkout = spawn_exchange(&pool, "ECHO r");
    check.entered("health check of Y").await;
    check.fail();
    // Either the checkout waits at the gate for X, or bb8 opened a connection for it.
    wait_pool(&pool, "checkout waiting, or a connection opened", |s| {
        s.gets_waited > before.gets_waited || backend.seen().accepts > 2
    })
    .await;
    probe.pass();
    let reply = bounded("checkout", checkout).await.expect("task");
    assert_eq!(reply.expect("checkout after the failed check"), "r");
    let s = pool.state();
    coherent(&s);
    assert_eq!(
        (backend.seen().accepts, s.connections_created),
        (2, 2),
        "a health check that failed while the probe held the other idle connection had bb8 \
         open a new one: {s:?}"
    );
}

/// Part 5, the counts: a checkout that waits at the gate for the probed connection, which
/// then fails its probe, goes on to bb8, which has to open a connection for it (a dead one is
/// replaced): one checkout, counted once in `gets` and once in `gets_waited` (not twice:
/// `gets_waited` never exceeds `gets`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_waiting_at_the_gate_then_in_bb8_counts_one_wait() {
    let backend = Backend::start().await;
    let (pool, probe) = only_connection_probed(&backend).await;
    let before = pool.state();
    let checkout = spawn_exchange(&pool, "ECHO r");
    wait_pool(&pool, "checkout at the gate", |s| {
        s.gets_waited > before.gets_waited
    })
    .await;
    probe.fail();
    let reply = bounded("checkout", checkout).await.expect("task");
    assert_eq!(reply.expect("checkout on a new connection"), "r");
    let s = wait_pool(&pool, "probe failure counted", |s| {
        s.idle_probe_failures == 1
    })
    .await;
    assert_eq!(backend.seen().accepts, 2, "{s:?}");
    assert_eq!(
        (s.gets - before.gets, s.gets_waited - before.gets_waited),
        (1, 1),
        "one checkout, one wait: {s:?}"
    );
    coherent(&s);
}

/// Part 5 with cancellation: checkouts waiting at the gate are dropped (a client gone). No
/// wake is lost for the one that stays, the probed connection serves it, no connection is
/// opened, and the counts stay coherent (the cancelled checkouts count as gets, as bb8
/// counts its own cancelled ones).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkouts_cancelled_at_the_gate_leave_coherent_counts_and_lose_no_wake() {
    let backend = Backend::start().await;
    let (pool, probe) = only_connection_probed(&backend).await;
    let before = pool.state();
    let spawn = || spawn_exchange(&pool, "ECHO kept");
    let cancelled: Vec<_> = (0..3).map(|_| spawn()).collect();
    wait_pool(&pool, "three at the gate", |s| {
        s.gets_waited >= before.gets_waited + 3
    })
    .await;
    let kept = spawn();
    wait_pool(&pool, "four at the gate", |s| {
        s.gets_waited >= before.gets_waited + 4
    })
    .await;
    for c in cancelled {
        c.abort();
        assert!(bounded("cancelled", c)
            .await
            .is_err_and(|e| e.is_cancelled()));
    }
    coherent(&pool.state());
    probe.pass();
    let reply = bounded("kept checkout", kept).await.expect("task");
    assert_eq!(reply.expect("kept checkout"), "kept");
    let s = wait_pool(&pool, "idle again", |s| s.idle == 1).await;
    coherent(&s);
    assert_eq!(backend.seen().accepts, 1, "{s:?}");
    assert_eq!(s.gets - before.gets, 4, "{s:?}");
    assert_eq!(s.gets_timed_out, 0, "{s:?}");
}

/// Part 5 at max_size with waiters: max_size 2, a request holds one connection, the probe
/// holds the other, two more requests wait. The held request's connection coming back serves
/// one waiter (a return wakes the gate), the probed one the other once released: every
/// request answers 200 and no third connection is ever opened (bb8 could not anyway) nor
/// any request times out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_max_size_a_return_and_the_probed_connection_serve_two_waiters() {
    let backend = Backend::start().await;
    let pool = builder(&backend, 2, 2).connect().await.expect("pool");
    let client = HttpClient::new(serve(app::eager(&pool)).await);
    backend.wait_for("min_idle open", |s| s.open == 2).await;
    wait_pool(&pool, "min_idle idle", |s| s.idle == 2).await;
    let held = client.spawn_get("/hold/h");
    backend.wait_for("holding", |s| s.holding == 1).await;
    let mut probe = arm(&backend, None);
    probe.entered("idle probe of the other").await;
    let before = pool.state();
    let a = client.spawn_get("/echo/a");
    let b = client.spawn_get("/echo/b");
    wait_pool(&pool, "two waiting", |s| {
        s.gets_waited >= before.gets_waited + 2
    })
    .await;
    let replies = backend.seen().replies;
    backend.release();
    assert_eq!(bounded("held", held).await.expect("held").status, 200);
    // One waiter now has the returned connection (its health check's PONG, then its ECHO),
    // while the probe still holds the other: the return woke the gate.
    backend
        .wait_for("a waiter served by the return", |s| {
            s.replies >= replies + 3
        })
        .await;
    probe.pass();
    for (name, r) in [("a", a), ("b", b)] {
        let reply = bounded(name, r).await.expect("task");
        assert_eq!((reply.status.as_u16(), reply.body.as_str()), (200, name));
    }
    let s = pool.state();
    coherent(&s);
    assert_eq!((backend.seen().accepts, s.gets_timed_out), (2, 0), "{s:?}");
}

/// Part 5 with `set_endpoints`: a checkout waits at the gate of the only endpoint, whose only
/// connection the probe holds, and the endpoint is removed from the set. The checkout goes on
/// at once to the new endpoint (the removal wakes it), while the probe is still held, and no
/// connection is opened to the removed one; once the probe ends, its connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_an_endpoint_whose_probe_is_held_moves_its_gate_waiters() {
    let old = Backend::start().await;
    let new = Backend::start().await;
    let pool = builder(&old, 4, 1).connect().await.expect("pool");
    old.wait_for("min_idle", |s| s.open == 1).await;
    wait_pool(&pool, "idle", |s| s.idle == 1).await;
    let mut probe = arm(&old, None);
    probe
        .entered("idle probe of the old endpoint's connection")
        .await;
    let before = pool.state();
    let checkout = spawn_exchange(&pool, "ECHO moved");
    wait_pool(&pool, "checkout at the gate", |s| {
        s.gets_waited > before.gets_waited
    })
    .await;
    pool.set_endpoints([new.addr_string()]).expect("set");
    let reply = bounded("checkout moved", checkout).await.expect("task");
    assert_eq!(reply.expect("served by the new endpoint"), "moved");
    assert_eq!(old.seen().accepts, 1, "{:?}", pool.state());
    probe.pass();
    old.wait_for("old connection closed", |s| s.open == 0).await;
    coherent(&pool.state());
}

/// Part 5 on a current-thread runtime (one thread for the probe rounds, the sweeps and every
/// checkout): 2 tasks, 300 checkouts each, probe rounds every millisecond with the configured
/// probe, min_idle 4 of max_size 8 (so 2 connections stay idle and are probed). No hang (a
/// sweep's wait for checkouts in their poll never spins against a checkout on the same
/// thread), every checkout succeeds, and no connection is opened beyond the 4.
#[tokio::test(flavor = "current_thread")]
async fn current_thread_probe_rounds_and_checkouts_neither_hang_nor_grow() {
    let backend = Backend::start().await;
    let pool = builder(&backend, 8, 4)
        .idle_probe_interval(Some(Duration::from_millis(1)))
        .connect()
        .await
        .expect("pool");
    backend.wait_for("min_idle", |s| s.open == 4).await;
    wait_pool(&pool, "idle", |s| s.idle == 4).await;
    let tasks: Vec<_> = (0..2)
        .map(|t| {
            let pool = pool.clone();
            tokio::spawn(async move {
                for i in 0..300 {
                    let mut conn = pool.get().await.expect("checkout");
                    let text = format!("t{t}i{i}");
                    let reply = exchange(&mut conn, &format!("ECHO {text}")).await;
                    assert_eq!(reply.expect("echo"), text);
                }
            })
        })
        .collect();
    for t in tasks {
        bounded("checkouts", t).await.expect("task");
    }
    let s = pool.state();
    coherent(&s);
    assert!(s.idle_probes > 0, "no probe ran: {s:?}");
    assert_eq!(backend.seen().accepts, 4, "{s:?}");
}

/// Part 5, a storm during a held probe: 2 connections, the probe holds one, 40 requests at
/// once. Every request still answers 200 (a thundering herd on each return completes) and
/// the pool grows only as a pool without probing would: at most max_size, and after the
/// storm, state is coherent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_while_the_probe_holds_a_connection_completes() {
    let backend = Backend::start().await;
    let pool = builder(&backend, 8, 2).connect().await.expect("pool");
    let client = HttpClient::new(serve(app::eager(&pool)).await);
    wait_pool(&pool, "idle", |s| s.idle == 2).await;
    let mut probe = arm(&backend, None);
    probe.entered("idle probe").await;
    let storm: Vec<_> = (0..40)
        .map(|i| client.spawn_get(&format!("/echo/s{i}")))
        .collect();
    // Release the probe once at least one request was served on the other connection.
    backend
        .wait_for("a request served", |s| s.replies >= 1)
        .await;
    probe.pass();
    for (i, r) in storm.into_iter().enumerate() {
        let reply = bounded("storm request", r).await.expect("task");
        assert_eq!(reply.status, 200, "request {i}: {}", reply.body);
    }
    let s = pool.state();
    coherent(&s);
    assert!(backend.seen().max_open <= 8, "{s:?}");
}

/// Part 5: a health check that reads `pool.state()` (a user probe may look at the pool) runs
/// during a checkout made while a probe holds another connection. It must not deadlock: the
/// checkout completes. Run on a thread of its own so that a deadlock fails the test instead
/// of hanging it.
#[test]
fn a_health_check_reading_pool_state_while_a_probe_holds_does_not_deadlock() {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let backend = Backend::start().await;
            let pool = builder(&backend, 4, 0)
                .health_check(state_reading_ping)
                .build()
                .expect("pool");
            open_idle(&pool, &backend, 2).await;
            assert!(STATE_POOL.set(pool.clone()).is_ok(), "one such test");
            let mut probe = arm(&backend, None);
            probe.entered("idle probe of X").await;
            // The checkout takes the other, idle, connection under the gate's lock.
            let mut conn = pool.get().await.expect("checkout");
            assert_eq!(exchange(&mut conn, "ECHO ok").await.expect("echo"), "ok");
            drop(conn);
            probe.pass();
        });
        let _ = done_tx.send(());
        // The runtime is dropped here only if nothing is blocked.
        drop(rt);
    });
    assert!(
        done_rx.recv_timeout(testkit::BOUND).is_ok(),
        "deadlock: a checkout whose health check reads pool.state() while an idle probe holds \
         a connection never completed"
    );
}

/// Part 5 with several endpoints: A's only connection is held by its idle probe, B has one
/// idle. One request at a time: none may wait for A's probe while B has an idle connection.
/// Before the gate such a checkout had A open a connection; with it, a checkout that chose A
/// waits at A's gate for the whole probe (up to `connect_timeout`), here until its
/// `checkout_timeout` (1 s): it answers `CheckoutTimeout` while B had a connection idle all
/// along and A had room for 3 more.
///
/// Failed before the fix (5 runs in 5): a request timed out within its first 4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_does_not_wait_for_one_endpoints_probe_while_another_has_an_idle_connection() {
    let a = Backend::start().await;
    let b = Backend::start().await;
    let pool = builder(&a, 4, 1)
        .endpoint(b.addr_string())
        .checkout_timeout(Duration::from_secs(1))
        .build()
        .expect("pool");
    a.wait_for("A min_idle", |s| s.open == 1).await;
    b.wait_for("B min_idle", |s| s.open == 1).await;
    wait_pool(&pool, "both idle", |s| s.idle == 2).await;
    let mut probe = arm(&a, None);
    probe.entered("idle probe of A's connection").await;
    for i in 0..20 {
        let mut conn = match bounded("checkout", pool.get()).await {
            Ok(conn) => conn,
            Err(e) => {
                let s = pool.state();
                probe.pass();
                panic!(
                    "request {i} waited for A's probe while B had an idle connection: {e:?} {s:?}"
                );
            }
        };
        assert_eq!(
            exchange(&mut conn, &format!("ECHO r{i}"))
                .await
                .expect("echo"),
            format!("r{i}")
        );
    }
    probe.pass();
    assert_eq!((a.seen().accepts, b.seen().accepts), (1, 1));
}
