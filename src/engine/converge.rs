//! Waiting until the thing a conflict depends on reaches a terminal state.
//!
//! What to watch comes from the error itself when it says: an operation-status URI
//! ("To retrieve status of the operation use uri: …") is the most precise signal; a referenced
//! resource (`ReferencedResourceNotProvisioned`) is the dependency actually in transition;
//! otherwise the resource the request wrote. Every wait is capped by the policy and by the
//! deadline, and every poll is bounded in size and time, so a hostile or stuck server can only make
//! us wait until the deadline, never longer.

use std::time::Duration;

use http::StatusCode;
use tokio::time::{Instant, sleep, timeout};
use url::Url;

use super::{
    Exchange, Fetched, Transport,
    run::Run,
    state::{Source, is_terminal, read_state},
};
use crate::{
    Blocker, Classification, ConflictReport, Error, ResourceId, StateCheck,
    classify::retry_after,
    redact::{redact, scrub},
};

/// Why the engine makes no request of its own any more.
pub(super) const OFFSITE: &str = "the HTTP client followed a redirect to another origin: no re-fetch, poll or prerequisite action is sent through it any more (see SECURITY.md)";

/// The state observed when a poll was answered from another origin, or not sent for that reason.
pub(super) const REDIRECTED: &str = "redirected to another origin";

/// What became of one of the engine's own requests.
pub(super) enum Called<E> {
    Answered(Fetched),
    /// The stack failed.
    Failed(E),
    /// Not answered by the deadline.
    CutOff,
    /// Answered from another origin (the stack followed a redirect), or not sent because the
    /// stack was seen doing so before.
    Offsite,
}

/// Where a poll loop writes down what it saw.
pub(super) trait Trail {
    /// A state a poll observed, and whether it ends the wait.
    fn observe(&mut self, state: &str, done: bool);
    /// Something the classification suggested but was not done.
    fn note(&mut self, note: String);
    /// What an operation-status answer said (its status, and its body's name and start time).
    fn operation_status(&mut self, _status: &str, _body: &[u8]) {}
}

impl Trail for ConflictReport {
    fn observe(&mut self, state: &str, _done: bool) {
        ConflictReport::observe(self, state);
    }
    fn note(&mut self, note: String) {
        ConflictReport::note(self, note);
    }
    fn operation_status(&mut self, status: &str, body: &[u8]) {
        self.blocker
            .get_or_insert_with(Blocker::default)
            .observe_status(status, body);
    }
}

/// The trail of a wait that is not part of a conflict report (the state guard): when each poll
/// was answered and whether it was terminal, for the clock, and the last state, for the error.
#[derive(Default)]
pub(super) struct Observations {
    pub polls: Vec<(Instant, bool)>,
    pub last: Option<String>,
}

impl Trail for Observations {
    fn observe(&mut self, state: &str, done: bool) {
        if self.polls.len() < 64 {
            self.polls.push((Instant::now(), done));
        }
        self.last = Some(state.to_owned());
    }
    fn note(&mut self, note: String) {
        tracing::debug!(%note, "state guard");
    }
}

/// How a wait ended.
#[derive(Debug, PartialEq)]
pub(super) enum Polled {
    /// A terminal state (or the watch's condition) was seen.
    Converged,
    /// The deadline came first.
    TimedOut,
    /// The state read from the answers stayed `state` for the policy's `stuck_after`.
    Stuck { state: String, since: Duration },
}

impl Polled {
    pub(super) fn converged(&self) -> bool {
        *self == Polled::Converged
    }
}

/// Watches for a state that stops changing: the policy's `stuck_after`, with a warning halfway.
struct Stillness {
    limit: Option<Duration>,
    /// The state last read, and when it was first read.
    current: Option<(String, Instant)>,
    warned: bool,
}

impl Stillness {
    fn new(limit: Option<Duration>) -> Self {
        Self {
            limit,
            current: None,
            warned: false,
        }
    }

    /// Takes in a non-terminal state read from an answer; `Some` (how long it has not changed)
    /// once that is the limit or more.
    fn observe(&mut self, state: &str, target: &Url) -> Option<Duration> {
        let limit = self.limit?;
        let since = match &self.current {
            Some((same, since)) if same == state => *since,
            _ => {
                self.current = Some((state.to_owned(), Instant::now()));
                self.warned = false;
                return None;
            }
        };
        let unchanged = since.elapsed();
        if unchanged >= limit {
            return Some(unchanged);
        }
        if !self.warned && unchanged >= limit / 2 {
            self.warned = true;
            tracing::warn!(
                state = %state.escape_debug(),
                unchanged = ?unchanged,
                stuck_after = ?limit,
                url = %redact(target),
                "the state has not changed for a while; it will be given up on as stuck"
            );
        }
        None
    }
}

/// What to poll, and when.
pub(super) struct Watch {
    pub target: Url,
    pub source: Source,
    /// The wait before the first poll, when no plan says otherwise; `None`: the schedule's first.
    pub first_delay: Option<Duration>,
    /// Times to poll at first, in order (see `clock`); the schedule takes over after them.
    pub planned: Vec<Instant>,
    /// Wait for this condition instead of a terminal state (prerequisite transitions).
    pub until: Option<StateCheck>,
    /// End the wait on an answer that cannot tell a state (a body with no readable state, a
    /// client error): the state guard's wait is a courtesy, and must never block a write for
    /// the whole deadline on a resource that does not report states the ARM way.
    pub lenient: bool,
}

impl Watch {
    /// Polls of `target`'s own state, on the schedule.
    pub(super) fn state(target: Url, source: Source) -> Self {
        Self {
            target,
            source,
            first_delay: None,
            planned: Vec::new(),
            until: None,
            lenient: false,
        }
    }
}

impl Run<'_> {
    /// Polls until a terminal state is seen, or fails with [`Error::NotConverged`] at `deadline`
    /// ([`Error::LeaseLost`] as soon as a lease the write holds is lost). The time spent is added
    /// to the report either way.
    pub(super) async fn converge<T: Transport>(
        &self,
        transport: &mut T,
        report: &mut ConflictReport,
    ) -> Result<(), Error> {
        let waiting = Instant::now();
        let watch = self.poll_target(report);
        let polled = self.unless_lost(self.poll(transport, watch, report)).await;
        report.waited += waiting.elapsed();
        let polled = polled?;
        if polled.converged() {
            return Ok(());
        }
        let last_state = report.last_state().map(str::to_owned);
        let classification = Some(Box::new(report.classification.clone()));
        Err(self.gave_up(
            polled,
            last_state,
            classification,
            report.attempts,
            report.waited,
        ))
    }

    /// The error a wait that did not converge ends with: [`Error::Stuck`] for a state that
    /// stopped changing, else [`Error::NotConverged`]. The caller attaches its report, if any.
    pub(super) fn gave_up(
        &self,
        polled: Polled,
        last_state: Option<String>,
        classification: Option<Box<Classification>>,
        attempts: u32,
        waited: Duration,
    ) -> Error {
        let resource = self.original.resource.key().to_owned();
        match polled {
            Polled::Stuck { state, since } => Error::Stuck {
                resource,
                state,
                since,
                attempts,
                waited,
                report: None,
            },
            Polled::Converged | Polled::TimedOut => Error::NotConverged {
                resource,
                classification,
                last_state,
                attempts,
                waited,
                report: None,
            },
        }
    }

    /// Whether a terminal state (or the watch's condition) was seen before the request's
    /// deadline.
    pub(super) async fn poll<T: Transport>(
        &self,
        transport: &mut T,
        watch: Watch,
        trail: &mut impl Trail,
    ) -> Polled {
        self.poll_until(transport, watch, self.deadline, trail)
            .await
    }

    /// Whether a terminal state (or the watch's condition) was seen before `deadline`, or the
    /// state stopped changing first.
    pub(super) async fn poll_until<T: Transport>(
        &self,
        transport: &mut T,
        watch: Watch,
        deadline: Instant,
        trail: &mut impl Trail,
    ) -> Polled {
        let policy = &*self.policy;
        let mut stillness = Stillness::new(policy.stuck_after);
        let Watch {
            mut target,
            mut source,
            first_delay,
            planned,
            until,
            lenient,
        } = watch;
        let mut schedule = policy.poll.backoff();
        let mut planned = planned.into_iter();
        let mut delay = match planned.next() {
            Some(at) => at.saturating_duration_since(Instant::now()),
            None => first_delay.unwrap_or_else(|| self.next_delay(None, &mut schedule)),
        };
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            // A zero delay polls at once: tokio would round even a zero sleep up to its next
            // millisecond tick.
            if !delay.is_zero() {
                sleep(delay.min(remaining)).await;
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Polled::TimedOut;
            }
            let exchange = self.exchange(http::Method::GET, target.clone());
            let mut hint = None;
            let mut done = None;
            // Whether the state was read from an answer (not a failure to get one).
            let mut read = false;
            let state = match self.call(transport, exchange, deadline).await {
                // Cut off by the deadline: nothing was observed, so the last state stays the last one seen.
                Called::CutOff => return Polled::TimedOut,
                // No state can be known without polling; the state guard lets the write go.
                Called::Offsite => {
                    trail.note(OFFSITE.to_owned());
                    trail.observe(REDIRECTED, lenient);
                    return if lenient {
                        Polled::Converged
                    } else {
                        Polled::TimedOut
                    };
                }
                Called::Failed(error) => {
                    tracing::debug!(error = %scrub(&error.to_string()), url = %redact(&target), "poll failed");
                    "transport error".to_owned()
                }
                Called::Answered(fetched) => {
                    hint = retry_after(&fetched.headers);
                    match fetched.status {
                        s if until.as_ref().is_some_and(|c| c.reads(s)) => {
                            let (satisfied, seen) = until
                                .as_ref()
                                .map(|c| c.evaluate(s, &fetched.body))
                                .unwrap_or_default();
                            done = Some(satisfied);
                            read = seen.is_some();
                            seen.unwrap_or_else(|| "unreadable".to_owned())
                        }
                        s if s.is_success() => match read_state(source, &fetched.body) {
                            Some(state) => {
                                read = true;
                                if source == Source::Operation {
                                    trail.operation_status(&state, &fetched.body);
                                }
                                state
                            }
                            None => {
                                done = lenient.then_some(true);
                                "unreadable".to_owned()
                            }
                        },
                        // A resource that is gone (404, or 410 where a service says so) is not
                        // in transition any more: a deletion has ended.
                        StatusCode::NOT_FOUND | StatusCode::GONE
                            if source == Source::Resource && until.is_none() =>
                        {
                            "NotFound".to_owned()
                        }
                        // An operation that is gone: watch the resource instead. (Only for
                        // operations: a resource that answers 404 is observed like any status.)
                        StatusCode::NOT_FOUND if source == Source::Operation => {
                            trail.note(format!(
                                "operation status {} answered 404; polling the resource instead",
                                redact(&target)
                            ));
                            target = self.resource_url();
                            source = Source::Resource;
                            delay = Duration::ZERO;
                            trail.observe("operation not found", false);
                            continue;
                        }
                        s => {
                            // A client error other than "busy" or "too many" will not change by
                            // waiting; the guard stops there.
                            let lasting =
                                s.is_client_error() && !matches!(s.as_u16(), 408 | 409 | 425 | 429);
                            if lenient && lasting {
                                done = Some(true);
                            }
                            format!("HTTP {}", s.as_u16())
                        }
                    }
                }
            };
            tracing::debug!(state = ?state, url = %redact(&target), "polled");
            let done = done.unwrap_or_else(|| is_terminal(&state) || state == "NotFound");
            trail.observe(&state, done);
            if done {
                return Polled::Converged;
            }
            if read && let Some(since) = stillness.observe(&state, &target) {
                return Polled::Stuck { state, since };
            }
            delay = match planned.next() {
                Some(at) => at.saturating_duration_since(Instant::now()),
                None => self.next_delay(hint, &mut schedule),
            };
        }
    }

    /// The server's hint, kept between the poll floor and the policy cap, else the schedule's next.
    fn next_delay(
        &self,
        hint: Option<Duration>,
        schedule: &mut impl Iterator<Item = Duration>,
    ) -> Duration {
        match hint {
            Some(hint) => self.clamp_hint(hint),
            None => schedule.next().unwrap_or(self.policy.poll.max_delay),
        }
    }

    /// A server's `Retry-After`, capped by the policy and floored by the poll schedule, so neither
    /// `999999` nor `0` can make us sleep for days or spin.
    pub(super) fn clamp_hint(&self, hint: Duration) -> Duration {
        hint.min(self.policy.retry_after_cap)
            .max(self.policy.poll.min_delay)
    }

    /// What to poll for this conflict, noting in the report anything named but not usable.
    fn poll_target(&self, report: &mut ConflictReport) -> Watch {
        let classification = &report.classification;
        let first_delay = classification.retry_after.map(|hint| self.clamp_hint(hint));
        let mut notes = Vec::new();
        let (target, source) = self.choose_target(classification, &mut notes);
        for note in notes {
            report.note(note);
        }
        Watch {
            first_delay,
            ..Watch::state(target, source)
        }
    }

    fn choose_target(
        &self,
        classification: &Classification,
        notes: &mut Vec<String>,
    ) -> (Url, Source) {
        if let Some(uri) = &classification.operation_uri {
            match Url::parse(uri) {
                Ok(url) if self.may_poll(&url) => return (url, Source::Operation),
                Ok(url) => notes.push(format!(
                    "operation URI host {} is not allowed; polling the resource instead",
                    url.host_str().unwrap_or("")
                )),
                Err(_) => notes.push("operation URI is not a valid URL".to_owned()),
            }
        }
        if let Some(id) = &classification.referenced_resource {
            match ResourceId::parse(id) {
                Ok(referenced) => {
                    return (referenced.fetch_url(self.original.url), Source::Resource);
                }
                Err(_) => notes.push("referenced resource is not a valid ARM ID".to_owned()),
            }
        }
        (self.resource_url(), Source::Resource)
    }

    /// Polls go to the request's own origin, or to an allow-listed host over https.
    pub(super) fn may_poll(&self, target: &Url) -> bool {
        if self.original.url.origin() == target.origin() {
            return true;
        }
        target.scheme() == "https"
            && target
                .host_str()
                .is_some_and(|host| self.policy.host_allowed(host))
    }

    /// Where the resource itself is read: the request's origin, its path without an action.
    pub(super) fn resource_url(&self) -> Url {
        self.original.resource.fetch_url(self.original.url)
    }

    /// Sends one of the engine's own requests, answered by `deadline` — or none at all once the
    /// stack was seen following a redirect to another origin.
    pub(super) async fn call<T: Transport>(
        &self,
        transport: &mut T,
        exchange: Exchange,
        deadline: Instant,
    ) -> Called<T::Error> {
        let redirects = self.engine.redirects();
        if redirects.followed() {
            return Called::Offsite;
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        match timeout(remaining, transport.call(exchange)).await {
            Err(_) => Called::CutOff,
            // The adapter records a redirect it saw, and fails the call.
            Ok(Err(_)) if redirects.followed() => Called::Offsite,
            Ok(Err(error)) => Called::Failed(error),
            Ok(Ok(fetched)) => Called::Answered(fetched),
        }
    }

    /// A re-fetch, poll or prerequisite action: `method url`, with [`fetch_headers`](Self::fetch_headers),
    /// its answer read up to the policy's `max_fetch_body`.
    pub(super) fn exchange(&self, method: http::Method, url: Url) -> Exchange {
        Exchange {
            method,
            url,
            headers: self.fetch_headers(),
            cap: self.policy.max_fetch_body,
        }
    }

    /// The headers a re-fetch, poll or prerequisite action carries: only the original's headers
    /// named in the policy's `poll_headers` (authorization, tracing ids, API version). Nothing
    /// that describes the original's body or makes it conditional, and no other secret a caller
    /// may have put on the write.
    fn fetch_headers(&self) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        for name in &self.policy.poll_headers {
            let Ok(name) = http::HeaderName::from_bytes(name.as_bytes()) else {
                continue;
            };
            for value in self.original.headers.get_all(&name) {
                headers.append(name.clone(), value.clone());
            }
        }
        headers
    }
}
