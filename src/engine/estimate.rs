//! When to poll a transition that is probably about to end, learned per resource.
//!
//! Polling on a growing schedule finds the end of a transition late: with 100 ms transitions and
//! a 20 ms × 1.5 schedule, the end is seen up to 60 ms after it happened, and a queue of writers
//! pays that on every write. But one resource's transitions tend to take about as long each time,
//! and this process saw when each one it started began (its write's answer). So `Estimates`
//! keeps, per resource, the longest elapsed time at which a transition was still running (`lo`)
//! and the shortest at which one was over (`hi`), and plans the next polls: at the midpoint while
//! the two are far apart (narrowing them, as a bisection would), then at `hi`.
//!
//! An estimate only ever moves the first polls earlier or later; the policy's schedule takes over
//! after them, so a wrong one costs a poll, not correctness. It must not cost much time either,
//! which is why it is kept per resource (a slow VM does not slow a fast one down), why no planned
//! poll lies more than `poll.max_delay` after the transition began, and why it forgets:
//! - after [`FORGET`] without news it is dropped;
//! - a transition seen running past `hi` (durations changed, or someone else wrote in between)
//!   starts it over from that transition's end;
//! - a transition already over at its first poll, when that poll was the one at `hi`, may have
//!   ended well before it: every [`PROBE_EVERY`]th time in a row, the bounds widen below `hi`
//!   (then doubling each time the probe finds it over too), so that the next plan probes below
//!   it: durations that shrank are found within a few writes, instead of `hi` staying wherever
//!   one late observation put it. A probe that finds the transition still running costs one
//!   poll, hence not on every write.

use std::{num::NonZeroUsize, sync::Mutex, time::Duration};

use lru::LruCache;
use tokio::time::Instant;
use url::Url;

use crate::{PollSchedule, TransitionEstimate};

/// Resources remembered.
const CAPACITY: usize = 16 * 1024;

/// How long an estimate is trusted without being confirmed by another transition.
pub(super) const FORGET: Duration = crate::lease::ESTIMATE_KEPT;

/// How many times in a row a sure estimate is confirmed before the next plan probes below it.
const PROBE_EVERY: u32 = 3;

#[derive(Clone, Copy, Debug)]
struct Estimate {
    /// Longest elapsed time seen still in transition.
    lo: Duration,
    /// Shortest elapsed time seen terminal.
    hi: Duration,
    /// How far below `hi` the bounds were last widened; zero unless the plans are searching
    /// downwards for durations that shrank.
    step: Duration,
    /// How many plans in a row polled once, at `hi`, and found the transition over.
    confirmed: u32,
    /// When it was last learned from.
    learned: Instant,
}

/// A transition one of this engine's writes left: when its answer came back, and the operation
/// it named (`Azure-AsyncOperation`), when the policy lets us poll it.
#[derive(Clone, Debug)]
pub(super) struct Left {
    pub began: Instant,
    pub operation: Option<Url>,
}

#[derive(Debug, Default)]
struct Known {
    estimate: Option<Estimate>,
    left: Option<Left>,
}

/// Per resource key, what is known of its transitions.
#[derive(Debug)]
pub(crate) struct Estimates(Mutex<LruCache<String, Known>>);

impl Default for Estimates {
    fn default() -> Self {
        let capacity = NonZeroUsize::new(CAPACITY).unwrap_or(NonZeroUsize::MIN);
        Self(Mutex::new(LruCache::new(capacity)))
    }
}

impl Estimates {
    fn known(&self) -> std::sync::MutexGuard<'_, LruCache<String, Known>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that a write to `key` left it in transition, as [`Left`] says.
    pub(super) fn left(&self, key: &str, left: Left) {
        self.known().get_or_insert_mut_ref(key, Known::default).left = Some(left);
    }

    /// The transition a write of this engine last left on `key`, if any.
    pub(super) fn last_left(&self, key: &str) -> Option<Left> {
        self.known().get(key).and_then(|k| k.left.clone())
    }

    /// What is known of `key`'s transitions, fresh, to share with other processes.
    pub(super) fn export(&self, key: &str) -> Option<TransitionEstimate> {
        let estimate = self.known().get(key)?.estimate?;
        (estimate.learned.elapsed() <= FORGET).then_some(TransitionEstimate {
            running: estimate.lo,
            over: estimate.hi,
            step: estimate.step,
            confirmed: estimate.confirmed,
            age: Duration::ZERO,
        })
    }

    /// Takes what another process learned of `key`'s transitions as this one's: the holders of
    /// a lease take turns, so the last one to learn knows the most. It is forgotten when it
    /// would have been where it was learned (its age counts), unless news come first.
    pub(super) fn import(&self, key: &str, shared: TransitionEstimate) {
        let now = Instant::now();
        let Some(learned) = now.checked_sub(shared.age).filter(|_| shared.age <= FORGET) else {
            return;
        };
        let estimate = Estimate {
            lo: shared.running,
            hi: shared.over,
            step: shared.step,
            confirmed: shared.confirmed.min(PROBE_EVERY),
            learned,
        };
        self.known()
            .get_or_insert_mut_ref(key, Known::default)
            .estimate = Some(estimate);
    }

    /// When to poll a transition of `key` that began at `start`: nothing planned while the start
    /// or a fresh estimate is unknown (the caller polls at once and then on the schedule);
    /// otherwise bisecting towards the end, then at it, never past `poll.max_delay` after
    /// `start`.
    pub(super) fn plan(
        &self,
        key: &str,
        start: Option<Instant>,
        poll: &PollSchedule,
    ) -> Vec<Instant> {
        let Some(start) = start else {
            return Vec::new();
        };
        let Some(Estimate {
            lo, hi, learned, ..
        }) = self.known().get(key).and_then(|k| k.estimate)
        else {
            return Vec::new();
        };
        if learned.elapsed() > FORGET {
            return Vec::new();
        }
        let hi = hi.min(poll.max_delay);
        let lo = lo.min(hi);
        if hi - lo > tolerance(hi) {
            vec![start + (lo + hi) / 2, start + hi]
        } else {
            vec![start + hi]
        }
    }

    /// Learns from the polls of a transition of `key` that began at `start`: `(when, terminal)`.
    /// Whether anything was learned.
    pub(super) fn learn(
        &self,
        key: &str,
        start: Option<Instant>,
        observations: &[(Instant, bool)],
    ) -> bool {
        let Some(start) = start else {
            return false;
        };
        let Some(&(_, first_terminal)) = observations.first() else {
            return false;
        };
        let mut known = self.known();
        let fresh = known
            .get(key)
            .and_then(|k| k.estimate)
            .filter(|e| e.learned.elapsed() <= FORGET);
        let mut lo = fresh.map_or(Duration::ZERO, |e| e.lo);
        let mut hi = fresh.map(|e| e.hi);
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
            return false;
        };
        // Whether the last plan was sure (one poll), how often in a row that was confirmed,
        // and whether the plans were already searching downwards.
        let (sure, confirmed, step) = fresh.map_or((false, 0, Duration::ZERO), |e| {
            (
                e.hi - e.lo.min(e.hi) <= tolerance(e.hi),
                e.confirmed,
                e.step,
            )
        });
        // Over before the first look, where the estimate was sure, or already probing lower:
        // it may have ended well before `lo`. The bounds widen below `hi`, twice as far each
        // time in a row, so the next plans probe lower and durations that shrank are found
        // within a few writes. Once they reach zero there is nothing below to probe: the
        // search stops, and bisecting from zero takes over.
        let widened = |step: Duration| {
            let step = step.saturating_mul(2).max(tolerance(hi) * 2);
            if step >= hi {
                (Duration::ZERO, hi, Duration::ZERO, 0)
            } else {
                (lo.min(hi - step), hi, step, 0)
            }
        };
        let (lo, hi, step, confirmed) = if lo >= hi {
            // Still running past the known end: start over from this transition's end.
            let end = last_end.unwrap_or(lo + lo / 10);
            (Duration::ZERO, end, Duration::ZERO, 0)
        } else if first_terminal && !step.is_zero() {
            widened(step)
        } else if first_terminal && sure {
            let confirmed = confirmed.saturating_add(1);
            if confirmed >= PROBE_EVERY {
                widened(step)
            } else {
                (lo, hi, step, confirmed)
            }
        } else {
            (lo, hi, Duration::ZERO, 0)
        };
        let estimate = Estimate {
            lo,
            hi,
            step,
            confirmed,
            learned: Instant::now(),
        };
        known.get_or_insert_mut_ref(key, Known::default).estimate = Some(estimate);
        true
    }
}

/// How close the bounds must be for one poll, at `hi`, to be planned: 1% of it, at least 1 ms.
fn tolerance(hi: Duration) -> Duration {
    (hi / 100).max(Duration::from_millis(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn poll(max_delay: Duration) -> PollSchedule {
        PollSchedule {
            min_delay: MS,
            max_delay,
            factor: 2.0,
            jitter: false,
        }
    }

    /// What a guard would see of a transition of `length` that began at `t0`, polling on `plan`
    /// and then every millisecond: the observations up to the first terminal one.
    fn observe(plan: &[Instant], t0: Instant, length: Duration) -> Vec<(Instant, bool)> {
        let mut seen = Vec::new();
        let mut at = plan.first().copied().unwrap_or(t0);
        let mut plan = plan.iter().copied().skip(1);
        loop {
            let terminal = at >= t0 + length;
            seen.push((at, terminal));
            if terminal {
                return seen;
            }
            at = plan.next().unwrap_or(at + MS);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn narrows_to_one_poll_at_the_end() {
        let estimates = Estimates::default();
        let t0 = Instant::now();
        let poll = poll(Duration::from_secs(60));
        assert!(
            estimates.plan("r", Some(t0), &poll).is_empty(),
            "nothing known yet: the caller polls at once, then on its schedule"
        );
        // First transition: seen running at 95 ms, over at 160 ms.
        estimates.learn(
            "r",
            Some(t0),
            &[(t0 + 95 * MS, false), (t0 + 160 * MS, true)],
        );
        assert!(estimates.plan("r", None, &poll).is_empty(), "start unknown");
        assert!(
            estimates.plan("other", Some(t0), &poll).is_empty(),
            "per resource"
        );
        assert_eq!(
            estimates.plan("r", Some(t0), &poll),
            [t0 + 127 * MS + MS / 2, t0 + 160 * MS]
        );
        // Running at the midpoint, then over: the bounds close in.
        estimates.learn(
            "r",
            Some(t0),
            &[(t0 + 127 * MS, false), (t0 + 160 * MS, true)],
        );
        estimates.learn(
            "r",
            Some(t0),
            &[(t0 + 150 * MS, false), (t0 + 151 * MS, true)],
        );
        assert_eq!(
            estimates.plan("r", Some(t0), &poll),
            [t0 + 151 * MS],
            "one poll once the bounds are close"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn crossed_bounds_start_over() {
        let estimates = Estimates::default();
        let t0 = Instant::now();
        let poll = poll(Duration::from_secs(60));
        estimates.learn(
            "r",
            Some(t0),
            &[(t0 + 40 * MS, false), (t0 + 50 * MS, true)],
        );
        // Transitions got slower: still running past the old end.
        estimates.learn(
            "r",
            Some(t0),
            &[(t0 + 80 * MS, false), (t0 + 120 * MS, true)],
        );
        assert_eq!(
            estimates.plan("r", Some(t0), &poll),
            [t0 + 60 * MS, t0 + 120 * MS]
        );
    }

    /// Transitions of `lengths`, one after another, each polled on the plan and then every
    /// millisecond: when each was seen to end, in milliseconds after it began.
    async fn found_ends(lengths: impl IntoIterator<Item = Duration>) -> Vec<u128> {
        let estimates = Estimates::default();
        let poll = poll(Duration::from_secs(60));
        let mut found = Vec::new();
        for length in lengths {
            let t0 = Instant::now();
            let seen = observe(&estimates.plan("r", Some(t0), &poll), t0, length);
            estimates.learn("r", Some(t0), &seen);
            let end = seen.last().map(|&(at, _)| at - t0).unwrap_or_default();
            found.push(end.as_millis());
            tokio::time::advance(end).await;
        }
        found
    }

    /// One late observation (a 10 s transition among 1 s ones: someone else wrote in between)
    /// must not make every later write wait 10 s.
    #[tokio::test(start_paused = true)]
    async fn recovers_from_one_late_observation() {
        let second = Duration::from_secs(1);
        let lengths = [second, second, 10 * second]
            .into_iter()
            .chain([second; 12]);
        let found = found_ends(lengths).await;
        let last = *found.last().unwrap_or(&0);
        assert!(
            (1000..1100).contains(&last),
            "back to finding 1 s transitions within 10%: {found:?}"
        );
    }

    /// Durations that shrank for good (10 s, then 1 s) are found again too.
    #[tokio::test(start_paused = true)]
    async fn follows_shorter_transitions_down() {
        let second = Duration::from_secs(1);
        let found = found_ends([10 * second; 4].into_iter().chain([second; 14])).await;
        let last = *found.last().unwrap_or(&0);
        assert!((1000..1100).contains(&last), "{found:?}");
    }

    /// Steady durations cost one poll per write once learned, and two on the writes that probe
    /// below the end, one write in `PROBE_EVERY + 1`.
    #[tokio::test(start_paused = true)]
    async fn steady_durations_cost_one_poll_and_a_probe_now_and_then() {
        let estimates = Estimates::default();
        let poll = poll(Duration::from_secs(60));
        let length = 100 * MS;
        let mut polls = Vec::new();
        for _ in 0..30 {
            let t0 = Instant::now();
            let seen = observe(&estimates.plan("r", Some(t0), &poll), t0, length);
            estimates.learn("r", Some(t0), &seen);
            let found = seen.last().map(|&(at, _)| at - t0).unwrap_or_default();
            assert!(found <= length + 2 * MS || polls.len() < 10, "{found:?}");
            polls.push(seen.len());
            tokio::time::advance(found).await;
        }
        let probes = 12 / (PROBE_EVERY as usize + 1);
        let last: usize = polls[18..].iter().sum();
        assert_eq!(last, 12 + probes, "{polls:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn never_plans_past_max_delay_and_forgets() {
        let estimates = Estimates::default();
        let t0 = Instant::now();
        estimates.learn(
            "r",
            Some(t0),
            &[(t0 + 30 * MS, false), (t0 + 90 * MS, true)],
        );
        let plan = estimates.plan("r", Some(t0), &poll(50 * MS));
        assert_eq!(plan, [t0 + 40 * MS, t0 + 50 * MS], "capped by max_delay");
        tokio::time::advance(FORGET + MS).await;
        let t1 = Instant::now();
        assert!(
            estimates.plan("r", Some(t1), &poll(50 * MS)).is_empty(),
            "an estimate not confirmed for FORGET is dropped"
        );
    }

    /// What one process learned plans another's polls just as it would its own.
    #[tokio::test(start_paused = true)]
    async fn an_exported_estimate_plans_the_same_polls_elsewhere() {
        let (here, there) = (Estimates::default(), Estimates::default());
        let t0 = Instant::now();
        let poll = poll(Duration::from_secs(60));
        assert_eq!(here.export("r"), None, "nothing learned yet");
        here.learn(
            "r",
            Some(t0),
            &[(t0 + 95 * MS, false), (t0 + 160 * MS, true)],
        );
        let shared = here.export("r").expect("learned");
        let text = shared.to_string();
        assert_eq!(text, "v1 95 160 0 0");
        there.import(
            "r",
            text.parse().expect("what Display writes, FromStr reads"),
        );
        assert_eq!(there.export("r"), Some(shared), "nothing lost on the way");
        assert_eq!(
            there.plan("r", Some(t0), &poll),
            here.plan("r", Some(t0), &poll)
        );
        tokio::time::advance(FORGET + MS).await;
        assert_eq!(here.export("r"), None, "forgotten estimates are not shared");

        // One learned 14 minutes ago elsewhere is forgotten here a minute later, as it would
        // have been there.
        let elsewhere = Estimates::default();
        elsewhere.import("r", shared.with_age(FORGET - Duration::from_secs(60)));
        assert!(elsewhere.export("r").is_some());
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(elsewhere.export("r"), None);
        elsewhere.import("r", shared.with_age(FORGET + MS));
        assert_eq!(elsewhere.export("r"), None, "too old to take");
    }

    /// Transitions that became near-instant after slower ones, each seen over at its first
    /// poll (its answer comes a round trip after it is sent): the downward search ends at zero
    /// instead of doubling its step without end, and a count from a store cannot overflow.
    #[tokio::test(start_paused = true)]
    async fn a_downward_search_ends_at_zero() {
        let estimates = Estimates::default();
        let round_trip = 3 * MS;
        for length in std::iter::repeat_n(100 * MS, 10).chain(std::iter::repeat_n(MS, 500)) {
            let t0 = Instant::now();
            let plan = estimates.plan("r", Some(t0), &poll(Duration::from_secs(60)));
            let mut seen = Vec::new();
            for at in plan.into_iter().chain((1u32..).map(|n| t0 + n * 10 * MS)) {
                let answered = at.max(t0) + round_trip;
                seen.push((answered, answered >= t0 + length));
                if answered >= t0 + length {
                    break;
                }
            }
            estimates.learn("r", Some(t0), &seen);
            tokio::time::advance(Duration::from_millis(20)).await;
        }
        let last = estimates.export("r").expect("learned");
        assert!(last.step <= last.over, "{last}");
        assert!(last.over <= 10 * MS, "found the short ones: {last}");

        estimates.import("r", "v1 99 100 0 4294967295".parse().expect("a count"));
        let t0 = Instant::now();
        estimates.learn("r", Some(t0), &[(t0 + 100 * MS, true)]);
    }

    #[test]
    fn remembers_the_operation_a_write_left() {
        let estimates = Estimates::default();
        assert!(estimates.last_left("r").is_none());
        let operation = Url::parse("https://management.azure.com/op/1").ok();
        let began = Instant::now();
        estimates.left(
            "r",
            Left {
                began,
                operation: operation.clone(),
            },
        );
        let left = estimates.last_left("r");
        assert_eq!(left.as_ref().map(|l| l.began), Some(began));
        assert_eq!(left.and_then(|l| l.operation), operation);
    }
}
