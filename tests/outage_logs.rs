//! The logs of an outage with two pools (each logs its first failure), and of a closed pool
//! answering requests (a handful of lines, not one per request). Alone in its binary, like
//! `backoff_logs.rs`: a thread-local capture can miss events whose callsite another test's
//! thread hit first.

use axum::Router;
use axum_tcp_pool::{TcpConnection, TcpPool, TcpPoolLayer};
use http::StatusCode;
use testkit::logs::LogCapture;
use testkit::{serve, Backend, HttpClient};

async fn both(_a: TcpConnection, _b: TcpConnection<B>) -> &'static str {
    "both"
}
enum B {}

async fn storm(client: &HttpClient, path: &str, n: usize) -> Vec<StatusCode> {
    let (replies, _) = client.storm((0..n).map(|_| path.to_owned())).await;
    replies.into_iter().map(|r| r.status).collect()
}

// Two pools down on one route: each pool logs its own first failure (the throttles are per
// pool and per endpoint, not shared), and a handful of lines in all, not one per request.
// Then a closed pool: 500 requests answered 503; how many warn lines?
#[tokio::test(flavor = "current_thread")]
async fn two_pools_down_log_their_first_failure_each_and_a_closed_pool_logs_a_handful() {
    let (capture, _guard) = LogCapture::install(tracing::Level::INFO);

    let (a, b) = (Backend::start().await, Backend::start().await);
    let pa = TcpPool::builder(a.addr_string())
        .name("pa")
        .build()
        .expect("pool");
    let pb: TcpPool<B> = TcpPool::builder(b.addr_string())
        .name("pb")
        .build()
        .expect("pool")
        .with_marker();
    // Pool b fails only once pool a is down too: the route checks out a first (outer layer).
    let app = Router::new()
        .route("/both", axum::routing::get(both))
        .layer(TcpPoolLayer::new(pb.clone()).lazy())
        .layer(TcpPoolLayer::new(pa.clone()).lazy());
    let client = HttpClient::new(serve(app).await);
    b.stop().await;
    let statuses = storm(&client, "/both", 300).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::BAD_GATEWAY),
        "{statuses:?}"
    );
    a.stop().await;
    let statuses = storm(&client, "/both", 300).await;
    assert!(statuses.iter().all(|s| *s == StatusCode::BAD_GATEWAY));
    let warns = capture.warns();
    let of = |pool: &str, what: &str| {
        warns
            .iter()
            .filter(|l| l.contains(what) && l.contains(&format!("pool=\"{pool}\"")))
            .count()
    };
    println!(
        "figures: two pools down, 600 requests: {} warn lines; pa connect {}, pb connect {}",
        warns.len(),
        of("pa", "connect to backend"),
        of("pb", "connect to backend"),
    );
    assert!(of("pa", "connect to backend failed") >= 1, "{warns:#?}");
    assert!(of("pb", "connect to backend failed") >= 1, "{warns:#?}");
    let response_lines = warns
        .iter()
        .filter(|l| l.contains("backend connection error"))
        .count();
    assert!(response_lines >= 2, "one first line per pool: {warns:#?}");
    assert!(warns.len() <= 12, "{warns:#?}");

    // A closed pool during a shutdown that still takes requests.
    a.restart().await;
    b.restart().await;
    capture.clear();
    let _closing = pa.close();
    let statuses = storm(&client, "/both", 500).await;
    assert!(statuses
        .iter()
        .all(|s| *s == StatusCode::SERVICE_UNAVAILABLE));
    let warns = capture.warns();
    println!(
        "figures: closed pool, 500 requests answered 503: {} warn lines",
        warns.len()
    );
    assert!(
        warns.len() <= 12,
        "{} warn lines, first: {:?}",
        warns.len(),
        warns.first()
    );
}
