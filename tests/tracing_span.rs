//! Every resolution is a tracing span carrying the report's fields.
//!
//! Alone in its own test binary: tracing caches per-callsite interest process-wide, so a test
//! running in parallel without a subscriber could hide this one's span.

mod common;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use arm_sim::{Sim, SimConfig};
use common::*;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn every_resolution_is_a_span_with_its_fields() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let sim = Sim::start(SimConfig::default()).await;
    sim.seed(VM, vm_body("a"));
    sim.begin_transition(VM, "Updating", Some(Duration::from_millis(40)));
    sim.script("PUT", VM, vec![busy()]);
    let resp = client(fast_policy())
        .put(url(&sim, VM))
        .json(&vm_body("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
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
