//! [`Config`]: one pool's settings, and their validation. Everything is checked here, before
//! bb8's builder (which asserts, i.e. panics, on some invalid values) sees it.

use std::fmt;
use std::time::Duration;

use crate::error::TcpPoolError;
use crate::pool::probe::Probe;
use crate::replicas::{Balance, OutlierDetection};
use crate::transport::{Address, Connector};

/// The settings of one pool, as given to the builder (shared by all its endpoints);
/// [`Config::connector`] makes the [`Connector`] of one endpoint.
#[derive(Clone)]
pub(crate) struct Config {
    /// The first address, as given.
    pub(crate) addr: String,
    /// The other endpoints, as given.
    pub(crate) endpoints: Vec<String>,
    pub(crate) balance: Balance,
    pub(crate) outlier: OutlierDetection,
    /// Resolve each address's host name at this interval, its addresses being the endpoints.
    pub(crate) resolve_every: Option<Duration>,
    /// The `pool` label of logs and metrics; the address if not set.
    pub(crate) name: Option<String>,
    pub(crate) max_size: u32,
    pub(crate) min_idle: u32,
    pub(crate) checkout_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) max_lifetime: Option<Duration>,
    pub(crate) nodelay: bool,
    pub(crate) keepalive: Option<Duration>,
    pub(crate) probe: Option<Probe>,
    /// Writes need no reply (`TcpPoolBuilder::write_only`).
    pub(crate) write_only: bool,
    /// Report a connection held longer than this (`TcpPoolBuilder::leak_threshold`).
    pub(crate) leak_threshold: Option<Duration>,
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<crate::transport::TlsConfig>,
    /// The largest fraction of `max_lifetime` taken off one connection's lifetime.
    pub(crate) max_lifetime_jitter: f64,
    /// Idle connections are checked in the background at this interval.
    pub(crate) idle_probe_interval: Option<Duration>,
    /// `(min, max)` delay after a failed connect; `(ZERO, ZERO)`: off.
    pub(crate) reconnect_backoff: (Duration, Duration),
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Config");
        d.field("addr", &self.addr)
            .field("endpoints", &self.endpoints)
            .field("balance", &self.balance)
            .field("outlier", &self.outlier)
            .field("resolve_every", &self.resolve_every)
            .field("name", &self.name)
            .field("max_size", &self.max_size)
            .field("min_idle", &self.min_idle)
            .field("checkout_timeout", &self.checkout_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_lifetime", &self.max_lifetime)
            .field("nodelay", &self.nodelay)
            .field("keepalive", &self.keepalive)
            .field("probe", &self.probe.as_ref().map(|_| "<fn>"))
            .field("write_only", &self.write_only)
            .field("leak_threshold", &self.leak_threshold);
        #[cfg(feature = "tls")]
        d.field("tls", &self.tls);
        d.field("max_lifetime_jitter", &self.max_lifetime_jitter)
            .field("idle_probe_interval", &self.idle_probe_interval);
        d.field("reconnect_backoff", &self.reconnect_backoff);
        d.finish()
    }
}

impl Config {
    pub(crate) fn new(addr: String) -> Self {
        Config {
            addr,
            endpoints: Vec::new(),
            balance: Balance::default(),
            outlier: OutlierDetection::new(),
            resolve_every: None,
            name: None,
            max_size: 10,
            min_idle: 0,
            checkout_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            idle_timeout: Some(Duration::from_secs(600)),
            max_lifetime: Some(Duration::from_secs(1800)),
            nodelay: true,
            keepalive: None,
            probe: None,
            write_only: false,
            leak_threshold: None,
            #[cfg(feature = "tls")]
            tls: None,
            max_lifetime_jitter: 0.025,
            idle_probe_interval: None,
            reconnect_backoff: (Duration::from_millis(50), Duration::from_secs(5)),
        }
    }

    /// The pool's name for logs and metrics: as configured, or else the address.
    pub(crate) fn name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.addr)
    }

    /// The address as configured.
    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    /// The most connections the pool opens at once.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn max_size(&self) -> u32 {
        self.max_size
    }

    /// Whether each endpoint runs a lifecycle task (`min_idle`, `max_lifetime`,
    /// `idle_timeout` or idle probing set): its sweeps then gate the checkouts.
    pub(crate) fn has_lifecycle(&self) -> bool {
        self.min_idle > 0
            || self.max_lifetime.is_some()
            || self.idle_timeout.is_some()
            || self.idle_probe_interval.is_some()
    }

    /// Every address configured: the first, then the other endpoints.
    pub(crate) fn addrs(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.addr.as_str()).chain(self.endpoints.iter().map(String::as_str))
    }

    /// Checks every value bb8 would panic on, and a few it would accept but that cannot work,
    /// every address included (with the transport settings: a TLS server name for each).
    pub(crate) fn validate(&self) -> Result<(), TcpPoolError> {
        check_endpoints(self.addrs())?;
        for addr in self.addrs() {
            self.connector(addr, addr)?;
        }
        self.outlier.validate()?;
        if self.resolve_every == Some(Duration::ZERO) {
            return Err(TcpPoolError::config(
                "resolve_endpoints interval must be greater than zero",
            ));
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
        for (name, value) in [
            ("checkout_timeout", Some(self.checkout_timeout)),
            ("connect_timeout", Some(self.connect_timeout)),
            ("idle_timeout", self.idle_timeout),
            ("max_lifetime", self.max_lifetime),
            ("idle_probe_interval", self.idle_probe_interval),
            ("leak_threshold", self.leak_threshold),
        ] {
            if value == Some(Duration::ZERO) {
                let none = match name {
                    "idle_timeout" => "; use idle_timeout(None) to keep idle connections forever",
                    "max_lifetime" => "; use max_lifetime(None) to let connections live forever",
                    "idle_probe_interval" => {
                        "; use idle_probe_interval(None) to turn idle probing off"
                    }
                    "leak_threshold" => "; use leak_threshold(None) to turn leak detection off",
                    _ => "",
                };
                return Err(TcpPoolError::config(format!(
                    "{name} must be greater than zero{none}"
                )));
            }
        }
        if !(0.0..=MAX_LIFETIME_JITTER).contains(&self.max_lifetime_jitter) {
            return Err(TcpPoolError::config(format!(
                "max_lifetime_jitter must be between 0.0 and {MAX_LIFETIME_JITTER} (got {}): it is the largest fraction of max_lifetime taken off a connection's lifetime",
                self.max_lifetime_jitter
            )));
        }
        let (min, max) = self.reconnect_backoff;
        if min > max {
            return Err(TcpPoolError::config(format!(
                "reconnect_backoff min ({min:?}) must not exceed max ({max:?})"
            )));
        }
        if min.is_zero() && !max.is_zero() {
            return Err(TcpPoolError::config(
                "reconnect_backoff min must be greater than zero (a zero delay would never grow); use reconnect_backoff(Duration::ZERO, Duration::ZERO) to turn it off",
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

    /// The connector for the endpoint at `addr`; TLS takes its server name (unless one is
    /// configured) from `name_addr`, the address as given before any resolution.
    pub(crate) fn connector(&self, addr: &str, name_addr: &str) -> Result<Connector, TcpPoolError> {
        let address = Address::parse(addr)?;
        #[cfg(not(feature = "tls"))]
        let _ = name_addr;
        Ok(Connector {
            #[cfg(feature = "tls")]
            tls: match &self.tls {
                Some(tls) => Some(tls.handshake(&Address::parse(name_addr)?)?),
                None => None,
            },
            address,
            timeout: self.connect_timeout,
            nodelay: self.nodelay,
            keepalive: self.keepalive,
        })
    }
}

/// The largest `max_lifetime_jitter`: beyond half, a connection may live a small fraction of
/// the lifetime asked for.
pub(crate) const MAX_LIFETIME_JITTER: f64 = 0.5;

/// A set of endpoints: at least one, none twice.
pub(crate) fn check_endpoints<'a>(
    addrs: impl Iterator<Item = &'a str>,
) -> Result<(), TcpPoolError> {
    let mut seen: Vec<&str> = Vec::new();
    for addr in addrs {
        if seen.contains(&addr) {
            return Err(TcpPoolError::config(format!(
                "endpoint {addr:?} is listed twice: list each endpoint once"
            )));
        }
        seen.push(addr);
    }
    if seen.is_empty() {
        return Err(TcpPoolError::config("a pool needs at least one endpoint"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_lifetime_jitter_is_a_fraction_up_to_one_half() {
        let mut c = Config::new("127.0.0.1:1".into());
        for ok in [0.0, 0.025, 0.5] {
            c.max_lifetime_jitter = ok;
            assert!(c.validate().is_ok(), "{ok}");
        }
        for bad in [-0.1, 0.51, 1.0, f64::NAN, f64::INFINITY] {
            c.max_lifetime_jitter = bad;
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains("max_lifetime_jitter"), "{bad}: {err}");
        }
    }

    #[test]
    fn every_duration_may_be_the_largest() {
        let mut c = Config::new("127.0.0.1:1".into());
        c.checkout_timeout = Duration::MAX;
        c.connect_timeout = Duration::MAX;
        c.idle_timeout = Some(Duration::MAX);
        c.max_lifetime = Some(Duration::MAX);
        c.idle_probe_interval = Some(Duration::MAX);
        c.reconnect_backoff = (Duration::MAX, Duration::MAX);
        c.leak_threshold = Some(Duration::MAX);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn reconnect_backoff_is_validated() {
        let mut c = Config::new("127.0.0.1:1".into());
        let ms = Duration::from_millis;
        for (min, max, ok) in [
            (ms(50), ms(5000), true),
            (ms(5), ms(5), true),
            (Duration::ZERO, Duration::ZERO, true),
            (ms(6), ms(5), false),
            (Duration::ZERO, ms(5), false),
        ] {
            c.reconnect_backoff = (min, max);
            assert_eq!(c.validate().is_ok(), ok, "{min:?}, {max:?}");
        }
    }
}
