//! The mechanism: how a conflict is resolved, whatever the HTTP stack.
//!
//! An adapter (reqwest-middleware, tower, azure_core) sends the request once. Only when the answer
//! is a 409 or 412 does it hand over to [`Engine::resolve`], through the small [`Transport`] trait:
//! "peek at this response's body", "send the original request again", "GET this URL the way the
//! original request would have". The engine classifies, decides from the policy, waits for the
//! resource (or the operation, or the referenced resource) to reach a terminal state, and retries —
//! within the attempt budget and the deadline. It never sees a successful first answer, so the
//! happy path costs nothing but a status check.

mod clock;
mod converge;
mod precondition;
mod prerequisite;

pub(crate) mod state;

use std::{borrow::Cow, collections::HashMap, fmt::Display, future::Future, pin::Pin, sync::Arc};

use precondition::Stale;
use prerequisite::Prepared;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use tokio::time::Instant;
use tracing::{Instrument, field::Empty};
use url::Url;

use crate::{
    Classifier, ConflictKind, ConflictPolicy, ConflictReport, ConflictStats, Error, Journal, Lease,
    LeaseStore, MemoryLeases, MergeBase, PolicyOverride, PreconditionStrategy, Prerequisite,
    ResourceId, report::Outcome, resource::Target,
};

/// A boxed, sendable future, as the adapters' own stacks use.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The response for the caller, with the report of the conflict it met, if any (boxed: a
/// report is large, and only a conflict makes one).
pub(crate) type Answer<R> = (R, Option<Box<ConflictReport>>);

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
    /// Reads up to `cap` bytes of the body — stopping at `deadline` if the body stalls — and
    /// returns them with the response, whose body still yields every byte to the caller.
    fn peek_body(
        response: Self::Response,
        cap: usize,
        deadline: tokio::time::Instant,
    ) -> BoxFuture<'static, Peeked<Self::Response, Self::Error>>;
    /// Sends the original request: the first call sends the request itself, later ones a copy.
    /// Called again only while [`can_resend`](Self::can_resend).
    /// Not boxed: it is on every write's path.
    fn send(&mut self) -> impl Future<Output = Result<Self::Response, Self::Error>> + Send + '_;
    /// Whether the original request can be sent again (its body could be cloned).
    fn can_resend(&self) -> bool;
    /// The original request's body, when it is held in memory.
    fn body(&self) -> Option<Bytes> {
        None
    }
    /// Sends a copy of the original request with `If-Match: if_match` and, when given, another
    /// body. `None` when this stack cannot (the stale-precondition strategies then surface).
    fn send_variant(
        &mut self,
        if_match: HeaderValue,
        body: Option<Bytes>,
    ) -> Option<BoxFuture<'_, Result<Self::Response, Self::Error>>> {
        let _ = (if_match, body);
        None
    }
    /// A response made here, for a write found already applied. `None` when this stack cannot
    /// make one (the conflict response is returned, with the report saying `already_applied`).
    fn respond(
        &self,
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    ) -> Option<Self::Response> {
        let _ = (status, headers, body);
        None
    }
    /// Sends `method url` with `headers` and no body through the rest of the stack, reading at
    /// most `cap` bytes of the answer: re-fetches, polls, prerequisite actions.
    fn call(
        &mut self,
        method: http::Method,
        url: Url,
        headers: HeaderMap,
        cap: usize,
    ) -> BoxFuture<'_, Result<Fetched, Self::Error>>;
    /// GETs `url` through the rest of the stack with `headers`, reading at most `cap` bytes.
    fn fetch(
        &mut self,
        url: Url,
        headers: HeaderMap,
        cap: usize,
    ) -> BoxFuture<'_, Result<Fetched, Self::Error>> {
        self.call(http::Method::GET, url, headers, cap)
    }
}

/// A re-fetched resource or operation status.
pub(crate) struct Fetched {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// What the engine knows of the original request.
pub(crate) struct Original<'a> {
    pub method: &'a http::Method,
    pub url: &'a Url,
    pub headers: &'a HeaderMap,
    pub resource: Target<'a>,
    /// Per-request settings from the request's extensions.
    pub overrides: Overrides,
}

/// What a single request may change of the policy, through its extensions.
#[derive(Clone, Debug, Default)]
pub(crate) struct Overrides {
    /// Boxed: large, and rarely set.
    pub policy: Option<Box<PolicyOverride>>,
    pub merge_base: Option<serde_json::Value>,
}

impl Overrides {
    /// Reads [`PolicyOverride`], [`PreconditionStrategy`] (a shorthand for an override of just
    /// that) and [`MergeBase`] from a request's extensions.
    pub(crate) fn from_extensions(extensions: &http::Extensions) -> Self {
        let mut policy = extensions.get::<PolicyOverride>().cloned().map(Box::new);
        if let Some(strategy) = extensions.get::<PreconditionStrategy>() {
            policy.get_or_insert_default().precondition = Some(*strategy);
        }
        Self {
            policy,
            merge_base: extensions.get::<MergeBase>().map(|b| b.0.clone()),
        }
    }
}

/// Why a resolution did not end with a response.
pub(crate) enum Failure<E> {
    /// The stack failed; its error is returned as is.
    Transport(E),
    /// The engine gave up (deadline while waiting).
    Conflict(Error),
}

/// The policy, compiled once, with the lease store and journal: shared by every request through
/// one adapter.
#[derive(Clone, Debug)]
pub(crate) struct Engine {
    policy: Arc<ConflictPolicy>,
    classifier: Arc<Classifier>,
    leases: Arc<dyn LeaseStore>,
    /// The same store when it is a [`MemoryLeases`]: leased directly, with the request's shared
    /// key and no boxed future (the default store is on every write's path).
    memory: Option<MemoryLeases>,
    journal: Journal,
    /// Merge bases, when the policy merges.
    remembered: Option<Arc<precondition::Remembered>>,
    /// When transitions started, and how long they take, to time the state guard's polls.
    clock: Arc<clock::Clock>,
    /// The policy for each resource type with an override, by lowercased type.
    by_type: Arc<HashMap<String, Arc<ConflictPolicy>>>,
    /// Conflict counts, shared by every clone.
    stats: ConflictStats,
}

/// Clamps what a type cannot rule out, so a hand-built policy can never make the engine spin or
/// skip its first attempt.
fn sanitize(mut policy: ConflictPolicy) -> ConflictPolicy {
    policy.max_attempts = policy.max_attempts.max(1);
    // A deadline is added to `Instant::now()`; an absurd one must not overflow it.
    policy.deadline = policy.deadline.min(crate::policy::MAX_DEADLINE);
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
    policy
}

/// The builder and accessor methods every adapter shares, delegating to its `engine` field.
macro_rules! engine_accessors {
    ($adapter:literal) => {
        #[doc = concat!("The same ", $adapter, " with another lease store, e.g. `RedisLeases` to serialize writers")]
        /// across processes. The default is a [`MemoryLeases`](crate::MemoryLeases) of its own.
        pub fn with_leases(mut self, store: impl crate::LeaseStore) -> Self {
            self.engine = self.engine.with_store(store);
            self
        }

        #[doc = concat!("The same ", $adapter, " sharing `store` with others (several clients in one process).")]
        pub fn with_shared_leases(mut self, store: std::sync::Arc<dyn crate::LeaseStore>) -> Self {
            self.engine = self.engine.with_leases(store);
            self
        }

        /// The policy in force (after clamping values that would make the engine spin).
        pub fn policy(&self) -> &crate::ConflictPolicy {
            self.engine.policy()
        }

        #[doc = concat!("Conflict counts by resource type, kind and code, for this ", $adapter, " and its clones.")]
        pub fn stats(&self) -> &crate::ConflictStats {
            self.engine.stats()
        }

        #[doc = concat!("The journal of the writes that went through this ", $adapter, " and its clones.")]
        pub fn journal(&self) -> &crate::Journal {
            self.engine.journal()
        }

        #[doc = concat!("The same ", $adapter, " writing to `journal`: one with a window of another size")]
        /// ([`Journal::with_capacity`](crate::Journal::with_capacity)), or one shared with other
        /// clients. The default keeps the last 1,024 writes.
        pub fn with_journal(mut self, journal: crate::Journal) -> Self {
            self.engine = self.engine.with_journal(journal);
            self
        }
    };
}
pub(crate) use engine_accessors;

/// Whether a method only reads: such requests are neither leased nor resolved.
pub(crate) fn is_safe(method: &http::Method) -> bool {
    use http::Method;
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// Parsed once: this is looked up on every successful write.
static AZURE_ASYNC_OPERATION: http::HeaderName =
    http::HeaderName::from_static("azure-asyncoperation");

/// Whether a successful write to an ARM resource left it in transition: ARM answers 201/202 for
/// long-running operations, or names an `Azure-AsyncOperation` to poll. Judged from the head
/// alone, so successful bodies are never read. Other APIs have no such contract (a 201 from
/// `POST /items` is just "created"), so they are never marked.
pub(crate) fn leaves_transition(arm: bool, status: StatusCode, headers: &HeaderMap) -> bool {
    arm && (status == StatusCode::CREATED
        || status == StatusCode::ACCEPTED
        || (status.is_success() && headers.contains_key(&AZURE_ASYNC_OPERATION)))
}

/// Whether a status is one this crate resolves.
pub(crate) fn is_conflict(status: StatusCode) -> bool {
    status == StatusCode::CONFLICT || status == StatusCode::PRECONDITION_FAILED
}

/// A URL as it may be written down (logs, notes): no userinfo, no query — a storage URL's query
/// is its SAS signature.
pub(crate) fn redact(url: &Url) -> String {
    format!(
        "{}://{}{}{}",
        url.scheme(),
        url.host_str().unwrap_or_default(),
        url.port().map(|p| format!(":{p}")).unwrap_or_default(),
        url.path()
    )
}

/// `text` (an error message) with the query of every URL in it cut, for the same reason.
pub(crate) fn scrub(text: &str) -> String {
    text.split(' ')
        .map(|word| match (word.find("://"), word.find('?')) {
            (Some(scheme), Some(query)) if query > scheme => format!("{}?…", &word[..query]),
            _ => word.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl Engine {
    /// Compiles `policy`. Values a type cannot rule out are clamped to safe ones here, so a
    /// hand-built policy can never make the engine spin or skip its first attempt.
    pub(crate) fn new(policy: ConflictPolicy) -> Self {
        let policy = sanitize(policy);
        let by_type = policy
            .resource_types
            .iter()
            .map(|(resource_type, o)| {
                let mut typed = policy.clone();
                o.apply_to(&mut typed);
                (
                    resource_type.to_ascii_lowercase(),
                    Arc::new(sanitize(typed)),
                )
            })
            .collect();
        let merges = policy.precondition == PreconditionStrategy::Merge
            || policy
                .resource_types
                .values()
                .any(|o| o.precondition == Some(PreconditionStrategy::Merge));
        let classifier = Classifier::with_rules(policy.rules.iter().cloned());
        let memory = MemoryLeases::new();
        Self {
            classifier: Arc::new(classifier),
            leases: Arc::new(memory.clone()),
            memory: Some(memory),
            journal: Journal::default(),
            remembered: if merges {
                precondition::Remembered::new(policy.remember_representations)
            } else {
                None
            },
            policy: Arc::new(policy),
            by_type: Arc::new(by_type),
            clock: Arc::default(),
            stats: ConflictStats::default(),
        }
    }

    /// This engine with the policy for `original`: its resource type's override, then the
    /// request's own. Borrowed (free) when neither exists.
    fn for_request(&self, original: &Original<'_>) -> Cow<'_, Engine> {
        // The type's string is made (with the whole ID) only when some type has an override.
        let typed = if self.by_type.is_empty() {
            None
        } else {
            let resource_type = original.resource.id().resource_type();
            resource_type.and_then(|t| self.by_type.get(&t.to_ascii_lowercase()))
        };
        let request = original.overrides.policy.as_ref();
        if typed.is_none() && request.is_none() {
            return Cow::Borrowed(self);
        }
        let mut engine = self.clone();
        if let Some(typed) = typed {
            engine.policy = typed.clone();
        }
        if let Some(o) = request {
            let mut policy = (*engine.policy).clone();
            o.apply_to(&mut policy);
            engine.policy = Arc::new(sanitize(policy));
        }
        Cow::Owned(engine)
    }

    /// Whether successful bodies are wanted as merge bases (the policy merges).
    pub(crate) fn remembers(&self) -> bool {
        self.remembered.is_some()
    }

    /// The ID a write's answer is remembered under, when the policy merges (made only then).
    pub(crate) fn to_remember(&self, resource: Target<'_>) -> Option<ResourceId> {
        self.remembers().then(|| resource.into_id())
    }

    /// The headers a re-fetch, poll or prerequisite action carries: only the original's headers
    /// named in the policy's `poll_headers` (authorization, tracing ids, API version). Nothing
    /// that describes the original's body or makes it conditional, and no other secret a caller
    /// may have put on the write.
    pub(crate) fn fetch_headers(&self, original: &HeaderMap) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for name in &self.policy.poll_headers {
            let Ok(name) = http::HeaderName::from_bytes(name.as_bytes()) else {
                continue;
            };
            for value in original.get_all(&name) {
                headers.append(name.clone(), value.clone());
            }
        }
        headers
    }

    /// Where an adapter should copy a response body it passes to the caller, as a future merge
    /// base: `Some((cap, sink))` for a successful answer with an ETag when the policy merges —
    /// the adapter tees the body (see `body::Tee`) and hands the copy to `sink` — else `None`.
    pub(crate) fn merge_base_sink(
        &self,
        resource: Option<ResourceId>,
        status: StatusCode,
        etag: Option<&str>,
    ) -> Option<(usize, impl FnOnce(Bytes) + Send + Sync + 'static)> {
        let (Some(remembered), Some(resource), Some(etag)) =
            (self.remembered.clone(), resource, etag)
        else {
            return None;
        };
        if !status.is_success() {
            return None;
        }
        let etag = etag.to_owned();
        let sink = move |bytes| remembered.put(resource.key(), &etag, bytes);
        Some((self.policy.max_fetch_body, sink))
    }

    /// The same engine with another lease store.
    pub(crate) fn with_leases(mut self, store: Arc<dyn LeaseStore>) -> Self {
        self.leases = store;
        self.memory = None;
        self
    }

    /// The same engine with `store`, leased directly when it is a [`MemoryLeases`].
    pub(crate) fn with_store<S: LeaseStore>(self, store: S) -> Self {
        let memory = (&store as &dyn std::any::Any)
            .downcast_ref::<MemoryLeases>()
            .cloned();
        let mut engine = self.with_leases(Arc::new(store));
        engine.memory = memory;
        engine
    }

    /// Takes the lease on `key`.
    async fn lease(&self, key: &Arc<str>, wait: std::time::Duration) -> Result<Lease, Error> {
        match &self.memory {
            Some(memory) => memory.lease(key, wait).await,
            None => {
                let ttl = self.policy.leases.ttl;
                self.leases.acquire(key, ttl, wait).await
            }
        }
    }

    /// The same engine with another journal.
    pub(crate) fn with_journal(mut self, journal: Journal) -> Self {
        self.journal = journal;
        self
    }

    /// The journal of mutating requests.
    pub(crate) fn journal(&self) -> &Journal {
        &self.journal
    }

    /// The conflict statistics.
    pub(crate) fn stats(&self) -> &ConflictStats {
        &self.stats
    }

    /// Runs one request: under its leases (when the policy says so), after the previous holder's
    /// transition converged, resolving any 409/412 it meets.
    pub(crate) async fn execute<T: Transport>(
        &self,
        transport: &mut T,
        original: &Original<'_>,
    ) -> Result<Answer<T::Response>, Failure<T::Error>> {
        self.for_request(original).run(transport, original).await
    }

    async fn run<T: Transport>(
        &self,
        transport: &mut T,
        original: &Original<'_>,
    ) -> Result<Answer<T::Response>, Failure<T::Error>> {
        // The clock is read here, when the journal entry opens and when the answer is back (and
        // once more after waiting for a parent): a reading costs about a fifth of an uncontended
        // lease.
        let deadline = Instant::now() + self.policy.deadline;
        // The resource's own lease, and its parent's when the policy names one (rare). The
        // parent's key is a prefix of the resource's, so it sorts first: keys are always taken
        // in sorted order (as `lease::acquire_all` does), so writers cannot deadlock.
        let mut parent = None;
        let own = if self.policy.leases.enabled && !is_safe(original.method) {
            // Nothing has been waited for yet.
            let mut wait = self.policy.deadline;
            if let Some(id) = self
                .policy
                .leases
                .locks_parent(|t| original.resource.is_type(t))
                .then(|| original.resource.id().parent())
                .flatten()
            {
                // Through the store's boxed future: a parent is rare, and its own inline
                // future would double this one's size.
                let ttl = self.policy.leases.ttl;
                let lease = self.leases.acquire(id.key(), ttl, wait).await;
                parent = Some(lease.map_err(Failure::Conflict)?);
                wait = deadline.saturating_duration_since(Instant::now());
            }
            let lease = self.lease(original.resource.shared_key(), wait).await;
            Some(lease.map_err(Failure::Conflict)?)
        } else {
            None
        };
        if let Some(lease) = &own
            && lease.transitioning() != Some(false)
        {
            // Boxed: a large future that only a write after a transition (or under a store that
            // must be asked) pays for. (Boxed in a statement of its own: a future built inside
            // the expression that awaits it keeps its unboxed size in this one's state.)
            let guard = Box::pin(self.guard(transport, original, lease, deadline));
            guard.await.map_err(Failure::Conflict)?;
        }

        let seq = self.journal.begin(
            original.resource.shared_key(),
            original.method,
            own.as_ref().map(Lease::token),
        );
        let mut result = match transport.send().await {
            Ok(first) if is_conflict(T::status(&first)) => {
                // Boxed (apart, as the guard): the resolution is a large future, and only a
                // conflict pays for it.
                let resolution = Box::pin(self.resolve(transport, original, first, deadline));
                resolution.await
            }
            Ok(first) => Ok((first, None)),
            Err(error) => Err(Failure::Transport(error)),
        };
        if let Ok((_, Some(report))) = &mut result {
            report.lease_token = own.as_ref().map(Lease::token);
            report.journal_seq = Some(seq);
        }
        let status = result.as_ref().ok().map(|(r, _)| T::status(r).as_u16());
        let ended = Instant::now();
        self.journal.end(seq, status, ended);

        if let (Some(lease), Ok((response, _))) = (&own, &result)
            && leaves_transition(
                original.resource.is_arm(),
                T::status(response),
                T::headers(response),
            )
        {
            // An in-process lease records the flag, and when it was set, in its key's state;
            // another store is told, and the clock notes the start.
            if !lease.record_transition(Some(ended)) {
                self.clock.started(original.resource.shared_key(), ended);
                if let Err(error) = self.leases.set_transitioning(lease, true).await {
                    tracing::warn!(%error, "could not record the transition; the next writer may meet a 409");
                }
            }
        }
        // Released explicitly, so a remote store has them back before the caller goes on (a
        // process that exits right after its write must not leave its lease to expire).
        if let Some(lease) = own {
            lease.release().await;
        }
        if let Some(lease) = parent {
            lease.release().await;
        }
        result
    }

    /// The state guard: if the previous holder left the resource in transition, wait (polling it)
    /// until it is terminal, so this writer is not the one that eats the 409.
    async fn guard<T: Transport>(
        &self,
        transport: &mut T,
        original: &Original<'_>,
        lease: &Lease,
        deadline: Instant,
    ) -> Result<(), Error> {
        let transitioning = match lease.transitioning() {
            Some(known) => known,
            None => self.leases.is_transitioning(lease).await?,
        };
        if !transitioning {
            return Ok(());
        }
        let key = original.resource.key();
        let kind = original.resource.id().resource_type().unwrap_or_default();
        let start = lease
            .transition_start()
            .or_else(|| self.clock.take_start(key));
        let watch = converge::Watch {
            planned: self.clock.plan(start, kind, self.policy.poll.min_delay),
            lenient: true,
            ..converge::Watch::state(
                original.resource.id().fetch_url(original.url),
                state::Source::Resource,
            )
        };
        let mut seen = converge::Observations::default();
        let waiting = Instant::now();
        let converged = self
            .poll(transport, original, watch, deadline, &mut seen)
            .await;
        self.clock.learn(start, kind, &seen.polls);
        if !converged {
            return Err(Error::NotConverged {
                resource: key.to_owned(),
                classification: None,
                last_state: seen.last,
                attempts: 0,
                waited: waiting.elapsed(),
            });
        }
        if lease.record_transition(None) {
            return Ok(());
        }
        self.leases.set_transitioning(lease, false).await
    }

    /// The policy in force.
    pub(crate) fn policy(&self) -> &ConflictPolicy {
        &self.policy
    }

    /// Takes over after `first`, a 409/412 answer to `original`, and returns the response the
    /// caller should see, with the report of what was done.
    async fn resolve<T: Transport>(
        &self,
        transport: &mut T,
        original: &Original<'_>,
        first: T::Response,
        deadline: Instant,
    ) -> Result<Answer<T::Response>, Failure<T::Error>> {
        let span = tracing::info_span!(
            "conflict_resolution",
            resource = %original.resource.key(),
            resource_type = original.resource.id().resource_type().unwrap_or(""),
            kind = Empty,
            code = Empty,
            attempts = Empty,
            polls = Empty,
            waited_ms = Empty,
            outcome = Empty,
        );
        async {
            let mut restore = None;
            let mut result = self
                .resolve_loop(transport, original, first, deadline, &mut restore)
                .await;
            // A prerequisite action ran: put the resource back, whatever became of the request.
            if let Some(rule) = restore {
                let mut scratch = None;
                let report = match &mut result {
                    Ok((_, Some(report))) => report,
                    _ => scratch.insert(Box::new(ConflictReport::new(
                        original.resource.key().to_owned(),
                        original.resource.id().resource_type().map(str::to_owned),
                        &crate::Classification::default(),
                    ))),
                };
                self.restore(transport, original, &rule, report).await;
                if let Some(lost) = scratch {
                    tracing::warn!(steps = ?lost.steps, notes = ?lost.notes, "restored after a failed request");
                }
            }
            let resource_type = original.resource.id().resource_type();
            match &result {
                Ok((_, Some(report))) => self.stats.resolution(resource_type, report),
                Ok((_, None)) | Err(Failure::Transport(_)) => {}
                Err(Failure::Conflict(Error::NotConverged {
                    classification,
                    attempts,
                    waited,
                    ..
                })) => self.stats.failure(
                    resource_type,
                    classification.as_ref().map(|c| c.kind).unwrap_or_default(),
                    "not_converged",
                    *attempts,
                    *waited,
                ),
                Err(Failure::Conflict(_)) => {}
            }
            result
        }
        .instrument(span)
        .await
    }

    async fn resolve_loop<T: Transport>(
        &self,
        transport: &mut T,
        original: &Original<'_>,
        first: T::Response,
        deadline: Instant,
        restore: &mut Option<Prerequisite>,
    ) -> Result<Answer<T::Response>, Failure<T::Error>> {
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
            let (peeked, body) = T::peek_body(response, self.policy.max_error_body, deadline)
                .await
                .map_err(Failure::Transport)?;
            response = peeked;
            let classification =
                self.classifier
                    .classify(status, original.headers, T::headers(&response), &body);
            let report = report.get_or_insert_with(|| {
                ConflictReport::new(
                    original.resource.key().to_owned(),
                    original.resource.id().resource_type().map(str::to_owned),
                    &classification,
                )
            });
            report.conflicts += 1;
            self.stats
                .conflict(original.resource.id().resource_type(), &classification);
            tracing::debug!(
                kind = %classification.kind,
                code = classification.code.as_deref().unwrap_or(""),
                status = status.as_u16(),
                "conflict"
            );
            report.classification = classification;

            let wait_for_state = match report.classification.kind {
                ConflictKind::StateConflict => true,
                ConflictKind::Unknown => self.policy.retry_unknown,
                ConflictKind::StalePrecondition => {
                    match self.stale(transport, original, report, deadline).await? {
                        Stale::Surface(outcome) => {
                            report.outcome = outcome;
                            return Ok(finish(response, Some(report.clone())));
                        }
                        Stale::AlreadyApplied(replacement) => {
                            report.outcome = Outcome::AlreadyApplied;
                            let response = replacement.unwrap_or(response);
                            return Ok(finish(response, Some(report.clone())));
                        }
                        Stale::Sent(next) => {
                            response = next;
                            report.attempts += 1;
                            continue;
                        }
                    }
                }
                ConflictKind::PrerequisiteRequired if restore.is_none() => {
                    let Some(rule) = self.prerequisite_for(original, report) else {
                        report.outcome = Outcome::Surfaced;
                        return Ok(finish(response, Some(report.clone())));
                    };
                    if let Some(outcome) = self.blocked(transport, report, deadline) {
                        report.outcome = outcome;
                        return Ok(finish(response, Some(report.clone())));
                    }
                    let prepared = self
                        .prepare(transport, original, &rule, deadline, report)
                        .await;
                    match prepared {
                        Ok(Prepared::Ready) => *restore = Some(rule),
                        Ok(Prepared::NotTaken) => {
                            report.outcome = Outcome::Surfaced;
                            return Ok(finish(response, Some(report.clone())));
                        }
                        Ok(Prepared::Unknown) => {
                            *restore = Some(rule);
                            report.outcome = Outcome::Surfaced;
                            return Ok(finish(response, Some(report.clone())));
                        }
                        Err(error) => {
                            *restore = Some(rule);
                            return Err(Failure::Conflict(error));
                        }
                    }
                    drop(response);
                    response = transport.send().await.map_err(Failure::Transport)?;
                    report.attempts += 1;
                    report.step(format!(
                        "{} (retry): {}",
                        original.method,
                        T::status(&response).as_u16()
                    ));
                    continue;
                }
                _ => false,
            };
            let outcome = if wait_for_state {
                self.blocked(transport, report, deadline)
            } else {
                Some(Outcome::Surfaced)
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
            response = transport.send().await.map_err(Failure::Transport)?;
            report.attempts += 1;
        }
    }

    /// Why the original request may not be sent again, if it may not.
    fn blocked<T: Transport>(
        &self,
        transport: &T,
        report: &ConflictReport,
        deadline: Instant,
    ) -> Option<Outcome> {
        if !transport.can_resend() {
            Some(Outcome::NotRetryable)
        } else if report.attempts >= self.policy.max_attempts {
            Some(Outcome::Exhausted)
        } else if Instant::now() >= deadline {
            Some(Outcome::DeadlineExceeded)
        } else {
            None
        }
    }
}

/// Records the report, if any, on the current span and pairs it with the response.
fn finish<R>(response: R, report: Option<ConflictReport>) -> Answer<R> {
    if let Some(report) = &report {
        record(&tracing::Span::current(), report);
    }
    (response, report.map(Box::new))
}

fn record(span: &tracing::Span, report: &ConflictReport) {
    span.record("kind", report.kind.as_str());
    span.record("code", report.code.as_deref().unwrap_or(""));
    span.record("attempts", report.attempts);
    span.record("polls", report.polls);
    span.record("waited_ms", report.waited.as_millis() as u64);
    span.record("outcome", tracing::field::debug(report.outcome));
}
