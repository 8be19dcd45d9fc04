//! What only tower has: readiness, inner layers, other client services.

use super::*;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use reqwest_conflict::{BoxError, ConflictLayer};
use stacks::{from_box, tower_outcome};
use tower::{Layer, ServiceBuilder, ServiceExt};

fn put_request(sim: &Sim) -> http::Request<Full<Bytes>> {
    http::Request::put(url(sim, VM))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(vm_body("x").to_string())))
        .unwrap()
}

#[tokio::test]
async fn retries_and_polls_go_through_inner_layers_each_polled_ready() {
    let sim = sim_with_vm(Duration::from_millis(50)).await;
    sim.begin_transition(VM, "Updating", Some(Duration::from_millis(100)));
    sim.script("PUT", VM, vec![busy()]);
    // A concurrency limit panics when called without being polled ready; the auth layer
    // stands for any layer inside ours.
    let service = ServiceBuilder::new()
        .layer(ConflictLayer::new(fast_policy()))
        .concurrency_limit(1)
        .map_request(|mut request: http::Request<Full<Bytes>>| {
            request
                .headers_mut()
                .insert("authorization", "Bearer inner".parse().unwrap());
            request
        })
        .service(Client::builder(TokioExecutor::new()).build_http());
    let response = service.oneshot(put_request(&sim)).await.unwrap();
    let outcome = tower_outcome(response).await.unwrap();
    assert_eq!(outcome.status, 200);
    assert_eq!(outcome.report().outcome, Outcome::Resolved);
    let requests = sim.requests();
    assert!(requests.iter().filter(|r| r.method == "GET").count() >= 1);
    assert!(
        requests
            .iter()
            .all(|r| r.authorization.as_deref() == Some("Bearer inner"))
    );
}

#[tokio::test]
async fn a_reqwest_client_wrapped_as_a_service_works_too() {
    let sim = sim_with_vm(Duration::from_millis(50)).await;
    sim.begin_transition(VM, "Updating", Some(Duration::from_millis(100)));
    sim.script("PUT", VM, vec![busy()]);
    let reqwest_service = reqwest_as_service();
    let service = ServiceBuilder::new()
        .layer(ConflictLayer::new(fast_policy()))
        .service(reqwest_service);
    let request = http::Request::put(url(&sim, VM))
        .header("content-type", "application/json")
        .body(reqwest::Body::from(vm_body("x").to_string()))
        .unwrap();
    let response = service.oneshot(request).await.map_err(from_box);
    let outcome = tower_outcome(response.unwrap()).await.unwrap();
    assert_eq!(outcome.status, 200);
    assert_eq!(outcome.report().outcome, Outcome::Resolved);
    assert_eq!(put_statuses(&sim), [409, 200]);
}

/// A reqwest client used as a service follows redirects (its `FollowRedirect` layer says where
/// an answer came from): after the first poll redirected to another origin, nothing more of the
/// engine's own goes through it.
#[tokio::test]
async fn a_service_seen_following_a_redirect_elsewhere_gets_no_more_own_requests() {
    use support::hostile::{Canned, json_answer};
    let honeypot = Canned::start(|_| json_answer(404, "{}")).await;
    let sim = sim_with_vm(Duration::from_millis(50)).await;
    sim.script("PUT", VM, (0..2).map(|_| busy()).collect());
    let elsewhere = format!("{}/collect", honeypot.base());
    let redirects = (0..100).map(|_| Scripted::raw(302, "").header("location", &elsewhere));
    sim.script("GET", VM, redirects.collect());
    let reqwest_service = reqwest_as_service();
    let policy = ConflictPolicy {
        deadline: Duration::from_secs(1),
        ..fast_policy()
    };
    let layer = ConflictLayer::new(policy);
    let put = || {
        let request = http::Request::put(url(&sim, VM))
            .header("content-type", "application/json")
            .body(reqwest::Body::from(vm_body("x").to_string()))
            .unwrap();
        layer.layer(reqwest_service.clone()).oneshot(request)
    };
    match put().await.map_err(from_box) {
        Err(Failed::Conflict(Error::NotConverged { last_state, .. })) => {
            assert_eq!(last_state.as_deref(), Some("redirected to another origin"));
        }
        other => panic!("expected NotConverged, got {:?}", other.map(|r| r.status())),
    }
    let outcome = tower_outcome(put().await.map_err(from_box).unwrap()).await;
    let outcome = outcome.unwrap();
    assert_eq!(outcome.status, 409);
    assert_eq!(outcome.report().outcome, Outcome::Surfaced);
    assert_eq!(honeypot.seen().len(), 1, "the first hop, and only it");
}

#[tokio::test]
async fn reads_pass_straight_through() {
    let sim = sim_with_vm(Duration::from_millis(50)).await;
    let service = ConflictLayer::new(fast_policy())
        .layer(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
    let request = http::Request::get(url(&sim, VM))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let outcome = tower_outcome(service.oneshot(request).await.unwrap())
        .await
        .unwrap();
    assert_eq!(outcome.status, 200);
    assert!(outcome.report.is_none());
    assert_eq!(outcome.json()["tags"]["build"], "Standard_D2s_v3");
    assert_eq!(sim.requests().len(), 1);
}

/// A plain reqwest client (which follows redirects) as a tower service of `http` types.
fn reqwest_as_service() -> impl tower::Service<
    http::Request<reqwest::Body>,
    Response = http::Response<reqwest::Body>,
    Error = BoxError,
    Future = impl Send,
> + Clone {
    let client = reqwest::Client::new();
    tower::service_fn(move |request: http::Request<reqwest::Body>| {
        let client = client.clone();
        async move {
            let response = client.execute(reqwest::Request::try_from(request)?).await?;
            Ok::<_, BoxError>(http::Response::<reqwest::Body>::from(response))
        }
    })
}
