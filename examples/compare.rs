//! Contention against peers: N writers race to update one VM on the embedded ARM simulator, with
//! four clients, for N ∈ {1, 4, 16, 64} and transitions D ∈ {50 ms, 200 ms} (plus the target cell
//! N = 16, D = 100 ms).
//!
//! ```text
//! cargo run --release --example compare
//! ```
//!
//! The clients:
//! - **plain reqwest** — what happens with no help: one write lands, the rest get 409.
//! - **reqwest-retry** — what users do today: `RetryTransientMiddleware` with a custom
//!   `RetryableStrategy` that treats 409 as transient (by default it does not), exponential backoff
//!   with bounded jitter on the same bounds as this crate's polls (20 ms growing to 100 ms) and a
//!   budget as generous as this crate's: retries until 60 s have passed (at most 1,000), enough
//!   for the slowest cell to finish.
//! - **conflict, no leases** — `ConflictMiddleware` resolving each 409 as it comes.
//! - **conflict + leases** — the default: single writer per resource in process.
//!
//! Both middleware rows use examples/contention/main.rs's fast poll schedule (20 ms × 1.5 up to
//! 100 ms, jitter, `Retry-After` capped at 100 ms), a 60 s deadline and 4 × N attempts. Every cell
//! gets a fresh simulator and a fresh client (no lease state or learned timing carried over).
//!
//! Columns: writes that succeeded; 409s the server sent; requests the server saw per successful
//! write (polls included); makespan ÷ ideal, where the makespan runs from the start until the last
//! transition ended (as in contention.rs, but read from the simulator's transition log rather than
//! by polling it every 5 ms) and the ideal is N × D, one transition after another;
//! p50/p99 latency of one write (all writes, failed ones included, from send to final answer).

use std::time::{Duration, Instant};

use arm_sim::{Sim, SimConfig};
use http::StatusCode;
use reqwest_conflict::{ConflictMiddleware, ConflictPolicy, LeasePolicy};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use reqwest_retry::{
    Jitter, RetryTransientMiddleware, Retryable, RetryableStrategy, default_on_request_failure,
    default_on_request_success, policies::ExponentialBackoff,
};
use serde_json::json;

const VM: &str =
    "/subscriptions/sub1/resourceGroups/rg1/providers/Microsoft.Compute/virtualMachines/vm1";
const WRITERS: [usize; 4] = [1, 4, 16, 64];
const TRANSITIONS: [Duration; 2] = [Duration::from_millis(50), Duration::from_millis(200)];
/// The cell the targets name.
const TARGET_CELL: (usize, Duration) = (16, Duration::from_millis(100));
const DEADLINE: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Plain,
    Retry,
    NoLeases,
    Leases,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::Plain, Kind::Retry, Kind::NoLeases, Kind::Leases];

    fn name(self) -> &'static str {
        match self {
            Kind::Plain => "plain reqwest",
            Kind::Retry => "reqwest-retry (409)",
            Kind::NoLeases => "conflict, no leases",
            Kind::Leases => "conflict + leases",
        }
    }

    fn client(self, writers: usize) -> ClientWithMiddleware {
        let builder = ClientBuilder::new(reqwest::Client::new());
        match self {
            Kind::Plain => builder.build(),
            Kind::Retry => {
                let backoff = ExponentialBackoff::builder()
                    .retry_bounds(Duration::from_millis(20), Duration::from_millis(100))
                    .jitter(Jitter::Bounded)
                    .base(2)
                    .build_with_total_retry_duration_and_max_retries(DEADLINE, 1000);
                builder
                    .with(RetryTransientMiddleware::new_with_policy_and_strategy(
                        backoff, RetryOn409,
                    ))
                    .build()
            }
            Kind::NoLeases | Kind::Leases => {
                // The fast profile: polls 20 ms ×1.5 to 100 ms, Retry-After capped at 100 ms.
                let policy = ConflictPolicy {
                    max_attempts: 4 * writers as u32,
                    deadline: DEADLINE,
                    leases: LeasePolicy {
                        enabled: self == Kind::Leases,
                        ..LeasePolicy::default()
                    },
                    ..ConflictPolicy::fast()
                };
                builder.with(ConflictMiddleware::new(policy)).build()
            }
        }
    }
}

/// reqwest-retry's default strategy, plus: 409 Conflict is transient.
struct RetryOn409;

impl RetryableStrategy for RetryOn409 {
    fn handle(
        &self,
        res: &Result<reqwest::Response, reqwest_middleware::Error>,
    ) -> Option<Retryable> {
        match res {
            Ok(response) if response.status() == StatusCode::CONFLICT => Some(Retryable::Transient),
            Ok(response) => default_on_request_success(response),
            Err(error) => default_on_request_failure(error),
        }
    }
}

struct Cell {
    kind: Kind,
    writers: usize,
    transition: Duration,
    succeeded: usize,
    conflicts: usize,
    requests: usize,
    makespan: Duration,
    latencies: Vec<Duration>,
}

impl Cell {
    fn ideal(&self) -> Duration {
        self.transition * self.writers as u32
    }

    fn ratio(&self) -> f64 {
        self.makespan.as_secs_f64() / self.ideal().as_secs_f64()
    }

    fn per_op(&self) -> Option<f64> {
        (self.succeeded > 0).then(|| self.requests as f64 / self.succeeded as f64)
    }

    /// Nearest-rank percentile, in milliseconds.
    fn percentile(&self, p: f64) -> f64 {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1].as_secs_f64() * 1e3
    }
}

async fn run(kind: Kind, writers: usize, transition: Duration) -> Cell {
    let sim = Sim::start(SimConfig {
        transition,
        ..SimConfig::default()
    })
    .await;
    // The simulator's clock started just before this: its transition times are offsets from it.
    let sim_t0 = Instant::now();
    sim.seed(VM, json!({"location": "westus", "properties": {}}));
    let url = sim.url(&format!("{VM}?api-version=2024-07-01"));
    let client = kind.client(writers);
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|i| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                let body =
                    json!({"location": "westus", "tags": {"writer": i.to_string()}, "properties": {}});
                let sent = Instant::now();
                let ok = match client.put(&url).json(&body).send().await {
                    Ok(resp) => resp.status().is_success(),
                    Err(_) => false,
                };
                (ok, sent.elapsed())
            })
        })
        .collect();
    let mut succeeded = 0;
    let mut latencies = Vec::with_capacity(writers);
    for task in tasks {
        let (ok, latency) = task.await.expect("writer task");
        succeeded += usize::from(ok);
        latencies.push(latency);
    }
    let writers_done = started.elapsed();
    // The makespan ends when the last accepted write has converged, not when its 200 came back.
    // It is read from the simulator's own record of when that transition ended, so the 5 ms
    // wait between looks does not add to it.
    while sim.transitions().iter().any(|t| t.end.is_none()) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let last_end = sim
        .transitions()
        .iter()
        .filter_map(|t| t.end)
        .max()
        .map_or(Duration::ZERO, |end| {
            (sim_t0 + end).saturating_duration_since(started)
        });
    let makespan = writers_done.max(last_end);
    let requests = sim.requests();
    let cell = Cell {
        kind,
        writers,
        transition,
        succeeded,
        conflicts: requests.iter().filter(|r| r.status == 409).count(),
        requests: requests.len(),
        makespan,
        latencies,
    };
    sim.shutdown().await;
    cell
}

fn print_header() {
    println!(
        "{:>3} {:>6}  {:<20} {:>7} {:>6} {:>7} {:>9} {:>10} {:>9} {:>9}",
        "N", "D", "client", "success", "409s", "req/op", "makespan", "÷ ideal", "p50 ms", "p99 ms"
    );
}

fn print_cell(c: &Cell) {
    println!(
        "{:>3} {:>4}ms  {:<20} {:>7} {:>6} {:>7} {:>7}ms {:>10.2} {:>9.1} {:>9.1}",
        c.writers,
        c.transition.as_millis(),
        c.kind.name(),
        format!("{}/{}", c.succeeded, c.writers),
        c.conflicts,
        c.per_op().map_or("-".to_owned(), |r| format!("{r:.2}")),
        c.makespan.as_millis(),
        c.ratio(),
        c.percentile(0.50),
        c.percentile(0.99),
    );
}

fn mark(ok: bool) -> &'static str {
    if ok { "ok" } else { "MISSED" }
}

#[tokio::main]
async fn main() {
    let mut grid: Vec<(usize, Duration)> = TRANSITIONS
        .iter()
        .flat_map(|&d| WRITERS.iter().map(move |&n| (n, d)))
        .collect();
    grid.push(TARGET_CELL);

    let started = Instant::now();
    println!("concurrent PUTs to one VM on arm-sim; ideal makespan = N × D\n");
    print_header();
    let mut cells = Vec::new();
    for (i, &(writers, transition)) in grid.iter().enumerate() {
        if i > 0 {
            println!();
        }
        if (writers, transition) == TARGET_CELL {
            println!("-- target cell --");
        }
        for kind in Kind::ALL {
            let cell = run(kind, writers, transition).await;
            print_cell(&cell);
            cells.push(cell);
        }
    }
    println!("\n(whole run: {:.0} s)", started.elapsed().as_secs_f64());

    // Target 1: the cell N = 16, D = 100 ms, with leases.
    let find = |kind: Kind, (n, d): (usize, Duration)| {
        cells
            .iter()
            .find(|c| c.kind == kind && c.writers == n && c.transition == d)
            .expect("cell ran")
    };
    let t = find(Kind::Leases, TARGET_CELL);
    let per_op = t.per_op().unwrap_or(f64::INFINITY);
    let checks = [
        t.succeeded == t.writers,
        t.conflicts == 0,
        t.ratio() <= 1.15,
        per_op <= 3.0,
    ];
    println!(
        "\ncheck: 16 writers, D = 100 ms, leases: {}/{} succeed [{}], {} 409s [{}], makespan {:.2}× ideal ≤ 1.15 [{}], {per_op:.2} requests/op ≤ 3 [{}] => {}",
        t.succeeded,
        t.writers,
        mark(checks[0]),
        t.conflicts,
        mark(checks[1]),
        t.ratio(),
        mark(checks[2]),
        mark(checks[3]),
        if checks.iter().all(|&c| c) {
            "PASS"
        } else {
            "FAIL"
        }
    );

    // Target 2: leases against reqwest-retry, over every cell of the grid. Success can only be
    // strictly better where reqwest-retry fell short; 409s and makespan are compared where there
    // is contention (N > 1: with one writer nothing conflicts and both send one request).
    let pairs: Vec<(&Cell, &Cell)> = grid
        .iter()
        .map(|&cell| (find(Kind::Leases, cell), find(Kind::Retry, cell)))
        .collect();
    let contended = || pairs.iter().filter(|(l, _)| l.writers > 1);
    let (ok_l, ok_r, total): (usize, usize, usize) =
        pairs.iter().fold((0, 0, 0), |(a, b, n), (l, r)| {
            (a + l.succeeded, b + r.succeeded, n + l.writers)
        });
    let success_ok =
        pairs.iter().all(|(l, r)| l.succeeded >= r.succeeded) && (ok_r == total || ok_l > ok_r);
    let c409_ok = contended().all(|(l, r)| l.conflicts < r.conflicts);
    let (c409_l, c409_r): (usize, usize) = pairs
        .iter()
        .fold((0, 0), |(a, b), (l, r)| (a + l.conflicts, b + r.conflicts));
    let faster = contended().filter(|(l, r)| l.makespan < r.makespan).count();
    let cells_contended = contended().count();
    println!(
        "check: leases vs reqwest-retry, {} cells: success {ok_l}/{total} vs {ok_r}/{total} [{}], 409s {c409_l} vs {c409_r} (fewer in every contended cell: {}) [{}], makespan shorter in {faster}/{cells_contended} contended cells [{}] => {}",
        pairs.len(),
        mark(success_ok),
        c409_ok,
        mark(c409_ok),
        mark(faster == cells_contended),
        if success_ok && c409_ok && faster == cells_contended {
            "PASS"
        } else {
            "FAIL"
        }
    );
}
