//! The resolution loop end to end, without HTTP: a scripted [`Transport`] answers every send and
//! call from a list, records what went over the wire in order, and tokio's paused clock makes
//! every wait virtual (and exact).
//!
//! Each test scripts one outcome and asserts both the [`ConflictReport`] and the wire log. The
//! 409/412 bodies are the fixtures' (`fixtures/errors/`, recorded, and `fixtures/constructed/`),
//! so classification is the real classifier's.
//!
//! `start_paused` needs tokio's `test-util` feature in the dev-dependencies.

use std::{
    collections::{HashMap, VecDeque},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use serde_json::{Value, json};
use tokio::time::{Instant, sleep};
use url::Url;

use super::{
    Answered, Changes, Engine, Exchange, Failure, Fetched, Original, Overrides, Replay, Transport,
};

mod fencing;
use crate::{
    ConflictKind, ConflictPolicy, ConflictReport, Error, Journal, LeasePolicy, Lro, MergeBase,
    Outcome, PolicyOverride, PollSchedule, PreconditionStrategy, shared::BoxFuture,
};

// ---------------------------------------------------------------------------------------------
// The request

/// The virtual machine every test writes.
const VM_URL: &str = "https://management.azure.com/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1?api-version=2024-07-01";

/// Where the VM's own state is read: the same URL (an ARM resource URL without an action).
const VM_RESOURCE: &str = VM_URL;

/// The part of a VM path the wire log leaves out, so lines read `GET vm1/instanceView`.
const VMS: &str = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/";

const DEADLINE: Duration = Duration::from_secs(5);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A policy with a fast schedule (10 ms doubling to 40 ms, no jitter), a 5 s deadline, a
/// `Retry-After` cap of 100 ms, leases on, and long-running operations handed back at once
/// (`lro: return`), so that a write can leave a transition for the next one's state guard; the
/// tests of `settle` set it.
fn fast() -> ConflictPolicy {
    ConflictPolicy {
        deadline: DEADLINE,
        lro: Lro::Return,
        poll: PollSchedule {
            min_delay: ms(10),
            max_delay: ms(40),
            factor: 2.0,
            jitter: false,
        },
        retry_after_cap: ms(100),
        ..ConflictPolicy::azure_arm()
    }
}

/// The VM body the caller sends.
fn d4s() -> Value {
    json!({"properties": {"hardwareProfile": {"vmSize": "Standard_D4s_v5"}}})
}

/// A write to the VM, as an adapter would hand it to the engine.
struct Write {
    method: Method,
    url: Url,
    headers: HeaderMap,
    body: Replay,
    overrides: Overrides,
}

impl Write {
    /// `PUT vm1` with a JSON body, an `Authorization` and a client request id (both in the
    /// policy's `poll_headers`), and an `x-secret` header that must stay on the write.
    fn put() -> Self {
        let body = Bytes::from(d4s().to_string());
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        headers.insert("x-ms-client-request-id", HeaderValue::from_static("req-1"));
        headers.insert("x-secret", HeaderValue::from_static("s3cr3t"));
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        Self {
            method: Method::PUT,
            url: Url::parse(VM_URL).unwrap(),
            headers,
            body: Replay::Bytes(body),
            overrides: Overrides::default(),
        }
    }

    fn if_match(mut self, etag: &'static str) -> Self {
        self.headers
            .insert(header::IF_MATCH, HeaderValue::from_static(etag));
        self
    }

    fn replay(mut self, body: Replay) -> Self {
        self.body = body;
        self
    }

    fn overrides(mut self, overrides: Overrides) -> Self {
        self.overrides = overrides;
        self
    }

    fn original(&self) -> Original<'_> {
        Original::new(
            &self.method,
            &self.url,
            &self.headers,
            self.body.clone(),
            self.overrides.clone(),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Answers

/// One scripted answer, to a send or a call, given after `delay` (virtual).
#[derive(Clone, Debug)]
struct Canned {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    delay: Duration,
}

impl Canned {
    fn new(status: u16, body: impl Into<Bytes>) -> Self {
        Self {
            status: StatusCode::from_u16(status).unwrap(),
            headers: HeaderMap::new(),
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_str(value).unwrap(),
        );
        self
    }

    fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

fn ok(body: Value) -> Canned {
    Canned::new(200, body.to_string()).header("content-type", "application/json")
}

fn status(code: u16) -> Canned {
    Canned::new(code, Bytes::new())
}

/// The VM's representation in `state`.
fn resource(state: &str) -> Canned {
    ok(json!({"name": "vm1", "properties": {"provisioningState": state}}))
}

/// An operation-status document.
fn operation(status: &str) -> Canned {
    ok(json!({"status": status}))
}

/// The VM's instance view with power state `power` (`running`, `deallocated`, …).
fn instance_view(power: &str) -> Canned {
    ok(json!({"statuses": [
        {"code": "ProvisioningState/succeeded"},
        {"code": format!("PowerState/{power}")},
    ]}))
}

/// An error answer from `fixtures/errors/{name}.json` (recorded), else
/// `fixtures/constructed/{name}.json` (written for a case no public record shows whole): its
/// status, response headers and body.
fn fixture(name: &str) -> Canned {
    let dir = |corpus| {
        format!(
            "{}/fixtures/{corpus}/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        )
    };
    let text = std::fs::read_to_string(dir("errors"))
        .or_else(|_| std::fs::read_to_string(dir("constructed")))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let doc: Value = serde_json::from_str(&text).unwrap();
    let mut canned = Canned::new(
        doc["status"].as_u64().unwrap() as u16,
        doc["body"].as_str().unwrap_or_default().to_owned(),
    );
    if let Some(headers) = doc["response_headers"].as_object() {
        for (name, value) in headers {
            canned.headers.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value.as_str().unwrap()).unwrap(),
            );
        }
    }
    canned
}

/// The operation fixture 01 names (its sentence's final '.' is not part of it), on the request's
/// own host.
const OPERATION: &str = "https://management.azure.com/subscriptions/3f7e29ba-24e0-42f6-8d9c-5149a14bda37/providers/Microsoft.Network/locations/westeurope/operations/5d66a0e0-e08b-4ecf-aee5-0ff5a461962b?api-version=2023-04-01";

/// The operation fixture 02 names, on a regional host.
const REGIONAL_OPERATION: &str = "https://westus2.management.azure.com/subscriptions/3f7e29ba-24e0-42f6-8d9c-5149a14bda37/providers/Microsoft.Network/locations/westus2/operations/0b0c2e6e-8c2f-4f7e-9a51-2f4a3c1d9e10?api-version=2024-05-01";

/// Compute's "conflict with a concurrent request" on a VM: a state conflict that names no
/// operation, so the resource itself is polled.
const CONCURRENT: &str = "16_compute_concurrent_request";

// ---------------------------------------------------------------------------------------------
// The transport

/// A response as the scripted stack hands it out.
#[derive(Debug)]
struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    /// Made by [`Transport::respond`], not received.
    made_here: bool,
}

/// One exchange, as it went over the wire.
#[derive(Debug)]
enum Wire {
    /// The original request (`None`: as it is) or a copy with changes.
    Send {
        line: String,
        changes: Option<Changes>,
    },
    /// A re-fetch, poll or prerequisite action.
    Call {
        line: String,
        url: Url,
        headers: HeaderMap,
    },
}

/// A stack that answers from a script. Sends are answered in order (`Err` is a transport
/// failure); calls are answered by route (`GET vm1/instanceView`), in order, the last answer
/// repeating. Anything unscripted panics, so an exchange the test did not expect fails it.
struct Scripted {
    write: String,
    sends: VecDeque<Result<Canned, String>>,
    routes: HashMap<String, VecDeque<Result<Canned, String>>>,
    log: Vec<(Instant, Wire)>,
}

/// `METHOD path`, the VM prefix left out (`GET vm1/instanceView`); other paths keep their host.
fn line(method: &Method, url: &Url) -> String {
    let path = url.path();
    match path.strip_prefix(VMS) {
        Some(short) => format!("{method} {short}"),
        None => format!("{method} {}{path}", url.host_str().unwrap_or_default()),
    }
}

impl Scripted {
    /// Writes to the VM (`PUT vm1`).
    fn new() -> Self {
        Self {
            write: line(&Method::PUT, &Url::parse(VM_URL).unwrap()),
            sends: VecDeque::new(),
            routes: HashMap::new(),
            log: Vec::new(),
        }
    }

    /// The answers to the next sends of the write.
    fn sends(mut self, answers: impl IntoIterator<Item = Canned>) -> Self {
        self.sends.extend(answers.into_iter().map(Ok));
        self
    }

    /// The next send fails in the stack.
    fn send_fails(mut self, error: &str) -> Self {
        self.sends.push_back(Err(error.to_owned()));
        self
    }

    /// The answers to calls on `route` (`GET vm1`), the last one repeating.
    fn on(mut self, route: &str, answers: impl IntoIterator<Item = Canned>) -> Self {
        let answers: VecDeque<_> = answers.into_iter().map(Ok).collect();
        assert!(!answers.is_empty(), "{route}: script at least one answer");
        self.routes.insert(route.to_owned(), answers);
        self
    }

    /// Calls on `route` fail in the stack.
    fn on_fail(mut self, route: &str, error: &str) -> Self {
        let answers = VecDeque::from([Err(error.to_owned())]);
        self.routes.insert(route.to_owned(), answers);
        self
    }

    /// Every exchange, in order, as `METHOD path`.
    fn trace(&self) -> Vec<&str> {
        self.log
            .iter()
            .map(|(_, wire)| match wire {
                Wire::Send { line, .. } | Wire::Call { line, .. } => line.as_str(),
            })
            .collect()
    }

    /// What each send changed of the original request, in order.
    fn sent(&self) -> Vec<Option<&Changes>> {
        self.log
            .iter()
            .filter_map(|(_, wire)| match wire {
                Wire::Send { changes, .. } => Some(changes.as_ref()),
                Wire::Call { .. } => None,
            })
            .collect()
    }

    /// Every call's URL and headers, in order.
    fn calls(&self) -> Vec<(&Url, &HeaderMap)> {
        self.log
            .iter()
            .filter_map(|(_, wire)| match wire {
                Wire::Call { url, headers, .. } => Some((url, headers)),
                Wire::Send { .. } => None,
            })
            .collect()
    }

    /// When the sends were made, in order.
    fn send_times(&self) -> Vec<Instant> {
        self.log
            .iter()
            .filter(|(_, wire)| matches!(wire, Wire::Send { .. }))
            .map(|(at, _)| *at)
            .collect()
    }
}

impl Transport for Scripted {
    type Response = Resp;
    type Error = String;

    fn head(response: &Resp) -> (StatusCode, &HeaderMap) {
        (response.status, &response.headers)
    }

    fn send(&mut self, changes: Option<Changes>) -> BoxFuture<'_, Result<Resp, String>> {
        let line = self.write.clone();
        let answer = self
            .sends
            .pop_front()
            .unwrap_or_else(|| panic!("send #{} is not scripted", self.sent().len() + 1));
        self.log
            .push((Instant::now(), Wire::Send { line, changes }));
        Box::pin(async move {
            let canned = answer?;
            if !canned.delay.is_zero() {
                sleep(canned.delay).await;
            }
            Ok(Resp {
                status: canned.status,
                headers: canned.headers,
                body: canned.body,
                made_here: false,
            })
        })
    }

    fn peek(
        response: Resp,
        cap: usize,
        _deadline: Instant,
    ) -> BoxFuture<'static, Result<(Resp, Bytes), String>> {
        Box::pin(async move {
            let peeked = response.body.slice(..cap.min(response.body.len()));
            Ok((response, peeked))
        })
    }

    fn call(&mut self, exchange: Exchange) -> BoxFuture<'_, Result<Fetched, String>> {
        let Exchange {
            method,
            url,
            headers,
            cap,
        } = exchange;
        let line = line(&method, &url);
        let answers = self
            .routes
            .get_mut(&line)
            .unwrap_or_else(|| panic!("{line} is not scripted ({url})"));
        let answer = if answers.len() > 1 {
            answers.pop_front().unwrap()
        } else {
            answers[0].clone()
        };
        self.log
            .push((Instant::now(), Wire::Call { line, url, headers }));
        Box::pin(async move {
            let canned = answer?;
            if !canned.delay.is_zero() {
                sleep(canned.delay).await;
            }
            let body = canned.body.slice(..cap.min(canned.body.len()));
            Ok(Fetched {
                status: canned.status,
                headers: canned.headers,
                body,
            })
        })
    }

    fn respond(&self, status: StatusCode, headers: HeaderMap, body: Bytes) -> Resp {
        Resp {
            status,
            headers,
            body,
            made_here: true,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Results

type Executed = Result<Answered<Resp>, Failure<String>>;

/// The response and its report; panics on a failure.
fn answered(result: Executed) -> (Resp, Option<ConflictReport>) {
    match result {
        Ok(Answered { response, report }) => (response, report.map(|r| *r)),
        Err(Failure::Transport(error)) => panic!("transport failure: {error}"),
        Err(Failure::Conflict(error)) => panic!("engine failure: {error}"),
    }
}

/// The response and the report it must have.
fn reported(result: Executed) -> (Resp, ConflictReport) {
    let (response, report) = answered(result);
    (response, report.expect("a conflict report"))
}

/// The engine's error; panics on an answer or a transport failure.
fn engine_error(result: Executed) -> Error {
    match result {
        Err(Failure::Conflict(error)) => error,
        Err(Failure::Transport(error)) => panic!("transport failure: {error}"),
        Ok(answered) => panic!("answered {}", answered.response.status),
    }
}

/// Fails unless one of `report`'s notes contains `fragment`.
fn assert_noted(report: &ConflictReport, fragment: &str) {
    assert!(
        report.notes.iter().any(|n| n.contains(fragment)),
        "no note says {fragment:?}: {:?}",
        report.notes
    );
}

fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

/// Asserts that a call carried only the policy's `poll_headers`: the authorization and client
/// request id, never the write's own headers.
fn assert_poll_headers(headers: &HeaderMap) {
    assert_eq!(headers[header::AUTHORIZATION], "Bearer t");
    assert_eq!(headers["x-ms-client-request-id"], "req-1");
    for name in ["x-secret", "content-type", "content-length", "if-match"] {
        assert!(
            !headers.contains_key(name),
            "{name} was carried: {headers:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// State conflicts: wait, then retry

#[tokio::test(start_paused = true)]
async fn state_conflict_is_resolved_once_the_resource_converges() {
    let engine = Engine::new(fast());
    let write = Write::put();
    let mut t = Scripted::new()
        .sends([fixture(CONCURRENT), resource("Succeeded")])
        .on("GET vm1", [resource("Updating"), resource("Succeeded")]);
    let started = Instant::now();

    let (response, report) = reported(engine.execute(&mut t, &write.original()).await);

    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(report.outcome, Outcome::Resolved);
    assert_eq!(report.kind, ConflictKind::StateConflict);
    assert_eq!(report.code.as_deref(), Some("Conflict"));
    assert_eq!(
        report.classification.rule.as_deref(),
        Some("in_progress_message")
    );
    assert_eq!((report.attempts, report.conflicts, report.polls), (2, 1, 2));
    assert_eq!(report.states, ["Updating", "Succeeded"]);
    // Polled at 10 ms (Updating), then 20 ms later (Succeeded).
    assert_eq!(report.waited, ms(30));
    assert_eq!(started.elapsed(), ms(30));
    assert!(report.notes.is_empty(), "{:?}", report.notes);

    assert_eq!(t.trace(), ["PUT vm1", "GET vm1", "GET vm1", "PUT vm1"]);
    for (url, headers) in t.calls() {
        assert_eq!(url.as_str(), VM_RESOURCE);
        assert_poll_headers(headers);
    }
    // The retry is the original request, unchanged.
    assert!(t.sent().iter().all(Option::is_none));
}

#[tokio::test(start_paused = true)]
async fn operation_uri_on_the_request_host_is_polled_for_its_status() {
    let route = line(&Method::GET, &Url::parse(OPERATION).unwrap());
    let engine = Engine::new(fast());
    let write = Write::put();
    // No route for `GET vm1`: polling the resource would panic.
    let mut t = Scripted::new()
        .sends([fixture("01_another_operation_in_progress"), status(200)])
        .on(&route, [operation("InProgress"), operation("Succeeded")]);

    let (response, report) = reported(engine.execute(&mut t, &write.original()).await);

    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(report.outcome, Outcome::Resolved);
    assert_eq!(report.code.as_deref(), Some("AnotherOperationInProgress"));
    // Read from the `status` field: a resource reading would have taken the stateless
    // document for `Succeeded` at once.
    assert_eq!(report.states, ["InProgress", "Succeeded"]);
    assert_eq!(report.polls, 2);
    assert_eq!(t.trace(), ["PUT vm1", &route, &route, "PUT vm1"]);
    for (url, headers) in t.calls() {
        assert_eq!(url.as_str(), OPERATION);
        assert_poll_headers(headers);
    }
}

#[tokio::test(start_paused = true)]
async fn operation_uri_on_a_host_not_allowed_is_not_polled_the_resource_is() {
    let engine = Engine::new(ConflictPolicy {
        allowed_hosts: Vec::new(),
        ..fast()
    });
    let write = Write::put();
    // No route for the regional operation: polling it would panic.
    let mut t = Scripted::new()
        .sends([
            fixture("02_another_operation_regional_uri_retry_after"),
            status(200),
        ])
        .on("GET vm1", [resource("Succeeded")]);

    let (_, report) = reported(engine.execute(&mut t, &write.original()).await);

    assert_eq!(report.outcome, Outcome::Resolved);
    assert!(
        report.classification.operation_uri.is_some(),
        "the body names an operation"
    );
    assert_eq!(
        report.notes,
        [
            "operation URI host westus2.management.azure.com is not allowed; polling the resource instead"
        ]
    );
    assert_eq!(t.trace(), ["PUT vm1", "GET vm1", "PUT vm1"]);
    assert_eq!(t.calls()[0].0.as_str(), VM_RESOURCE);
    // `Retry-After: 15` capped by the policy's 100 ms.
    assert_eq!(report.waited, ms(100));
}

#[tokio::test(start_paused = true)]
async fn operation_uri_on_an_allowed_regional_host_is_polled() {
    let route = line(&Method::GET, &Url::parse(REGIONAL_OPERATION).unwrap());
    let engine = Engine::new(fast());
    let write = Write::put();
    let mut t = Scripted::new()
        .sends([
            fixture("02_another_operation_regional_uri_retry_after"),
            status(200),
        ])
        .on(&route, [operation("Succeeded")]);

    let (_, report) = reported(engine.execute(&mut t, &write.original()).await);

    assert_eq!(report.outcome, Outcome::Resolved);
    assert!(report.notes.is_empty(), "{:?}", report.notes);
    assert_eq!(t.trace(), ["PUT vm1", &route, "PUT vm1"]);
    assert_eq!(t.calls()[0].0.as_str(), REGIONAL_OPERATION);
}

/// A resource being deleted has converged once it is gone, whether the service says so with 404
/// or with 410.
#[tokio::test(start_paused = true)]
async fn a_deletion_converges_when_the_resource_answers_404_or_410() {
    for gone in [404, 410] {
        let engine = Engine::new(fast());
        let write = Write::put();
        let mut t = Scripted::new()
            .sends([fixture(CONCURRENT), status(201)])
            .on("GET vm1", [resource("Deleting"), status(gone)]);

        let (response, report) = answered(engine.execute(&mut t, &write.original()).await);

        assert_eq!(response.status, 201, "{gone}");
        let report = report.expect("a report");
        assert_eq!(report.outcome, Outcome::Resolved, "{gone}");
        assert_eq!(report.states, ["Deleting", "NotFound"], "{gone}");
    }
}

#[tokio::test(start_paused = true)]
async fn an_operation_that_answers_404_gives_way_to_the_resource() {
    let route = line(&Method::GET, &Url::parse(OPERATION).unwrap());
    let engine = Engine::new(fast());
    let write = Write::put();
    let mut t = Scripted::new()
        .sends([fixture("01_another_operation_in_progress"), status(200)])
        .on(&route, [status(404)])
        .on("GET vm1", [resource("Succeeded")]);

    let (_, report) = reported(engine.execute(&mut t, &write.original()).await);

    assert_eq!(report.outcome, Outcome::Resolved);
    assert_eq!(report.states, ["operation not found", "Succeeded"]);
    assert_eq!(report.notes.len(), 1, "{:?}", report.notes);
    assert!(
        report.notes[0].starts_with("operation status https://management.azure.com/")
            && report.notes[0].ends_with(" answered 404; polling the resource instead"),
        "{:?}",
        report.notes
    );
    assert_eq!(t.trace(), ["PUT vm1", &route, "GET vm1", "PUT vm1"]);
    // The resource is polled at once, not after another delay.
    assert_eq!(report.waited, ms(10));
}

#[tokio::test(start_paused = true)]
async fn unknown_conflicts_are_retried_only_when_the_policy_says_so() {
    for (retry_unknown, outcome, trace) in [
        (false, Outcome::Surfaced, &["PUT vm1"][..]),
        (true, Outcome::Resolved, &["PUT vm1", "GET vm1", "PUT vm1"]),
    ] {
        let engine = Engine::new(ConflictPolicy {
            retry_unknown,
            ..fast()
        });
        let write = Write::put();
        let mut t = Scripted::new()
            .sends([fixture("45_empty_body"), status(200)])
            .on("GET vm1", [resource("Succeeded")]);

        let (_, report) = reported(engine.execute(&mut t, &write.original()).await);

        assert_eq!(report.kind, ConflictKind::Unknown);
        assert_eq!(report.outcome, outcome, "retry_unknown: {retry_unknown}");
        assert_eq!(t.trace(), trace, "retry_unknown: {retry_unknown}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_rewindable_body_is_resent() {
    let engine = Engine::new(fast());
    let write = Write::put().replay(Replay::Rewind);
    let mut t = Scripted::new()
        .sends([fixture(CONCURRENT), status(200)])
        .on("GET vm1", [resource("Succeeded")]);

    let (_, report) = reported(engine.execute(&mut t, &write.original()).await);

    assert_eq!(report.outcome, Outcome::Resolved);
    assert_eq!(t.trace(), ["PUT vm1", "GET vm1", "PUT vm1"]);
    assert!(t.sent().iter().all(Option::is_none));
}

// ---------------------------------------------------------------------------------------------
// Surfaced at once, or after the budget ran out

#[tokio::test(start_paused = true)]
async fn permanent_conflict_is_surfaced_at_once_with_its_whole_body() {
    let engine = Engine::new(fast());
    let write = Write::put();
    let locked = fixture("17_scope_locked");
    let mut t = Scripted::new().sends([locked.clone()]);
    let started = Instant::now();

    let (response, report) = reported(engine.execute(&mut t, &write.original()).await);

    assert_eq!(response.status, StatusCode::CONFLICT);
    assert_eq!(response.body, locked.body, "the caller gets the whole body");
    assert!(!response.made_here);
    assert_eq!(report.outcome, Outcome::Surfaced);
    assert_eq!(report.kind, ConflictKind::Permanent);
    assert_eq!(report.code.as_deref(), Some("ScopeLocked"));
    assert_eq!((report.attempts, report.conflicts, report.polls), (1, 1, 0));
    assert_eq!(report.waited, Duration::ZERO);
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(t.trace(), ["PUT vm1"]);
}

#[tokio::test(start_paused = true)]
async fn a_body_that_streams_once_is_never_resent() {
    let engine = Engine::new(fast());
    let write = Write::put().replay(Replay::Once);
    let mut t = Scripted::new().sends([fixture(CONCURRENT)]);

    let (response, report) = reported(engine.execute(&mut t, &write.original()).await);

    assert_eq!(response.status, StatusCode::CONFLICT);
    assert_eq!(report.kind, ConflictKind::StateConflict);
    assert_eq!(report.outcome, Outcome::NotRetryable);
    assert_eq!((report.attempts, report.polls), (1, 0));
    assert_eq!(t.trace(), ["PUT vm1"]);
}

#[tokio::test(start_paused = true)]
async fn the_attempt_budget_is_spent_then_the_last_conflict_surfaces() {
    let engine = Engine::new(ConflictPolicy {
        max_attempts: 3,
        ..fast()
    });
    let write = Write::put();
    let mut t = Scripted::new()
        .sends([
            fixture(CONCURRENT),
            fixture(CONCURRENT),
            fixture(CONCURRENT),
        ])
        .on("GET vm1", [resource("Succeeded")]);

    let (response, report) = reported(engine.execute(&mut t, &write.original()).await);

    assert_eq!(response.status, StatusCode::CONFLICT);
    assert_eq!(report.outcome, Outcome::Exhausted);
    assert_eq!((report.attempts, report.conflicts, report.polls), (3, 3, 2));
    assert_eq!(
        t.trace(),
        ["PUT vm1", "GET vm1", "PUT vm1", "GET vm1", "PUT vm1"]
    );
}

#[tokio::test(start_paused = true)]
async fn a_state_that_never_converges_fails_at_the_deadline_not_later() {
    let engine = Engine::new(fast());
    let write = Write::put();
    let mut t = Scripted::new()
        .sends([fixture(CONCURRENT)])
        .on("GET vm1", [resource("Updating")]);
    let started = Instant::now();

    let error = engine_error(engine.execute(&mut t, &write.original()).await);

    assert_eq!(started.elapsed(), DEADLINE);
    let Error::NotConverged {
        resource,
        classification,
        last_state,
        attempts,
        waited,
        ..
    } = error
    else {
        panic!("{error}");
    };
    assert_eq!(resource, write.original().resource.key());
    assert_eq!(last_state.as_deref(), Some("Updating"));
    assert_eq!(attempts, 1);
    assert_eq!(waited, DEADLINE);
    let classification = classification.expect("the conflict that started the wait");
    assert_eq!(classification.kind, ConflictKind::StateConflict);
    // One send, then polls every 10, 20, 40, 40, … ms until the deadline.
    let trace = t.trace();
    assert_eq!(trace[0], "PUT vm1");
    assert!(trace[1..].iter().all(|l| *l == "GET vm1"), "{trace:?}");
    assert_eq!(trace.len() - 1, 2 + (5000 - 30) / 40);
}

#[tokio::test(start_paused = true)]
async fn a_429_that_reports_a_lock_is_resolved_like_a_409() {
    let engine = Engine::new(fast());
    let write = Write::put();
    // App Service's "Cannot acquire exclusive lock … Retry the request later.", sent as 429.
    let mut t = Scripted::new()
        .sends([fixture("web_site_exclusive_lock_429"), ok(d4s())])
        .on("GET vm1", [resource("Succeeded")]);

    let (resp, report) = reported(engine.execute(&mut t, &write.original()).await);

    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(report.outcome, Outcome::Resolved);
    assert_eq!(report.kind, ConflictKind::StateConflict);
    assert_eq!(report.classification.status, 429);
    assert_eq!(t.trace(), ["PUT vm1", "GET vm1", "PUT vm1"]);
}

#[tokio::test(start_paused = true)]
async fn a_throttling_429_is_handed_back_untouched_for_the_retry_middleware() {
    // Even with `retry_unknown`: throttling is not a conflict of any kind.
    let engine = Engine::new(ConflictPolicy {
        retry_unknown: true,
        ..fast()
    });
    let write = Write::put();
    let throttled = fixture("40_cosmos_throttled_retry_after_ms");
    let mut t = Scripted::new().sends([throttled.clone()]);

    let (resp, report) = answered(engine.execute(&mut t, &write.original()).await);

    assert_eq!(resp.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.body, throttled.body, "the whole body, as sent");
    assert!(report.is_none(), "nothing was done about it");
    assert_eq!(t.trace(), ["PUT vm1"]);
    assert_eq!(engine.stats().snapshot().total_conflicts(), 0);
}

/// `fast()` that gives up on a state unchanged for 300 ms.
fn impatient() -> ConflictPolicy {
    ConflictPolicy {
        stuck_after: Some(ms(300)),
        ..fast()
    }
}

#[tokio::test(start_paused = true)]
async fn a_state_that_stops_changing_ends_the_wait_as_stuck_not_at_the_deadline() {
    let engine = Engine::new(impatient());
    let write = Write::put();
    let mut t = Scripted::new()
        .sends([fixture(CONCURRENT)])
        .on("GET vm1", [resource("Updating")]);
    let started = Instant::now();

    let error = engine_error(engine.execute(&mut t, &write.original()).await);

    // Polls at 10, 30, 70, 110, … ms: Updating first read at 10 ms, stuck at the first poll
    // 300 ms or more after that.
    assert_eq!(started.elapsed(), ms(310));
    let Error::Stuck {
        state,
        since,
        attempts,
        report,
        ..
    } = &error
    else {
        panic!("{error}");
    };
    assert_eq!(
        (state.as_str(), *since, *attempts),
        ("Updating", ms(300), 1)
    );
    let report = report.as_ref().expect("the resolution's report");
    assert_eq!(report.outcome, Outcome::Stuck);
    assert_eq!(error.report().map(|r| r.outcome), Some(Outcome::Stuck));
    assert!(error.to_string().contains("stuck"), "{error}");
    assert_eq!(engine.stats().snapshot().outcomes.get("stuck"), Some(&1));
}

#[tokio::test(start_paused = true)]
async fn a_state_that_keeps_moving_is_waited_for() {
    let engine = Engine::new(impatient());
    let write = Write::put();
    // Each state lasts about 150 ms (5 polls), under the 300 ms that would make it stuck.
    let states = ["Updating", "Migrating", "Updating"]
        .into_iter()
        .flat_map(|s| std::iter::repeat_n(s, 5))
        .map(resource)
        .chain([resource("Succeeded")]);
    let mut t = Scripted::new()
        .sends([fixture(CONCURRENT), ok(d4s())])
        .on("GET vm1", states);

    let (resp, report) = reported(engine.execute(&mut t, &write.original()).await);

    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(report.outcome, Outcome::Resolved);
    assert_eq!(
        report.states,
        ["Updating", "Migrating", "Updating", "Succeeded"]
    );
}

#[tokio::test(start_paused = true)]
async fn a_state_guard_that_sees_no_change_gives_up_as_stuck_before_sending() {
    let engine = Engine::new(impatient());
    let write = Write::put();
    let mut t = Scripted::new()
        .sends([status(202)])
        .on("GET vm1", [resource("Updating")]);
    answered(engine.execute(&mut t, &write.original()).await);

    let error = engine_error(engine.execute(&mut t, &write.original()).await);

    let Error::Stuck {
        state,
        attempts,
        report,
        ..
    } = &error
    else {
        panic!("{error}");
    };
    assert_eq!((state.as_str(), *attempts), ("Updating", 0));
    assert!(report.is_none(), "no conflict started this wait");
    assert_eq!(t.trace().iter().filter(|l| **l == "PUT vm1").count(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_poll_that_hangs_is_cut_off_at_the_deadline() {
    let engine = Engine::new(fast());
    let write = Write::put();
    let mut t = Scripted::new().sends([fixture(CONCURRENT)]).on(
        "GET vm1",
        [
            resource("Updating"),
            resource("Succeeded").after(Duration::from_secs(60)),
        ],
    );
    let started = Instant::now();

    let error = engine_error(engine.execute(&mut t, &write.original()).await);

    assert_eq!(started.elapsed(), DEADLINE);
    assert!(
        matches!(&error, Error::NotConverged { last_state, .. } if last_state.as_deref() == Some("Updating")),
        "{error}"
    );
    assert_eq!(t.trace(), ["PUT vm1", "GET vm1", "GET vm1"]);
}

#[tokio::test(start_paused = true)]
async fn a_conflict_met_after_the_deadline_is_surfaced_as_deadline_exceeded() {
    let engine = Engine::new(fast());
    let write = Write::put();
    // The retry itself takes past the deadline, and meets another conflict.
    let mut t = Scripted::new()
        .sends([fixture(CONCURRENT), fixture(CONCURRENT).after(DEADLINE)])
        .on("GET vm1", [resource("Succeeded")]);

    let (response, report) = reported(engine.execute(&mut t, &write.original()).await);

    assert_eq!(response.status, StatusCode::CONFLICT);
    assert_eq!(report.outcome, Outcome::DeadlineExceeded);
    assert_eq!((report.attempts, report.conflicts), (2, 2));
    assert_eq!(t.trace(), ["PUT vm1", "GET vm1", "PUT vm1"]);
}

#[tokio::test(start_paused = true)]
async fn a_transport_error_on_the_first_send_is_returned_untouched() {
    let journal = Journal::default();
    let engine = Engine::new(fast()).with_journal(journal.clone());
    let write = Write::put();
    let mut t = Scripted::new().send_fails("connection reset by peer");

    match engine.execute(&mut t, &write.original()).await {
        Err(Failure::Transport(error)) => assert_eq!(error, "connection reset by peer"),
        Err(Failure::Conflict(error)) => panic!("engine failure: {error}"),
        Ok(answered) => panic!("answered {}", answered.response.status),
    }
    assert_eq!(t.trace(), ["PUT vm1"]);
    let entries = journal.entries();
    assert_eq!(entries.len(), 1);
    assert!(entries[0].end.is_some(), "the entry is closed");
    assert_eq!(entries[0].status, None, "an error has no status");
}

// ---------------------------------------------------------------------------------------------
// Stale preconditions

/// The VM as another writer left it: size D2, tagged, ETag `W/"2"`.
fn fresh_vm(size: &str, env: &str) -> Value {
    json!({
        "name": "vm1",
        "etag": "W/\"2\"",
        "tags": {"env": env},
        "properties": {
            "provisioningState": "Succeeded",
            "hardwareProfile": {"vmSize": size},
        },
    })
}

fn fresh(body: Value) -> Canned {
    ok(body).header("etag", "W/\"2\"")
}

/// The stale-ETag 412 Network RP sends (the fixture's If-Match is the write's too).
const STALE: &str = "24_stale_etag_network";
const SENT_ETAG: &str = "W/\"1a2b3c4d-0000-0000-0000-000000000001\"";

fn strategy(strategy: PreconditionStrategy) -> Overrides {
    Overrides::read(None, Some(&strategy), None)
}

#[tokio::test(start_paused = true)]
async fn a_stale_write_already_in_place_is_answered_with_the_fresh_representation() {
    let engine = Engine::new(fast());
    let write = Write::put().if_match(SENT_ETAG);
    let in_place = fresh_vm("Standard_D4s_v5", "dev");
    let mut t = Scripted::new()
        .sends([fixture(STALE)])
        .on("GET vm1", [fresh(in_place.clone())]);

    let (response, report) = reported(engine.execute(&mut t, &write.original()).await);

    assert!(response.made_here, "built by Transport::respond");
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(json_of(&response.body), in_place);
    assert_eq!(response.headers[header::ETAG], "W/\"2\"");
    assert_eq!(response.headers[header::CONTENT_TYPE], "application/json");
    assert_eq!(report.kind, ConflictKind::StalePrecondition);
    assert_eq!(report.outcome, Outcome::AlreadyApplied);
    assert_eq!(report.fresh_etag.as_deref(), Some("W/\"2\""));
    assert_eq!((report.attempts, report.polls), (1, 1));
    assert_eq!(t.trace(), ["PUT vm1", "GET vm1"]);
    assert_poll_headers(t.calls()[0].1);
}

#[tokio::test(start_paused = true)]
async fn surface_strategy_returns_the_412_with_the_fresh_state() {
    let engine = Engine::new(fast());
    let write = Write::put().if_match(SENT_ETAG);
    let theirs = fresh_vm("Standard_D2s_v5", "dev");
    let mut t = Scripted::new()
        .sends([fixture(STALE)])
        .on("GET vm1", [fresh(theirs.clone())]);

    let (response, report) = reported(engine.execute(&mut t, &write.original()).await);

    assert_eq!(response.status, StatusCode::PRECONDITION_FAILED);
    assert!(!response.made_here);
    assert_eq!(report.outcome, Outcome::Surfaced);
    assert_eq!(
        report.code.as_deref(),
        Some("PreconditionFailedEtagMismatch")
    );
    assert_eq!(report.fresh_etag.as_deref(), Some("W/\"2\""));
    assert_eq!(report.fresh, Some(theirs));
    assert_eq!((report.attempts, report.polls), (1, 1));
    assert_eq!(t.trace(), ["PUT vm1", "GET vm1"]);
}

#[tokio::test(start_paused = true)]
async fn overwrite_strategy_resends_the_same_body_under_the_fresh_etag() {
    let engine = Engine::new(fast());
    let write = Write::put()
        .if_match(SENT_ETAG)
        .overrides(strategy(PreconditionStrategy::Overwrite));
    let mut t = Scripted::new()
        .sends([fixture(STALE), status(200)])
        .on("GET vm1", [fresh(fresh_vm("Standard_D2s_v5", "prod"))]);

    let (response, report) = reported(engine.execute(&mut t, &write.original()).await);

    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(report.outcome, Outcome::Resolved);
    assert_eq!((report.attempts, report.polls), (2, 1));
    assert_eq!(t.trace(), ["PUT vm1", "GET vm1", "PUT vm1"]);
    let sent = t.sent();
    assert!(sent[0].is_none());
    let resend = sent[1].expect("the resend changes the request");
    assert_eq!(resend.body, None, "the same body");
    assert_eq!(resend.headers[header::IF_MATCH], "W/\"2\"");
    // The body did not change, so neither did its length; the rest of the head is the write's.
    assert_eq!(
        resend.headers.get(header::CONTENT_LENGTH),
        write.headers.get(header::CONTENT_LENGTH)
    );
    assert_eq!(resend.headers["x-secret"], "s3cr3t");
    assert_eq!(resend.headers.len(), write.headers.len());
}

/// A PUT that resizes the VM from D2 to D4 under a stale ETag, merging with the D2 it read.
fn resize_to_d4_by_merge() -> Write {
    let base = json!({"tags": {"env": "dev"}, "properties": {"hardwareProfile": {"vmSize": "Standard_D2s_v5"}}});
    let ours = json!({"tags": {"env": "dev"}, "properties": {"hardwareProfile": {"vmSize": "Standard_D4s_v5"}}});
    Write::put()
        .if_match(SENT_ETAG)
        .replay(Replay::Bytes(Bytes::from(ours.to_string())))
        .overrides(Overrides::read(
            None,
            Some(&PreconditionStrategy::Merge),
            Some(&MergeBase(base)),
        ))
}

#[tokio::test(start_paused = true)]
async fn merge_strategy_resends_disjoint_changes_merged() {
    let engine = Engine::new(fast());
    // Both writers read D2 tagged dev: we resize, they retag.
    let write = resize_to_d4_by_merge();
    let mut t = Scripted::new()
        .sends([fixture(STALE), status(200)])
        .on("GET vm1", [fresh(fresh_vm("Standard_D2s_v5", "prod"))]);

    let (response, report) = reported(engine.execute(&mut t, &write.original()).await);

    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(report.outcome, Outcome::Resolved);
    assert!(report.conflicting_paths.is_empty());
    assert_eq!(t.trace(), ["PUT vm1", "GET vm1", "PUT vm1"]);
    let resend = t.sent()[1].expect("the resend changes the request");
    let merged = json_of(resend.body.as_ref().expect("a merged body"));
    assert_eq!(
        merged,
        json!({"tags": {"env": "prod"}, "properties": {"hardwareProfile": {"vmSize": "Standard_D4s_v5"}}})
    );
    assert_eq!(resend.headers[header::IF_MATCH], "W/\"2\"");
    assert!(
        !resend.headers.contains_key(header::CONTENT_LENGTH),
        "the body changed: its old length must go"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stale_precondition_whose_refetch_fails_is_surfaced_with_a_note() {
    let engine = Engine::new(fast());
    let write = Write::put()
        .if_match(SENT_ETAG)
        .overrides(strategy(PreconditionStrategy::Overwrite));
    let mut t = Scripted::new()
        .sends([fixture(STALE)])
        .on("GET vm1", [status(503)]);

    let (response, report) = reported(engine.execute(&mut t, &write.original()).await);

    assert_eq!(response.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(report.outcome, Outcome::Surfaced);
    assert_eq!(report.notes, ["re-fetch answered HTTP 503"]);
    assert_eq!(report.fresh_etag, None);
    assert_eq!(t.trace(), ["PUT vm1", "GET vm1"]);
}

#[tokio::test(start_paused = true)]
async fn merge_needs_a_body_it_can_read() {
    let engine = Engine::new(fast());
    let write = Write::put()
        .if_match(SENT_ETAG)
        .replay(Replay::Rewind)
        .overrides(Overrides::read(
            None,
            Some(&PreconditionStrategy::Merge),
            Some(&MergeBase(fresh_vm("Standard_D2s_v5", "dev"))),
        ));
    let mut t = Scripted::new()
        .sends([fixture(STALE)])
        .on("GET vm1", [fresh(fresh_vm("Standard_D2s_v5", "prod"))]);

    let (_, report) = reported(engine.execute(&mut t, &write.original()).await);

    assert_eq!(report.outcome, Outcome::Surfaced);
    assert_eq!(report.notes, ["merge needs JSON bodies on both sides"]);
    assert_eq!(t.trace(), ["PUT vm1", "GET vm1"]);
}

#[tokio::test(start_paused = true)]
async fn merge_strategy_surfaces_overlapping_changes_with_their_paths() {
    let engine = Engine::new(fast());
    let write = resize_to_d4_by_merge();
    // They resized too, to another size.
    let mut t = Scripted::new()
        .sends([fixture(STALE)])
        .on("GET vm1", [fresh(fresh_vm("Standard_D8s_v5", "dev"))]);

    let (response, report) = reported(engine.execute(&mut t, &write.original()).await);

    assert_eq!(response.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(report.outcome, Outcome::Surfaced);
    assert_eq!(
        report.conflicting_paths,
        ["/properties/hardwareProfile/vmSize"]
    );
    assert_eq!(t.trace(), ["PUT vm1", "GET vm1"]);
}

// ---------------------------------------------------------------------------------------------
// Prerequisite transitions

/// The fast policy with the shipped compute policy's deallocate-before-resize rule.
fn with_deallocate_rule() -> ConflictPolicy {
    let path = format!(
        "{}/fixtures/policies/compute.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let compute = ConflictPolicy::from_json(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(
        compute.prerequisites[0].name.as_deref(),
        Some("deallocate_before_resize")
    );
    ConflictPolicy {
        prerequisites: compute.prerequisites,
        ..fast()
    }
}

/// Compute's "Please Deallocate the VM and retry the operation".
const NEEDS_DEALLOCATION: &str = "12_property_change_needs_deallocation";

#[tokio::test(start_paused = true)]
async fn prerequisite_deallocates_retries_then_starts_the_vm_again() {
    let engine = Engine::new(with_deallocate_rule());
    let write = Write::put();
    let mut t = Scripted::new()
        .sends([fixture(NEEDS_DEALLOCATION), status(200)])
        .on("POST vm1/deallocate", [status(202)])
        .on("POST vm1/start", [status(202)])
        // Deallocating, deallocated; then, after the start, starting, running.
        .on(
            "GET vm1/instanceView",
            [
                instance_view("deallocating"),
                instance_view("deallocated"),
                instance_view("starting"),
                instance_view("running"),
            ],
        )
        // The retried resize still settling when the restore looks.
        .on("GET vm1", [resource("Updating"), resource("Succeeded")]);

    let (response, report) = reported(engine.execute(&mut t, &write.original()).await);

    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(report.kind, ConflictKind::PrerequisiteRequired);
    assert_eq!(report.code.as_deref(), Some("PropertyChangeNotAllowed"));
    assert_eq!(report.outcome, Outcome::Resolved);
    assert_eq!(report.attempts, 2);
    assert_eq!(
        report.steps,
        [
            "POST deallocate: 202",
            "PowerState/deallocated: reached after 2 poll(s)",
            "PUT (retry): 200",
            "POST start: 202",
            "PowerState/running: reached after 2 poll(s)",
        ]
    );
    // The instance-view polls count; the restore's wait for the resource to settle does not.
    assert_eq!(report.polls, 4);
    assert!(report.notes.is_empty(), "{:?}", report.notes);
    assert_eq!(
        t.trace(),
        [
            "PUT vm1",
            "POST vm1/deallocate",
            "GET vm1/instanceView",
            "GET vm1/instanceView",
            "PUT vm1",
            "GET vm1",
            "GET vm1",
            "POST vm1/start",
            "GET vm1/instanceView",
            "GET vm1/instanceView",
        ]
    );
    for (url, headers) in t.calls() {
        assert_eq!(url.query(), Some("api-version=2024-07-01"), "{url}");
        assert_poll_headers(headers);
    }
    assert!(t.sent().iter().all(Option::is_none));
}

#[tokio::test(start_paused = true)]
async fn prerequisite_action_refused_surfaces_with_nothing_to_restore() {
    let engine = Engine::new(with_deallocate_rule());
    let write = Write::put();
    let mut t = Scripted::new()
        .sends([fixture(NEEDS_DEALLOCATION)])
        .on("POST vm1/deallocate", [status(403)]);

    let (response, report) = reported(engine.execute(&mut t, &write.original()).await);

    assert_eq!(response.status, StatusCode::CONFLICT);
    assert_eq!(report.outcome, Outcome::Surfaced);
    assert_eq!(report.steps, ["POST deallocate: 403"]);
    assert_eq!((report.attempts, report.polls), (1, 0));
    // No poll, no retry, and no start: the VM was never deallocated.
    assert_eq!(t.trace(), ["PUT vm1", "POST vm1/deallocate"]);
}

#[tokio::test(start_paused = true)]
async fn prerequisite_action_without_an_answer_surfaces_and_still_restores() {
    let engine = Engine::new(with_deallocate_rule());
    let write = Write::put();
    // The deallocation may have reached the server: put the VM back all the same.
    let mut t = Scripted::new()
        .sends([fixture(NEEDS_DEALLOCATION)])
        .on_fail("POST vm1/deallocate", "connection reset by peer")
        .on("GET vm1", [resource("Succeeded")])
        .on("POST vm1/start", [status(202)])
        .on("GET vm1/instanceView", [instance_view("running")]);

    let (response, report) = reported(engine.execute(&mut t, &write.original()).await);

    assert_eq!(response.status, StatusCode::CONFLICT);
    assert_eq!(report.outcome, Outcome::Surfaced);
    assert_eq!(
        report.notes,
        ["POST deallocate failed: connection reset by peer"]
    );
    assert_eq!(
        report.steps,
        [
            "POST start: 202",
            "PowerState/running: reached after 1 poll(s)"
        ]
    );
    assert_eq!(
        t.trace(),
        [
            "PUT vm1",
            "POST vm1/deallocate",
            "GET vm1",
            "POST vm1/start",
            "GET vm1/instanceView",
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn prerequisite_state_never_reached_fails_and_still_restores() {
    let engine = Engine::new(with_deallocate_rule());
    let write = Write::put();
    let mut t = Scripted::new()
        .sends([fixture(NEEDS_DEALLOCATION)])
        .on("POST vm1/deallocate", [status(202)])
        .on("GET vm1/instanceView", [instance_view("deallocating")])
        .on("GET vm1", [resource("Succeeded")])
        .on("POST vm1/start", [status(202)]);
    let started = Instant::now();

    let error = engine_error(engine.execute(&mut t, &write.original()).await);

    assert!(
        matches!(&error, Error::NotConverged { last_state, attempts: 1, .. }
            if last_state.as_deref() == Some("PowerState/deallocating")),
        "{error}"
    );
    // The error's report tells the whole story, the restore after the failure included.
    let report = error.report().expect("the resolution's report");
    assert_eq!(report.outcome, Outcome::DeadlineExceeded);
    assert_eq!(
        report.steps.first().map(String::as_str),
        Some("POST deallocate: 202")
    );
    assert!(
        report.steps.iter().any(|s| s == "POST start: 202"),
        "{:?}",
        report.steps
    );
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.starts_with("restore `start` did not finish")),
        "{:?}",
        report.notes
    );
    // The restore has a deadline of its own, so the request ends one deadline after the first
    // one passed (the instance view never says running either).
    assert_eq!(started.elapsed(), DEADLINE * 2);
    let trace = t.trace();
    let start = trace.iter().position(|l| *l == "POST vm1/start");
    let start = start.expect("the VM is started again");
    assert_eq!(trace[..2], ["PUT vm1", "POST vm1/deallocate"]);
    assert_eq!(
        trace[start - 1],
        "GET vm1",
        "the restore waits for the resource"
    );
    assert!(
        trace[2..start - 1]
            .iter()
            .all(|l| *l == "GET vm1/instanceView")
    );
    assert!(
        trace[start + 1..]
            .iter()
            .all(|l| *l == "GET vm1/instanceView")
    );
    assert_eq!(trace.iter().filter(|l| l.starts_with("PUT")).count(), 1);
}

// ---------------------------------------------------------------------------------------------
// Per-request overrides

#[tokio::test(start_paused = true)]
async fn a_request_may_lower_its_attempt_budget() {
    let engine = Engine::new(fast());
    let write = Write::put().overrides(Overrides::read(
        Some(&PolicyOverride {
            max_attempts: Some(2),
            ..PolicyOverride::default()
        }),
        None,
        None,
    ));
    let mut t = Scripted::new()
        .sends([fixture(CONCURRENT), fixture(CONCURRENT)])
        .on("GET vm1", [resource("Succeeded")]);

    let (_, report) = reported(engine.execute(&mut t, &write.original()).await);

    assert_eq!(report.outcome, Outcome::Exhausted);
    assert_eq!(report.attempts, 2);
    assert_eq!(t.trace(), ["PUT vm1", "GET vm1", "PUT vm1"]);
}

#[tokio::test(start_paused = true)]
async fn an_override_out_of_bounds_fails_the_request_before_anything_is_sent() {
    let journal = Journal::default();
    let engine = Engine::new(fast()).with_journal(journal.clone());
    let write = Write::put().overrides(Overrides::read(
        Some(&PolicyOverride {
            leases: Some(LeasePolicy {
                ttl: Duration::ZERO,
                ..LeasePolicy::default()
            }),
            ..PolicyOverride::default()
        }),
        None,
        None,
    ));
    let mut t = Scripted::new();

    let error = engine_error(engine.execute(&mut t, &write.original()).await);

    assert!(
        matches!(&error, Error::InvalidPolicy { path, .. } if path == "leases.ttl"),
        "{error}"
    );
    assert!(t.trace().is_empty());
    assert!(journal.entries().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Leases, the state guard, the journal

#[tokio::test(start_paused = true)]
async fn after_a_202_the_next_write_waits_for_the_resource_before_sending() {
    let engine = Engine::new(fast());
    let write = Write::put();
    let mut t = Scripted::new()
        .sends([status(202), status(200), status(200)])
        .on("GET vm1", [resource("Updating"), resource("Succeeded")]);

    // The first write leaves the VM in transition (202), the second polls it until it is
    // terminal before sending, and clears the mark; the third goes at once.
    for _ in 0..3 {
        let (_, report) = answered(engine.execute(&mut t, &write.original()).await);
        assert!(report.is_none());
    }

    assert_eq!(
        t.trace(),
        ["PUT vm1", "GET vm1", "GET vm1", "PUT vm1", "PUT vm1"]
    );
    for (url, headers) in t.calls() {
        assert_eq!(url.as_str(), VM_RESOURCE);
        assert_poll_headers(headers);
    }
}

/// The state guard's wait is a courtesy: a transition it never sees end does not refuse the
/// write unsent; at the deadline the write goes out and the server has the last word.
#[tokio::test(start_paused = true)]
async fn a_state_guard_that_never_settles_sends_the_write_at_the_deadline() {
    let journal = Journal::default();
    let engine = Engine::new(fast()).with_journal(journal.clone());
    let write = Write::put();
    let mut t = Scripted::new()
        .sends([status(202), status(200)])
        .on("GET vm1", [resource("Updating")]);
    answered(engine.execute(&mut t, &write.original()).await);
    let started = Instant::now();

    let (response, _) = answered(engine.execute(&mut t, &write.original()).await);

    assert_eq!(started.elapsed(), DEADLINE);
    assert_eq!(response.status, 200, "the server's answer, handed back");
    let trace = t.trace();
    assert!(
        trace.iter().filter(|l| **l == "GET vm1").count() > 1,
        "the guard polled meanwhile: {trace:?}"
    );
    assert_eq!(trace.iter().filter(|l| **l == "PUT vm1").count(), 2);
    assert_eq!(journal.entries().len(), 2, "the second write was sent");
}

/// The state guard waits on the operation this engine's last write left running, which is the
/// precise signal; the resource itself is not polled.
#[tokio::test(start_paused = true)]
async fn the_state_guard_waits_on_the_operation_the_last_write_left() {
    let engine = Engine::new(fast());
    let write = Write::put();
    let route = line(&Method::GET, &Url::parse(OPERATION).unwrap());
    let mut t = Scripted::new()
        .sends([
            status(201).header("azure-asyncoperation", OPERATION),
            status(200),
        ])
        .on(&route, [operation("InProgress"), operation("Succeeded")]);
    answered(engine.execute(&mut t, &write.original()).await);

    answered(engine.execute(&mut t, &write.original()).await);

    assert_eq!(
        t.trace(),
        ["PUT vm1", route.as_str(), route.as_str(), "PUT vm1"]
    );
}

/// With a store shared with other clients, someone else may have written since this engine's
/// last write: its operation proves nothing, so the guard polls the resource.
#[tokio::test(start_paused = true)]
async fn with_a_shared_store_the_state_guard_polls_the_resource() {
    let engine = Engine::new(fast()).with_leases(std::sync::Arc::new(crate::MemoryLeases::new()));
    let write = Write::put();
    let mut t = Scripted::new()
        .sends([
            status(201).header("azure-asyncoperation", OPERATION),
            status(200),
        ])
        .on("GET vm1", [resource("Updating"), resource("Succeeded")]);
    answered(engine.execute(&mut t, &write.original()).await);

    answered(engine.execute(&mut t, &write.original()).await);

    assert_eq!(t.trace(), ["PUT vm1", "GET vm1", "GET vm1", "PUT vm1"]);
}

/// Three writes of the VM in a row through `engine`, each answered 202 (a transition left for
/// the next write's state guard), the guard's reads of the VM answered `states` in order: when
/// the second write's guard polled and when the third's did, each after the answer before it.
async fn guard_polls_of_three_writes(engine: &Engine, states: &[&str]) -> [Vec<Duration>; 2] {
    let write = Write::put();
    let mut t = Scripted::new()
        .sends([status(202), status(202), status(202)])
        .on("GET vm1", states.iter().map(|state| resource(state)));
    for _ in 0..3 {
        answered(engine.execute(&mut t, &write.original()).await);
    }
    let mut polls: [Vec<Duration>; 2] = Default::default();
    let mut answered_at = None;
    let mut sent: usize = 0;
    for (at, wire) in &t.log {
        match wire {
            Wire::Send { .. } => {
                sent += 1;
                answered_at = Some(*at);
            }
            Wire::Call { .. } => {
                let write = sent.checked_sub(1).and_then(|i| polls.get_mut(i));
                if let (Some(before), Some(polls)) = (answered_at, write) {
                    polls.push(*at - before);
                }
            }
        }
    }
    polls
}

/// After one transition of a resource, the guard's polls of the next are planned from it: the
/// first lands between the last poll that saw it running and the first that saw it over,
/// instead of at once and then on the schedule.
#[tokio::test(start_paused = true)]
async fn the_state_guard_polls_when_the_last_transition_ended() {
    let mut policy = fast();
    // Not capped: no planned poll lies past `max_delay` after the transition began.
    policy.poll.max_delay = ms(100);
    let engine = Engine::new(policy);
    let states = ["Updating", "Updating", "Updating", "Succeeded", "Succeeded"];

    let [second, third] = guard_polls_of_three_writes(&engine, &states).await;

    // Polled at once, then 10, 20 ms apart, then 40: running at 30 ms, over at 70 ms.
    assert_eq!(second, [ms(0), ms(10), ms(30), ms(70)]);
    assert_eq!(third, [ms(50)], "one poll, at the midpoint of 30 and 70 ms");
}

/// With a store shared with other clients, the previous transition may have begun at any time
/// after this engine's last write, so nothing is planned from an estimate: the guard polls at
/// once, then on the schedule, every time.
#[tokio::test(start_paused = true)]
async fn with_a_shared_store_the_state_guard_plans_nothing_from_a_guess() {
    let engine = Engine::new(fast()).with_leases(std::sync::Arc::new(crate::MemoryLeases::new()));
    let states = ["Updating", "Updating", "Succeeded"];

    let [second, third] =
        guard_polls_of_three_writes(&engine, &[&states[..], &states[..]].concat()).await;

    assert_eq!(second, [ms(0), ms(10), ms(30)]);
    assert_eq!(
        third, second,
        "the same again: nothing learned from the first wait"
    );
}

/// When the calls (re-fetches, polls) were made, in order.
fn call_times(t: &Scripted) -> Vec<Instant> {
    (t.log.iter())
        .filter(|(_, wire)| matches!(wire, Wire::Call { .. }))
        .map(|(at, _)| *at)
        .collect()
}

/// `lro: settle` on a 201 that names no operation: the create may be over already, so the
/// resource is read at once, not a poll delay later, and the 201 handed back.
#[tokio::test(start_paused = true)]
async fn settle_reads_a_201_that_names_no_operation_at_once() {
    let engine = Engine::new(ConflictPolicy {
        lro: Lro::Settle,
        ..fast()
    });
    let mut t = Scripted::new()
        .sends([status(201)])
        .on("GET vm1", [resource("Succeeded")]);

    let (response, report) = answered(engine.execute(&mut t, &Write::put().original()).await);

    assert_eq!(response.status, 201);
    assert!(report.is_none());
    assert_eq!(t.trace(), ["PUT vm1", "GET vm1"]);
    assert_eq!(call_times(&t), t.send_times(), "read at once");
}

/// `lro: settle` on an answer that names its operation: it is running, so its first poll waits
/// for the schedule's first delay (no `Retry-After` here).
#[tokio::test(start_paused = true)]
async fn settle_polls_a_named_operation_after_the_first_delay() {
    let engine = Engine::new(ConflictPolicy {
        lro: Lro::Settle,
        ..fast()
    });
    let route = line(&Method::GET, &Url::parse(OPERATION).unwrap());
    let mut t = Scripted::new()
        .sends([status(201).header("azure-asyncoperation", OPERATION)])
        .on(&route, [operation("InProgress"), operation("Succeeded")]);

    let (response, _) = answered(engine.execute(&mut t, &Write::put().original()).await);

    assert_eq!(response.status, 201);
    let sent = t.send_times()[0];
    let polls: Vec<Duration> = call_times(&t).iter().map(|at| *at - sent).collect();
    assert_eq!(
        polls,
        [ms(10), ms(30)],
        "the schedule: 10 ms, then 20 ms more"
    );
}

/// A lease store that shares transition estimates between the engines using it, as
/// `RedisLeases` does between processes.
#[derive(Debug, Default)]
struct SharingEstimates {
    leases: crate::MemoryLeases,
    estimates: std::sync::Mutex<HashMap<String, crate::TransitionEstimate>>,
}

impl crate::LeaseStore for SharingEstimates {
    fn acquire<'a>(
        &'a self,
        key: &'a str,
        ttl: Duration,
        wait: Duration,
    ) -> BoxFuture<'a, Result<crate::Lease, Error>> {
        self.leases.acquire(key, ttl, wait)
    }
    fn set_transitioning<'a>(
        &'a self,
        lease: &'a crate::Lease,
        transitioning: bool,
    ) -> BoxFuture<'a, Result<(), Error>> {
        self.leases.set_transitioning(lease, transitioning)
    }
    fn is_transitioning<'a>(
        &'a self,
        lease: &'a crate::Lease,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        self.leases.is_transitioning(lease)
    }
    fn transition_estimate<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Option<crate::TransitionEstimate>> {
        let known = self.estimates.lock().unwrap().get(key).copied();
        Box::pin(async move { known })
    }
    fn share_transition_estimate<'a>(
        &'a self,
        key: &'a str,
        estimate: crate::TransitionEstimate,
    ) -> BoxFuture<'a, ()> {
        self.estimates
            .lock()
            .unwrap()
            .insert(key.to_owned(), estimate);
        Box::pin(async {})
    }
}

/// Two engines (two processes) sharing a lease store that keeps estimates: the second times its
/// first settle from what the first learned, instead of finding the end on the schedule.
#[tokio::test(start_paused = true)]
async fn settle_times_its_polls_from_what_another_process_learned() {
    let store = std::sync::Arc::new(SharingEstimates::default());
    let policy = || {
        let mut policy = ConflictPolicy {
            lro: Lro::Settle,
            ..fast()
        };
        policy.poll.max_delay = ms(100);
        policy
    };
    let first = Engine::new(policy()).with_leases(store.clone());
    let second = Engine::new(policy()).with_leases(store.clone());
    let route = line(&Method::GET, &Url::parse(OPERATION).unwrap());
    let started = || status(201).header("azure-asyncoperation", OPERATION);
    let polls_after_send = |t: &Scripted| -> Vec<Duration> {
        let sent = t.send_times()[0];
        call_times(t).iter().map(|at| *at - sent).collect()
    };
    let mut t = Scripted::new().sends([started()]).on(
        &route,
        [
            operation("InProgress"),
            operation("InProgress"),
            operation("Succeeded"),
        ],
    );
    answered(first.execute(&mut t, &Write::put().original()).await);
    assert_eq!(
        polls_after_send(&t),
        [ms(10), ms(30), ms(70)],
        "the schedule"
    );
    let key = "/subscriptions/s/resourcegroups/rg/providers/microsoft.compute/virtualmachines/vm1";
    let shared = store
        .estimates
        .lock()
        .unwrap()
        .get(key)
        .map(|e| e.to_string());
    assert_eq!(
        shared.as_deref(),
        Some("v1 30 70 0 0"),
        "running at 30 ms, over at 70"
    );

    let mut t = Scripted::new()
        .sends([started()])
        .on(&route, [operation("InProgress"), operation("Succeeded")]);
    answered(second.execute(&mut t, &Write::put().original()).await);

    assert_eq!(
        polls_after_send(&t),
        [ms(50), ms(70)],
        "planned from the first engine's estimate: the midpoint, then the end"
    );
}

/// The state guard of an engine whose store is shared cannot know when the previous
/// transition began, so it offers the other processes nothing about how long it took.
#[tokio::test(start_paused = true)]
async fn a_state_guard_shares_nothing_it_timed_from_a_guess() {
    let store = std::sync::Arc::new(SharingEstimates::default());
    let engine = Engine::new(fast()).with_leases(store.clone());
    let write = Write::put();
    let mut t = Scripted::new()
        .sends([status(202), status(200)])
        .on("GET vm1", [resource("Updating"), resource("Succeeded")]);
    answered(engine.execute(&mut t, &write.original()).await);

    answered(engine.execute(&mut t, &write.original()).await);

    assert_eq!(t.trace(), ["PUT vm1", "GET vm1", "GET vm1", "PUT vm1"]);
    assert!(store.estimates.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn without_leases_there_is_no_state_guard() {
    let engine = Engine::new(ConflictPolicy {
        leases: LeasePolicy {
            enabled: false,
            ..LeasePolicy::default()
        },
        ..fast()
    });
    let write = Write::put();
    // No route for `GET vm1`: a guard poll would panic.
    let mut t = Scripted::new().sends([status(202), status(200)]);

    for _ in 0..2 {
        answered(engine.execute(&mut t, &write.original()).await);
    }

    assert_eq!(t.trace(), ["PUT vm1", "PUT vm1"]);
}

#[tokio::test(start_paused = true)]
async fn each_write_opens_and_closes_one_journal_entry_under_its_lease_token() {
    let journal = Journal::default();
    let engine = Engine::new(fast()).with_journal(journal.clone());
    let write = Write::put();
    let mut t = Scripted::new()
        .sends([fixture(CONCURRENT), status(200), status(201)])
        .on("GET vm1", [resource("Succeeded")]);

    let (_, report) = reported(engine.execute(&mut t, &write.original()).await);
    let (_, none) = answered(engine.execute(&mut t, &write.original()).await);
    assert!(none.is_none());

    let entries = journal.entries();
    assert_eq!(entries.len(), 2);
    let key = write.original().resource.key().to_owned();
    for (entry, status) in entries.iter().zip([200, 201]) {
        assert_eq!(entry.resource, key);
        assert_eq!(entry.method, "PUT");
        assert_eq!(entry.status, Some(status));
        assert!(entry.end.is_some());
        assert!(entry.token.is_some(), "written under a lease");
    }
    assert_eq!(report.journal_seq, Some(entries[0].seq));
    assert_eq!(report.lease_token, entries[0].token);
    assert!(entries[1].token > entries[0].token, "fencing tokens grow");
    assert!(journal.overlaps().is_empty());
}

#[tokio::test(start_paused = true)]
async fn writes_to_one_resource_go_one_at_a_time() {
    let engine = Engine::new(fast());
    let write = Write::put();
    // The first write waits for a conflict to clear; the second must not send meanwhile.
    let mut first = Scripted::new()
        .sends([fixture(CONCURRENT), status(200)])
        .on("GET vm1", [resource("Updating"), resource("Succeeded")]);
    let mut second = Scripted::new().sends([status(200)]);

    let (one, two) = (write.original(), write.original());
    let (a, b) = tokio::join!(
        engine.execute(&mut first, &one),
        engine.execute(&mut second, &two),
    );
    answered(a);
    answered(b);

    // The first write's retry went at 30 ms, after its polls at 10 and 30 ms.
    let done = *first.send_times().last().unwrap();
    assert_eq!(first.send_times()[0] + ms(30), done);
    assert_eq!(second.send_times().len(), 1);
    assert!(
        second.send_times()[0] >= done,
        "the second write sent while the first held the lease"
    );
}

#[tokio::test(start_paused = true)]
async fn a_dropped_write_releases_its_lease() {
    let engine = Engine::new(fast());
    let write = Write::put();
    let mut stuck = Scripted::new()
        .sends([fixture(CONCURRENT)])
        .on("GET vm1", [resource("Updating")]);

    // Cancelled mid-wait, as a caller's timeout would.
    let original = write.original();
    tokio::select! {
        _ = engine.execute(&mut stuck, &original) => panic!("the wait cannot end"),
        () = sleep(ms(100)) => {}
    }
    assert!(
        stuck.trace().len() > 2,
        "it was polling: {:?}",
        stuck.trace()
    );

    let mut next = Scripted::new().sends([status(200)]);
    let before = Instant::now();
    let (response, _) = answered(engine.execute(&mut next, &write.original()).await);
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(
        before.elapsed(),
        Duration::ZERO,
        "the lease was free at once"
    );
}

#[tokio::test(start_paused = true)]
async fn a_dropped_write_closes_its_journal_entry() {
    let journal = Journal::default();
    let engine = Engine::new(fast()).with_journal(journal.clone());
    let write = Write::put();
    let mut stuck = Scripted::new()
        .sends([fixture(CONCURRENT)])
        .on("GET vm1", [resource("Updating")]);
    let original = write.original();
    tokio::select! {
        _ = engine.execute(&mut stuck, &original) => panic!("the wait cannot end"),
        () = sleep(ms(100)) => {}
    }
    let mut next = Scripted::new().sends([status(200)]);
    answered(engine.execute(&mut next, &write.original()).await);

    let entries = journal.entries();
    assert_eq!(entries.len(), 2);
    assert!(
        entries[0].end.is_some(),
        "the dropped write's entry is open"
    );
    assert!(
        journal.overlaps().is_empty(),
        "leases serialized the writes, yet the journal reports an overlap"
    );
}
