//! A key-value HTTP API in front of a real memcached, one pooled connection per request,
//! speaking memcached's text protocol through `PooledFramed` and a small codec.
//!
//! The router, its handlers and the codec are in `testkit/src/memcached_kv/`
//! (`testkit::memcached_kv`), where `tests/memcached.rs` drives the very same app against a
//! `memcached` it starts itself; the module docs there list the routes and what they show.
//! This file only runs it.
//!
//! ```text
//! GET    /kv/{key}       200 with the value (bytes, as stored) | 404
//! PUT    /kv/{key}       body = the value: 204 | 413 over memcached's item size limit (1 MiB)
//! DELETE /kv/{key}       204, fire-and-forget (`delete <key> noreply`)
//! DELETE /kv             204: `flush_all`
//! GET    /mget/{a,b,..}  200, one `<key>=<value>` line per key found (pipelined gets)
//! GET    /health         200 when memcached answers `version` | 503
//! GET    /stats          the pool's sizes and counters (takes no connection)
//! ```
//!
//! It needs a running memcached; it does not start one. `MEMCACHED_ADDR` says where
//! (default `127.0.0.1:11211`), `PORT` is the HTTP port (default 3000). From the repository
//! root:
//!
//! ```text
//! memcached -l 127.0.0.1 -p 11211 -U 0 -d      # add `-u root` when running as root
//! cargo run --example memcached_kv
//! ```
//!
//! then:
//!
//! ```text
//! curl -X PUT localhost:3000/kv/hello --data-binary world
//! curl localhost:3000/kv/hello
//! curl localhost:3000/mget/hello,other
//! curl -X DELETE localhost:3000/kv/hello
//! curl localhost:3000/health
//! ```
//!
//! Stop it with Ctrl-C (requests in flight finish).

use std::process::ExitCode;

use testkit::example;
use testkit::memcached_kv::{app, pool_builder, DEFAULT_MEMCACHED_ADDR};

#[tokio::main]
async fn main() -> ExitCode {
    example::init_logging();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("memcached_kv: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    let memcached =
        std::env::var("MEMCACHED_ADDR").unwrap_or_else(|_| DEFAULT_MEMCACHED_ADDR.to_owned());

    // `connect()` waits for `min_idle` connections, so a missing memcached stops us here.
    let pool = pool_builder(&memcached)
        .min_idle(2)
        .connect()
        .await
        .map_err(|e| {
            format!(
                "no memcached at {memcached} ({e}). Start one with \
                 `memcached -l 127.0.0.1 -p 11211 -U 0 -d` (add `-u root` as root), \
                 or set MEMCACHED_ADDR to where yours listens"
            )
        })?;

    println!("memcached at {memcached}");
    example::serve(
        app(pool),
        &[
            "-X PUT /kv/hello --data-binary world",
            "/kv/hello",
            "/mget/hello,other",
            "-X DELETE /kv/hello",
            "/health",
            "/stats",
        ],
    )
    .await
    .map_err(|e| e.to_string())
}
