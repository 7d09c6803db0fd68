//! The `metrics` feature: what `record_metrics` exports, read back from a Prometheus recorder,
//! matches `pool.state()`, per pool and per discard reason.
#![cfg(feature = "metrics")]

use std::collections::HashMap;

use axum_tcp_pool::{metrics as names, DiscardReason, PoolState, TcpPool};
use http::StatusCode;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
use testkit::{app, serve, wait_pool, Backend, HttpClient};

/// `record_metrics` into `recorder`, rendered and parsed: series (`name{labels}`) to value.
fn scrape<M>(recorder: &PrometheusRecorder, pool: &TcpPool<M>) -> HashMap<String, f64> {
    metrics::with_local_recorder(recorder, || pool.record_metrics());
    parse(&recorder.handle().render())
}

fn parse(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("`series value`");
            (series.to_owned(), value.parse().expect("a number"))
        })
        .collect()
}

fn value(scraped: &HashMap<String, f64>, name: &str, labels: &str) -> f64 {
    let series = format!("{name}{{{labels}}}");
    match scraped.get(&series) {
        Some(v) => *v,
        None => panic!("{series} not exported; got {scraped:#?}"),
    }
}

/// Every exported series of `pool` against `state`.
fn assert_matches(scraped: &HashMap<String, f64>, pool: &str, max_size: u32, s: &PoolState) {
    let l = format!("pool=\"{pool}\"");
    let expected: [(&str, u64); 15] = [
        (names::CONNECTIONS, s.connections.into()),
        (names::IDLE_CONNECTIONS, s.idle.into()),
        (names::IN_USE_CONNECTIONS, s.in_use.into()),
        (names::MAX_CONNECTIONS, max_size.into()),
        (names::GETS, s.gets),
        (names::GETS_WAITED, s.gets_waited),
        (names::GETS_TIMED_OUT, s.gets_timed_out),
        (
            names::WAIT_TIME_MICROSECONDS,
            s.wait_time.as_micros() as u64,
        ),
        (names::CONNECTIONS_CREATED, s.connections_created),
        (names::CONNECT_FAILURES, s.connect_failures),
        (names::CLOSED_IDLE_TIMEOUT, s.closed_idle_timeout),
        (names::CLOSED_MAX_LIFETIME, s.closed_max_lifetime),
        (names::IDLE_PROBES, s.idle_probes),
        (names::IDLE_PROBE_FAILURES, s.idle_probe_failures),
        (names::CONNECTS_BACKED_OFF, s.connects_backed_off),
    ];
    for (name, want) in expected {
        assert_eq!(value(scraped, name, &l), want as f64, "{name} of {pool}");
    }
    for &reason in DiscardReason::ALL.iter() {
        let labels = format!("{l},reason=\"{}\"", reason.as_str());
        assert_eq!(
            value(scraped, names::DISCARDS, &labels),
            s.discards.get(reason) as f64,
            "discards of {pool} for {reason:?}"
        );
    }
}

#[tokio::test]
async fn exported_values_match_the_pool_state() {
    let backend = Backend::start().await;
    let pool = TcpPool::builder(backend.addr_string())
        .name("kv")
        .max_size(4)
        .build()
        .expect("pool");
    let client = HttpClient::new(serve(app::eager(&pool)).await);
    for path in ["/echo/one", "/echo/two", "/noread/x", "/discard", "/close"] {
        client.get(path).await;
    }
    let s = wait_pool(&pool, "three discards", |s| {
        s.in_use == 0 && s.discards.total() == 3
    })
    .await;
    assert_eq!(s.discards.reply_not_read, 1);
    assert_eq!(s.discards.explicit, 1);
    assert_eq!(s.discards.eof, 1);

    // The labels of pool "kv"'s `reply_not_read` discard series.
    const REPLY_NOT_READ: &str = "pool=\"kv\",reason=\"reply_not_read\"";
    let recorder = PrometheusBuilder::new().build_recorder();
    let scraped = scrape(&recorder, &pool);
    assert_matches(&scraped, "kv", 4, &pool.state());
    assert_eq!(value(&scraped, names::DISCARDS, REPLY_NOT_READ), 1.0);
    assert_eq!(value(&scraped, names::GETS, "pool=\"kv\""), 5.0);

    // Later scrapes follow the pool; counters are set, never added up twice.
    client.get("/noread/y").await;
    wait_pool(&pool, "four discards", |s| {
        s.in_use == 0 && s.discards.total() == 4
    })
    .await;
    let scraped = scrape(&recorder, &pool);
    let scraped_again = scrape(&recorder, &pool);
    assert_eq!(scraped, scraped_again, "recording twice changes nothing");
    assert_matches(&scraped, "kv", 4, &pool.state());
    assert_eq!(value(&scraped, names::DISCARDS, REPLY_NOT_READ), 2.0);
}

/// Failed connects and checkout timeouts reach their counters.
#[tokio::test]
async fn failures_and_timeouts_are_exported() {
    let backend = Backend::start().await;
    let pool = TcpPool::builder(backend.addr_string())
        .name("down")
        .max_size(1)
        .checkout_timeout(std::time::Duration::from_millis(100))
        .build()
        .expect("pool");
    let held = pool.get().await.expect("the one connection");
    assert!(matches!(
        pool.get().await,
        Err(axum_tcp_pool::TcpPoolError::CheckoutTimeout)
    ));
    drop(held);
    wait_pool(&pool, "connection back", |s| s.in_use == 0).await;
    backend.stop().await;
    let client = HttpClient::new(serve(app::eager(&pool)).await);
    // The idle connection is closed (by the health check, or by the EOF the exchange reads);
    // by the second request at the latest, a connect is tried and refused: 502.
    for _ in 0..2 {
        let res = client.get("/echo/x").await;
        assert_eq!(res.status, StatusCode::BAD_GATEWAY, "{res:?}");
    }
    wait_pool(&pool, "nothing open", |s| s.connections == 0).await;

    let s = pool.state();
    assert_eq!(s.gets_timed_out, 1);
    assert!(s.connect_failures >= 1);
    let recorder = PrometheusBuilder::new().build_recorder();
    let scraped = scrape(&recorder, &pool);
    assert_matches(&scraped, "down", 1, &s);
    assert_eq!(value(&scraped, names::GETS_TIMED_OUT, "pool=\"down\""), 1.0);
}

/// Two pools in one recorder: one set of series each, told apart by the `pool` label (the
/// name, or the address when unnamed).
#[tokio::test]
async fn each_pool_has_its_own_series() {
    let (a, b) = (Backend::start().await, Backend::start().await);
    let named = TcpPool::builder(a.addr_string())
        .name("cache")
        .build()
        .expect("pool");
    let unnamed = TcpPool::builder(b.addr_string())
        .max_size(3)
        .build()
        .expect("pool");
    drop(named.get().await.expect("connect"));
    wait_pool(&named, "returned", |s| s.idle == 1).await;

    let recorder = PrometheusBuilder::new().build_recorder();
    metrics::with_local_recorder(&recorder, || {
        named.record_metrics();
        unnamed.record_metrics();
    });
    let scraped = parse(&recorder.handle().render());
    assert_matches(&scraped, "cache", 10, &named.state());
    assert_matches(&scraped, &b.addr_string(), 3, &unnamed.state());
    assert_eq!(value(&scraped, names::GETS, "pool=\"cache\""), 1.0);
    assert_eq!(
        value(&scraped, names::GETS, &format!("pool=\"{}\"", b.addr)),
        0.0
    );
}

/// Without a recorder, recording is a no-op (and does not panic).
#[tokio::test]
async fn no_recorder_is_fine() {
    let pool = TcpPool::builder("127.0.0.1:9").build().expect("pool");
    pool.record_metrics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_endpoint_has_its_own_series_and_a_removed_one_goes_to_zero() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let (a, b) = (Backend::start().await, Backend::start().await);
    let pool = TcpPool::builder(a.addr_string())
        .endpoint(b.addr_string())
        .name("replicas")
        .max_size(3)
        .build()
        .expect("valid");
    // One connection of each endpoint in use.
    let (mut held, mut tries) = (Vec::new(), 0);
    while held.len() < 2 && tries < 100 {
        tries += 1;
        let conn = pool.get().await.expect("backend up");
        if held
            .iter()
            .all(|c: &axum_tcp_pool::TcpConnection| c.endpoint() != conn.endpoint())
        {
            held.push(conn);
        }
    }
    assert_eq!(
        held.len(),
        2,
        "both endpoints served within {tries} checkouts"
    );
    let scraped = scrape(&recorder, &pool);
    let s = pool.state();
    assert_eq!(
        value(&scraped, names::MAX_CONNECTIONS, "pool=\"replicas\""),
        6.0
    );
    for e in &s.endpoints {
        let l = format!("pool=\"replicas\",endpoint=\"{}\"", e.addr);
        assert_eq!(
            value(&scraped, names::ENDPOINT_CONNECTIONS, &l),
            e.connections as f64
        );
        assert_eq!(value(&scraped, names::ENDPOINT_IN_USE_CONNECTIONS, &l), 1.0);
        assert_eq!(
            value(&scraped, names::ENDPOINT_IDLE_CONNECTIONS, &l),
            e.idle as f64
        );
        assert_eq!(value(&scraped, names::ENDPOINT_EJECTED, &l), 0.0);
        assert_eq!(
            value(&scraped, names::ENDPOINT_CONSECUTIVE_FAILURES, &l),
            0.0
        );
        assert_eq!(value(&scraped, names::ENDPOINT_EJECTIONS, &l), 0.0);
        assert_eq!(
            value(&scraped, names::ENDPOINT_CHECKOUTS, &l),
            e.checkouts as f64
        );
    }
    drop(held);
    pool.set_endpoints([a.addr_string()]).expect("valid");
    b.wait_for("b's connections closed", |s| s.open == 0).await;
    let scraped = scrape(&recorder, &pool);
    let gone = format!("pool=\"replicas\",endpoint=\"{}\"", b.addr_string());
    assert_eq!(value(&scraped, names::ENDPOINT_CONNECTIONS, &gone), 0.0);
    assert_eq!(
        value(&scraped, names::ENDPOINT_IN_USE_CONNECTIONS, &gone),
        0.0
    );
}

/// The series `name` whose labels are exactly `labels`, in any order.
fn value_of(scraped: &HashMap<String, f64>, name: &str, labels: &[String]) -> f64 {
    let found = scraped.iter().find(|(series, _)| {
        let Some(rest) = series.strip_prefix(name).and_then(|r| r.strip_prefix('{')) else {
            return false;
        };
        let Some(inner) = rest.strip_suffix('}') else {
            return false;
        };
        let mut got: Vec<&str> = inner.split(',').collect();
        let mut want: Vec<&str> = labels.iter().map(String::as_str).collect();
        got.sort_unstable();
        want.sort_unstable();
        got == want
    });
    match found {
        Some((_, v)) => *v,
        None => panic!(
            "{name}{{{}}} not exported; got {scraped:#?}",
            labels.join(",")
        ),
    }
}

/// Several endpoints: a series per endpoint (labels `pool` and `endpoint`) with the figures of
/// `pool.state().endpoints`, an ejected one included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_endpoint_series_match_the_endpoint_state() {
    use axum_tcp_pool::{Balance, OutlierDetection};
    use std::time::Duration;
    let r = testkit::replicas::Replicas::start(3).await;
    let pool = r
        .builder()
        .name("rep")
        .balance(Balance::RoundRobin)
        .outlier_detection(
            OutlierDetection::new()
                .consecutive_failures(1)
                .base_ejection_time(Duration::from_secs(10))
                .max_ejection_time(Duration::from_secs(10)),
        )
        .build()
        .expect("pool");
    let client = HttpClient::new(serve(testkit::replicas::routes(&pool)).await);
    for i in 0..6 {
        client.get(&format!("/who/up{i}")).await;
    }
    r.backend(2).stop().await;
    for i in 0..6 {
        let res = client.get(&format!("/who/down{i}")).await;
        assert_eq!(res.status, StatusCode::OK, "{res:?}");
    }
    let s = wait_pool(&pool, "nothing in use", |s| s.in_use == 0).await;
    assert!(s.endpoints.iter().any(|e| e.ejected), "{s:?}");
    let recorder = PrometheusBuilder::new().build_recorder();
    let scraped = scrape(&recorder, &pool);
    // max_size 10 per endpoint, three endpoints.
    assert_matches(&scraped, "rep", 30, &s);
    for e in &s.endpoints {
        let labels = [
            "pool=\"rep\"".to_string(),
            format!("endpoint=\"{}\"", e.addr),
        ];
        let expected: [(&str, u64); 7] = [
            ("tcp_pool_endpoint_connections", e.connections.into()),
            ("tcp_pool_endpoint_idle_connections", e.idle.into()),
            ("tcp_pool_endpoint_in_use_connections", e.in_use.into()),
            ("tcp_pool_endpoint_ejected", u64::from(e.ejected)),
            (
                "tcp_pool_endpoint_consecutive_failures",
                e.consecutive_failures.into(),
            ),
            ("tcp_pool_endpoint_ejections_total", e.times_ejected),
            ("tcp_pool_endpoint_checkouts_total", e.checkouts),
        ];
        for (name, want) in expected {
            assert_eq!(
                value_of(&scraped, name, &labels),
                want as f64,
                "{name} of {}",
                e.addr
            );
        }
    }
}
