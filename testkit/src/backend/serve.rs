//! One backend connection: the line commands of [`Backend`](super::Backend), counted.

use std::sync::atomic::Ordering::SeqCst;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, ReadHalf};
use tokio::sync::watch;

use super::{Conn, Inner};

pub(super) async fn serve_conn<S: Conn>(stream: S, inner: &Inner, mut kill: watch::Receiver<u64>) {
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
            // Write-only: counted as a line, never answered (statsd, memcached `noreply`).
            "QUIET" => continue,
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
        if let Some(delay) = inner.delay() {
            // A slow backend; a kill still closes the connection at once.
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = kill.changed() => return,
            }
        }
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
