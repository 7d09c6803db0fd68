//! [`Balance`]: how a checkout chooses among a pool's endpoints.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

/// How a checkout chooses the endpoint of a pool with [several](crate::TcpPoolBuilder::endpoint).
/// See the [module docs](crate::TcpPoolBuilder#several-endpoints).
///
/// ```
/// use axum_tcp_pool::{Balance, TcpPool};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), axum_tcp_pool::TcpPoolError> {
/// let pool = TcpPool::builder("127.0.0.1:7001")
///     .endpoint("127.0.0.1:7002")
///     .balance(Balance::RoundRobin)
///     .build()?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Balance {
    /// Power of two choices: two distinct eligible endpoints at random, and of them the one
    /// with an idle connection (or with no connection yet), else the one with fewer
    /// connections in use plus checkouts waiting. A slow endpoint holds its connections
    /// longer, so under concurrent load it gets fewer requests; one request at a time, every
    /// endpoint's load is 0 and the choice is even.
    #[default]
    LeastLoaded,
    /// Each eligible endpoint in turn.
    RoundRobin,
}

/// What the balancer needs to know of one eligible endpoint (in the set, not ejected, not
/// yet tried by this checkout).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Load {
    /// Connections in use plus checkouts waiting.
    pub(crate) load: u64,
    /// Has a connection that is neither in use nor promised to a waiting checkout, or has
    /// none open at all (see `Shared::has_idle`).
    pub(crate) idle: bool,
}

/// The balancer's own state: the round-robin position and the random source.
#[derive(Debug)]
pub(crate) struct Balancer {
    pub(crate) balance: Balance,
    next: AtomicUsize,
    rng: AtomicU64,
}

impl Balancer {
    pub(crate) fn new(balance: Balance) -> Self {
        use std::hash::{BuildHasher, RandomState};
        Balancer {
            balance,
            next: AtomicUsize::new(0),
            // A per-pool random seed, so pools started together do not pick in lockstep.
            rng: AtomicU64::new(RandomState::new().hash_one(0u64)),
        }
    }

    /// The index of the endpoint to try, of `n`; `view(i)` is `None` for one that is not
    /// eligible. `None` if none is.
    pub(crate) fn pick(&self, n: usize, view: impl Fn(usize) -> Option<Load>) -> Option<usize> {
        let eligible = (0..n).filter(|&i| view(i).is_some()).count();
        let nth = |k: usize| (0..n).filter(|&i| view(i).is_some()).nth(k);
        match eligible {
            0 => None,
            1 => nth(0),
            e => match self.balance {
                Balance::RoundRobin => nth(self.next.fetch_add(1, Relaxed) % e),
                Balance::LeastLoaded => {
                    let r = self.random();
                    let first = (r % e as u64) as usize;
                    // A second, distinct one: an offset of 1..e from the first.
                    let second = (first + 1 + ((r >> 32) % (e as u64 - 1)) as usize) % e;
                    let (a, b) = (nth(first)?, nth(second)?);
                    let (la, lb) = (view(a)?, view(b)?);
                    Some(match (la.idle, lb.idle) {
                        (true, false) => a,
                        (false, true) => b,
                        // `a` on a tie, which is random already.
                        _ if lb.load < la.load => b,
                        _ => a,
                    })
                }
            },
        }
    }

    /// splitmix64 over an atomic counter: cheap, lock-free, good enough to spread choices.
    fn random(&self) -> u64 {
        let mut z = self
            .rng
            .fetch_add(0x9E37_79B9_7F4A_7C15, Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(eligible, load, idle)` per endpoint.
    fn view(set: &[(bool, u64, bool)]) -> impl Fn(usize) -> Option<Load> + '_ {
        |i| {
            set[i].0.then_some(Load {
                load: set[i].1,
                idle: set[i].2,
            })
        }
    }

    fn c(eligible: bool, load: u64, idle: bool) -> (bool, u64, bool) {
        (eligible, load, idle)
    }

    #[test]
    fn round_robin_takes_each_eligible_in_turn() {
        let b = Balancer::new(Balance::RoundRobin);
        let set = [c(true, 0, false), c(false, 0, false), c(true, 0, false)];
        let picks: Vec<_> = (0..4)
            .filter_map(|_| b.pick(set.len(), view(&set)))
            .collect();
        assert_eq!(picks, [0, 2, 0, 2]);
    }

    #[test]
    fn least_loaded_prefers_idle_then_lower_load_and_never_an_ineligible_one() {
        let b = Balancer::new(Balance::LeastLoaded);
        // Two candidates: p2c compares both every time.
        let set = [c(true, 9, false), c(true, 1, false)];
        assert!((0..100).all(|_| b.pick(set.len(), view(&set)) == Some(1)));
        let set = [c(true, 9, true), c(true, 1, false)];
        assert!((0..100).all(|_| b.pick(set.len(), view(&set)) == Some(0)));
        let set = [c(false, 0, true), c(true, 5, false), c(false, 0, true)];
        assert!((0..100).all(|_| b.pick(set.len(), view(&set)) == Some(1)));
        let none = [c(false, 0, true)];
        assert_eq!(b.pick(none.len(), view(&none)), None);
    }

    #[test]
    fn least_loaded_spreads_over_equal_endpoints() {
        let b = Balancer::new(Balance::LeastLoaded);
        let set = [c(true, 0, false), c(true, 0, false), c(true, 0, false)];
        let mut counts = [0; 3];
        for _ in 0..3000 {
            counts[b.pick(set.len(), view(&set)).expect("eligible")] += 1;
        }
        assert!(counts.iter().all(|&n| n > 700), "{counts:?}");
    }
}
