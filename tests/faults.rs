//! Scenarios from a bad day at the backend, each through the fault-injecting proxy (or a
//! cold pool), each with its figures in its assertion messages. Assertions are on counters
//! (pool state, proxy and backend counts), never on timing.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum_tcp_pool::TcpPool;
use futures_util::future::join_all;
use testkit::proxy::{Fault, Proxy};
use testkit::{app, bounded, Backend, HttpClient};

/// A backend behind a proxy, a pool (configured by `f`) on the proxy, and the test app.
async fn proxied(
    f: impl FnOnce(axum_tcp_pool::TcpPoolBuilder) -> axum_tcp_pool::TcpPoolBuilder,
) -> (Backend, Proxy, TcpPool, HttpClient) {
    let backend = Backend::start().await;
    let proxy = Proxy::start(backend.addr).await.expect("start proxy");
    let pool = f(TcpPool::builder(proxy.addr().to_string()))
        .build()
        .expect("valid pool");
    let addr = testkit::serve(app::eager(&pool)).await;
    (backend, proxy, pool, HttpClient::new(addr))
}

/// Waits until the proxy's counters satisfy `cond`.
async fn wait_proxy(
    proxy: &Proxy,
    what: &str,
    cond: impl Fn(&testkit::proxy::ProxyStats) -> bool,
) -> testkit::proxy::ProxyStats {
    match proxy.wait_for(testkit::BOUND, cond).await {
        Some(s) => s,
        None => panic!(
            "timed out after {:?} waiting for: {what}; proxy: {:?}",
            testkit::BOUND,
            proxy.stats()
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_idle_close_fails_no_request() {
    // The backend closes every connection idle for 200 ms (like Redis `timeout`).
    let (_backend, proxy, pool, client) = proxied(|b| b.max_size(4).idle_timeout(None)).await;
    proxy.set_default(Fault::idle_close(Duration::from_millis(200)));
    let (rounds, burst) = (5, 8);
    let mut failed = Vec::new();
    for round in 0..rounds {
        let replies =
            join_all((0..burst).map(|i| client.spawn_get(&format!("/echo/r{round}i{i}")))).await;
        for (i, r) in replies.into_iter().enumerate() {
            let r = r.expect("request task");
            if (r.status.as_u16(), r.body.as_str()) != (200, format!("r{round}i{i}").as_str()) {
                failed.push(r);
            }
        }
        // Every connection the pool holds is now closed by the server while idle.
        wait_proxy(&proxy, "server closed the idle connections", |p| {
            p.open == 0
        })
        .await;
    }
    let (p, s) = (proxy.stats(), pool.state());
    let figures = format!(
        "{} requests, {} failed; the server closed {} idle connections, the pool replaced {} of them at checkout (health_check discards) and opened {} in all",
        rounds * burst,
        failed.len(),
        p.idle_closes,
        s.discards.health_check,
        s.connections_created
    );
    assert!(failed.is_empty(), "{figures}: {failed:?}");
    assert!(p.idle_closes >= rounds, "{figures}");
    // Every stale connection taken at checkout was replaced, not handed out.
    assert!(s.discards.health_check >= (rounds - 1) as u64, "{figures}");
    assert_eq!(s.discards.eof + s.discards.io_error, 0, "{figures}: {s:?}");
}

/// One request of the restart test: the phase it started and ended in, and how it ended.
#[derive(Debug, Clone)]
struct Record {
    seq: usize,
    /// The sequence number taken when it ended.
    done: usize,
    start: usize,
    end: usize,
    status: u16,
    tag: String,
    body: String,
}

/// Waits until 20 requests match `cond`.
async fn wait_records(records: &Mutex<Vec<Record>>, what: &str, cond: impl Fn(&Record) -> bool) {
    bounded(what, async {
        while records
            .lock()
            .expect("lock")
            .iter()
            .filter(|r| cond(r))
            .count()
            < 20
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
}

// The phases of the restart test.
const UP: usize = 0;
const GOING_DOWN: usize = 1;
const DOWN: usize = 2;
const COMING_UP: usize = 3;
const BACK: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_restart_under_load_fails_only_while_down() {
    let (_backend, proxy, pool, client) = proxied(|b| {
        b.max_size(4)
            .checkout_timeout(Duration::from_secs(3600))
            .idle_timeout(None)
    })
    .await;
    let phase = Arc::new(AtomicUsize::new(UP));
    let seq = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let records = Arc::new(Mutex::new(Vec::<Record>::new()));
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (client, phase, seq, stop, records) = (
                client.clone(),
                phase.clone(),
                seq.clone(),
                stop.clone(),
                records.clone(),
            );
            tokio::spawn(async move {
                // Bounded: the test stops the workers long before this.
                for i in 0..100_000 {
                    if stop.load(SeqCst) {
                        return;
                    }
                    let tag = format!("w{w}i{i}");
                    let n = seq.fetch_add(1, SeqCst);
                    let start = phase.load(SeqCst);
                    let r = client.get(&format!("/echo/{tag}")).await;
                    let end = phase.load(SeqCst);
                    let done = seq.fetch_add(1, SeqCst);
                    records.lock().expect("lock").push(Record {
                        seq: n,
                        done,
                        start,
                        end,
                        status: r.status.as_u16(),
                        tag,
                        body: r.body,
                    });
                }
            })
        })
        .collect();
    wait_records(&records, "20 requests before the restart", |r| {
        r.start == UP && r.end == UP
    })
    .await;
    // Transitions are phases of their own: a request that overlaps one may end either way.
    phase.store(GOING_DOWN, SeqCst);
    proxy.down().await;
    phase.store(DOWN, SeqCst);
    let failures_down = pool.state().connect_failures;
    wait_records(&records, "20 requests while down", |r| {
        r.start == DOWN && r.end == DOWN
    })
    .await;
    phase.store(COMING_UP, SeqCst);
    proxy.up().await.expect("restart the backend");
    let failures_up = pool.state().connect_failures;
    phase.store(BACK, SeqCst);
    // Successful ones: the first are 502 until the backoff step ends.
    wait_records(&records, "20 requests after the restart", |r| {
        r.start == BACK && r.end == BACK && r.status == 200
    })
    .await;
    stop.store(true, SeqCst);
    for w in workers {
        bounded("worker stops", w).await.expect("worker");
    }

    let records = records.lock().expect("lock").clone();
    let in_phase = |p: usize| records.iter().filter(move |r| r.start == p && r.end == p);
    let ok = |r: &&Record| r.status == 200 && r.body == r.tag;
    let bad_up: Vec<_> = in_phase(UP).filter(|r| !ok(r)).collect();
    let bad_down: Vec<_> = in_phase(DOWN).filter(|r| r.status != 502).collect();
    let overlapping = records.iter().filter(|r| r.start != r.end).count();
    // Back: the reconnect backoff answers 502 at once until its step ends and a probe
    // connects; once a request has succeeded, none that starts after it fails.
    let first_ok = in_phase(BACK).filter(ok).min_by_key(|r| r.done).cloned();
    let failed_back = in_phase(BACK).filter(|r| !ok(r)).count();
    let failures_end = pool.state().connect_failures;
    let figures = format!(
        "{} requests: {} while up before, {} while down ({} of them 502), {} after the restart ({failed_back} of them 502 before the first success), {} overlapping a transition; connect failures: {failures_down} when it was down, {failures_up} when it was back, {failures_end} at the end",
        records.len(),
        in_phase(UP).count(),
        in_phase(DOWN).count(),
        in_phase(DOWN).filter(|r| r.status == 502).count(),
        in_phase(BACK).count(),
        overlapping,
    );
    assert!(
        bad_up.is_empty(),
        "{figures}: failed while the backend was up: {bad_up:?}"
    );
    assert!(
        bad_down.is_empty(),
        "{figures}: while down, not 502: {bad_down:?}"
    );
    let first_ok = first_ok.expect("a request succeeded after the restart");
    let bad_back: Vec<_> = in_phase(BACK)
        .filter(|r| !ok(r) && (r.status != 502 || r.seq > first_ok.done))
        .collect();
    assert!(
        bad_back.is_empty(),
        "{figures}: after the restart, failed other than 502 or after a success ({first_ok:?}): {bad_back:?}"
    );
    // Within one backoff step: at most one probe failed after the restart (one under way).
    assert!(
        failures_end - failures_up <= 1,
        "{figures}: more than one step after the restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackholed_connections_are_discarded_and_the_pool_recovers() {
    let (_backend, proxy, pool, client) = proxied(|b| b.max_size(2).idle_timeout(None)).await;
    // Warm: two connections in the pool.
    let warm = join_all([client.spawn_get("/hold/a"), client.spawn_get("/hold/b")]);
    _backend
        .wait_for("two connections busy", |s| s.holding == 2)
        .await;
    _backend.release();
    for r in warm.await {
        assert_eq!(r.expect("warm").status, 200);
    }
    assert_eq!(pool.state().idle, 2);
    let accepts_before = proxy.stats().accepts;

    // The backend stops answering, on open and new connections alike. The handler's own
    // timeout (50 ms) answers 504 and drops the stuck connection.
    proxy.set_all(Fault::blackhole());
    let stuck = 4;
    for _ in 0..stuck {
        let r = client.get("/timeout").await;
        assert_eq!(r.status, 504, "{r:?}");
    }
    let s = testkit::wait_pool(&pool, "stuck connections closed", |s| s.connections == 0).await;
    let p = wait_proxy(&proxy, "stuck connections closed at the backend", |p| {
        p.open == 0
    })
    .await;
    let figures = format!(
        "{stuck} requests timed out on a blackholed backend: {} connections discarded as cancelled, {} idle, {} open at the backend, {} connects during the blackhole",
        s.discards.cancelled,
        s.idle,
        p.open,
        p.accepts - accepts_before
    );
    // Each stuck connection was closed, none returned: the next request needed a new one.
    assert_eq!(s.discards.cancelled, stuck as u64, "{figures}");
    assert_eq!((s.idle, s.in_use), (0, 0), "{figures}");
    assert_eq!(p.accepts - accepts_before, stuck - 2, "{figures}");

    // The backend recovers: so does the pool.
    proxy.set_all(Fault::none());
    let r = client.get("/echo/back").await;
    assert_eq!(
        (r.status.as_u16(), r.body.as_str()),
        (200, "back"),
        "{figures}"
    );
    assert_eq!(pool.state().idle, 1, "{figures}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thundering_herd_at_a_cold_pool_opens_at_most_max_size() {
    let (backend, pool, client) = testkit::setup(
        |b| b.max_size(4).checkout_timeout(Duration::from_secs(2)),
        app::eager,
    )
    .await;
    let herd = 1000;
    let replies = join_all((0..herd).map(|i| client.spawn_try_get(&format!("/echo/h{i}")))).await;
    let (mut ok, mut unavailable, mut other) = (0, 0, Vec::new());
    for (i, r) in replies.into_iter().enumerate() {
        match r.expect("request task") {
            Ok(r) if r.status == 200 && r.body == format!("h{i}") => ok += 1,
            Ok(r) if r.status == 503 => unavailable += 1,
            r => other.push(r),
        }
    }
    let seen = backend.seen();
    let figures = format!(
        "{herd} concurrent requests at a cold pool of 4: {ok} answered 200, {unavailable} 503, {} other; the backend saw {} connects, at most {} at once",
        other.len(),
        seen.accepts,
        seen.max_open
    );
    assert!(other.is_empty(), "{figures}: {other:?}");
    assert!(seen.accepts <= 4 && seen.max_open <= 4, "{figures}");
    assert!(ok > 0, "{figures}");
    assert_eq!(pool.state().in_use, 0, "{figures}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_requests_then_closes_every_socket() {
    let backend = Backend::start().await;
    let pool = TcpPool::builder(backend.addr_string())
        .max_size(4)
        .build()
        .expect("valid pool");
    let (addr, stop_tx, server) = testkit::serve_until_stopped(app::eager(&pool)).await;
    let client = HttpClient::new(addr);
    // Two extra requests complete first, so the pool also holds idle connections.
    for i in 0..2 {
        assert_eq!(client.get(&format!("/echo/pre{i}")).await.status, 200);
    }
    let in_flight: Vec<_> = (0..4)
        .map(|i| client.spawn_get(&format!("/hold/f{i}")))
        .collect();
    backend
        .wait_for("4 requests in flight", |s| s.holding == 4)
        .await;
    let open_during = backend.seen().open;

    let _ = stop_tx.send(());
    // The server has stopped accepting: new connections are refused.
    bounded("listener closed", async {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    backend.release();
    let mut finished = 0;
    for (i, h) in in_flight.into_iter().enumerate() {
        let r = bounded("in-flight request", h).await.expect("request task");
        assert_eq!(
            (r.status.as_u16(), r.body.as_str()),
            (200, format!("f{i}").as_str())
        );
        finished += 1;
    }
    bounded("server shut down", server)
        .await
        .expect("server task")
        .expect("serve");
    let s = pool.state();
    drop(pool);
    let after = backend
        .wait_for("every pooled socket closed", |b| b.open == 0)
        .await;
    let figures = format!(
        "{finished} of 4 in-flight requests finished with 200 after shutdown began; the pool held {} connections ({} idle) at shutdown, {open_during} open at the backend during, {} after",
        s.connections, s.idle, after.open
    );
    assert_eq!(finished, 4, "{figures}");
    assert_eq!((s.in_use, after.open), (0, 0), "{figures}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sliced_slow_replies_are_reassembled_and_a_reset_mid_reply_is_discarded() {
    let (_backend, proxy, pool, client) = proxied(|b| b.max_size(2).idle_timeout(None)).await;
    // Replies in 1-byte segments 1 ms apart, and late: the reader reassembles them.
    proxy.set_all(Fault {
        slice: Some(Duration::from_millis(1)),
        latency: Some(Duration::from_millis(5)),
        ..Fault::none()
    });
    let tag = "a-reply-long-enough-to-arrive-in-many-segments";
    for i in 0..5 {
        let r = client.get(&format!("/echo/{tag}{i}")).await;
        assert_eq!(
            (r.status.as_u16(), r.body.as_str()),
            (200, format!("{tag}{i}").as_str()),
            "sliced reply {i}"
        );
    }
    let clean = pool.state();
    assert_eq!(
        (clean.discards.total(), clean.connections_created),
        (0, 1),
        "sliced replies reuse one clean connection: {clean:?}"
    );

    // The backend resets the connection after 3 bytes of the next reply.
    proxy.set_all(Fault::reset_after(3));
    let r = client.get("/echo/cut-short").await;
    let s = testkit::wait_pool(&pool, "reset connection closed", |s| s.connections == 0).await;
    let p = proxy.stats();
    let figures = format!(
        "reset after 3 bytes: status {}, {} resets at the proxy, discards io_error={} eof={}, {} connections left",
        r.status, p.resets, s.discards.io_error, s.discards.eof, s.connections
    );
    assert_eq!(r.status, 502, "{figures}");
    assert_eq!(p.resets, 1, "{figures}");
    assert_eq!(s.discards.io_error + s.discards.eof, 1, "{figures}");
    proxy.set_all(Fault::none());
    let r = client.get("/echo/after").await;
    assert_eq!(
        (r.status.as_u16(), r.body.as_str()),
        (200, "after"),
        "{figures}"
    );
}
