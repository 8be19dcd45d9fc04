//! `leases.fence_with_etag` against a real Redis: a writer whose lease ran out while its write
//! was on the way is refused by the resource itself, where the lease store could not stop it.
//!
//! Two writers, each with a Redis connection of its own as separate processes would have,
//! increment a counter by reading it and writing it back (no `If-Match` of their own). Writer A
//! takes its lease, passes the engine's last check, and its PUT stalls on the way (a middleware
//! below the engine holds it, as a paused process or a slow network would). Redis is frozen for
//! twice the lease TTL meanwhile, so A's lease expires; writer B then takes it and writes. When
//! A's PUT lands:
//! - fenced, it carries `If-Match` on the ETag A read under its lease, which B's write changed:
//!   the simulator answers 412, and A ends with `Error::LeaseLost`. No update is lost and no
//!   two transitions overlap;
//! - unfenced, the same PUT overwrites B's write: the simulator counts one lost update (the
//!   counter did not move by one) and two overlapping transitions.
//!
//! The simulator accepts writes during a transition (only the writers' discipline keeps them
//! apart) and B's transition lasts a minute, so A's PUT always lands inside it: the scenario is
//! ordered by signals, not by timing.

#![cfg(feature = "redis")]

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use arm_sim::{Sim, SimConfig};
use reqwest_conflict::{ConflictMiddleware, ConflictPolicy, Error, RedisLeases};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware, Middleware, Next};
use serde_json::json;
use support::*;
use tokio::sync::Notify;

const TTL: Duration = Duration::from_secs(1);

fn policy(fence: bool) -> ConflictPolicy {
    let mut policy = fast_policy();
    policy.leases.ttl = TTL;
    policy.leases.fence_with_etag = fence;
    policy
}

/// Holds the first PUT that passes through it until released: a write already checked against
/// its lease and on its way to the server.
#[derive(Clone, Default)]
struct Stall {
    /// Signalled when the first PUT arrives.
    arrived: Arc<Notify>,
    /// Lets it go on.
    release: Arc<Notify>,
    used: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl Middleware for Stall {
    async fn handle(
        &self,
        req: reqwest::Request,
        extensions: &mut http::Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        if req.method() == reqwest::Method::PUT && !self.used.swap(true, Ordering::SeqCst) {
            self.arrived.notify_one();
            self.release.notified().await;
        }
        next.run(req, extensions).await
    }
}

/// A writer with a Redis connection of its own; `stall`, when given, sits below the engine.
async fn writer(redis: &Redis, fence: bool, stall: Option<Stall>) -> ClientWithMiddleware {
    let leases = RedisLeases::new(&redis.url(), "fencing:").await.unwrap();
    let builder = ClientBuilder::new(reqwest::Client::new())
        .with(ConflictMiddleware::new(policy(fence)).with_leases(leases));
    match stall {
        Some(stall) => builder.with(stall).build(),
        None => builder.build(),
    }
}

/// The counter as a read outside the middleware shows it.
async fn read_counter(sim: &Sim) -> i64 {
    let doc: serde_json::Value = reqwest::get(url(sim, COUNTER))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    doc["properties"]["counter"].as_i64().expect("a counter")
}

/// How a write ended: its status, or whether the engine ended it with a lost lease.
#[derive(Debug, PartialEq)]
enum Write {
    Status(u16),
    LeaseLost,
}

/// Writes the counter `seen` plus one through `client`.
async fn increment(client: &ClientWithMiddleware, sim: &Sim, seen: i64) -> Write {
    let body = json!({"properties": {"counter": seen + 1}});
    let sent = client.put(url(sim, COUNTER)).json(&body).send();
    let limit = hang_limit(&policy(true));
    match tokio::time::timeout(limit, sent).await {
        Err(_) => panic!("the write hung"),
        Ok(Ok(resp)) => Write::Status(resp.status().as_u16()),
        Ok(Err(e)) => match engine_error(&e) {
            Error::LeaseLost { .. } => Write::LeaseLost,
            other => panic!("the write failed: {other}"),
        },
    }
}

/// How the scenario ended: A's write, B's write, and the simulator.
struct Ended {
    a: Write,
    b: Write,
    sim: Sim,
}

/// The scenario of this file's header, with the fence on or off for both writers.
async fn a_write_lands_after_its_lease_ran_out(fence: bool) -> Ended {
    let redis = start_redis();
    let sim = Sim::start(SimConfig {
        transition: Duration::from_secs(60),
        reject_during_transition: false,
        ..SimConfig::default()
    })
    .await;
    sim.seed(COUNTER, json!({"properties": {"counter": 0}}));
    let stall = Stall::default();
    let a = writer(&redis, fence, Some(stall.clone())).await;
    let b = writer(&redis, fence, None).await;

    let seen_by_a = read_counter(&sim).await;
    let first = tokio::spawn({
        let sim = sim.clone();
        async move { increment(&a, &sim, seen_by_a).await }
    });
    stall.arrived.notified().await;
    // A's write is on its way. Frozen for twice the TTL, Redis lets A's lease expire.
    redis.pause();
    tokio::time::sleep(2 * TTL).await;
    redis.resume();
    // B takes the expired lease and writes; A's write has not landed yet.
    let seen_by_b = read_counter(&sim).await;
    let b = increment(&b, &sim, seen_by_b).await;
    stall.release.notify_one();
    let a = first.await.unwrap();
    Ended { a, b, sim }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_fence_the_resource_refuses_the_writer_whose_lease_ran_out() {
    let Ended { a, b, sim } = a_write_lands_after_its_lease_ran_out(true).await;

    assert_eq!(b, Write::Status(200));
    assert_eq!(a, Write::LeaseLost, "the stale holder was not refused");
    assert_eq!(sim.lost_updates(), 0);
    assert_eq!(sim.overlapping_transitions(), 0, "{:#?}", sim.transitions());
    assert_eq!(read_counter(&sim).await, 1);
    // B's write, then A's refused by the resource; each after a read of the ETag.
    assert_eq!(put_statuses(&sim), [200, 412]);
    for put in puts(&sim) {
        assert!(put.if_match.is_some(), "{put:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_fence_the_same_pause_loses_an_update() {
    let Ended { a, b, sim } = a_write_lands_after_its_lease_ran_out(false).await;

    assert_eq!(b, Write::Status(200));
    // The lease store could not stop a write already on its way: it overwrote B's.
    assert_eq!(a, Write::Status(200));
    assert_eq!(sim.lost_updates(), 1);
    assert_eq!(sim.overlapping_transitions(), 1, "{:#?}", sim.transitions());
    assert_eq!(read_counter(&sim).await, 1, "two increments, one counted");
    assert_eq!(put_statuses(&sim), [200, 200]);
}
