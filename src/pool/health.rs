//! The checkout health check: a non-blocking look at the idle connection, then the
//! configured probe, if any.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;

use crate::clean::DiscardReason;
use crate::error::TcpPoolError;
use crate::pool::manager::PooledStream;
use crate::pool::shared::Shared;
use crate::transport::BackendStream;

/// A boxed probe future, for probes written as `fn(&mut BackendStream) -> ProbeFuture<'_>`.
/// An `async fn` or an async closure needs no box (see
/// [`TcpPoolBuilder::health_check`](crate::TcpPoolBuilder::health_check)).
///
/// ```
/// use axum_tcp_pool::{BackendStream, ProbeFuture};
/// use tokio::io::AsyncWriteExt;
///
/// fn probe(stream: &mut BackendStream) -> ProbeFuture<'_> {
///     Box::pin(async move { stream.write_all(b"").await })
/// }
/// let builder = axum_tcp_pool::TcpPool::builder("127.0.0.1:6379").health_check(probe);
/// ```
pub type ProbeFuture<'a> = Pin<Box<dyn Future<Output = io::Result<()>> + Send + 'a>>;

/// A health check probe: an `async fn(&mut BackendStream) -> io::Result<()>`, an async
/// closure of that shape, or a `fn` returning a [`ProbeFuture`]. Implemented for all of them;
/// there is nothing to implement by hand.
///
/// ```
/// use axum_tcp_pool::{BackendStream, ProbeFn};
/// fn assert_probe<P: for<'a> ProbeFn<'a>>(_: P) {}
/// async fn ping(_stream: &mut BackendStream) -> std::io::Result<()> { Ok(()) }
/// assert_probe(ping);
/// ```
pub trait ProbeFn<'a>:
    Fn(&'a mut BackendStream) -> <Self as ProbeFn<'a>>::Future + Send + Sync
{
    /// The future the probe returns.
    type Future: Future<Output = io::Result<()>> + Send + 'a;
}

impl<'a, F, Fut> ProbeFn<'a> for F
where
    F: Fn(&'a mut BackendStream) -> Fut + Send + Sync,
    Fut: Future<Output = io::Result<()>> + Send + 'a,
{
    type Future = Fut;
}

/// A configured probe, boxed once at build time.
pub(crate) type Probe = Arc<dyn for<'a> Fn(&'a mut BackendStream) -> ProbeFuture<'a> + Send + Sync>;

/// Boxes a probe for the configuration.
pub(crate) fn probe<P: for<'a> ProbeFn<'a> + 'static>(probe: P) -> Probe {
    Arc::new(move |stream| Box::pin(probe(stream)))
}

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
    conn.tracker.reset();
    conn.fresh = false;
    shared.fail_fast.check_passed();
    Ok(())
}

/// Marks a connection that failed its check. Brand-new connections failing in a row make the
/// backend count as unreachable (see [`FailFast::check_failed`](crate::failfast::FailFast)).
fn failed(shared: &Shared, conn: &mut PooledStream, err: io::Error) -> TcpPoolError {
    conn.tracker.mark(DiscardReason::HealthCheck);
    let max_size = shared.config.max_size;
    if shared
        .fail_fast
        .check_failed(conn.fresh, conn.attempt, &err, max_size)
    {
        shared.connect_failed(
            &err,
            "new backend connections keep failing their health check",
        );
        return TcpPoolError::BackendUnreachable(err);
    }
    tracing::debug!(
        pool = shared.config.name(),
        addr = %shared.config.addr,
        reason = DiscardReason::HealthCheck.as_str(),
        error = %err,
        "connection failed its health check"
    );
    TcpPoolError::Io(err)
}
