//! How a [`TcpPoolError`] becomes an HTTP response: a status, a short generic body, and the
//! detail in `tracing` only.

use axum_core::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};

use crate::error::TcpPoolError;
use crate::failfast::throttle::{Line, EVERY};

/// Seconds a client is asked to wait before retrying after `503`.
const RETRY_AFTER_SECS: &str = "1";

impl TcpPoolError {
    /// The HTTP status this error is answered with.
    ///
    /// ```
    /// use axum_tcp_pool::TcpPoolError;
    /// use http::StatusCode;
    /// assert_eq!(TcpPoolError::CheckoutTimeout.status(), StatusCode::SERVICE_UNAVAILABLE);
    /// assert_eq!(TcpPoolError::MissingLayer.status(), StatusCode::INTERNAL_SERVER_ERROR);
    /// ```
    pub fn status(&self) -> StatusCode {
        match self {
            TcpPoolError::CheckoutTimeout | TcpPoolError::Closed => StatusCode::SERVICE_UNAVAILABLE,
            TcpPoolError::BackendUnreachable(_) | TcpPoolError::Io(_) => StatusCode::BAD_GATEWAY,
            TcpPoolError::Config(_)
            | TcpPoolError::MissingLayer
            | TcpPoolError::AlreadyExtracted => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The response body: short, generic, and free of addresses and OS error text.
    fn body(&self) -> &'static str {
        match self {
            TcpPoolError::CheckoutTimeout => "Service unavailable: no backend connection is free, try again later\n",
            TcpPoolError::Closed => "Service unavailable: the service is shutting down, try again later\n",
            TcpPoolError::BackendUnreachable(_) => "Bad gateway: the backend is unreachable\n",
            TcpPoolError::Io(_) => "Bad gateway: the backend connection failed\n",
            TcpPoolError::Config(_) => "Internal server error\n",
            TcpPoolError::MissingLayer => "Missing TcpPoolLayer? The TcpConnection extractor needs `.route_layer(TcpPoolLayer::new(pool))` on its route\n",
            TcpPoolError::AlreadyExtracted => "TcpConnection was already extracted for this request; extract it once\n",
        }
    }
}

/// `503` with `Retry-After` for [`CheckoutTimeout`](TcpPoolError::CheckoutTimeout) and
/// [`Closed`](TcpPoolError::Closed), `502`
/// for [`BackendUnreachable`](TcpPoolError::BackendUnreachable) and
/// [`Io`](TcpPoolError::Io), `500` for the rest. The body is a short plain-text sentence; the
/// error itself is logged (`warn` for 502/503, `error` for 500; the `warn` of a checkout's
/// `502` is throttled per pool: the first, then a counted summary at most every 5 s;
/// `Closed` only at `debug`, the pool's close being logged once).
///
/// ```
/// use axum::response::IntoResponse;
/// use axum_tcp_pool::TcpPoolError;
///
/// let res = TcpPoolError::CheckoutTimeout.into_response();
/// assert_eq!(res.status(), 503);
/// assert_eq!(res.headers()["retry-after"], "1");
/// ```
impl IntoResponse for TcpPoolError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let TcpPoolError::Closed = self {
            // The app closed the pool (its "closing the pool" line is the `info`): a request
            // answered during the shutdown is expected, not a line each.
            tracing::debug!(error = %self, status = status.as_u16(), "pool closed");
        } else if status.is_server_error() && status != StatusCode::INTERNAL_SERVER_ERROR {
            let status = status.as_u16();
            match self.endpoint_error() {
                // A checkout's 502: the first of a burst, then a summary at most every 5 s
                // per pool (a backend that is down would otherwise log once per request).
                Some(inner) => {
                    let endpoint = &*inner.endpoint;
                    match inner.log.event(0, true) {
                        Line::First => {
                            tracing::warn!(error = %self, status, endpoint, "backend connection error")
                        }
                        Line::Summary([count, _]) => tracing::warn!(
                            error = %self,
                            status,
                            endpoint,
                            count,
                            every_s = EVERY.as_secs(),
                            "backend connection error ({count} responses since the last line)"
                        ),
                        Line::Quiet => {
                            tracing::debug!(error = %self, status, endpoint, "backend connection error")
                        }
                    }
                }
                None => tracing::warn!(error = %self, status, "backend connection error"),
            }
        } else {
            tracing::error!(error = %self, status = status.as_u16(), "connection pool misuse");
        }
        let mut res = (status, self.body()).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            res.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        res
    }
}
