//! The cancellation scope: a connection dropped together with an unfinished request (or an
//! unfinished [`Guarded`] future or stream) is closed, even between two reads.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use futures_core::Stream;
use pin_project_lite::pin_project;

thread_local! {
    /// Set while something unfinished is being dropped (see [`abandon`]).
    static ABANDONING: Cell<bool> = const { Cell::new(false) };
}

/// Runs `drop_it`, which drops something unfinished (a request future, a task, a body), so
/// that every used connection dropped with it is closed: its exchange may be half-done even
/// if no read or write was in flight at that moment.
pub(crate) fn abandon(drop_it: impl FnOnce()) {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            ABANDONING.with(|a| a.set(self.0));
        }
    }
    let _restore = Restore(ABANDONING.with(|a| a.replace(true)));
    drop_it();
}

/// Whether an unfinished request, task or body is being dropped on this thread right now.
pub(crate) fn abandoning() -> bool {
    ABANDONING.with(Cell::get)
}

pin_project! {
    /// A future or stream that owns connections outside the request: if it is dropped before
    /// it finished, every connection it used is closed (as `Cancelled`), as a cancelled
    /// request's are.
    ///
    /// The layer can see only the request's own future. Wrap what you hand a connection to:
    /// a spawned task (aborted, or its runtime shut down) or a streaming response body (which
    /// the server drops when the client resets). Finished means the future returned, or the
    /// stream returned `None`. A body with a `Content-Length` is dropped once that many bytes
    /// are sent, without being asked for its end: its stream must let go of the connection
    /// with its last chunk, or the connection is closed.
    ///
    /// ```no_run
    /// use axum::body::Body;
    /// use axum_tcp_pool::{Guarded, TcpConnection};
    /// use tokio::io::AsyncWriteExt;
    ///
    /// async fn handler(mut conn: TcpConnection) -> Body {
    ///     // A task: aborted between two reads, it closes the connection.
    ///     let task = tokio::spawn(Guarded::new(async move {
    ///         conn.write_all(b"PING\n").await
    ///     }));
    ///     # drop(task);
    ///     // A body: dropped by a client reset before its end, it closes the connection.
    ///     # let lines = futures_util::stream::empty::<std::io::Result<bytes::Bytes>>();
    ///     Body::from_stream(Guarded::new(lines))
    /// }
    /// ```
    #[derive(Debug)]
    #[must_use = "futures and streams do nothing unless polled"]
    pub struct Guarded<T> {
        #[pin]
        inner: Option<T>,
    }

    impl<T> PinnedDrop for Guarded<T> {
        fn drop(this: Pin<&mut Self>) {
            let mut inner = this.project().inner;
            if inner.is_some() {
                abandon(|| inner.set(None));
            }
        }
    }
}

impl<T> Guarded<T> {
    /// Wraps a future or a stream. See [`Guarded`].
    ///
    /// ```
    /// let guarded = axum_tcp_pool::Guarded::new(async { 42 });
    /// ```
    pub fn new(inner: T) -> Self {
        Guarded { inner: Some(inner) }
    }
}

impl<F: Future> Future for Guarded<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let mut inner = self.project().inner;
        let Some(future) = inner.as_mut().as_pin_mut() else {
            panic!("Guarded polled after completion");
        };
        let output = ready!(future.poll(cx));
        inner.set(None);
        Poll::Ready(output)
    }
}

impl<S: Stream> Stream for Guarded<S> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let mut inner = self.project().inner;
        let Some(stream) = inner.as_mut().as_pin_mut() else {
            return Poll::Ready(None);
        };
        let item = ready!(stream.poll_next(cx));
        if item.is_none() {
            inner.set(None);
        }
        Poll::Ready(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.as_ref().map_or((0, Some(0)), Stream::size_hint)
    }
}
