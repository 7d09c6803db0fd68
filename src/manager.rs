//! The bb8 connection manager: connect (with timeout and socket options), the checkout health
//! check, and the return-time cleanliness check. Nothing here knows about HTTP.
//!
//! Most users never touch this module: [`TcpPool`](crate::TcpPool) wraps it. It is public so
//! that the underlying [`bb8::Pool`] (reachable with [`TcpPool::bb8`](crate::TcpPool::bb8))
//! has nameable types.

use std::fmt;
use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::config::Config;
use crate::endpoint::Endpoint;
use crate::state::Counters;
use crate::{BackendStream, DiscardReason, TcpPoolError};

/// What the manager and every pool handle share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) counters: Counters,
    /// Woken (`notify_waiters`) each time a connect attempt fails, so that checkouts waiting
    /// for a connection fail promptly instead of waiting out the checkout timeout. Notified by
    /// [`FailureSink`], i.e. only after bb8 has booked the failure: a checkout that starts
    /// after the notification gets a connect attempt of its own.
    pub(crate) connect_failed: Notify,
    /// The kind of the last connect failure, for the error handed to those waiters.
    last_failure: Mutex<io::ErrorKind>,
    /// Brand-new connections that failed their health check in a row.
    fresh_failures: AtomicU32,
    /// The parsed TLS settings, if the pool connects over TLS.
    #[cfg(feature = "tls")]
    tls: Option<crate::tls::Connector>,
    /// Connect attempts started; an attempt's number is the count when it started.
    attempts: AtomicU64,
    /// Connect attempts under way.
    connecting: AtomicU64,
    /// The highest number of a failed attempt: a checkout is failed fast only by an attempt
    /// that started after it began to wait, not by a stale one that started while the
    /// backend was down and was seen failing after it came back.
    last_failed_attempt: AtomicU64,
}

impl Shared {
    /// Fails (with [`TcpPoolError::Config`]) only if the TLS settings cannot be used.
    pub(crate) fn new(config: Config) -> Result<Self, TcpPoolError> {
        #[cfg(feature = "tls")]
        let tls = match &config.tls {
            Some(tls) => Some(tls.connector(&config.endpoint)?),
            None => None,
        };
        Ok(Shared {
            #[cfg(feature = "tls")]
            tls,
            config,
            counters: Counters::default(),
            connect_failed: Notify::new(),
            last_failure: Mutex::new(io::ErrorKind::Other),
            fresh_failures: AtomicU32::new(0),
            attempts: AtomicU64::new(0),
            connecting: AtomicU64::new(0),
            last_failed_attempt: AtomicU64::new(0),
        })
    }

    /// Connect attempts started so far (the number the next one will exceed).
    pub(crate) fn attempts_started(&self) -> u64 {
        self.attempts.load(SeqCst)
    }

    /// Whether an attempt that started after `attempts_started() == since` has failed.
    pub(crate) fn failed_since(&self, since: u64) -> bool {
        self.last_failed_attempt.load(SeqCst) > since
    }

    /// Whether a connect attempt is under way.
    pub(crate) fn connecting(&self) -> bool {
        self.connecting.load(SeqCst) > 0
    }

    fn record_connect_failure(&self, attempt: u64, err: &io::Error, what: &str) {
        self.last_failed_attempt.fetch_max(attempt, SeqCst);
        self.counters.connect_failures.fetch_add(1, Relaxed);
        tracing::warn!(
            pool = self.config.name(),
            addr = %self.config.addr,
            reason = %err.kind(),
            error = %err,
            "{what}"
        );
        if let Ok(mut last) = self.last_failure.lock() {
            *last = err.kind();
        }
    }

    /// The error for a checkout that was woken by someone's failed connect attempt.
    pub(crate) fn last_connect_failure(&self) -> TcpPoolError {
        let kind = self
            .last_failure
            .lock()
            .map(|k| *k)
            .unwrap_or(io::ErrorKind::Other);
        TcpPoolError::BackendUnreachable(io::Error::new(
            kind,
            "a connect attempt to the backend failed while waiting for a connection",
        ))
    }
}

/// bb8's error sink: it gets each error bb8 does not return to a caller (failed background
/// connects, failed health checks) after bb8 has updated its own counts.
#[derive(Debug, Clone)]
pub(crate) struct FailureSink(pub(crate) Arc<Shared>);

impl bb8::ErrorSink<TcpPoolError> for FailureSink {
    fn sink(&self, error: TcpPoolError) {
        // Routine health-check failures come as `Io`; only a backend failure wakes waiters.
        if let TcpPoolError::BackendUnreachable(_) = error {
            self.0.connect_failed.notify_waiters();
        }
    }

    fn boxed_clone(&self) -> Box<dyn bb8::ErrorSink<TcpPoolError>> {
        Box::new(self.clone())
    }
}

/// The [`bb8::ManageConnection`] behind [`TcpPool`](crate::TcpPool).
///
/// - `connect` resolves the address again, connects (and does the TLS handshake, if
///   configured) within `connect_timeout`, and sets `TCP_NODELAY` and keepalive as
///   configured (TCP only: a Unix socket has neither);
/// - `is_valid` (run on every checkout) does a non-blocking peek, which fails if the backend
///   closed the connection or sent bytes nobody asked for, then runs the configured probe;
/// - `has_broken` (run on every return) fails a connection that was marked dirty or has
///   unread bytes waiting, and shuts it down at once.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), axum_tcp_pool::TcpPoolError> {
/// use axum_tcp_pool::{manager::TcpManager, TcpPool};
///
/// let pool = TcpPool::builder("127.0.0.1:6379").build()?;
/// let raw: &axum_tcp_pool::bb8::Pool<TcpManager> = pool.bb8();
/// assert_eq!(raw.state().connections, 0);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct TcpManager {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for TcpManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpManager")
            .field("addr", &self.shared.config.addr)
            .finish_non_exhaustive()
    }
}

/// The connection type the bb8 pool holds: a [`BackendStream`] plus the state that decides
/// whether it may be reused.
///
/// [`TcpConnection`](crate::TcpConnection) is the tracked wrapper handlers use. Code that checks
/// out through [`TcpPool::bb8`](crate::TcpPool::bb8) directly gets this type, whose I/O is
/// *not* tracked: call [`PooledStream::discard`] if the exchange did not end cleanly.
///
/// ```no_run
/// # async fn f(pool: axum_tcp_pool::TcpPool) {
/// let mut conn = pool.bb8().get().await.unwrap();
/// println!("peer: {:?}", conn.stream().tcp().map(|s| s.peer_addr()));
/// conn.discard(); // closed instead of reused
/// # }
/// ```
#[derive(Debug)]
pub struct PooledStream {
    stream: BackendStream,
    dirty: Option<DiscardReason>,
    /// Not yet handed out by a successful checkout.
    fresh: bool,
    /// The number of the connect attempt that opened it.
    attempt: u64,
    /// The runtime that opened it, lent to a drop on a thread without one.
    runtime: Option<tokio::runtime::Handle>,
}

impl PooledStream {
    /// The stream (TCP, Unix domain socket, or TLS).
    ///
    /// ```no_run
    /// # async fn f(pool: axum_tcp_pool::TcpPool) {
    /// let conn = pool.bb8().get().await.unwrap();
    /// let _ = conn.stream().tcp().map(|tcp| tcp.nodelay());
    /// # }
    /// ```
    pub fn stream(&self) -> &BackendStream {
        &self.stream
    }

    /// The stream, mutably. I/O done through it is not tracked: call
    /// [`discard`](Self::discard) unless the exchange ended cleanly.
    ///
    /// ```no_run
    /// # async fn f(pool: axum_tcp_pool::TcpPool) {
    /// use tokio::io::AsyncWriteExt;
    /// let mut conn = pool.bb8().get().await.unwrap();
    /// if conn.stream_mut().write_all(b"QUIT\r\n").await.is_ok() {
    ///     conn.discard();
    /// }
    /// # }
    /// ```
    pub fn stream_mut(&mut self) -> &mut BackendStream {
        &mut self.stream
    }

    /// Marks the connection so that it is closed, not reused, when it goes back to the pool.
    ///
    /// ```no_run
    /// # async fn f(pool: axum_tcp_pool::TcpPool) {
    /// pool.bb8().get().await.unwrap().discard();
    /// # }
    /// ```
    pub fn discard(&mut self) {
        self.mark(DiscardReason::Explicit);
    }

    pub(crate) fn runtime(&self) -> Option<&tokio::runtime::Handle> {
        self.runtime.as_ref()
    }

    pub(crate) fn dirty(&self) -> Option<DiscardReason> {
        self.dirty
    }

    /// Records why the connection must not be reused; the first reason wins.
    pub(crate) fn mark(&mut self, reason: DiscardReason) {
        self.dirty.get_or_insert(reason);
    }

    /// A non-blocking look at the connection: `None` if nothing is waiting (the state a
    /// clean, idle connection is in), otherwise why the connection must not be used.
    fn peek_state(&mut self) -> Option<(DiscardReason, io::Error)> {
        self.stream.idle_state()
    }
}

impl TcpManager {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        TcpManager { shared }
    }

    /// Connects within `connect_timeout`, the TLS handshake included.
    async fn open(&self) -> io::Result<BackendStream> {
        let cfg = &self.shared.config;
        tokio::time::timeout(cfg.connect_timeout, self.open_untimed())
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
    }

    async fn open_untimed(&self) -> io::Result<BackendStream> {
        let cfg = &self.shared.config;
        match &cfg.endpoint {
            Endpoint::Tcp(addr) => {
                let stream = TcpStream::connect(&**addr).await?;
                stream.set_nodelay(cfg.nodelay)?;
                if let Some(time) = cfg.keepalive {
                    let ka = socket2::TcpKeepalive::new().with_time(time);
                    socket2::SockRef::from(&stream).set_tcp_keepalive(&ka)?;
                }
                #[cfg(feature = "tls")]
                if let Some(tls) = &self.shared.tls {
                    let stream = tls.connect(stream).await?;
                    return Ok(BackendStream::Tls(Box::new(stream)));
                }
                Ok(BackendStream::Tcp(stream))
            }
            #[cfg(unix)]
            Endpoint::Unix(path) => Ok(BackendStream::Unix(
                tokio::net::UnixStream::connect(path).await?,
            )),
            // Rejected by the configuration's validation.
            #[cfg(not(unix))]
            Endpoint::Unix(_) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "Unix domain sockets are not supported on this platform",
            )),
        }
    }

    /// A failed check leaves the connection marked for closing. A stale idle connection is
    /// routine; but when more brand-new connections fail in a row than the pool can hold idle,
    /// the backend accepts connections without serving them: that is reported as a connect
    /// failure, so waiting checkouts fail fast instead of reconnecting in a loop.
    fn check_failed(&self, conn: &mut PooledStream, err: io::Error) -> TcpPoolError {
        conn.mark(DiscardReason::HealthCheck);
        let in_a_row = if conn.fresh {
            self.shared.fresh_failures.fetch_add(1, Relaxed) + 1
        } else {
            0
        };
        if in_a_row > self.shared.config.max_size {
            self.shared.fresh_failures.store(0, Relaxed);
            self.shared.record_connect_failure(
                conn.attempt,
                &err,
                "new backend connections keep failing their health check",
            );
            return TcpPoolError::BackendUnreachable(err);
        }
        tracing::debug!(
            pool = self.shared.config.name(),
            addr = %self.shared.config.addr,
            reason = DiscardReason::HealthCheck.as_str(),
            error = %err,
            "connection failed its health check"
        );
        TcpPoolError::Io(err)
    }
}

impl bb8::ManageConnection for TcpManager {
    type Connection = PooledStream;
    type Error = TcpPoolError;

    async fn connect(&self) -> Result<PooledStream, TcpPoolError> {
        /// Counts the attempt as under way until it ends, even if it is cancelled.
        struct Connecting<'a>(&'a AtomicU64);
        impl Drop for Connecting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, SeqCst);
            }
        }
        self.shared.connecting.fetch_add(1, SeqCst);
        let connecting = Connecting(&self.shared.connecting);
        let attempt = self.shared.attempts.fetch_add(1, SeqCst) + 1;
        let opened = self.open().await;
        // `connecting` is dropped at the end, after a failure is recorded: a waiting checkout
        // never sees this attempt as neither under way nor failed. (bb8 wakes the waiters,
        // through the error sink, only after `connect` has returned.)
        let result = match opened {
            Ok(stream) => {
                tracing::debug!(
                    pool = self.shared.config.name(),
                    addr = %self.shared.config.addr,
                    "opened backend connection"
                );
                Ok(PooledStream {
                    stream,
                    dirty: None,
                    fresh: true,
                    attempt,
                    runtime: tokio::runtime::Handle::try_current().ok(),
                })
            }
            Err(e) => {
                self.shared
                    .record_connect_failure(attempt, &e, "connect to backend failed");
                Err(TcpPoolError::BackendUnreachable(e))
            }
        };
        drop(connecting);
        result
    }

    async fn is_valid(&self, conn: &mut PooledStream) -> Result<(), TcpPoolError> {
        if let Some((_, err)) = conn.peek_state() {
            return Err(self.check_failed(conn, err));
        }
        if let Some(probe) = &self.shared.config.probe {
            // Marked dirty while the probe runs: if this checkout is cancelled mid-probe, the
            // connection is closed, not returned half-way through an exchange.
            conn.mark(DiscardReason::HealthCheck);
            let timeout = self.shared.config.connect_timeout;
            let result = match tokio::time::timeout(timeout, probe(&mut conn.stream)).await {
                Ok(Ok(())) => match conn.peek_state() {
                    None => Ok(()),
                    Some((_, err)) => Err(err),
                },
                Ok(Err(e)) => Err(e),
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "health check probe timed out",
                )),
            };
            if let Err(err) = result {
                return Err(self.check_failed(conn, err));
            }
            conn.dirty = None;
        }
        conn.fresh = false;
        // Read first: no shared write on the hot path while nothing fails.
        if self.shared.fresh_failures.load(Relaxed) != 0 {
            self.shared.fresh_failures.store(0, Relaxed);
        }
        Ok(())
    }

    fn has_broken(&self, conn: &mut PooledStream) -> bool {
        let reason = match conn.dirty {
            Some(reason) => reason,
            None => match conn.peek_state() {
                None => return false,
                Some((reason, _)) => reason,
            },
        };
        self.shared.counters.record_discard(reason);
        let pool = self.shared.config.name();
        let addr = &self.shared.config.addr;
        match reason {
            // The backend failed during an exchange: worth an operator's attention.
            DiscardReason::IoError | DiscardReason::Eof => tracing::warn!(
                pool,
                %addr,
                reason = reason.as_str(),
                "closing connection instead of reusing it"
            ),
            // Routine: the request or the handler decided, or an idle connection went stale.
            _ => tracing::debug!(
                pool,
                %addr,
                reason = reason.as_str(),
                "closing connection instead of reusing it"
            ),
        }
        // Send FIN now, before bb8 decides whether to open a replacement.
        let _ = conn.stream.sock().shutdown(Shutdown::Both);
        true
    }
}
