//! Conflicts that are returned untouched, and bodies that must survive classification whole.

mod support;

use std::time::Duration;

use arm_sim::{Scripted, Sim};
use reqwest_conflict::{ConflictKind, Outcome};
use support::*;

async fn sim() -> Sim {
    sim_with_vm(Duration::from_millis(50)).await
}

/// A PUT of the VM with the precondition header `name: value`, through a fast-policy client.
async fn put_vm_with(sim: &Sim, name: &str, value: &str) -> reqwest::Response {
    client(fast_policy())
        .put(url(sim, VM))
        .header(name, value)
        .json(&vm_body("x"))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn permanent_conflict_reaches_the_server_once() {
    let sim = sim().await;
    let body = scope_locked();
    sim.script("PUT", VM, vec![Scripted::json(409, body.clone())]);
    let resp = put_vm(&client(fast_policy()), &sim, "x").await;
    assert_eq!(resp.status(), 409);
    let report = report(&resp);
    assert_eq!(report.kind, ConflictKind::Permanent);
    assert_eq!(report.outcome, Outcome::Surfaced);
    assert_eq!(report.attempts, 1);
    assert_eq!(report.polls, 0);
    // The caller still gets the server's own body.
    assert_eq!(resp.json::<serde_json::Value>().await.unwrap(), body);
    assert_eq!(
        sim.requests().len(),
        1,
        "exactly one request reached the server"
    );
}

#[tokio::test]
async fn create_only_request_on_existing_resource_is_already_exists_and_not_retried() {
    let sim = sim().await;
    let resp = put_vm_with(&sim, "If-None-Match", "*").await;
    assert_eq!(resp.status(), 412);
    let report = report(&resp);
    assert_eq!(report.kind, ConflictKind::AlreadyExists);
    assert_eq!(report.outcome, Outcome::Surfaced);
    assert_eq!(sim.requests().len(), 1);
}

#[tokio::test]
async fn stale_etag_is_surfaced_by_default() {
    let sim = sim().await;
    let resp = put_vm_with(&sim, "If-Match", "\"not-the-current-etag\"").await;
    assert_eq!(resp.status(), 412);
    let report = report(&resp);
    assert_eq!(report.kind, ConflictKind::StalePrecondition);
    assert_eq!(report.outcome, Outcome::Surfaced);
    // The report carries the fresh state, so the caller can decide.
    let current = sim.resource(VM).unwrap();
    assert_eq!(report.fresh_etag.as_deref(), current["etag"].as_str());
    assert_eq!(report.fresh.as_ref().unwrap()["etag"], current["etag"]);
    assert_eq!(sim.count("PUT", VM, None), 1, "surface never resends");
    assert_eq!(
        sim.count("GET", VM, None),
        1,
        "one re-fetch for the fresh ETag"
    );
}

/// One test per hostile body: the caller gets every byte, the kind falls back sensibly.
async fn assert_body_survives(body: Vec<u8>, headers: &[(&str, &str)], expected: ConflictKind) {
    let sim = sim().await;
    let mut scripted = Scripted::raw(409, body.clone());
    for (name, value) in headers {
        scripted = scripted.header(name, value);
    }
    sim.script("PUT", VM, vec![scripted]);
    let resp = put_vm(&client(fast_policy()), &sim, "x").await;
    assert_eq!(resp.status(), 409);
    assert_eq!(report(&resp).kind, expected);
    let received = resp.bytes().await.unwrap();
    assert_eq!(received.len(), body.len());
    assert!(
        received[..] == body[..],
        "the body changed on its way to the caller"
    );
    assert_eq!(sim.requests().len(), 1);
}

#[tokio::test]
async fn garbage_body() {
    assert_body_survives(
        b"\x00\xff<html>oops{{{\"error".to_vec(),
        &[],
        ConflictKind::Unknown,
    )
    .await;
}

#[tokio::test]
async fn empty_body() {
    assert_body_survives(Vec::new(), &[], ConflictKind::Unknown).await;
}

#[tokio::test]
async fn empty_body_with_error_code_header() {
    assert_body_survives(
        Vec::new(),
        &[("x-ms-error-code", "ScopeLocked")],
        ConflictKind::Permanent,
    )
    .await;
}

#[tokio::test]
async fn huge_body_is_read_only_up_to_the_cap_and_delivered_whole() {
    // A valid ARM error padded far past 64 KiB: the code is read from the capped prefix, and the
    // caller still receives all 300 KiB.
    let padding = "x".repeat(300 * 1024);
    let body = format!(r#"{{"error":{{"code":"ScopeLocked","message":"locked {padding}"}}}}"#);
    assert_body_survives(body.into_bytes(), &[], ConflictKind::Permanent).await;
    // 300 KiB of noise with the code in the header only.
    let noise: Vec<u8> = (0..300 * 1024).map(|i| (i % 251) as u8).collect();
    assert_body_survives(noise.clone(), &[], ConflictKind::Unknown).await;
    assert_body_survives(
        noise,
        &[("x-ms-error-code", "ScopeLocked")],
        ConflictKind::Permanent,
    )
    .await;
}

#[tokio::test]
async fn a_body_that_cannot_be_cloned_is_sent_once() {
    let sim = sim().await;
    sim.begin_transition(VM, "Updating", Some(Duration::from_millis(50)));
    sim.script("PUT", VM, vec![busy()]);
    let streamed = reqwest::Body::wrap(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")));
    let resp = client(fast_policy())
        .put(url(&sim, VM))
        .body(streamed)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 409);
    let report = report(&resp);
    assert_eq!(report.kind, ConflictKind::StateConflict);
    assert_eq!(report.outcome, Outcome::NotRetryable);
    assert_eq!(sim.count("PUT", VM, None), 1);
    assert_eq!(
        sim.requests().len(),
        1,
        "no poll either: nothing could be retried"
    );
}
