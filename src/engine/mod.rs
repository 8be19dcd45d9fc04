//! The mechanism: how a conflict is resolved, whatever the HTTP stack.
//!
//! An adapter (reqwest-middleware, tower, azure_core) hands every write to [`Engine::execute`]
//! with a [`Transport`]: five functions that translate the engine's few needs into the stack's
//! types. The engine takes the write's leases, waits for a transition the previous writer left,
//! sends the request, and — only when the answer is a 409 or 412 — classifies it, [`decide`]s
//! what to do from the policy, and carries that out: wait for a terminal state and retry,
//! re-fetch a stale ETag, run a prerequisite transition. Every wait has the request's deadline,
//! every loop the policy's attempt budget.
//!
//! The rooms: `transport` (the trait and the request as the engine sees it), `decide` (pure: the
//! next step), `run` (one write: leases, state guard, journal), `resolve` (the loop that carries
//! out the steps), `converge` (polling), `precondition`, `prerequisite`, `estimate` (when a
//! transition is likely over), `fence_etag` (a leased write fenced by the resource's ETag),
//! `state` (reading a state out of a body). This file holds what every
//! request through one adapter shares.

mod converge;
mod decide;
mod diagnose;
mod estimate;
mod fence_etag;
mod lro;
mod precondition;
mod prerequisite;
mod resolve;
mod run;
pub(crate) mod state;
mod transport;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};

pub(crate) use crate::shared::AZURE_ASYNC_OPERATION;
pub(crate) use transport::{
    Answered, Changes, Exchange, Failure, Fetched, Original, Overrides, Peeked, Redirects, Replay,
    Transport,
};

use crate::{
    Classifier, ConflictPolicy, ConflictStats, Error, Journal, LeaseStore, MemoryLeases,
    PreconditionStrategy, ResourceId,
};
use precondition::Remembered;

/// The policy compiled once, with the lease store, journal and counters: shared by every request
/// through one adapter (and its clones).
#[derive(Clone, Debug)]
pub(crate) struct Engine {
    policies: Arc<Policies>,
    leases: Arc<dyn LeaseStore>,
    journal: Journal,
    /// Successful representations, as bases of three-way merges, when the policy merges.
    remembered: Option<Arc<Remembered>>,
    /// Per resource: how long its transitions take, and the operation this engine's last write
    /// to it left running, to time and aim the polls of the state guard and of a settle.
    estimates: Arc<estimate::Estimates>,
    /// Whether the lease store is this engine's own: then no write to a resource it leases can
    /// come from anywhere else, and the operation its own last write left is the one to wait on.
    own_leases: bool,
    stats: ConflictStats,
    /// Set once the stack followed a redirect to another origin: no request of our own since.
    redirects: Redirects,
}

/// The policy, compiled: the classifier made from its rules, and each overridden resource type's
/// policy made in advance.
#[derive(Debug)]
struct Policies {
    base: Arc<ConflictPolicy>,
    /// By resource type, as the policy spells it (compared ignoring ASCII case).
    by_type: Vec<(String, Arc<ConflictPolicy>)>,
    classifier: Classifier,
}

/// Which way a request goes through an adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// A read, passed straight through.
    Pass,
    /// A read whose answer may serve as a merge base: passed through, and remembered.
    Remember,
    /// A write: through the engine.
    Write,
}

impl Engine {
    /// Compiles `policy`. Values out of bounds are clamped (see `ConflictPolicy::clamped`), so a
    /// hand-built policy can never make the engine spin or skip its first attempt.
    pub(crate) fn new(policy: ConflictPolicy) -> Self {
        let base = policy.clamped();
        let by_type = base
            .resource_types
            .keys()
            // In bounds already: `clamped` clamps each override as applied to the base.
            .map(|t| (t.clone(), Arc::new(base.for_resource_type(Some(t)))))
            .collect();
        let merges = base.precondition == PreconditionStrategy::Merge
            || base
                .resource_types
                .values()
                .any(|o| o.precondition == Some(PreconditionStrategy::Merge));
        let remembered = if merges {
            Remembered::new(base.remember_representations)
        } else {
            None
        };
        let classifier = Classifier::with_rules(base.rules.iter().cloned());
        Self {
            policies: Arc::new(Policies {
                base: Arc::new(base),
                by_type,
                classifier,
            }),
            leases: Arc::new(MemoryLeases::new()),
            journal: Journal::default(),
            remembered,
            estimates: Arc::default(),
            own_leases: true,
            stats: ConflictStats::default(),
            redirects: Redirects::default(),
        }
    }

    /// The same engine with another lease store.
    pub(crate) fn with_leases(mut self, store: Arc<dyn LeaseStore>) -> Self {
        self.leases = store;
        self.own_leases = false;
        self
    }

    /// The same engine with another journal.
    pub(crate) fn with_journal(mut self, journal: Journal) -> Self {
        self.journal = journal;
        self
    }

    /// The policy in force (after clamping).
    pub(crate) fn policy(&self) -> &ConflictPolicy {
        &self.policies.base
    }

    /// The journal of writes.
    pub(crate) fn journal(&self) -> &Journal {
        &self.journal
    }

    /// The conflict counts.
    pub(crate) fn stats(&self) -> &ConflictStats {
        &self.stats
    }

    /// Which way a request with `method` goes.
    pub(crate) fn route(&self, method: &Method) -> Route {
        if !is_safe(method) {
            Route::Write
        } else if *method == Method::GET && self.remembered.is_some() {
            Route::Remember
        } else {
            Route::Pass
        }
    }

    /// The policy for one request: its resource type's, then its own override on top. A
    /// per-request override is held to the same bounds as a policy file, so it fails the request
    /// rather than set what `from_json` would refuse.
    fn policy_for(&self, original: &Original<'_>) -> Result<Arc<ConflictPolicy>, Error> {
        let typed = (self.policies.by_type.iter())
            .find(|(t, _)| original.resource.is_type(t))
            .map(|(_, policy)| policy);
        let policy = typed.unwrap_or(&self.policies.base);
        match &original.overrides.policy {
            None => Ok(policy.clone()),
            Some(o) => policy.with_override(o).map(Arc::new),
        }
    }

    /// Where an adapter records that its stack followed a redirect to another origin.
    pub(crate) fn redirects(&self) -> &Redirects {
        &self.redirects
    }

    /// Runs one write: under its leases (when the policy says so), after the previous holder's
    /// transition converged, resolving any 409/412 it meets.
    pub(crate) async fn execute<T: Transport>(
        &self,
        transport: &mut T,
        original: &Original<'_>,
    ) -> Result<Answered<T::Response>, Failure<T::Error>> {
        let policy = self.policy_for(original).map_err(Failure::Conflict)?;
        run::Run::new(self, policy, original).write(transport).await
    }

    /// Where an adapter should copy a successful answer's body as it streams to the caller, to
    /// serve as a later merge base: `Some` when the policy merges and the answer is a success with
    /// an ETag. The adapter tees the body (`body::Tee`) into the sink.
    pub(crate) fn merge_base_sink(
        &self,
        resource: &ResourceId,
        status: StatusCode,
        headers: &HeaderMap,
    ) -> Option<(usize, impl FnOnce(Bytes) + Send + Sync + 'static)> {
        let remembered = self.remembered.clone()?;
        let etag = headers.get(http::header::ETAG)?.to_str().ok()?.to_owned();
        if !status.is_success() {
            return None;
        }
        let key = resource.key().to_owned();
        let sink = move |bytes| remembered.put(&key, &etag, bytes);
        Some((self.policy().max_fetch_body, sink))
    }
}

/// Whether a method only reads: such requests are neither leased nor resolved.
pub(crate) fn is_safe(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// Whether an answer with this status may be a conflict this crate resolves: a 409 or 412, or a
/// 429, which some services send for a conflict (Network's `RetryableError`,
/// `RetryableErrorDueToAnotherOperation`). Whether a 429 is one is the classifier's call
/// ([`resolvable`]).
pub(crate) fn is_conflict(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::CONFLICT | StatusCode::PRECONDITION_FAILED | StatusCode::TOO_MANY_REQUESTS
    )
}

/// Whether a conflict-status answer, classified, is one to resolve: every 409 and 412, and a 429
/// only when it reports a state the resource is in (not throttling, which belongs to the
/// caller's retry middleware).
pub(crate) fn resolvable(classification: &crate::Classification) -> bool {
    classification.status != StatusCode::TOO_MANY_REQUESTS.as_u16()
        || matches!(
            classification.kind,
            crate::ConflictKind::StateConflict | crate::ConflictKind::PrerequisiteRequired
        )
}
