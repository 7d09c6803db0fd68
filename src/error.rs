//! The crate's one error type.

use std::io;

/// Everything that can go wrong when configuring a pool, checking a connection out of it,
/// or talking to the backend over it.
///
/// The variants are meant to be matched on; the type is `#[non_exhaustive]` so that new
/// failure kinds can be added without a breaking change.
///
/// `Display` carries detail for logs (it may contain an address or an OS error text). The
/// HTTP response made by [`IntoResponse`](axum_core::response::IntoResponse) never does: the
/// body is a short generic sentence and the detail goes to `tracing`.
///
/// # HTTP responses
///
/// | variant | when | status |
/// |---|---|---|
/// | [`CheckoutTimeout`](Self::CheckoutTimeout) | no connection free within `checkout_timeout` | `503`, `Retry-After: 1` |
/// | [`Closed`](Self::Closed) | the pool was closed (`pool.close()`, at shutdown) | `503`, `Retry-After: 1` |
/// | [`BackendUnreachable`](Self::BackendUnreachable) | connect refused or timed out, name not resolved, socket file missing, TLS handshake failed, or new connections keep failing the health check; waiting checkouts get it as soon as an attempt fails | `502` |
/// | [`Io`](Self::Io) | an `io::Error` in the handler, via `?` | `502` |
/// | [`MissingLayer`](Self::MissingLayer) | a connection extracted without a `TcpPoolLayer` of its marker on the route | `500` |
/// | [`AlreadyExtracted`](Self::AlreadyExtracted) | a connection extracted twice in one request | `500` |
/// | [`Config`](Self::Config) | invalid settings, from `build()` or `connect()` | `500` |
///
/// Bodies are short generic sentences ending in a newline; the detail goes to `tracing`
/// (`warn` for `502`/`503`, `error` for `500`, `debug` for `Closed`; during an outage the
/// `502` warnings of failed checkouts are the first one, then a counted summary every 5 s).
/// A handler may take `Result<TcpConnection, TcpPoolError>`, or `Option<TcpConnection>` to
/// get `None` (a missing layer or second extraction is logged at `warn`, other reasons at
/// `debug`).
///
/// # Example
///
/// ```
/// use axum_tcp_pool::TcpPoolError;
///
/// fn describe(err: &TcpPoolError) -> &'static str {
///     match err {
///         TcpPoolError::CheckoutTimeout => "pool exhausted, retry later",
///         TcpPoolError::BackendUnreachable(_) => "backend down",
///         TcpPoolError::Config(_) => "fix the configuration",
///         TcpPoolError::Io(_) => "backend I/O failed",
///         _ => "other",
///     }
/// }
/// assert_eq!(describe(&TcpPoolError::CheckoutTimeout), "pool exhausted, retry later");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TcpPoolError {
    /// No connection became free within the pool's `checkout_timeout` (the pool is exhausted).
    ///
    /// Answered with `503 Service Unavailable` and a `Retry-After` header.
    #[error("timed out waiting for a free connection from the pool")]
    CheckoutTimeout,

    /// A connection to the backend could not be opened: the connection was refused, the name
    /// did not resolve, the Unix socket file is missing, the connect attempt (TLS handshake
    /// included) timed out, or the TLS handshake failed (the inner error carries rustls'
    /// reason, e.g. `UnknownIssuer`); or the backend accepts connections
    /// but more than `max_size` new ones in a row failed their health check. The inner error
    /// says which (for logs). Checkouts waiting for a connection get it as soon as an attempt
    /// fails, not after the checkout timeout.
    ///
    /// Answered with `502 Bad Gateway`.
    #[error("backend unreachable: {0}")]
    BackendUnreachable(#[source] io::Error),

    /// The pool configuration is invalid; the message says what to fix.
    ///
    /// Returned by [`TcpPoolBuilder::build`](crate::TcpPoolBuilder::build) and
    /// [`TcpPoolBuilder::connect`](crate::TcpPoolBuilder::connect). Answered with
    /// `500 Internal Server Error`.
    #[error("invalid pool configuration: {0}")]
    Config(String),

    /// An I/O error on a checked-out connection (typically raised by a handler with `?`).
    ///
    /// Answered with `502 Bad Gateway`. `From<io::Error>` makes `?` on *any* `io::Error` in a
    /// handler returning `Result<_, TcpPoolError>` a `502`: for I/O that is not the backend's
    /// (a file), use the app's own error type.
    #[error("backend I/O error: {0}")]
    Io(#[from] io::Error),

    /// [`TcpConnection`](crate::TcpConnection) was extracted in a request that did not go
    /// through [`TcpPoolLayer`](crate::TcpPoolLayer).
    ///
    /// Answered with `500 Internal Server Error` and a body that names the missing layer.
    #[error("TcpConnection extracted without TcpPoolLayer: add `.route_layer(TcpPoolLayer::new(pool))` to its route")]
    MissingLayer,

    /// The pool was [closed](crate::TcpPool::close): it hands out no connection any more.
    ///
    /// Answered with `503 Service Unavailable` and a `Retry-After` header (the service is
    /// shutting down; another instance may serve the retry).
    #[error("the connection pool is closed")]
    Closed,

    /// [`TcpConnection`](crate::TcpConnection) was extracted twice in the same request.
    ///
    /// Answered with `500 Internal Server Error`.
    #[error("TcpConnection was already extracted for this request; extract it once")]
    AlreadyExtracted,
}

impl TcpPoolError {
    pub(crate) fn config(msg: impl Into<String>) -> Self {
        TcpPoolError::Config(msg.into())
    }
}

/// The inner error of a [`BackendUnreachable`](TcpPoolError::BackendUnreachable) from a
/// checkout: the endpoint it last tried, for the logs (its `Display` leads with it).
pub(crate) struct EndpointError {
    pub(crate) endpoint: std::sync::Arc<str>,
    pub(crate) source: io::Error,
    /// The pool's throttle of the `warn` logged for these errors' responses.
    pub(crate) log: std::sync::Arc<crate::failfast::throttle::Throttle>,
}

impl std::fmt::Debug for EndpointError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointError")
            .field("endpoint", &self.endpoint)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Display for EndpointError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "endpoint {}: {}", self.endpoint, self.source)
    }
}

impl std::error::Error for EndpointError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl EndpointError {
    /// `err`, of the same kind, naming `endpoint`; its response's `warn` goes through `log`.
    pub(crate) fn wrap(
        endpoint: std::sync::Arc<str>,
        err: io::Error,
        log: &std::sync::Arc<crate::failfast::throttle::Throttle>,
    ) -> io::Error {
        io::Error::new(
            err.kind(),
            EndpointError {
                endpoint,
                source: err,
                log: log.clone(),
            },
        )
    }
}

impl TcpPoolError {
    /// The inner error of a checkout's `BackendUnreachable`: the endpoint it last tried.
    pub(crate) fn endpoint_error(&self) -> Option<&EndpointError> {
        match self {
            TcpPoolError::BackendUnreachable(e) => e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<EndpointError>()),
            _ => None,
        }
    }
}
