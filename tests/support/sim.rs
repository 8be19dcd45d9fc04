//! The simulator side: resource paths, bodies, scripted answers, simulators seeded for a test.

use std::time::Duration;

use arm_sim::{RecordedRequest, Scripted, Sim, SimConfig};
use serde_json::{Value, json};

pub const API: &str = "api-version=2024-07-01";
pub const VM: &str =
    "/subscriptions/sub1/resourceGroups/rg1/providers/Microsoft.Compute/virtualMachines/vm1";
pub const NIC: &str =
    "/subscriptions/sub1/resourceGroups/rg1/providers/Microsoft.Network/networkInterfaces/nic1";
pub const SUBNET: &str = "/subscriptions/sub1/resourceGroups/rg1/providers/Microsoft.Network/virtualNetworks/vnet1/subnets/default";
/// A resource with a counter, for the ETag tests.
pub const COUNTER: &str =
    "/subscriptions/sub1/resourceGroups/rg1/providers/Microsoft.Sim/counters/c1";

/// `path` on `sim`, with the API version.
pub fn url(sim: &Sim, path: &str) -> String {
    sim.url(&format!("{path}?{API}"))
}

/// A VM update that changes a tag (a size change would need a deallocation first).
pub fn vm_body(tag: &str) -> Value {
    json!({
        "location": "westus",
        "tags": { "build": tag },
        "properties": { "hardwareProfile": { "vmSize": "Standard_D2s_v3" } }
    })
}

/// A VM of size `size` (a change of size needs the VM deallocated first).
pub fn sized_vm(size: &str) -> Value {
    json!({"location": "westus", "properties": {"hardwareProfile": {"vmSize": size}}})
}

/// ARM's 409 for a resource mid-transition, with `message` and no operation URI of its own
/// (unless `message` spells one).
pub fn in_progress(message: &str) -> Scripted {
    Scripted::json(
        409,
        json!({"error": {"code": "AnotherOperationInProgress", "message": message}}),
    )
}

/// ARM's 409 for a resource mid-transition, with no operation URI to poll.
pub fn busy() -> Scripted {
    in_progress("Another operation on this or dependent resource is in progress.")
}

/// ARM's 409 for a write under a lock: permanent.
pub fn scope_locked() -> Value {
    json!({"error": {"code": "ScopeLocked", "message": "The scope '/subscriptions/sub1/resourceGroups/rg1' cannot perform write operation because following scope(s) are locked: '/subscriptions/sub1/resourceGroups/rg1'. Please remove the lock and try again."}})
}

/// ARM's 409 for a write that references a resource still in transition; `message` names it.
pub fn referenced_resource_not_provisioned(message: &str) -> Scripted {
    Scripted::json(
        409,
        json!({"error": {"code": "RetryableError", "message": "A retryable error occurred.",
            "details": [{"code": "ReferencedResourceNotProvisioned", "message": message}]}}),
    )
}

/// The answer recorded in `fixtures/{name}.json` (`errors/…`, `constructed/…`) as a scripted
/// one: its status and its body, byte for byte, as JSON.
pub fn recorded(name: &str) -> Scripted {
    let path = format!("{}/fixtures/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let status = doc["status"].as_u64().unwrap() as u16;
    Scripted::raw(status, doc["body"].as_str().unwrap().as_bytes().to_vec())
        .header("content-type", "application/json")
}

/// A simulator whose writes take `transition`.
pub async fn start_sim(transition: Duration) -> Sim {
    Sim::start(SimConfig {
        transition,
        ..SimConfig::default()
    })
    .await
}

/// A simulator whose writes complete at once (the answer already shows `Succeeded`): for tests
/// about ETags, not transitions.
pub async fn instant_sim() -> Sim {
    start_sim(Duration::ZERO).await
}

/// A simulator whose writes take `transition`, with the VM in place.
pub async fn sim_with_vm(transition: Duration) -> Sim {
    configured_sim_with_vm(SimConfig {
        transition,
        ..SimConfig::default()
    })
    .await
}

/// Like [`sim_with_vm`], but the simulator *accepts* writes during a transition, so overlapping
/// transitions are recorded instead of refused: only the client's discipline can keep them apart.
pub async fn permissive_sim_with_vm(transition: Duration) -> Sim {
    configured_sim_with_vm(SimConfig {
        transition,
        reject_during_transition: false,
        ..SimConfig::default()
    })
    .await
}

/// A simulator started with `config`, with the VM in place (tagged `Standard_D2s_v3`, which is
/// what a read of the untouched VM shows).
pub async fn configured_sim_with_vm(config: SimConfig) -> Sim {
    let sim = Sim::start(config).await;
    sim.seed(VM, vm_body("Standard_D2s_v3"));
    sim
}

/// An [`instant_sim`] with [`COUNTER`] at `counter`.
pub async fn sim_with_counter(counter: i64) -> Sim {
    let sim = instant_sim().await;
    sim.seed(COUNTER, json!({"properties": {"counter": counter}}));
    sim
}

/// A PUT of `body` to `path` by another writer, outside any middleware; its answer.
pub async fn put_by_another_writer(sim: &Sim, path: &str, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .put(url(sim, path))
        .json(body)
        .send()
        .await
        .unwrap()
}

/// The PUTs `sim` answered, in order.
pub fn puts(sim: &Sim) -> Vec<RecordedRequest> {
    sim.requests()
        .into_iter()
        .filter(|r| r.method == "PUT")
        .collect()
}

/// The statuses of the PUTs `sim` answered, in order.
pub fn put_statuses(sim: &Sim) -> Vec<u16> {
    puts(sim).iter().map(|r| r.status).collect()
}

/// The last PUT `sim` answered.
pub fn last_put(sim: &Sim) -> RecordedRequest {
    puts(sim).pop().expect("a PUT reached the simulator")
}

/// How many polls of an operation URI `sim` answered.
pub fn operation_polls(sim: &Sim) -> usize {
    sim.requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains("/operations/"))
        .count()
}
