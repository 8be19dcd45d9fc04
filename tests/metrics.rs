//! Conflict metrics: the in-process snapshot, and (feature `metrics`) the `metrics` facade with
//! its labels, seen by a recorder installed in the test.

mod support;

use std::time::Duration;

use arm_sim::Scripted;
use reqwest_conflict::{ConflictKind, ConflictMiddleware};
use serde_json::json;
use support::*;

/// Two conflicts on a VM (one resolved, one permanent) and one on a NIC (resolved).
async fn traffic(middleware: ConflictMiddleware) {
    let sim = sim_with_vm(Duration::from_millis(20)).await;
    sim.seed(NIC, json!({"location": "westus", "properties": {}}));
    let locked = Scripted::json(
        409,
        json!({"error": {"code": "ScopeLocked", "message": "locked"}}),
    );
    sim.script("PUT", NIC, vec![busy()]);
    let client = middleware_client(middleware);
    // One at a time: a script is served to the next matching request, retries included.
    for script in [busy(), locked] {
        sim.script("PUT", VM, vec![script]);
        put_vm(&client, &sim, "x").await;
    }
    client
        .put(url(&sim, NIC))
        .json(&json!({"properties": {}}))
        .send()
        .await
        .unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn stats_and_metrics_count_by_type_kind_and_code() {
    #[cfg(feature = "metrics")]
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    #[cfg(feature = "metrics")]
    let snapshotter = recorder.snapshotter();
    // One thread (current_thread runtime), so a thread-local recorder sees every event.
    #[cfg(feature = "metrics")]
    let _guard = metrics::set_default_local_recorder(&recorder);

    let middleware = ConflictMiddleware::new(fast_policy());
    let stats = middleware.stats().clone();
    traffic(middleware).await;

    let snapshot = stats.snapshot();
    let count = |t: &str, kind, code: &str| {
        snapshot
            .conflicts
            .iter()
            .find(|c| c.resource_type == t && c.kind == kind && c.code == code)
            .map(|c| c.count)
    };
    assert_eq!(
        count(
            "Microsoft.Compute/virtualMachines",
            ConflictKind::StateConflict,
            "AnotherOperationInProgress"
        ),
        Some(1)
    );
    assert_eq!(
        count(
            "Microsoft.Compute/virtualMachines",
            ConflictKind::Permanent,
            "ScopeLocked"
        ),
        Some(1)
    );
    assert_eq!(
        count(
            "Microsoft.Network/networkInterfaces",
            ConflictKind::StateConflict,
            "AnotherOperationInProgress"
        ),
        Some(1)
    );
    assert_eq!(snapshot.total_conflicts(), 3);
    assert_eq!(snapshot.outcomes.get("resolved"), Some(&2));
    assert_eq!(snapshot.outcomes.get("surfaced"), Some(&1));
    assert_eq!(snapshot.retries, 2);

    #[cfg(feature = "metrics")]
    {
        use metrics_util::debugging::DebugValue;
        let metrics = snapshotter.snapshot().into_vec();
        // Counters as their value, histograms as their samples.
        let find = |name: &str, labels: &[(&str, &str)]| -> Option<Vec<f64>> {
            metrics.iter().find_map(|(key, _, _, value)| {
                let key = key.key();
                let all = labels
                    .iter()
                    .all(|(k, v)| key.labels().any(|l| l.key() == *k && l.value() == *v));
                if key.name() != name || !all {
                    return None;
                }
                Some(match value {
                    DebugValue::Counter(n) => vec![*n as f64],
                    DebugValue::Histogram(samples) => {
                        samples.iter().map(|s| s.into_inner()).collect()
                    }
                    DebugValue::Gauge(g) => vec![g.into_inner()],
                })
            })
        };
        let vm = "Microsoft.Compute/virtualMachines";
        let nic = "Microsoft.Network/networkInterfaces";
        let conflicts = [
            ("azure.resource.type", vm),
            ("conflict.kind", "permanent"),
            ("error.type", "ScopeLocked"),
            ("http.response.status_code", "409"),
        ];
        assert_eq!(
            find("reqwest_conflict.conflicts", &conflicts),
            Some(vec![1.0])
        );
        let resolved = [
            ("azure.resource.type", vm),
            ("conflict.kind", "state_conflict"),
            ("outcome", "resolved"),
        ];
        assert_eq!(
            find("reqwest_conflict.resolutions", &resolved),
            Some(vec![1.0])
        );
        assert_eq!(
            find("reqwest_conflict.retries", &[("azure.resource.type", nic)]),
            Some(vec![1.0])
        );
        let waits = find(
            "reqwest_conflict.wait.duration",
            &[("azure.resource.type", vm), ("outcome", "resolved")],
        )
        .expect("a wait histogram");
        assert_eq!(waits.len(), 1);
        assert!(waits[0] > 0.0);
    }
}
