//! `lro: settle`: a write ARM accepted as a long-running operation is followed to its end under
//! the resource's lease; an operation that fails with a conflict that clears is waited out and
//! the write sent again.

mod support;

use std::time::Duration;

use arm_sim::{Sim, SimConfig};
use reqwest_conflict::{ConflictKind, ConflictPolicy, ConflictReport, Lro, Outcome};
use serde_json::json;
use support::*;

const VNET: &str =
    "/subscriptions/sub1/resourceGroups/rg1/providers/Microsoft.Network/virtualNetworks/vnet1";

fn settling() -> ConflictPolicy {
    ConflictPolicy {
        lro: Lro::Settle,
        ..fast_policy()
    }
}

/// A simulator whose writes take 150 ms, and where a subnet written while its virtual network is
/// busy is accepted and its operation then fails (as Network does).
async fn network() -> Sim {
    let sim = Sim::start(SimConfig {
        transition: Duration::from_millis(150),
        fail_children_of_busy_parents: true,
        ..SimConfig::default()
    })
    .await;
    sim.seed(VNET, json!({"location": "westus", "properties": {}}));
    sim.seed(
        SUBNET,
        json!({"properties": {"addressPrefix": "10.0.0.0/24"}}),
    );
    sim
}

/// Another tool updates the virtual network for 200 ms; meanwhile the subnet is written (to
/// `10.0.1.0/24`) under `policy`.
async fn write_subnet_while_its_vnet_is_busy(
    sim: &Sim,
    policy: ConflictPolicy,
) -> reqwest::Response {
    let busy = Some(Duration::from_millis(200));
    sim.begin_transition_as("another-tool", VNET, "Updating", busy);
    client(policy)
        .put(url(sim, SUBNET))
        .json(&json!({"properties": {"addressPrefix": "10.0.1.0/24"}}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_settled_write_returns_once_its_operation_ended_and_leaves_no_transition() {
    let sim = sim_with_vm(Duration::from_millis(150)).await;
    let client = client(settling());
    let resp = put_vm(&client, &sim, "settled").await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers().contains_key("azure-asyncoperation"),
        "the answer as sent"
    );
    assert!(
        sim.transitions().iter().all(|t| t.end.is_some()),
        "the operation had ended when the call returned"
    );
    // The next write finds nothing to wait for: no state guard, no 409.
    let resp = put_vm(&client, &sim, "next").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        sim.count("GET", VM, None),
        0,
        "settling polls the operation, not the VM"
    );
    assert_eq!(sim.count("PUT", VM, Some(409)), 0);
    assert_eq!(sim.overlapping_transitions(), 0);
}

#[tokio::test]
async fn an_operation_failed_by_a_busy_parent_is_waited_out_and_the_write_sent_again() {
    let sim = network().await;
    let resp = write_subnet_while_its_vnet_is_busy(&sim, settling()).await;

    assert_eq!(resp.status(), 200);
    let report = resp
        .extensions()
        .get::<ConflictReport>()
        .cloned()
        .expect("a report");
    assert_eq!(report.kind, ConflictKind::StateConflict);
    assert_eq!(report.code.as_deref(), Some("RetryableError"));
    assert!(
        report
            .classification
            .detail_codes
            .iter()
            .any(|c| c == "ReferencedResourceNotProvisioned"),
        "{:?}",
        report.classification
    );
    assert_eq!((report.outcome, report.attempts), (Outcome::Resolved, 2));
    assert_eq!(
        report.end_state.as_deref(),
        Some("Succeeded"),
        "the operation's own result"
    );
    // The subnet ended Succeeded, written twice, the second time after the VNet settled.
    let state = reqwest::get(url(&sim, SUBNET))
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(state["properties"]["provisioningState"], "Succeeded");
    assert_eq!(state["properties"]["addressPrefix"], "10.0.1.0/24");
    assert_eq!(sim.count("PUT", SUBNET, Some(200)), 2);
}

#[tokio::test]
async fn returned_at_once_the_same_write_leaves_a_failed_operation_to_the_caller() {
    let sim = network().await;
    let resp = write_subnet_while_its_vnet_is_busy(&sim, fast_policy()).await;
    assert_eq!(resp.status(), 200, "accepted");
    assert!(resp.extensions().get::<ConflictReport>().is_none());
    let operation = resp.headers()["azure-asyncoperation"]
        .to_str()
        .unwrap()
        .to_owned();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = reqwest::get(&operation)
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(status["status"], "Failed");
    assert_eq!(
        status["error"]["details"][0]["code"],
        "ReferencedResourceNotProvisioned"
    );
}

/// Two subnets of one virtual network written at once, each handed back at once (`return`):
/// the second write waits for the first one's transition — its lease on the virtual network was
/// left in transition too — so Network never sees two subnet operations at once and none fails.
#[tokio::test]
async fn a_sibling_waits_for_the_transition_its_parents_lease_was_left_in() {
    let sim = network().await;
    let other = SUBNET.replace("/subnets/default", "/subnets/other");
    sim.seed(
        &other,
        json!({"properties": {"addressPrefix": "10.0.2.0/24"}}),
    );
    let client = client(fast_policy());
    let writes = [SUBNET, other.as_str()].map(|subnet| {
        let (client, url) = (client.clone(), url(&sim, subnet));
        tokio::spawn(async move {
            let body = json!({"properties": {"addressPrefix": "10.0.9.0/24"}});
            client.put(url).json(&body).send().await.unwrap().status()
        })
    });
    for write in writes {
        assert_eq!(write.await.unwrap(), 200);
    }
    while sim.transitions().iter().any(|t| t.end.is_none()) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(sim.failed_operations(), 0, "{:#?}", sim.transitions());
    let subnets: Vec<_> = (sim.transitions().into_iter())
        .filter(|t| t.resource.contains("/subnets/"))
        .collect();
    assert_eq!(subnets.len(), 2);
    let (a, b) = (&subnets[0], &subnets[1]);
    assert!(
        a.end.is_some_and(|end| end <= b.start),
        "one subnet operation after the other: {subnets:#?}"
    );
}
