//! [`TcpConnection`]: a checked-out connection that tracks whether it is still clean.

use std::cell::Cell;
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use bb8::PooledConnection;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::manager::{PooledStream, TcpManager};
use crate::{BackendStream, DiscardReason};

thread_local! {
    /// Set while an unfinished request is being dropped (see [`abandon`]).
    static ABANDONING: Cell<bool> = const { Cell::new(false) };
}

/// Runs `drop_request`, which drops a request that did not finish (its future was cancelled),
/// so that every connection used in it and dropped with it is closed: its exchange may be
/// half-done even if no read or write was in flight at that moment.
pub(crate) fn abandon(drop_request: impl FnOnce()) {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            ABANDONING.with(|a| a.set(self.0));
        }
    }
    let _restore = Restore(ABANDONING.with(|a| a.replace(true)));
    drop_request();
}

/// A pooled TCP connection, owned by one request (or one task) until it is dropped.
///
/// Get one with the axum extractor (a handler argument, under [`TcpPoolLayer`](crate::TcpPoolLayer)) or with
/// [`TcpPool::get`](crate::TcpPool::get). Use it as [`AsyncRead`] + [`AsyncWrite`]: the
/// `tokio::io` helpers and `tokio_util::codec::Framed` work on `&mut conn`.
///
/// `M` is the marker of the [`TcpPool<M>`](crate::TcpPool) it came from (default `()`): with
/// [several pools in one router](crate#several-pools-in-one-router), a handler taking
/// `TcpConnection<Cache>` gets a connection from the cache's pool and no other.
///
/// # The clean-connection rule
///
/// When it is dropped, the connection goes back to the pool **only if it is known clean**.
/// It is closed instead when:
///
/// - a read or write returned an I/O error, or a read saw end-of-file;
/// - a read or write was still in flight (returned `Pending`, then was never completed): the
///   request future was cancelled, a timeout fired, a `select!` branch lost;
/// - it had been used and the request it belongs to was cancelled (under
///   [`TcpPoolLayer`](crate::TcpPoolLayer): the client went away, a timeout layer fired) even
///   if no read or write was in flight at that moment, e.g. between two reads of one reply;
/// - bytes were written after the last read: a request whose reply was never read (a late
///   reply must never reach the next request);
/// - the backend sent bytes that were not read (checked without blocking when it comes back);
/// - it was dropped while the thread was panicking;
/// - [`discard`](Self::discard) was called, or the write half was shut down.
///
/// Unread bytes are caught if they have arrived when the connection is returned or, later,
/// when it is next checked out (every checkout peeks at it). A handler that stops reading in
/// the middle of a reply whose rest is still on the wire must call [`discard`](Self::discard):
/// the socket cannot tell that more is coming.
///
/// The tracking sees only I/O done through this type. If you wrap it in a buffering reader
/// (`BufReader`, `Framed`), bytes the wrapper buffered but you did not consume are invisible
/// to it: read every reply to its end, or call [`discard`](Self::discard). I/O through
/// [`get_ref`](Self::get_ref) (`try_read`, `try_write`) bypasses the tracking entirely.
///
/// # Example
///
/// ```no_run
/// use axum_tcp_pool::{TcpConnection, TcpPoolError};
/// use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
///
/// async fn handler(mut conn: TcpConnection) -> Result<String, TcpPoolError> {
///     conn.write_all(b"GET greeting\n").await?;
///     let mut line = String::new();
///     BufReader::new(&mut conn).read_line(&mut line).await?;
///     Ok(line)
/// }
/// ```
pub struct TcpConnection<M = ()> {
    /// `Some` until dropped (taken in `drop` to give it back inside a runtime context).
    conn: Option<PooledConnection<'static, TcpManager>>,
    /// A read returned `Pending` and has not completed since.
    read_pending: bool,
    /// A write returned `Pending` and has not completed since.
    write_pending: bool,
    /// Bytes were written after the last successful read.
    written_since_read: bool,
    /// Any read or write was attempted.
    used: bool,
    marker: PhantomData<fn() -> M>,
}

impl<M> TcpConnection<M> {
    pub(crate) fn new(conn: PooledConnection<'static, TcpManager>) -> Self {
        TcpConnection {
            conn: Some(conn),
            read_pending: false,
            write_pending: false,
            written_since_read: false,
            used: false,
            marker: PhantomData,
        }
    }

    /// The same connection, state and all, with another marker (no I/O, no allocation).
    pub(crate) fn with_marker<N>(mut self) -> TcpConnection<N> {
        let conn = TcpConnection {
            conn: self.conn.take(),
            read_pending: self.read_pending,
            write_pending: self.write_pending,
            written_since_read: self.written_since_read,
            used: self.used,
            marker: PhantomData,
        };
        // Its drop would return the connection, which now belongs to `conn`: skip it (what is
        // left holds nothing).
        std::mem::forget(self);
        conn
    }

    /// The underlying stream (TCP, Unix domain socket, or TLS), for its peer address,
    /// socket options, or TLS session.
    ///
    /// I/O through this reference (`try_read`, `try_write`, `peek`) is not tracked by the
    /// [clean-connection rule](Self#the-clean-connection-rule).
    ///
    /// ```no_run
    /// # async fn f(conn: axum_tcp_pool::TcpConnection) -> std::io::Result<()> {
    /// if let Some(tcp) = conn.get_ref().tcp() {
    ///     println!("talking to {}", tcp.peer_addr()?);
    ///     assert!(tcp.nodelay()?);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn get_ref(&self) -> &BackendStream {
        self.pooled().stream()
    }

    /// Closes this connection instead of returning it to the pool when it is dropped.
    ///
    /// Use it when the exchange went wrong in a way the connection cannot see: a protocol
    /// error, a reply you stopped reading half-way, a command that changes the connection's
    /// state (`SELECT 3`, `AUTH`, a transaction left open).
    ///
    /// ```no_run
    /// # async fn f(mut conn: axum_tcp_pool::TcpConnection) {
    /// conn.discard();
    /// assert!(conn.is_discarded());
    /// # }
    /// ```
    pub fn discard(&mut self) {
        self.pooled_mut().mark(DiscardReason::Explicit);
    }

    /// Whether the connection would be closed if it were dropped now, and why; `None` means
    /// it is clean so far (the unread-bytes check still runs when it is returned).
    ///
    /// ```no_run
    /// # async fn f(mut conn: axum_tcp_pool::TcpConnection) -> std::io::Result<()> {
    /// use tokio::io::AsyncWriteExt;
    /// conn.write_all(b"PING\r\n").await?;
    /// assert_eq!(conn.discard_reason(), Some(axum_tcp_pool::DiscardReason::ReplyNotRead));
    /// # Ok(()) }
    /// ```
    pub fn discard_reason(&self) -> Option<DiscardReason> {
        if let Some(reason) = self.pooled().dirty() {
            return Some(reason);
        }
        if self.read_pending || self.write_pending {
            return Some(DiscardReason::Cancelled);
        }
        if self.written_since_read {
            return Some(DiscardReason::ReplyNotRead);
        }
        None
    }

    /// Whether the connection will be closed, not reused, when it is dropped.
    ///
    /// ```no_run
    /// # async fn f(conn: axum_tcp_pool::TcpConnection) {
    /// assert!(!conn.is_discarded());
    /// # }
    /// ```
    pub fn is_discarded(&self) -> bool {
        self.discard_reason().is_some()
    }

    fn pooled(&self) -> &PooledStream {
        match &self.conn {
            Some(conn) => conn,
            None => unreachable!("TcpConnection used after drop"),
        }
    }

    fn pooled_mut(&mut self) -> &mut PooledStream {
        match &mut self.conn {
            Some(conn) => conn,
            None => unreachable!("TcpConnection used after drop"),
        }
    }

    fn io_result<T>(&mut self, result: &io::Result<T>) {
        if result.is_err() {
            self.pooled_mut().mark(DiscardReason::IoError);
        }
    }

    /// Records a write's outcome. Writing nothing from a non-empty buffer means the socket
    /// can take no more (`write_all` turns it into `WriteZero`): not reusable.
    fn track_write(
        &mut self,
        poll: Poll<io::Result<usize>>,
        empty: bool,
    ) -> Poll<io::Result<usize>> {
        self.used = true;
        match &poll {
            Poll::Pending => self.write_pending = true,
            Poll::Ready(result) => {
                self.write_pending = false;
                self.io_result(result);
                match result {
                    Ok(0) if !empty => self.pooled_mut().mark(DiscardReason::IoError),
                    Ok(0) | Err(_) => {}
                    Ok(_) => self.written_since_read = true,
                }
            }
        }
        poll
    }
}

impl<M> Drop for TcpConnection<M> {
    fn drop(&mut self) {
        let reason = if std::thread::panicking() {
            Some(DiscardReason::Panic)
        } else if let Some(reason) = self.discard_reason() {
            Some(reason)
        } else if self.used && ABANDONING.with(Cell::get) {
            Some(DiscardReason::Cancelled)
        } else {
            None
        };
        if let Some(reason) = reason {
            self.pooled_mut().mark(reason);
        }
        // Back to bb8, whose `has_broken` closes it if marked. bb8 may spawn a refill task
        // then, which needs a runtime context: lend the pool's if this thread has none.
        let Some(conn) = self.conn.take() else {
            return;
        };
        // (Inside a task there is always one; checking that is cheaper than cloning a handle.)
        match (tokio::task::try_id(), conn.runtime()) {
            (None, Some(runtime)) => {
                let _context = runtime.enter();
                drop(conn);
            }
            _ => drop(conn),
        }
    }
}

impl<M> fmt::Debug for TcpConnection<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpConnection")
            .field("marker", &std::any::type_name::<M>())
            .field("stream", self.get_ref())
            .field("discard_reason", &self.discard_reason())
            .finish()
    }
}

impl<M> AsyncRead for TcpConnection<M> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.used = true;
        let before = buf.filled().len();
        let wanted = buf.remaining() > 0;
        match Pin::new(this.pooled_mut().stream_mut()).poll_read(cx, buf) {
            Poll::Pending => {
                this.read_pending = true;
                Poll::Pending
            }
            Poll::Ready(result) => {
                this.read_pending = false;
                this.io_result(&result);
                if result.is_ok() {
                    if buf.filled().len() > before {
                        this.written_since_read = false;
                    } else if wanted {
                        this.pooled_mut().mark(DiscardReason::Eof);
                    }
                }
                Poll::Ready(result)
            }
        }
    }
}

impl<M> AsyncWrite for TcpConnection<M> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(this.pooled_mut().stream_mut()).poll_write(cx, buf);
        this.track_write(poll, buf.is_empty())
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(this.pooled_mut().stream_mut()).poll_write_vectored(cx, bufs);
        this.track_write(poll, bufs.iter().all(|b| b.is_empty()))
    }

    fn is_write_vectored(&self) -> bool {
        self.get_ref().is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = std::task::ready!(Pin::new(this.pooled_mut().stream_mut()).poll_flush(cx));
        this.io_result(&result);
        Poll::Ready(result)
    }

    /// Shuts the write half down. A half-closed connection cannot be reused, so it is closed
    /// when dropped.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.pooled_mut().mark(DiscardReason::Explicit);
        Pin::new(this.pooled_mut().stream_mut()).poll_shutdown(cx)
    }
}
