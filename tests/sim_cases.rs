//! Conflicts real ARM sends where a client does not look first, played by the simulator and met
//! through the middleware: a conflict carried by a 429, a stale `If-Match` refused inside an
//! accepted operation, and a name held by a soft-deleted object.

mod support;

use std::time::Duration;

use arm_sim::{RecordedRequest, Sim, SimConfig};
use reqwest_conflict::{ConflictKind, ConflictPolicy, ConflictReport, Lro, Outcome, Prerequisite};
use serde_json::json;
use support::*;

const ZONE: &str = "/subscriptions/sub1/resourceGroups/rg1/providers/Microsoft.Network/privateDnsZones/www.contoso-7708.com";
const CERT: &str = "/subscriptions/sub1/resourceGroups/rg1/providers/Microsoft.KeyVault/vaults/kv1/certificates/hotsqa";
const DELETED_CERT: &str = "/subscriptions/sub1/resourceGroups/rg1/providers/Microsoft.KeyVault/vaults/kv1/deletedcertificates/hotsqa";

// ---- a conflict carried by a 429 ----

/// Two writers without leases (processes that share no store) write one VM at once; the
/// simulator answers the one that finds the other's transition running with App Service's
/// exclusive-lock 429. It is waited out and sent again: both writes land, one after the other.
#[tokio::test]
async fn a_conflict_carried_by_a_429_is_waited_out_and_no_write_is_lost() {
    let sim = configured_sim_with_vm(SimConfig {
        // Long enough that the second writer surely arrives while the first one's runs.
        transition: Duration::from_millis(300),
        busy_429: true,
        ..SimConfig::default()
    })
    .await;
    let policy = fast_policy().leases(false).unwrap();
    let (a, b) = (client(policy.clone()), client(policy));
    let (first, second) = tokio::join!(put_vm(&a, &sim, "one"), put_vm(&b, &sim, "two"));

    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );
    let met = |r: &reqwest::Response| r.extensions().get::<ConflictReport>().cloned();
    // The writer that met the other was sent again once the other's write ended: it is last.
    let (met, last) = match (met(&first), met(&second)) {
        (Some(report), None) => (report, "one"),
        (None, Some(report)) => (report, "two"),
        reports => panic!("exactly one writer meets the other: {reports:?}"),
    };
    assert_eq!(met.kind, ConflictKind::StateConflict);
    assert_eq!(met.classification.status, 429);
    assert_eq!(met.outcome, Outcome::Resolved);
    assert_eq!(met.code.as_deref(), Some("429"));
    assert!(met.attempts >= 2, "{met:?}");

    assert!(sim.count("PUT", VM, Some(429)) >= 1);
    assert_eq!(
        sim.count("PUT", VM, Some(409)),
        0,
        "the simulator sent 429s"
    );
    assert_eq!(sim.count("PUT", VM, Some(200)), 2, "both writes applied");
    assert_eq!(
        sim.overlapping_transitions(),
        0,
        "the second waited for the first"
    );
    let updates = sim.transitions();
    assert_eq!(updates.len(), 2, "{updates:?}");
    let vm = sim.resource(VM).unwrap();
    assert_eq!(vm["tags"]["build"], last);
}

/// A 429 that is throttling (Cosmos DB's "Request rate is large", as recorded) is not the
/// middleware's business: handed back as it came, sent once, no report.
#[tokio::test]
async fn a_throttling_429_is_passed_through_untouched() {
    let sim = configured_sim_with_vm(SimConfig {
        busy_429: true,
        ..SimConfig::default()
    })
    .await;
    sim.script(
        "PUT",
        VM,
        vec![recorded("constructed/40_cosmos_throttled_retry_after_ms")],
    );
    let client = client(fast_policy().leases(false).unwrap());
    let resp = put_vm(&client, &sim, "throttled").await;

    assert_eq!(resp.status(), 429);
    assert!(resp.extensions().get::<ConflictReport>().is_none());
    let body = resp.text().await.unwrap();
    assert!(body.contains("Request rate is large"), "{body}");
    assert_eq!(put_statuses(&sim), [429], "sent once, not resent");
    assert_eq!(sim.transitions().len(), 0);
}

// ---- a stale If-Match refused inside an accepted operation ----

/// Private DNS accepts a write with a stale `If-Match` (202) and fails its operation with
/// `PreconditionFailed`. Settling follows the operation, finds the failure, and hands the answer
/// back as the server sent it: a stale ETag is the caller's to resolve, not a conflict that
/// clears, so the write is not sent again.
#[tokio::test]
async fn an_async_precondition_failure_is_handed_back_as_the_operations_failure() {
    let sim = Sim::start(SimConfig {
        transition: Duration::from_millis(50),
        async_precondition: vec!["Microsoft.Network/privateDnsZones".into()],
        ..SimConfig::default()
    })
    .await;
    sim.seed(ZONE, json!({"location": "global", "tags": {"v": "1"}}));
    let policy = ConflictPolicy {
        lro: Lro::Settle,
        ..fast_policy()
    };
    let resp = client(policy)
        .put(url(&sim, ZONE))
        .header("if-match", "\"stale\"")
        .json(&json!({"location": "global", "tags": {"v": "2"}}))
        .send()
        .await
        .unwrap();

    assert_eq!(resp.status(), 202, "the server's answer, untouched");
    assert!(resp.headers().contains_key("azure-asyncoperation"));
    let report = report(&resp);
    assert_eq!(report.kind, ConflictKind::StalePrecondition);
    assert_eq!(report.code.as_deref(), Some("PreconditionFailed"));
    assert_eq!((report.outcome, report.attempts), (Outcome::Surfaced, 1));
    assert_noted(&report, "handed back as the server answered");
    assert_eq!(put_statuses(&sim), [202], "not sent again");
    assert!(operation_polls(&sim) >= 1, "the operation was followed");
    let status = reqwest::get(resp.headers()["azure-asyncoperation"].to_str().unwrap())
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(
        status["status"], "Failed",
        "it had ended when the call returned"
    );
    assert_eq!(
        sim.resource(ZONE).unwrap()["tags"]["v"],
        "1",
        "nothing written"
    );
}

// ---- a name held by a soft-deleted object ----

/// The purge rule: free the name by purging the deleted record Key Vault keeps beside the
/// collection, then wait until that record answers 404.
fn purge_rule() -> Vec<Prerequisite> {
    ConflictPolicy::from_json(
        r#"{"prerequisites": [{
            "name": "purge_soft_deleted",
            "resource_type": "Microsoft.KeyVault/vaults/certificates",
            "codes": ["ObjectIsDeletedButRecoverable"],
            "action": { "method": "DELETE", "path": "{parent}/deleted{type}/{name}" },
            "until": { "path": "{parent}/deleted{type}/{name}", "status": 404 }
        }]}"#,
    )
    .unwrap()
    .prerequisites
}

/// A simulator where a certificate named `hotsqa` was created and deleted, and is now held
/// soft-deleted; its requests so far forgotten.
async fn soft_deleted_certificate() -> Sim {
    let sim = Sim::start(SimConfig {
        transition: Duration::ZERO,
        delete_transition: Duration::ZERO,
        soft_delete: vec!["Microsoft.KeyVault/vaults/certificates".into()],
        ..SimConfig::default()
    })
    .await;
    let plain = reqwest::Client::new();
    let created = plain
        .put(url(&sim, CERT))
        .json(&certificate())
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let deleted = plain.delete(url(&sim, CERT)).send().await.unwrap();
    assert_eq!(deleted.status(), 202);
    assert!(sim.resource(CERT).is_none());
    sim.clear_requests();
    sim
}

fn certificate() -> serde_json::Value {
    json!({"properties": {"subject": "CN=hotsqa"}})
}

/// The certificate written through the middleware under `policy`.
async fn write_certificate(sim: &Sim, policy: ConflictPolicy) -> reqwest::Response {
    client(policy)
        .put(url(sim, CERT))
        .json(&certificate())
        .send()
        .await
        .unwrap()
}

/// The requests `sim` answered, as `METHOD path status`.
fn exchanges(sim: &Sim) -> Vec<String> {
    sim.requests()
        .iter()
        .map(|r: &RecordedRequest| format!("{} {} {}", r.method, r.path, r.status))
        .collect()
}

#[tokio::test]
async fn a_soft_deleted_name_is_purged_by_a_prerequisite_rule_then_created() {
    let sim = soft_deleted_certificate().await;
    let policy = ConflictPolicy {
        prerequisites: purge_rule(),
        ..fast_policy()
    };
    let resp = write_certificate(&sim, policy).await;

    assert_eq!(resp.status(), 201);
    assert_eq!(
        exchanges(&sim),
        [
            format!("PUT {CERT} 409"),
            format!("DELETE {DELETED_CERT} 204"),
            format!("GET {DELETED_CERT} 404"),
            format!("PUT {CERT} 201"),
        ]
    );
    // The purge kept the request's origin and api-version.
    let purge = &sim.requests()[1];
    assert_eq!(purge.query.as_deref(), Some(API));
    let report = report(&resp);
    assert_eq!(report.kind, ConflictKind::PrerequisiteRequired);
    assert_eq!(report.outcome, Outcome::Resolved);
    assert_eq!(
        report.steps,
        [
            format!("DELETE {DELETED_CERT}: 204"),
            "HTTP 404: reached after 1 poll(s)".to_owned(),
            "PUT (retry): 201".to_owned(),
        ]
    );
}

/// The other way to free the name: recover the deleted object, then write it.
#[tokio::test]
async fn a_soft_deleted_name_can_be_recovered_by_a_prerequisite_rule_instead() {
    let sim = soft_deleted_certificate().await;
    let recover = ConflictPolicy::from_json(
        r#"{"prerequisites": [{
            "resource_type": "Microsoft.KeyVault/vaults/certificates",
            "codes": ["ObjectIsDeletedButRecoverable"],
            "action": { "method": "POST", "path": "{parent}/deleted{type}/{name}/recover" },
            "until": { "pointer": "/properties/provisioningState", "equals": "Succeeded" }
        }]}"#,
    )
    .unwrap();
    let policy = ConflictPolicy {
        prerequisites: recover.prerequisites,
        ..fast_policy()
    };
    let resp = write_certificate(&sim, policy).await;

    assert_eq!(resp.status(), 200, "an update of the recovered certificate");
    assert_eq!(
        exchanges(&sim),
        [
            format!("PUT {CERT} 409"),
            format!("POST {DELETED_CERT}/recover 200"),
            format!("GET {CERT} 200"),
            format!("PUT {CERT} 200"),
        ]
    );
    assert_eq!(report(&resp).outcome, Outcome::Resolved);
}

#[tokio::test]
async fn without_a_rule_a_soft_deleted_name_surfaces_with_what_to_do() {
    let sim = soft_deleted_certificate().await;
    let resp = write_certificate(&sim, fast_policy()).await;

    assert_eq!(resp.status(), 409);
    let report = report(&resp);
    assert_eq!(report.kind, ConflictKind::PrerequisiteRequired);
    assert_eq!(report.outcome, Outcome::Surfaced);
    assert!(
        report
            .classification
            .detail_codes
            .iter()
            .any(|c| c == "ObjectIsDeletedButRecoverable")
    );
    assert_noted(&report, "recover it, or purge it");
    assert_eq!(
        exchanges(&sim),
        [format!("PUT {CERT} 409")],
        "nothing else sent"
    );
    let body = resp.text().await.unwrap();
    assert!(body.contains("deleted but recoverable"), "{body}");
}
