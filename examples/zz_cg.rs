// temporary callgrind harness (not committed)
use std::time::Duration;
use arm_sim::{Sim, SimConfig};
use bytes::Bytes;
use reqwest_conflict::{ConflictMiddleware, ConflictPolicy, LeasePolicy};
use reqwest_middleware::ClientBuilder;

const PREFIX: &str = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.Network/networkSecurityGroups";

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let n: usize = std::env::args().nth(2).and_then(|s| s.parse().ok()).unwrap_or(3000);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let sim = Sim::start(SimConfig { transition: Duration::ZERO, delete_transition: Duration::ZERO, ..SimConfig::default() }).await;
        let b = ClientBuilder::new(reqwest::Client::new());
        let client = match mode.as_str() {
            "conflict" => b.with(ConflictMiddleware::new(ConflictPolicy::azure_arm())).build(),
            "noleases" => b.with(ConflictMiddleware::new(ConflictPolicy { leases: LeasePolicy { enabled: false, ..LeasePolicy::default() }, ..ConflictPolicy::azure_arm() })).build(),
            _ => b.build(),
        };
        let body = Bytes::from_static(br#"{"location":"westus","tags":{"bench":"overhead"},"properties":{"securityRules":[]}}"#);
        for i in 0..n {
            if i % 500 == 0 { sim.clear_requests(); }
            let url = sim.url(&format!("{PREFIX}/nsg{i}?api-version=2024-07-01"));
            let r = client.put(&url).header("content-type", "application/json").body(body.clone()).send().await.unwrap();
            assert_eq!(r.status().as_u16(), 201);
            r.bytes().await.unwrap();
        }
    });
}
