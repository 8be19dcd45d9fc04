//! Single writer per resource in one process: leases, the state guard, the journal, cancellation.

mod support;

use std::{sync::Arc, time::Duration};

use arm_sim::{Scripted, Sim, SimConfig};
use reqwest_conflict::{ConflictMiddleware, ConflictPolicy, LeasePolicy, MemoryLeases};
use reqwest_middleware::ClientWithMiddleware;
use serde_json::json;
use support::*;

/// A simulator that *accepts* writes during a transition (see [`permissive_sim_with_vm`]).
async fn permissive_sim() -> Sim {
    permissive_sim_with_vm(Duration::from_millis(40)).await
}

async fn sixteen_writers(sim: &Sim, middleware: ConflictMiddleware) -> usize {
    sixteen_writers_through(sim, &clients(1, || middleware.clone())).await
}

/// `n` clients, each with a middleware of its own from `middleware`.
fn clients(n: usize, middleware: impl Fn() -> ConflictMiddleware) -> Vec<ClientWithMiddleware> {
    (0..n).map(|_| middleware_client(middleware())).collect()
}

/// Sixteen concurrent writes to the VM, spread over `clients`; how many succeeded.
async fn sixteen_writers_through(sim: &Sim, clients: &[ClientWithMiddleware]) -> usize {
    let writers: Vec<_> = (0..16)
        .map(|i| {
            let (client, url) = (clients[i % clients.len()].clone(), url(sim, VM));
            tokio::spawn(async move {
                client
                    .put(url)
                    .json(&vm_body(&i.to_string()))
                    .send()
                    .await
                    .unwrap()
                    .status()
            })
        })
        .collect();
    let mut ok = 0;
    for w in writers {
        if w.await.unwrap().is_success() {
            ok += 1;
        }
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_writers_never_overlap_and_never_meet_a_409() {
    let sim = permissive_sim().await;
    let middleware = ConflictMiddleware::new(fast_policy());
    let journal = middleware.journal().clone();
    assert_eq!(sixteen_writers(&sim, middleware).await, 16);
    assert_eq!(sim.overlapping_transitions(), 0);
    assert_eq!(sim.count("PUT", VM, Some(409)), 0);
    assert_eq!(sim.count("PUT", VM, None), 16);
    // The journal agrees, and its fencing tokens only grow.
    assert!(journal.overlaps().is_empty());
    let tokens: Vec<u64> = journal
        .for_resource(&VM.to_ascii_lowercase())
        .iter()
        .map(|e| e.token.unwrap())
        .collect();
    assert_eq!(tokens.len(), 16);
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{tokens:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_leases_the_same_load_overlaps() {
    // The control: the simulator does record overlaps when nothing prevents them.
    let sim = permissive_sim().await;
    let policy = ConflictPolicy {
        leases: LeasePolicy {
            enabled: false,
            ..LeasePolicy::default()
        },
        ..fast_policy()
    };
    assert_eq!(
        sixteen_writers(&sim, ConflictMiddleware::new(policy)).await,
        16
    );
    assert!(sim.overlapping_transitions() > 0);
}

#[tokio::test]
async fn a_subnet_write_also_leases_its_virtual_network() {
    let sim = start_sim(Duration::from_millis(60)).await;
    let vnet = SUBNET.rsplit_once("/subnets/").unwrap().0;
    sim.seed(vnet, json!({"location": "westus", "properties": {}}));
    sim.seed(SUBNET, json!({"properties": {}}));
    let middleware = ConflictMiddleware::new(fast_policy());
    let journal = middleware.journal().clone();
    let client = middleware_client(middleware);
    let (a, b) = tokio::join!(
        client
            .put(url(&sim, SUBNET))
            .json(&json!({"properties": {"addressPrefix": "10.0.0.0/24"}}))
            .send(),
        client
            .put(url(&sim, vnet))
            .json(&json!({"location": "westus", "properties": {}}))
            .send(),
    );
    assert!(a.unwrap().status().is_success());
    assert!(b.unwrap().status().is_success());
    // Serialized by the shared vnet key: one write held its leases only after the other's ended.
    let entries = journal.entries();
    assert_eq!(entries.len(), 2);
    let (a, b) = (&entries[0], &entries[1]);
    assert!(
        a.end.unwrap() <= b.start || b.end.unwrap() <= a.start,
        "the subnet and vnet writes overlapped: {entries:?}"
    );
    assert_ne!(a.resource, b.resource);
}

#[tokio::test]
async fn dropping_a_request_mid_wait_releases_its_lease() {
    let sim = sim_with_vm(Duration::from_millis(20)).await;
    // The resource is stuck: the first writer will wait on it (holding the lease) for a minute.
    sim.begin_transition(VM, "Updating", None);
    sim.script("PUT", VM, vec![busy()]);
    let leases = MemoryLeases::new();
    let policy = ConflictPolicy {
        deadline: Duration::from_secs(60),
        ..fast_policy()
    };
    let middleware = ConflictMiddleware::new(policy).with_shared_leases(Arc::new(leases.clone()));
    let client = middleware_client(middleware);

    let holder = tokio::spawn({
        let (client, url) = (client.clone(), url(&sim, VM));
        async move { client.put(url).json(&vm_body("a")).send().await }
    });
    // Wait until the holder is polling, i.e. holds the lease.
    while sim.count("GET", VM, None) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let waiter = tokio::spawn({
        let (client, url) = (client.clone(), url(&sim, VM));
        async move { client.put(url).json(&vm_body("b")).send().await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !waiter.is_finished(),
        "the second writer should be queued on the lease"
    );
    waiter.abort();
    holder.abort();
    let _ = (waiter.await, holder.await);
    assert!(
        leases.is_empty(),
        "a cancelled request left {} key(s) behind",
        leases.len()
    );

    // A later writer is not held up by either: it goes as soon as the resource converges.
    sim.finish_transitions(VM);
    let later = tokio::time::timeout(
        Duration::from_secs(10),
        client.put(url(&sim, VM)).json(&vm_body("c")).send(),
    )
    .await
    .expect("a cancelled request's lease is still held")
    .unwrap();
    assert!(later.status().is_success());
}

#[tokio::test]
async fn a_201_from_an_api_that_is_not_arm_does_not_hold_up_the_next_write() {
    // `POST /items`-style APIs answer 201 for "created"; nothing is in transition afterwards,
    // and their collections do not report states, so the next write must go straight through.
    let sim = Sim::start(SimConfig::default()).await;
    let things = "/api/things";
    sim.script(
        "PUT",
        things,
        vec![Scripted::raw(201, "{}"), Scripted::raw(201, "{}")],
    );
    sim.script("GET", things, vec![Scripted::raw(200, "[]"); 50]);
    let policy = ConflictPolicy {
        deadline: Duration::from_secs(1),
        ..fast_policy()
    };
    let client = client(policy);
    for _ in 0..2 {
        let resp = client
            .put(sim.url(things))
            .json(&json!({"name": "x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
    }
    assert_eq!(sim.count("PUT", things, None), 2);
    assert_eq!(
        sim.count("GET", things, None),
        0,
        "no state guard for a non-ARM API"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn middlewares_sharing_a_memory_store_serialize_each_others_writers() {
    // Clones of one `MemoryLeases` given to two middlewares must still be one store.
    let sim = permissive_sim().await;
    let leases = MemoryLeases::new();
    let clients = clients(2, || {
        ConflictMiddleware::new(fast_policy()).with_leases(leases.clone())
    });
    assert_eq!(sixteen_writers_through(&sim, &clients).await, 16);
    assert_eq!(sim.overlapping_transitions(), 0);
    assert_eq!(sim.count("PUT", VM, Some(409)), 0);
    // The last write left the VM in transition: its flag is all the store still holds.
    assert_eq!(leases.len(), 1);
}

#[tokio::test]
async fn a_journal_given_to_two_middlewares_records_both_within_its_window() {
    let sim = instant_sim().await;
    let journal = reqwest_conflict::Journal::with_capacity(3);
    let clients = clients(2, || {
        ConflictMiddleware::new(fast_policy()).with_journal(journal.clone())
    });
    for i in 0..4 {
        let path = format!("{VM}{i}");
        let response = clients[i % 2]
            .put(url(&sim, &path))
            .json(&vm_body("0"))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
    }
    // Both clients wrote to it; it kept the newest three.
    let entries = journal.entries();
    let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 3]);
    assert!(entries[2].resource.ends_with("3"), "{entries:?}");
}

/// The verifier of merged journals tells writers that shared a lease store from writers that did
/// not: two "processes" (middlewares with journals of their own) write the VM on a simulator that
/// accepts overlapping writes, first with a store each, then with one store between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_journals_show_whether_two_writers_shared_their_leases() {
    use reqwest_conflict::journal::{Journal, verify};

    async fn two_processes(
        shared: Option<Arc<MemoryLeases>>,
    ) -> reqwest_conflict::journal::Verification {
        // Answers take 50 ms, so writers of the two that start together are in flight together.
        let sim = configured_sim_with_vm(SimConfig {
            transition: Duration::from_millis(40),
            reject_during_transition: false,
            faults: arm_sim::Faults {
                latency: Duration::from_millis(50),
                ..arm_sim::Faults::default()
            },
            ..SimConfig::default()
        })
        .await;
        let journals = [
            Journal::default().with_process("a"),
            Journal::default().with_process("b"),
        ];
        let middlewares: Vec<ConflictMiddleware> = journals
            .iter()
            .map(|journal| {
                let middleware =
                    ConflictMiddleware::new(fast_policy()).with_journal(journal.clone());
                match &shared {
                    Some(store) => middleware.with_shared_leases(store.clone()),
                    None => middleware,
                }
            })
            .collect();
        let clients: Vec<_> = middlewares.into_iter().map(middleware_client).collect();
        assert_eq!(sixteen_writers_through(&sim, &clients).await, 16);
        let verdict = verify(journals.iter().flat_map(Journal::entries), Duration::ZERO);
        assert_eq!((verdict.entries, verdict.processes), (16, 2), "{verdict}");
        if verdict.is_ok() {
            assert_eq!(
                sim.overlapping_transitions(),
                0,
                "the journals missed an overlap"
            );
        }
        verdict
    }

    let apart = two_processes(None).await;
    assert!(!apart.overlaps.is_empty(), "{apart}");
    let together = two_processes(Some(Arc::new(MemoryLeases::new()))).await;
    assert!(together.is_ok(), "{together}");
}
