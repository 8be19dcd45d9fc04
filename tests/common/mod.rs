//! Shared helpers for the integration tests: a fast policy, clients, resource paths.
#![allow(dead_code)]

use std::time::Duration;

use arm_sim::{Scripted, Sim, SimConfig};
use reqwest_conflict::{ConflictMiddleware, ConflictPolicy, ConflictReport, PollSchedule};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};

pub const API: &str = "api-version=2024-07-01";
pub const VM: &str =
    "/subscriptions/sub1/resourceGroups/rg1/providers/Microsoft.Compute/virtualMachines/vm1";
pub const NIC: &str =
    "/subscriptions/sub1/resourceGroups/rg1/providers/Microsoft.Network/networkInterfaces/nic1";
pub const SUBNET: &str = "/subscriptions/sub1/resourceGroups/rg1/providers/Microsoft.Network/virtualNetworks/vnet1/subnets/default";

/// Milliseconds where ARM would take seconds, so a test runs in well under a second.
pub fn fast_policy() -> ConflictPolicy {
    ConflictPolicy {
        max_attempts: 20,
        deadline: Duration::from_secs(10),
        poll: PollSchedule {
            min_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(40),
            factor: 2.0,
            jitter: true,
        },
        retry_after_cap: Duration::from_millis(50),
        ..ConflictPolicy::azure_arm()
    }
}

pub fn client(policy: ConflictPolicy) -> ClientWithMiddleware {
    ClientBuilder::new(reqwest::Client::new())
        .with(ConflictMiddleware::new(policy))
        .build()
}

pub fn url(sim: &arm_sim::Sim, path: &str) -> String {
    sim.url(&format!("{path}?{API}"))
}

/// A VM update that changes a tag (a size change would need a deallocation first).
pub fn vm_body(tag: &str) -> serde_json::Value {
    serde_json::json!({
        "location": "westus",
        "tags": { "build": tag },
        "properties": { "hardwareProfile": { "vmSize": "Standard_D2s_v3" } }
    })
}

/// The report a response that met a conflict carries.
pub fn report(resp: &reqwest::Response) -> ConflictReport {
    resp.extensions()
        .get::<ConflictReport>()
        .cloned()
        .expect("a response that met a conflict carries a report")
}

/// ARM's 409 for a resource mid-transition, with no operation URI to poll.
pub fn busy() -> Scripted {
    Scripted::json(
        409,
        serde_json::json!({"error": {"code": "AnotherOperationInProgress", "message": "busy"}}),
    )
}

/// A simulator whose writes take `transition`, with the VM in place.
pub async fn sim_with_vm(transition: Duration) -> Sim {
    let sim = Sim::start(SimConfig {
        transition,
        ..SimConfig::default()
    })
    .await;
    sim.seed(VM, vm_body("seed"));
    sim
}
