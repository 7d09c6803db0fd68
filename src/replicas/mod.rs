//! Several endpoints per pool: the set and its run-time changes ([`Endpoints`]), one
//! endpoint with its own bb8 pool ([`Endpoint`]), the balancer ([`Balance`]), outlier
//! detection ([`OutlierDetection`]) and DNS re-resolution. The user-facing story is in
//! [`TcpPoolBuilder`'s docs](crate::TcpPoolBuilder#several-endpoints).

mod balance;
mod endpoint;
pub(crate) mod outlier;
pub(crate) mod resolve;
mod set;

pub use balance::Balance;
pub use outlier::OutlierDetection;

pub(crate) use endpoint::Endpoint;
pub(crate) use outlier::{Ejections, Outlier};
pub(crate) use set::{Endpoints, Tried};
