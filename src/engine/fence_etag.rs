//! Fencing a leased write with the resource's own ETag (`leases.fence_with_etag`).
//!
//! A lease keeps writers apart only as far as they look at it: the engine checks it before each
//! request it sends under it, not while the request travels. A holder paused past its TTL after
//! that check (a GC pause, a frozen VM, a request stuck in a slow network) can still land its
//! write after the next holder's, and the lease store cannot stop that. The resource can: once
//! the write holds its lease, the engine reads the resource's `ETag` and sends the write with
//! `If-Match` on it. A write the next holder makes in between changes the ETag, so the stale
//! write is refused with a 412 instead of overwriting it.
//!
//! Such a 412 is the engine's, not the caller's, who sent no precondition: it never reaches the
//! precondition strategy (`precondition.rs`), which is about the caller's view of the resource.
//! [`decide_fenced`](super::decide::decide_fenced) ends the write with `Error::LeaseLost` when
//! its lease is gone (the fence refused a stale holder); while the lease is held, someone wrote
//! outside it, so the ETag is read again and the write sent again, within the attempts and the
//! deadline.
//!
//! What is not fenced, and why: a write with an `If-Match`, `If-None-Match` or
//! `If-Unmodified-Since` of the caller's own (the caller's precondition is the caller's; adding
//! ours would change what it asks); a write to a resource that answers 404 (it does not exist
//! yet: there is no ETag to hold a create to); a resource that answers without an ETag; an
//! action (`POST …/deallocate`), which has no representation of its own; and a write whose read
//! fails (a transport error, a 5xx, a refusal), which is sent as it would be without the policy,
//! with a warning, rather than failed for a read the caller did not ask for.

use std::sync::{Mutex, PoisonError};

use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use tokio::time::Instant;

use super::{Changes, Transport, converge::Called, run::Run};
use crate::{ConflictReport, Error, redact::scrub, report::Outcome};

/// The note a report carries when a 412 answered the engine's own `If-Match`.
const REFUSED: &str = "412 to the If-Match the engine added (leases.fence_with_etag), not to a \
                       precondition of the request's own: the resource changed since the ETag \
                       was read under the lease";

/// The `If-Match` the engine puts on this write's sends, once it read the resource's ETag.
#[derive(Debug, Default)]
pub(super) struct Tag(Mutex<Option<HeaderValue>>);

impl Tag {
    fn get(&self) -> Option<HeaderValue> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set(&self, tag: Option<HeaderValue>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = tag;
    }
}

/// What one read of the resource's ETag gave.
enum Read {
    /// The ETag, to send as `If-Match`.
    Tag(HeaderValue),
    /// No ETag to fence with (404, none in the answer, or a failed read), and why.
    Unfenced { why: String, failed: bool },
    /// Not answered by the deadline.
    CutOff,
}

impl Run<'_> {
    /// Whether the policy fences this write: leased, a PUT, PATCH or DELETE of an ARM resource
    /// itself, with no precondition of the caller's own.
    pub(super) fn fences(&self, leased: bool) -> bool {
        let original = self.original;
        self.policy.leases.fence_with_etag
            && leased
            && original.resource.is_arm()
            && original.resource.action().is_none()
            && matches!(
                *original.method,
                Method::PUT | Method::PATCH | Method::DELETE
            )
            && !has_precondition(original.headers)
    }

    /// Before the first send of a write the policy [fences](Self::fences), once it holds its
    /// leases (and the state guard let it go): reads the ETag the write will carry as
    /// `If-Match`. A read cut off by the deadline fails the write unsent, as a state guard's
    /// wait does.
    pub(super) async fn fence_with_etag<T: Transport>(
        &self,
        transport: &mut T,
    ) -> Result<(), Error> {
        let started = Instant::now();
        match self.read_etag(transport).await {
            Read::Tag(tag) => self.etag.set(Some(tag)),
            Read::Unfenced { why, failed } => {
                let resource = self.original.resource.key();
                if failed {
                    tracing::warn!(resource, why, "write sent without its ETag fence");
                } else {
                    tracing::debug!(resource, why, "write sent without an ETag fence");
                }
            }
            Read::CutOff => {
                return Err(Error::NotConverged {
                    resource: self.original.resource.key().to_owned(),
                    classification: None,
                    last_state: None,
                    attempts: 0,
                    waited: started.elapsed(),
                    report: None,
                });
            }
        }
        Ok(())
    }

    /// `changes` for a send of the original, with the fence's `If-Match` when the write is
    /// fenced and the send changes nothing else (a resend with changes of its own answers the
    /// caller's precondition, which a fenced write does not have).
    pub(super) fn fenced(&self, changes: Option<Changes>) -> Option<Changes> {
        match (changes, self.etag.get()) {
            (None, Some(tag)) => Some(self.changes(tag, None)),
            (changes, _) => changes,
        }
    }

    /// For an answer with `status`: `Some` when it is a 412 to the engine's own `If-Match`,
    /// holding whether the write still holds its leases; noted in `report` once.
    pub(super) fn fence_refused(
        &self,
        status: StatusCode,
        report: &mut ConflictReport,
    ) -> Option<Result<(), Error>> {
        if status != StatusCode::PRECONDITION_FAILED || self.etag.get().is_none() {
            return None;
        }
        if !report.notes.iter().any(|n| n == REFUSED) {
            report.note(REFUSED.to_owned());
        }
        Some(self.still_held())
    }

    /// Reads the ETag again after a 412 to the engine's `If-Match`, for the resend. `Some` with
    /// the outcome to hand the 412 back with when the read failed; a resource gone (404) or
    /// answering without an ETag is sent to unfenced, as a first write would be.
    pub(super) async fn refence<T: Transport>(
        &self,
        transport: &mut T,
        report: &mut ConflictReport,
    ) -> Option<Outcome> {
        report.polls += 1;
        match self.read_etag(transport).await {
            Read::Tag(tag) => {
                report.fresh_etag = tag.to_str().ok().map(str::to_owned);
                self.etag.set(Some(tag));
                None
            }
            Read::Unfenced { why, failed: false } => {
                report.note(format!("sent again without an ETag fence: {why}"));
                self.etag.set(None);
                None
            }
            Read::Unfenced { why, failed: true } => {
                report.note(format!("the ETag could not be read again: {why}"));
                Some(Outcome::Surfaced)
            }
            Read::CutOff => {
                report.note("reading the ETag again was cut off by the deadline".to_owned());
                Some(Outcome::DeadlineExceeded)
            }
        }
    }

    /// GETs the resource through the engine's own request path (same origin, `poll_headers`,
    /// bounded body) for its ETag: the header, else an ARM body's `etag`.
    async fn read_etag<T: Transport>(&self, transport: &mut T) -> Read {
        let exchange = self.exchange(Method::GET, self.resource_url());
        let fetched = match self.call(transport, exchange, self.deadline).await {
            Called::Answered(fetched) => fetched,
            Called::CutOff => return Read::CutOff,
            Called::Failed(error) => {
                return Read::Unfenced {
                    why: format!("the read failed: {}", scrub(&error.to_string())),
                    failed: true,
                };
            }
            Called::Offsite => {
                return Read::Unfenced {
                    why: "the HTTP client followed a redirect to another origin".to_owned(),
                    failed: true,
                };
            }
        };
        if fetched.status == StatusCode::NOT_FOUND {
            return Read::Unfenced {
                why: "the resource does not exist (404)".to_owned(),
                failed: false,
            };
        }
        if !fetched.status.is_success() {
            return Read::Unfenced {
                why: format!("the read answered HTTP {}", fetched.status.as_u16()),
                failed: true,
            };
        }
        let from_body = || {
            let body: serde_json::Value = serde_json::from_slice(&fetched.body).ok()?;
            HeaderValue::from_str(body.get("etag")?.as_str()?).ok()
        };
        match fetched
            .headers
            .get(header::ETAG)
            .cloned()
            .or_else(from_body)
        {
            Some(tag) => Read::Tag(tag),
            None => Read::Unfenced {
                why: "the resource answered without an ETag".to_owned(),
                failed: false,
            },
        }
    }
}

/// Whether the request carries a precondition of its own, which the engine leaves as it is.
fn has_precondition(headers: &HeaderMap) -> bool {
    [
        header::IF_MATCH,
        header::IF_NONE_MATCH,
        header::IF_UNMODIFIED_SINCE,
    ]
    .iter()
    .any(|name| headers.contains_key(name))
}
