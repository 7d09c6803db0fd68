//! A pooled TCP connection for every axum request.
//!
//! An axum service often talks to a backend over plain TCP: a cache, a line or binary
//! protocol, a legacy system. Connecting per request pays a handshake every time and burns
//! ports; sharing one connection serializes everything; hand-rolled pools leak, hand out dead
//! sockets, or let one request read another's reply.
//!
//! `axum-tcp-pool` gives each request its own connection from a [bb8] pool:
//!
//! - [`TcpPoolLayer`] checks a connection out for each request (eagerly, or lazily on first
//!   use) and puts it into the request;
//! - the [`TcpConnection`] extractor hands it to the handler as `AsyncRead + AsyncWrite`;
//! - when the request ends, the connection goes back to the pool **only if it is known
//!   clean**; otherwise it is closed;
//! - checkouts fail fast with `502` when the backend is down and with `503` when the pool is
//!   exhausted, and the responses say what happened without leaking anything.
//!
//! # Quick start
//!
//! ```
//! use axum::{extract::Path, routing::get, Router};
//! use axum_tcp_pool::{TcpConnection, TcpPool, TcpPoolError, TcpPoolLayer};
//! use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
//!
//! async fn lookup(Path(key): Path<String>, mut conn: TcpConnection) -> Result<String, TcpPoolError> {
//!     conn.write_all(format!("GET {key}\n").as_bytes()).await?;
//!     let mut reply = String::new();
//!     BufReader::new(&mut conn).read_line(&mut reply).await?;
//!     Ok(reply)
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! # let addr = backend.local_addr()?.to_string();
//! # tokio::spawn(async move { // a line-echo backend
//! #     while let Ok((mut s, _)) = backend.accept().await {
//! #         tokio::spawn(async move { let (r, mut w) = s.split(); let _ = tokio::io::copy(&mut tokio::io::BufReader::new(r), &mut w).await; });
//! #     }
//! # });
//! let pool = TcpPool::builder(addr).max_size(16).build()?;
//! let app = Router::new()
//!     .route("/get/{key}", get(lookup))
//!     .layer(TcpPoolLayer::new(pool.clone()));
//! # use tower::ServiceExt;
//! # let res = app.oneshot(http::Request::get("/get/answer").body(axum::body::Body::empty())?).await?;
//! # assert_eq!(res.status(), 200);
//! # assert_eq!(pool.state().idle, 1); // the connection went back, clean
//! // axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
//!
//! # The clean-connection rule
//!
//! A connection is returned to the pool only if it is known clean. It is **closed** instead
//! when, during the request:
//!
//! | what happened | [`DiscardReason`] |
//! |---|---|
//! | a read or write returned an I/O error | `IoError` |
//! | a read saw end-of-file | `Eof` |
//! | a read or write was cancelled mid-flight (client went away, a timeout fired, a `select!` lost) | `Cancelled` |
//! | the request was cancelled after using the connection, even between two reads (client went away, a timeout layer fired) | `Cancelled` |
//! | bytes were written after the last read (a reply never read: it must not reach the next request) | `ReplyNotRead` |
//! | the backend sent bytes the handler did not read | `UnreadBytes` |
//! | the handler panicked | `Panic` |
//! | the handler called [`TcpConnection::discard`] or shut the write half down | `Explicit` |
//!
//! And a connection is never **handed out** if, while it sat idle, the backend closed it or
//! sent bytes nobody asked for: every checkout peeks at it without blocking (no round trip)
//! and replaces it (`HealthCheck`). Protocols with a ping can add an async probe with
//! [`TcpPoolBuilder::health_check`].
//!
//! What the socket cannot see, it cannot enforce: bytes still on the wire when the
//! connection is returned and when it is next checked out. A handler that stops reading in
//! the middle of a reply must call [`TcpConnection::discard`].
//!
//! Every discard is counted by reason in [`TcpPool::state`] and logged: at `warn` when the
//! backend failed during an exchange (`IoError`, `Eof`), at `debug` for the routine ones.
//!
//! # Errors and HTTP responses
//!
//! [`TcpPoolError`] implements [`IntoResponse`](axum_core::response::IntoResponse); a handler
//! can return `Result<_, TcpPoolError>` and use `?` on I/O errors.
//!
//! | error | when | status |
//! |---|---|---|
//! | [`CheckoutTimeout`](TcpPoolError::CheckoutTimeout) | no connection free within `checkout_timeout` | `503`, `Retry-After: 1` |
//! | [`BackendUnreachable`](TcpPoolError::BackendUnreachable) | connect refused, name not resolved, connect timed out, or new connections keep failing the health check (more than `max_size` in a row); reported to the checkouts waiting when the attempt started as soon as it fails | `502` |
//! | [`Io`](TcpPoolError::Io) | I/O error during the handler's exchange | `502` |
//! | [`MissingLayer`](TcpPoolError::MissingLayer) | `TcpConnection` used without [`TcpPoolLayer`] | `500`, body names the layer |
//! | [`AlreadyExtracted`](TcpPoolError::AlreadyExtracted) | `TcpConnection` extracted twice in one request | `500` |
//! | [`Config`](TcpPoolError::Config) | invalid builder settings (returned by `build`) | `500` |
//!
//! Bodies are short generic sentences: no addresses, no OS error text, no `Debug` output.
//! The detail goes to `tracing` (`warn` for `502`/`503`, `error` for `500`).
//!
//! # Eager or lazy
//!
//! [`TcpPoolLayer::new`] checks out before the handler runs; a failed checkout answers the
//! request without calling the handler. [`TcpPoolLayer::lazy`] checks out when the handler
//! extracts [`TcpConnection`]: routes that don't use it open nothing, and a handler taking
//! `Option<TcpConnection>` can answer without its backend when the backend is down.
//!
//! Eager mode checks out for every request the layer wraps, whether or not its handler uses
//! the connection (a `405`, a route without the extractor): put the layer on the routes that
//! talk to the backend (`route_layer`, or a nested router), or use lazy mode.
//!
//! # Limits
//!
//! - A connection leaked with `std::mem::forget` holds its pool slot forever.
//! - A [health check](TcpPoolBuilder::health_check) probe must not panic.
//! - [`TcpPoolBuilder::build`] must run inside a Tokio runtime; it returns an error otherwise.
//! - bb8's reaper closes every connection idle longer than `idle_timeout`, `min_idle` ones
//!   included, then reopens up to `min_idle`: use `idle_timeout(None)` to keep them open.
//! - A request that writes and never reads always closes its connection (`ReplyNotRead`).
//! - One [`TcpPoolLayer`] per router: two layers share the request slot.
//!
//! # Feature flags
//!
//! None yet.
//!
//! [bb8]: https://docs.rs/bb8

#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![warn(rust_2018_idioms, unreachable_pub)]

mod builder;
mod config;
mod connection;
mod error;
mod extract;
mod future;
mod layer;
pub mod manager;
mod pool;
mod response;
mod service;
mod slot;
mod state;

/// The README's examples, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// The bb8 crate this pool is built on, re-exported so that [`TcpPool::bb8`] can be used
/// without a direct dependency on a matching version.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), axum_tcp_pool::TcpPoolError> {
/// use axum_tcp_pool::{bb8, manager::TcpManager, TcpPool};
///
/// let pool = TcpPool::builder("127.0.0.1:6379").build()?;
/// let raw: &bb8::Pool<TcpManager> = pool.bb8();
/// let state: bb8::State = raw.state();
/// assert_eq!(state.connections, 0);
/// # Ok(()) }
/// ```
pub use bb8;

pub use builder::TcpPoolBuilder;
pub use config::ProbeFuture;
pub use connection::TcpConnection;
pub use error::TcpPoolError;
pub use future::ResponseFuture;
pub use layer::TcpPoolLayer;
pub use pool::TcpPool;
pub use service::TcpPoolService;
pub use state::{DiscardReason, Discards, PoolState};
