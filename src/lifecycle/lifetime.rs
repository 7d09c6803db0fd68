//! Per-connection lifetimes: `max_lifetime` minus a random share of it, drawn at connect.

use std::time::{Duration, Instant};

/// The deadline of a connection opened at `opened`: `max_lifetime` less `unit × jitter` of
/// it (`unit` in `[0, 1)`, `jitter` in `[0, 0.5]`). `None` if it cannot be represented (a
/// lifetime of `Duration::MAX`): the connection then lives forever.
pub(crate) fn deadline(
    opened: Instant,
    max_lifetime: Duration,
    jitter: f64,
    unit: f64,
) -> Option<Instant> {
    let share = jitter * unit;
    // Validated at build time; anything else takes nothing off rather than panicking.
    let share = if (0.0..=1.0).contains(&share) {
        share
    } else {
        0.0
    };
    opened.checked_add(max_lifetime.saturating_sub(max_lifetime.mul_f64(share)))
}

/// A number in `[0, 1)` from a 64-bit random value (its top 53 bits).
pub(crate) fn unit(random: u64) -> f64 {
    (random >> 11) as f64 / (1u64 << 53) as f64
}

/// splitmix64: the next random value from a state advanced by the caller.
pub(crate) fn splitmix(state: u64) -> u64 {
    let mut z = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_jitter_gives_exactly_max_lifetime() {
        let now = Instant::now();
        let lifetime = Duration::from_millis(400);
        for u in [0.0, 0.3, 0.999_999] {
            assert_eq!(deadline(now, lifetime, 0.0, u), Some(now + lifetime));
        }
    }

    #[test]
    fn jitter_takes_at_most_its_share_off() {
        let now = Instant::now();
        let lifetime = Duration::from_secs(1800);
        let mut state = 7u64;
        let (mut lo, mut hi) = (lifetime, Duration::ZERO);
        for _ in 0..1000 {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let d = deadline(now, lifetime, 0.025, unit(splitmix(state))).expect("deadline") - now;
            assert!(d <= lifetime && d >= lifetime.mul_f64(0.975), "{d:?}");
            lo = lo.min(d);
            hi = hi.max(d);
        }
        // 1000 draws spread over most of the 45 s window.
        assert!(hi - lo > Duration::from_secs(40), "{lo:?}..{hi:?}");
    }

    #[test]
    fn the_largest_lifetime_never_expires() {
        assert_eq!(deadline(Instant::now(), Duration::MAX, 0.0, 0.0), None);
    }

    #[test]
    fn unit_is_below_one() {
        assert_eq!(unit(0), 0.0);
        assert!(unit(u64::MAX) < 1.0);
    }
}
