//! `lro: settle`: a write ARM accepted as a long-running operation, followed to its end under
//! the resource's lease.
//!
//! A lease held only for the request leaves the transition itself unguarded, and the next writer
//! must guess when it ends. Settling keeps the lease until the operation ends, so the next writer
//! (here or in another process sharing the store) waits on the lease instead. And where ARM
//! reports a conflict only inside the operation (`RetryableError` with
//! `ReferencedResourceNotProvisioned`: the write was accepted, then failed because a parent was
//! busy), settling is what sees it: the failure is classified like a 409 body, waited out, and
//! the write sent again.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use tokio::time::Instant;

use super::{
    Answered, Failure, Transport,
    converge::{Observations, Trail, Watch},
    is_conflict,
    resolve::ended,
    run::{Run, leaves_transition},
    state::Source,
};
use crate::{ConflictKind, classify::retry_after, report::Outcome};

/// What a settle's polls saw: the states, and the last operation-status body (its `error`).
#[derive(Default)]
struct Followed {
    seen: Observations,
    status_body: Option<Bytes>,
}

impl Trail for Followed {
    fn observe(&mut self, state: &str, done: bool) {
        self.seen.observe(state, done);
    }
    fn note(&mut self, note: String) {
        self.seen.note(note);
    }
    fn operation_status(&mut self, _status: &str, body: &[u8]) {
        self.status_body = Some(Bytes::copy_from_slice(body));
    }
}

impl Run<'_> {
    /// Follows the operation `answered` started to its end; returns the answer to hand back and
    /// whether the operation was seen to end (so the resource is not left in transition).
    pub(super) async fn settle<T: Transport>(
        &self,
        transport: &mut T,
        mut answered: Answered<T::Response>,
    ) -> Result<(Answered<T::Response>, bool), Failure<T::Error>> {
        loop {
            let (status, headers) = T::head(&answered.response);
            // The operation began (as far as this process can tell) when its answer came back.
            let began = Instant::now();
            if !leaves_transition(self.original.resource.is_arm(), status, headers) {
                return Ok((answered, false));
            }
            let key = self.timing_key();
            self.adopt_estimate(&key).await;
            let watch = self.operation_watch(headers, began);
            let mut followed = Followed::default();
            let polled = self.unless_lost(self.poll(transport, watch, &mut followed));
            let polled = polled.await.map_err(Failure::Conflict)?;
            self.learn_and_share(&key, began, &followed.seen.polls)
                .await;
            if !polled.converged() {
                // Still running at the deadline: the caller's own poller takes over from here.
                return Ok((answered, false));
            }
            let succeeded = followed
                .seen
                .last
                .as_deref()
                .is_some_and(|s| s.eq_ignore_ascii_case("Succeeded"));
            let Some(body) = followed.status_body.filter(|_| !succeeded) else {
                // The operation's own result is the state the resource ended in.
                if let Some(report) = answered.report.as_mut() {
                    report.end_state = followed.seen.last;
                }
                return Ok((answered, true));
            };
            // The operation failed: its `error` is classified as a 409 body would be.
            let classification = self.engine.policies.classifier.classify(
                StatusCode::OK,
                self.original.headers,
                &HeaderMap::new(),
                &body,
            );
            let mut report = match answered.report.take() {
                Some(report) => *report,
                None => self.new_report(&classification),
            };
            self.note_conflict(&mut report, classification);
            let code = report.classification.code.clone().unwrap_or_default();
            if report.classification.kind != ConflictKind::StateConflict
                || self.blocked(&report).is_some()
            {
                report.outcome = Outcome::Surfaced;
                report.note(format!(
                    "the operation failed ({}): handed back as the server answered",
                    code.escape_debug()
                ));
                answered.report = Some(Box::new(report));
                return Ok((answered, true));
            }
            report.note(format!(
                "the operation failed ({}) with a conflict that clears: waited, then sent again",
                code.escape_debug()
            ));
            drop(answered);
            if let Err(error) = self.converge(transport, &mut report).await {
                return Err(Failure::Conflict(ended(error, &report)));
            }
            self.still_held().map_err(Failure::Conflict)?;
            let resent = transport.send(self.fenced(None)).await;
            self.answered();
            let response = resent.map_err(Failure::Transport)?;
            report.attempts += 1;
            report.outcome = Outcome::Resolved;
            answered = if is_conflict(T::head(&response).0) {
                // A 409 on the resend: the resolution takes over, counted on top of this one.
                let mut next = Box::pin(self.resolve(transport, response)).await?;
                if let Some(later) = next.report.as_mut() {
                    later.attempts += report.attempts - 1;
                    later.conflicts += report.conflicts;
                }
                next.report = next.report.or(Some(Box::new(report)));
                next
            } else {
                Answered {
                    response,
                    report: Some(Box::new(report)),
                }
            };
        }
    }

    /// What to poll for the operation an answer started: its `Azure-AsyncOperation` when the
    /// policy lets us poll it, else the resource's own state.
    fn operation_watch(&self, headers: &HeaderMap, began: Instant) -> Watch {
        let first_delay = retry_after(headers).map(|hint| self.clamp_hint(hint));
        let (target, source) = match self.operation_to_poll(headers) {
            Some(url) => (url, Source::Operation),
            None => (self.resource_url(), Source::Resource),
        };
        // Polls planned from this resource's past transitions, but none before the server's
        // `Retry-After`.
        let not_before = began + first_delay.unwrap_or_default();
        let key = self.timing_key();
        let mut planned = (self.engine.estimates).plan(&key, Some(began), &self.policy.poll);
        planned.retain(|&at| at >= not_before);
        // With no `Retry-After`: a write that names no operation (a 201 alone) may well have
        // completed already, so its resource is read at once; a named operation is running,
        // and is first polled on the schedule.
        let first_delay = match (first_delay, source) {
            (None, Source::Resource) => Some(Duration::ZERO),
            (first_delay, _) => first_delay,
        };
        Watch {
            first_delay,
            planned,
            ..Watch::state(target, source)
        }
    }
}
