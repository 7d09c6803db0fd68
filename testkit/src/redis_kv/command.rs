//! One Redis command on a pooled connection, its reply read to the end.

use std::io;

use axum::body::Bytes;
use axum_tcp_pool::{TcpConnection, TcpPoolError};
use futures_util::{SinkExt, StreamExt};
use redis_protocol::codec::Resp2;
use redis_protocol::error::RedisProtocolErrorKind;
use redis_protocol::resp2::types::BytesFrame;
use tokio_util::codec::Framed;

use super::{ApiError, COMMAND_TIMEOUT};

/// Sends one command (an array of bulk strings: binary-safe) and reads its whole reply.
///
/// An error reply (`-ERR ...`) is returned as [`ApiError::Redis`]; the connection stays
/// clean, since the reply was read to its end. Every other failure leaves the connection
/// marked to be closed: an I/O error or end-of-file by `TcpConnection` itself, a timeout
/// because the read or write was still in flight when it was dropped (`Cancelled`), and a
/// reply that cannot be decoded, or bytes buffered beyond the reply, by `discard()` here.
pub(super) async fn command<const N: usize>(
    conn: &mut TcpConnection,
    args: [Bytes; N],
) -> Result<BytesFrame, ApiError> {
    let request = BytesFrame::Array(args.into_iter().map(BytesFrame::BulkString).collect());
    let mut framed = Framed::new(&mut *conn, Resp2::default());
    let exchange = async {
        framed.send(request).await?;
        framed.next().await.transpose()
    };
    let reply = tokio::time::timeout(COMMAND_TIMEOUT, exchange).await;
    // `Framed` reads ahead into its own buffer, which `TcpConnection` cannot see and which is
    // dropped with it. Redis sends one reply per command, so after the reply the buffer must
    // be empty. If it is not, the server sent more than was asked for (the rest of it may
    // still be on the wire, for the next request to read): the connection is out of step.
    let leftover = framed.read_buffer().len();
    drop(framed);
    let reply = match reply {
        Ok(Ok(Some(frame))) => frame,
        Ok(Ok(None)) => {
            return Err(ApiError::Pool(TcpPoolError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "Redis closed the connection",
            ))))
        }
        Ok(Err(err)) => {
            return Err(match err.kind() {
                // Already marked on the connection by `TcpConnection`.
                RedisProtocolErrorKind::IO(io) => {
                    ApiError::Pool(TcpPoolError::Io(io::Error::new(io.kind(), err.to_string())))
                }
                _ => {
                    conn.discard();
                    tracing::warn!(error = %err, "undecodable reply from Redis");
                    ApiError::Protocol
                }
            });
        }
        Err(_elapsed) => return Err(ApiError::Timeout),
    };
    if leftover > 0 {
        conn.discard();
        tracing::warn!(bytes = leftover, "Redis sent more than one reply");
        return Err(ApiError::Protocol);
    }
    match reply {
        BytesFrame::Error(msg) => Err(ApiError::Redis(msg.to_string())),
        frame => Ok(frame),
    }
}

/// A well-formed reply of the wrong type: we no longer know where the connection stands, so
/// it is closed rather than reused.
pub(super) fn unexpected(conn: &mut TcpConnection, command: &str, reply: &BytesFrame) -> ApiError {
    conn.discard();
    tracing::warn!(command, ?reply, "unexpected reply from Redis");
    ApiError::Protocol
}
