//! `ConflictLayer` around hyper-util's legacy client, against the embedded ARM simulator: a write
//! that meets ARM's 409 `AnotherOperationInProgress` is sent again once the VM has converged.
//!
//! ```text
//! cargo run --example tower --features tower
//! ```

use std::time::Duration;

use arm_sim::{Sim, SimConfig};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use reqwest_conflict::{BoxError, ConflictLayer, ConflictPolicy, ConflictReport, PollSchedule};
use serde_json::json;
use tower::{ServiceBuilder, ServiceExt};

const VM: &str =
    "/subscriptions/sub1/resourceGroups/rg1/providers/Microsoft.Compute/virtualMachines/vm1";

#[tokio::main]
async fn main() -> Result<(), BoxError> {
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
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let service = ServiceBuilder::new()
        .layer(ConflictLayer::new(policy))
        .service(client);

    let body = json!({"location": "westus", "tags": {"owner": "tower-example"}, "properties": {}});
    let request = http::Request::put(sim.url(&format!("{VM}?api-version=2024-07-01")))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))?;
    let response = service.oneshot(request).await?;

    println!("PUT answered {}", response.status());
    let report = response.extensions().get::<ConflictReport>().cloned();
    let resource = response.into_body().collect().await?.to_bytes();
    println!("resource: {}", String::from_utf8_lossy(&resource));
    match report {
        Some(report) => println!(
            "conflict report:\n{}",
            serde_json::to_string_pretty(&report)?
        ),
        None => println!("no conflict met"),
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
