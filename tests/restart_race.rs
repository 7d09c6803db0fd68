//! A connect attempt that started while the backend was down and is seen failing after the
//! backend is back must not fail a checkout that began waiting after it started: with the
//! reconnect backoff off (with it on, that checkout fails with the attempt it waited for, as
//! a checkout waits for one connect attempt at most: see `tests/backoff.rs`).

#![cfg(target_os = "linux")]

use std::net::SocketAddr;
use std::time::Duration;

use axum_tcp_pool::TcpPool;
use socket2::{Domain, Socket, Type};
use testkit::bounded;

/// Whether a socket on this host is in SYN_SENT towards `port` (read from `/proc/net/tcp`).
fn syn_sent_to(port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    table.lines().skip(1).any(|line| {
        let mut f = line.split_whitespace().skip(2);
        let (Some(remote), Some(state)) = (f.next(), f.next()) else {
            return false;
        };
        let remote_port = remote
            .rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
        remote_port == Some(port) && state == "02"
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_connect_failure_does_not_fail_a_newer_checkout() {
    stale_failure_then_newer_checkout(Duration::from_secs(3600)).await;
}

/// The restarted checkout keeps the first one's deadline: a timeout too long to be one
/// (`Duration::MAX`) must not overflow there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_longest_checkout_timeout_survives_a_restarted_checkout() {
    stale_failure_then_newer_checkout(Duration::MAX).await;
}

async fn stale_failure_then_newer_checkout(checkout_timeout: Duration) {
    // The backend is "down" in a way that makes a connect hang: it listens but its accept
    // queue is full, so SYNs are dropped.
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    listener.bind(&addr.into()).expect("bind");
    listener.listen(0).expect("listen");
    let addr = listener
        .local_addr()
        .expect("local addr")
        .as_socket()
        .expect("inet");
    let mut fillers = Vec::new();
    while !syn_sent_to(addr.port()) && fillers.len() < 8 {
        // On loopback the handshake is done within connect(): each filler either completes
        // (the queue had room) or hangs in SYN_SENT (the queue is full).
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        s.set_nonblocking(true).expect("nonblocking");
        let _ = s.connect(&addr.into());
        fillers.push(s);
    }
    // Drop the hanging filler; keep the queue full with the completed ones.
    assert!(syn_sent_to(addr.port()), "could not fill the accept queue");
    fillers.pop();
    bounded("filler SYN gone", async {
        while syn_sent_to(addr.port()) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;

    let pool = TcpPool::builder(addr.to_string())
        .max_size(1)
        // Shorter than the first SYN retransmission (1 s): the hanging attempt times out.
        .connect_timeout(Duration::from_millis(600))
        .checkout_timeout(checkout_timeout)
        // The restarted checkout is the old behaviour, without the backoff.
        .reconnect_backoff(Duration::ZERO, Duration::ZERO)
        .build()
        .expect("valid pool");
    // The first checkout's attempt hangs.
    let first = tokio::spawn({
        let pool = pool.clone();
        async move { pool.get().await.map(drop) }
    });
    bounded("the first attempt hangs", async {
        while !syn_sent_to(addr.port()) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    // The backend comes back: its queue drains and it accepts (and keeps) connections.
    let listener = std::sync::Arc::new(listener);
    let acceptor = {
        let listener = listener.clone();
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            while let Ok((s, _)) = listener.accept() {
                kept.push(s);
                if kept.len() >= 16 {
                    break;
                }
            }
        })
    };
    // A checkout that starts now, while the stale attempt is still under way (and holds the
    // only slot), must get a connection when that attempt fails.
    let second = pool.get();
    let second = bounded("second checkout", second).await;
    let first = bounded("first checkout", first).await.expect("task");
    let s = pool.state();
    assert!(
        second.is_ok(),
        "the checkout that began after the backend came back failed: {second:?}; first: {first:?}; {s:?}"
    );
    assert!(s.connect_failures >= 1, "the stale attempt did fail: {s:?}");
    // The second checkout was started again inside bb8 (its stale wake-up found no attempt
    // under way); it is still one checkout.
    assert_eq!(s.gets, 2, "two calls to get, two checkouts: {s:?}");
    drop(second);
    drop(pool);
    drop(fillers);
    drop(acceptor);
}
