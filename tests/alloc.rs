//! Heap allocations on the layer's hot path, counted with a counting global allocator:
//! a checkout that finds an idle connection, through the tower service and through an axum
//! router, without HTTP.

use std::alloc::{GlobalAlloc, Layout, System};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use axum_tcp_pool::{TcpConnection, TcpPool, TcpPoolLayer};
use testkit::Backend;
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

/// The counter is process-wide: the tests of this file take turns.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The quietest of five rounds of `N` calls of `request` (the counter sees every thread of
/// the test process), after a warm-up.
async fn quietest_per_call<F: std::future::Future<Output = ()>>(
    mut request: impl FnMut() -> F,
) -> f64 {
    const N: usize = 1000;
    for _ in 0..100 {
        request().await;
    }
    let mut quietest = f64::MAX;
    for _ in 0..5 {
        let before = ALLOCATIONS.load(Relaxed);
        for _ in 0..N {
            request().await;
        }
        quietest = quietest.min((ALLOCATIONS.load(Relaxed) - before) as f64 / N as f64);
    }
    quietest
}

/// Allocations per request through `layer`, after a warm-up, with an idle connection ready.
async fn allocations_per_request(layer: TcpPoolLayer) -> f64 {
    let svc = layer.layer(service_fn(|_req: http::Request<()>| async {
        Ok::<_, Infallible>(())
    }));
    quietest_per_call(|| {
        let svc = svc.clone();
        async move {
            let res = svc.oneshot(http::Request::new(())).await;
            assert!(res.is_ok());
        }
    })
    .await
}

#[tokio::test(flavor = "current_thread")]
async fn eager_checkout_allocations_per_request() {
    let _turn = ONE_AT_A_TIME.lock().await;
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

/// Through an axum router, the layer costs what any layer that adds a request extension
/// costs, against the same handler getting its connection from a pool in `State`: the boxed
/// extension value, the extension map growing past axum's own three entries, and the boxed
/// future axum puts around every layered route. The checkout itself allocates nothing.
#[tokio::test(flavor = "current_thread")]
async fn router_layer_adds_three_allocations_over_a_pool_in_state() {
    let _turn = ONE_AT_A_TIME.lock().await;
    async fn from_state(State(pool): State<TcpPool>) -> &'static str {
        match pool.get().await {
            Ok(_conn) => "ok",
            Err(_) => "no",
        }
    }
    async fn from_layer(_conn: TcpConnection) -> &'static str {
        "ok"
    }
    async fn per_request(router: Router) -> f64 {
        quietest_per_call(|| {
            let router = router.clone();
            async move {
                let res = router
                    .oneshot(http::Request::new(axum::body::Body::empty()))
                    .await;
                assert!(matches!(res, Ok(ref r) if r.status() == 200), "{res:?}");
            }
        })
        .await
    }

    let backend = Backend::start().await;
    let pool = TcpPool::builder(backend.addr_string())
        .max_size(1)
        .build()
        .expect("pool");
    let state = per_request(
        Router::new()
            .route("/", get(from_state))
            .with_state(pool.clone()),
    )
    .await;
    let eager = per_request(
        Router::new()
            .route("/", get(from_layer))
            .layer(TcpPoolLayer::new(pool.clone()))
            .with_state(()),
    )
    .await;
    let lazy = per_request(
        Router::new()
            .route("/", get(from_layer))
            .layer(TcpPoolLayer::new(pool.clone()).lazy())
            .with_state(()),
    )
    .await;
    println!("allocations per request: State {state:.2}, eager {eager:.2}, lazy {lazy:.2}");
    assert!(
        eager - state <= 3.0,
        "eager layer: {eager} allocations per request vs {state} with the pool in State"
    );
    assert!(
        lazy - state <= 3.0,
        "lazy layer: {lazy} allocations per request vs {state} with the pool in State"
    );
    assert_eq!(
        pool.state().connections,
        1,
        "every request reused the one connection"
    );
}

/// Checkouts that wait at the same time (more requests in flight than connections) each need
/// a box for bb8's checkout future; once warm, those boxes are recycled too.
#[tokio::test(flavor = "current_thread")]
async fn overlapping_eager_checkouts_recycle_their_boxes() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let backend = Backend::start().await;
    let pool = TcpPool::builder(backend.addr_string())
        .max_size(2)
        .build()
        .expect("pool");
    async fn per_request(layer: TcpPoolLayer) -> f64 {
        // The handler yields while holding its connection, so that the 16 requests of a
        // batch wait for the pool's 2 connections at the same time.
        let svc = layer.layer(service_fn(|req: http::Request<()>| async move {
            let (mut parts, ()) = req.into_parts();
            let conn =
                <TcpConnection as axum_core::extract::FromRequestParts<()>>::from_request_parts(
                    &mut parts,
                    &(),
                )
                .await;
            tokio::task::yield_now().await;
            Ok::<_, Infallible>(match conn {
                Ok(_) => http::StatusCode::OK,
                Err(_) => http::StatusCode::INTERNAL_SERVER_ERROR,
            })
        }));
        quietest_per_call(|| {
            let svc = svc.clone();
            async move {
                let batch = (0..16).map(|_| svc.clone().oneshot(http::Request::new(())));
                for res in futures_util::future::join_all(batch).await {
                    assert!(matches!(res, Ok(ref r) if r.status() == 200));
                }
            }
        })
        .await
            / 16.0
    }
    let eager = per_request(TcpPoolLayer::new(pool.clone())).await;
    let lazy = per_request(TcpPoolLayer::new(pool.clone()).lazy()).await;
    println!("allocations per overlapping request: eager {eager:.2}, lazy {lazy:.2}");
    assert!(
        eager <= lazy,
        "overlapping eager checkouts allocate: {eager} vs lazy {lazy}"
    );
    assert!(pool.state().connections <= 2);
}

/// A framed exchange (`TcpConnection::framed`, one line sent, one read) against the same
/// exchange on the plain connection: 4 more, all `tokio-util`'s and the codec's: `Framed`'s
/// two buffers (read and write, 8 KiB each), the shared header `bytes` allocates when the
/// codec splits the first frame off the read buffer, and the `String` the line codec decodes
/// into. Counting the replies and keeping the rule's state allocates nothing. The backend
/// runs on the same thread, so its own allocations are in both figures.
#[tokio::test(flavor = "current_thread")]
async fn a_framed_exchange_allocates_only_what_framed_and_its_codec_do() {
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_util::codec::LinesCodec;

    let _turn = ONE_AT_A_TIME.lock().await;
    let backend = Backend::start().await;
    let pool = TcpPool::builder(backend.addr_string())
        .max_size(1)
        .build()
        .expect("pool");
    let plain = quietest_per_call(|| async {
        let mut conn = pool.get().await.expect("checkout");
        conn.write_all(b"ECHO a\n").await.expect("write");
        let mut reply = [0u8; 8];
        let mut filled = 0;
        while !reply[..filled].ends_with(b"\n") {
            filled += conn.read(&mut reply[filled..]).await.expect("read");
        }
        assert_eq!(&reply[..filled], b"a\n");
    })
    .await;
    let framed = quietest_per_call(|| async {
        let mut framed = pool
            .get()
            .await
            .expect("checkout")
            .framed(LinesCodec::new());
        framed.send("ECHO a").await.expect("send");
        let line = framed.next().await.expect("a line").expect("decoded");
        assert_eq!(line, "a");
    })
    .await;
    println!("allocations per exchange: plain {plain:.2}, framed {framed:.2}");
    assert!(
        framed - plain <= 4.0,
        "a framed exchange: {framed} allocations vs {plain} on the plain connection"
    );
    let s = pool.state();
    assert_eq!(
        (s.connections, s.discards.total()),
        (1, 0),
        "every exchange reused the one connection: {s:?}"
    );
}
