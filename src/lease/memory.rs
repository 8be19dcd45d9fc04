//! In-process leases: one FIFO-fair async mutex per key, in a sharded map that forgets idle keys.
//!
//! Why it looks like this:
//!
//! - **Sharded, not global.** Every acquire and release touches the key map, so one map behind one
//!   lock would make unrelated resources contend. The map is split into [`SHARDS`] independent
//!   `std::sync::Mutex`es chosen by the key's hash, and a shard lock is held only for a lookup,
//!   insert or remove — never across an `.await`. (A concurrent-map crate would do the same job;
//!   a few lines over `hashbrown` make the idle-key bookkeeping, which needs "remove only if
//!   nobody uses it" atomically, explicit.)
//! - **Cheap on the happy path.** This store is on every write's path, so a key is hashed once
//!   per acquire (with `foldhash`, seeded per store), and a holder reaches its key's state through
//!   a shared [`Slot`] rather than by looking the key up again.
//! - **Fair.** Each key owns a one-permit `tokio::sync::Semaphore`, whose waiters are served in
//!   arrival order, so a steady stream of writers to a hot resource cannot starve an early one.
//! - **Bounded.** A key's slot counts its *users* — holders and waiters, including `acquire`
//!   futures still waiting — and the last user to leave removes it, so the map holds only keys in
//!   use, however many distinct keys pass through. A transitioning flag must outlive its holder
//!   (that is its purpose), so when the last user leaves a key in transition, its flag moves to a
//!   compact side table: the key's 64-bit hash and the transition's start, sixteen bytes, no
//!   allocation of its own. (Two keys sharing a hash would cost at most one needless poll.) A
//!   flag is dropped when a later holder clears it, when it expires (30 minutes: no transition
//!   lasts longer, and a forgotten flag costs at most a 409 the engine resolves), or when its
//!   shard holds more than 1,024 of them, oldest first.
//! - **No TTL.** Within one process a holder cannot vanish without its [`Lease`] being dropped —
//!   dropping a task or a future drops the lease it owns — so the `ttl` argument is ignored and
//!   nothing needs renewing.
//! - **Fencing tokens** come from one store-wide counter: strictly increasing per key, also when a
//!   key's entry was removed and created again.

use std::{
    fmt,
    hash::BuildHasher,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use hashbrown::{DefaultHashBuilder, HashTable};
use tokio::{sync::Semaphore, time::Instant};

use super::{Lease, LeaseStore};
use crate::{Error, engine::BoxFuture};

/// How many independent pieces the key map is split into.
const SHARDS: usize = 64;

/// In-process leases — the default [`LeaseStore`].
///
/// Writers to one key go one at a time, in the order they asked (FIFO); writers to different keys
/// never wait for each other. Cloning gives another handle to the same store. The `ttl` passed to
/// [`acquire`](LeaseStore::acquire) is ignored: in one process a lease ends exactly when its
/// [`Lease`] is dropped, including when the future or task owning it is cancelled.
///
/// ```
/// use std::time::Duration;
/// use reqwest_conflict::{LeaseStore, MemoryLeases};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), reqwest_conflict::Error> {
/// let leases = MemoryLeases::new();
/// let key = "/subscriptions/s/resourceGroups/g/providers/Microsoft.Network/virtualNetworks/v";
/// let lease = leases.acquire(key, Duration::from_secs(30), Duration::from_secs(5)).await?;
/// // ... write to the resource, passing lease.token() along as a fencing token ...
/// drop(lease); // the next writer goes
/// assert!(leases.is_empty());
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct MemoryLeases {
    inner: Arc<Inner>,
}

/// One piece of the key map.
#[derive(Default)]
struct Shard {
    /// Keys in use.
    slots: HashTable<Entry>,
    /// Idle keys left in transition: (hash, transition start as [`Inner::stamp`]).
    flags: HashTable<(u64, u64)>,
}

struct Inner {
    shards: Box<[Mutex<Shard>]>,
    hasher: DefaultHashBuilder,
    last_token: AtomicU64,
    /// What the transitioning flags count from.
    epoch: Instant,
}

/// A key in use, in its shard's table.
struct Entry {
    hash: u64,
    slot: Arc<Slot>,
    /// Holders plus waiters; the entry goes when this reaches zero.
    users: usize,
}

/// The lock and state of one key in use, shared by its entry and its users.
pub(super) struct Slot {
    key: Arc<str>,
    /// One permit: the holder's. FIFO-fair.
    permit: Semaphore,
    /// When the last holder left the resource in transition, as [`Inner::stamp`]; zero when it
    /// did not.
    transitioning: AtomicU64,
}

/// How long a transitioning flag is honoured.
const FLAG_TTL: Duration = Duration::from_secs(30 * 60);

/// Idle flags kept per shard; past this the oldest are forgotten, so memory stays bounded
/// (64 × 1,024 × 16 bytes) however many resources are written once and never again.
const MAX_FLAGS_PER_SHARD: usize = 1024;

impl Inner {
    /// `at` as a flag value: nanoseconds since the epoch, plus one (zero means "no flag").
    fn stamp(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }

    /// When a flag's transition started, if the flag is set and still worth honouring.
    fn live(&self, stamp: u64) -> Option<Instant> {
        let since = self
            .epoch
            .checked_add(Duration::from_nanos(stamp.checked_sub(1)?))?;
        (since.elapsed() < FLAG_TTL).then_some(since)
    }

    /// The shard of a key's hash. The tables use the hash's low bits (bucket) and top seven
    /// (tag), so the shard takes bits from the middle: keys in one shard still spread.
    fn shard(&self, hash: u64) -> &Mutex<Shard> {
        &self.shards[(hash >> 40) as usize % SHARDS]
    }

    /// Registers one more user of `key` (whose shared copy, if the caller has one, a new slot
    /// takes instead of copying the key): a waiter, until it holds the key.
    fn enter(self: &Arc<Self>, key: &str, shared: Option<&Arc<str>>) -> User {
        let hash = self.hasher.hash_one(key);
        let mut shard = lock(self.shard(hash));
        let slot = match shard.slots.find_mut(hash, |e| *e.slot.key == *key) {
            Some(entry) => {
                entry.users += 1;
                entry.slot.clone()
            }
            None => {
                // The key comes back into use: its flag, if any, moves into its slot.
                let flag = match shard.flags.find_entry(hash, |f| f.0 == hash) {
                    Ok(found) => found.remove().0.1,
                    Err(_) => 0,
                };
                let slot = Arc::new(Slot {
                    key: shared.map_or_else(|| Arc::from(key), Arc::clone),
                    permit: Semaphore::new(1),
                    transitioning: AtomicU64::new(flag),
                });
                shard.slots.insert_unique(
                    hash,
                    Entry {
                        hash,
                        slot: slot.clone(),
                        users: 1,
                    },
                    |e| e.hash,
                );
                slot
            }
        };
        drop(shard);
        User {
            store: self.clone(),
            slot,
            hash,
        }
    }
}

impl Shard {
    /// Forgets expired flags, then the oldest, down to three quarters of
    /// [`MAX_FLAGS_PER_SHARD`] — leaving room, so this runs once per few hundred idle keys.
    fn prune(&mut self, inner: &Inner) {
        const TARGET: usize = MAX_FLAGS_PER_SHARD * 3 / 4;
        self.flags.retain(|f| inner.live(f.1).is_some());
        if self.flags.len() <= TARGET {
            return;
        }
        let mut stamps: Vec<u64> = self.flags.iter().map(|f| f.1).collect();
        let excess = self.flags.len() - TARGET;
        let (_, &mut cutoff, _) = stamps.select_nth_unstable(excess - 1);
        let mut removed = 0;
        self.flags.retain(|f| {
            let keep = f.1 > cutoff || removed >= excess;
            removed += usize::from(!keep);
            keep
        });
    }
}

impl Default for Inner {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: DefaultHashBuilder::default(),
            last_token: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

impl MemoryLeases {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many keys the store currently tracks: held or waited for, or left in transition.
    /// Idle keys are forgotten, so this returns to zero once every lease is dropped and every
    /// transitioning flag cleared.
    pub fn len(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|s| {
                let shard = lock(s);
                shard.slots.len() + shard.flags.len()
            })
            .sum()
    }

    /// Whether [`len`](Self::len) is zero.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key `lease` holds, when this store granted it and it is still held.
    fn held<'l>(&self, lease: &'l Lease) -> Result<&'l Held, Error> {
        match lease.held() {
            Some(held) if Arc::ptr_eq(&held.0.store, &self.inner) => Ok(held),
            _ => Err(Error::LeaseBackend {
                key: lease.key().to_owned(),
                message: "the lease is not held in this store".to_owned(),
            }),
        }
    }
}

/// One holder or waiter of a key; dropping it forgets the key when it was the last user.
struct User {
    store: Arc<Inner>,
    slot: Arc<Slot>,
    hash: u64,
}

impl Drop for User {
    fn drop(&mut self) {
        let inner = &*self.store;
        let mut shard = lock(inner.shard(self.hash));
        let Ok(mut entry) = shard
            .slots
            .find_entry(self.hash, |e| Arc::ptr_eq(&e.slot, &self.slot))
        else {
            return;
        };
        let e = entry.get_mut();
        e.users -= 1;
        if e.users > 0 {
            return;
        }
        entry.remove();
        let flag = self.slot.transitioning.load(Ordering::Relaxed);
        if inner.live(flag).is_some() {
            let hash = self.hash;
            shard.flags.insert_unique(hash, (hash, flag), |f| f.0);
            if shard.flags.len() > MAX_FLAGS_PER_SHARD {
                shard.prune(inner);
            }
        }
    }
}

/// A held key: dropping it hands the permit to the next waiter, then leaves.
pub(super) struct Held(User);

impl Held {
    pub(super) fn key(&self) -> &Arc<str> {
        &self.0.slot.key
    }

    /// When the previous holder's transition started, if it left the key in transition.
    pub(super) fn transition_start(&self) -> Option<Instant> {
        self.0
            .store
            .live(self.0.slot.transitioning.load(Ordering::Relaxed))
    }

    /// Records whether the resource is left in transition, from now.
    pub(super) fn set_transitioning(&self, transitioning: bool) {
        let stamp = if transitioning {
            self.0.store.stamp(Instant::now())
        } else {
            0
        };
        self.0.slot.transitioning.store(stamp, Ordering::Relaxed);
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.slot.permit.add_permits(1);
    }
}

/// Locks a shard. A panic while a shard was locked cannot leave an entry half-updated (every
/// critical section is a few field writes), so a poisoned shard is still consistent.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl MemoryLeases {
    /// [`LeaseStore::acquire`] for the engine, which has the key as an `Arc` already: a new slot
    /// shares it, and the future is not boxed.
    pub(crate) async fn lease(&self, key: &Arc<str>, wait: Duration) -> Result<Lease, Error> {
        self.take(key, Some(key), wait).await
    }

    async fn take(
        &self,
        key: &str,
        shared: Option<&Arc<str>>,
        wait: Duration,
    ) -> Result<Lease, Error> {
        // `user` lives in this future: if the future is dropped while waiting, the waiter
        // leaves the queue and the key's user count drops with it.
        let user = self.inner.enter(key, shared);
        // Uncontended, take it at once: no timer to arm. (A free permit is never one a
        // queued waiter was promised, so this does not jump the FIFO queue.)
        if let Ok(permit) = user.slot.permit.try_acquire() {
            permit.forget();
        } else {
            let started = Instant::now();
            match tokio::time::timeout(wait, user.slot.permit.acquire()).await {
                Ok(Ok(permit)) => permit.forget(),
                Ok(Err(closed)) => {
                    // Never happens: a key's semaphore is never closed.
                    return Err(Error::LeaseBackend {
                        key: key.to_owned(),
                        message: closed.to_string(),
                    });
                }
                Err(_) => {
                    return Err(Error::LeaseTimeout {
                        key: key.to_owned(),
                        waited: started.elapsed(),
                    });
                }
            }
        }
        // From here to the lease, nothing awaits: the permit cannot be lost.
        let token = self.inner.last_token.fetch_add(1, Ordering::Relaxed) + 1;
        let held = Held(user);
        let transitioning = held.transition_start().is_some();
        Ok(Lease::memory(held, token).with_transitioning(transitioning))
    }
}

impl LeaseStore for MemoryLeases {
    fn acquire<'a>(
        &'a self,
        key: &'a str,
        _ttl: Duration,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Lease, Error>> {
        Box::pin(self.take(key, None, wait))
    }

    fn set_transitioning<'a>(
        &'a self,
        lease: &'a Lease,
        transitioning: bool,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            self.held(lease)?.set_transitioning(transitioning);
            Ok(())
        })
    }

    fn is_transitioning<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move { Ok(self.held(lease)?.transition_start().is_some()) })
    }
}

impl fmt::Debug for MemoryLeases {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryLeases")
            .field("keys", &self.len())
            .finish_non_exhaustive()
    }
}
