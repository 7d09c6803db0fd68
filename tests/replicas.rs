//! Several endpoints per pool: three backends on their own loopback ports behind one pool,
//! a real axum server and a real HTTP client. Balancing, failover inside a checkout, outlier
//! ejection, `set_endpoints` under load, and the per-endpoint `max_size`.
//!
//! The waits are on events (backend counts, channels) except where only the pool's state
//! knows (ejected or not): the pool has no change notification, so those are bounded polls of
//! `pool.state()` (`testkit::replicas::wait_endpoint`). Ejection times are small (200 ms).
//! Each test prints its figures (`--nocapture`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum_tcp_pool::{Balance, EndpointState, OutlierDetection, TcpPool};
use http::StatusCode;
use testkit::replicas::{routes, split_reply, wait_endpoint, Replicas};
use testkit::{serve, HttpClient};
use tokio::sync::RwLock;
use tokio::task::JoinHandle;

/// The ejection settings of these tests: 3 failures in a row, 200 ms × n, at most 2 s.
const FAILURES: u32 = 3;
const BASE: Duration = Duration::from_millis(200);
const MAX_EJECTION: Duration = Duration::from_secs(2);

/// The same with ejections that outlast the test (10 s).
fn long_ejection() -> OutlierDetection {
    detection()
        .base_ejection_time(Duration::from_secs(10))
        .max_ejection_time(Duration::from_secs(10))
}

fn detection() -> OutlierDetection {
    OutlierDetection::new()
        .consecutive_failures(FAILURES)
        .base_ejection_time(BASE)
        .max_ejection_time(MAX_EJECTION)
        .max_ejected_percent(50)
}

/// What the requests of a load got.
#[derive(Debug, Default)]
struct Tally {
    ok: usize,
    /// `200`s by the endpoint that served them.
    by_endpoint: BTreeMap<String, usize>,
    /// Anything but a `200` with the request's own tag.
    failed: Vec<String>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        for (k, v) in other.by_endpoint {
            *self.by_endpoint.entry(k).or_default() += v;
        }
        self.failed.extend(other.failed);
    }
    fn served_by(&self, addr: &str) -> usize {
        self.by_endpoint.get(addr).copied().unwrap_or(0)
    }
}

/// Concurrent workers sending `/who/<tag>` back to back, until stopped or `limit` requests.
/// With a gate, each request holds a read guard of it: the test takes the write guard to
/// have no request in flight for a moment.
struct Load {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<Tally>>,
}

impl Load {
    fn start(
        client: &HttpClient,
        workers: usize,
        limit: usize,
        gate: Option<Arc<RwLock<()>>>,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicUsize::new(0));
        let workers = (0..workers)
            .map(|_| {
                let (client, stop, next, gate) =
                    (client.clone(), stop.clone(), next.clone(), gate.clone());
                tokio::spawn(async move {
                    let mut tally = Tally::default();
                    loop {
                        let i = next.fetch_add(1, SeqCst);
                        if i >= limit || stop.load(SeqCst) {
                            return tally;
                        }
                        let _guard = match &gate {
                            Some(g) => Some(g.read().await),
                            None => None,
                        };
                        let tag = format!("t{i}");
                        let r = testkit::bounded(&format!("request {tag}"), async {
                            client.try_get(&format!("/who/{tag}")).await
                        })
                        .await;
                        match r {
                            Ok(r) if r.status == StatusCode::OK => match split_reply(&r.body) {
                                Some((endpoint, got)) if got == tag => {
                                    tally.ok += 1;
                                    *tally.by_endpoint.entry(endpoint.to_string()).or_default() +=
                                        1;
                                }
                                _ => tally.failed.push(format!("{tag}: 200 {:?}", r.body)),
                            },
                            Ok(r) => tally
                                .failed
                                .push(format!("{tag}: {} {:?}", r.status, r.body)),
                            Err(e) => tally.failed.push(format!("{tag}: {e}")),
                        }
                    }
                })
            })
            .collect();
        Load { stop, workers }
    }

    /// Stops the workers (each finishes its request) and adds up what they got.
    async fn finish(self) -> Tally {
        self.stop.store(true, SeqCst);
        self.join().await
    }

    async fn join(self) -> Tally {
        let mut total = Tally::default();
        for w in self.workers {
            total.merge(testkit::bounded("load worker", w).await.expect("worker"));
        }
        total
    }

    /// `total` requests from `workers` workers, to the end.
    async fn run(client: &HttpClient, workers: usize, total: usize) -> Tally {
        Load::start(client, workers, total, None).join().await
    }
}

/// Three backends, a pool over them configured by `f`, the app served.
async fn three(
    f: impl FnOnce(axum_tcp_pool::TcpPoolBuilder) -> axum_tcp_pool::TcpPoolBuilder,
) -> (Replicas, TcpPool, HttpClient) {
    let r = Replicas::start(3).await;
    let pool = f(r.builder()).build().expect("valid pool");
    let addr = serve(routes(&pool)).await;
    (r, pool, HttpClient::new(addr))
}

fn endpoint(pool: &TcpPool, addr: &str) -> EndpointState {
    testkit::replicas::endpoint_state(pool, addr)
        .unwrap_or_else(|| panic!("the pool has no endpoint {addr}: {:?}", pool.endpoints()))
}

fn figures(pool: &TcpPool) -> String {
    pool.state()
        .endpoints
        .iter()
        .map(|e| {
            format!(
                "{} checkouts={} conns={} idle={} in_use={} ejected={} failures={} times_ejected={}",
                e.addr,
                e.checkouts,
                e.connections,
                e.idle,
                e.in_use,
                e.ejected,
                e.consecutive_failures,
                e.times_ejected
            )
        })
        .collect::<Vec<_>>()
        .join("\n  ")
}

/// Connect failures, those refused by the reconnect backoff (no SYN) included: both count
/// for outlier detection.
fn failures(pool: &TcpPool) -> u64 {
    let s = pool.state();
    s.connect_failures + s.connects_backed_off
}

async fn get_ok(client: &HttpClient, tag: &str) -> String {
    let r = client.get(&format!("/who/{tag}")).await;
    assert_eq!(r.status, StatusCode::OK, "{tag}: {r:?}");
    let (endpoint, got) = split_reply(&r.body).expect("endpoint and tag");
    assert_eq!(got, tag);
    endpoint.to_string()
}

// ---------------------------------------------------------------------------------------
// Balancing.

/// 600 requests from 12 workers: every one `200`, the checkouts each endpoint counts are the
/// requests it served and the lines its backend read.
async fn spread(balance: Balance) -> (Replicas, Tally, TcpPool) {
    let (r, pool, client) = three(|b| b.balance(balance).max_size(8)).await;
    let tally = Load::run(&client, 12, 600).await;
    eprintln!(
        "spread {balance:?}: ok={} by_endpoint={:?}\n  {}",
        tally.ok,
        tally.by_endpoint,
        figures(&pool)
    );
    assert!(tally.failed.is_empty(), "{:?}", tally.failed);
    assert_eq!(tally.ok, 600);
    for (i, addr) in r.addrs().iter().enumerate() {
        let e = endpoint(&pool, addr);
        assert_eq!(e.checkouts as usize, tally.served_by(addr), "{addr}");
        assert_eq!(r.backend(i).seen().lines, tally.served_by(addr), "{addr}");
        assert!(r.backend(i).seen().max_open <= 8, "{addr}");
    }
    (r, tally, pool)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_checkouts_evenly() {
    let (r, tally, _pool) = spread(Balance::RoundRobin).await;
    // In turn: each endpoint gets a third, give or take the requests in flight.
    for addr in r.addrs() {
        let n = tally.served_by(&addr);
        assert!(
            (200 - 12..=200 + 12).contains(&n),
            "{addr} served {n} of 600"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_loaded_spreads_checkouts_over_every_endpoint() {
    let (r, tally, _pool) = spread(Balance::LeastLoaded).await;
    for addr in r.addrs() {
        let n = tally.served_by(&addr);
        assert!(n >= 30, "{addr} served {n} of 600: {:?}", tally.by_endpoint);
    }
}

/// One request at a time (every endpoint's load is 0 at each choice): `LeastLoaded` still
/// uses every endpoint. An endpoint without an idle connection must not lose every choice to
/// one with an idle connection, or it never opens its first (a new endpoint added by
/// `set_endpoints`, or one back from an outage, likewise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_loaded_spreads_one_request_at_a_time_over_every_endpoint() {
    let (r, pool, client) = three(|b| b.balance(Balance::LeastLoaded)).await;
    let tally = Load::run(&client, 1, 300).await;
    let served: Vec<usize> = r.addrs().iter().map(|a| tally.served_by(a)).collect();
    eprintln!(
        "least loaded, one at a time: served {served:?}\n  {}",
        figures(&pool)
    );
    assert!(tally.failed.is_empty(), "{:?}", tally.failed);
    assert!(served.iter().all(|&n| n >= 30), "served {served:?} of 300");
}

/// No `balance` set: the slow endpoint gets fewer requests than each of the others, which
/// round robin would not do (see the next test): the default is `LeastLoaded`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_loaded_is_the_default() {
    let (r, pool, client) = three(|b| b.max_size(8)).await;
    assert_eq!(pool.endpoints(), r.addrs());
    r.backend(1).set_delay(Duration::from_millis(5));
    let tally = Load::run(&client, 12, 600).await;
    assert!(tally.failed.is_empty(), "{:?}", tally.failed);
    let served: Vec<usize> = r.addrs().iter().map(|a| tally.served_by(a)).collect();
    eprintln!(
        "default balancer, backend 1 +5 ms: served {served:?}\n  {}",
        figures(&pool)
    );
    assert!(
        served[1] < served[0] && served[1] < served[2],
        "served {served:?}"
    );
}

/// One backend 5 ms slower per reply: under `LeastLoaded` it serves fewer requests than each
/// of the others; under `RoundRobin` (the contrast) it gets its third.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoint_gets_fewer_requests_under_least_loaded() {
    for balance in [Balance::LeastLoaded, Balance::RoundRobin] {
        let (r, pool, client) = three(|b| b.balance(balance).max_size(8)).await;
        r.backend(1).set_delay(Duration::from_millis(5));
        let tally = Load::run(&client, 12, 600).await;
        let addrs = r.addrs();
        let served: Vec<usize> = addrs.iter().map(|a| tally.served_by(a)).collect();
        eprintln!(
            "slow endpoint (backend 1, +5 ms) {balance:?}: served {served:?}\n  {}",
            figures(&pool)
        );
        assert!(tally.failed.is_empty(), "{:?}", tally.failed);
        assert_eq!(tally.ok, 600);
        if matches!(balance, Balance::LeastLoaded) {
            assert!(
                served[1] < served[0] && served[1] < served[2],
                "the slow endpoint served {served:?}"
            );
        } else {
            assert!(served[1] >= 200 - 12, "round robin: {served:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Failover and ejection.

/// Backend 1 stopped under load (with no request in flight on it at that instant: the gate):
/// every request `200`; it is ejected after the configured failures, takes traffic again after
/// the ejection time, is ejected again (still down), and serves again once it is back.
async fn stopped_mid_load(balance: Balance) -> (Replicas, TcpPool, HttpClient) {
    let (r, pool, client) = three(|b| {
        b.balance(balance)
            .max_size(4)
            .connect_timeout(Duration::from_millis(500))
            .checkout_timeout(Duration::from_secs(2))
            .outlier_detection(detection())
    })
    .await;
    let down = r.addrs()[1].clone();
    let gate = Arc::new(RwLock::new(()));
    let load = Load::start(&client, 8, 200_000, Some(gate.clone()));
    r.backend(1)
        .wait_for("backend 1 serves under load", |s| s.replies >= 30)
        .await;
    let failures_at_stop = {
        // A request in flight on backend 1 when it dies fails (its reply never comes): that
        // is the handler's exchange, not a checkout. Stop it between two requests, counting
        // failures from just before (after, the load may already have made them).
        let _quiet = gate.write().await;
        let before = failures(&pool);
        r.backend(1).stop().await;
        before
    };
    let first = wait_endpoint(&pool, &down, "backend 1 ejected", |e| {
        e.is_some_and(|e| e.times_ejected >= 1)
    })
    .await
    .expect("endpoint");
    let failures_at_ejection = failures(&pool) - failures_at_stop;
    eprintln!(
        "stopped mid-load {balance:?}: ejected after {failures_at_ejection} connect failures: {first:?}"
    );
    assert!(
        failures_at_ejection >= u64::from(FAILURES),
        "ejected after {failures_at_ejection} failures, configured {FAILURES}"
    );
    // The ejection ends, it takes traffic again, fails, and is ejected again.
    let again = wait_endpoint(&pool, &down, "backend 1 ejected a second time", |e| {
        e.is_some_and(|e| e.times_ejected >= 2)
    })
    .await
    .expect("endpoint");
    eprintln!("stopped mid-load {balance:?}: ejected again: {again:?}");
    let tally = load.finish().await;
    eprintln!(
        "stopped mid-load {balance:?}: ok={} failed={} by_endpoint={:?}\n  {}",
        tally.ok,
        tally.failed.len(),
        tally.by_endpoint,
        figures(&pool)
    );
    assert!(tally.failed.is_empty(), "{:?}", tally.failed);
    assert!(tally.ok > 0);
    // No more than one of three ejected at once (50%, rounded down).
    let ejected = pool.state().endpoints.iter().filter(|e| e.ejected).count();
    assert!(ejected <= 1, "{}", figures(&pool));
    (r, pool, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stopped_mid_load_least_loaded() {
    let (r, pool, client) = stopped_mid_load(Balance::LeastLoaded).await;
    // Back: under load it serves again once its ejection is over.
    let replies = r.backend(1).seen().replies;
    r.backend(1).restart().await;
    let load = Load::start(&client, 8, 200_000, None);
    r.backend(1)
        .wait_for("backend 1 serves again", |s| s.replies >= replies + 10)
        .await;
    let tally = load.finish().await;
    eprintln!(
        "restarted under load: ok={} by_endpoint={:?}\n  {}",
        tally.ok,
        tally.by_endpoint,
        figures(&pool)
    );
    assert!(tally.failed.is_empty(), "{:?}", tally.failed);
    let e = endpoint(&pool, &r.addrs()[1]);
    assert!(!e.ejected, "{e:?}");
}

/// The same under `RoundRobin`, then, with one request at a time (in turn, so every third
/// goes to the stopped backend first): after its ejection ends, ONE more failure ejects it
/// again, for longer (base × n); once it is back it serves and its count is reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stopped_mid_load_round_robin_ejected_again_for_longer() {
    let (r, pool, client) = stopped_mid_load(Balance::RoundRobin).await;
    let down = r.addrs()[1].clone();
    for round in 0..2 {
        // Still down; wait for the ejection to end.
        let e = wait_endpoint(&pool, &down, "ejection over", |e| {
            e.is_some_and(|e| !e.ejected)
        })
        .await
        .expect("endpoint");
        let (times, failures_before) = (e.times_ejected, failures(&pool));
        let sent = Instant::now();
        let mut requests = 0;
        while endpoint(&pool, &down).times_ejected == times {
            assert!(
                requests < 6,
                "never sent to the stopped endpoint: {}",
                figures(&pool)
            );
            get_ok(&client, &format!("again{round}-{requests}")).await;
            requests += 1;
        }
        let failed = failures(&pool) - failures_before;
        assert_eq!(failed, 1, "ejected again after {failed} failures");
        let e = endpoint(&pool, &down);
        assert!(e.ejected, "{e:?}");
        wait_endpoint(&pool, &down, "the longer ejection over", |e| {
            e.is_some_and(|e| !e.ejected)
        })
        .await;
        // A lower bound (the ejection started after `sent`), so a correct pool cannot fail
        // it: failing again right after an ejection makes the next one at least 2 × base (n
        // falls back by one per base ejection time after an ejection ends, and this failure
        // came within a few milliseconds of the end).
        let took = sent.elapsed();
        eprintln!(
            "round robin: ejection {} after 1 failure ({requests} requests): lasted at least {took:?} (base {BASE:?}, max {MAX_EJECTION:?})",
            e.times_ejected
        );
        assert!(
            took >= BASE * 2,
            "ejection {} lasted {took:?}",
            e.times_ejected
        );
    }
    // Back: it serves again, and a clean return resets its count.
    r.backend(1).restart().await;
    let mut served = 0;
    for i in 0..9 {
        if get_ok(&client, &format!("back{i}")).await == down {
            served += 1;
        }
    }
    let e = endpoint(&pool, &down);
    eprintln!("round robin: back: served {served} of 9: {e:?}");
    assert!(served >= 2, "{}", figures(&pool));
    assert_eq!(e.consecutive_failures, 0, "{e:?}");
    assert!(!e.ejected, "{e:?}");
}

/// With one request at a time in turn, the stopped endpoint is ejected by exactly its
/// `consecutive_failures`-th failure, not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejected_after_exactly_the_configured_failures() {
    let (r, pool, client) = three(|b| {
        b.balance(Balance::RoundRobin)
            .outlier_detection(long_ejection())
    })
    .await;
    for i in 0..6 {
        get_ok(&client, &format!("warm{i}")).await;
    }
    r.backend(2).stop().await;
    let down = r.addrs()[2].clone();
    let mut seen = Vec::new();
    for i in 0..30 {
        get_ok(&client, &format!("r{i}")).await;
        let e = endpoint(&pool, &down);
        seen.push((e.consecutive_failures, e.ejected));
        if e.ejected {
            break;
        }
        assert!(e.consecutive_failures < FAILURES, "{e:?}");
    }
    eprintln!("exact: (failures, ejected) after each request: {seen:?}");
    let e = endpoint(&pool, &down);
    assert!(e.ejected, "never ejected: {e:?}");
    assert_eq!(e.times_ejected, 1);
    // The failures before the ejection went 1, 2, … up to the configured count.
    let counts: Vec<u32> = seen.iter().map(|&(f, _)| f).filter(|&f| f > 0).collect();
    assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    // Connects failed or refused by the reconnect backoff (no SYN): both are failures.
    let s = pool.state();
    assert_eq!(
        s.connect_failures + s.connects_backed_off,
        u64::from(FAILURES),
        "{s:?}"
    );
}

/// Every backend down: `502` (not a `503` after the checkout timeout: every endpoint was
/// tried and failed), and requests succeed again within one backoff step after one comes
/// back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_stopped_502_then_recovery_when_one_returns() {
    let connect_timeout = Duration::from_millis(500);
    let checkout_timeout = Duration::from_secs(3);
    let (r, pool, client) = three(|b| {
        b.connect_timeout(connect_timeout)
            .checkout_timeout(checkout_timeout)
            .outlier_detection(detection())
    })
    .await;
    for i in 0..6 {
        get_ok(&client, &format!("warm{i}")).await;
    }
    for b in &r.backends {
        b.stop().await;
    }
    let mut took = Vec::new();
    for i in 0..8 {
        let start = Instant::now();
        let reply = client.get(&format!("/who/down{i}")).await;
        took.push(start.elapsed());
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{reply:?}");
        testkit::assert_no_leak(&reply.body, r.backend(0));
    }
    let ejected = pool.state().endpoints.iter().filter(|e| e.ejected).count();
    eprintln!(
        "all stopped: 8 × 502 in {took:?} (connect timeout {connect_timeout:?}, checkout timeout {checkout_timeout:?}); ejected {ejected}\n  {}",
        figures(&pool)
    );
    assert!(ejected <= 1, "{}", figures(&pool));
    // Refused connects fail at once: the 502 did not wait out a timeout.
    assert!(took.iter().all(|t| *t < checkout_timeout), "{took:?}");

    r.backend(2).restart().await;
    // Within one backoff step of backend 2.
    let (reply, failed) = client.get_when_back("/who/first-after").await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let (served, _) = split_reply(&reply.body).expect("endpoint and tag");
    eprintln!("all stopped: after backend 2 is back, {failed} × 502 then 200 from {served}");
    assert_eq!(served, r.addrs()[2]);
}

/// `max_ejected_percent`: of three endpoints with two down, 50% ejects one (rounded down) and
/// the other keeps being tried; 100% ejects both; the healthy one serves every request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_ejected_percent_is_respected() {
    for (percent, most) in [(50u32, 1usize), (100, 2), (0, 0)] {
        let (r, pool, client) = three(|b| {
            b.balance(Balance::RoundRobin).outlier_detection(
                detection()
                    .base_ejection_time(Duration::from_secs(10))
                    .max_ejection_time(Duration::from_secs(10))
                    .max_ejected_percent(percent),
            )
        })
        .await;
        r.backend(0).stop().await;
        r.backend(1).stop().await;
        let addrs = r.addrs();
        let mut max_ejected = 0;
        for i in 0..30 {
            assert_eq!(get_ok(&client, &format!("p{percent}-{i}")).await, addrs[2]);
            let s = pool.state();
            max_ejected = max_ejected.max(s.endpoints.iter().filter(|e| e.ejected).count());
        }
        let (a, b) = (endpoint(&pool, &addrs[0]), endpoint(&pool, &addrs[1]));
        eprintln!(
            "max_ejected_percent {percent}: at most {max_ejected} ejected at once\n  {}",
            figures(&pool)
        );
        assert_eq!(max_ejected, most, "{}", figures(&pool));
        // Both failed enough to be ejected; the limit held the rest back.
        assert!(
            [&a, &b]
                .iter()
                .all(|e| e.ejected || e.consecutive_failures >= FAILURES),
            "{a:?} {b:?}"
        );
    }
}

/// A pool of one endpoint never ejects it: `502` while it is down, `200` within one backoff
/// step when back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_of_one_never_ejects_its_endpoint() {
    let r = Replicas::start(1).await;
    let pool = r
        .builder()
        .outlier_detection(detection().consecutive_failures(1))
        .build()
        .expect("pool");
    let client = HttpClient::new(serve(routes(&pool)).await);
    get_ok(&client, "warm").await;
    r.backend(0).stop().await;
    for i in 0..5 {
        let reply = client.get(&format!("/who/down{i}")).await;
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{reply:?}");
    }
    let e = endpoint(&pool, &r.addrs()[0]);
    eprintln!("pool of one, down: {e:?}");
    assert!(!e.ejected, "{e:?}");
    assert!(e.consecutive_failures >= 1, "{e:?}");
    r.backend(0).restart().await;
    // Within one backoff step.
    let (reply, _) = client.get_when_back("/who/back").await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
}

/// `OutlierDetection::disabled()`: a stopped endpoint is never ejected, and failover still
/// keeps every request `200`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_outlier_detection_never_ejects() {
    let (r, pool, client) = three(|b| {
        b.balance(Balance::RoundRobin)
            .outlier_detection(OutlierDetection::disabled())
    })
    .await;
    r.backend(0).stop().await;
    for i in 0..30 {
        get_ok(&client, &format!("d{i}")).await;
    }
    let e = endpoint(&pool, &r.addrs()[0]);
    eprintln!("disabled: {e:?}");
    assert!(!e.ejected && e.times_ejected == 0, "{e:?}");
    let s = pool.state();
    assert!(
        s.connect_failures + s.connects_backed_off >= 5,
        "{}",
        figures(&pool)
    );
}

/// A backend that accepts connections and fails every exchange (closes the connection
/// after reading the command) is ejected: a successful connect does not reset the count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_failures_eject_an_endpoint_that_accepts() {
    use axum::routing::get;
    let r = Replicas::start(3).await;
    let pool = r
        .builder()
        .balance(Balance::RoundRobin)
        .outlier_detection(long_ejection())
        .build()
        .expect("pool");
    // `/close` sends CLOSE: the backend closes without replying, the read sees EOF.
    async fn close(
        mut conn: axum_tcp_pool::TcpConnection,
    ) -> Result<String, axum_tcp_pool::TcpPoolError> {
        use tokio::io::AsyncWriteExt;
        conn.write_all(b"CLOSE\n").await?;
        Ok(testkit::read_line(&mut conn).await?)
    }
    let app = routes(&pool).merge(
        axum::Router::new()
            .route("/close", get(close))
            .layer(axum_tcp_pool::TcpPoolLayer::new(pool.clone())),
    );
    let client = HttpClient::new(serve(app).await);
    let mut statuses = BTreeMap::<u16, usize>::new();
    for _ in 0..30 {
        if pool.state().endpoints.iter().any(|e| e.ejected) {
            break;
        }
        // In turn, so every endpoint fails alike: the first to fail three times in a row is
        // ejected, though every connect to it succeeded.
        let reply = client.get("/close").await;
        *statuses.entry(reply.status.as_u16()).or_default() += 1;
    }
    eprintln!(
        "exchange failures: statuses {statuses:?}\n  {}",
        figures(&pool)
    );
    let ejected = pool.state().endpoints.iter().filter(|e| e.ejected).count();
    assert_eq!(ejected, 1, "{}", figures(&pool));
    // Every backend accepted connections: these were exchange failures, not connect ones.
    assert_eq!(pool.state().connect_failures, 0);
    assert!(r.seen().iter().all(|s| s.accepts >= 1));
}

/// A brand-new connection that fails its health check is the backend failing: backend 0
/// answers 1 s late, so the probe (bounded by the 200 ms connect timeout) fails on every new
/// connection to it, and it is ejected; every request is served by the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_connections_failing_the_health_check_count() {
    use tokio::io::AsyncWriteExt;
    let (r, pool, client) = three(|b| {
        b.balance(Balance::RoundRobin)
            .max_size(2)
            .connect_timeout(Duration::from_millis(200))
            .checkout_timeout(Duration::from_secs(5))
            .outlier_detection(long_ejection())
            .health_check(async |stream: &mut axum_tcp_pool::BackendStream| {
                stream.write_all(b"PING\n").await?;
                match testkit::read_line(stream).await?.as_str() {
                    "PONG" => Ok(()),
                    _ => Err(std::io::Error::other("bad PING reply")),
                }
            })
    })
    .await;
    r.backend(0).set_delay(Duration::from_secs(1));
    let slow = r.addrs()[0].clone();
    let mut served = BTreeMap::<String, usize>::new();
    for i in 0..12 {
        *served
            .entry(get_ok(&client, &format!("h{i}")).await)
            .or_default() += 1;
    }
    let e = endpoint(&pool, &slow);
    eprintln!(
        "health check: served {served:?}; discards {:?}\n  {}",
        pool.state().discards,
        figures(&pool)
    );
    assert!(e.ejected && e.times_ejected == 1, "{e:?}");
    assert!(!served.contains_key(&slow), "{served:?}");
    // Two new connections failing (the second opened after the first failed) back the
    // endpoint off: the failures in a row are those two and a connect the backoff refused.
    let s = pool.state();
    assert!(s.discards.health_check >= 2, "{s:?}");
    assert!(
        s.discards.health_check + s.connects_backed_off >= u64::from(FAILURES),
        "{s:?}"
    );
}

/// An idle connection the backend closed (a restart) does not count as a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_found_closed_do_not_count() {
    let (r, pool, client) = three(|b| {
        b.balance(Balance::RoundRobin)
            .outlier_detection(detection().consecutive_failures(1))
    })
    .await;
    for i in 0..6 {
        get_ok(&client, &format!("warm{i}")).await;
    }
    for b in &r.backends {
        b.close_all().await;
    }
    for i in 0..6 {
        get_ok(&client, &format!("after{i}")).await;
    }
    eprintln!(
        "idle closed: discards {:?}\n  {}",
        pool.state().discards,
        figures(&pool)
    );
    for e in pool.state().endpoints {
        assert!(!e.ejected && e.times_ejected == 0, "{e:?}");
        assert_eq!(e.consecutive_failures, 0, "{e:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Run-time changes.

/// Without load: a kept endpoint keeps its idle connection, a removed one's idle connection
/// is closed at once, a new one starts empty and takes traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_endpoints_keeps_kept_closes_removed_and_adds_new() {
    let r = Replicas::start(3).await;
    let addrs = r.addrs();
    let pool = testkit::replicas::builder_for(&addrs[..2])
        .balance(Balance::RoundRobin)
        .build()
        .expect("pool");
    let client = HttpClient::new(serve(routes(&pool)).await);
    for i in 0..8 {
        get_ok(&client, &format!("before{i}")).await;
    }
    let (a0, b0) = (r.backend(0).seen(), r.backend(1).seen());
    assert!(a0.open >= 1 && b0.open >= 1);
    pool.set_endpoints([addrs[1].clone(), addrs[2].clone()])
        .expect("set_endpoints");
    assert_eq!(pool.endpoints(), vec![addrs[1].clone(), addrs[2].clone()]);
    r.backend(0)
        .wait_for("the removed endpoint's idle connections closed", |s| {
            s.open == 0
        })
        .await;
    let b = endpoint(&pool, &addrs[1]);
    let c = endpoint(&pool, &addrs[2]);
    eprintln!("set_endpoints, quiet: kept {b:?}\n  new {c:?}");
    assert_eq!(
        r.backend(1).seen().open,
        b0.open,
        "the kept one kept its connections"
    );
    assert!(b.idle >= 1, "{b:?}");
    assert_eq!((c.connections, c.checkouts), (0, 0), "{c:?}");
    let mut by = BTreeMap::<String, usize>::new();
    for i in 0..8 {
        *by.entry(get_ok(&client, &format!("after{i}")).await)
            .or_default() += 1;
    }
    eprintln!("set_endpoints, quiet: served after {by:?}");
    assert!(!by.contains_key(&addrs[0]), "{by:?}");
    assert!(by.get(&addrs[2]).is_some_and(|&n| n >= 1), "{by:?}");
    assert_eq!(r.backend(0).seen().accepts, a0.accepts);
    assert_eq!(
        r.backend(1).seen().accepts,
        b0.accepts,
        "kept: no new connection needed"
    );
}

/// Under load: add a third endpoint, then remove the first. No request fails; the new one
/// takes traffic; the removed one's connections close when their requests end and it gets
/// no new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_endpoints_add_and_remove_under_load() {
    let r = Replicas::start(3).await;
    let addrs = r.addrs();
    let pool = testkit::replicas::builder_for(&addrs[..2])
        .max_size(4)
        .build()
        .expect("pool");
    let client = HttpClient::new(serve(routes(&pool)).await);
    let load = Load::start(&client, 8, 200_000, None);
    for i in 0..2 {
        r.backend(i)
            .wait_for("the first two serve", |s| s.replies >= 20)
            .await;
    }
    pool.set_endpoints(addrs.clone()).expect("add");
    r.backend(2)
        .wait_for("the added one serves", |s| s.replies >= 20)
        .await;
    pool.set_endpoints([addrs[1].clone(), addrs[2].clone()])
        .expect("remove");
    let at_call = r.backend(0).seen();
    let drained = r
        .backend(0)
        .wait_for("the removed one has no connection open", |s| s.open == 0)
        .await;
    for i in 1..3 {
        let replies = r.backend(i).seen().replies;
        r.backend(i)
            .wait_for("the others serve on", |s| s.replies >= replies + 50)
            .await;
    }
    let tally = load.finish().await;
    let end = r.backend(0).seen();
    eprintln!(
        "set_endpoints under load: ok={} failed={} by_endpoint={:?}; removed: accepts at the call {} / when drained {} / at the end {}, open {}\n  {}",
        tally.ok,
        tally.failed.len(),
        tally.by_endpoint,
        at_call.accepts,
        drained.accepts,
        end.accepts,
        end.open,
        figures(&pool)
    );
    assert!(tally.failed.is_empty(), "{:?}", tally.failed);
    assert_eq!(
        end.accepts, drained.accepts,
        "a new connection to the removed endpoint"
    );
    assert_eq!(end.open, 0);
    assert_eq!(pool.endpoints(), vec![addrs[1].clone(), addrs[2].clone()]);
    assert!(
        !pool.state().endpoints.iter().any(|e| e.addr == addrs[0]),
        "the removed endpoint is still listed: {}",
        figures(&pool)
    );
}

// ---------------------------------------------------------------------------------------
// Limits.

/// `max_size` is per endpoint: 3 × 2 held requests hold two connections at each backend
/// (none of them gets `503` while a backend has a free slot: that is "no endpoint had a free
/// connection"), a seventh waits and gets `503`; under load no backend sees more than two.
/// Ten rounds, so that a balancer choice that waits on a full endpoint shows.
async fn max_size_per_endpoint(balance: Balance) {
    let (r, pool, client) = three(|b| {
        b.balance(balance)
            .max_size(2)
            .checkout_timeout(Duration::from_millis(300))
    })
    .await;
    for round in 0..10 {
        let mut holders: Vec<_> = (0..6)
            .map(|i| client.spawn_get(&format!("/hold/r{round}h{i}")))
            .collect();
        let all_holding = async {
            for (i, b) in r.backends.iter().enumerate() {
                b.wait_for(&format!("backend {i} holds two"), |s| s.holding == 2)
                    .await;
            }
        };
        tokio::select! {
            () = all_holding => {}
            (done, i, _) = futures_util::future::select_all(holders.iter_mut()) => {
                let holding: Vec<usize> = r.seen().iter().map(|s| s.holding).collect();
                panic!(
                    "round {round}: held request {i} ended before the release ({done:?}) while the backends held {holding:?} of 2 each\n  {}",
                    figures(&pool)
                );
            }
        }
        let seventh = client.get("/hold/seventh").await;
        assert_eq!(
            seventh.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{seventh:?}"
        );
        for b in &r.backends {
            b.release();
        }
        for h in holders {
            let reply = h.await.expect("holder");
            assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        }
    }
    let tally = Load::run(&client, 12, 600).await;
    let seen = r.seen();
    eprintln!(
        "max_size 2 per endpoint {balance:?}: load ok={} by_endpoint={:?}; backends (accepts, max_open): {:?}\n  {}",
        tally.ok,
        tally.by_endpoint,
        seen.iter().map(|s| (s.accepts, s.max_open)).collect::<Vec<_>>(),
        figures(&pool)
    );
    assert!(tally.failed.is_empty(), "{:?}", tally.failed);
    for s in seen {
        assert!(s.max_open <= 2, "{s:?}");
        assert_eq!(s.accepts, 2, "no churn: {s:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_size_is_per_endpoint_round_robin() {
    max_size_per_endpoint(Balance::RoundRobin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_size_is_per_endpoint_least_loaded() {
    max_size_per_endpoint(Balance::LeastLoaded).await;
}

// ---------------------------------------------------------------------------------------
// DNS.

/// `resolve_endpoints`: a host name (`localhost`, which resolves to loopback addresses only)
/// becomes the endpoints its lookup gives; `set_endpoints` with another name is resolved at
/// once, and the old name's endpoints are removed (their connections closed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_endpoints_turns_a_host_name_into_its_addresses() {
    let r = Replicas::start(2).await;
    let (p0, p1) = (r.backend(0).addr.port(), r.backend(1).addr.port());
    let pool = TcpPool::builder(format!("localhost:{p0}"))
        .resolve_endpoints(Duration::from_millis(50))
        .build()
        .expect("pool");
    let client = HttpClient::new(serve(routes(&pool)).await);
    // The lookup runs in the background and the pool has no change notification: poll.
    let resolved = |port: u16| {
        let pool = pool.clone();
        async move {
            testkit::bounded(&format!("localhost:{port} resolved"), async {
                loop {
                    let e = pool.endpoints();
                    if e.contains(&format!("127.0.0.1:{port}"))
                        && e.iter().all(|a| a.ends_with(&format!(":{port}")))
                    {
                        return e;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
            .await
        }
    };
    let first = resolved(p0).await;
    for i in 0..4 {
        assert_eq!(
            get_ok(&client, &format!("a{i}")).await,
            format!("127.0.0.1:{p0}")
        );
    }
    pool.set_endpoints([format!("localhost:{p1}")])
        .expect("set_endpoints");
    let second = resolved(p1).await;
    r.backend(0)
        .wait_for("the old name's connections closed", |s| s.open == 0)
        .await;
    for i in 0..4 {
        assert_eq!(
            get_ok(&client, &format!("b{i}")).await,
            format!("127.0.0.1:{p1}")
        );
    }
    eprintln!("resolve_endpoints: localhost:{p0} -> {first:?}, then localhost:{p1} -> {second:?}");
    assert!(r.backend(0).seen().accepts >= 1 && r.backend(1).seen().accepts >= 1);
}

/// One endpoint full (its only connection held by a request): the requests the balancer would
/// send there go to an endpoint with a free slot instead of waiting for it (`503` only when no
/// endpoint had a free connection in time). Under `RoundRobin` every third request is due to
/// the full one.
async fn a_full_endpoint_is_passed_over(balance: Balance) {
    let (r, pool, client) = three(|b| {
        b.balance(balance)
            .max_size(1)
            .checkout_timeout(Duration::from_millis(300))
    })
    .await;
    let held = client.spawn_get("/hold/held");
    let (_, full, _) = futures_util::future::select_all(
        r.backends
            .iter()
            .map(|b| Box::pin(b.wait_for("one request held", |s| s.holding == 1))),
    )
    .await;
    let mut statuses = BTreeMap::<u16, usize>::new();
    for i in 0..9 {
        let reply = client.get(&format!("/who/f{i}")).await;
        *statuses.entry(reply.status.as_u16()).or_default() += 1;
    }
    eprintln!(
        "{balance:?}: backend {full} full (max_size 1, held): 9 requests got {statuses:?}\n  {}",
        figures(&pool)
    );
    r.backend(full).release();
    assert_eq!(held.await.expect("held").status, StatusCode::OK);
    assert_eq!(statuses, BTreeMap::from([(200, 9)]), "{}", figures(&pool));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_endpoint_is_passed_over_round_robin() {
    a_full_endpoint_is_passed_over(Balance::RoundRobin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_endpoint_is_passed_over_least_loaded() {
    a_full_endpoint_is_passed_over(Balance::LeastLoaded).await;
}
