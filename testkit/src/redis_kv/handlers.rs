//! The route handlers: one Redis command each.

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum_tcp_pool::{LazyConnection, TcpConnection, TcpPool, TcpPoolError};
use redis_protocol::codec::Resp2;
use redis_protocol::resp2::types::BytesFrame;

use super::command::{command, unexpected, Redis};
use super::{ApiError, MAX_VALUE};

/// `GET /kv/{key}`: `200` with the value, or `404`.
pub(super) async fn get_value(
    Path(key): Path<String>,
    conn: TcpConnection,
) -> Result<Response, ApiError> {
    let mut redis = framed(conn);
    match command(&mut redis, [cmd("GET"), key.into()]).await? {
        BytesFrame::BulkString(value) => {
            Ok(([(header::CONTENT_TYPE, "application/octet-stream")], value).into_response())
        }
        BytesFrame::Null => Ok(not_found()),
        other => Err(unexpected(&mut redis, "GET", &other)),
    }
}

/// `PUT /kv/{key}`, body = the value: `204`.
///
/// Reads the body *before* it checks a connection out ([`LazyConnection`]): a slow upload
/// holds no Redis connection.
pub(super) async fn put_value(
    Path(key): Path<String>,
    conn: LazyConnection,
    body: Body,
) -> Result<Response, ApiError> {
    let value = axum::body::to_bytes(body, MAX_VALUE)
        .await
        .map_err(ApiError::Body)?;
    let mut redis = framed(conn.get().await?);
    match command(&mut redis, [cmd("SET"), key.into(), value]).await? {
        BytesFrame::SimpleString(ok) if ok == "OK" => Ok(StatusCode::NO_CONTENT.into_response()),
        other => Err(unexpected(&mut redis, "SET", &other)),
    }
}

/// `DELETE /kv/{key}`: `204` if it existed, `404` if not.
pub(super) async fn delete_value(
    Path(key): Path<String>,
    conn: TcpConnection,
) -> Result<Response, ApiError> {
    let mut redis = framed(conn);
    match command(&mut redis, [cmd("DEL"), key.into()]).await? {
        BytesFrame::Integer(1) => Ok(StatusCode::NO_CONTENT.into_response()),
        BytesFrame::Integer(0) => Ok(not_found()),
        other => Err(unexpected(&mut redis, "DEL", &other)),
    }
}

/// `GET /health`: `200 ok` when Redis answers `PING`, `503` otherwise (also when no
/// connection can be had: a load balancer wants `503` from a health check, not `502`).
pub(super) async fn health(conn: Result<TcpConnection, TcpPoolError>) -> Response {
    let unhealthy = |why: &dyn std::fmt::Display| {
        tracing::warn!(error = %why, "health check failed");
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "unhealthy: Redis is not answering\n",
        )
            .into_response()
    };
    let mut redis = match conn {
        Ok(conn) => framed(conn),
        Err(err) => return unhealthy(&err),
    };
    match command(&mut redis, [cmd("PING")]).await {
        Ok(BytesFrame::SimpleString(pong)) if pong == "PONG" => "ok\n".into_response(),
        Ok(other) => {
            redis.discard();
            unhealthy(&format!("unexpected reply to PING: {other:?}"))
        }
        Err(err) => unhealthy(&err),
    }
}

/// `GET /stats`: the pool's sizes and counters. This route has no `TcpPoolLayer`.
pub(super) async fn stats(State(pool): State<TcpPool>) -> String {
    format!("{:#?}\n", pool.state())
}

/// The connection, speaking RESP2: every reply frame read, nothing left buffered, or it is
/// closed when dropped.
fn framed(conn: TcpConnection) -> Redis {
    conn.framed(Resp2::default())
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

pub(super) fn cmd(name: &'static str) -> Bytes {
    Bytes::from_static(name.as_bytes())
}
