//! The logs of an outage: a backend down under a storm of 1,000 requests gives a handful of
//! `warn` lines (the first failure, then at most one summary per 5 s, for the connects and for
//! the `502` responses), not one per request; its return one `info` line. Alone in its test
//! binary: a `tracing` capture set for one thread while other tests' threads first hit the
//! same callsites can miss events.

use axum_tcp_pool::TcpPool;
use http::StatusCode;
use testkit::logs::LogCapture;
use testkit::{app, bounded, serve, Backend, HttpClient};

const STORM: usize = 1000;

// A current-thread runtime: every task runs on this thread, under the capturing subscriber.
#[tokio::test(flavor = "current_thread")]
async fn an_outage_logs_a_handful_of_warn_lines_not_one_per_request() {
    let (capture, _guard) = LogCapture::install(tracing::Level::INFO);

    let backend = Backend::start().await;
    let pool = TcpPool::builder(backend.addr_string())
        .name("stormed")
        .build()
        .expect("valid pool");
    let client = HttpClient::new(serve(app::eager(&pool)).await);
    backend.stop().await;
    let (statuses, elapsed) = storm(&client, STORM).await;
    assert_eq!(count(&statuses, StatusCode::BAD_GATEWAY), STORM);
    let lines = capture.lines();
    let warns: Vec<&String> = lines.iter().filter(|l| l.contains("WARN")).collect();
    let connect: Vec<_> = warns
        .iter()
        .filter(|l| l.contains("connect to backend"))
        .collect();
    let responses: Vec<_> = warns
        .iter()
        .filter(|l| l.contains("backend connection error"))
        .collect();
    // Per kind: the first line, then at most one summary per 5 s.
    let per_kind = 1 + elapsed.as_secs() / 5 + 1;
    let s = pool.state();
    println!(
        "figures: {STORM} requests in {elapsed:?}: {} warn lines ({} connect, {} response); {} attempts, {} backed off",
        warns.len(),
        connect.len(),
        responses.len(),
        s.connect_failures,
        s.connects_backed_off
    );
    assert!(
        connect.len() as u64 <= per_kind && !connect.is_empty(),
        "{warns:#?}"
    );
    assert!(
        responses.len() as u64 <= per_kind && !responses.is_empty(),
        "{warns:#?}"
    );
    assert_eq!(warns.len(), connect.len() + responses.len(), "{warns:#?}");
    assert!(
        connect[0].contains("connect to backend failed") && connect[0].contains("pool=\"stormed\""),
        "{}",
        connect[0]
    );
    assert!(warns.iter().all(|l| l.contains("endpoint=")), "{warns:#?}");

    // Back: one info line says so, with the failures counted.
    backend.restart().await;
    bounded("a request succeeds", async {
        while client.get("/echo/back").await.status != StatusCode::OK {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let failures = pool.state().connect_failures;
    let lines = capture.lines();
    let back: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("reconnected after"))
        .collect();
    assert_eq!(back.len(), 1, "{back:#?}");
    assert!(
        back[0].contains("INFO")
            && back[0].contains(&format!("reconnected after {failures} failures")),
        "{}",
        back[0]
    );
}

/// `n` requests at once to `/echo/{i}`: every reply's status, and how long the storm took.
async fn storm(client: &HttpClient, n: usize) -> (Vec<StatusCode>, std::time::Duration) {
    let (replies, took) = client.storm((0..n).map(|i| format!("/echo/{i}"))).await;
    (replies.into_iter().map(|r| r.status).collect(), took)
}

fn count(statuses: &[StatusCode], status: StatusCode) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}
