//! `MemoryLeases`: acquire + release, uncontended and contended.
//!
//! ```text
//! cargo bench --bench leases
//! ```
//!
//! - `uncontended/distinct_keys`: each acquire takes a key nobody holds (1,024 keys in turn), so
//!   every acquire creates the key's entry and every release removes it — the growth path.
//! - `uncontended/same_key`: one key, acquired and released in a loop — the entry is created and
//!   removed each time too (nobody else uses it), but the shard and hash stay hot.
//! - `uncontended/with_parent`: a subnet write: [`acquire_all`] on the subnet and its virtual
//!   network (sorted, two leases), as the engine does for types in `lock_parent_of`.
//! - `engine_path`: what the engine does per write under a lease: acquire through the trait,
//!   read the transitioning flag the store reported while granting, release.
//! - `contended/N`: N tasks on a 2-worker runtime, each acquiring and releasing one shared key 200
//!   times; the time per acquire (`Throughput::Elements` = N × 200) includes the hand-off from one
//!   holder to the next through the FIFO queue.
//!
//! The uncontended cases run `iters` acquisitions inside one `block_on`, so no per-iteration
//! runtime entry is measured.

use std::{hint::black_box, time::Duration};

use criterion::{BenchmarkId, Criterion, Throughput};
use reqwest_conflict::{LeasePolicy, LeaseStore, MemoryLeases, ResourceId, lease::acquire_all};
use tokio::time::Instant;

const TTL: Duration = Duration::from_secs(60);
const WAIT: Duration = Duration::from_secs(30);
const ROUNDS: usize = 200;

fn key(i: usize) -> String {
    format!(
        "/subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/rg/providers/microsoft.compute/virtualmachines/vm{i}"
    )
}

/// Runs `step` (given the iteration number) `iters` times inside one `block_on`, timed as a whole.
fn timed(rt: &tokio::runtime::Runtime, iters: u64, mut step: impl AsyncFnMut(usize)) -> Duration {
    rt.block_on(async {
        let started = Instant::now();
        for i in 0..iters as usize {
            step(i).await;
        }
        started.elapsed()
    })
}

fn main() {
    let single = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let pool = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
        .configure_from_args();

    let keys: Vec<String> = (0..1024).map(key).collect();
    let subnet = ResourceId::parse(
        "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/vnet1/subnets/s1",
    )
    .expect("subnet id");
    let subnet_keys = LeasePolicy::default().keys_for(&subnet);
    assert_eq!(subnet_keys.len(), 2, "a subnet write leases its VNet too");

    let mut group = c.benchmark_group("leases_uncontended");
    group.throughput(Throughput::Elements(1));
    group.bench_function("distinct_keys", |b| {
        let leases = MemoryLeases::new();
        b.iter_custom(|iters| {
            let elapsed = timed(&single, iters, async |i| {
                let lease = leases
                    .acquire(&keys[i % keys.len()], TTL, WAIT)
                    .await
                    .expect("free key");
                black_box(lease.token());
            });
            assert!(leases.is_empty(), "released keys are forgotten");
            elapsed
        })
    });
    group.bench_function("same_key", |b| {
        let leases = MemoryLeases::new();
        b.iter_custom(|iters| {
            timed(&single, iters, async |_| {
                let lease = leases.acquire(&keys[0], TTL, WAIT).await.expect("free");
                black_box(lease.token());
            })
        })
    });
    group.bench_function("with_parent", |b| {
        let leases = MemoryLeases::new();
        b.iter_custom(|iters| {
            timed(&single, iters, async |_| {
                let held = acquire_all(&leases, &subnet_keys, TTL, WAIT)
                    .await
                    .expect("free");
                black_box(held.len());
            })
        })
    });
    group.bench_function("engine_path", |b| {
        let leases = MemoryLeases::new();
        b.iter_custom(|iters| {
            timed(&single, iters, async |i| {
                let lease = leases
                    .acquire(&keys[i % keys.len()], TTL, WAIT)
                    .await
                    .expect("free");
                // The engine reads the flag the store saw while granting, without a call.
                black_box(lease.transitioning());
                lease.release().await;
            })
        })
    });
    group.finish();

    let mut group = c.benchmark_group("leases_contended");
    for tasks in [2usize, 8, 64] {
        group.throughput(Throughput::Elements((tasks * ROUNDS) as u64));
        group.bench_with_input(BenchmarkId::from_parameter(tasks), &tasks, |b, &tasks| {
            b.iter_custom(|iters| {
                pool.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let leases = MemoryLeases::new();
                        let started = Instant::now();
                        let workers: Vec<_> = (0..tasks)
                            .map(|_| {
                                let leases = leases.clone();
                                tokio::spawn(async move {
                                    let key = key(0);
                                    let mut last = 0;
                                    for _ in 0..ROUNDS {
                                        let lease =
                                            leases.acquire(&key, TTL, WAIT).await.expect("fair");
                                        assert!(lease.token() > last, "tokens grow");
                                        last = lease.token();
                                        // Hold across a yield, as a writer holds across its send.
                                        tokio::task::yield_now().await;
                                    }
                                })
                            })
                            .collect();
                        for worker in workers {
                            worker.await.expect("worker");
                        }
                        total += started.elapsed();
                        assert!(leases.is_empty(), "every key forgotten");
                    }
                    total
                })
            })
        });
    }
    group.finish();

    c.final_summary();
}
