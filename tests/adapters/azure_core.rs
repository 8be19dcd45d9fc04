//! What only an azure_core pipeline has: its own retry policy beneath ours, errors for non-2xx
//! answers once a client library checks them, seekable stream bodies.

use super::*;
use azure_core::http::{Body, headers::HeaderName};
use azure_core::stream::BytesStream;
use reqwest_conflict::AzureConflictPolicy;

#[tokio::test]
async fn its_retry_policy_leaves_the_409_alone_and_ours_retries_once_after_convergence() {
    let sim = sim_with_vm(Duration::from_millis(50)).await;
    sim.begin_transition(VM, "Updating", Some(Duration::from_millis(150)));
    let pipeline = AzureStack::pipeline(fast_policy());
    let (mut request, ctx, reports) = AzureStack::request(&Put::json(url(&sim, VM), &vm_body("x")));
    // Checked, as a client library sends: a 409 left unresolved would be an error.
    let response = pipeline.send(&ctx, &mut request, None).await.unwrap();
    assert_eq!(u16::from(response.status()), 200);
    let report = reports.last().expect("a report in the context");
    assert_eq!(report.outcome, Outcome::Resolved);
    assert_eq!(report.attempts, 2);

    // First PUT 409, polls, one retry PUT 200 — azure_core's retry policy added no PUT.
    let requests = sim.requests();
    let methods: Vec<_> = requests
        .iter()
        .map(|r| (r.method.as_str(), r.status))
        .collect();
    let (first, rest) = methods.split_first().unwrap();
    let (last, polls) = rest.split_last().unwrap();
    assert_eq!(*first, ("PUT", 409), "{methods:?}");
    assert_eq!(*last, ("PUT", 200), "{methods:?}");
    assert!(
        !polls.is_empty() && polls.iter().all(|p| *p == ("GET", 200)),
        "{methods:?}"
    );
    let ended = sim.transitions()[0].end.unwrap();
    assert!(requests.last().unwrap().at >= ended);
}

#[tokio::test]
async fn its_retry_policy_still_retries_a_503_beneath_ours() {
    let sim = sim_with_vm(Duration::from_millis(50)).await;
    sim.begin_transition(VM, "Updating", Some(Duration::from_millis(100)));
    let unavailable = Scripted::json(
        503,
        json!({"error": {"code": "ServiceUnavailable", "message": "try again"}}),
    );
    sim.script("PUT", VM, vec![unavailable, busy()]);
    let pipeline = AzureStack::pipeline(fast_policy());
    let (mut request, ctx, reports) = AzureStack::request(&Put::json(url(&sim, VM), &vm_body("x")));
    let response = pipeline.send(&ctx, &mut request, None).await.unwrap();
    assert_eq!(u16::from(response.status()), 200);
    assert_eq!(reports.last().unwrap().outcome, Outcome::Resolved);
    assert_eq!(put_statuses(&sim), [503, 409, 200]);
}

#[tokio::test]
async fn the_report_reaches_the_caller_when_the_409_becomes_an_error() {
    let sim = sim_with_vm(Duration::from_millis(50)).await;
    sim.script("PUT", VM, vec![Scripted::json(409, scope_locked())]);
    let pipeline = AzureStack::pipeline(fast_policy());
    let (mut request, ctx, reports) = AzureStack::request(&Put::json(url(&sim, VM), &vm_body("x")));
    let error = pipeline.send(&ctx, &mut request, None).await.unwrap_err();
    assert_eq!(error.http_status().map(u16::from), Some(409));
    let reports = reports.take();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].kind, ConflictKind::Permanent);
    assert_eq!(reports[0].outcome, Outcome::Surfaced);
    assert_eq!(sim.requests().len(), 1);
}

#[tokio::test]
async fn a_seekable_stream_body_is_reset_and_sent_again() {
    let sim = sim_with_vm(Duration::from_millis(50)).await;
    sim.begin_transition(VM, "Updating", Some(Duration::from_millis(100)));
    let pipeline = AzureStack::pipeline(fast_policy());
    let (mut request, ctx, reports) =
        AzureStack::request(&Put::json(url(&sim, VM), &vm_body("unused")));
    let body = vm_body("streamed").to_string();
    request.set_body(Body::SeekableStream(Box::new(BytesStream::new(body))));
    let response = pipeline.send(&ctx, &mut request, None).await.unwrap();
    assert_eq!(u16::from(response.status()), 200);
    assert_eq!(reports.last().unwrap().outcome, Outcome::Resolved);
    assert_eq!(put_statuses(&sim), [409, 200]);
    assert_eq!(sim.resource(VM).unwrap()["tags"]["build"], "streamed");
}

#[tokio::test]
async fn giving_up_keeps_the_conflict_status_and_the_crate_error() {
    let sim = sim_with_vm(Duration::from_millis(10)).await;
    sim.begin_transition(VM, "Updating", None);
    let pipeline = AzureStack::pipeline(ConflictPolicy {
        deadline: Duration::from_millis(200),
        ..fast_policy()
    });
    let (mut request, ctx, _) = AzureStack::request(&Put::json(url(&sim, VM), &vm_body("x")));
    let error = pipeline.send(&ctx, &mut request, None).await.unwrap_err();
    assert_eq!(error.http_status().map(u16::from), Some(409));
    assert!(
        matches!(
            error.downcast_ref::<Error>(),
            Some(Error::NotConverged { .. })
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn polls_carry_the_headers_of_the_call_but_not_its_preconditions() {
    let sim = sim_with_vm(Duration::from_millis(50)).await;
    sim.begin_transition(VM, "Updating", Some(Duration::from_millis(80)));
    let pipeline = AzureStack::pipeline(fast_policy());
    let put = Put::json(url(&sim, VM), &vm_body("x")).header("authorization", "Bearer t");
    let (mut request, ctx, _) = AzureStack::request(&put);
    request.insert_header(HeaderName::from_static("if-none-match"), "\"nope\"");
    pipeline.send(&ctx, &mut request, None).await.unwrap();
    let requests = sim.requests();
    assert!(requests.iter().any(|r| r.method == "GET"));
    assert!(
        requests
            .iter()
            .all(|r| r.authorization.as_deref() == Some("Bearer t"))
    );
    assert!(
        requests
            .iter()
            .filter(|r| r.method == "GET")
            .all(|r| r.if_none_match.is_none())
    );
}

#[test]
fn the_policy_is_an_azure_core_policy() {
    fn policy(_: std::sync::Arc<dyn azure_core::http::policies::Policy>) {}
    policy(std::sync::Arc::new(AzureConflictPolicy::default()));
}

/// The transport Azure SDK clients get by default follows no redirect (azure_core builds its
/// reqwest client without), so a poll answered with a redirect elsewhere is a state that is not
/// terminal, and the redirect's target hears nothing. (A transport of the caller's own that
/// follows redirects is not seen doing so: SECURITY.md, "Known gaps".)
#[tokio::test]
async fn the_default_transport_follows_no_redirect_of_a_poll() {
    use azure_core::http::{ClientOptions, Pipeline};
    use support::hostile::{Canned, json_answer};
    let honeypot = Canned::start(|_| json_answer(404, "{}")).await;
    let sim = sim_with_vm(Duration::from_millis(50)).await;
    sim.script("PUT", VM, vec![busy()]);
    let elsewhere = format!("{}/collect", honeypot.base());
    let redirects = (0..100).map(|_| Scripted::raw(302, "").header("location", &elsewhere));
    sim.script("GET", VM, redirects.collect());
    let policy = ConflictPolicy {
        deadline: Duration::from_millis(500),
        ..fast_policy()
    };
    let options = ClientOptions {
        per_call_policies: vec![std::sync::Arc::new(AzureConflictPolicy::new(policy))],
        ..ClientOptions::default()
    };
    let pipeline = Pipeline::new(None, None, options, Vec::new(), Vec::new(), None);
    let (mut request, ctx, _) = AzureStack::request(&Put::json(url(&sim, VM), &vm_body("x")));
    let error = pipeline.send(&ctx, &mut request, None).await.unwrap_err();
    let error = std::error::Error::source(&error)
        .and_then(|e| e.downcast_ref::<Error>())
        .unwrap_or_else(|| panic!("expected the engine's error, got {error}"));
    assert!(
        matches!(error, Error::NotConverged { last_state: Some(s), .. } if s == "HTTP 302"),
        "{error}"
    );
    assert!(honeypot.seen().is_empty(), "{:?}", honeypot.seen());
}
