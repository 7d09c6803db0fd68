//! [`Connector`]: opens one backend connection, with the timeout, the socket options and the
//! TLS handshake the pool was configured with.

use std::io;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::transport::address::Address;
use crate::transport::stream::BackendStream;

/// Everything a connect needs, parsed and validated when the pool is built.
#[derive(Debug, Clone)]
pub(crate) struct Connector {
    pub(crate) address: Address,
    pub(crate) timeout: Duration,
    pub(crate) nodelay: bool,
    pub(crate) keepalive: Option<Duration>,
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<crate::transport::tls::Handshake>,
}

impl Connector {
    /// Connects within the connect timeout, name resolution and TLS handshake included.
    pub(crate) async fn connect(&self) -> io::Result<BackendStream> {
        tokio::time::timeout(self.timeout, self.connect_untimed())
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
    }

    async fn connect_untimed(&self) -> io::Result<BackendStream> {
        match &self.address {
            Address::Tcp(addr) => {
                let stream = TcpStream::connect(&**addr).await?;
                stream.set_nodelay(self.nodelay)?;
                if let Some(time) = self.keepalive {
                    let ka = socket2::TcpKeepalive::new().with_time(time);
                    socket2::SockRef::from(&stream).set_tcp_keepalive(&ka)?;
                }
                #[cfg(feature = "tls")]
                if let Some(tls) = &self.tls {
                    let stream = tls.connect(stream).await?;
                    return Ok(BackendStream::Tls(Box::new(stream)));
                }
                Ok(BackendStream::Tcp(stream))
            }
            #[cfg(unix)]
            Address::Unix(path) => Ok(BackendStream::Unix(
                tokio::net::UnixStream::connect(path).await?,
            )),
            // Rejected when the address is parsed.
            #[cfg(not(unix))]
            Address::Unix(_) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "Unix domain sockets are not supported on this platform",
            )),
        }
    }
}
