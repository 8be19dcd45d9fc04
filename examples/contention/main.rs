//! The main job: 16 writers race to update one VM on the embedded ARM simulator, first with a plain
//! client, then through `ConflictMiddleware`.
//!
//! ```text
//! cargo run --example contention
//! ```
//!
//! Each write moves the VM into `Updating` for 100 ms; a write that arrives meanwhile gets ARM's 409
//! `AnotherOperationInProgress`. The ideal makespan is 16 × 100 ms, one transition after another.
//! Three clients: plain reqwest (15 of 16 writes fail), the middleware resolving 409s as they come
//! (every write lands, after a herd of retries), and the middleware with its default in-process
//! leases (every write lands, the server never says 409), whose journal it then verifies. Both
//! middleware clients use `ConflictPolicy::fast()` with 64 attempts and a 25 s deadline; README's
//! contention table is this example's output.

#[cfg(feature = "redis")]
mod subnets;

use std::time::{Duration, Instant};

use arm_sim::{Sim, SimConfig};
use reqwest_conflict::{ConflictMiddleware, ConflictPolicy, Lro, journal};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use serde_json::json;

const WRITERS: usize = 16;
const TRANSITION: Duration = Duration::from_millis(100);
const VM: &str =
    "/subscriptions/sub1/resourceGroups/rg1/providers/Microsoft.Compute/virtualMachines/vm1";

struct Row {
    name: &'static str,
    succeeded: usize,
    failed: usize,
    conflicts: usize,
    requests: usize,
    makespan: Duration,
}

async fn run(name: &'static str, client: ClientWithMiddleware) -> Row {
    let sim = Sim::start(SimConfig {
        transition: TRANSITION,
        ..SimConfig::default()
    })
    .await;
    sim.seed(VM, json!({"location": "westus", "properties": {}}));
    let url = sim.url(&format!("{VM}?api-version=2024-07-01"));
    let started = Instant::now();
    let writers: Vec<_> = (0..WRITERS).map(|i| {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move {
            let body =
                json!({"location": "westus", "tags": {"writer": i.to_string()}, "properties": {}});
            match client.put(&url).json(&body).send().await {
                Ok(resp) => resp.status().is_success(),
                Err(_) => false,
            }
        })
    }).collect();
    let mut succeeded = 0;
    for writer in writers {
        if writer.await.unwrap_or(false) {
            succeeded += 1;
        }
    }
    // The makespan ends when the last accepted write has converged, not when its 200 came back.
    while sim.transitions().iter().any(|t| t.end.is_none()) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let makespan = started.elapsed();
    let requests = sim.requests();
    Row {
        name,
        succeeded,
        failed: WRITERS - succeeded,
        conflicts: requests.iter().filter(|r| r.status == 409).count(),
        requests: requests.len(),
        makespan,
    }
}

fn main() -> Result<(), reqwest_conflict::Error> {
    #[cfg(feature = "redis")]
    if subnets::child() {
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    runtime.block_on(one_vm())?;
    runtime.block_on(subnets_across_processes());
    Ok(())
}

/// The value after `flag` on the command line.
fn arg(flag: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    let at = args.iter().position(|a| a == flag)?;
    args.get(at + 1).cloned()
}

/// The modes `--lro return,settle` names (as the policy's JSON spells them), else the default.
fn lro_modes() -> Vec<Lro> {
    let Some(modes) = arg("--lro") else {
        return vec![ConflictPolicy::default().lro];
    };
    (modes.split(','))
        .map(|m| {
            serde_json::from_value(serde_json::Value::from(m)).unwrap_or_else(|_| {
                eprintln!("error: --lro takes return and/or settle, not {m:?}");
                std::process::exit(2)
            })
        })
        .collect()
}

/// Part one: 16 writers on one VM, in this process.
async fn one_vm() -> Result<(), reqwest_conflict::Error> {
    let plain = ClientBuilder::new(reqwest::Client::new()).build();
    // The fast profile (transitions here take 100 ms), with a budget for sixteen writers racing.
    let policy = ConflictPolicy::fast()
        .max_attempts(4 * WRITERS as u32)?
        .deadline(Duration::from_secs(25))?;
    let without_leases = policy.clone().leases(false)?;
    let client = |middleware| {
        ClientBuilder::new(reqwest::Client::new())
            .with(middleware)
            .build()
    };
    // A clone shares the journal, to check the leased writes afterwards.
    let leased = ConflictMiddleware::new(policy.clone());

    let mut rows = vec![
        run("plain reqwest", plain).await,
        run(
            "middleware, no leases",
            client(ConflictMiddleware::new(without_leases)),
        )
        .await,
        run("middleware + leases", client(leased.clone())).await,
    ];
    // `--lro return,…`: the leased writers once more, handing each 201/202 back at once.
    if lro_modes().contains(&Lro::Return) {
        let handing_back = ConflictPolicy {
            lro: Lro::Return,
            ..policy
        };
        let client = client(ConflictMiddleware::new(handing_back));
        rows.push(run("  … with lro: return", client).await);
    }
    let ideal = TRANSITION * WRITERS as u32;
    println!(
        "{WRITERS} concurrent PUTs to one VM, transition {} ms, ideal makespan {} ms\n",
        TRANSITION.as_millis(),
        ideal.as_millis()
    );
    println!(
        "{:<22} {:>9} {:>6} {:>10} {:>8} {:>12} {:>8}",
        "client", "succeeded", "failed", "409s sent", "requests", "makespan", "÷ ideal"
    );
    for r in &rows {
        println!(
            "{:<22} {:>9} {:>6} {:>10} {:>8} {:>9} ms {:>8.2}",
            r.name,
            r.succeeded,
            r.failed,
            r.conflicts,
            r.requests,
            r.makespan.as_millis(),
            r.makespan.as_secs_f64() / ideal.as_secs_f64()
        );
    }
    // The leased client's own record: its writes held the VM one at a time, tokens growing.
    let verdict = journal::verify(leased.journal().entries(), Duration::ZERO);
    println!("\njournal of the leased client: {verdict}");
    if rows[1..].iter().any(|r| r.succeeded != WRITERS) || !verdict.is_ok() {
        eprintln!("error: not every write succeeded through the middleware, one at a time");
        std::process::exit(1);
    }
    Ok(())
}

/// Part two, with the `redis` feature: subnets of a busy virtual network, 16 writers in 2
/// processes sharing Redis leases. `--subnets 0.3,1,5` picks the transition lengths (seconds),
/// `--lro return,settle` the modes; by default 0.3 s with the default policy's mode.
#[cfg(feature = "redis")]
async fn subnets_across_processes() {
    let lengths: Vec<Duration> = arg("--subnets")
        .unwrap_or_else(|| "0.3".to_owned())
        .split(',')
        .filter_map(|s| s.parse::<f64>().ok())
        .filter(|s| (0.01..=60.0).contains(s))
        .map(Duration::from_secs_f64)
        .collect();
    let modes = lro_modes();
    let redis = match subnets::Redis::start() {
        Ok(redis) => redis,
        Err(why) => {
            eprintln!("\nsubnets across processes: not run: {why}");
            std::process::exit(1);
        }
    };
    println!(
        "\nsubnets of one virtual network another tool is updating: 16 writers in 2 processes, Redis leases, default policy\n"
    );
    println!("{}", subnets::Row::header());
    let mut ok = true;
    for &length in &lengths {
        for &lro in &modes {
            match subnets::run(&redis, length, lro).await {
                Ok(row) => {
                    println!("{}", row.line());
                    ok &= lro == Lro::Return || row.ok();
                }
                Err(error) => {
                    eprintln!("error: {error}");
                    ok = false;
                }
            }
        }
    }
    if !ok {
        eprintln!("error: a settled write was lost, failed, or overlapped another");
        std::process::exit(1);
    }
}

#[cfg(not(feature = "redis"))]
async fn subnets_across_processes() {
    println!(
        "\nsubnets across processes (Redis leases): run `cargo run --example contention --features redis` (needs redis-server)"
    );
}
