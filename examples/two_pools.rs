//! Two backends, two pools, one router: a cache and a legacy user directory, each handler
//! choosing its pool by type.
//!
//! What it shows:
//!
//! - marker types (`Cache`, `Legacy`) that name the pools: `TcpPool<Cache>`, and handlers
//!   that take `TcpConnection<Cache>` or `TcpConnection<Legacy>` (or both). A handler cannot
//!   be handed the other backend's connection: that is a type error, not a runtime surprise;
//! - one [`TcpPoolLayer`] per pool on the same router; lazy checkout, so each route opens a
//!   connection only to the backends its handler asks for;
//! - [`TcpPoolBuilder::name`](axum_tcp_pool::TcpPoolBuilder::name), which labels each
//!   pool's logs (and metrics, with the `metrics` feature);
//! - a read-through handler that uses both: the cache first, the directory on a miss.
//!
//! To run with nothing else installed, the example starts both backends in the same
//! process, on free loopback ports. Their line protocols differ, as real ones would:
//!
//! ```text
//! cache:      GET key -> VALUE <value> | NOT_FOUND        SET key value -> OK
//! directory:  LOOKUP id -> USER <name> | NO_SUCH_USER
//! ```
//!
//! Run it (the HTTP port is 3000, or `PORT`):
//!
//! ```text
//! cargo run --example two_pools
//! ```
//!
//! and try it:
//!
//! ```text
//! curl localhost:3000/directory/1     # the legacy directory only
//! curl localhost:3000/users/1         # cache miss: asks the directory, fills the cache
//! curl localhost:3000/cache/user:1    # the cache only: now holds the name
//! curl localhost:3000/stats           # both pools
//! ```
//!
//! Stop it with Ctrl-C.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use axum_tcp_pool::{TcpConnection, TcpPool, TcpPoolError, TcpPoolLayer};
use tokio::io::AsyncWriteExt;

use testkit::example::{self, read_reply, unexpected_reply};

/// Marks the cache's pool and its connections.
enum Cache {}
/// Marks the legacy user directory's pool and its connections.
enum Legacy {}

/// The longest line, command or reply, either side accepts (newline included).
const MAX_LINE: u64 = 4096;

#[derive(Clone)]
struct Pools {
    cache: TcpPool<Cache>,
    legacy: TcpPool<Legacy>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    example::init_logging();

    // The backends: in a real service, the addresses of your cache and legacy system.
    let cache_addr = example::spawn_kv_backend(MAX_LINE).await?;
    let legacy_addr = example::spawn_line_backend(MAX_LINE, directory_command).await?;

    // The marker is fixed when the pool is built; the layers and extractors follow from it.
    let cache: TcpPool<Cache> = TcpPool::builder(cache_addr.to_string())
        .name("cache")
        .max_size(16)
        .checkout_timeout(Duration::from_secs(1))
        .build()?
        .with_marker();
    let legacy: TcpPool<Legacy> = TcpPool::builder(legacy_addr.to_string())
        .name("directory")
        .max_size(4)
        .checkout_timeout(Duration::from_secs(2))
        .build()?
        .with_marker();

    let app = Router::new()
        .route("/cache/{key}", get(cache_get))
        .route("/directory/{id}", get(directory_lookup))
        .route("/users/{id}", get(user))
        // Lazy: a route checks out from a pool only when its handler extracts that pool's
        // connection.
        .route_layer(TcpPoolLayer::new(cache.clone()).lazy())
        .route_layer(TcpPoolLayer::new(legacy.clone()).lazy())
        .route("/stats", get(stats))
        .with_state(Pools { cache, legacy });

    println!("cache backend on {cache_addr}, directory backend on {legacy_addr}");
    let tries = ["/directory/1", "/users/1", "/cache/user:1", "/stats"];
    example::serve(app, &tries).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The HTTP API
// ---------------------------------------------------------------------------------------

/// `GET /cache/{key}`: the cache only.
async fn cache_get(
    Path(key): Path<String>,
    mut cache: TcpConnection<Cache>,
) -> Result<Response, TcpPoolError> {
    if !valid_word(&key) {
        return Ok((StatusCode::BAD_REQUEST, "bad key\n").into_response());
    }
    match cache_lookup(&mut cache, &key).await? {
        Some(value) => Ok(format!("{value}\n").into_response()),
        None => Ok((StatusCode::NOT_FOUND, "not cached\n").into_response()),
    }
}

/// `GET /directory/{id}`: the legacy directory only.
async fn directory_lookup(
    Path(id): Path<u32>,
    mut legacy: TcpConnection<Legacy>,
) -> Result<Response, TcpPoolError> {
    match directory_name(&mut legacy, id).await? {
        Some(name) => Ok(format!("{name}\n").into_response()),
        None => Ok((StatusCode::NOT_FOUND, "no such user\n").into_response()),
    }
}

/// `GET /users/{id}`: both. The cache first; on a miss, the directory, and the answer goes
/// into the cache for next time.
async fn user(
    Path(id): Path<u32>,
    mut cache: TcpConnection<Cache>,
    mut legacy: TcpConnection<Legacy>,
) -> Result<Response, TcpPoolError> {
    let key = format!("user:{id}");
    if let Some(name) = cache_lookup(&mut cache, &key).await? {
        return Ok(format!("{name} (from the cache)\n").into_response());
    }
    let Some(name) = directory_name(&mut legacy, id).await? else {
        return Ok((StatusCode::NOT_FOUND, "no such user\n").into_response());
    };
    cache
        .write_all(format!("SET {key} {name}\n").as_bytes())
        .await?;
    let reply = read_reply(&mut cache, MAX_LINE).await?;
    if reply != "OK" {
        return Err(unexpected_reply(&mut cache, &reply));
    }
    Ok(format!("{name} (from the directory)\n").into_response())
}

/// `GET /stats`: both pools' sizes and counters. No pool layer on this route.
async fn stats(State(pools): State<Pools>) -> String {
    format!(
        "cache: {:#?}\ndirectory: {:#?}\n",
        pools.cache.state(),
        pools.legacy.state()
    )
}

/// The cache's `GET`.
async fn cache_lookup(
    cache: &mut TcpConnection<Cache>,
    key: &str,
) -> Result<Option<String>, TcpPoolError> {
    cache.write_all(format!("GET {key}\n").as_bytes()).await?;
    let reply = read_reply(cache, MAX_LINE).await?;
    if let Some(value) = reply.strip_prefix("VALUE ") {
        Ok(Some(value.to_owned()))
    } else if reply == "NOT_FOUND" {
        Ok(None)
    } else {
        Err(unexpected_reply(cache, &reply))
    }
}

/// The directory's `LOOKUP`.
async fn directory_name(
    legacy: &mut TcpConnection<Legacy>,
    id: u32,
) -> Result<Option<String>, TcpPoolError> {
    legacy
        .write_all(format!("LOOKUP {id}\n").as_bytes())
        .await?;
    let reply = read_reply(legacy, MAX_LINE).await?;
    if let Some(name) = reply.strip_prefix("USER ") {
        Ok(Some(name.to_owned()))
    } else if reply == "NO_SUCH_USER" {
        Ok(None)
    } else {
        Err(unexpected_reply(legacy, &reply))
    }
}

/// Keys and values go into space-separated lines.
fn valid_word(s: &str) -> bool {
    !s.is_empty() && s.len() <= 250 && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

// ---------------------------------------------------------------------------------------
// The in-process directory backend (it stands in for a real server; the cache is
// `example::spawn_kv_backend`)
// ---------------------------------------------------------------------------------------

/// The legacy directory: `LOOKUP id`, from a fixed table.
fn directory_command(command: &str) -> String {
    const USERS: [&str; 3] = ["ada", "grace", "edsger"];
    match command.split_once(' ') {
        Some(("LOOKUP", id)) => match id.parse::<usize>() {
            Ok(id) if (1..=USERS.len()).contains(&id) => format!("USER {}\n", USERS[id - 1]),
            Ok(_) => "NO_SUCH_USER\n".to_owned(),
            Err(_) => "ERROR usage: LOOKUP <number>\n".to_owned(),
        },
        _ => "ERROR unknown command\n".to_owned(),
    }
}
