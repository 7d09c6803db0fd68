//! The edges of the reconnect backoff and of `TcpPool::close`: several endpoints down, a
//! blackholed backend, a close during a `min_idle` refill, a health-check probe, DNS
//! re-resolution or `set_endpoints`, a close from a handler or not awaited. The `#[ignore]`d
//! tests are known limits the README lists: `cargo test --test backoff_close_edges --
//! --ignored` shows them failing.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum_tcp_pool::{BackendStream, TcpPool, TcpPoolError};
use http::StatusCode;
use testkit::backoff::{steps_within, MAX, MIN};
use testkit::replicas::Replicas;
use testkit::{app, bounded, serve, wait_pool, Backend, HttpClient};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// `n` requests at once to `/echo/{i}`: every reply's status and body, and how long it took.
async fn storm(client: &HttpClient, n: usize) -> (Vec<(StatusCode, String)>, Duration) {
    let (replies, took) = client.storm((0..n).map(|i| format!("/echo/{i}"))).await;
    (
        replies.into_iter().map(|r| (r.status, r.body)).collect(),
        took,
    )
}

/// A listener that accepts every connection and closes it at once (a proxy whose upstream
/// is gone, a backend at its connection limit): the number of connections it accepted.
struct AcceptClose {
    addr: std::net::SocketAddr,
    accepts: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl AcceptClose {
    async fn start() -> AcceptClose {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepts = Arc::new(AtomicUsize::new(0));
        let counted = accepts.clone();
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                counted.fetch_add(1, SeqCst);
                drop(s);
            }
        });
        AcceptClose {
            addr,
            accepts,
            task,
        }
    }
}

impl Drop for AcceptClose {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// Part 1, storm with several endpoints: every endpoint down, 1,000 requests failing over
// between them. Each endpoint has its own backoff: at most a handful of attempts per
// endpoint per step, every request 502, nothing internal in the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_against_several_down_endpoints_makes_a_handful_of_attempts_each() {
    let replicas = Replicas::start(3).await;
    let pool = replicas.builder().build().expect("pool");
    let client = HttpClient::new(serve(app::eager(&pool)).await);
    for i in 0..3 {
        replicas.backend(i).stop().await;
    }
    let (replies, elapsed) = storm(&client, 1000).await;
    let s = pool.state();
    let steps = steps_within(elapsed, MIN, MAX);
    println!(
        "figures: 3 endpoints down, 1000 requests in {elapsed:?}: {} attempts, {} backed off, at most {steps} steps",
        s.connect_failures, s.connects_backed_off
    );
    for (status, body) in &replies {
        assert_eq!(*status, StatusCode::BAD_GATEWAY, "{body}");
        for i in 0..3 {
            app::assert_no_leak(body, replicas.backend(i));
        }
    }
    assert!(s.connect_failures <= 3 * (10 + steps), "{s:?}");
}

// Part 1, a backend that accepts and closes at once (a proxy whose upstream is gone, a
// backend at its connection limit): every new connection fails its health check or its
// first exchange before its first byte. That is a failed connect for the backoff, and a
// probe that connects leaves the endpoint unproven (the delay goes on doubling) until a
// connection serves a request. FAILED before: 475 SYNs for 1,000 requests in 2.2 s, 0
// backed off (a bound of 176): each TCP connect succeeding reset the backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_against_a_backend_that_accepts_and_closes_is_backed_off() {
    let hole = AcceptClose::start().await;
    let pool = TcpPool::builder(hole.addr.to_string())
        .build()
        .expect("pool");
    let client = HttpClient::new(serve(app::eager(&pool)).await);
    let (replies, elapsed) = storm(&client, 1000).await;
    let s = pool.state();
    let accepts = hole.accepts.load(SeqCst) as u64;
    let steps = steps_within(elapsed, MIN, MAX);
    println!(
        "figures: accept-and-close backend, 1000 requests in {elapsed:?}: {accepts} accepted, {} connect failures, {} backed off, at most {steps} steps",
        s.connect_failures, s.connects_backed_off
    );
    for (status, body) in &replies {
        assert!(status.is_server_error(), "{status} {body}");
    }
    // max_size + 1 brand-new connections failing in a row are a failed connect, then one
    // probe per step (each probe may be max_size + 1 connections at most).
    let bound = 2 * 11 * (1 + steps);
    assert!(
        s.connects_backed_off >= 1,
        "the backoff never engaged: {s:?}"
    );
    assert!(accepts <= bound, "{accepts} SYNs > {bound}: {s:?}");
}

// Part 6: a connect that ends just after close() must not be left open: a min_idle refill
// under way when the pool closes, the close future dropped without being awaited ("it need
// not be awaited for the close to happen"). Repeated to hit the window. FAILED on main
// about 1 run in 6 with 20 rounds (a connect that passed its removed check just before the
// close reached the idle queue after the close had closed the idle ones; only the close
// future, if polled, looked again), every run with 200 rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_min_idle_refill_under_way_at_close_is_closed_without_awaiting_close() {
    let backend = Backend::start().await;
    for round in 0..200 {
        let pool = TcpPool::builder(backend.addr_string())
            .max_size(4)
            .min_idle(4)
            .build()
            .expect("pool");
        if round % 2 == 1 {
            backend.wait_for("one open", |s| s.open >= 1).await;
        }
        drop(pool.close());
        backend
            .wait_for(&format!("round {round}: every socket closed"), |s| {
                s.open == 0
            })
            .await;
        // The pool's count trails the socket close by a few instructions.
        wait_pool(&pool, &format!("round {round}: none open"), |s| {
            (s.connections, s.idle) == (0, 0)
        })
        .await;
    }
}

// Part 6: a new connection whose health-check probe is under way when close() is called:
// its checkout gets Closed, it is closed, and close resolves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_under_its_health_check_probe_at_close_is_closed() {
    async fn hold_probe(stream: &mut BackendStream) -> std::io::Result<()> {
        stream.write_all(b"HOLD probe\n").await?;
        let mut line = String::new();
        let mut r = BufReader::new(stream);
        r.read_line(&mut line).await?;
        Ok(())
    }
    let backend = Backend::start().await;
    let pool = TcpPool::builder(backend.addr_string())
        .max_size(1)
        .health_check(hold_probe)
        .checkout_timeout(Duration::from_secs(3600))
        .build()
        .expect("pool");
    let got = tokio::spawn({
        let pool = pool.clone();
        async move { pool.get().await.map(drop) }
    });
    backend.wait_for("probe held", |s| s.holding == 1).await;
    let closing = tokio::spawn(pool.close());
    let got = bounded("the checkout", got).await.expect("task");
    assert!(matches!(got, Err(TcpPoolError::Closed)), "{got:?}");
    backend.release();
    bounded("close", closing).await.expect("close task");
    backend.wait_for("closed", |s| s.open == 0).await;
    let s = pool.state();
    assert_eq!((s.connections, s.idle, s.in_use), (0, 0, 0), "{s:?}");
}

// Part 6: close() with resolve_endpoints, then every handle dropped: no task is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_with_resolve_endpoints_leaves_no_task_behind() {
    let backend = Backend::start().await;
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    let pool = TcpPool::builder(format!("localhost:{}", backend.addr.port()))
        .resolve_endpoints(Duration::from_secs(3600))
        .min_idle(1)
        // bb8's reaper ends at its first tick after the pool is gone: a short one (50 ms).
        .idle_timeout(Some(Duration::from_millis(200)))
        .build()
        .expect("pool");
    let mut conn = bounded("first checkout", pool.get())
        .await
        .expect("checkout");
    conn.write_all(b"ECHO x\n").await.expect("write");
    let closing = tokio::spawn(pool.close());
    assert!(matches!(pool.get().await, Err(TcpPoolError::Closed)));
    drop(pool);
    let mut line = String::new();
    BufReader::new(&mut conn)
        .read_line(&mut line)
        .await
        .expect("read");
    assert_eq!(line, "x\n");
    drop(conn);
    bounded("close", closing).await.expect("close task");
    backend.wait_for("closed", |s| s.open == 0).await;
    bounded("tasks back", async {
        for _ in 0..2000 {
            if metrics.num_alive_tasks() <= before {
                return;
            }
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("{} tasks alive, {before} before", metrics.num_alive_tasks());
    })
    .await;
}

// Part 6: close() racing set_endpoints from another thread: whichever wins, nothing stays
// open once close resolved, and no checkout succeeds after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_racing_set_endpoints_leaves_nothing_open() {
    let replicas = Replicas::start(3).await;
    let addrs = replicas.addrs();
    for round in 0..10 {
        let pool = replicas
            .builder()
            .min_idle(1)
            .max_size(2)
            .build()
            .expect("pool");
        let (go, mut ready) = watch::channel(false);
        let changer = tokio::spawn({
            let pool = pool.clone();
            let addrs = addrs.clone();
            async move {
                let _ = ready.wait_for(|g| *g).await;
                for i in 0..50usize {
                    let set = [addrs[i % 3].clone(), addrs[(i + 1) % 3].clone()];
                    if let Err(e) = pool.set_endpoints(set) {
                        assert!(matches!(e, TcpPoolError::Closed), "{e:?}");
                        return;
                    }
                    tokio::task::yield_now().await;
                }
            }
        });
        go.send_replace(true);
        tokio::task::yield_now().await;
        bounded("close", pool.close()).await;
        bounded("changer", changer).await.expect("changer");
        assert!(matches!(pool.get().await, Err(TcpPoolError::Closed)));
        for i in 0..3 {
            replicas
                .backend(i)
                .wait_for(&format!("round {round}: backend {i} closed"), |s| {
                    s.open == 0
                })
                .await;
        }
        let s = pool.state();
        assert_eq!(s.connections, 0, "round {round}: {s:?}");
    }
}

// Part 6: close() from a handler (the shutdown route of an admin API), not awaited there:
// the handler's own connection goes back and is closed; later requests get 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_from_a_handler_closes_its_own_connection_when_it_comes_back() {
    use axum::{extract::State, routing::get, Router};
    use axum_tcp_pool::{TcpConnection, TcpPoolLayer};
    async fn shutdown(State(pool): State<TcpPool>, mut conn: TcpConnection) -> &'static str {
        let closing = pool.close();
        tokio::spawn(closing);
        let _ = conn.write_all(b"ECHO bye\n").await;
        let mut line = String::new();
        let _ = BufReader::new(&mut conn).read_line(&mut line).await;
        "closing"
    }
    let backend = Backend::start().await;
    let pool = TcpPool::builder(backend.addr_string())
        .build()
        .expect("pool");
    let app = Router::new()
        .route("/shutdown", get(shutdown))
        .with_state(pool.clone())
        .merge(app::routes())
        .layer(TcpPoolLayer::new(pool.clone()));
    let client = HttpClient::new(serve(app).await);
    let r = client.get("/shutdown").await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "closing"));
    backend.wait_for("closed", |s| s.open == 0).await;
    let r = client.get("/echo/late").await;
    assert_eq!(r.status, 503, "{r:?}");
    bounded("close", pool.close()).await;
    wait_pool(&pool, "nothing open", |s| s.connections == 0).await;
    assert_eq!(backend.seen().accepts, 1);
}

// Part 1: a storm through the lazy layer against a blackholed backend (SYNs dropped, every
// attempt hangs for connect_timeout). Every request answers 502 (not 503: no checkout
// timeout), the pool makes a handful of attempts, and no request waits for two attempts (one
// that did took at least 2 × connect_timeout: each hangs exactly that long).
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_against_a_blackholed_backend_waits_for_one_attempt_per_request() {
    let connect_timeout = Duration::from_secs(3);
    let hole = testkit::blackhole::Hole::new().await;
    let pool = TcpPool::builder(hole.addr.to_string())
        .connect_timeout(connect_timeout)
        .checkout_timeout(Duration::from_secs(3600))
        .build()
        .expect("pool");
    let client = HttpClient::new(serve(app::lazy(&pool)).await);
    let start = Instant::now();
    let tasks: Vec<_> = (0..300)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                let r = client.try_get(&format!("/echo/{i}")).await;
                (r, t.elapsed())
            })
        })
        .collect();
    let mut longest = Duration::ZERO;
    for task in tasks {
        let (reply, took) = bounded("a request", task).await.expect("task");
        let reply = reply.expect("http");
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{reply:?}");
        longest = longest.max(took);
    }
    let elapsed = start.elapsed();
    let s = pool.state();
    let steps = steps_within(elapsed, MIN, MAX);
    println!(
        "figures: blackholed, 300 requests in {elapsed:?}: longest {longest:?}, {} attempts, {} backed off, at most {steps} steps",
        s.connect_failures, s.connects_backed_off
    );
    assert!(s.connect_failures <= 10 + steps, "{s:?}");
    assert!(
        longest < 2 * connect_timeout,
        "a request waited for two attempts: {longest:?}"
    );
}

// Part 1, several endpoints: both blackholed, one checkout. With failover it waits for A's
// attempt, then for B's: two connect attempts (2 × connect_timeout), though "with backoff in
// place a checkout should never wait for more than one connect attempt". Counted by the
// pool: the attempts made while this one checkout ran. FAILS on main: 2 attempts (one per
// endpoint); N blackholed endpoints make a checkout wait N × connect_timeout (up to the
// checkout_timeout). Failover by design (issue 12) or against part 1: the lead decides.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "known limit (README Limits): failover waits for one connect attempt per endpoint it tries (2 for 2 blackholed endpoints), within checkout_timeout"]
async fn a_checkout_over_two_blackholed_endpoints_waits_for_one_attempt() {
    let (a, b) = (
        testkit::blackhole::Hole::new().await,
        testkit::blackhole::Hole::new().await,
    );
    let pool = TcpPool::builder(a.addr.to_string())
        .endpoint(b.addr.to_string())
        .max_size(1)
        .connect_timeout(Duration::from_secs(1))
        .checkout_timeout(Duration::from_secs(3600))
        .build()
        .expect("pool");
    let got = bounded("checkout", pool.get()).await;
    assert!(
        matches!(got, Err(TcpPoolError::BackendUnreachable(_))),
        "{got:?}"
    );
    let s = pool.state();
    println!(
        "figures: two blackholed endpoints, one checkout: {} attempts made, {} backed off",
        s.connect_failures, s.connects_backed_off
    );
    assert_eq!(
        s.connect_failures, 1,
        "the checkout waited for more than one attempt: {s:?}"
    );
}

// Part 6: close() not awaited, then the last handle dropped while a connection is in use:
// the connection closes when it comes back, and nothing stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_not_awaited_then_the_last_handle_dropped_closes_the_connection_in_use() {
    let backend = Backend::start().await;
    let pool = TcpPool::builder(backend.addr_string())
        .min_idle(2)
        .build()
        .expect("pool");
    let mut conn = bounded("checkout", pool.get()).await.expect("checkout");
    backend.wait_for("min_idle open", |s| s.open >= 2).await;
    drop(pool.close());
    drop(pool);
    backend
        .wait_for("the idle ones closed, the one in use open", |s| s.open == 1)
        .await;
    conn.write_all(b"ECHO y\n").await.expect("write");
    let mut line = String::new();
    BufReader::new(&mut conn)
        .read_line(&mut line)
        .await
        .expect("read");
    assert_eq!(line, "y\n");
    drop(conn);
    backend
        .wait_for("every socket closed", |s| s.open == 0)
        .await;
}

// The same window for set_endpoints (issue 12's removal, which close() reuses): an endpoint
// removed while its min_idle refill connects; nothing calls state(). Every socket of the
// removed endpoint must close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_min_idle_refill_under_way_when_its_endpoint_is_removed_is_closed() {
    let (a, b) = (Backend::start().await, Backend::start().await);
    for round in 0..200 {
        let pool = TcpPool::builder(a.addr_string())
            .max_size(4)
            .min_idle(4)
            .build()
            .expect("pool");
        pool.set_endpoints([b.addr_string()]).expect("set");
        a.wait_for(&format!("round {round}: every socket of a closed"), |s| {
            s.open == 0
        })
        .await;
        drop(pool);
        b.wait_for("b closed", |s| s.open == 0).await;
    }
}
