//! The edges of the lifecycle task and of leak detection: a leak reported once per lend with
//! its own request, the scan task ending with the pool, lifetimes in use and in a long-idle
//! pool, sweeps and probes racing bursts within `max_size`, no spin with a backend down,
//! `pool.state()` during sweeps, a slow probe that is no leak, probing that does not grow the
//! pool under concurrent checkouts.

use std::time::{Duration, Instant};

use axum::extract::Path;
use axum::routing::get;
use axum::Router;
use axum_tcp_pool::{TcpConnection, TcpPool, TcpPoolError, TcpPoolLayer};
use testkit::events::{EventCapture, LEAK_WARN as WARN};
use testkit::proxy::Proxy;
use testkit::{app, bounded, read_line, serve, wait_pool, Backend, HttpClient};
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;

async fn exchange(conn: &mut TcpConnection, cmd: &str) -> Result<String, TcpPoolError> {
    conn.write_all(format!("{cmd}\n").as_bytes()).await?;
    Ok(read_line(conn).await?)
}

/// Holds its connection until the test releases the backend's `HOLD`s.
async fn hold(Path(name): Path<String>, mut conn: TcpConnection) -> Result<String, TcpPoolError> {
    exchange(&mut conn, &format!("HOLD {name}")).await
}

/// Part 2. One connection (max_size 1) leaked by a first request, which then returns it, is
/// reused by a second request that leaks it too: each lend is reported once (not once per
/// scan, though the first is held for many scans), the second with the second request's
/// method and path, never a query string, and a `held_ms` no longer than the test saw it
/// held.
#[tokio::test]
async fn a_reused_connection_is_reported_for_each_lend_with_its_own_request() {
    let capture = EventCapture::default();
    let _guard = capture.install();
    let threshold = Duration::from_millis(100);
    let backend = Backend::start().await;
    let pool = TcpPool::builder(backend.addr_string())
        .name("edges")
        .max_size(1)
        .leak_threshold(Some(threshold))
        .build()
        .expect("valid pool config");
    let router = Router::new()
        .route("/first/{name}", get(hold))
        .route("/second/{name}", get(hold))
        .layer(TcpPoolLayer::new(pool.clone()));
    let client = HttpClient::new(serve(router).await);

    let first = client.spawn_get("/first/a?secret=s3cr3t");
    backend.wait_for("first held", |s| s.holding == 1).await;
    capture.wait_for(WARN, "path", "/first/a").await;
    // Held for 8 more thresholds (32 scans at a quarter of it): still one report.
    let until = Instant::now() + threshold * 8;
    tokio::time::sleep_until(until.into()).await;
    assert_eq!(capture.with(WARN).len(), 1, "{}", capture.dump());
    backend.release();
    assert_eq!(first.await.expect("first").status, 200);

    let started = Instant::now();
    let second = client.spawn_get("/second/b?token=t0k3n");
    backend.wait_for("second held", |s| s.holding == 1).await;
    let e = capture.wait_for(WARN, "path", "/second/b").await;
    let seen_held = started.elapsed();
    backend.release();
    assert_eq!(second.await.expect("second").status, 200);
    assert_eq!(e.field("method"), Some("GET"), "{e:?}");
    assert_eq!(e.level, tracing::Level::WARN, "{e:?}");
    let held_ms = e.number("held_ms");
    assert!(
        held_ms >= threshold.as_millis() as u64 && held_ms <= seen_held.as_millis() as u64,
        "held_ms {held_ms}, the test saw it held {seen_held:?}"
    );
    let dump = capture.dump();
    assert!(
        !dump.contains("s3cr3t") && !dump.contains("t0k3n"),
        "a query leaked into the log: {dump}"
    );
    assert_eq!(capture.with(WARN).len(), 2, "{dump}");
    let s = wait_pool(&pool, "both back", |s| s.idle == 1).await;
    assert_eq!((s.suspected_leaks, s.connections_created), (2, 1), "{s:?}");
    eprintln!("second lend held_ms {held_ms}, seen held {seen_held:?}");
}

/// Part 2. The scan task holds the endpoint weakly: once the pool is dropped no task is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leak_scan_task_ends_with_the_pool() {
    let backend = Backend::start().await;
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    let pool = TcpPool::builder(backend.addr_string())
        .leak_threshold(Some(Duration::from_millis(40)))
        .build()
        .expect("pool");
    let mut conn = bounded("checkout", pool.get()).await.expect("checkout");
    conn.write_all(b"ECHO x\n").await.expect("write");
    assert_eq!(read_line(&mut conn).await.expect("read"), "x");
    drop(conn);
    let alive = metrics.num_alive_tasks();
    assert!(
        alive > before,
        "the scan task runs: {alive} alive, {before} before"
    );
    drop(pool);
    backend.wait_for("closed", |s| s.open == 0).await;
    bounded("tasks back", async {
        for _ in 0..2000 {
            if metrics.num_alive_tasks() <= before {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("{} tasks alive, {before} before", metrics.num_alive_tasks());
    })
    .await;
}

/// Part 3. A connection in use at its lifetime deadline is closed when it comes back (counted
/// in closed_max_lifetime), not given back to the idle queue; and an idle connection of a
/// pool with no min_idle and nothing else to do is closed at its deadline, with no request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifetime_deadlines_are_honoured_in_use_and_in_a_long_idle_pool() {
    let lifetime = Duration::from_millis(300);
    let (backend, pool, client) = app::setup(
        |b| {
            b.max_size(2)
                .idle_timeout(None)
                .max_lifetime(Some(lifetime))
                .max_lifetime_jitter(0.0)
        },
        app::eager,
    )
    .await;
    let opened = Instant::now();
    let held = client.spawn_get("/hold/a");
    backend.wait_for("held", |s| s.holding == 1).await;
    // Past its deadline while held.
    tokio::time::sleep_until((opened + lifetime * 2).into()).await;
    backend.release();
    assert_eq!(held.await.expect("held").status, 200);
    backend.wait_for("closed on return", |s| s.open == 0).await;
    let s = wait_pool(&pool, "counted", |s| s.connections == 0).await;
    assert_eq!(s.closed_max_lifetime, 1, "{s:?}");
    assert_eq!(s.discards.total(), 0, "{s:?}");

    // An idle one, nobody asking: closed at its own deadline.
    let r = client.get("/echo/b").await;
    assert_eq!(r.status, 200);
    assert_eq!(backend.seen().accepts, 2);
    backend.wait_for("idle one closed", |s| s.open == 0).await;
    let s = wait_pool(&pool, "counted", |s| s.closed_max_lifetime == 2).await;
    assert_eq!((s.connections, s.idle), (0, 0), "{s:?}");
    assert_eq!(backend.seen().accepts, 2, "nothing reopened: {s:?}");
}

/// Parts 3-5. min_idle 3 of max_size 4, a short idle_timeout, lifetimes and probing every 5 ms,
/// while bursts of 4 requests (half discarding their connection) come in: the backend never
/// sees more than max_size connections of the endpoint, and the pool's counts stay consistent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweeps_probes_and_refills_racing_bursts_never_exceed_max_size() {
    const MAX: usize = 4;
    let backend = Backend::start().await;
    let proxy = Proxy::start(backend.addr).await.expect("start proxy");
    let pool = TcpPool::builder(proxy.addr().to_string())
        .max_size(MAX as u32)
        .min_idle(3)
        .idle_timeout(Some(Duration::from_millis(20)))
        .max_lifetime(Some(Duration::from_millis(150)))
        .max_lifetime_jitter(0.5)
        .idle_probe_interval(Some(Duration::from_millis(5)))
        .connect()
        .await
        .expect("backend is up");
    let client = HttpClient::new(serve(app::eager(&pool)).await);
    let mut worst = 0;
    let mut round = 0;
    // Until lifetimes and idle timeouts have closed some (bounded: 3000 rounds).
    while round < 3000 {
        let s = pool.state();
        if round >= 60 && s.closed_max_lifetime >= 8 && s.closed_idle_timeout >= 2 {
            break;
        }
        round += 1;
        if round % 50 == 0 {
            // A pause: the connection above min_idle closes for idleness meanwhile.
            let closed = pool.state().closed_idle_timeout;
            wait_pool(&pool, "one idled out", |s| {
                s.closed_idle_timeout > closed || s.connections <= 3
            })
            .await;
        }
        let replies = futures_util::future::join_all((0..MAX).map(|i| {
            // One request in 8 discards its connection: the others live long enough to reach
            // their lifetime or, above min_idle, their idle timeout.
            let path = if i == 0 && round % 2 == 0 {
                "/discard".to_owned()
            } else {
                format!("/echo/r{round}i{i}")
            };
            let client = client.clone();
            async move { client.get(&path).await }
        }))
        .await;
        for r in replies {
            assert_eq!(r.status.as_u16(), 200, "round {round}: {r:?}");
        }
        let s = pool.state();
        assert!(
            s.connections as usize <= MAX && s.idle + s.in_use == s.connections,
            "round {round}: {s:?}"
        );
        worst = worst.max(proxy.stats().max_open);
    }
    // A refill under way: the proxy counts its accept before bb8 counts the connection.
    let s = wait_pool(&pool, "min_idle again, every accept counted", |s| {
        s.idle >= 3 && s.connections_created as usize == proxy.stats().accepts
    })
    .await;
    let p = proxy.stats();
    eprintln!("proxy {p:?}\npool {s:?}");
    assert!(
        p.max_open <= MAX,
        "the backend saw {} at once: {p:?}",
        p.max_open
    );
    assert_eq!(s.discards.total(), s.discards.explicit, "{s:?}");
    assert_eq!(s.closed_broken, s.discards.total(), "{s:?}");
    assert_eq!(s.connections_created as usize, p.accepts, "{s:?} {p:?}");
    let closed =
        s.closed_broken + s.closed_idle_timeout + s.closed_max_lifetime + s.idle_probe_failures;
    assert_eq!(
        s.connections_created - closed,
        u64::from(s.connections),
        "opened less closed is not open: {s:?}"
    );
    // The proxy sees a close a moment after the pool counts it.
    let open = bounded("the proxy sees the closes", async {
        loop {
            let open = proxy.stats().open;
            if open == s.connections as usize {
                return open;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    assert_eq!(open, s.connections as usize, "{s:?} {p:?}");
    assert!(worst <= MAX);
    eprintln!("{round} rounds");
}

/// Parts 4-5. Backend down with min_idle 2 and idle probing on: the task does not spin. Over
/// a window of 1.5 s on a current-thread runtime, the runtime is busy for a small part of it
/// and the connect attempts follow the reconnect backoff (a handful, not one per poll).
#[tokio::test(flavor = "current_thread")]
async fn a_down_backend_with_min_idle_does_not_spin() {
    let pool = TcpPool::builder(testkit::nothing_listens())
        .min_idle(2)
        .idle_probe_interval(Some(Duration::from_millis(10)))
        .build()
        .expect("pool");
    let metrics = tokio::runtime::Handle::current().metrics();
    let busy_before = metrics.worker_total_busy_duration(0);
    let window = Duration::from_millis(1500);
    let start = Instant::now();
    tokio::time::sleep(window).await;
    let elapsed = start.elapsed();
    let busy = metrics.worker_total_busy_duration(0) - busy_before;
    let s = pool.state();
    eprintln!("busy {busy:?} of {elapsed:?}; {s:?}");
    assert!(busy < elapsed / 4, "busy {busy:?} of {elapsed:?}: {s:?}");
    assert!(
        s.connect_failures <= 40,
        "{} connect failures in {elapsed:?}: {s:?}",
        s.connect_failures
    );
    assert_eq!(s.connections, 0, "{s:?}");
}

/// Parts 4-5 with several endpoints. Two endpoints each with min_idle 2, one of them down
/// (nothing listens): the one up gets its min_idle and keeps it (no reconnect) while the task
/// of the one down retries without spinning; close() then ends every task.
#[tokio::test(flavor = "current_thread")]
async fn one_endpoint_down_among_several_with_min_idle() {
    let backend = Backend::start().await;
    let down = testkit::nothing_listens();
    let metrics = tokio::runtime::Handle::current().metrics();
    let tasks_before = metrics.num_alive_tasks();
    let pool = TcpPool::builder(backend.addr_string())
        .endpoint(down.clone())
        .max_size(3)
        .min_idle(2)
        .idle_timeout(Some(Duration::from_millis(30)))
        .idle_probe_interval(Some(Duration::from_millis(10)))
        .build()
        .expect("pool");
    backend
        .wait_for("min_idle of the one up", |s| s.open == 2)
        .await;
    let busy_before = metrics.worker_total_busy_duration(0);
    let window = Duration::from_millis(1200);
    let start = Instant::now();
    tokio::time::sleep(window).await;
    let elapsed = start.elapsed();
    let busy = metrics.worker_total_busy_duration(0) - busy_before;
    let s = pool.state();
    eprintln!("busy {busy:?} of {elapsed:?}; {s:?}");
    assert!(busy < elapsed / 4, "busy {busy:?} of {elapsed:?}: {s:?}");
    let seen = backend.seen();
    assert_eq!((seen.accepts, seen.open), (2, 2), "{s:?}");
    let up = s
        .endpoints
        .iter()
        .find(|e| e.addr == backend.addr_string())
        .expect("the endpoint up");
    assert_eq!((up.connections, up.idle), (2, 2), "{s:?}");
    assert!(s.connect_failures <= 40, "{s:?}");
    assert_eq!(s.closed_idle_timeout, 0, "{s:?}");
    bounded("close", pool.close()).await;
    backend.wait_for("closed", |s| s.open == 0).await;
    drop(pool);
    bounded("tasks back", async {
        for _ in 0..2000 {
            if metrics.num_alive_tasks() <= tasks_before {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!(
            "{} tasks alive, {tasks_before} before",
            metrics.num_alive_tasks()
        );
    })
    .await;
}

/// Part 5: "probing itself opens no connection and does not grow the pool". Three idle
/// connections, two clients making one request at a time each, a probe round every
/// millisecond, on a multi-thread runtime: a checkout that runs while a round has the idle
/// connections out of bb8 must not have bb8 open a new one.
///
/// Failed before the checkout gate (`lifecycle::gate`): 2 runs in 3, the pool grew to
/// max_size, 8 connections for 2 needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_probing_never_makes_a_checkout_open_a_connection() {
    // Two clients, each one request at a time: never more than 2 connections needed, 3 idle.
    const REQUESTS: usize = 3000;
    let (backend, pool, client) = app::setup(
        |b| {
            b.max_size(8)
                .min_idle(3)
                .idle_timeout(None)
                .max_lifetime(None)
                .idle_probe_interval(Some(Duration::from_millis(1)))
        },
        app::eager,
    )
    .await;
    backend.wait_for("min_idle opened", |s| s.open == 3).await;
    wait_pool(&pool, "min_idle in the pool", |s| s.idle == 3).await;
    let clients: Vec<_> = (0..2)
        .map(|c| {
            let client = client.clone();
            tokio::spawn(async move {
                for i in 0..REQUESTS {
                    let r = client.get(&format!("/echo/c{c}r{i}")).await;
                    assert_eq!(r.status, 200, "client {c} request {i}");
                }
            })
        })
        .collect();
    for c in clients {
        bounded("client", c).await.expect("client task");
    }
    let s = pool.state();
    let seen = backend.seen();
    eprintln!("{seen:?}\n{s:?}");
    assert_eq!(
        seen.accepts, 3,
        "the backend saw {} connections for 2 x {REQUESTS} sequential requests, {} probes: {s:?}",
        seen.accepts, s.idle_probes
    );
}

/// Parts 3-5: pool.state() read while probe rounds (every millisecond) and refills run, with no
/// request in flight, never shows a connection in use nor idle + in_use != connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_read_during_sweeps_shows_nothing_in_use() {
    let backend = Backend::start().await;
    let pool = TcpPool::builder(backend.addr_string())
        .max_size(4)
        .min_idle(3)
        .idle_timeout(None)
        .max_lifetime(None)
        .idle_probe_interval(Some(Duration::from_millis(1)))
        .connect()
        .await
        .expect("backend is up");
    backend.wait_for("min_idle opened", |s| s.open == 3).await;
    let probes = pool.state().idle_probes;
    let mut reads = 0u64;
    bounded("300 probe rounds", async {
        loop {
            let s = pool.state();
            reads += 1;
            assert!(
                s.in_use == 0 && s.idle == s.connections && s.connections == 3,
                "read {reads}: {s:?}"
            );
            assert_eq!(
                (s.endpoints[0].in_use, s.endpoints[0].idle, s.gets),
                (0, 3, 0),
                "read {reads}: {s:?}"
            );
            if s.idle_probes >= probes + 900 {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    eprintln!("{reads} reads");
    assert_eq!(backend.seen().accepts, 3);
}

/// The configured probe of the next test: a `HOLD`, answered only when the test releases it.
async fn hold_probe(stream: &mut axum_tcp_pool::BackendStream) -> std::io::Result<()> {
    stream.write_all(b"HOLD probe\n").await?;
    read_line(stream).await.map(drop)
}

/// Parts 2 and 5. A connection held by an idle probe (here for its whole `connect_timeout`,
/// longer than `leak_threshold`) is not in use: pool.state() shows it idle, leak detection
/// does not report it, and once the probe times out it is closed and min_idle refilled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_idle_probe_is_neither_in_use_nor_a_leak() {
    let backend = Backend::start().await;
    let pool = TcpPool::builder(backend.addr_string())
        .max_size(2)
        .min_idle(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_timeout(Duration::from_millis(400))
        .leak_threshold(Some(Duration::from_millis(40)))
        .idle_probe_interval(Some(Duration::from_millis(20)))
        .health_check(hold_probe)
        .connect()
        .await
        .expect("backend is up");
    backend
        .wait_for("probe under way", |s| s.holding == 1)
        .await;
    let s = pool.state();
    assert_eq!((s.connections, s.idle, s.in_use), (1, 1, 0), "{s:?}");
    let s = wait_pool(&pool, "probe timed out", |s| s.idle_probe_failures >= 1).await;
    assert_eq!(s.suspected_leaks, 0, "a probe reported as a leak: {s:?}");
    backend
        .wait_for("min_idle refilled", |s| s.accepts >= 2)
        .await;
    let s = wait_pool(&pool, "refilled", |s| s.connections == 1).await;
    assert_eq!((s.suspected_leaks, s.gets), (0, 0), "{s:?}");
    eprintln!("{s:?}");
}

/// Gate of [`gated_ping`]: the first probe call after `GATED` is set waits for `GATE`.
static GATED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static GATE: Notify = Notify::const_new();
static ENTERED: Notify = Notify::const_new();

/// `PING`, answered `PONG`; the first call after [`GATED`] is set waits for [`GATE`] first.
async fn gated_ping(stream: &mut axum_tcp_pool::BackendStream) -> std::io::Result<()> {
    if GATED.swap(false, std::sync::atomic::Ordering::SeqCst) {
        ENTERED.notify_one();
        GATE.notified().await;
    }
    stream.write_all(b"PING\n").await?;
    match read_line(stream).await?.as_str() {
        "PONG" => Ok(()),
        _ => Err(std::io::Error::other("not PONG")),
    }
}

/// Part 5, deterministic form of `idle_probing_never_makes_a_checkout_open_a_connection`: a
/// request arriving while the configured probe has the only idle connection out of bb8 (for
/// one round trip normally; held here by a gate) waits for that connection instead of having
/// bb8 open a second one. Failed before the checkout gate: 2 accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_during_a_probe_does_not_grow_the_pool() {
    let backend = Backend::start().await;
    GATED.store(true, std::sync::atomic::Ordering::SeqCst);
    let pool = TcpPool::builder(backend.addr_string())
        .max_size(2)
        .min_idle(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_timeout(Duration::from_secs(5))
        .idle_probe_interval(Some(Duration::from_millis(20)))
        .health_check(gated_ping)
        .connect()
        .await
        .expect("backend is up");
    let client = HttpClient::new(serve(app::eager(&pool)).await);
    bounded("probe under way", ENTERED.notified()).await;
    let request = client.spawn_get("/echo/x");
    // The checkout waits (for the probed connection), or bb8 opened a connection for it.
    wait_pool(&pool, "checkout waiting or served", |s| {
        s.gets_waited >= 1 || s.connections_created >= 2
    })
    .await;
    GATE.notify_one();
    assert_eq!(
        bounded("request", request).await.expect("request").status,
        200
    );
    let s = pool.state();
    let seen = backend.seen();
    assert_eq!(seen.accepts, 1, "{seen:?} {s:?}");
}

/// Parts 4-5 with set_endpoints: removing an endpoint that is down, whose task keeps retrying
/// min_idle, ends that task (only the backend's and the other endpoint's tasks are left), and the endpoint left keeps its min_idle
/// without reconnecting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_down_endpoint_ends_its_task() {
    let backend = Backend::start().await;
    let down = testkit::nothing_listens();
    let metrics = tokio::runtime::Handle::current().metrics();
    // The backend's accept loop.
    let at_start = metrics.num_alive_tasks();
    let pool = TcpPool::builder(backend.addr_string())
        .endpoint(down.clone())
        .max_size(2)
        .min_idle(2)
        .idle_probe_interval(Some(Duration::from_millis(10)))
        .build()
        .expect("pool");
    backend
        .wait_for("min_idle of the one up", |s| s.open == 2)
        .await;
    wait_pool(&pool, "a connect to the one down failed", |s| {
        s.connect_failures >= 1
    })
    .await;
    // Left once the removed endpoint's task (and bb8's connects to it) end: the backend's two
    // connection tasks and the task of the endpoint left.
    let alive = at_start + 3;
    pool.set_endpoints([backend.addr_string()])
        .expect("set_endpoints");
    bounded("the removed endpoint's task ends", async {
        for _ in 0..2000 {
            if metrics.num_alive_tasks() <= alive {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!(
            "{} tasks alive, {alive} expected",
            metrics.num_alive_tasks()
        );
    })
    .await;
    let failures = pool.state().connect_failures;
    let probes = pool.state().idle_probes;
    // 20 more probe rounds of the endpoint left (2 connections each).
    let s = wait_pool(&pool, "probe rounds", |s| s.idle_probes >= probes + 40).await;
    assert_eq!(
        s.connect_failures, failures,
        "the removed one still connects: {s:?}"
    );
    assert_eq!(s.endpoints.len(), 1, "{s:?}");
    let seen = backend.seen();
    assert_eq!((seen.accepts, seen.open), (2, 2), "{s:?}");
}
