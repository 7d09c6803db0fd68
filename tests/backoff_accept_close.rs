//! Review of the accept-then-close backoff (a new connection that never served a request and
//! fails is a failed connect when another failed within 1 s): false positives on a healthy
//! backend, restarts, and failover.

use std::time::Duration;

use axum_tcp_pool::TcpPool;
use http::StatusCode;
use testkit::{app, serve, wait_pool, Backend, HttpClient};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// A long first step, so that a refused connect is seen however slow the machine is.
const LONG: Duration = Duration::from_secs(30);

/// "Backend up: every request is served" (the backoff only for a backend that is down or
/// closes every connection). A healthy backend that closes a connection in reply to one
/// bad request (a poison request: a protocol error, a crash in one session's handler) and
/// serves every other: two such requests within 1 s, each on a new connection, must not back
/// the endpoint off: the next good request must succeed. Failed when an exchange closed
/// before its first byte counted for the backoff (`502`, 1 connect refused): only the health
/// check, before any request, does now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_poison_requests_do_not_back_off_a_healthy_backend() {
    let backend = Backend::start().await;
    let pool = TcpPool::builder(backend.addr_string())
        .reconnect_backoff(LONG, LONG)
        .build()
        .expect("pool");
    let client = HttpClient::new(serve(app::eager(&pool)).await);
    // Each poison request gets a new connection (the backend closes the one it was sent on),
    // which never served a request.
    for i in 0..2 {
        let r = client.get("/close").await;
        assert!(r.status.is_server_error(), "poison {i}: {r:?}");
    }
    let r = client.get("/echo/after").await;
    let s = pool.state();
    println!(
        "figures: after 2 poison requests: {} {:?}, {} accepts, {} backed off",
        r.status,
        r.body,
        backend.seen().accepts,
        s.connects_backed_off
    );
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::OK, "after"),
        "a healthy backend was backed off after two poison requests: {s:?}"
    );
    assert_eq!(s.connects_backed_off, 0, "{s:?}");
}

/// The 0.1 promise "after a backend restart the first request succeeds", for a second
/// restart within 1 s of the first (a crash loop, a rolling restart done twice): the
/// connection `min_idle` opened after the first restart, never used, is closed by the second;
/// it is a restart closing idle connections, not an accept-then-close backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_request_after_a_second_quick_restart_succeeds() {
    let backend = Backend::start().await;
    let pool = TcpPool::builder(backend.addr_string())
        .max_size(4)
        .min_idle(2)
        .reconnect_backoff(LONG, LONG)
        .build()
        .expect("pool");
    let client = HttpClient::new(serve(app::eager(&pool)).await);
    backend.wait_for("min_idle open", |s| s.open == 2).await;
    backend.stop().await;
    backend.restart().await;
    let r = client.get("/echo/one").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::OK, "one"),
        "first restart"
    );
    // The one that served and a min_idle refill opened since, never used.
    backend.wait_for("min_idle refilled", |s| s.open >= 2).await;
    wait_pool(&pool, "two idle", |s| s.idle >= 2).await;
    backend.stop().await;
    backend.restart().await;
    let r = client.get("/echo/two").await;
    let s = pool.state();
    println!(
        "figures: second restart: {} {:?}, {} backed off, {} connect failures",
        r.status, r.body, s.connects_backed_off, s.connect_failures
    );
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::OK, "two"),
        "the first request after the second restart failed: {s:?}"
    );
}

/// Prints the figures of a storm and checks the backend saw at most `max_size + 1` connects
/// per backoff step that fits in `elapsed` (twice that: each step's connects may race).
fn assert_few_syns(what: &str, accepted: u64, elapsed: Duration, s: &axum_tcp_pool::PoolState) {
    let steps =
        testkit::backoff::steps_within(elapsed, testkit::backoff::MIN, testkit::backoff::MAX);
    println!(
        "figures: {what} in {elapsed:?}: {accepted} accepted, {} backed off, at most {steps} steps",
        s.connects_backed_off
    );
    let bound = 2 * 11 * (1 + steps);
    assert!(accepted <= bound, "{accepted} SYNs > {bound}: {s:?}");
}

/// The replies that are not `200`, with their bodies.
fn not_ok(replies: &[testkit::Reply]) -> Vec<(StatusCode, String)> {
    replies
        .iter()
        .filter(|r| r.status != StatusCode::OK)
        .map(|r| (r.status, r.body.clone()))
        .collect()
}

/// Prints the figures of a burst and checks none of its requests failed; `backed_off` is
/// `connects_backed_off` before it.
fn assert_all_served(
    what: &str,
    failed: &[(StatusCode, String)],
    backed_off: u64,
    s: &axum_tcp_pool::PoolState,
) {
    println!(
        "figures: {what}: {} failed, {} backed off in the burst",
        failed.len(),
        s.connects_backed_off - backed_off
    );
    assert!(failed.is_empty(), "{failed:?}: {s:?}");
}

/// A listener that accepts every connection and closes it at once.
async fn accept_close() -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            drop(s);
        }
    });
    (addr, task)
}

/// Several endpoints (issue 12: failover) with the backoff: one endpoint accepts and closes,
/// the other is healthy: no request gets 502 while the healthy one can serve it, but for an
/// exchange already under way on a connection of the bad one that passed its health check
/// (the close raced it: the pool cannot replay a request): at most outlier detection's
/// `consecutive_failures` (5 by default), before the bad one is backed off or ejected. (An
/// exchange closed before its first byte does not count for the backoff: a poison request
/// would back a healthy backend off, see above.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_from_an_accept_close_endpoint_never_502s() {
    let (hole, task) = accept_close().await;
    let good = Backend::start().await;
    let pool = TcpPool::builder(hole)
        .endpoint(good.addr_string())
        .build()
        .expect("pool");
    let client = HttpClient::new(serve(app::eager(&pool)).await);
    let mut failed = Vec::new();
    for i in 0..200 {
        let r = client.get(&format!("/echo/{i}")).await;
        if r.status != StatusCode::OK || r.body != i.to_string() {
            failed.push((i, r.status, r.body));
        }
    }
    let s = pool.state();
    println!(
        "figures: failover, 200 requests: {} failed, {} backed off, good accepts {}",
        failed.len(),
        s.connects_backed_off,
        good.seen().accepts
    );
    task.abort();
    assert!(failed.len() <= 5, "{failed:?}: {s:?}");
    assert!(
        s.endpoints[0].ejected || s.connects_backed_off > 0,
        "the bad endpoint is still chosen: {s:?}"
    );
}

/// A server at its connection limit that reads the request, replies an error line and
/// closes (a proxy whose upstream is gone): the pool cannot tell the reply is an error, the
/// connection comes back clean and proves the endpoint, so "few connect attempts per backoff
/// step" does not hold: about one SYN per request (296-300 for 300 sequential requests).
/// Ignored: a known limit (the pool cannot read the app's protocol), for the lead to decide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "known limit: a backend that replies an error then closes gets one SYN per request"]
async fn a_backend_replying_an_error_then_closing_gets_few_syns() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let accepts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = accepts.clone();
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut s = BufReader::new(s);
                let mut line = String::new();
                if s.read_line(&mut line).await.is_ok() {
                    let _ = s.get_mut().write_all(b"ERR busy\n").await;
                }
            });
        }
    });
    let pool = TcpPool::builder(addr).build().expect("pool");
    let client = HttpClient::new(serve(app::eager(&pool)).await);
    let start = std::time::Instant::now();
    for i in 0..300 {
        let _ = client.get(&format!("/echo/{i}")).await;
    }
    let elapsed = start.elapsed();
    let s = pool.state();
    let accepted = accepts.load(std::sync::atomic::Ordering::SeqCst) as u64;
    task.abort();
    assert_few_syns(
        "error-then-close backend, 300 requests",
        accepted,
        elapsed,
        &s,
    );
}

/// "Few connect attempts per backoff step" for a server at its connection limit: the
/// connections it already has keep being served, every new one is accepted and closed. A
/// clean return of an old connection proves nothing about new ones ("healthy only once one
/// of its new connections has served a request"): a storm must not get a SYN per request.
/// Failed (up to 190 SYNs, bound 154) while any clean return reset the backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_at_its_connection_limit_is_backed_off_while_old_connections_serve() {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let accepts = Arc::new(AtomicUsize::new(0));
    let counted = accepts.clone();
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            if counted.fetch_add(1, SeqCst) >= 1 {
                drop(s); // at the limit: one connection served
                continue;
            }
            tokio::spawn(async move {
                let mut s = BufReader::new(s);
                for _ in 0..100_000 {
                    let mut line = String::new();
                    match s.read_line(&mut line).await {
                        Ok(n) if n > 0 => {}
                        _ => return,
                    }
                    let reply = line.strip_prefix("ECHO ").unwrap_or("ERR\n");
                    if s.get_mut().write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let pool = TcpPool::builder(addr).build().expect("pool");
    let client = HttpClient::new(serve(app::eager(&pool)).await);
    let r = client.get("/echo/old").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "old"));
    let (replies, elapsed) = client.storm((0..1000).map(|i| format!("/echo/{i}"))).await;
    let s = pool.state();
    let accepted = accepts.load(SeqCst) as u64;
    let ok = replies
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .count();
    task.abort();
    let what = format!("connection limit 1, 1000 requests, {ok} served");
    assert_few_syns(&what, accepted, elapsed, &s);
}

/// "Backend back → requests succeed within one backoff step", when the probe that finds the
/// backend back is the `min_idle` refill (no request health-checks it: the endpoint stays
/// CONNECTED, one attempt at a time): a burst arriving then must be served, not get 502 from
/// a healthy backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_after_a_min_idle_probe_found_the_backend_back_is_served() {
    let backend = Backend::start().await;
    let pool = TcpPool::builder(backend.addr_string())
        .max_size(20)
        .min_idle(2)
        .build()
        .expect("pool");
    let client = HttpClient::new(serve(app::eager(&pool)).await);
    backend.wait_for("min_idle open", |s| s.open == 2).await;
    backend.stop().await;
    let r = client.get("/echo/down").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{r:?}");
    let before = backend.seen().accepts;
    backend.restart().await;
    // The refill probes on its own: wait for it to connect (no request meanwhile).
    backend
        .wait_for("the min_idle refill reconnected", |s| s.accepts > before)
        .await;
    wait_pool(&pool, "an idle connection", |s| s.idle >= 1).await;
    let (replies, _) = client.storm((0..50).map(|i| format!("/echo/{i}"))).await;
    let failed = not_ok(&replies);
    assert_all_served(
        "burst of 50 after a min_idle probe",
        &failed,
        0,
        &pool.state(),
    );
}

/// "Backend back → requests succeed within one backoff step" and "the first success resets
/// it", under load: after a refused-connect outage, once one request succeeded, a burst of
/// concurrent requests (each needing a new connection) is all served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_right_after_the_first_success_is_served() {
    let backend = Backend::start().await;
    let pool = TcpPool::builder(backend.addr_string())
        .max_size(60)
        .build()
        .expect("pool");
    let client = HttpClient::new(serve(app::eager(&pool)).await);
    backend.stop().await;
    let r = client.get("/echo/down").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{r:?}");
    backend.restart().await;
    let (r, _) = client.get_when_back("/echo/back").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "back"));
    let backed_off = pool.state().connects_backed_off;
    // Held by the backend until all are in (50 connections at once), or answered by the pool.
    let tasks: Vec<_> = (0..50)
        .map(|i| client.spawn_get(&format!("/hold/{i}")))
        .collect();
    wait_pool(&pool, "each held or answered", |_| {
        backend.seen().holding + tasks.iter().filter(|t| t.is_finished()).count() >= 50
    })
    .await;
    let held = backend.seen().holding;
    let mut failed = Vec::new();
    for t in tasks {
        backend.release();
        let r = testkit::bounded("a held request", t).await.expect("task");
        if r.status != StatusCode::OK {
            failed.push((r.status, r.body));
        }
    }
    println!("held at once: {held}");
    let what = "burst of 50 right after the first success";
    assert_all_served(what, &failed, backed_off, &pool.state());
}

/// The 0.1 promise "after a backend restart the first request succeeds", for a burst: the
/// `min_idle` connections just opened (never used) are all closed by a restart, then 20
/// requests arrive at once: each stale connection fails its health check (a restart, not an
/// accept-then-close backend) and every request is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_after_a_restart_closing_fresh_min_idle_connections_is_served() {
    let backend = Backend::start().await;
    let pool = TcpPool::builder(backend.addr_string())
        .max_size(30)
        .min_idle(4)
        .build()
        .expect("pool");
    let client = HttpClient::new(serve(app::eager(&pool)).await);
    backend.wait_for("min_idle open", |s| s.open == 4).await;
    wait_pool(&pool, "four idle", |s| s.idle == 4).await;
    backend.stop().await;
    backend.restart().await;
    let (replies, _) = client.storm((0..20).map(|i| format!("/echo/{i}"))).await;
    let failed = not_ok(&replies);
    let what = "burst of 20 after a restart with 4 fresh idle";
    assert_all_served(what, &failed, 0, &pool.state());
}
