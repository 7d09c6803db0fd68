//! A key-value HTTP API in front of a real Redis server, one pooled connection per request,
//! speaking RESP through the `redis-protocol` codec.
//!
//! The router and its handlers are in `testkit/src/redis_kv/` (`testkit::redis_kv`), where
//! `tests/redis.rs` drives the very same app against a `redis-server` it starts itself; the
//! module docs there list the routes and what they show. This file only runs it.
//!
//! ```text
//! GET    /kv/{key}   200 with the value (bytes, as stored) | 404
//! PUT    /kv/{key}   body = the value (any bytes, up to 4 MiB): 204 | 413 if larger
//! DELETE /kv/{key}   204 | 404
//! GET    /health     200 when Redis answers PING | 503
//! GET    /stats      the pool's sizes and counters (takes no connection)
//! ```
//!
//! A key is one URL path segment, percent-decoded, and must be UTF-8 (`400` otherwise);
//! values are any bytes.
//!
//! It needs a running Redis; it does not start one. `REDIS_ADDR` says where (default
//! `127.0.0.1:6379`), `PORT` is the HTTP port (default 3000). From the repository root:
//!
//! ```text
//! redis-server --bind 127.0.0.1 --port 6379 --save '' --appendonly no --daemonize yes && cargo run --example redis_kv
//! ```
//!
//! then:
//!
//! ```text
//! curl -X PUT localhost:3000/kv/hello --data-binary world
//! curl localhost:3000/kv/hello
//! curl -X DELETE localhost:3000/kv/hello
//! curl localhost:3000/health
//! ```
//!
//! Stop it with Ctrl-C (requests in flight finish), and that Redis with
//! `redis-cli -p 6379 shutdown nosave`.

use std::process::ExitCode;

use testkit::example;
use testkit::redis_kv::{app, pool_builder, DEFAULT_REDIS_ADDR};

#[tokio::main]
async fn main() -> ExitCode {
    example::init_logging();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("redis_kv: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    let redis = std::env::var("REDIS_ADDR").unwrap_or_else(|_| DEFAULT_REDIS_ADDR.to_owned());

    // `connect()` waits for `min_idle` connections, so a missing Redis stops us here.
    let pool = pool_builder(&redis).min_idle(2).connect().await.map_err(|e| {
        format!(
            "no Redis at {redis} ({e}). Start one with \
             `redis-server --bind 127.0.0.1 --port 6379 --save '' --appendonly no --daemonize yes`, \
             or set REDIS_ADDR to where yours listens"
        )
    })?;

    println!("Redis at {redis}");
    example::serve(
        app(pool),
        &[
            "-X PUT /kv/hello --data-binary world",
            "/kv/hello",
            "-X DELETE /kv/hello",
            "/health",
            "/stats",
        ],
    )
    .await
    .map_err(|e| e.to_string())
}
