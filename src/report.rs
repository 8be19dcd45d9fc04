//! What happened to a request that met a conflict.

mod diagnosis;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Classification, ConflictKind};
pub use diagnosis::{Activity, Blocker};
pub(crate) use diagnosis::{activity_log_url, operation_id_in, read_activity};

/// How many observed states a report keeps; a long wait repeats itself and must not grow memory.
const MAX_STATES: usize = 32;

/// How a conflict resolution ended.
///
/// ```no_run
/// # async fn f(client: reqwest_middleware::ClientWithMiddleware, url: &str) -> Result<(), reqwest_middleware::Error> {
/// use reqwest_conflict::{ConflictReport, Outcome};
///
/// let resp = client.put(url).body("{}").send().await?;
/// match resp.extensions().get::<ConflictReport>().map(|r| r.outcome) {
///     None | Some(Outcome::Resolved | Outcome::AlreadyApplied) => {} // the answer is the write's
///     Some(Outcome::Surfaced) => eprintln!("the server's 409/412 is the answer"),
///     Some(other) => eprintln!("gave up: {other:?}"),
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The request was retried after the conflict cleared, and the last answer was not a conflict.
    Resolved,
    /// The policy says not to retry this kind (permanent, already exists, …): the response is the
    /// server's own.
    Surfaced,
    /// The request's body could not be cloned, so it could be sent only once.
    NotRetryable,
    /// The attempt budget ran out; the response is the last conflict.
    Exhausted,
    /// The deadline passed before another attempt could be made; the response is the last conflict.
    DeadlineExceeded,
    /// A stale-precondition write turned out to be in the fresh representation already (its first
    /// answer was lost): the response is the fresh representation, as a success.
    AlreadyApplied,
    /// The state the resolution waited on stopped changing for the policy's `stuck_after`; the
    /// request ended with [`Error::Stuck`](crate::Error::Stuck).
    Stuck,
}

/// Attached to the extensions of every response that met a 409/412, and recorded on its tracing span.
///
/// ```no_run
/// # async fn f(client: reqwest_middleware::ClientWithMiddleware) -> Result<(), reqwest_middleware::Error> {
/// use reqwest_conflict::ConflictReport;
///
/// let resp = client.put("https://management.azure.com/…").send().await?;
/// if let Some(report) = resp.extensions().get::<ConflictReport>() {
///     println!("{} after {} attempts, waited {:?}: {:?}", report.kind, report.attempts, report.waited, report.outcome);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConflictReport {
    /// The resource key (see [`ResourceId::key`](crate::ResourceId::key)).
    pub resource: String,
    /// The ARM resource type, when the request targeted one.
    pub resource_type: Option<String>,
    /// The kind of the first conflict.
    pub kind: ConflictKind,
    /// The error code of the first conflict.
    pub code: Option<String>,
    /// The last conflict's full classification.
    pub classification: Classification,
    /// How many times the original request was sent.
    pub attempts: u32,
    /// How many 409/412 answers the original request got.
    pub conflicts: u32,
    /// How many of those named an operation that started after the previous one: another
    /// writer got in first. Such sends do not count against the policy's `max_attempts` (up to
    /// four times it in all), so writers that share no lease store still all get their turn.
    pub yielded: u32,
    /// How many re-fetches and polls were made.
    pub polls: u32,
    /// The states the polls observed, in order, repeats collapsed, at most 32.
    pub states: Vec<String>,
    /// Time spent waiting and polling.
    #[serde(with = "humantime_serde")]
    pub waited: Duration,
    /// How it ended.
    pub outcome: Outcome,
    /// Why something the classification suggested was not done (a host not allowed, …).
    pub notes: Vec<String>,
    /// For a stale precondition: the resource's current ETag.
    pub fresh_etag: Option<String>,
    /// For a stale precondition: the resource's current representation (when JSON, and no larger
    /// than the policy's `max_fetch_body`).
    pub fresh: Option<serde_json::Value>,
    /// For a merge that could not be made: the JSON Pointers both writers changed.
    pub conflicting_paths: Vec<String>,
    /// For a prerequisite transition: each step taken, in order (`POST deallocate: 202`, …).
    pub steps: Vec<String>,
    /// The fencing token of the resource's lease the request ran under, when leases are on.
    pub lease_token: Option<u64>,
    /// The request's entry in the middleware's [`Journal`](crate::Journal).
    pub journal_seq: Option<u64>,
    /// What is known of the operation that blocked the write: from the error, and from polling
    /// the operation's status when the error named one.
    pub blocker: Option<Blocker>,
    /// The operations ARM's Activity Log lists on the resource around the conflict, newest first,
    /// when the policy's `diagnose.activity_log` asks for them.
    pub activity: Vec<Activity>,
    /// The state the resource ended in, read once after the conflict was resolved, when the
    /// policy's `diagnose.end_state` asks for it.
    pub end_state: Option<String>,
}

impl ConflictReport {
    pub(crate) fn new(
        resource: String,
        resource_type: Option<String>,
        first: &Classification,
    ) -> Self {
        Self {
            resource,
            resource_type,
            kind: first.kind,
            code: first.code.clone(),
            classification: first.clone(),
            attempts: 1,
            conflicts: 0,
            yielded: 0,
            polls: 0,
            states: Vec::new(),
            waited: Duration::ZERO,
            outcome: Outcome::Surfaced,
            notes: Vec::new(),
            fresh_etag: None,
            fresh: None,
            conflicting_paths: Vec::new(),
            steps: Vec::new(),
            lease_token: None,
            journal_seq: None,
            blocker: Blocker::from_error(first),
            activity: Vec::new(),
            end_state: None,
        }
    }

    pub(crate) fn observe(&mut self, state: &str) {
        self.polls += 1;
        if self.states.last().is_some_and(|s| s == state) {
            return;
        }
        // Keep the first states and always the latest one, which is the one errors quote.
        if self.states.len() >= MAX_STATES {
            self.states.pop();
        }
        self.states.push(state.to_owned());
    }

    pub(crate) fn step(&mut self, step: String) {
        if self.steps.len() < MAX_STATES {
            self.steps.push(step);
        }
    }

    pub(crate) fn note(&mut self, note: String) {
        if self.notes.len() < MAX_STATES {
            self.notes.push(note);
        }
    }

    /// The last state a poll saw (`Succeeded`, `Updating`, `HTTP 503`, …), if any poll was made.
    pub fn last_state(&self) -> Option<&str> {
        self.states.last().map(String::as_str)
    }
}
