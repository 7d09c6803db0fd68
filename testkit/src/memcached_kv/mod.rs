//! The HTTP app of the `memcached_kv` example: a key-value API in front of a real memcached,
//! one pooled connection per request, speaking memcached's text protocol through
//! [`PooledFramed`](axum_tcp_pool::PooledFramed) and a small codec ([`MemcacheCodec`]).
//! `examples/memcached_kv.rs` runs it; `tests/memcached.rs` drives it against a `memcached`
//! it starts itself.
//!
//! ```text
//! GET    /kv/{key}       200 with the value (bytes, as stored) | 404
//! PUT    /kv/{key}       body = the value: 204 | 413 over memcached's item size limit (1 MiB)
//! DELETE /kv/{key}       204, fire-and-forget (`delete <key> noreply`)
//! DELETE /kv             204: `flush_all`, every item gone
//! GET    /mget/{a,b,..}  200, one `<key>=<value>` line per key found: one `get` per key,
//!                        pipelined in one write
//! GET    /health         200 when memcached answers `version` | 503
//! GET    /stats          the pool's sizes and counters (takes no connection)
//! ```
//!
//! A key is one URL path segment, percent-decoded: 1 to 250 bytes, no spaces or control
//! characters (memcached's rule), otherwise `400`. Values are any bytes.
//!
//! What it shows:
//!
//! - `TcpConnection::framed`: the handlers send request frames and read reply frames; the
//!   connection goes back to the pool only if every reply was read and nothing is left in
//!   the codec's buffer, with no check by hand;
//! - `expect_replies(0)` for `noreply` deletes: the connection is reused, and if memcached
//!   answers anyway (it does, with `ERROR`, to a line it cannot parse) the bytes close it;
//! - a pipelined exchange (`/mget`): n requests in one write, n replies read;
//! - `version` as the [health check](axum_tcp_pool::TcpPoolBuilder::health_check): a
//!   connection memcached closed (a restart) is never handed to a request;
//! - memcached's item size limit as a clear `413`: bodies over 1 MiB are refused before a
//!   connection is taken, and a value memcached finds too large with its own overhead
//!   (`SERVER_ERROR object too large for cache`) gets the same answer.

mod codec;
mod error;
mod handlers;

use std::io;
use std::time::Duration;

use axum::routing::{delete, get};
use axum::Router;
use axum_tcp_pool::{BackendStream, TcpPool, TcpPoolBuilder, TcpPoolLayer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use codec::{CodecError, MemcacheCodec, Request, Response, Value, MAX_DATA};
pub use error::ApiError;
use handlers::{delete_value, flush, get_value, health, mget, put_value, stats};

/// Where memcached is when `MEMCACHED_ADDR` is not set.
pub const DEFAULT_MEMCACHED_ADDR: &str = "127.0.0.1:11211";
/// memcached's default item size limit (`-I 1m`): key, value and its overhead together.
/// Bodies larger than this get `413` without a round trip.
pub const ITEM_SIZE_LIMIT: usize = 1024 * 1024;
/// The longest key memcached takes.
pub const MAX_KEY: usize = 250;
/// How long one exchange may take before the request gets `504`.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// The pool settings for memcached at `addr`: `version` as the health check, idle
/// connections closed after a minute.
pub fn pool_builder(addr: &str) -> TcpPoolBuilder {
    TcpPool::builder(addr)
        .max_size(16)
        .checkout_timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(1))
        .idle_timeout(Some(Duration::from_secs(60)))
        .health_check(version)
}

/// The health check: `version` must be answered with one `VERSION <x>\r\n` line and
/// nothing more. It reads what arrives until the line ends (usually one read), so that no
/// byte past the reply is consumed or left in a buffer.
pub async fn version(stream: &mut BackendStream) -> io::Result<()> {
    stream.write_all(b"version\r\n").await?;
    let mut reply = [0u8; 64];
    let mut filled = 0;
    while !reply[..filled].ends_with(b"\r\n") {
        if filled == reply.len() {
            return Err(bad_version(&reply));
        }
        match stream.read(&mut reply[filled..]).await? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => filled += n,
        }
    }
    let reply = &reply[..filled];
    let one_line = reply.windows(2).filter(|w| w == b"\r\n").count() == 1;
    if reply.starts_with(b"VERSION ") && one_line {
        Ok(())
    } else {
        Err(bad_version(reply))
    }
}

fn bad_version(reply: &[u8]) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "unexpected reply to version: {:?}",
            String::from_utf8_lossy(reply)
        ),
    )
}

/// Whether `key` is a key memcached takes: 1 to 250 bytes, none of them a space or a control
/// character (the text protocol separates words with spaces and ends lines with CRLF).
pub fn valid_key(key: &[u8]) -> bool {
    (1..=MAX_KEY).contains(&key.len()) && key.iter().all(|&b| b > b' ' && b != 0x7f)
}

/// The HTTP API over `pool`.
pub fn app(pool: TcpPool) -> Router {
    Router::new()
        .route(
            "/kv/{key}",
            get(get_value).put(put_value).delete(delete_value),
        )
        .route("/kv", delete(flush))
        .route("/mget/{keys}", get(mget))
        .route("/health", get(health))
        // Lazy: a connection is checked out when a handler extracts it; `route_layer`:
        // `/stats` and unknown paths never take one.
        .route_layer(TcpPoolLayer::new(pool.clone()).lazy())
        .route("/stats", get(stats))
        .with_state(pool)
}

#[cfg(test)]
mod tests {
    use super::valid_key;

    #[test]
    fn keys() {
        assert!(valid_key(b"user:42"));
        assert!(valid_key("ключ".as_bytes()));
        assert!(valid_key(&[b'k'; 250]));
        for bad in [&b""[..], b"a b", b"a\r\nb", b"\x01", b"a\x7f", &[b'k'; 251]] {
            assert!(!valid_key(bad), "{bad:?}");
        }
    }
}
