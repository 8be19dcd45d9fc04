//! When to poll a resource that the previous lease holder left in transition.
//!
//! Polling on a growing schedule finds the end of a transition late: with 100 ms transitions and
//! a 20 ms × 1.5 schedule, the end is seen up to 60 ms after it happened, and a queue of writers
//! pays that on every write. But transitions of one resource type tend to take about as long each
//! time, and this process saw when each one started (the previous write's answer). So `Estimates`
//! keeps, per resource type, the longest elapsed time at which a transition was still running
//! (`lo`) and the shortest at which one was over (`hi`), and plans the next polls: at the midpoint
//! while the two are far apart (narrowing them, as a bisection would), then at `hi`. With steady
//! durations that converges to one poll per write, just after the transition ends. Anything the
//! plan misses falls back to the policy's schedule, so a wrong estimate costs a poll, not
//! correctness.

use std::{num::NonZeroUsize, sync::Mutex, time::Duration};

use lru::LruCache;
use tokio::time::Instant;

/// Resource types with an estimate.
const CAPACITY: usize = 16 * 1024;

/// Polls planned at `min_delay` spacing while nothing is known yet, before the schedule takes
/// over: the first transition of a type is found within one `min_delay` of its end.
const FLAT_POLLS: u32 = 16;

#[derive(Clone, Copy, Debug)]
struct Estimate {
    /// Longest elapsed time seen still in transition.
    lo: Duration,
    /// Shortest elapsed time seen terminal.
    hi: Duration,
}

/// Per resource type, what is known of how long its transitions take.
#[derive(Debug)]
pub(crate) struct Estimates(Mutex<LruCache<String, Estimate>>);

impl Default for Estimates {
    fn default() -> Self {
        let capacity = NonZeroUsize::new(CAPACITY).unwrap_or(NonZeroUsize::MIN);
        Self(Mutex::new(LruCache::new(capacity)))
    }
}

impl Estimates {
    fn estimates(&self) -> std::sync::MutexGuard<'_, LruCache<String, Estimate>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// When to poll a resource of type `kind` whose transition began at `start`: at once and
    /// then every `min_delay` while the start or an estimate is unknown (the previous write may
    /// have converged long ago, and the first end seen is the first estimate); with both,
    /// bisecting towards the end, then at it.
    pub(crate) fn plan(
        &self,
        start: Option<Instant>,
        kind: &str,
        min_delay: Duration,
    ) -> Vec<Instant> {
        let now = Instant::now();
        let estimate = self.estimates().get(kind).copied();
        let (Some(start), Some(Estimate { lo, hi })) = (start, estimate) else {
            return (0..FLAT_POLLS).map(|i| now + min_delay * i).collect();
        };
        // Narrow until the bounds are within 0.5% (at least 1 ms) of each other.
        let tolerance = (hi / 200).max(Duration::from_millis(1));
        if hi.saturating_sub(lo) > tolerance {
            vec![start + (lo + hi) / 2, start + hi]
        } else {
            vec![start + hi]
        }
    }

    /// Learns from the polls of a transition that began at `start`: `(when, terminal)`.
    pub(crate) fn learn(
        &self,
        start: Option<Instant>,
        kind: &str,
        observations: &[(Instant, bool)],
    ) {
        let Some(start) = start else {
            return;
        };
        let mut estimates = self.estimates();
        let known = estimates.get(kind).copied();
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
        estimates.put(kind.to_owned(), estimate);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn narrows_to_one_poll_at_the_end() {
        let estimates = Estimates::default();
        let t0 = Instant::now();
        let flat = estimates.plan(Some(t0), "T", 10 * MS);
        assert_eq!(
            estimates.plan(None, "T", 10 * MS).len(),
            FLAT_POLLS as usize
        );
        assert_eq!(
            flat.len(),
            FLAT_POLLS as usize,
            "nothing known yet: poll at once, then flat"
        );
        assert_eq!(flat[1] - flat[0], 10 * MS);
        // First transition: seen running at 95 ms, over at 160 ms.
        estimates.learn(
            Some(t0),
            "T",
            &[(t0 + 95 * MS, false), (t0 + 160 * MS, true)],
        );
        assert_eq!(
            estimates.plan(Some(t0), "T", MS),
            [t0 + 127 * MS + MS / 2, t0 + 160 * MS]
        );
        // Over at the midpoint: the upper bound comes down.
        estimates.learn(Some(t0), "T", &[(t0 + 127 * MS, true)]);
        estimates.learn(
            Some(t0),
            "T",
            &[(t0 + 100 * MS, false), (t0 + 103 * MS, true)],
        );
        assert_eq!(
            estimates.plan(Some(t0), "T", MS),
            [t0 + 101 * MS + MS / 2, t0 + 103 * MS],
            "3 ms apart: still narrowing"
        );
        estimates.learn(
            Some(t0),
            "T",
            &[(t0 + 102 * MS + MS / 2, false), (t0 + 103 * MS, true)],
        );
        assert_eq!(
            estimates.plan(Some(t0), "T", MS),
            [t0 + 103 * MS],
            "one poll once the bounds are close"
        );
    }

    #[test]
    fn crossed_bounds_start_over() {
        let estimates = Estimates::default();
        let t0 = Instant::now();
        estimates.learn(Some(t0), "T", &[(t0 + 50 * MS, true)]);
        // Transitions got slower: still running past the old end.
        estimates.learn(
            Some(t0),
            "T",
            &[(t0 + 80 * MS, false), (t0 + 120 * MS, true)],
        );
        assert_eq!(
            estimates.plan(Some(t0), "T", MS),
            [t0 + 60 * MS, t0 + 120 * MS]
        );
    }
}
