//! One checkout and return, with an idle connection available, through each way of pooling:
//!
//! | benchmark | what one cycle does |
//! |---|---|
//! | `bb8_get_owned` | `bb8::Pool::get_owned()` and drop: raw bb8, a TCP manager with this crate's two peeks (checkout and return) |
//! | `bb8_get_owned_noio` | the same with the manager a user writes by hand: no I/O in `is_valid`, a flag in `has_broken` |
//! | `tcp_pool_get` | `TcpPool::get()` and drop |
//! | `layer_eager` | `TcpPoolService::call` (eager) on a request, the inner service extracts the `TcpConnection` and drops it |
//! | `layer_lazy` | the same with a lazy layer: the extraction checks out |
//! | `deadpool_get` | `deadpool::managed::Pool::get()` and drop, with a TCP manager doing the same peek |
//! | `round_trip_16b` | `TcpPool::get()`, write 16 bytes, read their echo, drop (single task only) |
//!
//! Each runs single-task (`single/…`) and with 64 tasks sharing a pool of 8
//! (`contended_64_tasks_pool_8/…`, time per cycle = wall time / cycles of all tasks). All
//! against a loopback echo backend in one multi-thread Tokio runtime (one worker per CPU).
//!
//! ```text
//! cargo bench --bench checkout
//! ```

mod support;

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum_core::extract::FromRequestParts;
use axum_tcp_pool::{TcpConnection, TcpPool, TcpPoolLayer};
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, StatusCode};
use support::{exchange, Checks, EchoBackend};
use tokio::runtime::Runtime;
use tower::{service_fn, Layer, Service, ServiceExt};

const POOL_SIZE: u32 = 8;
const CONTENDED_TASKS: u64 = 64;

/// One way of checking a connection out and back in.
#[derive(Clone)]
enum Target<S> {
    Bb8(bb8::Pool<support::Bb8Tcp>),
    TcpPool(TcpPool),
    Layer(S),
    Deadpool(deadpool::managed::Pool<support::DeadpoolTcp>),
    RoundTrip(TcpPool),
}

impl<S> Target<S>
where
    S: Service<Request<()>, Response = axum_core::response::Response, Error = Infallible>,
{
    async fn cycle(&mut self) {
        match self {
            Target::Bb8(pool) => drop(pool.get_owned().await.expect("bb8 checkout")),
            Target::TcpPool(pool) => drop(pool.get().await.expect("checkout")),
            Target::Layer(svc) => {
                let res = match svc.ready().await {
                    Ok(svc) => svc.call(Request::new(())).await,
                    Err(e) => match e {},
                };
                let status = match res {
                    Ok(res) => res.status(),
                    Err(e) => match e {},
                };
                assert_eq!(status, StatusCode::OK, "layer checkout");
            }
            Target::Deadpool(pool) => drop(pool.get().await.expect("deadpool checkout")),
            Target::RoundTrip(pool) => {
                let mut conn = pool.get().await.expect("checkout");
                exchange(&mut conn).await.expect("round trip");
            }
        }
    }
}

/// Runs `iters` cycles spread over `tasks` tasks and returns the time for `iters` cycles.
async fn run<S>(target: &Target<S>, tasks: u64, iters: u64) -> Duration
where
    S: Service<Request<()>, Response = axum_core::response::Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    let per_task = iters.div_ceil(tasks).max(1);
    let mut set = tokio::task::JoinSet::new();
    let start = Instant::now();
    for _ in 0..tasks {
        let mut target = target.clone();
        set.spawn(async move {
            for _ in 0..per_task {
                target.cycle().await;
            }
        });
    }
    while let Some(joined) = set.join_next().await {
        joined.expect("bench task");
    }
    start
        .elapsed()
        .mul_f64(iters as f64 / (per_task * tasks) as f64)
}

fn checkout(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("build the Tokio runtime");
    let rt: &Runtime = &rt;
    let (_backend, pool, bb8_peek, bb8_noio, deadpool) = rt.block_on(async {
        let backend = EchoBackend::start().await.expect("echo backend");
        let pool = TcpPool::builder(backend.addr_string())
            .max_size(POOL_SIZE)
            .min_idle(POOL_SIZE)
            .idle_timeout(None)
            .connect()
            .await
            .expect("connect the pool to the echo backend");
        let addr = backend.addr_string();
        let bb8_pool = |checks| support::bb8_pool(&addr, checks, POOL_SIZE, Some(POOL_SIZE));
        let bb8_peek = bb8_pool(Checks::Peek).await.expect("bb8 pool");
        let bb8_noio = bb8_pool(Checks::NoIo).await.expect("bb8 pool");
        let deadpool = support::deadpool_pool(&backend.addr_string(), POOL_SIZE as usize);
        // Open all of deadpool's connections up front, as min_idle does for the others.
        let held: Vec<_> = futures_util::future::join_all((0..POOL_SIZE).map(|_| deadpool.get()))
            .await
            .into_iter()
            .map(|c| c.expect("deadpool connect"))
            .collect();
        drop(held);
        (backend, pool, bb8_peek, bb8_noio, deadpool)
    });
    // Wait (bounded) until the bb8 pools have opened min_idle connections.
    for _ in 0..500 {
        if pool.state().idle == POOL_SIZE
            && bb8_peek.state().idle_connections == POOL_SIZE
            && bb8_noio.state().idle_connections == POOL_SIZE
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }

    // The inner service of the layer benches: take the connection out of the request, as a
    // handler's extractor does, and drop it (back to the pool).
    let inner = service_fn(|req: Request<()>| async move {
        let (mut parts, ()) = req.into_parts();
        let conn = <TcpConnection>::from_request_parts(&mut parts, &()).await;
        Ok::<_, Infallible>(match conn {
            Ok(_) => StatusCode::OK,
            Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
        })
    });
    let eager = TcpPoolLayer::new(pool.clone()).layer(inner);
    let lazy = TcpPoolLayer::new(pool.clone()).lazy().layer(inner);

    let targets = [
        ("bb8_get_owned", Target::Bb8(bb8_peek.clone())),
        ("bb8_get_owned_noio", Target::Bb8(bb8_noio.clone())),
        ("tcp_pool_get", Target::TcpPool(pool.clone())),
        ("layer_eager", Target::Layer(eager)),
        ("layer_lazy", Target::Layer(lazy)),
        ("deadpool_get", Target::Deadpool(deadpool.clone())),
        ("round_trip_16b", Target::RoundTrip(pool.clone())),
    ];

    let mut group = c.benchmark_group("single");
    for (name, target) in &targets {
        group.bench_function(*name, |b| {
            b.to_async(rt).iter_custom(|iters| run(target, 1, iters))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("contended_64_tasks_pool_8");
    for (name, target) in targets.iter().filter(|(name, _)| *name != "round_trip_16b") {
        group.bench_function(*name, |b| {
            b.to_async(rt)
                .iter_custom(|iters| run(target, CONTENDED_TASKS, iters))
        });
    }
    group.finish();

    let state = pool.state();
    assert_eq!(
        state.discards.total(),
        0,
        "every connection should have gone back clean: {state:?}"
    );
    assert!(
        state.connections <= POOL_SIZE,
        "the pool stayed within max_size: {state:?}"
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .measurement_time(Duration::from_millis(1500))
        .warm_up_time(Duration::from_millis(500));
    targets = checkout
}
criterion_main!(benches);
