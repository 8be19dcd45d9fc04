//! What `ConflictMiddleware` costs when there is no conflict: GET pass-through and uncontended PUT,
//! against the same reqwest client without it, on the embedded ARM simulator over loopback.
//!
//! ```text
//! cargo bench --bench overhead
//! ```
//!
//! Clients (all four share one `reqwest::Client`, so one connection pool):
//! - `reqwest`: plain reqwest, no middleware stack at all;
//! - `bare_middleware`: a `reqwest_middleware::ClientWithMiddleware` with no middleware — the
//!   baseline the targets are measured against, since that is what a user adds this crate to;
//! - `conflict`: the same with `ConflictMiddleware::new(ConflictPolicy::azure_arm())` (leases on);
//! - `conflict_no_leases`: the same with leases off (PUT only), to split the cost of leasing;
//! - `resend_floor`: a middleware that only copies the request before passing it on — what any
//!   middleware that may send a request again must do, so the least such a middleware can cost;
//! - `reqwest_retry`: `reqwest-retry`'s `RetryTransientMiddleware` (exponential backoff, three
//!   retries), the peer users would otherwise pick, on the same happy path.
//!
//! The simulator runs with zero-length transitions. Every PUT updates a resource of its own (a
//! counter in the name), seeded before the clock starts, so no PUT ever meets a 409, nor a lease
//! held by another writer, nor a transition left by an earlier write to the same resource, and
//! each is answered 200 at once, starting no long-running operation: the budget is the cost of
//! the middleware around one round trip. (A create answered 201 may have started one: under the
//! default `lro: settle` the middleware then reads the resource once before handing the 201
//! back, a round trip of its own, which BENCHMARKS.md prices apart.) For criterion, client and server
//! share one current-thread runtime, so a request's latency is the client's CPU time plus the
//! server's: the strictest setting for a ratio.
//!
//! After criterion, unless a filter was given, the bench prints the ratio of criterion's medians
//! (each client against `bare_middleware`), then a second estimate less exposed to a noisy
//! machine: rounds of 200 requests per client, interleaved, per-request latencies, medians, ratio
//! — once with the simulator on the clients' runtime, once with it on a thread and runtime of its
//! own, as a server in another process would be. Last, it times sequential updates of ONE
//! resource (not a criterion bench: see the note there).
//!
//! The group `put_existing` prices `leases.fence_with_etag`: each PUT updates a resource that
//! exists (seeded before the clock starts), leased, through `conflict` and through
//! `conflict_fenced`, which first reads the resource's ETag under the lease and sends the PUT
//! with `If-Match` on it. Its summary (criterion's medians and an interleaved check, against
//! the unfenced leased PUT) is printed also when the bench runs with that group as its filter:
//!
//! ```text
//! cargo bench --bench overhead -- put_existing
//! ```

use std::{
    path::PathBuf,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use arm_sim::{Sim, SimConfig};
use bytes::Bytes;
use criterion::{Criterion, Throughput};
use reqwest_conflict::{ConflictMiddleware, ConflictPolicy, LeasePolicy};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware, Middleware, Next, RequestBuilder};
use reqwest_retry::{RetryTransientMiddleware, policies::ExponentialBackoff};
use tokio::{runtime::Runtime, time::Instant};

const API: &str = "api-version=2024-07-01";
const PREFIX: &str = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.Network/networkSecurityGroups";
/// The budget (DESIGN.md): a GET within 1.03× the bare client, an uncontended PUT at most 5 µs
/// more than it.
const GET_TARGET: Target = Target::Ratio(1.03);
const PUT_TARGET: Target = Target::ExtraMicros(5.0);

#[derive(Clone, Copy)]
enum Target {
    Ratio(f64),
    ExtraMicros(f64),
}

impl Target {
    /// The verdict for a median of `us` µs against the baseline's `base_us`.
    fn check(self, us: f64, base_us: f64) -> String {
        let (met, what) = match self {
            Self::Ratio(max) => (us / base_us <= max, format!("ratio ≤ {max:.2}")),
            Self::ExtraMicros(max) => (
                us - base_us <= max,
                format!("+{:.1} µs, target ≤ +{max:.0} µs", us - base_us),
            ),
        };
        format!("  {what}: {}", if met { "PASS" } else { "MISS" })
    }
}

/// Copies the request (as a middleware that may resend it must, before sending it once) and
/// passes it on: the floor under any such middleware's cost.
struct ResendFloor;

#[async_trait::async_trait]
impl Middleware for ResendFloor {
    async fn handle(
        &self,
        req: reqwest::Request,
        extensions: &mut http::Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let copy = req.try_clone();
        let response = next.run(req, extensions).await;
        drop(copy);
        response
    }
}

/// One client under test.
enum Client {
    Reqwest(reqwest::Client),
    Stack(ClientWithMiddleware),
}

impl Client {
    fn get(&self, url: &str) -> Request {
        match self {
            Self::Reqwest(c) => Request::Reqwest(c.get(url)),
            Self::Stack(c) => Request::Stack(c.get(url)),
        }
    }

    fn put(&self, url: &str, body: &Bytes) -> Request {
        match self {
            Self::Reqwest(c) => Request::Reqwest(
                c.put(url)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(body.clone()),
            ),
            Self::Stack(c) => Request::Stack(
                c.put(url)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(body.clone()),
            ),
        }
    }
}

enum Request {
    Reqwest(reqwest::RequestBuilder),
    Stack(RequestBuilder),
}

impl Request {
    /// Sends, reads the whole body (as a caller would), and checks the status.
    async fn run(self, expect: u16) {
        let response = match self {
            Self::Reqwest(r) => r.send().await.expect("send"),
            Self::Stack(r) => r.send().await.expect("send"),
        };
        let status = response.status().as_u16();
        let body = response.bytes().await.expect("body");
        assert_eq!(status, expect, "{}", String::from_utf8_lossy(&body));
    }
}

struct Bench {
    rt: Runtime,
    /// The simulator on the clients' own runtime: a request's latency is then the client's CPU
    /// time plus the server's, the strictest setting for a ratio.
    sim: Sim,
    /// The same simulator on a thread and runtime of its own, as a server in another process
    /// would be: a request also waits for the wake-ups between the two threads.
    apart: Sim,
    clients: Vec<(&'static str, Client)>,
    /// Leased writes without and with `leases.fence_with_etag`, for `put_existing`.
    fenced: Vec<(&'static str, Client)>,
    /// The path of the one resource GETs read.
    read_me: String,
    body: Bytes,
    /// Names every created resource, so no two PUTs touch the same one.
    counter: AtomicU64,
}

impl Bench {
    fn new() -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let config = SimConfig {
            transition: Duration::ZERO,
            delete_transition: Duration::ZERO,
            ..SimConfig::default()
        };
        let sim = rt.block_on(Sim::start(config.clone()));
        let apart = sim_on_own_thread(config);
        let nsg = format!("{PREFIX}/read-me");
        let inner = reqwest::Client::new();
        let stack = |middleware: Option<ConflictMiddleware>| {
            let builder = ClientBuilder::new(inner.clone());
            match middleware {
                Some(m) => builder.with(m).build(),
                None => builder.build(),
            }
        };
        let no_leases = ConflictPolicy {
            leases: LeasePolicy {
                enabled: false,
                ..LeasePolicy::default()
            },
            ..ConflictPolicy::azure_arm()
        };
        let clients = vec![
            ("reqwest", Client::Reqwest(inner.clone())),
            ("bare_middleware", Client::Stack(stack(None))),
            (
                "conflict",
                Client::Stack(stack(Some(ConflictMiddleware::new(
                    ConflictPolicy::azure_arm(),
                )))),
            ),
            (
                "conflict_no_leases",
                Client::Stack(stack(Some(ConflictMiddleware::new(no_leases)))),
            ),
            (
                "resend_floor",
                Client::Stack(ClientBuilder::new(inner.clone()).with(ResendFloor).build()),
            ),
            (
                "reqwest_retry",
                Client::Stack(
                    ClientBuilder::new(inner.clone())
                        .with(RetryTransientMiddleware::new_with_policy(
                            ExponentialBackoff::builder().build_with_max_retries(3),
                        ))
                        .build(),
                ),
            ),
        ];
        let fence = ConflictPolicy::azure_arm()
            .fence_with_etag(true)
            .expect("a valid policy");
        let fenced = vec![
            (
                "conflict",
                Client::Stack(stack(Some(ConflictMiddleware::new(
                    ConflictPolicy::azure_arm(),
                )))),
            ),
            (
                "conflict_fenced",
                Client::Stack(stack(Some(ConflictMiddleware::new(fence)))),
            ),
        ];
        let body = Bytes::from(
            serde_json::json!({"location": "westus", "tags": {"bench": "overhead"}, "properties": {"securityRules": []}})
                .to_string(),
        );
        let bench = Self {
            read_me: nsg,
            rt,
            sim,
            apart,
            clients,
            fenced,
            body,
            counter: AtomicU64::new(0),
        };
        bench.fresh_sim(&bench.sim);
        bench.fresh_sim(&bench.apart);
        bench
    }

    /// Empties the simulator but for the resource the GETs read. Every PUT creates a resource,
    /// and a simulator holding hundreds of thousands of them answers more slowly: without this,
    /// whichever client is measured last would pay for the ones measured before it.
    fn fresh_sim(&self, sim: &Sim) {
        sim.reset();
        sim.seed(
            &self.read_me,
            serde_json::json!({"location": "westus", "properties": {"securityRules": []}}),
        );
    }

    fn get_url(&self, sim: &Sim) -> String {
        sim.url(&format!("{}?{API}", self.read_me))
    }

    /// `iters` requests of one kind through one client, timed as a whole.
    async fn run(&self, client: &Client, put: bool, iters: u64) -> Duration {
        self.fresh_sim(&self.sim);
        let get_url = self.get_url(&self.sim);
        let puts = if put {
            self.existing_urls(&self.sim, iters)
        } else {
            Vec::new()
        };
        let started = Instant::now();
        if put {
            for url in &puts {
                client.put(url, &self.body).run(200).await;
            }
        } else {
            for _ in 0..iters {
                client.get(&get_url).run(200).await;
            }
        }
        started.elapsed()
    }

    /// `n` resources that exist, each to be updated once: seeded now, before any clock starts.
    fn existing_urls(&self, sim: &Sim, n: u64) -> Vec<String> {
        (0..n)
            .map(|_| {
                let n = self.counter.fetch_add(1, Ordering::Relaxed);
                let path = format!("{PREFIX}/nsg{n}");
                sim.seed(
                    &path,
                    serde_json::json!({"location": "westus", "properties": {"securityRules": []}}),
                );
                sim.url(&format!("{path}?{API}"))
            })
            .collect()
    }

    /// `iters` updates of existing resources (one each) through one client, timed as a whole.
    async fn run_existing(&self, client: &Client, iters: u64) -> Duration {
        self.fresh_sim(&self.sim);
        let urls = self.existing_urls(&self.sim, iters);
        let started = Instant::now();
        for url in &urls {
            client.put(url, &self.body).run(200).await;
        }
        started.elapsed()
    }

    /// Per-request latencies, `rounds` × `per_round` per client, clients interleaved (in a
    /// rotating order) so that slow phases of a noisy machine hit every client alike.
    fn paired(
        &self,
        sim: &Sim,
        names: &[&str],
        put: bool,
        rounds: usize,
        per_round: usize,
    ) -> Vec<f64> {
        let get_url = self.get_url(sim);
        let clients: Vec<&Client> = names
            .iter()
            .map(|n| &self.clients.iter().find(|(name, _)| name == n).unwrap().1)
            .collect();
        let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds * per_round); names.len()];
        self.rt.block_on(async {
            for round in 0..rounds {
                self.fresh_sim(sim);
                for k in 0..clients.len() {
                    let i = (round + k) % clients.len();
                    let mut puts = if put {
                        self.existing_urls(sim, per_round as u64)
                    } else {
                        Vec::new()
                    };
                    for _ in 0..per_round {
                        let started = Instant::now();
                        if let Some(url) = puts.pop() {
                            clients[i].put(&url, &self.body).run(200).await;
                        } else {
                            clients[i].get(&get_url).run(200).await;
                        }
                        samples[i].push(started.elapsed().as_secs_f64());
                    }
                }
            }
        });
        samples.into_iter().map(median).collect()
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Criterion's median for one bench, from its `estimates.json`.
fn criterion_median(group: &str, id: &str) -> Option<f64> {
    let home = std::env::var_os("CRITERION_HOME")
        .map(PathBuf::from)
        .or_else(|| {
            // target/<profile>/deps/overhead-HASH → target/criterion
            let exe = std::env::current_exe().ok()?;
            Some(exe.parent()?.parent()?.parent()?.join("criterion"))
        })?;
    let path = home.join(group).join(id).join("new/estimates.json");
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    doc["median"]["point_estimate"].as_f64()
}

fn main() {
    let bench = Bench::new();
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
        .configure_from_args();

    for (group_name, put) in [("get_passthrough", false), ("put_uncontended", true)] {
        let mut group = c.benchmark_group(group_name);
        group.throughput(Throughput::Elements(1));
        for (name, client) in &bench.clients {
            if !put && *name == "conflict_no_leases" {
                continue; // GET never leases: the same path as `conflict`.
            }
            group.bench_function(*name, |b| {
                b.iter_custom(|iters| bench.rt.block_on(bench.run(client, put, iters)))
            });
        }
        group.finish();
    }
    {
        let mut group = c.benchmark_group("put_existing");
        group.throughput(Throughput::Elements(1));
        for (name, client) in &bench.fenced {
            group.bench_function(*name, |b| {
                b.iter_custom(|iters| bench.rt.block_on(bench.run_existing(client, iters)))
            });
        }
        group.finish();
    }
    c.final_summary();

    // Only under `cargo bench`: `cargo test --benches` runs each bench once.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    if filters.is_empty() || filters.iter().any(|f| "put_existing".contains(f.as_str())) {
        fence_cost(&bench);
    }
    if !filters.is_empty() {
        return;
    }

    println!("\nratio of criterion medians, against bare_middleware:");
    for (group, target) in [
        ("get_passthrough", GET_TARGET),
        ("put_uncontended", PUT_TARGET),
    ] {
        let Some(base) = criterion_median(group, "bare_middleware") else {
            println!("  {group}: no estimates found (CRITERION_HOME?)");
            continue;
        };
        for (name, _) in &bench.clients {
            if let Some(m) = criterion_median(group, name) {
                let ratio = m / base;
                let check = if *name == "conflict" {
                    target.check(m / 1000.0, base / 1000.0)
                } else {
                    String::new()
                };
                println!(
                    "  {group:<16} {name:<19} median {:>8.1} µs  ratio {ratio:.3}{check}",
                    m / 1000.0
                );
            }
        }
    }

    for (sim, setting) in [
        (&bench.sim, "the simulator on the clients' runtime"),
        (&bench.apart, "the simulator on a thread of its own"),
    ] {
        println!(
            "\ninterleaved check, {setting} (30 rounds × 200 requests per client, per-request medians):"
        );
        interleaved(&bench, sim);
    }

    same_resource(&bench);
}

/// Every client's median latency against `bare_middleware`'s, clients interleaved, on `sim`.
fn interleaved(bench: &Bench, sim: &Sim) {
    const OTHERS: [&str; 3] = ["reqwest", "resend_floor", "reqwest_retry"];
    for (label, put, target) in [
        ("get_passthrough", false, GET_TARGET),
        ("put_uncontended", true, PUT_TARGET),
    ] {
        let mut names = vec!["bare_middleware", "conflict"];
        if put {
            names.push("conflict_no_leases");
        }
        names.extend(OTHERS);
        let medians = bench.paired(sim, &names, put, 30, 200);
        for (name, m) in names.iter().zip(&medians) {
            let ratio = m / medians[0];
            let check = if *name == "conflict" {
                target.check(m * 1e6, medians[0] * 1e6)
            } else {
                String::new()
            };
            println!(
                "  {label:<16} {name:<19} median {:>8.1} µs  ratio {ratio:.3}{check}",
                m * 1e6
            );
        }
    }
}

/// What `leases.fence_with_etag` adds to a leased update of an existing resource: criterion's
/// medians, then medians of interleaved rounds (the simulator on the clients' runtime).
fn fence_cost(bench: &Bench) {
    println!(
        "\nleases.fence_with_etag: an update of an existing resource, leased, against the unfenced one:"
    );
    let base = criterion_median("put_existing", "conflict");
    for (name, _) in &bench.fenced {
        match (criterion_median("put_existing", name), base) {
            (Some(m), Some(base)) => println!(
                "  criterion    {name:<16} median {:>8.1} µs  ratio {:.3}  {:+.1} µs",
                m / 1000.0,
                m / base,
                (m - base) / 1000.0
            ),
            _ => println!("  criterion    {name:<16} no estimates found (CRITERION_HOME?)"),
        }
    }
    const ROUNDS: usize = 30;
    const PER_ROUND: u64 = 200;
    let mut samples = vec![Vec::new(); bench.fenced.len()];
    bench.rt.block_on(async {
        for round in 0..ROUNDS {
            bench.fresh_sim(&bench.sim);
            for k in 0..bench.fenced.len() {
                let i = (round + k) % bench.fenced.len();
                let urls = bench.existing_urls(&bench.sim, PER_ROUND);
                for url in &urls {
                    let started = Instant::now();
                    bench.fenced[i].1.put(url, &bench.body).run(200).await;
                    samples[i].push(started.elapsed().as_secs_f64());
                }
            }
        }
    });
    let medians: Vec<f64> = samples.into_iter().map(median).collect();
    for ((name, _), m) in bench.fenced.iter().zip(&medians) {
        println!(
            "  interleaved  {name:<16} median {:>8.1} µs  ratio {:.3}  {:+.1} µs",
            m * 1e6,
            m / medians[0],
            (m - medians[0]) * 1e6
        );
    }
}

/// A simulator serving from a thread and runtime of its own, for as long as the bench runs.
fn sim_on_own_thread(config: SimConfig) -> Sim {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            tx.send(Sim::start(config).await).expect("bench is waiting");
            std::future::pending::<()>().await
        });
    });
    rx.recv().expect("simulator started")
}

/// Sequential updates of one existing resource — no concurrency, nothing to conflict with. The
/// simulator answers every accepted write with `Azure-AsyncOperation` (as ARM does for its
/// long-running writes), even when the transition lasts zero time, so with leases on the engine
/// marks the resource as left in transition and the next write's state guard polls it first.
/// Not a criterion bench: with the default ARM poll schedule one such write can take seconds.
fn same_resource(bench: &Bench) {
    const UPDATES: usize = 8;
    let path = format!("{PREFIX}/updated");
    bench.sim.seed(
        &path,
        serde_json::json!({"location": "westus", "properties": {}}),
    );
    let url = bench.sim.url(&format!("{path}?{API}"));
    println!(
        "\nsequential updates of ONE resource (default azure_arm policy), {UPDATES} in a row, ms each:"
    );
    for (name, client) in &bench.clients {
        let fresh;
        let client = if *name == "conflict" {
            // A middleware of its own, so no lease state or estimate is carried over.
            fresh = Client::Stack(
                ClientBuilder::new(reqwest::Client::new())
                    .with(ConflictMiddleware::new(ConflictPolicy::azure_arm()))
                    .build(),
            );
            &fresh
        } else {
            client
        };
        bench.sim.clear_requests();
        let times: Vec<String> = bench.rt.block_on(async {
            let mut times = Vec::new();
            for _ in 0..UPDATES {
                let started = Instant::now();
                client.put(&url, &bench.body).run(200).await;
                times.push(format!("{:.1}", started.elapsed().as_secs_f64() * 1e3));
            }
            times
        });
        let requests = bench.sim.requests().len();
        println!("  {name:<19} {} ({requests} requests)", times.join(" "));
    }
}
