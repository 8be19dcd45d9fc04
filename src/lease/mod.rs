//! Single writer per resource: leases.
//!
//! Waiting out a 409 fixes one conflict; not causing it fixes all of them. Before a write, the
//! engine takes a lease on the resource's key (and on any parent key the policy names — a subnet
//! write also takes its virtual network), so writers to one resource go one at a time, in one
//! process ([`MemoryLeases`]) or across processes and machines (`RedisLeases`, `BlobLeases`).
//!
//! Every lease carries a **fencing token** that grows strictly per key, so a holder that was
//! paused past its TTL can be told apart from the one that replaced it. Keys are always acquired
//! sorted and de-duplicated ([`acquire_all`]), so two writers needing overlapping key sets cannot
//! deadlock. Dropping a [`Lease`] releases it — also when the request future holding it is
//! cancelled.
//!
//! A remote lease also carries its [`Validity`]: until when it is known held (the moment its last
//! successful renewal was sent, plus its TTL), or that a renewal found it taken. [`Lease::check`]
//! reads it, and the engine checks before every request it sends under the lease, so a writer
//! that lost its lease stops instead of writing alongside the next holder. An in-process lease
//! cannot expire while it is held and has nothing to check.
//!
//! A store also remembers whether the last holder left the resource **in transition** (a 201/202,
//! or a non-terminal `provisioningState`), so that the next holder waits for the resource to
//! converge before writing instead of eating the 409.

#[cfg(feature = "azure-blob")]
mod blob;
mod estimate;
mod memory;
#[cfg(feature = "redis")]
mod redis;
#[cfg(any(feature = "redis", feature = "azure-blob"))]
mod remote;
#[cfg(feature = "azure-blob")]
mod sas;

use std::{
    fmt,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio::time::Instant;

// Documented at the crate's root, the one path the docs use (`reqwest_conflict::RedisLeases`).
#[cfg(feature = "redis")]
#[doc(hidden)]
pub use self::redis::RedisLeases;
#[cfg(feature = "azure-blob")]
#[doc(hidden)]
pub use blob::BlobLeases;
pub(crate) use estimate::ESTIMATE_KEPT;
pub use estimate::{ParseEstimateError, TransitionEstimate};
pub use memory::MemoryLeases;
#[cfg(feature = "azure-blob")]
pub use sas::dev_sas_container_url;

use crate::{Error, shared::BoxFuture};

/// Where leases live. Implementations: [`MemoryLeases`] (default, one process), `RedisLeases`
/// (feature `redis`), `BlobLeases` (feature `azure-blob`).
///
/// A middleware uses its own [`MemoryLeases`] unless given a store; give the same store to every
/// client whose writers must take turns:
///
/// ```
/// use std::sync::Arc;
/// use reqwest_conflict::{ConflictMiddleware, ConflictPolicy, LeaseStore, MemoryLeases};
///
/// let store: Arc<dyn LeaseStore> = Arc::new(MemoryLeases::new());
/// let a = ConflictMiddleware::new(ConflictPolicy::azure_arm()).with_shared_leases(store.clone());
/// let b = ConflictMiddleware::new(ConflictPolicy::azure_arm()).with_shared_leases(store);
/// ```
pub trait LeaseStore: Send + Sync + fmt::Debug + 'static {
    /// Waits until `key` is free, at most `wait`, then holds it for `ttl`, renewed in the
    /// background while the returned [`Lease`] lives. Fails with [`Error::LeaseTimeout`] when
    /// `wait` runs out, [`Error::LeaseBackend`] when the store cannot be reached.
    fn acquire<'a>(
        &'a self,
        key: &'a str,
        ttl: Duration,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Lease, Error>>;

    /// Records, under `lease`, whether the resource was left in transition.
    fn set_transitioning<'a>(
        &'a self,
        lease: &'a Lease,
        transitioning: bool,
    ) -> BoxFuture<'a, Result<(), Error>>;

    /// Whether the previous holder of `lease`'s key left the resource in transition.
    fn is_transitioning<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<bool, Error>>;

    /// What the holders of `key`, in any process using this store, last learned of how long its
    /// transitions take; `None` when nothing is known. Read by a writer about to time its polls
    /// of its own write's operation (`lro: settle`), so that a process's first write to a
    /// resource need not find the end on the policy's schedule when another process already
    /// knows when to look. A store that knows how long ago the estimate was shared says so with
    /// [`TransitionEstimate::with_age`], so that it is forgotten when it would have been.
    ///
    /// Advisory, hence keyed by `key` rather than fenced by a [`Lease`]: a store that keeps
    /// nothing (the default), does not answer, or answers something stale only costs polls.
    /// `RedisLeases` keeps them (`{prefix}estimate:{key}`, forgotten after 15 minutes without
    /// news); `MemoryLeases` and `BlobLeases` keep none (each middleware keeps its own).
    fn transition_estimate<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Option<TransitionEstimate>> {
        let _ = key;
        Box::pin(async { None })
    }

    /// Shares what this process learned of `key`'s transitions (see
    /// [`transition_estimate`](Self::transition_estimate)). The default keeps nothing.
    fn share_transition_estimate<'a>(
        &'a self,
        key: &'a str,
        estimate: TransitionEstimate,
    ) -> BoxFuture<'a, ()> {
        let _ = (key, estimate);
        Box::pin(async {})
    }
}

/// A held lease. [`release`](Lease::release) gives it back and waits until the store has it;
/// dropping it releases too, without waiting (in the background for remote stores — which is
/// what happens when the future holding it is cancelled).
pub struct Lease {
    key: Arc<str>,
    token: u64,
    /// Whether the previous holder left the key in transition, when the store knew at once.
    transitioning: Option<bool>,
    /// Until when a lease that expires unless renewed is known held; `None` for a lease that
    /// cannot expire while held (in-process stores).
    validity: Option<Validity>,
    release: Release,
}

/// How a store gets a lease back. The closures sit in a mutex only so that `&Lease` can be held
/// across awaits (`Lease: Sync`); each is taken once, on release or drop.
enum Release {
    /// Done at once (in-process stores).
    Now(Mutex<Box<dyn FnOnce() + Send>>),
    /// A round trip to the store; dropping the lease spawns it.
    Later(Mutex<Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>>),
    /// Released already.
    Done,
}

impl Lease {
    /// A lease on `key` with fencing `token`; `release` runs once, when the lease is released or
    /// dropped. For in-process store implementations.
    ///
    /// ```
    /// use std::sync::{Arc, atomic::{AtomicBool, Ordering}};
    /// use reqwest_conflict::Lease;
    ///
    /// let released = Arc::new(AtomicBool::new(false));
    /// let flag = released.clone();
    /// let lease = Lease::new("/subscriptions/s/resourcegroups/g", 7, move || flag.store(true, Ordering::SeqCst));
    /// assert_eq!((lease.key(), lease.token()), ("/subscriptions/s/resourcegroups/g", 7));
    /// drop(lease);
    /// assert!(released.load(Ordering::SeqCst));
    /// ```
    pub fn new(
        key: impl Into<Arc<str>>,
        token: u64,
        release: impl FnOnce() + Send + 'static,
    ) -> Self {
        Self::with(
            key.into(),
            token,
            Release::Now(Mutex::new(Box::new(release))),
        )
    }

    /// A lease whose release is a round trip to a remote store: [`release`](Self::release)
    /// awaits it; a drop spawns it on the current Tokio runtime (or, with none, leaves the lease
    /// to expire). For remote store implementations.
    pub fn new_remote(
        key: impl Into<Arc<str>>,
        token: u64,
        release: impl FnOnce() -> BoxFuture<'static, ()> + Send + 'static,
    ) -> Self {
        Self::with(
            key.into(),
            token,
            Release::Later(Mutex::new(Box::new(release))),
        )
    }

    fn with(key: Arc<str>, token: u64, release: Release) -> Self {
        Self {
            key,
            token,
            transitioning: None,
            validity: None,
            release,
        }
    }

    /// The key held.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The fencing token: strictly greater than any earlier holder's token for this key.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// Records what the store saw of the transitioning flag while granting the lease, so that
    /// [`transitioning`](Self::transitioning) can answer without asking it again. For store
    /// implementations.
    pub fn with_transitioning(mut self, transitioning: bool) -> Self {
        self.transitioning = Some(transitioning);
        self
    }

    /// Whether the previous holder left the resource in transition, if the store said so when
    /// granting the lease; `None` means ask [`LeaseStore::is_transitioning`].
    pub fn transitioning(&self) -> Option<bool> {
        self.transitioning
    }

    /// Ties the lease to the [`Validity`] its store's renewals keep, so that
    /// [`check`](Self::check) can tell when it is lost. For remote store implementations.
    pub fn with_validity(mut self, validity: Validity) -> Self {
        self.validity = Some(validity);
        self
    }

    /// The lease's [`Validity`], if it can expire while held.
    pub fn validity(&self) -> Option<&Validity> {
        self.validity.as_ref()
    }

    /// Whether the lease is still known held: fails with [`Error::LeaseLost`] once its validity
    /// passed without a renewal, or a renewal found the key taken. Nothing is sent to the store;
    /// a lease that cannot expire while held always passes.
    pub fn check(&self) -> Result<(), Error> {
        match &self.validity {
            None => Ok(()),
            Some(validity) => validity.check(&self.key, self.token).map(drop),
        }
    }

    /// Gives the lease back and waits until the store has it, so the next holder (perhaps in
    /// another process) can go at once — also when this process exits right after. An
    /// in-process lease is released by the call itself; the future then has nothing to wait for.
    pub fn release(mut self) -> impl Future<Output = ()> + Send + 'static {
        let round_trip = self.give_back();
        async move {
            if let Some(round_trip) = round_trip {
                round_trip.await;
            }
        }
    }

    /// Gives the lease back: an in-process one at once, a remote one by the round trip returned.
    fn give_back(&mut self) -> Option<BoxFuture<'static, ()>> {
        match std::mem::replace(&mut self.release, Release::Done) {
            Release::Now(release) => {
                into_inner(release)();
                None
            }
            Release::Later(release) => Some(into_inner(release)()),
            Release::Done => None,
        }
    }
}

/// Until when a lease that expires unless renewed is known held: shared by the [`Lease`] and the
/// task that renews it. Cloning gives another handle to the same one.
///
/// A renewal that succeeded extends it to the moment the renewal was *sent* plus the TTL: the
/// store started the TTL when it received the request, later, so the lease cannot have expired
/// there earlier (the clocks of this process and the store are assumed to run at the same rate,
/// not to agree). A renewal that found the key held by someone else ends it at once. A renewal
/// that failed (the store did not answer) changes nothing: the lease stays valid until the last
/// extension runs out, and is then taken for lost.
#[derive(Clone, Debug)]
pub struct Validity {
    until: Arc<Mutex<Option<Instant>>>,
}

impl Validity {
    /// A validity that runs until `until`.
    pub fn new(until: Instant) -> Self {
        Self {
            until: Arc::new(Mutex::new(Some(until))),
        }
    }

    /// A renewal succeeded: valid until `until` (never shortened by a renewal answered late).
    pub fn renewed(&self, until: Instant) {
        if let Some(current) = self.lock().as_mut() {
            *current = (*current).max(until);
        }
    }

    /// A renewal found the key held by someone else: lost for good.
    pub fn lost(&self) {
        *self.lock() = None;
    }

    /// Until when the lease is known held, or [`Error::LeaseLost`] for `key` and `token`.
    pub fn check(&self, key: &str, token: u64) -> Result<Instant, Error> {
        let lost = |reason| Error::LeaseLost {
            key: key.to_owned(),
            token,
            reason,
        };
        match *self.lock() {
            None => Err(lost("the store says another holder has it")),
            Some(until) if Instant::now() >= until => {
                Err(lost("its TTL passed without a successful renewal"))
            }
            Some(until) => Ok(until),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.until.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn into_inner<T>(mutex: Mutex<T>) -> T {
    mutex.into_inner().unwrap_or_else(PoisonError::into_inner)
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Without a runtime to run it on, a remote lease is left to expire.
        if let Some(round_trip) = self.give_back()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(round_trip);
        }
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("key", &self.key)
            .field("token", &self.token)
            .finish()
    }
}

/// Acquires every key in `keys` — sorted and de-duplicated first, so that writers needing
/// overlapping sets cannot deadlock — sharing one `wait` budget. On failure, the leases already
/// taken are released (dropped) before the error returns.
pub async fn acquire_all(
    store: &dyn LeaseStore,
    keys: &[impl AsRef<str>],
    ttl: Duration,
    wait: Duration,
) -> Result<Vec<Lease>, Error> {
    // One key (the common case) needs no ordering.
    if let [key] = keys {
        return Ok(vec![store.acquire(key.as_ref(), ttl, wait).await?]);
    }
    let mut sorted: Vec<&str> = keys.iter().map(AsRef::as_ref).collect();
    sorted.sort_unstable();
    sorted.dedup();
    // `wait` may be huge (`Duration::MAX`): an unrepresentable deadline means no deadline.
    let deadline = tokio::time::Instant::now().checked_add(wait);
    let mut held = Vec::with_capacity(sorted.len());
    for key in sorted {
        let left = deadline.map_or(wait, |d| {
            d.saturating_duration_since(tokio::time::Instant::now())
        });
        held.push(store.acquire(key, ttl, left).await?);
    }
    Ok(held)
}
