//! Fault scenarios on the simulator, each through `ConflictMiddleware` with leases on: 500s,
//! connection resets, slow answers, malformed 409 bodies, a state that never converges, an
//! operation URI that 404s, and every flavour of bad `Retry-After`.
//!
//! Every scenario runs many concurrent calls and checks the same invariants:
//! - every call ends (a generous timeout serves only as a hang detector, never as a timing check),
//!   with the server's response or a typed error, and nothing panics;
//! - no lease is held afterwards (keys may stay tracked only while flagged in transition);
//! - each call sent the original request at most `max_attempts` times, and the polls stayed within
//!   what the deadline and the poll schedule allow.

mod support;

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use arm_sim::{Faults, Scripted, Sim};
use reqwest_conflict::{
    ConflictKind, ConflictMiddleware, ConflictPolicy, ConflictReport, Error, LeaseStore,
    MemoryLeases, Outcome, PollSchedule, ResourceId, lease::Validity,
};
use reqwest_middleware::ClientWithMiddleware;
use serde_json::json;
use support::*;

const MAX_ATTEMPTS: u32 = 5;
/// Concurrent calls per scenario, spread over [`RESOURCES`] resources.
const CALLS: usize = 12;
const RESOURCES: usize = 4;

fn widget(i: usize) -> String {
    format!("/subscriptions/sub1/resourceGroups/rg1/providers/Microsoft.Sim/widgets/w{i}")
}

fn widgets() -> Vec<String> {
    (0..RESOURCES).map(widget).collect()
}

/// A short policy: a deadline of seconds, polls in milliseconds.
fn policy(deadline: Duration) -> ConflictPolicy {
    ConflictPolicy {
        max_attempts: MAX_ATTEMPTS,
        deadline,
        poll: PollSchedule {
            min_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
            factor: 2.0,
            jitter: true,
        },
        retry_after_cap: Duration::from_millis(100),
        ..ConflictPolicy::azure_arm()
    }
}

/// The most re-fetches and polls one call can make. Every poll but a few is preceded by a sleep
/// of at least `poll.min_delay`, and all of them stop at the deadline; the exceptions are, per
/// poll loop (the state guard's, then one per retry), up to two polls planned from learned
/// transition times and the immediate re-poll of the resource after an operation URI answered
/// 404, plus one re-fetch per stale-precondition attempt.
fn poll_budget(policy: &ConflictPolicy) -> usize {
    let paced = policy.deadline.as_millis() / policy.poll.min_delay.as_millis();
    let loops = policy.max_attempts as usize + 1;
    paced as usize + 3 * loops + policy.max_attempts as usize
}

/// How a call ended.
#[derive(Debug)]
enum Ended {
    /// The server's answer (the final one, after any resolution).
    Response {
        status: u16,
        report: Option<Box<ConflictReport>>,
    },
    /// `Error::NotConverged`, with the attempts it reports and the last state seen.
    NotConverged {
        attempts: u32,
        last_state: Option<String>,
    },
    /// `Error::LeaseTimeout`: another writer held the resource for the whole deadline.
    LeaseTimeout,
    /// The transport failed (a reset); reqwest's own error, passed through.
    Transport,
}

impl Ended {
    fn report(&self) -> Option<&ConflictReport> {
        match self {
            Ended::Response { report, .. } => report.as_deref(),
            _ => None,
        }
    }
}

fn ended(result: reqwest_middleware::Result<(u16, Option<ConflictReport>)>) -> Ended {
    match result {
        Ok((status, report)) => Ended::Response {
            status,
            report: report.map(Box::new),
        },
        Err(reqwest_middleware::Error::Reqwest(_)) => Ended::Transport,
        Err(reqwest_middleware::Error::Middleware(error)) => match error.downcast_ref::<Error>() {
            Some(Error::NotConverged {
                attempts,
                last_state,
                ..
            }) => Ended::NotConverged {
                attempts: *attempts,
                last_state: last_state.clone(),
            },
            Some(Error::LeaseTimeout { .. }) => Ended::LeaseTimeout,
            Some(other) => panic!("unexpected engine error: {other}"),
            None => panic!("an untyped middleware error: {error:#}"),
        },
    }
}

/// A simulator (writes taking 40 ms) with the resources seeded.
async fn sim() -> Sim {
    let sim = start_sim(Duration::from_millis(40)).await;
    for path in widgets() {
        sim.seed(&path, json!({"location": "westus", "properties": {"n": 0}}));
    }
    sim
}

/// A simulator whose resources are all `Updating` and never leave it.
async fn stuck_sim() -> Sim {
    let sim = sim().await;
    sim.set_faults(Faults {
        never_converge: true,
        ..Faults::default()
    });
    for path in widgets() {
        sim.begin_transition(&path, "Updating", None);
    }
    sim
}

/// A [`sim`] whose resources are all in transition for `duration`, so the first writer of each
/// meets a 409.
async fn busy_sim(duration: Duration) -> Sim {
    let sim = sim().await;
    for path in widgets() {
        sim.begin_transition(&path, "Updating", Some(duration));
    }
    sim
}

/// A client whose middleware takes its leases from `leases`.
fn client_sharing(leases: &MemoryLeases, policy: ConflictPolicy) -> ClientWithMiddleware {
    middleware_client(ConflictMiddleware::new(policy).with_shared_leases(Arc::new(leases.clone())))
}

/// Runs [`CALLS`] concurrent PUTs through one middleware sharing `leases`, checks the invariants
/// every scenario shares, and returns how each call ended.
async fn run(sim: &Sim, policy: ConflictPolicy) -> Vec<Ended> {
    let leases = MemoryLeases::new();
    let client = client_sharing(&leases, policy.clone());
    let hang = hang_limit(&policy);
    let calls: Vec<_> = (0..CALLS)
        .map(|n| {
            let client = client.clone();
            let url = sim.url(&format!("{}?{API}&call={n}", widget(n % RESOURCES)));
            tokio::spawn(async move {
                let call = async {
                    let resp = client
                        .put(&url)
                        .json(&json!({"location": "westus", "properties": {"n": n}}))
                        .send()
                        .await?;
                    let status = resp.status().as_u16();
                    let report = resp.extensions().get::<ConflictReport>().cloned();
                    // The caller gets the whole body, whatever the engine peeked at.
                    resp.bytes().await?;
                    Ok((status, report))
                };
                match tokio::time::timeout(hang, call).await {
                    Ok(result) => ended(result),
                    Err(_) => panic!("call {n} did not end within {hang:?}: a hang"),
                }
            })
        })
        .collect();
    let mut outcomes = Vec::with_capacity(CALLS);
    for call in calls {
        outcomes.push(call.await.expect("a call panicked"));
    }
    eprintln!("{}", summary(&outcomes));
    check_budgets(sim, &policy, &outcomes);
    check_no_lease_held(&leases).await;
    outcomes
}

fn check_budgets(sim: &Sim, policy: &ConflictPolicy, outcomes: &[Ended]) {
    let requests = sim.requests();
    for n in 0..CALLS {
        let tag = format!("call={n}");
        let puts = requests
            .iter()
            .filter(|r| r.method == "PUT")
            .filter(|r| {
                r.query
                    .as_deref()
                    .is_some_and(|q| q.split('&').any(|p| p == tag))
            })
            .count();
        // Zero when the call timed out waiting for the lease.
        assert!(
            puts <= policy.max_attempts as usize,
            "call {n} sent its PUT {puts} times (max_attempts {})",
            policy.max_attempts
        );
    }
    let budget = poll_budget(policy);
    let gets = requests.iter().filter(|r| r.method == "GET").count();
    assert!(
        gets <= CALLS * budget,
        "{gets} polls for {CALLS} calls, more than {budget} each"
    );
    for outcome in outcomes {
        match outcome {
            Ended::NotConverged { attempts, .. } => {
                assert!(*attempts <= policy.max_attempts, "{outcome:?}")
            }
            Ended::Response {
                report: Some(report),
                ..
            } => {
                assert!(report.attempts <= policy.max_attempts, "{report:?}");
                assert!(report.polls as usize <= budget, "{report:?}");
            }
            _ => {}
        }
    }
}

/// Every key can be taken at once; the only keys the store still tracks are the ones flagged
/// in transition (by design: the flag outlives its holder so the next writer waits).
async fn check_no_lease_held(leases: &MemoryLeases) {
    let mut flagged = 0;
    for path in widgets() {
        let key = ResourceId::parse(&path).unwrap().key().to_owned();
        let probe = leases
            .acquire(&key, Duration::from_secs(1), Duration::from_millis(200))
            .await
            .unwrap_or_else(|e| panic!("a lease is still held after every call ended: {e}"));
        if leases.is_transitioning(&probe).await.unwrap() {
            flagged += 1;
        }
    }
    assert_eq!(
        leases.len(),
        flagged,
        "keys tracked besides those left in transition"
    );
}

/// One line per kind of ending, shown when a scenario fails.
fn summary(outcomes: &[Ended]) -> String {
    let mut lines = std::collections::BTreeMap::<String, usize>::new();
    for outcome in outcomes {
        let line = match outcome {
            Ended::Response { status, report } => match report {
                Some(r) => format!(
                    "{status} {} {:?} attempts={} polls={} states={:?}",
                    r.kind, r.outcome, r.attempts, r.polls, r.states
                ),
                None => format!("{status} without conflict"),
            },
            other => format!("{other:?}"),
        };
        *lines.entry(line).or_default() += 1;
    }
    lines
        .into_iter()
        .map(|(line, n)| format!("{n:>3} × {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn count(outcomes: &[Ended], pred: impl Fn(&Ended) -> bool) -> usize {
    outcomes.iter().filter(|o| pred(o)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_percent_500s() {
    let sim = busy_sim(Duration::from_millis(100)).await;
    sim.set_faults(Faults {
        error_rate: 0.10,
        ..Faults::default()
    });
    let outcomes = run(&sim, policy(Duration::from_millis(1500))).await;
    for outcome in &outcomes {
        match outcome {
            // A 500 on a PUT is the server's answer; on a poll it is a state that is not terminal.
            Ended::Response { status, .. } => assert!(
                matches!(status, 200 | 409 | 500),
                "unexpected answer {outcome:?}"
            ),
            Ended::NotConverged { .. } | Ended::LeaseTimeout => {}
            Ended::Transport => panic!("no resets were injected: {outcome:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_percent_connection_resets() {
    let sim = busy_sim(Duration::from_millis(100)).await;
    sim.set_faults(Faults {
        reset_rate: 0.05,
        ..Faults::default()
    });
    let outcomes = run(&sim, policy(Duration::from_millis(1500))).await;
    for outcome in &outcomes {
        if let Ended::Response { status, report } = outcome {
            assert!(matches!(status, 200 | 409), "unexpected answer {outcome:?}");
            // A reset poll is observed as a transport error, never as a terminal state.
            if let Some(report) = report
                && report.outcome == Outcome::Resolved
            {
                assert_ne!(report.last_state(), Some("transport error"), "{report:?}");
            }
        }
    }
    // A reset on a PUT is the caller's error, passed through untouched.
    let reset_puts = sim
        .requests()
        .iter()
        .filter(|r| r.method == "PUT" && r.status == 0)
        .count();
    assert!(count(&outcomes, |o| matches!(o, Ended::Transport)) <= reset_puts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_responses() {
    let sim = busy_sim(Duration::from_millis(100)).await;
    sim.set_faults(Faults {
        latency: Duration::from_millis(40),
        ..Faults::default()
    });
    let outcomes = run(&sim, policy(Duration::from_millis(2000))).await;
    assert_eq!(count(&outcomes, |o| matches!(o, Ended::Transport)), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_slower_than_the_poll_schedule_are_cut_by_the_deadline() {
    // Each answer takes a quarter of the deadline: waiters run out of time in the lease queue or
    // in the middle of a poll, which the deadline must cut.
    let sim = busy_sim(Duration::from_millis(600)).await;
    sim.set_faults(Faults {
        latency: Duration::from_millis(250),
        ..Faults::default()
    });
    let outcomes = run(&sim, policy(Duration::from_millis(1000))).await;
    assert_eq!(count(&outcomes, |o| matches!(o, Ended::Transport)), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_at_once() {
    let sim = busy_sim(Duration::from_millis(100)).await;
    sim.set_faults(Faults {
        latency: Duration::from_millis(15),
        error_rate: 0.10,
        reset_rate: 0.05,
        malformed_rate: 0.5,
        never_converge: false,
    });
    let outcomes = run(&sim, policy(Duration::from_millis(2000))).await;
    for outcome in &outcomes {
        if let Ended::Response { status, .. } = outcome {
            assert!(matches!(status, 200 | 409 | 500), "{outcome:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_truncated_409_bodies() {
    let sim = busy_sim(Duration::from_millis(100)).await;
    // Every 409/412 the simulator makes itself is cut in half...
    sim.set_faults(Faults {
        malformed_rate: 1.0,
        ..Faults::default()
    });
    // ...and the first answers are hostile bodies of every kind.
    let deep = "[".repeat(100_000);
    let bodies: Vec<Vec<u8>> = vec![
        b"{\"error\":{\"code\":\"AnotherOperationInPro".to_vec(),
        b"{\"error\":{\"code\":".to_vec(),
        b"\xff\xfe\x00garbage\x80\x81".to_vec(),
        Vec::new(),
        b"<html><body>Service Unavailable".to_vec(),
        deep.into_bytes(),
        "\"".repeat(70_000).into_bytes(),
        b"<Error><Code>AnotherOperationInProgress</Code><Message>busy &amp; ".to_vec(),
        b"{\"odata.error\":{\"code\":\"x\",\"message\":{\"value\":".to_vec(),
        br#"{"error":{"code":"RetryableError","details":[{"code":"ReferencedResourceNotProvisioned","message":"Resource /subscriptions/"#.to_vec(),
        br#"{"error":{"code":"AnotherOperationInProgress","message":"use uri: http://"#.to_vec(),
        br#"{"error":{"code":"AnotherOperationInProgress","message":"use uri: http://[::1"}}"#.to_vec(),
    ];
    for (i, body) in bodies.into_iter().enumerate() {
        sim.script(
            "PUT",
            &widget(i % RESOURCES),
            vec![Scripted::raw(409, body)],
        );
    }
    let outcomes = run(&sim, policy(Duration::from_millis(1500))).await;
    for outcome in &outcomes {
        match outcome {
            Ended::Response { status, report } => {
                assert!(matches!(status, 200 | 409), "{outcome:?}");
                if *status == 409 {
                    // Whatever could not be understood is surfaced, never retried blindly.
                    let report = report.as_deref().expect("a conflict carries a report");
                    assert!(
                        report.classification.kind != ConflictKind::StateConflict
                            || report.outcome != Outcome::Resolved,
                        "{report:?}"
                    );
                }
            }
            Ended::NotConverged { .. } | Ended::LeaseTimeout => {}
            Ended::Transport => panic!("no resets were injected: {outcome:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_that_never_converges() {
    let sim = stuck_sim().await;
    let outcomes = run(&sim, policy(Duration::from_millis(1000))).await;
    for outcome in &outcomes {
        match outcome {
            Ended::NotConverged { last_state, .. } => {
                if let Some(state) = last_state {
                    assert!(
                        ["InProgress", "Updating"].contains(&state.as_str()),
                        "a terminal state was seen: {outcome:?}"
                    );
                }
            }
            Ended::LeaseTimeout => {}
            // A waiter that got the lease just before its own deadline may meet the 409 with no
            // time left to wait.
            Ended::Response {
                status: 409,
                report: Some(report),
            } if report.outcome == Outcome::DeadlineExceeded => {}
            _ => panic!("a call got past a state that never converges: {outcome:?}"),
        }
    }
    assert!(count(&outcomes, |o| matches!(o, Ended::NotConverged { .. })) >= 1);
    assert_eq!(sim.count("PUT", &widget(0), Some(200)), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_uri_that_404s_falls_back_to_polling_the_resource() {
    let sim = busy_sim(Duration::from_millis(150)).await;
    // An operation id the simulator never issued, on its own host: polling it answers 404.
    let missing = "/subscriptions/sub1/providers/Microsoft.Sim/locations/westus/operations/0badc0de-0000-4000-a000-000000000000";
    let message = format!(
        "Another operation on this or dependent resource is in progress. To retrieve status of the operation use uri: {}.",
        url(&sim, missing)
    );
    let conflict = in_progress(&message);
    for path in widgets() {
        sim.script("PUT", &path, vec![conflict.clone(); CALLS / RESOURCES]);
    }
    let outcomes = run(&sim, policy(Duration::from_millis(2000))).await;
    let fell_back = outcomes
        .iter()
        .filter_map(Ended::report)
        .filter(|r| r.notes.iter().any(|n| n.contains("answered 404")))
        .count();
    assert!(fell_back >= 1, "{outcomes:#?}");
    for report in outcomes.iter().filter_map(Ended::report) {
        // "operation not found" is observed, never mistaken for a terminal state.
        if report.states.first().map(String::as_str) == Some("operation not found") {
            assert!(report.states.len() >= 2 || report.outcome != Outcome::Resolved);
        }
    }
    assert!(sim.count("GET", missing, Some(404)) >= 1);
    let resource_polls: usize = widgets().iter().map(|p| sim.count("GET", p, None)).sum();
    assert!(resource_polls >= 1, "the resource was never polled instead");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_that_give_up_mid_resolution_release_their_leases() {
    // Cancellation: every call is dropped while it waits (in the lease queue or polling a state
    // that never converges). Dropping the future must release whatever it held.
    let sim = stuck_sim().await;
    let leases = MemoryLeases::new();
    let client = client_sharing(&leases, policy(Duration::from_secs(60)));
    let calls: Vec<_> = (0..CALLS)
        .map(|n| {
            let client = client.clone();
            let url = sim.url(&format!("{}?{API}&call={n}", widget(n % RESOURCES)));
            tokio::spawn(async move {
                let give_up = Duration::from_millis(150 + 20 * n as u64);
                tokio::time::timeout(give_up, client.put(&url).json(&json!({})).send())
                    .await
                    .is_err()
            })
        })
        .collect();
    for call in calls {
        assert!(
            call.await.unwrap(),
            "a call ended although nothing converged"
        );
    }
    // Some calls were cut off while holding a lease and polling.
    assert!(
        sim.requests().iter().any(|r| r.method == "GET"),
        "no call was cut off while polling"
    );
    check_no_lease_held(&leases).await;
}

/// A lease store that cannot be reached.
#[derive(Debug)]
struct Unreachable;

fn unreachable(key: &str) -> Error {
    Error::LeaseBackend {
        key: key.to_owned(),
        message: "connection refused".to_owned(),
    }
}

type StoreFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, Error>> + Send + 'a>>;

impl LeaseStore for Unreachable {
    fn acquire<'a>(
        &'a self,
        key: &'a str,
        _ttl: Duration,
        _wait: Duration,
    ) -> StoreFuture<'a, reqwest_conflict::Lease> {
        Box::pin(async move { Err(unreachable(key)) })
    }
    fn set_transitioning<'a>(
        &'a self,
        lease: &'a reqwest_conflict::Lease,
        _transitioning: bool,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move { Err(unreachable(lease.key())) })
    }
    fn is_transitioning<'a>(&'a self, lease: &'a reqwest_conflict::Lease) -> StoreFuture<'a, bool> {
        Box::pin(async move { Err(unreachable(lease.key())) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_lease_store_fails_writes_before_they_are_sent() {
    let sim = sim().await;
    let client = middleware_client(
        ConflictMiddleware::new(policy(Duration::from_millis(1000))).with_leases(Unreachable),
    );
    let url = url(&sim, &widget(0));
    let err = client.put(&url).json(&json!({})).send().await.unwrap_err();
    assert!(
        matches!(engine_error(&err), Error::LeaseBackend { .. }),
        "{err}"
    );
    assert!(
        sim.requests().is_empty(),
        "a write was sent without its lease"
    );
    // Reads take no lease, so they are not affected.
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
}

/// A store whose leases are valid for `valid` and never renewed, as a remote lease is when its
/// store stops answering.
#[derive(Debug)]
struct NeverRenewed {
    valid: Duration,
}

impl LeaseStore for NeverRenewed {
    fn acquire<'a>(
        &'a self,
        key: &'a str,
        _ttl: Duration,
        _wait: Duration,
    ) -> StoreFuture<'a, reqwest_conflict::Lease> {
        let until = tokio::time::Instant::now() + self.valid;
        Box::pin(async move {
            Ok(reqwest_conflict::Lease::new(key, 1, || {})
                .with_transitioning(false)
                .with_validity(Validity::new(until)))
        })
    }
    fn set_transitioning<'a>(
        &'a self,
        _lease: &'a reqwest_conflict::Lease,
        _transitioning: bool,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move { Ok(()) })
    }
    fn is_transitioning<'a>(
        &'a self,
        _lease: &'a reqwest_conflict::Lease,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move { Ok(false) })
    }
}

#[tokio::test]
async fn a_lease_lost_while_waiting_stops_the_write_before_its_retry() {
    // The resource is busy for longer than the lease stays valid: the write meets a 409, waits,
    // and its lease runs out meanwhile.
    let sim = busy_sim(Duration::from_millis(400)).await;
    let deadline = Duration::from_secs(2);
    let client = middleware_client(ConflictMiddleware::new(policy(deadline)).with_leases(
        NeverRenewed {
            valid: Duration::from_millis(100),
        },
    ));
    let started = std::time::Instant::now();
    let err = client
        .put(url(&sim, &widget(0)))
        .json(&json!({}))
        .send()
        .await
        .unwrap_err();
    assert!(started.elapsed() <= deadline + deadline / 10);
    match engine_error(&err) {
        Error::LeaseLost { token, reason, .. } => {
            assert_eq!(*token, 1);
            assert!(reason.contains("TTL"), "{reason}");
        }
        other => panic!("expected a lost lease, got {other}"),
    }
    let puts: Vec<u16> = sim
        .requests()
        .iter()
        .filter(|r| r.method == "PUT")
        .map(|r| r.status)
        .collect();
    assert_eq!(puts, [409], "a retry was sent under a lost lease");
}

#[tokio::test]
async fn a_lease_lost_before_a_prerequisite_action_stops_the_write_before_it() {
    // A resize the VM's cluster cannot host needs a deallocation first. Every answer takes
    // longer than the lease stays valid, so it is lost by the time the 409 comes back.
    let sim = sim_with_vm(Duration::from_millis(30)).await;
    sim.set_faults(Faults {
        latency: Duration::from_millis(200),
        ..Faults::default()
    });
    let policy = ConflictPolicy {
        prerequisites: shipped_prerequisites(),
        ..policy(Duration::from_secs(2))
    };
    let client = middleware_client(ConflictMiddleware::new(policy).with_leases(NeverRenewed {
        valid: Duration::from_millis(100),
    }));
    let err = client
        .put(url(&sim, VM))
        .json(&sized_vm("Standard_E8s_v5"))
        .send()
        .await
        .unwrap_err();
    assert!(
        matches!(engine_error(&err), Error::LeaseLost { .. }),
        "{err}"
    );
    assert_eq!(put_statuses(&sim), [409]);
    assert_eq!(
        sim.count("POST", &format!("{VM}/deallocate"), None),
        0,
        "the prerequisite action was sent under a lost lease"
    );
}

/// Every 409 and the first polls of every resource carry `header: value`; the 409s name no
/// operation URI, so the resource itself is polled and its answers' hints are used.
async fn hostile_retry_after(header: &str, value: &str) -> Vec<Ended> {
    let sim = busy_sim(Duration::from_millis(100)).await;
    let conflict = in_progress("Another operation is in progress.").header(header, value);
    let updating = Scripted::json(
        200,
        json!({"properties": {"provisioningState": "Updating"}}),
    )
    .header(header, value);
    for path in widgets() {
        sim.script("PUT", &path, vec![conflict.clone(); CALLS / RESOURCES]);
        sim.script("GET", &path, vec![updating.clone(); 4]);
    }
    let outcomes = run(&sim, policy(Duration::from_millis(1500))).await;
    assert_eq!(count(&outcomes, |o| matches!(o, Ended::Transport)), 0);
    for outcome in &outcomes {
        if let Ended::Response { status, .. } = outcome {
            assert!(matches!(status, 200 | 409), "{outcome:?}");
        }
    }
    outcomes
}

/// The `Retry-After` the classifier read off the 409s, from every report.
fn hints(outcomes: &[Ended]) -> Vec<Option<Duration>> {
    outcomes
        .iter()
        .filter_map(Ended::report)
        .map(|r| r.classification.retry_after)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_absurd() {
    let outcomes = hostile_retry_after("Retry-After", "999999").await;
    // Read as given, then capped by the policy: the calls ended, so the 11 days were not waited.
    assert!(
        hints(&outcomes)
            .iter()
            .all(|h| *h == Some(Duration::from_secs(999_999)))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_overflowing() {
    let outcomes = hostile_retry_after("Retry-After", "99999999999999999999999999").await;
    assert!(
        hints(&outcomes)
            .iter()
            .all(|h| *h == Some(Duration::from_secs(u64::MAX)))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_ms_absurd() {
    let outcomes = hostile_retry_after("x-ms-retry-after-ms", "999999999999").await;
    assert!(
        hints(&outcomes)
            .iter()
            .all(|h| *h == Some(Duration::from_millis(999_999_999_999)))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_negative() {
    let outcomes = hostile_retry_after("Retry-After", "-5").await;
    assert!(hints(&outcomes).iter().all(Option::is_none));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_date_in_the_future() {
    let in_a_year = SystemTime::now() + Duration::from_secs(365 * 86_400);
    let outcomes = hostile_retry_after("Retry-After", &http_date(in_a_year)).await;
    assert!(
        hints(&outcomes)
            .iter()
            .all(|h| h.is_some_and(|d| d > Duration::from_secs(300 * 86_400)))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_date_in_the_past() {
    let outcomes = hostile_retry_after("Retry-After", "Sun, 06 Nov 1994 08:49:37 GMT").await;
    assert!(hints(&outcomes).iter().all(|h| *h == Some(Duration::ZERO)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_garbage() {
    for garbage in [
        "soon, maybe",
        "1.5",
        "0x10",
        "Sun, 99 Nov 1994 08:49:37 GMT",
    ] {
        let outcomes = hostile_retry_after("Retry-After", garbage).await;
        assert!(hints(&outcomes).iter().all(Option::is_none), "{garbage}");
    }
}

#[test]
fn http_dates_are_formatted_like_rfc_9110() {
    let rfc_example = UNIX_EPOCH + Duration::from_secs(784_111_777);
    assert_eq!(http_date(rfc_example), "Sun, 06 Nov 1994 08:49:37 GMT");
}
