//! `leases.fence_with_etag`: a leased write carries `If-Match` on the ETag read under its lease,
//! and a 412 to that `If-Match` is the engine's, never the caller's stale precondition.

use std::sync::Arc;

use super::*;
use crate::{Lease, LeaseStore, lease::Validity};

/// [`fast`] with leased writes fenced.
fn fenced() -> ConflictPolicy {
    ConflictPolicy {
        leases: LeasePolicy {
            fence_with_etag: true,
            ..LeasePolicy::default()
        },
        ..fast()
    }
}

/// The VM as a read shows it, with its ETag in the header (as ARM sends it).
fn tagged(etag: &str) -> Canned {
    resource("Succeeded").header("etag", etag)
}

/// A store whose leases can be lost, as a Redis or Blob lease is: each is valid for `valid`
/// from its acquisition, never renewed.
#[derive(Debug)]
struct Expiring {
    valid: Duration,
}

impl LeaseStore for Expiring {
    fn acquire<'a>(
        &'a self,
        key: &'a str,
        _ttl: Duration,
        _wait: Duration,
    ) -> BoxFuture<'a, Result<Lease, Error>> {
        let until = Instant::now() + self.valid;
        Box::pin(async move {
            Ok(Lease::new(key, 7, || {})
                .with_transitioning(false)
                .with_validity(Validity::new(until)))
        })
    }

    fn set_transitioning<'a>(
        &'a self,
        _lease: &'a Lease,
        _transitioning: bool,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }

    fn is_transitioning<'a>(&'a self, _lease: &'a Lease) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async { Ok(false) })
    }
}

fn expiring(valid: Duration) -> Engine {
    Engine::new(fenced()).with_leases(Arc::new(Expiring { valid }))
}

/// The `If-Match` each send carried (`None`: sent as it came).
fn if_matches(t: &Scripted) -> Vec<Option<String>> {
    t.sent()
        .iter()
        .map(|changes| {
            changes.map(|c| {
                let value = c.headers.get(header::IF_MATCH).expect("an If-Match");
                value.to_str().unwrap().to_owned()
            })
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_fenced_write_reads_the_etag_under_its_lease_and_sends_it_as_if_match() {
    let engine = Engine::new(fenced());
    let write = Write::put();
    let mut t = Scripted::new()
        .sends([status(200)])
        .on("GET vm1", [tagged("W/\"1\"")]);

    let (response, report) = answered(engine.execute(&mut t, &write.original()).await);

    assert_eq!(response.status, StatusCode::OK);
    assert!(report.is_none(), "no conflict, no report");
    assert_eq!(t.trace(), ["GET vm1", "PUT vm1"]);
    let (url, headers) = t.calls()[0];
    assert_eq!(url.as_str(), VM_RESOURCE);
    assert_poll_headers(headers);
    let sent = t.sent()[0].expect("the write carries the fence");
    assert_eq!(sent.headers[header::IF_MATCH], "W/\"1\"");
    assert_eq!(sent.body, None, "the body as the caller sent it");
    // The rest of the head is the write's own.
    assert_eq!(sent.headers["x-secret"], "s3cr3t");
    assert_eq!(sent.headers.len(), write.headers.len() + 1);
}

#[tokio::test(start_paused = true)]
async fn without_the_policy_no_etag_is_read() {
    let engine = Engine::new(fast());
    // No route for `GET vm1`: a read would panic.
    let mut t = Scripted::new().sends([status(200)]);
    answered(engine.execute(&mut t, &Write::put().original()).await);
    assert_eq!(t.trace(), ["PUT vm1"]);
    assert_eq!(if_matches(&t), [None]);
}

#[tokio::test(start_paused = true)]
async fn a_412_to_the_fence_after_the_lease_ran_out_ends_with_the_lease_lost() {
    // The lease is valid for 50 ms; the write's answer takes 100 ms: its holder was paused
    // past its TTL mid-request, and the next holder wrote meanwhile.
    let engine = expiring(ms(50));
    let mut t = Scripted::new()
        .sends([fixture(STALE).after(ms(100))])
        .on("GET vm1", [tagged("W/\"1\"")]);

    let error = engine_error(engine.execute(&mut t, &Write::put().original()).await);

    match error {
        Error::LeaseLost { token, reason, .. } => {
            assert_eq!(token, 7);
            assert!(reason.contains("TTL"), "{reason}");
        }
        other => panic!("expected a lost lease, got {other}"),
    }
    // Nothing after the 412: no re-read, no resend.
    assert_eq!(t.trace(), ["GET vm1", "PUT vm1"]);
    assert_eq!(if_matches(&t), [Some("W/\"1\"".to_owned())]);
}

#[tokio::test(start_paused = true)]
async fn a_412_to_the_fence_while_the_lease_is_held_reads_the_etag_again_and_resends() {
    let engine = expiring(Duration::from_secs(3600));
    let write = Write::put();
    // Someone wrote outside the lease between the read and the write.
    let mut t = Scripted::new()
        .sends([fixture(STALE), status(200)])
        .on("GET vm1", [tagged("W/\"1\""), tagged("W/\"2\"")]);

    let (response, report) = reported(engine.execute(&mut t, &write.original()).await);

    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(report.outcome, Outcome::Resolved);
    assert_eq!((report.attempts, report.conflicts, report.polls), (2, 1, 1));
    assert_eq!(report.fresh_etag.as_deref(), Some("W/\"2\""));
    assert_noted(&report, "leases.fence_with_etag");
    assert_eq!(report.lease_token, Some(7));
    assert_eq!(t.trace(), ["GET vm1", "PUT vm1", "GET vm1", "PUT vm1"]);
    assert_eq!(
        if_matches(&t),
        [Some("W/\"1\"".to_owned()), Some("W/\"2\"".to_owned())]
    );
    // The resend is the caller's request with the fresh If-Match, nothing else changed.
    let resend = t.sent()[1].unwrap();
    assert_eq!(resend.body, None);
    assert_eq!(resend.headers.len(), write.headers.len() + 1);
}

#[tokio::test(start_paused = true)]
async fn a_412_to_the_fence_is_resent_within_the_attempts_then_handed_back_with_a_note() {
    let policy = ConflictPolicy {
        max_attempts: 2,
        ..fenced()
    };
    let engine = Engine::new(policy);
    let mut t = Scripted::new()
        .sends([fixture(STALE), fixture(STALE)])
        .on("GET vm1", [tagged("W/\"1\""), tagged("W/\"2\"")]);

    let (response, report) = reported(engine.execute(&mut t, &Write::put().original()).await);

    assert_eq!(response.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(report.outcome, Outcome::Exhausted);
    assert_eq!(report.attempts, 2);
    assert_noted(&report, "not to a precondition of the request's own");
    assert_eq!(t.trace(), ["GET vm1", "PUT vm1", "GET vm1", "PUT vm1"]);
}

#[tokio::test(start_paused = true)]
async fn a_resource_not_found_or_without_an_etag_is_written_unfenced() {
    for read in [status(404), resource("Succeeded")] {
        let engine = Engine::new(fenced());
        let mut t = Scripted::new()
            .sends([status(201)])
            .on("GET vm1", [read.clone()]);

        let (response, report) = answered(engine.execute(&mut t, &Write::put().original()).await);

        assert_eq!(response.status, StatusCode::CREATED, "{read:?}");
        assert!(report.is_none());
        assert_eq!(t.trace(), ["GET vm1", "PUT vm1"], "{read:?}");
        assert_eq!(if_matches(&t), [None], "{read:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn an_etag_in_the_body_serves_when_the_header_is_missing() {
    let engine = Engine::new(fenced());
    let body = ok(json!({"name": "vm1", "etag": "W/\"9\"", "properties": {}}));
    let mut t = Scripted::new().sends([status(200)]).on("GET vm1", [body]);
    answered(engine.execute(&mut t, &Write::put().original()).await);
    assert_eq!(if_matches(&t), [Some("W/\"9\"".to_owned())]);
}

#[tokio::test(start_paused = true)]
async fn the_callers_own_precondition_is_left_alone() {
    let engine = Engine::new(fenced());
    let own_if_match = Write::put().if_match(SENT_ETAG);
    let mut create_only = Write::put();
    create_only
        .headers
        .insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
    for write in [own_if_match, create_only] {
        // No route for `GET vm1`: a fence read would panic.
        let mut t = Scripted::new().sends([status(200)]);
        answered(engine.execute(&mut t, &write.original()).await);
        assert_eq!(t.trace(), ["PUT vm1"]);
        assert_eq!(if_matches(&t), [None]);
    }
}

#[tokio::test(start_paused = true)]
async fn a_stale_precondition_of_the_callers_own_still_goes_to_its_strategy() {
    // The caller's If-Match, a 412: the precondition strategy (surface), not the fence's resend.
    let engine = Engine::new(fenced());
    let write = Write::put().if_match(SENT_ETAG);
    let mut t = Scripted::new()
        .sends([fixture(STALE)])
        .on("GET vm1", [fresh(fresh_vm("Standard_D2s_v5", "prod"))]);

    let (response, report) = reported(engine.execute(&mut t, &write.original()).await);

    assert_eq!(response.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(report.outcome, Outcome::Surfaced);
    assert!(
        !report.notes.iter().any(|n| n.contains("fence_with_etag")),
        "{:?}",
        report.notes
    );
    assert_eq!(t.trace(), ["PUT vm1", "GET vm1"]);
}

#[tokio::test(start_paused = true)]
async fn a_fence_read_cut_off_by_the_deadline_fails_the_write_unsent() {
    let policy = ConflictPolicy {
        deadline: ms(100),
        ..fenced()
    };
    let engine = Engine::new(policy);
    let mut t = Scripted::new().on("GET vm1", [tagged("W/\"1\"").after(ms(500))]);

    let error = engine_error(engine.execute(&mut t, &Write::put().original()).await);

    assert!(
        matches!(error, Error::NotConverged { attempts: 0, .. }),
        "{error}"
    );
    assert_eq!(t.trace(), ["GET vm1"]);
}
