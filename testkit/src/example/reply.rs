//! One reply line from a line-protocol backend, read so that the connection stays clean.

use std::io;

use axum_tcp_pool::{TcpConnection, TcpPoolError};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

/// Reads one reply line of at most `max_line` bytes (newline included), and returns it
/// without its newline.
///
/// The `BufReader` is dropped when this returns, with whatever it buffered beyond the line.
/// That is safe for a backend that sends exactly one line per command; with a protocol that
/// can send more, keep one reader for the whole exchange.
///
/// Errors: end of file (`TcpConnection` has marked the connection to be closed already); a
/// line longer than `max_line` or not UTF-8 (marked here with
/// [`discard`](TcpConnection::discard): the rest is still on the wire); a socket error.
pub async fn read_reply<M>(
    conn: &mut TcpConnection<M>,
    max_line: u64,
) -> Result<String, TcpPoolError> {
    let mut line = String::new();
    let read = BufReader::new(&mut *conn)
        .take(max_line)
        .read_line(&mut line)
        .await;
    match read {
        Ok(0) => Err(TcpPoolError::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the backend closed the connection",
        ))),
        Ok(_) => match line.strip_suffix('\n') {
            Some(reply) => Ok(reply.to_owned()),
            None => {
                // Too long: the rest of the line is still on the wire.
                conn.discard();
                Err(TcpPoolError::Io(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "backend reply too long",
                )))
            }
        },
        Err(err) => {
            // A socket error is tracked already; a UTF-8 error is not, so say it here.
            conn.discard();
            Err(err.into())
        }
    }
}

/// A reply this client does not understand: we no longer trust where the connection stands
/// in the protocol, so it is closed rather than reused, and the client gets `502`.
pub fn unexpected_reply<M>(conn: &mut TcpConnection<M>, reply: &str) -> TcpPoolError {
    conn.discard();
    tracing::warn!(reply, "unexpected reply from the backend");
    TcpPoolError::Io(io::Error::new(
        io::ErrorKind::InvalidData,
        "unexpected reply from the backend",
    ))
}
