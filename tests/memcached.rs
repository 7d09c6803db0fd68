//! The `memcached_kv` example's router against a real `memcached` (started by each test on a
//! free loopback port, killed at the end), through a real axum server and a real HTTP
//! client: binary-safe values, the item size limit as a `413`, a pipelined multi-get,
//! `noreply` deletes that keep the connection, a restart mid-run, `flush_all`, and a handler
//! that sends two commands and reads one reply.
//!
//! Needs `memcached` on `PATH` (Debian: `apt-get install memcached`; `.ci/run` installs it)
//! or `MEMCACHED` set to its path. Without it, each test prints one line saying it is
//! skipped and passes; with `CI` set, it fails instead.

use axum::body::Bytes;
use axum::routing::get;
use axum::Router;
use axum_tcp_pool::{DiscardReason, LazyConnection, TcpPool, TcpPoolBuilder, TcpPoolLayer};
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use testkit::memcached::MemcachedServer;
use testkit::memcached_kv::{self, MemcacheCodec, Request, Response, ITEM_SIZE_LIMIT};
use testkit::redis_kv::kv;
use testkit::BytesClient;

/// A handler that pipelines `set two v` and `get two` and reads only the first reply: the
/// second is still owed when the connection is dropped.
async fn two_commands_one_reply(conn: LazyConnection) -> Result<String, StatusCode> {
    let mut framed = conn
        .get()
        .await
        .map_err(|_| StatusCode::BAD_GATEWAY)?
        .framed(MemcacheCodec);
    let set = Request::Set {
        key: Bytes::from_static(b"two"),
        flags: 0,
        exptime: 0,
        value: Bytes::from_static(b"v"),
        noreply: false,
    };
    let get = Request::Get(vec![Bytes::from_static(b"two")]);
    let sent = async {
        framed.feed(set).await?;
        framed.feed(get).await?;
        SinkExt::<Request>::flush(&mut framed).await
    };
    sent.await.map_err(|_| StatusCode::BAD_GATEWAY)?;
    match framed.next().await {
        Some(Ok(Response::Stored)) => Ok(format!("stored, {} owed", framed.pending_replies())),
        _ => Err(StatusCode::BAD_GATEWAY),
    }
}

/// A memcached, a pool on it with the example's settings (adjusted by `f`), and the
/// example's app (plus the test's own route) served on a free loopback port; `None` when the
/// test is skipped (no `memcached`, `CI` unset).
async fn setup(
    f: impl FnOnce(TcpPoolBuilder) -> TcpPoolBuilder,
) -> Option<(MemcachedServer, TcpPool, BytesClient)> {
    let memcached = MemcachedServer::start().await?;
    let pool = f(memcached_kv::pool_builder(&memcached.addr()))
        .build()
        .expect("valid pool config");
    let app = Router::new()
        .route("/two-commands-one-reply", get(two_commands_one_reply))
        .route_layer(TcpPoolLayer::new(pool.clone()).lazy())
        .merge(memcached_kv::app(pool.clone()));
    let addr = testkit::serve(app).await;
    Some((memcached, pool, BytesClient::new(addr)))
}

/// Nothing discarded, and only `n` connections ever opened.
fn assert_reused(pool: &TcpPool, n: u64, what: &str) {
    let s = pool.state();
    assert_eq!(
        (s.connections_created, s.discards.total()),
        (n, 0),
        "{what}: {s:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_round_trip_binary_safe() {
    let Some((memcached, pool, http)) = setup(|b| b.max_size(1)).await else {
        return;
    };
    // Every byte value, then bytes that look like the text protocol's framing.
    let binary: Bytes = (0..=255u8)
        .chain(*b"\r\nEND\r\nVALUE k 0 1\r\nx\r\nSTORED\r\n\0")
        .collect();
    let cases: [(&str, Bytes); 4] = [
        ("plain", Bytes::from_static(b"world")),
        ("binary", binary),
        ("empty", Bytes::new()),
        ("ключ/ü*", Bytes::from_static(b"a key beyond ASCII")),
    ];
    for (key, value) in &cases {
        let r = http.put(&kv(key), value.clone()).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "PUT {key:?}: {r:?}");
        let r = http.get(&kv(key)).await;
        assert_eq!(r.status, StatusCode::OK, "GET {key:?}");
        assert_eq!(r.headers["content-type"], "application/octet-stream");
        assert!(r.body == *value, "GET {key:?} returned other bytes");
    }
    // Stored byte for byte, under the key as given.
    let stored = memcached.cmd(b"get binary\r\n").await;
    let mut expected = format!("VALUE binary 0 {}\r\n", cases[1].1.len()).into_bytes();
    expected.extend_from_slice(&cases[1].1);
    expected.extend_from_slice(b"\r\nEND\r\n");
    assert!(stored == expected, "memcached holds other bytes");
    assert_eq!(http.put(&kv("plain"), "again").await.status, 204);
    assert_eq!(http.get(&kv("plain")).await.body, "again");
    assert_eq!(http.get(&kv("missing")).await.status, 404);
    // Keys memcached does not take are refused before a connection is taken.
    let gets = pool.state().gets;
    for bad in ["a b", "line\r\nbreak", &"k".repeat(251)] {
        let r = http.get(&kv(bad)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "GET {bad:?}");
    }
    assert_eq!(pool.state().gets, gets, "no checkout for a bad key");
    assert_eq!(http.get("/health").await.body, "ok\n");
    assert_reused(&pool, 1, "one connection for every request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_item_size_limit_is_a_clear_413() {
    let Some((_memcached, pool, http)) = setup(|b| b.max_size(1)).await else {
        return;
    };
    let fits: Bytes = (0..ITEM_SIZE_LIMIT - 4096)
        .map(|i| (i % 251) as u8)
        .collect();
    let r = http.put(&kv("fits"), fits.clone()).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{r:?}");
    let r = http.get(&kv("fits")).await;
    assert!(
        r.status == StatusCode::OK && r.body == fits,
        "a value just under the limit round-trips"
    );

    // Over the limit: refused before a connection is taken.
    let gets = pool.state().gets;
    let r = http.put(&kv("over"), vec![b'x'; ITEM_SIZE_LIMIT + 1]).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{r:?}");
    assert!(
        String::from_utf8_lossy(&r.body).contains("item size limit"),
        "{r:?}"
    );
    assert_eq!(
        pool.state().gets,
        gets,
        "no checkout for a body over the limit"
    );

    // Exactly the limit: memcached's own overhead makes it too large, and memcached says so
    // (`SERVER_ERROR object too large for cache`), reads the value and drops it: the same
    // 413, and the connection stays in step and is reused.
    let r = http.put(&kv("exact"), vec![b'x'; ITEM_SIZE_LIMIT]).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{r:?}");
    assert_eq!(http.get(&kv("exact")).await.status, 404);
    assert_eq!(http.get(&kv("fits")).await.body, fits);
    assert_reused(&pool, 1, "the connection outlived memcached's refusal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_multi_get_reads_every_reply() {
    let Some((_memcached, pool, http)) = setup(|b| b.max_size(1)).await else {
        return;
    };
    for (k, v) in [("a", "1"), ("b", "2"), ("c", "3")] {
        assert_eq!(http.put(&kv(k), v).await.status, 204);
    }
    const ROUNDS: usize = 20;
    for round in 0..ROUNDS {
        let r = http.get("/mget/a,missing,b,c,a").await;
        assert_eq!(r.status, StatusCode::OK, "round {round}: {r:?}");
        assert_eq!(&r.body[..], b"a=1\nb=2\nc=3\na=1\n", "round {round}");
    }
    assert_reused(&pool, 1, "20 pipelined exchanges of 5 gets each");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noreply_deletes_keep_the_connection() {
    let Some((memcached, pool, http)) = setup(|b| b.max_size(1)).await else {
        return;
    };
    const N: usize = 50;
    for i in 0..N {
        let key = format!("k{i}");
        assert_eq!(http.put(&kv(&key), "v").await.status, 204);
        // Fire-and-forget: no reply comes, none is expected.
        assert_eq!(http.delete(&kv(&key)).await.status, 204);
        // On the same connection, after the delete: gone.
        assert_eq!(http.get(&kv(&key)).await.status, 404, "{key}");
    }
    assert_eq!(memcached.stat("delete_hits").await, N as u64);
    assert_reused(&pool, 1, "150 requests, 50 of them noreply deletes");
}

/// memcached answers a `noreply` line it cannot parse (`ERROR`): the connection that
/// expected nothing has bytes waiting when it comes back, and is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_noreply_command_answered_anyway_closes_the_connection() {
    let Some((_memcached, pool, _http)) = setup(|b| b.max_size(1)).await else {
        return;
    };
    let mut framed = pool.get().await.expect("connection").framed(MemcacheCodec);
    // Three "keys": the codec does not check them (the app does), memcached says ERROR.
    let bad = Request::Delete {
        key: Bytes::from_static(b"a b c"),
        noreply: true,
    };
    framed.expect_replies(0).send(bad).await.expect("send");
    let conn = framed.into_connection().expect("nothing buffered");
    assert_eq!(conn.discard_reason(), None, "nothing is owed");
    // Wait for memcached's answer to arrive, without reading it.
    let tcp = conn.get_ref().tcp().expect("TCP");
    testkit::bounded("memcached's ERROR", tcp.readable())
        .await
        .expect("readable");
    drop(conn);
    let s = pool.state();
    assert_eq!(
        (s.discards.get(DiscardReason::UnreadBytes), s.idle),
        (1, 0),
        "{s:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_recover_after_a_restart() {
    let Some((mut memcached, pool, http)) = setup(|b| b.max_size(4)).await else {
        return;
    };
    assert_eq!(http.put(&kv("k"), "before").await.status, 204);
    // Four idle connections, all of which the restart kills.
    let held: Vec<_> = futures_util::future::join_all((0..4).map(|_| pool.get())).await;
    assert!(held.iter().all(Result::is_ok), "four connections");
    drop(held);
    assert_eq!(pool.state().idle, 4);

    memcached.stop().await;
    for path in ["/health", &kv("k")] {
        let r = http.get(path).await;
        let expected = match path {
            "/health" => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_GATEWAY,
        };
        assert_eq!(r.status, expected, "{path} while memcached is down: {r:?}");
    }

    memcached.restart().await;
    // The first request that reaches it (within one reconnect backoff step: 502 at once
    // before) gets the restarted, empty memcached.
    let r = testkit::bounded("a request after the restart reaches memcached", async {
        for _ in 0..100_000 {
            let r = http.get(&kv("k")).await;
            if r.status != StatusCode::BAD_GATEWAY {
                return r;
            }
            tokio::task::yield_now().await;
        }
        panic!("still 502 after 100,000 requests");
    })
    .await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "first request after the restart: {r:?}"
    );
    assert_eq!(http.put(&kv("k"), "after").await.status, 204);
    assert_eq!(http.get(&kv("k")).await.body, "after");
    assert_eq!(http.get("/health").await.body, "ok\n");
    let s = pool.state();
    assert_eq!(
        s.discards.health_check, 4,
        "the four dead idle connections were replaced at checkout: {s:?}"
    );
    assert_eq!(s.discards.total(), 4, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_all_empties_the_store() {
    let Some((memcached, pool, http)) = setup(|b| b.max_size(1)).await else {
        return;
    };
    for k in ["a", "b"] {
        assert_eq!(http.put(&kv(k), "v").await.status, 204);
        assert_eq!(http.get(&kv(k)).await.status, 200);
    }
    assert_eq!(http.delete("/kv").await.status, 204);
    for k in ["a", "b"] {
        assert_eq!(http.get(&kv(k)).await.status, 404, "{k} after flush_all");
    }
    assert_eq!(memcached.stat("cmd_flush").await, 1);
    assert_reused(&pool, 1, "flush_all on the pooled connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_commands_and_one_reply_read_close_the_connection() {
    let Some((_memcached, pool, http)) = setup(|b| b.max_size(1)).await else {
        return;
    };
    let r = http.get("/two-commands-one-reply").await;
    assert_eq!(
        (r.status, &r.body[..]),
        (StatusCode::OK, &b"stored, 1 owed"[..]),
        "{r:?}"
    );
    let s = testkit::wait_pool(&pool, "connection closed", |s| s.connections == 0).await;
    assert_eq!(
        (s.discards.reply_not_read, s.discards.total()),
        (1, 1),
        "{s:?}"
    );
    // The next request gets its own reply, on a new connection: not the `get` reply left
    // behind.
    let r = http.get(&kv("two")).await;
    assert_eq!(
        (r.status, &r.body[..]),
        (StatusCode::OK, &b"v"[..]),
        "{r:?}"
    );
    assert_eq!(pool.state().connections_created, 2);
}
