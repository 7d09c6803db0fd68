//! One pool over three replicas: requests balanced across them, one stopped and restarted
//! under load, and what each endpoint serves meanwhile.
//!
//! What it shows:
//!
//! - [`TcpPoolBuilder::endpoint`](axum_tcp_pool::TcpPoolBuilder::endpoint): one pool, one
//!   layer, one extractor over several backends, with `max_size` per endpoint;
//! - [`TcpConnection::endpoint`]: which replica a handler is talking to;
//! - failover inside a checkout: with one replica down, every request still succeeds;
//! - [`OutlierDetection`]: the stopped replica is ejected after 3 failures in a row, tried
//!   again when its ejection ends, and back in rotation once it answers;
//! - [`TcpPool::state`]`().endpoints`: each endpoint's connections, checkouts and ejection.
//!
//! It needs nothing installed and ends by itself in a few seconds: the three backends (a
//! line echo protocol) run in the same process, on free loopback ports, and so does the load.
//!
//! ```text
//! cargo run --example replicas
//! ```

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use axum::extract::Path;
use axum::routing::get;
use axum::Router;
use axum_tcp_pool::{OutlierDetection, TcpConnection, TcpPool, TcpPoolError, TcpPoolLayer};
use tokio::io::AsyncWriteExt;

use testkit::{read_line, Backend, HttpClient};

/// Echoes the tag through a replica and says which one answered.
async fn who(Path(tag): Path<String>, mut conn: TcpConnection) -> Result<String, TcpPoolError> {
    conn.write_all(format!("ECHO {tag}\n").as_bytes()).await?;
    let reply = read_line(&mut conn).await?;
    Ok(format!("{} {reply}", conn.endpoint()))
}

/// Requests per phase, and how many are in flight at once.
const REQUESTS: usize = 600;
const CONCURRENCY: usize = 8;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    testkit::example::init_logging();
    let replicas = [
        Backend::start().await,
        Backend::start().await,
        Backend::start().await,
    ];
    let pool = TcpPool::builder(replicas[0].addr_string())
        .endpoint(replicas[1].addr_string())
        .endpoint(replicas[2].addr_string())
        .max_size(4)
        .connect_timeout(Duration::from_millis(500))
        .checkout_timeout(Duration::from_secs(1))
        .outlier_detection(
            OutlierDetection::new()
                .consecutive_failures(3)
                .base_ejection_time(Duration::from_millis(300))
                .max_ejection_time(Duration::from_secs(3)),
        )
        .build()?;
    let app = Router::new()
        .route("/who/{tag}", get(who))
        .layer(TcpPoolLayer::new(pool.clone()));
    let client = HttpClient::new(testkit::serve(app).await);
    println!("endpoints: {}", pool.endpoints().join(", "));

    let mut before = checkouts(&pool);
    phase("all three up", &client, &pool, &mut before).await;

    replicas[1].stop().await;
    println!("\nstopped {}", replicas[1].addr_string());
    phase("one replica down", &client, &pool, &mut before).await;

    // Its ejection ends by itself; it is tried again, fails once, and is ejected for longer.
    wait_for_ejections_to_end(&pool).await;
    println!("\nits ejection is over; still down");
    phase("still down", &client, &pool, &mut before).await;

    replicas[1].restart().await;
    println!("\nrestarted {}", replicas[1].addr_string());
    wait_for_ejections_to_end(&pool).await;
    phase("back", &client, &pool, &mut before).await;
    Ok(())
}

/// Sends [`REQUESTS`] requests, [`CONCURRENCY`] at a time, and prints what each endpoint
/// served and its state.
async fn phase(
    name: &str,
    client: &HttpClient,
    pool: &TcpPool,
    before: &mut BTreeMap<String, u64>,
) {
    let mut statuses = BTreeMap::<u16, usize>::new();
    for batch in 0..REQUESTS / CONCURRENCY {
        let requests: Vec<_> = (0..CONCURRENCY)
            .map(|i| client.spawn_try_get(&format!("/who/{batch}-{i}")))
            .collect();
        for r in requests {
            let status = match r.await {
                Ok(Ok(reply)) => reply.status.as_u16(),
                _ => 0,
            };
            *statuses.entry(status).or_default() += 1;
        }
    }
    println!("{name}: {REQUESTS} requests, statuses {statuses:?}");
    let now = checkouts(pool);
    for e in pool.state().endpoints {
        let served =
            now.get(&e.addr).copied().unwrap_or(0) - before.get(&e.addr).copied().unwrap_or(0);
        println!(
            "  {:<16} served {served:>4}  connections {}  ejected {:<5}  failures in a row {}  times ejected {}",
            e.addr,
            e.connections,
            e.ejected,
            e.consecutive_failures,
            e.times_ejected
        );
    }
    *before = now;
}

/// Waits (5 s at most) until no endpoint is ejected; the others serve meanwhile.
async fn wait_for_ejections_to_end(pool: &TcpPool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while pool.state().endpoints.iter().any(|e| e.ejected) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Checkouts so far, by endpoint.
fn checkouts(pool: &TcpPool) -> BTreeMap<String, u64> {
    pool.state()
        .endpoints
        .into_iter()
        .map(|e| (e.addr, e.checkouts))
        .collect()
}
