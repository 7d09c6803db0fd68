//! One Redis command on a framed pooled connection, its reply read to the end.

use std::io;

use axum::body::Bytes;
use axum_tcp_pool::{PooledFramed, TcpPoolError};
use futures_util::{SinkExt, StreamExt};
use redis_protocol::codec::Resp2;
use redis_protocol::error::RedisProtocolErrorKind;
use redis_protocol::resp2::types::BytesFrame;

use super::{ApiError, COMMAND_TIMEOUT};

/// A pooled connection speaking RESP2.
pub(super) type Redis = PooledFramed<Resp2>;

/// Sends one command (an array of bulk strings: binary-safe) and reads its reply frame.
///
/// An error reply (`-ERR ...`) is returned as [`ApiError::Redis`]; the connection stays
/// clean, since the reply was read. Every other failure leaves the connection to be closed
/// by `PooledFramed`'s rule, with nothing checked here: an I/O error or end-of-file
/// (`IoError`, `Eof`), a timeout in the middle of the write or the read (`Cancelled`), a
/// reply that cannot be decoded (`Codec`), and bytes buffered beyond the reply
/// (`UnreadBytes`: Redis sent more than was asked for, and the rest may still be on the wire).
pub(super) async fn command<const N: usize>(
    redis: &mut Redis,
    args: [Bytes; N],
) -> Result<BytesFrame, ApiError> {
    let request = BytesFrame::Array(args.into_iter().map(BytesFrame::BulkString).collect());
    let exchange = async {
        redis.send(request).await?;
        redis.next().await.transpose()
    };
    match tokio::time::timeout(COMMAND_TIMEOUT, exchange).await {
        Ok(Ok(Some(BytesFrame::Error(msg)))) => Err(ApiError::Redis(msg.to_string())),
        Ok(Ok(Some(frame))) => Ok(frame),
        Ok(Ok(None)) => Err(ApiError::Pool(TcpPoolError::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "Redis closed the connection",
        )))),
        Ok(Err(err)) => Err(match err.kind() {
            RedisProtocolErrorKind::IO(io) => {
                ApiError::Pool(TcpPoolError::Io(io::Error::new(io.kind(), err.to_string())))
            }
            _ => {
                tracing::warn!(error = %err, "undecodable reply from Redis");
                ApiError::Protocol
            }
        }),
        Err(_elapsed) => Err(ApiError::Timeout),
    }
}

/// A well-formed reply of the wrong type: we no longer know where the connection stands, so
/// it is closed rather than reused.
pub(super) fn unexpected(redis: &mut Redis, command: &str, reply: &BytesFrame) -> ApiError {
    redis.discard();
    tracing::warn!(command, ?reply, "unexpected reply from Redis");
    ApiError::Protocol
}
