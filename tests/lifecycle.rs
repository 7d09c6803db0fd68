//! The lifecycle of connections: lifetimes that don't expire together, `min_idle` without
//! churn, idle probing. Real sockets on loopback; every wait is on an event (the backend's
//! counts, the pool's state), bounded.

use std::io;
use std::time::{Duration, Instant};

use axum_tcp_pool::{BackendStream, TcpPool};
use testkit::{app, read_line, setup, wait_pool, Backend};
use tokio::io::AsyncWriteExt;

/// The configured probe of these tests: `PING`, answered `PONG` by the test backend.
async fn ping(stream: &mut BackendStream) -> io::Result<()> {
    stream.write_all(b"PING\n").await?;
    match read_line(stream).await?.as_str() {
        "PONG" => Ok(()),
        _ => Err(io::Error::new(io::ErrorKind::InvalidData, "not PONG")),
    }
}

/// Groups sorted instants into batches: an instant less than `gap` after the previous one is
/// in its batch.
fn batches(instants: &[Instant], gap: Duration) -> usize {
    1 + instants
        .windows(2)
        .filter(|w| w[1].duration_since(w[0]) >= gap)
        .count()
}

/// Part 3. Ten connections opened together with a 2 s lifetime and a jitter of 0.5 each get a
/// deadline between 1 s and 2 s: they are replaced at different instants. A shared reaper
/// batches them at its ticks: bb8's (a quarter of `max_lifetime`, 500 ms here) can make at
/// most three batches of closes in that 1 s window, without jitter one. Ten deadlines drawn
/// at random over 1 s make fewer than four batches (closes less than 3 ms apart, as the test
/// sees them) with a probability of about 1e-4 even if the test task is 20 ms late each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_opened_together_are_replaced_at_their_own_deadlines() {
    const N: usize = 10;
    let lifetime = Duration::from_secs(2);
    let backend = Backend::start().await;
    let before = Instant::now();
    let pool = TcpPool::builder(backend.addr_string())
        .max_size(N as u32)
        .min_idle(N as u32)
        .idle_timeout(None)
        .max_lifetime(Some(lifetime))
        .max_lifetime_jitter(0.5)
        .connect()
        .await
        .expect("backend is up");
    backend.wait_for("N accepted", |s| s.accepts == N).await;
    // The instant each close is seen (closes = accepts - open).
    let mut closes: Vec<Instant> = Vec::with_capacity(N);
    while closes.len() < N {
        let seen = closes.len();
        let s = backend
            .wait_for("the next close", |s| s.accepts - s.open > seen)
            .await;
        let now = Instant::now();
        let closed = (s.accepts - s.open).min(N);
        closes.extend(std::iter::repeat_n(now, closed - seen));
    }
    // No connection closed before its shortest possible lifetime.
    assert!(
        closes[0].duration_since(before) >= lifetime / 2,
        "first close after {:?}",
        closes[0].duration_since(before)
    );
    let spread = closes[N - 1].duration_since(closes[0]);
    let gaps: Vec<_> = closes
        .windows(2)
        .map(|w| w[1].duration_since(w[0]).as_millis())
        .collect();
    let n = batches(&closes, Duration::from_millis(3));
    assert!(
        n >= 4,
        "{n} batches of closes, gaps (ms) {gaps:?}: replaced together, not each at its deadline"
    );
    assert!(
        spread > lifetime / 8,
        "closes spread over {spread:?} only; gaps (ms) {gaps:?}"
    );
    // Each replaced: min_idle is refilled.
    let s = wait_pool(&pool, "all replaced", |s| {
        s.closed_max_lifetime >= N as u64 && s.idle == N as u32
    })
    .await;
    assert_eq!(s.discards.total(), 0, "{s:?}");
    backend
        .wait_for("replacements accepted", |s| s.accepts >= 2 * N)
        .await;
    eprintln!("closes spread over {spread:?}, {n} batches, gaps (ms) {gaps:?}");
}

/// Part 4. min_idle 2, max_size 4: a burst of four requests opens four connections; after
/// it, the two above min_idle close for idleness, and the two left stay open across many
/// idle_timeout periods (counted by idle probe rounds, one every 50 ms, each of which checks
/// both idle connections): the backend sees no new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_idle_connections_stay_open_across_idle_periods() {
    let idle_timeout = Duration::from_millis(200);
    let (backend, pool, client) = setup(
        |b| {
            b.max_size(4)
                .min_idle(2)
                .idle_timeout(Some(idle_timeout))
                .max_lifetime(None)
                .idle_probe_interval(Some(Duration::from_millis(50)))
        },
        app::eager,
    )
    .await;
    backend.wait_for("min_idle opened", |s| s.open == 2).await;
    wait_pool(&pool, "min_idle in the pool", |s| s.idle == 2).await;
    let held: Vec<_> = (0..4)
        .map(|i| client.spawn_get(&format!("/hold/h{i}")))
        .collect();
    backend
        .wait_for("4 requests held", |s| s.holding == 4)
        .await;
    backend.release();
    for h in held {
        assert_eq!(h.await.expect("request task").status, 200);
    }
    assert_eq!(backend.seen().accepts, 4, "{:?}", pool.state());
    let s = wait_pool(&pool, "back to min_idle", |s| s.connections == 2).await;
    assert_eq!(s.closed_idle_timeout, 2, "{s:?}");
    backend.wait_for("2 closed", |s| s.open == 2).await;
    // 20 rounds of 50 ms: five idle_timeout periods at least.
    let probes = s.idle_probes;
    let s = wait_pool(&pool, "20 probe rounds", |s| s.idle_probes >= probes + 40).await;
    assert_eq!(
        (s.connections, s.idle, s.closed_idle_timeout),
        (2, 2, 2),
        "{s:?}"
    );
    assert_eq!(s.idle_probe_failures, 0, "{s:?}");
    let seen = backend.seen();
    assert_eq!(
        (seen.accepts, seen.open),
        (4, 2),
        "min_idle connections were reopened: {seen:?}"
    );
    let r = client.get("/echo/after").await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "after"));
    assert_eq!(backend.seen().accepts, 4);
}

/// Part 4. With max_lifetime set, the min_idle connections are still replaced when it ends,
/// and never for idleness.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_idle_connections_are_still_replaced_at_their_lifetime() {
    let (backend, pool, client) = setup(
        |b| {
            b.max_size(4)
                .min_idle(2)
                .idle_timeout(Some(Duration::from_millis(50)))
                .max_lifetime(Some(Duration::from_millis(600)))
                .max_lifetime_jitter(0.0)
        },
        app::eager,
    )
    .await;
    backend
        .wait_for("min_idle opened", |s| s.accepts == 2)
        .await;
    let s = wait_pool(&pool, "replaced at their lifetime", |s| {
        s.closed_max_lifetime >= 2 && s.idle == 2
    })
    .await;
    assert_eq!(s.closed_idle_timeout, 0, "{s:?}");
    let seen = backend.wait_for("replacements", |s| s.accepts >= 4).await;
    assert!(seen.accepts >= 4, "{seen:?}");
    let r = client.get("/echo/after").await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "after"));
    assert_eq!(pool.state().closed_idle_timeout, 0);
}

/// Part 5. The backend closes its side of the idle connections (a restart, a NAT timeout):
/// idle probing finds them dead and replaces them before any request needs them; the first
/// request then succeeds at once, no checkout finding a dead connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_probing_replaces_connections_the_backend_closed() {
    let (backend, pool, client) = setup(
        |b| {
            b.max_size(4)
                .min_idle(2)
                .idle_probe_interval(Some(Duration::from_millis(200)))
        },
        app::eager,
    )
    .await;
    backend.wait_for("min_idle opened", |s| s.open == 2).await;
    wait_pool(&pool, "min_idle in the pool", |s| s.idle == 2).await;
    // Just after a round, so the next one is an interval away while the backend closes them.
    let probes = pool.state().idle_probes;
    wait_pool(&pool, "a probe round", |s| s.idle_probes > probes).await;
    backend.close_all().await;
    let s = wait_pool(&pool, "dead connections replaced", |s| {
        s.idle_probe_failures >= 2 && s.idle == 2
    })
    .await;
    assert_eq!(s.idle_probe_failures, 2, "{s:?}");
    backend
        .wait_for("replacements opened", |s| s.accepts == 4 && s.open == 2)
        .await;
    let r = client.get("/echo/after").await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "after"));
    let s = pool.state();
    assert_eq!(
        (
            s.discards.health_check,
            s.closed_invalid,
            s.connect_failures
        ),
        (0, 0, 0),
        "the request met a dead connection: {s:?}"
    );
    assert_eq!(s.discards.total(), 0, "{s:?}");
    assert_eq!(backend.seen().accepts, 4);
}

/// Part 5. With a healthy backend and a configured probe, probe rounds open no connection;
/// a connection in use is never probed: the backend answers a held request only if nothing
/// else arrives on its connection, so a probe written to it would fail the request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_probing_opens_nothing_and_never_touches_a_connection_in_use() {
    let (backend, pool, client) = setup(
        |b| {
            b.max_size(3)
                .min_idle(2)
                .health_check(ping)
                .idle_probe_interval(Some(Duration::from_millis(50)))
        },
        app::eager,
    )
    .await;
    backend.wait_for("min_idle opened", |s| s.open == 2).await;
    wait_pool(&pool, "min_idle in the pool", |s| s.idle == 2).await;
    let held = client.spawn_get("/hold/kept");
    backend.wait_for("a held request", |s| s.holding == 1).await;
    let (probes, lines) = (pool.state().idle_probes, backend.seen().lines);
    // Ten rounds, each probing the one idle connection.
    let s = wait_pool(&pool, "10 probe rounds", |s| s.idle_probes >= probes + 10).await;
    assert_eq!(s.idle_probe_failures, 0, "{s:?}");
    assert_eq!(backend.seen().holding, 1, "the held connection was probed");
    backend.release();
    let r = held.await.expect("request task");
    assert_eq!(
        (r.status.as_u16(), r.body.as_str()),
        (200, "kept"),
        "the held connection was probed"
    );
    let seen = backend.seen();
    assert!(
        seen.lines >= lines + 10,
        "the probes did not reach the backend: {seen:?}"
    );
    // No request in flight: many more rounds, still no new connection.
    let probes = pool.state().idle_probes;
    let s = wait_pool(&pool, "10 more rounds", |s| s.idle_probes >= probes + 20).await;
    assert_eq!((s.connections, s.idle_probe_failures), (2, 0), "{s:?}");
    assert_eq!(backend.seen().accepts, 2);
}

/// Part 5. Probing off by default; a zero interval and a jitter out of range are
/// configuration errors.
#[tokio::test(flavor = "current_thread")]
async fn idle_probe_interval_and_jitter_are_validated() {
    let b = || TcpPool::builder("127.0.0.1:1");
    for (builder, needle) in [
        (
            b().idle_probe_interval(Some(Duration::ZERO)),
            "idle_probe_interval",
        ),
        (b().max_lifetime_jitter(0.75), "max_lifetime_jitter"),
        (b().max_lifetime_jitter(-0.01), "max_lifetime_jitter"),
        (b().max_lifetime_jitter(f64::NAN), "max_lifetime_jitter"),
    ] {
        let err = builder.build().expect_err("invalid");
        assert!(
            matches!(err, axum_tcp_pool::TcpPoolError::Config(_)),
            "{err:?}"
        );
        assert!(err.to_string().contains(needle), "{err}");
    }
    let pool = b()
        .max_lifetime_jitter(0.5)
        .idle_probe_interval(Some(Duration::from_secs(1)))
        .build()
        .expect("valid");
    assert_eq!(pool.state().idle_probes, 0);
}

/// The lifecycle counters are exported like the others.
#[cfg(feature = "metrics")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_counters_are_exported() {
    use axum_tcp_pool::metrics as names;
    let backend = Backend::start().await;
    let pool = TcpPool::builder(backend.addr_string())
        .name("life")
        .min_idle(1)
        .idle_probe_interval(Some(Duration::from_millis(20)))
        .build()
        .expect("pool");
    let s = wait_pool(&pool, "two probes", |s| s.idle_probes >= 2).await;
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || pool.record_metrics());
    let text = handle.render();
    let value = |name: &str| -> u64 {
        let prefix = format!("{name}{{pool=\"life\"}} ");
        let line = text
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("{name} not exported: {text}"));
        line[prefix.len()..].parse().expect("a count")
    };
    assert!(value(names::IDLE_PROBES) >= s.idle_probes);
    assert_eq!(value(names::IDLE_PROBE_FAILURES), 0);
    assert_eq!(value(names::CLOSED_IDLE_TIMEOUT), 0);
    assert_eq!(value(names::CLOSED_MAX_LIFETIME), 0);
}

/// The local port of a checked-out connection: which connection it is.
fn port(conn: &axum_tcp_pool::TcpConnection) -> u16 {
    conn.get_ref()
        .tcp()
        .expect("a TCP connection")
        .local_addr()
        .expect("local address")
        .port()
}

/// Sweeps give the connections back in bb8's order (the most recently returned is handed out
/// first), also after a probe took one out alone; and they are not checkouts: `gets` and each
/// endpoint's `checkouts` count only the real ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_rounds_keep_the_order_and_are_not_checkouts() {
    let backend = Backend::start().await;
    let pool = TcpPool::builder(backend.addr_string())
        .max_size(3)
        .health_check(ping)
        .idle_probe_interval(Some(Duration::from_millis(100)))
        .build()
        .expect("pool");
    let (a, b, c) = tokio::join!(pool.get(), pool.get(), pool.get());
    let conns = [a.expect("a"), b.expect("b"), c.expect("c")];
    let ports: Vec<u16> = conns.iter().map(port).collect();
    // Returned first to last: the last is at the front of the queue.
    for conn in conns {
        drop(conn);
    }
    // Right after the end of a round: the next is an interval away.
    let probes = pool.state().idle_probes;
    let s = wait_pool(&pool, "3 probe rounds", |s| s.idle_probes >= probes + 9).await;
    assert_eq!((s.gets, s.endpoints[0].checkouts), (3, 3), "{s:?}");
    assert_eq!(s.idle_probe_failures, 0, "{s:?}");
    let first = pool.get().await.expect("first");
    let second = pool.get().await.expect("second");
    let third = pool.get().await.expect("third");
    assert_eq!(
        [port(&first), port(&second), port(&third)],
        [ports[2], ports[1], ports[0]],
        "probe rounds changed the order of the idle connections"
    );
    let s = pool.state();
    assert_eq!((s.gets, s.endpoints[0].checkouts), (6, 6), "{s:?}");
    assert_eq!(backend.seen().accepts, 3);
}

/// After `close()`, the lifecycle task opens nothing: no refill of `min_idle`, no
/// replacement at the end of a lifetime, no probe. Time is counted by another pool's probe
/// rounds (on its own backend).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_pool_refills_nothing() {
    let backend = Backend::start().await;
    let pool = TcpPool::builder(backend.addr_string())
        .min_idle(2)
        .max_lifetime(Some(Duration::from_millis(200)))
        .idle_probe_interval(Some(Duration::from_millis(20)))
        .build()
        .expect("pool");
    backend.wait_for("min_idle opened", |s| s.open == 2).await;
    wait_pool(&pool, "min_idle in the pool", |s| s.idle == 2).await;
    testkit::bounded("close", pool.close()).await;
    backend.wait_for("closed", |s| s.open == 0).await;
    let accepts = backend.seen().accepts;
    let probes = pool.state().idle_probes;

    let clock_backend = Backend::start().await;
    let clock = TcpPool::builder(clock_backend.addr_string())
        .min_idle(1)
        .idle_probe_interval(Some(Duration::from_millis(20)))
        .build()
        .expect("clock pool");
    // 30 rounds of 20 ms: three lifetimes of the closed pool's connections.
    wait_pool(&clock, "30 probe rounds", |s| s.idle_probes >= 30).await;
    let seen = backend.seen();
    assert_eq!((seen.accepts, seen.open), (accepts, 0), "{seen:?}");
    let s = pool.state();
    assert_eq!((s.connections, s.idle_probes), (0, probes), "{s:?}");
}

/// Part 5. Idle connections that went silent (a firewall dropping their packets: the proxy
/// swallows what they send and never answers) fail the configured probe by its time limit,
/// `connect_timeout`, and are replaced before a request needs them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_probing_replaces_connections_that_went_silent() {
    use testkit::proxy::{Fault, Proxy};
    let backend = Backend::start().await;
    let proxy = Proxy::start(backend.addr).await.expect("start proxy");
    let pool = TcpPool::builder(proxy.addr().to_string())
        .max_size(4)
        .min_idle(2)
        .connect_timeout(Duration::from_millis(300))
        .health_check(ping)
        .idle_probe_interval(Some(Duration::from_millis(100)))
        .connect()
        .await
        .expect("backend is up");
    let client = testkit::HttpClient::new(testkit::serve(app::eager(&pool)).await);
    let opened = proxy
        .wait_for(testkit::BOUND, |s| s.open == 2)
        .await
        .expect("2 open");
    assert_eq!(opened.accepts, 2);
    for conn in proxy.connections() {
        conn.set(Fault::blackhole());
    }
    let s = wait_pool(&pool, "silent connections replaced", |s| {
        s.idle_probe_failures >= 2 && s.idle == 2
    })
    .await;
    assert_eq!(s.idle_probe_failures, 2, "{s:?}");
    let replaced = proxy
        .wait_for(testkit::BOUND, |s| s.accepts == 4)
        .await
        .expect("2 replacements");
    assert_eq!(replaced.accepts, 4);
    let r = client.get("/echo/after").await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "after"));
    let s = pool.state();
    assert_eq!(
        (s.discards.health_check, s.closed_invalid),
        (0, 0),
        "the request met a silent connection: {s:?}"
    );
}

/// Part 4. A backend down when the pool starts: the task keeps trying (a delay doubling from
/// 50 ms) and opens `min_idle` once it is back, with no request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_idle_is_opened_once_a_backend_down_at_start_is_back() {
    let backend = Backend::start().await;
    backend.stop().await;
    let pool = TcpPool::builder(backend.addr_string())
        .min_idle(2)
        .build()
        .expect("pool");
    wait_pool(&pool, "a failed connect", |s| s.connect_failures >= 1).await;
    backend.restart().await;
    backend.wait_for("min_idle opened", |s| s.open == 2).await;
    let s = wait_pool(&pool, "2 idle", |s| s.idle == 2).await;
    assert_eq!(s.connections, 2, "{s:?}");
}

/// Part 4. Refilling `min_idle` while checkouts open connections of their own never makes
/// the backend see more than `max_size` connections from the pool: the refill goes through
/// bb8's own count. (The task connecting by itself and handing the connection to bb8 did:
/// bb8 refused it, but only after the backend had seen it.) Counted by the proxy, which
/// retires a connection the pool closed before it counts the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refilling_min_idle_never_exceeds_max_size() {
    use testkit::proxy::Proxy;
    let backend = Backend::start().await;
    let proxy = Proxy::start(backend.addr).await.expect("start proxy");
    let pool = TcpPool::builder(proxy.addr().to_string())
        .max_size(2)
        .min_idle(2)
        .connect()
        .await
        .expect("backend is up");
    let client = testkit::HttpClient::new(testkit::serve(app::eager(&pool)).await);
    for round in 0..30 {
        // Both connections discarded by their handlers: each close makes the task refill
        // while the next requests' checkouts connect.
        let (a, b) = tokio::join!(client.get("/discard"), client.get("/discard"));
        assert_eq!(
            (a.status.as_u16(), b.status.as_u16()),
            (200, 200),
            "round {round}"
        );
    }
    let s = wait_pool(&pool, "min_idle again", |s| s.idle == 2).await;
    assert_eq!(s.discards.explicit, 60, "{s:?}");
    let p = proxy.stats();
    assert!(
        p.max_open <= 2,
        "the backend saw {} at once: {p:?}",
        p.max_open
    );
}
