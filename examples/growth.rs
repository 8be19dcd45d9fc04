use arm_sim::{Sim, SimConfig};
use reqwest_conflict::{ConflictMiddleware, ConflictPolicy};
use reqwest_middleware::ClientBuilder;
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let sim = Sim::start(SimConfig {
        transition: Duration::ZERO,
        ..SimConfig::default()
    })
    .await;
    let vm =
        "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/networkSecurityGroups/n1";
    sim.seed(vm, json!({"location":"westus","properties":{}}));
    let url = sim.url(&format!("{vm}?api-version=2024-07-01"));
    let bare = ClientBuilder::new(reqwest::Client::new()).build();
    let mw = ClientBuilder::new(reqwest::Client::new())
        .with(ConflictMiddleware::new(ConflictPolicy::azure_arm()))
        .build();
    for (name, c) in [("bare", bare), ("mw", mw)] {
        for _ in 0..3 {
            let t = Instant::now();
            let r = c
                .put(&url)
                .json(&json!({"location":"westus","properties":{}}))
                .send()
                .await
                .unwrap();
            println!(
                "{name} same {} {:?} {:?}",
                r.status(),
                r.headers().get("azure-asyncoperation").is_some(),
                t.elapsed()
            );
        }
    }
    let reqs = sim.requests();
    for r in reqs {
        println!("{} {} {} {:?}", r.method, r.path, r.status, r.at);
    }
}
