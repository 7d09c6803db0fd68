//! [`PooledFramed::into_connection`]: back to a plain connection, when nothing is buffered.

use std::fmt;
use std::ops::{Deref, DerefMut};

use crate::framed::PooledFramed;
use crate::pool::TcpConnection;

impl<C, M> PooledFramed<C, M> {
    /// Back to a plain [`TcpConnection`], for byte I/O again. Allowed only when the read
    /// buffer is empty (and no frame waits in the write buffer), since those bytes would be
    /// lost; otherwise the error hands the framed value back.
    ///
    /// Reply frames still expected count, on the plain connection, as a reply not read
    /// (`ReplyNotRead`) until its next read.
    ///
    /// ```no_run
    /// # fn f(framed: axum_tcp_pool::PooledFramed<tokio_util::codec::LinesCodec>) {
    /// match framed.into_connection() {
    ///     Ok(conn) => assert!(!conn.is_discarded()),
    ///     Err(err) => {
    ///         let mut framed = err.into_inner(); // the bytes are still there
    ///         framed.discard();
    ///     }
    /// }
    /// # }
    /// ```
    pub fn into_connection(self) -> Result<TcpConnection<M>, IntoConnectionError<C, M>> {
        if !self.inner.read_buffer().is_empty() || !self.inner.write_buffer().is_empty() {
            return Err(IntoConnectionError {
                framed: Box::new(self),
            });
        }
        let owed = self.replies.owed() > 0;
        let mut conn = self.inner.into_inner();
        conn.tracker_mut().count_bytes(owed);
        Ok(conn)
    }
}

/// [`PooledFramed::into_connection`] refused: bytes are buffered (read ahead and not
/// decoded, or a frame not sent yet). It holds the framed connection, unchanged: take it
/// back with [`into_inner`](Self::into_inner), or use it in place (it derefs to it), as
/// `std::io::IntoInnerError` does for a `BufWriter`.
///
/// ```no_run
/// # fn f(framed: axum_tcp_pool::PooledFramed<tokio_util::codec::LinesCodec>) {
/// if let Err(err) = framed.into_connection() {
///     println!("{err}");
///     assert!(!err.framed().read_buffer().is_empty());
/// }
/// # }
/// ```
pub struct IntoConnectionError<C, M = ()> {
    /// Boxed: the error path is rare, and a `Result` of a whole `PooledFramed` is large.
    framed: Box<PooledFramed<C, M>>,
}

impl<C, M> IntoConnectionError<C, M> {
    /// The framed connection, as it was.
    ///
    /// ```no_run
    /// # fn f(err: axum_tcp_pool::IntoConnectionError<tokio_util::codec::LinesCodec>) {
    /// let framed = err.into_inner();
    /// # }
    /// ```
    pub fn into_inner(self) -> PooledFramed<C, M> {
        *self.framed
    }

    /// The framed connection, to look at its buffers.
    ///
    /// ```no_run
    /// # fn f(err: axum_tcp_pool::IntoConnectionError<tokio_util::codec::LinesCodec>) {
    /// println!("{} bytes buffered", err.framed().read_buffer().len());
    /// # }
    /// ```
    pub fn framed(&self) -> &PooledFramed<C, M> {
        &self.framed
    }
}

impl<C, M> Deref for IntoConnectionError<C, M> {
    type Target = PooledFramed<C, M>;

    fn deref(&self) -> &PooledFramed<C, M> {
        &self.framed
    }
}

impl<C, M> DerefMut for IntoConnectionError<C, M> {
    fn deref_mut(&mut self) -> &mut PooledFramed<C, M> {
        &mut self.framed
    }
}

impl<C, M> fmt::Debug for IntoConnectionError<C, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IntoConnectionError")
            .field("framed", &self.framed)
            .finish()
    }
}

impl<C, M> fmt::Display for IntoConnectionError<C, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the framed connection still buffers {} bytes read and {} bytes to write",
            self.framed.inner.read_buffer().len(),
            self.framed.inner.write_buffer().len()
        )
    }
}

impl<C, M> std::error::Error for IntoConnectionError<C, M> {}
