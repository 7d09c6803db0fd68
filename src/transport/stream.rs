//! [`BackendStream`]: the socket a pooled connection holds (TCP, Unix domain, or TLS over
//! TCP).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
#[cfg(unix)]
use tokio::net::UnixStream;

use crate::transport::idle::{self, NotClean};

/// The stream of one backend connection: what [`TcpConnection::get_ref`] returns and what a
/// [health check](crate::TcpPoolBuilder::health_check) probe talks over.
///
/// The variant follows the pool's address and settings: `"host:port"` gives [`Tcp`](Self::Tcp),
/// `"unix:/path"` gives [`Unix`](Self::Unix), and a pool with
/// `TcpPoolBuilder::tls` gives `Tls` (feature `tls`). It is
/// [`AsyncRead`] + [`AsyncWrite`] whatever the variant. New variants may be added, so a
/// `match` needs a wildcard arm.
///
/// I/O done directly on this type (in a probe, or through [`TcpConnection::get_mut`]) is not
/// tracked by the [clean-connection rule](crate::TcpConnection#the-clean-connection-rule).
///
/// [`TcpConnection::get_ref`]: crate::TcpConnection::get_ref
/// [`TcpConnection::get_mut`]: crate::TcpConnection::get_mut
///
/// ```no_run
/// # async fn f(conn: axum_tcp_pool::TcpConnection) -> std::io::Result<()> {
/// use axum_tcp_pool::BackendStream;
///
/// match conn.get_ref() {
///     BackendStream::Tcp(tcp) => println!("TCP to {}", tcp.peer_addr()?),
///     #[cfg(unix)]
///     BackendStream::Unix(unix) => println!("Unix socket {:?}", unix.peer_addr()?),
///     _ => println!("another transport"),
/// }
/// // The TCP socket, also under TLS (None for a Unix socket):
/// if let Some(tcp) = conn.get_ref().tcp() {
///     assert!(tcp.nodelay()?);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum BackendStream {
    /// A plain TCP connection (`"host:port"`).
    Tcp(TcpStream),
    /// A Unix domain socket connection (`"unix:/path/to.sock"`). Unix platforms only.
    #[cfg(unix)]
    Unix(UnixStream),
    /// TLS over TCP (a pool configured with [`TcpPoolBuilder::tls`](crate::TcpPoolBuilder::tls)).
    /// Boxed: a TLS session is large, and this keeps the other variants small. Available with
    /// the `tls` feature.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl BackendStream {
    /// The TCP socket: the stream itself for [`Tcp`](Self::Tcp), the socket under the TLS
    /// session for `Tls`; `None` for a Unix socket. For the peer address and socket options.
    ///
    /// ```no_run
    /// # async fn f(conn: axum_tcp_pool::TcpConnection) -> std::io::Result<()> {
    /// if let Some(tcp) = conn.get_ref().tcp() {
    ///     println!("peer: {}", tcp.peer_addr()?);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            BackendStream::Tcp(s) => Some(s),
            #[cfg(unix)]
            BackendStream::Unix(_) => None,
            #[cfg(feature = "tls")]
            BackendStream::Tls(s) => Some(s.get_ref().0),
        }
    }

    /// The Unix socket, if this is one. Unix platforms only.
    ///
    /// ```no_run
    /// # async fn f(conn: axum_tcp_pool::TcpConnection) -> std::io::Result<()> {
    /// if let Some(unix) = conn.get_ref().unix() {
    ///     println!("peer: {:?}", unix.peer_addr()?);
    /// }
    /// # Ok(()) }
    /// ```
    #[cfg(unix)]
    pub fn unix(&self) -> Option<&UnixStream> {
        match self {
            BackendStream::Unix(s) => Some(s),
            _ => None,
        }
    }

    /// The TLS session, if this is one: the negotiated protocol version, ALPN protocol and
    /// the server's certificates are on its connection (`tls.get_ref().1`). Available with
    /// the `tls` feature.
    ///
    /// ```no_run
    /// # async fn f(conn: axum_tcp_pool::TcpConnection) {
    /// if let Some(tls) = conn.get_ref().tls() {
    ///     println!("TLS version: {:?}", tls.get_ref().1.protocol_version());
    /// }
    /// # }
    /// ```
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls(&self) -> Option<&tokio_rustls::client::TlsStream<TcpStream>> {
        match self {
            BackendStream::Tls(s) => Some(s),
            _ => None,
        }
    }

    /// Whether a read returns what the socket held (TCP, Unix), rather than what a session
    /// decrypted and buffered (TLS): only then does a short read mean the socket is drained.
    pub(crate) fn reads_from_socket(&self) -> bool {
        match self {
            BackendStream::Tcp(_) => true,
            #[cfg(unix)]
            BackendStream::Unix(_) => true,
            #[cfg(feature = "tls")]
            BackendStream::Tls(_) => false,
        }
    }

    /// Shuts both directions down at once (FIN now, before the pool opens a replacement).
    pub(crate) fn close_now(&self) {
        let _ = self.sock().shutdown(std::net::Shutdown::Both);
    }

    /// The raw socket, for peeking, and shutting down on discard.
    fn sock(&self) -> socket2::SockRef<'_> {
        match self {
            BackendStream::Tcp(s) => socket2::SockRef::from(s),
            #[cfg(unix)]
            BackendStream::Unix(s) => socket2::SockRef::from(s),
            #[cfg(feature = "tls")]
            BackendStream::Tls(s) => socket2::SockRef::from(s.get_ref().0),
        }
    }

    /// A non-blocking look at what is waiting on the connection: `None` if nothing is (the
    /// state a clean, idle connection is in), otherwise why the connection must not be used.
    pub(crate) fn idle_state(&mut self) -> Option<NotClean> {
        match self {
            #[cfg(feature = "tls")]
            BackendStream::Tls(s) => idle::tls_idle_state(s),
            _ => idle::peek_state(&self.sock()),
        }
    }
}

impl AsyncRead for BackendStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(unix)]
            BackendStream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(feature = "tls")]
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for BackendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            BackendStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(unix)]
            BackendStream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(feature = "tls")]
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            BackendStream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            #[cfg(unix)]
            BackendStream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            #[cfg(feature = "tls")]
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            BackendStream::Tcp(s) => s.is_write_vectored(),
            #[cfg(unix)]
            BackendStream::Unix(s) => s.is_write_vectored(),
            #[cfg(feature = "tls")]
            BackendStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            #[cfg(unix)]
            BackendStream::Unix(s) => Pin::new(s).poll_flush(cx),
            #[cfg(feature = "tls")]
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(unix)]
            BackendStream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(feature = "tls")]
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
