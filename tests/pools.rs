//! Several pools in one router: each handler gets a connection to the backend of the pool its
//! marker names, whatever the mix of eager and lazy layers; a missing layer is a `500`.

use axum::routing::get;
use axum::Router;
use axum_tcp_pool::{TcpConnection, TcpPool, TcpPoolError, TcpPoolLayer};
use http::StatusCode;
use testkit::{assert_no_leak, read_line, serve, Backend, HttpClient};
use tokio::io::AsyncWriteExt;

/// Marks pool A.
enum A {}
/// Marks pool B.
enum B {}

/// One exchange, answered with the port of the backend that answered it.
async fn exchange<M>(conn: &mut TcpConnection<M>, text: &str) -> Result<String, TcpPoolError> {
    conn.write_all(format!("ECHO {text}\n").as_bytes()).await?;
    let reply = read_line(conn).await?;
    assert_eq!(reply, text, "the backend echoes");
    let tcp = conn.get_ref().tcp().expect("a TCP pool");
    Ok(tcp.peer_addr()?.port().to_string())
}

async fn only_a(mut a: TcpConnection<A>) -> Result<String, TcpPoolError> {
    exchange(&mut a, "a").await
}

async fn only_b(mut b: TcpConnection<B>) -> Result<String, TcpPoolError> {
    exchange(&mut b, "b").await
}

async fn both(mut a: TcpConnection<A>, mut b: TcpConnection<B>) -> Result<String, TcpPoolError> {
    let a = exchange(&mut a, "both-a").await?;
    let b = exchange(&mut b, "both-b").await?;
    Ok(format!("{a} {b}"))
}

/// The default marker beside a named one.
async fn unit_and_a(
    mut unit: TcpConnection,
    mut a: TcpConnection<A>,
) -> Result<String, TcpPoolError> {
    let unit = exchange(&mut unit, "unit").await?;
    let a = exchange(&mut a, "unit-a").await?;
    Ok(format!("{unit} {a}"))
}

async fn optional_b(b: Option<TcpConnection<B>>) -> &'static str {
    if b.is_some() {
        "some"
    } else {
        "none"
    }
}

fn routes() -> Router {
    Router::new()
        .route("/a", get(only_a))
        .route("/b", get(only_b))
        .route("/both", get(both))
        .route("/optional-b", get(optional_b))
}

fn layer<M>(pool: &TcpPool<M>, lazy: bool) -> TcpPoolLayer<M> {
    let layer = TcpPoolLayer::new(pool.clone());
    if lazy {
        layer.lazy()
    } else {
        layer
    }
}

struct Setup {
    a: Backend,
    b: Backend,
    pool_a: TcpPool<A>,
    pool_b: TcpPool<B>,
    client: HttpClient,
}

/// Two backends, a pool of each marker, and one router with both layers.
async fn setup(lazy_a: bool, lazy_b: bool) -> Setup {
    let (a, b) = (Backend::start().await, Backend::start().await);
    let pool_a: TcpPool<A> = TcpPool::builder(a.addr_string())
        .name("a")
        .build()
        .expect("pool a")
        .with_marker();
    let pool_b: TcpPool<B> = TcpPool::builder(b.addr_string())
        .name("b")
        .build()
        .expect("pool b")
        .with_marker();
    let app = routes()
        .layer(layer(&pool_a, lazy_a))
        .layer(layer(&pool_b, lazy_b));
    let client = HttpClient::new(serve(app).await);
    Setup {
        a,
        b,
        pool_a,
        pool_b,
        client,
    }
}

/// Every mix of eager and lazy: each handler talked to its own backend, and only to it.
#[tokio::test]
async fn each_handler_reaches_the_backend_of_its_marker() {
    for (lazy_a, lazy_b) in [(false, false), (true, true), (false, true), (true, false)] {
        let mode = format!("lazy_a={lazy_a} lazy_b={lazy_b}");
        let s = setup(lazy_a, lazy_b).await;
        let (port_a, port_b) = (s.a.addr.port().to_string(), s.b.addr.port().to_string());

        let res = s.client.get("/a").await;
        assert_eq!(res.status, StatusCode::OK, "{mode}: {res:?}");
        assert_eq!(res.body, port_a, "{mode}: /a answered by backend A");
        let res = s.client.get("/b").await;
        assert_eq!(res.status, StatusCode::OK, "{mode}: {res:?}");
        assert_eq!(res.body, port_b, "{mode}: /b answered by backend B");
        let res = s.client.get("/both").await;
        assert_eq!(res.status, StatusCode::OK, "{mode}: {res:?}");
        assert_eq!(res.body, format!("{port_a} {port_b}"), "{mode}: /both");

        // The backends saw exactly their own commands: /a and /both on A, /b and /both on B.
        assert_eq!(s.a.seen().lines, 2, "{mode}: lines on A");
        assert_eq!(s.b.seen().lines, 2, "{mode}: lines on B");
        // Each pool opened connections to its own backend only, and got them all back clean.
        testkit::wait_pool(&s.pool_a, "pool A idle", |st| st.in_use == 0).await;
        testkit::wait_pool(&s.pool_b, "pool B idle", |st| st.in_use == 0).await;
        for (name, pool, backend) in [("A", s.pool_a.state(), &s.a), ("B", s.pool_b.state(), &s.b)]
        {
            let created = pool.connections_created as usize;
            backend
                .wait_for(
                    &format!("{mode}: pool {name} connects to backend {name}"),
                    |seen| seen.accepts == created,
                )
                .await;
            assert_eq!(pool.discards.total(), 0, "{mode}: pool {name} discards");
        }
    }
}

/// Lazy layers check out only from the pools a handler asks for; eager ones from every pool
/// whose layer wraps the route.
#[tokio::test]
async fn lazy_layers_check_out_only_the_pool_a_handler_takes() {
    let s = setup(true, true).await;
    for _ in 0..3 {
        assert_eq!(s.client.get("/a").await.status, StatusCode::OK);
    }
    assert_eq!(s.pool_a.state().gets, 3);
    assert_eq!(s.pool_b.state().gets, 0, "no checkout from B for /a");
    assert_eq!(s.b.seen().accepts, 0, "backend B never connected to");

    let s = setup(false, true).await;
    assert_eq!(s.client.get("/b").await.status, StatusCode::OK);
    assert_eq!(
        s.pool_a.state().gets,
        1,
        "the eager layer of A checks out for /b too"
    );
    assert_eq!(s.a.seen().lines, 0, "but /b never talks to A");
    assert_eq!(s.pool_b.state().gets, 1);
}

/// The default marker `()` and a named one, on one router.
#[tokio::test]
async fn default_marker_and_named_marker_side_by_side() {
    let (unit_backend, a_backend) = (Backend::start().await, Backend::start().await);
    let unit_pool = TcpPool::builder(unit_backend.addr_string())
        .build()
        .expect("pool");
    let pool_a = TcpPool::builder(a_backend.addr_string())
        .build()
        .expect("pool a")
        .with_marker::<A>();
    let app = Router::new()
        .route("/", get(unit_and_a))
        .layer(TcpPoolLayer::new(unit_pool.clone()))
        .layer(TcpPoolLayer::new(pool_a.clone()).lazy());
    let client = HttpClient::new(serve(app).await);
    let res = client.get("/").await;
    assert_eq!(res.status, StatusCode::OK, "{res:?}");
    assert_eq!(
        res.body,
        format!("{} {}", unit_backend.addr.port(), a_backend.addr.port())
    );
    assert_eq!(unit_backend.seen().lines, 1);
    assert_eq!(a_backend.seen().lines, 1);
}

/// A handler asking for a marker whose layer is not on the router: the generic `500`, which
/// names neither the marker nor anything internal; the other pool's routes keep working.
#[tokio::test]
async fn a_missing_marker_layer_is_a_500() {
    for lazy in [false, true] {
        let a = Backend::start().await;
        let pool_a = TcpPool::builder(a.addr_string())
            .build()
            .expect("pool a")
            .with_marker::<A>();
        let client = HttpClient::new(serve(routes().layer(layer(&pool_a, lazy))).await);

        let res = client.get("/b").await;
        assert_eq!(res.status, StatusCode::INTERNAL_SERVER_ERROR, "{res:?}");
        assert!(res.body.contains("TcpPoolLayer"), "{res:?}");
        assert!(!res.body.contains("pools::"), "no type names: {res:?}");
        assert_no_leak(&res.body, &a);

        let res = client.get("/both").await;
        assert_eq!(res.status, StatusCode::INTERNAL_SERVER_ERROR, "{res:?}");

        assert_eq!(client.get("/optional-b").await.body, "none");
        let res = client.get("/a").await;
        assert_eq!(res.status, StatusCode::OK, "{res:?}");
        assert_eq!(res.body, a.addr.port().to_string());
        testkit::wait_pool(&pool_a, "pool A idle", |st| st.in_use == 0).await;
        assert_eq!(pool_a.state().discards.total(), 0, "lazy={lazy}");
    }
}

/// `Option<TcpConnection<B>>` sees B's layer, not A's.
#[tokio::test]
async fn optional_extractor_is_per_marker() {
    let s = setup(true, false).await;
    assert_eq!(s.client.get("/optional-b").await.body, "some");
}

/// Two eager layers of one marker on a route: the outer one checks out, the inner one passes
/// the request on. (Before, the inner one waited for a second connection while the outer held
/// the first: with `max_size(1)` every request timed out with a `503`.)
#[tokio::test]
async fn two_layers_of_one_marker_check_out_once() {
    let a = Backend::start().await;
    let pool: TcpPool<A> = TcpPool::builder(a.addr_string())
        .max_size(1)
        .checkout_timeout(std::time::Duration::from_secs(2))
        .build()
        .expect("pool")
        .with_marker();
    for (outer_lazy, inner_lazy) in [(false, false), (true, false), (false, true), (true, true)] {
        let mode = format!("outer_lazy={outer_lazy} inner_lazy={inner_lazy}");
        let app = Router::new()
            .route("/a", get(only_a))
            .layer(layer(&pool, inner_lazy))
            .layer(layer(&pool, outer_lazy));
        let client = HttpClient::new(serve(app).await);
        for _ in 0..3 {
            let res = client.get("/a").await;
            assert_eq!(res.status, StatusCode::OK, "{mode}: {res:?}");
            assert_eq!(res.body, a.addr.port().to_string(), "{mode}");
        }
    }
    let state = pool.state();
    assert_eq!(state.gets, 12, "one checkout per request: {state:?}");
    assert_eq!(state.connections_created, 1, "{state:?}");
    assert_eq!(state.gets_timed_out, 0, "{state:?}");
    assert_eq!(state.in_use, 0, "{state:?}");
}
