//! The health check probe a pool may be configured with: the [`ProbeFn`] trait that every
//! `async fn(&mut BackendStream) -> io::Result<()>` implements, and its boxed form.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

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
    Arc::new(move |stream| {
        Box::pin(Flagged {
            probe: probe(stream),
        })
    })
}

thread_local! {
    /// Set when a probe returns `Pending` on this thread.
    static PENDING: Cell<bool> = const { Cell::new(false) };
}

/// Whether a probe returned `Pending` on this thread since the last call: a bb8 checkout
/// that returned `Pending` without it waits for a connection (bb8 counts it in
/// `gets_waited`); the health check's peek is never pending.
pub(crate) fn take_pending() -> bool {
    PENDING.with(|c| c.replace(false))
}

pin_project_lite::pin_project! {
    /// A probe's future that says when it is pending (see [`take_pending`]). Inside the box
    /// every probe has already, so a checkout's future does not grow.
    struct Flagged<F> {
        #[pin]
        probe: F,
    }
}

impl<F: Future> Future for Flagged<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let polled = self.project().probe.poll(cx);
        if polled.is_pending() {
            PENDING.with(|c| c.set(true));
        }
        polled
    }
}
