//! The HTTP app of the `redis_kv` example: a key-value API in front of a real Redis server,
//! one pooled connection per request, speaking RESP through the `redis-protocol` codec.
//! `examples/redis_kv.rs` runs it; `tests/redis.rs` drives it against a `redis-server` it
//! starts itself.
//!
//! ```text
//! GET    /kv/{key}   200 with the value (bytes, as stored) | 404
//! PUT    /kv/{key}   body = the value (any bytes, up to 4 MiB): 204 | 413 if larger
//! DELETE /kv/{key}   204 | 404
//! GET    /health     200 when Redis answers PING | 503
//! GET    /stats      the pool's sizes and counters (takes no connection)
//! ```
//!
//! A key is one URL path segment, percent-decoded, and must be UTF-8 (axum's `Path<String>`
//! answers `400` otherwise); values are any bytes (binary-safe).
//!
//! What it shows:
//!
//! - a [`TcpPool`] whose [health check](axum_tcp_pool::TcpPoolBuilder::health_check) is Redis
//!   `PING <counter>`, expecting that exact echo: a connection Redis closed (`CLIENT KILL`,
//!   its idle `timeout`, a restart) is never handed to a request, and neither is one with a
//!   stale reply on its way;
//! - [`PooledFramed`](axum_tcp_pool::PooledFramed) with `redis_protocol::codec::Resp2`
//!   (`TcpConnection::framed`): one reply frame per command, and the connection goes back to
//!   the pool only if it was read and nothing is left in the codec's buffer (no check by
//!   hand);
//! - a lazy [`TcpPoolLayer`]: the connection is checked out when the handler asks for it, so
//!   `PUT` reads the whole request body *before* it takes a Redis connection (a slow upload
//!   does not hold one), and `/health` can answer `503` itself when Redis is down;
//! - Redis error replies (`-ERR ...`) turned into HTTP statuses without leaking their text,
//!   and a per-command timeout (`504`).

mod command;
mod error;
mod handlers;

use std::io;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use axum_tcp_pool::{BackendStream, TcpPool, TcpPoolBuilder, TcpPoolLayer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use error::ApiError;
use handlers::{delete_value, get_value, health, put_value, stats};

/// Where Redis is when `REDIS_ADDR` is not set.
pub const DEFAULT_REDIS_ADDR: &str = "127.0.0.1:6379";
/// The largest value `PUT` accepts, in bytes; larger bodies get `413`.
pub const MAX_VALUE: usize = 4 * 1024 * 1024;
/// How long one command may take, write and reply together, before the request gets `504`.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// The pool settings for Redis at `addr`: `PING <counter>` as the health check, and idle
/// connections closed by the pool after a minute. Redis's own idle `timeout` is 0 (never) by
/// default; where it is set, keep `idle_timeout` below it so that the pool usually closes
/// first (when Redis closes first, nothing fails either: the checkout finds the connection
/// closed and opens another).
pub fn pool_builder(addr: &str) -> TcpPoolBuilder {
    TcpPool::builder(addr)
        .max_size(16)
        .checkout_timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(1))
        .idle_timeout(Some(Duration::from_secs(60)))
        .health_check(ping)
}

/// The counter the health check echoes: a new number for every probe.
static PROBES: AtomicU64 = AtomicU64::new(0);

/// The health check: `PING <n>`, with a number no probe used before, must be answered with
/// exactly `<n>` as a bulk string (`$<len>\r\n<n>\r\n`). A reply left on the connection by
/// an earlier command, arriving first, does not echo `n` and fails the probe, as does
/// `+PONG` or any error reply (`-LOADING ...` while Redis loads its data, `-NOAUTH ...` when
/// it wants a password); the connection, with whatever is left on it, is closed.
///
/// It reads exactly the expected reply's bytes from the raw stream, stopping at the first
/// byte that differs, so nothing it did not consume is left in a buffer.
pub async fn ping(stream: &mut BackendStream) -> io::Result<()> {
    let n = PROBES.fetch_add(1, Relaxed).to_string();
    let request = format!("*2\r\n$4\r\nPING\r\n${}\r\n{n}\r\n", n.len());
    stream.write_all(request.as_bytes()).await?;
    let expected = format!("${}\r\n{n}\r\n", n.len());
    let expected = expected.as_bytes();
    let mut reply = [0u8; 32];
    let mut filled = 0;
    while filled < expected.len() {
        let read = stream.read(&mut reply[filled..expected.len()]).await?;
        if read == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        filled += read;
        if reply[..filled] != expected[..filled] {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "unexpected reply to PING {n}: {:?}",
                    String::from_utf8_lossy(&reply[..filled])
                ),
            ));
        }
    }
    Ok(())
}

/// The HTTP API over `pool`.
pub fn app(pool: TcpPool) -> Router {
    Router::new()
        .route(
            "/kv/{key}",
            get(get_value).put(put_value).delete(delete_value),
        )
        .route("/health", get(health))
        // Lazy: a connection is checked out when a handler extracts `TcpConnection`.
        // `route_layer`: `/stats` and unknown paths never take one.
        .route_layer(TcpPoolLayer::new(pool.clone()).lazy())
        .route("/stats", get(stats))
        .with_state(pool)
}

/// `/kv/{key}` with the key percent-encoded (every byte but `A-Z a-z 0-9 - . _ ~`).
pub fn kv(key: &str) -> String {
    let mut path = String::from("/kv/");
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            path.push(char::from(b));
        } else {
            path.push_str(&format!("%{b:02X}"));
        }
    }
    path
}
