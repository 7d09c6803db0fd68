//! The bb8 connection manager of one endpoint: connect, the checkout health check, and the
//! return-time verdict of the clean-connection rule, which also feeds outlier detection.

use std::io;
use std::sync::Arc;

use crate::clean::{self, DiscardReason};
use crate::error::TcpPoolError;
use crate::failfast::backoff::Admission;
use crate::lifecycle;
use crate::pool::health;
use crate::pool::pooled::PooledStream;
use crate::pool::shared::Shared;

/// The [`bb8::ManageConnection`] behind one endpoint.
#[derive(Debug, Clone)]
pub(crate) struct TcpManager {
    pub(crate) shared: Arc<Shared>,
}

/// The error of a connect to an endpoint taken out of the set (not a backend failure).
pub(crate) fn removed() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "the endpoint was removed from the pool",
    )
}

/// The error of a connect refused by the reconnect backoff (no attempt made): of the kind
/// of the last failure of a real attempt.
fn backed_off(kind: io::ErrorKind) -> io::Error {
    io::Error::new(
        kind,
        "connect not retried yet after a failed one (reconnect backoff)",
    )
}

impl bb8::ManageConnection for TcpManager {
    type Connection = PooledStream;
    type Error = TcpPoolError;

    async fn connect(&self) -> Result<PooledStream, TcpPoolError> {
        let result = self.attempt().await;
        if self.shared.is_removed() {
            // The attempt has ended: `TcpPool::close` may be waiting for it.
            self.shared.drained.notify_waiters();
        }
        result
    }

    async fn is_valid(&self, conn: &mut PooledStream) -> Result<(), TcpPoolError> {
        if lifecycle::sweeping() {
            // The lifecycle task taking idle connections out: not a checkout.
            return Ok(());
        }
        if self.shared.is_removed() {
            return Err(TcpPoolError::Io(removed()));
        }
        match health::check(&self.shared, conn).await {
            Err(e) if lifecycle::parked() => {
                // Polled under the gate's lock with connections out: bb8 would look for
                // another idle connection, or connect, next; wait for them first. Boxed with
                // the error: this is rare, and every checkout's future would carry it.
                let shared = &self.shared;
                Box::pin(async move {
                    shared.lifecycle.check_failed(|| shared.is_removed()).await;
                    Err(e)
                })
                .await
            }
            result => result,
        }
    }

    fn has_broken(&self, conn: &mut PooledStream) -> bool {
        self.returned(conn)
    }
}

impl TcpManager {
    /// One connect attempt.
    async fn attempt(&self) -> Result<PooledStream, TcpPoolError> {
        let shared = &self.shared;
        let attempt = shared.fail_fast.begin_attempt();
        // `attempt` ends after a failure is recorded (bb8 wakes the waiters, through the error
        // sink, only after `connect` has returned).
        if shared.is_removed() {
            // Fails the checkouts still waiting here at once, so they move to another endpoint.
            let e = removed();
            attempt.failed(&e);
            return Err(TcpPoolError::BackendUnreachable(e));
        }
        // The reconnect backoff: while the endpoint is backing off, fail at once, no SYN.
        let permit = match shared.fail_fast.backoff.admit() {
            Admission::Go(permit) => permit,
            Admission::Refused => {
                let e = backed_off(shared.fail_fast.last_failure_kind());
                attempt.failed(&e);
                shared.connect_backed_off();
                // A failure for outlier detection too: the endpoint is known down.
                shared.failed();
                return Err(TcpPoolError::BackendUnreachable(e));
            }
        };
        let result = shared.connector.connect().await;
        match &result {
            Ok(_) => permit.succeeded(),
            Err(_) => permit.failed(),
        }
        match result {
            Ok(_) if shared.is_removed() => {
                // Removed while connecting: the connection must not idle in a drained pool.
                let e = removed();
                attempt.failed(&e);
                Err(TcpPoolError::BackendUnreachable(e))
            }
            Ok(stream) => {
                shared.connect_succeeded();
                tracing::debug!(
                    pool = shared.config.name(),
                    addr = &*shared.addr,
                    endpoint = &*shared.addr,
                    "opened backend connection"
                );
                Ok(PooledStream::new(stream, attempt.number(), shared.clone()))
            }
            Err(e) => {
                attempt.failed(&e);
                shared.connect_attempt_failed(&e);
                shared.failed();
                Err(TcpPoolError::BackendUnreachable(e))
            }
        }
    }

    /// bb8's `has_broken`: the return-time verdict of the clean-connection rule.
    fn returned(&self, conn: &mut PooledStream) -> bool {
        let shared = &self.shared;
        if let Some(verdict) = conn.life.sweep.take() {
            // Back from the lifecycle task (or new from it): neither a lend nor a return.
            let close = lifecycle::swept_back(shared, verdict);
            if close {
                conn.stream.close_now();
            }
            return close;
        }
        let lent = std::mem::take(&mut conn.lent);
        if lent {
            shared.fail_fast.give_back();
            if let Some(lease) = &conn.lease {
                lease.returned(shared);
            }
            shared.outlier.pool().returns.returned();
        }
        let marked = conn.tracker.marked();
        let verdict = clean::returned(&conn.tracker, &mut conn.stream);
        if lent {
            // Outlier detection: what the handler met on it. A clean return after use ends
            // the failures in a row; an idle connection found closed is neither.
            match marked {
                // Not `Codec`: a frame the app's codec could not decode may be the app's bug.
                // Not the backoff's: a backend closing a new connection on a request (a poison
                // request, twice) would back a healthy backend off. Only the health check,
                // before any request, speaks for the backoff.
                Some(DiscardReason::IoError | DiscardReason::Eof) => shared.failed(),
                None if verdict.is_none() && conn.tracker.used() => {
                    if std::mem::take(&mut conn.fresh) {
                        // A new connection served: the backend does not close every one. (Not
                        // an old one: a server at its connection limit serves those.)
                        shared.fail_fast.new_connection_served();
                        shared.fail_fast.backoff.proven();
                    }
                    shared.outlier.succeeded();
                }
                _ => {}
            }
        }
        if shared.is_removed() {
            // Draining: the endpoint was taken out of the set; nothing goes back.
            tracing::debug!(
                pool = shared.config.name(),
                addr = &*shared.addr,
                endpoint = &*shared.addr,
                "closing connection of a removed endpoint"
            );
            conn.stream.close_now();
            shared.lifecycle.broken();
            return true;
        }
        let Some(reason) = verdict else {
            // Clean: closed only if past its lifetime.
            let expired = lent && lifecycle::returned(shared, &mut conn.life);
            if expired {
                conn.stream.close_now();
            }
            return expired;
        };
        shared.counters.discarded(reason);
        let (pool, endpoint) = (shared.config.name(), &*shared.addr);
        if reason.is_backend_failure() {
            // The backend failed during an exchange: worth an operator's attention.
            tracing::warn!(
                pool,
                addr = endpoint,
                endpoint,
                reason = reason.as_str(),
                "closing connection instead of reusing it"
            );
        } else {
            // Routine: the request or the handler decided, or an idle connection went stale.
            tracing::debug!(
                pool,
                addr = endpoint,
                endpoint,
                reason = reason.as_str(),
                "closing connection instead of reusing it"
            );
        }
        // FIN now, before bb8 decides whether to open a replacement.
        conn.stream.close_now();
        shared.lifecycle.broken();
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
