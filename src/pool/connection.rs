//! [`TcpConnection`]: a checked-out connection, tracked by the clean-connection rule.

use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use bb8::PooledConnection;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::clean::DiscardReason;
use crate::pool::manager::TcpManager;
use crate::pool::pooled::PooledStream;
use crate::transport::BackendStream;

/// A pooled connection, owned by one request (or task) until dropped; [`AsyncRead`] +
/// [`AsyncWrite`]. Get one with the extractor, under a
/// [`TcpPoolLayer`](crate::TcpPoolLayer), or with [`TcpPool::get`](crate::TcpPool::get).
///
/// `M` is the marker of the [`TcpPool<M>`](crate::TcpPool) it came from (default `()`).
///
/// # The clean-connection rule
///
/// When dropped, the connection goes back to the pool **only if it is known clean**. It is
/// closed instead, counted in [`PoolState::discards`](crate::PoolState::discards), when:
///
/// | what happened | [`DiscardReason`] |
/// |---|---|
/// | a read or write returned an I/O error, or a write accepted nothing from a non-empty buffer | `IoError` |
/// | a read saw end-of-file | `Eof` |
/// | a read or write was in flight when it was dropped (the client went away, a timeout fired, a `select!` lost) | `Cancelled` |
/// | it was used by a request that did not finish (under the layer: cancelled, or left behind by a timeout directly under it in one tower stack, `ServiceBuilder::new().layer(TcpPoolLayer::new(pool)).layer(TimeoutLayer::new(..))`), or by a [`Guarded`](crate::Guarded) task or body dropped unfinished, even between two reads | `Cancelled` |
/// | bytes were written after the last read (a reply never read), unless said to need none ([`expect_no_reply`](Self::expect_no_reply), [`write_only`](crate::TcpPoolBuilder::write_only)) | `ReplyNotRead` |
/// | the backend sent bytes that were not read (a non-blocking peek when it comes back) | `UnreadBytes` |
/// | it was dropped while its thread was panicking | `Panic` |
/// | [`discard`](Self::discard) was called, or the write half was shut down | `Explicit` |
///
/// A connection is never handed out if, while idle, the backend closed it or sent bytes:
/// every checkout peeks at it without blocking and replaces it (`HealthCheck`).
///
/// What the rule cannot see: bytes still on the wire when it looks (a handler that stops
/// reading in the middle of a reply, or pipelines a second request and reads only the
/// first reply, must call [`discard`](Self::discard)); bytes a wrapper such as `BufReader`
/// or `Framed` read ahead and you did not consume ([`framed`](Self::framed) sees both);
/// I/O through [`get_mut`](Self::get_mut);
/// a connection handed to a task or a body that is not [`Guarded`](crate::Guarded); and
/// work given up on *inside* the request, between two reads: a timeout `route_layer`ed
/// before the pool layer or put on the handler (`get(h.layer(..))`), which axum drops as soon
/// as it answers; a `from_fn` timeout, or `HandleErrorLayer` over `tower::timeout`, inside
/// the pool layer; a handler's own `tokio::time::timeout` around an exchange that awaits
/// something else. Put timeouts outside the pool layer, or call [`discard`](Self::discard)
/// when a handler's own timeout fires.
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
    marker: PhantomData<fn() -> M>,
}

impl<M> TcpConnection<M> {
    pub(crate) fn new(conn: PooledConnection<'static, TcpManager>) -> Self {
        TcpConnection {
            conn: Some(conn),
            marker: PhantomData,
        }
    }

    /// The same connection, with another marker (no I/O, no allocation).
    pub(crate) fn with_marker<N>(mut self) -> TcpConnection<N> {
        TcpConnection {
            conn: self.conn.take(),
            marker: PhantomData,
        }
    }

    /// The stream (TCP, Unix socket or TLS), for its peer address, socket options or TLS
    /// session. I/O through it is not tracked by the rule.
    ///
    /// ```no_run
    /// # async fn f(conn: axum_tcp_pool::TcpConnection) -> std::io::Result<()> {
    /// if let Some(tcp) = conn.get_ref().tcp() {
    ///     println!("talking to {}", tcp.peer_addr()?);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn get_ref(&self) -> &BackendStream {
        &self.pooled().stream
    }

    /// The address of the endpoint this connection goes to (one of the pool's
    /// [endpoints](crate::TcpPool::endpoints)).
    ///
    /// ```no_run
    /// # async fn f(conn: axum_tcp_pool::TcpConnection) {
    /// tracing::info!(endpoint = conn.endpoint(), "served");
    /// # }
    /// ```
    pub fn endpoint(&self) -> &str {
        &self.pooled().endpoint.addr
    }

    /// The stream, mutably, for socket options or I/O the rule must not see. Call
    /// [`discard`](Self::discard) unless such an exchange ended cleanly.
    ///
    /// ```no_run
    /// # async fn f(mut conn: axum_tcp_pool::TcpConnection) -> std::io::Result<()> {
    /// if let Some(tcp) = conn.get_ref().tcp() { tcp.set_nodelay(false)?; }
    /// let _stream: &mut axum_tcp_pool::BackendStream = conn.get_mut();
    /// # Ok(()) }
    /// ```
    pub fn get_mut(&mut self) -> &mut BackendStream {
        &mut self.pooled_mut().stream
    }

    /// Closes this connection instead of returning it to the pool: for what the rule cannot
    /// see (a protocol error, a reply left half-read, `SELECT 3`, a transaction left open).
    ///
    /// ```no_run
    /// # async fn f(mut conn: axum_tcp_pool::TcpConnection) {
    /// conn.discard();
    /// assert!(conn.is_discarded());
    /// # }
    /// ```
    pub fn discard(&mut self) {
        self.pooled_mut().tracker.mark(DiscardReason::Explicit);
    }

    /// Why the connection would be closed if dropped now; `None`: clean so far (the
    /// unread-bytes check still runs when it comes back).
    ///
    /// ```no_run
    /// # async fn f(mut conn: axum_tcp_pool::TcpConnection) -> std::io::Result<()> {
    /// use tokio::io::AsyncWriteExt;
    /// conn.write_all(b"PING\r\n").await?;
    /// assert_eq!(conn.discard_reason(), Some(axum_tcp_pool::DiscardReason::ReplyNotRead));
    /// # Ok(()) }
    /// ```
    pub fn discard_reason(&self) -> Option<DiscardReason> {
        self.pooled().tracker.verdict()
    }

    /// Whether the connection will be closed, not reused, when dropped.
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
}

impl<M> Drop for TcpConnection<M> {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        conn.tracker.on_drop();
        // Checkouts waiting at the lifecycle's gate (a sweep has the idle connections out)
        // take this one once it is idle.
        let gate = conn
            .endpoint
            .lifecycle
            .gate
            .is_held()
            .then(|| conn.endpoint.clone());
        // Back to bb8, whose `has_broken` closes it if marked. bb8 may spawn a refill task
        // then, which needs a runtime context: lend the pool's if this thread has none.
        // (Inside a task there is always one; checking that is cheaper than cloning a handle.)
        if tokio::task::try_id().is_none() {
            let runtime = conn.endpoint.runtime.clone();
            let _context = runtime.enter();
            drop(conn);
        } else {
            drop(conn);
        }
        if let Some(shared) = gate {
            shared.lifecycle.gate.wake();
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
        let conn = self.get_mut().pooled_mut();
        let before = buf.filled().len();
        let wanted = buf.remaining();
        let poll = Pin::new(&mut conn.stream).poll_read(cx, buf);
        conn.tracker
            .read(&poll, buf.filled().len() - before, wanted);
        poll
    }
}

impl<M> AsyncWrite for TcpConnection<M> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let conn = self.get_mut().pooled_mut();
        let poll = Pin::new(&mut conn.stream).poll_write(cx, buf);
        conn.tracker.write(&poll, buf.is_empty());
        poll
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let conn = self.get_mut().pooled_mut();
        let poll = Pin::new(&mut conn.stream).poll_write_vectored(cx, bufs);
        conn.tracker.write(&poll, bufs.iter().all(|b| b.is_empty()));
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.get_ref().is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let conn = self.get_mut().pooled_mut();
        let result = std::task::ready!(Pin::new(&mut conn.stream).poll_flush(cx));
        conn.tracker.flushed(&result);
        Poll::Ready(result)
    }

    /// Shuts the write half down. A half-closed connection cannot be reused, so it is closed
    /// when dropped.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let conn = self.get_mut().pooled_mut();
        conn.tracker.mark(DiscardReason::Explicit);
        Pin::new(&mut conn.stream).poll_shutdown(cx)
    }
}

impl<M> TcpConnection<M> {
    /// Wraps the connection in `codec`, for frames instead of bytes: a
    /// [`PooledFramed`](crate::PooledFramed), `Stream` of replies and `Sink` of requests,
    /// that counts the reply frames still expected and sees the codec's read buffer. See
    /// [`PooledFramed`](crate::PooledFramed) for the rule it adds.
    ///
    /// A reply owed by bytes written before (and not read) counts as one reply frame.
    ///
    /// ```no_run
    /// use axum_tcp_pool::{PooledFramed, TcpConnection};
    /// use tokio_util::codec::LinesCodec;
    ///
    /// fn lines(conn: TcpConnection) -> PooledFramed<LinesCodec> {
    ///     conn.framed(LinesCodec::new())
    /// }
    /// ```
    pub fn framed<C>(self, codec: C) -> crate::PooledFramed<C, M> {
        crate::PooledFramed::new(self, codec)
    }

    /// Says that what was written so far needs no reply (a statsd metric, a memcached
    /// `noreply` command), so the connection is not closed as `ReplyNotRead`. Call it after
    /// the write; the next write needs a reply again (unless the pool is
    /// [`write_only`](crate::TcpPoolBuilder::write_only)).
    ///
    /// Unread bytes still close the connection: one that was written to gets a
    /// non-blocking look at its socket when it comes back, as well as at the next checkout.
    ///
    /// ```no_run
    /// # async fn f(mut conn: axum_tcp_pool::TcpConnection) -> std::io::Result<()> {
    /// use tokio::io::AsyncWriteExt;
    /// conn.write_all(b"requests:1|c\n").await?;
    /// conn.expect_no_reply();
    /// assert!(!conn.is_discarded());
    /// # Ok(()) }
    /// ```
    pub fn expect_no_reply(&mut self) {
        self.pooled_mut().tracker.no_reply_needed();
    }

    /// Names the request this connection was just checked out for, for leak detection (does
    /// nothing when it is off).
    pub(crate) fn lent_to(&self, method: &http::Method, uri: &http::Uri) {
        if let Some(lease) = &self.pooled().lease {
            lease.lent_to(method, uri);
        }
    }

    /// The clean-connection state, mutably, for [`PooledFramed`](crate::PooledFramed).
    pub(crate) fn tracker_mut(&mut self) -> &mut crate::clean::Tracker {
        &mut self.pooled_mut().tracker
    }
}
