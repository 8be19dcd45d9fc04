//! How the cost of leasing grows with the number of resources: 64 writers through
//! `ConflictMiddleware` (leases on) over R ∈ {1, 10, 100, 1,000, 10,000} resources.
//!
//! ```text
//! cargo run --release --example growth
//! ```
//!
//! Writer `w`'s `k`-th write goes to resource `(64·k + w) mod R` (round-robin), 200 writes per
//! writer, 12,800 in all, so every R sees the same work and R = 10,000 writes every resource at
//! least once. The simulator's transitions last zero time: throughput is the point, not waiting.
//! The resources are seeded before the clock starts, so every write is an update (200).
//!
//! Each R runs in a child process of its own (this program started again with `--one`), so its
//! memory is measured from a clean heap and without the simulator, which stays in the parent
//! (it logs every request and transition, which would swamp what is measured). Memory is the
//! child's resident set size from `/proc/self/statm` (resident pages × 4 KiB) once the client is
//! built, and again after the last write; then the number of keys its `MemoryLeases` store
//! still tracks. The same work through a bare `reqwest_middleware` client (no middleware, so no
//! leases: concurrent writes to one resource simply overlap, which arm-sim with zero-length
//! transitions accepts) gives the baseline for both throughput and memory; `(Δ−bare)/R` is the
//! growth beyond that baseline per resource — meaningful once R is large: at small R it is
//! dominated by how many pooled connections each run opened (writers serialized by a lease need
//! fewer at once), so it can even be negative.
//!
//! The policy is examples/contention/main.rs's fast one (polls 20 ms × 1.5 up to 100 ms, jitter),
//! because the state guard polls before a write that follows one the server answered with
//! `Azure-AsyncOperation` — which arm-sim does for every accepted write, as ARM does.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use arm_sim::{Sim, SimConfig};
use reqwest_conflict::{ConflictMiddleware, ConflictPolicy, MemoryLeases};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use serde_json::json;

const WRITERS: usize = 64;
const PER_WRITER: usize = 200;
const RESOURCES: [usize; 5] = [1, 10, 100, 1_000, 10_000];
const PAGE: u64 = 4096;

fn path(i: usize) -> String {
    format!(
        "/subscriptions/sub1/resourceGroups/rg1/providers/Microsoft.Network/networkSecurityGroups/nsg{i}"
    )
}

/// Resident set size in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .expect("resident pages");
    pages * PAGE
}

/// What one child measured.
struct Measured {
    secs: f64,
    failed: usize,
    rss_before: u64,
    rss_after: u64,
    /// `None` for the bare client, which has no lease store.
    keys: Option<usize>,
}

/// The child: drives `resources` resources at `base` through one client, prints one line.
async fn child(resources: usize, base: &str, leased: bool) {
    let urls: Vec<String> = (0..resources)
        .map(|i| format!("{base}{}?api-version=2024-07-01", path(i)))
        .collect();
    let leases = MemoryLeases::new();
    let policy = ConflictPolicy {
        max_attempts: 4 * WRITERS as u32,
        ..ConflictPolicy::fast()
    };
    let builder = ClientBuilder::new(reqwest::Client::new());
    let client: ClientWithMiddleware = if leased {
        builder
            .with(ConflictMiddleware::new(policy).with_leases(leases.clone()))
            .build()
    } else {
        builder.build()
    };
    let urls = std::sync::Arc::new(urls);
    let rss_before = rss();

    let started = Instant::now();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (client, urls) = (client.clone(), urls.clone());
            tokio::spawn(async move {
                let mut failed = 0;
                for k in 0..PER_WRITER {
                    let url = &urls[(WRITERS * k + w) % urls.len()];
                    let body = json!({"location": "westus", "tags": {"writer": w, "write": k}, "properties": {}});
                    match client.put(url).json(&body).send().await {
                        Ok(resp) if resp.status().is_success() => {
                            // Read the answer, as a caller would.
                            let _ = resp.bytes().await;
                        }
                        _ => failed += 1,
                    }
                }
                failed
            })
        })
        .collect();
    let mut failed = 0;
    for writer in writers {
        failed += writer.await.expect("writer");
    }
    let secs = started.elapsed().as_secs_f64();
    let rss_after = rss();
    let keys = if leased { leases.len() as i64 } else { -1 };
    println!("{secs} {failed} {rss_before} {rss_after} {keys}");
}

/// The parent: a fresh simulator with `resources` resources, one child driving it.
async fn measure(resources: usize, leased: bool) -> (Measured, usize, usize) {
    let sim = Sim::start(SimConfig {
        transition: Duration::ZERO,
        delete_transition: Duration::ZERO,
        ..SimConfig::default()
    })
    .await;
    for i in 0..resources {
        sim.seed(&path(i), json!({"location": "westus", "properties": {}}));
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mode = if leased { "leases" } else { "bare" };
    let out = tokio::process::Command::new(exe)
        .args(["--one", &resources.to_string(), sim.base_url(), mode])
        .stderr(Stdio::inherit())
        .output()
        .await
        .expect("child run");
    let line = String::from_utf8_lossy(&out.stdout);
    let f: Vec<f64> = line
        .split_whitespace()
        .map(|x| x.parse().expect("number"))
        .collect();
    assert!(out.status.success() && f.len() == 5, "child failed: {line}");
    let requests = sim.requests();
    let conflicts = requests.iter().filter(|r| r.status == 409).count();
    sim.shutdown().await;
    let measured = Measured {
        secs: f[0],
        failed: f[1] as usize,
        rss_before: f[2] as u64,
        rss_after: f[3] as u64,
        keys: (f[4] >= 0.0).then_some(f[4] as usize),
    };
    (measured, requests.len(), conflicts)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, r, base, mode] = &args[..]
        && flag == "--one"
    {
        child(r.parse().expect("R"), base, mode == "leases").await;
        return;
    }

    let ops = WRITERS * PER_WRITER;
    println!(
        "{WRITERS} writers × {PER_WRITER} PUTs = {ops}, round-robin over R resources, zero-length transitions\n"
    );
    println!(
        "{:>6} {:>8} {:>7} {:>5} {:>6} {:>10} {:>10} {:>11} {:>10} {:>10} {:>11}",
        "R",
        "ops/s",
        "req/op",
        "409s",
        "failed",
        "RSS before",
        "Δ RSS",
        "(Δ−bare)/R",
        "bare ops/s",
        "bare Δ RSS",
        "lease keys"
    );
    for resources in RESOURCES {
        let (leased, requests, conflicts) = measure(resources, true).await;
        let (bare, _, _) = measure(resources, false).await;
        let delta = leased.rss_after.saturating_sub(leased.rss_before);
        let bare_delta = bare.rss_after.saturating_sub(bare.rss_before);
        println!(
            "{:>6} {:>8.0} {:>7.2} {:>5} {:>6} {:>6.1} MiB {:>6.2} MiB {:>9.0} B {:>10.0} {:>6.2} MiB {:>11}",
            resources,
            ops as f64 / leased.secs,
            requests as f64 / ops as f64,
            conflicts,
            leased.failed + bare.failed,
            mib(leased.rss_before),
            mib(delta),
            (delta as f64 - bare_delta as f64) / resources as f64,
            ops as f64 / bare.secs,
            mib(bare_delta),
            leased.keys.map_or("-".into(), |k| k.to_string()),
        );
    }
}
