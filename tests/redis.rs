//! The `redis_kv` example's router against a real `redis-server` (started by each test on a
//! free loopback port, without persistence, killed at the end), through a real axum server
//! and a real HTTP client: values round-trip, concurrent writers, a Redis restart mid-run,
//! `CLIENT KILL` of pooled connections, Redis's idle `timeout` dropping them, and a command
//! Redis holds past the example's timeout.
//!
//! Needs `redis-server` on `PATH` (Debian: `apt-get install redis-server`; `.ci/run` installs
//! it) or `REDIS_SERVER` set to its path. Without it, each test that needs it prints one line
//! saying it is skipped and passes; with `CI` set, it fails instead.

use std::sync::atomic::{AtomicU8, Ordering::SeqCst};
use std::sync::Arc;

use axum_tcp_pool::{PoolState, TcpPool, TcpPoolBuilder};
use bytes::Bytes;
use http::StatusCode;
use redis_protocol::resp2::types::BytesFrame;
use testkit::redis::RedisServer;
use testkit::redis_kv::{self, kv};
use testkit::BytesClient;
use tokio::sync::watch;

/// A Redis server, a pool on it with the example's settings (adjusted by `f`), and the
/// example's app served on a free loopback port; `None` when the test is skipped (no
/// `redis-server`, `CI` unset).
async fn setup(
    f: impl FnOnce(TcpPoolBuilder) -> TcpPoolBuilder,
) -> Option<(RedisServer, TcpPool, BytesClient)> {
    let redis = RedisServer::start().await?;
    let pool = f(redis_kv::pool_builder(&redis.addr()))
        .build()
        .expect("valid pool config");
    let addr = testkit::serve(redis_kv::app(pool.clone())).await;
    Some((redis, pool, BytesClient::new(addr)))
}

/// Opens `n` pooled connections and gives them back, so that `n` sit idle in the pool.
async fn fill_idle(pool: &TcpPool, n: usize) {
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(
            testkit::bounded("checkout", pool.get())
                .await
                .expect("checkout"),
        );
    }
    drop(held);
    assert_eq!(pool.state().idle as usize, n, "{:?}", pool.state());
}

/// Eight concurrent `GET /kv/k`, each of which must answer `200 v`.
async fn eight_concurrent_gets_of_k_return_v(http: &BytesClient, round: usize) {
    let gets: Vec<_> = (0..8)
        .map(|_| {
            let http = http.clone();
            tokio::spawn(async move { http.get(&kv("k")).await })
        })
        .collect();
    for g in gets {
        let r = testkit::bounded("GET", g).await.expect("GET task");
        assert_eq!(
            (r.status, &r.body[..]),
            (StatusCode::OK, &b"v"[..]),
            "round {round}"
        );
    }
}

/// Since `before`, the pool discarded exactly `n` connections, all of them because the
/// health check failed.
fn assert_only_health_check_discards(pool: &TcpPool, before: &PoolState, n: u64) {
    let s = pool.state();
    assert_eq!(
        s.discards.health_check - before.discards.health_check,
        n,
        "{s:?}"
    );
    assert_eq!(s.discards.total() - before.discards.total(), n, "{s:?}");
}

fn bulk(b: impl Into<Bytes>) -> BytesFrame {
    BytesFrame::BulkString(b.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_round_trip_binary_safe_and_large() {
    let Some((redis, pool, http)) = setup(|b| b).await else {
        return;
    };

    // Every byte value, then bytes that look like RESP framing, CRLF and NUL included.
    let binary: Bytes = (0..=255u8).chain(*b"\r\n$-1\r\n*2\r\n+OK\r\n\0").collect();
    let large: Bytes = (0..1024 * 1024).map(|i: u32| (i % 251) as u8).collect();
    let cases: [(&str, Bytes); 5] = [
        ("plain", Bytes::from_static(b"world")),
        ("binary", binary),
        ("empty", Bytes::new()),
        (
            "a key/with spaces, ü, \r\n and *3",
            Bytes::from_static(b"odd key"),
        ),
        ("large", large.clone()),
    ];

    for (key, value) in &cases {
        let r = http.put(&kv(key), value.clone()).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "PUT {key:?}: {r:?}");
        let r = http.get(&kv(key)).await;
        assert_eq!(r.status, StatusCode::OK, "GET {key:?}");
        assert_eq!(r.headers["content-type"], "application/octet-stream");
        assert!(r.body == *value, "GET {key:?} returned other bytes");
        // Stored in Redis byte for byte, under the key as given.
        let stored = redis.cmd(&[b"GET", key.as_bytes()]).await;
        assert!(
            stored == bulk(value.clone()),
            "Redis holds other bytes for {key:?}"
        );
    }

    // Overwrite, then delete.
    assert_eq!(http.put(&kv("plain"), "again").await.status, 204);
    assert_eq!(http.get(&kv("plain")).await.body, "again");
    for (key, _) in &cases {
        assert_eq!(http.delete(&kv(key)).await.status, 204, "DELETE {key:?}");
        assert_eq!(
            http.get(&kv(key)).await.status,
            404,
            "GET {key:?} after DELETE"
        );
        assert_eq!(
            http.delete(&kv(key)).await.status,
            404,
            "DELETE {key:?} again"
        );
    }
    assert_eq!(redis.cmd(&[b"DBSIZE"]).await, BytesFrame::Integer(0));

    // A value over the limit is refused before a connection is checked out.
    let gets = pool.state().gets;
    let too_big = Bytes::from(vec![b'x'; redis_kv::MAX_VALUE + 1]);
    let r = http.put(&kv("too-big"), too_big).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(pool.state().gets, gets, "a refused PUT took a connection");
    assert_eq!(
        redis.cmd(&[b"EXISTS", b"too-big"]).await,
        BytesFrame::Integer(0)
    );

    // A key of another type: Redis's WRONGTYPE error reply, as 409 without its text.
    redis.cmd(&[b"RPUSH", b"a-list", b"x"]).await;
    let r = http.get(&kv("a-list")).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert!(
        !String::from_utf8_lossy(&r.body).contains("WRONGTYPE"),
        "{r:?}"
    );

    // Every exchange, the 1 MiB ones and the error reply included, left its connection
    // clean: one connection did all the (sequential) work.
    let s = pool.state();
    assert_eq!(s.discards.total(), 0, "{s:?}");
    assert_eq!(s.connections_created, 1, "{s:?}");
    assert_eq!(redis.clients().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_each_read_their_own_writes() {
    const WRITERS: usize = 16;
    const ROUNDS: usize = 15;
    const MAX_SIZE: u32 = 4;
    let Some((redis, pool, http)) = setup(|b| b.max_size(MAX_SIZE)).await else {
        return;
    };

    // Values of different lengths, so that a reply read by the wrong request would show.
    let value = |w: usize, r: usize| format!("writer {w} round {r} {}", "x".repeat(w * 512));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let http = http.clone();
            tokio::spawn(async move {
                for r in 0..ROUNDS {
                    let v = value(w, r);
                    let put = http.put(&kv(&format!("own-{w}")), v.clone()).await;
                    assert_eq!(put.status, 204, "writer {w} round {r}: {put:?}");
                    let got = http.get(&kv(&format!("own-{w}"))).await;
                    assert_eq!(got.status, 200, "writer {w} round {r}");
                    assert!(
                        got.body == v.as_bytes(),
                        "writer {w} round {r} read another value"
                    );
                    let shared = http.put(&kv("shared"), v).await;
                    assert_eq!(shared.status, 204, "writer {w} round {r}: {shared:?}");
                }
            })
        })
        .collect();
    for (w, task) in writers.into_iter().enumerate() {
        testkit::bounded("writer", task)
            .await
            .unwrap_or_else(|e| panic!("writer {w} failed: {e}"));
    }

    for w in 0..WRITERS {
        let got = http.get(&kv(&format!("own-{w}"))).await;
        assert!(got.body == value(w, ROUNDS - 1).as_bytes(), "own-{w}");
    }
    let shared = http.get(&kv("shared")).await.body;
    assert!(
        (0..WRITERS).any(|w| shared == value(w, ROUNDS - 1).as_bytes()),
        "the shared key holds a value no writer wrote last"
    );

    let s = pool.state();
    assert_eq!(s.discards.total(), 0, "{s:?}");
    assert_eq!(s.gets_timed_out, 0, "{s:?}");
    assert!(s.connections_created <= u64::from(MAX_SIZE), "{s:?}");
    // Redis sees exactly the pool's connections.
    assert_eq!(redis.clients().await, s.connections as usize, "{s:?}");
}

// The phases of the restart test. A request is judged by the phases it started and ended
// in; the test enters STOPPING before it sends `SHUTDOWN` and RESTARTING before it starts the
// server again, so a request seen entirely in UP, DOWN or RESTARTED saw only that state.
const UP: u8 = 0;
const STOPPING: u8 = 1;
const DOWN: u8 = 2;
const RESTARTING: u8 = 3;
const RESTARTED: u8 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_recover_after_redis_restarts_mid_run() {
    const LOADERS: usize = 4;
    let Some((mut redis, pool, http)) = setup(|b| b.max_size(4)).await else {
        return;
    };
    assert_eq!(http.put(&kv("before"), "v").await.status, 204);

    // Load: each loader writes and reads back its own key, and records what it saw.
    let phase = Arc::new(AtomicU8::new(UP));
    // Per phase, all loaders together: requests that succeeded (UP, RESTARTED) or failed (DOWN).
    let (progress, mut seen) = watch::channel([0usize; 5]);
    let loaders: Vec<_> = (0..LOADERS)
        .map(|l| {
            let (http, phase, progress) = (http.clone(), phase.clone(), progress.clone());
            tokio::spawn(async move {
                let mut log = Vec::new();
                let key = kv(&format!("load-{l}"));
                for i in 0..100_000usize {
                    let start = phase.load(SeqCst);
                    if start == RESTARTED && progress.borrow()[usize::from(RESTARTED)] >= 40 {
                        break;
                    }
                    let value = format!("{l}-{i}");
                    let put = http.put(&key, value.clone()).await;
                    let get = if put.status == 204 {
                        Some(http.get(&key).await)
                    } else {
                        None
                    };
                    let end = phase.load(SeqCst);
                    let ok = put.status == 204
                        && get
                            .as_ref()
                            .is_some_and(|g| g.status == 200 && g.body == value.as_bytes());
                    log.push((start, end, put.status, get.map(|g| g.status)));
                    if ok && start == end {
                        progress.send_modify(|p| p[usize::from(start)] += 1);
                    }
                    if !ok && start == end && start == DOWN {
                        progress.send_modify(|p| p[usize::from(DOWN)] += 1);
                    }
                }
                log
            })
        })
        .collect();

    testkit::bounded(
        "load running against Redis",
        seen.wait_for(|p| p[usize::from(UP)] >= 20),
    )
    .await
    .expect("progress");

    phase.store(STOPPING, SeqCst);
    redis.stop().await;
    phase.store(DOWN, SeqCst);

    // While Redis is down: fail fast with 502 (a checkout finds the pooled connections
    // closed, and the connect is refused), a health check says 503, nothing leaks.
    let r = http.get(&kv("before")).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{r:?}");
    let body = String::from_utf8_lossy(&r.body).to_lowercase();
    for leak in [
        redis.port().to_string(),
        "127.0.0.1".into(),
        "refused".into(),
        "os error".into(),
    ] {
        assert!(!body.contains(&leak), "body leaks {leak:?}: {body:?}");
    }
    assert_eq!(
        http.get("/health").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    testkit::bounded(
        "load failing while Redis is down",
        seen.wait_for(|p| p[usize::from(DOWN)] >= 8),
    )
    .await
    .expect("progress");
    assert!(pool.state().connect_failures >= 1);

    phase.store(RESTARTING, SeqCst);
    redis.restart().await;
    // Within one backoff step: 502 at once until a connect probes the restarted Redis.
    let before = testkit::bounded("a request after the restart succeeds", async {
        for _ in 0..100_000 {
            let r = http.get(&kv("before")).await;
            if r.status != StatusCode::BAD_GATEWAY {
                return r;
            }
            tokio::task::yield_now().await;
        }
        panic!("still 502 after 100,000 requests");
    })
    .await;
    phase.store(RESTARTED, SeqCst);

    // Back, and empty: nothing was persisted.
    assert_eq!(before.status, StatusCode::NOT_FOUND);
    assert_eq!(http.put(&kv("after"), "w").await.status, 204);
    assert_eq!(http.get(&kv("after")).await.body, "w");
    assert_eq!(http.get("/health").await.status, StatusCode::OK);

    for (l, task) in loaders.into_iter().enumerate() {
        let log = testkit::bounded("loader", task)
            .await
            .unwrap_or_else(|e| panic!("loader {l} failed: {e}"));
        for (start, end, put, get) in log {
            let get = get.map(|s| s.as_u16());
            match (start, end) {
                // Redis up for the whole request (before the stop, or after the restart):
                // it succeeds.
                (UP, UP) | (RESTARTED, RESTARTED) => assert!(
                    put == 204 && get == Some(200),
                    "loader {l}: {put} / {get:?} with Redis up (phase {start})"
                ),
                // Redis down for the whole request: a prompt 502.
                (DOWN, DOWN) => assert_eq!(put, 502, "loader {l} with Redis down"),
                // Across a stop or a restart: success or 502, nothing else (no 500, no 503,
                // no timeout). 404: the restart came between the PUT and the GET.
                _ => assert!(
                    [204, 502].contains(&put.as_u16())
                        && matches!(get, None | Some(200 | 404 | 502)),
                    "loader {l}: {put} / {get:?} across phases {start} -> {end}"
                ),
            }
        }
    }
    let s = pool.state();
    assert_eq!(s.gets_timed_out, 0, "{s:?}");
    // The connections Redis closed were discarded, not reused: found closed at a checkout,
    // or, when every one was mid-exchange at the stop (a loaded machine), by that exchange.
    assert!(
        s.discards.health_check + s.discards.eof + s.discards.io_error >= 1,
        "{s:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_kill_of_pooled_connections_is_invisible_to_requests() {
    let Some((redis, pool, http)) = setup(|b| b.max_size(4)).await else {
        return;
    };
    assert_eq!(http.put(&kv("k"), "v").await.status, 204);

    for round in 0..2 {
        fill_idle(&pool, 4).await;
        assert_eq!(redis.clients().await, 4);
        let before = pool.state();

        // Kill every client but the one asking (`SKIPME yes` is the default).
        let killed = redis.cmd(&[b"CLIENT", b"KILL", b"TYPE", b"normal"]).await;
        assert_eq!(killed, BytesFrame::Integer(4), "round {round}");
        redis
            .wait_clients("Redis closed the killed clients", 0)
            .await;
        assert_eq!(pool.state().idle, 4, "the pool cannot know yet");

        // One request walks through the four dead connections, discards them and opens one.
        let r = http.get(&kv("k")).await;
        assert_eq!(
            (r.status, &r.body[..]),
            (StatusCode::OK, &b"v"[..]),
            "round {round}"
        );
        assert_only_health_check_discards(&pool, &before, 4);
        let s = pool.state();
        assert_eq!(
            s.connections_created - before.connections_created,
            1,
            "{s:?}"
        );

        // And the next ones, concurrent, all succeed too.
        eight_concurrent_gets_of_k_return_v(&http, round).await;
        assert_eq!(http.get("/health").await.status, StatusCode::OK);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_idle_timeout_dropping_pooled_connections_fails_nothing() {
    let Some((redis, pool, http)) = setup(|b| b.max_size(4)).await else {
        return;
    };
    // Redis closes clients idle for more than a second. (Its check runs in the server's
    // cron with a one-second clock, so a client goes after one to three seconds.)
    assert_eq!(
        redis.cmd(&[b"CONFIG", b"SET", b"timeout", b"1"]).await,
        BytesFrame::SimpleString(Bytes::from_static(b"OK"))
    );
    assert_eq!(http.put(&kv("k"), "v").await.status, 204);

    for round in 0..2 {
        fill_idle(&pool, 4).await;
        let before = pool.state();
        redis
            .wait_clients("Redis dropped the idle pooled connections", 0)
            .await;

        eight_concurrent_gets_of_k_return_v(&http, round).await;
        assert_only_health_check_discards(&pool, &before, 4);
        let s = pool.state();
        assert_eq!(s.connect_failures, 0, "{s:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_requests_after_a_restart_succeed_despite_stale_pooled_connections() {
    let Some((mut redis, pool, http)) = setup(|b| b.max_size(4)).await else {
        return;
    };
    fill_idle(&pool, 4).await;
    let before = pool.state();

    // No request while Redis is away: the four idle connections are stale when it is back.
    redis.stop().await;
    redis.restart().await;
    assert_eq!(pool.state().idle, 4, "the pool cannot know yet");

    assert_eq!(http.put(&kv("k"), "v").await.status, 204);
    assert_eq!(http.get(&kv("k")).await.body, "v");
    assert_eq!(http.get("/health").await.status, StatusCode::OK);
    let s = pool.state();
    assert_eq!(
        s.discards.health_check - before.discards.health_check,
        4,
        "{s:?}"
    );
    assert_eq!(
        s.connections_created - before.connections_created,
        1,
        "{s:?}"
    );
    assert_eq!(s.connect_failures, 0, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_redis_does_not_answer_in_time_gets_504_and_its_connection_is_closed() {
    let Some((redis, pool, http)) = setup(|b| b.max_size(4)).await else {
        return;
    };
    assert_eq!(http.put(&kv("k"), "v").await.status, 204);
    // Redis holds write commands (SET) until unpaused; reads and PING go on.
    let ok = BytesFrame::SimpleString(Bytes::from_static(b"OK"));
    assert_eq!(
        redis.cmd(&[b"CLIENT", b"PAUSE", b"60000", b"WRITE"]).await,
        ok
    );
    let before = pool.state();

    let r = http.put(&kv("k"), "w").await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT, "{r:?}");
    let s = pool.state();
    // The SET's reply is still to come: that connection is closed, not reused.
    assert_eq!(s.discards.cancelled - before.discards.cancelled, 1, "{s:?}");
    assert_eq!(s.discards.total() - before.discards.total(), 1, "{s:?}");
    assert_eq!(http.get(&kv("k")).await.body, "v");

    assert_eq!(redis.cmd(&[b"CLIENT", b"UNPAUSE"]).await, ok);
    assert_eq!(http.put(&kv("k"), "x").await.status, 204);
    assert_eq!(http.get(&kv("k")).await.body, "x");
    let s = pool.state();
    assert_eq!(s.discards.total() - before.discards.total(), 1, "{s:?}");
}

/// Not Redis: a server on a free loopback port that answers each segment it reads with what
/// `reply` returns for it (on loopback, one command arrives in one segment).
async fn fake_redis(reply: fn(&[u8]) -> Vec<u8>) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n @ 1..) = stream.read(&mut buf).await {
                    if stream.write_all(&reply(&buf[..n])).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// The argument of a `PING <arg>` command, as its bulk-string reply (`$<len>\r\n<arg>\r\n`).
fn ping_echo(command: &[u8]) -> Option<Vec<u8>> {
    const PING: &[u8] = b"*2\r\n$4\r\nPING\r\n";
    command.strip_prefix(PING).map(<[u8]>::to_vec)
}

/// A server that answers the probe properly and every other command with two replies in one
/// write, so that the codec reads the second one into its buffer together with the first.
/// Redis never does this; the example must still not reuse such a connection: its reply is
/// used, and the connection is closed (`UnreadBytes`) without a check by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_framed_buffered_beyond_the_reply_close_the_connection() {
    let addr =
        fake_redis(|command| ping_echo(command).unwrap_or_else(|| b"+OK\r\n+OK\r\n".to_vec()))
            .await;
    let pool = redis_kv::pool_builder(&addr.to_string())
        .build()
        .expect("pool");
    let http = BytesClient::new(testkit::serve(redis_kv::app(pool.clone())).await);

    let r = http.put(&kv("k"), "v").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{r:?}");
    let s = testkit::wait_pool(&pool, "connection closed", |s| s.connections == 0).await;
    assert_eq!(s.discards.unread_bytes, 1, "{s:?}");
    assert_eq!(s.discards.total(), 1, "{s:?}");
}

/// A `+PONG` that does not echo the probe's counter, which is what a stale reply to an
/// earlier `PING` would look like, fails the health check: no connection is handed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pong_that_does_not_echo_the_counter_fails_the_probe() {
    let addr = fake_redis(|_| b"+PONG\r\n".to_vec()).await;
    let pool = redis_kv::pool_builder(&addr.to_string())
        .max_size(2)
        .build()
        .expect("pool");
    let http = BytesClient::new(testkit::serve(redis_kv::app(pool.clone())).await);

    let r = http.get("/health").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{r:?}");
    let r = http.get(&kv("k")).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{r:?}");
    let s = pool.state();
    assert!(s.discards.health_check >= 2, "{s:?}");
    assert_eq!(s.discards.total(), s.discards.health_check, "{s:?}");
    assert_eq!(s.in_use, 0, "{s:?}");

    // The same probe passes against a real Redis, again and again.
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let mut stream = axum_tcp_pool::BackendStream::Tcp(
        tokio::net::TcpStream::connect(redis.addr())
            .await
            .expect("connect"),
    );
    for _ in 0..3 {
        redis_kv::ping(&mut stream).await.expect("PING <n> echoed");
    }
}
