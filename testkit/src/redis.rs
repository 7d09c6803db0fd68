//! A real `redis-server` started on a free loopback port and killed when dropped, with an
//! admin client that talks RESP to it. Without the binary a test skips itself (or, with `CI`
//! set, fails): see [`require_binary`].

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use redis_protocol::codec::Resp2;
use redis_protocol::resp2::types::BytesFrame;
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_util::codec::Framed;

use crate::require::require_binary;
use crate::wait::{bounded, BOUND};

/// How many free ports to try when `redis-server` fails to start (another process took the
/// port between our probe and its bind).
const START_ATTEMPTS: usize = 5;
/// The pause between two looks at the state of the `redis-server` process, which sends no
/// events we could wait on.
const POLL: Duration = Duration::from_millis(20);

/// A `redis-server` child process on `127.0.0.1:port`, without persistence (`save ""`,
/// `appendonly no`): a restart loses every key. Killed when dropped, so a failing test does
/// not leave a server running.
///
/// The binary is `redis-server` from `PATH`, or `REDIS_SERVER` if set.
pub struct RedisServer {
    bin: OsString,
    port: u16,
    child: Option<Child>,
    log: PathBuf,
}

impl RedisServer {
    /// Starts a server on a free loopback port and waits until it answers `PING`.
    ///
    /// `None` when there is no `redis-server` to run and `CI` is unset: the test reports
    /// itself skipped (one line) and should return. With `CI` set, a missing binary fails.
    pub async fn start() -> Option<RedisServer> {
        let bin = require_binary("redis-server", "REDIS_SERVER")?;
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            let mut server = RedisServer {
                bin: bin.clone(),
                port,
                child: None,
                log: std::env::temp_dir().join(format!(
                    "axum-tcp-pool-redis-{}-{port}.log",
                    std::process::id()
                )),
            };
            match server.spawn().await {
                Ok(()) => return Some(server),
                Err(why) => failures.push(why),
            }
        }
        panic!("redis-server did not start in {START_ATTEMPTS} attempts: {failures:#?}");
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Starts `redis-server` on `self.port` and waits until it answers `PING`.
    async fn spawn(&mut self) -> Result<(), String> {
        let bin = &self.bin;
        let mut child = Command::new(bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(std::env::temp_dir())
            .arg("--logfile")
            .arg(&self.log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot run {bin:?} ({e}): install it (Debian: `apt-get install redis-server`) \
                     or set REDIS_SERVER to its path"
                )
            })?;
        // Bounded poll: the server's readiness is the state of another process, with no event
        // to wait on. It normally answers within a few milliseconds.
        let deadline = tokio::time::Instant::now() + BOUND;
        while tokio::time::Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                return Err(format!(
                    "redis-server on port {} exited ({status}); its log:\n{log}",
                    self.port
                ));
            }
            if matches!(self.try_cmd(&[b"PING"]).await, Ok(BytesFrame::SimpleString(ref s)) if s == "PONG")
            {
                self.child = Some(child);
                return Ok(());
            }
            tokio::time::sleep(POLL).await;
        }
        let _ = child.start_kill();
        Err(format!(
            "redis-server on port {} did not answer PING within {BOUND:?}",
            self.port
        ))
    }

    /// Stops the server the way an operator restarting it would (`SHUTDOWN NOSAVE`), and waits
    /// for the process to exit. Its clients see their connections closed.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // On success Redis closes the connection without a reply.
        let _ = self.try_cmd(&[b"SHUTDOWN", b"NOSAVE"]).await;
        if tokio::time::timeout(BOUND, child.wait()).await.is_err() {
            let _ = child.start_kill();
            panic!("redis-server did not exit within {BOUND:?} of SHUTDOWN");
        }
    }

    /// Starts the server again on the same port (after [`stop`](Self::stop)), empty.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "restart() needs a stopped server");
        if let Err(why) = self.spawn().await {
            panic!("redis-server did not restart on port {}: {why}", self.port);
        }
    }

    /// Sends one command on a new connection (so it is never idle, never pooled, and skipped
    /// by `CLIENT KILL`'s default `SKIPME yes`) and returns the reply.
    pub async fn try_cmd(&self, args: &[&[u8]]) -> Result<BytesFrame, String> {
        let exchange = async {
            let stream = TcpStream::connect(("127.0.0.1", self.port))
                .await
                .map_err(|e| e.to_string())?;
            let mut framed = Framed::new(stream, Resp2::default());
            let request = BytesFrame::Array(
                args.iter()
                    .map(|a| BytesFrame::BulkString(Bytes::copy_from_slice(a)))
                    .collect(),
            );
            framed.send(request).await.map_err(|e| e.to_string())?;
            match framed.next().await {
                Some(Ok(reply)) => Ok(reply),
                Some(Err(e)) => Err(e.to_string()),
                None => Err("connection closed without a reply".to_owned()),
            }
        };
        match tokio::time::timeout(BOUND, exchange).await {
            Ok(result) => result,
            Err(_) => Err(format!("no reply within {BOUND:?}")),
        }
    }

    /// Like [`try_cmd`](Self::try_cmd), failing the test on any error.
    pub async fn cmd(&self, args: &[&[u8]]) -> BytesFrame {
        let name = String::from_utf8_lossy(args.first().copied().unwrap_or_default()).into_owned();
        self.try_cmd(args)
            .await
            .unwrap_or_else(|e| panic!("redis {name}: {e}"))
    }

    /// Client connections Redis has open, not counting the one that asks.
    pub async fn clients(&self) -> usize {
        match self.cmd(&[b"CLIENT", b"LIST", b"TYPE", b"normal"]).await {
            BytesFrame::BulkString(list) => {
                let lines = list.split(|&b| b == b'\n').filter(|l| !l.is_empty());
                lines.count().saturating_sub(1)
            }
            other => panic!("unexpected CLIENT LIST reply: {other:?}"),
        }
    }

    /// Waits until Redis has `n` client connections open, besides the one that asks.
    pub async fn wait_clients(&self, what: &str, n: usize) {
        // Bounded poll: Redis sends no event when it opens or drops a client.
        bounded(what, async {
            loop {
                if self.clients().await == n {
                    return;
                }
                tokio::time::sleep(POLL).await;
            }
        })
        .await
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.start_kill(); // SIGKILL; tokio reaps it
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A port nothing listens on right now (the OS picks it; the listener is closed at once).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a free loopback port")
}
