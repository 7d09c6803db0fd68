//! What a checkout costs: `TcpPool::get` against raw bb8, and a full round trip.
//!
//! Everything runs against an echo backend on loopback, in one multi-thread Tokio runtime,
//! with a pool of `max_size(8).min_idle(1)`. Every benchmark finds an idle connection, so
//! these are the costs of the hot path: no connect, no waiting.
//!
//! ```text
//! cargo bench --bench checkout
//! ```

use std::time::Duration;

use axum_tcp_pool::TcpPool;
use criterion::{criterion_group, criterion_main, Criterion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;

/// One request line: 15 bytes and a newline.
const LINE: &[u8; 16] = b"0123456789abcde\n";

/// Starts a loopback echo server on `rt` and returns its address.
fn echo_backend(rt: &Runtime) -> String {
    rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the echo backend");
        let addr = listener.local_addr().expect("echo backend address");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = stream.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr.to_string()
    })
}

fn checkout(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("build the Tokio runtime");
    let addr = echo_backend(&rt);
    let pool = rt
        .block_on(TcpPool::builder(addr).max_size(8).min_idle(1).connect())
        .expect("connect the pool to the echo backend");
    let pool = &pool;

    let mut group = c.benchmark_group("checkout");

    // (a) One checkout and return through this crate: bb8, the peek health check, the
    // clean-state tracking and the return-time check.
    group.bench_function("tcp_pool_get_drop", |b| {
        b.to_async(&rt).iter(|| async move {
            let conn = pool.get().await.expect("checkout");
            drop(conn);
        })
    });

    // (b) The same through bb8 directly (the peek still runs: it is the manager's
    // `is_valid`), for comparison.
    group.bench_function("bb8_get_owned_drop", |b| {
        b.to_async(&rt).iter(|| async move {
            let conn = pool.bb8().get_owned().await.expect("checkout");
            drop(conn);
        })
    });

    // (c) A whole exchange: checkout, write a 16-byte line, read the 16-byte echo, return.
    group.bench_function("round_trip_16b", |b| {
        b.to_async(&rt).iter(|| async move {
            let mut conn = pool.get().await.expect("checkout");
            conn.write_all(LINE).await.expect("write");
            let mut reply = [0u8; 16];
            conn.read_exact(&mut reply).await.expect("read");
            assert_eq!(&reply, LINE);
            drop(conn);
        })
    });

    group.finish();

    let state = pool.state();
    assert_eq!(
        state.discards.total(),
        0,
        "every connection should have gone back clean: {state:?}"
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    targets = checkout
}
criterion_main!(benches);
