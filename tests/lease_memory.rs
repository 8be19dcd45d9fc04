//! `MemoryLeases`: mutual exclusion, FIFO fairness, fencing tokens, cancellation, bounded memory.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use reqwest_conflict::{Error, LeaseStore, MemoryLeases, lease::acquire_all};

const TTL: Duration = Duration::from_secs(30);
const LONG: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_writer_at_a_time_under_contention() {
    let leases = MemoryLeases::new();
    // Read, yield, write: lost updates unless the lease serializes the tasks.
    let counter = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (leases, counter) = (leases.clone(), counter.clone());
            tokio::spawn(async move {
                for _ in 0..50 {
                    let _lease = leases.acquire("hot", TTL, LONG).await.unwrap();
                    let seen = counter.load(Ordering::Relaxed);
                    tokio::task::yield_now().await;
                    counter.store(seen + 1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(counter.load(Ordering::Relaxed), 16 * 50);
    assert_eq!(leases.len(), 0);
}

#[tokio::test(flavor = "current_thread")]
async fn waiters_acquire_in_arrival_order() {
    let leases = MemoryLeases::new();
    let first = leases.acquire("k", TTL, LONG).await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..10 {
        let (leases, order) = (leases.clone(), order.clone());
        let (queued_tx, queued) = tokio::sync::oneshot::channel();
        tasks.push(tokio::spawn(async move {
            let acquire = leases.acquire("k", TTL, LONG);
            // On a current-thread runtime this task runs without interruption from here until
            // the acquire future is parked in the lock's queue.
            queued_tx.send(()).unwrap();
            let _lease = acquire.await.unwrap();
            order.lock().unwrap().push(i);
            tokio::task::yield_now().await;
        }));
        queued.await.unwrap();
        tokio::task::yield_now().await;
    }
    drop(first);
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), (0..10).collect::<Vec<_>>());
}

/// A tiny deterministic PRNG, so the key sets differ per task without a dependency.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overlapping_key_sets_never_deadlock() {
    let leases = MemoryLeases::new();
    let keys: Vec<String> = (0..6).map(|i| format!("/resource/{i}")).collect();
    let tasks: Vec<_> = (0..16u64)
        .map(|t| {
            let (leases, keys) = (leases.clone(), keys.clone());
            tokio::spawn(async move {
                let mut rng = (t + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                for _ in 0..30 {
                    // 2–4 keys, in an arbitrary order, possibly repeated.
                    let n = 2 + (xorshift(&mut rng) % 3) as usize;
                    let wanted: Vec<String> = (0..n)
                        .map(|_| keys[(xorshift(&mut rng) % 6) as usize].clone())
                        .collect();
                    let held = acquire_all(&leases, &wanted, TTL, LONG).await.unwrap();
                    tokio::task::yield_now().await;
                    drop(held);
                }
            })
        })
        .collect();
    let all = futures_util::future::join_all(tasks);
    let results = tokio::time::timeout(Duration::from_secs(20), all)
        .await
        .expect("acquire_all deadlocked");
    for result in results {
        result.unwrap();
    }
    assert_eq!(leases.len(), 0);
}

#[tokio::test]
async fn dropping_a_waiting_acquire_leaks_nothing() {
    let leases = MemoryLeases::new();
    let holder = leases.acquire("k", TTL, LONG).await.unwrap();
    {
        // Poll the waiter until it is queued, then drop it mid-wait.
        let waiter = leases.acquire("k", TTL, LONG);
        let timed_out = tokio::time::timeout(Duration::from_millis(20), waiter).await;
        assert!(timed_out.is_err(), "the waiter must still be waiting");
    }
    assert_eq!(leases.len(), 1, "only the holder's key remains");
    drop(holder);
    assert_eq!(leases.len(), 0);
    // The next writer proceeds at once: nobody is queued in front of it.
    let next = leases.acquire("k", TTL, Duration::ZERO).await.unwrap();
    drop(next);
    assert_eq!(leases.len(), 0);
}

#[tokio::test]
async fn cancelling_a_holder_releases_its_lease() {
    let leases = MemoryLeases::new();
    let (held_tx, held) = tokio::sync::oneshot::channel();
    let task = {
        let leases = leases.clone();
        tokio::spawn(async move {
            let _lease = leases.acquire("k", TTL, LONG).await.unwrap();
            held_tx.send(()).unwrap();
            std::future::pending::<()>().await;
        })
    };
    held.await.unwrap();
    // A waiter queued behind the doomed holder gets the key once the holder is cancelled.
    let waiter = {
        let leases = leases.clone();
        tokio::spawn(async move { leases.acquire("k", TTL, LONG).await.map(drop) })
    };
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    tokio::time::timeout(Duration::from_secs(1), waiter)
        .await
        .expect("the waiter proceeds at once")
        .unwrap()
        .unwrap();
    assert_eq!(leases.len(), 0);
    let next = leases.acquire("k", TTL, Duration::ZERO).await.unwrap();
    drop(next);
    assert_eq!(leases.len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_distinct_keys_leave_nothing_behind() {
    let leases = MemoryLeases::new();
    let tasks: Vec<_> = (0..4u32)
        .map(|t| {
            let leases = leases.clone();
            tokio::spawn(async move {
                let mut key = String::new();
                for i in 0..250_000u32 {
                    key.clear();
                    use std::fmt::Write;
                    write!(key, "/subscriptions/s/resourceGroups/g/{t}/{i}").unwrap();
                    let lease = leases.acquire(&key, TTL, LONG).await.unwrap();
                    drop(lease);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(leases.len(), 0);
    assert!(leases.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_strictly_increase_per_key() {
    let leases = MemoryLeases::new();
    // Sequentially, across removal of the key's entry in between.
    let mut last = 0;
    for _ in 0..5 {
        let lease = leases.acquire("k", TTL, LONG).await.unwrap();
        assert!(lease.token() > last);
        last = lease.token();
        drop(lease);
        assert_eq!(leases.len(), 0);
        // Other keys draw from the same counter; that must not matter.
        drop(leases.acquire("other", TTL, LONG).await.unwrap());
    }
    // Concurrently: in the order the lease was granted.
    let granted = Arc::new(Mutex::new(Vec::new()));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (leases, granted) = (leases.clone(), granted.clone());
            tokio::spawn(async move {
                for _ in 0..25 {
                    let lease = leases.acquire("k", TTL, LONG).await.unwrap();
                    granted.lock().unwrap().push(lease.token());
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let granted = granted.lock().unwrap();
    assert_eq!(granted.len(), 200);
    assert!(granted.first().unwrap() > &last);
    assert!(granted.windows(2).all(|w| w[0] < w[1]), "{granted:?}");
}

#[tokio::test]
async fn waiting_too_long_is_a_lease_timeout() {
    let leases = MemoryLeases::new();
    let _held = leases.acquire("k", TTL, LONG).await.unwrap();
    let error = leases
        .acquire("k", TTL, Duration::from_millis(50))
        .await
        .unwrap_err();
    match error {
        Error::LeaseTimeout { key, waited } => {
            assert_eq!(key, "k");
            assert!(waited >= Duration::from_millis(50), "{waited:?}");
        }
        other => panic!("expected LeaseTimeout, got {other:?}"),
    }
    assert_eq!(leases.len(), 1, "the timed-out waiter left");
}

#[tokio::test]
async fn transitioning_flag_survives_the_holder_until_cleared() {
    let leases = MemoryLeases::new();
    let lease = leases.acquire("k", TTL, LONG).await.unwrap();
    assert!(!leases.is_transitioning(&lease).await.unwrap());
    leases.set_transitioning(&lease, true).await.unwrap();
    assert!(leases.is_transitioning(&lease).await.unwrap());
    drop(lease);
    assert_eq!(leases.len(), 1, "the flag keeps the key");

    let lease = leases.acquire("k", TTL, LONG).await.unwrap();
    assert!(leases.is_transitioning(&lease).await.unwrap());
    leases.set_transitioning(&lease, false).await.unwrap();
    assert!(!leases.is_transitioning(&lease).await.unwrap());
    drop(lease);
    assert_eq!(leases.len(), 0, "cleared: the key is forgotten");

    // Many flagged keys shrink to nothing once cleared.
    for i in 0..1000 {
        let lease = leases.acquire(&i.to_string(), TTL, LONG).await.unwrap();
        leases.set_transitioning(&lease, true).await.unwrap();
    }
    assert_eq!(leases.len(), 1000);
    for i in 0..1000 {
        let lease = leases.acquire(&i.to_string(), TTL, LONG).await.unwrap();
        leases.set_transitioning(&lease, false).await.unwrap();
    }
    assert_eq!(leases.len(), 0);
}

#[tokio::test]
async fn a_lease_from_another_store_is_refused() {
    let (a, b) = (MemoryLeases::new(), MemoryLeases::new());
    let lease = a.acquire("k", TTL, LONG).await.unwrap();
    assert!(matches!(
        b.set_transitioning(&lease, true).await,
        Err(Error::LeaseBackend { .. })
    ));
    assert!(matches!(
        b.is_transitioning(&lease).await,
        Err(Error::LeaseBackend { .. })
    ));
    assert_eq!(b.len(), 0);
}

#[tokio::test]
async fn acquire_all_releases_what_it_took_on_timeout() {
    let leases = MemoryLeases::new();
    let _b = leases.acquire("b", TTL, LONG).await.unwrap();
    let keys = vec!["c".to_owned(), "a".to_owned(), "b".to_owned()];
    let error = acquire_all(&leases, &keys, TTL, Duration::from_millis(30))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::LeaseTimeout { ref key, .. } if key == "b"));
    // "a" was taken first (sorted) and released on failure; "c" was never reached.
    assert_eq!(leases.len(), 1);
    drop(leases.acquire("a", TTL, Duration::ZERO).await.unwrap());
}

#[tokio::test]
async fn flags_left_behind_by_a_million_one_off_writes_stay_bounded() {
    // Each key is written once and left "in transition": the flags must not pile up forever.
    let store = MemoryLeases::new();
    for i in 0..200_000u32 {
        let key = format!("/subscriptions/s/resourceGroups/g/providers/P/t/{i}");
        let lease = store
            .acquire(&key, Duration::from_secs(30), Duration::from_secs(1))
            .await
            .unwrap();
        store.set_transitioning(&lease, true).await.unwrap();
    }
    let kept = store.len();
    assert!(kept > 0, "recent flags are kept");
    assert!(kept <= 64 * 1024, "{kept} idle keys kept");
    // The newest flag is among those kept.
    let last = "/subscriptions/s/resourceGroups/g/providers/P/t/199999";
    let lease = store
        .acquire(last, Duration::from_secs(30), Duration::from_secs(1))
        .await
        .unwrap();
    assert!(store.is_transitioning(&lease).await.unwrap());
}

#[tokio::test]
async fn a_lease_handed_to_a_waiter_that_then_leaves_goes_to_the_next() {
    let leases = MemoryLeases::new();
    let holder = leases.acquire("k", TTL, LONG).await.unwrap();
    let mut first = leases.acquire("k", TTL, LONG);
    let mut second = leases.acquire("k", TTL, LONG);
    // Queue both, in order.
    for waiter in [&mut first, &mut second] {
        assert!(
            tokio::time::timeout(Duration::from_millis(5), waiter)
                .await
                .is_err()
        );
    }
    // The holder leaves: the key is sent to `first`, which is dropped before it looks.
    drop(holder);
    drop(first);
    let lease = tokio::time::timeout(Duration::from_secs(1), second)
        .await
        .expect("the key was lost with the waiter that left")
        .unwrap();
    drop(lease);
    assert!(leases.is_empty());
}

#[tokio::test]
async fn a_live_waiter_behind_thousands_that_gave_up_still_gets_the_key() {
    let leases = MemoryLeases::new();
    let holder = leases.acquire("k", TTL, LONG).await.unwrap();
    // Enough to sweep the queue of the ones that left a few times (at 64, 128, 256).
    for _ in 0..300 {
        let gave_up = leases.acquire("k", TTL, Duration::ZERO).await;
        assert!(matches!(gave_up, Err(Error::LeaseTimeout { .. })));
    }
    // A live waiter behind all of them still gets the key as soon as the holder leaves.
    let waiter = tokio::spawn({
        let leases = leases.clone();
        async move { leases.acquire("k", TTL, LONG).await.map(|l| l.token()) }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    let token = holder.token();
    drop(holder);
    assert!(waiter.await.unwrap().unwrap() > token);
    assert!(leases.is_empty());
}
