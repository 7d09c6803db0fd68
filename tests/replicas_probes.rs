//! Several endpoints, end to end through HTTP: error bodies that leak nothing, an endpoint that
//! accepts but fails every exchange ejected, one of three down under load, set changes under
//! load, bad sets refused, recovery after all went down, and framed replies across
//! `into_connection`. (Written by an independent review; each asserts a promise of the spec.)

use std::time::Duration;

use axum_tcp_pool::{Balance, OutlierDetection, TcpPool, TcpPoolError};
use futures_util::future::join_all;
use testkit::wait::wait_pool;
use testkit::{app, assert_no_leak, Backend, HttpClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn three() -> (Backend, Backend, Backend) {
    (
        Backend::start().await,
        Backend::start().await,
        Backend::start().await,
    )
}

/// 502 and 503 bodies with several endpoints name no address and no OS error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_bodies_leak_nothing_with_several_endpoints() -> Result<(), TcpPoolError> {
    let (a, b, c) = three().await;
    let pool = TcpPool::builder(a.addr_string())
        .endpoint(b.addr_string())
        .endpoint(c.addr_string())
        .max_size(1)
        .checkout_timeout(Duration::from_millis(200))
        .build()?;
    let client = HttpClient::new(testkit::serve(app::eager(&pool)).await);
    // 503: every endpoint's one connection held.
    let held: Vec<_> = join_all((0..3).map(|_| pool.get())).await;
    let r = client.get("/echo/x").await;
    assert_eq!(r.status.as_u16(), 503, "{r:?}");
    for be in [&a, &b, &c] {
        assert_no_leak(&r.body, be);
    }
    drop(held);
    for be in [&a, &b, &c] {
        be.stop().await;
    }
    let r = client.get("/echo/x").await;
    assert_eq!(r.status.as_u16(), 502, "{r:?}");
    for be in [&a, &b, &c] {
        assert_no_leak(&r.body, be);
    }
    Ok(())
}

/// A backend that accepts every connection and fails every exchange (closes on the request)
/// is ejected: a successful connect does not reset its count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepting_but_failing_every_exchange_is_ejected() -> Result<(), TcpPoolError> {
    let (a, b) = (Backend::start().await, Backend::start().await);
    let pool = TcpPool::builder(a.addr_string())
        .endpoint(b.addr_string())
        .balance(Balance::RoundRobin)
        .outlier_detection(OutlierDetection::new().consecutive_failures(3))
        .build()?;
    let mut on_a = 0;
    for _ in 0..20 {
        let mut conn = pool.get().await?;
        if conn.endpoint() == a.addr_string() {
            on_a += 1;
            conn.write_all(b"CLOSE\n").await?;
            let mut buf = [0u8; 8];
            let n = conn.read(&mut buf).await?;
            assert_eq!(n, 0);
        } else {
            conn.write_all(b"ECHO ok\n").await?;
            let mut buf = [0u8; 3];
            conn.read_exact(&mut buf).await?;
        }
    }
    let s = pool.state();
    assert!(s.endpoints[0].ejected, "{:?}", s.endpoints[0]);
    assert_eq!(
        on_a, 3,
        "a took three exchanges, then no more: {:?}",
        s.endpoints
    );
    Ok(())
}

/// One of three stopped mid-load: every request 200; it is ejected; after the ejection ends
/// and one more failure it is ejected again, for longer (times_ejected 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_three_down_every_request_200_and_reejection() -> Result<(), TcpPoolError> {
    let (a, b, c) = three().await;
    let pool = TcpPool::builder(a.addr_string())
        .endpoint(b.addr_string())
        .endpoint(c.addr_string())
        .outlier_detection(
            OutlierDetection::new()
                .consecutive_failures(2)
                .base_ejection_time(Duration::from_millis(100))
                .max_ejection_time(Duration::from_secs(10)),
        )
        .build()?;
    let client = HttpClient::new(testkit::serve(app::eager(&pool)).await);
    let mut failed = 0;
    for round in 0..10 {
        if round == 2 {
            a.stop().await;
        }
        let replies =
            join_all((0..8).map(|i| client.spawn_get(&format!("/echo/r{round}i{i}")))).await;
        failed += replies
            .into_iter()
            .filter(|r| r.as_ref().map_or(true, |r| r.status != 200))
            .count();
    }
    assert_eq!(failed, 0);
    let s = pool.state();
    assert!(s.endpoints[0].times_ejected >= 1, "{:?}", s.endpoints[0]);
    let before = s.endpoints[0].times_ejected;
    wait_pool(&pool, "a's ejection ends", |s| !s.endpoints[0].ejected).await;
    // Requests until a is tried once more (and ejected again).
    let mut rounds = 0;
    while pool.state().endpoints[0].times_ejected == before {
        rounds += 1;
        assert!(
            rounds < 200,
            "a never tried again: {:?}",
            pool.state().endpoints
        );
        assert_eq!(client.get("/echo/y").await.status, 200);
    }
    assert!(pool.state().endpoints[0].ejected);
    Ok(())
}

/// set_endpoints add/remove under HTTP load (enough connections that none waits): no request
/// fails, the removed endpoint ends with no connection open and gets none after removal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_endpoints_under_load_fails_no_request() -> Result<(), TcpPoolError> {
    let (a, b, c) = three().await;
    let pool = TcpPool::builder(a.addr_string())
        .endpoint(b.addr_string())
        .max_size(8)
        .build()?;
    let client = HttpClient::new(testkit::serve(app::eager(&pool)).await);
    let mut failed = 0;
    let mut a_accepts_at_removal = None;
    for round in 0..20 {
        let load: Vec<_> = (0..8)
            .map(|i| client.spawn_get(&format!("/echo/r{round}i{i}")))
            .collect();
        match round {
            5 => pool.set_endpoints([a.addr_string(), b.addr_string(), c.addr_string()])?,
            10 => {
                pool.set_endpoints([b.addr_string(), c.addr_string()])?;
                a_accepts_at_removal = Some(a.seen().accepts);
            }
            _ => {}
        }
        failed += join_all(load)
            .await
            .into_iter()
            .filter(|r| r.as_ref().map_or(true, |r| r.status != 200))
            .count();
    }
    assert_eq!(failed, 0);
    a.wait_for("a's connections closed", |s| s.open == 0).await;
    assert_eq!(Some(a.seen().accepts), a_accepts_at_removal);
    assert!(c.seen().accepts > 0);
    wait_pool(&pool, "a's counts retired", |s| {
        s.endpoints.len() == 2
            && s.connections == s.endpoints.iter().map(|e| e.connections).sum::<u32>()
    })
    .await;
    Ok(())
}

/// Bad sets are refused and leave the set as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sets_are_refused() -> Result<(), TcpPoolError> {
    let pool = TcpPool::builder("127.0.0.1:1")
        .endpoint("127.0.0.1:2")
        .build()?;
    assert!(pool.set_endpoints(Vec::<String>::new()).is_err());
    assert!(pool.set_endpoints(["127.0.0.1:3", "127.0.0.1:3"]).is_err());
    assert!(pool.set_endpoints(["127.0.0.1:3", "no-port"]).is_err());
    assert!(pool.set_endpoints(["unix:"]).is_err());
    assert_eq!(pool.endpoints(), ["127.0.0.1:1", "127.0.0.1:2"]);
    Ok(())
}

/// Every endpoint down: 502 (not 503), and recovery when one comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_down_502_then_recovery() -> Result<(), TcpPoolError> {
    let (a, b, c) = three().await;
    let pool = TcpPool::builder(a.addr_string())
        .endpoint(b.addr_string())
        .endpoint(c.addr_string())
        .outlier_detection(OutlierDetection::new().consecutive_failures(1))
        .build()?;
    let client = HttpClient::new(testkit::serve(app::eager(&pool)).await);
    assert_eq!(client.get("/echo/x").await.status, 200);
    for be in [&a, &b, &c] {
        be.stop().await;
    }
    for _ in 0..5 {
        assert_eq!(client.get("/echo/x").await.status, 502);
    }
    b.restart().await;
    // Within one backoff step of b.
    let (r, _) = client.get_when_back("/echo/x").await;
    assert_eq!(r.status, 200, "{r:?}");
    Ok(())
}

/// PooledFramed: a reply still owed survives into_connection (the plain connection is closed
/// as ReplyNotRead); expect_replies(2) with both replies read is reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framed_owed_reply_survives_into_connection() -> Result<(), TcpPoolError> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_util::codec::LinesCodec;
    let a = Backend::start().await;
    let pool = TcpPool::builder(a.addr_string()).max_size(1).build()?;
    let mut framed = pool.get().await?.framed(LinesCodec::new());
    framed.feed("ECHO a".to_owned()).await.expect("send");
    framed.feed("HOLD b".to_owned()).await.expect("send");
    SinkExt::<String>::flush(&mut framed).await.expect("flush");
    assert_eq!(
        framed.next().await.transpose().expect("line"),
        Some("a".into())
    );
    let conn = framed.into_connection().expect("nothing buffered");
    assert_eq!(
        conn.discard_reason(),
        Some(axum_tcp_pool::DiscardReason::ReplyNotRead)
    );
    drop(conn);
    a.release();
    a.wait_for("closed", |s| s.open == 0).await;
    let mut framed = pool.get().await?.framed(LinesCodec::new());
    framed.expect_replies(2);
    framed.send("TWICE c".to_owned()).await.expect("send");
    for _ in 0..2 {
        assert_eq!(
            framed.next().await.transpose().expect("line"),
            Some("c".into())
        );
    }
    drop(framed);
    drop(pool.get().await?);
    assert_eq!(a.seen().accepts, 2, "the TWICE connection was reused");
    Ok(())
}
