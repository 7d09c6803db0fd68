//! A key-value HTTP API in front of a line-protocol TCP backend, with one pooled connection
//! per request.
//!
//! What it shows:
//!
//! - a [`TcpPool`] built with `connect()`, so the server does not start without its backend;
//! - a lazy [`TcpPoolLayer`] on the `/kv` routes only (`route_layer`), so `/stats` and
//!   unknown paths never take a connection;
//! - `PUT` taking [`LazyConnection`] before its body: it checks out only after the body has
//!   arrived, so a slow upload holds no pool connection;
//! - handlers that take the [`TcpConnection`] extractor, return `Result<_, TcpPoolError>` and
//!   use `?` on I/O: a dead backend becomes `502`, an exhausted pool `503`;
//! - reading every reply to its end (`BufReader` + `read_line`, in `example::read_reply`),
//!   and [`TcpConnection::discard`] when a reply makes no sense (`example::unexpected_reply`),
//!   so only clean connections go back to the pool (both in `testkit/src/example/reply.rs`,
//!   shared with `two_pools`);
//! - [`TcpPool::state`] as a `/stats` page.
//!
//! To be runnable with nothing else installed, the example starts its own tiny key-value
//! backend in the same process, on a free loopback port (`example::spawn_kv_backend`, in
//! `testkit/src/example/` with the other plumbing the examples share). Its protocol is
//! one line per command and one line per reply:
//!
//! ```text
//! GET key          ->  VALUE <value>  |  NOT_FOUND
//! SET key value    ->  OK
//! anything else    ->  ERROR <why>
//! ```
//!
//! Run it (the HTTP port is 3000, or `PORT`):
//!
//! ```text
//! cargo run --example kv
//! ```
//!
//! and try it:
//!
//! ```text
//! curl -X PUT localhost:3000/kv/hello -d world
//! curl localhost:3000/kv/hello
//! curl localhost:3000/stats
//! ```
//!
//! Stop it with Ctrl-C: requests in flight finish, then it exits.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use axum_tcp_pool::{LazyConnection, TcpConnection, TcpPool, TcpPoolError, TcpPoolLayer};
use tokio::io::AsyncWriteExt;

use testkit::example::{self, read_reply, unexpected_reply};

/// The longest line, command or reply, either side accepts (newline included).
const MAX_LINE: u64 = 64 * 1024;
/// The longest key the HTTP API accepts, in bytes.
const MAX_KEY: usize = 250;
/// The longest value the HTTP API accepts, in bytes (so that `SET key value\n` fits a line).
const MAX_VALUE: usize = 60 * 1024;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    example::init_logging();

    // The backend: in a real service, the address of your cache or legacy system.
    let backend = example::spawn_kv_backend(MAX_LINE).await?;

    // `connect()` waits for `min_idle` connections, so a dead backend stops us here.
    let pool = TcpPool::builder(backend.to_string())
        .max_size(8)
        .min_idle(2)
        .checkout_timeout(Duration::from_secs(2))
        .connect()
        .await?;

    let app = Router::new()
        .route("/kv/{key}", get(get_value).put(put_value))
        // `route_layer`: only the routes above check out, and lazily: when a handler asks.
        .route_layer(TcpPoolLayer::new(pool.clone()).lazy())
        .route("/stats", get(stats))
        .with_state(pool);

    println!("key-value backend on {backend}");
    example::serve(app, &["-X PUT /kv/hello -d world", "/kv/hello", "/stats"]).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The HTTP API
// ---------------------------------------------------------------------------------------

/// `GET /kv/{key}`: `200` with the value, or `404`.
async fn get_value(
    Path(key): Path<String>,
    mut conn: TcpConnection,
) -> Result<Response, TcpPoolError> {
    if let Err(why) = check_key(&key) {
        // Nothing was written: the connection goes back to the pool untouched.
        return Ok((StatusCode::BAD_REQUEST, why).into_response());
    }
    conn.write_all(format!("GET {key}\n").as_bytes()).await?;
    let reply = read_reply(&mut conn, MAX_LINE).await?;
    if let Some(value) = reply.strip_prefix("VALUE ") {
        Ok(value.to_owned().into_response())
    } else if reply == "NOT_FOUND" {
        Ok((StatusCode::NOT_FOUND, "not found\n").into_response())
    } else {
        Err(unexpected_reply(&mut conn, &reply))
    }
}

/// `PUT /kv/{key}`, body = the value (UTF-8, one line): `200 OK`. The connection is checked
/// out once the body is in.
async fn put_value(
    Path(key): Path<String>,
    conn: LazyConnection,
    value: String,
) -> Result<Response, TcpPoolError> {
    if let Err(why) = check_key(&key).and_then(|()| check_value(&value)) {
        return Ok((StatusCode::BAD_REQUEST, why).into_response());
    }
    let mut conn = conn.get().await?;
    conn.write_all(format!("SET {key} {value}\n").as_bytes())
        .await?;
    let reply = read_reply(&mut conn, MAX_LINE).await?;
    if reply == "OK" {
        Ok("OK\n".into_response())
    } else {
        Err(unexpected_reply(&mut conn, &reply))
    }
}

/// `GET /stats`: the pool's sizes and counters. This route has no `TcpPoolLayer`.
async fn stats(State(pool): State<TcpPool>) -> String {
    format!("{:#?}\n", pool.state())
}

/// Keys go into a space-separated line: no whitespace or control characters.
fn check_key(key: &str) -> Result<(), &'static str> {
    if key.is_empty() || key.len() > MAX_KEY {
        return Err("the key must be 1 to 250 bytes long\n");
    }
    if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("the key must not contain whitespace or control characters\n");
    }
    Ok(())
}

/// Values end the line: no line breaks.
fn check_value(value: &str) -> Result<(), &'static str> {
    if value.len() > MAX_VALUE {
        return Err("the value must be at most 60 KiB\n");
    }
    if value.contains(['\n', '\r']) {
        return Err("the value must not contain line breaks\n");
    }
    Ok(())
}
