//! Run-time changes to a pool's endpoints: DNS re-resolution (`resolve_endpoints`: a host
//! name's addresses are the endpoints, looked up again at an interval and when
//! `set_endpoints` names new hosts; `localhost` resolves to 127.0.0.1 here, loopback only),
//! and an endpoint removed and added back while it drains. (Balancing, ejection and
//! set changes under load: `tests/replicas.rs`.)

use std::time::Duration;

use axum_tcp_pool::{Balance, TcpPool, TcpPoolError};
use testkit::wait::wait_pool;
use testkit::Backend;

fn addrs(s: &axum_tcp_pool::PoolState) -> Vec<&str> {
    s.endpoints.iter().map(|e| e.addr.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_name_becomes_its_addresses_and_follows_set_endpoints() -> Result<(), TcpPoolError> {
    let (a, b) = (Backend::start().await, Backend::start().await);
    let (pa, pb) = (a.addr.port(), b.addr.port());
    let pool = TcpPool::builder(format!("localhost:{pa}"))
        .resolve_endpoints(Duration::from_millis(20))
        .build()?;
    // The name serves until its first lookup ends (no event to wait on: the state is polled).
    let conn = pool.get().await?;
    assert!(conn.endpoint() == format!("localhost:{pa}") || conn.endpoint() == a.addr.to_string());
    drop(conn);
    let ip_a = a.addr.to_string();
    let s = wait_pool(&pool, "the name resolved", |s| addrs(s) == [ip_a.as_str()]).await;
    eprintln!("resolved: {:?}", addrs(&s));
    let conn = pool.get().await?;
    assert_eq!(conn.endpoint(), ip_a);
    drop(conn);
    // The name's own endpoint was drained: no connection of it is left open.
    let s = wait_pool(&pool, "the name's endpoint drained", |s| s.connections == 1).await;
    assert_eq!(s.endpoints[0].connections, 1);

    // New names are resolved at once; the old address is removed and its connection closed.
    pool.set_endpoints([format!("localhost:{pb}")])?;
    let ip_b = b.addr.to_string();
    wait_pool(&pool, "the new name resolved", |s| {
        addrs(s) == [ip_b.as_str()]
    })
    .await;
    a.wait_for("a's connection closed", |s| s.open == 0).await;
    let conn = pool.get().await?;
    assert_eq!(conn.endpoint(), ip_b);
    // The backend counts an accept after the client's connect returns: wait for it.
    let seen = b.wait_for("b's accept", |s| s.accepts >= 1).await;
    assert_eq!(seen.accepts, 1, "one connection to b");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_resolver_ends_with_the_pool() -> Result<(), TcpPoolError> {
    let a = Backend::start().await;
    let pool = TcpPool::builder(format!("localhost:{}", a.addr.port()))
        .resolve_endpoints(Duration::from_millis(5))
        .build()?;
    let ip = a.addr.to_string();
    wait_pool(&pool, "resolved", |s| addrs(s) == [ip.as_str()]).await;
    drop(pool.get().await?);
    a.wait_for("one connection", |s| s.open == 1).await;
    // The resolver holds no handle of the pool between lookups: dropping the last handle
    // closes the pool and its connections.
    drop(pool);
    a.wait_for("the pool closed its connection", |s| s.open == 0)
        .await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_added_back_while_draining_keeps_its_limit() -> Result<(), TcpPoolError> {
    let (a, b) = (Backend::start().await, Backend::start().await);
    // Round robin, so the endpoint of each checkout is known: a, b, a, b, ...
    let pool = TcpPool::builder(a.addr_string())
        .endpoint(b.addr_string())
        .balance(Balance::RoundRobin)
        .max_size(1)
        .build()?;
    let held = pool.get().await?;
    assert_eq!(held.endpoint(), a.addr_string());
    // Removed and added back while its one connection is in use.
    pool.set_endpoints([b.addr_string()])?;
    pool.set_endpoints([a.addr_string(), b.addr_string()])?;
    // a is full (its max_size of 1 taken by `held`): checkouts pass it over for b, and a
    // never sees a second connection (a fresh endpoint for a would have opened one).
    for _ in 0..3 {
        assert_eq!(pool.get().await?.endpoint(), b.addr_string());
    }
    assert_eq!(
        a.seen().max_open,
        1,
        "a never saw two connections from the pool"
    );
    drop(held);
    // Round robin again: within two checkouts, one goes to a, on its kept connection.
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(pool.get().await?.endpoint().to_owned());
    }
    assert!(seen.contains(&a.addr_string()), "{seen:?}");
    assert_eq!(
        a.seen().accepts,
        1,
        "the revived endpoint kept its connection"
    );
    Ok(())
}
