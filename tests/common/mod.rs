//! Test instruments: a scriptable line-protocol backend that counts what it sees (over TCP,
//! TLS, or a Unix socket in a temporary directory), an axum server on a free loopback port,
//! and a real HTTP client.
#![allow(dead_code)]

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadHalf};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch, Notify};
use tokio::task::JoinHandle;

pub mod echo;
pub mod proxy;

pub use echo::read_line;

/// Upper bound for any single wait in a test: a generous safety net, not a timing assertion.
pub const BOUND: Duration = Duration::from_secs(20);

/// Runs `fut`, failing the test if it does not finish within [`BOUND`].
pub async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(BOUND, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {BOUND:?} waiting for: {what}"),
    }
}

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

struct Inner {
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
}

/// A line-protocol backend on 127.0.0.1. Commands, one per line:
///
/// - `ECHO <text>`: replies `<text>`;
/// - `HOLD <text>`: replies `<text>` once the test calls [`Backend::release`];
/// - `TWICE <text>`: replies `<text>` twice (the second copy is left unread by a normal client);
/// - `CLOSE`: closes the connection without replying;
/// - `PARTIAL <head> <tail>`: replies `<head>` at once and `<tail>` once released;
/// - `PING`: replies `PONG`.
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
trait Conn: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<S: AsyncRead + AsyncWrite + Send + Unpin + 'static> Conn for S {}

/// A unique, fresh directory under the system temporary directory, removed (with what is in
/// it) when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "atp-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, SeqCst)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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

async fn serve_conn<S: Conn>(stream: S, inner: &Inner, mut kill: watch::Receiver<u64>) {
    let (r, mut w) = tokio::io::split(stream);
    let mut lines = BufReader::new(r).lines();
    loop {
        let line = tokio::select! {
            line = lines.next_line() => line,
            _ = kill.changed() => return,
        };
        let Ok(Some(line)) = line else { return };
        inner.lines.fetch_add(1, SeqCst);
        inner.bump();
        let (cmd, arg) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        let reply = match cmd {
            "ECHO" => format!("{arg}\n"),
            "PING" => "PONG\n".to_string(),
            "TWICE" => format!("{arg}\n{arg}\n"),
            "CLOSE" => return,
            "PARTIAL" => {
                // The head now, the tail once released: a reply that arrives in two parts.
                let (head, tail) = arg.split_once(' ').unwrap_or((arg, ""));
                if w.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                if !hold(inner, &mut kill, &mut lines).await {
                    return;
                }
                format!("{tail}\n")
            }
            "HOLD" => {
                if !hold(inner, &mut kill, &mut lines).await {
                    return;
                }
                format!("{arg}\n")
            }
            _ => "ERR unknown command\n".to_string(),
        };
        if w.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
        inner.replies.fetch_add(1, SeqCst);
        inner.bump();
    }
}

/// Waits for [`Backend::release`]: `false` if the connection is to close instead (killed,
/// or the client closed or, unexpectedly, pipelined a command meanwhile).
async fn hold<S: Conn>(
    inner: &Inner,
    kill: &mut watch::Receiver<u64>,
    lines: &mut tokio::io::Lines<BufReader<ReadHalf<S>>>,
) -> bool {
    let released = inner.release.notified();
    inner.holding.fetch_add(1, SeqCst);
    inner.bump();
    let go_on = tokio::select! {
        _ = released => true,
        _ = kill.changed() => false,
        _ = lines.next_line() => false,
    };
    inner.holding.fetch_sub(1, SeqCst);
    inner.bump();
    go_on
}

/// Serves `app` on a free loopback port.
pub async fn serve(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
    let addr = listener.local_addr().expect("app addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// Serves `app` on a free loopback port until the returned sender is used (or dropped), then
/// shuts down gracefully: the returned task ends once the requests in flight have finished.
pub async fn serve_until_stopped(
    app: Router,
) -> (
    SocketAddr,
    oneshot::Sender<()>,
    JoinHandle<std::io::Result<()>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
    let addr = listener.local_addr().expect("app addr");
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stop_rx.await;
            })
            .into_future(),
    );
    (addr, stop_tx, server)
}

/// A real HTTP/1 client.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
}

/// A response, read to its end.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl HttpClient {
    pub fn new(addr: SocketAddr) -> HttpClient {
        HttpClient {
            client: Client::builder(TokioExecutor::new()).build_http(),
            base: format!("http://{addr}"),
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        bounded(&format!("GET {path}"), self.try_get(path))
            .await
            .unwrap_or_else(|e| panic!("GET {path} failed: {e}"))
    }

    /// Starts `GET path` on its own task (to hold it, or to drop it mid-request).
    pub fn spawn_get(&self, path: &str) -> JoinHandle<Reply> {
        let (client, path) = (self.clone(), path.to_string());
        tokio::spawn(async move { client.get(&path).await })
    }

    /// Like [`spawn_get`](Self::spawn_get), for requests that may fail at the HTTP level.
    pub fn spawn_try_get(&self, path: &str) -> JoinHandle<Result<Reply, String>> {
        let (client, path) = (self.clone(), path.to_string());
        tokio::spawn(async move { client.try_get(&path).await })
    }

    pub async fn try_get(&self, path: &str) -> Result<Reply, String> {
        let (parts, body) = self
            .try_request(Method::GET, path, Bytes::new())
            .await?
            .into_parts();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    /// Sends `method path` with `body` and reads the response to its end; the body as bytes.
    pub async fn try_request(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<http::Response<Bytes>, String> {
        let req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let res = self.client.request(req).await.map_err(|e| e.to_string())?;
        let (parts, body) = res.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(http::Response::from_parts(parts, body))
    }
}

/// Asserts that an error body leaks nothing internal.
pub fn assert_no_leak(body: &str, backend: &Backend) {
    let lower = body.to_lowercase();
    let addr = match backend.socket_path() {
        Some(path) => [path.display().to_string(), "unix:".into()],
        None => [backend.addr.to_string(), backend.addr.port().to_string()],
    };
    for needle in addr.into_iter().chain([
        "127.0.0.1".to_string(),
        "refused".into(),
        "os error".into(),
        "os {".into(),
        "kind:".into(),
        "io error".into(),
        "certificate".into(),
        "tls".into(),
        "handshake".into(),
    ]) {
        assert!(
            !lower.contains(&needle.to_lowercase()),
            "error body leaks {needle:?}: {body:?}"
        );
    }
}

pub mod app {
    //! The handlers the tests drive, one per behaviour.
    use super::read_line;
    use axum::extract::Path;
    use axum::routing::get;
    use axum::Router;
    use axum_tcp_pool::{TcpConnection, TcpPool, TcpPoolError, TcpPoolLayer};
    use http::StatusCode;
    use tokio::io::AsyncWriteExt;

    async fn exchange(conn: &mut TcpConnection, cmd: &str) -> Result<String, TcpPoolError> {
        conn.write_all(format!("{cmd}\n").as_bytes()).await?;
        Ok(read_line(conn).await?)
    }

    async fn echo(
        Path(text): Path<String>,
        mut conn: TcpConnection,
    ) -> Result<String, TcpPoolError> {
        exchange(&mut conn, &format!("ECHO {text}")).await
    }

    async fn hold(
        Path(text): Path<String>,
        mut conn: TcpConnection,
    ) -> Result<String, TcpPoolError> {
        exchange(&mut conn, &format!("HOLD {text}")).await
    }

    /// Reads one of two reply lines: leaves bytes unread.
    async fn twice(
        Path(text): Path<String>,
        mut conn: TcpConnection,
    ) -> Result<String, TcpPoolError> {
        exchange(&mut conn, &format!("TWICE {text}")).await
    }

    /// Sends a request and never reads the reply.
    async fn noread(
        Path(text): Path<String>,
        mut conn: TcpConnection,
    ) -> Result<String, TcpPoolError> {
        conn.write_all(format!("ECHO {text}\n").as_bytes()).await?;
        Ok("sent".into())
    }

    /// A clean exchange, then a panic.
    async fn panics(mut conn: TcpConnection) -> Result<String, TcpPoolError> {
        exchange(&mut conn, "ECHO before-panic").await?;
        panic!("handler panic (expected by the test)");
    }

    async fn discard(mut conn: TcpConnection) -> Result<String, TcpPoolError> {
        let reply = exchange(&mut conn, "ECHO x").await?;
        conn.discard();
        Ok(reply)
    }

    /// The backend closes the connection: the read sees EOF.
    async fn close(mut conn: TcpConnection) -> Result<String, TcpPoolError> {
        exchange(&mut conn, "CLOSE").await
    }

    /// A handler-level timeout fires while the read is in flight.
    async fn timeout(mut conn: TcpConnection) -> Result<String, (StatusCode, &'static str)> {
        conn.write_all(b"HOLD late\n")
            .await
            .map_err(|_| (StatusCode::BAD_GATEWAY, "write failed"))?;
        match tokio::time::timeout(std::time::Duration::from_millis(50), read_line(&mut conn)).await
        {
            Ok(Ok(line)) => Ok(line),
            Ok(Err(_)) => Err((StatusCode::BAD_GATEWAY, "read failed")),
            Err(_) => Err((StatusCode::GATEWAY_TIMEOUT, "backend too slow")),
        }
    }

    /// Reads the first part of a reply, then waits on something that is not the socket (a
    /// database call, say) until the request is cancelled.
    async fn partial(mut conn: TcpConnection) -> Result<String, TcpPoolError> {
        use tokio::io::AsyncReadExt;
        conn.write_all(b"PARTIAL head tail\n").await?;
        let mut head = [0u8; 4];
        conn.read_exact(&mut head).await?;
        std::future::pending::<()>().await;
        Ok("unreachable".into())
    }

    async fn nodelay(conn: TcpConnection) -> Result<String, TcpPoolError> {
        match conn.get_ref().tcp() {
            Some(tcp) => Ok(tcp.nodelay()?.to_string()),
            None => Ok("not tcp".into()),
        }
    }

    async fn none() -> &'static str {
        "no connection needed"
    }

    async fn option(conn: Option<TcpConnection>) -> &'static str {
        if conn.is_some() {
            "some"
        } else {
            "none"
        }
    }

    async fn result(conn: Result<TcpConnection, TcpPoolError>) -> String {
        match conn {
            Ok(_) => "ok".into(),
            Err(e) => format!("err {}", e.status().as_u16()),
        }
    }

    async fn two(_a: TcpConnection, _b: TcpConnection) -> &'static str {
        "unreachable: the second extraction is rejected"
    }

    /// Every test route, without the layer.
    pub fn routes() -> Router {
        Router::new()
            .route("/echo/{text}", get(echo))
            .route("/hold/{text}", get(hold))
            .route("/twice/{text}", get(twice))
            .route("/noread/{text}", get(noread))
            .route("/panic", get(panics))
            .route("/discard", get(discard))
            .route("/close", get(close))
            .route("/timeout", get(timeout))
            .route("/nodelay", get(nodelay))
            .route("/partial", get(partial))
            .route("/none", get(none))
            .route("/option", get(option))
            .route("/result", get(result))
            .route("/two", get(two))
    }

    /// Every test route behind an eager layer.
    pub fn eager(pool: &TcpPool) -> Router {
        routes().layer(TcpPoolLayer::new(pool.clone()))
    }

    /// Every test route behind a lazy layer.
    pub fn lazy(pool: &TcpPool) -> Router {
        routes().layer(TcpPoolLayer::new(pool.clone()).lazy())
    }
}

/// A backend, a pool over it (configured by `f`), and an app served with `router`.
pub async fn setup(
    f: impl FnOnce(axum_tcp_pool::TcpPoolBuilder) -> axum_tcp_pool::TcpPoolBuilder,
    router: fn(&axum_tcp_pool::TcpPool) -> Router,
) -> (Backend, axum_tcp_pool::TcpPool, HttpClient) {
    let backend = Backend::start().await;
    let pool = f(axum_tcp_pool::TcpPool::builder(backend.addr_string()))
        .build()
        .expect("valid pool config");
    let addr = serve(router(&pool)).await;
    (backend, pool, HttpClient::new(addr))
}

/// Waits until the pool's state satisfies `cond`. The pool has no change events; its
/// bookkeeping trails the socket close the backend sees by a few instructions.
pub async fn wait_pool<M>(
    pool: &axum_tcp_pool::TcpPool<M>,
    what: &str,
    cond: impl Fn(&axum_tcp_pool::PoolState) -> bool,
) -> axum_tcp_pool::PoolState {
    bounded(what, async {
        loop {
            let s = pool.state();
            if cond(&s) {
                return s;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
}
