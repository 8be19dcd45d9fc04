//! `BlobLeases` against a real Azurite blob service started per test (see `support`).
//!
//! Blob leases last at least 15 s, so expiry and renewal are tested together, in the one test
//! that waits that long.

#![cfg(feature = "azure-blob")]

mod support;

use std::time::{Duration, Instant};

use reqwest_conflict::{BlobLeases, Error, LeaseStore, lease::dev_sas_container_url};

const KEY: &str =
    "/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/virtualMachines/vm";
/// The shortest blob lease.
const TTL: Duration = Duration::from_secs(15);
const LONG: Duration = Duration::from_secs(25);

const CHILD_URL: &str = "LEASE_BLOB_CHILD_URL";
const CHILD_KEY: &str = "LEASE_BLOB_CHILD_KEY";

/// A store on a fresh container of `azurite`.
async fn store(azurite: &support::Azurite) -> BlobLeases {
    let leases =
        BlobLeases::new(&dev_sas_container_url(&azurite.blob_endpoint(), "leases")).unwrap();
    leases.create_container().await.unwrap();
    leases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_writer_at_a_time_under_contention() {
    let azurite = support::start_azurite();
    let mut stores = Vec::new();
    for _ in 0..8 {
        stores.push(store(&azurite).await);
    }
    let (counter, tokens) = support::contract::one_writer_at_a_time(
        stores,
        KEY,
        TTL,
        LONG,
        4,
        Duration::from_millis(5),
    )
    .await;
    assert_eq!(counter, 32);
    // Every holder got its own token: 1..=32.
    assert_eq!(tokens, (1..=32).collect::<Vec<u64>>());
}

#[tokio::test]
async fn tokens_strictly_increase() {
    let azurite = support::start_azurite();
    let (a, b) = (store(&azurite).await, store(&azurite).await);
    support::contract::tokens_strictly_increase(&a, &b, KEY).await;
}

#[tokio::test]
async fn waiting_for_a_held_key_times_out() {
    let azurite = support::start_azurite();
    let (a, b) = (store(&azurite).await, store(&azurite).await);
    let _held = a.acquire(KEY, TTL, LONG).await.unwrap();
    let error = b
        .acquire(KEY, TTL, Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::LeaseTimeout { key, waited } if key == KEY && *waited >= Duration::from_millis(500)),
        "{error:?}"
    );
}

#[tokio::test]
async fn dropping_a_lease_lets_the_next_one_in_promptly() {
    let azurite = support::start_azurite();
    let (a, b) = (store(&azurite).await, store(&azurite).await);
    support::contract::dropping_a_lease_lets_the_next_one_in_promptly(&a, b, KEY).await;
}

#[tokio::test]
async fn transitioning_flag_round_trip() {
    let azurite = support::start_azurite();
    let (a, b) = (store(&azurite).await, store(&azurite).await);
    let token = support::contract::the_flag_passes_to_the_next_holder(&a, &b, KEY).await;
    // Writing the flag kept the fence: three holders since, three tokens more.
    let lease = a.acquire(KEY, TTL, LONG).await.unwrap();
    assert_eq!(lease.token(), token + 3);
}

#[tokio::test]
async fn break_lease_frees_a_held_key() {
    let azurite = support::start_azurite();
    let (a, b) = (store(&azurite).await, store(&azurite).await);
    let held = a.acquire(KEY, Duration::from_secs(60), LONG).await.unwrap();
    b.break_lease(KEY).await.unwrap();
    let next = b.acquire(KEY, TTL, Duration::from_secs(2)).await.unwrap();
    assert!(next.token() > held.token());
    // The broken holder can no longer write under its lease.
    let error = a.set_transitioning(&held, true).await.unwrap_err();
    assert!(matches!(error, Error::LeaseBackend { .. }), "{error:?}");
    drop(held); // its release fails quietly; the new holder keeps the key
    assert!(!b.is_transitioning(&next).await.unwrap());
    // Breaking a key nobody holds, or that has no blob, is fine.
    drop(next);
    tokio::time::sleep(Duration::from_millis(200)).await;
    b.break_lease(KEY).await.unwrap();
    b.break_lease("never leased").await.unwrap();
}

#[tokio::test]
async fn errors_never_show_the_sas() {
    let azurite = support::start_azurite();
    let url = dev_sas_container_url(&azurite.blob_endpoint(), "missing-container");
    let leases = BlobLeases::new(&url).unwrap();
    let error = leases.acquire(KEY, TTL, LONG).await.unwrap_err();
    let shown = error.to_string();
    assert!(matches!(error, Error::LeaseBackend { .. }), "{shown}");
    assert!(shown.contains("ContainerNotFound"), "{shown}");
    assert!(!shown.contains("sig="), "{shown}");

    // Nobody listening: a transport error, still without the query.
    let port = support::free_port();
    let url = dev_sas_container_url(&format!("http://127.0.0.1:{port}/devstoreaccount1"), "c");
    let error = BlobLeases::new(&url)
        .unwrap()
        .acquire(KEY, TTL, LONG)
        .await
        .unwrap_err();
    let shown = error.to_string();
    assert!(matches!(error, Error::LeaseBackend { .. }), "{shown}");
    assert!(!shown.contains("sig="), "{shown}");
}

/// The child side of the SIGKILL test: takes the lease, says so, and hangs until killed.
#[test]
fn child_hold_lease() {
    support::run_if_child([CHILD_URL, CHILD_KEY], |[url, key]| async move {
        let leases = BlobLeases::new(&url).unwrap();
        let lease = leases.acquire(&key, TTL, LONG).await.unwrap();
        println!("LEASE-HELD {}", lease.token());
        std::future::pending::<()>().await;
    });
}

/// Blob leases last at least 15 s, so this one test covers both sides of expiry with one wait:
/// a holder killed with SIGKILL loses its lease once the duration passes, while a live holder
/// that took its own lease even earlier keeps it through renewals.
#[tokio::test]
async fn killed_holders_lose_their_lease_live_ones_keep_it() {
    let azurite = support::start_azurite();
    let (leases, other) = (store(&azurite).await, store(&azurite).await);
    let live_key = "/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/disks/d";
    let live = leases.acquire(live_key, TTL, LONG).await.unwrap();
    let live_since = Instant::now();

    let (child, token) = support::spawn_child_test(
        "child_hold_lease",
        &[
            (
                CHILD_URL,
                dev_sas_container_url(&azurite.blob_endpoint(), "leases"),
            ),
            (CHILD_KEY, KEY.to_owned()),
        ],
        "LEASE-HELD ",
        Duration::from_secs(20),
    );
    let child_token: u64 = token.trim().parse().unwrap();
    drop(child); // SIGKILL right after it took its 15 s lease: no release, no renewal
    let killed = Instant::now();
    let lease = leases.acquire(KEY, TTL, LONG).await.unwrap();
    let waited = killed.elapsed();
    assert!(waited >= Duration::from_secs(12), "got it after {waited:?}");
    assert!(lease.token() > child_token);

    // Meanwhile the live holder's lease, older than the dead one's, was renewed past 15 s.
    assert!(live_since.elapsed() > TTL);
    let error = other
        .acquire(live_key, TTL, Duration::ZERO)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::LeaseTimeout { .. }), "{error:?}");
    leases.set_transitioning(&live, false).await.unwrap();
}
