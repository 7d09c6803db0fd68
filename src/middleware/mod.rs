//! The HTTP edge, shaped like a tower-http middleware: the layer ([`TcpPoolLayer`], settings
//! only), its service ([`TcpPoolService`], which puts a connection or the pool into each
//! request's [slot](slot)), the response future ([`ResponseFuture`]: check out, then run the
//! inner service, and drop unfinished work inside the cancellation scope), the extractors
//! ([`TcpConnection`](crate::TcpConnection)'s and [`LazyConnection`]), and the
//! `IntoResponse` of [`TcpPoolError`](crate::TcpPoolError). Nothing outside this module knows
//! about `http`, `axum` or `tower`.

mod extract;
mod future;
mod layer;
mod lazy;
mod response;
mod service;
mod slot;

pub use future::ResponseFuture;
pub use layer::TcpPoolLayer;
pub use lazy::LazyConnection;
pub use service::TcpPoolService;
