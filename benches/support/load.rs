//! The HTTP load generator of the end-to-end bench: `concurrency` workers, each with its own
//! keep-alive HTTP/1.1 connection (hyper's client), sending `GET /` back to back.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Successful requests completed inside a measurement window, by every worker: the bench
/// reads it together with the allocation counter to get allocations per request.
pub static COMPLETED: AtomicU64 = AtomicU64::new(0);

/// What one run of the load generator saw inside its measurement window.
#[derive(Debug, Default)]
pub struct LoadResult {
    /// Latency of every successful request, in nanoseconds.
    pub latencies_ns: Vec<u64>,
    /// Failed requests (transport error or a status other than 200).
    pub errors: u64,
    /// From the start of the window to the last completion in it.
    pub elapsed: Duration,
}

/// Runs the load: warm up until `measure_from`, then measure until `until`.
pub async fn run(
    server: SocketAddr,
    concurrency: usize,
    measure_from: Instant,
    until: Instant,
) -> LoadResult {
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        workers.spawn(worker(server, concurrency, measure_from, until));
    }
    let mut total = LoadResult::default();
    let mut last = measure_from;
    while let Some(joined) = workers.join_next().await {
        let Ok((result, worker_last)) = joined else {
            total.errors += 1;
            continue;
        };
        total.latencies_ns.extend_from_slice(&result.latencies_ns);
        total.errors += result.errors;
        last = last.max(worker_last);
    }
    total.elapsed = last.saturating_duration_since(measure_from);
    total
}

/// One keep-alive HTTP/1.1 connection to `server`, its connection task spawned.
pub async fn connect(server: SocketAddr) -> Option<SendRequest<Empty<Bytes>>> {
    let stream = TcpStream::connect(server).await.ok()?;
    stream.set_nodelay(true).ok()?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    Some(sender)
}

/// One request; `true` if it got a 200 and its whole body.
pub async fn request(sender: &mut SendRequest<Empty<Bytes>>) -> bool {
    if sender.ready().await.is_err() {
        return false;
    }
    let req = match http::Request::get("/")
        .header(http::header::HOST, "bench")
        .body(Empty::new())
    {
        Ok(req) => req,
        Err(_) => return false,
    };
    match sender.send_request(req).await {
        Ok(res) => res.status() == http::StatusCode::OK && res.into_body().collect().await.is_ok(),
        Err(_) => false,
    }
}

async fn worker(
    server: SocketAddr,
    concurrency: usize,
    measure_from: Instant,
    until: Instant,
) -> (LoadResult, Instant) {
    // Room for the expected requests, so that growing the vector stays off the hot path.
    let mut result = LoadResult {
        latencies_ns: Vec::with_capacity(200_000 / concurrency + 256),
        ..LoadResult::default()
    };
    let mut last = measure_from;
    let mut sender = None;
    loop {
        let start = Instant::now();
        if start >= until {
            break;
        }
        let measuring = start >= measure_from;
        let Some(conn) = sender.as_mut() else {
            sender = connect(server).await;
            if sender.is_none() {
                if measuring {
                    result.errors += 1;
                }
                // Bounded retry rate when the server refuses connections.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            continue;
        };
        let ok = request(conn).await;
        let end = Instant::now();
        if !ok {
            sender = None;
        }
        if measuring {
            last = end;
            if ok {
                result
                    .latencies_ns
                    .push((end - start).as_nanos().min(u64::MAX as u128) as u64);
                COMPLETED.fetch_add(1, Relaxed);
            } else {
                result.errors += 1;
            }
        }
    }
    (result, last)
}

/// The `q`-quantile (0..=1) of sorted nanoseconds, in microseconds.
pub fn quantile_us(sorted_ns: &[u64], q: f64) -> f64 {
    if sorted_ns.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted_ns.len() as f64 * q).ceil() as usize).clamp(1, sorted_ns.len());
    sorted_ns[rank - 1] as f64 / 1000.0
}
