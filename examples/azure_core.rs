//! `AzureConflictPolicy` in an `azure_core` pipeline built the way Azure SDK clients build theirs
//! (default retry policy, the policy among `per_call_policies`), against the embedded ARM
//! simulator: a write that meets ARM's 409 `AnotherOperationInProgress` is sent again once the VM
//! has converged, and the report comes back through the call's `Context`.
//!
//! ```text
//! cargo run --example azure_core --features azure-core
//! ```

use std::{sync::Arc, time::Duration};

use arm_sim::{Sim, SimConfig};
use azure_core::http::{ClientOptions, Context, Method, Pipeline, Request, Transport};
use reqwest_conflict::{AzureConflictPolicy, ConflictPolicy, ConflictReports, PollSchedule};
use serde_json::json;

const VM: &str =
    "/subscriptions/sub1/resourceGroups/rg1/providers/Microsoft.Compute/virtualMachines/vm1";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let sim = Sim::start(SimConfig::default()).await;
    sim.seed(VM, json!({"location": "westus", "properties": {}}));
    // Another writer's operation keeps the VM `Updating` for 300 ms.
    sim.begin_transition(VM, "Updating", Some(Duration::from_millis(300)));

    // ARM's own profile, polling every 50–200 ms instead of every few seconds.
    let policy = ConflictPolicy {
        poll: PollSchedule {
            min_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(200),
            ..PollSchedule::default()
        },
        retry_after_cap: Duration::from_millis(200),
        ..ConflictPolicy::azure_arm()
    };
    let options = ClientOptions {
        per_call_policies: vec![Arc::new(AzureConflictPolicy::new(policy))],
        // azure_core's reqwest transport; the simulator speaks plain http on loopback.
        transport: Some(Transport::new(Arc::new(reqwest::Client::new()))),
        ..ClientOptions::default()
    };
    let pipeline = Pipeline::new(
        Some("azure-core-example"),
        Some("0.1.0"),
        options,
        Vec::new(),
        Vec::new(),
        None,
    );

    let reports = ConflictReports::new();
    let ctx = Context::new().with_value(reports.clone());
    let url = sim.url(&format!("{VM}?api-version=2024-07-01")).parse()?;
    let mut request = Request::new(url, Method::Put);
    request.insert_header("content-type", "application/json");
    request.set_body(
        json!({"location": "westus", "tags": {"owner": "azure-core-example"}, "properties": {}})
            .to_string(),
    );
    let response = pipeline.send(&ctx, &mut request, None).await?;

    println!("PUT answered {}", u16::from(response.status()));
    println!(
        "resource: {}",
        String::from_utf8_lossy(response.into_body().as_ref())
    );
    for report in reports.take() {
        println!(
            "conflict report:\n{}",
            serde_json::to_string_pretty(&report)?
        );
    }
    println!("what the simulator saw:");
    for r in sim.requests() {
        println!(
            "  {:>4} ms  {:<4} {} -> {}",
            r.at.as_millis(),
            r.method,
            r.path,
            r.status
        );
    }
    Ok(())
}
