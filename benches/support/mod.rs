//! What both benches share: the loopback line-echo backend, and the bb8 and deadpool
//! managers a user would write for plain TCP.
//!
//! The bb8 manager comes in two kinds ([`Checks`]): what a user typically writes by hand
//! (`is_valid` does no I/O, `has_broken` returns a flag the handler set when an exchange
//! failed), and the same with this crate's two non-blocking peeks (on checkout and on
//! return), so that a bench can split the layer's cost into the checks and the wrapper.

// Each bench uses a part of this module.
#![allow(dead_code)]

use std::io;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// One request line: 15 bytes and a newline.
pub const LINE: &[u8; 16] = b"0123456789abcde\n";

/// A loopback line-echo backend: every byte read is written back. Runs until the returned
/// guard is dropped, which closes the listener and every accepted connection.
pub struct EchoBackend {
    pub addr: std::net::SocketAddr,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl EchoBackend {
    /// Starts it on the current runtime.
    pub async fn start() -> io::Result<EchoBackend> {
        EchoBackend::start_slow(None).await
    }

    /// The same, answering each read `delay` late (a slow replica; a timer, not CPU).
    pub async fn start_slow(delay: Option<std::time::Duration>) -> io::Result<EchoBackend> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let accepted = Arc::new(AtomicU64::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            // Owned by this task: aborting it closes every connection.
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => {
                            counter.fetch_add(1, Relaxed);
                            conns.spawn(echo(stream, delay));
                        }
                        Err(_) => continue,
                    },
                    Some(_) = conns.join_next() => {}
                }
            }
        });
        Ok(EchoBackend {
            addr,
            accepted,
            task,
        })
    }

    /// The address as `"127.0.0.1:port"`.
    pub fn addr_string(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for EchoBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo(mut stream: TcpStream, delay: Option<std::time::Duration>) {
    let _ = stream.set_nodelay(true);
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if let Some(delay) = delay {
                    tokio::time::sleep(delay).await;
                }
                if stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// One exchange: write [`LINE`], read its echo.
pub async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(conn: &mut S) -> io::Result<()> {
    conn.write_all(LINE).await?;
    // Into a buffer larger than the reply, until the line is complete: what a buffered reader
    // or a codec does (a `read_exact` of exactly the reply's length is the other pattern).
    let mut buf = [0u8; 64];
    let mut got = 0;
    while got < LINE.len() {
        let n = conn.read(&mut buf[got..]).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "backend closed",
            ));
        }
        got += n;
    }
    if &buf[..got] != LINE {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "wrong echo"));
    }
    Ok(())
}

/// Connects as this crate's manager does (`TCP_NODELAY` on).
pub async fn connect(addr: &str) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The non-blocking peek this crate's manager does: `Ok` if nothing is waiting (a clean idle
/// connection), an error if the backend closed it or sent bytes nobody asked for.
pub fn peek_idle(stream: &TcpStream) -> io::Result<()> {
    let mut buf = [MaybeUninit::<u8>::uninit(); 1];
    match socket2::SockRef::from(stream).peek(&mut buf) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(e),
        Ok(_) => Err(io::Error::new(io::ErrorKind::InvalidData, "not idle")),
    }
}

/// A pooled TCP stream with the flag a hand-written handler sets when an exchange on it
/// failed, for [`Bb8Tcp::has_broken`] to read when the connection comes back.
pub struct FlaggedStream {
    pub stream: TcpStream,
    pub broken: bool,
}

impl FlaggedStream {
    /// One [`exchange`]; an error marks the connection broken, as a user's handler would.
    pub async fn exchange(&mut self) -> io::Result<()> {
        let result = exchange(&mut self.stream).await;
        if result.is_err() {
            self.broken = true;
        }
        result
    }
}

/// Which health checks a [`Bb8Tcp`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checks {
    /// The hand-written baseline: `is_valid` does no I/O, `has_broken` reads the flag.
    NoIo,
    /// This crate's checks: a non-blocking peek in `is_valid` (checkout) and in `has_broken`
    /// (return), besides the flag.
    Peek,
}

/// A bb8 manager for plain TCP, as a user of bb8 alone would write it.
pub struct Bb8Tcp {
    pub addr: String,
    pub checks: Checks,
}

impl bb8::ManageConnection for Bb8Tcp {
    type Connection = FlaggedStream;
    type Error = io::Error;

    async fn connect(&self) -> io::Result<FlaggedStream> {
        Ok(FlaggedStream {
            stream: connect(&self.addr).await?,
            broken: false,
        })
    }

    async fn is_valid(&self, conn: &mut FlaggedStream) -> io::Result<()> {
        match self.checks {
            Checks::NoIo => Ok(()),
            Checks::Peek => peek_idle(&conn.stream),
        }
    }

    fn has_broken(&self, conn: &mut FlaggedStream) -> bool {
        conn.broken || (self.checks == Checks::Peek && peek_idle(&conn.stream).is_err())
    }
}

/// A deadpool manager for plain TCP, as a user of deadpool would write it. Deadpool has no
/// hook when an object comes back, so the peek runs once, on checkout (`recycle`).
pub struct DeadpoolTcp {
    pub addr: String,
}

impl deadpool::managed::Manager for DeadpoolTcp {
    type Type = TcpStream;
    type Error = io::Error;

    async fn create(&self) -> io::Result<TcpStream> {
        connect(&self.addr).await
    }

    async fn recycle(
        &self,
        conn: &mut TcpStream,
        _: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<io::Error> {
        peek_idle(conn).map_err(deadpool::managed::RecycleError::Backend)
    }
}

/// A bb8 pool of [`Bb8Tcp`] with `checks`, `max_size` and `min_idle` (bb8's defaults
/// otherwise).
pub async fn bb8_pool(
    addr: &str,
    checks: Checks,
    max_size: u32,
    min_idle: Option<u32>,
) -> io::Result<bb8::Pool<Bb8Tcp>> {
    bb8::Pool::builder()
        .max_size(max_size)
        .min_idle(min_idle)
        .build(Bb8Tcp {
            addr: addr.into(),
            checks,
        })
        .await
}

/// A deadpool pool of [`DeadpoolTcp`].
pub fn deadpool_pool(addr: &str, max_size: usize) -> deadpool::managed::Pool<DeadpoolTcp> {
    match deadpool::managed::Pool::builder(DeadpoolTcp { addr: addr.into() })
        .max_size(max_size)
        .build()
    {
        Ok(pool) => pool,
        // Only a timeout without a runtime fails to build; none is set.
        Err(e) => panic!("deadpool pool: {e}"),
    }
}
