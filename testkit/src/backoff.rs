//! The reconnect backoff's schedule, for tests that bound the connect attempts of a storm.

use std::time::Duration;

/// The pool's default backoff: the first step and the longest.
pub const MIN: Duration = Duration::from_millis(50);
pub const MAX: Duration = Duration::from_secs(5);

/// The most backoff steps from `min` to `max` that can begin within `elapsed` (equal jitter:
/// each lasts at least half its nominal delay, and the delay doubles up to `max`).
pub fn steps_within(elapsed: Duration, min: Duration, max: Duration) -> u64 {
    let (mut begun, mut at, mut step) = (0u64, Duration::ZERO, min);
    while at <= elapsed && begun < 100_000 {
        begun += 1;
        at += step / 2;
        step = (step * 2).min(max);
    }
    begun
}
