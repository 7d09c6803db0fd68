//! Reconnect backoff: no reconnect storm while a backend is down, the backend back used
//! within one backoff step, a checkout that waits for one connect attempt at most. (The
//! `warn` lines of an outage: `backoff_logs.rs`, alone in its binary so that its log capture
//! sees every event.)
//!
//! How attempts are counted: `pool.state().connect_failures` are the connect attempts the
//! pool really made (each a SYN, refused by the kernel when nothing listens) and
//! `connects_backed_off` those it refused itself. At the socket level (feature `tls`), the
//! backend is a listener that accepts every connection and closes it at once, so each TLS
//! connect fails in its handshake: the listener's accept count is exactly the SYNs it got.
//! A bound on attempts is a count of backoff steps: with equal jitter a step lasts at least
//! half its nominal delay, so the steps that can begin while the storm runs are counted from
//! the storm's own duration (a bound, never a speed assertion).

#[cfg(feature = "tls")]
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum_tcp_pool::{TcpPool, TcpPoolBuilder, TcpPoolError};
use http::StatusCode;
use testkit::backoff::{steps_within, MAX, MIN};
use testkit::{app, bounded, serve, Backend, HttpClient};

/// Requests sent at once in a storm.
const STORM: usize = 1000;

/// `n` requests at once to `/echo/{i}`: every reply's status, and how long the storm took.
async fn storm(client: &HttpClient, n: usize) -> (Vec<StatusCode>, Duration) {
    let (replies, took) = client.storm((0..n).map(|i| format!("/echo/{i}"))).await;
    (replies.into_iter().map(|r| r.status).collect(), took)
}

fn count(statuses: &[StatusCode], status: StatusCode) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

/// A backend that was up, now stopped (connects are refused), a pool over it, an app.
async fn down(f: impl FnOnce(TcpPoolBuilder) -> TcpPoolBuilder) -> (Backend, TcpPool, HttpClient) {
    let backend = Backend::start().await;
    let pool = f(TcpPool::builder(backend.addr_string()))
        .build()
        .expect("valid pool");
    let client = HttpClient::new(serve(app::eager(&pool)).await);
    backend.stop().await;
    (backend, pool, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_against_a_down_backend_makes_a_handful_of_attempts_per_backoff_step() {
    let (_backend, pool, client) = down(|b| b).await;
    let (statuses, elapsed) = storm(&client, STORM).await;
    let s = pool.state();
    assert_eq!(
        count(&statuses, StatusCode::BAD_GATEWAY),
        STORM,
        "every request 502: {s:?}"
    );
    let steps = steps_within(elapsed, MIN, MAX);
    // Attempts admitted before the first failure came (at most max_size at once, 10), then
    // one probe per step.
    let bound = 10 + steps;
    println!(
        "figures: backoff on, {STORM} requests in {elapsed:?}: {} connect attempts made, {} backed off, at most {steps} steps",
        s.connect_failures, s.connects_backed_off
    );
    assert!(
        s.connect_failures <= bound,
        "{} attempts > {bound}: {s:?}",
        s.connect_failures
    );
    assert!(s.connects_backed_off >= 1, "{s:?}");
    assert_eq!(s.connections_created, 0, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_backoff_each_request_makes_its_own_attempt() {
    let (_backend, pool, client) =
        down(|b| b.reconnect_backoff(Duration::ZERO, Duration::ZERO)).await;
    // One at a time: exactly one attempt per request (the old behaviour).
    for i in 0..100 {
        assert_eq!(
            client.get(&format!("/echo/{i}")).await.status,
            StatusCode::BAD_GATEWAY
        );
    }
    let s = pool.state();
    assert_eq!(
        (s.connect_failures, s.connects_backed_off),
        (100, 0),
        "{s:?}"
    );
    let (statuses, elapsed) = storm(&client, STORM).await;
    let s = pool.state();
    assert_eq!(count(&statuses, StatusCode::BAD_GATEWAY), STORM, "{s:?}");
    let attempts = s.connect_failures - 100;
    println!(
        "figures: backoff off, {STORM} requests at once in {elapsed:?}: {attempts} connect attempts made, {} backed off; 100 one at a time: 100 attempts",
        s.connects_backed_off
    );
    assert_eq!(s.connects_backed_off, 0, "{s:?}");
    // More than the backoff would ever allow in that time.
    let with_backoff = 10 + steps_within(elapsed, MIN, MAX);
    assert!(
        attempts > with_backoff,
        "{attempts} attempts without backoff: {s:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_at_a_time_against_a_down_backend_only_probes() {
    let (_backend, pool, client) = down(|b| b).await;
    let start = Instant::now();
    for i in 0..100 {
        assert_eq!(
            client.get(&format!("/echo/{i}")).await.status,
            StatusCode::BAD_GATEWAY
        );
    }
    let s = pool.state();
    let steps = steps_within(start.elapsed(), MIN, MAX);
    println!(
        "figures: backoff on, 100 requests one at a time: {} attempts, {} backed off, at most {steps} steps",
        s.connect_failures, s.connects_backed_off
    );
    assert!(s.connect_failures <= 1 + steps, "{s:?}");
    assert_eq!(
        s.connect_failures + s.connects_backed_off,
        100,
        "one connect asked per request: {s:?}"
    );
}

/// The backend comes back: requests succeed again after at most one more backoff step (at
/// most one failed probe: one under way as it came back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_back_is_used_within_one_backoff_step() {
    let (backend, pool, client) =
        down(|b| b.reconnect_backoff(Duration::from_millis(20), Duration::from_millis(500))).await;
    let (statuses, _) = storm(&client, STORM).await;
    assert_eq!(count(&statuses, StatusCode::BAD_GATEWAY), STORM);
    // A few more steps, so the delay is long by now.
    let before = pool.state().connect_failures;
    for i in 0..10_000 {
        if pool.state().connect_failures >= before + 3 {
            break;
        }
        let _ = client.get(&format!("/echo/wait{i}")).await;
        tokio::task::yield_now().await;
    }
    backend.restart().await;
    let at_restart = pool.state();
    let accepts = backend.seen().accepts;
    let mut tries = 0;
    let reply = bounded("a request succeeds", async {
        loop {
            tries += 1;
            let reply = client.get("/echo/back").await;
            if reply.status == StatusCode::OK {
                return reply;
            }
            assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(reply.body, "back");
    let s = pool.state();
    let failed_probes = s.connect_failures - at_restart.connect_failures;
    println!(
        "figures: back after {} failed attempts; {failed_probes} failed after the restart, {tries} requests until one succeeded, {} accepts",
        at_restart.connect_failures,
        backend.seen().accepts - accepts
    );
    assert!(
        failed_probes <= 1,
        "more than one step after the restart: {s:?}"
    );
    assert_eq!(
        backend.seen().accepts - accepts,
        1,
        "one probe connected, then reused"
    );
    // The next requests use it, and new connects are allowed again.
    let held: Vec<_> = (0..3).map(|_| client.spawn_get("/hold/x")).collect();
    backend.wait_for("3 held", |s| s.holding == 3).await;
    backend.release();
    for h in held {
        assert_eq!(
            bounded("held", h).await.expect("task").status,
            StatusCode::OK
        );
    }
}

/// The checkout that starts while an attempt is under way against a blackholed backend waits
/// for that attempt only: with the backoff on it fails with it, instead of being restarted for
/// an attempt of its own (which, the delay being over, would be the probe: a second
/// `connect_timeout`). With the backoff off, the old behaviour: two attempts.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_waits_for_one_connect_attempt_at_most() {
    let on = blackholed_second_checkout(Duration::from_nanos(1)).await;
    let off = blackholed_second_checkout(Duration::ZERO).await;
    println!("figures: blackholed, second checkout: attempts with backoff {on}, without {off}");
    assert_eq!(
        on, 1,
        "with the backoff: the second checkout waited for the first attempt only"
    );
    assert_eq!(off, 2, "without: it was restarted and made its own");
}

/// Two checkouts on a blackholed backend (max_size 1), the second started while the first's
/// attempt hangs; both must fail with `BackendUnreachable`. The connect attempts made.
#[cfg(target_os = "linux")]
async fn blackholed_second_checkout(backoff: Duration) -> u64 {
    let hole = testkit::blackhole::Hole::new().await;
    let pool = TcpPool::builder(hole.addr.to_string())
        .max_size(1)
        // Long enough for the second checkout to start while the first attempt hangs, even
        // on a loaded machine (the accept queue stays full: a retransmitted SYN is dropped too).
        .connect_timeout(Duration::from_secs(2))
        .checkout_timeout(Duration::from_secs(3600))
        .reconnect_backoff(backoff, backoff)
        .build()
        .expect("valid pool");
    let first = tokio::spawn({
        let pool = pool.clone();
        async move { pool.get().await.map(drop) }
    });
    hole.wait_syn_sent().await;
    let second = bounded("second checkout", pool.get()).await;
    let first = bounded("first checkout", first).await.expect("task");
    assert!(
        matches!(second, Err(TcpPoolError::BackendUnreachable(_))),
        "{second:?}"
    );
    assert!(
        matches!(first, Err(TcpPoolError::BackendUnreachable(_))),
        "{first:?}"
    );
    let s = pool.state();
    assert_eq!(s.gets, 2, "{s:?}");
    s.connect_failures + s.connects_backed_off
}

/// At the socket level (feature `tls`): the backend's listener accepts every connection and
/// closes it at once, so every TLS connect fails in its handshake and the listener's accept
/// count is the number of SYNs it got. With the backoff, a handful per step; without, about
/// one per request.
#[cfg(feature = "tls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backends_listener_sees_a_handful_of_connects_per_backoff_step() {
    let (on, on_steps) = listener_storm(true).await;
    let (off, _) = listener_storm(false).await;
    println!("figures: the listener saw {on} connects with backoff (at most {on_steps} steps), {off} without, for {STORM} requests");
    assert!(on <= 10 + on_steps, "{on} connects with backoff");
    assert!(off > 10 + on_steps, "{off} connects without backoff");
}

/// A storm of requests against a listener that accepts and closes; the accepts it saw, and
/// the backoff steps that can have begun meanwhile.
#[cfg(feature = "tls")]
async fn listener_storm(backoff: bool) -> (u64, u64) {
    use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepts = Arc::new(AtomicU64::new(0));
    let (seen_tx, mut seen) = tokio::sync::watch::channel(());
    let acceptor = tokio::spawn({
        let accepts = accepts.clone();
        async move {
            while let Ok((stream, _)) = listener.accept().await {
                drop(stream);
                accepts.fetch_add(1, SeqCst);
                seen_tx.send_replace(());
            }
        }
    });
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = params.self_signed(&key).expect("CA");
    let mut builder =
        TcpPool::builder(addr.to_string()).tls(axum_tcp_pool::TlsConfig::new().ca_pem(ca.pem()));
    if !backoff {
        builder = builder.reconnect_backoff(Duration::ZERO, Duration::ZERO);
    }
    let pool = builder.build().expect("valid pool");
    let client = HttpClient::new(serve(app::eager(&pool)).await);
    let (statuses, elapsed) = storm(&client, STORM).await;
    let s = pool.state();
    assert_eq!(count(&statuses, StatusCode::BAD_GATEWAY), STORM, "{s:?}");
    // Every attempt is accepted before its handshake fails: once the attempts still under
    // way are done, the listener's count and the pool's are the same.
    let accepted = bounded("the listener's count and the pool's agree", async {
        loop {
            let accepted = accepts.load(SeqCst);
            if accepted == pool.state().connect_failures {
                return accepted;
            }
            let _ = tokio::time::timeout(Duration::from_millis(10), seen.changed()).await;
        }
    })
    .await;
    acceptor.abort();
    (accepted, steps_within(elapsed, MIN, MAX))
}
