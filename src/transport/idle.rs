//! The idle check: a non-blocking look at a connection that should have nothing waiting on
//! it (when it comes back to the pool, and before it is handed out again).

use std::io;
use std::mem::MaybeUninit;

#[cfg(feature = "tls")]
use tokio::net::TcpStream;

/// What an idle check found on a connection that should have had nothing waiting.
#[derive(Debug)]
pub(crate) enum NotClean {
    /// The backend closed the connection (or sent `close_notify`).
    Eof,
    /// Bytes nobody asked for are waiting.
    Unread,
    /// The socket (or the TLS session) reports an error.
    Failed(io::Error),
}

impl NotClean {
    /// The error to report this with (in logs, and from a failed checkout check).
    pub(crate) fn into_error(self) -> io::Error {
        match self {
            NotClean::Eof => io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "backend closed the connection",
            ),
            NotClean::Unread => {
                io::Error::new(io::ErrorKind::InvalidData, "unexpected bytes waiting")
            }
            NotClean::Failed(e) => e,
        }
    }
}

/// A one-byte `MSG_PEEK` on the socket: bytes, end-of-file or an error mean not clean.
pub(crate) fn peek_state(sock: &socket2::Socket) -> Option<NotClean> {
    let mut buf = [MaybeUninit::<u8>::uninit(); 1];
    match sock.peek(&mut buf) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
        Err(e) if e.kind() == io::ErrorKind::Interrupted => None,
        Err(e) => Some(NotClean::Failed(e)),
        Ok(0) => Some(NotClean::Eof),
        Ok(_) => Some(NotClean::Unread),
    }
}

/// TLS records that may be read off an idle connection in one check (session tickets, key
/// updates) before a backend that keeps sending is taken as dirty.
#[cfg(feature = "tls")]
const MAX_IDLE_RECORDS: usize = 16;

/// The idle check for TLS. A peek at the socket sees TLS records, not plaintext, and a clean
/// TLS 1.3 connection does receive records nobody asked for: the session tickets the server
/// sends after the handshake. So whatever is on the socket is read into the rustls session
/// (straight from the socket, not through tokio, whose readiness flag may not have caught
/// up yet) and processed: plaintext means unread bytes, `close_notify` or end-of-file means
/// EOF, a TLS error (e.g. an alert) means an I/O error; handshake records alone leave the
/// connection clean. Plaintext a handler left unread in the session's buffer is caught too.
///
/// A record only partly arrived is invisible (rustls keeps it without saying so), exactly as
/// bytes still on the wire are for plain TCP: it is caught on the next check once its rest
/// has arrived.
#[cfg(feature = "tls")]
pub(crate) fn tls_idle_state(
    tls: &mut tokio_rustls::client::TlsStream<TcpStream>,
) -> Option<NotClean> {
    let (tcp, session) = tls.get_mut();
    let sock = socket2::SockRef::from(&*tcp);
    for _ in 0..MAX_IDLE_RECORDS {
        match session.process_new_packets() {
            Err(e) => {
                return Some(NotClean::Failed(io::Error::new(
                    io::ErrorKind::InvalidData,
                    e,
                )))
            }
            Ok(state) if state.plaintext_bytes_to_read() > 0 => return Some(NotClean::Unread),
            Ok(state) if state.peer_has_closed() => return Some(NotClean::Eof),
            Ok(_) => {}
        }
        let mut raw: &socket2::Socket = &sock;
        match session.read_tls(&mut raw) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Some(NotClean::Failed(e)),
            Ok(0) => return Some(NotClean::Eof),
            Ok(_) => {}
        }
    }
    Some(NotClean::Unread)
}
