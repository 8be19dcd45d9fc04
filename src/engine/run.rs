//! One write, from its leases to its answer.
//!
//! A [`Run`] is what a single request carries through the engine: the shared engine, the policy
//! in force for this request (its resource type's, with its own override), the request itself and
//! its deadline. The steps of the resolution (`resolve`, `converge`, `precondition`,
//! `prerequisite`) are its methods, so none of them reaches for another request's policy.

use std::{
    borrow::Cow,
    future::{Future, poll_fn},
    pin::pin,
    sync::{Arc, Mutex, PoisonError},
    task::Poll,
    time::Duration,
};

use http::{HeaderMap, StatusCode};
use tokio::time::{Instant, sleep_until};
use url::Url;

use super::{
    AZURE_ASYNC_OPERATION, Answered, Engine, Failure, Original, Transport,
    converge::{self, Polled},
    estimate::Left,
    fence_etag, is_conflict, is_safe,
    state::Source,
};
use crate::{
    ConflictPolicy, Error, Lease, Lro,
    journal::{Ending, operation_id},
    lease::{Validity, acquire_all},
};

/// One request through the engine.
pub(super) struct Run<'r> {
    pub engine: &'r Engine,
    pub policy: Arc<ConflictPolicy>,
    pub original: &'r Original<'r>,
    /// When the whole request, waits included, must be over.
    pub deadline: Instant,
    /// The held leases that can be lost while held (remote ones), checked before every request
    /// sent under them.
    fence: Fence,
    /// When the last answer to a write request (the original, a resend, a prerequisite action)
    /// came back, once the resolution sent one.
    last_answer: Mutex<Option<Instant>>,
    /// The `If-Match` the write carries when the policy fences it with the resource's ETag.
    pub(super) etag: fence_etag::Tag,
}

impl<'r> Run<'r> {
    pub(super) fn new(
        engine: &'r Engine,
        policy: Arc<ConflictPolicy>,
        original: &'r Original<'r>,
    ) -> Self {
        let deadline = Instant::now() + policy.deadline;
        Self {
            engine,
            policy,
            original,
            deadline,
            fence: Fence::default(),
            last_answer: Mutex::new(None),
            etag: fence_etag::Tag::default(),
        }
    }

    /// Takes the write's leases, waits for a transition the previous holder left, sends the
    /// request, resolves a 409/412, and records the write in the journal.
    pub(super) async fn write<T: Transport>(
        mut self,
        transport: &mut T,
    ) -> Result<Answered<T::Response>, Failure<T::Error>> {
        let leases = self.leases().await.map_err(Failure::Conflict)?;
        self.fence = Fence::of(&leases);
        let own = leases
            .iter()
            .find(|lease| lease.key() == self.original.resource.key());
        // Each lease may have been left in transition: the resource's by its previous writer,
        // the parent's (`lock_parent_of`) by a sibling's. Boxed, as the resolution below: large
        // futures that only a write after a transition (or one that meets a conflict) pays for.
        for lease in leases.iter().filter(|l| l.transitioning() != Some(false)) {
            let guard = Box::pin(self.guard(transport, lease));
            guard.await.map_err(Failure::Conflict)?;
        }
        if self.fences(!leases.is_empty()) {
            let fencing = Box::pin(self.fence_with_etag(transport));
            fencing.await.map_err(Failure::Conflict)?;
        }
        // The guard (or the ETag's read) may have taken long enough for a remote lease to be lost.
        self.fence.check().map_err(Failure::Conflict)?;

        let resource = self.original.resource.shared_key();
        let token = own.map(Lease::token);
        let entry = self
            .engine
            .journal
            .open(resource, self.original.method, token);
        let first = transport.send(self.fenced(None)).await;
        self.answered();
        let mut result = match first {
            Ok(first) if is_conflict(T::head(&first).0) => {
                Box::pin(self.resolve(transport, first)).await
            }
            Ok(first) => Ok(Answered {
                response: first,
                report: None,
            }),
            Err(error) => Err(Failure::Transport(error)),
        };
        // With `lro: settle`, the operation the answer started is followed to its end here,
        // still under the lease (and inside the journal entry).
        let arm = self.original.resource.is_arm();
        let starts_operation = |answered: &Answered<T::Response>| {
            let (status, headers) = T::head(&answered.response);
            leaves_transition(arm, status, headers)
        };
        let mut settled = false;
        if self.policy.lro == Lro::Settle {
            result = match result {
                Ok(answered) if starts_operation(&answered) => {
                    Box::pin(self.settle(transport, answered))
                        .await
                        .map(|(answered, ended)| {
                            settled = ended;
                            answered
                        })
                }
                failed => failed,
            };
        }
        if let Ok(Answered {
            report: Some(report),
            ..
        }) = &mut result
        {
            report.lease_token = token;
            report.journal_seq = Some(entry.seq());
        }
        // The transition this write left, if any, began when its answer came (`Left`, which
        // `guard` reads). A write stopped by a lost lease sent nothing after its last answer:
        // its entry ends there, so that the journal shows it overlapping the next holder only
        // if it really did.
        let mut left_in_transition = None;
        let ending = match &result {
            Ok(answered) => {
                let (status, headers) = T::head(&answered.response);
                let started = leaves_transition(arm, status, headers);
                if started && !settled {
                    left_in_transition = Some(self.operation_to_poll(headers));
                }
                Ending {
                    status: Some(status.as_u16()),
                    outcome: answered.report.as_ref().map(|r| r.outcome),
                    operation: started.then(|| operation_id(headers)).flatten(),
                }
            }
            Err(_) => Ending::default(),
        };
        let end = match &result {
            Err(Failure::Conflict(Error::LeaseLost { .. })) => self.last_answer(),
            _ => None,
        };
        let end = end.unwrap_or_else(Instant::now);
        entry.close(ending, end);

        // What the next writer's state guard waits on: every lease this write held is marked,
        // so a sibling that shares only the parent's waits too.
        if let Some(operation) = &left_in_transition {
            for lease in &leases {
                let left = Left {
                    began: end,
                    operation: operation.clone(),
                };
                self.engine.estimates.left(lease.key(), left);
                let marked = self.in_time(self.engine.leases.set_transitioning(lease, true));
                match marked.await {
                    Some(Ok(())) => {}
                    Some(Err(error)) => {
                        tracing::warn!(%error, "could not record the transition; the next writer may meet a 409");
                    }
                    None => {
                        tracing::warn!(
                            "recording the transition was cut off by the deadline; the next writer may meet a 409"
                        );
                    }
                }
            }
        }
        // Released explicitly, so a remote store has them back before the caller goes on (a
        // process that exits right after its write must not leave its lease to expire). What
        // the deadline cuts off goes on in the background.
        let release = async {
            for lease in leases {
                lease.release().await;
            }
        };
        self.in_time(release).await;
        result
    }

    /// Runs `call` to the lease store, cut off at the deadline when the store is a remote one (a
    /// store that stopped answering must not hold the caller past it). In-process stores answer
    /// at once and are not timed.
    async fn in_time<F: Future>(&self, call: F) -> Option<F::Output> {
        if self.fence.is_empty() {
            Some(call.await)
        } else {
            tokio::time::timeout_at(self.deadline, call).await.ok()
        }
    }

    /// The write's leases, when the policy takes them: the resource's, and its parent's when
    /// its type is listed (`LeasePolicy::keys_for`), taken in sorted order so writers cannot
    /// deadlock.
    async fn leases(&self) -> Result<Vec<Lease>, Error> {
        let leases = &self.policy.leases;
        if !leases.enabled || is_safe(self.original.method) {
            return Ok(Vec::new());
        }
        let (store, ttl) = (&*self.engine.leases, leases.ttl);
        let wait = self.deadline.saturating_duration_since(Instant::now());
        // The keys `LeasePolicy::keys_for` names, without copying them.
        let own = self.original.resource.key();
        match leases.parent_to_lock(&self.original.resource) {
            None => acquire_all(store, &[own], ttl, wait).await,
            Some(parent) => acquire_all(store, &[own, parent.key()], ttl, wait).await,
        }
    }

    /// Fails with [`Error::LeaseLost`] if a lease this write holds is lost: called before every
    /// request that writes under them.
    pub(super) fn still_held(&self) -> Result<(), Error> {
        self.fence.check()
    }

    /// Notes that a write request just got its answer.
    pub(super) fn answered(&self) {
        // Only remote leases are ever lost, so only their writes need the time.
        if !self.fence.is_empty() {
            *self
                .last_answer
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        }
    }

    fn last_answer(&self) -> Option<Instant> {
        *self
            .last_answer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `wait` (polls, sleeps), ending it early with [`Error::LeaseLost`] when a lease this
    /// write holds is lost meanwhile: waiting longer would only delay the error the next send
    /// would meet. A loss the store reported is noticed at the latest when the lease's last
    /// validity runs out.
    pub(super) async fn unless_lost<F: Future>(&self, wait: F) -> Result<F::Output, Error> {
        let mut wait = pin!(wait);
        loop {
            let Some(until) = self.fence.check_until()? else {
                return Ok(wait.await);
            };
            let mut expiry = pin!(sleep_until(until));
            let woke = poll_fn(|cx| match wait.as_mut().poll(cx) {
                Poll::Ready(output) => Poll::Ready(Some(output)),
                Poll::Pending => expiry.as_mut().poll(cx).map(|()| None),
            })
            .await;
            if let Some(output) = woke {
                return Ok(output);
            }
        }
    }

    /// The state guard: if the previous holder left the resource in transition, wait (polling
    /// it) until it is terminal, so this writer is not the one that eats the 409.
    ///
    /// What is polled: the operation this engine's own last write left running, when the lease
    /// store is the engine's own (nobody else can have written since); otherwise the resource.
    /// When: at the per-resource estimate's plan, else at once and then on the policy's schedule.
    /// The wait is a courtesy, never a refusal: if the deadline comes first, the write is sent
    /// anyway and the server has the last word (only a state seen [stuck](Error::Stuck), or a
    /// lost lease, ends the write unsent).
    async fn guard<T: Transport>(&self, transport: &mut T, lease: &Lease) -> Result<(), Error> {
        let leases = &self.engine.leases;
        let transitioning = match lease.transitioning() {
            Some(known) => known,
            None => {
                self.by_deadline(lease, leases.is_transitioning(lease))
                    .await?
            }
        };
        if !transitioning {
            return Ok(());
        }
        let key = lease.key();
        let estimates = &self.engine.estimates;
        let left = estimates.last_left(key).filter(|_| self.engine.own_leases);
        // The transition began when the previous write got its answer, known only when this
        // process made that write and nobody else can have written since (the store is this
        // engine's own). Otherwise the start is unknown: an estimate timed from a guess (this
        // process's last write, which another's may have followed) would put the first poll
        // late, so the guard polls at once and on the schedule, and learns nothing.
        let start = left.as_ref().map(|left| left.began);
        let (target, source) = match left.and_then(|left| left.operation) {
            Some(operation) => (operation, Source::Operation),
            None => (self.leased_url(key), Source::Resource),
        };
        let watch = converge::Watch {
            planned: estimates.plan(key, start, &self.policy.poll),
            first_delay: Some(Duration::ZERO),
            lenient: true,
            ..converge::Watch::state(target, source)
        };
        let mut seen = converge::Observations::default();
        let waiting = Instant::now();
        let polled = self
            .unless_lost(self.poll(transport, watch, &mut seen))
            .await?;
        estimates.learn(key, start, &seen.polls);
        match polled {
            Polled::Converged => {}
            Polled::TimedOut => {
                tracing::debug!(
                    waited = ?waiting.elapsed(),
                    "the previous transition was not seen to end by the deadline; sending the write anyway"
                );
                return Ok(());
            }
            stuck @ Polled::Stuck { .. } => {
                return Err(self.gave_up(stuck, seen.last, None, 0, waiting.elapsed()));
            }
        }
        self.by_deadline(lease, leases.set_transitioning(lease, false))
            .await
    }

    /// Takes what the other processes sharing the lease store learned of `key`'s transitions
    /// (in their settles), so that this process times its settle's polls as they would. Nothing
    /// to ask when the store is the engine's own: everything learned of its resources was
    /// learned here.
    pub(super) async fn adopt_estimate(&self, key: &str) {
        if !self.shares_estimates() {
            return;
        }
        let shared = self.engine.leases.transition_estimate(key);
        if let Some(Some(shared)) = self.advice(shared).await {
            self.engine.estimates.import(key, shared);
        }
    }

    /// Learns from the polls of a transition of `key` that began at `start`, exactly (this
    /// process's own write's answer), and shares what was learned with the other processes
    /// using the lease store.
    pub(super) async fn learn_and_share(
        &self,
        key: &str,
        start: Instant,
        polls: &[(Instant, bool)],
    ) {
        let estimates = &self.engine.estimates;
        if !estimates.learn(key, Some(start), polls) || !self.shares_estimates() {
            return;
        }
        if let Some(learned) = estimates.export(key) {
            let shared = self.engine.leases.share_transition_estimate(key, learned);
            self.advice(shared).await;
        }
    }

    /// Whether estimates go through the lease store: only a store shared with others can tell
    /// this engine anything new, and only writers that lease take turns with them.
    fn shares_estimates(&self) -> bool {
        !self.engine.own_leases && self.policy.leases.enabled
    }

    /// A store call for advice (an estimate), waited for no longer than the poll schedule's
    /// first delay, nor past the deadline: polls that go out later than they could cost more
    /// than the advice saves.
    async fn advice<F: Future>(&self, call: F) -> Option<F::Output> {
        let soon = Instant::now().checked_add(self.policy.poll.min_delay);
        let by = soon.map_or(self.deadline, |soon| soon.min(self.deadline));
        tokio::time::timeout_at(by, call).await.ok()
    }

    /// Where the resource a lease of this write is named after is read: the resource's own URL,
    /// or its parent's for the parent's lease.
    fn leased_url(&self, key: &str) -> Url {
        let resource = &self.original.resource;
        match self.policy.leases.parent_to_lock(resource) {
            Some(parent) if parent.key() == key => parent.fetch_url(self.original.url),
            _ => self.resource_url(),
        }
    }

    /// The key transitions of this write's resource are timed under: its parent's when writes
    /// lease the parent too (a subnet's transition is its virtual network's), else its own.
    pub(super) fn timing_key(&self) -> Cow<'_, str> {
        let resource = &self.original.resource;
        match self.policy.leases.parent_to_lock(resource) {
            Some(parent) if self.policy.leases.enabled => Cow::Owned(parent.key().to_owned()),
            _ => Cow::Borrowed(resource.key()),
        }
    }

    /// The operation an answer names (`Azure-AsyncOperation`), if the policy lets us poll it.
    pub(super) fn operation_to_poll(&self, headers: &HeaderMap) -> Option<Url> {
        headers
            .get(AZURE_ASYNC_OPERATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| Url::parse(v).ok())
            .filter(|url| self.may_poll(url))
    }

    /// A lease store call made before the write, ended by the request's deadline: a store that
    /// stops answering must not hold the write past it.
    async fn by_deadline<T>(
        &self,
        lease: &Lease,
        call: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        tokio::time::timeout_at(self.deadline, call)
            .await
            .unwrap_or_else(|_| {
                Err(Error::LeaseBackend {
                    key: lease.key().to_owned(),
                    message: "no answer by the deadline".to_owned(),
                })
            })
    }
}

/// The leases of one write that can be lost while held: each remote lease's key, token and
/// [`Validity`]. Empty for in-process leases, which cannot be lost, so checking costs them
/// nothing but a length test.
#[derive(Default)]
struct Fence {
    watched: Vec<(Arc<str>, u64, Validity)>,
}

impl Fence {
    fn of(leases: &[Lease]) -> Self {
        let watched = leases
            .iter()
            .filter_map(|lease| {
                let validity = lease.validity()?.clone();
                Some((Arc::from(lease.key()), lease.token(), validity))
            })
            .collect();
        Self { watched }
    }

    fn is_empty(&self) -> bool {
        self.watched.is_empty()
    }

    fn check(&self) -> Result<(), Error> {
        for (key, token, validity) in &self.watched {
            validity.check(key, *token)?;
        }
        Ok(())
    }

    /// Until when every lease is known held (the earliest of their validities); `None` when
    /// none can be lost.
    fn check_until(&self) -> Result<Option<Instant>, Error> {
        let mut until: Option<Instant> = None;
        for (key, token, validity) in &self.watched {
            let valid = validity.check(key, *token)?;
            until = Some(until.map_or(valid, |u| u.min(valid)));
        }
        Ok(until)
    }
}

/// Whether a successful write to an ARM resource left it in transition: ARM answers 201/202 for
/// long-running operations, or names an `Azure-AsyncOperation` to poll. Judged from the head
/// alone, so successful bodies are never read. Other APIs have no such contract (a 201 from
/// `POST /items` is just "created"), so they are never marked.
pub(super) fn leaves_transition(arm: bool, status: StatusCode, headers: &HeaderMap) -> bool {
    arm && (status == StatusCode::CREATED
        || status == StatusCode::ACCEPTED
        || (status.is_success() && headers.contains_key(AZURE_ASYNC_OPERATION)))
}
