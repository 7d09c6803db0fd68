//! A soak run: load through a real axum server and the pool, with faults on, for a while.
//!
//! ```sh
//! cargo run --release --example soak -- --seconds 60
//! ```
//!
//! Everything runs in this process on 127.0.0.1: a line-protocol echo backend, a
//! fault-injecting proxy in front of it (the one the tests use), an axum server with
//! [`TcpPoolLayer`], and a hyper client driving `--concurrency` requests at once, each tagged
//! with a unique id that the backend echoes. The proxy adds latency, blackholes, resets,
//! closes idle connections, half-closes, slices replies into 1-byte segments and takes the
//! backend down now and then; clients drop some requests at random points. All of it is
//! drawn from `--seed`.
//!
//! It prints a progress line while it runs, then requests, statuses by kind, p50/p99
//! latency, connections opened, discards by reason and the process RSS after warm-up and at
//! the end, and last one line for scripts:
//!
//! `soak: requests=N ok=N mismatched=N leaked=N rss_start_kib=N rss_end_kib=N`
//!
//! `mismatched` counts `200` replies that carried another request's bytes; `leaked` counts
//! connections still checked out once the load stopped (after the faults were turned off
//! and the pool given time to settle) plus sockets left open at the backend after the pool
//! was dropped. The exit status is 1 if either is not 0, or if a request hung or got a status
//! outside 200/502/503/504.

use std::collections::BTreeMap;
use std::future::IntoFuture;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use axum_tcp_pool::{TcpPool, TcpPoolLayer};
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use testkit::echo::tagged;
use testkit::proxy::{Fault, Proxy};
use testkit::rng::Rng;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const MAX_SIZE: u32 = 8;
/// A request that takes longer than this has hung.
const REQUEST_BOUND: Duration = Duration::from_secs(15);

struct Args {
    seconds: u64,
    concurrency: usize,
    seed: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        seconds: 60,
        concurrency: 32,
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| -> Result<u64, String> {
            it.next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{name} needs a whole number"))
        };
        match flag.as_str() {
            "--seconds" => args.seconds = value("--seconds")?.max(1),
            "--concurrency" => args.concurrency = value("--concurrency")?.max(1) as usize,
            "--seed" => args.seed = value("--seed")?,
            "-h" | "--help" => {
                return Err("usage: soak [--seconds N] [--concurrency N] [--seed N]".into())
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(args)
}

/// The process's resident set size in KiB (Linux; 0 elsewhere).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// A line-protocol backend: `ECHO <text>` is answered `<text>`.
async fn backend() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut lines = BufReader::new(r).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let reply = match line.strip_prefix("ECHO ") {
                        Some(text) => format!("{text}\n"),
                        None => "ERR unknown command\n".to_string(),
                    };
                    if w.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// Request latencies in log-linear buckets (32 per power of two, about 3% wide): fixed
/// memory however long the run.
struct Histogram {
    buckets: Vec<AtomicU64>,
}

impl Histogram {
    const SUB: u64 = 32;

    fn new() -> Self {
        Histogram {
            buckets: (0..64 * Self::SUB).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn index(us: u64) -> usize {
        if us < Self::SUB {
            return us as usize;
        }
        let power = 63 - us.leading_zeros() as u64; // us >= 2^power
        let sub = (us >> (power - 5)) & (Self::SUB - 1);
        ((power - 4) * Self::SUB + sub) as usize
    }

    /// The smallest value in bucket `i`.
    fn lower(i: usize) -> u64 {
        let i = i as u64;
        if i < Self::SUB {
            return i;
        }
        let power = i / Self::SUB + 4;
        (1 << power) + ((i % Self::SUB) << (power - 5))
    }

    fn record(&self, d: Duration) {
        let i = Self::index(d.as_micros().min(u64::MAX as u128) as u64);
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Relaxed);
        }
    }

    fn percentile(&self, p: f64) -> Duration {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        let rank = ((total as f64) * p).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Duration::from_micros(Self::lower(i));
            }
        }
        Duration::ZERO
    }
}

#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    ok: AtomicU64,
    mismatched: AtomicU64,
    s502: AtomicU64,
    s503: AtomicU64,
    s504: AtomicU64,
    other_status: AtomicU64,
    cancelled: AtomicU64,
    transport: AtomicU64,
    hung: AtomicU64,
}

async fn fetch(
    client: &Client<HttpConnector, Full<Bytes>>,
    url: String,
) -> Result<(StatusCode, Bytes), BoxError> {
    let req = http::Request::get(url).body(Full::new(Bytes::new()))?;
    let res = client.request(req).await?;
    let status = res.status();
    let body = res.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

async fn worker(
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    id: usize,
    seed: u64,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    latency: Arc<Histogram>,
) {
    let mut rng = Rng::new(seed ^ (id as u64).wrapping_mul(0x9E37_79B9));
    let mut n: u64 = 0;
    while !stop.load(Relaxed) {
        n += 1;
        let tag = format!("w{id}n{n}");
        let request = fetch(&client, format!("{base}/tag/{tag}"));
        let cancel_after = rng.chance(10).then(|| rng.millis(0, 40));
        let started = Instant::now();
        let t = &tally;
        t.requests.fetch_add(1, Relaxed);
        let result = match cancel_after {
            Some(after) => match tokio::time::timeout(after, request).await {
                Ok(r) => r,
                Err(_) => {
                    t.cancelled.fetch_add(1, Relaxed);
                    continue;
                }
            },
            None => match tokio::time::timeout(REQUEST_BOUND, request).await {
                Ok(r) => r,
                Err(_) => {
                    t.hung.fetch_add(1, Relaxed);
                    continue;
                }
            },
        };
        latency.record(started.elapsed());
        match result {
            Err(_) => t.transport.fetch_add(1, Relaxed),
            Ok((StatusCode::OK, body)) if body == tag.as_bytes() => t.ok.fetch_add(1, Relaxed),
            Ok((StatusCode::OK, _)) => t.mismatched.fetch_add(1, Relaxed),
            Ok((StatusCode::BAD_GATEWAY, _)) => t.s502.fetch_add(1, Relaxed),
            Ok((StatusCode::SERVICE_UNAVAILABLE, _)) => t.s503.fetch_add(1, Relaxed),
            Ok((StatusCode::GATEWAY_TIMEOUT, _)) => t.s504.fetch_add(1, Relaxed),
            Ok(_) => t.other_status.fetch_add(1, Relaxed),
        };
    }
}

/// Switches the faults of open connections and takes the backend down now and then.
async fn chaos(proxy: Arc<Proxy>, seed: u64, stop: Arc<AtomicBool>) -> u64 {
    let mut rng = Rng::new(seed ^ 0xC4A05);
    let mut downs = 0;
    while !stop.load(Relaxed) {
        tokio::time::sleep(rng.millis(2, 10)).await;
        match rng.below(1000) {
            0..=2 => {
                proxy.down().await;
                downs += 1;
                tokio::time::sleep(rng.millis(10, 60)).await;
                // Rebinding the same port fails only if another process took it.
                if let Err(e) = proxy.up().await {
                    eprintln!("soak: cannot restart the backend proxy: {e}");
                    return downs;
                }
            }
            3..=400 => {
                proxy.shuffle_one_fault(&mut rng);
            }
            _ => {}
        }
    }
    downs
}

fn progress(started: Instant, t: &Tally, pool: &TcpPool, tty: bool) {
    let line = format!(
        "[{:>4}s] requests={} ok={} 502={} 503={} 504={} cancelled={} mismatched={} open={} rss_kib={}",
        started.elapsed().as_secs(),
        t.requests.load(Relaxed),
        t.ok.load(Relaxed),
        t.s502.load(Relaxed),
        t.s503.load(Relaxed),
        t.s504.load(Relaxed),
        t.cancelled.load(Relaxed),
        t.mismatched.load(Relaxed),
        pool.state().connections,
        rss_kib()
    );
    let mut err = std::io::stderr().lock();
    let _ = if tty {
        write!(err, "\r{line}  ")
    } else {
        writeln!(err, "{line}")
    };
    let _ = err.flush();
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(msg) => {
            eprintln!("{msg}");
            std::process::exit(2);
        }
    };
    match run(args).await {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("soak: {e}");
            std::process::exit(2);
        }
    }
}

/// Runs the soak; `Ok(false)` if an invariant was broken.
async fn run(args: Args) -> Result<bool, BoxError> {
    let Args {
        seconds,
        concurrency,
        seed,
    } = args;
    eprintln!(
        "soak: {seconds} s, {concurrency} concurrent requests, max_size {MAX_SIZE}, seed {seed} (replay with --seed {seed})"
    );
    let rss_setup = rss_kib();
    let backend = backend().await?;
    let proxy = Arc::new(Proxy::start(backend).await?);
    proxy.set_limit(MAX_SIZE as usize);
    proxy.set_random_policy(seed ^ 0xFA17, 35);
    let pool = TcpPool::builder(proxy.addr().to_string())
        .max_size(MAX_SIZE)
        .checkout_timeout(Duration::from_millis(250))
        .connect_timeout(Duration::from_millis(500))
        .idle_timeout(Some(Duration::from_secs(2)))
        .max_lifetime(Some(Duration::from_secs(10)))
        // The production controls on: min_idle kept across idle periods, idle connections
        // probed in the background, long-held ones reported (the reconnect backoff is on by
        // default).
        .min_idle(2)
        .idle_probe_interval(Some(Duration::from_millis(500)))
        .leak_threshold(Some(Duration::from_secs(2)))
        .build()?;
    let app = Router::new()
        .route("/tag/{tag}", get(tagged))
        .layer(TcpPoolLayer::new(pool.clone()));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = server_stopped.await;
            })
            .into_future(),
    );

    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let latency = Arc::new(Histogram::new());
    let workers: Vec<_> = (0..concurrency)
        .map(|id| {
            tokio::spawn(worker(
                client.clone(),
                base.clone(),
                id,
                seed,
                stop.clone(),
                tally.clone(),
                latency.clone(),
            ))
        })
        .collect();
    let chaos = tokio::spawn(chaos(proxy.clone(), seed, stop.clone()));

    // RSS is taken after a warm-up (allocator arenas, buffers, the client's connections),
    // then at the end: a leak shows as growth between the two.
    let started = Instant::now();
    let warm_up = Duration::from_secs(seconds)
        .mul_f64(0.1)
        .max(Duration::from_secs(1));
    let tty = std::io::stderr().is_terminal();
    let mut rss_start = None;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    while started.elapsed() < Duration::from_secs(seconds) {
        ticker.tick().await;
        if rss_start.is_none() && started.elapsed() >= warm_up {
            rss_start = Some(rss_kib());
        }
        progress(started, &tally, &pool, tty);
    }
    if tty {
        eprintln!();
    }
    stop.store(true, Relaxed);
    for w in workers {
        w.await?;
    }
    let downs = chaos.await?;
    let rss_end = rss_kib();
    let rss_start = rss_start.unwrap_or(rss_end);

    // Settle: faults off, backend up; nothing may stay checked out.
    proxy.set_all(Fault::none());
    proxy.up().await?;
    let settle = Instant::now();
    while pool.state().in_use > 0 && settle.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let state = pool.state();
    let p = proxy.stats();

    // Shut down: every socket the pool opened must close.
    let _ = stop_server.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    drop(client);
    drop(pool);
    let open_after = match proxy
        .wait_for(Duration::from_secs(5), |s| s.open == 0)
        .await
    {
        Some(s) => s.open,
        None => proxy.stats().open,
    };
    let leaked = u64::from(state.in_use) + open_after as u64;

    let t = &tally;
    let requests = t.requests.load(Relaxed);
    let ok = t.ok.load(Relaxed);
    let mismatched = t.mismatched.load(Relaxed);
    let hung = t.hung.load(Relaxed);
    let other = t.other_status.load(Relaxed);
    let d = state.discards;
    let discards: BTreeMap<&str, u64> = [
        ("io_error", d.io_error),
        ("eof", d.eof),
        ("cancelled", d.cancelled),
        ("unread_bytes", d.unread_bytes),
        ("reply_not_read", d.reply_not_read),
        ("panic", d.panic),
        ("explicit", d.explicit),
        ("health_check", d.health_check),
        ("idle_timeout", state.closed_idle_timeout),
        ("max_lifetime", state.closed_max_lifetime),
    ]
    .into_iter()
    .collect();
    println!(
        "requests:      {requests} in {:.1} s ({:.0}/s)",
        started.elapsed().as_secs_f64(),
        requests as f64 / started.elapsed().as_secs_f64()
    );
    println!(
        "statuses:      200={ok} 502={} 503={} 504={} other={other} cancelled_by_client={} transport_errors={} hung={hung} mismatched={mismatched}",
        t.s502.load(Relaxed),
        t.s503.load(Relaxed),
        t.s504.load(Relaxed),
        t.cancelled.load(Relaxed),
        t.transport.load(Relaxed),
    );
    println!(
        "latency:       p50={:?} p99={:?} (completed requests)",
        latency.percentile(0.50),
        latency.percentile(0.99)
    );
    println!(
        "connections:   opened={} (backend saw {} accepts, at most {} at once), connect_failures={}, backend_downs={downs}",
        state.connections_created, p.accepts, p.max_open, state.connect_failures
    );
    println!(
        "faults:        resets={} idle_closes={} half_closes={} killed_by_down={}",
        p.resets, p.idle_closes, p.half_closes, p.killed
    );
    println!("discards:      {discards:?}");
    for o in proxy.overflows() {
        println!("over max_size: {o}");
    }
    println!(
        "checkouts:     gets={} waited={} timed_out={}",
        state.gets, state.gets_waited, state.gets_timed_out
    );
    println!(
        "lifecycle:     connects_backed_off={} idle_probes={} idle_probe_failures={} suspected_leaks={}",
        state.connects_backed_off, state.idle_probes, state.idle_probe_failures, state.suspected_leaks
    );
    println!("rss_kib:       before_load={rss_setup} after_warm_up={rss_start} end={rss_end}");
    println!(
        "soak: requests={requests} ok={ok} mismatched={mismatched} leaked={leaked} rss_start_kib={rss_start} rss_end_kib={rss_end}"
    );
    let transport = t.transport.load(Relaxed);
    Ok(mismatched == 0 && leaked == 0 && hung == 0 && other == 0 && transport == 0)
}
