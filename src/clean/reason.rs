//! [`DiscardReason`]: why a connection was closed instead of being reused.

/// Why a connection was closed instead of being returned to the pool.
///
/// Counted in [`PoolState::discards`](crate::PoolState::discards) and logged: at `warn` for a
/// backend failure during an exchange (`IoError`, `Eof`, `Codec`), at `debug` for the rest. See the
/// [clean-connection rule](crate::TcpConnection#the-clean-connection-rule).
///
/// ```
/// use axum_tcp_pool::DiscardReason;
/// assert_eq!(DiscardReason::ReplyNotRead.as_str(), "reply_not_read");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DiscardReason {
    /// A read or write returned an I/O error.
    IoError,
    /// A read saw end-of-file: the backend closed its side.
    Eof,
    /// The request or task using the connection was cancelled while an exchange was under
    /// way (a read or write in flight, or between two reads).
    Cancelled,
    /// The backend had sent bytes that the handler never read.
    UnreadBytes,
    /// Bytes were written after the last read: a request whose reply was never read.
    ReplyNotRead,
    /// The connection was dropped while its thread was panicking.
    Panic,
    /// [`TcpConnection::discard`](crate::TcpConnection::discard) was called, or the write
    /// half was shut down.
    Explicit,
    /// The checkout health check failed: the backend closed the idle connection, bytes were
    /// waiting on it, or the configured probe failed.
    HealthCheck,
    /// The codec of a [`PooledFramed`](crate::PooledFramed) returned an error (a reply it
    /// could not decode, a request it could not encode): where the next frame starts is
    /// unknown.
    Codec,
}

impl DiscardReason {
    /// Every reason, in declaration order, for exporting one series per reason. A slice:
    /// later versions may add reasons.
    ///
    /// ```
    /// let names: Vec<&str> = axum_tcp_pool::DiscardReason::ALL.iter().map(|r| r.as_str()).collect();
    /// assert!(names.contains(&"reply_not_read"));
    /// ```
    pub const ALL: &'static [DiscardReason] = &[
        DiscardReason::IoError,
        DiscardReason::Eof,
        DiscardReason::Cancelled,
        DiscardReason::UnreadBytes,
        DiscardReason::ReplyNotRead,
        DiscardReason::Panic,
        DiscardReason::Explicit,
        DiscardReason::HealthCheck,
        DiscardReason::Codec,
    ];

    /// How many reasons there are (the length of [`ALL`](Self::ALL)), for counter arrays.
    pub(crate) const COUNT: usize = Self::ALL.len();

    /// This reason's position in [`ALL`](Self::ALL).
    pub(crate) const fn index(self) -> usize {
        self as usize
    }

    /// A short `snake_case` name, for logs and metrics labels.
    ///
    /// ```
    /// assert_eq!(axum_tcp_pool::DiscardReason::Cancelled.as_str(), "cancelled");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            DiscardReason::IoError => "io_error",
            DiscardReason::Eof => "eof",
            DiscardReason::Cancelled => "cancelled",
            DiscardReason::UnreadBytes => "unread_bytes",
            DiscardReason::ReplyNotRead => "reply_not_read",
            DiscardReason::Panic => "panic",
            DiscardReason::Explicit => "explicit",
            DiscardReason::HealthCheck => "health_check",
            DiscardReason::Codec => "codec",
        }
    }

    /// Whether this is a backend failure during an exchange (logged at `warn`), rather than a
    /// routine discard (logged at `debug`).
    pub(crate) fn is_backend_failure(self) -> bool {
        matches!(
            self,
            DiscardReason::IoError | DiscardReason::Eof | DiscardReason::Codec
        )
    }
}

#[cfg(test)]
mod tests {
    use super::DiscardReason;

    #[test]
    fn all_is_in_index_order() {
        for (i, reason) in DiscardReason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), i, "{reason:?}");
        }
    }
}
