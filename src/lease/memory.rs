//! In-process leases: a FIFO-fair lock per key, in a table that forgets idle keys.
//!
//! Why it looks like this:
//!
//! - **One table of entries, a few locks.** A key in use has an [`Entry`]: who holds it (by
//!   fencing token), who waits for it, and whether the resource was left in transition. The table
//!   is split into [`SHARDS`] plain `Mutex<HashMap>`s picked by the key's hash, so writers to
//!   unrelated resources rarely touch the same lock, and a lock is held only for a lookup and a few
//!   field writes — never across an `.await`. Writers to different keys therefore never wait for
//!   each other.
//! - **Entries by the key's hash.** The table is keyed by the key's 64-bit hash, not the key: an
//!   entry kept for its flag then keeps no key alive, however many resources a process writes.
//!   Two keys sharing a hash (a chance of one in 2^64 per pair) would share a lease — writes to
//!   them would go one at a time, never two at once.
//! - **Leases like any store's.** A grant is a public [`Lease::new`] whose release closure hands
//!   the key back to this store; the transitioning flag is read and written only through
//!   [`LeaseStore`], which checks that the lease is the key's current holder. The engine needs
//!   nothing from this store that another in-process store could not give it.
//! - **Fair.** Waiters queue in arrival order, each with a one-shot channel, and a release hands a
//!   new lease straight to the first one still waiting (one that gave up is skipped), so a steady
//!   stream of writers to a hot resource cannot starve an early one, and a newcomer never
//!   overtakes the queue. A lease sent to a waiter that left at that very moment comes back, or is
//!   dropped with the waiter's channel; either way dropping it releases it, to the next waiter.
//! - **Bounded.** An entry lives while its key is held or waited for, and queues are swept of
//!   waiters that gave up. A transitioning flag must outlive its holder (that is its purpose), so
//!   an entry left in transition stays after its release, but not for ever: a flag is honoured for
//!   30 minutes (no transition lasts longer, and a forgotten flag costs at most a 409 the engine
//!   resolves), and each shard keeps at most [`MAX_IDLE_FLAGS`] idle ones, dropping the oldest
//!   first — memory stays bounded however many resources are written once and never again.
//! - **No TTL.** Within one process a holder cannot vanish without its [`Lease`] being dropped —
//!   dropping a task or a future drops the lease it owns — so the `ttl` argument is ignored and
//!   nothing needs renewing.
//! - **Fencing tokens** come from one counter shared by every store in the process, drawn under the
//!   key's lock: strictly increasing per key, also when a key's entry was removed and created
//!   again, and never the same for two leases — so a lease from another store is never mistaken
//!   for this store's holder of the same key.

use std::{
    collections::{HashMap, VecDeque, hash_map},
    fmt,
    hash::BuildHasher,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{sync::oneshot, time::Instant};

use super::{Lease, LeaseStore};
use crate::{Error, shared::BoxFuture};

/// How many independent pieces the key table is split into.
const SHARDS: usize = 16;

/// How long a transitioning flag is honoured.
const FLAG_TTL: Duration = Duration::from_secs(30 * 60);

/// Idle keys kept per shard for their transitioning flag; past this the oldest are forgotten.
const MAX_IDLE_FLAGS: usize = 1024;

/// Past this many queued waiters, the ones that gave up are swept out (again at each doubling),
/// so a key held for long while waiters keep timing out does not grow its queue without bound.
const SWEEP_WAITERS: usize = 64;

/// The last fencing token handed out by any [`MemoryLeases`] in this process.
static LAST_TOKEN: AtomicU64 = AtomicU64::new(0);

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

#[derive(Default)]
struct Inner {
    shards: [Mutex<Shard>; SHARDS],
    hasher: foldhash::fast::RandomState,
}

/// One piece of the key table.
#[derive(Default)]
struct Shard {
    // foldhash rather than std's SipHash: keys are long ARM paths, hashed several times a write,
    // and nothing an attacker controls decides which keys share a shard's table.
    entries: HashMap<u64, Entry, foldhash::fast::RandomState>,
    /// How many entries are idle, kept only for their flag.
    idle_flags: usize,
}

/// A key held or waited for, or an idle key left in transition.
#[derive(Default)]
struct Entry {
    /// The fencing token of the lease holding the key; `None` while the key is idle.
    holder: Option<u64>,
    /// Writers waiting for the key, in arrival order. One that gave up leaves a closed sender,
    /// skipped when the key is handed over.
    waiters: VecDeque<oneshot::Sender<Lease>>,
    /// When the resource was last left in transition, if it is.
    flag: Option<Instant>,
}

impl Entry {
    /// The flag, if set and still worth honouring.
    fn live_flag(&self) -> Option<Instant> {
        self.flag.filter(|since| since.elapsed() < FLAG_TTL)
    }
}

impl Inner {
    /// The shard of `key`, locked.
    /// The hash `key` is known by.
    fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The shard of the key with `hash`, locked.
    fn shard(&self, hash: u64) -> MutexGuard<'_, Shard> {
        lock(&self.shards[hash as usize % SHARDS])
    }

    /// Makes the next holder of `entry`'s key: a fresh fencing token, and the flag the previous
    /// holder left. Called with the key's shard locked.
    fn grant(self: &Arc<Self>, key: Arc<str>, hash: u64, entry: &mut Entry) -> Lease {
        let token = LAST_TOKEN.fetch_add(1, Ordering::Relaxed) + 1;
        entry.holder = Some(token);
        entry.flag = entry.live_flag();
        let transitioning = entry.flag.is_some();
        let store = Arc::clone(self);
        let handed_on = Arc::clone(&key);
        Lease::new(key, token, move || store.release(&handed_on, hash, token))
            .with_transitioning(transitioning)
    }

    /// Gives back the lease `token` holds on `key`: to the first writer still waiting, or else
    /// the key goes idle — forgotten, or kept for its flag.
    fn release(self: &Arc<Self>, key: &Arc<str>, hash: u64, token: u64) {
        let mut shard = self.shard(hash);
        let Shard {
            entries,
            idle_flags,
        } = &mut *shard;
        let hash_map::Entry::Occupied(mut slot) = entries.entry(hash) else {
            return;
        };
        let entry = slot.get_mut();
        // Each lease is released once, so this is its holder; checked all the same.
        if entry.holder != Some(token) {
            return;
        }
        while let Some(waiter) = entry.waiters.pop_front() {
            if waiter.is_closed() {
                continue;
            }
            let next = self.grant(Arc::clone(key), hash, entry);
            drop(shard);
            // Sent unlocked. If the waiter left since it was checked, its lease comes back, and
            // dropping it releases it again — to the waiter after.
            drop(waiter.send(next));
            return;
        }
        entry.holder = None;
        if entry.live_flag().is_some() {
            entry.waiters = VecDeque::new();
            *idle_flags += 1;
            if *idle_flags > MAX_IDLE_FLAGS {
                shard.prune();
            }
        } else {
            slot.remove();
        }
    }
}

impl Shard {
    /// Forgets expired flags, then the oldest, down to three quarters of [`MAX_IDLE_FLAGS`] —
    /// leaving room, so this runs once per few hundred idle keys.
    fn prune(&mut self) {
        const KEEP: usize = MAX_IDLE_FLAGS * 3 / 4;
        let now = Instant::now();
        let live = |since: &Instant| now.saturating_duration_since(*since) < FLAG_TTL;
        self.entries
            .retain(|_, e| e.holder.is_some() || e.flag.as_ref().is_some_and(live));
        let mut idle: Vec<Instant> = self
            .entries
            .values()
            .filter(|e| e.holder.is_none())
            .filter_map(|e| e.flag)
            .collect();
        self.idle_flags = idle.len();
        if idle.len() <= KEEP {
            return;
        }
        let excess = idle.len() - KEEP;
        let (_, &mut cutoff, _) = idle.select_nth_unstable(excess - 1);
        // Counted: when many flags share the cutoff's instant, only as many as needed go.
        let mut removed = 0;
        self.entries.retain(|_, e| {
            let old = e.holder.is_none() && e.flag.is_some_and(|since| since <= cutoff);
            let drop = old && removed < excess;
            removed += usize::from(drop);
            !drop
        });
        self.idle_flags -= removed;
    }
}

/// Locks a shard. A panic while a shard was locked cannot leave an entry half-updated (every
/// critical section is a few field writes), so a poisoned shard is still consistent.
fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
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
            .map(|shard| lock(shard).entries.len())
            .sum()
    }

    /// Whether [`len`](Self::len) is zero.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    async fn take(&self, key: &str, wait: Duration) -> Result<Lease, Error> {
        let handed = {
            let shared: Arc<str> = key.into();
            let hash = self.inner.hash(key);
            let mut shard = self.inner.shard(hash);
            let Shard {
                entries,
                idle_flags,
            } = &mut *shard;
            match entries.entry(hash) {
                hash_map::Entry::Vacant(slot) => {
                    return Ok(self
                        .inner
                        .grant(shared, hash, slot.insert(Entry::default())));
                }
                hash_map::Entry::Occupied(slot) => {
                    let entry = slot.into_mut();
                    // Idle, kept for its flag: in use again, flag and all.
                    if entry.holder.is_none() {
                        *idle_flags -= 1;
                        return Ok(self.inner.grant(shared, hash, entry));
                    }
                    // Held: queue behind the holder and whoever already waits.
                    let (tx, rx) = oneshot::channel();
                    let waiters = &mut entry.waiters;
                    if waiters.len() >= SWEEP_WAITERS && waiters.len().is_power_of_two() {
                        waiters.retain(|w| !w.is_closed());
                    }
                    waiters.push_back(tx);
                    rx
                }
            }
        };
        // If this future is dropped while waiting, the receiver goes with it: the key is handed to
        // the next waiter instead (and a lease sent just before is dropped, so released).
        let started = Instant::now();
        match tokio::time::timeout(wait, handed).await {
            Ok(Ok(lease)) => Ok(lease),
            // The sender went unused: never happens while a holder lives.
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

    /// Runs `f` on the entry `lease` holds in this store, or fails if it holds none.
    fn holding<T>(&self, lease: &Lease, f: impl FnOnce(&mut Entry) -> T) -> Result<T, Error> {
        let hash = self.inner.hash(lease.key());
        let mut shard = self.inner.shard(hash);
        match shard.entries.get_mut(&hash) {
            Some(entry) if entry.holder == Some(lease.token()) => Ok(f(entry)),
            _ => Err(Error::LeaseBackend {
                key: lease.key().to_owned(),
                message: "the lease is not held in this store".to_owned(),
            }),
        }
    }
}

impl LeaseStore for MemoryLeases {
    fn acquire<'a>(
        &'a self,
        key: &'a str,
        _ttl: Duration,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Lease, Error>> {
        Box::pin(self.take(key, wait))
    }

    fn set_transitioning<'a>(
        &'a self,
        lease: &'a Lease,
        transitioning: bool,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            self.holding(lease, |entry| entry.flag = transitioning.then(Instant::now))
        })
    }

    fn is_transitioning<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move { self.holding(lease, |entry| entry.live_flag().is_some()) })
    }
}

impl fmt::Debug for MemoryLeases {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryLeases")
            .field("keys", &self.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(30);
    const WAIT: Duration = Duration::from_secs(5);

    fn refused<T: fmt::Debug>(result: Result<T, Error>) -> bool {
        matches!(result, Err(Error::LeaseBackend { .. }))
    }

    #[tokio::test]
    async fn only_the_current_holder_may_read_or_set_the_flag() {
        let leases = MemoryLeases::new();
        let first = leases.acquire("k", TTL, WAIT).await.unwrap();
        let stale_token = first.token();
        drop(first);
        let holder = leases.acquire("k", TTL, WAIT).await.unwrap();

        // A holder paused past its turn, a made-up token, another store's holder of the key.
        let stale = Lease::new("k", stale_token, || {});
        let made_up = Lease::new("k", holder.token() + 1, || {});
        let other = MemoryLeases::new();
        let foreign = other.acquire("k", TTL, WAIT).await.unwrap();
        for lease in [&stale, &made_up, &foreign] {
            assert!(refused(leases.set_transitioning(lease, true).await));
            assert!(refused(leases.is_transitioning(lease).await));
        }
        assert!(!leases.is_transitioning(&holder).await.unwrap());
        drop(holder);
        assert_eq!(leases.len(), 0, "refused calls left no flag behind");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_flag_set_by_one_holder_is_seen_by_the_next() {
        let leases = MemoryLeases::new();
        let first = leases.acquire("k", TTL, WAIT).await.unwrap();
        assert_eq!(first.transitioning(), Some(false));
        leases.set_transitioning(&first, true).await.unwrap();

        // Handed over to a waiter.
        let waiter = tokio::spawn({
            let leases = leases.clone();
            async move { leases.acquire("k", TTL, WAIT).await }
        });
        tokio::task::yield_now().await;
        drop(first);
        let second = waiter.await.unwrap().unwrap();
        assert_eq!(second.transitioning(), Some(true));
        assert!(leases.is_transitioning(&second).await.unwrap());
        drop(second);
        assert_eq!(leases.len(), 1, "the flag keeps the key");

        // Taken while idle.
        let third = leases.acquire("k", TTL, WAIT).await.unwrap();
        assert_eq!(third.transitioning(), Some(true));
        leases.set_transitioning(&third, false).await.unwrap();
        assert!(!leases.is_transitioning(&third).await.unwrap());
        drop(third);
        assert_eq!(leases.len(), 0, "a cleared flag frees the entry");

        let fourth = leases.acquire("k", TTL, WAIT).await.unwrap();
        assert_eq!(fourth.transitioning(), Some(false));
    }

    #[tokio::test(start_paused = true)]
    async fn a_flag_expires_after_thirty_minutes() {
        let leases = MemoryLeases::new();
        let lease = leases.acquire("k", TTL, WAIT).await.unwrap();
        leases.set_transitioning(&lease, true).await.unwrap();
        drop(lease);

        tokio::time::advance(FLAG_TTL - Duration::from_secs(1)).await;
        let lease = leases.acquire("k", TTL, WAIT).await.unwrap();
        assert_eq!(lease.transitioning(), Some(true), "still honoured");
        drop(lease);
        assert_eq!(leases.len(), 1);

        tokio::time::advance(Duration::from_secs(2)).await;
        let lease = leases.acquire("k", TTL, WAIT).await.unwrap();
        assert_eq!(lease.transitioning(), Some(false), "expired");
        assert!(!leases.is_transitioning(&lease).await.unwrap());
        drop(lease);
        assert_eq!(leases.len(), 0, "an expired flag is forgotten");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_flags_are_bounded_oldest_first() {
        let leases = MemoryLeases::new();
        let bound = SHARDS * MAX_IDLE_FLAGS;
        // Twice the bound: every shard overflows, surely.
        let writes = 2 * bound;
        for i in 0..writes {
            let lease = leases.acquire(&i.to_string(), TTL, WAIT).await.unwrap();
            leases.set_transitioning(&lease, true).await.unwrap();
            drop(lease);
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        let kept = leases.len();
        assert!(kept <= bound, "{kept} idle flags kept");
        assert!(
            kept >= SHARDS * MAX_IDLE_FLAGS * 3 / 4,
            "{kept} idle flags kept"
        );
        let oldest = leases.acquire("0", TTL, WAIT).await.unwrap();
        assert_eq!(oldest.transitioning(), Some(false), "the oldest flag went");
        let newest = (writes - 1).to_string();
        let newest = leases.acquire(&newest, TTL, WAIT).await.unwrap();
        assert_eq!(newest.transitioning(), Some(true), "the newest flag stayed");
    }

    #[tokio::test(start_paused = true)]
    async fn pruning_drops_expired_flags_then_the_oldest() {
        let mut shard = Shard::default();
        let flag = |at| Entry {
            flag: Some(at),
            ..Entry::default()
        };
        // Entries are keyed by hash: expired flags at EXPIRED.., live ones at 0.., the held one
        // at HELD.
        const EXPIRED: u64 = 1 << 32;
        const HELD: u64 = u64::MAX;
        for i in 0..200 {
            shard.entries.insert(EXPIRED + i, flag(Instant::now()));
        }
        tokio::time::advance(FLAG_TTL).await;
        let live = MAX_IDLE_FLAGS - 200 + 1;
        for i in 0..live {
            let at = Instant::now() + Duration::from_millis(i as u64);
            shard.entries.insert(i as u64, flag(at));
        }
        let held = Entry {
            holder: Some(1),
            ..Entry::default()
        };
        shard.entries.insert(HELD, held);
        shard.idle_flags = MAX_IDLE_FLAGS + 1;

        shard.prune();
        let keep = MAX_IDLE_FLAGS * 3 / 4;
        assert_eq!(shard.idle_flags, keep);
        assert_eq!(shard.entries.len(), keep + 1, "the held key stays");
        assert!(shard.entries.contains_key(&HELD));
        assert!(
            !shard
                .entries
                .keys()
                .any(|&k| (EXPIRED..EXPIRED + 200).contains(&k))
        );
        // The oldest live flags went; the newest stayed.
        let live = live as u64;
        let keep = keep as u64;
        assert!(!shard.entries.contains_key(&0));
        assert!(shard.entries.contains_key(&(live - 1)));
        assert!(shard.entries.contains_key(&(live - keep)));
        assert!(!shard.entries.contains_key(&(live - keep - 1)));
    }
}
