//! End to end: an axum server in front of a loopback line-echo backend, under HTTP load, with
//! seven ways of getting a backend connection in the handler, measured side by side.
//!
//! | variant | the handler |
//! |---|---|
//! | `connect_per_request` | connects to the backend, exchanges, closes |
//! | `bb8_state` | a `bb8::Pool` in axum `State`, `pool.get()`, with the manager a user writes by hand: `is_valid` does no I/O, `has_broken` returns a flag the handler sets when the exchange fails (the baseline) |
//! | `bb8_state_peek` | the same with this crate's two checks: a non-blocking peek on checkout (`is_valid`) and on return (`has_broken`) |
//! | `deadpool_state` | a `deadpool::managed::Pool` in `State`, `pool.get()`, peeking on checkout (`recycle`) |
//! | `layer_eager` | `TcpPoolLayer::new(pool)`, the `TcpConnection` extractor |
//! | `layer_lazy` | `TcpPoolLayer::new(pool).lazy()`, the `TcpConnection` extractor |
//! | `dedicated` | a backend connection opened with each HTTP connection and kept for it (the upper bound) |
//!
//! For `--profile` and `--profile-http` only (not in the comparison): `layer_eager_leak` and
//! `layer_lazy_leak`, the layer with `leak_threshold(Some(30 s))` (never reached), the cost of
//! leak detection when on.
//!
//! Every handler does one exchange: write a 16-byte line, read its 16-byte echo, answer
//! `200 ok`. The pools have the same `max_size`.
//!
//! Method: one process, three Tokio runtimes. The server runtime has ONE worker thread and
//! the backend runtime one; both are pinned to CPU 0. The load generator (one worker) and the
//! main thread are pinned to CPU 1. So the server's CPU time per request decides req/s, and
//! the load generator cannot take the server's core. Each (repetition, concurrency, variant)
//! gets a fresh backend on a fresh port, a fresh server and fresh pools; the load generator
//! warms up, then measures. The variant order rotates by one per repetition. Ratios to
//! `bb8_state` are paired within a repetition (the runs of one repetition and concurrency are
//! seconds apart); the report gives their median and min – max over the repetitions.
//!
//! ```text
//! cargo bench --bench e2e              # full: 7 repetitions, scale sweep, memory (~5 min)
//! cargo bench --bench e2e -- --quick   # short: 3 repetitions of 0.8 s (~1.5 min)
//! cargo bench --bench e2e -- --reps 11 # more repetitions
//! cargo bench --bench e2e -- --no-pin  # no CPU pinning (e.g. on one CPU)
//! cargo bench --bench e2e -- --profile VARIANT N   # for callgrind, see `profile`
//! cargo bench --bench e2e -- --replicas            # three endpoints, one slow (see `replicas`)
//! cargo bench --bench e2e -- --replicas --quick
//! ```
//!
//! Writes `target/bench-report/e2e.json`, `e2e.md` and `e2e.svg` (and, in the full run,
//! `scale.json`).

#[path = "support/load.rs"]
mod load;
#[path = "support/replicas.rs"]
mod replicas;
#[path = "support/report.rs"]
mod report;
mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use axum_tcp_pool::{TcpConnection, TcpPool, TcpPoolLayer};
use hyper_util::rt::TokioIo;
use report::{Memory, Sample};
use support::{exchange, Checks, EchoBackend};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tower::ServiceExt;

// ---------------------------------------------------------------------------------------
// A counting global allocator: allocations per request, and live heap bytes.

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);

// SAFETY: delegates every call to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        LIVE_BYTES.fetch_add(layout.size() as i64, Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        LIVE_BYTES.fetch_add(layout.size() as i64, Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as i64, Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        LIVE_BYTES.fetch_add(new_size as i64 - layout.size() as i64, Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

// ---------------------------------------------------------------------------------------
// The variants.

/// How the handler gets its backend connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    ConnectPerRequest,
    Bb8State,
    Bb8StatePeek,
    DeadpoolState,
    LayerEager,
    LayerLazy,
    Dedicated,
    /// `LayerEager` with leak detection on (profiles only).
    LayerEagerLeak,
    /// `LayerLazy` with leak detection on (profiles only).
    LayerLazyLeak,
}

impl Variant {
    pub const ALL: [Variant; 7] = [
        Variant::ConnectPerRequest,
        Variant::Bb8State,
        Variant::Bb8StatePeek,
        Variant::DeadpoolState,
        Variant::LayerEager,
        Variant::LayerLazy,
        Variant::Dedicated,
    ];

    /// Selected by name for `--profile` and `--profile-http`, not compared in the full run.
    pub const PROFILE_ONLY: [Variant; 2] = [Variant::LayerEagerLeak, Variant::LayerLazyLeak];

    /// The variant named `name`, compared or profile-only.
    pub fn named(name: &str) -> Option<Variant> {
        Variant::ALL
            .into_iter()
            .chain(Variant::PROFILE_ONLY)
            .find(|v| v.name() == name)
    }

    /// The name used in the output and the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Variant::ConnectPerRequest => "connect_per_request",
            Variant::Bb8State => "bb8_state",
            Variant::Bb8StatePeek => "bb8_state_peek",
            Variant::DeadpoolState => "deadpool_state",
            Variant::LayerEager => "layer_eager",
            Variant::LayerLazy => "layer_lazy",
            Variant::Dedicated => "dedicated",
            Variant::LayerEagerLeak => "layer_eager_leak",
            Variant::LayerLazyLeak => "layer_lazy_leak",
        }
    }
}

type Reply = Result<&'static str, StatusCode>;

fn reply(result: std::io::Result<()>) -> Reply {
    result.map(|()| "ok").map_err(|_| StatusCode::BAD_GATEWAY)
}

async fn connect_per_request(State(addr): State<Arc<str>>) -> Reply {
    let result = async {
        let mut stream = support::connect(&addr).await?;
        exchange(&mut stream).await
    };
    reply(result.await)
}

/// `bb8_state` and `bb8_state_peek` (the manager differs): the exchange marks the
/// connection broken when it fails.
async fn bb8_state(State(pool): State<bb8::Pool<support::Bb8Tcp>>) -> Reply {
    let mut conn = pool
        .get()
        .await
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    reply(conn.exchange().await)
}

async fn deadpool_state(
    State(pool): State<deadpool::managed::Pool<support::DeadpoolTcp>>,
) -> Reply {
    let mut conn = pool
        .get()
        .await
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    reply(exchange(&mut *conn).await)
}

async fn layer(mut conn: TcpConnection) -> Reply {
    reply(exchange(&mut conn).await)
}

type DedicatedConn = Arc<tokio::sync::Mutex<TcpStream>>;

async fn dedicated(State(conn): State<DedicatedConn>) -> Reply {
    reply(exchange(&mut *conn.lock().await).await)
}

/// What the server runs for each HTTP connection.
#[derive(Clone)]
enum App {
    /// One router for every connection.
    Shared(Router),
    /// A router per connection, holding a backend connection opened for it.
    Dedicated(Arc<str>),
}

/// The pools of a variant, to read their state after the run.
enum Pools {
    None,
    Bb8(bb8::Pool<support::Bb8Tcp>),
    Deadpool(deadpool::managed::Pool<support::DeadpoolTcp>),
    Crate(TcpPool),
}

impl Pools {
    /// Open backend connections held by the pool.
    fn connections(&self) -> Option<u64> {
        match self {
            Pools::None => None,
            Pools::Bb8(p) => Some(p.state().connections.into()),
            Pools::Deadpool(p) => Some(p.status().size as u64),
            Pools::Crate(p) => Some(p.state().connections.into()),
        }
    }
}

/// Builds the app for `variant`; must run inside the server runtime (the pools spawn tasks).
async fn app(variant: Variant, backend: &str, max_size: u32) -> (App, Pools) {
    let route = "/";
    match variant {
        Variant::ConnectPerRequest => {
            let router = Router::new()
                .route(route, get(connect_per_request))
                .with_state(Arc::<str>::from(backend));
            (App::Shared(router), Pools::None)
        }
        Variant::Bb8State | Variant::Bb8StatePeek => {
            let checks = if variant == Variant::Bb8State {
                Checks::NoIo
            } else {
                Checks::Peek
            };
            let pool = support::bb8_pool(backend, checks, max_size, None)
                .await
                .expect("bb8 pool");
            let router = Router::new()
                .route(route, get(bb8_state))
                .with_state(pool.clone());
            (App::Shared(router), Pools::Bb8(pool))
        }
        Variant::DeadpoolState => {
            let pool = support::deadpool_pool(backend, max_size as usize);
            let router = Router::new()
                .route(route, get(deadpool_state))
                .with_state(pool.clone());
            (App::Shared(router), Pools::Deadpool(pool))
        }
        Variant::LayerEager
        | Variant::LayerLazy
        | Variant::LayerEagerLeak
        | Variant::LayerLazyLeak => {
            let leak = matches!(variant, Variant::LayerEagerLeak | Variant::LayerLazyLeak);
            let pool = TcpPool::builder(backend)
                .max_size(max_size)
                .leak_threshold(leak.then_some(Duration::from_secs(30)))
                .build()
                .expect("TcpPool");
            let mut pool_layer = TcpPoolLayer::new(pool.clone());
            if matches!(variant, Variant::LayerLazy | Variant::LayerLazyLeak) {
                pool_layer = pool_layer.lazy();
            }
            // `with_state(())` turns the handlers into routes once, as `axum::serve` does;
            // a `Router<()>` called without it would rebuild the route on every request.
            let router = Router::new()
                .route(route, get(layer))
                .layer(pool_layer)
                .with_state(());
            (App::Shared(router), Pools::Crate(pool))
        }
        Variant::Dedicated => (App::Dedicated(Arc::from(backend)), Pools::None),
    }
}

// ---------------------------------------------------------------------------------------
// The server.

/// A running server; dropping it does not stop it, [`Server::stop`] does.
struct Server {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Serves `app` on a fresh port of 127.0.0.1, with hyper's HTTP/1.1 server (keep-alive).
    async fn start(app: App) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the server");
        let addr = listener.local_addr().expect("server address");
        let task = tokio::spawn(async move {
            // Owned by this task: aborting it closes every HTTP connection.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let _ = stream.set_nodelay(true);
                        let router = match &app {
                            App::Shared(router) => router.clone(),
                            App::Dedicated(backend) => match support::connect(backend).await {
                                Ok(conn) => Router::new()
                                    .route("/", get(dedicated))
                                    .with_state(Arc::new(tokio::sync::Mutex::new(conn))),
                                Err(_) => continue,
                            },
                        };
                        conns.spawn(async move {
                            let service = hyper::service::service_fn(move |req| router.clone().oneshot(req));
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                    Some(_) = conns.join_next() => {}
                }
            }
        });
        Server { addr, task }
    }

    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

// ---------------------------------------------------------------------------------------
// One measurement.

/// The three runtimes (see the module docs).
struct Runtimes {
    server: Runtime,
    backend: Runtime,
    load: Runtime,
    /// Whether the threads are pinned (`sched_setaffinity` worked for every runtime).
    pinned: bool,
}

/// The CPU the server and the backend run on; the load generator runs on [`LOAD_CPU`].
const SERVER_CPU: usize = 0;
const LOAD_CPU: usize = 1;

/// Pins the calling thread to `cpu`; `false` if the kernel refused.
fn pin_to(cpu: usize) -> bool {
    // SAFETY: `set` is a plain bit set owned by this frame; `sched_setaffinity(0, ..)` acts
    // on the calling thread only and reads `size_of::<cpu_set_t>()` bytes of `set`.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

static PIN_FAILED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl Runtimes {
    fn new(pin: bool) -> Runtimes {
        let build = |name: &str, cpu: usize| {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(1).thread_name(name).enable_all();
            if pin {
                builder.on_thread_start(move || {
                    if !pin_to(cpu) {
                        PIN_FAILED.store(true, Relaxed);
                    }
                });
            }
            builder.build().expect("build a Tokio runtime")
        };
        let rts = Runtimes {
            server: build("server", SERVER_CPU),
            backend: build("backend", SERVER_CPU),
            load: build("load", LOAD_CPU),
            pinned: pin,
        };
        // The main thread only sets up and sleeps through the measurement: on the load's CPU.
        let main_pinned = !pin || pin_to(LOAD_CPU);
        // Wake every worker so that `on_thread_start` has run before the first measurement.
        for rt in [&rts.server, &rts.backend, &rts.load] {
            rt.block_on(async { tokio::spawn(async {}).await.expect("warm a worker") });
        }
        let pinned = pin && main_pinned && !PIN_FAILED.load(Relaxed);
        if pin && !pinned {
            eprintln!(
                "could not pin the threads to CPUs {SERVER_CPU} and {LOAD_CPU}: running unpinned"
            );
        }
        Runtimes { pinned, ..rts }
    }
}

/// Timing of one measurement.
#[derive(Debug, Clone, Copy)]
struct Timing {
    warm_up: Duration,
    measure: Duration,
}

/// Runs one (variant, concurrency, max_size) measurement from scratch.
fn measure(
    rts: &Runtimes,
    variant: Variant,
    concurrency: usize,
    max_size: u32,
    timing: Timing,
) -> Sample {
    // A port freshly handed out by the kernel may be one an earlier run's sockets still sit
    // in TIME_WAIT on (a closed listener's port is reused); those would be counted as this
    // run's. So take a port with none (the rejected backends hold theirs until then).
    let mut rejected = Vec::new();
    let backend = loop {
        let backend = rts
            .backend
            .block_on(EchoBackend::start())
            .expect("start the echo backend");
        if time_wait(backend.addr.port()) == 0 || rejected.len() >= 16 {
            break backend;
        }
        rejected.push(backend);
    };
    drop(rejected);
    let backend_addr = backend.addr_string();
    let (server, pools) = rts.server.block_on(async {
        let (app, pools) = app(variant, &backend_addr, max_size).await;
        (Server::start(app).await, pools)
    });

    let measure_from = Instant::now() + timing.warm_up;
    let until = measure_from + timing.measure;
    let load = rts
        .load
        .spawn(load::run(server.addr, concurrency, measure_from, until));
    std::thread::sleep(measure_from.saturating_duration_since(Instant::now()));
    let (allocs_before, completed_before, cpu_before) = (
        ALLOCATIONS.load(Relaxed),
        load::COMPLETED.load(Relaxed),
        server_cpu_ns(),
    );
    std::thread::sleep(until.saturating_duration_since(Instant::now()));
    let (allocs_after, completed_after, cpu_after) = (
        ALLOCATIONS.load(Relaxed),
        load::COMPLETED.load(Relaxed),
        server_cpu_ns(),
    );
    let mut result = rts.load.block_on(load).expect("load generator");

    // Counted while the pools are still open: what the run itself left in TIME_WAIT.
    let time_wait = time_wait(backend.addr.port());
    let pool_connections = pools.connections();
    let backend_connections = backend.accepted.load(Relaxed);
    rts.server.block_on(async {
        server.stop().await;
        drop(pools);
    });
    drop(backend);

    result.latencies_ns.sort_unstable();
    let completed = completed_after.saturating_sub(completed_before).max(1);
    Sample {
        variant: variant.name(),
        concurrency,
        max_size,
        requests: result.latencies_ns.len() as u64,
        errors: result.errors,
        elapsed: result.elapsed,
        latencies_ns: result.latencies_ns,
        allocs_per_request: (allocs_after.saturating_sub(allocs_before)) as f64 / completed as f64,
        server_cpu_us_per_request: match (cpu_before, cpu_after) {
            (Some(a), Some(b)) => b.saturating_sub(a) as f64 / 1000.0 / completed as f64,
            _ => f64::NAN,
        },
        time_wait,
        backend_connections,
        pool_connections,
    }
}

/// CPU time (ns) the server's and the backend's worker threads have run so far, from
/// `/proc/self/task/*/schedstat` (the threads are found by name); `None` where there is no
/// such file.
fn server_cpu_ns() -> Option<u64> {
    let mut total = None;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let path = task.path();
        let Ok(name) = std::fs::read_to_string(path.join("comm")) else {
            continue;
        };
        if !matches!(name.trim(), "server" | "backend") {
            continue;
        }
        let ran = std::fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok());
        if let Some(ns) = ran {
            *total.get_or_insert(0) += ns;
        }
    }
    total
}

/// Sockets in TIME_WAIT (state `06` in `/proc/net/tcp`) to or from `port`; 0 where there is
/// no such file.
fn time_wait(port: u16) -> u64 {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return 0;
    };
    let port_of = |addr: &str| {
        addr.rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() > 3
                && fields[3] == "06"
                && (port_of(fields[1]) == Some(port) || port_of(fields[2]) == Some(port))
        })
        .count() as u64
}

// ---------------------------------------------------------------------------------------
// Memory per idle pooled connection.

fn rss_bytes() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Opens `n` idle connections in a pool and reports what they cost, next to `n` bare
/// `TcpStream`s. The backend (in this process too) only accepts and holds its ends.
fn memory(rts: &Runtimes, n: u32) -> Memory {
    // The holding backend runs on the backend runtime, with a backlog for every connection.
    let (listener, addr) = rts.backend.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("bind");
        let listener = socket.listen(4096).expect("listen");
        let addr = listener.local_addr().expect("address").to_string();
        (listener, addr)
    });
    let (held_tx, mut held_rx) = tokio::sync::mpsc::unbounded_channel();
    let holder = rts.backend.spawn(async move {
        let mut held = Vec::new();
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    held.push(stream);
                    let _ = held_tx.send(held.len());
                }
                // A connection reset before it was accepted: keep accepting.
                Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
    });
    rts.server.block_on(async {
        // The pool first, so that its RSS growth is not hidden by memory freed earlier.
        let rss0 = rss_bytes();
        let heap0 = LIVE_BYTES.load(Relaxed);
        let pool = TcpPool::builder(addr.clone())
            .max_size(n)
            .min_idle(n)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect()
            .await
            .expect("pool of idle connections");
        let deadline = Instant::now() + Duration::from_secs(30);
        while pool.state().idle < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let opened = pool.state().idle;
        let accepted = wait_for_accepts(&mut held_rx, n as usize).await;
        let rss1 = rss_bytes();
        let heap1 = LIVE_BYTES.load(Relaxed);
        drop(pool);

        // Bare TcpStreams, for comparison (both ends in this process, as above).
        let heap2 = LIVE_BYTES.load(Relaxed);
        let mut bare = Vec::with_capacity(n as usize);
        for _ in 0..n {
            bare.push(TcpStream::connect(&addr).await.expect("bare connect"));
        }
        let accepted_bare = wait_for_accepts(&mut held_rx, 2 * n as usize).await;
        let heap3 = LIVE_BYTES.load(Relaxed);
        drop(bare);
        holder.abort();

        let complete = opened == n && accepted >= n as usize && accepted_bare >= 2 * n as usize;
        if !complete {
            eprintln!(
                "memory: pool opened {opened} of {n}, backend accepted {accepted} then {accepted_bare} of {}",
                2 * n
            );
        }
        Memory {
            connections: n,
            complete,
            rss_delta: match (rss0, rss1) {
                (Some(a), Some(b)) => Some(b - a),
                _ => None,
            },
            heap_delta: heap1 - heap0,
            bare_heap_delta: heap3 - heap2,
        }
    })
}

/// Waits (30 s at most) until the holding backend has accepted `target` connections.
/// Waits (60 s at most) until the holding backend has accepted `target` connections; returns
/// how many it had accepted.
async fn wait_for_accepts(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<usize>,
    target: usize,
) -> usize {
    let deadline = tokio::time::sleep(Duration::from_secs(60));
    tokio::pin!(deadline);
    let mut seen = 0;
    loop {
        tokio::select! {
            got = rx.recv() => match got {
                Some(k) => {
                    seen = k;
                    if k >= target {
                        return k;
                    }
                }
                None => return seen,
            },
            _ = &mut deadline => return seen,
        }
    }
}

// ---------------------------------------------------------------------------------------
// The run.

struct Settings {
    quick: bool,
    concurrencies: Vec<usize>,
    reps: usize,
    timing: Timing,
    max_size: u32,
}

/// `--profile VARIANT N`: N requests through the variant's router with `oneshot` (no HTTP),
/// for `valgrind --tool=callgrind` (run it with two N and take the difference per request);
/// prints the allocations per request. `PROFILE_CONCURRENCY=K` (default 1) keeps K requests
/// in flight at once, from K tasks sharing the router and its pool of 16 (`PROFILE_POOL`
/// changes it): with K = 64, 48 of them wait for a connection, as at concurrency 64 in the
/// end-to-end run. One runtime with one worker, the backend on it too, like the server.
///
/// `--profile tcp_pool_get|bb8_get_owned|bb8_get_owned_noio|deadpool_get N` does N bare
/// checkouts and returns instead (the checkout bench's single-task cycles; `PROFILE_TASKS`).
fn profile(variant: &str, n: u64) {
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or(default)
            .max(1)
    };
    if CHECKOUT_PROFILES.contains(&variant) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        profile_checkout(&rt, variant, n, env("PROFILE_TASKS", 1));
        return;
    }
    let Some(variant) = Variant::named(variant) else {
        eprintln!("unknown variant {variant}");
        std::process::exit(2);
    };
    let concurrency = env("PROFILE_CONCURRENCY", 1);
    let pool_size = env("PROFILE_POOL", 16) as u32;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let backend = EchoBackend::start().await.expect("backend");
        let (app, _pools) = app(variant, &backend.addr_string(), pool_size).await;
        let router = match app {
            App::Shared(router) => router,
            App::Dedicated(addr) => Router::new()
                .route("/", get(dedicated))
                .with_state(Arc::new(tokio::sync::Mutex::new(
                    support::connect(&addr).await.expect("connect"),
                ))),
        };
        let request = || {
            axum::http::Request::get("/")
                .body(axum::body::Body::empty())
                .expect("request")
        };
        // K tasks, as a server runs its requests; each does its share back to back, so K stay
        // in flight. A barrier between warm-up and the counted part.
        let per_task = n.div_ceil(concurrency);
        let barrier = Arc::new(tokio::sync::Barrier::new(concurrency as usize + 1));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..concurrency {
            let (router, barrier) = (router.clone(), barrier.clone());
            tasks.spawn(async move {
                for _ in 0..(200 / concurrency).max(4) {
                    let _ = router.clone().oneshot(request()).await;
                }
                barrier.wait().await;
                for _ in 0..per_task {
                    let res = router.clone().oneshot(request()).await;
                    assert!(matches!(res, Ok(ref r) if r.status() == StatusCode::OK));
                }
            });
        }
        barrier.wait().await;
        let before = ALLOCATIONS.load(Relaxed);
        while let Some(joined) = tasks.join_next().await {
            joined.expect("profile task");
        }
        let total = per_task * concurrency;
        let per = (ALLOCATIONS.load(Relaxed) - before) as f64 / total as f64;
        println!(
            "{} allocations/request {per:.2} ({total} requests, {concurrency} in flight, pool of {pool_size})",
            variant.name()
        );
    });
}

/// `--profile-http VARIANT N`: N requests through HTTP, from `PROFILE_CONCURRENCY`
/// keep-alive connections (default 1) to a real server (as in a measurement, unpinned),
/// for callgrind: the count includes the load generator, which is the same for every variant,
/// so compare the differences.
fn profile_http(variant: &str, n: u64) {
    let Some(variant) = Variant::named(variant) else {
        eprintln!("unknown variant {variant}");
        std::process::exit(2);
    };
    let concurrency: u64 = std::env::var("PROFILE_CONCURRENCY")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(1)
        .max(1);
    let rts = Runtimes::new(false);
    let backend = rts
        .backend
        .block_on(EchoBackend::start())
        .expect("start the echo backend");
    let backend_addr = backend.addr_string();
    let (server, _pools) = rts.server.block_on(async {
        let (app, pools) = app(variant, &backend_addr, 16).await;
        (Server::start(app).await, pools)
    });
    let per_task = n.div_ceil(concurrency);
    let failed = rts.load.block_on(async move {
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..concurrency {
            workers.spawn(async move {
                let mut sender = load::connect(server.addr).await.expect("connect");
                let mut failed = 0u64;
                for _ in 0..per_task {
                    if !load::request(&mut sender).await {
                        failed += 1;
                    }
                }
                failed
            });
        }
        let mut failed = 0;
        while let Some(joined) = workers.join_next().await {
            failed += joined.expect("load worker");
        }
        failed
    });
    println!(
        "{} http {} requests, {concurrency} connections, {failed} failed",
        variant.name(),
        per_task * concurrency
    );
}

const CHECKOUT_PROFILES: [&str; 4] = [
    "tcp_pool_get",
    "bb8_get_owned",
    "bb8_get_owned_noio",
    "deadpool_get",
];

fn profile_checkout(rt: &Runtime, what: &str, n: u64, tasks: u64) {
    let what = what.to_string();
    rt.block_on(async move {
        let backend = EchoBackend::start().await.expect("backend");
        let addr = backend.addr_string();
        let pool = TcpPool::builder(addr.clone())
            .max_size(8)
            .build()
            .expect("pool");
        let checks = if what == "bb8_get_owned_noio" {
            Checks::NoIo
        } else {
            Checks::Peek
        };
        let bb8 = support::bb8_pool(&addr, checks, 8, None)
            .await
            .expect("bb8 pool");
        let deadpool = support::deadpool_pool(&addr, 8);
        // `PROFILE_TASKS=64` runs the cycles in 64 tasks sharing the pool of 8 (every
        // checkout waits), as the contended checkout bench does.
        let before = ALLOCATIONS.load(Relaxed);
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..tasks {
            let (pool, bb8, deadpool, what) =
                (pool.clone(), bb8.clone(), deadpool.clone(), what.clone());
            set.spawn(async move {
                for _ in 0..n / tasks {
                    // Held across a yield, so that with more tasks than connections the
                    // others wait for it.
                    match what.as_str() {
                        "tcp_pool_get" => {
                            let _conn = pool.get().await.expect("checkout");
                            tokio::task::yield_now().await;
                        }
                        "bb8_get_owned" | "bb8_get_owned_noio" => {
                            let _conn = bb8.get_owned().await.expect("checkout");
                            tokio::task::yield_now().await;
                        }
                        _ => {
                            let _conn = deadpool.get().await.expect("checkout");
                            tokio::task::yield_now().await;
                        }
                    }
                }
            });
        }
        while let Some(joined) = set.join_next().await {
            joined.expect("profile task");
        }
        let per = (ALLOCATIONS.load(Relaxed) - before) as f64 / n.max(1) as f64;
        println!("{what} allocations/checkout {per:.2} ({tasks} tasks)");
    });
}

/// The position of `flag` in the arguments and the one after it.
fn arg_after<'a>(args: &'a [String], flag: &str) -> Option<Option<&'a str>> {
    let i = args.iter().position(|a| a == flag)?;
    Some(args.get(i + 1).map(String::as_str))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--profile-http") {
        let variant = args.get(i + 1).map_or("layer_eager", String::as_str);
        let n = args
            .get(i + 2)
            .and_then(|n| n.parse().ok())
            .unwrap_or(10_000);
        profile_http(variant, n);
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--profile") {
        let variant = args.get(i + 1).map_or("layer_eager", String::as_str);
        let n = args
            .get(i + 2)
            .and_then(|n| n.parse().ok())
            .unwrap_or(10_000);
        profile(variant, n);
        return;
    }
    if args.iter().any(|a| a == "--replicas") {
        replicas::run(&args);
        return;
    }
    // `cargo bench` passes `--bench`; other arguments are ignored.
    let quick = args.iter().any(|a| a == "--quick");
    let pin = !args.iter().any(|a| a == "--no-pin");
    let mut settings = if quick {
        Settings {
            quick,
            concurrencies: vec![1, 16, 64],
            reps: 3,
            timing: Timing {
                warm_up: Duration::from_millis(200),
                measure: Duration::from_millis(800),
            },
            max_size: 16,
        }
    } else {
        Settings {
            quick,
            concurrencies: vec![1, 16, 64],
            // Many short repetitions rather than a few long ones: each ratio compares runs
            // that were seconds apart, which is what keeps a shared machine's load out of it.
            reps: 7,
            timing: Timing {
                warm_up: Duration::from_millis(300),
                measure: Duration::from_millis(1200),
            },
            max_size: 16,
        }
    };
    if let Some(reps) = arg_after(&args, "--reps") {
        match reps.and_then(|r| r.parse().ok()) {
            Some(r) if r > 0 => settings.reps = r,
            _ => {
                eprintln!("--reps needs a positive number");
                std::process::exit(2);
            }
        }
    }
    let started = Instant::now();
    let rts = Runtimes::new(pin);

    // Memory first, while the process is young: later runs leave freed heap behind that would
    // hide the RSS growth.
    let mut memory_figures = Vec::new();
    if !settings.quick {
        for n in [100, 1000] {
            memory_figures.push(memory(&rts, n));
        }
    }

    // The comparison: every variant at every concurrency in every repetition, the order
    // rotated by one per repetition so that no variant always runs first or after another.
    let mut samples = Vec::new();
    for rep in 0..settings.reps {
        for &concurrency in &settings.concurrencies {
            let mut order = Variant::ALL;
            order.rotate_left(rep % Variant::ALL.len());
            for variant in order {
                let sample = measure(
                    &rts,
                    variant,
                    concurrency,
                    settings.max_size,
                    settings.timing,
                );
                eprintln!(
                    "rep {} c={:<4} {:<20} {:>9.0} req/s  p99 {:>8.1} us  server CPU {:>6.1} us/req  errors {}",
                    rep + 1,
                    concurrency,
                    variant.name(),
                    sample.rps(),
                    load::quantile_us(&sample.latencies_ns, 0.99),
                    sample.server_cpu_us_per_request,
                    sample.errors
                );
                samples.push(sample);
            }
        }
    }

    // Scale: the layer (eager) next to bb8-in-State as max_size and concurrency grow.
    let mut scale = Vec::new();
    if !settings.quick {
        let timing = Timing {
            warm_up: Duration::from_millis(300),
            measure: Duration::from_millis(1200),
        };
        let points = [1u32, 4, 16, 64, 256]
            .into_iter()
            .map(|max_size| (256usize, max_size))
            // (256, 64) is in both sweeps: measured once.
            .chain([1usize, 16, 64, 1024].into_iter().map(|c| (c, 64u32)));
        for (i, (concurrency, max_size)) in points.enumerate() {
            let mut order = [Variant::LayerEager, Variant::Bb8State];
            if i % 2 == 1 {
                order.reverse();
            }
            for variant in order {
                let sample = measure(&rts, variant, concurrency, max_size, timing);
                eprintln!(
                    "scale c={:<4} max_size={:<3} {:<12} {:>9.0} req/s  p99 {:>8.1} us  errors {}",
                    concurrency,
                    max_size,
                    variant.name(),
                    sample.rps(),
                    load::quantile_us(&sample.latencies_ns, 0.99),
                    sample.errors
                );
                scale.push(sample);
            }
        }
    }

    let report = report::Report {
        quick: settings.quick,
        reps: settings.reps,
        pinned: rts.pinned,
        max_size: settings.max_size,
        warm_up: settings.timing.warm_up,
        measure: settings.timing.measure,
        rows: report::aggregate(&samples, &Variant::ALL.map(Variant::name)),
        scale: report::aggregate(
            &scale,
            &[Variant::LayerEager.name(), Variant::Bb8State.name()],
        ),
        memory: memory_figures,
        wall_time: started.elapsed(),
    };
    let dir = report::output_dir();
    match report.write(&dir) {
        Ok(files) => {
            println!("{}", report.markdown());
            for file in files {
                println!("wrote {}", file.display());
            }
        }
        Err(e) => {
            println!("{}", report.markdown());
            eprintln!("could not write the report to {}: {e}", dir.display());
            std::process::exit(1);
        }
    }
}
