//! The crate's one error type.

use std::time::Duration;

use crate::Classification;

/// Everything that can go wrong in this crate, each variant carrying what a caller needs to act.
///
/// Through [`ConflictMiddleware`](crate::ConflictMiddleware) these arrive as
/// `reqwest_middleware::Error::Middleware`; get them back with `downcast_ref::<Error>()`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A conflict was worth waiting for — or the previous writer left the resource in transition —
    /// but the resource (or the operation named) did not reach a terminal state before the
    /// policy's deadline.
    #[error(
        "{resource} did not converge within {waited:?} after {attempts} attempt(s); last state: {}",
        last_state.as_deref().unwrap_or("never observed")
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
