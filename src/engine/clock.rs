//! When to poll a resource that the previous lease holder left in transition.
//!
//! Polling on a growing schedule finds the end of a transition late: with 100 ms transitions and
//! a 20 ms × 1.5 schedule, the end is seen up to 60 ms after it happened, and a queue of writers
//! pays that on every write. But transitions of one resource type tend to take about as long each
//! time, and this process saw when each one started (the previous write's answer). So the clock
//! keeps, per resource type, the longest elapsed time at which a transition was still running
//! (`lo`) and the shortest at which one was over (`hi`), and plans the next polls: at the midpoint
//! while the two are far apart (narrowing them, as a bisection would), then at `hi`. With steady
//! durations that converges to one poll per write, just after the transition ends. Anything the
//! plan misses falls back to the policy's schedule, so a wrong estimate costs a poll, not
//! correctness.

use std::{num::NonZeroUsize, sync::Mutex, time::Duration};

use lru::LruCache;
use tokio::time::Instant;

/// Transitions whose start is remembered, and resource types with an estimate.
const CAPACITY: usize = 4096;

#[derive(Clone, Copy, Debug)]
struct Estimate {
    /// Longest elapsed time seen still in transition.
    lo: Duration,
    /// Shortest elapsed time seen terminal.
    hi: Duration,
}

#[derive(Debug)]
pub(crate) struct Clock(Mutex<Inner>);

#[derive(Debug)]
struct Inner {
    started: LruCache<String, Instant>,
    estimates: LruCache<String, Estimate>,
}

impl Default for Clock {
    fn default() -> Self {
        let capacity = NonZeroUsize::new(CAPACITY).unwrap_or(NonZeroUsize::MIN);
        Self(Mutex::new(Inner {
            started: LruCache::new(capacity),
            estimates: LruCache::new(capacity),
        }))
    }
}

impl Clock {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A write to `key` left it in transition at `at`.
    pub(crate) fn started(&self, key: &str, at: Instant) {
        self.inner().started.put(key.to_owned(), at);
    }

    /// When to poll `key` (of type `kind`) first; empty when nothing is known.
    pub(crate) fn plan(&self, key: &str, kind: &str) -> Vec<Instant> {
        let mut inner = self.inner();
        let Some(&start) = inner.started.get(key) else {
            return Vec::new();
        };
        let Some(&Estimate { lo, hi }) = inner.estimates.get(kind) else {
            return Vec::new();
        };
        if hi.saturating_sub(lo) > hi / 20 {
            vec![start + (lo + hi) / 2, start + hi]
        } else {
            vec![start + hi]
        }
    }

    /// Learns from the polls of `key`'s transition: `(when, terminal)`.
    pub(crate) fn learn(&self, key: &str, kind: &str, observations: &[(Instant, bool)]) {
        let mut inner = self.inner();
        let Some(start) = inner.started.pop(key) else {
            return;
        };
        let known = inner.estimates.get(kind).copied();
        let mut lo = known.map_or(Duration::ZERO, |e| e.lo);
        let mut hi = known.map(|e| e.hi);
        let mut last_end = None;
        for &(at, terminal) in observations {
            let elapsed = at.saturating_duration_since(start);
            if terminal {
                hi = Some(hi.map_or(elapsed, |h| h.min(elapsed)));
                last_end = Some(elapsed);
            } else {
                lo = lo.max(elapsed);
            }
        }
        let Some(hi) = hi else {
            return;
        };
        // The bounds crossed: durations changed (or vary). Start over from the latest end seen.
        let estimate = if lo >= hi {
            Estimate {
                lo: Duration::ZERO,
                hi: last_end.unwrap_or(lo + lo / 10),
            }
        } else {
            Estimate { lo, hi }
        };
        inner.estimates.put(kind.to_owned(), estimate);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn narrows_to_one_poll_at_the_end() {
        let clock = Clock::default();
        let t0 = Instant::now();
        clock.started("k", t0);
        assert!(clock.plan("k", "T").is_empty(), "nothing known yet");
        // First transition: seen running at 95 ms, over at 160 ms.
        clock.learn("k", "T", &[(t0 + 95 * MS, false), (t0 + 160 * MS, true)]);
        clock.started("k", t0);
        assert_eq!(
            clock.plan("k", "T"),
            [t0 + 127 * MS + MS / 2, t0 + 160 * MS]
        );
        // Over at the midpoint: the upper bound comes down.
        clock.learn("k", "T", &[(t0 + 127 * MS, true)]);
        clock.started("k", t0);
        clock.learn("k", "T", &[(t0 + 100 * MS, false), (t0 + 103 * MS, true)]);
        clock.started("k", t0);
        assert_eq!(
            clock.plan("k", "T"),
            [t0 + 103 * MS],
            "one poll once the bounds are close"
        );
    }

    #[test]
    fn crossed_bounds_start_over() {
        let clock = Clock::default();
        let t0 = Instant::now();
        clock.started("k", t0);
        clock.learn("k", "T", &[(t0 + 50 * MS, true)]);
        // Transitions got slower: still running past the old end.
        clock.started("k", t0);
        clock.learn("k", "T", &[(t0 + 80 * MS, false), (t0 + 120 * MS, true)]);
        clock.started("k", t0);
        assert_eq!(clock.plan("k", "T"), [t0 + 60 * MS, t0 + 120 * MS]);
    }
}
