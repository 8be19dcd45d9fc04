//! Policies as configuration: the shipped examples, errors that name the path, per-type
//! overrides, and the prerequisite transition (deallocate, resize, start).

mod support;

use std::time::Duration;

use arm_sim::Sim;
use reqwest_conflict::{ConflictPolicy, ConflictReport, Error, Outcome, PolicyOverride};
use serde_json::json;
use support::*;

fn example_policies() -> Vec<(String, String)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/policies");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            (
                p.display().to_string(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_policy_loads_and_round_trips() {
    let files = example_policies();
    assert!(files.len() >= 4, "{files:?}");
    for (path, text) in files {
        let policy = ConflictPolicy::from_json(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
        let again = serde_json::to_string(&policy).unwrap();
        assert_eq!(ConflictPolicy::from_json(&again).unwrap(), policy, "{path}");
    }
}

#[test]
fn the_written_out_defaults_are_the_defaults() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/policies/azure_arm.json"
    ))
    .unwrap();
    assert_eq!(
        ConflictPolicy::from_json(&text).unwrap(),
        ConflictPolicy::default()
    );
}

#[test]
fn the_written_out_fast_profile_is_the_fast_profile() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/policies/fast.json"
    ))
    .unwrap();
    let loaded = ConflictPolicy::from_json(&text).unwrap();
    assert!(loaded.comment.is_some());
    assert_eq!(
        ConflictPolicy {
            comment: None,
            ..loaded
        },
        ConflictPolicy::fast()
    );
}

#[test]
fn a_wrong_field_names_its_path() {
    let cases = [
        (
            r#"{"resource_types": {"Microsoft.Compute/virtualMachines": {"deadline": "soonish"}}}"#,
            r#"resource_types."Microsoft.Compute/virtualMachines".deadline"#,
        ),
        (
            r#"{"poll": {"min_delay": "5s", "max_dlay": "1m"}}"#,
            "poll.max_dlay",
        ),
        (r#"{"leases": {"ttl": "100ms"}}"#, "leases.ttl"),
        (r#"{"precondition": "clobber"}"#, "precondition"),
        (
            r#"{"rules": [{"kind": "permanent", "codez": ["X"]}]}"#,
            "rules[0].codez",
        ),
    ];
    for (json, expected) in cases {
        match ConflictPolicy::from_json(json) {
            Err(Error::InvalidPolicy { path, .. }) => assert_eq!(path, expected, "{json}"),
            other => panic!("{json}: expected an error at {expected}, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_resource_type_override_changes_that_type_only() {
    let sim = sim_with_vm(Duration::from_millis(20)).await;
    sim.seed(NIC, json!({"location": "westus", "properties": {}}));
    sim.script("PUT", VM, vec![busy()]);
    sim.script("PUT", NIC, vec![busy()]);
    let mut policy = fast_policy();
    policy.resource_types.insert(
        "microsoft.compute/VIRTUALMACHINES".into(),
        PolicyOverride {
            max_attempts: Some(1),
            ..PolicyOverride::default()
        },
    );
    let client = client(policy);

    let vm = put_vm(&client, &sim, "1").await;
    assert_eq!(vm.status(), 409);
    assert_eq!(report(&vm).outcome, Outcome::Exhausted);
    assert_eq!(sim.count("PUT", VM, None), 1);

    let nic = client
        .put(url(&sim, NIC))
        .json(&json!({"location": "westus", "properties": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(nic.status(), 200);
    assert_eq!(report(&nic).outcome, Outcome::Resolved);
    assert_eq!(sim.count("PUT", NIC, None), 2);
}

#[tokio::test]
async fn a_per_request_override_beats_the_type_override() {
    let sim = sim_with_vm(Duration::from_millis(20)).await;
    sim.script("PUT", VM, vec![busy()]);
    let mut policy = fast_policy();
    policy.resource_types.insert(
        "Microsoft.Compute/virtualMachines".into(),
        PolicyOverride {
            max_attempts: Some(1),
            ..PolicyOverride::default()
        },
    );
    let resp = client(policy)
        .put(url(&sim, VM))
        .json(&vm_body("1"))
        .with_extension(PolicyOverride {
            max_attempts: Some(3),
            ..PolicyOverride::default()
        })
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(sim.count("PUT", VM, None), 2);
}

/// A simulator with a running `Standard_D2s_v3` VM, writes taking `transition`.
async fn running_vm(transition: Duration) -> Sim {
    let sim = start_sim(transition).await;
    sim.seed(VM, sized_vm("Standard_D2s_v3"));
    sim
}

/// A resize of the VM to `Standard_E8s_v5` through a client with `policy`.
async fn resize(
    sim: &Sim,
    policy: ConflictPolicy,
) -> reqwest_middleware::Result<reqwest::Response> {
    client(policy)
        .put(url(sim, VM))
        .json(&sized_vm("Standard_E8s_v5"))
        .send()
        .await
}

#[tokio::test]
async fn resize_of_a_running_vm_deallocates_resizes_and_starts_in_order() {
    let sim = running_vm(Duration::from_millis(40)).await;
    let policy = ConflictPolicy {
        prerequisites: shipped_prerequisites(),
        ..fast_policy()
    };

    let resp = resize(&sim, policy).await.unwrap();
    assert_eq!(
        resp.status(),
        200,
        "{:?}",
        resp.extensions().get::<ConflictReport>()
    );
    let report = report(&resp);
    assert_eq!(report.outcome, Outcome::Resolved);
    assert!(
        report
            .steps
            .iter()
            .any(|s| s.starts_with("POST deallocate")),
        "{:?}",
        report.steps
    );
    assert!(
        report.steps.iter().any(|s| s.starts_with("POST start")),
        "{:?}",
        report.steps
    );

    // The simulator's record: refused resize, deallocate, resize, start — in that order.
    let writes: Vec<(String, String, u16)> = sim
        .requests()
        .into_iter()
        .filter(|r| r.method != "GET")
        .map(|r| {
            (
                r.method,
                r.path.rsplit('/').next().unwrap().to_owned(),
                r.status,
            )
        })
        .collect();
    let expected = [
        ("PUT", "vm1", 409),
        ("POST", "deallocate", 202),
        ("PUT", "vm1", 200),
        ("POST", "start", 202),
    ];
    let got: Vec<(&str, &str, u16)> = writes
        .iter()
        .map(|(m, p, s)| (m.as_str(), p.as_str(), *s))
        .collect();
    assert_eq!(got, expected);
    let vm = sim.resource(VM).unwrap();
    assert_eq!(
        vm["properties"]["hardwareProfile"]["vmSize"],
        "Standard_E8s_v5"
    );
    let view = sim.url(&format!("{VM}/instanceView?{API}"));
    let view: serde_json::Value = reqwest::get(view).await.unwrap().json().await.unwrap();
    assert!(
        view.to_string().contains("PowerState/running"),
        "the VM was not started again: {view}"
    );
}

#[tokio::test]
async fn without_a_prerequisite_rule_the_resize_conflict_is_surfaced() {
    let sim = running_vm(Duration::from_millis(20)).await;
    let resp = resize(&sim, fast_policy()).await.unwrap();
    assert_eq!(resp.status(), 409);
    assert_eq!(
        report(&resp).kind,
        reqwest_conflict::ConflictKind::PrerequisiteRequired
    );
    assert_eq!(
        sim.requests().iter().filter(|r| r.method != "GET").count(),
        1
    );
}

#[test]
fn the_readme_policy_loads() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("## Configure")
        .nth(1)
        .expect("a Configure section");
    let json = section
        .split("```json")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a JSON policy in the Configure section");
    let policy = ConflictPolicy::from_json(json).unwrap();
    assert_eq!(policy.prerequisites.len(), 1);
    assert_eq!(
        policy
            .for_resource_type(Some("Microsoft.Compute/virtualMachines"))
            .deadline,
        Duration::from_secs(45 * 60)
    );
}

#[tokio::test]
async fn a_prerequisite_check_that_answers_404_is_polled_on_the_schedule_not_in_a_loop() {
    let sim = running_vm(Duration::from_millis(20)).await;
    let mut rule = shipped_prerequisites().remove(0);
    // A check on a sub-path the server does not have: every poll of it answers 404.
    rule.until.path = "doesNotExist".into();
    let policy = ConflictPolicy {
        prerequisites: vec![rule],
        deadline: Duration::from_millis(500),
        ..fast_policy()
    };
    let err = resize(&sim, policy.clone()).await.unwrap_err();
    assert!(
        matches!(engine_error(&err), Error::NotConverged { .. }),
        "{err:?}"
    );
    let polls = sim.count("GET", &format!("{VM}/doesNotExist"), None);
    let budget = (policy.deadline.as_millis() / policy.poll.min_delay.as_millis()) as usize + 5;
    assert!(
        polls >= 1 && polls <= budget,
        "{polls} polls of a 404 within a {budget}-poll budget"
    );
    // The deallocation happened, so the VM was started again.
    assert_eq!(sim.count("POST", &format!("{VM}/start"), None), 1);
}
