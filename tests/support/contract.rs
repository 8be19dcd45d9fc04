//! What every cross-process lease store must do, checked the same way for each: `a` and `b` are
//! two handles on one store, as two processes would have.

use std::time::{Duration, Instant};

use reqwest_conflict::LeaseStore;

const TTL: Duration = Duration::from_secs(10);
const LONG: Duration = Duration::from_secs(20);

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
