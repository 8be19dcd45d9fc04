//! What every cross-process lease store must do, checked the same way for each: `a` and `b` are
//! two handles on one store, as two processes would have.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use reqwest_conflict::LeaseStore;

const TTL: Duration = Duration::from_secs(10);
const LONG: Duration = Duration::from_secs(20);

/// One writer at a time: each of `stores` (a store per writer, as many clients as writers, as
/// across processes) takes `key` `rounds` times, and under the lease reads a counter, sleeps
/// `hold` and writes it back one higher, so an overlap would lose an increment. Leases last `ttl`
/// and are waited for at most `wait`. Returns the counter and every token handed out, sorted.
pub async fn one_writer_at_a_time<S>(
    stores: Vec<S>,
    key: &str,
    ttl: Duration,
    wait: Duration,
    rounds: usize,
    hold: Duration,
) -> (u64, Vec<u64>)
where
    S: LeaseStore + Send + Sync + 'static,
{
    let counter = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = stores
        .into_iter()
        .map(|leases| {
            let (key, counter) = (key.to_owned(), counter.clone());
            tokio::spawn(async move {
                let mut tokens = Vec::new();
                for _ in 0..rounds {
                    let lease = leases.acquire(&key, ttl, wait).await.unwrap();
                    let seen = counter.load(Ordering::Relaxed);
                    tokio::time::sleep(hold).await;
                    counter.store(seen + 1, Ordering::Relaxed);
                    tokens.push(lease.token());
                }
                tokens
            })
        })
        .collect();
    let mut tokens = Vec::new();
    for task in tasks {
        tokens.extend(task.await.unwrap());
    }
    tokens.sort_unstable();
    (counter.load(Ordering::Relaxed), tokens)
}

/// Fencing tokens grow strictly, whichever handle takes the key.
pub async fn tokens_strictly_increase(a: &impl LeaseStore, b: &impl LeaseStore, key: &str) {
    let mut last = 0;
    for i in 0..6 {
        let lease = if i % 2 == 0 {
            a.acquire(key, TTL, LONG).await
        } else {
            b.acquire(key, TTL, LONG).await
        }
        .unwrap();
        assert!(lease.token() > last, "{} after {last}", lease.token());
        last = lease.token();
    }
}

/// Dropping a lease releases it at once: a writer waiting on `b` gets the key long before the
/// 60 s lease would expire, with a greater token.
pub async fn dropping_a_lease_lets_the_next_one_in_promptly<S>(a: &S, b: S, key: &str)
where
    S: LeaseStore + Clone,
{
    let ttl = Duration::from_secs(60);
    let held = a.acquire(key, ttl, LONG).await.unwrap();
    let owned_key = key.to_owned();
    let waiter = tokio::spawn(async move {
        let lease = b.acquire(&owned_key, ttl, LONG).await.unwrap();
        (Instant::now(), lease.token())
    });
    // Let the waiter start waiting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let released = Instant::now();
    let token = held.token();
    drop(held);
    let (acquired, next) = waiter.await.unwrap();
    let delay = acquired.duration_since(released);
    // Without the release it would take the whole lease; half of it is a generous bound.
    assert!(delay < ttl / 2, "took {delay:?}");
    assert!(next > token);
}

/// A transitioning flag left by one holder is seen by the next (on the other handle), and a
/// cleared one stays cleared. Returns the first holder's token.
pub async fn the_flag_passes_to_the_next_holder(
    a: &impl LeaseStore,
    b: &impl LeaseStore,
    key: &str,
) -> u64 {
    let lease = a.acquire(key, TTL, LONG).await.unwrap();
    let token = lease.token();
    assert!(!a.is_transitioning(&lease).await.unwrap());
    a.set_transitioning(&lease, true).await.unwrap();
    assert!(a.is_transitioning(&lease).await.unwrap());
    drop(lease);

    let lease = b.acquire(key, TTL, LONG).await.unwrap();
    assert!(b.is_transitioning(&lease).await.unwrap());
    b.set_transitioning(&lease, false).await.unwrap();
    assert!(!b.is_transitioning(&lease).await.unwrap());
    drop(lease);

    let lease = a.acquire(key, TTL, LONG).await.unwrap();
    assert!(!a.is_transitioning(&lease).await.unwrap());
    token
}
