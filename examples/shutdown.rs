//! A graceful shutdown: the server stops accepting and finishes the requests in flight, then
//! the pool closes its connections, then the process exits.
//!
//! What it shows:
//!
//! - `axum::serve(..).with_graceful_shutdown(signal)`: on the signal (Ctrl-C, or here a
//!   timer so the example ends by itself) no new connection is accepted and the requests in
//!   flight run to their end, each with its pooled connection;
//! - [`TcpPool::close`] after `serve` has returned: checkouts fail with
//!   [`TcpPoolError::Closed`](axum_tcp_pool::TcpPoolError::Closed) (`503`), idle connections
//!   close at once, those still in use when they come back, and the future resolves when
//!   none is open; bounded here by a timeout, in case a background task keeps one;
//! - [`TcpPool::state`] before and after.
//!
//! It needs nothing installed and ends by itself in about a second: the backend (a line echo
//! protocol whose `HOLD` command answers only when told to) runs in the same process, on a
//! free loopback port.
//!
//! ```text
//! cargo run --example shutdown
//! ```

use std::future::IntoFuture;
use std::time::Duration;

use axum::extract::Path;
use axum::routing::get;
use axum::Router;
use axum_tcp_pool::{TcpConnection, TcpPool, TcpPoolError, TcpPoolLayer};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use testkit::{read_line, Backend, HttpClient};

/// A slow request: the backend answers `HOLD` only once released.
async fn slow(Path(tag): Path<String>, mut conn: TcpConnection) -> Result<String, TcpPoolError> {
    conn.write_all(format!("HOLD {tag}\n").as_bytes()).await?;
    Ok(read_line(&mut conn).await?)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    testkit::example::init_logging();
    let backend = Backend::start().await;
    let pool = TcpPool::builder(backend.addr_string())
        .max_size(8)
        .min_idle(2)
        .build()?;
    let app = Router::new()
        .route("/slow/{tag}", get(slow))
        .route_layer(TcpPoolLayer::new(pool.clone()));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;

    // The shutdown signal: Ctrl-C, or (so that the example ends by itself) once three slow
    // requests are in flight.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = stop_rx => {}
        }
        println!("shutdown signal: no new connections; finishing the requests in flight");
    };
    let server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(signal)
            .into_future(),
    );

    let client = HttpClient::new(addr);
    let in_flight: Vec<_> = (0..3)
        .map(|i| client.spawn_get(&format!("/slow/r{i}")))
        .collect();
    backend
        .wait_for("3 requests in flight", |s| s.holding == 3)
        .await;
    let s = pool.state();
    println!(
        "in flight: {} connections in use, {} idle",
        s.in_use, s.idle
    );
    let _ = stop_tx.send(());
    // The backend answers a moment later; the requests finish during the shutdown.
    tokio::time::sleep(Duration::from_millis(300)).await;
    backend.release();
    for h in in_flight {
        let r = h.await?;
        println!(
            "request finished during the shutdown: {} {}",
            r.status, r.body
        );
    }

    server.await??;
    println!("server stopped; closing the pool");
    match tokio::time::timeout(Duration::from_secs(10), pool.close()).await {
        Ok(()) => {}
        Err(_) => println!("some connection was still in use after 10 s; exiting anyway"),
    }
    let s = pool.state();
    println!(
        "pool closed: {} open, {} opened in all; a checkout now gets: {}",
        s.connections,
        s.connections_created,
        pool.get()
            .await
            .err()
            .map_or("a connection".into(), |e| e.to_string())
    );
    Ok(())
}
