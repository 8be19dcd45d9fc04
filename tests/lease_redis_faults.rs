//! A real Redis misbehaving under writers that share it: paused past the lease TTL, killed and
//! restarted empty, and callers that give up at random points.
//!
//! The writers go through `ConflictMiddleware` with `RedisLeases`, each with a store (a
//! connection) of its own as separate processes would have, sharing one journal. Every scenario
//! checks the same promises:
//! - the simulator saw no overlapping transitions on a resource;
//! - the journal finds no overlapping writes;
//! - no lease is held afterwards (the key is free at once, not after its TTL);
//! - every call ended by its deadline, plus 10 %.
//!
//! Each test starts its own `redis-server`, and fails if there is none to start.

#![cfg(feature = "redis")]

mod support;

use std::time::{Duration, Instant};

use arm_sim::Sim;
use reqwest_conflict::{
    ConflictMiddleware, ConflictPolicy, Error, Journal, RedisLeases, ResourceId,
};
use reqwest_middleware::ClientWithMiddleware;
use serde_json::json;
use support::*;

const PREFIX: &str = "faults:";
/// The lease TTL of the pause and restart scenarios: short, so a pause can outlast it.
const TTL: Duration = Duration::from_secs(1);
const DEADLINE: Duration = Duration::from_secs(8);

fn policy() -> ConflictPolicy {
    let mut policy = ConflictPolicy {
        deadline: DEADLINE,
        ..fast_policy()
    };
    policy.leases.ttl = TTL;
    policy
}

/// A writer with a Redis connection of its own, journaling into `journal`.
async fn writer(redis: &Redis, journal: &Journal) -> ClientWithMiddleware {
    let leases = RedisLeases::new(&redis.url(), PREFIX).await.unwrap();
    middleware_client(
        ConflictMiddleware::new(policy())
            .with_leases(leases)
            .with_journal(journal.clone()),
    )
}

/// How a PUT of the VM ended.
#[derive(Debug, PartialEq)]
enum Ended {
    Status(u16),
    /// `Error::LeaseLost`, with its reason.
    LeaseLost(&'static str),
}

/// A PUT of the VM through `client`; how it ended, checked to be by the deadline (+10 %).
async fn put(client: &ClientWithMiddleware, sim: &Sim, tag: &str) -> Ended {
    let started = Instant::now();
    let sent = client.put(url(sim, VM)).json(&vm_body(tag)).send();
    let result = tokio::time::timeout(hang_limit(&policy()), sent)
        .await
        .unwrap_or_else(|_| panic!("the PUT of {tag} hung"));
    let took = started.elapsed();
    eprintln!("the PUT of {tag} ended after {took:?}");
    assert!(
        took <= DEADLINE + DEADLINE / 10,
        "the PUT of {tag} took {took:?}, past its deadline of {DEADLINE:?}"
    );
    match result {
        Ok(resp) => Ended::Status(resp.status().as_u16()),
        Err(e) => match engine_error(&e) {
            Error::LeaseLost { reason, .. } => Ended::LeaseLost(reason),
            other => panic!("the PUT of {tag} failed: {other}"),
        },
    }
}

/// The Redis key of the VM's lease.
fn lease_key() -> String {
    format!("{PREFIX}lease:{}", ResourceId::parse(VM).unwrap().key())
}

/// The promises every scenario checks, after every call ended.
async fn check_promises(sim: &Sim, journal: &Journal, redis: &Redis) {
    assert_eq!(sim.overlapping_transitions(), 0, "{:#?}", sim.transitions());
    assert!(journal.overlaps().is_empty(), "{:#?}", journal.overlaps());
    assert!(
        redis_key_gone(redis, &lease_key()).await,
        "the VM's lease is still held after every call ended"
    );
}

/// A simulator that accepts writes during a transition (only the writers' leases keep them
/// apart), whose VM writes take `transition`; the first PUT of the VM is answered with a 409 that
/// names the NIC as a referenced resource still `Updating` for `nic_busy`, so the first writer
/// waits, polling the NIC, with its lease held.
async fn first_writer_waits(nic_busy: Duration, transition: Duration) -> Sim {
    let sim = permissive_sim_with_vm(transition).await;
    sim.seed(NIC, json!({"location": "westus", "properties": {}}));
    sim.begin_transition(NIC, "Updating", Some(nic_busy));
    let message = format!(
        "Resource {NIC} referenced by resource {VM} was not found or is not in Succeeded state. Resource is in Updating state and the last operation that updated/is updating the resource is PutNetworkInterfaceOperation."
    );
    sim.script(
        "PUT",
        VM,
        vec![referenced_resource_not_provisioned(&message)],
    );
    sim
}

/// Waits until the first writer polls the NIC: it holds the VM's lease and waits.
async fn until_waiting(sim: &Sim) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while sim.count("GET", NIC, None) == 0 {
        assert!(Instant::now() < deadline, "the first writer never waited");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The fencing tokens the journal recorded for the VM's writes, in order.
fn tokens(journal: &Journal) -> Vec<Option<u64>> {
    let key = ResourceId::parse(VM).unwrap().key().to_owned();
    journal.for_resource(&key).iter().map(|e| e.token).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_past_the_ttl_stops_the_writer_that_lost_its_lease() {
    let redis = start_redis();
    let sim = first_writer_waits(Duration::from_millis(3500), Duration::from_secs(2)).await;
    let journal = Journal::default();
    let (a, b) = (
        writer(&redis, &journal).await,
        writer(&redis, &journal).await,
    );

    let first = tokio::spawn({
        let sim = sim.clone();
        async move { put(&a, &sim, "a").await }
    });
    until_waiting(&sim).await;
    // Frozen for twice the TTL: the first writer's lease expires in Redis meanwhile.
    redis.pause();
    tokio::time::sleep(2 * TTL).await;
    redis.resume();
    // The second writer gets the expired lease and writes while the NIC is still busy.
    let second = put(&b, &sim, "b").await;
    let first = first.await.unwrap();

    check_promises(&sim, &journal, &redis).await;
    assert_eq!(second, Ended::Status(200));
    assert!(
        matches!(first, Ended::LeaseLost(reason) if reason.contains("TTL")),
        "the first writer went on under a lease it had lost: {first:?}"
    );
    // It stopped before resending: its only PUT is the one answered 409.
    assert_eq!(sim.count("PUT", VM, Some(409)), 1);
    assert_eq!(sim.count("PUT", VM, Some(200)), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_keeps_tokens_growing_and_stops_the_old_holder() {
    let mut redis = start_redis();
    let sim = first_writer_waits(Duration::from_millis(2500), Duration::from_secs(3)).await;
    let journal = Journal::default();
    let a = writer(&redis, &journal).await;

    let first = tokio::spawn({
        let sim = sim.clone();
        async move { put(&a, &sim, "a").await }
    });
    until_waiting(&sim).await;
    // Every lease and every fencing counter is gone.
    redis.restart_empty();
    // A writer that connects now finds the key free, and writes while the NIC is still busy.
    let b = writer(&redis, &journal).await;
    let second = put(&b, &sim, "b").await;
    let first = first.await.unwrap();

    check_promises(&sim, &journal, &redis).await;
    assert_eq!(second, Ended::Status(200));
    assert!(
        matches!(first, Ended::LeaseLost(_)),
        "the first writer went on under a lease it had lost: {first:?}"
    );
    assert_eq!(sim.count("PUT", VM, Some(409)), 1);
    let tokens = tokens(&journal);
    assert!(
        matches!(tokens[..], [Some(before), Some(after)] if after > before),
        "the fencing token went backwards across the restart: {tokens:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_dropped_at_random_points_leave_nothing_behind() {
    let redis = start_redis();
    // Writes take 20 ms and are refused during a transition, as ARM does: a write dropped while
    // in flight still runs on the server, and only the server can refuse the next one then.
    let sim = sim_with_vm(Duration::from_millis(20)).await;
    let journal = Journal::default();
    let mut writers = Vec::new();
    for _ in 0..4 {
        writers.push(writer(&redis, &journal).await);
    }
    let mut rng = Rng::seeded();
    let tasks: Vec<_> = writers
        .into_iter()
        .map(|client| {
            let sim = sim.clone();
            let give_ups: Vec<u64> = (0..15).map(|_| rng.below(40)).collect();
            tokio::spawn(async move {
                let mut finished = 0;
                for (i, give_up) in give_ups.into_iter().enumerate() {
                    let tag = i.to_string();
                    let call = put(&client, &sim, &tag);
                    if let Ok(ended) =
                        tokio::time::timeout(Duration::from_millis(give_up), call).await
                    {
                        assert_eq!(ended, Ended::Status(200));
                        finished += 1;
                    }
                }
                finished
            })
        })
        .collect();
    let mut finished = 0;
    for task in tasks {
        finished += task.await.unwrap();
    }
    eprintln!("{finished} of 60 calls finished before their caller gave up");
    assert!(finished < 60, "no call was dropped");
    check_promises(&sim, &journal, &redis).await;
}
