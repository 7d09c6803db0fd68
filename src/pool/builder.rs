//! [`TcpPool::builder`] and [`TcpPoolBuilder`]: a pool's settings, validated by `build`.

use std::time::Duration;

use crate::pool::config::Config;
use crate::pool::probe::{self, ProbeFn};
use crate::pool::TcpPool;
use crate::replicas::{Balance, OutlierDetection};

impl TcpPool {
    /// Starts configuring a pool for `addr`. See [`TcpPoolBuilder`] for the settings.
    ///
    /// | address | connects with | [`TcpConnection::get_ref`](crate::TcpConnection::get_ref) |
    /// |---|---|---|
    /// | `"host:port"` | TCP; the name is resolved again on every connect | [`BackendStream::Tcp`](crate::BackendStream::Tcp) |
    /// | `"unix:/run/app.sock"` | a Unix domain socket (Unix platforms) | [`BackendStream::Unix`](crate::BackendStream::Unix) |
    /// | `"host:port"` and [`tls`](TcpPoolBuilder::tls) (feature `tls`) | TLS over TCP (rustls) | `BackendStream::Tls` |
    ///
    /// The backend must speak only when spoken to: one that greets on connect (SMTP, MySQL)
    /// has its idle connections closed, the greeting being unread bytes to the checkout peek.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), axum_tcp_pool::TcpPoolError> {
    /// let pool = axum_tcp_pool::TcpPool::builder("localhost:11211").max_size(4).build()?;
    /// let local = axum_tcp_pool::TcpPool::builder("unix:/run/cache/cache.sock").build()?;
    /// # Ok(()) }
    /// ```
    pub fn builder(addr: impl Into<String>) -> TcpPoolBuilder {
        TcpPoolBuilder {
            config: Config::new(addr.into()),
        }
    }
}

/// Configures and builds a [`TcpPool`]. Created by [`TcpPool::builder`].
///
/// | setting | default | meaning | counted in [`pool.state()`](crate::PoolState) |
/// |---|---|---|---|
/// | [`endpoint`](Self::endpoint) | none | another address of the same backend (a replica) | `endpoints` |
/// | [`balance`](Self::balance) | `LeastLoaded` | how a checkout chooses among the endpoints | `endpoints[i].checkouts` |
/// | [`outlier_detection`](Self::outlier_detection) | 5 failures eject for 30 s | when an endpoint is taken out of rotation | `endpoints[i].ejected`, `times_ejected` |
/// | [`resolve_endpoints`](Self::resolve_endpoints) | off | each address is a host name whose addresses are the endpoints, looked up again at this interval | `endpoints` |
/// | [`max_size`](Self::max_size) | 10 | most connections open at once, per endpoint | `connections`, `in_use` |
/// | [`min_idle`](Self::min_idle) | 0 | idle connections kept open across idle periods and refilled in the background, per endpoint | `idle` |
/// | [`checkout_timeout`](Self::checkout_timeout) | 5 s | how long a request may wait for a free connection | `gets_timed_out` |
/// | [`connect_timeout`](Self::connect_timeout) | 2 s | one connect attempt (and one health probe) | `connect_failures` |
/// | [`reconnect_backoff`](Self::reconnect_backoff) | 50 ms to 5 s | after a failed connect, how long new connects to that endpoint fail at once (no SYN) before one probes it | `connects_backed_off` |
/// | [`idle_timeout`](Self::idle_timeout) | 10 min | connections above `min_idle` idle this long are closed (the `min_idle` ones stay) | `closed_idle_timeout` |
/// | [`max_lifetime`](Self::max_lifetime) | 30 min | connections older than this (less their jitter) are replaced | `closed_max_lifetime` |
/// | [`max_lifetime_jitter`](Self::max_lifetime_jitter) | 0.025 | each connection's lifetime is shortened by a random share of `max_lifetime` up to this, so connections opened together are not replaced together | `closed_max_lifetime` |
/// | [`idle_probe_interval`](Self::idle_probe_interval) | off | idle connections are checked in the background at this interval, dead ones replaced | `idle_probes`, `idle_probe_failures` |
/// | [`leak_threshold`](Self::leak_threshold) | off | a connection held longer than this is logged (`warn`, once, while still held) | `suspected_leaks` |
/// | [`health_check`](Self::health_check) | none | async probe run on every checkout | `discards.health_check` |
/// | [`write_only`](Self::write_only) | `false` | writes need no reply (statsd-like backends) | `discards.reply_not_read` |
/// | [`nodelay`](Self::nodelay) | `true` | `TCP_NODELAY` | |
/// | [`keepalive`](Self::keepalive) | off | TCP keepalive idle time | |
/// | [`name`](Self::name) | the address | the `pool` field of tracing spans and events, and the `pool` label of metrics | |
/// | `tls` (feature `tls`) | off | connect over TLS, see `TlsConfig` | `connect_failures` (a failed handshake) |
///
/// [`TcpPool::close`] ends a pool's life (`closed`). Each counter is also exported by
/// `record_metrics` (feature `metrics`; names in the `metrics` module).
///
/// # Several endpoints
///
/// One pool can span several replicas of a backend: [`endpoint`](Self::endpoint) adds one
/// (same transport settings for all), [`TcpPool::set_endpoints`] replaces the set at run time,
/// and [`resolve_endpoints`](Self::resolve_endpoints) takes the set from DNS. Each endpoint
/// has its own bb8 pool, so `max_size`, `min_idle`, fail-fast and the health check are per
/// endpoint; the layer, the extractor and the clean-connection rule are the same.
///
/// - **Balancing.** A checkout takes an endpoint that is not ejected, chosen by
///   [`Balance`] (default: least loaded of two at random). An endpoint whose every
///   connection is in use (`max_size` of them) is passed over while another has room; when
///   all are full the checkout waits on the one chosen.
/// - **Failover.** If the connect to that endpoint fails, the same checkout tries another it
///   has not tried, within the one `checkout_timeout` (an ejected one only when no other is
///   left), waiting for one connect attempt per endpoint it tries. `502` only when every
///   endpoint it could try failed; `503` when none had a free connection in time.
/// - **Outlier ejection** ([`OutlierDetection`]). A failure is a connect failure (one refused
///   by the [reconnect backoff](Self#reconnect-backoff) included), an I/O error
///   or end-of-file met by a handler on a connection ([`DiscardReason::IoError`] /
///   [`DiscardReason::Eof`]), or more than `max_size` brand-new connections in a row
///   failing their health check (a backend that accepts connections but does not serve). A connection given back clean after
///   use resets the count (a successful connect alone does not); an idle connection found
///   closed at checkout (`min_idle` ones included) does not count. After
///   `consecutive_failures` in a row the endpoint takes no new checkout for
///   `base_ejection_time × n` (at most `max_ejection_time`), n being the ejections in a row,
///   this one included. When it ends the endpoint takes traffic again, and one more failure
///   ejects it again, for longer; n falls back by one for each `base_ejection_time` that passes
///   from its first clean return after the ejection (an endpoint that serves nothing keeps
///   its n). At most `max_ejected_percent` of the endpoints (rounded
///   down) are ejected at once; a pool of one endpoint never ejects it.
/// - **State.** [`PoolState`](crate::PoolState)'s fields are sums over the endpoints;
///   [`PoolState::endpoints`](crate::PoolState::endpoints) has each one's figures, and
///   [`TcpConnection::endpoint`](crate::TcpConnection::endpoint) says where a connection goes.
///   Spans and events carry an `endpoint` field; metrics have per-endpoint series.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), axum_tcp_pool::TcpPoolError> {
/// use std::time::Duration;
/// use axum_tcp_pool::{Balance, OutlierDetection, TcpPool};
///
/// let pool = TcpPool::builder("10.0.0.1:6379")
///     .endpoint("10.0.0.2:6379")
///     .endpoint("10.0.0.3:6379")
///     .balance(Balance::LeastLoaded)
///     .outlier_detection(
///         OutlierDetection::new()
///             .consecutive_failures(5)
///             .base_ejection_time(Duration::from_secs(30))
///             .max_ejection_time(Duration::from_secs(300))
///             .max_ejected_percent(50),
///     )
///     .max_size(16)
///     .build()?;
/// pool.set_endpoints(["10.0.0.2:6379", "10.0.0.4:6379"])?;
/// assert_eq!(pool.state().endpoints.len(), 2);
/// # Ok(()) }
/// ```
///
/// [`DiscardReason::IoError`]: crate::DiscardReason::IoError
/// [`DiscardReason::Eof`]: crate::DiscardReason::Eof
///
/// # Reconnect backoff
///
/// A backend that is down must not get one connect attempt per request, nor all of them at
/// once when it comes back. After a failed connect to an endpoint, new connects to it wait a
/// delay: `min` after the first failure, doubling with each failure in a row, at most `max`,
/// with *equal jitter* (a random delay between half the step and the step: probes of many
/// app instances spread out, yet never come faster than half a step). During the delay a
/// checkout that needs a new connection there fails at once, with no SYN sent:
/// [`BackendUnreachable`](crate::TcpPoolError::BackendUnreachable) (`502`), or it fails over
/// to another endpoint; idle connections are still used. When the delay is over, one connect
/// at a time probes the endpoint (the others keep failing at once); its success resets the
/// backoff, its failure starts the next, longer step. It applies per endpoint, to every
/// connect (checkouts and the `min_idle` refill alike), and a checkout never waits for more
/// than one connect attempt. Refused connects are counted in
/// [`PoolState::connects_backed_off`](crate::PoolState::connects_backed_off), not in
/// `connect_failures`.
///
/// A backend that accepts connections and closes them (a proxy whose upstream is down, a
/// server at its connection limit) is backed off too: a new connection that fails its health
/// check counts as a failed connect when one opened before it failed the same way within the
/// last second (one alone is taken for a restart closing idle connections). After failures
/// the first connect lets one attempt through at a time until a connection passes its health
/// check, and the backoff is reset once a new connection has served a request: until then
/// the delay goes on doubling. A failed exchange never counts (a backend closing connections
/// on a bad request is not down); outlier detection ejects an endpoint that fails them. Nor
/// does a backend that answers each new connection's request with an error line and then
/// closes it: that exchange is clean.
///
/// The logs stay short during an outage: the first failed connect of an endpoint is a `warn`,
/// then at most one `warn` every 5 s per endpoint counts the failed and backed-off attempts
/// since the last line, and the first success logs `info` "reconnected after N failures".
/// The `warn` of the `502` responses to failed checkouts is throttled the same way, per pool
/// (every response still gets a `debug` line).
///
/// # Leak detection
///
/// With [`leak_threshold`](Self::leak_threshold), a connection held longer than the threshold
/// (from the checkout that lends it until it comes back to the pool or is dropped) is
/// reported while it is still held, since a leaked connection may never come back: one `warn`
/// event, `"connection held longer than leak_threshold, suspected leak"`, per checkout, with
/// the fields `pool`, `endpoint` (and `addr`, the same), `held_ms` (held so far),
/// `threshold_ms` and, when it was checked out under [`TcpPoolLayer`](crate::TcpPoolLayer)
/// (eagerly, by the extractor, or by [`LazyConnection::get`](crate::LazyConnection::get)),
/// the request's `method` and `path` (never the query string, which may hold secrets; the
/// path as the layer sees it, so without the prefix of a `nest` the layer is inside); one
/// from [`TcpPool::get`] has neither. Each one counts in
/// [`PoolState::suspected_leaks`](crate::PoolState::suspected_leaks). If it comes back after
/// all, an `info` event, `"connection suspected of leaking came back"`, gives the same fields
/// with the whole time it was held (a slow request rather than a leak).
///
/// The report comes at most a quarter of the threshold late: one background task per
/// endpoint looks at its connections that often (at least every millisecond, at most every
/// minute), and ends when the pool is dropped. Off (the default), it costs nothing: no record,
/// no task, no clock read. On: no allocation, and about 300 instructions per request (a clock
/// read, two uncontended locks and a copy of the method and path per checkout, an atomic swap
/// per return), under 2% of a request through the layer.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), axum_tcp_pool::TcpPoolError> {
/// use std::time::Duration;
/// let pool = axum_tcp_pool::TcpPool::builder("127.0.0.1:6379")
///     .leak_threshold(Some(Duration::from_secs(30)))
///     .build()?;
/// assert_eq!(pool.state().suspected_leaks, 0);
/// # Ok(()) }
/// ```
///
///
/// # Lifecycle
///
/// Each endpoint has a background task (bb8's reaper and `min_idle` are not used) that:
///
/// - **replaces each connection at its own deadline**: `max_lifetime` less a random share
///   of it up to [`max_lifetime_jitter`](Self::max_lifetime_jitter), drawn at connect, so
///   connections opened together are not replaced together; an idle one is closed at its
///   deadline, one in use when it comes back ([`PoolState::closed_max_lifetime`]);
/// - **keeps `min_idle` without churn**: it opens them, refills after any connection closes,
///   and closes for idleness only connections above `min_idle`, oldest first (HikariCP's
///   `idleTimeout`; [`PoolState::closed_idle_timeout`]); `min_idle` connections stay open
///   across idle periods until their lifetime ends;
/// - **probes idle connections** with [`idle_probe_interval`](Self::idle_probe_interval)
///   (HikariCP's `keepaliveTime`): those not used since the previous round get the peek, then
///   the [health check](Self::health_check) probe, one at a time; a dead one is closed and
///   the task refills up to `min_idle` (HikariCP's `fillPool`; with `min_idle` 0 it is only
///   closed). Probing never opens a connection by itself and never touches one in use
///   ([`PoolState::idle_probes`], [`PoolState::idle_probe_failures`]), and it does not grow
///   the pool: a checkout that finds no idle connection while one is being probed waits for
///   it, or for another to come back, within `checkout_timeout` (HikariCP's keepalive opens
///   one instead). That wait is one round trip, at most `connect_timeout` for a probe that
///   hangs.
///
/// The task holds the endpoint weakly: it ends when the pool is dropped. On the request path
/// it costs a thread-local read and two atomic additions per checkout and, when
/// `max_lifetime` or `idle_timeout` is set, one clock read per return.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), axum_tcp_pool::TcpPoolError> {
/// use std::time::Duration;
/// let pool = axum_tcp_pool::TcpPool::builder("127.0.0.1:6379")
///     .min_idle(2)
///     .idle_timeout(Some(Duration::from_secs(60)))
///     .max_lifetime(Some(Duration::from_secs(1800)))
///     .max_lifetime_jitter(0.025)
///     .idle_probe_interval(Some(Duration::from_secs(30)))
///     .build()?;
/// # Ok(()) }
/// ```
///
/// [`PoolState::closed_max_lifetime`]: crate::PoolState::closed_max_lifetime
/// [`PoolState::closed_idle_timeout`]: crate::PoolState::closed_idle_timeout
/// [`PoolState::idle_probes`]: crate::PoolState::idle_probes
/// [`PoolState::idle_probe_failures`]: crate::PoolState::idle_probe_failures
///
/// # Validation
///
/// Nothing is validated until [`build`](Self::build) or [`connect`](Self::connect), which
/// return [`TcpPoolError::Config`](crate::TcpPoolError::Config) (never panic) for an invalid value.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), axum_tcp_pool::TcpPoolError> {
/// use std::time::Duration;
/// let pool = axum_tcp_pool::TcpPool::builder("127.0.0.1:6379")
///     .max_size(16)
///     .min_idle(2)
///     .checkout_timeout(Duration::from_secs(2))
///     .connect_timeout(Duration::from_secs(1))
///     .idle_timeout(Some(Duration::from_secs(60)))
///     .max_lifetime(Some(Duration::from_secs(1800)))
///     .build()?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build()` or `connect()` is called"]
pub struct TcpPoolBuilder {
    pub(super) config: Config,
}

impl TcpPoolBuilder {
    /// Adds an endpoint: another address of the same backend, used with the same settings.
    /// Repeatable. See [Several endpoints](Self#several-endpoints).
    ///
    /// ```
    /// let b = axum_tcp_pool::TcpPool::builder("10.0.0.1:6379").endpoint("10.0.0.2:6379");
    /// ```
    pub fn endpoint(mut self, addr: impl Into<String>) -> Self {
        self.config.endpoints.push(addr.into());
        self
    }

    /// How a checkout chooses among the endpoints (default [`Balance::LeastLoaded`]).
    ///
    /// ```
    /// use axum_tcp_pool::{Balance, TcpPool};
    /// let b = TcpPool::builder("10.0.0.1:6379").endpoint("10.0.0.2:6379").balance(Balance::RoundRobin);
    /// ```
    pub fn balance(mut self, balance: Balance) -> Self {
        self.config.balance = balance;
        self
    }

    /// When an endpoint is ejected, and for how long (default [`OutlierDetection::new`];
    /// [`OutlierDetection::disabled`] turns it off).
    ///
    /// ```
    /// use axum_tcp_pool::{OutlierDetection, TcpPool};
    /// let b = TcpPool::builder("10.0.0.1:6379")
    ///     .endpoint("10.0.0.2:6379")
    ///     .outlier_detection(OutlierDetection::new().consecutive_failures(3));
    /// ```
    pub fn outlier_detection(mut self, outlier: OutlierDetection) -> Self {
        self.config.outlier = outlier;
        self
    }

    /// Treats each address as a host name whose lookup gives a set of endpoints (a headless
    /// service of a container platform), looked up now and again every `every`. Checkouts
    /// wait for the first lookup (within `checkout_timeout`); a lookup that fails or finds
    /// nothing keeps the endpoints the name had, or, if it had none (a Unix socket path, a
    /// name not resolving yet), uses the name as it is; an address that goes away is removed
    /// like with [`TcpPool::set_endpoints`]. TLS checks each endpoint against the host name.
    ///
    /// ```
    /// use std::time::Duration;
    /// let b = axum_tcp_pool::TcpPool::builder("cache.default.svc.cluster.local:6379")
    ///     .resolve_endpoints(Duration::from_secs(30));
    /// ```
    pub fn resolve_endpoints(mut self, every: Duration) -> Self {
        self.config.resolve_every = Some(every);
        self
    }

    /// The most connections the pool opens at once, per endpoint (default 10; must be at
    /// least 1). The backend never sees more than this many connections from this pool.
    ///
    /// ```
    /// let b = axum_tcp_pool::TcpPool::builder("127.0.0.1:6379").max_size(32);
    /// ```
    pub fn max_size(mut self, max_size: u32) -> Self {
        self.config.max_size = max_size;
        self
    }

    /// Idle connections to keep open, per endpoint (default 0; at most `max_size`). They are
    /// opened in the background after `build()`, refilled after any connection closes, and
    /// stay open across idle periods (only connections above `min_idle` close for
    /// [idleness](Self::idle_timeout)). See the [lifecycle](Self#lifecycle).
    ///
    /// ```
    /// let b = axum_tcp_pool::TcpPool::builder("127.0.0.1:6379").min_idle(2);
    /// ```
    pub fn min_idle(mut self, min_idle: u32) -> Self {
        self.config.min_idle = min_idle;
        self
    }

    /// How long a checkout may wait for a free connection (default 5 s; must not be zero).
    /// When it runs out the request gets `503 Service Unavailable`.
    ///
    /// ```
    /// use std::time::Duration;
    /// let b = axum_tcp_pool::TcpPool::builder("127.0.0.1:6379").checkout_timeout(Duration::from_millis(500));
    /// ```
    pub fn checkout_timeout(mut self, timeout: Duration) -> Self {
        self.config.checkout_timeout = timeout;
        self
    }

    /// The time limit of one connect attempt, including name resolution (default 2 s; must not
    /// be zero). It also bounds one run of the [health check](Self::health_check) probe.
    ///
    /// ```
    /// use std::time::Duration;
    /// let b = axum_tcp_pool::TcpPool::builder("127.0.0.1:6379").connect_timeout(Duration::from_secs(1));
    /// ```
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// Connections above `min_idle` are closed after sitting idle this long since their last
    /// return, oldest first (default 10 minutes); the `min_idle` ones stay open. `None` keeps
    /// idle connections forever; `Some(Duration::ZERO)` is an error. See the
    /// [lifecycle](Self#lifecycle).
    ///
    /// ```
    /// use std::time::Duration;
    /// let b = axum_tcp_pool::TcpPool::builder("127.0.0.1:6379").idle_timeout(Some(Duration::from_secs(60)));
    /// ```
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.config.idle_timeout = timeout;
        self
    }

    /// Connections older than this, less their [jitter](Self::max_lifetime_jitter), are
    /// closed and replaced: at their own deadline while idle, when they come back if in use
    /// (default 30 minutes). `None` lets connections live forever; `Some(Duration::ZERO)` is
    /// an error. See the [lifecycle](Self#lifecycle).
    ///
    /// ```
    /// use std::time::Duration;
    /// let b = axum_tcp_pool::TcpPool::builder("127.0.0.1:6379").max_lifetime(None);
    /// ```
    pub fn max_lifetime(mut self, lifetime: Option<Duration>) -> Self {
        self.config.max_lifetime = lifetime;
        self
    }

    /// Sets `TCP_NODELAY` on new connections (default `true`: request/response protocols
    /// should not wait for Nagle's algorithm). Ignored for a Unix socket.
    ///
    /// ```
    /// let b = axum_tcp_pool::TcpPool::builder("127.0.0.1:6379").nodelay(false);
    /// ```
    pub fn nodelay(mut self, nodelay: bool) -> Self {
        self.config.nodelay = nodelay;
        self
    }

    /// Turns TCP keepalive on, with this idle time before the first probe (default off). The
    /// time is whole seconds, between 1 s and 32767 s. Ignored for a Unix socket.
    ///
    /// ```
    /// use std::time::Duration;
    /// let b = axum_tcp_pool::TcpPool::builder("127.0.0.1:6379").keepalive(Some(Duration::from_secs(30)));
    /// ```
    pub fn keepalive(mut self, idle: Option<Duration>) -> Self {
        self.config.keepalive = idle;
        self
    }

    /// An async probe run on every checkout, after the built-in non-blocking peek: an `async
    /// fn(&mut BackendStream) -> io::Result<()>` or an async closure of that shape. Over TLS
    /// it talks plaintext. It must leave nothing unread, and must not panic.
    ///
    /// If it fails, times out (`connect_timeout`) or leaves bytes behind, the connection is
    /// closed (`HealthCheck`) and another one is tried; if more than `max_size` brand-new
    /// connections fail it in a row, the backend counts as unreachable and waiting requests
    /// get `502` (no endless reconnect loop). It costs one round trip per checkout.
    ///
    /// ```
    /// use std::io;
    /// use axum_tcp_pool::{BackendStream, TcpPool};
    /// use tokio::io::{AsyncReadExt, AsyncWriteExt};
    ///
    /// async fn ping(stream: &mut BackendStream) -> io::Result<()> {
    ///     stream.write_all(b"PING\r\n").await?;
    ///     let mut reply = [0u8; 7];
    ///     stream.read_exact(&mut reply).await?;
    ///     match &reply {
    ///         b"+PONG\r\n" => Ok(()),
    ///         _ => Err(io::Error::new(io::ErrorKind::InvalidData, "unexpected PING reply")),
    ///     }
    /// }
    ///
    /// let builder = TcpPool::builder("127.0.0.1:6379").health_check(ping);
    /// ```
    pub fn health_check<P>(mut self, probe: P) -> Self
    where
        P: for<'a> ProbeFn<'a> + 'static,
    {
        self.config.probe = Some(probe::probe(probe));
        self
    }

    /// Writes need no reply on this pool's connections (default `false`): a connection
    /// written to and never read goes back to the pool instead of being closed as
    /// `ReplyNotRead`, as if every handler called
    /// [`TcpConnection::expect_no_reply`](crate::TcpConnection::expect_no_reply); a
    /// [`PooledFramed`](crate::PooledFramed) expects no reply frame per request unless told
    /// with `expect_replies`. For statsd-like backends that never answer.
    ///
    /// Unread bytes still close a connection: every connection that was written to gets a
    /// non-blocking look at its socket when it comes back, and every checkout peeks again. So
    /// a write answered anyway (memcached's `ERROR` to a `noreply` line it cannot parse)
    /// closes the connection only if the answer has arrived by one of those looks.
    ///
    /// ```
    /// let b = axum_tcp_pool::TcpPool::builder("127.0.0.1:8125").write_only(true);
    /// ```
    pub fn write_only(mut self, write_only: bool) -> Self {
        self.config.write_only = write_only;
        self
    }

    /// Names the pool in its tracing spans and events (the `pool` field) and in its metrics
    /// (the `pool` label). Defaults to the address. Give each pool of an app a distinct
    /// name: two pools with one name share their metrics series.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), axum_tcp_pool::TcpPoolError> {
    /// let pool = axum_tcp_pool::TcpPool::builder("127.0.0.1:11211").name("cache").build()?;
    /// assert_eq!(pool.name(), "cache");
    /// # Ok(()) }
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = Some(name.into());
        self
    }

    /// The largest share of `max_lifetime` taken off each connection's lifetime, drawn at
    /// random at connect (default 0.025, HikariCP's 2.5 %; from 0.0 to 0.5, NaN is an
    /// error): connections opened together are replaced one by one, not together. See the
    /// [lifecycle](Self#lifecycle).
    ///
    /// ```
    /// use std::time::Duration;
    /// let b = axum_tcp_pool::TcpPool::builder("127.0.0.1:6379")
    ///     .max_lifetime(Some(Duration::from_secs(1800)))
    ///     .max_lifetime_jitter(0.1);
    /// ```
    pub fn max_lifetime_jitter(mut self, jitter: f64) -> Self {
        self.config.max_lifetime_jitter = jitter;
        self
    }

    /// Checks idle connections in the background at this interval (default `None`, off;
    /// `Some(Duration::ZERO)` is an error): those not used since the previous round get the
    /// non-blocking peek, then the [health check](Self::health_check) probe if one is set,
    /// and dead ones are closed and replaced up to `min_idle`. It never opens a connection by
    /// itself and never touches one in use. See the [lifecycle](Self#lifecycle).
    ///
    /// ```
    /// use std::time::Duration;
    /// let b = axum_tcp_pool::TcpPool::builder("127.0.0.1:6379")
    ///     .min_idle(2)
    ///     .idle_probe_interval(Some(Duration::from_secs(30)));
    /// ```
    pub fn idle_probe_interval(mut self, interval: Option<Duration>) -> Self {
        self.config.idle_probe_interval = interval;
        self
    }

    /// Reports a connection held (checked out) longer than `threshold`: one `warn` while it is
    /// still held, with the pool, the endpoint, `held_ms` and, under the layer, the request's
    /// method and path; counted in [`PoolState::suspected_leaks`](crate::PoolState::suspected_leaks).
    /// Default `None` (off, no cost); `Some(Duration::ZERO)` is an error. See the
    /// [builder's docs](Self#leak-detection).
    ///
    /// ```
    /// use std::time::Duration;
    /// let b = axum_tcp_pool::TcpPool::builder("127.0.0.1:6379").leak_threshold(Some(Duration::from_secs(30)));
    /// ```
    pub fn leak_threshold(mut self, threshold: Option<Duration>) -> Self {
        self.config.leak_threshold = threshold;
        self
    }

    /// Connects over TLS, with these settings (server name, root certificates, client
    /// certificate). TCP addresses only. Available with the `tls` feature.
    ///
    /// The settings are parsed by [`build`](Self::build), which returns
    /// [`TcpPoolError::Config`](crate::TcpPoolError::Config) if they cannot be used. A failed handshake is a failed
    /// connect attempt ([`TcpPoolError::BackendUnreachable`](crate::TcpPoolError::BackendUnreachable), `502`, logged at `warn` with
    /// the reason); `connect_timeout` bounds the TCP connect and the handshake together.
    ///
    /// ```no_run
    /// # fn f() -> Result<(), Box<dyn std::error::Error>> {
    /// use axum_tcp_pool::{TcpPool, TlsConfig};
    ///
    /// let tls = TlsConfig::new().ca_pem(std::fs::read("/etc/backend/ca.pem")?);
    /// let builder = TcpPool::builder("cache.internal:6380").tls(tls);
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls(mut self, config: crate::transport::TlsConfig) -> Self {
        self.config.tls = Some(config);
        self
    }

    /// The [reconnect backoff](Self#reconnect-backoff): after a failed connect to an
    /// endpoint, new connects to it fail at once for a delay from `min`, doubling per failure
    /// in a row, up to `max` (default 50 ms and 5 s), then one probes it.
    /// `reconnect_backoff(Duration::ZERO, Duration::ZERO)` turns it off (one connect attempt
    /// per checkout that needs one). `min` must not exceed `max`, and be above zero unless
    /// both are.
    ///
    /// ```
    /// use std::time::Duration;
    /// let b = axum_tcp_pool::TcpPool::builder("127.0.0.1:6379")
    ///     .reconnect_backoff(Duration::from_millis(100), Duration::from_secs(10));
    /// let off = axum_tcp_pool::TcpPool::builder("127.0.0.1:6379")
    ///     .reconnect_backoff(Duration::ZERO, Duration::ZERO);
    /// ```
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.config.reconnect_backoff = (min, max);
        self
    }
}
