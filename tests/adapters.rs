//! One behaviour matrix, run through every adapter — `ConflictMiddleware` (reqwest-middleware),
//! `ConflictLayer` (tower, over hyper-util's client) and `AzureConflictPolicy` (an azure_core
//! pipeline) — then what only one stack has. Each behaviour is written once, in `behaviour`, and
//! instantiated per stack by `matrix!`.

#[path = "adapters/stacks.rs"]
mod stacks;
mod support;

use std::time::Duration;

use arm_sim::{Scripted, Sim};
use reqwest_conflict::{ConflictKind, ConflictPolicy, Error, Outcome, PreconditionStrategy};
use serde_json::json;
use stacks::{Adapter, AzureStack, Failed, Put, ReqwestStack, TowerStack};
use support::*;

/// The behaviours every adapter must show, each generic over the stack.
mod behaviour {
    use super::*;

    pub async fn state_conflict_is_retried_only_after_the_transition_ended<A: Adapter>() {
        let sim = sim_with_vm(Duration::from_millis(150)).await;
        // Another writer starts the transition this PUT collides with.
        let other = put_by_another_writer(&sim, VM, &vm_body("other")).await;
        assert_eq!(other.status(), 200);

        let outcome = A::new(fast_policy())
            .put(Put::json(url(&sim, VM), &vm_body("mine")))
            .await
            .unwrap();
        assert_eq!(outcome.status, 200);
        let report = outcome.report();
        assert_eq!(report.kind, ConflictKind::StateConflict);
        assert_eq!(report.code.as_deref(), Some("AnotherOperationInProgress"));
        assert_eq!(report.outcome, Outcome::Resolved);
        assert_eq!((report.attempts, report.conflicts), (2, 1));
        assert!(report.polls >= 1);
        assert_eq!(report.last_state(), Some("Succeeded"));
        assert_eq!(outcome.json()["tags"]["build"], "mine");

        assert_eq!(put_statuses(&sim), [200, 409, 200]);
        let ended = sim.transitions()[0]
            .end
            .expect("the first transition ended");
        let retry = last_put(&sim);
        assert!(
            retry.at >= ended,
            "retry at {:?} before the transition ended at {ended:?}",
            retry.at
        );
        assert!(
            operation_polls(&sim) >= 1,
            "the operation URI was never polled"
        );
        assert_eq!(sim.overlapping_transitions(), 0);
    }

    pub async fn without_an_operation_uri_the_resource_is_polled_with_its_query<A: Adapter>() {
        let sim = sim_with_vm(Duration::from_millis(50)).await;
        sim.begin_transition(VM, "Updating", Some(Duration::from_millis(120)));
        sim.script("PUT", VM, vec![busy()]);
        let outcome = A::new(fast_policy())
            .put(Put::json(url(&sim, VM), &vm_body("x")))
            .await
            .unwrap();
        assert_eq!(outcome.status, 200);
        let report = outcome.report();
        assert_eq!(report.outcome, Outcome::Resolved);
        assert_eq!(report.states.first().map(String::as_str), Some("Updating"));
        assert!(sim.count("GET", VM, Some(200)) >= 2);
        let gets: Vec<_> = sim
            .requests()
            .into_iter()
            .filter(|r| r.method == "GET")
            .collect();
        assert!(
            gets.iter().all(|r| r.query.as_deref() == Some(API)),
            "{gets:?}"
        );
        assert_eq!(put_statuses(&sim), [409, 200]);
    }

    pub async fn permanent_conflict_reaches_the_server_once<A: Adapter>() {
        let sim = sim_with_vm(Duration::from_millis(50)).await;
        sim.script("PUT", VM, vec![Scripted::json(409, scope_locked())]);
        let outcome = A::new(fast_policy())
            .put(Put::json(url(&sim, VM), &vm_body("x")))
            .await
            .unwrap();
        assert_eq!(outcome.status, 409);
        let report = outcome.report();
        assert_eq!(report.kind, ConflictKind::Permanent);
        assert_eq!(report.outcome, Outcome::Surfaced);
        assert_eq!((report.attempts, report.polls), (1, 0));
        assert_eq!(
            outcome.json(),
            scope_locked(),
            "the caller gets the server's own body"
        );
        assert_eq!(
            sim.requests().len(),
            1,
            "exactly one request reached the server"
        );
    }

    pub async fn stale_if_match_is_surfaced_by_default<A: Adapter>() {
        let sim = sim_with_vm(Duration::from_millis(50)).await;
        let put = Put::json(url(&sim, VM), &vm_body("x")).header("If-Match", "\"not-the-etag\"");
        let outcome = A::new(fast_policy()).put(put).await.unwrap();
        assert_eq!(outcome.status, 412);
        let report = outcome.report();
        assert_eq!(report.kind, ConflictKind::StalePrecondition);
        assert_eq!(report.outcome, Outcome::Surfaced);
        assert!(report.fresh_etag.is_some(), "the fresh ETag is reported");
        assert_eq!(outcome.json()["error"]["code"], "PreconditionFailed");
        assert_eq!(put_statuses(&sim), [412], "not sent again");
    }

    pub async fn a_per_request_overwrite_resends_with_the_fresh_etag<A: Adapter>() {
        let sim = sim_with_counter(0).await;
        let fresh = reqwest::Client::new()
            .get(url(&sim, COUNTER))
            .send()
            .await
            .unwrap();
        let fresh_etag = fresh.headers()["etag"].to_str().unwrap().to_owned();
        let put = Put::json(url(&sim, COUNTER), &json!({"properties": {"counter": 5}}))
            .header("If-Match", "\"stale\"")
            .strategy(PreconditionStrategy::Overwrite);
        let outcome = A::new(fast_policy()).put(put).await.unwrap();
        assert_eq!(outcome.status, 200);
        assert_eq!(outcome.report().outcome, Outcome::Resolved);
        assert_eq!(sim.resource(COUNTER).unwrap()["properties"]["counter"], 5);
        let puts = puts(&sim);
        assert_eq!(
            puts.iter().map(|r| r.status).collect::<Vec<_>>(),
            [412, 200]
        );
        assert_eq!(puts[1].if_match.as_deref(), Some(fresh_etag.as_str()));
    }

    pub async fn a_write_already_applied_is_answered_with_the_fresh_representation<A: Adapter>() {
        // The write's first answer was lost; the caller sends it again with the ETag it had.
        let sim = sim_with_counter(1).await;
        let put = Put::json(url(&sim, COUNTER), &json!({"properties": {"counter": 1}}))
            .header("If-Match", "\"before-the-lost-write\"");
        let outcome = A::new(fast_policy()).put(put).await.unwrap();
        assert_eq!(outcome.status, 200);
        assert_eq!(outcome.report().outcome, Outcome::AlreadyApplied);
        assert_eq!(outcome.json()["properties"]["counter"], 1);
        assert_eq!(put_statuses(&sim), [412], "not written again");
    }

    pub async fn a_prerequisite_action_goes_through_the_stack<A: Adapter>() {
        // A resize the VM's cluster cannot host: deallocate, resize, start again.
        let sim = sim_with_vm(Duration::from_millis(30)).await;
        let policy = ConflictPolicy {
            prerequisites: shipped_prerequisites(),
            ..fast_policy()
        };
        let outcome = A::new(policy)
            .put(Put::json(url(&sim, VM), &sized_vm("Standard_E8s_v5")))
            .await
            .unwrap();
        assert_eq!(
            outcome.status,
            200,
            "{}",
            String::from_utf8_lossy(&outcome.body)
        );
        assert_eq!(outcome.report().kind, ConflictKind::PrerequisiteRequired);
        let posts: Vec<_> = sim
            .requests()
            .into_iter()
            .filter(|r| r.method == "POST")
            .map(|r| (r.path.rsplit('/').next().unwrap().to_owned(), r.status))
            .collect();
        assert_eq!(posts.len(), 2, "{posts:?}");
        assert!(
            posts[0].0 == "deallocate" && posts[1].0 == "start",
            "{posts:?}"
        );
        assert_eq!(put_statuses(&sim), [409, 200]);
        let vm = sim.resource(VM).unwrap();
        assert_eq!(
            vm["properties"]["hardwareProfile"]["vmSize"],
            "Standard_E8s_v5"
        );
    }

    /// With `leases.fence_with_etag`, the first send already carries the `If-Match` the engine
    /// read under the lease, through every stack.
    pub async fn a_fenced_write_carries_the_etag_it_read<A: Adapter>() {
        let sim = sim_with_vm(Duration::from_millis(10)).await;
        let etag = sim.resource(VM).unwrap()["etag"]
            .as_str()
            .unwrap()
            .to_owned();
        let mut policy = fast_policy();
        policy.leases.fence_with_etag = true;
        let outcome = A::new(policy)
            .put(Put::json(url(&sim, VM), &vm_body("x")))
            .await
            .unwrap();
        assert_eq!(outcome.status, 200);
        let puts: Vec<_> = (sim.requests().into_iter())
            .filter(|r| r.method == "PUT")
            .collect();
        assert_eq!(puts.len(), 1);
        assert_eq!(puts[0].if_match.as_deref(), Some(etag.as_str()));
    }

    pub async fn success_passes_through_without_a_report<A: Adapter>() {
        let sim = sim_with_vm(Duration::from_millis(10)).await;
        let outcome = A::new(fast_policy())
            .put(Put::json(url(&sim, VM), &vm_body("x")))
            .await
            .unwrap();
        assert_eq!(outcome.status, 200);
        assert!(outcome.report.is_none());
        assert_eq!(outcome.json()["tags"]["build"], "x");
        assert_eq!(sim.requests().len(), 1);
    }

    pub async fn a_state_that_never_converges_fails_with_not_converged<A: Adapter>() {
        let sim = sim_with_vm(Duration::from_millis(10)).await;
        sim.begin_transition(VM, "Updating", None);
        sim.script("PUT", VM, vec![busy()]);
        let policy = ConflictPolicy {
            deadline: Duration::from_millis(300),
            ..fast_policy()
        };
        let failed = A::new(policy)
            .put(Put::json(url(&sim, VM), &vm_body("x")))
            .await
            .unwrap_err();
        match failed {
            Failed::Conflict(Error::NotConverged {
                last_state,
                attempts,
                classification,
                ..
            }) => {
                assert_eq!(last_state.as_deref(), Some("Updating"));
                assert_eq!(attempts, 1);
                assert_eq!(classification.unwrap().kind, ConflictKind::StateConflict);
            }
            other => panic!("expected NotConverged, got {other:?}"),
        }
        assert_eq!(sim.count("PUT", VM, None), 1, "no retry after the deadline");
    }

    pub async fn a_body_that_cannot_be_copied_is_sent_once<A: Adapter>() {
        if !A::has_unclonable_bodies() {
            return;
        }
        let sim = sim_with_vm(Duration::from_millis(50)).await;
        sim.begin_transition(VM, "Updating", Some(Duration::from_millis(50)));
        sim.script("PUT", VM, vec![busy()]);
        let put = Put::json(url(&sim, VM), &vm_body("x")).streamed();
        let outcome = A::new(fast_policy()).put(put).await.unwrap();
        assert_eq!(outcome.status, 409);
        let report = outcome.report();
        assert_eq!(report.kind, ConflictKind::StateConflict);
        assert_eq!(report.outcome, Outcome::NotRetryable);
        assert_eq!(
            sim.requests().len(),
            1,
            "no poll either: nothing could be retried"
        );
    }
}

macro_rules! behaviours {
    ($stack:ty: $($behaviour:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $behaviour() {
                crate::behaviour::$behaviour::<$stack>().await;
            }
        )*
    };
}

macro_rules! matrix {
    ($($module:ident => $stack:ty),* $(,)?) => {
        $(
            mod $module {
                behaviours!($stack:
                    state_conflict_is_retried_only_after_the_transition_ended,
                    without_an_operation_uri_the_resource_is_polled_with_its_query,
                    permanent_conflict_reaches_the_server_once,
                    stale_if_match_is_surfaced_by_default,
                    a_per_request_overwrite_resends_with_the_fresh_etag,
                    a_write_already_applied_is_answered_with_the_fresh_representation,
                    a_prerequisite_action_goes_through_the_stack,
                    success_passes_through_without_a_report,
                    a_fenced_write_carries_the_etag_it_read,
                    a_state_that_never_converges_fails_with_not_converged,
                    a_body_that_cannot_be_copied_is_sent_once,
                );
            }
        )*
    };
}

matrix! {
    via_reqwest_middleware => crate::ReqwestStack,
    via_tower => crate::TowerStack,
    via_azure_core => crate::AzureStack,
}

/// What only an azure_core pipeline has.
#[path = "adapters/azure_core.rs"]
mod azure_core_pipeline;

/// What only tower has.
#[path = "adapters/tower.rs"]
mod tower_service;
