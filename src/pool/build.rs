//! Building a pool from a [`TcpPoolBuilder`]: validation, the bb8 pool, the shared state.

use std::sync::Arc;

use crate::error::TcpPoolError;
use crate::failfast::FailFast;
use crate::pool::builder::TcpPoolBuilder;
use crate::pool::manager::{FailureSink, TcpManager};
use crate::pool::shared::Shared;
use crate::pool::TcpPool;
use crate::state::Counters;

impl TcpPoolBuilder {
    /// Validates the settings and builds the pool. No I/O: connections are opened on demand
    /// (and `min_idle` of them in the background).
    ///
    /// Must be called from within a Tokio runtime (bb8 spawns its background tasks there).
    ///
    /// # Errors
    ///
    /// [`TcpPoolError::Config`], with a message that says what to fix, for: `max_size(0)`,
    /// `min_idle > max_size`, a zero timeout (`checkout_timeout`, `connect_timeout`,
    /// `idle_timeout(Some(ZERO))`, `max_lifetime(Some(ZERO))`), a keepalive outside 1 s to
    /// 32767 s, an address without a port, a `unix:` address without a usable path, TLS
    /// settings that cannot be used (see `TlsConfig`), an empty [`name`](Self::name), or no
    /// Tokio runtime.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use axum_tcp_pool::{TcpPool, TcpPoolError};
    /// let err = TcpPool::builder("127.0.0.1:6379").max_size(0).build().unwrap_err();
    /// assert!(matches!(err, TcpPoolError::Config(_)));
    /// let err = TcpPool::builder("localhost").build().unwrap_err();
    /// assert!(err.to_string().contains("no port"));
    /// # }
    /// ```
    pub fn build(self) -> Result<TcpPool, TcpPoolError> {
        let (builder, shared) = self.prepare()?;
        let pool = builder.build_unchecked(TcpManager {
            shared: shared.clone(),
        });
        Ok(TcpPool::new(pool, shared))
    }

    /// Validates the settings and makes the bb8 builder and the shared state.
    fn prepare(self) -> Result<(bb8::Builder<TcpManager>, Arc<Shared>), TcpPoolError> {
        let config = self.config;
        let connector = config.validate()?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(TcpPoolError::config(
                "build() must be called from within a Tokio runtime (bb8 spawns its background tasks there)",
            ));
        }
        let builder = bb8::Pool::builder()
            .max_size(config.max_size)
            .min_idle((config.min_idle > 0).then_some(config.min_idle))
            .test_on_check_out(true)
            .max_lifetime(config.max_lifetime)
            .idle_timeout(config.idle_timeout)
            .connection_timeout(config.checkout_timeout)
            // Fail fast: one attempt per request; waiting requests are told at once.
            .retry_connection(false)
            .reaper_rate(config.reaper_rate())
            // Reuse the most recently returned connection, so surplus ones go idle and expire.
            .queue_strategy(bb8::QueueStrategy::Lifo);
        let shared = Arc::new(Shared {
            config,
            connector,
            counters: Counters::default(),
            fail_fast: FailFast::default(),
        });
        let builder = builder.error_sink(Box::new(FailureSink(shared.clone())));
        Ok((builder, shared))
    }

    /// Builds the pool and waits until `min_idle` connections (at least one) are open: the
    /// fail-fast alternative to [`build`](Self::build), for a service that should not start
    /// without its backend.
    ///
    /// # Errors
    ///
    /// Everything [`build`](Self::build) returns, and
    /// [`TcpPoolError::BackendUnreachable`] as soon as a connect attempt fails (or
    /// [`TcpPoolError::CheckoutTimeout`] if connections cannot be had in time).
    ///
    /// # Cancellation
    ///
    /// Dropping the future drops the pool being built, closing what it opened.
    ///
    /// ```no_run
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), axum_tcp_pool::TcpPoolError> {
    /// let pool = axum_tcp_pool::TcpPool::builder("127.0.0.1:6379").min_idle(2).connect().await?;
    /// assert!(pool.state().idle >= 2);
    /// # Ok(()) }
    /// ```
    pub async fn connect(self) -> Result<TcpPool, TcpPoolError> {
        let (builder, shared) = self.prepare()?;
        let manager = TcpManager {
            shared: shared.clone(),
        };
        if shared.config.min_idle > 0 {
            // bb8 opens the min_idle connections concurrently and, with retries off, returns
            // the first connect error at once. (Checking them out one by one instead would
            // make bb8 open more to keep min_idle of them idle.)
            let pool = builder.build(manager).await?;
            return Ok(TcpPool::new(pool, shared));
        }
        let pool = TcpPool::new(builder.build_unchecked(manager), shared);
        drop(pool.get().await?);
        Ok(pool)
    }
}
