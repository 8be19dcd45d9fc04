//! Diagnosis: the operation that blocked a write, named; the Activity Log's account of who else
//! ran operations on the resource; the state the resource ended in.

mod support;

use std::time::Duration;

use arm_sim::Scripted;
use reqwest_conflict::{ConflictPolicy, DiagnosePolicy, Outcome};
use serde_json::json;
use support::*;

const ACTIVITY: &str =
    "/subscriptions/sub1/providers/Microsoft.Insights/eventtypes/management/values";

fn diagnosing() -> ConflictPolicy {
    ConflictPolicy {
        diagnose: DiagnosePolicy {
            activity_log: true,
            end_state: true,
            ..DiagnosePolicy::default()
        },
        ..fast_policy()
    }
}

/// Another client's operation holds the VM for 150 ms; ours meets its 409, waits, and lands.
#[tokio::test]
async fn the_report_names_the_blocking_operation_who_ran_it_and_the_end_state() {
    let sim = sim_with_vm(Duration::ZERO).await;
    sim.begin_transition_as(
        "bob@example.com",
        VM,
        "Updating",
        Some(Duration::from_millis(150)),
    );
    let resp = client(diagnosing())
        .put(url(&sim, VM))
        .header("x-sim-caller", "alice@example.com")
        .json(&vm_body("ours"))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let report = report(&resp);
    assert_eq!(report.outcome, Outcome::Resolved);

    // The 409 named the operation's status URI; polling it told its status and start.
    let blocker = report.blocker.expect("the blocker");
    let status_uri = blocker.status_uri.clone().expect("its status URI");
    assert!(status_uri.contains("/operations/"), "{status_uri}");
    assert!(!status_uri.contains('?'), "no query is kept: {status_uri}");
    assert_eq!(status_uri.rsplit('/').next(), blocker.id.as_deref());
    assert_eq!(blocker.status.as_deref(), Some("Succeeded"));
    assert!(blocker.started.is_some(), "{:?}", blocker);

    // The Activity Log, read once at the conflict, lists bob's write, still running then.
    assert_eq!(sim.count("GET", ACTIVITY, Some(200)), 1);
    let bobs = report
        .activity
        .iter()
        .find(|a| a.caller.as_deref() == Some("bob@example.com"))
        .unwrap_or_else(|| panic!("bob's operation: {:?}", report.activity));
    assert_eq!(bobs.operation, "Microsoft.Compute/virtualMachines/write");
    assert_eq!(bobs.status.as_deref(), Some("Started"));
    assert!(bobs.correlation_id.is_some());

    // Read once after it landed (writes complete at once here).
    assert_eq!(report.end_state.as_deref(), Some("Succeeded"));
}

#[tokio::test]
async fn an_activity_log_that_cannot_be_read_is_a_note_and_changes_nothing() {
    let sim = sim_with_vm(Duration::ZERO).await;
    let forbidden = json!({"error": {"code": "AuthorizationFailed", "message": "The client does not have authorization to perform action 'Microsoft.Insights/eventtypes/values/read'."}});
    sim.script("GET", ACTIVITY, vec![Scripted::json(403, forbidden)]);
    sim.begin_transition(VM, "Updating", Some(Duration::from_millis(60)));
    let resp = put_vm(&client(diagnosing()), &sim, "ours").await;
    assert!(resp.status().is_success());
    let report = report(&resp);
    assert_eq!(report.outcome, Outcome::Resolved);
    assert!(report.activity.is_empty());
    assert!(
        report
            .notes
            .iter()
            .any(|n| n == "Activity Log not read: HTTP 403"),
        "{:?}",
        report.notes
    );
}

#[tokio::test]
async fn diagnosis_is_opt_in() {
    let sim = sim_with_vm(Duration::ZERO).await;
    sim.begin_transition(VM, "Updating", Some(Duration::from_millis(60)));
    let resp = put_vm(&client(fast_policy()), &sim, "ours").await;
    let report = report(&resp);
    assert_eq!(report.outcome, Outcome::Resolved);
    assert!(report.activity.is_empty() && report.end_state.is_none());
    assert_eq!(sim.count("GET", ACTIVITY, None), 0);
    // The blocker costs no request: it is read from the error and the polls.
    assert!(report.blocker.is_some());
}

/// An operation that stays `InProgress` is stuck, not slow: the write ends once the state has not
/// changed for `stuck_after` — `Error::Stuck`, not the deadline's `NotConverged` — with the state
/// and the report.
#[tokio::test]
async fn a_resource_that_never_moves_ends_the_write_as_stuck() {
    let sim = sim_with_vm(Duration::ZERO).await;
    sim.begin_transition(VM, "Updating", None);
    let policy = fast_policy()
        .stuck_after(Duration::from_millis(200))
        .unwrap();
    let err = client(policy)
        .put(url(&sim, VM))
        .json(&vm_body("ours"))
        .send()
        .await
        .unwrap_err();
    let error = reqwest_conflict::Error::from_middleware(&err).expect("the crate's error");
    let reqwest_conflict::Error::Stuck { state, since, .. } = error else {
        panic!("{error}");
    };
    // The 409 named the operation holding the VM: its status is what stopped moving.
    assert_eq!(state, "InProgress");
    assert!(*since >= Duration::from_millis(200));
    assert_eq!(error.report().map(|r| r.outcome), Some(Outcome::Stuck));
}
