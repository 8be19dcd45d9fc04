//! The main job's second part: subnets of one virtual network that another tool is updating,
//! written by 16 writers in 2 processes that share leases through a real Redis.
//!
//! Network refuses nothing here at first sight: a subnet written while its virtual network is
//! busy is *accepted*, and its operation then fails with `RetryableError` /
//! `ReferencedResourceNotProvisioned` (the simulator's `fail_children_of_busy_parents`). Subnet
//! writes lease their virtual network too (`leases.lock_parent_of`), so they go one at a time
//! across both processes. Each process is this example's binary run again as a child; each writes
//! 8 subnets at once, then follows every operation it was handed back to its end, as a caller's
//! own poller would. The ideal makespan is the other tool's transition and then 16 subnet
//! transitions one after another.

use std::{
    io::{BufRead, BufReader, Write as _},
    net::{Ipv4Addr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use arm_sim::{Sim, SimConfig};
use reqwest_conflict::{ConflictMiddleware, ConflictPolicy, Lro, RedisLeases};
use reqwest_middleware::ClientBuilder;
use serde_json::{Value, json};

const PROCESSES: usize = 2;
const PER_PROCESS: usize = 8;
const VNET: &str =
    "/subscriptions/sub1/resourceGroups/rg1/providers/Microsoft.Network/virtualNetworks/vnet1";
const API: &str = "api-version=2024-05-01";
/// Set in a child: the simulator's base URL, Redis URL, lease prefix, lro mode, first subnet.
const CHILD: &str = "CONTENTION_SUBNETS_CHILD";

/// One run's figures.
pub struct Row {
    pub transition: Duration,
    pub lro: Lro,
    pub succeeded: usize,
    /// Operations handed back that ended `Succeeded` (followed by the caller, as its poller would).
    pub ended_succeeded: usize,
    /// Operations the simulator failed (a subnet written while its network was busy).
    pub failed_operations: usize,
    pub conflicts: usize,
    /// Requests the writers' clients sent (writes, and the middleware's polls and resends).
    pub requests: usize,
    /// Polls the callers sent afterwards to learn how their operations ended.
    pub caller_polls: usize,
    pub makespan: Duration,
    pub ideal: Duration,
    pub overlaps: usize,
}

impl Row {
    pub fn header() -> String {
        format!(
            "{:>6} {:<7} {:>9} {:>9} {:>10} {:>5} {:>7} {:>13} {:>11} {:>7} {:>8}",
            "D",
            "lro",
            "succeeded",
            "ended ok",
            "failed ops",
            "409s",
            "req/op",
            "caller polls",
            "makespan",
            "÷ ideal",
            "overlaps"
        )
    }

    pub fn line(&self) -> String {
        let writes = (PROCESSES * PER_PROCESS) as f64;
        format!(
            "{:>5.1}s {:<7} {:>9} {:>9} {:>10} {:>5} {:>7.2} {:>13} {:>8} ms {:>7.2} {:>8}",
            self.transition.as_secs_f64(),
            lro_name(self.lro),
            self.succeeded,
            self.ended_succeeded,
            self.failed_operations,
            self.conflicts,
            self.requests as f64 / writes,
            self.caller_polls,
            self.makespan.as_millis(),
            self.makespan.as_secs_f64() / self.ideal.as_secs_f64(),
            self.overlaps,
        )
    }

    /// Whether every write landed and every operation handed back ended `Succeeded`, one
    /// transition at a time.
    pub fn ok(&self) -> bool {
        let writes = PROCESSES * PER_PROCESS;
        self.succeeded == writes && self.ended_succeeded == writes && self.overlaps == 0
    }
}

/// `lro` as the policy's JSON spells it.
fn lro_name(lro: Lro) -> String {
    serde_json::to_value(lro)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// A `redis-server` of this example's own, on a free loopback port, killed on drop.
pub struct Redis {
    child: Child,
    pub url: String,
}

impl Redis {
    /// Starts one, or says why it cannot.
    pub fn start() -> Result<Self, String> {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start redis-server ({e}); install it (e.g. `apt install redis-server`)"
                )
            })?;
        let redis = Redis {
            child,
            url: format!("redis://127.0.0.1:{port}"),
        };
        for _ in 0..100 {
            if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
                return Ok(redis);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("redis-server did not listen on port {port}"))
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the job once: the simulator's transitions take `transition`.
pub async fn run(redis: &Redis, transition: Duration, lro: Lro) -> Result<Row, String> {
    let sim = Sim::start(SimConfig {
        transition,
        fail_children_of_busy_parents: true,
        ..SimConfig::default()
    })
    .await;
    sim.seed(VNET, json!({"location": "westus", "properties": {"addressSpace": {"addressPrefixes": ["10.0.0.0/16"]}}}));
    let prefix = format!("contention-{}-{}:", lro_name(lro), transition.as_millis());
    let mut children = Vec::new();
    for process in 0..PROCESSES {
        let setting = [
            sim.base_url(),
            &redis.url,
            &prefix,
            &lro_name(lro),
            &(process * PER_PROCESS).to_string(),
        ]
        .join(" ");
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = Command::new(exe)
            .env(CHILD, setting)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start a writer process: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        // Ready once its client and lease store are up, so process start-up is not timed.
        match lines.next() {
            Some(Ok(line)) if line == "ready" => {}
            other => return Err(format!("a writer process did not start: {other:?}")),
        }
        children.push((child, lines));
    }

    let started = Instant::now();
    sim.begin_transition_as("other-tool@example.com", VNET, "Updating", Some(transition));
    for (child, _) in &mut children {
        let stdin = child.stdin.as_mut().ok_or("no stdin")?;
        writeln!(stdin, "go").map_err(|e| e.to_string())?;
    }
    let (mut succeeded, mut ended_succeeded, mut caller_polls) = (0, 0, 0);
    for (mut child, lines) in children {
        for line in lines {
            let line = line.map_err(|e| e.to_string())?;
            let Some(result) = line.strip_prefix("write ") else {
                continue;
            };
            let result: Value = serde_json::from_str(result).map_err(|e| e.to_string())?;
            succeeded += usize::from(result["status"].as_u64().is_some_and(|s| s < 300));
            ended_succeeded += usize::from(result["operation"] == "Succeeded");
            caller_polls += result["polls"].as_u64().unwrap_or_default() as usize;
        }
        let _ = child.wait();
    }
    while sim.transitions().iter().any(|t| t.end.is_none()) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let makespan = started.elapsed();
    let requests = sim.requests();
    let writes = PROCESSES * PER_PROCESS;
    Ok(Row {
        transition,
        lro,
        succeeded,
        ended_succeeded,
        failed_operations: sim.failed_operations(),
        conflicts: requests.iter().filter(|r| r.status == 409).count(),
        requests: requests.len() - caller_polls,
        caller_polls,
        makespan,
        ideal: transition * (writes as u32 + 1),
        overlaps: subnet_overlaps(&sim.transitions()),
    })
}

/// Pairs of subnet transitions that ran at the same time: Network runs one operation on a
/// virtual network at a time, so the leases must have kept them apart.
fn subnet_overlaps(transitions: &[arm_sim::Transition]) -> usize {
    let subnets: Vec<_> = transitions
        .iter()
        .filter(|t| t.resource.contains("/subnets/"))
        .collect();
    let mut overlaps = 0;
    for (i, a) in subnets.iter().enumerate() {
        for b in &subnets[i + 1..] {
            let (a_end, b_end) = (
                a.end.unwrap_or(Duration::MAX),
                b.end.unwrap_or(Duration::MAX),
            );
            if a.start < b_end && b.start < a_end {
                overlaps += 1;
            }
        }
    }
    overlaps
}

/// The child side, when this process is one (the variable is set): writes its subnets and
/// prints one line per write. Returns `false` in the parent.
pub fn child() -> bool {
    let Ok(setting) = std::env::var(CHILD) else {
        return false;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    if let Err(error) = runtime.block_on(write_subnets(&setting)) {
        eprintln!("writer process: {error}");
        std::process::exit(1);
    }
    true
}

async fn write_subnets(setting: &str) -> Result<(), String> {
    let [sim, redis, prefix, lro, first] = setting.split(' ').collect::<Vec<_>>()[..] else {
        return Err(format!("bad setting {setting:?}"));
    };
    let lro: Lro = serde_json::from_value(Value::from(lro)).map_err(|e| e.to_string())?;
    let first: usize = first.parse().map_err(|_| "bad first subnet")?;
    let leases = RedisLeases::new(redis, prefix)
        .await
        .map_err(|e| e.to_string())?;
    let policy = ConflictPolicy {
        lro,
        ..ConflictPolicy::default()
    };
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(ConflictMiddleware::new(policy).with_leases(leases))
        .build();
    let poller = reqwest::Client::new();
    println!("ready");
    let mut go = String::new();
    std::io::stdin()
        .read_line(&mut go)
        .map_err(|e| e.to_string())?;

    let writers: Vec<_> = (first..first + PER_PROCESS)
        .map(|i| {
            let (client, poller) = (client.clone(), poller.clone());
            let url = format!("{sim}{VNET}/subnets/subnet{i}?{API}");
            tokio::spawn(async move {
                let body = json!({"properties": {"addressPrefix": format!("10.0.{i}.0/24")}});
                let Ok(resp) = client.put(&url).json(&body).send().await else {
                    return json!({"status": 0});
                };
                let status = resp.status().as_u16();
                let operation = resp
                    .headers()
                    .get("azure-asyncoperation")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let (ended, polls) = match operation {
                    Some(operation) => follow(&poller, &operation).await,
                    None => ("Succeeded".to_owned(), 0),
                };
                json!({"status": status, "operation": ended, "polls": polls})
            })
        })
        .collect();
    for writer in writers {
        let result = writer.await.map_err(|e| e.to_string())?;
        println!("write {result}");
    }
    Ok(())
}

/// The caller's own poller: the operation's status until it is terminal, and how many polls
/// that took.
async fn follow(poller: &reqwest::Client, operation: &str) -> (String, usize) {
    let mut polls = 0;
    loop {
        polls += 1;
        let status = match poller.get(operation).send().await {
            Ok(resp) => resp.json::<Value>().await.ok(),
            Err(_) => None,
        };
        let status = status
            .and_then(|s| s["status"].as_str().map(str::to_owned))
            .unwrap_or_default();
        if ["Succeeded", "Failed", "Canceled"].contains(&status.as_str()) {
            return (status, polls);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
