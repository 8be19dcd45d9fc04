//! The mechanism: how a conflict is resolved, whatever the HTTP stack.
//!
//! An adapter (reqwest-middleware, tower, azure_core) sends the request once. Only when the answer
//! is a 409 or 412 does it hand over to [`Engine::resolve`], through the small [`Transport`] trait:
//! "peek at this response's body", "send the original request again", "GET this URL the way the
//! original request would have". The engine classifies, decides from the policy, waits for the
//! resource (or the operation, or the referenced resource) to reach a terminal state, and retries —
//! within the attempt budget and the deadline. It never sees a successful first answer, so the
//! happy path costs nothing but a status check.

mod converge;
pub(crate) mod state;

use std::{fmt::Display, future::Future, pin::Pin, sync::Arc};

use bytes::Bytes;
use http::{HeaderMap, StatusCode, header};
use tokio::time::Instant;
use tracing::{Instrument, field::Empty};
use url::Url;

use crate::{
    Classifier, ConflictKind, ConflictPolicy, ConflictReport, Error, ResourceId, report::Outcome,
};

/// A boxed, sendable future, as the adapters' own stacks use.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A response whose body was peeked at, with the bytes read.
pub(crate) type Peeked<R, E> = Result<(R, Bytes), E>;

/// What the engine needs from an HTTP stack.
pub(crate) trait Transport: Send {
    /// The stack's response type.
    type Response: Send;
    /// The stack's error type, passed through untouched.
    type Error: Send + Display;

    /// The response's status.
    fn status(response: &Self::Response) -> StatusCode;
    /// The response's headers.
    fn headers(response: &Self::Response) -> &HeaderMap;
    /// Reads up to `cap` bytes of the body and returns them with the response, whose body still
    /// yields every byte to the caller.
    fn peek_body(
        response: Self::Response,
        cap: usize,
    ) -> BoxFuture<'static, Peeked<Self::Response, Self::Error>>;
    /// Whether the original request can be sent again (its body could be cloned).
    fn can_resend(&self) -> bool;
    /// Sends the original request again. Called only when [`can_resend`](Self::can_resend).
    fn resend(&mut self) -> BoxFuture<'_, Result<Self::Response, Self::Error>>;
    /// GETs `url` through the rest of the stack with `headers`, reading at most `cap` bytes.
    fn fetch(
        &mut self,
        url: Url,
        headers: HeaderMap,
        cap: usize,
    ) -> BoxFuture<'_, Result<Fetched, Self::Error>>;
}

/// A re-fetched resource or operation status.
pub(crate) struct Fetched {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// What the engine knows of the original request.
pub(crate) struct Original<'a> {
    pub url: &'a Url,
    pub headers: &'a HeaderMap,
    pub resource: ResourceId,
}

/// Why a resolution did not end with a response.
pub(crate) enum Failure<E> {
    /// The stack failed; its error is returned as is.
    Transport(E),
    /// The engine gave up (deadline while waiting).
    Conflict(Error),
}

/// The policy, compiled once: shared by every request through one middleware.
#[derive(Clone, Debug)]
pub(crate) struct Engine {
    policy: Arc<ConflictPolicy>,
    classifier: Arc<Classifier>,
}

/// Whether a status is one this crate resolves.
pub(crate) fn is_conflict(status: StatusCode) -> bool {
    status == StatusCode::CONFLICT || status == StatusCode::PRECONDITION_FAILED
}

/// The headers a re-fetch carries: the original's, minus what describes the original's body or
/// makes it conditional. Authorization stays, so auth applied before this middleware still works;
/// the engine only re-fetches from the request's own origin or an allow-listed https host.
pub(crate) fn fetch_headers(original: &HeaderMap) -> HeaderMap {
    let mut headers = original.clone();
    for name in [
        header::CONTENT_TYPE,
        header::CONTENT_LENGTH,
        header::CONTENT_ENCODING,
        header::TRANSFER_ENCODING,
        header::EXPECT,
        header::HOST,
        header::IF_MATCH,
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_UNMODIFIED_SINCE,
        header::IF_RANGE,
    ] {
        headers.remove(name);
    }
    headers
}

impl Engine {
    /// Compiles `policy`. Values a type cannot rule out are clamped to safe ones here, so a
    /// hand-built policy can never make the engine spin or skip its first attempt.
    pub(crate) fn new(mut policy: ConflictPolicy) -> Self {
        policy.max_attempts = policy.max_attempts.max(1);
        policy.poll.min_delay = policy
            .poll
            .min_delay
            .max(std::time::Duration::from_millis(1));
        policy.poll.max_delay = policy.poll.max_delay.max(policy.poll.min_delay);
        if !(policy.poll.factor.is_finite() && policy.poll.factor >= 1.0) {
            policy.poll.factor = 1.0;
        }
        policy.max_error_body = policy.max_error_body.clamp(1, 64 * 1024 * 1024);
        policy.max_fetch_body = policy.max_fetch_body.clamp(1, 64 * 1024 * 1024);
        let classifier = Classifier::with_rules(policy.rules.iter().cloned());
        Self {
            policy: Arc::new(policy),
            classifier: Arc::new(classifier),
        }
    }

    /// The policy in force.
    pub(crate) fn policy(&self) -> &ConflictPolicy {
        &self.policy
    }

    /// Takes over after `first`, a 409/412 answer to `original`, and returns the response the
    /// caller should see, with the report of what was done (none if `first` was no conflict).
    pub(crate) async fn resolve<T: Transport>(
        &self,
        transport: &mut T,
        original: &Original<'_>,
        first: T::Response,
    ) -> Result<(T::Response, Option<ConflictReport>), Failure<T::Error>> {
        let span = tracing::info_span!(
            "conflict_resolution",
            resource = %original.resource.key(),
            resource_type = original.resource.resource_type().unwrap_or(""),
            kind = Empty,
            code = Empty,
            attempts = Empty,
            polls = Empty,
            waited_ms = Empty,
            outcome = Empty,
        );
        self.resolve_in_span(transport, original, first)
            .instrument(span)
            .await
    }

    async fn resolve_in_span<T: Transport>(
        &self,
        transport: &mut T,
        original: &Original<'_>,
        first: T::Response,
    ) -> Result<(T::Response, Option<ConflictReport>), Failure<T::Error>> {
        let started = Instant::now();
        let deadline = started + self.policy.deadline;
        let mut report: Option<ConflictReport> = None;
        let mut response = first;
        loop {
            let status = T::status(&response);
            if !is_conflict(status) {
                if let Some(report) = report.as_mut() {
                    report.outcome = Outcome::Resolved;
                }
                return Ok(finish(response, report));
            }
            let (peeked, body) = T::peek_body(response, self.policy.max_error_body)
                .await
                .map_err(Failure::Transport)?;
            response = peeked;
            let classification =
                self.classifier
                    .classify(status, original.headers, T::headers(&response), &body);
            let report = report.get_or_insert_with(|| {
                ConflictReport::new(
                    original.resource.key().to_owned(),
                    original.resource.resource_type().map(str::to_owned),
                    &classification,
                )
            });
            report.conflicts += 1;
            tracing::debug!(
                kind = %classification.kind,
                code = classification.code.as_deref().unwrap_or(""),
                status = status.as_u16(),
                "conflict"
            );
            report.classification = classification;

            let worth_waiting = match report.classification.kind {
                ConflictKind::StateConflict => true,
                ConflictKind::Unknown => self.policy.retry_unknown,
                _ => false,
            };
            let outcome = if !worth_waiting {
                Some(Outcome::Surfaced)
            } else if !transport.can_resend() {
                Some(Outcome::NotRetryable)
            } else if report.attempts >= self.policy.max_attempts {
                Some(Outcome::Exhausted)
            } else if Instant::now() >= deadline {
                Some(Outcome::DeadlineExceeded)
            } else {
                None
            };
            if let Some(outcome) = outcome {
                report.outcome = outcome;
                return Ok(finish(response, Some(report.clone())));
            }
            // Free the connection before a wait that may last minutes.
            drop(response);
            if let Err(error) = self.converge(transport, original, deadline, report).await {
                record(&tracing::Span::current(), report);
                return Err(Failure::Conflict(error));
            }
            response = transport.resend().await.map_err(Failure::Transport)?;
            report.attempts += 1;
        }
    }
}

/// Records the report, if any, on the current span and pairs it with the response.
fn finish<R>(response: R, report: Option<ConflictReport>) -> (R, Option<ConflictReport>) {
    if let Some(report) = &report {
        record(&tracing::Span::current(), report);
    }
    (response, report)
}

fn record(span: &tracing::Span, report: &ConflictReport) {
    span.record("kind", report.kind.as_str());
    span.record("code", report.code.as_deref().unwrap_or(""));
    span.record("attempts", report.attempts);
    span.record("polls", report.polls);
    span.record("waited_ms", report.waited.as_millis() as u64);
    span.record("outcome", tracing::field::debug(report.outcome));
}
