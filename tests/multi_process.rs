//! Single writer per resource across OS processes: three copies of this test binary, each with
//! its own `ConflictMiddleware`, share one lease through a real Redis (then a real Azurite blob)
//! and each make 10 writes to one resource on a simulator that *accepts* overlapping writes —
//! so only the shared lease and state guard keep the transitions apart. Each child exports its
//! journal to a file; the parent merges the three with `journal::verify`.

mod support;

use std::time::Duration;

use reqwest_conflict::{
    BlobLeases, ConflictMiddleware, ConflictPolicy, Lro, RedisLeases,
    journal::{Journal, read_json_lines, verify},
    lease::dev_sas_container_url,
};
use support::*;

const CHILD_SIM: &str = "MULTI_PROCESS_SIM";
const CHILD_STORE: &str = "MULTI_PROCESS_STORE";
const CHILD_JOURNAL: &str = "MULTI_PROCESS_JOURNAL";
const WRITERS: usize = 3;
const WRITES: usize = 10;

fn policy() -> ConflictPolicy {
    ConflictPolicy {
        deadline: Duration::from_secs(60),
        ..fast_policy()
    }
}

/// The child side: ten writes through a middleware whose leases live in the shared store.
#[test]
fn child_writer() {
    run_if_child(
        [CHILD_SIM, CHILD_STORE, CHILD_JOURNAL],
        |[sim, store, journal]| async move {
            let file = std::fs::File::create(&journal).unwrap();
            let journal = Journal::default()
                .with_process(format!("writer {}", std::process::id()))
                .with_export(file);
            let middleware = match store.split_once(':') {
                Some(("redis", url)) => ConflictMiddleware::new(policy())
                    .with_leases(RedisLeases::new(url, "multi:").await.unwrap()),
                Some(("redis-settle", url)) => ConflictMiddleware::new(ConflictPolicy {
                    lro: Lro::Settle,
                    ..policy()
                })
                .with_leases(RedisLeases::new(url, "multi-settle:").await.unwrap()),
                Some(("blob", url)) => {
                    ConflictMiddleware::new(policy()).with_leases(BlobLeases::new(url).unwrap())
                }
                _ => panic!("unknown store {store}"),
            }
            .with_journal(journal);
            let client = middleware_client(middleware);
            let url = format!("{sim}{VM}?{API}");
            for i in 0..WRITES {
                let resp = client
                    .put(&url)
                    .json(&vm_body(&i.to_string()))
                    .send()
                    .await
                    .unwrap();
                assert!(resp.status().is_success(), "write {i}: {}", resp.status());
            }
            println!("WRITER-DONE ok");
        },
    );
}

/// Starts the writers and checks what the simulator saw.
async fn three_writers(store: String) {
    let sim = permissive_sim_with_vm(Duration::from_millis(50)).await;
    let dir = std::env::temp_dir().join(format!("multi-process-{}", free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let journals: Vec<_> = (0..WRITERS)
        .map(|i| dir.join(format!("{i}.jsonl")))
        .collect();
    let children: Vec<_> = journals
        .iter()
        .map(|journal| {
            let envs = [
                (CHILD_SIM, sim.base_url().to_owned()),
                (CHILD_STORE, store.clone()),
                (CHILD_JOURNAL, journal.display().to_string()),
            ];
            tokio::task::spawn_blocking(move || {
                let envs: Vec<(&str, String)> = envs.iter().map(|(k, v)| (*k, v.clone())).collect();
                spawn_child_test(
                    "child_writer",
                    &envs,
                    "WRITER-DONE ",
                    Duration::from_secs(120),
                )
            })
        })
        .collect();
    for child in children {
        let (_child, said) = child.await.unwrap();
        assert_eq!(said.trim(), "ok");
    }
    assert_eq!(sim.count("PUT", VM, Some(200)), WRITERS * WRITES);
    assert_eq!(sim.overlapping_transitions(), 0, "{:#?}", sim.transitions());
    assert_eq!(sim.count("PUT", VM, Some(409)), 0);
    if store.starts_with("redis-settle") {
        // Each writer held the lease until its operation ended: the next one had no transition
        // to wait for, so nobody read the VM's state.
        assert_eq!(sim.count("GET", VM, None), 0);
    }

    // The processes' own records agree: thirty lease-held intervals, one after another, under
    // growing fencing tokens.
    let mut entries = Vec::new();
    for journal in &journals {
        let file = std::fs::File::open(journal).unwrap();
        entries.extend(read_json_lines(std::io::BufReader::new(file)).unwrap());
    }
    let verdict = verify(entries, Duration::ZERO);
    assert!(verdict.is_ok(), "{verdict}");
    assert_eq!(
        (verdict.entries, verdict.processes, verdict.resources),
        (WRITERS * WRITES, WRITERS, 1),
        "{verdict}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_share_a_redis_lease() {
    let redis = start_redis();
    three_writers(format!("redis:{}", redis.url())).await;
}

/// With `lro: settle` the lease covers each write's whole transition, across processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_settle_their_operations_under_a_redis_lease() {
    let redis = start_redis();
    three_writers(format!("redis-settle:{}", redis.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_share_a_blob_lease() {
    let azurite = start_azurite();
    let url = dev_sas_container_url(&azurite.blob_endpoint(), "multi");
    BlobLeases::new(&url)
        .unwrap()
        .create_container()
        .await
        .unwrap();
    three_writers(format!("blob:{url}")).await;
}
