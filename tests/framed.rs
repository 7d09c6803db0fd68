//! `PooledFramed` with a line codec against the in-test backend: the connection goes back to
//! the pool only if it is clean by the usual rule, its read buffer is empty and every request
//! frame sent got its reply frame; write-only exchanges (`expect_replies(0)`,
//! `expect_no_reply`, `write_only`) are reused, and unread bytes still close them.

use axum::extract::Path;
use axum::routing::get;
use axum::Router;
use axum_tcp_pool::{DiscardReason, PooledFramed, TcpConnection, TcpPool, TcpPoolLayer};
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use testkit::{setup, Backend, HttpClient};
use tokio::io::AsyncWriteExt;
use tokio_util::codec::{LinesCodec, LinesCodecError};

type Lines = PooledFramed<LinesCodec>;

fn bad_gateway(_: LinesCodecError) -> StatusCode {
    StatusCode::BAD_GATEWAY
}

/// The next reply line, or `502`.
async fn reply(framed: &mut Lines) -> Result<String, StatusCode> {
    match framed.next().await {
        Some(Ok(line)) => Ok(line),
        Some(Err(e)) => Err(bad_gateway(e)),
        None => Err(StatusCode::BAD_GATEWAY),
    }
}

/// One request, its one reply.
async fn echo(Path(text): Path<String>, conn: TcpConnection) -> Result<String, StatusCode> {
    let mut framed = conn.framed(LinesCodec::new());
    framed
        .send(format!("ECHO {text}"))
        .await
        .map_err(bad_gateway)?;
    reply(&mut framed).await
}

/// `n` requests pipelined in one flush, then their `n` replies.
async fn pipeline(Path(n): Path<usize>, conn: TcpConnection) -> Result<String, StatusCode> {
    let mut framed = conn.framed(LinesCodec::new());
    for i in 0..n {
        framed
            .feed(format!("ECHO {i}"))
            .await
            .map_err(bad_gateway)?;
    }
    SinkExt::<&str>::flush(&mut framed)
        .await
        .map_err(bad_gateway)?;
    let mut replies = Vec::with_capacity(n);
    for _ in 0..n {
        replies.push(reply(&mut framed).await?);
    }
    Ok(replies.join(","))
}

/// `TWICE`: two reply lines in one write, one read: the other is left decoded-but-unread in
/// the buffer. Answers the reply and how many bytes were left buffered.
async fn leftover(Path(text): Path<String>, conn: TcpConnection) -> Result<String, StatusCode> {
    let mut framed = conn.framed(LinesCodec::new());
    framed
        .send(format!("TWICE {text}"))
        .await
        .map_err(bad_gateway)?;
    let line = reply(&mut framed).await?;
    Ok(format!("{line} buffered={}", framed.read_buffer().len()))
}

/// `TWICE` with both replies expected and read.
async fn twice(Path(text): Path<String>, conn: TcpConnection) -> Result<String, StatusCode> {
    let mut framed = conn.framed(LinesCodec::new());
    framed
        .expect_replies(2)
        .send(format!("TWICE {text}"))
        .await
        .map_err(bad_gateway)?;
    let a = reply(&mut framed).await?;
    let b = reply(&mut framed).await?;
    Ok(format!("{a},{b}"))
}

/// Two requests pipelined, one reply read: the second reply is held by the backend, so the
/// socket shows nothing when the connection comes back.
async fn pipelined_one_read(conn: TcpConnection) -> Result<String, StatusCode> {
    let mut framed = conn.framed(LinesCodec::new());
    framed.feed("ECHO first").await.map_err(bad_gateway)?;
    framed.feed("HOLD second").await.map_err(bad_gateway)?;
    SinkExt::<&str>::flush(&mut framed)
        .await
        .map_err(bad_gateway)?;
    reply(&mut framed).await
}

/// A request with no reply (`expect_replies(0)`), then one with its reply.
async fn quiet_then_echo(
    Path(text): Path<String>,
    conn: TcpConnection,
) -> Result<String, StatusCode> {
    let mut framed = conn.framed(LinesCodec::new());
    framed
        .expect_replies(0)
        .send(format!("QUIET {text}"))
        .await
        .map_err(bad_gateway)?;
    framed
        .send(format!("ECHO {text}"))
        .await
        .map_err(bad_gateway)?;
    reply(&mut framed).await
}

/// A write-only exchange on a plain connection, declared with `expect_no_reply`.
async fn no_reply(Path(text): Path<String>, mut conn: TcpConnection) -> Result<String, StatusCode> {
    conn.write_all(format!("QUIET {text}\n").as_bytes())
        .await
        .map_err(|_| StatusCode::BAD_GATEWAY)?;
    conn.expect_no_reply();
    Ok("sent".into())
}

/// A write-only exchange, not declared: only a `write_only` pool reuses the connection.
async fn statsd(Path(text): Path<String>, mut conn: TcpConnection) -> Result<String, StatusCode> {
    conn.write_all(format!("QUIET {text}\n").as_bytes())
        .await
        .map_err(|_| StatusCode::BAD_GATEWAY)?;
    Ok("sent".into())
}

/// Waits in `next()` for a reply the backend holds (until the client goes away).
async fn hold(conn: TcpConnection) -> Result<String, StatusCode> {
    let mut framed = conn.framed(LinesCodec::new());
    framed.send("HOLD late").await.map_err(bad_gateway)?;
    reply(&mut framed).await
}

fn routes(pool: &TcpPool) -> Router {
    Router::new()
        .route("/echo/{text}", get(echo))
        .route("/pipeline/{n}", get(pipeline))
        .route("/leftover/{text}", get(leftover))
        .route("/twice/{text}", get(twice))
        .route("/pipelined-one-read", get(pipelined_one_read))
        .route("/quiet/{text}", get(quiet_then_echo))
        .route("/no-reply/{text}", get(no_reply))
        .route("/statsd/{text}", get(statsd))
        .route("/hold", get(hold))
        .route_layer(TcpPoolLayer::new(pool.clone()))
}

/// After a dirty request: exactly one discard, of `reason`; the backend saw the connection
/// close; the next request gets its own reply, on a new connection.
async fn assert_discarded(
    backend: &Backend,
    pool: &TcpPool,
    client: &HttpClient,
    reason: DiscardReason,
) {
    backend
        .wait_for("discarded connection closed", |s| s.open == 0)
        .await;
    let s = testkit::wait_pool(pool, "connection released", |s| s.connections == 0).await;
    assert_eq!(s.discards.get(reason), 1, "expected one {reason:?}: {s:?}");
    assert_eq!(s.discards.total(), 1, "{s:?}");
    let r = client.get("/echo/next").await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "next"));
    assert_eq!(
        backend.seen().accepts,
        2,
        "the next request used a new connection"
    );
}

/// Many requests, one connection, no discard.
async fn assert_reused(backend: &Backend, pool: &TcpPool, requests: usize) {
    let s = testkit::wait_pool(pool, "connection back", |s| s.in_use == 0).await;
    assert_eq!(
        (backend.seen().accepts, s.discards.total(), s.idle),
        (1, 0, 1),
        "{requests} requests on one connection: {s:?}"
    );
}

/// A connection of `pool`, framed with the line codec.
async fn lines(pool: &TcpPool) -> PooledFramed<LinesCodec> {
    pool.get()
        .await
        .expect("connection")
        .framed(LinesCodec::new())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_replies_read_reuses_one_connection() {
    let (backend, pool, client) = setup(|b| b, routes).await;
    const N: usize = 50;
    for i in 0..N {
        assert_eq!(
            client.get(&format!("/echo/r{i}")).await.body,
            format!("r{i}")
        );
        let r = client.get("/pipeline/4").await;
        assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "0,1,2,3"));
        assert_eq!(client.get("/twice/t").await.body, "t,t");
    }
    assert_reused(&backend, &pool, 3 * N).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decoded_but_unread_frame_closes_the_connection() {
    let (backend, pool, client) = setup(|b| b, routes).await;
    let r = client.get("/leftover/dup").await;
    // Both lines came in one write: the second one sat in the codec's buffer, out of the
    // socket's sight.
    assert_eq!(
        (r.status.as_u16(), r.body.as_str()),
        (200, "dup buffered=4")
    );
    assert_discarded(&backend, &pool, &client, DiscardReason::UnreadBytes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_frame_in_the_buffer_closes_the_connection() {
    let backend = Backend::start().await;
    let pool = TcpPool::builder(backend.addr_string())
        .build()
        .expect("pool");
    let mut framed = lines(&pool).await;
    framed.send("ECHO whole").await.expect("send");
    // No reply frame expected for this one (as for a fire-and-forget command): only the
    // buffer can tell that it answered anyway.
    framed
        .expect_replies(0)
        .send("PARTIAL head tail")
        .await
        .expect("send");
    backend
        .wait_for("the head of the second reply sent", |s| s.holding == 1)
        .await;
    let line = testkit::bounded("reply", framed.next()).await;
    assert_eq!(line.expect("a line").expect("decoded"), "whole");
    assert_eq!(
        &framed.read_buffer()[..],
        b"head",
        "the partial frame is buffered"
    );
    assert_eq!(framed.pending_replies(), 0);
    assert_eq!(
        framed.get_ref().discard_reason(),
        Some(DiscardReason::UnreadBytes)
    );
    drop(framed);
    backend.wait_for("closed", |s| s.open == 0).await;
    let s = pool.state();
    assert_eq!(
        (s.discards.unread_bytes, s.discards.total(), s.idle),
        (1, 1, 0),
        "{s:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_reply_still_coming_closes_the_connection() {
    let (backend, pool, client) = setup(|b| b, routes).await;
    let r = client.get("/pipelined-one-read").await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "first"));
    // The second reply is held until after the connection came back: nothing on the socket
    // then, and a read came after the last write. Only the frame count knows.
    backend.wait_for("closed", |s| s.open == 0).await;
    let seen = backend.seen();
    assert_eq!(
        (seen.lines, seen.replies),
        (2, 1),
        "the second reply was never sent: {seen:?}"
    );
    assert_discarded(&backend, &pool, &client, DiscardReason::ReplyNotRead).await;
    backend.release();
    assert_eq!(client.get("/echo/after").await.body, "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reply_exchanges_reuse_the_connection() {
    let (backend, pool, client) = setup(|b| b, routes).await;
    const N: usize = 20;
    for i in 0..N {
        assert_eq!(
            client.get(&format!("/quiet/q{i}")).await.body,
            format!("q{i}")
        );
        assert_eq!(client.get(&format!("/no-reply/n{i}")).await.body, "sent");
    }
    backend
        .wait_for("every line received", |s| s.lines == 3 * N)
        .await;
    assert_reused(&backend, &pool, 2 * N).await;
    // Not declared, the same write-only exchange is a reply never read.
    assert_eq!(client.get("/statsd/x").await.body, "sent");
    backend.wait_for("closed", |s| s.open == 0).await;
    let s = testkit::wait_pool(&pool, "discard booked", |s| s.connections == 0).await;
    assert_eq!(s.discards.reply_not_read, 1, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_only_pool_reuses_write_only_exchanges() {
    let (backend, pool, client) = setup(|b| b.write_only(true), routes).await;
    const N: usize = 20;
    for i in 0..N {
        assert_eq!(client.get(&format!("/statsd/s{i}")).await.body, "sent");
    }
    // A request frame expects no reply on a write-only pool, unless told.
    assert_eq!(client.get("/twice/w").await.body, "w,w");
    backend
        .wait_for("every line received", |s| s.lines == N + 1)
        .await;
    assert_reused(&backend, &pool, N + 1).await;
}

/// The return-time look at the socket is skipped after a short read: a write since, even
/// one that needs no reply, must turn it back on, or a reply it provoked would go back to
/// the pool with the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_provoked_by_a_write_needing_no_reply_close_the_connection() {
    for write_only in [false, true] {
        let backend = Backend::start().await;
        let pool = TcpPool::builder(backend.addr_string())
            .write_only(write_only)
            .build()
            .expect("pool");
        let mut framed = pool
            .get()
            .await
            .expect("connection")
            .framed(LinesCodec::new());
        framed.expect_replies(1).send("ECHO a").await.expect("send");
        let line = testkit::bounded("reply", framed.next()).await;
        assert_eq!(line.expect("a line").expect("decoded"), "a");
        let mut conn = framed.into_connection().expect("nothing buffered");
        // Said to need no reply, but answered: the reply is on the socket when the
        // connection comes back.
        conn.write_all(b"ECHO unexpected\n").await.expect("write");
        if !write_only {
            conn.expect_no_reply();
        }
        assert_eq!(conn.discard_reason(), None, "write_only={write_only}");
        backend.wait_for("reply sent", |s| s.replies == 2).await;
        drop(conn);
        let s = pool.state();
        assert_eq!(
            (s.discards.unread_bytes, s.idle),
            (1, 0),
            "write_only={write_only}: closed when it came back, not at the next checkout: {s:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_in_the_middle_of_next_closes_the_connection() {
    let (backend, pool, client) = setup(|b| b, routes).await;
    let request = client.spawn_try_get("/hold");
    backend
        .wait_for("handler waiting in next()", |s| s.holding == 1)
        .await;
    request.abort();
    let _ = request.await;
    assert_discarded(&backend, &pool, &client, DiscardReason::Cancelled).await;
    backend.release();
    assert_eq!(client.get("/echo/after").await.body, "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn into_connection_without_buffered_bytes_gives_a_clean_plain_connection() {
    let backend = Backend::start().await;
    let pool = TcpPool::builder(backend.addr_string())
        .build()
        .expect("pool");
    let mut framed = lines(&pool).await;
    framed.send("ECHO framed").await.expect("send");
    let line = testkit::bounded("reply", framed.next()).await;
    assert_eq!(line.expect("a line").expect("decoded"), "framed");
    let mut conn = framed.into_connection().expect("an empty buffer");
    assert_eq!(conn.discard_reason(), None);
    conn.write_all(b"ECHO plain\n").await.expect("write");
    assert_eq!(testkit::read_line(&mut conn).await.expect("read"), "plain");
    drop(conn);
    assert_eq!(pool.state().idle, 1);

    // A reply frame still expected is a reply not read on the plain connection.
    let mut framed = lines(&pool).await;
    framed.send("HOLD owed").await.expect("send");
    let conn = framed.into_connection().expect("an empty buffer");
    assert_eq!(conn.discard_reason(), Some(DiscardReason::ReplyNotRead));
    drop(conn);
    backend.wait_for("closed", |s| s.open == 0).await;
    let s = pool.state();
    assert_eq!(
        (s.discards.reply_not_read, s.discards.total()),
        (1, 1),
        "{s:?}"
    );
    assert_eq!(backend.seen().accepts, 1, "one connection until then");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn into_connection_with_buffered_bytes_hands_the_framed_value_back() {
    let backend = Backend::start().await;
    let pool = TcpPool::builder(backend.addr_string())
        .build()
        .expect("pool");
    let mut framed = lines(&pool).await;
    framed.send("TWICE dup").await.expect("send");
    let line = testkit::bounded("reply", framed.next()).await;
    assert_eq!(line.expect("a line").expect("decoded"), "dup");
    let mut err = framed.into_connection().expect_err("bytes are buffered");
    assert_eq!(&err.framed().read_buffer()[..], b"dup\n");
    assert!(err.to_string().contains("4 bytes"), "{err}");
    // Given back whole: the buffered line is still there to read, in place or taken back.
    let line = testkit::bounded("buffered reply", err.next()).await;
    assert_eq!(line.expect("a line").expect("decoded"), "dup");
    let mut framed = err.into_inner();
    framed.send("ECHO again").await.expect("send");
    let line = testkit::bounded("reply", framed.next()).await;
    assert_eq!(line.expect("a line").expect("decoded"), "again");
    let conn = framed.into_connection().expect("read to its end now");
    assert_eq!(conn.discard_reason(), None);
    drop(conn);
    let s = pool.state();
    assert_eq!((s.idle, s.discards.total()), (1, 0), "{s:?}");
    assert_eq!(backend.seen().accepts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decode_error_closes_the_connection() {
    let backend = Backend::start().await;
    let pool = TcpPool::builder(backend.addr_string())
        .build()
        .expect("pool");
    let mut framed = pool
        .get()
        .await
        .expect("connection")
        .framed(LinesCodec::new_with_max_length(4));
    framed.send("ECHO far-too-long").await.expect("send");
    let line = testkit::bounded("reply", framed.next()).await;
    assert!(
        matches!(line, Some(Err(LinesCodecError::MaxLineLengthExceeded))),
        "{line:?}"
    );
    assert_eq!(
        framed.get_ref().discard_reason(),
        Some(DiscardReason::Codec)
    );
    drop(framed);
    backend.wait_for("closed", |s| s.open == 0).await;
    let s = pool.state();
    assert_eq!((s.discards.codec, s.discards.total()), (1, 1), "{s:?}");
}
