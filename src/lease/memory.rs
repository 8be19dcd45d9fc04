//! In-process leases: a FIFO-fair lock per key, in a sharded table that forgets idle keys.
//!
//! Why it looks like this:
//!
//! - **Sharded, not global.** Every acquire and release touches the key table, so one table behind
//!   one lock would make unrelated resources contend. The table is split into [`SHARDS`]
//!   independent `std::sync::Mutex`es chosen by the key's hash, and a shard lock is held only for
//!   a lookup, insert or remove — never across an `.await`. (A concurrent-map crate would do the
//!   same job; a few lines over `hashbrown` make the idle-key bookkeeping, which needs "remove
//!   only if nobody uses it" atomically, explicit.)
//! - **Nothing allocated when uncontended.** This store is on every write's path. A key's state
//!   lives inline in its table entry (the key itself is shared with the caller when it has it as
//!   an `Arc`), the key is hashed once per acquire (`foldhash`, seeded per store), and the holder
//!   finds its entry again by that hash. Only a writer that has to wait allocates: a one-shot
//!   channel through which the lease is handed to it.
//! - **Fair.** Waiters queue in arrival order, and a release hands the lease straight to the first
//!   one still waiting (a waiter that gave up is skipped), so a steady stream of writers to a hot
//!   resource cannot starve an early one, and a newcomer never overtakes the queue.
//! - **Bounded.** A key's entry lives while the key is held or waited for. A transitioning flag
//!   must outlive its holder (that is its purpose), so when a key is left in transition its entry
//!   stays, without its key, as a flag matched by the key's 64-bit hash (two keys sharing a hash
//!   would cost at most one needless poll). A flag is dropped when a later holder clears it, when
//!   it expires (30 minutes: no transition lasts longer, and a forgotten flag costs at most a 409
//!   the engine resolves), or when its shard holds more than 1,024 of them, oldest first.
//! - **No TTL.** Within one process a holder cannot vanish without its [`Lease`] being dropped —
//!   dropping a task or a future drops the lease it owns — so the `ttl` argument is ignored and
//!   nothing needs renewing.
//! - **Fencing tokens** come from one store-wide counter: strictly increasing per key, also when a
//!   key's entry was removed and created again.

use std::{
    collections::VecDeque,
    fmt,
    hash::BuildHasher,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use hashbrown::{DefaultHashBuilder, HashTable};
use tokio::{sync::oneshot, time::Instant};

use super::{Lease, LeaseStore};
use crate::{Error, engine::BoxFuture};

/// How many independent pieces the key table is split into.
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

struct Inner {
    shards: Box<[Mutex<Shard>]>,
    hasher: DefaultHashBuilder,
    last_token: AtomicU64,
    /// What the transitioning flags count from.
    epoch: Instant,
}

/// One piece of the key table.
#[derive(Default)]
struct Shard {
    entries: HashTable<Entry>,
    /// Entries kept only for their flag (no key).
    flags: usize,
}

/// A key in use, or an idle key's transitioning flag.
struct Entry {
    hash: u64,
    /// The key while it is held; `None` for an idle key kept for its flag, matched by hash.
    key: Option<Arc<str>>,
    /// Writers waiting for the key, in arrival order. One that gave up leaves a closed sender,
    /// skipped when the key is handed over.
    // Boxed: most keys never have a waiter, and an unboxed queue would add 24 bytes to every
    // entry, idle flags included.
    #[allow(clippy::box_collection)]
    waiters: Option<Box<VecDeque<oneshot::Sender<Held>>>>,
    /// The transitioning flag, as [`Inner::stamp`]; zero when not set.
    flag: u64,
}

/// How long a transitioning flag is honoured.
const FLAG_TTL: Duration = Duration::from_secs(30 * 60);

/// Idle flags kept per shard; past this the oldest are forgotten, so memory stays bounded
/// (64 × 1,024 entries of a few dozen bytes) however many resources are written once and never
/// again.
const MAX_FLAGS_PER_SHARD: usize = 1024;

/// Past this many queued senders, the ones whose waiter gave up are swept out, so a key held for
/// long while waiters keep timing out does not grow its queue without bound.
const SWEEP_WAITERS: usize = 64;

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

    /// The shard of a key's hash. The table uses the hash's low bits (bucket) and top seven
    /// (tag), so the shard takes bits from the middle: keys in one shard still spread.
    fn shard(&self, hash: u64) -> MutexGuard<'_, Shard> {
        lock(&self.shards[(hash >> 40) as usize % SHARDS])
    }
}

impl Shard {
    /// Forgets expired flags, then the oldest, down to three quarters of
    /// [`MAX_FLAGS_PER_SHARD`] — leaving room, so this runs once per few hundred idle keys.
    fn prune(&mut self, inner: &Inner) {
        const TARGET: usize = MAX_FLAGS_PER_SHARD * 3 / 4;
        // Stamps grow with time: one clock reading finds every expired flag.
        let ttl = u64::try_from(FLAG_TTL.as_nanos()).unwrap_or(u64::MAX);
        let expired_before = inner.stamp(Instant::now()).saturating_sub(ttl);
        self.entries
            .retain(|e| e.key.is_some() || e.flag > expired_before);
        self.flags = self.entries.iter().filter(|e| e.key.is_none()).count();
        if self.flags <= TARGET {
            return;
        }
        let mut stamps: Vec<u64> = self
            .entries
            .iter()
            .filter(|e| e.key.is_none())
            .map(|e| e.flag)
            .collect();
        let excess = self.flags - TARGET;
        let (_, &mut cutoff, _) = stamps.select_nth_unstable(excess - 1);
        let mut removed = 0;
        self.entries.retain(|e| {
            let keep = e.key.is_some() || e.flag > cutoff || removed >= excess;
            removed += usize::from(!keep);
            keep
        });
        self.flags -= removed;
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
            .map(|s| lock(s).entries.len())
            .sum()
    }

    /// Whether [`len`](Self::len) is zero.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key `lease` holds, when this store granted it and it is still held.
    fn held<'l>(&self, lease: &'l Lease) -> Result<&'l Held, Error> {
        match lease.held() {
            Some(held) if Arc::ptr_eq(&held.store, &self.inner) => Ok(held),
            _ => Err(Error::LeaseBackend {
                key: lease.key().to_owned(),
                message: "the lease is not held in this store".to_owned(),
            }),
        }
    }

    /// [`LeaseStore::acquire`] for the engine, which has the key as an `Arc` already: the entry
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
        let inner = &self.inner;
        let hash = inner.hasher.hash_one(key);
        let queued = {
            let mut guard = inner.shard(hash);
            let shard = &mut *guard;
            let owned = || shared.map_or_else(|| Arc::from(key), Arc::clone);
            if let Some(entry) = shard
                .entries
                .find_mut(hash, |e| e.key.as_deref() == Some(key))
            {
                // Held: queue behind the holder and whoever already waits.
                let (tx, rx) = oneshot::channel();
                let waiters = entry.waiters.get_or_insert_default();
                if waiters.len() >= SWEEP_WAITERS && waiters.len().is_power_of_two() {
                    waiters.retain(|w| !w.is_closed());
                }
                waiters.push_back(tx);
                Err(rx)
            } else if let Some(entry) = shard
                .entries
                .find_mut(hash, |e| e.key.is_none() && e.hash == hash)
            {
                // An idle key left in transition: in use again, flag and all. (Matched by the
                // whole hash — the table only compares its top bits: another key sharing all 64
                // would only inherit a flag, i.e. poll once for nothing.)
                let key = owned();
                entry.key = Some(key.clone());
                shard.flags -= 1;
                Ok(Held::new(inner, hash, key, entry.flag))
            } else {
                let key = owned();
                shard.entries.insert_unique(
                    hash,
                    Entry {
                        hash,
                        key: Some(key.clone()),
                        waiters: None,
                        flag: 0,
                    },
                    |e| e.hash,
                );
                Ok(Held::new(inner, hash, key, 0))
            }
        };
        let held = match queued {
            Ok(held) => held,
            // If this future is dropped while waiting, the receiver goes with it: the key is
            // handed to the next waiter instead (and a lease sent just before is released).
            // Boxed: only a writer that waits pays for the timer.
            Err(rx) => Box::pin(handed(key, rx, wait)).await?,
        };
        let token = inner.last_token.fetch_add(1, Ordering::Relaxed) + 1;
        let transitioning = held.transition_start().is_some();
        Ok(Lease::memory(held, token).with_transitioning(transitioning))
    }
}

/// Waits at most `wait` for the key to be handed over through `rx`.
async fn handed(key: &str, rx: oneshot::Receiver<Held>, wait: Duration) -> Result<Held, Error> {
    let started = Instant::now();
    match tokio::time::timeout(wait, rx).await {
        Ok(Ok(held)) => Ok(held),
        // The entry went with its queue: never happens while a holder lives.
        Ok(Err(_)) => Err(Error::LeaseBackend {
            key: key.to_owned(),
            message: "the lease was dropped before it was handed over".to_owned(),
        }),
        Err(_) => Err(Error::LeaseTimeout {
            key: key.to_owned(),
            waited: started.elapsed(),
        }),
    }
}

/// A held key. Dropping it hands the key to the first writer still waiting, or leaves it idle:
/// forgotten, or kept as a flag when left in transition.
pub(super) struct Held {
    store: Arc<Inner>,
    hash: u64,
    key: Arc<str>,
    /// The transitioning flag: the previous holder's when granted, then this holder's; written
    /// back to the entry on release.
    flag: AtomicU64,
    /// False for a lease that came back from a waiter that was gone: dropping it does nothing,
    /// since its releaser still holds the shard and goes on to the next waiter.
    armed: bool,
}

impl Held {
    fn new(store: &Arc<Inner>, hash: u64, key: Arc<str>, flag: u64) -> Self {
        Self {
            store: store.clone(),
            hash,
            key,
            flag: AtomicU64::new(flag),
            armed: true,
        }
    }

    pub(super) fn key(&self) -> &Arc<str> {
        &self.key
    }

    /// When the resource's transition started, if it is left in transition.
    pub(super) fn transition_start(&self) -> Option<Instant> {
        self.store.live(self.flag.load(Ordering::Relaxed))
    }

    /// Records that the resource is left in a transition that started `since`, or is not.
    pub(super) fn set_transition(&self, since: Option<Instant>) {
        let stamp = since.map_or(0, |at| self.store.stamp(at));
        self.flag.store(stamp, Ordering::Relaxed);
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let store = &*self.store;
        let flag = *self.flag.get_mut();
        let mut guard = store.shard(self.hash);
        let Shard { entries, flags } = &mut *guard;
        let Ok(mut found) = entries.find_entry(self.hash, |e| {
            e.key.as_ref().is_some_and(|k| Arc::ptr_eq(k, &self.key))
        }) else {
            return;
        };
        let entry = found.get_mut();
        entry.flag = flag;
        while let Some(tx) = entry.waiters.as_mut().and_then(|w| w.pop_front()) {
            let next = Held::new(&self.store, self.hash, self.key.clone(), flag);
            match tx.send(next) {
                Ok(()) => return,
                Err(mut unwanted) => unwanted.armed = false,
            }
        }
        if store.live(flag).is_some() {
            entry.key = None;
            entry.waiters = None;
            *flags += 1;
            if *flags > MAX_FLAGS_PER_SHARD {
                guard.prune(store);
            }
        } else {
            found.remove();
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
        Box::pin(self.take(key, None, wait))
    }

    fn set_transitioning<'a>(
        &'a self,
        lease: &'a Lease,
        transitioning: bool,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            self.held(lease)?
                .set_transition(transitioning.then(Instant::now));
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
