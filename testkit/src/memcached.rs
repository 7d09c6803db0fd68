//! A real `memcached` started on a free loopback port and killed when dropped, with an
//! admin client for its text protocol. Without the binary a test skips itself (or, with `CI`
//! set, fails): see [`require_binary`].

use std::ffi::OsString;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::require::require_binary;
use crate::wait::BOUND;

/// How many free ports to try when `memcached` fails to start (another process took the
/// port between our probe and its bind).
const START_ATTEMPTS: usize = 5;
/// The pause between two looks at the state of the `memcached` process, which sends no
/// events we could wait on.
const POLL: Duration = Duration::from_millis(20);

/// A `memcached` child process on `127.0.0.1:port` (TCP only, 64 MiB of memory, the
/// default 1 MiB item size limit). Killed when dropped, so a failing test does not leave a
/// server running; a restart loses every item.
///
/// The binary is `memcached` from `PATH`, or `MEMCACHED` if set.
pub struct MemcachedServer {
    bin: OsString,
    port: u16,
    child: Option<Child>,
}

impl MemcachedServer {
    /// Starts a server on a free loopback port and waits until it answers `version`.
    ///
    /// `None` when there is no `memcached` to run and `CI` is unset: the test reports itself
    /// skipped (one line) and should return. With `CI` set, a missing binary fails.
    pub async fn start() -> Option<MemcachedServer> {
        let bin = require_binary("memcached", "MEMCACHED")?;
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let mut server = MemcachedServer {
                bin: bin.clone(),
                port: free_port(),
                child: None,
            };
            match server.spawn().await {
                Ok(()) => return Some(server),
                Err(why) => failures.push(why),
            }
        }
        panic!("memcached did not start in {START_ATTEMPTS} attempts: {failures:#?}");
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts `memcached` on `self.port` and waits until it answers `version`.
    async fn spawn(&mut self) -> Result<(), String> {
        let bin = &self.bin;
        let mut child = Command::new(bin)
            .args(["-l", "127.0.0.1", "-p", &self.port.to_string()])
            // No UDP; 64 MiB; and `-u root`, which memcached needs to start at all when run
            // as root (it refuses to otherwise) and ignores when not.
            .args(["-U", "0", "-m", "64", "-u", "root"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot run {bin:?} ({e}): install it (Debian: `apt-get install memcached`) \
                     or set MEMCACHED to its path"
                )
            })?;
        // Bounded poll: the server's readiness is the state of another process, with no event
        // to wait on. It normally answers within a few milliseconds.
        let deadline = tokio::time::Instant::now() + BOUND;
        while tokio::time::Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                let mut stderr = String::new();
                if let Some(mut err) = child.stderr.take() {
                    let _ = err.read_to_string(&mut stderr).await;
                }
                return Err(format!(
                    "memcached on port {} exited ({status}): {stderr}",
                    self.port
                ));
            }
            if matches!(self.try_cmd(b"version\r\n").await, Ok(ref r) if r.starts_with(b"VERSION "))
            {
                self.child = Some(child);
                return Ok(());
            }
            tokio::time::sleep(POLL).await;
        }
        let _ = child.start_kill();
        Err(format!(
            "memcached on port {} did not answer version within {BOUND:?}",
            self.port
        ))
    }

    /// Stops the server (SIGKILL, as memcached has no shutdown command by default) and waits
    /// for the process to exit. Its clients see their connections closed.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = child.start_kill();
        if tokio::time::timeout(BOUND, child.wait()).await.is_err() {
            panic!("memcached did not exit within {BOUND:?} of SIGKILL");
        }
    }

    /// Starts the server again on the same port (after [`stop`](Self::stop)), empty.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "restart() needs a stopped server");
        if let Err(why) = self.spawn().await {
            panic!("memcached did not restart on port {}: {why}", self.port);
        }
    }

    /// Sends `request` (whole lines, CRLF included) on a new connection and returns what
    /// memcached answers, up to and including a line that ends a reply (`END`, `OK`,
    /// `STORED`, ... or an error).
    pub async fn try_cmd(&self, request: &[u8]) -> Result<Vec<u8>, String> {
        let exchange = async {
            let mut stream = TcpStream::connect(("127.0.0.1", self.port))
                .await
                .map_err(|e| e.to_string())?;
            stream.write_all(request).await.map_err(|e| e.to_string())?;
            let mut reply = Vec::new();
            let mut chunk = [0u8; 4096];
            while !ends_a_reply(&reply) {
                match stream.read(&mut chunk).await.map_err(|e| e.to_string())? {
                    0 => return Err("connection closed before the reply ended".to_owned()),
                    n => reply.extend_from_slice(&chunk[..n]),
                }
            }
            Ok(reply)
        };
        match tokio::time::timeout(BOUND, exchange).await {
            Ok(result) => result,
            Err(_) => Err(format!("no reply within {BOUND:?}")),
        }
    }

    /// Like [`try_cmd`](Self::try_cmd), failing the test on any error.
    pub async fn cmd(&self, request: &[u8]) -> Vec<u8> {
        self.try_cmd(request)
            .await
            .unwrap_or_else(|e| panic!("memcached {:?}: {e}", String::from_utf8_lossy(request)))
    }

    /// One general-purpose statistic (`stats`), e.g. `curr_connections`.
    pub async fn stat(&self, name: &str) -> u64 {
        let reply = self.cmd(b"stats\r\n").await;
        let prefix = format!("STAT {name} ");
        String::from_utf8_lossy(&reply)
            .lines()
            .find_map(|l| l.strip_prefix(&prefix).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no stat {name} in {reply:?}"))
    }
}

/// Whether `reply` ends with a line that ends a memcached reply.
fn ends_a_reply(reply: &[u8]) -> bool {
    let Some(body) = reply.strip_suffix(b"\r\n") else {
        return false;
    };
    let last = body.rsplit(|&b| b == b'\n').next().unwrap_or_default();
    [
        &b"END"[..],
        b"OK",
        b"STORED",
        b"NOT_STORED",
        b"EXISTS",
        b"NOT_FOUND",
        b"DELETED",
        b"ERROR",
    ]
    .contains(&last)
        || [&b"VERSION "[..], b"CLIENT_ERROR ", b"SERVER_ERROR "]
            .iter()
            .any(|p| last.starts_with(p))
}

impl Drop for MemcachedServer {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.start_kill(); // SIGKILL; tokio reaps it
        }
    }
}

/// A port nothing listens on right now (the OS picks it; the listener is closed at once).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a free loopback port")
}
