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

#[tokio::test]
async fn no_call_follows_a_redirect_or_sends_a_referer() {
    use support::hostile::{Canned, redirect};
    const SIG: &str = "SECRETSIG-BLOB-REDIRECT-5e0a";
    let honeypot = Canned::start(|_| redirect(404, "/")).await;
    for status in [301, 302, 303, 307, 308] {
        let target = format!("{}/elsewhere", honeypot.base());
        let redirector = Canned::start(move |_| redirect(status, &target)).await;
        let url = format!(
            "{}/devstoreaccount1/leases?sv=2021-08-06&sig={SIG}",
            redirector.base()
        );
        let leases = BlobLeases::new(&url).unwrap();
        let error = leases.acquire(KEY, TTL, LONG).await.unwrap_err();
        assert!(
            matches!(error, Error::LeaseBackend { .. }),
            "{status}: {error:?}"
        );
        assert!(!error.to_string().contains(SIG), "{error}");
        assert!(
            !redirector.seen().is_empty(),
            "{status}: the store was not called"
        );
        let seen = redirector.seen().join("");
        assert!(!seen.to_ascii_lowercase().contains("referer"), "{seen}");
    }
    assert_eq!(
        honeypot.seen(),
        Vec::<String>::new(),
        "a redirect was followed"
    );
}

/// A write to the VM under `leases`, which cannot be taken or kept, fails with
/// `Error::LeaseBackend` by its `deadline` (within 10 %).
async fn write_fails_by_the_deadline(sim: &arm_sim::Sim, leases: BlobLeases, deadline: Duration) {
    use reqwest_conflict::{ConflictMiddleware, ConflictPolicy};
    let policy = ConflictPolicy {
        deadline,
        ..support::fast_policy()
    };
    let client = support::middleware_client(ConflictMiddleware::new(policy).with_leases(leases));
    let started = Instant::now();
    let error = client
        .put(support::url(sim, support::VM))
        .json(&support::vm_body("t"))
        .send()
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(support::engine_error(&error), Error::LeaseBackend { .. }),
        "{error}"
    );
    assert!(
        took <= deadline + deadline / 10,
        "the write took {took:?} with a deadline of {deadline:?}"
    );
}

/// A call to a blob endpoint that never answers ends by the caller's deadline (within 10 %),
/// whether the caller is `acquire` itself or a write through the middleware.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_endpoint_that_never_answers_ends_by_the_deadline() {
    let silent = support::hostile::Silent::start().await;
    let leases = BlobLeases::new(&dev_sas_container_url(
        &format!("{}/devstoreaccount1", silent.base()),
        "leases",
    ))
    .unwrap();
    let deadline = Duration::from_secs(1);
    let within = deadline + deadline / 10;

    let started = Instant::now();
    let error = leases.acquire(KEY, TTL, deadline).await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(error, Error::LeaseBackend { .. }), "{error:?}");
    assert!(
        took <= within,
        "acquire took {took:?} for a wait of {deadline:?}"
    );

    let sim = support::instant_sim().await;
    write_fails_by_the_deadline(&sim, leases, deadline).await;
    assert_eq!(
        sim.requests().len(),
        0,
        "nothing is written without its lease"
    );
}

/// A blob endpoint that grants the lease, then never answers the call that clears the flag the
/// previous writer left (the state guard's last step before the write): the write still ends by
/// its deadline (within 10 %).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_endpoint_that_stalls_after_granting_ends_by_the_deadline() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let flag_writes = AtomicUsize::new(0);
    let endpoint = support::hostile::Canned::start(move |head| {
        let answer = |status: &str, headers: &str| {
            format!("HTTP/1.1 {status}\r\n{headers}content-length: 0\r\n\r\n")
        };
        if head.contains("x-ms-lease-action: acquire") {
            answer("201 Created", "x-ms-lease-id: L1\r\n")
        } else if head.starts_with("HEAD") {
            answer(
                "200 OK",
                "x-ms-meta-fence: 7\r\nx-ms-meta-transitioning: true\r\n",
            )
        } else if head.contains("comp=metadata") && flag_writes.fetch_add(1, Ordering::SeqCst) > 0 {
            String::new()
        } else {
            answer("200 OK", "")
        }
    })
    .await;
    let leases = BlobLeases::new(&dev_sas_container_url(
        &format!("{}/devstoreaccount1", endpoint.base()),
        "leases",
    ))
    .unwrap();
    let sim = support::sim_with_vm(Duration::ZERO).await;
    write_fails_by_the_deadline(&sim, leases, Duration::from_secs(1)).await;
    assert!(
        sim.requests().iter().all(|r| r.method == "GET"),
        "nothing is written"
    );
}

/// An acquire dropped at any point — before its request left, while the store answers, while
/// the fence is written — leaves the key free for the next holder at once, not after the
/// lease's 15 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_acquire_leaves_the_key_free() {
    let azurite = support::start_azurite();
    let (a, b) = (store(&azurite).await, store(&azurite).await);
    // How long an acquire takes here, to spread the drops over it (and a little past).
    let started = Instant::now();
    a.acquire(KEY, TTL, LONG).await.unwrap().release().await;
    let span = started.elapsed() * 2;
    let drops = 60;
    for i in 0..drops {
        let at = span * i / drops;
        let dropped = tokio::time::timeout(at, a.acquire(KEY, TTL, LONG)).await;
        if let Ok(lease) = dropped {
            lease.unwrap().release().await;
        }
        let next = b.acquire(KEY, TTL, Duration::from_secs(2)).await;
        let next = next.unwrap_or_else(|e| panic!("after a drop at {at:?}: {e}"));
        next.release().await;
    }
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
    // (Long enough a wait for the store to answer: every call ends by the wait.)
    let error = other
        .acquire(live_key, TTL, Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::LeaseTimeout { .. }), "{error:?}");
    leases.set_transitioning(&live, false).await.unwrap();
}
