//! Rule 5: bad configuration is an error with a message that says what to fix, never a panic.
//! And `connect()`, the fail-fast way to build.

use std::time::Duration;

use axum_tcp_pool::{OutlierDetection, TcpPool, TcpPoolBuilder, TcpPoolError};
use testkit::Backend;

fn config_error(b: TcpPoolBuilder) -> String {
    match b.build() {
        Err(TcpPoolError::Config(msg)) => msg,
        Err(other) => panic!("expected a Config error, got {other:?}"),
        Ok(_) => panic!("expected a Config error, got a pool"),
    }
}

#[tokio::test]
async fn invalid_settings_are_errors_that_say_what_to_fix() {
    let b = || TcpPool::builder("127.0.0.1:6379");
    let cases: Vec<(TcpPoolBuilder, &str)> = vec![
        (b().max_size(0), "max_size"),
        (b().max_size(2).min_idle(3), "min_idle"),
        (b().checkout_timeout(Duration::ZERO), "checkout_timeout"),
        (b().connect_timeout(Duration::ZERO), "connect_timeout"),
        (b().idle_timeout(Some(Duration::ZERO)), "idle_timeout(None)"),
        (b().max_lifetime(Some(Duration::ZERO)), "max_lifetime(None)"),
        (b().keepalive(Some(Duration::ZERO)), "keepalive(None)"),
        (
            b().keepalive(Some(Duration::from_millis(500))),
            "between 1 s and 32767 s",
        ),
        (
            b().keepalive(Some(Duration::from_secs(40_000))),
            "between 1 s and 32767 s",
        ),
        (b().name(""), "name must not be empty"),
        (TcpPool::builder("127.0.0.1"), "no port"),
        (TcpPool::builder("localhost"), "host:port"),
        (TcpPool::builder("localhost:0"), "port 0"),
        (TcpPool::builder("localhost:http"), "no valid port"),
        (TcpPool::builder(""), "host:port"),
        (b().endpoint("127.0.0.1:6379"), "listed twice"),
        (b().endpoint("replica"), "no port"),
        (
            b().outlier_detection(OutlierDetection::new().consecutive_failures(0)),
            "OutlierDetection::disabled()",
        ),
        (
            b().outlier_detection(OutlierDetection::new().base_ejection_time(Duration::ZERO)),
            "base_ejection_time",
        ),
        (
            b().outlier_detection(
                OutlierDetection::new()
                    .base_ejection_time(Duration::from_secs(10))
                    .max_ejection_time(Duration::from_secs(5)),
            ),
            "max_ejection_time",
        ),
        (
            b().outlier_detection(OutlierDetection::new().max_ejected_percent(101)),
            "0 to 100",
        ),
        (b().resolve_endpoints(Duration::ZERO), "resolve_endpoints"),
    ];
    for (builder, hint) in cases {
        let msg = config_error(builder);
        assert!(
            msg.contains(hint),
            "message {msg:?} should mention {hint:?}"
        );
    }
    // None turns the timeouts off; that is valid.
    assert!(b().idle_timeout(None).max_lifetime(None).build().is_ok());
    assert!(b().max_size(1).min_idle(1).build().is_ok());
}

#[tokio::test]
async fn set_endpoints_refuses_a_bad_set_and_keeps_the_old_one() {
    let pool = TcpPool::builder("127.0.0.1:7001")
        .endpoint("127.0.0.1:7002")
        .build()
        .expect("valid");
    for (bad, hint) in [
        (vec![], "at least one endpoint"),
        (vec!["127.0.0.1:7003", "127.0.0.1:7003"], "listed twice"),
        (vec!["127.0.0.1:7003", "nowhere"], "no port"),
    ] {
        match pool.set_endpoints(bad) {
            Err(TcpPoolError::Config(msg)) => assert!(msg.contains(hint), "{msg}"),
            other => panic!("expected a Config error, got {other:?}"),
        }
        assert_eq!(pool.endpoints(), ["127.0.0.1:7001", "127.0.0.1:7002"]);
    }
}

#[test]
fn building_outside_a_tokio_runtime_is_an_error_not_a_panic() {
    let msg = config_error(TcpPool::builder("127.0.0.1:6379"));
    assert!(msg.contains("Tokio runtime"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_opens_min_idle_connections_before_returning() {
    let backend = Backend::start().await;
    let pool = TcpPool::builder(backend.addr_string())
        .max_size(5)
        .min_idle(3)
        .connect()
        .await
        .expect("backend is up");
    let s = pool.state();
    assert_eq!((s.connections, s.idle), (3, 3), "{s:?}");
    backend.wait_for("3 accepted", |s| s.accepts >= 3).await;
    assert_eq!(backend.seen().accepts, 3);

    let pool = TcpPool::builder(format!("localhost:{}", backend.addr.port()))
        .connect()
        .await
        .expect("a host name is resolved on connect");
    assert_eq!(
        pool.state().idle,
        1,
        "with min_idle 0, connect() opens one connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_fails_fast_when_the_backend_is_down() {
    let backend = Backend::start().await;
    backend.stop().await;
    let result = testkit::bounded(
        "connect() to a down backend",
        TcpPool::builder(backend.addr_string())
            .min_idle(2)
            .checkout_timeout(Duration::from_secs(3600))
            .connect(),
    )
    .await;
    match result {
        Err(TcpPoolError::BackendUnreachable(e)) => {
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}")
        }
        other => panic!("expected BackendUnreachable, got {other:?}"),
    }
    let err = TcpPool::builder("127.0.0.1:1").max_size(0).connect().await;
    assert!(matches!(err, Err(TcpPoolError::Config(_))));
}

/// Every duration setting at its largest value builds and works: a checkout, a reuse, and a
/// prompt `502` from a backend that refuses (no deadline arithmetic overflows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_duration_setting_works_at_its_largest() {
    let longest = |addr: String| {
        TcpPool::builder(addr)
            .max_size(1)
            .checkout_timeout(Duration::MAX)
            .connect_timeout(Duration::MAX)
            .idle_timeout(Some(Duration::MAX))
            .max_lifetime(Some(Duration::MAX))
            .keepalive(Some(Duration::from_secs(32767)))
            .build()
            .expect("the largest durations are valid")
    };
    let backend = Backend::start().await;
    let pool = longest(backend.addr_string());
    for _ in 0..2 {
        drop(
            testkit::bounded("checkout", pool.get())
                .await
                .expect("checkout"),
        );
    }
    // The pool's count is authoritative; the backend's accept count trails its accept.
    assert_eq!(pool.state().connections_created, 1, "reused");
    let seen = backend
        .wait_for("the connection accepted", |s| s.accepts >= 1)
        .await;
    assert_eq!(seen.accepts, 1, "reused");
    backend.stop().await;
    let refused = longest(backend.addr_string());
    let err = testkit::bounded("refused", refused.get()).await.map(drop);
    assert!(
        matches!(err, Err(TcpPoolError::BackendUnreachable(_))),
        "{err:?}"
    );
}
