//! Pool metrics in Prometheus text format, with the `metrics` feature and
//! `metrics-exporter-prometheus`.
//!
//! What it shows:
//!
//! - `PrometheusBuilder::new().install_recorder()`: the Prometheus recorder, without the
//!   exporter's own HTTP server; the app serves `/metrics` itself;
//! - [`TcpPool::record_metrics`] called in the `/metrics` handler, so each scrape sees the
//!   pool as it is at that moment (nothing is recorded on the request path);
//! - a route that sends a command and never reads the reply, so the pool closes that
//!   connection and `tcp_pool_discards_total{reason="reply_not_read"}` goes up.
//!
//! The example starts its own line-echo backend on a free loopback port. Run it (the HTTP
//! port is 3000, or `PORT`):
//!
//! ```text
//! cargo run --example metrics --features metrics
//! ```
//!
//! and try it:
//!
//! ```text
//! curl localhost:3000/echo/hello
//! curl localhost:3000/forget/hello
//! curl localhost:3000/metrics
//! ```
//!
//! Stop it with Ctrl-C.

use std::io;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use axum_tcp_pool::{TcpConnection, TcpPool, TcpPoolError, TcpPoolLayer};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use testkit::example;

/// The longest line either side accepts (newline included).
const MAX_LINE: u64 = 4096;

#[derive(Clone)]
struct Metrics {
    pool: TcpPool,
    prometheus: PrometheusHandle,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    example::init_logging();

    // The global recorder: installed once, before anything records.
    let prometheus = PrometheusBuilder::new().install_recorder()?;

    // A line-echo backend.
    let backend = example::spawn_line_backend(MAX_LINE, |line| format!("{line}\n")).await?;
    let pool = TcpPool::builder(backend.to_string())
        .name("echo")
        .max_size(8)
        .min_idle(1)
        .build()?;

    let app = Router::new()
        .route("/echo/{text}", get(echo))
        .route("/forget/{text}", get(forget))
        .route_layer(TcpPoolLayer::new(pool.clone()))
        .route("/metrics", get(metrics))
        .with_state(Metrics { pool, prometheus });

    println!("echo backend on {backend}");
    example::serve(app, &["/echo/hello", "/forget/hello", "/metrics"]).await?;
    Ok(())
}

/// `GET /metrics`: the pool's gauges and counters, as of now, in Prometheus text format.
async fn metrics(State(m): State<Metrics>) -> Response {
    m.pool.record_metrics();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        m.prometheus.render(),
    )
        .into_response()
}

/// `GET /echo/{text}`: one clean exchange; the connection goes back to the pool.
async fn echo(Path(text): Path<String>, mut conn: TcpConnection) -> Result<Response, TcpPoolError> {
    if text.contains(['\n', '\r']) || text.len() >= MAX_LINE as usize {
        return Ok((StatusCode::BAD_REQUEST, "one short line, please\n").into_response());
    }
    conn.write_all(format!("{text}\n").as_bytes()).await?;
    let mut line = String::new();
    let n = BufReader::new(&mut conn)
        .take(MAX_LINE)
        .read_line(&mut line)
        .await?;
    if n == 0 || !line.ends_with('\n') {
        conn.discard();
        return Err(TcpPoolError::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            "truncated echo",
        )));
    }
    Ok(line.into_response())
}

/// `GET /forget/{text}`: sends a line and never reads the echo. The pool closes the
/// connection (a late reply must not reach the next request): `reason="reply_not_read"`.
async fn forget(
    Path(text): Path<String>,
    mut conn: TcpConnection,
) -> Result<&'static str, TcpPoolError> {
    conn.write_all(format!("{}\n", text.replace(['\n', '\r'], " ")).as_bytes())
        .await?;
    Ok("sent, reply not read: that connection will be closed\n")
}
