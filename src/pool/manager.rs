//! The bb8 connection manager: connect, the checkout health check, and the return-time
//! verdict of the clean-connection rule.

use std::sync::Arc;

use crate::clean::{self, Tracker};
use crate::error::TcpPoolError;
use crate::pool::health;
use crate::pool::pooled::PooledStream;
use crate::pool::shared::Shared;

/// The [`bb8::ManageConnection`] behind a pool.
#[derive(Debug, Clone)]
pub(crate) struct TcpManager {
    pub(crate) shared: Arc<Shared>,
}

impl bb8::ManageConnection for TcpManager {
    type Connection = PooledStream;
    type Error = TcpPoolError;

    async fn connect(&self) -> Result<PooledStream, TcpPoolError> {
        let shared = &self.shared;
        let attempt = shared.fail_fast.begin_attempt();
        // `attempt` ends after a failure is recorded (bb8 wakes the waiters, through the error
        // sink, only after `connect` has returned).
        match shared.connector.connect().await {
            Ok(stream) => {
                tracing::debug!(
                    pool = shared.config.name(),
                    addr = %shared.config.addr(),
                    "opened backend connection"
                );
                Ok(PooledStream {
                    stream,
                    tracker: Tracker::default(),
                    fresh: true,
                    lent: false,
                    attempt: attempt.number(),
                    runtime: tokio::runtime::Handle::try_current().ok(),
                })
            }
            Err(e) => {
                attempt.failed(&e);
                shared.connect_failed(&e, "connect to backend failed");
                Err(TcpPoolError::BackendUnreachable(e))
            }
        }
    }

    async fn is_valid(&self, conn: &mut PooledStream) -> Result<(), TcpPoolError> {
        health::check(&self.shared, conn).await
    }

    fn has_broken(&self, conn: &mut PooledStream) -> bool {
        let shared = &self.shared;
        if std::mem::take(&mut conn.lent) {
            shared.fail_fast.give_back();
        }
        let Some(reason) = clean::returned(&conn.tracker, &mut conn.stream) else {
            return false;
        };
        shared.counters.discarded(reason);
        let (pool, addr) = (shared.config.name(), shared.config.addr());
        if reason.is_backend_failure() {
            // The backend failed during an exchange: worth an operator's attention.
            tracing::warn!(pool, %addr, reason = reason.as_str(), "closing connection instead of reusing it");
        } else {
            // Routine: the request or the handler decided, or an idle connection went stale.
            tracing::debug!(pool, %addr, reason = reason.as_str(), "closing connection instead of reusing it");
        }
        // FIN now, before bb8 decides whether to open a replacement.
        conn.stream.close_now();
        true
    }
}

/// bb8's error sink: it gets each error bb8 does not return to a caller (failed connects,
/// failed health checks) after bb8 has updated its own counts.
#[derive(Debug, Clone)]
pub(crate) struct FailureSink(pub(crate) Arc<Shared>);

impl bb8::ErrorSink<TcpPoolError> for FailureSink {
    fn sink(&self, error: TcpPoolError) {
        // Routine health-check failures come as `Io`; only a backend failure wakes waiters.
        if let TcpPoolError::BackendUnreachable(_) = error {
            self.0.fail_fast.wake();
        }
    }

    fn boxed_clone(&self) -> Box<dyn bb8::ErrorSink<TcpPoolError>> {
        Box::new(self.clone())
    }
}
