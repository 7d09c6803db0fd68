//! The scriptable line-protocol backend on 127.0.0.1 (over TCP, TLS, or a Unix socket in a
//! temporary directory) that counts what it sees: the tests' main instrument.

mod serve;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::tempdir::TempDir;
use crate::wait::bounded;
use serve::serve_conn;

/// What the backend has seen so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seen {
    /// Connections accepted.
    pub accepts: usize,
    /// Connections open right now.
    pub open: usize,
    /// Most connections open at once.
    pub max_open: usize,
    /// `HOLD` commands received and not yet answered.
    pub holding: usize,
    /// Lines received.
    pub lines: usize,
    /// Replies fully written (on loopback, they are then in the client's receive queue).
    pub replies: usize,
    /// TLS handshakes completed (session tickets, if any, written too).
    pub handshakes: usize,
    /// TLS handshakes that failed.
    pub handshake_failures: usize,
}

pub(crate) struct Inner {
    accepts: AtomicUsize,
    open: AtomicUsize,
    max_open: AtomicUsize,
    holding: AtomicUsize,
    lines: AtomicUsize,
    replies: AtomicUsize,
    handshakes: AtomicUsize,
    handshake_failures: AtomicUsize,
    changed: watch::Sender<()>,
    release: Notify,
    /// Bumped to close every open connection.
    kill: watch::Sender<u64>,
    /// Added before each reply, in microseconds (0: none); see [`Backend::set_delay`].
    delay_us: AtomicU64,
}

impl Inner {
    fn seen(&self) -> Seen {
        Seen {
            accepts: self.accepts.load(SeqCst),
            open: self.open.load(SeqCst),
            max_open: self.max_open.load(SeqCst),
            holding: self.holding.load(SeqCst),
            lines: self.lines.load(SeqCst),
            replies: self.replies.load(SeqCst),
            handshakes: self.handshakes.load(SeqCst),
            handshake_failures: self.handshake_failures.load(SeqCst),
        }
    }
    fn bump(&self) {
        self.changed.send_replace(());
    }
    /// The delay to add before the next reply, if any.
    pub(crate) fn delay(&self) -> Option<Duration> {
        match self.delay_us.load(SeqCst) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }
}

/// A line-protocol backend on 127.0.0.1. Commands, one per line:
///
/// - `ECHO <text>`: replies `<text>`;
/// - `HOLD <text>`: replies `<text>` once the test calls [`Backend::release`];
/// - `TWICE <text>`: replies `<text>` twice (the second copy is left unread by a normal client);
/// - `CLOSE`: closes the connection without replying;
/// - `QUIET <text>`: no reply at all (a write-only exchange);
/// - `PARTIAL <head> <tail>`: replies `<head>` at once and `<tail>` once released;
/// - `PING`: replies `PONG`.
///
/// [`set_delay`](Backend::set_delay) makes it slow (a delay before each reply), at run time.
pub struct Backend {
    /// The TCP address (for a Unix socket backend: `0.0.0.0:0`, unused; see `unix`).
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    accept_task: Mutex<Option<JoinHandle<()>>>,
    /// Set for a backend served over TLS.
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// Set for a backend on a Unix socket: its temporary directory (removed on drop).
    unix: Option<TempDir>,
}

/// What a backend listens on.
enum Listener {
    Tcp(TcpListener),
    #[cfg(unix)]
    Unix(tokio::net::UnixListener),
}

/// Any stream a backend serves.
pub(crate) trait Conn: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<S: AsyncRead + AsyncWrite + Send + Unpin + 'static> Conn for S {}

/// A loopback address nothing listens on (a port just bound and released): a backend that is
/// down from the start.
pub fn nothing_listens() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").to_string()
}

impl Backend {
    pub async fn start() -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        Backend::new(Listener::Tcp(listener), None, None)
    }

    /// The same backend, served over TLS with `config`.
    pub async fn start_tls(config: Arc<tokio_rustls::rustls::ServerConfig>) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        Backend::new(Listener::Tcp(listener), Some(config.into()), None)
    }

    /// The same backend, on a Unix socket in a fresh temporary directory.
    #[cfg(unix)]
    pub async fn start_unix() -> Backend {
        let dir = TempDir::new();
        let listener =
            tokio::net::UnixListener::bind(dir.path().join("backend.sock")).expect("bind socket");
        Backend::new(Listener::Unix(listener), None, Some(dir))
    }

    /// The socket path of a Unix socket backend.
    pub fn socket_path(&self) -> Option<PathBuf> {
        self.unix.as_ref().map(|d| d.path().join("backend.sock"))
    }

    fn new(
        listener: Listener,
        tls: Option<tokio_rustls::TlsAcceptor>,
        unix: Option<TempDir>,
    ) -> Backend {
        let addr = match &listener {
            Listener::Tcp(l) => l.local_addr().expect("backend addr"),
            #[cfg(unix)]
            Listener::Unix(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        };
        let inner = Arc::new(Inner {
            accepts: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            max_open: AtomicUsize::new(0),
            holding: AtomicUsize::new(0),
            lines: AtomicUsize::new(0),
            replies: AtomicUsize::new(0),
            handshakes: AtomicUsize::new(0),
            handshake_failures: AtomicUsize::new(0),
            changed: watch::channel(()).0,
            release: Notify::new(),
            kill: watch::channel(0).0,
            delay_us: AtomicU64::new(0),
        });
        let backend = Backend {
            addr,
            inner,
            accept_task: Mutex::new(None),
            tls,
            unix,
        };
        backend.spawn_accept(listener);
        backend
    }

    /// The address to give `TcpPool::builder`: `ip:port`, or `unix:/path` for a Unix socket.
    pub fn addr_string(&self) -> String {
        match self.socket_path() {
            Some(path) => format!("unix:{}", path.display()),
            None => self.addr.to_string(),
        }
    }

    fn spawn_accept(&self, listener: Listener) {
        let inner = self.inner.clone();
        let tls = self.tls.clone();
        let task = tokio::spawn(async move {
            loop {
                let stream: Box<dyn Conn> = match &listener {
                    Listener::Tcp(l) => match l.accept().await {
                        Ok((s, _)) => Box::new(s),
                        Err(_) => return,
                    },
                    #[cfg(unix)]
                    Listener::Unix(l) => match l.accept().await {
                        Ok((s, _)) => Box::new(s),
                        Err(_) => return,
                    },
                };
                // Subscribed before the connection is counted as open, so a kill sent by a test
                // that saw it open is not missed.
                let kill = inner.kill.subscribe();
                inner.accepts.fetch_add(1, SeqCst);
                let open = inner.open.fetch_add(1, SeqCst) + 1;
                inner.max_open.fetch_max(open, SeqCst);
                inner.bump();
                let inner = inner.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        None => serve_conn(stream, &inner, kill).await,
                        Some(tls) => match tls.accept(stream).await {
                            Ok(stream) => {
                                inner.handshakes.fetch_add(1, SeqCst);
                                inner.bump();
                                serve_conn(stream, &inner, kill).await
                            }
                            Err(_) => {
                                inner.handshake_failures.fetch_add(1, SeqCst);
                                inner.bump();
                            }
                        },
                    }
                    inner.open.fetch_sub(1, SeqCst);
                    inner.bump();
                });
            }
        });
        *self.accept_task.lock().expect("lock") = Some(task);
    }

    pub fn seen(&self) -> Seen {
        self.inner.seen()
    }

    /// Waits until `cond` holds for what the backend has seen.
    pub async fn wait_for(&self, what: &str, cond: impl Fn(&Seen) -> bool) -> Seen {
        let mut rx = self.inner.changed.subscribe();
        bounded(what, async {
            loop {
                let seen = self.seen();
                if cond(&seen) {
                    return seen;
                }
                if rx.changed().await.is_err() {
                    panic!("backend gone while waiting for: {what}");
                }
            }
        })
        .await
    }

    /// Makes the backend slow: from now on each reply is written `delay` after its command
    /// was read (after the release, for `HOLD`), on every connection, open or new.
    /// `Duration::ZERO` makes it fast again.
    pub fn set_delay(&self, delay: Duration) {
        let us = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        self.inner.delay_us.store(us, SeqCst);
    }

    /// Answers every `HOLD` received so far (and any received before the next wait).
    pub fn release(&self) {
        self.inner.release.notify_waiters();
    }

    /// Closes every open connection from the server side.
    pub async fn close_all(&self) {
        self.inner.kill.send_modify(|g| *g += 1);
        self.wait_for("backend connections closed", |s| s.open == 0)
            .await;
    }

    /// Stops listening and closes every connection: the backend is down.
    pub async fn stop(&self) {
        self.stop_listening().await;
        self.close_all().await;
    }

    /// Stops accepting new connections; open ones keep being served.
    pub async fn stop_listening(&self) {
        let task = self.accept_task.lock().expect("lock").take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens again on the same port after [`stop`](Self::stop).
    pub async fn restart(&self) {
        #[cfg(unix)]
        if let Some(path) = self.socket_path() {
            let _ = std::fs::remove_file(&path);
            let listener = tokio::net::UnixListener::bind(path).expect("rebind socket");
            self.spawn_accept(Listener::Unix(listener));
            return;
        }
        let listener = TcpListener::bind(self.addr)
            .await
            .expect("rebind backend port");
        self.spawn_accept(Listener::Tcp(listener));
    }
}
