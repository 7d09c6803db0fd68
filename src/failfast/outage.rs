//! [`Outage`]: the log of one endpoint's connect failures. The first failure of an outage is
//! a `warn` with the error; then at most one `warn` summary per [`EVERY`] with the failed and
//! refused (backed-off) attempts since the last line; the first success after it an `info`
//! ("reconnected after N failures"). Every attempt also gets a `debug` line.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use crate::failfast::throttle::{Line, Throttle, EVERY};

const FAILED: usize = 0;
const REFUSED: usize = 1;

/// One endpoint's outage log.
#[derive(Debug, Default)]
pub(crate) struct Outage {
    throttle: Throttle,
    /// An outage is under way: read first, so a success costs no lock while healthy.
    down: AtomicBool,
}

impl Outage {
    /// A connect attempt failed.
    pub(crate) fn failed(&self, pool: &str, endpoint: &str, err: &io::Error) {
        self.down.store(true, Relaxed);
        let reason = err.kind();
        match self.throttle.event(FAILED, false) {
            Line::First => tracing::warn!(
                pool,
                addr = endpoint,
                endpoint,
                reason = %reason,
                error = %err,
                "connect to backend failed"
            ),
            Line::Summary([failures, backed_off]) => tracing::warn!(
                pool,
                addr = endpoint,
                endpoint,
                reason = %reason,
                error = %err,
                failures,
                backed_off,
                every_s = EVERY.as_secs(),
                "connect to backend still failing ({failures} failed, {backed_off} backed off since the last line)"
            ),
            Line::Quiet => tracing::debug!(
                pool,
                addr = endpoint,
                endpoint,
                reason = %reason,
                error = %err,
                "connect to backend failed"
            ),
        }
    }

    /// A connect attempt was refused by the reconnect backoff (no SYN sent).
    pub(crate) fn refused(&self, pool: &str, endpoint: &str) {
        match self.throttle.event(REFUSED, false) {
            Line::Summary([failures, backed_off]) => tracing::warn!(
                pool,
                addr = endpoint,
                endpoint,
                failures,
                backed_off,
                every_s = EVERY.as_secs(),
                "connect to backend still failing ({failures} failed, {backed_off} backed off since the last line)"
            ),
            Line::First | Line::Quiet => tracing::debug!(
                pool,
                addr = endpoint,
                endpoint,
                "connect to backend backed off: the endpoint is down, not retried yet"
            ),
        }
    }

    /// A connect attempt succeeded: ends the outage, if one was under way.
    pub(crate) fn connected(&self, pool: &str, endpoint: &str) {
        if !self.down.load(Relaxed) {
            return;
        }
        self.down.store(false, Relaxed);
        if let Some([failures, backed_off]) = self.throttle.end() {
            tracing::info!(
                pool,
                addr = endpoint,
                endpoint,
                failures,
                backed_off,
                "reconnected after {failures} failures"
            );
        }
    }
}
