//! The `fast` profile, and one method per knob a caller most often turns, so changing one value
//! in code takes neither struct-update syntax nor a JSON string. Each method is held to the same
//! bounds as [`ConflictPolicy::from_json`] (through [`ConflictPolicy::validate`]), so a value a
//! policy file may not hold fails here too, naming its field.

use std::time::Duration;

use super::{ConflictPolicy, PollSchedule};
use crate::Error;

impl ConflictPolicy {
    /// A profile for services whose transitions take under a second: polls from 20 ms growing
    /// ×1.5 (with jitter) to 100 ms, `Retry-After` honoured up to 100 ms, 10 attempts within one
    /// minute. Everything else is [`azure_arm`](Self::azure_arm)'s.
    ///
    /// Why this schedule: [`azure_arm`](Self::azure_arm) doubles its delays up to a minute, which
    /// is right for ARM (its operations take seconds to minutes) and, after a few polls, makes a
    /// sub-second transition cost several times its length. Here the polls come at about 20, 50, 95, 160, 260 ms and then
    /// every 100 ms, so the end of a transition is seen at most one delay (100 ms, twice that
    /// with jitter) after it happens, while a wait costs at most about ten polls a second.
    /// `Retry-After` counts whole seconds, so even `1` is several times a sub-second transition:
    /// capped at the schedule's longest delay, a hint is worth one poll step. A service that has
    /// not converged within a minute is stuck, not slow, so the deadline ends the wait there.
    ///
    /// `fixtures/policies/fast.json` is this profile written for
    /// [`from_json`](Self::from_json).
    ///
    /// ```
    /// use std::time::Duration;
    /// use reqwest_conflict::ConflictPolicy;
    ///
    /// let policy = ConflictPolicy::fast();
    /// assert_eq!(policy.poll.min_delay, Duration::from_millis(20));
    /// assert_eq!(policy.poll.max_delay, Duration::from_millis(100));
    /// assert_eq!(policy.retry_after_cap, Duration::from_millis(100));
    /// assert_eq!(policy.deadline, Duration::from_secs(60));
    /// policy.validate()?;
    /// # Ok::<(), reqwest_conflict::Error>(())
    /// ```
    pub fn fast() -> Self {
        Self {
            max_attempts: 10,
            deadline: Duration::from_secs(60),
            poll: PollSchedule {
                min_delay: Duration::from_millis(20),
                max_delay: Duration::from_millis(100),
                factor: 1.5,
                jitter: true,
            },
            retry_after_cap: Duration::from_millis(100),
            ..Self::azure_arm()
        }
    }

    /// This policy with another [`deadline`](Self::deadline): the longest one request may spend
    /// resolving conflicts, waits and polls included.
    ///
    /// ```
    /// use std::time::Duration;
    /// use reqwest_conflict::{ConflictPolicy, Error};
    ///
    /// let policy = ConflictPolicy::azure_arm()
    ///     .deadline(Duration::from_secs(45 * 60))?
    ///     .max_attempts(20)?;
    /// assert_eq!(policy.deadline, Duration::from_secs(45 * 60));
    /// assert_eq!(policy.max_attempts, 20);
    ///
    /// // The same bounds as a policy file: a zero deadline would resolve nothing.
    /// let error = ConflictPolicy::azure_arm().deadline(Duration::ZERO).unwrap_err();
    /// assert!(matches!(error, Error::InvalidPolicy { ref path, .. } if path == "deadline"), "{error}");
    /// # Ok::<(), Error>(())
    /// ```
    pub fn deadline(self, deadline: Duration) -> Result<Self, Error> {
        self.set(|p| p.deadline = deadline)
    }

    /// This policy with another [`max_attempts`](Self::max_attempts): how many times the original
    /// request may be sent in all, the first time included (1 to 1,000).
    ///
    /// ```
    /// use reqwest_conflict::ConflictPolicy;
    ///
    /// assert_eq!(ConflictPolicy::fast().max_attempts(3)?.max_attempts, 3);
    /// assert!(ConflictPolicy::fast().max_attempts(0).is_err(), "the first send counts as one");
    /// # Ok::<(), reqwest_conflict::Error>(())
    /// ```
    pub fn max_attempts(self, max_attempts: u32) -> Result<Self, Error> {
        self.set(|p| p.max_attempts = max_attempts)
    }

    /// This policy polling from `min_delay`, growing to `max_delay` (the schedule's factor and
    /// jitter kept). A server's `Retry-After` is floored by `min_delay` too.
    ///
    /// ```
    /// use std::time::Duration;
    /// use reqwest_conflict::{ConflictPolicy, Error};
    ///
    /// let ms = Duration::from_millis;
    /// let policy = ConflictPolicy::azure_arm().poll(ms(500), ms(5_000))?;
    /// assert_eq!((policy.poll.min_delay, policy.poll.max_delay), (ms(500), ms(5_000)));
    /// assert_eq!(policy.poll.factor, 2.0);
    ///
    /// let error = ConflictPolicy::azure_arm().poll(ms(500), ms(100)).unwrap_err();
    /// assert!(matches!(error, Error::InvalidPolicy { ref path, .. } if path == "poll.max_delay"), "{error}");
    /// # Ok::<(), Error>(())
    /// ```
    pub fn poll(self, min_delay: Duration, max_delay: Duration) -> Result<Self, Error> {
        self.set(|p| {
            p.poll.min_delay = min_delay;
            p.poll.max_delay = max_delay;
        })
    }

    /// This policy with leases on or off (see [`LeasePolicy`](crate::LeasePolicy); the TTL and
    /// the types that lease their parent are kept). Off, writers to one resource race, and the
    /// losers wait out the 409s they meet.
    ///
    /// ```
    /// use reqwest_conflict::ConflictPolicy;
    ///
    /// let policy = ConflictPolicy::fast().leases(false)?;
    /// assert!(!policy.leases.enabled);
    /// # Ok::<(), reqwest_conflict::Error>(())
    /// ```
    pub fn leases(self, enabled: bool) -> Result<Self, Error> {
        self.set(|p| p.leases.enabled = enabled)
    }

    /// This policy with leased writes fenced by the resource's `ETag` or not (see
    /// [`LeasePolicy::fence_with_etag`](crate::LeasePolicy::fence_with_etag)): one GET more per
    /// leased write, so that a writer whose lease ran out mid-request is refused by the resource
    /// (412) instead of overwriting the next holder's write. Needs leases on.
    ///
    /// ```
    /// use reqwest_conflict::{ConflictPolicy, Error};
    ///
    /// let policy = ConflictPolicy::azure_arm().fence_with_etag(true)?;
    /// assert!(policy.leases.fence_with_etag);
    ///
    /// // Without leases there is no holder to fence.
    /// let error = ConflictPolicy::azure_arm().leases(false)?.fence_with_etag(true).unwrap_err();
    /// assert!(matches!(error, Error::InvalidPolicy { ref path, .. } if path == "leases.fence_with_etag"), "{error}");
    /// # Ok::<(), Error>(())
    /// ```
    pub fn fence_with_etag(self, on: bool) -> Result<Self, Error> {
        self.set(|p| p.leases.fence_with_etag = on)
    }

    /// This policy with [`stuck_after`](Self::stuck_after) set: a state unchanged for this long
    /// ends the wait with [`Error::Stuck`] (at least `poll.min_delay`).
    ///
    /// ```
    /// use std::time::Duration;
    /// use reqwest_conflict::ConflictPolicy;
    ///
    /// let policy = ConflictPolicy::azure_arm().stuck_after(Duration::from_secs(15 * 60))?;
    /// assert_eq!(policy.stuck_after, Some(Duration::from_secs(15 * 60)));
    /// assert!(ConflictPolicy::azure_arm().stuck_after(Duration::from_millis(1)).is_err());
    /// # Ok::<(), reqwest_conflict::Error>(())
    /// ```
    pub fn stuck_after(self, unchanged_for: Duration) -> Result<Self, Error> {
        self.set(|p| p.stuck_after = Some(unchanged_for))
    }

    /// This policy changed by `change`, if it stays within the bounds of
    /// [`validate`](Self::validate).
    fn set(mut self, change: impl FnOnce(&mut Self)) -> Result<Self, Error> {
        change(&mut self);
        self.validate()?;
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PolicyOverride;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn each_knob_changes_only_its_field() {
        let base = ConflictPolicy::fast();
        // Each case: the policy a knob made, and the change it should have made by hand.
        type Case = (ConflictPolicy, fn(&mut ConflictPolicy));
        let cases: [Case; 5] = [
            (base.clone().deadline(90 * MS).unwrap(), |p| {
                p.deadline = 90 * MS
            }),
            (base.clone().max_attempts(7).unwrap(), |p| {
                p.max_attempts = 7
            }),
            (base.clone().poll(30 * MS, 60 * MS).unwrap(), |p| {
                p.poll.min_delay = 30 * MS;
                p.poll.max_delay = 60 * MS;
            }),
            (base.clone().leases(false).unwrap(), |p| {
                p.leases.enabled = false
            }),
            (base.clone().fence_with_etag(true).unwrap(), |p| {
                p.leases.fence_with_etag = true
            }),
        ];
        for (changed, expected) in cases {
            let mut want = base.clone();
            expected(&mut want);
            assert_eq!(changed, want);
        }
    }

    #[test]
    fn knobs_refuse_what_from_json_refuses_naming_the_field() {
        let path = |r: Result<ConflictPolicy, Error>| match r {
            Err(Error::InvalidPolicy { path, .. }) => path,
            other => panic!("{other:?}"),
        };
        let base = || ConflictPolicy::azure_arm();
        assert_eq!(path(base().deadline(Duration::ZERO)), "deadline");
        assert_eq!(
            path(base().deadline(Duration::from_secs(8 * 86_400))),
            "deadline"
        );
        assert_eq!(path(base().max_attempts(1_001)), "max_attempts");
        assert_eq!(path(base().poll(Duration::ZERO, MS)), "poll.min_delay");
        assert_eq!(path(base().poll(2 * MS, MS)), "poll.max_delay");
    }

    #[test]
    fn a_knob_returns_only_policies_that_validate_overrides_included() {
        let mut base = ConflictPolicy::azure_arm();
        base.resource_types.insert(
            "Microsoft.Web/sites".into(),
            PolicyOverride {
                max_attempts: Some(0),
                ..PolicyOverride::default()
            },
        );
        let error = base.deadline(Duration::from_secs(60)).unwrap_err();
        assert!(
            matches!(&error, Error::InvalidPolicy { path, .. }
                if path == r#"resource_types."Microsoft.Web/sites".max_attempts"#),
            "{error}"
        );
    }

    #[test]
    fn fast_is_valid_and_polls_within_a_tenth_of_a_second_of_the_end() {
        let policy = ConflictPolicy::fast();
        policy.validate().unwrap();
        let schedule = PollSchedule {
            jitter: false,
            ..policy.poll.clone()
        };
        let delays: Vec<Duration> = schedule.backoff().take(8).collect();
        assert_eq!(delays[0], 20 * MS);
        assert!(delays.iter().all(|d| *d <= 100 * MS), "{delays:?}");
        assert_eq!(delays[7], 100 * MS);
        assert!(policy.retry_after_cap <= policy.poll.max_delay);
    }
}
