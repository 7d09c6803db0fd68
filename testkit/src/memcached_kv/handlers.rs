//! The route handlers: each takes its connection only once its input is checked, then
//! speaks frames through `PooledFramed`.

use std::io;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum_tcp_pool::{LazyConnection, PooledFramed, TcpPool, TcpPoolError};
use futures_util::{SinkExt, StreamExt};

use super::codec::{CodecError, MemcacheCodec, Request, Response};
use super::{valid_key, ApiError, COMMAND_TIMEOUT, ITEM_SIZE_LIMIT};

type Memcache = PooledFramed<MemcacheCodec>;

/// A connection, framed, once the handler is ready for it.
async fn framed(conn: LazyConnection) -> Result<Memcache, ApiError> {
    Ok(conn.get().await?.framed(MemcacheCodec))
}

/// The key as memcached takes it, or `400`.
fn key(key: String) -> Result<Bytes, ApiError> {
    match valid_key(key.as_bytes()) {
        true => Ok(Bytes::from(key)),
        false => Err(ApiError::BadKey),
    }
}

/// Runs `exchange` within [`COMMAND_TIMEOUT`]. A timeout drops it in the middle of a read
/// or write, and the connection is closed (`Cancelled`); an I/O error or an undecodable
/// reply closes it too (`IoError`, `Codec`).
async fn bounded<T>(
    exchange: impl std::future::Future<Output = Result<T, CodecError>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(COMMAND_TIMEOUT, exchange).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(CodecError::Io(err))) => Err(ApiError::Pool(TcpPoolError::Io(err))),
        Ok(Err(CodecError::Protocol(why))) => Err(ApiError::Protocol(why.into())),
        Err(_elapsed) => Err(ApiError::Timeout),
    }
}

/// The next reply frame; end-of-file is an error.
async fn reply(framed: &mut Memcache) -> Result<Response, CodecError> {
    match framed.next().await {
        Some(reply) => reply,
        None => Err(CodecError::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "memcached closed the connection",
        ))),
    }
}

/// One request, its one reply.
async fn command(framed: &mut Memcache, request: Request) -> Result<Response, ApiError> {
    bounded(async {
        framed.send(request).await?;
        reply(framed).await
    })
    .await
}

/// A well-formed reply of the wrong kind: where the connection stands is unknown, so it is
/// closed rather than reused.
fn unexpected(framed: &mut Memcache, command: &str, reply: &Response) -> ApiError {
    framed.discard();
    ApiError::Protocol(format!("{reply:?} to {command}"))
}

/// `GET /kv/{key}`: `200` with the value, or `404`.
pub(super) async fn get_value(
    Path(k): Path<String>,
    conn: LazyConnection,
) -> Result<HttpResponse, ApiError> {
    let k = key(k)?;
    let mut framed = framed(conn).await?;
    match command(&mut framed, Request::Get(vec![k.clone()])).await? {
        Response::Values(values) if values.is_empty() => Ok(not_found()),
        Response::Values(mut values) if values.len() == 1 && values[0].key == k => {
            let value = values.remove(0).data;
            Ok(([(header::CONTENT_TYPE, "application/octet-stream")], value).into_response())
        }
        other => Err(unexpected(&mut framed, "get", &other)),
    }
}

/// `PUT /kv/{key}`, body = the value: `204`, or `413` over the item size limit.
///
/// The body is read before a connection is taken ([`LazyConnection`]): a slow upload holds
/// no memcached connection, and a body over the limit never reaches memcached.
pub(super) async fn put_value(
    Path(k): Path<String>,
    conn: LazyConnection,
    body: Body,
) -> Result<HttpResponse, ApiError> {
    let k = key(k)?;
    let value = axum::body::to_bytes(body, ITEM_SIZE_LIMIT)
        .await
        .map_err(ApiError::Body)?;
    let mut framed = framed(conn).await?;
    let set = Request::Set {
        key: k,
        flags: 0,
        exptime: 0,
        value,
        noreply: false,
    };
    match command(&mut framed, set).await? {
        Response::Stored => Ok(StatusCode::NO_CONTENT.into_response()),
        // The value with memcached's own overhead is over the limit. memcached reads the
        // value and drops it, so the connection is in step and goes back to the pool.
        Response::ServerError(msg) if msg.starts_with(b"object too large") => {
            Err(ApiError::TooLarge)
        }
        Response::ServerError(msg) => {
            Err(ApiError::Server(String::from_utf8_lossy(&msg).into_owned()))
        }
        other => Err(unexpected(&mut framed, "set", &other)),
    }
}

/// `DELETE /kv/{key}`: `204`, fire-and-forget: `delete <key> noreply` gets no reply, so
/// none is expected (`expect_replies(0)`) and the connection is reused. Whether the key
/// existed is not known.
pub(super) async fn delete_value(
    Path(k): Path<String>,
    conn: LazyConnection,
) -> Result<HttpResponse, ApiError> {
    let k = key(k)?;
    let mut framed = framed(conn).await?;
    let delete = Request::Delete {
        key: k,
        noreply: true,
    };
    bounded(framed.expect_replies(0).send(delete)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `DELETE /kv`: `flush_all`, `204`.
pub(super) async fn flush(conn: LazyConnection) -> Result<HttpResponse, ApiError> {
    let mut framed = framed(conn).await?;
    match command(&mut framed, Request::FlushAll).await? {
        Response::Ok => Ok(StatusCode::NO_CONTENT.into_response()),
        other => Err(unexpected(&mut framed, "flush_all", &other)),
    }
}

/// `GET /mget/{a,b,..}`: one `get` per key, all written at once, then one reply each (a
/// pipelined exchange: the frame count, not the socket, says when it is complete). `200`
/// with a `<key>=<value>` line per key found.
pub(super) async fn mget(
    Path(keys): Path<String>,
    conn: LazyConnection,
) -> Result<HttpResponse, ApiError> {
    let keys = keys
        .split(',')
        .map(|k| key(k.to_owned()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut framed = framed(conn).await?;
    let replies = bounded(async {
        for k in &keys {
            framed.feed(Request::Get(vec![k.clone()])).await?;
        }
        SinkExt::<Request>::flush(&mut framed).await?;
        let mut replies = Vec::with_capacity(keys.len());
        for _ in &keys {
            replies.push(reply(&mut framed).await?);
        }
        Ok(replies)
    })
    .await?;
    let mut body = Vec::new();
    for (k, r) in keys.iter().zip(replies) {
        match r {
            Response::Values(values) if values.iter().all(|v| v.key == k) => {
                for v in values {
                    body.extend_from_slice(&v.key);
                    body.push(b'=');
                    body.extend_from_slice(&v.data);
                    body.push(b'\n');
                }
            }
            other => return Err(unexpected(&mut framed, "get", &other)),
        }
    }
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response())
}

/// `GET /health`: `200 ok` when memcached answers `version`, `503` otherwise (also when no
/// connection can be had: a load balancer wants `503` from a health check, not `502`).
pub(super) async fn health(conn: LazyConnection) -> HttpResponse {
    let unhealthy = |why: &dyn std::fmt::Display| {
        tracing::warn!(error = %why, "health check failed");
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "unhealthy: memcached is not answering\n",
        )
            .into_response()
    };
    let mut framed = match framed(conn).await {
        Ok(framed) => framed,
        Err(err) => return unhealthy(&err),
    };
    match command(&mut framed, Request::Version).await {
        Ok(Response::Version(_)) => "ok\n".into_response(),
        Ok(other) => unhealthy(&unexpected(&mut framed, "version", &other)),
        Err(err) => unhealthy(&err),
    }
}

/// `GET /stats`: the pool's sizes and counters. This route has no `TcpPoolLayer`.
pub(super) async fn stats(State(pool): State<TcpPool>) -> String {
    format!("{:#?}\n", pool.state())
}

fn not_found() -> HttpResponse {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}
