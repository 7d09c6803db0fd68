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
//! # Transports: TCP, Unix domain sockets, TLS
//!
//! The address given to [`TcpPool::builder`] says how to connect; everything else (the layer,
//! the extractor, the clean-connection rule, the errors) is the same:
//!
//! | address | connects with | [`TcpConnection::get_ref`] |
//! |---|---|---|
//! | `"host:port"` | TCP; the name is resolved on every connect | [`BackendStream::Tcp`] |
//! | `"unix:/run/app.sock"` | a Unix domain socket (Unix platforms) | [`BackendStream::Unix`] |
//! | `"host:port"` and `TcpPoolBuilder::tls` (feature `tls`) | TLS over TCP, rustls | `BackendStream::Tls` |
//!
//! `nodelay` and `keepalive` apply to TCP only and are ignored for a Unix socket. A `unix:`
//! address needs a non-empty path short enough for a socket address (`build` checks both).
//!
//! With TLS, the idle checks look at what the server sent as TLS records: the session
//! tickets a TLS 1.3 server sends after the handshake are consumed and leave the connection
//! clean; decrypted bytes nobody read, a `close_notify`, or an alert close it. The docs of
//! `TlsConfig` (feature `tls`) list the settings and their errors.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), axum_tcp_pool::TcpPoolError> {
//! use axum_tcp_pool::TcpPool;
//!
//! let local = TcpPool::builder("unix:/run/cache/cache.sock").build()?;
//! # drop(local);
//! # Ok(()) }
//! ```
//!
//! # Errors and HTTP responses
//!
//! [`TcpPoolError`] implements [`IntoResponse`](axum_core::response::IntoResponse); a handler
//! can return `Result<_, TcpPoolError>` and use `?` on I/O errors.
//!
//! | error | when | status |
//! |---|---|---|
//! | [`CheckoutTimeout`](TcpPoolError::CheckoutTimeout) | no connection free within `checkout_timeout` | `503`, `Retry-After: 1` |
//! | [`BackendUnreachable`](TcpPoolError::BackendUnreachable) | connect refused, name not resolved, socket file missing, connect (TLS handshake included) timed out, TLS handshake failed (certificate not trusted or not valid for the server name), or new connections keep failing the health check (more than `max_size` in a row); reported to the checkouts waiting when the attempt started as soon as it fails | `502` |
//! | [`Io`](TcpPoolError::Io) | I/O error during the handler's exchange | `502` |
//! | [`MissingLayer`](TcpPoolError::MissingLayer) | `TcpConnection<M>` used without a [`TcpPoolLayer`] of marker `M` | `500`, body names the layer |
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
//! # Several pools in one router
//!
//! An app that talks to two backends (a cache and a legacy service, say) gives each pool a
//! **marker type** and each handler picks its pool by that type. `TcpPool`, `TcpPoolLayer`,
//! `TcpPoolService` and `TcpConnection` take the marker as a type parameter that defaults to
//! `()`, so single-pool code never mentions it. [`TcpPool::with_marker`] sets it, the layer
//! follows from its pool, and a handler taking `TcpConnection<Cache>` gets a connection from
//! the layer over the `TcpPool<Cache>`, whatever other layers wrap the route. Each layer may
//! be eager or lazy on its own.
//!
//! ```
//! use axum::{routing::get, Router};
//! use axum_tcp_pool::{TcpConnection, TcpPool, TcpPoolLayer};
//!
//! enum Cache {}
//! enum Legacy {}
//!
//! async fn cached(conn: TcpConnection<Cache>) -> &'static str { "from the cache" }
//! async fn old(conn: TcpConnection<Legacy>) -> &'static str { "from the legacy service" }
//! async fn both(cache: TcpConnection<Cache>, legacy: TcpConnection<Legacy>) -> &'static str {
//!     "from both"
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), axum_tcp_pool::TcpPoolError> {
//! let cache: TcpPool<Cache> = TcpPool::builder("127.0.0.1:11211").name("cache").build()?.with_marker();
//! let legacy: TcpPool<Legacy> = TcpPool::builder("127.0.0.1:7000").name("legacy").build()?.with_marker();
//! let app: Router = Router::new()
//!     .route("/cached", get(cached))
//!     .route("/legacy", get(old))
//!     .route("/both", get(both))
//!     .layer(TcpPoolLayer::new(cache).lazy())
//!     .layer(TcpPoolLayer::new(legacy).lazy());
//! # Ok(()) }
//! ```
//!
//! The compiler checks which pool a handler talks to: a connection of one pool cannot be
//! passed where another's is expected.
//!
//! ```compile_fail,E0308
//! # use axum_tcp_pool::TcpConnection;
//! enum Cache {}
//! enum Legacy {}
//! fn to_legacy(conn: TcpConnection<Cache>) -> TcpConnection<Legacy> {
//!     conn // error: expected `TcpConnection<Legacy>`, found `TcpConnection<Cache>`
//! }
//! ```
//!
//! It does not check that the router has the layer of every marker its handlers ask for: a
//! handler taking `TcpConnection<Legacy>` on a route without a layer over a `TcpPool<Legacy>`
//! gets [`MissingLayer`](TcpPoolError::MissingLayer) at run time (`500`, with a generic body;
//! the log names the marker type). Two layers of the **same** marker on one route: the outer
//! one provides the connection, the inner one passes the request on (no second checkout). `examples/two_pools.rs` is a complete app.
//!
//! # Tracing and metrics
//!
//! - Every checkout ([`TcpPool::get`], which the layer uses) runs in a `debug` span
//!   `tcp_pool.checkout` with the fields `pool`, `addr`, `wait_us` and `outcome`. When no
//!   subscriber wants it, none is made: nothing is formatted, allocated or timed.
//! - Events share the fields `pool` (the [name](TcpPoolBuilder::name), the address by
//!   default), `addr` and `reason`: a failed connect is a `warn` (`reason` is the I/O error
//!   kind, `error` the error); a discarded connection (`reason` is
//!   [`DiscardReason::as_str`]) is a `warn` when the backend failed during an exchange
//!   (`io_error`, `eof`) and a `debug` otherwise, as is a failed checkout health check.
//! - [`TcpPool::state`] is a snapshot of every count. With the `metrics` feature,
//!   `TcpPool::record_metrics` exports it as gauges and counters through the
//!   [`metrics`](https://docs.rs/metrics) crate; see the `metrics` module for the names,
//!   and `examples/metrics.rs` for a Prometheus `/metrics` route.
//!
//! # Limits
//!
//! - A connection leaked with `std::mem::forget` holds its pool slot forever.
//! - A [health check](TcpPoolBuilder::health_check) probe must not panic.
//! - [`TcpPoolBuilder::build`] must run inside a Tokio runtime; it returns an error otherwise.
//! - bb8's reaper closes every connection idle longer than `idle_timeout`, `min_idle` ones
//!   included, then reopens up to `min_idle`: use `idle_timeout(None)` to keep them open.
//! - A request that writes and never reads always closes its connection (`ReplyNotRead`).
//! - A connection that passes `max_lifetime` while checked out is closed by bb8 when it comes
//!   back, just after bb8 has booked its replacement and without the early shutdown a
//!   discard gets: for that moment the backend can see `max_size + 1` sockets from the pool.
//! - A handler whose marker has no layer on its route is a run-time `500`, not a compile
//!   error (see [several pools](#several-pools-in-one-router)).
//! - TLS: a record that has only partly arrived when a connection is checked is invisible
//!   (rustls keeps it without saying), as bytes still on the wire are for TCP; it is caught
//!   at the next check once the rest has arrived. With TLS 1.3, a server that refuses the
//!   client certificate says so after the client's handshake has completed: the failure
//!   shows at the first checkout or read (still a `502`), not as a connect error.
//! - TLS runs over TCP only, not over a Unix socket. A discarded TLS connection is closed
//!   without a `close_notify`.
//!
//! # Feature flags
//!
//! No feature is on by default.
//!
//! | feature | what it adds |
//! |---|---|
//! | `tls` | `TcpPoolBuilder::tls` and `TlsConfig`: connect over TLS with rustls (the `ring` crypto provider; no OpenSSL, no C toolchain beyond what `ring` needs), custom CA, server name, client certificate; re-exports `rustls` and `tokio_rustls` |
//! | `tls-native-roots` | `tls`, plus `TlsConfig::native_roots`: trust the operating system's root certificates (via `rustls-native-certs`) |
//! | `metrics` | `TcpPool::record_metrics` and the `metrics` module: the pool's gauges and counters (connections, idle, in use, checkouts, waits, wait time, timeouts, connects, connect failures, discards by reason, closes) through the [`metrics`](https://docs.rs/metrics) crate, for any exporter (Prometheus, StatsD, OpenTelemetry) |
//!
//! ```toml
//! [dependencies]
//! axum-tcp-pool = { version = "0.1", features = ["tls", "metrics"] }
//! ```
//!
//! [bb8]: https://docs.rs/bb8

#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![warn(rust_2018_idioms, unreachable_pub)]

mod builder;
mod config;
mod connection;
mod endpoint;
mod error;
mod extract;
mod future;
mod layer;
pub mod manager;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
mod pool;
mod response;
mod service;
mod slot;
mod state;
mod stream;
#[cfg(feature = "tls")]
mod tls;

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
pub use stream::BackendStream;
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub use tls::TlsConfig;

/// The rustls crate the `tls` feature is built on (through tokio-rustls), re-exported for
/// [`TlsConfig::from_rustls`] and for naming the types of a TLS session. Available with the
/// `tls` feature.
///
/// ```
/// use axum_tcp_pool::rustls::RootCertStore;
/// let roots = RootCertStore::empty();
/// ```
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub use tokio_rustls::rustls;

/// The tokio-rustls crate behind the `tls` feature, re-exported so that the type inside
/// [`BackendStream::Tls`] can be named. Available with the `tls` feature.
///
/// ```no_run
/// use axum_tcp_pool::tokio_rustls::client::TlsStream;
/// fn version(tls: &TlsStream<tokio::net::TcpStream>) {
///     println!("{:?}", tls.get_ref().1.protocol_version());
/// }
/// ```
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub use tokio_rustls;
