//! A key-value HTTP API in front of a real Redis server, one pooled connection per request,
//! speaking RESP through the `redis-protocol` codec.
//!
//! ```text
//! GET    /kv/{key}   200 with the value (bytes, as stored) | 404
//! PUT    /kv/{key}   body = the value (any bytes, up to 4 MiB): 204 | 413 if larger
//! DELETE /kv/{key}   204 | 404
//! GET    /health     200 when Redis answers PING | 503
//! GET    /stats      the pool's sizes and counters (takes no connection)
//! ```
//!
//! What it shows:
//!
//! - a [`TcpPool`] whose [health check](axum_tcp_pool::TcpPoolBuilder::health_check) is Redis
//!   `PING` (exact `+PONG\r\n` reply): a connection Redis closed (`CLIENT KILL`, its idle
//!   `timeout`, a restart) is never handed to a request;
//! - `tokio_util::codec::Framed` with `redis_protocol::codec::Resp2` over `&mut TcpConnection`,
//!   reading every reply to its end, so the connection goes back to the pool clean;
//! - a lazy [`TcpPoolLayer`]: the connection is checked out when the handler asks for it, so
//!   `PUT` reads the whole request body *before* it takes a Redis connection (a slow upload
//!   does not hold one), and `/health` can answer `503` itself when Redis is down;
//! - Redis error replies (`-ERR ...`) turned into HTTP statuses without leaking their text,
//!   and a per-command timeout (`504`).
//!
//! It needs a running Redis; it does not start one. `REDIS_ADDR` says where (default
//! `127.0.0.1:6379`), `PORT` is the HTTP port (default 3000). From the repository root:
//!
//! ```text
//! redis-server --port 6379 --save '' --appendonly no --daemonize yes && cargo run --example redis_kv
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
//!
//! `tests/redis.rs` drives this very router against a `redis-server` it starts itself.

use std::error::Error as StdError;
use std::io;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{RequestPartsExt, Router};
use axum_tcp_pool::{
    BackendStream, ProbeFuture, TcpConnection, TcpPool, TcpPoolBuilder, TcpPoolError, TcpPoolLayer,
};
use futures_util::{SinkExt, StreamExt};
use redis_protocol::codec::Resp2;
use redis_protocol::error::RedisProtocolErrorKind;
use redis_protocol::resp2::types::BytesFrame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::Framed;

mod support;

/// Where Redis is when `REDIS_ADDR` is not set.
pub const DEFAULT_REDIS_ADDR: &str = "127.0.0.1:6379";
/// The largest value `PUT` accepts, in bytes; larger bodies get `413`.
pub const MAX_VALUE: usize = 4 * 1024 * 1024;
/// How long one command may take, write and reply together, before the request gets `504`.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

#[tokio::main]
async fn main() -> Result<(), Box<dyn StdError>> {
    tracing_subscriber::fmt::init();

    let redis = std::env::var("REDIS_ADDR").unwrap_or_else(|_| DEFAULT_REDIS_ADDR.to_owned());

    // `connect()` waits for `min_idle` connections, so a missing Redis stops us here.
    let pool = pool_builder(&redis)
        .min_idle(2)
        .connect()
        .await
        .map_err(|e| {
            format!(
                "no Redis at {redis} ({e}). Start one with \
                 `redis-server --port 6379 --save '' --appendonly no --daemonize yes`, \
                 or set REDIS_ADDR to where yours listens"
            )
        })?;

    let listener = support::listen().await?;
    let addr = listener.local_addr()?;
    let p = addr.port();
    println!("Redis at {redis}");
    println!("listening on http://{addr}");
    println!("try:");
    println!("  curl -X PUT localhost:{p}/kv/hello --data-binary world");
    println!("  curl localhost:{p}/kv/hello");
    println!("  curl -X DELETE localhost:{p}/kv/hello");
    println!("  curl localhost:{p}/health");
    println!("  curl localhost:{p}/stats");

    axum::serve(listener, app(pool))
        .with_graceful_shutdown(support::shutdown_signal())
        .await?;
    println!("shut down");
    Ok(())
}

/// The pool settings for Redis at `addr`: `PING` as the health check, and idle connections
/// closed by the pool after a minute. Redis's own idle `timeout` is 0 (never) by default;
/// where it is set, keep `idle_timeout` below it so that the pool usually closes first
/// (when Redis closes first, nothing fails either: the checkout finds the connection closed
/// and opens another).
pub fn pool_builder(addr: &str) -> TcpPoolBuilder {
    TcpPool::builder(addr)
        .max_size(16)
        .checkout_timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(1))
        .idle_timeout(Some(Duration::from_secs(60)))
        .health_check(ping)
}

/// The health check: `PING` must be answered with exactly `+PONG\r\n`.
///
/// It reads exactly the 7 bytes of that reply from the raw stream, so nothing it did not
/// consume is left in a buffer. Any other reply (`-LOADING ...` while Redis loads its data,
/// `-NOAUTH ...` when it wants a password) fails the check, and the connection, with whatever
/// of the reply is left on it, is closed.
pub fn ping(stream: &mut BackendStream) -> ProbeFuture<'_> {
    Box::pin(async move {
        stream.write_all(b"*1\r\n$4\r\nPING\r\n").await?;
        let mut reply = [0u8; 7];
        stream.read_exact(&mut reply).await?;
        if &reply == b"+PONG\r\n" {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "unexpected reply to PING: {:?}",
                    String::from_utf8_lossy(&reply)
                ),
            ))
        }
    })
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

// ---------------------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------------------

/// `GET /kv/{key}`: `200` with the value, or `404`.
async fn get_value(Path(key): Path<String>, mut conn: TcpConnection) -> Result<Response, ApiError> {
    match command(&mut conn, [cmd("GET"), key.into()]).await? {
        BytesFrame::BulkString(value) => {
            Ok(([(header::CONTENT_TYPE, "application/octet-stream")], value).into_response())
        }
        BytesFrame::Null => Ok(not_found()),
        other => Err(unexpected(&mut conn, "GET", &other)),
    }
}

/// `PUT /kv/{key}`, body = the value: `204`.
///
/// Takes the whole `Request` so that the body is read *before* the connection is checked
/// out: with `Bytes` as an extractor after `TcpConnection`, a slow upload would hold a Redis
/// connection for as long as it takes.
async fn put_value(Path(key): Path<String>, mut req: Request) -> Result<Response, ApiError> {
    let body = std::mem::take(req.body_mut());
    let value = axum::body::to_bytes(body, MAX_VALUE)
        .await
        .map_err(ApiError::Body)?;
    let (mut parts, _) = req.into_parts();
    let mut conn: TcpConnection = parts.extract().await?;
    match command(&mut conn, [cmd("SET"), key.into(), value]).await? {
        BytesFrame::SimpleString(ok) if ok == "OK" => Ok(StatusCode::NO_CONTENT.into_response()),
        other => Err(unexpected(&mut conn, "SET", &other)),
    }
}

/// `DELETE /kv/{key}`: `204` if it existed, `404` if not.
async fn delete_value(
    Path(key): Path<String>,
    mut conn: TcpConnection,
) -> Result<Response, ApiError> {
    match command(&mut conn, [cmd("DEL"), key.into()]).await? {
        BytesFrame::Integer(1) => Ok(StatusCode::NO_CONTENT.into_response()),
        BytesFrame::Integer(0) => Ok(not_found()),
        other => Err(unexpected(&mut conn, "DEL", &other)),
    }
}

/// `GET /health`: `200 ok` when Redis answers `PING`, `503` otherwise (also when no
/// connection can be had: a load balancer wants `503` from a health check, not `502`).
async fn health(conn: Result<TcpConnection, TcpPoolError>) -> Response {
    let unhealthy = |why: &dyn std::fmt::Display| {
        tracing::warn!(error = %why, "health check failed");
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "unhealthy: Redis is not answering\n",
        )
            .into_response()
    };
    let mut conn = match conn {
        Ok(conn) => conn,
        Err(err) => return unhealthy(&err),
    };
    match command(&mut conn, [cmd("PING")]).await {
        Ok(BytesFrame::SimpleString(pong)) if pong == "PONG" => "ok\n".into_response(),
        Ok(other) => {
            conn.discard();
            unhealthy(&format!("unexpected reply to PING: {other:?}"))
        }
        Err(err) => unhealthy(&err),
    }
}

/// `GET /stats`: the pool's sizes and counters. This route has no `TcpPoolLayer`.
async fn stats(State(pool): State<TcpPool>) -> String {
    format!("{:#?}\n", pool.state())
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

fn cmd(name: &'static str) -> Bytes {
    Bytes::from_static(name.as_bytes())
}

// ---------------------------------------------------------------------------------------
// One Redis command
// ---------------------------------------------------------------------------------------

/// Sends one command (an array of bulk strings: binary-safe) and reads its whole reply.
///
/// An error reply (`-ERR ...`) is returned as [`ApiError::Redis`]; the connection stays
/// clean, since the reply was read to its end. Every other failure leaves the connection
/// marked to be closed: an I/O error or end-of-file by `TcpConnection` itself, a timeout
/// because the read or write was still in flight when it was dropped (`Cancelled`), and a
/// reply that cannot be decoded, or bytes buffered beyond the reply, by `discard()` here.
async fn command<const N: usize>(
    conn: &mut TcpConnection,
    args: [Bytes; N],
) -> Result<BytesFrame, ApiError> {
    let request = BytesFrame::Array(args.into_iter().map(BytesFrame::BulkString).collect());
    let mut framed = Framed::new(&mut *conn, Resp2::default());
    let exchange = async {
        framed.send(request).await?;
        framed.next().await.transpose()
    };
    let reply = tokio::time::timeout(COMMAND_TIMEOUT, exchange).await;
    // `Framed` reads ahead into its own buffer, which `TcpConnection` cannot see and which is
    // dropped with it. Redis sends one reply per command, so after the reply the buffer must
    // be empty. If it is not, the server sent more than was asked for (the rest of it may
    // still be on the wire, for the next request to read): the connection is out of step.
    let leftover = framed.read_buffer().len();
    drop(framed);
    let reply = match reply {
        Ok(Ok(Some(frame))) => frame,
        Ok(Ok(None)) => {
            return Err(ApiError::Pool(TcpPoolError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "Redis closed the connection",
            ))))
        }
        Ok(Err(err)) => {
            return Err(match err.kind() {
                // Already marked on the connection by `TcpConnection`.
                RedisProtocolErrorKind::IO(io) => {
                    ApiError::Pool(TcpPoolError::Io(io::Error::new(io.kind(), err.to_string())))
                }
                _ => {
                    conn.discard();
                    tracing::warn!(error = %err, "undecodable reply from Redis");
                    ApiError::Protocol
                }
            });
        }
        Err(_elapsed) => return Err(ApiError::Timeout),
    };
    if leftover > 0 {
        conn.discard();
        tracing::warn!(bytes = leftover, "Redis sent more than one reply");
        return Err(ApiError::Protocol);
    }
    match reply {
        BytesFrame::Error(msg) => Err(ApiError::Redis(msg.to_string())),
        frame => Ok(frame),
    }
}

/// A well-formed reply of the wrong type: we no longer know where the connection stands, so
/// it is closed rather than reused.
fn unexpected(conn: &mut TcpConnection, command: &str, reply: &BytesFrame) -> ApiError {
    conn.discard();
    tracing::warn!(command, ?reply, "unexpected reply from Redis");
    ApiError::Protocol
}

// ---------------------------------------------------------------------------------------
// Errors and their responses
// ---------------------------------------------------------------------------------------

/// Everything a handler can fail with. The response says what happened in general terms;
/// the detail (Redis's message, the OS error) goes to the log only.
#[derive(Debug)]
pub enum ApiError {
    /// No connection, or the connection failed: the pool's own response (`502`/`503`).
    Pool(TcpPoolError),
    /// Redis answered with an error reply; the text is Redis's (for the log).
    Redis(String),
    /// Redis sent something this client does not understand: `502`.
    Protocol,
    /// The command took longer than [`COMMAND_TIMEOUT`]: `504`.
    Timeout,
    /// The request body could not be read, or is larger than [`MAX_VALUE`].
    Body(axum::Error),
}

impl From<TcpPoolError> for ApiError {
    fn from(err: TcpPoolError) -> Self {
        ApiError::Pool(err)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::Pool(err) => err.fmt(f),
            ApiError::Redis(msg) => write!(f, "Redis error reply: {msg}"),
            ApiError::Protocol => f.write_str("unexpected reply from Redis"),
            ApiError::Timeout => f.write_str("Redis did not answer in time"),
            ApiError::Body(err) => write!(f, "cannot read the request body: {err}"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            // The pool's own response, which logs the detail itself.
            ApiError::Pool(err) => return err.into_response(),
            ApiError::Redis(ref msg) => redis_error_status(msg),
            ApiError::Protocol => (
                StatusCode::BAD_GATEWAY,
                "Bad gateway: unexpected reply from the store\n",
            ),
            ApiError::Timeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "Gateway timeout: the store did not answer in time\n",
            ),
            ApiError::Body(ref err) if is_too_large(err) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "the value is larger than 4 MiB\n",
            ),
            ApiError::Body(_) => (StatusCode::BAD_REQUEST, "cannot read the request body\n"),
        };
        if status.is_server_error() {
            tracing::warn!(error = %self, status = status.as_u16(), "request failed");
        } else {
            tracing::debug!(error = %self, status = status.as_u16(), "request rejected");
        }
        let mut res = (status, body).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        res
    }
}

/// The status for a Redis error reply, chosen by its error code (the first word).
fn redis_error_status(msg: &str) -> (StatusCode, &'static str) {
    match msg.split(' ').next().unwrap_or_default() {
        // The key holds a list, a hash, ...: a conflict with the resource's current state.
        "WRONGTYPE" => (
            StatusCode::CONFLICT,
            "the key holds a value that is not a string\n",
        ),
        // Temporary states of the server: try again later.
        "LOADING" | "BUSY" | "MASTERDOWN" | "TRYAGAIN" | "MISCONF" | "READONLY" | "OOM" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Service unavailable: the store cannot take this request now, try again later\n",
        ),
        _ => (
            StatusCode::BAD_GATEWAY,
            "Bad gateway: the store rejected the request\n",
        ),
    }
}

/// Whether a body error is axum's length limit (as opposed to a client that went away).
fn is_too_large(err: &axum::Error) -> bool {
    let mut source: Option<&(dyn StdError + 'static)> = err.source();
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = e.source();
    }
    false
}
