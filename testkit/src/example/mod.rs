//! Plumbing the examples share: logging to stderr, the HTTP listener on `127.0.0.1:$PORT`,
//! serving until Ctrl-C with the `curl` lines to try, backends run in the same process
//! ([`spawn_kv_backend`], [`spawn_line_backend`]), and reading their one-line replies so the
//! connection stays clean ([`read_reply`], [`unexpected_reply`]). Each example's own story
//! (routes, handlers, pool settings) is in the example's file.

mod backends;
mod reply;

use std::io::{self, IsTerminal};
use std::net::{Ipv4Addr, SocketAddr};

use axum::Router;
use tokio::net::TcpListener;

pub use backends::{spawn_kv_backend, spawn_line_backend};
pub use reply::{read_reply, unexpected_reply};

/// Logs (`tracing`, level `INFO` and above) to stderr, in colour only when stderr is a
/// terminal, so that redirected output has no escape codes and stdout carries only what the
/// example prints.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        .init();
}

/// Serves `app` on `127.0.0.1:$PORT` ([`listen`]) until Ctrl-C, then lets the requests in
/// flight finish. First it prints where it listens and a `curl` command for each of `tries`:
/// the arguments of `curl`, with the URL written as its path (`"-X PUT /kv/a -d b"`).
pub async fn serve(app: Router, tries: &[&str]) -> io::Result<()> {
    let listener = listen().await.map_err(io::Error::other)?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr}");
    println!("try:");
    for args in tries {
        println!("  {}", curl_line(args, addr.port()));
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    println!("shut down");
    Ok(())
}

/// `curl` with `args`, the first word that starts with `/` made a URL on `localhost:port`.
fn curl_line(args: &str, port: u16) -> String {
    let mut done = false;
    let words: Vec<String> = args
        .split(' ')
        .map(|w| {
            if !done && w.starts_with('/') {
                done = true;
                format!("localhost:{port}{w}")
            } else {
                w.to_owned()
            }
        })
        .collect();
    format!("curl {}", words.join(" "))
}

/// The HTTP port when `PORT` is not set.
pub const DEFAULT_PORT: u16 = 3000;

/// Binds `127.0.0.1` on `PORT` (default 3000). The error says what to do when `PORT` is not
/// a port number or the port is taken.
pub async fn listen() -> Result<TcpListener, String> {
    let port: u16 = match std::env::var("PORT") {
        Ok(p) => p
            .parse()
            .map_err(|_| format!("PORT must be a port number, got {p:?}"))?,
        Err(_) => DEFAULT_PORT,
    };
    TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .await
        .map_err(|e| {
            format!("cannot listen on 127.0.0.1:{port} ({e}); set PORT to use another port")
        })
}

/// Resolves on Ctrl-C. If the signal handler cannot be installed, it never resolves (rather
/// than shutting the server down at once).
pub async fn shutdown_signal() {
    if let Err(err) = tokio::signal::ctrl_c().await {
        tracing::error!(error = %err, "cannot listen for Ctrl-C; stop the process another way");
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn curl_line_puts_the_url_on_the_path() {
        assert_eq!(
            super::curl_line("-X PUT /kv/a -d /b", 3000),
            "curl -X PUT localhost:3000/kv/a -d /b"
        );
        assert_eq!(super::curl_line("/stats", 80), "curl localhost:80/stats");
    }
}
