//! Test and example support for `axum-tcp-pool` (not published): what the integration tests,
//! the examples and the benches share, in one place instead of `#[path]` includes across
//! trees.
//!
//! - [`backend`]: the scriptable line-protocol backend that counts what it sees;
//! - [`backoff`]: the reconnect backoff's schedule;
//! - `blackhole` (Linux): a backend whose accept queue is full, so connects to it hang;
//! - [`proxy`]: the fault-injecting TCP proxy, and [`rng`], its seeded randomness;
//! - [`echo`]: one line exchange, and the tagged handler of the chaos test and the soak;
//! - [`app`]: the handlers the tests drive, and [`setup`];
//! - [`http`]: an axum server on a free loopback port, and real HTTP clients;
//! - [`redis`]: a real `redis-server` per test; [`redis_kv`]: the `redis_kv` example's app;
//! - [`memcached`]: a real `memcached` per test; [`memcached_kv`]: the `memcached_kv`
//!   example's app;
//! - [`replicas`]: N backends behind one pool of several endpoints, and handlers that say
//!   which endpoint served;
//! - [`require_binary`]: skip (or, in CI, fail) a test whose server binary is missing;
//! - [`example`]: the examples' plumbing (logging, listener, serving, in-process backends);
//! - [`logs`]: log lines captured by level; [`events`]: the crate's events with their fields;
//! - [`wait`]: bounded waits; [`tempdir`]: a temporary directory.
//!
//! The crate's own unit tests (in `src/`) do not use it: through it they would link a second
//! copy of the crate.

pub mod app;
pub mod backend;
pub mod backoff;
#[cfg(target_os = "linux")]
pub mod blackhole;
pub mod echo;
pub mod events;
pub mod example;
pub mod http;
pub mod logs;
pub mod memcached;
pub mod memcached_kv;
pub mod proxy;
pub mod redis;
pub mod redis_kv;
pub mod replicas;
mod require;
pub mod rng;
pub mod tempdir;
pub mod wait;

pub use app::{assert_no_leak, setup};
pub use backend::{nothing_listens, Backend, Seen};
pub use echo::read_line;
pub use http::{serve, serve_until_stopped, BytesClient, BytesReply, HttpClient, Reply};
pub use require::require_binary;
pub use tempdir::TempDir;
pub use wait::{bounded, wait_pool, BOUND};
