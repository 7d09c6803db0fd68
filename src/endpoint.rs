//! Where a pool connects: a TCP `host:port`, or a Unix domain socket path (`unix:/path`).

use std::path::PathBuf;

use crate::TcpPoolError;

/// The prefix that makes an address a Unix domain socket path.
const UNIX_PREFIX: &str = "unix:";

/// The backend address, parsed from the string given to
/// [`TcpPool::builder`](crate::TcpPool::builder). Validated by [`Endpoint::validate`].
#[derive(Debug, Clone)]
pub(crate) enum Endpoint {
    /// `host:port`, resolved again on every connect.
    Tcp(String),
    /// `unix:/path/to.sock`: the path after the prefix.
    Unix(PathBuf),
}

impl Endpoint {
    pub(crate) fn parse(addr: &str) -> Endpoint {
        match addr.strip_prefix(UNIX_PREFIX) {
            Some(path) => Endpoint::Unix(PathBuf::from(path)),
            None => Endpoint::Tcp(addr.to_string()),
        }
    }

    /// The host part of a TCP address (brackets of an IPv6 address removed): the default TLS
    /// server name. `None` for a Unix socket.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub(crate) fn host(&self) -> Option<&str> {
        match self {
            Endpoint::Tcp(addr) => {
                let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
                Some(host.trim_start_matches('[').trim_end_matches(']'))
            }
            Endpoint::Unix(_) => None,
        }
    }

    /// Checks a Unix socket path (TCP addresses are checked by the caller): not empty, and
    /// short enough for a socket address (about 100 bytes, depending on the platform).
    pub(crate) fn validate_unix(addr: &str, path: &std::path::Path) -> Result<(), TcpPoolError> {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_host() {
        assert!(
            matches!(Endpoint::parse("unix:/run/a.sock"), Endpoint::Unix(p) if p == std::path::Path::new("/run/a.sock"))
        );
        assert_eq!(
            Endpoint::parse("db.internal:5432").host(),
            Some("db.internal")
        );
        assert_eq!(Endpoint::parse("[::1]:6379").host(), Some("::1"));
        assert_eq!(Endpoint::parse("unix:/x").host(), None);
    }

    #[test]
    fn unix_paths() {
        let check = |addr: &str| match Endpoint::parse(addr) {
            Endpoint::Unix(p) => Endpoint::validate_unix(addr, &p),
            Endpoint::Tcp(_) => panic!("not a unix address: {addr}"),
        };
        assert!(check("unix:").is_err());
        let long = format!("unix:/{}", "x".repeat(200));
        assert!(check(&long).is_err());
        #[cfg(unix)]
        {
            assert!(check("unix:/run/app.sock").is_ok());
            assert!(check("unix:relative.sock").is_ok());
        }
    }
}
