//! The checkout health check: a non-blocking look at the idle connection, then the
//! configured [probe](crate::pool::probe), if any.

use std::io;

use crate::clean::DiscardReason;
use crate::error::TcpPoolError;
use crate::pool::pooled::PooledStream;
use crate::pool::shared::Shared;

/// Runs on every checkout (bb8's `is_valid`). A connection that fails is marked
/// `HealthCheck` (and closed by bb8).
pub(crate) async fn check(shared: &Shared, conn: &mut PooledStream) -> Result<(), TcpPoolError> {
    if let Some(found) = conn.stream.idle_state() {
        return Err(failed(shared, conn, found.into_error()));
    }
    if let Some(probe) = &shared.config.probe {
        // Marked while the probe runs: if this checkout is cancelled mid-probe, the
        // connection is closed, not returned half-way through an exchange.
        conn.tracker.mark(DiscardReason::HealthCheck);
        let timeout = shared.config.connect_timeout;
        let result = match tokio::time::timeout(timeout, probe(&mut conn.stream)).await {
            Ok(Ok(())) => conn
                .stream
                .idle_state()
                .map_or(Ok(()), |f| Err(f.into_error())),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "health check probe timed out",
            )),
        };
        if let Err(err) = result {
            return Err(failed(shared, conn, err));
        }
    }
    conn.tracker.reset(shared.config.write_only);
    shared.fail_fast.check_passed();
    Ok(())
}

/// Marks a connection that failed its check. Brand-new connections failing in a row make the
/// backend count as unreachable (see [`FailFast::check_failed`](crate::failfast::FailFast)).
fn failed(shared: &Shared, conn: &mut PooledStream, err: io::Error) -> TcpPoolError {
    conn.tracker.mark(DiscardReason::HealthCheck);
    if conn.fresh {
        shared.new_connection_failed(conn.attempt, &err);
    }

    let max_size = shared.config.max_size;
    if shared
        .fail_fast
        .check_failed(conn.fresh, conn.attempt, &err, max_size)
    {
        shared.connect_failed(
            &err,
            "new backend connections keep failing their health check",
        );
        // A failed connect for the reconnect backoff too: each TCP connect succeeded, but the
        // backend accepts connections without serving them.
        shared.fail_fast.backoff.fresh_failed();
        // A failure for outlier detection too. A single new connection failing is not:
        // one opened by `min_idle` and closed while idle (a restart) fails the same way.
        shared.failed();
        return TcpPoolError::BackendUnreachable(err);
    }
    tracing::debug!(
        pool = shared.config.name(),
        addr = &*shared.addr,
                    endpoint = &*shared.addr,
        reason = DiscardReason::HealthCheck.as_str(),
        error = %err,
        "connection failed its health check"
    );
    TcpPoolError::Io(err)
}
