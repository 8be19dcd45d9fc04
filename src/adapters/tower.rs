//! The tower adapter: a thin translation of any `http` client service onto the engine.
//!
//! A tower service consumes its request, and an `http_body::Body` cannot be cloned, so a retry
//! needs a copy of the body taken before the first send. A body whose length is known exactly and
//! is at most 16 MiB — `Full<Bytes>`, `Empty<Bytes>`, a `reqwest::Body` made from bytes — is read
//! into [`Bytes`] (such bodies hold their bytes already, so this copies no data) and every attempt
//! rebuilds it with `B: From<Bytes>`. A body of unknown length (a stream) is sent as it is, once:
//! a conflict on it is reported `not_retryable`, as the reqwest adapter does for a body it cannot
//! clone. Re-fetches are GETs built with `B::from(Bytes::new())`.
//!
//! Readiness: the service that [`poll_ready`](Service::poll_ready) drove ready is taken for the
//! call and a clone left behind (tower's clone-and-swap). A read goes straight through it. A write
//! may wait for a lease and for the resource to converge, so it gives that readiness back (a
//! concurrency-limit permit or a buffer slot must not be held through a wait of minutes) and polls
//! a clone ready before each request it sends.

use std::{
    future::poll_fn,
    task::{Context, Poll},
};

use ::tower::{BoxError, Layer, Service};
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Uri, request::Parts};
use http_body::Body;
use http_body_util::{BodyExt, Limited};
use tower_http::follow_redirect::RequestUri;
use url::Url;

pub use body::ConflictBody;

use super::{adapter, prelude::*};
use crate::engine::Engine;
use crate::{ConflictStats, Journal, ResourceId};

mod body;

/// The largest request body kept in memory so that it can be sent again.
const MAX_RETRY_BODY: usize = 16 * 1024 * 1024;

adapter! {
    /// A [`tower::Layer`](::tower::Layer) that resolves 409 Conflict and 412 Precondition Failed
    /// answers, like [`ConflictMiddleware`](crate::ConflictMiddleware) does for `reqwest-middleware`.
    ///
    /// It wraps any `S: Service<http::Request<B>, Response = http::Response<RB>> + Clone` — hyper-util's
    /// legacy `Client`, or a `reqwest::Client` behind a `service_fn` — and produces a
    /// [`ConflictService<S>`]:
    ///
    /// - **Requests** qualify for retries when their body's length is known exactly and is at most
    ///   16 MiB; they are rebuilt with `B: From<Bytes>` (trailers are not kept). Other bodies are sent
    ///   once, and a conflict on them is reported [`Outcome::NotRetryable`](crate::Outcome::NotRetryable).
    ///   Safe methods and requests without an absolute URI pass straight through.
    /// - **Re-fetches and polls** are GETs with an empty `B::from(Bytes::new())` body, sent through a
    ///   clone of the wrapped service, so layers inside this one (authentication) apply to them.
    /// - **Responses** come back as `http::Response<`[`ConflictBody<RB>`]`>`, a body that yields every
    ///   byte the server sent, with a [`ConflictReport`](crate::ConflictReport) in their extensions
    ///   when they met a conflict.
    /// - **Errors** are [`BoxError`](crate::BoxError)s: the wrapped service's own error, or a
    ///   [`crate::Error`] (such as [`Error::NotConverged`](crate::Error::NotConverged)) to get back
    ///   with `downcast_ref`.
    ///
    /// ```no_run
    /// use bytes::Bytes;
    /// use http_body_util::Full;
    /// use hyper_util::{client::legacy::Client, rt::TokioExecutor};
    /// use reqwest_conflict::{ConflictLayer, ConflictPolicy, ConflictReport};
    /// use tower::{Layer, ServiceExt};
    ///
    /// # async fn demo() -> Result<(), reqwest_conflict::BoxError> {
    /// let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    /// let service = ConflictLayer::new(ConflictPolicy::azure_arm()).layer(client);
    ///
    /// let request = http::Request::put("http://127.0.0.1:8080/subscriptions/…?api-version=2024-07-01")
    ///     .header("content-type", "application/json")
    ///     .body(Full::new(Bytes::from_static(br#"{"location":"westus"}"#)))?;
    /// let response = service.oneshot(request).await?;
    /// if let Some(report) = response.extensions().get::<ConflictReport>() {
    ///     println!("{}: {:?} after {} attempt(s)", report.kind, report.outcome, report.attempts);
    /// }
    /// # Ok(()) }
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
    pub struct ConflictLayer, "layer"
}

impl ConflictLayer {}

impl<S> Layer<S> for ConflictLayer {
    type Service = ConflictService<S>;

    fn layer(&self, inner: S) -> ConflictService<S> {
        ConflictService {
            inner,
            engine: self.engine.clone(),
        }
    }
}

/// The service made by [`ConflictLayer`]; see there for what it does. It shares the layer's
/// counts and journal, so either can be read:
///
/// ```
/// use reqwest_conflict::{ConflictLayer, ConflictPolicy};
/// use tower::{Layer, service_fn};
///
/// let layer = ConflictLayer::new(ConflictPolicy::azure_arm());
/// let service = layer.layer(service_fn(|_: http::Request<String>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
/// }));
/// assert_eq!(service.stats().snapshot(), layer.stats().snapshot());
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
#[derive(Clone, Debug)]
pub struct ConflictService<S> {
    inner: S,
    engine: Engine,
}

impl<S> ConflictService<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Conflict counts, shared with the layer and its other services.
    pub fn stats(&self) -> &ConflictStats {
        self.engine.stats()
    }

    /// The journal of the writes that went through this service (and its layer's other services).
    pub fn journal(&self) -> &Journal {
        self.engine.journal()
    }
}

impl<S, B, RB> Service<Request<B>> for ConflictService<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: Body + From<Bytes> + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    RB: Body<Data = Bytes> + Send + Unpin + 'static,
    RB::Error: Into<BoxError>,
{
    type Response = Response<ConflictBody<RB>>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, clone);
        let engine = self.engine.clone();
        Box::pin(async move {
            // Requests without an absolute URI (a server-side service) have no resource to speak of.
            let route = engine.route(request.method());
            let url = match route {
                Route::Pass => None,
                Route::Remember | Route::Write => absolute_url(request.uri()),
            };
            let Some(url) = url else {
                let response = ready.call(request).await.map_err(Into::into)?;
                return Ok(response.map(ConflictBody::new));
            };
            if route == Route::Remember {
                let response = ready.call(request).await.map_err(Into::into)?;
                let resource = ResourceId::from_url(&url);
                return Ok(remember(
                    &engine,
                    &resource,
                    response.map(ConflictBody::new),
                ));
            }
            // The wait for a lease and for convergence may last minutes: give back what `poll_ready`
            // reserved, and poll a clone ready before each request instead.
            let service = ready.clone();
            drop(ready);

            let (head, body) = request.into_parts();
            let (first, kept) = match buffer(body).await? {
                Ok(bytes) => (
                    Request::from_parts(head.clone(), B::from(bytes.clone())),
                    Some(bytes),
                ),
                Err(stream) => (Request::from_parts(head.clone(), stream), None),
            };
            let replay = kept.clone().map_or(Replay::Once, Replay::Bytes);
            let overrides = Overrides::from_extensions(&head.extensions);
            let original = Original::new(&head.method, &url, &head.headers, replay, overrides);
            let mut transport = TowerTransport {
                service,
                head: &head,
                first: Some(first),
                body: kept,
                redirects: engine.redirects().clone(),
            };
            match engine.execute(&mut transport, &original).await {
                Ok(answered) => {
                    let mut response = answered.response;
                    if let Some(report) = answered.report {
                        response.extensions_mut().insert(*report);
                    }
                    Ok(remember(&engine, &original.resource, response))
                }
                Err(Failure::Transport(error)) => Err(error),
                Err(Failure::Conflict(error)) => Err(Box::new(error)),
            }
        })
    }
}

/// The request's URL, when its URI is absolute (as a client's is).
fn absolute_url(uri: &Uri) -> Option<Url> {
    uri.scheme()?;
    uri.authority()?;
    Url::parse(&uri.to_string()).ok()
}

/// Reads a body of exactly known, small enough length into memory, or hands it back untouched.
async fn buffer<B>(body: B) -> Result<Result<Bytes, B>, BoxError>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    match body.size_hint().exact() {
        Some(len) if len <= MAX_RETRY_BODY as u64 => {
            let collected = Limited::new(body, MAX_RETRY_BODY).collect().await?;
            Ok(Ok(collected.to_bytes()))
        }
        _ => Ok(Err(body)),
    }
}

/// Copies a successful answer's body as it streams to the caller, when it may serve as a merge
/// base; otherwise returns `response` untouched.
fn remember<RB>(
    engine: &Engine,
    resource: &ResourceId,
    response: Response<ConflictBody<RB>>,
) -> Response<ConflictBody<RB>>
where
    RB: Body<Data = Bytes> + Send + Unpin + 'static,
{
    let sink = engine.merge_base_sink(resource, response.status(), response.headers());
    let Some((cap, sink)) = sink else {
        return response;
    };
    response.map(|body| ConflictBody::boxed(crate::body::Tee::new(body, cap, sink)))
}

struct TowerTransport<'h, S, B> {
    /// A clone of the wrapped service, polled ready before each request.
    service: S,
    /// The request's head: every attempt and re-fetch is built from it.
    head: &'h Parts,
    /// The request itself, until it is sent.
    first: Option<Request<B>>,
    /// The body every later attempt is rebuilt from; `None` when it could not be kept.
    body: Option<Bytes>,
    /// Where a redirect to another origin, followed by the service, is recorded.
    redirects: Redirects,
}

/// Polls `service` ready, then sends `request` through it.
async fn dispatch<S, B, RB>(service: &mut S, request: Request<B>) -> Result<Response<RB>, BoxError>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
{
    poll_fn(|cx| service.poll_ready(cx))
        .await
        .map_err(Into::into)?;
    service.call(request).await.map_err(Into::into)
}

impl<S, B, RB> Transport for TowerTransport<'_, S, B>
where
    S: Service<Request<B>, Response = Response<RB>> + Send,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: From<Bytes> + Send,
    RB: Body<Data = Bytes> + Send + Unpin + 'static,
    RB::Error: Into<BoxError>,
{
    type Response = Response<ConflictBody<RB>>;
    type Error = BoxError;

    fn head(response: &Self::Response) -> (StatusCode, &HeaderMap) {
        (response.status(), response.headers())
    }

    fn send(
        &mut self,
        changes: Option<Changes>,
    ) -> BoxFuture<'_, Result<Self::Response, BoxError>> {
        let request = self.first.take().filter(|_| changes.is_none()).or_else(|| {
            let mut head = self.head.clone();
            let mut body = self.body.clone()?;
            if let Some(changes) = changes {
                head.headers = changes.headers;
                body = changes.body.unwrap_or(body);
            }
            Some(Request::from_parts(head, B::from(body)))
        });
        Box::pin(async move {
            let request = request.ok_or_else(|| BoxError::from(NotRetryable))?;
            let response = dispatch(&mut self.service, request).await?;
            Ok(response.map(ConflictBody::new))
        })
    }

    fn peek(
        response: Self::Response,
        cap: usize,
        deadline: tokio::time::Instant,
    ) -> BoxFuture<'static, Peeked<Self::Response, BoxError>> {
        Box::pin(async move {
            let (parts, body) = response.into_parts();
            let (body, peeked) = crate::body::peek(body, cap, deadline)
                .await
                .map_err(Into::into)?;
            Ok((
                Response::from_parts(parts, ConflictBody::boxed(body)),
                peeked,
            ))
        })
    }

    fn call(&mut self, exchange: Exchange) -> BoxFuture<'_, Result<Fetched, BoxError>> {
        Box::pin(async move {
            let mut head = self.head.clone();
            head.method = exchange.method;
            head.uri = exchange.url.as_str().parse()?;
            head.headers = exchange.headers;
            let request = Request::from_parts(head, B::from(Bytes::new()));
            let (parts, body) = dispatch(&mut self.service, request).await?.into_parts();
            // A `FollowRedirect` layer (tower-http's, or the one inside a reqwest client used as
            // a service) says where its answer came from. An answer from another origin is not
            // the resource's state, and nothing more may be sent through a service that
            // follows redirects there. A service without that layer follows none.
            if let Some(RequestUri(uri)) = parts.extensions.get()
                && Url::parse(&uri.to_string()).map(|url| url.origin()) != Ok(exchange.url.origin())
            {
                self.redirects.record();
                return Err(BoxError::from(RedirectedAway));
            }
            let body = crate::body::read_capped(body, exchange.cap)
                .await
                .map_err(Into::into)?;
            Ok(Fetched {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        })
    }

    fn respond(&self, status: StatusCode, headers: HeaderMap, body: Bytes) -> Self::Response {
        let mut response = Response::new(ConflictBody::full(body));
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        response
    }
}

/// The engine asked to resend a request whose body was not kept; it never does.
#[derive(Debug, thiserror::Error)]
#[error("the request body was not kept, so it cannot be sent again")]
struct NotRetryable;
