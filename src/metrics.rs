//! Pool metrics through the [`metrics`](https://docs.rs/metrics) crate (feature `metrics`).
//!
//! [`TcpPool::record_metrics`] sets every gauge and counter below from a
//! [`pool.state()`](TcpPool::state) snapshot, into whatever `metrics` recorder is installed
//! (`metrics-exporter-prometheus`, StatsD, OpenTelemetry, ...). Call it where the numbers are
//! read: in the handler of a Prometheus `/metrics` route, just before rendering (see
//! `examples/metrics.rs`), or on an interval for a push-based exporter.
//!
//! Nothing is recorded on the request path: the pool already keeps these counts (bb8's
//! statistics and this crate's discard counters), so a checkout costs the same with the
//! feature on or off, and the exported values are exactly [`PoolState`]'s. Counters are
//! set with `absolute`, so calling `record_metrics` often, or from several places, never
//! double-counts.
//!
//! Every series has a `pool` label, the pool's [name](TcpPool::name) (set with
//! [`TcpPoolBuilder::name`](crate::TcpPoolBuilder::name), the address by default); give each
//! pool of an app its own name.
//!
//! | name | type | labels | value |
//! |---|---|---|---|
//! | `tcp_pool_connections` | gauge | `pool` | open connections ([`PoolState::connections`]) |
//! | `tcp_pool_idle_connections` | gauge | `pool` | idle connections ([`PoolState::idle`]) |
//! | `tcp_pool_in_use_connections` | gauge | `pool` | checked-out connections ([`PoolState::in_use`]) |
//! | `tcp_pool_max_connections` | gauge | `pool` | the most connections the pool may open: `max_size` times the endpoints |
//! | `tcp_pool_closed` | gauge | `pool` | `1` once the pool is [closed](TcpPool::close), else `0` ([`PoolState::closed`]) |
//! | `tcp_pool_gets_total` | counter | `pool` | checkouts started ([`PoolState::gets`]) |
//! | `tcp_pool_gets_waited_total` | counter | `pool` | checkouts that had to wait ([`PoolState::gets_waited`]) |
//! | `tcp_pool_gets_timed_out_total` | counter | `pool` | checkouts that timed out, answered `503` ([`PoolState::gets_timed_out`]) |
//! | `tcp_pool_wait_time_microseconds_total` | counter | `pool` | total time checkouts waited, in µs ([`PoolState::wait_time`]) |
//! | `tcp_pool_connections_created_total` | counter | `pool` | connections opened ([`PoolState::connections_created`]) |
//! | `tcp_pool_connect_failures_total` | counter | `pool` | failed connect attempts ([`PoolState::connect_failures`]) |
//! | `tcp_pool_discards_total` | counter | `pool`, `reason` | connections closed instead of reused, one series per [`DiscardReason::as_str`] ([`PoolState::discards`]) |
//! | `tcp_pool_closed_idle_timeout_total` | counter | `pool` | closed for sitting idle past `idle_timeout` ([`PoolState::closed_idle_timeout`]) |
//! | `tcp_pool_closed_max_lifetime_total` | counter | `pool` | closed for outliving `max_lifetime` ([`PoolState::closed_max_lifetime`]) |
//! | `tcp_pool_idle_probes_total` | counter | `pool` | idle connections checked by idle probing ([`PoolState::idle_probes`]) |
//! | `tcp_pool_idle_probe_failures_total` | counter | `pool` | idle connections idle probing found dead ([`PoolState::idle_probe_failures`]) |
//! | `tcp_pool_connects_backed_off_total` | counter | `pool` | connects refused by the reconnect backoff, no SYN sent ([`PoolState::connects_backed_off`]) |
//! | `tcp_pool_suspected_leaks_total` | counter | `pool` | connections held longer than `leak_threshold` ([`PoolState::suspected_leaks`]) |
//!
//!
//! A pool with [several endpoints](crate::TcpPoolBuilder#several-endpoints) also exports one
//! series per endpoint, labelled `pool` and `endpoint` (the address), from
//! [`PoolState::endpoints`]; the series above are the sums over them. When an endpoint is
//! removed, its gauges are set to `0` at the next `record_metrics`.
//!
//! | name | type | labels | value |
//! |---|---|---|---|
//! | `tcp_pool_endpoint_connections` | gauge | `pool`, `endpoint` | its open connections |
//! | `tcp_pool_endpoint_idle_connections` | gauge | `pool`, `endpoint` | its idle connections |
//! | `tcp_pool_endpoint_in_use_connections` | gauge | `pool`, `endpoint` | its checked-out connections |
//! | `tcp_pool_endpoint_ejected` | gauge | `pool`, `endpoint` | `1` while ejected by outlier detection, else `0` |
//! | `tcp_pool_endpoint_consecutive_failures` | gauge | `pool`, `endpoint` | failures in a row since its last clean return |
//! | `tcp_pool_endpoint_ejections_total` | counter | `pool`, `endpoint` | times it was ejected |
//! | `tcp_pool_endpoint_checkouts_total` | counter | `pool`, `endpoint` | successful checkouts of its connections |
//!
//! The total wait is a counter of whole microseconds, the unit bb8 measures it in: `metrics`
//! counters are integers, and a counter (unlike a gauge) lets Prometheus' `rate()` handle
//! restarts. `rate(tcp_pool_wait_time_microseconds_total[5m]) /
//! rate(tcp_pool_gets_waited_total[5m]) / 1e6` is the mean wait, in seconds, of checkouts
//! that waited.
//!
//! A discard reason that never happened is still exported, as `0`, so that every series
//! exists from the first scrape.
//!
//! For an exporter that pushes instead of being scraped, record on an interval (the task
//! holds a pool handle, so the pool stays open until the task is aborted):
//!
//! ```no_run
//! # async fn f(pool: axum_tcp_pool::TcpPool) {
//! let recorded = pool.clone();
//! let task = tokio::spawn(async move {
//!     let mut every = tokio::time::interval(std::time::Duration::from_secs(10));
//!     loop {
//!         every.tick().await;
//!         recorded.record_metrics();
//!     }
//! });
//! // at shutdown: task.abort();
//! # }
//! ```
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use axum_tcp_pool::TcpPool;
//! use metrics_exporter_prometheus::PrometheusBuilder;
//!
//! let recorder = PrometheusBuilder::new().build_recorder();
//! let handle = recorder.handle();
//! let pool = TcpPool::builder("127.0.0.1:6379").name("cache").max_size(4).build()?;
//!
//! metrics::with_local_recorder(&recorder, || pool.record_metrics());
//! let text = handle.render();
//! assert!(text.contains(r#"tcp_pool_max_connections{pool="cache"} 4"#));
//! assert!(text.contains(r#"tcp_pool_discards_total{pool="cache",reason="eof"} 0"#));
//! # Ok(()) }
//! ```

use ::metrics::{counter, describe_counter, describe_gauge, gauge, Unit};

use crate::clean::DiscardReason;
use crate::pool::TcpPool;
use crate::state::PoolState;

/// Gauge: open connections, idle and in use.
pub const CONNECTIONS: &str = "tcp_pool_connections";
/// Gauge: idle connections.
pub const IDLE_CONNECTIONS: &str = "tcp_pool_idle_connections";
/// Gauge: connections checked out.
pub const IN_USE_CONNECTIONS: &str = "tcp_pool_in_use_connections";
/// Gauge: the most connections the pool may open (`max_size` per endpoint).
pub const MAX_CONNECTIONS: &str = "tcp_pool_max_connections";
/// Gauge: `1` once the pool is closed, else `0`.
pub const CLOSED: &str = "tcp_pool_closed";
/// Counter: checkouts started.
pub const GETS: &str = "tcp_pool_gets_total";
/// Counter: checkouts that had to wait for a connection.
pub const GETS_WAITED: &str = "tcp_pool_gets_waited_total";
/// Counter: checkouts that timed out (answered `503`).
pub const GETS_TIMED_OUT: &str = "tcp_pool_gets_timed_out_total";
/// Counter: total time checkouts spent waiting, in microseconds.
pub const WAIT_TIME_MICROSECONDS: &str = "tcp_pool_wait_time_microseconds_total";
/// Counter: connections opened.
pub const CONNECTIONS_CREATED: &str = "tcp_pool_connections_created_total";
/// Counter: connect attempts that failed.
pub const CONNECT_FAILURES: &str = "tcp_pool_connect_failures_total";
/// Counter with a `reason` label ([`DiscardReason::as_str`]): connections closed instead of
/// being reused.
pub const DISCARDS: &str = "tcp_pool_discards_total";
/// Counter: connections closed because they sat idle longer than `idle_timeout`.
pub const CLOSED_IDLE_TIMEOUT: &str = "tcp_pool_closed_idle_timeout_total";
/// Counter: connections closed because they were older than `max_lifetime`.
pub const CLOSED_MAX_LIFETIME: &str = "tcp_pool_closed_max_lifetime_total";
/// Counter: idle connections checked by idle probing.
pub const IDLE_PROBES: &str = "tcp_pool_idle_probes_total";
/// Counter: idle connections idle probing found dead.
pub const IDLE_PROBE_FAILURES: &str = "tcp_pool_idle_probe_failures_total";
/// Counter: connections held longer than `leak_threshold` (each reported once).
pub const SUSPECTED_LEAKS: &str = "tcp_pool_suspected_leaks_total";

/// Counter: connect attempts refused by the reconnect backoff (no SYN sent).
pub const CONNECTS_BACKED_OFF: &str = "tcp_pool_connects_backed_off_total";

/// Gauge: one endpoint's open connections.
pub const ENDPOINT_CONNECTIONS: &str = "tcp_pool_endpoint_connections";
/// Gauge: one endpoint's idle connections.
pub const ENDPOINT_IDLE_CONNECTIONS: &str = "tcp_pool_endpoint_idle_connections";
/// Gauge: one endpoint's checked-out connections.
pub const ENDPOINT_IN_USE_CONNECTIONS: &str = "tcp_pool_endpoint_in_use_connections";
/// Gauge: `1` while the endpoint is ejected, else `0`.
pub const ENDPOINT_EJECTED: &str = "tcp_pool_endpoint_ejected";
/// Gauge: the endpoint's failures in a row.
pub const ENDPOINT_CONSECUTIVE_FAILURES: &str = "tcp_pool_endpoint_consecutive_failures";
/// Counter: times the endpoint was ejected.
pub const ENDPOINT_EJECTIONS: &str = "tcp_pool_endpoint_ejections_total";
/// Counter: successful checkouts of the endpoint's connections.
pub const ENDPOINT_CHECKOUTS: &str = "tcp_pool_endpoint_checkouts_total";

impl<M> TcpPool<M> {
    /// Sets this pool's gauges and counters, listed in the [`metrics`](crate::metrics) module,
    /// from [`state()`](Self::state), in the current `metrics` recorder. Call it before each
    /// scrape or export (it costs a few dozen recorder calls and nothing on the request path).
    /// With no recorder installed it does nothing.
    ///
    /// Available with the `metrics` feature.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use axum::{extract::State, routing::get, Router};
    /// use axum_tcp_pool::TcpPool;
    /// use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
    ///
    /// async fn scrape(State((pool, prometheus)): State<(TcpPool, PrometheusHandle)>) -> String {
    ///     pool.record_metrics();
    ///     prometheus.render()
    /// }
    ///
    /// # let recorder = PrometheusBuilder::new().build_recorder();
    /// # let prometheus = recorder.handle();
    /// // In an app: `let prometheus = PrometheusBuilder::new().install_recorder()?;`
    /// let pool = TcpPool::builder("127.0.0.1:6379").build()?;
    /// let app: Router = Router::new()
    ///     .route("/metrics", get(scrape))
    ///     .with_state((pool, prometheus));
    /// # Ok(()) }
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn record_metrics(&self) {
        let state = self.state();
        let endpoints = u32::try_from(state.endpoints.len()).unwrap_or(u32::MAX);
        record(
            self.name(),
            self.max_size().saturating_mul(endpoints),
            &state,
        );
        let now: Vec<String> = state.endpoints.iter().map(|e| e.addr.clone()).collect();
        for gone in self.recorded_endpoints(now) {
            zero_endpoint(self.name(), gone);
        }
    }
}

/// Describes every metric (help text and unit), then sets each from `s`.
fn record(pool: &str, max_size: u32, s: &PoolState) {
    describe();
    gauge!(CONNECTIONS, "pool" => pool.to_owned()).set(s.connections);
    gauge!(IDLE_CONNECTIONS, "pool" => pool.to_owned()).set(s.idle);
    gauge!(IN_USE_CONNECTIONS, "pool" => pool.to_owned()).set(s.in_use);
    gauge!(MAX_CONNECTIONS, "pool" => pool.to_owned()).set(max_size);
    gauge!(CLOSED, "pool" => pool.to_owned()).set(if s.closed { 1.0 } else { 0.0 });
    counter!(GETS, "pool" => pool.to_owned()).absolute(s.gets);
    counter!(GETS_WAITED, "pool" => pool.to_owned()).absolute(s.gets_waited);
    counter!(GETS_TIMED_OUT, "pool" => pool.to_owned()).absolute(s.gets_timed_out);
    let wait_us = u64::try_from(s.wait_time.as_micros()).unwrap_or(u64::MAX);
    counter!(WAIT_TIME_MICROSECONDS, "pool" => pool.to_owned()).absolute(wait_us);
    counter!(CONNECTIONS_CREATED, "pool" => pool.to_owned()).absolute(s.connections_created);
    counter!(CONNECT_FAILURES, "pool" => pool.to_owned()).absolute(s.connect_failures);
    counter!(CLOSED_IDLE_TIMEOUT, "pool" => pool.to_owned()).absolute(s.closed_idle_timeout);
    counter!(CLOSED_MAX_LIFETIME, "pool" => pool.to_owned()).absolute(s.closed_max_lifetime);
    counter!(IDLE_PROBES, "pool" => pool.to_owned()).absolute(s.idle_probes);
    counter!(IDLE_PROBE_FAILURES, "pool" => pool.to_owned()).absolute(s.idle_probe_failures);
    counter!(CONNECTS_BACKED_OFF, "pool" => pool.to_owned()).absolute(s.connects_backed_off);
    counter!(SUSPECTED_LEAKS, "pool" => pool.to_owned()).absolute(s.suspected_leaks);
    for &reason in DiscardReason::ALL {
        counter!(DISCARDS, "pool" => pool.to_owned(), "reason" => reason.as_str())
            .absolute(s.discards.get(reason));
    }
    for e in &s.endpoints {
        let labels = [("pool", pool.to_owned()), ("endpoint", e.addr.clone())];
        gauge!(ENDPOINT_CONNECTIONS, &labels).set(e.connections);
        gauge!(ENDPOINT_IDLE_CONNECTIONS, &labels).set(e.idle);
        gauge!(ENDPOINT_IN_USE_CONNECTIONS, &labels).set(e.in_use);
        gauge!(ENDPOINT_EJECTED, &labels).set(if e.ejected { 1.0 } else { 0.0 });
        gauge!(ENDPOINT_CONSECUTIVE_FAILURES, &labels).set(e.consecutive_failures);
        counter!(ENDPOINT_EJECTIONS, &labels).absolute(e.times_ejected);
        counter!(ENDPOINT_CHECKOUTS, &labels).absolute(e.checkouts);
    }
}

/// The gauges of an endpoint no longer in the set.
fn zero_endpoint(pool: &str, endpoint: String) {
    let labels = [("pool", pool.to_owned()), ("endpoint", endpoint)];
    for name in [
        ENDPOINT_CONNECTIONS,
        ENDPOINT_IDLE_CONNECTIONS,
        ENDPOINT_IN_USE_CONNECTIONS,
        ENDPOINT_EJECTED,
        ENDPOINT_CONSECUTIVE_FAILURES,
    ] {
        gauge!(name, &labels).set(0);
    }
}

/// Help texts and units, for exporters that show them (Prometheus' `# HELP`).
fn describe() {
    describe_gauge!(
        CONNECTIONS,
        Unit::Count,
        "Open connections, idle and in use."
    );
    describe_gauge!(
        IDLE_CONNECTIONS,
        Unit::Count,
        "Idle connections, ready to be checked out."
    );
    describe_gauge!(IN_USE_CONNECTIONS, Unit::Count, "Connections checked out.");
    describe_gauge!(
        MAX_CONNECTIONS,
        Unit::Count,
        "The most connections the pool may open."
    );
    describe_gauge!(CLOSED, Unit::Count, "1 once the pool is closed, else 0.");
    describe_counter!(GETS, Unit::Count, "Checkouts started.");
    describe_counter!(
        GETS_WAITED,
        Unit::Count,
        "Checkouts that had to wait for a connection."
    );
    describe_counter!(
        GETS_TIMED_OUT,
        Unit::Count,
        "Checkouts that timed out (answered 503)."
    );
    describe_counter!(
        WAIT_TIME_MICROSECONDS,
        Unit::Microseconds,
        "Total time checkouts spent waiting for a connection, in microseconds."
    );
    describe_counter!(CONNECTIONS_CREATED, Unit::Count, "Connections opened.");
    describe_gauge!(
        ENDPOINT_CONNECTIONS,
        Unit::Count,
        "One endpoint's open connections."
    );
    describe_gauge!(
        ENDPOINT_IDLE_CONNECTIONS,
        Unit::Count,
        "One endpoint's idle connections."
    );
    describe_gauge!(
        ENDPOINT_IN_USE_CONNECTIONS,
        Unit::Count,
        "One endpoint's checked-out connections."
    );
    describe_gauge!(
        ENDPOINT_EJECTED,
        Unit::Count,
        "1 while the endpoint is ejected by outlier detection, else 0."
    );
    describe_gauge!(
        ENDPOINT_CONSECUTIVE_FAILURES,
        Unit::Count,
        "The endpoint's failures in a row since its last clean return."
    );
    describe_counter!(
        ENDPOINT_EJECTIONS,
        Unit::Count,
        "Times the endpoint was ejected."
    );
    describe_counter!(
        ENDPOINT_CHECKOUTS,
        Unit::Count,
        "Successful checkouts of the endpoint's connections."
    );
    describe_counter!(
        CONNECT_FAILURES,
        Unit::Count,
        "Connect attempts that failed."
    );
    describe_counter!(
        DISCARDS,
        Unit::Count,
        "Connections closed instead of being reused, by reason."
    );
    describe_counter!(
        CLOSED_IDLE_TIMEOUT,
        Unit::Count,
        "Connections closed because they sat idle longer than idle_timeout."
    );
    describe_counter!(
        CLOSED_MAX_LIFETIME,
        Unit::Count,
        "Connections closed because they were older than max_lifetime."
    );
    describe_counter!(
        IDLE_PROBES,
        Unit::Count,
        "Idle connections checked by idle probing."
    );
    describe_counter!(
        IDLE_PROBE_FAILURES,
        Unit::Count,
        "Idle connections idle probing found dead, and closed."
    );
    describe_counter!(
        CONNECTS_BACKED_OFF,
        Unit::Count,
        "Connect attempts refused by the reconnect backoff (no SYN sent)."
    );
    describe_counter!(
        SUSPECTED_LEAKS,
        Unit::Count,
        "Connections held longer than leak_threshold (each reported once)."
    );
}
