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
//! Each R runs in a child process of its own (this program started again with `--one R`), so its
//! memory is measured from a clean heap: resident set size from `/proc/self/statm` (resident
//! pages × 4 KiB) after the simulator is seeded and the client built, and again after the last
//! write; then the number of keys the `MemoryLeases` store still tracks.
//!
//! The policy is examples/contention.rs's fast one (polls 20 ms × 1.5 up to 100 ms, jitter),
//! because the state guard polls before a write that follows one the server answered with
//! `Azure-AsyncOperation` — which arm-sim does for every accepted write, as ARM does.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use arm_sim::{Sim, SimConfig};
use reqwest_conflict::{ConflictMiddleware, ConflictPolicy, MemoryLeases, PollSchedule};
use reqwest_middleware::ClientBuilder;
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

/// One R, in this process; prints one line `R ops secs requests conflicts failed rss_before rss_after keys`.
async fn one(resources: usize) {
    let sim = Sim::start(SimConfig {
        transition: Duration::ZERO,
        delete_transition: Duration::ZERO,
        ..SimConfig::default()
    })
    .await;
    let urls: Vec<String> = (0..resources)
        .map(|i| {
            sim.seed(&path(i), json!({"location": "westus", "properties": {}}));
            sim.url(&format!("{}?api-version=2024-07-01", path(i)))
        })
        .collect();
    let leases = MemoryLeases::new();
    let policy = ConflictPolicy {
        max_attempts: 4 * WRITERS as u32,
        deadline: Duration::from_secs(60),
        poll: PollSchedule {
            min_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(100),
            factor: 1.5,
            jitter: true,
        },
        retry_after_cap: Duration::from_millis(100),
        ..ConflictPolicy::azure_arm()
    };
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(ConflictMiddleware::new(policy).with_leases(leases.clone()))
        .build();
    let urls = std::sync::Arc::new(urls);
    let before = rss();

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
    let after = rss();
    let requests = sim.requests();
    let conflicts = requests.iter().filter(|r| r.status == 409).count();
    println!(
        "{resources} {} {secs} {} {conflicts} {failed} {before} {after} {}",
        WRITERS * PER_WRITER,
        requests.len(),
        leases.len()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, r] = &args[..]
        && flag == "--one"
    {
        let resources = r.parse().expect("--one R");
        tokio::runtime::Runtime::new()
            .expect("runtime")
            .block_on(one(resources));
        return;
    }

    println!(
        "{WRITERS} writers × {PER_WRITER} PUTs, round-robin over R resources, zero-length transitions, leases on\n"
    );
    println!(
        "{:>6} {:>8} {:>8} {:>7} {:>5} {:>6} {:>10} {:>10} {:>10} {:>9} {:>11}",
        "R",
        "ops",
        "ops/s",
        "req/op",
        "409s",
        "failed",
        "RSS before",
        "RSS after",
        "Δ RSS",
        "Δ/R",
        "lease keys"
    );
    let exe = std::env::current_exe().expect("current_exe");
    for resources in RESOURCES {
        let out = Command::new(&exe)
            .args(["--one", &resources.to_string()])
            .output()
            .expect("child run");
        let line = String::from_utf8_lossy(&out.stdout);
        let f: Vec<f64> = line
            .split_whitespace()
            .map(|x| x.parse().expect("number"))
            .collect();
        assert!(
            out.status.success() && f.len() == 9,
            "child failed: {line}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let [
            r,
            ops,
            secs,
            requests,
            conflicts,
            failed,
            before,
            after,
            keys,
        ] = f[..]
        else {
            unreachable!()
        };
        let mib = |b: f64| b / (1024.0 * 1024.0);
        println!(
            "{:>6} {:>8} {:>8.0} {:>7.2} {:>5} {:>6} {:>6.1} MiB {:>6.1} MiB {:>6.1} MiB {:>7.0} B {:>11}",
            r,
            ops,
            ops / secs,
            requests / ops,
            conflicts,
            failed,
            mib(before),
            mib(after),
            mib(after - before),
            (after - before) / r,
            keys
        );
    }
}
