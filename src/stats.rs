//! Conflict counts by resource type, kind and code — for everyone, with or without a metrics
//! backend.
//!
//! "Which resource types conflict, how often, and what does it cost us" is the question that finds
//! orchestration regressions early. [`ConflictStats`] answers it in process
//! ([`ConflictStats::snapshot`]); with the `metrics` feature the same events also go to the
//! [`metrics`](https://docs.rs/metrics) facade, so any exporter (Prometheus, OpenTelemetry, …)
//! sees them:
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `reqwest_conflict.conflicts` | counter | `azure.resource.type`, `conflict.kind`, `error.type` (the error code), `http.response.status_code` |
//! | `reqwest_conflict.resolutions` | counter | `azure.resource.type`, `conflict.kind`, `outcome` |
//! | `reqwest_conflict.retries` | counter | `azure.resource.type`, `conflict.kind` |
//! | `reqwest_conflict.wait.duration` | histogram (seconds) | `azure.resource.type`, `conflict.kind`, `outcome` |
//!
//! Label names follow the OpenTelemetry HTTP semantic conventions where one exists
//! (`http.response.status_code`, `error.type`). Label values are bounded: resource types and
//! codes beyond the first 1,024 combinations are counted under `other`.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::Serialize;

use crate::{Classification, ConflictKind, ConflictReport};

/// Distinct (type, kind, code) combinations kept before new ones are folded into `other`.
const MAX_SERIES: usize = 1024;

/// Shared, in-process conflict statistics. Cloning gives another handle to the same numbers.
///
/// ```no_run
/// # fn f(middleware: &reqwest_conflict::ConflictMiddleware) {
/// let snapshot = middleware.stats().snapshot();
/// for line in &snapshot.conflicts {
///     println!("{} {} {}: {}", line.resource_type, line.kind, line.code, line.count);
/// }
/// println!("outcomes {:?}, waited {:?}", snapshot.outcomes, snapshot.waited);
/// # }
/// ```
#[derive(Clone, Debug, Default)]
pub struct ConflictStats {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    conflicts: BTreeMap<(String, ConflictKind, String), u64>,
    outcomes: BTreeMap<String, u64>,
    retries: u64,
    waited: Duration,
}

/// One line of [`StatsSnapshot::conflicts`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConflictCount {
    /// The ARM resource type (`""` for non-ARM resources, `other` past the series cap).
    pub resource_type: String,
    /// The conflict's kind.
    pub kind: ConflictKind,
    /// The error code (`""` when there was none).
    pub code: String,
    /// How many such 409/412 answers were seen.
    pub count: u64,
}

/// The numbers at one moment.
///
/// ```
/// use reqwest_conflict::ConflictMiddleware;
///
/// let middleware = ConflictMiddleware::default();
/// let snapshot = middleware.stats().snapshot();
/// assert_eq!(snapshot.total_conflicts(), 0);
/// let json = serde_json::to_value(&snapshot)?;
/// assert_eq!(json["waited"], "0s");
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    /// 409/412 answers by resource type, kind and code, sorted.
    pub conflicts: Vec<ConflictCount>,
    /// Resolutions by outcome (`resolved`, `surfaced`, …, and `not_converged` or `stuck` for
    /// errors).
    pub outcomes: BTreeMap<String, u64>,
    /// Requests sent again because of a conflict.
    pub retries: u64,
    /// Total time spent waiting for convergence. Serialized as text (`"1s 250ms"`), as
    /// [`ConflictReport::waited`] and the policy's durations are.
    #[serde(with = "humantime_serde")]
    pub waited: Duration,
}

impl StatsSnapshot {
    /// The total of 409/412 answers seen.
    pub fn total_conflicts(&self) -> u64 {
        self.conflicts.iter().map(|c| c.count).sum()
    }
}

impl ConflictStats {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of the numbers so far.
    pub fn snapshot(&self) -> StatsSnapshot {
        let inner = self.inner();
        StatsSnapshot {
            conflicts: inner
                .conflicts
                .iter()
                .map(|((resource_type, kind, code), count)| ConflictCount {
                    resource_type: resource_type.clone(),
                    kind: *kind,
                    code: code.clone(),
                    count: *count,
                })
                .collect(),
            outcomes: inner.outcomes.clone(),
            retries: inner.retries,
            waited: inner.waited,
        }
    }

    /// One 409/412 answer.
    pub(crate) fn conflict(&self, resource_type: Option<&str>, c: &Classification) {
        let resource_type = resource_type.unwrap_or_default();
        let code = c.code.as_deref().unwrap_or_default();
        {
            let mut inner = self.inner();
            let mut key = (resource_type.to_owned(), c.kind, code.to_owned());
            if !inner.conflicts.contains_key(&key) && inner.conflicts.len() >= MAX_SERIES {
                key = ("other".to_owned(), c.kind, "other".to_owned());
            }
            *inner.conflicts.entry(key).or_default() += 1;
        }
        #[cfg(feature = "metrics")]
        metrics::counter!(
            "reqwest_conflict.conflicts",
            "azure.resource.type" => resource_type.to_owned(),
            "conflict.kind" => c.kind.as_str(),
            "error.type" => code.to_owned(),
            "http.response.status_code" => c.status.to_string(),
        )
        .increment(1);
    }

    /// A resolution ended: with a report, or (`report` absent) in an error.
    pub(crate) fn resolution(&self, resource_type: Option<&str>, report: &ConflictReport) {
        let outcome = serde_json::to_value(report.outcome)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        self.record(
            resource_type,
            report.kind,
            &outcome,
            report.attempts,
            report.waited,
        );
    }

    /// A resolution that ended in an error (`outcome` names it).
    pub(crate) fn failure(
        &self,
        resource_type: Option<&str>,
        kind: ConflictKind,
        outcome: &str,
        attempts: u32,
        waited: Duration,
    ) {
        self.record(resource_type, kind, outcome, attempts, waited);
    }

    fn record(
        &self,
        resource_type: Option<&str>,
        kind: ConflictKind,
        outcome: &str,
        attempts: u32,
        waited: Duration,
    ) {
        let retries = u64::from(attempts.saturating_sub(1));
        {
            let mut inner = self.inner();
            *inner.outcomes.entry(outcome.to_owned()).or_default() += 1;
            inner.retries += retries;
            inner.waited += waited;
        }
        #[cfg(feature = "metrics")]
        {
            let resource_type = resource_type.unwrap_or_default().to_owned();
            metrics::counter!(
                "reqwest_conflict.resolutions",
                "azure.resource.type" => resource_type.clone(),
                "conflict.kind" => kind.as_str(),
                "outcome" => outcome.to_owned(),
            )
            .increment(1);
            metrics::counter!(
                "reqwest_conflict.retries",
                "azure.resource.type" => resource_type.clone(),
                "conflict.kind" => kind.as_str(),
            )
            .increment(retries);
            metrics::histogram!(
                "reqwest_conflict.wait.duration",
                "azure.resource.type" => resource_type,
                "conflict.kind" => kind.as_str(),
                "outcome" => outcome.to_owned(),
            )
            .record(waited.as_secs_f64());
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (resource_type, kind);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waited_serializes_as_the_report_does() {
        let waited = Duration::from_millis(1_250);
        let stats = ConflictStats::default();
        let mut report = ConflictReport::new("k".into(), None, &Classification::default());
        report.waited = waited;
        stats.resolution(None, &report);
        let snapshot = serde_json::to_value(stats.snapshot()).unwrap();
        let report = serde_json::to_value(&report).unwrap();
        assert_eq!(snapshot["waited"], "1s 250ms");
        assert_eq!(snapshot["waited"], report["waited"]);
    }
}
