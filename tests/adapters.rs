//! One behaviour matrix, run through every adapter — `ConflictMiddleware` (reqwest-middleware),
//! `ConflictLayer` (tower, over hyper-util's client) and `AzureConflictPolicy` (an azure_core
//! pipeline) — then what only one stack has. Each behaviour is written once, in `behaviour`, and
//! instantiated per stack by `matrix!`.

mod common;
#[path = "adapters/stacks.rs"]
mod stacks;

use std::time::Duration;

use arm_sim::{Scripted, Sim, SimConfig};
use common::*;
use reqwest_conflict::{ConflictKind, ConflictPolicy, Error, Outcome, PreconditionStrategy};
use serde_json::json;
use stacks::{Adapter, AzureStack, Failed, Put, ReqwestStack, TowerStack};

const COUNTER: &str = "/subscriptions/sub1/resourceGroups/rg1/providers/Microsoft.Sim/counters/c1";

async fn sim_with_vm(transition: Duration) -> Sim {
    let sim = Sim::start(SimConfig {
        transition,
        ..SimConfig::default()
    })
    .await;
    sim.seed(VM, vm_body("Standard_D2s_v3"));
    sim
}

/// Writes complete at once: for the ETag behaviours.
async fn sim_with_counter(counter: i64) -> Sim {
    let sim = Sim::start(SimConfig {
        transition: Duration::ZERO,
        ..SimConfig::default()
    })
    .await;
    sim.seed(COUNTER, json!({"properties": {"counter": counter}}));
    sim
}

fn busy() -> Scripted {
    Scripted::json(
        409,
        json!({"error": {"code": "AnotherOperationInProgress", "message": "Another operation on this or dependent resource is in progress."}}),
    )
}

fn scope_locked() -> serde_json::Value {
    json!({"error": {"code": "ScopeLocked", "message": "The scope '/subscriptions/sub1/resourceGroups/rg1' cannot perform write operation because following scope(s) are locked: '/subscriptions/sub1/resourceGroups/rg1'. Please remove the lock and try again."}})
}

fn put_statuses(sim: &Sim) -> Vec<u16> {
    sim.requests()
        .into_iter()
        .filter(|r| r.method == "PUT")
        .map(|r| r.status)
        .collect()
}

/// The behaviours every adapter must show, each generic over the stack.
mod behaviour {
    use super::*;

    pub async fn state_conflict_is_retried_only_after_the_transition_ended<A: Adapter>() {
        let sim = sim_with_vm(Duration::from_millis(150)).await;
        // Another writer starts the transition this PUT collides with.
        let other = reqwest::Client::new()
            .put(url(&sim, VM))
            .json(&vm_body("other"))
            .send()
            .await
            .unwrap();
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
        let retry = sim
            .requests()
            .into_iter()
            .rfind(|r| r.method == "PUT")
            .unwrap();
        assert!(
            retry.at >= ended,
            "retry at {:?} before the transition ended at {ended:?}",
            retry.at
        );
        let operation_polls = sim
            .requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path.contains("/operations/"))
            .count();
        assert!(operation_polls >= 1, "the operation URI was never polled");
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
        let puts: Vec<_> = sim
            .requests()
            .into_iter()
            .filter(|r| r.method == "PUT")
            .collect();
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
        let rule = ConflictPolicy::from_json(
            r#"{"prerequisites": [{
                "resource_type": "Microsoft.Compute/virtualMachines",
                "codes": ["OperationNotAllowed"],
                "message_contains": ["deallocat"],
                "action": { "method": "POST", "path": "deallocate" },
                "until": { "path": "instanceView", "pointer": "/statuses", "equals": "PowerState/deallocated" },
                "restore": { "method": "POST", "path": "start" },
                "restore_until": { "path": "instanceView", "pointer": "/statuses", "equals": "PowerState/running" }
            }]}"#,
        )
        .unwrap();
        let policy = ConflictPolicy {
            prerequisites: rule.prerequisites,
            ..fast_policy()
        };
        let resize = json!({"location": "westus", "properties": {"hardwareProfile": {"vmSize": "Standard_E8s_v5"}}});
        let outcome = A::new(policy)
            .put(Put::json(url(&sim, VM), &resize))
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

/// What only an azure_core pipeline has: its own retry policy beneath ours, errors for non-2xx
/// answers once a client library checks them, seekable stream bodies.
mod azure_core_pipeline {
    use super::*;
    use azure_core::http::{Body, headers::HeaderName};
    use azure_core::stream::BytesStream;
    use reqwest_conflict::AzureConflictPolicy;

    #[tokio::test]
    async fn its_retry_policy_leaves_the_409_alone_and_ours_retries_once_after_convergence() {
        let sim = sim_with_vm(Duration::from_millis(50)).await;
        sim.begin_transition(VM, "Updating", Some(Duration::from_millis(150)));
        let pipeline = AzureStack::pipeline(fast_policy());
        let (mut request, ctx, reports) =
            AzureStack::request(&Put::json(url(&sim, VM), &vm_body("x")));
        // Checked, as a client library sends: a 409 left unresolved would be an error.
        let response = pipeline.send(&ctx, &mut request, None).await.unwrap();
        assert_eq!(u16::from(response.status()), 200);
        let report = reports.last().expect("a report in the context");
        assert_eq!(report.outcome, Outcome::Resolved);
        assert_eq!(report.attempts, 2);

        // First PUT 409, polls, one retry PUT 200 — azure_core's retry policy added no PUT.
        let requests = sim.requests();
        let methods: Vec<_> = requests
            .iter()
            .map(|r| (r.method.as_str(), r.status))
            .collect();
        let (first, rest) = methods.split_first().unwrap();
        let (last, polls) = rest.split_last().unwrap();
        assert_eq!(*first, ("PUT", 409), "{methods:?}");
        assert_eq!(*last, ("PUT", 200), "{methods:?}");
        assert!(
            !polls.is_empty() && polls.iter().all(|p| *p == ("GET", 200)),
            "{methods:?}"
        );
        let ended = sim.transitions()[0].end.unwrap();
        assert!(requests.last().unwrap().at >= ended);
    }

    #[tokio::test]
    async fn its_retry_policy_still_retries_a_503_beneath_ours() {
        let sim = sim_with_vm(Duration::from_millis(50)).await;
        sim.begin_transition(VM, "Updating", Some(Duration::from_millis(100)));
        let unavailable = Scripted::json(
            503,
            json!({"error": {"code": "ServiceUnavailable", "message": "try again"}}),
        );
        sim.script("PUT", VM, vec![unavailable, busy()]);
        let pipeline = AzureStack::pipeline(fast_policy());
        let (mut request, ctx, reports) =
            AzureStack::request(&Put::json(url(&sim, VM), &vm_body("x")));
        let response = pipeline.send(&ctx, &mut request, None).await.unwrap();
        assert_eq!(u16::from(response.status()), 200);
        assert_eq!(reports.last().unwrap().outcome, Outcome::Resolved);
        assert_eq!(put_statuses(&sim), [503, 409, 200]);
    }

    #[tokio::test]
    async fn the_report_reaches_the_caller_when_the_409_becomes_an_error() {
        let sim = sim_with_vm(Duration::from_millis(50)).await;
        sim.script("PUT", VM, vec![Scripted::json(409, scope_locked())]);
        let pipeline = AzureStack::pipeline(fast_policy());
        let (mut request, ctx, reports) =
            AzureStack::request(&Put::json(url(&sim, VM), &vm_body("x")));
        let error = pipeline.send(&ctx, &mut request, None).await.unwrap_err();
        assert_eq!(error.http_status().map(u16::from), Some(409));
        let reports = reports.take();
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].kind, ConflictKind::Permanent);
        assert_eq!(reports[0].outcome, Outcome::Surfaced);
        assert_eq!(sim.requests().len(), 1);
    }

    #[tokio::test]
    async fn a_seekable_stream_body_is_reset_and_sent_again() {
        let sim = sim_with_vm(Duration::from_millis(50)).await;
        sim.begin_transition(VM, "Updating", Some(Duration::from_millis(100)));
        let pipeline = AzureStack::pipeline(fast_policy());
        let (mut request, ctx, reports) =
            AzureStack::request(&Put::json(url(&sim, VM), &vm_body("unused")));
        let body = vm_body("streamed").to_string();
        request.set_body(Body::SeekableStream(Box::new(BytesStream::new(body))));
        let response = pipeline.send(&ctx, &mut request, None).await.unwrap();
        assert_eq!(u16::from(response.status()), 200);
        assert_eq!(reports.last().unwrap().outcome, Outcome::Resolved);
        assert_eq!(put_statuses(&sim), [409, 200]);
        assert_eq!(sim.resource(VM).unwrap()["tags"]["build"], "streamed");
    }

    #[tokio::test]
    async fn giving_up_keeps_the_conflict_status_and_the_crate_error() {
        let sim = sim_with_vm(Duration::from_millis(10)).await;
        sim.begin_transition(VM, "Updating", None);
        let pipeline = AzureStack::pipeline(ConflictPolicy {
            deadline: Duration::from_millis(200),
            ..fast_policy()
        });
        let (mut request, ctx, _) = AzureStack::request(&Put::json(url(&sim, VM), &vm_body("x")));
        let error = pipeline.send(&ctx, &mut request, None).await.unwrap_err();
        assert_eq!(error.http_status().map(u16::from), Some(409));
        assert!(
            matches!(
                error.downcast_ref::<Error>(),
                Some(Error::NotConverged { .. })
            ),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn polls_carry_the_headers_of_the_call_but_not_its_preconditions() {
        let sim = sim_with_vm(Duration::from_millis(50)).await;
        sim.begin_transition(VM, "Updating", Some(Duration::from_millis(80)));
        let pipeline = AzureStack::pipeline(fast_policy());
        let put = Put::json(url(&sim, VM), &vm_body("x")).header("authorization", "Bearer t");
        let (mut request, ctx, _) = AzureStack::request(&put);
        request.insert_header(HeaderName::from_static("if-none-match"), "\"nope\"");
        pipeline.send(&ctx, &mut request, None).await.unwrap();
        let requests = sim.requests();
        assert!(requests.iter().any(|r| r.method == "GET"));
        assert!(
            requests
                .iter()
                .all(|r| r.authorization.as_deref() == Some("Bearer t"))
        );
        assert!(
            requests
                .iter()
                .filter(|r| r.method == "GET")
                .all(|r| r.if_none_match.is_none())
        );
    }

    #[test]
    fn the_policy_is_an_azure_core_policy() {
        fn policy(_: std::sync::Arc<dyn azure_core::http::policies::Policy>) {}
        policy(std::sync::Arc::new(AzureConflictPolicy::default()));
    }
}

/// What only tower has: readiness, inner layers, other client services.
mod tower_service {
    use super::*;
    use bytes::Bytes;
    use http_body_util::Full;
    use hyper_util::{client::legacy::Client, rt::TokioExecutor};
    use reqwest_conflict::{BoxError, ConflictLayer};
    use stacks::{from_box, tower_outcome};
    use tower::{Layer, ServiceBuilder, ServiceExt};

    fn put_request(sim: &Sim) -> http::Request<Full<Bytes>> {
        http::Request::put(url(sim, VM))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(vm_body("x").to_string())))
            .unwrap()
    }

    #[tokio::test]
    async fn retries_and_polls_go_through_inner_layers_each_polled_ready() {
        let sim = sim_with_vm(Duration::from_millis(50)).await;
        sim.begin_transition(VM, "Updating", Some(Duration::from_millis(100)));
        sim.script("PUT", VM, vec![busy()]);
        // A concurrency limit panics when called without being polled ready; the auth layer
        // stands for any layer inside ours.
        let service = ServiceBuilder::new()
            .layer(ConflictLayer::new(fast_policy()))
            .concurrency_limit(1)
            .map_request(|mut request: http::Request<Full<Bytes>>| {
                request
                    .headers_mut()
                    .insert("authorization", "Bearer inner".parse().unwrap());
                request
            })
            .service(Client::builder(TokioExecutor::new()).build_http());
        let response = service.oneshot(put_request(&sim)).await.unwrap();
        let outcome = tower_outcome(response).await.unwrap();
        assert_eq!(outcome.status, 200);
        assert_eq!(outcome.report().outcome, Outcome::Resolved);
        let requests = sim.requests();
        assert!(requests.iter().filter(|r| r.method == "GET").count() >= 1);
        assert!(
            requests
                .iter()
                .all(|r| r.authorization.as_deref() == Some("Bearer inner"))
        );
    }

    #[tokio::test]
    async fn a_reqwest_client_wrapped_as_a_service_works_too() {
        let sim = sim_with_vm(Duration::from_millis(50)).await;
        sim.begin_transition(VM, "Updating", Some(Duration::from_millis(100)));
        sim.script("PUT", VM, vec![busy()]);
        let client = reqwest::Client::new();
        let reqwest_service = tower::service_fn(move |request: http::Request<reqwest::Body>| {
            let client = client.clone();
            async move {
                let response = client.execute(reqwest::Request::try_from(request)?).await?;
                Ok::<_, BoxError>(http::Response::<reqwest::Body>::from(response))
            }
        });
        let service = ServiceBuilder::new()
            .layer(ConflictLayer::new(fast_policy()))
            .service(reqwest_service);
        let request = http::Request::put(url(&sim, VM))
            .header("content-type", "application/json")
            .body(reqwest::Body::from(vm_body("x").to_string()))
            .unwrap();
        let response = service.oneshot(request).await.map_err(from_box);
        let outcome = tower_outcome(response.unwrap()).await.unwrap();
        assert_eq!(outcome.status, 200);
        assert_eq!(outcome.report().outcome, Outcome::Resolved);
        assert_eq!(put_statuses(&sim), [409, 200]);
    }

    #[tokio::test]
    async fn reads_pass_straight_through() {
        let sim = sim_with_vm(Duration::from_millis(50)).await;
        let service = ConflictLayer::new(fast_policy())
            .layer(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
        let request = http::Request::get(url(&sim, VM))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let outcome = tower_outcome(service.oneshot(request).await.unwrap())
            .await
            .unwrap();
        assert_eq!(outcome.status, 200);
        assert!(outcome.report.is_none());
        assert_eq!(outcome.json()["tags"]["build"], "Standard_D2s_v3");
        assert_eq!(sim.requests().len(), 1);
    }
}
