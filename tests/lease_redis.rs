//! `RedisLeases` against a real `redis-server` started per test (see `support`).

#![cfg(feature = "redis")]

mod support;

use std::{
    task::Poll,
    time::{Duration, Instant},
};

use reqwest_conflict::{Error, LeaseStore, RedisLeases, TransitionEstimate};

const KEY: &str = "/subscriptions/s/resourceGroups/g/providers/Microsoft.Network/virtualNetworks/v";
const TTL: Duration = Duration::from_secs(10);
const LONG: Duration = Duration::from_secs(20);

/// The environment variables of the child process in the SIGKILL test.
const CHILD_URL: &str = "LEASE_REDIS_CHILD_URL";
const CHILD_KEY: &str = "LEASE_REDIS_CHILD_KEY";

async fn store(redis: &support::Redis) -> RedisLeases {
    RedisLeases::new(&redis.url(), "test:").await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_writer_at_a_time_under_contention() {
    let redis = support::start_redis();
    let mut stores = Vec::new();
    for _ in 0..8 {
        stores.push(store(&redis).await);
    }
    let (counter, _) = support::contract::one_writer_at_a_time(
        stores,
        KEY,
        TTL,
        LONG,
        10,
        Duration::from_millis(1),
    )
    .await;
    assert_eq!(counter, 80);
}

#[tokio::test]
async fn tokens_strictly_increase() {
    let redis = support::start_redis();
    let (a, b) = (store(&redis).await, store(&redis).await);
    support::contract::tokens_strictly_increase(&a, &b, KEY).await;
}

#[tokio::test]
async fn waiting_for_a_held_key_times_out() {
    let redis = support::start_redis();
    let (a, b) = (store(&redis).await, store(&redis).await);
    let _held = a.acquire(KEY, TTL, LONG).await.unwrap();
    let started = Instant::now();
    let error = b
        .acquire(KEY, TTL, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::LeaseTimeout { key, waited } if key == KEY && *waited >= Duration::from_millis(300)),
        "{error:?}"
    );
    assert!(
        started.elapsed() < TTL / 2,
        "the wait bound was not respected"
    );
}

#[tokio::test]
async fn renewal_keeps_a_lease_past_its_ttl() {
    let redis = support::start_redis();
    let (a, b) = (store(&redis).await, store(&redis).await);
    let ttl = Duration::from_millis(300);
    let held = a.acquire(KEY, ttl, LONG).await.unwrap();
    // Held for over three TTLs: another acquirer must not get it meanwhile.
    let error = b
        .acquire(KEY, ttl, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::LeaseTimeout { .. }), "{error:?}");
    let token = held.token();
    drop(held);
    let next = b.acquire(KEY, ttl, Duration::from_secs(2)).await.unwrap();
    assert!(next.token() > token);
}

#[tokio::test]
async fn dropping_a_lease_lets_the_next_one_in_promptly() {
    let redis = support::start_redis();
    let (a, b) = (store(&redis).await, store(&redis).await);
    support::contract::dropping_a_lease_lets_the_next_one_in_promptly(&a, b, KEY).await;
}

#[tokio::test]
async fn transitioning_flag_round_trip() {
    let redis = support::start_redis();
    let (a, b) = (store(&redis).await, store(&redis).await);
    support::contract::the_flag_passes_to_the_next_holder(&a, &b, KEY).await;
    // A lease this store did not hand out is refused.
    let foreign = b.acquire("other", TTL, LONG).await.unwrap();
    assert!(matches!(
        a.set_transitioning(&foreign, true).await,
        Err(Error::LeaseBackend { .. })
    ));
}

#[tokio::test]
async fn writes_under_a_lost_lease_are_refused() {
    let redis = support::start_redis();
    let leases = store(&redis).await;
    let lease = leases.acquire(KEY, TTL, LONG).await.unwrap();
    // Someone else's lease replaced ours (as after an expiry).
    let client = std::net::TcpStream::connect(("127.0.0.1", redis.port())).unwrap();
    redis_command(client, &format!("SET test:lease:{KEY} intruder"));
    let error = leases.set_transitioning(&lease, true).await.unwrap_err();
    assert!(matches!(error, Error::LeaseBackend { .. }), "{error:?}");
}

/// Sends one inline command and waits for its answer.
fn redis_command(mut stream: std::net::TcpStream, command: &str) {
    use std::io::{Read, Write};
    stream
        .write_all(format!("{command}\r\n").as_bytes())
        .unwrap();
    let mut answer = [0u8; 5];
    stream.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"+OK\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquire_dropped_at_any_point_leaves_the_key_free() {
    let redis = support::start_redis();
    let leases = store(&redis).await;
    let mut rng = support::Rng::seeded();
    // A TTL no test waits out: a key left leased shows at once.
    let ttl = Duration::from_secs(60);
    let (mut dropped, mut granted) = (0, 0);
    for round in 0..300 {
        // Polled, with the runtime's I/O going on in between, until a random moment within a
        // few round trips, then dropped: before the request left, in the middle of the round
        // trip, or after the answer.
        let give_up = Duration::from_micros(rng.below(600));
        let started = Instant::now();
        let mut acquire = Box::pin(leases.acquire(KEY, ttl, Duration::from_secs(5)));
        let mut outcome = None;
        loop {
            if let Poll::Ready(result) = futures_util::poll!(acquire.as_mut()) {
                outcome = Some(result);
                break;
            }
            if started.elapsed() >= give_up {
                break;
            }
            tokio::task::yield_now().await;
        }
        match outcome {
            // Granted before the drop: dropping the lease releases it.
            Some(lease) => {
                drop(lease.unwrap());
                granted += 1;
            }
            None => dropped += 1,
        }
        drop(acquire);
        assert!(
            support::redis_key_gone(&redis, &format!("test:lease:{KEY}")).await,
            "round {round} (dropped after {give_up:?}): the key stayed leased after the acquire was dropped"
        );
    }
    eprintln!("{dropped} acquires dropped unanswered, {granted} granted before the drop");
    assert!(dropped > 0, "no acquire was dropped in flight");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquire_the_server_does_not_answer_fails_and_leaves_the_key_free() {
    let redis = support::start_redis();
    let leases = store(&redis).await;
    // The script is loaded while the server answers, so the acquire below is one request.
    drop(leases.acquire("warm-up", TTL, LONG).await.unwrap());
    redis.pause();
    let started = Instant::now();
    let error = leases
        .acquire(KEY, Duration::from_secs(60), Duration::from_secs(5))
        .await
        .unwrap_err();
    let took = started.elapsed();
    // The server runs the acquire when it wakes up: it must not keep the key for its TTL.
    redis.resume();
    assert!(
        matches!(
            error,
            Error::LeaseBackend { .. } | Error::LeaseTimeout { .. }
        ),
        "{error:?}"
    );
    assert!(
        took < Duration::from_secs(5) + Duration::from_millis(500),
        "took {took:?}"
    );
    assert!(
        support::redis_key_gone(&redis, &format!("test:lease:{KEY}")).await,
        "the unanswered acquire kept the key"
    );
}

#[tokio::test]
async fn tokens_keep_growing_after_the_server_restarts_empty() {
    let mut redis = support::start_redis();
    let before = store(&redis).await.acquire(KEY, TTL, LONG).await.unwrap();
    let token = before.token();
    // Leases and fencing counters are gone with the server's memory.
    redis.restart_empty();
    let after = store(&redis).await.acquire(KEY, TTL, LONG).await.unwrap();
    assert!(
        after.token() > token,
        "the token went from {token} back to {}",
        after.token()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_not_renewed_within_its_ttl_is_lost() {
    let redis = support::start_redis();
    let leases = store(&redis).await;
    let ttl = Duration::from_millis(600);
    let lease = leases.acquire(KEY, ttl, LONG).await.unwrap();
    lease.check().unwrap();
    // Renewals go unanswered while the server is stopped.
    redis.pause();
    tokio::time::sleep(2 * ttl).await;
    let lost = lease.check();
    redis.resume();
    let error = lost.unwrap_err();
    assert!(
        matches!(&error, Error::LeaseLost { key, reason, .. } if key == KEY && reason.contains("TTL")),
        "{error:?}"
    );
    // Once the server answers again, the key is someone else's to take: the lease stays lost.
    let next = leases.acquire(KEY, ttl, LONG).await.unwrap();
    assert!(next.token() > lease.token());
    assert!(lease.check().is_err());
}

#[tokio::test]
async fn unreachable_server_is_a_backend_error_without_credentials() {
    let port = support::free_port();
    let url = format!("redis://:hunter2secret@127.0.0.1:{port}/");
    let error = RedisLeases::new(&url, "test:").await.unwrap_err();
    let shown = error.to_string();
    assert!(matches!(error, Error::LeaseBackend { .. }), "{shown}");
    assert!(!shown.contains("hunter2secret"), "{shown}");
}

/// The child side of the SIGKILL test: takes the lease, says so, and hangs until killed.
#[test]
fn child_hold_lease() {
    support::run_if_child([CHILD_URL, CHILD_KEY], |[url, key]| async move {
        let leases = RedisLeases::new(&url, "test:").await.unwrap();
        let lease = leases
            .acquire(&key, Duration::from_secs(1), LONG)
            .await
            .unwrap();
        println!("LEASE-HELD {}", lease.token());
        std::future::pending::<()>().await;
    });
}

#[tokio::test]
async fn a_killed_holder_loses_its_lease_after_the_ttl() {
    let redis = support::start_redis();
    let (child, token) = support::spawn_child_test(
        "child_hold_lease",
        &[(CHILD_URL, redis.url()), (CHILD_KEY, KEY.to_owned())],
        "LEASE-HELD ",
        Duration::from_secs(20),
    );
    let child_token: u64 = token.trim().parse().unwrap();
    let leases = store(&redis).await;
    // Alive (and renewing), the child keeps the key.
    let error = leases
        .acquire(KEY, TTL, Duration::from_millis(1500))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::LeaseTimeout { .. }), "{error:?}");

    drop(child); // SIGKILL: no release, no more renewals
    let killed = Instant::now();
    let lease = leases.acquire(KEY, TTL, LONG).await.unwrap();
    let waited = killed.elapsed();
    // It was renewed at most ttl/3 before the kill, so at least 2/3 of the 1 s TTL remained.
    assert!(
        waited >= Duration::from_millis(600),
        "got it after {waited:?}"
    );
    assert!(lease.token() > child_token);
}

/// What one holder learned of a key's transitions, another store (another process) reads; text
/// in Redis that is not an estimate is no estimate, never a panic.
#[tokio::test]
async fn transition_estimates_are_shared_between_stores() {
    let redis = support::start_redis();
    let (a, b) = (store(&redis).await, store(&redis).await);
    assert_eq!(
        b.transition_estimate(KEY).await,
        None,
        "nothing learned yet"
    );
    let learned: TransitionEstimate = "v1 230 310 0 1".parse().unwrap();
    a.share_transition_estimate(KEY, learned).await;
    let read = b.transition_estimate(KEY).await.expect("shared");
    assert_eq!(read.with_age(Duration::ZERO), learned);
    assert!(read.age() < Duration::from_secs(10), "{read:?}");
    assert_eq!(b.transition_estimate("other").await, None, "per key");
    let ttl = redis.command(&format!("PTTL test:estimate:{KEY}"));
    let ttl: u64 = ttl.trim_start_matches(':').parse().unwrap();
    assert!(
        (14 * 60_000..=15 * 60_000).contains(&ttl),
        "forgotten after 15 minutes without news: {ttl} ms left"
    );
    redis.command(&format!("PEXPIRE test:estimate:{KEY} 60000"));
    let aged = b.transition_estimate(KEY).await.expect("still kept");
    assert!(
        aged.age() >= Duration::from_secs(14 * 60),
        "learned about 14 minutes ago, as its TTL says: {aged:?}"
    );
    for garbage in [
        "soon",
        "230 310 0 1",
        "v1 310 230 0 0",
        "v1 1 2 3",
        "v1 1 2 3 4 5",
        "v1 -1 2 3 0",
        "v1 1 2 3 -4",
        "v1 1 2 3 4294967296",
        "v1 1 86400001 3 0",
        "v2 1 2 3 4",
    ] {
        redis.command(&format!("SET test:estimate:{KEY} \"{garbage}\""));
        assert_eq!(b.transition_estimate(KEY).await, None, "{garbage:?}");
    }
}

/// Two middlewares (as two processes) sharing Redis leases, `lro: settle`: the second's first
/// write to a resource polls its operation when the first's estimate says, not on the schedule
/// (50 ms doubling: at 50, 150 and 350 ms, three polls to see a 250 ms transition end; planned
/// from the estimate, at 250 and 350 ms). The store's advice is waited for up to the schedule's
/// first delay: 50 ms, a wide margin for a loopback Redis on a busy machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_times_its_first_settle_from_what_another_learned() {
    use support::{client::fast_policy, sim};
    let redis = support::start_redis();
    let sim = arm_sim::Sim::start(arm_sim::SimConfig {
        transition: Duration::from_millis(250),
        ..arm_sim::SimConfig::default()
    })
    .await;
    sim.seed(sim::VM, sim::vm_body("seed"));
    let policy = || {
        let mut policy = fast_policy();
        policy.lro = reqwest_conflict::Lro::Settle;
        policy.poll.min_delay = Duration::from_millis(50);
        policy.poll.max_delay = Duration::from_secs(1);
        policy.poll.jitter = false;
        policy
    };
    let mut operation_polls = Vec::new();
    for tag in ["first", "second"] {
        let middleware =
            reqwest_conflict::ConflictMiddleware::new(policy()).with_leases(store(&redis).await);
        let client = support::client::middleware_client(middleware);
        let before = sim.requests().len();
        let resp = support::client::put_vm(&client, &sim, tag).await;
        assert!(resp.status().is_success(), "{}", resp.status());
        let polls = sim.requests()[before..]
            .iter()
            .filter(|r| r.method == "GET" && r.path.contains("/operations/"))
            .count();
        operation_polls.push(polls);
    }
    assert!(
        operation_polls[0] >= 3,
        "the first process found the end on the schedule: {operation_polls:?}"
    );
    assert!(
        operation_polls[1] <= 2,
        "the second planned its polls from the first's estimate: {operation_polls:?}"
    );
}
