//! Every resolution is a tracing span carrying the report's fields.
//!
//! Alone in its own test binary: tracing caches per-callsite interest process-wide, so a test
//! running in parallel without a subscriber could hide this one's span.

mod support;

use std::time::Duration;

use arm_sim::SimConfig;
use support::*;
use tracing_subscriber::fmt::format::FmtSpan;

#[tokio::test]
async fn every_resolution_is_a_span_with_its_fields() {
    let captured = Captured::default();
    let subscriber = captured.subscriber(tracing::Level::INFO, FmtSpan::CLOSE);
    let _guard = tracing::subscriber::set_default(subscriber);

    let sim = configured_sim_with_vm(SimConfig::default()).await;
    sim.begin_transition(VM, "Updating", Some(Duration::from_millis(40)));
    sim.script("PUT", VM, vec![busy()]);
    let resp = put_vm(&client(fast_policy()), &sim, "x").await;
    assert_eq!(resp.status(), 200);

    let text = String::from_utf8(captured.bytes()).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("conflict_resolution") && l.contains("close"))
        .unwrap_or_else(|| panic!("no closed span in:\n{text}"));
    for field in [
        "kind=\"state_conflict\"",
        "code=\"AnotherOperationInProgress\"",
        "attempts=2",
        "outcome=Resolved",
        "resource_type=\"Microsoft.Compute/virtualMachines\"",
    ] {
        assert!(line.contains(field), "{field} missing in {line}");
    }
}
