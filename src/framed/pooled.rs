//! [`PooledFramed`]: the type, its accessors, and how its state reaches the connection.

use std::fmt;

use bytes::BytesMut;
use tokio_util::codec::Framed;

use crate::clean::{DiscardReason, Frames};
use crate::framed::expect::Replies;
use crate::pool::TcpConnection;

/// A pooled connection read and written through a codec: `Stream` of reply frames and
/// `Sink` of request frames, like `tokio_util::codec::Framed`, whose rule also counts frames.
/// Made by [`TcpConnection::framed`], which consumes the connection.
///
/// Dropped, it goes back to the pool only if the connection is clean by the
/// [usual rule](crate::TcpConnection#the-clean-connection-rule) **and** its read buffer is
/// empty **and** every request frame sent got its reply frames (one each, unless
/// [`expect_replies`](Self::expect_replies) said otherwise; none on a
/// [`write_only`](crate::TcpPoolBuilder::write_only) pool). Otherwise it is closed:
///
/// | what happened | [`DiscardReason`] |
/// |---|---|
/// | reply frames still expected, even if no byte of them has arrived | `ReplyNotRead` |
/// | bytes in the read buffer: a frame decoded-but-unread, or part of one | `UnreadBytes` |
/// | the codec returned an error (decoding or encoding) | `Codec` |
/// | dropped in the middle of `next()` or `send()` | `Cancelled` |
///
/// Use it for request/reply protocols with a codec (RESP, memcached, a line protocol) and for
/// pipelining. Keep the plain [`TcpConnection`] for byte-level I/O (`read_exact`, `copy`,
/// streaming a body), where the rule's byte tracking is enough;
/// [`into_connection`](Self::into_connection) goes back to it. Write-only backends (statsd)
/// take [`write_only(true)`](crate::TcpPoolBuilder::write_only), or a handler calls
/// [`expect_no_reply`](TcpConnection::expect_no_reply) after its write; unread bytes still
/// close the connection.
///
/// ```no_run
/// use axum_tcp_pool::{PooledFramed, TcpConnection};
/// use futures_util::{SinkExt, StreamExt};
/// use tokio_util::codec::{LinesCodec, LinesCodecError};
///
/// async fn get(conn: TcpConnection) -> Result<String, LinesCodecError> {
///     let mut framed: PooledFramed<LinesCodec> = conn.framed(LinesCodec::new());
///     framed.send("GET greeting").await?; // one request frame: one reply expected
///     let reply = framed.next().await.transpose()?.unwrap_or_default();
///     Ok(reply) // dropped: reused, since the reply was read and nothing is buffered
/// }
/// ```
pub struct PooledFramed<C, M = ()> {
    pub(super) inner: Framed<TcpConnection<M>, C>,
    pub(super) replies: Replies,
}

impl<C, M> PooledFramed<C, M> {
    pub(crate) fn new(mut conn: TcpConnection<M>, codec: C) -> Self {
        let tracker = conn.tracker_mut();
        let per_request = usize::from(!tracker.write_only());
        let replies = Replies::new(usize::from(tracker.reply_owed()), per_request);
        tracker.count_frames(Frames {
            owed: replies.owed() > 0,
            buffered: false,
        });
        PooledFramed {
            inner: Framed::new(conn, codec),
            replies,
        }
    }

    /// The next request frame sent gets `n` reply frames instead of one (`0`: none, as for
    /// memcached's `noreply`). For that one send only; call it before the send.
    ///
    /// ```no_run
    /// # async fn f(mut framed: axum_tcp_pool::PooledFramed<tokio_util::codec::LinesCodec>) -> Result<(), tokio_util::codec::LinesCodecError> {
    /// use futures_util::SinkExt;
    /// framed.expect_replies(0).send("delete session:42 noreply").await?;
    /// framed.expect_replies(2).send("TWICE ok").await?;
    /// assert_eq!(framed.pending_replies(), 2);
    /// # Ok(()) }
    /// ```
    pub fn expect_replies(&mut self, n: usize) -> &mut Self {
        self.replies.expect_next(n);
        self
    }

    /// Reply frames expected and not received yet.
    ///
    /// ```no_run
    /// # fn f(framed: axum_tcp_pool::PooledFramed<tokio_util::codec::LinesCodec>) {
    /// assert_eq!(framed.pending_replies(), 0);
    /// # }
    /// ```
    pub fn pending_replies(&self) -> usize {
        self.replies.owed()
    }

    /// The codec.
    ///
    /// ```no_run
    /// # fn f(framed: axum_tcp_pool::PooledFramed<tokio_util::codec::LinesCodec>) {
    /// println!("{}", framed.codec().max_length());
    /// # }
    /// ```
    pub fn codec(&self) -> &C {
        self.inner.codec()
    }

    /// The codec, mutably (for codec settings or state).
    ///
    /// ```no_run
    /// # fn f(mut framed: axum_tcp_pool::PooledFramed<tokio_util::codec::LinesCodec>) {
    /// let _codec: &mut tokio_util::codec::LinesCodec = framed.codec_mut();
    /// # }
    /// ```
    pub fn codec_mut(&mut self) -> &mut C {
        self.inner.codec_mut()
    }

    /// The bytes read from the connection and not decoded into a frame yet. Not empty when
    /// dropped: the connection is closed (`UnreadBytes`).
    ///
    /// ```no_run
    /// # fn f(framed: axum_tcp_pool::PooledFramed<tokio_util::codec::LinesCodec>) {
    /// assert!(framed.read_buffer().is_empty());
    /// # }
    /// ```
    pub fn read_buffer(&self) -> &BytesMut {
        self.inner.read_buffer()
    }

    /// The connection (its stream, its verdict so far:
    /// [`discard_reason`](TcpConnection::discard_reason) includes the frames).
    ///
    /// ```no_run
    /// # fn f(framed: axum_tcp_pool::PooledFramed<tokio_util::codec::LinesCodec>) {
    /// assert_eq!(framed.get_ref().discard_reason(), None);
    /// # }
    /// ```
    pub fn get_ref(&self) -> &TcpConnection<M> {
        self.inner.get_ref()
    }

    /// Closes the connection instead of returning it to the pool, as
    /// [`TcpConnection::discard`] does.
    ///
    /// ```no_run
    /// # fn f(mut framed: axum_tcp_pool::PooledFramed<tokio_util::codec::LinesCodec>) {
    /// framed.discard();
    /// assert!(framed.get_ref().is_discarded());
    /// # }
    /// ```
    pub fn discard(&mut self) {
        self.inner.get_mut().discard();
    }

    /// Hands the frames' state to the connection, after each operation.
    pub(super) fn sync(&mut self) {
        let frames = Frames {
            owed: self.replies.owed() > 0,
            buffered: !self.inner.read_buffer().is_empty(),
        };
        self.inner.get_mut().tracker_mut().count_frames(frames);
    }

    /// Marks the connection after a codec error (an I/O error is marked already, and the
    /// first reason wins).
    pub(super) fn codec_failed(&mut self) {
        self.inner
            .get_mut()
            .tracker_mut()
            .mark(DiscardReason::Codec);
    }
}

impl<C, M> fmt::Debug for PooledFramed<C, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledFramed")
            .field("codec", &std::any::type_name::<C>())
            .field("connection", self.get_ref())
            .field("pending_replies", &self.pending_replies())
            .field("read_buffer", &self.read_buffer().len())
            .field("write_buffer", &self.inner.write_buffer().len())
            .finish()
    }
}
