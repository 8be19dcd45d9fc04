//! Stale preconditions (412): re-fetch, strategies, the `update` loop — and no lost updates.

mod support;

use std::time::Duration;

use arm_sim::Sim;
use reqwest_conflict::{
    ConflictKind, ConflictPolicy, Outcome, PollSchedule, PreconditionStrategy, UpdateOptions,
    update_with,
};
use reqwest_middleware::{ClientWithMiddleware, RequestBuilder};
use serde_json::{Value, json};
use support::*;

// Every simulator here is an `instant_sim`: these tests are about ETags, not transitions.

fn policy(strategy: PreconditionStrategy) -> ConflictPolicy {
    ConflictPolicy {
        precondition: strategy,
        ..fast_policy()
    }
}

async fn get(sim: &Sim, client: &ClientWithMiddleware) -> (String, Value) {
    let resp = client.get(url(sim, COUNTER)).send().await.unwrap();
    let etag = resp.headers()["etag"].to_str().unwrap().to_owned();
    (etag, resp.json().await.unwrap())
}

/// A PUT of `body` to the counter with `If-Match: etag`, ready to send through `client`.
fn put_if_match(
    client: &ClientWithMiddleware,
    sim: &Sim,
    etag: &str,
    body: &Value,
) -> RequestBuilder {
    client
        .put(url(sim, COUNTER))
        .header("If-Match", etag)
        .json(body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_writers_fifty_increments_through_update_lose_nothing() {
    let sim = sim_with_counter(0).await;
    let client = client(fast_policy());
    let options = UpdateOptions {
        max_attempts: 10_000,
        deadline: Duration::from_secs(120),
        backoff: PollSchedule {
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(20),
            factor: 2.0,
            jitter: true,
        },
        ..UpdateOptions::default()
    };
    let writers: Vec<_> = (0..16)
        .map(|_| {
            let (client, url, options) = (client.clone(), url(&sim, COUNTER), options.clone());
            tokio::spawn(async move {
                for _ in 0..50 {
                    update_with(&client, &url, &options, |r| {
                        let n = r["properties"]["counter"].as_i64().ok_or("no counter")?;
                        r["properties"]["counter"] = json!(n + 1);
                        Ok(())
                    })
                    .await
                    .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let final_value = sim.resource(COUNTER).unwrap()["properties"]["counter"].as_i64();
    assert_eq!(final_value, Some(800));
    assert_eq!(
        sim.lost_updates(),
        0,
        "a write based on a stale read succeeded"
    );
    assert!(
        sim.count("PUT", COUNTER, Some(412)) > 0,
        "the writers never contended"
    );
    assert_eq!(sim.count("PUT", COUNTER, Some(200)), 800);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overwrite_without_read_modify_write_discipline_loses_updates() {
    // The control for the test above: the simulator's audit does catch lost updates.
    let sim = sim_with_counter(0).await;
    let client = client(policy(PreconditionStrategy::Overwrite));
    let writers: Vec<_> = (0..16)
        .map(|_| {
            let (client, sim) = (client.clone(), sim.clone());
            tokio::spawn(async move {
                for _ in 0..50 {
                    let (etag, mut r) = get(&sim, &client).await;
                    tokio::task::yield_now().await;
                    let n = r["properties"]["counter"].as_i64().unwrap();
                    r["properties"]["counter"] = json!(n + 1);
                    let resp = put_if_match(&client, &sim, &etag, &r).send().await.unwrap();
                    assert!(
                        resp.status().is_success(),
                        "overwrite always lands: {}",
                        resp.status()
                    );
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let final_value = sim.resource(COUNTER).unwrap()["properties"]["counter"]
        .as_i64()
        .unwrap();
    assert!(
        final_value < 800,
        "no update was lost ({final_value}); the control proves nothing"
    );
    assert!(sim.lost_updates() > 0);
}

/// With the counter at `seed`: our read through a client that merges (remembered by the
/// middleware as the merge base), another writer's change of that read landing meanwhile, then
/// our change of the same read sent with the read's ETag; our answer.
async fn merge_over_another_write(
    sim: &Sim,
    seed: Value,
    theirs: impl FnOnce(&mut Value),
    ours: impl FnOnce(&mut Value),
) -> reqwest::Response {
    sim.seed(COUNTER, seed);
    let client = client(policy(PreconditionStrategy::Merge));
    let (etag, read) = get(sim, &client).await;
    let mut changed = read.clone();
    theirs(&mut changed);
    put_by_another_writer(sim, COUNTER, &changed).await;

    let mut changed = read;
    ours(&mut changed);
    put_if_match(&client, sim, &etag, &changed)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn merge_lands_disjoint_changes() {
    let sim = instant_sim().await;
    let resp = merge_over_another_write(
        &sim,
        json!({"tags": {"a": "1"}, "properties": {"size": "S", "counter": 0}}),
        // Another writer changes the size meanwhile.
        |theirs| theirs["properties"]["size"] = json!("M"),
        |ours| ours["tags"]["b"] = json!("2"),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let report = report(&resp);
    assert_eq!(report.kind, ConflictKind::StalePrecondition);
    assert_eq!(report.outcome, Outcome::Resolved);
    let now = sim.resource(COUNTER).unwrap();
    assert_eq!(
        now["properties"]["size"], "M",
        "the other writer's change was lost"
    );
    assert_eq!(now["tags"]["b"], "2", "our change was lost");
    assert_eq!(now["tags"]["a"], "1");
    assert_eq!(sim.count("PUT", COUNTER, Some(412)), 1);
}

#[tokio::test]
async fn merge_surfaces_overlapping_changes_with_their_paths() {
    let sim = instant_sim().await;
    let resp = merge_over_another_write(
        &sim,
        json!({"tags": {"a": "1"}, "properties": {"counter": 0}}),
        |theirs| {
            theirs["tags"]["a"] = json!("theirs");
            theirs["properties"]["counter"] = json!(1);
        },
        |ours| {
            ours["tags"]["a"] = json!("ours");
            ours["properties"]["counter"] = json!(7);
        },
    )
    .await;
    assert_eq!(resp.status(), 412);
    let report = report(&resp);
    assert_eq!(report.outcome, Outcome::Surfaced);
    assert_eq!(report.conflicting_paths, ["/properties/counter", "/tags/a"]);
    assert_eq!(sim.resource(COUNTER).unwrap()["tags"]["a"], "theirs");
    assert_eq!(sim.count("PUT", COUNTER, None), 2, "nothing resent");
}

#[tokio::test]
async fn a_write_whose_answer_was_lost_is_recognised_as_already_applied() {
    let sim = sim_with_counter(0).await;
    let client = client(fast_policy());
    let (etag, _) = get(&sim, &client).await;
    let body = json!({"properties": {"counter": 1}});
    sim.drop_next_response("PUT", COUNTER);
    let lost = put_if_match(&client, &sim, &etag, &body).send().await;
    assert!(lost.is_err(), "the first answer should have been lost");
    assert_eq!(
        sim.resource(COUNTER).unwrap()["properties"]["counter"],
        1,
        "yet it landed"
    );

    // The caller retries the same write with the same (now stale) ETag.
    let resp = put_if_match(&client, &sim, &etag, &body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let report = report(&resp);
    assert_eq!(report.kind, ConflictKind::StalePrecondition);
    assert_eq!(report.outcome, Outcome::AlreadyApplied);
    let answered: Value = resp.json().await.unwrap();
    assert_eq!(answered["properties"]["counter"], 1);
    assert_eq!(
        sim.count("PUT", COUNTER, None),
        2,
        "not written a third time"
    );
    assert_eq!(sim.lost_updates(), 0);
}

#[tokio::test]
async fn a_per_request_strategy_beats_the_policy() {
    let sim = sim_with_counter(0).await;
    let client = client(policy(PreconditionStrategy::Surface));
    let stale = "\"stale\"";
    let body = json!({"properties": {"counter": 5}});

    let surfaced = put_if_match(&client, &sim, stale, &body)
        .send()
        .await
        .unwrap();
    assert_eq!(surfaced.status(), 412);

    let overwritten = put_if_match(&client, &sim, stale, &body)
        .with_extension(PreconditionStrategy::Overwrite)
        .send()
        .await
        .unwrap();
    assert_eq!(overwritten.status(), 200);
    assert_eq!(report(&overwritten).outcome, Outcome::Resolved);
    assert_eq!(sim.resource(COUNTER).unwrap()["properties"]["counter"], 5);
}

#[tokio::test]
async fn create_only_requests_are_never_retried_even_with_overwrite() {
    let sim = sim_with_counter(0).await;
    let client = client(policy(PreconditionStrategy::Overwrite));
    let resp = client
        .put(url(&sim, COUNTER))
        .header("If-None-Match", "*")
        .json(&json!({"properties": {"counter": 9}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 412);
    assert_eq!(report(&resp).kind, ConflictKind::AlreadyExists);
    assert_eq!(sim.requests().len(), 1);
    assert_eq!(sim.resource(COUNTER).unwrap()["properties"]["counter"], 0);
}
