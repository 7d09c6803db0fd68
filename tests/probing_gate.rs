//! Issue 14, part 5: "probing itself opens no connection and does not grow the pool". A
//! checkout that finds no idle connection while the idle probe has one out of bb8 waits for
//! it instead of having bb8 open one (the checkout gate, `lifecycle` module docs). These
//! tests hold the probe mid-flight (a probe that waits for the test) and check what such a
//! checkout does: it takes a connection that comes back from use meanwhile, it is bounded by
//! `checkout_timeout`, and a pool closed meanwhile fails it at once. Real sockets on
//! 127.0.0.1, waits on events (the probe entered, the pool's counts), no sleeps.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum_tcp_pool::{BackendStream, TcpPool, TcpPoolError};
use testkit::{app, bounded, read_line, serve, wait_pool, Backend, HttpClient};
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;

/// The hold on the probes of one backend: armed, the next probe on a connection to it
/// signals `entered` and waits for `release`.
#[derive(Default)]
struct ProbeHold {
    armed: AtomicBool,
    entered: Notify,
    release: Notify,
}

/// The holds, by backend port (the tests of this file run in parallel in one process, and a
/// probe is a plain function).
static HOLDS: Mutex<BTreeMap<u16, Arc<ProbeHold>>> = Mutex::new(BTreeMap::new());

fn hold_for(backend: &Backend) -> Arc<ProbeHold> {
    let port = backend.addr_string().rsplit(':').next().map(str::to_owned);
    let port: u16 = port.and_then(|p| p.parse().ok()).expect("backend port");
    let hold = Arc::new(ProbeHold::default());
    hold.armed.store(true, SeqCst);
    HOLDS.lock().expect("holds").insert(port, hold.clone());
    hold
}

/// `PING`, answered `PONG`; held first if its backend's hold is armed (once).
async fn held_ping(stream: &mut BackendStream) -> std::io::Result<()> {
    let port = stream
        .tcp()
        .and_then(|s| s.peer_addr().ok())
        .map(|a| a.port());
    let hold = port.and_then(|p| HOLDS.lock().ok()?.get(&p).cloned());
    if let Some(hold) = hold.filter(|h| h.armed.swap(false, SeqCst)) {
        hold.entered.notify_one();
        hold.release.notified().await;
    }
    stream.write_all(b"PING\n").await?;
    match read_line(stream).await?.as_str() {
        "PONG" => Ok(()),
        _ => Err(std::io::Error::other("not PONG")),
    }
}

/// A pool of `min_idle` connections probed every 20 ms with [`held_ping`], and its app.
async fn setup(
    backend: &Backend,
    min_idle: u32,
    checkout_timeout: Duration,
) -> (TcpPool, HttpClient) {
    let pool = TcpPool::builder(backend.addr_string())
        .max_size(4)
        .min_idle(min_idle)
        .idle_timeout(None)
        .max_lifetime(None)
        .checkout_timeout(checkout_timeout)
        .connect_timeout(Duration::from_secs(10))
        .idle_probe_interval(Some(Duration::from_millis(20)))
        .health_check(held_ping)
        .connect()
        .await
        .expect("backend is up");
    let client = HttpClient::new(serve(app::eager(&pool)).await);
    (pool, client)
}

/// Two connections: a request holds one (the backend's `HOLD`), the probe holds the other.
/// A second request finds none idle and waits; when the first request ends, its connection
/// serves the second, though the probe still holds its own: no third connection, and the
/// wait did not last as long as the probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_back_from_use_serves_a_checkout_waiting_for_a_probe() {
    let backend = Backend::start().await;
    let (pool, client) = setup(&backend, 2, Duration::from_secs(10)).await;
    backend.wait_for("min_idle opened", |s| s.open == 2).await;
    // The first request takes one connection, before the hold is armed.
    let first = client.spawn_get("/hold/a");
    backend
        .wait_for("first request holding", |s| s.holding == 1)
        .await;
    let hold = hold_for(&backend);
    bounded(
        "probe of the other connection under way",
        hold.entered.notified(),
    )
    .await;
    let before = pool.state();
    let second = client.spawn_get("/echo/b");
    wait_pool(&pool, "second request waiting", |s| {
        s.gets_waited > before.gets_waited
    })
    .await;
    backend.release();
    assert_eq!(bounded("first", first).await.expect("first").status, 200);
    let reply = bounded("second", second).await.expect("second");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "b");
    let s = pool.state();
    assert_eq!(
        (backend.seen().accepts, s.connections_created),
        (2, 2),
        "{s:?}"
    );
    assert_eq!(
        s.idle_probes, before.idle_probes,
        "the second request waited for the probe to end: {s:?}"
    );
    hold.release.notify_one();
}

/// The probe holds the only idle connection for longer than `checkout_timeout`: a request
/// that waits for it answers `503` within its own timeout, while the probe is still held, and
/// no connection is opened for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_waiting_for_a_probe_keeps_its_checkout_timeout() {
    let backend = Backend::start().await;
    let (pool, client) = setup(&backend, 1, Duration::from_millis(200)).await;
    let hold = hold_for(&backend);
    bounded("probe under way", hold.entered.notified()).await;
    let probes = pool.state().idle_probes;
    let reply = client.get("/echo/x").await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    let s = pool.state();
    assert_eq!(
        (
            s.gets,
            s.gets_timed_out,
            s.gets_waited,
            s.connections_created
        ),
        (1, 1, 1, 1),
        "{s:?}"
    );
    assert_eq!(s.idle_probes, probes, "answered after the probe: {s:?}");
    hold.release.notify_one();
    // Once the probe is done, the connection serves requests again.
    let s = wait_pool(&pool, "probe done", |s| s.idle_probes >= 1 && s.idle == 1).await;
    assert_eq!(s.idle_probe_failures, 0, "{s:?}");
    assert_eq!(client.get("/echo/y").await.status, 200);
    assert_eq!(backend.seen().accepts, 1);
}

/// A request waiting for the probed connection when the pool closes fails at once with
/// `Closed` (`503`), while the probe is still held: close does not wait for the probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_waiting_for_a_probe_fails_at_once_when_the_pool_closes() {
    let backend = Backend::start().await;
    let (pool, _client) = setup(&backend, 1, Duration::from_secs(10)).await;
    let hold = hold_for(&backend);
    bounded("probe under way", hold.entered.notified()).await;
    let probes = pool.state().idle_probes;
    let waiting = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.get().await.map(drop) })
    };
    wait_pool(&pool, "checkout waiting", |s| s.gets_waited >= 1).await;
    let closed = pool.close();
    let result = bounded("the waiting checkout", waiting)
        .await
        .expect("checkout task");
    assert!(
        matches!(result, Err(TcpPoolError::Closed)),
        "{result:?} {:?}",
        pool.state()
    );
    assert_eq!(pool.state().idle_probes, probes, "failed after the probe");
    assert_eq!(backend.seen().accepts, 1);
    hold.release.notify_one();
    bounded("close", closed).await;
    backend.wait_for("closed", |s| s.open == 0).await;
}
