//! The crate's one error type.

use std::time::Duration;

use crate::{Classification, ConflictReport};

/// Everything that can go wrong in this crate, each variant carrying what a caller needs to act.
///
/// ```
/// use reqwest_conflict::{ConflictPolicy, Error};
///
/// match ConflictPolicy::from_json(r#"{"poll": {"min_delay": "soon"}}"#) {
///     Err(Error::InvalidPolicy { path, .. }) => assert_eq!(path, "poll.min_delay"),
///     other => panic!("{other:?}"),
/// }
/// ```
///
/// Through [`ConflictMiddleware`](crate::ConflictMiddleware) these arrive inside
/// `reqwest_middleware::Error::Middleware`; [`Error::from_middleware`] gets them back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A conflict was worth waiting for — or the previous writer left the resource in transition —
    /// but the resource (or the operation named) did not reach a terminal state before the
    /// policy's deadline.
    // The state is the server's text: escaped, so that it cannot start a line of its own in a log.
    #[error(
        "{resource} did not converge within {waited:?} after {attempts} attempt(s); last state: {}",
        last_state.as_deref().map_or("never observed".into(), |s| s.escape_debug().to_string())
    )]
    NotConverged {
        /// The key of the resource the request targets.
        resource: String,
        /// The conflict that started the wait; `None` when the wait was the state guard's, before
        /// the request was sent.
        classification: Option<Box<Classification>>,
        /// The last state a poll observed (`Updating`, `InProgress`, `HTTP 503`, …).
        last_state: Option<String>,
        /// How many times the original request was sent.
        attempts: u32,
        /// Time spent waiting and polling.
        waited: Duration,
        /// What was done about the conflict before the wait gave up (its outcome
        /// [`DeadlineExceeded`](crate::Outcome::DeadlineExceeded)); `None` for the state guard's
        /// wait, which met no conflict. Also reachable through [`Error::report`].
        report: Option<Box<ConflictReport>>,
    },
    /// The resource (or the operation named) stayed in one non-terminal state for the policy's
    /// `stuck_after`: it is stuck, not slow, and waiting out the deadline would not help. Someone
    /// has to look at it — the report's `blocker` and `activity` say what is known of who holds
    /// it.
    // The state is the server's text: escaped, so that it cannot start a line of its own in a log.
    #[error(
        "{resource} is stuck: its state has stayed {} for {since:?} (after {attempts} attempt(s), {waited:?} waited)",
        state.escape_debug()
    )]
    Stuck {
        /// The key of the resource the request targets.
        resource: String,
        /// The state that stopped moving (`Updating`, `InProgress`, …).
        state: String,
        /// How long it had not changed.
        since: Duration,
        /// How many times the original request was sent.
        attempts: u32,
        /// Time spent waiting and polling.
        waited: Duration,
        /// What was done about the conflict before the wait gave up (outcome
        /// [`Stuck`](crate::Outcome::Stuck)); `None` for the state guard's wait.
        report: Option<Box<ConflictReport>>,
    },
    /// A string is not an ARM resource ID.
    #[error("invalid resource ID {input:?}: {reason}")]
    InvalidResourceId {
        /// The offending input (truncated when long).
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A policy could not be loaded.
    #[error("invalid policy at `{path}`: {message}")]
    InvalidPolicy {
        /// Where in the document the problem is (`poll.min_delay`), or `.` for the whole document.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A lease could not be taken before the wait ran out: another writer holds it.
    #[error("lease on {key} not acquired within {waited:?}")]
    LeaseTimeout {
        /// The key that stayed taken.
        key: String,
        /// How long we waited.
        waited: Duration,
    },
    /// A lease the write held was lost before the write was done: it was not renewed within its
    /// TTL (the store was unreachable or slow, or this process was paused), or the store says
    /// another holder has the key (it expired there, or the store lost it in a restart). The write
    /// stopped before its next request — no retry, resend or prerequisite action was sent after
    /// the loss was known. Requests sent before may have been applied; the next holder (with a
    /// larger fencing token) may already be writing.
    #[error("lease on {key} (token {token}) lost: {reason}; nothing more was sent under it")]
    LeaseLost {
        /// The key whose lease was lost.
        key: String,
        /// The fencing token the lost lease carried.
        token: u64,
        /// Why it is taken for lost.
        reason: &'static str,
    },
    /// The lease store failed (unreachable, refused, malformed answer).
    #[error("lease store failed for {key}: {message}")]
    LeaseBackend {
        /// The key being acquired, renewed or released.
        key: String,
        /// What the store said, without credentials.
        message: String,
    },
}

impl Error {
    /// The crate's error inside a `reqwest_middleware` error, if that is what it carries: the
    /// [`ConflictMiddleware`](crate::ConflictMiddleware)'s own, or one that a middleware outside
    /// it wrapped as its source (as `reqwest-retry` does after retrying). `None` for transport
    /// errors and other middleware's errors.
    ///
    /// ```no_run
    /// # async fn f(client: reqwest_middleware::ClientWithMiddleware, url: &str) {
    /// use reqwest_conflict::Error;
    ///
    /// match client.put(url).body("{}").send().await {
    ///     Ok(resp) => println!("{}", resp.status()),
    ///     Err(err) => match Error::from_middleware(&err) {
    ///         Some(Error::NotConverged { last_state, .. }) => {
    ///             eprintln!("still {last_state:?} at the deadline");
    ///         }
    ///         Some(other) => eprintln!("{other}"),
    ///         None => eprintln!("transport: {err}"),
    ///     },
    /// }
    /// # }
    /// ```
    pub fn from_middleware(error: &reqwest_middleware::Error) -> Option<&Error> {
        let reqwest_middleware::Error::Middleware(inner) = error else {
            return None;
        };
        // Walk the chain: a middleware that wraps errors keeps the one it wrapped as a source,
        // possibly still inside a `reqwest_middleware::Error` of its own.
        inner.chain().find_map(|cause| {
            cause.downcast_ref::<Error>().or_else(|| {
                cause
                    .downcast_ref::<reqwest_middleware::Error>()
                    .and_then(Error::from_middleware)
            })
        })
    }

    /// The report of the conflict resolution this error ended, when it ended one: what the
    /// conflict was, the attempts, the states the polls saw, the time waited. Errors raised
    /// before any conflict (a lease not acquired, the state guard's wait, a policy refused) have
    /// none.
    ///
    /// ```no_run
    /// # async fn f(client: reqwest_middleware::ClientWithMiddleware, url: &str) {
    /// use reqwest_conflict::Error;
    ///
    /// if let Err(err) = client.put(url).body("{}").send().await
    ///     && let Some(report) = Error::from_middleware(&err).and_then(Error::report)
    /// {
    ///     eprintln!("{} {:?}: {} attempt(s), states {:?}", report.kind, report.code, report.attempts, report.states);
    /// }
    /// # }
    /// ```
    pub fn report(&self) -> Option<&ConflictReport> {
        match self {
            Error::NotConverged { report, .. } | Error::Stuck { report, .. } => report.as_deref(),
            _ => None,
        }
    }
}
