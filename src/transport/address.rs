//! [`Address`]: where a pool connects, a TCP `host:port` or a Unix socket path
//! (`unix:/path`), parsed and validated in one place.

use std::path::PathBuf;

use crate::error::TcpPoolError;

/// The prefix that makes an address a Unix domain socket path.
const UNIX_PREFIX: &str = "unix:";

/// The backend address, parsed from the string given to `TcpPool::builder`.
#[derive(Debug, Clone)]
pub(crate) enum Address {
    /// `host:port`, resolved again on every connect.
    Tcp(String),
    /// `unix:/path/to.sock`: the path after the prefix.
    Unix(PathBuf),
}

impl Address {
    /// Parses and validates `addr`; the error says what to fix.
    pub(crate) fn parse(addr: &str) -> Result<Address, TcpPoolError> {
        match addr.strip_prefix(UNIX_PREFIX) {
            Some(path) => {
                let path = PathBuf::from(path);
                validate_unix(addr, &path)?;
                Ok(Address::Unix(path))
            }
            None => {
                validate_tcp(addr)?;
                Ok(Address::Tcp(addr.to_string()))
            }
        }
    }

    /// The host part of a TCP address (brackets of an IPv6 address removed): the default TLS
    /// server name. `None` for a Unix socket.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub(crate) fn host(&self) -> Option<&str> {
        match self {
            Address::Tcp(addr) => {
                let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
                Some(host.trim_start_matches('[').trim_end_matches(']'))
            }
            Address::Unix(_) => None,
        }
    }
}

/// `host:port`, where host is a name, an IPv4 address or a bracketed IPv6 address. The name
/// is not resolved here: it is resolved again on every connect, so DNS changes are followed.
fn validate_tcp(addr: &str) -> Result<(), TcpPoolError> {
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

/// A Unix socket path: not empty, and short enough for a socket address (about 100 bytes,
/// depending on the platform).
fn validate_unix(addr: &str, path: &std::path::Path) -> Result<(), TcpPoolError> {
    if path.as_os_str().is_empty() {
        return Err(TcpPoolError::config(format!(
            "address {addr:?} has no socket path: use \"unix:/path/to.sock\""
        )));
    }
    #[cfg(unix)]
    {
        if let Err(e) = std::os::unix::net::SocketAddr::from_pathname(path) {
            return Err(TcpPoolError::config(format!(
                "address {addr:?} is not a usable Unix socket path ({e}): use a shorter path without NUL bytes"
            )));
        }
        Ok(())
    }
    #[cfg(not(unix))]
    Err(TcpPoolError::config(format!(
        "address {addr:?}: Unix domain sockets are not supported on this platform"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_addresses() {
        for ok in [
            "127.0.0.1:6379",
            "localhost:1",
            "[::1]:80",
            "cache.internal:65535",
        ] {
            assert!(Address::parse(ok).is_ok(), "{ok}");
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
            assert!(Address::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hosts() {
        let host = |a: &str| {
            Address::parse(a)
                .ok()
                .and_then(|a| a.host().map(String::from))
        };
        assert_eq!(host("db.internal:5432").as_deref(), Some("db.internal"));
        assert_eq!(host("[::1]:6379").as_deref(), Some("::1"));
        assert_eq!(host("unix:/x"), None);
    }

    #[test]
    fn unix_paths() {
        assert!(Address::parse("unix:").is_err());
        assert!(Address::parse(&format!("unix:/{}", "x".repeat(200))).is_err());
        #[cfg(unix)]
        {
            assert!(
                matches!(Address::parse("unix:/run/app.sock"), Ok(Address::Unix(p)) if p == std::path::Path::new("/run/app.sock"))
            );
            assert!(Address::parse("unix:relative.sock").is_ok());
        }
    }
}
