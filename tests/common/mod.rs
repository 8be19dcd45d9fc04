//! Shared helpers for the integration tests: a fast policy, clients, resource paths.
#![allow(dead_code)]

use std::time::Duration;

use reqwest_conflict::{ConflictMiddleware, ConflictPolicy, PollSchedule};
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
