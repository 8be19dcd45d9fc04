//! The `reqwest-middleware` adapter: a thin translation onto the engine.

use bytes::Bytes;
use http::{Extensions, HeaderMap, StatusCode};
use reqwest::{Request, Response, ResponseBuilderExt};
use reqwest_middleware::{Error, Middleware, Next};
use tokio::time::Instant;
use url::Url;

use super::{adapter, prelude::*};
use crate::{ResourceId, body};

adapter! {
    /// Resolves 409 Conflict and 412 Precondition Failed answers for a `reqwest-middleware` client.
    ///
    /// Safe methods (GET, HEAD, OPTIONS, TRACE) pass straight through. A write whose answer is not a
    /// 409/412 passes through too, untouched and unbuffered. Otherwise the engine classifies the
    /// conflict and, for a state conflict, waits until the resource converges and retries — re-fetches
    /// and polls go through the rest of the middleware chain, so authentication added by earlier
    /// middleware applies to them. The response carries a [`ConflictReport`](crate::ConflictReport) in
    /// its extensions; a wait that outlives the policy's deadline fails with
    /// [`Error::NotConverged`](crate::Error::NotConverged) inside
    /// `reqwest_middleware::Error::Middleware`.
    ///
    /// Re-fetches and polls go through the same `reqwest::Client`, whose redirects no middleware
    /// can turn off for one request: build it without them (SECURITY.md says why).
    /// `ClientBuilder::with` takes the middleware by value. Clones share their counts, journal and
    /// leases, so keep a clone to read [`stats`](Self::stats) and [`journal`](Self::journal)
    /// later:
    ///
    /// ```no_run
    /// use reqwest_conflict::{ConflictMiddleware, ConflictPolicy};
    /// use reqwest_middleware::ClientBuilder;
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let http = reqwest::Client::builder()
    ///     .redirect(reqwest::redirect::Policy::none())
    ///     .build()?;
    /// let conflicts = ConflictMiddleware::new(ConflictPolicy::azure_arm());
    /// let client = ClientBuilder::new(http).with(conflicts.clone()).build();
    ///
    /// client.put("https://management.azure.com/…").body("{}").send().await?;
    /// let stats = conflicts.stats().snapshot();
    /// println!("{} conflicts, {} retries, waited {:?}", stats.total_conflicts(), stats.retries, stats.waited);
    /// assert!(conflicts.journal().overlaps().is_empty());
    /// # Ok(()) }
    /// ```
    pub struct ConflictMiddleware, "middleware"
}

impl ConflictMiddleware {
    /// Copies a successful answer's body as it streams to the caller, when it may serve as a
    /// merge base; otherwise returns `response` untouched.
    fn remember(&self, resource: &ResourceId, response: Response) -> Response {
        let sink = self
            .engine
            .merge_base_sink(resource, response.status(), response.headers());
        let Some((cap, sink)) = sink else {
            return response;
        };
        let url = response.url().clone();
        let (parts, body) = http::Response::<reqwest::Body>::from(response).into_parts();
        let tee = body::Tee::new(body, cap, sink);
        rebuild(parts, reqwest::Body::wrap(tee), url)
    }

    /// A write, through the engine.
    async fn write(
        &self,
        request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let overrides = Overrides::from_extensions(extensions);
        // The first attempt is the request itself; a resend is a copy of it without its body
        // (`template`) plus the body, when it is held in memory. A streamed body is sent once.
        let template = without_body(&request);
        let replay = match request.body() {
            None => Replay::Bytes(Bytes::new()),
            Some(body) => match body.as_bytes() {
                Some(bytes) => Replay::Bytes(Bytes::copy_from_slice(bytes)),
                None => Replay::Once,
            },
        };
        let (method, url, headers) = (template.method(), template.url(), template.headers());
        let original = Original::new(method, url, headers, replay, overrides);
        // A request sent without a body is resent without one.
        let body = request.body().and(original.body.bytes());
        let mut transport = ReqwestTransport {
            next,
            extensions,
            template: &template,
            body,
            first: Some(request),
            redirects: self.engine.redirects().clone(),
        };
        match self.engine.execute(&mut transport, &original).await {
            Ok(answered) => {
                let mut response = answered.response;
                if let Some(report) = answered.report {
                    response.extensions_mut().insert(*report);
                }
                Ok(self.remember(&original.resource, response))
            }
            Err(Failure::Transport(error)) => Err(error),
            Err(Failure::Conflict(error)) => Err(Error::middleware(error)),
        }
    }
}

#[async_trait::async_trait]
impl Middleware for ConflictMiddleware {
    async fn handle(
        &self,
        request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        match self.engine.route(request.method()) {
            Route::Pass => next.run(request, extensions).await,
            Route::Remember => {
                let resource = ResourceId::from_url(request.url());
                let response = next.run(request, extensions).await?;
                Ok(self.remember(&resource, response))
            }
            Route::Write => self.write(request, extensions, next).await,
        }
    }
}

struct ReqwestTransport<'a> {
    next: Next<'a>,
    extensions: &'a mut Extensions,
    /// The request without its body: every copy starts from it.
    template: &'a Request,
    /// The body of every copy, when it is held in memory.
    body: Option<&'a Bytes>,
    /// The request itself, until it is sent.
    first: Option<Request>,
    /// Where a redirect to another origin, followed by the client, is recorded.
    redirects: Redirects,
}

impl Transport for ReqwestTransport<'_> {
    type Response = Response;
    type Error = Error;

    fn head(response: &Response) -> (StatusCode, &HeaderMap) {
        (response.status(), response.headers())
    }

    fn send(&mut self, changes: Option<Changes>) -> BoxFuture<'_, Result<Response, Error>> {
        let request = match (self.first.take(), changes) {
            (Some(first), None) => first,
            // The first attempt with changes (the engine's `If-Match` fence).
            (Some(mut first), Some(changes)) => {
                *first.headers_mut() = changes.headers;
                if let Some(body) = changes.body {
                    *first.body_mut() = Some(reqwest::Body::from(body));
                }
                first
            }
            (None, changes) => {
                let mut copy = without_body(self.template);
                let mut body = self.body.cloned();
                if let Some(changes) = changes {
                    *copy.headers_mut() = changes.headers;
                    body = changes.body.or(body);
                }
                *copy.body_mut() = body.map(reqwest::Body::from);
                copy
            }
        };
        self.next.clone().run(request, self.extensions)
    }

    fn peek(
        response: Response,
        cap: usize,
        deadline: Instant,
    ) -> BoxFuture<'static, Peeked<Response, Error>> {
        Box::pin(async move {
            let url = response.url().clone();
            let (parts, body) = http::Response::<reqwest::Body>::from(response).into_parts();
            let (body, peeked) = body::peek(body, cap, deadline).await?;
            Ok((rebuild(parts, reqwest::Body::wrap(body), url), peeked))
        })
    }

    fn call(&mut self, exchange: Exchange) -> BoxFuture<'_, Result<Fetched, Error>> {
        let origin = exchange.url.origin();
        let mut request = Request::new(exchange.method, exchange.url);
        *request.headers_mut() = exchange.headers;
        let cap = exchange.cap;
        let redirects = self.redirects.clone();
        let response = self.next.clone().run(request, self.extensions);
        Box::pin(async move {
            let response = response.await?;
            // The client followed a redirect elsewhere: whatever answered there is not the
            // resource's state, and the engine must send nothing more through this client.
            // (reqwest offers no way to turn redirects off for one request; see SECURITY.md.)
            if response.url().origin() != origin {
                redirects.record();
                return Err(Error::middleware(RedirectedAway));
            }
            let (head, body) = http::Response::<reqwest::Body>::from(response).into_parts();
            let body = body::read_capped(body, cap).await?;
            Ok(Fetched {
                status: head.status,
                headers: head.headers,
                body,
            })
        })
    }

    fn respond(&self, status: StatusCode, headers: HeaderMap, body: Bytes) -> Response {
        let mut response = http::Response::new(reqwest::Body::from(body));
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        let (parts, body) = response.into_parts();
        rebuild(parts, body, self.template.url().clone())
    }
}

/// A copy of `request` without its body: its method, URL, headers, version and timeout (the only
/// request option reqwest keeps besides them).
fn without_body(request: &Request) -> Request {
    let mut copy = Request::new(request.method().clone(), request.url().clone());
    *copy.headers_mut() = request.headers().clone();
    *copy.version_mut() = request.version();
    if let Some(timeout) = request.timeout() {
        *copy.timeout_mut() = Some(*timeout);
    }
    copy
}

/// A `reqwest::Response` again, with its URL, from parts taken apart to read or copy the body.
fn rebuild(parts: http::response::Parts, body: reqwest::Body, url: Url) -> Response {
    let mut response = http::Response::from_parts(parts, body);
    // reqwest keeps the URL in a private extension that only its builder extension can set.
    if let Some(with_url) = http::Response::builder().url(url).extensions_mut() {
        response.extensions_mut().extend(std::mem::take(with_url));
    }
    Response::from(response)
}
#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::{HeaderValue, Method, Version};

    use super::*;

    /// Every resend starts from this copy: it must keep all a request says but its body.
    #[test]
    fn a_copy_without_body_keeps_the_head_and_the_timeout() {
        let url = Url::parse("https://example.test/items/1?api-version=1").unwrap();
        let mut request = Request::new(Method::PUT, url.clone());
        request
            .headers_mut()
            .insert("if-match", HeaderValue::from_static("\"1\""));
        *request.version_mut() = Version::HTTP_2;
        *request.timeout_mut() = Some(Duration::from_secs(7));
        *request.body_mut() = Some(reqwest::Body::from("{}"));

        let copy = without_body(&request);
        assert_eq!(copy.method(), Method::PUT);
        assert_eq!(copy.url(), &url);
        assert_eq!(copy.headers(), request.headers());
        assert_eq!(copy.version(), Version::HTTP_2);
        assert_eq!(copy.timeout(), Some(&Duration::from_secs(7)));
        assert!(copy.body().is_none());

        *request.timeout_mut() = None;
        assert_eq!(without_body(&request).timeout(), None);
    }
}
