//! What the crate promises a caller about hosts, credentials, buffers and waits, checked against
//! hostile servers: a foreign simulator and bare TCP servers stand for hosts outside the trusted
//! set, so "nothing reached them" is an observation, not an assumption.
//!
//! Tracing: every test installs (once, for the whole binary) a global subscriber at TRACE that
//! writes everything into memory. A global default, not `set_default`: tracing caches each
//! callsite's interest process-wide, so a scoped subscriber is flaky with tests running in
//! parallel. Each test that greps the capture for secrets uses secrets of its own.

mod support;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use arm_sim::{Faults, Scripted, Sim, SimConfig};
use reqwest_conflict::{
    ConflictKind, ConflictPolicy, ConflictReport, Error, Outcome, PreconditionStrategy,
};
use reqwest_middleware::ClientWithMiddleware;
use serde_json::json;
use support::*;
use tokio::{io::AsyncWriteExt, net::TcpListener};
use tracing_subscriber::fmt::format::FmtSpan;

fn vm(i: usize) -> String {
    format!(
        "/subscriptions/sub1/resourceGroups/rg1/providers/Microsoft.Compute/virtualMachines/vm{i}"
    )
}

/// The fast policy with fewer attempts and a deadline of 1.5 s.
fn policy() -> ConflictPolicy {
    ConflictPolicy {
        max_attempts: 5,
        deadline: Duration::from_millis(1500),
        ..fast_policy()
    }
}

/// What `call` returns, unless it takes longer than the [`hang_limit`] of `policy`: then the test
/// fails with `hang`.
async fn unless_it_hangs<T>(
    policy: &ConflictPolicy,
    hang: &str,
    call: impl Future<Output = T>,
) -> T {
    tokio::time::timeout(hang_limit(policy), call)
        .await
        .expect(hang)
}

// ---------------------------------------------------------------------------------------------
// Capturing tracing output

/// The binary's one subscriber: everything, at TRACE, spans with their fields on every event
/// and on open and close.
fn capture() -> &'static Captured {
    static CAPTURED: OnceLock<Captured> = OnceLock::new();
    CAPTURED.get_or_init(|| {
        let captured = Captured::default();
        let subscriber = captured.subscriber(tracing::Level::TRACE, FmtSpan::FULL);
        tracing::subscriber::set_global_default(subscriber)
            .expect("only this binary's capture() sets the global subscriber");
        captured
    })
}

/// The first line of `haystack` that holds one of `secrets`, if any.
fn leak(haystack: &str, secrets: &[&str], what: &str) -> Option<String> {
    secrets.iter().find_map(|secret| {
        let at = haystack.find(secret)?;
        let line_start = haystack[..at].rfind('\n').map_or(0, |i| i + 1);
        let line_end = haystack[at..].find('\n').map_or(haystack.len(), |i| at + i);
        Some(format!(
            "{secret} leaked into {what}: {}",
            &haystack[line_start..line_end]
        ))
    })
}

fn assert_no_secret(haystack: &str, secrets: &[&str], what: &str) {
    if let Some(leak) = leak(haystack, secrets, what) {
        panic!("{leak}");
    }
}

// ---------------------------------------------------------------------------------------------
// A bare TCP server, for what the simulator will not do: record raw request heads from any host
// name, or stall in the middle of an answer.

enum RawReply {
    /// Write these bytes (a whole HTTP/1.1 response).
    Send(Vec<u8>),
    /// Write these bytes, then never another one, keeping the connection open.
    Stall(Vec<u8>),
}

struct Raw {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Raw {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn not_found() -> RawReply {
    RawReply::Send(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".to_vec())
}

fn http_response(status: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

impl Raw {
    async fn start(reply: impl Fn(&str) -> RawReply + Send + Sync + 'static) -> Raw {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let reply = Arc::new(reply);
        let log = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (log, reply) = (log.clone(), reply.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    while let Some((head, request)) =
                        hostile::read_request(&mut socket, &mut buf).await
                    {
                        log.lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(&request).into_owned());
                        match reply(&head) {
                            RawReply::Send(bytes) => {
                                if socket.write_all(&bytes).await.is_err() {
                                    return;
                                }
                            }
                            RawReply::Stall(bytes) => {
                                let _ = socket.write_all(&bytes).await;
                                std::future::pending::<()>().await;
                            }
                        }
                    }
                });
            }
        });
        Raw { addr, seen, task }
    }

    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

// ---------------------------------------------------------------------------------------------
// (a) Polls and re-fetches go only to the request's own origin or an allow-listed https host.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operation_uris_off_the_trusted_hosts_are_never_polled() {
    capture();
    let foreign = Sim::start(SimConfig::default()).await;
    let honeypot = Raw::start(|_| not_found()).await;
    let sim = start_sim(Duration::from_millis(40)).await;
    let own_port = sim.base_url().rsplit(':').next().unwrap().to_owned();
    let fport = foreign.base_url().rsplit(':').next().unwrap().to_owned();
    let foreign_addr: SocketAddr = foreign.base_url()["http://".len()..].parse().unwrap();
    // Names of trusted hosts, and look-alikes, all resolve to the foreign simulator: if the engine
    // polled any of them, the foreign simulator would see it.
    let http = reqwest::Client::builder()
        .resolve("management.azure.com", foreign_addr)
        .resolve("eastus.management.azure.com", foreign_addr)
        .resolve("management.azure.com.evil.example", foreign_addr)
        .resolve("evilmanagement.azure.com", foreign_addr)
        .build()
        .unwrap();
    let client = client_with(http.clone(), policy());

    let op = "/subscriptions/sub1/providers/Microsoft.Sim/locations/westus/operations/00000001-0000-4000-a000-000000000001";
    let hostile = [
        // Another origin (another port on the same loopback address).
        format!("{}{op}?{API}", foreign.base_url()),
        format!("HTTP://127.0.0.1:{fport}{op}?{API}"),
        // http:// variants of allow-listed hosts.
        format!("http://management.azure.com:{fport}{op}?{API}"),
        format!("http://eastus.management.azure.com:{fport}{op}?{API}"),
        // Userinfo: credentials in the URI, or userinfo that spells the trusted origin.
        format!("http://user:pw@127.0.0.1:{fport}{op}?{API}"),
        format!("http://127.0.0.1:{own_port}@127.0.0.1:{fport}{op}?{API}"),
        format!("https://management.azure.com@management.azure.com.evil.example:{fport}{op}"),
        // Look-alike hosts.
        format!("https://management.azure.com.evil.example:{fport}{op}?{API}"),
        format!("http://management.azure.com.evil.example:{fport}{op}?{API}"),
        format!("https://evilmanagement.azure.com:{fport}{op}?{API}"),
        // Other spellings of the loopback address on the foreign port.
        format!("http://2130706433:{fport}{op}?{API}"),
        format!("http://%31%32%37.0.0.1:{fport}{op}?{API}"),
        format!("http://[::ffff:127.0.0.1]:{fport}{op}?{API}"),
        // The own host over another scheme is another origin.
        format!("https://127.0.0.1:{own_port}{op}?{API}"),
        // The bare TCP server.
        format!("{}{op}?{API}", honeypot.base()),
    ];
    for (i, uri) in hostile.iter().enumerate() {
        let path = vm(i);
        sim.seed(&path, json!({"location": "westus"}));
        sim.begin_transition(&path, "Updating", Some(Duration::from_millis(60)));
        sim.script(
            "PUT",
            &path,
            vec![in_progress(&format!(
                "Another operation is in progress. To retrieve status of the operation use uri: {uri}."
            ))],
        );
        let resp = unless_it_hangs(
            &policy(),
            "hang",
            client
                .put(url(&sim, &path))
                .json(&json!({"location": "westus"}))
                .send(),
        )
        .await
        .unwrap();
        assert_eq!(resp.status(), 200, "{uri}");
        let report = report(&resp);
        assert_eq!(report.outcome, Outcome::Resolved, "{uri}");
        assert!(
            report.classification.operation_uri.is_some(),
            "{uri} was not even extracted: the case proves nothing"
        );
        assert!(
            report.notes.iter().any(|n| n.contains("not allowed")),
            "{uri}: {:?}",
            report.notes
        );
        // The resource, on the request's own origin, was polled instead.
        assert!(sim.count("GET", &path, None) >= 1, "{uri}");
    }
    assert!(
        foreign.requests().is_empty(),
        "the foreign host was contacted: {:?}",
        foreign.requests()
    );
    assert!(honeypot.seen().is_empty(), "{:?}", honeypot.seen());

    // The control: this client does reach the foreign simulator under a trusted name, so the
    // silence above is the engine's refusal, not a broken set-up.
    let direct = http
        .get(format!("http://management.azure.com:{fport}{op}?{API}"))
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), 404);
    assert_eq!(foreign.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_referenced_resource_is_fetched_from_the_requests_own_origin() {
    capture();
    let foreign = Sim::start(SimConfig::default()).await;
    let sim = Sim::start(SimConfig::default()).await;
    let subnet = "/subscriptions/sub1/resourceGroups/rg1/providers/Microsoft.Network/virtualNetworks/v/subnets/s";
    sim.seed(NIC, json!({"location": "westus"}));
    sim.begin_transition(subnet, "Updating", Some(Duration::from_millis(60)));
    // The message spells the referenced resource as a full URL on the foreign host.
    let message = format!(
        "Resource {}{subnet} referenced by resource {NIC} was not found or is not in Succeeded state.",
        foreign.base_url()
    );
    sim.script(
        "PUT",
        NIC,
        vec![referenced_resource_not_provisioned(&message)],
    );
    let resp = client(policy())
        .put(url(&sim, NIC))
        .json(&json!({"location": "westus"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(report(&resp).outcome, Outcome::Resolved);
    assert!(sim.count("GET", subnet, None) >= 1);
    assert!(foreign.requests().is_empty(), "{:?}", foreign.requests());
}

/// A poll of the resource is answered with a redirect to the honeypot.
async fn redirected_poll(http: reqwest::Client) -> (Raw, ClientWithMiddleware, Sim) {
    let honeypot = Raw::start(|_| not_found()).await;
    let sim = Sim::start(SimConfig::default()).await;
    let path = vm(0);
    sim.seed(&path, json!({"location": "westus"}));
    sim.begin_transition(&path, "Updating", Some(Duration::from_millis(60)));
    sim.script(
        "PUT",
        &path,
        vec![in_progress("Another operation is in progress.")],
    );
    sim.script(
        "GET",
        &path,
        vec![
            Scripted::raw(302, "")
                .header("location", &format!("{}/collect?{API}", honeypot.base())),
        ],
    );
    (honeypot, client_with(http, policy()), sim)
}

async fn put_with_secrets(client: &ClientWithMiddleware, url: &str) -> reqwest::Response {
    unless_it_hangs(
        &policy(),
        "hang",
        client
            .put(url)
            .bearer_auth("SECRET-TOKEN-REDIRECT")
            .header("x-ms-client-secret", "SECRET-HEADER-REDIRECT")
            .json(&json!({"location": "westus"}))
            .send(),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_redirected_off_the_trusted_hosts_carries_no_secret_and_is_not_trusted() {
    capture();
    // A client as a caller builds it by default: reqwest follows up to 10 redirects, and no
    // middleware can turn that off per request. What the engine guarantees even then: the
    // poll carries only the policy's `poll_headers` (reqwest itself drops `Authorization` on a
    // cross-origin hop), an answer from another origin is never taken for the state, and the
    // engine sends nothing more through that client.
    let (honeypot, client, sim) = redirected_poll(reqwest::Client::new()).await;
    let error = unless_it_hangs(
        &policy(),
        "hang",
        client
            .put(url(&sim, &vm(0)))
            .bearer_auth("SECRET-TOKEN-REDIRECT")
            .header("x-ms-client-secret", "SECRET-HEADER-REDIRECT")
            .json(&json!({"location": "westus"}))
            .send(),
    )
    .await
    .unwrap_err();
    let Error::NotConverged { last_state, .. } = engine_error(&error) else {
        panic!("expected NotConverged, got {error}");
    };
    assert_eq!(last_state.as_deref(), Some("redirected to another origin"));
    let seen = honeypot.seen().join("\n---\n");
    for secret in ["SECRET-TOKEN-REDIRECT", "SECRET-HEADER-REDIRECT"] {
        assert!(
            !seen.contains(secret),
            "{secret} reached the honeypot:\n{seen}"
        );
    }
}

/// The case of a storage URL, whose query is its SAS: a client that follows redirects sends it as
/// `Referer` to the redirect's target, and nothing in a middleware can stop the first hop (see
/// SECURITY.md, "Known gaps"). What the engine does: it sees the hop, and from then on sends no
/// poll, re-fetch or prerequisite action through that client — at most one hop per middleware
/// (and its clones), where every poll until the deadline used to hop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_seen_following_a_redirect_elsewhere_gets_no_more_own_requests() {
    capture();
    const SIG: &str = "SECRETSIG-REFERER-9d41";
    let honeypot = Raw::start(|_| not_found()).await;
    let sim = start_sim(Duration::from_millis(40)).await;
    let sas = format!("sv=2024-08-04&sr=b&sp=rw&sig={SIG}");
    let (blob, other) = (
        "/devstoreaccount1/container1/blob1",
        "/devstoreaccount1/container1/blob2",
    );
    let elsewhere =
        || Scripted::raw(302, "").header("location", &format!("{}/collect", honeypot.base()));
    sim.script("PUT", blob, (0..3).map(|_| in_progress("busy")).collect());
    for path in [blob, other] {
        sim.script("GET", path, (0..100).map(|_| elsewhere()).collect());
    }
    let put = |client: ClientWithMiddleware, path: &str, if_match: Option<&str>| {
        let mut request = client.put(sim.url(&format!("{path}?{sas}")));
        if let Some(etag) = if_match {
            request = request.header("if-match", etag);
        }
        let sent = request.json(&json!({"a": 1})).send();
        async move { unless_it_hangs(&policy(), "hang", sent).await }
    };

    // One middleware: the first poll hops; the write fails without another.
    let one = client(policy());
    let error = put(one.clone(), blob, None).await.unwrap_err();
    assert!(
        matches!(engine_error(&error), Error::NotConverged { last_state: Some(s), .. } if s == "redirected to another origin"),
        "{error}"
    );
    assert_eq!(honeypot.seen().len(), 1, "the first hop, and only it");
    // Its next conflicts are surfaced untouched: no poll, no re-fetch.
    let conflict = put(one.clone(), blob, None).await.unwrap();
    assert_eq!(conflict.status(), 409);
    let conflict = report(&conflict);
    assert_eq!(conflict.outcome, Outcome::Surfaced);
    assert_eq!(conflict.polls, 0);
    assert!(
        conflict.notes.iter().any(|n| n.contains("another origin")),
        "{conflict:?}"
    );
    let stale = put(one, other, Some("\"stale\"")).await.unwrap();
    assert_eq!(stale.status(), 412);
    assert_eq!(report(&stale).outcome, Outcome::Surfaced);
    assert_eq!(honeypot.seen().len(), 1, "no hop after the first");

    // Another middleware whose first own request is a 412's re-fetch: one hop, then none.
    let two = client(policy());
    for _ in 0..2 {
        let stale = put(two.clone(), other, Some("\"stale\"")).await.unwrap();
        assert_eq!(stale.status(), 412);
        let stale = report(&stale);
        assert!(stale.fresh.is_none(), "{stale:?}");
        assert!(
            stale.notes.iter().any(|n| n.contains("another origin")),
            "{stale:?}"
        );
    }
    assert_eq!(honeypot.seen().len(), 2, "one hop per middleware");
    // Every hop the client made was to the honeypot; no other secret went along.
    for hop in honeypot.seen() {
        assert!(!hop.to_ascii_lowercase().contains("authorization"), "{hop}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redirects_off_a_redirected_poll_is_just_a_state_that_is_not_terminal() {
    capture();
    // The mitigation SECURITY.md asks for: a client that does not follow redirects.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let (honeypot, client, sim) = redirected_poll(http).await;
    let resp = put_with_secrets(&client, &url(&sim, &vm(0))).await;
    assert_eq!(resp.status(), 200);
    let report = report(&resp);
    assert_eq!(report.outcome, Outcome::Resolved);
    assert!(report.states.iter().any(|s| s == "HTTP 302"), "{report:?}");
    assert!(honeypot.seen().is_empty(), "{:?}", honeypot.seen());
}

// ---------------------------------------------------------------------------------------------
// (b) Credentials are never sent outside the trusted set, and never written to tracing output.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_never_sent_to_an_untrusted_host() {
    capture();
    let honeypot = Raw::start(|_| not_found()).await;
    let sim = Sim::start(SimConfig {
        transition: Duration::from_millis(40),
        // Every operation URI the simulator hands out names the honeypot.
        operation_base: Some(honeypot.base()),
        ..SimConfig::default()
    })
    .await;
    let path = vm(0);
    sim.seed(&path, json!({"location": "westus"}));
    let client = client(policy());
    let url = sim.url(&format!(
        "{path}?{API}&sv=2024-08-04&sig=SECRETSIG-UNTRUSTED"
    ));
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                client
                    .put(&url)
                    .bearer_auth("SECRET-TOKEN-UNTRUSTED")
                    .header("x-ms-client-secret", "SECRET-HEADER-UNTRUSTED")
                    .json(&json!({"location": "westus"}))
                    .send()
                    .await
                    .map(|r| r.status())
            })
        })
        .collect();
    // Another writer outside the middleware keeps the resource busy, so the middleware's writes
    // meet 409s naming the honeypot.
    sim.begin_transition(&path, "Updating", Some(Duration::from_millis(80)));
    for writer in writers {
        let status = unless_it_hangs(&policy(), "hang", writer)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status, 200);
    }
    assert!(
        honeypot.seen().is_empty(),
        "the untrusted host received:\n{}",
        honeypot.seen().join("\n---\n")
    );
    // And every request that reached the trusted host carried the caller's own credentials.
    assert!(
        sim.requests()
            .iter()
            .all(|r| r.authorization.as_deref() == Some("Bearer SECRET-TOKEN-UNTRUSTED"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_reach_the_tracing_output() {
    let captured = capture();
    const TOKEN: &str = "SECRET-TOKEN-ARM-7f3a";
    const HEADER: &str = "SECRET-HEADER-ARM-91c2";
    const SIG: &str = "SECRETSIG-ARM-5e0d";
    let secrets = [TOKEN, HEADER, SIG];
    let foreign = Sim::start(SimConfig::default()).await;
    let sim = start_sim(Duration::from_millis(40)).await;
    let send = |client: ClientWithMiddleware, path: String, if_match: Option<String>| {
        let url = sim.url(&format!(
            "{path}?{API}&sv=2024-08-04&se=2030-01-01&sig={SIG}"
        ));
        async move {
            let mut request = client
                .put(url)
                .bearer_auth(TOKEN)
                .header("x-ms-client-secret", HEADER)
                .json(&json!({"location": "westus", "tags": {"t": "1"}}));
            if let Some(etag) = if_match {
                request = request.header("if-match", etag);
            }
            unless_it_hangs(&policy(), "hang", request.send()).await
        }
    };
    let mut reports = Vec::new();

    // 409 naming an operation URI on the own host: the operation is polled.
    sim.seed(&vm(0), json!({"location": "westus"}));
    sim.begin_transition(&vm(0), "Updating", Some(Duration::from_millis(60)));
    let resp = send(client(policy()), vm(0), None).await.unwrap();
    assert_eq!(resp.status(), 200);
    reports.push(report(&resp));

    // 409 naming nothing, and polls that meet a 500, a reset and a 404-less body: the resource
    // is polled and some polls fail in transport.
    sim.seed(&vm(1), json!({"location": "westus"}));
    sim.begin_transition(&vm(1), "Updating", Some(Duration::from_millis(60)));
    sim.script("PUT", &vm(1), vec![in_progress("busy")]);
    sim.script(
        "GET",
        &vm(1),
        vec![
            Scripted::raw(500, "oops"),
            Scripted::raw(0, ""),
            Scripted::raw(200, "not json"),
        ],
    );
    let resp = send(client(policy()), vm(1), None).await.unwrap();
    assert_eq!(resp.status(), 200);
    let polled = report(&resp);
    assert!(
        polled.states.iter().any(|s| s == "transport error"),
        "{polled:?}"
    );
    reports.push(polled);

    // 409 naming an operation URI on a foreign host: refused, noted.
    sim.seed(&vm(2), json!({"location": "westus"}));
    sim.script(
        "PUT",
        &vm(2),
        vec![in_progress(&format!(
            "To retrieve status of the operation use uri: {}/subscriptions/sub1/providers/Microsoft.Sim/locations/westus/operations/x?{API}",
            foreign.base_url()
        ))],
    );
    let resp = send(client(policy()), vm(2), None).await.unwrap();
    assert_eq!(resp.status(), 200);
    reports.push(report(&resp));

    // 412 with a re-fetch, under every strategy.
    for (i, strategy) in [
        PreconditionStrategy::Surface,
        PreconditionStrategy::Overwrite,
        PreconditionStrategy::Merge,
    ]
    .into_iter()
    .enumerate()
    {
        let path = vm(10 + i);
        sim.seed(&path, json!({"location": "westus", "tags": {"t": "0"}}));
        let policy = ConflictPolicy {
            precondition: strategy,
            ..policy()
        };
        let resp = send(client(policy), path, Some("\"stale\"".to_owned()))
            .await
            .unwrap();
        let report = report(&resp);
        assert_eq!(report.kind, ConflictKind::StalePrecondition);
        assert!(report.fresh_etag.is_some(), "{report:?}");
        reports.push(report);
    }

    // A state that never converges: the engine's error.
    sim.seed(&vm(3), json!({"location": "westus"}));
    sim.begin_transition(&vm(3), "Updating", None);
    let short = ConflictPolicy {
        deadline: Duration::from_millis(300),
        ..policy()
    };
    let err = send(client(short), vm(3), None).await.unwrap_err();
    assert!(matches!(engine_error(&err), Error::NotConverged { .. }));
    assert_no_secret(&format!("{err} {err:?}"), &secrets, "the error");

    for report in &reports {
        assert_no_secret(&format!("{report:?}"), &secrets, "a report");
    }
    let text = captured.text();
    assert!(
        text.contains("conflict_resolution") && text.contains("polled"),
        "the capture saw nothing; the check would prove nothing:\n{text}"
    );
    assert_no_secret(&text, &secrets, "the tracing output");
    // The simulator did get them: they were sent, just never written down.
    assert!(
        sim.requests()
            .iter()
            .all(|r| r.authorization.as_deref() == Some(&*format!("Bearer {TOKEN}")))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sas_signatures_of_non_arm_urls_never_reach_the_tracing_output() {
    let captured = capture();
    const SIG: &str = "SECRETSIG-BLOB-c41b";
    let sim = start_sim(Duration::from_millis(40)).await;
    // A storage-like URL: not an ARM resource, so the engine polls the request URL itself — with
    // its SAS, which it needs for authorization, but must not write down.
    let blob = "/devstoreaccount1/container1/blob1";
    let url = sim.url(&format!("{blob}?sv=2024-08-04&sr=b&sp=rw&sig={SIG}"));
    sim.script("PUT", blob, vec![in_progress("busy")]);
    sim.script(
        "GET",
        blob,
        vec![Scripted::raw(0, ""), Scripted::raw(500, "oops")],
    );
    let resp = unless_it_hangs(
        &policy(),
        "hang",
        client(policy()).put(&url).json(&json!({"a": 1})).send(),
    )
    .await
    .unwrap();
    let conflict = report(&resp);
    assert!(conflict.polls >= 2, "{conflict:?}");
    assert!(
        sim.requests()
            .iter()
            .filter(|r| r.method == "GET")
            .all(|r| r.query.as_deref().is_some_and(|q| q.contains(SIG))),
        "the polls need the SAS to be authorized"
    );

    // A stale If-Match (on a blob that does not exist): the re-fetch fails in transport, which
    // the report notes.
    let missing = "/devstoreaccount1/container1/blob2";
    sim.script("GET", missing, vec![Scripted::raw(0, "")]);
    let stale = unless_it_hangs(
        &policy(),
        "hang",
        client(policy())
            .put(sim.url(&format!("{missing}?sv=2024-08-04&sr=b&sp=rw&sig={SIG}")))
            .header("if-match", "\"stale\"")
            .json(&json!({"a": 2}))
            .send(),
    )
    .await
    .unwrap();
    let stale = report(&stale);
    assert_eq!(stale.kind, ConflictKind::StalePrecondition);

    let leaks: Vec<String> = [
        leak(&captured.text(), &[SIG], "the tracing output"),
        leak(&format!("{conflict:?}"), &[SIG], "the report of a 409"),
        leak(&format!("{stale:?}"), &[SIG], "the report of a 412"),
    ]
    .into_iter()
    .flatten()
    .collect();
    assert!(leaks.is_empty(), "{}", leaks.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_writes_no_sas_to_its_logs_or_errors() {
    use reqwest_conflict::{UpdateError, UpdateOptions};
    use reqwest_retry::{RetryTransientMiddleware, policies::ExponentialBackoff};

    let captured = capture();
    const SIG: &str = "SECRETSIG-UPDATE-71d2";
    const USER: &str = "SECRETUSER-UPDATE-71d2";
    let sas = format!("sv=2024-08-04&sr=b&sp=rw&sig={SIG}");
    let options = UpdateOptions {
        max_attempts: 2,
        deadline: Duration::from_secs(5),
        ..UpdateOptions::default()
    };
    // Every write loses the race: the loop logs each lost round, then gives up.
    let server = Raw::start(|head| {
        if head.starts_with("GET") {
            let body = r#"{"tags":{}}"#;
            RawReply::Send(
                format!(
                    "HTTP/1.1 200 OK\r\netag: \"1\"\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes(),
            )
        } else {
            RawReply::Send(http_response("412 Precondition Failed", "{}"))
        }
    })
    .await;
    let url = format!("{}/c/b?{sas}", server.base());
    let plain = reqwest_middleware::ClientBuilder::new(reqwest::Client::new()).build();
    let lost = reqwest_conflict::update_with(&plain, &url, &options, |_| Ok(())).await;
    assert!(
        matches!(lost, Err(UpdateError::Exhausted { attempts: 2, .. })),
        "{lost:?}"
    );
    assert!(
        captured.text().contains("update lost the race"),
        "the lost round was not logged"
    );

    // A transport failure, seen through a retry middleware that keeps reqwest's error (with its
    // URL) as the cause of its own.
    let closed = format!("http://{USER}:pw@127.0.0.1:{}/c/b?{sas}", free_port());
    let retry = ExponentialBackoff::builder()
        .retry_bounds(Duration::from_millis(1), Duration::from_millis(2))
        .build_with_max_retries(1);
    let retrying = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(RetryTransientMiddleware::new_with_policy(retry))
        .build();
    let failed = reqwest_conflict::update_with(&retrying, &closed, &options, |_| Ok(())).await;
    let failed = failed.expect_err("nothing listens there");
    assert!(matches!(failed, UpdateError::Http(_)), "{failed:?}");
    let mut shown = vec![format!("{failed}"), format!("{failed:?}")];
    let mut cause = std::error::Error::source(&failed);
    while let Some(c) = cause {
        shown.push(format!("{c} / {c:?}"));
        cause = c.source();
    }

    // A server that echoes the URL it was asked for in its error body.
    let echo = Raw::start(|head| {
        let target = head.split(' ').nth(1).unwrap_or_default();
        let body = format!(r#"{{"error":"no http://h{target} here"}}"#);
        RawReply::Send(http_response("404 Not Found", &body))
    })
    .await;
    let missing = format!("{}/c/b?{sas}", echo.base());
    let status = reqwest_conflict::update_with(&plain, &missing, &options, |_| Ok(())).await;
    let status = status.expect_err("not found");
    assert!(
        matches!(status, UpdateError::Status { status: 404, .. }),
        "{status:?}"
    );
    shown.push(format!("{status} / {status:?}"));

    let shown = shown.join("\n");
    assert!(
        shown.contains("127.0.0.1"),
        "the error says where it failed: {shown}"
    );
    assert!(
        shown.contains("http://h/c/b?"),
        "the echoed URL is kept, cut: {shown}"
    );
    assert_no_secret(&shown, &[SIG, USER], "update's error");
    assert_no_secret(&captured.text(), &[SIG, USER], "the tracing output");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_text_cannot_forge_tracing_lines() {
    let captured = capture();
    const FORGED: &str = "FORGED-LINE-3b9e";
    let sim = Sim::start(SimConfig::default()).await;
    let path = vm(0);
    sim.seed(&path, json!({"location": "westus"}));
    sim.script(
        "PUT",
        &path,
        vec![in_progress(&format!("busy\n{FORGED} in the message"))],
    );
    // A poll answer whose state is two log lines.
    sim.script(
        "GET",
        &path,
        vec![Scripted::json(
            200,
            json!({"properties": {"provisioningState": format!("Updating\n{FORGED} ERROR x")}}),
        )],
    );
    let resp = client(policy())
        .put(url(&sim, &path))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = captured.text();
    assert!(text.contains(FORGED), "the state was not logged at all");
    let forged: Vec<&str> = text.lines().filter(|l| l.starts_with(FORGED)).collect();
    assert!(forged.is_empty(), "a server forged log lines: {forged:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_text_cannot_forge_lines_in_errors() {
    capture();
    const STATE: &str = "Updating\nFAKE level=ERROR";
    let conflict = r#"{"error":{"code":"AnotherOperationInProgress","message":"busy"}}"#;
    let state = json!({"properties": {"provisioningState": STATE}}).to_string();
    let server = Raw::start(move |head| {
        if head.starts_with("PUT") {
            RawReply::Send(http_response("409 Conflict", conflict))
        } else {
            RawReply::Send(http_response("200 OK", &state))
        }
    })
    .await;
    let err = put_with_a_short_deadline(&server, "a state that never converges hung")
        .await
        .unwrap_err();
    let Error::NotConverged { last_state, .. } = engine_error(&err) else {
        panic!("expected NotConverged, got {err}");
    };
    assert_eq!(
        last_state.as_deref(),
        Some(STATE),
        "the state is kept as sent"
    );
    for shown in [engine_error(&err).to_string(), err.to_string()] {
        assert!(shown.contains("FAKE level=ERROR"), "{shown}");
        assert!(!shown.contains('\n'), "a server forged a line: {shown:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// (c) Bounded buffers.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_max_error_body_of_a_409_is_read() {
    capture();
    // The code comes after 200 KiB of padding: past the default 64 KiB cap, so the engine, which
    // reads only the cap, cannot see it; with a larger cap it can.
    let body = format!(
        r#"{{"padding":"{}","error":{{"code":"ScopeLocked","message":"locked"}}}}"#,
        "x".repeat(200 * 1024)
    );
    for (cap, expected) in [
        (None, (None, ConflictKind::Unknown)),
        (
            Some(1024 * 1024),
            (Some("ScopeLocked"), ConflictKind::Permanent),
        ),
    ] {
        let sim = Sim::start(SimConfig::default()).await;
        let path = vm(0);
        sim.seed(&path, json!({"location": "westus"}));
        sim.script("PUT", &path, vec![Scripted::raw(409, body.clone())]);
        let mut policy = policy();
        if let Some(cap) = cap {
            policy.max_error_body = cap;
        }
        let resp = client(policy)
            .put(url(&sim, &path))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 409);
        let report = report(&resp);
        assert_eq!(
            (report.code.as_deref(), report.kind),
            expected,
            "cap {cap:?}"
        );
        assert_eq!(report.outcome, Outcome::Surfaced);
        // Whatever was read, the caller gets every byte.
        assert_eq!(resp.bytes().await.unwrap(), body.as_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_mib_409_reaches_the_caller_whole() {
    capture();
    const SIZE: usize = 50 * 1024 * 1024;
    let head = br#"{"error":{"code":"ScopeLocked","message":"The scope is locked.","padding":""#;
    let tail = br#""}}"#;
    let mut body = Vec::with_capacity(SIZE);
    body.extend_from_slice(head);
    body.resize(SIZE - tail.len(), b'x');
    body.extend_from_slice(tail);
    let sim = Sim::start(SimConfig::default()).await;
    let path = vm(0);
    sim.seed(&path, json!({"location": "westus"}));
    sim.script("PUT", &path, vec![Scripted::raw(409, body.clone())]);
    let resp = unless_it_hangs(
        &policy(),
        "hang",
        client(policy())
            .put(url(&sim, &path))
            .json(&json!({}))
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 409);
    let report = report(&resp);
    // Classified from the first 64 KiB, which hold the code.
    assert_eq!(report.code.as_deref(), Some("ScopeLocked"));
    assert_eq!(report.kind, ConflictKind::Permanent);
    let received = resp.bytes().await.unwrap();
    assert_eq!(received.len(), SIZE);
    assert!(received == body, "the body was altered on its way through");
}

/// A PUT with a stale `If-Match` whose re-fetch is answered with `fetched` (JSON, with an ETag).
async fn stale_put_refetching(
    fetched: serde_json::Value,
    strategy: PreconditionStrategy,
    max_fetch_body: usize,
) -> (u16, ConflictReport, Sim) {
    let sim = instant_sim().await;
    let path = vm(0);
    sim.seed(&path, json!({"location": "westus", "tags": {"a": "1"}}));
    let etag = sim.resource(&path).unwrap()["etag"]
        .as_str()
        .unwrap()
        .to_owned();
    sim.script(
        "GET",
        &path,
        vec![Scripted::json(200, fetched).header("etag", &etag)],
    );
    let policy = ConflictPolicy {
        precondition: strategy,
        max_fetch_body,
        ..policy()
    };
    let resp = client(policy)
        .put(url(&sim, &path))
        .header("if-match", "\"stale\"")
        .json(&json!({"location": "westus", "tags": {"a": "2"}}))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let report = report(&resp);
    (status, report, sim)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refetch_is_not_buffered_beyond_max_fetch_body() {
    capture();
    const CAP: usize = 16 * 1024;
    let huge = json!({"location": "westus", "tags": {"a": "1"}, "properties": {"blob": "x".repeat(2 * 1024 * 1024)}});
    let small = json!({"location": "westus", "tags": {"a": "1"}, "properties": {"blob": "x"}});

    // Over the cap: only the cap is read, which is not a JSON document, so no representation is
    // reported; the ETag still comes from the header.
    let (status, report, _sim) =
        stale_put_refetching(huge.clone(), PreconditionStrategy::Surface, CAP).await;
    assert_eq!(status, 412);
    assert_eq!(report.kind, ConflictKind::StalePrecondition);
    assert_eq!(report.outcome, Outcome::Surfaced);
    assert_eq!(report.fresh, None, "more than max_fetch_body was kept");
    assert!(report.fresh_etag.is_some());
    assert_eq!(report.polls, 1);

    // Within the cap: the representation is reported (the control).
    let (status, report, _sim) =
        stale_put_refetching(small, PreconditionStrategy::Surface, CAP).await;
    assert_eq!(status, 412);
    assert!(report.fresh.is_some(), "{report:?}");

    // Over the cap, a merge has nothing to merge with and surfaces; an overwrite only needs the
    // ETag, so it goes ahead.
    let (status, report, _sim) =
        stale_put_refetching(huge.clone(), PreconditionStrategy::Merge, CAP).await;
    assert_eq!((status, report.outcome), (412, Outcome::Surfaced));
    let (status, report, sim) =
        stale_put_refetching(huge, PreconditionStrategy::Overwrite, CAP).await;
    assert_eq!(
        (status, report.outcome),
        (200, Outcome::Resolved),
        "{report:?}"
    );
    assert_eq!(sim.count("PUT", &vm(0), None), 2);
}

// ---------------------------------------------------------------------------------------------
// (d) A hostile server cannot make the client wait without bound.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_999999_on_every_answer_and_no_convergence_ends_by_the_deadline() {
    capture();
    let sim = Sim::start(SimConfig {
        retry_after_secs: Some(999_999),
        ..SimConfig::default()
    })
    .await;
    sim.set_faults(Faults {
        never_converge: true,
        ..Faults::default()
    });
    // The cap is the ARM profile's minute, longer than the deadline: the deadline must win.
    let policy = ConflictPolicy {
        deadline: Duration::from_millis(800),
        retry_after_cap: Duration::from_secs(60),
        ..policy()
    };
    let client = client(policy.clone());
    let mut calls = Vec::new();
    for i in 0..8 {
        let path = vm(i);
        let url = url(&sim, &path);
        sim.seed(&path, json!({"location": "westus"}));
        sim.begin_transition(&path, "Updating", None);
        if i % 2 == 1 {
            // Half the calls meet the simulator's 409 without its Retry-After, so they do poll
            // the operation, whose every answer says InProgress and Retry-After: 999999.
            let real = reqwest::Client::new()
                .put(&url)
                .json(&json!({}))
                .send()
                .await
                .unwrap();
            assert_eq!(real.headers()["retry-after"], "999999");
            let body: serde_json::Value = real.json().await.unwrap();
            sim.script("PUT", &path, vec![Scripted::json(409, body)]);
        }
        let (client, policy) = (client.clone(), policy.clone());
        calls.push(tokio::spawn(async move {
            unless_it_hangs(
                &policy,
                "a hostile Retry-After made the call wait past the deadline",
                client.put(url).json(&json!({})).send(),
            )
            .await
        }));
    }
    for (i, call) in calls.into_iter().enumerate() {
        let err = call.await.unwrap().unwrap_err();
        match engine_error(&err) {
            // A 409 that asks for 999999 s gets the whole deadline as its wait: no poll at all.
            Error::NotConverged { last_state, .. } if i % 2 == 0 => {
                assert_eq!(last_state.as_deref(), None)
            }
            // Polls that answer 999999 s make the next poll wait until the deadline.
            Error::NotConverged { last_state, .. } => {
                assert_eq!(last_state.as_deref(), Some("InProgress"))
            }
            other => panic!("expected NotConverged, got {other}"),
        }
    }
    let op_polls = operation_polls(&sim);
    assert!((4..=8).contains(&op_polls), "{op_polls} operation polls");
}

/// A PUT to `server` with a deadline of 500 ms; fails the test with `hang` past its hang limit.
async fn put_with_a_short_deadline(
    server: &Raw,
    hang: &str,
) -> reqwest_middleware::Result<reqwest::Response> {
    let policy = ConflictPolicy {
        deadline: Duration::from_millis(500),
        ..policy()
    };
    unless_it_hangs(
        &policy,
        hang,
        client(policy.clone())
            .put(format!("{}{}?{API}", server.base(), vm(0)))
            .json(&json!({}))
            .send(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_that_is_never_answered_ends_by_the_deadline() {
    capture();
    let conflict = r#"{"error":{"code":"AnotherOperationInProgress","message":"busy"}}"#;
    let server = Raw::start(move |head| {
        if head.starts_with("PUT") {
            RawReply::Send(http_response("409 Conflict", conflict))
        } else {
            RawReply::Stall(Vec::new())
        }
    })
    .await;
    let err = put_with_a_short_deadline(
        &server,
        "a poll that is never answered held the call past the deadline",
    )
    .await
    .unwrap_err();
    assert!(matches!(
        engine_error(&err),
        Error::NotConverged {
            last_state: None,
            ..
        }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_409_body_that_stalls_ends_by_the_deadline() {
    capture();
    // The head announces 1000 bytes; 20 come, then nothing, with the connection kept open.
    let server = Raw::start(|_| {
        let mut bytes = b"HTTP/1.1 409 Conflict\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n".to_vec();
        bytes.extend_from_slice(br#"{"error":{"code":"An"#);
        RawReply::Stall(bytes)
    })
    .await;
    let result = put_with_a_short_deadline(
        &server,
        "a stalled 409 body held the call past the deadline",
    )
    .await;
    // Either answer is acceptable: the 409 (whose body will stall for whoever reads it, as it
    // would without the middleware), or an error.
    if let Ok(resp) = result {
        assert_eq!(resp.status(), 409);
    }
}
