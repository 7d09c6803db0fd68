//! Pool configuration and its validation: everything is checked here, before bb8's builder
//! (which asserts, i.e. panics, on some invalid values) ever sees it.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::endpoint::Endpoint;
use crate::{BackendStream, TcpPoolError};

/// The future returned by a [health check](crate::TcpPoolBuilder::health_check) probe: boxed,
/// because it borrows the stream it probes.
///
/// ```
/// use axum_tcp_pool::{BackendStream, ProbeFuture};
/// use tokio::io::AsyncWriteExt;
///
/// fn probe(stream: &mut BackendStream) -> ProbeFuture<'_> {
///     Box::pin(async move { stream.write_all(b"").await })
/// }
/// let builder = axum_tcp_pool::TcpPool::builder("127.0.0.1:6379").health_check(probe);
/// ```
pub type ProbeFuture<'a> = Pin<Box<dyn Future<Output = io::Result<()>> + Send + 'a>>;

/// A user-supplied async health check, run on every checkout.
pub(crate) type Probe = Arc<dyn for<'a> Fn(&'a mut BackendStream) -> ProbeFuture<'a> + Send + Sync>;

/// The validated settings of one pool.
#[derive(Clone)]
pub(crate) struct Config {
    /// The address as given, for logs.
    pub(crate) addr: String,
    /// The `pool` label of logs and metrics; the address if not set.
    pub(crate) name: Option<String>,
    pub(crate) endpoint: Endpoint,
    pub(crate) max_size: u32,
    pub(crate) min_idle: u32,
    pub(crate) checkout_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) max_lifetime: Option<Duration>,
    pub(crate) nodelay: bool,
    pub(crate) keepalive: Option<Duration>,
    pub(crate) probe: Option<Probe>,
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<crate::TlsConfig>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Config");
        d.field("addr", &self.addr)
            .field("name", &self.name)
            .field("max_size", &self.max_size)
            .field("min_idle", &self.min_idle)
            .field("checkout_timeout", &self.checkout_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_lifetime", &self.max_lifetime)
            .field("nodelay", &self.nodelay)
            .field("keepalive", &self.keepalive)
            .field("probe", &self.probe.as_ref().map(|_| "<fn>"));
        #[cfg(feature = "tls")]
        d.field("tls", &self.tls);
        d.finish()
    }
}

impl Config {
    pub(crate) const DEFAULT_MAX_SIZE: u32 = 10;
    pub(crate) const DEFAULT_CHECKOUT_TIMEOUT: Duration = Duration::from_secs(5);
    pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
    pub(crate) const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
    pub(crate) const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(1800);

    pub(crate) fn new(addr: String) -> Self {
        Config {
            endpoint: Endpoint::parse(&addr),
            addr,
            name: None,
            max_size: Self::DEFAULT_MAX_SIZE,
            min_idle: 0,
            checkout_timeout: Self::DEFAULT_CHECKOUT_TIMEOUT,
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            idle_timeout: Some(Self::DEFAULT_IDLE_TIMEOUT),
            max_lifetime: Some(Self::DEFAULT_MAX_LIFETIME),
            nodelay: true,
            keepalive: None,
            probe: None,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// The pool's name for logs and metrics: as configured, or else the address.
    pub(crate) fn name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.addr)
    }

    /// Checks every value bb8 would panic on, and a few it would accept but that cannot work.
    pub(crate) fn validate(&self) -> Result<(), TcpPoolError> {
        match &self.endpoint {
            Endpoint::Tcp(addr) => validate_addr(addr)?,
            Endpoint::Unix(path) => Endpoint::validate_unix(&self.addr, path)?,
        }
        if self.name.as_deref() == Some("") {
            return Err(TcpPoolError::config(
                "name must not be empty (it labels the pool's logs and metrics); leave it unset to use the address",
            ));
        }
        if self.max_size == 0 {
            return Err(TcpPoolError::config(
                "max_size must be at least 1 (it is the most connections the pool may open)",
            ));
        }
        if self.min_idle > self.max_size {
            return Err(TcpPoolError::config(format!(
                "min_idle ({}) must not exceed max_size ({}): lower min_idle or raise max_size",
                self.min_idle, self.max_size
            )));
        }
        if self.checkout_timeout.is_zero() {
            return Err(TcpPoolError::config(
                "checkout_timeout must be greater than zero",
            ));
        }
        if self.connect_timeout.is_zero() {
            return Err(TcpPoolError::config(
                "connect_timeout must be greater than zero",
            ));
        }
        if self.idle_timeout == Some(Duration::ZERO) {
            return Err(TcpPoolError::config(
                "idle_timeout must be greater than zero; use idle_timeout(None) to keep idle connections forever",
            ));
        }
        if self.max_lifetime == Some(Duration::ZERO) {
            return Err(TcpPoolError::config(
                "max_lifetime must be greater than zero; use max_lifetime(None) to let connections live forever",
            ));
        }
        if let Some(idle) = self.keepalive {
            // TCP_KEEPIDLE is whole seconds, 1 to 32767 on Linux: anything else would make
            // every connect fail on setsockopt.
            if idle < Duration::from_secs(1) || idle > Duration::from_secs(32767) {
                return Err(TcpPoolError::config(format!(
                    "keepalive must be between 1 s and 32767 s (got {idle:?}); use keepalive(None) to turn it off"
                )));
            }
        }
        Ok(())
    }

    /// How often bb8's reaper looks for idle and expired connections: often enough that short
    /// timeouts are honoured (a quarter of the shortest one), at most bb8's default of 30 s.
    pub(crate) fn reaper_rate(&self) -> Duration {
        let shortest = [self.idle_timeout, self.max_lifetime]
            .into_iter()
            .flatten()
            .min();
        match shortest {
            Some(d) => (d / 4).clamp(Duration::from_millis(1), Duration::from_secs(30)),
            None => Duration::from_secs(30),
        }
    }
}

/// `host:port`, where host is a name, an IPv4 address or a bracketed IPv6 address. The name
/// is not resolved here: it is resolved again on every connect, so DNS changes are followed.
fn validate_addr(addr: &str) -> Result<(), TcpPoolError> {
    let bad = |why: &str| {
        TcpPoolError::config(format!(
            "address {addr:?} {why}: use \"host:port\", e.g. \"127.0.0.1:6379\" or \"[::1]:6379\""
        ))
    };
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| bad("has no port"))?;
    if host.is_empty() {
        return Err(bad("has no host"));
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(bad("has an IPv6 host without brackets, or no port"));
    }
    match port.parse::<u16>() {
        Ok(0) => Err(bad("has port 0, which cannot be connected to")),
        Ok(_) => Ok(()),
        Err(_) => Err(bad("has no valid port")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        for ok in [
            "127.0.0.1:6379",
            "localhost:1",
            "[::1]:80",
            "cache.internal:65535",
        ] {
            assert!(validate_addr(ok).is_ok(), "{ok}");
        }
        for bad in [
            "127.0.0.1",
            "localhost",
            ":80",
            "host:",
            "host:0",
            "host:99999",
            "::1:80",
            "h:x",
        ] {
            assert!(validate_addr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reaper_rate_follows_the_shortest_timeout() {
        let mut c = Config::new("a:1".into());
        c.idle_timeout = Some(Duration::from_millis(200));
        assert_eq!(c.reaper_rate(), Duration::from_millis(50));
        c.idle_timeout = None;
        c.max_lifetime = None;
        assert_eq!(c.reaper_rate(), Duration::from_secs(30));
    }
}
