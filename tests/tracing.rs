//! Tracing: a `tcp_pool.checkout` span per checkout with its wait time and outcome; events
//! for connect failures, discards and a missing layer, with consistent fields.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use axum_tcp_pool::{TcpConnection, TcpPool, TcpPoolError, TcpPoolLayer};
use http::StatusCode;
use testkit::{app, serve, wait_pool, Backend, HttpClient};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// A span or event, as recorded.
#[derive(Debug, Clone)]
struct Seen {
    name: String,
    level: Level,
    fields: HashMap<String, String>,
}

/// Records every span (with later `record`s) and event, in order.
#[derive(Clone, Default)]
struct Capture {
    spans: Arc<Mutex<Vec<(Id, Seen)>>>,
    events: Arc<Mutex<Vec<Seen>>>,
}

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _ctx: Context<'_, S>) {
        let mut fields = HashMap::new();
        attrs.record(&mut Fields(&mut fields));
        let seen = Seen {
            name: attrs.metadata().name().to_owned(),
            level: *attrs.metadata().level(),
            fields,
        };
        self.spans.lock().unwrap().push((id.clone(), seen));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _ctx: Context<'_, S>) {
        let mut spans = self.spans.lock().unwrap();
        if let Some((_, seen)) = spans.iter_mut().rev().find(|(i, _)| i == id) {
            values.record(&mut Fields(&mut seen.fields));
        }
    }

    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = HashMap::new();
        event.record(&mut Fields(&mut fields));
        self.events.lock().unwrap().push(Seen {
            name: event.metadata().name().to_owned(),
            level: *event.metadata().level(),
            fields,
        });
    }
}

impl Capture {
    /// Installs the capture for this thread (the tests run on a current-thread runtime, so
    /// every task of the test, bb8's included, runs here).
    fn install() -> (Capture, tracing::subscriber::DefaultGuard) {
        let capture = Capture::default();
        let subscriber = tracing_subscriber::registry().with(capture.clone());
        (capture, tracing::subscriber::set_default(subscriber))
    }

    fn checkouts(&self) -> Vec<Seen> {
        let spans = self.spans.lock().unwrap();
        spans
            .iter()
            .filter(|(_, s)| s.name == "tcp_pool.checkout")
            .map(|(_, s)| s.clone())
            .collect()
    }

    fn events_where(&self, f: impl Fn(&Seen) -> bool) -> Vec<Seen> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| f(e))
            .cloned()
            .collect()
    }
}

fn field<'a>(seen: &'a Seen, name: &str) -> &'a str {
    match seen.fields.get(name) {
        Some(v) => v,
        None => panic!("no field {name} in {seen:?}"),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn each_checkout_has_a_span_with_wait_time_and_outcome() {
    let (capture, _guard) = Capture::install();
    let backend = Backend::start().await;
    let pool = TcpPool::builder(backend.addr_string())
        .name("spanned")
        .max_size(1)
        .checkout_timeout(Duration::from_millis(50))
        .build()
        .expect("pool");

    let held = pool.get().await.expect("connect");
    assert!(matches!(
        pool.get().await,
        Err(TcpPoolError::CheckoutTimeout)
    ));
    drop(held);
    wait_pool(&pool, "returned", |s| s.in_use == 0).await;
    backend.stop().await;
    // Closed by the health check or not: once nothing is open, a checkout must connect.
    for _ in 0..3 {
        if pool.state().connections == 0 {
            break;
        }
        match pool.get().await {
            Ok(mut conn) => conn.discard(),
            Err(_) => break,
        }
    }
    let err = pool.get().await.expect_err("backend down");
    assert!(matches!(err, TcpPoolError::BackendUnreachable(_)), "{err}");

    let spans = capture.checkouts();
    assert!(spans.len() >= 3, "{spans:#?}");
    for span in &spans {
        assert_eq!(span.level, Level::DEBUG);
        assert_eq!(field(span, "pool"), "spanned");
        assert_eq!(field(span, "addr"), backend.addr_string());
        field(span, "wait_us")
            .parse::<u64>()
            .unwrap_or_else(|_| panic!("wait_us is a number: {span:?}"));
    }
    let outcomes: Vec<&str> = spans.iter().map(|s| field(s, "outcome")).collect();
    assert_eq!(outcomes[0], "ok");
    assert_eq!(outcomes[1], "timeout");
    assert_eq!(outcomes.last(), Some(&"unreachable"));
    // The timed-out checkout waited out its timeout.
    let waited: u64 = field(&spans[1], "wait_us").parse().unwrap_or(0);
    assert!(waited >= 50_000, "timeout after 50 ms, wait_us = {waited}");
}

#[tokio::test(flavor = "current_thread")]
async fn connect_failures_and_discards_are_events_with_pool_addr_and_reason() {
    let (capture, _guard) = Capture::install();
    let backend = Backend::start().await;
    let pool = TcpPool::builder(backend.addr_string())
        .name("evented")
        .build()
        .expect("pool");
    let client = HttpClient::new(serve(app::eager(&pool)).await);
    assert_eq!(client.get("/noread/x").await.status, StatusCode::OK);
    wait_pool(&pool, "discarded", |s| s.discards.reply_not_read == 1).await;

    let discards =
        capture.events_where(|e| e.fields.contains_key("reason") && e.level == Level::DEBUG);
    let discard = discards
        .iter()
        .find(|e| field(e, "reason") == "reply_not_read")
        .unwrap_or_else(|| panic!("a discard event: {discards:#?}"));
    assert_eq!(field(discard, "pool"), "evented");
    assert_eq!(field(discard, "addr"), backend.addr_string());

    backend.stop().await;
    let refused = TcpPool::builder(backend.addr_string())
        .name("refused")
        .build()
        .expect("pool");
    assert!(refused.get().await.is_err());
    let failures = capture.events_where(|e| {
        e.level == Level::WARN && e.fields.get("pool").map(String::as_str) == Some("refused")
    });
    let failure = failures
        .first()
        .unwrap_or_else(|| panic!("a connect failure event"));
    assert_eq!(field(failure, "addr"), backend.addr_string());
    assert_eq!(field(failure, "reason"), "connection refused");
    assert!(failure.fields.contains_key("error"), "{failure:?}");
}

enum Missing {}

async fn wants_missing(_conn: TcpConnection<Missing>) -> &'static str {
    "unreachable"
}

/// The log names the marker whose layer is missing; the response does not.
#[tokio::test(flavor = "current_thread")]
async fn a_missing_layer_is_logged_with_its_marker_type() {
    let (capture, _guard) = Capture::install();
    let backend = Backend::start().await;
    let pool = TcpPool::builder(backend.addr_string())
        .build()
        .expect("pool");
    let app = Router::new()
        .route("/", get(wants_missing))
        .layer(TcpPoolLayer::new(pool));
    let client = HttpClient::new(serve(app).await);
    let res = client.get("/").await;
    assert_eq!(res.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        !res.body.contains("Missing>") && !res.body.contains("tracing::"),
        "{res:?}"
    );

    let errors =
        capture.events_where(|e| e.level == Level::ERROR && e.fields.contains_key("marker"));
    let error = errors
        .first()
        .unwrap_or_else(|| panic!("an error event naming the marker"));
    assert!(field(error, "marker").ends_with("::Missing"), "{error:?}");
    assert!(
        field(error, "message").contains("TcpConnection<"),
        "{error:?}"
    );
}

/// Several endpoints: each checkout span and every event of the pool carries the `endpoint`
/// it concerns: connect failures and the ejection name the stopped one, a discard names the
/// one its connection went to, a removal the removed one.
#[tokio::test(flavor = "current_thread")]
async fn spans_and_events_of_several_endpoints_carry_the_endpoint() {
    use axum_tcp_pool::{Balance, OutlierDetection};
    let (capture, _guard) = Capture::install();
    let r = testkit::replicas::Replicas::start(3).await;
    let addrs = r.addrs();
    let pool = r
        .builder()
        .name("fleet")
        .balance(Balance::RoundRobin)
        .outlier_detection(
            OutlierDetection::new()
                .consecutive_failures(2)
                .base_ejection_time(Duration::from_secs(10))
                .max_ejection_time(Duration::from_secs(10)),
        )
        .build()
        .expect("pool");
    r.backend(1).stop().await;
    let mut served = Vec::new();
    for _ in 0..9 {
        let mut conn = pool.get().await.expect("failover to a live endpoint");
        served.push(conn.endpoint().to_owned());
        conn.discard();
    }
    wait_pool(&pool, "returned", |s| s.in_use == 0).await;
    pool.set_endpoints([addrs[0].clone(), addrs[1].clone()])
        .expect("set_endpoints");
    assert!(!served.contains(&addrs[1]), "{served:?}");

    let spans = capture.checkouts();
    assert_eq!(spans.len(), 9, "{spans:#?}");
    for (span, endpoint) in spans.iter().zip(&served) {
        assert_eq!(field(span, "endpoint"), endpoint, "{span:?}");
    }
    let events =
        capture.events_where(|e| e.fields.get("pool").map(String::as_str) == Some("fleet"));
    for e in &events {
        assert!(
            addrs.iter().any(|a| a == field(e, "endpoint")),
            "an event without an endpoint of the pool: {e:?}"
        );
    }
    let about = |what: &str, endpoint: &str| {
        events
            .iter()
            .filter(|e| {
                field(e, "endpoint") == endpoint
                    && e.fields.get("message").is_some_and(|m| m.contains(what))
            })
            .count()
    };
    assert!(about("connect", &addrs[1]) >= 2, "{events:#?}");
    assert!(about("eject", &addrs[1]) >= 1, "{events:#?}");
    assert!(about("removed", &addrs[2]) >= 1, "{events:#?}");
    let discards = events
        .iter()
        .filter(|e| e.fields.get("reason").map(String::as_str) == Some("explicit"))
        .count();
    assert_eq!(discards, 9, "{events:#?}");
}
