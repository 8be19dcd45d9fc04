use arm_sim::{Sim, SimConfig};
use bytes::Bytes;
use reqwest_conflict::{ConflictMiddleware, ConflictPolicy, LeasePolicy};
use reqwest_middleware::ClientBuilder;
use std::time::Duration;

const PREFIX: &str = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.Network/networkSecurityGroups";

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let n: u64 = std::env::args()
        .nth(2)
        .map(|s| s.parse().unwrap())
        .unwrap_or(2000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sim = Sim::start(SimConfig {
            transition: Duration::ZERO,
            delete_transition: Duration::ZERO,
            ..SimConfig::default()
        })
        .await;
        let inner = reqwest::Client::new();
        let b = ClientBuilder::new(inner);
        let client = match mode.as_str() {
            "bare" => b.build(),
            "noleases" => b
                .with(ConflictMiddleware::new(ConflictPolicy {
                    leases: LeasePolicy {
                        enabled: false,
                        ..LeasePolicy::default()
                    },
                    ..ConflictPolicy::azure_arm()
                }))
                .build(),
            _ => b
                .with(ConflictMiddleware::new(ConflictPolicy::azure_arm()))
                .build(),
        };
        let body = Bytes::from_static(br#"{"location":"westeurope","properties":{}}"#);
        for i in 0..n {
            let url = sim.url(&format!("{PREFIX}/nsg{i}?api-version=2024-07-01"));
            let r = client
                .put(&url)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success());
            r.bytes().await.unwrap();
        }
    });
}
