//! One line exchange with an echo backend: [`read_line`], used by every test, and the tagged
//! handler that the chaos test and the soak example share, so that both judge the same
//! handler.

use std::time::Duration;

use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use axum_tcp_pool::{TcpConnection, TcpPoolError};
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// The handler's own bound on one exchange; past it the handler answers 504.
pub const HANDLER_BOUND: Duration = Duration::from_millis(200);

/// Reads one reply line from `conn` (byte by byte, so nothing beyond the line is consumed).
pub async fn read_line<R: AsyncRead + Unpin>(conn: &mut R) -> std::io::Result<String> {
    let mut out = Vec::new();
    loop {
        let b = conn.read_u8().await?;
        if b == b'\n' {
            return Ok(String::from_utf8_lossy(&out).into_owned());
        }
        out.push(b);
    }
}

/// Asks the backend to echo the request's tag, within [`HANDLER_BOUND`]: `200` with the
/// tag, `502` on a backend I/O failure, `504` (the handler's own error) when too slow.
pub async fn tagged(Path(tag): Path<String>, mut conn: TcpConnection) -> Response {
    let exchange = async {
        conn.write_all(format!("ECHO {tag}\n").as_bytes()).await?;
        read_line(&mut conn).await
    };
    match tokio::time::timeout(HANDLER_BOUND, exchange).await {
        Ok(Ok(reply)) => reply.into_response(),
        Ok(Err(e)) => TcpPoolError::from(e).into_response(),
        Err(_) => (StatusCode::GATEWAY_TIMEOUT, "backend too slow").into_response(),
    }
}
