//! State conflicts (409) resolved through `ConflictMiddleware`, proven by what the simulator saw.

mod support;

use std::time::Duration;

use arm_sim::{Scripted, Sim, SimConfig};
use reqwest_conflict::{ConflictKind, ConflictReport, Error, Outcome};
use serde_json::json;
use support::*;

#[tokio::test]
async fn retry_is_sent_only_after_the_operation_reached_a_terminal_state() {
    let sim = sim_with_vm(Duration::from_millis(150)).await;
    // Another writer starts a transition the middleware's PUT will collide with.
    let other = put_by_another_writer(&sim, VM, &vm_body("Standard_D2s_v3")).await;
    assert_eq!(other.status(), 200);

    let resp = put_vm(&client(fast_policy()), &sim, "Standard_D4s_v3").await;
    assert_eq!(resp.status(), 200);
    let report = report(&resp);
    assert_eq!(report.kind, ConflictKind::StateConflict);
    assert_eq!(report.code.as_deref(), Some("AnotherOperationInProgress"));
    assert_eq!(report.outcome, Outcome::Resolved);
    assert_eq!(report.attempts, 2);
    assert_eq!(report.conflicts, 1);
    assert!(report.polls >= 1);
    assert_eq!(report.last_state(), Some("Succeeded"));
    assert!(report.lease_token.is_some(), "leases are on by default");
    assert!(report.journal_seq.is_some());

    // Server side: the operations URI was polled, and the retry came after the transition ended.
    let first = &sim.transitions()[0];
    let ended = first.end.expect("the first transition ended");
    let puts = puts(&sim);
    assert_eq!(
        puts.iter().map(|r| r.status).collect::<Vec<_>>(),
        [200, 409, 200]
    );
    assert!(
        puts[2].at >= ended,
        "retry at {:?} before the transition ended at {ended:?}",
        puts[2].at
    );
    assert!(
        operation_polls(&sim) >= 1,
        "the operation URI was never polled"
    );
    assert_eq!(
        sim.count("GET", VM, None),
        0,
        "the operation URI, not the resource, is polled"
    );
    assert_eq!(sim.overlapping_transitions(), 0);
}

#[tokio::test]
async fn without_an_operation_uri_the_resource_itself_is_polled() {
    let sim = sim_with_vm(Duration::from_millis(100)).await;
    sim.begin_transition(VM, "Updating", Some(Duration::from_millis(120)));
    sim.script(
        "PUT",
        VM,
        vec![Scripted::json(
            409,
            json!({"error": {"code": "Conflict", "message": "The operation cannot be performed while the resource is in its current state (Updating)."}}),
        )],
    );
    let resp = put_vm(&client(fast_policy()), &sim, "Standard_D4s_v3").await;
    assert_eq!(resp.status(), 200);
    let report = report(&resp);
    assert_eq!(report.outcome, Outcome::Resolved);
    assert_eq!(report.states.first().map(String::as_str), Some("Updating"));
    assert_eq!(report.last_state(), Some("Succeeded"));

    let gets = sim.count("GET", VM, Some(200));
    assert!(gets >= 2, "expected polls of the resource, saw {gets}");
    // The re-fetch keeps the request's api-version.
    assert!(
        sim.requests()
            .iter()
            .filter(|r| r.method == "GET")
            .all(|r| r.query.as_deref() == Some(API))
    );
    let ended = sim.transitions()[0].end.unwrap();
    let retry = last_put(&sim);
    assert!(retry.at >= ended);
}

#[tokio::test]
async fn referenced_resource_is_polled_when_the_error_names_it() {
    let sim = sim_with_vm(Duration::from_millis(50)).await;
    sim.seed(NIC, json!({"location": "westus", "properties": {}}));
    sim.begin_transition(SUBNET, "Updating", Some(Duration::from_millis(150)));
    let message = format!(
        "Resource {SUBNET} referenced by resource {NIC} was not found or is not in Succeeded state. Resource is in Updating state and the last operation that updated/is updating the resource is PutSubnetOperation."
    );
    sim.script(
        "PUT",
        NIC,
        vec![referenced_resource_not_provisioned(&message)],
    );
    let resp = client(fast_policy())
        .put(url(&sim, NIC))
        .json(&json!({"location": "westus", "properties": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let report = report(&resp);
    assert_eq!(
        report.classification.referenced_resource.as_deref(),
        Some(SUBNET)
    );
    assert_eq!(report.outcome, Outcome::Resolved);
    assert!(
        sim.count("GET", SUBNET, None) >= 1,
        "the subnet was never polled"
    );
    assert_eq!(sim.count("GET", NIC, None), 0);
    let subnet_ready = sim
        .transitions()
        .iter()
        .find(|t| t.resource.ends_with("subnets/default"))
        .unwrap()
        .end
        .unwrap();
    let retry = last_put(&sim);
    assert!(retry.at >= subnet_ready);
}

#[tokio::test]
async fn an_operation_uri_on_a_host_not_allowed_is_never_polled() {
    // A second server stands for the foreign host, so we can see that nothing reached it.
    let foreign = Sim::start(SimConfig::default()).await;
    let sim = configured_sim_with_vm(SimConfig {
        transition: Duration::from_millis(100),
        operation_base: Some(foreign.base_url().to_owned()),
        ..SimConfig::default()
    })
    .await;
    put_by_another_writer(&sim, VM, &vm_body("a")).await;

    let resp = put_vm(&client(fast_policy()), &sim, "b").await;
    assert_eq!(resp.status(), 200);
    let report = report(&resp);
    assert!(
        report
            .classification
            .operation_uri
            .as_deref()
            .unwrap()
            .starts_with(foreign.base_url())
    );
    assert!(
        report.notes.iter().any(|n| n.contains("not allowed")),
        "{:?}",
        report.notes
    );
    assert!(
        foreign.requests().is_empty(),
        "the foreign host was contacted"
    );
    assert!(
        sim.count("GET", VM, None) >= 1,
        "the resource should be polled instead"
    );
}

#[tokio::test]
async fn a_state_that_never_converges_ends_at_the_deadline_naming_the_last_state() {
    let sim = sim_with_vm(Duration::from_millis(10)).await;
    sim.begin_transition(VM, "Updating", None);
    sim.script("PUT", VM, vec![busy()]);
    let policy = reqwest_conflict::ConflictPolicy {
        deadline: Duration::from_millis(300),
        ..fast_policy()
    };
    let err = client(policy)
        .put(url(&sim, VM))
        .json(&vm_body("x"))
        .send()
        .await
        .unwrap_err();
    match engine_error(&err) {
        Error::NotConverged {
            last_state,
            attempts,
            classification,
            waited,
            ..
        } => {
            assert_eq!(last_state.as_deref(), Some("Updating"));
            assert_eq!(*attempts, 1);
            assert_eq!(
                classification.as_ref().unwrap().kind,
                ConflictKind::StateConflict
            );
            assert!(!waited.is_zero());
        }
        other => panic!("expected NotConverged, got {other:?}"),
    }
    // The error carries the report of the resolution it ended.
    let report = engine_error(&err)
        .report()
        .expect("a resolution's error has its report");
    assert_eq!(report.outcome, Outcome::DeadlineExceeded);
    assert_eq!(report.code.as_deref(), Some("AnotherOperationInProgress"));
    assert_eq!(report.attempts, 1);
    assert_eq!(report.last_state(), Some("Updating"));
    assert!(report.polls >= 2);
    assert!(!report.waited.is_zero());
    assert_eq!(sim.count("PUT", VM, None), 1, "no retry after the deadline");
    assert!(sim.count("GET", VM, None) >= 2);
}

#[tokio::test]
async fn exhausted_budget_returns_the_last_conflict() {
    let sim = sim_with_vm(Duration::from_millis(10)).await;
    sim.script(
        "PUT",
        VM,
        vec![in_progress("in progress"), in_progress("in progress")],
    );
    let policy = reqwest_conflict::ConflictPolicy {
        max_attempts: 2,
        ..fast_policy()
    };
    let resp = put_vm(&client(policy), &sim, "x").await;
    assert_eq!(resp.status(), 409);
    let report = report(&resp);
    assert_eq!(report.outcome, Outcome::Exhausted);
    assert_eq!(report.attempts, 2);
    assert_eq!(report.conflicts, 2);
    assert_eq!(sim.count("PUT", VM, None), 2);
}

#[tokio::test]
async fn absurd_retry_after_is_capped_by_the_policy() {
    let sim = sim_with_vm(Duration::from_millis(10)).await;
    sim.script("PUT", VM, vec![busy().header("Retry-After", "999999")]);
    // If the 999999 s were honoured this would hang for 11 days; the outer timeout only catches that.
    let resp = tokio::time::timeout(
        Duration::from_secs(20),
        client(fast_policy())
            .put(url(&sim, VM))
            .json(&vm_body("x"))
            .send(),
    )
    .await
    .expect("Retry-After was not capped")
    .unwrap();
    assert_eq!(resp.status(), 200);
    let report = report(&resp);
    assert_eq!(
        report.classification.retry_after,
        Some(Duration::from_secs(999999))
    );
    assert_eq!(report.outcome, Outcome::Resolved);
}

#[tokio::test]
async fn polls_go_through_the_rest_of_the_chain() {
    // Authentication added after this middleware must still reach the polls.
    struct Auth;
    #[async_trait::async_trait]
    impl reqwest_middleware::Middleware for Auth {
        async fn handle(
            &self,
            mut req: reqwest::Request,
            ext: &mut http::Extensions,
            next: reqwest_middleware::Next<'_>,
        ) -> reqwest_middleware::Result<reqwest::Response> {
            req.headers_mut()
                .insert("authorization", "Bearer test-token".parse().unwrap());
            next.run(req, ext).await
        }
    }
    let sim = sim_with_vm(Duration::from_millis(60)).await;
    sim.begin_transition(VM, "Updating", Some(Duration::from_millis(60)));
    sim.script("PUT", VM, vec![busy()]);
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(reqwest_conflict::ConflictMiddleware::new(fast_policy()))
        .with(Auth)
        .build();
    let resp = put_vm(&client, &sim, "x").await;
    assert_eq!(resp.status(), 200);
    let requests = sim.requests();
    assert!(requests.iter().any(|r| r.method == "GET"));
    assert!(
        requests
            .iter()
            .all(|r| r.authorization.as_deref() == Some("Bearer test-token"))
    );
}

#[tokio::test]
async fn safe_methods_and_successes_pass_through_without_a_report() {
    let sim = sim_with_vm(Duration::from_millis(10)).await;
    let c = client(fast_policy());
    let resp = c.get(url(&sim, VM)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.extensions().get::<ConflictReport>().is_none());
    let resp = put_vm(&c, &sim, "x").await;
    assert_eq!(resp.status(), 200);
    assert!(resp.extensions().get::<ConflictReport>().is_none());
    assert_eq!(sim.requests().len(), 2);
}

#[tokio::test]
async fn a_state_guard_that_times_out_sends_the_write_and_hands_back_the_servers_answer() {
    let sim = sim_with_vm(Duration::from_millis(10)).await;
    let policy = reqwest_conflict::ConflictPolicy {
        deadline: Duration::from_millis(300),
        ..fast_policy()
    };
    let client = client(policy);
    // A first write leaves the VM in a transition that never ends: the next one waits for it
    // until the deadline, and is then sent anyway (never refused unsent): the server's 409 is
    // handed back, its report saying the deadline ran out.
    sim.set_faults(arm_sim::Faults {
        never_converge: true,
        ..arm_sim::Faults::default()
    });
    assert!(put_vm(&client, &sim, "a").await.status().is_success());
    let resp = put_vm(&client, &sim, "b").await;
    assert_eq!(resp.status(), 409);
    let report = report(&resp);
    assert_eq!(report.outcome, Outcome::DeadlineExceeded);
    assert_eq!(report.attempts, 1, "{report:?}");
    assert_eq!(sim.count("PUT", VM, None), 2);
    let polls = sim.requests().iter().filter(|r| r.method == "GET").count();
    assert!(polls > 0, "the guard polled (the operation) meanwhile");
}

#[tokio::test]
async fn from_middleware_finds_the_error_under_a_retry_middleware_outside() {
    use reqwest_retry::{RetryTransientMiddleware, policies::ExponentialBackoff};

    let sim = sim_with_vm(Duration::from_millis(10)).await;
    sim.begin_transition(VM, "Updating", None);
    let server_error = Scripted::json(500, json!({"error": {"code": "InternalServerError"}}));
    sim.script("PUT", VM, vec![server_error, busy()]);
    let policy = reqwest_conflict::ConflictPolicy {
        deadline: Duration::from_millis(300),
        ..fast_policy()
    };
    let retry = ExponentialBackoff::builder()
        .retry_bounds(Duration::from_millis(1), Duration::from_millis(5))
        .build_with_max_retries(2);
    // The wrong order on purpose: the retry middleware wraps the conflict error it passes on.
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(RetryTransientMiddleware::new_with_policy(retry))
        .with(reqwest_conflict::ConflictMiddleware::new(policy))
        .build();
    let err = client
        .put(url(&sim, VM))
        .json(&vm_body("x"))
        .send()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, reqwest_middleware::Error::Middleware(e) if e.downcast_ref::<Error>().is_none()),
        "the error is wrapped: {err:?}"
    );
    let error = Error::from_middleware(&err).expect("found under the wrapper");
    assert!(matches!(error, Error::NotConverged { .. }), "{error:?}");
    assert_eq!(
        error.report().map(|r| r.outcome),
        Some(Outcome::DeadlineExceeded)
    );
}

#[tokio::test]
async fn from_middleware_is_none_for_a_transport_error() {
    // Nothing listens on a port just released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = client(fast_policy())
        .put(format!("http://127.0.0.1:{port}/x"))
        .body("{}")
        .send()
        .await
        .unwrap_err();
    assert!(Error::from_middleware(&err).is_none(), "{err:?}");
}

/// A 429 is a conflict only when its body says so: App Service's "Cannot acquire exclusive lock"
/// is waited out and retried; a throttling 429 reaches the caller as it came, for its retry
/// middleware.
#[tokio::test]
async fn a_429_is_resolved_only_when_it_reports_a_conflict() {
    let sim = sim_with_vm(Duration::ZERO).await;
    sim.script(
        "PUT",
        VM,
        vec![recorded("errors/web_site_exclusive_lock_429")],
    );
    let resp = put_vm(&client(fast_policy()), &sim, "locked").await;
    assert_eq!(resp.status(), 200);
    let report = report(&resp);
    assert_eq!(
        (report.kind, report.outcome),
        (ConflictKind::StateConflict, Outcome::Resolved)
    );
    assert_eq!(sim.count("PUT", VM, Some(429)), 1);

    sim.script(
        "PUT",
        VM,
        vec![recorded("constructed/40_cosmos_throttled_retry_after_ms")],
    );
    let resp = put_vm(&client(fast_policy()), &sim, "throttled").await;
    assert_eq!(resp.status(), 429);
    assert!(resp.extensions().get::<ConflictReport>().is_none());
    let body = resp.text().await.unwrap();
    assert!(body.contains("Request rate is large"), "{body}");
    assert_eq!(
        sim.count("PUT", VM, Some(429)),
        2,
        "the throttled write was not retried"
    );
}

/// "Being deleted" clears when the thing is gone: a create refused while its resource group is
/// deleted (ARM's `ResourceGroupBeingDeleted`, which names no operation) polls the group until it
/// answers 404, then is sent again and creates it.
#[tokio::test]
async fn a_create_refused_during_a_delete_waits_until_the_resource_is_gone() {
    let sim = Sim::start(SimConfig {
        transition: Duration::ZERO,
        delete_transition: Duration::from_millis(150),
        ..SimConfig::default()
    })
    .await;
    let group = "/subscriptions/sub1/resourceGroups/xplattestiothubrg";
    sim.seed(group, json!({"location": "westus"}));
    let url = sim.url(&format!("{group}?api-version=2021-04-01"));
    let deleted = reqwest::Client::new().delete(&url).send().await.unwrap();
    assert_eq!(deleted.status(), 202);
    // The refusal as ARM words it (fixtures/errors/resources_group_being_deleted.json).
    let body = json!({"error": {"code": "ResourceGroupBeingDeleted", "message": "The resource group 'xplattestiothubrg' is in deprovisioning state and cannot perform this operation."}});
    sim.script("PUT", group, vec![Scripted::json(409, body)]);

    let resp = client(fast_policy())
        .put(&url)
        .json(&json!({"location": "westus"}))
        .send()
        .await
        .unwrap();

    assert_eq!(resp.status(), 201, "created anew");
    let report = report(&resp);
    assert_eq!(report.code.as_deref(), Some("ResourceGroupBeingDeleted"));
    assert_eq!(report.outcome, Outcome::Resolved);
    assert_eq!(report.states.first().map(String::as_str), Some("Deleting"));
    assert_eq!(report.last_state(), Some("NotFound"));
    assert_eq!(sim.overlapping_transitions(), 0);
}

/// Without leases (processes that share no store), sixteen writers on one VM all land with the
/// default attempt budget: a 409 naming an operation that started since the writer's previous
/// one is another writer's progress, not a failed attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_herd_without_leases_all_lands_within_the_default_attempts() {
    let sim = sim_with_vm(Duration::from_millis(100)).await;
    let policy = reqwest_conflict::ConflictPolicy {
        max_attempts: reqwest_conflict::ConflictPolicy::fast().max_attempts,
        deadline: Duration::from_secs(30),
        ..fast_policy().leases(false).unwrap()
    };
    let writers: Vec<_> = (0..16)
        .map(|i| {
            let (client, url) = (client(policy.clone()), url(&sim, VM));
            tokio::spawn(async move {
                let resp = client.put(url).json(&vm_body(&i.to_string())).send().await;
                resp.map(|r| (r.status(), r.extensions().get::<ConflictReport>().cloned()))
            })
        })
        .collect();
    let mut yielded = 0;
    for writer in writers {
        let (status, report) = writer.await.unwrap().unwrap();
        assert!(status.is_success(), "{status}: {report:?}");
        yielded += report.map_or(0, |r| r.yielded);
    }
    assert!(
        yielded > 0,
        "some writers waited behind others' new operations"
    );
    assert_eq!(sim.overlapping_transitions(), 0);
}

/// A name held by a soft-deleted resource is not waited for: the 409 is handed back with what to
/// do (recover or purge), which is the owner's call.
#[tokio::test]
async fn a_soft_deleted_name_is_surfaced_with_what_to_do() {
    let path = format!(
        "{}/fixtures/errors/keyvault_certificate_deleted_but_recoverable.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let sim = sim_with_vm(Duration::ZERO).await;
    let answer = Scripted::raw(409, doc["body"].as_str().unwrap().as_bytes().to_vec())
        .header("content-type", "application/json");
    sim.script("PUT", VM, vec![answer]);

    let resp = put_vm(&client(fast_policy()), &sim, "again").await;

    assert_eq!(resp.status(), 409);
    let report = report(&resp);
    assert_eq!(
        (report.kind, report.outcome),
        (ConflictKind::PrerequisiteRequired, Outcome::Surfaced)
    );
    assert_noted(&report, "recover it, or purge it");
    assert_eq!(sim.count("PUT", VM, None), 1, "not sent again");
}
