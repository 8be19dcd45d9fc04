//! What the engine does about conflicts: budgets, deadlines, poll schedule, trusted hosts, rules.
//!
//! A policy is data so that tools embedding this crate can configure it without recompiling
//! (see [`ConflictPolicy::from_json`]). The engine reads it; it never decides anything a policy
//! could say instead.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use serde::{Deserialize, Serialize};

use crate::{Error, classify::Rule};

/// How conflicts are resolved. `ConflictPolicy::default()` is [`ConflictPolicy::azure_arm`].
///
/// ```
/// use std::time::Duration;
/// use reqwest_conflict::ConflictPolicy;
///
/// let policy = ConflictPolicy::from_json(r#"{
///     "max_attempts": 5,
///     "deadline": "10m",
///     "poll": { "min_delay": "2s", "max_delay": "30s" }
/// }"#)?;
/// assert_eq!(policy.deadline, Duration::from_secs(600));
/// assert_eq!(policy.retry_after_cap, ConflictPolicy::azure_arm().retry_after_cap);
/// # Ok::<(), reqwest_conflict::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConflictPolicy {
    /// How many times the original request may be sent in all, the first time included.
    pub max_attempts: u32,
    /// The longest one request may spend resolving conflicts, waits and polls included.
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
    /// The delay between polls of a resource or operation that has not converged yet.
    pub poll: PollSchedule,
    /// The longest a server's `Retry-After` may make us wait before one poll.
    #[serde(with = "humantime_serde")]
    pub retry_after_cap: Duration,
    /// Hosts other than the request's own that polls may go to (operation-status URIs are often
    /// regional). `*.example.com` matches any subdomain. Such hosts must be reached over https.
    pub allowed_hosts: Vec<String>,
    /// Treat `unknown` conflicts like state conflicts (wait for the resource, then retry).
    pub retry_unknown: bool,
    /// How much of a 409/412 body is read to classify it. The caller still gets the whole body.
    pub max_error_body: usize,
    /// How much of a re-fetched representation or operation status is read.
    pub max_fetch_body: usize,
    /// Classification rules consulted before the built-in Azure table, so they can override it.
    pub rules: Vec<Rule>,
}

/// An exponential poll schedule (the delays of a `backon` [`ExponentialBuilder`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PollSchedule {
    /// The first delay.
    #[serde(with = "humantime_serde")]
    pub min_delay: Duration,
    /// No delay grows past this.
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// Each delay is the previous one times this.
    pub factor: f32,
    /// Add up to 100% random jitter, so writers released together do not retry together.
    pub jitter: bool,
}

impl Default for PollSchedule {
    fn default() -> Self {
        Self {
            min_delay: Duration::from_secs(5),
            max_delay: Duration::from_secs(60),
            factor: 2.0,
            jitter: true,
        }
    }
}

impl PollSchedule {
    /// The delays, as an endless iterator.
    pub fn backoff(&self) -> ExponentialBackoff {
        let builder = ExponentialBuilder::new()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_factor(self.factor)
            .without_max_times();
        if self.jitter {
            builder.with_jitter().build()
        } else {
            builder.build()
        }
    }
}

impl Default for ConflictPolicy {
    fn default() -> Self {
        Self::azure_arm()
    }
}

impl ConflictPolicy {
    /// The Azure Resource Manager profile: polls every 5 s growing to 60 s, `Retry-After` honoured
    /// up to 60 s, 10 attempts within 20 minutes, ARM's public and sovereign hosts trusted.
    pub fn azure_arm() -> Self {
        Self {
            max_attempts: 10,
            deadline: Duration::from_secs(20 * 60),
            poll: PollSchedule::default(),
            retry_after_cap: Duration::from_secs(60),
            allowed_hosts: [
                "management.azure.com",
                "*.management.azure.com",
                "management.usgovcloudapi.net",
                "*.management.usgovcloudapi.net",
                "management.chinacloudapi.cn",
                "*.management.chinacloudapi.cn",
            ]
            .map(String::from)
            .to_vec(),
            retry_unknown: false,
            max_error_body: 64 * 1024,
            max_fetch_body: 1024 * 1024,
            rules: Vec::new(),
        }
    }

    /// Loads a policy from JSON. Missing fields take their [`azure_arm`](Self::azure_arm) values;
    /// durations are written like `"90s"`, `"10m"`, `"250ms"`. Unknown fields and bad values are
    /// errors naming the field's path.
    pub fn from_json(json: &str) -> Result<Self, Error> {
        let de = &mut serde_json::Deserializer::from_str(json);
        let policy: Self =
            serde_path_to_error::deserialize(de).map_err(|e| Error::InvalidPolicy {
                path: e.path().to_string(),
                message: e.inner().to_string(),
            })?;
        policy.validate()?;
        Ok(policy)
    }

    /// Checks the values no type can: a budget of at least one attempt, a schedule that grows and
    /// cannot spin, buffers of a sane size.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |path: &str, message: &str| {
            Err(Error::InvalidPolicy {
                path: path.into(),
                message: message.into(),
            })
        };
        if self.max_attempts == 0 {
            return bad("max_attempts", "must be at least 1");
        }
        if self.poll.min_delay < Duration::from_millis(1) {
            return bad("poll.min_delay", "must be at least 1ms");
        }
        if self.poll.max_delay < self.poll.min_delay {
            return bad("poll.max_delay", "must not be less than poll.min_delay");
        }
        if !(self.poll.factor.is_finite() && self.poll.factor >= 1.0) {
            return bad("poll.factor", "must be a finite number of at least 1");
        }
        const MAX_BUFFER: usize = 64 * 1024 * 1024;
        if !(1..=MAX_BUFFER).contains(&self.max_error_body) {
            return bad("max_error_body", "must be between 1 byte and 64 MiB");
        }
        if !(1..=MAX_BUFFER).contains(&self.max_fetch_body) {
            return bad("max_fetch_body", "must be between 1 byte and 64 MiB");
        }
        Ok(())
    }

    /// Whether polls may go to `host` (besides the request's own host, which always may).
    pub fn host_allowed(&self, host: &str) -> bool {
        self.allowed_hosts
            .iter()
            .any(|pattern| match pattern.strip_prefix("*.") {
                Some(suffix) => host
                    .len()
                    .checked_sub(suffix.len() + 1)
                    .filter(|&dot| dot > 0)
                    .is_some_and(|dot| {
                        host.as_bytes()[dot] == b'.' && host[dot + 1..].eq_ignore_ascii_case(suffix)
                    }),
                None => host.eq_ignore_ascii_case(pattern),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_round_trips_through_json() {
        let p = ConflictPolicy::azure_arm();
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(ConflictPolicy::from_json(&json).unwrap(), p);
    }

    #[test]
    fn errors_name_the_path() {
        let e = ConflictPolicy::from_json(r#"{"poll":{"min_delay":"soon"}}"#).unwrap_err();
        assert!(
            matches!(&e, Error::InvalidPolicy { path, .. } if path == "poll.min_delay"),
            "{e}"
        );
        let e = ConflictPolicy::from_json(r#"{"max_attempt":3}"#).unwrap_err();
        assert!(matches!(&e, Error::InvalidPolicy { .. }), "{e}");
        let e = ConflictPolicy::from_json(r#"{"max_attempts":0}"#).unwrap_err();
        assert!(matches!(&e, Error::InvalidPolicy { path, .. } if path == "max_attempts"));
        let e = ConflictPolicy::from_json(r#"{"poll":{"factor":0.5}}"#).unwrap_err();
        assert!(matches!(&e, Error::InvalidPolicy { path, .. } if path == "poll.factor"));
    }

    #[test]
    fn host_patterns() {
        let p = ConflictPolicy::azure_arm();
        assert!(p.host_allowed("management.azure.com"));
        assert!(p.host_allowed("EastUS.Management.Azure.com"));
        assert!(!p.host_allowed("evilmanagement.azure.com"));
        assert!(!p.host_allowed("management.azure.com.evil.net"));
        assert!(!p.host_allowed(".management.azure.com"));
        assert!(!p.host_allowed("example.com"));
    }

    #[test]
    fn schedule_grows_to_its_cap() {
        let s = PollSchedule {
            min_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(40),
            factor: 2.0,
            jitter: false,
        };
        let delays: Vec<_> = s
            .backoff()
            .take(5)
            .map(|d| (d.as_secs_f64() * 1000.0).round() as u64)
            .collect();
        assert_eq!(delays, [10, 20, 40, 40, 40]);
    }
}
