//! [`Endpoint`]: one address of a pool, with its own bb8 pool.

use std::sync::Arc;

use crate::error::TcpPoolError;
use crate::failfast::FailFast;
use crate::lifecycle::{self, Lifecycle};
use crate::pool::leak::{self, Leaks};
use crate::pool::{Config, FailureSink, Shared, TcpManager};
use crate::replicas::outlier::{Ejections, Outlier};
use crate::state::{Counters, EndpointState, PoolState};

/// One endpoint: its bb8 pool (`max_size` and `min_idle` apply to each endpoint) and what
/// its manager and connections share.
#[derive(Debug)]
pub(crate) struct Endpoint {
    pub(crate) id: u64,
    pub(crate) pool: bb8::Pool<TcpManager>,
    pub(crate) shared: Arc<Shared>,
    /// The address it was resolved from (the address itself if not resolved).
    pub(crate) name_addr: String,
}

impl Endpoint {
    /// The endpoint at `addr` (resolved from `name_addr`), with its lifecycle task; opens
    /// nothing but `min_idle` connections, in the background.
    pub(crate) fn start(
        config: &Arc<Config>,
        addr: &str,
        name_addr: &str,
        id: u64,
        ejections: &Arc<Ejections>,
    ) -> Result<Arc<Endpoint>, TcpPoolError> {
        let endpoint = Self::unstarted(config, addr, name_addr, id, ejections)?;
        lifecycle::spawn(&endpoint);
        Ok(endpoint)
    }

    /// The same, waiting until its `min_idle` connections are open (concurrently); the first
    /// connect error is returned at once.
    pub(crate) async fn start_filled(
        config: &Arc<Config>,
        addr: &str,
        id: u64,
        ejections: &Arc<Ejections>,
    ) -> Result<Arc<Endpoint>, TcpPoolError> {
        let endpoint = Self::unstarted(config, addr, addr, id, ejections)?;
        lifecycle::fill(&endpoint).await?;
        lifecycle::spawn(&endpoint);
        Ok(endpoint)
    }

    fn unstarted(
        config: &Arc<Config>,
        addr: &str,
        name_addr: &str,
        id: u64,
        ejections: &Arc<Ejections>,
    ) -> Result<Arc<Endpoint>, TcpPoolError> {
        let (builder, shared) = Self::prepare(config, addr, name_addr, id, ejections)?;
        let pool = builder.build_unchecked(TcpManager {
            shared: shared.clone(),
        });
        Ok(Arc::new(Endpoint {
            id,
            pool,
            shared,
            name_addr: name_addr.to_owned(),
        }))
    }

    fn prepare(
        config: &Arc<Config>,
        addr: &str,
        name_addr: &str,
        id: u64,
        ejections: &Arc<Ejections>,
    ) -> Result<(bb8::Builder<TcpManager>, Arc<Shared>), TcpPoolError> {
        let connector = config.connector(addr, name_addr)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            TcpPoolError::config("a pool's endpoints must be made within a Tokio runtime")
        })?;
        let builder = bb8::Pool::builder()
            .max_size(config.max_size)
            // The lifecycle task does these instead of bb8's reaper (see `lifecycle`): bb8
            // then runs no reaper and opens connections only for checkouts.
            .min_idle(None)
            .max_lifetime(None)
            .idle_timeout(None)
            .test_on_check_out(true)
            .connection_timeout(config.checkout_timeout)
            // Fail fast: one attempt per request; waiting requests are told at once.
            .retry_connection(false)
            // Reuse the most recently returned connection, so surplus ones go idle and expire.
            .queue_strategy(bb8::QueueStrategy::Lifo);
        let shared = Arc::new(Shared {
            config: config.clone(),
            addr: addr.into(),
            connector,
            counters: Counters::default(),
            fail_fast: FailFast::new(config.reconnect_backoff),
            outlier: Outlier::new(config.outlier, ejections.clone(), id),
            waiting: Default::default(),
            open: Default::default(),
            removed: Default::default(),
            drained: Default::default(),
            runtime,
            lifecycle: Lifecycle::new(),
            leaks: Leaks::new(config.leak_threshold),
        });
        leak::spawn(&shared);
        let builder = builder.error_sink(Box::new(FailureSink(shared.clone())));
        Ok((builder, shared))
    }

    /// This endpoint's sizes and counters, and its entry in [`PoolState::endpoints`].
    pub(crate) fn state(&self) -> (PoolState, EndpointState) {
        let consistent = self.shared.lifecycle.consistent_for_state();
        let mut s = self.shared.counters.snapshot(self.pool.state());
        self.shared.lifecycle.counted(&mut s);
        drop(consistent);
        let e = EndpointState {
            addr: self.shared.addr.to_string(),
            connections: s.connections,
            idle: s.idle,
            in_use: s.in_use,
            ejected: self.shared.outlier.is_ejected(),
            consecutive_failures: self.shared.outlier.consecutive_failures(),
            times_ejected: self.shared.outlier.times_ejected(),
            checkouts: self.shared.fail_fast.lends(),
        };
        (s, e)
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        // Its lifecycle task holds a weak reference: it ends when it wakes.
        self.shared.lifecycle.wake();
    }
}
