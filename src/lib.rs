#![doc = include_str!("../README.md")]
//!
//! ## Stability
//!
//! - bb8 is an implementation detail: not re-exported, no `TcpPool::bb8()`.
//! - With `tls`, `rustls` and `tokio_rustls` are re-exported because
//!   `TlsConfig::from_rustls` and `BackendStream::Tls` expose their types: a
//!   semver-incompatible release of those (e.g. rustls 0.23 to 0.24) is a breaking release of
//!   this crate.
//! - [`TcpPoolError`], [`DiscardReason`] and [`PoolState`] are `#[non_exhaustive]`,
//!   [`DiscardReason::ALL`] is a slice: new reasons are not breaking.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![warn(rust_2018_idioms, unreachable_pub)]

// The core (no HTTP): where and how to connect, the clean-connection rule, fail-fast, the
// pool, its counters. The HTTP edge is built on it.
mod clean;
mod error;
mod failfast;
mod framed;
mod lifecycle;
mod pool;
mod replicas;
mod state;
mod transport;

mod middleware;

#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;

pub use clean::{DiscardReason, Guarded};
pub use error::TcpPoolError;
pub use framed::{IntoConnectionError, PooledFramed};
pub use middleware::{LazyConnection, ResponseFuture, TcpPoolLayer, TcpPoolService};
pub use pool::{ProbeFn, ProbeFuture, TcpConnection, TcpPool, TcpPoolBuilder};
pub use replicas::{Balance, OutlierDetection};
pub use state::{Discards, EndpointState, PoolState};
pub use transport::BackendStream;
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub use transport::TlsConfig;

/// The rustls crate behind the `tls` feature, re-exported for
/// [`TlsConfig::from_rustls`] and the types of a TLS session: a major version of rustls is a
/// major version of this crate.
///
/// ```
/// use axum_tcp_pool::rustls::RootCertStore;
/// let roots = RootCertStore::empty();
/// ```
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub use tokio_rustls::rustls;

/// The tokio-rustls crate behind the `tls` feature, re-exported so that the type inside
/// [`BackendStream::Tls`] can be named: a major version of it is a major version of this
/// crate.
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
