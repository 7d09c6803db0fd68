//! Transport: where and how a pool connects (TCP, Unix domain sockets, TLS over TCP), the
//! stream a connection holds, and the idle check that looks at it without blocking.

mod address;
mod connect;
mod idle;
mod stream;
#[cfg(feature = "tls")]
mod tls;

pub(crate) use address::Address;
pub(crate) use connect::Connector;
pub(crate) use idle::NotClean;
pub use stream::BackendStream;
#[cfg(feature = "tls")]
pub use tls::TlsConfig;
