//! Building a pool from a [`TcpPoolBuilder`]: validation, the bb8 pool, the shared state.

use std::sync::Arc;

use crate::error::TcpPoolError;
use crate::pool::builder::TcpPoolBuilder;
use crate::pool::config::Config;
use crate::pool::TcpPool;
use crate::replicas::{resolve, Ejections, Endpoint, Endpoints};

impl TcpPoolBuilder {
    /// Validates the settings and builds the pool. No I/O: connections are opened on demand
    /// (and `min_idle` of them in the background).
    ///
    /// Must be called from within a Tokio runtime (the pool's background tasks run there).
    ///
    /// # Errors
    ///
    /// [`TcpPoolError::Config`], with a message that says what to fix, for: `max_size(0)`,
    /// `min_idle > max_size`, a zero timeout (`checkout_timeout`, `connect_timeout`,
    /// `idle_timeout(Some(ZERO))`, `max_lifetime(Some(ZERO))`, `leak_threshold(Some(ZERO))`,
    /// `idle_probe_interval(Some(ZERO))`), a `max_lifetime_jitter` outside 0.0 to 0.5 (or
    /// NaN), a keepalive outside 1 s to
    /// 32767 s, an address without a port, a `unix:` address without a usable path, TLS
    /// settings that cannot be used (see `TlsConfig`), an empty [`name`](Self::name), a
    /// [`reconnect_backoff`](Self::reconnect_backoff) whose `min` exceeds its `max`, or no
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
        let (config, ejections, runtime) = self.prepare()?;
        // A set to be resolved starts empty: checkouts wait for the first lookup.
        let endpoints = match config.resolve_every {
            Some(_) => Vec::new(),
            None => config
                .addrs()
                .zip(0..)
                .map(|(addr, id)| Endpoint::start(&config, addr, addr, id, &ejections))
                .collect::<Result<Vec<_>, _>>()?,
        };
        Ok(Self::finish(config, endpoints, ejections, runtime))
    }

    /// Validates the settings; the shared settings, ejection budget and runtime.
    fn prepare(
        self,
    ) -> Result<(Arc<Config>, Arc<Ejections>, tokio::runtime::Handle), TcpPoolError> {
        self.config.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            TcpPoolError::config(
                "build() must be called from within a Tokio runtime (bb8 spawns its background tasks there)",
            )
        })?;
        let ejections = Arc::new(Ejections::new(&self.config.outlier));
        Ok((Arc::new(self.config), ejections, runtime))
    }

    fn finish(
        config: Arc<Config>,
        endpoints: Vec<Arc<Endpoint>>,
        ejections: Arc<Ejections>,
        runtime: tokio::runtime::Handle,
    ) -> TcpPool {
        let resolve_every = config.resolve_every;
        let set = Endpoints::new(config, endpoints, ejections, runtime);
        if let Some(every) = resolve_every {
            resolve::spawn(&set, every);
        }
        TcpPool::new(set)
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
        let single = self.config.endpoints.is_empty() && self.config.resolve_every.is_none();
        if single && self.config.min_idle > 0 {
            let (config, ejections, runtime) = self.prepare()?;
            let endpoint = Endpoint::start_filled(&config, &config.addr, 0, &ejections).await?;
            return Ok(Self::finish(config, vec![endpoint], ejections, runtime));
        }
        // Several endpoints: one connection from any of them (with failover) proves the
        // backend reachable; min_idle is then opened in the background on each.
        let pool = self.build()?;
        drop(pool.get().await?);
        Ok(pool)
    }
}
