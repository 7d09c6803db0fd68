//! Backends the examples run in their own process, so that they need nothing installed: any
//! one-line-per-command protocol, and an in-memory key-value store on it.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Starts a line-protocol backend on a free loopback port and returns its address.
///
/// On each connection it reads one line at a time (at most `max_line` bytes, newline
/// included) and writes back `answer(line)`, the line given without its newline; the answer
/// should end with one. A longer line gets `ERROR line too long` and the connection is
/// closed; so is one that is not UTF-8. The backend runs until the process exits.
pub async fn spawn_line_backend<F>(max_line: u64, answer: F) -> io::Result<SocketAddr>
where
    F: Fn(&str) -> String + Send + Sync + 'static,
{
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let answer = answer.clone();
                    tokio::spawn(async move {
                        if let Err(err) = serve_lines(stream, max_line, &*answer).await {
                            tracing::debug!(error = %err, "backend connection ended");
                        }
                    });
                }
                Err(err) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %err, "backend accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(addr)
}

/// One backend connection: a line in, a line out, until the client hangs up.
async fn serve_lines(
    stream: TcpStream,
    max_line: u64,
    answer: &(dyn Fn(&str) -> String + Send + Sync),
) -> io::Result<()> {
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    let mut line = String::new();
    loop {
        line.clear();
        if (&mut reader).take(max_line).read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let Some(command) = line.strip_suffix('\n') else {
            writer.write_all(b"ERROR line too long\n").await?;
            return Ok(());
        };
        writer.write_all(answer(command).as_bytes()).await?;
    }
}

/// Starts an in-memory key-value backend on a free loopback port (see
/// [`spawn_line_backend`] for `max_line`) and returns its address. Its protocol:
///
/// ```text
/// GET key          ->  VALUE <value>  |  NOT_FOUND
/// SET key value    ->  OK
/// anything else    ->  ERROR <why>
/// ```
pub async fn spawn_kv_backend(max_line: u64) -> io::Result<SocketAddr> {
    let store = Mutex::new(HashMap::new());
    spawn_line_backend(max_line, move |command| kv_command(command, &store)).await
}

/// One key-value command, one reply line.
fn kv_command(command: &str, store: &Mutex<HashMap<String, String>>) -> String {
    let mut map = store.lock().unwrap_or_else(PoisonError::into_inner);
    match command.split_once(' ') {
        Some(("GET", key)) => match map.get(key) {
            Some(value) => format!("VALUE {value}\n"),
            None => "NOT_FOUND\n".to_owned(),
        },
        Some(("SET", rest)) => match rest.split_once(' ') {
            Some((key, value)) => {
                map.insert(key.to_owned(), value.to_owned());
                "OK\n".to_owned()
            }
            None => "ERROR usage: SET key value\n".to_owned(),
        },
        _ => "ERROR unknown command\n".to_owned(),
    }
}
