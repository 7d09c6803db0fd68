//! [`EventCapture`]: the crate's tracing events with their fields, captured for a test to
//! match on and wait for (the leak reports of `leak_threshold` and their follow-ups).
//!
//! Unlike [`LogCapture`](crate::logs::LogCapture), which keeps the formatted lines, this keeps
//! each event's level, message and fields, and wakes a waiter on each one.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

use crate::wait::bounded;

/// The message of the warning for a connection held longer than `leak_threshold`.
pub const LEAK_WARN: &str = "connection held longer than leak_threshold, suspected leak";

/// The message of the info event when a connection reported by [`LEAK_WARN`] comes back.
pub const LEAK_CAME_BACK: &str = "connection suspected of leaking came back";

/// One event: its level, message and fields (strings unquoted).
#[derive(Debug, Clone)]
pub struct Event {
    /// The event's level.
    pub level: tracing::Level,
    /// The `message` field.
    pub message: String,
    /// Every other field, by name.
    pub fields: BTreeMap<String, String>,
}

impl Event {
    /// The field `name`, if the event has it.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }

    /// The field `name` as a number; panics (failing the test) if there is none.
    pub fn number(&self, name: &str) -> u64 {
        self.field(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no number {name} in {self:?}"))
    }
}

struct Fields<'a>(&'a mut Event);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record(field, value.to_owned());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.record(field, value.to_string());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.record(field, format!("{value:?}"));
    }
}

impl Fields<'_> {
    fn record(&mut self, field: &Field, value: String) {
        if field.name() == "message" {
            self.0.message = value;
        } else {
            self.0.fields.insert(field.name().to_owned(), value);
        }
    }
}

/// Collects the crate's events (target `axum_tcp_pool*`) and wakes whoever waits for one.
#[derive(Clone, Default)]
pub struct EventCapture {
    events: Arc<Mutex<Vec<Event>>>,
    added: Arc<Notify>,
}

impl<S: tracing::Subscriber> Layer<S> for EventCapture {
    fn on_event(&self, event: &tracing::Event<'_>, _cx: Context<'_, S>) {
        if !event.metadata().target().starts_with("axum_tcp_pool") {
            return;
        }
        let mut e = Event {
            level: *event.metadata().level(),
            message: String::new(),
            fields: BTreeMap::new(),
        };
        event.record(&mut Fields(&mut e));
        self.events.lock().expect("lock").push(e);
        // A permit is kept if nobody waits yet: no wake-up is lost.
        self.added.notify_one();
    }
}

impl EventCapture {
    /// Installs this capture as the thread's subscriber (the test's runtime thread) until the
    /// guard is dropped.
    pub fn install(&self) -> tracing::subscriber::DefaultGuard {
        let subscriber = tracing_subscriber::registry().with(self.clone());
        tracing::subscriber::set_default(subscriber)
    }

    /// The events with `message` seen so far.
    pub fn with(&self, message: &str) -> Vec<Event> {
        let events = self.events.lock().expect("lock");
        events
            .iter()
            .filter(|e| e.message == message)
            .cloned()
            .collect()
    }

    /// The events with `message` whose field `name` is `value`.
    pub fn matching(&self, message: &str, name: &str, value: &str) -> Vec<Event> {
        self.with(message)
            .into_iter()
            .filter(|e| e.field(name) == Some(value))
            .collect()
    }

    /// Waits until an event with `message` and field `name` = `value` has been seen.
    pub async fn wait_for(&self, message: &str, name: &str, value: &str) -> Event {
        bounded(&format!("{message:?} with {name}={value}"), async {
            loop {
                if let Some(e) = self.matching(message, name, value).pop() {
                    return e;
                }
                self.added.notified().await;
            }
        })
        .await
    }

    /// Every event seen so far, for an assertion's message.
    pub fn dump(&self) -> String {
        format!("{:#?}", self.events.lock().expect("lock"))
    }
}
