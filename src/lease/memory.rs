//! In-process leases: one FIFO-fair async mutex per key, in a sharded map that forgets idle keys.
//!
//! Why it looks like this:
//!
//! - **Sharded, not global.** Every acquire and release touches the key map, so one map behind one
//!   lock would make unrelated resources contend. The map is split into [`SHARDS`] independent
//!   `std::sync::Mutex<HashTable>`s chosen by the key's hash, and a shard lock is held only for a
//!   lookup, insert or remove — never across an `.await`. (A concurrent-map crate would do the
//!   same job; a few lines over `hashbrown` make the idle-key bookkeeping, which needs "remove
//!   only if nobody uses it" atomically, explicit.)
//! - **Cheap on the happy path.** This store is on every write's path, so a key is hashed once
//!   per acquire (with `foldhash`, seeded per store), and a holder reaches its key's state through
//!   a shared [`Slot`] rather than by looking the key up again: an uncontended acquire and release
//!   of a known key allocates nothing but the boxed future the trait returns.
//! - **Fair.** Each key owns a one-permit `tokio::sync::Semaphore`, whose waiters are served in
//!   arrival order, so a steady stream of writers to a hot resource cannot starve an early one.
//! - **Bounded.** A key's entry counts its *users* — holders and waiters, including `acquire`
//!   futures still waiting. The last user to leave removes the entry, so the map holds only keys
//!   in use, however many distinct keys pass through. The one exception is a key whose
//!   transitioning flag is set: the flag must outlive its holder (that is its purpose), so the
//!   entry stays until a later holder clears the flag, the flag expires (30 minutes: no transition
//!   lasts longer, and a forgotten flag costs at most a 409 the engine resolves), or the shard
//!   holds more than 1,024 idle keys, when the oldest flags go first.
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
    time::{Duration, Instant},
};

use hashbrown::{DefaultHashBuilder, HashTable};
use tokio::sync::Semaphore;

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
type Shard = Mutex<HashTable<Entry>>;

struct Inner {
    shards: Box<[Shard]>,
    hasher: DefaultHashBuilder,
    last_token: AtomicU64,
    /// What the transitioning flags count from.
    epoch: Instant,
}

/// A key in use (or left in transition), in its shard's table.
struct Entry {
    hash: u64,
    slot: Arc<Slot>,
    /// Holders plus waiters; the entry goes when this reaches zero (unless in transition).
    users: usize,
}

/// The lock and state of one key, shared by its entry and its users.
pub(super) struct Slot {
    key: Arc<str>,
    /// One permit: the holder's. FIFO-fair.
    permit: Semaphore,
    /// When the last holder left the resource in transition, as nanoseconds since the store's
    /// epoch plus one; zero when it did not.
    transitioning: AtomicU64,
}

impl Slot {
    /// Whether the flag is set and still worth honouring: no ARM transition outlives
    /// [`FLAG_TTL`], and forgetting a flag costs at most a 409 the engine then resolves.
    fn in_transition(&self, epoch: Instant) -> bool {
        match self.transitioning.load(Ordering::Relaxed) {
            0 => false,
            since => {
                let now = epoch.elapsed().as_nanos();
                now.saturating_sub(u128::from(since - 1)) < FLAG_TTL.as_nanos()
            }
        }
    }

    fn set_transitioning(&self, epoch: Instant, transitioning: bool) {
        let value = if transitioning {
            // Saturates after 584 years of uptime.
            u64::try_from(epoch.elapsed().as_nanos())
                .unwrap_or(u64::MAX - 1)
                .saturating_add(1)
        } else {
            0
        };
        self.transitioning.store(value, Ordering::Relaxed);
    }
}

/// How long a transitioning flag is honoured.
const FLAG_TTL: Duration = Duration::from_secs(30 * 60);

/// Idle keys kept per shard for their flags; past this the oldest flags are forgotten, so memory
/// stays bounded (64 × 1,024 keys) however many resources are written once and never again.
const MAX_IDLE_PER_SHARD: usize = 1024;

/// Forgets idle keys whose flags expired, then the oldest flagged ones, until the shard holds
/// three quarters of [`MAX_IDLE_PER_SHARD`] keys (keys in use are never touched) — leaving room,
/// so the sort below runs once per few hundred writes, not on every one.
fn prune(table: &mut HashTable<Entry>, epoch: Instant) {
    const TARGET: usize = MAX_IDLE_PER_SHARD * 3 / 4;
    table.retain(|e| e.users > 0 || e.slot.in_transition(epoch));
    if table.len() <= TARGET {
        return;
    }
    let mut idle: Vec<(u64, u64, *const Slot)> = table
        .iter()
        .filter(|e| e.users == 0)
        .map(|e| {
            let since = e.slot.transitioning.load(Ordering::Relaxed);
            (since, e.hash, Arc::as_ptr(&e.slot))
        })
        .collect();
    idle.sort_unstable();
    let excess = table.len() - TARGET;
    for (_, hash, slot) in idle.into_iter().take(excess) {
        if let Ok(entry) = table.find_entry(hash, |e| std::ptr::eq(Arc::as_ptr(&e.slot), slot)) {
            entry.remove();
        }
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
        self.inner.shards.iter().map(|s| lock(s).len()).sum()
    }

    /// Whether [`len`](Self::len) is zero.
    pub fn is_empty(&self) -> bool {
        self.inner.shards.iter().all(|s| lock(s).is_empty())
    }

    /// The slot behind `lease` when this store granted it and it is still held.
    fn slot_of<'l>(&self, lease: &'l Lease) -> Result<&'l Slot, Error> {
        match lease.held() {
            Some(held) if Arc::ptr_eq(&held.0.store, &self.inner) => Ok(&held.0.slot),
            _ => Err(Error::LeaseBackend {
                key: lease.key().to_owned(),
                message: "the lease is not held in this store".to_owned(),
            }),
        }
    }
}

impl Inner {
    /// The shard of a key's hash. The table uses the hash's low bits (bucket) and top seven
    /// (tag), so the shard takes bits from the middle: keys in one shard still spread.
    fn shard(&self, hash: u64) -> &Shard {
        &self.shards[(hash >> 40) as usize % SHARDS]
    }

    /// Registers one more user of `key`: a waiter, until it holds the key.
    fn enter(self: &Arc<Self>, key: &str) -> User {
        let hash = self.hasher.hash_one(key);
        let mut table = lock(self.shard(hash));
        let slot = match table.find_mut(hash, |e| *e.slot.key == *key) {
            Some(entry) => {
                entry.users += 1;
                entry.slot.clone()
            }
            None => {
                let slot = Arc::new(Slot {
                    key: Arc::from(key),
                    permit: Semaphore::new(1),
                    transitioning: AtomicU64::new(0),
                });
                table.insert_unique(
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
        drop(table);
        User {
            store: self.clone(),
            slot,
            hash,
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
        let epoch = self.store.epoch;
        let mut table = lock(self.store.shard(self.hash));
        let Ok(mut entry) = table.find_entry(self.hash, |e| Arc::ptr_eq(&e.slot, &self.slot))
        else {
            return;
        };
        let e = entry.get_mut();
        e.users -= 1;
        if e.users > 0 {
            return;
        }
        if !self.slot.in_transition(epoch) {
            entry.remove();
        } else if table.len() > MAX_IDLE_PER_SHARD {
            prune(&mut table, epoch);
        }
    }
}

/// A held key: dropping it hands the permit to the next waiter, then leaves.
pub(super) struct Held(User);

impl Held {
    pub(super) fn key(&self) -> &Arc<str> {
        &self.0.slot.key
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

impl LeaseStore for MemoryLeases {
    fn acquire<'a>(
        &'a self,
        key: &'a str,
        _ttl: Duration,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Lease, Error>> {
        Box::pin(async move {
            // `user` lives in this future: if the future is dropped while waiting, the waiter
            // leaves the queue and the key's user count drops with it.
            let user = self.inner.enter(key);
            // Uncontended, take it at once: no timer to arm. (A free permit is never one a
            // queued waiter was promised, so this does not jump the FIFO queue.)
            if let Ok(permit) = user.slot.permit.try_acquire() {
                permit.forget();
            } else {
                let started = tokio::time::Instant::now();
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
            let transitioning = user.slot.in_transition(self.inner.epoch);
            Ok(Lease::memory(Held(user), token).with_transitioning(transitioning))
        })
    }

    fn set_transitioning<'a>(
        &'a self,
        lease: &'a Lease,
        transitioning: bool,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let slot = self.slot_of(lease)?;
            slot.set_transitioning(self.inner.epoch, transitioning);
            Ok(())
        })
    }

    fn is_transitioning<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move { Ok(self.slot_of(lease)?.in_transition(self.inner.epoch)) })
    }
}

impl fmt::Debug for MemoryLeases {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryLeases")
            .field("keys", &self.len())
            .finish_non_exhaustive()
    }
}
