//! Several backends behind one pool: [`Replicas`] starts N [`Backend`]s and builds a pool
//! over them (one endpoint each), and [`routes`] are the handlers that say which endpoint
//! served a request.

use axum::extract::Path;
use axum::routing::get;
use axum::Router;
use axum_tcp_pool::{EndpointState, TcpConnection, TcpPool, TcpPoolBuilder, TcpPoolError};
use tokio::io::AsyncWriteExt;

use crate::backend::{Backend, Seen};
use crate::echo::read_line;

/// N backends on 127.0.0.1, each on its own port.
pub struct Replicas {
    pub backends: Vec<Backend>,
}

impl Replicas {
    /// Starts `n` backends (at least one).
    pub async fn start(n: usize) -> Replicas {
        assert!(n > 0, "at least one backend");
        let mut backends = Vec::with_capacity(n);
        for _ in 0..n {
            backends.push(Backend::start().await);
        }
        Replicas { backends }
    }

    /// The endpoint addresses, in backend order.
    pub fn addrs(&self) -> Vec<String> {
        self.backends.iter().map(Backend::addr_string).collect()
    }

    /// A pool builder with every backend as an endpoint, in order.
    pub fn builder(&self) -> TcpPoolBuilder {
        builder_for(&self.addrs())
    }

    /// Backend `i`.
    pub fn backend(&self, i: usize) -> &Backend {
        &self.backends[i]
    }

    /// What each backend has seen, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.backends.iter().map(Backend::seen).collect()
    }

    /// The index of the backend at `addr`.
    pub fn index_of(&self, addr: &str) -> Option<usize> {
        self.backends.iter().position(|b| b.addr_string() == addr)
    }

    /// The pool's state of backend `i`'s endpoint (`None` if the pool does not have it).
    pub fn endpoint_state<M>(&self, pool: &TcpPool<M>, i: usize) -> Option<EndpointState> {
        endpoint_state(pool, &self.backends[i].addr_string())
    }
}

/// A pool builder over `addrs` (at least one): the first is the builder's address, the others
/// are added with `endpoint`.
pub fn builder_for(addrs: &[String]) -> TcpPoolBuilder {
    let mut builder = TcpPool::builder(addrs[0].clone());
    for addr in &addrs[1..] {
        builder = builder.endpoint(addr.clone());
    }
    builder
}

/// The pool's state of the endpoint at `addr`, if it has one.
pub fn endpoint_state<M>(pool: &TcpPool<M>, addr: &str) -> Option<EndpointState> {
    pool.state().endpoints.into_iter().find(|e| e.addr == addr)
}

/// Echoes the request's tag through the backend and answers `<endpoint> <tag>`.
async fn who(Path(tag): Path<String>, mut conn: TcpConnection) -> Result<String, TcpPoolError> {
    conn.write_all(format!("ECHO {tag}\n").as_bytes()).await?;
    let reply = read_line(&mut conn).await?;
    Ok(format!("{} {reply}", conn.endpoint()))
}

/// Holds the connection until the backend is released, then answers `<endpoint> <tag>`.
async fn hold(Path(tag): Path<String>, mut conn: TcpConnection) -> Result<String, TcpPoolError> {
    conn.write_all(format!("HOLD {tag}\n").as_bytes()).await?;
    let reply = read_line(&mut conn).await?;
    Ok(format!("{} {reply}", conn.endpoint()))
}

/// `/who/{tag}` and `/hold/{tag}` behind an eager layer over `pool`.
pub fn routes(pool: &TcpPool) -> Router {
    Router::new()
        .route("/who/{tag}", get(who))
        .route("/hold/{tag}", get(hold))
        .layer(axum_tcp_pool::TcpPoolLayer::new(pool.clone()))
}

/// Splits a `/who` or `/hold` reply into the endpoint and the tag.
pub fn split_reply(body: &str) -> Option<(&str, &str)> {
    body.split_once(' ')
}

/// Waits until `cond` holds for the pool's state of the endpoint at `addr` (`None`: the pool
/// does not have it). The pool has no change notification, so this polls `pool.state()`
/// every 2 ms (a short sleep, not a timed wait), bounded by [`BOUND`](crate::BOUND).
pub async fn wait_endpoint<M>(
    pool: &TcpPool<M>,
    addr: &str,
    what: &str,
    cond: impl Fn(Option<&EndpointState>) -> bool,
) -> Option<EndpointState> {
    crate::wait::bounded(what, async {
        loop {
            let e = endpoint_state(pool, addr);
            if cond(e.as_ref()) {
                return e;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    })
    .await
}

/// Waits until `cond` holds for the pool's state, polling as [`wait_endpoint`] does.
pub async fn wait_state<M>(
    pool: &TcpPool<M>,
    what: &str,
    cond: impl Fn(&axum_tcp_pool::PoolState) -> bool,
) -> axum_tcp_pool::PoolState {
    crate::wait::bounded(what, async {
        loop {
            let s = pool.state();
            if cond(&s) {
                return s;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    })
    .await
}
