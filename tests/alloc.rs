//! Heap allocations on the layer's hot path, counted with a counting global allocator:
//! a checkout that finds an idle connection, through the tower service, without HTTP.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use axum_tcp_pool::{TcpPool, TcpPoolLayer};
use common::Backend;
use tower::{service_fn, Layer, ServiceExt};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: delegates to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations per request through `layer`, after a warm-up, with an idle connection ready.
async fn allocations_per_request(layer: TcpPoolLayer) -> f64 {
    let svc = layer.layer(service_fn(|_req: http::Request<()>| async {
        Ok::<_, Infallible>(())
    }));
    const N: usize = 1000;
    for _ in 0..100 {
        let _ = svc.clone().oneshot(http::Request::new(())).await;
    }
    // The counter sees every thread of the test process: keep the quietest of a few rounds.
    let mut quietest = f64::MAX;
    for _ in 0..5 {
        let before = ALLOCATIONS.load(Relaxed);
        for _ in 0..N {
            let res = svc.clone().oneshot(http::Request::new(())).await;
            assert!(res.is_ok());
        }
        let per_request = (ALLOCATIONS.load(Relaxed) - before) as f64 / N as f64;
        quietest = quietest.min(per_request);
    }
    quietest
}

#[tokio::test(flavor = "current_thread")]
async fn eager_checkout_allocations_per_request() {
    let backend = Backend::start().await;
    let pool = TcpPool::builder(backend.addr_string())
        .max_size(1)
        .build()
        .expect("pool");
    let eager = allocations_per_request(TcpPoolLayer::new(pool.clone())).await;
    let lazy = allocations_per_request(TcpPoolLayer::new(pool.clone()).lazy()).await;
    println!("allocations per request: eager {eager:.2}, lazy {lazy:.2}");
    // Lazy mode only inserts the pool into the request's extensions: http's extension map,
    // its table and the boxed value, 3 allocations. Eager mode checks a connection out as
    // well, in a recycled box: nothing more.
    assert!(lazy <= 3.0, "lazy layer: {lazy} allocations per request");
    assert!(
        eager <= lazy,
        "eager checkout allocates: {eager} vs lazy {lazy}"
    );
    assert_eq!(
        pool.state().connections,
        1,
        "every request reused the one connection"
    );
}
