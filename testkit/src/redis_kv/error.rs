//! What a handler fails with, and the response for each failure.

use std::error::Error as StdError;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum_tcp_pool::TcpPoolError;

/// Everything a handler can fail with. The response says what happened in general terms;
/// the detail (Redis's message, the OS error) goes to the log only.
#[derive(Debug)]
pub enum ApiError {
    /// No connection, or the connection failed: the pool's own response (`502`/`503`).
    Pool(TcpPoolError),
    /// Redis answered with an error reply; the text is Redis's (for the log).
    Redis(String),
    /// Redis sent something this client does not understand: `502`.
    Protocol,
    /// The command took longer than [`COMMAND_TIMEOUT`](super::COMMAND_TIMEOUT): `504`.
    Timeout,
    /// The request body could not be read, or is larger than [`MAX_VALUE`](super::MAX_VALUE).
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
            ApiError::Redis(msg) => write!(f, "Redis error reply: {msg}"),
            ApiError::Protocol => f.write_str("unexpected reply from Redis"),
            ApiError::Timeout => f.write_str("Redis did not answer in time"),
            ApiError::Body(err) => write!(f, "cannot read the request body: {err}"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            // The pool's own response, which logs the detail itself.
            ApiError::Pool(err) => return err.into_response(),
            ApiError::Redis(ref msg) => redis_error_status(msg),
            ApiError::Protocol => (
                StatusCode::BAD_GATEWAY,
                "Bad gateway: unexpected reply from the store\n",
            ),
            ApiError::Timeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "Gateway timeout: the store did not answer in time\n",
            ),
            ApiError::Body(ref err) if is_too_large(err) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "the value is larger than 4 MiB\n",
            ),
            ApiError::Body(_) => (StatusCode::BAD_REQUEST, "cannot read the request body\n"),
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

/// The status for a Redis error reply, chosen by its error code (the first word).
fn redis_error_status(msg: &str) -> (StatusCode, &'static str) {
    match msg.split(' ').next().unwrap_or_default() {
        // The key holds a list, a hash, ...: a conflict with the resource's current state.
        "WRONGTYPE" => (
            StatusCode::CONFLICT,
            "the key holds a value that is not a string\n",
        ),
        // Temporary states of the server: try again later.
        "LOADING" | "BUSY" | "MASTERDOWN" | "TRYAGAIN" | "MISCONF" | "READONLY" | "OOM" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Service unavailable: the store cannot take this request now, try again later\n",
        ),
        _ => (
            StatusCode::BAD_GATEWAY,
            "Bad gateway: the store rejected the request\n",
        ),
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
