//! `ConflictMiddleware` with `reqwest-retry`, in the order that works, on the embedded ARM
//! simulator.
//!
//! ```text
//! cargo run --example retry
//! ```
//!
//! The conflict middleware goes first (outside), the retry middleware second (inside, next to
//! the transport):
//!
//! - every request the conflict middleware sends — each attempt of the write, each re-fetch and
//!   poll — passes through the retry middleware, so a 500, a 429 or a dropped connection is
//!   retried right there, under the write's lease and within its deadline;
//! - `reqwest-retry` treats 409 and 412 as fatal and hands them up untouched, so every conflict
//!   reaches the conflict middleware as the server sent it;
//! - the conflict middleware's own errors reach the caller unwrapped (the other way round,
//!   `reqwest-retry` wraps them, and a retry of a whole write takes its lease anew).
//!
//! The run: another writer's operation keeps the VM `Updating`; our PUT first meets a 500 and a
//! 429 (retried by `reqwest-retry`), then ARM's 409 `AnotherOperationInProgress` (resolved by the
//! conflict middleware once the operation ends), and lands. Then a write whose resource never
//! converges ends in `Error::NotConverged`, which the caller finds with no unwrapping, report
//! included. The example exits non-zero if any of that does not happen.

use std::time::Duration;

use arm_sim::{Faults, Scripted, Sim, SimConfig};
use reqwest_conflict::{ConflictMiddleware, ConflictPolicy, ConflictReport, Error, Outcome};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use reqwest_retry::{RetryTransientMiddleware, policies::ExponentialBackoff};
use serde_json::json;

const VM: &str =
    "/subscriptions/sub1/resourceGroups/rg1/providers/Microsoft.Compute/virtualMachines/vm1";

/// The right order: conflicts outside, transient failures inside.
fn client(conflicts: ConflictMiddleware) -> ClientWithMiddleware {
    // Short delays for the simulator; against ARM, keep the retry budget well inside the
    // conflict policy's deadline, since the deadline does not interrupt a send in progress.
    let transient = ExponentialBackoff::builder()
        .retry_bounds(Duration::from_millis(10), Duration::from_millis(50))
        .build_with_max_retries(3);
    ClientBuilder::new(reqwest::Client::new())
        .with(conflicts)
        .with(RetryTransientMiddleware::new_with_policy(transient))
        .build()
}

/// Collects what went wrong, to exit non-zero at the end.
#[derive(Default)]
struct Checks(Vec<String>);

impl Checks {
    fn check(&mut self, ok: bool, what: &str) {
        println!("{} {what}", if ok { "ok  " } else { "FAIL" });
        if !ok {
            self.0.push(what.to_owned());
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let sim = Sim::start(SimConfig::default()).await;
    sim.seed(VM, json!({"location": "westus", "properties": {}}));
    let url = sim.url(&format!("{VM}?api-version=2024-07-01"));
    let body = json!({"location": "westus", "tags": {"owner": "ci"}, "properties": {}});
    let conflicts = ConflictMiddleware::new(ConflictPolicy::fast());
    let client = client(conflicts.clone());
    let mut checks = Checks::default();

    // Another writer's operation is in progress, and the server is having a bad moment.
    sim.begin_transition(VM, "Updating", None);
    sim.script(
        "PUT",
        VM,
        vec![
            Scripted::json(500, json!({"error": {"code": "InternalServerError"}})),
            Scripted::json(429, json!({"error": {"code": "TooManyRequests"}})),
        ],
    );
    // The other writer's operation ends once our PUT has met its 409.
    let ending = {
        let sim = sim.clone();
        tokio::spawn(async move {
            while sim.count("PUT", VM, Some(409)) == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            sim.finish_transitions(VM);
        })
    };
    let resp = client.put(&url).json(&body).send().await?;
    ending.await?;

    let statuses: Vec<u16> = (sim.requests().iter())
        .filter(|r| r.method == "PUT")
        .map(|r| r.status)
        .collect();
    println!("the server answered the PUTs: {statuses:?}");
    checks.check(resp.status().is_success(), "the write landed");
    checks.check(
        statuses == [500, 429, 409, 200],
        "500 and 429 retried by reqwest-retry, then the 409 resolved",
    );
    let report = resp.extensions().get::<ConflictReport>();
    checks.check(
        report.is_some_and(|r| r.outcome == Outcome::Resolved && r.conflicts == 1),
        "the report: one conflict, resolved",
    );
    checks.check(
        report.is_some_and(|r| r.attempts == 2),
        "the conflict middleware sent the write twice (the retries of 500 and 429 were inside the first)",
    );

    // A resource that never converges: the wait ends at the deadline.
    sim.set_faults(Faults {
        never_converge: true,
        ..Faults::default()
    });
    sim.begin_transition(VM, "Updating", None);
    let short = ConflictPolicy::fast().deadline(Duration::from_millis(500))?;
    let err = match self::client(ConflictMiddleware::new(short))
        .put(&url)
        .json(&body)
        .send()
        .await
    {
        Ok(resp) => return Err(format!("expected an error, got {}", resp.status()).into()),
        Err(err) => err,
    };
    println!("the stuck write: {err}");
    let unwrapped = matches!(&err, reqwest_middleware::Error::Middleware(e)
        if e.downcast_ref::<Error>().is_some());
    checks.check(unwrapped, "the conflict error reaches the caller unwrapped");
    let error = Error::from_middleware(&err);
    checks.check(
        matches!(error, Some(Error::NotConverged { .. })),
        "Error::from_middleware finds NotConverged",
    );
    checks.check(
        error.and_then(Error::report).is_some_and(|r| {
            r.outcome == Outcome::DeadlineExceeded && r.last_state() == Some("InProgress")
        }),
        "its report says the deadline passed with the operation still in progress",
    );

    // The first client's middleware, read through the clone kept before `ClientBuilder::with`.
    println!(
        "stats: {}",
        serde_json::to_string(&conflicts.stats().snapshot())?
    );
    if !checks.0.is_empty() {
        eprintln!("error: {} check(s) failed: {:?}", checks.0.len(), checks.0);
        std::process::exit(1);
    }
    Ok(())
}
