//! [`Shared`]: what every handle of one pool and its bb8 manager share.

use std::io;

use crate::failfast::FailFast;
use crate::pool::config::Config;
use crate::state::Counters;
use crate::transport::Connector;

/// The validated settings, the connector, the counters and the fail-fast state of one pool.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) connector: Connector,
    pub(crate) counters: Counters,
    pub(crate) fail_fast: FailFast,
}

impl Shared {
    /// Counts and logs a failed connect attempt (or a backend that accepts connections but
    /// fails every new one's health check).
    pub(crate) fn connect_failed(&self, err: &io::Error, what: &str) {
        self.counters.connect_failed();
        tracing::warn!(
            pool = self.config.name(),
            addr = %self.config.addr(),
            reason = %err.kind(),
            error = %err,
            "{what}"
        );
    }
}
