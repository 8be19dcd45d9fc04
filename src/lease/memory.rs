//! In-process leases: one FIFO-fair async mutex per key, in a sharded map that forgets idle keys.
//!
//! Why it looks like this:
//!
//! - **Sharded, not global.** Every acquire and release touches the key map, so one map behind one
//!   lock would make unrelated resources contend. The map is split into [`SHARDS`] independent
//!   `std::sync::Mutex<HashMap>`s chosen by the key's hash, and a shard lock is held only for a
//!   lookup, insert or remove — never across an `.await`. (A concurrent-map crate would do the
//!   same job; sixty lines of std keep the default build free of another dependency and make the
//!   idle-key bookkeeping, which needs "remove only if nobody uses it" atomically, explicit.)
//! - **Fair.** Each key owns a `tokio::sync::Mutex`, whose waiters are served in arrival order,
//!   so a steady stream of writers to a hot resource cannot starve an early one.
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
    collections::HashMap,
    fmt,
    hash::BuildHasher,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

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
type Shard = Mutex<HashMap<Box<str>, Entry>>;

struct Inner {
    shards: Box<[Shard]>,
    hasher: std::collections::hash_map::RandomState,
    last_token: AtomicU64,
}

/// The state of one key in use (or left in transition).
struct Entry {
    /// The FIFO-fair lock the holders queue on.
    lock: Arc<tokio::sync::Mutex<()>>,
    /// Holders plus waiters; the entry goes when this reaches zero (unless `transitioning`).
    users: usize,
    /// The current (or last) holder's token, to tell a live lease from a stale or foreign one.
    holder: u64,
    /// When the last holder left the resource in transition, if it did.
    transitioning: Option<Instant>,
}

impl Entry {
    /// Whether the flag is set and still worth honouring: no ARM transition outlives
    /// [`FLAG_TTL`], and forgetting a flag costs at most a 409 the engine then resolves.
    fn in_transition(&self) -> bool {
        self.transitioning
            .is_some_and(|since| since.elapsed() < FLAG_TTL)
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
fn prune(map: &mut HashMap<Box<str>, Entry>) {
    const TARGET: usize = MAX_IDLE_PER_SHARD * 3 / 4;
    map.retain(|_, e| e.users > 0 || e.in_transition());
    if map.len() <= TARGET {
        return;
    }
    let mut idle: Vec<(Instant, Box<str>)> = map
        .iter()
        .filter(|(_, e)| e.users == 0)
        .filter_map(|(k, e)| Some((e.transitioning?, k.clone())))
        .collect();
    idle.sort_unstable();
    let excess = map.len() - TARGET;
    for (_, key) in idle.into_iter().take(excess) {
        map.remove(&key);
    }
}

impl Default for Inner {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: Default::default(),
            last_token: AtomicU64::new(0),
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
}

impl Inner {
    fn shard(&self, key: &str) -> usize {
        // Truncation is fine: only the low bits pick the shard.
        (self.hasher.hash_one(key) as usize) % SHARDS
    }

    /// Registers one more user of `key` and returns the key's lock. The returned [`User`] must
    /// live as long as the caller waits for or holds the lock.
    fn enter(self: &Arc<Self>, key: &str) -> (User, Arc<tokio::sync::Mutex<()>>) {
        let shard = self.shard(key);
        let mut map = lock(&self.shards[shard]);
        let lock = match map.get_mut(key) {
            Some(entry) => {
                entry.users += 1;
                entry.lock.clone()
            }
            None => {
                let lock = Arc::new(tokio::sync::Mutex::new(()));
                map.insert(
                    key.into(),
                    Entry {
                        lock: lock.clone(),
                        users: 1,
                        holder: 0,
                        transitioning: None,
                    },
                );
                lock
            }
        };
        drop(map);
        let user = User {
            store: self.clone(),
            key: key.into(),
            shard,
        };
        (user, lock)
    }

    /// Issues the next token to the user that now holds `key`'s lock.
    /// Also says whether the previous holder left the key in transition, read under the same
    /// shard lock, which saves the holder a second lookup.
    fn grant(&self, user: &User) -> (u64, bool) {
        let token = self.last_token.fetch_add(1, Ordering::Relaxed) + 1;
        let mut map = lock(&self.shards[user.shard]);
        let entry = map
            .get_mut(&*user.key)
            .expect("a key's entry lives as long as its users");
        entry.holder = token;
        (token, entry.in_transition())
    }

    /// Runs `f` on the entry of `lease`'s key, if `lease` is its current holder.
    fn with_holder<T>(&self, lease: &Lease, f: impl FnOnce(&mut Entry) -> T) -> Result<T, Error> {
        let mut map = lock(&self.shards[self.shard(lease.key())]);
        match map.get_mut(lease.key()) {
            Some(entry) if entry.holder == lease.token() => Ok(f(entry)),
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
    key: Box<str>,
    shard: usize,
}

impl Drop for User {
    fn drop(&mut self) {
        let mut map = lock(&self.store.shards[self.shard]);
        if let Some(entry) = map.get_mut(&*self.key) {
            entry.users -= 1;
            if entry.users == 0 {
                if entry.in_transition() {
                    if map.len() > MAX_IDLE_PER_SHARD {
                        prune(&mut map);
                    }
                } else {
                    map.remove(&*self.key);
                }
            }
        }
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
            let started = tokio::time::Instant::now();
            // `user` lives in this future: if the future is dropped while waiting, the waiter
            // leaves the lock's queue and the key's user count drops with it.
            let (user, lock) = self.inner.enter(key);
            // Uncontended, take it at once: no timer to arm. (A free permit is never one a
            // queued waiter was promised, so this does not jump the FIFO queue.)
            let acquired = match lock.clone().try_lock_owned() {
                Ok(guard) => Ok(guard),
                Err(_) => tokio::time::timeout(wait, lock.lock_owned()).await,
            };
            match acquired {
                Ok(guard) => {
                    let (token, transitioning) = self.inner.grant(&user);
                    let lease = Lease::new(key, token, move || {
                        // Wake the next waiter first, then leave (which may forget the key).
                        drop(guard);
                        drop(user);
                    });
                    Ok(lease.with_transitioning(transitioning))
                }
                Err(_) => Err(Error::LeaseTimeout {
                    key: key.to_owned(),
                    waited: started.elapsed(),
                }),
            }
        })
    }

    fn set_transitioning<'a>(
        &'a self,
        lease: &'a Lease,
        transitioning: bool,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            self.inner.with_holder(lease, |entry| {
                entry.transitioning = transitioning.then(Instant::now);
            })
        })
    }

    fn is_transitioning<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move { self.inner.with_holder(lease, |entry| entry.in_transition()) })
    }
}

impl fmt::Debug for MemoryLeases {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryLeases")
            .field("keys", &self.len())
            .finish_non_exhaustive()
    }
}
