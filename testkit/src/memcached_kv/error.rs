//! What a handler fails with, and the response for each failure.

use std::error::Error as StdError;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum_tcp_pool::TcpPoolError;

/// Everything a handler can fail with. The response says what happened in general terms;
/// the detail (memcached's message, the OS error) goes to the log only.
#[derive(Debug)]
pub enum ApiError {
    /// No connection, or the connection failed: the pool's own response (`502`/`503`).
    Pool(TcpPoolError),
    /// The key is not one memcached takes: `400`.
    BadKey,
    /// The value is over memcached's item size limit: `413`.
    TooLarge,
    /// memcached answered `SERVER_ERROR` (other than too large): `503`, with its message
    /// for the log.
    Server(String),
    /// memcached sent something this client does not understand, or not the reply to what
    /// was asked: `502`.
    Protocol(String),
    /// The exchange took longer than [`COMMAND_TIMEOUT`](super::COMMAND_TIMEOUT): `504`.
    Timeout,
    /// The request body could not be read.
    Body(axum::Error),
}

impl From<TcpPoolError> for ApiError {
    fn from(err: TcpPoolError) -> Self {
        ApiError::Pool(err)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::Pool(err) => err.fmt(f),
            ApiError::BadKey => f.write_str("not a memcached key"),
            ApiError::TooLarge => f.write_str("value over the item size limit"),
            ApiError::Server(msg) => write!(f, "memcached SERVER_ERROR {msg}"),
            ApiError::Protocol(why) => write!(f, "unexpected reply from memcached: {why}"),
            ApiError::Timeout => f.write_str("memcached did not answer in time"),
            ApiError::Body(err) => write!(f, "cannot read the request body: {err}"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            ApiError::Pool(err) => return err.into_response(),
            ApiError::BadKey => (
                StatusCode::BAD_REQUEST,
                "a key is 1 to 250 bytes, without spaces or control characters\n",
            ),
            ApiError::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "the value is larger than the store's item size limit (1 MiB)\n",
            ),
            ApiError::Body(ref err) if is_too_large(err) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "the value is larger than the store's item size limit (1 MiB)\n",
            ),
            ApiError::Body(_) => (StatusCode::BAD_REQUEST, "cannot read the request body\n"),
            ApiError::Server(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Service unavailable: the store cannot take this request now, try again later\n",
            ),
            ApiError::Protocol(_) => (
                StatusCode::BAD_GATEWAY,
                "Bad gateway: unexpected reply from the store\n",
            ),
            ApiError::Timeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "Gateway timeout: the store did not answer in time\n",
            ),
        };
        if status.is_server_error() {
            tracing::warn!(error = %self, status = status.as_u16(), "request failed");
        } else {
            tracing::debug!(error = %self, status = status.as_u16(), "request rejected");
        }
        let mut res = (status, body).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        res
    }
}

/// Whether a body error is axum's length limit (as opposed to a client that went away).
fn is_too_large(err: &axum::Error) -> bool {
    let mut source: Option<&(dyn StdError + 'static)> = err.source();
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = e.source();
    }
    false
}
