//! The caller side: a fast policy, clients, reports and engine errors, PUTs.

use std::time::Duration;

use arm_sim::Sim;
use reqwest_conflict::{
    ConflictMiddleware, ConflictPolicy, ConflictReport, Error, Lro, PollSchedule,
};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};

use super::sim::{VM, url, vm_body};

/// Milliseconds where ARM would take seconds, so a test runs in well under a second.
pub fn fast_policy() -> ConflictPolicy {
    ConflictPolicy {
        // Request by request: a write's operation is handed back at once, so tests count the
        // requests of one exchange (`tests/lro.rs` covers the default, `settle`).
        lro: Lro::Return,
        max_attempts: 20,
        deadline: Duration::from_secs(10),
        poll: PollSchedule {
            min_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(40),
            factor: 2.0,
            jitter: true,
        },
        retry_after_cap: Duration::from_millis(50),
        ..ConflictPolicy::azure_arm()
    }
}

/// How long any call under `policy` may take before a test calls it a hang: a detector, not a
/// timing check.
pub fn hang_limit(policy: &ConflictPolicy) -> Duration {
    policy.deadline * 3 + Duration::from_secs(5)
}

/// A client whose only middleware is `middleware`.
pub fn middleware_client(middleware: ConflictMiddleware) -> ClientWithMiddleware {
    ClientBuilder::new(reqwest::Client::new())
        .with(middleware)
        .build()
}

/// A client that resolves conflicts under `policy`.
pub fn client(policy: ConflictPolicy) -> ClientWithMiddleware {
    client_with(reqwest::Client::new(), policy)
}

/// Like [`client`], over the given reqwest client (its resolver, its redirect policy).
pub fn client_with(http: reqwest::Client, policy: ConflictPolicy) -> ClientWithMiddleware {
    ClientBuilder::new(http)
        .with(ConflictMiddleware::new(policy))
        .build()
}

/// A PUT of `vm_body(tag)` to the VM through `client`; the answer, whatever its status.
pub async fn put_vm(client: &ClientWithMiddleware, sim: &Sim, tag: &str) -> reqwest::Response {
    client
        .put(url(sim, VM))
        .json(&vm_body(tag))
        .send()
        .await
        .unwrap()
}

/// The report a response that met a conflict carries.
pub fn report(resp: &reqwest::Response) -> ConflictReport {
    resp.extensions()
        .get::<ConflictReport>()
        .cloned()
        .expect("a response that met a conflict carries a report")
}

/// Fails unless one of `report`'s notes contains `fragment`.
pub fn assert_noted(report: &ConflictReport, fragment: &str) {
    assert!(
        report.notes.iter().any(|n| n.contains(fragment)),
        "no note says {fragment:?}: {:?}",
        report.notes
    );
}

/// The engine's own error inside a middleware error.
pub fn engine_error(err: &reqwest_middleware::Error) -> &Error {
    Error::from_middleware(err).unwrap_or_else(|| panic!("expected an engine error, got {err:?}"))
}

/// The prerequisite rules of the shipped `fixtures/policies/compute.json`: deallocate before a
/// resize the VM's cluster cannot host, start it again after.
pub fn shipped_prerequisites() -> Vec<reqwest_conflict::Prerequisite> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/policies/compute.json"
    ))
    .unwrap();
    ConflictPolicy::from_json(&text).unwrap().prerequisites
}
