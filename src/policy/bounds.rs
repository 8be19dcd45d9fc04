//! The bounds of a policy's values, listed once.
//!
//! [`ConflictPolicy::validate`] (and so [`ConflictPolicy::from_json`]) refuses a value outside its
//! bound, [`ConflictPolicy::clamped`] moves it inside (a hand-built policy given to a constructor
//! that cannot fail), and [`ConflictPolicy::with_override`] refuses a per-request override that
//! would leave one. All three read [`BOUNDS`], so what a policy file may not say, a hand-built
//! policy or a single request cannot do either.

use std::{net::Ipv6Addr, time::Duration};

use humantime_serde::re::humantime::format_duration;

use super::{ConflictPolicy, MAX_DEADLINE};
use crate::Error;

/// The largest body buffer a policy may ask for: bodies are buffered up to this size.
const MAX_BUFFER: u64 = 64 * 1024 * 1024;

/// The most merge bases a policy may remember. The cache is reserved in full when the middleware
/// is built (about 2 MiB of table at this size; `1e8` reserved 2 GiB and `usize::MAX` panicked),
/// and 65,536 is more resources than one process has between reading one and writing it back.
const MAX_REMEMBERED: u64 = 65_536;

/// Every bounded field of a policy, in the order they are checked and clamped (a bound that
/// depends on another field comes after it). `ConflictPolicy::validate`'s documentation lists
/// these bounds for users; a change here belongs there too.
pub(super) const BOUNDS: &[Bound] = &[
    Bound {
        path: "max_attempts",
        range: Range::Count {
            get: |p| p.max_attempts.into(),
            set: |p, v| p.max_attempts = v as u32,
            min: 1,
            max: 1_000,
            bytes: false,
        },
        why: "the first send counts as one, and a thousand sends of one write is a loop, not a budget",
    },
    Bound {
        path: "deadline",
        range: Range::Duration {
            get: |p| p.deadline,
            set: |p, v| p.deadline = v,
            min: Floor::At(Duration::from_millis(1)),
            max: MAX_DEADLINE,
        },
        why: "a request needs some time to resolve, and the deadline is added to the clock",
    },
    Bound {
        path: "poll.min_delay",
        range: Range::Duration {
            get: |p| p.poll.min_delay,
            set: |p, v| p.poll.min_delay = v,
            min: Floor::At(Duration::from_millis(1)),
            max: MAX_DEADLINE,
        },
        why: "polls must not spin, and each delay is added to the clock",
    },
    Bound {
        path: "poll.max_delay",
        range: Range::Duration {
            get: |p| p.poll.max_delay,
            set: |p, v| p.poll.max_delay = v,
            min: Floor::Field {
                path: "poll.min_delay",
                get: |p| p.poll.min_delay,
            },
            max: MAX_DEADLINE,
        },
        why: "the schedule only grows, and each delay is added to the clock",
    },
    Bound {
        path: "poll.factor",
        range: Range::Factor {
            get: |p| p.poll.factor,
            set: |p, v| p.poll.factor = v,
            min: 1.0,
            max: 100.0,
        },
        why: "below 1 the delays shrink to a spin; above 100 the second poll already waits max_delay",
    },
    Bound {
        path: "retry_after_cap",
        range: Range::Duration {
            get: |p| p.retry_after_cap,
            set: |p, v| p.retry_after_cap = v,
            min: Floor::At(Duration::ZERO),
            max: MAX_DEADLINE,
        },
        why: "a server's Retry-After is added to the clock, and no wait outlives the longest deadline",
    },
    Bound {
        path: "max_error_body",
        range: Range::Count {
            get: |p| p.max_error_body as u64,
            set: |p, v| p.max_error_body = v as usize,
            min: 1,
            max: MAX_BUFFER,
            bytes: true,
        },
        why: "a 409/412 body is buffered up to this size to classify it, and an empty read classifies nothing",
    },
    Bound {
        path: "max_fetch_body",
        range: Range::Count {
            get: |p| p.max_fetch_body as u64,
            set: |p, v| p.max_fetch_body = v as usize,
            min: 1,
            max: MAX_BUFFER,
            bytes: true,
        },
        why: "a re-fetched representation is buffered up to this size, and an empty read fetches nothing",
    },
    Bound {
        path: "leases.ttl",
        range: Range::Duration {
            get: |p| p.leases.ttl,
            set: |p, v| p.leases.ttl = v,
            min: Floor::At(Duration::from_secs(1)),
            max: MAX_DEADLINE,
        },
        why: "a shorter lease expires while its holder is still writing and lets a second writer in, \
              and a longer one outlives any deadline",
    },
    Bound {
        path: "leases.fence_with_etag",
        range: Range::Requires {
            get: |p| p.leases.fence_with_etag,
            set: |p, v| p.leases.fence_with_etag = v,
            needs: "leases.enabled",
            needs_get: |p| p.leases.enabled,
        },
        why: "the ETag fences a leased write against a holder that lost its lease; without \
              leases no write would be fenced, and the policy would promise what it does not do",
    },
    Bound {
        path: "stuck_after",
        range: Range::Duration {
            // Unset is unbounded: the deadline alone ends the wait.
            get: |p| p.stuck_after.unwrap_or(MAX_DEADLINE),
            set: |p, v| {
                if p.stuck_after.is_some() {
                    p.stuck_after = Some(v);
                }
            },
            min: Floor::Field {
                path: "poll.min_delay",
                get: |p| p.poll.min_delay,
            },
            max: MAX_DEADLINE,
        },
        why: "a state can only be seen not to change between two polls, and each wait is added \
              to the clock",
    },
    Bound {
        path: "diagnose.activity_log_window",
        range: Range::Duration {
            get: |p| p.diagnose.activity_log_window,
            set: |p, v| p.diagnose.activity_log_window = v,
            min: Floor::At(Duration::from_secs(1)),
            max: MAX_DEADLINE,
        },
        why: "the Activity Log is queried by the second, and the window is taken from the clock",
    },
    Bound {
        path: "remember_representations",
        range: Range::Count {
            get: |p| p.remember_representations as u64,
            set: |p, v| p.remember_representations = v as usize,
            min: 0,
            max: MAX_REMEMBERED,
            bytes: false,
        },
        why: "the cache of merge bases is reserved in full when the middleware is built",
    },
    Bound {
        path: "allowed_hosts",
        range: Range::HostPatterns {
            get: |p| &p.allowed_hosts,
            get_mut: |p| &mut p.allowed_hosts,
        },
        why: "a pattern that matches no host is a mistake, and one that matches a whole top-level \
              domain (or every name written with a trailing dot) trusts hosts nobody meant",
    },
];

/// One bounded field of a policy.
pub(super) struct Bound {
    /// The field's path as users write it in a policy file.
    pub(super) path: &'static str,
    /// The values allowed, and how to read and write the field.
    range: Range,
    /// Why the bound exists: the end of the error message.
    why: &'static str,
}

/// The values a field may take. Each variant carries the field's accessors, so one row names the
/// field once.
enum Range {
    /// An integer in `min..=max` (all the counted fields fit in a `u64`).
    Count {
        get: fn(&ConflictPolicy) -> u64,
        set: fn(&mut ConflictPolicy, u64),
        min: u64,
        max: u64,
        /// Whether the count is of bytes (only how the message writes it).
        bytes: bool,
    },
    /// A duration in `min..=max`.
    Duration {
        get: fn(&ConflictPolicy) -> Duration,
        set: fn(&mut ConflictPolicy, Duration),
        min: Floor,
        max: Duration,
    },
    /// A finite number in `min..=max`.
    Factor {
        get: fn(&ConflictPolicy) -> f32,
        set: fn(&mut ConflictPolicy, f32),
        min: f32,
        max: f32,
    },
    /// A switch that may be on only while another is: off is always allowed.
    Requires {
        get: fn(&ConflictPolicy) -> bool,
        set: fn(&mut ConflictPolicy, bool),
        /// The other switch's path, whose own row (if any) comes earlier.
        needs: &'static str,
        needs_get: fn(&ConflictPolicy) -> bool,
    },
    /// A list of host patterns, each of which must pass [`host_pattern_error`].
    HostPatterns {
        get: fn(&ConflictPolicy) -> &Vec<String>,
        get_mut: fn(&mut ConflictPolicy) -> &mut Vec<String>,
    },
}

/// The least a duration may be: a constant, or another field's value.
enum Floor {
    At(Duration),
    /// Another field, whose own row comes earlier in [`BOUNDS`].
    Field {
        path: &'static str,
        get: fn(&ConflictPolicy) -> Duration,
    },
}

impl Floor {
    fn of(&self, policy: &ConflictPolicy) -> Duration {
        match self {
            Floor::At(d) => *d,
            Floor::Field { get, .. } => get(policy),
        }
    }

    fn describe(&self, policy: &ConflictPolicy) -> String {
        match self {
            Floor::At(d) => format_duration(*d).to_string(),
            Floor::Field { path, get } => format!("{path} ({})", format_duration(get(policy))),
        }
    }
}

/// A field outside its bound: the path, and a message saying what is allowed and why.
pub(super) struct Violation {
    pub(super) path: String,
    pub(super) message: String,
}

impl Violation {
    /// The error for it, its path under `prefix` (`resource_types."…".`, or nothing).
    pub(super) fn into_error(self, prefix: &str, suffix: &str) -> Error {
        Error::InvalidPolicy {
            path: format!("{prefix}{}", self.path),
            message: format!("{}{suffix}", self.message),
        }
    }
}

impl Bound {
    fn violation(&self, policy: &ConflictPolicy) -> Option<Violation> {
        let outside = |allowed: String, value: String| {
            Some(Violation {
                path: self.path.to_owned(),
                message: format!("must be {allowed}, not {value}: {}", self.why),
            })
        };
        match &self.range {
            Range::Count {
                get,
                min,
                max,
                bytes,
                ..
            } => {
                let v = get(policy);
                if (*min..=*max).contains(&v) {
                    return None;
                }
                let show = |n| show_count(n, *bytes);
                outside(
                    format!("between {} and {}", show(*min), show(*max)),
                    show(v),
                )
            }
            Range::Duration { get, min, max, .. } => {
                let v = get(policy);
                if (min.of(policy)..=*max).contains(&v) {
                    return None;
                }
                outside(
                    format!(
                        "between {} and {}",
                        min.describe(policy),
                        format_duration(*max)
                    ),
                    format_duration(v).to_string(),
                )
            }
            Range::Factor { get, min, max, .. } => {
                let v = get(policy);
                // `contains` is false for NaN, so NaN is refused too.
                if (*min..=*max).contains(&v) {
                    return None;
                }
                outside(format!("a number between {min} and {max}"), v.to_string())
            }
            Range::Requires {
                get,
                needs,
                needs_get,
                ..
            } => {
                if !get(policy) || needs_get(policy) {
                    return None;
                }
                outside(format!("false while {needs} is false"), "true".to_owned())
            }
            Range::HostPatterns { get, .. } => {
                let (i, pattern, problem) = get(policy)
                    .iter()
                    .enumerate()
                    .find_map(|(i, p)| host_pattern_error(p).map(|problem| (i, p, problem)))?;
                Some(Violation {
                    path: format!("{}[{i}]", self.path),
                    message: format!("{pattern:?} {problem}: {}", self.why),
                })
            }
        }
    }

    /// Moves the field into its bound, warning (with its path under `prefix`) when it was not.
    fn clamp(&self, policy: &mut ConflictPolicy, prefix: &str) {
        let path = self.path;
        match &self.range {
            Range::Count {
                get, set, min, max, ..
            } => {
                let (v, to) = (get(policy), get(policy).clamp(*min, *max));
                if v != to {
                    tracing::warn!(path = %format_args!("{prefix}{path}"), from = v, to, "policy value clamped into its bound");
                    set(policy, to);
                }
            }
            Range::Duration { get, set, min, max } => {
                let v = get(policy);
                // A floor that is another field was clamped first, and is at most `max`.
                let to = v.clamp(min.of(policy), *max);
                if v != to {
                    tracing::warn!(path = %format_args!("{prefix}{path}"), from = ?v, to = ?to, "policy value clamped into its bound");
                    set(policy, to);
                }
            }
            Range::Factor {
                get, set, min, max, ..
            } => {
                let v = get(policy);
                // NaN says nothing about the schedule wanted: the slowest-growing one is safe.
                let to = if v.is_nan() {
                    *min
                } else {
                    v.clamp(*min, *max)
                };
                if v.to_bits() != to.to_bits() {
                    tracing::warn!(path = %format_args!("{prefix}{path}"), from = v, to, "policy value clamped into its bound");
                    set(policy, to);
                }
            }
            Range::Requires {
                get,
                set,
                needs_get,
                ..
            } => {
                if get(policy) && !needs_get(policy) {
                    tracing::warn!(path = %format_args!("{prefix}{path}"), from = true, to = false, "policy value clamped into its bound");
                    set(policy, false);
                }
            }
            Range::HostPatterns { get_mut, .. } => {
                get_mut(policy).retain(|pattern| match host_pattern_error(pattern) {
                    None => true,
                    Some(problem) => {
                        tracing::warn!(path = %format_args!("{prefix}{path}"), pattern, problem, "host pattern dropped");
                        false
                    }
                });
            }
        }
    }
}

/// The first field of `policy` outside its bound, in table order.
pub(super) fn check(policy: &ConflictPolicy) -> Result<(), Violation> {
    BOUNDS
        .iter()
        .find_map(|b| b.violation(policy))
        .map_or(Ok(()), Err)
}

/// `policy` with every field moved into its bound; a warning names each one that was not (its
/// path under `prefix`).
pub(super) fn clamp(policy: &mut ConflictPolicy, prefix: &str) {
    for bound in BOUNDS {
        bound.clamp(policy, prefix);
    }
}

/// What is wrong with an `allowed_hosts` pattern, if anything.
///
/// A pattern is a host name (`management.azure.com`), an IPv6 literal in brackets, or `*.`
/// followed by a host name of at least two labels (`*.management.azure.com`, which matches any
/// subdomain of it). Labels are non-empty and made of ASCII letters, digits, `-` and `_`. So `*`,
/// `*.`, `*..com` and `*.com` are refused: the first three would trust far more than anyone
/// means (with `*.` every host written with a trailing dot), the last a whole top-level domain.
/// Two labels is the rule, not a public-suffix list: `*.co.uk` passes.
pub(super) fn host_pattern_error(pattern: &str) -> Option<&'static str> {
    if pattern.is_empty() {
        return Some("is empty");
    }
    if pattern
        .strip_prefix('[')
        .and_then(|p| p.strip_suffix(']'))
        .is_some_and(|p| p.parse::<Ipv6Addr>().is_ok())
    {
        return None;
    }
    let (wildcard, name) = match pattern.strip_prefix("*.") {
        Some(name) => (true, name),
        None => (false, pattern),
    };
    let mut labels = 0;
    for label in name.split('.') {
        if label.is_empty() {
            return Some("has an empty label (a leading, trailing or doubled dot)");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Some(
                "is not a host name: letters, digits, `-` and `_` between dots, with `*.` only at the start",
            );
        }
        labels += 1;
    }
    if wildcard && labels < 2 {
        return Some("needs at least two labels after `*.` (`*.example.com`)");
    }
    None
}

/// A count as the message writes it: bytes in KiB or MiB when whole.
fn show_count(n: u64, bytes: bool) -> String {
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * KIB;
    match n {
        _ if !bytes => n.to_string(),
        1 => "1 byte".to_owned(),
        n if n >= MIB && n % MIB == 0 => format!("{} MiB", n / MIB),
        n if n >= KIB && n % KIB == 0 => format!("{} KiB", n / KIB),
        n => format!("{n} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PolicyOverride;

    /// The policy a JSON document describes, loaded without the checks `from_json` makes: what a
    /// hand-built policy could hold.
    fn unchecked(json: &str) -> ConflictPolicy {
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{json}: {e}"))
    }

    /// A document with one value out of bounds, the path the error must name, and what
    /// `clamped()` must make of the value.
    type Case = (&'static str, &'static str, fn(&ConflictPolicy) -> bool);

    /// Every end of every bound that can be crossed, with a value just outside it.
    const CASES: &[Case] = &[
        (r#"{"max_attempts": 0}"#, "max_attempts", |p| {
            p.max_attempts == 1
        }),
        (r#"{"max_attempts": 1001}"#, "max_attempts", |p| {
            p.max_attempts == 1_000
        }),
        (r#"{"deadline": "0s"}"#, "deadline", |p| {
            p.deadline == Duration::from_millis(1)
        }),
        (r#"{"deadline": "7days 1s"}"#, "deadline", |p| {
            p.deadline == MAX_DEADLINE
        }),
        (
            r#"{"poll": {"min_delay": "999us"}}"#,
            "poll.min_delay",
            |p| p.poll.min_delay == Duration::from_millis(1),
        ),
        // Accepted until now, and a panic ("overflow when adding duration to instant") later.
        (
            r#"{"poll": {"min_delay": "100000000000y"}}"#,
            "poll.min_delay",
            |p| p.poll.min_delay == MAX_DEADLINE && p.poll.max_delay == MAX_DEADLINE,
        ),
        (
            r#"{"poll": {"min_delay": "10s", "max_delay": "9s"}}"#,
            "poll.max_delay",
            |p| p.poll.max_delay == Duration::from_secs(10),
        ),
        (
            r#"{"poll": {"max_delay": "8days"}}"#,
            "poll.max_delay",
            |p| p.poll.max_delay == MAX_DEADLINE,
        ),
        (r#"{"poll": {"factor": 0.5}}"#, "poll.factor", |p| {
            p.poll.factor == 1.0
        }),
        (r#"{"poll": {"factor": 100.5}}"#, "poll.factor", |p| {
            p.poll.factor == 100.0
        }),
        // Too large for an `f32`: it arrives as infinity.
        (r#"{"poll": {"factor": 1e39}}"#, "poll.factor", |p| {
            p.poll.factor == 100.0
        }),
        (r#"{"retry_after_cap": "8days"}"#, "retry_after_cap", |p| {
            p.retry_after_cap == MAX_DEADLINE
        }),
        (r#"{"max_error_body": 0}"#, "max_error_body", |p| {
            p.max_error_body == 1
        }),
        (r#"{"max_error_body": 67108865}"#, "max_error_body", |p| {
            p.max_error_body == 64 << 20
        }),
        (r#"{"max_fetch_body": 0}"#, "max_fetch_body", |p| {
            p.max_fetch_body == 1
        }),
        (r#"{"max_fetch_body": 67108865}"#, "max_fetch_body", |p| {
            p.max_fetch_body == 64 << 20
        }),
        (r#"{"leases": {"ttl": "0s"}}"#, "leases.ttl", |p| {
            p.leases.ttl == Duration::from_secs(1)
        }),
        (r#"{"leases": {"ttl": "8days"}}"#, "leases.ttl", |p| {
            p.leases.ttl == MAX_DEADLINE
        }),
        (
            r#"{"leases": {"enabled": false, "fence_with_etag": true}}"#,
            "leases.fence_with_etag",
            |p| !p.leases.fence_with_etag && !p.leases.enabled,
        ),
        (
            r#"{"resource_types": {"Microsoft.Web/sites": {"leases": {"enabled": false, "fence_with_etag": true}}}}"#,
            r#"resource_types."Microsoft.Web/sites".leases.fence_with_etag"#,
            |p| {
                p.resource_types["Microsoft.Web/sites"]
                    .leases
                    .as_ref()
                    .is_some_and(|l| !l.fence_with_etag)
            },
        ),
        (
            r#"{"poll": {"min_delay": "2s"}, "stuck_after": "1s"}"#,
            "stuck_after",
            |p| p.stuck_after == Some(Duration::from_secs(2)),
        ),
        (r#"{"stuck_after": "8days"}"#, "stuck_after", |p| {
            p.stuck_after == Some(MAX_DEADLINE)
        }),
        (
            r#"{"resource_types": {"Microsoft.Compute/virtualMachines": {"stuck_after": "0s"}}}"#,
            r#"resource_types."Microsoft.Compute/virtualMachines".stuck_after"#,
            |p| {
                p.resource_types["Microsoft.Compute/virtualMachines"].stuck_after
                    == Some(p.poll.min_delay)
            },
        ),
        (
            r#"{"diagnose": {"activity_log_window": "999ms"}}"#,
            "diagnose.activity_log_window",
            |p| p.diagnose.activity_log_window == Duration::from_secs(1),
        ),
        (
            r#"{"diagnose": {"activity_log_window": "8days"}}"#,
            "diagnose.activity_log_window",
            |p| p.diagnose.activity_log_window == MAX_DEADLINE,
        ),
        (
            r#"{"remember_representations": 100000000}"#,
            "remember_representations",
            |p| p.remember_representations == 65_536,
        ),
        (
            r#"{"allowed_hosts": ["management.azure.com", "*."]}"#,
            "allowed_hosts[1]",
            |p| p.allowed_hosts == ["management.azure.com"],
        ),
        (
            r#"{"allowed_hosts": ["*.com", "*.example.com"]}"#,
            "allowed_hosts[0]",
            |p| p.allowed_hosts == ["*.example.com"],
        ),
        // Inside an override, under its quoted path.
        (
            r#"{"resource_types": {"Microsoft.Web/sites": {"leases": {"ttl": "0s"}}}}"#,
            r#"resource_types."Microsoft.Web/sites".leases.ttl"#,
            |p| {
                let o = &p.resource_types["Microsoft.Web/sites"];
                o.leases.as_ref().map(|l| l.ttl) == Some(Duration::from_secs(1))
                    && o.deadline.is_none()
                    && p.leases.ttl == Duration::from_secs(60)
            },
        ),
        (
            r#"{"resource_types": {"Microsoft.Web/sites": {"poll": {"min_delay": "0s"}}}}"#,
            r#"resource_types."Microsoft.Web/sites".poll.min_delay"#,
            |p| {
                p.resource_types["Microsoft.Web/sites"]
                    .poll
                    .as_ref()
                    .map(|s| s.min_delay)
                    == Some(Duration::from_millis(1))
            },
        ),
    ];

    #[test]
    fn every_bound_is_refused_by_from_json_and_clamped_by_clamped() {
        for (json, path, clamped_well) in CASES {
            match ConflictPolicy::from_json(json) {
                Err(Error::InvalidPolicy { path: got, message }) => {
                    assert_eq!(got, *path, "{json}: {message}");
                    assert!(
                        message.starts_with("must be") || message.contains('"'),
                        "{message}"
                    );
                }
                other => panic!("{json}: expected an error at {path}, got {other:?}"),
            }
            let clamped = unchecked(json).clamped();
            assert!(clamped_well(&clamped), "{json}: clamped to {clamped:?}");
            clamped
                .validate()
                .unwrap_or_else(|e| panic!("{json}: clamped, still {e}"));
        }
    }

    #[test]
    fn every_row_of_the_table_has_cases() {
        for bound in BOUNDS {
            let covered = |prefix: &str| {
                CASES.iter().any(|(_, path, _)| {
                    path.strip_prefix(prefix)
                        .and_then(|rest| rest.strip_prefix(bound.path))
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with('['))
                })
            };
            assert!(covered(""), "no case for {}", bound.path);
        }
    }

    #[test]
    fn values_at_the_ends_of_every_bound_pass() {
        let ends = [
            r#"{"max_attempts": 1}"#,
            r#"{"max_attempts": 1000}"#,
            r#"{"deadline": "1ms", "poll": {"min_delay": "1ms", "max_delay": "1ms", "factor": 1}}"#,
            r#"{"deadline": "7days", "poll": {"min_delay": "7days", "max_delay": "7days", "factor": 100}}"#,
            r#"{"retry_after_cap": "0s"}"#,
            r#"{"retry_after_cap": "7days"}"#,
            r#"{"max_error_body": 1, "max_fetch_body": 1}"#,
            r#"{"max_error_body": 67108864, "max_fetch_body": 67108864}"#,
            r#"{"leases": {"ttl": "1s"}}"#,
            r#"{"leases": {"ttl": "7days"}}"#,
            r#"{"leases": {"fence_with_etag": true}}"#,
            r#"{"leases": {"enabled": false, "fence_with_etag": false}}"#,
            r#"{"resource_types": {"Microsoft.Compute/virtualMachines": {"leases": {"fence_with_etag": true}}}}"#,
            r#"{"stuck_after": "5s", "poll": {"min_delay": "5s"}}"#,
            r#"{"stuck_after": "7days", "diagnose": {"activity_log_window": "7days"}}"#,
            r#"{"diagnose": {"activity_log": true, "activity_log_window": "1s", "end_state": true}}"#,
            r#"{"remember_representations": 0}"#,
            r#"{"remember_representations": 65536}"#,
            r#"{"allowed_hosts": []}"#,
            r#"{"allowed_hosts": ["localhost", "127.0.0.1", "[::1]", "*.co.uk", "*.a-b.example_1.com"]}"#,
        ];
        for json in ends {
            let policy = ConflictPolicy::from_json(json).unwrap_or_else(|e| panic!("{json}: {e}"));
            assert_eq!(policy.clone().clamped(), policy, "{json}");
        }
    }

    #[test]
    fn a_nan_factor_is_refused_and_clamped_to_the_slowest_schedule() {
        let mut policy = ConflictPolicy::azure_arm();
        policy.poll.factor = f32::NAN;
        let e = policy.validate().unwrap_err();
        assert!(
            matches!(&e, Error::InvalidPolicy { path, message } if path == "poll.factor" && message.contains("NaN")),
            "{e}"
        );
        assert_eq!(policy.clamped().poll.factor, 1.0);
    }

    #[test]
    fn the_messages_say_what_is_allowed() {
        let message = |json| match ConflictPolicy::from_json(json) {
            Err(Error::InvalidPolicy { message, .. }) => message,
            other => panic!("{json}: {other:?}"),
        };
        assert!(
            message(r#"{"leases": {"ttl": "100ms"}}"#)
                .starts_with("must be between 1s and 7days, not 100ms: "),
        );
        assert!(
            message(r#"{"max_fetch_body": 0}"#)
                .starts_with("must be between 1 byte and 64 MiB, not 0 bytes: ")
        );
        assert!(
            message(r#"{"poll": {"min_delay": "10s", "max_delay": "9s"}}"#)
                .starts_with("must be between poll.min_delay (10s) and 7days, not 9s: ")
        );
        assert!(message(r#"{"allowed_hosts": ["*."]}"#).starts_with(r#""*." has an empty label"#));
    }

    #[test]
    fn host_patterns() {
        for good in [
            "management.azure.com",
            "*.management.azure.com",
            "*.example.com",
            "localhost",
            "127.0.0.1",
            "[::1]",
            "EastUS.Management.Azure.com",
        ] {
            assert_eq!(host_pattern_error(good), None, "{good}");
        }
        for bad in [
            "",
            "*",
            "*.",
            "*..",
            "*..com",
            "*.com",
            ".example.com",
            "example.com.",
            "a..b",
            "*.example.com.",
            "**.example.com",
            "foo*.example.com",
            "*foo.example.com",
            "example.*.com",
            "example.com:443",
            "https://example.com",
            " example.com",
            "[not-ipv6]",
        ] {
            assert!(host_pattern_error(bad).is_some(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn a_dropped_pattern_no_longer_trusts_trailing_dot_hosts() {
        let policy = unchecked(r#"{"allowed_hosts": ["*."]}"#);
        assert!(policy.host_allowed("evil.example."));
        assert!(!policy.clamped().host_allowed("evil.example."));
    }

    #[test]
    fn valid_policies_are_unchanged_by_clamped() {
        let p = ConflictPolicy::azure_arm();
        assert_eq!(p.clone().clamped(), p);
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/policies");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "json") {
                let text = std::fs::read_to_string(&path).unwrap();
                let p = ConflictPolicy::from_json(&text)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                assert_eq!(p.clone().clamped(), p, "{}", path.display());
                seen += 1;
            }
        }
        assert!(seen >= 4, "{seen} policy files");
    }

    #[test]
    fn with_override_refuses_what_from_json_would() {
        let policy = ConflictPolicy::azure_arm();
        let zero_ttl = PolicyOverride {
            leases: Some(crate::LeasePolicy {
                ttl: Duration::ZERO,
                ..crate::LeasePolicy::default()
            }),
            ..PolicyOverride::default()
        };
        let refused = |o: &PolicyOverride, field: &str| match policy.with_override(o) {
            Err(Error::InvalidPolicy { path, message }) => {
                assert_eq!(path, field);
                assert!(message.contains("per-request override"), "{message}");
            }
            other => panic!("{other:?}"),
        };
        refused(&zero_ttl, "leases.ttl");
        // Fencing without leases: refused from a request as from a policy file.
        let fence_unleased = PolicyOverride {
            leases: Some(crate::LeasePolicy {
                enabled: false,
                fence_with_etag: true,
                ..crate::LeasePolicy::default()
            }),
            ..PolicyOverride::default()
        };
        refused(&fence_unleased, "leases.fence_with_etag");
        let zero_attempts = PolicyOverride {
            max_attempts: Some(0),
            ..PolicyOverride::default()
        };
        assert!(matches!(
            policy.with_override(&zero_attempts),
            Err(Error::InvalidPolicy { path, .. }) if path == "max_attempts"
        ));
    }

    #[test]
    fn with_override_applies_a_valid_override() {
        let policy = ConflictPolicy::azure_arm();
        let o = PolicyOverride {
            max_attempts: Some(3),
            deadline: Some(Duration::from_secs(30)),
            leases: Some(crate::LeasePolicy {
                ttl: Duration::from_secs(5),
                ..crate::LeasePolicy::default()
            }),
            ..PolicyOverride::default()
        };
        let mut expected = policy.clone();
        o.apply_to(&mut expected);
        let got = policy.with_override(&o).unwrap();
        assert_eq!(got, expected);
        assert_eq!(got.max_attempts, 3);
        assert_eq!(got.leases.ttl, Duration::from_secs(5));
        // An empty override is the policy itself.
        assert_eq!(
            policy.with_override(&PolicyOverride::default()).unwrap(),
            policy
        );
    }

    #[test]
    fn with_override_blames_a_bad_base_on_the_base() {
        let mut policy = ConflictPolicy::azure_arm();
        policy.max_attempts = 0;
        let o = PolicyOverride {
            deadline: Some(Duration::from_secs(30)),
            ..PolicyOverride::default()
        };
        match policy.with_override(&o) {
            Err(Error::InvalidPolicy { path, message }) => {
                assert_eq!(path, "max_attempts");
                assert!(!message.contains("override"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
}
