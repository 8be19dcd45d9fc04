//! The resolution loop: classify each 409/412, ask [`decide`](super::decide::decide) for the next
//! step, carry it out, and repeat until the answer is not a conflict or the step is to surface.

use tracing::{Instrument, field::Empty};

use super::{
    Answered, Changes, Failure, Transport,
    converge::OFFSITE,
    decide::{Budget, Step, advice, blocked, decide, decide_fenced},
    is_conflict,
    precondition::Refreshed,
    prerequisite::Prepared,
    resolvable,
    run::Run,
};
use crate::{Blocker, Classification, ConflictReport, Error, Prerequisite, report::Outcome};

impl Run<'_> {
    /// Takes over after `first`, a 409/412 answer, and returns the response the caller should
    /// see, with the report of what was done.
    pub(super) async fn resolve<T: Transport>(
        &self,
        transport: &mut T,
        first: T::Response,
    ) -> Result<Answered<T::Response>, Failure<T::Error>> {
        let resource = &self.original.resource;
        let span = tracing::info_span!(
            "conflict_resolution",
            resource = %resource.key(),
            resource_type = resource.resource_type().unwrap_or(""),
            kind = Empty,
            code = Empty,
            attempts = Empty,
            polls = Empty,
            waited_ms = Empty,
            outcome = Empty,
        );
        async {
            let mut prepared = None;
            let mut result = self.resolve_loop(transport, first, &mut prepared).await;
            // A prerequisite action ran: put the resource back, whatever became of the request.
            if let Some(rule) = prepared {
                self.restore_after(transport, &rule, &mut result).await;
            }
            if self.policy.diagnose.end_state
                && let Ok(Answered {
                    report: Some(report),
                    ..
                }) = &mut result
                && report.outcome == Outcome::Resolved
            {
                self.end_state(transport, report).await;
            }
            self.count(&result);
            if let Ok(Answered {
                report: Some(report),
                ..
            }) = &result
            {
                record(report);
            }
            result
        }
        .instrument(span)
        .await
    }

    async fn resolve_loop<T: Transport>(
        &self,
        transport: &mut T,
        first: T::Response,
        prepared: &mut Option<Prerequisite>,
    ) -> Result<Answered<T::Response>, Failure<T::Error>> {
        let mut report: Option<ConflictReport> = None;
        let mut response = first;
        loop {
            let status = T::head(&response).0;
            if !is_conflict(status) {
                if let Some(report) = report.as_mut() {
                    report.outcome = Outcome::Resolved;
                }
                return Ok(answer(response, report));
            }
            let (peeked, body) = T::peek(response, self.policy.max_error_body, self.deadline)
                .await
                .map_err(Failure::Transport)?;
            response = peeked;
            let classification = self.engine.policies.classifier.classify(
                status,
                self.original.headers,
                T::head(&response).1,
                &body,
            );
            if !resolvable(&classification) {
                // A 429 that is throttling: handed back as it came, for the caller's retry
                // middleware; untouched (no report) when nothing else happened.
                if let Some(report) = report.as_mut() {
                    report.outcome = Outcome::Surfaced;
                    report
                        .note("throttled (429): left to the caller's retry middleware".to_owned());
                }
                return Ok(answer(response, report));
            }
            let report = report.get_or_insert_with(|| self.new_report(&classification));
            self.note_conflict(report, classification);
            if report.conflicts == 1 && self.policy.diagnose.activity_log {
                self.activity_log(transport, report).await;
            }

            let budget = self.budget(report, prepared.is_some());
            // A 412 to the If-Match the engine added is not the caller's stale precondition.
            let fenced = self.fence_refused(status, report);
            let step = match &fenced {
                Some(held) => decide_fenced(held.is_ok(), &self.policy, budget),
                None => decide(
                    &report.classification,
                    self.original.resource.resource_type(),
                    &self.policy,
                    budget,
                ),
            };
            let preparing = matches!(step, Step::Prepare(_));
            let changes = match step {
                Step::Surface(outcome) => {
                    if self.engine.redirects.followed() {
                        report.note(OFFSITE.to_owned());
                    }
                    if let Some(advice) = advice(&report.classification) {
                        report.note(advice.to_owned());
                    }
                    report.outcome = outcome;
                    return Ok(answer(response, Some(report.clone())));
                }
                Step::WaitAndRetry => {
                    // Free the connection before a wait that may last minutes.
                    drop(response);
                    if let Err(error) = self.converge(transport, report).await {
                        record(report);
                        return Err(Failure::Conflict(ended(error, report)));
                    }
                    None
                }
                Step::Refresh(strategy) => match self.refresh(transport, report, strategy).await {
                    Refreshed::Surface(outcome) => {
                        report.outcome = outcome;
                        return Ok(answer(response, Some(report.clone())));
                    }
                    Refreshed::AlreadyApplied(fresh) => {
                        report.outcome = Outcome::AlreadyApplied;
                        return Ok(answer(fresh, Some(report.clone())));
                    }
                    Refreshed::Resend(changes) => Some(changes),
                },
                Step::Prepare(rule) => {
                    match self.prepare(transport, rule, report).await {
                        Ok(Prepared::Ready) => *prepared = Some(rule.clone()),
                        Ok(Prepared::NotTaken) => {
                            report.outcome = Outcome::Surfaced;
                            return Ok(answer(response, Some(report.clone())));
                        }
                        Ok(Prepared::Unknown) => {
                            *prepared = Some(rule.clone());
                            report.outcome = Outcome::Surfaced;
                            return Ok(answer(response, Some(report.clone())));
                        }
                        Err(error) => {
                            *prepared = Some(rule.clone());
                            return Err(Failure::Conflict(ended(error, report)));
                        }
                    }
                    drop(response);
                    None
                }
                Step::Refence => match self.refence(transport, report).await {
                    Some(outcome) => {
                        report.outcome = outcome;
                        return Ok(answer(response, Some(report.clone())));
                    }
                    None => None,
                },
                Step::LeaseLost => match fenced {
                    Some(Err(lost)) => {
                        record(report);
                        return Err(Failure::Conflict(lost));
                    }
                    // Only a lease found lost leads here; the check below stands anyway.
                    _ => None,
                },
            };
            // Nothing is sent under a lease this write no longer holds.
            if let Err(lost) = self.still_held() {
                record(report);
                return Err(Failure::Conflict(lost));
            }
            let changes = self.fenced(changes);
            response = transport.send(changes).await.map_err(Failure::Transport)?;
            self.answered();
            report.attempts += 1;
            if preparing {
                let status = T::head(&response).0.as_u16();
                report.step(format!("{} (retry): {status}", self.original.method));
            }
        }
    }

    /// What is left of this request's budget.
    pub(super) fn budget(&self, report: &ConflictReport, prepared: bool) -> Budget {
        Budget {
            attempts: report.attempts,
            yielded: report.yielded,
            resendable: self.original.body.resendable(),
            expired: tokio::time::Instant::now() >= self.deadline,
            prepared,
            may_call: !self.engine.redirects.followed(),
        }
    }

    /// Why the request may not be sent again now, if it may not.
    pub(super) fn blocked(&self, report: &ConflictReport) -> Option<Outcome> {
        blocked(&self.policy, self.budget(report, false))
    }

    /// The headers of a resend that changes the request's `If-Match` (and, with `body`, its body).
    pub(super) fn changes(
        &self,
        if_match: http::HeaderValue,
        body: Option<bytes::Bytes>,
    ) -> Changes {
        let mut headers = self.original.headers.clone();
        headers.insert(http::header::IF_MATCH, if_match);
        if body.is_some() {
            // The length is the new body's, set when it is sent.
            headers.remove(http::header::CONTENT_LENGTH);
        }
        Changes { headers, body }
    }

    pub(super) fn new_report(&self, first: &Classification) -> ConflictReport {
        let resource = &self.original.resource;
        ConflictReport::new(
            resource.key().to_owned(),
            resource.resource_type().map(str::to_owned),
            first,
        )
    }

    pub(super) fn note_conflict(
        &self,
        report: &mut ConflictReport,
        classification: Classification,
    ) {
        report.conflicts += 1;
        // Another writer's operation, started since our previous conflict: it got in first, and
        // our send was not a failed attempt but a place in the queue.
        let operation = |c: &Classification| c.operation_uri.clone();
        if report.conflicts > 1
            && classification.operation_uri.is_some()
            && operation(&classification) != operation(&report.classification)
        {
            report.yielded += 1;
        }
        // A later conflict may name another operation in the way: the latest one is the blocker.
        if report.conflicts > 1
            && let Some(blocker) = Blocker::from_error(&classification)
        {
            report.blocker = Some(blocker);
        }
        let resource_type = self.original.resource.resource_type();
        self.engine.stats.conflict(resource_type, &classification);
        tracing::debug!(
            kind = %classification.kind,
            code = classification.code.as_deref().unwrap_or(""),
            status = classification.status,
            "conflict"
        );
        report.classification = classification;
    }

    /// Runs the prerequisite's restore, noting it in the report (the response's, or the one the
    /// error carries) — or, when the request failed without one, in a warning.
    async fn restore_after<T: Transport>(
        &self,
        transport: &mut T,
        rule: &Prerequisite,
        result: &mut Result<Answered<T::Response>, Failure<T::Error>>,
    ) {
        match result {
            Ok(Answered {
                report: Some(report),
                ..
            })
            | Err(Failure::Conflict(
                Error::NotConverged {
                    report: Some(report),
                    ..
                }
                | Error::Stuck {
                    report: Some(report),
                    ..
                },
            )) => return self.restore(transport, rule, report).await,
            _ => {}
        }
        let mut lost = self.new_report(&Classification::default());
        self.restore(transport, rule, &mut lost).await;
        tracing::warn!(steps = ?lost.steps, notes = ?lost.notes, "restored after a failed request");
    }

    /// Counts the resolution (or the failure to converge) by resource type.
    fn count<R, E>(&self, result: &Result<Answered<R>, Failure<E>>) {
        let resource_type = self.original.resource.resource_type();
        match result {
            Ok(Answered {
                report: Some(report),
                ..
            }) => self.engine.stats.resolution(resource_type, report),
            Err(Failure::Conflict(Error::NotConverged {
                classification,
                attempts,
                waited,
                ..
            })) => self.engine.stats.failure(
                resource_type,
                classification.as_ref().map(|c| c.kind).unwrap_or_default(),
                "not_converged",
                *attempts,
                *waited,
            ),
            Err(Failure::Conflict(Error::Stuck {
                report: Some(report),
                ..
            })) => self.engine.stats.failure(
                resource_type,
                report.kind,
                "stuck",
                report.attempts,
                report.waited,
            ),
            _ => {}
        }
    }
}

/// The response with its report, if any.
fn answer<R>(response: R, report: Option<ConflictReport>) -> Answered<R> {
    Answered {
        response,
        report: report.map(Box::new),
    }
}

/// `error` carrying the report of the resolution it ends: a wait that gave up at the deadline,
/// or on a state that stopped changing.
pub(super) fn ended(mut error: Error, report: &ConflictReport) -> Error {
    let (slot, outcome) = match &mut error {
        Error::NotConverged { report, .. } => (report, Outcome::DeadlineExceeded),
        Error::Stuck { report, .. } => (report, Outcome::Stuck),
        _ => return error,
    };
    let mut report = report.clone();
    report.outcome = outcome;
    *slot = Some(Box::new(report));
    error
}

/// Records the report on the current span.
fn record(report: &ConflictReport) {
    let span = tracing::Span::current();
    span.record("kind", report.kind.as_str());
    span.record("code", report.code.as_deref().unwrap_or(""));
    span.record("attempts", report.attempts);
    span.record("polls", report.polls);
    span.record("waited_ms", report.waited.as_millis() as u64);
    span.record("outcome", tracing::field::debug(report.outcome));
}
