//! [`Throttle`]: decides which of a burst of like events get a log line of their own: the
//! first at once, then at most one summary per [`EVERY`], with the count since the last line.
//! A backend that is down thus costs a few lines, not one (or two) per request.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The most often a summary line is written, per throttle.
pub(crate) const EVERY: Duration = Duration::from_secs(5);

/// Counts the events of one burst (of two kinds, e.g. failed and refused connects).
#[derive(Debug, Default)]
pub(crate) struct Throttle {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// A burst is under way (its first event was logged).
    active: bool,
    /// When the last line was written, and when the last event came.
    last_line: Option<Instant>,
    last_event: Option<Instant>,
    /// Events of each kind since the last line.
    pending: [u64; 2],
    /// Events of each kind in the burst.
    total: [u64; 2],
}

/// What to log for one event.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Line {
    /// The first of a burst: log it in full.
    First,
    /// A summary is due: the events of each kind since the last line, this one included.
    Summary([u64; 2]),
    /// Counted, no line (a `debug` one at most).
    Quiet,
}

impl Throttle {
    /// One event of `kind` (0 or 1). Only a kind-0 event starts a burst; with `quiet_ends`,
    /// a burst also ends when every event was reported and none came for [`EVERY`] (for
    /// events that have no explicit end, such as error responses).
    pub(crate) fn event(&self, kind: usize, quiet_ends: bool) -> Line {
        self.event_at(kind, quiet_ends, Instant::now())
    }

    fn event_at(&self, kind: usize, quiet_ends: bool, now: Instant) -> Line {
        let Ok(mut s) = self.state.lock() else {
            return Line::First;
        };
        let kind = kind.min(1);
        let quiet = s.pending == [0; 2] && s.last_event.is_some_and(|t| now - t >= EVERY);
        if s.active && quiet_ends && quiet {
            *s = State::default();
        }
        s.last_event = Some(now);
        if !s.active {
            if kind != 0 {
                return Line::Quiet;
            }
            *s = State {
                active: true,
                last_line: Some(now),
                last_event: Some(now),
                pending: [0; 2],
                total: [1, 0],
            };
            return Line::First;
        }
        s.total[kind] += 1;
        s.pending[kind] += 1;
        if s.last_line.is_some_and(|t| now - t >= EVERY) {
            s.last_line = Some(now);
            return Line::Summary(std::mem::take(&mut s.pending));
        }
        Line::Quiet
    }

    /// Ends the burst: its totals of each kind, if one was under way.
    pub(crate) fn end(&self) -> Option<[u64; 2]> {
        let mut s = self.state.lock().ok()?;
        if !s.active {
            return None;
        }
        let total = s.total;
        *s = State::default();
        Some(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_then_a_summary_per_interval_then_the_totals() {
        let t = Throttle::default();
        let t0 = Instant::now();
        let at = |t: &Throttle, kind, quiet_ends, after| t.event_at(kind, quiet_ends, t0 + after);
        let zero = Duration::ZERO;
        assert_eq!(
            at(&t, 1, false, zero),
            Line::Quiet,
            "a refusal starts no burst"
        );
        assert_eq!(at(&t, 0, false, zero), Line::First);
        for _ in 0..1000 {
            assert_eq!(at(&t, 0, false, zero), Line::Quiet);
            assert_eq!(at(&t, 1, false, zero), Line::Quiet);
        }
        assert_eq!(at(&t, 1, false, EVERY), Line::Summary([1000, 1001]));
        assert_eq!(at(&t, 0, false, EVERY), Line::Quiet);
        assert_eq!(t.end(), Some([1002, 1001]));
        assert_eq!(t.end(), None);
        assert_eq!(at(&t, 0, false, EVERY), Line::First, "a new burst");
    }

    #[test]
    fn a_quiet_interval_ends_a_burst_when_asked() {
        let t = Throttle::default();
        let t0 = Instant::now();
        let at = |kind, quiet_ends, n: u32| t.event_at(kind, quiet_ends, t0 + EVERY * n);
        assert_eq!(at(0, true, 0), Line::First);
        assert_eq!(at(0, true, 0), Line::Quiet);
        assert_eq!(
            at(0, true, 1),
            Line::Summary([2, 0]),
            "nothing unreported is lost"
        );
        assert_eq!(at(0, true, 2), Line::First);
        assert_eq!(
            at(0, false, 3),
            Line::Summary([1, 0]),
            "without quiet_ends: one burst"
        );
    }
}
